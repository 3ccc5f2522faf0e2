"""Charts drawn on the server with matplotlib, as SVG data URIs for <img> (an SVG shown as an image
runs no script, and the page's Content-Security-Policy allows data: images only)."""

from __future__ import annotations

import base64
import functools
import io
from typing import Mapping, Sequence

COLORS = {"base": "#d62728", "student": "#2ca02c", "teacher": "#ff7f0e"}


def _data_uri(figure) -> str:
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dsc"}):  # text as text: small, crisp
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def loss_curve(points: Sequence[Sequence[float]]) -> str | None:
    """[step, loss] pairs as a line chart; None when there is nothing to draw yet. Cached: a live
    page asks for the same curve every two seconds until the next step lands."""
    return _loss_curve(tuple((p[0], p[1]) for p in points)) if points else None


@functools.lru_cache(maxsize=64)
def _loss_curve(points: tuple[tuple[float, float], ...]) -> str:
    from matplotlib.figure import Figure  # Figure, not pyplot: no global state shared between request threads
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6.4, 2.8), dpi=100)
    axes = figure.subplots()
    axes.plot([p[0] for p in points], [p[1] for p in points], color="#1f77b4", linewidth=1.6, marker="o" if len(points) < 30 else None,
              markersize=3)
    axes.set(title="training loss (answer tokens)", xlabel="step", ylabel="cross-entropy")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    return _data_uri(figure)


def intervals(systems: Mapping[str, Mapping[str, float | None]]) -> str | None:
    """Each system's mean with its bootstrap interval, as horizontal error bars."""
    rows = tuple((name, estimate["value"], estimate.get("low"), estimate.get("high")) for name, estimate in systems.items()
                 if estimate.get("value") is not None)
    return _intervals(rows) if rows else None


@functools.lru_cache(maxsize=64)
def _intervals(rows: tuple[tuple[str, float, float | None, float | None], ...]) -> str:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 0.6 + 0.5 * len(rows)), dpi=100)
    axes = figure.subplots()
    for y, (name, value, low, high) in enumerate(rows):
        low, high = value if low is None else low, value if high is None else high
        axes.errorbar([value], [y], xerr=[[value - low], [high - value]], fmt="o", capsize=5, color=COLORS.get(name, "#555"))
    axes.set_yticks(range(len(rows)), [row[0] for row in rows])
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.invert_yaxis()
    axes.set(title="mean reward, 95% interval", xlabel="reward")
    axes.grid(alpha=0.3, axis="x")
    return _data_uri(figure)
