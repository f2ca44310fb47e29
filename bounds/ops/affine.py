"""Affine operators: their forward pass, IBP (centre/radius) and exact backward step.

Every op here is affine in its variable inputs, so the backward step is exact:
``A·y = A·(W x + b) = (A W)·x + A·b``.  Constant operands are folded into the
op at import time.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from bounds.ops.base import Bounds, Op, Tensor, unbroadcast


def _centre_radius(bounds: Bounds) -> tuple[Tensor, Tensor]:
    lo, hi = bounds
    return (lo + hi) / 2, (hi - lo) / 2


def _outward(lo: Tensor, hi: Tensor) -> Bounds:
    """NaN (from infinite bounds: inf - inf, 0 * inf) becomes the trivial bound."""
    return lo.nan_to_num(nan=-float("inf")), hi.nan_to_num(nan=float("inf"))


class Linear(Op):
    """``y = x @ W^T + b`` over the last axis (Gemm, MatMul with a constant right operand)."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        self.weight = weight  # [N, K]
        self.bias = bias  # [N] or None

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias

    def interval(self, bounds: Bounds) -> Bounds:
        c, r = _centre_radius(bounds)
        c, r = self.forward(c), r @ self.weight.abs().T
        return _outward(c - r, c + r)

    def backward(self, A, in_bounds, params=None):
        A_in = A @ self.weight
        if self.bias is None:
            return [A_in], A.new_zeros(A.shape[:2])
        bias = (A * self.bias).reshape(A.shape[0], A.shape[1], -1).sum(-1)
        return [A_in], bias


class ConstMatMulLeft(Op):
    """``y = W @ x`` with a constant left operand (batched matrix product on the last two axes)."""

    def __init__(self, weight: Tensor, in_shape: Sequence[int] | None = None):
        self.weight = weight  # [..., M, K]
        self.in_shape = None if in_shape is None else tuple(in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.weight @ x

    def interval(self, bounds: Bounds) -> Bounds:
        c, r = _centre_radius(bounds)
        c, r = self.weight @ c, self.weight.abs() @ r
        return _outward(c - r, c + r)

    def backward(self, A, in_bounds, params=None):
        A_in = self.weight.transpose(-1, -2) @ A
        in_shape = self.in_shape
        if in_shape is None:
            in_shape = in_bounds[0][0].shape[1:] if in_bounds and in_bounds[0] is not None \
                else A_in.shape[2:]
        return [unbroadcast(A_in, in_shape)], A.new_zeros(A.shape[:2])


class ElementwiseAffine(Op):
    """``y = x * scale + shift`` with numpy broadcasting (Add/Sub/Mul/Div by a constant, BN).

    ``scale`` and ``shift`` are per-sample: they broadcast against ``[*shape]``
    (the importer strips a leading batch axis of size 1).
    """

    def __init__(self, scale: Tensor | None, shift: Tensor | None, in_shape: Sequence[int]):
        self.scale = scale
        self.shift = shift
        self.in_shape = tuple(in_shape)

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.scale is None else x * self.scale
        return y if self.shift is None else y + self.shift

    def interval(self, bounds: Bounds) -> Bounds:
        c, r = _centre_radius(bounds)
        c = self.forward(c)
        r = r if self.scale is None else r * self.scale.abs()
        r = r.expand_as(c)
        return _outward(c - r, c + r)

    def backward(self, A, in_bounds, params=None):
        A_in = A if self.scale is None else A * self.scale
        bias = A.new_zeros(A.shape[:2])
        if self.shift is not None:
            bias = (A * self.shift).reshape(A.shape[0], A.shape[1], -1).sum(-1)
        return [unbroadcast(A_in, self.in_shape)], bias


class AddVar(Op):
    """``y = x1 + sign * x2`` for two variable operands (Add, Sub), with broadcasting."""

    n_inputs = 2

    def __init__(self, sign: float, shapes: Sequence[Sequence[int]]):
        self.sign = sign
        self.shapes = [tuple(s) for s in shapes]

    def _align(self, t: Tensor, index: int) -> Tensor:
        """Insert unit axes after the batch axis so per-sample shapes broadcast as in ONNX."""
        rank = max(len(s) for s in self.shapes)
        missing = rank - len(self.shapes[index])
        return t.reshape(t.shape[0], *((1,) * missing), *t.shape[1:]) if missing else t

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self._align(x1, 0) + self.sign * self._align(x2, 1)

    def interval(self, b1: Bounds, b2: Bounds) -> Bounds:
        (l1, u1), (l2, u2) = [tuple(self._align(t, i) for t in b) for i, b in enumerate((b1, b2))]
        if self.sign > 0:
            return l1 + l2, u1 + u2
        return l1 - u2, u1 - l2

    def backward(self, A, in_bounds, params=None):
        return ([unbroadcast(A, self.shapes[0]), unbroadcast(self.sign * A, self.shapes[1])],
                A.new_zeros(A.shape[:2]))


class Conv(Op):
    """N-d convolution (1-d or 2-d) with explicit, possibly asymmetric zero padding."""

    def __init__(self, weight: Tensor, bias: Tensor | None, stride, pads, dilation, groups: int,
                 in_shape: Sequence[int]):
        self.weight, self.bias = weight, bias
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), groups
        nd = weight.dim() - 2
        begin, end = list(pads[:nd]), list(pads[nd:])
        self.pad_torch: list[int] = []  # F.pad order: last dim first
        for b, e in zip(reversed(begin), reversed(end)):
            self.pad_torch += [b, e]
        self.in_shape = tuple(in_shape)
        self.padded_shape = tuple([in_shape[0]] + [n + b + e for n, b, e in
                                                   zip(in_shape[1:], begin, end)])

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if any(self.pad_torch):
            x = F.pad(x, self.pad_torch)
        fn = F.conv1d if weight.dim() == 3 else F.conv2d
        return fn(x, weight, bias, self.stride, 0, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, self.bias)

    def interval(self, bounds: Bounds) -> Bounds:
        c, r = _centre_radius(bounds)
        c, r = self.forward(c), self._conv(r, self.weight.abs(), None)
        return _outward(c - r, c + r)

    def backward(self, A, in_bounds, params=None):
        B, S = A.shape[:2]
        flat = A.reshape(B * S, *A.shape[2:])
        grad = torch.nn.grad.conv1d_input if self.weight.dim() == 3 else \
            torch.nn.grad.conv2d_input
        A_in = grad((B * S,) + self.padded_shape, self.weight, flat, self.stride, 0,
                    self.dilation, self.groups)
        if any(self.pad_torch):
            slices = [slice(None), slice(None)]
            pads = self.pad_torch
            for i in range(len(pads) // 2 - 1, -1, -1):
                b, e = pads[2 * i], pads[2 * i + 1]
                slices.append(slice(b, A_in.shape[len(slices)] - e))
            A_in = A_in[tuple(slices)]
        A_in = A_in.reshape(B, S, *self.in_shape)
        bias = A.new_zeros(B, S)
        if self.bias is not None:
            view = self.bias.reshape((-1,) + (1,) * (self.weight.dim() - 2))
            bias = (A * view).reshape(B, S, -1).sum(-1)
        return [A_in], bias


class Reshape(Op):
    """Per-sample reshape (Flatten, Reshape, Squeeze, Unsqueeze): the batch axis is kept."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def interval(self, bounds: Bounds) -> Bounds:
        return self.forward(bounds[0]), self.forward(bounds[1])

    def backward(self, A, in_bounds, params=None):
        return [A.reshape(A.shape[0], A.shape[1], *self.in_shape)], A.new_zeros(A.shape[:2])


class Rearrange(Op):
    """A per-sample re-indexing given as a function (Transpose, Slice, Gather on constants...).

    The function must only select, copy or permute entries (a 0/1 linear map), so
    IBP is ``(f(lo), f(hi))`` and the backward step is its vector-Jacobian product.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], in_shape: Sequence[int], label: str):
        self.fn, self.in_shape, self.label = fn, tuple(in_shape), label

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def interval(self, bounds: Bounds) -> Bounds:
        return self.fn(bounds[0]), self.fn(bounds[1])

    def backward(self, A, in_bounds, params=None):
        B, S = A.shape[:2]
        x0 = A.new_zeros((1,) + self.in_shape)
        _, vjp = torch.func.vjp(self.fn, x0)
        flat = A.reshape(B * S, 1, *A.shape[2:])
        (A_in,) = torch.func.vmap(vjp)(flat)
        return [A_in.reshape(B, S, *self.in_shape)], A.new_zeros(B, S)

    def __repr__(self) -> str:
        return f"Rearrange({self.label})"
