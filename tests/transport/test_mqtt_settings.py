"""MQTT settings are checked when made, and the backoff schedule is full jitter."""

from __future__ import annotations

import dataclasses

import pytest

from agent.errors import ConfigInvalid
from agent.transport import MqttSettings
from agent.transport.mqtt_settings import backoff_delay


def test_from_url_reads_scheme_host_and_port():
    plain = MqttSettings.from_url("mqtt://broker.lan", client_id="pi-01")
    assert (plain.host, plain.port, plain.tls) == ("broker.lan", 1883, False)
    tls = MqttSettings.from_url("mqtts://10.0.0.2:9883", client_id="pi-01", ca_file="ca.pem")
    assert (tls.host, tls.port, tls.tls, tls.ca_file) == ("10.0.0.2", 9883, True, "ca.pem")
    assert (tls.protocol, tls.keepalive, tls.max_offline_queue) == ("5", 30, 1000)


@pytest.mark.parametrize(("url", "complaint"), [
    ("http://broker:1883", "scheme must be mqtt:// or mqtts://"),
    ("broker:1883", "scheme"),
    ("mqtt://:1883", "names no host"),
    ("mqtt://broker:99999", "not a URL"),
    ("mqtt://broker:port", "not a URL"),
    ("mqtt://user:secret@broker", "client certificates"),
    ("mqtt://broker/igris", "drop the path"),
])
def test_bad_url_is_refused_with_a_clear_message(url, complaint):
    with pytest.raises(ConfigInvalid, match=complaint) as caught:
        MqttSettings.from_url(url, client_id="pi-01")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("change", "name"), [
    ({"client_id": ""}, "client_id"),
    ({"protocol": "4"}, "protocol"),
    ({"keepalive": 0}, "keepalive"),
    ({"max_offline_queue": -1}, "max_offline_queue"),
    ({"backoff_base_s": 0}, "backoff_base_s"),
    ({"backoff_cap_s": 0.1}, "backoff_cap_s"),
    ({"session_expiry_s": -1}, "session_expiry_s"),
    ({"ca_file": "ca.pem"}, "ca_file"),  # TLS files on a plain mqtt:// URL
    ({"tls": True, "key_file": "k.pem"}, "key_file"),
])
def test_bad_setting_names_itself(change, name):
    base = {"host": "broker", "client_id": "pi-01", "backoff_base_s": 0.5}
    with pytest.raises(ConfigInvalid, match=f"MQTT setting {name}="):
        MqttSettings(**{**base, **change})


def test_settings_are_frozen():
    settings = MqttSettings(host="broker", client_id="pi-01")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_backoff_is_full_jitter_over_a_doubling_capped_window():
    def at(value):
        return [backoff_delay(n, base=0.5, cap=60, rand=lambda: value) for n in range(10)]

    assert at(1.0) == [0.5, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert at(0.5) == [0.25, 0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert at(0.0) == [0.0] * 10
    assert backoff_delay(10_000, base=0.5, cap=60, rand=lambda: 1.0) == 60  # no overflow
