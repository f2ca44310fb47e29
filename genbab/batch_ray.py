"""``genbab batch --ray [ADDRESS]``: the batch's instances as Ray tasks on a cluster.

Each instance is one Ray task that calls ``genbab.batch.run_job`` -- the runner
of the local pool: the verifier in its own process group, killed from outside
at its limit -- in a scratch folder on whichever node Ray picks, and sends back
the results row, the verifier's log and the counterexample.  This process (the
driver) writes them: the results file, ``<out>_cex/`` and ``<out>_logs/`` are
only ever written here, one row appended (and fsynced) as each task finishes,
so the results file and ``--resume`` mean exactly what they mean locally.

At most ``--workers`` tasks are in flight; each reserves ``--ray-cpus`` CPUs
(1) and ``--ray-gpus`` GPUs (0) on its node.  Instance files and ``--config``
are passed as absolute paths, so every node must see them at the same paths (a
shared filesystem), and every node needs genbab and the verifier's
dependencies installed (the task starts ``python -m genbab.cli`` there).

Ray is an optional dependency (``pip install 'genbab[ray]'``), imported only
here and only when ``--ray`` is used.  SIGINT and SIGTERM cancel the tasks in
flight (each kills its verifier) and keep the finished rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from genbab.batch import (
    BatchUsageError,
    Job,
    Outcome,
    ProcessTracker,
    Progress,
    crash_outcome,
    record,
    run_job,
    stop_on_signals,
)

RAY_MISSING = "--ray needs the optional dependency: pip install 'genbab[ray]'"
CANCEL_GRACE = 5.0  # seconds to wait for cancelled tasks to be gone
CONNECT_TIMEOUT = 5.0  # seconds to reach a host:port address before giving up


@dataclass(frozen=True)
class RayOptions:
    """Where the tasks run and what each one reserves."""

    address: str | None  # None: whatever ray.init() picks
    cpus: float = 1.0
    gpus: float = 0.0
    workers: int = 1  # tasks in flight at once

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RayOptions:
        return cls(args.ray or None, 1.0 if args.ray_cpus is None else args.ray_cpus,
                   0.0 if args.ray_gpus is None else args.ray_gpus, args.workers)


@dataclass(frozen=True)
class Shipped:
    """What a task sends back: its outcome and the files the driver writes for it."""

    outcome: Outcome
    log: bytes
    counterexample: bytes | None


def import_ray() -> ModuleType:
    """The ``ray`` module, or a usage error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise BatchUsageError(RAY_MISSING) from None
    return ray


def run_in_scratch(job: Job) -> Shipped:
    """The body of a task: ``run_job`` with the job's files in a scratch folder of this node."""
    with tempfile.TemporaryDirectory(prefix="genbab-batch-") as scratch:
        folder = Path(scratch)
        local = dataclasses.replace(job, results_file=folder / "result",
                                    cex_file=folder / "counterexample", log_file=folder / "log")
        outcome = run_job(local, ProcessTracker())
        log = local.log_file.read_bytes() if local.log_file.exists() else b""
        cex = local.cex_file.read_bytes() if local.cex_file.exists() else None
    return Shipped(outcome, log, cex)


def write_shipped(out: Path, job: Job, shipped: Shipped, progress: Progress) -> None:
    """Write a task's log and counterexample, then append its row (so no row lacks its files)."""
    job.log_file.write_bytes(shipped.log)
    if shipped.counterexample is not None:
        job.cex_file.write_bytes(shipped.counterexample)
    record(out, job, shipped.outcome, progress)


def preflight(address: str) -> None:
    """Check, before any work, that Ray is installed and a ``host:port`` ADDRESS answers.

    ``ray.init`` would retry an address nobody listens on for minutes.
    """
    import_ray()
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise BatchUsageError(f"no Ray cluster at {address}: {exc.strerror or exc}") from None


@contextmanager
def connected(ray: ModuleType, address: str | None) -> Iterator[None]:
    """Connect this process to a Ray cluster (or start a local one) for the ``with`` body."""
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise BatchUsageError(f"cannot connect to Ray at {address or 'the default address'}: "
                              f"{exc}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _describe(ray: ModuleType) -> str:
    """One line about the cluster: nodes, CPUs and GPUs."""
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return (f"genbab batch: Ray cluster of {nodes} node(s), {resources.get('CPU', 0):g} CPU(s), "
            f"{resources.get('GPU', 0):g} GPU(s)")


def _fetch(ray: ModuleType, ref: Any, job: Job) -> Shipped:
    """A finished task's result; an ``error`` row when the task itself failed."""
    try:
        return ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - a lost worker or node is one error row
        cause = getattr(exc, "cause", None) or exc
        return Shipped(crash_outcome(job, cause), f"{exc}\n".encode(), None)


def _cancel(ray: ModuleType, refs: list[Any]) -> None:
    """Cancel tasks and wait (up to CANCEL_GRACE s) until they are gone.

    A running task's worker is killed (a plain cancel does not interrupt a task
    that waits for its verifier), and the kernel kills the verifier with it
    (the parent-death signal that ``run_job``'s launcher sets).
    """
    for ref in refs:
        ray.cancel(ref, force=True)
    ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE)


def drive(ray: ModuleType, task: Any, jobs: list[Job], workers: int, out: Path,
          progress: Progress) -> bool:
    """Keep up to ``workers`` tasks in flight and record each as it finishes; True if stopped."""
    waiting = list(reversed(jobs))
    in_flight: dict[Any, Job] = {}
    with stop_on_signals() as stop:
        try:
            while (waiting or in_flight) and not stop.is_set():
                while waiting and len(in_flight) < workers:
                    job = waiting.pop()
                    in_flight[task.remote(job)] = job
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.2)
                for ref in ready:
                    job = in_flight.pop(ref)
                    write_shipped(out, job, _fetch(ray, ref, job), progress)
        finally:
            if in_flight:
                _cancel(ray, list(in_flight))
        return stop.is_set()


def run_batch(jobs: list[Job], options: RayOptions, out: Path, progress: Progress) -> bool:
    """Run the jobs as Ray tasks, appending each row as it finishes; True when interrupted."""
    if not jobs:
        return False
    ray = import_ray()
    with connected(ray, options.address):
        progress.bar.write(_describe(ray), file=sys.stderr)
        task = ray.remote(num_cpus=options.cpus, num_gpus=options.gpus,
                          max_retries=0)(run_in_scratch)
        return drive(ray, task, jobs, max(1, options.workers), out, progress)
