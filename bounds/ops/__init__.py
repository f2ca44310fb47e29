"""Operator classes (one per operator: forward, interval, relaxation) and their registry."""
from bounds.ops.activation import Relu, Sigmoid, Tanh
from bounds.ops.softmax import Softmax

# Every elementwise op with a linear relaxation; the soundness suite runs over all of them.
ELEMENTWISE_OPS = {"Relu": Relu, "Sigmoid": Sigmoid, "Tanh": Tanh}
NONLINEAR_OPS = {**ELEMENTWISE_OPS, "Softmax": Softmax}

__all__ = ["ELEMENTWISE_OPS", "NONLINEAR_OPS", "Relu", "Sigmoid", "Softmax", "Tanh"]
