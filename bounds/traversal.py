"""The graph walks: forward IBP over all nodes, and one backward linear-bound pass.

The walk is separate from the bound method: ``backward_pass`` accumulates the
coefficients of a linear function of a start node onto the network input,
asking each op for its backward step; IBP and CROWN in ``bounds.methods`` are
short compositions of these walks.
"""
from __future__ import annotations

import torch

from bounds.graph import Graph
from bounds.ops.base import Bounds, Tensor, split_signs

BoundsMap = dict[str, Bounds]
Params = dict[str, dict[str, Tensor]]  # nonlinear node name -> alpha tensors
Betas = dict[str, tuple[Tensor | None, Tensor | None]]  # node -> (beta_lower, beta_upper)


def ibp(graph: Graph, lower: Tensor, upper: Tensor,
        known: BoundsMap | None = None) -> BoundsMap:
    """Interval bounds of every node; ``known`` bounds (tighter, sound) replace IBP's."""
    bounds: BoundsMap = {graph.inputs[0]: (lower, upper)}
    for node in graph.nodes:
        if node.name in bounds:
            continue
        lo, hi = node.op.interval(*(bounds[i] for i in node.inputs))
        if known and node.name in known:
            klo, khi = known[node.name]
            lo, hi = torch.maximum(lo, klo), torch.minimum(hi, khi)
        bounds[node.name] = (lo, hi)
    return bounds


def concretize(A: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """min over the box of A·x: [B, S, *shape] with [B, *shape] bounds -> [B, S]."""
    A_pos, A_neg = split_signs(A)
    B, S = A.shape[:2]
    lo = (A_pos * lower.unsqueeze(1) + A_neg * upper.unsqueeze(1))
    return lo.reshape(B, S, -1).sum(-1)


def backward_pass(graph: Graph, start: str, A: Tensor, bounds: BoundsMap,
                  params: Params | None = None, betas: Betas | None = None) -> Tensor:
    """Lower bound of ``A·z_start`` over the input box: [B, S].

    ``bounds`` must hold the input box and the bounds of every input of a
    nonlinear node between ``start`` and the network input.  ``betas`` adds
    split constraints (beta-CROWN): per node, multipliers >= 0 for
    ``z >= lower`` and ``z <= upper`` of that node's bounds.
    """
    return backward_record(graph, start, A, bounds, params, betas)[0]


def backward_record(graph: Graph, start: str, A: Tensor, bounds: BoundsMap,
                    params: Params | None = None, betas: Betas | None = None,
                    record: frozenset[str] = frozenset()
                    ) -> tuple[Tensor, dict[str, Tensor], tuple[Tensor, Tensor] | None]:
    """``backward_pass`` that also returns the coefficients reaching the nodes in
    ``record`` and the linear function of the input ``(A_x, bias)`` before concretisation."""
    pending: dict[str, Tensor] = {start: A}
    total = A.new_zeros(A.shape[:2])
    recorded: dict[str, Tensor] = {}
    linear = None
    for node in reversed(graph.ancestor_nodes(start)):
        coeff = pending.pop(node.name, None)
        if coeff is None:
            continue
        if betas is not None and node.name in betas and node.op.kind != "input":
            coeff, total = _add_split_terms(coeff, total, bounds[node.name], betas[node.name])
        if node.name in record:
            recorded[node.name] = coeff
        if node.op.kind == "input":
            lo, hi = bounds[node.name]
            linear = (coeff, total)
            total = total + concretize(coeff, lo, hi)
            continue
        node_params = None if params is None else params.get(node.name)
        in_bounds = [bounds.get(i) for i in node.inputs]
        coeffs, bias = node.op.backward(coeff, in_bounds, node_params)
        total = total + bias
        for name, c in zip(node.inputs, coeffs):
            if c is None:
                continue
            pending[name] = c if name not in pending else pending[name] + c
    return total, recorded, linear


def _add_split_terms(coeff: Tensor, total: Tensor, node_bounds, beta) -> tuple[Tensor, Tensor]:
    """f >= f - b_lo*(z - lo) - b_hi*(hi - z) on {lo <= z <= hi}, for b_lo, b_hi >= 0."""
    lo, hi = node_bounds
    beta_lo, beta_hi = beta
    B, S = coeff.shape[:2]
    if beta_lo is not None:
        coeff = coeff - beta_lo
        total = total + (beta_lo * lo.unsqueeze(1)).reshape(B, S, -1).sum(-1)
    if beta_hi is not None:
        coeff = coeff + beta_hi
        total = total - (beta_hi * hi.unsqueeze(1)).reshape(B, S, -1).sum(-1)
    return coeff, total


def identity_spec(size: int, shape: tuple[int, ...], batch: int, start: int, stop: int,
                  like: Tensor) -> Tensor:
    """Rows ``e_i`` then ``-e_i`` for neurons start..stop-1: [B, 2k, *shape]."""
    k = stop - start
    eye = torch.zeros(k, size, dtype=like.dtype, device=like.device)
    eye[torch.arange(k, device=like.device), torch.arange(start, stop, device=like.device)] = 1
    both = torch.cat([eye, -eye], 0).reshape(2 * k, *shape)
    return both.unsqueeze(0).expand(batch, *both.shape)
