"""Registrar behaviour over loopback sockets: auth corner cases, removal, qualify."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from pbx import config as pbx_config
from pbx.server import Exchange
from pbx.sip.digest import FailureThrottle
from pbx.sip.message import Request, build_response, parse_message
from pbx.sip.transaction import Timers
from tests.aio.test_register_flow import server_of
from tests.conftest import add_users
from tests.support.pbxproc import write_config
from tests.support.ports import free_port
from tests.support.sipclient import SipTestClient


def md5_challenge(resp_headers: list[str]) -> str:
    return next(v for v in resp_headers if "algorithm=MD5" in v)


async def test_unknown_user_and_wrong_password_look_the_same(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        wrong = await ua.register("1001", "not-the-password")
        unknown = await ua.register("1999", "whatever")
    assert wrong.status == unknown.status == 401
    assert [n for n, _ in wrong.headers] == [n for n, _ in unknown.headers]
    assert wrong.reason == unknown.reason
    assert exchange.registrar is not None
    assert exchange.registrar.contacts("1001") == []


async def test_stale_nonce_gets_stale_true(exchange: Exchange) -> None:
    registrar = exchange.registrar
    assert registrar is not None
    async with SipTestClient(server_of(exchange)) as ua:
        auth = await ua.challenge_answer("1001", "pw1001")
        registrar.clock = lambda: time.time() + 3600  # the nonce is now an hour old
        ua.send(ua.register_bytes("1001", authorization=auth))
        stale = await ua.recv()
        assert stale.status == 401
        assert all("stale=true" in v for v in stale.headers_named("WWW-Authenticate"))
        again = ua.authorization(md5_challenge(stale.headers_named("WWW-Authenticate")),
                                 "1001", "pw1001")  # fmt: skip
        ua.send(ua.register_bytes("1001", authorization=again))
        assert (await ua.recv()).status == 200


async def test_replayed_credentials_are_refused(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        auth = await ua.challenge_answer("1001", "pw1001")
        ua.send(ua.register_bytes("1001", authorization=auth))
        assert (await ua.recv()).status == 200
        ua.send(ua.register_bytes("1001", authorization=auth))  # same nc, new transaction
        assert (await ua.recv()).status == 401


async def test_repeated_failures_block_the_source(exchange: Exchange) -> None:
    registrar = exchange.registrar
    assert registrar is not None
    registrar.throttle = FailureThrottle(limit=3, window=60, block=300)
    async with SipTestClient(server_of(exchange)) as ua:
        for _ in range(3):
            assert (await ua.register("1001", "guess")).status == 401
        # Blocked: even the correct password gets no answer now.
        auth = await ua.challenge_answer("1001", "pw1001")
        ua.send(ua.register_bytes("1001", authorization=auth))
        with pytest.raises(TimeoutError):
            await ua.recv(timeout=0.5)
    assert registrar.throttle.blocked("127.0.0.1 1001", time.time())
    # Only that user from that address: another extension behind the same NAT still works.
    async with SipTestClient(server_of(exchange)) as other:
        assert (await other.register("1002", "pw1002")).status == 200


async def test_a_scan_over_many_users_blocks_the_address(exchange: Exchange) -> None:
    registrar = exchange.registrar
    assert registrar is not None
    registrar.source_throttle = FailureThrottle(limit=4, window=60, block=300)
    async with SipTestClient(server_of(exchange)) as ua:
        for ext in ("2001", "2002", "2003", "2004"):
            assert (await ua.register(ext, "guess")).status == 401
        ua.send(ua.register_bytes("1001"))  # not even a challenge now
        with pytest.raises(TimeoutError):
            await ua.recv(timeout=0.5)
    assert registrar.source_throttle.blocked("127.0.0.1", time.time())


async def test_cannot_register_someone_elses_extension(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        auth = await ua.challenge_answer("1001", "pw1002", auth_user="1002")
        ua.send(ua.register_bytes("1001", authorization=auth))
        assert (await ua.recv()).status == 403


async def test_unregister_removes_binding_from_memory_and_database(exchange: Exchange) -> None:
    assert exchange.registrar is not None and exchange.store is not None
    async with SipTestClient(server_of(exchange)) as ua:
        assert (await ua.register("1001", "pw1001")).status == 200
        assert len(await exchange.store.bindings()) == 1
        gone = await ua.register("1001", "pw1001", expires=0)
        assert gone.status == 200
        assert gone.headers_named("Contact") == []
    assert exchange.registrar.contacts("1001") == []
    assert await exchange.store.bindings() == []


async def test_options_lists_capabilities(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        host, port = ua.server
        ua.send(
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ua.local[0]}:{ua.local[1]};branch=z9hG4bKopt1\r\n"
            f"From: <sip:probe@{host}>;tag=1\r\nTo: <sip:{host}>\r\nCall-ID: opt1\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode()
        )
        resp = await ua.recv()
    assert resp.status == 200
    assert "REGISTER" in (resp.header("Allow") or "")
    assert resp.header("Accept") == "application/sdp"
    assert resp.header("Supported") is not None


async def test_qualify_marks_reachable_then_unreachable(exchange: Exchange) -> None:
    registrar = exchange.registrar
    assert registrar is not None and exchange.store is not None
    exchange.config = dataclasses.replace(
        exchange.config,
        registrar=dataclasses.replace(exchange.config.registrar, qualify_timeout=0.5),
    )
    ua = await SipTestClient(server_of(exchange)).open()
    try:
        assert (await ua.register("1001", "pw1001")).status == 200
        [binding] = registrar.contacts("1001")
        pending = asyncio.ensure_future(exchange.qualify(binding))
        ping = parse_message(await ua.recv_raw())
        assert isinstance(ping, Request)
        assert ping.method == "OPTIONS"
        ua.send(build_response(ping, 200).encode())
        assert await pending is True
        [updated] = registrar.contacts("1001")
        assert updated.reachable is True
        assert updated.rtt_ms is not None
    finally:
        await ua.close()
    assert await exchange.qualify(registrar.contacts("1001")[0]) is False
    assert registrar.contacts("1001")[0].reachable is False
    [stored] = await exchange.store.bindings()
    assert stored.reachable is False


async def test_expired_bindings_are_purged(exchange: Exchange) -> None:
    registrar = exchange.registrar
    assert registrar is not None and exchange.store is not None
    async with SipTestClient(server_of(exchange)) as ua:
        assert (await ua.register("1001", "pw1001", expires=60)).status == 200
    registrar.clock = lambda: time.time() + 61
    assert registrar.contacts("1001") == []  # expired bindings are never routed to
    await registrar.purge()
    assert list(registrar.all_bindings()) == []
    assert await exchange.store.bindings() == []


async def test_register_over_ipv6_loopback(tmp_path: Path) -> None:
    port = free_port("::1")
    path = write_config(tmp_path, port, "[registrar]\nqualify_interval = 0\n", host="::1")
    ex = Exchange(pbx_config.load(path))
    await ex.start()
    try:
        await add_users(ex, {"1001": "pw"})
        assert ex.registrar is not None
        for transport in ("udp", "tcp"):
            async with SipTestClient(("::1", port), transport, local=("::1", 0)) as ua:
                ok = await ua.register("1001", "pw", contact=f"<sip:1001@[::1]:{ua.local[1]}>")
                assert ok.status == 200
        sources = sorted(b.source for b in ex.registrar.contacts("1001"))
        assert all(s.startswith("[::1]:") for s in sources)
        assert len(sources) == 2
    finally:
        await ex.stop()


async def test_unanswered_and_answered_transactions_do_not_linger(exchange: Exchange) -> None:
    """Nothing stays in the transaction table: answered ones end after Timer J, requests
    from a blocked source (never answered) after 64*T1 (fast timers for the test)."""
    registrar = exchange.registrar
    assert registrar is not None
    exchange.endpoint.timers = Timers(t1=0.01, t2=0.04, t4=0.05)
    registrar.source_throttle = FailureThrottle(limit=1, window=60, block=300)
    async with SipTestClient(server_of(exchange)) as ua:
        assert (await ua.register("1001", "pw1001")).status == 200
        assert (await ua.register("1999", "guess")).status == 401  # now blocked
        ua.send(ua.register_bytes("1001"))
        with pytest.raises(TimeoutError):
            await ua.recv(timeout=0.2)
    table = exchange.endpoint._server_txns
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while table and loop.time() < deadline:  # noqa: ASYNC110 - no event marks timer expiry
        await asyncio.sleep(0.05)  # timers fire on the loop; nothing else to await
    assert table == {}


async def test_answers_to_nonces_never_issued_here_do_not_block_anyone(
    exchange: Exchange,
) -> None:
    """A spoofed sender never sees our nonces: its failures must not block the victim."""
    registrar = exchange.registrar
    assert registrar is not None
    registrar.throttle = FailureThrottle(limit=3, window=60, block=300)
    registrar.source_throttle = FailureThrottle(limit=3, window=60, block=300)
    forged = (
        'Digest username="1001", realm="pbx", nonce="junk", uri="sip:x", response="00", '
        'algorithm=MD5, qop=auth, nc=00000001, cnonce="c"'
    )
    async with SipTestClient(server_of(exchange)) as ua:
        for _ in range(10):
            ua.send(ua.register_bytes("1001", authorization=forged))
            assert (await ua.recv()).status == 401
        assert (await ua.register("1001", "pw1001")).status == 200


async def test_database_and_data_dir_are_private(exchange: Exchange) -> None:
    database = exchange.config.database
    assert database.stat().st_mode & 0o777 == 0o600
    assert exchange.config.data_dir.stat().st_mode & 0o777 == 0o700
    for suffix in ("-wal", "-shm"):
        side = database.with_name(database.name + suffix)
        assert side.stat().st_mode & 0o077 == 0


async def test_failed_commit_changes_nothing_and_answers_500(exchange: Exchange) -> None:
    """The database refuses the write (a trigger plays a full disk): the phone gets 500,
    and the binding is neither routable nor announced."""
    registrar, store = exchange.registrar, exchange.store
    assert registrar is not None and store is not None
    seen: list[object] = []
    exchange.events.subscribe(seen.append)
    await store._db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON bindings BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    async with SipTestClient(server_of(exchange)) as ua:
        assert (await ua.register("1001", "pw1001")).status == 500
        assert registrar.contacts("1001") == []
        assert seen == []
        await store._db.execute("DROP TRIGGER refuse")
        assert (await ua.register("1001", "pw1001")).status == 200
    assert len(registrar.contacts("1001")) == 1
    assert len(await store.bindings()) == 1
