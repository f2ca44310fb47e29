"""Bound methods composed from the walks: IBP, CROWN and alpha-CROWN.

``compute_bounds`` is the one entry point: lower (and optionally upper) bounds
of ``C @ output`` over an input box.  Intermediate bounds (of every input of a
nonlinear node) are computed in topological order, each by IBP intersected with
a CROWN backward pass.  alpha-CROWN optimises the relaxation parameters of
every nonlinear node with Adam, separately per start node and per bounded row,
keeping the best bound seen (every iterate is sound).

Intermediate bounds are optimised *layer by layer*: the alphas of each
pre-activation's own backward pass are tuned to tighten that pre-activation's
lower and upper bounds (each row its own objective), in topological order, so
every later layer is relaxed over already-tightened intervals; then the
output's alphas are tuned for the property's objective over those fixed
intervals.  This beats tuning every start node's alphas through the gradient
of the final bound alone (eran 6x200, idx 7903: worst margin +1.9 after 10
steps per layer versus -1.2 after 200 joint steps).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bounds.graph import Graph
from bounds.ops.base import Tensor
from bounds.traversal import BoundsMap, Params, backward_pass, backward_record, ibp, identity_spec

METHODS = ("ibp", "crown", "alpha-crown")


@dataclass(frozen=True)
class BoundOptions:
    method: str = "alpha-crown"
    intermediate: str = "crown"  # crown | ibp
    alpha_iterations: int = 50
    alpha_lr: float = 0.1
    alpha_lr_decay: float = 0.98
    optimize_intermediate: bool = True
    intermediate_iterations: int = 10  # alpha steps per pre-activation (layer by layer)
    max_batch_neurons: int = 2048


@dataclass
class BoundResult:
    lower: Tensor  # [B, S] lower bounds of C @ y
    bounds: BoundsMap  # intermediate bounds used (detached)
    method: str
    iterations: int = 0
    params: Params | None = None  # alpha of the final start node (detached), for warm starts
    # alpha of each pre-activation's own pass (layer by layer; detached), where it ran in
    # one chunk: its rows are [lower of every neuron, upper of every neuron]
    intermediate_params: dict[str, Params] | None = None
    # CROWN's linear bound in the input (coefficients [B, S, *input_shape], bias [B, S])
    linear: tuple[Tensor, Tensor] | None = None


def preactivations(graph: Graph) -> list[str]:
    """Inputs of nonlinear nodes (the intermediate bounds a relaxation needs), in order."""
    needed = {i for n in graph.nonlinear_nodes() for i in n.inputs}
    return [n.name for n in graph.nodes if n.name in needed and n.op.kind != "input"]


class BoundTimeout(Exception):
    """The deadline passed while intermediate bounds were being computed."""


def _crown_node(graph: Graph, name: str, bounds: BoundsMap, params: Params | None,
                max_neurons: int, deadline: Callable[[], bool] | None = None
                ) -> tuple[Tensor, Tensor]:
    node = graph[name]
    lower_in = bounds[graph.inputs[0]][0]
    B, N = lower_in.shape[0], node.size
    los, his = [], []
    for start in range(0, N, max_neurons):
        if deadline is not None and deadline():
            raise BoundTimeout(name)
        stop = min(N, start + max_neurons)
        A = identity_spec(N, node.shape, B, start, stop, lower_in)
        chunk_params = params
        if params is not None and (start > 0 or stop < N):
            rows = torch.cat([torch.arange(start, stop), torch.arange(N + start, N + stop)])
            chunk_params = {k: {n: t[:, rows] for n, t in v.items()} for k, v in params.items()}
        res = backward_pass(graph, name, A, bounds, chunk_params)
        k = stop - start
        los.append(res[:, :k])
        his.append(-res[:, k:])
    return (torch.cat(los, 1).reshape(B, *node.shape), torch.cat(his, 1).reshape(B, *node.shape))


def intermediate_bounds(graph: Graph, lower: Tensor, upper: Tensor, intermediate: str,
                        params: dict[str, Params] | None = None,
                        best: BoundsMap | None = None, max_neurons: int = 2048,
                        deadline: Callable[[], bool] | None = None) -> BoundsMap:
    """IBP for every node, tightened by CROWN on pre-activations (and by ``best``).

    Raises ``BoundTimeout`` once ``deadline()`` is True (checked per chunk of neurons).
    """
    needed = set(preactivations(graph))
    bounds: BoundsMap = {graph.inputs[0]: (lower, upper)}
    for node in graph.nodes:
        if node.name in bounds:
            continue
        lo, hi = node.op.interval(*(bounds[i] for i in node.inputs))
        if node.name in needed and intermediate == "crown":
            clo, chi = _crown_node(graph, node.name, bounds,
                                   None if params is None else params.get(node.name), max_neurons,
                                   deadline)
            lo, hi = torch.maximum(lo, clo), torch.minimum(hi, chi)
        if best is not None and node.name in best:
            lo, hi = torch.maximum(lo, best[node.name][0]), torch.minimum(hi, best[node.name][1])
        bounds[node.name] = (lo, hi)
    return bounds


def _init_params(graph: Graph, bounds: BoundsMap, starts: dict[str, int]) -> dict[str, Params]:
    """alpha tensors [B, S_start, *shape] for every (start, nonlinear node before it)."""
    params: dict[str, Params] = {}
    for start, rows in starts.items():
        above = graph.ancestors(start)
        per: Params = {}
        for node in graph.nonlinear_nodes():
            if node.name not in above:
                continue
            init = node.op.init_alpha([(bounds[i][0].detach(), bounds[i][1].detach())
                                       for i in node.inputs])
            if not init:
                continue
            per[node.name] = {k: v.unsqueeze(1).expand(v.shape[0], rows, *v.shape[1:])
                              .clone().requires_grad_(True) for k, v in init.items()}
        if per:
            params[start] = per
    return params


def _detach(bounds: BoundsMap) -> BoundsMap:
    return {k: (lo.detach(), hi.detach()) for k, (lo, hi) in bounds.items()}


def compute_bounds(graph: Graph, lower: Tensor, upper: Tensor, C: Tensor,
                   options: BoundOptions = BoundOptions(),
                   objective: Callable[[Tensor], Tensor] | None = None,
                   done: Callable[[Tensor], bool] | None = None,
                   deadline: Callable[[], bool] | None = None) -> BoundResult:
    """Lower bounds of ``C @ y`` ([B, S]) for inputs in [lower, upper] ([B, *input_shape]).

    ``C`` is [B, S, n_outputs_flat].  ``objective`` maps bounds to a loss to
    minimise (default ``-sum``); ``done`` stops alpha-CROWN early once the bound
    suffices; ``deadline()`` returning True stops it for time.
    """
    if options.method not in METHODS:
        raise ValueError(f"unknown bound method '{options.method}' (known: {', '.join(METHODS)})")
    out = graph.output_node
    A = C.reshape(C.shape[0], C.shape[1], *out.shape)
    with torch.no_grad():
        if options.method == "ibp":
            bounds = ibp(graph, lower, upper)
            lo, hi = bounds[out.name]
            zero = torch.zeros((), dtype=A.dtype, device=A.device)  # never 0 * inf
            lower_bound = (torch.where(A > 0, A * lo.unsqueeze(1), zero)
                           + torch.where(A < 0, A * hi.unsqueeze(1), zero))
            return BoundResult(lower_bound.reshape(A.shape[0], A.shape[1], -1).sum(-1), bounds,
                               "ibp")
        bounds = intermediate_bounds(graph, lower, upper, options.intermediate,
                                     max_neurons=options.max_batch_neurons, deadline=deadline)
        crown, _, linear = backward_record(graph, out.name, A, bounds)
    result = BoundResult(crown, bounds, "crown", linear=linear)
    if options.method == "crown" or not graph.nonlinear_nodes() or \
            options.alpha_iterations <= 0 or (done is not None and done(crown)):
        return result
    return _optimise(graph, lower, upper, A, options, result, objective, done, deadline)


def _optimise(graph, lower, upper, A, options, result, objective, done, deadline) -> BoundResult:
    """Layer-by-layer intermediate bounds, then the output's alphas.

    With intermediate optimisation the work comes in two passes: a short one
    (a third of ``intermediate_iterations`` per pre-activation) and, only if
    the property is not proved yet, a full one starting from the bounds the
    first pass tightened.  Easy properties stop after the short pass.
    """
    bounds = result.bounds
    best_lower = result.lower.detach().clone()
    loss = objective if objective is not None else (lambda lb: -lb.sum())
    inner = options.optimize_intermediate and options.intermediate == "crown"
    k = options.intermediate_iterations
    passes = ((max(1, k // 3), k) if k >= 3 else (k,)) if inner else (0,)
    params, iterations, inner_params = None, 0, None
    for steps in passes:
        if steps:
            inner_params = {}
            bounds = optimise_intermediate(graph, lower, upper, _detach(bounds), options,
                                           deadline, steps, inner_params)
            with torch.no_grad():
                best_lower = torch.maximum(best_lower,
                                           backward_pass(graph, graph.output_node.name, A, bounds))
        if (done is not None and done(best_lower)) or (deadline is not None and deadline()):
            break
        final, params, taken = _optimise_start(graph, graph.output_node.name, A, bounds,
                                               options.alpha_iterations, options, loss, done,
                                               deadline)
        iterations += taken
        if final is not None:
            best_lower = torch.maximum(best_lower, final)
        if done is not None and done(best_lower):
            break
    return BoundResult(best_lower, bounds, "alpha-crown", iterations, params, inner_params)


def _optimise_start(graph: Graph, start: str, A: Tensor, bounds: BoundsMap, iterations: int,
                    options: BoundOptions, loss: Callable[[Tensor], Tensor],
                    done: Callable[[Tensor], bool] | None = None,
                    deadline: Callable[[], bool] | None = None
                    ) -> tuple[Tensor | None, Params | None, int]:
    """Adam on the alphas of one start node's backward pass over fixed ``bounds``.

    Returns (best lower bound of ``A·z_start`` seen, final alphas detached,
    steps taken), or (None, None, 0) when there is nothing to optimise.
    """
    params = _init_params(graph, bounds, {start: A.shape[1]}).get(start)
    if not params:
        return None, None, 0
    tensors = [t for d in params.values() for t in d.values()]
    opt = torch.optim.Adam(tensors, lr=options.alpha_lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, options.alpha_lr_decay)
    best = None
    step = 0
    for step in range(1, iterations + 1):
        value = backward_pass(graph, start, A, bounds, params)
        with torch.no_grad():
            best = value.detach() if best is None else torch.maximum(best, value.detach())
        if (done is not None and done(best)) or (deadline is not None and deadline()):
            break
        opt.zero_grad(set_to_none=True)
        loss(value).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for t in tensors:
                t.clamp_(0, 1)
    return best, {n: {k: t.detach() for k, t in d.items()} for n, d in params.items()}, step


def optimise_intermediate(graph: Graph, lower: Tensor, upper: Tensor, bounds: BoundsMap,
                          options: BoundOptions,
                          deadline: Callable[[], bool] | None = None,
                          iterations: int | None = None,
                          alphas_out: dict[str, Params] | None = None) -> BoundsMap:
    """Tighten every pre-activation's bounds with its own alpha-CROWN, in topological order.

    ``bounds`` (sound, e.g. from CROWN) are only ever intersected with new
    sound bounds; after each pre-activation the intervals of later nodes are
    recomputed by IBP from the tightened ones.  Stops early (returning sound
    bounds) once ``deadline()`` is True.  ``iterations`` defaults to
    ``options.intermediate_iterations``.  ``alphas_out`` (if given) receives
    each pre-activation's final alphas when it was bounded in one chunk.
    """
    steps = options.intermediate_iterations if iterations is None else iterations
    bounds = dict(bounds)
    for name in preactivations(graph):
        if deadline is not None and deadline():
            break
        node = graph[name]
        lo, hi = bounds[name]
        B, N = lo.shape[0], node.size
        new_lo, new_hi = lo.reshape(B, N).clone(), hi.reshape(B, N).clone()
        changed = False
        for first in range(0, N, options.max_batch_neurons):
            stop = min(N, first + options.max_batch_neurons)
            A = identity_spec(N, node.shape, B, first, stop, lo)
            best, alphas, _ = _optimise_start(graph, name, A, bounds, steps,
                                         options, lambda value: -value.sum(), None, deadline)
            if best is None:
                break  # no nonlinear node above: CROWN is already exact here
            k = stop - first
            new_lo[:, first:stop] = torch.maximum(new_lo[:, first:stop], best[:, :k])
            new_hi[:, first:stop] = torch.minimum(new_hi[:, first:stop], -best[:, k:])
            changed = True
            if alphas_out is not None and first == 0 and stop == N:
                alphas_out[name] = alphas
        if changed:
            bounds[name] = (new_lo.reshape(lo.shape), new_hi.reshape(hi.shape))
            with torch.no_grad():
                bounds = ibp(graph, lower, upper, known=bounds)
    return bounds
