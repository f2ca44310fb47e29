"""A results file is always written: SIGTERM / SIGINT handling for ``genbab verify``.

VNN-COMP harnesses and batch runners stop a verifier with SIGTERM (or SIGINT)
when its time is up.  ``install_signal_handlers(results_file, timeout)``
makes such a signal write ``timeout`` (when ``timeout`` seconds have passed
since the handlers were installed) or ``unknown`` (earlier: an interruption,
not a timeout) to the results file -- unless this run already wrote it -- and
exit at once with ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM).

The handler imports nothing and writes with plain ``os`` calls, so it is safe
to run at any point of the run, including during an import.  A process stuck
in a long native call runs Python signal handlers only when that call returns,
so callers that need a hard limit still kill from outside (see
``scripts/vnncomp/run_instance.sh`` and ``genbab.batch``).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _identity(path: str) -> tuple[int, int] | None:
    """(inode, mtime in ns) of a file, or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def write_verdict_if_missing(path: str, verdict: str, before: tuple[int, int] | None) -> bool:
    """Atomically write ``verdict`` unless ``path`` changed since ``before``; True if written."""
    current = _identity(path)
    if current is not None and current != before:
        return False  # the run wrote its own result
    tmp = f"{path}.{os.getpid()}.signal.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{verdict}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True


def install_signal_handlers(results_file: str | os.PathLike | None,
                            timeout: float | None = None) -> bool:
    """On SIGTERM/SIGINT write ``timeout``/``unknown`` to ``results_file`` if unwritten, exit.

    ``timeout`` is the run's time limit in seconds, counted from this call; a
    signal at or after it writes ``timeout``, an earlier one ``unknown``.
    Returns False (and installs nothing) without a results file or when not
    called from the main thread.
    """
    if results_file is None or threading.current_thread() is not threading.main_thread():
        return False
    path = os.fspath(results_file)
    before = _identity(path)
    start = time.monotonic()
    fired = []

    def handler(signum: int, frame: object) -> None:
        if fired:  # a second signal while handling the first: just go
            os._exit(128 + signum)
        fired.append(signum)
        ran_out = timeout is not None and time.monotonic() - start >= timeout
        verdict = "timeout" if ran_out else "unknown"
        try:
            written = write_verdict_if_missing(path, verdict, before)
            note = f"wrote '{verdict}' to {path}" if written else f"kept the result in {path}"
        except OSError as exc:
            note = f"could not write {path}: {exc.strerror}"
        try:
            sys.stdout.flush()
            sys.stderr.write(f"genbab: received {signal.Signals(signum).name}; {note}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os._exit(128 + signum)

    for signum in HANDLED_SIGNALS:
        signal.signal(signum, handler)
    return True
