"""Digest authentication core (RFC 7616 / RFC 8760), with an injected clock."""

from __future__ import annotations

import pytest

from pbx.errors import RemoteProtocolError
from pbx.sip.digest import (
    Credentials,
    DigestAuthenticator,
    FailureThrottle,
    Verdict,
    digest_response,
    ha1,
    parse_credentials,
)

REALM = "pbx"


def answer(
    auth: DigestAuthenticator,
    now: float,
    algorithm: str = "MD5",
    password: str = "secret",
    nc: int = 1,
    nonce: str | None = None,
    qop: str | None = "auth",
) -> Credentials:
    nonce = nonce or auth.new_nonce(now)
    key = ha1(algorithm, "1001", REALM, password)
    nc_text = f"{nc:08x}" if qop else None
    cnonce = "abc" if qop else None
    response = digest_response(key, algorithm, "REGISTER", "sip:pbx", nonce, qop, nc_text, cnonce)
    return Credentials("1001", REALM, nonce, "sip:pbx", response, algorithm, qop, nc_text, cnonce)


def stored(algorithm: str) -> str:
    return ha1(algorithm, "1001", REALM, "secret")


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_good_response_is_accepted(algorithm: str) -> None:
    auth = DigestAuthenticator(REALM, b"k" * 32, algorithms=("MD5", "SHA-256"))
    assert auth.verify(answer(auth, 100.0, algorithm), "REGISTER", stored, 100.5) is Verdict.OK


def test_rfc2069_response_without_qop_is_accepted() -> None:
    auth = DigestAuthenticator(REALM, b"k" * 32)
    assert auth.verify(answer(auth, 0.0, qop=None), "REGISTER", stored, 1.0) is Verdict.OK


def test_wrong_password_and_unknown_user_fail_alike() -> None:
    auth = DigestAuthenticator(REALM, b"k" * 32)
    wrong = answer(auth, 0.0, password="nope")
    assert auth.verify(wrong, "REGISTER", stored, 1.0) is Verdict.FAILED
    assert auth.verify(answer(auth, 0.0), "REGISTER", lambda _a: None, 1.0) is Verdict.FAILED


def test_expired_nonce_is_stale_only_when_the_digest_is_right() -> None:
    auth = DigestAuthenticator(REALM, b"k" * 32, nonce_ttl=300)
    assert auth.verify(answer(auth, 0.0), "REGISTER", stored, 301.0) is Verdict.STALE
    wrong = answer(auth, 0.0, password="nope")
    assert auth.verify(wrong, "REGISTER", stored, 301.0) is Verdict.FAILED


def test_nonce_count_replay_is_refused() -> None:
    auth = DigestAuthenticator(REALM, b"k" * 32)
    nonce = auth.new_nonce(0.0)
    first = answer(auth, 0.0, nc=1, nonce=nonce)
    assert auth.verify(first, "REGISTER", stored, 1.0) is Verdict.OK
    assert auth.verify(first, "REGISTER", stored, 2.0) is Verdict.FAILED  # replay
    second = answer(auth, 0.0, nc=2, nonce=nonce)
    assert auth.verify(second, "REGISTER", stored, 3.0) is Verdict.OK


def test_forged_or_foreign_nonce_fails() -> None:
    ours = DigestAuthenticator(REALM, b"k" * 32)
    theirs = DigestAuthenticator(REALM, b"x" * 32)
    creds = answer(theirs, 0.0)
    assert ours.verify(creds, "REGISTER", stored, 1.0) is Verdict.FOREIGN
    assert ours.nonce_issued_at("not-base64!") is None


def test_nonce_is_bound_to_the_address_it_was_issued_to() -> None:
    auth = DigestAuthenticator(REALM, b"k" * 32)
    nonce = auth.new_nonce(0.0, "192.0.2.7")
    creds = answer(auth, 0.0, nonce=nonce)
    assert auth.verify(creds, "REGISTER", stored, 1.0, "198.51.100.9") is Verdict.FOREIGN
    assert auth.verify(creds, "REGISTER", stored, 1.0, "192.0.2.7") is Verdict.OK


def test_answer_without_qop_is_good_once() -> None:
    auth = DigestAuthenticator(REALM, b"k" * 32)
    creds = answer(auth, 0.0, qop=None)
    assert auth.verify(creds, "REGISTER", stored, 1.0) is Verdict.OK
    assert auth.verify(creds, "REGISTER", stored, 2.0) is Verdict.FAILED


def test_nonce_survives_restart_with_same_secret() -> None:
    creds = answer(DigestAuthenticator(REALM, b"k" * 32), 0.0)
    restarted = DigestAuthenticator(REALM, b"k" * 32)
    assert restarted.verify(creds, "REGISTER", stored, 5.0) is Verdict.OK


def test_offered_algorithms_only() -> None:
    auth = DigestAuthenticator(REALM, b"k" * 32)  # default: MD5 alone
    assert len(auth.challenges(0.0)) == 1
    creds = answer(auth, 0.0, "SHA-256")
    assert auth.verify(creds, "REGISTER", stored, 1.0) is Verdict.FAILED


def test_challenges_one_per_algorithm_in_order() -> None:
    auth = DigestAuthenticator(REALM, b"k" * 32, algorithms=("MD5", "SHA-256"))
    values = auth.challenges(0.0, stale=True)
    assert [v.split("algorithm=")[1].split(",")[0] for v in values] == ["MD5", "SHA-256"]
    assert all('qop="auth"' in v and "stale=true" in v for v in values)


def test_parse_credentials() -> None:
    creds = parse_credentials(
        'Digest username="1001",realm="pbx",nonce="n",uri="sip:x",response="ABC",'
        'algorithm=sha-256,qop=auth,nc=00000001,cnonce="c"'
    )
    assert (creds.username, creds.algorithm, creds.response, creds.nc) == (
        "1001", "SHA-256", "abc", "00000001"
    )  # fmt: skip
    with pytest.raises(RemoteProtocolError):
        parse_credentials('Digest username="1001"')
    with pytest.raises(RemoteProtocolError):
        parse_credentials("Basic Zm9vOmJhcg==")


def test_throttle_blocks_and_releases() -> None:
    throttle = FailureThrottle(limit=3, window=60, block=300)
    assert not throttle.failure("10.0.0.9", 0.0)
    assert not throttle.failure("10.0.0.9", 1.0)
    assert throttle.failure("10.0.0.9", 2.0)
    assert throttle.blocked("10.0.0.9", 100.0)
    assert not throttle.blocked("10.0.0.8", 100.0)
    assert not throttle.blocked("10.0.0.9", 302.0)


def test_throttle_window_forgets_old_failures() -> None:
    throttle = FailureThrottle(limit=3, window=10, block=300)
    throttle.failure("s", 0.0)
    throttle.failure("s", 1.0)
    assert not throttle.failure("s", 20.0)
    assert not throttle.blocked("s", 21.0)
