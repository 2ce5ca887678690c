"""Task kinds with real parts: the router over the shipped TFLite model, the encrypted memory
store on SQLite, and a plugin kind from a real ``igris.task_kinds`` entry point on sys.path."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from agent.ai.models import holdout, model_catalog
from agent.ai.router import DeviceState
from agent.ai.service import AiService
from agent.compat import wall_ms
from agent.db import Database
from agent.errors import TaskFailed, TaskInvalid
from agent.memory import MemoryStore, PoolKeys
from agent.mesh.policy_schema import default_policy
from agent.orchestrator import TaskQueue, TaskSpec
from agent.orchestrator.kinds import KindContext, builtin_kinds, plugin_kinds
from agent.orchestrator.placement import NodeView, Thresholds
from agent.orchestrator.scheduler import Scheduler
from agent.wire import HybridClock
from tests.support.waiting import until

POLICY = default_policy()


@pytest.fixture
def parts(tmp_path, identity):
    db = Database.open(tmp_path / "igris.db")
    store = MemoryStore(db, PoolKeys(db, identity.box_key), HybridClock(wall_ms))
    ai = AiService(catalog=model_catalog(), local_models=["digits-mlp"], remote=None, bus=None,
                   policy_section=lambda name: POLICY.get(name, {}), state=DeviceState)
    commands = []

    async def run_command(name, args, role):
        commands.append((name, args, role))
        if name == "ping":
            return {"ok": True, "result": {"pong": True}}
        return {"ok": False, "error": {"code": "forbidden", "message": f"{name} not here"}}

    async def sample():
        return {"status": "healthy", "cpu_percent": 12.0}

    context = KindContext(device_id="pi-01", infer=ai.infer, sample=sample, memory=store,
                          run_command=run_command)
    yield context, store, commands, db
    ai.close()
    db.close()


def spec(kind, args, **fields):
    return TaskSpec.from_dict({"id": "t", "kind": kind, "args": args, **fields})


async def test_infer_reads_its_input_from_memory_and_writes_the_answer_back(parts):
    context, store, _, _ = parts
    inputs, labels = holdout()
    store.put("images", "img/1", {"inputs": inputs[3]})
    kinds = builtin_kinds(context)
    result = await kinds["infer"](spec("infer", {
        "model": "digits-mlp", "input": {"pool": "images", "key": "img/1"},
        "output": {"pool": "images", "key": "img/1.label"}}))
    assert result["backend"] == "local:digits-mlp"
    label = store.get("images", "img/1.label").value
    assert label["outputs"] == result["outputs"] and label["task"] == "t"
    scores = result["outputs"][0] if isinstance(result["outputs"][0], list) else result["outputs"]
    assert scores.index(max(scores)) == labels[3]


async def test_infer_without_its_input_document_fails_clearly(parts):
    context, store, _, _ = parts
    store.put("images", "other", 1)
    with pytest.raises(TaskFailed, match="no document 'img/9' in pool 'images' on pi-01"):
        await builtin_kinds(context)["infer"](spec("infer", {
            "model": "digits-mlp", "input": {"pool": "images", "key": "img/9"}}))


async def test_sample_writes_a_health_sample_under_its_prefix_with_a_ttl(parts):
    context, store, _, _ = parts
    result = await builtin_kinds(context)["sample"](spec("sample", {
        "pool": "env", "prefix": "kitchen/", "ttl_s": 60}))
    assert result == {"pool": "env", "key": "kitchen/pi-01", "status": "healthy"}
    document = store.get("env", "kitchen/pi-01")
    assert document.value["cpu_percent"] == 12.0 and document.expires_ms is not None


async def test_command_and_action_go_through_the_command_registry(parts):
    context, _, commands, _ = parts
    kinds = builtin_kinds(context)
    assert await kinds["command"](spec("command", {"command": "ping"})) == {"pong": True}
    with pytest.raises(TaskFailed, match=r"action\.run refused: forbidden"):
        await kinds["action"](spec("action", {"name": "reboot-camera"}))
    assert commands == [("ping", {}, "operator"),
                        ("action.run", {"name": "reboot-camera"}, "operator")]


@pytest.mark.parametrize(("kind", "args", "message"), [
    ("command", {}, "argument 'command' must be str"),
    ("sample", {"pool": 3}, "argument 'pool' must be str"),
    ("infer", {"model": "digits-mlp", "input": "img/1"}, "argument 'input' must be"),
    ("sample", {"pool": "env", "ttl_s": True}, "argument 'ttl_s' must be int or float"),
])
async def test_bad_arguments_are_refused_naming_them(parts, kind, args, message):
    context, *_ = parts
    with pytest.raises(TaskInvalid, match=message):
        await builtin_kinds(context)[kind](spec(kind, args))


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """A distribution on sys.path with three ``igris.task_kinds`` entry points."""
    site = tmp_path / "site"
    (site / "igris_test_kind-0.1.dist-info").mkdir(parents=True)
    (site / "igris_test_kind-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: igris-test-kind\nVersion: 0.1\n")
    (site / "igris_test_kind-0.1.dist-info" / "entry_points.txt").write_text(textwrap.dedent("""
        [igris.task_kinds]
        echo = igris_test_kind:factory
        broken = igris_test_kind:missing
        sample = igris_test_kind:factory
        """))
    (site / "igris_test_kind.py").write_text(textwrap.dedent("""
        def factory(ctx):
            async def echo(spec):
                return {"echo": dict(spec.args), "device": ctx.device_id}
            return echo
        """))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("igris_test_kind", None)


async def test_plugin_kinds_load_from_entry_points_and_never_replace_built_ins(
        parts, plugin_on_path, caplog):
    context, *_ = parts
    kinds = plugin_kinds(context)
    assert set(kinds) == {"echo"}
    assert await kinds["echo"](spec("echo", {"x": 1})) == {"echo": {"x": 1}, "device": "pi-01"}
    assert "task kind 'broken'" in caplog.text and "task kind 'sample'" in caplog.text


async def test_the_scheduler_loads_plugins_at_the_first_unknown_kind_and_runs_it(
        parts, plugin_on_path, async_cleanup):
    context, _, _, db = parts
    loads = []

    def plugins():
        loads.append(1)
        return plugin_kinds(context)

    queue = TaskQueue(db, now_ms=wall_ms)
    scheduler = Scheduler(queue, builtin_kinds(context), device_id="pi-01",
                          nodes=lambda: [NodeView("pi-01", "alive", local=True)],
                          thresholds=Thresholds, dispatch=None, now_ms=wall_ms,
                          plugins=plugins, poll_s=0.05)
    await scheduler.start()
    async_cleanup.push(scheduler.stop)
    (tid,) = scheduler.submit(spec("command", {"command": "ping"}))
    assert loads == []  # built-in kinds need no plugin scan
    (echo,) = scheduler.submit(spec("echo", {"hi": True}))
    await until(lambda: queue.get(echo).state == "done")
    assert queue.get(echo).result == {"echo": {"hi": True}, "device": "pi-01"}
    with pytest.raises(TaskInvalid, match="pi-01 runs no task kind nope"):
        scheduler.submit(spec("nope", {}))
    assert loads == [1]  # scanned once
    await until(lambda: queue.get(tid).state == "done")
