"""ONNX converters for structure and plumbing ops: re-indexing, reductions, pooling, selection.

Re-indexing ops (Slice, Split, Gather, GatherElements, GatherND, Expand, Tile, Pad,
Upsample/Resize in nearest mode, DepthToSpace, SpaceToDepth) are converted by
evaluating the ONNX node itself with onnx's reference evaluator on a tensor of
position codes: the output says which input position every output entry
copies, so the op's exact semantics (negative indices, steps, clamping, opset
differences) come from ONNX, and the result is one ``IndexMap``.  Also here:
ReduceSum/ReduceMean, Concat, Where (constant condition), Cast (to floats),
ConvTranspose, Average/Max pooling (also global), Transpose, and the Shape and
Size of variables; ``CONVERTERS`` includes the sub-graph converters of
``bounds.onnx_ops_subgraph`` (LayerNormalization, LSTM, GRU, RNN).

Batch axis: the model is read as a batch-1 function applied to each sample.  A
node whose result still has a leading axis of size 1 is per sample (operations
along the batch axis are then no-ops); a node that changes the batch axis is a
``ConversionError``.  One exception: a Transpose that moves the size-1 batch
axis inward (``[1, N] -> [N, 1]``, as in the ml4acopf models, around a MatMul
with a constant left operand) gives a *lifted* tensor whose per-sample shape is
its full ONNX shape; a later Transpose recognises a lifted input by the length
of ``perm`` and drops the leading 1 again.  Only ops that do not depend on the
rank (MatMul/Gemm and elementwise ops with constants, Transpose, LSTM/GRU/RNN
inputs) should see a lifted tensor; the onnxruntime comparison at load time
catches anything else.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch

from bounds.onnx_import import ConversionError, ImportContext
from bounds.onnx_ops import Converter, attrs, tensor
from bounds.onnx_ops_subgraph import CONVERTERS as SUBGRAPH
from bounds.ops.pooling import AveragePool, MaxPool, pool_windows
from bounds.ops.structure import Concat, ConvTranspose, IndexMap, ReduceSum, Where

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


def _string(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ConversionError(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _int_list(ctx: ImportContext, node: onnx.NodeProto, position: int, attr: str
              ) -> list[int] | None:
    """An integer list given as a constant input (newer opsets) or as an attribute."""
    if len(node.input) > position and node.input[position]:
        return [int(v) for v in ctx.const(node.input[position]).reshape(-1)]
    value = attrs(node).get(attr)
    return None if value is None else [int(v) for v in value]


# --- re-indexing by evaluating the node on position codes -------------------------------

def evaluate_node(ctx: ImportContext, node: onnx.NodeProto, feeds: dict[str, np.ndarray],
                  opset: int | None = None) -> list[np.ndarray]:
    """Run one ONNX node with onnx's reference evaluator on the given inputs."""
    from onnx.reference import ReferenceEvaluator

    helper = onnx.helper
    graph = helper.make_graph(
        [node], "evaluate",
        [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in feeds],
        [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
         for n in node.output if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset or ctx.opset)])
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - the reference raises many types
        raise ConversionError(f"cannot evaluate the index map ({type(exc).__name__}: {exc})"
                              ) from None
    return [np.asarray(r) for r in results]


def _add_index_map(ctx: ImportContext, output: str, x: str, codes: np.ndarray, label: str,
                   fill: float | None = None, lift: bool = False) -> None:
    """Add ``IndexMap`` for an output of position codes (1-based; 0 means ``fill``)."""
    shape = ctx.shape(x)
    if codes.ndim == 0:
        raise ConversionError("the result drops the batch axis (a scalar)")
    if not np.all(codes == np.rint(codes)):
        raise ConversionError("not a pure re-indexing (interpolating mode?)")
    index = np.rint(codes).astype(np.int64) - 1
    if not lift:
        if codes.shape[0] != 1:
            raise ConversionError(f"the result has {codes.shape[0]} entries along the batch "
                                  f"axis (operations along the batch axis are not supported)")
        index = index[0]
    if index.shape == shape and np.array_equal(index.reshape(-1), np.arange(index.size)):
        ctx.add_alias(output, x)
        return
    if np.any(index < 0) and fill is None:
        raise ConversionError("position codes lost")
    fill_tensor = None if fill is None else torch.tensor(float(fill), dtype=torch.float64)
    ctx.add(output, IndexMap(torch.from_numpy(index), shape, label, fill_tensor), [x])


def _codes(ctx: ImportContext, node: onnx.NodeProto,
           overrides: dict[str, np.ndarray] | None = None, opset: int | None = None
           ) -> list[np.ndarray]:
    """The node's outputs on position codes (1-based) of its first input, the only variable."""
    x = node.input[0]
    overrides = overrides or {}
    for name in node.input[1:]:
        if name and name not in overrides and not ctx.is_const(name):
            raise ConversionError(f"input '{name}' must be a constant")
    full = (1,) + ctx.shape(x)
    codes = np.arange(1, int(np.prod(full)) + 1, dtype=np.float64).reshape(full)
    feeds = {n: ctx.constants[n] for n in node.input[1:] if n and n not in overrides}
    feeds.update(overrides)
    feeds[x] = codes
    return evaluate_node(ctx, node, feeds, opset)


def _reindex(ctx: ImportContext, node: onnx.NodeProto, fill: float | None = None,
             overrides: dict[str, np.ndarray] | None = None) -> None:
    """Convert a re-indexing node whose first input is the (only) variable."""
    results = _codes(ctx, node, overrides)
    for name, out in zip([n for n in node.output if n], results):
        _add_index_map(ctx, name, node.input[0], out, node.op_type, fill)


def convert_reindex(ctx, node):
    _reindex(ctx, node)


def convert_pad(ctx, node):
    """Pad in any mode; constant padding becomes fill entries, negative pads crop."""
    a = attrs(node)
    mode = _string(a.get("mode"), "constant")
    rank = len(ctx.shape(node.input[0])) + 1
    overrides: dict[str, np.ndarray] = {}
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = float(np.asarray(ctx.const(node.input[2])).reshape(-1)[0])
        overrides[node.input[2]] = np.zeros((), dtype=np.float64)
    elif "value" in a:  # opset < 11: the pad value is an attribute; encode it with 0
        value = float(a["value"])
        node = _with_attribute(node, "value", 0.0)
    pads = _int_list(ctx, node, 1, "pads")
    axes = _int_list(ctx, node, 3, "axes")
    axes = list(range(rank)) if axes is None else [_axis(ax, rank) for ax in axes]
    if pads is None or len(pads) != 2 * len(axes):
        raise ConversionError("pads do not match the axes")
    if min(pads) < 0:  # the reference evaluator rejects negative pads: crop afterwards
        if len(node.input) > 1 and node.input[1]:
            overrides[node.input[1]] = np.maximum(np.asarray(pads, dtype=np.int64), 0)
        else:
            node = _with_attribute(node, "pads", [max(p, 0) for p in pads])
    (codes,) = _codes(ctx, node, overrides)
    n = len(axes)
    for ax, begin, end in zip(axes, pads[:n], pads[n:]):
        stop = codes.shape[ax] + min(end, 0)
        codes = codes.take(range(-min(begin, 0), stop), axis=ax)
    _add_index_map(ctx, node.output[0], node.input[0], codes, "Pad",
                   value if mode == "constant" else None)


def _with_attribute(node: onnx.NodeProto, name: str, value) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for attr in copy.attribute:
        if attr.name == name:
            copy.attribute.remove(attr)
            break
    copy.attribute.append(onnx.helper.make_attribute(name, value))
    return copy


def convert_resize(ctx, node):
    a = attrs(node)
    mode = _string(a.get("mode"), "nearest")
    if mode != "nearest":
        raise ConversionError(f"{node.op_type} mode '{mode}' (only 'nearest' is supported)")
    if node.op_type == "Upsample" and "scales" in a:  # opset 7: evaluate as opset 9
        scales = "__upsample_scales"
        node9 = onnx.helper.make_node("Upsample", [node.input[0], scales], list(node.output),
                                      mode="nearest")
        results = _codes(ctx, node9, {scales: np.asarray(a["scales"], dtype=np.float32)}, 9)
        _add_index_map(ctx, node.output[0], node.input[0], results[0], "Upsample")
        return
    _reindex(ctx, node)


def convert_transpose(ctx, node):
    """Transpose, also of a lifted tensor or one moving the size-1 batch axis (module doc)."""
    x = node.input[0]
    shape = ctx.shape(x)
    perm = attrs(node).get("perm")
    perm = list(range(len(shape), -1, -1)) if perm is None else [int(p) for p in perm]
    if len(perm) == len(shape) + 1:
        full = (1,) + shape
    elif len(perm) == len(shape):  # a lifted input (its full shape is its per-sample shape)
        full = shape
    else:
        raise ConversionError(f"perm {perm} does not match the input rank")
    codes = np.arange(1, int(np.prod(full)) + 1, dtype=np.float64).reshape(full)
    codes = codes.transpose(perm)
    lift = codes.shape[0] != 1
    _add_index_map(ctx, node.output[0], x, codes, f"Transpose{tuple(perm)}", lift=lift)


# --- reductions, concatenation, selection --------------------------------------------------

def _reduce(ctx, node, mean: bool):
    x = node.input[0]
    shape = ctx.shape(x)
    full = (1,) + shape
    a = attrs(node)
    keepdims = bool(a.get("keepdims", 1))
    axes = _int_list(ctx, node, 1, "axes")
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            ctx.add_alias(node.output[0], x)
            return
        axes = list(range(len(full)))
    axes = sorted({_axis(ax, len(full)) for ax in axes})
    if 0 in axes:
        if not keepdims:
            raise ConversionError("reduction over the batch axis without keepdims")
        axes.remove(0)
    count = int(np.prod([full[ax] for ax in axes]))
    op = ReduceSum(axes, keepdims, shape, 1.0 / count if mean else 1.0)
    ctx.add(node.output[0], op, [x])


def convert_concat(ctx, node):
    names = [n for n in node.input if n]
    variables = [n for n in names if not ctx.is_const(n)]
    rank = len(ctx.shape(variables[0])) + 1
    axis = _axis(attrs(node).get("axis", 0 if ctx.opset < 4 else 1), rank)
    if axis == 0:
        raise ConversionError("concatenation along the batch axis")
    arrays, segments, start = [], [], 0
    for name in names:
        if ctx.is_const(name):
            arr = np.asarray(ctx.const(name), dtype=np.float64)
            if arr.ndim != rank or arr.shape[0] != 1:
                raise ConversionError(f"constant of shape {arr.shape} along the batch axis")
            arr, is_var = arr[0], False
        else:
            if len(ctx.shape(name)) + 1 != rank:
                raise ConversionError("inputs of different ranks")
            arr, is_var = np.zeros(ctx.shape(name)), True
        length = arr.shape[axis - 1]
        if length == 0 and not is_var:
            continue
        arrays.append(arr)
        segments.append((start, length, is_var))
        start += length
    try:
        template = np.concatenate(arrays, axis=axis - 1)
    except ValueError as exc:
        raise ConversionError(f"inputs do not fit together ({exc})") from None
    ctx.add(node.output[0], Concat(axis, segments, tensor(template)), variables)


def _per_sample(array: np.ndarray, out_rank: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == out_rank:
        if array.shape[0] != 1:
            raise ConversionError("a constant varies along the batch axis")
        return array[0]
    return array


def convert_where(ctx, node):
    cond, a, b = node.input
    if not ctx.is_const(cond):
        raise ConversionError("Where with a variable condition")
    operands = (a, b)
    slots = [i for i, n in enumerate(operands) if not ctx.is_const(n)]
    ranks = [np.asarray(ctx.const(cond)).ndim] + [
        len(ctx.shape(n)) + 1 if i in slots else np.asarray(ctx.const(n)).ndim
        for i, n in enumerate(operands)]
    out_rank = max(ranks)
    mask = _per_sample(ctx.const(cond), out_rank).astype(bool)
    const = None
    shapes = [ctx.shape(operands[i]) for i in slots]
    if len(slots) == 1:
        const = _per_sample(ctx.const(operands[1 - slots[0]]), out_rank).astype(np.float64)
    try:
        out_shape = np.broadcast_shapes(mask.shape, *shapes,
                                        *([] if const is None else [const.shape]))
    except ValueError:
        raise ConversionError("operands do not broadcast") from None
    op = Where(torch.from_numpy(mask).to(torch.float64), slots,
               None if const is None else tensor(const), shapes, out_shape)
    ctx.add(node.output[0], op, [operands[i] for i in slots])


def convert_cast(ctx, node):
    target = attrs(node).get("to")
    if node.op_type == "CastLike":
        target = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(ctx.const(node.input[1])).dtype)
    if target not in _FLOAT_TYPES:
        name = onnx.TensorProto.DataType.Name(target) if target is not None else "?"
        raise ConversionError(f"cast of a variable to {name} (not differentiable)")
    ctx.add_alias(node.output[0], node.input[0])


def _constant_only(reason: str) -> Converter:
    def convert(ctx, node):
        raise ConversionError(reason)
    return convert


# --- convolution-like ------------------------------------------------------------------------

def _explicit_pads(a: dict, spatial, kernel, strides, dilations) -> list[int]:
    nd = len(spatial)
    auto_pad = _string(a.get("auto_pad"), "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return [int(p) for p in a.get("pads", [0] * (2 * nd))]
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ConversionError(f"auto_pad={auto_pad}")
    begin, end = [], []
    for n, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin + end


def convert_conv_transpose(ctx, node):
    a = attrs(node)
    x = node.input[0]
    weight = ctx.const(node.input[1]).astype(np.float64)
    bias = ctx.const(node.input[2]).astype(np.float64) if len(node.input) > 2 and \
        node.input[2] else None
    nd = weight.ndim - 2
    if nd not in (1, 2, 3):
        raise ConversionError(f"{nd}-d ConvTranspose")
    in_shape = ctx.shape(x)
    kernel = weight.shape[2:]
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    out_pad = list(a.get("output_padding", [0] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    auto_pad = _string(a.get("auto_pad"), "NOTSET")
    target = a.get("output_shape")
    if target is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [n * s for n, s in zip(in_shape[1:], strides)]
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    if target is not None:
        target = list(target)[-nd:]
        begin, end = [], []
        for n, s, op, k, d, t in zip(in_shape[1:], strides, out_pad, kernel, dilations, target):
            total = s * (n - 1) + op + (k - 1) * d + 1 - t
            half = total // 2
            begin.append(half if auto_pad == "SAME_UPPER" else total - half)
            end.append(total - half if auto_pad == "SAME_UPPER" else half)
        pads = begin + end
    if weight.shape[0] != in_shape[0]:
        raise ConversionError(f"weight for {weight.shape[0]} channels, input has {in_shape[0]}")
    op = ConvTranspose(tensor(weight), None if bias is None else tensor(bias), strides, pads,
                       out_pad, dilations, a.get("group", 1), in_shape)
    ctx.add(node.output[0], op, [x])


def _pool(ctx, node, global_pool: bool):
    a = attrs(node)
    x = node.input[0]
    shape = ctx.shape(x)
    spatial = shape[1:]
    nd = len(spatial)
    if nd == 0:
        raise ConversionError("pooling needs spatial axes")
    kernel = list(spatial) if global_pool else [int(k) for k in a["kernel_shape"]]
    strides = [1] * nd if global_pool else list(a.get("strides", [1] * nd))
    dilations = [1] * nd if global_pool else list(a.get("dilations", [1] * nd))
    pads = [0] * (2 * nd) if global_pool else _explicit_pads(a, spatial, kernel, strides,
                                                             dilations)
    try:
        index, in_pad = pool_windows(shape, kernel, strides, pads, dilations,
                                     bool(a.get("ceil_mode", 0)))
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    return x, shape, index, in_pad


def convert_average_pool(ctx, node):
    x, shape, index, in_pad = _pool(ctx, node, False)
    counted = in_pad if attrs(node).get("count_include_pad", 0) else index[0] >= 0
    divisor = counted.sum(-1).astype(np.float64)
    ctx.add(node.output[0], AveragePool(torch.from_numpy(index), tensor(divisor), shape), [x])


def convert_max_pool(ctx, node):
    if len(node.output) > 1 and node.output[1]:
        raise ConversionError("MaxPool with the Indices output")
    x, shape, index, _ = _pool(ctx, node, node.op_type == "GlobalMaxPool")
    ctx.add(node.output[0], MaxPool(torch.from_numpy(index), shape), [x])


def convert_global_average_pool(ctx, node):
    x = node.input[0]
    shape = ctx.shape(x)
    axes = list(range(2, len(shape) + 1))
    count = int(np.prod(shape[1:]))
    ctx.add(node.output[0], ReduceSum(axes, True, shape, 1.0 / count), [x])


# --- shapes of variables ----------------------------------------------------------------------

def shape_of_variable(ctx, node):
    full = (1,) + ctx.shape(node.input[0])
    a = attrs(node)
    start, end = a.get("start", 0), a.get("end", len(full))
    ctx.constants[node.output[0]] = np.array(full[slice(start, end)], dtype=np.int64)


def size_of_variable(ctx, node):
    ctx.constants[node.output[0]] = np.array(int(np.prod(ctx.shape(node.input[0]))),
                                             dtype=np.int64)


CONVERTERS: dict[str, Converter] = {
    "Slice": convert_reindex,
    "Split": convert_reindex,
    "Gather": convert_reindex,
    "GatherElements": convert_reindex,
    "GatherND": convert_reindex,
    "Expand": convert_reindex,
    "Tile": convert_reindex,
    "DepthToSpace": convert_reindex,
    "SpaceToDepth": convert_reindex,
    "Pad": convert_pad,
    "Upsample": convert_resize,
    "Resize": convert_resize,
    "Transpose": convert_transpose,
    "ReduceSum": lambda ctx, node: _reduce(ctx, node, mean=False),
    "ReduceMean": lambda ctx, node: _reduce(ctx, node, mean=True),
    "Concat": convert_concat,
    "Where": convert_where,
    "Cast": convert_cast,
    "CastLike": convert_cast,
    "Equal": _constant_only("Equal of a variable (a comparison is not continuous)"),
    "ConstantOfShape": _constant_only("ConstantOfShape of a variable shape"),
    "ConvTranspose": convert_conv_transpose,
    "AveragePool": convert_average_pool,
    "MaxPool": convert_max_pool,
    "GlobalAveragePool": convert_global_average_pool,
    "GlobalMaxPool": convert_max_pool,
    **SUBGRAPH,
}

# Ops on variables whose result is a constant (shapes are static here).
VARIABLE_TO_CONSTANT: dict[str, Converter] = {
    "Shape": shape_of_variable,
    "Size": size_of_variable,
}
