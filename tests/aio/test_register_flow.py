"""REGISTER against an in-process exchange over loopback UDP and TCP."""

from __future__ import annotations

import pytest

from pbx.server import Exchange
from tests.support.sipclient import SipTestClient


def server_of(ex: Exchange, transport: str = "udp") -> tuple[str, int]:
    addr = ex.endpoint.listener(transport)
    assert addr is not None
    return addr.host, addr.port


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_register_with_digest(exchange: Exchange, transport: str, algorithm: str) -> None:
    async with SipTestClient(server_of(exchange, transport), transport) as ua:
        ok = await ua.register("1001", "pw1001", algorithm=algorithm)
        assert ok.status == 200
        contacts = ok.headers_named("Contact")
        assert len(contacts) == 1 and "expires=300" in contacts[0]
    assert exchange.registrar is not None
    [binding] = exchange.registrar.contacts("1001")
    assert binding.transport == transport
    assert exchange.store is not None
    assert [b.contact for b in await exchange.store.bindings()] == [binding.contact]
