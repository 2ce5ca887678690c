"""Choose gpiozero's pin factory from a setting, without touching its global default."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpiozero import Factory

from agent.errors import ConfigInvalid


def make_pin_factory(name: str) -> Factory | None:
    """``""`` lets gpiozero pick (None); otherwise one of gpiozero's factories by name.

    Names are gpiozero's own (``mock`` for a board-less run, ``lgpio``,
    ``rpigpio``, ``pigpio``, ``native``), found the way
    ``GPIOZERO_PIN_FACTORY`` finds them.
    """
    if not name:
        return None
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group="gpiozero_pin_factories")}
    if name not in found:
        raise ConfigInvalid(
            f"[health] pin_factory: unknown gpiozero pin factory {name!r}; "
            f"expected '' or one of {', '.join(sorted(found))}"
        )
    try:
        return found[name].load()()
    except Exception as exc:
        raise ConfigInvalid(
            f"[health] pin_factory: gpiozero's {name!r} factory does not work here: {exc}"
        ) from exc
