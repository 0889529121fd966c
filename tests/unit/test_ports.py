"""PortPool: even RTP ports from the configured range, FIFO reuse."""

from __future__ import annotations

import pytest

from media.ports import PortPool, PortsExhausted
from pbx.errors import LocalProtocolError, MediaError


def test_even_ports_with_rtcp_pair_inside_range() -> None:
    pool = PortPool(20001, 20010)  # odd low: first pair 20002/20003; 20010 has no 20011
    ports = [pool.allocate() for _ in range(pool.size)]
    assert ports == [20002, 20004, 20006, 20008]
    assert all(p % 2 == 0 and p + 1 <= 20010 for p in ports)


def test_exhaustion_raises_media_error() -> None:
    pool = PortPool(20000, 20003)
    assert (pool.allocate(), pool.allocate(), pool.free) == (20000, 20002, 0)
    with pytest.raises(PortsExhausted) as info:
        pool.allocate()
    assert isinstance(info.value, MediaError)


def test_release_rotates_least_recently_released_first() -> None:
    pool = PortPool(30000, 30007)  # 30000, 30002, 30004, 30006
    a, b = pool.allocate(), pool.allocate()
    pool.release(a)
    # a was just released: the never-used ports come first, then b, then a.
    pool.release(b)
    assert [pool.allocate() for _ in range(4)] == [30004, 30006, a, b]
    assert pool.free == 0


def test_free_count_and_membership() -> None:
    pool = PortPool(40000, 40099)
    assert (pool.size, pool.free) == (50, 50)
    port = pool.allocate()
    assert port in pool and pool.free == 49
    pool.release(port)
    assert port not in pool and pool.free == 50


def test_double_release_and_foreign_port_are_misuse() -> None:
    pool = PortPool(20000, 20009)
    port = pool.allocate()
    pool.release(port)
    with pytest.raises(LocalProtocolError):
        pool.release(port)
    with pytest.raises(LocalProtocolError):
        pool.release(12345)


@pytest.mark.parametrize(("low", "high"), [(20000, 20000), (20001, 20002), (0, 10), (20, 10)])
def test_range_without_a_pair_is_rejected(low: int, high: int) -> None:
    with pytest.raises(LocalProtocolError):
        PortPool(low, high)
