"""The command line of ``genbab batch`` (and ``python -m genbab.batch``): arguments,
their checks, the run on the local pool or on Ray, and the closing summary.

The batch machinery itself (instances, jobs, the per-instance runner, the
results file) is ``genbab.batch``; exit codes are documented there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genbab.batch import (
    DESCRIPTION,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    BatchError,
    BatchUsageError,
    Job,
    Progress,
    make_jobs,
    output_paths,
    pending_instances,
    read_done_rows,
    read_instances,
    run_batch,
)


def add_batch_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``batch`` on the ``genbab`` sub-command parsers."""
    p = subparsers.add_parser("batch", help="run every instance of a VNN-COMP instances.csv",
                              description=DESCRIPTION)
    fill_batch_parser(p)
    return p


def fill_batch_parser(p: argparse.ArgumentParser) -> None:
    """The arguments of ``genbab batch`` (shared with ``python -m genbab.batch``)."""
    p.add_argument("instances", help="instances CSV: onnx,vnnlib,timeout per row")
    p.add_argument("--root", metavar="DIR", help="folder the CSV's paths refer to (default: the CSV's folder)")
    p.add_argument("--out", metavar="CSV", help="results CSV (default: results/<root folder name>.csv)")
    p.add_argument("--workers", type=int, metavar="N", default=1, help="instances run in parallel")
    p.add_argument("--timeout", type=float, metavar="S", help="override every instance's timeout (s)")
    p.add_argument("--timeout-scale", type=float, default=1.0, metavar="X",
                   help="multiply every timeout by this factor")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing --out, skipping the instances in it")
    p.add_argument("--config", metavar="YAML", help="YAML config passed to every run")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device for every run")
    p.add_argument("--kill-grace", type=float, default=5.0, metavar="S",
                   help="seconds past an instance's timeout before it is killed")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the instances as Ray tasks on the cluster at ADDRESS (host:port, "
                        "ray://host:port; default: as ray.init()); needs genbab[ray] and the "
                        "instance files at the same paths on every node")
    p.add_argument("--ray-cpus", type=float, metavar="N",
                   help="with --ray: CPUs each instance reserves on its node (default 1)")
    p.add_argument("--ray-gpus", type=float, metavar="N",
                   help="with --ray: GPUs each instance reserves on its node (default 0)")
    p.add_argument("--command", dest="verifier_command",  # verifier prefix, for tests
                   help=argparse.SUPPRESS)


def _check_args(args: argparse.Namespace) -> str | None:
    """A usage problem with the numbers, or None."""
    if args.workers < 1:
        return "--workers must be at least 1"
    if args.timeout is not None and args.timeout <= 0:
        return "--timeout must be positive"
    if args.timeout_scale <= 0 or args.kill_grace < 0:
        return "--timeout-scale must be positive and --kill-grace not negative"
    ray_shares = [v for v in (args.ray_cpus, args.ray_gpus) if v is not None]
    if ray_shares and args.ray is None:
        return "--ray-cpus and --ray-gpus need --ray"
    if any(v < 0 for v in ray_shares):
        return "--ray-cpus and --ray-gpus must not be negative"
    return None


def _out_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    root = Path(args.root) if args.root else Path(args.instances).parent
    return Path("results") / f"{root.resolve().name or 'batch'}.csv"


def _print_summary(rows: list[dict[str, str]], label: str) -> None:
    """The table of every finished row, in genbab.report's format, on stdout."""
    from genbab import report

    records = [report.make_record(label, r["onnx"], r["vnnlib"], 0.0, r["result"],
                                  float(r["run_time"]), "unknown") for r in rows]
    print(report.format_table(report.summarise(records)))


def _run_jobs(jobs: list[Job], args: argparse.Namespace, out: Path, progress: Progress) -> bool:
    """Run the jobs on local threads or, with ``--ray``, on Ray; True when interrupted."""
    if args.ray is None:
        return run_batch(jobs, args.workers, out, progress)
    from genbab import batch_ray

    return batch_ray.run_batch(jobs, batch_ray.RayOptions.from_args(args), out, progress)


def _ray_problem(args: argparse.Namespace) -> str | None:
    """Why ``--ray`` cannot be used (Ray not installed, nobody at ADDRESS), or None."""
    if args.ray is None:
        return None
    from genbab.batch_ray import preflight

    try:
        preflight(args.ray)
    except BatchUsageError as exc:
        return str(exc)
    return None


def cmd_batch(args: argparse.Namespace) -> int:
    """Run the batch described by ``args``; returns the exit code."""
    problem = _check_args(args) or _ray_problem(args)
    if problem:
        print(f"genbab batch: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    out = _out_path(args)
    try:
        instances = read_instances(Path(args.instances))
        if out.exists() and out.stat().st_size and not args.resume:
            raise BatchError(f"{out} exists: pass --resume to continue it, or remove it")
        done = read_done_rows(out) if args.resume else []
    except BatchError as exc:
        print(f"genbab batch: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    pending = pending_instances(instances, done)
    for folder in (out.parent, *output_paths(out)):
        folder.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(instances, pending, args, out)
    print(f"genbab batch: {len(instances)} instance(s), {len(done)} already in {out}, "
          f"{len(jobs)} to run, {args.workers} at a time"
          f"{'' if args.ray is None else ' on Ray'}", file=sys.stderr)
    progress = Progress(len(instances), done)
    try:
        interrupted = _run_jobs(jobs, args, out, progress)
    except BatchUsageError as exc:
        progress.close()
        print(f"genbab batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        progress.close()
    rows = read_done_rows(out)
    print(f"genbab batch: {len(rows)} of {len(instances)} finished: {progress.text()}; "
          f"results in {out}", file=sys.stderr)
    if interrupted:
        print("genbab batch: interrupted; rerun with --resume to finish", file=sys.stderr)
        return EXIT_INTERRUPTED
    root = Path(args.root) if args.root else Path(args.instances).parent
    _print_summary(rows, root.resolve().name)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m genbab.batch ...``: the same as ``genbab batch ...``."""
    parser = argparse.ArgumentParser(prog="genbab batch", description=DESCRIPTION)
    fill_batch_parser(parser)
    try:
        return cmd_batch(parser.parse_args(argv))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

