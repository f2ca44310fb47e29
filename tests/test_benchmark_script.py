"""Tests of scripts/benchmark.py and genbab.report, driven by a fake verifier.

The fake verifier is a tiny script that picks its verdict from the vnnlib
file name (``unsat_*``, ``sat_*``, ``unknown_*``; ``crash_*`` exits non-zero,
``hang_*`` sleeps past every limit, ``silent_*`` exits 0 without a results
file), so the runner's bookkeeping is tested without the real CLI.
"""
from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genbab import report

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "benchmark.py"

FAKE_VERIFIER = '''
import sys, time
from pathlib import Path
args = sys.argv[1:]
assert args[0] == "verify", args
spec = Path(args[2]).name
results = Path(args[args.index("--results-file") + 1])
kind = spec.split("_")[0]
if kind == "crash":
    print("starting", file=sys.stderr)
    print("RuntimeError: simulated crash", file=sys.stderr)
    sys.exit(3)
if kind == "hang":
    time.sleep(60)
if kind != "silent":
    results.write_text(kind + "\\n")
'''

GROUND_TRUTH_HEADER = "onnx,vnnlib,timeout,consensus,basis,sat_claims,unsat_claims\n"


def make_benchmark(root: Path, name: str, rows: list[tuple[str, str]]) -> Path:
    """A benchmark folder with one model and one property file per (spec, consensus)."""
    bench = root / name
    (bench / "onnx").mkdir(parents=True)
    (bench / "vnnlib").mkdir()
    (bench / "onnx" / "net.onnx").write_bytes(b"")
    instances, truth = [], [GROUND_TRUTH_HEADER]
    for spec, consensus in rows:
        (bench / "vnnlib" / spec).write_text("")
        instances.append(f"onnx/net.onnx,vnnlib/{spec},0.2\n")
        truth.append(f"onnx/net.onnx,vnnlib/{spec},0.2,{consensus},,,\n")
    (bench / "instances.csv").write_text("".join(instances))
    (bench / "ground_truth.csv").write_text("".join(truth))
    return bench


@pytest.fixture()
def fake_command(tmp_path: Path) -> str:
    """The --command value that runs the fake verifier."""
    script = tmp_path / "fake_verifier.py"
    script.write_text(FAKE_VERIFIER)
    return shlex.join([sys.executable, str(script)])


def run_script(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the benchmark script as a user would, from a directory outside the repo."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


MIXED_ROWS = [
    ("unsat_a.vnnlib", "unsat"),
    ("unsat_b.vnnlib", "unsat_low_trust_only"),
    ("sat_a.vnnlib", "sat"),
    ("sat_b.vnnlib", "unsat"),          # our sat vs consensus unsat: a disagreement
    ("unknown_a.vnnlib", "sat"),        # sat row we could not falsify
    ("crash_a.vnnlib", "unknown"),
    ("hang_a.vnnlib", "unsat"),
    ("silent_a.vnnlib", "conflict"),
]


def test_mixed_benchmark_counts_outputs_and_errors(tmp_path, fake_command):
    bench = make_benchmark(tmp_path, "mixed", MIXED_ROWS)
    out = tmp_path / "res" / "run1"
    start = time.monotonic()
    proc = run_script([str(bench), "--command", fake_command, "--out", str(out),
                       "--kill-factor", "1", "--kill-margin", "0.5", "--workers", "4"], tmp_path)
    assert time.monotonic() - start < 20
    assert proc.returncode == 0, proc.stderr
    rows = {Path(r["vnnlib"]).name: r for r in read_csv(Path(f"{out}.csv"))}
    assert [Path(r["vnnlib"]).name for r in read_csv(Path(f"{out}.csv"))] == \
        [spec for spec, _ in MIXED_ROWS]  # job order, not completion order
    assert rows["unsat_a.vnnlib"]["result"] == "unsat"
    assert rows["unsat_a.vnnlib"]["agreement"] == report.AGREE
    assert rows["sat_b.vnnlib"]["agreement"] == report.DISAGREE
    assert rows["crash_a.vnnlib"]["result"] == "error"
    assert "simulated crash" in rows["crash_a.vnnlib"]["note"]
    assert rows["hang_a.vnnlib"]["result"] == "timeout"
    assert rows["silent_a.vnnlib"]["result"] == "error"
    assert "no results file" in rows["silent_a.vnnlib"]["note"]

    meta = json.loads(Path(f"{out}.json").read_text())
    counts = meta["summary"]["benchmarks"]["mixed"]
    assert (counts["instances"], counts["verified"], counts["falsified"], counts["unknown"],
            counts["timeout"], counts["error"]) == (8, 2, 2, 1, 1, 2)
    assert (counts["sat_consensus_falsified"], counts["sat_consensus_total"]) == (1, 2)
    assert counts["soundness_failures"] == 0 and counts["disagreements"] == 1
    assert meta["machine"]["cpu_count"] and meta["machine"]["platform"]
    assert "--command" in meta["command_line"] and meta["date"]
    assert "SOUNDNESS" not in proc.stdout
    assert "Disagreements with the ground-truth consensus: 1" in proc.stdout
    assert "1/2 (50%)" in proc.stdout
    assert proc.stderr.count("/8]") == 8  # one progress line per instance


def test_unsat_on_sat_row_is_a_loud_soundness_failure(tmp_path, fake_command):
    bench = make_benchmark(tmp_path, "bad", [("sat_ok.vnnlib", "sat"),
                                             ("unsat_wrong.vnnlib", "sat")])
    out = tmp_path / "bad_run"
    proc = run_script([str(bench), "--command", fake_command, "--out", str(out)], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith("!!!")
    first_block = proc.stdout.split("\n\n")[0]
    assert "SOUNDNESS FAILURE" in first_block and "unsat_wrong.vnnlib" in first_block
    assert "SOUNDNESS FAILURE" in proc.stderr
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["summary"]["soundness_failures"][0]["vnnlib"] == "vnnlib/unsat_wrong.vnnlib"


def test_selection_options_and_markdown(tmp_path, fake_command):
    first = make_benchmark(tmp_path, "first", [("unsat_1.vnnlib", "unsat"),
                                               ("sat_1.vnnlib", "sat"),
                                               ("unsat_2.vnnlib", "unknown"),
                                               ("unsat_3.vnnlib", "unsat")])
    second = make_benchmark(tmp_path, "second", [("sat_2.vnnlib", "sat"),
                                                 ("unsat_4.vnnlib", "unsat")])
    out = tmp_path / "sel"
    proc = run_script([str(first), str(second), "--command", fake_command, "--out", str(out),
                       "--only-consensus", "sat,unsat", "--filter", "_", "--limit", "2",
                       "--timeout", "5", "--markdown"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(Path(f"{out}.csv"))
    assert [(r["benchmark"], Path(r["vnnlib"]).name) for r in rows] == [
        ("first", "unsat_1.vnnlib"), ("first", "sat_1.vnnlib"),
        ("second", "sat_2.vnnlib"), ("second", "unsat_4.vnnlib")]
    assert {float(r["timeout"]) for r in rows} == {5.0}
    assert "| benchmark | instances |" in proc.stdout
    assert "| TOTAL | 4 | 2 | 2 |" in proc.stdout


def test_extra_args_reach_the_verifier(tmp_path):
    recorder = tmp_path / "recorder.py"
    recorder.write_text(
        "import sys, json\nfrom pathlib import Path\n"
        "a = sys.argv[1:]\nPath(a[a.index('--results-file') + 1]).write_text('unknown\\n')\n"
        "Path(sys.argv[0]).with_suffix('.json').write_text(json.dumps(a))\n")
    bench = make_benchmark(tmp_path, "args", [("x.vnnlib", "unknown")])
    proc = run_script([str(bench), "--command", f"{sys.executable} {recorder}",
                       "--out", str(tmp_path / "a"), "--config", "cfg.yaml", "--device", "cpu",
                       "--extra-args", "--seed 3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(recorder.with_suffix(".json").read_text())
    assert argv[0] == "verify" and argv[1].endswith("net.onnx") and argv[2].endswith("x.vnnlib")
    assert argv[3:5] == ["--timeout", "0.2"]
    assert argv[-6:] == ["--config", "cfg.yaml", "--device", "cpu", "--seed", "3"]


def test_sigterm_kills_running_verifiers_and_keeps_finished_rows(tmp_path, fake_command):
    bench = make_benchmark(tmp_path, "term", [("sat_1.vnnlib", "sat"), ("hang_1.vnnlib", "unsat"),
                                              ("hang_2.vnnlib", "unsat")])
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(bench), "--command", fake_command,
                             "--out", str(out), "--timeout", "100"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not list(tmp_path.glob("term_files/term/0001_*.log")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.terminate()
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 130, stderr
    assert "1 of 3 instance(s) finished" in stderr
    assert [r["result"] for r in read_csv(Path(f"{out}.csv"))] == ["sat"]


@pytest.mark.parametrize("args", [["--only-consensus", "maybe"], ["--filter", "nothing-here"],
                                  ["--limit", "-1"]])
def test_usage_errors_exit_1(tmp_path, fake_command, args):
    bench = make_benchmark(tmp_path, "u", [("unsat_1.vnnlib", "unsat")])
    proc = run_script([str(bench), "--command", fake_command, "--out", str(tmp_path / "u"),
                       *args], tmp_path)
    assert proc.returncode == 1
    assert "error" in proc.stderr


def test_missing_benchmark_dir_exits_1(tmp_path):
    proc = run_script([str(tmp_path / "nope")], tmp_path)
    assert proc.returncode == 1


@pytest.mark.parametrize(("result", "consensus", "expected"), [
    ("unsat", "sat", report.SOUNDNESS_FAILURE),
    ("unsat", "unsat", report.AGREE),
    ("unsat", "unsat_low_trust_only", report.AGREE),
    ("unsat", "sat_unchecked", report.DISAGREE),
    ("sat", "unsat", report.DISAGREE),
    ("sat", "sat", report.AGREE),
    ("sat", "conflict", report.NO_CONSENSUS),
    ("timeout", "sat", report.UNDECIDED),
    ("error", "unsat", report.UNDECIDED),
])
def test_classify(result, consensus, expected):
    assert report.classify(result, consensus) == expected


def test_parse_verdict():
    assert report.parse_verdict("sat\n((X_0 0.5))\n") == "sat"
    assert report.parse_verdict("  UNSAT  \n") == "unsat"
    assert report.parse_verdict("holds") == "unsat"
    assert report.parse_verdict("") is None
    assert report.parse_verdict("maybe") is None


def test_summarise_and_csv_round_trip(tmp_path):
    records = [report.make_record("b", "m.onnx", f"p{i}.vnnlib", 10, res, t, cons)
               for i, (res, t, cons) in enumerate([("unsat", 1.0, "unsat"), ("sat", 3.0, "sat"),
                                                   ("unknown", 10.0, "sat"),
                                                   ("unsat", 5.0, "unsat")])]
    summary = report.summarise(records)
    counts = summary["benchmarks"]["b"]
    assert counts["median_decided_time"] == 3.0 and counts["total_time"] == 19.0
    assert summary["total"] == counts
    path = tmp_path / "r.csv"
    report.write_records_csv(records, path)
    assert report.read_records_csv(path) == records
    table = report.format_report(summary)
    assert "1/2 (50%)" in table and "TOTAL" not in table
