"""Branching points: table indexing at grid edges, strictness, shapes, gains, shipped tables.

A small hand-made table (grid 0, 1, 2, 3; point = l + 0.3 (u - l)) pins down
which cell an interval is looked up in; the shipped tables in ``lookup_tables/``
are checked to load, to match their op (and its current ``relax``), and to
reduce the children's relaxation area against the midpoint on average.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bounds.ops import ELEMENTWISE_OPS
from genbab.bab.branching_points import (
    DEFAULT_FOLDER,
    BranchingPoints,
    kink_point,
    load_table,
    midpoint,
    op_attributes,
)

TABLES = sorted(DEFAULT_FOLDER.glob("*.npz"))
DTYPES = (torch.float32, torch.float64)
FRAC = 0.3



def write_table(folder: Path, name: str = "Fake", grid=(0.0, 1.0, 2.0, 3.0), period=0.0,
                attributes=None, nan_cell=None) -> Path:
    g = np.asarray(grid, dtype=np.float64)
    l, u = g[:, None], g[None, :]
    point = np.where(l < u, l + FRAC * (u - l), np.nan).astype(np.float32)
    if nan_cell is not None:
        point[nan_cell] = np.nan
    path = folder / f"{name}.npz"
    np.savez(path, lower_grid=g, upper_grid=g, point=point, op=np.array(name),
             version=np.array(1), period=np.array(period),
             attributes=np.array(json.dumps(attributes or {})))
    return path


@pytest.fixture
def fake(tmp_path):
    write_table(tmp_path)
    return BranchingPoints(["Fake"], folder=tmp_path)


def cell(l, u):
    return l + FRAC * (u - l)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("lo", "hi", "expected"), [
    (1.0, 2.5, cell(1, 2)),      # lo exactly on a grid value
    (0.5, 3.0, cell(1, 3)),      # hi exactly on a grid value
    (0.0, 3.0, cell(0, 3)),      # both on grid values: the whole table
    (1.0, 2.0, cell(1, 2)),      # exactly one cell
    (0.25, 2.75, cell(1, 2)),    # strictly inside the interval
    (1.2, 1.8, 1.5),             # inside one cell: no grid cell fits -> midpoint
    (0.5, 1.5, 1.0),             # only one grid value inside -> midpoint
    (4.0, 5.0, 4.5),             # outside the table
    (-3.0, -2.0, -2.5),
    (-0.5, 2.0, 0.75),           # partly outside (below)
    (2.5, 3.5, 3.0),             # partly outside (above)
    (-1.0, 4.0, 1.5),            # covers the table: still outside its range
])
def test_indexing_at_grid_edges(fake, dtype, lo, hi, expected):
    p = fake.point("Fake", torch.tensor([lo], dtype=dtype), torch.tensor([hi], dtype=dtype))
    assert p.dtype == dtype
    assert p.item() == pytest.approx(expected, rel=1e-6)


def test_nan_cell_and_method_and_attributes(tmp_path):
    write_table(tmp_path, nan_cell=(1, 2), attributes={"exponent": 2.0})
    lo, hi = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 3.0])
    points = BranchingPoints(["Fake"], folder=tmp_path)
    assert points.point("Fake", lo, hi).tolist() == pytest.approx([1.5, cell(0, 3)])
    midpoints = BranchingPoints(["Fake"], folder=tmp_path, method="midpoint")
    assert midpoints.point("Fake", lo, hi).tolist() == pytest.approx([1.5, 1.5])

    class Op:
        def __init__(self, exponent):
            self.exponent = exponent
    assert points.point("Fake", lo, hi, op=Op(2)).tolist() == pytest.approx([1.5, cell(0, 3)])
    assert points.point("Fake", lo, hi, op=Op(3)).tolist() == pytest.approx([1.5, 1.5])
    assert points.point("Unknown", lo, hi).tolist() == pytest.approx([1.5, 1.5])
    with pytest.raises(ValueError):
        BranchingPoints(method="golden")


def test_periodic_shift(tmp_path):
    write_table(tmp_path, grid=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0), period=2.0)
    points = BranchingPoints(["Fake"], folder=tmp_path)
    lo = torch.tensor([10.0, -4.0, 10.25, 10.2], dtype=torch.float64)
    hi = torch.tensor([11.5, -1.0, 10.4, 13.5], dtype=torch.float64)
    # [10, 11.5] -> [0, 1.5]; [-4, -1] -> [0, 3]; [10.25, 10.4] in one cell; [10.2, 13.5] too wide
    expected = [10 + cell(0, 1.5), -4 + cell(0, 3), 10.325, 11.85]
    assert points.point("Fake", lo, hi).tolist() == pytest.approx(expected)


def test_kinks():
    lo = torch.tensor([-1.0, 0.5, -2.0, 0.0, -3.0])
    hi = torch.tensor([3.0, 2.0, -1.0, 1.0, 3.0])
    points = BranchingPoints(method="midpoint", folder="/nonexistent")
    assert points.point("Relu", lo, hi).tolist() == [0.0, 1.25, -1.5, 0.5, 0.0]
    assert points.point("Abs", lo, hi).tolist() == [0.0, 1.25, -1.5, 0.5, 0.0]
    assert points.point("Floor", lo, hi).tolist() == [1.0, 1.0, -1.5, 0.5, 0.0]
    clip = points.point("Clip", lo, hi, kinks=(-1.0, 1.0)).tolist()
    assert clip == [1.0, 1.0, -1.5, 0.5, -1.0]
    assert kink_point(lo, hi, ()).tolist() == midpoint(lo, hi).tolist()


def random_intervals(dtype, n=4000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    big = torch.finfo(dtype).max / 4
    centre = torch.cat([torch.randn(n, generator=gen, dtype=torch.float64) * 6,
                        torch.randn(n // 4, generator=gen, dtype=torch.float64) * 1e30,
                        torch.full((8,), 0.0, dtype=torch.float64)]).clamp(-big, big)
    scale = 10.0 ** (torch.rand(centre.shape, generator=gen, dtype=torch.float64) * 16 - 12)
    scale[-8:] = torch.tensor([1e-300, 1e-40, 1e-30, 1e-9, 1.0, 1e20, 1e30, 1e38])
    lo = (centre - scale * torch.rand(centre.shape, generator=gen, dtype=torch.float64))
    hi = (centre + scale * torch.rand(centre.shape, generator=gen, dtype=torch.float64))
    lo, hi = lo.to(dtype), hi.to(dtype)
    one = torch.tensor([1.0], dtype=dtype)
    edge = torch.tensor([-math.inf, -1.0, 5.0, -math.inf, 1.0], dtype=dtype)
    edge_hi = torch.tensor([math.inf, math.inf, 5.0, 2.0, 0.5], dtype=dtype)
    adjacent = torch.nextafter(one, 2 * one)  # no float between 1 and adjacent; one between 1 and next
    return (torch.cat([lo, edge, one, one]),
            torch.cat([hi, edge_hi, adjacent, torch.nextafter(adjacent, 2 * one)]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op_name", ["Sigmoid", "Tanh", "Fake", "Relu", "Floor", "Other"])
def test_strictly_inside(tmp_path, dtype, op_name):
    write_table(tmp_path, grid=tuple(np.arange(-10, 10.001, 0.5)))
    folder = DEFAULT_FOLDER if op_name in ("Sigmoid", "Tanh") else tmp_path
    points = BranchingPoints(None, folder=folder)
    lo, hi = random_intervals(dtype)
    p = points.point(op_name, lo, hi)
    assert p.dtype == dtype and p.shape == lo.shape
    room = torch.nextafter(lo, hi) < hi  # some float lies strictly between
    assert bool(((lo < p) & (p < hi))[room].all())
    assert bool(((lo <= p) & (p <= hi))[lo < hi].all())
    assert bool(torch.isfinite(p)[lo < hi].all())
    equal = lo == hi
    assert bool((p[equal] == lo[equal]).all())


def test_end_margin():
    points = BranchingPoints(["Sigmoid"])
    lo, hi = random_intervals(torch.float64, seed=1)
    finite = torch.isfinite(lo) & torch.isfinite(hi) & (hi - lo > 1e-6 * hi.abs())
    lo, hi = lo[finite], hi[finite]
    p = points.point("Sigmoid", lo, hi)
    width = hi - lo
    assert bool((p >= lo + 0.999e-3 * width).all()) and bool((p <= hi - 0.999e-3 * width).all())


@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4), (0, 5)])
def test_shapes_dtypes_devices(shape):
    points = BranchingPoints(["Sigmoid"])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in DTYPES:
            lo = (torch.rand(shape, dtype=dtype, device=device) * 8 - 6).requires_grad_()
            hi = lo.detach() + torch.rand(shape, dtype=dtype, device=device) * 5
            p = points.point("Sigmoid", lo, hi)
            assert p.shape == shape and p.dtype == dtype and p.device == lo.device
            assert not p.requires_grad
    lo, hi = torch.zeros(3, 1) - 2, torch.arange(1.0, 5.0)[None, :]
    assert points.point("Sigmoid", lo, hi).shape == (3, 4)
    assert points.point("Tanh", lo, hi).shape == (3, 4)


def split_area(op, lo, hi, p):
    def area(a, b):
        rel = op.relax(a, b)
        return (b - a) * ((rel.uw - rel.lw) * (a + b) / 2 + (rel.ub - rel.lb))
    return area(lo, p) + area(p, hi)


@pytest.mark.parametrize("op_name", ["Sigmoid", "Tanh"])
def test_table_reduces_child_area(op_name):
    assert (DEFAULT_FOLDER / f"{op_name}.npz").is_file(), "run scripts/build_lookup_tables.py"
    op = ELEMENTWISE_OPS[op_name]()
    gen = torch.Generator().manual_seed(2)
    ends = torch.rand(2, 3000, generator=gen, dtype=torch.float64) * 16 - 8
    lo, hi = ends.min(0).values, ends.max(0).values
    lo, hi = lo[hi - lo > 0.5], hi[hi - lo > 0.5]
    p = BranchingPoints([op_name]).point(op_name, lo, hi)
    table, mid = split_area(op, lo, hi, p), split_area(op, lo, hi, (lo + hi) / 2)
    reduction = ((mid - table) / mid).mean().item()
    assert reduction > 0.05, reduction
    assert (table < mid).double().mean().item() > 0.6


def test_missing_folder_falls_back_to_midpoints(tmp_path):
    with pytest.warns(UserWarning, match="midpoints"):
        points = BranchingPoints(["Sigmoid", "Tanh"], folder=tmp_path / "missing")
    lo, hi = torch.tensor([-3.0, 0.5]), torch.tensor([1.0, 7.5])
    assert points.point("Sigmoid", lo, hi).tolist() == [-1.0, 4.0]
    assert not points.has_table("Sigmoid")
    empty = BranchingPoints(None, folder=tmp_path)  # a folder without tables
    assert empty.tables == {} and empty.point("Tanh", lo, hi).tolist() == [-1.0, 4.0]


def test_default_folder_is_the_repository_one():
    assert DEFAULT_FOLDER == Path(__file__).resolve().parents[1] / "lookup_tables"
    assert {"Sigmoid", "Tanh"} <= set(BranchingPoints().tables)


@pytest.mark.parametrize("path", TABLES, ids=[p.stem for p in TABLES])
def test_shipped_table_matches_its_op(path):
    table = load_table(path)
    assert table.op == path.stem and table.metadata["version"] == 1
    assert table.op in ELEMENTWISE_OPS, f"{path.name}: no such registered op (stale table?)"
    op = ELEMENTWISE_OPS[table.op]()
    assert table.attributes == op_attributes(op)
    l, u = table.lower_grid[:, None], table.upper_grid[None, :]
    stored = torch.isfinite(table.point)
    assert not bool((stored & (l >= u)).any())
    assert stored.double().mean() > 0.4
    p = table.point.double()
    assert bool(((p > l) & (p < u))[stored].all())
    with np.load(path) as data:  # spot check against the op's current relax
        stored_area = torch.from_numpy(data["area_point"]).double()
    i, j = torch.nonzero(stored, as_tuple=True)
    pick = torch.randperm(i.numel(), generator=torch.Generator().manual_seed(3))[:300]
    lo, hi = table.lower_grid[i[pick]], table.upper_grid[j[pick]]
    area = split_area(op, lo, hi, p[i[pick], j[pick]])
    assert torch.allclose(area, stored_area[i[pick], j[pick]], rtol=1e-3, atol=1e-6), \
        f"{path.name} is stale: rebuild with python scripts/build_lookup_tables.py"
