"""The merged registry of ONNX converters: every op type we claim to support.

Each area keeps its converters in its own module; this module only merges them.
"""
from __future__ import annotations

from bounds.onnx_ops import CONVERTERS as BASIC
from bounds.onnx_ops import FOLDED_ONLY, VARIABLE_TO_CONSTANT
from bounds.onnx_ops_bilinear import CONVERTERS as BILINEAR
from bounds.onnx_ops_nonlinear import CONVERTERS as NONLINEAR
from bounds.onnx_ops_structure import CONVERTERS as STRUCTURE
from bounds.onnx_ops_structure import VARIABLE_TO_CONSTANT as STRUCTURE_TO_CONSTANT

CONVERTERS = {**BASIC, **BILINEAR, **NONLINEAR, **STRUCTURE}
VARIABLE_TO_CONSTANT = {**VARIABLE_TO_CONSTANT, **STRUCTURE_TO_CONSTANT}


def supported_op_types() -> list[str]:
    """Every ONNX op type we convert (or fold), sorted."""
    return sorted(set(CONVERTERS) | set(VARIABLE_TO_CONSTANT) | set(FOLDED_ONLY))
