"""State survives restarts (snapshots) and events survive broker outages (the spool)."""

from __future__ import annotations

import json
import signal
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import wait_for
from test_daemon_e2e import publish_series


def _metrics(probe, d) -> dict:
    probe.publish(f"{d.root}/request/metrics", json.dumps({"transaction": f"m{time.monotonic()}"}))
    reply = probe.wait_topic(f"{d.root}/response/metrics", lambda m: m.json().get("status") == "ok")
    probe.clear()
    return {m["metric"]: m for m in reply.json()["data"]["metrics"]}


def test_restart_restores_state_and_open_episode(broker, daemon_factory, probe_factory):
    d = daemon_factory(broker.port)
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    ts = publish_series(probe, "sensors/boiler/temp", [60 + (i % 4) * 0.5 for i in range(40)])
    ts = publish_series(probe, "sensors/boiler/temp", [95.0], start=ts)
    start = probe.wait_topic(f"{d.root}/anomaly/boiler/temp", lambda m: m.json()["event"] == "start").json()
    assert d.stop(signal.SIGTERM) == 0
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"offline")
    probe.clear()  # before the restart: its `online` must not be cleared away

    d2 = daemon_factory(broker.port, node=d.node)  # same node, same state_dir
    d2.wait_log("snapshot_restored")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    restored = _metrics(probe, d2)["boiler/temp"]
    assert restored["status"] == "anomalous" and restored["value"] == 95.0  # not learning again
    # The open episode is not announced again, and normal readings end it under the same id.
    ts = publish_series(probe, "sensors/boiler/temp", [60.5, 61.0, 60.0, 60.5], start=ts)
    end = probe.wait_topic(f"{d.root}/anomaly/boiler/temp", lambda m: m.json()["event"] == "end").json()
    assert end["id"] == start["id"]
    assert not [m for m in probe.on(f"{d.root}/anomaly/") if m.json()["event"] == "start"]


def test_corrupt_snapshot_is_set_aside(broker, daemon_factory, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.npz").write_bytes(b"this is not a snapshot")
    d = daemon_factory(broker.port)
    event = d.wait_log("snapshot_set_aside")
    assert "unreadable" in event["reason"]
    d.wait_log("mqtt_connected")
    assert list(state.glob("state.npz.bad-*"))
    assert d.stop() == 0


def _session_subscriber(port: int, topic: str, client_id: str):
    """A subscriber whose session (and QoS 1 queue) the broker keeps while it is away."""
    got: list[dict] = []
    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    subscribed = []
    c.on_subscribe = lambda *a: subscribed.append(1)
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe(topic, qos=1)
    wait_for(lambda: subscribed, what="SUBACK")
    return c, got


def test_events_during_broker_outage_are_spooled_and_flushed(own_broker, daemon_factory, probe_factory):
    d = daemon_factory(own_broker.port, clock="wall",
                       extra='[[sensors.override]]\nmatch = "pump/*"\nexpected_interval_s = 0.5\n')
    sub, got = _session_subscriber(own_broker.port, f"{d.root}/anomaly/#", f"sub-{d.node}")
    try:
        probe = probe_factory(own_broker.port)
        probe.subscribe(f"{d.root}/status")
        probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
        now = time.time()
        publish_series(probe, "sensors/pump/power", [5.0, 5.1, 5.0], start=now - 1.5, step=0.5)
        wait_for(lambda: d.wait_log("metric_added"), what="the metric")
        own_broker.stop()  # the pump goes silent while the broker is away: the event is spooled
        wait_for(lambda: any(e.get("event") == "anomaly" and e.get("kind") == "silence" for e in d.log_lines()),
                 what="a silence episode while disconnected")
        own_broker.start()
        wait_for(lambda: any(e.get("kind") == "silence" and e["event"] == "start" for e in got), 30,
                 what="the spooled event after the broker returned")
        flushed = d.wait_log("spool_flushed")
        assert flushed["messages"] >= 1
    finally:
        sub.disconnect()
        sub.loop_stop()
