"""The merged registry of ONNX converters: every op type we claim to support.

Each area keeps its converters in its own module; this module only merges them.
"""
from __future__ import annotations

from bounds.onnx_ops import CONVERTERS as BASIC
from bounds.onnx_ops import FOLDED_ONLY, VARIABLE_TO_CONSTANT

CONVERTERS = {**BASIC}


def supported_op_types() -> list[str]:
    """Every ONNX op type we convert (or fold), sorted."""
    return sorted(set(CONVERTERS) | set(VARIABLE_TO_CONSTANT) | set(FOLDED_ONLY))
