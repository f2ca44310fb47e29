"""The GenBaB loop over one property case, as numbered steps.

1. pick the worst open domains (up to the batch size);
2. decide one neuron and a branching point per domain (BBPS / BaBSR, lookup
   table / midpoint);
3. split each into two children (intermediate bounds tightened, split
   constraints recorded);
4. bound all children in ONE batched call (alpha warm-started from the parent,
   beta for the split constraints);
5. prune children whose bound proves every disjunct; push the rest.
Stops on: all proved (unsat), time out, or the domain limit (unknown).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from bounds.methods import preactivations
from bounds.split_bounds import bound_under_splits
from genbab.bab.branching import choose, root_shortcuts, splittable_nodes
from genbab.bab.domains import Domains, split


@dataclass
class BabOutcome:
    verdict: str  # unsat | unknown | timeout
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Property:
    """The case being verified: rows C y >= d grouped into disjuncts (all must be proved)."""

    C: torch.Tensor  # [1, S, n_out]
    d: torch.Tensor  # [1, S]
    groups: torch.Tensor  # [1, S] disjunct index of each row
    n_disjuncts: int

    def margins(self, lower: torch.Tensor) -> torch.Tensor:
        """[N, K]: best row of each disjunct, lower bound minus threshold (> 0 proves)."""
        slack = lower - self.d
        out = torch.full((lower.shape[0], self.n_disjuncts), -float("inf"), dtype=slack.dtype,
                         device=slack.device)
        return out.scatter_reduce(1, self.groups.expand(lower.shape[0], -1), slack, "amax")

    def target_rows(self, lower: torch.Tensor) -> torch.Tensor:
        """Per domain: the best row of its worst unproved disjunct."""
        m = self.margins(lower)
        worst = m.argmin(1)  # [N]
        slack = lower - self.d
        in_worst = self.groups.expand_as(slack) == worst.unsqueeze(1)
        return torch.where(in_worst, slack, torch.full_like(slack, -float("inf"))).argmax(1)


def branch_and_bound(graph, box, root_bounds, root_params, prop: Property, config, points,
                     deadline: float, shortcut_alphas: dict | None = None) -> BabOutcome:
    """Split nonlinear neurons until every domain is proved, time runs out or too many."""
    nodes = splittable_nodes(graph)
    stats = {"rounds": 0, "domains_visited": 1, "max_depth": 0}
    if not nodes:
        return BabOutcome("unknown", {**stats, "reason": "no splittable neurons"})
    names = [s.name for s in nodes]
    shortcuts = root_shortcuts(graph, root_bounds, nodes, alphas=shortcut_alphas) \
        if config.heuristic == "bbps" else None
    bounded = preactivations(graph)  # every node whose bounds a relaxation needs
    root = _bound(graph, box, prop, _root_domain(root_bounds, root_params, bounded, prop),
                  config, iterations=0)
    start = time.monotonic()
    if bool((prop.margins(root.lower) > 0).all()):
        return BabOutcome("unsat", _finish(stats, root.select(root.depth[:0]), prop, start))
    open_domains = root
    while len(open_domains):
        if time.monotonic() >= deadline:
            return BabOutcome("timeout", _finish(stats, open_domains, prop, start))
        if len(open_domains) > config.max_domains:
            return BabOutcome("unknown", {**_finish(stats, open_domains, prop, start),
                                          "reason": "domain limit"})
        # 1. pick the worst domains
        worst_margin = prop.margins(open_domains.lower).min(1).values
        order = worst_margin.argsort()
        batch = open_domains.select(order[:config.batch_size])
        rest = open_domains.select(order[config.batch_size:])
        # 2. decide
        decision = choose(batch, prop.target_rows(batch.lower), nodes, points, shortcuts, box,
                          config.heuristic, config.bbps_candidates, config.min_width)
        if not bool(decision.valid.all()):
            return BabOutcome("unknown", {**_finish(stats, open_domains, prop, start),
                                          "reason": "a domain has no neuron left to split"})
        # 3. split
        children = split(batch, decision, names)
        # 4. bound all children at once
        children = _bound(graph, box, prop, children, config, config.iterations,
                          lambda: time.monotonic() >= deadline)
        # 5. prune the proved ones, push the rest
        proved = (prop.margins(children.lower) > 0).all(1)
        stats["rounds"] += 1
        stats["domains_visited"] += len(children)
        stats["max_depth"] = max(stats["max_depth"], int(children.depth.max()))
        open_domains = Domains.cat([rest, children.select(torch.nonzero(~proved).flatten())]) \
            if bool((~proved).any()) or len(rest) else rest
    return BabOutcome("unsat", _finish(stats, open_domains, prop, start))


def _finish(stats, domains, prop, start):
    out = dict(stats)
    out["open_domains"] = len(domains)
    out["bab_time"] = round(time.monotonic() - start, 3)
    if len(domains):
        out["worst_open_margin"] = float(prop.margins(domains.lower).min())
    return out


def _root_domain(root_bounds, root_params, names, prop) -> Domains:
    bounds = {k: root_bounds[k] for k in names}
    like = prop.d
    return Domains(bounds,
                   {k: torch.zeros_like(v[0], dtype=torch.bool) for k, v in bounds.items()},
                   {k: torch.zeros_like(v[0], dtype=torch.bool) for k, v in bounds.items()},
                   root_params or {}, like.new_full(like.shape, -float("inf")), {}, None,
                   torch.zeros(1, dtype=torch.long, device=like.device))


def _bound(graph, box, prop: Property, domains: Domains, config, iterations: int,
           deadline=None) -> Domains:
    n = len(domains)
    bounds = {graph.inputs[0]: (box[0].expand(n, *box[0].shape[1:]),
                                box[1].expand(n, *box[1].shape[1:]))}
    bounds.update(domains.bounds)
    masks = {k: (domains.split_lo[k], domains.split_hi[k]) for k in domains.bounds}
    C = prop.C.expand(n, -1, -1)

    def objective(lower):
        return -prop.margins(lower).clamp(max=1e-3).sum()

    def done(lower):
        return bool((prop.margins(lower) > 0).all())

    result = bound_under_splits(graph, bounds, C, masks, domains.params, iterations, config.lr,
                                objective, done, deadline)
    lower = torch.maximum(result.lower, domains.lower)  # children are never looser
    return Domains(domains.bounds, domains.split_lo, domains.split_hi, result.params, lower,
                   result.coefficients, result.linear, domains.depth)
