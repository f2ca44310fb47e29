"""``genbab batch`` (genbab.batch), driven by a fake verifier.

The fake verifier picks its verdict from the vnnlib file name (``unsat_*``,
``sat_*``, ``unknown_*``; ``crash_*`` exits non-zero, ``hang_*`` sleeps past
every limit, ``silent_*`` exits 0 without a results file, ``slow_<verdict>_*``
sleeps a little first) and records its pid, so the runner's bookkeeping,
kills and resume are tested without the real verifier.
"""
from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genbab import batch, batch_cli

FAKE_VERIFIER = '''
import os, sys, time
from pathlib import Path
args = sys.argv[1:]
assert args[0] == "verify", args
spec = Path(args[2]).name
results = Path(args[args.index("--results-file") + 1])
pids = Path(sys.argv[0]).with_name("pids")
with open(pids, "a") as handle:
    handle.write(f"{os.getpid()}\\n")
kind = spec.split("_")[0]
if kind == "slow":
    time.sleep(0.25)
    kind = spec.split("_")[1]
if kind == "crash":
    print("RuntimeError: simulated crash", file=sys.stderr)
    sys.exit(3)
if kind == "hang":
    time.sleep(60)
if kind == "sat":
    results.write_text("sat\\n(\\n(X_0 0.5)\\n(Y_0 -1)\\n)\\n")
elif kind != "silent":
    results.write_text(kind + "\\n")
'''


@pytest.fixture
def fake(tmp_path) -> str:
    path = tmp_path / "fake_verifier.py"
    path.write_text(FAKE_VERIFIER)
    return f"{sys.executable} {path}"


def make_instances(root: Path, specs: list[str], timeout: float = 5.0) -> Path:
    """A benchmark folder with one (empty) model and one line per property name."""
    (root / "onnx").mkdir(parents=True, exist_ok=True)
    (root / "vnnlib").mkdir(exist_ok=True)
    (root / "onnx" / "net.onnx").write_bytes(b"")
    for spec in specs:
        (root / "vnnlib" / spec).write_text("")
    path = root / "instances.csv"
    path.write_text("".join(f"onnx/net.onnx,vnnlib/{s},{timeout}\n" for s in specs))
    return path


def run_batch(args: list, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genbab.batch", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def triples(path: Path) -> list[tuple[str, str, str]]:
    return sorted((r["onnx"], r["vnnlib"], r["result"]) for r in read_rows(path))


def test_results_layout_counterexamples_and_errors(tmp_path, fake):
    instances = make_instances(tmp_path / "bench", [
        "unsat_1.vnnlib", "sat_1.vnnlib", "unknown_1.vnnlib", "crash_1.vnnlib",
        "silent_1.vnnlib"])
    with open(instances, "a") as handle:
        handle.write("onnx/net.onnx,vnnlib/hang_1.vnnlib,0.5\n")
    (tmp_path / "bench" / "vnnlib" / "hang_1.vnnlib").write_text("")
    out = tmp_path / "res" / "run.csv"
    proc = run_batch([instances, "--out", out, "--command", fake, "--workers", "3",
                      "--kill-grace", "0.3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines()[0] == "onnx,vnnlib,prepare_time,result,run_time"
    rows = read_rows(out)
    assert {Path(r["vnnlib"]).name: r["result"] for r in rows} == {
        "unsat_1.vnnlib": "unsat", "sat_1.vnnlib": "sat", "unknown_1.vnnlib": "unknown",
        "crash_1.vnnlib": "error", "silent_1.vnnlib": "error", "hang_1.vnnlib": "timeout"}
    assert all(r["onnx"] == "onnx/net.onnx" and r["prepare_time"] == "0" for r in rows)
    times = {Path(r["vnnlib"]).name: float(r["run_time"]) for r in rows}
    assert 0.5 <= times["hang_1.vnnlib"] < 5
    cex = tmp_path / "res" / "run_cex"
    assert [p.name for p in cex.iterdir()] == ["net__sat_1.counterexample"]
    assert (cex / "net__sat_1.counterexample").read_text().startswith("sat\n(\n(X_0 0.5)")
    assert "simulated crash" in (tmp_path / "res" / "run_logs" / "net__crash_1.log").read_text()
    assert "error: net__crash_1: exit code 3: RuntimeError: simulated crash" in proc.stderr
    assert "bench" in proc.stdout and "instances" in proc.stdout  # the summary table


def test_progress_counts(tmp_path, fake):
    instances = make_instances(tmp_path, ["unsat_1.vnnlib", "unsat_2.vnnlib", "sat_1.vnnlib",
                                          "unknown_1.vnnlib", "crash_1.vnnlib"])
    proc = run_batch([instances, "--out", tmp_path / "r.csv", "--command", fake], tmp_path)
    assert proc.returncode == 0, proc.stderr
    final = "verified=2 falsified=1 unknown=1 (timeout=0) errors=1"
    assert "5/5" in proc.stderr and final in proc.stderr
    assert f"5 of 5 finished: {final}" in proc.stderr


def test_timeouts_config_device_and_root_reach_the_verifier(tmp_path):
    recorder = tmp_path / "recorder.py"
    recorder.write_text(
        "import sys, json\nfrom pathlib import Path\n"
        "a = sys.argv[1:]\nPath(a[a.index('--results-file') + 1]).write_text('unknown\\n')\n"
        "log = Path(sys.argv[0]).with_suffix('.jsonl')\n"
        "log.write_text(log.read_text() + json.dumps(a) + '\\n' if log.exists() "
        "else json.dumps(a) + '\\n')\n")
    bench = tmp_path / "bench"
    make_instances(bench, ["x.vnnlib"], timeout=40)
    listing = tmp_path / "elsewhere.csv"
    listing.write_text("onnx,vnnlib,timeout\n" + (bench / "instances.csv").read_text())
    proc = run_batch([listing, "--root", bench, "--out", tmp_path / "r.csv", "--command",
                      f"{sys.executable} {recorder}", "--timeout-scale", "0.5", "--config",
                      "cfg.yaml", "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(recorder.with_suffix(".jsonl").read_text())
    assert argv[0] == "verify"
    assert argv[1:3] == [str((bench / "onnx/net.onnx").resolve()),
                         str((bench / "vnnlib/x.vnnlib").resolve())]
    assert argv[3:5] == ["--timeout", f"{batch.inner_timeout(20.0):g}"]
    assert argv[-4:] == ["--config", str((tmp_path / "cfg.yaml").resolve()), "--device", "cpu"]


def _wait_for_rows(path: Path, count: int, proc: subprocess.Popen, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= count + 1:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} rows in {path} in time")


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped does not count)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "(zombie)" not in status


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_killed_batch_resumes_to_the_same_rows(tmp_path, fake, signum):
    specs = [f"slow_{v}_{i}.vnnlib" for i, v in enumerate(["unsat", "sat", "unknown", "unsat",
                                                           "sat", "crash", "unsat"])]
    instances = make_instances(tmp_path / "bench", specs)
    reference = tmp_path / "reference.csv"
    proc = run_batch([instances, "--out", reference, "--command", fake, "--workers", "3"],
                     tmp_path)
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "killed.csv"
    (tmp_path / "pids").unlink()
    first = subprocess.Popen([sys.executable, "-m", "genbab.batch", str(instances), "--out",
                              str(out), "--command", fake, "--workers", "2"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(out, 2, first)
    first.send_signal(signum)
    _, stderr = first.communicate(timeout=20)
    assert first.returncode == (130 if signum == signal.SIGTERM else -signal.SIGKILL), stderr
    kept = read_rows(out)
    assert 2 <= len(kept) < len(specs)
    if sys.platform.startswith("linux"):  # no verifier outlives the batch
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids)

    (tmp_path / "pids").unlink()
    proc = run_batch([instances, "--out", out, "--command", fake, "--workers", "2", "--resume"],
                     tmp_path)
    assert proc.returncode == 0, proc.stderr
    rerun = len((tmp_path / "pids").read_text().split())
    assert rerun == len(specs) - len(kept)  # nothing finished is run again
    assert read_rows(out)[:len(kept)] == kept
    assert triples(out) == triples(reference)
    assert f"{len(specs)}/{len(specs)}" in proc.stderr


def test_resume_drops_a_torn_last_line(tmp_path, fake):
    instances = make_instances(tmp_path, ["unsat_1.vnnlib", "sat_1.vnnlib", "unknown_1.vnnlib"])
    out = tmp_path / "r.csv"
    out.write_text("onnx,vnnlib,prepare_time,result,run_time\n"
                   "onnx/net.onnx,vnnlib/unsat_1.vnnlib,0,unsat,0.100\n"
                   "onnx/net.onnx,vnnlib/sat_1.vnn")
    proc = run_batch([instances, "--out", out, "--command", fake, "--resume"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out)
    assert [Path(r["vnnlib"]).name for r in rows] == ["unsat_1.vnnlib", "sat_1.vnnlib",
                                                      "unknown_1.vnnlib"]
    assert rows[0]["run_time"] == "0.100"


def test_existing_out_needs_resume_and_bad_inputs_exit_3(tmp_path, fake):
    instances = make_instances(tmp_path, ["unsat_1.vnnlib"])
    out = tmp_path / "r.csv"
    out.write_text("onnx,vnnlib,prepare_time,result,run_time\n")
    out.write_text(out.read_text() + "a,b,0,unsat,1\n")
    proc = run_batch([instances, "--out", out, "--command", fake], tmp_path)
    assert proc.returncode == 3 and "--resume" in proc.stderr
    out.write_text("something,else\n")
    assert run_batch([instances, "--out", out, "--command", fake, "--resume"],
                     tmp_path).returncode == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("onnx/net.onnx,vnnlib/x.vnnlib,soon\n")
    proc = run_batch([bad, "--out", tmp_path / "o.csv", "--command", fake], tmp_path)
    assert proc.returncode == 3 and "bad.csv:1" in proc.stderr
    assert run_batch([instances, "--workers", "0"], tmp_path).returncode == 2


def test_resume_of_a_complete_run_runs_nothing(tmp_path, fake):
    instances = make_instances(tmp_path, ["unsat_1.vnnlib", "unsat_1.vnnlib"])  # a duplicate
    out = tmp_path / "r.csv"
    assert run_batch([instances, "--out", out, "--command", fake], tmp_path).returncode == 0
    assert len(read_rows(out)) == 2
    (tmp_path / "pids").unlink()
    proc = run_batch([instances, "--out", out, "--command", fake, "--resume"], tmp_path)
    assert proc.returncode == 0 and "0 to run" in proc.stderr
    assert not (tmp_path / "pids").exists() and len(read_rows(out)) == 2


def test_default_out_is_named_after_the_root(tmp_path, fake):
    instances = make_instances(tmp_path / "my_bench", ["unsat_1.vnnlib"])
    proc = run_batch([instances, "--command", fake], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert triples(tmp_path / "results" / "my_bench.csv") == [
        ("onnx/net.onnx", "vnnlib/unsat_1.vnnlib", "unsat")]


def test_helpers():
    assert batch.inner_timeout(60) == 54.0
    assert batch.inner_timeout(1) == 0.5
    assert batch.inner_timeout(300) == 282.0
    names = batch.instance_names([batch.Instance("onnx/a.onnx.gz", "vnnlib/p_0.012.vnnlib", 1),
                                  batch.Instance("x/a.onnx", "y/p_0.012.vnnlib", 1),
                                  batch.Instance("onnx/b.onnx", "vnnlib/q.vnnlib", 1)])
    assert names == ["a__p_0.012__0", "a__p_0.012__1", "b__q"]
    done = [{"onnx": "a", "vnnlib": "p"}]
    inst = [batch.Instance("a", "p", 1), batch.Instance("a", "p", 1), batch.Instance("b", "q", 1)]
    assert batch.pending_instances(inst, done) == [1, 2]


def test_parser_fits_the_genbab_subcommands():
    parser = argparse.ArgumentParser(prog="genbab")
    sub = parser.add_subparsers(dest="command")
    batch_cli.add_batch_parser(sub)
    args = parser.parse_args(["batch", "i.csv", "--command", "python fake.py", "--resume"])
    assert args.command == "batch" and args.verifier_command == "python fake.py"
    assert args.resume and args.workers == 1 and args.timeout_scale == 1.0
