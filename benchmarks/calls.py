#!/usr/bin/env python3
"""Call capacity: call set-up rate (SIPp) and concurrent bridged calls with media.

Two measurements against one `pbx serve` started here (temp data dir, free loopback ports,
a large RTP port range, no qualify pings, a long RTP inactivity timeout):

1. Set-up rate. SIPp UAC -> pbx -> SIPp UAS, short calls without media: INVITE -> 407,
   INVITE with digest credentials -> 100, the exchange INVITEs the callee (registered by
   SIPp from the UAS port) -> 200 -> ACK, both ways; then BYE -> 200, both ways. Rising
   rates, one SIPp pair per step; it stops after the first step with failed calls or
   retransmissions (or that reached less than 90% of its target). Per step: server CPU
   microseconds per call, from /proc/PID/stat.

2. Concurrent bridged calls with media. The script's own user agents set calls up through
   pbx (the callee registered, the caller authenticated, a PCMA offer and answer; each
   leg's SDP names a UDP socket of the script), in rising numbers (50 ... 1000 calls, the
   calls of one level kept for the next). At each level a load generator (benchmarks/
   rtpload.c, compiled here with gcc; a Python fallback otherwise) sends 50 packets/s on
   every leg, so a call is 100 packets/s into pbx and 100 out, and receives what pbx
   relays. Per level: loss, transit time through the exchange (send time stamped in the
   payload, receive time from the kernel, so the generator's own delays do not count),
   server CPU as % of one core, and the generator's own CPU and pacing.

    .venv/bin/python benchmarks/calls.py --quick         # smoke run, < 1 minute
    .venv/bin/python benchmarks/calls.py                 # both parts
    .venv/bin/python benchmarks/calls.py --only media --levels 100,200,300 --media-seconds 10
    .venv/bin/python benchmarks/calls.py --only setup --rates 300 --step-seconds 30
    .venv/bin/python benchmarks/calls.py --only media --levels 300 --py-spy /tmp/spy
    .venv/bin/python benchmarks/calls.py --only media --levels 100,200 --record wav

Results: benchmarks/results/calls.json (calls-quick.json with --quick; --json PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pbx.errors import RemoteProtocolError
from pbx.sip.dialog import Dialog
from pbx.sip.digest import DigestClient, choose_challenge
from pbx.sip.message import Request, Response, build_ack, build_response, new_branch, new_tag
from pbx.sip.message import parse_message as parse_sip
from pbx.sip.sdp import parse_sdp
from pbx.sip.uri import parse_uri
from register import (
    FIRST_EXTENSION,
    Server,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    git_commit,
    sipp_time,
    sipp_version,
    write_users,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GENERATOR_SOURCE = HERE / "rtpload.c"
SETUP_RATES = (50, 100, 200, 300, 400, 500, 600, 800, 1000, 1250, 1500)
QUICK_SETUP_RATES = (20, 50)
LEVELS = (50, 100, 250, 500, 750, 1000)
QUICK_LEVELS = (10, 25)
SATURATED = 0.9  # a set-up step reaching less than this share of its target ends the climb
COLLAPSED = 0.05  # a media level losing more than this share of packets ends the climb
PTIME_MS = 20
# SIPp's default socket buffers are 64 KB: a SIPp paused for a few tens of ms by the
# scheduler loses an ACK, and the BYE behind it then fails the call at the UAS.
SIPP_BUFFER = 4 * 1024 * 1024
SETUP_CONCURRENCY = 20  # calls the media part sets up at once
RTP_RANGE = (10000, 29999)  # below the kernel's ephemeral ports, where our sockets land
CALLEE = str(FIRST_EXTENSION)
CALLER = str(FIRST_EXTENSION + 1)
HOST = "127.0.0.1"

REGISTER_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="REGISTER the UAS">
  <send retrans="500"><![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Expires: 3600
      Content-Length: 0

  ]]></send>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      [field1]
      Max-Forwards: 70
      Expires: 3600
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
</scenario>
"""

# /work/shared/peers/sipp/uac_call.xml with the optional provisional responses the
# exchange sends (100 to the authenticated INVITE; 180 only if the callee rings).
UAC_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="UAC call, no media">
  <send retrans="500"><![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sippuac 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="407" auth="true"/>
  <send><![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <send retrans="500"><![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 INVITE
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      [field1]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sippuac 53655765 2353687638 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: [last_cseq_number] ACK
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <pause/>
  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: [last_cseq_number+1] BYE
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""

# /work/shared/peers/sipp/uas.xml answering at once (no 180, no 200 ms pause): the step
# measures the exchange, not a ringing phone. The timewait absorbs BYE retransmissions.
UAS_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="UAS answer at once">
  <recv request="INVITE" crlf="true"/>
  <send retrans="500"><![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_Record-Route:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sippuas 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16

  ]]></send>
  <recv request="ACK" crlf="true"/>
  <recv request="BYE" timeout="60000"/>
  <send><![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

  ]]></send>
  <timewait milliseconds="1000"/>
</scenario>
"""


def server_config(port: int, record: str | None = None) -> str:
    """The pbx.toml of the benchmark server; `record` ("wav" or "flac"): every answered
    call recorded in that format ([recording] record = "all", under data/recordings)."""
    text = (
        f'data_dir = "data"\nlog_level = "warning"\n\n'
        f'[sip]\nlisten = ["udp:{HOST}:{port}"]\n\n'
        f'[rtp]\naddress = "{HOST}"\nport_range = [{RTP_RANGE[0]}, {RTP_RANGE[1]}]\n'
        "inactivity_timeout = 3600\n\n"
        "[registrar]\nqualify_interval = 0\n"
    )
    if record is not None:
        text += f'\n[recording]\nrecord = "all"\nformat = "{record}"\n'
    return text


# --- part 1: set-up rate ------------------------------------------------------------------


@dataclass
class SetupStep:
    target_rate: int
    calls: int
    achieved_rate: float
    successful: int
    failed: int
    retransmissions: int
    uas_answered: int
    setup_ms: float
    wall_s: float
    server_cpu_s: float
    server_cpu_pct: float
    loop_cpu_pct: float
    cpu_us_per_call: float | None
    sipp_cpu_pct: float
    sipp_exit: int
    uas_exit: int | None

    @property
    def clean(self) -> bool:
        """No failed call, no retransmission, and the rate asked for (nearly) reached."""
        return (
            self.successful > 0
            and self.failed == 0
            and self.retransmissions == 0
            and self.achieved_rate >= SATURATED * self.target_rate
        )


def udp_port_bound(port: int) -> bool:
    """Whether some process holds UDP `port` (IPv4), from /proc/net/udp."""
    needle = f":{port:04X} "
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            if needle in line.split()[1] + " ":
                return True
    return False


def last_stat_row(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    return rows[-1] if rows else {}


def sipp_ms(text: str) -> float:
    """SIPp's HH:MM:SS:uuuuuu duration in milliseconds."""
    with contextlib.suppress(ValueError):
        hours, minutes, seconds, micros = (int(p) for p in text.split(":"))
        return ((hours * 60 + minutes) * 60 + seconds) * 1000 + micros / 1000
    return 0.0


def register_uas(server: Server, uas_port: int, directory: Path) -> None:
    """Register the callee from the UAS port, so the exchange routes its calls there."""
    scenario = directory / "register-uas.xml"
    scenario.write_text(REGISTER_SCENARIO)
    users = directory / "callee.csv"
    users.write_text(
        f"SEQUENTIAL\n{CALLEE};[authentication username={CALLEE} password=pw{CALLEE}]\n"
    )
    command = [
        "sipp", "-sf", str(scenario), "-inf", str(users), "-i", HOST, "-p", str(uas_port),
        "-m", "1", "-recv_timeout", "5000", "-timeout", "15s", "-nostdin",
        f"{HOST}:{server.port}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=directory, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"SIPp could not register the UAS (exit {done.returncode})")


def run_setup_step(
    rate: int, seconds: float, server: Server, uas_port: int, directory: Path, spy: Path | None
) -> SetupStep:
    calls = max(1, round(rate * seconds))
    uac_stat, uas_stat = directory / f"uac-{rate}.csv", directory / f"uas-{rate}.csv"
    bound = seconds * 3 + 30
    uas_command = [
        "sipp", "-sf", "uas.xml", "-i", HOST, "-p", str(uas_port),
        "-mi", HOST, "-mp", str(free_port()), "-m", str(calls),
        "-timeout", f"{int(bound)}s", "-trace_stat", "-stf", uas_stat.name, "-fd", "1",
        "-trace_err", "-error_file", f"uas-{rate}-errors.log",
        "-buff_size", str(SIPP_BUFFER),
        "-nostdin", f"{HOST}:{server.port}",
    ]  # fmt: skip
    uac_command = [
        "sipp", "-sf", "uac.xml", "-inf", "caller.csv", "-s", CALLEE,
        "-i", HOST, "-p", str(free_port()), "-mi", HOST,
        "-r", str(rate), "-m", str(calls), "-l", str(max(50, rate)), "-d", "0",
        "-recv_timeout", "5000", "-timeout", f"{int(bound)}s",
        "-trace_stat", "-stf", uac_stat.name, "-fd", "1", "-nostdin",
        "-trace_err", "-error_file", f"uac-{rate}-errors.log",
        "-buff_size", str(SIPP_BUFFER),
        f"{HOST}:{server.port}",
    ]  # fmt: skip
    server.check_alive()
    uas = subprocess.Popen(uas_command, cwd=directory, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    uac: subprocess.Popen[bytes] | None = None
    spy_proc: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 10
        while not udp_port_bound(uas_port):
            if uas.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SIPp UAS did not bind port {uas_port}")
            time.sleep(0.02)
        loop0 = cpu_seconds(server.pid, server.pid)
        cpu0, sipp0, wall0 = cpu_seconds(server.pid), children_cpu_seconds(), time.monotonic()
        uac = subprocess.Popen(uac_command, cwd=directory, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
        if spy is not None:
            spy_proc = start_py_spy(server.pid, seconds, spy / f"setup-{rate}.txt")
        uac.wait(bound + 30)
        wall = time.monotonic() - wall0
        server_cpu = cpu_seconds(server.pid) - cpu0
        loop_cpu = cpu_seconds(server.pid, server.pid) - loop0
        with contextlib.suppress(subprocess.TimeoutExpired):
            uas.wait(10)  # its last calls sit in timewait for a second
    finally:
        if spy_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy_proc.wait(seconds + 15)  # it writes its file when its duration ends
        for proc in (uac, uas, spy_proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
    sipp_cpu = children_cpu_seconds() - sipp0
    server.check_alive()
    out, answered = last_stat_row(uac_stat), last_stat_row(uas_stat)
    if not out:
        raise RuntimeError(f"SIPp UAC wrote no statistics (exit {uac.returncode})")
    successful = int(out["SuccessfulCall(C)"])
    failed = int(out["FailedCall(C)"])
    unfinished = max(0, int(out["OutgoingCall(C)"]) - successful - failed)
    retrans = int(out["Retransmissions(C)"]) + int(answered.get("Retransmissions(C)", 0))
    failed += int(answered.get("FailedCall(C)", 0))
    elapsed = sipp_time(out["CurrentTime"]) - sipp_time(out["StartTime"])
    return SetupStep(
        target_rate=rate,
        calls=calls,
        achieved_rate=successful / elapsed if elapsed > 0 else 0.0,
        successful=successful,
        failed=failed + unfinished,
        retransmissions=retrans,
        uas_answered=int(answered.get("SuccessfulCall(C)", 0)),
        setup_ms=sipp_ms(out.get("ResponseTime1(C)", "")),
        wall_s=wall,
        server_cpu_s=server_cpu,
        server_cpu_pct=100 * server_cpu / wall,
        loop_cpu_pct=100 * loop_cpu / wall,
        cpu_us_per_call=1e6 * server_cpu / successful if successful else None,
        sipp_cpu_pct=100 * sipp_cpu / wall,
        sipp_exit=uac.returncode,
        uas_exit=uas.returncode,
    )


def print_setup_table(steps: list[SetupStep]) -> None:
    base = steps[0].cpu_us_per_call

    def ratio(value: float | None) -> str:
        return f"{value / base:6.2f}" if value and base else "     -"

    header = (
        f"{'target/s':>8} {'achieved/s':>10} {'ok':>6} {'failed':>6} {'retrans':>7} "
        f"{'srv CPU%':>8} {'loop%':>5} {'us/call':>7} {'x low':>6} {'setup ms':>8} "
        f"{'sipp CPU%':>9}"
    )
    print(header)
    print("-" * len(header))
    for s in steps:
        us = s.cpu_us_per_call
        print(
            f"{s.target_rate:>8} {s.achieved_rate:>10.0f} {s.successful:>6} {s.failed:>6} "
            f"{s.retransmissions:>7} {s.server_cpu_pct:>8.0f} {s.loop_cpu_pct:>5.0f} "
            f"{f'{us:7.0f}' if us else '      -'} {ratio(us)} {s.setup_ms:>8.1f} "
            f"{s.sipp_cpu_pct:>9.0f}"
        )


def run_setup(
    rates: list[int],
    seconds: float,
    server: Server,
    uas_port: int,
    directory: Path,
    spy: Path | None,
) -> list[SetupStep]:
    (directory / "uac.xml").write_text(UAC_SCENARIO)
    (directory / "uas.xml").write_text(UAS_SCENARIO)
    (directory / "caller.csv").write_text(
        f"SEQUENTIAL\n{CALLER};[authentication username={CALLER} password=pw{CALLER}]\n"
    )
    steps: list[SetupStep] = []
    for rate in rates:
        step = run_setup_step(rate, seconds, server, uas_port, directory, spy)
        steps.append(step)
        print(
            f"  {rate} calls/s: {step.successful} ok, {step.failed} failed, "
            f"{step.retransmissions} retrans, {step.achieved_rate:.0f}/s achieved, "
            f"{step.cpu_us_per_call or 0:.0f} us CPU/call",
            flush=True,
        )
        if not step.clean:
            break
    return steps


# --- part 2: concurrent calls with media ---------------------------------------------------


class SipSocket(asyncio.DatagramProtocol):
    """One UDP socket of the script's user agents: responses go to the waiting request
    (by Call-ID and CSeq), requests to `on_request`."""

    def __init__(self, on_request: Callable[[Request, Any], None] | None = None) -> None:
        self.on_request = on_request
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[tuple[str, int], asyncio.Queue[Response]] = {}
        self.address: tuple[str, int] = (HOST, 0)

    @classmethod
    async def open(cls, on_request: Callable[[Request, Any], None] | None = None) -> SipSocket:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(on_request), local_addr=(HOST, 0)
        )
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.address = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not data.strip():
            return
        try:
            message = parse_sip(data)
        except RemoteProtocolError:
            # RTCP: the exchange reports to the SDP port + 1 (RFC 3550 §11), and that port
            # may be this socket, since the script's sockets get whatever port is free.
            return
        if isinstance(message, Response):
            queue = self.waiting.get((message.call_id, message.cseq.number))
            if queue is not None:
                queue.put_nowait(message)
        elif self.on_request is not None:
            self.on_request(message, addr)

    def send(self, data: bytes, to: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    async def transact(self, request: Request, to: Any, *, within: float = 10.0) -> Response:
        """Send `request` (resent while nothing answers, RFC 3261 Timer A/E), return the
        final response; provisional responses stop the resending."""
        key = (request.call_id, request.cseq.number)
        queue = self.waiting[key] = asyncio.Queue()
        data, interval = request.encode(), 0.5
        deadline = time.monotonic() + within
        heard = False  # a provisional response: the request got there, stop resending
        try:
            while True:
                if not heard:
                    self.send(data, to)
                remaining = deadline - time.monotonic()
                try:
                    response = await asyncio.wait_for(
                        queue.get(), remaining if heard else min(interval, remaining)
                    )
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
                    interval = min(interval * 2, 4.0)
                    continue
                if response.status >= 200:
                    return response
                heard = True
        finally:
            self.waiting.pop(key, None)


def rtp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    return sock


def sdp_body(port: int) -> bytes:
    return (
        f"v=0\r\no=bench {port} 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
    ).encode()


def media_address(body: bytes) -> tuple[str, int]:
    sdp = parse_sdp(body)
    media = sdp.media[0]
    connection = sdp.connection_for(media)
    assert connection is not None
    return connection.address, media.port


@dataclass
class BenchCall:
    dialog: Dialog
    caller_rtp: socket.socket


@dataclass
class Phones:
    """The caller (UAC) and the callee (UAS, registered) of the media part, and the RTP
    socket of every leg set up so far: caller legs and callee legs in call order."""

    pbx: tuple[str, int]
    uac: SipSocket
    uas: SipSocket
    calls: list[BenchCall] = field(default_factory=list)
    legs: list[socket.socket] = field(default_factory=list)
    answered: dict[str, tuple[Response, bool]] = field(default_factory=dict)
    """Call-ID -> (our 200, acknowledged) of the callee's dialogs."""
    failures: int = 0
    retransmitted_200s: int = 0

    @classmethod
    async def open(cls, pbx: tuple[str, int]) -> Phones:
        uac = await SipSocket.open()
        phones = cls(pbx, uac, uac)  # replaced at once: the UAS needs the bound method
        phones.uas = await SipSocket.open(phones._callee_request)
        return phones

    def close(self) -> None:
        for sock in self.legs:
            sock.close()
        for sip in (self.uac, self.uas):
            if sip.transport is not None:
                sip.transport.close()

    async def register_callee(self) -> None:
        host, port = self.uas.address
        digest = DigestClient(CALLEE, f"pw{CALLEE}")
        call_id, tag = new_tag() + "@bench", new_tag()
        authorization: list[tuple[str, str]] = []
        for cseq in (1, 2):
            request = Request.build(
                "REGISTER",
                parse_uri(f"sip:{self.pbx[0]}:{self.pbx[1]}"),
                [
                    ("Via", f"SIP/2.0/UDP {host}:{port};branch={new_branch()};rport"),
                    ("Max-Forwards", "70"),
                    ("From", f"<sip:{CALLEE}@{self.pbx[0]}>;tag={tag}"),
                    ("To", f"<sip:{CALLEE}@{self.pbx[0]}>"),
                    ("Call-ID", call_id),
                    ("CSeq", f"{cseq} REGISTER"),
                    ("Contact", f"<sip:{CALLEE}@{host}:{port}>"),
                    ("Expires", "3600"),
                    *authorization,
                ],
            )
            response = await self.uas.transact(request, self.pbx)
            if response.status == 200:
                return
            challenge = choose_challenge(response.headers_named("WWW-Authenticate"))
            if response.status != 401 or challenge is None:
                break
            value = digest.authorization(challenge, "REGISTER", str(request.uri))
            authorization = [("Authorization", value)]
        raise RuntimeError(f"registering the callee failed: {response.status}")

    def _callee_request(self, request: Request, addr: Any) -> None:
        """The callee's phone: answer every INVITE at once with a PCMA answer naming a new
        RTP socket; 200 to BYE."""
        method = request.method
        if method == "INVITE":
            known = self.answered.get(request.call_id)
            if known is not None:  # a retransmitted INVITE: our 200 again
                self.uas.send(known[0].encode(), addr)
                return
            sock = rtp_socket()
            sock.connect(media_address(request.body))
            self.legs.append(sock)
            host, port = self.uas.address
            ok = build_response(
                request,
                200,
                headers=[
                    ("Contact", f"<sip:{CALLEE}@{host}:{port}>"),
                    ("Content-Type", "application/sdp"),
                ],
                body=sdp_body(sock.getsockname()[1]),
                to_tag=new_tag(),
            )
            self.answered[request.call_id] = (ok, False)
            self.uas.send(ok.encode(), addr)
            asyncio.get_running_loop().call_later(0.5, self._resend_200, request.call_id, addr)
        elif method == "ACK":
            if request.call_id in self.answered:
                self.answered[request.call_id] = (self.answered[request.call_id][0], True)
        elif method == "BYE":
            self.answered.pop(request.call_id, None)
            self.uas.send(build_response(request, 200).encode(), addr)
        else:
            self.uas.send(build_response(request, 501).encode(), addr)

    def _resend_200(self, call_id: str, addr: Any) -> None:
        state = self.answered.get(call_id)
        if state is not None and not state[1]:
            self.retransmitted_200s += 1
            self.uas.send(state[0].encode(), addr)
            asyncio.get_running_loop().call_later(1.0, self._resend_200, call_id, addr)

    async def call(self) -> None:
        """One call from the caller to the callee: INVITE, 407, ACK, INVITE with
        credentials, 200, ACK. The caller's RTP socket joins `legs` once it is answered."""
        sock = rtp_socket()
        host, port = self.uac.address
        pbx_host, pbx_port = self.pbx
        call_id, tag = new_tag() + new_tag() + "@bench", new_tag()
        uri = f"sip:{CALLEE}@{pbx_host}:{pbx_port}"
        credentials: list[tuple[str, str]] = []
        try:
            for cseq in (1, 2):
                invite = Request.build(
                    "INVITE",
                    parse_uri(uri),
                    [
                        ("Via", f"SIP/2.0/UDP {host}:{port};branch={new_branch()};rport"),
                        ("Max-Forwards", "70"),
                        ("From", f"<sip:{CALLER}@{pbx_host}>;tag={tag}"),
                        ("To", f"<sip:{CALLEE}@{pbx_host}>"),
                        ("Call-ID", call_id),
                        ("CSeq", f"{cseq} INVITE"),
                        ("Contact", f"<sip:{CALLER}@{host}:{port}>"),
                        ("Content-Type", "application/sdp"),
                        *credentials,
                    ],
                    sdp_body(sock.getsockname()[1]),
                )
                response = await self.uac.transact(invite, self.pbx, within=30)
                if response.status == 200:
                    break
                self.uac.send(build_ack(invite, response).encode(), self.pbx)
                challenge = choose_challenge(response.headers_named("Proxy-Authenticate"))
                if response.status != 407 or challenge is None:
                    raise RuntimeError(f"call failed: {response.status}")
                answer = DigestClient(CALLER, f"pw{CALLER}").authorization(challenge, "INVITE", uri)
                credentials = [("Proxy-Authorization", answer)]
            else:
                raise RuntimeError("call not answered after authenticating")
            dialog = Dialog.from_uac(invite, response)
            self.uac.send(dialog.create_ack(local_address=(host, port)).encode(), self.pbx)
            sock.connect(media_address(response.body))
        except BaseException:
            sock.close()
            self.failures += 1
            raise
        self.legs.append(sock)
        self.calls.append(BenchCall(dialog, sock))

    async def hang_up(self, call: BenchCall) -> bool:
        bye = call.dialog.create_request("BYE", local_address=self.uac.address)
        try:
            response = await self.uac.transact(bye, self.pbx)
        except TimeoutError:
            return False
        return response.status == 200


@dataclass
class MediaLevel:
    calls: int
    legs: int
    setup_s: float
    setup_failures: int
    seconds: float
    sent: int
    received: int
    lost: int
    loss_pct: float
    lossy_streams: int
    reordered: int
    send_errors: int
    transit_p50_ms: float
    transit_p90_ms: float
    transit_p99_ms: float
    transit_p999_ms: float
    transit_max_ms: float
    server_cpu_pct: float
    loop_cpu_pct: float
    server_cpu_us_per_packet: float | None
    generator_cpu_pct: float
    generator_late_p99_ms: float
    generator: str
    host_cpu_pct: float = 0.0
    """The whole machine's busy CPU (all cores, steal included; 100 = one core): what is
    more than the server and the generator is something else on the machine."""

    @property
    def clean(self) -> bool:
        return self.sent > 0 and self.loss_pct < 0.1 and self.transit_p99_ms < 5.0


def host_cpu_seconds() -> float:
    """Busy CPU seconds of the machine, all cores: /proc/stat's first line less idle and
    iowait (user nice system idle iowait irq softirq steal, in clock ticks)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def build_generator(directory: Path) -> list[str] | None:
    """Compile rtpload.c into `directory`; None without a working C compiler."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not GENERATOR_SOURCE.exists():
        return None
    binary = directory / "rtpload"
    done = subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(GENERATOR_SOURCE)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(f"gcc failed, using the Python generator:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return [str(binary)]


async def run_level(
    phones: Phones,
    target: int,
    seconds: float,
    server: Server,
    generator: list[str],
    spy: Path | None,
) -> MediaLevel:
    before = len(phones.calls)
    failures0 = phones.failures
    started = time.monotonic()
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one() -> None:
        async with gate:
            await phones.call()

    results = await asyncio.gather(*(one() for _ in range(target - before)), return_exceptions=True)
    setup_s = time.monotonic() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"    {len(errors)} calls failed to set up: {errors[0]!r}", flush=True)
    server.check_alive()
    fds = [sock.fileno() for sock in phones.legs]
    process = await asyncio.create_subprocess_exec(
        *generator, f"{seconds:g}", "1.0", str(PTIME_MS),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=fds,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    spy_proc: subprocess.Popen[bytes] | None = None
    try:
        process.stdin.write(("\n".join(map(str, fds)) + "\n").encode())
        await process.stdin.drain()
        process.stdin.close()
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if line.strip() != b"started":
            raise RuntimeError(f"load generator said {line!r}")
        loop0 = cpu_seconds(server.pid, server.pid)
        cpu0, host0, wall0 = cpu_seconds(server.pid), host_cpu_seconds(), time.monotonic()
        if spy is not None:
            spy_proc = start_py_spy(server.pid, seconds, spy / f"level-{target}.txt")
        line = await asyncio.wait_for(process.stdout.readline(), seconds + 60)
        wall = time.monotonic() - wall0
        server_cpu = cpu_seconds(server.pid) - cpu0
        host_cpu = host_cpu_seconds() - host0
        loop_cpu = cpu_seconds(server.pid, server.pid) - loop0
        if line.strip() != b"stopped":
            raise RuntimeError(f"load generator said {line!r}")
        report = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if spy_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy_proc.wait(30)
            if spy_proc.poll() is None:
                spy_proc.kill()
    server.check_alive()
    transit = report["transit_us"]
    sent = report["sent"]
    return MediaLevel(
        calls=len(phones.calls),
        legs=len(fds),
        setup_s=setup_s,
        setup_failures=phones.failures - failures0,
        seconds=wall,
        sent=sent,
        received=report["received"],
        lost=report["lost"],
        loss_pct=100 * report["lost"] / sent if sent else 100.0,
        lossy_streams=report["lossy_streams"],
        reordered=report["reordered"],
        send_errors=report["send_errors"],
        transit_p50_ms=transit["p50"] / 1000,
        transit_p90_ms=transit["p90"] / 1000,
        transit_p99_ms=transit["p99"] / 1000,
        transit_p999_ms=transit["p999"] / 1000,
        transit_max_ms=transit["max"] / 1000,
        server_cpu_pct=100 * server_cpu / wall,
        loop_cpu_pct=100 * loop_cpu / wall,
        server_cpu_us_per_packet=1e6 * server_cpu / report["received"]
        if report["received"]
        else None,
        generator_cpu_pct=100 * report["cpu_s"] / (wall + 1.0),
        generator_late_p99_ms=report["send_late_us"]["p99"] / 1000,
        generator=Path(generator[-1]).name,
        host_cpu_pct=100 * host_cpu / wall,
    )


def start_py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the server for the level (collapsed stacks), if it is installed."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        print("py-spy is not installed (pip install py-spy); no profile", file=sys.stderr)
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds) - 1)),
         "--rate", "250", "--format", "raw", "--nonblocking", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


_LINE_NUMBER = re.compile(r":\d+\)$")


def summarise_py_spy(path: Path, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, % of samples on top of the stack, % of samples anywhere in it)."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "function (file:line)" -> "function (file)": one entry per function
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if not total:
        return []
    return [(f, 100 * c / total, 100 * anywhere[f] / total) for f, c in own.most_common(top)]


def print_media_table(levels: list[MediaLevel]) -> None:
    header = (
        f"{'calls':>5} {'pkts/s in':>9} {'loss %':>7} {'transit p50':>11} {'p99 ms':>7} "
        f"{'max ms':>7} {'srv CPU%':>8} {'loop%':>5} {'us/pkt':>6} {'x low':>6} "
        f"{'gen CPU%':>8} {'gen late p99':>12}"
    )
    print(header)
    print("-" * len(header))
    base = levels[0].server_cpu_us_per_packet
    for lv in levels:
        us = lv.server_cpu_us_per_packet
        rate = lv.sent / lv.seconds if lv.seconds else 0
        print(
            f"{lv.calls:>5} {rate:>9.0f} {lv.loss_pct:>7.3f} {lv.transit_p50_ms:>11.2f} "
            f"{lv.transit_p99_ms:>7.2f} {lv.transit_max_ms:>7.1f} {lv.server_cpu_pct:>8.0f} "
            f"{lv.loop_cpu_pct:>5.0f} {f'{us:6.1f}' if us else '     -'} "
            f"{f'{us / base:6.2f}' if us and base else '     -'} {lv.generator_cpu_pct:>8.0f} "
            f"{lv.generator_late_p99_ms:>12.2f}"
        )


async def run_media(
    levels: list[int],
    seconds: float,
    server: Server,
    generator: list[str],
    spy: Path | None,
) -> tuple[list[MediaLevel], int]:
    phones = await Phones.open((HOST, server.port))
    results: list[MediaLevel] = []
    hung_up = 0
    try:
        await phones.register_callee()
        for target in levels:
            level = await run_level(phones, target, seconds, server, generator, spy)
            results.append(level)
            print(
                f"  {level.calls} calls ({level.setup_s:.1f} s to set up): "
                f"{level.sent / level.seconds:.0f} packets/s sent, loss {level.loss_pct:.3f}%, "
                f"transit p99 {level.transit_p99_ms:.2f} ms, server CPU "
                f"{level.server_cpu_pct:.0f}%, generator CPU {level.generator_cpu_pct:.0f}%",
                flush=True,
            )
            if level.loss_pct > 100 * COLLAPSED or level.calls < target:
                break
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def bye(call: BenchCall) -> bool:
            async with gate:
                return await phones.hang_up(call)

        hung_up = sum(await asyncio.gather(*(bye(c) for c in phones.calls)))
    finally:
        phones.close()
    return results, hung_up


# --- the Python generator, for machines without a C compiler ---------------------------


SO_TIMESTAMPNS = 35  # Linux; also the SCM type of its control message. Not in `socket`.
_STAMP = struct.Struct("!BBHIIIIq")  # RTP header, stream id, sequence, send time (ns)


def python_generator(seconds: float, drain: float, ptime_ms: int) -> None:
    """What rtpload.c does, in Python: same protocol on stdin/stdout. It keeps up with a
    few hundred legs; its `send_late_us` says when it does not."""
    fds = [int(line) for line in sys.stdin.read().split()]
    socks = [socket.socket(fileno=fd) for fd in fds]
    n = len(socks)
    for sock in socks:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        selector.register(sock, selectors.EVENT_READ, index)
    sent, received, last_seq = [0] * n, [0] * n, [-1] * n
    transit: list[int] = []
    late: list[int] = []
    reordered = errors = 0
    period = ptime_ms * 1_000_000
    start = time.monotonic_ns() + 20_000_000
    start_real = time.time_ns() + 20_000_000
    end = start + int(seconds * 1e9)
    filler = b"\xd5" * (172 - _STAMP.size)
    ancillary = socket.CMSG_SPACE(16)
    print("started", flush=True)
    j, drain_end = 0, None
    while True:
        now = time.monotonic_ns()
        timeout = None
        if drain_end is None:
            while True:
                due = start + (j // n) * period + (j % n) * period // n
                if due >= end:
                    drain_end = now + int(drain * 1e9)
                    print("stopped", flush=True)
                    break
                if due > now:
                    timeout = max(due - now, 200_000) / 1e9
                    break
                leg, k = j % n, j // n
                packet = _STAMP.pack(0x80, 8, k & 0xFFFF, k * 160, 0x10000 + leg, leg, k,
                                     time.time_ns()) + filler  # fmt: skip
                try:
                    socks[leg].send(packet)
                    sent[leg] += 1
                except OSError:
                    errors += 1
                late.append(time.monotonic_ns() - due)
                j += 1
        if drain_end is not None:
            if now >= drain_end:
                break
            timeout = (drain_end - now) / 1e9
        for key, _ in selector.select(timeout):
            sock = socks[key.data]
            while True:
                try:
                    data, cmsgs, _, _ = sock.recvmsg(2048, ancillary)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if len(data) < _STAMP.size:
                    continue
                *_, stream, seq, sent_at = _STAMP.unpack_from(data)
                if stream >= n or sent_at < start_real - 1_000_000_000:
                    continue
                rx = time.time_ns()
                for level, kind, value in cmsgs:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        secs, nanos = struct.unpack("qq", value[:16])
                        rx = secs * 1_000_000_000 + nanos
                received[stream] += 1
                if seq <= last_seq[stream]:
                    reordered += 1
                else:
                    last_seq[stream] = seq
                transit.append(rx - sent_at)

    def pct(values: list[int], q: float) -> float:
        if not values:
            return 0.0
        values.sort()
        return values[min(len(values) - 1, int(q * len(values)))] / 1000

    losses = [s - r for s, r in zip(sent, received, strict=True) if s > r]
    usage = os.times()
    print(json.dumps({
        "legs": n, "sent": sum(sent), "received": sum(received), "lost": sum(losses),
        "lossy_streams": len(losses), "reordered": reordered, "send_errors": errors,
        "foreign": 0, "stale": 0,
        "transit_us": {"p50": pct(transit, 0.5), "p90": pct(transit, 0.9),
                       "p99": pct(transit, 0.99), "p999": pct(transit, 0.999),
                       "max": max(transit, default=0) / 1000},
        "send_late_us": {"p50": pct(late, 0.5), "p99": pct(late, 0.99),
                         "max": max(late, default=0) / 1000},
        "cpu_s": usage.user + usage.system,
    }), flush=True)  # fmt: skip


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    numbers = lambda t: [int(r) for r in t.split(",")]  # noqa: E731
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 1 minute)")
    parser.add_argument("--only", choices=("setup", "media"), help="run one part only")
    parser.add_argument("--rates", type=numbers, help="set-up rate steps, calls/s")
    parser.add_argument("--step-seconds", type=float, help="seconds per set-up step (3)")
    parser.add_argument("--levels", type=numbers, help="concurrent call levels")
    parser.add_argument("--media-seconds", type=float, help="seconds of RTP per level (8)")
    parser.add_argument(
        "--python-generator", action="store_true", help="use the Python RTP generator, not C"
    )
    parser.add_argument(
        "--record",
        choices=("wav", "flac"),
        help='record every call in this format ([recording] record = "all")',
    )
    parser.add_argument("--py-spy", type=Path, help="profile the server per media level here")
    parser.add_argument("--json", "--output", dest="output", type=Path, help="JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stats)")
    parser.add_argument("--generate", nargs=3, metavar=("SECONDS", "DRAIN", "PTIME"),
                        help=argparse.SUPPRESS)  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generate:
        seconds, drain, ptime = args.generate
        python_generator(float(seconds), float(drain), int(ptime))
        return 0
    do_setup, do_media = args.only in (None, "setup"), args.only in (None, "media")
    if do_setup and shutil.which("sipp") is None:
        print("sipp is not installed (Debian: apt-get install sip-tester)", file=sys.stderr)
        return 2
    rates = list(args.rates or (QUICK_SETUP_RATES if args.quick else SETUP_RATES))
    step_seconds = args.step_seconds or (1.0 if args.quick else 3.0)
    levels = sorted(args.levels or (QUICK_LEVELS if args.quick else LEVELS))
    media_seconds = args.media_seconds or (2.0 if args.quick else 8.0)
    output = args.output or RESULTS / ("calls-quick.json" if args.quick else "calls.json")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    directory = Path(tempfile.mkdtemp(prefix="pbx-bench-calls-"))
    server: Server | None = None
    setup_steps: list[SetupStep] = []
    media_levels: list[MediaLevel] = []
    hung_up = 0
    generator: list[str] = []
    try:
        port = free_port()
        config = directory / "pbx.toml"
        config.write_text(server_config(port, args.record))
        write_users(config, 2, directory)  # CALLEE and CALLER
        server = Server(config, port, directory / "pbx.log", None)
        server.start()
        print(f"pbx serve pid {server.pid} on udp {HOST}:{port}", flush=True)
        if do_setup:
            print(f"set-up rate: steps {rates} calls/s, {step_seconds:g} s each", flush=True)
            uas_port = free_port()
            register_uas(server, uas_port, directory)
            setup_steps = run_setup(rates, step_seconds, server, uas_port, directory, args.py_spy)
        if do_media:
            built = None if args.python_generator else build_generator(directory)
            generator = built or [sys.executable, str(Path(__file__).resolve()), "--generate"]
            print(
                f"media: levels {levels} calls, {media_seconds:g} s of RTP each, generator "
                f"{'rtpload (C)' if built else 'Python'}"
                + (f", every call recorded ({args.record})" if args.record else ""),
                flush=True,
            )
            media_levels, hung_up = asyncio.run(
                run_media(levels, media_seconds, server, generator, args.py_spy)
            )
        exit_code = server.stop()
        warnings = server.log_tail(10)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)

    summary: dict[str, Any] = {"server_exit": exit_code}
    ok = True
    if setup_steps:
        print()
        print_setup_table(setup_steps)
        print(
            "\ncall = INVITE/407/ACK + INVITE/100/200/ACK + BYE/200 on the caller's side, "
            "INVITE/200/ACK + BYE/200\non the callee's. us/call: server CPU microseconds per "
            "call; srv CPU%: server CPU / wall,\n100 = one core; loop%: the event loop's thread "
            "alone; setup ms: SIPp's mean INVITE to 200."
        )
        clean = [s for s in setup_steps if s.clean]
        best = max(clean, key=lambda s: s.target_rate) if clean else None
        if best:
            print(
                f"highest clean set-up rate: {best.target_rate}/s (achieved "
                f"{best.achieved_rate:.0f}/s), {best.cpu_us_per_call:.0f} us server CPU per call"
            )
        else:
            print("no set-up step ran without failures or retransmissions")
            ok = False
        summary["setup"] = {
            "max_clean_rate": best.target_rate if best else None,
            "max_clean_achieved_rate": round(best.achieved_rate, 1) if best else None,
            "cpu_us_per_call": round(best.cpu_us_per_call, 1)
            if best and best.cpu_us_per_call
            else None,
        }
    if media_levels:
        print()
        print_media_table(media_levels)
        print(
            "\npkts/s in: RTP the generator sent to the exchange (it relays as many back); "
            "transit: generator send\nto kernel receive through the exchange; us/pkt: server "
            "CPU per relayed packet; gen: the load\ngenerator's own CPU and how late its sends "
            "went out (p99). Clean: loss < 0.1% and p99 < 5 ms."
        )
        clean_levels = [lv for lv in media_levels if lv.clean]
        top = max(clean_levels, key=lambda lv: lv.calls) if clean_levels else None
        print(
            f"most concurrent calls clean: {top.calls} ({top.server_cpu_pct:.0f}% server CPU)"
            if top
            else "no media level was clean"
        )
        print(f"hung up at the end: {hung_up} of {media_levels[-1].calls}")
        ok = ok and top is not None and hung_up == media_levels[-1].calls
        summary["media"] = {
            "max_clean_calls": top.calls if top else None,
            "server_cpu_pct_at_max": round(top.server_cpu_pct, 1) if top else None,
            "hung_up": hung_up,
            "generator": media_levels[0].generator,
        }
    if args.py_spy:
        for path in sorted(args.py_spy.glob("*.txt"), key=lambda p: p.stat().st_mtime):
            print(f"\npy-spy of the server, {path.name} (% of samples on top, % in the stack):")
            for name, own, total in summarise_py_spy(path):
                print(f"  {own:5.1f} {total:5.1f}  {name}")
    if warnings:
        print(f"server log (tail):\n{warnings}")
    if exit_code not in (0, None):
        print(f"pbx serve exited with {exit_code}")

    report = {
        "benchmark": "calls",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sipp": sipp_version() if do_setup else None,
        },
        "settings": {
            "rates": rates if do_setup else None,
            "step_seconds": step_seconds,
            "levels": levels if do_media else None,
            "media_seconds": media_seconds,
            "ptime_ms": PTIME_MS,
            "record": args.record,
            "quick": args.quick,
        },
        "setup_steps": [{**asdict(s), "clean": s.clean} for s in setup_steps],
        "media_levels": [{**asdict(lv), "clean": lv.clean} for lv in media_levels],
        "summary": summary,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {output}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
