"""Generate the shipped robustness instances for the example digits networks.

For every network in ``vnnlib_specs/examples/onnx/`` and every (image, eps) pair
in ``INSTANCES`` this writes a VNN-LIB property to ``vnnlib_specs/examples/vnnlib/``,
lists it in ``instances.csv`` (VNN-COMP layout: ``onnx/<f>,vnnlib/<f>,<timeout>``)
and records in ``expected.csv`` whether a seeded PGD attack found a
counterexample that onnxruntime confirms (``sat``) or not (``unknown``).
``EXTRA_INSTANCES`` adds hand-picked instances with a recorded verdict (``unsat``:
proved by genbab's alpha-CROWN, while plain CROWN cannot); they are listed after
the grid, and the script stops if PGD finds a counterexample to one of them.
Reproducible: same inputs, same files.

Usage: ``python scripts/make_example_specs.py`` after ``python scripts/train_examples.py``.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "vnnlib_specs" / "examples"
NETWORKS = ("digits_sigmoid_3x32", "digits_tanh_2x32", "digits_sigmoid_tiny")
IMAGE_INDICES = (0, 1, 2, 3)
EPSILONS = (0.01, 0.08)
TIMEOUT = 60
PGD_STEPS = 100
PGD_RESTARTS_PER_CLASS = 2
PGD_SEED = 0
# (network, saved image index, eps, recorded verdict): proved by `genbab verify` at the root
# (alpha-CROWN, worst margin about +0.06) but not by plain CROWN (worst margin -0.757).
EXTRA_INSTANCES = (("digits_tanh_2x32", 1, 0.05, "unsat"),)


def load_robustness_module() -> ModuleType:
    """Import ``vnnlib_specs/robustness.py`` by path (vnnlib_specs is not a package)."""
    spec = importlib.util.spec_from_file_location("robustness", ROOT / "vnnlib_specs" / "robustness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def onnx_mlp_layers(path: Path) -> list[tuple[str, torch.Tensor | None, torch.Tensor | None]]:
    """The graph as (op, weight [out, in], bias) steps in float64; supports Gemm and activations."""
    model = onnx.load(str(path))
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64))
             for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise ValueError(f"unsupported Gemm attributes {attrs}")
            w = inits[node.input[1]]
            layers.append(("Gemm", w if attrs.get("transB", 0) else w.T, inits[node.input[2]]))
        elif node.op_type in ("Sigmoid", "Tanh"):
            layers.append((node.op_type, None, None))
        else:
            raise ValueError(f"unsupported op {node.op_type} in {path.name}")
    return layers


def forward(layers: list, x: torch.Tensor) -> torch.Tensor:
    """Evaluate the MLP steps on a batch ``x`` of shape [batch, n_inputs]."""
    for op, w, b in layers:
        if op == "Gemm":
            x = x @ w.T + b
        else:
            x = torch.sigmoid(x) if op == "Sigmoid" else torch.tanh(x)
    return x


def pgd_candidates(
    layers: list, lower: np.ndarray, upper: np.ndarray, label: int, n_classes: int
) -> np.ndarray:
    """Targeted sign-gradient PGD from random starts; returns final points, best margin first."""
    gen = torch.Generator().manual_seed(PGD_SEED)
    lo, hi = torch.from_numpy(lower), torch.from_numpy(upper)
    targets = torch.tensor([j for j in range(n_classes) if j != label] * PGD_RESTARTS_PER_CLASS)
    x = lo + (hi - lo) * torch.rand(len(targets), lo.numel(), generator=gen, dtype=torch.float64)
    rows = torch.arange(len(targets))
    for step in range(PGD_STEPS):
        x.requires_grad_(True)
        y = forward(layers, x)
        margin = y[rows, targets] - y[:, label]
        (grad,) = torch.autograd.grad(margin.sum(), x)
        alpha = (hi - lo) * 0.25 * (1.0 - step / PGD_STEPS)
        x = torch.minimum(torch.maximum(x.detach() + alpha * grad.sign(), lo), hi)
    with torch.no_grad():
        y = forward(layers, x)
        margin = y[rows, targets] - y[:, label]
    return x[torch.argsort(margin, descending=True)].numpy()


def to_float32_in_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Round ``x`` to float32 while staying inside the float64 box [lower, upper]."""
    x32 = np.clip(x, lower, upper).astype(np.float32)
    x32 = np.where(x32 < lower, np.nextafter(x32, np.float32(np.inf)), x32)
    return np.where(x32 > upper, np.nextafter(x32, np.float32(-np.inf)), x32)


def confirmed_counterexample(
    session: ort.InferenceSession, candidates: np.ndarray, lower: np.ndarray,
    upper: np.ndarray, label: int,
) -> np.ndarray | None:
    """First candidate that onnxruntime confirms is in the box and violates the property."""
    name = session.get_inputs()[0].name
    for x in candidates:
        x32 = to_float32_in_box(x, lower, upper)
        if not (np.all(x32 >= lower) and np.all(x32 <= upper)):
            continue
        y = session.run(None, {name: x32[None, :]})[0].reshape(-1)
        if np.any(np.delete(y, label) >= y[label]):
            return x32
    return None


def attack_instance(
    layers: list, session: ort.InferenceSession, lower: np.ndarray, upper: np.ndarray,
    label: int, n_classes: int,
) -> str:
    """``sat`` if PGD finds an onnxruntime-confirmed counterexample, else ``unknown``."""
    candidates = pgd_candidates(layers, lower, upper, label, n_classes)
    found = confirmed_counterexample(session, candidates[:8], lower, upper, label)
    return "unknown" if found is None else "sat"


def make_instance(
    net: str, index: int, eps: float, data: dict, robustness: ModuleType, out: Path,
    attack: tuple,
) -> tuple[str, str, str]:
    """Write one spec and attack it; return its (onnx, vnnlib, PGD verdict) row."""
    layers, session, n_classes = attack
    image, label = data["images"][index], int(data["labels"][index])
    name = f"{net}_idx{index}_eps{eps:g}.vnnlib"
    comment = (f"network: {net}.onnx\n"
               f"image index: {index} (in digits_test.npz), label {label}, eps {eps:g}")
    robustness.write_robustness_spec(
        out / "vnnlib" / name, image, label, eps, n_classes, comment=comment
    )
    lower, upper = robustness.robustness_box(image, eps)
    verdict = attack_instance(layers, session, lower, upper, label, n_classes)
    return (f"onnx/{net}.onnx", f"vnnlib/{name}", verdict)


def network_attack(net: str, robustness: ModuleType, out: Path) -> tuple:
    """What attacking one network needs: float64 layers, onnxruntime session, class count."""
    onnx_path = out / "onnx" / f"{net}.onnx"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return onnx_mlp_layers(onnx_path), session, robustness.onnx_output_size(onnx_path)


def make_network_instances(
    net: str, data: dict, robustness: ModuleType, out: Path
) -> list[tuple[str, str, str]]:
    """Write the grid specs of one network; return (onnx, vnnlib, expected) rows."""
    attack = network_attack(net, robustness, out)
    return [make_instance(net, index, eps, data, robustness, out, attack)
            for eps in EPSILONS for index in IMAGE_INDICES]


def make_extra_instances(
    data: dict, robustness: ModuleType, out: Path
) -> list[tuple[str, str, str]]:
    """Write ``EXTRA_INSTANCES`` with their recorded verdicts (PGD must not refute them)."""
    rows = []
    for net, index, eps, expected in EXTRA_INSTANCES:
        onnx_file, vnnlib_file, found = make_instance(
            net, index, eps, data, robustness, out, network_attack(net, robustness, out))
        if found == "sat" and expected != "sat":
            raise RuntimeError(f"{vnnlib_file} is recorded {expected} but PGD found a "
                               "confirmed counterexample")
        rows.append((onnx_file, vnnlib_file, expected))
    return rows


def write_csvs(rows: list[tuple[str, str, str]], out: Path) -> None:
    """Write instances.csv (no header, VNN-COMP style) and expected.csv (with header)."""
    with open(out / "instances.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows((o, v, TIMEOUT) for o, v, _ in rows)
    with open(out / "expected.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("onnx", "vnnlib", "expected"))
        writer.writerows(rows)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR, help="examples directory")
    return parser.parse_args()


def main() -> None:
    """Write every instance, attack it, and write the two CSV files."""
    args = parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    robustness = load_robustness_module()
    data = dict(np.load(args.out / "digits_test.npz"))
    for old in (args.out / "vnnlib").glob("*.vnnlib"):
        old.unlink()
    rows = []
    for net in NETWORKS:
        net_rows = make_network_instances(net, data, robustness, args.out)
        n_sat = sum(r[2] == "sat" for r in net_rows)
        print(f"{net}: {len(net_rows)} instances, {n_sat} sat")
        rows += net_rows
    extra = make_extra_instances(data, robustness, args.out)
    print(f"extra: {len(extra)} instances ({', '.join(r[2] for r in extra)})")
    write_csvs(rows + extra, args.out)


if __name__ == "__main__":
    main()
