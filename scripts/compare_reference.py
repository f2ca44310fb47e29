"""Side-by-side comparison of a genbab benchmark run with the reference results.

    python scripts/compare_reference.py results/reference_run.csv \
        [--reference ../shared/benchmarks/reference/abcrown_genbab_cpu_30s.csv] [--markdown]

Reads the CSV written by scripts/benchmark.py (columns benchmark, onnx, vnnlib,
result, time, ...) and the reference CSV (bench, onnx, vnnlib, consensus,
result, wall, vtime); prints per benchmark: instances, proved (unsat) and
falsified (sat) by each tool, median wall time on the instances both decide,
and every instance where the reference decides and genbab does not, or is
faster.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

DEFAULT_REFERENCE = (Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" /
                     "reference" / "abcrown_genbab_cpu_30s.csv")
DECIDED = ("sat", "unsat")


def read_rows(path: Path, bench_key: str) -> dict[tuple[str, str, str], dict]:
    with open(path, newline="") as fh:
        return {(r[bench_key], r["onnx"], r["vnnlib"]): r for r in csv.DictReader(fh)}


def compare(ours: dict, ref: dict) -> tuple[list[list[str]], list[str]]:
    table, notes = [], []
    for bench in sorted({k[0] for k in ref}):
        keys = [k for k in ref if k[0] == bench and k in ours]
        if not keys:
            continue
        ours_res = [ours[k]["result"] for k in keys]
        ref_res = [ref[k]["result"] for k in keys]
        both = [k for k in keys if ours[k]["result"] in DECIDED and ref[k]["result"] in DECIDED]
        med_ours = statistics.median(float(ours[k]["time"]) for k in both) if both else None
        med_ref = statistics.median(float(ref[k]["wall"]) for k in both) if both else None
        table.append([bench, str(len(keys)), str(ours_res.count("unsat")),
                      str(ref_res.count("unsat")), str(ours_res.count("sat")),
                      str(ref_res.count("sat")), str(len(both)),
                      "-" if med_ours is None else f"{med_ours:.2f}",
                      "-" if med_ref is None else f"{med_ref:.2f}"])
        for k in keys:
            o, r = ours[k], ref[k]
            if r["result"] in DECIDED and o["result"] not in DECIDED:
                notes.append(f"{bench} {Path(k[2]).name}: reference {r['result']} in "
                             f"{float(r['wall']):.1f}s, genbab {o['result']} in "
                             f"{float(o['time']):.1f}s")
            elif r["result"] in DECIDED and o["result"] in DECIDED and \
                    float(r["wall"]) < float(o["time"]):
                notes.append(f"{bench} {Path(k[2]).name}: both {o['result']}, reference faster "
                             f"({float(r['wall']):.1f}s vs {float(o['time']):.1f}s)")
            if o["result"] == "unsat" and r.get("consensus") == "sat":
                notes.insert(0, f"SOUNDNESS FAILURE: {bench} {Path(k[2]).name}")
    return table, notes


HEADER = ["benchmark", "instances", "unsat genbab", "unsat ref", "sat genbab", "sat ref",
          "both decide", "median wall genbab (s)", "median wall ref (s)"]


def render(table: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [HEADER] + table) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [HEADER] + table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    table, notes = compare(read_rows(args.results, "benchmark"),
                           read_rows(args.reference, "bench"))
    print(render(table, args.markdown))
    print()
    for note in notes:
        print(("- " if args.markdown else "") + note)
    return 2 if any(n.startswith("SOUNDNESS") for n in notes) else 0


if __name__ == "__main__":
    sys.exit(main())
