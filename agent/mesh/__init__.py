"""The mesh: this device's presence (and, later, membership of its peers)."""

from agent.mesh.presence import Presence

__all__ = ["Presence"]
