"""A query's networks bound to their ONNX models, and composed into one model.

The verification pipeline analyses one model with a single input tensor and
a single output tensor.  ``genbab.spec.vnnlib2.plan_layout`` places every
declared element of a 2.0 query in a flat input vector X and a flat output
vector Y; this module supplies the model that maps X to Y:

    * ``problem_for_query`` binds each declared network to its model (the
      ``--network`` options; an ``equal-to`` network runs the model of the
      network it names) and checks the error conditions of the standard:
      missing or surplus ``--network`` options, element types that differ
      from the model's or that genbab cannot analyse soundly, and shapes.
      Inputs and outputs are matched with the model's by position (the
      ``vnnlib`` parser accepts no ONNX names on them); a hidden node names
      an ONNX tensor computed by a node, whose shape and type come from ONNX
      shape inference (or from running the model once, where inference is
      silent).  An ``isomorphic-to`` network must have the same operators and
      weight shapes as the network it names.
    * ``compose_models`` writes one model in which X is sliced (or gathered)
      and reshaped into the inputs of each application of a model, and the
      applications' outputs, the tensors named by hidden nodes and, where
      constraints need it, a copy of X are flattened and concatenated into
      Y.  Each application's names get their own prefix (``net<k>/``), the
      added nodes ``glue/``; they use only Slice, Gather, Reshape, Cast,
      Concat and Identity, which the bound engine and onnxruntime both run.
      X is float32 when any model input is, so every value fed to a model is
      exactly the value reported; Y is float64 when any piece is, so no
      output is rounded.

A query that is one model's input and output as they are (``Layout.single_model``)
uses the model file itself; a composed model is written to ``workdir``.
"""
from __future__ import annotations

import gzip
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genbab.spec.types import Spec, SpecError
from genbab.spec.vnnlib2 import (
    Application,
    Layout,
    NetworkDecl,
    Query,
    Slot,
    Variable,
    detect_version,
    holds,
    parse_query_text,
    plan_layout,
    read_text,
    to_spec,
)

ANALYSABLE_MODEL_TYPES = ("float32", "float64")  # model element types a `real` query may use
_ONNX_FLOAT, _ONNX_DOUBLE = 1, 11  # onnx.TensorProto.FLOAT / DOUBLE


@dataclass(frozen=True)
class ModelTensor:
    """One tensor of an ONNX graph: element type (VNN-LIB name) and dims."""

    name: str
    type_name: str  # float32, float64, int64, ...
    dims: tuple[int | None, ...] | None  # None: no shape recorded; None dim: symbolic


@dataclass(frozen=True)
class Model:
    """A read ONNX model with its (non-constant) inputs and its outputs, in graph order."""

    path: str
    proto: object  # onnx.ModelProto
    inputs: tuple[ModelTensor, ...]
    outputs: tuple[ModelTensor, ...]


@dataclass(frozen=True)
class Part:
    """What the composition needs for one application: its model, input shapes, hidden nodes."""

    model: Model
    shapes: tuple[tuple[int, ...], ...]  # declared shape of each input
    hidden: dict  # ONNX tensor name -> ModelTensor


@dataclass(frozen=True)
class Problem:
    """A query reduced to one model, one flat input box set and one flat output.

    ``variables`` are the declared variables in declaration order (for a 1.0
    property the scalars ``X_i`` and ``Y_j``), ``layout`` says where each one
    lives in the model's input X or output Y, ``model_types`` gives the
    element type of the model tensor behind each.  ``query`` is None for 1.0.
    """

    spec: Spec
    model_path: str
    variables: tuple[Variable, ...]
    model_types: tuple[str, ...]
    layout: Layout
    query: Query | None = None

    @property
    def composed(self) -> bool:
        """Whether ``model_path`` is a model written by ``compose_models``."""
        return not self.layout.single_model

    def assignment(self, x: np.ndarray, y: np.ndarray) -> list[tuple[Variable, np.ndarray]]:
        """Each declared variable with its values (flat, row-major) for input ``x``, output ``y``."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        values = []
        for v, var in enumerate(self.variables):
            indices = self.layout.x[v]
            if indices is not None:
                values.append((var, x[list(indices)]))
            else:
                start = self.layout.y[v]
                values.append((var, y[start:start + var.size]))
        return values

    def model_type(self, variable: Variable) -> str:
        """The element type of the model tensor behind ``variable``."""
        return self.model_types[self.variables.index(variable)]

    def holds(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Whether the query, exactly as written, holds at input ``x`` with output ``y``."""
        if self.query is None:
            return True  # 1.0: ``genbab.check`` confirmed the rows; nothing was relaxed
        return holds(self.query, {v.name: values for v, values in self.assignment(x, y)})


# ---- loading: a property file + --network options -> Problem -----------------------------


def load_problem(path: str | Path, networks: dict[str, str],
                 workdir: str | Path | None = None) -> Problem:
    """Parse the query at ``path`` (1.0 or 2.0) and map it onto the ``--network`` models.

    A composed model is written into ``workdir`` (default: a new temporary
    folder that the caller removes).  Raises ``SpecError`` for every error
    condition of the standard, for queries it cannot reduce and for
    unreadable models; ``OSError`` when the query cannot be read.
    """
    text = read_text(path)
    if detect_version(text) == "1.0":
        return _load_vnnlib1(text, str(path), networks)
    return problem_for_query(parse_query_text(text, str(path)), networks, workdir)


def load_spec_for_model(path: str | Path, model_path: str | Path) -> Spec:
    """The ``Spec`` of a 1.0 or 2.0 property file for one model (``genbab verify MODEL SPEC``).

    Every network a 2.0 query declares is mapped to ``model_path``; the
    checks of ``load_problem`` apply, and the query must be that model's
    input and output as they are (no composition).
    """
    text = read_text(path)
    if detect_version(text) == "1.0":
        from genbab.spec.vnnlib1 import parse_vnnlib1_text

        return parse_vnnlib1_text(text, str(path))
    query = parse_query_text(text, str(path))
    if not plan_layout(query).single_model:
        raise SpecError("this query needs several models, inputs, outputs or hidden nodes: "
                        "verify it with `genbab verify QUERY --network NAME=MODEL ...`",
                        query.source)
    names = [net.name for net in query.networks if not net.equal_to]
    return problem_for_query(query, dict.fromkeys(names, str(model_path))).spec


def problem_for_query(query: Query, networks: dict[str, str],
                      workdir: str | Path | None = None) -> Problem:
    """Map a parsed 2.0 query onto the models named by ``networks`` (see ``load_problem``)."""
    _check_mapping(query, networks)
    models: dict[str, Model] = {}
    types: dict[str, str] = {}
    hidden: dict[str, dict] = {}
    for net in query.networks:
        path = networks[net.equal_to or net.name]
        if path not in models:
            models[path] = read_model(path)
        found_types, hidden[net.name] = _bind(net, models[path], query.source)
        types.update(found_types)
        if net.isomorphic_to:
            _check_isomorphic(query, net, networks, models)
    layout = plan_layout(query)
    spec = to_spec(query, layout)
    model_types = tuple(types[v.name] for v in query.variables)
    if layout.single_model:
        model_path = networks[layout.applications[0].model_of]
        return Problem(spec, model_path, query.variables, model_types, layout, query)
    parts = [_part(query, app, models[networks[app.model_of]], hidden)
             for app in layout.applications]
    proto = compose_models(layout, parts)
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="genbab-"))
    model_path = folder / "composed.onnx"
    try:
        model_path.write_bytes(proto.SerializeToString())
    except OSError as exc:
        raise SpecError(f"cannot write the composed model ({exc.strerror})", str(model_path)) \
            from None
    return Problem(spec, str(model_path), query.variables, model_types, layout, query)


def _load_vnnlib1(text: str, source: str, networks: dict[str, str]) -> Problem:
    from genbab.spec.vnnlib1 import parse_vnnlib1_text

    if len(networks) != 1:
        raise SpecError(f"a VNN-LIB 1.0 property concerns one network: give exactly one "
                        f"--network NAME=MODEL (got {len(networks)})", source)
    (model_path,) = networks.values()
    spec = parse_vnnlib1_text(text, source)
    model = read_model(model_path)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise SpecError(f"the model has {len(model.inputs)} input(s) and {len(model.outputs)} "
                        "output(s); a VNN-LIB 1.0 property needs one of each", model_path)
    for tensor in (*model.inputs, *model.outputs):
        if tensor.type_name not in ANALYSABLE_MODEL_TYPES:
            raise SpecError(f"{model_path}: {tensor.name} has element type {tensor.type_name}; "
                            f"genbab analyses {' and '.join(ANALYSABLE_MODEL_TYPES)} models")
    n_in, n_out = spec.n_inputs, spec.n_outputs
    variables = tuple(Variable(f"{letter}_{i}", kind, "Real", (), "")
                      for letter, kind, n in (("X", "input", n_in), ("Y", "output", n_out))
                      for i in range(n))
    layout = Layout(tuple((i,) for i in range(n_in)) + (None,) * n_out,
                    (None,) * n_in + tuple(range(n_out)), n_in, n_out,
                    (Application(("",), "", (tuple(range(n_in)),)),),
                    (Slot(0, n_out, 0, "output", output=0),))
    model_types = (model.inputs[0].type_name,) * n_in + (model.outputs[0].type_name,) * n_out
    return Problem(spec, model_path, variables, model_types, layout)


def _check_mapping(query: Query, networks: dict[str, str]) -> None:
    declared = [n.name for n in query.networks]
    needed = [n.name for n in query.networks if not n.equal_to]
    missing = [name for name in needed if name not in networks]
    surplus = [name for name in networks if name not in needed]
    problems = []
    if missing:
        problems.append("no --network given for " + ", ".join(f"'{n}'" for n in missing))
    for name in surplus:
        why = "is declared equal-to another network" if name in declared else \
            "is not declared in the query"
        problems.append(f"--network {name}: network '{name}' {why}")
    if problems:
        raise SpecError("; ".join(problems), query.source)


def _bind(net: NetworkDecl, model: Model, source: str) -> tuple[dict[str, str], dict]:
    """Check ``net``'s declarations against ``model``: (element type per variable, hidden tensors)."""
    inputs, outputs, hidden = (net.of_kind(k) for k in ("input", "output", "hidden"))
    if len(inputs) != len(model.inputs) or len(outputs) != len(model.outputs):
        raise SpecError(f"network '{net.name}' declares {len(inputs)} input(s) and "
                        f"{len(outputs)} output(s) but {model.path} has {len(model.inputs)} and "
                        f"{len(model.outputs)} (they are matched by position)", source)
    pairs = [*zip(inputs, model.inputs), *zip(outputs, model.outputs)]
    for var, tensor in pairs:
        _check_tensor(var, tensor, model.path, source)
    found = hidden_tensors(model, [v.onnx_name or "" for v in hidden], source)
    for var in hidden:
        pairs.append((var, found[var.onnx_name or ""]))
        _check_tensor(var, pairs[-1][1], model.path, source)
    return {var.name: tensor.type_name for var, tensor in pairs}, found


def _check_tensor(var: Variable, tensor: ModelTensor, model_path: str, source: str) -> None:
    """The standard's type rules, then the shape: declared vs. the model's tensor."""
    where = f"{var.kind} {var.name} ({var.type_name}) vs. {model_path} {var.kind} " \
        f"'{tensor.name}' ({tensor.type_name})"
    if var.is_real:
        if tensor.type_name not in ANALYSABLE_MODEL_TYPES:
            raise SpecError(f"{where}: genbab cannot analyse {tensor.type_name} tensors soundly "
                            f"(it analyses {' and '.join(ANALYSABLE_MODEL_TYPES)} models)", source)
    elif var.type_name != tensor.type_name:
        raise SpecError(f"{where}: element types differ", source)
    else:
        raise SpecError(f"{where}: genbab cannot analyse {var.type_name} soundly (its bounds "
                        "assume real arithmetic); declare the variable as 'real' to accept "
                        "real-arithmetic semantics", source)
    if tensor.dims is None:
        return  # no recorded shape: verify() still compares element counts
    shape_ok = len(tensor.dims) == len(var.shape) and all(
        d == s or (d is None and s == 1) for d, s in zip(tensor.dims, var.shape))
    if not shape_ok:
        shown = ",".join("?" if d is None else str(d) for d in tensor.dims)
        raise SpecError(f"{var.kind} {var.name} is declared with shape "
                        f"[{','.join(map(str, var.shape))}] but {model_path} {var.kind} "
                        f"'{tensor.name}' has shape [{shown}]", source)


def _check_isomorphic(query: Query, net: NetworkDecl, networks: dict[str, str],
                      models: dict[str, Model]) -> None:
    other = next(n for n in query.networks if n.name == net.isomorphic_to)
    mine, theirs = networks[net.name], networks[other.equal_to or other.name]
    problem = isomorphism_problem(models[mine], models[theirs])
    if problem is not None:
        raise SpecError(f"network '{net.name}' is declared isomorphic-to '{other.name}', but "
                        f"{mine} and {theirs} are not isomorphic: {problem}", query.source)


def _part(query: Query, app: Application, model: Model, hidden: dict[str, dict]) -> Part:
    owner = next(n for n in query.networks if n.name == app.networks[0])
    found: dict = {}
    for name in app.networks:
        found.update(hidden[name])
    return Part(model, tuple(v.shape for v in owner.of_kind("input")), found)


# ---- reading models --------------------------------------------------------------------


def read_model(model_path: str) -> Model:
    """The ONNX model at ``model_path`` (plain or gzip) with its inputs and outputs.

    Reads the graph with ``onnx`` alone: error paths stay free of torch.
    """
    try:
        raw = Path(model_path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise SpecError(f"cannot read model ({getattr(exc, 'strerror', None) or exc})",
                        model_path) from None
    import onnx

    try:
        proto = onnx.load_from_string(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types
        raise SpecError(f"not a valid ONNX model ({type(exc).__name__})", model_path) from None
    constants = {init.name for init in proto.graph.initializer}
    inputs = tuple(_tensor(vi) for vi in proto.graph.input if vi.name not in constants)
    return Model(str(model_path), proto, inputs, tuple(_tensor(vi) for vi in proto.graph.output))


def hidden_tensors(model: Model, names: Sequence[str], source: str) -> dict[str, ModelTensor]:
    """The tensors named by hidden nodes: computed by a node of ``model``, with shape and type."""
    if not names:
        return {}
    import onnx

    graph = model.proto.graph
    produced = {out for node in graph.node for out in node.output if out}
    missing = [name for name in names if name not in produced]
    if missing:
        raise SpecError(f"{model.path} has no tensor {', '.join(repr(n) for n in missing)} "
                        "computed by a node (a hidden node names the output of an ONNX node)",
                        source)
    try:
        inferred = onnx.shape_inference.infer_shapes(model.proto).graph
    except Exception:  # noqa: BLE001 - inference is best effort; running the model is the fallback
        inferred = graph
    infos = {vi.name: vi for vi in (*inferred.value_info, *inferred.output)}
    found = {}
    for name in names:
        tensor = _tensor(infos[name]) if name in infos else None
        if tensor is not None and tensor.dims is not None and tensor.type_name != "undefined":
            found[name] = tensor
    unknown = [name for name in names if name not in found]
    if unknown:
        found.update(_run_for_tensors(model, unknown, source))
    return found


def _run_for_tensors(model: Model, names: list[str], source: str) -> dict[str, ModelTensor]:
    """Shapes and types of intermediate tensors, from one onnxruntime run on zeros."""
    import onnx
    import onnxruntime as ort

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    feeds = {}
    for tensor in model.inputs:
        shape = tuple(1 if d is None else d for d in tensor.dims or ())
        feeds[tensor.name] = np.zeros(shape, np.float64 if tensor.type_name == "float64"
                                      else np.float32)  # inputs were checked: float32/64
    try:
        session = ort.InferenceSession(proto.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        values = session.run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise SpecError(f"cannot determine the shape of {', '.join(map(repr, names))} in "
                        f"{model.path} ({type(exc).__name__})", source) from None
    kinds = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
    return {name: ModelTensor(name, kinds.get(value.dtype, str(value.dtype)), value.shape)
            for name, value in zip(names, values)}


def isomorphism_problem(a: Model, b: Model) -> str | None:
    """Why two models are not isomorphic (same operators, same weight shapes), or None."""
    def signature(model: Model):
        graph = model.proto.graph
        ops = sorted((n.domain or "", n.op_type, len(n.input), len(n.output)) for n in graph.node)
        return ops, sorted(tuple(init.dims) for init in graph.initializer)

    (ops_a, weights_a), (ops_b, weights_b) = signature(a), signature(b)
    if ops_a != ops_b:
        return "their operators differ"
    if weights_a != weights_b:
        return "their weight tensors have different shapes"
    return None


def _tensor(value_info) -> ModelTensor:
    from onnx import TensorProto

    tensor_type = value_info.type.tensor_type
    kind = TensorProto.DataType.Name(tensor_type.elem_type) \
        if tensor_type.elem_type in TensorProto.DataType.values() else "undefined"
    type_name = {"FLOAT": "float32", "DOUBLE": "float64"}.get(kind, kind.lower())
    dims = None
    if tensor_type.HasField("shape"):
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tensor_type.shape.dim)
    return ModelTensor(value_info.name, type_name, dims)


# ---- composition -----------------------------------------------------------------------


def compose_models(layout: Layout, parts: Sequence[Part]):
    """One ONNX model from flat X ``[1, n_x]`` to flat Y ``[1, n_y]`` (see the module docstring).

    ``parts[a]`` serves ``layout.applications[a]``.
    """
    from onnx import helper

    if any(part.model.proto.functions for part in parts):
        raise SpecError("models with local functions cannot be composed",
                        next(p.model.path for p in parts if p.model.proto.functions))
    opset = max(_opset(part.model.proto) for part in parts)
    x_type = _ONNX_FLOAT if any(t.type_name == "float32" for part in parts
                                for t in part.model.inputs) else _ONNX_DOUBLE
    glue = _Glue(opset)
    graphs = []
    for a, (app, part) in enumerate(zip(layout.applications, parts)):
        graph = _prefixed_graph(part.model, opset, f"net{a}/")
        constants = {init.name for init in graph.initializer}
        feeds = [vi.name for vi in graph.input if vi.name not in constants]
        for name, indices, shape, tensor in zip(feeds, app.inputs, part.shapes,
                                                part.model.inputs):
            flat = glue.select("glue/X", indices)
            shaped = glue.node("Reshape", [flat, glue.const(np.array(shape, np.int64))])
            glue.cast(shaped, x_type, _onnx_type(tensor), output=name)
        graphs.append(graph)
    n_before = len(glue.nodes)
    pieces = [_piece(slot, parts, x_type) for slot in layout.slots]
    y_type = _ONNX_DOUBLE if any(t == _ONNX_DOUBLE for _, t in pieces) else _ONNX_FLOAT
    flats = [glue.cast(glue.node("Reshape", [source, glue.const(np.array([1, -1], np.int64))]),
                       kind, y_type) for source, kind in pieces]
    glue.node("Concat", flats, output="glue/Y", axis=1) if len(flats) > 1 else \
        glue.node("Identity", flats, output="glue/Y")
    nodes = glue.nodes[:n_before] + [n for g in graphs for n in g.node] + glue.nodes[n_before:]
    composed = helper.make_graph(
        nodes, "genbab_composed",
        [helper.make_tensor_value_info("glue/X", x_type, [1, layout.n_x])],
        [helper.make_tensor_value_info("glue/Y", y_type, [1, layout.n_y])],
        initializer=glue.constants + [i for g in graphs for i in g.initializer],
        value_info=[v for g in graphs for v in g.value_info])
    composed.sparse_initializer.extend(s for g in graphs for s in g.sparse_initializer)
    domains: dict[str, int] = {"": opset}
    for part in parts:
        for entry in part.model.proto.opset_import:
            if entry.domain not in ("", "ai.onnx"):
                domains[entry.domain] = max(domains.get(entry.domain, 0), entry.version)
    model = helper.make_model(composed, producer_name="genbab",
                              opset_imports=[helper.make_opsetid(d, v)
                                             for d, v in domains.items()])
    model.ir_version = max(max(p.model.proto.ir_version for p in parts), 4)
    return model


def _piece(slot: Slot, parts: Sequence[Part], x_type: int) -> tuple[str, int]:
    """The tensor behind a Y slot and its ONNX element type."""
    if slot.kind == "copy":
        return "glue/X", x_type
    part = parts[slot.application]
    tensor = part.model.outputs[slot.output] if slot.kind == "output" \
        else part.hidden[slot.onnx_name]
    return f"net{slot.application}/{tensor.name}", _onnx_type(tensor)


def _onnx_type(tensor: ModelTensor) -> int:
    return _ONNX_DOUBLE if tensor.type_name == "float64" else _ONNX_FLOAT


def _opset(proto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 13


def _prefixed_graph(model: Model, opset: int, prefix: str):
    """A copy of the model's graph at ``opset`` with every name prefixed."""
    import onnx
    import onnx.compose
    import onnx.version_converter

    proto = model.proto
    if _opset(proto) != opset:
        try:
            proto = onnx.version_converter.convert_version(proto, opset)
        except Exception as exc:  # noqa: BLE001 - the converter raises many types
            raise SpecError(f"cannot convert the model to opset {opset} to compose it with "
                            f"the other models ({type(exc).__name__}: {exc})", model.path) \
                from None
    return onnx.compose.add_prefix(proto, prefix).graph


class _Glue:
    """The nodes and constants added around the applications, with fresh names."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list = []
        self.constants: list = []

    def _fresh(self) -> str:
        return f"glue/{len(self.nodes) + len(self.constants)}"

    def const(self, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._fresh()
        self.constants.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper

        output = output or self._fresh()
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{output}:{op}", **attrs))
        return output

    def select(self, source: str, indices: tuple[int, ...]) -> str:
        """``source[:, indices]`` as ``[1, len(indices)]``: a Slice where contiguous, else a Gather."""
        first = indices[0] if indices else 0
        if indices != tuple(range(first, first + len(indices))):
            return self.node("Gather", [source, self.const(np.array(indices, np.int64))], axis=1)
        end = first + len(indices)
        if self.opset < 10:
            return self.node("Slice", [source], starts=[first], ends=[end], axes=[1])
        bounds = [self.const(np.array([v], np.int64)) for v in (first, end, 1)]
        return self.node("Slice", [source, *bounds])

    def cast(self, source: str, from_type: int, to_type: int, output: str | None = None) -> str:
        if from_type == to_type:
            return self.node("Identity", [source], output) if output else source
        return self.node("Cast", [source], output, to=to_type)
