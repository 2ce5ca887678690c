"""The mesh: this device's presence, its peers' membership, and the policy in force."""

from agent.mesh.membership import Membership, resolve_scope
from agent.mesh.peers import Peer
from agent.mesh.policy import PolicySync
from agent.mesh.presence import Presence

__all__ = ["Membership", "Peer", "PolicySync", "Presence", "resolve_scope"]
