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
                  params: Params | None = None) -> Tensor:
    """Lower bound of ``A·z_start`` over the input box: [B, S].

    ``bounds`` must hold the input box and the bounds of every input of a
    nonlinear node between ``start`` and the network input.
    """
    pending: dict[str, Tensor] = {start: A}
    total = A.new_zeros(A.shape[:2])
    order = [n for n in graph.nodes if n.name in graph.ancestors(start)]
    for node in reversed(order):
        coeff = pending.pop(node.name, None)
        if coeff is None:
            continue
        if node.op.kind == "input":
            lo, hi = bounds[node.name]
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
    return total


def identity_spec(size: int, shape: tuple[int, ...], batch: int, start: int, stop: int,
                  like: Tensor) -> Tensor:
    """Rows ``e_i`` then ``-e_i`` for neurons start..stop-1: [B, 2k, *shape]."""
    k = stop - start
    eye = torch.zeros(k, size, dtype=like.dtype, device=like.device)
    eye[torch.arange(k, device=like.device), torch.arange(start, stop, device=like.device)] = 1
    both = torch.cat([eye, -eye], 0).reshape(2 * k, *shape)
    return both.unsqueeze(0).expand(batch, *both.shape)
