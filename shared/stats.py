"""Statistics of an evaluation: means with bootstrap confidence intervals, paired differences,
win rates and the share of the teacher's gain.

Evaluations draw K answers per prompt. Answers to the same prompt are correlated (an easy prompt
gives high rewards to every system), so every interval here is a *cluster* bootstrap over prompts:
resample prompts with replacement, keep all K answers of each drawn prompt. Comparisons between
systems are *paired*: the same resampled prompts serve both systems in every bootstrap draw, which
removes the between-prompt spread from the difference.

All functions take per-prompt samples, `rewards[i]` = the K rewards of prompt i (K may differ per
prompt); `systems` given together must list the same prompts in the same order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

PerPrompt = Sequence[Sequence[float]]

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval [low, high]."""

    value: float
    low: float
    high: float
    n: int  # prompts behind it

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self, null: float | None = 0.0, digits: int = 4) -> dict:
        """JSON-ready (NaN becomes None); `significant`: the interval excludes `null` (omitted when None)."""
        data = {key: (round(value, digits) if math.isfinite(value) else None) if isinstance(value, float) else value
                for key, value in asdict(self).items()}
        if null is not None:
            data["significant"] = self.low > null or self.high < null
        return data

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def prompt_means(rewards: PerPrompt) -> np.ndarray:
    if not rewards or any(len(samples) == 0 for samples in rewards):
        raise ValueError("every prompt needs at least one reward")
    return np.array([float(np.mean(samples)) for samples in rewards])


def _draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap draws of prompt indices, shape (resamples, n); the same seed gives the same draws,
    so systems bootstrapped with one seed are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(values: np.ndarray, point: float, n: int, level: float) -> Estimate:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Estimate(point, math.nan, math.nan, n)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Estimate(float(point), float(low), float(high), n)


def mean(rewards: PerPrompt, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Estimate:
    """Mean reward over prompts (each prompt weighted once) with its cluster-bootstrap CI."""
    means = prompt_means(rewards)
    boot = means[_draws(len(means), resamples, seed)].mean(axis=1)
    return _interval(boot, float(means.mean()), len(means), level)


def difference(a: PerPrompt, b: PerPrompt, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Estimate:
    """Paired mean difference a − b over the same prompts."""
    gaps = _paired(a, b)
    boot = gaps[_draws(len(gaps), resamples, seed)].mean(axis=1)
    return _interval(boot, float(gaps.mean()), len(gaps), level)


def win_rate(a: PerPrompt, b: PerPrompt, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Estimate:
    """Share of prompts on which a's mean reward beats b's (a tie counts one half)."""
    gaps = _paired(a, b)
    wins = np.where(gaps > 0, 1.0, np.where(gaps < 0, 0.0, 0.5))
    boot = wins[_draws(len(wins), resamples, seed)].mean(axis=1)
    return _interval(boot, float(wins.mean()), len(wins), level)


def gain_share(student: PerPrompt, base: PerPrompt, teacher: PerPrompt, *, resamples: int = RESAMPLES,
               level: float = LEVEL, seed: int = 0) -> Estimate:
    """(student − base) / (teacher − base): how much of the teacher's gain the student kept.
    1 = all of it; the ratio of paired means, bootstrapped jointly. NaN where the teacher gains nothing."""
    s, b, t = prompt_means(student), prompt_means(base), prompt_means(teacher)
    if not len(s) == len(b) == len(t):
        raise ValueError(f"student, base and teacher must cover the same prompts ({len(s)}, {len(b)}, {len(t)})")
    draws = _draws(len(s), resamples, seed)
    student_gain, teacher_gain = (s - b)[draws].mean(axis=1), (t - b)[draws].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(teacher_gain > 0, student_gain / teacher_gain, np.nan)
    teacher_total = float((t - b).mean())
    point = float((s - b).mean() / teacher_total) if teacher_total > 0 else math.nan
    return _interval(boot, point, len(s), level)


def _paired(a: PerPrompt, b: PerPrompt) -> np.ndarray:
    ma, mb = prompt_means(a), prompt_means(b)
    if len(ma) != len(mb):
        raise ValueError(f"paired comparison needs the same prompts on both sides ({len(ma)} vs {len(mb)})")
    return ma - mb


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of `values` by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
