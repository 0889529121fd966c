"""benchmarks/calls.py --quick runs end to end: SIPp calls, bridged calls with RTP, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.sipp import sipp_binary

pytestmark = pytest.mark.interop

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "calls.py"


def test_calls_benchmark_quick_run(tmp_path: Path) -> None:
    sipp_binary()
    output = tmp_path / "calls.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(output)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    # Exit 1 only means no step met the performance bar (a busy machine); 2+ is an error.
    # (A traceback exits 1 too, and writes no report.)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    assert output.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(output.read_text())
    setup, media = report["setup_steps"], report["media_levels"]
    assert setup, done.stdout
    assert all(s["successful"] == s["calls"] for s in setup), setup
    assert [lv["calls"] for lv in media] == [10, 25]
    for level in media:
        assert level["legs"] == 2 * level["calls"]
        # Every leg's packets came back through the exchange (the other leg of its call).
        assert level["received"] > 0.9 * level["sent"] > 0, level
        assert level["transit_p50_ms"] < 100, level
    assert report["summary"]["media"]["hung_up"] == 25
    assert report["summary"]["server_exit"] == 0
