"""config.py / config_file.py in process: sources, precedence, error messages, secrets, editing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edged.config import (
    ConfigError,
    Settings,
    get_value,
    load_settings,
    masked_dict,
    world_readable_secret_warning,
)
from edged.config_file import DEFAULT_TOML, init_file, set_value


def write(tmp_path: Path, text: str, name: str = "edged.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(*args, **kw) -> str:
    with pytest.raises(ConfigError) as exc:
        load_settings(*args, **kw)
    return str(exc.value)


def test_defaults_and_file_values(tmp_path):
    s = load_settings(write(tmp_path, '[mqtt]\nport = 1884\n[sensors]\ntopics = ["zigbee2mqtt/+"]\n'), environ={})
    assert s.mqtt.port == 1884 and s.sensors.topics == ["zigbee2mqtt/+"]
    assert s.mqtt.host == "localhost" and s.anomaly.threshold == 0.5
    assert s.sensors.exclude == ["*/linkquality", "*/battery"]


def test_default_file_validates_and_matches_the_defaults(tmp_path):
    path = tmp_path / "new.toml"
    init_file(path)
    assert path.read_text() == DEFAULT_TOML
    assert load_settings(path, environ={}).model_dump() == Settings().model_dump()
    with pytest.raises(ConfigError, match="already exists"):
        init_file(path)
    init_file(path, force=True)


def test_precedence_cli_over_env_over_file(tmp_path):
    path = write(tmp_path, '[mqtt]\nport = 1884\nhost = "filehost"\n')
    s = load_settings(path, environ={"EDGED_MQTT__PORT": "1885"})
    assert s.mqtt.port == 1885 and s.mqtt.host == "filehost"
    s = load_settings(path, environ={"EDGED_MQTT__PORT": "1885"}, overrides={"mqtt": {"port": 1886}})
    assert s.mqtt.port == 1886


def test_env_overrides_of_several_types(tmp_path):
    env = {
        "EDGED_MQTT__PORT": "2883",
        "EDGED_MQTT__TLS": "true",
        "EDGED_SENSORS__TOPICS": '["a/#", "b/+"]',
        "EDGED_ANOMALY__THRESHOLD": "0.7",
        "EDGED_NODE__ID": "pi4",
        "EDGED_CONFIG": str(tmp_path / "ignored-here.toml"),
    }
    s = load_settings(write(tmp_path, ""), environ=env)
    assert (s.mqtt.port, s.mqtt.tls, s.sensors.topics, s.anomaly.threshold, s.node_id) == (2883, True, ["a/#", "b/+"], 0.7, "pi4")


def test_edged_config_env_names_the_file(tmp_path):
    path = write(tmp_path, "[mqtt]\nport = 1999\n")
    assert load_settings(None, environ={"EDGED_CONFIG": str(path)}).mqtt.port == 1999
    assert "does not exist" in error_of(None, environ={"EDGED_CONFIG": str(tmp_path / "missing.toml")})


def test_bad_value_names_key_value_source_and_what_is_allowed(tmp_path):
    msg = error_of(write(tmp_path, "[mqtt]\nport = 99999\n"), environ={})
    assert "mqtt.port = 99999" in msg and "less than or equal to 65535" in msg and "edged.toml" in msg
    msg = error_of(write(tmp_path, '[mqtt]\nprotocol = "v7"\n'), environ={})
    assert "mqtt.protocol = 'v7'" in msg and "'v5' or 'v311'" in msg
    msg = error_of(write(tmp_path, '[node]\nid = "a/b"\n'), environ={})
    assert "node.id = 'a/b'" in msg and "without '+', '#' or '/'" in msg
    msg = error_of(write(tmp_path, '[sensors]\ntopics = ["a/#/b"]\n'), environ={})
    assert "sensors.topics" in msg and "not a valid MQTT topic filter" in msg


def test_several_errors_are_all_reported(tmp_path):
    msg = error_of(write(tmp_path, '[mqtt]\nport = 0\nqos = 2\n[anomaly]\nthreshold = 1.5\n'), environ={})
    assert "mqtt.port" in msg and "mqtt.qos" in msg and "anomaly.threshold" in msg


def test_bad_env_value_names_the_variable(tmp_path):
    msg = error_of(write(tmp_path, ""), environ={"EDGED_MQTT__PORT": "eighteen"})
    assert "mqtt.port = 'eighteen'" in msg and "[EDGED_MQTT__PORT]" in msg and "integer" in msg
    msg = error_of(write(tmp_path, ""), environ={"EDGED_MQTT__PORTT": "1"})
    assert "mqtt.portt" in msg and "did you mean 'port'" in msg
    msg = error_of(write(tmp_path, ""), environ={"EDGED_PORT": "1"})
    assert "EDGED_PORT" in msg and "EDGED_<SECTION>__<KEY>" in msg
    msg = error_of(write(tmp_path, ""), environ={"EDGED_SENSORS__TOPICS": '["a/#"'})
    assert "EDGED_SENSORS__TOPICS" in msg and "not valid JSON" in msg


@pytest.mark.parametrize(
    "toml,key,hint",
    [
        ("[mqtt]\nprot = 1\n", "mqtt.prot", "did you mean 'port'"),
        ("[sensor]\ntopics = []\n", "sensor", "did you mean 'sensors'"),
        ('[[sensors.override]]\nmatch = "a/*"\nsensitivty = 2\n', "sensors.override.0.sensitivty", "did you mean 'sensitivity'"),
        ("[anomaly]\ntreshold = 0.4\n", "anomaly.treshold", "did you mean 'threshold'"),
    ],
)
def test_unknown_key_gets_a_suggestion(tmp_path, toml, key, hint):
    msg = error_of(write(tmp_path, toml), environ={})
    assert f"{key}: unknown key" in msg and hint in msg and "allowed:" in msg


def test_not_toml_and_not_utf8(tmp_path):
    assert "not valid TOML" in error_of(write(tmp_path, "[mqtt\nport = 1\n"), environ={})
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe[mqtt]")
    assert "not UTF-8" in error_of(p, environ={})


def test_duplicate_metric_prefixes_are_a_config_error(tmp_path):
    msg = error_of(write(tmp_path, '[sensors]\ntopics = ["sensors/#", "sensors/+/temp"]\n'), environ={})
    assert "share the prefix 'sensors'" in msg


def test_override_rules_first_match_wins(tmp_path):
    s = load_settings(write(tmp_path, """
[[sensors.override]]
match = "greenhouse/humidity"
sensitivity = 2.0
[[sensors.override]]
match = "greenhouse/*"
unit = "%"
expected_interval_s = 60
"""), environ={})
    assert s.override_for("greenhouse/humidity").sensitivity == 2.0
    assert s.override_for("greenhouse/humidity").unit is None
    assert s.override_for("greenhouse/temp").unit == "%" and s.override_for("greenhouse/temp").expected_interval_s == 60
    assert s.override_for("kitchen/temp") is None
    msg = error_of(write(tmp_path, '[[sensors.override]]\nmatch = "a"\nsensitivity = 0\n'), environ={})
    assert "sensors.override.0.sensitivity = 0" in msg


# --------------------------------------------------------------------------- secrets


SECRET = "pa[ss]-{w0rd}-7f3a"


def test_secret_from_env_is_masked(tmp_path):
    s = load_settings(write(tmp_path, ""), environ={"EDGED_MQTT__PASSWORD": SECRET})
    assert s.mqtt.password.get_secret_value() == SECRET
    assert SECRET not in repr(s) and SECRET not in str(masked_dict(s))
    assert masked_dict(s)["mqtt"]["password"] == "**********"
    assert get_value(s, "mqtt.password") == "**********"


def test_secret_starting_with_a_bracket_is_taken_verbatim(tmp_path):
    for secret in ("[not-json", "{also-not", '["a"]'):
        s = load_settings(write(tmp_path, ""), environ={"EDGED_CLOUD__API_KEY": secret})
        assert s.cloud.api_key.get_secret_value() == secret


def test_secret_from_file(tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n")
    s = load_settings(write(tmp_path, f'[mqtt]\npassword_file = "{secret_file}"\n'), environ={})
    assert s.mqtt.password.get_secret_value() == SECRET
    assert SECRET not in str(masked_dict(s))
    msg = error_of(write(tmp_path, f'[mqtt]\npassword_file = "{tmp_path / "nope"}"\n'), environ={})
    assert "mqtt.password_file" in msg and "cannot read" in msg


def test_secret_from_credentials_directory(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text(SECRET)
    (creds / "cloud_api_key").write_text("sk-" + SECRET)
    s = load_settings(write(tmp_path, ""), environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert s.mqtt.password.get_secret_value() == SECRET
    assert s.cloud.api_key.get_secret_value() == "sk-" + SECRET
    assert SECRET not in str(masked_dict(s))
    # The environment wins over the credential.
    s = load_settings(write(tmp_path, ""), environ={"CREDENTIALS_DIRECTORY": str(creds), "EDGED_MQTT__PASSWORD": "env"})
    assert s.mqtt.password.get_secret_value() == "env"


def test_invalid_secret_value_is_masked_in_the_error(tmp_path):
    msg = error_of(write(tmp_path, "[mqtt]\npassword = 123456789\n"), environ={})
    assert "mqtt.password = '**********'" in msg and "123456789" not in msg


def test_world_readable_config_with_a_secret_is_flagged(tmp_path):
    p = write(tmp_path, '[mqtt]\npassword = "x"\n')
    os.chmod(p, 0o644)
    assert "readable by others" in world_readable_secret_warning(p, {"mqtt": {"password": "x"}})
    os.chmod(p, 0o600)
    assert world_readable_secret_warning(p, {"mqtt": {"password": "x"}}) is None


# --------------------------------------------------------------------------- set_value


def test_set_value_keeps_comments_and_layout(tmp_path):
    path = tmp_path / "edged.toml"
    init_file(path)
    set_value(path, "mqtt.port", "1884")
    after = path.read_text()
    expected = DEFAULT_TOML.replace("port = 1883\n", "port = 1884\n", 1)
    assert after == expected
    set_value(path, "sensors.topics", '["zigbee2mqtt/+", "sensors/#"]')
    assert load_settings(path, environ={}).sensors.topics == ["zigbee2mqtt/+", "sensors/#"]
    assert "# glob patterns on metric names" in path.read_text()


def test_set_value_rejects_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "edged.toml"
    init_file(path)
    before = path.read_bytes()
    for key, raw, fragment in [
        ("mqtt.port", "99999", "mqtt.port = 99999"),
        ("mqtt.prot", "1", "did you mean mqtt.port"),
        ("mqtt.password", "x", "secrets are not written"),
        ("nosuch.key", "1", "unknown section"),
        ("port", "1", "expected SECTION.KEY"),
    ]:
        with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
            set_value(path, key, raw)
        assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["edged.toml"]  # no temp files left behind
