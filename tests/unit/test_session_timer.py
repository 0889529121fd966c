"""RFC 4028 negotiation, sans I/O."""

from __future__ import annotations

import pytest

from pbx.errors import RemoteProtocolError
from pbx.sip.message import Request, Response, build_response, parse_message
from pbx.sip.session_timer import (
    Refresher,
    SessionExpires,
    SessionTimer,
    TooBrief,
    negotiate_as_uas,
    parse_session_expires,
    request_headers,
    response_headers,
    retry_interval,
    timer_from_response,
)


def request(*headers: str) -> Request:
    lines = [
        "INVITE sip:1002@pbx SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKst",
        "From: <sip:1001@pbx>;tag=a",
        "To: <sip:1002@pbx>",
        "Call-ID: st-1",
        "CSeq: 1 INVITE",
        *headers,
        "Content-Length: 0",
        "",
        "",
    ]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def response(*headers: str) -> Response:
    pairs = [(name, value) for name, _, value in (h.partition(": ") for h in headers)]
    return build_response(request(), 200, headers=pairs)


def test_parse_session_expires() -> None:
    assert parse_session_expires("1800") == SessionExpires(1800)
    assert parse_session_expires("90 ; refresher=UAS") == SessionExpires(90, Refresher.UAS)
    assert str(SessionExpires(90, Refresher.UAC)) == "90;refresher=uac"
    for bad in ("", "abc", "90;refresher=both", "-5"):
        with pytest.raises(RemoteProtocolError):
            parse_session_expires(bad)


def test_the_timer_is_half_the_interval_or_the_deadline() -> None:
    timer = SessionTimer(1800, we_refresh=True)
    assert timer.refresh_after == 900
    assert timer.expire_after == 1800 - 32
    assert SessionTimer(90, we_refresh=False).expire_after == 60  # SE/3 < 32


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # Below our Min-SE: 422, naming ours.
        (("Session-Expires: 60",), TooBrief(120)),
        # The caller's refresher is kept; a long interval is shortened towards ours.
        (("Session-Expires: 7200;refresher=uac",), SessionTimer(1800, we_refresh=False)),
        (("Session-Expires: 300;refresher=uas",), SessionTimer(300, we_refresh=True)),
        # Never below the request's Min-SE.
        (("Session-Expires: 7200", "Min-SE: 3600"), SessionTimer(3600, we_refresh=True)),
        # No refresher named: the caller refreshes when it supports timers.
        (("Session-Expires: 600", "Supported: timer, 100rel"), SessionTimer(600, False)),
        (("Session-Expires: 600",), SessionTimer(600, we_refresh=True)),
        # No Session-Expires: a timer only for a phone that supports them.
        (("Supported: timer",), SessionTimer(1800, we_refresh=False)),
        ((), None),
    ],
)
def test_negotiate_as_uas(headers: tuple[str, ...], expected: object) -> None:
    assert negotiate_as_uas(request(*headers), preferred=1800, min_se=120) == expected


def test_min_se_is_never_below_90() -> None:
    assert negotiate_as_uas(request("Session-Expires: 60"), 1800, min_se=30) == TooBrief(90)


def test_headers_of_our_requests_and_responses() -> None:
    assert request_headers(1800, 90) == [
        ("Supported", "timer"), ("Session-Expires", "1800"), ("Min-SE", "90"),
    ]  # fmt: skip
    refresh = request_headers(1800, 90, SessionTimer(600, we_refresh=False))
    assert ("Session-Expires", "600;refresher=uas") in refresh
    assert response_headers(SessionTimer(600, we_refresh=False)) == [
        ("Session-Expires", "600;refresher=uac"), ("Require", "timer"),
    ]  # fmt: skip
    assert response_headers(SessionTimer(600, we_refresh=True)) == [
        ("Session-Expires", "600;refresher=uas"),
    ]  # fmt: skip


def test_timer_from_a_2xx() -> None:
    assert timer_from_response(response()) is None
    assert timer_from_response(response("Session-Expires: 900;refresher=uac")) == SessionTimer(
        900, we_refresh=True
    )
    assert timer_from_response(response("Session-Expires: 900;refresher=uas")) == SessionTimer(
        900, we_refresh=False
    )


def test_retry_interval_after_422() -> None:
    ours = request("Session-Expires: 1800")
    assert retry_interval(ours, response("Min-SE: 3600")) == 3600
    assert retry_interval(ours, response("Min-SE: 900")) is None  # no larger: give up
    assert retry_interval(ours, response()) is None
    assert retry_interval(ours, response("Min-SE: soon")) is None
