"""The boot check of A/B slots: run before each start of the agent, roll back what fails.

Standard library only, and copied next to the slots as ``ota-check.py``: it
must work when the slot it judges cannot even be imported. systemd runs it
as ``ExecStartPre`` (the test harness the same way), so it runs before every
start, including the restarts after a crash::

    python3 /opt/igris/ota-check.py /opt/igris

With an update pending (``ota.json``'s ``pending``), each start counts one
boot of the new slot. The new agent confirms itself once healthy (broker
connected, birth published, heartbeats going), which clears ``pending``. If
instead the deadline passes, or the new slot has already been started
``MAX_BOOTS`` times without confirming (it crashes at start), the check
points ``current`` back at the previous slot and records why, so the next
start runs the old version. A pending update whose switch never happened
(the apply was killed before it) is dropped.

Writes are atomic (a temporary file or link, then ``os.replace``), so a
power cut at any moment leaves either the old or the new state.
"""

import json
import os
import sys
import time

STATE = "ota.json"
CURRENT = "current"
SLOTS = "slots"
MAX_BOOTS = 2


def now_ms():
    return int(time.time() * 1000)


def load_state(base):
    """ota.json, or a fresh state when there is none; a file that does not parse is moved
    aside (``ota.json.corrupt``) so the device starts on the slot ``current`` names."""
    path = os.path.join(base, STATE)
    try:
        with open(path) as fh:
            state = json.load(fh)
        if not isinstance(state, dict) or not isinstance(state.get("slots"), dict):
            raise ValueError("not an ota.json object")
        return state
    except FileNotFoundError:
        pass
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        print(f"ota-check: {path} is unreadable ({exc}); moved aside", file=sys.stderr)
        os.replace(path, path + ".corrupt")
    return {"format": 1, "slots": {}, "pending": None, "last": None}


def save_state(base, state):
    path = os.path.join(base, STATE)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(state, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def current_slot(base):
    """The slot ``current`` points at (``"a"`` or ``"b"``), or None before the first install."""
    try:
        return os.path.basename(os.readlink(os.path.join(base, CURRENT)))
    except FileNotFoundError:
        return None


def point_current(base, slot):
    """Point ``current`` at ``slots/<slot>`` atomically."""
    link = os.path.join(base, CURRENT)
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join(SLOTS, slot), tmp)
    os.replace(tmp, link)


def check(base, now=None):
    """One boot's decision: ``"none"``, ``"dropped"``, ``"trying"`` or ``"rolled-back"``."""
    now = now_ms() if now is None else now
    state = load_state(base)
    pending = state.get("pending")
    if not pending:
        return "none"
    if current_slot(base) != pending["slot"]:
        state["pending"] = None
        state["last"] = {"result": "dropped", "version": pending["version"], "ms": now,
                         "reason": "the apply stopped before switching slots"}
        save_state(base, state)
        return "dropped"
    if now > pending["deadline_ms"] or pending["boots"] >= MAX_BOOTS:
        reason = ("not confirmed healthy by its deadline" if now > pending["deadline_ms"]
                  else f"started {pending['boots']} times without confirming")
        roll_back(base, state, now, reason)
        return "rolled-back"
    pending["boots"] += 1
    save_state(base, state)
    return "trying"


def roll_back(base, state, now, reason):
    """Point ``current`` back at the slot the pending update replaced, and record why (the
    boot check's and the agent's own rollback); the ``last`` record written."""
    pending = state["pending"]
    point_current(base, pending["previous"])
    state["pending"] = None
    state["last"] = {"result": "rolled-back", "version": pending["version"],
                     "to": state["slots"].get(pending["previous"], {}).get("version"),
                     "ms": now, "reason": reason}
    save_state(base, state)
    return state["last"]


def main(argv):
    if len(argv) != 2:
        print("usage: ota-check.py BASE", file=sys.stderr)
        return 2
    print(f"ota-check: {check(argv[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
