"""The ``genbab`` command line: argument parsing, exit codes and human output.

Exit codes (also in README.md):
  0  a verdict was produced (sat, unsat, unknown or timeout)
  1  internal error (a bug: please report it with the command line)
  2  usage error (bad command-line arguments)
  3  invalid input: unreadable/malformed property or model, unsupported operator,
     bad configuration file
Heavy modules (torch, onnx) are imported only once a command needs them.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT = 0, 1, 2, 3


class InputError(Exception):
    """A user mistake: shown as one line, exit code 3."""


def _positive_seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genbab", description="Neural-network verifier for general nonlinearities.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    verify = sub.add_parser("verify", help="verify one property on one ONNX model")
    verify.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    verify.add_argument("spec", help="property in VNN-LIB (.vnnlib or .vnnlib.gz)")
    verify.add_argument("--timeout", type=_positive_seconds, default=None,
                        help="seconds (default 300; fractions allowed)")
    verify.add_argument("--results-file", default=None, help="write a VNN-COMP results file")
    verify.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    verify.add_argument("--config", default=None, help="YAML configuration file")
    verify.add_argument("--seed", type=int, default=None)
    verify.add_argument("--method", choices=["ibp", "crown", "alpha-crown"], default=None,
                        help="strongest bound method to try (default alpha-crown)")
    verify.add_argument("--no-attack", action="store_true", help="skip the counterexample search")
    verify.add_argument("--no-quick", action="store_true",
                        help="skip the torch-free quick stage (IBP and sampling on small models)")
    verify.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    from genbab.batch_cli import add_batch_parser
    from genbab.report_cli import add_report_parser

    add_batch_parser(sub)
    add_report_parser(sub)
    return parser


def _build_config(args):
    from genbab.config import ConfigError, check_device, load_with_overrides

    try:
        config = load_with_overrides(args.config, {
            "timeout": args.timeout, "device": args.device, "seed": args.seed,
            "bounds.method": args.method,
            "attack.enabled": False if args.no_attack else None,
            "quick": False if getattr(args, "no_quick", False) else None})
        check_device(config)
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    return config


def _load_spec(path: str):
    from genbab.spec import SpecError
    from genbab.spec.vnnlib1 import parse_vnnlib1

    if not Path(path).exists():
        raise InputError(f"{path}: no such property file")
    if not Path(path).is_file():
        raise InputError(f"{path}: not a file")
    try:
        return parse_vnnlib1(path)
    except SpecError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read property ({exc.strerror})") from None


def _summary(result) -> list[str]:
    lines = [f"method: {result.method}", f"time: {result.time:.2f} s"]
    if result.verdict == "sat" and result.x is not None:
        lines.append("counterexample confirmed by onnxruntime"
                     + ("" if result.stats.get("float64_agrees") is not False
                        else " (float32; a float64 run of the model disagrees)"))
        lines.append("output: " + " ".join(f"{v:.6g}" for v in result.y[:20])
                     + (" ..." if len(result.y) > 20 else ""))
    for i, margins in enumerate(result.margins):
        if margins:
            worst = min(margins)
            lines.append(f"case {i}: worst disjunct margin {worst:.6g} "
                         f"(lower bound minus threshold; > 0 proves it)")
    timing = result.stats.get("bound_time")
    if timing:
        lines.append("bound time: " + ", ".join(f"{k} {v:.2f} s" for k, v in timing.items()))
    return lines


def cmd_verify(args) -> int:
    if getattr(args, "results_file", None):
        from genbab.signals import install_signal_handlers

        install_signal_handlers(args.results_file, args.timeout)
    from bounds.errors import ModelError
    from genbab.results import write_results_file
    from genbab.verify import verify

    if not Path(args.model).exists():
        raise InputError(f"{args.model}: no such model file")
    if not Path(args.model).is_file():
        raise InputError(f"{args.model}: not a file")
    if args.results_file and not Path(args.results_file).resolve().parent.is_dir():
        raise InputError(f"{args.results_file}: its folder does not exist")
    config = _build_config(args)
    spec = _load_spec(args.spec)
    try:
        result = verify(args.model, spec, config)
    except ModelError as exc:
        raise InputError(str(exc)) from None
    print(result.verdict, flush=True)
    for line in _summary(result):
        print(line)
    if args.results_file:
        write_results_file(args.results_file, result.verdict, result.x, result.y)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from genbab.vnnlib2_cli import dispatch  # VNN-LIB 2.0: verify --network, supports, --name

    code = dispatch(argv)
    if code is not None:
        return code
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from genbab import __version__
        print(__version__)  # bare, as the VNN-LIB 2.0 command line expects
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        from genbab.batch_cli import cmd_batch
        from genbab.report_cli import cmd_report

        return {"verify": cmd_verify, "batch": cmd_batch, "report": cmd_report}[args.command](args)
    except InputError as exc:
        print(f"genbab: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): not an error
        # point stdout at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("genbab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one message, exit 1
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"genbab: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
