"""Softmax along one axis: forward, rounding-safe IBP, and a linear relaxation.

IBP: with ``d_ij = x_j - x_i`` in ``[ld, ud] = [l_j - u_i, u_j - l_i]``,
``y_i = 1 / (1 + sum_{j != i} exp(d_ij))`` lies in
``[sigmoid(-LSE_{j != i} ud_ij), sigmoid(-LSE_{j != i} ld_ij)]`` (both attained),
computed from leave-one-out log-sum-exps (no cancellation), widened for
rounding and clipped to [0, 1].

Linear relaxation: every line below is a function of x valid on the whole box
(the constructions of Wei et al., "Convex bounds on the softmax function",
2023).  Per output i:

- lower "er" (exponential-reciprocal): ``s_i = 1 + sum_j exp(d_ij)`` is below
  ``S_u(x) = 1 + sum_j secant_ij(d_ij)`` (exp is convex) and ``1/t`` is convex
  and decreasing, so ``y_i >= 2/t0 - S_u(x)/t0^2`` with
  ``t0 = s_lo + alpha*(s_hi - s_lo)`` (param ``lower_er``, one per output).
- lower "lse": ``y_i = exp(h_i)``, ``h_i = x_i - log sum_j exp(x_j)``; with the
  tangent of exp at ``h_i(x0)``, the tangent of log at ``t0 = sum exp(x0)`` and
  secants of exp on ``[l_j, u_j]``: ``y_i >= p0_i (2 + x_i - x0_i - S(x)/t0)``
  (``x0 = l + alpha*(u - l)``, param ``lower``, one point per vector).
- the lower line used is ``mix*er + (1 - mix)*lse`` (param ``lower_mix``; by
  default, per output, the line whose own minimum over the box is larger).
- upper "lse": ``h_i`` is concave, so its tangent plane at ``x0`` is above it,
  and the line through ``(h_max, exp(h_max))`` with the chord slope of exp on
  ``[h_min, h_max] = [log low_i, log high_i]`` is above exp there and
  increasing: ``y_i <= e_max + beta_i (h_i(x0) + (e_i - p0).(x - x0) - h_max)``
  (param ``upper``: the point ``x0``).

On random boxes this is tighter than decomposing softmax into Exp, ReduceSum,
Reciprocal and a McCormick Mul (the product relaxation loses the coupling of
numerator and denominator), and the "lse" upper line is tighter than the
"er" one (chord of 1/t over tangents of exp), so only the former is kept.
All slopes are O(n) per output except the "er" line's [n, n] pairwise slopes,
which do not depend on the bounded row.

Each bounded row keeps either the linear relaxation or the constant (IBP)
bounds, whichever is larger when concretised on the input box, so the step is
never looser than the constant relaxation there (for any parameters).  Rows
that keep the constant still pass the gradient of their linear candidate to the
parameters (through an exact zero), so alpha-CROWN moves them towards a line
that beats the constant instead of leaving them stuck.
Everything is computed in float64 and widened for the working dtype's rounding;
vectors with an input bound beyond +-1e15 use the constant bounds.
"""
from __future__ import annotations

import torch

from bounds.ops.base import Op, Tensor, split_signs
from bounds.ops.bilinear import cast_down, cast_up

_MAX_EXP = 300.0  # exp(300) * n (and its square) stays far from float64 overflow
_MAX_ABS = 1e15
_NARROW = 1e-6  # below this width a secant slope is replaced by the right-end derivative
_NAMES = ("lower", "lower_er", "lower_mix", "upper")
_EPS64 = torch.finfo(torch.float64).eps


# --- IBP ----------------------------------------------------------------------------------

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
    """float64 IBP with the softmax axis last (n >= 2): sound, within [0, 1]."""
    n = lo.shape[-1]
    ld, ud, off = _differences(lo, hi)
    bounds = []
    for D, sign in ((ud, -1.0), (ld, 1.0)):
        lse, top = _loo_lse(D, off)
        value = torch.sigmoid(-lse)
        top = torch.where(torch.isfinite(top), top.abs(), torch.zeros_like(top))
        value = value * (1 + sign * 2 * _EPS64 * (top + n + 4))
        fill = 0.0 if sign < 0 else 1.0
        bounds.append(torch.where(torch.isnan(value), torch.full_like(value, fill), value)
                      .clamp(0, 1))
    return bounds[0], bounds[1]


# --- the lines ----------------------------------------------------------------------------
# Shapes: bounds [B, 1, .., n] (softmax axis last); fractions [B, S, .., n] or scalars.

def _secant(lo: Tensor, hi: Tensor, e_lo: Tensor, e_hi: Tensor) -> Tensor:
    """A slope with which the line through (lo, e_lo) is above exp on [lo, hi]."""
    width = hi - lo
    narrow = width <= _NARROW
    return torch.where(narrow, e_hi, (e_hi - e_lo) / torch.where(narrow, 1.0, width))


def _lower_er(lo, hi, mag, frac):
    """``bias_i - q_i sum_j k_ij (x_j - x_i)``: (k [.., n, n], q, bias, scale, own_min, ok)."""
    ld, ud, off = _differences(lo, hi)
    ok = ud.masked_fill(~off, float("-inf")).amax(-1) <= _MAX_EXP
    keep = ok.unsqueeze(-1) & off
    ld, ud = torch.where(keep, ld, 0.0), torch.where(keep, ud, 0.0)
    e_ld, e_ud = torch.exp(ld) * keep, torch.exp(ud) * keep
    k = _secant(ld, ud, e_ld, e_ud) * keep
    s_lo, s_hi = 1 + e_ld.sum(-1), 1 + e_ud.sum(-1)
    t0 = s_lo + frac * (s_hi - s_lo)
    q = 1 / (t0 * t0)
    bias = 2 / t0 - q * (1 + (e_ld - k * ld).sum(-1))  # S_u = 1 + sum e_ld + k (d - ld)
    mags = mag.unsqueeze(-1) + mag.unsqueeze(-2)  # >= |d_ij|
    scale = 2 / t0 + q * (1 + e_ld.sum(-1) + (2 * k * mags).sum(-1)
                          + (e_ud * (2 + ld.abs() + ud.abs())).sum(-1))
    own_min = bias - q * (k * ud).sum(-1)  # k >= 0: the minimum is at d = ud
    return k, q, bias, scale, own_min, ok


def _lower_lse(lo, hi, mag, frac):
    """``bias_i + p0_i (x_i - g . x)``: (p0, g, bias, scale, ok); g = b / t0 >= 0.

    Computed on ``z = x - c`` with ``c = max x0`` (softmax is shift invariant),
    so ``t0 = sum exp(z0)`` is in [1, n]; vectors with ``u - c > 300`` are not ok.
    """
    n = lo.shape[-1]
    x0 = lo + frac * (hi - lo)
    c = x0.amax(-1, keepdim=True)
    lz, uz, z0 = lo - c, hi - c, x0 - c
    ok = uz.amax(-1, keepdim=True) <= _MAX_EXP
    lz, uz = torch.where(ok, lz, 0.0), torch.where(ok, uz, 0.0)
    e_l, e_u = torch.exp(lz), torch.exp(uz)
    b = _secant(lz, uz, e_l, e_u)  # S(z) = sum_j e_l_j + b_j (z_j - lz_j) >= sum exp(z)
    t0 = torch.exp(z0).sum(-1, keepdim=True)
    p0 = torch.exp(z0) / t0
    g = b / t0
    # y_i >= p0_i (2 + z_i - z0_i - S(z)/t0); in x the slopes sum to p0_i (1 - sum g)
    bias = p0 * (2 - z0 - (e_l - b * lz).sum(-1, keepdim=True) / t0
                 - (1 - g.sum(-1, keepdim=True)) * c)
    big = mag.amax(-1, keepdim=True) + c.abs()
    scale = p0 * (2 + z0.abs() + ((e_l + b * (lz.abs() + uz.abs())).sum(-1, keepdim=True)) / t0
                  + 4 * big * (1 + g.sum(-1, keepdim=True)) + n)
    return p0, g, bias, scale, ok


def _upper_lse(lo, hi, low, high, mag, frac):
    """``bias_i + beta_i (x_i - p0 . x)``: (beta, p0, bias, scale, ok).

    Not ok where ``high`` underflows (the constant bound ~0 is then as good).
    """
    n = lo.shape[-1]
    x0 = lo + frac * (hi - lo)
    p0 = torch.softmax(x0, -1)
    h0 = x0 - torch.logsumexp(x0, -1, keepdim=True)
    vanishing = low < 1e-250  # slope 0 then: the constant exp(h_max) is the line
    h_min = torch.log(torch.where(vanishing, torch.ones_like(low), low))
    ok = high > 1e-250
    h_max = torch.log(torch.where(ok, high, torch.ones_like(high)))
    h_min = h_min - _EPS64 * (h_min.abs() + 4)
    h_max = h_max + _EPS64 * (h_max.abs() + 4)
    e_min, e_max = torch.exp(h_min), torch.exp(h_max)
    beta = torch.where(vanishing, torch.zeros_like(low), _secant(h_min, h_max, e_min, e_max))
    bias = e_max - beta * h_max + beta * (h0 - x0 + (p0 * x0).sum(-1, keepdim=True))
    big = mag.amax(-1, keepdim=True) + x0.abs().amax(-1, keepdim=True)
    scale = e_max + beta * (h_max.abs() + h0.abs() + 6 * big + n)
    return beta, p0, bias, scale, ok


def _rank_one_min(lo, hi, weight, g, bias):
    """min over the box of ``bias_i + weight_i (x_i - g . x)`` for weight, g >= 0."""
    own = 1 - g
    sel = torch.where(own >= 0, lo, hi)
    return bias + weight * (own * sel - ((g * hi).sum(-1, keepdim=True) - g * hi))


def _rank_one_coef(weight, g):
    """Coefficients of ``sum_i weight_i (x_i - g . x)``."""
    return weight - g * weight.sum(-1, keepdim=True)


class Softmax(Op):
    """Softmax along ``axis`` of the batched tensor (the batch axis is 0)."""

    kind = "nonlinear"
    alpha_names = _NAMES

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
        lo, hi = in_bounds[0]
        half = torch.full_like(lo, 0.5)
        params = {"lower": half, "lower_er": half.clone(), "upper": half.clone()}
        if lo.shape[self.axis] == 1:
            return {**params, "lower_mix": half.clone()}
        with torch.no_grad():
            lo64, hi64 = (t.double().movedim(self.axis, -1).unsqueeze(1) for t in (lo, hi))
            mix = self._lines(lo64, hi64, None, lo.dtype)["mix"]
        mix = mix.expand(lo64.shape).squeeze(1).movedim(-1, self.axis).to(lo.dtype)
        return {**params, "lower_mix": mix}

    def _fraction(self, params, name: str, like: Tensor) -> Tensor | None:
        if params is None or name not in params:
            return None
        return params[name].clamp(0, 1).double().movedim(self.axis + 1, -1)

    def _lines(self, lo, hi, params, dtype: torch.dtype) -> dict[str, Tensor]:
        """Every piece of the relaxation on [B, 1, .., n] float64 bounds, widened for ``dtype``."""
        low, high = interval64(lo, hi)
        mag = torch.maximum(lo.abs(), hi.abs())
        valid = (torch.isfinite(mag) & (mag <= _MAX_ABS)).all(-1, keepdim=True)
        lo, hi = torch.where(valid, lo, 0.0), torch.where(valid, hi, 0.0)
        mag = torch.where(valid, mag, 0.0)
        half = torch.full((), 0.5, dtype=torch.float64, device=lo.device)
        frac = {name: self._fraction(params, name, lo) for name in _NAMES}
        k, q, er_bias, er_scale, er_min, er_ok = _lower_er(
            lo, hi, mag, half if frac["lower_er"] is None else frac["lower_er"])
        p0, g, lse_bias, lse_scale, lse_ok = _lower_lse(
            lo, hi, mag, half if frac["lower"] is None else frac["lower"])
        beta, pu, up_bias, up_scale, up_ok = _upper_lse(
            lo, hi, low, high, mag, half if frac["upper"] is None else frac["upper"])
        margin = 4 * (lo.shape[-1] + 8) * torch.finfo(dtype).eps
        er_bias, lse_bias = er_bias - margin * er_scale, lse_bias - margin * lse_scale
        if frac["lower_mix"] is None:
            mix = (er_min - margin * er_scale >=
                   _rank_one_min(lo, hi, p0, g, lse_bias)).to(lo.dtype)
        else:
            mix = frac["lower_mix"]
        mix = torch.where(er_ok, torch.where(lse_ok, mix, 1.0), 0.0)
        lower_ok = valid & (er_ok | lse_ok)
        lower = torch.where(lower_ok, mix * er_bias + (1 - mix) * lse_bias, low)
        upper_ok = valid & up_ok
        upper = torch.where(upper_ok, up_bias + margin * up_scale, high)
        return {"low": low, "high": high, "k": k, "q": q * mix * lower_ok,
                "p0": p0 * (1 - mix) * lower_ok, "g": g, "beta": beta * upper_ok, "pu": pu,
                "lower": lower, "upper": upper, "mix": mix}

    def backward(self, A, in_bounds, params=None):
        axis = self.axis + 1
        lo = in_bounds[0][0].double().movedim(self.axis, -1).unsqueeze(1)  # [B, 1, .., n]
        hi = in_bounds[0][1].double().movedim(self.axis, -1).unsqueeze(1)
        B, S = A.shape[:2]
        if lo.shape[-1] == 1:  # softmax of one entry is 1
            return [torch.zeros_like(A)], A.reshape(B, S, -1).sum(-1)
        lines = self._lines(lo, hi, params, A.dtype)
        A_pos, A_neg = split_signs(A.double().movedim(axis, -1))  # [B, S, .., n]
        w_er = A_pos * lines["q"]
        coef = (w_er * lines["k"].sum(-1) - (w_er.unsqueeze(-2) @ lines["k"]).squeeze(-2)
                + _rank_one_coef(A_pos * lines["p0"], lines["g"])
                + _rank_one_coef(A_neg * lines["beta"], lines["pu"]))
        bias = (A_pos * lines["lower"] + A_neg * lines["upper"]).reshape(B, S, -1).sum(-1)
        value = bias + (coef.clamp(min=0) * lo + coef.clamp(max=0) * hi).reshape(B, S, -1).sum(-1)
        const = (A_pos * lines["low"] + A_neg * lines["high"]).reshape(B, S, -1).sum(-1)
        linear = value > const
        coef = torch.where(linear.reshape(B, S, *([1] * (coef.dim() - 2))), coef, 0.0)
        # a zero that carries the gradient of the linear bound on rows that keep the
        # constant: the parameters of those rows still move towards a better line
        nudge = value - value.detach()
        bias = torch.where(linear, bias, const + nudge)
        return [coef.movedim(-1, axis).to(A.dtype)], cast_down(bias, A.dtype)

