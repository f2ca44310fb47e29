"""VNN-LIB 2.0 front end: a query, the layout of its elements, and its canonical ``Spec``.

A 2.0 query declares networks (``declare-network``) with typed, shaped
tensor variables (``declare-input``, ``declare-hidden``, ``declare-output``)
and asserts formulas over their elements; any assignment satisfying every
``assert`` is a satisfying assignment (a counterexample).  The text is parsed
and type-checked by the ``vnnlib`` package (the standard's own parser); this
module turns its AST into a small formula tree of its own (``Atom`` /
``Connective``), places every declared element in one flat input vector X
and one flat output vector Y (``plan_layout``), then lowers the formulas to
VNN-LIB 1.0 text over ``X_i`` and ``Y_j`` and hands it to
``genbab.spec.vnnlib1``, so that DNF, boxes and disjunct grouping follow
exactly one implementation.  ``genbab.spec.compose`` builds the model that
maps X to Y.

The layout (what makes any number of networks, inputs, outputs and hidden
nodes look like one network with one input and one output)
    * X holds every *distinct* input element, in declaration order.  A
      top-level assertion ``(== A[i] B[j])`` between two input elements makes
      them one element of X: an exact substitution, since every satisfying
      assignment has them equal.
    * Every network is one application of a model.  An ``equal-to`` network
      runs the model of the network it names, on its own inputs; when those
      are, element for element, the same elements of X, it is the *same*
      application (same values everywhere), so its outputs and hidden nodes
      share Y entries with the other's -- ``(- Y[0] B[0])`` then cancels
      exactly instead of being bounded from two separately relaxed copies.
      ``isomorphic-to`` networks have their own models (``--network``).
    * Y holds, in declaration order, the outputs and the hidden nodes of
      every application and, when some atom needs it, a copy of all of X.
    * An atom over one input element (after substitution) is a bound of the
      input box.  Any other atom that involves inputs (several input
      elements, or inputs together with hidden nodes or outputs) reads the
      inputs from the copy of X in Y, and so becomes a row like any output
      constraint (theories LIN, MNC).  Every input element still needs finite
      constant bounds: the input box is what the analysis splits.  Only the
      inputs of an application that no assertion mentions at all may be
      free: they are set to 0, since any value does.

Relaxations, and how soundness is kept
    * ``<`` and ``>`` are read as ``<=`` and ``>=``, and ``!=`` as true; both
      only enlarge the set searched for a counterexample, so ``unsat`` stays
      sound.  A ``sat`` assignment must then pass ``holds``, which evaluates
      every assertion exactly as written (strict comparisons, ``!=``).
      Atoms whose variables all cancel are evaluated exactly.

Element numbering: a tensor element ``V[i, j, ...]`` is the row-major flat
index of its indices in the declared shape, which is also how the model's
tensors are flattened.  Only linear arithmetic is accepted (``*`` with at
most one non-constant factor).
"""
from __future__ import annotations

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


# ---- the layout: every declared element in the flat X or Y ----------------


@dataclass(frozen=True)
class Application:
    """One application of a model: the networks that share it, and its inputs in X."""

    networks: tuple[str, ...]  # in declaration order; the first one owns it
    model_of: str  # the network whose ``--network`` model it runs (equal-to target or itself)
    inputs: tuple[tuple[int, ...], ...]  # per declared input: the X index of each element


@dataclass(frozen=True)
class Slot:
    """A contiguous piece of Y: one tensor of one application, or the copy of X."""

    start: int
    size: int
    application: int | None  # None for the copy of X
    kind: str  # output | hidden | copy
    output: int = -1  # output: its position among the network's outputs
    onnx_name: str = ""  # hidden: the ONNX tensor


@dataclass(frozen=True)
class Layout:
    """Where every declared element lives in the model input X and the output Y.

    ``x[v]`` gives, for input variable ``v`` (its number in declaration
    order), the X index of each element; ``y[v]`` the Y index of the first
    element of a hidden or output variable (its elements follow in order).
    """

    x: tuple[tuple[int, ...] | None, ...]
    y: tuple[int | None, ...]
    n_x: int
    n_y: int
    applications: tuple[Application, ...]
    slots: tuple[Slot, ...]
    copy_start: int | None = None  # Y index of the copy of X, if there is one
    unused: tuple[int, ...] = ()  # X indices of applications no assertion mentions

    @property
    def single_model(self) -> bool:
        """Whether X and Y are exactly the input and output of one model (no composition)."""
        if len(self.applications) != 1 or len(self.slots) != 1:
            return False
        app, slot = self.applications[0], self.slots[0]
        return app.inputs == (tuple(range(self.n_x)),) and slot.kind == "output" \
            and slot.output == 0

    def terms(self, atom: Atom) -> tuple[dict[int, float], dict[int, float]]:
        """The atom's coefficients over X and over Y (zeros dropped).

        Inputs go to X when the atom is a bound of one input element, else to
        the copy of X in Y (``copy_start`` is then set by ``plan_layout``).
        """
        x_terms, y_terms = _mapped_terms(atom, self.x, self.y)
        if x_terms and (y_terms or len(x_terms) > 1):
            for k, c in x_terms.items():
                y_terms[self.copy_start + k] = y_terms.get(self.copy_start + k, 0.0) + c
            x_terms = {}
        return x_terms, {j: c for j, c in y_terms.items() if c != 0.0}

    def element(self, letter: str, index: int, variables: tuple[Variable, ...]) -> str:
        """The 2.0 spelling of ``X_index`` / ``Y_index``, e.g. ``B[0,3]``."""
        if letter == "Y" and self.copy_start is not None and index >= self.copy_start:
            letter, index = "X", index - self.copy_start
        for v, var in enumerate(variables):
            if letter == "X" and self.x[v] is not None and index in self.x[v]:
                return var.element(self.x[v].index(index))
            start = self.y[v]
            if letter == "Y" and start is not None and start <= index < start + var.size:
                return var.element(index - start)
        return f"{letter}_{index}"


def plan_layout(query: Query) -> Layout:
    """Place every declared element of ``query`` in X or Y (see the module docstring)."""
    variables = query.variables
    number = {v.name: i for i, v in enumerate(variables)}
    x = _input_indices(query)
    n_x = 1 + max((k for ks in x if ks for k in ks), default=-1)
    applications: list[Application] = []
    application_of: dict[str, int] = {}
    for net in query.networks:
        model_of = net.equal_to or net.name
        inputs = tuple(x[number[v.name]] for v in net.of_kind("input"))
        for a, app in enumerate(applications):
            if (app.model_of, app.inputs) == (model_of, inputs):
                applications[a] = Application(app.networks + (net.name,), model_of, inputs)
                break
        else:
            a = len(applications)
            applications.append(Application((net.name,), model_of, inputs))
        application_of[net.name] = a
    slots: list[Slot] = []
    where: dict[tuple, int] = {}
    y: list[int | None] = [None] * len(variables)
    n_y = 0
    for net in query.networks:
        a = application_of[net.name]
        outputs = net.of_kind("output")
        for var in net.of_kind("hidden") + outputs:  # declaration order
            new = Slot(n_y, var.size, a, "hidden", onnx_name=var.onnx_name or "") \
                if var.kind == "hidden" else Slot(n_y, var.size, a, "output",
                                                  output=outputs.index(var))
            y[number[var.name]], n_y = _slot(slots, where, n_y, var, new)
    copy_start = None
    if any(xs and (ys or len(xs) > 1) for xs, ys in
           (_mapped_terms(atom, x, y) for atom in _atoms(query.assertions))):
        copy_start = n_y
        slots.append(Slot(n_y, n_x, None, "copy"))
        n_y += n_x
    mentioned = {v for atom in _atoms(query.assertions) for v, _, _ in atom.terms}
    unused = tuple(k for app in applications
                   if not any(number[var.name] in mentioned for net in query.networks
                              if net.name in app.networks for var in net.variables)
                   for ks in app.inputs for k in ks)
    return Layout(tuple(x), tuple(y), n_x, n_y, tuple(applications), tuple(slots), copy_start,
                  unused)


def _slot(slots: list[Slot], where: dict, n_y: int, var: Variable, new: Slot):
    """The Y start of ``var``: a slot for the same tensor of the same application, or ``new``."""
    key = (new.application, new.kind, new.output, new.onnx_name, var.shape)
    if key in where:
        return where[key], n_y
    where[key] = n_y
    slots.append(new)
    return n_y, n_y + var.size


def _input_indices(query: Query) -> list[tuple[int, ...] | None]:
    """Per variable, the X index of each input element (None for hidden and output)."""
    variables = query.variables
    parent: dict[tuple[int, int], tuple[int, int]] = {}

    def root(e):
        while parent.get(e, e) != e:
            e = parent[e]
        return e

    for formula in _conjuncts(query.assertions):
        pair = _alias(formula, variables)
        if pair is not None:
            a, b = root(pair[0]), root(pair[1])
            parent[max(a, b)] = min(a, b)  # the class's first element is its root
    index: dict[tuple[int, int], int] = {}
    x: list[tuple[int, ...] | None] = []
    for v, var in enumerate(variables):
        if var.kind != "input":
            x.append(None)
            continue
        x.append(tuple(index.setdefault(root((v, e)), len(index)) for e in range(var.size)))
    return x


def _alias(formula, variables: tuple[Variable, ...]):
    """The two input elements of ``(== A[i] B[j])`` (any equal scale), else None."""
    if not isinstance(formula, Atom) or formula.op != "==" or formula.constant != 0.0 \
            or len(formula.terms) != 2:
        return None
    (v1, e1, c1), (v2, e2, c2) = formula.terms
    if c1 != -c2 or variables[v1].kind != "input" or variables[v2].kind != "input":
        return None
    return (v1, e1), (v2, e2)


def _mapped_terms(atom: Atom, x, y) -> tuple[dict[int, float], dict[int, float]]:
    """Coefficients by X index (inputs) and by Y index (hidden, outputs), zeros dropped."""
    x_terms: dict[int, float] = {}
    y_terms: dict[int, float] = {}
    for v, flat, c in atom.terms:
        if x[v] is not None:
            x_terms[x[v][flat]] = x_terms.get(x[v][flat], 0.0) + c
        else:
            y_terms[y[v] + flat] = y_terms.get(y[v] + flat, 0.0) + c
    return ({k: c for k, c in x_terms.items() if c != 0.0},
            {j: c for j, c in y_terms.items() if c != 0.0})


def _atoms(formulas):
    for formula in formulas:
        if isinstance(formula, Connective):
            yield from _atoms(formula.args)
        else:
            yield formula


# ---- lowering to the canonical form ----------------------------------------


def to_spec(query: Query, layout: Layout | None = None) -> Spec:
    """The canonical ``Spec`` of ``query`` over the flat X and Y of ``layout``.

    ``layout`` defaults to ``plan_layout(query)``.  Raises ``SpecError`` for
    what ``genbab.spec.vnnlib1`` rejects (an input element without finite
    bounds, too many DNF terms, ...), naming the 2.0 element and line.
    """
    from genbab.spec.vnnlib1 import parse_vnnlib1_text

    layout = plan_layout(query) if layout is None else layout
    lines = [f"(declare-const X_{i} Real)" for i in range(layout.n_x)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(layout.n_y)]
    lines += [f"(assert (= X_{k} 0.0))" for k in layout.unused]  # any value does: take 0
    origin = [None] * len(lines)  # 2.0 line of each lowered line
    for formula in _conjuncts(query.assertions):  # one per line: vnnlib1's fast path
        lines.append(f"(assert {_lower(formula, layout)})")
        origin.append(_first_line(formula))
    try:
        return parse_vnnlib1_text("\n".join(lines), query.source)
    except SpecError as exc:
        line = origin[exc.line - 1] if exc.line is not None else None
        reason = _FLAT_NAME_RE.sub(
            lambda m: layout.element(m.group(1), int(m.group(2)), query.variables), exc.reason)
        raise SpecError(reason, query.source, line) from None


def _conjuncts(formulas):
    """The formulas with every top-level ``and`` split into its arguments."""
    for formula in formulas:
        if isinstance(formula, Connective) and formula.op == "and":
            yield from _conjuncts(formula.args)
        else:
            yield formula


def _lower(formula, layout: Layout) -> str:
    """VNN-LIB 1.0 text of one formula over the flat ``X_i`` / ``Y_j``."""
    if isinstance(formula, Connective):
        return f"({formula.op} {' '.join(_lower(a, layout) for a in formula.args)})"
    x_terms, y_terms = layout.terms(formula)
    terms = [("X", k, c) for k, c in x_terms.items()] + [("Y", j, c) for j, c in y_terms.items()]
    if not terms:  # every variable cancelled: the atom is a constant, evaluate it exactly
        return "(<= 0 0)" if _EXACT[formula.op](formula.constant, 0.0) else "(<= 1 0)"
    if formula.op == "!=":
        return "(<= 0 0)"  # relaxed to true; ``holds`` checks the real thing
    op = _LOWERED[formula.op]
    if len(terms) == 1 and abs(terms[0][2]) == 1.0:
        letter, index, c = terms[0]
        if c < 0:
            op = {"<=": ">=", ">=": "<=", "=": "="}[op]
        return f"({op} {letter}_{index} {_number(-formula.constant * c)})"
    parts = [f"(* {_number(c)} {letter}_{index})" for letter, index, c in terms]
    parts.append(_number(formula.constant))
    return f"({op} (+ {' '.join(parts)}) 0)"


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
