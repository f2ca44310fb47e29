"""Products of variables: ``Mul`` (x*y), ``Square`` (x*x) and ``MatMul`` (X @ W).

Each class owns its forward, IBP and linear relaxation.  A product ``x*y`` on
the box [lx, ux] x [ly, uy] is relaxed by the McCormick planes

    lower:  ly*x + lx*y - lx*ly   and   uy*x + ux*y - ux*uy
    upper:  uy*x + lx*y - lx*uy   and   ly*x + ux*y - ux*ly

and a convex combination of the two planes of one side (weight ``alpha`` on
the first) is again valid, so ``alpha`` in [0, 1] is an optimisable parameter
per output element ("lower" and "upper"); 0.5 minimises the largest gap.
``MatMul`` relaxes every term ``x[i, k] * w[k, j]`` this way and sums over ``k``
with matrix products (the parameters are per output element ``(i, j)``).
Planes are widened by a rounding margin for the working dtype.  Where a bound
is infinite (or a product overflows) the relaxation falls back to the interval
bounds with zero slopes, so infinities never turn into NaN.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from bounds.ops.activation import Elementwise, rounding_margin
from bounds.ops.base import Bounds, LinearRelaxation, Op, Tensor, split_signs, unbroadcast

_DEFAULT_ALPHA = 0.5


# --- helpers --------------------------------------------------------------------------------

def _pad(t: Tensor, rank: int) -> Tensor:
    """View a batched tensor [B, *s] as [B, 1, ..., 1, *s] with ``rank`` per-sample axes.

    ONNX broadcasting aligns trailing axes; our per-sample shapes exclude the
    batch axis, so missing axes are inserted right after it.
    """
    extra = rank - (t.dim() - 1)
    return t.reshape(t.shape[0], *([1] * extra), *t.shape[1:]) if extra > 0 else t


def _outward(lo: Tensor, hi: Tensor) -> Bounds:
    """One ulp outwards: a correctly rounded result then encloses the exact one."""
    inf = torch.tensor(float("inf"), dtype=lo.dtype, device=lo.device)
    return torch.nextafter(lo, -inf), torch.nextafter(hi, inf)


def _corner_products(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> list[Tensor]:
    """The four endpoint products; 0*inf counts as 0 (the operand is exactly zero)."""
    products = [lx * ly, lx * uy, ux * ly, ux * uy]
    return [torch.where(torch.isnan(p), torch.zeros_like(p), p) for p in products]


def interval_product(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Bounds:
    """Exact interval product (before outward rounding), elementwise with broadcasting."""
    products = _corner_products(lx, ux, ly, uy)
    lo = torch.minimum(torch.minimum(products[0], products[1]),
                       torch.minimum(products[2], products[3]))
    hi = torch.maximum(torch.maximum(products[0], products[1]),
                       torch.maximum(products[2], products[3]))
    return lo, hi


def cast_down(v: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast float64 ``v`` to ``dtype`` rounding towards -inf (a bias stays a lower bound)."""
    out = v.to(dtype)
    return torch.where(out.double() > v, torch.nextafter(out, out.new_tensor(-float("inf"))),
                       out)


def cast_up(v: Tensor, dtype: torch.dtype) -> Tensor:
    out = v.to(dtype)
    return torch.where(out.double() < v, torch.nextafter(out, out.new_tensor(float("inf"))),
                       out)


def safe_bias(A: Tensor, value: Tensor) -> Tensor:
    """float64 ``sum(A * value)`` per [B, S] row where ``value`` may hold +-inf (0*inf = 0).

    Used with (A >= 0, lower) and (A <= 0, upper) pairs, so every infinite
    term is -inf.  No NaN appears, neither in the value nor in gradients.
    """
    finite = torch.isfinite(value)
    terms = A.double() * torch.where(finite, value, torch.zeros_like(value)).double()
    total = terms.reshape(A.shape[0], A.shape[1], -1).sum(-1)
    hit = ((A != 0) & ~finite).reshape(A.shape[0], A.shape[1], -1).any(-1)
    return torch.where(hit, torch.full_like(total, float("-inf")), total)


def _margin(scale: Tensor, dtype: torch.dtype, factor: float = 24.0) -> Tensor:
    """Rounding budget for planes whose terms are bounded by ``scale`` in magnitude."""
    finfo = torch.finfo(dtype)
    return factor * finfo.eps * scale + 8 * finfo.tiny


def _alpha(params: dict[str, Tensor] | None, name: str) -> Tensor | float:
    if params is None or name not in params:
        return _DEFAULT_ALPHA
    return params[name].clamp(0, 1)


# --- Mul --------------------------------------------------------------------------------------

class Mul(Op):
    """``x * y`` of two variables (ONNX broadcasting), relaxed by McCormick planes."""

    kind = "nonlinear"
    n_inputs = 2
    alpha_names = ("lower", "upper")

    def __init__(self, shapes: Sequence[Sequence[int]]):
        self.shapes = [tuple(s) for s in shapes]
        self.rank = max(len(s) for s in self.shapes)
        padded = [(1,) * (self.rank - len(s)) + s for s in self.shapes]
        self.out_shape = tuple(torch.broadcast_shapes(*padded))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return _pad(x, self.rank) * _pad(y, self.rank)

    def interval(self, bx: Bounds, by: Bounds) -> Bounds:
        lo, hi = interval_product(*(_pad(t, self.rank) for t in (*bx, *by)))
        return _outward(lo, hi)

    def init_alpha(self, in_bounds):
        like = in_bounds[0][0]
        shape = (like.shape[0], *self.out_shape)
        full = torch.full(shape, _DEFAULT_ALPHA, dtype=like.dtype, device=like.device)
        return {"lower": full, "upper": full.clone()}

    def planes(self, bx: Bounds, by: Bounds, params: dict[str, Tensor] | None = None
               ) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
        """((cx, cy, b) lower, (cx, cy, b) upper): ``cx*x + cy*y + b`` brackets ``x*y``.

        Shapes [B, S or 1, *out].  Elements with an infinite bound get zero
        slopes and the (possibly infinite) interval bounds as constants.
        """
        lx, ux, ly, uy = (_pad(t, self.rank).unsqueeze(1) for t in (*bx, *by))
        ibp_lo, ibp_hi = self.interval((lx, ux), (ly, uy))
        mx, my = torch.maximum(lx.abs(), ux.abs()), torch.maximum(ly.abs(), uy.abs())
        ok = torch.isfinite(mx * my)
        lx, ux, ly, uy = (torch.where(ok, t, torch.zeros_like(t)) for t in (lx, ux, ly, uy))
        a, b = _alpha(params, "lower"), _alpha(params, "upper")
        margin = _margin(torch.where(ok, mx * my, torch.zeros_like(mx)), lx.dtype)
        lower = (a * ly + (1 - a) * uy, a * lx + (1 - a) * ux,
                 -(a * (lx * ly) + (1 - a) * (ux * uy)) - margin)
        upper = (b * uy + (1 - b) * ly, b * lx + (1 - b) * ux,
                 -(b * (lx * uy) + (1 - b) * (ux * ly)) + margin)
        zero = torch.zeros((), dtype=lx.dtype, device=lx.device)
        lower = (torch.where(ok, lower[0], zero), torch.where(ok, lower[1], zero),
                 torch.where(ok, lower[2], ibp_lo))
        upper = (torch.where(ok, upper[0], zero), torch.where(ok, upper[1], zero),
                 torch.where(ok, upper[2], ibp_hi))
        return lower, upper

    def backward(self, A, in_bounds, params=None):
        (lcx, lcy, lb), (ucx, ucy, ub) = self.planes(in_bounds[0], in_bounds[1], params)
        A_pos, A_neg = split_signs(A)
        A_x = A_pos * lcx + A_neg * ucx
        A_y = A_pos * lcy + A_neg * ucy
        shape = A.shape
        bias = safe_bias(A_pos, lb.expand(shape)) + safe_bias(A_neg, ub.expand(shape))
        return ([unbroadcast(A_x, self.shapes[0]), unbroadcast(A_y, self.shapes[1])],
                cast_down(bias, A.dtype))


# --- Square -----------------------------------------------------------------------------------

class Square(Elementwise):
    """``x * x`` (a Mul whose operands are one node): tangent below, chord above.

    The lower line is the tangent at ``d = lo + alpha*(hi - lo)`` (alpha
    "lower", 0.5 by default); the upper line is the chord, which is exact at
    both ends.  Tighter than McCormick on (x, x), whose lower plane mixes the
    tangents at the two ends.
    """

    alpha_names = ("lower",)

    def function(self, x):
        return x * x

    def interval(self, bounds):
        lo, hi = bounds
        top = torch.maximum(lo * lo, hi * hi)
        bottom = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo),
                             torch.minimum(lo * lo, hi * hi))
        bottom, top = _outward(bottom, top)
        return bottom.clamp(min=0), top

    def alpha_init(self, lo, hi):
        return {"lower": torch.full_like(lo, _DEFAULT_ALPHA)}

    def relax(self, lo, hi, alpha=None):
        hi = torch.maximum(hi, lo)
        ok = torch.isfinite(torch.maximum(lo.abs(), hi.abs()) ** 2)
        lo_s, hi_s = torch.where(ok, lo, 0.0), torch.where(ok, hi, 0.0)
        frac = _alpha(alpha, "lower")
        d = lo_s + frac * (hi_s - lo_s)
        lw, lb = 2 * d, -d * d
        uw, ub = lo_s + hi_s, -lo_s * hi_s
        lb = lb - rounding_margin(lw, lb, lo_s, hi_s, lo.dtype)
        ub = ub + rounding_margin(uw, ub, lo_s, hi_s, lo.dtype)
        zero = torch.zeros((), dtype=lo.dtype, device=lo.device)
        lw, uw = torch.where(ok, lw, zero), torch.where(ok, uw, zero)
        lb = torch.where(ok, lb, zero)  # x*x >= 0 always
        ub = torch.where(ok, ub, torch.full_like(ub, float("inf")))
        lw, lb, uw, ub = torch.broadcast_tensors(lw, lb, uw, ub)
        return LinearRelaxation(lw, lb, uw, ub)

    def backward(self, A, in_bounds, params=None):
        lo, hi = in_bounds[0]
        rel = self.relax(lo.unsqueeze(1), hi.unsqueeze(1), params)
        A_pos, A_neg = split_signs(A)
        shape = A.shape
        bias = safe_bias(A_pos, rel.lb.expand(shape)) + safe_bias(A_neg, rel.ub.expand(shape))
        return [A_pos * rel.lw + A_neg * rel.uw], cast_down(bias, A.dtype)


# --- MatMul -----------------------------------------------------------------------------------

class MatMul(Op):
    """``X @ W`` of two variables, batched over leading axes (attention's Q K^T and A V).

    Each term ``x[.., i, k] * w[.., k, j]`` gets the McCormick planes with the
    parameters of its output element (i, j); the sums over ``k`` are matrix
    products, so the backward step never loops over elements.
    """

    kind = "nonlinear"
    n_inputs = 2
    alpha_names = ("lower", "upper")

    def __init__(self, shapes: Sequence[Sequence[int]]):
        self.shapes = [tuple(s) for s in shapes]
        sx, sw = self.shapes
        if len(sx) < 2 or len(sw) < 2 or sx[-1] != sw[-2]:
            raise ValueError(f"MatMul of per-sample shapes {sx} and {sw}")
        self.rank = max(len(sx), len(sw))
        batch = torch.broadcast_shapes((1,) * (self.rank - len(sx)) + sx[:-2],
                                       (1,) * (self.rank - len(sw)) + sw[:-2])
        self.out_shape = (*batch, sx[-2], sw[-1])

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return _pad(x, self.rank) @ _pad(w, self.rank)

    def interval(self, bx: Bounds, bw: Bounds) -> Bounds:
        lx, ux = (_pad(t, self.rank).unsqueeze(-1) for t in bx)  # [.., M, K, 1]
        lw, uw = (_pad(t, self.rank).unsqueeze(-3) for t in bw)  # [.., 1, K, N]
        lo, hi = interval_product(lx, ux, lw, uw)  # [.., M, K, N]
        k = lo.shape[-2]
        slack = (k + 2) * torch.finfo(lo.dtype).eps
        lo_sum, hi_sum = lo.sum(-2), hi.sum(-2)
        lo_sum = lo_sum - slack * lo.abs().sum(-2) - k * torch.finfo(lo.dtype).tiny
        hi_sum = hi_sum + slack * hi.abs().sum(-2) + k * torch.finfo(lo.dtype).tiny
        return _outward(lo_sum, hi_sum)

    def init_alpha(self, in_bounds):
        like = in_bounds[0][0]
        shape = (like.shape[0], *self.out_shape)
        full = torch.full(shape, _DEFAULT_ALPHA, dtype=like.dtype, device=like.device)
        return {"lower": full, "upper": full.clone()}

    def backward(self, A, in_bounds, params=None):
        (lx, ux), (lw, uw) = ((_pad(lo, self.rank), _pad(hi, self.rank)) for lo, hi in in_bounds)
        B = A.shape[0]
        mx, mw = torch.maximum(lx.abs(), ux.abs()), torch.maximum(lw.abs(), uw.abs())
        scale = mx @ mw  # bounds every |plane term| summed over k
        ok = torch.isfinite(scale).reshape(B, -1).all(-1)  # per batch sample
        ok_x = ok.reshape(B, *([1] * (lx.dim() - 1)))
        ok_w = ok.reshape(B, *([1] * (lw.dim() - 1)))
        lx, ux = (torch.where(ok_x, t, torch.zeros_like(t)).unsqueeze(1) for t in (lx, ux))
        lw, uw = (torch.where(ok_w, t, torch.zeros_like(t)).unsqueeze(1) for t in (lw, uw))
        a, b = _alpha(params, "lower"), _alpha(params, "upper")
        A_pos, A_neg = split_signs(A)
        pa, pa1 = A_pos * a, A_pos * (1 - a)
        nb, nb1 = A_neg * b, A_neg * (1 - b)
        A_x = (pa + nb1) @ lw.transpose(-1, -2) + (pa1 + nb) @ uw.transpose(-1, -2)
        A_w = lx.transpose(-1, -2) @ (pa + nb) + ux.transpose(-1, -2) @ (pa1 + nb1)
        terms = pa * (lx @ lw) + pa1 * (ux @ uw) + nb * (lx @ uw) + nb1 * (ux @ lw)
        sizes = self.shapes[0][-2] + self.shapes[0][-1] + self.shapes[1][-1]
        margin = _margin(torch.where(ok.reshape(B, *([1] * (scale.dim() - 1))), scale,
                                     torch.zeros_like(scale)), A.dtype, 4.0 * (sizes + 8))
        bias = -(terms + A.abs() * margin.unsqueeze(1)).double().reshape(B, A.shape[1], -1).sum(-1)
        if not bool(ok.all()):
            ibp_lo, ibp_hi = self.interval(*in_bounds)
            fallback = safe_bias(A_pos, ibp_lo.unsqueeze(1).expand(A.shape)) + \
                safe_bias(A_neg, ibp_hi.unsqueeze(1).expand(A.shape))
            bias = torch.where(ok[:, None], bias, fallback)
            A_x = torch.where(ok.reshape(B, *([1] * (A_x.dim() - 1))), A_x, 0.0)
            A_w = torch.where(ok.reshape(B, *([1] * (A_w.dim() - 1))), A_w, 0.0)
        return ([unbroadcast(A_x, self.shapes[0]), unbroadcast(A_w, self.shapes[1])],
                cast_down(bias, A.dtype))
