"""Transaction state machines (RFC 3261 §17, RFC 6026) on a fake clock.

Every test owns `now`: timers are driven by calling `on_timer(next_timer())`, so 32 s of
RFC time run in microseconds and every instant is checked exactly.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbx.errors import LocalProtocolError
from pbx.sip.transaction import (
    Action,
    Deliver,
    InviteClient,
    InviteServer,
    NonInviteClient,
    NonInviteServer,
    Send,
    State,
    Terminated,
    TimedOut,
    Timers,
)

INVITE = b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n"
ACK = b"ACK sip:bob@example.com SIP/2.0\r\n\r\n"
OPTIONS = b"OPTIONS sip:bob@example.com SIP/2.0\r\n\r\n"
TRYING = b"SIP/2.0 100 Trying\r\n\r\n"
RINGING = b"SIP/2.0 180 Ringing\r\n\r\n"
OK = b"SIP/2.0 200 OK\r\n\r\n"
BUSY = b"SIP/2.0 486 Busy Here\r\n\r\n"

Transaction = InviteClient | NonInviteClient | InviteServer | NonInviteServer
Log = list[tuple[float, Action]]


def run_timers(tx: Transaction, until: float = math.inf) -> Log:
    """Fire every timer up to `until`, each exactly at its instant."""
    log: Log = []
    while (at := tx.next_timer()) is not None and at <= until:
        log += [(at, action) for action in tx.on_timer(at)]
    return log


def sent_at(log: Log, data: bytes) -> list[float]:
    return [at for at, action in log if action == Send(data)]


# Timers


def test_timer_defaults() -> None:
    timers = Timers()
    assert (timers.t1, timers.t2, timers.t4, timers.timer_d) == (0.5, 4.0, 5.0, 32.0)
    assert {
        timers.timer_b,
        timers.timer_f,
        timers.timer_h,
        timers.timer_j,
        timers.timer_l,
        timers.timer_m,
    } == {32.0}
    assert Timers(t1=0.1).timer_b == pytest.approx(6.4)


# InviteClient: Timers A, B, D, M


def test_invite_client_timer_a_and_b_over_udp() -> None:
    tx = InviteClient(INVITE, now=0.0)
    log = [(0.0, action) for action in tx.start()] + run_timers(tx)
    # Timer A doubles without the T2 cap: 0.5, 1, 2, 4, 8, 16 s apart.
    assert sent_at(log, INVITE) == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert log[-2:] == [(32.0, TimedOut()), (32.0, Terminated())]
    assert tx.state is State.TERMINATED
    assert tx.next_timer() is None


def test_invite_client_timers_are_relative_to_now() -> None:
    tx = InviteClient(INVITE, now=1000.0)
    tx.start()
    log = run_timers(tx)
    assert sent_at(log, INVITE) == [1000.5, 1001.5, 1003.5, 1007.5, 1015.5, 1031.5]
    assert log[-1] == (1032.0, Terminated())


def test_invite_client_reliable_never_retransmits() -> None:
    tx = InviteClient(INVITE, now=0.0, reliable=True)
    assert tx.start() == [Send(INVITE)]
    assert tx.next_timer() == 32.0  # Timer B still runs over TCP
    assert run_timers(tx) == [(32.0, TimedOut()), (32.0, Terminated())]


def test_invite_client_provisional_stops_timers_a_and_b() -> None:
    tx = InviteClient(INVITE, now=0.0)
    tx.start()
    assert tx.on_timer(0.5) == [Send(INVITE)]
    assert tx.on_response(180, now=1.0) == [Deliver(180)]
    assert tx.state is State.PROCEEDING
    # No timer at all: a phone may ring for more than 64*T1 (RFC 3261 Figure 5).
    assert tx.next_timer() is None
    assert tx.on_timer(100.0) == []
    assert tx.on_response(183, now=40.0) == [Deliver(183)]
    assert tx.on_response(200, now=60.0) == [Deliver(200)]
    assert (tx.state, tx.next_timer()) == (State.ACCEPTED, 92.0)  # Timer M


def test_invite_client_timer_d_resends_ack_for_each_retransmitted_final() -> None:
    tx = InviteClient(INVITE, now=0.0)
    tx.start()
    tx.on_response(180, now=0.2)
    assert tx.on_response(486, now=2.0, ack=ACK) == [Send(ACK), Deliver(486)]
    assert tx.state is State.COMPLETED
    assert tx.next_timer() == 34.0  # Timer D = 32 s
    # The ACK was lost: each retransmitted 486 gets the same ACK, the TU hears nothing.
    assert tx.on_response(486, now=2.5) == [Send(ACK)]
    assert tx.on_response(486, now=3.5, ack=b"ignored") == [Send(ACK)]
    assert tx.on_response(180, now=4.0) == []
    assert tx.on_response(200, now=4.0) == []
    assert tx.on_timer(33.9) == []
    assert run_timers(tx) == [(34.0, Terminated())]
    assert tx.on_response(486, now=35.0) == []


def test_invite_client_final_in_calling_stops_timer_a() -> None:
    tx = InviteClient(INVITE, now=0.0)
    tx.start()
    assert tx.on_response(503, now=0.1, ack=ACK) == [Send(ACK), Deliver(503)]
    assert run_timers(tx) == [(32.1, Terminated())]


def test_invite_client_reliable_timer_d_is_zero() -> None:
    tx = InviteClient(INVITE, now=0.0, reliable=True)
    tx.start()
    assert tx.on_response(486, now=1.0, ack=ACK) == [Send(ACK), Deliver(486), Terminated()]
    assert tx.state is State.TERMINATED
    assert tx.next_timer() is None


@pytest.mark.parametrize("reliable", [False, True])
def test_invite_client_timer_m_delivers_2xx_retransmissions(reliable: bool) -> None:
    tx = InviteClient(INVITE, now=0.0, reliable=reliable)
    tx.start()
    assert tx.on_response(200, now=1.0) == [Deliver(200)]
    assert tx.state is State.ACCEPTED
    assert tx.next_timer() == 33.0  # Timer M = 64*T1, over any transport
    # RFC 6026 §7.2: 2xx retransmissions (lost ACK, other forks) still reach the TU.
    assert tx.on_response(200, now=1.5) == [Deliver(200)]
    assert tx.on_response(202, now=2.0) == [Deliver(202)]
    assert tx.on_response(180, now=2.0) == []
    assert tx.on_response(486, now=2.0, ack=ACK) == []
    assert run_timers(tx) == [(33.0, Terminated())]
    assert tx.on_response(200, now=34.0) == []


def test_invite_client_misuse_raises() -> None:
    tx = InviteClient(INVITE, now=0.0)
    tx.start()
    with pytest.raises(LocalProtocolError):
        tx.start()
    with pytest.raises(LocalProtocolError, match="ACK"):
        tx.on_response(486, now=1.0)  # the ACK bytes are needed to send it
    with pytest.raises(LocalProtocolError, match="TU"):
        tx.on_response(200, now=1.0, ack=ACK)  # the 2xx ACK is the TU's
    for status in (99, 700, 0, -1):
        with pytest.raises(LocalProtocolError):
            tx.on_response(status, now=1.0)
    assert tx.state is State.CALLING  # nothing changed


# NonInviteClient: Timers E, F, K


def test_non_invite_client_timer_e_and_f_over_udp() -> None:
    tx = NonInviteClient(OPTIONS, now=0.0)
    log = [(0.0, action) for action in tx.start()] + run_timers(tx)
    # Timer E doubles from T1 up to T2 = 4 s, then stays there until Timer F.
    assert sent_at(log, OPTIONS) == [
        0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]  # fmt: skip
    assert log[-2:] == [(32.0, TimedOut()), (32.0, Terminated())]
    assert tx.next_timer() is None


def test_non_invite_client_style_guide_example() -> None:
    tx = NonInviteClient(OPTIONS, now=0.0)
    tx.start()
    now, sent, acts = 0.0, 0, []
    while (at := tx.next_timer()) is not None:
        now, acts = at, tx.on_timer(at)
        sent += acts.count(Send(OPTIONS))
    assert (now, acts, sent) == (32.0, [TimedOut(), Terminated()], 10)


def test_non_invite_client_timer_e_is_t2_in_proceeding() -> None:
    tx = NonInviteClient(OPTIONS, now=0.0)
    tx.start()
    assert tx.on_response(100, now=0.1) == [Deliver(100)]
    assert tx.state is State.PROCEEDING
    log = run_timers(tx)
    # The pending E still fires at 0.5, then every T2 until Timer F.
    assert sent_at(log, OPTIONS) == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert log[-2:] == [(32.0, TimedOut()), (32.0, Terminated())]


def test_non_invite_client_late_provisional_switches_to_t2() -> None:
    tx = NonInviteClient(OPTIONS, now=0.0)
    tx.start()
    assert sent_at(run_timers(tx, until=2.0), OPTIONS) == [0.5, 1.5]
    tx.on_response(100, now=2.0)
    assert sent_at(run_timers(tx, until=12.0), OPTIONS) == [3.5, 7.5, 11.5]


def test_non_invite_client_timer_k_absorbs_retransmitted_finals() -> None:
    tx = NonInviteClient(OPTIONS, now=0.0)
    tx.start()
    tx.on_timer(0.5)
    assert tx.on_response(200, now=1.0) == [Deliver(200)]
    assert tx.state is State.COMPLETED
    assert tx.next_timer() == 6.0  # Timer K = T4; Timer E has stopped
    assert tx.on_response(200, now=1.2) == []
    assert tx.on_response(100, now=1.2) == []
    assert run_timers(tx) == [(6.0, Terminated())]
    assert tx.on_response(200, now=7.0) == []


def test_non_invite_client_reliable() -> None:
    tx = NonInviteClient(OPTIONS, now=0.0, reliable=True)
    assert tx.start() == [Send(OPTIONS)]
    assert tx.next_timer() == 32.0
    assert run_timers(tx) == [(32.0, TimedOut()), (32.0, Terminated())]

    tx = NonInviteClient(OPTIONS, now=0.0, reliable=True)
    tx.start()
    assert tx.on_response(404, now=1.0) == [Deliver(404), Terminated()]  # Timer K = 0
    assert tx.next_timer() is None


def test_non_invite_client_misuse_raises() -> None:
    tx = NonInviteClient(OPTIONS, now=0.0)
    tx.start()
    with pytest.raises(LocalProtocolError):
        tx.start()
    with pytest.raises(LocalProtocolError):
        tx.on_response(42, now=0.0)


# InviteServer: Timers G, H, I, L


def test_invite_server_retransmitted_invite_in_proceeding() -> None:
    tx = InviteServer(now=0.0)
    assert tx.state is State.PROCEEDING
    assert tx.next_timer() is None  # waits for the TU
    assert tx.on_request(now=0.1) == []  # nothing to repeat yet
    assert tx.send_response(TRYING, 100, now=0.1) == [Send(TRYING)]
    assert tx.on_request(now=0.2) == [Send(TRYING)]
    assert tx.send_response(RINGING, 180, now=0.3) == [Send(RINGING)]
    assert tx.on_request(now=0.4) == [Send(RINGING)]
    assert tx.next_timer() is None  # provisionals are never retransmitted by timer


def test_invite_server_timer_g_and_h_over_udp() -> None:
    tx = InviteServer(now=0.0)
    log = [(0.0, action) for action in tx.send_response(BUSY, 486, now=0.0)]
    log += run_timers(tx)
    # Timer G doubles from T1 up to T2, until Timer H gives up on the ACK.
    assert sent_at(log, BUSY) == [
        0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]  # fmt: skip
    assert log[-2:] == [(32.0, TimedOut()), (32.0, Terminated())]


def test_invite_server_timer_i_after_ack() -> None:
    tx = InviteServer(now=0.0)
    tx.send_response(BUSY, 486, now=0.0)
    assert tx.on_timer(0.5) == [Send(BUSY)]
    assert tx.on_request(now=0.7) == [Send(BUSY)]  # retransmitted INVITE
    assert tx.on_ack(now=1.0) == []
    assert tx.state is State.CONFIRMED
    assert tx.next_timer() == 6.0  # Timer I = T4; G and H stopped
    assert tx.on_ack(now=1.1) == []  # ACK retransmissions absorbed
    assert tx.on_request(now=1.2) == []
    assert run_timers(tx) == [(6.0, Terminated())]
    assert tx.on_ack(now=7.0) == []


def test_invite_server_reliable() -> None:
    tx = InviteServer(now=0.0, reliable=True)
    assert tx.send_response(BUSY, 486, now=0.0) == [Send(BUSY)]
    assert tx.next_timer() == 32.0  # no Timer G, but Timer H still waits for the ACK
    assert tx.on_ack(now=1.0) == [Terminated()]  # Timer I = 0

    tx = InviteServer(now=0.0, reliable=True)
    tx.send_response(BUSY, 486, now=0.0)
    assert run_timers(tx) == [(32.0, TimedOut()), (32.0, Terminated())]


@pytest.mark.parametrize("reliable", [False, True])
def test_invite_server_timer_l_absorbs_invite_retransmissions(reliable: bool) -> None:
    tx = InviteServer(now=0.0, reliable=reliable)
    tx.send_response(RINGING, 180, now=0.0)
    assert tx.send_response(OK, 200, now=1.0) == [Send(OK)]
    assert tx.state is State.ACCEPTED
    assert tx.next_timer() == 33.0  # Timer L = 64*T1
    # RFC 6026 §7.1: the UAS core, not the transaction, repeats the 2xx.
    assert tx.on_request(now=1.5) == []
    assert tx.send_response(OK, 200, now=1.5) == [Send(OK)]
    assert tx.on_ack(now=2.0) == []
    assert tx.state is State.ACCEPTED  # the ACK of a 2xx doesn't end Timer L
    with pytest.raises(LocalProtocolError):
        tx.send_response(BUSY, 486, now=2.0)
    with pytest.raises(LocalProtocolError):
        tx.send_response(RINGING, 180, now=2.0)
    assert run_timers(tx) == [(33.0, Terminated())]
    assert tx.on_request(now=34.0) == []


def test_invite_server_misuse_raises() -> None:
    tx = InviteServer(now=0.0)
    with pytest.raises(LocalProtocolError):
        tx.send_response(OK, 700, now=0.0)
    tx.send_response(BUSY, 486, now=0.0)
    for status in (180, 200, 486):  # COMPLETED
        with pytest.raises(LocalProtocolError):
            tx.send_response(BUSY, status, now=0.1)
    tx.on_ack(now=0.2)
    with pytest.raises(LocalProtocolError):  # CONFIRMED
        tx.send_response(BUSY, 486, now=0.3)
    run_timers(tx)
    with pytest.raises(LocalProtocolError, match="TERMINATED"):
        tx.send_response(OK, 200, now=10.0)


def test_invite_server_ack_before_final_is_absorbed() -> None:
    tx = InviteServer(now=0.0)
    assert tx.on_ack(now=0.1) == []
    assert tx.state is State.PROCEEDING


# NonInviteServer: Timer J


def test_non_invite_server_timer_j_over_udp() -> None:
    tx = NonInviteServer(now=0.0)
    assert tx.on_request(now=0.1) == []  # TRYING discards retransmissions
    assert (tx.state, tx.next_timer()) == (State.TRYING, None)
    assert tx.send_response(TRYING, 100, now=0.2) == [Send(TRYING)]
    assert (tx.state, tx.next_timer()) == (State.PROCEEDING, None)
    assert tx.on_request(now=0.3) == [Send(TRYING)]
    assert tx.send_response(OK, 200, now=1.0) == [Send(OK)]
    assert tx.state is State.COMPLETED
    assert tx.next_timer() == 33.0  # Timer J = 64*T1
    assert tx.on_request(now=2.0) == [Send(OK)]
    assert tx.on_request(now=30.0) == [Send(OK)]
    assert run_timers(tx) == [(33.0, Terminated())]  # never retransmits on its own
    assert tx.on_request(now=34.0) == []


def test_non_invite_server_reliable_timer_j_is_zero() -> None:
    tx = NonInviteServer(now=0.0, reliable=True)
    assert tx.send_response(OK, 200, now=1.0) == [Send(OK), Terminated()]
    assert tx.next_timer() is None


def test_non_invite_server_misuse_raises() -> None:
    tx = NonInviteServer(now=0.0)
    with pytest.raises(LocalProtocolError):
        tx.send_response(OK, 1000, now=0.0)
    tx.send_response(OK, 200, now=0.0)
    with pytest.raises(LocalProtocolError, match="COMPLETED"):
        tx.send_response(OK, 200, now=0.1)
    with pytest.raises(LocalProtocolError):
        tx.send_response(TRYING, 100, now=0.1)


# Calling on_timer early or late


def test_early_on_timer_does_nothing() -> None:
    tx = NonInviteClient(OPTIONS, now=0.0)
    tx.start()
    assert tx.on_timer(0.49) == []
    assert tx.next_timer() == 0.5


def test_late_on_timer_deadline_wins() -> None:
    # A stalled event loop that wakes after Timer F must not send one more copy.
    tx = NonInviteClient(OPTIONS, now=0.0)
    tx.start()
    assert tx.on_timer(100.0) == [TimedOut(), Terminated()]


def test_late_retransmission_reschedules_from_now() -> None:
    tx = InviteClient(INVITE, now=0.0)
    tx.start()
    assert tx.on_timer(2.0) == [Send(INVITE)]  # Timer A was due at 0.5
    assert tx.next_timer() == 3.0  # one retransmission, not a burst of catch-ups


# Random event sequences


ACK_CHOICES = st.sampled_from([None, ACK])
STATUSES = st.one_of(
    st.sampled_from([100, 180, 183, 200, 202, 302, 401, 486, 503, 603]),
    st.integers(-5, 900),
)
DELAYS = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=40.0))
TIMERS = st.sampled_from(
    [Timers(), Timers(t1=0.1, t2=0.4, t4=0.2, timer_d=1.0), Timers(t4=0.0, timer_d=0.0)]
)

Event = tuple[str, float, int, bytes | None]
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["start", "timer", "next", "response", "send", "request", "ack"]),
        DELAYS,
        STATUSES,
        ACK_CHOICES,
    ),
    max_size=30,
)
# States in which a machine waits, with no timer, for the peer or its TU.
WAITING = {
    InviteClient: {State.PROCEEDING},
    NonInviteClient: set(),
    InviteServer: {State.PROCEEDING},
    NonInviteServer: {State.TRYING, State.PROCEEDING},
}


def make(kind: str, timers: Timers, reliable: bool) -> Transaction:
    if kind == "InviteClient":
        return InviteClient(INVITE, 0.0, timers, reliable)
    if kind == "NonInviteClient":
        return NonInviteClient(OPTIONS, 0.0, timers, reliable)
    if kind == "InviteServer":
        return InviteServer(0.0, timers, reliable)
    return NonInviteServer(0.0, timers, reliable)


def apply(tx: Transaction, event: Event, now: float) -> list[Action]:
    name, _, status, ack = event
    if name == "timer":
        return tx.on_timer(now)
    if name == "next":
        at = tx.next_timer()
        return tx.on_timer(at) if at is not None and at >= now else []
    if isinstance(tx, InviteClient | NonInviteClient):
        if name == "start":
            return tx.start()
        if name != "response":
            return []
        if isinstance(tx, InviteClient):
            return tx.on_response(status, now, ack)
        return tx.on_response(status, now)
    if name == "send":
        return tx.send_response(b"%d" % status, status, now)
    if name == "request":
        return tx.on_request(now)
    if name == "ack" and isinstance(tx, InviteServer):
        return tx.on_ack(now)
    return []


def check(tx: Transaction, actions: list[Action], ended: int) -> int:
    """Check the invariants after one call; return how many Terminated()s so far."""
    if Terminated() in actions:
        assert actions[-1] == Terminated()
        assert actions.count(Terminated()) == 1
        ended += 1
    if TimedOut() in actions:
        assert actions == [TimedOut(), Terminated()]
    assert ended <= 1
    assert (tx.state is State.TERMINATED) == (ended == 1)
    if tx.next_timer() is None:
        assert tx.state is State.TERMINATED or tx.state in WAITING[type(tx)]
    return ended


@settings(max_examples=500, deadline=None)
@given(
    kind=st.sampled_from(["InviteClient", "NonInviteClient", "InviteServer", "NonInviteServer"]),
    timers=TIMERS,
    reliable=st.booleans(),
    events=EVENTS,
)
def test_random_events_raise_only_local_errors_and_always_terminate(
    kind: str, timers: Timers, reliable: bool, events: list[Event]
) -> None:
    tx = make(kind, timers, reliable)
    now, ended = 0.0, 0
    for event in events:
        now += event[1]
        try:
            actions = apply(tx, event, now)
        except LocalProtocolError:
            actions = []
        ended = check(tx, actions, ended)

    # Settle a wait that no timer bounds, as the peer or the TU eventually would.
    if tx.state in WAITING[type(tx)]:
        if isinstance(tx, InviteClient):
            actions = tx.on_response(486, now, ACK)
        elif isinstance(tx, InviteServer | NonInviteServer):
            actions = tx.send_response(BUSY, 486, now)
        ended = check(tx, actions, ended)

    # Now only timers remain, and they run out: next_timer() is None only once TERMINATED.
    for _ in range(1000):
        at = tx.next_timer()
        if at is None:
            break
        now = max(now, at)
        ended = check(tx, tx.on_timer(now), ended)
    assert tx.state is State.TERMINATED
    assert tx.next_timer() is None
    assert ended == 1
