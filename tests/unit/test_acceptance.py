"""The acceptance step on its own: exact for improve/always, statistical for Metropolis."""

from __future__ import annotations

import math
import random

import pytest

from shared.errors import InvalidRequest
from shared.critique_revise import accept, validate_run


def test_improve_accepts_only_strict_gains():
    rng = random.Random(0)
    assert accept("improve", 0.1, 0.2, 1.0, rng)
    assert not accept("improve", 0.2, 0.2, 1.0, rng)
    assert not accept("improve", 0.2, -0.5, 1.0, rng)


def test_always_moves():
    rng = random.Random(0)
    assert all(accept("always", 1.0, -5.0, 1.0, rng) for _ in range(100))


@pytest.mark.parametrize("delta,beta", [(-1.0, 1.0), (-0.5, 0.25), (-2.0, 4.0)])
def test_metropolis_accepts_downhill_with_probability_exp_delta_over_beta(delta, beta):
    rng = random.Random(1234)
    draws = 20_000
    rate = sum(accept("mh", 0.0, delta, beta, rng) for _ in range(draws)) / draws
    expected = math.exp(delta / beta)
    # Binomial standard error; 5 sigma keeps the test deterministic in practice.
    assert abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / draws)


def test_metropolis_always_accepts_uphill():
    rng = random.Random(7)
    assert all(accept("mh", 0.0, 0.01, 1.0, rng) for _ in range(1000))


@pytest.mark.parametrize(
    "kwargs,param",
    [
        (dict(prompts=[], steps=1, chains=1, acceptance="improve", beta=1.0), "prompts"),
        (dict(prompts=["  "], steps=1, chains=1, acceptance="improve", beta=1.0), "prompts"),
        (dict(prompts=["a"], steps=0, chains=1, acceptance="improve", beta=1.0), "steps"),
        (dict(prompts=["a"], steps=1, chains=0, acceptance="improve", beta=1.0), "chains"),
        (dict(prompts=["a"], steps=1, chains=1, acceptance="greedy", beta=1.0), "acceptance"),
        (dict(prompts=["a"], steps=1, chains=1, acceptance="mh", beta=0.0), "beta"),
    ],
)
def test_impossible_runs_are_rejected_with_the_offending_field(kwargs, param):
    prompts = kwargs.pop("prompts")
    with pytest.raises(InvalidRequest) as error:
        validate_run(prompts, **kwargs)
    assert error.value.param == param
