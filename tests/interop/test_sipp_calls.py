"""SIPp UAC -> pbx (B2BUA) -> SIPp UAS registered as an extension: calls that complete with
audio both ways, and calls that end without an answer (cancelled, busy, ring timeout)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.interop.helpers import add_users, configure
from tests.support.pbxproc import PbxProcess
from tests.support.ports import free_port
from tests.support.sipp import (
    STOCK_PCAPS,
    SippResult,
    pcap_head,
    pcap_rtp_payloads,
    run_sipp,
    write_users_csv,
)
from tests.support.tap import LoopbackTap

pytestmark = pytest.mark.interop

CALLS = 3
MEDIA = ["-mi", "127.0.0.1"]


def started_with_callee(pbx_proc: PbxProcess, tmp_path: Path) -> int:
    """Start pbx with users 1001 and 1002; register 1002 from a SIPp port, returned: a UAS
    run later from that port is where pbx sends calls for 1002."""
    add_users(pbx_proc, [("1001", "pw1001"), ("1002", "pw1002")])
    pbx_proc.start()
    callee_port = free_port(both=False)
    registered = run_sipp(
        "register.xml", ("127.0.0.1", pbx_proc.port), tmp_path, local_port=callee_port,
        calls=1, inf=write_users_csv(tmp_path / "callee.csv", [("1002", "pw1002")]),
    )  # fmt: skip
    assert registered.returncode == 0, registered.explain()
    return callee_port


def call_1002(
    pbx_proc: PbxProcess,
    tmp_path: Path,
    callee_port: int,
    uac: str,
    uas: str,
    *,
    calls: int = 1,
    uac_extra: Sequence[str] = (),
    uas_extra: Sequence[str] = (),
    files: Sequence[Path] = (),
) -> tuple[SippResult, SippResult]:
    """Run the UAS scenario `uas` as 1002 and the UAC scenario `uac` as 1001 calling 1002,
    `calls` times; both results, (caller, callee)."""
    target = ("127.0.0.1", pbx_proc.port)
    with ThreadPoolExecutor(1) as background:
        # The UAS may bind a moment after the first INVITE leaves: Timer A resends it.
        callee = background.submit(
            run_sipp, uas, target, tmp_path, local_port=callee_port, calls=calls,
            extra=[*MEDIA, *uas_extra],
        )  # fmt: skip
        caller = run_sipp(
            uac, target, tmp_path, local_port=free_port(both=False), calls=calls, rate=10,
            inf=write_users_csv(tmp_path / "caller.csv", [("1001", "pw1001")]),
            extra=["-s", "1002", *MEDIA, *uac_extra], files=files,
        )  # fmt: skip
        return caller, callee.result(timeout=60)


def assert_succeeded(result: SippResult, calls: int = 1) -> None:
    assert result.returncode == 0, result.explain()
    assert result.counter("SuccessfulCall(C)") == calls, result.explain()
    assert result.counter("FailedCall(C)") == 0, result.explain()


def the_cdrs(pbx_proc: PbxProcess, count: int) -> list[dict[str, Any]]:
    """`pbx cdr --json` once it lists `count` calls. A CDR is written when its call has
    ended, which may be a moment after the phones are done (the last BYE's answer)."""
    deadline = time.monotonic() + 10
    while len(records := pbx_proc.cli_json("cdr")) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(records) == count, records
    return list(records)


def test_sipp_calls_through_the_exchange(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    callee_port = started_with_callee(pbx_proc, tmp_path)
    caller, callee = call_1002(
        pbx_proc, tmp_path, callee_port, "uac_call.xml", "uas.xml", calls=CALLS,
        uac_extra=["-d", "200"], uas_extra=["-mp", str(free_port(both=False))],
    )  # fmt: skip
    assert_succeeded(caller, CALLS)
    assert_succeeded(callee, CALLS)
    # Each call left a CDR, and nothing is live any more (operator contract: cdr, calls).
    records = the_cdrs(pbx_proc, CALLS)
    assert {(r["caller"], r["callee"], r["disposition"]) for r in records} == {
        ("1001", "1002", "ANSWERED")
    }
    assert all(0 < r["billsec"] <= r["duration"] for r in records)
    assert pbx_proc.cli_json("calls") == []


CLIP_PACKETS = 50  # 1 s of g711a.pcap's A-law speech, 20 ms a packet


def test_sipp_audio_is_relayed_to_the_callee_and_echoed_back(
    pbx_proc: PbxProcess, tmp_path: Path
) -> None:
    """The UAC plays a pcap; the UAS echoes what reaches its media port (-rtp_echo), so each
    packet crosses pbx's bridge twice. SIPp counts no RTP: a tap on `lo` sees what was
    delivered to each SIPp media port, which must be the pcap's payloads, all and in order
    (both sides speak PCMA: pbx relays the payloads untouched)."""
    callee_port = started_with_callee(pbx_proc, tmp_path)
    clip = pcap_head(STOCK_PCAPS / "g711a.pcap", tmp_path / "audio.pcap", CLIP_PACKETS)
    played = pcap_rtp_payloads(clip)
    assert len(played) == CLIP_PACKETS
    caller_media, callee_media = free_port(both=False), free_port(both=False)
    with LoopbackTap() as tap:
        caller, callee = call_1002(
            pbx_proc, tmp_path, callee_port, "uac_pcap.xml", "uas.xml",
            uac_extra=["-mp", str(caller_media), "-d", "1600"],
            uas_extra=["-mp", str(callee_media), "-rtp_echo"], files=[clip],
        )  # fmt: skip
    assert_succeeded(caller)
    assert_succeeded(callee)
    # SIPp sends from its media port: to pbx's port for each side. What else reaches the
    # SIPp ports from elsewhere (other tests share `lo`) is not counted.
    [pbx_caller_side] = tap.rtp_destinations(caller_media)
    [pbx_callee_side] = tap.rtp_destinations(callee_media)
    assert {pbx_caller_side, pbx_callee_side} <= set(range(30000, 31000))  # pbx's [rtp] ports
    at_callee = tap.rtp(pbx_callee_side, callee_media)
    back_at_caller = tap.rtp(pbx_caller_side, caller_media)
    assert (len(at_callee), len(back_at_caller)) == (CLIP_PACKETS, CLIP_PACKETS)
    assert at_callee == played
    assert back_at_caller == played
    [record] = the_cdrs(pbx_proc, 1)
    assert (record["disposition"], record["caller_loss"], record["callee_loss"]) == (
        "ANSWERED", 0, 0,
    )  # fmt: skip


def test_sipp_caller_cancels_while_the_callee_rings(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    """uac_cancel.xml CANCELs at 180 and needs 200 (CANCEL) then 487 (INVITE);
    uas_ring.xml needs pbx's CANCEL, which it answers 200 and its INVITE 487."""
    callee_port = started_with_callee(pbx_proc, tmp_path)
    caller, callee = call_1002(
        pbx_proc, tmp_path, callee_port, "uac_cancel.xml", "uas_ring.xml", calls=CALLS
    )
    assert_succeeded(caller, CALLS)
    assert_succeeded(callee, CALLS)
    records = the_cdrs(pbx_proc, CALLS)
    assert {(r["disposition"], r["status"], r["hangup_by"], r["billsec"]) for r in records} == {
        ("CANCELLED", 487, "caller", 0.0)
    }
    assert pbx_proc.cli_json("calls") == []


def test_sipp_busy_callee(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    """uas_busy.xml answers 486; uac_busy.xml needs 486 as the call's final response."""
    callee_port = started_with_callee(pbx_proc, tmp_path)
    caller, callee = call_1002(
        pbx_proc, tmp_path, callee_port, "uac_busy.xml", "uas_busy.xml", calls=CALLS
    )
    assert_succeeded(caller, CALLS)
    assert_succeeded(callee, CALLS)
    records = the_cdrs(pbx_proc, CALLS)
    assert {(r["disposition"], r["status"], r["billsec"]) for r in records} == {("BUSY", 486, 0.0)}


RING_TIMEOUT = 2


def test_sipp_ring_timeout(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    """With [calls] ring_timeout = 2 a callee that only rings gets pbx's CANCEL
    (uas_ring.xml needs it) and the caller 480 (uac_no_answer.xml needs it)."""
    configure(pbx_proc, f"[calls]\nring_timeout = {RING_TIMEOUT}\n")
    callee_port = started_with_callee(pbx_proc, tmp_path)
    caller, callee = call_1002(pbx_proc, tmp_path, callee_port, "uac_no_answer.xml", "uas_ring.xml")
    assert_succeeded(caller)
    assert_succeeded(callee)
    [record] = the_cdrs(pbx_proc, 1)
    assert (record["disposition"], record["status"], record["cause"]) == (
        "NO ANSWER", 480, "ring timeout",
    )  # fmt: skip
    # It rang for the ring timeout, not for some other timer (Timer B would be 32 s).
    assert RING_TIMEOUT <= record["duration"] < RING_TIMEOUT + 1.5, record
