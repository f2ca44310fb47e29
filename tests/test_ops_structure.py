"""Structure and plumbing ops (bounds/ops/structure.py, bounds/ops/pooling.py) and their
ONNX converters (bounds/onnx_ops_structure.py).

- affine ops: ``backward`` is the exact vector-Jacobian product (equal to autograd,
  and ``A·y(x) = sum_i A_i·x_i + bias`` at random points), IBP contains sampled
  outputs and is exact on a point;
- MaxPool: the linear bounds of ``backward`` (default and optimisable) hold at
  sampled points of random, wide, tiny, degenerate and tail boxes, float32 and
  float64; IBP is exact; CROWN/alpha-CROWN through it are sound;
- converters: one small ONNX model per op type and variant matches onnxruntime,
  and CROWN bounds on it contain sampled outputs; batch-axis operations are
  rejected; real benchmark models load and match onnxruntime.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bounds.methods import BoundOptions, compute_bounds
from bounds.onnx_import import (
    UnsupportedModelError,
    compare_with_onnxruntime,
    load_onnx,
    read_model,
)
from bounds.ops.pooling import AveragePool, MaxPool, pool_windows
from bounds.ops.structure import Concat, ConvTranspose, IndexMap, ReduceSum, Where

F64 = torch.float64
BATCH, SPECS = 3, 4
BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"



def rnd(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def flat_dot(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (A * x.unsqueeze(1)).reshape(A.shape[0], A.shape[1], -1).sum(-1)


# --- op level: affine ops -------------------------------------------------------------------

def _index_map(in_shape, fn, fill=None):
    n = int(np.prod(in_shape))
    index = fn(np.arange(n).reshape(in_shape))
    return IndexMap(torch.from_numpy(np.ascontiguousarray(index)), in_shape, "test",
                    None if fill is None else torch.tensor(fill, dtype=F64)), [in_shape]


def _pad_index(in_shape, pads):
    n = int(np.prod(in_shape))
    return np.pad(np.arange(n).reshape(in_shape), pads, constant_values=-1)


def _pool(cls, in_shape, kernel, strides, pads, dilations, ceil_mode=False, include=False):
    index, in_pad = pool_windows(in_shape, kernel, strides, pads, dilations, ceil_mode)
    if cls is MaxPool:
        return MaxPool(torch.from_numpy(index), in_shape), [in_shape]
    divisor = (in_pad if include else index[0] >= 0).sum(-1).astype(np.float64)
    return AveragePool(torch.from_numpy(index), torch.from_numpy(divisor), in_shape), [in_shape]


def _convt(in_shape, w_shape, stride, pads, out_pad, dilation, groups, bias=True):
    return ConvTranspose(rnd(*w_shape, seed=1), rnd(w_shape[1] * groups, seed=2) if bias else None,
                         stride, pads, out_pad, dilation, groups, in_shape), [in_shape]


def _concat(axis, parts):
    """parts: shapes (variables) or tensors (constants)."""
    segments, arrays, start = [], [], 0
    shapes = []
    for p in parts:
        is_var = not isinstance(p, torch.Tensor)
        arr = torch.zeros(p) if is_var else p
        if is_var:
            shapes.append(p)
        segments.append((start, arr.shape[axis - 1], is_var))
        start += arr.shape[axis - 1]
        arrays.append(arr.to(F64))
    return Concat(axis, segments, torch.cat(arrays, axis - 1)), shapes


def _mask(*shape, seed=3):
    return (rnd(*shape, seed=seed) > 0).to(F64)


AFFINE_CASES = {
    "index_slice_steps": lambda: _index_map((4, 6), lambda a: a[1:4, ::-2]),
    "index_gather_repeats": lambda: _index_map((5,), lambda a: a[[2, 0, 2, 4]]),
    "index_expand": lambda: _index_map((3, 1), lambda a: np.broadcast_to(a, (2, 3, 4))),
    "index_pad_fill": lambda: _index_map((2, 3), lambda a: _pad_index((2, 3), [(1, 0), (2, 1)]),
                                         fill=0.75),
    "index_upsample": lambda: _index_map((2, 2, 3), lambda a: a.repeat(2, 1).repeat(3, 2)),
    "reduce_sum_keep": lambda: (ReduceSum([2], True, (3, 4)), [(3, 4)]),
    "reduce_sum_drop_two": lambda: (ReduceSum([1, 3], False, (3, 4, 2)), [(3, 4, 2)]),
    "reduce_mean": lambda: (ReduceSum([1, 2], True, (3, 4), scale=1 / 12), [(3, 4)]),
    "concat_vars_and_const": lambda: _concat(1, [(2, 3), rnd(1, 3, seed=4), (4, 3)]),
    "concat_last_axis": lambda: _concat(2, [rnd(2, 2, seed=5), (2, 3)]),
    "concat_same_var_twice": lambda: _concat(1, [(2,), (2,)]),
    "where_var_const": lambda: (Where(_mask(3, 4), [0], rnd(4, seed=6), [(3, 4)], (3, 4)),
                                [(3, 4)]),
    "where_const_var_broadcast": lambda: (Where(_mask(3, 4), [1], rnd(3, 4, seed=6), [(1, 4)],
                                                (3, 4)), [(1, 4)]),
    "where_two_vars": lambda: (Where(_mask(3, 1), [0, 1], None, [(3, 4), (4,)], (3, 4)),
                               [(3, 4), (4,)]),
    "convt2d": lambda: _convt((2, 3, 4), (2, 3, 3, 3), [1, 1], [0, 0, 0, 0], [0, 0], [1, 1], 1),
    "convt2d_stride_pads_outpad_groups": lambda: _convt((4, 3, 3), (4, 2, 3, 2), [2, 3],
                                                        [1, 0, 0, 2], [1, 2], [1, 1], 2),
    "convt2d_dilation": lambda: _convt((2, 4, 3), (2, 1, 2, 3), [2, 1], [0, 1, 1, 0], [0, 0],
                                       [2, 2], 1, bias=False),
    "convt1d": lambda: _convt((3, 5), (3, 2, 4), [3], [1, 2], [2], [1], 1),
    "avgpool": lambda: _pool(AveragePool, (2, 5, 6), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1]),
    "avgpool_pads_ceil": lambda: _pool(AveragePool, (2, 5, 6), [3, 2], [2, 2], [1, 0, 1, 1],
                                       [1, 1], ceil_mode=True),
    "avgpool_include_pad": lambda: _pool(AveragePool, (1, 6, 5), [3, 3], [2, 1], [1, 1, 1, 1],
                                         [1, 1], include=True),
    "avgpool_1d_dilation": lambda: _pool(AveragePool, (3, 9), [3], [2], [1, 0], [2]),
}


def inputs(shapes, seed: int, requires_grad: bool = False) -> list[torch.Tensor]:
    return [rnd(BATCH, *s, seed=seed + i).requires_grad_(requires_grad)
            for i, s in enumerate(shapes)]


@pytest.mark.parametrize("name", sorted(AFFINE_CASES))
def test_backward_is_the_exact_vjp(name):
    op, shapes = AFFINE_CASES[name]()
    out_shape = op.forward(*inputs(shapes, seed=5)).shape[1:]
    A = rnd(BATCH, SPECS, *out_shape, seed=11)
    A_ins, bias = op.backward(A, [None] * len(shapes))
    assert len(A_ins) == len(shapes) and bias.shape == (BATCH, SPECS)
    xs = inputs(shapes, seed=20, requires_grad=True)
    y = op.forward(*xs)
    for s in range(SPECS):
        grads = torch.autograd.grad(flat_dot(A[:, s:s + 1], y).sum(), xs, retain_graph=True)
        for A_in, g, shape in zip(A_ins, grads, shapes):
            assert A_in.shape == (BATCH, SPECS, *shape)
            torch.testing.assert_close(A_in[:, s], g, rtol=1e-12, atol=1e-12)
    for seed in (30, 40):
        xs = inputs(shapes, seed=seed)
        lhs = flat_dot(A, op.forward(*xs))
        rhs = sum(flat_dot(A_in, x) for A_in, x in zip(A_ins, xs)) + bias
        torch.testing.assert_close(lhs, rhs, rtol=1e-11, atol=1e-11)


def random_box(shape, seed: int, scale: float = 1.0):
    centre = rnd(BATCH, *shape, seed=seed) * scale
    radius = rnd(BATCH, *shape, seed=seed + 1).abs() * scale
    radius[0] = 0.0  # a degenerate sample next to proper boxes
    return centre - radius, centre + radius


def sample_box(lo, hi, n: int, seed: int) -> torch.Tensor:
    """[n, B, *shape]: half random vertices, half uniform points."""
    u = torch.rand((n, *lo.shape), generator=torch.Generator().manual_seed(seed), dtype=lo.dtype)
    u[: n // 2] = u[: n // 2].round()
    return lo + u * (hi - lo)


def _batched_forward(op, points):
    n = points[0].shape[0]
    y = op.forward(*(p.reshape(n * p.shape[1], *p.shape[2:]) for p in points))
    return y.reshape(n, -1, *y.shape[1:])


@pytest.mark.parametrize("name", sorted(AFFINE_CASES))
def test_interval_contains_forward_and_is_exact_on_points(name):
    op, shapes = AFFINE_CASES[name]()
    boxes = [random_box(s, seed=50 + 7 * i) for i, s in enumerate(shapes)]
    lo_out, hi_out = op.interval(*boxes)
    points = [sample_box(lo, hi, 400, seed=60 + i) for i, (lo, hi) in enumerate(boxes)]
    y = _batched_forward(op, points)
    tol = 1e-12 * (1 + y.abs())
    assert lo_out.shape == y.shape[1:]
    assert bool((y >= lo_out - tol).all()) and bool((y <= hi_out + tol).all())
    xs = inputs(shapes, seed=90)
    lo_p, hi_p = op.interval(*((x, x) for x in xs))
    y = op.forward(*xs)
    torch.testing.assert_close(lo_p, y, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(hi_p, y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ["index_pad_fill", "concat_vars_and_const", "where_var_const",
                                  "convt2d_stride_pads_outpad_groups", "avgpool_pads_ceil"])
def test_float32_copy_matches(name):
    op, shapes = AFFINE_CASES[name]()
    xs = inputs(shapes, seed=5)
    out_shape = op.forward(*xs).shape[1:]
    A = rnd(BATCH, SPECS, *out_shape, seed=11)
    A64, b64 = op.backward(A, [None] * len(shapes))
    op32 = op.to("cpu", torch.float32)
    torch.testing.assert_close(op32.forward(*(x.float() for x in xs)).double(), op.forward(*xs),
                               rtol=1e-5, atol=1e-5)
    A32, b32 = op32.backward(A.float(), [None] * len(shapes))
    assert b32.dtype == torch.float32
    for a32, a64 in zip(A32, A64):
        torch.testing.assert_close(a32.double(), a64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b32.double(), b64, rtol=1e-5, atol=1e-5)


def test_conv_transpose_matches_torch_module():
    conv = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0),
                                    output_padding=(1, 2), groups=2, dilation=1).double()
    op = ConvTranspose(conv.weight.detach(), conv.bias.detach(), [2, 3], [1, 0, 1, 0], [1, 2],
                       [1, 1], 2, (4, 3, 3))
    x = rnd(2, 4, 3, 3)
    torch.testing.assert_close(op.forward(x), conv(x).detach())
    assert op.out_shape == tuple(conv(x).shape[1:])


# --- op level: MaxPool (nonlinear) ------------------------------------------------------------

MAXPOOL_CASES = {
    "2x2_stride2": lambda: _pool(MaxPool, (2, 4, 4), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1]),
    "3x3_overlap_pads": lambda: _pool(MaxPool, (2, 5, 5), [3, 3], [2, 2], [1, 1, 1, 1], [1, 1]),
    "ceil_dilation": lambda: _pool(MaxPool, (1, 6, 7), [2, 3], [2, 2], [0, 1, 0, 0], [2, 1],
                                   ceil_mode=True),
    "1d": lambda: _pool(MaxPool, (3, 8), [3], [2], [1, 1], [1]),
    "global": lambda: _pool(MaxPool, (2, 3, 3), [3, 3], [1, 1], [0, 0, 0, 0], [1, 1]),
    "single_element_windows": lambda: _pool(MaxPool, (2, 3, 3), [1, 1], [1, 1], [0, 0, 0, 0],
                                            [1, 1]),
}

BOX_KINDS = {"random": 1.0, "wide": 50.0, "tiny": 1e-6}


def _maxpool_check(op, shape, lo, hi, params, dtype):
    """Lower bound of A·y from backward holds at sampled points (and the mirrored upper)."""
    lo, hi = lo.to(dtype), hi.to(dtype)
    out_shape = op.forward(lo).shape[1:]
    A = rnd(BATCH, SPECS, *out_shape, seed=13).to(dtype)
    A = torch.cat([A, torch.eye(out_shape.numel(), dtype=dtype).reshape(1, -1, *out_shape)
                   .expand(BATCH, -1, *out_shape)], 1)
    A = torch.cat([A, -A], 1)
    if params is not None:
        params = {k: v.unsqueeze(1).expand(v.shape[0], A.shape[1], *v.shape[1:]).to(dtype)
                  for k, v in params.items()}
    (A_in,), bias = op.backward(A, [(lo, hi)], params)
    x = sample_box(lo, hi, 300, seed=17)
    y = _batched_forward(op, [x])
    value = (A.unsqueeze(0) * y.unsqueeze(2)).reshape(300, BATCH, A.shape[1], -1).sum(-1)
    bound = (A_in.unsqueeze(0) * x.unsqueeze(2)).reshape(300, BATCH, A.shape[1], -1).sum(-1)
    bound = bound + bias
    tol = 50 * torch.finfo(dtype).eps * (1 + value.abs() + bound.abs())
    assert bool((bound <= value + tol).all()), float((bound - value).max())
    ilo, ihi = op.interval((lo, hi))
    eps = 4 * torch.finfo(dtype).eps * (1 + float(torch.maximum(lo.abs(), hi.abs()).max()))
    # (a sampled lo + 1 * (hi - lo) may round past hi)
    assert bool((y >= ilo - eps).all()) and bool((y <= ihi + eps).all())
    torch.testing.assert_close(op.interval((x[0], x[0]))[0], y[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", sorted(BOX_KINDS))
@pytest.mark.parametrize("name", sorted(MAXPOOL_CASES))
def test_maxpool_relaxation_is_sound(name, kind, dtype):
    op, (shape,) = MAXPOOL_CASES[name]()
    op = op.to("cpu", dtype)
    lo, hi = random_box(shape, seed=7, scale=BOX_KINDS[kind])
    _maxpool_check(op, shape, lo, hi, None, dtype)


@pytest.mark.parametrize("name", sorted(MAXPOOL_CASES))
def test_maxpool_sound_in_the_tails_and_with_ties(name):
    op, (shape,) = MAXPOOL_CASES[name]()
    lo, hi = random_box(shape, seed=8)
    _maxpool_check(op, shape, lo - 300, hi - 300, None, F64)
    tied = torch.full_like(lo, 0.5), torch.full_like(hi, 1.5)  # every window undecided, ties
    _maxpool_check(op, shape, *tied, None, F64)


@pytest.mark.parametrize("name", sorted(MAXPOOL_CASES))
def test_maxpool_optimisable_lower_line_is_sound(name):
    op, (shape,) = MAXPOOL_CASES[name]()
    lo, hi = random_box(shape, seed=9)
    init = op.init_alpha([(lo, hi)])
    assert init["lower"].shape == (BATCH, *op.index.shape)
    for seed in (1, 2):
        alpha = {"lower": torch.rand(init["lower"].shape,
                                     generator=torch.Generator().manual_seed(seed), dtype=F64)}
        _maxpool_check(op, shape, lo, hi, alpha, F64)
    _maxpool_check(op, shape, lo, hi, {"lower": torch.zeros_like(init["lower"])}, F64)


def test_maxpool_decided_window_is_exact():
    op, _ = _pool(MaxPool, (1, 2, 2), [2, 2], [1, 1], [0, 0, 0, 0], [1, 1])
    lo = torch.tensor([[[[5.0, 0.0], [1.0, -1.0]]]], dtype=F64)
    hi = lo + torch.tensor([[[[1.0, 2.0], [1.0, 3.0]]]], dtype=F64)
    lower_w, upper_w, upper_b = op.relax(lo, hi)
    assert torch.equal(lower_w, upper_w) and float(upper_b.abs().max()) == 0.0


# --- converters: small ONNX models against onnxruntime ---------------------------------------

def make_model(nodes, in_shape, opset=13, inits=None, output="y", extra_inputs=()):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
               for n, s in extra_inputs]
    graph = helper.make_graph(
        nodes, "test", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    return model


def node(op, inputs, outputs=("y",), **kw):
    return helper.make_node(op, list(inputs), list(outputs), **kw)


def i64(*v):
    return np.array(v, dtype=np.int64)


def f32(a):
    return np.asarray(a, dtype=np.float32)


_RNG = np.random.default_rng(0)
W = {k: f32(_RNG.standard_normal(s)) for k, s in {
    "ct": (3, 2, 3, 3), "ctg": (4, 1, 2, 3), "ct1": (2, 3, 4), "b2": (2,), "b4": (4,),
    "c34": (1, 3, 4), "c4": (4,), "c234": (1, 2, 3, 4)}.items()}

def _rnn_weights(kind: str, dirs: int, n_in: int, hidden: int, seed: int) -> dict:
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    rng = np.random.default_rng(seed)
    return {"W": f32(rng.standard_normal((dirs, gates * hidden, n_in)) * 0.6),
            "R": f32(rng.standard_normal((dirs, gates * hidden, hidden)) * 0.6),
            "B": f32(rng.standard_normal((dirs, 2 * gates * hidden)) * 0.3),
            "P": f32(rng.standard_normal((dirs, 3 * hidden)) * 0.3),
            "h0": f32(rng.standard_normal((dirs, 1, hidden)) * 0.5),
            "c0": f32(rng.standard_normal((dirs, 1, hidden)) * 0.5),
            "ln_s": f32(rng.standard_normal((2, 3))), "ln_b": f32(rng.standard_normal(3))}


CONVERTER_CASES = {
    "reduce_sum_attr_axes": ([node("ReduceSum", ["x"], axes=[2], keepdims=0)], (1, 3, 4), 11, {}),
    "reduce_sum_input_axes": ([node("ReduceSum", ["x", "ax"], keepdims=1)], (1, 3, 4), 13,
                              {"ax": i64(-1, 1)}),
    "reduce_sum_all_keep": ([node("ReduceSum", ["x"])], (1, 3, 4), 13, {}),
    "reduce_mean_attr": ([node("ReduceMean", ["x"], axes=[1], keepdims=0)], (1, 3, 4), 13, {}),
    "reduce_mean_input": ([node("ReduceMean", ["x", "ax"])], (1, 3, 4), 18, {"ax": i64(2)}),
    "concat_var_const_var": ([node("Neg", ["x"], ["n"]),
                              node("Concat", ["x", "c34", "n"], axis=1)], (1, 2, 4), 13,
                             {"c34": W["c34"]}),
    "concat_negative_axis": ([node("Concat", ["c34", "x"], axis=-1)], (1, 3, 2), 13,
                             {"c34": W["c34"]}),
    "slice_opset9_attrs": ([node("Slice", ["x"], starts=[1, -3], ends=[3, 100], axes=[1, 2])],
                           (1, 4, 5), 9, {}),
    "slice_negative_steps": ([node("Slice", ["x", "s", "e", "a", "st"])], (1, 4, 6), 13,
                             {"s": i64(-1, 5), "e": i64(-100, 0), "a": i64(2, 1),
                              "st": i64(-2, -1)}),
    "slice_no_axes_batch_noop": ([node("Slice", ["x", "s", "e"])], (1, 4, 6), 13,
                                 {"s": i64(0, 1), "e": i64(1, 3)}),
    "slice_int_max": ([node("Slice", ["x", "s", "e", "a"])], (1, 7), 13,
                      {"s": i64(2), "e": i64(2 ** 63 - 1), "a": i64(1)}),
    "split_then_concat": ([node("Split", ["x", "sp"], ["a", "b", "c"], axis=2),
                           node("Concat", ["c", "a", "b"], axis=2)], (1, 2, 6), 13,
                          {"sp": i64(1, 3, 2)}),
    "split_attr_second": ([node("Split", ["x"], ["a", "y"], axis=-1, split=[6, 1])], (1, 3, 7),
                          11, {}),
    "split_num_outputs": ([node("Split", ["x"], ["a", "y", "b"], axis=1, num_outputs=3)],
                          (1, 7, 2), 18, {}),
    "gather_axis1": ([node("Gather", ["x", "i"], axis=1)], (1, 5, 3), 13, {"i": i64(4, 0, -1)}),
    "gather_scalar_2d": ([node("Gather", ["x", "i"], axis=2)], (1, 3, 4), 13,
                         {"i": np.array(-2, dtype=np.int64)}),
    "gather_matrix_indices": ([node("Gather", ["x", "i"], axis=1)], (1, 5), 13,
                              {"i": i64(0, 1, 4, 4, 2, 3).reshape(2, 3)}),
    "gather_elements": ([node("GatherElements", ["x", "i"], axis=2)], (1, 2, 3), 13,
                        {"i": i64(2, 0, 1, 1, 1, 0).reshape(1, 2, 3)}),
    "expand": ([node("Expand", ["x", "s"])], (1, 3, 1), 13, {"s": i64(1, 2, 3, 4)}),
    "tile": ([node("Tile", ["x", "r"])], (1, 2, 3), 13, {"r": i64(1, 2, 2)}),
    "depth_to_space": ([node("DepthToSpace", ["x"], blocksize=2, mode="CRD")], (1, 8, 2, 3), 13,
                       {}),
    "pad_constant": ([node("Pad", ["x", "p", "v"])], (1, 2, 3), 13,
                     {"p": i64(0, 1, -1, 0, 2, 1), "v": f32(0.5)}),
    "pad_reflect": ([node("Pad", ["x", "p"], mode="reflect")], (1, 1, 4, 4), 13,
                    {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}),
    "pad_opset2_attrs": ([node("Pad", ["x"], pads=[0, 0, 1, 1, 0, 0, 1, 2], value=-1.5)],
                         (1, 1, 2, 3), 2, {}),
    "upsample_opset9": ([node("Upsample", ["x", "sc"], mode="nearest")], (1, 2, 2, 3), 9,
                        {"sc": f32([1, 1, 2, 3])}),
    "upsample_opset7_attr": ([node("Upsample", ["x"], mode="nearest", scales=[1.0, 1.0, 2.0,
                                                                              2.0])],
                             (1, 2, 2, 2), 7, {}),
    "resize_scales": ([node("Resize", ["x", "", "sc"], mode="nearest")], (1, 2, 3, 4), 13,
                      {"sc": f32([1, 1, 1.5, 0.5])}),
    "resize_sizes_asymmetric": ([node("Resize", ["x", "", "", "sz"], mode="nearest",
                                      coordinate_transformation_mode="asymmetric",
                                      nearest_mode="floor")], (1, 1, 3, 3), 13,
                                {"sz": i64(1, 1, 7, 5)}),
    "resize_opset11_roi": ([node("Resize", ["x", "roi", "sc"], mode="nearest")], (1, 1, 2, 3),
                           11, {"roi": f32([]), "sc": f32([1, 1, 2, 2])}),
    "transpose": ([node("Transpose", ["x"], perm=[0, 3, 1, 2])], (1, 2, 3, 4), 13, {}),
    "transpose_lifts_batch_axis": ([node("Transpose", ["x"], ["t"], perm=[1, 0]),
                                    node("MatMul", ["m", "t"], ["mm"]),
                                    node("Transpose", ["mm"], perm=[1, 0])], (1, 4), 13,
                                   {"m": f32(_RNG.standard_normal((3, 4)))}),
    "where_var_const": ([node("Where", ["cond", "x", "c4"])], (1, 3, 4), 13,
                        {"cond": np.array([[True, False, True, True]]), "c4": W["c4"]}),
    "where_const_var": ([node("Where", ["cond", "c234", "x"])], (1, 3, 4), 13,
                        {"cond": _RNG.random((3, 4)) > 0.5, "c234": W["c234"]}),
    "where_two_vars": ([node("Neg", ["x"], ["n"]), node("Where", ["cond", "x", "n"])],
                       (1, 2, 3), 13, {"cond": _RNG.random((1, 2, 3)) > 0.5}),
    "folded_where_equal_expand": (
        [node("ConstantOfShape", ["shp"], ["ones"], value=helper.make_tensor("v", TensorProto.INT64,
                                                                            [1], [1])),
         node("Mul", ["ones", "m1"], ["minus"]),
         node("Equal", ["target", "minus"], ["eq"]),
         node("Where", ["eq", "ones", "target"], ["wh"]),
         node("Expand", ["c4", "wh"], ["ex"]),
         node("Add", ["x", "ex"])], (1, 4), 13,
        {"shp": i64(2), "target": i64(1, -1), "c4": W["c4"], "m1": i64(-1)}),
    "cast_to_float": ([node("Cast", ["x"], ["c"], to=TensorProto.DOUBLE),
                       node("Cast", ["c"], to=TensorProto.FLOAT)], (1, 3), 13, {}),
    "shape_start_constant_of_shape": ([node("Shape", ["x"], ["s"], start=1),
                                       node("ConstantOfShape", ["s"], ["z"],
                                            value=helper.make_tensor("v", TensorProto.FLOAT, [1],
                                                                     [2.0])),
                                       node("Mul", ["x", "z"])], (1, 2, 3), 15, {}),
    "conv_transpose": ([node("ConvTranspose", ["x", "ct", "b2"], strides=[2, 2],
                             pads=[1, 0, 0, 1], output_padding=[1, 0])], (1, 3, 3, 4), 13,
                       {"ct": W["ct"], "b2": W["b2"]}),
    "conv_transpose_groups_dilation": ([node("ConvTranspose", ["x", "ctg"], group=4,
                                             dilations=[2, 1], strides=[1, 2])], (1, 4, 3, 3),
                                       13, {"ctg": W["ctg"]}),
    "conv_transpose_output_shape": ([node("ConvTranspose", ["x", "ct", "b2"], strides=[2, 2],
                                          output_shape=[8, 9])], (1, 3, 4, 4), 13,
                                    {"ct": W["ct"], "b2": W["b2"]}),
    "conv_transpose_same_upper": ([node("ConvTranspose", ["x", "ct"], strides=[2, 2],
                                        auto_pad="SAME_UPPER")], (1, 3, 3, 3), 13,
                                  {"ct": W["ct"]}),
    "conv_transpose_1d": ([node("ConvTranspose", ["x", "ct1"], strides=[2], pads=[1, 2])],
                          (1, 2, 5), 13, {"ct1": W["ct1"]}),
    "average_pool": ([node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])],
                     (1, 2, 4, 6), 13, {}),
    "average_pool_pads_ceil": ([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                     pads=[1, 1, 1, 1], ceil_mode=1)], (1, 2, 6, 7), 13, {}),
    "average_pool_include_pad": ([node("AveragePool", ["x"], kernel_shape=[3, 2],
                                       strides=[2, 1], pads=[1, 0, 1, 1],
                                       count_include_pad=1)], (1, 1, 5, 5), 13, {}),
    "average_pool_same_upper_1d": ([node("AveragePool", ["x"], kernel_shape=[4], strides=[3],
                                         auto_pad="SAME_UPPER")], (1, 2, 10), 13, {}),
    "global_average_pool": ([node("GlobalAveragePool", ["x"])], (1, 3, 4, 5), 13, {}),
    "max_pool": ([node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], (1, 2, 4, 4),
                 13, {}),
    "max_pool_pads_ceil_dilation": ([node("MaxPool", ["x"], kernel_shape=[2, 3],
                                          strides=[2, 2], pads=[0, 1, 1, 1], ceil_mode=1,
                                          dilations=[2, 1])], (1, 2, 7, 6), 13, {}),
    "max_pool_1d": ([node("MaxPool", ["x"], kernel_shape=[3], strides=[1], pads=[1, 1])],
                    (1, 2, 6), 13, {}),
    "global_max_pool": ([node("GlobalMaxPool", ["x"])], (1, 3, 2, 3), 13, {}),
    "layer_norm_last_axis": ([node("LayerNormalization", ["x", "ln_b", "ln_b"], epsilon=1e-3)],
                             (1, 2, 3), 17, _rnn_weights("RNN", 1, 1, 1, 0)),
    "layer_norm_two_axes_mean_output": (
        [node("LayerNormalization", ["x", "ln_s"], ["n", "m"], axis=1),
         node("Add", ["n", "m"])], (1, 2, 3), 17, _rnn_weights("RNN", 1, 1, 1, 0)),
    "lstm_one_step_y_h": ([node("LSTM", ["x", "W", "R", "B"], ["", "y"], hidden_size=3)],
                          (1, 1, 2), 13, _rnn_weights("LSTM", 1, 2, 3, 1)),
    "lstm_batch_first_export": (
        [node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
         node("LSTM", ["xt", "W", "R", "B", "", "h0", "c0", "P"], ["yy", "", "yc"],
              hidden_size=3),
         node("Transpose", ["yy"], ["yt"], perm=[2, 0, 1, 3]),
         node("Reshape", ["yt", "shape"], ["flat"]), node("Reshape", ["yc", "shape"], ["fc"]),
         node("Concat", ["flat", "fc"], axis=1)],
        (1, 4, 2), 13, {**_rnn_weights("LSTM", 1, 2, 3, 2), "shape": i64(1, -1)}),
    "lstm_layout1_bidirectional": ([node("LSTM", ["x", "W", "R"], hidden_size=2, layout=1,
                                         direction="bidirectional")], (1, 3, 2), 14,
                                   _rnn_weights("LSTM", 2, 2, 2, 3)),
    "gru_reverse_y_h": ([node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                         node("GRU", ["xt", "W", "R", "B", "", "h0"], ["", "y"], hidden_size=3,
                              direction="reverse")], (1, 3, 2), 13,
                        _rnn_weights("GRU", 1, 2, 3, 4)),
    "gru_linear_before_reset_bidirectional": (
        [node("GRU", ["x", "W", "R", "B"], ["", "y"], hidden_size=2, layout=1,
              linear_before_reset=1, direction="bidirectional")], (1, 3, 2), 14,
        _rnn_weights("GRU", 2, 2, 2, 5)),
    "rnn_relu": ([node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                  node("RNN", ["xt", "W", "R", "B"], ["yy"], hidden_size=3,
                       activations=["Relu"]),
                  node("Transpose", ["yy"], perm=[2, 1, 0, 3])], (1, 3, 2), 14,
                 _rnn_weights("RNN", 1, 2, 3, 6)),
}


# onnxruntime rejects recurrent layers with layout=1: compare with onnx's reference evaluator
REFERENCE_ONLY = {"lstm_layout1_bidirectional", "gru_linear_before_reset_bidirectional"}


def _compare_with_reference(graph, model, lower, upper):
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model)
    rng = np.random.default_rng(0)
    for _ in range(6):
        x = (lower + rng.random(lower.size) * (upper - lower)).astype(np.float32)
        x = x.reshape(1, *graph.input_node.shape)
        ref = evaluator.run(None, {"x": x})[0].reshape(-1)
        ours = graph.forward(torch.from_numpy(x.astype(np.float64))).reshape(-1).numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def _check_crown(graph, lower, upper):
    """CROWN (and IBP) bounds of every output contain the outputs at sampled points."""
    out = graph.output_node
    n_out = out.size
    C = torch.eye(n_out, dtype=F64).unsqueeze(0)
    C = torch.cat([C, -C], 1)
    lo_t = torch.from_numpy(lower).reshape(1, *graph.input_node.shape)
    hi_t = torch.from_numpy(upper).reshape(1, *graph.input_node.shape)
    points = sample_box(lo_t, hi_t, 200, seed=3)[:, 0]
    y = graph.forward(points).reshape(200, n_out)
    values = torch.cat([y, -y], 1)
    for method in ("ibp", "crown"):
        res = compute_bounds(graph, lo_t, hi_t, C, BoundOptions(method=method))
        assert bool((res.lower[0] <= values + 1e-9).all()), method


@pytest.mark.parametrize("name", sorted(CONVERTER_CASES))
def test_converter_matches_onnxruntime(name):
    nodes, shape, opset, inits = CONVERTER_CASES[name]
    model = make_model(nodes, shape, opset, inits)
    graph = load_onnx(model)
    n = int(np.prod(shape))
    lower = np.linspace(-1.0, 0.5, n)
    upper = lower + np.linspace(0.1, 1.0, n)[::-1]
    if name in REFERENCE_ONLY:
        _compare_with_reference(graph.to("cpu", F64), model, lower, upper)
    else:
        compare_with_onnxruntime(graph, model, lower, upper, samples=6)
    _check_crown(graph.to("cpu", F64), lower, upper)


def test_maxpool_graph_alpha_crown_is_sound_and_no_looser():
    model = make_model([node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                        node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                        node("Flatten", ["p"], ["f"]), node("Gemm", ["f", "g"], transB=1)],
                       (1, 1, 4, 4), 13, {"w": f32(_RNG.standard_normal((2, 1, 3, 3))),
                                          "g": f32(_RNG.standard_normal((3, 8)))})
    graph = load_onnx(model).to("cpu", F64)
    lo = torch.zeros(1, 1, 4, 4, dtype=F64)
    hi = lo + 0.6
    C = torch.cat([torch.eye(3), -torch.eye(3)]).unsqueeze(0).to(F64)
    crown = compute_bounds(graph, lo, hi, C, BoundOptions(method="crown")).lower
    alpha = compute_bounds(graph, lo, hi, C, BoundOptions(alpha_iterations=20)).lower
    assert bool((alpha >= crown - 1e-9).all())
    x = sample_box(lo, hi, 500, seed=4)[:, 0]
    y = graph.forward(x)
    values = torch.cat([y, -y], 1)
    assert bool((alpha[0] <= values + 1e-9).all())


REJECTED = {
    "concat_batch_axis": ([node("Concat", ["x", "c"], axis=0)], (1, 3), {"c": f32([[1, 2, 3]])}),
    "gather_batch_axis_twice": ([node("Gather", ["x", "i"], axis=0)], (1, 3), {"i": i64(0, 0)}),
    "expand_batch_axis": ([node("Expand", ["x", "s"])], (1, 3), {"s": i64(2, 3)}),
    "reduce_batch_axis_drop": ([node("ReduceSum", ["x", "a"], keepdims=0)], (1, 3),
                               {"a": i64(0)}),
    "where_variable_condition": ([node("Greater", ["x", "z"], ["g"]),
                                  node("Where", ["g", "x", "z"])], (1, 3), {"z": f32([0, 0, 0])}),
    "equal_of_variable": ([node("Equal", ["x", "z"], ["e"]), node("Cast", ["e"], ["c"], to=1),
                           node("Add", ["x", "c"])], (1, 3), {"z": f32([0, 0, 0])}),
    "cast_to_int": ([node("Cast", ["x"], ["c"], to=TensorProto.INT64),
                     node("Cast", ["c"], to=TensorProto.FLOAT)], (1, 3), {}),
    "resize_linear": ([node("Resize", ["x", "", "sc"], mode="linear")], (1, 1, 2, 2),
                      {"sc": f32([1, 1, 2, 2])}),
    "gather_variable_indices": ([node("Cast", ["x"], ["i"], to=TensorProto.INT64),
                                 node("Gather", ["c", "i"])], (1, 3), {"c": f32([1, 2, 3])}),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_unsupported_cases_are_conversion_errors(name):
    nodes, shape, inits = REJECTED[name]
    with pytest.raises(UnsupportedModelError):
        load_onnx(make_model(nodes, shape, 13, inits))


# --- real benchmark models ---------------------------------------------------------------------

needs_benchmarks = pytest.mark.skipif(not BENCHMARKS.is_dir(),
                                      reason="../shared/benchmarks not present")

# Op types owned by other work (univariate nonlinear, bilinear); a model blocked only by
# these is skipped, a model blocked by anything else fails.
OTHER_AREAS = {"Mul", "MatMul", "Div", "Pow", "Sin", "Cos", "Floor", "Sign", "Sqrt",
               "Reciprocal", "Exp", "Log", "LeakyRelu", "Erf", "Softmax", "Abs", "Clip",
               "LayerNormalization", "LSTM", "GRU"}

REAL_MODELS = [
    ("cgan_2023", "cGAN_imgSz32_nCh_1.onnx", False),
    ("cgan_2023", "cGAN_imgSz32_nCh_3_upsample.onnx", False),
    ("cgan_2023", "cGAN_imgSz32_nCh_3_nonlinear_activations.onnx", True),
    ("nn4sys_mscn_2023", "mscn_128d.onnx", False),
    ("nn4sys_mscn_2023", "mscn_128d_dual.onnx", True),
    ("ml4acopf_2023", "14_ieee_ml4acopf.onnx", False),
    ("ml4acopf_2023", "118_ieee_ml4acopf.onnx", True),
    ("ml4acopf_2024", "14_ieee_ml4acopf-linear-nonresidual.onnx", False),
    ("ml4acopf_2024", "14_ieee_ml4acopf-linear-residual.onnx", True),
    ("lsnc_2024", "quadrotor2d_output.onnx", False),
    ("lsnc_2024", "quadrotor2d_state.onnx", True),
    ("vit_2023", "pgd_2_3_16.onnx", False),
    ("vit_2023", "ibp_3_3_8.onnx", True),
]


def _model_path(bench: str, name: str) -> Path:
    onnx_dir = BENCHMARKS / bench / "onnx"
    for candidate in (onnx_dir / name, onnx_dir / (name + ".gz")):
        if candidate.exists():
            return candidate
    pytest.skip(f"{bench}/{name} not present")


@needs_benchmarks
@pytest.mark.parametrize("bench,name", [
    pytest.param(b, n, marks=[pytest.mark.slow] if slow else [], id=f"{b}/{n}")
    for b, n, slow in REAL_MODELS])
def test_real_model_loads_and_matches_onnxruntime(bench, name):
    path = _model_path(bench, name)
    try:
        graph = load_onnx(path)
    except UnsupportedModelError as exc:
        blockers = {op for op, _, _ in exc.problems}
        assert blockers <= OTHER_AREAS, f"structure ops block {name}: {exc}"
        pytest.skip(f"blocked by op types of other areas: {sorted(blockers)}")
    n = int(np.prod(graph.input_node.shape))
    compare_with_onnxruntime(graph, read_model(path), np.zeros(n), np.full(n, 0.5), samples=4)


@needs_benchmarks
def test_benchmark_op_types_of_this_area_are_registered():
    from bounds.onnx_registry import supported_op_types

    mine = {"ReduceSum", "ReduceMean", "ConvTranspose", "Upsample", "Resize", "AveragePool",
            "MaxPool", "Transpose", "Concat", "Split", "Slice", "Gather", "Unsqueeze",
            "Squeeze", "Expand", "Where", "Equal", "ConstantOfShape", "Shape", "Neg", "Cast",
            "Pad"}
    used = set()
    for models in BENCHMARKS.glob("*/models.json"):
        for entry in json.loads(models.read_text()):
            used |= set(entry.get("ops", {}))
    missing = (used & mine) - set(supported_op_types())
    assert not missing, missing
    assert mine <= set(supported_op_types())
