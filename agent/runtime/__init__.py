"""The runtime: the composition root that builds, runs and stops one agent."""

from agent.runtime.runtime import Runtime
from agent.runtime.sdnotify import SystemdNotifier
from agent.runtime.serve import serve

__all__ = ["Runtime", "SystemdNotifier", "serve"]
