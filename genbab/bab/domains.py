"""The batch of open BaB domains, held as batched tensors.

Per domain: the intermediate bounds of every splittable node (inputs of
nonlinear nodes), which of those bounds come from splits (for the beta
constraints), the warm-start alpha of the final layer, the current lower
bounds of the property's rows, the coefficients that reached each nonlinear
node in the last bound (for the branching heuristics), and the depth.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class Domains:
    bounds: dict[str, tuple[Tensor, Tensor]]  # splittable node -> (lo, hi) [N, *shape]
    split_lo: dict[str, Tensor]  # bool [N, *shape]: lower bound set by a split
    split_hi: dict[str, Tensor]
    params: dict[str, dict[str, Tensor]]  # final-layer alpha [N, S, *shape]
    lower: Tensor  # [N, S] lower bounds of C y
    coefficients: dict[str, Tensor]  # nonlinear node -> [N, S, *shape]
    linear: tuple[Tensor, Tensor] | None  # (A_x [N, S, *in], bias [N, S]) of the last bound
    depth: Tensor  # [N]

    def __len__(self) -> int:
        return self.lower.shape[0]

    def select(self, index: Tensor) -> Domains:
        def pick(t):
            return t[index]
        return Domains(
            {k: (pick(lo), pick(hi)) for k, (lo, hi) in self.bounds.items()},
            {k: pick(v) for k, v in self.split_lo.items()},
            {k: pick(v) for k, v in self.split_hi.items()},
            {k: {n: pick(t) for n, t in v.items()} for k, v in self.params.items()},
            pick(self.lower),
            {k: pick(v) for k, v in self.coefficients.items()},
            None if self.linear is None else (pick(self.linear[0]), pick(self.linear[1])),
            pick(self.depth))

    @staticmethod
    def cat(parts: list[Domains]) -> Domains:
        parts = [p for p in parts if len(p)]
        first = parts[0]
        if len(parts) == 1:
            return first

        def join(get):
            return torch.cat([get(p) for p in parts])
        return Domains(
            {k: (join(lambda p, k=k: p.bounds[k][0]), join(lambda p, k=k: p.bounds[k][1]))
             for k in first.bounds},
            {k: join(lambda p, k=k: p.split_lo[k]) for k in first.split_lo},
            {k: join(lambda p, k=k: p.split_hi[k]) for k in first.split_hi},
            {k: {n: join(lambda p, k=k, n=n: p.params[k][n]) for n in v}
             for k, v in first.params.items()},
            join(lambda p: p.lower),
            {k: join(lambda p, k=k: p.coefficients[k]) for k in first.coefficients},
            None if first.linear is None else (join(lambda p: p.linear[0]),
                                               join(lambda p: p.linear[1])),
            join(lambda p: p.depth))


@dataclass(frozen=True)
class Decision:
    """One split per domain: node index (into the splittable list), flat neuron, point."""

    node: Tensor  # [n] long
    neuron: Tensor  # [n] long, flat index inside the node
    point: Tensor  # [n] branching point
    valid: Tensor  # [n] bool: a splittable neuron was found


def split(domains: Domains, decision: Decision, names: list[str]) -> Domains:
    """Two children per domain: [lo, p] (left) then [p, hi] (right), stacked left-first."""
    n = len(domains)
    twice = torch.cat([torch.arange(n, device=decision.node.device)] * 2)
    children = domains.select(twice)
    side_right = torch.arange(2 * n, device=twice.device) >= n
    node2, neuron2, point2 = (decision.node.repeat(2), decision.neuron.repeat(2),
                              decision.point.repeat(2))
    rows = torch.arange(2 * n, device=twice.device)
    for index, name in enumerate(names):
        chosen = (node2 == index) & decision.valid.repeat(2)
        if not bool(chosen.any()):
            continue
        lo, hi = children.bounds[name]
        lo, hi = lo.reshape(2 * n, -1).clone(), hi.reshape(2 * n, -1).clone()
        s_lo = children.split_lo[name].reshape(2 * n, -1).clone()
        s_hi = children.split_hi[name].reshape(2 * n, -1).clone()
        right = chosen & side_right
        left = chosen & ~side_right
        lo[rows[right], neuron2[right]] = point2[right].to(lo.dtype)
        s_lo[rows[right], neuron2[right]] = True
        hi[rows[left], neuron2[left]] = point2[left].to(hi.dtype)
        s_hi[rows[left], neuron2[left]] = True
        shape = children.bounds[name][0].shape
        children.bounds[name] = (lo.reshape(shape), hi.reshape(shape))
        children.split_lo[name] = s_lo.reshape(shape)
        children.split_hi[name] = s_hi.reshape(shape)
    children.depth = children.depth + 1
    return children
