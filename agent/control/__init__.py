"""The local control socket between the CLI and a running agent."""

from agent.control.client import call
from agent.control.protocol import SOCKET_NAME
from agent.control.server import ControlServer

__all__ = ["SOCKET_NAME", "ControlServer", "call"]
