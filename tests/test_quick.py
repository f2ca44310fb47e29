"""The torch-free quick stage (genbab.quick, quick_model, quick_ops, onnx_lite).

- the private ONNX schema matches onnx's own descriptors, and tensors read
  the same as with ``onnx.numpy_helper``;
- soundness: on random small float32 MLPs (Gemm / MatMul+Add, Relu / Sigmoid /
  Tanh, Sub / Mul / Div by constants, Flatten, Reshape) the quick IBP bounds
  contain onnxruntime's outputs at dense samples and box corners, and at
  single points (degenerate boxes: only the rounding margins are left);
- verdicts on the shipped examples: IBP proves the easy one, sampling finds a
  confirmed counterexample on a sat one, and it declines (None) where
  alpha-CROWN is needed and on an unsupported op;
- ``genbab verify`` on the easy instance imports no torch, and ``--no-quick``
  gives the same verdict through the full pipeline.
"""
from __future__ import annotations

import gzip
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from genbab import onnx_lite
from genbab.config import Config
from genbab.quick import _check_model, _Session, quick_verify
from genbab.quick_model import Limits, Unsupported, read_quick_model
from genbab.spec.types import Disjunct, Spec, SpecCase
from genbab.spec.vnnlib1 import parse_vnnlib1

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "vnnlib_specs" / "examples"
TINY = EXAMPLES / "onnx" / "digits_sigmoid_tiny.onnx"
TANH = EXAMPLES / "onnx" / "digits_tanh_2x32.onnx"
IBP_SPEC = EXAMPLES / "vnnlib" / "digits_sigmoid_tiny_idx2_eps0.01.vnnlib"
SAT_SPEC = EXAMPLES / "vnnlib" / "digits_sigmoid_tiny_idx0_eps0.08.vnnlib"
ALPHA_SPEC = EXAMPLES / "vnnlib" / "digits_tanh_2x32_idx1_eps0.05.vnnlib"


# --- building models -------------------------------------------------------------------------

def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inits, in_shape, out_name="y", opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def random_mlp(seed: int) -> tuple[onnx.ModelProto, int]:
    """A float32 MLP with a symbolic batch axis (onnxruntime runs many points at once)."""
    rng = np.random.default_rng(seed)
    image = seed % 2 == 0
    n_in = 12
    nodes, inits = [], []
    cur = "x"

    def add(op, inputs, **attrs):
        nonlocal cur
        out = f"v{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        cur = out

    def const(value, dtype=np.float32):
        name = f"c{len(inits)}"
        inits.append(_const(name, np.asarray(value, dtype)))
        return name

    if image:
        add("Flatten", [cur], axis=1)
    shift = const(rng.normal(size=n_in) * 0.1)
    add("Sub", [cur, shift] if seed % 3 else [shift, cur])  # x - c, or c - x
    add("Div", [cur, const(rng.uniform(0.5, 2.0, size=(1, n_in)) * rng.choice([-1, 1], n_in))])
    width = n_in
    for layer, act in enumerate(rng.choice(["Relu", "Sigmoid", "Tanh"], size=3)):
        out = int(rng.integers(3, 9))
        W = (rng.normal(size=(width, out)) * rng.uniform(0.3, 3)).astype(np.float32)
        b = rng.normal(size=out).astype(np.float32)
        if layer % 2 == 0:
            trans = int(rng.integers(0, 2))
            add("Gemm", [cur, const(W.T if trans else W), const(b)], transB=trans,
                alpha=float(rng.uniform(0.5, 1.5)), beta=float(rng.uniform(0.5, 1.5)))
        else:
            add("MatMul", [cur, const(W)])
            add("Add", [const(b), cur])
            add("Reshape", [cur, const([-1, out], np.int64)])
        add(str(act), [cur])
        if layer == 1:
            add("Mul", [cur, const(rng.uniform(-2, 2, size=out))])
        width = out
    nodes[-1].output[0] = "y"
    return _model(nodes, inits, ["N", 1, 3, 4] if image else ["N", n_in]), n_in


def _save(model: onnx.ModelProto, tmp_path: Path, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [x.shape[0]] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    out = session.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0]
    return np.asarray(out, np.float64).reshape(x.shape[0], -1)


# --- the private schema ---------------------------------------------------------------------

def test_schema_matches_onnx_descriptors():
    kinds = {v: k for k, v in onnx_lite._F.items()}
    for name, fields in onnx_lite.schema().items():
        ours = onnx_lite.ONNX_NAMES.get(name, name)
        descriptor = onnx.onnx_ml_pb2.DESCRIPTOR.message_types_by_name[ours.split(".")[0]]
        if "." in ours:
            descriptor = descriptor.nested_types_by_name[ours.split(".")[1]]
        for field, number, kind, repeated, _ in fields:
            real = descriptor.fields_by_name[field]
            assert real.number == number, (name, field)
            real_kind = kinds.get(real.type, "int32")  # enums are varints: read as int32
            assert real_kind == kind or kind == "bytes" and real_kind == "message", (name, field)
            is_repeated = real.is_repeated if hasattr(real, "is_repeated") else \
                real.label == real.LABEL_REPEATED
            assert is_repeated == repeated, (name, field)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32])
@pytest.mark.parametrize("raw", [True, False])
def test_tensors_read_like_numpy_helper(dtype, raw):
    value = (np.arange(24).reshape(2, 3, 4) * 1.5 - 7).astype(dtype)
    kind = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    tensor = helper.make_tensor("t", kind, value.shape, value.tobytes() if raw else value.ravel(),
                                raw=raw)
    model = _model([], [tensor], ["N", 1], out_name="x")
    lite = onnx_lite.parse_model(model.SerializeToString())
    got = onnx_lite.tensor_to_array(lite.graph.initializer[0])
    assert got.dtype == value.dtype
    np.testing.assert_array_equal(got, numpy_helper.to_array(tensor))


def test_garbage_is_declined(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\xff\xff not a model")
    with pytest.raises(Unsupported):
        read_quick_model(path)


# --- soundness ------------------------------------------------------------------------------

def _boxes(rng: np.random.Generator, n: int):
    centre = rng.normal(size=n)
    yield centre - 0.05, centre + 0.05
    yield centre - 1.0, centre + 1.0
    far = rng.uniform(-300, -297, size=n)  # saturating tails
    yield far, far + 3


@pytest.mark.parametrize("seed", range(6))
def test_ibp_bounds_contain_onnxruntime_outputs(seed, tmp_path):
    model, n = random_mlp(seed)
    quick = read_quick_model(_save(model, tmp_path))
    rng = np.random.default_rng(100 + seed)
    for lower, upper in _boxes(rng, n):
        lo, hi = quick.interval(lower, upper)
        corners = lower + (rng.random((512, n)) < 0.5) * (upper - lower)
        inside = lower + rng.random((4000, n)) * (upper - lower)
        x = np.concatenate([corners, inside]).astype(np.float32).astype(np.float64)
        x = np.clip(x, lower, upper)  # float32 rounding may step out of the box
        x = x[np.all((lower <= x) & (x <= upper), axis=1)]
        y = _ort(model, x)
        assert np.all(lo <= y) and np.all(y <= hi), (lower[0], upper[0])
        np.testing.assert_allclose(quick.forward(x), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_point_boxes_cover_float32_rounding(seed, tmp_path):
    """At single points the bounds are the rounding margins alone: onnxruntime stays inside."""
    model, n = random_mlp(seed)
    quick = read_quick_model(_save(model, tmp_path))
    rng = np.random.default_rng(200 + seed)
    x = (rng.normal(size=(300, n)) * rng.choice([0.1, 1, 10], size=(300, 1))).astype(np.float32)
    y = _ort(model, x.astype(np.float64))
    for xi, yi in zip(x.astype(np.float64), y):
        lo, hi = quick.interval(xi, xi)
        assert np.all(lo <= yi) and np.all(yi <= hi)


def test_all_corners_of_a_small_box(tmp_path):
    model, n = random_mlp(1)
    quick = read_quick_model(_save(model, tmp_path))
    lower = np.linspace(-1, 1, n).astype(np.float32).astype(np.float64)
    upper = lower + 0.25
    lo, hi = quick.interval(lower, upper)
    corners = np.array([np.where(bits, upper, lower)
                        for bits in itertools.product([0, 1], repeat=n)])
    y = _ort(model, corners)
    assert np.all(lo <= y) and np.all(y <= hi)


# --- verdicts -------------------------------------------------------------------------------

def test_easy_example_proved_by_quick_ibp():
    result = quick_verify(TINY, parse_vnnlib1(IBP_SPEC), Config())
    assert result is not None and result.verdict == "unsat" and result.method == "quick-ibp"
    assert result.x is None and min(result.margins[0]) > 0
    assert result.stats["onnxruntime_max_diff"] < 1e-4


def test_sat_example_found_and_confirmed():
    spec = parse_vnnlib1(SAT_SPEC)
    result = quick_verify(TINY, spec, Config())
    assert result is not None and result.verdict == "sat" and result.method == "quick-attack"
    x = np.asarray(result.x)
    np.testing.assert_array_equal(x.astype(np.float32).astype(np.float64), x)  # what ort got
    case = spec.cases[0]
    assert np.all(case.lower <= x) and np.all(x <= case.upper)
    y = _ort(onnx.load(str(TINY)), x[None])[0]
    np.testing.assert_array_equal(y, result.y)
    assert any(np.all(np.asarray(dj.C) @ y <= np.asarray(dj.d)) for dj in case.disjuncts)


def test_alpha_crown_instance_declined():
    assert quick_verify(TANH, parse_vnnlib1(ALPHA_SPEC), Config()) is None


def test_unsupported_op_declined(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"]),
             helper.make_node("LeakyRelu", ["h"], ["y"], alpha=0.1)]
    model = _model(nodes, [_const("W", np.eye(2, dtype=np.float32)),
                           _const("b", np.zeros(2, np.float32))], [1, 2])
    path = _save(model, tmp_path)
    with pytest.raises(Unsupported, match="LeakyRelu"):
        read_quick_model(path)
    spec = Spec((SpecCase(np.zeros(2), np.ones(2),
                          (Disjunct(np.array([[1.0, 0.0]]), np.array([-5.0])),)),), 2, 2)
    assert quick_verify(path, spec, Config()) is None


def test_quick_off_size_mismatch_and_limits_decline():
    spec = parse_vnnlib1(IBP_SPEC)
    assert quick_verify(TINY, spec, Config(quick=False)) is None
    wrong = Spec(spec.cases, spec.n_inputs, spec.n_outputs + 1)
    assert quick_verify(TINY, wrong, Config()) is None
    with pytest.raises(Unsupported, match="parameters"):
        read_quick_model(TINY, Limits(max_parameters=100))


def test_mismatch_with_onnxruntime_declines():
    quick = read_quick_model(TINY)
    case = parse_vnnlib1(IBP_SPEC).cases[0]
    box = quick.interval(case.lower, case.upper)

    class Off:  # onnxruntime disagreeing with our reading of the model
        def run(self, x):
            return quick.forward(x[None])[0] + 0.5

    assert _check_model(quick, Off(), [case], [box], seed=0) is None

    session = _Session(quick)
    assert _check_model(quick, session, [case], [box], seed=0) < 1e-5
    too_tight = (box[1] - 1e-6, box[1])  # onnxruntime agrees, but lies outside these bounds
    assert _check_model(quick, session, [case], [too_tight], seed=0) is None


def test_gzipped_and_no_check(tmp_path):
    path = tmp_path / "tiny.onnx.gz"
    path.write_bytes(gzip.compress(TINY.read_bytes()))
    result = quick_verify(path, parse_vnnlib1(IBP_SPEC), Config(check_model=False))
    assert result is not None and result.verdict == "unsat"
    assert "onnxruntime_max_diff" not in result.stats


# --- the command line -----------------------------------------------------------------------

_PROBE = """
import sys
from genbab.cli import main
code = main(sys.argv[1:])
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def _genbab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)


def test_cli_easy_instance_imports_no_torch_and_agrees_with_full_pipeline():
    quick = _genbab("verify", str(TINY), str(IBP_SPEC))
    assert quick.returncode == 0, quick.stderr
    assert quick.stdout.splitlines()[:2] == ["unsat", "method: quick-ibp"]
    assert "torch imported: False" in quick.stderr
    full = _genbab("verify", str(TINY), str(IBP_SPEC), "--no-quick", "--method", "ibp")
    assert full.returncode == 0, full.stderr
    assert full.stdout.splitlines()[:2] == ["unsat", "method: ibp"]
    assert "torch imported: True" in full.stderr
