"""The command bus: signed commands to a device, a group or the fleet, replies aggregated."""

from agent.bus.client import Bus, Reply, RequestResult, parse_mode
from agent.bus.registry import (
    ROLES_ANY,
    ROLES_MUTATE,
    Arg,
    CommandCall,
    CommandRegistry,
    CommandSpec,
)
from agent.bus.server import CommandServer

__all__ = [
    "ROLES_ANY", "ROLES_MUTATE", "Arg", "Bus", "CommandCall", "CommandRegistry", "CommandServer",
    "CommandSpec", "Reply", "RequestResult", "parse_mode",
]
