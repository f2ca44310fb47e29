"""General univariate nonlinearities: the shared relaxation engine and the smooth ops.

Owns ``Relaxed`` (the contract of every op here: float64 relaxations widened by a
rounding margin, outward-rounded IBP, infinity-safe backward step), the
tangent/chord engine, and the smooth ops Exp, Log, Sqrt, Pow, Reciprocal,
Softplus, Erf, Gelu, GeluTanh and Silu.  Sin and Cos, the piecewise-linear and
the step ops live in ``bounds.ops.piecewise``.

Engine: on [l, u] a function that is convex on one interval [a, b] and concave
on the rest of [l, u] has as lower line either the tangent at a point d of
[a, b] that stays below f at both ends (such d form an interval [t0, t1], found
by bisection; the alpha fraction places d in it, default the point nearest the
midpoint, which minimises the area), or, when no such d exists, the chord (the
convex envelope is then one segment).  The upper line is the lower line of -f.

Conventions:
- relaxations are computed in float64 and cast to the working dtype; lines are
  widened by ``rounding_margin`` and IBP bounds are rounded outward;
- ``domain = (low, high)``: the inputs where f is defined; bounds hold for the
  in-domain part of an interval, an interval without one gets vacuous bounds;
- slopes are always finite (a line with an infinite, NaN or huge slope is
  replaced by the constant IBP bound); biases may be infinite (a lower bias
  only -inf, an upper bias only +inf), never NaN; ``backward`` handles them;
- gradients (alpha, and the interval ends, through which alpha-CROWN
  optimises intermediate bounds) never come back NaN or infinite.
"""
from __future__ import annotations

import math

import torch

from bounds.ops.activation import Elementwise, Monotone, SShaped, rounding_margin
from bounds.ops.base import LinearRelaxation, Tensor, split_signs

F64 = torch.float64
INF = math.inf
EPS64 = torch.finfo(F64).eps
_SPAN_STEPS = 36  # bisection steps for tangent ranges: width / 2^36


# --- rounding and safe arithmetic ---------------------------------------------------------

def round_down(v: Tensor, dtype: torch.dtype) -> Tensor:
    """A ``dtype`` value <= v (float64, no NaN), also absorbing a few ulps of float64 error."""
    v = torch.where(torch.isfinite(v), v - 2 * EPS64 * v.abs(), v).clamp(max=torch.finfo(F64).max)
    out = v.to(dtype)
    if dtype != F64:
        with torch.no_grad():
            fixed = torch.where(out.double() > v, torch.nextafter(out, torch.full_like(out, -INF)),
                                out)
        # the value of ``fixed``, the gradient of ``out`` (straight through the rounding)
        out = fixed + torch.where(torch.isfinite(out), out - out.detach(), 0.0)
    return out


def round_up(v: Tensor, dtype: torch.dtype) -> Tensor:
    return -round_down(-v, dtype)


class _FiniteGrad(torch.autograd.Function):
    """Identity whose backward zeroes non-finite gradients (from a sanitised line, or an
    unselected branch of ``torch.where`` evaluated at a singularity)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.where(torch.isfinite(grad), grad, 0.0)


def finite_grad(x: Tensor) -> Tensor:
    """``x``, through which no NaN or infinite gradient flows back (the inputs of a relaxation)."""
    return _FiniteGrad.apply(x) if x.requires_grad else x


def slope_cap(dtype: torch.dtype) -> float:
    """Largest slope a relaxation may carry: products in later layers must not overflow."""
    return torch.finfo(dtype).max ** 0.25


def finish(lw: Tensor, lb: Tensor, uw: Tensor, ub: Tensor, low: Tensor, high: Tensor,
           l: Tensor, u: Tensor, dtype: torch.dtype) -> LinearRelaxation:
    """Sanitise float64 lines (bad ones become the constants ``low``/``high``), widen, cast."""
    lw, lb, uw, ub, low, high, l, u = torch.broadcast_tensors(lw, lb, uw, ub, low, high, l, u)
    big = torch.finfo(F64).max
    low = low.nan_to_num(nan=-INF, posinf=big, neginf=-INF)  # a lower constant is never +inf
    high = high.nan_to_num(nan=INF, posinf=INF, neginf=-big)
    cap = slope_cap(dtype)
    bad = ~torch.isfinite(lw) | (lw.abs() > cap) | torch.isnan(lb) | (lb == INF)
    lw, lb = torch.where(bad, 0.0, lw), torch.where(bad, low, lb)
    bad = ~torch.isfinite(uw) | (uw.abs() > cap) | torch.isnan(ub) | (ub == -INF)
    uw, ub = torch.where(bad, 0.0, uw), torch.where(bad, high, ub)
    lb = lb - rounding_margin(lw, lb, torch.where(lw == 0, 0.0, l), torch.where(lw == 0, 0.0, u),
                              dtype)
    ub = ub + rounding_margin(uw, ub, torch.where(uw == 0, 0.0, l), torch.where(uw == 0, 0.0, u),
                              dtype)
    return LinearRelaxation(lw.to(dtype), round_down(lb, dtype), uw.to(dtype),
                            round_up(ub, dtype))


# --- the tangent / chord engine -------------------------------------------------------------

def tangent_below(f, df, d: Tensor, x: Tensor, fx: Tensor, sign=1.0) -> Tensor:
    """Where the tangent of f at d is on or below (x, fx) (above it where ``sign`` is -1)."""
    return sign * (f(d) + df(d) * (x - d) - fx) <= 0


def _bisect(valid, good: Tensor, bad: Tensor, steps: int = _SPAN_STEPS) -> Tensor:
    """Move ``good`` (a point where ``valid`` holds) towards ``bad``, keeping validity."""
    for _ in range(steps):
        mid = (good + bad) / 2
        ok = valid(mid)
        good, bad = torch.where(ok, mid, good), torch.where(ok, bad, mid)
    return good


def tangent_span(f, df, l: Tensor, u: Tensor, fl: Tensor, fu: Tensor, a, b, sign=1.0
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """(t0, t1, ok): tangent points d in [t0, t1] within [a, b] give lines below f on [l, u].

    ``sign * f`` is convex on [a, b] and concave on the rest of [l, u] (then the
    tangent at d is valid iff it is below ``sign * f`` at l and u, which
    bisection finds); ``ok`` is False where no such d exists.  With sign -1 the
    tangents are upper lines of f.  All tensors broadcast to one shape.
    """
    l, u, fl, fu, a, b, sign = torch.broadcast_tensors(
        l, u, fl, fu, *(torch.as_tensor(v, dtype=l.dtype, device=l.device) for v in (a, b, sign)))
    lc, uc = torch.maximum(l, a), torch.minimum(u, b)  # the ends carry gradients of l, u
    with torch.no_grad():
        some = lc <= uc
        need0, need1 = some & (l < a), some & (u > b)
    lc, uc = torch.where(some, lc, l), torch.where(some, uc, l)
    t0, t1 = lc, uc
    if bool(need0.any() or need1.any()):  # every search in one bisection
        with torch.no_grad():
            i0, i1 = need0.nonzero(as_tuple=True), need1.nonzero(as_tuple=True)
            n0 = i0[0].numel()
            x, fx = torch.cat([l[i0], u[i1]]), torch.cat([fl[i0], fu[i1]])
            sg = torch.cat([sign[i0], sign[i1]])
            found = _bisect(lambda d: tangent_below(f, df, d, x, fx, sg),
                            torch.cat([uc[i0], lc[i1]]), torch.cat([lc[i0], uc[i1]]))
            f0, f1 = lc.detach().clone(), uc.detach().clone()
            f0[i0], f1[i1] = found[:n0], found[n0:]
        t0, t1 = torch.where(need0, f0, lc), torch.where(need1, f1, uc)
    with torch.no_grad():
        ok = some & (t0 <= t1)
        ok = ok & (~need0 | tangent_below(f, df, t0, l, fl, sign))
        ok = ok & (~need1 | tangent_below(f, df, t1, u, fu, sign))
    return t0, t1, ok


def tangent_spans(f, df, l, u, fl, fu, problems) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``tangent_span`` for several (a, b, sign) problems on the same intervals, one bisection.

    A problem of None has no convex part (``ok`` is False everywhere).
    """
    empty = (INF, -INF, 1.0)
    parts = [torch.broadcast_tensors(l, *(torch.as_tensor(v, dtype=l.dtype, device=l.device)
                                          for v in (p or empty)))[1:] for p in problems]
    a, b, sign = (torch.stack([p[i] for p in parts]) for i in range(3))
    t0, t1, ok = tangent_span(f, df, l, u, fl, fu, a, b, sign)
    return list(zip(t0.unbind(0), t1.unbind(0), ok.unbind(0)))


def chord(df, l: Tensor, u: Tensor, fl: Tensor, fu: Tensor) -> tuple[Tensor, Tensor]:
    """The line through (l, fl) and (u, fu); the tangent at l where l == u."""
    width = u - l
    point = width == 0
    slope = torch.where(point, df(l), (fu - fl) / torch.where(point, 1.0, width))
    return slope, fl - slope * l


def safe_tangent(f, df, d: Tensor, cap: float, edge: float = -INF) -> tuple[Tensor, Tensor]:
    """Tangent (slope, bias) at d; where it is unusable no gradient reaches d (no NaN grads).

    ``edge``: the end of the domain, where the slope may not be differentiable.
    """
    with torch.no_grad():
        s0, v0 = df(d), f(d)
        bad = ~torch.isfinite(s0) | ~torch.isfinite(v0) | (s0.abs() > cap) | (d <= edge)
    if d.requires_grad:
        d = torch.where(bad, d.detach(), d)
    slope = df(d)
    return slope, f(d) - slope * d


def place(t0: Tensor, t1: Tensor, l: Tensor, u: Tensor, frac: Tensor | None
          ) -> tuple[Tensor, Tensor]:
    """(d, default fraction): d in [t0, t1] from ``frac``, or nearest the midpoint."""
    best = torch.minimum(torch.maximum((l + u) / 2, t0), t1)
    with torch.no_grad():
        width = t1 - t0
        default = torch.where(width > 0, (best - t0) / torch.where(width > 0, width, 1.0), 0.5)
    if frac is None:
        return best, default
    d = t1 - (1 - frac) * (t1 - t0)
    return torch.minimum(torch.maximum(d, t0), t1), default


def span_line(f, df, l, u, fl, fu, span, frac, cap, edge=-INF):
    """(slope, bias, default fraction): the tangent placed in ``span``, or the chord where
    the span is empty (a lower line for a lower span, an upper line for an upper one)."""
    t0, t1, ok = span
    cs, cb = chord(df, l, u, fl, fu)
    d, default = place(t0, t1, l, u, frac)
    ts, tb = safe_tangent(f, df, d, cap, edge)
    return torch.where(ok, ts, cs), torch.where(ok, tb, cb), default


# --- the base classes ---------------------------------------------------------------------

class Relaxed(Elementwise):
    """An elementwise op whose relaxation is computed in float64 by ``_lines``.

    Subclasses implement ``function`` (accurate in float64 and in the tails),
    ``_range(l, u)`` (the exact range of f over [l, u], float64) and
    ``_lines(l, u, frac, cap) -> (lw, lb, uw, ub, default fractions)``; both
    receive [l, u] clipped into ``domain``.
    """

    domain: tuple[float, float] = (-INF, INF)
    poles: tuple[float, ...] = ()  # points of the domain where f is infinite: bounds exclude them

    def _range(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _lines(self, l, u, frac, cap):
        raise NotImplementedError

    def _undefined(self, l: Tensor, u: Tensor) -> Tensor:
        """Where [l, u] has no in-domain part."""
        return (u < self.domain[0]) | (l > self.domain[1])

    def _prepare(self, lo: Tensor, hi: Tensor):
        lo, hi = finite_grad(lo), finite_grad(hi)
        lo, hi = torch.broadcast_tensors(lo, torch.maximum(hi, lo))
        l, u = lo.double(), hi.double()
        empty = self._undefined(l, u)
        l = l.clamp(*self.domain)
        u = torch.maximum(u.clamp(*self.domain), l)
        return l, u, empty

    def _bounds(self, l: Tensor, u: Tensor, empty: Tensor) -> tuple[Tensor, Tensor]:
        """``_range`` with NaN-free, vacuous results where [l, u] has no in-domain part."""
        low, high = self._range(l, u)
        low = torch.where(empty | torch.isnan(low), -INF, low)
        return low, torch.where(empty | torch.isnan(high), INF, high)

    def interval(self, bounds):
        lo, hi = bounds
        low, high = self._bounds(*self._prepare(lo, hi))
        return round_down(low, lo.dtype), round_up(high, lo.dtype)

    def relax(self, lo, hi, alpha=None):
        dtype = lo.dtype
        l, u, empty = self._prepare(lo, hi)
        frac = None if alpha is None else \
            {k: finite_grad(v).to(F64).clamp(0, 1) for k, v in alpha.items()}
        lw, lb, uw, ub, _ = self._lines(l, u, frac, slope_cap(dtype))
        low, high = self._bounds(l, u, empty)
        lw = torch.where(empty, torch.nan, lw)  # replaced by the vacuous constants
        uw = torch.where(empty, torch.nan, uw)
        return finish(lw, lb, uw, ub, low, high, l, u, dtype)

    def alpha_init(self, lo, hi):
        if not self.alpha_names:
            return {}
        l, u, _ = self._prepare(lo, hi)
        with torch.no_grad():
            defaults = self._lines(l, u, None, slope_cap(lo.dtype))[4]
        return {k: defaults[k].to(lo.dtype).expand_as(lo).clone() for k in self.alpha_names}

    def backward(self, A, in_bounds, params=None):
        lo, hi = in_bounds[0]
        rel = self.relax(lo.unsqueeze(1), hi.unsqueeze(1), params)
        A_pos, A_neg = split_signs(A)
        A_in = A_pos * rel.lw + A_neg * rel.uw
        finite_l, finite_u = torch.isfinite(rel.lb), torch.isfinite(rel.ub)
        terms = (A_pos * torch.where(finite_l, rel.lb, 0.0)
                 + A_neg * torch.where(finite_u, rel.ub, 0.0))
        # an infinite line, or an overflowing product or sum, makes the bound -inf (sound)
        infinite = ((A_pos > 0) & ~finite_l) | ((A_neg < 0) & ~finite_u) | \
            ~torch.isfinite(terms)
        bias = torch.where(infinite, -INF, terms).reshape(A.shape[0], A.shape[1], -1).sum(-1)
        return [A_in], torch.where(bias == INF, -INF, bias)


class Smooth(Relaxed):
    """A differentiable f convex on ``convex`` and concave on ``concave`` (within ``domain``).

    ``convex``/``concave`` are (a, b) or None; on every interval f must be convex
    on its intersection with one and concave on the rest (true when the two
    regions partition the domain into at most three pieces with one convex piece).
    """

    convex: tuple[float, float] | None = None
    concave: tuple[float, float] | None = None

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _lines(self, l, u, frac, cap):
        f, df = self.function, self.derivative
        fl, fu = f(l), f(u)
        get = (lambda k: None) if frac is None else frac.get
        low, up = tangent_spans(f, df, l, u, fl, fu, [
            self.convex and (*self.convex, 1.0), self._upper_problem(l, u, fl, fu)])
        edge = self.domain[0]
        lw, lb, d_low = span_line(f, df, l, u, fl, fu, low, get("lower"), cap, edge)
        uw, ub, d_up = span_line(f, df, l, u, fl, fu, up, get("upper"), cap, edge)
        return lw, lb, uw, ub, {"lower": d_low, "upper": d_up}

    def _upper_problem(self, l, u, fl, fu):
        """(a, b, -1): where -f is convex, for the upper line (or None)."""
        return self.concave and (*self.concave, -1.0)

    def _monotone_range(self, l, u, increasing: bool = True):
        fl, fu = self.function(l), self.function(u)
        return (fl, fu) if increasing else (fu, fl)


# --- convex / concave ops -------------------------------------------------------------------

class Exp(Smooth, Monotone):
    """exp(x): convex; lower line an optimisable tangent, upper line the chord."""

    alpha_names = ("lower",)
    convex = (-INF, INF)

    def function(self, x):
        return torch.exp(x)

    def derivative(self, x):
        return torch.exp(x)

    def _range(self, l, u):
        return self._monotone_range(l, u)


class Softplus(Exp):
    """log(1 + exp(x)) (ONNX Softplus): convex and increasing, like Exp."""

    def function(self, x):
        return torch.relu(x) + torch.log1p(torch.exp(-x.abs()))

    def derivative(self, x):
        return torch.sigmoid(x)


class Log(Smooth, Monotone):
    """Natural logarithm on x > 0 (``domain`` open at 0): chord below, optimisable tangent above.

    An interval reaching 0 gets a -inf lower bound; one with no positive point is vacuous.
    """

    alpha_names = ("upper",)
    domain = (0.0, INF)
    concave = (torch.finfo(F64).tiny, INF)  # tangent points stay positive

    def function(self, x):
        return torch.log(x)

    def derivative(self, x):
        return 1 / x

    def _undefined(self, l, u):
        return u <= 0

    def _range(self, l, u):
        return self._monotone_range(l, u)

    def _lines(self, l, u, frac, cap):
        lw, lb, uw, ub, defaults = super()._lines(l, u, frac, cap)
        at_zero = l <= 0
        return (torch.where(at_zero, 0.0, lw), torch.where(at_zero, -INF, lb), uw, ub,
                defaults)


class Sqrt(Smooth, Monotone):
    """Square root on x >= 0: chord below, optimisable tangent above."""

    alpha_names = ("upper",)
    domain = (0.0, INF)
    concave = (0.0, INF)

    def function(self, x):
        return torch.sqrt(x)

    def derivative(self, x):
        return 0.5 / torch.sqrt(x)

    def _range(self, l, u):
        return self._monotone_range(l, u)


class Pow(Smooth):
    """x ** p for a constant exponent p (ONNX Pow with a constant exponent).

    - p = 0: the constant 1; p = 1: the identity.
    - integer p >= 2: even ones are convex (minimum at 0), odd ones concave on
      x <= 0 and convex on x >= 0 (the engine handles the crossing with tangents
      from the far end).
    - non-integer p: ``domain`` x >= 0; convex for p > 1 or p < 0, concave for 0 < p < 1.
    - p < 0: a pole at 0 (``poles``; bounds hold for x != 0).  An interval
      reaching 0 gets an infinite bound on the side of the pole (both sides for
      odd p crossing 0; even p keeps the finite lower bound min(f(l), f(u))).
    """

    alpha_names = ("lower", "upper")

    def __init__(self, exponent: float = 2.0):
        self.exponent = float(exponent)
        p = self.exponent
        self._integer = p.is_integer()
        self._odd = self._integer and int(p) % 2 == 1
        self.domain = (-INF, INF) if self._integer else (0.0, INF)
        self.poles = (0.0,) if p < 0 else ()
        self.convex, self.concave = (-INF, INF), None  # even, or p > 1, or p < 0
        if self._odd:  # concave on the negative side, convex on the positive one
            self.convex, self.concave = (0.0, INF), (-INF, 0.0)
        elif 0 < p < 1:
            self.convex, self.concave = None, (0.0, INF)
        self.alpha_names = () if p in (0.0, 1.0) else \
            ("lower",) * (self.convex is not None) + ("upper",) * (self.concave is not None)

    def function(self, x):
        return torch.pow(x, self.exponent)

    def derivative(self, x):
        if self.exponent == 0:
            return torch.zeros_like(x)
        return self.exponent * torch.pow(x, self.exponent - 1)

    def _range(self, l, u):
        p = self.exponent
        fl, fu = self.function(l), self.function(u)
        low, high = torch.minimum(fl, fu), torch.maximum(fl, fu)
        if p > 0 and self._integer and not self._odd:
            low = torch.where((l <= 0) & (u >= 0), 0.0, low)
        if p >= 0:
            return low, high
        right, cross = (l == 0) & (u > 0), (l < 0) & (u > 0)  # (0, u] and across the pole
        left, point = (l < 0) & (u == 0), (l == 0) & (u == 0)  # [l, 0) and {0}
        low = torch.where(right, fu, low)
        high = torch.where(right | point, INF, high)
        low = torch.where(point, -INF, low)
        if self._odd:
            low = torch.where(left | cross, -INF, low)
            high = torch.where(left, fl, torch.where(cross, INF, high))
        else:
            low = torch.where(left, fl, low)
            high = torch.where(left | cross, INF, high)
        return low, high

    def _lines(self, l, u, frac, cap):
        p = self.exponent
        if p in (0.0, 1.0):
            one = torch.ones_like(l)
            w, b = (0 * one, one) if p == 0 else (one, 0 * one)
            return w, b, w, b, {"lower": 0.5 * one, "upper": 0.5 * one}
        if p > 0:
            return super()._lines(l, u, frac, cap)
        # p < 0: relax a pole-free sub-interval, then open the side of the pole
        touch = (l <= 0) & (u >= 0)
        gap = 2.0 ** -30
        l_sub = torch.where(touch & (l == 0), gap * u, l)
        u_sub = torch.where(touch & (u == 0), gap * l, u)
        lw, lb, uw, ub, defaults = super()._lines(l_sub, u_sub, frac, cap)
        concave_side = torch.zeros_like(touch) if not self._odd else (u <= 0)
        lw = torch.where(touch & concave_side, 0.0, lw)
        lb = torch.where(touch & concave_side, -INF, lb)
        uw = torch.where(touch & ~concave_side, 0.0, uw)
        ub = torch.where(touch & ~concave_side, INF, ub)
        crossing = touch & (l < 0) & (u > 0)  # replaced by the constant IBP bounds
        lw, uw = torch.where(crossing, torch.nan, lw), torch.where(crossing, torch.nan, uw)
        return lw, lb, uw, ub, defaults


class Reciprocal(Pow):
    """1 / x (ONNX Reciprocal): Pow with exponent -1; an interval containing 0 is unbounded."""

    def __init__(self):
        super().__init__(-1.0)

    def function(self, x):
        return torch.reciprocal(x)


# --- S-shaped and x * sigmoid-like ops ------------------------------------------------------

class Erf(SShaped):
    """The error function: S-shaped (convex for x <= 0, concave for x >= 0), centre 0."""

    centre = 0.0

    def function(self, x):
        return torch.erf(x)

    def derivative(self, x):
        return (2 / math.sqrt(math.pi)) * torch.exp(-x * x)

    def interval(self, bounds):
        lo, hi = bounds
        l, u = lo.double(), torch.maximum(hi, lo).double()
        return round_down(torch.erf(l), lo.dtype), round_up(torch.erf(u), lo.dtype)


class XSigmoid(Smooth):
    """f(x) = x * h(x) with h increasing, h(x) + h(-x) = 1: GeLU, its tanh form, SiLU.

    Convex on [-c, c], concave outside, decreasing then increasing (minimum at
    ``argmin``).  Lower line: the engine with the convex middle.  Upper line:
    the two concave tails have slopes below 0 (left) and above 1 (right), so a
    tangent on one tail is valid iff it is above f at the other end; the right
    tail is used where its steepest tangent (at u) is valid, else the left one
    (the engine falls back to the chord where neither has a valid tangent).
    """

    alpha_names = ("lower", "upper")
    inflection = 1.0
    argmin = 0.0
    minimum = 0.0

    @property
    def convex(self):
        return (-self.inflection, self.inflection)

    def _range(self, l, u):
        fl, fu = self.function(l), self.function(u)
        low = torch.minimum(fl, fu)
        reach = 1e-9
        at_min = (l <= self.argmin + reach) & (u >= self.argmin - reach)
        floor = self.minimum * (1 + 1e-12)
        return torch.where(at_min, torch.minimum(low, torch.full_like(low, floor)), low), \
            torch.maximum(fl, fu)

    def _upper_problem(self, l, u, fl, fu):
        """The right concave tail where its steepest tangent (at u) is above f(l), else the left."""
        c = self.inflection
        with torch.no_grad():
            right = (l >= -c) | ((u > c) & tangent_below(self.function, self.derivative, u, l,
                                                        fl, -1.0))
        return torch.where(right, c, -INF), torch.where(right, INF, -c), -1.0


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


class Gelu(XSigmoid):
    """GeLU, exact erf form 0.5 * x * (1 + erf(x / sqrt 2)) = x * Phi(x)."""

    inflection = math.sqrt(2.0)
    argmin = -0.7517915246935646
    minimum = -0.16997120747990366

    def function(self, x):
        return 0.5 * x * torch.special.erfc(-x * _SQRT_HALF)

    def derivative(self, x):
        return 0.5 * torch.special.erfc(-x * _SQRT_HALF) + x * torch.exp(-0.5 * x * x) * \
            _INV_SQRT_2PI


_GELU_K = math.sqrt(2 / math.pi)
_GELU_A = 0.044715


class GeluTanh(XSigmoid):
    """GeLU, tanh approximation 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""

    inflection = 1.4185040087908283
    argmin = -0.7524614220710162
    minimum = -0.17004075057125406

    def function(self, x):
        return x * torch.sigmoid(2 * _GELU_K * (x + _GELU_A * x ** 3))

    def derivative(self, x):
        s = torch.sigmoid(2 * _GELU_K * (x + _GELU_A * x ** 3))
        xc = x.clamp(-1e4, 1e4)  # beyond, s * (1 - s) is 0 and x^2 would overflow
        return s + xc * s * torch.sigmoid(-2 * _GELU_K * (xc + _GELU_A * xc ** 3)) * \
            2 * _GELU_K * (1 + 3 * _GELU_A * xc * xc)


class Silu(XSigmoid):
    """SiLU / swish x * sigmoid(x)."""

    inflection = 2.3993572805154675
    argmin = -1.278464542761074
    minimum = -0.27846454276107385

    def function(self, x):
        return x * torch.sigmoid(x)

    def derivative(self, x):
        return torch.sigmoid(x) * (1 + x * torch.sigmoid(-x))
