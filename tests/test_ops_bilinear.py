"""Products of variables (Mul, Square, MatMul) and Softmax: soundness, tightness, converters.

- backward step of Mul, MatMul and Softmax: for random A of both signs,
  ``A·y >= sum_i A_i·x_i + bias`` at 100k points of random boxes (crossing 0,
  one-signed, degenerate in one or both operands, huge and tiny widths, mixed
  scales), float32 and float64, alpha None / random / 0 / 1; evaluated in
  float64 with a relative tolerance of 1e-12 (the ops round outwards).
- IBP contains the samples; Softmax IBP lies in [0, 1] with
  ``sum(low) <= 1 <= sum(high)``.
- Softmax: the linear relaxation is never looser than the constant (IBP) one
  when concretised on the box, usually tighter, and tighter than decomposing
  softmax into Exp / ReduceSum / Reciprocal / Mul.
- infinite operand bounds (Div by an interval containing 0) give infinite
  bounds, never NaN.
- ONNX: x*y, x*x, x/y, c/y, Q@K^T and a small attention block against
  onnxruntime; CROWN / alpha-CROWN on graphs with products contain samples.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from bounds.graph import Graph, Node, input_node
from bounds.methods import BoundOptions, compute_bounds
from bounds.onnx_import import compare_with_onnxruntime, load_onnx
from bounds.ops import NONLINEAR_OPS
from bounds.ops.activation import Sigmoid
from bounds.ops.affine import ElementwiseAffine, Linear
from bounds.ops.bilinear import MatMul, Mul, Square
from bounds.ops.nonlinear import Exp, Reciprocal
from bounds.ops.softmax import Softmax
from bounds.traversal import ibp

F64 = torch.float64
DTYPES = (torch.float32, torch.float64)
POINTS = 100_000
RTOL = 1e-12
ALPHAS = ("none", "random", "zero", "one")
FAMILIES = ("random", "crossing", "positive", "negative", "degenerate_x", "degenerate_both",
            "huge", "tiny", "mixed_scale")



# --- boxes, samples, checks -------------------------------------------------------------------

def _log_uniform(shape, low, high, gen):
    t = torch.rand(shape, generator=gen, dtype=F64)
    return 10 ** (math.log10(low) + t * (math.log10(high) - math.log10(low)))


def make_box(family: str, shape, gen, operand: int = 0):
    """float64 ``lo <= hi`` of one family; ``operand`` picks the role in two-operand families."""
    centre = torch.randn(shape, generator=gen, dtype=F64) * 2
    radius = torch.rand(shape, generator=gen, dtype=F64) * 2
    if family == "crossing":
        return -_log_uniform(shape, 1e-3, 10, gen), _log_uniform(shape, 1e-3, 10, gen)
    if family in ("positive", "negative"):
        a = _log_uniform(shape, 1e-3, 10, gen)
        b = a + _log_uniform(shape, 1e-3, 10, gen)
        return (a, b) if family == "positive" else (-b, -a)
    if family == "degenerate_x" and operand == 0 or family == "degenerate_both":
        return centre, centre.clone()
    if family == "huge":
        centre = torch.randn(shape, generator=gen, dtype=F64) * 1e6
        radius = _log_uniform(shape, 1e3, 1e7, gen)
    elif family == "tiny":
        centre = centre * _log_uniform(shape, 1e-9, 1.0, gen)
        radius = _log_uniform(shape, 1e-12, 1e-7, gen)
    elif family == "mixed_scale":
        scale = 1e5 if operand == 0 else 1e-5
        centre, radius = centre * scale, radius * scale
    return centre - radius, centre + radius


def to_dtype(lo, hi, dtype):
    lo, hi = lo.to(dtype), hi.to(dtype)
    return lo, torch.maximum(lo, hi)


def sample(lo, hi, n: int, gen):
    """[n, *lo.shape] float64 points of the box: a quarter at random vertices."""
    lo, hi = lo.double(), hi.double()
    u = torch.rand((n, *lo.shape), generator=gen, dtype=F64)
    u[: n // 4] = u[: n // 4].round()
    return lo + u * (hi - lo)


def random_A(shape, S: int, gen, dtype):
    return torch.randn((1, S, *shape), generator=gen, dtype=F64).to(dtype)


def alpha_params(op, in_bounds, S: int, variant: str, gen):
    if variant == "none":
        return None
    init = op.init_alpha(in_bounds)
    out = {}
    for name, value in init.items():
        shape = (value.shape[0], S, *value.shape[1:])
        if variant == "random":
            out[name] = torch.rand(shape, generator=gen, dtype=F64).to(value.dtype)
        else:
            out[name] = torch.full(shape, 0.0 if variant == "zero" else 1.0, dtype=value.dtype)
    return out


def flat(points):
    """[n, *shape] samples as (values [n, m], |values| [n, m]) for ``assert_sound``."""
    x = points.reshape(points.shape[0], -1)
    return x, x.abs()


def _dot(points, coeff):
    """(sums of products, sums of |products|): [n, m] x [S, *shape] -> [n, S]."""
    x, x_abs = points
    c = coeff.double()[0].reshape(coeff.shape[1], -1)
    return x @ c.T, x_abs @ c.abs().T


def assert_sound(A, value, coeffs, points, bias, label: str):
    """``A·value >= sum_i coeffs_i·points_i + bias`` at every sample (``flat`` ones, B = 1)."""
    lhs, scale = _dot(value, A)
    rhs = bias.double()[0].unsqueeze(0).expand_as(lhs)
    scale = scale + rhs.abs()
    for coeff, x in zip(coeffs, points):
        terms, size = _dot(x, coeff)
        rhs, scale = rhs + terms, scale + size
    assert not bool(torch.isnan(rhs).any()), f"{label}: NaN"
    excess = rhs - lhs - RTOL * scale - 1e-300
    worst = float(excess.max())
    assert worst <= 0, f"{label}: bound violated by {worst:.3g}"


def assert_contains(lo, hi, value, label: str, scale=None):
    """IBP contains the float64 samples, up to their own rounding (relative to ``scale``)."""
    tol = RTOL * (value.abs() if scale is None else scale)
    assert float((lo.double() - value - tol).max()) <= 0, f"{label}: IBP lower bound violated"
    assert float((value - hi.double() - tol).max()) <= 0, f"{label}: IBP upper bound violated"


# --- Mul --------------------------------------------------------------------------------------

MUL_SHAPES = {"same": ((16,), (16,)), "broadcast_rank": ((4, 16), (16,)),
              "broadcast_ones": ((8, 1), (1, 8))}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mul_backward_and_ibp_are_sound(family, dtype):
    gen = torch.Generator().manual_seed(FAMILIES.index(family))
    for layout, (sx, sy) in MUL_SHAPES.items():
        op = Mul([sx, sy])
        bx = to_dtype(*make_box(family, (1, *sx), gen, 0), dtype)
        by = to_dtype(*make_box(family, (1, *sy), gen, 1), dtype)
        n = POINTS if layout == "same" else POINTS // 20
        x, y = sample(*bx, n, gen), sample(*by, n, gen)  # [n, 1, *s]
        value = op.forward(x.reshape(n, *sx), y.reshape(n, *sy)).unsqueeze(1)
        lo, hi = op.interval(bx, by)
        assert_contains(lo, hi, value, f"Mul {family} {layout}")
        value, x, y = flat(value), flat(x), flat(y)
        for variant in ALPHAS:
            A = random_A(op.out_shape, 4, gen, dtype)
            params = alpha_params(op, [bx, by], 4, variant, gen)
            (A_x, A_y), bias = op.backward(A, [bx, by], params)
            assert A_x.shape == (1, 4, *sx) and A_y.shape == (1, 4, *sy)
            assert A_x.dtype == dtype and bias.dtype == dtype
            assert bool(torch.isfinite(A_x).all() and torch.isfinite(bias).all())
            assert_sound(A, value, [A_x, A_y], [x, y], bias,
                         f"Mul {family} {layout} {dtype} alpha={variant}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mul_of_a_node_with_itself_is_sound(dtype):
    """Both operands one node: the traversal adds the two coefficient tensors."""
    gen = torch.Generator().manual_seed(5)
    op = Mul([(16,), (16,)])
    for family in ("random", "crossing", "degenerate_both", "huge"):
        b = to_dtype(*make_box(family, (1, 16), gen), dtype)
        x = sample(*b, POINTS, gen)[:, 0]
        value, x = flat(x * x), flat(x)
        for variant in ALPHAS:
            A = random_A((16,), 3, gen, dtype)
            params = alpha_params(op, [b, b], 3, variant, gen)
            (A_1, A_2), bias = op.backward(A, [b, b], params)
            assert_sound(A, value, [A_1 + A_2], [x], bias, f"x*x {family} {variant}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_square_is_sound_and_tighter_than_mccormick(dtype):
    gen = torch.Generator().manual_seed(6)
    square, mul = Square(), Mul([(16,), (16,)])
    for family in ("random", "crossing", "positive", "degenerate_both", "huge", "tiny"):
        b = to_dtype(*make_box(family, (1, 16), gen), dtype)
        x = sample(*b, POINTS, gen)[:, 0]
        lo, hi = square.interval(b)
        assert_contains(lo, hi, (x * x).unsqueeze(1), f"Square {family}")
        value, points = flat(x * x), flat(x)
        for variant in ALPHAS:
            A = random_A((16,), 3, gen, dtype)
            params = alpha_params(square, [b], 3, variant, gen)
            (A_x,), bias = square.backward(A, [b], params)
            assert_sound(A, value, [A_x], [points], bias, f"Square {family} {variant}")
        if family in ("random", "crossing"):
            A = random_A((16,), 16, gen, F64)
            b64 = (b[0].double(), b[1].double())
            (A_x,), bias = square.backward(A, [b64])
            (A_1, A_2), bias_m = mul.backward(A, [b64, b64])
            assert bool((concretise(A_x, *b64) + bias >=
                         concretise(A_1 + A_2, *b64) + bias_m - 1e-9).all())


def concretise(coeff, lo, hi):
    """min over the box of coeff·x: [B, S]."""
    B, S = coeff.shape[:2]
    low = coeff.clamp(min=0) * lo.unsqueeze(1) + coeff.clamp(max=0) * hi.unsqueeze(1)
    return low.reshape(B, S, -1).sum(-1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_infinite_operand_bounds_give_infinite_bounds_not_nan(dtype):
    inf = math.inf
    lx = torch.tensor([[-inf, 1.0, 0.0, -2.0, 0.0]], dtype=dtype)
    ux = torch.tensor([[inf, inf, 0.0, 3.0, 0.0]], dtype=dtype)
    ly = torch.tensor([[1.0, 2.0, -inf, -1.0, 1e38]], dtype=dtype)
    uy = torch.tensor([[2.0, 3.0, inf, 1.0, 3e38]], dtype=dtype)
    op = Mul([(5,), (5,)])
    lo, hi = op.interval((lx, ux), (ly, uy))
    assert not bool(torch.isnan(lo).any() or torch.isnan(hi).any())
    assert abs(float(lo[0, 2])) < 1e-30 and abs(float(hi[0, 2])) < 1e-30  # 0 * unbounded
    A = torch.eye(5, dtype=dtype).unsqueeze(0)
    A = torch.cat([A, -A], 1).requires_grad_(True)
    params = {k: v.unsqueeze(1).expand(1, 10, 5).clone().requires_grad_(True)
              for k, v in op.init_alpha([(lx, ux), (ly, uy)]).items()}
    (A_x, A_y), bias = op.backward(A, [(lx, ux), (ly, uy)], params)
    assert not bool(torch.isnan(bias).any() or torch.isnan(A_x).any() or torch.isnan(A_y).any())
    assert float(bias[0, 0].detach()) == -inf and float(bias[0, 3].detach()) > -inf
    (bias[torch.isfinite(bias)].sum() + A_x.sum() + A_y.sum()).backward()
    assert not bool(torch.isnan(A.grad).any())  # (float32 sums of 1e38 slopes may overflow)
    assert all(not bool(torch.isnan(p.grad).any()) for p in params.values())


# --- MatMul -----------------------------------------------------------------------------------

MATMUL_SHAPES = {"batched": ((2, 3, 4), (2, 4, 5)), "broadcast": ((3, 4), (2, 4, 5)),
                 "plain": ((6, 3), (3, 6))}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matmul_backward_and_ibp_are_sound(family, dtype):
    gen = torch.Generator().manual_seed(FAMILIES.index(family) + 100)
    for layout, (sx, sw) in MATMUL_SHAPES.items():
        op = MatMul([sx, sw])
        bx = to_dtype(*make_box(family, (1, *sx), gen, 0), dtype)
        bw = to_dtype(*make_box(family, (1, *sw), gen, 1), dtype)
        n = POINTS // 4 if layout == "batched" else POINTS // 20
        x, w = sample(*bx, n, gen)[:, 0], sample(*bw, n, gen)[:, 0]
        value = op.forward(x, w)  # [n, *out]
        lo, hi = op.interval(bx, bw)
        assert_contains(lo, hi, value.unsqueeze(1), f"MatMul {family} {layout}",
                        op.forward(x.abs(), w.abs()).unsqueeze(1))
        value, x, w = flat(value), flat(x), flat(w)
        for variant in ALPHAS:
            A = random_A(op.out_shape, 3, gen, dtype)
            params = alpha_params(op, [bx, bw], 3, variant, gen)
            (A_x, A_w), bias = op.backward(A, [bx, bw], params)
            assert A_x.shape == (1, 3, *sx) and A_w.shape == (1, 3, *sw)
            assert A_x.dtype == dtype and bias.dtype == dtype
            assert_sound(A, value, [A_x, A_w], [x, w], bias,
                         f"MatMul {family} {layout} {dtype} alpha={variant}")


def test_matmul_matches_mul_terms():
    """MatMul's relaxation equals summing the McCormick planes of every term (no shortcut)."""
    gen = torch.Generator().manual_seed(9)
    sx, sw = (3, 4), (4, 2)
    bx, bw = make_box("random", (1, *sx), gen), make_box("crossing", (1, *sw), gen)
    A = random_A((3, 2), 5, gen, F64)
    alpha = {k: torch.rand(1, 5, 3, 2, generator=gen, dtype=F64) for k in ("lower", "upper")}
    (A_x, A_w), _ = MatMul([sx, sw]).backward(A, [bx, bw], alpha)
    # the same as a Mul over [3, 4, 2] terms summed over k
    mul = Mul([(3, 4, 1), (1, 4, 2)])
    A_terms = A.unsqueeze(3).expand(1, 5, 3, 4, 2)
    alpha_terms = {k: v.unsqueeze(3).expand(1, 5, 3, 4, 2) for k, v in alpha.items()}
    (M_x, M_w), _ = mul.backward(A_terms, [(bx[0].unsqueeze(-1), bx[1].unsqueeze(-1)),
                                           (bw[0].unsqueeze(1), bw[1].unsqueeze(1))],
                                 alpha_terms)
    assert torch.allclose(A_x, M_x[..., 0], atol=1e-12)
    assert torch.allclose(A_w, M_w[:, :, 0], atol=1e-12)


# --- Softmax ----------------------------------------------------------------------------------

SOFTMAX_CASES = {  # name: (per-sample shape, axis of the batched tensor)
    "n5": ((5,), 1), "n17": ((17,), 1), "rows_last": ((3, 6), 2), "rows_first": ((6, 3), 1),
}
SOFTMAX_FAMILIES = ("moderate", "narrow", "wide", "large_offset", "degenerate", "mixed",
                    "far_apart", "enormous")


def softmax_box(family, shape, gen):
    centre = torch.randn((1, *shape), generator=gen, dtype=F64) * 3
    radius = torch.rand((1, *shape), generator=gen, dtype=F64)
    if family == "narrow":
        radius = radius * 1e-3
    elif family == "wide":
        radius = radius * 30
    elif family == "large_offset":
        centre = centre + 500
    elif family == "degenerate":
        radius = radius * 0
    elif family == "mixed":  # some entries degenerate, some very wide
        radius = radius * torch.where(torch.rand(radius.shape, generator=gen) < 0.3, 0.0, 20.0)
    elif family == "far_apart":  # exp of the differences under- and overflows
        centre = centre * 300
    elif family == "enormous":
        radius = radius * 1e16
    return centre - radius, centre + radius


@pytest.mark.parametrize("family", SOFTMAX_FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_backward_ibp_sound_and_never_looser_than_constant(family, dtype):
    gen = torch.Generator().manual_seed(SOFTMAX_FAMILIES.index(family) + 200)
    for name, (shape, axis) in SOFTMAX_CASES.items():
        op = Softmax(axis)
        b = to_dtype(*softmax_box(family, shape, gen), dtype)
        n = POINTS if name in ("n5", "n17") else POINTS // 4
        x = sample(*b, n, gen)[:, 0]
        value = torch.softmax(x, dim=axis)
        low, high = op.interval(b)
        assert bool(((low >= 0) & (high <= 1) & (low <= high)).all())
        assert_contains(low, high, value.unsqueeze(1), f"Softmax {family} {name}")
        n_axis = shape[axis - 1]
        slack = 4 * n_axis * torch.finfo(F64).eps
        assert bool((low.double().sum(axis) <= 1 + slack).all())
        assert bool((high.double().sum(axis) >= 1 - slack).all())
        value, x = flat(value), flat(x)
        for variant in ALPHAS:
            A = random_A(shape, 8, gen, dtype)
            params = alpha_params(op, [b], 8, variant, gen)
            (A_x,), bias = op.backward(A, [b], params)
            assert A_x.shape == A.shape and A_x.dtype == dtype and bias.dtype == dtype
            assert_sound(A, value, [A_x], [x], bias, f"Softmax {family} {name} {variant}")
            const = concretise(A.double(), low.double(), high.double())
            ours = concretise(A_x.double(), b[0].double(), b[1].double()) + bias.double()
            slack = 4 * torch.finfo(dtype).eps * (1 + A.double().abs().flatten(2).sum(-1))
            assert bool((ours >= const - slack).all()), \
                f"Softmax {family} {name} {variant}: looser than the constant relaxation"


def test_softmax_linear_relaxation_beats_constant_on_random_boxes():
    gen = torch.Generator().manual_seed(11)
    lo, hi = softmax_box("moderate", (64, 6), gen)
    lo, hi = lo[0], hi[0]  # 64 boxes in the batch
    op = Softmax(1)
    A = torch.randn(64, 8, 6, generator=gen, dtype=F64)
    (A_x,), bias = op.backward(A, [(lo, hi)])
    low, high = op.interval((lo, hi))
    gain = concretise(A_x, lo, hi) + bias - concretise(A, low, high)
    assert float(gain.min()) >= 0
    assert float((gain > 1e-6).double().mean()) > 0.3 and float(gain.mean()) > 1e-3


def _softmax_graphs(n: int):
    """The direct Softmax op, and softmax decomposed into Exp, ReduceSum, Reciprocal, Mul."""
    ident = ElementwiseAffine(None, None, (n,))
    direct = Graph((input_node("x", (n,)), Node("s", Softmax(1), ("x",), (n,)),
                    Node("y", ident, ("s",), (n,))), ("x",), ("y",))
    nodes = (input_node("x", (n,)), Node("e", Exp(), ("x",), (n,)),
             Node("t", Linear(torch.ones(1, n, dtype=F64), None), ("e",), (1,)),
             Node("r", Reciprocal(), ("t",), (1,)),
             Node("m", Mul([(n,), (1,)]), ("e", "r"), (n,)), Node("y", ident, ("m",), (n,)))
    return direct, Graph(nodes, ("x",), ("y",))


@pytest.mark.parametrize("n,width", [(3, 1.0), (10, 1.0), (17, 2.0)])
def test_softmax_tighter_than_decomposition(n, width):
    """The choice of relaxation: on random boxes (max subtracted) the direct one wins."""
    gen = torch.Generator().manual_seed(n)
    centre = torch.randn(40, n, generator=gen, dtype=F64) * 2
    radius = torch.rand(40, n, generator=gen, dtype=F64) * width
    lo, hi = centre - radius, centre + radius
    shift = hi.amax(-1, keepdim=True)
    lo, hi = lo - shift, hi - shift
    C = torch.randn(40, 6, n, generator=gen, dtype=F64)
    direct, decomposed = _softmax_graphs(n)
    options = BoundOptions(method="crown")
    ours = compute_bounds(direct, lo, hi, C, options).lower
    theirs = compute_bounds(decomposed, lo, hi, C, options).lower
    assert float(ours.mean()) > float(theirs.mean())


@pytest.mark.parametrize("family", SOFTMAX_FAMILIES)
def test_softmax_alpha_gradients_are_finite(family):
    gen = torch.Generator().manual_seed(12)
    lo, hi = softmax_box(family, (8,), gen)
    op = Softmax(1)
    A = torch.randn(1, 4, 8, generator=gen, dtype=F64)
    params = {k: v.unsqueeze(1).expand(1, 4, 8).clone().requires_grad_(True)
              for k, v in op.init_alpha([(lo, hi)]).items()}
    (A_x,), bias = op.backward(A, [(lo, hi)], params)
    (concretise(A_x, lo, hi) + bias).sum().backward()
    grads = [p.grad for p in params.values()]
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    if family in ("moderate", "wide"):
        assert any(float(g.abs().sum()) > 0 for g in grads)


def test_bilinear_ops_registered():
    assert NONLINEAR_OPS["Mul"] is Mul and NONLINEAR_OPS["MatMul"] is MatMul
    assert NONLINEAR_OPS["Square"] is Square and NONLINEAR_OPS["Softmax"] is Softmax


# --- CROWN end to end -------------------------------------------------------------------------

def _gated_graph(gen, same: bool = False):
    """y = C ((W1 x) * sigmoid(W2 x)), or ((W1 x) * (W1 x)) with ``same``."""
    W1, W2 = (torch.randn(5, 3, generator=gen, dtype=F64) for _ in range(2))
    C = torch.randn(2, 5, generator=gen, dtype=F64)
    nodes = [input_node("x", (3,)), Node("a", Linear(W1, None), ("x",), (5,))]
    if same:
        nodes.append(Node("m", Mul([(5,), (5,)]), ("a", "a"), (5,)))
    else:
        nodes += [Node("b", Linear(W2, None), ("x",), (5,)), Node("s", Sigmoid(), ("b",), (5,)),
                  Node("m", Mul([(5,), (5,)]), ("a", "s"), (5,))]
    nodes.append(Node("y", Linear(C, None), ("m",), (2,)))
    return Graph(tuple(nodes), ("x",), ("y",))


@pytest.mark.parametrize("same", [False, True], ids=["gated", "square"])
def test_crown_on_products_contains_samples(same):
    gen = torch.Generator().manual_seed(3)
    graph = _gated_graph(gen, same)
    centre = torch.randn(4, 3, generator=gen, dtype=F64)
    lo, hi = centre - 0.4, centre + 0.4
    C = torch.cat([torch.eye(2), -torch.eye(2)]).to(F64).expand(4, 4, 2)
    x = sample(lo, hi, POINTS // 4, gen)  # [n, 4, 3]
    with torch.no_grad():
        y = graph.forward(x.reshape(-1, 3)).reshape(x.shape[0], 4, 2)
    truth_lo = torch.cat([y.amin(0), -y.amax(0)], 1)  # [4, 4]
    results = {}
    for method in ("ibp", "crown", "alpha-crown"):
        options = BoundOptions(method=method, alpha_iterations=20)
        results[method] = compute_bounds(graph, lo, hi, C, options).lower
        assert bool((results[method] <= truth_lo + 1e-9).all()), method
    assert bool((results["alpha-crown"] >= results["crown"] - 1e-9).all())
    assert float((results["crown"] - results["ibp"]).mean()) > 0


def test_crown_through_division_by_an_interval_containing_zero():
    gen = torch.Generator().manual_seed(4)
    nodes = (input_node("x", (2,)),
             Node("a", Linear(torch.randn(3, 2, generator=gen, dtype=F64), None), ("x",), (3,)),
             Node("b", Linear(torch.randn(3, 2, generator=gen, dtype=F64), None), ("x",), (3,)),
             Node("r", Reciprocal(), ("b",), (3,)), Node("y", Mul([(3,), (3,)]), ("a", "r"), (3,)))
    graph = Graph(nodes, ("x",), ("y",))
    lo, hi = -torch.ones(1, 2, dtype=F64), torch.ones(1, 2, dtype=F64)
    C = torch.cat([torch.eye(3), -torch.eye(3)]).to(F64).unsqueeze(0)
    node_lo, node_hi = ibp(graph, lo, hi)["y"]
    assert bool((node_lo == -math.inf).all() and (node_hi == math.inf).all())
    for method in ("crown", "alpha-crown"):
        res = compute_bounds(graph, lo, hi, C, BoundOptions(method=method, alpha_iterations=5))
        assert not bool(torch.isnan(res.lower).any()), method
        assert bool((res.lower == -math.inf).all()), method


# --- ONNX converters --------------------------------------------------------------------------

def _model(nodes, inputs, outputs, inits, opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _init(name, array):
    return helper.make_tensor(name, TensorProto.FLOAT, array.shape,
                              array.astype(np.float32).reshape(-1).tolist())


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _products_model():
    """x*y, x*x, x/y with y > 0, c/y, and a broadcast Mul by a [1, 1] variable."""
    rng = np.random.default_rng(0)
    inits = [_init("W1", rng.standard_normal((6, 4))), _init("W2", rng.standard_normal((6, 4))),
             _init("W3", rng.standard_normal((6, 1))), _init("half", np.array(0.5)),
             _init("two", np.array([2.0, -1.0, 0.5, 3.0]))]
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["a"]),
             helper.make_node("MatMul", ["X", "W2"], ["b0"]),
             helper.make_node("Sigmoid", ["b0"], ["b1"]),
             helper.make_node("Add", ["b1", "half"], ["b"]),  # in (0.5, 1.5)
             helper.make_node("Mul", ["a", "b"], ["p"]),
             helper.make_node("Mul", ["a", "a"], ["q"]),
             helper.make_node("Div", ["a", "b"], ["r"]),
             helper.make_node("Div", ["two", "b"], ["s"]),
             helper.make_node("MatMul", ["X", "W3"], ["c"]),
             helper.make_node("Mul", ["p", "c"], ["t"]),
             helper.make_node("Mul", ["t", "half"], ["t2"]),  # constant operand: affine
             helper.make_node("Add", ["t2", "q"], ["u1"]),
             helper.make_node("Add", ["u1", "r"], ["u2"]),
             helper.make_node("Add", ["u2", "s"], ["Y"])]
    return _model(nodes, [_vi("X", [1, 6])], [_vi("Y", [1, 4])], inits)


def _attention_model(heads: int = 1):
    """Q K^T / sqrt(d) -> Softmax -> @ V on X [1, 4, 6], with ``heads`` heads."""
    rng = np.random.default_rng(1)
    tokens, dim = 4, 6
    d = dim // heads
    inits = [_init(n, rng.standard_normal((dim, dim)) * 0.5) for n in ("Wq", "Wk", "Wv")]
    inits += [_init("scale", np.array(1 / math.sqrt(d))),
              helper.make_tensor("heads", TensorProto.INT64, [4], [1, tokens, heads, d])]
    nodes = [helper.make_node("MatMul", ["X", w], [o]) for w, o in
             (("Wq", "q0"), ("Wk", "k0"), ("Wv", "v0"))]
    for name in ("q", "k", "v"):
        nodes += [helper.make_node("Reshape", [f"{name}0", "heads"], [f"{name}1"]),
                  helper.make_node("Transpose", [f"{name}1"], [name], perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["scores0"]),
              helper.make_node("Mul", ["scores0", "scale"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["att"], axis=-1),
              helper.make_node("MatMul", ["att", "v"], ["Y"])]
    return _model(nodes, [_vi("X", [1, tokens, dim])], [_vi("Y", [1, heads, tokens, d])],
                  inits)


@pytest.mark.parametrize("kind", ["products", "attention1", "attention2"])
def test_converters_match_onnxruntime_and_bounds_hold(kind):
    model = _products_model() if kind == "products" else _attention_model(int(kind[-1]))
    graph = load_onnx(model)
    ops = {type(n.op).__name__ for n in graph.nodes}
    expected = {"Mul", "Square", "Reciprocal"} if kind == "products" else {"MatMul", "Softmax"}
    assert expected <= ops, ops
    shape = graph.input_node.shape
    lower, upper = -np.ones(shape), np.ones(shape)
    compare_with_onnxruntime(graph, model, lower.reshape(-1), upper.reshape(-1), samples=16,
                             rtol=1e-4, atol=1e-5)
    gen = torch.Generator().manual_seed(8)
    centre = torch.rand((2, *shape), generator=gen, dtype=F64) - 0.5
    lo, hi = centre - 0.05, centre + 0.05
    out = graph.output_node.size
    C = torch.cat([torch.eye(out), -torch.eye(out)]).to(F64).expand(2, 2 * out, out)
    x = sample(lo, hi, 2000, gen)
    with torch.no_grad():
        y = graph.forward(x.reshape(-1, *shape)).reshape(x.shape[0], 2, out)
    truth = torch.cat([y.amin(0), -y.amax(0)], 1)
    crown = compute_bounds(graph, lo, hi, C, BoundOptions(method="crown")).lower
    ibp = compute_bounds(graph, lo, hi, C, BoundOptions(method="ibp")).lower
    assert bool((crown <= truth + 1e-9).all()) and bool((ibp <= truth + 1e-9).all())
    assert bool(torch.isfinite(crown).all())
    assert float(crown.mean()) >= float(ibp.mean())


def test_matmul_of_vector_variables_is_rejected():
    model = _model([helper.make_node("Mul", ["X", "X"], ["a"]),
                    helper.make_node("MatMul", ["X", "a"], ["Y"])],
                   [_vi("X", [1, 5])], [_vi("Y", [1, 1])], [])
    with pytest.raises(Exception, match="MatMul"):
        load_onnx(model)
