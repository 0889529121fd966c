"""Calls through a trunk: a loopback "provider" (a phone of tests/support on the trunk's
address, not registered) takes our outbound calls, challenges them, checks the caller ID we
present, and delivers inbound calls to a DID. The live exchange-to-exchange version, with
registration, is in test_trunk.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pbx import config as pbx_config
from pbx.server import Exchange
from pbx.sip.digest import digest_response, ha1, parse_credentials
from pbx.sip.message import Request
from pbx.sip.uri import SipUri, parse_name_addr
from tests.aio.test_call_features import cdrs
from tests.aio.test_register_flow import server_of
from tests.conftest import add_users
from tests.support.pbxproc import write_config
from tests.support.phone import Phone
from tests.support.ports import free_port

TRUNK = """
[registrar]
qualify_interval = 0

[[trunk]]
name = "provider"
host = "127.0.0.1"
port = {port}
username = "clinic"
password = "secret"
caller_id = "+15551230000"

[[outbound_route]]
name = "outside"
prefix = "9"
strip = 1
prepend = "+1"
trunk = "provider"
min_length = 8

[[did]]
number = "+15551230000"
target = "1002"

# The on-call line: closed all week, so it always forwards out through the trunk.
[[hours]]
name = "never"

[[time_route]]
number = "300"
hours = "never"
open = "1001"
closed = "trunk:provider:+15550001111"

[[did]]
number = "+15551230001"
target = "300"
"""
REALM = "provider.example"


@pytest.fixture
async def clinic(tmp_path: Path) -> AsyncIterator[tuple[Exchange, Phone]]:
    """The clinic's exchange with users 1001, 1002, and the provider at its trunk address."""
    port = free_port()
    provider_port = port
    while provider_port == port:  # a port just freed may be handed out again
        provider_port = free_port(both=False)
    path = write_config(tmp_path, port, TRUNK.format(port=provider_port))
    exchange = Exchange(pbx_config.load(path))
    await exchange.start()
    await add_users(exchange, {"1001": "pw1001", "1002": "pw1002"})
    provider = Phone(server_of(exchange), "+15559876543", "")
    await provider.start(register=False, port=provider_port)
    yield exchange, provider
    await provider.stop()
    await exchange.stop()


def challenge(provider: Phone, invite: Request) -> str:
    nonce = os.urandom(8).hex()
    provider.respond(
        invite, 407, tag="prov",
        headers=[("Proxy-Authenticate",
                  f'Digest realm="{REALM}", nonce="{nonce}", algorithm=MD5, qop="auth"')],
    )  # fmt: skip
    return nonce


def check_credentials(invite: Request, nonce: str, password: str = "secret") -> None:
    creds = parse_credentials(invite.header("Proxy-Authorization") or "")
    assert (creds.username, creds.realm, creds.nonce) == ("clinic", REALM, nonce)
    key = ha1("MD5", "clinic", REALM, password)
    expected = digest_response(
        key, "MD5", "INVITE", creds.uri, nonce, "auth", creds.nc or "", creds.cnonce or ""
    )
    assert creds.response == expected


def user_of(value: str | None) -> str:
    uri = parse_name_addr(value or "").uri
    assert isinstance(uri, SipUri)
    return uri.user or ""


async def test_outbound_call_through_the_trunk(clinic: tuple[Exchange, Phone]) -> None:
    exchange, provider = clinic
    alice = await Phone(server_of(exchange), "1001", "pw1001").start()
    try:
        invite = await alice.dial("95551234567")
        first = await provider.incoming()
        # The route's strip and prepend, and our caller ID, not the extension.
        assert isinstance(first.uri, SipUri)
        assert (first.uri.user, first.uri.host, first.uri.port) == (
            "+15551234567",
            "127.0.0.1",
            provider.local[1],
        )
        assert user_of(first.header("From")) == "+15551230000"
        assert user_of(first.header("P-Asserted-Identity")) == "+15551230000"
        assert user_of(first.header("To")) == "+15551234567"
        nonce = challenge(provider, first)
        await provider.next("ACK")
        second = await provider.incoming()
        assert second.call_id == first.call_id and second.cseq.number == first.cseq.number + 1
        check_credentials(second, nonce)
        far_end = await provider.answer(second)
        call = await alice.answered(invite)
        await provider.hears(alice, call.media_port, b"\x13")
        await alice.hears(provider, far_end.media_port, b"\x14")
        assert (await provider.bye(far_end)).status == 200
        await alice.next("BYE")
    finally:
        await alice.stop()
    [cdr] = await cdrs(exchange, 1)
    assert (cdr["route"], cdr["trunk"], cdr["callee"], cdr["dialled"]) == (
        "trunk",
        "provider",
        "+15551234567",
        "95551234567",
    )
    assert (cdr["answered_by"], cdr["hangup_by"], cdr["disposition"]) == (
        "+15551234567",
        "callee",
        "ANSWERED",
    )


async def test_wrong_trunk_credentials_give_the_caller_503(
    clinic: tuple[Exchange, Phone],
) -> None:
    exchange, provider = clinic
    alice = await Phone(server_of(exchange), "1001", "pw1001").start()
    try:
        invite = await alice.dial("95551234567")
        challenge(provider, await provider.incoming())
        challenge(provider, await provider.incoming())  # refused again: not stale
        assert (await alice.final(invite)).status == 503
    finally:
        await alice.stop()
    [cdr] = await cdrs(exchange, 1)
    assert cdr["disposition"] == "FAILED"


async def test_emergency_number_goes_to_the_trunk_unchanged(
    clinic: tuple[Exchange, Phone],
) -> None:
    exchange, provider = clinic
    alice = await Phone(server_of(exchange), "1001", "pw1001").start()
    try:
        # "911" would match no route, and "9911" the outside route as "+1911": both are
        # emergency calls and go out as 911.
        for dialled in ("911", "9911"):
            invite = await alice.dial(dialled)
            emergency = await provider.incoming()
            assert isinstance(emergency.uri, SipUri)
            assert emergency.uri.user == "911", dialled
            assert user_of(emergency.header("P-Asserted-Identity")) == "+15551230000"
            provider.reject(emergency, 503)
            assert (await alice.final(invite)).status == 503
    finally:
        await alice.stop()


async def test_inbound_did_rings_its_extension(clinic: tuple[Exchange, Phone]) -> None:
    exchange, provider = clinic
    bob = await Phone(server_of(exchange), "1002", "pw1002").start()
    try:
        # No challenge: the provider is known by its address and port.
        invite = await provider.dial("+15551230000")
        incoming = await bob.incoming()
        assert user_of(incoming.header("From")) == "+15559876543"  # the outside caller
        bob_call = await bob.answer(incoming)
        call = await provider.answered(invite)
        await bob.hears(provider, call.media_port, b"\x15")
        await provider.hears(bob, bob_call.media_port, b"\x16")
        await bob.bye(bob_call)
        await provider.next("BYE")
    finally:
        await bob.stop()
    [cdr] = await cdrs(exchange, 1)
    assert (cdr["caller"], cdr["callee"], cdr["dialled"], cdr["trunk"]) == (
        "+15559876543",
        "1002",
        "+15551230000",
        "provider",
    )


async def test_after_hours_a_did_is_forwarded_to_the_on_call_number(
    clinic: tuple[Exchange, Phone],
) -> None:
    # A call from outside for the on-call DID, while its hours are closed, goes out again
    # through the trunk to the on-call number: the one way a trunk call may leave.
    exchange, provider = clinic
    inbound = await provider.dial("+15551230001")
    first = await provider.incoming()
    assert first.call_id != inbound.call_id
    assert isinstance(first.uri, SipUri) and first.uri.user == "+15550001111"
    nonce = challenge(provider, first)
    await provider.next("ACK")
    second = await provider.incoming()
    check_credentials(second, nonce)
    await provider.answer(second)
    caller = await provider.answered(inbound)
    await provider.hears(provider, caller.media_port, b"\x17")  # through the bridge
    assert (await provider.bye(caller)).status == 200
    await provider.next("BYE")  # the forwarded leg ends with it
    [cdr] = await cdrs(exchange, 1)
    assert (cdr["dialled"], cdr["route"], cdr["trunk"]) == ("+15551230001", "trunk", "provider")
    assert (cdr["callee"], cdr["disposition"]) == ("+15550001111", "ANSWERED"), cdr


async def test_inbound_calls_cannot_reach_unknown_dids_or_go_out_again(
    clinic: tuple[Exchange, Phone],
) -> None:
    _, provider = clinic
    for dialled in ("+15550000000", "95551234567", "1001"):
        final = await provider.final(await provider.dial(dialled))
        assert final.status == 404, dialled


async def test_a_stranger_is_challenged_like_any_phone(
    clinic: tuple[Exchange, Phone],
) -> None:
    exchange, _ = clinic
    stranger = Phone(server_of(exchange), "+15550001111", "")
    await stranger.start(register=False)
    try:
        invite = stranger._invite("+15551230000", stranger.offer(), 1, "c1", "t1", ())
        stranger.send(invite)
        assert (await stranger.final(invite)).status == 407
    finally:
        await stranger.stop()


async def test_an_outside_party_cannot_transfer_out_through_the_trunk(
    clinic: tuple[Exchange, Phone],
) -> None:
    """Toll fraud by REFER: the outside caller asks pbx to transfer it to another outside
    number. Its target is routed as a DID (where it could have dialled in), never out."""
    exchange, provider = clinic
    bob = await Phone(server_of(exchange), "1002", "pw1002").start()
    try:
        invite = await provider.dial("+15551230000")
        await bob.answer(await bob.incoming())
        call = await provider.answered(invite)
        assert (await provider.refer(call, "95551234567")).status == 404
        assert (await provider.refer(call, "1001")).status == 404  # not a DID either
        assert provider.received("INVITE") == 0  # nothing came out through the trunk
    finally:
        await bob.stop()
