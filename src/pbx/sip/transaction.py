"""SIP transaction state machines (RFC 3261 §17, corrected by RFC 6026).

Four sans-I/O machines: `InviteClient` (§17.1.1), `NonInviteClient` (§17.1.2),
`InviteServer` (§17.2.1) and `NonInviteServer` (§17.2.2). None of them opens a socket or
reads a clock: each event carries `now`, each call returns a list of actions, and
`next_timer()` says when `on_timer(now)` wants to be called next.

The machines see messages only as opaque bytes plus the status code the caller already
parsed, so this layer never parses. Matching a message to its transaction (§17.1.3,
§17.2.3) and building the ACK for a non-2xx final response (§17.1.1.3) are the caller's
job, because both need the parsed headers.

Two kinds of input, two error policies:

* Events from the network (`on_response`, `on_request`, `on_ack`) never raise because of
  the state: UDP duplicates, reorders and delays anything, so a message arriving "late"
  is normal and is absorbed (an empty action list).
* Calls only our own transaction user makes (`start`, `send_response`) and malformed
  arguments (a status outside 100-699, a missing ACK) raise `LocalProtocolError`: they
  are bugs in pbx, and silently dropping them would hide the bug.

A timer whose RFC length is zero on a reliable transport (D, I, J, K) does not arm a
zero-second timer: the machine goes to TERMINATED in the same call, which is what a
zero-length wait means and saves the shell a pointless trip through its event loop.
Every path into TERMINATED emits exactly one `Terminated()`, always as the last action.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from pbx.errors import LocalProtocolError

__all__ = [
    "Action",
    "Deliver",
    "InviteClient",
    "InviteServer",
    "NonInviteClient",
    "NonInviteServer",
    "Send",
    "State",
    "Terminated",
    "TimedOut",
    "Timers",
]


@dataclass(frozen=True, slots=True)
class Timers:
    """Timer values in seconds (RFC 3261 §17.1.1.1 and Table 4); passed in, never global."""

    t1: float = 0.5
    """Round-trip time estimate; the first retransmission interval."""
    t2: float = 4.0
    """Cap on the retransmission interval for non-INVITE requests and INVITE responses."""
    t4: float = 5.0
    """Longest time a message can stay in the network; Timers I and K."""
    timer_d: float = 32.0
    """Timer D over unreliable transports: "at least 32 s" (§17.1.1.2), not a multiple of T1."""

    @property
    def timer_b(self) -> float:
        """INVITE client timeout (§17.1.1.2)."""
        return 64 * self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE client timeout (§17.1.2.2)."""
        return 64 * self.t1

    @property
    def timer_h(self) -> float:
        """INVITE server wait for the ACK of a non-2xx final response (§17.2.1)."""
        return 64 * self.t1

    @property
    def timer_j(self) -> float:
        """Non-INVITE server wait for request retransmissions, unreliable only (§17.2.2)."""
        return 64 * self.t1

    @property
    def timer_l(self) -> float:
        """INVITE server linger in Accepted (RFC 6026 §7.1)."""
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        """INVITE client linger in Accepted (RFC 6026 §7.2)."""
        return 64 * self.t1


@dataclass(frozen=True, slots=True)
class Send:
    """Action: pass these bytes to the transport (a first send or a retransmission)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Action: hand the response just given to `on_response` up to the TU."""

    status: int


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Action: Timer B, F or H fired; tell the TU the transaction failed (408 for clients)."""


@dataclass(frozen=True, slots=True)
class Terminated:
    """Action: the transaction reached TERMINATED; the caller may forget it."""


Action = Send | Deliver | TimedOut | Terminated


class State(Enum):
    """Transaction states of RFC 3261 Figures 5-8 plus Accepted from RFC 6026 §7.1-7.2."""

    CALLING = auto()
    TRYING = auto()
    PROCEEDING = auto()
    COMPLETED = auto()
    CONFIRMED = auto()
    ACCEPTED = auto()
    TERMINATED = auto()


def _check_status(status: int) -> None:
    # The parser rejects other codes as a RemoteProtocolError; one reaching this layer
    # means the caller skipped that check.
    if not 100 <= status <= 699:
        raise LocalProtocolError(f"status {status} is outside 100-699")


class _Transaction:
    """Timer bookkeeping shared by the four machines.

    At most two timers run at once: `_retransmit_at` (A, E or G) and `_deadline`, the one
    that ends the current state (B, D, F, H, I, J, K, L or M). The deadline always wins a
    tie, so a retransmission is never sent at the instant the transaction gives up.
    """

    def __init__(self, state: State, timers: Timers, reliable: bool) -> None:
        self.state = state
        self.timers = timers
        self.reliable = reliable
        self._interval = timers.t1
        self._retransmit_at: float | None = None
        self._deadline: float | None = None

    def next_timer(self) -> float | None:
        """When `on_timer` should next be called, or None if no timer is running.

        None means TERMINATED, or a state that waits for an event with no timer of its
        own: an INVITE client in PROCEEDING (the UAC's CANCEL or a proxy's Timer C,
        §16.8, bounds that wait) and a server transaction before its final response
        (the TU must answer).
        """
        if self.state is State.TERMINATED:
            return None
        pending = [t for t in (self._retransmit_at, self._deadline) if t is not None]
        return min(pending, default=None)

    def _due(self, now: float) -> bool:
        at = self.next_timer()
        return at is not None and now >= at

    def _deadline_due(self, now: float) -> bool:
        return self._deadline is not None and now >= self._deadline

    def _arm_retransmit(self, now: float) -> None:
        self._interval = self.timers.t1
        self._retransmit_at = None if self.reliable else now + self._interval

    def _linger(self, state: State, now: float, duration: float) -> list[Action]:
        """Enter a state that only absorbs stragglers for `duration` (D, I, J, K).

        A zero duration (reliable transports, where nothing is retransmitted to absorb)
        skips the state and terminates at once.
        """
        self._retransmit_at = None
        if duration <= 0:
            return self._terminate()
        self.state, self._deadline = state, now + duration
        return []

    def _terminate(self) -> list[Action]:
        self.state = State.TERMINATED
        self._retransmit_at = self._deadline = None
        return [Terminated()]


class InviteClient(_Transaction):
    """INVITE client transaction: RFC 3261 §17.1.1 with RFC 6026 §7.2 (Accepted).

    CALLING retransmits on Timer A (unreliable only) and gives up on Timer B. A 1xx moves
    to PROCEEDING, which has no timer (RFC 3261 Figure 5: Timer B fires only in Calling),
    so a phone may ring for longer than 64*T1. A 2xx moves to ACCEPTED for Timer M, where
    2xx retransmissions from other forks or lost ACKs still reach the TU. A 300-699 moves
    to COMPLETED for Timer D, where retransmissions of it are answered with the same ACK.
    """

    def __init__(
        self, request: bytes, now: float, timers: Timers = Timers(), reliable: bool = False
    ) -> None:
        super().__init__(State.CALLING, timers, reliable)
        self._request = request
        self._ack: bytes | None = None
        self._started = False
        self._arm_retransmit(now)  # Timer A
        self._deadline = now + timers.timer_b

    def start(self) -> list[Action]:
        """Send the INVITE (§17.1.1.2). Timers run from the `now` given to the constructor."""
        if self._started:
            raise LocalProtocolError("InviteClient.start() called twice")
        self._started = True
        return [Send(self._request)]

    def on_timer(self, now: float) -> list[Action]:
        """Fire Timer A (retransmit), B (time out), D or M (terminate) if due."""
        if not self._due(now):
            return []
        if self._deadline_due(now):
            if self.state is State.CALLING:  # Timer B
                return [TimedOut(), *self._terminate()]
            return self._terminate()  # Timer D or M
        # Timer A: plain doubling with no T2 cap (§17.1.1.2); Timer B ends it after 6 tries.
        self._interval *= 2
        self._retransmit_at = now + self._interval
        return [Send(self._request)]

    def on_response(self, status: int, now: float, ack: bytes | None = None) -> list[Action]:
        """Handle a response matched to this transaction (§17.1.1.2, RFC 6026 §7.2).

        For 300-699 the caller passes `ack`, the ACK it built per §17.1.1.3 (same branch,
        To tag of this response); it is sent now and re-sent for every retransmission of
        the final response while COMPLETED. For a 2xx `ack` must be None: that ACK is a
        separate transaction owned by the TU (§13.2.2.4). For retransmitted non-2xx
        responses `ack` may be omitted, as the stored one is re-sent.
        """
        _check_status(status)
        if 200 <= status <= 299 and ack is not None:
            raise LocalProtocolError("the ACK for a 2xx is sent by the TU, not the transaction")
        if self.state in (State.CALLING, State.PROCEEDING):
            if status < 200:
                # Any 1xx proves the INVITE arrived: stop Timer A, and Timer B too, which
                # runs only in Calling (Figure 5); ringing may last longer than 64*T1.
                self.state, self._retransmit_at, self._deadline = State.PROCEEDING, None, None
                return [Deliver(status)]
            if status < 300:
                # RFC 6026 §7.2: linger in Accepted rather than terminating, so 2xx from
                # other forks are not mistaken for strays.
                self.state, self._retransmit_at = State.ACCEPTED, None
                self._deadline = now + self.timers.timer_m
                return [Deliver(status)]
            if ack is None:
                raise LocalProtocolError(f"a {status} needs the ACK bytes (§17.1.1.3)")
            self._ack = ack
            # The ACK goes on the wire before the TU reacts, e.g. by re-sending the INVITE
            # with credentials after a 401, so the peer sees them in order.
            linger = 0.0 if self.reliable else self.timers.timer_d
            return [Send(ack), Deliver(status), *self._linger(State.COMPLETED, now, linger)]
        if self.state is State.COMPLETED and status >= 300 and self._ack is not None:
            return [Send(self._ack)]  # the ACK was lost; the TU already has the response
        if self.state is State.ACCEPTED and 200 <= status <= 299:
            return [Deliver(status)]  # RFC 6026 §7.2: the TU re-sends its ACK for these
        return []


class NonInviteClient(_Transaction):
    """Non-INVITE client transaction (RFC 3261 §17.1.2).

    Timer E retransmits (unreliable only) from T1, doubling up to T2, and at T2 once
    PROCEEDING. Timer F gives up after 64*T1 in TRYING or PROCEEDING. A final response
    moves to COMPLETED for Timer K (T4, zero over reliable transports) to absorb its
    retransmissions.
    """

    def __init__(
        self, request: bytes, now: float, timers: Timers = Timers(), reliable: bool = False
    ) -> None:
        super().__init__(State.TRYING, timers, reliable)
        self._request = request
        self._started = False
        self._arm_retransmit(now)  # Timer E
        self._deadline = now + timers.timer_f

    def start(self) -> list[Action]:
        """Send the request (§17.1.2.2). Timers run from the `now` given to the constructor."""
        if self._started:
            raise LocalProtocolError("NonInviteClient.start() called twice")
        self._started = True
        return [Send(self._request)]

    def on_timer(self, now: float) -> list[Action]:
        """Fire Timer E (retransmit), F (time out) or K (terminate) if due."""
        if not self._due(now):
            return []
        if self._deadline_due(now):
            if self.state is State.COMPLETED:  # Timer K
                return self._terminate()
            return [TimedOut(), *self._terminate()]  # Timer F
        if self.state is State.PROCEEDING:
            # The server has the request and is working on it; retransmit only slowly,
            # in case the final response gets lost (§17.1.2.2).
            self._interval = self.timers.t2
        else:
            self._interval = min(2 * self._interval, self.timers.t2)
        self._retransmit_at = now + self._interval
        return [Send(self._request)]

    def on_response(self, status: int, now: float) -> list[Action]:
        """Handle a response matched to this transaction (§17.1.2.2).

        Provisional responses are delivered and leave Timer E and F running; the first
        final response is delivered; anything in COMPLETED or TERMINATED is absorbed.
        """
        _check_status(status)
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []
        if status < 200:
            self.state = State.PROCEEDING
            return [Deliver(status)]
        linger = 0.0 if self.reliable else self.timers.t4  # Timer K
        return [Deliver(status), *self._linger(State.COMPLETED, now, linger)]


class InviteServer(_Transaction):
    """INVITE server transaction: RFC 3261 §17.2.1 with RFC 6026 §7.1 (Accepted).

    Starts in PROCEEDING; sending the 100 Trying is the TU's decision. A 300-699 moves to
    COMPLETED, retransmitted on Timer G (unreliable only) until the ACK moves it to
    CONFIRMED for Timer I, or Timer H gives up. A 2xx moves to ACCEPTED for Timer L; the
    TU retransmits the 2xx itself (§13.3.1.4) through `send_response`.
    """

    def __init__(self, now: float, timers: Timers = Timers(), reliable: bool = False) -> None:
        super().__init__(State.PROCEEDING, timers, reliable)
        self._last: bytes | None = None

    def send_response(self, data: bytes, status: int, now: float) -> list[Action]:
        """Send a response from the TU (§17.2.1, RFC 6026 §7.1).

        Raises `LocalProtocolError` for any response after a non-2xx final, for a non-2xx
        after a 2xx, and after TERMINATED.
        """
        _check_status(status)
        if self.state is State.ACCEPTED:
            if not 200 <= status <= 299:
                raise LocalProtocolError(f"cannot send {status} after a 2xx")
            return [Send(data)]  # the TU's 2xx retransmission, or a 2xx for another fork
        if self.state is not State.PROCEEDING:
            raise LocalProtocolError(f"cannot send {status} in {self.state.name}")
        self._last = data
        if status < 200:
            return [Send(data)]
        if status < 300:
            self.state = State.ACCEPTED
            self._deadline = now + self.timers.timer_l
            return [Send(data)]
        self.state = State.COMPLETED
        self._arm_retransmit(now)  # Timer G
        self._deadline = now + self.timers.timer_h
        return [Send(data)]

    def on_request(self, now: float) -> list[Action]:
        """Handle a retransmission of the INVITE (§17.2.1, RFC 6026 §7.1).

        PROCEEDING re-sends the last provisional response (nothing if there was none yet)
        and COMPLETED the final response. ACCEPTED absorbs it, because only the TU knows
        whether its 2xx still needs retransmitting; CONFIRMED and TERMINATED absorb it too.
        """
        if self.state in (State.PROCEEDING, State.COMPLETED) and self._last is not None:
            return [Send(self._last)]
        return []

    def on_ack(self, now: float) -> list[Action]:
        """Handle an ACK matched to this transaction (§17.2.1, RFC 6026 §7.1).

        In COMPLETED it stops Timers G and H and moves to CONFIRMED for Timer I (T4, zero
        over reliable transports). Elsewhere it is absorbed. In ACCEPTED the ACK of a 2xx
        belongs to the TU: the caller must hand it to the dialog layer itself.
        """
        if self.state is not State.COMPLETED:
            return []
        linger = 0.0 if self.reliable else self.timers.t4  # Timer I
        return self._linger(State.CONFIRMED, now, linger)

    def on_timer(self, now: float) -> list[Action]:
        """Fire Timer G (retransmit), H (time out), I or L (terminate) if due."""
        if not self._due(now):
            return []
        if self._deadline_due(now):
            if self.state is State.COMPLETED:  # Timer H: the ACK never came
                return [TimedOut(), *self._terminate()]
            return self._terminate()  # Timer I or L
        # Timer G only runs in COMPLETED, where `_last` holds the final response.
        self._interval = min(2 * self._interval, self.timers.t2)
        self._retransmit_at = now + self._interval
        return [Send(self._last)] if self._last is not None else []


class NonInviteServer(_Transaction):
    """Non-INVITE server transaction (RFC 3261 §17.2.2).

    TRYING until the TU's first response; a 1xx moves to PROCEEDING and a final response
    to COMPLETED, which re-sends it for each request retransmission until Timer J (64*T1,
    zero over reliable transports). Responses are never retransmitted on a timer: the
    client's Timer E drives retransmission.
    """

    def __init__(self, now: float, timers: Timers = Timers(), reliable: bool = False) -> None:
        super().__init__(State.TRYING, timers, reliable)
        self._last: bytes | None = None

    def send_response(self, data: bytes, status: int, now: float) -> list[Action]:
        """Send a response from the TU (§17.2.2).

        Raises `LocalProtocolError` once a final response has been sent: RFC 3261 says to
        discard such responses, but only a bug in our own TU can produce one.
        """
        _check_status(status)
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise LocalProtocolError(f"cannot send {status} in {self.state.name}")
        self._last = data
        if status < 200:
            self.state = State.PROCEEDING
            return [Send(data)]
        linger = 0.0 if self.reliable else self.timers.timer_j
        return [Send(data), *self._linger(State.COMPLETED, now, linger)]

    def on_request(self, now: float) -> list[Action]:
        """Handle a retransmission of the request (§17.2.2).

        TRYING discards it (the TU has not answered yet); PROCEEDING and COMPLETED
        re-send the last response; TERMINATED absorbs it.
        """
        if self.state in (State.PROCEEDING, State.COMPLETED) and self._last is not None:
            return [Send(self._last)]
        return []

    def on_timer(self, now: float) -> list[Action]:
        """Fire Timer J (terminate) if due."""
        if not self._due(now):
            return []
        return self._terminate()
