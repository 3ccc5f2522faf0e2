"""The console's charts and the loss points it keeps of running runs (no server needed)."""

from __future__ import annotations

import base64

from services.teacher.console import charts
from services.teacher.console.distillations import LossTrail


def _svg(uri: str) -> str:
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix)
    return base64.b64decode(uri[len(prefix):]).decode()


def test_loss_trail_keeps_each_step_once_in_order_and_forgets_old_runs():
    trail = LossTrail(runs=2, points=3)
    assert trail.see("a", {"phase": "queued", "step": 0, "loss": None}) == []
    trail.see("a", {"step": 2, "loss": 1.5})
    trail.see("a", {"step": 1, "loss": 2.0})
    assert trail.see("a", {"step": 2, "loss": 1.5}) == [[1, 2.0], [2, 1.5]]  # a page polled twice between steps
    trail.see("a", {"step": 3, "loss": 1.2})
    assert trail.see("a", {"step": 4, "loss": 1.1}) == [[1, 2.0], [2, 1.5], [3, 1.2]]  # bounded
    trail.see("b", {"step": 1, "loss": 3.0})
    trail.see("c", {"step": 1, "loss": 3.0})
    assert trail.see("a", {}) == []  # the least recently seen run was let go


def test_charts_are_svg_images_with_text_as_text():
    curve = _svg(charts.loss_curve([[1, 2.0], [2, 1.5], [3, 1.2]]))
    assert curve.lstrip().startswith("<?xml") and "training loss" in curve and "<script" not in curve
    bars = _svg(charts.intervals({"base": {"value": 0.1, "low": 0.0, "high": 0.2}, "student": {"value": 0.3, "low": None, "high": None},
                                  "teacher": {"value": None}}))
    assert "base" in bars and "student" in bars and "teacher" not in bars
    assert charts.loss_curve([]) is None and charts.intervals({"base": {"value": None}}) is None
