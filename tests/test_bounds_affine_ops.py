"""Affine ops (bounds/ops/affine.py): exact backward step, sound and tight IBP.

For every affine op class (Linear, ConstMatMulLeft, ElementwiseAffine with
broadcasting constants, AddVar, Conv 1-d/2-d with stride, dilation, groups and
asymmetric pads, Reshape, Rearrange):

- ``backward(A)`` is the exact vector-Jacobian product: ``A_in`` equals the
  gradient of ``A·y(x)`` computed by torch.autograd, and ``A·y(x) = A_in·x + bias``
  at random ``x``;
- ``interval`` contains ``forward`` at points sampled in random boxes, equals
  the exact range (centre value plus ``|J|·radius``), and is exact on a point box.
"""
from __future__ import annotations

import pytest
import torch

from bounds.ops.affine import (
    AddVar,
    ConstMatMulLeft,
    Conv,
    ElementwiseAffine,
    Linear,
    Rearrange,
    Reshape,
)

F64 = torch.float64
BATCH, SPECS = 3, 4



def rnd(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _conv(in_shape, w_shape, stride, pads, dilation, groups, bias=True):
    weight = rnd(*w_shape, seed=1)
    return Conv(weight, rnd(w_shape[0], seed=2) if bias else None, stride, pads, dilation, groups,
                in_shape), [in_shape]


def _transpose(in_shape, perm):
    return Rearrange(lambda t: t.permute(perm), in_shape, f"Transpose{perm}"), [in_shape]


# Each case: () -> (op, [per-sample input shapes]).
CASES = {
    "linear": lambda: (Linear(rnd(5, 4), rnd(5, seed=1)), [(4,)]),
    "linear_no_bias": lambda: (Linear(rnd(3, 6), None), [(6,)]),
    "linear_over_last_axis": lambda: (Linear(rnd(5, 4), rnd(5, seed=1)), [(2, 4)]),
    "matmul_left": lambda: (ConstMatMulLeft(rnd(3, 4)), [(4, 2)]),
    "matmul_left_batched": lambda: (ConstMatMulLeft(rnd(2, 3, 4)), [(2, 4, 5)]),
    "matmul_left_broadcast_weight": lambda: (ConstMatMulLeft(rnd(3, 4)), [(2, 4, 5)]),
    "scale_scalar": lambda: (ElementwiseAffine(torch.tensor(-2.5, dtype=F64), None, (3, 4)),
                             [(3, 4)]),
    "shift_row": lambda: (ElementwiseAffine(None, rnd(4), (3, 4)), [(3, 4)]),
    "batchnorm_like": lambda: (ElementwiseAffine(rnd(3, 1, 1), rnd(3, 1, 1, seed=1), (3, 2, 2)),
                               [(3, 2, 2)]),
    "scale_broadcasts_input_up": lambda: (ElementwiseAffine(rnd(3, 4), rnd(4, seed=1), (3, 1)),
                                          [(3, 1)]),
    "scale_with_zeros": lambda: (ElementwiseAffine(torch.tensor([0.0, -1.0, 3.0], dtype=F64),
                                                   torch.tensor(1.5, dtype=F64), (2, 3)),
                                 [(2, 3)]),
    "add_var": lambda: (AddVar(1.0, [(3, 4), (3, 4)]), [(3, 4), (3, 4)]),
    "sub_var_broadcast_row": lambda: (AddVar(-1.0, [(3, 4), (1, 4)]), [(3, 4), (1, 4)]),
    "sub_var_outer": lambda: (AddVar(-1.0, [(3, 1), (1, 4)]), [(3, 1), (1, 4)]),
    "conv1d": lambda: _conv((2, 9), (3, 2, 3), [1], [0, 0], [1], 1),
    "conv1d_stride_dilation_groups_pads": lambda: _conv((4, 11), (4, 2, 3), [2], [2, 1], [2], 2,
                                                        bias=False),
    "conv2d_asymmetric": lambda: _conv((3, 7, 6), (4, 3, 3, 2), [2, 1], [1, 0, 2, 1], [1, 2], 1),
    "conv2d_groups_stride": lambda: _conv((4, 8, 8), (6, 2, 3, 3), [2, 2], [1, 1, 1, 1], [1, 1],
                                          2),
    "conv2d_depthwise_drops_rows": lambda: _conv((3, 8, 7), (3, 1, 2, 2), [3, 3], [0, 1, 1, 0],
                                                 [1, 1], 3),
    "reshape": lambda: (Reshape((2, 3, 4), (6, 4)), [(2, 3, 4)]),
    "flatten": lambda: (Reshape((3, 2, 2), (12,)), [(3, 2, 2)]),
    "transpose_2d": lambda: _transpose((3, 4), (0, 2, 1)),
    "transpose_3d": lambda: _transpose((2, 3, 4), (0, 3, 1, 2)),
    "slice": lambda: (Rearrange(lambda t: t[:, 1:4], (5,), "Slice"), [(5,)]),
    "gather_repeats": lambda: (Rearrange(lambda t: t[:, [2, 0, 2]], (4,), "Gather"), [(4,)]),
}


def inputs(shapes, seed: int, requires_grad: bool = False) -> list[torch.Tensor]:
    return [rnd(BATCH, *s, seed=seed + i).requires_grad_(requires_grad)
            for i, s in enumerate(shapes)]


def flat_dot(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B, S, *shape] . [B, *shape] -> [B, S]."""
    return (A * x.unsqueeze(1)).reshape(A.shape[0], A.shape[1], -1).sum(-1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_is_the_exact_vjp(name):
    op, shapes = CASES[name]()
    out_shape = op.forward(*inputs(shapes, seed=5)).shape[1:]
    A = rnd(BATCH, SPECS, *out_shape, seed=11)
    A_ins, bias = op.backward(A, [None] * len(shapes))
    assert len(A_ins) == len(shapes)
    assert bias.shape == (BATCH, SPECS)
    for A_in, shape in zip(A_ins, shapes):
        assert A_in.shape == (BATCH, SPECS, *shape), f"{name}: A_in shape {tuple(A_in.shape)}"

    xs = inputs(shapes, seed=20, requires_grad=True)
    y = op.forward(*xs)
    for s in range(SPECS):
        grads = torch.autograd.grad(flat_dot(A[:, s:s + 1], y).sum(), xs, retain_graph=True)
        for A_in, g in zip(A_ins, grads):
            torch.testing.assert_close(A_in[:, s], g, rtol=1e-12, atol=1e-12)

    for seed in (30, 40):  # A·y(x) = sum_i A_i·x_i + bias at random points
        xs = inputs(shapes, seed=seed)
        lhs = flat_dot(A, op.forward(*xs))
        rhs = sum(flat_dot(A_in, x) for A_in, x in zip(A_ins, xs)) + bias
        torch.testing.assert_close(lhs, rhs, rtol=1e-11, atol=1e-11)


def random_box(shape, seed: int):
    centre = rnd(BATCH, *shape, seed=seed)
    radius = rnd(BATCH, *shape, seed=seed + 1).abs()
    radius[0] = 0.0  # a degenerate sample next to proper boxes
    return centre - radius, centre + radius


def sample_box(lo, hi, n: int, seed: int) -> torch.Tensor:
    """[n, B, *shape]: uniform points and random vertices."""
    u = torch.rand((n, *lo.shape), generator=torch.Generator().manual_seed(seed), dtype=F64)
    u[: n // 2] = u[: n // 2].round()
    return lo + u * (hi - lo)


@pytest.mark.parametrize("name", sorted(CASES))
def test_interval_contains_forward(name):
    op, shapes = CASES[name]()
    boxes = [random_box(s, seed=50 + 7 * i) for i, s in enumerate(shapes)]
    lo_out, hi_out = op.interval(*boxes)
    n = 500
    points = [sample_box(lo, hi, n, seed=60 + i) for i, (lo, hi) in enumerate(boxes)]
    y = op.forward(*(p.reshape(n * BATCH, *p.shape[2:]) for p in points))
    y = y.reshape(n, BATCH, *y.shape[1:])
    assert lo_out.shape == y.shape[1:] and hi_out.shape == y.shape[1:]
    tol = 1e-12 * (1 + y.abs())
    assert bool((y >= lo_out - tol).all()) and bool((y <= hi_out + tol).all())


@pytest.mark.parametrize("name", sorted(CASES))
def test_interval_is_the_exact_range(name):
    """For an affine map the box image's bounds are y(c) -/+ |J| r, attained at vertices."""
    op, shapes = CASES[name]()
    boxes = [random_box(s, seed=70 + 7 * i) for i, s in enumerate(shapes)]
    lo_out, hi_out = op.interval(*boxes)
    centres = [(lo + hi) / 2 for lo, hi in boxes]
    out_shape = op.forward(*centres).shape[1:]
    size = out_shape.numel()
    eye = torch.eye(size, dtype=F64).reshape(1, size, *out_shape).expand(BATCH, -1, *out_shape)
    A_ins, _ = op.backward(eye, [None] * len(shapes))  # rows of the Jacobian (checked above)
    spread = sum(flat_dot(J.abs(), (hi - lo) / 2) for J, (lo, hi) in zip(A_ins, boxes))
    mid = op.forward(*centres).reshape(BATCH, size)
    torch.testing.assert_close(hi_out.reshape(BATCH, size), mid + spread, rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(lo_out.reshape(BATCH, size), mid - spread, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_interval_is_exact_on_a_point(name):
    op, shapes = CASES[name]()
    xs = inputs(shapes, seed=90)
    lo_out, hi_out = op.interval(*((x, x) for x in xs))
    y = op.forward(*xs)
    assert torch.equal(lo_out, y) and torch.equal(hi_out, y)


@pytest.mark.parametrize("name", ["linear", "conv2d_asymmetric", "matmul_left_batched"])
def test_float32_backward_matches_float64(name):
    op, shapes = CASES[name]()
    out_shape = op.forward(*inputs(shapes, seed=5)).shape[1:]
    A = rnd(BATCH, SPECS, *out_shape, seed=11)
    (A64,), b64 = op.backward(A, [None])
    op32 = op.to("cpu", torch.float32)
    (A32,), b32 = op32.backward(A.float(), [None])
    assert A32.dtype == torch.float32 and b32.dtype == torch.float32
    torch.testing.assert_close(A32.double(), A64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b32.double(), b64, rtol=1e-5, atol=1e-5)


def test_matmul_left_with_broadcast_variable_has_input_shape():
    op = ConstMatMulLeft(rnd(3, 2, 4), (1, 4, 5))  # the importer records the input shape
    x = rnd(BATCH, 1, 4, 5, seed=1)
    y = op.forward(x)
    assert y.shape == (BATCH, 3, 2, 5)
    (A_in,), _ = op.backward(rnd(BATCH, SPECS, 3, 2, 5, seed=2), [None])
    assert A_in.shape == (BATCH, SPECS, 1, 4, 5)


@pytest.mark.parametrize("batch", [2, 3])
def test_add_var_of_different_ranks_keeps_samples_apart(batch):
    op = AddVar(1.0, [(3, 4), (4,)])
    x1, x2 = rnd(batch, 3, 4, seed=1), rnd(batch, 4, seed=2)
    expected = x1 + x2[:, None, :]
    torch.testing.assert_close(op.forward(x1, x2), expected)
    lo, _ = op.interval((x1, x1), (x2, x2))
    torch.testing.assert_close(lo, expected)
