"""``genbab report`` (genbab.report_cli, the table readers of genbab.report, genbab.plot)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from genbab import report, report_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRUTH_HEADER = "onnx,vnnlib,timeout,consensus,basis,sat_claims,unsat_claims\n"


def make_truth(folder: Path, rows: list[tuple[str, str]]) -> Path:
    """A benchmark folder with a ground_truth.csv of (property name, consensus) rows."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ground_truth.csv"
    path.write_text(TRUTH_HEADER + "".join(f"onnx/net.onnx,vnnlib/{p},60,{c},,,\n"
                                           for p, c in rows))
    return path


def batch_csv(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    """A results CSV as ``genbab batch`` writes it: (property name, result, run time)."""
    path.write_text("onnx,vnnlib,prepare_time,result,run_time\n" + "".join(
        f"onnx/net.onnx,vnnlib/{p},0,{r},{t}\n" for p, r, t in rows))
    return path


def run_report(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genbab.report_cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def bench(tmp_path) -> Path:
    return make_truth(tmp_path / "bench_a", [("p1.vnnlib", "unsat"), ("p2.vnnlib", "sat"),
                                             ("p3.vnnlib", "unsat"), ("p4.vnnlib", "unknown")])


def test_summary_numbers_and_plot(tmp_path, bench):
    pytest.importorskip("matplotlib")
    run = batch_csv(tmp_path / "ours.csv", [("p1.vnnlib", "unsat", 2.0), ("p2.vnnlib", "sat", 1.0),
                                            ("p3.vnnlib", "timeout", 60.5),
                                            ("p4.vnnlib", "error", 0.5)])
    unsolved = batch_csv(tmp_path / "nothing.csv", [("p1.vnnlib", "timeout", 60.0)])
    plot = tmp_path / "plots" / "cactus.png"
    proc = run_report([run, unsolved, "--ground-truth", bench.parent, "--plot", plot], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Run: ours\n")
    assert "Run: nothing\n" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("bench_a"))
    assert row.split() == ["bench_a", "4", "1", "1", "0", "1", "1", "64.0s", "1.5s",
                           "1/1", "(100%)"]
    assert "Disagreements with the ground-truth consensus: none" in proc.stdout
    assert plot.read_bytes().startswith(PNG_SIGNATURE)


def test_soundness_failure_first_and_exit_2(tmp_path, bench):
    good = batch_csv(tmp_path / "good.csv", [("p1.vnnlib", "unsat", 1.0),
                                             ("p2.vnnlib", "sat", 1.0)])
    bad = batch_csv(tmp_path / "bad.csv", [("p1.vnnlib", "sat", 1.0),
                                           ("p2.vnnlib", "unsat", 3.0)])
    proc = run_report([good, bad, "--ground-truth", bench], tmp_path)
    assert proc.returncode == 2
    first_block = proc.stdout.split("\n\n")[0]
    assert first_block.startswith("!!!") and "SOUNDNESS FAILURE: 1 instance" in first_block
    assert "[bad] bench_a: onnx/net.onnx vnnlib/p2.vnnlib -> unsat, consensus sat" in first_block
    assert "Run: good" in proc.stdout and "Run: bad" in proc.stdout
    assert "Disagreements with the ground-truth consensus: 1" in proc.stdout
    assert "[bad] bench_a: onnx/net.onnx vnnlib/p1.vnnlib -> sat, consensus unsat" in proc.stdout
    assert "SOUNDNESS FAILURE on 1 instance(s)" in proc.stderr
    markdown = run_report([bad, "--ground-truth", bench, "--markdown"], tmp_path)
    assert markdown.returncode == 2 and markdown.stdout.startswith("**SOUNDNESS FAILURE")
    assert "| bench_a | 2 | 1 | 1 |" in markdown.stdout


def test_without_ground_truth_and_unreadable_input(tmp_path):
    run = batch_csv(tmp_path / "r.csv", [("p1.vnnlib", "unsat", 1.0)])
    proc = run_report([run], tmp_path)
    assert proc.returncode == 0 and "agreement not checked" in proc.stdout
    assert run_report([tmp_path / "missing.csv"], tmp_path).returncode == 3
    (tmp_path / "odd.csv").write_text("a,b\n")
    proc = run_report([tmp_path / "odd.csv"], tmp_path)
    assert proc.returncode == 3 and "odd.csv:1" in proc.stderr
    proc = run_report([run, "--ground-truth", tmp_path / "nowhere"], tmp_path)
    assert proc.returncode == 3


def test_layouts_are_read(tmp_path):
    plain = tmp_path / "plain.csv"  # genbab batch rows without the header
    plain.write_text("onnx/net.onnx,vnnlib/p1.vnnlib,0,holds,1.5\n")
    official = tmp_path / "official.csv"  # VNN-COMP: category first, any path prefix
    official.write_text("acasxu,./benchmarks/acasxu/onnx/net.onnx,./benchmarks/acasxu/vnnlib/"
                        "p2.vnnlib,0.1,run_instance_timeout,30.2\n")
    reference = tmp_path / "ref.csv"  # the reference results' header
    reference.write_text("bench,onnx,vnnlib,consensus,result,wall,vtime\n"
                         "b,onnx/net.onnx,vnnlib/p3.vnnlib,sat,sat,7.2,1.4\n")
    ours = report.read_results_table(plain)[0]
    assert (ours.benchmark, ours.result, ours.time, ours.note) == ("", "unsat", 1.5,
                                                                   "result 'holds'")
    theirs = report.read_results_table(official)[0]
    assert (theirs.benchmark, theirs.result, theirs.time) == ("acasxu", "timeout", 30.2)
    ref = report.read_results_table(reference)[0]
    assert (ref.benchmark, ref.consensus, ref.time, ref.agreement) == ("b", "sat", 7.2,
                                                                       report.AGREE)
    records = [report.make_record("b", "m.onnx", "p.vnnlib", 10, "unsat", 1.0, "unsat")]
    report.write_records_csv(records, tmp_path / "bench.csv")  # scripts/benchmark.py output
    assert report.read_results_table(tmp_path / "bench.csv") == records


def test_ground_truth_matching(tmp_path, bench):
    truth = report.GroundTruth()
    truth.add_file(bench)
    assert truth.lookup("onnx/net.onnx", "vnnlib/p2.vnnlib").consensus == "sat"
    assert truth.lookup("/x/bench_a/onnx/net.onnx.gz", "./vnnlib/p2.vnnlib").consensus == "sat"
    assert truth.lookup("net.onnx", "p3.vnnlib").benchmark == "bench_a"
    assert truth.lookup("onnx/net.onnx", "vnnlib/p9.vnnlib") is None
    other = make_truth(tmp_path / "bench_b", [("p2.vnnlib", "unsat"), ("p3.vnnlib", "unsat")])
    truth.add_file(other)
    assert truth.lookup("onnx/net.onnx", "vnnlib/p2.vnnlib") is None  # ambiguous
    assert truth.lookup("onnx/net.onnx", "vnnlib/p3.vnnlib").benchmark == "bench_a"
    rows = report.with_ground_truth(
        [report.make_record("", "benchmarks/acasxu/onnx/n.onnx", "v.vnnlib", 0, "sat", 1, ""),
         report.make_record("", "onnx/net.onnx", "vnnlib/p1.vnnlib", 0, "sat", 1, "")],
        truth, "run")
    assert [(r.benchmark, r.consensus, r.agreement, r.timeout) for r in rows] == [
        ("acasxu", "", report.NO_CONSENSUS, 0.0), ("bench_a", "unsat", report.DISAGREE, 60.0)]


def test_run_labels_and_solved_times(tmp_path):
    paths = [Path("a/run.csv"), Path("b/run.csv"), Path("c/other.csv")]
    assert report_cli.run_labels(paths) == ["a/run", "b/run", "other"]
    records = [report.make_record("b", "m", f"p{i}", 0, res, t, cons) for i, (res, t, cons) in
               enumerate([("unsat", 3.0, "unsat"), ("sat", 1.0, "sat"),
                          ("unsat", 2.0, "sat"), ("timeout", 9.0, "sat")])]
    assert report.solved_times(records) == [1.0, 3.0]  # the soundness failure is not solved


def test_parser_fits_the_genbab_subcommands():
    parser = argparse.ArgumentParser(prog="genbab")
    sub = parser.add_subparsers(dest="command")
    report_cli.add_report_parser(sub)
    args = parser.parse_args(["report", "a.csv", "b.csv", "--ground-truth", "g1",
                              "--ground-truth", "g2", "--plot", "c.png"])
    assert args.command == "report" and args.results == ["a.csv", "b.csv"]
    assert args.ground_truth == ["g1", "g2"] and args.plot == "c.png" and not args.markdown
