"""Start-up benchmark: wall time of whole ``genbab verify`` processes on easy queries.

    python scripts/bench_startup.py [-n 5] [--device cpu] [--imports] [--no-quick]

Runs each command ``-n`` times as a fresh process (interpreter start, imports,
model load, the pipeline, the verdict) and prints min / median / max wall time
and the CPU time (user + sys) of the process, for

  * an easy VNN-LIB 1.0 property:  genbab verify MODEL SPEC
  * the same property as a VNN-LIB 2.0 query:  genbab verify QUERY --network NAME=MODEL

on ``digits_sigmoid_tiny`` (64-8-8-10, proved by IBP).  The target is a verdict
in under 2 s of wall time; the torch-free quick stage (``genbab.quick``) gives
it without importing torch, which the ``method`` column shows (``quick-*``: no
torch).  ``--no-quick`` adds the same two commands through the full torch
pipeline, for comparison.  ``--imports`` adds the cost of importing each heavy
dependency in a fresh interpreter, to show where start-up goes.  The load
average is printed too: on a busy machine wall times mean little, CPU times more.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "vnnlib_specs" / "examples" / "onnx" / "digits_sigmoid_tiny.onnx"
SPEC1 = ROOT / "vnnlib_specs" / "examples" / "vnnlib" / "digits_sigmoid_tiny_idx2_eps0.01.vnnlib"
QUERY2 = ROOT / "vnnlib_specs" / "vnnlib2" / "digits_sigmoid_tiny_idx2_eps0.01.vnnlib"
IMPORTS = ("numpy", "onnx", "onnxruntime", "torch", "vnnlib", "genbab.verify", "genbab.quick",
           "bounds.onnx_import")


def _method(stdout: str, stderr: str) -> str:
    """The method that decided: ``method: X`` (1.0 CLI) or ``genbab: V by X in`` (2.0 CLI)."""
    found = re.search(r"^method: (\S+)", stdout, re.MULTILINE) or \
        re.search(r"^genbab: \S+ by (\S+) in ", stderr, re.MULTILINE)
    return found.group(1) if found else "-"


def _timed(argv: list[str]) -> tuple[float, float, str, int, str]:
    """(wall s, CPU s of the child, first stdout line, exit code, method) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    first = proc.stdout.splitlines()[0] if proc.stdout.strip() else "-"
    return wall, cpu, first, proc.returncode, _method(proc.stdout, proc.stderr)


def _standard_entry() -> list[str]:
    """``genbab.cli`` once it dispatches the standard interface, else the module itself."""
    probe = subprocess.run([sys.executable, "-m", "genbab.cli", "supports", "--vnnlib-versions"],
                           capture_output=True, text=True, cwd=ROOT, check=False)
    module = "genbab.cli" if probe.returncode == 0 else "genbab.vnnlib2_cli"
    return [sys.executable, "-m", module]


def _row(label: str, runs: list[tuple[float, float, str, int, str]]) -> str:
    walls = [r[0] for r in runs]
    cpus = [r[1] for r in runs]
    verdicts = sorted({f"{r[2]} (exit {r[3]})" for r in runs})
    methods = sorted({r[4] for r in runs})
    torch = "-" if methods == ["-"] else \
        "no" if all(m.startswith("quick-") for m in methods) else "yes"
    return (f"| {label} | {len(runs)} | {min(walls):.2f} | {statistics.median(walls):.2f} | "
            f"{max(walls):.2f} | {statistics.median(cpus):.2f} | {', '.join(verdicts)} | "
            f"{', '.join(methods)} | {torch} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--device", default="cpu", help="--device for genbab (default cpu)")
    parser.add_argument("--imports", action="store_true", help="also time each heavy import")
    parser.add_argument("--no-quick", action="store_true",
                        help="also time the full torch pipeline (config quick: false)")
    args = parser.parse_args(argv)
    standard = _standard_entry()
    form1 = [sys.executable, "-m", "genbab.cli", "verify", str(MODEL), str(SPEC1),
             "--device", args.device]
    form2 = [*standard, "verify", str(QUERY2), "--network", f"digits_sigmoid_tiny={MODEL}",
             "--device", args.device]
    commands = {
        "VNN-LIB 1.0: verify MODEL SPEC": form1,
        f"VNN-LIB 2.0: verify QUERY --network ({standard[-1]})": form2,
        "python -c pass (interpreter alone)": [sys.executable, "-c", "pass"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.no_quick:
            config = Path(tmp) / "no_quick.yaml"
            config.write_text("quick: false\n")
            commands["VNN-LIB 1.0, --no-quick"] = [*form1, "--no-quick"]
            commands["VNN-LIB 2.0, config quick: false"] = [*form2, "--config", str(config)]
        if args.imports:
            for module in IMPORTS:
                commands[f"import {module}"] = [sys.executable, "-c", f"import {module}"]
        print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, "
              f"{os.cpu_count()} CPUs, target: a verdict in under 2 s wall\n")
        print("| command | runs | min wall s | median wall s | max wall s | median CPU s | "
              "stdout | method | torch |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, argv_ in commands.items():
            print(_row(label, [_timed(argv_) for _ in range(args.n)]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
