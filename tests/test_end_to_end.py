"""End to end through the Python API on real instances with known answers.

Third-party benchmarks from ``../shared/benchmarks`` (skipped when that folder
is absent) and the shipped examples in ``vnnlib_specs/examples``.  A ``sat``
answer must come with an input inside the property's box at which onnxruntime,
run here independently of genbab, puts the output inside the unsafe set; an
instance with a known counterexample must never be answered ``unsat``, and a
shipped instance recorded ``unsat`` never ``sat``.

The default run takes a few quick instances of each kind; ``-m slow`` runs
every instance of each selection.
"""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from genbab.config import Config
from genbab.spec.types import Spec
from genbab.spec.vnnlib1 import parse_vnnlib1
from genbab.verify import Result, verify

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
EXAMPLES = ROOT / "vnnlib_specs" / "examples"
TIMEOUT = 20.0  # seconds per instance; every default-run instance needs far less

needs_benchmarks = pytest.mark.skipif(not BENCHMARKS.is_dir(),
                                      reason=f"no benchmark collection at {BENCHMARKS}")


def ground_truth(bench: str, consensus: str) -> list[tuple[str, str]]:
    """(onnx, vnnlib) of the rows of ``bench/ground_truth.csv`` with this consensus."""
    path = BENCHMARKS / bench / "ground_truth.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(r["onnx"], r["vnnlib"]) for r in csv.DictReader(f) if r["consensus"] == consensus]


def instance_id(pair: tuple[str, str]) -> str:
    return f"{Path(pair[0]).stem}:{Path(pair[1]).stem}"


def run(folder: Path, onnx_path: str, vnnlib_path: str, config: Config | None = None,
        ) -> tuple[Result, Spec]:
    spec = parse_vnnlib1(folder / vnnlib_path)
    result = verify(folder / onnx_path, spec, config or Config(timeout=TIMEOUT))
    return result, spec


def ort_output(model: Path, x: np.ndarray) -> np.ndarray:
    """Flat float64 output of onnxruntime on the flat input ``x`` (fed as float32)."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    out = sess.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def assert_confirmed_counterexample(result: Result, spec: Spec, model: Path) -> None:
    """``x`` lies in some case's box and onnxruntime's output there is in its unsafe set."""
    assert result.x is not None and result.y is not None
    x = np.asarray(result.x, dtype=np.float64).reshape(-1)
    np.testing.assert_array_equal(x.astype(np.float32).astype(np.float64), x)  # fed exactly
    y = ort_output(model, x)
    np.testing.assert_allclose(result.y, y, rtol=1e-6, atol=1e-6)
    holds = [case for case in spec.cases
             if np.all(case.lower <= x) and np.all(x <= case.upper)
             and any(np.all(np.asarray(dj.C, np.float64).reshape(-1, y.size) @ y
                            <= np.asarray(dj.d, np.float64)) for dj in case.disjuncts)]
    assert holds, "onnxruntime does not confirm the counterexample inside any input box"


def check_sat(bench: str, pair: tuple[str, str], timeout: float = TIMEOUT) -> None:
    folder = BENCHMARKS / bench
    result, spec = run(folder, *pair, Config(timeout=timeout))
    assert result.verdict != "unsat", "unsat on an instance with a checked counterexample"
    assert result.verdict == "sat", (result.verdict, result.method, result.margins)
    assert_confirmed_counterexample(result, spec, folder / pair[0])


def _slow_rest(pairs: list, quick: list) -> list:
    """The pairs not in ``quick``, each marked slow."""
    return [pytest.param(p, marks=pytest.mark.slow, id=instance_id(p)) for p in pairs
            if p not in quick]


def _quick(pairs: list, quick: list) -> list:
    return [pytest.param(p, id=instance_id(p)) for p in pairs if p in quick]


# --- ACAS Xu (ReLU): the consensus-sat instances -------------------------------------------

ACAS_SAT = ground_truth("acasxu_2023", "sat")
ACAS_QUICK = [(f"onnx/ACASXU_run2a_{net}_batch_2000.onnx", "vnnlib/prop_2.vnnlib")
              for net in ("2_2", "2_7", "3_8")]  # the attack finds these in well under 1 s
# Not found within a minute by the attack, root bounds and BaB (as of this test's writing); a
# stronger attack (200k samples, 200 restarts) finds the first and the last in a few seconds.
ACAS_HARD = {("onnx/ACASXU_run2a_1_6_batch_2000.onnx", "vnnlib/prop_2.vnnlib"),
             ("onnx/ACASXU_run2a_1_9_batch_2000.onnx", "vnnlib/prop_7.vnnlib"),
             ("onnx/ACASXU_run2a_2_9_batch_2000.onnx", "vnnlib/prop_8.vnnlib")}


def _acas_params() -> list:
    params = _quick(ACAS_SAT, ACAS_QUICK)
    for p in _slow_rest(ACAS_SAT, ACAS_QUICK):
        if p.values[0] in ACAS_HARD:
            p = pytest.param(*p.values, id=p.id, marks=[
                pytest.mark.slow, pytest.mark.xfail(strict=False, reason=(
                    "LIMITATION: a counterexample exists but the attack does not find it"))])
        params.append(p)
    return params


@needs_benchmarks
@pytest.mark.parametrize("pair", _acas_params())
def test_acasxu_consensus_sat_found(pair):
    check_sat("acasxu_2023", pair, timeout=TIMEOUT if pair in ACAS_QUICK else 60.0)


# --- ERAN sigmoid 6x200 (the GenBaB paper's model) -----------------------------------------

ERAN = "eran_sigmoid_2021"
ERAN_MODEL = "onnx/ffnnSIGMOID__Point_6x200.onnx"


@needs_benchmarks
def test_eran_sigmoid_consensus_sat_found():
    pair = (ERAN_MODEL, "vnnlib/mnist_spec_idx_7259_eps_0.01200.vnnlib")
    assert pair in ground_truth(ERAN, "sat")
    check_sat(ERAN, pair)


@needs_benchmarks
def test_eran_sigmoid_unsat_proved_by_ibp():
    pair = (ERAN_MODEL, "vnnlib/mnist_spec_idx_56_eps_0.01200.vnnlib")
    assert pair in ground_truth(ERAN, "unsat")
    result, _ = run(BENCHMARKS / ERAN, *pair)
    assert result.verdict == "unsat"
    assert result.method == "ibp"
    assert result.x is None and all(min(m) > 0 for m in result.margins)


# --- VNN-COMP 2020 sigmoid / tanh MNIST (softmax output, raw pixels) ------------------------

NLN = "vnncomp2020_nln_mnist_sigmoid_tanh"
NLN_SAT = ground_truth(NLN, "sat")
NLN_QUICK = [
    ("onnx/logsig_200_50.onnx", "vnnlib/logsig_200_50_img9_eps5.vnnlib"),  # 2020 'safe' claim
    ("onnx/logsig_200_100_50.onnx", "vnnlib/logsig_200_100_50_img3_eps12.vnnlib"),
    ("onnx/tansig_200_50.onnx", "vnnlib/tansig_200_50_img16_eps5.vnnlib"),
    ("onnx/tansig_200_100_50.onnx", "vnnlib/tansig_200_100_50_img9_eps5.vnnlib"),
]


@needs_benchmarks
@pytest.mark.parametrize("pair", _quick(NLN_SAT, NLN_QUICK) + _slow_rest(NLN_SAT, NLN_QUICK))
def test_nln_sigmoid_tanh_consensus_sat_found(pair):
    check_sat(NLN, pair, timeout=TIMEOUT if pair in NLN_QUICK else 60.0)


# --- never a counterexample where trusted tools proved the property ------------------------

def _unsat_params() -> list:
    benches = ("acasxu_2023", ERAN, NLN)
    return [pytest.param(bench, pair, marks=pytest.mark.slow, id=f"{bench}:{instance_id(pair)}")
            for bench in benches for pair in ground_truth(bench, "unsat")]


@needs_benchmarks
@pytest.mark.parametrize("bench,pair", _unsat_params())
def test_consensus_unsat_never_sat(bench, pair):
    base = Config(timeout=8.0)  # the attack is the point: cheap bounds, no branch and bound
    config = base.replace(bounds=replace(base.bounds, method="ibp"),
                          bab=replace(base.bab, enabled=False))
    result, _ = run(BENCHMARKS / bench, *pair, config)
    assert result.verdict != "sat", (result.x, result.y)


# --- the shipped examples ------------------------------------------------------------------

def _examples() -> list:
    with open(EXAMPLES / "expected.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [pytest.param(r["onnx"], r["vnnlib"], r["expected"], id=Path(r["vnnlib"]).stem,
                         marks=() if r["expected"] in ("sat", "unsat") else pytest.mark.slow)
            for r in rows]


@pytest.mark.parametrize("onnx_path,vnnlib_path,expected", _examples())
def test_shipped_example_agrees_with_expected(onnx_path, vnnlib_path, expected):
    result, spec = run(EXAMPLES, onnx_path, vnnlib_path)
    if expected == "sat":
        assert result.verdict == "sat", (result.verdict, result.margins)
        assert_confirmed_counterexample(result, spec, EXAMPLES / onnx_path)
    elif expected == "unsat":
        assert result.verdict == "unsat", (result.verdict, result.margins)
    else:
        assert result.verdict in ("sat", "unsat", "unknown", "timeout")
        if result.verdict == "sat":
            assert_confirmed_counterexample(result, spec, EXAMPLES / onnx_path)


# --- ml4acopf_2023 (ACOPF graph): float32 rounding alone blocks the proof ------------------

@needs_benchmarks
def test_ml4acopf_prop1_needs_the_float64_retry():
    """14_ieee prop1 (consensus unsat): in float32 CROWN's worst disjunct margin is about
    -2e-4, in float64 +5.7e-5.  The default config switches to float64 and proves it;
    with the retry off it is not proved within a short budget."""
    bench = BENCHMARKS / "ml4acopf_2023"
    pair = ("onnx/14_ieee_ml4acopf.onnx", "vnnlib/14_ieee_prop1.vnnlib")
    assert pair in ground_truth("ml4acopf_2023", "unsat")
    result, _ = run(bench, *pair)
    assert (result.verdict, result.method) == ("unsat", "crown")
    assert result.stats["float64_from"] == "crown"
    off = Config(timeout=TIMEOUT).replace(
        bounds=dataclasses.replace(Config().bounds, float64_retry=0.0, method="crown"),
        bab=dataclasses.replace(Config().bab, enabled=False))
    result, _ = run(bench, *pair, config=off)
    assert result.verdict != "unsat" and "float64_from" not in result.stats
