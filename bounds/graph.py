"""The graph IR: nodes in topological order, each an op over named inputs.

A ``Graph`` is built once (from ONNX by ``bounds.onnx_import``) and is then
read-only.  Shapes are per sample (no batch axis); every runtime tensor has a
leading batch axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bounds.ops.base import InputOp, Op, Tensor


@dataclass(frozen=True)
class Node:
    name: str
    op: Op
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    onnx_name: str = ""  # the ONNX node (or tensor) this came from, for messages

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]  # topological order, inputs first
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    by_name: dict[str, Node] = field(init=False, repr=False, compare=False)
    consumers: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _ancestor_cache: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "by_name", {n.name: n for n in self.nodes})
        users: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                users[i].append(n.name)
        object.__setattr__(self, "consumers", {k: tuple(v) for k, v in users.items()})
        object.__setattr__(self, "_ancestor_cache", {})

    def __getitem__(self, name: str) -> Node:
        return self.by_name[name]

    @property
    def input_node(self) -> Node:
        return self.by_name[self.inputs[0]]

    @property
    def output_node(self) -> Node:
        return self.by_name[self.outputs[0]]

    def forward_all(self, *xs: Tensor) -> dict[str, Tensor]:
        values: dict[str, Tensor] = dict(zip(self.inputs, xs))
        for node in self.nodes:
            if node.name not in values:
                values[node.name] = node.op.forward(*(values[i] for i in node.inputs))
        return values

    def forward(self, *xs: Tensor) -> Tensor:
        return self.forward_all(*xs)[self.outputs[0]]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Graph:
        nodes = tuple(Node(n.name, n.op.to(device, dtype), n.inputs, n.shape, n.onnx_name)
                      for n in self.nodes)
        return Graph(nodes, self.inputs, self.outputs)

    def ancestors(self, name: str) -> set[str]:
        seen, stack = set(), [name]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            stack.extend(self.by_name[cur].inputs)
        return seen

    def ancestor_nodes(self, name: str) -> list[Node]:
        """Nodes ``name`` depends on (itself included), in topological order; cached."""
        cache = self._ancestor_cache
        if name not in cache:
            keep = self.ancestors(name)
            cache[name] = [n for n in self.nodes if n.name in keep]
        return cache[name]

    def nonlinear_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op.kind == "nonlinear"]

    def truncated(self, output: str) -> Graph:
        """The sub-graph computing ``output`` (e.g. to drop a final Softmax)."""
        keep = self.ancestors(output)
        return Graph(tuple(n for n in self.nodes if n.name in keep), self.inputs, (output,))


def input_node(name: str, shape: tuple[int, ...]) -> Node:
    return Node(name, InputOp(), (), shape, name)
