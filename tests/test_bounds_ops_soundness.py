"""Sampling soundness of every registered elementwise op and of Softmax.

For every op in ``bounds.ops.ELEMENTWISE_OPS`` (a newly registered op is picked
up automatically, with a few extra constructor arguments where it takes them),
both working dtypes and a family of intervals (random scales 1e-3..1e3,
one-signed, crossing zero, tiny, degenerate, far tails, very wide):

- ``relax`` with the default, ``alpha_init`` and random / 0 / 1 / mixed alpha
  fractions gives lines with ``lw*x + lb <= f(x) <= uw*x + ub`` at 100k points
  per case (a dense grid of every interval, endpoints and 0 included).  Lines
  and ``f`` are evaluated in float64 (the relaxation is cast up) with a
  tolerance of only ``4*eps64*(|line| + |f| + 1)``: the ops promise
  rounding-safe lines.  Points outside an op's domain (f not finite) are skipped.
- ``interval`` (IBP) contains ``f`` at the same points, up to rounding in the
  working dtype (the rounding-exact version is a known bug for Sigmoid/Tanh).

Softmax: IBP contains softmax of points sampled in random boxes (moderate to
huge logits) and lies in [0, 1]; the backward step (a linear relaxation, with
and without alpha) is sound at sampled points and never looser than the
constant IBP bounds.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from bounds.ops import ELEMENTWISE_OPS, Softmax

DTYPES = (torch.float32, torch.float64)
POINTS_PER_CASE = 100_000
EPS64 = torch.finfo(torch.float64).eps
FAMILIES = ("random", "negative", "positive", "crossing", "tiny", "degenerate", "far_tails",
            "moderate_tails", "wide")
ALPHA_VARIANTS = ("random", "zero", "one", "mixed")


# Extra constructor arguments tried for any registered op whose constructor takes them
# (the default construction always runs); the SLOW ones only with ``-m slow``.
EXTRA_ARGUMENTS = {"exponent": (3.0, 0.5), "slope": (0.2,)}
SLOW_ARGUMENTS = {"exponent": (-1.0, -2.0, 1.5, -0.5, 0.0, 1.0), "slope": (-0.5,),
                  "low": (0.0,), "high": (6.0,)}


def op_variants() -> dict[str, tuple[type, dict, bool]]:
    """'Name' (default constructor) and 'Name(arg=value)' variants of every registered op."""
    variants = {}
    for name, cls in sorted(ELEMENTWISE_OPS.items()):
        variants[name] = (cls, {}, False)
        params = inspect.signature(cls).parameters
        for slow, table in ((False, EXTRA_ARGUMENTS), (True, SLOW_ARGUMENTS)):
            for arg, values in table.items():
                if arg in params:
                    for value in values:
                        variants[f"{name}({arg}={value:g})"] = (cls, {arg: value}, slow)
    return variants


OPS = op_variants()
OP_PARAMS = [pytest.param(name, marks=[pytest.mark.slow] if OPS[name][2] else [], id=name)
             for name in sorted(OPS)]


def make_op(variant: str):
    cls, kwargs, _ = OPS[variant]
    return cls(**kwargs)



def _log_uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    exponent = torch.rand(n, generator=gen, dtype=torch.float64)
    return 10 ** (torch.log10(torch.tensor(low)) + exponent * (torch.log10(torch.tensor(high))
                                                               - torch.log10(torch.tensor(low))))


def make_intervals(family: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 endpoints ``lo <= hi`` of one family of intervals."""
    gen = torch.Generator().manual_seed(seed)
    n = 64
    a = _log_uniform(n, 1e-3, 1e3, gen)
    b = a * (1 + _log_uniform(n, 1e-3, 10.0, gen))
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    if family == "random":
        centre = sign * _log_uniform(n, 1e-3, 1e3, gen) * torch.rand(n, generator=gen).double()
        radius = _log_uniform(n, 1e-3, 1e3, gen)
        return centre - radius, centre + radius
    if family == "negative":
        return -b, -a
    if family == "positive":
        return a, b
    if family == "crossing":
        return -a, _log_uniform(n, 1e-3, 1e3, gen)
    if family == "tiny":
        centre = sign * _log_uniform(n, 1e-3, 50.0, gen)
        centre[:4] = torch.tensor([0.0, -5e-8, -1e-7, 1e-9])
        return centre, centre + 1e-7
    if family == "degenerate":
        point = sign * _log_uniform(n, 1e-3, 1e3, gen)
        point[:6] = torch.tensor([0.0, -300.0, 300.0, -1e4, 1e4, -1e-30])
        return point, point.clone()
    if family == "far_tails":
        return (torch.tensor([-300.0, 297.0, -1e3, 990.0]),
                torch.tensor([-297.0, 300.0, -990.0, 1e3]))
    if family == "moderate_tails":  # where float32 saturates (sigmoid 1 - 2^-24 near 17)
        lo = torch.tensor([-20.0, 17.0, -40.0, 37.0, -61.0, 55.0, -9.0, 8.0])
        return lo, lo + 3
    if family == "wide":
        return torch.tensor([-1e4, -1e4, -0.5]), torch.tensor([1e4, 1.0, 1e4])
    raise ValueError(family)


def sample_grid(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """[n, m] float64 points: a dense grid of each interval, endpoints (and 0) included."""
    lo, hi = lo.double(), hi.double()
    m = POINTS_PER_CASE // lo.numel()
    t = torch.linspace(0, 1, m - 1, dtype=torch.float64)
    grid = lo[:, None] + t[None] * (hi - lo)[:, None]
    grid[:, 0], grid[:, -1] = lo, hi
    zero = torch.where((lo < 0) & (hi > 0), torch.zeros_like(lo), lo)
    return torch.cat([grid, zero[:, None]], 1)


def case(family: str, dtype: torch.dtype):
    lo, hi = make_intervals(family)
    lo, hi = lo.to(dtype), hi.to(dtype)
    hi = torch.maximum(lo, hi)  # rounding of a tiny width cannot flip the order
    return lo, hi, sample_grid(lo, hi)


def alpha_values(op, variant: str, like: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for name in op.alpha_names:
        if variant == "zero":
            values[name] = torch.zeros_like(like)
        elif variant == "one":
            values[name] = torch.ones_like(like)
        else:
            value = torch.rand(like.shape, generator=gen, dtype=torch.float64).to(like.dtype)
            if variant == "mixed":  # exact 0 and 1 next to interior fractions
                value[0::3], value[1::3] = 0.0, 1.0
            values[name] = value
    return values


def evaluate(op, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f at the points (float64) and where it is defined and finite (the op's domain)."""
    fx = op.function(x)
    return fx, torch.isfinite(fx)


def line_violation(w, b, x, fx, upper: bool) -> tuple[float, int]:
    """Largest amount by which the line is on the wrong side of f beyond the tolerance.

    Points where f is undefined (NaN / infinite: outside the op's domain) are skipped.
    """
    line = w.double()[:, None] * x + b.double()[:, None]
    tol = 4 * EPS64 * (line.abs() + fx.abs() + 1)
    excess = (fx - line - tol) if upper else (line - fx - tol)
    excess = torch.where(torch.isnan(excess), torch.full_like(excess, float("inf")), excess)
    excess = torch.where(torch.isfinite(fx), excess, torch.full_like(excess, -float("inf")))
    per_interval = excess.max(1).values
    worst = int(per_interval.argmax())
    return float(per_interval[worst]), worst


def check_relaxation(op, lo, hi, x, fx, alpha, label: str) -> None:
    rel = op.relax(lo, hi, alpha)
    for t in (rel.lw, rel.lb, rel.uw, rel.ub):
        assert t.shape == lo.shape and t.dtype == lo.dtype, label
    # slopes finite; a bias may only be infinite on its safe side (-inf below, +inf above)
    assert bool(torch.isfinite(rel.lw).all() & torch.isfinite(rel.uw).all()), label
    assert not bool((torch.isnan(rel.lb) | (rel.lb == float("inf"))).any()), label
    assert not bool((torch.isnan(rel.ub) | (rel.ub == -float("inf"))).any()), label
    for upper, (w, b) in ((False, (rel.lw, rel.lb)), (True, (rel.uw, rel.ub))):
        excess, i = line_violation(w, b, x, fx, upper)
        side = "upper" if upper else "lower"
        assert excess <= 0, (f"{label}: {side} line violated by {excess:.3g} on "
                             f"[{float(lo[i])!r}, {float(hi[i])!r}] (line {float(w[i])!r}*x + "
                             f"{float(b[i])!r})")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OP_PARAMS)
def test_op_is_sound(name, dtype, family):
    """relax (default, alpha_init, random / 0 / 1 / mixed fractions) and interval."""
    op = make_op(name)
    lo, hi, x = case(family, dtype)
    fx, _ = evaluate(op, x)
    check_relaxation(op, lo, hi, x, fx, None, f"{name} {family} alpha=None")
    if op.alpha_names:
        init = op.alpha_init(lo, hi)
        assert set(init) == set(op.alpha_names)
        check_relaxation(op, lo, hi, x, fx, init, f"{name} {family} alpha=init")
        for variant in ALPHA_VARIANTS:
            alpha = alpha_values(op, variant, lo)
            check_relaxation(op, lo, hi, x, fx, alpha, f"{name} {family} alpha={variant}")
    excess = ibp_excess(op, lo, hi, x, fx, rounding=True)
    assert excess <= 0, f"{name} {family}: interval misses f by {excess:.3g}"


@pytest.mark.parametrize("name", OP_PARAMS)
def test_relaxation_broadcasts_alpha_over_specs(name):
    """The backward step relaxes [B, 1, n] bounds with alpha [B, S, n]: every row is sound."""
    op = make_op(name)
    lo, hi, _ = case("random", torch.float64)
    lo, hi = lo[None, None], hi[None, None]
    alpha = {k: torch.rand(1, 3, lo.shape[-1], dtype=torch.float64,
                           generator=torch.Generator().manual_seed(3)) for k in op.alpha_names}
    rel = op.relax(lo, hi, alpha or None)
    rows = 3 if op.alpha_names else 1
    for t in (rel.lw, rel.lb, rel.uw, rel.ub):  # [1, 1, n] where alpha changes nothing
        assert torch.broadcast_shapes(t.shape, (1, rows, lo.shape[-1])) == (1, rows, lo.shape[-1])
    x = sample_grid(lo[0, 0], hi[0, 0])[:, ::10]
    fx, _ = evaluate(op, x)
    for s in range(rows):
        for upper, (w, b) in ((False, (rel.lw, rel.lb)), (True, (rel.uw, rel.ub))):
            w, b = w.expand(1, rows, -1), b.expand(1, rows, -1)
            excess, _ = line_violation(w[0, s], b[0, s], x, fx, upper)
            assert excess <= 0


def ibp_excess(op, lo, hi, x, fx, rounding: bool) -> float:
    """How far f leaves IBP's interval; with ``rounding``, beyond the working dtype's rounding."""
    ilo, ihi = op.interval((lo, hi))
    assert ilo.shape == lo.shape and ihi.shape == hi.shape
    assert not bool(torch.isnan(ilo).any() | torch.isnan(ihi).any())
    ilo, ihi = ilo.double()[:, None], ihi.double()[:, None]
    tol = torch.zeros_like(fx)
    if rounding:
        finfo = torch.finfo(lo.dtype)
        tol = 4 * finfo.eps * fx.abs() + finfo.tiny
    excess = torch.maximum(ilo - fx, fx - ihi) - tol
    excess = torch.where(torch.isfinite(fx), excess, torch.full_like(excess, -float("inf")))
    return float(excess.max())


@pytest.mark.parametrize("name", ["Sigmoid", "Tanh"])
def test_interval_is_rounding_safe_in_float32(name):
    op = ELEMENTWISE_OPS[name]()
    lo, hi, x = case("random", torch.float32)
    assert ibp_excess(op, lo, hi, x, evaluate(op, x)[0], rounding=False) <= 0


# --- Softmax ----------------------------------------------------------------------------

SOFTMAX_SHAPES = ((2,), (3,), (5,), (10,), (4, 3))
SOFTMAX_SCALES = {"moderate": (3.0, 2.0), "large": (30.0, 20.0), "huge": (1e3, 1e3)}


def softmax_box(shape, dtype, seed, scale=3.0, width=2.0):
    gen = torch.Generator().manual_seed(seed)
    batch = 16
    centre = torch.randn((batch, *shape), generator=gen, dtype=torch.float64) * scale
    radius = torch.rand((batch, *shape), generator=gen, dtype=torch.float64) * width
    radius[:2] = 0  # degenerate boxes
    radius[2:4] *= 1e-6  # tiny boxes
    return (centre - radius).to(dtype), (centre + radius).to(dtype)


def softmax_samples(lo, hi, n: int, seed: int) -> torch.Tensor:
    """[n, B, *shape] float64 points of the box: uniform, plus random vertices."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = lo.double(), hi.double()
    u = torch.rand((n, *lo.shape), generator=gen, dtype=torch.float64)
    u[: n // 4] = u[: n // 4].round()  # vertices, where the extremes are attained
    return lo + u * (hi - lo)


def check_softmax_interval(lo, hi, x) -> None:
    low, high = Softmax(axis=1).interval((lo, hi))
    assert low.shape == lo.shape and high.shape == hi.shape
    assert bool(torch.isfinite(low).all() and torch.isfinite(high).all())
    assert bool(((low >= 0) & (high <= 1) & (low <= high)).all())
    y = torch.softmax(x, dim=2)  # axis 1 of each [B, *shape] sample
    tol = 8 * EPS64  # softmax evaluated in float64 at the sample
    assert float((low.double() - y).max()) <= tol
    assert float((y - high.double()).max()) <= tol


@pytest.mark.parametrize("scale", sorted(SOFTMAX_SCALES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
def test_softmax_interval_contains_samples(shape, dtype, scale):
    lo, hi = softmax_box(shape, dtype, len(shape) * 10 + shape[0], *SOFTMAX_SCALES[scale])
    check_softmax_interval(lo, hi, softmax_samples(lo, hi, 4000, seed=1))


def softmax_alpha(variant: str, like: torch.Tensor, seed: int):
    if variant == "none":
        return None
    gen = torch.Generator().manual_seed(seed)
    if variant == "random":
        return {k: torch.rand(like.shape, generator=gen, dtype=torch.float64).to(like.dtype)
                for k in ("lower", "upper")}
    value = 0.0 if variant == "zero" else 1.0
    return {k: torch.full_like(like, value) for k in ("lower", "upper")}


@pytest.mark.parametrize("alpha", ["none", "random", "zero", "one"])
@pytest.mark.parametrize("scale", ["moderate", "large"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
def test_softmax_backward_is_sound(shape, dtype, scale, alpha):
    """A·softmax(x) >= A_in·x + bias on the box, and no looser than the constant IBP bound."""
    op = Softmax(axis=1)
    lo, hi = softmax_box(shape, dtype, 7, *SOFTMAX_SCALES[scale])
    gen = torch.Generator().manual_seed(2)
    A = torch.randn((lo.shape[0], 6, *shape), generator=gen, dtype=torch.float64).to(dtype)
    params = softmax_alpha(alpha, A, seed=3)
    (A_in,), bias = op.backward(A, [(lo, hi)], params)
    assert A_in.shape == A.shape and A_in.dtype == dtype and bias.shape == A.shape[:2]
    assert bool(torch.isfinite(A_in).all() & torch.isfinite(bias).all())
    x = softmax_samples(lo, hi, 1000, seed=4)  # [n, B, *shape]
    y = torch.softmax(x, dim=2)
    A64, A_in64 = A.double(), A_in.double()
    value = (A64.unsqueeze(0) * y.unsqueeze(2)).flatten(3).sum(-1)  # [n, B, S]
    terms = (A_in64.unsqueeze(0) * x.unsqueeze(2)).flatten(3)
    line = terms.sum(-1) + bias.double()
    tol = 8 * EPS64 * (terms.abs().sum(-1) + bias.double().abs() + A64.abs().flatten(2).sum(-1)
                       + 1)
    assert float((line - value - tol).max()) <= 0
    low, high = op.interval((lo, hi))  # never looser than the constant relaxation
    A_pos, A_neg = A64.clamp(min=0), A64.clamp(max=0)
    constant = (A_pos * low.double().unsqueeze(1) + A_neg * high.double().unsqueeze(1))
    worst = (A_in64.clamp(min=0) * lo.double().unsqueeze(1)
             + A_in64.clamp(max=0) * hi.double().unsqueeze(1))
    concretised = worst.flatten(2).sum(-1) + bias.double()
    slack = 4 * torch.finfo(dtype).eps * (A64.abs().flatten(2).sum(-1) + 1)
    assert bool((concretised >= constant.flatten(2).sum(-1) - slack).all())


def test_softmax_interval_exact_on_a_point():
    lo = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    low, high = Softmax(axis=1).interval((lo, lo))
    expected = torch.softmax(lo, 1)
    assert torch.allclose(low, expected, rtol=1e-14, atol=0)
    assert torch.allclose(high, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_interval_lower_bound_no_cancellation(dtype):
    """Regression: sum_{j!=i} exp(u_j) computed as sum_u - exp(u_i) cancelled to 0 and gave
    a lower bound of 1 where softmax is 0.5."""
    t = 17.0 if dtype == torch.float32 else 37.5  # exp(-t) below half an ulp of 1
    lo = torch.tensor([[-t, -t]], dtype=dtype)
    hi = torch.tensor([[0.0, -t]], dtype=dtype)
    check_softmax_interval(lo, hi, lo.double()[None])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_interval_wide_box_is_finite(dtype):
    """Regression: 0/0 (both exponentials underflow) gave a NaN lower bound."""
    big = 200.0 if dtype == torch.float32 else 1000.0
    lo = torch.tensor([[-big, 0.0]], dtype=dtype)
    hi = torch.tensor([[big, 0.0]], dtype=dtype)
    x = torch.tensor([[[-big, 0.0]], [[big, 0.0]], [[0.0, 0.0]]], dtype=torch.float64)
    check_softmax_interval(lo, hi, x)


def test_softmax_of_one_entry_is_one():
    lo, hi = torch.tensor([[-5.0]]), torch.tensor([[7.0]])
    low, high = Softmax(axis=1).interval((lo, hi))
    assert torch.equal(low, torch.ones(1, 1)) and torch.equal(high, torch.ones(1, 1))
