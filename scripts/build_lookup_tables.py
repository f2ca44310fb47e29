"""Build the branching-point lookup tables in ``lookup_tables/`` (one ``.npz`` per smooth op).

For every op named in ``TABLE_SPECS`` that is present in
``bounds.ops.ELEMENTWISE_OPS`` when this runs, and for every grid cell
[l, u] (l < u, both on a uniform grid), this finds the split point p in (l, u)
minimising the total relaxation area of the two children,

    area(l, p) + area(p, u),  area(a, b) = integral over [a, b] of (upper - lower line),

where each child is relaxed by ``op.relax`` on its own interval with the
default alpha (CROWN's default relaxation).  Search: ``CANDIDATES`` evenly
spaced fractions of the cell (plus the midpoint), then ``REFINE`` candidates
between the neighbours of the best one; all cells and candidates of a chunk in
one float64 call of ``relax``, no Python loop over cells.  Piecewise-linear
ops (Relu, LeakyRelu, Abs, Sign, Floor, Clip, ...) get no table: their best
split point is a kink, known analytically (``genbab.bab.branching_points``).

It also measures the mean relative area reduction against the midpoint, on the
grid cells and on random intervals looked up through ``BranchingPoints``, and
rewrites ``lookup_tables/README.md`` from the metadata of every table present.

Usage: ``python scripts/build_lookup_tables.py [--ops Sigmoid Tanh] [--out DIR] [--threads N]``.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bounds.ops import ELEMENTWISE_OPS
from genbab.bab.branching_points import BranchingPoints, load_table, op_attributes

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "lookup_tables"
VERSION = 1
CANDIDATES = 64
REFINE = 16
CHUNK = 1 << 20  # (cell, candidate) pairs per relax call
CHECK_INTERVALS = 20_000  # random intervals for the run-time (looked-up) measurement
STEP = 1.0 / 16  # dyadic: every grid value is exact in float16/32/64


@dataclass(frozen=True)
class TableSpec:
    """Grid of one op's table: lower and upper grids both ``grid_min:step:grid_max``."""

    name: str
    grid_min: float
    grid_max: float
    step: float = STEP
    period: float = 0.0  # > 0: intervals are shifted by whole periods into the grid
    domain: Callable[[dict], tuple[float, float]] | None = None  # range from op attributes


def power_domain(attrs: dict) -> tuple[float, float]:
    """Pow: both signs for a non-negative integer exponent, else positive inputs only."""
    exponent = next((attrs[k] for k in ("exponent", "power", "p", "n") if k in attrs), None)
    if exponent is not None and float(exponent).is_integer() and exponent >= 0:
        return -8.0, 8.0
    return STEP, 8.0


TWO_PI = 2 * np.pi
TABLE_SPECS = (
    TableSpec("Sigmoid", -10, 10), TableSpec("Tanh", -10, 10),
    TableSpec("Gelu", -8, 8), TableSpec("GeLU", -8, 8), TableSpec("GeluTanh", -8, 8),
    TableSpec("GeLUTanh", -8, 8), TableSpec("Erf", -5, 5),
    TableSpec("Silu", -10, 10), TableSpec("SiLU", -10, 10), TableSpec("Swish", -10, 10),
    TableSpec("Softplus", -10, 10), TableSpec("Mish", -10, 10), TableSpec("Elu", -8, 8),
    TableSpec("Selu", -8, 8), TableSpec("Celu", -8, 8), TableSpec("Softsign", -10, 10),
    TableSpec("Atan", -10, 10), TableSpec("Sinh", -8, 8), TableSpec("Cosh", -8, 8),
    # lo in [-3.25, -3.25 + 2 pi) after shifting; widths up to about 2 pi fit.
    TableSpec("Sin", -3.25, 9.5, period=TWO_PI), TableSpec("Cos", -3.25, 9.5, period=TWO_PI),
    TableSpec("Exp", -10, 5), TableSpec("Log", STEP, 16), TableSpec("Sqrt", 0, 16),
    TableSpec("Reciprocal", STEP, 16), TableSpec("Pow", -8, 8, domain=power_domain),
)
PIECEWISE_LINEAR = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Abs", "Sign", "Step", "Heaviside", "Floor", "Ceil", "Round",
    "Clip", "HardTanh", "Hardtanh", "HardSigmoid",
})


def relaxation_area(op, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Integral over [a, b] of (upper - lower line) of ``op.relax(a, b)``; NaN becomes inf."""
    rel = op.relax(a, b)
    area = (b - a) * ((rel.uw - rel.lw) * (a / 2 + b / 2) + (rel.ub - rel.lb))
    return torch.where(torch.isnan(area), torch.full_like(area, torch.inf), area)


def split_area(op, l: torch.Tensor, u: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Total child area of splitting [l, u] ([n, 1]) at ``l + frac * (u - l)`` ([n, k])."""
    p = l + frac * (u - l)
    l, u = l.expand_as(p).reshape(-1), u.expand_as(p).reshape(-1)
    total = relaxation_area(op, l, p.reshape(-1)) + relaxation_area(op, p.reshape(-1), u)
    return total.reshape(p.shape)


def best_fractions(op, l: torch.Tensor, u: torch.Tensor, candidates: int, refine: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of the best split point, its area) for cells [l, u] (1-d), coarse then fine."""
    edge = 1.0 / (2 * (candidates + 1))
    coarse = torch.arange(1, candidates + 1, dtype=l.dtype) / (candidates + 1)
    coarse = torch.cat([coarse, torch.tensor([0.5], dtype=l.dtype)])
    l, u = l[:, None], u[:, None]
    areas = split_area(op, l, u, coarse.expand(l.shape[0], -1))
    best_area, best = areas.min(dim=1)
    centre = coarse[best][:, None]
    offsets = torch.linspace(-1, 1, refine, dtype=l.dtype) / (candidates + 1)
    fine = (centre + offsets).clamp(edge, 1 - edge)
    fine_areas = split_area(op, l, u, fine)
    fine_best_area, fine_best = fine_areas.min(dim=1)
    better = fine_best_area < best_area
    frac = torch.where(better, fine.gather(1, fine_best[:, None])[:, 0], centre[:, 0])
    return frac, torch.minimum(fine_best_area, best_area)


def build_table(op, spec: TableSpec, candidates: int, refine: int) -> dict[str, np.ndarray]:
    """All arrays of one table (grid, points, areas, metadata)."""
    grid = torch.arange(round((spec.grid_max - spec.grid_min) / spec.step) + 1,
                        dtype=torch.float64) * spec.step + spec.grid_min
    ii, jj = torch.triu_indices(grid.numel(), grid.numel(), offset=1)
    point = torch.full((grid.numel(), grid.numel()), torch.nan, dtype=torch.float64)
    area_point, area_mid = point.clone(), point.clone()
    per_chunk = max(1, CHUNK // (candidates + 1))
    for start in range(0, ii.numel(), per_chunk):  # chunks bound memory; each is one batch
        i, j = ii[start:start + per_chunk], jj[start:start + per_chunk]
        l, u = grid[i], grid[j]
        frac, area = best_fractions(op, l, u, candidates, refine)
        point[i, j] = l + frac * (u - l)
        area_point[i, j] = area
        area_mid[i, j] = split_area(op, l[:, None], u[:, None], torch.full_like(l[:, None], 0.5))[:, 0]
    point = torch.where(torch.isfinite(area_point), point, torch.nan)
    check_inside(grid, point.float())
    stats = reduction_stats(area_point, area_mid)
    return {
        "lower_grid": grid.numpy(), "upper_grid": grid.numpy(),
        "point": point.float().numpy(),
        "area_point": area_point.float().numpy(), "area_midpoint": area_mid.float().numpy(),
        "op": np.array(spec.name), "version": np.array(VERSION),
        "grid_min": np.array(spec.grid_min), "grid_max": np.array(spec.grid_max),
        "h": np.array(spec.step), "period": np.array(spec.period),
        "candidates": np.array(candidates), "refine_candidates": np.array(refine),
        "attributes": np.array(json.dumps(op_attributes(op), sort_keys=True)),
        "torch_version": np.array(torch.__version__),
        **{k: np.array(v) for k, v in stats.items()},
    }


def check_inside(grid: torch.Tensor, point32: torch.Tensor) -> None:
    """Every stored (float32) point lies strictly inside its cell."""
    l, u = grid[:, None], grid[None, :]
    stored = torch.isfinite(point32)
    p = point32.double()
    if bool((stored & ((p <= l) | (p >= u))).any()):
        raise AssertionError("a stored point is not strictly inside its cell")


def reduction_stats(area_point: torch.Tensor, area_mid: torch.Tensor) -> dict[str, float]:
    """Mean / median / max relative area reduction vs the midpoint over the grid cells."""
    ok = torch.isfinite(area_point) & torch.isfinite(area_mid) & (area_mid > 0)
    red = ((area_mid - area_point) / area_mid)[ok]
    if red.numel() == 0:
        return {"mean_reduction": float("nan"), "median_reduction": float("nan"),
                "max_reduction": float("nan"), "cells": 0}
    return {"mean_reduction": red.mean().item(), "median_reduction": red.median().item(),
            "max_reduction": red.max().item(), "cells": int(ok.sum())}


def lookup_reduction(op, name: str, folder: Path, grid_min: float, grid_max: float) -> float:
    """Mean relative reduction vs the midpoint on random intervals, through the run-time lookup."""
    gen = torch.Generator().manual_seed(0)
    ends = torch.rand(2, CHECK_INTERVALS, generator=gen, dtype=torch.float64)
    ends = grid_min + (grid_max - grid_min) * ends
    lo, hi = ends.min(0).values, ends.max(0).values
    keep = hi - lo > 0.25
    lo, hi = lo[keep], hi[keep]
    p = BranchingPoints([name], folder).point(name, lo, hi)
    looked_up = relaxation_area(op, lo, p) + relaxation_area(op, p, hi)
    mid = (lo + hi) / 2
    at_mid = relaxation_area(op, lo, mid) + relaxation_area(op, mid, hi)
    ok = torch.isfinite(looked_up) & torch.isfinite(at_mid) & (at_mid > 0)
    return ((at_mid - looked_up) / at_mid)[ok].mean().item()


def resolve(spec: TableSpec, op) -> TableSpec:
    if spec.domain is None:
        return spec
    grid_min, grid_max = spec.domain(op_attributes(op))
    return replace(spec, grid_min=grid_min, grid_max=grid_max)


def build_all(names: list[str] | None, out: Path, candidates: int, refine: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in TABLE_SPECS if names is None or s.name in names]
    for name in sorted(ELEMENTWISE_OPS):
        if not any(s.name == name for s in TABLE_SPECS):
            why = "piecewise linear: kink points" if name in PIECEWISE_LINEAR else "not in TABLE_SPECS"
            print(f"skip {name}: {why}")
    for spec in wanted:
        if spec.name not in ELEMENTWISE_OPS:
            continue
        op = ELEMENTWISE_OPS[spec.name]()
        spec = resolve(spec, op)
        started = time.perf_counter()
        arrays = build_table(op, spec, candidates, refine)
        arrays["build_seconds"] = np.array(time.perf_counter() - started)
        path = out / f"{spec.name}.npz"
        np.savez_compressed(path, **arrays)
        arrays["lookup_reduction"] = np.array(
            lookup_reduction(op, spec.name, out, spec.grid_min, spec.grid_max))
        np.savez_compressed(path, **arrays)
        print(f"built {path.name}: {arrays['cells']} cells, "
              f"{float(arrays['build_seconds']):.1f} s, {path.stat().st_size / 1e6:.2f} MB")


def summary_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.npz")):
        meta = load_table(path).metadata
        rows.append({**meta, "file": path.name, "mb": path.stat().st_size / 1e6})
    return rows


def summary_table(rows: list[dict]) -> str:
    lines = [("| op | grid (l, u) | h | cells | mean red. | median red. | max red. "
              "| looked-up red. | build s | size MB |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        grid = f"[{r['grid_min']:g}, {r['grid_max']:g}]" + (
            f", period {r['period']:.4g}" if r.get("period", 0) else "")
        lines.append(
            f"| {r['op']} | {grid} | {r['h']:g} | {r['cells']} | {100 * r['mean_reduction']:.2f} % "
            f"| {100 * r['median_reduction']:.2f} % | {100 * r['max_reduction']:.1f} % "
            f"| {100 * r.get('lookup_reduction', float('nan')):.2f} % "
            f"| {r.get('build_seconds', float('nan')):.1f} | {r['mb']:.2f} |")
    return "\n".join(lines)


README = """# Branching-point lookup tables

Pre-optimised split points for GenBaB's general branching: splitting a neuron
with input interval [l, u] at p gives children [l, p] and [p, u].  Built by
`scripts/build_lookup_tables.py`; read by `genbab.bab.branching_points.BranchingPoints`.

## Format

One `<Op>.npz` per op (the name is its key in `bounds.ops.ELEMENTWISE_OPS`),
written with `numpy.savez_compressed`, loadable with `allow_pickle=False`:

| array | meaning |
|---|---|
| `lower_grid`, `upper_grid` | 1-d float64 grids of l and u (uniform, step `h`, dyadic values) |
| `point` | 2-d float32, `point[i, j]` = split point for [lower_grid[i], upper_grid[j]]; NaN where l >= u (or no finite relaxation) |
| `area_point`, `area_midpoint` | 2-d float32, total child area when splitting at `point` / at the midpoint |
| `op`, `version`, `grid_min`, `grid_max`, `h`, `period` | metadata (0-d); `period > 0`: intervals are shifted by whole periods into the grid |
| `candidates`, `refine_candidates` | search sizes used |
| `attributes` | JSON of the op's scalar attributes the table was built for (e.g. a Pow exponent) |
| `mean_reduction`, `median_reduction`, `max_reduction`, `cells` | relative area reduction vs the midpoint over the grid cells |
| `lookup_reduction` | mean reduction vs the midpoint on 20k random intervals (width > 0.25) looked up at run time |
| `build_seconds`, `torch_version` | provenance |

Every stored point lies strictly inside its cell (checked by the builder in float32).

## How the points were optimised

For every cell l < u: total area = area(l, p) + area(p, u), each child relaxed
by the op's `relax` on its own interval with the default alpha (CROWN's default
relaxation), area(a, b) = (b - a) * ((uw - lw) * (a + b) / 2 + (ub - lb)) (the
exact integral of upper minus lower line).  The best of {candidates} evenly
spaced interior fractions plus the midpoint, then {refine} candidates between the
neighbours of the best one; float64, every cell and candidate of a chunk in one
batched call.  Because the midpoint is a candidate, a table point is never worse
than the midpoint on its own cell.

## Use at run time

`BranchingPoints(op_names, folder=None, method="lookup" | "midpoint").point(op, lo, hi)`
takes the grid cell *inside* [lo, hi] (smallest grid value >= lo, largest <= hi)
and returns its point; the midpoint when that cell is empty or [lo, hi] leaves
the table range.  Points are clamped to [lo + 1e-3 w, hi - 1e-3 w].
Intervals holding fewer than two grid values (narrower than h to 2h) get the
midpoint, which is close to optimal where the function is locally quadratic.
Piecewise-linear ops (Relu, LeakyRelu, Abs, Sign, Floor, Clip, ...) have no
table: they split at a kink.

## Grids

Uniform, the same for l and u, step h = 1/16 (dyadic, so every grid value is
exact in float16/32/64).  The ops the builder knows (`TABLE_SPECS`; a table is
built only for those registered in `ELEMENTWISE_OPS` when it runs):

{grids}

## Rebuild

    python scripts/build_lookup_tables.py            # every op in TABLE_SPECS that is registered
    python scripts/build_lookup_tables.py --ops Sin   # a subset
    python scripts/build_lookup_tables.py --threads 4 # more torch threads (default 1)

Rebuild whenever an op's `relax` changes.

## Measured area reductions vs the midpoint

Tables present: {count}, {total_mb:.2f} MB in all; built on {threads} CPU thread(s)
in {seconds:.0f} s in total.

{table}
"""


def grid_list() -> str:
    items = []
    for spec in TABLE_SPECS:
        grid = ("[-8, 8], or [1/16, 8] for a fractional or negative exponent" if spec.domain
                else f"[{spec.grid_min:g}, {spec.grid_max:g}]")
        period = f", period {spec.period:.4g}" if spec.period else ""
        items.append(f"- {spec.name}: {grid}{period}")
    return "\n".join(items)


def write_readme(folder: Path, candidates: int, refine: int) -> str:
    rows = summary_rows(folder)
    table = summary_table(rows)
    text = README.format(candidates=candidates, refine=refine, count=len(rows), grids=grid_list(),
                         total_mb=sum(r["mb"] for r in rows), threads=torch.get_num_threads(),
                         seconds=sum(r.get("build_seconds", 0.0) for r in rows), table=table)
    (folder / "README.md").write_text(text)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="*", help="build only these ops (default: all present)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--candidates", type=int, default=CANDIDATES)
    parser.add_argument("--refine", type=int, default=REFINE)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a shared or loaded box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    build_all(args.ops, args.out, args.candidates, args.refine)
    print(write_readme(args.out, args.candidates, args.refine))
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
