"""Softmax along one axis: forward, rounding-safe IBP, and a linear relaxation.

Write output i as ``y_i = r(s_i)`` with ``r(t) = 1/t`` and
``s_i = 1 + sum_{j != i} exp(d_ij)``, ``d_ij = x_j - x_i``.  On the input box,
``d_ij`` lies in ``[ld, ud] = [l_j - u_i, u_j - l_i]`` and ``s_i`` in
``[s_lo, s_hi] = [1 + sum exp(ld), 1 + sum exp(ud)]`` (both attained).

IBP: ``y_i`` in ``[1/s_hi, 1/s_lo]``, computed as sigmoids of leave-one-out
log-sum-exps (no cancellation), widened for rounding and clipped to [0, 1].

Linear relaxation (the "exponential-reciprocal" bounds of Wei et al., 2023):

- lower: ``exp`` is convex, so ``S_u(x) = 1 + sum_j secant_ij(d_ij) >= s_i``;
  ``r`` is convex and decreasing, so with its tangent at ``t0``
  ``y_i = r(s_i) >= r(S_u) >= 2/t0 - S_u(x)/t0^2``.
  ``t0 = s_lo + alpha_lower*(s_hi - s_lo)`` (0.5: ``S_u`` at the box centre;
  1: the line whose minimum over the box is exactly the IBP bound).
- upper: tangents of ``exp`` give ``S_l(x) = 1 + sum_j tangent_ij(d_ij) <= s_i``;
  the chord of ``r`` on ``[s_lo, s_hi]`` lies above ``r`` there and is
  decreasing, so ``y_i <= chord(s_i) <= chord(S_l(x))``.  Tangent points are
  the midpoints of ``[ld, ud]`` shifted by ``(2*alpha_upper - 1)*H_i`` (one
  shift per output keeps the backward step free of [S, n, n] tensors).

Both are linear in x.  The backward step compares, for every bounded row,
the relaxation concretised on the input box with the constant (IBP) bounds and
keeps the better, so it is never looser than the constant relaxation there.
Everything is computed in float64 and widened for the working dtype's rounding.
Rows with an input bound beyond +-1e15, or some ``u_j - l_i > 300``, use the
constant bounds (the linear ones would overflow and gain nothing).
"""
from __future__ import annotations

import torch

from bounds.ops.base import Op, Tensor, split_signs
from bounds.ops.bilinear import cast_down, cast_up

_MAX_DIFF = 300.0  # exp(300) * n stays far from float64 overflow, squared too
_MAX_ABS = 1e15
_MAX_SHIFT = 30.0
_NARROW = 1e-6  # below this width the secant slope is replaced by exp(ud)


def _differences(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(ld, ud, off-diagonal mask): [.., n(i), n(j)] bounds of x_j - x_i."""
    n = lo.shape[-1]
    ud = hi.unsqueeze(-2) - lo.unsqueeze(-1)
    ld = lo.unsqueeze(-2) - hi.unsqueeze(-1)
    off = ~torch.eye(n, dtype=torch.bool, device=lo.device)
    return ld, ud, off


def _loo_lse(D: Tensor, off: Tensor) -> tuple[Tensor, Tensor]:
    """``log sum_{j != i} exp(D_ij)`` and ``max_{j != i} D_ij`` (shifted: no overflow)."""
    masked = D.masked_fill(~off, float("-inf"))
    top = masked.amax(-1, keepdim=True)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(masked - shift).sum(-1)
    return shift.squeeze(-1) + torch.log(total), top.squeeze(-1)


def interval64(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """float64 IBP with the softmax axis last: sound in exact arithmetic, within [0, 1]."""
    n = lo.shape[-1]
    ld, ud, off = _differences(lo, hi)
    eps = torch.finfo(torch.float64).eps
    bounds = []
    for D, sign in ((ud, -1.0), (ld, 1.0)):
        lse, top = _loo_lse(D, off)
        value = torch.sigmoid(-lse)
        top = torch.where(torch.isfinite(top), top.abs(), torch.zeros_like(top))
        rel = 2 * eps * (top + n + 4)
        value = value * (1 + sign * rel)
        fill = 0.0 if sign < 0 else 1.0
        bounds.append(torch.where(torch.isnan(value), torch.full_like(value, fill), value)
                      .clamp(0, 1))
    return bounds[0], bounds[1]


def _lower_lines(ld, ud, off, e_ld, e_ud, mag, frac):
    """Per output: (k [.., n, n] slopes on d, q [.., S, n], bias, scale) of the lower line.

    The line is ``bias - q_i * sum_j k_ij d_ij``; shapes without S are [B, 1, ..].
    """
    width = ud - ld
    narrow = width <= _NARROW
    k = torch.where(narrow, e_ud, (e_ud - e_ld) / torch.where(narrow, 1.0, width)) * off
    s_lo, s_hi = 1 + e_ld.sum(-1), 1 + e_ud.sum(-1)
    t0 = s_lo + frac * (s_hi - s_lo)
    q = 1 / (t0 * t0)
    cu = 1 + (e_ld - k * ld).sum(-1)  # S_u(x) = cu + sum_j k_ij d_ij
    bias = 2 / t0 - q * cu
    mags = mag.unsqueeze(-1) + mag.unsqueeze(-2)  # bounds |x_i| + |x_j| >= |d_ij|
    scale = 2 / t0 + q * (1 + e_ld.sum(-1) + (2 * k * mags).sum(-1)
                          + (e_ud * (2 + ld.abs() + ud.abs())).sum(-1))
    return k, q, bias, scale


def _upper_lines(ld, ud, off, e_ld, e_ud, mag, frac):
    """Per output: (E [.., n, n], v [.., S, n], bias, scale): ``bias - v_i sum_j E_ij d_ij``."""
    n = ld.shape[-1]
    eps = torch.finfo(torch.float64).eps
    big = torch.maximum(ld.abs(), ud.abs()).masked_fill(~off, 0).amax(-1)
    widen = 4 * eps * (n + 2 + big)
    s_lo = (1 + e_ld.sum(-1)) * (1 - widen)
    s_hi = (1 + e_ud.sum(-1)) * (1 + widen)
    c = 1 / (s_lo * s_hi)
    mid = (ld + ud) / 2
    e_mid = torch.exp(mid) * off
    half = ((ud - ld) / 2).masked_fill(~off, 0).amax(-1).clamp(max=_MAX_SHIFT)
    shift = (2 * frac - 1) * half
    e_shift = torch.exp(shift)
    # S_l(x) = 1 + e^shift * sum_j e_mid_ij (1 + d_ij - mid_ij - shift)
    const = (e_mid * (1 - mid)).sum(-1) - shift * e_mid.sum(-1)
    bias = 1 / s_lo + 1 / s_hi - c * (1 + e_shift * const)
    v = c * e_shift
    mags = mag.unsqueeze(-1) + mag.unsqueeze(-2)
    scale = 2 / s_lo + c * (1 + e_shift * ((e_mid * (1 + 2 * mags + mid.abs())).sum(-1)
                                           + shift.abs() * e_mid.sum(-1)))
    return e_mid, v, bias, scale


def _lower_lse(lo, hi, mag, frac):
    """Per output: (w [.., S, n], b [.., n], t0 [.., S, 1], bias [.., S, n], scale).

    ``y_i >= bias_i + w_i * (x_i - b . x / t0)`` from ``y_i = exp(h_i)``: the
    tangent of exp at ``h_i(x0)``, the tangent of log at ``t0 = sum exp(x0)``
    and secants of exp on [l_j, u_j] (``S(x) = sum_j e^l_j + b_j (x_j - l_j)``).
    Computed on ``x - c`` with ``c = max u`` (softmax is shift invariant).
    """
    n = lo.shape[-1]
    c = hi.amax(-1, keepdim=True)
    lz, uz = lo - c, hi - c
    z0 = lz + frac * (uz - lz)
    e_l, e_u = torch.exp(lz), torch.exp(uz)
    width = uz - lz
    narrow = width <= _NARROW
    b = torch.where(narrow, e_u, (e_u - e_l) / torch.where(narrow, 1.0, width))
    t0 = torch.exp(z0).sum(-1, keepdim=True)
    p0 = torch.exp(z0) / t0
    # y_i >= p0_i * (2 + z_i - z0_i - S(z) / t0),  S(z) = sum_j (e_l_j - b_j lz_j) + b . z
    s_const = (e_l - b * lz).sum(-1, keepdim=True)
    bias_z = p0 * (2 - z0 - s_const / t0)
    # back to x: z = x - c, and the slopes sum to (1 - sum_j b_j / t0) per output
    slope_sum = 1 - b.sum(-1, keepdim=True) / t0
    bias = bias_z - p0 * slope_sum * c
    big = mag.amax(-1, keepdim=True) + c.abs()
    scale = p0 * (2 + z0.abs() + (e_l + b * (lz.abs() + uz.abs())).sum(-1, keepdim=True) / t0
                  + 4 * big * (1 + b.sum(-1, keepdim=True) / t0) + n)
    return p0, b, t0, bias, scale


def _upper_lse(lo, hi, low, high, mag, frac):
    """Per output: (beta [.., n], p0 [.., S, n], bias [.., S, n], scale) of the LSE upper line.

    ``y_i <= bias_i + beta_i * (x_i - p0 . x)``: the tangent plane of the concave
    ``h_i(x) = x_i - LSE(x)`` at ``x0`` (shared by the outputs of one vector)
    composed with a line above ``exp`` on ``[log low_i, log high_i]``.
    """
    n = lo.shape[-1]
    eps = torch.finfo(torch.float64).eps
    x0 = lo + frac * (hi - lo)
    lse0 = torch.logsumexp(x0, -1, keepdim=True)
    p0 = torch.softmax(x0, -1)
    h0 = x0 - lse0
    vanishing = low < 1e-250  # then slope 0: the constant exp(h_max) is the line
    h_min = torch.log(torch.where(vanishing, torch.ones_like(low), low))
    h_max = torch.log(high)
    h_min = h_min - eps * (h_min.abs() + 4)
    h_max = h_max + eps * (h_max.abs() + 4)
    e_min, e_max = torch.exp(h_min), torch.exp(h_max)
    width = h_max - h_min
    narrow = width <= _NARROW
    beta = torch.where(narrow, e_min, (e_max - e_min) / torch.where(narrow, 1.0, width))
    beta = torch.where(vanishing, torch.zeros_like(beta), beta)
    x0_dot = (p0 * x0).sum(-1, keepdim=True)
    bias = e_max - beta * h_max + beta * (h0 - x0 + x0_dot)
    big = mag.amax(-1, keepdim=True) + x0.abs().amax(-1, keepdim=True)
    scale = e_max + beta * (h_max.abs() + h0.abs() + 6 * big + n)
    return beta, p0, bias, scale


class Softmax(Op):
    """Softmax along ``axis`` of the batched tensor (the batch axis is 0)."""

    kind = "nonlinear"
    alpha_names = ("lower", "upper")

    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, x):
        return torch.softmax(x, dim=self.axis)

    def interval(self, bounds):
        lo, hi = bounds
        if lo.shape[self.axis] == 1:
            return torch.ones_like(lo), torch.ones_like(hi)
        low, high = interval64(lo.double().movedim(self.axis, -1),
                               hi.double().movedim(self.axis, -1))
        low, high = cast_down(low, lo.dtype), cast_up(high, lo.dtype)
        return low.clamp(0, 1).movedim(-1, self.axis), high.clamp(0, 1).movedim(-1, self.axis)

    def init_alpha(self, in_bounds):
        lo = in_bounds[0][0]
        return {"lower": torch.full_like(lo, 0.5), "upper": torch.full_like(lo, 0.5)}

    def _fraction(self, params, name: str, like: Tensor) -> Tensor:
        if params is None or name not in params:
            return torch.full((), 0.5, dtype=torch.float64, device=like.device)
        return params[name].clamp(0, 1).double().movedim(self.axis + 1, -1)

    def backward(self, A, in_bounds, params=None):
        dtype, axis = A.dtype, self.axis + 1
        lo = in_bounds[0][0].double().movedim(self.axis, -1).unsqueeze(1)  # [B, 1, .., n]
        hi = in_bounds[0][1].double().movedim(self.axis, -1).unsqueeze(1)
        A64 = A.double().movedim(axis, -1)  # [B, S, .., n]
        n = lo.shape[-1]
        if n == 1:  # softmax of one entry is 1
            return [torch.zeros_like(A)], A.reshape(A.shape[0], A.shape[1], -1).sum(-1)
        low, high = interval64(lo, hi)
        mag = torch.maximum(lo.abs(), hi.abs())
        valid = (torch.isfinite(mag) & (mag <= _MAX_ABS)).all(-1, keepdim=True)
        mag = torch.where(valid, mag, 0.0)
        ld, ud, off = _differences(torch.where(valid, lo, 0.0), torch.where(valid, hi, 0.0))
        valid = valid & (ud.masked_fill(~off, float("-inf")).amax(-1) <= _MAX_DIFF)
        keep = valid.unsqueeze(-1) & off  # rows i of the matrices that are used
        ld, ud = torch.where(keep, ld, 0.0), torch.where(keep, ud, 0.0)
        e_ld, e_ud = torch.exp(ld) * keep, torch.exp(ud) * keep
        k, q, bias_l, scale_l = _lower_lines(ld, ud, keep, e_ld, e_ud, mag,
                                             self._fraction(params, "lower", A))
        lse_low = getattr(self, "lower_kind", "er") == "lse"
        if lse_low:
            p0l, bl, t0l, bias_l, scale_l = _lower_lse(lo, hi, mag, self._fraction(params, "lower", A))
            q = torch.zeros_like(q)
        if getattr(self, "upper_kind", "lse") == "lse":
            beta, p0, bias_u, scale_u = _upper_lse(lo, hi, low, high, mag,
                                                   self._fraction(params, "upper", A))
            E = torch.zeros_like(k); v = torch.zeros_like(q)
        else:
            E, v, bias_u, scale_u = _upper_lines(ld, ud, keep, e_ld, e_ud, mag,
                                                 self._fraction(params, "upper", A))
            beta = torch.zeros_like(low); p0 = torch.zeros_like(low)
        margin = 4 * (n + 8) * torch.finfo(dtype).eps
        bias_l = torch.where(valid, bias_l - margin * scale_l, low)
        bias_u = torch.where(valid, bias_u + margin * scale_u, high)
        A_pos, A_neg = split_signs(A64)
        w_l, w_u = A_pos * q, A_neg * v  # weights of each output's slope vector
        coef = (w_l * k.sum(-1) + w_u * E.sum(-1)
                - (w_l.unsqueeze(-2) @ k).squeeze(-2) - (w_u.unsqueeze(-2) @ E).squeeze(-2))
        if lse_low:
            w_a = A_pos * p0l * valid
            coef = coef + w_a - (bl / t0l) * w_a.sum(-1, keepdim=True)
        w_b = A_neg * beta * valid
        coef = coef + w_b - p0 * w_b.sum(-1, keepdim=True)
        B, S = A.shape[:2]
        bias_lin = (A_pos * bias_l + A_neg * bias_u).reshape(B, S, -1).sum(-1)
        value_lin = bias_lin + (coef.clamp(min=0) * lo + coef.clamp(max=0) * hi
                                ).reshape(B, S, -1).sum(-1)
        bias_const = (A_pos * low + A_neg * high).reshape(B, S, -1).sum(-1)
        linear = (value_lin > bias_const) | getattr(self, "always_linear", False)
        coef = torch.where(linear.reshape(B, S, *([1] * (coef.dim() - 2))), coef, 0.0)
        bias = cast_down(torch.where(linear, bias_lin, bias_const), dtype)
        return [coef.movedim(-1, axis).to(dtype)], bias
