"""Tests for the VNN-LIB 1.0 parser (genbab.spec.vnnlib1): semantics, errors, speed, benchmarks."""
from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from genbab.spec.types import Spec, SpecError
from genbab.spec.vnnlib1 import MAX_DNF_TERMS, parse_vnnlib1, parse_vnnlib1_text

BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
needs_benchmarks = pytest.mark.skipif(not BENCHMARKS.is_dir(),
                                      reason="../shared/benchmarks not present")


def _decls(n_in: int, n_out: int) -> str:
    return "".join([f"(declare-const X_{i} Real)\n" for i in range(n_in)]
                   + [f"(declare-const Y_{j} Real)\n" for j in range(n_out)])


def _box(n_in: int, lo: float = 0.0, hi: float = 1.0) -> str:
    return "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n" for i in range(n_in))


def _rows(spec: Spec, case: int = 0) -> list[tuple[list, list]]:
    return [(dj.C.tolist(), dj.d.tolist()) for dj in spec.cases[case].disjuncts]


def _assert_case(case, lower, upper):
    np.testing.assert_allclose(case.lower, lower)
    np.testing.assert_allclose(case.upper, upper)


# ---- valid properties --------------------------------------------------------


def test_small_property_exact_matrices():
    text = _decls(2, 3) + """
; a comment line
(assert (>= X_0 0)) (assert (<= X_0 1))   ; two commands on one line
(assert (<= X_1 1))
(assert (>= X_1 -1))
(assert (or
    (and (>= Y_0 Y_1) (<= Y_2 0.5))
    (and (<= (+ Y_0 (* 2 Y_1)) (- 1)))   ; Y_0 + 2 Y_1 <= -1
))
(check-sat)
"""
    spec = parse_vnnlib1_text(text, source="small.vnnlib")
    assert (spec.n_inputs, spec.n_outputs, spec.source) == (2, 3, "small.vnnlib")
    assert len(spec.cases) == 1
    case = spec.cases[0]
    _assert_case(case, [0, -1], [1, 1])
    assert case.lower.dtype == np.float64
    (c1, d1), (c2, d2) = _rows(spec)
    np.testing.assert_allclose(c1, [[-1, 1, 0], [0, 0, 1]])  # Y_1 - Y_0 <= 0 ; Y_2 <= 0.5
    np.testing.assert_allclose(d1, [0, 0.5])
    np.testing.assert_allclose(c2, [[1, 2, 0]])
    np.testing.assert_allclose(d2, [-1])


def test_scientific_notation_and_number_forms():
    text = _decls(6, 1) + """
(assert (>= X_0 1e-3)) (assert (<= X_0 1.5E+2))
(assert (>= X_1 .5)) (assert (<= X_1 2.))
(assert (>= X_2 -3.)) (assert (<= X_2 +4))
(assert (>= X_3 -0.5)) (assert (<= X_3 -2.5e-1))
(assert (and (>= X_4 -1E1) (<= X_4 1e+1)))
(assert (and (>= X_5 0) (<= X_5 0)))
(assert (<= Y_0 -1.25e-2))
"""
    spec = parse_vnnlib1_text(text)
    _assert_case(spec.cases[0], [1e-3, 0.5, -3.0, -0.5, -10, 0], [150.0, 2.0, 4.0, -0.25, 10, 0])
    assert _rows(spec) == [([[1.0]], [-0.0125])]


def test_strict_inequalities_are_non_strict():
    strict = _decls(1, 2) + "(assert (> X_0 0))\n(assert (< X_0 1))\n(assert (> Y_0 Y_1))\n"
    loose = _decls(1, 2) + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= Y_0 Y_1))\n"
    a, b = parse_vnnlib1_text(strict), parse_vnnlib1_text(loose)
    _assert_case(a.cases[0], [0], [1])
    assert _rows(a) == _rows(b) == [([[-1.0, 1.0]], [0.0])]


def test_constant_expressions_scaling_and_reversed_bounds():
    text = _decls(4, 2) + """
(assert (<= X_0 (* 2 0.25)))          ; X_0 <= 0.5
(assert (<= (- 1 2) X_0))             ; -1 <= X_0
(assert (>= (- X_1) -1))              ; X_1 <= 1
(assert (>= 3 (* -1 (- X_1))))        ; X_1 <= 3 (looser)
(assert (<= 0 X_1))
(assert (<= (* X_2 4) 1))             ; X_2 <= 0.25
(assert (>= (* X_2 4) (- 1)))         ; X_2 >= -0.25
(assert (<= 0 X_3 (+ 1 1)))           ; chain: 0 <= X_3 <= 2
(assert (<= (- Y_0 Y_1 1) (* 0.5 Y_0)))   ; 0.5 Y_0 - Y_1 <= 1
"""
    spec = parse_vnnlib1_text(text)
    _assert_case(spec.cases[0], [-1, 0, -0.25, 0], [0.5, 1, 0.25, 2])
    (c, d), = _rows(spec)
    np.testing.assert_allclose(c, [[0.5, -1]])
    np.testing.assert_allclose(d, [1])


def test_equality_atoms():
    text = _decls(1, 2) + "(assert (= X_0 0.5))\n(assert (= Y_0 (+ Y_1 1)))\n"
    spec = parse_vnnlib1_text(text)
    _assert_case(spec.cases[0], [0.5], [0.5])
    (c, d), = _rows(spec)
    np.testing.assert_allclose(c, [[1, -1], [-1, 1]])
    np.testing.assert_allclose(d, [1, -1])


def test_top_level_conjunction_of_outputs_is_one_disjunct():
    text = _decls(1, 5) + _box(1) + "".join(f"(assert (<= Y_0 Y_{j}))\n" for j in range(1, 5))
    spec = parse_vnnlib1_text(text)
    assert len(spec.cases) == 1 and len(spec.cases[0].disjuncts) == 1
    (c, d), = _rows(spec)
    expected = np.zeros((4, 5))
    expected[:, 0] = 1
    expected[np.arange(4), np.arange(1, 5)] = -1
    np.testing.assert_allclose(c, expected)
    np.testing.assert_allclose(d, np.zeros(4))


def test_or_of_input_boxes_gives_several_cases():
    text = _decls(2, 2) + """
(assert (or
    (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))
    (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1))
))
(assert (or (and (<= Y_0 Y_1)) (and (<= Y_1 -2))))
"""
    spec = parse_vnnlib1_text(text)
    assert len(spec.cases) == 2
    _assert_case(spec.cases[0], [0, 0], [1, 1])
    _assert_case(spec.cases[1], [2, 0], [3, 1])
    for k in range(2):
        assert _rows(spec, k) == [([[1.0, -1.0]], [0.0]), ([[0.0, 1.0]], [-2.0])]


def test_terms_with_the_same_box_are_grouped_and_base_bounds_apply():
    # nn4sys style: every term repeats the box and adds its own output atom
    text = _decls(2, 1) + """
(assert (<= X_1 5))
(assert (>= X_1 -5))
(assert (or
  (and (>= X_0 0) (<= X_0 1) (<= Y_0 0.25))
  (and (>= X_0 2) (<= X_0 4) (<= Y_0 0.5))
  (and (>= X_0 0) (<= X_0 1) (>= Y_0 0.75))
  (and (>= X_0 0) (<= X_0 1) (<= X_1 7) (>= Y_0 1))
))
"""
    spec = parse_vnnlib1_text(text)
    assert len(spec.cases) == 2
    _assert_case(spec.cases[0], [0, -5], [1, 5])
    assert _rows(spec, 0) == [([[1.0]], [0.25]), ([[-1.0]], [-0.75]), ([[-1.0]], [-1.0])]
    _assert_case(spec.cases[1], [2, -5], [4, 5])
    assert _rows(spec, 1) == [([[1.0]], [0.5])]


def test_term_without_output_atoms_makes_whole_box_unsafe():
    text = _decls(1, 3) + "(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 5) (<= X_0 6))))\n"
    spec = parse_vnnlib1_text(text)
    assert len(spec.cases) == 2
    for case in spec.cases:
        (dj,) = case.disjuncts
        assert dj.C.shape == (0, 3) and dj.d.shape == (0,)


def test_empty_boxes_are_dropped():
    text = _decls(1, 1) + """
(assert (or (and (>= X_0 2) (<= X_0 1)) (and (>= X_0 0) (<= X_0 1))))
(assert (<= Y_0 0))
"""
    spec = parse_vnnlib1_text(text)
    assert len(spec.cases) == 1
    _assert_case(spec.cases[0], [0], [1])
    empty = parse_vnnlib1_text(_decls(1, 1) + "(assert (>= X_0 1))\n(assert (<= X_0 0))\n"
                               "(assert (<= Y_0 0))\n")
    assert empty.cases == () and (empty.n_inputs, empty.n_outputs) == (1, 1)


def test_constant_atoms():
    text = _decls(1, 1) + _box(1) + "(assert (or (and (<= 2 1) (<= Y_0 0)) (and (<= 1 2) (>= Y_0 3))))\n"
    spec = parse_vnnlib1_text(text)
    assert _rows(spec) == [([[-1.0]], [-3.0])]
    never = parse_vnnlib1_text(_decls(1, 1) + _box(1) + "(assert (< 1 0))\n")
    assert never.cases == ()


def test_multiline_formulas_comments_and_crlf():
    text = _decls(1, 2).replace("\n", "\r\n") + """(assert ; comment inside
  (>=
     X_0   ; more
     -1))
(assert (<= X_0 1)) ; trailing
(assert (or (and (>= Y_0 Y_1)) ; one
            (and (<= Y_0 -7))))
"""
    spec = parse_vnnlib1_text(text)
    _assert_case(spec.cases[0], [-1], [1])
    assert _rows(spec) == [([[-1.0, 1.0]], [0.0]), ([[1.0, 0.0]], [-7.0])]


def test_fast_and_general_paths_agree():
    bounds = [(i, -0.1 * i, 0.3 + i) for i in range(5)]
    fast = _decls(5, 2) + "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n"
                                  for i, lo, hi in bounds)
    general = _decls(5, 2) + "(assert (and " + " ".join(
        f"(<= (* -1 X_{i}) (- {lo})) (>= (+ {hi} 0) X_{i})" for i, lo, hi in bounds) + "))\n"
    tail = "(assert (>= Y_1 0.5))\n"
    a, b = parse_vnnlib1_text(fast + tail), parse_vnnlib1_text(general + tail)
    np.testing.assert_array_equal(a.cases[0].lower, b.cases[0].lower)
    np.testing.assert_array_equal(a.cases[0].upper, b.cases[0].upper)
    assert _rows(a) == _rows(b) == [([[0.0, -1.0]], [-0.5])]


def test_gzip_and_plain_files(tmp_path):
    text = _decls(1, 1) + _box(1) + "(assert (<= Y_0 0))\n"
    plain = tmp_path / "p.vnnlib"
    plain.write_text(text)
    packed = tmp_path / "p.vnnlib.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    a, b = parse_vnnlib1(plain), parse_vnnlib1(str(packed))
    assert a.source == str(plain) and b.source == str(packed)
    assert _rows(a) == _rows(b) == [([[1.0]], [0.0])]
    _assert_case(b.cases[0], [0], [1])


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)\n")
    with pytest.raises(SpecError) as info:
        parse_vnnlib1(bad)
    assert info.value.path == str(bad) and str(info.value).startswith(f"{bad}:2:1: ")


# ---- errors ------------------------------------------------------------------

HEADER = _decls(2, 2)  # four lines; the body starts on line 5

ERRORS = [
    ("(assert (<= X_0 1) (<= X_0 2))", "expected ')'", 5, 20),
    ("(declare-const X_2 Real extra)", "expected ')'", 5, 25),
    ("(assert (<= Z_3 1))", "unknown variable 'Z_3'", 5, 13),
    ("(assert (<= X_9 1))", "undeclared variable X_9", 5, 13),
    ("(assert (or\n  (and (>= Y_0 0) (<= Y_7 1))))", "undeclared variable Y_7", 6, 23),
    ("(assert (<= Y_0))", "expected a number or a variable", 5, 16),
    ("(assert (<= X_0 1)", "unbalanced parentheses: '(' opened at line 5, column 1 never closed",
     5, 1),
    ("\n(assert (or (<= Y_0 1)\n(assert (<= X_0 1))", "'(' opened at line 6, column 1", 6, 1),
    ("(assert (<= X_0 1)))", "unbalanced parentheses: unexpected ')'", 5, 20),
    ("(assert (foo X_0 1))", "unknown operator 'foo'", 5, 10),
    ("(assert (<= (foo X_0) 1))", "unknown operator 'foo'", 5, 14),
    ("(assert (not (<= Y_0 1)))", "unsupported operator 'not'", 5, 10),
    ("  (foo)", "unknown command 'foo'", 5, 4),
    ("(<= X_0 1)", "unknown command '<='", 5, 2),
    ("X_0", "expected '('", 5, 1),
    ("(assert ())", "expected an operator", 5, 10),
    ("(assert X_0)", "expected a formula", 5, 9),
    ("(assert (<= (* X_0 X_1) 1))", "nonlinear term", 5, 14),
    ("(assert (>= (* Y_0 2 Y_1) 1))", "nonlinear term", 5, 14),
    ("(assert (<= X_0 Y_0))", "unsupported: constraints mixing inputs and outputs", 5, 9),
    ("(assert (or (<= (+ X_0 Y_1) 1)))", "mixing inputs and outputs", 5, 13),
    ("(assert (<= (+ X_0 X_1) 1))", "unsupported: constraint over several inputs (X_0, X_1)",
     5, 9),
    ("(declare-const Z_3 Real)", "unsupported variable name 'Z_3'", 5, 16),
    ("(declare-const X_2 Int)", "unsupported sort 'Int'", 5, 20),
    ("(declare-const X_1 Real)", "variable X_1 declared twice (first at line 2)", 5, 16),
    ("(declare-const X_3 Real)", "X_3 declared but X_2 is missing", 5, 16),
    ("(assert (<= X_0 1e999))", "number out of range '1e999'", 5, 17),
    ("(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= X_1 1))",
     "input X_1 has no lower bound", 2, 16),
]


@pytest.mark.parametrize("body, message, line, column", ERRORS,
                         ids=[e[1][:40] for e in ERRORS])
def test_error_messages_carry_line_and_column(body, message, line, column):
    with pytest.raises(SpecError) as info:
        parse_vnnlib1_text(HEADER + body + "\n", source="t.vnnlib")
    err = info.value
    assert message in err.reason
    assert (err.path, err.line, err.column) == ("t.vnnlib", line, column)
    assert str(err).startswith(f"t.vnnlib:{line}:{column}: ")


def test_missing_upper_bound_inside_a_disjunct():
    text = _decls(1, 1) + "(assert (>= X_0 0))\n(assert (or (<= X_0 1) (<= Y_0 0)))\n"
    with pytest.raises(SpecError, match="input X_0 has no upper bound") as info:
        parse_vnnlib1_text(text)
    assert (info.value.line, info.value.column) == (1, 16)


def test_dnf_blow_up_is_refused():
    ors = "(assert (or " + " ".join(f"(<= Y_0 {k})" for k in range(10)) + "))\n"
    ok = parse_vnnlib1_text(_decls(1, 1) + _box(1) + ors * 5)  # exactly 10**5 terms is allowed
    assert sum(len(c.disjuncts) for c in ok.cases) == MAX_DNF_TERMS
    with pytest.raises(SpecError, match="disjunctive normal form exceeds 100000") as info:
        parse_vnnlib1_text(_decls(1, 1) + _box(1) + ors * 6)
    assert (info.value.line, info.value.column) == (2 + 2 + 6, 9)  # the sixth `or`
    nested = "(assert (or (and " + " ".join(ors[8:-2] for _ in range(6)) + ")))\n"
    with pytest.raises(SpecError, match="exceeds") as info:
        parse_vnnlib1_text(_decls(1, 1) + _box(1) + nested)
    assert (info.value.line, info.value.column) == (5, 13)  # the `and` of six `or`s


# ---- performance ---------------------------------------------------------------


def test_100k_line_spec_parses_fast():
    n_in = 33_000
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i in range(n_in):
        lines.append(f"(assert (<= X_{i} {0.5 + i * 1e-6:.8f}))")
        lines.append(f"(assert (>= X_{i} -{0.5 + i * 1e-6:.8f}))")
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_0) (<= Y_{j} 3.5))" for j in range(1, 10)]
    lines += ["    (and (<= Y_0 -1e-3))", "))"]
    text = "\n".join(lines)
    assert len(lines) >= 99_000
    start = time.perf_counter()
    spec = parse_vnnlib1_text(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"parsing took {elapsed:.2f} s"
    assert spec.n_inputs == n_in and spec.n_outputs == 10
    (case,) = spec.cases
    assert len(case.disjuncts) == 10
    assert case.upper[-1] == pytest.approx(0.5 + (n_in - 1) * 1e-6)
    assert case.lower[0] == -0.5


# ---- real benchmark files --------------------------------------------------------


@needs_benchmarks
def test_eran_sigmoid_property():
    path = BENCHMARKS / "eran_sigmoid_2021" / "vnnlib" / "mnist_spec_idx_2683_eps_0.01200.vnnlib"
    spec = parse_vnnlib1(path)
    assert (spec.n_inputs, spec.n_outputs, len(spec.cases)) == (784, 10, 1)
    case = spec.cases[0]
    assert np.all(case.lower <= case.upper) and case.upper[0] == pytest.approx(0.012)
    assert len(case.disjuncts) == 9
    others = [j for j in range(10) if j != 4]
    for j, dj in zip(others, case.disjuncts):  # (>= Y_j Y_4): Y_4 - Y_j <= 0
        expected = np.zeros((1, 10))
        expected[0, j], expected[0, 4] = -1, 1
        np.testing.assert_allclose(dj.C, expected)
        np.testing.assert_allclose(dj.d, [0])


@needs_benchmarks
def test_acasxu_properties():
    spec = parse_vnnlib1(BENCHMARKS / "acasxu_2023" / "vnnlib" / "prop_1.vnnlib")
    _assert_case(spec.cases[0], [0.6, -0.5, -0.5, 0.45, -0.5], [0.679857769, 0.5, 0.5, 0.5, -0.45])
    (c, d), = _rows(spec)
    np.testing.assert_allclose(c, [[-1, 0, 0, 0, 0]])
    np.testing.assert_allclose(d, [-3.991125645861615])
    spec = parse_vnnlib1(BENCHMARKS / "acasxu_2023" / "vnnlib" / "prop_3.vnnlib")
    (dj,) = spec.cases[0].disjuncts
    assert dj.C.shape == (4, 5)
    np.testing.assert_allclose(dj.C[:, 0], 1)
    spec = parse_vnnlib1(BENCHMARKS / "acasxu_2023" / "vnnlib" / "prop_6.vnnlib")
    assert len(spec.cases) == 2
    assert spec.cases[0].lower[1] == pytest.approx(0.11140846)
    assert spec.cases[1].upper[1] == pytest.approx(-0.11140846)
    assert all(len(c.disjuncts) == 4 for c in spec.cases)


@needs_benchmarks
def test_nn4sys_and_vit_properties():
    spec = parse_vnnlib1(BENCHMARKS / "nn4sys_mscn_2023" / "vnnlib" / "cardinality_0_1_128.vnnlib")
    assert spec.n_outputs == 1 and len(spec.cases) == 1
    assert _rows(spec) == [([[1.0]], [0.6687163235603367]), ([[-1.0]], [-0.6958876654979709])]
    spec = parse_vnnlib1(BENCHMARKS / "vit_2023" / "vnnlib" / "ibp_3_3_8_1140.vnnlib")
    assert (spec.n_inputs, spec.n_outputs, len(spec.cases)) == (3072, 10, 1)
    assert len(spec.cases[0].disjuncts) == 9


def _check_spec(spec: Spec) -> None:
    assert spec.n_inputs > 0 and spec.n_outputs > 0 and spec.cases
    for case in spec.cases:
        assert case.lower.shape == case.upper.shape == (spec.n_inputs,)
        assert np.all(np.isfinite(case.lower)) and np.all(case.lower <= case.upper)
        assert case.disjuncts
        for dj in case.disjuncts:
            assert dj.C.ndim == 2 and dj.C.shape[1] == spec.n_outputs
            assert dj.d.shape == (dj.C.shape[0],)


@needs_benchmarks
def test_every_benchmark_property_parses():
    files = sorted(BENCHMARKS.glob("*/vnnlib/*.vnnlib")) + sorted(
        BENCHMARKS.glob("*/vnnlib/*.vnnlib.gz"))
    assert files
    failures = []
    for path in files:
        try:
            _check_spec(parse_vnnlib1(path))
        except (SpecError, AssertionError) as exc:
            failures.append(f"{path}: {exc!r}")
    assert not failures, "\n".join(failures[:20])
