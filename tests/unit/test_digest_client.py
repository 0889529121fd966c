"""The client side of digest: parsing challenges and answering them (RFC 2617, RFC 7616)."""

from __future__ import annotations

import pytest

from pbx.errors import RemoteProtocolError
from pbx.sip.digest import (
    Challenge,
    DigestAuthenticator,
    DigestClient,
    Verdict,
    choose_challenge,
    ha1,
    parse_challenge,
    parse_credentials,
)


def test_rfc2617_worked_example() -> None:
    """RFC 2617 §3.5: Mufasa / "Circle Of Life", GET /dir/index.html."""
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge == Challenge(
        "testrealm@host.com",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "MD5",
        "5ccc069c403ebaf9f0171e9517f40e41",
        ("auth", "auth-int"),
    )
    client = DigestClient("Mufasa", "Circle Of Life", cnonce=lambda: "0a4f113b")
    creds = parse_credentials(client.authorization(challenge, "GET", "/dir/index.html"))
    assert creds.response == "6629fae49393a05397450978507c4ef1"
    assert (creds.username, creds.realm, creds.uri) == (
        "Mufasa",
        "testrealm@host.com",
        "/dir/index.html",
    )
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", "00000001", "0a4f113b")
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_round_trip_with_our_authenticator(algorithm: str) -> None:
    server = DigestAuthenticator("pbx", b"k" * 32, algorithms=("MD5", "SHA-256"))
    challenge = parse_challenge(
        next(v for v in server.challenges(10.0) if f"algorithm={algorithm}" in v)
    )
    client = DigestClient("clinic", "secret")

    def stored(alg: str) -> str:
        return ha1(alg, "clinic", "pbx", "secret")

    first = parse_credentials(client.authorization(challenge, "REGISTER", "sip:provider"))
    assert first.algorithm == algorithm
    assert server.verify(first, "REGISTER", stored, 11.0) is Verdict.OK
    # The same nonce again: the client counts up, so the server takes it (no replay).
    second = parse_credentials(client.authorization(challenge, "REGISTER", "sip:provider"))
    assert (first.nc, second.nc) == ("00000001", "00000002")
    assert server.verify(second, "REGISTER", stored, 12.0) is Verdict.OK
    wrong = DigestClient("clinic", "nope").authorization(challenge, "REGISTER", "sip:provider")
    assert server.verify(parse_credentials(wrong), "REGISTER", stored, 13.0) is Verdict.FAILED


def test_stale_flag_and_rfc2069_challenge() -> None:
    server = DigestAuthenticator("pbx", b"k" * 32)
    stale = parse_challenge(server.challenges(0.0, stale=True)[0])
    assert stale.stale and stale.qop == ("auth",)
    old = parse_challenge('Digest realm="r", nonce="n1"')
    assert (old.qop, old.stale, old.algorithm, old.opaque) == ((), False, "MD5", None)
    creds = parse_credentials(DigestClient("u", "p").authorization(old, "INVITE", "sip:x"))
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)


def test_sess_algorithm_is_accepted_by_our_authenticator() -> None:
    server = DigestAuthenticator("pbx", b"k" * 32)
    nonce = server.new_nonce(0.0)
    challenge = Challenge("pbx", nonce, "MD5-SESS", qop=("auth",))
    creds = parse_credentials(DigestClient("u", "p").authorization(challenge, "REGISTER", "sip:x"))
    assert creds.algorithm == "MD5-SESS"
    verdict = server.verify(creds, "REGISTER", lambda _a: ha1("MD5", "u", "pbx", "p"), 1.0)
    assert verdict is Verdict.OK


def test_choose_prefers_sha256_and_skips_what_it_cannot_answer() -> None:
    values = [
        'Basic realm="x"',
        'Digest realm="pbx", nonce="a", algorithm=MD5, qop="auth"',
        'Digest realm="pbx", nonce="b", algorithm=SHA-256, qop="auth"',
        'Digest realm="pbx", nonce="c", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="pbx", nonce="d", algorithm=SHA-256, qop="auth-int"',
    ]
    chosen = choose_challenge(values)
    assert chosen is not None and chosen.nonce == "b"
    assert choose_challenge(values, realm="other") is None
    assert choose_challenge(['Digest realm="pbx"']) is None  # no nonce


def test_quotes_in_values_are_escaped() -> None:
    challenge = parse_challenge(r'Digest realm="a \"quoted\" realm", nonce="n"')
    assert challenge.realm == 'a "quoted" realm'
    creds = parse_credentials(DigestClient('odd"user', "p").authorization(challenge, "BYE", "u"))
    assert (creds.username, creds.realm) == ('odd"user', 'a "quoted" realm')


def test_unanswerable_challenge_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_challenge('Basic realm="x"')
    with pytest.raises(RemoteProtocolError):
        DigestClient("u", "p").authorization(
            Challenge("r", "n", "SHA-512", qop=("auth",)), "REGISTER", "sip:x"
        )
