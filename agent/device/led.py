"""The health LED: one light that tells a person at the board how it is.

Each state has its own rhythm, played in frames of ``tick_s`` (100 ms by
default) so they stay apart by eye:

========== ============================== =====================================
state      pattern                        meaning
========== ============================== =====================================
booting    fast even blink (5 Hz)         the agent is starting
healthy    solid on                       all checks pass
degraded   double blink once a second     health is degraded (hot, throttled,
                                          low battery, memory over budget)
offline    slow blink, 1 s on / 1 s off   the broker was configured but is lost
error      SOS (... --- ...) in Morse     the agent hit an error it cannot fix
========== ============================== =====================================

Blinking runs on gpiozero's own background thread (its ``source``
machinery), so the rhythm stays steady whatever the event loop is doing,
and a solid LED costs no thread at all::

    led = HealthLed(18, active_high=True, pin_factory=factory)
    led.show(led_state_for(booting=False, connected=True,
                           health_status="healthy", error=False))

Without a pin, or when gpiozero finds no GPIO, the LED is virtual: it gives
a NoGpioWarning once and still tracks :attr:`HealthLed.state`, which
``igris status`` shows instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import warnings
from collections.abc import AsyncIterator, Mapping
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpiozero import LED, Factory

from agent.errors import NoGpioWarning

log = logging.getLogger(__name__)


class LedState(str, Enum):
    """What the health LED can show, in the order ``igris led test`` shows them."""

    BOOTING = "booting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    ERROR = "error"


_ON, _OFF = 1, 0
_DOT, _DASH, _GAP = (_ON,), (_ON,) * 3, (_OFF,)
_S = _DOT + _GAP + _DOT + _GAP + _DOT
_O = _DASH + _GAP + _DASH + _GAP + _DASH

PATTERNS: Mapping[LedState, tuple[int, ...]] = MappingProxyType(
    {
        LedState.BOOTING: (_ON, _OFF),
        LedState.HEALTHY: (_ON,),
        LedState.DEGRADED: (_ON, _OFF, _ON) + (_OFF,) * 7,
        LedState.OFFLINE: (_ON,) * 10 + (_OFF,) * 10,
        # Morse timing: letters three units apart, the word seven.
        LedState.ERROR: _S + _GAP * 3 + _O + _GAP * 3 + _S + _GAP * 7,
    }
)
"""One loop of each pattern, one frame per tick (1 = lit)."""


def led_state_for(
    booting: bool, connected: bool | None, health_status: str, error: bool
) -> LedState:
    """Pick what the LED shows; the first that applies wins.

    error, then booting, then offline (``connected`` is False; None means no
    broker is configured, which is not a fault), then degraded (any
    ``health_status`` but ``"healthy"``), else healthy.
    """
    if error:
        return LedState.ERROR
    if booting:
        return LedState.BOOTING
    if connected is False:
        return LedState.OFFLINE
    if health_status != "healthy":
        return LedState.DEGRADED
    return LedState.HEALTHY


class HealthLed:
    """Shows a :class:`LedState` on a GPIO LED, or tracks it virtually.

    It starts out showing ``booting``. Showing the state already shown does
    nothing, so callers may repeat it after every health sample without
    restarting the rhythm. An :meth:`override` shows another state for a
    while (to point out one board in a rack) without the health samples
    cutting it short.
    """

    __slots__ = ("_led", "_override", "_override_end", "_state", "_tick_s", "_wanted")

    def __init__(
        self,
        pin: int | None,
        active_high: bool = True,
        pin_factory: Factory | None = None,
        *,
        tick_s: float = 0.1,
    ):
        if tick_s <= 0:
            raise ValueError(f"tick_s must be positive, got {tick_s!r}")
        self._tick_s = tick_s
        self._led: LED | None = None
        if pin is None:
            warnings.warn(
                NoGpioWarning("the profile names no LED pin; the health LED is virtual"),
                stacklevel=2,
            )
        else:
            try:
                from gpiozero import LED

                self._led = LED(
                    pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
                )
            # Whatever gpiozero's factory raises (BadPinFactory, lgpio.error,
            # a busy pin), a missing LED must not stop the agent.
            except Exception as exc:
                log.debug("health LED unavailable", exc_info=True)
                warnings.warn(
                    NoGpioWarning(
                        f"cannot drive the health LED on GPIO{pin} ({exc}); it is virtual"
                    ),
                    stacklevel=2,
                )
        self._wanted = LedState.BOOTING  # what show() asked for
        self._override: LedState | None = None
        self._override_end: asyncio.TimerHandle | None = None
        self._state = LedState.BOOTING  # what is shown
        self._play(PATTERNS[self._state])

    @property
    def state(self) -> LedState:
        """The state shown, or that would be shown on a virtual LED."""
        return self._state

    @property
    def virtual(self) -> bool:
        """True when no pin is driven (no pin, no GPIO, or closed)."""
        return self._led is None

    def show(self, state: LedState) -> None:
        """Show ``state``; a no-op when it is already shown.

        During an :meth:`override` the state is kept, and shown when the
        override ends.
        """
        self._wanted = LedState(state)
        self._render()

    def override(self, state: LedState, seconds: float) -> None:
        """Show ``state`` for ``seconds``, then what :meth:`show` last asked for.

        Call it on the event loop, which ends the override. A new override
        replaces the one running, with its own duration.
        """
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds!r}")
        state = LedState(state)
        loop = asyncio.get_running_loop()
        if self._override_end is not None:
            self._override_end.cancel()
        self._override = state
        self._override_end = loop.call_later(seconds, self.end_override)
        self._render()

    def end_override(self) -> None:
        """Show what :meth:`show` last asked for now; a no-op without an override."""
        if self._override_end is not None:
            self._override_end.cancel()
            self._override_end = None
        self._override = None
        self._render()

    async def cycle(self, dwell_s: float = 3.0) -> AsyncIterator[LedState]:
        """Show every pattern in turn for ``dwell_s`` each (``igris led test``).

        Yields each state as it starts showing; afterwards (or if the caller
        stops early) the LED goes back to the state it showed before. A
        running override ends first: the person testing wants to see the LED.
        """
        self.end_override()
        before = self._state
        try:
            for state in LedState:
                self.show(state)
                yield state
                await asyncio.sleep(dwell_s)
        finally:
            self.show(before)

    def close(self) -> None:
        """Turn the LED off and release its pin; the state is still tracked."""
        self.end_override()
        if self._led is not None:
            self._led.close()
            self._led = None

    def _render(self) -> None:
        state = self._wanted if self._override is None else self._override
        if state is self._state:
            return
        self._state = state
        self._play(PATTERNS[state])

    def _play(self, frames: tuple[int, ...]) -> None:
        led = self._led
        if led is None:
            return
        led.source = None  # stops (and joins) the previous pattern's thread
        if len(set(frames)) == 1:
            led.value = frames[0]
        else:
            led.source_delay = self._tick_s
            led.source = itertools.cycle(frames)
