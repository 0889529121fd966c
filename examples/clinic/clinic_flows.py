"""The demo clinic's auto attendant: `[ivr] modules = ["clinic_flows.py"]` in pbx.toml.

Dial 100. In clinic hours (the [[hours]] table "clinic"):
    1 appointments -> queue "appointments"
    2 prescription refills -> voicemail box "refills"
    3 nurse line -> queue "nurse", ahead of other callers
    0 reception -> extension 1001 (its voicemail when nobody answers)
    or an extension's number -> that extension (its voicemail when nobody answers, with
    its busy greeting when the phone says busy)
After hours, and on holidays, callers always hear the emergency number first, then may
leave a message for the clinic: pressing 1 first makes it urgent (heard first, counted
apart on the phones' message lamps).

Prompts named here are looked for in prompts/ (made with `pbx prompts tts`) and then in
pbx's shipped English set. `pbx -c CONFIG reload` loads an edited copy of this file
without dropping calls. tests/unit/test_clinic_flows.py shows how to unit-test a flow.
"""

from __future__ import annotations

from ivr import DialStatus, Session, flow

RECEPTION = "1001"
HOURS = "clinic"
MENU = {"1": "appointments", "2": "refills", "3": "nurse", "0": "reception"}
URGENT_KEY = "1"  # after hours, before the message
NURSE_PRIORITY = 5  # nurse-line callers are served before others waiting in the queue


@flow("main", fallback=RECEPTION)
async def main(call: Session) -> None:
    if not call.is_open(HOURS):
        await after_hours(call)
        return
    await call.answer()
    await call.play("clinic-welcome")
    choice = await call.menu("clinic-menu", MENU, retries=3, timeout=6.0, extensions=True)
    call.set_var("choice", choice or "none")
    if choice == "1":
        await queue_or_reception(call, "appointments")
    elif choice == "2":
        await call.play("refills-intro")
        await call.voicemail("refills")
    elif choice == "3":
        await queue_or_reception(call, "nurse", NURSE_PRIORITY)
    elif choice is None or choice == "0":
        await person(call, RECEPTION)  # no choice made: a person helps
    else:
        await person(call, choice)  # dialled an extension


@flow("after_hours")
async def after_hours(call: Session) -> None:
    await call.answer()
    await call.play(["after-hours", "emergency"], interruptible=False)  # always, in full
    await call.play("after-hours-message")
    urgent = await call.menu("after-hours-urgent", URGENT_KEY, retries=0, timeout=3.0)
    await call.voicemail("clinic", urgent=urgent == URGENT_KEY)


async def queue_or_reception(call: Session, queue: str, priority: int = 0) -> None:
    await call.play("please-hold")
    if not await call.enqueue(queue, priority=priority):
        await person(call, RECEPTION)


async def person(call: Session, extension: str) -> None:
    """Ring someone; when they do not answer, take a message for them (with their busy
    greeting when their phone said busy)."""
    await call.play("transferring")
    if await call.transfer(extension):
        return
    greeting = "busy" if call.dial_status is DialStatus.BUSY else "unavailable"
    if not await call.voicemail(extension, greeting=greeting):
        await call.voicemail("clinic")
