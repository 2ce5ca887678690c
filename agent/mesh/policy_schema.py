"""The policy document's schema: every section and key, its type and range.

A policy reaches hundreds of devices at once, so it is checked whole before
anything applies it, on the operator's machine (``igris policy push``) and
again on every device. Errors name the key path, what was expected and what
was found, with a "did you mean" for typos. Unknown keys are refused: a
device that does not know a setting cannot honour it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from agent.errors import ConfigInvalid, PolicyRejected
from agent.orchestrator.supervisor import SERVICE_EXAMPLE, service_specs
from agent.security_mesh import anchors_from_policy
from agent.suggest import close_match

Check = Callable[[Any], str | None]
ACTION_MAX_S = 600.0  # the longest a policy action may run (action.run)


def _number(lo: float | None = None, hi: float | None = None, *, above: float | None = None
            ) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "a number"
        if above is not None and not v > above:
            return f"a number above {above:g}"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"a number from {lo:g} to {hi:g}" if hi is not None else f"a number >= {lo:g}"
        return None

    return check


def _boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) else "a string"


def _version(v: Any) -> str | None:
    return None if type(v) is int and v >= 1 else "an integer >= 1"


def _trust(v: Any) -> str | None:
    # The security mesh owns what a trust section means (CA rotation); it
    # raises PolicyRejected naming the entry at fault.
    anchors_from_policy({"trust": v}, bytes(32))
    return None


def _task_flags(v: Any) -> str | None:
    ok = isinstance(v, dict) and all(
        isinstance(flags, dict) and set(flags) <= {"private"}
        and all(isinstance(x, bool) for x in flags.values()) for flags in v.values())
    return None if ok else 'an object like {"digits-cnn": {"private": true}}'


def _name_list(v: Any) -> str | None:
    ok = isinstance(v, list) and all(isinstance(x, str) and x for x in v)
    return None if ok else "a list of command names"


def _role_map(v: Any) -> str | None:
    roles = {"device", "operator", "scheduler"}
    ok = isinstance(v, dict) and all(
        isinstance(r, list) and r and set(r) <= roles for r in v.values())
    return None if ok else 'an object like {"gpio.write": ["operator"]} (roles: device, ' \
        "operator, scheduler)"


def _actions(v: Any) -> str | None:
    shape = ('an object like {"reboot-camera": {"argv": ["systemctl", "restart", "cam"], '
             '"timeout_s": 10}}')
    if not isinstance(v, dict):
        return shape
    for name, action in v.items():
        if not (isinstance(action, dict) and set(action) <= {"argv", "timeout_s", "help"}):
            return shape
        argv = action.get("argv")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            return f"actions.{name}.argv as a non-empty list of strings (no shell)"
        timeout = action.get("timeout_s", 10)
        if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                or not 0 < timeout <= ACTION_MAX_S):
            return f"actions.{name}.timeout_s as a number of seconds, above 0 and at most " \
                f"{ACTION_MAX_S:g}"
    return None


def _services(v: Any) -> str | None:
    # The orchestrator's supervisor owns what a service means (its ChildSpec);
    # every service is checked, whatever groups it is meant for.
    if not isinstance(v, dict):
        return f"an object like {SERVICE_EXAMPLE}"
    try:
        service_specs(v)
    except ConfigInvalid as exc:
        raise PolicyRejected(f"services: {exc}") from None
    return None


# section -> key -> check; a nested dict is a sub-table.
SCHEMA: dict[str, Any] = {
    "version": _version,
    "description": _text,
    "membership": {
        "suspect_after_s": _number(above=0),
        "dead_after_s": _number(above=0),
    },
    "router": {
        "local_only": _boolean,  # nothing leaves any device: no peer, no remote
        "tasks": _task_flags,
        "constraints": {
            "no_remote_below_battery_percent": _number(0, 100),
            "no_remote_on_metered_link": _boolean,
            "no_local_above_celsius": _number(-40, 150),
            "no_local_when_throttled": _boolean,
        },
        "weights": {
            "latency": _number(0, 1),
            "accuracy": _number(0, 1),
            "energy": _number(0, 1),
            "cost": _number(0, 1),
        },
    },
    "orchestration": {
        "min_battery_percent": _number(0, 100),
        "max_celsius": _number(-40, 150),
        "max_cpu_percent": _number(0, 100),
    },
    "trust": _trust,
    "commands": {
        # Commands plain MQTT clients (cmnd/<dev>/<command>) may run beyond the
        # read-only ones, and who may call a command (overrides its default roles).
        "plain_mqtt": _name_list,
        "roles": _role_map,
        "refusals_per_s": _number(above=0),
    },
    "actions": _actions,
    "services": _services,  # long-running programs each device keeps up (its supervisor)
}
REQUIRED = ("version",)


def _walk(schema: dict[str, Any], doc: Any, path: str) -> None:
    if not isinstance(doc, dict):
        raise PolicyRejected(f"{path or 'policy'}: expected a JSON object, got {doc!r:.60}")
    for key, value in doc.items():
        where = f"{path}.{key}" if path else key
        if key not in schema:
            close = close_match(key, schema)
            hint = f"; did you mean {close!r}?" if close else (
                "; known: " + ", ".join(sorted(schema)))
            raise PolicyRejected(f"{where}: unknown key{hint}")
        rule = schema[key]
        if isinstance(rule, dict):
            _walk(rule, value, where)
            continue
        problem = rule(value)
        if problem:
            raise PolicyRejected(f"{where}: expected {problem}, got {value!r:.60}")


def validate_policy(doc: Any) -> dict[str, Any]:
    """Return ``doc`` if it is a valid policy, else raise :class:`PolicyRejected` saying why."""
    _walk(SCHEMA, doc, "")
    for key in REQUIRED:
        if key not in doc:
            raise PolicyRejected(f"{key}: required")
    membership = doc.get("membership")
    if membership is not None and len(membership) != 2:
        raise PolicyRejected("membership: give both suspect_after_s and dead_after_s")
    suspect, dead = (membership or {}).get("suspect_after_s"), (membership or {}).get(
        "dead_after_s")
    if membership and not suspect < dead:
        raise PolicyRejected(
            f"membership: suspect_after_s ({suspect}) must be less than dead_after_s ({dead})"
        )
    return doc


def default_policy() -> dict[str, Any]:
    """The policy that ships in the wheel (``ai_assistant_config/policy.json``), a fresh copy."""
    return validate_policy(json.loads(_default_text()))


@functools.cache
def _default_text() -> str:
    try:
        shipped = files("agent.policy_default")
    except ModuleNotFoundError:
        # setuptools maps ai_assistant_config/ to agent.policy_default only when
        # installing; in an uninstalled source checkout it sits beside agent/.
        shipped = Path(__file__).resolve().parents[2] / "ai_assistant_config"
    return shipped.joinpath("policy.json").read_text(encoding="utf-8")
