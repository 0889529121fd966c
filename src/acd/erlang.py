"""Erlang C: the M/M/c queue a call center is staffed by. Pure functions, no state.

Poisson arrivals at `arrival_rate` calls a second, exponential handling times of mean
`mean_handle` seconds, `agents` identical agents, callers served first come first served
and nobody hanging up. The offered load is `a = arrival_rate * mean_handle` erlangs; the
queue is stable only while `a < agents`, and beyond that every caller waits (probability
1, infinite mean wait).

Erlang C is computed from Erlang B by the recursion B(0) = 1,
B(n) = a B(n-1) / (n + a B(n-1)), which never forms a^c or c! and stays accurate for
thousands of agents, then C = c B / (c - a (1 - B)).
"""

from __future__ import annotations

import math


def _check(agents: int, offered_erlangs: float) -> None:
    if agents < 1:
        raise ValueError(f"agents must be >= 1, not {agents}")
    if not offered_erlangs >= 0 or math.isinf(offered_erlangs):
        raise ValueError(f"offered load must be finite and >= 0, not {offered_erlangs}")


def erlang_b(agents: int, offered_erlangs: float) -> float:
    """Blocking probability of an M/M/c/c loss system (Erlang B)."""
    _check(agents, offered_erlangs)
    b = 1.0
    for n in range(1, agents + 1):
        ab = offered_erlangs * b
        b = ab / (n + ab)
    return b


def erlang_c(agents: int, offered_erlangs: float) -> float:
    """Probability that a caller has to wait at all (Erlang C); 1.0 when a >= agents."""
    _check(agents, offered_erlangs)
    if offered_erlangs >= agents:
        return 1.0
    if offered_erlangs == 0:
        return 0.0
    b = erlang_b(agents, offered_erlangs)
    return agents * b / (agents - offered_erlangs * (1.0 - b))


def _load(agents: int, arrival_rate: float, mean_handle: float) -> float:
    if not arrival_rate >= 0 or not mean_handle > 0:
        raise ValueError(
            f"need arrival_rate >= 0 and mean_handle > 0, not {arrival_rate}, {mean_handle}"
        )
    return arrival_rate * mean_handle


def wait_exceeds(agents: int, arrival_rate: float, mean_handle: float, t: float) -> float:
    """P(wait > t): C(c, a) exp(-(c - a) t / h)."""
    a = _load(agents, arrival_rate, mean_handle)
    c = erlang_c(agents, a)
    if a >= agents:
        return 1.0
    if t <= 0:
        # P(wait > 0) is C itself; a negative t would be "every caller".
        return c if t == 0 else 1.0
    return c * math.exp(-(agents - a) * t / mean_handle)


def service_level(agents: int, arrival_rate: float, mean_handle: float, t: float) -> float:
    """P(wait <= t), the share of callers answered within `t` seconds."""
    return 1.0 - wait_exceeds(agents, arrival_rate, mean_handle, t)


def average_speed_of_answer(agents: int, arrival_rate: float, mean_handle: float) -> float:
    """Mean wait over every caller (those answered at once count 0): C h / (c - a).

    `math.inf` when the load reaches the number of agents.
    """
    a = _load(agents, arrival_rate, mean_handle)
    if a >= agents:
        return math.inf
    return erlang_c(agents, a) * mean_handle / (agents - a)


def occupancy(agents: int, arrival_rate: float, mean_handle: float) -> float:
    """The share of agent time spent handling calls, a / c (capped at 1)."""
    return min(1.0, _load(agents, arrival_rate, mean_handle) / agents)
