"""Branching-heuristic probe: estimated vs real gain of splitting each top candidate.

    python scripts/bbps_probe.py MODEL.onnx SPEC.vnnlib [--top 6]

Bounds the root with the default configuration (alpha-CROWN), takes the worst
open disjunct, scores every neuron with BBPS and with the BaBSR-like score
(`genbab/bab/branching.py`), then for the top candidates of each *really*
splits the root domain at that neuron's branching point and bounds the two
children as branch and bound does (`genbab.bab.driver._bound`).  Prints, per
candidate: its layer (index among the splittable nodes), both estimates, and
the real gain of the worse child.  A diagnostic for heuristics, not a test.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bounds.methods import BoundOptions, compute_bounds, preactivations
from bounds.onnx_import import load_onnx, read_model
from genbab.bab import branching
from genbab.bab.branching_points import BranchingPoints
from genbab.bab.domains import Decision, split
from genbab.bab.driver import Property, _bound, _root_domain
from genbab.config import Config
from genbab.spec.vnnlib1 import parse_vnnlib1
from genbab.verify import _case_tensors, _disjunct_margins, _rows, strip_output_softmax


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("spec")
    parser.add_argument("--top", type=int, default=6, help="candidates taken from each score")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = parse_vnnlib1(args.spec)
    case = spec.cases[0]
    graph = strip_output_softmax(load_onnx(read_model(args.model)).to("cpu", torch.float32), spec)
    C, d, groups = (torch.tensor(a) for a in _rows(case, graph.output_node.size))
    C, d, groups = C.float().unsqueeze(0), d.float().unsqueeze(0), groups.unsqueeze(0)
    lo, hi = _case_tensors(case, graph.input_node.shape, "cpu", torch.float32)
    k = len(case.disjuncts)
    res = compute_bounds(graph, lo, hi, C, BoundOptions(),
                         objective=lambda lb: -_disjunct_margins(lb, d, groups, k)
                         .clamp(max=1e-3).sum())
    margins = _disjunct_margins(res.lower, d, groups, k)[0]
    worst = int(margins.argmin())
    print("disjunct margins:", np.round(margins.detach().numpy(), 3).tolist())
    rows = (groups[0] == worst).nonzero().flatten()
    prop = Property(C[:, rows], d[:, rows], groups[:, rows] * 0, 1)
    params = {n: {a: t[:, rows] for a, t in v.items()} for n, v in (res.params or {}).items()}
    config = Config().bab
    nodes = branching.splittable_nodes(graph)
    names = [s.name for s in nodes]
    points = BranchingPoints()
    with torch.no_grad():
        root = _bound(graph, (lo, hi), prop,
                      _root_domain(res.bounds, params, preactivations(graph), prop), config, 0)
        shortcuts = branching.root_shortcuts(graph, res.bounds, nodes,
                                             alphas=res.intermediate_params)
        seen = {}
        real_bbps = branching._bbps

        def spy(*a):
            seen["bbps"], seen["cheap"] = real_bbps(*a), a[6]
            return seen["bbps"]

        branching._bbps = spy
        branching.choose(root, prop.target_rows(root.lower), nodes, points, shortcuts, (lo, hi),
                         "bbps", config.bbps_candidates, config.min_width)
        branching._bbps = real_bbps
        offsets = np.cumsum([0] + [graph[n].size for n in names])
        picks = seen["bbps"][0].topk(args.top).indices.tolist() + \
            seen["cheap"][0].topk(args.top).indices.tolist()
        print(f"worst disjunct {worst}: root margin {float((root.lower - prop.d).min()):.4f}")
        print("| neuron | layer | BBPS estimate | BaBSR-like estimate | real worse-child gain |")
        print("|---:|---:|---:|---:|---:|")
        for flat in dict.fromkeys(picks):
            node = int(np.searchsorted(offsets, flat, side="right") - 1)
            neuron = flat - int(offsets[node])
            nlo, nhi = (t.reshape(-1)[neuron].reshape(1, 1) for t in root.bounds[names[node]])
            point = points.point(nodes[node].op_name, nlo, nhi, op=nodes[node].op).reshape(1)
            decision = Decision(torch.tensor([node]), torch.tensor([neuron]), point,
                                torch.tensor([True]))
            children = _bound(graph, (lo, hi), prop, split(root, decision, names), config,
                              config.iterations)
            gain = float((children.lower - prop.d).min() - (root.lower - prop.d).min())
            print(f"| {flat} | {node + 1} | {float(seen['bbps'][0, flat]):.3f} | "
                  f"{float(seen['cheap'][0, flat]):.3f} | {gain:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
