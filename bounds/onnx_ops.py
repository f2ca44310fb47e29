"""ONNX op type -> converter into our ops: the explicit registry of supported operators.

A converter receives the import context and the ONNX node, reads constant
operands from ``ctx.constants`` and adds our op(s) with ``ctx.add``.  Nodes
whose inputs are all constant never reach a converter (they are folded).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch

from bounds.onnx_import import ConversionError, ImportContext
from bounds.ops.activation import Relu, Sigmoid, Tanh
from bounds.ops.affine import (
    AddVar,
    ConstMatMulLeft,
    Conv,
    ElementwiseAffine,
    Linear,
    Rearrange,
    Reshape,
)
from bounds.ops.softmax import Softmax

Converter = Callable[[ImportContext, onnx.NodeProto], None]


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def tensor(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float64))


def per_sample(ctx: ImportContext, array: np.ndarray, var: str) -> np.ndarray:
    """Strip the batch axis from a constant aligned with a full (batched) tensor."""
    rank = len(ctx.shape(var)) + 1
    array = np.asarray(array)
    if array.ndim > rank:
        raise ConversionError(f"constant of rank {array.ndim} broadcasts over the batch axis")
    if array.ndim == rank:
        if array.shape[0] != 1:
            raise ConversionError("constant varies along the batch axis")
        array = array[0]
    return array


# --- activations -------------------------------------------------------------------------

def _unary(op_class) -> Converter:
    def convert(ctx, node):
        ctx.add(node.output[0], op_class(), [node.input[0]])
    return convert


def convert_identity(ctx, node):
    ctx.add_alias(node.output[0], node.input[0])


def convert_softmax(ctx, node):
    x = node.input[0]
    rank = len(ctx.shape(x)) + 1
    axis = attrs(node).get("axis", -1 if ctx.opset >= 13 else 1)
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise ConversionError("softmax over the batch axis")
    if ctx.opset < 13 and axis != rank - 1:
        raise ConversionError("opset<13 softmax over several trailing axes")
    ctx.add(node.output[0], Softmax(axis), [x])


# --- affine with constants ----------------------------------------------------------------

def convert_gemm(ctx, node):
    a = attrs(node)
    x, w = node.input[0], node.input[1]
    if ctx.is_const(x) or not ctx.is_const(w):
        raise ConversionError("Gemm with a variable B operand")
    if a.get("transA", 0):
        raise ConversionError("Gemm with transA=1 on the variable operand")
    weight = ctx.const(w).astype(np.float64) * a.get("alpha", 1.0)
    weight = weight if a.get("transB", 0) else weight.T
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2]).astype(np.float64) * a.get("beta", 1.0)
        bias = np.broadcast_to(c.reshape(-1) if c.size == weight.shape[0] else c,
                               (weight.shape[0],))
    ctx.add(node.output[0], Linear(tensor(weight), None if bias is None else tensor(bias)),
            [x])


def convert_matmul(ctx, node):
    left, right = node.input
    if ctx.is_const(right) and not ctx.is_const(left):
        w = ctx.const(right).astype(np.float64)
        if w.ndim == 1:  # vector: a one-output Linear, then drop that axis
            hidden = node.output[0] + "/matvec"
            ctx.add(hidden, Linear(tensor(w[None]), None), [left])
            shape = ctx.shape(hidden)
            ctx.add(node.output[0], Reshape(shape, shape[:-1]), [hidden])
            return
        if w.ndim != 2:
            raise ConversionError(f"MatMul with a constant right operand of rank {w.ndim}")
        ctx.add(node.output[0], Linear(tensor(w.T), None), [left])
    elif ctx.is_const(left) and not ctx.is_const(right):
        w = ctx.const(left).astype(np.float64)
        if len(ctx.shape(right)) < 2:
            raise ConversionError("MatMul of a constant with a per-sample vector")
        if w.ndim == len(ctx.shape(right)) + 1:
            w = per_sample(ctx, w, right)
        ctx.add(node.output[0], ConstMatMulLeft(tensor(w), ctx.shape(right)), [right])
    else:
        raise ConversionError("MatMul of two variables")


def _binary_affine(ctx, node, kind: str):
    a, b = node.input
    if not ctx.is_const(a) and not ctx.is_const(b):
        if kind in ("Add", "Sub"):
            ctx.add(node.output[0], AddVar(1.0 if kind == "Add" else -1.0,
                                           [ctx.shape(a), ctx.shape(b)]), [a, b])
            return
        raise ConversionError(f"{kind} of two variables")
    var, const_name = (a, b) if ctx.is_const(b) else (b, a)
    c = per_sample(ctx, ctx.const(const_name).astype(np.float64), var)
    if kind == "Add":
        scale, shift = None, c
    elif kind == "Sub":
        scale, shift = (None, -c) if var == a else (-np.ones_like(c), c)
    elif kind == "Mul":
        scale, shift = c, None
    else:  # Div
        if var != a:
            raise ConversionError("division by a variable")
        if np.any(c == 0):
            raise ConversionError("division by a constant containing zero")
        scale, shift = 1.0 / c, None
    op = ElementwiseAffine(None if scale is None else tensor(scale),
                           None if shift is None else tensor(shift), ctx.shape(var))
    ctx.add(node.output[0], op, [var])


def convert_neg(ctx, node):
    op = ElementwiseAffine(tensor(np.array(-1.0)), None, ctx.shape(node.input[0]))
    ctx.add(node.output[0], op, [node.input[0]])


def convert_conv(ctx, node):
    a = attrs(node)
    x = node.input[0]
    weight = ctx.const(node.input[1]).astype(np.float64)
    bias = ctx.const(node.input[2]).astype(np.float64) if len(node.input) > 2 and \
        node.input[2] else None
    nd = weight.ndim - 2
    if nd not in (1, 2):
        raise ConversionError(f"{nd}-d convolution")
    strides = a.get("strides", [1] * nd)
    dilations = a.get("dilations", [1] * nd)
    pads = list(a.get("pads", [0] * (2 * nd)))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    in_shape = ctx.shape(x)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(in_shape[1:], weight.shape[2:], strides, dilations,
                          auto_pad == "SAME_UPPER")
    elif auto_pad not in ("NOTSET", "VALID"):
        raise ConversionError(f"auto_pad={auto_pad}")
    op = Conv(tensor(weight), None if bias is None else tensor(bias), strides, pads, dilations,
              a.get("group", 1), in_shape)
    ctx.add(node.output[0], op, [x])


def _same_pads(spatial, kernel, strides, dilations, upper: bool) -> list[int]:
    begin, end = [], []
    for n, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if upper else big)
        end.append(big if upper else small)
    return begin + end


def convert_batchnorm(ctx, node):
    x = node.input[0]
    scale, bias, mean, var = (ctx.const(n).astype(np.float64) for n in node.input[1:5])
    eps = attrs(node).get("epsilon", 1e-5)
    s = scale / np.sqrt(var + eps)
    trailing = (1,) * (len(ctx.shape(x)) - 1)
    op = ElementwiseAffine(tensor(s.reshape((-1,) + trailing)),
                           tensor((bias - mean * s).reshape((-1,) + trailing)), ctx.shape(x))
    ctx.add(node.output[0], op, [x])


# --- shapes -------------------------------------------------------------------------------

def convert_flatten(ctx, node):
    x = node.input[0]
    shape = ctx.shape(x)
    axis = attrs(node).get("axis", 1)
    axis = axis + len(shape) + 1 if axis < 0 else axis
    if axis <= 1:
        out = (int(np.prod(shape)),)
    else:
        out = (int(np.prod(shape[:axis - 1])), int(np.prod(shape[axis - 1:])))
    ctx.add(node.output[0], Reshape(shape, out), [x])


def convert_reshape(ctx, node):
    x = node.input[0]
    shape = ctx.shape(x)
    target = [int(v) for v in ctx.const(node.input[1]).reshape(-1)]
    full = (1,) + shape
    if target and target[0] in (0, 1, -1) and \
            (target[0] != -1 or -1 not in target[1:]):
        target = [full[i] if v == 0 else v for i, v in enumerate(target)][1:]
    elif int(np.prod([v for v in target if v > 0])) == int(np.prod(shape)) or -1 in target:
        pass  # a target without the batch axis (valid for batch size one)
    else:
        raise ConversionError(f"reshape to {target} changes the batch axis")
    size = int(np.prod(shape))
    if -1 in target:
        known = int(np.prod([v for v in target if v != -1]))
        target = [size // known if v == -1 else v for v in target]
    if int(np.prod(target)) != size:
        raise ConversionError(f"reshape of {shape} to {target}")
    ctx.add(node.output[0], Reshape(shape, tuple(target)), [x])


def _axes(ctx, node) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        return [int(v) for v in ctx.const(node.input[1]).reshape(-1)]
    value = attrs(node).get("axes")
    return None if value is None else list(value)


def convert_squeeze(ctx, node):
    x = node.input[0]
    shape = ctx.shape(x)
    full = (1,) + shape
    axes = _axes(ctx, node)
    axes = [i for i, n in enumerate(full) if n == 1 and i > 0] if axes is None else \
        [a + len(full) if a < 0 else a for a in axes]
    if 0 in axes:
        raise ConversionError("squeeze of the batch axis")
    out = tuple(n for i, n in enumerate(full) if i not in axes)[1:]
    ctx.add(node.output[0], Reshape(shape, out), [x])


def convert_unsqueeze(ctx, node):
    x = node.input[0]
    shape = ctx.shape(x)
    axes = _axes(ctx, node) or []
    rank = len(shape) + 1 + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    if 0 in axes:
        raise ConversionError("unsqueeze in front of the batch axis")
    full = list((1,) + shape)
    for a in axes:
        full.insert(a, 1)
    ctx.add(node.output[0], Reshape(shape, tuple(full[1:])), [x])


def convert_transpose(ctx, node):
    x = node.input[0]
    shape = ctx.shape(x)
    perm = attrs(node).get("perm", list(range(len(shape), -1, -1)))
    if perm[0] != 0:
        raise ConversionError("transpose moving the batch axis")
    perm = tuple(perm)
    ctx.add(node.output[0], Rearrange(lambda t: t.permute(perm), shape, f"Transpose{perm}"),
            [x])


def shape_of_variable(ctx, node):
    shape = np.array((1,) + ctx.shape(node.input[0]), dtype=np.int64)
    ctx.constants[node.output[0]] = shape


CONVERTERS: dict[str, Converter] = {
    "Relu": _unary(Relu),
    "Sigmoid": _unary(Sigmoid),
    "Tanh": _unary(Tanh),
    "Softmax": convert_softmax,
    "Identity": convert_identity,
    "Dropout": convert_identity,
    "Gemm": convert_gemm,
    "MatMul": convert_matmul,
    "Add": lambda ctx, node: _binary_affine(ctx, node, "Add"),
    "Sub": lambda ctx, node: _binary_affine(ctx, node, "Sub"),
    "Mul": lambda ctx, node: _binary_affine(ctx, node, "Mul"),
    "Div": lambda ctx, node: _binary_affine(ctx, node, "Div"),
    "Neg": convert_neg,
    "Conv": convert_conv,
    "BatchNormalization": convert_batchnorm,
    "Flatten": convert_flatten,
    "Reshape": convert_reshape,
    "Squeeze": convert_squeeze,
    "Unsqueeze": convert_unsqueeze,
    "Transpose": convert_transpose,
}

# Ops on variables whose result is a constant (shapes are static here).
VARIABLE_TO_CONSTANT: dict[str, Converter] = {
    "Shape": shape_of_variable,
}

# Always folded when their inputs are constant.
FOLDED_ONLY = ("Constant",)

