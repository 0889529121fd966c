"""The Replaces header (RFC 3891): which dialog an INVITE, or the INVITE a REFER asks for,
is meant to take the place of.

An attended transfer ends in a REFER whose Refer-To carries `?Replaces=...` (RFC 3891 §7,
RFC 5589 §7): "call the target, replacing the dialog you already have with it". A B2BUA is
that target for every phone, so the dialog named is one of ours. `Replaces.matches` is
lenient about which tag is which: phones disagree on whose view `to-tag` and `from-tag`
are written from, and a Call-ID with both tags is unique either way.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from pbx.errors import RemoteProtocolError
from pbx.sip.dialog import DialogId
from pbx.sip.uri import SipUri, split_outside_quotes


@dataclass(frozen=True, slots=True)
class Replaces:
    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False
    """§6.1: replace the dialog only while it is early (a call not yet answered)."""

    def matches(self, dialog: DialogId) -> bool:
        """Whether this names `dialog`: the same Call-ID, and its two tags in either order."""
        if self.call_id != dialog.call_id:
            return False
        return {self.to_tag, self.from_tag} == {dialog.local_tag, dialog.remote_tag or ""}

    def header_value(self) -> str:
        early = ";early-only" if self.early_only else ""
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}{early}"


def parse_replaces(value: str) -> Replaces:
    """Parse a Replaces header value (RFC 3891 §6.1):
    callid *(";" (to-tag / from-tag / early-only / generic-param))."""
    parts = split_outside_quotes(value.strip(), ";")
    call_id = parts[0].strip() if parts else ""
    if not call_id or any(c.isspace() for c in call_id):
        raise RemoteProtocolError(f"Replaces without a usable Call-ID: {value!r}")
    tags: dict[str, str] = {}
    early_only = False
    for part in parts[1:]:
        name, _, raw = part.partition("=")
        name = name.strip().lower()
        if name in ("to-tag", "from-tag"):
            tags[name] = raw.strip()
        elif name == "early-only":
            early_only = True
    to_tag, from_tag = tags.get("to-tag"), tags.get("from-tag")
    if not to_tag or not from_tag:
        raise RemoteProtocolError(f"Replaces needs to-tag and from-tag: {value!r}")
    return Replaces(call_id, to_tag, from_tag, early_only)


def replaces_in_uri(uri: SipUri) -> Replaces | None:
    """The Replaces carried as a URI header of a Refer-To (`?Replaces=...`, %-escaped);
    None if there is none. Raises RemoteProtocolError for one that does not parse."""
    for name, value in uri.headers:
        if name.lower() == "replaces":
            return parse_replaces(urllib.parse.unquote(value))
    return None
