"""Tests for genbab.attack: random sampling plus batched PGD on small MLPs."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from genbab.attack import find_counterexample, margins, pack_disjuncts
from genbab.config import AttackConfig
from genbab.spec.types import Disjunct, SpecCase

FAST = AttackConfig(random_samples=200, pgd_restarts=4, pgd_steps=50, time_budget=5.0)


def _mlp(seed: int = 0, n_in: int = 4, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, n_out)).eval()


def _output(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)[None]).double().numpy()[0]


def _assert_violates(model: nn.Module, case: SpecCase, x: np.ndarray) -> None:
    assert x.dtype == np.float64
    assert np.all(x >= case.lower) and np.all(x <= case.upper)
    y = _output(model, x)
    assert any(np.all(dj.C @ y <= dj.d) for dj in case.disjuncts)


def test_margins_pads_rows_and_flags_nan() -> None:
    disjuncts = (Disjunct(C=np.array([[1.0, 0.0], [0.0, 1.0]]), d=np.array([1.0, 2.0])),
                 Disjunct(C=np.array([[1.0, -1.0]]), d=np.array([0.0])),
                 Disjunct(C=np.zeros((0, 2)), d=np.zeros(0)))
    y = torch.tensor([[3.0, 1.0], [float("nan"), 0.0]])
    m = margins(y, disjuncts)
    assert m.shape == (2, 3)
    assert m[0, 0] == 2.0 and m[0, 1] == 2.0 and m[0, 2] == -math.inf
    assert m[1, 0] == math.inf and m[1, 1] == math.inf
    assert pack_disjuncts(disjuncts).C.shape == (3, 2, 2)


def test_finds_counterexample_deterministically() -> None:
    model = _mlp()
    lower, upper = -np.ones(4), np.ones(4)
    with torch.no_grad():
        ys = model(torch.rand(4000, 4) * 2 - 1)
    # Unsafe: output 0 at least a value reached only near the extremes of the box.
    target = float(torch.quantile(ys[:, 0], 0.999))
    case = SpecCase(lower, upper, (Disjunct(C=np.array([[-1.0, 0.0, 0.0]]),
                                            d=np.array([-target])),))
    cfg = AttackConfig(random_samples=10, pgd_restarts=4, pgd_steps=60, time_budget=5.0)
    first = find_counterexample(model, case, cfg, seed=3)
    second = find_counterexample(model, case, cfg, seed=3)
    assert first is not None and second is not None
    np.testing.assert_array_equal(first, second)
    _assert_violates(model, case, first)


def test_pgd_finds_point_random_sampling_misses() -> None:
    # y = w.x over 20 inputs with w = (+1, -1, ...); unsafe near one mixed corner only.
    model = nn.Linear(20, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, -1.0] * 10))
        model.bias.fill_(10.0)
    case = SpecCase(np.zeros(20), np.ones(20), (Disjunct(C=np.array([[-1.0]]),
                                                         d=np.array([-19.9])),))
    sampling_only = AttackConfig(random_samples=50, pgd_restarts=0, time_budget=5.0)
    assert find_counterexample(model, case, sampling_only) is None
    pgd_only = AttackConfig(random_samples=0, pgd_restarts=2, pgd_steps=30, time_budget=5.0)
    x = find_counterexample(model, case, pgd_only)
    assert x is not None
    _assert_violates(model, case, x)


def test_second_disjunct_is_searched() -> None:
    model = _mlp(1, n_in=3, n_out=2)
    lower, upper = -2 * np.ones(3), 2 * np.ones(3)
    impossible = Disjunct(C=np.array([[1.0, 0.0], [-1.0, 0.0]]), d=np.array([-1e6, -1e6]))
    with torch.no_grad():
        hi = float(model(torch.rand(2000, 3) * 4 - 2)[:, 1].max())
    reachable = Disjunct(C=np.array([[0.0, -1.0]]), d=np.array([-(hi - 1e-3)]))
    case = SpecCase(lower, upper, (impossible, reachable))
    x = find_counterexample(model, case, FAST)
    assert x is not None
    _assert_violates(model, case, x)


def test_provably_safe_returns_none() -> None:
    # Output sigmoid(.) + 0.5 > 0 everywhere: "y <= 0" cannot hold.
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1), nn.Sigmoid())
    case = SpecCase(-np.ones(3), np.ones(3), (Disjunct(C=np.array([[1.0]]), d=np.array([0.0])),))
    assert find_counterexample(model, case, FAST) is None


def test_zero_row_disjunct_returns_a_box_point() -> None:
    model = _mlp()
    lower, upper = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 4.0, 3.5])
    case = SpecCase(lower, upper, (Disjunct(C=np.array([[1.0, 0.0, 0.0]]), d=np.array([-1e9])),
                                   Disjunct(C=np.zeros((0, 3)), d=np.zeros(0))))
    x = find_counterexample(model, case, FAST)
    assert x is not None
    assert np.all(x >= lower) and np.all(x <= upper)


def test_degenerate_box_coordinates_stay_fixed() -> None:
    model = _mlp()
    lower = np.array([0.1, -1.0, 0.3, -1.0])
    upper = np.array([0.1, 1.0, 0.3, 1.0])
    with torch.no_grad():
        grid = torch.rand(4000, 4) * 2 - 1
        grid[:, 0], grid[:, 2] = 0.1, 0.3
        lo = float(model(grid)[:, 2].min())
    case = SpecCase(lower, upper, (Disjunct(C=np.array([[0.0, 0.0, 1.0]]),
                                            d=np.array([lo + 1e-4])),))
    x = find_counterexample(model, case, FAST)
    assert x is not None
    assert x[0] == 0.1 and x[2] == 0.3
    _assert_violates(model, case, x)


def test_fully_degenerate_box() -> None:
    model = _mlp()
    point = np.array([0.25, -0.5, 0.75, 0.0])
    y = _output(model, point)
    case = SpecCase(point, point.copy(), (Disjunct(C=np.array([[1.0, 0.0, 0.0]]),
                                                   d=np.array([y[0] + 1e-3])),))
    x = find_counterexample(model, case, FAST)
    assert x is not None
    np.testing.assert_array_equal(x, point)
    unsafe_elsewhere = SpecCase(point, point.copy(), (Disjunct(C=np.array([[1.0, 0.0, 0.0]]),
                                                               d=np.array([y[0] - 1e-3])),))
    assert find_counterexample(model, unsafe_elsewhere, FAST) is None


def test_float64_and_disabled_and_deadline() -> None:
    model = _mlp().double()
    case = SpecCase(-np.ones(4), np.ones(4), (Disjunct(C=np.array([[1.0, 0.0, 0.0]]),
                                                       d=np.array([1e3])),))
    x = find_counterexample(model, case, FAST, dtype=torch.float64)
    assert x is not None
    assert find_counterexample(model, case, AttackConfig(enabled=False)) is None
    assert find_counterexample(model, case, FAST, dtype=torch.float64,
                               deadline=time.monotonic() - 1) is None


def test_empty_box_is_an_error() -> None:
    case = SpecCase(np.ones(2), np.zeros(2), (Disjunct(C=np.eye(2), d=np.zeros(2)),))
    with pytest.raises(ValueError):
        find_counterexample(nn.Linear(2, 2), case, FAST)
