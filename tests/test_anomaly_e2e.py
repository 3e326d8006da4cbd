"""The model detector (the default) end to end: a real daemon with the default config and a real
Mosquitto; a probe publishes three days of realistic 5-minute readings (daily cycle + noise) on
five metrics and injects a spike, a level shift, a stuck (flatlined) value and a day whose
lights never come on (a square daily cycle that fails to come) on four of them.
Each gets an ``anomaly/<metric>`` start (and end) event with the episode's facts; the clean
control metric gets none. Data clock (``node.clock = "data"``): the readings' own timestamps
drive the daemon, so nothing depends on how fast the machine is; synchronisation by polling."""

from __future__ import annotations

import json

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from conftest import latest_stats, start_node

BASE_TS = 1_750_000_000.0
STEP_S = 300.0  # one reading every 5 minutes
DAY = 288  # readings per day
N = 3 * DAY + 120  # three days of normal behaviour, then the anomalies and 10 h more
AT = 3 * DAY  # where the anomalies are injected (past the model's learning: 150 readings and a day)
METRICS = ("control", "spike", "shift", "stuck", "lights")
LIGHTS_ON = (60, 204)  # the lights metric is high from reading 60 to 204 of each day, but not on day 3
ONSET = {"spike": AT, "shift": AT, "stuck": AT, "lights": AT + LIGHTS_ON[0]}  # where each anomaly starts


def streams(seed: int = 0) -> dict[str, np.ndarray]:
    """A daily cycle around 20 (amplitude 3) with Gaussian noise (sd 0.3), two decimals, per
    metric its own noise; the anomalies: +8 for one reading, +4 from AT on, and the reading at AT
    repeated for 5 hours. ``lights``: 20 at night, 30 while lit (12 hours a day), except on day 3."""
    rng = np.random.default_rng(seed)
    i = np.arange(N)
    out = {}
    for k, name in enumerate(METRICS):
        v = 20 + 3 * np.sin(2 * np.pi * (i + 40 * k) / DAY) + rng.normal(0, 0.3, N)
        if name == "spike":
            v[AT] += 8
        elif name == "shift":
            v[AT:] += 4
        elif name == "stuck":
            v[AT:AT + 60] = v[AT]
        elif name == "lights":
            lit = (i % DAY >= LIGHTS_ON[0]) & (i % DAY < LIGHTS_ON[1]) & (i // DAY != 3)
            v = np.where(lit, 30.0, 20.0) + rng.normal(0, 0.3, N)
        out[name] = np.round(v, 2)
    return out


def times() -> np.ndarray:
    return BASE_TS + STEP_S * np.arange(N)


def test_the_same_streams_through_the_replay_path():
    """The scoring code alone (what `edged replay` runs): where the detections fall."""
    from edged.detector import make_detector

    for name, v in streams().items():
        s = make_detector("model", 64, 30).score_series(v, times())
        fired = np.flatnonzero(s >= 0.5)
        if name == "control":
            assert len(fired) == 0, fired
        else:
            assert len(fired) and ONSET[name] <= fired[0] <= ONSET[name] + 12, (name, fired)


def test_spike_level_shift_and_stuck_value_over_mqtt(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port, detector=None)  # the default detector
    data = streams()
    publisher = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    publisher.max_queued_messages_set(0)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        infos = [publisher.publish(f"sensors/plant/{name}", json.dumps({"value": float(data[name][i]), "ts": float(ts)}), qos=1)
                 for i, ts in enumerate(times()) for name in METRICS]
        for info in infos[-50:]:
            info.wait_for_publish(60)
    finally:
        publisher.disconnect()
        publisher.loop_stop()

    starts = {}
    for name in ONSET:
        topic = f"{d.root}/anomaly/plant/{name}"
        starts[name] = probe.wait_topic(topic, lambda m: m.json()["event"] == "start", timeout=60).json()
        end = probe.wait_topic(topic, lambda m: m.json()["event"] == "end", timeout=60).json()
        assert end["id"] == starts[name]["id"]
    stats = latest_stats(probe, d.root, lambda s: s.get("readings", 0) >= len(METRICS) * N, timeout=60)
    assert stats["detector"] == "onnx-anomaly" and stats.get("dropped", 0) == 0

    at_ts = BASE_TS + STEP_S * AT
    spike, shift, stuck = starts["spike"], starts["shift"], starts["stuck"]
    assert spike["kind"] == "value" and spike["start"] == at_ts and spike["direction"] == "up"
    assert spike["value"] == data["spike"][AT] and spike["peak"] == data["spike"][AT]
    assert at_ts <= shift["start"] <= at_ts + 2 * STEP_S and shift["direction"] == "up"
    assert at_ts < stuck["start"] <= at_ts + 12 * STEP_S and stuck["value"] == data["stuck"][AT]
    lights_ts = BASE_TS + STEP_S * ONSET["lights"]  # caught by the season channel alone
    lights = starts["lights"]
    assert lights_ts <= lights["start"] <= lights_ts + 3 * STEP_S
    # worded against the same time on earlier days (lit: 30), not the dark hours before it
    assert lights["direction"] == "down" and abs(lights["expected"] - 30.0) < 1.0, lights
    assert lights["summary"].startswith("plant/lights is 20") and "below the 30" in lights["summary"], lights["summary"]
    assert lights["summary"].endswith("it had at this time on earlier days.")
    assert spike["expected"] is None  # led by another channel: the window's baseline as before
    for ev in starts.values():
        assert set(ev["baseline"]) == {"median", "p05", "p95"} and 0.5 <= ev["score"] <= 1.0
        assert ev["summary"].startswith(f"plant/{ev['metric'].split('/')[-1]}")
    assert spike["summary"].startswith("plant/spike rose to ") and "(typical " in spike["summary"]
    assert probe.on(f"{d.root}/anomaly/plant/control") == []  # every reading was scored (stats above)


def _publish_rows(port: int, rows) -> None:
    publisher = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    publisher.max_queued_messages_set(0)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    try:
        infos = [publisher.publish(topic, json.dumps(payload), qos=1) for topic, payload in rows]
        for info in infos[-50:]:
            info.wait_for_publish(60)
    finally:
        publisher.disconnect()
        publisher.loop_stop()


def test_a_restart_keeps_what_the_model_detector_learned(broker, daemon_factory, probe_factory):
    """Snapshot and restore carry the model detector's per-metric state: after a restart the
    metric is not learning again, and the spike right after it is caught."""
    d, probe = start_node(daemon_factory, probe_factory, broker.port, detector=None)
    data, ts = streams()["spike"], times()
    _publish_rows(broker.port, [("sensors/plant/spike", {"value": float(data[i]), "ts": float(ts[i])}) for i in range(AT)])
    latest_stats(probe, d.root, lambda s: s.get("scored", 0) >= AT, timeout=60)
    assert d.stop() == 0
    probe.clear()

    d2 = daemon_factory(broker.port, node=d.node, detector=None)  # same node and state dir
    d2.wait_log("snapshot_restored")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online", timeout=15)
    _publish_rows(broker.port, [("sensors/plant/spike", {"value": float(data[i]), "ts": float(ts[i])}) for i in range(AT, AT + 12)])
    start = probe.wait_topic(f"{d.root}/anomaly/plant/spike", lambda m: m.json()["event"] == "start", timeout=60).json()
    assert start["start"] == ts[AT]  # a fresh detector would still be learning: 150 readings and a day
    assert d2.stop() == 0
