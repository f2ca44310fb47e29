"""Small ONNX models as numpy operator chains, for the torch-free quick stage.

``read_quick_model(path)`` reads the file with ``genbab.onnx_lite`` (no
``onnx``, no torch) and converts each node to an operator of
``genbab.quick_ops``.  Only a whitelist is converted: Gemm, MatMul with a
constant matrix, Add / Sub / Mul / Div with a constant, Relu, Sigmoid, Tanh,
Flatten, Reshape, Identity and Constant, on a single float32 / float64 input
whose batch axis is 1.  Anything else -- another op, an unknown attribute, a
model over ``Limits`` -- raises ``Unsupported``: the quick stage then
declines and the full pipeline (which reports real errors) runs.
"""
from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genbab.onnx_lite import NP_DTYPES, LiteError, parse_model, tensor_to_array
from genbab.quick_ops import Affine, Linear, QuickOp, Relu, Reshape, SShaped


class Unsupported(Exception):
    """The model is outside what the quick stage handles; ``str()`` says why."""


@dataclass(frozen=True)
class Limits:
    """Models the quick stage takes on: small ones, where declining costs little."""

    max_bytes: int = 4_000_000
    max_parameters: int = 100_000
    max_neurons: int = 10_000  # values of all variable tensors, input included


@dataclass(frozen=True)
class Step:
    """One operator applied to one variable tensor."""

    op: QuickOp
    source: str
    target: str


@dataclass(frozen=True)
class QuickModel:
    """A chain of operators from the model's input to its output, batch axis first."""

    data: bytes  # the serialised model, for onnxruntime
    input_name: str
    input_shape: tuple[int, ...]  # as onnxruntime is fed: batch axis (1) included
    input_dtype: np.dtype
    output_name: str
    n_outputs: int
    steps: tuple[Step, ...]
    n_parameters: int
    n_neurons: int

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape, dtype=np.int64))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Float64 outputs ``[k, n_outputs]`` at flat inputs ``x`` ``[k, n_inputs]``."""
        x = np.asarray(x, np.float64)
        return self._run(x.reshape(x.shape[0], *self.input_shape[1:]),
                         lambda op, v: op.forward(v)).reshape(x.shape[0], -1)

    def interval(self, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat output bounds over the flat input box, valid for float32 evaluation."""
        shape = (1, *self.input_shape[1:])
        box = (np.asarray(lower, np.float64).reshape(shape),
               np.asarray(upper, np.float64).reshape(shape))
        lo, hi = self._run(box, lambda op, b: op.interval(*b))
        return lo.reshape(-1), hi.reshape(-1)

    def _run(self, value, apply: Callable):
        env = {self.input_name: value}
        for step in self.steps:
            env[step.target] = apply(step.op, env[step.source])
        return env[self.output_name]


def read_quick_model(path: str | Path, limits: Limits | None = None) -> QuickModel:
    """Read and convert the model at ``path`` (``.onnx`` or ``.onnx.gz``), or raise Unsupported."""
    limits = limits or Limits()
    path = Path(path)
    try:
        if path.stat().st_size > limits.max_bytes:
            raise Unsupported(f"model file over {limits.max_bytes} bytes")
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise Unsupported(f"cannot read the model ({type(exc).__name__})") from None
    if len(data) > limits.max_bytes:
        raise Unsupported(f"model over {limits.max_bytes} bytes")
    try:
        return _convert(parse_model(data), data, limits)
    except LiteError as exc:
        raise Unsupported(str(exc)) from None


@dataclass
class _Context:
    constants: dict[str, np.ndarray]
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # [1, *shape] per variable

    def shape(self, name: str) -> tuple[int, ...]:
        return self.samples[name].shape


def _convert(proto, data: bytes, limits: Limits) -> QuickModel:
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 7 or len(proto.functions) or len(graph.sparse_initializer):
        raise Unsupported("opset below 7, local functions or sparse initialisers")
    ctx = _Context({init.name: tensor_to_array(init) for init in graph.initializer})
    n_parameters = sum(int(c.size) for c in ctx.constants.values())
    if n_parameters > limits.max_parameters:
        raise Unsupported(f"over {limits.max_parameters} parameters")
    inputs = [vi for vi in graph.input if vi.name not in ctx.constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise Unsupported("not one input and one output")
    name, shape, dtype = _input(inputs[0])
    ctx.samples[name] = np.random.default_rng(0).random(shape)
    steps = [_step(node, ctx) for node in graph.node]
    steps = tuple(s for s in steps if s is not None)
    out = graph.output[0].name
    if out not in ctx.samples or out == name:
        raise Unsupported("the output is not computed from the input")
    n_neurons = sum(int(v.size) for v in ctx.samples.values())
    if n_neurons > limits.max_neurons:
        raise Unsupported(f"over {limits.max_neurons} neurons")
    return QuickModel(data, name, shape, dtype, out, int(ctx.samples[out].size), steps,
                      n_parameters, n_neurons)


def _input(value_info) -> tuple[str, tuple[int, ...], np.dtype]:
    tensor_type = value_info.type.tensor_type
    if tensor_type.elem_type not in NP_DTYPES or not tensor_type.HasField("shape"):
        raise Unsupported("input not float32/float64 with a known shape")
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor_type.shape.dim]
    if len(dims) < 2 or dims[0] > 1 or any(d <= 0 for d in dims[1:]):
        raise Unsupported("input shape is not [batch 1, fixed dims...]")
    return value_info.name, (1, *dims[1:]), NP_DTYPES[tensor_type.elem_type]


_ATTR_VALUE = {1: "f", 2: "i", 3: "s", 4: "t", 6: "floats", 7: "ints"}  # AttributeProto.type


def _attrs(node, allowed: tuple[str, ...]) -> dict:
    values = {}
    for attr in node.attribute:
        if attr.name not in allowed or attr.ref_attr_name or attr.type not in _ATTR_VALUE:
            raise Unsupported(f"{node.op_type}: attribute '{attr.name}'")
        value = getattr(attr, _ATTR_VALUE[attr.type])
        values[attr.name] = tensor_to_array(value) if attr.type == 4 else \
            list(value) if attr.type in (6, 7) else value
    return values


def _step(node, ctx: _Context) -> Step | None:
    """Convert one node: a Step, or None for a constant it records."""
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        raise Unsupported(f"{node.op_type}: custom domain or several outputs")
    variable = [i for i in node.input if i and i not in ctx.constants]
    if not variable and node.op_type == "Constant":
        ctx.constants[node.output[0]] = _constant(node)
        return None
    if len(variable) != 1 or variable[0] not in ctx.samples:
        raise Unsupported(f"{node.op_type}: needs exactly one variable input")
    convert = _CONVERTERS.get(node.op_type)
    if convert is None:
        raise Unsupported(f"op {node.op_type}")
    op = convert(node, ctx, variable[0])
    sample = op.forward(ctx.samples[variable[0]])
    if sample.ndim < 1 or sample.shape[0] != 1:
        raise Unsupported(f"{node.op_type}: result loses the batch axis")
    ctx.samples[node.output[0]] = sample
    return Step(op, variable[0], node.output[0])


def _constant(node) -> np.ndarray:
    attrs = _attrs(node, ("value", "value_float", "value_floats", "value_int", "value_ints"))
    if len(attrs) != 1:
        raise Unsupported("Constant without one value")
    (key, value), = attrs.items()
    if key == "value":
        return value
    return np.asarray(value, np.float32 if "float" in key else np.int64)


def _float_const(ctx: _Context, name: str, op_type: str) -> np.ndarray:
    value = ctx.constants.get(name)
    if value is None or value.dtype.kind != "f" or not np.all(np.isfinite(value)):
        raise Unsupported(f"{op_type}: operand '{name}' is not a finite float constant")
    return value.astype(np.float64)


def _gemm(node, ctx, x):
    attrs = _attrs(node, ("alpha", "beta", "transA", "transB"))
    inputs = list(node.input) + [""] * (3 - len(node.input))
    if inputs[0] != x or attrs.get("transA", 0) or len(ctx.shape(x)) != 2:
        raise Unsupported("Gemm: variable must be A, 2-D, not transposed")
    W = _float_const(ctx, inputs[1], "Gemm")
    if W.ndim != 2:
        raise Unsupported("Gemm: B must be 2-D")
    W = (W.T if attrs.get("transB", 0) else W) * attrs.get("alpha", 1.0)
    b = np.zeros(W.shape[1])
    if inputs[2]:
        C = _float_const(ctx, inputs[2], "Gemm") * attrs.get("beta", 1.0)
        try:
            b = np.broadcast_to(C, (1, W.shape[1])).reshape(-1).copy()
        except ValueError:
            raise Unsupported("Gemm: C does not broadcast to [1, N]") from None
    return Linear(W, b)


def _matmul(node, ctx, x):
    _attrs(node, ())
    if node.input[0] != x or len(ctx.shape(x)) < 2:
        raise Unsupported("MatMul: variable must be the left operand, at least 2-D")
    W = _float_const(ctx, node.input[1], "MatMul")
    if W.ndim != 2 or W.shape[0] != ctx.shape(x)[-1]:
        raise Unsupported("MatMul: right operand must be a matching 2-D matrix")
    return Linear(W, np.zeros(W.shape[1]))


def _elementwise(node, ctx, x):
    _attrs(node, ())
    other = node.input[1] if node.input[0] == x else node.input[0]
    c = _float_const(ctx, other, node.op_type)
    shape = ctx.shape(x)
    if c.ndim > len(shape) or (c.ndim == len(shape) and c.shape[0] != 1):
        raise Unsupported(f"{node.op_type}: constant would broadcast over the batch axis")
    first = node.input[0] == x
    one, zero = np.ones(()), np.zeros(())
    if node.op_type == "Add":
        return Affine(one, c)
    if node.op_type == "Sub":
        return Affine(one, -c) if first else Affine(-one, c)
    if node.op_type == "Mul":
        return Affine(c, zero)
    if not first or np.any(c == 0):
        raise Unsupported("Div: only by a non-zero constant")
    return Affine(c, zero, divide=True)


def _activation(node, ctx, x):
    _attrs(node, ())
    return Relu() if node.op_type == "Relu" else SShaped(node.op_type)


def _flatten(node, ctx, x):
    shape = ctx.shape(x)
    axis = _attrs(node, ("axis",)).get("axis", 1)
    if axis < 0:
        axis += len(shape)
    if axis not in (0, 1):  # with a batch axis of 1 both keep it and flatten the rest
        raise Unsupported("Flatten: axis other than 0 or 1")
    return Reshape((int(np.prod(shape[1:], dtype=np.int64)),))


def _reshape(node, ctx, x):
    allowzero = _attrs(node, ("allowzero",)).get("allowzero", 0)
    target = ctx.constants.get(node.input[1]) if len(node.input) == 2 else None
    if target is None or target.dtype.kind != "i" or target.ndim != 1 or node.input[0] != x:
        raise Unsupported("Reshape: the shape must be a constant 1-D integer tensor")
    shape = ctx.shape(x)
    dims = [int(d) for d in target]
    if allowzero and 0 in dims:
        raise Unsupported("Reshape: allowzero with a zero dimension")
    dims = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(dims)]
    total = int(np.prod(shape, dtype=np.int64))
    if dims.count(-1) == 1:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        dims[dims.index(-1)] = total // known if known > 0 else -2
    if any(d <= 0 for d in dims) or int(np.prod(dims, dtype=np.int64)) != total or dims[0] != 1:
        raise Unsupported("Reshape: target shape does not keep the batch axis of 1")
    return Reshape(tuple(dims[1:]))


def _identity(node, ctx, x):
    _attrs(node, ())
    return Reshape(ctx.shape(x)[1:])


_CONVERTERS: dict[str, Callable] = {
    "Gemm": _gemm, "MatMul": _matmul, "Add": _elementwise, "Sub": _elementwise,
    "Mul": _elementwise, "Div": _elementwise, "Relu": _activation, "Sigmoid": _activation,
    "Tanh": _activation, "Flatten": _flatten, "Reshape": _reshape, "Identity": _identity,
}
