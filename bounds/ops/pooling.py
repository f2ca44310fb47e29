"""Pooling over windows of input positions: AveragePool (affine) and MaxPool (nonlinear).

Both ops read their input through a constant window table ``index``
``[*out_shape, K]`` of flat per-sample input positions (``-1`` for padding),
built once by ``pool_windows``; so strides, dilations, asymmetric pads,
``ceil_mode`` and global pooling are all the same code, and the backward step
is a scatter-add of coefficients into the input.

MaxPool relaxation on a window with bounds ``l_k <= x_k <= u_k``:
- lower: ``y >= sum_k lambda_k x_k`` for weights ``lambda`` on the simplex (valid
  since ``y >= x_k`` for every k); by default all weight on the largest ``l_k``;
  ``lambda`` is optimisable (alpha-CROWN), as non-negative weights normalised;
- upper: with ``i`` the largest ``u_k`` and ``M`` the largest other ``u_k``,
  ``y <= max(x_i, M)``, bounded by its chord on ``[l_i, u_i]``; when
  ``M <= l_i`` the window is decided and the line is ``y = x_i`` exactly.
IBP is exact: the window max of the lower and of the upper bounds.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bounds.ops.base import Bounds, Op, Tensor, split_signs


def _pool_extent(n: int, k: int, s: int, d: int, begin: int, end: int, ceil_mode: bool) -> int:
    span = n + begin + end - ((k - 1) * d + 1)
    if span < 0:
        raise ValueError("pooling window larger than the padded input")
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= n + begin:  # the last window must start inside the input or left pad
        out -= 1
    return out


def pool_windows(in_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                 pads: Sequence[int], dilations: Sequence[int], ceil_mode: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Window table for pooling a per-sample ``(C, *spatial)`` tensor.

    Returns ``index`` ``[C, *out_spatial, K]`` (flat per-sample positions, -1 for
    padding) and ``in_padded`` ``[*out_spatial, K]`` (True where the position lies
    inside the input or the explicit pads, for ``count_include_pad``).
    """
    channels, spatial = in_shape[0], tuple(in_shape[1:])
    nd = len(spatial)
    coords, inside, padded = [], [], []
    for i in range(nd):
        n, k, s, d = spatial[i], kernel[i], strides[i], dilations[i]
        out = _pool_extent(n, k, s, d, pads[i], pads[nd + i], ceil_mode)
        c = np.arange(out)[:, None] * s - pads[i] + np.arange(k)[None, :] * d  # [out, k]
        coords.append(c)
        inside.append((c >= 0) & (c < n))
        padded.append((c >= -pads[i]) & (c < n + pads[nd + i]))
    flat = np.zeros((1,) * (2 * nd), dtype=np.int64)
    ok = np.ones((1,) * (2 * nd), dtype=bool)
    in_pad = np.ones((1,) * (2 * nd), dtype=bool)
    stride_flat = 1
    for i in reversed(range(nd)):
        shape = [1] * (2 * nd)
        shape[i], shape[nd + i] = coords[i].shape
        flat = flat + coords[i].reshape(shape) * stride_flat
        ok = ok & inside[i].reshape(shape)
        in_pad = in_pad & padded[i].reshape(shape)
        stride_flat *= spatial[i]
    out_spatial = flat.shape[:nd]
    K = int(np.prod(flat.shape[nd:]))
    flat = np.where(ok, flat, -1).reshape(*out_spatial, K)
    in_pad = in_pad.reshape(*out_spatial, K)
    n_spatial = int(np.prod(spatial))
    channel = np.arange(channels).reshape((channels,) + (1,) * (nd + 1)) * n_spatial
    index = np.where(flat[None] >= 0, flat[None] + channel, -1)
    return index, in_pad


class _Windows(Op):
    """Shared gather/scatter through the window table."""

    def __init__(self, index: Tensor, in_shape: Sequence[int]):
        self.index = index.long()  # [*out_shape, K], -1 for padding
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(index.shape[:-1])
        self.n_in = int(np.prod(self.in_shape))
        self.slot = torch.where(self.index >= 0, self.index, self.n_in).reshape(-1)
        self.valid = self.index >= 0

    def gather(self, x: Tensor, pad_value: float) -> Tensor:
        """[B, *in] -> [B, *out, K] windows, padding filled with ``pad_value``."""
        B = x.shape[0]
        flat = torch.cat([x.reshape(B, -1), x.new_full((B, 1), pad_value)], 1)
        return flat.index_select(1, self.slot).reshape(B, *self.index.shape)

    def scatter(self, coeff: Tensor) -> Tensor:
        """[B, S, *out, K] coefficients on window entries -> [B, S, *in] on the input."""
        B, S = coeff.shape[:2]
        total = coeff.new_zeros(B, S, self.n_in + 1)
        total.index_add_(2, self.slot, coeff.reshape(B, S, -1))
        return total[..., :self.n_in].reshape(B, S, *self.in_shape)


class AveragePool(_Windows):
    """Mean over each window, divided by ``divisor`` ``[*out_spatial]`` (count_include_pad)."""

    def __init__(self, index: Tensor, divisor: Tensor, in_shape: Sequence[int]):
        super().__init__(index, in_shape)
        self.divisor = divisor.to(torch.float64)  # broadcasts against [*out_shape]

    def forward(self, x: Tensor) -> Tensor:
        return self.gather(x, 0.0).sum(-1) / self.divisor

    def interval(self, bounds: Bounds) -> Bounds:
        return self.forward(bounds[0]), self.forward(bounds[1])

    def backward(self, A, in_bounds, params=None):
        per = (A / self.divisor).unsqueeze(-1) * self.valid
        return [self.scatter(per)], A.new_zeros(A.shape[:2])

    def __repr__(self) -> str:
        return f"AveragePool(out={self.out_shape}, K={self.index.shape[-1]})"


class MaxPool(_Windows):
    """Max over each window (MaxPool, GlobalMaxPool); see the module docstring."""

    kind = "nonlinear"
    alpha_names = ("lower",)

    def forward(self, x: Tensor) -> Tensor:
        return self.gather(x, -torch.inf).amax(-1)

    def interval(self, bounds: Bounds) -> Bounds:
        return self.forward(bounds[0]), self.forward(bounds[1])

    def init_alpha(self, in_bounds):
        lo = self.gather(in_bounds[0][0], -torch.inf)
        return {"lower": _one_hot(lo.argmax(-1), lo.shape[-1], lo.dtype)}

    def relax(self, lo: Tensor, hi: Tensor, alpha: dict[str, Tensor] | None = None
              ) -> tuple[Tensor, Tensor, Tensor]:
        """Window weights of the lower line, of the upper line, and the upper bias.

        ``lo``/``hi`` are input bounds [B, *in]; ``alpha["lower"]`` (if given) is
        [B, S, *out, K].  Returns ``lower_w`` ([B, *out, K], or [B, S, *out, K]
        with alpha), ``upper_w`` [B, *out, K] and ``upper_b`` [B, *out].
        """
        lw_win, hw_win = self.gather(lo, -torch.inf), self.gather(hi, -torch.inf)
        K = lw_win.shape[-1]
        best_low = _one_hot(lw_win.argmax(-1), K, lo.dtype)
        if alpha is None:
            lower_w = best_low
        else:
            a = alpha["lower"].clamp(0, 1) * self.valid
            total = a.sum(-1, keepdim=True)
            lower_w = torch.where(total > 1e-12, a / total.clamp(min=1e-12),
                                  best_low.unsqueeze(1))
        i_up = hw_win.argmax(-1, keepdim=True)
        u_i = hw_win.gather(-1, i_up).squeeze(-1)
        l_i = lw_win.gather(-1, i_up).squeeze(-1)
        others = hw_win.scatter(-1, i_up, -torch.inf)
        m = others.amax(-1)
        decided = m <= l_i
        width = (u_i - l_i).clamp(min=torch.finfo(lo.dtype).tiny)
        m_safe = torch.where(decided, l_i, m)
        slope = torch.where(decided, torch.ones_like(u_i), ((u_i - m_safe) / width).clamp(0, 1))
        eps = torch.finfo(lo.dtype).eps
        margin = 8 * eps * (m_safe.abs() + u_i.abs() + l_i.abs() + 1)
        upper_b = torch.where(decided, torch.zeros_like(u_i), m_safe - slope * l_i + margin)
        upper_w = _one_hot(i_up.squeeze(-1), K, lo.dtype) * slope.unsqueeze(-1)
        return lower_w, upper_w, upper_b

    def backward(self, A, in_bounds, params=None):
        lo, hi = in_bounds[0]
        lower_w, upper_w, upper_b = self.relax(lo, hi, params)
        if lower_w.dim() == upper_w.dim():  # no S axis yet
            lower_w = lower_w.unsqueeze(1)
        A_pos, A_neg = split_signs(A)
        coeff = A_pos.unsqueeze(-1) * lower_w + A_neg.unsqueeze(-1) * upper_w.unsqueeze(1)
        bias = (A_neg * upper_b.unsqueeze(1)).reshape(A.shape[0], A.shape[1], -1).sum(-1)
        return [self.scatter(coeff)], bias

    def __repr__(self) -> str:
        return f"MaxPool(out={self.out_shape}, K={self.index.shape[-1]})"


def _one_hot(index: Tensor, K: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(index, K).to(dtype)
