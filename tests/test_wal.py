"""The write-ahead log (edged.wal) on real files, and the sensor lane's replay and QoS 1
duplicate rule on a real SensorPipeline: round trip, torn and corrupt tails, set-aside
segments, group commit, checkpoints, `applied` marks, silent vs publishing replay."""

from __future__ import annotations

import json
import math
import struct
import threading
import zlib
from pathlib import Path

import pytest

from conftest import wait_for
from edged import snapshot, wal
from edged.config import Settings
from edged.detector import make_detector
from edged.messages import RawMessage, Topics
from edged.pipeline import SensorPipeline
from edged.stats import Stats

T0 = 1_700_000_000.0


def _msg(i: int, topic: str = "sensors/room/temp", payload: bytes | None = None, **kw) -> RawMessage:
    return RawMessage(topic, payload if payload is not None else f"{20 + i % 3}".encode(), T0 + i * 0.5,
                      qos=1, mid=i % 65535 + 1, **kw)


class Harness:
    """A WalWriter with plain lists for what it acknowledges and delivers."""

    def __init__(self, directory: Path, applied: int = 0, **kw) -> None:
        self.directory = directory
        self.stats = Stats()
        self.acked: list[tuple[int, int]] = []
        self.delivered: list[RawMessage] = []
        self.applied = applied
        state = wal.scan(directory, repair=True)
        self.writer = wal.WalWriter(directory, state=state, next_seq=state.last_seq + 1, stats=self.stats,
                                    deliver=self.delivered.extend, ack=lambda m, g: self.acked.append((m.mid, g)),
                                    applied=lambda: self.applied, max_pending=kw.pop("max_pending", 100_000), **kw)

    def counter(self, name: str) -> int:
        return self.stats.snapshot().get(name, 0)


def _read_all(directory: Path, after: int = 0) -> list[RawMessage]:
    return list(wal.read(wal.scan(directory), after_seq=after))


def test_round_trip_acks_and_delivers_in_order(tmp_path):
    h = Harness(tmp_path / "wal")
    sent = [_msg(i) for i in range(50)]
    sent.append(_msg(50, topic="sensors/ünïcode/x", payload=bytes(range(256)), dup=True, retain=True))
    sent.append(_msg(51, payload=b""))
    h.writer.start()
    for m in sent:
        assert h.writer.submit(m, generation=3)
    wait_for(lambda: len(h.delivered) == len(sent), 10, what="every reading delivered")
    h.writer.stop()
    assert [m.seq for m in h.delivered] == list(range(1, len(sent) + 1))
    assert h.acked == [(m.mid, 3) for m in sent]  # acked with the connection they came in on
    back = _read_all(h.directory)
    assert [(m.topic, m.payload, m.received, m.mid, m.qos, m.dup, m.retain) for m in back] == \
           [(m.topic, m.payload, m.received, m.mid, m.qos, m.dup, m.retain) for m in sent]
    assert [m.seq for m in back] == list(range(1, len(sent) + 1))
    assert h.counter("wal_records") == len(sent)
    assert h.counter("wal_bytes") > sum(len(m.payload) for m in sent)


def test_group_commit_one_fsync_for_many_readings(tmp_path):
    h = Harness(tmp_path / "wal", batch_max=64)
    for i in range(200):  # queued before the writer runs: it finds full batches
        h.writer.submit(_msg(i), 1)
    h.writer.start()
    wait_for(lambda: len(h.delivered) == 200, 10, what="200 readings delivered")
    h.writer.stop()
    assert h.counter("wal_records") == 200
    assert h.counter("wal_fsyncs") == math.ceil(200 / 64)


def test_commit_does_not_wait_for_a_full_batch(tmp_path):
    """A broker's in-flight window (Mosquitto: 20) can never fill a batch of 1024: a few pending
    readings are committed after the short delay."""
    h = Harness(tmp_path / "wal", batch_max=1024, commit_delay_s=0.002)
    h.writer.start()
    for i in range(5):
        h.writer.submit(_msg(i), 1)
    wait_for(lambda: len(h.acked) == 5, 5, what="5 readings acknowledged")
    h.writer.stop()
    assert h.counter("wal_fsyncs") >= 1


def test_refused_when_too_many_pending_or_stopped(tmp_path):
    h = Harness(tmp_path / "wal", max_pending=3)
    assert all(h.writer.submit(_msg(i), 1) for i in range(3))
    assert not h.writer.submit(_msg(3), 1)  # not acknowledged: the broker redelivers it
    h.writer.start()
    wait_for(lambda: len(h.delivered) == 3, 5, what="the 3 accepted readings")
    h.writer.stop()
    assert not h.writer.submit(_msg(4), 1)
    assert h.counter("wal_refused") == 2
    assert len(_read_all(h.directory)) == 3


def _write_segment(directory: Path, n: int) -> Path:
    h = Harness(directory)
    for i in range(n):
        h.writer.submit(_msg(i), 1)
    h.writer.start()
    wait_for(lambda: len(h.delivered) == n, 5, what="readings written")
    h.writer.stop()
    (path,) = directory.glob("*.wal")
    return path


def test_torn_tail_is_ignored_and_cut_off(tmp_path):
    directory = tmp_path / "wal"
    path = _write_segment(directory, 10)
    good_size = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(wal.encode_reading(11, _msg(11))[:-3])  # the crash tore the last record
    assert len(_read_all(directory)) == 10
    state = wal.scan(directory, repair=True)
    assert state.readings == 10 and state.last_seq == 10
    assert path.stat().st_size == good_size  # cut back: the next start does not warn again


def test_corrupt_last_record_is_ignored(tmp_path):
    directory = tmp_path / "wal"
    path = _write_segment(directory, 10)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last record's payload: its CRC no longer matches
    path.write_bytes(bytes(data))
    back = _read_all(directory)
    assert [m.seq for m in back] == list(range(1, 10))


def test_bad_header_is_set_aside_and_empty_segment_removed(tmp_path):
    directory = tmp_path / "wal"
    _write_segment(directory, 3)
    garbage = directory / wal.segment_name(100)
    garbage.write_bytes(b"this is not a write-ahead log" * 10)
    empty = directory / wal.segment_name(200)
    empty.write_bytes(b"")
    newer = directory / wal.segment_name(300)
    newer.write_bytes(wal.encode_header(299) + wal.encode_reading(299, _msg(1)))  # name and header disagree
    state = wal.scan(directory, repair=True)
    assert state.readings == 3
    assert not garbage.exists() and len(list(directory.glob(f"{garbage.name}.bad-*"))) == 1
    assert not newer.exists() and len(list(directory.glob(f"{newer.name}.bad-*"))) == 1
    assert not empty.exists()
    assert wal.scan(directory).readings == 3  # the set-aside files are no longer read


def test_wrong_version_is_set_aside(tmp_path):
    directory = tmp_path / "wal"
    directory.mkdir()
    head = wal._HEADER.pack(wal.MAGIC, wal.VERSION + 1, 0, 1)
    (directory / wal.segment_name(1)).write_bytes(head + struct.pack("<I", zlib.crc32(head)))
    assert wal.scan(directory, repair=True).segments == []
    assert list(directory.glob("*.bad-*"))


def test_checkpoint_deletes_covered_segments_and_seq_continues(tmp_path):
    directory = tmp_path / "wal"
    h = Harness(directory)
    h.writer.start()

    def put(first: int, n: int) -> None:
        for i in range(first, first + n):
            h.writer.submit(_msg(i), 1)
        wait_for(lambda: len(h.delivered) == first + n, 5, what=f"{first + n} readings delivered")

    put(0, 10)
    h.writer.checkpoint(5)  # a snapshot covers 1..5 only: nothing after 5 may go
    put(10, 5)
    h.writer.checkpoint(10)
    put(15, 1)
    assert [m.seq for m in _read_all(directory, after=5)] == list(range(6, 17))
    h.writer.checkpoint(16)  # covers everything: every segment goes
    wait_for(lambda: not list(directory.glob("*.wal")), 5, what="the covered segments deleted")
    put(16, 2)
    h.writer.stop()
    assert [m.seq for m in _read_all(directory)] == [17, 18]

    h2 = Harness(directory)  # a restart continues the sequence
    assert h2.writer.next_seq == 19
    h2.writer.submit(_msg(18), 1)
    h2.writer.start()
    wait_for(lambda: len(h2.delivered) == 1, 5, what="a reading after the restart")
    h2.writer.stop()
    assert h2.delivered[0].seq == 19
    assert [m.seq for m in _read_all(directory, after=17)] == [18, 19]


def test_applied_mark_follows_the_lane(tmp_path):
    directory = tmp_path / "wal"
    h = Harness(directory)
    h.writer.start()
    for i in range(4):
        h.writer.submit(_msg(i), 1)
    wait_for(lambda: len(h.delivered) == 4, 5, what="4 readings")
    h.applied = 4  # the lane processed them; the writer marks it while idle
    wait_for(lambda: wal.scan(directory).applied == 4, 5, what="an applied mark")
    h.writer.stop()
    h.writer.finish()
    assert wal.scan(directory).applied == 4


# --------------------------------------------------------------------------- the lane's side


def _pipeline(publish_log: list, mode: str = "strict", queue_size: int = 20000) -> SensorPipeline:
    settings = Settings.model_validate({"node": {"id": "wal", "clock": "data"}, "durability": {"mode": mode},
                                        "sensors": {"queue_size": queue_size},
                                        "anomaly": {"window": 16, "learning_readings": 8}})

    def publish(topic, payload, **kw):
        publish_log.append((topic, payload))
        return True

    return SensorPipeline(settings, Topics("edged", "wal"), make_detector("zscore", 16, 8), publish, Stats())


def _series(values, start_seq: int = 1, topic: str = "sensors/boiler/temp") -> list[RawMessage]:
    return [RawMessage(topic, json.dumps({"value": v, "ts": T0 + i}).encode(), T0 + i, qos=1, mid=i + 1,
                       seq=start_seq + i) for i, v in enumerate(values)]


SPIKE = [60 + (i % 4) * 0.5 for i in range(20)] + [95.0]


def _anomalies(log: list) -> list[dict]:
    return [json.loads(p) for t, p in log if "/anomaly/" in t]


def test_replay_publishes_only_events_not_published_before(tmp_path):
    fresh: list = []
    p = _pipeline(fresh)
    assert p.replay(_series(SPIKE), published_through=0) == len(SPIKE)
    assert [e["event"] for e in _anomalies(fresh)] == ["start"]  # never published: it comes out now
    assert not [t for t, _ in fresh if "/state/" in t]  # states wait for the re-announce on connect
    assert p.applied_seq == len(SPIKE)

    seen: list = []
    q = _pipeline(seen)
    q.replay(_series(SPIKE), published_through=len(SPIKE))  # all applied (and announced) before the crash
    assert _anomalies(seen) == []
    slot = q.store.index["boiler/temp"]
    assert q.decisions[slot].status == "anomalous" and q.decisions[slot].episode.announced
    assert q.recent_events and q.recent_events[-1]["event"] == "start"  # `ask` still knows it
    # Live readings afterwards end the episode under the same id: the `end` goes out.
    ts_after = [RawMessage("sensors/boiler/temp", json.dumps({"value": 60.0 + k % 2, "ts": T0 + 100 + k}).encode(),
                           T0 + 100 + k, qos=1, mid=200 + k, seq=100 + k) for k in range(6)]
    q.process(ts_after)
    ends = [e for e in _anomalies(seen) if e["event"] == "end"]
    assert ends and ends[0]["id"] == _anomalies(fresh)[0]["id"]


def test_redelivery_after_replay_is_not_applied_twice():
    log: list = []
    p = _pipeline(log)
    bare = [RawMessage("sensors/porch/lux", f"{100 + i}".encode(), T0 + i * 0.25, qos=1, mid=40 + i, seq=1 + i)
            for i in range(5)]
    p.replay(bare, published_through=0)
    slot = p.store.index["porch/lux"]
    assert p.store.count[slot] == 5
    # The broker redelivers what it never saw acknowledged: same topic, packet id, payload; dup set.
    again = [RawMessage(m.topic, m.payload, T0 + 50 + i, qos=1, mid=m.mid, dup=True, seq=6 + i) for i, m in enumerate(bare)]
    p.process(again)
    assert p.store.count[slot] == 5
    assert p.stats.snapshot()["duplicates"] == 5
    assert p.applied_seq == 10
    # A new reading that happens to reuse a packet id is not a redelivery (no dup flag).
    p.process([RawMessage("sensors/porch/lux", b"100", T0 + 60, qos=1, mid=40, seq=11)])
    assert p.store.count[slot] == 6


def test_snapshot_carries_wal_seq_and_redelivery_identities(tmp_path):
    log: list = []
    p = _pipeline(log)
    bare = [RawMessage("sensors/porch/lux", f"{100 + i}".encode(), T0 + i, qos=1, mid=7 + i, seq=1 + i) for i in range(3)]
    p.process(bare)
    path = tmp_path / "state.npz"
    _, seq = snapshot.save(path, p)
    assert seq == 3

    q = _pipeline([])
    snapshot.restore(path, q)
    assert q.applied_seq == 3
    slot = q.store.index["porch/lux"]
    q.process([RawMessage(bare[-1].topic, bare[-1].payload, T0 + 9, qos=1, mid=bare[-1].mid, dup=True, seq=4)])
    assert q.store.count[slot] == 3  # its ack was lost in the crash: redelivered, not applied twice


def test_strict_lane_queue_never_evicts(tmp_path):
    """A full queue in strict mode drops the new QoS 0 reading, not an acknowledged one; the WAL
    writer's hand-over waits for room instead."""
    p = _pipeline([], queue_size=10)
    p.offer_durable(_series([float(v) for v in range(10)]))
    p.offer(RawMessage("sensors/x/y", b"1", T0))  # QoS 0, queue full
    assert p.queue_depth == 10 and p.stats.snapshot()["dropped"] == 1
    done = threading.Event()
    threading.Thread(target=lambda: (p.offer_durable(_series([5.0], start_seq=11)), done.set()), daemon=True).start()
    assert not done.wait(0.05)  # still waiting for room (a negative check, not synchronisation)
    p.drain()
    wait_for(done.is_set, 5, what="the hand-over after the lane drained")
    p.drain()
    assert p.applied_seq == 11


def test_relaxed_queue_still_drops_oldest():
    p = _pipeline([], mode="relaxed", queue_size=10)
    for i in range(11):
        p.offer(RawMessage("sensors/x/y", f"{i}".encode(), T0 + i))
    assert p.queue_depth == 10 and p.stats.snapshot()["dropped"] == 1
    p.drain()
    assert p.store.count[p.store.index["x/y"]] == 10  # readings 1..10: the oldest went


def test_strict_needs_qos1():
    from edged.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="mqtt.qos = 1"):
        load_settings(None, environ={"EDGED_DURABILITY__MODE": "strict", "EDGED_MQTT__QOS": "0"}, missing_ok=True)
    assert load_settings(None, environ={"EDGED_DURABILITY__MODE": "strict"}, missing_ok=True).durability.mode == "strict"


@pytest.mark.parametrize("mode, manual", [("relaxed", False), ("strict", True)])
def test_manual_acknowledgement_only_in_strict_mode(mode, manual):
    """relaxed: paho acknowledges on receipt, as before; strict: edged acknowledges once durable."""
    from edged.mqtt import MqttLink

    settings = Settings.model_validate({"node": {"id": "ack"}, "durability": {"mode": mode}})
    link = MqttLink(settings, Topics("edged", "ack"), lambda m: None)
    assert link.manual_ack is manual
    assert link.client._manual_ack is manual  # paho's own switch (no public getter)
    assert link.ack(5, 1, generation=link.generation + 1) is not manual  # another connection's: not sent


def test_writer_survives_an_unexpected_error_and_keeps_acknowledging(tmp_path):
    """If the writer thread died, nothing would be acknowledged again and intake would stop
    silently; an error is logged and the round retried, and readings are not written twice."""
    h = Harness(tmp_path / "wal")
    failures = []
    deliver = h.writer._deliver

    def flaky(msgs):
        if not failures:
            failures.append(1)
            raise RuntimeError("lane hand-over failed")
        deliver(msgs)

    h.writer._deliver = flaky
    h.writer.start()
    h.writer.submit(_msg(0), 1)
    wait_for(lambda: failures, 5, what="the failing hand-over")
    for i in range(1, 4):
        h.writer.submit(_msg(i), 1)
    wait_for(lambda: len(h.acked) == 4, 10, what="later readings acknowledged")
    h.writer.stop()
    assert sorted(m.seq for m in _read_all(h.directory)) == [1, 2, 3, 4]  # the first written once


def test_a_replay_that_fails_sets_the_log_aside_instead_of_failing_every_start(tmp_path, monkeypatch):
    """An unexpected error while replaying would recur at every start (a crash loop under systemd):
    the log is set aside with an error line and the daemon starts."""
    from edged.app import Daemon

    state = tmp_path / "state"
    h = Harness(state / "wal")
    h.writer.start()
    for i in range(3):
        h.writer.submit(_msg(i), 1)
    wait_for(lambda: len(h.delivered) == 3, 10, what="3 readings in the log")
    h.writer.stop()
    settings = Settings.model_validate({"node": {"id": "replayfail", "state_dir": str(state)},
                                        "mqtt": {"qos": 1}, "durability": {"mode": "strict"},
                                        "anomaly": {"detector": "zscore"}, "llm": {"enabled": False}})
    daemon = Daemon(settings)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the lane")

    monkeypatch.setattr(daemon.pipeline, "replay", broken)
    daemon.recover()  # no exception
    assert not (state / "wal").exists() and list(state.glob("wal.bad-*"))
    assert daemon.wal is not None and daemon.wal.next_seq == 1  # a fresh log


def test_corruption_in_an_older_segment_is_kept_for_inspection(tmp_path, capsys):
    """Only the newest segment can be torn by a crash; a bad frame in an older one is corruption:
    a copy is kept, an error names it, and the later segments are still replayed."""
    directory = tmp_path / "wal"
    older = _write_segment(directory, 10)
    h = Harness(directory)  # a restart: the next readings go to a new segment
    h.writer.start()
    for i in range(10, 15):
        h.writer.submit(_msg(i), 1)
    wait_for(lambda: len(h.delivered) == 5, 5, what="5 readings in the newer segment")
    h.writer.stop()
    assert len(list(directory.glob("*.wal"))) == 2
    data = bytearray(older.read_bytes())
    data[-40] ^= 0xFF  # inside the older segment's last record
    older.write_bytes(bytes(data))
    state = wal.scan(directory, repair=True)
    assert [m.seq for m in wal.read(state)] == list(range(1, 10)) + list(range(11, 16))
    assert len(list(directory.glob("*.wal.bad-*"))) == 1  # the corrupt original, kept


def test_redelivery_memory_follows_the_inflight_window():
    """With a large mqtt.max_inflight_messages more readings may be unacknowledged at a crash than
    the default memory of 4,096 identities: the memory grows with the window."""
    settings = Settings.model_validate({"node": {"id": "wal", "clock": "data"}, "durability": {"mode": "strict"},
                                        "mqtt": {"max_inflight_messages": 5000},
                                        "anomaly": {"window": 16, "learning_readings": 8}})
    p = SensorPipeline(settings, Topics("edged", "wal"), make_detector("zscore", 16, 8), lambda *a, **k: True, Stats())
    bare = [RawMessage(f"sensors/m{i % 50}/v", f"{i}".encode(), T0 + i, qos=1, mid=i % 65535 + 1) for i in range(10_000)]
    p.process(bare)
    first = bare[0]
    p.process([RawMessage(first.topic, first.payload, T0 + 20_000, qos=1, mid=first.mid, dup=True)])
    assert p.stats.snapshot()["duplicates"] == 1
    assert len(p.redelivery_keys()) == 10_000  # 2 x the window go into a snapshot
