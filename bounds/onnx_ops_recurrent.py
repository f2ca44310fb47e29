"""ONNX converters that expand one node into a sub-graph: LayerNormalization, LSTM, GRU."""
from __future__ import annotations

from bounds.onnx_ops import Converter

CONVERTERS: dict[str, Converter] = {}
