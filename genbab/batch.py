"""``genbab batch``: run every instance of a VNN-COMP ``instances.csv``, one process each.

Each instance (``onnx,vnnlib,timeout`` rows, paths relative to ``--root``,
by default the CSV's folder) runs as its own ``genbab verify`` subprocess in a
new process group, so one crash or out-of-memory kill becomes one ``error``
row and never takes the batch down.  The per-instance limit ``T`` (the CSV's
timeout times ``--timeout-scale``, or ``--timeout``) counts from process
start: the verifier gets ``inner_timeout(T)`` (``T`` less a start-up
allowance) as its own timeout and its process group is sent SIGTERM at
``T + kill_grace`` and SIGKILL two seconds later; a killed run is a
``timeout``.  On Linux each verifier also dies with the batch (parent-death
signal), so a killed batch leaves nothing running behind it.

Results are appended to ``--out`` as each instance finishes (flushed and
fsynced) in the VNN-COMP layout ``onnx,vnnlib,prepare_time,result,run_time``
under a header row; counterexamples of ``sat`` rows go to
``<out stem>_cex/<name>.counterexample`` and every verifier's output to
``<out stem>_logs/<name>.log``.  ``--resume`` skips the instances already in
``--out``, so after a kill nothing finished is lost or rerun.

``--ray [ADDRESS]`` runs the same jobs as Ray tasks instead of on local
threads (``genbab.batch_ray``); both backends run each job with ``run_job``
and write the results the same way, so the results file and ``--resume``
do not depend on where the instances ran.

Exit codes: 0 done, 2 usage error (also: ``--ray`` without Ray installed or
no cluster at ADDRESS), 3 unreadable instances or results CSV, 130 interrupted
(SIGINT/SIGTERM; finished rows are kept).
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_INTERRUPTED = 0, 2, 3, 130
FIELDS = ("onnx", "vnnlib", "prepare_time", "result", "run_time")
RESULTS = ("sat", "unsat", "unknown", "timeout", "error")
DESCRIPTION = ("Run every instance of a VNN-COMP instances.csv, each in its own 'genbab verify' "
               "process, appending onnx,vnnlib,prepare_time,result,run_time rows to a results "
               "CSV as they finish.")
TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a verifier at its limit

# Run as ``python -S -c`` in front of the verifier: ask the kernel to SIGKILL it
# when the batch dies (Linux), check the batch did not die first, then exec.
_PDEATHSIG_LAUNCHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "os.getppid() == int(sys.argv[1]) or os._exit(137)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n")


class BatchError(Exception):
    """Unreadable input or an --out that cannot be used: one message, exit 3."""


class BatchUsageError(Exception):
    """Options that cannot be used here (``--ray`` without Ray or cluster): one message, exit 2."""


@dataclass(frozen=True)
class Instance:
    """One row of instances.csv; paths as written there (relative to the root)."""

    onnx: str
    vnnlib: str
    timeout: float


@dataclass(frozen=True)
class Job:
    """Everything one worker needs to run one instance.

    The verifier's command line is built where the job runs (``verifier_argv``),
    so a job can be shipped to another process or machine (``--ray``).
    """

    instance: Instance
    name: str
    limit: float  # the instance's time limit T in seconds
    onnx: str  # absolute paths handed to the verifier
    vnnlib: str
    options: tuple[str, ...]  # further verifier options (--config, --device)
    verifier_command: str | None  # verifier prefix (None: this interpreter's genbab)
    results_file: Path  # where the verifier writes (renamed to cex_file after sat)
    cex_file: Path
    log_file: Path
    kill_grace: float


@dataclass(frozen=True)
class Outcome:
    """A finished job: its results row and a note for the progress output."""

    row: dict[str, str]
    note: str


def inner_timeout(limit: float) -> float:
    """The verifier's own timeout inside a limit that includes start-up.

    ``T - min(T / 2, 3 + 0.05 T)``: about 3 s for interpreter start and imports
    plus 5 % for model loading, never more than half of ``T``.  The same
    formula is in ``scripts/vnncomp/run_instance.sh``.
    """
    return round(limit - min(limit / 2, 3.0 + 0.05 * limit), 3)


def read_instances(path: Path) -> list[Instance]:
    """The rows of a VNN-COMP instances CSV (an optional header row is skipped)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise BatchError(f"{path}: cannot read instances ({exc.strerror})") from None
    instances = []
    for line_no, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not "".join(cells) or cells[0].startswith("#"):
            continue
        if len(cells) < 3:
            raise BatchError(f"{path}:{line_no}: expected onnx,vnnlib,timeout")
        try:
            timeout = float(cells[2])
        except ValueError:
            if not instances and cells[2].lower() == "timeout":
                continue  # header row
            raise BatchError(f"{path}:{line_no}: timeout {cells[2]!r} is not a number") from None
        instances.append(Instance(cells[0], cells[1], timeout))
    return instances


def read_done_rows(path: Path) -> list[dict[str, str]]:
    """The finished rows of a results CSV, dropping a torn last line left by a kill."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BatchError(f"{path}: cannot read results ({exc.strerror})") from None
    if data and not data.endswith(b"\n"):
        keep = data[:data.rfind(b"\n") + 1]
        print(f"genbab batch: dropping an unfinished last line of {path}", file=sys.stderr)
        with open(path, "r+b") as handle:
            handle.truncate(len(keep))
        data = keep
    rows = []
    for line_no, row in enumerate(csv.reader(data.decode("utf-8").splitlines()), start=1):
        if not row or (line_no == 1 and tuple(row) == FIELDS):
            continue
        if len(row) != len(FIELDS) or row[3] not in RESULTS:
            raise BatchError(f"{path}:{line_no}: not a genbab batch results row "
                             f"({','.join(FIELDS)})")
        rows.append(dict(zip(FIELDS, row, strict=True)))
    return rows


def append_row(path: Path, row: dict[str, str]) -> None:
    """Append one row (and the header to a new file) and force it to disk."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new:
            writer.writerow(FIELDS)
        writer.writerow([row[f] for f in FIELDS])
        handle.flush()
        os.fsync(handle.fileno())


def pending_instances(instances: list[Instance], done: list[dict[str, str]]) -> list[int]:
    """Indices of the instances not yet in ``done`` (duplicates counted one by one)."""
    remaining = Counter((r["onnx"], r["vnnlib"]) for r in done)
    pending = []
    for index, inst in enumerate(instances):
        key = (inst.onnx, inst.vnnlib)
        if remaining[key] > 0:
            remaining[key] -= 1
        else:
            pending.append(index)
    return pending


def _stem(path: str) -> str:
    """A file-name-safe stem of an instance path, without .gz/.onnx/.vnnlib."""
    name = Path(path).name
    for suffix in (".gz", ".onnx", ".vnnlib"):
        name = name.removesuffix(suffix)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def instance_names(instances: list[Instance]) -> list[str]:
    """``<onnx stem>__<vnnlib stem>`` per instance, made unique with the row index."""
    names = [f"{_stem(i.onnx)}__{_stem(i.vnnlib)}" for i in instances]
    counts = Counter(names)
    return [n if counts[n] == 1 else f"{n}__{k}" for k, n in enumerate(names)]


def verifier_prefix(command: str | None) -> tuple[list[str], dict[str, str] | None]:
    """The verifier's command prefix and environment (this checkout's genbab by default)."""
    if command:
        return shlex.split(command), None
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "genbab.cli"], env


def output_paths(out: Path) -> tuple[Path, Path]:
    """The counterexample and log folders that belong to a results CSV."""
    base = out.with_suffix("") if out.suffix == ".csv" else out
    return Path(f"{base}_cex"), Path(f"{base}_logs")


def verifier_argv(job: Job) -> tuple[list[str], dict[str, str] | None]:
    """The command line and environment that run ``job``'s verifier from this process.

    On Linux the verifier is started through a launcher that makes the kernel
    kill it when this process dies.
    """
    prefix, env = verifier_prefix(job.verifier_command)
    if sys.platform.startswith("linux"):
        prefix = [sys.executable, "-S", "-c", _PDEATHSIG_LAUNCHER, str(os.getpid()), *prefix]
    return [*prefix, "verify", job.onnx, job.vnnlib, "--timeout", f"{inner_timeout(job.limit):g}",
            "--results-file", str(job.results_file.resolve()), *job.options], env


def make_jobs(instances: list[Instance], indices: list[int], args: argparse.Namespace,
              out: Path) -> list[Job]:
    """One job per pending instance: inputs, options, files and limits."""
    cex_dir, log_dir = output_paths(out)
    names = instance_names(instances)
    root = Path(args.root) if args.root else Path(args.instances).parent
    options = ["--config", str(Path(args.config).resolve())] if args.config else []
    options += ["--device", args.device] if args.device else []
    jobs = []
    for index in indices:
        inst, name = instances[index], names[index]
        limit = (args.timeout if args.timeout is not None else inst.timeout) * args.timeout_scale
        jobs.append(Job(inst, name, limit, str((root / inst.onnx).resolve()),
                        str((root / inst.vnnlib).resolve()), tuple(options),
                        args.verifier_command, cex_dir / f".{name}.{os.getpid()}.result",
                        cex_dir / f"{name}.counterexample", log_dir / f"{name}.log",
                        args.kill_grace))
    return jobs


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to a verifier's whole process group (it may be gone already)."""
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


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
            _signal_group(proc, signal.SIGKILL)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def kill_all(self) -> None:
        """SIGKILL every tracked process group, now and from now on."""
        with self._lock:
            self._closed = True
            procs = list(self._running)
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)


def _wait_or_stop(proc: subprocess.Popen, job: Job) -> int | None:
    """The exit code, or None when the limit ran out (SIGTERM, then SIGKILL)."""
    try:
        return proc.wait(timeout=job.limit + job.kill_grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=TERM_GRACE)
    except subprocess.TimeoutExpired:
        pass
    return None


def run_process(job: Job, tracker: ProcessTracker) -> tuple[int | None, float]:
    """Run one verifier; (exit code or None when stopped at the limit, wall seconds)."""
    job.results_file.unlink(missing_ok=True)
    command, env = verifier_argv(job)
    start = time.monotonic()
    with open(job.log_file, "wb") as log:
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        except OSError as exc:
            log.write(f"cannot start the verifier: {exc}\n".encode())
            return 127, time.monotonic() - start
        tracker.add(proc)
        try:
            code = _wait_or_stop(proc, job)
        finally:
            _signal_group(proc, signal.SIGKILL)  # whatever it left behind in its group
            proc.wait()
            tracker.discard(proc)
    return code, time.monotonic() - start


def _log_tail(path: Path) -> str:
    """The last non-empty line of a log ('' if none)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""


def _verdict(path: Path) -> str | None:
    """The verdict on the first line of a results file, or None."""
    from genbab.report import parse_verdict

    try:
        return parse_verdict(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def outcome(job: Job, code: int | None) -> tuple[str, str]:
    """(result, note) of a finished job; keeps the results file of a sat as its cex file."""
    try:
        if code is None:
            return "timeout", ""
        if code != 0:
            how = (f"killed by {signal.Signals(-code).name}" if code < 0 and -code in
                   signal.valid_signals() else f"exit code {code}")
            hint = " (out of memory?)" if code == -signal.SIGKILL else ""
            return "error", f"{how}{hint}: {_log_tail(job.log_file)}".rstrip(": ")
        verdict = _verdict(job.results_file)
        if verdict is None:
            return "error", f"no readable results file: {_log_tail(job.log_file)}".rstrip(": ")
        if verdict == "sat":
            os.replace(job.results_file, job.cex_file)
        return verdict, ""
    finally:
        job.results_file.unlink(missing_ok=True)


def run_job(job: Job, tracker: ProcessTracker) -> Outcome:
    """Run one instance: its verifier with the outer kill, then its results row.

    The one runner of both backends: the local pool calls it on a thread, a
    Ray task (``genbab.batch_ray``) on whichever node runs the task.
    """
    code, elapsed = run_process(job, tracker)
    result, note = outcome(job, code)
    row = {"onnx": job.instance.onnx, "vnnlib": job.instance.vnnlib, "prepare_time": "0",
           "result": result, "run_time": f"{elapsed:.3f}"}
    return Outcome(row, note)


class Progress:
    """Counts so far and a tqdm bar on stderr (total, ETA, verdict counts)."""

    def __init__(self, total: int, done: list[dict[str, str]]) -> None:
        from tqdm import tqdm

        self.counts = Counter(r["result"] for r in done)
        self.bar = tqdm(total=total, initial=len(done), desc="genbab batch", unit="inst",
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
        self.bar.set_postfix_str(self.text(), refresh=False)

    def text(self) -> str:
        c = self.counts
        return (f"verified={c['unsat']} falsified={c['sat']} "
                f"unknown={c['unknown'] + c['timeout']} (timeout={c['timeout']}) "
                f"errors={c['error']}")

    def add(self, row: dict[str, str], name: str, note: str) -> None:
        self.counts[row["result"]] += 1
        if row["result"] == "error":
            self.bar.write(f"error: {name}: {note}", file=sys.stderr)
        self.bar.set_postfix_str(self.text(), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def crash_outcome(job: Job, exc: BaseException) -> Outcome:
    """An ``error`` row for a worker that failed outside the verifier."""
    row = {"onnx": job.instance.onnx, "vnnlib": job.instance.vnnlib, "prepare_time": "0",
           "result": "error", "run_time": "0.000"}
    return Outcome(row, f"runner failed: {type(exc).__name__}: {exc}")


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGINT and SIGTERM set (instead of stopping the process) while inside."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda signum, frame: stop.set())
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def record(out: Path, job: Job, result: Outcome, progress: Progress) -> None:
    """Append a finished job's row to the results file and count it."""
    append_row(out, result.row)
    progress.add(result.row, job.name, result.note)


def run_batch(jobs: list[Job], workers: int, out: Path, progress: Progress) -> bool:
    """Run jobs on a pool, appending each row as it finishes; True when interrupted.

    SIGINT and SIGTERM only set a flag that this loop checks between rows, so
    a row is never half written; then the running verifiers are killed and
    their (unfinished) instances are left for ``--resume``.
    """
    tracker = ProcessTracker()
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    with stop_on_signals() as stop:
        try:
            futures = {pool.submit(run_job, job, tracker): job for job in jobs}
            running = set(futures)
            while running and not stop.is_set():
                finished, running = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = futures[future]
                    try:
                        result = future.result()
                    except Exception as exc:  # noqa: BLE001 - one instance never stops the batch
                        result = crash_outcome(job, exc)
                    record(out, job, result, progress)
        finally:
            if stop.is_set():
                pool.shutdown(wait=False, cancel_futures=True)
                tracker.kill_all()
            pool.shutdown(wait=True)
        return stop.is_set()


def main(argv: list[str] | None = None) -> int:
    """``python -m genbab.batch ...``: the same as ``genbab batch ...`` (genbab.batch_cli)."""
    from genbab.batch_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    # the imported genbab.batch, not this __main__ copy: batch_ray shares its classes
    from genbab.batch import main as batch_main

    sys.exit(batch_main())
