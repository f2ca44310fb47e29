"""The ``genbab`` command line, run as a user runs it: in a subprocess.

Covers the verdict output (first line of stdout), the results file, the
``--method`` / ``--config`` / ``--device`` switches on the shipped examples,
compressed inputs, and the documented exit codes (0 verdict, 1 internal error,
2 usage error, 3 invalid input) with one-line messages and no tracebacks.
"""
from __future__ import annotations

import gzip
import re
import subprocess
import sys
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


def genbab(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m genbab.cli ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "genbab.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def verdict(proc: subprocess.CompletedProcess) -> str:
    """The first line of stdout, after checking the run produced a verdict."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first in VERDICTS, proc.stdout
    return first


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


# --- verdicts on the shipped examples --------------------------------------------------------


def test_sat_example_prints_verdict_and_writes_confirmed_counterexample(tmp_path):
    results = tmp_path / "out" / "results.txt"
    results.parent.mkdir()
    proc = genbab("verify", TINY, SAT_SPEC, "--timeout", 20, "--results-file", results)
    assert verdict(proc) == "sat"
    assert "counterexample confirmed by onnxruntime" in proc.stdout
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


def test_unsat_example_proved_by_ibp_on_cpu(tmp_path):
    results = tmp_path / "results.txt"
    proc = genbab("verify", TINY, IBP_SPEC, "--timeout", 20, "--method", "ibp",
                  "--device", "cpu", "--results-file", results)
    assert verdict(proc) == "unsat"
    assert "method: ibp" in proc.stdout.splitlines()
    assert read_results_file(results) == ("unsat", None, None)


@pytest.mark.parametrize("how", ["--method", "--config"])
def test_alpha_instance_not_proved_by_plain_crown(tmp_path, how):
    config = tmp_path / "crown.yaml"
    config.write_text("bounds: {method: crown}\n")
    switch = ["--method", "crown"] if how == "--method" else ["--config", config]
    proc = genbab("verify", TANH, ALPHA_SPEC, "--timeout", 30, *switch)
    assert verdict(proc) == "unknown"
    timing = next(line for line in proc.stdout.splitlines() if line.startswith("bound time:"))
    assert "crown" in timing and "alpha-crown" not in timing


def test_alpha_instance_proved_by_default_alpha_crown():
    proc = genbab("verify", TANH, ALPHA_SPEC, "--timeout", 30)
    assert verdict(proc) == "unsat"
    assert "method: alpha-crown" in proc.stdout.splitlines()
    margin = float(re.search(r"worst disjunct margin (\S+)", proc.stdout).group(1))
    assert margin > 0


def test_command_line_method_overrides_config_file(tmp_path):
    config = tmp_path / "ibp.yaml"
    config.write_text("bounds:\n  method: ibp\n")
    proc = genbab("verify", TANH, CROWN_SPEC, "--timeout", 20, "--config", config,
                  "--method", "crown", "--no-attack")
    assert verdict(proc) == "unsat"
    assert "method: crown" in proc.stdout.splitlines()


def test_gzipped_model_and_property_accepted(tmp_path):
    model, spec = tmp_path / "net.onnx.gz", tmp_path / "prop.vnnlib.gz"
    model.write_bytes(gzip.compress(TINY.read_bytes()))
    spec.write_bytes(gzip.compress(SAT_SPEC.read_bytes()))
    assert verdict(genbab("verify", model, spec, "--timeout", 20, "--device", "cpu")) == "sat"


@pytest.mark.xfail(strict=True, reason="BUG: an 'unknown' verdict reports 'method: alpha-crown' "
                   "although --method ibp stopped before alpha-CROWN ran (verify.py uses "
                   "`method or 'alpha-crown'`)")
def test_unknown_verdict_names_the_method_that_ran():
    proc = genbab("verify", TANH, CROWN_SPEC, "--timeout", 20, "--method", "ibp", "--no-attack")
    assert verdict(proc) == "unknown"
    assert "method: ibp" in proc.stdout.splitlines()


# --- version and usage errors (exit 2) -------------------------------------------------------


def test_version():
    from genbab import __version__

    proc = genbab("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"genbab {__version__}"


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
def test_bad_arguments_exit_2(args):
    proc = genbab(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == "" and "usage:" in proc.stderr


@pytest.mark.xfail(strict=True, reason="BUG: a non-positive --timeout is a bad command-line "
                   "argument (exit 2 per the cli.py docstring) but exits 3 (invalid input)")
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_timeout_is_a_usage_error(value):
    proc = genbab("verify", TINY, IBP_SPEC, "--timeout", value)
    assert proc.returncode == 2 and "--timeout" in proc.stderr


@pytest.mark.xfail(strict=True, reason="BUG: --timeout nan is accepted (nan <= 0 is False); "
                   "the deadline can then never expire")
def test_nan_timeout_rejected():
    proc = genbab("verify", TINY, IBP_SPEC, "--timeout", "nan", "--method", "ibp")
    assert proc.returncode in (2, 3) and "--timeout" in proc.stderr


# --- invalid input (exit 3) ------------------------------------------------------------------


def test_missing_model_file(tmp_path):
    assert_input_error(genbab("verify", tmp_path / "absent.onnx", IBP_SPEC),
                       "absent.onnx", "no such model file")


def test_missing_property_file(tmp_path):
    assert_input_error(genbab("verify", TINY, tmp_path / "absent.vnnlib"),
                       "absent.vnnlib", "no such property file")


def test_malformed_property_reports_file_line_column(tmp_path):
    lines = IBP_SPEC.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("(assert (<= X_5 "))
    lines[row] = lines[row].replace("(<= X_5 ", "(<== X_5 ")
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("\n".join(lines) + "\n")
    message = assert_input_error(genbab("verify", TINY, bad), "'<=='")
    assert re.search(rf"bad\.vnnlib:{row + 1}:\d+: ", message), message
    assert len(message.strip().splitlines()) == 1


def test_truncated_property(tmp_path):
    bad = tmp_path / "cut.vnnlib"
    bad.write_text(IBP_SPEC.read_text()[:-40])
    message = assert_input_error(genbab("verify", TINY, bad), "cut.vnnlib:")
    assert re.search(r"cut\.vnnlib:\d+:\d+: ", message), message


def _small_spec(n_inputs: int, n_outputs: int) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(n_inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_outputs)]
    lines += [f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.1))" for i in range(n_inputs)]
    lines.append("(assert (>= Y_1 Y_0))")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("n_inputs,n_outputs,word", [(3, 10, "inputs"), (64, 4, "outputs")])
def test_property_size_does_not_match_model(tmp_path, n_inputs, n_outputs, word):
    spec = tmp_path / "small.vnnlib"
    spec.write_text(_small_spec(n_inputs, n_outputs))
    message = assert_input_error(genbab("verify", TINY, spec), word)
    assert str(n_inputs if word == "inputs" else n_outputs) in message


def test_unsupported_operator_names_op_and_node(tmp_path):
    model = onnx.load(str(TANH))
    final = model.graph.output[0].name
    model.graph.node[-1].output[0] = "logits"
    model.graph.node.append(onnx.helper.make_node("Hardmax", ["logits"], [final],
                                                  name="my_hardmax_node", axis=1))
    onnx.checker.check_model(model)
    path = tmp_path / "hardmax.onnx"
    onnx.save(model, str(path))
    assert_input_error(genbab("verify", path, ALPHA_SPEC), "Hardmax", "my_hardmax_node")


def test_model_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not a protobuf \x00\xff")
    assert_input_error(genbab("verify", path, IBP_SPEC), "garbage.onnx")


@pytest.mark.parametrize("text,fragment", [
    ("bounds: {method: crown\n", "invalid YAML"),
    ("bounds: {methd: crown}\n", "unknown key 'methd'"),
    ("no_such_section: 1\n", "unknown key 'no_such_section'"),
    ("timeout: soon\n", "config.timeout"),
    ("- a list\n", "mapping"),
], ids=["yaml-syntax", "unknown-nested-key", "unknown-top-key", "wrong-type", "not-mapping"])
def test_bad_config_file(tmp_path, text, fragment):
    config = tmp_path / "conf.yaml"
    config.write_text(text)
    assert_input_error(genbab("verify", TINY, IBP_SPEC, "--config", config), "conf.yaml", fragment)


def test_missing_config_file(tmp_path):
    assert_input_error(genbab("verify", TINY, IBP_SPEC, "--config", tmp_path / "absent.yaml"),
                       "absent.yaml")


@pytest.mark.xfail(strict=True, reason="BUG: an unknown bounds.method in a config file is "
                   "accepted and silently runs alpha-CROWN instead of exiting 3")
def test_config_unknown_bound_method(tmp_path):
    config = tmp_path / "conf.yaml"
    config.write_text("bounds: {method: exact}\n")
    assert_input_error(genbab("verify", TINY, IBP_SPEC, "--config", config, "--no-attack"),
                       "exact")


@pytest.mark.xfail(strict=True, reason="BUG: `device: gpu` in a config file is not validated: "
                   "torch raises RuntimeError and the CLI exits 1 ('internal error')")
def test_config_unknown_device(tmp_path):
    config = tmp_path / "conf.yaml"
    config.write_text("device: gpu\n")
    assert_input_error(genbab("verify", TINY, IBP_SPEC, "--config", config), "gpu")


@pytest.mark.xfail(strict=True, reason="BUG: `timeout: -5` in a config file is accepted (only "
                   "--timeout is checked) and the run answers 'timeout' with exit 0")
def test_config_negative_timeout(tmp_path):
    config = tmp_path / "conf.yaml"
    config.write_text("timeout: -5\n")
    assert_input_error(genbab("verify", TINY, IBP_SPEC, "--config", config), "timeout")


@pytest.mark.xfail(strict=True, reason="BUG: --results-file in a missing directory fails after "
                   "the run with 'internal error: FileNotFoundError' and exit 1")
def test_results_file_in_missing_directory(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "results.txt"
    proc = genbab("verify", TINY, IBP_SPEC, "--method", "ibp", "--results-file", target)
    assert "internal error" not in proc.stderr
    assert proc.returncode == 3 and str(target.parent) in proc.stderr


def test_no_traceback_without_debug_on_unreadable_property(tmp_path):
    spec = tmp_path / "binary.vnnlib"
    spec.write_bytes(b"\x80\xff\x00 not text")
    assert_input_error(genbab("verify", TINY, spec), "binary.vnnlib")


def test_directory_given_as_property(tmp_path):
    folder = tmp_path / "folder.vnnlib"
    folder.mkdir()
    assert_input_error(genbab("verify", TINY, folder), "folder.vnnlib")
