"""The VNN-LIB 2.0 solver command line (chapter 5 of the standard).

    genbab verify QUERY.vnnlib --network NAME=MODEL.onnx [--network ...]
                  [--timeout SECONDS] [--serialise-assignments DIR]
    genbab supports --CAPABILITY
    genbab --name

``dispatch(argv)`` recognises these forms (``genbab.cli`` calls it first);
``python -m genbab.vnnlib2_cli ARGS`` runs them directly.

Output discipline of ``verify``: stdout receives nothing until the verdict is
known, then the verdict (``sat``, ``unsat``, ``unknown``, ``timed-out``) and,
after ``sat``, the assignment of every declared variable (``NAME TYPE [dims]``
then one value per line, row-major, in declaration order).  Logs go to
stderr.  The pipeline runs in a forked child whose file descriptor 1 points
at stderr; the parent relays the child's verdict block, or kills it and
prints ``timed-out`` when ``--timeout`` has passed -- a hard limit, also in
the middle of a long native call (importing torch, a bound computation).

Exit codes: 0 a verdict, 1 internal error, 2 usage error (bad arguments), 3
invalid input -- the error conditions of the standard (a missing or surplus
``--network``, element types that differ from the model's, a type genbab
cannot analyse soundly), a malformed query, an unreadable model, declarations
that do not match their model (counts, shapes, a hidden node naming no
tensor), and queries genbab cannot reduce (non-linear arithmetic, an input
element without constant bounds).  On every error stdout stays empty.

Queries over several networks, several inputs or outputs, or hidden nodes
run on one model composed for the query (``genbab.spec.compose``), written to
a temporary folder that the parent process removes.

Element types: genbab's bounds are computed in floating point without
directed rounding, so it is sound for real arithmetic only: it supports the
``real`` type (spelled ``Real`` or ``real``) over float32 / float64 models,
and rejects queries written with ONNX element types, as the standard requires.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import tempfile
import time

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 3
NAME = "genbab"
SOUND_ELEMENT_TYPES = ("real",)  # what `supports --onnx-element-types` claims
VNNLIB_VERSIONS = ("1.0", "2.0")
OPSET_VERSIONS = ("7", "20")
_VERDICT_WORDS = {"sat": "sat", "unsat": "unsat", "unknown": "unknown", "timeout": "timed-out"}
_VALUE_OPTIONS = frozenset(("--network", "--timeout", "--serialise-assignments", "--config",
                            "--device", "--seed", "--results-file", "--method"))


class InputError(Exception):
    """Invalid input (exit code 3); ``str()`` is the one-line message."""


# ---- supports ----------------------------------------------------------------


CAPABILITIES: dict[str, tuple[str, ...]] = {
    "--onnx-opset-versions": OPSET_VERSIONS,
    "--onnx-element-types": SOUND_ELEMENT_TYPES,
    "--onnx-operators": (),  # filled from bounds.onnx_registry when asked
    "--onnx-operators-unsat-proofs": (),  # no unsat proofs
    "--vnnlib-versions": VNNLIB_VERSIONS,
    "--hidden-node-theories": ("NH", "H"),
    "--multiple-input-output-theories": ("SIO", "MIO"),
    "--multiple-network-theories": ("SNET", "MENET", "MINET", "MNET"),
    "--multiple-node-comparison-theories": ("SNC", "MNC"),
    "--arithmetic-complexity-theories": ("BND", "OUTC", "LIN"),
    "--optimised-disjunctive-reasoning": ("false",),  # disjunctions become DNF
    "--serialise-assignments": ("true",),
    "--unsat-proofs": ("false",),
}


def main_supports(argv: list[str]) -> int:
    """``genbab supports --CAPABILITY``: one answer per line on stdout."""
    if len(argv) != 1 or argv[0] not in CAPABILITIES:
        given = " ".join(argv) or "nothing"
        print(f"genbab supports: expected one of {', '.join(CAPABILITIES)}; got {given}",
              file=sys.stderr)
        return EXIT_USAGE
    lines = CAPABILITIES[argv[0]]
    if argv[0] == "--onnx-operators":
        from bounds.onnx_registry import supported_op_types

        lines = tuple(supported_op_types())
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return EXIT_OK


# ---- dispatch ------------------------------------------------------------------


def dispatch(argv: list[str]) -> int | None:
    """Run a standard-interface command, or return None for any other command line."""
    if argv[:1] == ["--name"] and len(argv) == 1:
        print(NAME)
        return EXIT_OK
    if argv[:1] == ["supports"]:
        return main_supports(argv[1:])
    if argv[:1] == ["verify"] and is_vnnlib2_verify(argv[1:]):
        networks = any(a == "--network" or a.startswith("--network=") for a in argv[1:])
        files = [a for a in argv[1:] if not a.startswith("-") and os.path.isfile(a)]
        if not networks and not files:
            return None  # not a 2.0 query: the 1.0 parser reports the missing argument
        return main_vnnlib2(argv[1:])
    return None


def is_vnnlib2_verify(args: list[str]) -> bool:
    """``verify`` arguments in the standard's form: ``--network`` given, or one positional."""
    positional, skip = 0, False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--network" or arg.startswith(("--network=", "--serialise-assignments")):
            return True
        elif arg in _VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-") or arg == "-":
            positional += 1
    return positional == 1


# ---- verify --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genbab verify", description="Verify a VNN-LIB query (VNN-LIB 2.0 interface).")
    parser.add_argument("query", help="VNN-LIB 2.0 (or 1.0) query, plain or .gz")
    parser.add_argument("--network", action="append", default=[], metavar="NAME=MODEL",
                        help="ONNX model of the network NAME declared in the query")
    parser.add_argument("--timeout", type=float, default=None, help="seconds (may be fractional)")
    parser.add_argument("--serialise-assignments", default=None, metavar="DIR",
                        help="after sat, write DIR/<variable>.pb (ONNX TensorProto) instead of "
                        "printing the assignment")
    parser.add_argument("--config", default=None, help="YAML configuration file (non-standard)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--debug", action="store_true", help="tracebacks of internal errors")
    return parser


def main_vnnlib2(argv: list[str]) -> int:
    """``genbab verify QUERY --network NAME=MODEL ...``; returns the exit code."""
    start = time.monotonic()
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the message (or --help)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        networks = _network_options(args.network)
        if args.timeout is not None and not 0 < args.timeout < float("inf"):
            raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    except ValueError as exc:
        print(f"genbab verify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = _config(args)
    except InputError as exc:
        print(f"genbab: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    timeout = args.timeout if args.timeout is not None else config.timeout
    deadline = start + timeout
    pipeline_end = deadline - min(0.5, 0.1 * timeout)  # time left to report the verdict
    with tempfile.TemporaryDirectory(prefix="genbab-") as scratch:  # a composed model goes here

        def work() -> tuple[int, str]:
            return _run(args, networks, config, pipeline_end, scratch)

        try:
            if hasattr(os, "fork") and "torch" not in sys.modules:  # forking torch's threads hangs
                return _supervise(work, deadline)
            code, text = work()  # in process: only the pipeline's own deadline applies
            _write_all(1, text)
            return code
        except BrokenPipeError:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - reader went away: not an error
            return EXIT_OK


def _run(args, networks: dict[str, str], config, end: float, scratch: str) -> tuple[int, str]:
    """The whole verification, to stop by ``end``: (exit code, text for stdout).

    Messages go to stderr; a composed model is written into ``scratch``.
    """
    try:
        problem = _load(args.query, networks, scratch)
        remaining = max(end - time.monotonic(), 1e-3)
        with contextlib.redirect_stdout(sys.stderr):
            verdict, lines = _solve(problem, config.replace(timeout=remaining),
                                    args.serialise_assignments)
        return EXIT_OK, "".join(f"{line}\n" for line in (_VERDICT_WORDS[verdict], *lines))
    except InputError as exc:
        print(f"genbab: error: {exc}", file=sys.stderr)
        return EXIT_INPUT, ""
    except KeyboardInterrupt:
        print("genbab: interrupted", file=sys.stderr)
        return 130, ""
    except Exception as exc:  # noqa: BLE001 - last line of defence: one message, exit 1
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"genbab: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL, ""


def _supervise(work, deadline: float) -> int:
    """Run ``work`` in a child process; relay its stdout text and exit code.

    At ``deadline`` the child is killed and ``timed-out`` printed: the limit
    holds even while the child sits in a long native call (imports, torch).
    SIGTERM / SIGINT stop the child too.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(work, read_fd, write_fd)
    os.close(write_fd)
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, _: _stop(pid, 128 + signum))
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        previous = None
    try:
        text, finished = _collect(read_fd, deadline)
    except KeyboardInterrupt:
        _stop(pid, 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        os.close(read_fd)
    if not finished:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("genbab: time limit reached", file=sys.stderr)
        _write_all(1, "timed-out\n")
        return EXIT_OK
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code < 0:
        print(f"genbab: internal error: the verification process died from signal {-code}",
              file=sys.stderr)
        return EXIT_INTERNAL
    _write_all(1, text)
    return code


def _child(work, read_fd: int, write_fd: int) -> None:
    """In the forked child: run ``work``, send its text, exit with its code (never returns)."""
    code = EXIT_INTERNAL
    try:
        os.close(read_fd)
        os.dup2(2, 1)  # anything a library prints goes to stderr
        sys.stdout = sys.stderr
        code, text = work()
        _write_all(write_fd, text)
    finally:
        sys.stderr.flush()
        os._exit(code)


def _collect(fd: int, deadline: float) -> tuple[str, bool]:
    """Everything read from ``fd`` until EOF (True) or until ``deadline`` (False)."""
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b"".join(chunks).decode(), False
        data = os.read(fd, 1 << 16)
        if not data:
            return b"".join(chunks).decode(), True
        chunks.append(data)


def _stop(pid: int, code: int) -> None:
    """Kill the child and exit at once (on SIGTERM / SIGINT)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    print("genbab: interrupted", file=sys.stderr, flush=True)
    os._exit(code)


def _network_options(values: list[str]) -> dict[str, str]:
    networks: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--network expects NAME=MODEL.onnx, got '{value}'")
        if name in networks:
            raise ValueError(f"--network {name} given twice")
        networks[name] = path
    return networks


def _load(path: str, networks: dict[str, str], scratch: str):
    from pathlib import Path

    from genbab.spec.compose import load_problem
    from genbab.spec.types import SpecError

    if not Path(path).is_file():
        raise InputError(f"{path}: no such query file")
    try:
        return load_problem(path, networks, scratch)
    except SpecError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"{exc.filename or path}: cannot read ({exc.strerror})") from None


def _solve(problem, config, serialise_dir: str | None) -> tuple[str, list[str]]:
    """Run the pipeline; the verdict and the lines that follow it on stdout."""
    from bounds.errors import ModelError
    from genbab.config import ConfigError, check_device
    from genbab.verify import verify

    try:
        check_device(config)
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    try:
        result = verify(problem.model_path, problem.spec, config)
    except ModelError as exc:
        raise InputError(str(exc)) from None
    print(f"genbab: {result.verdict} by {result.method or '-'} in {result.time:.2f} s",
          file=sys.stderr)
    if result.verdict != "sat":
        return result.verdict, []
    if not problem.holds(result.x, result.y):
        print("genbab: the counterexample satisfies the relaxed property (strict comparisons "
              "as non-strict, '!=' dropped) but not the query as written: unknown",
              file=sys.stderr)
        return "unknown", []
    assignment = problem.assignment(result.x, result.y)
    if serialise_dir is not None:
        _serialise(problem, assignment, serialise_dir)
        return "sat", []
    return "sat", _assignment_lines(assignment)


def _assignment_lines(assignment) -> list[str]:
    lines = []
    for var, values in assignment:
        lines.append(f"{var.name} {var.type_name} [{','.join(map(str, var.shape))}]")
        lines.extend(repr(float(v)) for v in values)
    return lines


def read_assignment(stdout: str) -> dict[str, tuple[str, list[int], list[float]]]:
    """The standard's assignment block after ``sat`` (what ``_assignment_lines`` writes):
    name -> (type, dims, values).  Raises ValueError on a malformed block."""
    lines = stdout.splitlines()
    if not lines or lines[0] != "sat":
        raise ValueError("the output does not start with 'sat'")
    blocks, i = {}, 1
    while i < len(lines):
        name, type_name, dims = lines[i].split(" ")
        if not (dims.startswith("[") and dims.endswith("]")):
            raise ValueError(f"line {i + 1}: expected NAME TYPE [dims], got '{lines[i]}'")
        shape = [int(d) for d in dims[1:-1].split(",") if d]
        n = 1
        for d in shape:
            n *= d
        values = [float(v) for v in lines[i + 1:i + 1 + n]]
        if len(values) != n:
            raise ValueError(f"{name}: expected {n} values, got {len(values)}")
        blocks[name] = (type_name, shape, values)
        i += 1 + n
    return blocks


def _serialise(problem, assignment, folder: str) -> None:
    """One ``<folder>/<variable>.pb`` TensorProto per variable, in the model's element type."""
    from pathlib import Path

    import numpy as np
    from onnx import numpy_helper

    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for var, values in assignment:
            dtype = np.float64 if problem.model_type(var) == "float64" else np.float32
            tensor = numpy_helper.from_array(np.asarray(values, dtype=dtype).reshape(var.shape),
                                             var.name)
            (out / f"{var.name}.pb").write_bytes(tensor.SerializeToString())
    except OSError as exc:
        raise InputError(f"--serialise-assignments {folder}: cannot write ({exc.strerror})") \
            from None


def _config(args):
    from genbab.config import ConfigError, load_with_overrides

    try:
        return load_with_overrides(args.config, {"device": args.device, "seed": args.seed})
    except ConfigError as exc:
        raise InputError(str(exc)) from None


def _write_all(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        written = os.write(fd, data)
        data = data[written:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = dispatch(argv)
    if code is None:
        print("usage: python -m genbab.vnnlib2_cli (--name | supports --CAPABILITY | verify "
              "QUERY --network NAME=MODEL [--timeout S])", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
