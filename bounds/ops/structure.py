"""Structural affine operators: re-indexing, reductions, concatenation, selection, ConvTranspose.

Every op here is affine in its variable inputs, so its backward step is exact
(the transpose of the linear map, plus the constant part as a bias) and IBP is
the exact range (0/1 maps and non-negative sums map endpoints to endpoints;
ConvTranspose uses centre and radius).

- ``IndexMap``: ``y.flat[j] = x.flat[index[j]]`` (or a constant where ``index[j] < 0``):
  Slice, Split, Gather, Expand, Tile, Pad, Upsample/Resize (nearest), Transpose...
- ``ReduceSum``: sum (or mean, through ``scale``) over non-batch axes.
- ``Concat``: concatenation of variables and constants along a non-batch axis.
- ``Where``: elementwise select by a constant mask between variables and constants.
- ``ConvTranspose``: transposed 1-d/2-d/3-d convolution with pads and output padding.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bounds.ops.base import Bounds, Op, Tensor, unbroadcast


def _batched_sum(prod: Tensor) -> Tensor:
    """Sum over every axis after the first two: [B, S, ...] -> [B, S]."""
    return prod.reshape(prod.shape[0], prod.shape[1], -1).sum(-1)


class IndexMap(Op):
    """A per-sample gather by flat index: ``y.flat[j] = x.flat[index[j]]``.

    ``index`` (int64, shaped like the per-sample output) may hold ``-1`` where
    the output is the constant ``fill`` instead (Pad in constant mode, Concat
    with constants).  Indices may repeat (Expand, Tile, Upsample): the backward
    step then sums the coefficients of every copy.
    """

    def __init__(self, index: Tensor, in_shape: Sequence[int], label: str,
                 fill: Tensor | None = None):
        index = index.long()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(index.shape)
        self.label = label
        self.flat = index.clamp(min=0).reshape(-1)
        self.valid = None
        self.fill = None
        if bool((index < 0).any()):
            if fill is None:
                raise ValueError("IndexMap: negative indices need a fill value")
            self.valid = index >= 0
            self.fill = torch.where(self.valid, 0.0, torch.broadcast_to(fill, index.shape)
                                    .to(torch.float64))
        n_in = 1
        for n in self.in_shape:
            n_in *= n
        if self.flat.numel() and int(self.flat.max()) >= n_in:
            raise ValueError("IndexMap: index out of range")

    def forward(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        y = x.reshape(B, -1).index_select(1, self.flat).reshape(B, *self.out_shape)
        if self.fill is not None:
            y = torch.where(self.valid, y, self.fill.to(y.dtype))
        return y

    def interval(self, bounds: Bounds) -> Bounds:
        return self.forward(bounds[0]), self.forward(bounds[1])

    def backward(self, A, in_bounds, params=None):
        B, S = A.shape[:2]
        flat = A.reshape(B, S, -1)
        bias = A.new_zeros(B, S)
        if self.fill is not None:
            bias = (flat * self.fill.reshape(-1)).sum(-1)
            flat = flat * self.valid.reshape(-1)
        n_in = 1
        for n in self.in_shape:
            n_in *= n
        A_in = flat.new_zeros(B, S, n_in).index_add_(2, self.flat, flat)
        return [A_in.reshape(B, S, *self.in_shape)], bias

    def __repr__(self) -> str:
        return f"IndexMap({self.label})"


class ReduceSum(Op):
    """``scale * sum`` over axes of the batched tensor (never axis 0); ReduceMean has scale 1/n."""

    def __init__(self, axes: Sequence[int], keepdims: bool, in_shape: Sequence[int],
                 scale: float = 1.0):
        self.axes = tuple(sorted(axes))
        if any(a < 1 for a in self.axes):
            raise ValueError("ReduceSum over the batch axis")
        if scale <= 0:
            raise ValueError("ReduceSum scale must be positive")
        self.keepdims, self.in_shape, self.scale = keepdims, tuple(in_shape), float(scale)

    def forward(self, x: Tensor) -> Tensor:
        if not self.axes:
            return x * self.scale
        return x.sum(dim=self.axes, keepdim=self.keepdims) * self.scale

    def interval(self, bounds: Bounds) -> Bounds:
        return self.forward(bounds[0]), self.forward(bounds[1])

    def backward(self, A, in_bounds, params=None):
        B, S = A.shape[:2]
        if not self.keepdims:
            for a in self.axes:
                A = A.unsqueeze(a + 1)
        A_in = A.expand(B, S, *self.in_shape) * self.scale
        return [A_in], A.new_zeros(B, S)

    def __repr__(self) -> str:
        return f"ReduceSum(axes={self.axes}, scale={self.scale:.4g})"


class Concat(Op):
    """Concatenation along a non-batch ``axis`` of variables and constants.

    ``segments`` lists ``(start, length, is_variable)`` along the axis in output
    order; ``template`` is the per-sample output with the constants filled in
    and zeros at the variable segments (so the bias of the backward step is
    ``A·template``).
    """

    def __init__(self, axis: int, segments: Sequence[tuple[int, int, bool]], template: Tensor):
        if axis < 1:
            raise ValueError("Concat along the batch axis")
        self.axis, self.segments, self.template = axis, tuple(segments), template
        self.n_inputs = sum(1 for s in self.segments if s[2])
        self.has_const = any(not s[2] for s in self.segments)

    def forward(self, *xs: Tensor) -> Tensor:
        B = xs[0].shape[0]
        template = self.template.to(xs[0].dtype)
        pieces, k = [], 0
        for start, length, is_var in self.segments:
            if is_var:
                pieces.append(xs[k])
                k += 1
            else:
                const = template.narrow(self.axis - 1, start, length)
                pieces.append(const.unsqueeze(0).expand(B, *const.shape))
        return torch.cat(pieces, dim=self.axis)

    def interval(self, *bounds: Bounds) -> Bounds:
        return (self.forward(*(b[0] for b in bounds)), self.forward(*(b[1] for b in bounds)))

    def backward(self, A, in_bounds, params=None):
        coeffs = [A.narrow(self.axis + 1, start, length)
                  for start, length, is_var in self.segments if is_var]
        bias = _batched_sum(A * self.template) if self.has_const else A.new_zeros(A.shape[:2])
        return coeffs, bias

    def __repr__(self) -> str:
        return f"Concat(axis={self.axis}, parts={len(self.segments)})"


class Where(Op):
    """``y = where(mask, a, b)`` with a constant mask; ``a``/``b`` variables or constants.

    ``var_slots`` says which of ``(a, b)`` are the op's inputs, in order;
    ``const`` is the other operand when only one is a variable.  All shapes are
    per sample and broadcast to ``out_shape``.
    """

    def __init__(self, mask: Tensor, var_slots: Sequence[int], const: Tensor | None,
                 in_shapes: Sequence[Sequence[int]], out_shape: Sequence[int]):
        self.mask = mask.to(torch.float64)  # 0/1
        self.var_slots = tuple(var_slots)
        self.const = const
        self.in_shapes = [tuple(s) for s in in_shapes]
        self.out_shape = tuple(out_shape)
        self.n_inputs = len(self.var_slots)

    def _operands(self, xs: Sequence[Tensor]) -> list[Tensor]:
        ops: list[Tensor | None] = [None, None]
        for slot, x, shape in zip(self.var_slots, xs, self.in_shapes):
            extra = len(self.out_shape) - len(shape)  # align per-sample axes, not the batch
            ops[slot] = x.reshape(x.shape[0], *((1,) * extra), *shape) if extra else x
        for slot in (0, 1):
            if ops[slot] is None:
                ops[slot] = self.const.to(xs[0].dtype)
        return ops

    def forward(self, *xs: Tensor) -> Tensor:
        a, b = self._operands(xs)
        y = torch.where(self.mask > 0.5, a, b)
        return y.expand(xs[0].shape[0], *self.out_shape)

    def interval(self, *bounds: Bounds) -> Bounds:
        return (self.forward(*(b[0] for b in bounds)), self.forward(*(b[1] for b in bounds)))

    def backward(self, A, in_bounds, params=None):
        weights = (self.mask, 1 - self.mask)
        coeffs = [unbroadcast(A * weights[slot], shape)
                  for slot, shape in zip(self.var_slots, self.in_shapes)]
        bias = A.new_zeros(A.shape[:2])
        if self.const is not None:
            const_slot = 1 - self.var_slots[0]
            bias = _batched_sum(A * (weights[const_slot] * self.const))
        return coeffs, bias

    def __repr__(self) -> str:
        return f"Where(vars={self.var_slots})"


class ConvTranspose(Op):
    """Transposed convolution (1-d to 3-d) with asymmetric pads and output padding.

    ``weight`` is ``[C_in, C_out / groups, *kernel]`` as in ONNX and torch.  The
    output is the full transposed convolution (size ``s(n-1) + d(k-1) + 1``),
    extended by ``output_padding`` zeros at the end, cropped by the pads, plus
    the bias.  Its adjoint is the ordinary convolution with the same weight.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, stride, pads, output_padding,
                 dilation, groups: int, in_shape: Sequence[int]):
        self.weight, self.bias = weight, bias
        nd = weight.dim() - 2
        if nd not in (1, 2, 3):
            raise ValueError(f"{nd}-d ConvTranspose")
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), groups
        self.in_shape = tuple(in_shape)
        begin, end = list(pads[:nd]), list(pads[nd:])
        self.full_shape = tuple(s * (n - 1) + d * (k - 1) + 1 for n, s, d, k in
                                zip(in_shape[1:], stride, dilation, weight.shape[2:]))
        self.crop: list[int] = []  # F.pad spec (last dim first) from the full output
        for b, e, op in zip(reversed(begin), reversed(end), reversed(list(output_padding))):
            self.crop += [-b, op - e]
        self.out_shape = (weight.shape[1] * groups,) + tuple(
            f + op - b - e for f, op, b, e in zip(self.full_shape, output_padding, begin, end))

    def _transposed(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[weight.dim() - 3]
        y = fn(x, weight, None, self.stride, 0, 0, self.groups, self.dilation)
        if any(self.crop):
            y = F.pad(y, self.crop)
        if bias is not None:
            y = y + bias.reshape((-1,) + (1,) * (weight.dim() - 2))
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self._transposed(x, self.weight, self.bias)

    def interval(self, bounds: Bounds) -> Bounds:
        lo, hi = bounds
        c, r = (lo + hi) / 2, (hi - lo) / 2
        c, r = self.forward(c), self._transposed(r, self.weight.abs(), None)
        return c - r, c + r

    def backward(self, A, in_bounds, params=None):
        B, S = A.shape[:2]
        flat = A.reshape(B * S, *A.shape[2:])
        if any(self.crop):
            flat = F.pad(flat, [-p for p in self.crop])
        fn = (F.conv1d, F.conv2d, F.conv3d)[self.weight.dim() - 3]
        A_in = fn(flat, self.weight, None, self.stride, 0, self.dilation, self.groups)
        A_in = A_in.reshape(B, S, *self.in_shape)
        bias = A.new_zeros(B, S)
        if self.bias is not None:
            view = self.bias.reshape((-1,) + (1,) * (self.weight.dim() - 2))
            bias = _batched_sum(A * view)
        return [A_in], bias

    def __repr__(self) -> str:
        return f"ConvTranspose{tuple(self.weight.shape)}"
