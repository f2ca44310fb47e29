"""The operator contract shared by every op class, and small tensor helpers.

An op is a value: it holds its constant parameters and nothing else.  Every op
offers ``forward`` (concrete evaluation), ``interval`` (IBP) and ``backward``
(one step of backward linear bound propagation for a *lower* bound: given the
coefficients ``A`` of a linear function of this op's output, return the
coefficients on each variable input plus a constant).  Upper bounds are
obtained as ``-lower(-A)`` by the traversal, so ops only implement one side.

Shapes: tensors carry a leading batch dimension ``B``; coefficient tensors
``A`` are ``[B, S, *shape]`` with ``S`` the number of linear functions bounded
at once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
Bounds = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class LinearRelaxation:
    """``lw * x + lb <= f(x) <= uw * x + ub`` elementwise on an interval."""

    lw: Tensor
    lb: Tensor
    uw: Tensor
    ub: Tensor


class Op:
    """Base class.  ``kind`` is 'input', 'affine' or 'nonlinear'."""

    kind = "affine"
    n_inputs = 1

    def forward(self, *xs: Tensor) -> Tensor:
        raise NotImplementedError

    def interval(self, *bounds: Bounds) -> Bounds:
        raise NotImplementedError

    def backward(self, A: Tensor, in_bounds: Sequence[Bounds | None],
                 params: dict[str, Tensor] | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        """Lower-bound step: ``A·y >= sum_i A_i·x_i + bias``; returns ([A_i], bias[B, S])."""
        raise NotImplementedError

    def init_alpha(self, in_bounds: Sequence[Bounds]) -> dict[str, Tensor]:
        """Initial optimisable parameters (per-element tensors shaped like the bounds).

        Ops without optimisable relaxations return {}.  The traversal expands
        each tensor to [B, S, *shape] and passes it back to ``backward``.
        """
        return {}

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Op:
        """A copy with every tensor parameter moved; ops without tensors return self."""
        changes = {}
        for key, value in vars(self).items():
            if isinstance(value, Tensor):
                changes[key] = value.to(device=device, dtype=dtype if value.is_floating_point()
                                        else value.dtype)
        if not changes:
            return self
        clone = object.__new__(type(self))
        clone.__dict__.update(vars(self))
        clone.__dict__.update(changes)
        return clone

    def __repr__(self) -> str:
        return type(self).__name__


class InputOp(Op):
    """A network input; bounds come from the property's box."""

    kind = "input"
    n_inputs = 0


def flat_dot(A: Tensor, v: Tensor) -> Tensor:
    """``sum over the trailing dims of A * v``: [B, S, *shape] x [B or 1, *shape] -> [B, S]."""
    prod = A * v.unsqueeze(1)
    return prod.reshape(prod.shape[0], prod.shape[1], -1).sum(-1)


def unbroadcast(A: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum ``A`` [B, S, *out] down to [B, S, *shape] where ``shape`` was broadcast up."""
    target = tuple(shape)
    extra = A.dim() - 2 - len(target)
    if extra > 0:
        A = A.sum(dim=tuple(range(2, 2 + extra)))
    dims = [i + 2 for i, n in enumerate(target) if n == 1 and A.shape[i + 2] != 1]
    if dims:
        A = A.sum(dim=dims, keepdim=True)
    return A


def split_signs(A: Tensor) -> tuple[Tensor, Tensor]:
    return A.clamp(min=0), A.clamp(max=0)
