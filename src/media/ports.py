"""A pool of RTP/RTCP port pairs from the configured media port range.

Pure bookkeeping: nothing here binds a socket (that is `media.aio`). RTP uses
the even port and RTCP the next odd one (RFC 3550 §11), so the pool hands out
even ports whose pair lies wholly inside `RtpConfig.port_range`.

Allocation takes the port released longest ago (a FIFO), so a port is not
reused right after a call ends: late packets of the previous call (still in
flight, or from a phone that has not yet seen the BYE) would otherwise land
in the next call's media.
"""

from __future__ import annotations

from collections import deque

from pbx.errors import LocalProtocolError, MediaError

__all__ = ["PortPool", "PortsExhausted"]


class PortsExhausted(MediaError):
    """Every RTP port pair of the pool is in use."""


class PortPool:
    """Even RTP ports (RTCP = port + 1) from the inclusive range `low`..`high`."""

    __slots__ = ("_free", "_in_use", "high", "low")

    def __init__(self, low: int, high: int) -> None:
        first = low + (low & 1)  # round up to even
        if not 0 < low <= high <= 65535 or first + 1 > high:
            raise LocalProtocolError(f"port range {low}-{high} holds no even/odd port pair")
        self.low, self.high = low, high
        self._free: deque[int] = deque(range(first, high, 2))
        self._in_use: set[int] = set()

    def allocate(self) -> int:
        """The even RTP port released longest ago (or never used)."""
        if not self._free:
            raise PortsExhausted(f"all {self.size} RTP ports of {self.low}-{self.high} in use")
        port = self._free.popleft()
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        """Give `port` back; it is handed out again only after all other free ports."""
        try:
            self._in_use.remove(port)
        except KeyError:
            raise LocalProtocolError(f"port {port} is not allocated from this pool") from None
        self._free.append(port)

    @property
    def free(self) -> int:
        """Port pairs available to `allocate`."""
        return len(self._free)

    @property
    def size(self) -> int:
        """Port pairs in the pool."""
        return len(self._free) + len(self._in_use)

    def __contains__(self, port: object) -> bool:
        """Whether `port` is currently allocated."""
        return port in self._in_use
