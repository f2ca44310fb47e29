"""Cactus plots of verification runs: instances solved against time.

matplotlib is imported only when a plot is drawn, and through its object API
(``Figure`` with the Agg canvas), so no pyplot state or GUI backend is touched.
"""
from __future__ import annotations

from pathlib import Path

MIN_TIME = 1e-2  # seconds; shorter times are drawn here on the log axis


def cactus_plot(runs: dict[str, list[float]], path: str | Path, title: str = "",
                timeout: float | None = None) -> Path:
    """Draw one line per run (``label -> sorted solved times``) and save it to ``path``.

    The k-th point of a line is the time by which the run had solved k
    instances (x: seconds, log scale; y: instances solved).  ``timeout`` draws
    a dashed vertical line.  The image format follows the file suffix.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    longest, shortest = MIN_TIME * 10, None
    for label, times in runs.items():
        xs = [max(t, MIN_TIME) for t in sorted(times)]
        ys = list(range(1, len(xs) + 1))
        ax.step(xs, ys, where="post", marker=".", markersize=3, linewidth=1.5,
                label=f"{label} ({len(xs)} solved)")
        longest = max([longest, *xs])
        shortest = min([shortest or xs[0], *xs]) if xs else shortest
    if timeout:
        ax.axvline(timeout, color="grey", linestyle="--", linewidth=1, label="timeout")
        longest = max(longest, timeout)
    ax.set_xscale("log")
    ax.set_xlim(max(MIN_TIME, (shortest or MIN_TIME) / 2), longest * 1.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time (s, log scale)")
    ax.set_ylabel("instances solved")
    ax.set_title(title or "Instances solved vs. time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
