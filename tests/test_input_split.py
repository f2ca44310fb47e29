"""Branch and bound on the input box (genbab/bab/input_split.py), for few-input networks.

The split dimension follows the target row's CROWN coefficients; on 2-input
nets a threshold below the output's grid minimum is proved where CROWN alone
cannot, and one above it is never proved (a counterexample is found instead).
"""
from __future__ import annotations

import time

import pytest
import torch
from helpers import ACTIVATIONS, F64, box, mlp

from bounds.methods import BoundOptions, compute_bounds
from genbab.bab.driver import Property
from genbab.bab.input_split import _split_dimension, input_branch_and_bound
from genbab.config import BabConfig


def test_input_split_dimension_follows_the_target_rows_coefficients():
    lo = torch.zeros(2, 3, dtype=F64)
    hi = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 1.0]], dtype=F64)
    full = torch.ones(1, 3, dtype=F64)
    coeff = torch.tensor([[[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]],
                          [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=F64)
    target = torch.tensor([0, 1])
    # box 0, row 0: |3| x 1 beats |1| x 2; box 1 has no signal: its widest dimension
    assert _split_dimension(lo, hi, full, coeff, target).tolist() == [1, 0]
    assert _split_dimension(lo, hi, full, None, target).tolist() == [2, 0]


@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_input_bab_proves_a_true_bound_and_never_a_false_one(act):
    """2-input nets: the output's minimum over the box, from a dense grid; a threshold
    0.05 below it is proved by input splitting, one 0.05 above it never is."""
    graph = mlp([2, 8, 8, 1], ACTIVATIONS[act], 1)
    lo, hi = box(2, seed=1, radius=1.0)  # CROWN is 1.6 (relu) / 3.3 (sigmoid) below the min
    grid = torch.stack(torch.meshgrid(*(torch.linspace(float(lo[0, i]), float(hi[0, i]), 401,
                                                       dtype=F64) for i in range(2)),
                                      indexing="ij"), -1).reshape(-1, 2)
    true_min = float(graph.forward(grid).min())
    C = torch.ones(1, 1, 1, dtype=F64)
    options = BoundOptions(method="crown")
    root = float(compute_bounds(graph, lo, hi, C, options).lower)
    for offset, proved in ((-0.05, True), (0.05, False)):
        prop = Property(C, torch.full((1, 1), true_min + offset, dtype=F64),
                        torch.zeros(1, 1, dtype=torch.long), 1)
        with torch.no_grad():
            outcome, found = input_branch_and_bound(
                graph, (lo, hi), prop, BabConfig(), time.monotonic() + 20,
                lambda x: x, options)
        if proved:
            assert root < true_min - 0.05 < true_min  # CROWN alone does not prove it
            assert outcome.verdict == "unsat"
        else:
            assert outcome.verdict != "unsat"
            assert outcome.verdict == "sat" and found is not None
