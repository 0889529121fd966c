"""The live endpoint against hostile input: torture corpus, garbage, retransmissions, rport, TCP.

Everything goes over real loopback sockets to an in-process exchange. "No answer" is proved
without sleeping: after the message under test the phone sends a valid OPTIONS probe, and
because the endpoint handles datagrams (and stream messages) one at a time, in order, the
first thing to come back must be the probe's 200. Replies are read with a small raw reader
rather than the product's parser, so a reply our parser would refuse is still seen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import random
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pbx import config as pbx_config
from pbx.server import Exchange
from tests.conftest import add_users
from tests.support.pbxproc import write_config
from tests.support.ports import free_port
from tests.support.shared import TORTURE
from tests.support.sipclient import SipTestClient

INDEX: list[dict[str, Any]] = json.loads((TORTURE / "index.json").read_text())
BY_NAME = {e["name"]: e for e in INDEX}
NAMES = [e["name"] for e in INDEX]

# What the exchange answers to each torture message (None: nothing, by design).
ANSWER: dict[str, int | None] = {
    # RFC 4475 §3.1.1 valid messages: a new INVITE gets a proxy digest challenge (407), an
    # INVITE or BYE for a dialog we do not know 481 (§12.2.2), MESSAGE is a known method
    # the exchange does not allow (405), unknown methods 501, OPTIONS 200, REGISTER 401.
    "wsinv": 481, "intmeth": 501, "esc01": 407, "escnull": 401, "esc02": 501,
    "lwsdisp": 200, "longreq": 407, "dblreq": 401, "semiuri": 200, "transports": 200,
    "mpart01": 405, "unreason": None, "noreason": None,
    # §3.1.2 invalid messages: the precise error where the request can be answered.
    "badinv01": 400, "clerr": 400, "ncl": 400, "scalar02": 400, "scalarlg": None,
    "quotbal": 400, "ltgtruri": 400, "lwsruri": 400, "lwsstart": 400, "trws": 400,
    "escruri": 400, "baddate": 407, "regbadct": 401, "badaspec": 400, "baddn": 400,
    "badvers": 505, "mismatch01": 400, "mismatch02": 501, "bigcode": None,
    # §3.2-3.4 transaction layer, application layer, backward compatibility.
    "badbranch": 200, "insuf": None, "unkscm": 416, "novelsc": 416, "unksm2": 401,
    "bext01": 420, "invut": 407, "regaut01": 401, "multi01": 400, "mcl01": 400,
    "bcast": None, "zeromf": 200, "cparam01": 401, "cparam02": 401, "regescrt": 401,
    "sdp01": 407, "inv2543": 407,
    # RFC 5118 IPv6 messages.
    "ipv6-good": 401, "ipv6-bad": 400, "port-ambiguous": 401, "port-unambiguous": 401,
    "via-received-param-with-delim": 481, "via-received-param-no-delim": 200,
    "ipv6-in-sdp": 407, "mult-ip-in-header": 481, "mult-ip-in-sdp": 407,
    "ipv4-mapped-ipv6": 407, "ipv6-bug-abnf-3-colons": 200,
    "ipv6-correct-abnf-2-colons": 200,
}  # fmt: skip
# Why the ones with a choice answer as they do:
# - regbadct, unksm2: a registrar authenticates before it looks at To or Contact (RFC 3261
#   §10.3 steps 3-6), so the challenge comes first; baddate: Date is never used.
# - insuf lacks Call-ID, From and To, which every response must copy (§8.2.6.2).
# - scalarlg, bigcode (and the valid unreason, noreason, bcast) are responses: never answered.
# - badbranch ("z9hG4bK" alone) falls back to RFC 2543 matching and is served normally.

# Messages the endpoint refuses to parse (counted in `stats.malformed`).
MALFORMED = {
    "badinv01", "clerr", "ncl", "scalar02", "scalarlg", "quotbal", "ltgtruri", "lwsruri",
    "lwsstart", "trws", "escruri", "badaspec", "baddn", "badvers", "mismatch01",
    "mismatch02", "bigcode", "insuf", "multi01", "mcl01", "ipv6-bad",
}  # fmt: skip
RESPONSES = {n for n in NAMES if BY_NAME[n]["type"] == "response"}

# In one exchange these carry the branch, sent-by and method of an earlier message, so
# RFC 3261 §17.2.3 makes them retransmissions of it: they get its response again.
RETRANSMISSION_OF = {
    "novelsc": "unkscm",
    "cparam02": "cparam01",
    "regescrt": "escnull",
    "port-ambiguous": "ipv6-good",
    "port-unambiguous": "ipv6-good",
    "ipv6-correct-abnf-2-colons": "ipv6-bug-abnf-3-colons",
}

# Over TCP a framing error ends the connection after the error response (RFC 4475 ncl,
# mcl01; inv2543 has no Content-Length, which a stream cannot do without, RFC 3261 §18.3).
TCP_CLOSES = {"ncl": 400, "mcl01": 400, "inv2543": 400}
TCP_OWN_TEST = {"clerr", "dblreq"}


# the corpus on the wire


def on_the_wire(name: str) -> bytes:
    """The message as a UDP sender would put it on the wire (README of the corpus).

    RFC 5118 files use bare LF, two lack the blank line closing the header and two carry a
    wrong Content-Length: convert to CRLF, close the header section, recount.
    """
    entry = BY_NAME[name]
    data = (TORTURE / entry["file"]).read_bytes()
    if entry["line_endings"] == "CRLF":
        return data
    head, _, body = data.partition(b"\n\n")
    body = body.replace(b"\n", b"\r\n")
    lines = [
        b"Content-Length: %d" % len(body) if line.lower().startswith(b"content-length") else line
        for line in head.rstrip(b"\n").split(b"\n")
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def on_a_stream(name: str) -> bytes:
    """A stream has no datagram end: a header section must be closed (baddn is not)."""
    data = on_the_wire(name)
    return data if b"\r\n\r\n" in data else data + b"\r\n"


_VIA = re.compile(rb"^(?:via|v)[ \t]*:", re.IGNORECASE | re.MULTILINE)


def with_rport(data: bytes) -> bytes:
    """Add `;rport` to the first Via value, so the answer comes back to our socket.

    Without it RFC 3261 §18.2.2 sends the response to port 5060 (or the Via's port) of the
    source address, where no test can listen.
    """
    head_end = data.find(b"\r\n\r\n")
    head_end = len(data) if head_end < 0 else head_end
    match = _VIA.search(data, 0, head_end)
    if match is None:
        return data
    line = match.end()
    while (nl := data.find(b"\r\n", line, head_end)) >= 0 and data[nl + 2 : nl + 3] in b" \t":
        line = nl + 2  # a folded Via continues on this line
    end = data.find(b"\r\n", line, head_end)
    end = head_end if end < 0 else end
    comma = data.find(b",", match.end(), end)
    at = comma if comma >= 0 else end
    return data[:at] + b";rport" + data[at:]


def raw_values(data: bytes, *names: str) -> list[str]:
    """Header values of a raw message, by lower-case name, read without our parser."""
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0].decode("latin-1")
    head = re.sub(r"\r?\n[ \t]+", " ", head)
    out = []
    for line in head.split("\n")[1:]:
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() in names:
            out.append(value.strip())
    return out


# replies, read raw


@dataclass(frozen=True)
class Reply:
    raw: bytes
    status: int
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, raw: bytes) -> Reply:
        head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        version, status, _ = head[0].split(" ", 2)
        assert version == "SIP/2.0", head[0]
        pairs = tuple((n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in head[1:]))
        return cls(raw, int(status), pairs)

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def value(self, name: str) -> str:
        [value] = self.values(name)
        return value


def options(server: tuple[str, int], local: tuple[str, int], transport: str, call_id: str) -> bytes:
    host, port = server
    lhost, lport = local
    return (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {lhost}:{lport};branch=z9hG4bK{os.urandom(6).hex()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{lhost}>;tag={os.urandom(4).hex()}\r\n"
        f"To: <sip:{host}:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)


class UdpPhone:
    """A bare UDP socket talking to the exchange; it sends whatever bytes it is given."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> UdpPhone:
        self._sock.bind(self.local)
        self._sock.connect(self.server)
        self._sock.setblocking(False)
        self.local = self._sock.getsockname()[:2]
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self.queue), sock=self._sock
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._transport is not None
        self._transport.close()

    def send(self, data: bytes) -> None:
        assert self._transport is not None
        if data:
            self._transport.sendto(data)
        else:  # asyncio's sendto drops an empty datagram without a word
            self._sock.send(data)

    async def reply(self, timeout: float = 5.0) -> Reply:
        return Reply.parse(await asyncio.wait_for(self.queue.get(), timeout))

    async def replies_before_probe(self) -> list[Reply]:
        """Everything the exchange sent before it answered a fresh OPTIONS probe."""
        call_id = "probe-" + os.urandom(6).hex()
        self.send(options(self.server, self.local, "UDP", call_id))
        seen = []
        while (reply := await self.reply()).values("Call-ID") != [call_id]:
            seen.append(reply)
        assert reply.status == 200
        return seen


class TcpPhone:
    """One TCP connection to the exchange, with a reader that frames replies itself."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> TcpPhone:
        self._reader, self._writer = await asyncio.open_connection(*self.server)
        self.local = self._writer.get_extra_info("sockname")[:2]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._writer is not None
        self._writer.close()
        # The exchange may have reset the connection already; that is what some tests test.
        await asyncio.gather(self._writer.wait_closed(), return_exceptions=True)

    async def send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def read(self, n: int, timeout: float = 5.0) -> bytes:
        assert self._reader is not None
        return await asyncio.wait_for(self._reader.readexactly(n), timeout)

    async def reply(self, timeout: float = 5.0) -> Reply:
        assert self._reader is not None
        head = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), timeout)
        length = int(Reply.parse(head).value("Content-Length"))
        return Reply.parse(head + await self.read(length, timeout))

    async def replies_until_closed(self, timeout: float = 5.0) -> list[tuple[int, str, str]]:
        """(status, Call-ID, CSeq) of every reply until the exchange closes the connection."""
        seen = []
        while True:
            try:
                reply = await self.reply(timeout)
            except asyncio.IncompleteReadError as exc:
                partial = exc.partial
                break
            seen.append((reply.status, reply.value("Call-ID"), reply.value("CSeq")))
        assert partial == b""  # closed between two messages, not in the middle of one
        return seen

    async def replies_before_probe(self) -> list[Reply]:
        call_id = "probe-" + os.urandom(6).hex()
        await self.send(options(self.server, self.local, "TCP", call_id))
        seen = []
        while (reply := await self.reply()).values("Call-ID") != [call_id]:
            seen.append(reply)
        assert reply.status == 200
        return seen


# helpers


def server_of(ex: Exchange, transport: str = "udp") -> tuple[str, int]:
    addr = ex.endpoint.listener(transport)
    assert addr is not None
    return addr.host, addr.port


def counters(ex: Exchange) -> dict[str, int]:
    stats = ex.endpoint.stats
    return {
        f.name: getattr(stats, f.name) for f in dataclasses.fields(stats) if f.name != "by_reason"
    }


def moved(before: dict[str, int], ex: Exchange) -> dict[str, int]:
    """The counters that changed since `before`, and by how much."""
    after = counters(ex)
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def rejections(ex: Exchange) -> int:
    """Messages refused with a RemoteProtocolError (a parser crash is not counted here)."""
    return sum(v for k, v in ex.endpoint.stats.by_reason.items() if k.isdigit())


async def assert_phone_registers(ex: Exchange, transport: str = "udp") -> None:
    async with SipTestClient(server_of(ex, transport), transport) as ua:
        ok = await ua.register("1002", "pw1002")
    assert ok.status == 200
    assert ex.registrar is not None
    assert [b.source for b in ex.registrar.contacts("1002")] == [f"127.0.0.1:{ua.local[1]}"]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the event loop (the exchange runs in it) until `condition` holds.

    For conditions the endpoint offers no event for, such as "has read this TCP segment".
    """

    async def spin() -> None:
        while not condition():  # noqa: ASYNC110 - nothing to await: a pure yield per turn
            await asyncio.sleep(0)

    await asyncio.wait_for(spin(), timeout)


@asynccontextmanager
async def exchange_with(tmp_path: Path, sip_extra: str) -> AsyncIterator[Exchange]:
    """Like the `exchange` fixture, with extra keys in the [sip] table."""
    path = write_config(tmp_path, free_port(), "[registrar]\nqualify_interval = 0\n")
    path.write_text(path.read_text().replace("[sip]\n", f"[sip]\n{sip_extra}\n", 1))
    ex = Exchange(pbx_config.load(path))
    await ex.start()
    try:
        await add_users(ex, {"1001": "pw1001", "1002": "pw1002"})
        yield ex
    finally:
        await ex.stop()


def check_answer(name: str, data: bytes, reply: Reply) -> None:
    """The reply is the expected status, for this request, with what that status needs."""
    assert reply.status == ANSWER[name], reply.raw
    assert reply.value("Call-ID") in raw_values(data, "call-id", "i")
    if reply.status == 405 or (reply.status == 501 and name not in MALFORMED):
        # 405 must carry Allow (RFC 3261 §8.2.1); RFC 4475 intmeth wants it on 501 too.
        assert "REGISTER" in reply.value("Allow") and "OPTIONS" in reply.value("Allow")
    elif reply.status == 200:
        assert reply.values("Allow") and reply.values("Accept") and reply.values("Supported")
    elif reply.status == 401:
        assert any(v.startswith("Digest ") for v in reply.values("WWW-Authenticate"))
    elif reply.status == 420:  # bext01: Require features only; Proxy-Require is for proxies
        assert reply.value("Unsupported") == "nothingSupportsThis, nothingSupportsThisEither"


def expected_counters(name: str, transport: str = "udp") -> dict[str, int]:
    """How the counters move for one torture message followed by the OPTIONS probe."""
    probe = {"received": 1, "requests": 1, "sent": 1}
    if name in MALFORMED:
        mine = {"received": 1, "malformed": 1}
        if ANSWER[name] is not None:
            mine |= {"answered_errors": 1, "sent": 1}
    elif name in RESPONSES:
        mine = {"received": 1, "responses": 1, "unmatched_responses": 1}
    else:
        mine = {"received": 1, "requests": 1, "sent": 1}
    total = {k: probe.get(k, 0) + mine.get(k, 0) for k in probe.keys() | mine.keys()}
    if transport == "tcp":
        del total["received"]  # counts reads, and TCP may deliver both messages in one
    return total


# the torture corpus over UDP


def test_the_answer_table_covers_the_corpus() -> None:
    assert sorted(ANSWER) == sorted(NAMES) and len(NAMES) == 61
    rejects = {n for n in NAMES if BY_NAME[n]["parser"] == "reject"}
    assert rejects <= MALFORMED
    # Every strict reject that can be answered gets an error status.
    assert all(ANSWER[n] in (None, 400, 501, 505) for n in MALFORMED)


@pytest.mark.parametrize("name", NAMES)
async def test_torture_message_over_udp(exchange: Exchange, name: str) -> None:
    data = on_the_wire(name)
    if BY_NAME[name]["type"] == "request":
        data = with_rport(data)
    async with UdpPhone(server_of(exchange)) as phone:
        before = counters(exchange)
        phone.send(data)
        replies = await phone.replies_before_probe()
    if ANSWER[name] is None:
        assert replies == []
    else:
        [reply] = replies
        check_answer(name, data, reply)
    assert moved(before, exchange) == expected_counters(name, "udp")


async def test_whole_corpus_in_one_exchange_then_a_phone_registers(exchange: Exchange) -> None:
    answers: dict[str, list[bytes]] = {}
    before = counters(exchange)
    rejected = rejections(exchange)
    async with UdpPhone(server_of(exchange)) as phone:
        for name in NAMES:
            data = on_the_wire(name)
            phone.send(with_rport(data) if name not in RESPONSES else data)
            replies = await phone.replies_before_probe()
            answers[name] = [r.raw for r in replies]
            if name in RETRANSMISSION_OF:
                assert len(answers[name]) == 1, name
                assert answers[name] == answers[RETRANSMISSION_OF[name]], name
            elif ANSWER[name] is None:
                assert replies == [], name
            else:
                [reply] = replies
                check_answer(name, data, reply)
    requests = len(NAMES) - len(MALFORMED | RESPONSES) + len(NAMES)  # + one probe each
    assert moved(before, exchange) == {
        "received": 2 * len(NAMES),
        "requests": requests,
        "responses": len(RESPONSES - MALFORMED),
        "unmatched_responses": len(RESPONSES - MALFORMED),
        "malformed": len(MALFORMED),
        "answered_errors": sum(ANSWER[n] is not None for n in MALFORMED),
        "retransmissions_absorbed": len(RETRANSMISSION_OF),
        "sent": sum(len(a) for a in answers.values()) + len(NAMES),
    }
    # Every refusal was a RemoteProtocolError with a status, none a parser crash.
    assert rejections(exchange) - rejected == len(MALFORMED)
    await assert_phone_registers(exchange)


# the torture corpus over TCP


@pytest.mark.parametrize(
    "name", [n for n in NAMES if n not in TCP_CLOSES and n not in TCP_OWN_TEST]
)
async def test_torture_message_over_tcp(exchange: Exchange, name: str) -> None:
    data = on_a_stream(name)
    async with TcpPhone(server_of(exchange, "tcp")) as phone:
        before = counters(exchange)
        await phone.send(data)
        replies = await phone.replies_before_probe()
    if ANSWER[name] is None:
        assert replies == []
    else:
        [reply] = replies
        check_answer(name, data, reply)
    changed = moved(before, exchange)
    changed.pop("received")
    assert changed == expected_counters(name, "tcp")


@pytest.mark.parametrize("name", sorted(TCP_CLOSES))
async def test_tcp_framing_error_answers_then_closes(exchange: Exchange, name: str) -> None:
    data = on_a_stream(name)
    async with TcpPhone(server_of(exchange, "tcp")) as phone:
        await phone.send(data)
        [(status, call_id, _)] = await phone.replies_until_closed()
    assert status == TCP_CLOSES[name]
    assert call_id in raw_values(data, "call-id", "i")
    async with TcpPhone(server_of(exchange, "tcp")) as phone:
        assert await phone.replies_before_probe() == []
    await assert_phone_registers(exchange, "tcp")


async def test_tcp_content_length_beyond_the_data_waits_for_the_rest(exchange: Exchange) -> None:
    """clerr on a stream: Content-Length 9999, 154 octets sent; nothing until the rest comes."""
    data = on_a_stream("clerr")
    body = data.split(b"\r\n\r\n", 1)[1]
    async with TcpPhone(server_of(exchange, "tcp")) as phone:
        await phone.send(data)
        with pytest.raises(TimeoutError):
            await phone.reply(timeout=0.5)
        assert exchange.endpoint.stats.malformed == 0
        await phone.send(b"x" * (9999 - len(body)))
        reply = await phone.reply()  # the INVITE is whole now: challenged like any call
        assert reply.status == 407
        assert reply.value("Call-ID") in raw_values(data, "call-id", "i")
        assert await phone.replies_before_probe() == []


async def test_tcp_dblreq_is_two_messages_and_trailing_garbage(exchange: Exchange) -> None:
    """On a stream the octets after dblreq's REGISTER are the next message (RFC 3261 §18.3).

    They frame as an INVITE with a 150-octet body, then five stray octets `C\\r\\n\\r\\n`
    without Content-Length: the REGISTER gets its 401, the INVITE its 407, then the
    framing error closes the connection.
    """
    async with TcpPhone(server_of(exchange, "tcp")) as phone:
        await phone.send(on_a_stream("dblreq"))
        replies = await phone.replies_until_closed()
    assert [(status, cseq) for status, _, cseq in replies] == [
        (401, "8 REGISTER"),
        (407, "8 INVITE"),
    ]


# garbage datagrams


async def test_random_datagrams_are_refused_silently(exchange: Exchange) -> None:
    rng = random.Random(4475)
    batches, per_batch = 12, 25  # a probe after each batch keeps the socket buffer small
    count = batches * per_batch
    before, rejected = counters(exchange), rejections(exchange)
    async with UdpPhone(server_of(exchange)) as phone:
        for _ in range(batches):
            for _ in range(per_batch):
                # The first octet is not whitespace, so none of them is a keep-alive.
                first = rng.randrange(0x21, 0x100).to_bytes(1, "big")
                phone.send(first + rng.randbytes(rng.randrange(0, 1400)))
            assert await phone.replies_before_probe() == []
    assert moved(before, exchange) == {
        "received": count + batches,
        "malformed": count,
        "requests": batches,
        "sent": batches,
    }
    assert rejections(exchange) - rejected == count
    await assert_phone_registers(exchange)


def expect_for_prefix(prefix: bytes) -> int | None:
    """What a REGISTER from SipTestClient cut after `prefix` deserves.

    Until the CSeq line starts, a response cannot be built (it must copy CSeq): nothing.
    Once the whole CSeq is there the request is complete unless the cut line is broken: a
    header name without its colon, or an empty or cut Content-Length (400); a cut inside
    the CSeq makes the method not match (400). Cut anywhere else it is a REGISTER: 401.
    """
    if b"\r\nCSeq:" not in prefix:
        return None
    if b"\r\nCSeq: 1 REGISTER" not in prefix:
        return 400
    last = prefix.split(b"\r\n")[-1].rstrip(b"\r")
    if not last:
        return 401
    name, colon, value = last.partition(b":")
    if not colon or (name == b"Content-Length" and not value.strip()):
        return 400
    return 401


async def test_every_prefix_of_a_register(exchange: Exchange) -> None:
    server = server_of(exchange)
    async with UdpPhone(server) as phone:
        ua = SipTestClient(server, local=phone.local)  # only to write the REGISTER
        message = ua.register_bytes("1001")
        challenges: set[bytes] = set()
        before, rejected = counters(exchange), rejections(exchange)
        for cut in range(1, len(message)):
            phone.send(message[:cut])
            replies = await phone.replies_before_probe()
            expected = expect_for_prefix(message[:cut])
            assert [r.status for r in replies] == ([expected] if expected else []), message[:cut]
            for reply in replies:
                assert reply.value("Call-ID") == ua.call_id
                if reply.status == 401:
                    challenges.add(reply.raw)
    wanted = [expect_for_prefix(message[:cut]) for cut in range(1, len(message))]
    accepted = wanted.count(401)
    assert accepted > 0 and wanted.count(400) > 0 and wanted.count(None) > 0
    # Every complete prefix is the same transaction: one challenge, re-sent byte for byte.
    assert len(challenges) == 1
    probes = len(message) - 1
    assert moved(before, exchange) == {
        "received": 2 * probes,
        "requests": probes + accepted,
        "malformed": probes - accepted,
        "answered_errors": wanted.count(400),
        "retransmissions_absorbed": accepted - 1,
        "sent": probes + accepted + wanted.count(400),
    }
    assert rejections(exchange) - rejected == probes - accepted
    await assert_phone_registers(exchange)


async def test_keepalive_and_empty_datagrams_are_not_answered(exchange: Exchange) -> None:
    keepalives = [b"", b"\r\n", b"\r\n\r\n", b"\r\n" * 10]
    before = counters(exchange)
    async with UdpPhone(server_of(exchange)) as phone:
        for data in keepalives:
            phone.send(data)
        assert await phone.replies_before_probe() == []
    assert moved(before, exchange) == {
        "received": len(keepalives) + 1,
        "requests": 1,
        "sent": 1,
    }
    await assert_phone_registers(exchange)


async def test_latin1_display_name_gets_400(exchange: Exchange) -> None:
    """Header text is UTF-8 (RFC 3261 §25.1 TEXT-UTF8); Latin-1 octets make it malformed."""
    server = server_of(exchange)
    async with UdpPhone(server) as phone:
        ua = SipTestClient(server, local=phone.local)
        message = ua.register_bytes("1001").replace(b"From: <", b'From: "Jos\xe9 M\xfcller" <')
        before = counters(exchange)
        phone.send(message)
        [reply] = await phone.replies_before_probe()
    assert reply.status == 400
    assert reply.value("Call-ID") == ua.call_id
    # The From is copied octet for octet (RFC 3261 §8.2.6.2), even though it is not UTF-8.
    assert b'\r\nFrom: "Jos\xe9 M\xfcller" <sip:1001@' in reply.raw
    assert moved(before, exchange) == {
        "received": 2,
        "malformed": 1,
        "answered_errors": 1,
        "requests": 1,
        "sent": 2,
    }
    await assert_phone_registers(exchange)


# U+00B2 SUPERSCRIPT TWO passes str.isdigit() but is no DIGIT (RFC 3261 §25.1).
SUPERSCRIPT_TWO: dict[str, Callable[[bytes, int], bytes]] = {
    "Content-Length": lambda m, _: m.replace(b"Content-Length: 0", "Content-Length: ²".encode()),
    "CSeq": lambda m, _: m.replace(b"CSeq: 1 REGISTER", "CSeq: ² REGISTER".encode()),
    "Max-Forwards": lambda m, _: m.replace(b"Max-Forwards: 70", "Max-Forwards: ²".encode()),
    "Via port": lambda m, port: m.replace(b"1:%d;branch" % port, "1:²;branch".encode()),
}  # fmt: skip


@pytest.mark.parametrize("where", sorted(SUPERSCRIPT_TWO))
async def test_non_ascii_digit_gets_400(exchange: Exchange, where: str) -> None:
    server = server_of(exchange)
    async with UdpPhone(server) as phone:
        ua = SipTestClient(server, local=phone.local)
        message = SUPERSCRIPT_TWO[where](ua.register_bytes("1001"), phone.local[1])
        assert message.count("²".encode()) == 1
        before = counters(exchange)
        phone.send(message)
        replies = await phone.replies_before_probe()
    assert [r.status for r in replies] == [400], where
    assert moved(before, exchange) == {
        "received": 2,
        "malformed": 1,
        "answered_errors": 1,
        "requests": 1,
        "sent": 2,
    }


async def test_non_ascii_digit_in_expires_gets_400_not_500(exchange: Exchange) -> None:
    """The registrar, too, must refuse `Expires: ²` as a bad request, not fail on it."""
    async with SipTestClient(server_of(exchange)) as ua:
        ua.send(ua.register_bytes("1001", expires=None, extra=("Expires: ²",)))
        challenge = await ua.recv()
        assert challenge.status == 401
        offer = next(v for v in challenge.headers_named("WWW-Authenticate") if "algorithm=MD5" in v)
        auth = ua.authorization(offer, "1001", "pw1001")
        ua.send(ua.register_bytes("1001", expires=None, authorization=auth, extra=("Expires: ²",)))
        final = await ua.recv()
    assert final.status == 400
    assert exchange.registrar is not None and exchange.registrar.contacts("1001") == []


def padded_options(server: tuple[str, int], local: tuple[str, int], total: int) -> bytes:
    """An OPTIONS of exactly `total` octets, padded with a body."""
    head = options(server, local, "UDP", "padded-" + os.urandom(4).hex())
    body = total - len(head) + 1  # "Content-Length: 0" loses its "0" ...
    body -= len(str(body))  # ... and gains the digits of the real length
    message = head.replace(b"Content-Length: 0", b"Content-Length: %d" % body) + b"x" * body
    assert len(message) == total
    return message


async def test_largest_ipv4_datagram_is_within_the_limit(exchange: Exchange) -> None:
    """65,507 octets is all a UDP/IPv4 datagram can carry: under max_message, so served."""
    server = server_of(exchange)
    async with UdpPhone(server) as phone:
        before = counters(exchange)
        phone.send(padded_options(server, phone.local, 65535 - 20 - 8))
        reply = await phone.reply()
    assert reply.status == 200
    assert moved(before, exchange) == {"received": 1, "requests": 1, "sent": 1}
    # A 70,000-octet datagram cannot even be sent over IPv4: the kernel refuses it, so the
    # default max_message (65,535) is never what stops a UDP datagram.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        pytest.raises(OSError, match="too long"),
    ):
        sock.sendto(b"x" * 70_000, server)


async def test_oversized_datagram_is_dropped_and_counted(tmp_path: Path) -> None:
    """Over `max_message` a datagram is dropped unread: no answer, counted as oversized."""
    limit = 2048
    async with exchange_with(tmp_path, f"max_message = {limit}") as ex:
        server = server_of(ex)
        async with UdpPhone(server) as phone:
            before = counters(ex)
            phone.send(padded_options(server, phone.local, limit + 1))
            assert await phone.replies_before_probe() == []
            assert moved(before, ex) == {"received": 2, "oversized": 1, "requests": 1, "sent": 1}
            assert ex.endpoint.stats.by_reason == {"oversized": 1}
            phone.send(padded_options(server, phone.local, limit))
            assert (await phone.reply()).status == 200
        await assert_phone_registers(ex)


# retransmissions


async def test_retransmitted_challenge_is_identical(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        register = ua.register_bytes("1001")
        before = counters(exchange)
        ua.send(register)
        first = await ua.recv_raw()
        ua.send(register)
        second = await ua.recv_raw()
    # A second pass through the registrar would have made a new nonce and To tag.
    assert first == second
    challenge = Reply.parse(first)
    assert challenge.status == 401 and ";tag=" in challenge.value("To")
    assert moved(before, exchange) == {
        "received": 2,
        "requests": 2,
        "retransmissions_absorbed": 1,
        "sent": 2,
    }


async def test_retransmitted_register_is_processed_once(exchange: Exchange) -> None:
    assert exchange.registrar is not None
    async with SipTestClient(server_of(exchange)) as ua:
        ua.send(ua.register_bytes("1001"))
        challenge = await ua.recv()
        offer = next(v for v in challenge.headers_named("WWW-Authenticate") if "MD5" in v)
        auth = ua.authorization(offer, "1001", "pw1001")
        register = ua.register_bytes("1001", authorization=auth)
        before = counters(exchange)
        ua.send(register)
        first = await ua.recv_raw()
        [binding] = exchange.registrar.contacts("1001")
        ua.send(register)
        second = await ua.recv_raw()
    assert first == second
    ok = Reply.parse(first)
    assert ok.status == 200 and ";tag=" in ok.value("To")
    assert moved(before, exchange) == {
        "received": 2,
        "requests": 2,
        "retransmissions_absorbed": 1,
        "sent": 2,
    }
    # Still the one binding, untouched by the copy (same registration time and CSeq).
    assert exchange.registrar.contacts("1001") == [binding]
    assert exchange.store is not None
    assert [b.contact for b in await exchange.store.bindings()] == [binding.contact]


# rport and received (RFC 3581, RFC 3261 §18.2)


def via_params(via: str) -> dict[str, str | None]:
    _, *params = via.split(";")
    return {
        k.strip(): (v.strip() if eq else None) for k, eq, v in (p.partition("=") for p in params)
    }


async def test_rport_response_goes_to_the_real_source(exchange: Exchange) -> None:
    server = server_of(exchange)
    async with UdpPhone(server) as phone:
        message = options(server, phone.local, "UDP", "rport-" + os.urandom(4).hex())
        message = message.replace(f"127.0.0.1:{phone.local[1]};".encode(), b"192.0.2.99:5999;")
        assert b"Via: SIP/2.0/UDP 192.0.2.99:5999;branch=" in message
        phone.send(message)
        reply = await phone.reply()  # arriving here at all proves where it was sent
    assert reply.status == 200
    top = reply.values("Via")[0]
    assert top.startswith("SIP/2.0/UDP 192.0.2.99:5999;")
    params = via_params(top)
    assert params["received"] == "127.0.0.1"
    assert params["rport"] == str(phone.local[1])


async def test_without_rport_response_goes_to_the_via_port(exchange: Exchange) -> None:
    """RFC 3261 §18.2.2: source address plus the sent-by port; `received` added, no rport."""
    server = server_of(exchange)
    async with UdpPhone(server) as phone:
        message = options(server, phone.local, "UDP", "norport-" + os.urandom(4).hex())
        sent_by = f"UDP 127.0.0.1:{phone.local[1]};".encode()
        message = message.replace(sent_by, sent_by.replace(b"127.0.0.1", b"192.0.2.99"))
        message = message.replace(b";rport", b"")
        phone.send(message)
        reply = await phone.reply()
    assert reply.status == 200
    top = reply.values("Via")[0]
    assert top.startswith(f"SIP/2.0/UDP 192.0.2.99:{phone.local[1]};")
    params = via_params(top)
    assert params["received"] == "127.0.0.1" and "rport" not in params


# TCP framing


async def test_tcp_keepalive_ping_gets_pong(exchange: Exchange) -> None:
    async with TcpPhone(server_of(exchange, "tcp")) as phone:
        await phone.send(b"\r\n\r\n")
        assert await phone.read(2) == b"\r\n"
        await phone.send(b"\r\n\r\n\r\n\r\n")
        assert await phone.read(4) == b"\r\n\r\n"
        assert await phone.replies_before_probe() == []


async def test_tcp_two_messages_in_one_write(exchange: Exchange) -> None:
    server = server_of(exchange, "tcp")
    async with TcpPhone(server) as phone:
        first = options(server, phone.local, "TCP", "first")
        second = options(server, phone.local, "TCP", "second")
        before = counters(exchange)
        await phone.send(first + second)
        replies = [await phone.reply(), await phone.reply()]
    assert [(r.status, r.value("Call-ID")) for r in replies] == [(200, "first"), (200, "second")]
    assert moved(before, exchange) == {"received": 1, "requests": 2, "sent": 2}


async def test_tcp_one_message_split_across_writes(exchange: Exchange) -> None:
    server = server_of(exchange, "tcp")
    async with TcpPhone(server) as phone:
        message = options(server, phone.local, "TCP", "split").replace(
            b"Content-Length: 0\r\n\r\n", b"Content-Length: 5\r\n\r\nhello"
        )
        cuts = [0, 9, message.index(b"\r\n\r\n") + 2, len(message) - 2, len(message)]
        before = counters(exchange)
        for n, (start, end) in enumerate(itertools.pairwise(cuts), 1):
            await phone.send(message[start:end])
            # Wait until the exchange has read this piece, so each is a read of its own.
            await until(lambda n=n: exchange.endpoint.stats.received - before["received"] == n)
        reply = await phone.reply()
    assert (reply.status, reply.value("Call-ID")) == (200, "split")
    assert moved(before, exchange) == {"received": len(cuts) - 1, "requests": 1, "sent": 1}


async def test_tcp_message_before_a_framing_error_is_still_served(exchange: Exchange) -> None:
    """A whole message that arrived before the bad one was framed: it must be answered.

    Then the framing error gets its own 400 (addressed to the bad message) and the close.
    """
    server = server_of(exchange, "tcp")
    ncl = on_a_stream("ncl")
    [ncl_call_id] = raw_values(ncl, "call-id", "i")
    async with TcpPhone(server) as phone:
        await phone.send(options(server, phone.local, "TCP", "good-one") + ncl)
        replies = await phone.replies_until_closed()
    assert replies == [(200, "good-one", "1 OPTIONS"), (400, ncl_call_id, "0 INVITE")]


async def test_tcp_framing_error_split_across_writes_is_answered(exchange: Exchange) -> None:
    """ncl sent in two pieces still gets its 400 before the close (RFC 4475 §3.1.2.3)."""
    ncl = on_a_stream("ncl")
    async with TcpPhone(server_of(exchange, "tcp")) as phone:
        before = counters(exchange)
        await phone.send(ncl[:100])
        await until(lambda: exchange.endpoint.stats.received > before["received"])
        await phone.send(ncl[100:])
        replies = await phone.replies_until_closed()
    assert replies == [(400, *raw_values(ncl, "call-id", "i"), *raw_values(ncl, "cseq"))]
