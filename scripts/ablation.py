"""Ablation of GenBaB's parts, as in the paper: one table, one command.

    python scripts/ablation.py [--timeout 30] [--parallel 2] [--out results/ablation]
                               [--all] [--configs a,b] [--reuse NAME=CSV] [BENCH_DIR ...]

Runs ``scripts/benchmark.py`` once per configuration of ``configs/ablation/``

  alpha_only          attack + IBP/CROWN/alpha-CROWN, no branch and bound
  bab_babsr           BaB, BaBSR-like neuron choice, lookup-table branching points (default)
  bab_bbps_midpoint   BaB, BBPS, midpoint branching points
  bab_bbps_lookup     BaB, BBPS, lookup-table branching points

on the benchmarks (default: eran_sigmoid_2021, vnncomp2020_nln_mnist_sigmoid_tanh,
dist_shift_2023, ml4acopf_2023 under ../shared/benchmarks), restricted to the
instances of the reference file ``reference/abcrown_genbab_cpu_30s.csv``
unless ``--all`` (``--shared`` points elsewhere than ../shared/benchmarks).  ``--parallel N`` runs N configurations at once (one core
each, ``OMP_NUM_THREADS=1``; wall times then include the neighbours' load).
Prints a markdown table (verified / falsified / total time per benchmark and
configuration) and writes it, with the per-configuration CSV/JSON files of
``benchmark.py``, under ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "benchmarks"
CONFIGS = ("alpha_only", "bab_babsr", "bab_bbps_midpoint", "bab_bbps_lookup")
BENCHMARKS = ("eran_sigmoid_2021", "vnncomp2020_nln_mnist_sigmoid_tanh", "dist_shift_2023",
              "ml4acopf_2023")


def run_config(name: str, benches: list[str], args: argparse.Namespace) -> Path:
    """One benchmark.py run; returns its CSV."""
    out = Path(args.out) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), *benches,
           "--timeout", str(args.timeout), "--config", str(ROOT / "configs" / "ablation" /
                                                           f"{name}.yaml"),
           "--out", str(out)]
    if not args.all:
        cmd += ["--only-listed", str(Path(args.shared) / "reference" /
                                     "abcrown_genbab_cpu_30s.csv")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(f"{out}.log", "w", encoding="utf-8") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    return Path(f"{out}.csv")


def summarise(csv_path: Path) -> dict[str, dict[str, float]]:
    """Per benchmark: instances, verified, falsified, total time."""
    table: dict[str, dict[str, float]] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            s = table.setdefault(row["benchmark"], {"n": 0, "unsat": 0, "sat": 0, "time": 0.0})
            s["n"] += 1
            s[row["result"]] = s.get(row["result"], 0) + 1
            s["time"] += float(row["time"] or 0)
    return table


def markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    benches = sorted({b for r in results.values() for b in r})
    lines = ["| benchmark | instances | " + " | ".join(results) + " |",
             "|---|---:|" + "---:|" * len(results)]
    for bench in benches:
        n = max(int(r.get(bench, {}).get("n", 0)) for r in results.values())
        cells = []
        for r in results.values():
            s = r.get(bench)
            cells.append("-" if s is None else
                         f"{int(s['unsat'])} / {int(s['sat'])} / {s['time']:.0f} s")
        lines.append(f"| {bench} | {n} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: verified (unsat) / falsified (sat) / total wall time.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmarks", nargs="*", metavar="BENCH_DIR")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--shared", default=str(SHARED),
                        help="the benchmarks folder (default ../shared/benchmarks)")
    parser.add_argument("--out", default=str(ROOT / "results" / "ablation"))
    parser.add_argument("--all", action="store_true",
                        help="every instance, not only the reference file's")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--reuse", action="append", default=[], metavar="NAME=CSV",
                        help="take configuration NAME from an earlier benchmark.py CSV "
                             "instead of running it (e.g. the default configuration's run)")
    args = parser.parse_args(argv)
    reused = dict(item.split("=", 1) for item in args.reuse)
    benches = args.benchmarks or [str(Path(args.shared) / b) for b in BENCHMARKS]
    names = [c for c in args.configs.split(",") if c and c not in reused]
    unknown = [c for c in [*names, *reused] if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(unknown)}")
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        paths = dict(zip(names, pool.map(lambda n: run_config(n, benches, args), names)))
    paths.update({name: Path(path) for name, path in reused.items()})
    order = [c for c in CONFIGS if c in paths]
    results = {name: summarise(paths[name]) for name in order if paths[name].exists()}
    text = markdown(results)
    print(text)
    out = Path(args.out)
    (out / "ablation.md").write_text(text + "\n", encoding="utf-8")
    (out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
