"""Counterexample search by random sampling and projected gradient descent.

Owns the attack run before any bounding: given a model callable (flat inputs
``[B, n_inputs]`` to outputs ``[B, n_outputs]``) and one ``SpecCase``, look for
a point of the input box at which some disjunct ``C @ y <= d`` holds on every
row.  The loss per disjunct is its margin ``max_row(C @ y - d)``: the point
violates the property iff the margin is ``<= 0``.

Everything is batched: random samples are evaluated in a few large chunks, and
PGD runs every restart for every disjunct in one batch.  A candidate found
here is only a candidate; ``genbab.check`` confirms it with onnxruntime.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from genbab.config import AttackConfig
from genbab.spec.types import Disjunct, SpecCase

Model = Callable[[torch.Tensor], torch.Tensor]

_MAX_CHUNK_ELEMENTS = 1 << 24  # input elements evaluated per random-sampling chunk
_FINAL_STEP_FRACTION = 0.02  # cosine decay ends at this fraction of the first step


@dataclass(frozen=True)
class PackedDisjuncts:
    """All disjuncts of a case as padded tensors, ready for batched margins.

    ``C`` is ``[K, M, n_outputs]``, ``d`` and ``mask`` are ``[K, M]``, with
    ``M`` the largest row count (at least 1); padded rows have ``mask`` False.
    """

    C: torch.Tensor
    d: torch.Tensor
    mask: torch.Tensor

    @property
    def count(self) -> int:
        return self.C.shape[0]


def pack_disjuncts(disjuncts: Sequence[Disjunct], device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32,
                   n_outputs: int | None = None) -> PackedDisjuncts:
    """Stack disjuncts with differing row counts into padded tensors.

    ``n_outputs`` defaults to the column count of the disjuncts that have rows.
    """
    if not disjuncts:
        raise ValueError("a case needs at least one disjunct")
    widths = [np.asarray(dj.C).shape[-1] for dj in disjuncts if len(np.asarray(dj.d))]
    n_out = n_outputs if n_outputs is not None else max(widths, default=1)
    rows = max(1, max(len(np.asarray(dj.d)) for dj in disjuncts))
    C = np.zeros((len(disjuncts), rows, n_out))
    d = np.zeros((len(disjuncts), rows))
    mask = np.zeros((len(disjuncts), rows), dtype=bool)
    for k, dj in enumerate(disjuncts):
        m = len(np.asarray(dj.d))
        if m:
            C[k, :m] = np.asarray(dj.C, dtype=np.float64).reshape(m, n_out)
            d[k, :m] = np.asarray(dj.d, dtype=np.float64)
            mask[k, :m] = True
    return PackedDisjuncts(
        C=torch.as_tensor(C, dtype=dtype, device=device),
        d=torch.as_tensor(d, dtype=dtype, device=device),
        mask=torch.as_tensor(mask, device=device),
    )


def margins(y: torch.Tensor, disjuncts: Sequence[Disjunct] | PackedDisjuncts) -> torch.Tensor:
    """Margin ``max_row(C @ y - d)`` of every output row for every disjunct: ``[B, K]``.

    A margin ``<= 0`` means the disjunct holds.  A disjunct with no rows has
    margin ``-inf``; a NaN output gives margin ``+inf`` (never a violation).
    """
    packed = disjuncts if isinstance(disjuncts, PackedDisjuncts) else pack_disjuncts(
        disjuncts, y.device, y.dtype, n_outputs=y.reshape(y.shape[0], -1).shape[1])
    y = y.reshape(y.shape[0], -1)
    raw = torch.einsum("bn,kmn->bkm", y, packed.C) - packed.d
    raw = raw.masked_fill(~packed.mask, -math.inf)
    return torch.nan_to_num(raw.amax(dim=-1), nan=math.inf, posinf=math.inf,
                            neginf=-math.inf)


@dataclass(frozen=True)
class _Box:
    """The input box in the attack's dtype, rounded inwards so every point is inside."""

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def width(self) -> torch.Tensor:
        return self.upper - self.lower

    @property
    def centre(self) -> torch.Tensor:
        return self.lower + 0.5 * self.width


def _inward_box(case: SpecCase, device: str | torch.device, dtype: torch.dtype) -> _Box:
    lo64 = torch.as_tensor(np.asarray(case.lower, dtype=np.float64).reshape(-1),
                           dtype=torch.float64, device=device)
    hi64 = torch.as_tensor(np.asarray(case.upper, dtype=np.float64).reshape(-1),
                           dtype=torch.float64, device=device)
    if lo64.shape != hi64.shape:
        raise ValueError("lower and upper bounds differ in length")
    if bool((lo64 > hi64).any()):
        raise ValueError("empty input box: some lower bound exceeds its upper bound")
    lo, hi = lo64.to(dtype), hi64.to(dtype)
    lo = torch.where(lo.to(torch.float64) < lo64, torch.nextafter(lo, hi.new_tensor(math.inf)), lo)
    hi = torch.where(hi.to(torch.float64) > hi64, torch.nextafter(hi, lo.new_tensor(-math.inf)), hi)
    # A box narrower than one ulp of ``dtype`` has no representable point: take the nearest.
    nearest = lo64.to(dtype)
    empty = lo > hi
    return _Box(lower=torch.where(empty, nearest, lo), upper=torch.where(empty, nearest, hi))


@dataclass
class _Best:
    """The lowest-margin point seen so far (mutated only inside one attack run)."""

    margin: float = math.inf
    x: torch.Tensor | None = None

    def update(self, x: torch.Tensor, m: torch.Tensor) -> None:
        per_point = m.min(dim=1).values
        i = int(per_point.argmin())
        value = float(per_point[i])
        if value < self.margin:
            self.margin, self.x = value, x[i].detach().clone()


def _random_points(box: _Box, count: int, gen: torch.Generator) -> torch.Tensor:
    """Centre, both extreme corners, random corners, then uniform points: ``[count, n]``."""
    n = box.lower.shape[0]
    fixed = torch.stack([box.centre, box.lower, box.upper])[:count]
    n_corners = (count - fixed.shape[0]) // 4
    n_uniform = count - fixed.shape[0] - n_corners
    opts = {"generator": gen, "device": box.lower.device, "dtype": box.lower.dtype}
    corners = (torch.rand(n_corners, n, **opts) < 0.5).to(box.lower.dtype)
    uniform = torch.rand(n_uniform, n, **opts)
    unit = torch.cat([corners, uniform])
    return torch.cat([fixed, _clamp(box.lower + unit * box.width, box)])


def _clamp(x: torch.Tensor, box: _Box) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, box.lower), box.upper)


def _sample(model: Model, box: _Box, packed: PackedDisjuncts, count: int,
            gen: torch.Generator, best: _Best, end: float) -> None:
    points = _random_points(box, count, gen)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, box.lower.shape[0]))
    with torch.no_grad():
        for start in range(0, points.shape[0], chunk):
            if time.monotonic() >= end or best.margin < 0:
                return
            x = points[start:start + chunk]
            best.update(x, margins(model(x), packed))


def _pgd(model: Model, box: _Box, packed: PackedDisjuncts, config: AttackConfig,
         gen: torch.Generator, best: _Best, end: float) -> None:
    """Signed-gradient descent on every (restart, disjunct) pair in one batch."""
    restarts, k, n = max(1, config.pgd_restarts), packed.count, box.lower.shape[0]
    opts = {"generator": gen, "device": box.lower.device, "dtype": box.lower.dtype}
    starts = box.lower + torch.rand(restarts, k, n, **opts) * box.width
    starts[0] = box.centre
    x = _clamp(starts.reshape(restarts * k, n), box)
    first_step = config.pgd_step_size * box.width
    steps = max(0, config.pgd_steps)
    for t in range(steps + 1):
        if time.monotonic() >= end:
            return
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            m = margins(model(x), packed)
            own = m.reshape(restarts, k, k).diagonal(dim1=1, dim2=2)
            loss = torch.nan_to_num(own, posinf=0.0, neginf=0.0).sum()
        best.update(x, m.detach())
        if best.margin < 0 or t == steps or not loss.requires_grad:
            return
        grad = torch.autograd.grad(loss, x, allow_unused=True)[0]
        if grad is None:
            return
        decay = _FINAL_STEP_FRACTION + (1 - _FINAL_STEP_FRACTION) * 0.5 * (
            1 + math.cos(math.pi * t / max(1, steps - 1)))
        step = decay * first_step * torch.sign(torch.nan_to_num(grad, nan=0.0))
        x = _clamp(x.detach() - step, box)


def find_counterexample(model: Model, case: SpecCase, config: AttackConfig, *,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        seed: int = 0, deadline: float | None = None) -> np.ndarray | None:
    """Search the case's box for a point violating some disjunct.

    Returns a float64 point inside ``[case.lower, case.upper]`` whose margin,
    evaluated by ``model`` in ``dtype``, is ``<= 0``; ``None`` when nothing is
    found, the attack is disabled, the case has no disjuncts, or time runs out.  ``deadline`` is a
    ``time.monotonic()`` value; ``config.time_budget`` caps the run as well.
    Deterministic for a given ``seed`` (on a deterministic device).
    """
    if not config.enabled or not case.disjuncts:
        return None
    box = _inward_box(case, device, dtype)
    lower = np.asarray(case.lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(case.upper, dtype=np.float64).reshape(-1)
    if any(len(np.asarray(dj.d)) == 0 for dj in case.disjuncts):
        return np.clip(box.centre.cpu().numpy().astype(np.float64), lower, upper)
    end = time.monotonic() + max(0.0, config.time_budget)
    if deadline is not None:
        end = min(end, deadline)
    packed = pack_disjuncts(case.disjuncts, device, dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    best = _Best()
    if config.random_samples > 0:
        _sample(model, box, packed, config.random_samples, gen, best, end)
    if best.margin >= 0 and config.pgd_steps >= 0 and config.pgd_restarts > 0:
        _pgd(model, box, packed, config, gen, best, end)
    if best.x is None or not best.margin <= 0:
        return None
    return np.clip(best.x.cpu().numpy().astype(np.float64), lower, upper)
