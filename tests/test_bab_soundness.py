"""Soundness of branch and bound: split constraints, the driver loop, known-sat instances.

(1) ``bound_under_splits`` (beta-CROWN style split constraints, fixed
    intermediate bounds) on random float64 MLPs (Sigmoid, Tanh, ReLU): some
    neurons' intervals are tightened at random points (lower or upper side,
    several layers, many domains in one batch); every sampled input whose
    intermediate values satisfy all of a domain's constraints has ``C y`` at
    least the returned lower bound, with 0 and 10 optimisation steps (alpha
    warm-started from alpha-CROWN, and from nothing).
    Full ReLU activation patterns are compared with the exact minimum from an LP
    (scipy), which also catches a constraint that claims slightly too much.
(2) The driver: ``branch_and_bound`` on properties that are falsifiable by a
    known witness (a PGD minimiser with ``C y`` just below ``d``) never answers
    unsat, and no domain it bounds that contains a witness (all of the
    witness's pre-activations inside the domain's intervals) gets a margin
    above the witness's own margin.  Checked on every batch by wrapping the
    driver's ``_bound``.
(3) ``genbab.verify`` with the attack disabled never answers unsat on the
    shipped instances recorded as sat (short timeouts); on one of them the
    counterexample found by the attack is used as a witness as in (2).
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ACTIVATIONS, EXAMPLES, F64, mlp

from bounds.methods import BoundOptions, compute_bounds
from bounds.ops.activation import Relu, Sigmoid, Tanh
from bounds.ops.affine import Linear
from bounds.split_bounds import bound_under_splits
from genbab.bab import driver
from genbab.bab.branching import splittable_nodes
from genbab.bab.branching_points import BranchingPoints
from genbab.bab.driver import Property, branch_and_bound
from genbab.config import AttackConfig, BabConfig, Config


def uniform(lo, hi, n, gen):
    return lo + torch.rand(n, lo.shape[1], dtype=F64, generator=gen) * (hi - lo)


# --- (1) bound_under_splits by sampling --------------------------------------------------------

def random_splits(root_bounds, names, N, gen, rate):
    """Per domain: each neuron's interval tightened from below or above at a random point."""
    bounds, masks = {}, {}
    for name in names:
        lo, hi = (t.expand(N, -1).clone() for t in root_bounds[name])
        side = torch.rand(lo.shape, generator=gen)
        from_below, from_above = side < rate / 2, (side >= rate / 2) & (side < rate)
        both = torch.rand(lo.shape, generator=gen) < rate / 4  # a neuron split twice
        p = lo + torch.rand(lo.shape, dtype=F64, generator=gen) * (hi - lo)
        q = p + torch.rand(lo.shape, dtype=F64, generator=gen) * (hi - p)
        new_lo = torch.where(from_below | both, p, lo)
        new_hi = torch.where(from_above, p, torch.where(both, q, hi))
        bounds[name] = (new_lo, new_hi)
        masks[name] = (from_below | both, from_above | both)
    return bounds, masks


def inside(values, bounds, names):
    """[N, M]: sample m satisfies every interval of domain n."""
    keep = None
    for name in names:
        v = values[name].unsqueeze(0)  # [1, M, k]
        lo, hi = (t.unsqueeze(1) for t in bounds[name])  # [N, 1, k]
        ok = ((v >= lo) & (v <= hi)).all(-1)
        keep = ok if keep is None else keep & ok
    return keep


def check_split_soundness(act, sizes, seed, N=12, samples=40_000, rate=0.3):
    gen = torch.Generator().manual_seed(seed)
    graph = mlp(sizes, act, gen)
    centre = torch.randn(1, sizes[0], dtype=F64, generator=gen)
    lo, hi = centre - 0.5, centre + 0.5
    S = 3
    C = torch.randn(1, S, sizes[-1], dtype=F64, generator=gen)
    root = compute_bounds(graph, lo, hi, C, BoundOptions(alpha_iterations=10))
    names = [s.name for s in splittable_nodes(graph)]
    bounds, masks = random_splits(root.bounds, names, N, gen, rate)
    x = uniform(lo, hi, samples, gen)
    values = graph.forward_all(x)
    for name in names:  # the root's intermediate bounds hold everywhere
        assert bool((values[name] >= root.bounds[name][0] - 1e-9).all())
        assert bool((values[name] <= root.bounds[name][1] + 1e-9).all())
    keep = inside(values, bounds, names)
    out = values[graph.outputs[0]] @ C[0].T  # [M, S]
    worst, kept = -float("inf"), 0
    warm = {k: {n: t.expand(N, *t.shape[1:]).clone() for n, t in v.items()}
            for k, v in (root.params or {}).items()}
    for params in (warm, {}):
        for iterations in (0, 10):
            res = bound_under_splits(graph, {"x": (lo.expand(N, -1), hi.expand(N, -1)),
                                             **bounds}, C.expand(N, -1, -1), masks, params,
                                     iterations, 0.1)
            for n in range(N):
                if not bool(keep[n].any()):
                    continue
                true_min = out[keep[n]].min(0).values
                gap = res.lower[n] - true_min
                scale = 1 + true_min.abs()
                assert bool((gap <= 1e-9 * scale).all()), (
                    f"{act.__name__} seed {seed} domain {n} it {iterations}: bound above a "
                    f"feasible sample by {gap.max().item():.3g}")
                worst = max(worst, float(gap.max()))
                kept += int(keep[n].sum())
    return worst, kept


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_bound_under_splits_is_sound_on_sampled_inputs(act):
    worst, kept = -float("inf"), 0
    for seed in range(4):
        w, k = check_split_soundness(ACTIVATIONS[act], [3, 6, 6, 2], seed)
        worst, kept = max(worst, w), kept + k
    print(f"\n{act}: closest approach of a bound to a feasible sample {worst:.3g}, "
          f"{kept} (domain, sample) pairs")
    assert kept > 5_000  # the constraints leave enough samples to mean something


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [[2, 5, 5, 5, 1], [4, 10, 8, 3], [3, 6, 6, 2]])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_bound_under_splits_is_sound_many_seeds(act, sizes):
    kept = 0
    for seed in range(100, 125):
        kept += check_split_soundness(ACTIVATIONS[act], sizes, seed, N=16, rate=0.4)[1]
    assert kept > 0


def test_split_constraints_tighten_the_bound():
    """With beta optimised, a split constraint can only help: the bound at 10 steps
    is at least the bound at 0 steps on every domain (best iterate is kept)."""
    gen = torch.Generator().manual_seed(7)
    for act in (Sigmoid, Tanh, Relu):
        graph = mlp([3, 6, 6, 2], act, gen)
        lo, hi = -torch.ones(1, 3, dtype=F64) * 0.5, torch.ones(1, 3, dtype=F64) * 0.5
        C = torch.randn(1, 2, 2, dtype=F64, generator=gen)
        root = compute_bounds(graph, lo, hi, C, BoundOptions(method="crown"))
        names = [s.name for s in splittable_nodes(graph)]
        bounds, masks = random_splits(root.bounds, names, 8, gen, 0.3)
        box = {"x": (lo.expand(8, -1), hi.expand(8, -1)), **bounds}
        zero = bound_under_splits(graph, box, C.expand(8, -1, -1), masks, {}, 0, 0.1)
        ten = bound_under_splits(graph, box, C.expand(8, -1, -1), masks, {}, 10, 0.1)
        assert bool((ten.lower >= zero.lower).all())


def relu_pattern_case(seed, sizes, N):
    """ReLU net and N domains, each fixing the phase of every unstable neuron (split at 0)."""
    gen = torch.Generator().manual_seed(seed)
    graph = mlp(list(sizes), Relu, gen)
    centre = torch.randn(1, sizes[0], dtype=F64, generator=gen)
    lo, hi = centre - 0.5, centre + 0.5
    C = torch.randn(1, 2, sizes[-1], dtype=F64, generator=gen)
    root = compute_bounds(graph, lo, hi, C, BoundOptions(alpha_iterations=10))
    names = [s.name for s in splittable_nodes(graph)]
    bounds, masks, phases = {}, {}, []
    for name in names:
        low, high = (t.expand(N, -1).clone() for t in root.bounds[name])
        crossing = (low < 0) & (high > 0)
        up = torch.rand(low.shape, generator=gen) < 0.5
        active = torch.where(crossing, up, low >= 0)
        bounds[name] = (torch.where(crossing & up, torch.zeros_like(low), low),
                        torch.where(crossing & ~up, torch.zeros_like(high), high))
        masks[name] = (crossing & up, crossing & ~up)
        phases.append((crossing, active))
    return graph, (lo, hi), C, root, bounds, masks, phases


def pattern_lp(graph, box, C, phases, domain):
    """Exact min of each row of C y over the domain: the net is affine once every phase is
    fixed, and the region is the box cut by one half-space per split neuron (an LP)."""
    from scipy.optimize import linprog

    lo, hi = (t[0].numpy() for t in box)
    A, c = np.eye(len(lo)), np.zeros(len(lo))
    rows, rhs = [], []
    linears = [n.op for n in graph.nodes if isinstance(n.op, Linear)]
    for k, lin in enumerate(linears):
        A, c = lin.weight.numpy() @ A, lin.weight.numpy() @ c + lin.bias.numpy()
        if k == len(linears) - 1:
            break
        crossing, active = (t[domain].numpy() for t in phases[k])
        for i in np.flatnonzero(crossing):
            sign = -1.0 if active[i] else 1.0  # active: z >= 0; inactive: z <= 0
            rows.append(sign * A[i])
            rhs.append(-sign * c[i])
        A, c = A * active[:, None], c * active
    out = []
    for row in C[0].numpy():
        res = linprog(row @ A, A_ub=np.array(rows) if rows else None,
                      b_ub=np.array(rhs) if rows else None, bounds=list(zip(lo, hi)),
                      method="highs")
        out.append(res.fun + row @ c if res.status == 0 else np.inf)  # 2: infeasible
    return torch.tensor(out, dtype=F64)


def check_against_lp(seed, sizes=(3, 6, 6, 2), N=16, iterations=(0, 100)):
    graph, box, C, root, bounds, masks, phases = relu_pattern_case(seed, sizes, N)
    exact = torch.stack([pattern_lp(graph, box, C, phases, n) for n in range(N)])
    feasible = torch.isfinite(exact)
    warm = {k: {n: t.expand(N, *t.shape[1:]).clone() for n, t in v.items()}
            for k, v in (root.params or {}).items()}
    gaps = {}
    for steps in iterations:
        lower = bound_under_splits(graph, {"x": (box[0].expand(N, -1), box[1].expand(N, -1)),
                                           **bounds}, C.expand(N, -1, -1), masks, warm, steps,
                                   0.1).lower
        gap = (exact - lower)[feasible]
        assert bool((gap >= -1e-7 * (1 + exact[feasible].abs())).all()), (
            f"seed {seed}, {steps} steps: bound above the exact LP minimum by "
            f"{-float(gap.min()):.3g}")
        gaps[steps] = gap
    return gaps, int(feasible.sum())


def test_split_bounds_never_exceed_the_exact_minimum_of_relu_patterns():
    """Every unstable ReLU split (either side): beta-CROWN's bound is at most the exact LP
    minimum over the domain, and with 100 steps it gets close to it (strong duality)."""
    gaps, feasible = {0: [], 100: []}, 0
    for seed in range(4):
        g, f = check_against_lp(seed, N=12)
        feasible += f
        for k, v in g.items():
            gaps[k].append(v)
    median = {k: float(torch.cat(v).median()) for k, v in gaps.items()}
    print(f"\nReLU patterns: {feasible} feasible (domain, row) pairs; median gap to the LP "
          f"optimum {median[0]:.3g} (0 steps), {median[100]:.3g} (100 steps)")
    assert feasible >= 30
    assert median[100] < 0.05 and median[100] <= median[0]


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [(2, 8, 8, 1), (4, 6, 6, 6, 3), (3, 10, 2)])
def test_split_bounds_against_relu_pattern_lp_many_seeds(sizes):
    for seed in range(200, 220):
        check_against_lp(seed, sizes, N=24, iterations=(0, 20, 100))


# --- (2) the driver never prunes a domain holding a witness --------------------------------------

def minimise(graph, C_row, lo, hi, gen, samples=50_000, steps=150):
    """A good minimiser of ``C_row · y`` over the box: best samples refined by projected Adam."""
    x = uniform(lo, hi, samples, gen)
    with torch.no_grad():
        v = graph.forward(x) @ C_row
    top = x[v.argsort()[:16]].clone().requires_grad_(True)
    opt = torch.optim.Adam([top], lr=0.01 * float((hi - lo).max()))
    with torch.enable_grad():
        for _ in range(steps):
            loss = (graph.forward(top) @ C_row).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                top.copy_(torch.maximum(torch.minimum(top, hi), lo))
    with torch.no_grad():
        both = torch.cat([x[v.argsort()[:16]], top.detach()])
        vals = graph.forward(both) @ C_row
    return both[vals.argmin()], float(vals.min())


class WitnessCheck:
    """Wraps the driver's ``_bound``: no bounded domain containing a witness may have a
    margin above the witness's own margin."""

    def __init__(self, graph, prop: Property, witnesses: torch.Tensor, tol: float):
        self.graph, self.prop, self.tol = graph, prop, tol
        self.names = [s.name for s in splittable_nodes(graph)]
        with torch.no_grad():
            values = graph.forward_all(witnesses.reshape(len(witnesses),
                                                         *graph.input_node.shape))
        dtype = prop.C.dtype
        self.values = {k: values[k].reshape(len(witnesses), -1).to(dtype) for k in self.names}
        y = values[graph.outputs[0]].reshape(len(witnesses), -1).to(dtype)
        self.margins = prop.margins(y @ prop.C[0].T)  # [W, K]
        self.real = driver._bound
        self.calls, self.pairs = 0, 0

    def __call__(self, graph, box, prop, domains, config, iterations, deadline=None):
        out = self.real(graph, box, prop, domains, config, iterations, deadline)
        flat = {k: tuple(t.reshape(len(out), -1) for t in out.bounds[k]) for k in self.names}
        keep = inside(self.values, flat, self.names)  # [N, W]
        bound = prop.margins(out.lower)  # [N, K]
        excess = bound.unsqueeze(1) - self.margins.unsqueeze(0)  # [N, W, K]
        bad = keep.unsqueeze(-1) & (excess > self.tol)
        assert not bool(bad.any()), (
            f"a domain holding a witness is bounded {float(excess[bad].max()):.3g} above it")
        self.calls += 1
        self.pairs += int(keep.sum())
        return out


def falsifiable_case(act, seed, sizes=(3, 8, 8, 2)):
    """A net, a box, and a 2-disjunct property whose first disjunct a witness falsifies."""
    gen = torch.Generator().manual_seed(seed)
    graph = mlp(list(sizes), act, gen)
    centre = torch.randn(1, sizes[0], dtype=F64, generator=gen)
    lo, hi = centre - 0.4, centre + 0.4
    rows = torch.randn(2, sizes[-1], dtype=F64, generator=gen)
    x0, m0 = minimise(graph, rows[0], lo, hi, gen)
    _, m1 = minimise(graph, rows[1], lo, hi, gen)
    C = rows.unsqueeze(0)
    root = compute_bounds(graph, lo, hi, C, BoundOptions(alpha_iterations=20))
    r1 = float(root.lower[0, 1])
    # disjunct 0 holds at x0 by 1e-6; disjunct 1 is (probably) provable
    d = torch.tensor([[m0 + 1e-6, m1 - 0.5 * (m1 - r1) - 1e-3]], dtype=F64)
    prop = Property(C, d, torch.tensor([[0, 1]]), 2)
    witnesses = torch.cat([x0.reshape(1, -1), uniform(lo, hi, 3000, gen)])
    return graph, (lo, hi), root, prop, witnesses


def run_with_witnesses(monkeypatch, graph, box, root, prop, witnesses, config, seconds, tol):
    check = WitnessCheck(graph, prop, witnesses, tol)
    monkeypatch.setattr(driver, "_bound", check)
    outcome = branch_and_bound(graph, box, root.bounds, root.params, prop, config,
                               BranchingPoints(method=config.branching_point),
                               time.monotonic() + seconds)
    return outcome, check


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_driver_never_bounds_a_witness_domain_above_the_witness(act, monkeypatch):
    graph, box, root, prop, witnesses = falsifiable_case(ACTIVATIONS[act], 100)
    outcome, check = run_with_witnesses(monkeypatch, graph, box, root, prop, witnesses,
                                        BabConfig(), 2.0, 1e-7)
    assert outcome.verdict != "unsat"
    assert check.calls >= 2 and check.pairs > 0
    assert outcome.stats["rounds"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("point_method", ["lookup", "midpoint"])
@pytest.mark.parametrize("heuristic", ["bbps", "babsr"])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_driver_witness_domains_many_seeds(act, heuristic, point_method, monkeypatch):
    config = BabConfig(heuristic=heuristic, branching_point=point_method, batch_size=16)
    for seed in range(101, 105):
        graph, box, root, prop, witnesses = falsifiable_case(ACTIVATIONS[act], seed)
        outcome, check = run_with_witnesses(monkeypatch, graph, box, root, prop, witnesses,
                                            config, 2.0, 1e-7)
        assert outcome.verdict != "unsat"
        assert check.pairs > 0


# --- (3) shipped sat instances ------------------------------------------------------------------

def sat_instances() -> list[tuple[str, str]]:
    with open(EXAMPLES / "expected.csv", newline="") as f:
        return [(r["onnx"], r["vnnlib"]) for r in csv.DictReader(f) if r["expected"] == "sat"]


QUICK = {("vnnlib/digits_sigmoid_3x32_idx0_eps0.01.vnnlib", "bbps"),
         ("vnnlib/digits_tanh_2x32_idx0_eps0.08.vnnlib", "babsr")}


def sat_params():
    out = []
    for onnx_path, vnnlib in sat_instances():
        for heuristic in ("bbps", "babsr"):
            marks = () if (vnnlib, heuristic) in QUICK else (pytest.mark.slow,)
            out.append(pytest.param(onnx_path, vnnlib, heuristic, marks=marks,
                                    id=f"{Path(vnnlib).stem}-{heuristic}"))
    return out


@pytest.mark.parametrize("onnx_path, vnnlib, heuristic", sat_params())
def test_bab_never_proves_a_sat_instance(onnx_path, vnnlib, heuristic):
    from genbab.spec.vnnlib1 import parse_vnnlib1
    from genbab.verify import verify

    config = Config(timeout=5, attack=AttackConfig(enabled=False),
                    bab=BabConfig(heuristic=heuristic))
    result = verify(EXAMPLES / onnx_path, parse_vnnlib1(EXAMPLES / vnnlib), config)
    assert result.verdict != "unsat", result.stats
    assert result.verdict in ("unknown", "timeout")


def test_bab_keeps_the_attack_counterexample_domain_open(monkeypatch):
    """digits_sigmoid_3x32 idx0 eps0.01 (sat): the attack's counterexample is a witness
    for every domain the driver bounds (float32, so a looser tolerance)."""
    from genbab.spec.vnnlib1 import parse_vnnlib1
    from genbab.verify import verify

    onnx_path = EXAMPLES / "onnx" / "digits_sigmoid_3x32.onnx"
    spec = parse_vnnlib1(EXAMPLES / "vnnlib" / "digits_sigmoid_3x32_idx0_eps0.01.vnnlib")
    found = verify(onnx_path, spec, Config(timeout=30))
    assert found.verdict == "sat"
    witness = torch.tensor(np.asarray(found.x, np.float64)).reshape(1, -1)
    checks = []
    real = driver.branch_and_bound

    def wrapped(graph, box, root_bounds, root_params, prop, config, points, deadline,
                shortcut_alphas=None):
        check = WitnessCheck(graph, prop, witness.to(box[0].dtype), 1e-3)
        checks.append(check)
        monkeypatch.setattr(driver, "_bound", check)
        return real(graph, box, root_bounds, root_params, prop, config, points, deadline,
                    shortcut_alphas)

    monkeypatch.setattr(driver, "branch_and_bound", wrapped)
    config = Config(timeout=6, attack=AttackConfig(enabled=False))
    result = verify(onnx_path, spec, config)
    assert result.verdict != "unsat"
    assert checks and checks[0].calls >= 2 and checks[0].pairs > 0
