"""Softmax along one axis: forward, IBP, and a sound (constant) relaxation.

IBP per output i: exp(l_i) / (exp(l_i) + sum_{j!=i} exp(u_j)) <= y_i <= the
same with l and u swapped; both clipped to [0, 1].  The backward step uses these
constant bounds (slopes zero); a tighter linear relaxation comes with the
general-nonlinearity work.
"""
from __future__ import annotations

import torch

from bounds.ops.base import Op, split_signs


class Softmax(Op):
    kind = "nonlinear"
    alpha_names: tuple[str, ...] = ()

    def __init__(self, axis: int):
        self.axis = axis  # axis of the batched tensor (batch axis is 0)

    def forward(self, x):
        return torch.softmax(x, dim=self.axis)

    def interval(self, bounds):
        lo, hi = bounds
        shift = hi.amax(dim=self.axis, keepdim=True)
        el, eu = torch.exp(lo - shift), torch.exp(hi - shift)
        sum_u, sum_l = eu.sum(self.axis, keepdim=True), el.sum(self.axis, keepdim=True)
        low = el / (el + (sum_u - eu).clamp(min=0))
        high = eu / (eu + (sum_l - el).clamp(min=0))
        return low.clamp(0, 1), high.nan_to_num(1.0).clamp(0, 1)

    def backward(self, A, in_bounds, params=None):
        low, high = self.interval(in_bounds[0])
        A_pos, A_neg = split_signs(A)
        bias = A_pos * low.unsqueeze(1) + A_neg * high.unsqueeze(1)
        return [torch.zeros_like(A)], bias.reshape(A.shape[0], A.shape[1], -1).sum(-1)
