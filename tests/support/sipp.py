"""Run SIPp (Debian `sip-tester`) scenarios against pbx, bounded in time.

The scenarios live in ../shared/peers/sipp/ (the recipes seen working) and tests/interop/sipp/
(this suite's own: failures, cancels, pcap audio); SIPp resolves scenario, injection and
pcap files relative to its working directory, so every run copies what it needs into a
fresh directory of its own (which also keeps its stat and error files apart from other runs).
"""

from __future__ import annotations

import itertools
import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.shared import PEERS

SCENARIOS = PEERS / "sipp"
OWN_SCENARIOS = Path(__file__).resolve().parents[1] / "interop" / "sipp"
STOCK_PCAPS = Path("/usr/share/sip-tester")
"""The pcaps Debian's sip-tester ships: g711a.pcap (7 s of A-law speech), dtmf_2833_*.pcap."""
_runs = itertools.count(1)


def scenario_path(name: str) -> Path:
    """A scenario of this suite's own (tests/interop/sipp/) or else of ../shared/peers/sipp/."""
    own = OWN_SCENARIOS / name
    return own if own.exists() else SCENARIOS / name


def sipp_binary() -> str:
    """The `sipp` executable; without it the test fails: `make test` installs it."""
    path = shutil.which("sipp")
    if path is None:
        pytest.fail("sipp is not installed: `make test` installs it (Debian sip-tester)")
    return path


def write_users_csv(path: Path, users: Iterable[tuple[str, str]]) -> Path:
    """An injection file for register.xml: field0 = user, field1 = its [authentication]."""
    lines = ["SEQUENTIAL"]
    lines += [f"{user};[authentication username={user} password={pw}]" for user, pw in users]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class SippResult:
    returncode: int
    stats: dict[str, str]
    """The last (cumulative) row of the -trace_stat CSV, by column name."""
    output: str
    errors: str
    """SIPp's -trace_err log: every unexpected message, with the call it broke."""

    def counter(self, name: str) -> int:
        return int(self.stats[name])

    def explain(self) -> str:
        return f"sipp exit {self.returncode}\n{self.errors[-3000:]}\n{self.output[-3000:]}"


def run_sipp(
    scenario: str,
    target: tuple[str, int],
    workdir: Path,
    *,
    local_port: int,
    calls: int,
    inf: Path | None = None,
    rate: int = 100,
    timeout: float = 30.0,
    extra: Sequence[str] = (),
    files: Sequence[Path] = (),
) -> SippResult:
    """Run `calls` calls of `scenario` from 127.0.0.1:`local_port` to `target`; wait for it.

    `files` (pcaps, say) are copied beside the scenario, where SIPp looks for them.
    """
    binary = sipp_binary()
    run_dir = workdir / f"sipp-{next(_runs)}"
    run_dir.mkdir(parents=True)
    shutil.copy(scenario_path(scenario), run_dir / scenario)
    for file in files:
        shutil.copy(file, run_dir / file.name)
    host, port = target
    stat = run_dir / "stat.csv"
    cmd = [
        binary,
        "-sf", scenario,
        "-i", host,
        "-p", str(local_port),
        "-m", str(calls),
        "-l", str(calls),
        "-r", str(rate),
        "-nostdin",
        # SIPp's own bound: quit with an error exit once this much time has passed.
        "-timeout", f"{max(1, int(timeout))}s",
        "-timeout_error",
        "-trace_stat", "-stf", stat.name,
        "-trace_err",
        *extra,
    ]  # fmt: skip
    if inf is not None:
        shutil.copy(inf, run_dir / inf.name)
        cmd += ["-inf", inf.name]
    cmd.append(f"{host}:{port}")
    try:
        proc = subprocess.run(
            cmd, cwd=run_dir, capture_output=True, text=True, timeout=timeout + 15
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        raise AssertionError(f"sipp did not finish within {timeout + 15} s") from exc
    errors = "".join(p.read_text(errors="replace") for p in run_dir.glob("*_errors.log"))
    stats: dict[str, str] = {}
    if stat.exists():
        rows = [line for line in stat.read_text().splitlines() if line.strip()]
        if len(rows) >= 2:
            stats = dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))
    return SippResult(proc.returncode, stats, proc.stdout + proc.stderr, errors)


# pcap (libpcap format, Ethernet frames) as SIPp's play_pcap_audio reads it

_PCAP_HEADER = 24
_RECORD_HEADER = struct.Struct("<IIII")  # seconds, microseconds, captured length, length


def _pcap_records(data: bytes) -> list[bytes]:
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        raise ValueError("not a little-endian microsecond pcap")
    records, offset = [], _PCAP_HEADER
    while offset + _RECORD_HEADER.size <= len(data):
        length = _RECORD_HEADER.unpack_from(data, offset)[2]
        end = offset + _RECORD_HEADER.size + length
        records.append(data[offset:end])
        offset = end
    return records


def pcap_head(source: Path, dest: Path, packets: int) -> Path:
    """The first `packets` packets of the pcap `source`, as the pcap `dest` (a short clip)."""
    data = source.read_bytes()
    dest.write_bytes(data[:_PCAP_HEADER] + b"".join(_pcap_records(data)[:packets]))
    return dest


def pcap_rtp_payloads(path: Path) -> list[bytes]:
    """The RTP payloads of a pcap of Ethernet/IPv4/UDP/RTP packets, in order."""
    payloads = []
    for record in _pcap_records(path.read_bytes()):
        ip = record[_RECORD_HEADER.size + 14 :]
        udp = ip[(ip[0] & 0x0F) * 4 :]
        rtp = udp[8:]
        payloads.append(rtp[12 + 4 * (rtp[0] & 0x0F) :])
    return payloads
