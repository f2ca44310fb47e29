"""The shipped example networks and robustness instances in ``vnnlib_specs/examples``.

Checks that the ONNX models load and use only the ops we claim, that they
classify the saved images as recorded, that each VNN-LIB file is well formed,
and that every instance listed as ``sat`` has a counterexample found by an
independent seeded PGD and confirmed by onnxruntime.  Also unit-tests the spec
writer in ``vnnlib_specs/robustness.py``.
"""
from __future__ import annotations

import csv
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "vnnlib_specs" / "examples"
ACTIVATIONS = {
    "digits_sigmoid_3x32.onnx": ("Sigmoid", 3),
    "digits_tanh_2x32.onnx": ("Tanh", 2),
    "digits_sigmoid_tiny.onnx": ("Sigmoid", 2),
}
ALLOWED_OPS = {"Gemm", "MatMul", "Add", "Sigmoid", "Tanh", "Flatten", "Reshape"}
NUM = r"([-+0-9.eE]+)"


def load_module(relative: str, name: str):
    """Import a repository file that is not inside a package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def read_rows(name: str) -> list[list[str]]:
    """Rows of a CSV file in the examples directory."""
    with open(EXAMPLES / name, newline="") as f:
        return [row for row in csv.reader(f) if row]


def session(onnx_name: str) -> ort.InferenceSession:
    """An onnxruntime session for a shipped network."""
    return ort.InferenceSession(str(EXAMPLES / "onnx" / onnx_name), providers=["CPUExecutionProvider"])


def ort_logits(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Logits for each row of ``x`` (the models take a batch of one)."""
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: row[None, :].astype(np.float32)})[0][0] for row in x])


def parse_spec(path: Path) -> dict:
    """Read back a robustness spec with regexes."""
    text = path.read_text()
    upper = {int(i): float(v) for i, v in re.findall(rf"\(assert \(<= X_(\d+) {NUM}\)\)", text)}
    lower = {int(i): float(v) for i, v in re.findall(rf"\(assert \(>= X_(\d+) {NUM}\)\)", text)}
    header = re.search(rf"image index: (\d+) .*label (\d+), eps {NUM}", text)
    return {
        "text": text,
        "n_x": len(re.findall(r"\(declare-const X_\d+ Real\)", text)),
        "n_y": len(re.findall(r"\(declare-const Y_\d+ Real\)", text)),
        "lower": np.array([lower[i] for i in sorted(lower)]),
        "upper": np.array([upper[i] for i in sorted(upper)]),
        "disjuncts": [(int(j), int(k)) for j, k in re.findall(r"\(and \(>= Y_(\d+) Y_(\d+)\)\)", text)],
        "index": int(header.group(1)),
        "label": int(header.group(2)),
        "eps": float(header.group(3)),
    }


def torch_mlp(onnx_name: str):
    """A float64 torch function rebuilt from the ONNX weights (Gemm / Sigmoid / Tanh)."""
    model = onnx.load(str(EXAMPLES / "onnx" / onnx_name))
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64))
             for t in model.graph.initializer}
    steps = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            w = inits[node.input[1]]
            steps.append((w if attrs.get("transB", 0) else w.T, inits[node.input[2]]))
        else:
            steps.append({"Sigmoid": torch.sigmoid, "Tanh": torch.tanh}[node.op_type])

    def forward(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = x @ step[0].T + step[1] if isinstance(step, tuple) else step(x)
        return x

    return forward


def pgd(forward, lower: np.ndarray, upper: np.ndarray, label: int, n_out: int) -> np.ndarray:
    """Seeded targeted sign-gradient PGD; returns all final points."""
    gen = torch.Generator().manual_seed(0)
    lo, hi = torch.from_numpy(lower), torch.from_numpy(upper)
    targets = torch.tensor([j for j in range(n_out) if j != label] * 2)
    x = lo + (hi - lo) * torch.rand(len(targets), lo.numel(), generator=gen, dtype=torch.float64)
    rows = torch.arange(len(targets))
    for step in range(100):
        x.requires_grad_(True)
        y = forward(x)
        (grad,) = torch.autograd.grad((y[rows, targets] - y[:, label]).sum(), x)
        alpha = (hi - lo) * 0.25 * (1.0 - step / 100)
        x = torch.minimum(torch.maximum(x.detach() + alpha * grad.sign(), lo), hi)
    return x.numpy()


INSTANCES = read_rows("instances.csv")
EXPECTED = read_rows("expected.csv")[1:]
SAT = [row[:2] for row in EXPECTED if row[2] == "sat"]


@pytest.mark.parametrize("onnx_name", sorted(ACTIVATIONS))
def test_model_loads_with_expected_ops(onnx_name):
    sess = session(onnx_name)
    assert sess.get_inputs()[0].shape == [1, 64]
    assert sess.get_outputs()[0].shape == [1, 10]
    ops = [n.op_type for n in onnx.load(str(EXAMPLES / "onnx" / onnx_name)).graph.node]
    assert set(ops) <= ALLOWED_OPS
    activation, n_hidden = ACTIVATIONS[onnx_name]
    assert ops.count(activation) == n_hidden
    assert ops.count("Gemm") + ops.count("MatMul") == n_hidden + 1


@pytest.mark.parametrize("onnx_name", sorted(ACTIVATIONS))
def test_saved_images_classified_correctly(onnx_name):
    data = np.load(EXAMPLES / "digits_test.npz")
    assert data["images"].shape[1] == 64 and 0.0 <= data["images"].min() <= data["images"].max() <= 1.0
    logits = ort_logits(session(onnx_name), data["images"])
    np.testing.assert_array_equal(logits.argmax(axis=1), data["labels"])


def test_recorded_test_accuracy_reproduces():
    train = load_module("scripts/train_examples.py", "train_examples")
    _, _, x_test, y_test, test_idx = train.load_split()
    data = np.load(EXAMPLES / "digits_test.npz")
    assert set(data["dataset_indices"]) <= set(test_idx)
    for onnx_name, recorded in zip(data["networks"], data["test_accuracy"]):
        accuracy = (ort_logits(session(str(onnx_name)), x_test).argmax(axis=1) == y_test).mean()
        assert accuracy == pytest.approx(recorded, abs=1.5 / len(y_test))
        assert accuracy > 0.9


def test_instance_lists_agree():
    assert INSTANCES and [r[:2] for r in INSTANCES] == [r[:2] for r in EXPECTED]
    assert read_rows("expected.csv")[0] == ["onnx", "vnnlib", "expected"]
    for onnx_path, vnnlib_path, timeout in INSTANCES:
        assert (EXAMPLES / onnx_path).is_file() and (EXAMPLES / vnnlib_path).is_file()
        assert float(timeout) == 60
    assert {r[2] for r in EXPECTED} <= {"sat", "unsat", "unknown"}
    assert {onnx_path for onnx_path, _ in SAT} == {f"onnx/{n}" for n in ACTIVATIONS}


def test_instance_set_is_grid_plus_extras():
    make_specs = load_module("scripts/make_example_specs.py", "make_example_specs")
    names = [Path(r[1]).name for r in EXPECTED]
    grid = [f"{net}_idx{i}_eps{eps:g}.vnnlib" for net in make_specs.NETWORKS
            for eps in make_specs.EPSILONS for i in make_specs.IMAGE_INDICES]
    extra = [(f"{net}_idx{i}_eps{eps:g}.vnnlib", verdict)
             for net, i, eps, verdict in make_specs.EXTRA_INSTANCES]
    assert len(EXPECTED) == 25 and names == grid + [name for name, _ in extra]
    assert [(Path(r[1]).name, r[2]) for r in EXPECTED[len(grid):]] == extra
    assert [r[2] for r in EXPECTED[len(grid):]] == ["unsat"]
    assert {r[2] for r in EXPECTED[:len(grid)]} == {"sat", "unknown"}
    assert {Path(p).name for p in (EXAMPLES / "vnnlib").glob("*.vnnlib")} == set(names)


def test_examples_are_small():
    total = sum(p.stat().st_size for p in EXAMPLES.rglob("*") if p.is_file())
    assert total < 2_000_000


@pytest.mark.parametrize("vnnlib_path", [r[1] for r in INSTANCES])
def test_spec_well_formed(vnnlib_path):
    spec = parse_spec(EXAMPLES / vnnlib_path)
    data = np.load(EXAMPLES / "digits_test.npz")
    image, label = data["images"][spec["index"]].astype(np.float64), int(data["labels"][spec["index"]])
    assert (spec["n_x"], spec["n_y"]) == (64, 10)
    assert spec["lower"].size == spec["upper"].size == 64
    assert np.all(0.0 <= spec["lower"]) and np.all(spec["upper"] <= 1.0)
    assert np.all(spec["lower"] <= image) and np.all(image <= spec["upper"])
    assert np.all(spec["upper"] - spec["lower"] <= 2 * spec["eps"] + 1e-9)
    assert spec["label"] == label
    assert spec["disjuncts"] == [(j, label) for j in range(10) if j != label]
    assert spec["text"].count("(assert (or") == 1


@pytest.mark.parametrize("onnx_path,vnnlib_path", SAT)
def test_sat_instance_has_confirmed_counterexample(onnx_path, vnnlib_path):
    onnx_name = Path(onnx_path).name
    spec = parse_spec(EXAMPLES / vnnlib_path)
    lower, upper, label = spec["lower"], spec["upper"], spec["label"]
    candidates = pgd(torch_mlp(onnx_name), lower, upper, label, 10)
    x32 = np.clip(candidates, lower, upper).astype(np.float32)
    x32 = np.where(x32 < lower, np.nextafter(x32, np.float32(np.inf)), x32)
    x32 = np.where(x32 > upper, np.nextafter(x32, np.float32(-np.inf)), x32)
    inside = np.all((x32 >= lower) & (x32 <= upper), axis=1)
    y = ort_logits(session(onnx_name), x32[inside])
    violated = (np.delete(y, label, axis=1) >= y[:, [label]]).any(axis=1)
    assert violated.any(), f"no confirmed counterexample for {vnnlib_path}"


def test_write_robustness_spec_clips_and_validates(tmp_path):
    robustness = load_module("vnnlib_specs/robustness.py", "robustness")
    image = np.array([0.0, 0.5, 1.0, 0.03])
    path = robustness.write_robustness_spec(
        tmp_path / "p.vnnlib", image, 2, 0.05, 3, comment="network: toy.onnx\nimage index: 0"
    )
    text = path.read_text()
    assert text.startswith("; network: toy.onnx\n; image index: 0\n")
    assert "label 2, eps 0.05" in text
    assert len(re.findall(r"declare-const X_\d+ Real", text)) == 4
    assert len(re.findall(r"declare-const Y_\d+ Real", text)) == 3
    for line in ("(assert (>= X_0 0.0))", "(assert (<= X_2 1.0))", "(assert (>= X_3 0.0))",
                 "(assert (<= X_1 0.55))", "(assert (>= X_1 0.45))", "(assert (<= X_3 0.08))"):
        assert line in text
    assert re.findall(r"\(and \(>= Y_(\d) Y_2\)\)", text) == ["0", "1"]
    with pytest.raises(ValueError):
        robustness.format_robustness_spec(image, 3, 0.05, 3)
    with pytest.raises(ValueError):
        robustness.format_robustness_spec(image, 0, -0.1, 3)
