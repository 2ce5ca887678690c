"""The commands every device answers, as :class:`CommandSpec` entries for the registry.

Read-only commands (``ping``, ``status``, ``health``, ``peers``, ``policy.get``,
``ledger.head``, ``config.get``, ``gpio.read``) are open to any enrolled
caller. Commands that change the device (``led.set``, ``gpio.write``,
``action.run``, ``agent.restart``) need an operator or scheduler; the policy's
``commands.roles`` may narrow that further, never widen it to devices.

The bus is a component: it never imports the runtime. The runtime hands the
commands what they act on in a :class:`BuiltinContext` (callables for views
that change, so each command sees the state at the time it runs)::

    ctx = BuiltinContext(device_id="cam-01", status=rt.status, ...)
    for spec in builtin_commands(ctx):
        registry.add(spec)

Two rules keep a signed command from doing more than its name says:
``gpio.write`` drives only the outputs the profile lists by name, and
``action.run`` runs only an ``argv`` the signed policy lists under
``actions``, directly (no shell), in its own process group, killed with that
group at its timeout, keeping only the tail of its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.bus.registry import ROLES_MUTATE, Arg, CommandCall, CommandSpec
from agent.compat import wall_ms
from agent.device import GpioOutputs, HealthLed, LedState
from agent.errors import CommandRefused
from agent.mesh.policy_schema import ACTION_MAX_S

# action.run is registered with the policy schema's cap on an action's run time
# (plus a second to report): a command's timeout is fixed at registration while
# the policy can change, and the action's own timeout must fire first so the
# reply still carries its output.
OUTPUT_TAIL_BYTES = 2048
"""How much of an action's stdout and of its stderr a reply keeps (the end)."""
LED_MAX_S = 3600.0
_READ_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class BuiltinContext:
    """What the built-in commands act on, handed in by the runtime.

    ``status``, ``peers``, ``policy`` (PolicySync.show), ``ledger_head``
    (size and head hash) and ``config`` (Config.to_dict, secrets masked)
    return what the command replies. ``sample_health`` takes a fresh
    sample. ``policy_section`` (PolicySync.section) is read at each
    ``action.run``, so a new policy's actions apply at once. ``outputs``
    are the profile's ``[gpio.outputs]`` (an empty GpioOutputs when it has
    none). ``input_names`` are the profile's GPIO inputs and
    ``read_inputs`` reads those that can be read here (none without GPIO).
    ``restart`` asks the agent to restart; it is called
    ``restart_delay_s`` after ``agent.restart`` answers, so the reply can
    go out first.
    """

    device_id: str
    status: Callable[[], dict[str, Any]]
    sample_health: Callable[[], Awaitable[dict[str, Any]]]
    peers: Callable[[], dict[str, Any]]
    policy: Callable[[], dict[str, Any]]
    policy_section: Callable[[str], dict[str, Any]]
    ledger_head: Callable[[], dict[str, Any]]
    config: Callable[[], dict[str, Any]]
    led: HealthLed
    outputs: GpioOutputs
    input_names: tuple[str, ...]
    read_inputs: Callable[[], Mapping[str, bool]]
    restart: Callable[[], None]
    now_ms: Callable[[], int] = wall_ms
    restart_delay_s: float = 0.2


def builtin_commands(ctx: BuiltinContext) -> list[CommandSpec]:
    """The built-in commands, bound to ``ctx``, ready for :meth:`CommandRegistry.add`."""
    b = _Builtins(ctx)
    return [
        CommandSpec("ping", b.ping, "answer at once (reachability and clock)", timeout_s=5),
        CommandSpec("status", b.status, "the agent's status, as igris status shows it",
                    timeout_s=5),
        CommandSpec("health", b.health, "take a fresh health sample", timeout_s=15),
        CommandSpec("peers", b.peers, "the peers this device sees, by liveness", timeout_s=5),
        CommandSpec("policy.get", b.policy_get, "the policy in force and its provenance",
                    timeout_s=5),
        CommandSpec("ledger.head", b.ledger_head, "the audit ledger's size and head hash",
                    timeout_s=5),
        CommandSpec("config.get", b.config_get, "the agent's settings, secrets masked",
                    args={"section": Arg(str, required=False, help="one [section] only")},
                    timeout_s=5),
        CommandSpec("gpio.read", b.gpio_read, "read a named GPIO input or output",
                    args={"name": Arg(str, help="an input or output the profile names")},
                    timeout_s=5),
        CommandSpec("led.set", b.led_set, "show an LED pattern for a while (find a board)",
                    args={"state": Arg(str, choices=tuple(s.value for s in LedState)),
                          "seconds": Arg(float, required=False, default=10.0,
                                         help=f"how long, up to {LED_MAX_S:g} s")},
                    mutates=True, roles=ROLES_MUTATE, timeout_s=5),
        CommandSpec("gpio.write", b.gpio_write, "turn a named GPIO output on or off",
                    args={"name": Arg(str, help="an output in the profile's [gpio.outputs]"),
                          "on": Arg(bool)},
                    mutates=True, roles=ROLES_MUTATE, timeout_s=5),
        CommandSpec("action.run", b.action_run, "run an action the policy lists, by name",
                    args={"name": Arg(str, help="a key of the policy's actions section")},
                    mutates=True, roles=ROLES_MUTATE, timeout_s=ACTION_MAX_S + 1),
        CommandSpec("agent.restart", b.agent_restart, "restart the agent after replying",
                    mutates=True, roles=ROLES_MUTATE, timeout_s=5),
    ]


class _Builtins:
    """The handlers, bound to one context (and one pending restart at most)."""

    __slots__ = ("_ctx", "_restart")

    def __init__(self, ctx: BuiltinContext):
        self._ctx = ctx
        self._restart: asyncio.TimerHandle | None = None

    def ping(self, _call: CommandCall) -> dict[str, Any]:
        return {"pong": True, "device": self._ctx.device_id, "ts": self._ctx.now_ms()}

    def status(self, _call: CommandCall) -> dict[str, Any]:
        return self._ctx.status()

    async def health(self, _call: CommandCall) -> dict[str, Any]:
        return await self._ctx.sample_health()

    def peers(self, _call: CommandCall) -> dict[str, Any]:
        return self._ctx.peers()

    def policy_get(self, _call: CommandCall) -> dict[str, Any]:
        return self._ctx.policy()

    def ledger_head(self, _call: CommandCall) -> dict[str, Any]:
        return self._ctx.ledger_head()

    def config_get(self, call: CommandCall) -> dict[str, Any]:
        config = self._ctx.config()
        section = call.args["section"]
        if section is None:
            return config
        if section not in config:
            raise CommandRefused(
                "bad_args", f"no config section {section!r}; sections: {', '.join(config)}")
        return {section: config[section]}

    def gpio_read(self, call: CommandCall) -> dict[str, Any]:
        name = call.args["name"]
        if name in self._ctx.outputs.names():
            self._check_drivable(name)
            return {"name": name, "kind": "output", "on": self._ctx.outputs.read(name)}
        if name in self._ctx.input_names:
            values = self._ctx.read_inputs()
            if name not in values:
                raise CommandRefused(
                    "unavailable", f"GPIO input {name!r} cannot be read here (no GPIO)")
            return {"name": name, "kind": "input", "on": bool(values[name])}
        known = [*self._ctx.input_names, *self._ctx.outputs.names()]
        raise CommandRefused(
            "bad_args", f"no GPIO input or output named {name!r}; "
            f"known: {', '.join(known) or 'none (the profile names no GPIO)'}")

    def gpio_write(self, call: CommandCall) -> dict[str, Any]:
        name, on = call.args["name"], call.args["on"]
        outputs = self._ctx.outputs
        if name not in outputs.names():
            what = "is an input" if name in self._ctx.input_names else "is not an output"
            allowed = ", ".join(outputs.names()) or "none (the profile lists no [gpio.outputs])"
            raise CommandRefused(
                "bad_args", f"{name!r} {what}; outputs commands may drive: {allowed}")
        self._check_drivable(name)
        was = outputs.read(name)
        return {"name": name, "on": outputs.write(name, on), "was": was}

    def led_set(self, call: CommandCall) -> dict[str, Any]:
        state, seconds = LedState(call.args["state"]), call.args["seconds"]
        if not 0 < seconds <= LED_MAX_S:
            raise CommandRefused(
                "bad_args", f"argument 'seconds': expected more than 0 and at most "
                f"{LED_MAX_S:g}, got {seconds!r}")
        self._ctx.led.override(state, seconds)
        return {"state": state.value, "seconds": seconds, "virtual": self._ctx.led.virtual}

    async def action_run(self, call: CommandCall) -> dict[str, Any]:
        name = call.args["name"]
        actions = self._ctx.policy_section("actions")
        action = actions.get(name)
        if action is None:
            allowed = ", ".join(sorted(actions)) or "none (the policy lists no actions)"
            raise CommandRefused(
                "bad_args", f"no action {name!r} in the policy; actions: {allowed}")
        timeout_s = min(float(action.get("timeout_s", 10)), ACTION_MAX_S)
        return {"action": name, "timeout_s": timeout_s,
                **await _run(name, list(action["argv"]), timeout_s)}

    def agent_restart(self, _call: CommandCall) -> dict[str, Any]:
        # Later, not now: the reply has to leave before the agent stops. A second
        # request while one is pending changes nothing.
        if self._restart is None:
            loop = asyncio.get_running_loop()
            self._restart = loop.call_later(self._ctx.restart_delay_s, self._restart_now)
        return {"restarting": True}

    def _restart_now(self) -> None:
        self._restart = None
        self._ctx.restart()

    def _check_drivable(self, name: str) -> None:
        problem = self._ctx.outputs.problem
        if problem is not None:
            raise CommandRefused("unavailable", f"GPIO output {name!r}: {problem}")


class _Tail:
    """The last :data:`OUTPUT_TAIL_BYTES` of a stream, and how many bytes it carried."""

    __slots__ = ("data", "total")

    def __init__(self) -> None:
        self.data = bytearray()
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        # Reading all the time keeps the pipe flowing (a full pipe would block
        # the action); trimming as we go keeps a chatty action's memory bounded.
        while chunk := await stream.read(_READ_CHUNK):
            self.total += len(chunk)
            self.data += chunk
            del self.data[:-OUTPUT_TAIL_BYTES]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


async def _run(name: str, argv: list[str], timeout_s: float) -> dict[str, Any]:
    """Run action ``name``'s ``argv`` (no shell) for at most ``timeout_s``.

    Returns the exit code and the tails of its output. The action leads its
    own process group, so a timeout (or the command being cancelled) kills
    whatever it started too, and nothing is left holding its pipes. A killed
    action's exit code is ``-9`` (SIGKILL).
    """
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:  # no such program, not executable, ...
        raise CommandRefused(
            "unavailable", f"action {name!r} cannot start {argv[0]!r}: "
            f"{exc.strerror or exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None  # both are PIPE
    out, err = _Tail(), _Tail()
    finished = False
    try:
        await asyncio.wait_for(
            asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr), proc.wait()),
            timeout_s)
        finished = True
    except asyncio.TimeoutError:
        pass
    finally:
        if not finished:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    code = await proc.wait()
    return {
        "exit_code": code, "timed_out": not finished,
        "duration_s": round(time.monotonic() - started, 3),
        "stdout": out.text(), "stderr": err.text(),
        "stdout_bytes": out.total, "stderr_bytes": err.total,
    }
