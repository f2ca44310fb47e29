"""Train the project's shipped example networks on the scikit-learn 8x8 digits.

Writes small fully connected Sigmoid/Tanh classifiers as ONNX files to
``vnnlib_specs/examples/onnx/`` and a few dozen test images that every network
classifies correctly to ``vnnlib_specs/examples/digits_test.npz`` (together with
each network's accuracy on the whole held-out split).  Nothing is downloaded:
the digits ship with scikit-learn.  Deterministic: fixed seeds, one thread,
deterministic torch algorithms.

Usage: ``python scripts/train_examples.py`` (from the repository root; < 60 s).
"""
from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "vnnlib_specs" / "examples"
SPLIT_SEED = 0
TEST_FRACTION = 0.25
N_SAVED_IMAGES = 32


@dataclass(frozen=True)
class NetSpec:
    """Architecture and training budget of one example network."""

    name: str
    hidden: tuple[int, ...]
    activation: str  # "Sigmoid" or "Tanh" (the ONNX op name)
    epochs: int
    lr: float
    seed: int


NETWORKS = (
    NetSpec("digits_sigmoid_3x32", (32, 32, 32), "Sigmoid", epochs=60, lr=1e-2, seed=1),
    NetSpec("digits_tanh_2x32", (32, 32), "Tanh", epochs=40, lr=1e-2, seed=2),
    NetSpec("digits_sigmoid_tiny", (8, 8), "Sigmoid", epochs=80, lr=2e-2, seed=3),
)


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test, test_dataset_indices); pixels scaled to [0, 1]."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    idx_train, idx_test = train_test_split(
        idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test], idx_test


def build_model(net: NetSpec, n_in: int = 64, n_out: int = 10) -> nn.Sequential:
    """A fully connected classifier: Linear, activation, ..., Linear."""
    act = {"Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh}[net.activation]
    layers: list[nn.Module] = []
    width = n_in
    for h in net.hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def train(net: NetSpec, x: np.ndarray, y: np.ndarray) -> nn.Sequential:
    """Train with Adam on minibatches of 64, seeded by ``net.seed``."""
    torch.manual_seed(net.seed)
    model = build_model(net)
    opt = torch.optim.Adam(model.parameters(), lr=net.lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(net.seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(net.epochs):
        for batch in torch.randperm(len(yt), generator=gen).split(64):
            opt.zero_grad()
            loss_fn(model(xt[batch]), yt[batch]).backward()
            opt.step()
    return model.eval()


def linear_layers(model: nn.Sequential) -> list[nn.Linear]:
    """The Linear layers of ``model`` in order."""
    return [m for m in model if isinstance(m, nn.Linear)]


def build_onnx_by_hand(model: nn.Sequential, activation: str) -> onnx.ModelProto:
    """Gemm + activation graph built with onnx.helper (fallback when torch cannot export)."""
    nodes, inits = [], []
    prev = "input"
    layers = linear_layers(model)
    for i, layer in enumerate(layers):
        w = numpy_helper.from_array(layer.weight.detach().numpy(), f"W{i}")
        b = numpy_helper.from_array(layer.bias.detach().numpy(), f"B{i}")
        inits += [w, b]
        out = "output" if i == len(layers) - 1 else f"z{i}"
        nodes.append(helper.make_node("Gemm", [prev, w.name, b.name], [out], transB=1))
        if out != "output":
            nodes.append(helper.make_node(activation, [out], [f"a{i}"]))
            prev = f"a{i}"
    n_in, n_out = layers[0].in_features, layers[-1].out_features
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n_out])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def export_onnx(model: nn.Sequential, activation: str, path: Path) -> None:
    """Export with the legacy TorchScript exporter; hand-build the graph if it is unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (torch.zeros(1, 64),), str(path), dynamo=False, opset_version=13,
                input_names=["input"], output_names=["output"],
            )
    except (RuntimeError, TypeError, ImportError, AttributeError) as err:
        print(f"  legacy export unavailable ({type(err).__name__}); building the graph by hand")
        onnx.save(build_onnx_by_hand(model, activation), str(path))
    onnx.checker.check_model(onnx.load(str(path)))


def ort_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """Class predictions of the ONNX model for a batch of flattened images (one at a time)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.array([sess.run(None, {name: row[None, :]})[0].argmax() for row in x])


def pick_saved_images(correct: np.ndarray, n: int) -> np.ndarray:
    """Positions in the test split of the first ``n`` images every network gets right."""
    return np.flatnonzero(correct.all(axis=0))[:n]


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR, help="examples directory")
    return parser.parse_args()


def main() -> None:
    """Train, export and check every example network, then save the spec images."""
    args = parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    (args.out / "onnx").mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test, test_idx = load_split()
    correct, accuracies = [], []
    for net in NETWORKS:
        start = time.perf_counter()
        model = train(net, x_train, y_train)
        path = args.out / "onnx" / f"{net.name}.onnx"
        export_onnx(model, net.activation, path)
        hits = ort_predict(path, x_test) == y_test
        correct.append(hits)
        accuracies.append(hits.mean())
        print(f"{path.name}: test accuracy {hits.mean():.4f} "
              f"({time.perf_counter() - start:.1f} s)")
    keep = pick_saved_images(np.array(correct), N_SAVED_IMAGES)
    np.savez_compressed(
        args.out / "digits_test.npz",
        images=x_test[keep], labels=y_test[keep], dataset_indices=test_idx[keep],
        networks=np.array([f"{n.name}.onnx" for n in NETWORKS]),
        test_accuracy=np.array(accuracies),
    )
    print(f"saved {len(keep)} test images to {args.out / 'digits_test.npz'}")


if __name__ == "__main__":
    main()
