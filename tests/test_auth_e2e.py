"""Signed requests end to end: with a shared secret configured, unsigned requests are refused
with an error that leaks nothing, and the CLI (`edged status`, `edged ask`) signs its own."""

from __future__ import annotations

import json

SECRET = "a-shared-secret-of-32-characters"


def test_secret_configured_refuses_unsigned_and_cli_signs(broker, daemon_factory, probe_factory, edged_cli):
    d = daemon_factory(broker.port, env={"EDGED_MQTT__REQUEST_SECRET": SECRET})
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")

    probe.publish(f"{d.root}/request/status", json.dumps({"transaction": "t1"}))
    refused = probe.wait_topic(f"{d.root}/response/status").json()
    assert refused == {"status": "error", "error": "request not authenticated", "transaction": "t1"}
    probe.publish(f"{d.root}/request/ask", "what is the temperature?")  # plain text: refused too
    probe.wait_topic(f"{d.root}/response/ask", lambda m: m.json()["status"] == "error")

    env = {"EDGED_MQTT__REQUEST_SECRET": SECRET}
    ok = edged_cli("status", "--json", "--config", str(d.config), env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["data"]["node"] == d.node
    answer = edged_cli("ask", "which sensors are there?", "--config", str(d.config), env=env)
    assert answer.returncode == 0, answer.stderr
    unsigned = edged_cli("status", "--config", str(d.config))
    assert unsigned.returncode == 1 and "not authenticated" in unsigned.stderr
    assert SECRET not in d.log_path.read_text()
