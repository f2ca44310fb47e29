"""Operator classes (one per operator: forward, interval, relaxation) and their registry."""
from bounds.ops import nonlinear as nl
from bounds.ops import piecewise as pw
from bounds.ops.activation import Relu, Sigmoid, Tanh
from bounds.ops.bilinear import MatMul, Mul, Square
from bounds.ops.softmax import Softmax

# Every elementwise op with a linear relaxation; the soundness suite runs over all of them.
ELEMENTWISE_OPS = {"Relu": Relu, "Sigmoid": Sigmoid, "Tanh": Tanh,
                   **{cls.__name__: cls for cls in (
                       nl.Erf, nl.Exp, nl.Gelu, nl.GeluTanh, nl.Log, nl.Pow, nl.Reciprocal,
                       nl.Silu, nl.Softplus, nl.Sqrt, pw.Abs, pw.Clip, pw.Cos, pw.Floor,
                       pw.LeakyRelu, pw.Sign, pw.Sin)}}
NONLINEAR_OPS = {**ELEMENTWISE_OPS, "Softmax": Softmax, "Mul": Mul, "MatMul": MatMul,
                 "Square": Square}

__all__ = ["ELEMENTWISE_OPS", "NONLINEAR_OPS", "Relu", "Sigmoid", "Softmax", "Tanh"]
