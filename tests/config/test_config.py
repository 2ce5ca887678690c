"""Configuration: file, environment and flags, and errors that point at the key."""

import pytest

from agent.config import CONFIG_NAME, default_root, load_config
from agent.errors import ConfigInvalid


def test_defaults_with_no_file_run_alone(tmp_path):
    config = load_config(tmp_path, environ={})
    assert config.mqtt.broker == ""
    assert config.agent.target == "generic-linux"
    assert config.limits.max_message_bytes == 65536


def test_file_then_environment_then_flags(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(
        '[mqtt]\nbroker = "mqtt://file:1883"\nkeepalive_s = 20\n[agent]\ntarget = "rpi4"\n'
    )
    config = load_config(
        tmp_path,
        environ={"IGRIS_MQTT_BROKER": "mqtt://env:1883", "IGRIS_HEALTH_HEARTBEAT_S": "2.5"},
        overrides={"agent": {"target": "rpi5"}},
    )
    assert config.mqtt.broker == "mqtt://env:1883"
    assert config.mqtt.keepalive_s == 20
    assert config.health.heartbeat_s == 2.5
    assert config.agent.target == "rpi5"


@pytest.mark.parametrize(("toml", "message"), [
    ('[mqtt]\nbrokr = "x"\n', r"unknown key in \[mqtt\] 'brokr'; did you mean 'broker'"),
    ('[mqt]\nbroker = "x"\n', "unknown section 'mqt'; did you mean 'mqtt'"),
    ('[mqtt]\nkeepalive_s = "soon"\n', r"\[mqtt\] keepalive_s: expected an integer, got 'soon'"),
    ('[mqtt]\nbroker = "http://x"\n', r"\[mqtt\] broker: expected .*mqtt://host:1883"),
    ("[health]\nheartbeat_s = -1\n", r"\[health\] heartbeat_s: expected a positive number"),
    ('[agent]\ndevice_id = "a/b"\n', r"\[agent\] device_id: expected letters"),
    ("[mqtt\nbroker=1\n", "not valid TOML"),
    ("mqtt = 3\n", r"\[mqtt\] must be a table"),
])
def test_bad_config_names_file_key_and_expectation(tmp_path, toml, message):
    path = tmp_path / CONFIG_NAME
    path.write_text(toml)
    with pytest.raises(ConfigInvalid, match=message) as info:
        load_config(tmp_path, environ={})
    assert str(path) in str(info.value)


def test_bad_environment_value_says_it_came_from_environment(tmp_path):
    with pytest.raises(ConfigInvalid, match=r"environment: \[limits\] max_message_bytes"):
        load_config(tmp_path, environ={"IGRIS_LIMITS_MAX_MESSAGE_BYTES": "lots"})
    with pytest.raises(ConfigInvalid, match="IGRIS_MQTT_BROKR is not a setting"):
        load_config(tmp_path, environ={"IGRIS_MQTT_BROKR": "x"})


def test_explicit_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigInvalid, match="config file not found"):
        load_config(tmp_path, config_file=tmp_path / "nope.toml", environ={})


def test_secrets_are_masked_in_dumps(tmp_path):
    config = load_config(tmp_path, environ={"IGRIS_MQTT_KEY_FILE": "/etc/igris/client.key"})
    assert config.to_dict()["mqtt"]["key_file"] == "***"
    assert config.mqtt.key_file == "/etc/igris/client.key"


def test_default_root_follows_environment_and_user():
    assert str(default_root({"IGRIS_ROOT": "/srv/igris"})) == "/srv/igris"
    assert default_root({"XDG_DATA_HOME": "/home/u/.data"}).name == "igris"
