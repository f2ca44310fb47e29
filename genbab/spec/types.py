"""Canonical property form shared by every spec front end.

A property is violated iff, for some case, some input ``x`` inside the case's
box and some disjunct ``(C, d)``, the network output ``y`` satisfies every row
of ``C @ y <= d``.  Every later stage (attack, bounds, BaB) sees only this form.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Disjunct:
    """One conjunction of linear output constraints: unsafe iff ``C @ y <= d`` (all rows)."""

    C: np.ndarray  # shape [m, n_outputs], float64
    d: np.ndarray  # shape [m], float64


@dataclass(frozen=True)
class SpecCase:
    """An input box together with the unsafe output region over it (a disjunction)."""

    lower: np.ndarray  # shape [n_inputs], float64
    upper: np.ndarray  # shape [n_inputs], float64
    disjuncts: tuple[Disjunct, ...]


@dataclass(frozen=True)
class Spec:
    """A whole property: the unsafe set is the union over cases and their disjuncts."""

    cases: tuple[SpecCase, ...]
    n_inputs: int
    n_outputs: int
    source: str = field(default="<memory>")


class SpecError(ValueError):
    """A malformed or unsupported property file; ``str()`` is the user-facing message."""

    def __init__(self, message: str, path: str = "<memory>", line: int | None = None,
                 column: int | None = None):
        self.path, self.line, self.column, self.reason = path, line, column, message
        where = path
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")
