"""Driver for test_baresip_hold_transfer.py: hold, resume and blind transfer between baresips.

Run as root inside private network and PID namespaces made by the test:

    unshare -n -p -f --kill-child python -m tests.interop.netns_hold_transfer DIR

The same set-up as netns_call.py (pbx and the phones on 10.77.0.1, a veth address only that
namespace has) with three phones: 1001 (440 Hz) calls 1002 (1000 Hz, auto-answer) and keys
4 and 2 (RFC 4733); 1002 holds, resumes, then transfers the call blind (REFER) to 1003
(1700 Hz, auto-answer); 1001 hangs up.
`pbx events --json` runs alongside; its lines, the recordings and the CDRs (or an error with
logs) go to DIR/result.json.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tests.interop.netns_call import (
    HOST,
    SIP_PORT,
    Scenario,
    collect,
    network,
    phone,
    register,
    run,
)
from tests.support.baresip import Baresip
from tests.support.pbxproc import PYTHON, PbxProcess

TALK_SECONDS = 2.0
TONES = {"1001": 440.0, "1002": 1000.0, "1003": 1700.0}
PORTS = {"1001": (5071, 4444), "1002": (5081, 4454), "1003": (5091, 4464)}  # SIP, ctrl_tcp


def rtp_low(sip_port: int) -> int:
    """The first of a phone's ten RTP ports, as tests/support/baresip.py gives them."""
    return 40000 + (sip_port % 1000) * 10


class Tap:
    """Every UDP datagram on `lo` (where all traffic to 10.77.0.1 goes), kept with its time.

    baresip stops its own recording of received audio when a re-INVITE restarts its player
    (seen at hold), so what 1001 hears after the transfer is taken from the RTP that reaches
    its port; the SIP messages help explain a failure.
    """

    def __init__(self) -> None:
        self.packets: list[tuple[float, int, int, bytes]] = []
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                frame, address = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows every datagram twice
            ip = frame[14:]
            if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            header = (ip[0] & 0x0F) * 4
            sport, dport = struct.unpack("!HH", ip[header : header + 4])
            self.packets.append((time.time(), sport, dport, ip[header + 8 :]))

    def stop(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()

    def sip(self) -> list[str]:
        return [
            f"{t:.6f} {sport}->{dport}\n{data.decode(errors='replace')}"
            for t, sport, dport, data in self.packets
            if SIP_PORT in (sport, dport)
        ]

    def flows(self) -> list[str]:
        """RTP flows through pbx's ports: source -> destination, packets, first and last."""
        seen: dict[tuple[int, int], list[float]] = {}
        for t, sport, dport, data in self.packets:
            pbx_port = 30000 <= sport < 31000 or 30000 <= dport < 31000
            rtp = len(data) > 12 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223
            if pbx_port and rtp:
                seen.setdefault((sport, dport), []).append(t)
        return [
            f"{sport}->{dport}: {len(times)} packets {times[0]:.6f}..{times[-1]:.6f}"
            for (sport, dport), times in sorted(seen.items(), key=lambda item: item[1][0])
        ]

    def rtp_to(self, ports: range, path: Path) -> Path:
        """The PCMU audio of the RTP datagrams sent to `ports`, in arrival order, as a WAV."""
        payload = b"".join(
            data[12 + 4 * (data[0] & 0x0F) :]
            for _, _, dport, data in self.packets
            if dport in ports and len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0
        )
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(ulaw_decode(payload).astype("<i2").tobytes())
        return path


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 mu-law to 16-bit linear (ITU-T G.711)."""
    u = ~np.frombuffer(data, dtype=np.uint8)
    exponent = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F).astype(np.int32) << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


class EventLog:
    """`pbx events --json` in the background, its lines collected as they come."""

    def __init__(self, config: Path) -> None:
        self.events: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "pbx", "-c", str(config), "events", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue

    def wait(self, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The first event whose fields include `fields`, arriving within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if all(event.get(k) == v for k, v in fields.items()):
                    return event
            time.sleep(0.05)
        raise TimeoutError(f"no event {fields} within {timeout} s (seen: {self.events})")

    def confirm(self, again: Callable[[], object], tries: int = 5, **fields: Any) -> None:
        """Wait for an event with `fields`, calling `again` (which makes pbx publish one
        anew) whenever none comes within 2 s. The follower takes a moment to start and
        subscribe, and pbx replays nothing it missed: once this returns, it is following."""
        for _ in range(tries):
            with contextlib.suppress(TimeoutError):
                self.wait(timeout=2, **fields)
                return
            again()
        raise AssertionError(f"`pbx events` never reported {fields} ({tries} tries)")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)


def reregister(p: Baresip) -> None:
    """Delete `p`'s user agent (it unregisters) and create it again (it registers)."""
    assert p.ctrl is not None
    p.ctrl.cmd("uadel", p.account.partition(">")[0].lstrip("<"))
    p.add_account()
    event = p.ctrl.wait_event("REGISTER_OK", "REGISTER_FAIL", timeout=10)
    assert event["type"] == "REGISTER_OK", event


def registered(phones: list[Baresip], events: EventLog) -> None:
    """Start and register `phones`, then make sure `events` is following: register the
    first phone again until the follower reports a registration."""
    register(phones)
    events.confirm(lambda: reregister(phones[0]), type="registration")


Calls = Callable[[Path, dict[str, Any], list[Baresip], PbxProcess, "EventLog"], None]


def tapped(calls: Calls, users: Iterable[str], first_port: int) -> Scenario:
    """A scenario: the network, pbx with `users` (password pw + user), `pbx events`
    followed, and every datagram on `lo` tapped while `calls` runs; the audio that reached
    the phone whose RTP ports start at `first_port` is kept as tap-1001.wav."""

    def scenario(
        work: Path, result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess
    ) -> None:
        network()
        tap = Tap()
        try:
            for user in users:
                pbx.add_user(user, f"pw{user}")
            pbx.start()
            events = EventLog(pbx.config)
            try:
                calls(work, result, phones, pbx, events)
            finally:
                events.stop()
                result["events"] = events.events
        finally:
            tap.stop()
            result["sip"] = tap.sip()
            result["rtp_flows"] = tap.flows()
            ports = range(first_port, first_port + 10)
            result["tapped"] = {"1001": str(tap.rtp_to(ports, work / "tap-1001.wav"))}

    return scenario


def _calls(
    work: Path, result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess, events: EventLog
) -> None:
    for user, hz in TONES.items():
        sip_port, ctrl_port = PORTS[user]
        phones.append(
            phone(work, user, sip_port, ctrl_port, hz, "manual" if user == "1001" else "auto")
        )
    a, b, c = phones
    # The events client must be subscribed before anything worth seeing happens.
    registered(phones, events)
    assert a.ctrl is not None and b.ctrl is not None and c.ctrl is not None
    a.ctrl.cmd("dial", f"sip:1002@{HOST}")
    for p in (a, b):
        assert p.ctrl is not None
        p.ctrl.wait_event("CALL_ESTABLISHED", timeout=10)
    events.wait(type="call_answered")
    time.sleep(TALK_SECONDS)
    for key in "42":  # RFC 4733: press, hold a moment, release
        a.ctrl.cmd("sndcode", key)
        time.sleep(0.15)
        a.ctrl.cmd("sndcode", "\x00")
        time.sleep(0.15)
    events.wait(type="dtmf", digit="2")

    b.ctrl.cmd("hold")
    events.wait(type="call_held", held=True)
    time.sleep(0.5)
    b.ctrl.cmd("resume")
    events.wait(type="call_held", held=False)
    time.sleep(0.5)

    b.ctrl.cmd("transfer", f"sip:1003@{HOST}")
    c.ctrl.wait_event("CALL_ESTABLISHED", timeout=10)
    events.wait(type="call_transferred")
    b.ctrl.wait_event("CALL_CLOSED", timeout=10)
    result["transferred_at"] = time.time()
    time.sleep(TALK_SECONDS)

    a.ctrl.cmd("hangup")
    for p in (a, c):
        assert p.ctrl is not None
        p.ctrl.wait_event("CALL_CLOSED", timeout=10)
    events.wait(type="call_ended")
    for p in phones:
        p.stop()
    collect(result, phones, pbx)


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), tapped(_calls, TONES, rtp_low(PORTS["1001"][0]))))
