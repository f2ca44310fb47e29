"""Summaries of verification runs against ground truth.

One ``RunRecord`` per (model, property) run: the verdict we gave, how long it
took, and the consensus other tools reached on the same files.  Everything
here is pure apart from the two CSV helpers: ``summarise`` turns records into
per-benchmark counts plus the list of soundness failures and disagreements,
and ``format_report`` renders that as a plain-text or markdown table.  Used by
``scripts/benchmark.py``.  For ``genbab report`` (``genbab.report_cli``) it also
reads results CSVs of any tool (``read_results_table``), matches rows to
``ground_truth.csv`` files (``GroundTruth``, ``with_ground_truth``) and renders
several runs at once (``format_runs_report``).

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


# ---------------------------------------------------------------------------
# Results tables of any tool, ground truth and several runs (``genbab report``).

class ResultsTableError(ValueError):
    """A results or ground-truth CSV that cannot be read."""


_RESULT_WORDS = {"holds": "unsat", "violated": "sat", "timed-out": "timeout",
                 "timed_out": "timeout"}
_COLUMN_NAMES = {  # our name -> the header names accepted for it
    "benchmark": ("benchmark", "bench", "category"),
    "onnx": ("onnx", "network", "model"),
    "vnnlib": ("vnnlib", "property", "prop", "spec"),
    "result": ("result",),
    "time": ("time", "run_time", "runtime", "wall"),
    "consensus": ("consensus",),
    "timeout": ("timeout",),
    "note": ("note",),
}
_POSITIONAL = {  # header-less VNN-COMP layouts, by column count
    5: ("onnx", "vnnlib", "prepare_time", "result", "time"),  # genbab batch
    6: ("benchmark", "onnx", "vnnlib", "prepare_time", "result", "time"),  # VNN-COMP scripts
}


def normalise_result(word: str) -> str:
    """A result word of any tool as one of ``RESULTS`` (unknown words: timeout/error)."""
    word = word.strip().lower()
    word = _RESULT_WORDS.get(word, word)
    if word in RESULTS:
        return word
    return "timeout" if "timeout" in word else "error"


def _columns(header: list[str]) -> dict[str, int] | None:
    """Column index per field for a header row, or None when it is not a header."""
    cells = [c.strip().lower() for c in header]
    found = {}
    for field, names in _COLUMN_NAMES.items():
        index = next((cells.index(n) for n in names if n in cells), None)
        if index is not None:
            found[field] = index
    return found if {"onnx", "vnnlib", "result"} <= found.keys() else None


def _float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ResultsTableError(f"{where}: {text!r} is not a number") from None


def read_results_table(path: Path) -> list[RunRecord]:
    """Records from a results CSV of genbab or another tool (benchmark '' when absent).

    Accepted: a header naming at least onnx, vnnlib and result (genbab batch,
    scripts/benchmark.py, the reference CSVs), or no header with 5 columns
    ``onnx,vnnlib,prepare_time,result,run_time`` or 6 columns
    ``category,onnx,vnnlib,prepare_time,result,run_time``.
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [(n, r) for n, r in enumerate(csv.reader(handle), start=1)
                    if r and "".join(r).strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsTableError(f"{path}: cannot read ({exc})") from None
    if not rows:
        return []
    columns = _columns(rows[0][1])
    if columns is not None:
        rows = rows[1:]
    elif len(rows[0][1]) in _POSITIONAL:
        columns = {f: i for i, f in enumerate(_POSITIONAL[len(rows[0][1])])}
    else:
        raise ResultsTableError(f"{path}:{rows[0][0]}: neither a header naming onnx, vnnlib "
                                "and result nor 5 or 6 columns of the VNN-COMP layout")
    records = []
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        if len(row) <= max(columns.values()):
            raise ResultsTableError(f"{where}: expected {max(columns.values()) + 1} columns")

        def cell(field: str, default: str = "", row: list[str] = row) -> str:
            return row[columns[field]].strip() if field in columns else default

        word = cell("result")
        result = normalise_result(word)
        note = cell("note") or ("" if result == word.strip().lower() else f"result {word!r}")
        records.append(make_record(cell("benchmark"), cell("onnx"), cell("vnnlib"),
                                   _float(cell("timeout", "0") or "0", where), result,
                                   _float(cell("time", "0") or "0", where),
                                   cell("consensus", "unknown") or "unknown", note))
    return records


@dataclass(frozen=True)
class Truth:
    """One ground-truth row: the benchmark (its folder's name), consensus, timeout."""

    benchmark: str
    consensus: str
    timeout: float


def _path_keys(onnx: str, vnnlib: str) -> list[tuple[str, str]]:
    """Keys from most to least specific: whole paths, last two parts, file names."""
    def parts(path: str) -> list[str]:
        path = path.strip().replace("\\", "/").removesuffix(".gz")
        return [p for p in path.split("/") if p not in ("", ".")]

    a, b = parts(onnx), parts(vnnlib)
    return [("/".join(a[-n:]) if n else "/".join(a), "/".join(b[-n:]) if n else "/".join(b))
            for n in (0, 2, 1)]


class GroundTruth:
    """Consensus lookup over ground_truth.csv files, tolerant of path prefixes.

    A results row is matched on its whole paths first, then on their last two
    parts (``onnx/x.onnx``), then on the file names; a key that several
    entries with different consensus share is ambiguous and matches nothing.
    """

    def __init__(self) -> None:
        self._levels: list[dict[tuple[str, str], Truth | None]] = [{}, {}, {}]
        self.files: list[Path] = []

    def add_file(self, path: Path) -> None:
        """Add a ground_truth.csv (or a benchmark folder that holds one)."""
        path = path / "ground_truth.csv" if path.is_dir() else path
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsTableError(f"{path}: cannot read ground truth ({exc})") from None
        if rows and not {"onnx", "vnnlib", "consensus"} <= rows[0].keys():
            raise ResultsTableError(f"{path}: a ground truth needs onnx, vnnlib and consensus "
                                    "columns")
        benchmark = path.resolve().parent.name
        for line_no, row in enumerate(rows, start=2):
            timeout = _float((row.get("timeout") or "0").strip() or "0", f"{path}:{line_no}")
            truth = Truth(benchmark, (row["consensus"] or "unknown").strip(), timeout)
            for level, key in zip(self._levels, _path_keys(row["onnx"], row["vnnlib"]),
                                  strict=True):
                if key not in level:
                    level[key] = truth
                elif level[key] is not None and level[key].consensus != truth.consensus:
                    level[key] = None
        self.files.append(path)

    def lookup(self, onnx: str, vnnlib: str) -> Truth | None:
        """The entry for a results row, or None (no match, or ambiguous)."""
        for level, key in zip(self._levels, _path_keys(onnx, vnnlib), strict=True):
            if key in level:
                return level[key]
        return None


def _benchmark_from_path(onnx: str) -> str:
    """``acasxu`` from ``benchmarks/acasxu/onnx/x.onnx`` ('' without such a folder)."""
    parts = [p for p in onnx.replace("\\", "/").split("/") if p not in ("", ".")]
    index = parts.index("onnx") if "onnx" in parts[:-1] else 0
    return parts[index - 1] if index >= 1 else ""


def with_ground_truth(records: Iterable[RunRecord], truth: GroundTruth | None,
                      fallback: str) -> list[RunRecord]:
    """Records with consensus (and benchmark, timeout) filled in from the ground truth.

    The benchmark is the row's own, else the matched ground truth's folder,
    else the folder above ``onnx/`` in the path, else ``fallback``.
    """
    out = []
    for r in records:
        match = truth.lookup(r.onnx, r.vnnlib) if truth else None
        benchmark = (r.benchmark or (match.benchmark if match else "")
                     or _benchmark_from_path(r.onnx) or fallback)
        consensus = match.consensus if match else r.consensus
        timeout = r.timeout or (match.timeout if match else 0.0)
        out.append(make_record(benchmark, r.onnx, r.vnnlib, timeout, r.result, r.time,
                               consensus, r.note))
    return out


def solved_times(records: Iterable[RunRecord]) -> list[float]:
    """Sorted times of the decided instances, without soundness failures (for cactus plots)."""
    return sorted(r.time for r in records
                  if r.result in ("sat", "unsat") and r.agreement != SOUNDNESS_FAILURE)


def _run_instance_line(run: str, item: dict, markdown: bool) -> str:
    """One listed instance of a named run."""
    text = (f"[{run}] {item['benchmark']}: {item['onnx']} {item['vnnlib']} -> "
            f"{item['result']}, consensus {item['consensus']} ({item['time']:.1f}s)")
    return f"- {text}" if markdown else f"  {text}"


def format_runs_report(summaries: dict[str, dict], markdown: bool = False,
                       have_truth: bool = True) -> str:
    """Several runs: soundness failures of all runs first, a table per run, disagreements."""
    parts = []
    failures = [(run, f) for run, s in summaries.items() for f in s["soundness_failures"]]
    if failures:
        title = (f"SOUNDNESS FAILURE: {len(failures)} instance(s) answered unsat although a "
                 "checked counterexample exists")
        banner = f"**{title}**" if markdown else "!" * 78 + f"\n!! {title}\n" + "!" * 78
        parts.append("\n".join([banner, *(_run_instance_line(r, f, markdown)
                                          for r, f in failures)]))
    for run, summary in summaries.items():
        heading = f"### Run `{run}`\n" if markdown else f"Run: {run}"
        parts.append(heading + "\n" + format_table(summary, markdown))
    if not have_truth:
        parts.append("No ground truth given (--ground-truth): agreement not checked")
    else:
        items = [(run, i) for run, s in summaries.items() for i in s["disagreements"]]
        lines = [f"Disagreements with the ground-truth consensus: {len(items) or 'none'}"]
        parts.append("\n".join(lines + [_run_instance_line(r, i, markdown) for r, i in items]))
    return "\n\n".join(parts) + "\n"
