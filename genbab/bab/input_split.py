"""Branch and bound on the input box, for networks with few inputs (ACAS Xu style).

Domains are sub-boxes of the input box.  Each round: pick the worst boxes,
split each in two along the input dimension with the largest estimated effect
(|coefficient of the target row's CROWN bound in the input| x width), bound all halves in
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
    open_lower, open_coeff = _bound(graph, open_lo, open_hi, shape, prop, options)
    keep = ~(prop.margins(open_lower) > 0).all(1)
    open_lo, open_hi, open_lower = open_lo[keep], open_hi[keep], open_lower[keep]
    open_coeff = None if open_coeff is None else open_coeff[keep]
    while open_lo.shape[0]:
        if time.monotonic() >= deadline:
            return BabOutcome("timeout", _stats(stats, open_lower, prop, start)), None
        if open_lo.shape[0] > config.max_domains:
            return BabOutcome("unknown", {**_stats(stats, open_lower, prop, start),
                                          "reason": "domain limit"}), None
        order = prop.margins(open_lower).min(1).values.argsort()
        take, rest = order[:config.input_batch_size], order[config.input_batch_size:]
        b_lo, b_hi = open_lo[take], open_hi[take]
        rows = torch.arange(b_lo.shape[0], device=b_lo.device)
        dim = _split_dimension(b_lo, b_hi, (hi - lo).reshape(1, -1),
                               None if open_coeff is None else open_coeff[take],
                               prop.target_rows(open_lower[take]))
        mid = (b_lo[rows, dim] + b_hi[rows, dim]) / 2
        left_hi, right_lo = b_hi.clone(), b_lo.clone()
        left_hi[rows, dim], right_lo[rows, dim] = mid, mid
        c_lo, c_hi = torch.cat([b_lo, right_lo]), torch.cat([left_hi, b_hi])
        found = _centre_attack(graph, c_lo, c_hi, shape, prop, try_counterexample)
        if found is not None:
            stats["rounds"] += 1
            return BabOutcome("sat", _stats(stats, open_lower, prop, start)), found
        c_lower, c_coeff = _bound(graph, c_lo, c_hi, shape, prop, options)
        proved = (prop.margins(c_lower) > 0).all(1)
        stats["rounds"] += 1
        stats["domains_visited"] += c_lo.shape[0]
        open_lo = torch.cat([open_lo[rest], c_lo[~proved]])
        open_hi = torch.cat([open_hi[rest], c_hi[~proved]])
        open_lower = torch.cat([open_lower[rest], c_lower[~proved]])
        open_coeff = None if open_coeff is None or c_coeff is None else \
            torch.cat([open_coeff[rest], c_coeff[~proved]])
    return BabOutcome("unsat", _stats(stats, open_lower, prop, start)), None


def _split_dimension(lo, hi, full_width, coeff, target):
    """Per box: the input dimension whose halving most helps the target row.

    The score is |coefficient of the target row's linear bound| x width (the
    dimension's share of that bound's looseness over the box); where no linear
    bound is known (alpha-CROWN boxes), the widest dimension relative to the box.
    """
    width = hi - lo
    if coeff is None:
        return (width / full_width.clamp(min=1e-12)).argmax(1)
    rows = torch.arange(lo.shape[0], device=lo.device)
    score = coeff[rows, target].abs() * width
    relative = width / full_width.clamp(min=1e-12)
    # a dimension with no effect anywhere still gets split eventually (ties: widest)
    return torch.where(score.amax(1) > 0, score.argmax(1), relative.argmax(1))


def _bound(graph, lo, hi, shape, prop, options):
    """(lower bounds [n, S], input coefficients [n, S, n_in] of CROWN's bound or None)."""
    n = lo.shape[0]
    out, coeffs = [], []
    for s in range(0, n, 4096):
        res = compute_bounds(graph, lo[s:s + 4096].reshape(-1, *shape),
                             hi[s:s + 4096].reshape(-1, *shape),
                             prop.C.expand(min(4096, n - s), -1, -1), options)
        out.append(res.lower.detach())
        if res.linear is not None and res.method == "crown":
            coeffs.append(res.linear[0].detach().reshape(*res.lower.shape, -1))
    coeff = torch.cat(coeffs) if len(coeffs) == len(out) else None
    return torch.cat(out), coeff


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
