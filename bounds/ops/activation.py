"""Univariate activations: ReLU and the S-shaped Sigmoid and Tanh.

Each class owns its forward, IBP and linear relaxation.  Relaxations are
widened by a rounding margin for the working dtype (derivatives are evaluated
in forms accurate in the tails), so that ``lw*x + lb <= f(x) <= uw*x + ub`` holds for every x in [lo, hi] also after
casting.  Optimisable parameters (alpha) are *fractions in [0, 1]* that place a
tangent point inside the range where a tangent is a valid bound; projection is
clamping to [0, 1].  Names: ``lower``/``upper`` are the two lines.
"""
from __future__ import annotations

import functools

import torch

from bounds.ops.base import LinearRelaxation, Op, Tensor, split_signs

_BISECTION_STEPS = 48
_TABLE_MAX = 60.0
_TABLE_POINTS = 60001


@functools.cache
def _limit_table(cls: type, device: str) -> Tensor:
    """d*(u) on a uniform grid of u in [0, _TABLE_MAX], float64 (a constant, cached)."""
    op = cls()
    u = torch.linspace(0, _TABLE_MAX, _TABLE_POINTS, dtype=torch.float64)
    d = op._bisect_limit(torch.full_like(u, -_TABLE_MAX - 50), u, steps=80)
    d[0] = 0.0
    if bool((d[1:] > d[:-1]).any()):
        raise AssertionError("tangent-limit table is not monotone")
    return d.to(device)


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

    def init_alpha(self, in_bounds):
        return self.alpha_init(*in_bounds[0])

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
        """Images of the endpoints, widened by a few ulps for the library's rounding."""
        lo, hi = self.function(bounds[0]), self.function(bounds[1])
        finfo = torch.finfo(lo.dtype)
        return (lo - 4 * finfo.eps * lo.abs() - finfo.tiny,
                hi + 4 * finfo.eps * hi.abs() + finfo.tiny)


class Relu(Monotone):
    """max(x, 0); lower line ``alpha * x`` on crossing neurons, upper line the chord."""

    alpha_names = ("lower",)

    def function(self, x):
        return torch.relu(x)

    def interval(self, bounds):  # exact in floating point
        return torch.relu(bounds[0]), torch.relu(bounds[1])

    def alpha_init(self, lo, hi):
        return {"lower": (hi > -lo).to(lo.dtype)}

    def relax(self, lo, hi, alpha=None):
        dtype = lo.dtype
        active, inactive = lo >= 0, hi <= 0
        width = (hi - lo).clamp(min=torch.finfo(dtype).tiny)
        chord = (hi / width).clamp(0, 1)
        up_w = torch.where(active, 1.0, torch.where(inactive, 0.0, chord))
        up_b = torch.where(active | inactive, 0.0, -chord * lo)
        up_b = torch.where(active | inactive, up_b,
                           up_b + rounding_margin(up_w, up_b, lo, hi, dtype))
        lower = (hi > -lo).to(dtype) if alpha is None else alpha["lower"].clamp(0, 1)
        low_w = torch.where(active, 1.0, torch.where(inactive, 0.0, lower))
        low_w, up_w, up_b = torch.broadcast_tensors(low_w, up_w, up_b)
        return LinearRelaxation(low_w, torch.zeros_like(low_w), up_w, up_b)


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
    centre = 0.0  # f(0), the centre of symmetry
    # sup |f'| and sup |f| (None: unknown); with them the rounding margin is computed once
    # per neuron from the interval instead of per bounded row from each line.
    max_slope: float | None = None
    max_abs: float | None = None

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

    def _gap(self, d: Tensor, u: Tensor) -> Tensor:
        """Tangent at d evaluated at u, minus f(u); increasing in d on (-inf, 0]."""
        return self.derivative(d) * (u - d) + self.function(d) - self.function(u)

    def _bisect_limit(self, left: Tensor, u: Tensor, steps: int = _BISECTION_STEPS) -> Tensor:
        """Largest d in [left, 0] found whose tangent stays below (u, f(u)) (the valid side)."""
        right = torch.zeros_like(left)
        for _ in range(steps):
            mid = (left + right) / 2
            valid = self._gap(mid, u) < 0
            left = torch.where(valid, mid, left)
            right = torch.where(valid, right, mid)
        return left

    def _tangent_limit(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(d*, chord_ok): a valid tangent point in [l, 0] for the line through (u, f(u)).

        d*(u) is decreasing in u, so the table value at the grid point just above u
        is never larger than the exact d*: the tangent there is valid.
        """
        table = _limit_table(type(self), str(u.device))
        step = _TABLE_MAX / (table.numel() - 1)
        index = (torch.floor(u / step) + 1).clamp(0, table.numel() - 1).long()
        d_star = table[index].to(u.dtype)
        d_star = d_star * (1 + 4 * torch.finfo(u.dtype).eps)  # rounding must not move it right
        far = u > _TABLE_MAX
        if bool(far.any()):
            d_star = torch.where(far, self._bisect_limit(l.clone(), u), d_star)
        chord_ok = self._gap(l, u) >= 0
        return torch.maximum(d_star, l), chord_ok

    def _lower_line(self, l: Tensor, u: Tensor, frac: Tensor | None, default: float = 1.0):
        convex, concave = u <= 0, l >= 0
        crossing = ~(convex | concave)
        with torch.no_grad():
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
        hi = torch.maximum(hi, lo)
        lw, lb = self._lower_line(lo, hi, None if alpha is None else alpha["lower"])
        mw, mb = self._lower_line(-hi, -lo, None if alpha is None else alpha["upper"])
        uw, ub = mw, 2 * self.centre - mb
        if self.max_slope is None or self.max_abs is None:
            lb = lb - rounding_margin(lw, lb, lo, hi, lo.dtype)
            ub = ub + rounding_margin(uw, ub, lo, hi, lo.dtype)
        else:
            margin = self._static_margin(lo, hi)
            lb, ub = lb - margin, ub + margin
        lw, lb, uw, ub = torch.broadcast_tensors(lw, lb, uw, ub)
        return LinearRelaxation(lw, lb, uw, ub)

    def _static_margin(self, lo: Tensor, hi: Tensor) -> Tensor:
        """``rounding_margin`` of any line the relaxation can pick on [lo, hi], per neuron.

        Every line is a tangent or chord of f (or of its mirror image about the
        centre) on [lo, hi]: |slope| <= max_slope and |bias| <= 2|centre| + max_abs
        + max_slope * max(|lo|, |hi|), so this is never below the per-line margin.
        """
        scale = torch.maximum(lo.abs(), hi.abs())
        return rounding_margin(torch.full_like(scale, self.max_slope),
                               self.max_slope * scale + 2 * abs(self.centre) + self.max_abs,
                               lo, hi, lo.dtype)

    def alpha_init(self, lo, hi):
        ones = torch.ones_like(lo)
        convex, concave = hi <= 0, lo >= 0
        lower = torch.where(convex, 0.5 * ones, ones)
        upper = torch.where(concave, 0.5 * ones, ones)
        return {"lower": lower, "upper": upper}


class Sigmoid(SShaped):
    """The logistic function 1 / (1 + exp(-x))."""

    centre = 0.5
    max_slope = 0.25
    max_abs = 1.0

    def function(self, x):
        return torch.sigmoid(x)

    def _tangent(self, d):
        """One sigmoid for value and slope; s(1 - s) is accurate for d <= 0, the only
        tangent points a lower line uses (a tangent at d > 0 is computed but discarded)."""
        s = torch.sigmoid(d)
        slope = s * (1 - s)
        return slope, s - slope * d

    def derivative(self, x):
        return torch.sigmoid(x) * torch.sigmoid(-x)  # accurate in both tails


class Tanh(SShaped):
    """The hyperbolic tangent."""

    centre = 0.0
    max_slope = 1.0
    max_abs = 1.0

    def function(self, x):
        return torch.tanh(x)

    def derivative(self, x):
        return torch.cosh(x.clamp(-350, 350)) ** -2  # sech^2, accurate in the tails
