"""The ``genbab`` command line, run as a user runs it: in a subprocess.

Covers the verdict output (first line of stdout), the results file, the
``--method`` / ``--config`` / ``--device`` switches on the shipped examples,
compressed inputs, and the documented exit codes (0 verdict, 1 internal error,
2 usage error, 3 invalid input) with one-line messages and no tracebacks.

Every test names its command line with ``@command``; the commands of the
selected tests are started up front, two at a time, because each one pays
for importing torch.  The test body then only checks the outcome.
"""
from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from genbab.results import read_results_file
from genbab.spec.vnnlib1 import parse_vnnlib1

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "vnnlib_specs" / "examples"
TANH = EXAMPLES / "onnx" / "digits_tanh_2x32.onnx"
TINY = EXAMPLES / "onnx" / "digits_sigmoid_tiny.onnx"
SAT_SPEC = EXAMPLES / "vnnlib" / "digits_sigmoid_tiny_idx0_eps0.08.vnnlib"  # PGD-confirmed sat
IBP_SPEC = EXAMPLES / "vnnlib" / "digits_sigmoid_tiny_idx2_eps0.01.vnnlib"  # IBP proves it
CROWN_SPEC = EXAMPLES / "vnnlib" / "digits_tanh_2x32_idx0_eps0.01.vnnlib"  # CROWN, not IBP
ALPHA_SPEC = EXAMPLES / "vnnlib" / "digits_tanh_2x32_idx1_eps0.05.vnnlib"  # alpha-CROWN only
VERDICTS = ("sat", "unsat", "unknown", "timeout")
NO_BAB = "bab: {enabled: false}\n"  # root bounds only: what a method alone can prove
PARALLEL = 2
RUN_TIMEOUT = 180  # seconds per subprocess, far above what any command here needs


# --- running the commands --------------------------------------------------------------------

_COMMANDS: dict[str, Callable[..., list]] = {}


def command(build: Callable[..., list]):
    """Register ``build(work, **params) -> argv`` for the decorated test.

    ``work`` is an empty directory of the test's own for input and output files;
    ``params`` are the test's parametrize values.
    """
    def register(test):
        _COMMANDS[test.__name__] = build
        return test
    return register


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    work: Path


def genbab(*args) -> subprocess.CompletedProcess:
    """Run ``python -m genbab.cli ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "genbab.cli", *map(str, args)],
                          check=False, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, cwd=ROOT)


@pytest.fixture(scope="module")
def _started(request, tmp_path_factory):
    """Start the commands of this module's selected tests, in test order."""
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    runs: dict[str, tuple[Future, Path]] = {}
    for item in request.session.items:
        if item.module.__name__ != __name__ or item.originalname not in _COMMANDS:
            continue
        work = tmp_path_factory.mktemp(item.originalname[5:40])
        params = getattr(item, "callspec", None)
        argv = _COMMANDS[item.originalname](work, **(params.params if params else {}))
        runs[item.nodeid] = pool.submit(genbab, *argv), work
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def cli(request, _started) -> Run:
    """The finished command of the running test."""
    future, work = _started[request.node.nodeid]
    return Run(future.result(), work)


# --- checks ----------------------------------------------------------------------------------


def verdict(proc: subprocess.CompletedProcess) -> str:
    """The first line of stdout, after checking the run produced a verdict."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first in VERDICTS, proc.stdout
    return first


def summary_line(proc: subprocess.CompletedProcess, prefix: str) -> str:
    """The stdout line starting with ``prefix``."""
    return next(line for line in proc.stdout.splitlines() if line.startswith(prefix))


def assert_input_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 3 with a one-line ``genbab: error:`` message naming ``fragments``; returns it."""
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.startswith("genbab: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    return proc.stderr


def ort_run(model: Path, x: np.ndarray) -> np.ndarray:
    """Flat float64 output of onnxruntime on the flat input ``x`` (fed as float32)."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    out = sess.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- verdicts on the shipped examples --------------------------------------------------------


@command(lambda work: ["verify", TINY, SAT_SPEC, "--timeout", 60,
                       "--results-file", work / "results.txt"])
def test_sat_example_prints_verdict_and_writes_confirmed_counterexample(cli):
    assert verdict(cli.proc) == "sat"
    assert "counterexample confirmed by onnxruntime" in cli.proc.stdout
    results = cli.work / "results.txt"
    word, x, y = read_results_file(results)
    assert word == "sat" and x is not None and y is not None
    assert (x.size, y.size) == (64, 10)
    text = results.read_text()
    assert all(f"(X_{i} " in text for i in range(64)) and all(f"(Y_{j} " in text for j in range(10))
    np.testing.assert_array_equal(x.astype(np.float32).astype(np.float64), x)  # what ort was fed
    case = parse_vnnlib1(SAT_SPEC).cases[0]
    assert np.all(case.lower <= x) and np.all(x <= case.upper)
    y_ort = ort_run(TINY, x)
    np.testing.assert_allclose(y, y_ort, rtol=1e-6, atol=1e-6)
    assert any(np.all(np.asarray(dj.C) @ y_ort <= np.asarray(dj.d)) for dj in case.disjuncts)


@command(lambda work: ["verify", TINY, IBP_SPEC, "--timeout", 60, "--method", "ibp",
                       "--device", "cpu", "--no-quick", "--results-file", work / "results.txt"])
def test_unsat_example_proved_by_ibp_on_cpu(cli):
    assert verdict(cli.proc) == "unsat"
    assert "method: ibp" in cli.proc.stdout.splitlines()
    assert read_results_file(cli.work / "results.txt") == ("unsat", None, None)


def _plain_crown(work: Path, how: str) -> list:
    if how == "--method":  # the config file asks for IBP: the command line must win
        config = write(work / "ibp.yaml", "bounds: {method: ibp}\n" + NO_BAB)
        return ["verify", TANH, ALPHA_SPEC, "--timeout", 60, "--no-attack",
                "--config", config, "--method", "crown"]
    config = write(work / "crown.yaml", "bounds: {method: crown}\n" + NO_BAB)
    return ["verify", TANH, ALPHA_SPEC, "--timeout", 60, "--no-attack", "--config", config]


@command(_plain_crown)
@pytest.mark.parametrize("how", ["--method", "--config"])
def test_alpha_instance_not_proved_by_plain_crown(cli, how):
    assert verdict(cli.proc) == "unknown"
    timing = summary_line(cli.proc, "bound time:")
    assert "crown" in timing and "alpha-crown" not in timing
    margin = float(re.search(r"worst disjunct margin (\S+)", cli.proc.stdout).group(1))
    assert margin < 0


@command(lambda work: ["verify", TANH, ALPHA_SPEC, "--timeout", 60])
def test_alpha_instance_proved_by_default_alpha_crown(cli):
    assert verdict(cli.proc) == "unsat"
    assert "method: alpha-crown" in cli.proc.stdout.splitlines()
    margin = float(re.search(r"worst disjunct margin (\S+)", cli.proc.stdout).group(1))
    assert margin > 0


@command(lambda work: ["verify", TANH, ALPHA_SPEC, "--timeout", 120, "--method", "crown",
                       "--no-attack"])
@pytest.mark.slow
def test_alpha_instance_proved_by_crown_with_branch_and_bound(cli):
    assert verdict(cli.proc) == "unsat"


def _gzipped(work: Path) -> list:
    model, spec = work / "net.onnx.gz", work / "prop.vnnlib.gz"
    model.write_bytes(gzip.compress(TINY.read_bytes()))
    spec.write_bytes(gzip.compress(SAT_SPEC.read_bytes()))
    return ["verify", model, spec, "--timeout", 60, "--device", "cpu"]


@command(_gzipped)
def test_gzipped_model_and_property_accepted(cli):
    assert verdict(cli.proc) == "sat"


@command(lambda work: ["verify", TANH, CROWN_SPEC, "--timeout", 60, "--method", "ibp",
                       "--no-attack", "--config", write(work / "c.yaml", NO_BAB)])
def test_unknown_verdict_names_the_method_that_ran(cli):
    assert verdict(cli.proc) == "unknown"
    assert "method: ibp" in cli.proc.stdout.splitlines()


# --- version and usage errors (exit 2) -------------------------------------------------------


@command(lambda work: ["--version"])
def test_version(cli):
    from genbab import __version__

    assert cli.proc.returncode == 0 and cli.proc.stdout.strip() == __version__


@command(lambda work, args: args)
@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["verify"],
    ["verify", "only-a-model.onnx"],
    ["verify", "m.onnx", "p.vnnlib", "--timeout", "soon"],
    ["verify", "m.onnx", "p.vnnlib", "--method", "exact"],
    ["verify", "m.onnx", "p.vnnlib", "--device", "tpu"],
    ["verify", "m.onnx", "p.vnnlib", "--no-such-option"],
], ids=["none", "unknown-command", "no-files", "no-spec", "timeout-text", "bad-method",
        "bad-device", "unknown-option"])
def test_bad_arguments_exit_2(cli, args):
    assert cli.proc.returncode == 2, (cli.proc.stdout, cli.proc.stderr)
    assert "Traceback" not in cli.proc.stdout + cli.proc.stderr
    assert cli.proc.stdout == "" and "usage:" in cli.proc.stderr


@command(lambda work: ["verify", TINY, IBP_SPEC, "--timeout", "0"])
def test_zero_timeout_is_a_usage_error(cli):
    assert cli.proc.returncode == 2 and "--timeout" in cli.proc.stderr


@command(lambda work: ["verify", TINY, IBP_SPEC, "--timeout", "nan", "--method", "ibp"])
def test_nan_timeout_rejected(cli):
    assert cli.proc.returncode in (2, 3) and "--timeout" in cli.proc.stderr


# --- invalid input (exit 3) ------------------------------------------------------------------


@command(lambda work: ["verify", work / "absent.onnx", IBP_SPEC])
def test_missing_model_file(cli):
    assert_input_error(cli.proc, "absent.onnx", "no such model file")


@command(lambda work: ["verify", TINY, work / "absent.vnnlib"])
def test_missing_property_file(cli):
    assert_input_error(cli.proc, "absent.vnnlib", "no such property file")


def _bad_operator_line() -> tuple[int, str]:
    """(1-based line, text) of IBP_SPEC with '<=' misspelt on the upper bound of X_5."""
    lines = IBP_SPEC.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("(assert (<= X_5 "))
    lines[row] = lines[row].replace("(<= X_5 ", "(<== X_5 ")
    return row + 1, "\n".join(lines) + "\n"


@command(lambda work: ["verify", TINY, write(work / "bad.vnnlib", _bad_operator_line()[1])])
def test_malformed_property_reports_file_line_column(cli):
    message = assert_input_error(cli.proc, "'<=='")
    assert re.search(rf"bad\.vnnlib:{_bad_operator_line()[0]}:\d+: ", message), message
    assert len(message.strip().splitlines()) == 1


@command(lambda work: ["verify", TINY, write(work / "cut.vnnlib", IBP_SPEC.read_text()[:-40])])
def test_truncated_property(cli):
    message = assert_input_error(cli.proc)
    assert re.search(r"cut\.vnnlib:\d+:\d+: ", message), message


def _binary_spec(work: Path) -> list:
    (work / "bin.vnnlib").write_bytes(b"\x80\xff\x00 not text")
    return ["verify", TINY, work / "bin.vnnlib"]


@command(_binary_spec)
def test_property_that_is_not_text(cli):
    assert_input_error(cli.proc, "bin.vnnlib")


def _small_spec(work: Path, n_inputs: int, n_outputs: int, word: str) -> list:
    lines = [f"(declare-const X_{i} Real)" for i in range(n_inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_outputs)]
    lines += [f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.1))" for i in range(n_inputs)]
    lines.append("(assert (>= Y_1 Y_0))")
    return ["verify", TINY, write(work / "small.vnnlib", "\n".join(lines) + "\n")]


@command(_small_spec)
@pytest.mark.parametrize("n_inputs,n_outputs,word", [(3, 10, "inputs"), (64, 4, "outputs")])
def test_property_size_does_not_match_model(cli, n_inputs, n_outputs, word):
    message = assert_input_error(cli.proc, word)
    assert str(n_inputs if word == "inputs" else n_outputs) in message


def _hardmax_model(work: Path) -> list:
    model = onnx.load(str(TANH))
    final = model.graph.output[0].name
    model.graph.node[-1].output[0] = "logits"
    model.graph.node.append(onnx.helper.make_node("Hardmax", ["logits"], [final],
                                                  name="my_hardmax_node", axis=1))
    onnx.checker.check_model(model)
    onnx.save(model, str(work / "hardmax.onnx"))
    return ["verify", work / "hardmax.onnx", ALPHA_SPEC]


@command(_hardmax_model)
def test_unsupported_operator_names_op_and_node(cli):
    assert_input_error(cli.proc, "Hardmax", "my_hardmax_node")


def _garbage_model(work: Path) -> list:
    (work / "garbage.onnx").write_bytes(b"this is not a protobuf \x00\xff")
    return ["verify", work / "garbage.onnx", IBP_SPEC]


@command(_garbage_model)
def test_model_file_that_is_not_onnx(cli):
    assert_input_error(cli.proc, "garbage.onnx")


@command(lambda work, text, fragment: ["verify", TINY, IBP_SPEC, "--timeout", 60,
                                       "--config", write(work / "conf.yaml", text)])
@pytest.mark.parametrize("text,fragment", [
    ("bounds: {method: crown\n", "invalid YAML"),
    ("bounds: {methd: crown}\n", "unknown key 'methd'"),
    ("timeout: soon\n", "config.timeout"),
], ids=["yaml-syntax", "unknown-key", "wrong-type"])
def test_bad_config_file(cli, text, fragment):
    assert_input_error(cli.proc, "conf.yaml", fragment)


@command(lambda work: ["verify", TINY, IBP_SPEC, "--timeout", 60, "--config", work / "absent.yaml"])
def test_missing_config_file(cli):
    assert_input_error(cli.proc, "absent.yaml")


@command(lambda work: ["verify", TINY, IBP_SPEC, "--timeout", 60, "--no-attack", "--config",
                       write(work / "conf.yaml", "bounds: {method: exact}\n")])
def test_config_unknown_bound_method(cli):
    assert_input_error(cli.proc, "exact")


@command(lambda work: ["verify", TINY, IBP_SPEC, "--timeout", 60, "--config",
                       write(work / "conf.yaml", "device: gpu\n")])
def test_config_unknown_device(cli):
    assert_input_error(cli.proc, "gpu")


@command(lambda work: ["verify", TINY, IBP_SPEC, "--config",
                       write(work / "conf.yaml", "timeout: -5\n")])
def test_config_negative_timeout(cli):
    assert_input_error(cli.proc, "timeout")


@command(lambda work: ["verify", TINY, IBP_SPEC, "--timeout", 60, "--method", "ibp",
                       "--results-file", work / "no" / "such" / "results.txt"])
def test_results_file_in_missing_directory(cli):
    assert "internal error" not in cli.proc.stderr
    assert cli.proc.returncode == 3 and str(cli.work / "no" / "such") in cli.proc.stderr
