"""Free loopback ports for servers the tests start."""

from __future__ import annotations

import socket
import time


def free_port(host: str = "127.0.0.1", both: bool = True) -> int:
    """A port free for UDP (and TCP when `both`) on `host` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            if not both:
                return port
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port pair found")


def udp_bound(port: int) -> bool:
    """Whether some process has a UDP socket bound to `port` (IPv4 or IPv6), as the kernel
    lists them: a peer we started is listening once this holds."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as lines:
                next(lines, None)  # the header
                for line in lines:
                    local = line.split()[1]  # "0100007F:1F90": address and port in hex
                    if int(local.rpartition(":")[2], 16) == port:
                        return True
        except OSError:
            continue
    return False


def wait_bound(*ports: int, timeout: float = 10.0) -> None:
    """Until every port is bound (a SIPp just started binds a moment later)."""
    deadline = time.monotonic() + timeout
    while not all(udp_bound(port) for port in ports):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing bound UDP ports {ports} within {timeout} s")
        time.sleep(0.01)
