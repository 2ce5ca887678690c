"""The composition root: builds every part of one agent, owns and stops them.

Nothing below this module knows how the agent is put together; components
get what they need (transport, channel, database, identity, clock) here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.ai.backend import InferRequest
from agent.ai.bench import load_bench
from agent.ai.models import model_catalog
from agent.ai.peer import served_models
from agent.ai.service import AiService, device_state, remote_from_settings
from agent.bus import Bus, CommandRegistry, CommandServer
from agent.bus.builtins import BuiltinContext, builtin_commands
from agent.bus.plain import PlainCommands
from agent.compat import b64url_encode, wall_ms
from agent.config import Config
from agent.control import SOCKET_NAME, ControlServer
from agent.db import Database
from agent.device import HealthLed, HealthMonitor, HealthReport, led_state_for, load_profile
from agent.device.gpio_outputs import GpioOutputs
from agent.device.pins import make_pin_factory
from agent.errors import ConfigInvalid, MemoryStoreError
from agent.identity import SignedChannel, TrustStore
from agent.memory import MemoryStore, PoolKeys, PoolSharing
from agent.memory.sync import MemorySync, bus_requester
from agent.mesh import Membership, PolicySync, Presence, resolve_scope
from agent.orchestrator.supervisor import Supervisor, service_specs
from agent.orchestrator.watchdog import LoopWatchdog
from agent.runtime.bootstrap import load_or_enroll_dev
from agent.runtime.orchestration import Orchestration
from agent.runtime.ota import HEARTBEATS_TO_CONFIRM, OtaGuard, slot_of_this_agent
from agent.runtime.sdnotify import SystemdNotifier
from agent.security_mesh import (
    AuthFailureTally,
    Blocklist,
    CertificateLog,
    Checkpoints,
    Ledger,
    anchors_from_policy,
)
from agent.transport import InprocTransport, MqttSettings, MqttTransport, Transport
from agent.versions import versions
from agent.wire import HybridClock, Topics

if TYPE_CHECKING:
    from agent.gateway import Gateway

log = logging.getLogger(__name__)

DB_NAME = "igris.db"
EXIT_RESTART = 75  # EX_TEMPFAIL: asked to restart (agent.restart); systemd starts us again
AUDIT_PERIOD_S = 60.0
LOOP_CHECK_S = 2.0
"""Without systemd's watchdog, the event loop's lag is still measured this often (and a
wake-up later than half of it logged as a stall)."""
_UNIX_PATH_MAX = 107


class Runtime:
    """One agent: ``await rt.start()``, then ``await rt.stop()``.

    >>> rt = Runtime(Path("/var/lib/igris"), config)   # doctest: +SKIP
    >>> await rt.start()                                # doctest: +SKIP
    """

    def __init__(
        self,
        root: Path,
        config: Config,
        *,
        now_ms: Callable[[], int] = wall_ms,
        notifier: SystemdNotifier | None = None,
    ):
        self.root = root
        self.config = config
        self._now_ms = now_ms
        self.notifier = notifier or SystemdNotifier()
        self.loop_watchdog = loop_watchdog(self.notifier)
        self.started_monotonic = time.monotonic()
        self.stopped = asyncio.Event()
        self.stop_requested = asyncio.Event()  # serve() stops the agent when this is set
        self.exit_code = 0
        self.last_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.health: HealthReport | None = None
        self.booting = True

        socket_path = root / SOCKET_NAME
        if len(str(socket_path)) > _UNIX_PATH_MAX:
            raise ConfigInvalid(
                f"root {str(root)!r} is too long for the control socket's path "
                f"({len(str(socket_path))} > {_UNIX_PATH_MAX} characters); use a shorter --root"
            )
        self.identity = load_or_enroll_dev(root, config.agent.device_id, now_ms=now_ms())
        if config.agent.device_id and config.agent.device_id != self.identity.device_id:
            raise ConfigInvalid(
                f"[agent] device_id is {config.agent.device_id!r} but {root} is enrolled as "
                f"{self.identity.device_id!r}; re-enroll the root or drop the setting"
            )
        if config.agent.fleet and config.agent.fleet != self.identity.fleet:
            raise ConfigInvalid(
                f"[agent] fleet is {config.agent.fleet!r} but the certificate in {root} is "
                f"for fleet {self.identity.fleet!r}"
            )
        self.profile = load_profile(config.agent.target)
        self.db = Database.open(root / DB_NAME)
        self.session = self.db.next_session()
        self.topics = Topics(self.identity.fleet, config.mqtt.topic_prefix)
        self.transport = self._make_transport()
        self.hlc = HybridClock(now_ms)
        self.ledger = Ledger(self.db, self.identity, self.hlc)
        self.trust = TrustStore(self.identity.ca_public, fleet=self.identity.fleet, now_ms=now_ms)
        self.trust.on_learn = CertificateLog(self.ledger)
        self.channel = SignedChannel(
            self.transport, self.identity, self.trust, hlc=self.hlc, now_ms=now_ms,
            max_bytes=config.limits.max_message_bytes,
            skew_ms=int(config.limits.clock_skew_s * 1000),
        )
        needs_gpio = (self.profile.led.pin is not None or bool(self.profile.gpio.inputs)
                      or bool(self.profile.gpio.outputs))
        pin_factory = make_pin_factory(config.health.pin_factory) if needs_gpio else None
        self.monitor = HealthMonitor(
            self.profile, sysfs_root=Path(config.health.sysfs_root), pin_factory=pin_factory
        )
        self.led = HealthLed(
            self.profile.led.pin, active_high=self.profile.led.active_high,
            pin_factory=pin_factory,
        )
        self.auth_failures = AuthFailureTally(self.ledger)
        self.memory = MemoryStore(
            self.db, PoolKeys(self.db, self.identity.box_key, now_ms=now_ms), self.hlc,
            now_ms=now_ms,
        )
        self.sharing = PoolSharing(self.db, self.channel, self.topics, self.memory.keys,
                                   record=self.ledger.append, now_ms=now_ms)
        self.channel.on_drop = self.auth_failures.add
        self.ledger_check: dict[str, Any] = {"state": "pending"}
        # Loaded now, so stored blocks are enforced before the first message.
        self.blocklist = Blocklist(
            self.db, self.channel, self.topics, record=self.ledger.append, now_ms=now_ms
        )
        self.policy = PolicySync(
            self.channel, self.topics, self.db, record=self.ledger.append, now_ms=now_ms
        )
        membership = self.policy.section("membership")
        self.membership = Membership(
            self.channel, self.topics, self.db,
            scope=resolve_scope(config.mesh.scope, self.identity.certificate),
            suspect_after_s=membership["suspect_after_s"],
            dead_after_s=membership["dead_after_s"], now_ms=now_ms,
            is_blocked=self.blocklist.is_blocked,
        )
        self._follow_policy()
        self.checkpoints = Checkpoints(self.ledger, self.channel, self.topics, self.db,
                                       now_ms=now_ms)
        self.outputs = GpioOutputs(self.profile.gpio.outputs, pin_factory=pin_factory)
        self._build_command_bus()
        self.presence = Presence(
            self.channel, self.topics, session=self.session, describe=self._describe,
            health=self._health_summary, heartbeat_s=config.health.heartbeat_s,
            extra=self.memsync.heartbeat,
        )
        self.control = self._build_control(socket_path)

    def _follow_policy(self) -> None:
        """The supervisor of the policy's services, and the policy applied now and on each
        one accepted later (start() hands the supervisor its first services list)."""
        self.supervisor = Supervisor(record=self.ledger.append)
        self.policy.add_listener(self._apply_policy)

    def _build_control(self, socket_path: Path) -> ControlServer:
        return ControlServer(socket_path, {
            "status": self._rpc_status,
            "peers": self._rpc_peers,
            "ai.explain": self._rpc_ai_explain,
            "ai.infer": self._rpc_ai_infer,
            "policy.get": self._rpc_policy,
            "led.test": self._rpc_led_test,
            "mem.share": self._rpc_mem_share,
            "mem.unshare": self._rpc_mem_unshare,
            "restart": self._rpc_restart,
            **self.orchestration.methods(),
        })

    def _make_transport(self) -> Transport:
        mqtt = self.config.mqtt
        if not mqtt.broker:
            return InprocTransport(client_id=self.identity.device_id)
        settings = MqttSettings.from_url(
            mqtt.broker,
            client_id=self.identity.device_id,
            keepalive=mqtt.keepalive_s,
            protocol=mqtt.protocol,
            ca_file=mqtt.ca_file or None,
            cert_file=mqtt.cert_file or None,
            key_file=mqtt.key_file or None,
            max_offline_queue=mqtt.offline_queue,
        )
        return MqttTransport(settings)

    async def start(self) -> None:
        """Bring the agent up; returns once the birth is published (or queued)."""
        self.led.show(
            led_state_for(booting=True, connected=None, health_status="healthy", error=False)
        )
        await self.control.start()
        self.health = await self.monitor.sample()
        self.transport.set_will(self.presence.will())
        self.transport.add_connection_listener(self._on_connection)
        await self.transport.start()
        await self.policy.start()
        await self.blocklist.start()
        await self.sharing.start()
        await self.membership.start()
        await self.checkpoints.start()
        await self.commands.start()
        await self.plain.start()
        await self.bus.start()
        await self.presence.start()
        if self.gateway is not None:
            await self.gateway.start()
        await self.orchestration.scheduler.start()
        self.booting = False  # from here on each new policy re-applies the services
        self._refresh_led()
        await self.supervisor.apply(self._services())
        await self.supervisor.start()
        await self.ota.start()
        self._spawn(self._sample_health(), "igris.health")
        self._spawn(self._audit(), "igris.audit")
        self._spawn(self._verify_ledger(), "igris.ledger.verify")
        await self.loop_watchdog.start()
        self.notifier.notify("READY=1", f"STATUS=device {self.identity.device_id} up")
        log.info(
            "agent %s up: fleet %s, session %d, %s", self.identity.device_id,
            self.identity.fleet, self.session,
            self.config.mqtt.broker or "no broker (in-process transport)",
        )

    async def stop(self) -> None:
        """Stop cleanly: death published, broker disconnected, database closed."""
        self.notifier.notify("STOPPING=1")
        await self.loop_watchdog.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.orchestration.scheduler.stop()
            await self.presence.stop()
        finally:
            await self.ota.stop()
            await self.supervisor.stop()
            if self.gateway is not None:
                await self.gateway.stop()
            await self.memsync.stop()
            await self.bus.stop()
            await self.plain.stop()
            await self.commands.stop()
            await self.checkpoints.stop()
            await self.membership.stop()
            await self.sharing.stop()
            await self.blocklist.stop()
            await self.policy.stop()
            self.auth_failures.flush()
            await self.transport.stop()
            await self.control.stop()
            self.led.close()
            self.outputs.close()
            self.ai.close()
            self.monitor.close()
            self.db.close()
            self.stopped.set()
        log.info("agent %s stopped", self.identity.device_id)

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def _build_command_bus(self) -> None:
        self.registry = CommandRegistry()
        for spec in builtin_commands(self._builtin_context()):
            self.registry.add(spec)
        self.commands = CommandServer(
            self.channel, self.topics, self.db, self.registry, record=self.ledger.append,
            policy_section=self.policy.section, now_ms=self._now_ms,
        )
        self.plain = PlainCommands(self.transport, self.topics, self.commands,
                                   device_id=self.identity.device_id)
        self.bus = Bus(self.channel, self.topics, membership=self.membership,
                       serves_commands=True)
        self.memsync = MemorySync(self.memory, self.sharing, bus_requester(self.bus))
        self.registry.add(self.memsync.pull_command())
        self.membership.add_body_listener(self.memsync.on_heartbeat)
        self.ai = self._build_ai()
        self.registry.add(self.ai.command())
        self.orchestration = Orchestration(
            db=self.db, certificate=self.identity.certificate, membership=self.membership,
            policy=self.policy, bus=self.bus, commands=self.commands, memory=self.memory,
            infer=self.ai.infer, sample=self._sample_now, health=self._health_summary,
            remote=self.ai.remote, now_ms=self._now_ms)
        self.registry.add(self.orchestration.scheduler.run_command())
        self.gateway: Gateway | None = None
        if self.config.gateway.lite_dir:  # a gateway for lite devices (docs/lite.md)
            from agent.gateway import Gateway, LiteKeyring, LiteTopics  # only gateways load it

            self.gateway = Gateway(
                self.channel, LiteTopics(self.topics),
                LiteKeyring(self.root / self.config.gateway.lite_dir), now_ms=self._now_ms,
                on_drop=self.auth_failures.add)
            for spec in self.gateway.commands():
                self.registry.add(spec)
        self.ota = OtaGuard(healthy=self._healthy_for_ota, record=self.ledger.append,
                            restart=self.request_restart, now_ms=self._now_ms,
                            ca_public=self.identity.ca_public, target=self.profile.name,
                            where=slot_of_this_agent())
        self.registry.add(self.ota.command())

    def _build_ai(self) -> AiService:
        settings = self.config.ai
        catalog = model_catalog()
        local = [n.strip() for n in settings.local_models.split(",") if n.strip()] or [
            name for name, info in catalog.items() if info.role == "device"]
        # A device that offers a model to its peers must be able to run it.
        local += [m for m in served_models(self.identity.certificate.caps)
                  if m in catalog and m not in local]
        ai = AiService(
            catalog=catalog, local_models=local, remote=remote_from_settings(settings),
            bus=self.bus, policy_section=self.policy.section,
            state=lambda: device_state(self._health_summary(), metered=settings.metered_link),
            bench=load_bench(self.db), me=self.identity.device_id,
        )
        self.membership.add_listener(lambda _peer: ai.update_peers(self.membership.peers()))
        return ai

    async def _sample_now(self) -> dict[str, Any]:
        """A fresh health sample (``health`` command, ``sample`` tasks); kept as the latest."""
        self.health = await self.monitor.sample()
        return self.health.to_dict()

    def _builtin_context(self) -> BuiltinContext:
        def ledger_head() -> dict[str, Any]:
            size, head = self.ledger.head()
            return {"size": size, "head": b64url_encode(head)}

        return BuiltinContext(
            device_id=self.identity.device_id,
            status=self.status,
            sample_health=self._sample_now,
            peers=self._peers_view,
            policy=self.policy.show,
            policy_section=self.policy.section,
            ledger_head=ledger_head,
            config=self.config.to_dict,
            led=self.led,
            outputs=self.outputs,
            input_names=tuple(self.profile.gpio.inputs),
            read_inputs=self.monitor.read_inputs,
            restart=self.request_restart,
            now_ms=self._now_ms,
        )

    def request_restart(self) -> None:
        """Stop cleanly with exit status 75, so the service manager starts us again."""
        log.warning("restart requested")
        self.exit_code = EXIT_RESTART
        self.stop_requested.set()

    def _apply_policy(self, doc: dict[str, Any]) -> None:
        membership = self.policy.section("membership")
        self.membership.set_timeouts(membership["suspect_after_s"], membership["dead_after_s"])
        # CA rotation: the policy's trust section (or, without one, our ca.pub).
        anchors = anchors_from_policy(doc, self.identity.ca_public)
        if set(anchors) != set(self.trust.anchors):
            self.trust.set_anchors(anchors)
            if not self.booting:  # started: peers dropped before may verify now
                self._spawn(self.membership.rediscover(), "igris.membership.rediscover")
        if not self.booting:  # start() hands the supervisor its first list itself
            self._spawn(self.supervisor.apply(self._services()), "igris.services.apply")

    def _services(self) -> list[Any]:
        """The policy's services for this device's groups."""
        return service_specs(self.policy.section("services"), self.identity.certificate.groups)

    def _on_connection(self, connected: bool) -> None:
        if self.config.mqtt.broker:
            log.info("broker %s %s", self.config.mqtt.broker, "connected" if connected else "lost")
        self._refresh_led()

    def _refresh_led(self) -> None:
        connected = self.transport.connected if self.config.mqtt.broker else None
        self.led.show(led_state_for(
            booting=self.booting, connected=connected,
            health_status=self.health.status if self.health else "healthy",
            error=self.last_error is not None,
        ))

    async def _sample_health(self) -> None:
        while True:
            await asyncio.sleep(self.config.health.sample_s)
            try:
                self.health = await self.monitor.sample()
                self.last_error = None
            except Exception as exc:
                log.exception("health sample failed")
                self.last_error = f"health sample failed: {exc!r}"
            self._refresh_led()

    async def _audit(self) -> None:
        # Once a minute: authentication failures go into the ledger as one tally
        # (a flood of bad messages costs one entry, not one each), and expired
        # memory documents are swept.
        while True:
            await asyncio.sleep(AUDIT_PERIOD_S)
            try:
                self.auth_failures.flush()
                self.memory.sweep()  # expired documents go
            except Exception:
                log.exception("periodic audit and memory sweep failed")

    async def _verify_ledger(self) -> None:
        # A full check at start, off the loop (it is CPU work on its own connection).
        started = time.monotonic()
        report = await asyncio.get_running_loop().run_in_executor(None, self.ledger.verify)
        self.ledger_check = {**report.to_dict(), "state": "ok" if report.ok else "BAD",
                             "took_s": round(time.monotonic() - started, 3)}
        if not report.ok:
            self.last_error = f"ledger does not verify: entry {report.bad_seq}: {report.reason}"
            log.error("%s", self.last_error)
            self._refresh_led()

    def _describe(self) -> dict[str, Any]:
        cert = self.identity.certificate
        return {
            "target": self.profile.name,
            "version": __version__,
            "groups": list(cert.groups),
            "caps": list(cert.caps),
            "role": cert.role,
        }

    def _health_summary(self) -> dict[str, Any]:
        return self.health.to_dict() if self.health else {}

    def status(self) -> dict[str, Any]:
        """Everything ``igris status`` shows."""
        stats = self.transport.stats
        return {
            "device_id": self.identity.device_id,
            "fleet": self.identity.fleet,
            "role": self.identity.role,
            "target": self.profile.name,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "session": self.session,
            "broker": {
                "url": self.config.mqtt.broker or None,
                "connected": self.transport.connected,
                "published": stats.published,
                "received": stats.received,
                "reconnects": stats.reconnects,
                "queued_offline": stats.queued_offline,
                "dropped_offline": stats.dropped_offline,
            },
            "messages": {
                "accepted": self.channel.accepted,
                "dropped": dict(self.channel.dropped),
                "handler_errors": stats.handler_errors,
            },
            "peers": self.membership.counts(),
            "policy_version": self.policy.version,
            "blocklist": self.blocklist.counters(),
            "commands": {**self.commands.stats(), "plain_answered": self.plain.answered},
            "ai": self.ai.stats(),
            "memory": {"pools": len(self.memory.pools()), "sharing": self.sharing.counters(),
                       "sync": dict(self.memsync.counters)},
            "orchestrator": self.orchestration.stats(),
            "gateway": self.gateway.stats() if self.gateway is not None else None,
            "services": {name: child.to_dict()
                         for name, child in self.supervisor.status().items()},
            "ota": self.ota.status(),
            "ledger": {"size": len(self.ledger), "verified": self.ledger_check,
                       "checkpoint_flags": self.checkpoints.flags()},
            "heartbeats_sent": self.presence.heartbeats_sent,
            "event_loop": self.loop_watchdog.counters(),
            "health": self._health_summary(),
            "led": self.led.state.value,
            "error": self.last_error,
            "versions": versions(),
        }

    async def _rpc_status(self, _params: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def _peers_view(self) -> dict[str, Any]:
        # A gateway lists its own lite devices first-hand; others' relays add the rest.
        own = self.gateway.peers.peers() if self.gateway is not None else []
        mine = {peer.device_id for peer in own}
        return {
            "scope": self.membership.scope,
            "counts": self.membership.counts(),
            "peers": [peer.to_dict() for peer in self.membership.peers()],
            "lite": [peer.to_dict() for peer in own]
            + [peer.to_dict() for peer in self.membership.lite_peers()
               if peer.device_id not in mine],
            "ignored": dict(self.membership.ignored),
        }

    async def _rpc_peers(self, _params: dict[str, Any]) -> dict[str, Any]:
        return self._peers_view()

    async def _rpc_ai_explain(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.ai.explain(_infer_request(params)).to_dict()

    async def _rpc_ai_infer(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.ai.infer(_infer_request(params))

    async def _rpc_policy(self, _params: dict[str, Any]) -> dict[str, Any]:
        return self.policy.show()

    async def _rpc_led_test(self, params: dict[str, Any]) -> list[str]:
        dwell = float(params.get("dwell_s", 1.0))
        shown = [state.value async for state in self.led.cycle(dwell)]
        self._refresh_led()
        return shown

    async def _rpc_restart(self, _params: dict[str, Any]) -> dict[str, Any]:
        self.request_restart()
        return {"restarting": True}

    def _healthy_for_ota(self) -> bool:
        """Up as an update must prove: the broker connected (when there is one), birth and
        heartbeats out."""
        return ((not self.config.mqtt.broker or self.transport.connected)
                and self.presence.heartbeats_sent >= HEARTBEATS_TO_CONFIRM)

    async def _rpc_mem_share(self, params: dict[str, Any]) -> dict[str, Any]:
        devices = params.get("devices", [])
        if not isinstance(devices, list):
            raise MemoryStoreError("devices must be a list of device ids")
        return (await self.sharing.share(params.get("pool"), devices)).to_dict()

    async def _rpc_mem_unshare(self, params: dict[str, Any]) -> dict[str, Any]:
        return (await self.sharing.remove(params.get("pool"), params.get("device"))).to_dict()


def loop_watchdog(notifier: SystemdNotifier) -> LoopWatchdog:
    """Under systemd's ``WatchdogSec``, ping four times per period while the loop answers in
    time; without it, still measure the loop's lag (stalls are logged and counted)."""
    check_s = notifier.watchdog_s / 4 if notifier.watchdog_s else LOOP_CHECK_S
    return LoopWatchdog(notifier.notify, interval_s=check_s, max_lag_s=check_s / 2)


def _infer_request(params: dict[str, Any]) -> InferRequest:
    """An :class:`InferRequest` from control-socket parameters (checked by the CLI)."""
    return InferRequest(
        str(params["model"]), inputs=params.get("inputs"), text=params.get("text"),
        deadline_ms=params.get("deadline_ms"), min_accuracy=params.get("min_accuracy"),
        private=bool(params.get("private", False)),
    )
