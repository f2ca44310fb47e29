"""Bound methods (bounds/methods.py): exact bounds on hand-computed networks, and soundness.

(a) Tiny networks whose IBP / CROWN / alpha-CROWN bounds are derived by hand
    (derivations in the comments), including one sigmoid neuron whose CROWN
    bound follows from the chord/tangent construction of bounds/ops/activation.py.
(b) Random MLPs (Linear + Relu / Sigmoid / Tanh; several sizes and depths;
    float32 and float64) and small conv nets: outputs and intermediate values at
    100k sampled points lie within the bounds of every method; alpha-CROWN is
    never looser than CROWN; CROWN is no looser than IBP where theory says so.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from bounds.graph import Graph, Node, input_node
from bounds.methods import BoundOptions, compute_bounds, intermediate_bounds
from bounds.ops.activation import Relu, Sigmoid, Tanh
from bounds.ops.affine import AddVar, Conv, Linear, Reshape
from bounds.ops.softmax import Softmax
from bounds.traversal import backward_pass

F64 = torch.float64
METHODS = ("ibp", "crown", "alpha-crown")
ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh}



def two_sided(n: int, batch: int, dtype=F64) -> torch.Tensor:
    """C = [I; -I]: lower bounds of y and of -y (so upper = -lower of the second half)."""
    eye = torch.eye(n, dtype=dtype)
    return torch.cat([eye, -eye])[None].expand(batch, -1, -1)


def bounds_of(graph, lo, hi, method, **options):
    n = graph.output_node.size
    res = compute_bounds(graph, lo, hi, two_sided(n, lo.shape[0], lo.dtype),
                         BoundOptions(method=method, **options))
    return res.lower[:, :n], -res.lower[:, n:], res


def linear_net(layers, act=None, dtype=F64) -> Graph:
    """x -> Linear -> act -> Linear -> ... from [(W, b), ...] given as nested lists."""
    first = torch.tensor(layers[0][0], dtype=dtype)
    nodes = [input_node("x", (first.shape[1],))]
    prev = "x"
    for i, (w, b) in enumerate(layers):
        w = torch.tensor(w, dtype=dtype)
        b = None if b is None else torch.tensor(b, dtype=dtype)
        nodes.append(Node(f"l{i}", Linear(w, b), (prev,), (w.shape[0],)))
        prev = f"l{i}"
        if act is not None and i < len(layers) - 1:
            nodes.append(Node(f"a{i}", act(), (prev,), (w.shape[0],)))
            prev = f"a{i}"
    return Graph(tuple(nodes), ("x",), (prev,))


# --- (a) hand-computed networks -----------------------------------------------------------

def relu_pair_net() -> tuple[Graph, torch.Tensor, torch.Tensor]:
    """h = (x1 - x2, x1 + x2); r = relu(h); y = (r1 + r2, r1 - r2); x1 in [0, 2], x2 in [-1, 1]."""
    graph = linear_net([([[1, -1], [1, 1]], None), ([[1, 1], [1, -1]], None)], Relu)
    return graph, torch.tensor([[0.0, -1.0]], dtype=F64), torch.tensor([[2.0, 1.0]], dtype=F64)


def test_relu_pair_ibp_by_hand():
    # h1, h2 in [-1, 3]  ->  r1, r2 in [0, 3]  ->  y1 in [0, 6], y2 in [0 - 3, 3 - 0].
    graph, lo, hi = relu_pair_net()
    low, up, res = bounds_of(graph, lo, hi, "ibp")
    torch.testing.assert_close(low, torch.tensor([[0.0, -3.0]], dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(up, torch.tensor([[6.0, 3.0]], dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.bounds["l0"][0], torch.tensor([[-1.0, -1.0]], dtype=F64))
    torch.testing.assert_close(res.bounds["a0"][1], torch.tensor([[3.0, 3.0]], dtype=F64))


def test_relu_pair_crown_by_hand():
    # Both neurons cross on [-1, 3]: upper line = chord 0.75 h + 0.75; lower line slope 1
    # (u = 3 > -l = 1), i.e. r >= h.
    # y1 >= h1 + h2 = 2 x1 >= 0.            y1 <= 0.75 (h1 + h2) + 1.5 = 1.5 x1 + 1.5 <= 4.5.
    # y2 >= h1 - 0.75 h2 - 0.75 = 0.25 x1 - 1.75 x2 - 0.75 >= -2.5  (x1 = 0, x2 = 1).
    # y2 <= 0.75 h1 + 0.75 - h2 = -0.25 x1 - 1.75 x2 + 0.75 <= 2.5  (x1 = 0, x2 = -1).
    graph, lo, hi = relu_pair_net()
    low, up, _ = bounds_of(graph, lo, hi, "crown")
    torch.testing.assert_close(low, torch.tensor([[0.0, -2.5]], dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(up, torch.tensor([[4.5, 2.5]], dtype=F64), rtol=0, atol=1e-12)


def test_relu_pair_alpha_crown_by_hand():
    # With lower slope a for the relu of h1: y2 >= a (x1 - x2) - 0.75 (x1 + x2) - 0.75
    #   = (a - 0.75) x1 - (a + 0.75) x2 - 0.75, whose minimum over the box is
    #   -(a + 0.75) - 0.75 for a >= 0.75 and a - 3 for a <= 0.75: best -2.25 at a = 0.75.
    # By symmetry y2 <= 2.25.  y1's bounds use only upper lines / reach 0 already: unchanged.
    # (The true range of y2 is [-2, 2], so -2.25 is the relaxation's own optimum.)
    graph, lo, hi = relu_pair_net()
    low, up, res = bounds_of(graph, lo, hi, "alpha-crown", alpha_iterations=60, alpha_lr=0.2)
    assert res.method == "alpha-crown"
    torch.testing.assert_close(low[:, 0], torch.tensor([0.0], dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(up[:, 0], torch.tensor([4.5], dtype=F64), rtol=0, atol=1e-12)
    assert -2.25 - 0.03 <= float(low[0, 1]) <= -2.25 + 1e-12
    assert 2.25 - 1e-12 <= float(up[0, 1]) <= 2.25 + 0.03


def test_single_relu_crown_is_looser_than_ibp_by_hand():
    # y = relu(x) on [-1, 2]: IBP gives [0, 2].  CROWN's default lower line has slope 1
    # (u = 2 > -l = 1): y >= x >= -1; the upper chord 2/3 (x + 1) gives 2 at x = 2.  So even
    # one hidden neuron can make the default CROWN bound looser than IBP; alpha-CROWN
    # (slope 0) recovers 0.
    graph = Graph((input_node("x", (1,)), Node("y", Relu(), ("x",), (1,))), ("x",), ("y",))
    graph = Graph(graph.nodes + (Node("out", Linear(torch.eye(1, dtype=F64), None), ("y",),
                                      (1,)),), ("x",), ("out",))
    lo, hi = torch.tensor([[-1.0]], dtype=F64), torch.tensor([[2.0]], dtype=F64)
    ibp = bounds_of(graph, lo, hi, "ibp")
    crown = bounds_of(graph, lo, hi, "crown")
    alpha = bounds_of(graph, lo, hi, "alpha-crown", alpha_iterations=30, alpha_lr=0.2)
    assert (ibp[0].item(), ibp[1].item()) == (0.0, 2.0)
    assert crown[0].item() == pytest.approx(-1.0, abs=1e-12)
    assert crown[1].item() == pytest.approx(2.0, abs=1e-12)
    assert -1e-12 <= -alpha[0].item() <= 1e-3


def test_linear_net_crown_is_exact():
    # y = 2 x1 - 3 x2 + 1 on [-1, 1] x [0, 2]: the range is [-2 - 6 + 1, 2 + 0 + 1] = [-7, 3];
    # stacking a second linear layer (identity-ish) keeps IBP exact for one output only.
    graph = linear_net([([[1, 0], [0, 1]], [0.0, 0.0]), ([[2, -3]], [1.0])])
    lo, hi = torch.tensor([[-1.0, 0.0]], dtype=F64), torch.tensor([[1.0, 2.0]], dtype=F64)
    for method in METHODS:
        low, up, _ = bounds_of(graph, lo, hi, method)
        torch.testing.assert_close(low, torch.tensor([[-7.0]], dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(up, torch.tensor([[3.0]], dtype=F64), rtol=0, atol=1e-12)
    # A cancelling pair: y = (x1 + x2) - (x1 + x2) = 0; IBP sees [-6, 6], CROWN sees 0.
    graph = linear_net([([[1, 1], [1, 1]], None), ([[1, -1]], None)])
    # IBP: h1, h2 in [-1 + 0, 1 + 2] = [-1, 3], so y in [-1 - 3, 3 + 1] = [-4, 4].
    assert bounds_of(graph, lo, hi, "ibp")[0].item() == pytest.approx(-4.0)
    assert abs(bounds_of(graph, lo, hi, "crown")[0].item()) <= 1e-12


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def dsig(z: float) -> float:
    return sig(z) * sig(-z)


def tangent_limit(u: float) -> float:
    """d* <= 0 where the tangent of sigmoid at d* passes through (u, sigmoid(u)) (bisection)."""
    left, right = -60.0, 0.0
    for _ in range(200):
        mid = (left + right) / 2
        if dsig(mid) * (u - mid) + sig(mid) - sig(u) < 0:
            left = mid
        else:
            right = mid
    return left


def tangent_at(d: float, z: float) -> float:
    return sig(d) + dsig(d) * (z - d)


def sigmoid_neuron(xl: float, xu: float, head: bool = False):
    """y = sigmoid(2 x + 0.5) on [xl, xu]: z = 2x + 0.5 in [2 xl + 0.5, 2 xu + 0.5] exactly.

    With ``head`` the output is ``1 * y + 0`` (a Linear after the sigmoid)."""
    nodes = [input_node("x", (1,)),
             Node("z", Linear(torch.tensor([[2.0]], dtype=F64), torch.tensor([0.5], dtype=F64)),
                  ("x",), (1,)),
             Node("y", Sigmoid(), ("z",), (1,))]
    if head:
        nodes.append(Node("out", Linear(torch.tensor([[1.0]], dtype=F64), None), ("y",), (1,)))
    graph = Graph(tuple(nodes), ("x",), (nodes[-1].name,))
    lo, hi = torch.tensor([[xl]], dtype=F64), torch.tensor([[xu]], dtype=F64)
    return graph, lo, hi, 2 * xl + 0.5, 2 * xu + 0.5


def test_sigmoid_neuron_convex_region():
    # z in [-5.5, -1.5] (convex): lower line = tangent at the midpoint m = -3.5, evaluated at
    # zl (slope >= 0); upper line = chord (mirror of the concave case), equal to sigmoid(zu)
    # at zu.  Both up to a rounding margin of ~1e-15.
    graph, lo, hi, zl, zu = sigmoid_neuron(-3.0, -1.0)
    low, up, _ = bounds_of(graph, lo, hi, "crown")
    assert low.item() == pytest.approx(tangent_at((zl + zu) / 2, zl), abs=1e-12)
    assert up.item() == pytest.approx(sig(zu), abs=1e-12)
    ibp_low, ibp_up, _ = bounds_of(graph, lo, hi, "ibp")
    assert (ibp_low.item(), ibp_up.item()) == pytest.approx((sig(zl), sig(zu)), abs=1e-15)


def test_sigmoid_neuron_concave_region():
    # z in [0.5, 4.5] (concave): lower line = chord (sigmoid(zl) at zl); upper line = tangent
    # at the midpoint 2.5 evaluated at zu.
    graph, lo, hi, zl, zu = sigmoid_neuron(0.0, 2.0)
    low, up, _ = bounds_of(graph, lo, hi, "crown")
    assert low.item() == pytest.approx(sig(zl), abs=1e-12)
    assert up.item() == pytest.approx(tangent_at((zl + zu) / 2, zu), abs=1e-12)


def test_sigmoid_neuron_crossing_region():
    # z in [-2.5, 4.5]: the tangent at zl passes below (zu, sigmoid(zu)), so the lower line
    # is the tangent at d* (tangent through (zu, sigmoid(zu))), evaluated at zl.  The upper
    # line mirrors this: 1 - tangent at d' = d*(-zl) of the reflected interval, at -zu.
    # The engine reads d* from a table on a grid of u with step 0.001, taking the grid point
    # in (u, u + 0.001]: d* decreases in u and the tangent's value at zl decreases in d
    # (its derivative is sigmoid''(d) (zl - d) <= 0), so the engine's bound lies between the
    # exact construction at u and the one at u + 0.001 (and likewise, mirrored, above).
    graph, lo, hi, zl, zu = sigmoid_neuron(-1.5, 2.0)
    assert tangent_at(zl, zu) < sig(zu)  # no chord
    low, up, _ = bounds_of(graph, lo, hi, "crown")
    step = 0.001
    low_range = (tangent_at(tangent_limit(zu), zl), tangent_at(tangent_limit(zu + step), zl))
    up_range = (1 - tangent_at(tangent_limit(-zl + step), -zu),
                1 - tangent_at(tangent_limit(-zl), -zu))
    assert low_range[0] - 1e-12 <= low.item() <= low_range[1] + 1e-12
    assert up_range[0] - 1e-12 <= up.item() <= up_range[1] + 1e-12
    assert low.item() <= sig(zl) and up.item() >= sig(zu)


def test_sigmoid_neuron_crossing_with_chord():
    # z in [-0.3, 5.5]: the tangent at zl already passes above (zu, sigmoid(zu)), so the
    # chord is the lower line: the bound at zl is sigmoid(zl) itself.
    graph, lo, hi, zl, zu = sigmoid_neuron(-0.4, 2.5)
    assert tangent_at(zl, zu) >= sig(zu)
    low, _, _ = bounds_of(graph, lo, hi, "crown")
    assert low.item() == pytest.approx(sig(zl), abs=1e-12)


def test_sigmoid_neuron_alpha_crown_reaches_the_exact_bound():
    # For one increasing neuron the best lower line is the tangent at zl (fraction 0), whose
    # value at zl is sigmoid(zl): alpha-CROWN must close CROWN's gap, and never pass the truth.
    graph, lo, hi, zl, zu = sigmoid_neuron(-1.5, 2.0, head=True)
    crown_low, _, _ = bounds_of(graph, lo, hi, "crown")
    low, up, res = bounds_of(graph, lo, hi, "alpha-crown", alpha_iterations=50, alpha_lr=0.2)
    assert res.method == "alpha-crown" and res.iterations > 0
    assert crown_low.item() < sig(zl) - 1e-3  # there is a gap to close
    assert sig(zl) - 1e-6 <= low.item() <= sig(zl)
    assert sig(zu) <= up.item() <= sig(zu) + 1e-6


def test_alpha_crown_optimises_a_nonlinear_output_node():
    graph, lo, hi, zl, _ = sigmoid_neuron(-1.5, 2.0, head=False)
    low, _, _ = bounds_of(graph, lo, hi, "alpha-crown", alpha_iterations=50, alpha_lr=0.2)
    assert sig(zl) - 1e-6 <= low.item() <= sig(zl)


def test_unknown_method_is_rejected():
    graph, lo, hi = relu_pair_net()
    with pytest.raises(ValueError, match="unknown bound method"):
        compute_bounds(graph, lo, hi, two_sided(2, 1), BoundOptions(method="deeppoly"))


# --- (b) random networks: soundness ---------------------------------------------------------

MLP_SIZES = ((2, 6, 3), (3, 12, 2), (4, 8, 8, 2), (3, 6, 6, 6, 2), (5, 16, 8, 4))


def random_mlp(sizes, act, dtype, seed: int) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    nodes = [input_node("x", (sizes[0],))]
    prev = "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        weight = torch.randn(b, a, generator=gen, dtype=F64) * 3 / math.sqrt(a)
        bias = torch.randn(b, generator=gen, dtype=F64)
        nodes.append(Node(f"l{i}", Linear(weight, bias).to("cpu", dtype), (prev,), (b,)))
        prev = f"l{i}"
        if i < len(sizes) - 2:
            nodes.append(Node(f"a{i}", act(), (prev,), (b,)))
            prev = f"a{i}"
    return Graph(tuple(nodes), ("x",), (prev,))


def random_box(shape, dtype, seed: int, batch: int = 2, radius: float = 0.8):
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn((batch, *shape), generator=gen, dtype=F64)
    r = torch.rand((batch, *shape), generator=gen, dtype=F64) * radius
    return (centre - r).to(dtype), (centre + r).to(dtype)


def sample_points(lo, hi, total: int, seed: int) -> torch.Tensor:
    """[B, n, *shape] float64 points, n = total // B: uniform plus vertices."""
    gen = torch.Generator().manual_seed(seed)
    B, shape = lo.shape[0], lo.shape[1:]
    n = total // B
    u = torch.rand((B, n, *shape), generator=gen, dtype=F64)
    u[:, : n // 10] = u[:, : n // 10].round()
    lo, hi = lo.double().unsqueeze(1), hi.double().unsqueeze(1)
    return lo + u * (hi - lo)


def assert_contains(lo, hi, extremes, dtype, what: str) -> None:
    """lo, hi [B, ...] contain the sampled values, given as (min, max, max |v|) over samples.

    Bounds in float32 are not outward-rounded through affine layers: allow rounding there.
    """
    vmin, vmax, vabs = extremes
    tol = (1e-5 if dtype == torch.float32 else 1e-10) * (1 + vabs)
    below = float((lo.double() - vmin - tol).max())
    above = float((vmax - hi.double() - tol).max())
    assert below <= 0 and above <= 0, f"{what}: outside by {max(below, above):.3g}"


def check_soundness(graph: Graph, lo, hi, seed: int, samples: int = 100_000,
                    **options) -> dict:
    """Every method's output and intermediate bounds contain the values at sampled points."""
    dtype = lo.dtype
    x = sample_points(lo, hi, samples, seed)
    B, n = x.shape[:2]
    values = graph.to("cpu", F64).forward_all(x.reshape(B * n, *x.shape[2:]))
    extremes = {}
    for name, v in values.items():
        v = v.reshape(B, n, *v.shape[1:])
        extremes[name] = (v.amin(1), v.amax(1), v.abs().amax(1))
    out = graph.outputs[0]
    results = {}
    for method in METHODS:
        low, up, res = bounds_of(graph, lo, hi, method, **options)
        assert low.dtype == dtype and bool(torch.isfinite(low).all() & torch.isfinite(up).all())
        flat = tuple(e.reshape(B, -1) for e in extremes[out])
        assert_contains(low, up, flat, dtype, f"{method} output")
        for name, (blo, bhi) in res.bounds.items():
            assert blo.shape == (B, *graph[name].shape), name
            assert_contains(blo, bhi, extremes[name], dtype, f"{method} bounds of {name}")
        results[method] = (low, up)
    return results


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("sizes", MLP_SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_random_mlp_is_sound(act, sizes, dtype, record_property):
    seed = 17 * len(sizes) + sizes[1]
    graph = random_mlp(sizes, ACTIVATIONS[act], dtype, seed)
    lo, hi = random_box((sizes[0],), dtype, seed)
    res = check_soundness(graph, lo, hi, seed, alpha_iterations=15)
    (ibp_l, ibp_u), (cr_l, cr_u), (al_l, al_u) = res["ibp"], res["crown"], res["alpha-crown"]
    # alpha-CROWN starts from CROWN and keeps the best iterate: never looser.
    slack = 1e-4 if dtype == torch.float32 else 1e-6
    assert bool((al_l >= cr_l - slack).all()) and bool((al_u <= cr_u + slack).all())
    # CROWN vs IBP is not ordered in general (CROWN's default lines are not tight at the
    # interval ends); only recorded here.  See test_crown_with_end_touching_lines_beats_ibp.
    record_property("crown_minus_ibp_lower", float((cr_l - ibp_l).min()))
    record_property("ibp_minus_crown_upper", float((ibp_u - cr_u).min()))


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_random_mlp_is_sound_with_ibp_intermediates_and_chunking(act):
    graph = random_mlp((3, 10, 10, 2), ACTIVATIONS[act], F64, seed=5)
    lo, hi = random_box((3,), F64, seed=5)
    check_soundness(graph, lo, hi, seed=6, intermediate="ibp", alpha_iterations=5)
    check_soundness(graph, lo, hi, seed=7, max_batch_neurons=3, alpha_iterations=5)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_chunked_intermediate_bounds_match_unchunked(act):
    graph = random_mlp((3, 10, 10, 2), ACTIVATIONS[act], F64, seed=8)
    lo, hi = random_box((3,), F64, seed=8)
    whole = bounds_of(graph, lo, hi, "crown")
    chunked = bounds_of(graph, lo, hi, "crown", max_batch_neurons=3)
    torch.testing.assert_close(whole[0], chunked[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole[1], chunked[1], rtol=1e-12, atol=1e-12)
    for name in whole[2].bounds:
        torch.testing.assert_close(whole[2].bounds[name], chunked[2].bounds[name], rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_random_spec_rows_are_sound(act):
    """Arbitrary rows of C (not only +-e_i): every bound is below min C y over the samples."""
    graph = random_mlp((4, 8, 8, 3), ACTIVATIONS[act], F64, seed=9)
    lo, hi = random_box((4,), F64, seed=9)
    C = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(9), dtype=F64)
    x = sample_points(lo, hi, 50_000, seed=10)
    y = graph.forward(x.reshape(-1, 4)).reshape(2, -1, 3)
    true_min = torch.einsum("bsk,bnk->bns", C, y).min(1).values
    previous = None
    for method in METHODS:
        res = compute_bounds(graph, lo, hi, C, BoundOptions(method=method, alpha_iterations=10))
        assert res.lower.shape == (2, 5)
        assert bool((res.lower <= true_min + 1e-10).all()), method
        if method == "alpha-crown":
            assert bool((res.lower >= previous - 1e-6).all())
        previous = res.lower


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("seed", range(4))
def test_crown_with_end_touching_lines_beats_ibp(act, seed):
    """One hidden layer: if every lower line meets f at l and every upper line meets f at u
    (alpha fractions 0: relu lower slope 0; tangents at the interval ends), then CROWN's
    bound min_x sum_j c_j line_j(z_j(x)) >= sum_j min_z c_j line_j(z) = IBP's bound.
    (The default CROWN lines do not touch f at the ends, and CROWN can then be looser than
    IBP even with one hidden layer: that is recorded, not asserted, in the test above.)"""
    graph = random_mlp((3, 12, 4), ACTIVATIONS[act], F64, seed=100 + seed)
    lo, hi = random_box((3,), F64, seed=100 + seed, radius=1.5)
    C = two_sided(4, 2)
    bounds = intermediate_bounds(graph, lo, hi, "crown")
    z_lo = bounds["l0"][0]
    zeros = {name: torch.zeros_like(z_lo).unsqueeze(1) for name in graph["a0"].op.alpha_names}
    crown = backward_pass(graph, "l1", C, bounds, {"a0": zeros})
    ibp = compute_bounds(graph, lo, hi, C, BoundOptions(method="ibp")).lower
    assert bool((crown >= ibp - 1e-9).all())


def conv_net(act, seed: int, dtype=F64) -> Graph:
    """Conv(2->3, 3x3, stride 1, pads 1) -> act -> Conv(3->2, 2x2, stride 2) -> act
    -> Reshape -> Linear(..., 3)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(shape, generator=gen, dtype=F64) * scale).to(dtype)

    nodes = [input_node("x", (2, 5, 5)),
             Node("c1", Conv(rand(3, 2, 3, 3, scale=0.5), rand(3), [1, 1], [1, 1, 1, 1], [1, 1],
                             1, (2, 5, 5)), ("x",), (3, 5, 5)),
             Node("a1", act(), ("c1",), (3, 5, 5)),
             Node("c2", Conv(rand(2, 3, 2, 2, scale=0.5), None, [2, 2], [0, 0, 1, 1], [1, 1], 1,
                             (3, 5, 5)), ("a1",), (2, 3, 3)),
             Node("a2", act(), ("c2",), (2, 3, 3)),
             Node("flat", Reshape((2, 3, 3), (18,)), ("a2",), (18,)),
             Node("out", Linear(rand(3, 18, scale=0.5), rand(3)), ("flat",), (3,))]
    return Graph(tuple(nodes), ("x",), ("out",))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_conv_net_is_sound(act, dtype):
    graph = conv_net(ACTIVATIONS[act], seed=3, dtype=dtype)
    lo, hi = random_box((2, 5, 5), dtype, seed=4, radius=0.3)
    res = check_soundness(graph, lo, hi, seed=5, samples=20_000, alpha_iterations=10)
    slack = 1e-4 if dtype == torch.float32 else 1e-6
    assert bool((res["alpha-crown"][0] >= res["crown"][0] - slack).all())


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_mlp_with_softmax_output_is_sound(dtype):
    """Linear -> Tanh -> Linear -> Softmax: output and intermediate bounds of every method."""
    graph = random_mlp((3, 8, 4), Tanh, dtype, seed=21)
    head = Node("sm", Softmax(axis=1), (graph.outputs[0],), (4,))
    graph = Graph(graph.nodes + (head,), ("x",), ("sm",))
    lo, hi = random_box((3,), dtype, seed=21, radius=0.5)
    res = check_soundness(graph, lo, hi, seed=22, alpha_iterations=10)
    ibp_low, ibp_up = res["ibp"]  # IBP of softmax stays in [0, 1]; linear bounds need not
    assert bool((ibp_low >= 0).all() and (ibp_up <= 1).all())
    slack = 1e-4 if dtype == torch.float32 else 1e-6
    assert bool((res["alpha-crown"][0] >= res["crown"][0] - slack).all())


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_residual_net_is_sound(act):
    """x -> l0 -> act -> l1 -> (+ l0) -> act -> l2: a node with two consumers and AddVar."""
    gen = torch.Generator().manual_seed(31)

    def lin(n_out, n_in):
        return Linear(torch.randn(n_out, n_in, generator=gen, dtype=F64),
                      torch.randn(n_out, generator=gen, dtype=F64))

    cls = ACTIVATIONS[act]
    nodes = (input_node("x", (3,)),
             Node("l0", lin(6, 3), ("x",), (6,)),
             Node("a0", cls(), ("l0",), (6,)),
             Node("l1", lin(6, 6), ("a0",), (6,)),
             Node("sum", AddVar(1.0, [(6,), (6,)]), ("l1", "l0"), (6,)),
             Node("a1", cls(), ("sum",), (6,)),
             Node("l2", lin(2, 6), ("a1",), (2,)))
    graph = Graph(nodes, ("x",), ("l2",))
    lo, hi = random_box((3,), F64, seed=32, radius=0.6)
    res = check_soundness(graph, lo, hi, seed=33, alpha_iterations=10)
    assert bool((res["alpha-crown"][0] >= res["crown"][0] - 1e-6).all())


@pytest.mark.parametrize("act", ("sigmoid", "tanh"))
def test_layerwise_intermediate_bounds_are_tighter_and_sound(act):
    """alpha-CROWN tightens each pre-activation with its own alphas, layer by layer:
    never looser than CROWN's intermediate bounds, strictly tighter somewhere on a
    deep net, and still containing every sampled value (also chunked)."""
    graph = random_mlp((4, 12, 12, 12, 12, 3), ACTIVATIONS[act], F64, seed=11)
    lo, hi = random_box((4,), F64, seed=11, radius=1.5)
    _, _, crown = bounds_of(graph, lo, hi, "crown")
    _, _, alpha = bounds_of(graph, lo, hi, "alpha-crown", alpha_iterations=5,
                            intermediate_iterations=10)
    gain = 0.0
    for name, (clo, chi) in crown.bounds.items():
        alo, ahi = alpha.bounds[name]
        assert bool((alo >= clo - 1e-9).all()) and bool((ahi <= chi + 1e-9).all()), name
        gain = max(gain, float(((chi - clo) - (ahi - alo)).max()))
    assert gain > 1e-3
    check_soundness(graph, lo, hi, seed=12, samples=50_000, alpha_iterations=5,
                    intermediate_iterations=10)
    check_soundness(graph, lo, hi, seed=13, samples=50_000, alpha_iterations=5,
                    intermediate_iterations=5, max_batch_neurons=5)
