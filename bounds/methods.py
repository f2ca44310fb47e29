"""Bound methods composed from the walks: IBP, CROWN and alpha-CROWN.

``compute_bounds`` is the one entry point: lower (and optionally upper) bounds
of ``C @ output`` over an input box.  Intermediate bounds (of every input of a
nonlinear node) are computed in topological order, each by IBP intersected with
a CROWN backward pass.  alpha-CROWN optimises the relaxation parameters of
every nonlinear node with Adam, separately per start node and per bounded row,
keeping the best bound seen (every iterate is sound).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bounds.graph import Graph
from bounds.ops.base import Tensor
from bounds.traversal import BoundsMap, Params, backward_pass, ibp, identity_spec

METHODS = ("ibp", "crown", "alpha-crown")


@dataclass(frozen=True)
class BoundOptions:
    method: str = "alpha-crown"
    intermediate: str = "crown"  # crown | ibp
    alpha_iterations: int = 50
    alpha_lr: float = 0.1
    alpha_lr_decay: float = 0.98
    optimize_intermediate: bool = True
    max_batch_neurons: int = 2048


@dataclass
class BoundResult:
    lower: Tensor  # [B, S] lower bounds of C @ y
    bounds: BoundsMap  # intermediate bounds used (detached)
    method: str
    iterations: int = 0
    params: Params | None = None  # alpha of the final start node (detached), for warm starts


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
        crown = backward_pass(graph, out.name, A, bounds)
    result = BoundResult(crown, bounds, "crown")
    if options.method == "crown" or not graph.nonlinear_nodes() or \
            options.alpha_iterations <= 0 or (done is not None and done(crown)):
        return result
    return _optimise(graph, lower, upper, A, options, result, objective, done, deadline)


def _optimise(graph, lower, upper, A, options, result, objective, done, deadline) -> BoundResult:
    out = graph.output_node.name
    starts = {out: A.shape[1]}
    optimise_inner = options.optimize_intermediate and options.intermediate == "crown"
    if optimise_inner:
        starts.update({p: 2 * graph[p].size for p in preactivations(graph)})
    params = _init_params(graph, result.bounds, starts)
    tensors = [t for per in params.values() for d in per.values() for t in d.values()]
    if not tensors:
        return result
    opt = torch.optim.Adam(tensors, lr=options.alpha_lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, options.alpha_lr_decay)
    best_lower, best_bounds = result.lower.detach().clone(), _detach(result.bounds)
    iterations = 0
    for iterations in range(1, options.alpha_iterations + 1):
        if optimise_inner:
            try:
                bounds = intermediate_bounds(graph, lower, upper, "crown", params, best_bounds,
                                             options.max_batch_neurons, deadline)
            except BoundTimeout:
                break
        else:
            bounds = best_bounds
        final = backward_pass(graph, out, A, bounds, params.get(out))
        with torch.no_grad():
            best_lower = torch.maximum(best_lower, final.detach())
            if optimise_inner:
                best_bounds = {k: (torch.maximum(best_bounds[k][0], lo.detach()),
                                   torch.minimum(best_bounds[k][1], hi.detach()))
                               for k, (lo, hi) in bounds.items()}
        if (done is not None and done(best_lower)) or (deadline is not None and deadline()):
            break
        loss = objective(final) if objective is not None else -final.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for t in tensors:
                t.clamp_(0, 1)
    final_params = {k: {n: t.detach() for n, t in v.items()}
                    for k, v in params.get(out, {}).items()}
    return BoundResult(best_lower, best_bounds, "alpha-crown", iterations, final_params)
