"""``genbab report``: summaries of results CSVs against ground truth, and cactus plots.

Each RESULTS.csv is one run, labelled by its file name: ``genbab batch``
output, ``scripts/benchmark.py`` output, VNN-COMP results (with or without the
category column) or any CSV whose header names onnx, vnnlib and result (see
``genbab.report.read_results_table``).  With ``--ground-truth`` (a
``ground_truth.csv`` or a benchmark folder holding one; repeatable) every row
gets the consensus of the other tools, and a claimed ``unsat`` where a
checked counterexample exists is printed first as a SOUNDNESS FAILURE.

Exit codes: 0 done, 2 a SOUNDNESS FAILURE was found (or bad usage, as for
every genbab command), 3 an unreadable results or ground-truth file (or --plot
without matplotlib).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genbab import report

EXIT_OK, EXIT_UNSOUND, EXIT_INPUT = 0, 2, 3
DESCRIPTION = ("Summarise results CSVs (one run each) per benchmark, check them against "
               "ground truth (SOUNDNESS FAILURE: exit 2) and draw a cactus plot.")


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``report`` on the ``genbab`` sub-command parsers."""
    p = subparsers.add_parser("report", help="summarise results CSVs, check them against "
                              "ground truth, draw a cactus plot",
                              description=DESCRIPTION)
    fill_report_parser(p)
    return p


def fill_report_parser(p: argparse.ArgumentParser) -> None:
    """The arguments of ``genbab report`` (shared with ``python -m genbab.report_cli``)."""
    p.add_argument("results", nargs="+", help="results CSV files, one per run")
    p.add_argument("--ground-truth", action="append", default=[], metavar="GROUND_TRUTH",
                   help="ground_truth.csv, or a benchmark folder holding one (repeatable)")
    p.add_argument("--plot", metavar="FILE", help="write a cactus plot (e.g. cactus.png)")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")


def run_labels(paths: list[Path]) -> list[str]:
    """File names without .csv; parent folders are added where names repeat."""
    labels = [p.name.removesuffix(".csv") for p in paths]
    counts = Counter(labels)
    return [f"{p.parent.name}/{label}" if counts[label] > 1 else label
            for p, label in zip(paths, labels, strict=True)]


def load_runs(paths: list[Path], truth: report.GroundTruth | None
              ) -> dict[str, list[report.RunRecord]]:
    """Records per run label, with the ground truth applied."""
    from genbab import report

    runs = {}
    for path, label in zip(paths, run_labels(paths), strict=True):
        runs[label] = report.with_ground_truth(report.read_results_table(path), truth, label)
    return runs


def _common_timeout(runs: dict[str, list[report.RunRecord]]) -> float | None:
    """The one timeout all rows share (for the plot), or None."""
    values = {r.timeout for records in runs.values() for r in records}
    return values.pop() if len(values) == 1 and next(iter(values)) > 0 else None


def _plot(path: str, runs: dict[str, list[report.RunRecord]]) -> bool:
    """Draw the cactus plot; False (after a message) when matplotlib is missing."""
    from genbab import report

    try:
        from genbab.plot import cactus_plot

        series = {label: report.solved_times(records) for label, records in runs.items()}
        written = cactus_plot(series, path, timeout=_common_timeout(runs))
    except ImportError as exc:
        print(f"genbab report: error: --plot needs matplotlib ({exc}); "
              "pip install matplotlib", file=sys.stderr)
        return False
    print(f"genbab report: wrote {written}", file=sys.stderr)
    return True


def cmd_report(args: argparse.Namespace) -> int:
    """Print the report of ``args.results``; returns the exit code."""
    from genbab import report

    try:
        truth = None
        if args.ground_truth:
            truth = report.GroundTruth()
            for path in args.ground_truth:
                truth.add_file(Path(path))
        runs = load_runs([Path(p) for p in args.results], truth)
    except report.ResultsTableError as exc:
        print(f"genbab report: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    summaries = {label: report.summarise(records) for label, records in runs.items()}
    print(report.format_runs_report(summaries, args.markdown, have_truth=truth is not None),
          end="")
    plotted = _plot(args.plot, runs) if args.plot else True
    failures = sum(len(s["soundness_failures"]) for s in summaries.values())
    if failures:
        print(f"genbab report: SOUNDNESS FAILURE on {failures} instance(s)", file=sys.stderr)
        return EXIT_UNSOUND
    return EXIT_OK if plotted else EXIT_INPUT


def main(argv: list[str] | None = None) -> int:
    """``python -m genbab.report_cli ...``: the same as ``genbab report ...``."""
    parser = argparse.ArgumentParser(prog="genbab report", description=DESCRIPTION)
    fill_report_parser(parser)
    return cmd_report(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
