"""The router: per request, pick local TFLite, a stronger peer or a remote API.

It reads the policy's ``router`` section (``ai_assistant_config/policy.json``):

- **hard constraints** remove backends: no remote below a battery level (on
  battery) or on a metered link; no local above a temperature or while the
  board is throttled; a private request (or a task the policy marks
  private) stays on this device; a backend that cannot meet the request's
  deadline or minimum accuracy, or whose circuit breaker is open, is out;
- **soft weights** (latency, accuracy, energy, cost) rank the rest, and
  shift with the device's state: on battery, low battery and the
  power-save GPIO switch weigh energy up; heat weighs local compute down.

Estimates are learnt at run time: latency and error EWMAs per backend and
model, seeded from the bench, a circuit breaker per backend, fallback to
the next choice when a call fails or times out, and a little exploration
(a small share of requests go to the runner-up) so estimates stay fresh.
Every decision carries the choice, the ranked alternatives and plain
reasons (``igris route explain``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.ai.backend import LOCAL, PEER, REMOTE, Backend, InferenceError, InferRequest, InferResult

# Priors until a backend has been measured (ms, share of requests failing).
_PRIOR_LATENCY_MS = {LOCAL: 5.0, PEER: 20.0, REMOTE: 400.0}
_PRIOR_ACCURACY = 0.5
# Energy this device spends per request, mJ: local compute from the bench, else
# the radio for the round trip (about 0.5 W while sending and waiting).
_RADIO_W = 0.5
_COST = {LOCAL: 0.0, PEER: 0.2, REMOTE: 1.0}  # money and shared capacity, relative
_ALPHA = 0.2  # EWMA weight of a new observation
_BREAKER_FAILURES = 3
_BREAKER_COOLDOWN_S = 5.0
_BREAKER_MAX_COOLDOWN_S = 300.0


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the router weighs about the device right now (from health and GPIO)."""

    battery_percent: float | None = None
    on_battery: bool = False
    celsius: float | None = None
    throttled: bool = False
    metered: bool = False
    power_save: bool = False


@dataclass(slots=True)
class Estimate:
    """Learnt figures for one backend and model."""

    latency_ms: float
    error_rate: float = 0.0
    calls: int = 0


@dataclass(slots=True)
class Breaker:
    """Closed → open after consecutive failures → half-open after a cooldown (one trial)."""

    failures: int = 0
    open_until: float = 0.0
    cooldown_s: float = _BREAKER_COOLDOWN_S

    def allows(self, now: float) -> bool:
        return self.failures < _BREAKER_FAILURES or now >= self.open_until

    def success(self) -> None:
        self.failures = 0
        self.cooldown_s = _BREAKER_COOLDOWN_S

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= _BREAKER_FAILURES:
            if now >= self.open_until and self.open_until:  # a failed half-open trial
                self.cooldown_s = min(self.cooldown_s * 2, _BREAKER_MAX_COOLDOWN_S)
            self.open_until = now + self.cooldown_s

    def state(self, now: float) -> str:
        if self.failures < _BREAKER_FAILURES:
            return "closed"
        return "open" if now < self.open_until else "half-open"


@dataclass(slots=True)
class Decision:
    """The choice, the ranked alternatives (name, score) and why others were left out."""

    model: str
    ranked: list[tuple[str, float]]
    excluded: dict[str, str]
    reasons: list[str] = field(default_factory=list)
    explored: bool = False

    @property
    def choice(self) -> str | None:
        return self.ranked[0][0] if self.ranked else None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "choice": self.choice, "explored": self.explored,
                "ranked": [{"backend": n, "score": round(s, 4)} for n, s in self.ranked],
                "excluded": dict(self.excluded), "reasons": list(self.reasons)}


class Router:
    """Choose and call backends.

    >>> router = Router(backends, policy_section=policy.section,
    ...                 state=lambda: DeviceState(battery_percent=80))  # doctest: +SKIP
    >>> result = await router.infer(InferRequest("digits-mlp", inputs=pixels))  # doctest: +SKIP
    """

    def __init__(
        self,
        backends: Callable[[], Sequence[Backend]],
        *,
        policy_section: Callable[[str], dict[str, Any]],
        state: Callable[[], DeviceState],
        energy_mj: Callable[[str, str], float | None] = lambda _b, _m: None,
        prior_ms: Callable[[str, str], float | None] = lambda _b, _m: None,
        explore: float = 0.05,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._backends = backends
        self._policy_section = policy_section
        self._state = state
        self._energy_mj = energy_mj
        self._prior_ms = prior_ms
        self.explore = explore
        self._rng = rng or random.Random()
        self._clock = clock
        self._estimates: dict[tuple[str, str], Estimate] = {}
        self._breakers: dict[str, Breaker] = {}
        self.decisions: Counter[str] = Counter()
        self.fallbacks = 0
        self.failures: Counter[str] = Counter()

    # ------------------------------------------------------------------ deciding

    def decide(self, request: InferRequest) -> Decision:
        """Rank the backends for ``request`` on the device's state now (no call made)."""
        policy = self._policy_section("router")
        state = self._state()
        model = request.model
        excluded: dict[str, str] = {}
        reasons: list[str] = []
        blocked_kinds = self._constraints(request, state, policy, reasons)
        now = self._clock()
        candidates = []
        for backend in self._backends():
            name = backend.name
            if model not in backend.models:
                excluded[name] = f"does not serve {model}"
            elif backend.kind in blocked_kinds:
                excluded[name] = blocked_kinds[backend.kind]
            elif not self._breaker(name).allows(now):
                excluded[name] = "circuit breaker open after repeated failures"
            else:
                est = self._estimate(backend, model)
                accuracy = backend.accuracy(model)
                if request.min_accuracy is not None and (accuracy or _PRIOR_ACCURACY) < \
                        request.min_accuracy:
                    excluded[name] = (f"accuracy {accuracy or _PRIOR_ACCURACY:.3f} below the "
                                      f"{request.min_accuracy:.3f} asked")
                elif request.deadline_ms is not None and est.latency_ms > request.deadline_ms:
                    excluded[name] = (f"latency {est.latency_ms:.1f} ms over the "
                                      f"{request.deadline_ms:g} ms deadline")
                else:
                    candidates.append((backend, est, accuracy or _PRIOR_ACCURACY))
        ranked = self._rank(candidates, model, state, policy, reasons)
        decision = Decision(model, ranked, excluded, reasons)
        if len(ranked) > 1 and self.explore and self._rng.random() < self.explore:
            ranked.insert(0, ranked.pop(1))
            decision.explored = True
            reasons.append(f"exploring {ranked[0][0]} to keep its estimate fresh")
        return decision

    def _constraints(self, request: InferRequest, state: DeviceState, policy: dict[str, Any],
                     reasons: list[str]) -> dict[str, str]:
        c = policy.get("constraints", {})
        blocked: dict[str, str] = {}
        private = request.private or policy.get("tasks", {}).get(request.model, {}).get(
            "private", False)
        if policy.get("local_only"):
            why = "policy: local only"
            blocked[PEER] = blocked[REMOTE] = why
            reasons.append(why)
        elif private:
            why = "private: stays on this device"
            blocked[PEER] = blocked[REMOTE] = why
            reasons.append(why)
        low = c.get("no_remote_below_battery_percent")
        if (low is not None and state.on_battery and state.battery_percent is not None
                and state.battery_percent < low):
            blocked.setdefault(REMOTE, f"battery {state.battery_percent:.0f} % below {low} %")
        if c.get("no_remote_on_metered_link") and state.metered:
            blocked.setdefault(REMOTE, "metered link")
        hot = c.get("no_local_above_celsius")
        if hot is not None and state.celsius is not None and state.celsius > hot:
            blocked[LOCAL] = f"{state.celsius:.0f} °C above {hot} °C"
        if c.get("no_local_when_throttled") and state.throttled:
            blocked.setdefault(LOCAL, "throttled")
        return blocked

    def _rank(self, candidates: list[tuple[Backend, Estimate, float]], model: str,
              state: DeviceState, policy: dict[str, Any],
              reasons: list[str]) -> list[tuple[str, float]]:
        if not candidates:
            return []
        w = dict(policy.get("weights", {}))
        wl, wa = w.get("latency", 0.4), w.get("accuracy", 0.3)
        we, wc = w.get("energy", 0.2), w.get("cost", 0.1)
        if state.power_save:
            we, wl = we * 3, wl * 0.5
            reasons.append("power-save switch on: energy weighs 3x, latency half")
        elif state.on_battery and state.battery_percent is not None and \
                state.battery_percent < 50:
            we *= 2
            reasons.append(f"on battery at {state.battery_percent:.0f} %: energy weighs 2x")
        rows = []
        for backend, est, accuracy in candidates:
            energy = self._energy_mj(backend.name, model) if backend.kind == LOCAL else None
            if energy is None:
                energy = est.latency_ms * _RADIO_W  # ms x W = mJ
            latency = est.latency_ms / max(1e-3, 1.0 - est.error_rate)  # retries cost time
            rows.append((backend, latency, accuracy, energy, _COST.get(backend.kind, 1.0)))
        best_latency = min(r[1] for r in rows)
        best_accuracy = max(r[2] for r in rows) or 1.0
        best_energy = min(r[3] for r in rows)
        hot = state.celsius is not None and state.celsius > policy.get(
            "constraints", {}).get("no_local_above_celsius", 1e9) - 10
        scored = []
        for backend, latency, accuracy, energy, cost in rows:
            score = (wl * best_latency / max(latency, 1e-6) + wa * accuracy / best_accuracy
                     + we * best_energy / max(energy, 1e-6) + wc * (1.0 - cost))
            if hot and backend.kind == LOCAL:
                score *= 0.8
            scored.append((backend.name, score))
        if hot:
            reasons.append("running hot: local compute scored down")
        scored.sort(key=lambda item: -item[1])
        return scored

    # ------------------------------------------------------------------ calling

    async def infer(self, request: InferRequest) -> tuple[InferResult, Decision]:
        """Decide, call, fall back down the ranking on failure; learn from each call."""
        decision = self.decide(request)
        if not decision.ranked:
            self.decisions["none"] += 1
            raise InferenceError(
                "no_backend", "; ".join(f"{n}: {why}" for n, why in decision.excluded.items())
                or f"no backend serves {request.model}")
        by_name = {b.name: b for b in self._backends()}
        last: InferenceError | None = None
        for i, (name, _score) in enumerate(decision.ranked):
            backend = by_name.get(name)
            if backend is None:
                continue
            if i:
                self.fallbacks += 1
                decision.reasons.append(f"fell back to {name}: {last}")
            started = self._clock()
            try:
                if request.deadline_ms is not None and backend.kind != LOCAL:
                    result = await asyncio.wait_for(backend.infer(request),
                                                    request.deadline_ms / 1000)
                else:
                    result = await backend.infer(request)
            except (InferenceError, asyncio.TimeoutError) as exc:
                last = exc if isinstance(exc, InferenceError) else InferenceError(
                    "timeout", f"{name} missed the {request.deadline_ms:g} ms deadline")
                self._learn(backend, request.model, (self._clock() - started) * 1000, ok=False)
                self.failures[name] += 1
                continue
            self._learn(backend, request.model, (self._clock() - started) * 1000, ok=True)
            self.decisions[name] += 1
            return result, decision
        self.decisions["failed"] += 1
        assert last is not None
        raise last

    def _learn(self, backend: Backend, model: str, ms: float, *, ok: bool) -> None:
        est = self._estimate(backend, model)
        est.calls += 1
        if ok:
            est.latency_ms += _ALPHA * (ms - est.latency_ms)
        est.error_rate += _ALPHA * ((0.0 if ok else 1.0) - est.error_rate)
        breaker = self._breaker(backend.name)
        if ok:
            breaker.success()
        else:
            breaker.failure(self._clock())

    def _estimate(self, backend: Backend, model: str) -> Estimate:
        key = (backend.name, model)
        est = self._estimates.get(key)
        if est is None:
            prior = self._prior_ms(backend.name, model)  # the bench's median, when measured
            est = self._estimates[key] = Estimate(
                prior if prior is not None else _PRIOR_LATENCY_MS.get(backend.kind, 100.0))
        return est

    def _breaker(self, name: str) -> Breaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = Breaker()
        return breaker

    def stats(self) -> dict[str, Any]:
        """What ``igris status`` shows: decisions by backend, fallbacks, breakers, estimates."""
        return {
            "decisions": dict(self.decisions), "fallbacks": self.fallbacks,
            "failures": dict(self.failures),
            "breakers": {n: b.state(self._clock()) for n, b in self._breakers.items()},
            "estimates": {f"{b}/{m}": {"latency_ms": round(e.latency_ms, 3),
                                       "error_rate": round(e.error_rate, 3), "calls": e.calls}
                          for (b, m), e in self._estimates.items()},
        }
