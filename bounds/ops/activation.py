"""Univariate activations: ReLU and the S-shaped Sigmoid and Tanh.

Each class owns its forward, IBP and linear relaxation.  Relaxations are
computed in float64 and widened by a rounding margin for the working dtype, so
that ``lw*x + lb <= f(x) <= uw*x + ub`` holds for every x in [lo, hi] also after
casting.  Optimisable parameters (alpha) are *fractions in [0, 1]* that place a
tangent point inside the range where a tangent is a valid bound; projection is
clamping to [0, 1].  Names: ``lower``/``upper`` are the two lines.
"""
from __future__ import annotations

import torch

from bounds.ops.base import LinearRelaxation, Op, Tensor, split_signs

_BISECTION_STEPS = 48


def rounding_margin(slope: Tensor, bias: Tensor, lo: Tensor, hi: Tensor,
                    dtype: torch.dtype) -> Tensor:
    """Absolute error budget of evaluating ``slope*x + bias`` on [lo, hi] in ``dtype``."""
    eps = torch.finfo(dtype).eps
    scale = slope.abs() * torch.maximum(lo.abs(), hi.abs()) + bias.abs() + 1.0
    return 8 * eps * scale


class Elementwise(Op):
    """A univariate elementwise nonlinearity with a (possibly optimisable) relaxation."""

    kind = "nonlinear"
    alpha_names: tuple[str, ...] = ()

    def function(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)

    def relax(self, lo: Tensor, hi: Tensor, alpha: dict[str, Tensor] | None = None
              ) -> LinearRelaxation:
        raise NotImplementedError

    def alpha_init(self, lo: Tensor, hi: Tensor) -> dict[str, Tensor]:
        """Initial fractions (the CROWN default relaxation), shaped like ``lo``."""
        return {}

    def backward(self, A, in_bounds, params=None):
        lo, hi = in_bounds[0]
        rel = self.relax(lo.unsqueeze(1), hi.unsqueeze(1), params)
        A_pos, A_neg = split_signs(A)
        A_in = A_pos * rel.lw + A_neg * rel.uw
        bias = (A_pos * rel.lb + A_neg * rel.ub)
        return [A_in], bias.reshape(A.shape[0], A.shape[1], -1).sum(-1)


class Monotone(Elementwise):
    """Non-decreasing functions: IBP is the image of the endpoints."""

    def interval(self, bounds):
        return self.function(bounds[0]), self.function(bounds[1])


class Relu(Monotone):
    """max(x, 0); lower line ``alpha * x`` on crossing neurons, upper line the chord."""

    alpha_names = ("lower",)

    def function(self, x):
        return torch.relu(x)

    def alpha_init(self, lo, hi):
        return {"lower": (hi > -lo).to(lo.dtype)}

    def relax(self, lo, hi, alpha=None):
        dtype = lo.dtype
        lo, hi = lo.double(), hi.double()
        active, inactive = lo >= 0, hi <= 0
        width = (hi - lo).clamp(min=1e-300)
        chord = (hi / width).clamp(0, 1)
        up_w = torch.where(active, 1.0, torch.where(inactive, 0.0, chord))
        up_b = torch.where(active | inactive, 0.0, -chord * lo)
        up_b = torch.where(active | inactive, up_b,
                           up_b + rounding_margin(up_w, up_b, lo, hi, dtype))
        lower = (hi > -lo).double() if alpha is None else alpha["lower"].double().clamp(0, 1)
        low_w = torch.where(active, 1.0, torch.where(inactive, 0.0, lower))
        low_w, up_w, up_b = torch.broadcast_tensors(low_w, up_w, up_b)
        return LinearRelaxation(low_w.to(dtype), torch.zeros_like(low_w, dtype=dtype),
                                up_w.to(dtype), up_b.to(dtype))


class SShaped(Monotone):
    """Increasing, convex on (-inf, 0], concave on [0, inf), point-symmetric about (0, f(0)).

    Lower line on [l, u] (the upper line is its mirror image on [-u, -l]):
    - u <= 0 (convex): tangent at d in [l, u];
    - l >= 0 (concave): the chord;
    - l < 0 < u: tangent at d in [l, d*], where the tangent at d* passes through
      (u, f(u)); if no such d >= l exists the chord is valid and used.
    d* is found by bisection keeping the side whose tangent is provably valid.
    """

    alpha_names = ("lower", "upper")

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _tangent(self, d: Tensor) -> tuple[Tensor, Tensor]:
        slope = self.derivative(d)
        return slope, self.function(d) - slope * d

    def _chord(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        width = u - l
        tiny = width < 1e-9
        safe = torch.where(tiny, torch.ones_like(width), width)
        slope = torch.where(tiny, self.derivative((l + u) / 2),
                            (self.function(u) - self.function(l)) / safe)
        return slope, self.function(l) - slope * l

    def _tangent_limit(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(d*, chord_ok): largest valid tangent point in [l, 0] for the line through (u, f(u))."""
        fu = self.function(u)

        def gap(d):  # tangent at d evaluated at u, minus f(u); increasing in d on (-inf, 0]
            return self.derivative(d) * (u - d) + self.function(d) - fu

        chord_ok = gap(l) >= 0
        left, right = l.clone(), torch.zeros_like(l)
        for _ in range(_BISECTION_STEPS):
            mid = (left + right) / 2
            valid = gap(mid) < 0
            left = torch.where(valid, mid, left)
            right = torch.where(valid, right, mid)
        return left, chord_ok

    def _lower_line(self, l: Tensor, u: Tensor, frac: Tensor | None, default: float = 1.0):
        convex, concave = u <= 0, l >= 0
        crossing = ~(convex | concave)
        d_star, chord_ok = self._tangent_limit(torch.where(crossing, l, -1.0),
                                               torch.where(crossing, u, 1.0))
        top = torch.where(convex, u, d_star)
        default_frac = torch.where(convex, torch.full_like(l, 0.5), torch.full_like(l, default))
        frac = default_frac if frac is None else frac.clamp(0, 1)
        d = top - (1 - frac) * (top - l)  # never above top, even after rounding
        t_slope, t_bias = self._tangent(d)
        c_slope, c_bias = self._chord(l, u)
        use_chord = concave | (crossing & chord_ok)
        slope = torch.where(use_chord, c_slope, t_slope)
        bias = torch.where(use_chord, c_bias, t_bias)
        return slope, bias

    def relax(self, lo, hi, alpha=None):
        dtype = lo.dtype
        l64, u64 = lo.double(), hi.double()
        u64 = torch.maximum(u64, l64)
        frac_l = None if alpha is None else alpha["lower"].double()
        frac_u = None if alpha is None else alpha["upper"].double()
        lw, lb = self._lower_line(l64, u64, frac_l)
        mw, mb = self._lower_line(-u64, -l64, frac_u)
        uw, ub = mw, 2 * self.function(torch.zeros((), dtype=torch.float64)) - mb
        lb = lb - rounding_margin(lw, lb, l64, u64, dtype)
        ub = ub + rounding_margin(uw, ub, l64, u64, dtype)
        lw, lb, uw, ub = torch.broadcast_tensors(lw, lb, uw, ub)
        return LinearRelaxation(lw.to(dtype), lb.to(dtype), uw.to(dtype), ub.to(dtype))

    def alpha_init(self, lo, hi):
        ones = torch.ones_like(lo)
        convex, concave = hi <= 0, lo >= 0
        lower = torch.where(convex, 0.5 * ones, ones)
        upper = torch.where(concave, 0.5 * ones, ones)
        return {"lower": lower, "upper": upper}


class Sigmoid(SShaped):
    """The logistic function 1 / (1 + exp(-x))."""

    def function(self, x):
        return torch.sigmoid(x)

    def derivative(self, x):
        return torch.sigmoid(x) * torch.sigmoid(-x)  # accurate in both tails


class Tanh(SShaped):
    """The hyperbolic tangent."""

    def function(self, x):
        return torch.tanh(x)

    def derivative(self, x):
        return torch.cosh(x.clamp(-350, 350)) ** -2  # sech^2, accurate in the tails
