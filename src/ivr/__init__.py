"""IVR: call flows written as plain async Python.

    from ivr import flow

    @flow("main", fallback="1001")
    async def main(call):
        choice = await call.menu("clinic-menu", "1230", extensions=True)
        ...

`ivr.session` is the call object's API, `ivr.flows` the registry and runner,
`ivr.voicemail` leaving and hearing messages, `ivr.testing` the harness for unit tests.
"""

from ivr.flows import Flow, FlowRegistry, flow, run_flow
from ivr.session import (
    DialStatus,
    HungUp,
    Outcome,
    Prompts,
    Recording,
    RecordingEnd,
    Session,
    Sound,
)

__all__ = [
    "DialStatus",
    "Flow",
    "FlowRegistry",
    "HungUp",
    "Outcome",
    "Prompts",
    "Recording",
    "RecordingEnd",
    "Session",
    "Sound",
    "flow",
    "run_flow",
]
