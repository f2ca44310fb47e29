"""ONNX import (bounds/onnx_import.py, bounds/onnx_ops.py): conversions match onnxruntime.

- Every benchmark model of the sigmoid/tanh, ACAS Xu and dist-shift benchmarks
  loads, and ``compare_with_onnxruntime`` passes on a random box.
- Small models built here with onnx.helper cover each supported construct
  (Gemm attributes, MatMul + Add, Conv pads/strides/groups/auto_pad,
  BatchNormalization, Flatten, Reshape with 0/-1, Squeeze/Unsqueeze in the
  opset-11 attribute and opset-13 input forms, Transpose, Sub/Div/Mul/Add with
  the constant on either side, Identity, Constant nodes, Shape -> Gather ->
  Reshape folding chains).  Each converted graph matches onnxruntime one point
  at a time and as a batch, and its IBP/CROWN bounds contain onnxruntime's outputs.
- Unsupported ops raise ``UnsupportedModelError`` naming the op type and node,
  all problems at once.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bounds.methods import BoundOptions, compute_bounds
from bounds.onnx_import import (
    ModelError,
    UnsupportedModelError,
    compare_with_onnxruntime,
    load_onnx,
    read_model,
)

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
BENCHMARK_SETS = ("eran_sigmoid_2021", "vnncomp2020_nln_mnist_sigmoid_tanh", "acasxu_2023",
                  "dist_shift_2023")



def benchmark_models() -> list:
    models = []
    for name in BENCHMARK_SETS:
        folder = BENCHMARKS / name / "onnx"
        if folder.is_dir():
            models += [pytest.param(p, id=f"{name}/{p.name}") for p in sorted(folder.iterdir())
                       if p.name.endswith((".onnx", ".onnx.gz"))]
    return models or [pytest.param(None, marks=pytest.mark.skip(reason="no benchmarks"),
                                   id="missing")]


@pytest.mark.parametrize("path", benchmark_models())
def test_benchmark_model_matches_onnxruntime(path):
    graph = load_onnx(path)
    proto = read_model(path)
    size = graph.input_node.size
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    lower = rng.random(size) * 0.9
    upper = lower + 0.1
    worst = compare_with_onnxruntime(graph, proto, lower, upper, samples=4)
    assert worst < 1e-3


# --- models built here ------------------------------------------------------------------

def const(name: str, array) -> onnx.TensorProto:
    array = np.asarray(array)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return numpy_helper.from_array(array, name)


def rand(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def make_model(nodes, in_shape, initializers=(), opset: int = 13, out: str = "y",
               extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def run_ort(model: onnx.ModelProto, points: np.ndarray) -> np.ndarray:
    """onnxruntime output for each point (one call per point: models have batch size 1)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    return np.stack([session.run(None, {name: p.astype(np.float32).reshape(shape)})[0]
                     .reshape(-1) for p in points])


def check_conversion(model: onnx.ModelProto, seed: int = 0, radius: float = 1.0):
    """The converted graph matches onnxruntime (per point and batched); bounds contain it."""
    graph = load_onnx(model)
    size = graph.input_node.size
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal(size)
    lower, upper = centre - radius, centre + radius
    compare_with_onnxruntime(graph, model, lower, upper, samples=6, seed=seed)

    points = (lower + rng.random((6, size)) * (upper - lower)).astype(np.float32)
    reference = run_ort(model, points).astype(np.float64)
    g64 = graph.to("cpu", torch.float64)
    x = torch.from_numpy(points.astype(np.float64)).reshape(6, *graph.input_node.shape)
    with torch.no_grad():
        batched = g64.forward(x).reshape(6, -1).numpy()
    np.testing.assert_allclose(batched, reference, rtol=1e-4, atol=1e-5)

    lo = torch.from_numpy(lower).reshape(1, *graph.input_node.shape)
    hi = torch.from_numpy(upper).reshape(1, *graph.input_node.shape)
    n = graph.output_node.size
    C = torch.cat([torch.eye(n), -torch.eye(n)]).to(torch.float64)[None]
    for method in ("ibp", "crown"):
        res = compute_bounds(g64, lo, hi, C, BoundOptions(method=method))
        low, up = res.lower[0, :n].numpy(), -res.lower[0, n:].numpy()
        tol = 1e-4 * (1 + np.abs(reference))
        assert np.all(reference >= low - tol) and np.all(reference <= up + tol), method
    return graph


def gemm_model(trans_b: int, alpha: float, beta: float, bias_shape) -> onnx.ModelProto:
    w = rand(3, 4) if trans_b else rand(4, 3)
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=trans_b, alpha=alpha,
                            beta=beta)
    return make_model([node], [1, 4], [const("W", w), const("C", rand(*bias_shape, seed=1))])


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [
    (1, 0.5, 2.0, (3,)), (0, 1.5, -1.0, (1, 3)), (1, 1.0, 1.0, (1,)), (0, -2.0, 0.25, ())])
def test_gemm_attributes(trans_b, alpha, beta, bias_shape):
    check_conversion(gemm_model(trans_b, alpha, beta, bias_shape))


def test_gemm_without_bias():
    node = helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)
    check_conversion(make_model([node], [1, 4], [const("W", rand(2, 4))]))


def test_matmul_add_mlp():
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "W2"], ["m2"]),
             helper.make_node("Add", ["b2", "m2"], ["a2"]),  # constant first
             helper.make_node("Tanh", ["a2"], ["t2"]),
             helper.make_node("MatMul", ["t2", "W3"], ["y"])]
    inits = [const("W1", rand(5, 8)), const("b1", rand(8, seed=1)),
             const("W2", rand(8, 6, seed=2)), const("b2", rand(1, 6, seed=3)),
             const("W3", rand(6, 3, seed=4))]
    graph = check_conversion(make_model(nodes, [1, 5], inits))
    assert [type(n.op).__name__ for n in graph.nodes][-1] == "Linear"


def test_matmul_with_constant_left_operand():
    nodes = [helper.make_node("MatMul", ["W", "x"], ["m"]),
             helper.make_node("Sigmoid", ["m"], ["s"]),
             helper.make_node("Flatten", ["s"], ["y"])]
    check_conversion(make_model(nodes, [1, 2, 4, 3], [const("W", rand(5, 4))]))


def conv_model(in_shape, w_shape, **attrs) -> onnx.ModelProto:
    out_features = 3
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], **attrs),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "W2"], ["y"])]
    probe = make_model(nodes[:1], in_shape, [const("W", rand(*w_shape)),
                                             const("B", rand(w_shape[0], seed=1))], out="c")
    flat = int(np.prod(run_ort(probe, np.zeros((1, int(np.prod(in_shape))))).shape[1]))
    inits = [const("W", rand(*w_shape)), const("B", rand(w_shape[0], seed=1)),
             const("W2", rand(flat, out_features, seed=2) * 0.3)]
    return make_model(nodes, in_shape, inits)


@pytest.mark.parametrize("in_shape,w_shape,attrs", [
    ([1, 2, 6, 5], (3, 2, 3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ([1, 2, 7, 7], (4, 2, 3, 2), {"pads": [0, 2, 1, 0], "dilations": [2, 1]}),
    ([1, 4, 6, 6], (4, 2, 3, 3), {"pads": [1, 1, 1, 1], "group": 2}),
    ([1, 2, 5, 5], (2, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ([1, 2, 6, 6], (2, 2, 2, 2), {"auto_pad": "SAME_LOWER"}),
    ([1, 2, 5, 5], (2, 2, 3, 3), {"auto_pad": "VALID"}),
    ([1, 4, 9], (4, 2, 3), {"pads": [2, 1], "strides": [2], "dilations": [2], "group": 2}),
    ([1, 1, 1, 12], (3, 1, 1, 12), {}),  # the vnncomp2020 "Conv as Gemm" form
], ids=["pads_stride", "dilation", "groups", "same_upper", "same_lower", "valid", "conv1d",
        "full_kernel"])
def test_conv(in_shape, w_shape, attrs):
    check_conversion(conv_model(in_shape, w_shape, **attrs), radius=0.5)


def test_batch_normalization():
    c = 3
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"],
                              epsilon=1e-3),
             helper.make_node("Sigmoid", ["n"], ["sg"]),
             helper.make_node("Flatten", ["sg"], ["y"])]
    inits = [const("s", rand(c)), const("b", rand(c, seed=1)), const("m", rand(c, seed=2)),
             const("v", np.abs(rand(c, seed=3)) + 0.1)]
    check_conversion(make_model(nodes, [1, c, 2, 2], inits))


@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_flatten(axis):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=axis),
             helper.make_node("Relu", ["f"], ["y"])]
    model = make_model(nodes, [1, 2, 3, 4])
    check_conversion(model)


@pytest.mark.parametrize("target", [[0, -1], [0, 3, -1], [1, 4, 6], [-1, 2, 12], [1, 24]])
def test_reshape_with_zero_and_minus_one(target):
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Tanh", ["r"], ["y"])]
    check_conversion(make_model(nodes, [1, 2, 3, 4],
                                [const("shape", np.array(target, dtype=np.int64))]))


def test_squeeze_unsqueeze_opset11_attributes():
    nodes = [helper.make_node("Squeeze", ["x"], ["s"], axes=[2]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Unsqueeze", ["r"], ["u"], axes=[1, -1]),
             helper.make_node("Squeeze", ["u"], ["y"])]  # no axes: every non-batch 1
    graph = check_conversion(make_model(nodes, [1, 3, 1, 4], opset=11))
    assert graph.output_node.shape == (3, 4)


def test_squeeze_unsqueeze_opset13_inputs():
    nodes = [helper.make_node("Squeeze", ["x", "ax_s"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax_u"], ["y"])]
    inits = [const("ax_s", np.array([-2], dtype=np.int64)),
             const("ax_u", np.array([1, 3], dtype=np.int64))]
    graph = check_conversion(make_model(nodes, [1, 3, 1, 4], inits, opset=13))
    assert graph.output_node.shape == (1, 3, 1, 4)


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [0, 3, 1, 2], [0, 1, 3, 2]])
def test_transpose(perm):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=perm),
             helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "W"], ["y"])]
    check_conversion(make_model(nodes, [1, 2, 3, 4], [const("W", rand(24, 3))]))


def test_sub_div_mul_add_with_constants_on_either_side():
    # y = -(c4 + c3 * ((c1 - (x - c0)) / c2)), with scalar, row and (1, n) constants.
    nodes = [helper.make_node("Sub", ["x", "c0"], ["a"]),
             helper.make_node("Sub", ["c1", "a"], ["b"]),
             helper.make_node("Div", ["b", "c2"], ["d"]),
             helper.make_node("Mul", ["c3", "d"], ["e"]),
             helper.make_node("Add", ["c4", "e"], ["f"]),
             helper.make_node("Neg", ["f"], ["y"])]
    inits = [const("c0", rand(4)), const("c1", np.float32(0.7)),
             const("c2", rand(1, 4, seed=2) + 3.0), const("c3", rand(4, seed=3)),
             const("c4", np.array([1.5], dtype=np.float32))]
    check_conversion(make_model(nodes, [1, 4], inits))


def test_add_and_sub_of_two_variables():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Sub", ["x", "r"], ["d"]),  # = min(x, 0)
             helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Add", ["d", "s"], ["y"])]
    check_conversion(make_model(nodes, [1, 2, 3]))


def test_identity_and_dropout_are_aliases():
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Relu", ["i"], ["r"]),
             helper.make_node("Dropout", ["r"], ["dr"]),
             helper.make_node("Identity", ["dr"], ["y"])]
    graph = check_conversion(make_model(nodes, [1, 5]))
    assert [type(n.op).__name__ for n in graph.nodes] == ["InputOp", "Relu"]


def test_constant_nodes():
    nodes = [helper.make_node("Constant", [], ["W"], value=const("Wv", rand(4, 3))),
             helper.make_node("Constant", [], ["k"], value_float=2.5),
             helper.make_node("Constant", [], ["shape"], value_ints=[0, 3, 1]),
             helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Mul", ["m", "k"], ["s"]),
             helper.make_node("Reshape", ["s", "shape"], ["y"])]
    graph = check_conversion(make_model(nodes, [1, 4]))
    assert graph.output_node.shape == (3, 1)


def test_shape_gather_reshape_folding_chain():
    # Shape(x) -> Gather(0) -> Unsqueeze -> Concat([-1]) -> Reshape(x, [batch, -1]): the
    # whole shape computation folds to a constant; only the Reshape is converted.
    nodes = [helper.make_node("Shape", ["x"], ["shp"]),
             helper.make_node("Gather", ["shp", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "ax0"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("Gather", ["shp", "three"], ["last"], axis=0),  # = 4
             helper.make_node("Cast", ["last"], ["lastf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["flat", "lastf"], ["scaled"]),
             helper.make_node("Gemm", ["scaled", "W"], ["y"], transB=1)]
    inits = [const("zero", np.array(0, dtype=np.int64)),
             const("three", np.array(3, dtype=np.int64)),
             const("ax0", np.array([0], dtype=np.int64)),
             const("minus1", np.array([-1], dtype=np.int64)), const("W", rand(2, 24))]
    graph = check_conversion(make_model(nodes, [1, 2, 3, 4], inits))
    assert [type(n.op).__name__ for n in graph.nodes] == ["InputOp", "Reshape",
                                                           "ElementwiseAffine", "Linear"]


def test_softmax_output_model():
    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
             helper.make_node("Softmax", ["g"], ["y"], axis=-1)]
    check_conversion(make_model(nodes, [1, 4], [const("W", rand(3, 4))]))


def test_add_of_variables_with_different_ranks_batches_correctly():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["a"]),
             helper.make_node("Gemm", ["x", "W"], ["b"], transB=1),
             helper.make_node("Add", ["a", "b"], ["y"])]
    inits = [const("shape", np.array([1, 3, 4], dtype=np.int64)), const("W", rand(4, 12))]
    check_conversion(make_model(nodes, [1, 12], inits))


# --- unsupported models -------------------------------------------------------------------

def test_unsupported_op_names_type_and_node():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node("Hardmax", ["r"], ["h"], name="my_hardmax"),
             helper.make_node("Sigmoid", ["h"], ["y"], name="after")]
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(make_model(nodes, [1, 4]))
    message = str(info.value)
    assert "Hardmax" in message and "my_hardmax" in message
    assert "after" not in message  # nodes downstream of the problem are not reported
    assert [(p[0], p[1]) for p in info.value.problems] == [("Hardmax", "my_hardmax")]


def test_unnamed_unsupported_node_gets_a_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Hardmax", ["r"], ["y"])]
    with pytest.raises(UnsupportedModelError, match="Hardmax_1"):
        load_onnx(make_model(nodes, [1, 4]))


def test_custom_domain_op_is_unsupported():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Swoosh", ["r"], ["y"], name="custom_node", domain="com.example")]
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(make_model(nodes, [1, 4], extra_opsets=["com.example"]))
    message = str(info.value)
    assert "Swoosh" in message and "custom_node" in message and "com.example" in message


def test_two_unsupported_ops_are_listed_together():
    nodes = [helper.make_node("Hardmax", ["x"], ["h"], name="hm"),
             helper.make_node("LpNormalization", ["x"], ["n"], name="lpn"),
             helper.make_node("Swoosh", ["x"], ["c"], name="cust", domain="com.example"),
             helper.make_node("Add", ["h", "n"], ["s"]),
             helper.make_node("Add", ["s", "c"], ["y"])]
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(make_model(nodes, [1, 4], extra_opsets=["com.example"]))
    message = str(info.value)
    for text in ("Hardmax", "hm", "LpNormalization", "lpn", "Swoosh", "cust"):
        assert text in message
    assert len(info.value.problems) == 3


def test_gzipped_model_loads(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
             helper.make_node("Sigmoid", ["g"], ["y"])]
    model = make_model(nodes, [1, 4], [const("W", rand(3, 4))])
    path = tmp_path / "m.onnx.gz"
    path.write_bytes(gzip.compress(model.SerializeToString()))
    graph = load_onnx(path)
    compare_with_onnxruntime(graph, model, -np.ones(4), np.ones(4))


def test_symbolic_feature_dimension_is_a_model_error():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ModelError, match="symbolic"):
        load_onnx(model)


def test_unreadable_model_is_a_model_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError):
        load_onnx(path)
