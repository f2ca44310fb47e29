"""Bounds of many sub-problems at once under split constraints (beta-CROWN style).

Used by branch and bound: every sub-problem (a row of the batch) has its own
intermediate bounds — tightened where a neuron was split — and split
constraints ``z >= lower`` / ``z <= upper`` on those neurons.  Intermediate
bounds are kept fixed; the relaxation parameters (alpha) of the final start node
and the split multipliers (beta >= 0) are optimised jointly, warm-started from
the parent, and the best bound per row is kept (every iterate is sound).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bounds.graph import Graph
from bounds.ops.base import Tensor
from bounds.traversal import Betas, BoundsMap, Params, backward_record


@dataclass
class SplitBoundResult:
    lower: Tensor  # [B, S]
    params: Params  # optimised alpha (detached), warm start for children
    coefficients: dict[str, Tensor]  # A reaching each nonlinear node (last iterate), [B, S, *]
    linear: tuple[Tensor, Tensor] | None  # input coefficients and bias of the last iterate


def bound_under_splits(graph: Graph, bounds: BoundsMap, C: Tensor,
                       split_masks: dict[str, tuple[Tensor, Tensor]], params: Params,
                       iterations: int, lr: float,
                       objective: Callable[[Tensor], Tensor] | None = None,
                       done: Callable[[Tensor], bool] | None = None,
                       deadline: Callable[[], bool] | None = None) -> SplitBoundResult:
    """Lower bounds of ``C @ y`` per row of the batch.

    ``bounds`` holds batched intermediate bounds (and the input box);
    ``split_masks[node] = (lower_mask, upper_mask)`` marks neurons whose lower /
    upper bound comes from a split.  ``params`` are alpha tensors [B, S, *shape]
    per nonlinear node (copied, not modified).
    """
    out = graph.output_node
    A = C.reshape(C.shape[0], C.shape[1], *out.shape)
    S = A.shape[1]
    record = frozenset(n.name for n in graph.nonlinear_nodes())
    alphas = {k: {n: t.detach().clone().requires_grad_(iterations > 0) for n, t in v.items()}
              for k, v in params.items()}
    betas: dict[str, list[Tensor | None]] = {}
    for name, (lo_mask, hi_mask) in split_masks.items():
        pair = []
        for mask in (lo_mask, hi_mask):
            if mask is None or not bool(mask.any()):
                pair.append(None)
            else:
                pair.append(torch.zeros(A.shape[0], S, *mask.shape[1:], dtype=A.dtype,
                                        device=A.device, requires_grad=iterations > 0))
        if any(p is not None for p in pair):
            betas[name] = pair
    masks = {name: tuple(None if m is None else m.unsqueeze(1).to(A.dtype)
                         for m in split_masks[name]) for name in betas}

    def run():
        active: Betas = {name: tuple(None if b is None else b.clamp(min=0) * m
                                     for b, m in zip(pair, masks[name]))
                         for name, pair in betas.items()}
        return backward_record(graph, out.name, A, bounds, alphas, active, record)

    tensors = [t for v in alphas.values() for t in v.values()] + \
        [b for pair in betas.values() for b in pair if b is not None]
    optimise = iterations > 0 and bool(tensors)
    with torch.enable_grad() if optimise else torch.no_grad():
        total, coeffs, linear = run()
        best = total.detach().clone()
        if optimise and not (done is not None and done(best)):
            opt = torch.optim.Adam(tensors, lr=lr)
            for _ in range(iterations):
                loss = objective(total) if objective is not None else -total.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _project(alphas, betas)
                total, coeffs, linear = run()
                best = torch.maximum(best, total.detach())
                if (done is not None and done(best)) or (deadline is not None and deadline()):
                    break
    detached = {k: {n: t.detach() for n, t in v.items()} for k, v in alphas.items()}
    coeffs = {k: v.detach() for k, v in coeffs.items()}
    linear = None if linear is None else (linear[0].detach(), linear[1].detach())
    return SplitBoundResult(best, detached, coeffs, linear)


def _project(alphas: Params, betas: dict[str, list[Tensor | None]]) -> None:
    with torch.no_grad():
        for v in alphas.values():
            for t in v.values():
                t.clamp_(0, 1)
        for pair in betas.values():
            for b in pair:
                if b is not None:
                    b.clamp_(min=0)
