"""Builders shared by the branch-and-bound test files: paths, random MLPs, boxes.

(Imported as ``helpers``: pytest puts this folder on sys.path.)
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch

from bounds.graph import Graph, Node, input_node
from bounds.ops.activation import Relu, Sigmoid, Tanh
from bounds.ops.affine import Linear

F64 = torch.float64
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "vnnlib_specs" / "examples"
ACTIVATIONS = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": Relu}


def mlp(sizes, act, gen: torch.Generator | int, scale: float = 1.5) -> Graph:
    """x -> Linear -> act -> ... -> Linear, float64 weights drawn from ``gen`` (or a seed)."""
    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    nodes, prev = [input_node("x", (sizes[0],))], "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = torch.randn(b, a, dtype=F64, generator=gen) * scale
        nodes.append(Node(f"l{i}", Linear(w, torch.randn(b, dtype=F64, generator=gen)),
                          (prev,), (b,)))
        prev = f"l{i}"
        if i < len(sizes) - 2:
            nodes.append(Node(f"a{i}", act(), (prev,), (b,)))
            prev = f"a{i}"
    return Graph(tuple(nodes), ("x",), (prev,))


def box(n: int, seed: int, radius: float = 0.5):
    centre = torch.randn(1, n, dtype=F64, generator=torch.Generator().manual_seed(seed + 999))
    return centre - radius, centre + radius
