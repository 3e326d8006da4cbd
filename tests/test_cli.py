"""The `edged` command line as a user runs it: subprocesses, exit codes 0/2/1, messages, files."""

from __future__ import annotations

import json

import pytest

from conftest import free_port
from edged.config_file import DEFAULT_TOML

SECRET = "s3cret-Vq81-never-printed"

def _all_commands() -> list[list[str]]:
    """Every command and group of the real CLI, found by walking it (new commands are covered too)."""
    import typer

    from edged.cli import app

    out: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        out.append(path)
        if isinstance(getattr(cmd, "commands", None), dict):  # a group (typer may vendor its own click)
            for name, sub in sorted(cmd.commands.items()):
                walk(sub, path + [name])

    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _all_commands()
GROUPS = [c for c in COMMANDS if c in ([], ["config"], ["models"])]


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "edged")
def test_help_on_every_command(edged_cli, cmd):
    proc = edged_cli(*cmd, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: edged {' '.join(cmd)}".strip() in " ".join(proc.stdout.split())
    assert "--config" in proc.stdout or cmd in GROUPS


@pytest.mark.parametrize(
    "cmd",
    COMMANDS,
    ids=lambda c: " ".join(c) or "edged",
)
def test_version_on_every_command(edged_cli, cmd):
    proc = edged_cli(*cmd, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "edged 0.1.0"


def test_usage_errors_exit_2(edged_cli):
    for args in (["frobnicate"], ["config", "get"], ["simulate", "--format", "xml"], ["simulate", "--rate", "0"]):
        proc = edged_cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        no_traceback(proc)


def test_config_init_writes_a_file_that_validates(edged_cli, tmp_path):
    path = tmp_path / "conf" / "edged.toml"
    proc = edged_cli("config", "init", str(path))
    assert proc.returncode == 0 and path.exists() and f"wrote {path}" in proc.stdout
    proc = edged_cli("config", "validate", "--config", str(path))
    assert proc.returncode == 0 and proc.stdout.strip() == f"{path}: ok"
    before = path.read_bytes()
    proc = edged_cli("config", "init", str(path))  # never clobbers silently
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--force" in proc.stderr
    assert path.read_bytes() == before
    no_traceback(proc)


def test_config_init_defaults_to_the_config_option(edged_cli, tmp_path):
    path = tmp_path / "via-option.toml"
    assert edged_cli("config", "init", "--config", str(path)).returncode == 0
    assert edged_cli("config", "validate", "--config", str(path)).returncode == 0


def test_config_set_keeps_comments_and_layout(edged_cli, tmp_path):
    path = tmp_path / "edged.toml"
    edged_cli("config", "init", str(path))
    before = path.read_text().splitlines()
    proc = edged_cli("config", "set", "mqtt.port", "1884", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"mqtt.port = 1884 in {path}"
    after = path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and changed == [("port = 1883", "port = 1884")]
    proc = edged_cli("config", "set", "sensors.exclude", '["*/linkquality"]', "--config", str(path))
    assert proc.returncode == 0
    assert 'exclude = ["*/linkquality"]' in path.read_text()
    assert "# glob patterns on metric names" in path.read_text()
    assert edged_cli("config", "get", "mqtt.port", "--config", str(path)).stdout.strip() == "1884"


def test_config_set_creates_a_missing_file(edged_cli, tmp_path):
    path = tmp_path / "fresh.toml"
    assert edged_cli("config", "set", "node.id", "pi4", "--config", str(path)).returncode == 0
    assert edged_cli("config", "get", "node.id", "--config", str(path)).stdout.strip() == "pi4"


@pytest.mark.parametrize(
    "key,value,fragments",
    [
        ("mqtt.port", "99999", ["mqtt.port = 99999", "less than or equal to 65535"]),
        ("mqtt.protocol", "v7", ["mqtt.protocol = 'v7'", "'v5' or 'v311'"]),
        ("anomaly.threshold", "2", ["anomaly.threshold = 2", "less than 1"]),
        ("mqtt.prot", "1", ["unknown key", "did you mean mqtt.port"]),
        ("mqtt.password", "x", ["secrets are not written"]),
    ],
)
def test_config_set_bad_value_leaves_file_byte_for_byte(edged_cli, tmp_path, key, value, fragments):
    path = tmp_path / "edged.toml"
    path.write_text(DEFAULT_TOML.replace('host = "localhost"', 'host = "broker.lan"  # edited by hand'))
    before = path.read_bytes()
    proc = edged_cli("config", "set", key, value, "--config", str(path))
    assert proc.returncode == 2
    for f in fragments:
        assert f in proc.stderr
    no_traceback(proc)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edged.toml"]


def test_config_get_values_and_env(edged_cli, tmp_path):
    path = tmp_path / "edged.toml"
    path.write_text('[mqtt]\nport = 1884\n[sensors]\ntopics = ["a/#"]\n')
    assert edged_cli("config", "get", "mqtt.port", "-c", str(path)).stdout.strip() == "1884"
    assert json.loads(edged_cli("config", "get", "sensors.topics", "-c", str(path)).stdout) == ["a/#"]
    assert edged_cli("config", "get", "mqtt.tls", "-c", str(path)).stdout.strip() == "false"
    proc = edged_cli("config", "get", "mqtt.port", "-c", str(path), env={"EDGED_MQTT__PORT": "2000"})
    assert proc.stdout.strip() == "2000"
    proc = edged_cli("config", "get", "mqtt.port", env={"EDGED_CONFIG": str(path)})
    assert proc.stdout.strip() == "1884"
    proc = edged_cli("config", "get", "mqtt.nope", "-c", str(path))
    assert proc.returncode == 2 and "unknown key" in proc.stderr and "keys in [mqtt]" in proc.stderr
    no_traceback(proc)


def test_config_validate_reports_every_problem(edged_cli, tmp_path):
    path = tmp_path / "edged.toml"
    path.write_text('[mqtt]\nport = "x"\nprot = 1\n')
    proc = edged_cli("config", "validate", "-c", str(path))
    assert proc.returncode == 2
    assert "mqtt.port = 'x'" in proc.stderr and "valid integer" in proc.stderr
    assert "mqtt.prot: unknown key (did you mean 'port'?)" in proc.stderr
    assert str(path) in proc.stderr
    no_traceback(proc)
    proc = edged_cli("config", "validate", "-c", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "edged config init" in proc.stderr


def test_bad_env_value_names_the_variable(edged_cli, tmp_path):
    path = tmp_path / "edged.toml"
    path.write_text("")
    proc = edged_cli("config", "validate", "-c", str(path), env={"EDGED_MQTT__PORT": "abc"})
    assert proc.returncode == 2 and "EDGED_MQTT__PORT" in proc.stderr and "'abc'" in proc.stderr
    proc = edged_cli("config", "validate", "-c", str(path), env={"EDGED_MQTT__PORTS": "1"})
    assert proc.returncode == 2 and "did you mean 'port'" in proc.stderr and "EDGED_MQTT__PORTS" in proc.stderr
    no_traceback(proc)


def test_run_with_bad_config_exits_2_without_traceback(edged_cli, tmp_path):
    path = tmp_path / "edged.toml"
    path.write_text("[mqtt]\nport = 0\n")
    proc = edged_cli("run", "-c", str(path))
    assert proc.returncode == 2 and "mqtt.port = 0" in proc.stderr and "greater than or equal to 1" in proc.stderr
    no_traceback(proc)


def test_config_show_masks_secrets_from_every_source(edged_cli, tmp_path):
    path = tmp_path / "edged.toml"
    secret_file = tmp_path / "mqtt_pw"
    secret_file.write_text(SECRET + "-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "cloud_api_key").write_text(SECRET + "-cred")
    path.write_text(f'[mqtt]\nusername = "edge"\npassword_file = "{secret_file}"\n')
    for args in (["config", "show"], ["config", "show", "--json"], ["config", "get", "mqtt.password"],
                 ["config", "get", "cloud.api_key"]):
        proc = edged_cli(*args, "-c", str(path), env={"CREDENTIALS_DIRECTORY": str(creds)})
        assert proc.returncode == 0, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
        assert "**********" in proc.stdout
    shown = json.loads(edged_cli("config", "show", "--json", "-c", str(path),
                                 env={"CREDENTIALS_DIRECTORY": str(creds)}).stdout)
    assert shown["mqtt"]["password"] == "**********" and shown["cloud"]["api_key"] == "**********"
    assert shown["mqtt"]["username"] == "edge"
    proc = edged_cli("config", "show", "-c", str(path), env={"EDGED_CLOUD__API_KEY": "[" + SECRET})
    assert proc.returncode == 0 and SECRET not in proc.stdout + proc.stderr
    proc = edged_cli("config", "show", "-c", str(path), env={"EDGED_MQTT__PORT": SECRET})  # not a secret key: echoed
    assert proc.returncode == 2 and SECRET in proc.stderr


def test_exit_1_when_the_daemon_or_broker_is_unreachable(edged_cli, tmp_path, broker):
    path = tmp_path / "edged.toml"
    path.write_text(f'[node]\nid = "nobody-home"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n')
    proc = edged_cli("status", "-c", str(path), "--timeout", "1")
    assert proc.returncode == 1 and "no reply from node 'nobody-home'" in proc.stderr
    no_traceback(proc)
    proc = edged_cli("simulate", "-c", str(path), "--port", str(free_port()), "--duration", "1", "-q")
    assert proc.returncode == 1 and "cannot reach the MQTT broker" in proc.stderr
    no_traceback(proc)


def test_status_command_against_a_running_daemon(edged_cli, broker, daemon_factory, probe_factory):
    d = daemon_factory(broker.port)
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/status")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    proc = edged_cli("status", "-c", str(d.config), "--json")
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["status"] == "ok" and reply["data"]["node"] == d.node and reply["data"]["connected"] is True
    proc = edged_cli("status", "-c", str(d.config))
    assert proc.returncode == 0 and f"node {d.node}" in proc.stdout and "broker connected" in proc.stdout


def test_daemon_never_logs_its_secrets(broker, daemon_factory, probe_factory, tmp_path):
    d = daemon_factory(broker.port, mqtt_extra='username = "edge"',
                       env={"EDGED_MQTT__PASSWORD": SECRET, "EDGED_CLOUD__API_KEY": SECRET + "-cloud"})
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    probe.publish("sensors/secret/t", "1")
    probe.wait_topic(f"{d.root}/stats", lambda m: m.json().get("readings", 0) >= 1)
    assert d.stop() == 0
    text = d.log_path.read_text()
    assert "mqtt_connected" in text and SECRET not in text
    assert all(SECRET.encode() not in m.payload for m in probe.messages)


def test_requested_provider_not_available_is_an_error(edged_cli, tmp_path):
    """The CPU build of onnxruntime has no CUDA provider: asking for it refuses to start."""
    cfg = tmp_path / "gpu.toml"
    cfg.write_text('[runtime]\nprovider = "cuda"\n[node]\nstate_dir = "%s"\n' % (tmp_path / "state"))
    proc = edged_cli("run", "--config", str(cfg), timeout=60)
    assert proc.returncode == 1
    assert "CUDAExecutionProvider" in proc.stderr and "onnxruntime-gpu" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_models_bench_reports_the_anomaly_model(edged_cli, tmp_path):
    cfg = tmp_path / "b.toml"
    cfg.write_text('[models]\ndir = "%s"\n' % (tmp_path / "none"))
    proc = edged_cli("models", "bench", "--json", "--repeats", "1", "--config", str(cfg), timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows[0]["model"] == "edged-anomaly-mlp" and rows[0]["readings_per_s"] > 0
    assert rows[1] == {"model": "smollm2-135m", "installed": False}
