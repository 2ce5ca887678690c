"""The commands a device answers: name, argument schema, who may call, timeout, mutates.

One table for both ways in (signed commands on ``cmd/...`` and plain MQTT on
``cmnd/<dev>/<command>``), so a command's rules are written once. Arguments
are checked against the schema before the handler runs; a handler only ever
sees arguments of the declared types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import CommandRefused
from agent.suggest import close_match

ROLES_ANY = ("device", "operator", "scheduler")
ROLES_MUTATE = ("operator", "scheduler")
_TYPES: dict[type, str] = {str: "a string", int: "an integer", float: "a number",
                           bool: "true or false", dict: "an object", list: "a list"}


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: its type, whether it is required, its default and allowed values."""

    type: type
    required: bool = True
    default: Any = None
    choices: tuple[Any, ...] = ()
    help: str = ""

    def check(self, name: str, value: Any) -> Any:
        want = self.type
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise CommandRefused(
                "bad_args", f"argument {name!r}: expected {_TYPES.get(want, want.__name__)}, "
                f"got {value!r:.40}")
        if self.choices and value not in self.choices:
            raise CommandRefused(
                "bad_args", f"argument {name!r}: expected one of {list(self.choices)}, "
                f"got {value!r:.40}")
        return value


@dataclass(frozen=True, slots=True)
class CommandCall:
    """One execution: what the handler is told about the request."""

    id: str  # the request envelope's id (or a fresh one for plain MQTT)
    name: str
    args: dict[str, Any]
    caller: str  # device id of the signer, or "mqtt" for a plain client
    role: str  # the caller's certificate role, or "plain"


Handler = Callable[[CommandCall], Any]
"""A coroutine function, run as a task with the command's timeout, or a plain function
for a quick read that cannot block (answered inline, see :mod:`agent.bus.server`); either
returns the result or raises ``CommandRefused``."""


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command: its handler and its rules."""

    name: str
    handler: Handler
    help: str
    args: Mapping[str, Arg] = field(default_factory=dict)
    mutates: bool = False
    roles: tuple[str, ...] = ROLES_ANY  # default: read-only, any enrolled caller
    timeout_s: float = 10.0

    def check_args(self, args: Any) -> dict[str, Any]:
        """The arguments with defaults filled in; raises ``CommandRefused("bad_args")``."""
        if not isinstance(args, dict):
            raise CommandRefused("bad_args", f"arguments must be an object, got {args!r:.40}")
        unknown = sorted(set(args) - set(self.args))
        if unknown:
            close = close_match(unknown[0], self.args)
            hint = f"; did you mean {close!r}?" if close else (
                f"; {self.name} takes " + (", ".join(sorted(self.args)) or "no arguments"))
            raise CommandRefused("bad_args", f"unknown argument {unknown[0]!r}{hint}")
        out: dict[str, Any] = {}
        for name, arg in self.args.items():
            if name in args:
                out[name] = arg.check(name, args[name])
            elif arg.required:
                raise CommandRefused("bad_args", f"argument {name!r} is required")
            else:
                out[name] = arg.default
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "help": self.help, "mutates": self.mutates,
            "roles": list(self.roles), "timeout_s": self.timeout_s,
            "args": {n: {"type": _TYPES.get(a.type, a.type.__name__), "required": a.required,
                         **({"choices": list(a.choices)} if a.choices else {}),
                         **({"help": a.help} if a.help else {})}
                     for n, a in self.args.items()},
        }


class CommandRegistry:
    """Name → :class:`CommandSpec`.

    >>> registry = CommandRegistry()
    >>> def ping(call): return {"pong": True}
    >>> registry.add(CommandSpec("ping", ping, "answer at once"))
    >>> registry.get("ping").mutates
    False
    """

    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}

    def add(self, spec: CommandSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"command {spec.name!r} is registered twice")
        if spec.mutates and set(spec.roles) - set(ROLES_MUTATE):
            raise ValueError(f"mutating command {spec.name!r} must not allow role 'device'")
        self._specs[spec.name] = spec

    def get(self, name: str) -> CommandSpec:
        spec = self._specs.get(name)
        if spec is None:
            close = close_match(name, self._specs)
            hint = f"; did you mean {close!r}?" if close else ""
            raise CommandRefused("unknown_command", f"no command {name!r}{hint}")
        return spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs
