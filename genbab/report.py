"""Summaries of verification runs against ground truth.

One ``RunRecord`` per (model, property) run: the verdict we gave, how long it
took, and the consensus other tools reached on the same files.  Everything
here is pure apart from the two CSV helpers: ``summarise`` turns records into
per-benchmark counts plus the list of soundness failures and disagreements,
and ``format_report`` renders that as a plain-text or markdown table.  Used by
``scripts/benchmark.py`` and meant for a ``genbab report`` command.

Agreement of a decided verdict with the consensus:

- ``soundness_failure``: we said ``unsat`` where a checked counterexample
  exists (consensus ``sat``).  Never acceptable.
- ``disagree``: any other decided verdict on the opposite side of the
  consensus (our ``sat`` is confirmed by onnxruntime, so it is news about the
  consensus, not a soundness failure of ours).
- ``agree``, ``no_consensus`` (consensus ``conflict``/``unknown``) and
  ``undecided`` (we answered ``unknown``, ``timeout`` or ``error``).
"""
from __future__ import annotations

import csv
import dataclasses
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

RESULTS = ("sat", "unsat", "unknown", "timeout", "error")
CONSENSUS_VALUES = ("sat", "unsat", "unsat_low_trust_only", "conflict", "sat_unchecked", "unknown")
_SAT_SIDE = frozenset({"sat", "sat_unchecked"})
_UNSAT_SIDE = frozenset({"unsat", "unsat_low_trust_only"})
_RESULT_ALIASES = {"holds": "unsat", "violated": "sat"}

AGREE = "agree"
SOUNDNESS_FAILURE = "soundness_failure"
DISAGREE = "disagree"
NO_CONSENSUS = "no_consensus"
UNDECIDED = "undecided"


@dataclass(frozen=True)
class RunRecord:
    """One verifier run on one instance, as written to the results CSV."""

    benchmark: str
    onnx: str
    vnnlib: str
    timeout: float
    result: str
    time: float
    consensus: str
    agreement: str
    note: str = ""


CSV_FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord))


def classify(result: str, consensus: str) -> str:
    """How a verdict relates to the ground-truth consensus (see module doc)."""
    if result not in ("sat", "unsat"):
        return UNDECIDED
    if result == "unsat" and consensus == "sat":
        return SOUNDNESS_FAILURE
    if consensus in _SAT_SIDE:
        return AGREE if result == "sat" else DISAGREE
    if consensus in _UNSAT_SIDE:
        return AGREE if result == "unsat" else DISAGREE
    return NO_CONSENSUS


def make_record(benchmark: str, onnx: str, vnnlib: str, timeout: float, result: str,
                time: float, consensus: str, note: str = "") -> RunRecord:
    """A ``RunRecord`` with its agreement derived from result and consensus."""
    return RunRecord(benchmark, onnx, vnnlib, float(timeout), result, float(time),
                     consensus, classify(result, consensus), note)


def parse_verdict(text: str) -> str | None:
    """The verdict on the first line of a VNN-COMP results file, or None."""
    lines = text.strip().splitlines()
    if not lines:
        return None
    word = lines[0].strip().lower()
    word = _RESULT_ALIASES.get(word, word)
    return word if word in RESULTS else None


def _count_summary(records: Sequence[RunRecord]) -> dict:
    """Counts, times and the sat-consensus falsification rate of some records."""
    counts = {result: sum(r.result == result for r in records) for result in RESULTS}
    decided_times = [r.time for r in records if r.result in ("sat", "unsat")]
    sat_rows = [r for r in records if r.consensus == "sat"]
    return {
        "instances": len(records),
        "verified": counts["unsat"],
        "falsified": counts["sat"],
        "unknown": counts["unknown"],
        "timeout": counts["timeout"],
        "error": counts["error"],
        "total_time": round(sum(r.time for r in records), 3),
        "median_decided_time": (round(statistics.median(decided_times), 3)
                                if decided_times else None),
        "sat_consensus_total": len(sat_rows),
        "sat_consensus_falsified": sum(r.result == "sat" for r in sat_rows),
        "soundness_failures": sum(r.agreement == SOUNDNESS_FAILURE for r in records),
        "disagreements": sum(r.agreement == DISAGREE for r in records),
    }


def _listing(records: Iterable[RunRecord], agreement: str) -> list[dict]:
    """The records with the given agreement, reduced to what identifies them."""
    keys = ("benchmark", "onnx", "vnnlib", "result", "consensus", "time", "note")
    return [{k: getattr(r, k) for k in keys} for r in records if r.agreement == agreement]


def summarise(records: Iterable[RunRecord]) -> dict:
    """Per-benchmark and total counts, plus soundness failures and disagreements.

    Benchmarks keep the order in which they first appear in ``records``.
    """
    records = list(records)
    by_benchmark: dict[str, list[RunRecord]] = {}
    for record in records:
        by_benchmark.setdefault(record.benchmark, []).append(record)
    return {
        "benchmarks": {name: _count_summary(rows) for name, rows in by_benchmark.items()},
        "total": _count_summary(records),
        "soundness_failures": _listing(records, SOUNDNESS_FAILURE),
        "disagreements": _listing(records, DISAGREE),
    }


_COLUMNS = ("benchmark", "instances", "verified", "falsified", "unknown", "timeout",
            "errors", "total time", "median decided", "sat-consensus falsified")


def _fmt_seconds(value: float | None) -> str:
    """Seconds with one decimal, or a dash when there is no value."""
    return "-" if value is None else f"{value:.1f}s"


def _sat_rate(counts: dict) -> str:
    """``falsified/total (pct)`` for the sat-consensus rows, or a dash if none."""
    total = counts["sat_consensus_total"]
    if total == 0:
        return "-"
    done = counts["sat_consensus_falsified"]
    return f"{done}/{total} ({100.0 * done / total:.0f}%)"


def _table_cells(name: str, counts: dict) -> list[str]:
    """One table row of strings, in ``_COLUMNS`` order."""
    return [name, str(counts["instances"]), str(counts["verified"]), str(counts["falsified"]),
            str(counts["unknown"]), str(counts["timeout"]), str(counts["error"]),
            _fmt_seconds(counts["total_time"]), _fmt_seconds(counts["median_decided_time"]),
            _sat_rate(counts)]


def _render(rows: list[list[str]], markdown: bool) -> str:
    """Header plus rows as an aligned plain-text table or a markdown table."""
    header = list(_COLUMNS)
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def format_table(summary: dict, markdown: bool = False) -> str:
    """The per-benchmark table (with a total row when there are several)."""
    rows = [_table_cells(name, counts) for name, counts in summary["benchmarks"].items()]
    if len(summary["benchmarks"]) > 1:
        rows.append(_table_cells("TOTAL", summary["total"]))
    return _render(rows, markdown)


def _instance_line(item: dict, markdown: bool) -> str:
    """One listed instance: where it is, what we said, what others said."""
    text = (f"{item['benchmark']}: {item['onnx']} {item['vnnlib']} -> ours {item['result']},"
            f" consensus {item['consensus']} ({item['time']:.1f}s)")
    return f"- {text}" if markdown else f"  {text}"


def format_soundness_failures(summary: dict, markdown: bool = False) -> str:
    """A loud block naming every unsat claimed on a sat-consensus row ('' if none)."""
    failures = summary["soundness_failures"]
    if not failures:
        return ""
    title = (f"SOUNDNESS FAILURE: {len(failures)} instance(s) answered unsat although a "
             "checked counterexample exists")
    banner = f"**{title}**" if markdown else "!" * 78 + f"\n!! {title}\n" + "!" * 78
    return "\n".join([banner, *(_instance_line(f, markdown) for f in failures)])


def format_disagreements(summary: dict, markdown: bool = False) -> str:
    """Decided verdicts opposite to the consensus, other than soundness failures."""
    items = summary["disagreements"]
    if not items:
        return "Disagreements with the ground-truth consensus: none"
    lines = [f"Disagreements with the ground-truth consensus: {len(items)}"]
    return "\n".join(lines + [_instance_line(i, markdown) for i in items])


def format_report(summary: dict, markdown: bool = False) -> str:
    """Soundness failures first, then the table, then the disagreements."""
    parts = [format_soundness_failures(summary, markdown), format_table(summary, markdown),
             format_disagreements(summary, markdown)]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_records_csv(records: Iterable[RunRecord], path: Path) -> None:
    """Write records with a header row in ``CSV_FIELDS`` order."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for record in records:
            writer.writerow(dataclasses.asdict(record))


def read_records_csv(path: Path) -> list[RunRecord]:
    """Read records written by ``write_records_csv``; agreement is recomputed."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [make_record(row["benchmark"], row["onnx"], row["vnnlib"], float(row["timeout"]),
                            row["result"], float(row["time"]), row["consensus"],
                            row.get("note") or "")
                for row in csv.DictReader(handle)]
