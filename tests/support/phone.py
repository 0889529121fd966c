"""A scriptable phone for call-feature tests: registers, places and answers calls, sends
in-dialog requests, and has an RTP socket. Our own SIP code builds its dialogs (the
sans-I/O `Dialog`); the real phones of tests/interop are the independent check.

The phone answers the routine requests of a call by itself, the way a desk phone does:
NOTIFY, BYE and OPTIONS with 200, a re-INVITE with 200 and an SDP mirroring its direction,
CANCEL with 200 and 487. Everything it receives is also queued by method (`next`), and new
INVITEs wait for the test (`incoming`, then `answer`, `ring` or `reject`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from pbx.sip.dialog import Dialog, dialog_id_for_request
from pbx.sip.message import Message, Request, Response, build_response, parse_message
from pbx.sip.sdp import SessionDescription, parse_sdp
from pbx.sip.uri import parse_uri
from tests.support.sipclient import SipTestClient

TIMEOUT = 5.0
_FORMATS = {0: "PCMU/8000", 8: "PCMA/8000", 9: "G722/8000", 96: "telephone-event/8000",
            101: "telephone-event/8000"}  # fmt: skip


def sdp(port: int, direction: str = "sendrecv", formats: Sequence[int] = (0, 8, 101)) -> bytes:
    lines = [
        "v=0", f"o=- {port} 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, formats))}",
        *(f"a=rtpmap:{pt} {_FORMATS[pt]}" for pt in formats),
    ]  # fmt: skip
    lines += [f"a=fmtp:{pt} 0-16" for pt in formats if pt in (96, 101)]
    lines.append(f"a={direction}")
    return ("\r\n".join(lines) + "\r\n").encode()


def media_of(body: bytes) -> tuple[int, str, str]:
    """The port, first codec name and direction an SDP body names for its audio."""
    sd = parse_sdp(body)
    media = sd.media[0]
    first = next(iter(media.rtpmaps.values()))
    return media.port, first.encoding, sd.direction_for(media).value


def rtp_packet(seq: int, payload: bytes, pt: int = 0, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + payload


@dataclass(eq=False)
class Call:
    """One dialog of the phone's, with what the far end (the exchange) said in SDP."""

    dialog: Dialog
    remote_sdp: bytes
    invite: Request
    response: Response | None = None

    @property
    def media_port(self) -> int:
        """The exchange's RTP port for this call."""
        return media_of(self.remote_sdp)[0]

    def replaces(self) -> str:
        """This dialog as a Replaces value (RFC 3891), written from the exchange's view."""
        did = self.dialog.id
        return f"{did.call_id};to-tag={did.remote_tag};from-tag={did.local_tag}"


@dataclass(eq=False)
class Phone:
    server: tuple[str, int]
    ext: str
    password: str
    client: SipTestClient = field(init=False)
    rtp: socket.socket = field(init=False)
    answer_formats: Sequence[int] = (0, 8, 101)
    _responses: dict[tuple[str, str], asyncio.Queue[Response]] = field(
        default_factory=lambda: defaultdict(asyncio.Queue)
    )
    _requests: dict[str, asyncio.Queue[Request]] = field(
        default_factory=lambda: defaultdict(asyncio.Queue)
    )
    _task: asyncio.Task[None] | None = None
    _dialogs: dict[object, Dialog] = field(default_factory=dict)
    _pending: dict[str, Request] = field(default_factory=dict)  # branch -> INVITE not answered

    async def start(self, register: bool = True, port: int = 0) -> Phone:
        """Open the phone's sockets (SIP on `port`, 0: any) and register it."""
        self.client = await SipTestClient(self.server, local=("127.0.0.1", port)).open()
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.setblocking(False)
        if register:
            ok = await self.client.register(self.ext, self.password)
            assert ok.status == 200, ok
        self._task = asyncio.create_task(self._dispatch())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.client.close()
        self.rtp.close()

    @property
    def rtp_port(self) -> int:
        return int(self.rtp.getsockname()[1])

    @property
    def local(self) -> tuple[str, int]:
        host, port = self.client.local
        return str(host), int(port)

    def offer(self, direction: str = "sendrecv", formats: Sequence[int] = (0, 8, 101)) -> bytes:
        return sdp(self.rtp_port, direction, formats)

    # receiving

    async def _dispatch(self) -> None:
        while True:
            data = await self.client.queue.get()
            if not data.strip():
                continue
            message: Message = parse_message(data)
            if isinstance(message, Response):
                key = (message.vias[0].branch or "", message.cseq.method)
                self._responses[key].put_nowait(message)
                continue
            self._auto(message)
            self._requests[message.method].put_nowait(message)

    def _auto(self, request: Request) -> None:
        method = request.method
        if method in ("NOTIFY", "BYE", "OPTIONS"):
            self.respond(request, 200)
        elif method == "CANCEL":
            self.respond(request, 200)
            invite = self._pending.pop(request.vias[0].branch or "", None)
            if invite is not None:
                self.respond(invite, 487)
        elif method == "INVITE" and request.to.tag is not None:
            _, _, direction = media_of(request.body) if request.body else (0, "", "sendrecv")
            mirrored = {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)
            body = self.offer(mirrored, self.formats_for(request.body))
            self.respond(request, 200, body)
        elif method == "INVITE":
            self._pending[request.vias[0].branch or ""] = request

    def formats_for(self, offer: bytes) -> list[int]:
        """Our answer's payload types: the offered ones we take, in our order."""
        if not offer:
            return list(self.answer_formats)
        offered = set(parse_sdp(offer).media[0].formats)
        return [pt for pt in self.answer_formats if str(pt) in offered]

    async def next(self, method: str, timeout: float = TIMEOUT) -> Request:
        """The next request of `method` the phone received (auto-answered or not)."""
        return await asyncio.wait_for(self._requests[method].get(), timeout)

    def received(self, method: str) -> int:
        """How many requests of `method` are waiting in the queue unread."""
        return self._requests[method].qsize()

    async def response(self, request: Request, timeout: float = TIMEOUT) -> Response:
        """The next response to `request` (provisional or final)."""
        key = (request.vias[0].branch or "", request.method)
        return await asyncio.wait_for(self._responses[key].get(), timeout)

    async def final(self, request: Request, timeout: float = TIMEOUT) -> Response:
        while (response := await self.response(request, timeout)).status < 200:
            pass
        return response

    # sending

    def send(self, message: Request | Response) -> None:
        self.client.send(message.encode())

    def respond(
        self, request: Request, status: int, body: bytes = b"", tag: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Response:  # fmt: skip
        extra = list(headers)
        if 100 < status < 300:
            extra.append(("Contact", f"<sip:{self.ext}@127.0.0.1:{self.local[1]}>"))
        if body:
            extra.append(("Content-Type", "application/sdp"))
        response = build_response(request, status, to_tag=tag, body=body, headers=extra)
        self.send(response)
        return response

    def _invite(
        self, number: str, body: bytes, cseq: int, call_id: str, tag: str,
        headers: Sequence[tuple[str, str]],
    ) -> Request:  # fmt: skip
        host, port = self.server
        lhost, lport = self.local
        lines = [
            ("Via", f"SIP/2.0/UDP {lhost}:{lport};branch=z9hG4bK{os.urandom(6).hex()};rport"),
            ("From", f"<sip:{self.ext}@{host}>;tag={tag}"),
            ("To", f"<sip:{number}@{host}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} INVITE"),
            ("Max-Forwards", "70"),
            ("Contact", f"<sip:{self.ext}@{lhost}:{lport}>"),
            *headers,
        ]
        if body:
            lines.append(("Content-Type", "application/sdp"))
        return Request.build("INVITE", parse_uri(f"sip:{number}@{host}:{port}"), lines, body)

    def _ack_failure(self, invite: Request, response: Response) -> None:
        """RFC 3261 §17.1.1.3: the ACK for a non-2xx final, in the INVITE's transaction."""
        headers = [
            ("Via", invite.header("Via") or ""),
            ("From", invite.header("From") or ""),
            ("To", response.header("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{invite.cseq.number} ACK"),
            ("Max-Forwards", "70"),
        ]
        self.send(Request.build("ACK", invite.uri, headers))

    async def dial(
        self, number: str, body: bytes | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> Request:
        """Send an authenticated INVITE for `number` (answering the 407); the INVITE sent.
        Its responses are read with `response`/`final`, or `answered`."""
        body = self.offer() if body is None else body
        call_id, tag = os.urandom(8).hex(), os.urandom(4).hex()
        first = self._invite(number, body, 1, call_id, tag, headers)
        self.send(first)
        challenge = await self.response(first)
        if challenge.status != 407:
            if challenge.status >= 200:  # for final() and answered() to read
                self._responses[(first.vias[0].branch or "", "INVITE")].put_nowait(challenge)
            return first
        self._ack_failure(first, challenge)
        offered = next(
            v for v in challenge.headers_named("Proxy-Authenticate") if "algorithm=MD5" in v
        )
        auth = self.client.authorization(offered, self.ext, self.password, method="INVITE")
        invite = self._invite(number, body, 2, call_id, tag,
                              [*headers, ("Proxy-Authorization", auth)])  # fmt: skip
        self.send(invite)
        return invite

    async def answered(self, invite: Request, timeout: float = TIMEOUT) -> Call:
        """Wait for the 200 to `invite`, ACK it; the call (fails on any other final)."""
        final = await self.final(invite, timeout)
        if final.status >= 300:
            self._ack_failure(invite, final)
        assert final.status == 200, (final.status, final.reason)
        dialog = Dialog.from_uac(invite, final)
        self.send(dialog.create_ack(local_address=self.local, transport="UDP"))
        return Call(dialog, final.body, invite, final)

    async def call(
        self, number: str, body: bytes | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> Call:
        return await self.answered(await self.dial(number, body, headers))

    async def incoming(self, timeout: float = TIMEOUT) -> Request:
        """The next new INVITE for this phone (not yet answered)."""
        while True:
            invite = await self.next("INVITE", timeout)
            if invite.to.tag is None:
                return invite

    async def answer(self, invite: Request, body: bytes | None = None, ring: bool = True) -> Call:
        """180 (if `ring`) then 200 with our SDP; returns once the exchange's ACK came."""
        tag = os.urandom(4).hex()
        if ring:
            self.respond(invite, 180, tag=tag)
        if body is None:
            body = self.offer(formats=self.formats_for(invite.body))
        ok = self.respond(invite, 200, body, tag=tag)
        self._pending.pop(invite.vias[0].branch or "", None)
        dialog = Dialog.from_uas(invite, ok)
        while True:
            ack = await self.next("ACK")
            if dialog_id_for_request(ack) == dialog.id:
                break
        return Call(dialog, invite.body, invite, ok)

    def ring(self, invite: Request) -> None:
        self.respond(invite, 180, tag=os.urandom(4).hex())

    def reject(self, invite: Request, status: int = 486) -> None:
        self._pending.pop(invite.vias[0].branch or "", None)
        self.respond(invite, status, tag=os.urandom(4).hex())

    async def request(
        self, call: Call, method: str, headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:  # fmt: skip
        """An in-dialog request; its final response (a 2xx to a re-INVITE is ACKed)."""
        extra = list(headers)
        if body:
            extra.append(("Content-Type", "application/sdp"))
        request = call.dialog.create_request(
            method, extra, body, local_address=self.local, transport="UDP"
        )
        self.send(request)
        final = await self.final(request)
        if method == "INVITE" and 200 <= final.status < 300:
            call.dialog.receive_response(final)
            self.send(call.dialog.create_ack(local_address=self.local, transport="UDP"))
            call.remote_sdp = final.body or call.remote_sdp
        return final

    async def hold(self, call: Call) -> Response:
        return await self.request(call, "INVITE", body=self.offer("sendonly"))

    async def bye(self, call: Call) -> Response:
        return await self.request(call, "BYE")

    async def refer(self, call: Call, target: str) -> Response:
        host, port = self.server
        refer_to = target if target.startswith("<") else f"<sip:{target}@{host}:{port}>"
        return await self.request(
            call, "REFER", [("Refer-To", refer_to), ("Referred-By", f"<sip:{self.ext}@{host}>")]
        )

    async def notifies_until_final(self) -> list[str]:
        """The sipfrag status lines of refer NOTIFYs, until the terminating one."""
        lines = []
        while True:
            notify = await self.next("NOTIFY")
            lines.append(notify.body.decode().strip())
            if "terminated" in (notify.header("Subscription-State") or ""):
                return lines

    # media

    def send_rtp(self, port: int, seq: int, payload: bytes, pt: int = 0) -> None:
        self.rtp.sendto(rtp_packet(seq, payload, pt), ("127.0.0.1", port))

    async def recv_rtp(self, timeout: float = TIMEOUT) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.rtp, 2048), timeout)

    async def hears(
        self, speaker: Phone, port: int, fill: bytes, expect: bytes | None = None, pt: int = 0
    ) -> bytes:
        """`speaker` sends RTP filled with `fill` to the exchange's `port` until this phone
        receives a packet whose payload is `expect` (default: what was sent; transcoded
        audio differs); the packet received. Sent again every 50 ms: the exchange may
        still be setting the bridge up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        wanted = expect if expect is not None else fill * 160
        seq = 0
        while loop.time() < deadline:
            speaker.send_rtp(port, seq, fill * 160, pt)
            seq += 1
            with contextlib.suppress(TimeoutError):
                while True:
                    packet = await asyncio.wait_for(loop.sock_recv(self.rtp, 2048), 0.05)
                    if packet[12:] == wanted:
                        return packet
        raise AssertionError(f"{self.ext} never heard {speaker.ext} ({fill!r})")


def session_of(body: bytes) -> SessionDescription:
    return parse_sdp(body)
