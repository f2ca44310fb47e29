"""VNN-LIB 1.0 (the VNN-COMP property format) front end: text or file to ``Spec``.

A VNN-LIB file declares inputs ``X_i`` and outputs ``Y_j`` as ``Real``
constants and asserts formulas whose conjunction describes the *unsafe* set:
any assignment satisfying every ``assert`` is a counterexample.  This module
turns that conjunction into the canonical form of ``genbab.spec.types``:
the formula is brought to disjunctive normal form, input atoms of each DNF
term become an input box, output atoms become rows of ``C @ y <= d``, and
terms sharing a box are grouped into one ``SpecCase``.

Supported language
    * comments ``;`` to the end of the line;
    * ``(declare-const X_i Real)`` and ``(declare-const Y_j Real)`` (declared
      before use, indices ``0..n-1`` without gaps);
    * ``(assert F)``; formulas ``(and F ...)``, ``(or F ...)``, comparisons
      ``<=``, ``>=``, ``<``, ``>``, ``=`` (chains such as ``(<= a b c)`` mean
      ``a <= b and b <= c``; ``=`` is two inequalities);
    * linear terms: numbers in any decimal/scientific notation, variables,
      ``(+ t ...)``, ``(- t)``, ``(- t t ...)`` and ``(* ...)`` with at most
      one non-constant factor;
    * ``check-sat``, ``get-model``, ``exit``, ``set-*`` commands are ignored.

Decisions
    * Strict inequalities are treated as non-strict.  This enlarges the unsafe
      set by its boundary only, so an ``unsat`` verdict stays sound; a
      counterexample exactly on the boundary would be a false alarm that the
      float64 re-check rejects.
    * Atoms over inputs only must bound a single input (``a*X_i + c <= 0``);
      atoms over outputs only become rows; an atom mixing inputs and outputs,
      or relating several inputs, raises ``SpecError`` ("unsupported: ...").
    * Atoms without variables are evaluated: true ones vanish, false ones make
      their DNF term (and so possibly the whole property) empty.
    * Every input needs a finite lower and upper bound in every DNF term; a
      term whose box is empty (some lower > upper) is dropped, and a property
      whose terms are all empty has no cases (legal: it can never be violated).
    * A term without output atoms makes its whole box unsafe: it is a disjunct
      with ``C`` of shape ``[0, n_outputs]``.
    * The DNF may hold at most ``MAX_DNF_TERMS`` terms.

Speed: whole lines ``(declare-const X_i Real)`` / ``(assert (<= X_i c))`` (the
bulk of image properties) take a regex fast path; everything else goes through
a tokenizer and recursive descent that keep every token's line and column.
"""
from __future__ import annotations

import gzip
import itertools
import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from genbab.spec.types import Disjunct, Spec, SpecCase, SpecError

MAX_DNF_TERMS = 100_000

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_VAR = r"[XY]_(?:0|[1-9]\d*)"
_NUMBER_RE = re.compile(_NUM + r"\Z")
_VAR_RE = re.compile(r"([XY])_(0|[1-9]\d*)\Z")
_PLAIN_TOKEN_RE = re.compile(r"[();]|[^\s();]+")
# A whole simple comparison "(<= VAR NUM|VAR)" becomes one token; see _Reader._simple.
_TOKEN_RE = re.compile(r"\(\s*([<>]=?)\s+(" + _VAR + r")\s+(" + _NUM + "|" + _VAR
                       + r")\s*\)|[();]|[^\s();]+")
# A whole line "(assert (<= X_i NUM))" or "(declare-const VAR Real)"; see _Reader.read.
_FAST_LINE_RE = re.compile(
    r"\s*\(\s*(?:assert\s*\(\s*([<>]=?)\s+(X_(?:0|[1-9]\d*))\s+(" + _NUM + r")\s*\)\s*"
    r"|declare-const\s+(([XY])_(0|[1-9]\d*))\s+Real\s*)\)\s*(?:;.*)?\Z")

_COMPARISONS = frozenset(("<=", ">=", "<", ">", "="))
_TERM_OPS = frozenset(("+", "-", "*"))
_IGNORED_COMMANDS = frozenset(
    ("check-sat", "get-model", "exit", "set-logic", "set-info", "set-option"))
_COMMANDS = frozenset(("assert", "declare-const")) | _IGNORED_COMMANDS


class _Tok(NamedTuple):
    kind: str  # "(", ")", "num", "sym", or "cmp" (a whole simple comparison)
    text: str
    line: int
    col: int
    parts: tuple = ()  # for "cmp": (operator, variable, number or variable)


class _Bound(NamedTuple):  # X_index <= value if upper else X_index >= value
    index: int
    upper: bool
    value: float


class _Row(NamedTuple):  # sum(c * Y_j for j, c in coeffs) <= rhs
    coeffs: tuple[tuple[int, float], ...]
    rhs: float


class _Const(NamedTuple):  # a comparison without variables, already evaluated
    holds: bool


class _Node(NamedTuple):  # an "and" / "or" of formulas, at the position of its '('
    op: str
    children: tuple
    line: int
    col: int


_Atom = _Bound | _Row | _Const
_Formula = _Bound | _Row | _Const | _Node
_Linear = tuple[dict, float]  # ({("X" | "Y", index): coefficient}, constant)


def parse_vnnlib1(path: str | Path) -> Spec:
    """Parse a VNN-LIB 1.0 file (plain or gzip-compressed) into a ``Spec``.

    I/O errors (missing file, no permission) propagate as ``OSError``.
    """
    return parse_vnnlib1_text(read_text(path), str(path))


def read_text(path: str | Path) -> str:
    """The text of a (possibly gzip-compressed) property file; OSError propagates."""
    source = str(path)
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise SpecError(f"corrupt gzip data: {exc}", source) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text (byte offset {exc.start})", source) from exc


def parse_vnnlib1_text(text: str, source: str = "<memory>") -> Spec:
    """Parse VNN-LIB 1.0 text; ``source`` names it in the ``Spec`` and in errors."""
    reader = _Reader(source)
    reader.read(text)
    return _finish(reader)


class _Cursor:
    """Walks the (balanced) tokens of one top-level command."""

    def __init__(self, toks: list[_Tok], path: str):
        self.toks, self.pos, self.path = toks, 0, path

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def take(self) -> _Tok:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def error(self, tok: _Tok, message: str) -> SpecError:
        return SpecError(message, self.path, tok.line, tok.col)

    def close(self, after: str) -> None:
        tok = self.take()
        if tok.kind != ")":
            raise self.error(tok, f"expected ')' after {after}, got {_show(tok)}")


def _show(tok: _Tok) -> str:
    return f"'{tok.text}'"


class _Reader:
    """State of one parse: declarations, top-level bounds and rows, complex formulas."""

    def __init__(self, path: str):
        self.path = path
        self.decls: dict[str, tuple[str, int]] = {}
        self.decl_pos: dict[tuple[str, int], tuple[int, int]] = {}
        self.lower: dict[int, float] = {}
        self.upper: dict[int, float] = {}
        self.rows: list[_Row] = []
        self.formulas: list[_Node] = []
        self.base_false = False
        self.opens: list[_Tok] = []  # unclosed '(' of the command being read
        self.pending: list[_Tok] = []  # tokens of the command being read

    # ---- lines and tokens -------------------------------------------------

    def read(self, text: str) -> None:
        """Consume the whole text, one top-level command at a time.

        Lines that are exactly a declaration or a single-input bound, outside any
        open command, are handled inline; anything else (including every line that
        needs an error message) goes through the tokenizer.
        """
        fast, decls, lower, upper = _FAST_LINE_RE.match, self.decls, self.lower, self.upper
        decl_pos = self.decl_pos
        inf = math.inf
        for lineno, line in enumerate(text.split("\n"), 1):
            m = None if self.opens else fast(line)
            if m is not None:
                op, name, num, declared, kind, index = m.groups()
                if op is None:
                    if declared not in decls:
                        key = decls[declared] = (kind, int(index))
                        decl_pos[key] = (lineno, m.start(4) + 1)
                        continue
                else:
                    key, value = decls.get(name), float(num)
                    if key is not None and -inf < value < inf:
                        i = key[1]
                        if op[0] == "<":
                            if value < upper.get(i, inf):
                                upper[i] = value
                        elif value > lower.get(i, -inf):
                            lower[i] = value
                        continue
            self._feed(line, lineno)
        if self.opens:
            raise _unclosed(self.opens[0], self.path, "")

    def _feed(self, line: str, lineno: int) -> None:
        """Tokenize one line; run each top-level command as soon as it is closed."""
        opens, pending = self.opens, self.pending
        for m in _TOKEN_RE.finditer(line):
            text = m.group()
            if text == ";":
                break
            if m.lastindex:
                tok = _Tok("cmp", text, lineno, m.start() + 1, m.groups())
            else:
                tok = _make_token(text, lineno, m.start() + 1)
            if not opens and tok.kind != "(":
                if tok.kind == "cmp":
                    op = _expand(tok)[1]
                    raise SpecError(f"unknown command '{op.text}'", self.path, op.line, op.col)
                if tok.kind == ")":
                    raise SpecError("unbalanced parentheses: unexpected ')'",
                                    self.path, tok.line, tok.col)
                raise SpecError(f"expected '(' to start a command, got {_show(tok)}",
                                self.path, tok.line, tok.col)
            if tok.text in _COMMANDS and len(opens) > 1 and pending[-1].kind == "(":
                raise _unclosed(opens[0], self.path, f" (found '({tok.text}' inside it)")
            pending.append(tok)
            if tok.kind == "(":
                opens.append(tok)
            elif tok.kind == ")":
                opens.pop()
                if not opens:
                    self._command(_Cursor(pending, self.path))
                    pending.clear()

    # ---- commands ---------------------------------------------------------

    def _command(self, cur: _Cursor) -> None:
        cur.take()  # the opening '(' (guaranteed by read)
        head = cur.take()
        if head.kind != "sym":
            raise cur.error(head, f"expected a command name after '(', got {_show(head)}")
        if head.text == "declare-const":
            name = cur.take()
            if name.kind != "sym":
                raise cur.error(name, f"expected a variable name, got {_show(name)}")
            sort = cur.take()
            if sort.kind != "sym":
                raise cur.error(sort, f"expected a sort, got {_show(sort)}")
            self._declare(name.text, sort.text, name.line, name.col, sort.col)
            cur.close("the declaration")
        elif head.text == "assert":
            self._add_assert(self._formula(cur))
            cur.close("the asserted formula")
        elif head.text not in _IGNORED_COMMANDS:
            raise cur.error(head, f"unknown command '{head.text}'")

    def _declare(self, name: str, sort: str, line: int, col: int, sort_col: int = 0) -> None:
        m = _VAR_RE.match(name)
        if m is None:
            raise SpecError(f"unsupported variable name '{name}' (expected X_<i> or Y_<j>)",
                            self.path, line, col)
        if sort != "Real":
            raise SpecError(f"unsupported sort '{sort}' (only Real)", self.path, line,
                            sort_col or col)
        if name in self.decls:
            first = self.decl_pos[self.decls[name]]
            raise SpecError(f"variable {name} declared twice (first at line {first[0]})",
                            self.path, line, col)
        key = (m.group(1), int(m.group(2)))
        self.decls[name] = key
        self.decl_pos[key] = (line, col)

    def _add_assert(self, formula: _Formula) -> None:
        """Split a top-level conjunction into base bounds, base rows and complex parts."""
        stack = [formula]
        while stack:
            f = stack.pop()
            if isinstance(f, _Bound):
                self._add_bound(f)
            elif isinstance(f, _Row):
                self.rows.append(f)
            elif isinstance(f, _Const):
                self.base_false |= not f.holds
            elif f.op == "and":
                stack.extend(reversed(f.children))
            else:
                self.formulas.append(f)

    def _add_bound(self, b: _Bound) -> None:
        if b.upper:
            self.upper[b.index] = min(self.upper.get(b.index, math.inf), b.value)
        else:
            self.lower[b.index] = max(self.lower.get(b.index, -math.inf), b.value)

    # ---- formulas and terms -----------------------------------------------

    def _formula(self, cur: _Cursor) -> _Formula:
        tok = cur.take()
        if tok.kind == "cmp":
            atom = self._simple(tok)
            return atom if atom is not None else self._formula(_Cursor(_expand(tok), self.path))
        if tok.kind != "(":
            raise cur.error(tok, f"expected a formula such as (<= a b), got {_show(tok)}")
        head = cur.take()
        if head.kind != "sym":
            raise cur.error(head, f"expected an operator after '(', got {_show(head)}")
        op = head.text
        if op in ("and", "or"):
            children = []
            while cur.peek().kind != ")":
                children.append(self._formula(cur))
            cur.take()
            return _Node(op, tuple(children), tok.line, tok.col)
        if op in _COMPARISONS:
            return self._comparison(cur, tok, op)
        if op in _TERM_OPS:
            raise cur.error(head, f"expected a formula (and, or, <=, >=, <, >, =), got '{op}'")
        if op == "not" or op == "=>":
            raise cur.error(head, f"unsupported operator '{op}'")
        raise cur.error(head, f"unknown operator '{op}'")

    def _comparison(self, cur: _Cursor, start: _Tok, op: str) -> _Formula:
        terms = [self._term(cur), self._term(cur)]
        while cur.peek().kind != ")":
            terms.append(self._term(cur))
        cur.take()
        atoms: list[_Formula] = []
        for a, b in itertools.pairwise(terms):
            if op in ("<=", "<", "="):
                atoms.append(self._atom(_sub(a, b), start))
            if op in (">=", ">", "="):
                atoms.append(self._atom(_sub(b, a), start))
        if len(atoms) == 1:
            return atoms[0]
        return _Node("and", tuple(atoms), start.line, start.col)

    def _simple(self, tok: _Tok) -> _Formula | None:
        """Fast build of a "cmp" token; None defers to the general path (and its errors)."""
        op, var, rhs = tok.parts
        key = self.decls.get(var)
        if key is None:
            return None
        if rhs[0] in "XY":
            other = self.decls.get(rhs)
            if other is None:
                return None
            a, b = ({key: 1.0}, 0.0), ({other: 1.0}, 0.0)
            return self._atom(_sub(a, b) if op[0] == "<" else _sub(b, a), tok)
        value = float(rhs)
        if not math.isfinite(value):
            return None
        if key[0] == "X":
            return _Bound(key[1], op[0] == "<", value)
        if op[0] == "<":
            return _Row(((key[1], 1.0),), value)
        return _Row(((key[1], -1.0),), 0.0 - value)

    def _atom(self, lin: _Linear, start: _Tok) -> _Atom:
        """Classify ``lin <= 0`` as an input bound, an output row or a constant."""
        coeffs = {k: v for k, v in lin[0].items() if v != 0.0}
        const = lin[1]
        xs = sorted(k[1] for k in coeffs if k[0] == "X")
        if xs and len(xs) < len(coeffs):
            raise SpecError("unsupported: constraints mixing inputs and outputs",
                            self.path, start.line, start.col)
        if len(xs) > 1:
            names = ", ".join(f"X_{i}" for i in xs)
            raise SpecError(f"unsupported: constraint over several inputs ({names}); "
                            "only single-input bounds are supported",
                            self.path, start.line, start.col)
        if xs:
            a = coeffs[("X", xs[0])]
            return _Bound(xs[0], a > 0, (0.0 - const) / a)
        if coeffs:
            return _Row(tuple(sorted((k[1], v) for k, v in coeffs.items())), 0.0 - const)
        return _Const(const <= 0)

    def _term(self, cur: _Cursor) -> _Linear:
        tok = cur.take()
        if tok.kind == "num":
            return {}, _number(tok, self.path)
        if tok.kind == "sym":
            key = self.decls.get(tok.text)
            if key is None:
                if _VAR_RE.match(tok.text):
                    raise cur.error(tok, f"undeclared variable {tok.text}")
                raise cur.error(tok, f"unknown variable '{tok.text}'")
            return {key: 1.0}, 0.0
        if tok.kind == ")":
            raise cur.error(tok, "expected a number or a variable, got ')'")
        if tok.kind == "cmp":
            return self._term(_Cursor(_expand(tok), self.path))
        head = cur.take()
        if head.kind != "sym":
            raise cur.error(head, f"expected an operator after '(', got {_show(head)}")
        if head.text not in _TERM_OPS:
            raise cur.error(head, f"unknown operator '{head.text}' in a term "
                                  "(expected +, - or *)")
        args = [self._term(cur)]
        while cur.peek().kind != ")":
            args.append(self._term(cur))
        cur.take()
        if head.text == "*":
            return _product(args, head, self.path)
        if head.text == "-" and len(args) == 1:
            return _scale(args[0], -1.0)
        sign = 1.0 if head.text == "+" else -1.0
        out = args[0]
        for a in args[1:]:
            out = _add(out, a, sign)
        return out


def _make_token(text: str, line: int, col: int) -> _Tok:
    if text == "(" or text == ")":
        return _Tok(text, text, line, col)
    if _NUMBER_RE.match(text):
        return _Tok("num", text, line, col)
    return _Tok("sym", text, line, col)


def _expand(tok: _Tok) -> list[_Tok]:
    """The ordinary tokens of a "cmp" token, with their own columns."""
    return [_make_token(m.group(), tok.line, tok.col + m.start())
            for m in _PLAIN_TOKEN_RE.finditer(tok.text)]


def _unclosed(tok: _Tok, path: str, extra: str) -> SpecError:
    return SpecError(f"unbalanced parentheses: '(' opened at line {tok.line}, column {tok.col} "
                     f"never closed{extra}", path, tok.line, tok.col)


def _number(tok: _Tok, path: str) -> float:
    value = float(tok.text)
    if not math.isfinite(value):
        raise SpecError(f"number out of range '{tok.text}'", path, tok.line, tok.col)
    return value


def _add(a: _Linear, b: _Linear, sign: float) -> _Linear:
    coeffs = dict(a[0])
    for k, v in b[0].items():
        coeffs[k] = coeffs.get(k, 0.0) + sign * v
    return coeffs, a[1] + sign * b[1]


def _sub(a: _Linear, b: _Linear) -> _Linear:
    return _add(a, b, -1.0)


def _scale(a: _Linear, factor: float) -> _Linear:
    return {k: factor * v for k, v in a[0].items()}, factor * a[1]


def _product(args: list[_Linear], head: _Tok, path: str) -> _Linear:
    factor, linear = 1.0, None
    for a in args:
        if not a[0]:
            factor *= a[1]
        elif linear is None:
            linear = a
        else:
            raise SpecError("nonlinear term: '*' needs constant factors except for one",
                            path, head.line, head.col)
    if linear is None:
        return {}, factor
    return _scale(linear, factor)


# ---- DNF and assembly -----------------------------------------------------


def _dnf(f: _Formula, path: str, limit: int) -> list[tuple]:
    """Terms (tuples of atoms) of the DNF of ``f``; raise beyond ``limit`` terms."""
    if not isinstance(f, _Node):
        return [(f,)]
    if f.op == "or":
        out: list[tuple] = []
        for child in f.children:
            out.extend(_dnf(child, path, limit))
            if len(out) > limit:
                raise _too_many(f, path, limit)
        return out
    atoms = tuple(c for c in f.children if not isinstance(c, _Node))
    terms = [atoms]
    for child in f.children:
        if isinstance(child, _Node):
            sub = _dnf(child, path, limit)
            if len(terms) * len(sub) > limit:
                raise _too_many(f, path, limit)
            terms = [t + s for t in terms for s in sub]
    return terms


def _too_many(f: _Node, path: str, limit: int) -> SpecError:
    return SpecError(f"formula too large: its disjunctive normal form exceeds {limit} terms",
                     path, f.line, f.col)


def _check_indices(reader: _Reader, kind: str) -> int:
    """Number of ``kind`` variables; they must be numbered ``0..n-1``."""
    indices = sorted(i for k, i in reader.decl_pos if k == kind)
    n = len(indices)
    for expected, got in enumerate(indices):
        if got != expected:
            line, col = reader.decl_pos[(kind, got)]
            raise SpecError(f"{kind} variables must be numbered {kind}_0..{kind}_{n - 1}: "
                            f"{kind}_{got} declared but {kind}_{expected} is missing",
                            reader.path, line, col)
    return n


def _finish(reader: _Reader, limit: int = MAX_DNF_TERMS) -> Spec:
    n_in = _check_indices(reader, "X")
    n_out = _check_indices(reader, "Y")
    if reader.base_false:
        return Spec((), n_in, n_out, reader.path)
    parts = []
    total = 1
    for f in reader.formulas:
        terms = _dnf(f, reader.path, limit)
        total *= len(terms)
        if total > limit:
            raise _too_many(f, reader.path, limit)
        parts.append(terms)
    missing_lo = [i for i in range(n_in) if i not in reader.lower]
    missing_hi = [i for i in range(n_in) if i not in reader.upper]
    groups: dict[tuple, list[Disjunct]] = {}
    for combo in itertools.product(*parts):
        term = _term_box(reader, itertools.chain.from_iterable(combo), missing_lo, missing_hi)
        if term is not None:
            key, rows = term
            groups.setdefault(key, []).append(_disjunct(reader.rows + rows, n_out))
    base_lo = _dense(reader.lower, n_in, -math.inf)
    base_hi = _dense(reader.upper, n_in, math.inf)
    if np.any(base_lo > base_hi):
        return Spec((), n_in, n_out, reader.path)
    cases = []
    for (lo_over, hi_over), disjuncts in groups.items():
        lower, upper = base_lo.copy(), base_hi.copy()
        for i, v in lo_over:
            lower[i] = v
        for i, v in hi_over:
            upper[i] = v
        cases.append(SpecCase(lower, upper, tuple(disjuncts)))
    return Spec(tuple(cases), n_in, n_out, reader.path)


def _term_box(reader: _Reader, atoms, missing_lo: list[int], missing_hi: list[int]):
    """``((lower overrides, upper overrides), rows)`` of one DNF term, or None if empty."""
    lo: dict[int, float] = {}
    hi: dict[int, float] = {}
    rows: list[_Row] = []
    for a in atoms:
        if isinstance(a, _Bound):
            side = hi if a.upper else lo
            old = side.get(a.index)
            if old is None or (a.value < old if a.upper else a.value > old):
                side[a.index] = a.value
        elif isinstance(a, _Row):
            rows.append(a)
        elif not a.holds:
            return None
    for missing, side, what in ((missing_lo, lo, "lower"), (missing_hi, hi, "upper")):
        for i in missing:
            if i not in side:
                line, col = reader.decl_pos[("X", i)]
                raise SpecError(f"input X_{i} has no {what} bound (every input needs finite "
                                "lower and upper bounds in each case)", reader.path, line, col)
    lo_over = {i: v for i, v in lo.items() if v > reader.lower.get(i, -math.inf)}
    hi_over = {i: v for i, v in hi.items() if v < reader.upper.get(i, math.inf)}
    for i in lo_over.keys() | hi_over.keys():
        low = lo_over.get(i, reader.lower.get(i, -math.inf))
        if low > hi_over.get(i, reader.upper.get(i, math.inf)):
            return None
    return (tuple(sorted(lo_over.items())), tuple(sorted(hi_over.items()))), rows


def _dense(values: dict[int, float], n: int, fill: float) -> np.ndarray:
    out = np.full(n, fill, dtype=np.float64)
    if values:
        idx = np.fromiter(values.keys(), dtype=np.int64, count=len(values))
        out[idx] = np.fromiter(values.values(), dtype=np.float64, count=len(values))
    return out


def _disjunct(rows: list[_Row], n_out: int) -> Disjunct:
    C = np.zeros((len(rows), n_out), dtype=np.float64)
    d = np.empty(len(rows), dtype=np.float64)
    for r, row in enumerate(rows):
        for j, c in row.coeffs:
            C[r, j] = c
        d[r] = row.rhs
    return Disjunct(C, d)

