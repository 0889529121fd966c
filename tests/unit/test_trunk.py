"""The trunk registration core, the challenged-INVITE helper and trunk identification:
all pure, the provider played by our own DigestAuthenticator with a fake clock."""

from __future__ import annotations

import pytest

from pbx.config import ListenAddress, TrunkConfig
from pbx.sip.aio import Peer
from pbx.sip.digest import DigestAuthenticator, Verdict, ha1, parse_credentials
from pbx.sip.message import Request, Response, build_response, parse_contacts
from pbx.sip.uri import SipUri
from pbx.trunk import (
    LocalContact,
    Registration,
    RetryPolicy,
    TrunkMatcher,
    TrunkState,
    answer_challenge,
    request_uri,
)

TRUNK = TrunkConfig(
    name="provider", host="192.0.2.10", port=5070, username="clinic", password="secret",
    register=True, expires=3600,
)  # fmt: skip
LOCAL = LocalContact("udp", "192.0.2.1", 5060)


class Provider:
    """Just enough of a registrar: challenges, checks the digest, grants `grant` seconds."""

    def __init__(self, password: str = "secret", grant: int = 120) -> None:
        self.auth = DigestAuthenticator("provider.example", b"p" * 32, nonce_ttl=300)
        self.password = password
        self.grant = grant

    def answer(self, request: Request, now: float, stale: bool = False) -> Response:
        header = request.header("Authorization")
        if header is None:
            return self.challenge(request, now)
        creds = parse_credentials(header)
        key = ha1("MD5", "clinic", "provider.example", self.password)
        verdict = self.auth.verify(creds, "REGISTER", lambda _a: key, now)
        if verdict is Verdict.STALE:
            return self.challenge(request, now, stale=True)
        if verdict is not Verdict.OK:
            return self.challenge(request, now)
        contacts = parse_contacts(request)
        assert contacts != "*"
        expires = min(int(request.header("Expires") or 3600), self.grant)
        return build_response(
            request, 200, headers=[("Contact", f"<{contacts[0].uri}>;expires={expires}")],
            to_tag="prov",
        )  # fmt: skip

    def challenge(self, request: Request, now: float, stale: bool = False) -> Response:
        headers = [("WWW-Authenticate", v) for v in self.auth.challenges(now, stale)]
        return build_response(request, 401, headers=headers, to_tag="prov")


def test_first_register_has_the_trunk_identity_and_our_contact() -> None:
    reg = Registration(TRUNK, LOCAL)
    request = reg.start(0.0)
    assert str(request.uri) == "sip:192.0.2.10:5070"
    assert str(request.from_.uri) == str(request.to.uri) == "sip:clinic@192.0.2.10"
    assert request.from_.tag and request.to.tag is None
    assert request.header("Contact") == "<sip:clinic@192.0.2.1:5060>"
    assert (request.header("Expires"), str(request.cseq)) == ("3600", "1 REGISTER")
    assert request.vias[0].branch and request.vias[0].wants_rport
    assert request.header("Authorization") is None
    assert reg.state is TrunkState.REGISTERING


def test_domain_and_tcp_shape_the_uris() -> None:
    trunk = TrunkConfig(name="p", host="10.0.0.1", username="u", domain="sip.example.com",
                        transport="tcp", register=True)  # fmt: skip
    assert str(request_uri(trunk)) == "sip:sip.example.com"
    request = Registration(trunk, LocalContact("tcp", "10.0.0.2", 5061)).start(0.0)
    assert str(request.to.uri) == "sip:u@sip.example.com"
    assert request.header("Contact") == "<sip:u@10.0.0.2:5061;transport=tcp>"
    assert request.vias[0].transport == "TCP"


def test_challenge_answered_then_registered_and_refreshed_at_half_the_grant() -> None:
    provider = Provider(grant=120)
    reg = Registration(TRUNK, LOCAL)
    first = reg.start(10.0)
    second = reg.on_response(provider.answer(first, 10.1), 10.1)
    assert second is not None
    assert (second.call_id, second.cseq.number) == (first.call_id, 2)
    assert second.vias[0].branch != first.vias[0].branch
    assert reg.on_response(provider.answer(second, 10.2), 10.2) is None
    status = reg.status()
    assert status.state is TrunkState.REGISTERED and status.last_status == 200
    assert status.expires_at == pytest.approx(130.1)  # counted from when we sent it
    assert reg.next_timer() == pytest.approx(70.1)
    assert reg.on_timer(70.0) is None  # not yet
    refresh = reg.on_timer(70.1)
    assert refresh is not None
    assert (refresh.call_id, refresh.cseq.number) == (first.call_id, 3)
    assert refresh.header("Authorization") is not None  # the provider's nonce, next nc
    assert reg.state is TrunkState.REGISTERED  # still bound while the refresh is out
    assert reg.on_response(provider.answer(refresh, 70.2), 70.2) is None
    assert reg.expires_at == pytest.approx(190.1)


def test_refresh_with_an_old_nonce_is_rechallenged_and_answered() -> None:
    provider = Provider(grant=3600)
    reg = Registration(TRUNK, LOCAL)
    request: Request | None = reg.start(0.0)
    while request is not None:
        request = reg.on_response(provider.answer(request, 0.0), 0.0)
    assert reg.state is TrunkState.REGISTERED
    refresh = reg.on_timer(1800.0)  # the nonce is far past its 300 s: stale=true
    assert refresh is not None
    again = reg.on_response(provider.answer(refresh, 1800.0), 1800.0)
    assert again is not None
    assert reg.on_response(provider.answer(again, 1800.0), 1800.0) is None
    assert reg.state is TrunkState.REGISTERED
    assert reg.expires_at == pytest.approx(5400.0)


def test_refresh_answered_by_a_new_non_stale_challenge_is_still_answered() -> None:
    """Credentials sent on a refresh answered an old challenge: a provider that forgot the
    nonce challenges afresh, which is not a wrong password."""
    provider = Provider(grant=60)
    reg = Registration(TRUNK, LOCAL)
    request: Request | None = reg.start(0.0)
    while request is not None:
        request = reg.on_response(provider.answer(request, 0.0), 0.0)
    provider.auth = DigestAuthenticator("provider.example", b"q" * 32)  # provider restarted
    refresh = reg.on_timer(30.0)
    assert refresh is not None
    again = reg.on_response(provider.answer(refresh, 30.0), 30.0)
    assert again is not None
    assert reg.on_response(provider.answer(again, 30.0), 30.0) is None
    assert reg.state is TrunkState.REGISTERED


def test_wrong_password_fails_and_retries_with_backoff() -> None:
    provider = Provider(password="other")
    reg = Registration(TRUNK, LOCAL, RetryPolicy(first=30, maximum=100))
    now = 0.0
    retries = []
    for _ in range(4):
        request = reg.on_timer(now) if now else reg.start(now)
        assert request is not None
        answered = reg.on_response(provider.answer(request, now), now)
        assert answered is not None and answered.header("Authorization")
        assert reg.on_response(provider.answer(answered, now), now) is None  # once only
        assert reg.state is TrunkState.FAILED
        assert reg.last_status == 401 and "wrong credentials" in reg.last_reason
        assert reg.expires_at is None
        next_at = reg.next_timer()
        assert next_at is not None
        retries.append(next_at - now)
        now = next_at
    assert retries == [30, 60, 100, 100]


def test_success_after_failures_resets_the_backoff() -> None:
    provider = Provider(password="other")
    reg = Registration(TRUNK, LOCAL, RetryPolicy(first=5, maximum=100))
    request: Request | None = reg.start(0.0)
    while request is not None:
        request = reg.on_response(provider.answer(request, 0.0), 0.0)
    assert reg.state is TrunkState.FAILED and reg.next_timer() == 5
    provider.password = "secret"  # the provider's side was fixed
    request = reg.on_timer(5.0)
    while request is not None:
        request = reg.on_response(provider.answer(request, 5.0), 5.0)
    assert reg.status().state is TrunkState.REGISTERED
    reg.on_timer(65.0)
    reg.on_failure("no answer", 65.0)
    assert reg.state is TrunkState.FAILED and reg.next_timer() == 70.0  # first delay again


def test_stale_challenges_are_answered_but_not_forever() -> None:
    provider = Provider()
    reg = Registration(TRUNK, LOCAL)
    request: Request | None = reg.start(0.0)
    answered = 0
    while request is not None:
        request = reg.on_response(provider.challenge(request, 0.0, stale=answered > 0), 0.0)
        answered += 1
    assert reg.state is TrunkState.FAILED and "stale" in reg.last_reason
    assert answered == 5  # the first challenge, then three stale ones answered, then stop


def test_realm_other_than_configured_is_not_answered() -> None:
    trunk = TrunkConfig(name="p", host="192.0.2.10", username="clinic", password="secret",
                        realm="elsewhere", register=True)  # fmt: skip
    reg = Registration(trunk, LOCAL)
    request = reg.start(0.0)
    assert reg.on_response(Provider().challenge(request, 0.0), 0.0) is None
    assert reg.state is TrunkState.FAILED and "elsewhere" in reg.last_reason


def test_423_raises_the_interval_to_min_expires() -> None:
    reg = Registration(TRUNK, LOCAL)
    request = reg.start(0.0)
    brief = build_response(request, 423, headers=[("Min-Expires", "7200")], to_tag="x")
    again = reg.on_response(brief, 0.1)
    assert again is not None and again.header("Expires") == "7200"
    assert again.cseq.number == 2
    # A 423 that asks for no more than we already did would loop: give up instead.
    assert reg.on_response(build_response(again, 423, to_tag="x"), 0.2) is None
    assert reg.state is TrunkState.FAILED


def test_granted_interval_from_expires_header_or_our_request() -> None:
    reg = Registration(TRUNK, LOCAL)
    request = reg.start(0.0)
    ok = build_response(request, 200, headers=[("Expires", "600")], to_tag="x")
    reg.on_response(ok, 0.0)
    assert reg.expires_at == 600
    # A contact listing with other phones' contacts and ours with its own expiry.
    refresh = reg.on_timer(300.0)
    assert refresh is not None
    listing = [("Contact", "<sip:clinic@192.0.2.99:5060>;expires=3000"),
               ("Contact", "<sip:clinic@192.0.2.1>;expires=900")]  # fmt: skip
    reg.on_response(build_response(refresh, 200, headers=listing, to_tag="x"), 300.0)
    assert reg.expires_at == 1200


def test_failure_status_and_timeouts_schedule_a_retry() -> None:
    reg = Registration(TRUNK, LOCAL, RetryPolicy(first=2, maximum=8))
    request = reg.start(0.0)
    assert reg.on_response(build_response(request, 403, to_tag="x"), 1.0) is None
    assert reg.state is TrunkState.FAILED and reg.last_status == 403
    assert reg.status().next_attempt_at == 3.0
    retry = reg.on_timer(3.0)
    assert retry is not None and reg.status().state is TrunkState.REGISTERING
    reg.on_failure("no answer from 192.0.2.10:5070", 35.0)
    assert reg.state is TrunkState.FAILED and reg.last_status is None
    assert reg.next_timer() == 39.0
    again = reg.on_timer(39.0)
    assert again is not None
    reg.fail("internal error: boom", 40.0)  # the shell's own trouble: retried like others
    assert reg.last_reason == "internal error: boom" and reg.next_timer() == 48.0
    assert reg.on_response(build_response(again, 200, to_tag="x"), 40.1) is None
    assert reg.status().state is TrunkState.FAILED  # that attempt was abandoned


def test_answers_to_older_requests_are_ignored() -> None:
    reg = Registration(TRUNK, LOCAL)
    first = reg.start(0.0)
    second = reg.on_response(Provider().challenge(first, 0.0), 0.0)
    assert second is not None
    assert reg.on_response(build_response(first, 200, to_tag="x"), 0.1) is None
    assert reg.state is TrunkState.REGISTERING  # still waiting for the answer to `second`


def test_stop_unregisters_with_expires_zero() -> None:
    provider = Provider()
    reg = Registration(TRUNK, LOCAL)
    request: Request | None = reg.start(0.0)
    while request is not None:
        request = reg.on_response(provider.answer(request, 0.0), 0.0)
    assert reg.status().state is TrunkState.REGISTERED
    bye = reg.stop(10.0)
    assert bye is not None
    assert bye.header("Expires") == "0" and bye.call_id == reg.call_id
    assert bye.header("Authorization") is not None
    assert reg.next_timer() is None and not reg.stopped
    assert reg.on_response(build_response(bye, 200, to_tag="x"), 10.1) is None
    assert reg.state is TrunkState.UNREGISTERED and reg.stopped
    assert reg.expires_at is None


def test_stop_when_not_registered_sends_nothing() -> None:
    reg = Registration(TRUNK, LOCAL)
    request = reg.start(0.0)
    reg.on_response(build_response(request, 403, to_tag="x"), 0.0)
    assert reg.stop(1.0) is None
    assert reg.state is TrunkState.UNREGISTERED and reg.next_timer() is None


# answer_challenge: the B2BUA's INVITE to a provider that challenges it


def invite() -> Request:
    return Request.build(
        "INVITE",
        SipUri(user="5551234", host="192.0.2.10", port=5070),
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfirst;rport"),
            ("Max-Forwards", "70"),
            ("From", "<sip:clinic@192.0.2.10>;tag=ours"),
            ("To", "<sip:5551234@192.0.2.10>"),
            ("Call-ID", "call-1@192.0.2.1"),
            ("CSeq", "7 INVITE"),
            ("Contact", "<sip:clinic@192.0.2.1:5060>"),
            ("Content-Type", "application/sdp"),
        ],
        b"v=0\r\n",
    )


@pytest.mark.parametrize(("status", "offered", "answer"), [
    (407, "Proxy-Authenticate", "Proxy-Authorization"),
    (401, "WWW-Authenticate", "Authorization"),
])  # fmt: skip
def test_challenged_invite_is_sent_again_with_credentials(
    status: int, offered: str, answer: str
) -> None:
    auth = DigestAuthenticator("provider.example", b"p" * 32)
    original = invite()
    challenge = build_response(
        original, status, headers=[(offered, auth.challenges(0.0)[0])], to_tag="t"
    )
    again = answer_challenge(original, challenge, TRUNK)
    assert again is not None
    assert (again.call_id, again.from_.tag, again.to.tag) == ("call-1@192.0.2.1", "ours", None)
    assert str(again.cseq) == "8 INVITE"
    assert again.vias[0].branch != "z9hG4bKfirst" and again.vias[0].wants_rport
    assert len(again.vias) == 1
    assert again.body == original.body and again.header("Contact") == original.header("Contact")
    creds = parse_credentials(again.header(answer) or "")
    assert creds.uri == "sip:5551234@192.0.2.10:5070"
    key = ha1("MD5", "clinic", "provider.example", "secret")
    assert auth.verify(creds, "INVITE", lambda _a: key, 1.0) is Verdict.OK
    # Challenged again without stale=true: the credentials were refused. Do not loop.
    refused = build_response(again, status, headers=[(offered, auth.challenges(1.0)[0])],
                             to_tag="t")  # fmt: skip
    assert answer_challenge(again, refused, TRUNK) is None
    # With stale=true the answer is redone (one header, not two) with the next CSeq.
    stale = build_response(again, status, headers=[(offered, auth.challenges(1.0, True)[0])],
                           to_tag="t")  # fmt: skip
    third = answer_challenge(again, stale, TRUNK)
    assert third is not None and str(third.cseq) == "9 INVITE"
    assert len(third.headers_named(answer)) == 1


def test_unanswerable_invite_challenges() -> None:
    original = invite()
    assert answer_challenge(original, build_response(original, 486, to_tag="t"), TRUNK) is None
    basic = build_response(original, 401, headers=[("WWW-Authenticate", 'Basic realm="x"')],
                           to_tag="t")  # fmt: skip
    assert answer_challenge(original, basic, TRUNK) is None
    other_realm = TrunkConfig(name="p", host="192.0.2.10", username="clinic", realm="nope")
    auth = DigestAuthenticator("provider.example", b"p" * 32)
    digest = build_response(original, 407, headers=[("Proxy-Authenticate",
                            auth.challenges(0.0)[0])], to_tag="t")  # fmt: skip
    assert answer_challenge(original, digest, other_realm) is None


# trunk_for: who sent this request


def peer(transport: str, host: str, port: int) -> Peer:
    return Peer(transport, host, port, ListenAddress(transport, "127.0.0.1", 5060))


def test_matcher_udp_needs_address_and_port_tcp_address_only() -> None:
    a = TrunkConfig(name="a", host="provider.example", port=5060)
    b = TrunkConfig(name="b", host="198.51.100.7", port=5080, transport="tcp")
    c = TrunkConfig(name="c", host="198.51.100.7", port=5090)
    matcher = TrunkMatcher(
        [a, b, c], {"a": ["203.0.113.5", "2001:db8::5"], "b": ["198.51.100.7"],
                    "c": ["198.51.100.7"]}
    )  # fmt: skip
    assert matcher.match(peer("udp", "203.0.113.5", 5060)) is a
    assert matcher.match(peer("udp", "203.0.113.5", 5061)) is None  # another port: not it
    assert matcher.match(peer("udp", "2001:db8:0::5", 5060)) is a
    assert matcher.match(peer("udp", "::ffff:203.0.113.5", 5060)) is a
    assert matcher.match(peer("tcp", "203.0.113.5", 41234)) is a  # ephemeral source port
    assert matcher.match(peer("udp", "198.51.100.7", 5090)) is c
    assert matcher.match(peer("tcp", "198.51.100.7", 50000)) is b
    assert matcher.match(peer("udp", "203.0.113.6", 5060)) is None
    assert matcher.match(peer("udp", "not-an-ip", 5060)) is None


def test_odd_usernames_are_escaped_in_uris_but_not_in_the_digest() -> None:
    trunk = TrunkConfig(name="p", host="::1", username="front desk@clinic", password="pw",
                        register=True)  # fmt: skip
    reg = Registration(trunk, LocalContact("udp", "::1", 5062))
    request = reg.start(0.0)
    assert str(request.to.uri) == "sip:front%20desk%40clinic@[::1]"
    assert request.header("Contact") == "<sip:front%20desk%40clinic@[::1]:5062>"
    auth = DigestAuthenticator("p", b"k" * 32)
    again = reg.on_response(
        build_response(request, 401, headers=[("WWW-Authenticate", auth.challenges(0.0)[0])],
                       to_tag="t"), 0.0,
    )  # fmt: skip
    assert again is not None
    assert parse_credentials(again.header("Authorization") or "").username == "front desk@clinic"
    granted = [("Contact", "<sip:front%20desk%40clinic@[::1]:5062>;expires=77")]
    reg.on_response(build_response(again, 200, headers=granted, to_tag="t"), 1.0)
    assert reg.expires_at == 77.0
