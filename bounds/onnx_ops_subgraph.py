"""ONNX converters that expand one node into a sub-graph of existing ops.

- LayerNormalization: ``d = x - mean(x)`` (affine), ``v = mean(d*d)`` (Square),
  ``r = (v + eps) ** -0.5`` (Pow), ``y = d * r`` (bilinear Mul), then scale and
  shift.  Mean and InvStdDev outputs are the intermediate nodes.
- LSTM, GRU and RNN: unrolled over the (static) sequence.  Each gate is one
  ``Linear`` on the concatenation ``[x_t, h_{t-1}]`` followed by its activation
  (Sigmoid, Tanh or Relu); products of gates and states are bilinear ``Mul``;
  constant initial states fold into biases.  The outputs Y, Y_h, Y_c are
  assembled from the per-step states by one ``Concat`` and one ``IndexMap``.

Shapes: the recurrent input X is rank 3 in ONNX, so a per-sample shape of rank 3
means a lifted tensor (see ``bounds.onnx_ops_structure``; a Transpose of a
batch-first input gives one) and rank 2 a normal one.  Outputs whose leading
ONNX axis is not 1 (Y with several steps, Y_h of a bidirectional layer) are
lifted likewise.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch

from bounds.onnx_import import ConversionError, ImportContext
from bounds.onnx_ops import Converter, attrs, tensor
from bounds.ops.activation import Relu, Sigmoid, Tanh
from bounds.ops.affine import AddVar, ElementwiseAffine, Linear, Reshape
from bounds.ops.base import Op
from bounds.ops.bilinear import Mul, Square
from bounds.ops.structure import Concat, IndexMap, ReduceSum

Operand = str | np.ndarray  # a variable (node name) or a per-sample constant

_ACTIVATIONS = {"sigmoid": Sigmoid, "tanh": Tanh, "relu": Relu}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"),
                 "RNN": ("tanh",)}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Builder:
    """Adds the ops of one ONNX node under unique names; folds constant operands."""

    def __init__(self, ctx: ImportContext, prefix: str):
        self.ctx, self.prefix, self.count = ctx, prefix, 0

    def add(self, op: Op, inputs: list[str], tag: str) -> str:
        self.count += 1
        name = f"{self.prefix}::{tag}{self.count}"
        self.ctx.add(name, op, inputs)
        return name

    def shape(self, v: Operand) -> tuple[int, ...]:
        return v.shape if isinstance(v, np.ndarray) else self.ctx.shape(v)

    def linear(self, x: Operand, weight: np.ndarray, bias: np.ndarray | None) -> Operand:
        if isinstance(x, np.ndarray):
            return x @ weight.T + (0 if bias is None else bias)
        return self.add(Linear(tensor(weight), None if bias is None else tensor(bias)), [x],
                        "linear")

    def plus(self, a: Operand, b: Operand) -> Operand:
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return a + b
        if isinstance(a, np.ndarray):
            a, b = b, a
        if isinstance(b, np.ndarray):
            if not np.any(b):
                return a
            return self.add(ElementwiseAffine(None, tensor(b), self.shape(a)), [a], "add")
        return self.add(AddVar(1.0, [self.shape(a), self.shape(b)]), [a, b], "add")

    def times(self, a: Operand, b: Operand) -> Operand:
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return a * b
        if isinstance(a, np.ndarray):
            a, b = b, a
        if isinstance(b, np.ndarray):
            if not np.any(b):
                return np.zeros(np.broadcast_shapes(self.shape(a), b.shape))
            return self.add(ElementwiseAffine(tensor(b), None, self.shape(a)), [a], "scale")
        return self.add(Mul([self.shape(a), self.shape(b)]), [a, b], "mul")

    def affine(self, x: Operand, scale: float, shift: float) -> Operand:
        if isinstance(x, np.ndarray):
            return x * scale + shift
        op = ElementwiseAffine(tensor(np.array(scale)), tensor(np.array(shift)), self.shape(x))
        return self.add(op, [x], "affine")

    def activation(self, kind: str, x: Operand) -> Operand:
        op = _ACTIVATIONS[kind]()
        if isinstance(x, np.ndarray):
            return op.forward(torch.from_numpy(x)[None]).numpy()[0]
        return self.add(op, [x], kind)

    def variable(self, v: Operand, like: str) -> str:
        """A constant operand as a node (``like`` + constant), for assembling outputs."""
        if isinstance(v, str):
            return v
        zero = self.add(ElementwiseAffine(tensor(np.zeros(())), None, self.ctx.shape(like)),
                        [like], "zero")
        return self.add(ElementwiseAffine(None, tensor(v), self.ctx.shape(zero)), [zero],
                        "const")


# --- LayerNormalization ---------------------------------------------------------------------

def convert_layer_norm(ctx, node):
    try:
        from bounds.ops.nonlinear import Pow
    except ImportError:
        raise ConversionError("LayerNormalization needs Pow from bounds/ops/nonlinear.py") \
            from None
    x = node.input[0]
    shape = ctx.shape(x)
    rank = len(shape) + 1
    a = attrs(node)
    axis = a.get("axis", -1)
    axis = axis + rank if axis < 0 else axis
    axes = list(range(max(axis, 1), rank))  # the batch axis has size 1: normalising it is a no-op
    count = int(np.prod([((1,) + shape)[ax] for ax in axes]))
    b = _Builder(ctx, node.output[0])
    mean = b.add(ReduceSum(axes, True, shape, 1.0 / count), [x], "mean")
    centred = b.add(AddVar(-1.0, [shape, ctx.shape(mean)]), [x, mean], "centred")
    square = b.add(Square(), [centred], "square")
    variance = b.add(ReduceSum(axes, True, shape, 1.0 / count), [square], "variance")
    shifted = b.affine(variance, 1.0, float(a.get("epsilon", 1e-5)))
    inv_std = b.add(Pow(-0.5), [shifted], "inv_std")
    y = b.times(centred, inv_std)
    scale = _const_operand(ctx, node, 1, rank)
    bias = _const_operand(ctx, node, 2, rank)
    op = ElementwiseAffine(None if scale is None else tensor(scale),
                           None if bias is None else tensor(bias), shape)
    ctx.add(node.output[0], op, [y])
    for index, source in ((1, mean), (2, inv_std)):
        if len(node.output) > index and node.output[index]:
            ctx.add_alias(node.output[index], source)


def _const_operand(ctx, node, position: int, rank: int) -> np.ndarray | None:
    if len(node.input) <= position or not node.input[position]:
        return None
    if not ctx.is_const(node.input[position]):
        raise ConversionError(f"{node.op_type} with a variable input {position}")
    value = np.asarray(ctx.const(node.input[position]), dtype=np.float64)
    if value.ndim == rank:
        value = value[0]
    return value


# --- recurrent layers -------------------------------------------------------------------------

class _Recurrent:
    """Unrolls one LSTM / GRU / RNN node (``kind``) into gate-level ops."""

    def __init__(self, ctx: ImportContext, node: onnx.NodeProto):
        self.ctx, self.node, self.kind = ctx, node, node.op_type
        self.a = attrs(node)
        if self.a.get("clip") is not None:
            raise ConversionError("the clip attribute is not supported")
        if self.a.get("input_forget", 0):
            raise ConversionError("input_forget=1 is not supported")
        self.layout = int(self.a.get("layout", 0))
        self.direction = _text(self.a.get("direction", "forward"))
        self.dirs = 2 if self.direction == "bidirectional" else 1
        self.weights = [self._const(i) for i in range(1, 3)]  # W, R
        self.hidden = int(self.a.get("hidden_size", self.weights[1].shape[-1]))
        self.bias = self._const(3)
        acts = [_text(s).lower() for s in self.a.get("activations", [])]
        n_act = len(_DEFAULT_ACTS[self.kind])
        self.acts = acts or list(_DEFAULT_ACTS[self.kind]) * self.dirs
        if len(self.acts) != n_act * self.dirs or any(k not in _ACTIVATIONS for k in self.acts):
            raise ConversionError(f"activations {self.acts} (supported: Sigmoid, Tanh, Relu)")
        self.builder = _Builder(ctx, next((o for o in node.output if o), node.name))
        self._inputs()

    def _const(self, position: int) -> np.ndarray | None:
        node = self.node
        if len(node.input) <= position or not node.input[position]:
            return None
        if not self.ctx.is_const(node.input[position]):
            raise ConversionError(f"{node.op_type} with a variable input {position}")
        return np.asarray(self.ctx.const(node.input[position]), dtype=np.float64)

    def _inputs(self) -> None:
        x = self.node.input[0]
        shape = self.ctx.shape(x)
        self.lifted_x = len(shape) == 3
        if len(shape) not in (2, 3):
            raise ConversionError(f"input of per-sample shape {shape}")
        full = shape if self.lifted_x else (1,) + shape
        seq, batch = (full[0], full[1]) if self.layout == 0 else (full[1], full[0])
        self.seq, self.batch, self.x, self.x_shape = seq, batch, x, shape
        self.codes = np.arange(int(np.prod(shape))).reshape(full)
        lens = self._const(4)
        if lens is not None and not np.all(lens == seq):
            raise ConversionError("sequence_lens shorter than the sequence")
        self.initial = []
        for position in (5, 6):  # initial_h, initial_c: [dirs, batch, hidden] (layout 0)
            name = self.node.input[position] if len(self.node.input) > position else ""
            if not name:
                self.initial.append(None)
            elif self.ctx.is_const(name):
                value = np.asarray(self.ctx.const(name), dtype=np.float64)
                self.initial.append(value if self.layout == 0 else value.transpose(1, 0, 2))
            else:
                raise ConversionError("variable initial states are not supported")
        self.peephole = self._const(7) if self.kind == "LSTM" else None

    def step_input(self, t: int) -> str:
        codes = self.codes[t] if self.layout == 0 else self.codes[:, t]
        return self.builder.add(IndexMap(torch.from_numpy(codes), self.x_shape, f"X[{t}]"),
                                [self.x], "x")

    def gate(self, d: int, k: int, x_t: str, h: Operand, with_recurrence: bool = True,
             recurrence_bias: bool = True) -> Operand:
        """Pre-activation of gate ``k`` of direction ``d``: W_k x_t (+ R_k h) + biases."""
        H = self.hidden
        W = self.weights[0][d, k * H:(k + 1) * H]
        R = self.weights[1][d, k * H:(k + 1) * H]
        n = _GATES[self.kind]
        bias = np.zeros(H)
        if self.bias is not None:
            bias = bias + self.bias[d, k * H:(k + 1) * H]
            if recurrence_bias:
                bias = bias + self.bias[d, (n + k) * H:(n + k + 1) * H]
        b = self.builder
        if not with_recurrence:
            return b.linear(x_t, W, bias)
        if isinstance(h, np.ndarray):
            return b.plus(b.linear(x_t, W, bias), h @ R.T)
        joined = self.joined.get((x_t, h))
        if joined is None:  # [x_t, h]: shared by the gates of one step
            template = np.zeros((self.batch, self.x_in + H))
            joined = b.add(Concat(2, [(0, self.x_in, True), (self.x_in, H, True)],
                                  tensor(template)), [x_t, h], "join")
            self.joined[(x_t, h)] = joined
        return b.linear(joined, np.concatenate([W, R], 1), bias)

    def run(self) -> None:
        self.x_in = self.weights[0].shape[-1]
        self.joined: dict[tuple[str, str], str] = {}
        steps: list[list[Operand]] = [[None] * self.dirs for _ in range(self.seq)]
        finals_h, finals_c = [], []
        xs = [self.step_input(t) for t in range(self.seq)]
        for d in range(self.dirs):
            reverse = self.direction == "reverse" or d == 1
            zeros = np.zeros((self.batch, self.hidden))
            h = zeros if self.initial[0] is None else self.initial[0][d]
            c = zeros if self.initial[1] is None else self.initial[1][d]
            order = range(self.seq - 1, -1, -1) if reverse else range(self.seq)
            acts = self.acts[d * len(_DEFAULT_ACTS[self.kind]):]
            for t in order:
                h, c = self.cell(d, xs[t], h, c, acts)
                steps[t][d] = h
            finals_h.append(h)
            finals_c.append(c)
        outputs = list(self.node.output) + [""] * 3
        like = xs[0]
        if outputs[0]:
            self.assemble(outputs[0], [p for row in steps for p in row], like,
                          (self.seq, self.dirs))
        if outputs[1]:
            self.assemble(outputs[1], finals_h, like, (self.dirs,))
        if outputs[2] and self.kind == "LSTM":
            self.assemble(outputs[2], finals_c, like, (self.dirs,))

    def cell(self, d: int, x_t: str, h: Operand, c: Operand, acts: list[str]):
        b = self.builder
        if self.kind == "RNN":
            return b.activation(acts[0], self.gate(d, 0, x_t, h)), c
        if self.kind == "GRU":
            z = b.activation(acts[0], self.gate(d, 0, x_t, h))
            r = b.activation(acts[0], self.gate(d, 1, x_t, h))
            H = self.hidden
            R_h = self.weights[1][d, 2 * H:3 * H]
            rb = np.zeros(H) if self.bias is None else self.bias[d, 5 * H:6 * H]
            x_part = self.gate(d, 2, x_t, h, with_recurrence=False, recurrence_bias=False)
            if self.a.get("linear_before_reset", 0):
                h_part = b.times(r, b.linear(h, R_h, rb))
            else:
                h_part = b.linear(b.times(r, h), R_h, rb)
            candidate = b.activation(acts[1], b.plus(x_part, h_part))
            keep = b.times(z, h)
            new = b.times(b.affine(z, -1.0, 1.0), candidate)
            return b.plus(new, keep), c
        i_pre, o_pre = self.gate(d, 0, x_t, h), self.gate(d, 1, x_t, h)
        f_pre, c_pre = self.gate(d, 2, x_t, h), self.gate(d, 3, x_t, h)
        if self.peephole is not None:
            H = self.hidden
            p_i, p_o, p_f = (self.peephole[d, k * H:(k + 1) * H] for k in range(3))
            i_pre = b.plus(i_pre, b.times(c, p_i))
            f_pre = b.plus(f_pre, b.times(c, p_f))
        i, f = b.activation(acts[0], i_pre), b.activation(acts[0], f_pre)
        candidate = b.activation(acts[1], c_pre)
        c_new = b.plus(b.times(f, c), b.times(i, candidate))
        if self.peephole is not None:
            o_pre = b.plus(o_pre, b.times(c_new, p_o))
        o = b.activation(acts[0], o_pre)
        return b.times(o, b.activation(acts[2], c_new)), c_new

    def assemble(self, output: str, pieces: list[Operand], like: str, lead: tuple[int, ...]):
        """Stack per-step states [batch, hidden] into an ONNX output laid out by ``layout``.

        ``lead`` is (steps, dirs) for Y or (dirs,) for Y_h / Y_c, in piece order.
        """
        b = self.builder
        size = self.batch * self.hidden
        flat = [b.add(Reshape(b.shape(v), (size,)), [b.variable(v, like)], "flat")
                for v in pieces]
        n = len(flat)
        joined = flat[0] if n == 1 else b.add(
            Concat(1, [(i * size, size, True) for i in range(n)], tensor(np.zeros(n * size))),
            flat, "stack")
        codes = np.arange(n * size).reshape(*lead, self.batch, self.hidden)
        if self.layout == 1:  # batch first
            codes = np.moveaxis(codes, -2, 0)
        per_sample = codes[0] if codes.shape[0] == 1 else codes  # else lifted
        self.ctx.add(output, IndexMap(torch.from_numpy(np.ascontiguousarray(per_sample)),
                                      (n * size,), "assemble"), [joined])


def convert_recurrent(ctx, node):
    _Recurrent(ctx, node).run()


CONVERTERS: dict[str, Converter] = {
    "LayerNormalization": convert_layer_norm,
    "LSTM": convert_recurrent,
    "GRU": convert_recurrent,
    "RNN": convert_recurrent,
}
