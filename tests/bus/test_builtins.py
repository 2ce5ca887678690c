"""The built-in commands, run through the registry on real parts.

The LED, the GPIO outputs and inputs are the real classes on gpiozero's
MockFactory pins; actions are real subprocesses listed in a policy that
passes the real policy schema.
"""

import asyncio
import dataclasses
import inspect
import sys
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from agent.bus import ROLES_ANY, ROLES_MUTATE, CommandCall, CommandRegistry
from agent.bus.builtins import ACTION_MAX_S, OUTPUT_TAIL_BYTES, BuiltinContext, builtin_commands
from agent.device import GpioInputs, GpioInputSpec, GpioOutputs, HealthLed, LedState
from agent.errors import CommandRefused
from agent.mesh.policy_schema import validate_policy

PY = sys.executable
READ_ONLY = {"ping", "status", "health", "peers", "policy.get", "ledger.head", "config.get",
             "gpio.read"}
MUTATING = {"led.set", "gpio.write", "action.run", "agent.restart"}
LED_PIN, RELAY, FAN, POWER_SAVE = 18, 23, 24, 17


def policy_doc(tmp_path: Path) -> dict:
    pidfile = tmp_path / "pid"
    return validate_policy({"version": 3, "actions": {
        "hello": {"argv": [PY, "-c", "import sys; print('hi'); print('oops', file=sys.stderr)"],
                  "timeout_s": 5, "help": "say hi"},
        "fail": {"argv": [PY, "-c", "raise SystemExit(3)"]},
        "hang": {"argv": [PY, "-c", (
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(30)")], "timeout_s": 0.3},
        "chatty": {"argv": [PY, "-c", "import sys; sys.stdout.write('x' * 1_000_000 + 'END')"]},
        "slow": {"argv": [PY, "-c", (
            f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
            "time.sleep(30)")], "timeout_s": 30},
        "long": {"argv": [PY, "-c", "pass"], "timeout_s": 600},
        "missing": {"argv": [str(tmp_path / "no-such-program")]},
    }})


class World:
    """Real device parts on mock pins, and the callables a runtime would pass."""

    def __init__(self, tmp_path: Path):
        self.factory = MockFactory()
        self.led = HealthLed(LED_PIN, pin_factory=self.factory, tick_s=0.002)
        self.outputs = GpioOutputs({"relay": RELAY, "fan": FAN}, pin_factory=self.factory)
        self.inputs = GpioInputs({"power_save": GpioInputSpec(POWER_SAVE, pull_up=True)},
                                 pin_factory=self.factory)
        self.policy = policy_doc(tmp_path)
        self.pidfile = tmp_path / "pid"
        self.samples = 0
        self.restarts = 0
        self.ctx = BuiltinContext(
            device_id="cam-01",
            status=lambda: {"device_id": "cam-01", "uptime_s": 12.5},
            sample_health=self.sample_health,
            peers=lambda: {"scope": "fleet", "counts": {"alive": 1}, "peers": [{"id": "cam-02"}]},
            policy=lambda: {"version": self.policy["version"], "document": self.policy},
            policy_section=lambda name: self.policy.get(name, {}),
            ledger_head=lambda: {"size": 7, "head": "q83vEjRWeJA"},
            config=lambda: {"agent": {"device_id": "cam-01"}, "mqtt": {"key_file": "***"}},
            led=self.led,
            outputs=self.outputs,
            input_names=("power_save",),
            read_inputs=self.inputs.read,
            restart=self.restart,
            now_ms=lambda: 1_700_000_000_000,
            restart_delay_s=0.05,
        )
        self.registry = registry_of(self.ctx)

    async def sample_health(self) -> dict:
        self.samples += 1
        return {"status": "healthy", "sample": self.samples}

    def restart(self) -> None:
        self.restarts += 1

    def close(self) -> None:
        self.led.close()
        self.outputs.close()
        self.inputs.close()
        self.factory.close()


def registry_of(ctx: BuiltinContext) -> CommandRegistry:
    registry = CommandRegistry()
    for spec in builtin_commands(ctx):
        registry.add(spec)
    return registry


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


async def run(registry: CommandRegistry, command: str, /, **args):
    """What the server does once a caller is admitted: check the arguments, call."""
    spec = registry.get(command)
    call = CommandCall("req-1", command, spec.check_args(args), "op-1", "operator")
    result = spec.handler(call)  # a plain function for quick reads, else a coroutine
    return await result if inspect.isawaitable(result) else result


def refused(registry, command, match, /, **args) -> str:
    """Run ``command``, which must be refused with a message matching ``match``; its code."""
    with pytest.raises(CommandRefused, match=match) as caught:
        asyncio.run(run(registry, command, **args))
    return caught.value.code


def gone(pid: int, timeout: float = 2.0) -> bool:
    """True once ``pid`` has exited (gone, or a zombie nobody reaps in this container)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------- the table


def test_every_builtin_has_the_roles_the_issue_gives_it(world):
    specs = {spec.name: spec for spec in builtin_commands(world.ctx)}
    assert set(specs) == READ_ONLY | MUTATING
    for name in READ_ONLY:
        assert (specs[name].roles, specs[name].mutates) == (ROLES_ANY, False), name
    for name in MUTATING:
        assert (specs[name].roles, specs[name].mutates) == (ROLES_MUTATE, True), name
    for spec in specs.values():
        assert spec.help and "\n" not in spec.help and 0 < spec.timeout_s <= ACTION_MAX_S + 1
        spec.describe()  # every argument type has a name a client can show
    assert specs["action.run"].timeout_s == ACTION_MAX_S + 1


@pytest.mark.parametrize(("name", "args", "match"), [
    ("gpio.write", {"name": "relay"}, r"argument 'on' is required"),
    ("gpio.write", {"name": "relay", "on": True, "pin": 4}, r"unknown argument 'pin'"),
    ("gpio.write", {"name": "relay", "on": "yes"}, r"argument 'on': expected true or false"),
    ("gpio.read", {"name": 23}, r"argument 'name': expected a string"),
    ("led.set", {"state": "blinky"}, r"argument 'state': expected one of \['booting'"),
    ("led.set", {"state": "error", "seconds": "5"}, r"argument 'seconds': expected a number"),
    ("ping", {"now": True}, r"unknown argument 'now'; ping takes no arguments"),
    ("action.run", {}, r"argument 'name' is required"),
])
def test_arguments_are_checked_before_any_handler_runs(world, name, args, match):
    with pytest.raises(CommandRefused, match=match) as caught:
        world.registry.get(name).check_args(args)
    assert caught.value.code == "bad_args"


# ---------------------------------------------------------------- read-only


async def test_ping_answers_with_the_device_and_time(world):
    assert await run(world.registry, "ping") == {
        "pong": True, "device": "cam-01", "ts": 1_700_000_000_000}


async def test_views_reply_what_the_runtime_shows(world):
    reg = world.registry
    assert (await run(reg, "status"))["uptime_s"] == 12.5
    assert (await run(reg, "peers"))["peers"] == [{"id": "cam-02"}]
    assert (await run(reg, "policy.get"))["version"] == 3
    assert await run(reg, "ledger.head") == {"size": 7, "head": "q83vEjRWeJA"}
    assert (await run(reg, "config.get"))["mqtt"] == {"key_file": "***"}
    assert await run(reg, "config.get", section="agent") == {"agent": {"device_id": "cam-01"}}


def test_config_get_refuses_an_unknown_section(world):
    assert refused(world.registry, "config.get",
                   r"no config section 'mqqt'; sections: agent, mqtt",
                   section="mqqt") == "bad_args"


async def test_health_takes_a_fresh_sample_each_time(world):
    assert (await run(world.registry, "health"))["sample"] == 1
    assert (await run(world.registry, "health"))["sample"] == 2


async def test_gpio_read_reads_named_inputs_and_outputs(world):
    reg = world.registry
    assert await run(reg, "gpio.read", name="power_save") == {
        "name": "power_save", "kind": "input", "on": False}
    world.factory.pin(POWER_SAVE).drive_low()  # the switch to ground closes
    assert (await run(reg, "gpio.read", name="power_save"))["on"] is True
    world.outputs.write("fan", True)
    assert await run(reg, "gpio.read", name="fan") == {"name": "fan", "kind": "output",
                                                       "on": True}


def test_gpio_read_refuses_unknown_names_listing_the_known_ones(world):
    assert refused(world.registry, "gpio.read",
                   r"no GPIO input or output named 'led'; known: power_save, relay, fan",
                   name="led") == "bad_args"


def test_gpio_read_says_when_an_input_cannot_be_read_here(world):
    ctx = dataclasses.replace(world.ctx, read_inputs=dict)  # no GPIO: nothing readable
    assert refused(registry_of(ctx), "gpio.read", r"'power_save' cannot be read here",
                   name="power_save") == "unavailable"


# ---------------------------------------------------------------- mutating


async def test_gpio_write_drives_the_mock_pin(world):
    relay = world.factory.pin(RELAY)
    assert relay.state is False
    assert await run(world.registry, "gpio.write", name="relay", on=True) == {
        "name": "relay", "on": True, "was": False}
    assert relay.state is True and world.factory.pin(FAN).state is False
    assert (await run(world.registry, "gpio.write", name="relay", on=False))["was"] is True
    assert relay.state is False


@pytest.mark.parametrize(("name", "match"), [
    ("power_save", r"'power_save' is an input; outputs commands may drive: relay, fan"),
    ("GPIO18", r"'GPIO18' is not an output; outputs commands may drive: relay, fan"),
])
def test_gpio_write_refuses_anything_but_the_profiles_outputs(world, name, match):
    assert refused(world.registry, "gpio.write", match, name=name, on=True) == "bad_args"
    assert world.factory.pin(LED_PIN).function == "output"  # the LED's pin, untouched
    assert world.factory.pin(POWER_SAVE).function == "input"


def test_gpio_write_says_when_outputs_cannot_be_driven(world):
    world.outputs.close()
    assert refused(world.registry, "gpio.write", r"'relay': GPIO outputs are closed",
                   name="relay", on=True) == "unavailable"


async def test_led_set_shows_a_pattern_for_a_while_then_the_health_state(world):
    led, pin = world.led, world.factory.pin(LED_PIN)
    led.show(LedState.HEALTHY)
    assert pin.state is True
    mark = len(pin.states)  # MockPin keeps every change of level
    reply = await run(world.registry, "led.set", state="offline", seconds=0.15)
    assert reply == {"state": "offline", "seconds": 0.15, "virtual": False}
    assert led.state is LedState.OFFLINE
    await asyncio.sleep(0.05)
    assert any(not change.state for change in pin.states[mark:])  # solid no more: blinking
    led.show(LedState.DEGRADED)  # a health sample during the override waits for its end
    assert led.state is LedState.OFFLINE
    await asyncio.sleep(0.15)
    assert led.state is LedState.DEGRADED


async def test_led_set_again_replaces_the_running_override(world):
    led = world.led
    led.show(LedState.HEALTHY)
    await run(world.registry, "led.set", state="error", seconds=0.05)
    await run(world.registry, "led.set", state="booting", seconds=0.3)
    await asyncio.sleep(0.1)  # the first override's end has passed: still the second
    assert led.state is LedState.BOOTING
    led.end_override()
    assert world.factory.pin(LED_PIN).state is True and led.state is LedState.HEALTHY


@pytest.mark.parametrize("seconds", [0, -1, 3601])
def test_led_set_refuses_durations_out_of_range(world, seconds):
    assert refused(world.registry, "led.set", r"argument 'seconds': expected more than 0",
                   state="error", seconds=seconds) == "bad_args"


async def test_action_run_runs_the_named_argv_and_reports(world):
    reply = await run(world.registry, "action.run", name="hello")
    assert reply["exit_code"] == 0 and reply["timed_out"] is False
    assert (reply["stdout"], reply["stderr"]) == ("hi\n", "oops\n")
    assert (reply["action"], reply["timeout_s"], reply["stdout_bytes"]) == ("hello", 5.0, 3)
    assert (await run(world.registry, "action.run", name="fail"))["exit_code"] == 3


async def test_action_run_kills_an_action_and_its_children_at_its_timeout(world):
    reply = await run(world.registry, "action.run", name="hang")
    assert reply["timed_out"] is True and reply["exit_code"] == -9
    assert 0.3 <= reply["duration_s"] < 2
    assert gone(int(reply["stdout"]))  # the grandchild went with its process group


async def test_action_run_keeps_only_the_tail_of_a_chatty_action(world):
    reply = await run(world.registry, "action.run", name="chatty")
    assert len(reply["stdout"]) == OUTPUT_TAIL_BYTES and reply["stdout"].endswith("xxEND")
    assert reply["stdout_bytes"] == 1_000_003


async def test_a_cancelled_action_run_kills_the_action(world):
    task = asyncio.create_task(run(world.registry, "action.run", name="slow"))
    deadline = time.monotonic() + 2
    while not world.pidfile.exists() or not world.pidfile.read_text():
        assert time.monotonic() < deadline, "the action never started"
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(int(world.pidfile.read_text()))


async def test_action_timeouts_are_capped(world):
    assert (await run(world.registry, "action.run", name="long"))["timeout_s"] == ACTION_MAX_S


def test_action_run_refuses_names_the_policy_does_not_list(world):
    assert refused(world.registry, "action.run",
                   r"no action 'reboot' in the policy; actions: chatty, fail, hang, hello, long, "
                   r"missing, slow", name="reboot") == "bad_args"
    ctx = dataclasses.replace(world.ctx, policy_section=lambda _name: {})
    assert refused(registry_of(ctx), "action.run", r"none \(the policy lists no actions\)",
                   name="hello") == "bad_args"


def test_action_run_says_when_the_program_cannot_start(world):
    assert refused(world.registry, "action.run",
                   r"action 'missing' cannot start '.*no-such-program': No such file",
                   name="missing") == "unavailable"


async def test_agent_restart_replies_first_then_restarts_once(world):
    assert await run(world.registry, "agent.restart") == {"restarting": True}
    assert await run(world.registry, "agent.restart") == {"restarting": True}
    assert world.restarts == 0  # not before the reply can go out
    await asyncio.sleep(0.1)
    assert world.restarts == 1
    await run(world.registry, "agent.restart")  # the agent did not go: ask again
    await asyncio.sleep(0.1)
    assert world.restarts == 2
