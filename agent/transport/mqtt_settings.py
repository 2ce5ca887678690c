"""How to reach the MQTT broker: settings from a URL, the TLS context, the backoff schedule."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigInvalid

PROTOCOLS = ("5", "3.1.1")
_SCHEMES = MappingProxyType({"mqtt": (False, 1883), "mqtts": (True, 8883)})


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    """Where and how to reach the broker; checked when made.

    ``client_id`` is the device id: with ``session_expiry_s > 0`` the broker
    keeps the session (subscriptions and queued QoS 1 messages) across
    disconnects for that long; ``0`` asks for a clean session every time.
    (On 3.1.1 there is no expiry to ask for: the session lasts as long as
    the broker keeps it, e.g. Mosquitto's ``persistent_client_expiration``.)
    ``protocol`` ``"5"`` falls back to ``"3.1.1"`` by itself when the broker
    refuses MQTT 5; ``"3.1.1"`` forces it.

    >>> MqttSettings.from_url("mqtt://127.0.0.1:1883", client_id="pi-01").port
    1883
    """

    host: str
    client_id: str
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    protocol: str = "5"
    session_expiry_s: int = 3600
    max_offline_queue: int = 1000
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    connect_timeout_s: float = 10.0
    stop_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        def bad(name: str, value: object, fix: str) -> ConfigInvalid:
            return ConfigInvalid(f"MQTT setting {name}={value!r} is invalid: {fix}")

        if not isinstance(self.host, str) or not self.host:
            raise bad("host", self.host, "give the broker's host name or address")
        if not isinstance(self.client_id, str) or not self.client_id:
            raise bad("client_id", self.client_id, "use the device id (sessions need it)")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise bad("port", self.port, "use 1-65535 (1883 plain, 8883 TLS)")
        if self.protocol not in PROTOCOLS:
            raise bad("protocol", self.protocol, "use '5' (falls back by itself) or '3.1.1'")
        if not isinstance(self.keepalive, int) or not 1 <= self.keepalive <= 65535:
            raise bad("keepalive", self.keepalive, "use 1-65535 seconds")
        if not isinstance(self.session_expiry_s, int) or not 0 <= self.session_expiry_s < 2**32:
            raise bad("session_expiry_s", self.session_expiry_s, "use 0 (clean) or more seconds")
        if not isinstance(self.max_offline_queue, int) or self.max_offline_queue < 0:
            raise bad("max_offline_queue", self.max_offline_queue, "use 0 or more messages")
        if not self.backoff_base_s > 0:
            raise bad("backoff_base_s", self.backoff_base_s, "use a positive number of seconds")
        if not self.backoff_cap_s >= self.backoff_base_s:
            raise bad("backoff_cap_s", self.backoff_cap_s, "use at least backoff_base_s")
        for name in ("connect_timeout_s", "stop_timeout_s"):
            if not getattr(self, name) > 0:
                raise bad(name, getattr(self, name), "use a positive number of seconds")
        for name in ("ca_file", "cert_file", "key_file"):
            if getattr(self, name) is not None and not self.tls:
                raise bad(name, getattr(self, name), "TLS files need tls=True (an mqtts:// URL)")
        if self.key_file is not None and self.cert_file is None:
            raise bad("key_file", self.key_file, "a client key needs its cert_file")

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> MqttSettings:
        """Settings from ``mqtt://host[:port]`` or ``mqtts://host[:port]`` plus keywords.

        Raises :class:`ConfigInvalid` (a ``ValueError``) naming what is wrong.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigInvalid(f"broker URL {url!r} is not a URL: {exc}") from exc
        if parts.scheme not in _SCHEMES:
            raise ConfigInvalid(
                f"broker URL {url!r}: scheme must be mqtt:// or mqtts://, got {parts.scheme!r}"
            )
        if not parts.hostname:
            raise ConfigInvalid(f"broker URL {url!r} names no host; write mqtt://HOST:PORT")
        if parts.username is not None or parts.password is not None:
            raise ConfigInvalid(
                f"broker URL {url!r} holds credentials; Igris authenticates with client"
                " certificates (ca_file, cert_file, key_file)"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigInvalid(f"broker URL {url!r}: drop the path, query and fragment")
        tls, default_port = _SCHEMES[parts.scheme]
        return cls(host=parts.hostname, port=port or default_port, tls=tls, **kw)


def backoff_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 for the first retry).

    Full jitter: uniform in ``[0, min(cap, base * 2**attempt))``. Spreading
    each retry over the whole window keeps a fleet that lost its broker
    together from hammering it together when it comes back.
    """
    return rand() * min(cap, base * 2.0 ** min(attempt, 64))


def make_ssl_context(settings: MqttSettings) -> ssl.SSLContext:
    """The TLS context from the settings' files (blocking: reads files)."""
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
        if settings.cert_file is not None:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigInvalid(
            f"cannot load the MQTT TLS files (ca_file={settings.ca_file!r},"
            f" cert_file={settings.cert_file!r}, key_file={settings.key_file!r}): {exc}"
        ) from exc
    return context
