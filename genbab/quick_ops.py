"""The quick stage's operators: numpy float64 forward and outward-rounded intervals.

Arrays carry a leading batch axis.  ``interval(lo, hi)`` encloses every value
onnxruntime can compute in float32 for inputs in ``[lo, hi]``, not just the
exact real image: each result is widened by a bound on float32 rounding (and
on the float64 rounding of the bound computation itself) and by an absolute
amount for flushed subnormals.  Affine maps use the classic bound
``|fl(w.x + b) - (w.x + b)| <= gamma(n+3) * (|w|.|x| + |b|)`` with
``gamma(k) = k u / (1 - k u)``, ``u = 2**-24``, taken twice; Sigmoid and Tanh,
which onnxruntime evaluates with polynomial approximations (errors up to
about 1.7e-7 and 3.3e-7 measured with onnxruntime 1.32 over 20M float32
inputs), get ``2**-19 * (1 + |y|)``, about six times that.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

U32 = 2.0 ** -24  # float32 unit roundoff
TINY = 2.0 ** -120  # above any flushed float32 subnormal (2**-126) several times over
S_SHAPED_ERROR = 2.0 ** -19  # onnxruntime's Sigmoid/Tanh error budget (see the docstring)


def _gamma(k: int) -> float:
    return k * U32 / (1 - k * U32)


def _widen(lo: np.ndarray, hi: np.ndarray, err) -> tuple[np.ndarray, np.ndarray]:
    return lo - err - TINY, hi + err + TINY


def _magnitude(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(lo), np.abs(hi))


@dataclass(frozen=True)
class Linear:
    """``y = x @ W + b`` over the last axis (Gemm, MatMul with a constant matrix)."""

    W: np.ndarray  # [n, m] float64
    b: np.ndarray  # broadcastable to [..., m] float64

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x @ self.W + self.b

    def interval(self, lo, hi):
        centre, radius = (lo + hi) / 2, (hi - lo) / 2
        absW = np.abs(self.W)
        mid = centre @ self.W + self.b
        spread = radius @ absW
        err = 2 * _gamma(self.W.shape[0] + 3) * (_magnitude(lo, hi) @ absW + np.abs(self.b))
        return _widen(mid - spread, mid + spread, err + self.W.shape[0] * TINY)


@dataclass(frozen=True)
class Affine:
    """``y = x * scale + shift`` elementwise with constant, broadcast ``scale``/``shift``.

    Add, Sub, Mul and Div by a constant (one float32 rounding each, two for
    ``c - x`` written as ``x * -1 + c``).
    """

    scale: np.ndarray
    shift: np.ndarray
    divide: bool = False  # y = x / scale + shift (Div rounds x / c, not x * (1 / c))

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        return x / self.scale if self.divide else x * self.scale

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._scaled(x) + self.shift

    def interval(self, lo, hi):
        a, b = self._scaled(lo), self._scaled(hi)
        low, high = np.minimum(a, b), np.maximum(a, b)
        err = 8 * U32 * (_magnitude(low, high) + np.abs(self.shift))  # two roundings, x4
        return _widen(low + self.shift, high + self.shift, err)


@dataclass(frozen=True)
class Relu:
    """max(x, 0): exact in floating point (up to flushed subnormals)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0)

    def interval(self, lo, hi):
        return _widen(np.maximum(lo, 0.0), np.maximum(hi, 0.0), 0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    z = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z))


@dataclass(frozen=True)
class SShaped:
    """Sigmoid or Tanh: increasing, so the images of the endpoints, widened."""

    kind: str  # "Sigmoid" | "Tanh"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(x) if self.kind == "Sigmoid" else np.tanh(x)

    def interval(self, lo, hi):
        low, high = self.forward(lo), self.forward(hi)
        err = S_SHAPED_ERROR * (1 + _magnitude(low, high))
        return _widen(low, high, err)


@dataclass(frozen=True)
class Reshape:
    """A new shape for the same row-major values (Flatten, Reshape, Identity)."""

    shape: tuple[int, ...]  # without the batch axis

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], *self.shape)

    def interval(self, lo, hi):
        return self.forward(lo), self.forward(hi)


QuickOp = Linear | Affine | Relu | SShaped | Reshape
