"""The quick stage: verdicts for easy queries on small models, without torch.

``genbab.verify.verify`` calls ``quick_verify`` first (``Config.quick``).  For
a model that ``genbab.quick_model`` converts (small; whitelisted ops) it

1. checks the sizes against the property and, as the full pipeline does on
   load, compares our float64 forward with onnxruntime at random points of
   the first box (and the centre of every other box) -- and also checks that
   onnxruntime's outputs there lie in our bounds;
2. bounds each box by outward-rounded IBP (``genbab.quick_ops``): ``unsat``
   (method ``quick-ibp``) when every disjunct of every case has a row whose
   lower bound exceeds its threshold, the rule of the full pipeline;
3. otherwise samples each box (centre, corners, random points, then a few
   sign-gradient steps on the float64 forward) and hands the points nearest
   to the unsafe set to ``genbab.check.confirm_counterexample``: ``sat``
   (method ``quick-attack``) once onnxruntime confirms one;
4. otherwise returns None, and the full pipeline runs as it would have.

Any doubt -- an unsupported model, sizes that do not match, a mismatch with
onnxruntime, non-finite bounds -- also gives None: the full pipeline then
decides, and reports errors in its own words.  Imports: numpy, protobuf and
onnxruntime; ``onnx`` only once a counterexample is to be confirmed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genbab.config import Config
from genbab.quick_model import Limits, QuickModel, Unsupported, read_quick_model
from genbab.spec.types import Spec, SpecCase
from genbab.verify import Result

CHECK_POINTS = 8  # model check: the centre and random points of the first box
RANDOM_POINTS = 192  # attack: uniform random points per box (and a third as many corners)
GRADIENT_STARTS, GRADIENT_STEPS = 4, 8  # sign-gradient descent from the best points
GRADIENT_MAX_INPUTS = 1024  # finite differences: one forward pass per input ...
GRADIENT_MAX_WORK = 10_000_000  # ... and at most this many inputs x parameters
CONFIRM_AT_MOST = 5  # candidates handed to onnxruntime per box
ATTACK_SECONDS = 1.0  # then the full pipeline's stronger attack takes over
_EPS64 = 2.0 ** -53


@dataclass(frozen=True)
class _Rows:
    """All rows of a case's disjuncts: ``C y <= d``, with the disjunct of each row."""

    C: np.ndarray  # [rows, n_outputs]
    d: np.ndarray  # [rows]
    group: np.ndarray  # [rows] disjunct index
    n_disjuncts: int

    @staticmethod
    def of(case: SpecCase, n_outputs: int) -> _Rows:
        Cs = [np.asarray(dj.C, np.float64).reshape(-1, n_outputs) for dj in case.disjuncts]
        ds = [np.asarray(dj.d, np.float64).reshape(-1) for dj in case.disjuncts]
        group = [np.full(len(d), k) for k, d in enumerate(ds)]
        return _Rows(np.concatenate(Cs) if Cs else np.zeros((0, n_outputs)),
                     np.concatenate(ds) if ds else np.zeros(0),
                     np.concatenate(group).astype(np.int64) if group else np.zeros(0, np.int64),
                     len(ds))

    def per_disjunct(self, row_values: np.ndarray) -> np.ndarray:
        """Max over each disjunct's rows of ``row_values[..., rows]``; -inf for no rows."""
        out = np.full(row_values.shape[:-1] + (self.n_disjuncts,), -np.inf)
        for k in range(self.n_disjuncts):
            mine = row_values[..., self.group == k]
            if mine.shape[-1]:
                out[..., k] = mine.max(axis=-1)
        return out

    def margins(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Per disjunct: max over rows of (sound lower bound of ``C y`` - d); > 0 proves it."""
        C_pos, C_neg = np.maximum(self.C, 0), np.minimum(self.C, 0)
        lower = C_pos @ lo + C_neg @ hi
        scale = np.abs(self.C) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(self.d)
        err = 4 * (self.C.shape[1] + 2) * _EPS64 * scale + 1e-300  # ours and the check's rounding
        return self.per_disjunct(lower - err - self.d)

    def scores(self, Y: np.ndarray) -> np.ndarray:
        """Per point: min over disjuncts of max over rows of ``C y - d``; <= 0: unsafe."""
        return self.per_disjunct(Y @ self.C.T - self.d).min(axis=-1, initial=np.inf)


class _Session:
    """onnxruntime on the original model, one flat point at a time (batch axis 1)."""

    def __init__(self, model: QuickModel):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.model = model
        self.session = ort.InferenceSession(model.data, options,
                                            providers=["CPUExecutionProvider"])

    def run(self, x_flat: np.ndarray) -> np.ndarray:
        feed = np.asarray(x_flat).astype(self.model.input_dtype).reshape(self.model.input_shape)
        out = self.session.run([self.model.output_name], {self.model.input_name: feed})[0]
        return np.asarray(out, np.float64).reshape(-1)


def quick_verify(model_path: str | Path, spec: Spec, config: Config,
                 started: float | None = None, limits: Limits | None = None) -> Result | None:
    """A Result for an easy query on a small model, or None: the full pipeline decides.

    ``started``: when the run began (``time.monotonic()``; the timeout counts from
    there); ``limits``: the model sizes taken on (default ``Limits()``).
    """
    started = time.monotonic() if started is None else started
    if not config.quick or not spec.cases:
        return None
    try:
        model = read_quick_model(model_path, limits)
    except Unsupported:
        return None
    if (spec.n_inputs, spec.n_outputs) != (model.n_inputs, model.n_outputs):
        return None  # the full pipeline reports the mismatch
    stats: dict = {"load_time": round(time.monotonic() - started, 3), "device": "cpu (numpy)",
                   "quick": {"parameters": model.n_parameters, "neurons": model.n_neurons}}
    rows = [_Rows.of(case, model.n_outputs) for case in spec.cases]
    bounds = [model.interval(case.lower, case.upper) for case in spec.cases]
    margins = [r.margins(lo, hi) if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))
               else np.full(r.n_disjuncts, -np.inf) for r, (lo, hi) in zip(rows, bounds)]
    proved = all(bool(np.all(m > 0)) for m in margins)
    if not proved and not config.attack.enabled:
        return None
    if config.check_model:
        try:
            session = _Session(model)
        except Exception:  # noqa: BLE001 - onnxruntime's errors have no common base: the
            return None  # full pipeline loads the model and reports what is wrong with it
        diff = _check_model(model, session, spec.cases, bounds, config.seed)
        if diff is None:
            return None
        stats["onnxruntime_max_diff"] = diff

    def finish(verdict: str, method: str, **kw) -> Result:
        elapsed = time.monotonic() - started
        stats["time"] = round(elapsed, 3)
        return Result(verdict, method, elapsed, stats=stats, config=config, **kw)

    if proved:
        return finish("unsat", "quick-ibp", margins=[[float(v) for v in m] for m in margins])
    deadline = min(started + config.timeout, time.monotonic() + ATTACK_SECONDS)
    for index, (case, case_rows) in enumerate(zip(spec.cases, rows)):
        if time.monotonic() > deadline:
            break
        found = _attack(model, case, case_rows, config.seed + index, deadline, model_path)
        if found is not None:
            stats["float64_agrees"] = found.float64_agrees
            return finish("sat", "quick-attack", x=found.x, y=found.y)
    return None


def _inside(x: np.ndarray, case: SpecCase) -> np.ndarray:
    return np.all((case.lower <= x) & (x <= case.upper), axis=-1)


def _check_model(model: QuickModel, session: _Session, cases, bounds, seed: int
                 ) -> float | None:
    """Largest |ours - onnxruntime| at random points, or None on a mismatch (or out of bounds).

    The points: the centre and random points of the first box (as the full
    pipeline's check), and the centre of every other box.
    """
    rng = np.random.default_rng(seed)
    lower, upper = np.asarray(cases[0].lower, np.float64), np.asarray(cases[0].upper, np.float64)
    points = lower + rng.random((CHECK_POINTS, lower.size)) * (upper - lower)
    points[0] = (lower + upper) / 2
    where = [0] * CHECK_POINTS + list(range(1, len(cases)))
    centres = [(np.asarray(c.lower, np.float64) + c.upper) / 2 for c in cases[1:]]
    fed = np.concatenate([points, *[c[None] for c in centres]])
    fed = fed.astype(model.input_dtype).astype(np.float64)
    ours = model.forward(fed)
    worst = 0.0
    for x, y, index in zip(fed, ours, where):
        ref = session.run(x)
        if ref.shape != y.shape:
            return None
        diff = np.abs(y - ref)
        if np.any(diff > 1e-4 + 1e-3 * np.abs(ref)):
            return None
        lo, hi = bounds[index]
        if _inside(x, cases[index]) and not np.all((lo <= ref) & (ref <= hi)):
            return None  # onnxruntime outside our bounds: never trust them
        worst = max(worst, float(diff.max(initial=0.0)))
    return worst


def _attack(model: QuickModel, case: SpecCase, rows: _Rows, seed: int, deadline: float,
            model_path: str | Path):
    """A counterexample in the box confirmed by onnxruntime (genbab.check), or None."""
    rng = np.random.default_rng(seed)
    lower, upper = np.asarray(case.lower, np.float64), np.asarray(case.upper, np.float64)
    width = upper - lower
    corners = lower + (rng.random((RANDOM_POINTS // 3, lower.size)) < 0.5) * width
    points = np.concatenate([((lower + upper) / 2)[None], lower[None], upper[None], corners,
                             lower + rng.random((RANDOM_POINTS, lower.size)) * width])
    scores = rows.scores(model.forward(points))
    if lower.size <= GRADIENT_MAX_INPUTS and \
            lower.size * max(model.n_parameters, 1) <= GRADIENT_MAX_WORK:
        starts = points[np.argsort(scores)[:GRADIENT_STARTS]]
        refined = _sign_descent(model, rows, starts, lower, upper, deadline)
        points = np.concatenate([points, refined])
        scores = np.concatenate([scores, rows.scores(model.forward(refined))])
    tolerance = 1e-5 * (1 + np.abs(rows.d).max(initial=0.0))
    order = [i for i in np.argsort(scores)[:CONFIRM_AT_MOST] if scores[i] <= tolerance]
    if not order:
        return None
    from genbab.check import OnnxRunner, confirm_counterexample  # imports onnx: only now

    try:
        runner = OnnxRunner(model_path)
    except Exception:  # noqa: BLE001 - onnx / onnxruntime errors: the full pipeline reports
        return None
    for i in order:
        confirmed = confirm_counterexample(runner, case, points[i])
        if confirmed is not None:
            return confirmed
    return None


def _sign_descent(model: QuickModel, rows: _Rows, starts: np.ndarray, lower: np.ndarray,
                  upper: np.ndarray, deadline: float) -> np.ndarray:
    """A few projected sign-gradient steps (finite differences) from each start: the ends."""
    width = upper - lower
    h = np.maximum(width * 1e-4, 1e-9)
    n = lower.size
    x = starts.copy()
    for step in range(GRADIENT_STEPS):
        if time.monotonic() > deadline:
            break
        probes = np.concatenate([x[:, None, :], x[:, None, :] + np.diag(h)[None]], axis=1)
        s = rows.scores(model.forward(probes.reshape(-1, n))).reshape(len(x), n + 1)
        grad = (s[:, 1:] - s[:, :1]) / h
        x = np.clip(x - width * 0.5 ** step * np.sign(grad), lower, upper)
    return x
