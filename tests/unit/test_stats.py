"""The evaluation statistics tell a real difference from noise, and do not invent one."""

import numpy as np
import pytest

from shared import stats


def _system(rng, prompt_effects, shift=0.0, k=4, spread=0.6):
    """K noisy rewards per prompt around the prompt's own level plus a system shift."""
    return [list(np.clip(level + shift + rng.normal(0, spread, k), -1, 1)) for level in prompt_effects]


def test_known_difference_is_detected():
    rng = np.random.default_rng(1)
    prompts = rng.normal(0.2, 0.4, 48)
    base, student = _system(rng, prompts), _system(rng, prompts, shift=0.3)
    gap = stats.difference(student, base, seed=3)
    assert gap.excludes_zero and gap.low > 0
    assert 0.15 < gap.value < 0.45
    assert stats.win_rate(student, base).value > 0.6


def test_identical_systems_are_not_significant():
    rewards = [[0.1, 0.5, -0.2, 0.9]] * 40
    gap = stats.difference(rewards, rewards)
    assert gap.value == 0 and not gap.excludes_zero
    assert stats.win_rate(rewards, rewards).value == 0.5


def test_zero_difference_is_rarely_called_significant():
    """Same distribution on both sides: the 95% interval excludes 0 in about 5% of trials, not more."""
    rng = np.random.default_rng(7)
    trials, false_alarms = 200, 0
    for trial in range(trials):
        prompts = rng.normal(0.2, 0.4, 40)
        gap = stats.difference(_system(rng, prompts), _system(rng, prompts), resamples=500, seed=trial)
        false_alarms += gap.excludes_zero
    assert false_alarms / trials <= 0.10


def test_interval_covers_the_true_difference():
    rng = np.random.default_rng(11)
    trials, covered = 200, 0
    for trial in range(trials):
        prompts = rng.normal(0.0, 0.4, 40)
        gap = stats.difference(_system(rng, prompts, shift=0.2, spread=0.3), _system(rng, prompts, spread=0.3),
                               resamples=500, seed=trial)
        covered += gap.low <= 0.2 <= gap.high
    assert covered / trials >= 0.88


def test_mean_interval_and_cluster_weighting():
    # One prompt with many samples must not outweigh the others: prompts weigh once each.
    estimate = stats.mean([[1.0] * 12, [0.0], [0.0], [0.0]])
    assert estimate.value == pytest.approx(0.25)
    assert estimate.low <= 0.25 <= estimate.high and estimate.n == 4


def test_gain_share():
    base = [[0.0, 0.0]] * 20
    teacher = [[1.0, 1.0]] * 20
    student = [[0.8, 0.8]] * 20
    share = stats.gain_share(student, base, teacher)
    assert share.value == pytest.approx(0.8) and share.low == pytest.approx(0.8)
    no_gain = stats.gain_share(student, base, base)
    assert np.isnan(no_gain.value)


def test_mismatched_prompts_are_refused():
    with pytest.raises(ValueError, match="same prompts"):
        stats.difference([[1.0]], [[1.0], [0.0]])
    with pytest.raises(ValueError, match="at least one reward"):
        stats.mean([[]])
