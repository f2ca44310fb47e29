"""One verification run: model + property + config -> Result.

The steps read in order: load and check the model, attack each case (a
counterexample counts only once onnxruntime confirms it), then bound each case
with IBP, CROWN and alpha-CROWN, stopping as soon as every disjunct is proved
infeasible.  Branch and bound comes after these steps in a later stage.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from genbab.config import Config
from genbab.spec.types import Spec, SpecCase

VERDICTS = ("sat", "unsat", "unknown", "timeout")


@dataclass
class Result:
    """The outcome of one run, with what decided it and statistics."""

    verdict: str
    method: str = ""  # attack | ibp | crown | alpha-crown | ...
    time: float = 0.0
    x: np.ndarray | None = None  # confirmed counterexample (flat input)
    y: np.ndarray | None = None  # onnxruntime output at x
    margins: list[list[float]] = field(default_factory=list)  # per case, per disjunct
    stats: dict = field(default_factory=dict)
    config: Config | None = None


class _Clock:
    def __init__(self, timeout: float):
        self.start = time.monotonic()
        self.deadline = self.start + timeout

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def _case_tensors(case: SpecCase, shape, device, dtype):
    import torch

    lower = torch.tensor(case.lower, dtype=dtype, device=device).reshape(1, *shape)
    upper = torch.tensor(case.upper, dtype=dtype, device=device).reshape(1, *shape)
    return lower, upper


def _rows(case: SpecCase, n_out: int):
    """All rows of all disjuncts stacked, with the disjunct index of each row."""
    Cs = [np.asarray(dj.C, np.float64).reshape(-1, n_out) for dj in case.disjuncts]
    ds = [np.asarray(dj.d, np.float64).reshape(-1) for dj in case.disjuncts]
    groups = np.concatenate([np.full(len(d), k) for k, d in enumerate(ds)]) if ds else \
        np.zeros(0, int)
    return np.concatenate(Cs) if Cs else np.zeros((0, n_out)), np.concatenate(ds) if ds else \
        np.zeros(0), groups.astype(np.int64)


def _disjunct_margins(lower, d, groups, n_disjuncts):
    """Per disjunct: max over its rows of (lower bound - d); > 0 proves it infeasible."""
    import torch

    slack = lower - d
    out = torch.full((lower.shape[0], n_disjuncts), -float("inf"), dtype=slack.dtype,
                     device=slack.device)
    return out.scatter_reduce(1, groups.expand(lower.shape[0], -1), slack, reduce="amax")


def strip_output_softmax(graph, spec: Spec):
    """Drop a final Softmax when every row compares two outputs (y_i - y_j <= 0).

    Softmax is strictly order preserving along its axis, so such rows hold on
    the probabilities exactly when they hold on the logits.
    """
    from bounds.ops.softmax import Softmax

    out = graph.output_node
    if not isinstance(out.op, Softmax) or len(out.shape) != 1:
        return graph
    for case in spec.cases:
        for dj in case.disjuncts:
            for row, rhs in zip(np.asarray(dj.C), np.asarray(dj.d)):
                nz = np.flatnonzero(row)
                if rhs != 0 or len(nz) != 2 or sorted(row[nz].tolist()) != [-row[nz].max(),
                                                                            row[nz].max()]:
                    return graph
    return graph.truncated(out.inputs[0])


def _attack(graph_t, runner, spec, config, clock, device, dtype, round_=0):
    import torch

    from genbab.attack import find_counterexample
    from genbab.check import confirm_counterexample

    shape = graph_t.input_node.shape
    grow = 4 ** min(round_, 4)  # later rounds search wider: more samples and restarts
    attack = replace(config.attack, random_samples=config.attack.random_samples * grow,
                     pgd_restarts=config.attack.pgd_restarts * grow,
                     time_budget=config.attack.time_budget * (1 + round_))

    def model(x):
        return graph_t.forward(x.reshape(x.shape[0], *shape)).reshape(x.shape[0], -1)

    for index, case in enumerate(spec.cases):
        if clock.expired():
            return None
        with torch.enable_grad():
            x = find_counterexample(model, case, attack, device=device, dtype=dtype,
                                    seed=config.seed + 1000 * round_ + index,
                                    deadline=clock.deadline)
        if x is not None:
            confirmed = confirm_counterexample(runner, case, x)
            if confirmed is not None:
                return confirmed
    return None


def _extended_attack(graph_t, runner, spec, config, clock, device, dtype, stats):
    """After bounding failed: keep searching, wider each round, until the deadline."""
    import torch

    if not config.attack.enabled or not config.attack.extend_until_timeout:
        return None
    round_ = 0
    while not clock.expired():
        round_ += 1
        with torch.no_grad():
            found = _attack(graph_t, runner, spec, config, clock, device, dtype, round_)
        if found is not None:
            stats["attack_rounds"] = round_ + 1
            return found
    stats["attack_rounds"] = round_ + 1
    return None


def _bound_case(graph_t, case, config, clock, device, dtype, stats, runner):
    """Returns (proved, method, margins per disjunct)."""
    import torch

    from bounds.methods import BoundOptions, BoundTimeout, compute_bounds

    n_out = graph_t.output_node.size
    C, d, groups = _rows(case, n_out)
    if any(len(np.asarray(dj.d)) == 0 for dj in case.disjuncts):
        return False, "none", [float("-inf")] * len(case.disjuncts), None
    lower, upper = _case_tensors(case, graph_t.input_node.shape, device, dtype)
    C_t = torch.tensor(C, dtype=dtype, device=device).unsqueeze(0)
    d_t = torch.tensor(d, dtype=dtype, device=device).unsqueeze(0)
    g_t = torch.tensor(groups, device=device).unsqueeze(0)
    k = len(case.disjuncts)

    def margins(lb):
        return _disjunct_margins(lb, d_t, g_t, k)

    def done(lb):
        return bool((margins(lb) > 0).all())

    def objective(lb):  # push every unproved disjunct up; proved ones no longer matter
        m = margins(lb)
        return -(m.clamp(max=1e-3)).sum()

    b = config.bounds
    best, res = None, None
    methods = ["ibp", "crown", "alpha-crown"]
    stop_at = methods.index(b.method) if b.method in methods else 2
    i, method = 0, methods[0]
    while i <= stop_at:
        method = methods[i]
        if clock.expired():
            return False, "timeout", _to_list(best), None
        opts = BoundOptions(method=method, intermediate=b.intermediate,
                            alpha_iterations=b.alpha_iterations, alpha_lr=b.alpha_lr,
                            alpha_lr_decay=b.alpha_lr_decay,
                            optimize_intermediate=b.optimize_intermediate,
                            intermediate_iterations=b.intermediate_iterations,
                            max_batch_neurons=b.max_intermediate_batch)
        t0 = time.monotonic()
        try:
            res = compute_bounds(graph_t, lower, upper, C_t, opts, objective=objective,
                                 done=done, deadline=clock.expired)
        except BoundTimeout:
            return False, "timeout", _to_list(best), None
        stats.setdefault("bound_time", {})[method] = round(time.monotonic() - t0, 3)
        m = margins(res.lower.detach()).double()
        best = m if best is None else torch.maximum(best, m)
        if bool((best > 0).all()):
            return True, method, _to_list(best), None
        if (method != "ibp" and dtype == torch.float32 and b.float64_retry > 0
                and float(best.min()) > -b.float64_retry):
            # only rounding stands between the bound and a proof: the rest in float64
            dtype = torch.float64
            graph_t = graph_t.to(device, dtype)
            lower, upper, C_t, d_t = (t.to(dtype) for t in (lower, upper, C_t, d_t))
            stats["float64_from"] = method
            continue
        i += 1
    if config.bab.enabled and res is not None and not clock.expired():
        return _branch_and_bound(graph_t, case, config, clock, (lower, upper), res,
                                 (C_t, d_t, g_t, k), runner, stats, best)
    return False, method, _to_list(best), None


def _branch_and_bound(graph_t, case, config, clock, box, res, rows, runner, stats, best):
    """Input splitting for few inputs, else GenBaB on nonlinear neurons."""
    import torch

    from bounds.methods import BoundOptions
    from genbab.bab.driver import Property, branch_and_bound
    from genbab.check import confirm_counterexample

    prop = Property(*rows)
    bab = config.bab
    mode = bab.mode
    if mode == "auto":
        mode = "input" if graph_t.input_node.size <= bab.input_split_max_dims else "neuron"
    confirmed = None
    if mode == "input":
        from genbab.bab.input_split import input_branch_and_bound

        opts = BoundOptions(method=bab.input_bound_method, alpha_iterations=5,
                            optimize_intermediate=False, intermediate=bab.input_intermediate)
        with torch.no_grad() if bab.input_bound_method == "crown" else torch.enable_grad():
            outcome, confirmed = input_branch_and_bound(
                graph_t, box, prop, bab, clock.deadline,
                lambda x: confirm_counterexample(runner, case, x), opts)
    else:
        from genbab.bab.branching_points import BranchingPoints

        points = BranchingPoints(method=bab.branching_point)
        with torch.no_grad():
            if bab.per_disjunct and prop.n_disjuncts > 1 and best is not None:
                outcome = _bab_per_disjunct(graph_t, box, res, prop, bab, points, clock, best)
            else:
                outcome = branch_and_bound(graph_t, box, res.bounds, res.params, prop, bab,
                                           points, clock.deadline,
                                           res.intermediate_params)
    stats["bab"] = outcome.stats
    if outcome.verdict == "unsat":
        return True, "bab", _to_list(best), None
    return False, "bab", _to_list(best), confirmed


def _bab_per_disjunct(graph_t, box, res, prop, bab, points, clock, best):
    """One branch and bound per disjunct not yet proved, easiest (largest margin) first.

    The property holds when every disjunct is infeasible, and each sub-run
    proves one of them over the whole box, so the runs are independent: a
    domain is pruned as soon as *its* disjunct is refuted there, instead of
    waiting until every disjunct is refuted in the same domain.  Stops at the
    first sub-run that does not prove its disjunct.
    """
    from genbab.bab.driver import BabOutcome, Property, branch_and_bound

    margins = best[0]
    todo = sorted((k for k in range(prop.n_disjuncts) if float(margins[k]) <= 0),
                  key=lambda k: -float(margins[k]))
    stats = {"disjuncts": len(todo), "disjuncts_proved": 0, "rounds": 0, "domains_visited": 0,
             "max_depth": 0, "open_domains": 0, "bab_time": 0.0}
    for k in todo:
        rows = (prop.groups[0] == k).nonzero().flatten()
        sub = Property(prop.C[:, rows], prop.d[:, rows], prop.groups[:, rows] * 0, 1)
        params = None if res.params is None else \
            {node: {name: t[:, rows] for name, t in alphas.items()}
             for node, alphas in res.params.items()}
        outcome = branch_and_bound(graph_t, box, res.bounds, params, sub, bab, points,
                                   clock.deadline, res.intermediate_params)
        got = outcome.stats
        stats["rounds"] += got.get("rounds", 0)
        stats["domains_visited"] += got.get("domains_visited", 0)
        stats["max_depth"] = max(stats["max_depth"], got.get("max_depth", 0))
        stats["bab_time"] = round(stats["bab_time"] + got.get("bab_time", 0.0), 3)
        stats["open_domains"] = got.get("open_domains", 0)
        if outcome.verdict != "unsat":
            stats.update({k2: v for k2, v in got.items() if k2 not in stats})
            return BabOutcome(outcome.verdict, stats)
        stats["disjuncts_proved"] += 1
    return BabOutcome("unsat", stats)


def _to_list(m):
    return [] if m is None else [float(v) for v in m[0].tolist()]


def verify(model_path: str | Path, spec: Spec, config: Config | None = None) -> Result:
    """Verify ``spec`` on the ONNX model at ``model_path`` (default config if None)."""
    config = Config() if config is None else config
    clock = _Clock(config.timeout)
    if config.quick:  # small models: a torch-free verdict first (None: it declined)
        from genbab.quick import quick_verify

        quick = quick_verify(model_path, spec, config, started=clock.start)
        if quick is not None:
            return quick
    import torch

    from bounds.onnx_import import compare_with_onnxruntime, load_onnx, read_model
    from genbab.check import OnnxRunner

    torch.manual_seed(config.seed)
    device = config.resolved_device()
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    proto = read_model(model_path)
    graph = load_onnx(proto)
    _check_sizes(graph, spec)
    stats: dict = {"load_time": round(clock.elapsed(), 3), "device": device}
    runner = OnnxRunner(proto)
    if config.check_model and spec.cases:
        stats["onnxruntime_max_diff"] = compare_with_onnxruntime(
            graph, proto, spec.cases[0].lower, spec.cases[0].upper, seed=config.seed,
            reference64=runner.run64)
    graph_t = graph.to(device, dtype)

    def finish(verdict, method="", **kw):
        stats["time"] = round(clock.elapsed(), 3)
        return Result(verdict, method, clock.elapsed(), stats=stats, config=config, **kw)

    if not spec.cases:
        return finish("unsat", "empty input set")
    with torch.no_grad():
        confirmed = _attack(graph_t, runner, spec, config, clock, device, dtype)
    if confirmed is not None:
        stats["float64_agrees"] = confirmed.float64_agrees
        return finish("sat", "attack", x=confirmed.x, y=confirmed.y)
    bound_graph = strip_output_softmax(graph_t, spec)
    all_margins, methods = [], []
    for case in spec.cases:
        proved, method, margins, confirmed = _bound_case(bound_graph, case, config, clock,
                                                         device, dtype, stats, runner)
        if confirmed is not None:
            stats["float64_agrees"] = confirmed.float64_agrees
            return finish("sat", "bab", x=confirmed.x, y=confirmed.y)
        all_margins.append(margins)
        if not proved:
            confirmed = _extended_attack(graph_t, runner, spec, config, clock, device, dtype,
                                         stats)
            if confirmed is not None:
                stats["float64_agrees"] = confirmed.float64_agrees
                return finish("sat", "attack", x=confirmed.x, y=confirmed.y)
            verdict = "timeout" if clock.expired() else "unknown"
            return finish(verdict, method or "none", margins=all_margins)
        methods.append(method)
    order = ["ibp", "crown", "alpha-crown", "bab"]
    return finish("unsat", max(methods, key=order.index), margins=all_margins)


def _check_sizes(graph, spec: Spec) -> None:
    from bounds.errors import ModelError

    n_in, n_out = graph.input_node.size, graph.output_node.size
    if spec.n_inputs != n_in:
        raise ModelError(f"the property declares {spec.n_inputs} inputs but the model has "
                         f"{n_in}")
    if spec.n_outputs != n_out:
        raise ModelError(f"the property declares {spec.n_outputs} outputs but the model has "
                         f"{n_out}")
