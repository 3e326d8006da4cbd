"""Ingest over a real Mosquitto: every payload format, rejections on the error and stats topics,
booleans, exclude globs, per-metric overrides, silence episodes, the metric limit, `edged simulate`."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from conftest import latest_stats, start_node, states, wait_for

BASE_TS = 1_750_000_000.0
ISO = datetime.fromtimestamp(BASE_TS + 2, timezone.utc).isoformat().replace("+00:00", "Z")


def publish_series(probe, topic: str, values, start: float = BASE_TS, step: float = 1.0) -> float:
    ts = start
    for v in values:
        probe.publish(topic, json.dumps({"value": v, "ts": ts}))
        ts += step
    return ts


def wait_state(probe, root: str, metric: str, predicate=lambda s: True, timeout: float = 10.0) -> dict:
    return probe.wait_topic(f"{root}/state/{metric}", lambda m: predicate(m.json()), timeout=timeout).json()


def test_every_payload_format_becomes_readings(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    sent = {
        "sensors/f/bare": b"21.5",
        "sensors/f/true": b"true",
        "sensors/f/false": b"false",
        "sensors/f/on": b"ON",
        "sensors/f/off": b"OFF",
        "sensors/f/json": json.dumps({"value": 3.5, "ts": BASE_TS, "unit": "hPa"}).encode(),
        "sensors/f/json_ms": json.dumps({"value": 4, "timestamp": int((BASE_TS + 1) * 1000)}).encode(),
        "sensors/f/json_iso": json.dumps({"value": 5, "ts": ISO, "unit": "W"}).encode(),
        "sensors/f/z2m": json.dumps({"temperature": 21.25, "contact": True, "occupancy": False, "linkquality": 99,
                                     "battery": 80, "device": "hall", "update": {"state": "idle"},
                                     "ts": BASE_TS + 3}).encode(),
        "sensors/f/senml": json.dumps([{"bn": "dev1/", "bt": BASE_TS + 4, "n": "temp", "u": "Cel", "v": 22.0},
                                       {"n": "door", "vb": False, "t": 1}]).encode(),
    }
    for topic, payload in sent.items():
        probe.publish(topic, payload)
    expected = {
        "f/bare": (21.5, None), "f/true": (1.0, None), "f/false": (0.0, None), "f/on": (1.0, None),
        "f/off": (0.0, None), "f/json": (3.5, "hPa"), "f/json_ms": (4.0, None), "f/json_iso": (5.0, "W"),
        "f/z2m/temperature": (21.25, None), "f/z2m/contact": (1.0, None), "f/z2m/occupancy": (0.0, None),
        "f/senml/dev1/temp": (22.0, "Cel"), "f/senml/dev1/door": (0.0, None),
    }
    wait_for(lambda: set(states(probe, d.root)) >= set(expected), what="a state for every metric")
    got = states(probe, d.root)
    assert set(got) == set(expected)  # no linkquality, battery, device or update metrics
    assert {k: (v["value"], v["unit"]) for k, v in got.items()} == expected
    assert got["f/json"]["ts"] == BASE_TS and got["f/json_ms"]["ts"] == BASE_TS + 1
    assert got["f/json_iso"]["ts"] == BASE_TS + 2 and got["f/senml/dev1/door"]["ts"] == BASE_TS + 5
    assert all(s["status"] == "learning" for s in got.values())
    stats = latest_stats(probe, d.root, lambda s: s.get("readings", 0) >= len(expected))
    assert stats["rejected_total"] == 0 and stats["readings"] == len(expected)
    assert stats["excluded"] == 2 and stats["metrics"] == len(expected)


def test_every_rejection_reason_over_mqtt(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port,
                          "[sensors]\nmax_payload_bytes = 256\nmax_json_depth = 4\nfuture_tolerance_s = 60\n")
    now = time.time()
    cases = {
        "no_value": b"broken sensor",
        "not_finite": b'{"value": NaN}',
        "ts_too_old": json.dumps({"value": 1, "ts": 86400}).encode(),
        "ts_in_future": json.dumps({"value": 1, "ts": now + 3600}).encode(),
        "too_large": b"1" + b" " * 300,
        "invalid_utf8": b"\xff\xfe\x00",
        "too_deep": b'{"t": 1, "a": {"b": {"c": {"d": {"e": 1}}}}}',
        "bad_senml": json.dumps([{"n": "t", "v": "warm"}]).encode(),
        "invalid_json": b'{"value": 1',
        "bad_timestamp": json.dumps({"value": 1, "ts": "teatime"}).encode(),
    }
    for reason, payload in cases.items():
        probe.publish(f"sensors/bad/{reason}", payload)
    for reason in cases:
        report = probe.wait_topic(f"{d.root}/error", lambda m, r=reason: m.json()["reason"] == r).json()
        assert report["topic"] == f"sensors/bad/{reason}" and report["count"] == 1 and report["detail"]
        assert set(report) == {"topic", "reason", "detail", "count"}
    stats = latest_stats(probe, d.root, lambda s: s.get("rejected_total", 0) >= len(cases))
    assert stats["rejected"] == {reason: 1 for reason in cases}
    assert states(probe, d.root) == {} and stats["metrics"] == 0
    future = next(m.json() for m in probe.on(f"{d.root}/error") if m.json()["reason"] == "ts_in_future")
    assert "synchronised" in future["detail"]


def test_error_reports_are_rate_limited_but_every_rejection_counted(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    for _ in range(5):
        probe.publish("sensors/flood/x", b"NaN")
    probe.publish("sensors/flood/y", b"NaN")
    stats = latest_stats(probe, d.root, lambda s: s.get("rejected_total", 0) >= 6)
    assert stats["rejected"] == {"not_finite": 6}
    reports = [m.json() for m in probe.on(f"{d.root}/error")]
    assert [(r["topic"], r["count"]) for r in reports] == [("sensors/flood/x", 1), ("sensors/flood/y", 1)]
    assert not any(m.retain for m in probe.on(f"{d.root}/error"))


def test_metric_limit_refuses_new_metrics_and_reports_it(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port, "[sensors]\nmax_metrics = 2\n")
    for name in ("a", "b", "c"):
        probe.publish(f"sensors/lim/{name}", b"1")
    report = probe.wait_topic(f"{d.root}/error").json()
    assert report["reason"] == "metric_limit" and report["topic"] == "sensors/lim/c"
    assert "lim/c" in report["detail"] and "max_metrics = 2" in report["detail"]
    probe.publish("sensors/lim/a", b"2")  # known metrics still work
    wait_state(probe, d.root, "lim/a", lambda s: s["value"] == 2.0)
    stats = latest_stats(probe, d.root, lambda s: s.get("readings", 0) >= 3)
    assert stats["rejected"] == {"metric_limit": 1} and stats["metrics"] == 2
    assert set(states(probe, d.root)) == {"lim/a", "lim/b"}


def test_exclude_globs_drop_fields_and_topics(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port,
                          '[sensors]\nexclude = ["*/linkquality", "*/voltage", "debug/*"]\n')
    probe.publish("zigbee2mqtt/x", b"1")  # not subscribed at all
    probe.publish("sensors/debug/t", b"1")
    probe.publish("sensors/hall/dev", json.dumps({"temperature": 20.5, "linkquality": 120, "voltage": 3000,
                                                  "battery": 90}).encode())
    wait_state(probe, d.root, "hall/dev/temperature")
    stats = latest_stats(probe, d.root, lambda s: s.get("readings", 0) >= 2)
    assert stats["excluded"] == 3 and stats["readings"] == 2
    assert set(states(probe, d.root)) == {"hall/dev/temperature", "hall/dev/battery"}  # battery not excluded here


def test_per_metric_override_sensitivity_and_unit(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port, """
[[sensors.override]]
match = "ov/keen"
sensitivity = 3.0
[[sensors.override]]
match = "ov/*"
unit = "%"
""")
    base = [60 + (i % 5) * 0.5 for i in range(40)]  # median 61, robust sd 0.74
    for metric in ("keen", "plain"):
        ts = publish_series(probe, f"sensors/ov/{metric}", base)
        publish_series(probe, f"sensors/ov/{metric}", [64.0], start=ts)  # z = 4: score 0.31
    start = probe.wait_topic(f"{d.root}/anomaly/ov/keen", lambda m: m.json()["event"] == "start").json()
    assert start["value"] == 64.0 and 0.125 <= start["score"] < 0.5 and start["unit"] is None
    plain = wait_state(probe, d.root, "ov/plain", lambda s: s["value"] == 64.0)
    assert plain["status"] == "ok" and plain["score"] < 0.5
    assert plain["unit"] == "%"  # from the override: the payloads carry none
    keen = wait_state(probe, d.root, "ov/keen", lambda s: s["value"] == 64.0)
    assert keen["status"] == "anomalous"
    assert probe.on(f"{d.root}/anomaly/ov/plain") == []
    probe.publish("sensors/ov/withunit", json.dumps({"value": 1, "unit": "ppm"}))
    assert wait_state(probe, d.root, "ov/withunit")["unit"] == "ppm"  # the payload's unit wins


def test_silence_episode_starts_and_ends_with_the_same_id(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port, """
[sensors]
stale_factor = 2
[[sensors.override]]
match = "sil/quiet"
expected_interval_s = 1
""")
    for i in range(5):
        probe.publish("sensors/sil/quiet", json.dumps({"value": 1, "ts": BASE_TS + i}))
        probe.publish("sensors/sil/clock", json.dumps({"value": 1, "ts": BASE_TS + i}))
    for i in range(5, 11):  # the data clock moves on; sil/quiet says nothing
        probe.publish("sensors/sil/clock", json.dumps({"value": 1, "ts": BASE_TS + i}))
    start = probe.wait_topic(f"{d.root}/anomaly/sil/quiet").json()
    assert start["event"] == "start" and start["kind"] == "silence" and start["metric"] == "sil/quiet"
    assert start["start"] == BASE_TS + 4
    assert "sil/quiet has sent no reading since" in start["summary"] and "expected every 1 second" in start["summary"]
    wait_state(probe, d.root, "sil/quiet", lambda s: s["status"] == "stale")
    assert probe.on(f"{d.root}/anomaly/sil/clock") == []  # the metric that kept talking is fine
    probe.publish("sensors/sil/quiet", json.dumps({"value": 1, "ts": BASE_TS + 12}))
    end = probe.wait_topic(f"{d.root}/anomaly/sil/quiet", lambda m: m.json()["event"] == "end").json()
    assert end["id"] == start["id"] and end["kind"] == "silence" and end["duration_s"] == 8.0
    assert "reporting again after 8 seconds of silence" in end["summary"]
    after = wait_state(probe, d.root, "sil/quiet", lambda s: s["ts"] == BASE_TS + 12)
    assert after["status"] != "stale"


def test_simulate_produces_every_format_and_zero_rejections(broker, daemon_factory, probe_factory, edged_cli):
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    # 12 metrics = 4 devices of 3; "mixed" gives the devices the formats bare, json, multi, senml in turn.
    proc = edged_cli("simulate", "-c", str(d.config), "--metrics", "12", "--rate", "10", "--duration", "1.5",
                     "--anomalies", "none", "--qos", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    stats = latest_stats(probe, d.root, lambda s: s.get("metrics", 0) >= 12 and s.get("readings", 0) >= 12 * 10)
    assert stats["rejected_total"] == 0 and stats["rejected"] == {}
    assert stats["excluded"] > 0  # the multi device's linkquality and battery
    wait_for(lambda: len(states(probe, d.root)) >= 12, what="12 states")
    got = states(probe, d.root)
    assert len(got) == 12
    devices = {name.split("/")[1] for name in got}
    assert devices == {"room1", "room2", "room3", "room4"} and all(n.startswith("sim/") for n in got)
    units = {s["unit"] for s in got.values()}
    assert units & {"°C", "%", "hPa", "ppm", "W"}  # the json and senml devices carry units


def test_simulate_sped_up_timestamps_are_accepted(broker, daemon_factory, probe_factory, edged_cli):
    """--speedup lays an hour of data out so it ends now: nothing may land in the future or the past."""
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    proc = edged_cli("simulate", "-c", str(d.config), "--metrics", "12", "--rate", "20", "--duration", "0.5",
                     "--speedup", "360", "--anomalies", "none", "--qos", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    stats = latest_stats(probe, d.root, lambda s: s.get("metrics", 0) >= 12 and s.get("readings", 0) >= 12 * 9)
    assert stats["rejected_total"] == 0
    ts = [s["ts"] for s in states(probe, d.root).values()]
    assert max(ts) - min(ts) < 60 and max(ts) <= time.time() + 1
    proc = edged_cli("simulate", "-c", str(d.config), "--format", "bare", "--speedup", "10")
    assert proc.returncode == 2 and "--speedup needs timestamped payloads" in proc.stderr
