"""Branching heuristics: which neuron to split in each domain, and where.

Both heuristics estimate, for every candidate neuron, how much the bound of
the targeted row would improve in the *worse* of the two children, from the
change of that neuron's relaxation (children relaxed on [l, p] and [p, u]):
``delta = A+ (child line - parent line)_lower + A- (...)_upper``.

- ``babsr``: the change is evaluated on the child's own interval of the
  neuron, at its middle (propagated only to the previous layer).
- ``bbps`` (bound propagation with shortcuts, GenBaB): the change is added to
  the domain's linear bound in the network input, with the neuron replaced by
  its linear bounds in terms of the input saved from the root CROWN pass, and
  concretised over the input box.  Computed for the ``bbps_candidates`` best
  neurons of the cheap filter.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bounds.traversal import backward_record, concretize, identity_spec
from genbab.bab.domains import Decision, Domains

Tensor = torch.Tensor


@dataclass(frozen=True)
class Splittable:
    """A node whose neurons may be split: the input of a univariate nonlinear op."""

    name: str  # the pre-activation node
    consumer: str  # the nonlinear node
    op: object
    op_name: str


def splittable_nodes(graph) -> list[Splittable]:
    from bounds.ops.activation import Elementwise

    out = []
    for node in graph.nonlinear_nodes():
        if isinstance(node.op, Elementwise) and graph[node.inputs[0]].op.kind != "input":
            out.append(Splittable(node.inputs[0], node.name, node.op, type(node.op).__name__))
    seen, unique = set(), []
    for s in out:
        if s.name not in seen:
            seen.add(s.name)
            unique.append(s)
    return unique


def root_shortcuts(graph, bounds, nodes: list[Splittable], limit: int = 20_000_000,
                   alphas: dict | None = None):
    """Linear bounds of each splittable node in the input: name -> (aL, cL, aU, cU).

    aL/aU are [N_node, n_in]; None when they would exceed ``limit`` numbers.
    ``alphas[name]`` (the root's optimised relaxation of that node's own pass,
    from layer-by-layer alpha-CROWN) is used where given: the default CROWN
    lines can give shortcuts far wider than the node's tightened bounds, and
    then BBPS scores mean little.
    """
    n_in = graph.input_node.size
    if sum(graph[s.name].size for s in nodes) * 2 * n_in > limit:
        return None
    out = {}
    like = bounds[graph.inputs[0]][0]
    for s in nodes:
        node = graph[s.name]
        N = node.size
        A = identity_spec(N, node.shape, 1, 0, N, like)
        with torch.no_grad():
            _, _, linear = backward_record(graph, s.name, A, bounds,
                                          None if alphas is None else alphas.get(s.name))
        A_x, bias = linear[0][0].reshape(2 * N, -1), linear[1][0]
        out[s.name] = (A_x[:N], bias[:N], -A_x[N:], -bias[N:])
    return out


def _relax_delta(op, lo, hi, a, point):
    """Per child (left, right): (delta_w, delta_b, child lo, child hi), all [N, n]."""
    parent = op.relax(lo, hi)
    a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
    out = []
    for clo, chi in ((lo, point), (point, hi)):
        child = op.relax(clo, chi)
        dw = a_pos * (child.lw - parent.lw) + a_neg * (child.uw - parent.uw)
        db = a_pos * (child.lb - parent.lb) + a_neg * (child.ub - parent.ub)
        out.append((dw, db, clo, chi))
    return out


def _candidates(s: Splittable, lo, hi, min_width):
    from bounds.ops.activation import Relu

    mask = (hi - lo) > min_width
    if isinstance(s.op, Relu):
        mask &= (lo < 0) & (hi > 0)
    return mask


def choose(domains: Domains, target: Tensor, nodes: list[Splittable], points, shortcuts,
           box: tuple[Tensor, Tensor], heuristic: str, top_k: int,
           min_width: float) -> Decision:
    """One split per domain; ``target`` [N] is the row of C each domain works on."""
    N = len(domains)
    rows = torch.arange(N, device=target.device)
    cheap_all, info = [], []
    for index, s in enumerate(nodes):
        lo, hi = domains.bounds[s.name]
        lo, hi = lo.reshape(N, -1), hi.reshape(N, -1)
        a = domains.coefficients[s.consumer][rows, target].reshape(N, -1)
        point = points.point(s.op_name, lo, hi, op=s.op)
        deltas = _relax_delta(s.op, lo, hi, a, point)
        # change of the bound at the middle of each child's interval (a pointwise
        # minimum is 0 for every ReLU split at 0, which would rank nothing)
        scores = [db + dw * (clo + chi) / 2 for dw, db, clo, chi in deltas]
        score = torch.minimum(*scores).nan_to_num(nan=-float("inf"), posinf=1e30)
        score = torch.where(_candidates(s, lo, hi, min_width), score,
                            torch.full_like(score, -float("inf")))
        cheap_all.append(score)
        info.append((lo, hi, a, point, deltas))
    cheap = torch.cat(cheap_all, 1)
    offsets = torch.tensor([0] + [c.shape[1] for c in cheap_all], device=cheap.device).cumsum(0)
    if heuristic == "bbps" and shortcuts is not None and domains.linear is not None:
        final = _bbps(domains, target, nodes, info, shortcuts, box, cheap, offsets, top_k)
    else:
        final = cheap
    best = final.argmax(1)
    valid = torch.isfinite(final[rows, best])
    node = torch.searchsorted(offsets, best, right=True) - 1
    neuron = best - offsets[node]
    points_flat = torch.cat([i[3] for i in info], 1)
    return Decision(node, neuron, points_flat[rows, best], valid)


def _bbps(domains, target, nodes, info, shortcuts, box, cheap, offsets, top_k):
    """Rescore the top-k neurons of the cheap filter with shortcut propagation."""
    N = cheap.shape[0]
    rows = torch.arange(N, device=cheap.device)
    k = min(top_k, cheap.shape[1])
    top = cheap.topk(k, dim=1).indices  # [N, k]
    A_x = domains.linear[0][rows, target].reshape(N, 1, -1)  # [N, 1, n_in]
    bias = domains.linear[1][rows, target].reshape(N, 1)
    lo_x, hi_x = box[0].reshape(1, -1), box[1].reshape(1, -1)
    base = concretize(A_x, lo_x.expand(N, -1), hi_x.expand(N, -1))  # [N, 1]
    a_l = torch.cat([shortcuts[s.name][0] for s in nodes])  # [total, n_in]
    c_l = torch.cat([shortcuts[s.name][1] for s in nodes])
    a_u = torch.cat([shortcuts[s.name][2] for s in nodes])
    c_u = torch.cat([shortcuts[s.name][3] for s in nodes])
    worst = None
    for side in (0, 1):
        dw = torch.cat([i[4][side][0] for i in info], 1).gather(1, top)  # [N, k]
        db = torch.cat([i[4][side][1] for i in info], 1).gather(1, top)
        pos = (dw >= 0).unsqueeze(-1)
        a_sh = torch.where(pos, a_l[top], a_u[top])  # [N, k, n_in]
        c_sh = torch.where(dw >= 0, c_l[top], c_u[top])
        A_new = A_x + dw.unsqueeze(-1) * a_sh
        value = concretize(A_new, lo_x.expand(N, -1), hi_x.expand(N, -1)) + bias + \
            dw * c_sh + db
        gain = value - (base + bias)
        worst = gain if worst is None else torch.minimum(worst, gain)
    valid = torch.isfinite(cheap.gather(1, top)) & ~torch.isnan(worst)
    worst = torch.where(valid, worst, torch.full_like(worst, -float("inf")))
    out = torch.full_like(cheap, -float("inf"))
    return out.scatter(1, top, worst)
