"""Control actions over MQTT: reset, mute/unmute, forget, reload — and clear errors."""

from __future__ import annotations

import json

from conftest import wait_for
from test_daemon_e2e import BASE_TS, publish_series


def _request(probe, d, action, args):
    probe.clear()
    probe.publish(f"{d.root}/request/{action}", json.dumps({**args, "transaction": action}))
    return probe.wait_topic(f"{d.root}/response/{action}").json()


def test_mute_reset_forget_and_unknown_metric(broker, daemon_factory, probe_factory):
    d = daemon_factory(broker.port)
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    ts = publish_series(probe, "sensors/tank/level", [50 + (i % 3) for i in range(40)])
    probe.wait_topic(f"{d.root}/state/tank/level", lambda m: m.json()["status"] == "ok")

    bad = _request(probe, d, "mute", {"metric": "tank/levle"})
    assert bad["status"] == "error" and "tank/level" in bad["error"]  # names the close match

    muted = _request(probe, d, "mute", {"metric": "tank/level", "duration_s": 3600})
    assert muted["status"] == "ok" and muted["data"]["muted"] == ["tank/level"]
    probe.wait_topic(f"{d.root}/state/tank/level", lambda m: m.json()["status"] == "muted")
    ts = publish_series(probe, "sensors/tank/level", [500.0], start=ts)  # a spike while muted: no event
    wait_for(lambda: _request(probe, d, "metrics", {})["data"]["metrics"][0]["value"] == 500.0, what="the spike applied")
    assert probe.on(f"{d.root}/anomaly/") == []

    assert _request(probe, d, "unmute", {"metric": "tank/*"})["data"]["unmuted"] == ["tank/level"]
    reset = _request(probe, d, "reset", {"metric": "tank/level"})
    assert reset["data"]["reset"] == ["tank/level"]
    probe.wait_topic(f"{d.root}/state/tank/level", lambda m: m.json()["status"] == "learning")

    gone = _request(probe, d, "forget", {"metric": "tank/level"})
    assert gone["data"]["forgotten"] == ["tank/level"]
    probe.wait_topic(f"{d.root}/state/tank/level", lambda m: m.payload == b"")
    assert _request(probe, d, "metrics", {})["data"]["count"] == 0
    # A forgotten metric that reports again starts afresh.
    publish_series(probe, "sensors/tank/level", [51.0], start=ts + 10)
    wait_for(lambda: _request(probe, d, "metrics", {})["data"]["count"] == 1, what="the metric back")

    bad = _request(probe, d, "mute", {"metric": "tank/level", "duration_s": "forever"})
    assert bad["status"] == "error" and "duration_s" in bad["error"]
    assert _request(probe, d, "reload", {})["data"] == {"reload": "requested"}
    d.wait_log("reloaded")
