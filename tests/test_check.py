"""Tests for genbab.check: onnxruntime confirmation in float32 and float64."""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from genbab.check import OnnxRunner, cast_into_box, confirm_counterexample, to_float64
from genbab.spec.types import Disjunct, SpecCase


def _export(tmp_path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 2)).eval()
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 2, 3),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return model, path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    return _export(tmp_path_factory.mktemp("onnx"))


def _case(d0: float) -> SpecCase:
    return SpecCase(-np.ones(6), np.ones(6),
                    (Disjunct(C=np.array([[1.0, 0.0], [-1.0, 0.0]]), d=np.array([-1e6, -1e6])),
                     Disjunct(C=np.array([[1.0, 0.0]]), d=np.array([d0]))))


def test_runner_matches_torch_and_knows_input(exported: tuple[nn.Module, Path]) -> None:
    model, path = exported
    runner = OnnxRunner(path)
    assert runner.input_name == "x" and runner.input_shape == (1, 2, 3)
    x = np.linspace(-1, 1, 6)
    with torch.no_grad():
        expected = model(torch.as_tensor(x, dtype=torch.float32).reshape(1, 2, 3)).numpy()[0]
    y = runner.run(x)
    assert y.dtype == np.float64 and y.shape == (2,)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    y64 = runner.run64(x)
    assert y64 is not None
    np.testing.assert_allclose(y64, y, rtol=1e-5, atol=1e-5)


def test_confirms_true_and_rejects_false(exported: tuple[nn.Module, Path]) -> None:
    runner = OnnxRunner(exported[1])
    x = np.full(6, 0.3)
    y0 = runner.run(x)[0]
    found = confirm_counterexample(runner, _case(y0 + 1e-3), x)
    assert found is not None
    assert found.disjunct == 1 and found.float64_agrees is True
    np.testing.assert_array_equal(found.x, x.astype(np.float32).astype(np.float64))
    assert found.y[0] <= y0 + 1e-3
    assert confirm_counterexample(runner, _case(y0 - 1e-3), x) is None


def test_exact_threshold_has_no_tolerance(exported: tuple[nn.Module, Path]) -> None:
    runner = OnnxRunner(exported[1])
    x = np.full(6, -0.2)
    y0 = runner.run(x)[0]
    assert confirm_counterexample(runner, _case(y0), x) is not None
    assert confirm_counterexample(runner, _case(np.nextafter(y0, -np.inf)), x) is None


def test_point_outside_box_is_clipped_inside_in_float32(exported: tuple[nn.Module, Path]) -> None:
    runner = OnnxRunner(exported[1])
    lower, upper = np.full(6, 0.1), np.full(6, 0.2)
    case = SpecCase(lower, upper, (Disjunct(C=np.zeros((0, 2)), d=np.zeros(0)),))
    found = confirm_counterexample(runner, case, np.array([5.0, -5.0, 0.2, 0.1, 0.15, 0.2]))
    assert found is not None
    assert np.all(found.x >= lower) and np.all(found.x <= upper)
    np.testing.assert_array_equal(found.x.astype(np.float32).astype(np.float64), found.x)


def test_cast_into_box_degenerate_interval() -> None:
    fed = cast_into_box(np.array([0.1, 7.0]), np.array([0.1, 0.0]), np.array([0.1, 1.0]),
                        np.dtype(np.float32))
    assert fed[0] == np.float64(np.float32(0.1)) and fed[1] == 1.0


def test_gzipped_model(exported: tuple[nn.Module, Path], tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx.gz"
    path.write_bytes(gzip.compress(exported[1].read_bytes()))
    x = np.linspace(0, 1, 6)
    np.testing.assert_array_equal(OnnxRunner(path).run(x), OnnxRunner(exported[1]).run(x))
    np.testing.assert_array_equal(OnnxRunner(onnx.load(str(exported[1]))).run(x),
                                  OnnxRunner(path).run(x))


def _cancellation_model() -> onnx.ModelProto:
    """y = Cast<float>(x + c) - c with c = 1e8 from a Constant node: float32 loses x."""
    nodes = [
        helper.make_node("Constant", [], ["c"], value_float=1e8),
        helper.make_node("Add", ["x", "c"], ["s"]),
        helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["c2"],
                         value=helper.make_tensor("c2", TensorProto.FLOAT, [1], [1e8])),
        helper.make_node("Sub", ["s32", "c2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "cancel",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float64_copy_computes_in_double() -> None:
    runner = OnnxRunner(_cancellation_model())
    assert runner.input_shape == (1, 1)
    assert runner.run(np.array([0.3]))[0] == 0.0
    y64 = runner.run64(np.array([0.3]))
    assert y64 is not None and abs(y64[0] - np.float32(0.3)) < 1e-7
    double = to_float64(runner.model)
    assert double.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert runner.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    case = SpecCase(np.zeros(1), np.ones(1), (Disjunct(C=np.array([[1.0]]), d=np.array([0.0])),))
    found = confirm_counterexample(runner, case, np.array([0.3]))
    assert found is not None and found.float64_agrees is False


def test_float64_unsupported_gives_none() -> None:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [2.0])
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [weight])
    runner = OnnxRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    np.testing.assert_array_equal(runner.run(np.arange(4.0)), 2 * np.arange(4.0))
    assert runner.run64(np.arange(4.0)) is None
    case = SpecCase(np.zeros(4), 4 * np.ones(4),
                    (Disjunct(C=np.array([[1.0, 0, 0, 0]]), d=np.array([1.0])),))
    found = confirm_counterexample(runner, case, np.zeros(4))
    assert found is not None and found.float64_agrees is None


def test_two_inputs_rejected() -> None:
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError):
        OnnxRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
