"""Stream framing by Content-Length, keep-alive pings (RFC 3261 §18.3, RFC 5626)."""

from __future__ import annotations

import pytest

from pbx.errors import RemoteProtocolError
from pbx.sip.framing import Ping, StreamFramer

MSG = (
    b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\n"
    b"To: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 5\r\n\r\nhello"
)


def test_byte_by_byte_and_back_to_back() -> None:
    framer = StreamFramer()
    out: list[bytes | Ping] = []
    for i in range(len(MSG)):
        out += framer.feed(MSG[i : i + 1])
    assert out == [MSG]
    assert framer.feed(MSG + MSG) == [MSG, MSG]
    assert framer.pending == 0


def test_pings_between_messages() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n" + MSG + b"\r\n") == [Ping(), MSG]
    assert framer.feed(b"\r\n") == [Ping()]


def test_incomplete_body_waits() -> None:
    framer = StreamFramer()
    assert framer.feed(MSG[:-2]) == []
    assert framer.feed(MSG[-2:]) == [MSG]


@pytest.mark.parametrize(
    "data",
    [
        MSG.replace(b"Content-Length: 5", b"Content-Length: -5"),
        MSG.replace(b"Content-Length: 5\r\n", b""),
        MSG.replace(b"Content-Length: 5", b"Content-Length: 5\r\nContent-Length: 6"),
    ],
)
def test_framing_errors_raise(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        StreamFramer().feed(data)


def test_oversized_header_section_raises() -> None:
    framer = StreamFramer(max_message=1000)
    with pytest.raises(RemoteProtocolError):
        framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * 2000)
