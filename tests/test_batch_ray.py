"""``genbab batch --ray`` (genbab.batch_ray) on a Ray head started on this machine.

A module fixture starts ``ray start --head --block`` (2 CPUs, no dashboard,
usage stats off, its own short temp dir: Ray's socket paths must stay short)
and stops it through its pid (SIGTERM: the head stops what it started).  The
batches connect to it at ``127.0.0.1:<port>``; Ray 2.60 still advertises the
machine's own address for the node (it turns a loopback --node-ip-address
into that), but nothing leaves this machine.

Three shipped examples, one of them already in the results file, check real
verdicts and ``--resume`` through Ray; the fake verifier of ``test_batch``
checks that a Ray run writes the same results file, counterexamples and logs
as a local one, and (slow) that SIGTERM cancels the tasks and keeps the
finished rows.  The tests without Ray check the one-line error when Ray
is missing and that a run without ``--ray`` never imports it.
"""
from __future__ import annotations

import csv
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_batch import FAKE_VERIFIER, _alive, _wait_for_rows, make_instances, read_rows, triples

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "vnnlib_specs" / "examples"
# three quick examples with a known verdict: two found by the attack, one proved
# (the proved one is given as finished, so --resume runs only the two quicker ones)
QUICK_EXAMPLES = ["vnnlib/digits_sigmoid_3x32_idx0_eps0.01.vnnlib",
                  "vnnlib/digits_sigmoid_tiny_idx0_eps0.08.vnnlib",
                  "vnnlib/digits_tanh_2x32_idx1_eps0.05.vnnlib"]
FINISHED_ROW = ("onnx/digits_tanh_2x32.onnx,vnnlib/digits_tanh_2x32_idx1_eps0.05.vnnlib,0,"
                "unsat,7.250")
# Ray 2.60 turns token authentication on by itself once ~/.ray/auth_token exists;
# the head, its workers and the drivers here share one explicit token instead
RAY_TOKEN = secrets.token_hex(32)
FAKE_SPECS = ["unsat_1.vnnlib", "sat_1.vnnlib", "unknown_1.vnnlib", "crash_1.vnnlib",
              "silent_1.vnnlib"]


def _env() -> dict[str, str]:
    """This checkout's genbab first on the path (for the driver and Ray's workers), Ray's token."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=RAY_TOKEN)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_head(temp_dir: Path, port: int) -> subprocess.Popen:
    """``ray start --head --block``, returned once the runtime is up."""
    log = temp_dir / "head.log"
    with open(log, "wb") as handle:
        head = subprocess.Popen(
            ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp_dir}"],
            stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=_env(),
            start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return head
        if head.poll() is not None:
            break
        time.sleep(0.2)
    _stop_head(head)
    pytest.fail(f"the Ray head did not start:\n{log.read_text(errors='replace')[-3000:]}")


def _stop_head(head: subprocess.Popen) -> None:
    """SIGTERM the head (it stops its own processes); SIGKILL its process group if it hangs."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=40)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)  # the group started with the head, whatever is left
    except (ProcessLookupError, PermissionError):
        pass
    head.wait()


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """The address of a Ray head on this machine, for the tests of this module."""
    pytest.importorskip("ray")
    if shutil.which("ray") is None:
        pytest.skip("the 'ray' command is not on PATH")
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    port = _free_port()
    head = _start_head(temp_dir, port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def fake(tmp_path) -> str:
    path = tmp_path / "fake_verifier.py"
    path.write_text(FAKE_VERIFIER)
    return f"{sys.executable} {path}"


def batch_command(args: list) -> list[str]:
    return [sys.executable, "-m", "genbab.batch", *map(str, args)]


def run_batch(args: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(batch_command(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env=_env())


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_examples_through_ray_resume_to_the_expected_verdicts(tmp_path, ray_address):
    with open(EXAMPLES / "expected.csv", newline="") as handle:
        expected = {(r["onnx"], r["vnnlib"]): r["expected"] for r in csv.DictReader(handle)}
    rows = [line.split(",") for line in (EXAMPLES / "instances.csv").read_text().splitlines()
            if line.split(",")[1] in QUICK_EXAMPLES]
    instances = tmp_path / "instances.csv"
    instances.write_text("".join(",".join(row) + "\n" for row in rows))
    out = tmp_path / "res" / "ray.csv"
    out.parent.mkdir()
    out.write_text(f"onnx,vnnlib,prepare_time,result,run_time\n{FINISHED_ROW}\n")
    proc = run_batch([instances, "--root", EXAMPLES, "--out", out, "--timeout", "30",
                      "--workers", "2", "--resume", "--ray", ray_address], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 already in" in proc.stderr and "2 to run, 2 at a time on Ray" in proc.stderr
    assert "Ray cluster of 1 node(s), 2 CPU(s)" in proc.stderr
    lines = out.read_text().splitlines()
    assert lines[:2] == ["onnx,vnnlib,prepare_time,result,run_time", FINISHED_ROW]
    got = read_rows(out)
    assert {(r["onnx"], r["vnnlib"]): r["result"] for r in got} == {
        (onnx, vnnlib): expected[onnx, vnnlib] for onnx, vnnlib, _ in rows}
    assert sorted(r["result"] for r in got) == ["sat", "sat", "unsat"]
    assert all(r["prepare_time"] == "0" and 0 < float(r["run_time"]) < 40 for r in got)
    cex = _files(tmp_path / "res" / "ray_cex")
    assert sorted(cex) == ["digits_sigmoid_3x32__digits_sigmoid_3x32_idx0_eps0.01.counterexample",
                           "digits_sigmoid_tiny__digits_sigmoid_tiny_idx0_eps0.08.counterexample"]
    assert all(text.startswith("sat\n(") and "(Y_9 " in text for text in cex.values())
    logs = _files(tmp_path / "res" / "ray_logs")  # the finished instance was not run again
    assert sorted(logs) == ["digits_sigmoid_3x32__digits_sigmoid_3x32_idx0_eps0.01.log",
                            "digits_sigmoid_tiny__digits_sigmoid_tiny_idx0_eps0.08.log"]
    assert all(logs.values())


def test_ray_run_writes_what_a_local_run_writes(tmp_path, ray_address, fake):
    instances = make_instances(tmp_path / "bench", FAKE_SPECS)
    with open(instances, "a") as handle:
        handle.write("onnx/net.onnx,vnnlib/hang_1.vnnlib,0.5\n")
    (tmp_path / "bench" / "vnnlib" / "hang_1.vnnlib").write_text("")
    common = ["--command", fake, "--workers", "2", "--kill-grace", "0.3"]
    local = run_batch([instances, "--out", tmp_path / "local" / "run.csv", *common], tmp_path)
    assert local.returncode == 0, local.stderr
    remote = run_batch([instances, "--out", tmp_path / "ray" / "run.csv", *common,
                        "--ray", ray_address], tmp_path)
    assert remote.returncode == 0, remote.stderr
    local_csv, ray_csv = tmp_path / "local" / "run.csv", tmp_path / "ray" / "run.csv"
    assert ray_csv.read_text().splitlines()[0] == local_csv.read_text().splitlines()[0]
    assert triples(ray_csv) == triples(local_csv)
    assert {Path(r["vnnlib"]).name: r["result"] for r in read_rows(ray_csv)} == {
        "unsat_1.vnnlib": "unsat", "sat_1.vnnlib": "sat", "unknown_1.vnnlib": "unknown",
        "crash_1.vnnlib": "error", "silent_1.vnnlib": "error", "hang_1.vnnlib": "timeout"}
    assert _files(tmp_path / "ray" / "run_cex") == _files(tmp_path / "local" / "run_cex")
    ray_logs, local_logs = _files(tmp_path / "ray" / "run_logs"), _files(tmp_path / "local" / "run_logs")
    assert sorted(ray_logs) == sorted(local_logs)
    assert ray_logs["net__crash_1.log"] == local_logs["net__crash_1.log"]
    assert "error: net__crash_1: exit code 3: RuntimeError: simulated crash" in remote.stderr
    assert "6 of 6 finished" in remote.stderr and "6 to run, 2 at a time on Ray" in remote.stderr


@pytest.mark.slow  # about 5 s on top of the others; the default run keeps the module near 20 s
def test_sigterm_cancels_ray_tasks_and_keeps_finished_rows(tmp_path, ray_address, fake):
    specs = ["unsat_1.vnnlib", "sat_1.vnnlib", "hang_1.vnnlib", "hang_2.vnnlib",
             "unsat_2.vnnlib"]
    instances = make_instances(tmp_path, specs, timeout=60)
    out = tmp_path / "r.csv"
    batch = subprocess.Popen(batch_command([instances, "--out", out, "--command", fake,
                                            "--workers", "2", "--ray", ray_address]),
                             cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    _wait_for_rows(out, 2, batch, limit=60)
    deadline = time.monotonic() + 30  # both hanging verifiers have started
    while len((tmp_path / "pids").read_text().split()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    batch.send_signal(signal.SIGTERM)
    _, stderr = batch.communicate(timeout=30)
    assert batch.returncode == 130, stderr
    assert "interrupted; rerun with --resume" in stderr
    assert sorted(Path(r["vnnlib"]).name for r in read_rows(out)) == ["sat_1.vnnlib",
                                                                      "unsat_1.vnnlib"]
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    deadline = time.monotonic() + 10  # the cancelled tasks' verifiers die with their workers
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_ray_not_installed_is_one_line_and_exit_2(tmp_path, fake):
    instances = make_instances(tmp_path, ["unsat_1.vnnlib"])
    hide_ray = "import sys; sys.modules['ray'] = None; from genbab.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", hide_ray, "batch", str(instances), "--out",
                           str(tmp_path / "r.csv"), "--command", fake, "--ray"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=_env(), check=False)
    assert proc.returncode == 2
    assert proc.stderr == ("genbab batch: error: --ray needs the optional dependency: "
                           "pip install 'genbab[ray]'\n")
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "pids").exists()


def test_nobody_at_the_address_is_exit_2(tmp_path, fake):
    pytest.importorskip("ray")
    instances = make_instances(tmp_path, ["unsat_1.vnnlib"])
    port = _free_port()
    proc = run_batch([instances, "--out", tmp_path / "r.csv", "--command", fake, "--ray",
                      f"127.0.0.1:{port}"], tmp_path, timeout=60)
    assert proc.returncode == 2
    assert f"genbab batch: error: no Ray cluster at 127.0.0.1:{port}" in proc.stderr
    assert not (tmp_path / "r.csv").exists()


def test_a_run_without_ray_never_imports_it(tmp_path, fake):
    instances = make_instances(tmp_path, ["unsat_1.vnnlib"])
    script = ("import sys; from genbab.batch import main; code = main(sys.argv[1:]); "
              "sys.exit(code if 'ray' not in sys.modules else 99)")
    proc = subprocess.run([sys.executable, "-c", script, str(instances), "--out",
                           str(tmp_path / "r.csv"), "--command", fake], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    assert triples(tmp_path / "r.csv") == [("onnx/net.onnx", "vnnlib/unsat_1.vnnlib", "unsat")]
