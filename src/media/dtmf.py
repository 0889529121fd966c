"""DTMF: RFC 4733 telephone-events received from RTP and sent, SIP INFO bodies, and
in-band tones detected (ITU-T Q.24) and generated. Pure: no sockets, no clock (the caller
gives `now`).

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
from collections.abc import Sequence
from dataclasses import dataclass
from struct import Struct

import numpy as np
import numpy.typing as npt

__all__ = [
    "DIGITS",
    "Digit",
    "EventPacket",
    "InbandDetector",
    "TelephoneEventReceiver",
    "digit_from_info",
    "dtmf_samples",
    "event_packets",
    "feed_many",
]

DIGITS = "0123456789*#ABCD"
"""RFC 4733 §3.2 events 0-15; event 16 (flash) is reported as "!"."""
FLASH = 16
_EVENT = Struct("!BBH")
_HEADER = Struct("!BBHI")
_SEGMENT = 0xFFFF  # the most an event's 16-bit duration holds: a segment (RFC 4733 §2.5.1.3)
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
            # The next segment starts where this one ended: at 0xFFFF, also when the report
            # saying so was lost.
            ends = (current.timestamp + current.duration, current.timestamp + _SEGMENT)
            contiguous = timestamp in {end & 0xFFFFFFFF for end in ends}
            if current.code == code and contiguous:
                # The next segment of a long press (§2.5.1.3), as long as its timestamp says.
                current.before += (timestamp - current.timestamp) & 0xFFFFFFFF
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
        plain = duration.isascii() and duration.isdigit() and len(duration) < 7
        seconds = int(duration) / 1000 if plain else 0.0
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


# --- in-band: detection (ITU-T Q.24) and generation --------------------------------------

ROWS = (697.0, 770.0, 852.0, 941.0)
COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")
RATE = 8000
FRAME = 160
HOP = 80  # a decision every 10 ms
WINDOW = 106  # 13.25 ms: the Goertzel window
LAG = 53  # the second window's offset, for measuring each tone's frequency
LONG = 240  # 30 ms: the window over which a candidate's two tones must hold still
HISTORY = max(WINDOW + LAG, LONG)

_FREQUENCIES = np.array(ROWS + COLUMNS)
_NOMINAL_TURN = 2 * np.pi * _FREQUENCIES * LAG / RATE
# Q.24 (and spandsp's defaults): operate within +-1.5% of the nominal frequency and not
# beyond +-3.5%: the line is drawn halfway. Normal twist (high group weaker) up to 8 dB,
# reverse twist up to 4 dB; each tone at least -30 dBm0; the two tones at least 60% of all
# the energy in the window, each 6 dB above the others of its group.
MAX_DEVIATION = 0.025
ACCEPTED_DEVIATION = 0.015
# A decision that found a key: the key, and the share of the last 30 ms its two tones hold
# (None: not measured, as the run of this key is already steady).
Hop = tuple[str, float | None]
NORMAL_TWIST_DB, REVERSE_TWIST_DB = 8.0, 4.0
MIN_LEVEL_DBM0 = -30.0
MIN_SHARE = 0.75
PEAK_RATIO = 4.0
MIN_HOPS = 3  # tone present this many decisions in a row: a 40 ms tone is, a 23 ms one not
END_HOPS = 3  # absent this many in a row ends the digit (a 10 ms drop-out does not)
# A key's tones are steady; speech that looks like them for 13 ms glides (formants move).
# One decision of a run must find the tones, at the frequencies measured, holding this share
# of the energy of the last 30 ms.
HELD_SHARE = 0.93
_PEAK_0DBM0 = 32767 * 10 ** (-3.14 / 20)
_MIN_POWER = (_PEAK_0DBM0 * 10 ** (MIN_LEVEL_DBM0 / 20)) ** 2 / 2
_TWIST_LOW = 10 ** (-NORMAL_TWIST_DB / 10)
_TWIST_HIGH = 10 ** (REVERSE_TWIST_DB / 10)

# The two decisions of a 20 ms frame end 10 and 20 ms into it; each looks at two windows
# (early, LAG before the late one). Every window lies in the signal's last _SPAN samples,
# and one matrix product of those gives all eight tones of all four windows: the basis,
# laid out as (window, hop, tone) with a real and an imaginary column each, is zero outside
# its window, and scaled so that a tone's squared magnitude is its mean square. (A product
# with zeros costs less than gathering the windows: numpy's overhead is in the calls.)
_ENDS = HISTORY + HOP * np.arange(1, FRAME // HOP + 1)
_SPAN = WINDOW + LAG + HOP * (len(_ENDS) - 1)
_SPAN_START = HISTORY + FRAME - _SPAN


def _window_basis() -> npt.NDArray[np.float32]:
    basis = np.zeros((_SPAN, 2, len(_ENDS), len(_FREQUENCIES), 2))
    turns = 2 * np.pi * np.outer(np.arange(WINDOW), _FREQUENCIES) / RATE
    scale = np.sqrt(2) / WINDOW
    for hop, end in enumerate(_ENDS - _SPAN_START):
        for kind, start in enumerate((end - LAG - WINDOW, end - WINDOW)):
            basis[start : start + WINDOW, kind, hop, :, 0] = scale * np.cos(turns)
            basis[start : start + WINDOW, kind, hop, :, 1] = -scale * np.sin(turns)
    return basis.reshape(_SPAN, -1).astype(np.float32)


_WINDOW_BASIS = _window_basis()
# The late windows' mean squares, as a product of the squared signal.
_LATE_TAIL = WINDOW + HOP * (len(_ENDS) - 1)
_LATE_MEANS = np.zeros((_LATE_TAIL, len(_ENDS)), dtype=np.float32)
for _hop, _end in enumerate(_ENDS - (HISTORY + FRAME - _LATE_TAIL)):
    _LATE_MEANS[_end - WINDOW : _end, _hop] = 1 / WINDOW
_LONG_INDEX = np.stack([np.arange(e - LONG, e) for e in _ENDS])


class InbandDetector:
    """DTMF tones in one stream of 8 kHz audio, 20 ms at a time (`feed`), or many streams
    in one numpy pass (`feed_many`). Digits are reported when they end, like RFC 4733's."""

    def __init__(self) -> None:
        self._tail = np.zeros(HISTORY, dtype=np.float32)
        self._samples = 0  # samples seen, for the digits' timestamps
        self._current: str | None = None
        self._candidate: Hop | None = None
        self._run = 0
        self._steady = False  # a decision of the run found the tones held for 30 ms
        self._absent = 0
        self._started = 0
        self._last_seen = 0

    def feed(self, frame: npt.ArrayLike) -> list[Digit]:
        return feed_many([self], np.asarray(frame, dtype=np.int16).reshape(1, FRAME))[0]

    def _decide(self, decisions: list[Hop | None]) -> list[Digit]:
        idle = self._current is None and self._candidate is None
        if idle and all(d is None for d in decisions):  # the usual case: no key at all
            self._samples += HOP * len(decisions)
            return []
        out: list[Digit] = []
        for hop in decisions:
            self._samples += HOP
            if hop is not None:
                digit = hop[0]
                previous = self._candidate
                if previous is None or previous[0] != digit:
                    self._run, self._steady = 0, False
                self._run += 1
                self._steady = self._steady or (hop[1] is not None and hop[1] >= HELD_SHARE)
                self._candidate, self._absent = hop, 0
                if self._run >= MIN_HOPS and self._steady and digit != self._current:
                    if self._current is not None:
                        out.append(self._finish())
                    self._current = digit
                    self._started = self._samples - HOP - HISTORY
                if digit == self._current:
                    self._last_seen = self._samples
                continue
            self._candidate, self._run, self._steady = None, 0, False
            self._absent += 1
            if self._current is not None and self._absent >= END_HOPS:
                out.append(self._finish())
        return out

    def _finish(self) -> Digit:
        assert self._current is not None
        digit, self._current = self._current, None
        samples = self._last_seen - self._started
        return Digit(digit, samples / RATE, self._started & 0xFFFFFFFF)


# Each group's four frequencies (rows, then columns); a tone's measured turn between the two
# windows, less this, gives its offset from nominal (in radians, then times _OFFSET_SCALE
# a fraction of the frequency).
_GROUPS = np.arange(2)
_GROUP_FREQUENCIES = _FREQUENCIES.reshape(2, 4)
_TURN_ORIGIN = (_NOMINAL_TURN - np.pi).reshape(2, 4)
_OFFSET_SCALE = (RATE / (2 * np.pi * LAG * _FREQUENCIES)).reshape(2, 4)
_TONES = np.arange(4)
# A rectangular window loses power to a tone off its bin: sinc(offset * frequency * W / R)**2.
_SINC_SCALE = _GROUP_FREQUENCIES * WINDOW / RATE
# The most that restoring can multiply a tone's power by: the loss at 1.5% off, highest for
# the highest frequency.
_MOST_RESTORED = float(1 / np.sinc(ACCEPTED_DEVIATION * _FREQUENCIES.max() * WINDOW / RATE) ** 2)
# The pre-check's bounds, a hair below the full test's: its float64 (Python) or float32
# arithmetic must never reject a decision the full test, in float32, would accept.
_SLACK = 1 - 1e-5
_LEAST_POWER = _MIN_POWER * _SLACK
_LEAST_SHARE = MIN_SHARE / _MOST_RESTORED * _SLACK
# The held test's phasors over 30 ms as (fine) x (coarse): e^-iwn for n = 16b + a is
# e^-iwa * e^-iw16b, so 31 complex exponentials a tone, not 240.
_FINE = 16
assert LONG % _FINE == 0
_PHASOR_TIMES = np.concatenate([np.arange(_FINE), _FINE * np.arange(LONG // _FINE)]) / RATE


def _held_shares(
    signal: npt.NDArray[np.float32], streams: npt.NDArray[np.intp], at: npt.NDArray[np.intp],
    tones: npt.NDArray[np.intp], offset: npt.NDArray[np.float64],
) -> list[float]:  # fmt: skip
    """Where a key seems to be (stream, decision, each group's tone and its measured
    offset): the share of the last 30 ms its two tones hold at their measured frequencies.
    A key's tones hold all the energy there; speech that looked like them for 13 ms has
    moved on."""
    long = signal[streams[:, None], _LONG_INDEX[at]]  # (candidates, LONG)
    measured = _GROUP_FREQUENCIES[_GROUPS, tones] * (1 + offset)
    phasors = np.exp(-2j * np.pi * measured[..., None] * _PHASOR_TIMES)  # (c, group, 31)
    fine, coarse = phasors[..., :_FINE], phasors[..., _FINE:]
    blocks = long.reshape(len(long), -1, _FINE)  # (candidates, LONG / 16, 16)
    held = np.einsum("cbk,ckb->ck", blocks @ fine.transpose(0, 2, 1), coarse)
    held_power = 2 * (held.real**2 + held.imag**2).sum(-1) / LONG**2
    energy = np.einsum("cn,cn->c", long, long) / LONG
    shares: list[float] = (held_power / np.maximum(energy, 1e-9)).tolist()
    return shares


def _maybe_keys(strongest: npt.NDArray[np.float32], total: npt.NDArray[np.float32]) -> bool:
    """Whether any decision passes what every key needs at the least: a strong enough tone
    in each group, the two holding most of the energy even at the most restored. Few
    decisions are tested in Python: numpy's seven calls cost 4 us, the loop 1 us."""
    if strongest.size <= 16:
        return any(
            min(low, high) >= _LEAST_POWER and low + high >= _LEAST_SHARE * energy
            for hops, energies in zip(strongest.tolist(), total.tolist(), strict=True)
            for (low, high), energy in zip(hops, energies, strict=True)
        )
    return bool(
        (
            (strongest.min(axis=-1) >= _LEAST_POWER)
            & (strongest.sum(axis=-1) >= _LEAST_SHARE * total)
        ).any()
    )


def feed_many(
    detectors: Sequence[InbandDetector], frames: npt.NDArray[np.int16]
) -> list[list[Digit]]:
    """One 20 ms frame for each detector (row i of `frames` for detectors[i]), all in one
    numpy pass; the digits each one finished."""
    if len(detectors) == 0:
        return []
    tails = [d._tail for d in detectors]
    signal = np.concatenate([tails, frames], axis=1, dtype=np.float32)
    for detector, row in zip(detectors, signal, strict=True):
        detector._tail = row[-HISTORY:]  # a view: signal is never written to
    spectra = (signal[:, _SPAN_START:] @ _WINDOW_BASIS).view(np.complex64)
    spectra = spectra.reshape(len(detectors), 2, len(_ENDS), len(_FREQUENCIES))
    early, late = spectra[:, 0], spectra[:, 1]  # (streams, hops, 8)
    power = np.square(late.real) + np.square(late.imag)  # mean square of each tone
    total = np.square(signal[:, -_LATE_TAIL:]) @ _LATE_MEANS  # (streams, hops)
    grouped = power.reshape(*power.shape[:2], 2, 4)  # (streams, hops, group, tone)
    # Most frames, speech or silence, fail what every key needs at the least, and the rest
    # of the tests are not worth their ~50 numpy calls.
    strongest = grouped.max(axis=-1)
    if not _maybe_keys(strongest, total):
        return [detector._decide([None] * power.shape[1]) for detector in detectors]
    # Each group's strongest tone and the one after it; the strongest's frequency offset,
    # measured from how far its phase turned between the two windows. (Masks and fancy
    # indexing: np.take_along_axis costs ~8 us a call on arrays this small.)
    second = np.sort(grouped, axis=-1)[..., 2]
    tone = grouped.argmax(axis=-1)  # (streams, hops, group)
    is_top = tone[..., None] == _TONES
    turn = np.angle(late * np.conj(early)).reshape(grouped.shape)
    offset = (((turn - _TURN_ORIGIN) % (2 * np.pi) - np.pi) * _OFFSET_SCALE * is_top).sum(-1)
    deviation = np.abs(offset)
    # Each tone's power with the window's loss for its offset added back, counted for
    # offsets up to the accepted 1.5%: an accepted tone is judged as if on frequency.
    sinc = np.sinc(np.minimum(deviation, ACCEPTED_DEVIATION) * _SINC_SCALE[_GROUPS, tone])
    twist = strongest[..., 1] / np.maximum(strongest[..., 0], 1e-9)  # high group over low
    present = (
        (strongest >= np.maximum(_MIN_POWER, PEAK_RATIO * second)).all(-1)
        & (deviation <= MAX_DEVIATION).all(-1)
        & (twist >= _TWIST_LOW)
        & (twist <= _TWIST_HIGH)
        & ((strongest / sinc**2).sum(-1) >= MIN_SHARE * total)
    )
    hops = present.shape[1]
    idle: list[Hop | None] = [None] * hops
    streams, at = np.nonzero(present)
    if not len(streams):
        return [detector._decide(idle) for detector in detectors]
    tones = tone[streams, at]  # (candidates, group)
    candidates = [
        (i, h, KEYPAD[row][col])
        for i, h, (row, col) in zip(streams.tolist(), at.tolist(), tones.tolist(), strict=True)
    ]
    # A run already steady needs no held test (`_decide` keeps `_steady` while the same key
    # goes on), so a long press costs its first 30 ms of held tests, not one every 10 ms.
    known: list[bool] = []
    for n, (i, h, key) in enumerate(candidates):
        if h == 0:
            before = detectors[i]._candidate
            known.append(detectors[i]._steady and before is not None and before[0] == key)
        else:
            known.append(n > 0 and candidates[n - 1] == (i, h - 1, key) and known[n - 1])
    held_share: list[float | None] = [None] * len(candidates)
    measuring = [n for n, steady in enumerate(known) if not steady]
    if measuring:
        shares = _held_shares(signal, streams[measuring], at[measuring], tones[measuring],
                              offset[streams[measuring], at[measuring]])  # fmt: skip
        for n, share in zip(measuring, shares, strict=True):
            held_share[n] = share
    found: dict[int, list[Hop | None]] = {}
    for n, (i, h, key) in enumerate(candidates):
        found.setdefault(i, [None] * hops)[h] = (key, held_share[n])
    return [detector._decide(found.get(i, idle)) for i, detector in enumerate(detectors)]


_TONE_PEAK_LOW = _PEAK_0DBM0 * 10 ** (-8 / 20)  # -8 dBm0 low group
_TONE_PEAK_HIGH = _PEAK_0DBM0 * 10 ** (-6 / 20)  # -6 dBm0 high group (2 dB pre-twist)


def dtmf_samples(digits: str, tone_ms: int = 100, pause_ms: int = 100) -> npt.NDArray[np.int16]:
    """In-band DTMF for `digits` (0-9 * # A-D): each tone then a pause, 8 kHz."""
    parts = []
    pause = np.zeros(pause_ms * RATE // 1000, dtype=np.float64)
    t = np.arange(tone_ms * RATE // 1000) / RATE
    for digit in digits.upper():
        row = next((i for i, keys in enumerate(KEYPAD) if digit in keys), None)
        if row is None:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        col = KEYPAD[row].index(digit)
        tone = _TONE_PEAK_LOW * np.sin(2 * np.pi * ROWS[row] * t)
        tone += _TONE_PEAK_HIGH * np.sin(2 * np.pi * COLUMNS[col] * t)
        parts += [tone, pause]
    joined = np.concatenate(parts) if parts else np.zeros(0)
    return np.round(joined).astype(np.int16)


# --- RFC 4733: sending ---------------------------------------------------------------

EVENT_CODES = {d: i for i, d in enumerate(DIGITS)}


MAX_PRESS = 20.0
"""Seconds: a longer key press is sent as this long (a SIP INFO may say anything; the
audio relayed to the phone pauses while its events are sent)."""


@dataclass(frozen=True, slots=True)
class EventPacket:
    """One RTP packet of a telephone-event: its payload and RTP header flags."""

    payload: bytes
    marker: bool
    end: bool
    offset: int = 0
    """Its RTP timestamp after the event's: 0, but for the later segments of a press of
    more than 0xFFFF ticks (8.2 s at 8 kHz), which each start where the one before ended."""


def event_packets(
    digit: str, duration: float = 0.1, volume: int = 10, clock_rate: int = 8000,
    interval: float = 0.02,
) -> list[EventPacket]:  # fmt: skip
    """The packets of one key press (RFC 4733 §2.5.1): the first with the marker bit, one
    every `interval` with the growing duration, the last three with the E bit and the final
    duration (redundancy against loss). All carry the event's start timestamp, but for a
    press longer than a 16-bit duration holds: it goes on in segments (§2.5.1.3), each
    timestamped where the one before ended (`offset`), and at most `MAX_PRESS` long."""
    code = EVENT_CODES.get(digit.upper())
    if code is None:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    step = round(interval * clock_rate)
    total = max(step, round(min(duration, MAX_PRESS) * clock_rate))

    def packet(elapsed: int, end: bool, marker: bool) -> EventPacket:
        offset = (elapsed - 1) // _SEGMENT * _SEGMENT
        if offset and elapsed - offset < step:
            # The first report past a segment's end closes it at 0xFFFF: a receiver joins
            # the next segment on where this one ends (the next report covers the rest).
            offset -= _SEGMENT
        duration = min(elapsed - offset, _SEGMENT)
        flags = (0x80 if end else 0) | (volume & 0x3F)
        return EventPacket(_EVENT.pack(code, flags, duration), marker, end, offset)

    packets = [packet(elapsed, False, elapsed == step) for elapsed in range(step, total, step)]
    packets += [packet(total, True, not packets and i == 0) for i in range(3)]
    return packets
