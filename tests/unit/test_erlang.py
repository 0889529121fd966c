"""Erlang C against published figures and against the M/M/c chain solved by brute force."""

from __future__ import annotations

import itertools
import math

import pytest

from acd.erlang import (
    average_speed_of_answer,
    erlang_b,
    erlang_c,
    occupancy,
    service_level,
    wait_exceeds,
)


def mmc_brute_force(
    agents: int, arrival_rate: float, mean_handle: float, t: float
) -> tuple[float, float, float]:
    """(P(wait > 0), P(wait > t), mean wait) from the steady state of the M/M/c birth-death
    chain, without Erlang's closed forms: p_k from the balance equations in log space over a
    truncated state space; a caller who finds k >= c in the system waits for k - c + 1
    departures at rate c/h, an Erlang (gamma) time."""
    a = arrival_rate * mean_handle
    rho = a / agents
    top = agents + int(60 / -math.log(rho)) + 10  # tail beyond it below e^-60
    logs = [0.0]
    for k in range(1, top + 1):
        logs.append(logs[-1] + math.log(a / min(k, agents)))
    peak = max(logs)
    weights = [math.exp(x - peak) for x in logs]
    total = math.fsum(weights)
    p = [w / total for w in weights]
    rate = agents / mean_handle
    waits = 0.0
    beyond = 0.0
    mean = 0.0
    for k in range(agents, top + 1):
        m = k - agents + 1  # departures to wait for
        waits += p[k]
        # P(Gamma(m, rate) > t) = P(Poisson(rate t) < m)
        term, tail = math.exp(-rate * t), 0.0
        for j in range(m):
            if j:
                term *= rate * t / j
            tail += term
        beyond += p[k] * tail
        mean += p[k] * m / rate
    return waits, beyond, mean


def test_ten_agents_eight_erlangs() -> None:
    # The textbook example: 10 agents, 8 erlangs, 40.9% of callers wait.
    assert erlang_c(10, 8.0) == pytest.approx(0.4092, abs=5e-5)


@pytest.mark.parametrize(
    ("agents", "p_wait", "asa"),
    [(11, 0.6821, 122.8), (12, 0.4494, 40.44), (14, 0.1741, 7.836)],
)
def test_worked_example_100_calls_per_half_hour(agents: int, p_wait: float, asa: float) -> None:
    # The worked example of Erlang C tutorials: 100 calls in 30 minutes, 180 s average
    # handling time (10 erlangs): 11 agents, 68.21% wait, ASA 122.8 s.
    rate = 100 / 1800
    assert erlang_c(agents, rate * 180) == pytest.approx(p_wait, abs=5e-5)
    assert average_speed_of_answer(agents, rate, 180.0) == pytest.approx(asa, rel=5e-4)
    # Service level: 1 - C exp(-(c - a) t / h)
    expected = 1 - p_wait * math.exp(-(agents - 10) * 20 / 180)
    assert service_level(agents, rate, 180.0, 20.0) == pytest.approx(expected, abs=1e-4)


def test_small_exact_values() -> None:
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_b(1, 1.0) == pytest.approx(0.5)
    assert erlang_b(10, 5.0) == pytest.approx(0.018385, abs=1e-6)  # the Erlang B table
    # M/M/1: P(W > t) = rho exp(-(1 - rho) t / h), mean wait rho h / (1 - rho)
    assert wait_exceeds(1, 0.5 / 60, 60.0, 30.0) == pytest.approx(0.5 * math.exp(-0.25))
    assert average_speed_of_answer(1, 0.5 / 60, 60.0) == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("agents", "occ"),
    [(1, 0.5), (2, 0.9), (5, 0.6), (5, 0.95), (20, 0.85), (50, 0.7), (100, 0.95), (300, 0.97)],
)
def test_agrees_with_brute_force_chain(agents: int, occ: float) -> None:
    h, t = 180.0, 20.0
    rate = occ * agents / h
    p_wait, beyond, mean = mmc_brute_force(agents, rate, h, t)
    assert erlang_c(agents, rate * h) == pytest.approx(p_wait, rel=1e-9, abs=1e-300)
    assert wait_exceeds(agents, rate, h, t) == pytest.approx(beyond, rel=1e-9, abs=1e-300)
    assert service_level(agents, rate, h, t) == pytest.approx(1 - beyond, rel=1e-9)
    assert average_speed_of_answer(agents, rate, h) == pytest.approx(mean, rel=1e-9)


def test_stable_for_many_agents() -> None:
    # Factorials of 1000 overflow a float; the recursion does not.
    c = erlang_c(1000, 950.0)
    assert 0.0 < c < 1.0
    assert erlang_c(1000, 900.0) < c < erlang_c(1000, 990.0)
    assert erlang_c(300, 150.0) < 1e-20  # half load on 300 agents: nobody waits
    assert 0.0 < erlang_c(5000, 4990.0) < 1.0


def test_more_agents_less_waiting() -> None:
    values = [erlang_c(n, 18.0) for n in range(19, 40)]
    assert all(x > y for x, y in itertools.pairwise(values))
    asa = [average_speed_of_answer(n, 0.1, 180.0) for n in range(19, 40)]
    assert all(x > y for x, y in itertools.pairwise(asa))


def test_overload_and_edges() -> None:
    assert erlang_c(10, 10.0) == 1.0
    assert erlang_c(10, 12.0) == 1.0
    assert average_speed_of_answer(10, 12 / 180, 180.0) == math.inf
    assert service_level(10, 12 / 180, 180.0, 20.0) == 0.0
    assert erlang_c(3, 0.0) == 0.0
    assert wait_exceeds(10, 8 / 180, 180.0, 0.0) == pytest.approx(erlang_c(10, 8.0))
    assert wait_exceeds(10, 8 / 180, 180.0, -1.0) == 1.0
    assert occupancy(10, 8 / 180, 180.0) == pytest.approx(0.8)
    for bad in ((0, 1.0), (3, -1.0), (3, math.nan), (3, math.inf)):
        with pytest.raises(ValueError):  # noqa: PT011
            erlang_c(*bad)
    with pytest.raises(ValueError):  # noqa: PT011
        average_speed_of_answer(3, 0.01, 0.0)
