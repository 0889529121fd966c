"""TCP connections cannot pin the server's resources: idle timeout, per-address cap."""

from __future__ import annotations

import asyncio

from pbx.server import Exchange
from tests.aio.test_register_flow import server_of


async def test_idle_connection_is_closed(exchange: Exchange) -> None:
    exchange.endpoint.tcp_idle_timeout = 0.3
    reader, writer = await asyncio.open_connection(*server_of(exchange, "tcp"))
    try:
        writer.write(b"\r\n\r\n")  # a keep-alive is traffic: answered, timer restarts
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then silence: closed
    finally:
        writer.close()
    assert exchange.endpoint.stats.tcp_idle_closed == 1


async def test_connections_per_address_are_capped(exchange: Exchange) -> None:
    exchange.endpoint.tcp_max_per_address = 2
    host, port = server_of(exchange, "tcp")
    kept = [await asyncio.open_connection(host, port) for _ in range(2)]
    reader, writer = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the third is refused
    writer.close()
    assert exchange.endpoint.stats.tcp_refused == 1
    for reader, writer in kept:  # the first two are served as before
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        writer.close()
