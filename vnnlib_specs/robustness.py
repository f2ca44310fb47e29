"""L-infinity local-robustness properties written as VNN-LIB 1.0 (VNN-COMP layout).

Owns the text of a robustness spec: the input box ``[x - eps, x + eps]`` clipped
to the valid pixel range, one ``declare-const`` per input and output, and the
unsafe region "some other class scores at least as high as the label".  The box
is rounded to ``DECIMALS`` places and :func:`robustness_box` returns exactly the
numbers written, so attacks can search the property as the file states it.

CLI::

    python vnnlib_specs/robustness.py --onnx vnnlib_specs/examples/onnx/digits_tanh_2x32.onnx \\
        --images vnnlib_specs/examples/digits_test.npz --index 3 --eps 0.05 --out prop.vnnlib
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DECIMALS = 10


def robustness_box(
    image: np.ndarray, eps: float, clip: tuple[float, float] = (0.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 (lower, upper) of the clipped eps-box, rounded as written to file."""
    x = np.asarray(image, dtype=np.float64).reshape(-1)
    lower = np.round(np.clip(x - eps, clip[0], clip[1]), DECIMALS)
    upper = np.round(np.clip(x + eps, clip[0], clip[1]), DECIMALS)
    return lower, upper


def _number(value: float) -> str:
    """Shortest decimal text that reads back as ``value``."""
    return repr(float(value))


def _comment_lines(text: str) -> list[str]:
    """Each line of ``text`` as a VNN-LIB comment."""
    return [f"; {line}".rstrip() for line in text.splitlines()]


def _declarations(n_inputs: int, n_outputs: int) -> list[str]:
    """``declare-const`` lines for X_0.. and Y_0..."""
    lines = ["", "; Definition of input variables"]
    lines += [f"(declare-const X_{i} Real)" for i in range(n_inputs)]
    lines += ["", "; Definition of output variables"]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_outputs)]
    return lines


def _input_constraints(lower: np.ndarray, upper: np.ndarray) -> list[str]:
    """Per-input upper then lower bound assertions."""
    lines = ["", "; Definition of input constraints"]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines.append(f"(assert (<= X_{i} {_number(hi)}))")
        lines.append(f"(assert (>= X_{i} {_number(lo)}))")
    return lines


def _output_constraints(label: int, n_outputs: int) -> list[str]:
    """Unsafe region: some class ``j != label`` has ``Y_j >= Y_label``."""
    lines = ["", "; Definition of output constraints (unsafe: another class scores >= label)"]
    lines.append("(assert (or")
    lines += [f"\t(and (>= Y_{j} Y_{label}))" for j in range(n_outputs) if j != label]
    lines.append("))")
    return lines


def format_robustness_spec(
    image: np.ndarray,
    label: int,
    eps: float,
    n_outputs: int,
    clip: tuple[float, float] = (0.0, 1.0),
    comment: str = "",
) -> str:
    """The VNN-LIB text of the local-robustness property around ``image``."""
    if not 0 <= label < n_outputs:
        raise ValueError(f"label {label} outside 0..{n_outputs - 1}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    lower, upper = robustness_box(image, eps, clip)
    header = f"L-infinity local robustness: label {label}, eps {eps}, box clipped to {list(clip)}"
    lines = _comment_lines(comment) + _comment_lines(header)
    lines += _declarations(lower.size, n_outputs)
    lines += _input_constraints(lower, upper)
    lines += _output_constraints(label, n_outputs)
    return "\n".join(lines) + "\n"


def write_robustness_spec(
    path: str | Path,
    image: np.ndarray,
    label: int,
    eps: float,
    n_outputs: int,
    clip: tuple[float, float] = (0.0, 1.0),
    comment: str = "",
) -> Path:
    """Write the VNN-LIB robustness property to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_robustness_spec(image, label, eps, n_outputs, clip, comment))
    return path


def onnx_output_size(onnx_path: str | Path) -> int:
    """Number of scalar outputs of the (single-output) ONNX model."""
    import onnx  # local import: the spec writer itself needs only numpy

    dims = onnx.load(str(onnx_path)).graph.output[0].type.tensor_type.shape.dim
    return int(np.prod([d.dim_value for d in dims]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Write an L-inf robustness VNN-LIB property.")
    parser.add_argument("--onnx", type=Path, required=True, help="network (for output size)")
    parser.add_argument("--images", type=Path, required=True, help="npz with images, labels")
    parser.add_argument("--index", type=int, required=True, help="image index in the npz")
    parser.add_argument("--eps", type=float, required=True, help="L-infinity radius")
    parser.add_argument("--out", type=Path, required=True, help="output .vnnlib file")
    parser.add_argument("--clip", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    args = parse_args(argv)
    data = np.load(args.images)
    image, label = data["images"][args.index], int(data["labels"][args.index])
    comment = f"network: {args.onnx.name}\nimage index: {args.index} (in {args.images.name})"
    path = write_robustness_spec(
        args.out, image, label, args.eps, onnx_output_size(args.onnx), tuple(args.clip), comment
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
