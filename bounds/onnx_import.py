"""ONNX -> ``bounds.Graph``: constant folding, shape tracing and op conversion.

The model is converted once.  Nodes whose inputs are all constants are folded
with onnx's reference evaluator; every other node is converted by the function
registered for its op type in ``bounds.onnx_registry.CONVERTERS``.  Shapes are
traced by running each new op on a sample tensor.  Every unsupported node is
collected and reported together in one ``UnsupportedModelError``.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from bounds.errors import ModelError, UnsupportedModelError  # re-exported: torch-free home
from bounds.graph import Graph, Node, input_node
from bounds.ops.base import Op


class ConversionError(Exception):
    """Raised by a converter for a node it cannot handle (collected, not shown raw)."""


@dataclass
class ImportContext:
    """State while converting one model: constants, variable samples, produced nodes."""

    opset: int
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)  # [1, *shape] float64
    alias: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    current: str = ""

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def is_const(self, name: str) -> bool:
        return name == "" or name in self.constants

    def const(self, name: str) -> np.ndarray:
        if name not in self.constants:
            raise ConversionError(f"input '{name}' must be a constant")
        return self.constants[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.samples[self.resolve(name)].shape[1:])

    def add(self, output: str, op: Op, inputs: list[str]) -> None:
        names = tuple(self.resolve(i) for i in inputs)
        sample = op.forward(*(self.samples[i] for i in names))
        self.samples[output] = sample
        self.nodes.append(Node(output, op, names, tuple(sample.shape[1:]), self.current))

    def add_alias(self, output: str, source: str) -> None:
        self.alias[output] = self.resolve(source)


def read_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model ({exc.strerror})") from None
    try:
        return onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types
        raise ModelError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from None


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 13


def _input_shape(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    shape = []
    for i, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(d.dim_value)
        elif i == 0:
            shape.append(1)
        else:
            raise ModelError(f"input '{value_info.name}' has a symbolic dimension {i} "
                             f"('{d.dim_param}'); only the batch dimension may be symbolic")
    if not shape:
        raise ModelError(f"input '{value_info.name}' is a scalar; expected a batch axis")
    return tuple(shape)


def _fold(node: onnx.NodeProto, ctx: ImportContext) -> None:
    from onnx.reference import ReferenceEvaluator

    if node.op_type == "Constant":
        attr = node.attribute[0]
        value = onnx.helper.get_attribute_value(attr)
        array = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) \
            else np.array(value)
        ctx.constants[node.output[0]] = array
        return
    feeds = {name: ctx.constants[name] for name in node.input if name}
    helper = onnx.helper
    graph = helper.make_graph(
        [node], "fold", [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
                         for n in feeds],
        [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
         for n in node.output if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
    evaluator = ReferenceEvaluator(model)
    results = evaluator.run(None, feeds)
    for name, value in zip(node.output, results):
        ctx.constants[name] = np.asarray(value)


def load_onnx(model: str | Path | onnx.ModelProto) -> Graph:
    """Convert an ONNX model (path, ``.onnx.gz`` or proto) into our graph."""
    from bounds.onnx_ops_nonlinear import fuse_gelu  # lazy: that module imports this one
    from bounds.onnx_registry import CONVERTERS, VARIABLE_TO_CONSTANT

    proto = model if isinstance(model, onnx.ModelProto) else read_model(model)
    proto = fuse_gelu(proto)  # the erf form of GeLU becomes one op (tighter than its parts)
    ctx = ImportContext(opset=_opset(proto))
    for init in proto.graph.initializer:
        ctx.constants[init.name] = numpy_helper.to_array(init)
    inputs = [vi for vi in proto.graph.input if vi.name not in ctx.constants]
    if not inputs:
        raise ModelError("the model has no (non-constant) input")
    gen = torch.Generator().manual_seed(0)
    input_nodes = []
    for vi in inputs:
        shape = _input_shape(vi)
        node = input_node(vi.name, shape[1:])
        input_nodes.append(node)
        ctx.samples[vi.name] = torch.rand((1,) + shape[1:], generator=gen, dtype=torch.float64)
    problems: list[tuple[str, str, str]] = []
    broken: set[str] = set()
    for index, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        ctx.current = name
        if any(i in broken for i in node.input):
            broken.update(node.output)
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append((f"{node.domain}.{node.op_type}", name, "custom domain"))
            broken.update(node.output)
            continue
        variable = [i for i in node.input if i and not ctx.is_const(i)]
        try:
            if not variable and node.op_type not in VARIABLE_TO_CONSTANT:
                _fold(node, ctx)
            elif node.op_type in VARIABLE_TO_CONSTANT and variable:
                VARIABLE_TO_CONSTANT[node.op_type](ctx, node)
            elif node.op_type in CONVERTERS:
                CONVERTERS[node.op_type](ctx, node)
            else:
                raise ConversionError("no conversion for this op type")
        except ConversionError as exc:
            problems.append((node.op_type, name, str(exc)))
            broken.update(node.output)
    if problems:
        raise UnsupportedModelError(problems)
    outputs = []
    for vi in proto.graph.output:
        out = ctx.resolve(vi.name)
        if out in ctx.constants or out not in ctx.samples:
            raise ModelError(f"output '{vi.name}' does not depend on the input")
        outputs.append(out)
    full = Graph(tuple(input_nodes) + tuple(ctx.nodes), tuple(n.name for n in input_nodes),
                 tuple(outputs))
    used = set().union(*(full.ancestors(out) for out in outputs))
    nodes = tuple(input_nodes) + tuple(n for n in ctx.nodes if n.name in used)
    return Graph(nodes, full.inputs, full.outputs)


def compare_with_onnxruntime(graph: Graph, proto: onnx.ModelProto, lower: np.ndarray,
                             upper: np.ndarray, samples: int = 8, rtol: float = 1e-3,
                             atol: float = 1e-4, seed: int = 0,
                             reference64=None) -> float:
    """Evaluate graph and onnxruntime at random points of the box; raise ModelError on mismatch.

    Returns the largest absolute difference seen.  Points include the box centre.
    ``reference64(x_flat) -> y_flat or None`` evaluates a float64 copy of the model;
    where it runs, our float64 graph is compared with it (models whose float32
    evaluation cancels badly, e.g. ACOPF graphs, are then still checked tightly).
    """
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    points = lower + rng.random((samples, lower.size)) * (upper - lower)
    points[0] = (lower + upper) / 2
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    full_shape = (1,) + graph.input_node.shape
    graph64, graph32 = graph.to("cpu", torch.float64), graph.to("cpu", torch.float32)
    worst = 0.0
    for point in points:
        x32 = point.astype(np.float32)
        ref = session.run(None, {meta.name: x32.reshape(full_shape)})[0].reshape(-1)
        with torch.no_grad():
            x = torch.from_numpy(x32.astype(np.float64)).reshape(full_shape)
            ours = graph64.forward(x).reshape(-1).numpy()
            ours32 = graph32.forward(x.float()).reshape(-1).double().numpy()
        ref64 = None if reference64 is None else reference64(x32.astype(np.float64))
        if ref64 is not None and ref64.shape == ours.shape:
            ref = np.asarray(ref64, np.float64)
            ours32 = ours  # exact reference: no float32 sensitivity allowance
        if ref.shape != ours.shape:
            raise ModelError(f"internal conversion mismatch: output has {ours.size} values, "
                             f"onnxruntime gives {ref.size}")
        diff = np.abs(ours - ref.astype(np.float64))
        worst = max(worst, float(diff.max(initial=0.0)))
        # a model whose float32 evaluation is itself this far from float64 at this point
        # (cancellation) cannot be compared more closely than that
        sensitivity = 2 * np.abs(ours - ours32)
        if np.any(diff > atol + rtol * np.abs(ref) + sensitivity):
            raise ModelError(f"internal conversion mismatch: our graph and onnxruntime differ "
                             f"by {diff.max():.3g} at a point of the input box")
    return worst
