#!/usr/bin/env python3
"""Soak run (issue 6, item 6): a scripted fault run against a persistent Mosquitto and a real edged.

What runs, per durability mode (``--durability strict,relaxed``; each a fresh broker and state):

- a private Mosquitto with persistence on (``persistence true``, a temporary
  ``persistence_location``, ``autosave_interval`` = ``--autosave``), on one port for the whole run;
- ``python -m edged run`` as a subprocess (QoS 1, MQTT v5, the chosen ``[durability] mode``,
  ``[anomaly] detector = "zscore"``: the default ONNX ``model`` detector learns for 150 readings
  *and one day of data time*, which a few-minute soak never gets past, so it would announce no
  episode at all; the z-score learns in 30 readings, and the soak is about delivery, not detection);
- a fake OpenAI-compatible cloud (tools/fake_cloud.py) configured as edged's ``[cloud]``, failing
  ``--cloud-fail`` of its requests at random (HTTP 500, a dropped connection, a reply slower than
  edged's timeout) and every request during the ``cloud`` fault;
- ``--publishers`` publisher processes (raw-socket MQTT 3.1.1, QoS 1) sending readings with
  timestamps and unique sequence numbers on several metrics, plus one bare-number metric each (no
  timestamp: identified by edged only through the broker's redelivery flag), and a spike metric
  each that carries a clear spike every ``--spike-every`` readings (the known episodes);
- a *witness*: a plain paho subscriber with a persistent session (clean start false, QoS 1) on the
  same readings and on edged's status/state/anomaly topics; what the broker acknowledged to a
  publisher but never delivered to the witness is the broker's own loss;
- a requester: ``request/status`` and ``request/ask`` (a local question and a cloud one, in turn)
  throughout, each with a transaction id and a deadline.

The schedule (after ``--warmup`` s): broker stopped with SIGTERM and restarted ``--broker-restarts``
times, broker killed with SIGKILL and restarted ``--broker-kills`` times, edged killed with SIGKILL
and restarted ``--edged-kills`` times, ``--floods`` flood bursts (QoS 0, as fast as the broker takes
them, ``--flood-s`` s), a burst of garbage payloads (binary junk, huge JSON, NaN, invalid UTF-8,
deep nesting; garbage also trickles throughout), and a cloud outage; ``--gap`` s of normal traffic
between faults. Readings go to per-segment metrics (``soak/ph<k>/...``; a segment runs from one
fault's start to the next one's), so every loss is attributed to the fault that ended its segment.

Counted: readings accepted (PUBACK received by the publisher) vs applied (edged's ``request/metrics``
``readings`` per metric, after the run has drained), episodes expected (spikes accepted) vs
published (distinct ``start`` events), replies asked vs answered within the deadline, duplicates
(a reading counted twice, two episodes for one spike, an event id published twice), crashes (edged
exiting by itself, a traceback in its log), peak RSS (VmHWM, every incarnation), and per fault the
recovery time: fault end → edged ``online`` again, and → the next reading applied (a ``state``
publish for a reading newer than the fault's end).

Lost (issue 6): a reading the broker accepted at QoS 1 that never reaches a metric's state, except
drops the flood policy counts and reports (stats ``dropped``); a broker killed with SIGKILL loses by
its own design what it had not saved yet: that is counted apart (``broker-lost``), as what the
witness never received either.

    .venv/bin/python tools/soak.py                          # both modes, ~6 min on 2 cores
    .venv/bin/python tools/soak.py --durability strict --gap 5 --broker-restarts 1   # quicker
    .venv/bin/python tools/soak.py --check --json /tmp/soak.json --write   # docs/RELIABILITY.md

Exit 0, or 1 with ``--check`` when a target is missed (the table says which).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import (  # noqa: E402 - tools share the benchmark's helpers
    MOSQUITTO,
    REPO,
    RawPublisher,
    _utf8,
    _varint,
    code_version,
    free_port,
    machine_info,
    port_open,
    vm_hwm_bytes,
    wait_for,
)
from fake_cloud import FakeCloud  # noqa: E402

NODE = "soak"
ROOT = f"edged/{NODE}"
PREFIX = "soak"
DOC = REPO / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- soak.py --write: begin -->", "<!-- soak.py --write: end -->"
RUN_AS = "user root\n" if os.geteuid() == 0 else ""
SPIKE_VALUE = 80.0
SPIKE_AFTER = 40  # past the z-score's 30 learning readings
LOCAL_Q = "what is ph00/j0 now?"
CLOUD_Q = "why is ph00/s0 so high?"


def _value(seq: int, j: int) -> float:
    """Uniform-looking noise in [20, 21): no episodes from normal readings."""
    return 20.0 + ((seq * 7919 + j * 104729) % 1000) / 1000.0


# =========================================================================== broker


class PersistentBroker:
    """A private Mosquitto with persistence on, on one port across restarts and kills."""

    def __init__(self, workdir: Path, autosave_s: int, max_inflight: int, max_queued: int) -> None:
        self.port = free_port()
        self.dir = workdir / "mosquitto"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{RUN_AS}"
            f"persistence true\npersistence_location {self.dir}/\nautosave_interval {autosave_s}\n"
            f"max_queued_messages {max_queued}\nmax_inflight_messages {max_inflight}\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 20, "mosquitto to listen", 0.01)
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log.read_text() if self.log.exists() else ''}")
        return time.time()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        wait_for(lambda: not port_open(self.port), 10, "mosquitto's port to close")


# =========================================================================== publishers


class AckPublisher(RawPublisher):
    """RawPublisher that learns which packet ids were acknowledged (PUBACKs parsed, not counted)."""

    def __init__(self, port: int, client_id: str) -> None:
        super().__init__(port, client_id, qos=1)
        self.sock.setblocking(False)
        self._buf = b""
        self.acked: list[int] = []

    def packet_with(self, topic: str, payload: bytes) -> tuple[int, bytes]:
        pkt = self.packet(_utf8(topic), payload)
        return self.pid, pkt

    def poll_acks(self) -> list[int]:
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                raise ConnectionError("broker closed the connection")
            self._buf += data
        out = []
        while len(self._buf) >= 4 and self._buf[0] == 0x40:
            out.append(struct.unpack("!H", self._buf[2:4])[0])
            self._buf = self._buf[4:]
        if self._buf and self._buf[0] != 0x40:
            self._buf = b""  # nothing else is expected from the broker
        return out

    def write(self, data: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.settimeout(5)
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)


def publisher_main(index: int, port: int, rate: float, jmetrics: int, spike_every: int, phase, stop,
                   out_path: str) -> None:
    """Readings at ``rate``/s per metric on ``jmetrics`` timestamped metrics, one bare metric and one
    spike metric. Timestamped readings are resent (same payload) until acknowledged; bare ones are
    not (a resent bare number would be a second reading), they count as uncertain then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    accepted: list[tuple[str, int, float]] = []  # (metric topic, seq, ack time)
    uncertain: dict[str, int] = {}
    spikes: list[tuple[str, float, float]] = []  # (metric topic, ts, ack time)
    unacked: dict[int, tuple[str, int, bytes, bool, float]] = {}  # pid -> (topic, seq, payload, resend, ts)
    retry: list[tuple[str, int, bytes, bool, float]] = []
    seq = 0
    last_ts: dict[str, float] = {}
    pub: AckPublisher | None = None
    n_spike: dict[str, int] = {}
    next_at = time.monotonic()
    draining_since = None

    def connect():
        nonlocal pub
        try:
            pub = AckPublisher(port, f"soak-pub-{index}-{uuid.uuid4().hex[:6]}")
        except OSError:
            pub = None

    def lost_connection():
        nonlocal pub
        if pub is not None:
            try:
                pub.sock.close()
            except OSError:
                pass
        pub = None
        for pid, item in sorted(unacked.items(), key=lambda kv: kv[1][4]):
            if item[3]:
                retry.append(item)
            else:
                uncertain[item[0]] = uncertain.get(item[0], 0) + 1
        unacked.clear()

    def send(topic: str, s: int, payload: bytes, resend: bool, ts: float):
        pid, pkt = pub.packet_with(topic, payload)
        if pid in unacked:  # 65535 in flight: cannot happen at these rates
            raise RuntimeError("packet id wrapped")
        unacked[pid] = (topic, s, payload, resend, ts)
        pub.write(pkt)

    connect()
    while True:
        stopping = stop.is_set()
        if stopping and draining_since is None:
            draining_since = time.monotonic()
        if stopping and not unacked and not retry:
            break
        if draining_since is not None and time.monotonic() - draining_since > 60:
            break
        if pub is None:
            time.sleep(0.05)
            connect()
            continue
        try:
            now_m = time.monotonic()
            while retry:
                item = retry.pop(0)
                send(*item)
            if not stopping and now_m >= next_at:
                next_at += 1.0 / rate
                if now_m - next_at > 1.0:
                    next_at = now_m  # behind (a broker outage): no catch-up burst
                seq += 1
                ph = phase.value
                now = time.time()
                for j in range(jmetrics):
                    topic = f"{PREFIX}/ph{ph:02d}/j{index}{j}"
                    ts = max(now, last_ts.get(topic, 0.0) + 1e-3)
                    last_ts[topic] = ts
                    payload = b'{"value": %.3f, "ts": %.6f, "seq": %d}' % (_value(seq, j), ts, seq)
                    send(topic, seq, payload, True, ts)
                send(f"{PREFIX}/ph{ph:02d}/b{index}", seq, b"%.3f" % _value(seq, 99), False, now)
                spike_topic = f"{PREFIX}/ph{ph:02d}/s{index}"
                n = n_spike[spike_topic] = n_spike.get(spike_topic, 0) + 1
                ts = max(now, last_ts.get(spike_topic, 0.0) + 1e-3)
                last_ts[spike_topic] = ts
                spike = n >= SPIKE_AFTER and (n - SPIKE_AFTER) % spike_every == 0
                value = SPIKE_VALUE if spike else _value(n, 7)
                send(spike_topic, n, b'{"value": %.3f, "ts": %.6f, "seq": %d%s}'
                     % (value, ts, n, b', "spike": 1' if spike else b""), True, ts)
            for pid in pub.poll_acks():
                item = unacked.pop(pid, None)
                if item is None:
                    continue
                t = time.time()
                accepted.append((item[0], item[1], t))
                if b'"spike"' in item[2]:
                    spikes.append((item[0], item[4], t, item[1]))
            time.sleep(min(0.01, max(0.0, next_at - time.monotonic())))
        except (OSError, ConnectionError):
            lost_connection()
    if pub is not None:
        pub.close()
    for item in list(unacked.values()) + retry:
        uncertain[item[0]] = uncertain.get(item[0], 0) + 1
    Path(out_path).write_text(json.dumps({"accepted": accepted, "uncertain": uncertain, "spikes": spikes}))


def flood_main(index: int, port: int, metrics: int, seconds: float, out) -> None:
    """QoS 0 readings as fast as the broker takes them, for ``seconds``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pub = RawPublisher(port, f"soak-flood-{index}-{os.getpid()}", qos=0)
    except OSError:
        return
    topics = [_utf8(f"{PREFIX}/flood/f{j:03d}") for j in range(index, metrics, 2)]
    t0 = time.monotonic()
    n = 0
    try:
        while time.monotonic() - t0 < seconds:
            now = time.time()
            pub.send([pub.packet(t, b'{"value": %.3f, "ts": %.6f}' % (_value(n, i), now)) for i, t in enumerate(topics)])
            n += 1
            out.value += len(topics)
    except OSError:
        pass
    pub.close()


GARBAGE: list[tuple[str, bytes]] = [
    ("binary", bytes(range(256)) * 4),
    ("huge_json", b'{"value": 1, "pad": "' + b"x" * 200_000 + b'"}'),
    ("nan", b'{"value": NaN}'),
    ("nan_str", b'{"value": "NaN", "ts": 1}'),
    ("inf", b"Infinity"),
    ("bad_utf8", b'{"value": 1, "unit": "\xff\xfe\xc3\x28"}'),
    ("bad_utf8_bare", b"\xc3\x28\xa0\xa1"),
    ("deep", b"[" * 5000 + b"]" * 5000),
    ("wide", json.dumps({f"k{i}": i for i in range(5000)}).encode()),
    ("huge_number", b'{"value": 1e999999}'),
    ("empty", b""),
    ("senml_bad", b'[{"bn": 5, "v": 1}]'),
    ("future", b'{"value": 1, "ts": 99999999999}'),
]


# =========================================================================== edged


class Edged:
    def __init__(self, tmp: Path, port: int, mode: str, cloud_url: str, snapshot_s: float) -> None:
        self.tmp = tmp
        self.config = tmp / "edged.toml"
        self.log_path = tmp / "edged.log"
        self.config.write_text(
            f'[node]\nid = "{NODE}"\nstate_dir = "{tmp / "state"}"\nstats_interval_s = 1\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nqos = 1\nprotocol = "v5"\nreconnect_max_s = 2\n'
            f'[sensors]\ntopics = ["{PREFIX}/#"]\nmax_metrics = 2000\nmin_silence_s = 100000\n'
            f'[anomaly]\ndetector = "zscore"\n'
            f'[durability]\nmode = "{mode}"\nsnapshot_interval_s = {snapshot_s}\n'
            f'[cloud]\nenabled = true\nbase_url = "{cloud_url}"\nmodel = "fake-model"\nmax_retries = 0\n'
            f'timeout_s = 2\nbreaker_failures = 1000\n'
            f'[llm]\nenabled = false\n[homeassistant]\ndiscovery = false\n'
            f'[log]\nlevel = "info"\nformat = "json"\n'
        )
        self.reconnect_max_s = 2.0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        self.env["EDGED_CLOUD__API_KEY"] = "sk-soak-" + "x" * 24
        self.proc: subprocess.Popen | None = None
        self.incarnations: list[dict] = []
        self._log = open(self.log_path, "ab")

    def start(self) -> float:
        self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp)
        self.incarnations.append({"pid": self.proc.pid, "started": time.time(), "hwm": 0, "rc": None,
                                  "killed": False})
        return time.time()

    def sample(self) -> None:
        if self.proc and self.proc.poll() is None:
            hwm = vm_hwm_bytes(self.proc.pid) or 0
            inc = self.incarnations[-1]
            inc["hwm"] = max(inc["hwm"], hwm)

    def kill(self, sig: int) -> None:
        self.sample()
        self.incarnations[-1]["killed"] = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.incarnations[-1]["rc"] = self.proc.wait(30)

    def exited_by_itself(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None and not self.incarnations[-1]["killed"]

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()


# =========================================================================== witness and requester


class Witness:
    """Plain paho subscriber, persistent session, QoS 1: what the broker delivers."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.lock = threading.Lock()
        self.readings: dict[str, set[int]] = {}
        self.bare: dict[str, int] = {}
        self.online: list[float] = []
        self.status: list[tuple[float, str]] = []
        self.states: list[tuple[float, str, float]] = []  # (recv, metric, reading ts)
        self.events: list[dict] = []
        self.stats: list[dict] = []
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"soak-witness-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.3)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f"{PREFIX}/+/+", 1), (f"{ROOT}/status", 1), (f"{ROOT}/state/#", 0), (f"{ROOT}/anomaly/#", 1),
             (f"{ROOT}/stats", 0)])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 10, "the witness's SUBACK")

    def _on_message(self, c, u, msg) -> None:
        t = time.time()
        topic = msg.topic
        with self.lock:
            if topic.startswith(PREFIX + "/"):
                if "/flood/" in topic or "/junk/" in topic:
                    return
                m = re.search(rb'"seq": (\d+)', msg.payload)
                if m:
                    self.readings.setdefault(topic, set()).add(int(m.group(1)))
                else:  # a bare number: only counted
                    self.bare[topic] = self.bare.get(topic, 0) + 1
            elif topic == f"{ROOT}/status":
                self.status.append((t, msg.payload.decode(errors="replace")))
                if msg.payload == b"online" and not msg.retain:
                    self.online.append(t)
            elif topic.startswith(f"{ROOT}/state/"):
                try:
                    self.states.append((t, topic[len(ROOT) + 7:], float(json.loads(msg.payload)["ts"])))
                except (ValueError, KeyError, TypeError):
                    pass
            elif topic.startswith(f"{ROOT}/anomaly/"):
                try:
                    self.events.append({**json.loads(msg.payload), "_recv": t, "_dup": bool(msg.dup)})
                except ValueError:
                    pass
            elif topic == f"{ROOT}/stats" and not msg.retain:
                try:
                    self.stats.append({**json.loads(msg.payload), "_recv": t})
                except ValueError:
                    pass

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Requester:
    """request/status and request/ask (local and cloud questions in turn) every ``every`` s."""

    def __init__(self, port: int, every: float, deadline: float) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.every = every
        self.deadline = deadline
        self.sent: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.enabled = threading.Event()  # only while no fault is in progress
        self.stop_ev = threading.Event()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"soak-req-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{ROOT}/response/#", 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _on_message(self, c, u, msg) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            entry = self.sent.get(data.get("transaction", ""))
            if entry is not None and "answered" not in entry:
                entry["answered"] = time.time()
                entry["status"] = data.get("status")
                entry["route"] = (data.get("data") or {}).get("route") if isinstance(data.get("data"), dict) else None

    def run(self) -> None:
        n = 0
        while not self.stop_ev.wait(self.every):
            if not self.enabled.is_set() or not self.client.is_connected():
                continue
            kind = ("status", "ask-local", "ask-cloud")[n % 3]
            tx = f"q{n}"
            n += 1
            args = {"transaction": tx}
            action = "status"
            if kind != "status":
                action = "ask"
                args["question"] = LOCAL_Q if kind == "ask-local" else CLOUD_Q
            with self.lock:
                self.sent[tx] = {"kind": kind, "at": time.time()}
            self.client.publish(f"{ROOT}/request/{action}", json.dumps(args), qos=1)

    def interrupted(self, start: float, end: float) -> None:
        """Requests whose wait overlaps a fault: not held against edged (its command link starts
        clean after a reconnect, by design), counted apart."""
        with self.lock:
            for e in self.sent.values():
                if "answered" not in e and e["at"] + self.deadline >= start and e["at"] <= end:
                    e["interrupted"] = True

    def close(self) -> None:
        self.stop_ev.set()
        self.thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


def metrics_reply(port: int, match: str, timeout: float = 15.0) -> dict | None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    tx = uuid.uuid4().hex
    box: dict = {}
    got = threading.Event()
    subscribed = threading.Event()
    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"soak-m-{tx[:6]}",
                    protocol=paho.MQTTv311)

    def on_message(cl, u, msg):
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        if data.get("transaction") == tx:
            box.update(data)
            got.set()

    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    try:
        c.connect("127.0.0.1", port)
    except OSError:
        return None
    c.loop_start()
    try:
        c.subscribe(f"{ROOT}/response/metrics", 1)
        subscribed.wait(5)
        c.publish(f"{ROOT}/request/metrics", json.dumps({"transaction": tx, "match": match}), qos=1)
        return box if got.wait(timeout) else None
    finally:
        c.disconnect()
        c.loop_stop()


# =========================================================================== the run


@dataclass
class Fault:
    kind: str
    segment: int  # readings of segments < this one were accepted before the fault
    start: float = 0.0
    end: float = 0.0  # the broker / edged / cloud back
    online_s: float | None = None
    applied_s: float | None = None
    extra: dict = field(default_factory=dict)


def schedule(args) -> list[str]:
    faults: list[str] = []
    faults += ["broker_term"] * args.broker_restarts
    faults += ["edged_kill"] * args.edged_kills
    faults += ["broker_kill"] * args.broker_kills
    faults += ["flood"] * args.floods
    faults += ["garbage", "cloud"]
    # interleave so that kinds alternate
    order = []
    kinds = ["broker_term", "edged_kill", "flood", "broker_kill", "garbage", "cloud"]
    while faults:
        for k in kinds:
            if k in faults:
                faults.remove(k)
                order.append(k)
    return order


def run_mode(args, mode: str, log) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"edged-soak-{mode}-", dir=args.workdir))
    broker = PersistentBroker(tmp, args.autosave, args.broker_inflight, args.broker_queued)
    broker.start()
    cloud = FakeCloud(fail_ratio=args.cloud_fail, slow_s=3.0, seed=1).start()
    edged = Edged(tmp, broker.port, mode, cloud.base_url, args.snapshot_interval)
    witness = Witness(broker.port)
    ctx = mp.get_context("spawn")
    phase = ctx.Value("i", 0, lock=False)
    stop = ctx.Event()
    faults: list[Fault] = []
    crashes: list[str] = []
    requester = None
    pubs = []
    junk_stop = threading.Event()
    junk_sent = {"n": 0}
    try:
        edged.start()
        wait_for(lambda: witness.online or edged.proc.poll() is not None, 60, "edged online")
        if edged.proc.poll() is not None:
            raise RuntimeError(f"edged exited: {edged.log_path}")
        requester = Requester(broker.port, args.request_every, args.deadline)
        requester.thread.start()
        pubs = [ctx.Process(target=publisher_main, args=(i, broker.port, args.rate, args.jmetrics, args.spike_every,
                                                         phase, stop, str(tmp / f"pub{i}.json")))
                for i in range(args.publishers)]
        for p in pubs:
            p.start()
        junk = threading.Thread(target=_junk_loop, args=(broker.port, junk_stop, junk_sent, 1.0), daemon=True)
        junk.start()
        requester.enabled.set()
        t_run = time.monotonic()

        def idle(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                edged.sample()
                if edged.exited_by_itself():
                    crashes.append(f"edged exited by itself with {edged.proc.returncode}")
                    edged.incarnations[-1]["rc"] = edged.proc.returncode
                    edged.incarnations[-1]["killed"] = True
                    edged.start()
                time.sleep(0.2)

        idle(args.warmup)
        for kind in schedule(args):
            phase.value += 1
            f = Fault(kind, phase.value)
            log(f"[{mode}] {time.monotonic() - t_run:6.1f}s fault {kind} (segment {phase.value})")
            requester.enabled.clear()
            f.start = time.time()
            if kind in ("broker_term", "broker_kill"):
                broker.stop(signal.SIGTERM if kind == "broker_term" else signal.SIGKILL)
                time.sleep(args.outage)
                f.end = broker.start()
            elif kind == "edged_kill":
                edged.kill(signal.SIGKILL)
                time.sleep(args.edged_down)
                f.end = edged.start()
            elif kind == "flood":
                counters = [ctx.Value("q", 0, lock=False) for _ in range(2)]
                fl = [ctx.Process(target=flood_main, args=(i, broker.port, args.flood_metrics, args.flood_s, counters[i]))
                      for i in range(2)]
                for p in fl:
                    p.start()
                requester.enabled.set()  # requests are still answered under flood (item 3)
                t0 = time.monotonic()
                while any(p.is_alive() for p in fl):
                    edged.sample()
                    time.sleep(0.2)
                for p in fl:
                    p.join(10)
                f.extra["offered"] = sum(c.value for c in counters)
                f.extra["offered_per_s"] = round(f.extra["offered"] / max(1e-3, time.monotonic() - t0))
                f.end = time.time()
            elif kind == "garbage":
                n = _junk_burst(broker.port, args.garbage_n)
                junk_sent["n"] += n
                f.extra["payloads"] = n
                f.end = time.time()
            elif kind == "cloud":
                cloud.outage = True
                requester.enabled.set()
                idle(args.cloud_outage)
                cloud.outage = False
                f.end = time.time()
            faults.append(f)
            if kind in ("broker_term", "broker_kill", "edged_kill"):
                _recovery(f, witness, edged, timeout=30)
            requester.interrupted(f.start, (f.end or time.time()) + (f.online_s or 0) + 1)
            requester.enabled.set()
            idle(args.gap)
        # ----- drain: publishers stop, retry what is unacknowledged, and edged catches up
        requester.enabled.clear()
        stop.set()
        for p in pubs:
            p.join(90)
        junk_stop.set()
        time.sleep(args.deadline)  # the last requests' deadline
        final = _settle(broker.port, edged)
        edged.sample()
        alive_at_end = edged.proc.poll() is None
        if not alive_at_end and not edged.incarnations[-1]["killed"]:
            crashes.append(f"edged exited by itself with {edged.proc.returncode}")
        edged.kill(signal.SIGTERM)
        clean_rc = edged.incarnations[-1]["rc"]
        if clean_rc != 0:
            crashes.append(f"edged's clean stop returned {clean_rc}")
    finally:
        stop.set()
        junk_stop.set()
        for p in pubs:
            if p.is_alive():
                p.terminate()
        if requester is not None:
            requester.close()
        witness.close()
        if edged.proc and edged.proc.poll() is None:
            edged.proc.kill()
        broker.stop(signal.SIGTERM)
        cloud.stop()
    return _account(args, mode, tmp, edged, witness, requester, faults, crashes, final, cloud, junk_sent["n"])


def _recovery(f: Fault, witness: Witness, edged: Edged, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with witness.lock:
            online = [t for t in witness.online if t >= f.end]
            applied = [t for t, m, ts in witness.states if t >= f.end and ts >= f.end]
        if online and f.online_s is None:
            f.online_s = round(online[0] - f.end, 2)
        if applied and f.applied_s is None:
            f.applied_s = round(applied[0] - f.end, 2)
        if f.online_s is not None and f.applied_s is not None:
            return
        edged.sample()
        time.sleep(0.05)


def _junk_loop(port: int, stop: threading.Event, counter: dict, every: float) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"soak-junk-{uuid.uuid4().hex[:6]}",
                    protocol=paho.MQTTv311)
    c.reconnect_delay_set(min_delay=0.2, max_delay=0.5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    i = 0
    while not stop.wait(every):
        name, payload = GARBAGE[i % len(GARBAGE)]
        i += 1
        if c.is_connected():
            c.publish(f"{PREFIX}/junk/{name}", payload, qos=1)
            counter["n"] += 1
    c.disconnect()
    c.loop_stop()


def _junk_burst(port: int, n: int) -> int:
    pub = RawPublisher(port, f"soak-junkburst-{os.getpid()}", qos=1, max_unacked=200)
    rnd = random.Random(7)
    sent = 0
    for i in range(n):
        if i % 3 == 0:
            name, payload = GARBAGE[i % len(GARBAGE)]
        else:
            name, payload = "random", bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 300)))
        pub.send([pub.packet(_utf8(f"{PREFIX}/junk/{name}"), payload)])
        sent += 1
    pub.close()
    return sent


def _settle(port: int, edged: Edged) -> dict:
    """The per-metric `readings` counts once they stop changing (edged has drained the broker)."""
    last = None
    stable_since = time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        reply = metrics_reply(port, f"*")
        if reply and reply.get("status") == "ok":
            counts = {m["metric"]: m["readings"] for m in reply["data"]["metrics"] if not m["metric"].startswith(("flood/", "junk/"))}
            if counts == last:
                if time.monotonic() - stable_since >= 3:
                    return counts
            else:
                last, stable_since = counts, time.monotonic()
        edged.sample()
        time.sleep(1)
    return last or {}


def _account(args, mode, tmp, edged, witness, requester, faults, crashes, final, cloud, junk_n) -> dict:
    accepted: dict[str, list[tuple[int, float]]] = {}
    uncertain: dict[str, int] = {}
    spikes: list[tuple] = []
    for path in sorted(tmp.glob("pub*.json")):
        data = json.loads(path.read_text())
        for topic, seq, t in data["accepted"]:
            accepted.setdefault(topic, []).append((seq, t))
        for topic, n in data["uncertain"].items():
            uncertain[topic] = uncertain.get(topic, 0) + n
        spikes += [tuple(s) for s in data["spikes"]]

    def metric(topic: str) -> str:
        return topic[len(PREFIX) + 1:]

    def seg_of(topic: str) -> int | None:
        m = re.match(rf"{PREFIX}/ph(\d+)/", topic)
        return int(m.group(1)) if m else None

    # per segment: accepted, applied, missing, duplicates, the broker's share (per metric: what the
    # witness never received either bounds what the broker lost of that metric)
    rows: dict[str, dict] = {}
    with witness.lock:
        seen = {k: set(v) for k, v in witness.readings.items()}
        bare_seen = dict(witness.bare)
    per_metric = {}
    kill_segments = {f.segment - 1 for f in faults if f.kind == "broker_kill"}
    for topic, items in accepted.items():
        seg = seg_of(topic)
        r = rows.setdefault(f"seg{seg}", {"accepted": 0, "applied": 0, "missing": 0, "duplicates": 0,
                                          "broker_lost": 0, "beyond_broker": 0, "uncertain": 0})
        seqs = {s for s, _ in items}
        applied = final.get(metric(topic), 0)
        unc = uncertain.get(topic, 0)  # bare readings sent but never acknowledged (may be applied)
        missing = max(0, len(seqs) - applied)
        bare = re.match(rf"{PREFIX}/ph\d+/b", topic) is not None
        broker_lost = max(0, len(seqs) - bare_seen.get(topic, 0)) if bare else len(seqs - seen.get(topic, set()))
        dup = max(0, applied - len(seqs) - unc)
        per_metric[metric(topic)] = {"accepted": len(seqs), "applied": applied, "uncertain": unc,
                                     "witness": bare_seen.get(topic, 0) if bare else len(seqs & seen.get(topic, set()))}
        if bare and seg in kill_segments:
            # A broker restored from an older autosave sends again what it had delivered since: new
            # packet ids, no redelivery flag. A timestamped reading is recognised by its timestamp;
            # a bare number cannot be told from a new one (the same value may well come twice).
            r["broker_replayed_bare"] = r.get("broker_replayed_bare", 0) + dup
            dup = 0
        r["accepted"] += len(seqs)
        r["applied"] += applied
        r["uncertain"] += unc
        r["missing"] += missing
        r["duplicates"] += dup
        r["broker_lost"] += broker_lost
        r["beyond_broker"] += max(0, missing - broker_lost)

    # drops the flood policy counted: stats are per process, a restart starts them at 0
    with witness.lock:
        stats = list(witness.stats)
    dropped_total = prev = 0
    for s in stats:
        d = s.get("dropped", 0) or 0
        if d < prev:
            dropped_total += prev
        prev = d
    dropped_total += prev

    # events: spikes are matched to `start` events by metric and start time
    with witness.lock:
        events = list(witness.events)
    starts = [e for e in events if e.get("event") == "start"]
    ids_count: dict[str, int] = {}
    for e in events:
        k = f'{e.get("id")}:{e.get("event")}'
        ids_count[k] = ids_count.get(k, 0) + 1
    same_id_repeats = sum(n - 1 for n in ids_count.values() if n > 1)
    matched: dict[tuple, set] = {(metric(topic), round(ts, 3)): set() for topic, ts, _, _ in spikes}
    other = 0
    for e in starts:
        key = (e.get("metric"), round(float(e.get("start") or 0), 3))
        if key in matched and e.get("kind") == "value":
            matched[key].add(e["id"])
        else:
            other += 1
    spikes_broker_lost = 0
    for topic, ts, _, seq in spikes:
        seg = seg_of(topic)
        r = rows[f"seg{seg}"]
        r["episodes_expected"] = r.get("episodes_expected", 0) + 1
        ids = matched[(metric(topic), round(ts, 3))]
        r["episodes_published"] = r.get("episodes_published", 0) + (1 if ids else 0)
        r["duplicates"] += max(0, len(ids) - 1)
        if not ids and seq not in seen.get(topic, set()):
            spikes_broker_lost += 1
            r["episodes_broker_lost"] = r.get("episodes_broker_lost", 0) + 1
    episodes_published = sum(1 for ids in matched.values() if ids)

    # requests
    with requester.lock:
        reqs = list(requester.sent.values())
    counted = [r for r in reqs if not r.get("interrupted")]
    answered = [r for r in counted if "answered" in r and r["answered"] - r["at"] <= args.deadline]
    late = [r for r in counted if "answered" in r and r["answered"] - r["at"] > args.deadline]
    by_kind = {}
    for k in ("status", "ask-local", "ask-cloud"):
        ks = [r for r in counted if r["kind"] == k]
        by_kind[k] = [len([r for r in ks if r in answered]), len(ks)]
    interrupted = [r for r in reqs if r.get("interrupted")]

    # crashes: tracebacks in the log
    lines = edged.log_lines()
    tracebacks = [ln for ln in lines if "Traceback" in ln or '"level": "critical"' in ln]
    crashes = crashes + [f"traceback in the log: {ln[:200]}" for ln in tracebacks[:5]]
    peak = max((i["hwm"] for i in edged.incarnations), default=0) / 2**20

    # loss attribution: segment k-1's readings were exposed to the fault that started segment k
    keys = ("accepted", "applied", "missing", "duplicates", "broker_lost", "beyond_broker", "uncertain",
            "episodes_expected", "episodes_published", "episodes_broker_lost", "broker_replayed_bare")
    fault_rows = []
    for f in faults:
        r = rows.get(f"seg{f.segment - 1}", {})
        fault_rows.append({"kind": f.kind, "segment_before": f.segment - 1, "down_s": round(f.end - f.start, 2),
                           "online_s": f.online_s, "applied_s": f.applied_s, **{k: r.get(k, 0) for k in keys}, **f.extra})
    last_seg = max((f.segment for f in faults), default=0)
    tail = rows.get(f"seg{last_seg}", {})
    fault_rows.append({"kind": "end of run (no fault)", "segment_before": last_seg, "down_s": 0, "online_s": None,
                       "applied_s": None, **{k: tail.get(k, 0) for k in keys}})

    # relaxed: the stated bound — readings accepted within snapshot_interval_s before each edged kill
    bound = 0
    for f in faults:
        if f.kind == "edged_kill":
            for items in accepted.values():
                bound += sum(1 for _, t in items if f.start - args.snapshot_interval - 1.0 < t <= f.start)

    def lost_in(kinds: set[str]) -> int:
        """Missing readings; after a broker SIGKILL only those the witness did receive."""
        return sum(fr["beyond_broker"] if fr["kind"] == "broker_kill" else fr["missing"]
                   for fr in fault_rows if fr["kind"] in kinds)

    lost_term = lost_in({"broker_term"})
    lost_ekill = lost_in({"edged_kill"})
    lost_bkill = lost_in({"broker_kill"})
    lost_flood = lost_in({"flood"})
    lost_other = lost_in({"garbage", "cloud", "end of run (no fault)"})
    broker_kill_lost = sum(fr["broker_lost"] for fr in fault_rows if fr["kind"] == "broker_kill")
    broker_kill_missing = sum(fr["missing"] for fr in fault_rows if fr["kind"] == "broker_kill")
    duplicates = sum(r["duplicates"] for r in rows.values())
    bound_recovery = edged.reconnect_max_s + 2.0
    recov = [fr for fr in fault_rows if fr["kind"] in ("broker_term", "broker_kill")]
    slow = [fr for fr in recov if fr["online_s"] is None or fr["online_s"] > bound_recovery]
    rss_first = max((i["hwm"] for i in edged.incarnations[:1]), default=0) / 2**20

    targets = {
        "0 lost across broker SIGTERM restarts": (lost_term == 0, f"{lost_term} lost"),
        (f"0 lost across edged SIGKILL restarts ({mode})" if mode == "strict"
         else "edged SIGKILL loses at most the readings since the last snapshot (relaxed)"):
            ((lost_ekill == 0) if mode == "strict" else (lost_ekill <= bound),
             f"{lost_ekill} lost" + ("" if mode == "strict" else f", bound {bound}")),
        "0 lost elsewhere (flood, garbage, cloud, after the last fault)":
            (lost_flood + lost_other <= (dropped_total if mode == "relaxed" else 0),
             f"{lost_flood + lost_other} missing, {dropped_total} counted flood drops"),
        "0 duplicates": (duplicates == 0, f"{duplicates}"),
        "0 crashes": (not crashes, f"{len(crashes)}"),
        "RSS bounded under flood": (peak < args.rss_limit_mib, f"peak {peak:.0f} MiB < {args.rss_limit_mib} MiB"),
        f"online within reconnect_max_s + 2 s = {bound_recovery:g} s of the broker's return":
            (not slow, f"worst {max((fr['online_s'] or 99) for fr in recov):.2f} s" if recov else "no broker fault"),
        "every episode published (segments a broker SIGKILL did not hit)":
            (all(fr["episodes_published"] == fr["episodes_expected"] for fr in fault_rows if fr["kind"] != "broker_kill")
             and other == 0,
             f"{sum(fr['episodes_published'] for fr in fault_rows if fr['kind'] != 'broker_kill')}/"
             f"{sum(fr['episodes_expected'] for fr in fault_rows if fr['kind'] != 'broker_kill')}, {other} other episodes"),
        "every request answered within its deadline": (len(answered) == len(counted), f"{len(answered)}/{len(counted)}"),
    }
    return {
        "mode": mode, "workdir": str(tmp), "faults": fault_rows,
        "readings_accepted": sum(r["accepted"] for r in rows.values()),
        "readings_applied": sum(r["applied"] for r in rows.values()),
        "readings_uncertain": sum(r["uncertain"] for r in rows.values()),
        "lost": {"broker_term": lost_term, "edged_kill": lost_ekill, "broker_kill_beyond_broker": lost_bkill,
                 "flood": lost_flood, "other": lost_other},
        "relaxed_bound": bound if mode == "relaxed" else None,
        "broker_kill": {"broker_lost_witness": broker_kill_lost, "edged_missing": broker_kill_missing,
                        "bare_replayed": sum(fr["broker_replayed_bare"] for fr in fault_rows),
                        "episodes_missed": sum(fr["episodes_expected"] - fr["episodes_published"]
                                               for fr in fault_rows if fr["kind"] == "broker_kill")},
        "per_metric": per_metric,
        "flood_dropped_counted": dropped_total,
        "duplicates": duplicates, "same_id_event_repeats": same_id_repeats,
        "episodes_expected": len(spikes), "episodes_published": episodes_published,
        "episodes_spike_lost_by_broker": spikes_broker_lost, "episodes_other": other,
        "requests": {"asked": len(counted), "answered_in_deadline": len(answered), "late": len(late),
                     "by_kind": by_kind, "interrupted_by_faults": len(interrupted),
                     "interrupted_answered": len([r for r in interrupted if "answered" in r])},
        "cloud": {"requests": cloud.count, "failed": cloud.failed},
        "garbage_sent": junk_n,
        "crashes": crashes, "peak_rss_mib": round(peak, 1), "first_incarnation_peak_rss_mib": round(rss_first, 1),
        "incarnations": len(edged.incarnations),
        "targets": {k: {"met": bool(v[0]), "detail": v[1]} for k, v in targets.items()},
    }


# =========================================================================== output


def render(results: list[dict], args, machine: dict, command: str, elapsed: float) -> str:
    out = [f"Command: `{command}` ({elapsed / 60:.1f} min). Machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
           f"{machine.get('memory')}, Python {machine.get('python')}, paho {machine.get('paho')}, "
           f"Mosquitto {machine.get('mosquitto')}; code {code_version()[0]}.", ""]
    out.append(f"Broker: persistence on, autosave_interval {args.autosave} s, max_inflight_messages "
               f"{args.broker_inflight}, max_queued_messages {args.broker_queued}. edged: QoS 1, MQTT v5, "
               f"reconnect_max_s 2, snapshot_interval_s {args.snapshot_interval:g}, zscore detector. Load: "
               f"{args.publishers} publishers x ({args.jmetrics} timestamped + 1 bare + 1 spike metric) x "
               f"{args.rate:g} readings/s; outages {args.outage:g} s (broker), {args.edged_down:g} s (edged).")
    out.append("")
    out.append("Per fault, the readings of the segment before it (accepted since the previous fault):")
    out.append("")
    out.append("| mode | fault | accepted | applied | missing | witness missed too (broker's own) | lost by edged | duplicates | episodes published / expected | back online (s) | next reading applied (s) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for f in r["faults"]:
            extra = ""
            if f["kind"] == "flood":
                extra = f" ({f.get('offered', 0):,} offered, {f.get('offered_per_s', 0):,}/s)"
            if f["kind"] == "garbage":
                extra = f" ({f.get('payloads', 0)} payloads)"
            lost = f["beyond_broker"] if f["kind"] == "broker_kill" else f["missing"]
            out.append(f"| {r['mode']} | {f['kind']}{extra} | {f['accepted']} | {f['applied']} | {f['missing']} | "
                       f"{f['broker_lost'] if f['kind'] == 'broker_kill' else '–'} | {lost} | {f['duplicates']} | "
                       f"{f['episodes_published']} / {f['episodes_expected']} | {_s(f['online_s'])} | {_s(f['applied_s'])} |")
    out.append("")
    out.append("After a broker SIGKILL, \"lost by edged\" counts, per metric, the readings edged misses beyond what the "
               "witness missed; the witness has no backlog, so when edged's session has one at the kill (a flood "
               "burst just before) the broker loses more of edged's queue than of the witness's, and that shows there.")
    out.append("")
    out.append("| | " + " | ".join(r["mode"] for r in results) + " |")
    out.append("|---|" + "---|" * len(results))

    def row(name, fn):
        out.append(f"| {name} | " + " | ".join(fn(r) for r in results) + " |")

    row("readings accepted (PUBACK) / applied", lambda r: f"{r['readings_accepted']:,} / {r['readings_applied']:,}")
    row("lost: broker SIGTERM restarts", lambda r: str(r["lost"]["broker_term"]))
    row("lost: edged SIGKILL restarts", lambda r: str(r["lost"]["edged_kill"]) + (
        f" (bound: {r['relaxed_bound']})" if r["relaxed_bound"] is not None else ""))
    row("broker SIGKILL: missing in edged / never delivered to a plain subscriber either",
        lambda r: f"{r['broker_kill']['edged_missing']} / {r['broker_kill']['broker_lost_witness']}")
    row("broker SIGKILL: bare numbers applied twice (replayed by the broker from its autosave)",
        lambda r: str(r["broker_kill"]["bare_replayed"]))
    row("lost elsewhere (flood, garbage, cloud, after the last fault)", lambda r: str(r["lost"]["flood"] + r["lost"]["other"]))
    row("flood drops counted (stats `dropped`)", lambda r: str(r["flood_dropped_counted"]))
    row("duplicates (reading twice, two ids for one episode)", lambda r: str(r["duplicates"]))
    row("event repeated with the same id", lambda r: str(r["same_id_event_repeats"]))
    row("episodes expected / published (spike lost by the broker)", lambda r: f"{r['episodes_expected']} / "
        f"{r['episodes_published']} ({r['episodes_spike_lost_by_broker']})" + (f" +{r['episodes_other']} other" if r["episodes_other"] else ""))
    row("requests answered in deadline / asked", lambda r: f"{r['requests']['answered_in_deadline']} / {r['requests']['asked']}")
    row("requests overlapping a fault (answered / sent, not counted above)",
        lambda r: f"{r['requests']['interrupted_answered']} / {r['requests']['interrupted_by_faults']}")
    row("cloud requests / failed by the fake", lambda r: f"{r['cloud']['requests']} / {r['cloud']['failed']}")
    row("garbage payloads", lambda r: str(r["garbage_sent"]))
    row("crashes", lambda r: str(len(r["crashes"])))
    row("peak RSS (MiB, any incarnation)", lambda r: f"{r['peak_rss_mib']:.0f}")
    out.append("")
    out.append("| target | " + " | ".join(r["mode"] for r in results) + " |")
    out.append("|---|" + "---|" * len(results))
    names = []
    for r in results:
        for k in r["targets"]:
            if k not in names:
                names.append(k)
    for k in names:
        cells = []
        for r in results:
            t = r["targets"].get(k)
            cells.append("–" if t is None else f"{'met' if t['met'] else '**not met**'} ({t['detail']})")
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _s(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def write_doc(body: str) -> Path:
    text = DOC.read_text() if DOC.exists() else "# Reliability\n"
    block = f"{BEGIN}\n{body.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip() + "\n\n## Soak\n\n" + block + "\n"
    DOC.write_text(text)
    return DOC


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--durability", default="strict,relaxed", help="modes to run, comma-separated")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--jmetrics", type=int, default=2, help="timestamped metrics per publisher (plus 1 bare, 1 spike)")
    p.add_argument("--rate", type=float, default=10.0, help="readings/s per metric")
    p.add_argument("--spike-every", type=int, default=60, help="a spike every this many spike-metric readings")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds before the first fault")
    p.add_argument("--gap", type=float, default=8.0, help="seconds of normal traffic after each fault")
    p.add_argument("--broker-restarts", type=int, default=2, help="broker SIGTERM + restart, times")
    p.add_argument("--broker-kills", type=int, default=1, help="broker SIGKILL + restart, times")
    p.add_argument("--edged-kills", type=int, default=2, help="edged SIGKILL + restart, times")
    p.add_argument("--floods", type=int, default=1, help="flood bursts")
    p.add_argument("--flood-s", type=float, default=8.0, help="seconds per flood burst")
    p.add_argument("--flood-metrics", type=int, default=200, help="metrics the flood spreads over")
    p.add_argument("--garbage-n", type=int, default=300, help="payloads in the garbage burst")
    p.add_argument("--outage", type=float, default=3.0, help="seconds the broker stays down")
    p.add_argument("--edged-down", type=float, default=2.0, help="seconds edged stays down")
    p.add_argument("--cloud-fail", type=float, default=0.3, help="share of cloud requests that fail")
    p.add_argument("--cloud-outage", type=float, default=8.0, help="seconds of the cloud outage fault")
    p.add_argument("--autosave", type=int, default=5, help="Mosquitto autosave_interval, seconds")
    p.add_argument("--broker-inflight", type=int, default=20, help="Mosquitto max_inflight_messages")
    p.add_argument("--broker-queued", type=int, default=100000, help="Mosquitto max_queued_messages")
    p.add_argument("--snapshot-interval", type=float, default=10.0, help="edged durability.snapshot_interval_s")
    p.add_argument("--request-every", type=float, default=1.0, help="seconds between requests")
    p.add_argument("--deadline", type=float, default=10.0, help="a request's deadline, seconds")
    p.add_argument("--rss-limit-mib", type=float, default=400.0, help="the RSS bound the target checks")
    p.add_argument("--workdir", default=None, help="parent of the run directories (default: the system temp dir)")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--write", action="store_true", help="update docs/RELIABILITY.md between its markers")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python tools/soak.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = []
    for mode in [m.strip() for m in args.durability.split(",") if m.strip()]:
        if mode not in ("strict", "relaxed"):
            raise SystemExit(f"--durability: {mode!r} is neither strict nor relaxed")
        results.append(run_mode(args, mode, log))
    elapsed = time.monotonic() - t0
    machine = machine_info()
    table = render(results, args, machine, command.strip(), elapsed)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    if args.write:
        print(f"wrote {write_doc(table)}", file=sys.stderr)
    missed = [(r["mode"], k) for r in results for k, t in r["targets"].items() if not t["met"]]
    for mode, k in missed:
        log(f"target not met ({mode}): {k}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
