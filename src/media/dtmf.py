"""DTMF: RFC 4733 telephone-events received from RTP, and SIP INFO bodies. Pure: no
sockets, no clock (the caller gives `now`).

An RFC 4733 event is a run of packets with one RTP timestamp (the event's start) and a
growing duration; the last three carry the E (end) bit. `TelephoneEventReceiver` turns
such runs into one `Digit` each, reported when the event ends, with its length: the
redundant end packets and retransmissions are not reported again, an event whose end
packets were all lost ends when the next one starts or after `end_timeout` without a
packet, and a long press sent as several segments (§2.5.1.3: a new timestamp each time
the 16-bit duration would overflow) is one digit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from struct import Struct

__all__ = [
    "DIGITS",
    "Digit",
    "TelephoneEventReceiver",
    "digit_from_info",
]

DIGITS = "0123456789*#ABCD"
"""RFC 4733 §3.2 events 0-15; event 16 (flash) is reported as "!"."""
FLASH = 16
_EVENT = Struct("!BBH")
_HEADER = Struct("!BBHI")
END_TIMEOUT = 0.3
"""Seconds without a packet after which an event whose end packets were lost is over.
Senders refresh an event every packetization interval (typically 50 ms)."""


@dataclass(frozen=True, slots=True)
class Digit:
    digit: str
    duration: float
    """Seconds the key was held, as the sender measured it (the event's duration)."""
    timestamp: int
    """RTP timestamp of the event's start: with the source, what makes it unique."""


@dataclass(slots=True)
class _Event:
    code: int
    timestamp: int  # of the current segment
    started: int  # timestamp of the first segment
    duration: int  # ticks of the current segment
    before: int  # ticks of the earlier segments of a long press
    seen: float


def _symbol(code: int) -> str:
    return DIGITS[code] if code < len(DIGITS) else "!"


class TelephoneEventReceiver:
    """RFC 4733 §2.5.2: one receiver per RTP stream of telephone-events."""

    def __init__(self, clock_rate: int = 8000, end_timeout: float = END_TIMEOUT) -> None:
        self._rate, self._timeout = clock_rate, end_timeout
        self._current: _Event | None = None
        self._ended: deque[int] = deque(maxlen=8)  # timestamps of events reported

    def on_packet(self, packet: bytes, now: float) -> list[Digit]:
        """Take one RTP packet (header included) of the telephone-event payload type."""
        if len(packet) < 16 or packet[0] >> 6 != 2:
            return []
        b0 = packet[0]
        start = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:  # header extension
            if len(packet) < start + 4:
                return []
            start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
        if len(packet) < start + 4:
            return []
        timestamp = _HEADER.unpack_from(packet)[3]
        code, flags, duration = _EVENT.unpack_from(packet, start)
        return self.on_event(code, bool(flags & 0x80), duration, timestamp, now)

    def on_event(
        self, code: int, end: bool, duration: int, timestamp: int, now: float
    ) -> list[Digit]:
        """One event report: its code, E bit, duration (ticks) and RTP timestamp."""
        if code > FLASH or timestamp in self._ended:
            return []  # not a DTMF event, or the redundant end of one already reported
        out: list[Digit] = []
        current = self._current
        if current is not None and current.timestamp != timestamp:
            contiguous = (current.timestamp + current.duration) & 0xFFFFFFFF == timestamp
            if current.code == code and contiguous:
                # The next segment of a long press (§2.5.1.3).
                current.before += current.duration
                current.timestamp, current.duration = timestamp, 0
            else:
                out.append(self._finish(current))  # its end packets were lost
                current = None
        if current is None:
            current = self._current = _Event(code, timestamp, timestamp, duration, 0, now)
        current.duration = max(current.duration, duration)
        current.seen = now
        if end:
            out.append(self._finish(current))
        return out

    def next_timer(self) -> float | None:
        current = self._current
        return None if current is None else current.seen + self._timeout

    def on_timer(self, now: float) -> list[Digit]:
        """An event that stopped without its end packets is over after `end_timeout`."""
        at = self.next_timer()
        if at is None or now < at or self._current is None:
            return []
        return [self._finish(self._current)]

    def _finish(self, event: _Event) -> Digit:
        self._current = None
        self._ended.append(event.timestamp)
        if event.started != event.timestamp:
            self._ended.append(event.started)
        ticks = event.before + event.duration
        return Digit(_symbol(event.code), ticks / self._rate, event.started)


def digit_from_info(content_type: str, body: bytes) -> tuple[str, float] | None:
    """The digit (and duration in seconds, 0.0 if not given) of a SIP INFO body:
    application/dtmf-relay ("Signal=5\\r\\nDuration=160", the Cisco form desk phones use)
    or application/dtmf (the digit alone). None for anything else."""
    kind = content_type.partition(";")[0].strip().lower()
    text = body.decode("utf-8", "replace")
    if kind == "application/dtmf-relay":
        fields: dict[str, str] = {}
        for line in text.splitlines():
            name, _, value = line.partition("=")
            fields[name.strip().lower()] = value.strip()
        signal, duration = fields.get("signal", ""), fields.get("duration", "")
        seconds = int(duration) / 1000 if duration.isdigit() and len(duration) < 7 else 0.0
    elif kind == "application/dtmf":
        signal, seconds = text.strip(), 0.0
    else:
        return None
    signal = signal.upper()
    if signal == "10":
        signal = "*"
    elif signal == "11":
        signal = "#"
    elif signal == "16":
        signal = "!"
    if len(signal) != 1 or signal not in DIGITS + "!":
        return None
    return signal, seconds
