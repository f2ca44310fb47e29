"""ONNX converters for products of variables: Mul, Div and MatMul.

These replace the basic converters of ``bounds.onnx_ops`` in the merged
registry: with a constant operand they delegate to them (an affine op), with
two variable operands they add the bivariate ops of ``bounds.ops.bilinear``.
``x * x`` becomes ``Square`` (tangent below, chord above: tighter than the
McCormick planes of (x, x)).  Div by a variable is ``x * (1/y)``: a Reciprocal
node followed by a Mul (or a constant scale when the numerator is constant).
"""
from __future__ import annotations

import numpy as np

from bounds.onnx_import import ConversionError
from bounds.onnx_ops import Converter, _binary_affine, convert_matmul, per_sample, tensor
from bounds.ops.affine import ElementwiseAffine
from bounds.ops.bilinear import MatMul, Mul, Square
from bounds.ops.nonlinear import Reciprocal


def convert_mul(ctx, node):
    a, b = node.input
    if ctx.is_const(a) or ctx.is_const(b):
        _binary_affine(ctx, node, "Mul")
    elif ctx.resolve(a) == ctx.resolve(b):
        ctx.add(node.output[0], Square(), [a])
    else:
        ctx.add(node.output[0], Mul([ctx.shape(a), ctx.shape(b)]), [a, b])


def convert_div(ctx, node):
    a, b = node.input
    if ctx.is_const(b):
        _binary_affine(ctx, node, "Div")
        return
    recip = f"{node.output[0]}::reciprocal"
    ctx.add(recip, Reciprocal(), [b])
    if ctx.is_const(a):
        numerator = per_sample(ctx, ctx.const(a).astype(np.float64), b)
        op = ElementwiseAffine(tensor(numerator), None, ctx.shape(recip))
        ctx.add(node.output[0], op, [recip])
    else:
        ctx.add(node.output[0], Mul([ctx.shape(a), ctx.shape(recip)]), [a, recip])


def convert_matmul_bilinear(ctx, node):
    left, right = node.input
    if ctx.is_const(left) or ctx.is_const(right):
        convert_matmul(ctx, node)
        return
    shapes = [ctx.shape(left), ctx.shape(right)]
    if min(len(s) for s in shapes) < 2:
        raise ConversionError(f"MatMul of two variables with per-sample shapes {shapes[0]} "
                              f"and {shapes[1]} (a vector operand would mix the batch axis)")
    try:
        op = MatMul(shapes)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    ctx.add(node.output[0], op, [left, right])


CONVERTERS: dict[str, Converter] = {
    "Mul": convert_mul,
    "Div": convert_div,
    "MatMul": convert_matmul_bilinear,
}
