"""Configuration: one TOML file read once into frozen dataclasses (STYLE.md §6).

`load(path)` validates everything up front; a wrong key or value raises `ConfigError` naming
the key and, where the file shows it, the line. Relative paths are relative to the file.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbx.errors import ConfigError

TRANSPORTS = ("udp", "tcp")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where SIP listens: `udp:127.0.0.1:5060`, `tcp:[::1]:5060`."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SipConfig:
    listen: tuple[ListenAddress, ...] = (ListenAddress("udp", "127.0.0.1", 5060),)
    """Transports and addresses to listen on."""
    domain: str | None = None
    """The SIP domain of this exchange; None accepts requests for any host."""
    user_agent: str = "pbx"
    """Sent in Server and User-Agent headers."""
    max_message: int = 65535
    """Largest SIP message accepted, in octets."""
    tcp_idle_timeout: float = 3700.0
    """A TCP connection with no traffic this long is closed. Longer than the longest
    registration, so a phone that only re-registers keeps its connection."""
    tcp_max_per_address: int = 64
    """Open TCP connections one address may hold; more are refused."""


@dataclass(frozen=True, slots=True)
class RtpConfig:
    port_range: tuple[int, int] = (20000, 20999)
    """Inclusive range of UDP ports for media."""
    address: str = "127.0.0.1"
    """The address media is bound to and advertised in SDP."""
    inactivity_timeout: float = 60.0
    """An answered call whose phones send no RTP this long is hung up; 0 disables it."""


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    min_expires: int = 60
    """Shorter registrations get 423 Interval Too Brief."""
    max_expires: int = 3600
    """Longer requested registrations are shortened to this."""
    default_expires: int = 3600
    """Used when a REGISTER names no expiry."""
    max_contacts: int = 10
    """Bindings one address-of-record may hold."""
    qualify_interval: float = 30.0
    """Seconds between OPTIONS pings to each registered contact; 0 disables them."""
    qualify_timeout: float = 5.0
    """A contact that does not answer a ping within this is marked unreachable."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    realm: str = ""
    """Digest realm; defaults to sip.domain, else "pbx". Changing it invalidates passwords."""
    algorithms: tuple[str, ...] = ("MD5",)
    """Offered digest algorithms, one challenge each, in this order (RFC 8760).

    MD5 alone by default: many user agents know nothing else, and some refuse a 401 that
    offers anything more (baresip 1.0/libre abandons it; SIPp 3.6 answers only the first
    challenge). Sites whose phones all do SHA-256 write ["SHA-256", "MD5"] or ["SHA-256"]."""
    nonce_ttl: float = 300.0
    """Seconds a nonce stays valid; older ones get stale=true."""
    max_failures: int = 10
    """Failed authentications for one user from one address within failure_window before
    that user is blocked from that address."""
    max_source_failures: int = 50
    """Failed authentications from one address, all users together, before the address is
    blocked altogether (extension scans)."""
    failure_window: float = 60.0
    block_seconds: float = 300.0
    """How long a blocked source is ignored."""


@dataclass(frozen=True, slots=True)
class CallsConfig:
    ring_timeout: float = 60.0
    """Seconds a call rings before the caller gets 480 and the callee's phones a CANCEL."""


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    """The file this came from."""
    data_dir: Path
    """Database, recordings and other state live here."""
    sip: SipConfig = field(default_factory=SipConfig)
    rtp: RtpConfig = field(default_factory=RtpConfig)
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    log_level: str = "info"

    @property
    def database(self) -> Path:
        return self.data_dir / "pbx.sqlite3"

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "pbx.sock"

    @property
    def realm(self) -> str:
        return self.auth.realm or self.sip.domain or "pbx"


class _Locator:
    """Finds the line of `section.key` in the TOML text, for error messages."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()

    def line(self, key: str) -> int | None:
        *tables, leaf = key.split(".")
        table = ".".join(tables)
        current = ""
        pattern = re.compile(rf"^\s*\"?{re.escape(leaf)}\"?\s*=")
        for number, text in enumerate(self._lines, 1):
            header = re.match(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?", text)
            if header:
                current = header.group(1)
                if current == key:
                    return number
                continue
            if current == table and pattern.match(text):
                return number
        return None


def _parse_listen(value: str) -> ListenAddress:
    match = re.fullmatch(r"(\w+):(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d+)", value)
    if not match:
        raise ValueError('expected "TRANSPORT:HOST:PORT", e.g. "udp:127.0.0.1:5060"')
    transport, host, port = match.group(1).lower(), match.group(2), int(match.group(3))
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
    if not 0 < port < 65536:
        raise ValueError("port must be 1-65535")
    host = host.strip("[]")
    ipaddress.ip_address(host)
    return ListenAddress(transport, host, port)


def _positive(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise ValueError(f"expected a {'number' if kind is float else 'whole number'}")
        if value < 0:
            raise ValueError("must not be negative")
        return kind(value)

    return check


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _listen_list(value: Any) -> tuple[ListenAddress, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError('expected a list like ["udp:127.0.0.1:5060"]')
    return tuple(_parse_listen(_string(v)) for v in value)


def _port_range(value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError("expected [LOW, HIGH]")
    low, high = value
    if not 1024 <= low < high <= 65535:
        raise ValueError("expected 1024 <= LOW < HIGH <= 65535")
    if low % 2:
        raise ValueError("LOW must be even (RTP takes even ports, RTCP the odd one above)")
    return (low, high)


def _address(value: Any) -> str:
    text = _string(value)
    ipaddress.ip_address(text)
    return text


def _algorithms(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError('expected a list like ["SHA-256", "MD5"]')
    out = tuple(_string(v).upper() for v in value)
    for alg in out:
        if alg not in ("SHA-256", "MD5"):
            raise ValueError(f"unsupported algorithm {alg!r} (SHA-256, MD5)")
    return out


def _log_level(value: Any) -> str:
    text = _string(value).lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError("expected debug, info, warning or error")
    return text


_SECTIONS: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "sip": (
        SipConfig,
        {
            "listen": _listen_list,
            "domain": _string,
            "user_agent": _string,
            "max_message": _positive(int),
            "tcp_idle_timeout": _positive(float),
            "tcp_max_per_address": _positive(int),
        },
    ),
    "rtp": (
        RtpConfig,
        {
            "port_range": _port_range,
            "address": _address,
            "inactivity_timeout": _positive(float),
        },
    ),
    "registrar": (
        RegistrarConfig,
        {
            "min_expires": _positive(int),
            "max_expires": _positive(int),
            "default_expires": _positive(int),
            "max_contacts": _positive(int),
            "qualify_interval": _positive(float),
            "qualify_timeout": _positive(float),
        },
    ),
    "auth": (
        AuthConfig,
        {
            "realm": _string,
            "algorithms": _algorithms,
            "nonce_ttl": _positive(float),
            "max_failures": _positive(int),
            "max_source_failures": _positive(int),
            "failure_window": _positive(float),
            "block_seconds": _positive(float),
        },
    ),
    "calls": (CallsConfig, {"ring_timeout": _positive(float)}),
}
_TOP = {"data_dir": _string, "log_level": _log_level}


def load(path: str | Path) -> Config:
    """Read and validate a configuration file."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return from_mapping(raw, path, _Locator(text))


def from_mapping(raw: Mapping[str, Any], path: Path, locator: _Locator | None = None) -> Config:
    where = locator or _Locator("")

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, line=where.line(key))

    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TOP:
            try:
                values[key] = _TOP[key](value)
            except ValueError as exc:
                raise fail(key, str(exc)) from None
        elif key in _SECTIONS:
            cls, schema = _SECTIONS[key]
            if not isinstance(value, dict):
                raise fail(key, "expected a table")
            kwargs: dict[str, Any] = {}
            for sub, sub_value in value.items():
                if sub not in schema:
                    known = ", ".join(sorted(schema))
                    raise fail(f"{key}.{sub}", f"unknown key (known: {known})")
                try:
                    kwargs[sub] = schema[sub](sub_value)
                except ValueError as exc:
                    raise fail(f"{key}.{sub}", str(exc)) from None
            values[key] = cls(**kwargs)
        else:
            known = ", ".join(sorted([*_TOP, *_SECTIONS]))
            raise fail(key, f"unknown key (known: {known})")
    if "data_dir" not in values:
        raise ConfigError("is required", key="data_dir")
    data_dir = Path(values.pop("data_dir"))
    if not data_dir.is_absolute():
        data_dir = path.parent / data_dir
    config = Config(path=path, data_dir=data_dir, **values)
    reg = config.registrar
    if not reg.min_expires <= reg.default_expires <= reg.max_expires:
        raise fail(
            "registrar.default_expires", "needs min_expires <= default_expires <= max_expires"
        )
    return config
