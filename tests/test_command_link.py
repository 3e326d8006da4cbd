"""A broker that lets edged's user in once, with one client id (Mosquitto's dynamic-security
plugin, as managed brokers and per-device ACLs do): the command link is refused, and requests
then come on the sensor connection instead of going unanswered."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import Broker, free_port, latest_stats, start_node, wait_for, wait_subscribed

DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def _client(user: str, password: str, clientid: str | None = None) -> dict:
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)  # the plugin's own scheme
    entry = {"username": user, "password": base64.b64encode(digest).decode(),
             "salt": base64.b64encode(salt).decode(), "iterations": 101, "roles": []}
    if clientid:
        entry["clientid"] = clientid
    return entry


def _write_dynsec(path: Path, password: str, clientid: str | None) -> None:
    path.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True, "subscribe": True,
                             "unsubscribe": True},
        "clients": [_client("edged", password, clientid=clientid)], "groups": [], "roles": []}))


def _dynsec_broker(tmp_path: Path, dynsec: Path) -> Broker:
    if not Path(DYNSEC).exists():
        pytest.skip("mosquitto's dynamic-security plugin is not installed")
    port = free_port()
    (tmp_path / "broker").mkdir()
    return Broker(tmp_path / "broker", f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                                       f"plugin {DYNSEC}\nplugin_opt_config_file {dynsec}\n", port=port)


@pytest.fixture
def one_id_broker(tmp_path):
    node = "oneid"
    dynsec = tmp_path / "dynsec.json"
    _write_dynsec(dynsec, "edged-pw", clientid=f"edged-{node}")
    b = _dynsec_broker(tmp_path, dynsec).start()
    yield b, node
    b.stop()


def test_a_refused_command_link_moves_requests_to_the_sensor_connection(one_id_broker, daemon_factory,
                                                                         probe_factory):
    broker, node = one_id_broker
    # start_node waits for `online` and for an answered request: that is the point of the test
    d, probe = start_node(daemon_factory, probe_factory, broker.port, node=node,
                          mqtt_extra='username = "edged"', env={"EDGED_MQTT__PASSWORD": "edged-pw"})
    try:
        refused = d.wait_log("command_link_refused", timeout=15)
        assert refused["client_id"] == f"edged-{node}-commands" and "authori" in refused["reason"].lower()
        assert "edged-pw" not in d.log_path.read_text()
        stats = latest_stats(probe, d.root, lambda s: s.get("commands_on_primary") is True)
        assert stats["commands_connected"] is False and stats["connected"] is True
        # readings still flow on the same connection
        probe.publish("sensors/oneid/temp", "21.5")
        probe.wait_topic(f"{d.root}/state/oneid/temp", timeout=10)
        assert sum(1 for line in d.log_lines() if line.get("event") == "command_link_refused") == 1
    finally:
        d.stop()


def test_a_wrong_password_refusing_both_links_moves_nothing(tmp_path, daemon_factory, probe_factory):
    """Both connections refused (the broker does not know the password yet), then both let in:
    the command link is used, as if the refusals had never happened."""
    dynsec = tmp_path / "dynsec.json"
    _write_dynsec(dynsec, "not-yet", clientid=None)
    broker = _dynsec_broker(tmp_path, dynsec).start()
    try:
        d = daemon_factory(broker.port, node="twoids", mqtt_extra='username = "edged"',
                           env={"EDGED_MQTT__PASSWORD": "edged-pw"})
        d.wait_log("mqtt_refused", timeout=15)
        refused = len([e for e in d.log_lines() if e.get("event") == "mqtt_refused"])
        wait_for(lambda: len([e for e in d.log_lines() if e.get("event") == "mqtt_refused"]) > refused, 15,
                 what="a second refused attempt")  # the command link has been refused meanwhile too
        broker.stop()
        _write_dynsec(dynsec, "edged-pw", clientid=None)
        broker.start()
        probe = probe_factory(broker.port)
        probe.subscribe(f"{d.root}/#")
        wait_subscribed(probe, d.root, timeout=20)
        stats = latest_stats(probe, d.root, lambda s: s.get("commands_connected") is True)
        assert stats["commands_on_primary"] is False
        assert not [e for e in d.log_lines() if e.get("event") == "command_link_refused"]
        d.stop()
    finally:
        broker.stop()
