"""The VNN-COMP results file: writing it atomically and reading it back.

Layout: the verdict on the first line (``sat``, ``unsat``, ``unknown``,
``timeout`` or ``error``); after ``sat`` the counterexample as

    (
    (X_0 0.25)
    ...
    (Y_0 -1.5)
    )

with every value printed to 17 significant digits, so a float64 reads back
exactly.  The reader also accepts the older one-block layout
``((X_0 v)\\n (X_1 v) ... (Y_0 v))`` and the 2021 words ``violated`` / ``holds``.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")
_OLD_WORDS = {"violated": "sat", "holds": "unsat"}
_ASSIGNMENT = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


class ResultsFileError(ValueError):
    """A results file that cannot be parsed."""


def _format_witness(x: np.ndarray, y: np.ndarray) -> list[str]:
    lines = ["("]
    lines += [f"(X_{i} {float(v):.17g})" for i, v in enumerate(x)]
    lines += [f"(Y_{j} {float(v):.17g})" for j, v in enumerate(y)]
    lines.append(")")
    return lines


def write_results_file(path: str | Path, verdict: str, x: np.ndarray | None = None,
                       y: np.ndarray | None = None) -> None:
    """Write ``verdict`` (and for ``sat`` the counterexample ``x``, ``y``) atomically.

    ``sat`` requires both ``x`` and ``y``; for any other verdict they are ignored.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r} (expected one of {', '.join(VERDICTS)})")
    lines = [verdict]
    if verdict == "sat":
        if x is None or y is None:
            raise ValueError("a sat result needs the counterexample input and output")
        lines += _format_witness(np.asarray(x, dtype=np.float64).reshape(-1),
                                 np.asarray(y, dtype=np.float64).reshape(-1))
    _write_atomically(Path(path), "\n".join(lines) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _values(found: dict[int, float], name: str, path: str | Path) -> np.ndarray | None:
    if not found:
        return None
    if sorted(found) != list(range(len(found))):
        raise ResultsFileError(f"{path}: {name} indices are not 0..{len(found) - 1}")
    return np.array([found[i] for i in range(len(found))], dtype=np.float64)


def read_results_file(path: str | Path) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """Parse a results file into ``(verdict, x, y)``; ``x``/``y`` are None when absent."""
    text = Path(path).read_text()
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise ResultsFileError(f"{path}: empty results file")
    word = lines[first].strip().lower()
    verdict = _OLD_WORDS.get(word, word)
    if verdict not in VERDICTS:
        raise ResultsFileError(f"{path}: unknown verdict {lines[first].strip()!r}")
    found: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for kind, index, value in _ASSIGNMENT.findall("\n".join(lines[first + 1:])):
        try:
            number = float(value)
        except ValueError:
            raise ResultsFileError(f"{path}: bad value {value!r} for {kind}_{index}") from None
        if int(index) in found[kind]:
            raise ResultsFileError(f"{path}: {kind}_{index} assigned twice")
        found[kind][int(index)] = number
    return verdict, _values(found["X"], "X", path), _values(found["Y"], "Y", path)
