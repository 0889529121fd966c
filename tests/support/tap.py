"""Watch the UDP datagrams that cross `lo`, for tests whose peers cannot say what they got.

SIPp, for one, counts no RTP: a tap on the loopback interface (an AF_PACKET socket, which
needs root, as `make test` runs) sees what was delivered to a peer's port, whoever the peer.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass

ETH_P_ALL = 0x0003
ETHERNET_HEADER = 14
IPV4, UDP = 4, 17


@dataclass(frozen=True)
class Datagram:
    source_port: int
    destination_port: int
    payload: bytes


class LoopbackTap:
    """Every IPv4 UDP datagram on `lo` from `start()` to `stop()`, in arrival order."""

    def __init__(self) -> None:
        self.datagrams: list[Datagram] = []
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        # Other tests may load `lo` meanwhile: room for a burst while this thread sleeps.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._running = True
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> LoopbackTap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._running:
            self._running = False
            if self._thread.is_alive():
                self._thread.join(2)
            self._sock.close()

    def _read(self) -> None:
        while self._running:
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows every datagram twice: leaving and arriving
            ip = frame[ETHERNET_HEADER:]
            if len(ip) < 28 or ip[0] >> 4 != IPV4 or ip[9] != UDP:
                continue
            header = (ip[0] & 0x0F) * 4
            source, destination = struct.unpack("!HH", ip[header : header + 4])
            self.datagrams.append(Datagram(source, destination, ip[header + 8 :]))

    def rtp(self, source: int, destination: int) -> list[bytes]:
        """The payloads of the RTP packets from port `source` to port `destination`."""
        return [
            rtp_payload(d.payload)
            for d in list(self.datagrams)
            if (d.source_port, d.destination_port) == (source, destination) and is_rtp(d.payload)
        ]

    def rtp_destinations(self, source: int) -> set[int]:
        """The ports RTP went to from port `source`."""
        return {
            d.destination_port
            for d in list(self.datagrams)
            if d.source_port == source and is_rtp(d.payload)
        }


def is_rtp(data: bytes) -> bool:
    return len(data) >= 12 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223


def rtp_payload(data: bytes) -> bytes:
    """What follows the RTP header, its CSRC list and extension (RFC 3550 §5.1, §5.3.1)."""
    start = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        (words,) = struct.unpack("!H", data[start + 2 : start + 4])
        start += 4 + 4 * words
    return data[start:]
