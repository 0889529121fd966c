"""An example dialplan hook: `hook = "clinic_routes.py:route"` in [dialplan].

Called for every call (emergency numbers excepted) before the rules of pbx.toml. Return a
target ("1001", "600", "*8", "trunk:provider:+15551234567"), a pbx.dialplan.Route, or None to
let the rules decide. Calls from a trunk can only be sent to internal targets. Keep it quick:
it runs inside the server's event loop.
"""

from __future__ import annotations

from pbx.dialplan import CallRequest


def route(request: CallRequest) -> str | None:
    if request.from_trunk is None and request.dialled == "0":
        return "600"  # the operator: reception
    return None
