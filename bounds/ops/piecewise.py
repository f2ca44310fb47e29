"""Ops made of pieces: periodic Sin/Cos, piecewise-linear LeakyRelu/Abs/Clip, steps Sign/Floor.

All follow the ``Relaxed`` contract of ``bounds.ops.nonlinear`` (float64 lines
widened by the rounding margin, outward IBP, alpha fractions in [0, 1]).

Sin and Cos (any input range): g(x) = sin(x + q pi/2) is convex on its valleys
(g <= 0) and concave on its humps.  On an interval of width below 2 pi,
g - line has at most one interior local minimum (where g' equals the slope and
g'' >= 0), so a tangent at a valley point is valid iff it is below g at both
ends.  The lower line is such a tangent in the valley holding the minimum of g
over the interval (the range of valid points found by bisection, the alpha
fraction placing the point), else the chord if its one candidate minimum is
not below it, else the constant minimum; an interval of width >= 2 pi (or
beyond |x| = 1e9, where periods are not resolved in float64) gets the IBP constants.  The upper line is the lower line of -g = sin(x + (q+2) pi/2).
"""
from __future__ import annotations

import math

import torch

from bounds.ops.activation import Monotone
from bounds.ops.base import Tensor
from bounds.ops.nonlinear import EPS64, INF, Relaxed, chord, place, safe_tangent, tangent_spans

TWO_PI = 2 * math.pi
HALF_PI = math.pi / 2


# --- Sin and Cos --------------------------------------------------------------------------

def sin_quarter(x: Tensor, q: int) -> Tensor:
    """sin(x + q pi / 2), exactly (no rounding of the shift)."""
    q %= 4
    if q == 0:
        return torch.sin(x)
    if q == 1:
        return torch.cos(x)
    return -torch.sin(x) if q == 2 else -torch.cos(x)


def _first_at_or_after(l: Tensor, x0: float | Tensor) -> Tensor:
    """The smallest point x0 + 2 pi k >= l (up to rounding)."""
    return x0 + TWO_PI * torch.ceil((l - x0) / TWO_PI)


def trig_range(q: int, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Range of sin(x + q pi/2) on [l, u]; extrema near the ends count as inside (sound)."""
    gl, gu = sin_quarter(l, q), sin_quarter(u, q)
    tol = 1e-9 + 8 * EPS64 * (l.abs() + u.abs())
    has_min = _first_at_or_after(l - tol, -(q + 1) * HALF_PI) <= u + tol
    has_max = _first_at_or_after(l - tol, (1 - q) * HALF_PI) <= u + tol
    low = torch.where(has_min, -1.0, torch.minimum(gl, gu))
    return low, torch.where(has_max, 1.0, torch.maximum(gl, gu))


def _chord_valid(q: int, l: Tensor, u: Tensor, s: Tensor, b: Tensor) -> Tensor:
    """Whether the line s x + b stays below g on [l, u] (width < 2 pi, line through the ends)."""
    base = -torch.acos(s.clamp(-1, 1)) - q * HALF_PI  # local minima of g - line, mod 2 pi
    xk = _first_at_or_after(l, base)
    return (xk > u) | (sin_quarter(xk, q) - (s * xk + b) >= 0)


def _trig_region(q: int, l: Tensor, u: Tensor, gl: Tensor, gu: Tensor, wide: Tensor):
    """The valley of sin(x + q pi/2) (values gl, gu at the ends) holding its minimum over [l, u],
    slightly shrunk; empty where the interval is too wide for the tangent argument."""
    x0 = -(q + 1) * HALF_PI  # minimum points x0 + 2 pi k
    first = _first_at_or_after(l, x0)
    ends = torch.where(gl <= gu, l, u)
    nearest = x0 + TWO_PI * torch.round((ends - x0) / TWO_PI)
    centre = torch.where(first <= u, first, nearest)
    shrink = 1e-9 + 8 * EPS64 * centre.abs()
    return (torch.where(wide, INF, centre - HALF_PI + shrink),
            torch.where(wide, -INF, centre + HALF_PI - shrink))


def _trig_line(q: int, l, u, gl, gu, span, frac, cap, wide, upper: bool):
    """(slope, bias, default): lower (or upper) line of g = sin(x + q pi/2) from its span."""
    def g(x):
        return sin_quarter(x, q)

    def dg(x):
        return sin_quarter(x, q + 1)

    ok = span[2]
    sign = -1.0 if upper else 1.0
    cs, cb = chord(dg, l, u, gl, gu)
    with torch.no_grad():
        chord_ok = ~wide & ~ok & _chord_valid(q + (2 if upper else 0), l, u, sign * cs,
                                              sign * cb)
    const = trig_range(q, l, u)[1 if upper else 0]
    d, default = place(span[0], span[1], l, u, frac)
    ts, tb = safe_tangent(g, dg, d, cap)
    slope = torch.where(ok, ts, torch.where(chord_ok, cs, 0.0))
    return slope, torch.where(ok, tb, torch.where(chord_ok, cb, const)), default


class Sin(Relaxed):
    """sin(x) for any input range (see the module docstring for the relaxation)."""

    alpha_names = ("lower", "upper")
    quarter = 0  # this op is sin(x + quarter * pi / 2)

    def function(self, x):
        return sin_quarter(x, self.quarter)

    def derivative(self, x):
        return sin_quarter(x, self.quarter + 1)

    def _range(self, l, u):
        return trig_range(self.quarter, l, u)

    def _lines(self, l, u, frac, cap):
        q = self.quarter
        gl, gu = self.function(l), self.function(u)
        get = (lambda k: None) if frac is None else frac.get
        with torch.no_grad():
            # beyond 2 pi the tangent argument fails; beyond 1e9 periods are not resolved
            wide = ((u - l) >= TWO_PI - 1e-6) | (torch.maximum(l.abs(), u.abs()) > 1e9)
            regions = [(*_trig_region(q, l, u, gl, gu, wide), 1.0),
                       (*_trig_region(q + 2, l, u, -gl, -gu, wide), -1.0)]
        spans = tangent_spans(self.function, self.derivative, l, u, gl, gu, regions)
        lw, lb, d_low = _trig_line(q, l, u, gl, gu, spans[0], get("lower"), cap, wide, False)
        uw, ub, d_up = _trig_line(q, l, u, gl, gu, spans[1], get("upper"), cap, wide, True)
        return lw, lb, uw, ub, {"lower": d_low, "upper": d_up}


class Cos(Sin):
    """cos(x) = sin(x + pi/2), for any input range."""

    quarter = 1


# --- piecewise linear ---------------------------------------------------------------------

def _pivot_line(x0: Tensor, y0: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    return slope, y0 - slope * x0


class LeakyRelu(Relaxed):
    """x for x >= 0, ``slope * x`` for x < 0 (ONNX LeakyRelu, attribute alpha).

    Convex for slope <= 1: on a crossing interval the lower line is ``lam * x``
    with lam in [slope, 1] (optimisable, default the area-minimising end, as for
    ReLU) and the upper line the chord; concave for slope > 1, mirrored.
    """

    def __init__(self, slope: float = 0.01):
        self.slope = float(slope)
        self.alpha_names = () if self.slope == 1 else \
            ("lower",) if self.slope < 1 else ("upper",)

    def function(self, x):
        return torch.where(x >= 0, x, self.slope * x)

    def _range(self, l, u):
        f = self.function
        fl, fu, f0 = f(l), f(u), torch.zeros_like(l)
        cross = (l < 0) & (u > 0)
        low = torch.minimum(fl, fu)
        high = torch.maximum(fl, fu)
        return torch.where(cross, torch.minimum(low, f0), low), \
            torch.where(cross, torch.maximum(high, f0), high)

    def _lines(self, l, u, frac, cap):
        a = self.slope
        cross = (l < 0) & (u > 0)
        one = torch.ones_like(l)
        exact = torch.where((l >= 0) | cross, one, a * one)
        fl, fu = self.function(l), self.function(u)
        width = torch.where(cross, u - l, 1.0)
        cs = (fu - fl) / width
        cb = fl - cs * l
        default = (u > -l).to(l.dtype)  # the area-minimising end: slope 1 if u > -l
        key = "lower" if a < 1 else "upper"
        t = default if frac is None or key not in frac else frac[key]
        lam = a + t * (1 - a)  # between slope and 1, either order
        line_w = torch.where(cross, lam, exact)
        line_b = torch.zeros_like(line_w)
        chord_w, chord_b = torch.where(cross, cs, exact), torch.where(cross, cb, 0.0)
        if a <= 1:
            return line_w, line_b, chord_w, chord_b, {key: default}
        return chord_w, chord_b, line_w, line_b, {key: default}


class Abs(LeakyRelu):
    """|x|: LeakyRelu with slope -1 (convex; lower line ``lam * x``, lam in [-1, 1])."""

    def __init__(self):
        super().__init__(-1.0)

    def function(self, x):
        return x.abs()


class Clip(Relaxed, Monotone):
    """min(max(x, low), high) (ONNX Clip; HardTanh is Clip(-1, 1)); low > high gives high.

    Lower line through the lower knee (low, low) with slope in [0, min(1,
    (high - low) / (u - low))] where the interval crosses it, else the chord;
    the upper line mirrored about the upper knee.  Both slopes are optimisable.
    """

    alpha_names = ("lower", "upper")

    def __init__(self, low: float = -1.0, high: float = 1.0):
        self.low, self.high = float(min(low, high)), float(high)

    def function(self, x):
        return x.clamp(self.low, self.high)

    def _range(self, l, u):
        return self.function(l), self.function(u)

    def _lines(self, l, u, frac, cap):
        a, b = self.low, self.high
        f = self.function
        fl, fu = f(l), f(u)
        width = u - l
        cs = torch.where(width > 0, (fu - fl) / torch.where(width > 0, width, 1.0),
                         ((l > a) & (l < b)).to(l.dtype))
        cb = fl - cs * l
        mid = (l + u) / 2
        get = (lambda k: None) if frac is None else frac.get
        out, defaults = [], {}
        for key, knee, far, crossing in (("lower", a, u, (l < a) & (u > a)),
                                         ("upper", b, l, (l < b) & (u > b))):
            span = abs(b - a) / torch.where(crossing, (far - knee).abs(), 1.0)
            smax = torch.where(crossing, span.clamp(max=1.0), 0.0)
            default = ((mid > knee) if key == "lower" else (mid < knee)).to(l.dtype)
            t = get(key)
            w = smax * (default if t is None else t)
            pivot = torch.full_like(l, knee if math.isfinite(knee) else 0.0)
            w, bias = _pivot_line(pivot, pivot, w)
            out += [torch.where(crossing, w, cs), torch.where(crossing, bias, cb)]
            defaults[key] = default
        return (*out, defaults)


# --- steps --------------------------------------------------------------------------------

class Sign(Relaxed, Monotone):
    """sign(x) with sign(0) = 0 (ONNX Sign).

    Where the interval reaches 0 the lower line pivots on (0, -1) (or on (0, 0)
    when l = 0) with slope in [0, (1 - pivot) / u], the upper line on (0, 1)
    (or (0, 0) when u = 0) with slope in [0, (1 + pivot) / -l]; slopes are
    optimisable.  The default is the constant bounds (slope 0): for a step, a
    sloped line loosens back-substitution (on random binarised MLPs CROWN with
    the area-minimising slopes was about 1.5x looser than with constants).
    """

    alpha_names = ("lower", "upper")

    def function(self, x):
        return torch.sign(x)

    def _range(self, l, u):
        return torch.sign(l), torch.sign(u)

    def _lines(self, l, u, frac, cap):
        get = (lambda k: None) if frac is None else frac.get
        low_pivot = torch.where(l < 0, -1.0, 0.0)
        low_reach = (l <= 0) & (u > 0)
        low_max = (1 - low_pivot) / torch.where(low_reach, u, 1.0)
        d_low = torch.zeros_like(l)
        t = get("lower")
        lw = torch.where(low_reach, low_max * (d_low if t is None else t), 0.0)
        lb = torch.where(low_reach, low_pivot, torch.sign(l))
        up_pivot = torch.where(u > 0, 1.0, 0.0)
        up_reach = (l < 0) & (u >= 0)
        up_max = (1 + up_pivot) / torch.where(up_reach, -l, 1.0)
        d_up = torch.zeros_like(l)
        t = get("upper")
        uw = torch.where(up_reach, up_max * (d_up if t is None else t), 0.0)
        ub = torch.where(up_reach, up_pivot, torch.sign(u))
        return lw, lb, uw, ub, {"lower": d_low, "upper": d_up}


class Floor(Relaxed, Monotone):
    """floor(x): x - 1 < floor(x) <= x, tightened to the interval's staircase.

    Lower lines support the lower envelope of the staircase: slope lam in [0, 1]
    pivoting on the first lower corner (k1, k1 - 1), k1 = floor(l) + 1, or
    lam in [1, 1 / (u - kn)] pivoting on the last one (kn, kn - 1),
    kn = ceil(u) - 1; the upper lines mirror this on the upper corners (k, k).
    One fraction per side scales lam from 0 to its maximum; the default is
    the supporting line at the midpoint.  No jump inside: the exact constant.
    """

    alpha_names = ("lower", "upper")

    def function(self, x):
        return torch.floor(x)

    def _range(self, l, u):
        return torch.floor(l), torch.floor(u)

    def _lines(self, l, u, frac, cap):
        fl, fu = torch.floor(l), torch.floor(u)
        flat = fl == fu
        mid = (l + u) / 2
        get = (lambda k: None) if frac is None else frac.get
        # lower: corners (k, k - 1)
        k1, kn = fl + 1, torch.ceil(u) - 1
        top = 1 / torch.where(flat, 1.0, u - kn).clamp(min=1e-300)
        d_low = torch.where(mid <= k1, 0.0, torch.where(mid <= kn, 1 / top, 1.0))
        t = get("lower")
        lam = top * (d_low if t is None else t)
        pivot = torch.where(lam <= 1, k1, kn)
        lw, lb = _pivot_line(pivot, pivot - 1, lam)
        # upper: corners (k, k)
        j1, jn = fl + 1, fu
        top = 1 / torch.where(flat, 1.0, j1 - l).clamp(min=1e-300)
        d_up = torch.where(mid >= jn, 0.0, torch.where(mid >= j1, 1 / top, 1.0))
        t = get("upper")
        lam = top * (d_up if t is None else t)
        pivot = torch.where(lam <= 1, jn, j1)
        uw, ub = _pivot_line(pivot, pivot, lam)
        zero = torch.zeros_like(lw)
        return (torch.where(flat, zero, lw), torch.where(flat, fl, lb),
                torch.where(flat, zero, uw), torch.where(flat, fl, ub),
                {"lower": d_low, "upper": d_up})


__all__ = ["Abs", "Clip", "Cos", "Floor", "LeakyRelu", "Sign", "Sin"]
