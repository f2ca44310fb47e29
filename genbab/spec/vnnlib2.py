"""VNN-LIB 2.0 front end: a query to our canonical ``Spec`` plus its variable map.

A 2.0 query declares networks (``declare-network``) with typed, shaped
tensor variables (``declare-input``, ``declare-hidden``, ``declare-output``)
and asserts formulas over their elements; any assignment satisfying every
``assert`` is a satisfying assignment (a counterexample).  The text is parsed
and type-checked by the ``vnnlib`` package (the standard's own parser); this
module turns its AST into a small formula tree of its own (``Atom`` /
``Connective``), then lowers that tree to VNN-LIB 1.0 text over the flattened
input ``X_i`` and output ``Y_j`` and hands it to ``genbab.spec.vnnlib1``, so
that DNF, boxes and disjunct grouping follow exactly one implementation.

What reduces to the single-network pipeline (and is accepted by ``to_spec``)
    * one network, without ``equal-to`` / ``isomorphic-to`` (theory SNET);
    * one input and one output declaration (SIO), no hidden node (NH);
    * atoms over inputs only bound one input element; atoms over outputs only
      are any linear row; no atom mixes inputs and outputs (SNC, OUTC);
    * linear arithmetic only (``*`` with at most one non-constant factor).
  ``unsupported_features`` names everything else, with the theory it needs.

Relaxations, and how soundness is kept
    * ``<`` and ``>`` are read as ``<=`` and ``>=``, and ``!=`` as true; both
      only enlarge the set searched for a counterexample, so ``unsat`` stays
      sound.  A ``sat`` assignment must then pass ``holds``, which evaluates
      every assertion exactly as written (strict comparisons, ``!=``).

Element numbering: a tensor element ``V[i, j, ...]`` is the row-major flat
index of its indices in the declared shape, which is also how the model's
input and output tensors are flattened.
"""
from __future__ import annotations

import gzip
import json
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genbab.spec.types import Spec, SpecError
from genbab.spec.vnnlib1 import read_text  # one reader for both versions (gzip, UTF-8)

REAL_TYPES = frozenset(("Real", "real"))  # the standard's type for real-arithmetic analysis
ANALYSABLE_MODEL_TYPES = ("float32", "float64")  # model element types a `real` query may use

_VERSION_2_RE = re.compile(r"^[^;\n]*\(\s*(?:vnnlib-version|declare-network)\b", re.MULTILINE)
_SYNTAX_RE = re.compile(r"syntax error at line (\d+), column (\d+): '(.*)'", re.DOTALL)
_FLAT_NAME_RE = re.compile(r"\b([XY])_(\d+)\b")
_COMPARISONS = {"LessEqual": "<=", "LessThan": "<", "GreaterEqual": ">=",
                "GreaterThan": ">", "Equal": "==", "NotEqual": "!="}
_EXACT = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
          "==": operator.eq, "!=": operator.ne}
_LOWERED = {"<=": "<=", "<": "<=", ">=": ">=", ">": ">=", "==": "="}  # "!=" becomes true


@dataclass(frozen=True)
class Variable:
    """One declared tensor: ``kind`` is input, hidden or output; ``type_name`` as written."""

    name: str
    kind: str
    type_name: str
    shape: tuple[int, ...]
    network: str
    onnx_name: str | None = None  # hidden nodes: the ONNX tensor they name

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def is_real(self) -> bool:
        return self.type_name in REAL_TYPES

    def element(self, flat: int) -> str:
        """The 2.0 spelling of flat element ``flat``, e.g. ``X[0,3]``."""
        if not self.shape:
            return self.name
        index = np.unravel_index(flat, self.shape)
        return f"{self.name}[{','.join(str(int(i)) for i in index)}]"


@dataclass(frozen=True)
class NetworkDecl:
    """One ``declare-network``: its variables in declaration order."""

    name: str
    variables: tuple[Variable, ...]
    equal_to: str = ""
    isomorphic_to: str = ""

    def of_kind(self, kind: str) -> tuple[Variable, ...]:
        return tuple(v for v in self.variables if v.kind == kind)


@dataclass(frozen=True)
class Atom:
    """``sum(c * variables[v][flat] for v, flat, c in terms) + constant  OP  0``."""

    op: str  # <=  <  >=  >  ==  !=
    terms: tuple[tuple[int, int, float], ...]  # (variable number in Query.variables, flat, c)
    constant: float
    line: int | None = None


@dataclass(frozen=True)
class Connective:
    op: str  # and | or
    args: tuple


@dataclass(frozen=True)
class Query:
    """A parsed 2.0 query: its networks and its assertions as formula trees."""

    networks: tuple[NetworkDecl, ...]
    assertions: tuple  # of Atom | Connective
    source: str = "<memory>"

    @property
    def variables(self) -> tuple[Variable, ...]:
        """Every declared variable, in declaration order."""
        return tuple(v for net in self.networks for v in net.variables)


# ---- reading and version detection -----------------------------------------


def detect_version(text: str) -> str:
    """``"2.0"`` for a query with ``vnnlib-version`` or ``declare-network``, else ``"1.0"``."""
    return "2.0" if _VERSION_2_RE.search(text) else "1.0"


# ---- parsing ---------------------------------------------------------------


def parse_query(path: str | Path) -> Query:
    """Parse a VNN-LIB 2.0 query file (plain or gzip-compressed)."""
    return parse_query_text(read_text(path), str(path))


def parse_query_text(text: str, source: str = "<memory>") -> Query:
    """Parse and type-check 2.0 text with the ``vnnlib`` package; errors as ``SpecError``."""
    import vnnlib

    try:
        ast = vnnlib.parse_query_string(text)
    except vnnlib.VNNLibException as exc:
        raise _package_error(str(exc), source) from None
    networks = tuple(_network(net) for net in ast.networks)
    variables = [v for net in networks for v in net.variables]
    number = {v.name: i for i, v in enumerate(variables)}
    assertions = tuple(_formula(a.expr, number, variables, source) for a in ast.assertions)
    return Query(networks, assertions, source)


def _network(net) -> NetworkDecl:
    variables = []
    for kind, decls in (("input", net.inputs), ("hidden", net.hidden), ("output", net.outputs)):
        for d in decls:
            onnx_name = d.onnx_name.strip('"') if d.onnx_name else None
            variables.append(Variable(d.name, kind, _type_name(d), tuple(d.shape), net.name,
                                      onnx_name))
    return NetworkDecl(net.name, tuple(variables), net.equal_to, net.isometric_to)


def _type_name(decl) -> str:
    """The element type as written: ``(declare-input X float32 [1, 2])`` -> ``float32``."""
    return str(decl).split()[2]


def _formula(expr, number: dict[str, int], variables: list[Variable], source: str):
    kind = type(expr).__name__
    if kind in ("And", "Or"):
        return Connective(kind.lower(), tuple(_formula(a, number, variables, source)
                                              for a in expr.args))
    if kind not in _COMPARISONS:
        raise SpecError(f"unsupported formula '{expr}'", source)
    import vnnlib

    terms: dict[tuple[int, int], float] = {}
    constant, line = 0.0, None
    for side, sign in ((expr.lhs, 1.0), (expr.rhs, -1.0)):
        try:
            linear = side.to_linear_expr()
        except vnnlib.VNNLibException as exc:
            raise SpecError(f"unsupported: {exc} in '{expr}' (only linear arithmetic)",
                            source) from None
        constant += sign * linear.constant
        for t in linear.terms:
            var = t.var
            v = number[var.name]
            flat = int(np.ravel_multi_index(tuple(var.indices), variables[v].shape)) \
                if variables[v].shape else 0
            terms[(v, flat)] = terms.get((v, flat), 0.0) + sign * t.coeff
            line = var.line if line is None else line
    kept = tuple((v, flat, c) for (v, flat), c in sorted(terms.items()) if c != 0.0)
    return Atom(_COMPARISONS[kind], kept, constant, line)


def _package_error(text: str, source: str) -> SpecError:
    """The ``vnnlib`` package's error (JSON or one line) as one readable ``SpecError``."""
    try:
        data = json.loads(text)
    except ValueError:
        m = _SYNTAX_RE.search(text)
        if m is None:
            return SpecError(text.strip(), source)
        token = m.group(3)
        hint = ""
        if re.fullmatch(r"[eE][+-]?\d*\w*", token):
            hint = " (VNN-LIB 2.0 numbers have no exponent: write them as plain decimals)"
        return SpecError(f"syntax error at '{token}'{hint}", source, int(m.group(1)),
                         int(m.group(2)))
    errors = data.get("errors") or [{}]
    first = errors[0]
    message = first.get("message", "invalid query")
    if first.get("hint"):
        message += f": {first['hint']}"
    if "type 'Unknown'" in message:
        message += (" (the vnnlib package does not type 'Real' variables in products with a "
                    "leading constant: declare them 'real' or write the constant last)")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    return SpecError(message, source, first.get("line"))


# ---- what reduces to one network with one input and one output -------------


def unsupported_features(query: Query) -> list[str]:
    """Why the query does not reduce to our single-network pipeline (empty: it does)."""
    problems = []
    if len(query.networks) != 1:
        problems.append(f"{len(query.networks)} networks are declared; genbab verifies queries "
                        "over a single network (theory SNET)")
    for net in query.networks:
        if net.equal_to or net.isomorphic_to:
            relation = "equal-to" if net.equal_to else "isomorphic-to"
            problems.append(f"network '{net.name}' is declared {relation} "
                            f"'{net.equal_to or net.isomorphic_to}' (theories MENET/MINET)")
        hidden = net.of_kind("hidden")
        if hidden:
            problems.append(f"network '{net.name}' declares hidden node(s) "
                            f"{', '.join(v.name for v in hidden)} (theory H)")
        for kind in ("input", "output"):
            count = len(net.of_kind(kind))
            if count != 1:
                problems.append(f"network '{net.name}' declares {count} {kind}s; genbab needs "
                                f"exactly one input and one output (theory SIO)")
    return problems


def to_spec(query: Query) -> Spec:
    """The canonical ``Spec`` of a single-network, single-input, single-output query.

    Raises ``SpecError`` for atoms it cannot express (input constraints other
    than bounds of one element, atoms mixing inputs and outputs) and for what
    ``genbab.spec.vnnlib1`` rejects (an input without finite bounds, ...).
    """
    from genbab.spec.vnnlib1 import parse_vnnlib1_text

    problems = unsupported_features(query)
    if problems:
        raise SpecError("unsupported query: " + "; ".join(problems), query.source)
    (net,) = query.networks
    x, y = net.of_kind("input")[0], net.of_kind("output")[0]
    letter = {query.variables.index(x): "X", query.variables.index(y): "Y"}
    lines = [f"(declare-const X_{i} Real)" for i in range(x.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(y.size)]
    origin = [None] * len(lines)  # 2.0 line of each lowered line
    for formula in _conjuncts(query.assertions):  # one per line: vnnlib1's fast path
        lines.append(f"(assert {_lower(formula, letter, query)})")
        origin.append(_first_line(formula))
    try:
        return parse_vnnlib1_text("\n".join(lines), query.source)
    except SpecError as exc:
        line = origin[exc.line - 1] if exc.line is not None else None
        reason = _FLAT_NAME_RE.sub(lambda m: (x if m.group(1) == "X" else y).element(
            int(m.group(2))), exc.reason)
        raise SpecError(reason, query.source, line) from None


def _conjuncts(formulas):
    """The formulas with every top-level ``and`` split into its arguments."""
    for formula in formulas:
        if isinstance(formula, Connective) and formula.op == "and":
            yield from _conjuncts(formula.args)
        else:
            yield formula


def _lower(formula, letter: dict[int, str], query: Query) -> str:
    """VNN-LIB 1.0 text of one formula over the flat ``X_i`` / ``Y_j``."""
    if isinstance(formula, Connective):
        return f"({formula.op} {' '.join(_lower(a, letter, query) for a in formula.args)})"
    if formula.op == "!=":
        return "(<= 0 0)"  # relaxed to true; ``holds`` checks the real thing
    kinds = {letter[v] for v, _, _ in formula.terms}
    if kinds == {"X", "Y"}:
        raise SpecError("unsupported: a constraint relating inputs and outputs (theory MNC); "
                        "only input bounds and constraints over outputs are supported",
                        query.source, formula.line)
    if kinds == {"X"} and len(formula.terms) > 1:
        raise SpecError("unsupported: a linear constraint over several input elements "
                        "(theory LIN); inputs may only be bounded one element at a time",
                        query.source, formula.line)
    op = _LOWERED[formula.op]
    if len(formula.terms) == 1 and abs(formula.terms[0][2]) == 1.0:
        v, flat, c = formula.terms[0]
        if c < 0:
            op = {"<=": ">=", ">=": "<=", "=": "="}[op]
        return f"({op} {letter[v]}_{flat} {_number(-formula.constant * c)})"
    parts = [f"(* {_number(c)} {letter[v]}_{flat})" for v, flat, c in formula.terms]
    parts.append(_number(formula.constant))
    return f"({op} (+ {' '.join(parts)}) 0)" if len(parts) > 1 else f"({op} {parts[0]} 0)"


def _number(value: float) -> str:
    return repr(float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _first_line(formula) -> int | None:
    if isinstance(formula, Atom):
        return formula.line
    for arg in formula.args:
        line = _first_line(arg)
        if line is not None:
            return line
    return None


# ---- exact evaluation of an assignment -------------------------------------


def holds(query: Query, values: dict[str, np.ndarray]) -> bool:
    """Whether every assertion holds, as written, for ``values`` (flat arrays by name)."""
    flat = [np.asarray(values[v.name], dtype=np.float64).reshape(-1) for v in query.variables]
    return all(_holds(f, flat) for f in query.assertions)


def _holds(formula, flat: list[np.ndarray]) -> bool:
    if isinstance(formula, Connective):
        test = all if formula.op == "and" else any
        return test(_holds(a, flat) for a in formula.args)
    total = math.fsum([c * float(flat[v][i]) for v, i, c in formula.terms] + [formula.constant])
    return _EXACT[formula.op](total, 0.0)


# ---- the network mapping: query + --network options -> one verification problem --


@dataclass(frozen=True)
class ModelTensor:
    """One input or output of an ONNX graph: element type (VNN-LIB name) and dims."""

    name: str
    type_name: str  # float32, float64, int64, ...
    dims: tuple[int | None, ...] | None  # None: no shape recorded; None dim: symbolic


@dataclass(frozen=True)
class Problem:
    """A query reduced to one model, one flat input box set and one flat output.

    ``variables`` are the declared variables in declaration order; for a 1.0
    query they are the scalars ``X_i`` and ``Y_j``.  ``query`` is None for 1.0.
    """

    spec: Spec
    model_path: str
    variables: tuple[Variable, ...]
    model_input: ModelTensor
    model_output: ModelTensor
    query: Query | None = None

    def assignment(self, x: np.ndarray, y: np.ndarray) -> list[tuple[Variable, np.ndarray]]:
        """Each declared variable with its values (flat, row-major) for input ``x``."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if self.query is None:  # scalars X_0 .. X_n-1, Y_0 .. Y_m-1
            values = np.concatenate([x, y])
            return [(v, values[i:i + 1]) for i, v in enumerate(self.variables)]
        return [(v, x if v.kind == "input" else y) for v in self.variables]

    def model_type(self, variable: Variable) -> str:
        """The element type of the model tensor behind ``variable``."""
        return (self.model_input if variable.kind == "input" else self.model_output).type_name

    def holds(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Whether the query, exactly as written, holds at input ``x`` with output ``y``."""
        if self.query is None:
            return True  # 1.0: ``genbab.check`` confirmed the rows; nothing was relaxed
        return holds(self.query, {v.name: values for v, values in self.assignment(x, y)})


def load_problem(path: str | Path, networks: dict[str, str]) -> Problem:
    """Parse the query at ``path`` (1.0 or 2.0) and map it onto the ``--network`` models.

    Raises ``SpecError`` for every error condition of the standard (missing or
    surplus networks, element types that differ from the model or that genbab
    cannot analyse soundly), for queries it cannot reduce and for unreadable
    models; ``OSError`` when the query cannot be read.
    """
    text = read_text(path)
    if detect_version(text) == "1.0":
        return _load_vnnlib1(text, str(path), networks)
    return problem_for_query(parse_query_text(text, str(path)), networks)


def load_spec_for_model(path: str | Path, model_path: str | Path) -> Spec:
    """The ``Spec`` of a 1.0 or 2.0 property file for one model (``genbab verify MODEL SPEC``).

    Every network a 2.0 query declares is mapped to ``model_path``; the checks
    of ``load_problem`` apply (a query over several networks is refused).
    """
    text = read_text(path)
    if detect_version(text) == "1.0":
        from genbab.spec.vnnlib1 import parse_vnnlib1_text

        return parse_vnnlib1_text(text, str(path))
    query = parse_query_text(text, str(path))
    names = [net.name for net in query.networks if not net.equal_to]
    return problem_for_query(query, dict.fromkeys(names, str(model_path))).spec


def problem_for_query(query: Query, networks: dict[str, str]) -> Problem:
    """Map a parsed 2.0 query onto the models named by ``networks`` (see ``load_problem``)."""
    _check_mapping(query, networks)
    problems = unsupported_features(query)
    if problems:
        raise SpecError("unsupported query: " + "; ".join(problems), query.source)
    (net,) = query.networks
    model_path = networks[net.name]
    model_input, model_output = _model_io(model_path)
    x, y = net.of_kind("input")[0], net.of_kind("output")[0]
    for var, tensor in ((x, model_input), (y, model_output)):
        _check_tensor(var, tensor, model_path, query.source)
    return Problem(to_spec(query), model_path, net.variables, model_input, model_output, query)


def _load_vnnlib1(text: str, source: str, networks: dict[str, str]) -> Problem:
    from genbab.spec.vnnlib1 import parse_vnnlib1_text

    if len(networks) != 1:
        raise SpecError(f"a VNN-LIB 1.0 property concerns one network: give exactly one "
                        f"--network NAME=MODEL (got {len(networks)})", source)
    (model_path,) = networks.values()
    spec = parse_vnnlib1_text(text, source)
    model_input, model_output = _model_io(model_path)
    for tensor in (model_input, model_output):
        if tensor.type_name not in ANALYSABLE_MODEL_TYPES:
            raise SpecError(f"{model_path}: {tensor.name} has element type {tensor.type_name}; "
                            f"genbab analyses {' and '.join(ANALYSABLE_MODEL_TYPES)} models")
    variables = tuple(Variable(f"{letter}_{i}", kind, "Real", (), "")
                      for letter, kind, n in (("X", "input", spec.n_inputs),
                                              ("Y", "output", spec.n_outputs))
                      for i in range(n))
    return Problem(spec, model_path, variables, model_input, model_output)


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


def _model_io(model_path: str) -> tuple[ModelTensor, ModelTensor]:
    """The single input and single output of the ONNX model (``SpecError`` otherwise).

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
        graph = onnx.load_from_string(raw).graph
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types
        raise SpecError(f"not a valid ONNX model ({type(exc).__name__})", model_path) from None
    constants = {init.name for init in graph.initializer}
    inputs = [_tensor(vi) for vi in graph.input if vi.name not in constants]
    outputs = [_tensor(vi) for vi in graph.output]
    if len(inputs) != 1 or len(outputs) != 1:
        raise SpecError(f"the model has {len(inputs)} input(s) and {len(outputs)} output(s); "
                        "genbab needs one of each (theory SIO)", model_path)
    return inputs[0], outputs[0]


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
