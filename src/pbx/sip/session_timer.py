"""Session timers (RFC 4028): negotiating a dialog's interval and refresher, sans I/O.

A session timer makes a dialog prove it is alive: one side (the refresher) sends a session
refresh (re-INVITE or UPDATE) every half interval, and the other may end the session when
none comes before the interval runs out. Header values go in, decisions come out; the
caller owns the clock and the sockets.

`refresher=uac`/`uas` in a Session-Expires name the roles in the transaction that carries
it, not in the dialog: every function here says which side of that transaction we are.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pbx.errors import RemoteProtocolError
from pbx.sip.message import Request, Response
from pbx.sip.uri import is_digits, param, split_params

__all__ = [
    "MIN_SE_FLOOR",
    "SESSION_INTERVAL_TOO_SMALL",
    "Refresher",
    "SessionExpires",
    "SessionTimer",
    "TooBrief",
    "negotiate_as_uas",
    "parse_min_se",
    "parse_session_expires",
    "request_headers",
    "response_headers",
    "retry_interval",
    "timer_from_response",
]

MIN_SE_FLOOR = 90
"""RFC 4028 §4: no Min-SE is below 90 seconds."""
SESSION_INTERVAL_TOO_SMALL = 422
"""RFC 4028 §6: the status that refuses too short an interval, with our Min-SE."""


class Refresher(StrEnum):
    UAC = "uac"
    UAS = "uas"


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """A Session-Expires value (RFC 4028 §4): delta-seconds and an optional refresher."""

    interval: int
    refresher: Refresher | None = None

    def __str__(self) -> str:
        if self.refresher is None:
            return str(self.interval)
        return f"{self.interval};refresher={self.refresher}"


@dataclass(frozen=True, slots=True)
class SessionTimer:
    """The timer one dialog agreed on: its interval and whether we send the refreshes."""

    interval: int
    we_refresh: bool

    @property
    def refresh_after(self) -> float:
        """RFC 4028 §10: the refresher refreshes at half the interval."""
        return self.interval / 2

    @property
    def expire_after(self) -> float:
        """RFC 4028 §10: the other side gives up a little before the interval ends."""
        return self.interval - min(32, self.interval / 3)


@dataclass(frozen=True, slots=True)
class TooBrief:
    """The request asked for a shorter interval than we accept: answer 422 with Min-SE."""

    min_se: int


def _delta_seconds(text: str, what: str) -> int:
    text = text.strip()
    if not is_digits(text) or len(text) > 10:
        raise RemoteProtocolError(f"bad {what} {text[:20]!r}")
    return int(text)


def parse_session_expires(value: str) -> SessionExpires:
    """Parse `1800;refresher=uac` (RFC 4028 §4); an unknown refresher value is an error."""
    delta, semi, rest = value.partition(";")
    interval = _delta_seconds(delta, "Session-Expires")
    refresher: Refresher | None = None
    if semi:
        raw = param(split_params(rest), "refresher")
        if raw is not None:
            try:
                refresher = Refresher(raw.lower())
            except ValueError:
                raise RemoteProtocolError(f"bad refresher {raw[:20]!r}") from None
    return SessionExpires(interval, refresher)


def parse_min_se(value: str) -> int:
    """Parse a Min-SE value (delta-seconds, parameters ignored)."""
    return _delta_seconds(value.partition(";")[0], "Min-SE")


def _supports_timer(message: Request | Response) -> bool:
    return any(v.lower() == "timer" for v in message.list_values("Supported"))


def negotiate_as_uas(
    request: Request, preferred: int, min_se: int
) -> SessionTimer | TooBrief | None:
    """The timer for a dialog whose INVITE/UPDATE `request` we answer (RFC 4028 §9).

    A Session-Expires below our `min_se` is refused (TooBrief). We may shorten a long one
    towards `preferred`, never below the request's Min-SE. The request's refresher is kept;
    if it names none, the phone refreshes when it supports timers and we do otherwise. A
    request without Session-Expires gets a timer only when the phone supports them (then
    with `preferred` and the phone as refresher); otherwise None: no timer. Raises
    RemoteProtocolError for unparseable headers.
    """
    supported = _supports_timer(request)
    value = request.header("Session-Expires")
    if value is None:
        return SessionTimer(preferred, we_refresh=False) if supported else None
    asked = parse_session_expires(value)
    floor = max(min_se, MIN_SE_FLOOR)
    if asked.interval < floor:
        return TooBrief(floor)
    their_min = request.header("Min-SE")
    lowest = max(floor, parse_min_se(their_min) if their_min is not None else 0)
    interval = min(asked.interval, max(preferred, lowest))
    refresher = asked.refresher or (Refresher.UAC if supported else Refresher.UAS)
    return SessionTimer(interval, we_refresh=refresher is Refresher.UAS)


def response_headers(timer: SessionTimer) -> list[tuple[str, str]]:
    """What our 2xx to the request `negotiate_as_uas` judged says (RFC 4028 §9)."""
    refresher = Refresher.UAS if timer.we_refresh else Refresher.UAC
    headers = [("Session-Expires", str(SessionExpires(timer.interval, refresher)))]
    if refresher is Refresher.UAC:
        headers.append(("Require", "timer"))  # the phone must know it is the refresher
    return headers


def request_headers(
    interval: int, min_se: int, current: SessionTimer | None = None
) -> list[tuple[str, str]]:
    """The headers of an INVITE/UPDATE we send (RFC 4028 §7.1, §7.4).

    In a new dialog (`current` None) we ask for `interval` and leave the refresher to the
    phone; in a refresh we keep the agreed interval and refresher.
    """
    se = SessionExpires(interval)
    if current is not None:
        refresher = Refresher.UAC if current.we_refresh else Refresher.UAS
        se = SessionExpires(current.interval, refresher)
    return [("Supported", "timer"), ("Session-Expires", str(se)), ("Min-SE", str(min_se))]


def timer_from_response(response: Response) -> SessionTimer | None:
    """The timer a 2xx to our INVITE/UPDATE agreed (RFC 4028 §7.2): none without a
    Session-Expires; we refresh unless it names the phone (`uas`) as the refresher.
    Raises RemoteProtocolError for an unparseable value."""
    value = response.header("Session-Expires")
    if value is None:
        return None
    se = parse_session_expires(value)
    return SessionTimer(se.interval, we_refresh=se.refresher is not Refresher.UAS)


def retry_interval(request: Request, response: Response) -> int | None:
    """After a 422 to our `request` (RFC 4028 §7.4): the larger interval to retry with, or
    None when the 422 gives no usable Min-SE above what we asked."""
    value = response.header("Min-SE")
    asked = request.header("Session-Expires")
    try:
        wanted = parse_min_se(value) if value is not None else None
        current = parse_session_expires(asked).interval if asked is not None else 0
    except RemoteProtocolError:
        return None
    if wanted is None or wanted <= current:
        return None
    return wanted
