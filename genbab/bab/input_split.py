"""Branch and bound on the input box, for networks with few inputs (ACAS Xu style).

Domains are sub-boxes of the input box.  Each round: pick the worst boxes,
split each in two along the input dimension with the largest estimated effect
(|coefficient of the target row's linear bound| x width), bound all halves in
one batched CROWN call (intermediate bounds recomputed per box), look for a
counterexample at the halves' centres, and drop the proved halves.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from bounds.methods import BoundOptions, compute_bounds
from genbab.bab.driver import BabOutcome, Property


def input_branch_and_bound(graph, box, prop: Property, config, deadline: float,
                           try_counterexample: Callable[[np.ndarray], object | None],
                           options: BoundOptions):
    """Returns (BabOutcome, confirmed counterexample or None)."""
    lo, hi = box
    shape = lo.shape[1:]
    stats = {"rounds": 0, "domains_visited": 1, "mode": "input"}
    start = time.monotonic()
    open_lo, open_hi = lo.reshape(1, -1), hi.reshape(1, -1)
    open_lower = _bound(graph, open_lo, open_hi, shape, prop, options)
    keep = ~(prop.margins(open_lower) > 0).all(1)
    open_lo, open_hi, open_lower = open_lo[keep], open_hi[keep], open_lower[keep]
    while open_lo.shape[0]:
        if time.monotonic() >= deadline:
            return BabOutcome("timeout", _stats(stats, open_lower, prop, start)), None
        if open_lo.shape[0] > config.max_domains:
            return BabOutcome("unknown", {**_stats(stats, open_lower, prop, start),
                                          "reason": "domain limit"}), None
        order = prop.margins(open_lower).min(1).values.argsort()
        take, rest = order[:config.input_batch_size], order[config.input_batch_size:]
        b_lo, b_hi = open_lo[take], open_hi[take]
        width = (b_hi - b_lo) / (hi - lo).reshape(1, -1).clamp(min=1e-12)
        dim = width.argmax(1)
        rows = torch.arange(b_lo.shape[0], device=b_lo.device)
        mid = (b_lo[rows, dim] + b_hi[rows, dim]) / 2
        left_hi, right_lo = b_hi.clone(), b_lo.clone()
        left_hi[rows, dim], right_lo[rows, dim] = mid, mid
        c_lo, c_hi = torch.cat([b_lo, right_lo]), torch.cat([left_hi, b_hi])
        found = _centre_attack(graph, c_lo, c_hi, shape, prop, try_counterexample)
        if found is not None:
            stats["rounds"] += 1
            return BabOutcome("sat", _stats(stats, open_lower, prop, start)), found
        c_lower = _bound(graph, c_lo, c_hi, shape, prop, options)
        proved = (prop.margins(c_lower) > 0).all(1)
        stats["rounds"] += 1
        stats["domains_visited"] += c_lo.shape[0]
        open_lo = torch.cat([open_lo[rest], c_lo[~proved]])
        open_hi = torch.cat([open_hi[rest], c_hi[~proved]])
        open_lower = torch.cat([open_lower[rest], c_lower[~proved]])
    return BabOutcome("unsat", _stats(stats, open_lower, prop, start)), None


def _bound(graph, lo, hi, shape, prop, options):
    n = lo.shape[0]
    out = []
    for s in range(0, n, 4096):
        res = compute_bounds(graph, lo[s:s + 4096].reshape(-1, *shape),
                             hi[s:s + 4096].reshape(-1, *shape),
                             prop.C.expand(min(4096, n - s), -1, -1), options)
        out.append(res.lower.detach())
    return torch.cat(out)


def _centre_attack(graph, lo, hi, shape, prop, try_counterexample):
    centre = (lo + hi) / 2
    y = graph.forward(centre.reshape(-1, *shape)).reshape(centre.shape[0], -1)
    # a disjunct holds when every row has C y <= d, i.e. slack <= 0 on all its rows
    slack = torch.einsum("bo,so->bs", y, prop.C[0]) - prop.d
    worst = torch.full((y.shape[0], prop.n_disjuncts), -float("inf"), dtype=y.dtype,
                       device=y.device).scatter_reduce(1, prop.groups.expand(y.shape[0], -1),
                                                       slack, "amax")
    hits = torch.nonzero((worst <= 0).any(1)).flatten()
    for index in hits[:8].tolist():
        found = try_counterexample(centre[index].double().cpu().numpy())
        if found is not None:
            return found
    return None


def _stats(stats, lower, prop, start):
    out = dict(stats)
    out["open_domains"] = int(lower.shape[0])
    out["bab_time"] = round(time.monotonic() - start, 3)
    if lower.shape[0]:
        out["worst_open_margin"] = float(prop.margins(lower).min())
    return out
