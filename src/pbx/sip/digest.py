"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760), sans-I/O.

Nonces are stateless: a timestamp and random salt sealed with an HMAC, so any nonce we
issued can be checked without remembering it. The only state is the highest nonce-count
seen per nonce (to refuse replays), bounded by the nonce lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from pbx.errors import RemoteProtocolError

ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password): what the user table stores instead of the password."""
    return ALGORITHMS[algorithm](f"{username}:{realm}:{password}".encode())


@dataclass(frozen=True, slots=True)
class Credentials:
    """A parsed Authorization / Proxy-Authorization Digest header (RFC 7616 §3.4)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None


# RFC 7616 §3.4 auth-param: name = token / quoted-string (quoted-pairs allowed inside).
# The lookbehind keeps a long run of name characters from being retried at every offset.
_AUTH_PARAM = re.compile(
    r'(?<![A-Za-z0-9_\-])([A-Za-z0-9_\-]+)\s*=\s*(?:("(?:[^"\\]|\\.)*")|([^\s,"]*))'
)


def parse_credentials(value: str) -> Credentials:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise RemoteProtocolError(f"unsupported authorization scheme {scheme!r}")
    fields: dict[str, str] = {}
    for name, quoted, token in _AUTH_PARAM.findall(rest):
        fields[name.lower()] = (
            quoted[1:-1].replace('\\"', '"').replace("\\\\", "\\") if quoted else token
        )
    try:
        return Credentials(
            username=fields["username"],
            realm=fields["realm"],
            nonce=fields["nonce"],
            uri=fields["uri"],
            response=fields["response"].lower(),
            algorithm=fields.get("algorithm", "MD5").upper(),
            qop=fields.get("qop"),
            nc=fields.get("nc"),
            cnonce=fields.get("cnonce"),
            opaque=fields.get("opaque"),
        )
    except KeyError as exc:
        raise RemoteProtocolError(f"digest credentials lack {exc.args[0]}") from None


class Verdict(Enum):
    OK = "ok"
    STALE = "stale"  # the digest was right but the nonce too old: challenge with stale=true
    FAILED = "failed"  # a wrong answer to a challenge we sent this source: counts as a failure
    FOREIGN = "foreign"  # not our nonce for this source (forged, spoofed): challenge, no count


_SESS = "-SESS"


class DigestAuthenticator:
    """Issues challenges and checks responses for one realm."""

    def __init__(
        self,
        realm: str,
        secret: bytes | None = None,
        algorithms: Sequence[str] = ("MD5",),
        nonce_ttl: float = 300.0,
    ) -> None:
        for alg in algorithms:
            if alg not in ALGORITHMS:
                raise ValueError(f"unsupported digest algorithm {alg!r}")
        self.realm = realm
        self.algorithms = tuple(algorithms)
        self.nonce_ttl = nonce_ttl
        self._secret = secret or os.urandom(32)
        self._salt = random.Random(os.urandom(32))
        self._opaque = hashlib.sha256(self._secret + b"opaque").hexdigest()[:16]
        # nonce -> highest nonce-count accepted, oldest first, pruned by age
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def _seal(self, body: bytes, source: str) -> bytes:
        data = b"|".join((body, self.realm.encode(), source.encode()))
        return hmac.new(self._secret, data, hashlib.sha256).digest()[:12]

    def new_nonce(self, now: float, source: str = "") -> str:
        """A nonce valid only for `source` (the client's address): over UDP anyone can send
        in a victim's name, but only the victim receives the nonces issued to it."""
        # The salt only makes each nonce unique (the HMAC makes it unforgeable).
        body = struct.pack(">d", now) + self._salt.getrandbits(48).to_bytes(6, "big")
        return base64.urlsafe_b64encode(body + self._seal(body, source)).decode()

    def nonce_issued_at(self, nonce: str, source: str = "") -> float | None:
        """When we issued `nonce` to `source`, or None if it is not one of ours for it."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode())
        except (ValueError, UnicodeError):
            return None
        if len(raw) != 26 or not hmac.compare_digest(raw[14:], self._seal(raw[:14], source)):
            return None
        issued: float = struct.unpack(">d", raw[:8])[0]
        return issued

    def challenges(self, now: float, stale: bool = False, source: str = "") -> list[str]:
        """WWW-Authenticate values, one per algorithm in the configured order (RFC 8760 §2.4)."""
        nonce = self.new_nonce(now, source)
        tail = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.realm}", nonce="{nonce}", opaque="{self._opaque}", '
            f'algorithm={alg}, qop="auth"{tail}'
            for alg in self.algorithms
        ]

    def verify(
        self,
        creds: Credentials,
        method: str,
        ha1_for: Callable[[str], str | None],
        now: float,
        source: str = "",
    ) -> Verdict:
        """Check a response. `ha1_for(algorithm)` gives the user's stored HA1 (None: no user).

        An unknown user fails exactly like a wrong password, so nothing tells them apart.
        """
        issued = self.nonce_issued_at(creds.nonce, source)
        if issued is None or issued > now + 1.0:
            return Verdict.FOREIGN
        algorithm = creds.algorithm
        base = algorithm[: -len(_SESS)] if algorithm.endswith(_SESS) else algorithm
        if base not in self.algorithms or creds.realm != self.realm:
            return Verdict.FAILED
        stored = ha1_for(base)
        known = stored is not None
        # An unknown user costs the same hashing as a known one: timing tells nothing.
        stored = stored or "0" * 64
        h = ALGORITHMS[base]
        key = stored
        if algorithm.endswith(_SESS):
            key = h(f"{stored}:{creds.nonce}:{creds.cnonce or ''}".encode())
        ha2 = h(f"{method}:{creds.uri}".encode())
        if creds.qop is None:
            expected = h(f"{key}:{creds.nonce}:{ha2}".encode())
        elif creds.qop.lower() == "auth" and creds.nc and creds.cnonce is not None:
            expected = h(f"{key}:{creds.nonce}:{creds.nc}:{creds.cnonce}:auth:{ha2}".encode())
        else:
            return Verdict.FAILED
        if not hmac.compare_digest(expected.encode(), creds.response.encode()) or not known:
            return Verdict.FAILED
        if now - issued > self.nonce_ttl:
            return Verdict.STALE
        # Without qop there is no nonce-count (RFC 2069 clients such as pyVoIP): such a
        # nonce is good for one request only, so a captured answer cannot be replayed.
        nc_text = creds.nc or "" if creds.qop is not None else "1"
        if not self._count_ok(creds.nonce, nc_text, issued, now):
            return Verdict.FAILED
        return Verdict.OK

    def _count_ok(self, nonce: str, nc_text: str, issued: float, now: float) -> bool:
        """RFC 7616 §3.4: each use of a nonce must carry a higher nonce-count."""
        try:
            nc = int(nc_text[:16], 16)
        except ValueError:
            return False
        while self._counts:
            oldest, (when, _) = next(iter(self._counts.items()))
            if now - when <= self.nonce_ttl:
                break
            del self._counts[oldest]
        previous = self._counts.get(nonce)
        if previous is not None and nc <= previous[1]:
            return False
        self._counts[nonce] = (issued, nc)
        if previous is None:
            self._counts.move_to_end(nonce)
        return True


def digest_response(
    creds_ha1: str,
    algorithm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The `response` a client computes (used by our own client side and by tests)."""
    h = ALGORITHMS[algorithm]
    ha2 = h(f"{method}:{uri}".encode())
    if qop is None:
        return h(f"{creds_ha1}:{nonce}:{ha2}".encode())
    return h(f"{creds_ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


class FailureThrottle:
    """Blocks a source after `limit` failed authentications within `window` seconds."""

    def __init__(self, limit: int = 10, window: float = 60.0, block: float = 300.0) -> None:
        self.limit, self.window, self.block = limit, window, block
        self._failures: dict[str, list[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self._next_prune = 0.0

    def blocked(self, source: str, now: float) -> bool:
        until = self._blocked_until.get(source)
        if until is None:
            return False
        if now >= until:
            del self._blocked_until[source]
            return False
        return True

    def failure(self, source: str, now: float) -> bool:
        """Record a failure; True when this one starts a block."""
        if self.limit <= 0:
            return False
        times = [t for t in self._failures.get(source, ()) if now - t < self.window]
        times.append(now)
        if len(times) >= self.limit:
            self._failures.pop(source, None)
            self._blocked_until[source] = now + self.block
            return True
        self._failures[source] = times
        self._prune(now)
        return False

    def _prune(self, now: float) -> None:
        """Bound memory under a spray of sources, at most once per window (not per call)."""
        if now < self._next_prune or len(self._failures) + len(self._blocked_until) < 10_000:
            return
        self._next_prune = now + self.window
        self._failures = {s: ts for s, ts in self._failures.items() if now - ts[-1] < self.window}
        self._blocked_until = {s: t for s, t in self._blocked_until.items() if t > now}

    def success(self, source: str) -> None:
        self._failures.pop(source, None)


# The client side: answering a provider's challenge (RFC 7616 §3.4, RFC 8760 §2.4).

# Our preference when a server offers several challenges: the strongest hash we know.
_CLIENT_PREFERENCE = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed WWW-Authenticate / Proxy-Authenticate Digest challenge (RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    opaque: str | None = None
    qop: tuple[str, ...] = ()
    """The qop options offered, lower case; empty for an RFC 2069 challenge."""
    stale: bool = False


def parse_challenge(value: str) -> Challenge:
    """Parse one challenge value; RemoteProtocolError when it is not a usable Digest one."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise RemoteProtocolError(f"unsupported challenge scheme {scheme!r}")
    fields: dict[str, str] = {}
    for name, quoted, token in _AUTH_PARAM.findall(rest):
        fields[name.lower()] = (
            quoted[1:-1].replace('\\"', '"').replace("\\\\", "\\") if quoted else token
        )
    if "realm" not in fields or "nonce" not in fields:
        raise RemoteProtocolError("digest challenge lacks realm or nonce")
    qop = tuple(q.strip().lower() for q in fields.get("qop", "").split(",") if q.strip())
    return Challenge(
        realm=fields["realm"],
        nonce=fields["nonce"],
        algorithm=fields.get("algorithm", "MD5").upper(),
        opaque=fields.get("opaque"),
        qop=qop,
        stale=fields.get("stale", "").lower() == "true",
    )


def _answerable(challenge: Challenge) -> bool:
    base = challenge.algorithm.removesuffix(_SESS)
    return base in ALGORITHMS and (not challenge.qop or "auth" in challenge.qop)


def choose_challenge(values: Sequence[str], realm: str = "") -> Challenge | None:
    """The challenge we answer among several (RFC 8760 §2.4: one per algorithm, the
    client picks the one it prefers); None when none is usable. A non-empty `realm`
    accepts only challenges for that realm."""
    usable: list[Challenge] = []
    for value in values:
        try:
            challenge = parse_challenge(value)
        except RemoteProtocolError:
            continue  # another scheme (Basic, Bearer) or a broken one: look at the others
        if _answerable(challenge) and (not realm or challenge.realm == realm):
            usable.append(challenge)
    if not usable:
        return None
    return min(usable, key=lambda c: _CLIENT_PREFERENCE.index(c.algorithm))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestClient:
    """Answers Digest challenges for one username and password.

    Keeps the nonce-count per nonce (RFC 7616 §3.4: each request answering the same nonce
    carries the next count), so a server that refuses replays accepts every answer.
    """

    def __init__(
        self, username: str, password: str, cnonce: Callable[[], str] | None = None
    ) -> None:
        self.username = username
        self._password = password
        self._cnonce = cnonce or (lambda: os.urandom(8).hex())
        # nonce -> last count used; only the most recent few nonces matter
        self._counts: OrderedDict[str, int] = OrderedDict()

    def authorization(self, challenge: Challenge, method: str, uri: str) -> str:
        """The Authorization / Proxy-Authorization value answering `challenge` for a
        request `method` to `uri`. A challenge we cannot answer (an unknown algorithm, only
        qop=auth-int) raises RemoteProtocolError."""
        if not _answerable(challenge):
            raise RemoteProtocolError(
                f"cannot answer a digest challenge with algorithm {challenge.algorithm} "
                f"and qop {','.join(challenge.qop) or 'none'}"
            )
        algorithm = challenge.algorithm
        base = algorithm.removesuffix(_SESS)
        h = ALGORITHMS[base]
        key = ha1(base, self.username, challenge.realm, self._password)
        qop = "auth" if challenge.qop else None
        cnonce = self._cnonce() if qop or algorithm.endswith(_SESS) else None
        if algorithm.endswith(_SESS):
            key = h(f"{key}:{challenge.nonce}:{cnonce}".encode())
        nc_text: str | None = None
        if qop:
            nc_text = f"{self._next_count(challenge.nonce):08x}"
        response = digest_response(key, base, method, uri, challenge.nonce, qop, nc_text, cnonce)
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(challenge.realm)}",
            f"nonce={_quote(challenge.nonce)}",
            f"uri={_quote(uri)}",
            f"response={_quote(response)}",
            f"algorithm={algorithm}",
        ]
        if cnonce is not None:
            parts.append(f"cnonce={_quote(cnonce)}")
        if challenge.opaque is not None:
            parts.append(f"opaque={_quote(challenge.opaque)}")
        if qop:
            parts += [f"qop={qop}", f"nc={nc_text}"]
        return "Digest " + ", ".join(parts)

    def _next_count(self, nonce: str) -> int:
        count = self._counts.pop(nonce, 0) + 1
        self._counts[nonce] = count
        while len(self._counts) > 16:
            self._counts.popitem(last=False)
        return count
