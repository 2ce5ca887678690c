"""Over-the-air updates seen from the running agent: ``ota.apply``, and the health proof.

An agent installed in A/B slots (``firmware_tools/slots.py``) takes a signed
bundle with the operator-only command ``ota.apply`` (a URL and its SHA-256):
it installs it into the slot not running, switches, replies, and restarts.
The agent that then starts from the new slot must prove itself healthy
(broker connected when one is configured, birth published, two heartbeats
sent) before the update's deadline: then it confirms the slot. If the
deadline passes first it points ``current`` back at the previous slot and
restarts into it; if it cannot even start, the boot check before the next
start does the same (``firmware_tools/otacheck.py``). Every step goes into
the ledger (``ota`` entries): applied, confirmed, rolled back and why.

An agent not installed in slots (a checkout, a plain venv) has nothing to
do here and imports none of the firmware tools.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import agent
from agent.bus import Arg, CommandCall, CommandSpec
from agent.errors import CommandRefused, IgrisError

log = logging.getLogger(__name__)

OTA_APPLY = "ota.apply"
HEARTBEATS_TO_CONFIRM = 2
CHECK_EVERY_S = 0.25
RESTART_AFTER_REPLY_S = 0.5


def slot_of_this_agent(module_file: str = agent.__file__) -> tuple[Path, str] | None:
    """``(base, slot)`` when this agent runs from an A/B slot; a path check first, so an
    agent outside slots imports nothing more."""
    real = os.path.realpath(module_file)  # started as current/bin/python: resolve the link
    if "/slots/a/" not in real and "/slots/b/" not in real:
        return None
    from firmware_tools.slots import running_slot

    return running_slot(real)


class OtaGuard:
    """Confirm or roll back a pending update of the slot this agent runs from; serve
    ``ota.apply``. ``healthy()`` says whether the agent is up as it should be."""

    def __init__(self, *, healthy: Callable[[], bool], record: Callable[[str, dict], Any],
                 restart: Callable[[], None], now_ms: Callable[[], int], ca_public: bytes,
                 target: str, where: tuple[Path, str] | None = None):
        self._healthy = healthy
        self._record = record
        self._restart = restart
        self._now_ms = now_ms
        self._ca_public = ca_public
        self._target = target
        self.where = where
        self.outcome: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.where is None:
            return
        from firmware_tools import otacheck

        base, slot = self.where
        self._record_last()  # e.g. a rollback the boot check did before this start
        state = otacheck.load_state(str(base))
        pending = state.get("pending")
        if pending and pending["slot"] == slot:
            if not pending.get("recorded"):  # the first start of the new slot
                self._record("ota", {"result": "switched", "version": pending["version"],
                                     "slot": slot, "previous": pending["previous"],
                                     "deadline_ms": pending["deadline_ms"]})
                pending["recorded"] = True
                otacheck.save_state(str(base), state)
            self._task = asyncio.create_task(self._prove(pending), name="igris.ota.prove")

    def _record_last(self) -> None:
        """Put the last outcome in ota.json into the ledger, once."""
        from firmware_tools import otacheck

        assert self.where is not None  # called only for an agent that runs from slots
        base = str(self.where[0])
        state = otacheck.load_state(base)
        last = state.get("last")
        if last and not last.get("recorded"):
            self._record("ota", last)
            state["last"] = {**last, "recorded": True}
            otacheck.save_state(base, state)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def status(self) -> dict[str, Any] | None:
        if self.where is None:
            return None
        from firmware_tools.slots import status

        return {**status(self.where[0]), "running": self.where[1], "outcome": self.outcome}

    async def _prove(self, pending: dict[str, Any]) -> None:
        from firmware_tools import slots

        assert self.where is not None  # started only for an agent that runs from slots
        base, slot = self.where
        while not self._healthy():
            if self._now_ms() > pending["deadline_ms"]:
                self.outcome = slots.roll_back(base, slot, self._now_ms(),
                                               "not healthy by its deadline")
                if self.outcome is not None:
                    self._record_last()
                    log.error("update to %s rolled back: not healthy in time", pending["version"])
                    self._restart()
                return
            await asyncio.sleep(CHECK_EVERY_S)
        self.outcome = slots.confirm(base, slot, self._now_ms())
        if self.outcome is not None:
            self._record_last()
            log.info("update to %s confirmed healthy", pending["version"])

    # ------------------------------------------------------------------ ota.apply

    def command(self) -> CommandSpec:
        """``ota.apply``: install a signed bundle (URL + SHA-256) into the other slot and
        restart into it (operators only)."""

        async def apply(call: CommandCall) -> dict[str, Any]:
            if self.where is None:
                raise CommandRefused("unavailable", "this agent does not run from A/B slots; "
                                                    "provision it with slots to update it")
            from firmware_tools import slots

            base, _slot = self.where
            try:
                done = await asyncio.get_running_loop().run_in_executor(None, lambda: slots.apply(
                    base, call.args["url"], sha256=call.args["sha256"],
                    ca_public=self._ca_public, target=self._target,
                    current_version=agent.__version__, now_ms=self._now_ms,
                    allow_downgrade=call.args["allow_downgrade"],
                    deadline_s=call.args["deadline_s"]))
            except IgrisError as exc:
                code = getattr(exc, "reason", "refused")
                self._record("ota", {"result": "refused", "reason": str(exc)[:200]})
                raise CommandRefused(code, str(exc)) from None
            self._record("ota", {"result": "applied", "by": call.caller, **done})
            asyncio.get_running_loop().call_later(RESTART_AFTER_REPLY_S, self._restart)
            return {**done, "restarting": True}

        return CommandSpec(
            OTA_APPLY, apply, "install a signed update bundle into the other slot and restart",
            args={"url": Arg(str, help="file://, http:// or https:// URL (or a path)"),
                  "sha256": Arg(str, help="the bundle's SHA-256, hex"),
                  "allow_downgrade": Arg(bool, required=False, default=False),
                  "deadline_s": Arg(float, required=False, default=120.0,
                                    help="how long the new version has to prove healthy")},
            mutates=True, roles=("operator",), timeout_s=300.0,
        )
