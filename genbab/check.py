"""Confirmation of counterexamples on the original ONNX model by onnxruntime.

Owns the last word on ``sat``: a candidate from the attack or from BaB is
reported only if onnxruntime, running the unmodified model in float32, puts
the output inside some disjunct (``C @ y <= d`` on every row, no tolerance).
A float64 copy of the model is also run, where onnxruntime supports it, to
say whether the verdict survives higher precision.

Inputs and outputs are flat: ``x_flat`` is the row-major flattening of the
model's single input tensor, the output is the flattening of its first output.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from genbab.spec.types import SpecCase

_ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph,
    ort_state.InvalidProtobuf, ort_state.NoModel, ort_state.NotImplemented,
    ort_state.RuntimeException, ort_state.EngineError, ort_state.NotFound,
    ort_state.EPFail,
)
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def load_onnx(source: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """Read a model from a proto, an ``.onnx`` path or a gzipped ``.onnx.gz`` path."""
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle:
            return onnx.load_model_from_string(handle.read())
    return onnx.load(str(path))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


class OnnxRunner:
    """Runs one single-input ONNX model on flat points, in float32 and in float64."""

    def __init__(self, source: onnx.ModelProto | str | Path):
        self.model = load_onnx(source)
        graph = self.model.graph
        initializers = {init.name for init in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise ValueError(f"expected a model with one input, found {len(inputs)}")
        tensor_type = inputs[0].type.tensor_type
        self.input_name: str = inputs[0].name
        self.input_shape: tuple[int, ...] = tuple(
            dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1
            for dim in tensor_type.shape.dim)
        self.input_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        self.output_name: str = graph.output[0].name
        self._session = _session(self.model)
        self._session64: ort.InferenceSession | None = None
        self._failed64 = False

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape, dtype=np.int64))

    def _feed(self, x_flat: np.ndarray, dtype: np.dtype) -> dict[str, np.ndarray]:
        x = np.asarray(x_flat).reshape(-1)
        if x.size != self.n_inputs:
            raise ValueError(f"expected {self.n_inputs} input values, got {x.size}")
        return {self.input_name: x.astype(dtype).reshape(self.input_shape)}

    def run(self, x_flat: np.ndarray) -> np.ndarray:
        """Outputs of the original model (its own input type, normally float32) as float64."""
        out = self._session.run([self.output_name], self._feed(x_flat, self.input_dtype))[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def run64(self, x_flat: np.ndarray) -> np.ndarray | None:
        """Outputs of a float64 copy of the model, or None where onnxruntime cannot run it."""
        if self._failed64:
            return None
        try:
            if self._session64 is None:
                self._session64 = _session(to_float64(self.model))
            feed = self._feed(x_flat, np.dtype(np.float64)
                              if self.input_dtype.kind == "f" else self.input_dtype)
            out = self._session64.run([self.output_name], feed)[0]
        except (*_ORT_ERRORS, onnx.checker.ValidationError, ValueError, TypeError):
            self._failed64 = True
            return None
        return np.asarray(out, dtype=np.float64).reshape(-1)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in double: tensors, casts and declared types."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _graph_to_float64(copy.graph)
    return copy


def _tensor_to_float64(tensor: TensorProto) -> TensorProto:
    if tensor.data_type not in _FLOAT_TYPES:
        return tensor
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _graph_to_float64(graph: onnx.GraphProto) -> None:
    for i, init in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(_tensor_to_float64(init))
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.tensor_type.elem_type in _FLOAT_TYPES:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        _node_to_float64(node)


def _node_to_float64(node: onnx.NodeProto) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.type == onnx.AttributeProto.TENSOR:
            attr.t.CopyFrom(_tensor_to_float64(attr.t))
        elif attr.type == onnx.AttributeProto.GRAPH:
            _graph_to_float64(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for sub in attr.graphs:
                _graph_to_float64(sub)
        elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT \
                and attr.i in _FLOAT_TYPES:
            attr.i = TensorProto.DOUBLE
        elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
            values = np.array(attr.f if attr.name == "value_float" else list(attr.floats),
                              dtype=np.float64)
            node.attribute[i].CopyFrom(helper.make_attribute("value", numpy_helper.from_array(
                values)))


@dataclass(frozen=True)
class Confirmation:
    """A counterexample onnxruntime confirmed: input, output and the disjunct that holds."""

    x: np.ndarray  # flat input, float64 holding exactly the values the model was fed
    y: np.ndarray  # flat output of the float32 run, float64
    disjunct: int  # index of the first disjunct whose rows all hold
    float64_agrees: bool | None  # float64 copy also violates some disjunct; None: not run


def cast_into_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                  dtype: np.dtype) -> np.ndarray:
    """Clip ``x`` into the box so that, after casting to ``dtype``, it is still inside.

    Returns the cast values as float64.  Where the box holds no value of
    ``dtype`` (narrower than one ulp) the nearest one to the box is kept.
    """
    dtype = np.dtype(dtype)
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    cast = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), lower, upper).astype(dtype)
    if dtype.kind != "f":
        return cast.astype(np.float64)
    too_high = cast.astype(np.float64) > upper
    cast[too_high] = np.nextafter(cast[too_high], dtype.type(-np.inf))
    too_low = cast.astype(np.float64) < lower
    cast[too_low] = np.nextafter(cast[too_low], dtype.type(np.inf))
    return cast.astype(np.float64)


def _holding_disjunct(case: SpecCase, y: np.ndarray) -> int | None:
    for index, dj in enumerate(case.disjuncts):
        d = np.asarray(dj.d, dtype=np.float64).reshape(-1)
        if d.size == 0 or bool(np.all(np.asarray(dj.C, dtype=np.float64) @ y <= d)):
            return index
    return None


def confirm_counterexample(runner: OnnxRunner, case: SpecCase,
                           x: np.ndarray) -> Confirmation | None:
    """Confirm ``x`` on the original model, or return None if no disjunct holds there."""
    fed = cast_into_box(x, case.lower, case.upper, runner.input_dtype)
    y = runner.run(fed)
    index = _holding_disjunct(case, y)
    if index is None:
        return None
    y64 = runner.run64(fed)
    agrees = None if y64 is None else _holding_disjunct(case, y64) is not None
    return Confirmation(x=fed, y=y, disjunct=index, float64_agrees=agrees)
