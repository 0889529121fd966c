"""The ACD engine under simulated Poisson load (benchmarks/acd_sim.py), small and loose.

At 30,000 calls the simulation's own sampling error is about 2 points of P(wait > 20 s)
and 12% of the ASA at 10 agents and 80% (see benchmarks/README.md), so the bounds against
Erlang C here only catch gross errors. The sharp check is the reference dispatcher: in this
model every call's wait follows from the arrivals and handling times alone, so the engine
must reproduce the reference's waits exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.acd_sim import DISPATCHERS, ReferenceAcd, SimResult, main, simulate

from acd.model import Output

CALLS = 30_000
P_BOUND = 0.04  # 4 percentage points
ASA_BOUND = 0.15  # or 0.5 s


@pytest.fixture(scope="module", params=[(10, 0.8), (5, 0.6)], ids=["10@80%", "5@60%"])
def runs(request: pytest.FixtureRequest) -> tuple[SimResult, SimResult]:
    agents, occupancy = request.param
    engine = simulate(agents, occupancy, CALLS, seed=1)
    reference = simulate(agents, occupancy, CALLS, seed=1, dispatcher="reference")
    return engine, reference


def test_agrees_with_erlang_c(runs: tuple[SimResult, SimResult]) -> None:
    result, _ = runs
    assert result.anomalies == {}, result.first_anomaly
    assert result.calls == CALLS and result.warmup > 0
    assert abs(result.p_diff) <= P_BOUND, (result.p_wait_sim, result.p_wait_erlang)
    assert abs(result.asa_diff) <= max(ASA_BOUND * result.asa_erlang, 0.5), (
        result.asa_sim,
        result.asa_erlang,
    )
    assert result.agrees(P_BOUND, ASA_BOUND)
    assert result.utilization == pytest.approx(result.occupancy, abs=0.02)
    assert result.waited_sim == pytest.approx(result.waited_erlang, abs=0.04)


def test_waits_are_the_reference_dispatchers(runs: tuple[SimResult, SimResult]) -> None:
    engine, reference = runs
    assert reference.anomalies == {}
    assert len(engine.waits) == CALLS + engine.warmup
    assert min(engine.waits) >= 0.0  # every call was offered
    assert engine.waits == reference.waits
    # Entered, Offer, Answered and Completed once a call, agents' state changes between.
    per_call = engine.outputs_per_call
    assert per_call["Offer"] == per_call["Answered"] == pytest.approx(1.0, abs=1e-3)


def test_deep_queue_same_waits() -> None:
    # 95% on 20 agents: at times some 50 callers wait, for up to 8 minutes.
    engine = simulate(20, 0.95, 8_000, seed=7)
    reference = simulate(20, 0.95, 8_000, seed=7, dispatcher="reference")
    assert engine.anomalies == {}, engine.first_anomaly
    assert max(engine.waits) > 300
    assert engine.waits == reference.waits


class LazyAcd(ReferenceAcd):
    """Agent a0 never gets a waiting caller after a call: callers wait while it idles."""

    def completed(self, call_id: str, now: float, by: str = "") -> list[Output]:
        agent = self._agent[call_id]
        if agent[0] == "a0":
            del self._agent[call_id]
            self._idle.append(agent)
            return []
        return super().completed(call_id, now, by)


class LifoAcd(ReferenceAcd):
    """Serves the newest caller first."""

    def completed(self, call_id: str, now: float, by: str = "") -> list[Output]:
        self._waiting.rotate(1)  # the newest to the head
        return super().completed(call_id, now, by)


def test_simulator_catches_a_broken_acd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DISPATCHERS, "lazy", lambda agents, seed: (LazyAcd(agents), []))
    monkeypatch.setitem(DISPATCHERS, "lifo", lambda agents, seed: (LifoAcd(agents), []))
    lazy = simulate(5, 0.8, 2_000, dispatcher="lazy")
    assert lazy.anomalies.get("agent idle while a caller waits", 0) > 0
    assert not lazy.agrees()
    lifo = simulate(5, 0.8, 2_000, dispatcher="lifo")
    assert lifo.anomalies.get("answered out of arrival order", 0) > 0
    assert "agent idle while a caller waits" not in lifo.anomalies


def test_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "acd_sim.json"
    code = main(["--calls", "2000", "--agents", "5", "--loads", "0.7", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "calls/min" in printed and "goal:" in printed
    report = json.loads(out.read_text())
    (cell,) = report["cells"]
    assert cell["agents"] == 5 and cell["calls"] == 2000
    assert cell["same_waits_as_reference"] is True
    assert cell["anomalies"] == {}
    assert report["summary"]["calls_per_minute"] > 0
    assert report["summary"]["goals"][0]["met"] is False  # fewer than 100,000 calls
