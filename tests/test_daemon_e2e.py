"""The daemon end to end against a real Mosquitto: states, events, requests, lifecycle."""

from __future__ import annotations

import json
import signal
import time

from conftest import Broker, latest_stats, start_node, v5_request_properties, wait_for

BASE_TS = 1_750_000_000.0  # fixed, so tests do not depend on today's date


def publish_series(probe, topic: str, values, start: float = BASE_TS, step: float = 1.0) -> float:
    ts = start
    for v in values:
        probe.publish(topic, json.dumps({"value": v, "ts": ts}))
        ts += step
    return ts


def test_online_state_and_spike_episode(broker, daemon_factory, probe_factory):
    d = daemon_factory(broker.port)
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")

    sensor = "sensors/greenhouse/humidity"
    values = [60 + (i % 5) * 0.5 for i in range(40)]
    ts = publish_series(probe, sensor, values)
    state = probe.wait_topic(f"{d.root}/state/greenhouse/humidity", lambda m: m.json()["status"] == "ok")
    assert state.json()["value"] in values
    late = probe_factory(broker.port)  # a later subscriber gets the retained state
    late.subscribe(f"{d.root}/state/greenhouse/humidity")
    assert late.wait_topic(f"{d.root}/state/greenhouse/humidity").retain

    ts = publish_series(probe, sensor, [95.0], start=ts)
    start = probe.wait_topic(f"{d.root}/anomaly/greenhouse/humidity", lambda m: m.json()["event"] == "start").json()
    assert start["kind"] == "value" and start["direction"] == "up" and start["value"] == 95.0
    assert set(start["baseline"]) == {"median", "p05", "p95"}
    assert "greenhouse/humidity rose to 95" in start["summary"]

    publish_series(probe, sensor, values[:6], start=ts)
    end = probe.wait_topic(f"{d.root}/anomaly/greenhouse/humidity", lambda m: m.json()["event"] == "end").json()
    assert end["id"] == start["id"]
    assert end["peak"] == 95.0

    assert d.stop(signal.SIGTERM) == 0
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"offline")


def test_no_events_while_learning(broker, daemon_factory, probe_factory):
    d = daemon_factory(broker.port)
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    publish_series(probe, "sensors/lab/t", [20, 20.1, 500, 20, 19.9])
    wait_for(lambda: len(probe.on(f"{d.root}/state/lab/t")) >= 1, what="a state")
    stats = probe.wait_topic(f"{d.root}/stats", lambda m: m.json().get("readings", 0) >= 5).json()
    assert stats["status"] == {"learning": 1}
    assert probe.on(f"{d.root}/anomaly/") == []


def test_request_status_v5_correlation_and_transaction(broker, daemon_factory, probe_factory):
    d = daemon_factory(broker.port)
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/status")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    probe.subscribe("replies/me")
    probe.subscribe(f"{d.root}/response/#")

    probe.publish(f"{d.root}/request/status", "{}", properties=v5_request_properties("replies/me", b"corr-1"))
    reply = probe.wait_topic("replies/me")
    assert reply.correlation == b"corr-1"
    assert reply.json()["status"] == "ok" and reply.json()["data"]["node"] == d.node

    probe.publish(f"{d.root}/request/metrics", json.dumps({"transaction": "tx-9"}))
    reply = probe.wait_topic(f"{d.root}/response/metrics").json()
    assert reply["transaction"] == "tx-9" and reply["status"] == "ok"

    probe.publish(f"{d.root}/request/frobnicate", json.dumps({"transaction": 5}))
    bad = probe.wait_topic(f"{d.root}/response/frobnicate").json()
    assert bad["status"] == "error" and "unknown action" in bad["error"] and "status" in bad["error"]
    assert bad["transaction"] == 5


def test_stats_carry_the_brokers_drop_counter(tmp_path, daemon_factory, probe_factory):
    """Mosquitto's $SYS count of dropped messages reaches edged's stats (`broker_dropped`): under a
    flood edged slows its reading down instead of dropping, so the drops happen in the broker."""
    broker = Broker(tmp_path, "sys_interval 1\n").start()
    try:
        d, probe = start_node(daemon_factory, probe_factory, broker.port)
        stats = latest_stats(probe, d.root, lambda s: "broker_dropped" in s, timeout=15)
        assert isinstance(stats["broker_dropped"], int) and stats["broker_dropped"] >= 0
        assert d.stop() == 0
    finally:
        broker.stop()
