"""Shared steps of the interop tests: provisioning through the CLI, reading the listing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from tests.support.audio import strongest
from tests.support.baresip import baresip_binary
from tests.support.pbxproc import PbxProcess

T = TypeVar("T")


def configure(proc: PbxProcess, extra: str) -> None:
    """Append TOML tables to a not-yet-started pbx's configuration."""
    proc.config.write_text(proc.config.read_text() + "\n" + extra)


def add_users(proc: PbxProcess, users: Iterable[tuple[str, str]]) -> None:
    """`pbx user add` for each (extension, password), the CLI as an operator runs it.

    The first call runs alone and creates the database; the rest run in parallel.
    """
    first, *rest = list(users)
    proc.add_user(*first)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda user: proc.add_user(*user), rest))


def registrations(proc: PbxProcess) -> dict[str, list[dict[str, Any]]]:
    """`pbx registrations --json`, grouped by address-of-record."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in proc.cli_json("registrations"):
        rows.setdefault(row["aor"], []).append(row)
    return rows


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll `probe` (cheap, in-process) until it returns something, within `timeout`.

    Only for states no peer announces as an event (a line in pbx's log, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def log_line(proc: PbxProcess, needle: str, start: int = 0) -> str | None:
    """The first line of pbx's log (from index `start`) that contains `needle`."""
    return next((line for line in proc.log[start:] if needle in line), None)


ROOT = Path(__file__).resolve().parents[2]


def run_in_namespace(driver: str, work: Path, *args: str) -> dict[str, Any]:
    """Run `python -m <driver> work *args` in fresh network and PID namespaces (as root); its
    result.json. baresip refuses loopback media, so such tests use a veth address there."""
    baresip_binary()
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: `make test-deps` installs it")
    run = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--kill-child", sys.executable, "-m", driver, str(work),
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    result_file = work / "result.json"
    assert result_file.exists(), f"driver exited {run.returncode}: {run.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(result_file.read_text())
    assert "error" not in result, json.dumps(result, indent=2)
    assert run.returncode == 0, run.stderr[-3000:]
    return result


def samples_of(path: Path) -> tuple[np.ndarray, int]:
    """A mono 16-bit WAV as float samples, and its rate."""
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2), path
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return samples.astype(np.float64), rate


def dominant_hz(samples: np.ndarray, rate: int, what: str, min_seconds: float = 1.0) -> float:
    """The strongest frequency of `samples`, which must be `min_seconds` of sound."""
    assert len(samples) >= min_seconds * rate, f"{what}: only {len(samples) / rate:.2f} s"
    assert np.abs(samples).max() > 1000, f"{what}: silence"
    return strongest(samples, 1, rate)[0]


CLINIC = Path(__file__).resolve().parents[2] / "examples" / "clinic"
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def clinic_setup(directory: Path, open_hours: str, silence_seconds: float, max_seconds: int) -> str:
    """Copy the example clinic's flows and prompts into `directory` and give the pbx.toml
    text that names them as the example's does, with an [[hours]] "clinic" of
    `open_hours` every day ("": closed all week)."""
    import shutil

    shutil.copy(CLINIC / "clinic_flows.py", directory / "clinic_flows.py")
    shutil.copytree(CLINIC / "prompts", directory / "prompts")
    days = "".join(f'{day} = "{open_hours}"\n' for day in _DAYS) if open_hours else ""
    return f"""
[registrar]
qualify_interval = 0

[ivr]
modules = ["clinic_flows.py"]
prompts = ["prompts"]
fallback = "1001"

[ivr.numbers]
"100" = "main"

[voicemail]
extensions = true
ring_seconds = 10
max_seconds = {max_seconds}
silence_seconds = {silence_seconds}
operator = "1001"
operator_hours = "clinic"

[[mailbox]]
box = "refills"

[[mailbox]]
box = "clinic"

[[hours]]
name = "clinic"
timezone = "America/New_York"
{days}"""
