"""General univariate nonlinearities: soundness, tightness, gradients, converters, end to end.

Ops: bounds/ops/nonlinear.py and bounds/ops/piecewise.py, with several instances
of the parametrised ones (Pow exponents, Clip bounds, LeakyRelu slopes).

- ``relax`` in float32 and float64, with alpha None / init / random / 0 / 1 /
  mixed, on interval families (random scales, one-signed, crossing, unit-scale
  regions where the curvature changes, tiny, degenerate, far tails, wide,
  several periods, poles): ``lw*x + lb <= f(x) <= uw*x + ub`` at ~100k points
  per case, lines and f in float64, tolerance ``4*eps64*(|line| + |f| + 1)``;
  points outside an op's domain (f is NaN) are skipped.  Never a NaN, a lower
  bias of +inf or an upper bias of -inf; lines are finite where IBP is.
- ``interval`` contains f at the same points.
- the backward step is sound and its alpha gradients are finite, also where
  the lines are infinite or would have infinite slopes.
- tightness: hand-checked relaxations, and the golden file of relaxation areas
  ``tests/golden/relaxation_areas.json`` for every op of ``ELEMENTWISE_OPS``
  and the variants here (default alpha, float64); an area may not grow by more
  than 1e-6 relative.  Regenerate: ``GENBAB_UPDATE_GOLDEN=1 pytest tests/test_ops_nonlinear.py``.
- ONNX: every converter against onnxruntime, the GeLU rewrite, errors.
- CROWN / alpha-CROWN on small random MLPs of each op: sampled outputs within bounds.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from bounds.graph import Graph, Node, input_node
from bounds.methods import BoundOptions, compute_bounds
from bounds.onnx_import import UnsupportedModelError, compare_with_onnxruntime, load_onnx
from bounds.onnx_ops_nonlinear import CONVERTERS, fuse_gelu
from bounds.ops import ELEMENTWISE_OPS
from bounds.ops.affine import Linear
from bounds.ops.nonlinear import (
    Erf,
    Exp,
    Gelu,
    GeluTanh,
    Log,
    Pow,
    Reciprocal,
    Silu,
    Softplus,
    Sqrt,
    XSigmoid,
)
from bounds.ops.piecewise import Abs, Clip, Cos, Floor, LeakyRelu, Sign, Sin

F64 = torch.float64
DTYPES = (torch.float32, torch.float64)
EPS64 = torch.finfo(F64).eps
POINTS_PER_CASE = 100_000
INF = math.inf
GOLDEN = Path(__file__).parent / "golden" / "relaxation_areas.json"

OPS = {
    "Exp": Exp, "Softplus": Softplus, "Log": Log, "Sqrt": Sqrt, "Reciprocal": Reciprocal,
    **{f"Pow({p:g})": (lambda p=p: Pow(p))
       for p in (2, 3, 4, 5, -1, -2, 0.5, 1.5, -0.5, 0, 1)},
    "Erf": Erf, "Gelu": Gelu, "GeluTanh": GeluTanh, "Silu": Silu, "Sin": Sin, "Cos": Cos,
    **{f"LeakyRelu({a:g})": (lambda a=a: LeakyRelu(a)) for a in (0.01, 0.2, -0.5, 2.0, 1.0)},
    "Abs": Abs,
    **{f"Clip({a:g},{b:g})": (lambda a=a, b=b: Clip(a, b))
       for a, b in ((-1, 1), (0, 6), (-INF, 0.5), (0, INF), (2, 1), (-0.25, -0.25))},
    "Sign": Sign, "Floor": Floor,
}



# --- intervals and sampling -----------------------------------------------------------------

def _log_uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    t = torch.rand(n, generator=gen, dtype=F64)
    return 10 ** (math.log10(low) + t * (math.log10(high) - math.log10(low)))


def _tiny_centres() -> list[float]:
    """Where the curvature or the function changes: inflections, kinks, integers, extrema."""
    pts = [0.0, 1e-9, -5e-8, 1.0, -1.0, 2.0, 0.5, 6.0, -0.25]
    for cls in (Gelu, GeluTanh, Silu):
        pts += [cls.inflection, -cls.inflection, cls.argmin]
    pts += [k * math.pi / 2 for k in range(-4, 5)] + [1000 * math.pi + 0.5]
    return pts


def function(op, x: torch.Tensor) -> torch.Tensor:
    """f in float64, NaN at an op's poles (where its bounds need not hold)."""
    fx = op.function(x)
    for pole in getattr(op, "poles", ()):
        fx = torch.where(x == pole, torch.nan, fx)
    return fx


def make_intervals(family: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = 64
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    a = _log_uniform(n, 1e-3, 1e3, gen)
    b = a * (1 + _log_uniform(n, 1e-3, 10.0, gen))
    if family == "random":
        centre = sign * _log_uniform(n, 1e-3, 1e3, gen) * torch.rand(n, generator=gen).double()
        radius = _log_uniform(n, 1e-3, 1e3, gen)
        return centre - radius, centre + radius
    if family == "unit":  # the region where curvature changes for most ops
        centre = (torch.rand(n, generator=gen, dtype=F64) - 0.5) * 12
        radius = _log_uniform(n, 1e-2, 4.0, gen)
        return centre - radius, centre + radius
    if family == "negative":
        return -b, -a
    if family == "positive":
        return a, b
    if family == "crossing":
        return -a, _log_uniform(n, 1e-3, 1e3, gen)
    if family == "tiny":
        centre = torch.tensor(_tiny_centres(), dtype=F64)
        return centre - 5e-8, centre + 5e-8
    if family == "degenerate":
        pts = torch.tensor([0.0, -300.0, 300.0, -1e4, 1e4, -1e-30, 1e-30, 1.0, -1.0, 3.0,
                            math.pi, -math.pi / 2, 1.4142135623730951, -0.7517915246935646,
                            2.5, -2.5, 0.999999, 7.0], dtype=F64)
        return pts, pts.clone()
    if family == "tails":
        lo = torch.tensor([-300.0, 297.0, -1e3, 990.0, -20.0, 17.0, -40.0, 37.0, -61.0, 55.0,
                           -9.0, 8.0, 700.0, 85.0], dtype=F64)
        return lo, lo + torch.tensor([3.0] * 12 + [20.0, 5.0], dtype=F64)
    if family == "wide":
        return (torch.tensor([-1e4, -1e4, -0.5, -1e3, 0.0], dtype=F64),
                torch.tensor([1e4, 1.0, 1e4, 1e3, 1e4], dtype=F64))
    if family == "periods":  # widths from a quarter period to three periods, far offsets too
        offset = (torch.rand(n, generator=gen, dtype=F64) - 0.5) * 40
        offset[:8] += 1e3
        width = torch.rand(n, generator=gen, dtype=F64) * 3 * 2 * math.pi + 0.4
        width[8:12] = 2 * math.pi + torch.tensor([-1e-3, -1e-9, 1e-9, 1e-3], dtype=F64)
        return offset, offset + width
    if family == "poles":
        lo = torch.tensor([0.0, -1.0, 0.0, -1.0, 1e-300, -1e-3, 1e-12, 0.0, -2.0], dtype=F64)
        hi = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, -1e-300, 1e-3, 1e-12, 3.0], dtype=F64)
        return lo, hi
    raise ValueError(family)


FAMILIES = ("random", "unit", "negative", "positive", "crossing", "tiny", "degenerate", "tails",
            "wide", "periods", "poles")


def sample_grid(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """[n, m] float64 points: a dense grid of each interval, the ends, 0 and integers nearby."""
    lo, hi = lo.double(), hi.double()
    m = POINTS_PER_CASE // lo.numel()
    t = torch.linspace(0, 1, m - 3, dtype=F64)
    grid = lo[:, None] + t[None] * (hi - lo)[:, None]
    grid = torch.minimum(torch.maximum(grid, lo[:, None]), hi[:, None])
    grid[:, 0], grid[:, -1] = lo, hi
    zero = torch.where((lo < 0) & (hi > 0), torch.zeros_like(lo), lo)
    ceil = torch.minimum(torch.ceil(lo), hi)  # step points of Floor, just before and at them
    before = torch.maximum(torch.nextafter(ceil, torch.full_like(ceil, -INF)), lo)
    return torch.cat([grid, zero[:, None], ceil[:, None], before[:, None]], 1)


def case(family: str, dtype: torch.dtype):
    lo, hi = make_intervals(family)
    lo, hi = lo.to(dtype), hi.to(dtype)
    hi = torch.maximum(lo, hi)
    return lo, hi, sample_grid(lo, hi)


def alpha_variants(op, lo: torch.Tensor, hi: torch.Tensor) -> dict:
    """None (the default), alpha_init, and fixed/random fractions for every alpha name."""
    gen = torch.Generator().manual_seed(1)
    out: dict = {"none": None}
    if not op.alpha_names:
        return out
    out["init"] = op.alpha_init(lo, hi)
    assert set(out["init"]) == set(op.alpha_names)
    for variant in ("zero", "one", "mixed"):
        values = {}
        for name in op.alpha_names:
            v = torch.rand(lo.shape, generator=gen, dtype=F64).to(lo.dtype)
            if variant in ("zero", "one"):
                v = torch.full_like(lo, float(variant == "one"))
            elif variant == "mixed":
                v[0::3], v[1::3] = 0.0, 1.0
            values[name] = v
        out[variant] = values
    return out


class Points:
    """Sample points [n, m] of n intervals with f evaluated once (float64)."""

    def __init__(self, x: torch.Tensor, fx: torch.Tensor):
        self.x, self.fx = x, fx
        self.scale = fx.abs() + 1
        self.special = bool((~torch.isfinite(fx)).any())

    def every(self, step: int) -> Points:
        """A subsample keeping the ends and the special points of each interval."""
        cols = torch.cat([torch.arange(0, self.x.shape[1] - 4, step),
                          torch.arange(self.x.shape[1] - 4, self.x.shape[1])])
        return Points(self.x[:, cols], self.fx[:, cols])


def line_excess(w, b, pts: Points, upper: bool) -> tuple[float, int]:
    """Largest violation of ``w x + b`` (below f, or above for ``upper``) beyond the tolerance.

    Points where f is NaN (outside the domain) are skipped; infinite lines and
    infinite values of f are compared exactly.
    """
    line = w.double()[:, None] * pts.x + b.double()[:, None]
    excess = (pts.fx - line) if upper else (line - pts.fx)
    excess -= 4 * EPS64 * (line.abs() + pts.scale)
    if pts.special or not bool(torch.isfinite(b).all()):
        trivial = (line == INF) | (pts.fx == -INF) if upper else (line == -INF) | (pts.fx == INF)
        excess = torch.where(torch.isnan(excess), INF, excess)
        excess = torch.where(torch.isnan(pts.fx) | trivial, -INF, excess)
    per_interval = excess.max(1).values
    worst = int(per_interval.argmax())
    return float(per_interval[worst]), worst


def check_relaxation(op, lo, hi, pts: Points, alpha, ibp, label: str) -> None:
    rel = op.relax(lo, hi, alpha)
    for t in (rel.lw, rel.lb, rel.uw, rel.ub):
        assert t.shape == lo.shape and t.dtype == lo.dtype, label
        assert not bool(torch.isnan(t).any()), f"{label}: NaN in the relaxation"
    assert bool(torch.isfinite(rel.lw).all() and torch.isfinite(rel.uw).all()), \
        f"{label}: infinite slope"
    assert not bool((rel.lb == INF).any() or (rel.ub == -INF).any()), f"{label}: wrong-side inf"
    finite = torch.isfinite(ibp[0]) & torch.isfinite(ibp[1])
    assert bool(torch.isfinite(rel.lb[finite]).all() and torch.isfinite(rel.ub[finite]).all()), \
        f"{label}: infinite line where IBP is finite"
    for upper, (w, b) in ((False, (rel.lw, rel.lb)), (True, (rel.uw, rel.ub))):
        excess, i = line_excess(w, b, pts, upper)
        side = "upper" if upper else "lower"
        assert excess <= 0, (f"{label}: {side} line violated by {excess:.3g} on "
                             f"[{float(lo[i])!r}, {float(hi[i])!r}] (line {float(w[i])!r}*x + "
                             f"{float(b[i])!r})")


def check_interval(op, lo, hi, x, fx, label: str):
    ilo, ihi = op.interval((lo, hi))
    assert ilo.shape == lo.shape and ilo.dtype == lo.dtype, label
    assert not bool(torch.isnan(ilo).any() or torch.isnan(ihi).any()), f"{label}: NaN in IBP"
    assert not bool((ilo == INF).any() or (ihi == -INF).any()), f"{label}: wrong-side inf"
    low, high = ilo.double()[:, None], ihi.double()[:, None]
    tol = 4 * EPS64 * fx.abs()
    outside = ((fx < low - tol) & ~(fx == low)) | ((fx > high + tol) & ~(fx == high))
    bad = outside & ~torch.isnan(fx)
    assert not bool(bad.any()), f"{label}: IBP misses f on {int(bad.any(1).sum())} intervals"
    return ilo, ihi


# --- soundness --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(OPS))
def test_relaxation_and_interval_are_sound(name, dtype):
    """100k points for the default relaxation, a fifth of them for the alpha variants."""
    op = OPS[name]()
    for family in FAMILIES:
        lo, hi, x = case(family, dtype)
        pts = Points(x, function(op, x))
        ibp = check_interval(op, lo, hi, x, pts.fx, f"{name} {family}")
        few = pts.every(5)
        for variant, alpha in alpha_variants(op, lo, hi).items():
            check_relaxation(op, lo, hi, pts if alpha is None else few, alpha, ibp,
                             f"{name} {family} alpha={variant}")


def _box_samples(lo: torch.Tensor, hi: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand((n, lo.numel()), generator=gen, dtype=F64)
    t[:n // 4] = t[:n // 4].round()  # corners
    x = lo.double() + t * (hi.double() - lo.double())
    return torch.minimum(torch.maximum(x, lo.double()), hi.double())  # rounding stays inside


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(OPS))
def test_backward_is_sound_with_finite_gradients(name, dtype):
    op = OPS[name]()
    gen = torch.Generator().manual_seed(5)
    for family in ("unit", "crossing", "tails", "poles"):
        lo, hi, _ = case(family, dtype)
        n = lo.numel()
        A = torch.randn((1, 4, n), generator=gen, dtype=F64).to(dtype)
        params = {k: torch.rand((1, 4, n), generator=gen, dtype=F64).to(dtype)
                  .requires_grad_(True) for k in op.alpha_names}
        (A_in,), bias = op.backward(A, [(lo[None], hi[None])], params or None)
        label = f"{name} {family}"
        assert A_in.shape == A.shape and bias.shape == (1, 4), label
        assert bool(torch.isfinite(A_in).all()), f"{label}: non-finite coefficients"
        assert not bool(torch.isnan(bias).any() or (bias == INF).any()), f"{label}: bias {bias}"
        loss = torch.where(torch.isfinite(bias), bias, 0.0).sum() + A_in.sum()
        if params and loss.requires_grad:
            loss.backward()
            for k, t in params.items():
                assert t.grad is not None and bool(torch.isfinite(t.grad).all()), \
                    f"{label}: non-finite gradient of alpha '{k}'"
        x = _box_samples(lo, hi, 400, seed=7)
        y = function(op, x)
        usable = torch.isfinite(y).all(1)
        if not bool(usable.any()):
            continue
        x, y = x[usable], y[usable]
        value = (A.double()[0][None] * y[:, None]).sum(-1)  # [samples, 4]
        bound = (A_in.double()[0][None] * x[:, None]).sum(-1) + bias.double()
        scale = (A.double().abs()[0][None] * (y.abs() + x.abs())[:, None]).sum(-1)
        tol = 64 * torch.finfo(dtype).eps * (scale + bias.double().abs().clamp(max=1e300) + 1)
        assert bool((value >= bound - tol).all()), f"{label}: backward bound above A.f(x)"


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradients_through_interval_bounds_are_finite(name):
    """alpha-CROWN differentiates through intermediate bounds: no NaN may flow back."""
    op = OPS[name]()
    for family in ("tiny", "degenerate", "tails", "poles"):
        for dtype in DTYPES:
            lo, hi, _ = case(family, dtype)
            lo, hi = lo.clone().requires_grad_(True), hi.clone().requires_grad_(True)
            rel = op.relax(lo, hi, op.alpha_init(lo.detach(), hi.detach()) or None)
            ilo, ihi = op.interval((lo, hi))
            total = sum(torch.where(torch.isfinite(t), t, 0.0).sum()
                        for t in (rel.lw, rel.lb, rel.uw, rel.ub, ilo, ihi))
            if total.requires_grad:
                total.backward()
                for t in (lo, hi):
                    assert t.grad is None or bool(torch.isfinite(t.grad).all()), (name, family)


def test_chord_gradient_reaches_the_interval_ends():
    lo = torch.tensor([0.0], dtype=F64, requires_grad=True)
    hi = torch.tensor([1.0], dtype=F64, requires_grad=True)
    rel = Exp().relax(lo, hi)
    rel.uw.sum().backward()  # slope (e^u - e^l) / (u - l): d/du = (e - (e - 1)) / 1 = 1
    assert math.isclose(float(hi.grad), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("name", sorted(OPS))
def test_alpha_broadcasts_over_specs_and_init_is_default(name):
    op = OPS[name]()
    lo, hi, x = case("unit", F64)
    if not op.alpha_names:
        assert op.alpha_init(lo, hi) == {}
        return
    alpha = {k: torch.rand(1, 3, lo.numel(), dtype=F64, generator=torch.Generator()
                           .manual_seed(3)) for k in op.alpha_names}
    rel = op.relax(lo[None, None], hi[None, None], alpha)
    assert rel.lw.shape == rel.ub.shape == (1, 3, lo.numel())
    pts = Points(x, function(op, x)).every(10)
    ibp = op.interval((lo, hi))
    for s in range(3):
        one = {k: v[0, s] for k, v in alpha.items()}
        check_relaxation(op, lo, hi, pts, one, ibp, f"{name} row {s}")
        row = op.relax(lo, hi, one)
        assert torch.equal(row.lw, rel.lw[0, s]) and torch.equal(row.lb, rel.lb[0, s])
    default, init = op.relax(lo, hi), op.relax(lo, hi, op.alpha_init(lo, hi))
    for a, b in zip((default.lw, default.lb, default.uw, default.ub),
                    (init.lw, init.lb, init.uw, init.ub)):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9), name


# --- tightness --------------------------------------------------------------------------------

E = math.e
KNOWN = [  # op, l, u, (lw, lb, uw, ub) with the default alpha
    (Exp(), 0.0, 1.0, (math.exp(0.5), 0.5 * math.exp(0.5), E - 1, 1.0)),
    (Log(), 1.0, E, (1 / (E - 1), -1 / (E - 1), 2 / (1 + E), math.log((1 + E) / 2) - 1)),
    (Log(), 0.0, 1.0, (0.0, -INF, 2.0, math.log(0.5) - 1)),
    (Sqrt(), -1.0, 4.0, (0.5, 0.0, 1 / (2 * math.sqrt(2)), math.sqrt(2) / 2)),
    (Pow(2), -1.0, 1.0, (0.0, 0.0, 0.0, 1.0)),
    (Pow(3), -1.0, 2.0, (0.75, -0.25, 3.0, 2.0)),
    (Reciprocal(), 1.0, 2.0, (-1 / 2.25, 2 / 1.5, -0.5, 1.5)),
    (Reciprocal(), -1.0, 1.0, (0.0, -INF, 0.0, INF)),
    (Pow(-2), -1.0, 2.0, (0.0, 0.25, 0.0, INF)),
    (Sin(), 0.0, math.pi, (0.0, 0.0, 0.0, 1.0)),
    (Sin(), -math.pi, 0.0, (0.0, -1.0, 0.0, 0.0)),
    (Sin(), -1e4, 1e4, (0.0, -1.0, 0.0, 1.0)),
    (Cos(), -math.pi / 2, math.pi / 2, (0.0, 0.0, 0.0, 1.0)),
    (Gelu(), -10.0, 10.0, (0.5, 0.0, 0.5, 5.0)),
    (Floor(), 0.2, 0.8, (0.0, 0.0, 0.0, 0.0)),
    (Floor(), 0.5, 2.5, (1.0, -1.0, 1.0, 0.0)),
    (Sign(), -1.0, 1.0, (0.0, -1.0, 0.0, 1.0)),
    (Sign(), -1.0, 3.0, (0.0, -1.0, 0.0, 1.0)),
    (Sign(), 0.0, 2.0, (0.0, 0.0, 0.0, 1.0)),
    (Clip(-1, 1), -3.0, 3.0, (0.5, -0.5, 0.5, 0.5)),
    (LeakyRelu(0.01), -1.0, 2.0, (1.0, 0.0, 2.01 / 3, 2.01 / 3 - 0.01)),
    (Abs(), -1.0, 3.0, (1.0, 0.0, 0.5, 1.5)),
]


@pytest.mark.parametrize("op, l, u, expected", KNOWN,
                         ids=[f"{type(k[0]).__name__}[{k[1]:g},{k[2]:g}]" for k in KNOWN])
def test_known_relaxations(op, l, u, expected):
    rel = op.relax(torch.tensor([l], dtype=F64), torch.tensor([u], dtype=F64))
    got = [float(t[0]) for t in (rel.lw, rel.lb, rel.uw, rel.ub)]
    for g, e in zip(got, expected):
        assert (g == e) if math.isinf(e) else math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-9), \
            (got, expected)


@pytest.mark.parametrize("name", sorted(OPS))
def test_point_intervals_are_tight(name):
    """On [c, c] both lines pass through f(c) up to the rounding margin."""
    op = OPS[name]()
    c = torch.tensor([-2.5, -0.7, 0.3, 1.0, 2.0, 7.5], dtype=F64)
    fc = op.function(c)
    keep = torch.isfinite(fc)
    rel = op.relax(c, c)
    for w, b in ((rel.lw, rel.lb), (rel.uw, rel.ub)):
        gap = (w * c + b - fc).abs()[keep]
        assert bool((gap <= 1e-12 * (1 + fc.abs()[keep] + c.abs()[keep])).all()), (name, gap)


def test_xsigmoid_constants():
    for cls in (Gelu, GeluTanh, Silu):
        op = cls()
        c = torch.tensor([cls.inflection], dtype=F64)
        h = 1e-4
        second = (op.derivative(c + h) - op.derivative(c - h)) / (2 * h)
        assert abs(float(second)) < 1e-6, cls.__name__
        m = torch.tensor([cls.argmin], dtype=F64)
        assert abs(float(op.derivative(m))) < 1e-12
        assert abs(float(op.function(m)) - cls.minimum) < 1e-15
        grid = torch.linspace(-6, 6, 200001, dtype=F64)
        assert float(op.function(grid).min()) >= cls.minimum
        assert isinstance(op, XSigmoid)


def test_wide_periodic_interval_gets_constant_bounds():
    lo = torch.tensor([0.0, 5.0], dtype=F64)
    hi = lo + 2 * math.pi
    for op in (Sin(), Cos()):
        rel = op.relax(lo, hi)
        assert torch.allclose(rel.lw, torch.zeros(2, dtype=F64))
        assert torch.allclose(rel.lb, torch.full((2,), -1.0, dtype=F64))
        assert torch.allclose(rel.ub, torch.full((2,), 1.0, dtype=F64))


GOLDEN_INTERVALS = [(-3.0, -2.0), (-1.0, 2.0), (0.5, 0.7), (2.0, 9.0), (-10.0, 10.0),
                    (-0.1, 0.1), (1e-3, 5.0), (-5.0, -1e-3), (-2.0, 0.5), (1.0, 1.5),
                    (-4.0, 4.0), (0.0, 3.0), (0.3, 0.3), (0.0, math.pi), (-1.0, 5.0),
                    (10.0, 12.5), (-0.75, -0.7), (1.3, 1.5), (-3.0, 0.8)]


def relaxation_areas() -> dict[str, dict[str, float]]:
    """Area between the default upper and lower lines over each golden interval (float64)."""
    ops = {name: ELEMENTWISE_OPS[name]() for name in ELEMENTWISE_OPS}
    ops.update({name: factory() for name, factory in OPS.items() if name not in ops})
    lo = torch.tensor([i[0] for i in GOLDEN_INTERVALS], dtype=F64)
    hi = torch.tensor([i[1] for i in GOLDEN_INTERVALS], dtype=F64)
    out = {}
    for name, op in sorted(ops.items()):
        with torch.no_grad():
            rel = op.relax(lo, hi)
        area = (rel.uw - rel.lw) * (hi ** 2 - lo ** 2) / 2 + (rel.ub - rel.lb) * (hi - lo)
        out[name] = {f"{a!r},{b!r}": float(v) for (a, b), v in zip(GOLDEN_INTERVALS, area)
                     if math.isfinite(float(v))}
    return out


def test_relaxation_areas_do_not_grow():
    current = relaxation_areas()
    if os.environ.get("GENBAB_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        return
    assert GOLDEN.is_file(), "no golden file; run GENBAB_UPDATE_GOLDEN=1 pytest " \
        "tests/test_ops_nonlinear.py"
    golden = json.loads(GOLDEN.read_text())
    problems = []
    for name, areas in current.items():
        if name not in golden:
            problems.append(f"{name}: not in the golden file (regenerate it)")
            continue
        for key, value in areas.items():
            old = golden[name].get(key)
            if old is None:
                problems.append(f"{name} [{key}]: no golden area (was infinite)")
            elif value > old * (1 + 1e-6) + 1e-12:
                problems.append(f"{name} [{key}]: area {value:.9g} > golden {old:.9g}")
    assert not problems, "looser relaxations:\n" + "\n".join(problems)


# --- ONNX converters --------------------------------------------------------------------------

N_FEATURES = 5


def _const(name: str, value) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _model(nodes, initializers, opset: int, extra_outputs=()) -> onnx.ModelProto:
    """x -> MatMul(W) = h -> nodes -> y, with a symbolic batch axis."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_FEATURES])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
            for n in ("y", *extra_outputs)]
    weight = _const("W", np.eye(N_FEATURES) * 0.9 + 0.05)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), *nodes], "g", [x],
                              outs, initializer=[weight, *initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _unary_model(op_type: str, opset: int = 13, consts=(), inputs=None, **attrs):
    names = [n for n, _ in consts]
    node = helper.make_node(op_type, ["h", *names] if inputs is None else inputs, ["y"], **attrs)
    return _model([node], [_const(n, v) for n, v in consts], opset)


POSITIVE = (0.2, 3.0)
CONVERTER_CASES = {
    "Gelu": lambda: (_unary_model("Gelu", 20, approximate="none"), Gelu),
    "Gelu(tanh)": lambda: (_unary_model("Gelu", 20, approximate="tanh"), GeluTanh),
    "Erf": lambda: (_unary_model("Erf"), Erf),
    "Sin": lambda: (_unary_model("Sin"), Sin),
    "Cos": lambda: (_unary_model("Cos"), Cos),
    "Exp": lambda: (_unary_model("Exp"), Exp),
    "Log": lambda: (_unary_model("Log"), Log, POSITIVE),
    "Reciprocal": lambda: (_unary_model("Reciprocal"), Reciprocal, POSITIVE),
    "Sqrt": lambda: (_unary_model("Sqrt"), Sqrt, POSITIVE),
    "Pow(2)": lambda: (_unary_model("Pow", consts=[("e", 2.0)]), Pow),
    "Pow(3)": lambda: (_unary_model("Pow", consts=[("e", [3.0])]), Pow),
    "Pow(0.5)": lambda: (_unary_model("Pow", consts=[("e", 0.5)]), Pow, POSITIVE),
    "Pow(-1)": lambda: (_unary_model("Pow", consts=[("e", -1.0)]), Pow, POSITIVE),
    "LeakyRelu": lambda: (_unary_model("LeakyRelu", alpha=0.1), LeakyRelu),
    "Softplus": lambda: (_unary_model("Softplus"), Softplus),
    "Sign": lambda: (_unary_model("Sign"), Sign),
    "Floor": lambda: (_unary_model("Floor"), Floor),
    "Abs": lambda: (_unary_model("Abs"), Abs),
    "Clip(inputs)": lambda: (_unary_model("Clip", consts=[("lo", -0.5), ("hi", 0.7)]), Clip),
    "Clip(max only)": lambda: (_unary_model("Clip", consts=[("hi", 0.7)],
                                            inputs=["h", "", "hi"]), Clip),
    "Clip(attributes)": lambda: (_unary_model("Clip", 6, min=-0.5, max=0.7), Clip),
    "HardSigmoid": lambda: (_unary_model("HardSigmoid", alpha=0.3, beta=0.4), Clip),
}


def test_every_converter_is_tested():
    tested = {name.split("(")[0] for name in CONVERTER_CASES}
    assert tested == set(CONVERTERS)


@pytest.mark.parametrize("name", sorted(CONVERTER_CASES))
def test_converter_matches_onnxruntime(name):
    model, op_class, *box = CONVERTER_CASES[name]()
    low, high = box[0] if box else (-3.0, 3.0)
    graph = load_onnx(model)
    assert isinstance(graph.output_node.op, op_class)
    lower, upper = np.full(N_FEATURES, low), np.full(N_FEATURES, high)
    worst = compare_with_onnxruntime(graph, model, lower, upper, samples=16)
    assert worst < 1e-4


@pytest.mark.parametrize("nodes, consts, message", [
    ([helper.make_node("Pow", ["c", "h"], ["y"])], [("c", 2.0)], "variable exponent"),
    ([helper.make_node("Pow", ["h", "h"], ["y"])], [], "exponent must be a constant"),
    ([helper.make_node("Pow", ["h", "e"], ["y"])], [("e", [2.0, 3.0, 2.0, 2.0, 2.0])],
     "must be one value"),
    ([helper.make_node("Clip", ["h", "h", "hi"], ["y"])], [("hi", 1.0)], "must be a constant"),
    ([helper.make_node("Gelu", ["h"], ["y"], approximate="fast")], [], "approximate"),
], ids=["pow-variable-exponent", "pow-two-variables", "pow-array", "clip-variable", "gelu-mode"])
def test_converter_errors(nodes, consts, message):
    model = _model(nodes, [_const(n, v) for n, v in consts], 20)
    with pytest.raises(UnsupportedModelError, match=message):
        load_onnx(model)


def _gelu_nodes(variant: str) -> tuple[list, list]:
    """The erf-form GeLU of h in one of its exported spellings: (nodes, initializers)."""
    c = helper.make_node
    if variant == "torch":  # Div(sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)
        return ([c("Div", ["h", "s2"], ["d"]), c("Erf", ["d"], ["e"]), c("Add", ["e", "one"], ["a"]),
                 c("Mul", ["h", "a"], ["m"]), c("Mul", ["m", "half"], ["y"])],
                [_const("s2", math.sqrt(2)), _const("one", 1.0), _const("half", 0.5)])
    if variant == "swapped":  # constants first, Constant nodes, a final Div(2)
        consts = [c("Constant", [], [name], value=_const(name, v)) for name, v in
                  (("r2", math.sqrt(0.5)), ("one", 1.0), ("two", 2.0))]
        return (consts + [c("Mul", ["r2", "h"], ["d"]), c("Erf", ["d"], ["e"]),
                          c("Add", ["one", "e"], ["a"]), c("Mul", ["a", "h"], ["m"]),
                          c("Div", ["m", "two"], ["y"])], [])
    # half first: (0.5 * x) * (1 + erf(x / sqrt 2))
    return ([c("Mul", ["half", "h"], ["hh"]), c("Div", ["h", "s2"], ["d"]),
             c("Erf", ["d"], ["e"]), c("Add", ["e", "one"], ["a"]), c("Mul", ["hh", "a"], ["y"])],
            [_const("s2", [math.sqrt(2)]), _const("one", 1.0), _const("half", 0.5)])


@pytest.mark.parametrize("variant", ["torch", "swapped", "half-first"])
def test_fuse_gelu_rewrites_the_erf_pattern(variant):
    nodes, inits = _gelu_nodes(variant)
    model = _model(nodes, inits, 13)
    fused = fuse_gelu(model)
    types = [n.op_type for n in fused.graph.node]
    assert types.count("Gelu") == 1 and not {"Erf", "Mul", "Div", "Add"} & set(types)
    assert "Erf" in [n.op_type for n in model.graph.node]  # the input is not modified
    graph = load_onnx(fused)
    assert isinstance(graph.output_node.op, Gelu)
    worst = compare_with_onnxruntime(graph, model, np.full(N_FEATURES, -4.0),
                                     np.full(N_FEATURES, 4.0), samples=16)
    assert worst < 1e-5


def test_fuse_gelu_leaves_shared_intermediates_alone():
    nodes, inits = _gelu_nodes("torch")
    model = _model(nodes, inits, 13, extra_outputs=("e",))
    assert [n.op_type for n in fuse_gelu(model).graph.node] == \
        [n.op_type for n in model.graph.node]


def test_onnx_gelu_opset20_is_supported_by_onnxruntime():
    import onnxruntime as ort

    model = _unary_model("Gelu", 20)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.linspace(-3, 3, N_FEATURES, dtype=np.float32)[None]
    y = session.run(None, {"x": x})[0]
    h = x @ (np.eye(N_FEATURES, dtype=np.float32) * 0.9 + 0.05)
    expected = Gelu().function(torch.tensor(h, dtype=F64)).numpy()
    assert np.allclose(y, expected, atol=1e-5)


# --- end to end -------------------------------------------------------------------------------

E2E = {name: OPS[name] for name in (
    "Exp", "Softplus", "Log", "Sqrt", "Reciprocal", "Pow(2)", "Pow(3)", "Pow(-2)", "Pow(0.5)",
    "Erf", "Gelu", "GeluTanh", "Silu", "Sin", "Cos", "LeakyRelu(0.01)", "LeakyRelu(2)", "Abs",
    "Clip(-1,1)", "Sign", "Floor")}
POSITIVE_INPUT = ("Log", "Sqrt", "Reciprocal", "Pow(-2)", "Pow(0.5)")


def _mlp(factory, seed: int, positive: bool) -> Graph:
    """3 -> 8 -> act -> 8 -> act -> 2; with ``positive`` every pre-activation stays above 0.5."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [3, 8, 8, 2]
    nodes, prev = [input_node("x", (3,))], "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = torch.randn(b, a, generator=gen, dtype=F64) * 0.6
        bias = torch.randn(b, generator=gen, dtype=F64)
        if positive and i < len(sizes) - 2:
            w, bias = w * 0.05, bias.abs() * 0.1 + 1.5
        nodes.append(Node(f"l{i}", Linear(w, bias), (prev,), (b,)))
        prev = f"l{i}"
        if i < len(sizes) - 2:
            nodes.append(Node(f"a{i}", factory(), (prev,), (b,)))
            prev = f"a{i}"
    return Graph(tuple(nodes), ("x",), (prev,))


@pytest.mark.parametrize("name", sorted(E2E))
def test_crown_and_alpha_crown_contain_sampled_outputs(name):
    positive = name in POSITIVE_INPUT
    for seed in range(1):
        graph = _mlp(E2E[name], seed, positive)
        gen = torch.Generator().manual_seed(10 + seed)
        centre = torch.randn(1, 3, generator=gen, dtype=F64)
        lo, hi = centre - 0.4, centre + 0.4
        C = torch.cat([torch.eye(2, dtype=F64), -torch.eye(2, dtype=F64)])[None]
        x = lo + torch.rand(10000, 3, generator=gen, dtype=F64) * (hi - lo)
        values = graph.forward_all(x)
        y = values[graph.outputs[0]]
        true_min = torch.cat([y, -y], 1).min(0).values
        results = {}
        for method in ("crown", "alpha-crown"):
            r = compute_bounds(graph, lo, hi, C, BoundOptions(method=method, alpha_iterations=5))
            bound = r.lower[0]
            assert not bool(torch.isnan(bound).any()), (name, method)
            assert bool(torch.isfinite(bound).all()), (name, method, bound)
            assert bool((bound <= true_min + 1e-9).all()), (name, method, bound, true_min)
            for key, (blo, bhi) in r.bounds.items():
                v = values[key]
                assert bool(((v >= blo - 1e-9) & (v <= bhi + 1e-9)).all()), (name, method, key)
            results[method] = bound
        assert bool((results["alpha-crown"] >= results["crown"] - 1e-9).all()), name
