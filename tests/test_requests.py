"""Request/response over a real Mosquitto: v5 Response Topic + Correlation Data, `transaction`
echo (v5 and 3.1.1), and error replies for malformed requests."""

from __future__ import annotations

import json

import paho.mqtt.client as paho

from conftest import start_node, v5_request_properties


def test_v5_reply_goes_to_the_response_topic_with_correlation_and_transaction(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    probe.subscribe("app/replies/#")
    probe.publish(f"{d.root}/request/metrics", json.dumps({"transaction": "t-1", "match": "*"}),
                  properties=v5_request_properties("app/replies/42", b"\x00\x01binary-corr"))
    reply = probe.wait_topic("app/replies/42")
    assert reply.correlation == b"\x00\x01binary-corr" and not reply.retain
    body = reply.json()
    assert body["status"] == "ok" and body["transaction"] == "t-1" and body["data"]["count"] == 0
    assert probe.on(f"{d.root}/response/") == []  # only the response topic, nowhere else


def test_v311_daemon_echoes_transaction_on_the_response_topic(broker, daemon_factory, probe_factory):
    d = daemon_factory(broker.port, mqtt_extra='protocol = "v311"')
    probe = probe_factory(broker.port, protocol=paho.MQTTv311)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    for attempt in range(20):  # the daemon's SUBSCRIBE may still be in flight right after `online`
        probe.publish(f"{d.root}/request/status", json.dumps({"transaction": attempt}))
        try:
            reply = probe.wait_topic(f"{d.root}/response/status", timeout=0.5).json()
            break
        except AssertionError:
            continue
    assert reply["status"] == "ok" and reply["data"]["node"] == d.node
    assert isinstance(reply["transaction"], int)


def test_malformed_requests_get_error_replies(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    probe.publish(f"{d.root}/request/status", b'{"transaction": "x", ')
    bad = probe.wait_topic(f"{d.root}/response/status").json()
    assert bad["status"] == "error" and "not valid JSON" in bad["error"]
    probe.clear()
    probe.publish(f"{d.root}/request/status", json.dumps({"transaction": {"nested": 1}}))
    bad = probe.wait_topic(f"{d.root}/response/status").json()
    assert bad["status"] == "error" and "transaction" in bad["error"]
    probe.clear()
    probe.publish(f"{d.root}/request/metrics", json.dumps({"transaction": "m", "match": 5}))
    bad = probe.wait_topic(f"{d.root}/response/metrics").json()
    assert bad == {"status": "error", "error": bad["error"], "transaction": "m"} and "glob" in bad["error"]
    probe.clear()
    probe.publish(f"{d.root}/request/status", b"\xff\xfe")
    bad = probe.wait_topic(f"{d.root}/response/status").json()
    assert bad["status"] == "error" and "UTF-8" in bad["error"]
    assert d.proc.poll() is None
