"""Framing SIP messages on a byte stream (RFC 3261 §18.3, RFC 5626 §3.5.1 keep-alives)."""

from __future__ import annotations

from dataclasses import dataclass

from pbx.errors import RemoteProtocolError, SipStatus
from pbx.sip.message import content_length, parse_head


@dataclass(frozen=True, slots=True)
class Ping:
    """A CRLFCRLF keep-alive ping; answer it with one CRLF (RFC 5626 §3.5.1)."""


class FramingError(RemoteProtocolError):
    """The stream cannot be framed any further (RFC 4475 ncl, mcl01).

    `framed` holds what was complete before the broken message, so none of it is lost;
    `data` is the broken message's text, to answer it where it can be read.
    """

    def __init__(self, cause: RemoteProtocolError, framed: list[bytes | Ping], data: bytes):
        super().__init__(str(cause), cause.status)
        self.framed = framed
        self.data = data


class StreamFramer:
    """Cuts a TCP/TLS byte stream into whole messages by Content-Length.

    `feed()` returns complete message byte strings and `Ping()`s. A framing error (no or bad
    Content-Length, oversized header) is unrecoverable on a stream: it raises
    `FramingError` and the connection must be closed (RFC 4475 ncl, mcl01).
    """

    def __init__(self, max_message: int = 65535) -> None:
        self._buffer = bytearray()
        self.max_message = max_message
        self._expect: int | None = None  # size of the message at the front, once known
        self._scanned = 0  # where to resume looking for the end of its header section

    def feed(self, data: bytes) -> list[bytes | Ping]:
        self._buffer += data
        out: list[bytes | Ping] = []
        try:
            self._frame(out)
        except RemoteProtocolError as exc:
            raise FramingError(exc, out, bytes(self._buffer)) from None
        return out

    def _frame(self, out: list[bytes | Ping]) -> None:
        # The header section of the message at the front is searched and parsed once: a
        # peer trickling a large message byte by byte must not make us redo that work.
        buf = self._buffer
        while buf:
            if self._expect is None:
                # Leading CRLFs between messages are keep-alives, not message text.
                if buf[:4] == b"\r\n\r\n":
                    del buf[:4]
                    out.append(Ping())
                    continue
                if buf[:2] == b"\r\n":
                    if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                        break  # may become a ping when the rest arrives
                    del buf[:2]
                    continue
                end = buf.find(b"\r\n\r\n", self._scanned)
                if end < 0:
                    if len(buf) > self.max_message:
                        raise RemoteProtocolError(
                            "header section too large", SipStatus.MESSAGE_TOO_LARGE
                        )
                    self._scanned = max(0, len(buf) - 3)
                    break
                _, headers = parse_head(bytes(buf[:end]))
                length = content_length(headers)
                if length is None:
                    raise RemoteProtocolError("Content-Length is required on a stream")
                self._expect = end + 4 + length
                if self._expect > self.max_message:
                    raise RemoteProtocolError("message too large", SipStatus.MESSAGE_TOO_LARGE)
            total = self._expect
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._expect = None
            self._scanned = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)
