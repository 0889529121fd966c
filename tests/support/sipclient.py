"""A small SIP user agent for tests (our own; the real peers live in tests/interop)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from pbx.sip.digest import digest_response, ha1, parse_credentials
from pbx.sip.framing import Ping, StreamFramer
from pbx.sip.message import Response, parse_message
from pbx.sip.uri import split_outside_quotes


def _challenge_fields(value: str) -> dict[str, str]:
    _, _, rest = value.partition(" ")
    fields: dict[str, str] = {}
    for item in split_outside_quotes(rest, ","):
        name, _, val = item.partition("=")
        fields[name.strip().lower()] = val.strip().strip('"')
    return fields


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)


@dataclass
class SipTestClient:
    server: tuple[str, int]
    transport: str = "udp"
    user_agent: str = "pbx-tests"
    local: tuple[str, int] = ("127.0.0.1", 0)
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    _udp: asyncio.DatagramTransport | None = None
    _writer: asyncio.StreamWriter | None = None
    _reader_task: asyncio.Task[None] | None = None
    call_id: str = field(default_factory=lambda: os.urandom(8).hex())
    cseq: int = 0
    from_tag: str = field(default_factory=lambda: os.urandom(4).hex())
    nc: int = 0

    async def open(self) -> SipTestClient:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self.queue), local_addr=self.local, remote_addr=self.server
            )
            self._udp = transport
            self.local = transport.get_extra_info("sockname")[:2]
        else:
            reader, writer = await asyncio.open_connection(*self.server)
            self._writer = writer
            self.local = writer.get_extra_info("sockname")[:2]
            self._reader_task = asyncio.create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        while data := await reader.read(65536):
            for item in framer.feed(data):
                self.queue.put_nowait(b"\r\n" if isinstance(item, Ping) else item)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def __aenter__(self) -> SipTestClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def send(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data)
        else:
            assert self._writer is not None
            self._writer.write(data)

    async def recv_raw(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def recv(self, timeout: float = 5.0) -> Response:
        while True:
            data = await self.recv_raw(timeout)
            if data.strip():
                msg = parse_message(data, datagram=self.transport == "udp")
                assert isinstance(msg, Response), msg
                return msg

    def register_bytes(
        self,
        user: str,
        expires: int | None = 300,
        contact: str | None = None,
        authorization: str | None = None,
        branch: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> bytes:
        self.cseq += 1
        host, port = _bracket(self.server[0]), self.server[1]
        lhost, lport = _bracket(self.local[0]), self.local[1]
        contact = contact or f"<sip:{user}@{lhost}:{lport};transport={self.transport}>"
        lines = [
            f"REGISTER sip:{host}:{port} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {lhost}:{lport};"
            f"branch={branch or 'z9hG4bK' + os.urandom(6).hex()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{host}>;tag={self.from_tag}",
            f"To: <sip:{user}@{host}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: {contact}",
            f"User-Agent: {self.user_agent}",
        ]
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines.extend(extra)
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    def authorization(
        self, challenge: str, user: str, password: str, method: str = "REGISTER"
    ) -> str:
        fields = _challenge_fields(challenge)
        algorithm = fields.get("algorithm", "MD5")
        uri = f"sip:{_bracket(self.server[0])}:{self.server[1]}"
        self.nc += 1
        nc = f"{self.nc:08x}"
        cnonce = os.urandom(4).hex()
        key = ha1(algorithm, user, fields["realm"], password)
        response = digest_response(key, algorithm, method, uri, fields["nonce"], "auth", nc, cnonce)
        value = (
            f'Digest username="{user}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
            f'uri="{uri}", response="{response}", algorithm={algorithm}, qop=auth, '
            f'nc={nc}, cnonce="{cnonce}", opaque="{fields.get("opaque", "")}"'
        )
        parse_credentials(value)  # what we send must be what the server parses
        return value

    async def challenge_answer(
        self, user: str, password: str, auth_user: str | None = None, algorithm: str = "MD5"
    ) -> str:
        """REGISTER `user` unauthenticated; return the Authorization answering the 401."""
        self.send(self.register_bytes(user))
        challenge = await self.recv()
        assert challenge.status == 401, challenge
        offers = challenge.headers_named("WWW-Authenticate")
        offer = next(v for v in offers if f"algorithm={algorithm}" in v)
        return self.authorization(offer, auth_user or user, password)

    async def register(
        self,
        user: str,
        password: str,
        expires: int | None = 300,
        contact: str | None = None,
        algorithm: str = "MD5",
    ) -> Response:
        """REGISTER, answer the challenge for `algorithm`, return the final response."""
        self.send(self.register_bytes(user, expires, contact))
        challenge = await self.recv()
        if challenge.status != 401:
            return challenge
        offers = [
            v for v in challenge.headers_named("WWW-Authenticate") if f"algorithm={algorithm}" in v
        ]
        assert offers, challenge.headers_named("WWW-Authenticate")
        auth = self.authorization(offers[0], user, password)
        self.send(self.register_bytes(user, expires, contact, auth))
        return await self.recv()
