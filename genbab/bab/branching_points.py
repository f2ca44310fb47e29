"""Where to split a neuron's interval [lo, hi]: midpoints, kinks, and pre-optimised points.

Owns the run-time side of the branching-point lookup tables built by
``scripts/build_lookup_tables.py`` (format: ``lookup_tables/README.md``).

- Smooth ops with a table: the interval is looked up by the grid cell that lies
  *inside* it (``l_grid`` = smallest lower-grid value >= lo, ``u_grid`` =
  largest upper-grid value <= hi); that cell's stored point is returned when
  ``l_grid < u_grid`` and [lo, hi] lies in the table's range (after shifting by
  whole periods for periodic ops), otherwise the midpoint.
- Piecewise-linear ops (Relu, LeakyRelu, Abs, Sign, ...): the kink inside the
  interval nearest to its midpoint, else the midpoint.
- Everything else: the midpoint.

Every returned point p satisfies ``lo < p < hi`` wherever ``lo < hi`` and a
float strictly between them exists in the dtype; table and midpoint points are
also kept ``1e-3 * (hi - lo)`` away from the ends.  Where ``lo >= hi`` the
result is the midpoint.  Outputs have the broadcast shape, device and dtype of
the inputs and carry no gradient.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Tensor = torch.Tensor

METHODS = ("midpoint", "lookup")
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "lookup_tables"
END_MARGIN = 1e-3  # table and midpoint points stay this fraction of the width from the ends
MAX_PERIOD_SHIFT = 1e6  # beyond this |lo| periodic shifting is too inexact; use the midpoint

# Kinks of piecewise-linear ops with default attributes (the optimal split is a kink).
KINKS: dict[str, tuple[float, ...]] = {
    "Relu": (0.0,), "LeakyRelu": (0.0,), "PRelu": (0.0,), "Abs": (0.0,), "Sign": (0.0,),
    "Step": (0.0,), "Heaviside": (0.0,), "HardTanh": (-1.0, 1.0), "Hardtanh": (-1.0, 1.0),
    "HardSigmoid": (-2.5, 2.5),  # ONNX defaults alpha=0.2, beta=0.5
}
# Ops with a kink at every ``offset + k * period``.
PERIODIC_KINKS: dict[str, tuple[float, float]] = {
    "Floor": (0.0, 1.0), "Ceil": (0.0, 1.0), "Round": (0.5, 1.0),
}


@dataclass(frozen=True)
class PointTable:
    """One op's table: ``point[i, j]`` is the split point for [lower_grid[i], upper_grid[j]]."""

    op: str
    lower_grid: Tensor  # 1-d, increasing, float64 (or float32 on devices without float64)
    upper_grid: Tensor
    point: Tensor  # 2-d float32, NaN where no point is stored
    period: float
    attributes: dict
    metadata: dict

    def to(self, device: torch.device) -> PointTable:
        dtype = _search_dtype(device)
        return PointTable(self.op, self.lower_grid.to(device, dtype),
                          self.upper_grid.to(device, dtype), self.point.to(device),
                          self.period, self.attributes, self.metadata)


def load_table(path: Path | str) -> PointTable:
    """Read one ``.npz`` table (no pickles); raises ValueError on a malformed file."""
    with np.load(path, allow_pickle=False) as data:
        missing = {"op", "lower_grid", "upper_grid", "point"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}")
        lower = torch.from_numpy(data["lower_grid"].astype(np.float64))
        upper = torch.from_numpy(data["upper_grid"].astype(np.float64))
        point = torch.from_numpy(data["point"].astype(np.float32))
        metadata = {k: data[k].item() for k in data.files if data[k].ndim == 0}
    if point.shape != (lower.numel(), upper.numel()):
        raise ValueError(f"{path}: point shape {tuple(point.shape)} does not match the grids")
    if bool((lower.diff() <= 0).any()) or bool((upper.diff() <= 0).any()):
        raise ValueError(f"{path}: grids must be strictly increasing")
    attributes = json.loads(str(metadata.get("attributes", "{}")))
    return PointTable(str(metadata["op"]), lower, upper, point,
                      float(metadata.get("period", 0.0)), attributes, metadata)


def op_attributes(op: object) -> dict[str, float]:
    """The scalar attributes of an op instance (what a table was built for)."""
    attrs = {}
    for key, value in sorted(vars(op).items()):
        if key.startswith("_"):
            continue
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (bool, int, float)):
            attrs[key] = float(value)
    return attrs


def _search_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _raw_midpoint(lo: Tensor, hi: Tensor) -> Tensor:
    """(lo + hi) / 2 without overflow; a finite point inside for infinite ends."""
    mid = lo / 2 + hi / 2
    lo_inf, hi_inf = torch.isinf(lo) & (lo < 0), torch.isinf(hi) & (hi > 0)
    zero = torch.zeros_like(mid)
    mid = torch.where(lo_inf & ~hi_inf, torch.where(hi > 0, zero, 2 * hi - 1), mid)
    mid = torch.where(hi_inf & ~lo_inf, torch.where(lo < 0, zero, 2 * lo + 1), mid)
    return torch.where(lo_inf & hi_inf, zero, mid)


def _into_open(p: Tensor, lo: Tensor, hi: Tensor, margin: float) -> Tensor:
    """Clamp p to [lo + margin*w, hi - margin*w], then strictly inside (lo, hi) if possible."""
    ok = lo < hi
    half = hi / 2 - lo / 2
    gap = torch.where(torch.isfinite(half) & ok, half * (2 * margin), torch.zeros_like(half))
    p = torch.minimum(torch.maximum(p, lo + gap), hi - gap)
    bad = ok & ~((p > lo) & (p < hi))
    p = torch.where(bad, torch.nextafter(lo, hi), p)
    return torch.where(ok, p, _raw_midpoint(lo, hi))


def midpoint(lo: Tensor, hi: Tensor) -> Tensor:
    """The midpoint of [lo, hi], strictly inside where lo < hi (finite for infinite ends)."""
    lo, hi = _prepare(lo, hi)
    return _into_open(_raw_midpoint(lo, hi), lo, hi, END_MARGIN)


def kink_point(lo: Tensor, hi: Tensor, kinks: Sequence[float]) -> Tensor:
    """The kink strictly inside (lo, hi) nearest to the midpoint, else the midpoint."""
    lo, hi = _prepare(lo, hi)
    mid = midpoint(lo, hi)
    best, best_dist = mid, torch.full_like(mid, math.inf)
    for kink in kinks:  # a handful of constants, not a loop over elements
        k = torch.full_like(mid, kink)
        dist = (k - mid).abs()
        take = (lo < k) & (k < hi) & (dist < best_dist)
        best = torch.where(take, k, best)
        best_dist = torch.where(take, dist, best_dist)
    return best


def periodic_kink_point(lo: Tensor, hi: Tensor, offset: float, period: float) -> Tensor:
    """The kink ``offset + k*period`` nearest to the midpoint if inside (lo, hi), else the midpoint."""
    lo, hi = _prepare(lo, hi)
    mid = midpoint(lo, hi)
    k = offset + period * torch.round((mid - offset) / period)
    return torch.where((lo < k) & (k < hi), k, mid)


def _prepare(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    lo, hi = torch.as_tensor(lo).detach(), torch.as_tensor(hi).detach()
    if not lo.is_floating_point():
        lo = lo.to(torch.get_default_dtype())
    return torch.broadcast_tensors(lo, hi.to(lo))


def table_point(table: PointTable, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """(stored point of the grid cell inside [lo, hi], whether one was found); search dtype.

    ``table`` must already be on ``lo``'s device.
    """
    dtype = table.lower_grid.dtype
    l, u = lo.to(dtype), hi.to(dtype)
    shift = torch.zeros_like(l)
    if table.period > 0:
        first = table.lower_grid[0]
        shift = table.period * torch.floor((l - first) / table.period)
        near = torch.isfinite(shift) & (l.abs() < MAX_PERIOD_SHIFT)
        shift = torch.where(near, shift, torch.zeros_like(shift))
        l, u = l - shift, u - shift
    lower, upper = table.lower_grid, table.upper_grid
    i = torch.searchsorted(lower, l.contiguous())  # first lower[i] >= l
    j = torch.searchsorted(upper, u.contiguous(), right=True) - 1  # last upper[j] <= u
    ic, jc = i.clamp(0, lower.numel() - 1), j.clamp(0, upper.numel() - 1)
    found = (l >= lower[0]) & (u <= upper[-1]) & (i < lower.numel()) & (j >= 0)
    found &= lower[ic] < upper[jc]
    p = table.point[ic, jc].to(dtype)
    found &= torch.isfinite(p)
    return p + shift, found


class BranchingPoints:
    """Split points for the nonlinear ops of a network.

    ``method="lookup"`` uses the tables of ``op_names`` (all tables in the folder
    when None) found in ``folder`` (default: the repository's ``lookup_tables/``);
    ``method="midpoint"`` ignores tables.  Kinks of piecewise-linear ops are used
    by both methods.  A missing folder or table means midpoints, never an error.
    """

    def __init__(self, op_names: Iterable[str] | None = None,
                 folder: Path | str | None = None, method: str = "lookup"):
        if method not in METHODS:
            raise ValueError(f"unknown branching-point method {method!r}; one of {METHODS}")
        self.method = method
        self.folder = Path(folder) if folder is not None else DEFAULT_FOLDER
        self.tables: dict[str, PointTable] = {}
        self._on_device: dict[tuple[str, str], PointTable] = {}
        if method == "lookup":
            self.tables = self._load(op_names)

    def _load(self, op_names: Iterable[str] | None) -> dict[str, PointTable]:
        if not self.folder.is_dir():
            warnings.warn(f"no branching-point tables at {self.folder}; using midpoints",
                          stacklevel=3)
            return {}
        names = ([p.stem for p in sorted(self.folder.glob("*.npz"))] if op_names is None
                 else list(op_names))
        tables = {}
        for name in names:
            path = self.folder / f"{name}.npz"
            if path.is_file():
                tables[name] = load_table(path)
        return tables

    def has_table(self, op_name: str) -> bool:
        return op_name in self.tables

    def midpoint(self, lo: Tensor, hi: Tensor) -> Tensor:
        return midpoint(lo, hi)

    def point(self, op_name: str, lo: Tensor, hi: Tensor, op: object | None = None,
              kinks: Sequence[float] | None = None) -> Tensor:
        """Split points for neurons of ``op_name`` with intervals [lo, hi] (any shape).

        Pass ``op`` (the op instance) to use a table only if it was built for the
        same attributes (e.g. a Pow exponent); otherwise the midpoint is used.
        ``kinks`` overrides the kinks of a piecewise-linear op whose kinks depend
        on its attributes (Clip's bounds, HardSigmoid's alpha and beta).
        """
        with torch.no_grad():
            lo, hi = _prepare(lo, hi)
            if kinks is not None or op_name in KINKS:
                return kink_point(lo, hi, KINKS[op_name] if kinks is None else kinks)
            if op_name in PERIODIC_KINKS:
                return periodic_kink_point(lo, hi, *PERIODIC_KINKS[op_name])
            table = self._table(op_name, lo.device, op)
            if table is None:
                return midpoint(lo, hi)
            p, found = table_point(table, lo, hi)
            p = torch.where(found, p, _raw_midpoint(lo, hi).to(p.dtype)).to(lo.dtype)
            return _into_open(p, lo, hi, END_MARGIN)

    def _table(self, op_name: str, device: torch.device, op: object | None) -> PointTable | None:
        table = self.tables.get(op_name) if self.method == "lookup" else None
        if table is None:
            return None
        if op is not None and op_attributes(op) != table.attributes:
            return None
        key = (op_name, str(device))
        if key not in self._on_device:
            self._on_device[key] = table.to(device)
        return self._on_device[key]
