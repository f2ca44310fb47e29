"""Benchmark runner: run the verifier on benchmark folders and compare with ground truth.

Each selected instance of each ``BENCH_DIR`` (``instances.csv`` plus
``ground_truth.csv``, see ``shared/benchmarks/README.md``) runs as its own
subprocess ``<command> verify MODEL SPEC --timeout S --results-file F ...``,
killed (with its process group) at ``timeout * kill_factor + kill_margin``
seconds.  The verdict is the first line of the results file; a kill is a
``timeout``, a non-zero exit or a missing/unreadable results file an ``error``.

Writes ``<out>.csv`` (one row per instance, rewritten as runs finish),
``<out>.json`` (summaries, command line, date, machine) and keeps every
results file and stderr log under ``<out>_files/``.  Prints a progress line
per instance to stderr and the summary table (``genbab.report``) to stdout.

Exit codes: 0 done, 1 usage error, 2 a SOUNDNESS FAILURE (unsat claimed on a
row with a checked counterexample), 130 interrupted.

Example::

    python scripts/benchmark.py ../shared/benchmarks/eran_sigmoid_2021 \\
        --timeout 60 --only-consensus sat,unsat --workers 2 --out results/eran
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

try:
    from genbab import report
except ImportError:  # run from a checkout without an (editable) install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from genbab import report

EXIT_OK, EXIT_USAGE, EXIT_UNSOUND, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with the command line or the benchmark folders."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser exiting with 1 on bad usage, keeping 2 for soundness failures."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


@dataclass(frozen=True)
class Instance:
    """One line of a benchmark's instances.csv, with its ground-truth consensus."""

    benchmark: str
    root: Path
    onnx: str
    vnnlib: str
    timeout: float
    consensus: str


@dataclass(frozen=True)
class Job:
    """Everything one worker needs to run one instance."""

    index: int
    instance: Instance
    timeout: float
    command: list[str]
    results_file: Path
    log_file: Path
    hard_limit: float
    env: dict[str, str] | None


class ProcessTracker:
    """The verifier processes now running, so an interrupt can kill them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._closed = False

    def add(self, proc: subprocess.Popen) -> None:
        """Track a new process; one started after ``kill_all`` is killed at once."""
        with self._lock:
            self._running.add(proc)
            closed = self._closed
        if closed:
            _kill_group(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def kill_all(self) -> None:
        """Kill every tracked process group, now and from now on."""
        with self._lock:
            self._closed = True
            procs = list(self._running)
        for proc in procs:
            _kill_group(proc)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of the runner."""
    p = _Parser(prog="benchmark.py", description=__doc__.splitlines()[0])
    p.add_argument("bench_dirs", nargs="+", type=Path, metavar="BENCH_DIR")
    p.add_argument("--timeout", type=float, help="override every instance's timeout (s)")
    p.add_argument("--limit", type=int, help="run at most N instances per benchmark")
    p.add_argument("--only-consensus", default="",
                   help="comma-separated consensus values to keep, e.g. sat,unsat")
    p.add_argument("--filter", default="",
                   help="keep instances whose onnx or vnnlib path contains this substring")
    p.add_argument("--out", type=Path, help="output prefix (default results/bench_<date-time>)")
    p.add_argument("--config", help="YAML config passed to the verifier")
    p.add_argument("--device", help="device passed to the verifier, e.g. cpu or cuda")
    p.add_argument("--extra-args", default="", help="extra verifier arguments (shell-split)")
    p.add_argument("--command", default=None,
                   help="verifier executable prefix (shell-split); default: "
                        "'<this python> -m genbab.cli'")
    p.add_argument("--workers", type=int, default=1, help="instances run in parallel")
    p.add_argument("--kill-factor", type=float, default=1.5,
                   help="hard kill at timeout * kill_factor + kill_margin seconds")
    p.add_argument("--kill-margin", type=float, default=30.0)
    p.add_argument("--markdown", action="store_true", help="print the table in markdown")
    p.add_argument("--only-listed", type=Path, default=None,
                   help="CSV with columns bench,onnx,vnnlib (e.g. the reference results): run "
                        "only the instances it lists")
    return p


def listed_instances(path: Path) -> set[tuple[str, str, str]]:
    """(benchmark, onnx, vnnlib) triples listed in a CSV with those columns."""
    with open(path, newline="") as fh:
        return {(row["bench"], row["onnx"], row["vnnlib"]) for row in csv.DictReader(fh)}


def load_ground_truth(bench_dir: Path) -> dict[tuple[str, str], str]:
    """Consensus per (onnx, vnnlib) from ground_truth.csv ({} if there is none)."""
    path = bench_dir / "ground_truth.csv"
    if not path.is_file():
        print(f"warning: {path} missing; consensus unknown everywhere", file=sys.stderr)
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {(row["onnx"].strip(), row["vnnlib"].strip()): (row.get("consensus") or "").strip()
                for row in csv.DictReader(handle)}


def load_instances(bench_dir: Path) -> list[Instance]:
    """The instances of one benchmark folder, in instances.csv order."""
    path = bench_dir / "instances.csv"
    if not path.is_file():
        raise UsageError(f"{bench_dir} has no instances.csv")
    truth = load_ground_truth(bench_dir)
    name = bench_dir.resolve().name
    instances = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise UsageError(f"{path}:{line_no}: expected onnx,vnnlib,timeout")
            onnx, vnnlib = row[0].strip(), row[1].strip()
            consensus = truth.get((onnx, vnnlib)) or "unknown"
            instances.append(Instance(name, bench_dir, onnx, vnnlib, float(row[2]), consensus))
    return instances


def parse_consensus_list(text: str) -> frozenset[str]:
    """The --only-consensus values, checked against the known consensus values."""
    wanted = frozenset(v.strip() for v in text.split(",") if v.strip())
    unknown = wanted - set(report.CONSENSUS_VALUES)
    if unknown:
        raise UsageError(f"unknown consensus value(s) {sorted(unknown)}; "
                         f"choose from {', '.join(report.CONSENSUS_VALUES)}")
    return wanted


def select_instances(instances: list[Instance], consensus: frozenset[str], substring: str,
                     limit: int | None) -> list[Instance]:
    """Apply --only-consensus, --filter and then --limit to one benchmark's instances."""
    kept = [i for i in instances
            if (not consensus or i.consensus in consensus)
            and (substring in i.onnx or substring in i.vnnlib)]
    return kept if limit is None else kept[:limit]


def verifier_prefix(command: str | None) -> tuple[list[str], dict[str, str] | None]:
    """The verifier's executable prefix and the environment to run it in.

    The default runs this checkout's genbab, so its root goes on PYTHONPATH;
    a ``--command`` runs in the unchanged environment (to compare builds).
    """
    if command:
        return shlex.split(command), None
    root = str(Path(report.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "genbab.cli"], env


def _safe_stem(path: str) -> str:
    """A file-name-safe stem of an instance path."""
    stem = Path(path).name.split(".")[0]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)


def make_jobs(instances: list[Instance], args: argparse.Namespace, files_dir: Path) -> list[Job]:
    """One job per instance: full command line, result/log paths and kill limit."""
    prefix, env = verifier_prefix(args.command)
    extra = shlex.split(args.extra_args)
    jobs = []
    for index, inst in enumerate(instances):
        timeout = args.timeout if args.timeout is not None else inst.timeout
        stem = f"{index:04d}_{_safe_stem(inst.onnx)}__{_safe_stem(inst.vnnlib)}"
        base = files_dir / inst.benchmark / stem
        results_file = base.with_name(base.name + ".txt")
        command = [*prefix, "verify", str((inst.root / inst.onnx).resolve()),
                   str((inst.root / inst.vnnlib).resolve()), "--timeout", f"{timeout:g}",
                   "--results-file", str(results_file.resolve())]
        command += ["--config", args.config] if args.config else []
        command += ["--device", args.device] if args.device else []
        hard_limit = timeout * args.kill_factor + args.kill_margin
        jobs.append(Job(index, inst, timeout, command + extra, results_file,
                        base.with_name(base.name + ".log"), hard_limit, env))
    return jobs


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a verifier and everything in its process group."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def run_process(job: Job, tracker: ProcessTracker) -> tuple[int | None, float]:
    """Run one job's command; (exit code, or None when killed at the limit; seconds)."""
    job.results_file.parent.mkdir(parents=True, exist_ok=True)
    job.results_file.unlink(missing_ok=True)
    start = time.monotonic()
    with open(job.log_file, "wb") as log:
        try:
            proc = subprocess.Popen(job.command, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log, env=job.env,
                                    start_new_session=True)
        except OSError as exc:
            log.write(f"cannot start verifier: {exc}\n".encode())
            return 127, time.monotonic() - start
        tracker.add(proc)
        try:
            code: int | None = proc.wait(timeout=job.hard_limit)
        except subprocess.TimeoutExpired:
            code = None
        _kill_group(proc)  # also kills anything the verifier left running in its group
        proc.wait()
        tracker.discard(proc)
    return code, time.monotonic() - start


def last_line(path: Path) -> str:
    """The last non-empty line of a text file ('' if none or unreadable)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def outcome(job: Job, code: int | None, elapsed: float) -> tuple[str, str]:
    """The (result, note) of a finished job."""
    if code is None:
        return "timeout", f"killed after {elapsed:.1f}s (hard limit {job.hard_limit:g}s)"
    stderr_tail = last_line(job.log_file)
    if code != 0:
        return "error", f"exit code {code}: {stderr_tail}".rstrip(": ")
    try:
        text = job.results_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "error", f"no results file; {stderr_tail}".rstrip("; ")
    verdict = report.parse_verdict(text)
    if verdict is None:
        first = (text.strip().splitlines() or [""])[0][:60]
        return "error", f"unrecognised results file first line {first!r}"
    return verdict, ""


def run_job(job: Job, tracker: ProcessTracker) -> report.RunRecord:
    """Run one instance and turn what happened into a record."""
    code, elapsed = run_process(job, tracker)
    result, note = outcome(job, code, elapsed)
    inst = job.instance
    return report.make_record(inst.benchmark, inst.onnx, inst.vnnlib, job.timeout, result,
                              round(elapsed, 3), inst.consensus, note)


def progress_line(done: int, total: int, record: report.RunRecord) -> str:
    """One stderr line per finished instance."""
    width = len(str(total))
    line = (f"[{done:>{width}}/{total}] {record.benchmark} {Path(record.onnx).name} "
            f"{Path(record.vnnlib).name}: {record.result} in {record.time:.1f}s "
            f"(consensus {record.consensus})")
    if record.agreement == report.SOUNDNESS_FAILURE:
        line += "  !!! SOUNDNESS FAILURE !!!"
    elif record.agreement == report.DISAGREE:
        line += "  <- disagrees with consensus"
    return line + (f"  [{record.note}]" if record.note else "")


def machine_info(device: str | None) -> dict:
    """Platform, CPUs, Python/torch versions, runner commit, GPU name if on cuda."""
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "hostname": platform.node(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": None, "gpu": None,
            "runner_git_commit": None}
    try:
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    if device and device.startswith("cuda"):
        info["gpu"] = _gpu_name()
    root = Path(report.__file__).resolve().parents[1]
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True)
        info["runner_git_commit"] = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _gpu_name() -> str | None:
    """The first CUDA device's name, if torch can see one."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def output_paths(out: Path | None) -> tuple[Path, Path, Path]:
    """(<out>.csv, <out>.json, <out>_files/) with a dated default prefix."""
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("results") / f"bench_{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(f"{out}.csv"), Path(f"{out}.json"), Path(f"{out}_files")


def run_all(jobs: list[Job], workers: int, csv_path: Path,
            tracker: ProcessTracker) -> tuple[list[report.RunRecord], bool]:
    """Run jobs on a pool; (records in job order, whether interrupted).

    The CSV is rewritten after every finished instance so a long run that
    dies still leaves its results behind.
    """
    done: dict[int, report.RunRecord] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = {pool.submit(run_job, job, tracker): job.index for job in jobs}
    try:
        for future in as_completed(futures):
            done[futures[future]] = record = future.result()
            print(progress_line(len(done), len(jobs), record), file=sys.stderr, flush=True)
            report.write_records_csv([done[i] for i in sorted(done)], csv_path)
    except KeyboardInterrupt:
        print("interrupted: killing running verifiers", file=sys.stderr)
        pool.shutdown(wait=False, cancel_futures=True)
        tracker.kill_all()
        pool.shutdown(wait=True)
        return [done[i] for i in sorted(done)], True
    pool.shutdown(wait=True)
    return [done[i] for i in sorted(done)], False


def write_json(path: Path, argv: list[str], args: argparse.Namespace, jobs: list[Job],
               summary: dict, interrupted: bool) -> None:
    """The run's summary with everything needed to reproduce and compare it."""
    prefix = jobs[0].command[:jobs[0].command.index("verify")] if jobs else []
    meta = {
        "command_line": shlex.join([sys.executable, *argv]),
        "verifier_command": shlex.join(prefix),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(args.device),
        "settings": {"bench_dirs": [str(d) for d in args.bench_dirs],
                     "timeout_override": args.timeout, "limit": args.limit,
                     "only_consensus": args.only_consensus, "filter": args.filter,
                     "config": args.config, "device": args.device,
                     "extra_args": args.extra_args, "workers": args.workers,
                     "kill_factor": args.kill_factor, "kill_margin": args.kill_margin},
        "interrupted": interrupted,
        "summary": summary,
    }
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def collect_instances(args: argparse.Namespace) -> list[Instance]:
    """All selected instances of all benchmark folders, in order."""
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be >= 0")
    consensus = parse_consensus_list(args.only_consensus)
    selected = []
    for bench_dir in args.bench_dirs:
        if not bench_dir.is_dir():
            raise UsageError(f"{bench_dir} is not a directory")
        instances = load_instances(bench_dir)
        if args.only_listed is not None:
            listed = listed_instances(args.only_listed)
            instances = [i for i in instances
                         if (bench_dir.name, i.onnx, i.vnnlib) in listed]
        selected += select_instances(instances, consensus, args.filter, args.limit)
    if not selected:
        raise UsageError("no instances selected")
    return selected


def _interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM into the same clean shutdown as Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the selected instances, report; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        instances = collect_instances(args)
    except (UsageError, ValueError, KeyError) as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    csv_path, json_path, files_dir = output_paths(args.out)
    jobs = make_jobs(instances, args, files_dir)
    print(f"running {len(jobs)} instance(s), {args.workers} at a time: "
          f"{shlex.join(jobs[0].command[:jobs[0].command.index('verify')])}", file=sys.stderr)
    tracker = ProcessTracker()
    signal.signal(signal.SIGTERM, _interrupt)
    records, interrupted = run_all(jobs, args.workers, csv_path, tracker)
    report.write_records_csv(records, csv_path)
    if interrupted:
        print(f"interrupted: {len(records)} of {len(jobs)} instance(s) finished",
              file=sys.stderr)
    summary = report.summarise(records)
    write_json(json_path, [str(Path(__file__)), *argv], args, jobs, summary, interrupted)
    print(report.format_report(summary, markdown=args.markdown), end="")
    print(f"wrote {csv_path} and {json_path}", file=sys.stderr)
    if summary["soundness_failures"]:
        print(f"SOUNDNESS FAILURE on {len(summary['soundness_failures'])} instance(s)",
              file=sys.stderr)
        return EXIT_UNSOUND
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
