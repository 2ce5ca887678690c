"""The gateway for lite (MicroPython) devices: MAC'd on their side, signed on the mesh's."""

from agent.gateway.gateway import Gateway, lite_command
from agent.gateway.keyring import LiteKeyring
from agent.gateway.peers import LitePeer, LitePeers
from agent.gateway.topics import LiteTopics

__all__ = ["Gateway", "LiteKeyring", "LitePeer", "LitePeers", "LiteTopics", "lite_command"]
