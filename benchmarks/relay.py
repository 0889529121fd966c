"""Per-packet cost of the RTP relay hot path: `MediaEndpoint.datagram_received` on a
bridged leg, which validates, latches, counts, rewrites and sends the packet on.

    .venv/bin/python benchmarks/relay.py            # PCMU<->PCMU relay and PCMU->PCMA
    .venv/bin/python benchmarks/relay.py --number 200000

The packet goes out through a real loopback UDP socket to a sink nobody reads (the kernel
drops what overflows its buffer), so `sendto` is in the figure, as in a real call. Also
timed: the receive path alone (no Bridge), and the relay with the outgoing transport's
`sendto` stubbed out (all the Python work, without the system call, which is ~3.5 us
and swamps differences of 0.1 us). Each figure includes ~30 ns of the loop that
hands the next prepared packet in.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import timeit

from media.aio import Bridge, MediaEndpoint
from media.ports import PortPool
from media.rtp import RtpPacket

HOST = "127.0.0.1"


class _NoSend:
    """A transport whose sendto does nothing: times all of the relay's Python work."""

    def sendto(self, data: bytes, addr: object) -> None:
        pass


async def measure(number: int, repeat: int) -> dict[str, float]:
    pool = PortPool(42000, 42999)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((HOST, 0))
    phone_a = (HOST, 9)
    results: dict[str, float] = {}
    for name, transcode, bridged, syscall in (
        ("receive only", None, False, True),
        ("relay, no sendto", None, True, False),
        ("relay PCMU->PCMU", None, True, True),
        ("relay PCMU->PCMA", ("PCMU", "PCMA"), True, True),
    ):
        a = await MediaEndpoint.open(pool, HOST, phone_a)
        b = await MediaEndpoint.open(pool, HOST, sink.getsockname())
        real_transport = b._rtp
        if not syscall:
            b._rtp = _NoSend()  # type: ignore[assignment]
        bridge = Bridge(a, b, transcode) if bridged else None
        # A whole sequence cycle, 20 ms apart, so the receive statistics take their
        # usual in-order path (and wrap once every 65536 packets, as a real stream does).
        packets = [
            RtpPacket(0, seq, 160 * seq, 0xA, b"\xff" * 160).encode() for seq in range(1 << 16)
        ]
        following = itertools.cycle(packets).__next__
        receive = a.datagram_received
        for _ in range(3):  # latch, and pass the RFC 3550 probation
            receive(following(), phone_a)
        best = min(
            timeit.repeat(
                lambda r=receive, f=following: r(f(), phone_a), number=number, repeat=repeat
            )
        )
        results[name] = best / number * 1e6
        b._rtp = real_transport
        if bridge is not None:
            bridge.close()
        for endpoint in (a, b):
            endpoint.close()
            await endpoint.wait_closed()
    sink.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000, help="packets per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best is kept")
    args = parser.parse_args()
    try:  # the loop `pbx serve` runs on when installed, where loop.time() is C
        import uvloop

        run, loop_name = uvloop.run, "uvloop"
    except ImportError:
        run, loop_name = asyncio.run, "asyncio"
    print(f"event loop: {loop_name}")
    for name, micros in run(measure(args.number, args.repeat)).items():
        print(f"{name:20} {micros:6.2f} us/packet")


if __name__ == "__main__":
    main()
