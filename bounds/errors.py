"""The errors of model loading, in a module that imports nothing heavy.

Callers that only need to catch them (the command lines, the torch-free quick
stage) import them from here; ``bounds.onnx_import`` re-exports them.
"""
from __future__ import annotations


class ModelError(ValueError):
    """A model that cannot be loaded or converted; ``str()`` is the user-facing message."""


class UnsupportedModelError(ModelError):
    """Every unsupported node of a model at once: ``(op_type, node name, reason)`` each."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems  # (op_type, node name, reason)
        lines = [f"  {op} (node '{name}'): {why}" for op, name, why in problems]
        kinds = sorted({p[0] for p in problems})
        super().__init__(f"unsupported ONNX operator(s) {', '.join(kinds)}:\n" + "\n".join(lines))
