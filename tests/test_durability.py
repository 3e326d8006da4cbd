"""State survives restarts (snapshots) and events survive broker outages (the spool)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import latest_stats, wait_for, wait_subscribed
from edged import wal
from edged.messages import RawMessage
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


# --------------------------------------------------------------------------- strict durability (WAL)

STRICT = '[durability]\nmode = "strict"\n'


class Relay:
    """A TCP relay between the daemon and the broker that can swallow everything the daemon
    sends (its PUBACKs among it): the broker then never learns that readings were acknowledged,
    and redelivers them when the daemon's session resumes — as after a crash between the WAL
    commit and the acknowledgement reaching the broker."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.swallow = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_daemon: bool) -> None:
        try:
            while data := src.recv(65536):
                if not (from_daemon and self.swallow.is_set()):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


def _wal_payloads(state_dir: Path) -> dict[tuple[str, bytes], int]:
    """(topic, payload) → seq of every reading in the WAL on disk (read-only scan)."""
    return {(m.topic, m.payload): m.seq for m in wal.read(wal.scan(state_dir / "wal"))}


def test_strict_sigkill_loses_nothing_and_redeliveries_apply_once(broker, daemon_factory, probe_factory, tmp_path):
    relay = Relay(broker.port)
    try:
        d = daemon_factory(relay.port, STRICT)
        probe = probe_factory(broker.port)
        probe.subscribe(f"{d.root}/#")
        probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
        wait_subscribed(probe, d.root)

        # Phase 1, acknowledged as usual: timestamped readings opening an episode (announced live),
        # and bare numbers (identified by topic, packet id and payload hash).
        ts = publish_series(probe, "sensors/boiler/temp", [60 + (i % 4) * 0.5 for i in range(40)])
        publish_series(probe, "sensors/boiler/temp", [95.0], start=ts)
        for i in range(10):
            probe.publish("sensors/porch/lux", str(100 + i))
        start = probe.wait_topic(f"{d.root}/anomaly/boiler/temp", lambda m: m.json()["event"] == "start").json()
        latest_stats(probe, d.root, lambda s: s.get("wal_records", 0) >= 51 and s.get("scored", 0) >= 51)

        # Phase 2: the broker never gets the acknowledgements (16 < Mosquitto's in-flight window of 20).
        relay.swallow.set()
        phase2 = [("sensors/porch/lux", str(200 + i).encode()) for i in range(8)]
        phase2 += [("sensors/attic/temp", json.dumps({"value": 15 + i * 0.1, "ts": ts + 10 + i}).encode()) for i in range(8)]
        for topic, payload in phase2:
            probe.publish(topic, payload)
        state_dir = tmp_path / "state"
        # Durable, and applied by the lane (its `applied` mark on disk): then kill.
        wait_for(lambda: all(k in _wal_payloads(state_dir) for k in phase2), what="phase 2 in the WAL")
        last_seq = max(_wal_payloads(state_dir)[k] for k in phase2)
        wait_for(lambda: wal.scan(state_dir / "wal").applied >= last_seq, what="the lane's applied mark")
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        relay.close()
        probe.clear()

        d2 = daemon_factory(broker.port, STRICT, node=d.node)  # same node, same state_dir; no relay
        replayed = d2.wait_log("wal_replayed")
        assert replayed["readings"] >= 16
        probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
        # The broker redelivers the 16 unacknowledged readings (dup flag): recognised, not applied again.
        latest_stats(probe, d.root, lambda s: s.get("duplicates", 0) >= 16, timeout=20)
        metrics = _metrics(probe, d2)
        assert metrics["boiler/temp"]["readings"] == 41 and metrics["boiler/temp"]["value"] == 95.0
        assert metrics["boiler/temp"]["status"] == "anomalous"
        assert metrics["porch/lux"]["readings"] == 18 and metrics["porch/lux"]["value"] == 207.0
        assert metrics["attic/temp"]["readings"] == 8 and metrics["attic/temp"]["value"] == 15.7
        # The episode announced before the crash is not announced again.
        assert not [m for m in probe.on(f"{d.root}/anomaly/") if m.json()["event"] == "start"]
        status = d2.wait_log("snapshot_restored")
        assert status["wal_seq"] <= last_seq

        # A clean stop leaves a snapshot that covers everything, and no WAL to replay.
        assert d2.stop(signal.SIGTERM) == 0
        assert wal.scan(state_dir / "wal").readings == 0
        assert start["id"]
    finally:
        relay.close()


def _segment(first: int, readings: list[RawMessage]) -> bytes:
    return wal.encode_header(first) + b"".join(wal.encode_reading(first + i, m) for i, m in enumerate(readings))


def test_strict_torn_tail_ignored_and_garbage_segment_set_aside(broker, daemon_factory, probe_factory, tmp_path):
    wal_dir = tmp_path / "state" / "wal"
    wal_dir.mkdir(parents=True)
    now = time.time()
    readings = [RawMessage("sensors/cellar/temp", f"{11 + i}".encode(), now - 10 + i, qos=1, mid=i + 1) for i in range(3)]
    torn = wal.encode_reading(4, RawMessage("sensors/cellar/temp", b"99", now, qos=1, mid=4))[:-5]
    (wal_dir / wal.segment_name(1)).write_bytes(_segment(1, readings) + torn)
    (wal_dir / wal.segment_name(50)).write_bytes(b"\x00garbage, not a write-ahead log segment" * 20)

    d = daemon_factory(broker.port, STRICT)
    assert d.wait_log("wal_torn_tail")["ignored_bytes"] == len(torn)
    assert "bad magic" in d.wait_log("wal_set_aside")["reason"]
    assert d.wait_log("wal_replayed")["readings"] == 3
    d.wait_log("mqtt_connected")
    assert list(wal_dir.glob(f"{wal.segment_name(50)}.bad-*"))
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/response/#")
    cellar = _metrics(probe, d)["cellar/temp"]
    assert cellar["readings"] == 3 and cellar["value"] == 13.0  # the torn fourth is not there
    assert d.stop() == 0


def test_strict_refuses_an_unwritable_state_dir(broker, daemon_factory, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    d = daemon_factory(broker.port, STRICT, env={"EDGED_NODE__STATE_DIR": str(blocker / "state")})
    assert d.proc.wait(30) == 2
    out = d.log_path.read_text()
    assert "durability.mode" in out and "state_dir" in out and "Traceback" not in out


def test_relaxed_keeps_no_wal_and_a_sigkill_loses_the_unsnapshotted(broker, daemon_factory, probe_factory, tmp_path):
    d = daemon_factory(broker.port)  # relaxed (the default), snapshot every 300 s
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    wait_subscribed(probe, d.root)
    for i in range(5):
        probe.publish("sensors/shed/temp", str(10 + i))
    stats = latest_stats(probe, d.root, lambda s: s.get("scored", 0) >= 5)
    assert not any(k.startswith("wal_") for k in stats)
    assert not (tmp_path / "state" / "wal").exists()
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    probe.clear()
    d2 = daemon_factory(broker.port, node=d.node)
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    wait_subscribed(probe, d.root)
    # Acknowledged on receipt and never snapshotted: gone, and the broker has nothing to redeliver.
    assert "shed/temp" not in _metrics(probe, d2)
    assert d2.stop() == 0


def test_strict_oversized_payload_is_rejected_not_logged(broker, daemon_factory, probe_factory, tmp_path):
    """A QoS 1 payload over sensors.max_payload_bytes is acknowledged and rejected (too_large) without
    entering the WAL: a record that size would read as a torn tail at the next start and cut off the
    acknowledged readings after it."""
    d = daemon_factory(broker.port, STRICT + "[sensors]\nmax_payload_bytes = 1024\n")
    probe = probe_factory(broker.port)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    wait_subscribed(probe, d.root)
    probe.publish("sensors/big/x", json.dumps({"value": 1.0, "ts": 1_750_000_000}), qos=1)
    probe.publish("sensors/big/x", json.dumps({"value": 2.0, "ts": 1_750_000_060, "pad": "x" * 2000}), qos=1)
    probe.publish("sensors/big/x", json.dumps({"value": 3.0, "ts": 1_750_000_120}), qos=1)
    rejected = probe.wait_topic(f"{d.root}/error", lambda m: m.json().get("reason") == "too_large").json()
    assert rejected["topic"] == "sensors/big/x"
    wait_for(lambda: len(_wal_payloads(tmp_path / "state")) == 2, 10, what="the two normal readings in the WAL")
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    probe.clear()
    d2 = daemon_factory(broker.port, STRICT + "[sensors]\nmax_payload_bytes = 1024\n", node=d.node)
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online")
    wait_subscribed(probe, d.root)
    restored = _metrics(probe, d2)["big/x"]
    assert restored["value"] == 3.0 and restored["readings"] == 2
    assert d2.stop() == 0


def test_early_snapshots_are_spaced_by_their_size():
    """Episode boundaries snapshot promptly, but a large state (the model detector keeps ~57 KB per
    metric) is not rewritten every 2 s during an event storm: about 1 MB/s at most."""
    from edged.app import MIN_SNAPSHOT_GAP_S, snapshot_gap_s

    assert snapshot_gap_s(0) == snapshot_gap_s(500_000) == MIN_SNAPSHOT_GAP_S
    assert snapshot_gap_s(57_000 * 1000) == 57.0  # 1,000 metrics
    assert snapshot_gap_s(57_000 * 100) == 5.7


def test_snapshot_rule_strict_log_size_episodes_and_spacing():
    """When the run loop snapshots: periodically; early for an episode boundary or (strict) after
    WAL_SNAPSHOT_READINGS logged readings -- but never sooner than snapshot_gap_s after the last."""
    from edged.app import MIN_SNAPSHOT_GAP_S, WAL_SNAPSHOT_READINGS, should_snapshot

    small, big = 100_000, 57_000 * 1000  # bytes: a few metrics; 1,000 model-detector metrics (57 s gap)
    later = MIN_SNAPSHOT_GAP_S + 0.1
    # strict: the log-size rule
    assert should_snapshot(0, 60, later, small, False, WAL_SNAPSHOT_READINGS)
    assert not should_snapshot(0, 60, later, small, False, WAL_SNAPSHOT_READINGS - 1)
    assert not should_snapshot(0, 60, 1.0, small, False, WAL_SNAPSHOT_READINGS)  # too soon after the last
    assert not should_snapshot(0, 60, 30.0, big, False, 10 * WAL_SNAPSHOT_READINGS)  # spaced by its size
    assert should_snapshot(0, 60, 58.0, big, False, 10 * WAL_SNAPSHOT_READINGS)
    # relaxed: no log, however many readings
    assert not should_snapshot(0, 60, later, small, False, None)
    # episode boundaries, spaced the same way
    assert should_snapshot(0, 60, later, small, True, None)
    assert not should_snapshot(0, 60, 1.0, small, True, None)
    # the periodic snapshot comes whatever the spacing
    assert should_snapshot(60, 60, 0.0, big, False, None)
