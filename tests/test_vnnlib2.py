"""VNN-LIB 2.0: the query front end (genbab.spec.vnnlib2) and the standard's command line.

The front-end tests run in process.  The command-line tests run
``python -m genbab.vnnlib2_cli`` as a user (or a harness) would; every such
command is registered with ``@command`` and started up front, three at a
time, because those that verify pay for importing torch.
"""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from genbab.spec.compose import load_spec_for_model
from genbab.spec.types import SpecError
from genbab.spec.vnnlib1 import parse_vnnlib1
from genbab.spec.vnnlib2 import detect_version, holds, parse_query_text, read_text, to_spec
from genbab.vnnlib2_cli import dispatch, is_vnnlib2_verify, read_assignment

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "vnnlib_specs" / "examples"
QUERIES = ROOT / "vnnlib_specs" / "vnnlib2"
TINY = EXAMPLES / "onnx" / "digits_sigmoid_tiny.onnx"
TANH = EXAMPLES / "onnx" / "digits_tanh_2x32.onnx"
UNSAT_Q = QUERIES / "digits_sigmoid_tiny_idx2_eps0.01.vnnlib"  # IBP proves it
SAT_Q = QUERIES / "digits_sigmoid_tiny_idx0_eps0.08.vnnlib"  # PGD finds a counterexample
ALPHA_Q = QUERIES / "digits_tanh_2x32_idx1_eps0.05.vnnlib"  # needs alpha-CROWN
SAT_V1 = EXAMPLES / "vnnlib" / "digits_sigmoid_tiny_idx0_eps0.08.vnnlib"
TINY_NET = f"digits_sigmoid_tiny={TINY}"
VERDICTS = ("sat", "unsat", "unknown", "timed-out")
PARALLEL = 3
RUN_TIMEOUT = 180

HEADER = "(vnnlib-version <2.0>)\n"
NET = """(declare-network f
    (declare-input  X real [1,64])
    (declare-output Y real [1,10])
)
"""
BOX = "".join(f"(assert (and (>= X[0,{i}] 0.0) (<= X[0,{i}] 0.5)))\n" for i in range(64))
UNSAFE = "(assert (>= Y[0,1] Y[0,0]))\n"


def _query(net: str = NET, body: str = BOX + UNSAFE) -> str:
    return HEADER + net + body


# ---- front end: version detection and parsing into the canonical form ------------------


def test_version_detection():
    assert detect_version(read_text(SAT_Q)) == "2.0"
    assert detect_version(read_text(SAT_V1)) == "1.0"
    assert detect_version("; mentions (declare-network f) in a comment\n"
                          "(declare-const X_0 Real)\n") == "1.0"
    assert detect_version("(declare-network f (declare-input X real [1]) "
                          "(declare-output Y real [1]))") == "2.0"


@pytest.mark.parametrize("query", sorted(q for q in QUERIES.glob("*.vnnlib")
                                          if (EXAMPLES / "vnnlib" / q.name).is_file()),
                         ids=lambda p: p.stem)
def test_shipped_queries_equal_their_vnnlib1_originals(query):
    """Each 2.0 example is a rewrite of a 1.0 example: the canonical forms are identical."""
    spec2 = to_spec(parse_query_text(read_text(query), str(query)))
    spec1 = parse_vnnlib1(EXAMPLES / "vnnlib" / query.name)
    assert (spec2.n_inputs, spec2.n_outputs) == (spec1.n_inputs, spec1.n_outputs) == (64, 10)
    assert len(spec2.cases) == len(spec1.cases) == 1
    c2, c1 = spec2.cases[0], spec1.cases[0]
    assert np.array_equal(c2.lower, c1.lower) and np.array_equal(c2.upper, c1.upper)
    assert len(c2.disjuncts) == len(c1.disjuncts) == 9
    for d2, d1 in zip(c2.disjuncts, c1.disjuncts):
        assert np.array_equal(d2.C, d1.C) and np.array_equal(d2.d, d1.d)


def test_small_query_exact_matrices():
    text = HEADER + """(declare-network f
    (declare-input  X real [2,3])
    (declare-output Y real [1,2])
)
(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] -1.0) (<= X[0,1] 1.0)))
(assert (and (<= 0.25 X[0,2]) (>= 0.75 X[0,2]) (== X[1,0] 0.5)))
(assert (and (>= (* X[1,1] 2.0) -1.0) (>= (- X[1,1]) -0.5)))  ; X[1,1] in [-0.5, 0.5]
(assert (and (>= X[1,2] 0.0) (< X[1,2] 2.0)))                    ; strict: read as <=
(assert (or (<= Y[0,0] -3.0)
            (and (> (- Y[0,1] (* Y[0,0] 2.0)) 0.5) (<= Y[0,1] 7.0))))
"""
    spec = to_spec(parse_query_text(text, "small.vnnlib"))
    assert (spec.n_inputs, spec.n_outputs, spec.source) == (6, 2, "small.vnnlib")
    (case,) = spec.cases
    np.testing.assert_array_equal(case.lower, [0, -1, 0.25, 0.5, -0.5, 0])
    np.testing.assert_array_equal(case.upper, [1, 1, 0.75, 0.5, 0.5, 2])
    (c1, d1), (c2, d2) = [(dj.C.tolist(), dj.d.tolist()) for dj in case.disjuncts]
    assert (c1, d1) == ([[1, 0]], [-3])
    assert (c2, d2) == ([[2, -1], [0, 1]], [-0.5, 7])  # 2 Y0 - Y1 <= -0.5 ; Y1 <= 7


def test_not_equal_is_relaxed_and_checked_exactly():
    text = _query(body=BOX + "(assert (or (!= Y[0,3] 1.0) (> Y[0,1] Y[0,0])))\n")
    query = parse_query_text(text)
    (case,) = to_spec(query).cases
    assert any(dj.C.shape[0] == 0 for dj in case.disjuncts)  # '!=' relaxed to true
    x = np.full(64, 0.25)
    assert holds(query, {"X": x, "Y": np.array([0, 1, 0, 5, 0, 0, 0, 0, 0, 0.0])})
    assert holds(query, {"X": x, "Y": np.array([0, 1, 0, 1, 0, 0, 0, 0, 0, 0.0])})
    assert not holds(query, {"X": x, "Y": np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0.0])})  # strict
    assert not holds(query, {"X": np.full(64, 0.75), "Y": np.array([0.0, 1.0] + [0.0] * 8)})


def test_non_linear_atoms_are_refused():
    atom = "(assert (<= (* Y[0,0] Y[0,1]) 0.5))"
    with pytest.raises(SpecError, match="only linear arithmetic") as info:
        to_spec(parse_query_text(_query(body=BOX + UNSAFE + atom + "\n"), "q.vnnlib"))
    assert "X_" not in str(info.value) and "Y_" not in str(info.value)


def test_errors_name_the_place():
    with pytest.raises(SpecError, match=r"q.vnnlib:6:\d+: syntax error at 'e'.*no exponent"):
        parse_query_text(_query(body="(assert (<= X[0,0] 1e-3))\n"), "q.vnnlib")
    with pytest.raises(SpecError, match=r"q.vnnlib:6: Index out of bounds"):
        parse_query_text(_query(body="(assert (<= X[0,64] 1.0))\n"), "q.vnnlib")
    missing = BOX.replace("(>= X[0,5] 0.0)", "(>= X[0,4] 0.0)")
    with pytest.raises(SpecError, match=r"input X\[0,5\] has no lower bound"):
        to_spec(parse_query_text(_query(body=missing + UNSAFE), "q.vnnlib"))


def test_spec_for_one_model_from_either_version():
    """What ``genbab verify MODEL SPEC`` can use for a property file of either version."""
    spec2 = load_spec_for_model(SAT_Q, TINY)
    spec1 = load_spec_for_model(SAT_V1, TINY)
    assert np.array_equal(spec2.cases[0].lower, spec1.cases[0].lower)
    assert [dj.C.tolist() for dj in spec2.cases[0].disjuncts] == \
        [dj.C.tolist() for dj in spec1.cases[0].disjuncts]


def test_standard_verify_form_is_recognised():
    assert is_vnnlib2_verify(["q.vnnlib", "--network", "f=m.onnx"])
    assert is_vnnlib2_verify(["--network=f=m.onnx", "q.vnnlib"])
    assert is_vnnlib2_verify(["q.vnnlib", "--timeout", "5.0"])  # no --network: an error later
    assert not is_vnnlib2_verify(["m.onnx", "s.vnnlib", "--timeout", "5"])  # genbab's own form
    assert not is_vnnlib2_verify(["m.onnx", "--config", "c.yaml", "s.vnnlib"])
    assert dispatch(["verify", "m.onnx", "s.vnnlib"]) is None
    assert dispatch(["batch", "x.csv"]) is None


# ---- the command line ------------------------------------------------------------------

_COMMANDS: dict[str, Callable[..., list]] = {}


def command(build: Callable[..., list]):
    """Register ``build(work, **params) -> argv`` (after ``python -m genbab.vnnlib2_cli``).

    ``params`` are the test's parametrize values; each test case runs its own command.
    """
    def register(test):
        _COMMANDS[test.__name__] = build
        return test
    return register


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    work: Path
    wall: float


def _run(argv: list) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "genbab.vnnlib2_cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT,
                          check=False)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def _started(request, tmp_path_factory):
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    runs: dict[str, tuple[Future, Path]] = {}
    for item in request.session.items:
        name = getattr(item, "originalname", item.name)
        if item.module is request.module and name in _COMMANDS and item.name not in runs:
            work = tmp_path_factory.mktemp(name)
            params = item.callspec.params if hasattr(item, "callspec") else {}
            runs[item.name] = (pool.submit(_run, _COMMANDS[name](work, **params)), work)
    yield runs
    pool.shutdown(wait=True)


@pytest.fixture
def cli(request, _started) -> Run:
    future, work = _started[request.node.name]
    proc, wall = future.result()
    return Run(proc, work, wall)


def _write(work: Path, name: str, text: str) -> Path:
    path = work / name
    path.write_text(text)
    return path


def _blocks(stdout: str) -> dict[str, tuple[str, list[int], np.ndarray]]:
    """The assignment after ``sat``: name -> (type, dims, values); checks its layout."""
    return {name: (type_name, shape, np.array(values))
            for name, (type_name, shape, values) in read_assignment(stdout).items()}


def _onnx_output(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: x.astype(np.float32).reshape(1, -1)})[0].reshape(-1)


def _assert_error(cli: Run, code: int, *fragments: str):
    assert cli.proc.returncode == code, cli.proc.stderr
    assert cli.proc.stdout == ""
    assert "Traceback" not in cli.proc.stderr
    for fragment in fragments:
        assert fragment in cli.proc.stderr


@command(lambda work: ["verify", UNSAT_Q, "--network", TINY_NET, "--timeout", "60"])
def test_unsat_on_the_easy_example(cli):
    assert cli.proc.returncode == 0, cli.proc.stderr
    assert cli.proc.stdout == "unsat\n"


@command(lambda work: ["verify", SAT_Q, "--network", TINY_NET, "--timeout", "60"])
def test_sat_assignment_is_well_formed_and_confirmed_by_onnxruntime(cli):
    assert cli.proc.returncode == 0, cli.proc.stderr
    blocks = _blocks(cli.proc.stdout)
    assert list(blocks) == ["X", "Y"]
    (x_type, x_shape, x), (y_type, y_shape, y) = blocks["X"], blocks["Y"]
    assert (x_type, x_shape, y_type, y_shape) == ("real", [1, 64], "real", [1, 10])
    (case,) = parse_vnnlib1(SAT_V1).cases
    assert np.all(case.lower <= x) and np.all(x <= case.upper)
    assert np.array_equal(x, x.astype(np.float32))  # exactly the float32 input fed
    assert np.array_equal(_onnx_output(TINY, x), y)
    query = parse_query_text(read_text(SAT_Q))
    assert holds(query, {"X": x, "Y": y})


@command(lambda work: ["verify", SAT_Q, "--network", TINY_NET, "--timeout", "60",
                       "--serialise-assignments", work / "out"])
def test_serialised_assignment(cli):
    from onnx import TensorProto, numpy_helper

    assert cli.proc.returncode == 0, cli.proc.stderr
    assert cli.proc.stdout == "sat\n"
    arrays = {}
    for name in ("X", "Y"):
        tensor = TensorProto()
        tensor.ParseFromString((cli.work / "out" / f"{name}.pb").read_bytes())
        assert tensor.name == name
        arrays[name] = numpy_helper.to_array(tensor)
    assert arrays["X"].shape == (1, 64) and arrays["Y"].shape == (1, 10)
    assert arrays["X"].dtype == np.float32
    assert np.array_equal(_onnx_output(TINY, arrays["X"]), arrays["Y"].reshape(-1))


@command(lambda work: ["verify", SAT_V1, "--network", f"anything={TINY}", "--timeout", "60"])
def test_vnnlib1_query_through_the_standard_interface(cli):
    assert cli.proc.returncode == 0, cli.proc.stderr
    blocks = _blocks(cli.proc.stdout)
    assert list(blocks) == [f"X_{i}" for i in range(64)] + [f"Y_{j}" for j in range(10)]
    assert all(t == "Real" and shape == [] and len(v) == 1 for t, shape, v in blocks.values())
    x = np.array([blocks[f"X_{i}"][2][0] for i in range(64)])
    y = np.array([blocks[f"Y_{j}"][2][0] for j in range(10)])
    assert np.array_equal(_onnx_output(TINY, x), y)


@command(lambda work: ["verify", ALPHA_Q, "--network", f"digits_tanh_2x32={TANH}",
                       "--timeout", "0.5"])
def test_fractional_timeout_is_a_hard_limit(cli):
    assert cli.proc.returncode == 0, cli.proc.stderr
    assert cli.proc.stdout in {f"{v}\n" for v in VERDICTS}
    assert cli.wall < 0.5 + 10  # interpreter start-up under load, not the pipeline


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "soon"])
@command(lambda work, timeout: ["verify", UNSAT_Q, "--network", TINY_NET, "--timeout", timeout])
def test_bad_timeouts_are_usage_errors(cli, timeout):
    _assert_error(cli, 2, "--timeout")


SUPPORTS = {
    "--onnx-opset-versions": ["7", "20"],
    "--onnx-element-types": ["real"],
    "--vnnlib-versions": ["1.0", "2.0"],
    "--hidden-node-theories": ["NH", "H"],
    "--multiple-input-output-theories": ["SIO", "MIO"],
    "--multiple-network-theories": ["SNET", "MENET", "MINET", "MNET"],
    "--multiple-node-comparison-theories": ["SNC", "MNC"],
    "--arithmetic-complexity-theories": ["BND", "OUTC", "LIN"],
    "--optimised-disjunctive-reasoning": ["false"],
    "--serialise-assignments": ["true"],
    "--unsat-proofs": ["false"],
}


@pytest.mark.parametrize("capability", sorted(SUPPORTS))
@command(lambda work, capability: ["supports", capability])
def test_supports(cli, capability):
    assert cli.proc.returncode == 0, cli.proc.stderr
    assert cli.proc.stdout.splitlines() == SUPPORTS[capability]


def test_supports_operators_and_name():
    from bounds.onnx_registry import supported_op_types

    proc, _ = _run(["supports", "--onnx-operators"])
    assert proc.returncode == 0 and proc.stdout.splitlines() == list(supported_op_types())
    assert {"Gemm", "Sigmoid", "Tanh"} <= set(proc.stdout.split())
    proc, _ = _run(["--name"])
    assert (proc.returncode, proc.stdout) == (0, "genbab\n")
    for bad in (["supports", "--everything"], ["supports"]):
        proc, _ = _run(bad)
        assert proc.returncode == 2 and proc.stdout == "" and "expected one of" in proc.stderr


# ---- error conditions: nothing on stdout, a message on stderr, non-zero exit -------------


@command(lambda work: ["verify", UNSAT_Q, "--network", f"other={TINY}"])
def test_error_wrong_network_name(cli):
    _assert_error(cli, 3, "no --network given for 'digits_sigmoid_tiny'",
                  "network 'other' is not declared")


@command(lambda work: ["verify", UNSAT_Q])
def test_error_no_network(cli):
    _assert_error(cli, 3, "no --network given")


@command(lambda work: ["verify", UNSAT_Q, "--network", TINY_NET, "--network", f"extra={TANH}"])
def test_error_surplus_network(cli):
    _assert_error(cli, 3, "--network extra")


@command(lambda work: ["verify", UNSAT_Q, "--network", str(TINY)])
def test_error_malformed_network_option(cli):
    _assert_error(cli, 2, "NAME=MODEL")


@command(lambda work: ["verify", _write(work, "q.vnnlib", _query().replace("real", "float64")),
                       "--network", f"f={TINY}"])
def test_error_element_type_mismatch(cli):
    _assert_error(cli, 3, "element types differ", "float64", "float32")


@command(lambda work: ["verify", _write(work, "q.vnnlib", _query().replace("real", "float32")),
                       "--network", f"f={TINY}"])
def test_error_element_type_not_analysable_soundly(cli):
    _assert_error(cli, 3, "cannot analyse float32 soundly", "'real'")


def _int_model(work: Path) -> Path:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "int_input",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    path = work / "int.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@command(lambda work: ["verify", _write(work, "q.vnnlib", _query()), "--network",
                       f"f={_int_model(work)}"])
def test_error_integer_model_input(cli):
    _assert_error(cli, 3, "cannot analyse int64 tensors soundly")


@command(lambda work: ["verify", _write(work, "q.vnnlib", _query().replace("[1,64]", "[64]")
                                        .replace("X[0,", "X[")), "--network", f"f={TINY}"])
def test_error_shape_mismatch(cli):
    _assert_error(cli, 3, "declared with shape [64]", "has shape [1,64]")


@command(lambda work: ["verify", _write(work, "q.vnnlib", _query(
    net=NET.replace("(declare-output", '(declare-hidden H real [1,8] "h")\n    (declare-output'))),
    "--network", f"f={TINY}"])
def test_error_hidden_node_names_no_tensor(cli):
    _assert_error(cli, 3, "has no tensor 'h' computed by a node")


@command(lambda work: ["verify", _write(work, "q.vnnlib", _query(
    net=NET + NET.replace("(declare-network f", "(declare-network g (equal-to f)")
    .replace("X", "A").replace("Y", "B"))), "--network", f"f={TINY}", "--network", f"g={TINY}"])
def test_error_network_option_for_an_equal_to_network(cli):
    _assert_error(cli, 3, "--network g: network 'g' is declared equal-to another network")


@command(lambda work: ["verify", _write(work, "q.vnnlib", _query(body="(assert (<= X[0,0] 1e-3))")),
                       "--network", f"f={TINY}"])
def test_error_malformed_query(cli):
    _assert_error(cli, 3, "syntax error")


@command(lambda work: ["verify", work / "missing.vnnlib", "--network", f"f={TINY}"])
def test_error_missing_query(cli):
    _assert_error(cli, 3, "no such query file")


@command(lambda work: ["verify", UNSAT_Q, "--network", f"digits_sigmoid_tiny={work}/none.onnx"])
def test_error_missing_model(cli):
    _assert_error(cli, 3, "cannot read model")


def test_read_assignment_round_trips_and_rejects_malformed_blocks():
    text = "sat\nX real [1,2]\n0.5\n-1.0\nY real [1]\n2.0\n"
    assert read_assignment(text) == {"X": ("real", [1, 2], [0.5, -1.0]),
                                     "Y": ("real", [1], [2.0])}
    for bad in ("unsat\n", "sat\nX real [1,2]\n0.5\n", "sat\nX real 1,2\n0.5\n0.1\n"):
        with pytest.raises(ValueError):
            read_assignment(bad)
