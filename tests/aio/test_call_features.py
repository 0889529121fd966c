"""Call features through the B2BUA between loopback phones: ring groups, pickup, park,
attended transfer (REFER with Replaces), INVITE with Replaces, blind transfer routed by the
dialplan, and codec choice across legs (G.722 relayed, G.711 transcoded)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pbx import config as pbx_config
from pbx.events import Event
from pbx.server import Exchange
from tests.aio.test_register_flow import server_of
from tests.conftest import add_users
from tests.support.pbxproc import write_config
from tests.support.phone import Phone, media_of
from tests.support.ports import free_port

FEATURES = """
[registrar]
qualify_interval = 0

[dialplan]
park_timeout = {park_timeout}

[[ring_group]]
number = "600"
members = ["1002", "1003"]

[[ring_group]]
number = "610"
members = ["1002", "1003"]
strategy = "in_order"
member_timeout = 0.5
"""
USERS = {ext: f"pw{ext}" for ext in ("1001", "1002", "1003", "1004")}
PhoneFactory = Callable[..., Awaitable[list[Phone]]]


async def started(tmp_path: Path, park_timeout: float = 30) -> Exchange:
    path = write_config(tmp_path, free_port(), FEATURES.format(park_timeout=park_timeout))
    exchange = Exchange(pbx_config.load(path))
    await exchange.start()
    await add_users(exchange, USERS)
    return exchange


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Exchange]:
    exchange = await started(tmp_path)
    yield exchange
    await exchange.stop()


@pytest.fixture
async def phones(pbx: Exchange) -> AsyncIterator[PhoneFactory]:
    """Phones registered on `pbx`; afterwards every call's state and media are gone."""
    assert pbx.calls is not None
    free = pbx.calls.pool.free
    async with contextlib.AsyncExitStack() as stack:

        async def make(*extensions: str, **options: object) -> list[Phone]:
            made = []
            for ext in extensions:
                phone = Phone(server_of(pbx), ext, USERS[ext], **options)  # type: ignore[arg-type]
                await phone.start()
                stack.push_async_callback(phone.stop)
                made.append(phone)
            return made

        yield make
        await pbx.calls.stop()  # hang up while the phones still answer the BYEs
    assert pbx.calls.calls == {}
    assert pbx.calls._by_dialog == {} and pbx.calls._by_branch == {}
    assert pbx.calls.parking.parked() == {}
    assert pbx.calls.pool.free == free, "media ports not given back"
    assert not pbx.calls.media_clock.busy, "the media clock still runs for a call"


class Recorder:
    def __init__(self, exchange: Exchange) -> None:
        self.events: list[Event] = []
        exchange.events.subscribe(self.events.append)

    def of(self, kind: str) -> list[dict[str, object]]:
        return [e.to_json() for e in self.events if e.type == kind]


async def cdrs(exchange: Exchange, count: int) -> list[dict[str, object]]:
    """The CDRs once `count` are written (each is committed just after its call ends)."""
    assert exchange.store is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(rows := await exchange.store.cdrs()) < count and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert len(rows) == count, rows
    return rows


async def test_ring_group_rings_every_member_and_the_first_answer_wins(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    alice, bob, carol = await phones("1001", "1002", "1003")
    invite = await alice.dial("600")
    to_bob, to_carol = await bob.incoming(), await carol.incoming()
    assert to_bob.to.uri.user == to_carol.to.uri.user == "600"  # what the caller dialled
    bob.ring(to_bob)
    carol_call = await carol.answer(to_carol)
    call = await alice.answered(invite)
    assert (await bob.next("CANCEL")).call_id == to_bob.call_id
    await carol.hears(alice, call.media_port, b"\x11")
    await alice.hears(carol, carol_call.media_port, b"\x22")
    assert (await alice.bye(call)).status == 200
    await carol.next("BYE")
    [cdr] = await cdrs(pbx, 1)
    assert (cdr["callee"], cdr["route"], cdr["answered_by"]) == ("600", "ring group", "1003")
    assert cdr["legs"] == ["1001", "1003"]
    assert cdr["disposition"] == "ANSWERED"


async def test_in_order_ring_group_moves_on_after_member_timeout(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    alice, bob, carol = await phones("1001", "1002", "1003")
    invite = await alice.dial("610")
    first = await bob.incoming()
    bob.ring(first)
    assert carol.received("INVITE") == 0  # only the first member rings
    await bob.next("CANCEL", timeout=3)  # its 0.5 s are up
    second = await carol.incoming()
    await carol.answer(second)
    call = await alice.answered(invite)
    await alice.bye(call)
    [cdr] = await cdrs(pbx, 1)
    assert cdr["answered_by"] == "1003"


async def test_in_order_ring_group_nobody_answers_480(pbx: Exchange, phones: PhoneFactory) -> None:
    alice, bob, carol = await phones("1001", "1002", "1003")
    invite = await alice.dial("610")
    for member in (bob, carol):
        member.ring(await member.incoming())
        await member.next("CANCEL", timeout=3)
    final = await alice.final(invite)
    assert final.status == 480
    [cdr] = await cdrs(pbx, 1)
    assert (cdr["disposition"], cdr["status"]) == ("NO ANSWER", 480)


async def test_ring_group_member_busy_moves_on_at_once(pbx: Exchange, phones: PhoneFactory) -> None:
    alice, bob, carol = await phones("1001", "1002", "1003")
    invite = await alice.dial("610")
    bob.reject(await bob.incoming(), 486)
    carol.reject(await carol.incoming(), 486)
    assert (await alice.final(invite)).status == 486
    [cdr] = await cdrs(pbx, 1)
    assert cdr["disposition"] == "BUSY"


async def test_group_pickup_answers_the_ringing_call(pbx: Exchange, phones: PhoneFactory) -> None:
    recorder = Recorder(pbx)
    alice, bob, carol = await phones("1001", "1002", "1003")
    invite = await alice.dial("1002")
    ringing = await bob.incoming()
    bob.ring(ringing)
    picked = await carol.call("*8")
    call = await alice.answered(invite)
    assert (await bob.next("CANCEL")).call_id == ringing.call_id
    await carol.hears(alice, call.media_port, b"\x31")
    await alice.hears(carol, picked.media_port, b"\x32")
    [event] = recorder.of("call_picked_up")
    assert (event["caller"], event["callee"], event["by"]) == ("1001", "1002", "1003")
    await carol.bye(picked)
    await alice.next("BYE")
    [cdr] = await cdrs(pbx, 1)
    assert (cdr["answered_by"], cdr["legs"], cdr["hangup_by"]) == (
        "1003",
        ["1001", "1003"],
        "callee",
    )


async def test_directed_pickup_takes_the_call_at_that_extension(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    alice, bob, carol, dave = await phones("1001", "1002", "1003", "1004")
    to_bob = await alice.dial("1002")
    bob.ring(await bob.incoming())
    to_carol = await dave.dial("1003")
    at_carol = await carol.incoming()
    carol.ring(at_carol)
    # Bob's own phone rings, but he takes the call ringing at 1003.
    picked = await bob.call("**1003")
    dave_call = await dave.answered(to_carol)
    assert (await carol.next("CANCEL")).call_id == at_carol.call_id
    await bob.hears(dave, dave_call.media_port, b"\x41")
    assert (await alice.response(to_bob)).status in (100, 180)  # still ringing at Bob
    await bob.bye(picked)


async def test_pickup_with_nothing_ringing_is_404(pbx: Exchange, phones: PhoneFactory) -> None:
    (carol,) = await phones("1003")
    for code in ("*8", "**1002"):
        final = await carol.final(await carol.dial(code))
        assert final.status == 404, code


async def park(alice: Phone, bob: Phone) -> tuple[object, list[str]]:
    """Alice calls Bob; Bob holds her and parks her (blind transfer to 700)."""
    invite = await alice.dial("1002")
    bob_call = await bob.answer(await bob.incoming())
    alice_call = await alice.answered(invite)
    await bob.hold(bob_call)
    held = await alice.next("INVITE")
    assert media_of(held.body)[2] == "sendonly"
    assert (await bob.refer(bob_call, "700")).status == 202
    lines = await bob.notifies_until_final()
    await bob.next("BYE")
    return alice_call, lines


async def test_park_and_retrieve_from_the_slot(pbx: Exchange, phones: PhoneFactory) -> None:
    assert pbx.calls is not None
    recorder = Recorder(pbx)
    alice, bob, carol = await phones("1001", "1002", "1003")
    alice_call, lines = await park(alice, bob)
    assert lines == ["SIP/2.0 100 Trying", "SIP/2.0 200 Parked In 701"]
    # Alice waits off hold in slot 701.
    resumed = await alice.next("INVITE")
    assert media_of(resumed.body)[2] == "sendrecv"
    [live] = pbx.calls.live()
    assert (live["state"], live["slot"]) == ("parked", "701")
    carol_call = await carol.call("701")
    await carol.hears(alice, alice_call.media_port, b"\x51")  # type: ignore[attr-defined]
    await alice.hears(carol, carol_call.media_port, b"\x52")
    [parked] = recorder.of("call_parked")
    assert (parked["slot"], parked["by"]) == ("701", "1002")
    [retrieved] = recorder.of("call_retrieved")
    assert (retrieved["slot"], retrieved["by"], retrieved["timed_out"]) == ("701", "1003", False)
    assert pbx.calls.parking.parked() == {}
    await alice.bye(alice_call)  # type: ignore[arg-type]
    await carol.next("BYE")
    [cdr] = await cdrs(pbx, 1)
    assert cdr["legs"] == ["1001", "1002", "1003"]


async def test_park_timeout_rings_the_parker_again(tmp_path: Path) -> None:
    exchange = await started(tmp_path, park_timeout=0.3)
    recorder = Recorder(exchange)
    alice = await Phone(server_of(exchange), "1001", "pw1001").start()
    bob = await Phone(server_of(exchange), "1002", "pw1002").start()
    try:
        alice_call, _ = await park(alice, bob)
        again = await bob.incoming()
        assert again.from_.uri.user == "1001"  # whom Bob gets back
        bob_call = await bob.answer(again)
        await bob.hears(alice, alice_call.media_port, b"\x61")  # type: ignore[attr-defined]
        await alice.hears(bob, bob_call.media_port, b"\x62")
        [retrieved] = recorder.of("call_retrieved")
        assert (retrieved["by"], retrieved["timed_out"]) == ("1002", True)
        await bob.bye(bob_call)
        await alice.next("BYE")
    finally:
        await alice.stop()
        await bob.stop()
        await exchange.stop()


async def test_park_number_and_empty_slot_refused(pbx: Exchange, phones: PhoneFactory) -> None:
    (carol,) = await phones("1003")
    assert (await carol.final(await carol.dial("700"))).status == 403
    assert (await carol.final(await carol.dial("705"))).status == 404


async def test_attended_transfer_joins_the_two_parties(pbx: Exchange, phones: PhoneFactory) -> None:
    """Bob talks to Alice, holds her, calls Carol, then transfers Alice to Carol with a
    REFER whose Refer-To replaces his call with Carol (what desk phones send)."""
    assert pbx.calls is not None
    recorder = Recorder(pbx)
    alice, bob, carol = await phones("1001", "1002", "1003")
    invite = await alice.dial("1002")
    bob_first = await bob.answer(await bob.incoming())
    alice_call = await alice.answered(invite)
    await bob.hold(bob_first)
    await alice.next("INVITE")  # the hold passed on
    consult = await bob.dial("1003")
    carol_call = await carol.answer(await carol.incoming())
    bob_second = await bob.answered(consult)
    host, port = server_of(pbx)
    replaces = urllib.parse.quote(bob_second.replaces(), safe="")
    refer = await bob.refer(bob_first, f"<sip:1003@{host}:{port}?Replaces={replaces}>")
    assert refer.status == 202
    assert await bob.notifies_until_final() == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]
    byes = {(await bob.next("BYE")).call_id, (await bob.next("BYE")).call_id}
    assert byes == {bob_first.dialog.call_id, bob_second.dialog.call_id}
    resumed = await alice.next("INVITE")  # Alice is taken off hold
    assert media_of(resumed.body)[2] == "sendrecv"
    await carol.hears(alice, alice_call.media_port, b"\x71")
    await alice.hears(carol, carol_call.media_port, b"\x72")
    [transferred] = recorder.of("call_transferred")
    assert (transferred["to"], transferred["by"], transferred["attended"]) == ("1003", "1002", True)
    [consultation] = await cdrs(pbx, 1)  # Bob's call to Carol ended, merged into Alice's
    assert consultation["call_id"] == transferred["replaced_call_id"]
    assert (consultation["caller"], consultation["cause"]) == ("1002", "attended transfer")
    [live] = pbx.calls.live()
    assert live["parties"] == ["1001", "1002", "1003"]
    await carol.bye(carol_call)
    await alice.next("BYE")
    rows = await cdrs(pbx, 2)
    assert rows[0]["legs"] == ["1001", "1002", "1003"]
    assert pbx.calls.calls == {}


async def test_refer_replacing_an_unknown_dialog_is_481(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    alice, bob = await phones("1001", "1002")
    invite = await alice.dial("1002")
    bob_call = await bob.answer(await bob.incoming())
    await alice.answered(invite)
    host, port = server_of(pbx)
    refer_to = f"<sip:1003@{host}:{port}?Replaces=nope%3Bto-tag%3Da%3Bfrom-tag%3Db>"
    assert (await bob.refer(bob_call, refer_to)).status == 481
    # The call goes on.
    await alice.hears(bob, bob_call.media_port, b"\x75")


async def test_invite_with_replaces_takes_over_the_leg(pbx: Exchange, phones: PhoneFactory) -> None:
    alice, bob, carol = await phones("1001", "1002", "1003")
    invite = await alice.dial("1002")
    bob_call = await bob.answer(await bob.incoming())
    alice_call = await alice.answered(invite)
    # Carol's phone takes Bob's side of the call (RFC 3891 §3), referred there by Bob.
    dialog = bob_call.dialog.id
    value = f"{dialog.call_id};to-tag={dialog.local_tag};from-tag={dialog.remote_tag}"
    stranger = await carol.final(await carol.dial("1002", headers=[("Replaces", value)]))
    assert stranger.status == 403  # a phone with no part in the call cannot take it
    carol_call = await carol.call(
        "1002",
        headers=[("Replaces", value), ("Require", "replaces"),
                 ("Referred-By", "<sip:1002@127.0.0.1>")],
    )  # fmt: skip
    await bob.next("BYE")
    await carol.hears(alice, alice_call.media_port, b"\x81")
    await alice.hears(carol, carol_call.media_port, b"\x82")
    bad = await carol.final(
        await carol.dial("1002", headers=[("Replaces", "x;to-tag=1;from-tag=2")])
    )
    assert bad.status == 481


async def test_blind_transfer_to_a_ring_group(pbx: Exchange, phones: PhoneFactory) -> None:
    alice, bob, carol, dave = await phones("1001", "1004", "1002", "1003")
    invite = await alice.dial("1004")
    dave_call = await bob.answer(await bob.incoming())
    alice_call = await alice.answered(invite)
    assert (await bob.refer(dave_call, "600")).status == 202
    to_carol, to_dave = await carol.incoming(), await dave.incoming()
    assert to_carol.from_.uri.user == "1001"  # the members see who they will talk to
    # Rings (a phone that has said nothing gets no CANCEL: RFC 3261 §9.1).
    carol.respond(to_carol, 180, tag="c1")
    answered = await dave.answer(to_dave)
    await carol.next("CANCEL")
    assert (await bob.notifies_until_final())[-1] == "SIP/2.0 200 OK"
    await dave.hears(alice, alice_call.media_port, b"\x91")
    await alice.hears(dave, answered.media_port, b"\x92")


async def test_a_call_ended_while_ringing_leaves_no_phone_waiting(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    alice, bob = await phones("1001", "1002")
    invite = await alice.dial("1002")
    bob.respond(await bob.incoming(), 180, tag="b1")  # a CANCEL only after a provisional
    while (await alice.response(invite)).status != 180:  # the exchange has it
        pass
    await pbx.calls.stop()  # shutting down with a call still ringing
    assert (await alice.final(invite)).status == 503
    await bob.next("CANCEL")


async def test_a_2xx_without_a_usable_contact_fails_the_call(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    alice, bob = await phones("1001", "1002")
    invite = await alice.dial("1002")
    offered = await bob.incoming()
    bob.respond(offered, 200, bob.offer(), tag="b1", headers=[("Contact", "<:::>")])
    final = await alice.final(invite)
    assert final.status == 502  # no dialog can be made of that answer: not a hang
    assert pbx.calls.calls == {}


async def test_a_referrer_hanging_up_at_once_leaves_the_transfer_going(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    alice, bob, carol = await phones("1001", "1002", "1003")
    invite = await alice.dial("1002")
    bob_call = await bob.answer(await bob.incoming())
    alice_call = await alice.answered(invite)
    assert (await bob.refer(bob_call, "1003")).status == 202
    # Many phones hang up right after the 202; that ends only their own part.
    assert (await bob.bye(bob_call)).status == 200
    carol_call = await carol.answer(await carol.incoming())
    await carol.hears(alice, alice_call.media_port, b"\x93")
    await alice.hears(carol, carol_call.media_port, b"\x94")
    assert alice.received("BYE") == 0


async def test_one_transfer_at_a_time(pbx: Exchange, phones: PhoneFactory) -> None:
    alice, bob, carol, dave = await phones("1001", "1002", "1003", "1004")
    invite = await alice.dial("1002")
    bob_call = await bob.answer(await bob.incoming())
    await alice.answered(invite)
    assert (await bob.refer(bob_call, "1003")).status == 202
    await carol.incoming()
    second = await bob.refer(bob_call, "1004")
    assert second.status == 491  # the first transfer is still ringing Carol
    assert dave.received("INVITE") == 0


async def test_g722_is_relayed_when_both_sides_have_it(pbx: Exchange, phones: PhoneFactory) -> None:
    alice, bob = await phones("1001", "1002", answer_formats=(9, 101))
    invite = await alice.dial("1002", body=alice.offer(formats=(9, 0, 101)))
    offered = await bob.incoming()
    assert media_of(offered.body)[1] == "G722"  # the caller's first codec offered first
    bob_call = await bob.answer(offered)
    call = await alice.answered(invite)
    assert media_of(call.remote_sdp)[1] == "G722"
    packet = await bob.hears(alice, call.media_port, b"\x9a", pt=9)
    assert packet[1] & 0x7F == 9  # relayed as G.722, untouched
    await alice.hears(bob, bob_call.media_port, b"\x9b")


async def test_caller_is_answered_with_the_callees_codec(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    alice, bob = await phones("1001", "1002", answer_formats=(8, 101))
    invite = await alice.dial("1002", body=alice.offer(formats=(9, 0, 8, 101)))
    bob_call = await bob.answer(await bob.incoming())
    call = await alice.answered(invite)
    # Bob took PCMA; Alice offered it too, so both legs use it and nothing is transcoded.
    assert media_of(call.remote_sdp)[1] == "PCMA"
    await alice.hears(bob, bob_call.media_port, b"\x9c")


async def test_g722_call_transferred_to_a_g711_phone_is_renegotiated(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    alice, bob = await phones("1001", "1002", answer_formats=(9, 0, 101))
    (carol,) = await phones("1003", answer_formats=(0, 101))
    invite = await alice.dial("1002", body=alice.offer(formats=(9, 0, 101)))
    bob_call = await bob.answer(await bob.incoming())
    alice_call = await alice.answered(invite)
    assert media_of(alice_call.remote_sdp)[1] == "G722"
    assert (await bob.refer(bob_call, "1003")).status == 202
    offered = await carol.incoming()
    carol_call = await carol.answer(offered)  # Carol takes PCMU only
    # Alice is re-offered G.711 so that the bridge can transcode or relay.
    reoffer = await alice.next("INVITE")
    assert "G722" not in reoffer.body.decode()
    await carol.hears(alice, alice_call.media_port, b"\xa1")
    await alice.hears(carol, carol_call.media_port, b"\xa2")


async def test_held_g722_party_transferred_to_a_g711_phone_is_resumed_on_g711(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    """The re-offer of G.711 and the resume from hold cross: neither may bring G.722 back
    (which would leave nothing to bridge and end the call)."""
    alice, bob = await phones("1001", "1002", answer_formats=(9, 0, 101))
    (carol,) = await phones("1003", answer_formats=(0, 101))
    invite = await alice.dial("1002", body=alice.offer(formats=(9, 0, 101)))
    bob_call = await bob.answer(await bob.incoming())
    alice_call = await alice.answered(invite)
    assert (await bob.hold(bob_call)).status == 200
    held = await alice.next("INVITE")
    assert "sendonly" in held.body.decode()
    assert (await bob.refer(bob_call, "1003")).status == 202
    carol_call = await carol.answer(await carol.incoming())
    await carol.hears(alice, alice_call.media_port, b"\xa3")
    await alice.hears(carol, carol_call.media_port, b"\xa4")
    while alice.received("INVITE"):
        assert "G722" not in (await alice.next("INVITE")).body.decode()
    assert alice.received("BYE") == 0 and carol.received("BYE") == 0


def key_press(seq: int, timestamp: int, code: int, duration: int, end: bool, pt: int) -> bytes:
    """One RFC 4733 packet of a key press."""
    header = struct.pack("!BBHII", 0x80, pt, seq, timestamp, 0x4242)
    return header + struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)


async def test_rfc4733_digits_are_reported_and_relayed_under_the_callees_number(
    pbx: Exchange, phones: PhoneFactory
) -> None:
    """Alice's telephone-event is 96, Bob's 101 (each leg's offer numbers it): pbx reports
    Alice's digits on the bus and relays them to Bob re-labelled 101 (with the redundant
    end packets)."""
    recorder = Recorder(pbx)
    alice, bob = await phones("1001", "1002")
    invite = await alice.dial("1002", body=alice.offer(formats=(0, 96)))
    bob_call = await bob.answer(await bob.incoming())
    assert "telephone-event" in bob_call.invite.body.decode()
    call = await alice.answered(invite)
    await bob.hears(alice, call.media_port, b"\x01")  # the bridge is up
    seq = 100
    for n, code in enumerate((5, 11)):  # "5", "#"
        ts = 16000 * (n + 1)
        for duration, end in ((400, False), (800, False), (1200, True), (1200, True)):
            alice.rtp.sendto(key_press(seq, ts, code, duration, end, 96),
                             ("127.0.0.1", call.media_port))  # fmt: skip
            seq += 1
    relayed = []
    while len(relayed) < 8:
        packet = await bob.recv_rtp()
        if packet[12:] != b"\x01" * 160:
            relayed.append(packet)
    assert {p[1] & 0x7F for p in relayed} == {101}
    assert [p[12] for p in relayed] == [5] * 4 + [11] * 4
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(recorder.of("dtmf")) < 2 and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    digits = [(e["digit"], e["duration_ms"], e["leg"], e["party"], e["source"])
              for e in recorder.of("dtmf")]  # fmt: skip
    assert digits == [
        ("5", 150, "caller", "1001", "rfc4733"),
        ("#", 150, "caller", "1001", "rfc4733"),
    ]


async def test_info_dtmf_is_reported(pbx: Exchange, phones: PhoneFactory) -> None:
    recorder = Recorder(pbx)
    alice, bob = await phones("1001", "1002")
    invite = await alice.dial("1002")
    bob_call = await bob.answer(await bob.incoming())
    alice_call = await alice.answered(invite)
    relay = [("Content-Type", "application/dtmf-relay")]
    ok = await bob.request(bob_call, "INFO", relay, b"Signal=7\r\nDuration=250\r\n")
    assert ok.status == 200
    assert (await bob.request(bob_call, "INFO")).status == 200  # an empty keep-alive INFO
    other = [("Content-Type", "application/x-vendor")]
    assert (await bob.request(bob_call, "INFO", other, b"x")).status == 415
    [event] = recorder.of("dtmf")
    assert (event["digit"], event["duration_ms"], event["leg"], event["source"]) == (
        "7",
        250,
        "callee",
        "info",
    )
    # Alice's phone agreed telephone-event: the INFO digit reaches it as RFC 4733 events.
    events = []
    while not events or not events[-1][12 + 1] & 0x80:
        packet = await alice.recv_rtp()
        if packet[1] & 0x7F == 101:
            events.append(packet)
    assert {p[12] for p in events} == {7}
    assert int.from_bytes(events[-1][14:16], "big") == 2000  # 250 ms at 8 kHz
    assert len({p[4:8] for p in events}) == 1  # one event: one timestamp
    # application/dtmf (RFC 2976's other form): the key alone, from the caller's side.
    plain = [("Content-Type", "application/dtmf")]
    assert (await alice.request(alice_call, "INFO", plain, b"#")).status == 200
    [_, second] = recorder.of("dtmf")
    assert (second["digit"], second["leg"], second["source"]) == ("#", "caller", "info")
