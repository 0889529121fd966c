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
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pbx.errors import ConfigError
from pbx.hours import DAYS, Holiday, Range, Schedule, parse_holiday, parse_ranges, zone

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
class MwiConfig:
    """Message waiting indication (RFC 3842): SUBSCRIBE to message-summary, NOTIFY."""

    unsolicited: tuple[str, ...] = ()
    """Extensions whose registered phones get NOTIFYs without subscribing (phones that
    never SUBSCRIBE): on every change of their mailbox and whenever they register."""
    min_expires: int = 60
    """Shorter subscriptions get 423 Interval Too Brief (RFC 6665 lets a notifier shorten
    a subscription, never lengthen one)."""
    max_expires: int = 3600
    """Longer requested subscriptions are shortened to this."""
    default_expires: int = 3600
    """Used when a SUBSCRIBE names no expiry."""


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
    session_expires: int = 1800
    """RFC 4028 Session-Expires we ask for and accept, in seconds; at least min_se."""
    min_se: int = 90
    """RFC 4028 Min-SE: requests for shorter session intervals get 422. RFC 4028 §5 wants
    at least 90 on the wire; smaller values are accepted here only so tests can run fast."""
    max_forwards: int = 70
    """Max-Forwards of the INVITEs we originate (RFC 3261 §8.1.1.6), 1-255."""


@dataclass(frozen=True, slots=True)
class DialplanConfig:
    """Feature codes and emergency numbers. An empty string turns a feature code off."""

    emergency_numbers: tuple[str, ...] = ("911", "112")
    """Always sent to a trunk from an extension, whatever the routes or the hook say."""
    emergency_trunk: str | None = None
    """The [[trunk]] emergency calls use; None: the first trunk."""
    hook: str | None = None
    """Python routing hook, "module:function" or "path/to/file.py:function" (relative to
    the configuration file); see pbx.dialplan.load_hook."""
    pickup: str = "*8"
    """Group pickup: answers any call ringing at an extension."""
    directed_pickup: str = "**"
    """Prefix: "**1002" picks up the call ringing at 1002."""
    park: str = "700"
    """Transferring a call to this number parks it."""
    park_slots: tuple[int, int] | None = (701, 720)
    """Inclusive range of slots parked calls wait in; dialling a slot retrieves its call."""
    park_timeout: float = 120.0
    """Seconds a call stays parked before it rings the phone that parked it again."""
    agent_login: str = "*45"
    """An agent's phone dialling this logs the agent in (to the queues they were last in,
    else every queue whose skills they have), or out if they are logged in."""
    queue_callback: str = "*"
    """A caller waiting in a queue who presses this key keeps their place, hangs up and is
    called back at their number when an agent is free; "" turns callbacks off."""
    agent_pause: str = "*46"
    """Pauses the agent dialling it (Not Ready), or makes them Ready if paused. Digits
    after it are the reason: "*462" pauses with reason "2"."""

    @property
    def slots(self) -> tuple[str, ...]:
        """The park slot numbers as dialled, lowest first."""
        if self.park_slots is None:
            return ()
        low, high = self.park_slots
        return tuple(str(n) for n in range(low, high + 1))


class RingStrategy(StrEnum):
    SIMULTANEOUS = "simultaneous"
    """Every member rings at once; the first to answer takes the call."""
    IN_ORDER = "in_order"
    """Members ring one after the other, member_timeout seconds each."""


@dataclass(frozen=True, slots=True)
class RingGroupConfig:
    number: str
    """What callers dial."""
    members: tuple[str, ...]
    """Extensions that ring, in order."""
    name: str = ""
    strategy: RingStrategy = RingStrategy.SIMULTANEOUS
    member_timeout: float = 20.0
    """Seconds each member rings when the strategy is in_order."""


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """A SIP provider (or another exchange) that carries calls to and from the outside."""

    name: str
    """Unique, [a-z0-9_-]+; routes, DIDs and logs refer to the trunk by it."""
    host: str
    """IP address or hostname of the provider."""
    port: int = 5060
    transport: str = "udp"
    """udp or tcp."""
    username: str = ""
    """Digest user, and the user of the From and Contact of our REGISTER."""
    password: str = field(default="", repr=False)
    """Kept out of repr() so logs and tracebacks do not show it."""
    realm: str = ""
    """Answer only challenges for this realm; "" answers whatever realm the provider names."""
    register: bool = False
    """Keep a registration with the provider (needs username). Off for trunks that
    recognise us by address."""
    expires: int = 3600
    """Registration interval we ask for, in seconds."""
    domain: str = ""
    """The provider's SIP domain for From, To and Request-URI; "" means host."""
    caller_id: str = ""
    """Outbound caller ID (P-Asserted-Identity) when the route names none; "" for none."""

    @property
    def sip_domain(self) -> str:
        return self.domain or self.host


@dataclass(frozen=True, slots=True)
class OutboundRouteConfig:
    """Dialled numbers starting with `prefix` go out through `trunk`; the longest prefix wins."""

    name: str
    trunk: str
    """Names a [[trunk]]."""
    prefix: str = ""
    """"" matches every number."""
    strip: int = 0
    """Leading characters removed before the number is sent to the trunk."""
    prepend: str = ""
    """Added in front after stripping, e.g. "+1"."""
    caller_id: str = ""
    """Overrides the trunk's caller_id; "" keeps it."""
    min_length: int = 0
    """Bounds on the length of the number as dialled; 0 is no bound."""
    max_length: int = 0


@dataclass(frozen=True, slots=True)
class DidConfig:
    """A number the provider delivers to us, and where calls to it go."""

    number: str
    """As the provider sends it (Request-URI or To user); a leading "+" is not significant."""
    target: str
    """Any internal target: an extension, a ring group, a park slot..."""
    trunk: str = ""
    """Only for calls from this [[trunk]]; "" for calls from any trunk."""


class RecordPolicy(StrEnum):
    NONE = "none"
    """Only what is started on demand (feature code, CLI)."""
    ALL = "all"
    """Every answered call."""
    RULES = "rules"
    """Calls that a [[recording_rule]] matches."""


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    record: RecordPolicy = RecordPolicy.NONE
    format: str = "wav"
    """wav or flac: stereo, the caller left and the callee right, 8 kHz 16-bit."""
    directory: str = "recordings"
    """Where recordings go; relative to data_dir."""
    retention_days: float = 0.0
    """Recordings older than this are deleted (0 keeps them); a matching rule's wins."""
    toggle_code: str = "*1"
    """Dialled during a call, starts or stops recording it ("" turns it off)."""
    pause_code: str = "*2"
    """Dialled during a recorded call, pauses or resumes the recording."""
    trim_silence: bool = False
    """Cut a finished recording's leading and trailing silence (no speech on either channel,
    by webrtcvad) down to 0.5 s each side; one with no speech at all keeps its first 1 s.
    The duration indexed is the trimmed one."""


@dataclass(frozen=True, slots=True)
class RecordingRuleConfig:
    """Calls to record (with record = "rules") and how long to keep them."""

    extension: str = ""
    """A call this extension makes, takes or is transferred to."""
    trunk: str = ""
    """A call in or out through this [[trunk]]."""
    queue: str = ""
    """A call through this ACD queue."""
    record: bool = True
    """False: keep such calls out of recordings even when record = "all"."""
    retention_days: float = 0.0
    """0: the [recording] default."""


TONE_KEYS = ("dial", "ringback", "busy", "congestion", "call_waiting", "beep", "join", "leave")


@dataclass(frozen=True, slots=True)
class TonesConfig:
    """Call-progress tones: a country's set, and any tone replaced in Asterisk's
    indications.conf notation (e.g. busy = "480+620/500,0/500")."""

    country: str = "us"
    dial: str = ""
    ringback: str = ""
    busy: str = ""
    congestion: str = ""
    call_waiting: str = ""
    beep: str = ""
    join: str = ""
    leave: str = ""

    def overrides(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in TONE_KEYS if getattr(self, name)}


@dataclass(frozen=True, slots=True)
class MediaConfig:
    music_on_hold: str = "moh"
    """A directory (relative to data_dir) of sound files played, looped, to a caller on
    hold or parked; without files a built-in chime plays. "" plays silence."""
    inband_dtmf: bool = True
    """Listen for DTMF tones in the audio of phones that agreed no telephone-event."""


@dataclass(frozen=True, slots=True)
class ConferenceConfig:
    number: str
    """What callers dial to join."""
    name: str = ""
    pin: str = ""
    """Digits to key in (ended by # or after a pause) before joining; "" for none."""
    max_members: int = 30


@dataclass(frozen=True, slots=True)
class TimeRouteConfig:
    """A number that goes one way while its [[hours]] are open and another while closed."""

    number: str
    """What is dialled, or what a [[did]] target names."""
    hours: str
    """Names an [[hours]] table."""
    open: str
    """Where calls go while open: any dialplan target ("1001", "600", "queue:NAME",
    "ivr:NAME", "voicemail:BOX", "trunk:NAME:NUMBER", another time_route's number)."""
    closed: str
    """Where calls go while closed; "trunk:NAME:NUMBER" here is the after-hours on-call
    forward, allowed even for a call from a trunk (see pbx.dialplan)."""


@dataclass(frozen=True, slots=True)
class IvrConfig:
    modules: tuple[str, ...] = ()
    """Python modules holding the `@flow`s: file paths relative to this file, or module
    names (importable, or in this file's directory)."""
    prompts: tuple[str, ...] = ()
    """Directories (relative to this file) searched for a prompt name before the shipped
    English set: "clinic-menu" is prompts/clinic-menu.wav (or .flac, .ogg)."""
    numbers: tuple[tuple[str, str], ...] = ()
    """(number, flow): dialling the number (or a [[did]] naming it) runs the flow."""
    fallback: str = ""
    """Where a caller goes when a flow fails and the flow names no fallback ("" hangs up)."""


@dataclass(frozen=True, slots=True)
class VoicemailConfig:
    extensions: bool = False
    """Every extension has a mailbox: a call it does not answer (busy, no answer, not
    registered) goes to it."""
    access: str = "*97"
    """Dialled from a phone: its own mailbox (after the PIN)."""
    access_any: str = "*98"
    """Dialled from a phone: asks for the mailbox, then its PIN."""
    ring_seconds: float = 25.0
    """How long an extension with a mailbox rings before the caller goes to voicemail."""
    max_seconds: float = 180.0
    silence_seconds: float = 5.0
    """This much silence after the caller spoke ends a message (0: only # or hang-up)."""
    min_seconds: float = 1.0
    """Shorter messages are dropped (a caller who hung up at the beep)."""
    directory: str = "voicemail"
    """Under data_dir: one directory per mailbox holding its messages and greetings."""
    operator: str = ""
    """Where a caller who presses 0 during a greeting goes instead of leaving a message
    (a dialplan target: reception's extension...); "" offers nothing. A [[mailbox]] may
    name its own; an extension's box never offers the extension itself."""
    operator_hours: str = ""
    """Names an [[hours]] table: the operator is offered only while it is open ("" at
    any time)."""
    envelope: bool = True
    """Before each message heard by phone, when it came ("received yesterday at 3 oh 5
    p.m."); the caller's number is said either way."""
    timezone: ZoneInfo | None = None
    """The zone the envelope's times are said in; None: the server's own."""


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    box: str
    """The mailbox's name: "refills", or an extension's number."""
    name: str = ""
    pin: str = ""
    """The PIN for listening by phone; `pbx voicemail pin` sets one in the database, which
    wins over this."""
    operator: str | None = None
    """Where 0 during this box's greeting goes, at any time ([voicemail] operator_hours
    is for [voicemail] operator); None: [voicemail] operator; "": nowhere."""


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    """The file this came from."""
    data_dir: Path
    """Database, recordings and other state live here."""
    sip: SipConfig = field(default_factory=SipConfig)
    rtp: RtpConfig = field(default_factory=RtpConfig)
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    mwi: MwiConfig = field(default_factory=MwiConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    dialplan: DialplanConfig = field(default_factory=DialplanConfig)
    ring_groups: tuple[RingGroupConfig, ...] = ()
    trunks: tuple[TrunkConfig, ...] = ()
    outbound_routes: tuple[OutboundRouteConfig, ...] = ()
    dids: tuple[DidConfig, ...] = ()
    conferences: tuple[ConferenceConfig, ...] = ()
    hours: tuple[Schedule, ...] = ()
    """The [[hours]] tables: opening hours that [[time_route]]s (and IVR flows) consult."""
    time_routes: tuple[TimeRouteConfig, ...] = ()
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    recording_rules: tuple[RecordingRuleConfig, ...] = ()
    media: MediaConfig = field(default_factory=MediaConfig)
    tones: TonesConfig = field(default_factory=TonesConfig)
    ivr: IvrConfig = field(default_factory=IvrConfig)
    voicemail: VoicemailConfig = field(default_factory=VoicemailConfig)
    mailboxes: tuple[MailboxConfig, ...] = ()
    log_level: str = "info"

    @property
    def database(self) -> Path:
        return self.data_dir / "pbx.sqlite3"

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "pbx.sock"

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / self.recording.directory

    @property
    def voicemail_dir(self) -> Path:
        return self.data_dir / self.voicemail.directory

    def mailbox(self, box: str) -> MailboxConfig | None:
        """The [[mailbox]] called `box`."""
        return next((m for m in self.mailboxes if m.box == box), None)

    @property
    def music_dir(self) -> Path | None:
        return self.data_dir / self.media.music_on_hold if self.media.music_on_hold else None

    @property
    def realm(self) -> str:
        return self.auth.realm or self.sip.domain or "pbx"

    def trunk(self, name: str) -> TrunkConfig | None:
        """The [[trunk]] called `name`."""
        return next((t for t in self.trunks if t.name == name), None)

    @property
    def emergency_trunk(self) -> TrunkConfig | None:
        """Where emergency calls go: dialplan.emergency_trunk, else the first trunk."""
        if self.dialplan.emergency_trunk is not None:
            return self.trunk(self.dialplan.emergency_trunk)
        return self.trunks[0] if self.trunks else None


class _Locator:
    """Finds the line of a key in the TOML text, for error messages.

    Keys are `section.key`, or `array[N].key` for the N-th (from 0) `[[array]]` table. A key
    the file does not show (a required one left out) points at its table's header.
    """

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()

    def line(self, key: str) -> int | None:
        *tables, leaf = key.split(".")
        table = ".".join(tables)
        pattern = re.compile(rf"^\s*\"?{re.escape(leaf)}\"?\s*=")
        current, header_line = "", None
        seen: dict[str, int] = {}
        for number, text in enumerate(self._lines, 1):
            header = re.match(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?", text)
            if header:
                current = name = header.group(2)
                if header.group(1) == "[[":
                    current = f"{name}[{seen.get(name, 0)}]"
                    seen[name] = seen.get(name, 0) + 1
                if key in (current, name):
                    return number
                if current == table:
                    header_line = number
                continue
            if current == table and pattern.match(text):
                return number
        return header_line


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


_NUMBER = re.compile(r"[0-9A-Za-z*#+._-]+")
_TRUNK_NAME = re.compile(r"[a-z0-9_-]+")
_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
_FLOW_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_TARGET = re.compile(r"[A-Za-z0-9_*#+.:-]+")
_BOX = re.compile(r"[A-Za-z0-9_-]+")
_HOOK = re.compile(r"(?P<module>[^:]+):(?P<function>[A-Za-z_][A-Za-z0-9_]*)")


def _optional_key(value: Any) -> str:
    text = _string(value)
    if len(text) > 1 or (text and text not in "0123456789*#"):
        raise ValueError('expected one key ("0"-"9", "*" or "#") or ""')
    return text


def _number(value: Any) -> str:
    """A dialled number: digits, letters, * # + . _ -."""
    if not isinstance(value, str):
        raise ValueError('expected a string like "600" (quoted, so leading zeros survive)')
    if not _NUMBER.fullmatch(value):
        raise ValueError(f"{value!r} is not a dialable number (digits, letters, * # + . _ -)")
    return value


def _optional_number(value: Any) -> str:
    """A number, or "" for none."""
    return "" if value == "" else _number(value)


def _numbers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError('expected a list like ["911", "112"]')
    out = tuple(_number(v) for v in value)
    for number in out:
        if out.count(number) > 1:
            raise ValueError(f"{number} is listed twice")
    return out


def _members(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError('expected a list of extensions like ["1001", "1002"]')
    return _numbers(value)


def _whole(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected a whole number")
        if value < low or (high is not None and value > high):
            raise ValueError(f"expected {low}-{high}" if high is not None else f"expected >= {low}")
        return value

    return check


def _seconds(value: Any) -> float:
    """A duration that must be more than zero."""
    seconds: float = _positive(float)(value)
    if seconds <= 0:
        raise ValueError("must be more than 0")
    return seconds


def _record_policy(value: Any) -> RecordPolicy:
    try:
        return RecordPolicy(_string(value))
    except ValueError:
        raise ValueError('expected "none", "all" or "rules"') from None


def _recording_format(value: Any) -> str:
    text = _string(value).lower()
    if text not in ("wav", "flac"):
        raise ValueError('expected "wav" or "flac"')
    return text


def _relative_dir(value: Any) -> str:
    text = _string(value)
    if not text or ".." in Path(text).parts:
        raise ValueError("expected a directory inside data_dir (no '..')")
    return text


def _relative_dir_or_off(value: Any) -> str:
    return "" if value == "" else _relative_dir(value)


def _country(value: Any) -> str:
    from media.tones import COUNTRIES

    text = _string(value).lower()
    if text not in COUNTRIES:
        raise ValueError(f"expected one of {', '.join(COUNTRIES)}")
    return text


def _tone(value: Any) -> str:
    from media.tones import parse_tone

    text = _string(value)
    parse_tone(text)  # ValueError says what is wrong
    return text


def _pin(value: Any) -> str:
    text = _string(value)
    if text and not (text.isascii() and text.isdigit() and len(text) <= 16):
        raise ValueError('expected digits only, e.g. "4321" (at most 16)')
    return text


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _optional_string(value: Any) -> str | None:
    return _string(value) or None


def _trunk_name(value: Any) -> str:
    text = _string(value)
    if not _TRUNK_NAME.fullmatch(text):
        raise ValueError(f"{text!r}: expected lower-case letters, digits, _ and - only")
    return text


def _optional_trunk_name(value: Any) -> str:
    return "" if value == "" else _trunk_name(value)


def _host(value: Any) -> str:
    text = _string(value).strip("[]")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.fullmatch(text):
            raise ValueError(f"{text!r} is neither an IP address nor a hostname") from None
    return text


def _transport(value: Any) -> str:
    text = _string(value).lower()
    if text not in TRANSPORTS:
        raise ValueError(f"expected one of {', '.join(TRANSPORTS)}")
    return text


def _strategy(value: Any) -> RingStrategy:
    try:
        return RingStrategy(_string(value))
    except ValueError:
        raise ValueError(f"expected one of {', '.join(s.value for s in RingStrategy)}") from None


def _hook(value: Any) -> str | None:
    text = _string(value)
    if text and not _HOOK.fullmatch(text):
        raise ValueError('expected "module:function" or "path/to/file.py:function"')
    return text or None


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of non-empty strings")
    return tuple(value)


def _flow_numbers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError('expected a table of number = "flow"')
    pairs = []
    for number, name in value.items():
        _number(number)
        if not isinstance(name, str) or not _FLOW_NAME.fullmatch(name):
            raise ValueError(f"{number}: expected a flow name, not {name!r}")
        pairs.append((number, name))
    return tuple(pairs)


def _target(value: Any) -> str:
    text = _string(value)
    if text and not _TARGET.fullmatch(text):
        raise ValueError(f"{text!r} is not a dialplan target")
    return text


def _box(value: Any) -> str:
    text = _string(value)
    if not _BOX.fullmatch(text):
        raise ValueError(f"{text!r}: expected letters, digits, _ and - only")
    return text


def _park_slots(value: Any) -> tuple[int, int] | None:
    if value == []:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError("expected [FIRST, LAST] (inclusive), or [] for no parking")
    low, high = value
    if not 0 <= low <= high:
        raise ValueError("expected 0 <= FIRST <= LAST")
    if high - low >= 1000:
        raise ValueError("at most 1000 slots")
    return (low, high)


_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TARGET_KINDS = ("queue", "trunk", "ivr", "voicemail")


def _name(value: Any) -> str:
    text = _string(value)
    if not _NAME.fullmatch(text):
        raise ValueError(f"{text!r}: expected letters, digits, _ . and - only")
    return text


def _timezone(value: Any) -> ZoneInfo:
    return zone(_string(value))


def _optional_timezone(value: Any) -> ZoneInfo | None:
    name = _string(value)
    return zone(name) if name else None


def _day_ranges(value: Any) -> tuple[Range, ...]:
    return parse_ranges(_string(value))


def _holidays(value: Any) -> tuple[Holiday, ...]:
    if not isinstance(value, list):
        raise ValueError('expected a list like ["2026-12-25", "2026-12-24 08:00-12:00"]')
    out = tuple(parse_holiday(_string(v)) for v in value)
    days = [h.day for h in out]
    for day in days:
        if days.count(day) > 1:
            raise ValueError(f"{day} is listed twice")
    return tuple(sorted(out, key=lambda h: h.day))


def _time_route_target(value: Any) -> str:
    """A dialplan target: a number, "queue:NAME[:PRIORITY]", "trunk:NAME:NUMBER",
    "ivr:NAME" or "voicemail:BOX[:busy]"."""
    text = _string(value)
    kind, colon, rest = text.partition(":")
    if not colon:
        return _number(text)
    if kind not in _TARGET_KINDS:
        raise ValueError(
            f'{text!r}: expected a number, "queue:NAME", "trunk:NAME:NUMBER", "ivr:NAME" '
            'or "voicemail:BOX"'
        )
    name, _, extra = rest.partition(":")
    if kind == "trunk":
        _trunk_name(name)
        if not extra:
            raise ValueError(f'{text!r}: expected "trunk:NAME:NUMBER"')
        _number(extra)
    elif kind == "queue":
        _name(name)
        if extra and not extra.isdigit():
            raise ValueError(f'{text!r}: expected "queue:NAME" or "queue:NAME:PRIORITY"')
    elif kind == "voicemail" and extra not in ("", "unavailable", "busy"):
        raise ValueError(f'{text!r}: expected "voicemail:BOX" or "voicemail:BOX:busy"')
    elif (kind == "ivr" and extra) or not _NAME.fullmatch(name):
        raise ValueError(f'{text!r}: expected "{kind}:NAME" (letters, digits, _ . -)')
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
    "mwi": (
        MwiConfig,
        {
            "unsolicited": _numbers,
            "min_expires": _positive(int),
            "max_expires": _positive(int),
            "default_expires": _positive(int),
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
    "calls": (
        CallsConfig,
        {
            "ring_timeout": _positive(float),
            "session_expires": _whole(1),
            "min_se": _whole(1),
            "max_forwards": _whole(1, 255),
        },
    ),
    "recording": (
        RecordingConfig,
        {
            "record": _record_policy,
            "format": _recording_format,
            "directory": _relative_dir,
            "retention_days": _positive(float),
            "toggle_code": _optional_number,
            "pause_code": _optional_number,
            "trim_silence": _boolean,
        },
    ),
    "media": (MediaConfig, {"music_on_hold": _relative_dir_or_off, "inband_dtmf": _boolean}),
    "tones": (TonesConfig, {"country": _country, **dict.fromkeys(TONE_KEYS, _tone)}),
    "ivr": (
        IvrConfig,
        {"modules": _strings, "prompts": _strings, "numbers": _flow_numbers, "fallback": _target},
    ),
    "voicemail": (
        VoicemailConfig,
        {
            "extensions": _boolean,
            "access": _optional_number,
            "access_any": _optional_number,
            "ring_seconds": _seconds,
            "max_seconds": _seconds,
            "silence_seconds": _positive(float),
            "min_seconds": _positive(float),
            "directory": _relative_dir,
            "operator": _target,
            "operator_hours": _string,
            "envelope": _boolean,
            "timezone": _optional_timezone,
        },
    ),
    "dialplan": (
        DialplanConfig,
        {
            "emergency_numbers": _numbers,
            "emergency_trunk": _optional_string,
            "hook": _hook,
            "pickup": _optional_number,
            "directed_pickup": _optional_number,
            "park": _optional_number,
            "park_slots": _park_slots,
            "park_timeout": _seconds,
            "agent_login": _optional_number,
            "agent_pause": _optional_number,
            "queue_callback": _optional_key,
        },
    ),
}
# Arrays of tables: TOML name -> (Config field, class, schema, required keys).
_ARRAYS: dict[str, tuple[str, type, dict[str, Callable[[Any], Any]], tuple[str, ...]]] = {
    "ring_group": (
        "ring_groups",
        RingGroupConfig,
        {
            "number": _number,
            "name": _string,
            "members": _members,
            "strategy": _strategy,
            "member_timeout": _seconds,
        },
        ("number", "members"),
    ),
    "trunk": (
        "trunks",
        TrunkConfig,
        {
            "name": _trunk_name,
            "host": _host,
            "port": _whole(1, 65535),
            "transport": _transport,
            "username": _string,
            "password": _string,
            "realm": _string,
            "register": _boolean,
            "expires": _whole(1),
            "domain": _string,
            "caller_id": _string,
        },
        ("name", "host"),
    ),
    "outbound_route": (
        "outbound_routes",
        OutboundRouteConfig,
        {
            "name": _string,
            "prefix": _optional_number,
            "strip": _whole(0),
            "prepend": _optional_number,
            "trunk": _trunk_name,
            "caller_id": _string,
            "min_length": _whole(0),
            "max_length": _whole(0),
        },
        ("name", "trunk"),
    ),
    "conference": (
        "conferences",
        ConferenceConfig,
        {"number": _number, "name": _string, "pin": _pin, "max_members": _whole(2, 30)},
        ("number",),
    ),
    "recording_rule": (
        "recording_rules",
        RecordingRuleConfig,
        {
            "extension": _optional_number,
            "trunk": _optional_trunk_name,
            "queue": _string,
            "record": _boolean,
            "retention_days": _positive(float),
        },
        (),
    ),
    "mailbox": (
        "mailboxes",
        MailboxConfig,
        {"box": _box, "name": _string, "pin": _pin, "operator": _target},
        ("box",),
    ),
    "did": (
        "dids",
        DidConfig,
        {"number": _number, "target": _number, "trunk": _optional_trunk_name},
        ("number", "target"),
    ),
    "hours": (
        "hours",
        Schedule,
        {
            "name": _name,
            "timezone": _timezone,
            **dict.fromkeys(DAYS, _day_ranges),
            "holidays": _holidays,
        },
        ("name",),
    ),
    "time_route": (
        "time_routes",
        TimeRouteConfig,
        {
            "number": _number,
            "hours": _name,
            "open": _time_route_target,
            "closed": _time_route_target,
        },
        ("number", "hours", "open", "closed"),
    ),
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

    def table(
        key: str,
        value: Any,
        cls: type,
        schema: Mapping[str, Callable[[Any], Any]],
        required: tuple[str, ...] = (),
    ) -> Any:
        if not isinstance(value, dict):
            raise fail(key, "expected a table")
        for sub in value:
            if sub not in schema:
                known = ", ".join(sorted(schema))
                raise fail(f"{key}.{sub}", f"unknown key (known: {known})")
        for sub in required:
            if sub not in value:
                raise fail(f"{key}.{sub}", "is required")
        kwargs: dict[str, Any] = {}
        for sub, sub_value in value.items():
            try:
                kwargs[sub] = schema[sub](sub_value)
            except ValueError as exc:
                raise fail(f"{key}.{sub}", str(exc)) from None
        return cls(**kwargs)

    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TOP:
            try:
                values[key] = _TOP[key](value)
            except ValueError as exc:
                raise fail(key, str(exc)) from None
        elif key in _SECTIONS:
            values[key] = table(key, value, *_SECTIONS[key])
        elif key in _ARRAYS:
            name, cls, schema, required = _ARRAYS[key]
            if not isinstance(value, list):
                raise fail(key, f"expected tables written [[{key}]]")
            items = []
            for index, item in enumerate(value):
                items.append(table(f"{key}[{index}]", item, cls, schema, required))
            values[name] = tuple(items)
        else:
            known = ", ".join(sorted([*_TOP, *_SECTIONS, *_ARRAYS]))
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
    mwi = config.mwi
    if not mwi.min_expires <= mwi.default_expires <= mwi.max_expires:
        raise fail("mwi.default_expires", "needs min_expires <= default_expires <= max_expires")
    if config.calls.session_expires < config.calls.min_se:
        raise fail("calls.session_expires", "must be at least calls.min_se")
    _check_dialplan(config, fail)
    return config


def _check_dialplan(config: Config, fail: Callable[[str, str], ConfigError]) -> None:
    """Cross checks: names refer to things that exist, and no number means two things."""
    plan = config.dialplan
    _unique(fail, [(f"trunk[{i}].name", t.name) for i, t in enumerate(config.trunks)], "trunk")
    routes = config.outbound_routes
    _unique(fail, [(f"outbound_route[{i}].name", r.name) for i, r in enumerate(routes)], "route")
    trunks = {t.name for t in config.trunks}
    for i, trunk in enumerate(config.trunks):
        if trunk.register and not trunk.username:
            raise fail(f"trunk[{i}].register", "registering needs a username")
        if trunk.password and not trunk.username:
            raise fail(f"trunk[{i}].password", "a password needs a username")
    for i, route in enumerate(routes):
        if route.trunk not in trunks:
            raise fail(f"outbound_route[{i}].trunk", _no_trunk(route.trunk, trunks))
        if route.max_length and route.max_length < max(route.min_length, len(route.prefix)):
            raise fail(
                f"outbound_route[{i}].max_length",
                "must be 0 (no bound) or at least min_length and the prefix's length",
            )
    for i, did in enumerate(config.dids):
        if did.trunk and did.trunk not in trunks:
            raise fail(f"did[{i}].trunk", _no_trunk(did.trunk, trunks))
    dids: dict[tuple[str, str], int] = {}
    for i, did in enumerate(config.dids):
        # "+15551230000" and "15551230000" are one number to the router.
        earlier = dids.setdefault((did.number.lstrip("+"), did.trunk), i)
        if earlier != i:
            raise fail(f"did[{i}].number", f"DID {did.number} is already did[{earlier}]")
    if plan.emergency_trunk is not None and plan.emergency_trunk not in trunks:
        raise fail("dialplan.emergency_trunk", _no_trunk(plan.emergency_trunk, trunks))
    if plan.park and plan.park_slots is None:
        raise fail("dialplan.park_slots", 'parking needs at least one slot (or park = "")')
    for i, group in enumerate(config.ring_groups):
        if len(group.members) != len(set(group.members)):
            raise fail(f"ring_group[{i}].members", "an extension is listed twice")
    # Every number the dialplan answers itself, with the key that defines it.
    numbers = [("dialplan.emergency_numbers", n) for n in plan.emergency_numbers]
    numbers += [
        (f"dialplan.{k}", getattr(plan, k))
        for k in ("pickup", "park", "agent_login", "agent_pause")
        if getattr(plan, k)
    ]
    numbers += [(f"ring_group[{i}].number", g.number) for i, g in enumerate(config.ring_groups)]
    numbers += [(f"conference[{i}].number", c.number) for i, c in enumerate(config.conferences)]
    numbers += [(f"ivr.numbers.{n}", n) for n, _ in config.ivr.numbers]
    numbers += [
        (f"voicemail.{k}", getattr(config.voicemail, k))
        for k in ("access", "access_any")
        if getattr(config.voicemail, k)
    ]
    boxes = [(f"mailbox[{i}].box", m.box) for i, m in enumerate(config.mailboxes)]
    _unique(fail, boxes, "mailbox")
    numbers += _check_time_routes(config, trunks, fail)
    recording = config.recording
    numbers += [
        (f"recording.{k}", getattr(recording, k))
        for k in ("toggle_code", "pause_code")
        if getattr(recording, k)
    ]
    for i, rule in enumerate(config.recording_rules):
        if not (rule.extension or rule.trunk or rule.queue):
            raise fail(f"recording_rule[{i}]", "needs an extension, a trunk or a queue to match")
        if rule.trunk and rule.trunk not in trunks:
            raise fail(f"recording_rule[{i}].trunk", _no_trunk(rule.trunk, trunks))
    slot_numbers = set(plan.slots)
    for key, number in numbers:
        if number in slot_numbers:
            raise fail(key, f"{number} is also a park slot (dialplan.park_slots)")
        if plan.directed_pickup and number.startswith(plan.directed_pickup):
            raise fail(
                key, f"{number} starts with the directed pickup prefix {plan.directed_pickup!r}"
            )
    if plan.directed_pickup and any(s.startswith(plan.directed_pickup) for s in slot_numbers):
        raise fail("dialplan.park_slots", "slots start with the directed pickup prefix")
    _unique(fail, numbers, "number")
    _check_time_route_loops(config, fail)


def numbers_in_use(config: Config) -> tuple[dict[str, str], dict[str, str]]:
    """What the configuration itself answers: {number: what}, {prefix: what}. The dialplan
    takes these before extensions and queues: a user or queue given one is never reached
    (see pbx.dialplan)."""
    plan, recording, voicemail = config.dialplan, config.recording, config.voicemail
    numbers = {
        n: "an emergency number (dialplan.emergency_numbers)" for n in plan.emergency_numbers
    }
    for key in ("pickup", "park", "agent_login"):
        if getattr(plan, key):
            numbers[getattr(plan, key)] = f"dialplan.{key}"
    for key in ("toggle_code", "pause_code"):
        if getattr(recording, key):
            numbers[getattr(recording, key)] = f"recording.{key}"
    numbers.update({slot: "a park slot (dialplan.park_slots)" for slot in plan.slots})
    for group in config.ring_groups:
        numbers[group.number] = f"ring group {group.name or group.number}"
    for room in config.conferences:
        numbers[room.number] = f"conference room {room.name or room.number}"
    for route in config.time_routes:
        numbers[route.number] = f"time_route {route.number} (hours {route.hours})"
    for number, flow in config.ivr.numbers:
        numbers[number] = f"IVR flow {flow} (ivr.numbers)"
    for key in ("access", "access_any"):
        if getattr(voicemail, key):
            numbers[getattr(voicemail, key)] = f"voicemail.{key}"
    prefixes = {
        plan.directed_pickup: "dialplan.directed_pickup",
        plan.agent_pause: "dialplan.agent_pause",
    }
    return numbers, {p: what for p, what in prefixes.items() if p}


def answered_by_config(config: Config, number: str) -> str | None:
    """Why the configuration answers `number` itself (so no user or queue can have it), as
    a message naming what and where; None if it does not."""
    numbers, prefixes = numbers_in_use(config)
    if number in numbers:
        return f"{number} is already {numbers[number]} in {config.path.name}"
    for prefix, what in prefixes.items():
        if number.startswith(prefix):
            return f"{number} starts with {prefix!r} ({what} in {config.path.name})"
    return None


def _check_time_routes(
    config: Config, trunks: set[str], fail: Callable[[str, str], ConfigError]
) -> list[tuple[str, str]]:
    """[[hours]] names and what [[time_route]]s (and the voicemail operator) refer to.
    Returns the time_route numbers, keyed, for the clash checks."""
    _unique(fail, [(f"hours[{i}].name", h.name) for i, h in enumerate(config.hours)], "hours")
    names = {h.name for h in config.hours}
    known = ", ".join(sorted(names)) or "none is configured"
    for i, route in enumerate(config.time_routes):
        if route.hours not in names:
            raise fail(f"time_route[{i}].hours", f"no [[hours]] is named {route.hours!r} ({known})")
        for key in ("open", "closed"):
            target: str = getattr(route, key)
            if target.startswith("trunk:"):
                name = target.split(":")[1]
                if name not in trunks:
                    raise fail(f"time_route[{i}].{key}", _no_trunk(name, trunks))
    hours = config.voicemail.operator_hours
    if hours and hours not in names:
        raise fail("voicemail.operator_hours", f"no [[hours]] is named {hours!r} ({known})")
    return [(f"time_route[{i}].number", r.number) for i, r in enumerate(config.time_routes)]


def _check_time_route_loops(config: Config, fail: Callable[[str, str], ConfigError]) -> None:
    """No time_route leads back to itself (after the numbers are known to be unique)."""
    routes = {r.number: r for r in config.time_routes}
    for i, route in enumerate(config.time_routes):
        for key in ("open", "closed"):
            target: str = getattr(route, key)
            if _loops(route.number, target, routes):
                raise fail(
                    f"time_route[{i}].{key}", f"{route.number} -> {target} leads back to itself"
                )


def _loops(start: str, target: str, routes: Mapping[str, TimeRouteConfig]) -> bool:
    """Whether following time_route targets from `target` can reach `start` again."""
    todo, seen = [target], set()
    while todo:
        number = todo.pop()
        if number == start:
            return True
        if number in seen or number not in routes:
            continue
        seen.add(number)
        todo += [routes[number].open, routes[number].closed]
    return False


def _unique(
    fail: Callable[[str, str], ConfigError], keyed: list[tuple[str, str]], what: str
) -> None:
    first: dict[str, str] = {}
    for key, value in keyed:
        if value in first:
            raise fail(key, f"{what} {value} is already used by {first[value]}")
        first[value] = key


def _no_trunk(name: str, trunks: set[str]) -> str:
    known = ", ".join(sorted(trunks)) or "none is configured"
    return f"no [[trunk]] is named {name!r} (trunks: {known})"
