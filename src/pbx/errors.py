"""The one exception tree of pbx (see STYLE.md §4)."""

from __future__ import annotations

from enum import IntEnum


class SipStatus(IntEnum):
    """SIP status codes with their RFC 3261 reason phrases."""

    def __new__(cls, value: int, phrase: str = "") -> SipStatus:
        obj = int.__new__(cls, value)
        obj._value_ = value
        obj.phrase = phrase
        return obj

    phrase: str

    TRYING = 100, "Trying"
    RINGING = 180, "Ringing"
    CALL_IS_BEING_FORWARDED = 181, "Call Is Being Forwarded"
    QUEUED = 182, "Queued"
    SESSION_PROGRESS = 183, "Session Progress"
    OK = 200, "OK"
    ACCEPTED = 202, "Accepted"
    MULTIPLE_CHOICES = 300, "Multiple Choices"
    MOVED_PERMANENTLY = 301, "Moved Permanently"
    MOVED_TEMPORARILY = 302, "Moved Temporarily"
    BAD_REQUEST = 400, "Bad Request"
    UNAUTHORIZED = 401, "Unauthorized"
    FORBIDDEN = 403, "Forbidden"
    NOT_FOUND = 404, "Not Found"
    METHOD_NOT_ALLOWED = 405, "Method Not Allowed"
    NOT_ACCEPTABLE = 406, "Not Acceptable"
    PROXY_AUTHENTICATION_REQUIRED = 407, "Proxy Authentication Required"
    REQUEST_TIMEOUT = 408, "Request Timeout"
    GONE = 410, "Gone"
    REQUEST_ENTITY_TOO_LARGE = 413, "Request Entity Too Large"
    REQUEST_URI_TOO_LONG = 414, "Request-URI Too Long"
    UNSUPPORTED_MEDIA_TYPE = 415, "Unsupported Media Type"
    UNSUPPORTED_URI_SCHEME = 416, "Unsupported URI Scheme"
    BAD_EXTENSION = 420, "Bad Extension"
    EXTENSION_REQUIRED = 421, "Extension Required"
    INTERVAL_TOO_BRIEF = 423, "Interval Too Brief"
    TEMPORARILY_UNAVAILABLE = 480, "Temporarily Unavailable"
    CALL_DOES_NOT_EXIST = 481, "Call/Transaction Does Not Exist"
    LOOP_DETECTED = 482, "Loop Detected"
    TOO_MANY_HOPS = 483, "Too Many Hops"
    ADDRESS_INCOMPLETE = 484, "Address Incomplete"
    AMBIGUOUS = 485, "Ambiguous"
    BUSY_HERE = 486, "Busy Here"
    REQUEST_TERMINATED = 487, "Request Terminated"
    NOT_ACCEPTABLE_HERE = 488, "Not Acceptable Here"
    REQUEST_PENDING = 491, "Request Pending"
    UNDECIPHERABLE = 493, "Undecipherable"
    SERVER_INTERNAL_ERROR = 500, "Server Internal Error"
    NOT_IMPLEMENTED = 501, "Not Implemented"
    BAD_GATEWAY = 502, "Bad Gateway"
    SERVICE_UNAVAILABLE = 503, "Service Unavailable"
    SERVER_TIMEOUT = 504, "Server Time-out"
    VERSION_NOT_SUPPORTED = 505, "Version Not Supported"
    MESSAGE_TOO_LARGE = 513, "Message Too Large"
    BUSY_EVERYWHERE = 600, "Busy Everywhere"
    DECLINE = 603, "Decline"
    DOES_NOT_EXIST_ANYWHERE = 604, "Does Not Exist Anywhere"
    NOT_ACCEPTABLE_ANYWHERE = 606, "Not Acceptable"


def reason_phrase(status: int) -> str:
    """The standard reason phrase for a status, or a generic one for its class."""
    try:
        return SipStatus(status).phrase
    except ValueError:
        return {1: "Trying", 2: "OK", 3: "Redirect", 4: "Client Error", 5: "Server Error"}.get(
            status // 100, "Global Failure"
        )


class PbxError(Exception):
    """Base of every error pbx raises on purpose."""


class ProtocolError(PbxError):
    """A protocol rule was broken; `status` is what to answer with."""

    def __init__(self, message: str, status: SipStatus = SipStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class RemoteProtocolError(ProtocolError):
    """The peer broke the rules: answer with `.status` where an answer is possible."""


class LocalProtocolError(ProtocolError):
    """Our own caller broke the rules: a bug in pbx, never the peer's fault."""


class TransactionTimeout(PbxError):
    """A client transaction timed out (answer 408)."""

    status = SipStatus.REQUEST_TIMEOUT


class TransportError(PbxError):
    """A message could not be sent (answer 503)."""

    status = SipStatus.SERVICE_UNAVAILABLE


class MediaError(PbxError):
    """A media (RTP, codec, file) operation failed."""


class FaxError(PbxError):
    """A fax session failed."""


class ConfigError(PbxError):
    """The configuration is wrong; the message names the key (and line where known)."""

    def __init__(self, message: str, key: str = "", line: int | None = None) -> None:
        where = key + (f" (line {line})" if line else "")
        super().__init__(f"{where}: {message}" if where else message)
        self.key = key
        self.line = line
