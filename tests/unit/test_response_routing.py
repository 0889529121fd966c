"""Where responses go (RFC 3261 §18.2.2, RFC 3581)."""

from __future__ import annotations

from pbx.config import ListenAddress
from pbx.sip.aio import Peer, response_peer
from pbx.sip.message import parse_via

LOCAL = ListenAddress("udp", "127.0.0.1", 5060)
SOURCE = Peer("udp", "198.51.100.7", 40000, LOCAL)


def test_rport_sends_back_to_the_source_port() -> None:
    via = parse_via("SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK1;rport")
    assert response_peer(via, SOURCE) == SOURCE


def test_without_rport_the_via_port_counts() -> None:
    via = parse_via("SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK1")
    assert response_peer(via, SOURCE) == Peer("udp", "198.51.100.7", 5062, LOCAL)
    no_port = parse_via("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1")
    assert response_peer(no_port, SOURCE).port == 5060


def test_streams_answer_on_the_same_connection() -> None:
    tcp = Peer("tcp", "198.51.100.7", 40000, ListenAddress("tcp", "127.0.0.1", 5060))
    via = parse_via("SIP/2.0/TCP 10.0.0.5:5062;branch=z9hG4bK1")
    assert response_peer(via, tcp) == tcp
