"""The VNN-COMP scripts (scripts/vnncomp), the category configs and genbab.signals.

Most tests run run_instance.sh with a fake Python (GENBAB_PYTHON) whose
behaviour a FAKE_MODE variable picks, so argument order, limits and the
always-written results file are checked in well under a second each; two run
the real genbab on a shipped example.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genbab.batch import inner_timeout
from genbab.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "vnncomp"
CONFIGS = REPO / "configs" / "vnncomp"
EXAMPLES = REPO / "vnnlib_specs" / "examples"
TINY_ONNX = EXAMPLES / "onnx" / "digits_sigmoid_tiny.onnx"
TINY_SAT = EXAMPLES / "vnnlib" / "digits_sigmoid_tiny_idx0_eps0.08.vnnlib"  # expected sat
TANH_ONNX = EXAMPLES / "onnx" / "digits_tanh_2x32.onnx"
TANH_UNSAT = EXAMPLES / "vnnlib" / "digits_tanh_2x32_idx1_eps0.05.vnnlib"  # needs alpha-CROWN

FAKE_PYTHON = f'''#!{sys.executable}
import json, os, signal, sys, time
from pathlib import Path
args = sys.argv[1:]
Path(os.environ["FAKE_RECORD"]).write_text(json.dumps(args))
results = Path(args[args.index("--results-file") + 1])
mode = os.environ.get("FAKE_MODE", "unsat")
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode in ("hang", "stubborn"):
    time.sleep(60)
if mode == "crash":
    sys.exit(1)
if mode != "silent":
    results.write_text(mode + "\\n")
'''


@pytest.fixture
def fake_env(tmp_path):
    """Environment running run_instance.sh against the fake Python."""
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(os.environ, GENBAB_PYTHON=str(fake), FAKE_RECORD=str(tmp_path / "argv.json"),
               GENBAB_KILL_GRACE="0.5")
    env.pop("GENBAB_VNNCOMP_CONFIG", None)
    return env


def script(name: str, *args: str, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_every_category_config_loads():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert CONFIGS / "default.yaml" in files and len(files) > 3
    for path in files:
        load_config(path)  # an unknown key raises ConfigError


@pytest.mark.parametrize("name", ["install_tool.sh", "prepare_instance.sh", "run_instance.sh"])
def test_wrong_version_string_fails(name, tmp_path):
    args = {"install_tool.sh": ["v2"],
            "prepare_instance.sh": ["v2", "acasxu", TINY_ONNX, TINY_SAT],
            "run_instance.sh": ["v2", "acasxu", TINY_ONNX, TINY_SAT, tmp_path / "r.txt", 5]}
    proc = script(name, *args[name])
    assert proc.returncode == 1 and "'v1'" in proc.stderr


def test_install_tool_is_idempotent_when_installed():
    code = "import genbab, importlib.metadata as m; print(genbab.__file__, m.version('torch'))"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd="/", check=False)
    if str(REPO / "genbab") not in probe.stdout or " 2.13." not in probe.stdout:
        pytest.skip("genbab is not installed from this checkout with torch 2.13")
    proc = script("install_tool.sh", "v1", env=dict(os.environ, GENBAB_PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout


@pytest.mark.parametrize(("category", "config"), [
    ("acasxu_2023", "acasxu_2023.yaml"), ("acasxu", "acasxu_2023.yaml"),
    ("ACASXU_2023", "acasxu_2023.yaml"), ("vit_2024", "vit_2023.yaml"),
    ("some_new_benchmark", "default.yaml")])
def test_prepare_instance_names_the_category_config(category, config):
    proc = script("prepare_instance.sh", "v1", category, TINY_ONNX, TINY_SAT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(str(CONFIGS / config))


def test_prepare_instance_missing_file_and_gz(tmp_path):
    proc = script("prepare_instance.sh", "v1", "x", tmp_path / "none.onnx", TINY_SAT)
    assert proc.returncode == 1 and "none.onnx" in proc.stderr
    (tmp_path / "net.onnx.gz").write_bytes(b"")
    assert script("prepare_instance.sh", "v1", "x", tmp_path / "net.onnx", TINY_SAT).returncode == 0
    assert script("prepare_instance.sh", "v1", "x", TINY_ONNX).returncode == 1  # too few args


def test_run_instance_argument_order_and_config(tmp_path, fake_env):
    results = tmp_path / "out" / "results.txt"
    proc = script("run_instance.sh", "v1", "acasxu_2023", TINY_ONNX, TINY_SAT, results, 60,
                  env=fake_env)
    assert proc.returncode == 0, proc.stderr
    assert results.read_text() == "unsat\n"
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[:5] == ["-m", "genbab.cli", "verify", str(TINY_ONNX), str(TINY_SAT)]
    assert argv[5:7] == ["--results-file", str(results)]
    assert argv[7] == "--timeout" and float(argv[8]) == pytest.approx(inner_timeout(60))
    assert argv[9:] == ["--config", str(CONFIGS / "acasxu_2023.yaml")]


def test_run_instance_extra_args_and_forced_config(tmp_path, fake_env):
    env = dict(fake_env, GENBAB_ARGS="--device cpu --seed 3", GENBAB_VNNCOMP_CONFIG="my.yaml")
    proc = script("run_instance.sh", "v1", "acasxu", TINY_ONNX, TINY_SAT, tmp_path / "r.txt",
                  "7.5", env=env)
    assert proc.returncode == 0, proc.stderr
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert float(argv[argv.index("--timeout") + 1]) == pytest.approx(inner_timeout(7.5))
    assert argv[-6:] == ["--config", "my.yaml", "--device", "cpu", "--seed", "3"]


@pytest.mark.parametrize(("mode", "expected"), [("crash", "error"), ("silent", "unknown"),
                                                ("sat", "sat")])
def test_run_instance_always_writes_a_result(tmp_path, fake_env, mode, expected):
    results = tmp_path / "r.txt"
    results.write_text("stale result of an earlier run\n")
    proc = script("run_instance.sh", "v1", "x", TINY_ONNX, TINY_SAT, results, 30,
                  env=dict(fake_env, FAKE_MODE=mode))
    assert proc.returncode == 0, proc.stderr
    assert results.read_text().splitlines()[0] == expected


@pytest.mark.parametrize("mode", ["hang", "stubborn"])  # stubborn ignores SIGTERM: SIGKILL
def test_run_instance_kills_at_the_timeout(tmp_path, fake_env, mode):
    results = tmp_path / "r.txt"
    start = time.monotonic()
    proc = script("run_instance.sh", "v1", "x", TINY_ONNX, TINY_SAT, results, 1,
                  env=dict(fake_env, FAKE_MODE=mode))
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 5
    assert results.read_text() == "timeout\n"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_run_instance_interrupted_writes_unknown(tmp_path, fake_env, signum, code):
    results = tmp_path / "r.txt"
    proc = subprocess.Popen(["bash", str(SCRIPTS / "run_instance.sh"), "v1", "x", str(TINY_ONNX),
                             str(TINY_SAT), str(results), "60"],
                            env=dict(fake_env, FAKE_MODE="hang"), stderr=subprocess.PIPE,
                            text=True)
    record = Path(fake_env["FAKE_RECORD"])
    deadline = time.monotonic() + 10
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == code, stderr
    assert results.read_text() == "unknown\n"


def test_run_instance_real_genbab_sat(tmp_path):
    results = tmp_path / "results.txt"
    proc = script("run_instance.sh", "v1", "digits", TINY_ONNX, TINY_SAT, results, 20,
                  env=dict(os.environ, GENBAB_PYTHON=sys.executable, GENBAB_ARGS="--device cpu"))
    assert proc.returncode == 0, proc.stderr
    lines = results.read_text().splitlines()
    assert lines[0] == "sat" and lines[1] == "(" and lines[2].startswith("(X_0 ")


def test_run_instance_real_genbab_killed_still_writes(tmp_path):
    results = tmp_path / "results.txt"
    start = time.monotonic()
    proc = script("run_instance.sh", "v1", "digits", TANH_ONNX, TANH_UNSAT, results, 1.5,
                  env=dict(os.environ, GENBAB_PYTHON=sys.executable, GENBAB_ARGS="--device cpu"))
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 6
    assert results.read_text().splitlines()[0] in ("timeout", "unsat")


SIGNAL_CHILD = '''
import sys, time
from pathlib import Path
from genbab.signals import install_signal_handlers
path, timeout, write = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "write"
assert install_signal_handlers(path, timeout)
if write:
    Path(path).write_text("sat\\n")
print("ready", flush=True)
time.sleep(60)
'''


@pytest.mark.parametrize(("signum", "timeout", "write", "expected", "code"), [
    (signal.SIGTERM, 60, False, "unknown", 143),
    (signal.SIGTERM, 0, False, "timeout", 143),
    (signal.SIGINT, 60, False, "unknown", 130),
    (signal.SIGTERM, 0, True, "sat", 143),  # the run's own result is kept
])
def test_signal_handlers_write_a_result(tmp_path, signum, timeout, write, expected, code):
    results = tmp_path / "r.txt"
    results.write_text("stale\n")
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_CHILD, str(results), str(timeout),
                             "write" if write else "no"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == code, stderr
    assert results.read_text() == f"{expected}\n"
    assert not list(tmp_path.glob("*.tmp"))
