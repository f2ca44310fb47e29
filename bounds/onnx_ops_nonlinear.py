"""ONNX converters for the general univariate nonlinearities, and the GeLU graph rewrite.

``CONVERTERS`` maps ONNX op types to converters (merged by
``bounds.onnx_registry``): Gelu (opset 20, approximate none/tanh), Erf, Sin,
Cos, Exp, Log, Reciprocal, Sqrt, Pow (constant exponent), LeakyRelu, Softplus,
Sign, Floor, Abs, Clip (constant min/max from inputs or attributes) and
HardSigmoid (an affine op followed by Clip(0, 1)).

``fuse_gelu`` rewrites the exported erf form of GeLU,
``Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)`` and its variants
(multiplication by 1/sqrt 2, constants on either side, the 0.5 applied to x
first, a final division by 2), into one standard ``Gelu`` node, so that GeLU
is relaxed as one op instead of through Erf and a product of two variables.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from bounds.onnx_import import ConversionError, ImportContext
from bounds.onnx_ops import Converter, attrs, tensor
from bounds.ops.affine import ElementwiseAffine
from bounds.ops.nonlinear import Erf, Exp, Gelu, GeluTanh, Log, Pow, Reciprocal, Softplus, Sqrt
from bounds.ops.piecewise import Abs, Clip, Cos, Floor, LeakyRelu, Sign, Sin


def _unary(op_class) -> Converter:
    def convert(ctx: ImportContext, node: onnx.NodeProto) -> None:
        ctx.add(node.output[0], op_class(), [node.input[0]])
    return convert


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def convert_gelu(ctx, node):
    approximate = _text(attrs(node).get("approximate", "none"))
    if approximate not in ("none", "tanh"):
        raise ConversionError(f"Gelu with approximate='{approximate}'")
    op = Gelu() if approximate == "none" else GeluTanh()
    ctx.add(node.output[0], op, [node.input[0]])


def _scalar(ctx, name: str, what: str) -> float:
    """A constant operand holding one value (possibly repeated)."""
    if not ctx.is_const(name):
        raise ConversionError(f"{what} must be a constant")
    value = np.asarray(ctx.const(name), dtype=np.float64)
    if value.size == 0 or not np.all(value == value.reshape(-1)[0]):
        raise ConversionError(f"{what} must be one value (got an array of shape {value.shape})")
    return float(value.reshape(-1)[0])


def convert_pow(ctx, node):
    base, exponent = node.input[0], node.input[1]
    if ctx.is_const(base):
        raise ConversionError("Pow with a variable exponent")
    p = _scalar(ctx, exponent, "the exponent")
    full = np.broadcast_shapes((1,) + ctx.shape(base), np.shape(ctx.const(exponent)))
    if full[1:] != ctx.shape(base):
        raise ConversionError("Pow whose constant exponent broadcasts the base to a new shape")
    ctx.add(node.output[0], Pow(p), [base])


def convert_leaky_relu(ctx, node):
    ctx.add(node.output[0], LeakyRelu(attrs(node).get("alpha", 0.01)), [node.input[0]])


def convert_clip(ctx, node):
    x = node.input[0]
    if ctx.opset < 11:
        a = attrs(node)
        low, high = a.get("min", -math.inf), a.get("max", math.inf)
    else:
        def bound(i: int, default: float) -> float:
            if len(node.input) > i and node.input[i]:
                return _scalar(ctx, node.input[i], "a Clip bound")
            return default
        low, high = bound(1, -math.inf), bound(2, math.inf)
    ctx.add(node.output[0], Clip(low, high), [x])


def convert_hard_sigmoid(ctx, node):
    a = attrs(node)
    x = node.input[0]
    inner = f"{node.output[0]}::affine"
    affine = ElementwiseAffine(tensor(np.array(a.get("alpha", 0.2))),
                               tensor(np.array(a.get("beta", 0.5))), ctx.shape(x))
    ctx.add(inner, affine, [x])
    ctx.add(node.output[0], Clip(0.0, 1.0), [inner])


CONVERTERS: dict[str, Converter] = {
    "Gelu": convert_gelu,
    "Erf": _unary(Erf),
    "Sin": _unary(Sin),
    "Cos": _unary(Cos),
    "Exp": _unary(Exp),
    "Log": _unary(Log),
    "Reciprocal": _unary(Reciprocal),
    "Sqrt": _unary(Sqrt),
    "Pow": convert_pow,
    "LeakyRelu": convert_leaky_relu,
    "Softplus": _unary(Softplus),
    "Sign": _unary(Sign),
    "Floor": _unary(Floor),
    "Abs": _unary(Abs),
    "Clip": convert_clip,
    "HardSigmoid": convert_hard_sigmoid,
}


# --- the GeLU rewrite -----------------------------------------------------------------------

class _View:
    """Producers, consumers and scalar constants of a graph (read-only helper for the rewrite)."""

    def __init__(self, graph: onnx.GraphProto):
        self.constants: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute:
                value = onnx.helper.get_attribute_value(node.attribute[0])
                if isinstance(value, onnx.TensorProto):
                    self.constants[node.output[0]] = numpy_helper.to_array(value)
                elif isinstance(value, (int, float)):
                    self.constants[node.output[0]] = np.array(value)
            for out in node.output:
                self.producer[out] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        if value is None or value.size != 1:
            return None
        return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])

    def split(self, node: onnx.NodeProto, expect: float) -> str | None:
        """For a binary node with one constant operand close to ``expect``: the other operand."""
        if len(node.input) != 2:
            return None
        for const, other in ((node.input[1], node.input[0]), (node.input[0], node.input[1])):
            value = self.scalar(const)
            if value is not None and math.isclose(value, expect, rel_tol=1e-6):
                if node.op_type == "Div" and const != node.input[1]:
                    return None
                return other
        return None

    def only_user(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if name in self.outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]


def _gelu_input(view: _View, erf: onnx.NodeProto) -> str | None:
    scale = view.producer.get(erf.input[0])
    if scale is None or view.only_user(erf.input[0], "Erf") is None:
        return None
    if scale.op_type == "Div":
        return view.split(scale, math.sqrt(2))
    if scale.op_type == "Mul":
        return view.split(scale, math.sqrt(0.5))
    return None


def _match_gelu(view: _View, erf: onnx.NodeProto) -> tuple[str, list, onnx.NodeProto] | None:
    """(x, nodes of the pattern, final node) for the GeLU pattern around ``erf``, or None."""
    x = _gelu_input(view, erf)
    if x is None or x in view.constants:
        return None
    add = view.only_user(erf.output[0], "Add")
    if add is None or view.split(add, 1.0) != erf.output[0]:
        return None
    mul = view.only_user(add.output[0], "Mul")
    if mul is None:
        return None
    other = mul.input[1] if mul.input[0] == add.output[0] else mul.input[0]
    nodes = [view.producer[erf.input[0]], erf, add, mul]
    if other == x:  # (x * (1 + erf)) then * 0.5 or / 2
        half = view.only_user(mul.output[0], "Mul") or view.only_user(mul.output[0], "Div")
        if half is None or view.split(half, 0.5 if half.op_type == "Mul" else 2.0) != \
                mul.output[0]:
            return None
        return x, nodes + [half], half
    half = view.producer.get(other)  # (0.5 * x) * (1 + erf)
    if half is None or half.op_type != "Mul" or view.split(half, 0.5) != x or \
            view.only_user(other, "Mul") is not mul:
        return None
    return x, nodes + [half], mul


def fuse_gelu(model: onnx.ModelProto, domain: str = "") -> onnx.ModelProto:
    """A copy of ``model`` with every erf-form GeLU subgraph replaced by one ``Gelu`` node.

    The node is the standard ONNX Gelu (approximate="none", same function) in
    ``domain`` (default: the standard one); intermediate results used elsewhere
    block the rewrite.  Unused constants are left for the importer to fold.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = _View(out.graph)
    removed: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    for node in out.graph.node:
        if node.op_type != "Erf" or id(node) in removed:
            continue
        match = _match_gelu(view, node)
        if match is None or any(id(n) in removed for n in match[1]):
            continue
        x, nodes, final = match
        removed.update(id(n) for n in nodes)
        replace[id(final)] = onnx.helper.make_node(
            "Gelu", [x], [final.output[0]], name=(final.name or "gelu") + "/fused_gelu",
            domain=domain)
    if not replace:
        return out
    kept = [replace.get(id(n), n) for n in out.graph.node
            if id(n) not in removed or id(n) in replace]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out
