"""Trunks live: one in-process exchange plays the provider, another (the clinic) registers
with it through a [[trunk]]; and `pbx trunks` against a running `pbx serve`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pbx import config as pbx_config
from pbx.events import Event, RegistrationChanged
from pbx.server import Exchange
from pbx.sip.aio import Peer
from pbx.sip.digest import ha1
from pbx.trunk import RetryPolicy, TrunkState
from tests.aio.test_register_flow import server_of
from tests.conftest import add_users
from tests.support.pbxproc import PbxProcess
from tests.support.phone import Phone
from tests.support.ports import free_port


def write(directory: Path, port: int, rtp_low: int, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pbx.toml"
    path.write_text(
        f"""data_dir = "data"
log_level = "debug"

[sip]
listen = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"]

[rtp]
port_range = [{rtp_low}, {rtp_low + 99}]

[registrar]
qualify_interval = 0
{extra}
"""
    )
    return path


def trunk_table(provider_port: int, password: str = "secret", **more: object) -> str:
    values = {"name": "provider", "host": "127.0.0.1", "port": provider_port,
              "username": "clinic", "password": password, "register": True, **more}  # fmt: skip
    lines = [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}".replace("'", '"')
             for k, v in values.items()]  # fmt: skip
    return "\n[[trunk]]\n" + "\n".join(lines) + "\n"


class Registrations:
    """The provider's registration events, to await instead of polling."""

    def __init__(self, exchange: Exchange) -> None:
        self.queue: asyncio.Queue[RegistrationChanged] = asyncio.Queue()
        self.unsubscribe = exchange.events.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, RegistrationChanged):
            self.queue.put_nowait(event)

    async def next(self, timeout: float = 5.0) -> RegistrationChanged:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[Exchange]:
    """The provider: an exchange with the user clinic / secret."""
    ex = Exchange(pbx_config.load(write(tmp_path / "provider", free_port(), 31000)))
    await ex.start()
    await add_users(ex, {"clinic": "secret"})
    yield ex
    await ex.stop()


def provider_port(provider: Exchange, transport: str = "udp") -> int:
    listener = provider.endpoint.listener(transport)
    assert listener is not None
    return listener.port


@pytest.fixture
def clinic_factory(tmp_path: Path) -> Callable[..., Exchange]:
    """Makes the clinic exchange (not started) with the given [[trunk]] text."""
    made: list[Exchange] = []

    def make(trunk: str, extra: str = "") -> Exchange:
        path = write(tmp_path / f"clinic{len(made)}", free_port(), 32000, extra + trunk)
        ex = Exchange(pbx_config.load(path))
        made.append(ex)
        return ex

    return make


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_clinic_registers_with_the_provider_and_unregisters_on_stop(
    provider: Exchange, clinic_factory: Callable[[str], Exchange], transport: str
) -> None:
    events = Registrations(provider)
    port = provider_port(provider, transport)
    clinic = clinic_factory(trunk_table(port, transport=transport))
    await clinic.start()
    try:
        registered = await events.next()
        assert (registered.aor, registered.action) == ("clinic", "registered")
        clinic_port = clinic.endpoint.listener(transport)
        assert clinic_port is not None
        suffix = ";transport=tcp" if transport == "tcp" else ""
        assert registered.contact == f"sip:clinic@127.0.0.1:{clinic_port.port}{suffix}"
        assert provider.registrar is not None
        [binding] = provider.registrar.contacts("clinic")
        assert binding.transport == transport
        await until(lambda: clinic.trunks.status()[0].state is TrunkState.REGISTERED)
        [row] = clinic.trunks.status_json()
        assert row["state"] == "registered" and row["last_status"] == 200
        assert 3500 <= row["expires_in"] <= 3600  # the provider's max_expires granted
        # Requests from the provider are recognised as coming from this trunk.
        local = clinic_port
        from_provider = Peer(transport, "127.0.0.1", port if transport == "udp" else 40000,
                             local)  # fmt: skip
        trunk = clinic.trunks.trunk_for(from_provider)
        assert trunk is not None and trunk.name == "provider"
        assert clinic.trunks.trunk_for(Peer("udp", "127.0.0.2", port, local)) is None
    finally:
        await clinic.stop()
    unregistered = await events.next()
    assert unregistered.action == "unregistered"
    assert provider.registrar.contacts("clinic") == []
    assert provider.store is not None and await provider.store.bindings() == []


async def test_wrong_password_fails_then_a_retry_succeeds(
    provider: Exchange, clinic_factory: Callable[[str], Exchange]
) -> None:
    events = Registrations(provider)
    clinic = clinic_factory(trunk_table(provider_port(provider), password="not-secret"))
    clinic.trunks.retry = RetryPolicy(first=0.3, maximum=0.3)
    await clinic.start()
    try:
        await until(lambda: clinic.trunks.status()[0].state is TrunkState.FAILED)
        status = clinic.trunks.status()[0]
        assert status.last_status == 401 and "wrong credentials" in status.last_reason
        assert status.expires_at is None and status.next_attempt_at is not None
        assert provider.registrar is not None
        assert provider.registrar.contacts("clinic") == []
        # The provider's side now takes that password: the next retry gets through.
        assert provider.store is not None
        realm = provider.config.realm
        await provider.store.update_password(
            "clinic", realm, ha1("MD5", "clinic", realm, "not-secret"),
            ha1("SHA-256", "clinic", realm, "not-secret"),
        )  # fmt: skip
        await provider.registrar.refresh_users(force=True)
        registered = await events.next()
        assert registered.action == "registered"
        await until(lambda: clinic.trunks.status()[0].state is TrunkState.REGISTERED)
    finally:
        await clinic.stop()


async def test_refresh_keeps_the_call_id_with_rising_cseq(
    tmp_path: Path, clinic_factory: Callable[[str], Exchange]
) -> None:
    # A provider that grants only 2 s: the clinic refreshes about every second.
    short = "min_expires = 1\nmax_expires = 2\ndefault_expires = 2\n"
    ex = Exchange(pbx_config.load(write(tmp_path / "short", free_port(), 31000, short)))
    await ex.start()
    try:
        await add_users(ex, {"clinic": "secret"})
        events = Registrations(ex)
        clinic = clinic_factory(trunk_table(provider_port(ex)))
        await clinic.start()
        try:
            assert (await events.next()).action == "registered"
            assert ex.registrar is not None
            [first] = ex.registrar.contacts("clinic")
            assert first.expires_at - first.registered_at == pytest.approx(2, abs=0.1)
            refreshed = await events.next(timeout=4.0)
            assert refreshed.action == "refreshed"
            [second] = ex.registrar.contacts("clinic")
            assert second.call_id == first.call_id
            assert second.cseq > first.cseq
            assert second.expires_at > first.expires_at
            assert clinic.trunks.status()[0].state is TrunkState.REGISTERED
        finally:
            await clinic.stop()
    finally:
        await ex.stop()


async def test_hostname_is_resolved_once_at_start(
    provider: Exchange, clinic_factory: Callable[[str], Exchange]
) -> None:
    events = Registrations(provider)
    clinic = clinic_factory(trunk_table(provider_port(provider), host="localhost"))
    await clinic.start()
    try:
        assert "127.0.0.1" in clinic.trunks.addresses["provider"]
        assert (await events.next()).action == "registered"
        local = clinic.endpoint.listener("udp")
        assert local is not None
        peer = Peer("udp", "127.0.0.1", provider_port(provider), local)
        trunk = clinic.trunks.trunk_for(peer)
        assert trunk is not None and trunk.host == "localhost"
    finally:
        await clinic.stop()


async def test_trunk_without_registration_is_listed_but_sends_nothing(
    provider: Exchange, clinic_factory: Callable[[str], Exchange]
) -> None:
    clinic = clinic_factory(trunk_table(provider_port(provider), register=False))
    await clinic.start()
    try:
        [row] = clinic.trunks.status_json()
        assert (row["state"], row["register"], row["last_reason"]) == (
            "unregistered", False, "registration off",
        )  # fmt: skip
        assert clinic.trunks.registration("provider") is None
        assert provider.endpoint.stats.requests == 0
        local = clinic.endpoint.listener("udp")
        assert local is not None
        peer = Peer("udp", "127.0.0.1", provider_port(provider), local)
        assert clinic.trunks.trunk_for(peer) is not None  # still recognised by address
    finally:
        await clinic.stop()
    assert provider.endpoint.stats.requests == 0  # no unregistration either


async def test_trunks_command_of_a_running_pbx(provider: Exchange, tmp_path: Path) -> None:
    events = Registrations(provider)
    port = free_port()
    path = write(tmp_path / "served", port, 33000, trunk_table(provider_port(provider)))
    proc = PbxProcess(path, port)
    await asyncio.to_thread(proc.start)
    try:
        assert (await events.next(timeout=10)).action == "registered"

        def registered() -> list[dict[str, object]]:
            rows: list[dict[str, object]] = proc.cli_json("trunks")
            return rows

        rows = await asyncio.to_thread(registered)
        deadline = asyncio.get_running_loop().time() + 5
        while rows[0]["state"] != "registered" and asyncio.get_running_loop().time() < deadline:
            rows = await asyncio.to_thread(registered)
        [row] = rows
        assert row["name"] == "provider" and row["host"] == "127.0.0.1"
        assert row["state"] == "registered" and row["last_status"] == 200
        assert isinstance(row["expires_in"], int) and row["expires_in"] > 3000
        table = (await asyncio.to_thread(proc.cli, "trunks")).stdout
        assert "STATE" in table and "registered" in table and "200 OK" in table
    finally:
        await asyncio.to_thread(proc.stop)
    assert (await events.next()).action == "unregistered"  # SIGTERM unregisters


async def test_calls_both_ways_between_two_exchanges(
    tmp_path: Path, clinic_factory: Callable[..., Exchange]
) -> None:
    """The clinic registers with the provider; the provider's 2000 calls the clinic's number
    (its hook sends it to the clinic's registration, the clinic's DID to 1002), and the
    clinic's 1001 dials out (9 + number), answered by the provider's 5551234. Audio passes
    both exchanges each way."""
    directory = tmp_path / "provider-with-hook"
    directory.mkdir()
    (directory / "routes.py").write_text(
        "def route(request):\n    return 'clinic' if request.dialled == '5551230000' else None\n"
    )
    hook = '[dialplan]\nhook = "routes.py:route"\n'
    provider = Exchange(pbx_config.load(write(directory, free_port(), 31000, hook)))
    await provider.start()
    await add_users(provider, {"clinic": "secret", "2000": "pw2000", "5551234": "pw5551234"})
    events = Registrations(provider)
    clinic = clinic_factory(
        trunk_table(provider_port(provider)),
        '[[outbound_route]]\nname = "out"\nprefix = "9"\nstrip = 1\ntrunk = "provider"\n'
        '[[did]]\nnumber = "5551230000"\ntarget = "1002"\n',
    )
    await clinic.start()
    await add_users(clinic, {"1001": "pw1001", "1002": "pw1002"})
    phones = []
    try:
        assert (await events.next()).action == "registered"

        async def phone(exchange: Exchange, ext: str) -> Phone:
            started = await Phone(server_of(exchange), ext, f"pw{ext}").start()
            phones.append(started)
            return started

        outside, far = await phone(provider, "2000"), await phone(provider, "5551234")
        alice, bob = await phone(clinic, "1001"), await phone(clinic, "1002")

        # Inbound: the provider's caller reaches 1002 through the DID.
        invite = await outside.dial("5551230000")
        ringing = await bob.incoming()
        assert ringing.from_.uri.user == "2000"  # type: ignore[union-attr]
        bob_call = await bob.answer(ringing)
        outside_call = await outside.answered(invite)
        await bob.hears(outside, outside_call.media_port, b"\x21")
        await outside.hears(bob, bob_call.media_port, b"\x22")
        await outside.bye(outside_call)
        await bob.next("BYE")

        # Outbound: 1001 dials 9 5551234; the provider challenges the clinic, which
        # answers with the trunk's credentials.
        invite = await alice.dial("95551234")
        far_call = await far.answer(await far.incoming())
        alice_call = await alice.answered(invite)
        await far.hears(alice, alice_call.media_port, b"\x23")
        await alice.hears(far, far_call.media_port, b"\x24")
        await alice.bye(alice_call)
        await far.next("BYE")
    finally:
        for started in phones:
            await started.stop()
        await clinic.stop()
        await provider.stop()
