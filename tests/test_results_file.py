"""Tests for genbab.results: VNN-COMP results files written and read back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genbab.results import VERDICTS, ResultsFileError, read_results_file, write_results_file


@pytest.mark.parametrize("verdict", [v for v in VERDICTS if v != "sat"])
def test_round_trip_plain_verdicts(tmp_path: Path, verdict: str) -> None:
    path = tmp_path / "out.txt"
    write_results_file(path, verdict)
    assert path.read_text() == f"{verdict}\n"
    assert read_results_file(path) == (verdict, None, None)


def test_sat_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(5), [0.1, -0.0, 1e-310, 1e300, np.pi]])
    y = np.array([np.float32(0.1), -2.5e-8, 123456789.123456789])
    path = tmp_path / "out.txt"
    write_results_file(path, "sat", x, y)
    verdict, x_read, y_read = read_results_file(path)
    assert verdict == "sat"
    np.testing.assert_array_equal(x_read, x)
    np.testing.assert_array_equal(y_read, y)
    lines = path.read_text().splitlines()
    assert lines[:2] == ["sat", "("] and lines[-1] == ")"
    assert lines[2].startswith("(X_0 ") and lines[2 + len(x)].startswith("(Y_0 ")
    assert len(lines) == 3 + len(x) + len(y)


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    write_results_file(path, "unknown")
    write_results_file(path, "sat", np.array([1.0, 2.0]), np.array([[3.0]]))
    assert read_results_file(path)[0] == "sat"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_reads_older_layout(tmp_path: Path) -> None:
    path = tmp_path / "old.txt"
    path.write_text("violated\n((X_0 0.5)\n (X_1 -1e-3)\n (Y_0 2))\n")
    verdict, x, y = read_results_file(path)
    assert verdict == "sat"
    np.testing.assert_array_equal(x, [0.5, -1e-3])
    np.testing.assert_array_equal(y, [2.0])
    path.write_text("\nholds\n")
    assert read_results_file(path) == ("unsat", None, None)


def test_invalid_inputs(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with pytest.raises(ValueError):
        write_results_file(path, "maybe")
    with pytest.raises(ValueError):
        write_results_file(path, "sat", np.zeros(2))
    assert not path.exists()
    path.write_text("sat\n((X_0 1)\n (X_2 3)\n (Y_0 1))\n")
    with pytest.raises(ResultsFileError):
        read_results_file(path)
    path.write_text("")
    with pytest.raises(ResultsFileError):
        read_results_file(path)
    path.write_text("perhaps\n")
    with pytest.raises(ResultsFileError):
        read_results_file(path)
