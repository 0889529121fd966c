"""Calls give back everything they took: a thousand calls in a row through an in-process
exchange (twenty at a time), answered or not, leave the RTP port pool full, no more open
file descriptors than before, no call tasks or call state, and one CDR per call."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from pbx.server import Exchange
from pbx.sip.message import Message, Request, Response, build_response, parse_message
from pbx.sip.sdp import parse_sdp
from tests.aio.test_calls import answer_with, media_socket, rtp, sdp
from tests.aio.test_register_flow import server_of
from tests.conftest import add_users
from tests.support.sipclient import SipTestClient

LINES = 20  # calls in progress at once
CALLER, CALLER_PASSWORD = "1001", "pw1001"
RTP_EVERY = 4  # every 4th answered call sends RTP both ways through the bridge
RTP_PACKETS = 3


class Inbox:
    """A phone's incoming SIP messages, retransmissions dropped (a transaction layer would
    absorb them: on a busy loop pbx may resend a 200 before the ACK reaches it)."""

    def __init__(self, ua: SipTestClient) -> None:
        self.ua = ua
        self._seen: set[tuple[str, int, str, str]] = set()

    async def next(self) -> Message:
        while True:
            message = parse_message(await self.ua.recv_raw())
            kind = str(message.status) if isinstance(message, Response) else message.method
            key = (message.call_id, message.cseq.number, str(message.cseq.method), kind)
            if key not in self._seen:
                self._seen.add(key)
                return message

    async def response(self, status: int, method: str = "INVITE") -> Response:
        message = await self.next()
        assert isinstance(message, Response), message
        assert (message.status, message.cseq.method) == (status, method), message
        return message

    async def request(self, method: str) -> Request:
        message = await self.next()
        assert isinstance(message, Request), message
        assert message.method == method, message
        return message


@dataclass
class Line:
    """A caller (1001) and a callee phone registered as its own extension, with an RTP
    socket each: one line carries one call at a time."""

    caller: SipTestClient
    callee: SipTestClient
    extension: str
    caller_rtp: socket.socket
    callee_rtp: socket.socket
    caller_inbox: Inbox = field(init=False)
    callee_inbox: Inbox = field(init=False)

    def __post_init__(self) -> None:
        self.caller_inbox, self.callee_inbox = Inbox(self.caller), Inbox(self.callee)


@dataclass
class Dialing:
    """The caller's side of one call: what its requests must repeat."""

    line: Line
    call_id: str
    branch: str = ""  # the authenticated INVITE's: CANCEL and the non-2xx ACK reuse it

    def request(self, method: str, cseq: int, branch: str, *, to_tag: str = "",
                in_dialog: bool = False, body: bytes = b"", auth: str = "") -> bytes:  # fmt: skip
        """`in_dialog`: sent to pbx's Contact; else to the callee's URI (INVITE, CANCEL and
        the ACK of a failure, which belong to the INVITE's transaction)."""
        ua, callee = self.line.caller, self.line.extension
        (host, port), (lhost, lport) = ua.server, ua.local
        uri = f"sip:pbx@{host}:{port}" if in_dialog else f"sip:{callee}@{host}:{port}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {lhost}:{lport};branch={branch};rport",
            f"From: <sip:{CALLER}@{host}>;tag=from-{self.call_id}",
            f"To: <sip:{callee}@{host}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            "Max-Forwards: 70",
            f"Contact: <sip:{CALLER}@{lhost}:{lport}>",
        ]
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines).encode() + body

    async def invite(self) -> None:
        """INVITE, ACK its 407, INVITE with credentials; returns at its 100 Trying."""
        line = self.line
        offer = sdp(line.caller_rtp.getsockname()[1])
        line.caller.send(self.request("INVITE", 1, f"z9hG4bK1{self.call_id}", body=offer))
        challenge = await line.caller_inbox.response(407)
        ack = self.request("ACK", 1, f"z9hG4bK1{self.call_id}", to_tag=challenge.to.tag or "")
        line.caller.send(ack)
        offered = next(
            v for v in challenge.headers_named("Proxy-Authenticate") if "algorithm=MD5" in v
        )
        auth = line.caller.authorization(offered, CALLER, CALLER_PASSWORD, method="INVITE")
        self.branch = f"z9hG4bK2{self.call_id}"
        line.caller.send(self.request("INVITE", 2, self.branch, body=offer, auth=auth))
        await line.caller_inbox.response(100)

    def ack_failure(self, final: Response) -> None:
        """The ACK of a non-2xx final response: the INVITE's transaction (§17.1.1.3)."""
        self.line.caller.send(self.request("ACK", 2, self.branch, to_tag=final.to.tag or ""))


async def rtp_from(sock: socket.socket, source: tuple[str, int]) -> bytes:
    """The next datagram from pbx's media port `source`. Others are dropped, as a phone
    would: the loopback is shared with other tests, whose RTP may reach our port."""
    loop = asyncio.get_running_loop()
    while True:
        data, sender = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 5)
        if sender == source:
            return data


async def answered_call(line: Line, number: int) -> None:
    """Ringing, answered, RTP both ways (every RTP_EVERY-th call), the caller hangs up."""
    dialing = Dialing(line, f"answered-{number}")
    await dialing.invite()
    incoming = await line.callee_inbox.request("INVITE")
    line.callee.send(build_response(incoming, 180, to_tag="callee").encode())
    answer_with(line.callee, line.extension, incoming, sdp(line.callee_rtp.getsockname()[1], "0"),
                tag="callee")  # fmt: skip
    await line.caller_inbox.response(180)
    ok = await line.caller_inbox.response(200)
    tag = ok.to.tag or ""
    line.caller.send(dialing.request("ACK", 2, f"z9hG4bK3{dialing.call_id}", to_tag=tag,
                                     in_dialog=True))  # fmt: skip
    await line.callee_inbox.request("ACK")
    if number % RTP_EVERY == 0:
        caller_side = ("127.0.0.1", parse_sdp(ok.body).media[0].port)
        callee_side = ("127.0.0.1", parse_sdp(incoming.body).media[0].port)
        for seq in range(1, RTP_PACKETS + 1):
            payload = number.to_bytes(4, "big") * 40
            line.caller_rtp.sendto(rtp(seq, payload), caller_side)
            assert (await rtp_from(line.callee_rtp, callee_side))[12:] == payload
            line.callee_rtp.sendto(rtp(seq, payload[::-1]), callee_side)
            assert (await rtp_from(line.caller_rtp, caller_side))[12:] == payload[::-1]
    line.caller.send(dialing.request("BYE", 3, f"z9hG4bK4{dialing.call_id}", to_tag=tag,
                                     in_dialog=True))  # fmt: skip
    await line.caller_inbox.response(200, "BYE")
    bye = await line.callee_inbox.request("BYE")
    line.callee.send(build_response(bye, 200).encode())


async def cancelled_call(line: Line, number: int) -> None:
    """The callee rings; the caller CANCELs: 200 and 487 to it, CANCEL to the callee."""
    dialing = Dialing(line, f"cancelled-{number}")
    await dialing.invite()
    incoming = await line.callee_inbox.request("INVITE")
    line.callee.send(build_response(incoming, 180, to_tag="callee").encode())
    await line.caller_inbox.response(180)
    line.caller.send(dialing.request("CANCEL", 2, dialing.branch))
    await line.caller_inbox.response(200, "CANCEL")
    dialing.ack_failure(await line.caller_inbox.response(487))
    cancel = await line.callee_inbox.request("CANCEL")
    line.callee.send(build_response(cancel, 200, to_tag="callee").encode())
    line.callee.send(build_response(incoming, 487, to_tag="callee").encode())
    await line.callee_inbox.request("ACK")


async def busy_call(line: Line, number: int) -> None:
    """The callee answers 486; pbx ACKs it and passes 486 on to the caller."""
    dialing = Dialing(line, f"busy-{number}")
    await dialing.invite()
    incoming = await line.callee_inbox.request("INVITE")
    line.callee.send(build_response(incoming, 486, to_tag="callee").encode())
    await line.callee_inbox.request("ACK")
    dialing.ack_failure(await line.caller_inbox.response(486))


CallScript = Callable[[Line, int], Awaitable[None]]


@pytest.fixture
async def lines(exchange: Exchange) -> AsyncIterator[list[Line]]:
    """LINES lines whose callees (extensions 3000...) are registered with the exchange."""
    extensions = [str(3000 + i) for i in range(LINES)]
    await add_users(exchange, {ext: f"pw{ext}" for ext in extensions})
    made: list[Line] = []
    try:
        for extension in extensions:
            line = Line(
                await SipTestClient(server_of(exchange)).open(),
                await SipTestClient(server_of(exchange)).open(),
                extension,
                media_socket(),
                media_socket(),
            )
            made.append(line)
            assert (await line.callee.register(extension, f"pw{extension}")).status == 200
        yield made
    finally:
        for line in made:
            await line.caller.close()
            await line.callee.close()
            line.caller_rtp.close()
            line.callee_rtp.close()


def open_fds() -> dict[str, str]:
    """This process's open file descriptors: number -> what it is (socket:[inode], a path)."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return fds


@dataclass
class Before:
    """What the process held before the calls."""

    fds: dict[str, str]
    tasks: set[asyncio.Task[object]]

    @classmethod
    def now(cls) -> Before:
        # Garbage from earlier tests (a socket nobody closed) is closed now, not while the
        # calls run: the count after them would come out lower than this one.
        gc.collect()
        return cls(open_fds(), asyncio.all_tasks())


async def run_calls(lines: list[Line], scripts: list[CallScript]) -> None:
    """Call `scripts[n](line, n)` for every n, each line running its calls one after the other."""
    queue = list(enumerate(scripts))[::-1]

    async def work(line: Line) -> None:
        while queue:
            number, script = queue.pop()
            await script(line, number)

    await asyncio.gather(*(work(line) for line in lines))


async def assert_all_given_back(exchange: Exchange, before: Before) -> None:
    """Every call's state, task, CDR write, RTP port and socket is gone (polled: the end of a
    call closes its sockets on the loop's next turns, and writes its CDR just after)."""
    calls = exchange.calls
    assert calls is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5

    def given_back() -> bool:
        return (
            not calls.calls
            and not calls._tasks
            and not exchange._cdr_writes
            and calls.pool.free == calls.pool.size
            and len(open_fds()) == len(before.fds)
            and asyncio.all_tasks() == before.tasks
        )

    while not given_back() and loop.time() < deadline:  # noqa: ASYNC110 - nothing to await
        await asyncio.sleep(0.02)
    assert calls.calls == {}
    assert calls._tasks == set()
    assert calls._by_branch == {}
    assert calls._by_dialog == {}
    assert exchange._cdr_writes == set()
    assert (calls.pool.free, calls.pool.size) == (calls.pool.size, calls.pool.size)
    fds = open_fds()
    new = {fd: what for fd, what in fds.items() if before.fds.get(fd) != what}
    assert len(fds) == len(before.fds), f"opened by the calls and never closed: {new}"
    assert asyncio.all_tasks() == before.tasks


async def test_a_thousand_answered_calls_give_back_their_resources(
    exchange: Exchange, lines: list[Line]
) -> None:
    assert exchange.store is not None
    # Taken once the exchange and the test's own phones are up: a call opens four sockets
    # (RTP and RTCP for each side) and must close them all.
    before = Before.now()
    await run_calls(lines, [answered_call] * 1000)
    await assert_all_given_back(exchange, before)
    records = await exchange.store.cdrs()
    assert len(records) == 1000
    assert Counter(r["disposition"] for r in records) == {"ANSWERED": 1000}
    assert {(r["caller"], r["hangup_by"]) for r in records} == {(CALLER, "caller")}
    assert {r["callee"] for r in records} == {line.extension for line in lines}


async def test_calls_ended_by_cancel_and_busy_give_back_their_resources(
    exchange: Exchange, lines: list[Line]
) -> None:
    assert exchange.store is not None
    before = Before.now()
    await run_calls(lines, [cancelled_call, busy_call] * 150)
    await assert_all_given_back(exchange, before)
    records = await exchange.store.cdrs()
    assert Counter((r["disposition"], r["status"]) for r in records) == {
        ("CANCELLED", 487): 150,
        ("BUSY", 486): 150,
    }
