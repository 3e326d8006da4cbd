"""Lifecycle against a real Mosquitto: clean stop, crash (LWT), broker restarts, SIGHUP reloads,
and the persistent session that survives a daemon restart."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from conftest import latest_stats, start_node, states, wait_for

BASE_TS = 1_750_000_000.0


def retained_status(probe_factory, port: int, root: str) -> bytes:
    """What a client connecting now is told about the node: the retained status."""
    p = probe_factory(port)
    p.subscribe(f"{root}/status")
    msg = p.wait_topic(f"{root}/status")
    assert msg.retain
    return msg.payload


def publish_until_state(probe, root: str, topic: str, metric: str, timeout: float = 10.0) -> dict:
    """Publish a reading now and then until its state appears (covers a subscription still in flight)."""
    box = {"n": 0}

    def attempt():
        box["n"] += 1
        probe.publish(topic, json.dumps({"value": box["n"], "ts": BASE_TS + box["n"]}))
        return wait_quietly(lambda: states(probe, root).get(metric), 0.5)

    return wait_for(attempt, timeout, what=f"a state for {metric}")


def wait_quietly(predicate, timeout: float):
    try:
        return wait_for(predicate, timeout)
    except AssertionError:
        return None


def test_sigterm_publishes_retained_offline_and_exits_0(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    probe.publish("sensors/life/t", b"20")
    probe.wait_topic(f"{d.root}/state/life/t")
    assert d.stop(signal.SIGTERM) == 0
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"offline")
    assert retained_status(probe_factory, broker.port, d.root) == b"offline"
    log = d.log_lines()
    assert any(e.get("event") == "stopped" for e in log)
    assert not any("Traceback" in e.get("line", "") for e in log)


def test_kill_9_makes_the_broker_publish_the_lwt(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    d.proc.kill()
    d.proc.wait(5)
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"offline")
    assert retained_status(probe_factory, broker.port, d.root) == b"offline"


@pytest.mark.parametrize(
    "sig,wipe",
    [(signal.SIGTERM, True), (signal.SIGKILL, True), (signal.SIGKILL, False)],
    ids=["sigterm-fresh-broker", "sigkill-fresh-broker", "sigkill-persistent"],
)
def test_broker_restart_on_the_same_port(own_broker, daemon_factory, probe_factory, sig, wipe):
    d, probe = start_node(daemon_factory, probe_factory, own_broker.port)
    probe.publish("sensors/before/t", json.dumps({"value": 7, "ts": BASE_TS}))
    probe.wait_topic(f"{d.root}/state/before/t")
    own_broker.stop(sig)
    d.wait_log("mqtt_disconnected")
    if wipe:  # a broker without persistence forgets retained messages and sessions
        Path(own_broker.workdir, "mosquitto.db").unlink(missing_ok=True)
    own_broker.start()

    after = probe_factory(own_broker.port)
    after.subscribe(f"{d.root}/#")
    # `online` again: with a wiped broker the only way it can be there is a fresh publish.
    after.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online", timeout=15)
    stats = latest_stats(after, d.root, lambda s: s.get("connects", 0) >= 2, timeout=15)
    assert stats["connected"] is True
    # Retained states are re-announced on every connect.
    assert after.wait_topic(f"{d.root}/state/before/t").json()["value"] == 7
    # Subscriptions work again: a new metric's readings produce states.
    state = publish_until_state(after, d.root, "sensors/after/t", "after/t")
    assert state["status"] == "learning"
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_readings_sent_while_the_daemon_is_down_arrive_after_restart(broker, daemon_factory, probe_factory):
    """Stopping never unsubscribes: the broker keeps the persistent session and queues QoS 1 readings."""
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    probe.publish("sensors/queued/t", json.dumps({"value": 1, "ts": BASE_TS}))
    probe.wait_topic(f"{d.root}/state/queued/t")
    assert d.stop() == 0
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"offline")
    probe.publish("sensors/queued/t", json.dumps({"value": 2, "ts": BASE_TS + 1}), qos=1)
    probe.publish("sensors/queued/new", json.dumps({"value": 3, "ts": BASE_TS + 1}), qos=1)
    again = daemon_factory(broker.port, node=d.node)
    probe.wait_topic(f"{again.root}/state/queued/new", lambda m: m.json()["value"] == 3.0, timeout=15)
    probe.wait_topic(f"{again.root}/state/queued/t", lambda m: m.json()["value"] == 2.0)
    assert again.stop() == 0


def test_sighup_resubscribes_to_changed_topics(broker, daemon_factory, probe_factory):
    d, probe = start_node(daemon_factory, probe_factory, broker.port, '[sensors]\ntopics = ["sensors/#"]\n')
    probe.publish("sensors/hup/a", b"1")
    probe.wait_topic(f"{d.root}/state/hup/a")
    d.config.write_text(d.config.read_text().replace('topics = ["sensors/#"]', 'topics = ["other/#"]'))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("reloaded")
    # The new filter works (metric = topic minus "other/").
    publish_until_state(probe, d.root, "other/hup/b", "hup/b")
    # The removed one stops: a reading on it, then one on the new filter; only the second counts.
    probe.publish("sensors/hup/gone", b"5")
    probe.publish("other/hup/c", b"6")
    probe.wait_topic(f"{d.root}/state/hup/c")
    stats = latest_stats(probe, d.root, lambda s: s.get("metrics", 0) >= 3)
    assert "hup/gone" not in states(probe, d.root)
    assert stats["metrics"] == 3  # hup/a, hup/b, hup/c
    assert d.proc.poll() is None


@pytest.mark.parametrize(
    "breakage,fragment",
    [("stats_interval_s = 1", "stats_interval_s = 0"), ("[mqtt]", "[mqtt\n")],
    ids=["bad-value", "not-toml"],
)
def test_sighup_with_an_invalid_file_keeps_the_old_config(broker, daemon_factory, probe_factory, breakage, fragment):
    d, probe = start_node(daemon_factory, probe_factory, broker.port)
    d.config.write_text(d.config.read_text().replace(breakage, fragment, 1))
    d.proc.send_signal(signal.SIGHUP)
    rejected = d.wait_log("reload_rejected")
    assert "kept" in rejected.get("hint", "")
    assert ("node.stats_interval_s = 0" in rejected["error"]) if "stats" in fragment else ("not valid TOML" in rejected["error"])
    assert d.proc.poll() is None
    probe.publish("sensors/still/t", b"3")
    assert probe.wait_topic(f"{d.root}/state/still/t").json()["value"] == 3.0
    assert not any(e.get("event") == "reloaded" for e in d.log_lines())
    assert d.stop() == 0
