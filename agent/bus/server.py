"""The device side of the command bus: receive signed commands, run them once, reply.

Requests arrive on ``cmd/<dev>``, ``cmd/group/<g>`` (each of this device's
groups) and ``cmd/all``, already verified by the signed channel (unsigned,
forged, replayed, expired and blocked senders never get here: they are
dropped, counted and tallied into the ledger at the gate). Here a request is
checked against the registry (known command, caller's role, arguments,
deadline), run with its timeout, written to the ledger, and answered on its
response topic: the MQTT 5 response topic and correlation data when the
broker carries them, the ``reply_to`` field of the body otherwise.

**Once only.** QoS 1 may deliver a request again (after a reconnect, or a
restart with a persistent session). Every execution of a mutating command
(and every refusal, but of a read-only command) is stored by request id
with its reply, in the same transaction as its ledger entry, before the
reply goes out; a repeat gets the stored reply and runs nothing.

**Read-only commands answer first.** They need no stored reply: a
redelivery within the session is caught by the channel's replay guard, and
running ``ping`` again after a restart is harmless. So their reply is sent
first, and the executions answered within :data:`AUDIT_WINDOW_S` are
written together as one signed ``commands`` ledger entry (one record per
execution), always before any later mutating command's entry. One
signature and one commit per window instead of per command is what lets a
device answer thousands of reads a second. A ``kill -9`` can lose the
records of the read-only commands answered in the last window; nothing
that changed the device is ever answered before it is recorded.

**Plain functions run inline.** A handler may be a coroutine function (run
as a task, with its timeout) or a plain function: a quick read such as
``ping`` or ``status`` is then answered from the message callback itself,
with no task, no timer and no await. A plain handler must not block.

**Replies are MACed when the caller asks.** A request whose body says
``"reply_mac": true`` (the :class:`~agent.bus.client.Bus` always does) is
answered with HMAC-SHA256 under the key this device and the caller share
(:meth:`~agent.identity.Identity.pair_key`, X25519 of the box keys in both
certificates) instead of an Ed25519 signature. Only the caller reads the
reply, and the broker cannot forge it either way; the MAC costs a twentieth
of a signature plus its check, which is what a fan-out to the whole fleet
pays per device. The device's signed ledger keeps the record of what it ran
and a digest of what it answered. Other callers get signed replies.

**Refusals are rate-limited per caller**: past a small burst, a caller's
refused requests get no reply and no ledger entry of their own (they are
counted, and tallied), so a misbehaving peer cannot make a device write or
talk without bound.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from agent.bus.registry import CommandCall, CommandRegistry, CommandSpec
from agent.compat import b64url_encode, canonical_json, random_bytes, sha256
from agent.db import Database
from agent.errors import CommandRefused, TopicInvalid
from agent.identity.channel import SignedChannel
from agent.transport.base import Message
from agent.wire import Envelope, Topics

log = logging.getLogger(__name__)

Recorder = Callable[[str, dict[str, Any]], object]
PLAIN_CALLER = "mqtt"  # who a plain MQTT client is, in the ledger and the rate limit
MAX_CONCURRENT = 64
STOP_GRACE_S = 1.0
KEEP_LOG_MS = 24 * 3600 * 1000
_PRUNE_EVERY_S = 3600.0
_DEFAULT_REFUSALS_PER_S = 5.0
_REFUSAL_BURST = 10.0
AUDIT_WINDOW_S = 0.25
"""Read-only executions answered within this window share one ledger entry."""
AUDIT_MAX_RUNS = 128
"""...or fewer, when that many are waiting (keeps an entry well under the size limit)."""


def result_digest(reply: dict[str, Any]) -> str:
    """Short hex digest of a reply: what the ledger keeps instead of the whole result."""
    return sha256(canonical_json(reply)).hex()[:32]


class _Bucket:
    """A token bucket: ``rate`` per second, ``burst`` at most."""

    __slots__ = ("stamp_ms", "tokens")

    def __init__(self, now_ms: int) -> None:
        self.tokens = _REFUSAL_BURST
        self.stamp_ms = now_ms

    def take(self, now_ms: int, rate: float) -> bool:
        self.tokens = min(_REFUSAL_BURST, self.tokens + (now_ms - self.stamp_ms) * rate / 1000)
        self.stamp_ms = now_ms
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class CommandServer:
    """Answer commands addressed to this device, its groups or the fleet.

    >>> server = CommandServer(channel, topics, db, registry, record=ledger.append,
    ...                        policy_section=policy.section, now_ms=clock)  # doctest: +SKIP
    >>> await server.start()                                                 # doctest: +SKIP
    """

    def __init__(
        self,
        channel: SignedChannel,
        topics: Topics,
        db: Database,
        registry: CommandRegistry,
        *,
        record: Recorder,
        policy_section: Callable[[str], dict[str, Any]],
        now_ms: Callable[[], int],
    ):
        self.channel = channel
        self.topics = topics
        self.db = db
        self.registry = registry
        self._record = record
        self._policy_section = policy_section
        self._now_ms = now_ms
        self._me = channel.identity.device_id
        self._running: dict[str, asyncio.Task[None]] = {}  # by request id
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._buckets: dict[str, _Bucket] = {}
        self._audit: list[dict[str, Any]] = []  # read-only runs not yet in the ledger
        self._audit_timer: asyncio.TimerHandle | None = None
        self._pruner: asyncio.Task[None] | None = None
        self.executed = 0
        self.duplicates = 0
        self.refused: Counter[str] = Counter()
        self.rate_limited = 0

    async def start(self) -> None:
        self.prune()
        topics = [self.topics.cmd(self._me), self.topics.cmd_all()]
        topics += [self.topics.cmd_group(g) for g in self.channel.identity.certificate.groups]
        for topic in topics:
            await self.channel.subscribe(topic, self._on_request)
        self._pruner = asyncio.create_task(self._prune_hourly(), name="igris.bus.prune")

    async def stop(self) -> None:
        # Commands about to answer (agent.restart's reply among them) get a moment to.
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=STOP_GRACE_S)
        tasks = [*self._running.values(), *([self._pruner] if self._pruner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
        self._write_audit()

    def stats(self) -> dict[str, Any]:
        return {"executed": self.executed, "duplicates": self.duplicates,
                "refused": dict(self.refused), "rate_limited": self.rate_limited,
                "running": len(self._running)}

    def prune(self) -> int:
        """Forget executions older than a day (a redelivery that late is not a redelivery)."""
        with self.db.transaction() as conn:
            cur = conn.execute("DELETE FROM command_log WHERE done_ms < ?",
                               (self._now_ms() - KEEP_LOG_MS,))
        return cur.rowcount

    # ------------------------------------------------------------------ receiving

    def _on_request(self, env: Envelope, message: Message) -> None:
        if env.kind != "cmd":
            self.refused["not_a_command"] += 1
            return
        reply_to = message.response_topic or env.body.get("reply_to")
        correlation = message.correlation_data
        if reply_to is not None and not self._valid_reply_topic(reply_to, env.src):
            self.refused["bad_reply_topic"] += 1
            log.warning("request %s from %s names a bad reply topic %r", env.id, env.src,
                        reply_to)
            return
        if env.id in self._running:
            self.duplicates += 1
            return
        row = None if self._read_only(env) else self.db.conn.execute(
            "SELECT reply FROM command_log WHERE id = ?", (env.id,)).fetchone()
        if row is not None:
            self.duplicates += 1
            if reply_to:
                self._send_reply(env, reply_to, correlation, json.loads(row[0]))
            return
        name = env.body.get("cmd")
        try:
            spec, call = self._admit(env)
        except CommandRefused as exc:
            self._refuse(env, reply_to, correlation, exc, name)
            return
        started = self._start(spec, call)
        if isinstance(started, dict):  # a plain function: done already, no task needed
            self._complete(env, spec, started, reply_to, correlation)
            return
        task = asyncio.get_running_loop().create_task(
            self._execute(env, spec, call, started, reply_to, correlation),
            name="igris.bus.execute")
        self._running[env.id] = task
        task.add_done_callback(lambda _t, rid=env.id: self._running.pop(rid, None))

    def _valid_reply_topic(self, topic: object, caller: str) -> bool:
        # Replies go only to the caller's own reply inbox: a request cannot make
        # this device publish on someone else's topic.
        if not isinstance(topic, str):
            return False
        try:
            parsed = self.topics.parse(topic)
        except TopicInvalid:
            return False
        return parsed.name == "reply" and parsed.params["dev"] == caller

    # ------------------------------------------------------------------ running

    async def _execute(self, env: Envelope, spec: CommandSpec, call: CommandCall,
                       running: Awaitable[Any], reply_to: str | None,
                       correlation: bytes | None) -> None:
        async with self._slots:
            outcome = await self._finish_async(spec, call, running)
        self._complete(env, spec, outcome, reply_to, correlation)

    def _complete(self, env: Envelope, spec: CommandSpec, outcome: dict[str, Any],
                  reply_to: str | None, correlation: bytes | None) -> None:
        """Record and answer one execution: a mutating one is stored before its reply,
        a read-only one answers first and joins the next batch of the ledger."""
        self.executed += 1
        if spec.mutates:
            reply = self._finish(env, spec.name, outcome)
            if reply_to:
                self._send_reply(env, reply_to, correlation, reply)
            return
        if reply_to:
            self._send_reply(env, reply_to, correlation, self._reply(env, spec.name, outcome))
        self._defer_audit(_run_record(env.id, env.src, spec.name, env.body.get("args", {}),
                                      outcome))

    def _read_only(self, env: Envelope) -> bool:
        """A known read-only command: no stored reply to look up (see the module docstring)."""
        name = env.body.get("cmd")
        return isinstance(name, str) and name in self.registry \
            and not self.registry.get(name).mutates

    def _admit(self, env: Envelope) -> tuple[CommandSpec, CommandCall]:
        body = env.body
        name = body.get("cmd")
        if not isinstance(name, str):
            raise CommandRefused("bad_request", "no command name ('cmd')")
        spec = self.registry.get(name)
        deadline = body.get("deadline_ms")
        if type(deadline) is int and deadline < self._now_ms():
            raise CommandRefused("expired", "the request's deadline has passed")
        cert = self.channel.trust.certificate(env.src)
        role = cert.role if cert else "unknown"
        self._check_role(spec, env.src, role)
        args = spec.check_args(body.get("args", {}))
        return spec, CommandCall(env.id, name, args, env.src, role)

    def _start(self, spec: CommandSpec, call: CommandCall) -> dict[str, Any] | Awaitable[Any]:
        """Call the handler: the outcome if it is a plain function (it has finished), else
        what to await (:meth:`_finish_async`)."""
        try:
            result = spec.handler(call)
        except Exception as exc:
            return self._failed(spec, call, exc)
        if inspect.isawaitable(result):
            return result
        return {"ok": True, "result": result}

    async def _finish_async(self, spec: CommandSpec, call: CommandCall,
                            running: Awaitable[Any]) -> dict[str, Any]:
        try:
            result = await asyncio.wait_for(running, spec.timeout_s)
        except asyncio.TimeoutError:
            return _error("timeout", f"{spec.name} did not finish in {spec.timeout_s:g} s")
        except Exception as exc:
            return self._failed(spec, call, exc)
        return {"ok": True, "result": result}

    async def _run(self, spec: CommandSpec, call: CommandCall) -> dict[str, Any]:
        started = self._start(spec, call)
        return started if isinstance(started, dict) else \
            await self._finish_async(spec, call, started)

    @staticmethod
    def _failed(spec: CommandSpec, call: CommandCall, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, CommandRefused):
            return _error(exc.code, exc.detail)
        log.error("command %s (%s from %s) failed", spec.name, call.id, call.caller,
                  exc_info=exc)
        return _error("failed", f"{type(exc).__name__}: {exc}"[:300])

    def _reply(self, env: Envelope, name: str, outcome: dict[str, Any]) -> dict[str, Any]:
        return {"re": env.id, "device": self._me, "cmd": name, **outcome}

    def _finish(self, env: Envelope, name: str, outcome: dict[str, Any], *,
                store: bool = True) -> dict[str, Any]:
        """Record one execution (or refusal) and, with ``store``, keep its reply for a
        redelivery (a read-only command's is never looked up); returns the reply to send."""
        full = self._reply(env, name, outcome)
        with self.db.transaction() as conn:
            if store:
                conn.execute(
                    "INSERT OR REPLACE INTO command_log (id, src, command, ok, reply, done_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (env.id, env.src, name, int(outcome["ok"]), json.dumps(full),
                     self._now_ms()))
            self._record_now(_run_record(env.id, env.src, name, env.body.get("args", {}),
                                         outcome))
        return full

    def _record_now(self, run: dict[str, Any]) -> None:
        """Write one execution's ledger entry, after the read-only ones still pending (so
        the ledger keeps the order things ran in), in one transaction."""
        with self.db.transaction():
            self._write_audit()
            self._record("command", run)

    def _defer_audit(self, run: dict[str, Any]) -> None:
        """Queue a read-only execution for the next ``commands`` ledger entry."""
        self._audit.append(run)
        if len(self._audit) >= AUDIT_MAX_RUNS:
            self._write_audit_logged()
        elif self._audit_timer is None:
            self._audit_timer = asyncio.get_running_loop().call_later(
                AUDIT_WINDOW_S, self._write_audit_logged)

    def _write_audit(self) -> None:
        """Write the pending read-only executions as one signed ledger entry."""
        if self._audit_timer is not None:
            self._audit_timer.cancel()
            self._audit_timer = None
        pending, self._audit = self._audit, []
        if pending:
            self._record("commands", {"runs": pending})

    def _write_audit_logged(self) -> None:
        try:
            self._write_audit()
        except Exception:
            log.exception("ledger entry of read-only commands not written")

    def _refusal_rate(self) -> float:
        return float(self._policy_section("commands").get(
            "refusals_per_s", _DEFAULT_REFUSALS_PER_S))

    def _bucket(self, caller: str) -> _Bucket:
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) > 4096:
                self._buckets.clear()  # bounded memory under a flood of sources
            bucket = self._buckets[caller] = _Bucket(self._now_ms())
        return bucket

    def _refuse(self, env: Envelope, reply_to: str | None, correlation: bytes | None,
                exc: CommandRefused, name: object) -> None:
        self.refused[exc.code] += 1
        if not self._bucket(env.src).take(self._now_ms(), self._refusal_rate()):
            self.rate_limited += 1
            return
        log.warning("refused %r from %s: %s", name, env.src, exc)
        reply = self._finish(env, name if isinstance(name, str) else "?",
                             _error(exc.code, exc.detail), store=not self._read_only(env))
        if reply_to:
            self._send_reply(env, reply_to, correlation, reply)

    async def execute_plain(self, name: str, args: Any) -> dict[str, Any]:
        """Run a command for a plain MQTT client (``cmnd/<dev>/<command>``); returns the reply.

        No signature, so no caller identity: only read-only commands, plus
        those the policy's ``commands.plain_mqtt`` list opens. Recorded in the
        ledger like any execution (``by: "mqtt"``); refusals are rate-limited
        as one caller.
        """
        def admit(spec: CommandSpec) -> None:
            if spec.mutates and name not in self._policy_section("commands").get(
                    "plain_mqtt", []):
                raise CommandRefused(
                    "forbidden", f"{name} changes the device; plain MQTT clients may run only "
                    "read-only commands unless the policy lists it in commands.plain_mqtt")

        return await self._execute_unsigned("mqtt-", PLAIN_CALLER, "plain", name, args, admit)

    async def execute_local(self, name: str, args: Any, *, by: str,
                            role: str) -> dict[str, Any]:
        """Run a command on this device for a part of this agent (a task step); the reply.

        ``role`` is the authority the work came with: ``operator`` for a task
        submitted through the control socket (the device's owner), the
        caller's certificate role for one a scheduler sent with ``task.run``.
        It must be allowed to run the command as a signed request would be,
        so a task cannot reach what its sender could not; the ledger records
        it as ``by``.
        """
        return await self._execute_unsigned("local-", by, role, name, args,
                                            lambda spec: self._check_role(spec, by, role))

    def _check_role(self, spec: CommandSpec, caller: str, role: str) -> None:
        """The policy's ``commands.roles`` for the command, else its own roles."""
        roles = self._policy_section("commands").get("roles", {}).get(spec.name, spec.roles)
        if role not in roles:
            raise CommandRefused(
                "forbidden", f"{spec.name} needs role {' or '.join(roles)}; {caller!r} is a "
                             f"{role}")

    async def _execute_unsigned(self, prefix: str, caller: str, role: str, name: str,
                                args: Any, admit: Callable[[CommandSpec], None]
                                ) -> dict[str, Any]:
        call_id = prefix + b64url_encode(random_bytes(9))
        try:
            spec = self.registry.get(name)
            admit(spec)
            call = CommandCall(call_id, name, spec.check_args(args), caller, role)
        except CommandRefused as exc:
            self.refused[exc.code] += 1
            outcome = _error(exc.code, exc.detail)
            if not self._bucket(caller).take(self._now_ms(), self._refusal_rate()):
                self.rate_limited += 1
                return outcome
            self._record_now(_run_record(call_id, caller, name, {}, outcome))
            return outcome
        outcome = await self._run(spec, call)
        self.executed += 1
        run = _run_record(call_id, caller, name, call.args, outcome)
        if spec.mutates:
            self._record_now(run)
        else:
            self._defer_audit(run)
        return outcome

    # ------------------------------------------------------------------ replying

    def _send_reply(self, request: Envelope, reply_to: str, correlation: bytes | None,
                    reply: dict[str, Any]) -> None:
        # A caller that asks for it (``reply_mac``) gets its reply MACed under the key
        # only it and we hold, not signed (see the module docstring).
        mac_for = request.src if request.body.get("reply_mac") is True else None
        try:
            self.channel.publish_nowait(reply_to, "reply", reply, qos=1,
                                        correlation_data=correlation, mac_for=mac_for)
        except Exception:
            log.exception("reply to %s not sent", reply_to)

    async def _prune_hourly(self) -> None:
        while True:
            await asyncio.sleep(_PRUNE_EVERY_S)
            try:
                self.prune()
            except Exception:
                log.exception("command log not pruned")


def recorded_runs(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """The executions that ledger ``entries`` record, in ledger order: one per ``command``
    entry and one per record of a ``commands`` batch (each as ``_run_record`` made it)."""
    runs: list[dict[str, Any]] = []
    for entry in entries:
        if entry.kind == "command":
            runs.append(entry.body)
        elif entry.kind == "commands":
            runs.extend(entry.body["runs"])
    return runs


def _run_record(rid: str, caller: str, name: str, args: Any,
                outcome: dict[str, Any]) -> dict[str, Any]:
    """What the ledger keeps of one execution: who ran what, digests of the arguments
    and of the outcome, and the error code of a failure."""
    return {
        "id": rid, "by": caller, "cmd": name, "ok": outcome["ok"],
        "args": result_digest(args if isinstance(args, dict) else {}),
        "result": result_digest(outcome),
        **({"error": outcome["error"]["code"]} if not outcome["ok"] else {}),
    }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}

