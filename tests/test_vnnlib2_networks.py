"""VNN-LIB 2.0 queries over several networks, inputs, outputs and hidden nodes.

In process: the layout of the declared elements in X and Y (substituted
inputs, shared applications, the copy of X), the composed model against
onnxruntime on the original models, the declaration checks, and verdicts on
tiny models.  Through ``python -m genbab.vnnlib2_cli`` (started up front,
two at a time): exact verdicts on the shipped examples and on tiny models
built here, every ``sat`` assignment checked against the original models,
and the error conditions of the standard.
"""
from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from genbab.spec.compose import load_spec_for_model, problem_for_query
from genbab.spec.types import SpecError
from genbab.spec.vnnlib2 import holds, parse_query_text, plan_layout, read_text, to_spec
from genbab.vnnlib2_cli import read_assignment

ROOT = Path(__file__).resolve().parent.parent
ONNX_DIR = ROOT / "vnnlib_specs" / "examples" / "onnx"
QUERIES = ROOT / "vnnlib_specs" / "vnnlib2"
TINY, TANH = ONNX_DIR / "digits_sigmoid_tiny.onnx", ONNX_DIR / "digits_tanh_2x32.onnx"
TINY_HIDDEN = "/1/Sigmoid_output_0"
EXAMPLE_EQUAL = QUERIES / "digits_sigmoid_tiny_equal_to_idx2_eps0.01.vnnlib"
EXAMPLE_HIDDEN = QUERIES / "digits_sigmoid_tiny_hidden_idx2_eps0.01.vnnlib"
EXAMPLE_TWO = QUERIES / "digits_tiny_vs_tanh_idx2_eps0.01.vnnlib"
HEADER = "(vnnlib-version <2.0>)\n"
W1, B1 = [[1.0, -2.0], [0.5, 1.5], [-1.0, 1.0]], [0.1, -0.2, 0.3]
W2, B2 = [[1.0, -1.0, 2.0], [0.5, 0.5, -1.0]], [0.0, 0.1]


# ---- tiny models -------------------------------------------------------------------------


def _save(path: Path, nodes, inputs, outputs, weights: dict) -> Path:
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(nodes, path.stem,
                              [helper.make_tensor_value_info(n, f32, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, f32, s) for n, s in outputs],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _mlp(path: Path, w1, b1, w2, b2) -> Path:
    """x [1,2] -> Gemm -> Sigmoid -> Gemm -> y [1,2]."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Gemm", ["s", "w2", "b2"], ["y"], transB=1)]
    return _save(path, nodes, [("x", [1, 2])], [("y", [1, np.shape(w2)[0]])],
                 {"w1": w1, "b1": b1, "w2": w2, "b2": b2})


def _mio(path: Path) -> Path:
    """Inputs a [1,2], b [1,3]; outputs p = sigmoid(h) with h = [a b] W^T + c, and q = b V^T."""
    nodes = [helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
             helper.make_node("Gemm", ["ab", "W", "c"], ["h"], transB=1),
             helper.make_node("Sigmoid", ["h"], ["p"]),
             helper.make_node("Gemm", ["b", "V"], ["q"], transB=1)]
    weights = {"W": [[1.0, -1.0, 0.5, 0.0, 2.0], [0.5, 0.5, -1.0, 1.0, 0.0],
                     [-1.0, 2.0, 0.0, 0.5, 1.0]], "c": [0.1, 0.0, -0.1], "V": [[1.0, -2.0, 0.5]]}
    return _save(path, nodes, [("a", [1, 2]), ("b", [1, 3])], [("p", [1, 3]), ("q", [1, 1])],
                 weights)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with the tiny models (f, g = f + 1, wide = f with 4 hidden neurons, mio)."""
    folder = tmp_path_factory.mktemp("networks")
    _mlp(folder / "f.onnx", W1, B1, W2, B2)
    _mlp(folder / "g.onnx", W1, B1, W2, [b + 1.0 for b in B2])  # g(x) = f(x) + 1
    _mlp(folder / "wide.onnx", W1 + [[0.0, 1.0]], B1 + [0.0], [r + [1.0] for r in W2], B2)
    _mio(folder / "mio.onnx")
    for name, text in QUERY_TEXTS.items():
        (folder / f"{name}.vnnlib").write_text(text)
    return folder


def _run_model(path: Path, feeds: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    """onnxruntime on a model, optionally exposing intermediate tensors as outputs."""
    model = onnx.load(str(path))
    for name in outputs or []:
        model.graph.output.extend([onnx.ValueInfoProto(name=name)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    feeds = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    return [np.asarray(v, np.float64).reshape(-1) for v in session.run(names, feeds)]


# ---- queries -----------------------------------------------------------------------------

NET_F = "(declare-network f (declare-input X real [1,2]) (declare-output Y real [1,2]))\n"
NET_G = "(declare-network g (isomorphic-to f) (declare-input A real [1,2]) " \
    "(declare-output B real [1,2]))\n"
BOX_X = "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 0.25) (>= X[0,1] 0.0) (<= X[0,1] 0.25)))\n"
SAME = "(assert (and (== A[0,0] X[0,0]) (== X[0,1] A[0,1])))\n"
MIO_NET = """(declare-network m
    (declare-input  U real [1,2])
    (declare-input  V real [1,3])
    (declare-hidden H real [1,3] "h")
    (declare-output P real [1,3])
    (declare-output Q real [1,1])
)
"""
MIO_BODY = """(assert (== U[0,1] V[0,2]))
(assert (and (>= U[0,0] 0.0) (<= U[0,0] 1.0) (>= U[0,1] 0.0) (<= U[0,1] 1.0)))
(assert (and (>= V[0,0] -1.0) (<= V[0,0] 1.0) (>= V[0,1] -1.0) (<= V[0,1] 1.0)))
(assert (and (>= V[0,2] -1.0) (<= V[0,2] 1.0)))
(assert (<= (+ U[0,0] V[0,0]) 0.5))
"""
# max of Q - H[0,1] = 2 V0 - 3 V1 - U0/2 is 5 over the box, 4 with U0 + V0 <= 0.5
QUERY_TEXTS = {
    "iso_unsat": HEADER + NET_F + NET_G + SAME + BOX_X + "(assert (<= (- B[0,0] Y[0,0]) 0.99))\n",
    "iso_sat": HEADER + NET_F + NET_G + SAME + BOX_X + "(assert (<= (- B[0,0] Y[0,0]) 1.001))\n",
    "mio_sat": HEADER + MIO_NET + MIO_BODY + "(assert (>= (- Q[0,0] H[0,1]) 3.0))\n",
    "mio_unsat": HEADER + MIO_NET + MIO_BODY + "(assert (>= (- Q[0,0] H[0,1]) 5.5))\n",
    "mio_one_input": HEADER + MIO_NET.replace("    (declare-input  V real [1,3])\n", "")
    + "(assert (and (>= U[0,0] 0.0) (<= U[0,0] 1.0) (>= U[0,1] 0.0) (<= U[0,1] 1.0)))\n"
    + "(assert (>= P[0,0] 0.5))\n",
    "hidden_float64": (HEADER + MIO_NET + MIO_BODY + "(assert (>= H[0,1] 0.5))\n")
    .replace('H real [1,3] "h"', 'H float64 [1,3] "h"'),
    "float32": (HEADER + NET_F + NET_G + SAME + BOX_X + "(assert (<= Y[0,0] 0.5))\n")
    .replace("real", "float32"),
}


# ---- in process: layout and lowering -----------------------------------------------------


def test_equal_inputs_are_one_element_and_equal_networks_one_application():
    net_g = NET_G.replace("isomorphic-to", "equal-to")
    query = parse_query_text(HEADER + NET_F + net_g + SAME + BOX_X
                             + "(assert (> (- Y[0,0] B[0,0]) 0.001))\n")
    layout = plan_layout(query)
    assert layout.single_model and (layout.n_x, layout.n_y) == (2, 2)
    assert layout.x == ((0, 1), None, (0, 1), None) and layout.y == (None, 0, None, 0)
    assert to_spec(query, layout).cases == ()  # Y - B cancels exactly: nothing can violate it
    inside_or = "(assert (or (== A[0,0] X[0,0]) (<= Y[0,0] 0.0)))\n"
    layout = plan_layout(parse_query_text(HEADER + NET_F + net_g + BOX_X + inside_or))
    assert (len(layout.applications), layout.n_x) == (2, 4)  # not substituted: a row
    assert (layout.copy_start, layout.n_y) == (4, 8)
    partial = "(assert (== A[0,0] X[0,0]))\n"
    layout = plan_layout(parse_query_text(HEADER + NET_F + net_g + BOX_X + partial))
    assert layout.x == ((0, 1), None, (0, 2), None) and len(layout.applications) == 2


def test_constraints_over_inputs_read_a_copy_of_x():
    body = BOX_X + "(assert (<= (+ X[0,0] X[0,1]) 0.3))\n(assert (>= Y[0,1] (* 2.0 X[0,1])))\n"
    query = parse_query_text(HEADER + NET_F + body)
    layout = plan_layout(query)
    assert (layout.copy_start, layout.n_y, layout.single_model) == (2, 4, False)
    (case,) = to_spec(query, layout).cases
    np.testing.assert_array_equal(case.upper, [0.25, 0.25])
    (disjunct,) = case.disjuncts
    assert disjunct.C.tolist() == [[0, 0, 1, 1], [0, -1, 0, 2]] and disjunct.d.tolist() == [0.3, 0]


def test_networks_no_assertion_mentions_get_zero_inputs():
    query = parse_query_text(HEADER + NET_F + NET_G + BOX_X + "(assert (<= Y[0,0] 0.5))\n")
    (case,) = to_spec(query).cases
    assert case.lower.tolist() == [0, 0, 0, 0] and case.upper.tolist() == [0.25, 0.25, 0, 0]


def test_missing_bounds_name_the_2_0_element():
    query = parse_query_text(HEADER + NET_F + NET_G + BOX_X + "(assert (<= B[0,0] 0.5))\n")
    with pytest.raises(SpecError, match=r"input A\[0,0\] has no lower bound"):
        to_spec(query)


# ---- in process: the composed model ------------------------------------------------------


def test_composed_model_computes_every_variable_like_the_original_models(work, tmp_path):
    text = HEADER + NET_F + NET_G + MIO_NET + BOX_X + SAME + MIO_BODY \
        + "(assert (>= (- Q[0,0] Y[0,1]) (* 0.5 H[0,2])))\n"
    query = parse_query_text(text)
    problem = problem_for_query(query, {"f": str(work / "f.onnx"), "g": str(work / "g.onnx"),
                                        "m": str(work / "mio.onnx")}, tmp_path)
    assert problem.composed and Path(problem.model_path).parent == tmp_path
    composed = onnx.load(problem.model_path)
    onnx.checker.check_model(composed, full_check=True)
    assert {n.op_type for n in composed.graph.node} >= {"Slice", "Gather", "Concat"}
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, problem.layout.n_x).astype(np.float32)
    (y,) = _run_model(Path(problem.model_path), {"glue/X": x.reshape(1, -1)})
    values = {v.name: a for v, a in problem.assignment(x, y)}
    np.testing.assert_array_equal(values["A"], values["X"])
    np.testing.assert_array_equal(values["V"][2], values["U"][1])
    (fy,) = _run_model(work / "f.onnx", {"x": values["X"].reshape(1, 2)})
    (gy,) = _run_model(work / "g.onnx", {"x": values["A"].reshape(1, 2)})
    mp, mq, mh = _run_model(work / "mio.onnx", {"a": values["U"].reshape(1, 2),
                                                "b": values["V"].reshape(1, 3)}, ["h"])
    for name, expected in (("Y", fy), ("B", gy), ("P", mp), ("Q", mq), ("H", mh)):
        np.testing.assert_array_equal(values[name], expected, err_msg=name)

    from bounds.onnx_import import compare_with_onnxruntime, load_onnx

    lower, upper = np.full(problem.layout.n_x, -1.0), np.full(problem.layout.n_x, 1.0)
    compare_with_onnxruntime(load_onnx(composed), composed, lower, upper)  # raises on mismatch


@pytest.mark.parametrize("query, networks, message", [
    ("mio_one_input", {"m": "mio.onnx"}, "declares 1 input(s) and 2 output(s) but"),
    ("hidden_float64", {"m": "mio.onnx"}, "element types differ"),
    ("float32", {"f": "f.onnx", "g": "g.onnx"}, "cannot analyse float32 soundly"),
    ("iso_sat", {"f": "f.onnx", "g": "wide.onnx"}, "their weight tensors have different shapes"),
    ("iso_sat", {"f": "f.onnx"}, "no --network given for 'g'"),
])
def test_declarations_are_checked_against_the_models(work, tmp_path, query, networks, message):
    parsed = parse_query_text(QUERY_TEXTS[query], f"{query}.vnnlib")
    with pytest.raises(SpecError, match=re.escape(message)):
        problem_for_query(parsed, {k: str(work / v) for k, v in networks.items()}, tmp_path)


def test_hidden_node_shape_is_checked(work, tmp_path):
    text = (HEADER + MIO_NET + MIO_BODY).replace('H real [1,3] "h"', 'H real [1,4] "h"')
    with pytest.raises(SpecError, match=r"declared with shape \[1,4\] but .* has shape \[1,3\]"):
        problem_for_query(parse_query_text(text + "(assert (>= H[0,1] 0.5))\n"),
                          {"m": str(work / "mio.onnx")}, tmp_path)


def test_hidden_node_shape_from_a_run_where_inference_is_silent(work, monkeypatch):
    from genbab.spec.compose import hidden_tensors, read_model

    def silent(model, *args, **kwargs):
        raise onnx.shape_inference.InferenceError("no inference here")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", silent)
    (tensor,) = hidden_tensors(read_model(str(work / "mio.onnx")), ["h"], "q").values()
    assert (tensor.name, tensor.type_name, tuple(tensor.dims)) == ("h", "float32", (1, 3))


def test_spec_for_one_model_refuses_compositions(work):
    with pytest.raises(SpecError, match="--network NAME=MODEL"):
        load_spec_for_model(work / "mio_sat.vnnlib", work / "mio.onnx")


@pytest.mark.parametrize("query, verdict", [
    ("iso_unsat", "unsat"),  # IBP cannot prove it, CROWN can: a real composed model
    ("iso_sat", "sat"),
    ("mio_unsat", "unsat"),
    ("hidden", "unsat"),
])
def test_verdicts_in_process(work, tmp_path, query, verdict):
    from genbab.config import Config
    from genbab.verify import verify

    if query == "hidden":
        text, networks = read_text(EXAMPLE_HIDDEN), {"digits_sigmoid_tiny": str(TINY)}
    else:
        names = {"f": "f.onnx", "g": "g.onnx"} if query.startswith("iso") else {"m": "mio.onnx"}
        text, networks = QUERY_TEXTS[query], {k: str(work / v) for k, v in names.items()}
    problem = problem_for_query(parse_query_text(text), networks, tmp_path)
    result = verify(problem.model_path, problem.spec, Config(timeout=20))
    assert result.verdict == verdict
    assert verdict == "unsat" or problem.holds(result.x, result.y)


# ---- the command line --------------------------------------------------------------------

COMMANDS = {
    "equal_to": lambda w: [EXAMPLE_EQUAL, "--network", f"f={TINY}"],
    "two": lambda w: [EXAMPLE_TWO, "--network", f"tiny={TINY}", "--network", f"tanh={TANH}"],
    "mio_sat": lambda w: [w / "mio_sat.vnnlib", "--network", f"m={w / 'mio.onnx'}"],
    "wrong_name": lambda w: [EXAMPLE_TWO, "--network", f"tiny={TINY}", "--network", f"f={TANH}"],
    "equal_to_given": lambda w: [EXAMPLE_EQUAL, "--network", f"f={TINY}", "--network", f"g={TINY}"],
    "float32": lambda w: [w / "float32.vnnlib", "--network", f"f={w / 'f.onnx'}",
                          "--network", f"g={w / 'g.onnx'}"],
    "hidden_float64": lambda w: [w / "hidden_float64.vnnlib", "--network", f"m={w / 'mio.onnx'}"],
}


def _verify(argv: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genbab.vnnlib2_cli", "verify",
                           *map(str, argv), "--timeout", "60"], capture_output=True, text=True,
                          timeout=180, cwd=ROOT, check=False)


@pytest.fixture(scope="module", autouse=True)
def runs(work, request):
    """The commands of the selected tests, started with the module's first test."""
    wanted = {item.callspec.params["name"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")
              and item.callspec.params.get("name") in COMMANDS}
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(_verify, COMMANDS[name](work)) for name in sorted(wanted)}


def _blocks(stdout: str) -> dict[str, tuple[str, list[int], np.ndarray]]:
    """The assignment after ``sat``: name -> (type, dims, values)."""
    return {name: (type_name, shape, np.array(values))
            for name, (type_name, shape, values) in read_assignment(stdout).items()}


@pytest.mark.parametrize("name", ["equal_to"])
def test_cli_unsat(runs, name):
    proc = runs[name].result()
    assert (proc.returncode, proc.stdout) == (0, "unsat\n"), proc.stderr


@pytest.mark.parametrize("name", ["two"])
def test_cli_sat_two_networks_with_a_hidden_node(runs, name):
    proc = runs[name].result()
    assert proc.returncode == 0, proc.stderr
    blocks = _blocks(proc.stdout)
    assert [(k, t, s) for k, (t, s, _) in blocks.items()] == [
        ("X", "real", [1, 64]), ("H", "real", [1, 8]), ("Y", "real", [1, 10]),
        ("A", "real", [1, 64]), ("B", "real", [1, 10])]
    values = {k: v for k, (_, _, v) in blocks.items()}
    np.testing.assert_array_equal(values["A"], values["X"])
    y, h = _run_model(TINY, {"input": values["X"].reshape(1, 64)}, [TINY_HIDDEN])
    (b,) = _run_model(TANH, {"input": values["A"].reshape(1, 64)})
    for name_, expected in (("Y", y), ("H", h), ("B", b)):
        np.testing.assert_array_equal(values[name_], expected, err_msg=name_)
    assert holds(parse_query_text(read_text(EXAMPLE_TWO)), values)


@pytest.mark.parametrize("name", ["mio_sat"])
def test_cli_sat_multiple_inputs_and_outputs(runs, work, name):
    proc = runs[name].result()
    assert proc.returncode == 0, proc.stderr
    blocks = _blocks(proc.stdout)
    assert list(blocks) == ["U", "V", "H", "P", "Q"]
    values = {k: v for k, (_, _, v) in blocks.items()}
    p, q, h = _run_model(work / "mio.onnx", {"a": values["U"].reshape(1, 2),
                                             "b": values["V"].reshape(1, 3)}, ["h"])
    for name_, expected in (("P", p), ("Q", q), ("H", h)):
        np.testing.assert_array_equal(values[name_], expected, err_msg=name_)
    assert holds(parse_query_text(QUERY_TEXTS["mio_sat"]), values)


@pytest.mark.parametrize("name, message", [
    ("wrong_name", "--network f: network 'f' is not declared in the query"),
    ("equal_to_given", "--network g: network 'g' is declared equal-to another network"),
    ("float32", "cannot analyse float32 soundly"),
    ("hidden_float64", "element types differ"),
])
def test_cli_errors(runs, name, message):
    proc = runs[name].result()
    assert proc.returncode == 3 and proc.stdout == "", proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
