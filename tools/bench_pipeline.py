#!/usr/bin/env python3
"""Pipeline benchmark: edged against a bare paho subscriber, through a private Mosquitto.

What it measures, per MQTT QoS (0 and 1), for two consumers on the same broker and the
same publishers:

- ``edged``: ``python -m edged run`` as a subprocess (built-in z-score detector), watched by
  a monitor client on its retained ``stats`` topic and its ``state/<metric>`` topics;
- ``bare``: a paho subscriber process that only ``json.loads`` each payload — the ceiling
  for a Python MQTT consumer.

Each session (fresh broker, fresh consumer) runs three phases:

1. prefill: ``--prefill`` readings per metric, one second apart, at a capped rate, so
   every metric is past the detector's learning phase; then wait for the consumer to
   catch up;
2. latency: ``--metrics`` x ``--latency-rate`` readings/s (1,000 x 1/s by default), each
   payload's ``ts`` the wall time of its publish; latency = receipt of the metric's state
   publish (``edged``) or of the reading itself (``bare``) minus ``ts``;
3. throughput: publishers flood the broker (``--offered-rate``, 0 = as fast as the broker
   takes them) for ``--warmup`` + ``--duration`` s; the sustained rate is readings applied
   per second over the measured window: Δ``scored`` / Δ``ts`` from the daemon's stats
   topic, Δ(decoded messages) / Δt for the bare subscriber.

Peak RSS (VmHWM) and CPU use of the consumer are read from /proc. Publishers are separate
processes that speak MQTT 3.1.1 over a raw socket with pre-encoded packets, so they cost
the 2-core machine as little CPU as possible (a paho publisher would take a core from the
consumer being measured). Sessions are interleaved (edged, bare, bare, edged, ...) and
repeated; the table gives medians with [min-max].

    .venv/bin/python tools/bench_pipeline.py                 # full run, ~8 minutes
    .venv/bin/python tools/bench_pipeline.py --repeats 1 --duration 5 --qos 0
    .venv/bin/python tools/bench_pipeline.py --write         # also update docs/BENCHMARKS.md

This is a benchmark, not a test: it asserts nothing and exits 0 unless a run fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
NODE = "bench"
PREFIX = "bench"
LATENCY_TARGET_MS = 50.0
RATIO_TARGET = 0.8

# Publisher phases (a shared integer the main process moves forward).
PH_PREFILL, PH_WAIT, PH_LATENCY, PH_FLOOD, PH_STOP = 0, 1, 2, 3, 4


# =========================================================================== helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set size of a live process (VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def system_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    try:
        parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return float(total - idle), float(total)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import paho.mqtt as pm

        paho_version = getattr(pm, "__version__", "?")
    except ImportError:
        paho_version = "not installed"
    mosq = "?"
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"mosquitto version (\S+)", out)
        mosq = m.group(1) if m else "?"
    except (OSError, subprocess.SubprocessError):
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "paho": paho_version,
        "mosquitto": mosq,
    }


def code_version() -> tuple[str, str]:
    """(git HEAD + dirty flag for edged/, a hash of edged/**/*.py) — to spot code changing mid-run."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((REPO / "edged").rglob("*.py")):
        h.update(f.as_posix().encode())
        try:
            h.update(f.read_bytes())
        except OSError:
            pass
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edged"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        desc = f"{head or '?'}{' + uncommitted changes in edged/' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        desc = "?"
    return desc, h.hexdigest()[:12]


# =========================================================================== broker


class Broker:
    """A private Mosquitto on a free port with a temporary config (no persistence)."""

    def __init__(self, workdir: Path, max_inflight: int, max_queued: int, extra: str = "") -> None:
        self.port = free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}"
            f"max_queued_messages {max_queued}\nmax_inflight_messages {max_inflight}\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 10, "mosquitto to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log.read_text() if self.log.exists() else ''}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_edged(config: Path, workdir: Path, *, prefix: list[str] | None = None, env: dict | None = None,
                log_name: str = "edged.log") -> subprocess.Popen:
    """``python -m edged run`` on ``config`` (the tools' one way to start it): its output goes to
    ``workdir/log_name``, the caller's EDGED_* variables stay out (they would override the config)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    clean.update(env or {})
    log = open(workdir / log_name, "ab")
    return subprocess.Popen([*(prefix or []), sys.executable, "-m", "edged", "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, env=clean, cwd=workdir)


def stop_edged(daemon: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGTERM (edged drains and says `offline`), SIGKILL when it does not exit in time."""
    if daemon is None or daemon.poll() is not None:
        return
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(5)


# =========================================================================== publishers (raw MQTT 3.1.1)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


class RawPublisher:
    """Just enough MQTT 3.1.1 to publish fast: CONNECT, PUBLISH (QoS 0/1), PUBACK counting."""

    def __init__(self, port: int, client_id: str, qos: int, max_unacked: int = 2000) -> None:
        self.qos = qos
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        var = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)  # clean session, no keepalive
        body = var + _utf8(client_id)
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        ack = self._recv_exact(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"CONNACK refused: {ack!r}")
        self.pid = 0
        self.sent_qos1 = 0
        self.acked_bytes = 0
        self.max_unacked = max_unacked

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf

    def packet(self, topic_hdr: bytes, payload: bytes) -> bytes:
        if self.qos == 0:
            return b"\x30" + _varint(len(topic_hdr) + len(payload)) + topic_hdr + payload
        self.pid = self.pid % 65535 + 1
        return b"\x32" + _varint(len(topic_hdr) + 2 + len(payload)) + topic_hdr + struct.pack("!H", self.pid) + payload

    def _drain_acks(self, block: bool) -> None:
        while True:
            try:
                data = self.sock.recv(65536, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not data:
                raise ConnectionError("broker closed the connection")
            self.acked_bytes += len(data)  # only PUBACKs (4 bytes each) come back
            if not block:
                continue
            return

    def send(self, packets: list[bytes]) -> None:
        if self.qos:
            self.sent_qos1 += len(packets)
            self._drain_acks(block=False)
            while self.sent_qos1 - self.acked_bytes // 4 > self.max_unacked:
                self._drain_acks(block=True)
        self.sock.sendall(b"".join(packets))

    def close(self) -> None:
        try:
            if self.qos:
                deadline = time.monotonic() + 2
                self.sock.settimeout(0.5)
                while self.sent_qos1 > self.acked_bytes // 4 and time.monotonic() < deadline:
                    try:
                        self._drain_acks(block=True)
                    except (socket.timeout, ConnectionError):
                        break
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            self.sock.close()
        except OSError:
            pass


def _value(seq: int, j: int) -> float:
    """A steady, noisy-looking value (uniform in [20, 21)): no anomalies, real scoring work."""
    return 20.0 + ((seq * 7919 + j * 104729) % 1000) / 1000.0


def publisher_main(index: int, port: int, qos: int, metric_ids: list[int], n_metrics: int, phase, sent,
                   prefill: int, prefill_rate: float, latency_rate: float, offered_rate: float,
                   ready) -> None:
    """One publisher process: prefill, wait, paced latency phase, flood; counts what it sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pub = RawPublisher(port, f"bench-pub-{index}-{os.getpid()}", qos)
    topics = [_utf8(f"{PREFIX}/m{j:04d}") for j in metric_ids]
    last_ts = [0.0] * len(metric_ids)
    seq = [0] * len(metric_ids)
    n = len(metric_ids)
    share = n / n_metrics  # this publisher's share of any total rate

    def payload(k: int, ts: float) -> bytes:
        if ts <= last_ts[k]:
            ts = last_ts[k] + 1e-6
        last_ts[k] = ts
        seq[k] += 1
        return b'{"value": %.3f, "ts": %.6f}' % (_value(seq[k], metric_ids[k]), ts)

    # ---- 1. prefill: timestamps one second apart, at a capped rate, the last round stamped about
    # when the prefill ends (so the pause before the next phase does not look like silence)
    rate = max(1.0, prefill_rate * share)
    t_end = time.time() + prefill * n / rate
    t0 = time.monotonic()
    count = 0
    for r in range(prefill):
        ts = t_end - (prefill - r)
        batch = [pub.packet(topics[k], payload(k, ts)) for k in range(n)]
        for i in range(0, n, 100):
            part = batch[i:i + 100]
            pub.send(part)
            count += len(part)
            sent.value += len(part)
            delay = t0 + count / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    ready.set()
    while phase.value == PH_WAIT or phase.value == PH_PREFILL:
        time.sleep(0.01)

    # ---- 2. latency: each metric every 1/latency_rate s, spread evenly over the period
    period = 1.0 / latency_rate
    offsets = [(metric_ids[k] / n_metrics) * period for k in range(n)]
    order = sorted(range(n), key=lambda k: offsets[k])
    base = time.monotonic()
    cycle = 0
    pos = 0
    while phase.value == PH_LATENCY:
        k = order[pos]
        due = base + cycle * period + offsets[k]
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(min(delay, 0.05))
            continue
        pub.send([pub.packet(topics[k], payload(k, time.time()))])
        sent.value += 1
        pos += 1
        if pos == n:
            pos, cycle = 0, cycle + 1

    # ---- 3. flood: chunks of packets, as fast as the broker takes them (or capped)
    chunk = 200
    rate = offered_rate * share if offered_rate > 0 else 0.0
    t0 = time.monotonic()
    count = 0
    k = 0
    while phase.value == PH_FLOOD:
        now = time.time()
        packets = []
        for _ in range(chunk):
            packets.append(pub.packet(topics[k], payload(k, now)))
            k = k + 1 if k + 1 < n else 0
        pub.send(packets)
        count += chunk
        sent.value += chunk
        if rate:
            delay = t0 + count / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    pub.close()


# =========================================================================== consumers


def _paho_client(client_id: str):
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    return paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)


def bare_main(port: int, qos: int, phase, progress, ready, stop, out_path: str) -> None:
    """The ceiling: a paho subscriber that only decodes JSON (and timestamps, in the latency phase)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    box = {"n": 0, "lat": False}
    lat: list[tuple[float, float]] = []
    samples: list[tuple[float, int]] = []
    client = _paho_client(f"bench-bare-{os.getpid()}")
    loads = json.loads
    now = time.time

    def on_message(c, u, msg):
        obj = loads(msg.payload)
        box["n"] += 1
        if box["lat"]:
            t = now()
            lat.append((obj["ts"], t - obj["ts"]))

    client.on_message = on_message
    client.on_subscribe = lambda *a: ready.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/#", qos)
    client.connect("127.0.0.1", port)
    client.loop_start()
    while not stop.wait(0.2):
        t = time.time()
        samples.append((t, box["n"]))
        progress[0] = box["n"]
        box["lat"] = phase.value == PH_LATENCY
    samples.append((time.time(), box["n"]))
    client.disconnect()
    client.loop_stop()
    Path(out_path).write_text(json.dumps({"samples": samples, "latency": lat}))


def monitor_main(port: int, qos: int, progress, ready, stop, out_path: str) -> None:
    """Watches edged: stats (counters) and state publishes (latency = receipt - reading ts)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stats: list[dict] = []
    lat: list[tuple[float, float]] = []
    seen: set[tuple[str, float]] = set()
    root = f"edged/{NODE}"
    client = _paho_client(f"bench-monitor-{os.getpid()}")

    def on_message(c, u, msg):
        t = time.time()
        if msg.topic == f"{root}/stats":
            if msg.retain:
                return
            s = json.loads(msg.payload)
            row = {k: s.get(k, 0) for k in ("ts", "readings", "scored", "dropped", "rejected_total",
                                            "queue_depth", "states_published", "duplicates", "late",
                                            "events_start", "events_end")}
            row["ingest_latency"] = s.get("ingest_latency")
            row["recv"] = t
            stats.append(row)
            progress[0] = row["readings"] or 0
            progress[1] = row["queue_depth"] or 0
            progress[2] = t
        elif msg.topic.startswith(f"{root}/state/"):
            if msg.topic == f"{root}/state/_ready":
                ready.set()
                return
            if msg.retain:
                return
            ts = json.loads(msg.payload).get("ts")
            key = (msg.topic, ts)
            if ts is not None and key not in seen:  # a reading's first state only (not re-announces)
                seen.add(key)
                lat.append((ts, t - ts))

    client.on_message = on_message

    def on_connect(c, u, f, rc, p):
        c.subscribe([(f"{root}/stats", 0), (f"{root}/state/#", qos)])

    subscribed = threading.Event()
    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    subscribed.wait(10)
    # Probe: a reading on bench/_ready proves the daemon is subscribed and working.
    while not ready.is_set() and not stop.is_set():
        client.publish(f"{PREFIX}/_ready", json.dumps({"value": 1, "ts": time.time()}), qos=1)
        ready.wait(0.5)
    stop.wait()
    client.disconnect()
    client.loop_stop()
    Path(out_path).write_text(json.dumps({"stats": stats, "latency": lat}))


# =========================================================================== one session


@dataclass
class Session:
    consumer: str  # "edged" | "bare"
    qos: int
    repeat: int
    rate: float | None = None  # sustained readings/s (applied)
    offered: float | None = None  # published readings/s during the window
    dropped: float | None = None  # edged: dropped by the daemon's queue, per second
    lost: float | None = None  # offered - received by the consumer (broker drops, backlog), per second
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    lat_n: int = 0
    lat_expected: int = 0
    over_target: float | None = None  # share of latencies above LATENCY_TARGET_MS
    rss_mib: float | None = None
    cpu_pct: float | None = None  # consumer CPU, % of one core, during the throughput window
    broker_cpu_pct: float | None = None
    pub_cpu_pct: float | None = None  # all publisher processes together
    other_cpu_pct: float | None = None  # CPU used by processes outside the benchmark (shared machines)
    lat_cpu_pct: float | None = None  # consumer CPU during the latency window (fixed load)
    events: float | None = None  # edged: anomaly events (start + end) per second under flood
    lat_events: float | None = None  # edged: the same during the latency window
    stats_gap_s: float | None = None  # edged: longest gap between stats publishes under flood (1 s configured)
    ingest_p99_ms: float | None = None  # edged's own received->published p99 (stats)
    note: str = ""
    extra: dict = field(default_factory=dict)


def _rate_from(samples: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.5:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def _edged_config(tmp: Path, port: int, qos: int, metrics: int) -> Path:
    path = tmp / f"edged-{port}.toml"
    path.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "{tmp / "state"}"\nstats_interval_s = 1\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nqos = {qos}\nreconnect_max_s = 1\n'
        f'[sensors]\ntopics = ["{PREFIX}/#"]\nmax_metrics = {max(2000, metrics + 10)}\n'
        f'[log]\nlevel = "warning"\nformat = "json"\n'
        # the pipeline's cost with the built-in z-score (what the tables here measured); the model
        # detector's per-call cost is `edged models bench`
        f'[anomaly]\ndetector = "zscore"\n'
    )
    return path


def run_session(args, tmp: Path, consumer: str, qos: int, repeat: int, log) -> Session:
    ctx = mp.get_context("fork")
    result = Session(consumer, qos, repeat)
    broker = Broker(tmp, args.max_inflight, args.max_queued).start()
    daemon: subprocess.Popen | None = None
    procs: list = []
    stop = ctx.Event()
    ready = ctx.Event()
    phase = ctx.RawValue("i", PH_PREFILL)
    progress = ctx.RawArray("d", 3)
    out_path = tmp / f"{consumer}-q{qos}-r{repeat}.json"
    try:
        # ---- consumer
        if consumer == "edged":
            cfg = _edged_config(tmp, broker.port, qos, args.metrics)
            daemon = start_edged(cfg, tmp, prefix=shlex.split(args.daemon_prefix), log_name=f"edged-{broker.port}.log")
            consumer_pid = daemon.pid
            mon = ctx.Process(target=monitor_main, args=(broker.port, qos, progress, ready, stop, str(out_path)),
                              daemon=True)
            mon.start()
            procs.append(mon)
            wait_for(lambda: ready.is_set() or daemon.poll() is not None, 60, "edged to process a probe reading")
            if daemon.poll() is not None:
                raise RuntimeError(f"edged exited with {daemon.returncode}; see {tmp / ('edged-%d.log' % broker.port)}")
            if args.print_pids:
                log(f"    edged pid {daemon.pid}")
        else:
            sub = ctx.Process(target=bare_main, args=(broker.port, qos, phase, progress, ready, stop, str(out_path)),
                              daemon=True)
            sub.start()
            procs.append(sub)
            consumer_pid = sub.pid
            wait_for(ready.is_set, 30, "the bare subscriber's SUBACK")
        base_progress = progress[0]

        # ---- publishers
        ids = list(range(args.metrics))
        shares = [ids[i::args.publishers] for i in range(args.publishers)]
        counters = [ctx.RawValue("q", 0) for _ in shares]
        pub_ready = [ctx.Event() for _ in shares]
        pubs = []
        for i, mine in enumerate(shares):
            p = ctx.Process(target=publisher_main, daemon=True, args=(
                i, broker.port, qos, mine, args.metrics, phase, counters[i], args.prefill, args.prefill_rate,
                args.latency_rate, args.offered_rate, pub_ready[i]))
            p.start()
            pubs.append(p)
        procs.extend(pubs)

        def sent() -> int:
            return sum(c.value for c in counters)

        # ---- 1. prefill, then let the consumer catch up
        wait_for(lambda: all(e.is_set() for e in pub_ready), 120, "the prefill")
        phase.value = PH_WAIT
        target = base_progress + args.prefill * args.metrics
        last = [progress[0], time.monotonic()]

        def caught_up() -> bool:
            if progress[0] >= target * 0.999:
                return True
            if progress[0] != last[0]:
                last[:] = [progress[0], time.monotonic()]
            return time.monotonic() - last[1] > 3.0  # stalled: some were dropped

        wait_for(caught_up, 120, "the consumer to process the prefill")
        if consumer == "edged":
            wait_for(lambda: progress[1] == 0, 30, "edged's queue to drain")
        time.sleep(0.5)

        helpers = [p.pid for p in procs if p not in pubs]  # the monitor (edged runs)

        def snap() -> dict:
            return {"t": time.time(), "sent": sent(), "consumer": cpu_seconds(consumer_pid),
                    "broker": cpu_seconds(broker.proc.pid),
                    "pubs": sum(cpu_seconds(p.pid) or 0.0 for p in pubs),
                    "helpers": sum(cpu_seconds(p) or 0.0 for p in helpers), "system": system_busy()}

        def between(a: dict, b: dict) -> dict:
            span = b["t"] - a["t"]
            out = {"offered": (b["sent"] - a["sent"]) / span, "pubs": 100.0 * (b["pubs"] - a["pubs"]) / span}
            if a["consumer"] is not None and b["consumer"] is not None:
                out["consumer"] = 100.0 * (b["consumer"] - a["consumer"]) / span
            if a["broker"] is not None and b["broker"] is not None:
                out["broker"] = 100.0 * (b["broker"] - a["broker"]) / span
            (busy0, total0), (busy1, total1) = a["system"], b["system"]
            if total1 > total0 and "consumer" in out and "broker" in out:
                busy = 100.0 * (os.cpu_count() or 1) * (busy1 - busy0) / (total1 - total0)
                ours = out["consumer"] + out["broker"] + out["pubs"] + 100.0 * (b["helpers"] - a["helpers"]) / span
                out["others"] = max(0.0, busy - ours)
            return out

        # ---- 2. latency at the fixed offered load
        phase.value = PH_LATENCY
        t_go = time.time()
        lat_t0 = t_go + args.lat_warmup
        lat_t1 = lat_t0 + (args.duration if "latency" in args.phases else 0.0)
        if "latency" in args.phases:
            time.sleep(max(0.0, lat_t0 - time.time()))
            a = snap()
            time.sleep(max(0.0, lat_t1 - time.time()))
            m = between(a, snap())
            result.lat_cpu_pct = m.get("consumer")
            time.sleep(0.5)  # the last readings' states are on their way

        # ---- 3. throughput: flood
        w0 = w1 = time.time()
        if "throughput" in args.phases:
            phase.value = PH_FLOOD
            w0 = time.time() + args.warmup
            w1 = w0 + args.duration
            time.sleep(max(0.0, w0 - time.time()))
            a = snap()
            time.sleep(max(0.0, w1 - time.time()))
            m = between(a, snap())
            result.offered = m["offered"]
            result.cpu_pct = m.get("consumer")
            result.broker_cpu_pct = m.get("broker")
            result.pub_cpu_pct = m["pubs"]
            result.other_cpu_pct = m.get("others")
            time.sleep(1.5 if consumer == "edged" else 0.3)  # one more stats publish after the window
        hwm = vm_hwm_bytes(consumer_pid)
        result.rss_mib = hwm / 2**20 if hwm else None
        phase.value = PH_STOP
        for p in pubs:
            p.join(10)
    finally:
        phase.value = PH_STOP
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        stop_edged(daemon, 15)
        broker.stop()

    # ---- analysis
    data = json.loads(out_path.read_text()) if out_path.exists() else {}
    lat = [l for ts, l in data.get("latency", []) if lat_t0 <= ts <= lat_t1]
    result.lat_n = len(lat)
    result.lat_expected = int(args.metrics * args.latency_rate * args.duration)
    if lat:
        ms = [x * 1000 for x in lat]
        result.p50_ms, result.p99_ms = percentile(ms, 50), percentile(ms, 99)
        result.p999_ms, result.max_ms = percentile(ms, 99.9), max(ms)
        result.over_target = sum(1 for x in ms if x > LATENCY_TARGET_MS) / len(ms)
    if consumer == "edged":
        stats = data.get("stats", [])
        result.rate = _rate_from([(s["ts"], s["scored"]) for s in stats], w0, w1)
        result.dropped = _rate_from([(s["ts"], s["dropped"]) for s in stats], w0, w1)
        received = _rate_from([(s["ts"], s["readings"] + s["dropped"]) for s in stats], w0, w1)
        if received is not None and result.offered:
            result.lost = max(0.0, result.offered - received)
        lat_stats = [s for s in stats if lat_t0 <= s["ts"] <= lat_t1 + 1]
        if lat_stats and lat_stats[-1].get("ingest_latency"):
            result.ingest_p99_ms = lat_stats[-1]["ingest_latency"].get("p99_ms")
        if result.rate is None and "throughput" in args.phases:
            result.note = "no stats during the window (the daemon's tick did not run)"
        result.events = _rate_from([(s["ts"], s["events_start"] + s["events_end"]) for s in stats], w0, w1)
        lat_events = _rate_from([(s["ts"], s["events_start"] + s["events_end"]) for s in stats], lat_t0, lat_t1 + 1)
        result.lat_events = lat_events
        flood_ts = [s["ts"] for s in stats if w0 <= s["ts"] <= w1 + 1]
        gaps = [b - a for a, b in zip(flood_ts, flood_ts[1:])]
        result.stats_gap_s = max(gaps) if gaps else None
    else:
        samples = data.get("samples", [])
        result.rate = _rate_from(samples, w0, w1)
        if result.rate is not None and result.offered:
            result.lost = max(0.0, result.offered - result.rate)
    return result


# =========================================================================== report


def _fmt(values: list[float | None], digits: int = 0, scale: float = 1.0) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    f = f"{{:,.{digits}f}}"
    if len(vals) == 1:
        return f.format(med)
    return f"{f.format(med)} [{f.format(min(vals))}–{f.format(max(vals))}]"


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def render(args, sessions: list[Session], machine: dict, command: str, elapsed: float) -> str:
    def rows_of(qos: int, consumer: str) -> list[Session]:
        return [s for s in sessions if s.qos == qos and s.consumer == consumer]

    def per_cpu(s: Session) -> float | None:
        return s.rate / (s.cpu_pct / 100.0) if s.rate and s.cpu_pct else None

    offered = "as fast as the broker takes them" if args.offered_rate <= 0 else f"{args.offered_rate:,.0f}/s"
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']} RAM, Linux {machine['kernel']}; "
        f"Python {machine['python']}, paho-mqtt {machine['paho']}, Mosquitto {machine['mosquitto']}; "
        f"edged at {machine.get('edged', '?')}.",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min; {args.repeats} sessions per row, edged and bare "
        f"interleaved; median [min–max] over sessions).",
        "",
        f"Load: {args.metrics} metrics (`{PREFIX}/mNNNN`, JSON `{{\"value\", \"ts\"}}`) from {args.publishers} "
        f"raw-socket publisher processes, after a prefill of {args.prefill} readings per metric (past learning). "
        f"Broker: max_inflight_messages {args.max_inflight}, max_queued_messages {args.max_queued}.",
        "",
    ]
    if "throughput" in args.phases:
        lines += [
            f"Sustained rate: offered {offered} for {args.warmup:g} s + {args.duration:g} s measured; readings "
            "applied per second (edged: Δ`scored`/Δ`ts` of its stats topic; bare: messages decoded).",
            "",
            "| consumer | QoS | sustained readings/s | per consumer CPU-second | consumer CPU % | offered/s | "
            "dropped by edged/s | other processes' CPU % | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for qos in args.qos:
            for consumer in ("edged", "bare"):
                rows = rows_of(qos, consumer)
                if rows:
                    lines.append(
                        f"| {consumer} | {qos} | {_fmt([s.rate for s in rows])} | {_fmt([per_cpu(s) for s in rows])} | "
                        f"{_fmt([s.cpu_pct for s in rows])} | {_fmt([s.offered for s in rows])} | "
                        f"{_fmt([s.dropped for s in rows]) if consumer == 'edged' else '–'} | "
                        f"{_fmt([s.other_cpu_pct for s in rows])} | {_fmt([s.rss_mib for s in rows], 1)} |")
        lines.append("")
    if "latency" in args.phases:
        lines += [
            f"Latency at a fixed load of {args.metrics} metrics x {args.latency_rate:g} reading/s, "
            f"{args.duration:g} s measured: payload `ts` = wall time of the publish; edged: receipt of the "
            "metric's `state` publish (publish → broker → edged → broker → subscriber; the state's `ts` is the "
            "reading's, rounded to 1 ms); bare: receipt of the reading itself (one broker hop).",
            "",
            "| consumer | QoS | p50 ms | p99 ms | p99.9 ms | max ms | share > 50 ms | replies / readings | "
            "consumer CPU % |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for qos in args.qos:
            for consumer in ("edged", "bare"):
                rows = rows_of(qos, consumer)
                if rows:
                    share = [s.over_target * 100 if s.over_target is not None else None for s in rows]
                    replies = [s.lat_n / s.lat_expected * 100 if s.lat_expected else None for s in rows]
                    lines.append(
                        f"| {consumer} | {qos} | {_fmt([s.p50_ms for s in rows], 1)} | "
                        f"{_fmt([s.p99_ms for s in rows], 1)} | {_fmt([s.p999_ms for s in rows], 1)} | "
                        f"{_fmt([s.max_ms for s in rows], 1)} | {_fmt(share, 1)} % | {_fmt(replies, 1)} % | "
                        f"{_fmt([s.lat_cpu_pct for s in rows])} |")
        lines.append("")
    lines += ["Targets (edged / bare ratio per session pair, then the median):", ""]
    for qos in args.qos:
        ratios, cpu_ratios = [], []
        for r in range(args.repeats):
            e = next((s for s in sessions if s.qos == qos and s.consumer == "edged" and s.repeat == r), None)
            b = next((s for s in sessions if s.qos == qos and s.consumer == "bare" and s.repeat == r), None)
            if e and b and e.rate and b.rate:
                ratios.append(e.rate / b.rate)
                if per_cpu(e) and per_cpu(b):
                    cpu_ratios.append(per_cpu(e) / per_cpu(b))
        ratio = _median(ratios)
        p99 = _median([s.p99_ms for s in rows_of(qos, "edged")])
        parts = []
        if "throughput" in args.phases:
            parts.append(
                f"sustained rate edged/bare = {'n/a' if ratio is None else _fmt(ratios, 2)} "
                f"(target ≥ {RATIO_TARGET}: {'met' if ratio is not None and ratio >= RATIO_TARGET else 'NOT met'}; "
                f"per CPU-second: {_fmt(cpu_ratios, 2)})")
        if "latency" in args.phases:
            parts.append(
                f"edged p99 latency at {args.metrics * args.latency_rate:,.0f} readings/s = "
                f"{'n/a' if p99 is None else f'{p99:.1f} ms'} (target < {LATENCY_TARGET_MS:.0f} ms: "
                f"{'met' if p99 is not None and p99 < LATENCY_TARGET_MS else 'NOT met'})")
        lines.append(f"- QoS {qos}: " + "; ".join(parts) + ".")
    ev = [s for s in sessions if s.consumer == "edged"]
    if ev and "throughput" in args.phases:
        lines += ["", f"edged anomaly events (start + end, all `silence`-driven here: the values are steady) per second: "
                  f"under flood {_fmt([s.events for s in ev], 1)}, at the fixed load {_fmt([s.lat_events for s in ev], 1)}."]
    gaps = [s.stats_gap_s for s in sessions if s.stats_gap_s]
    if gaps:
        lines += ["", f"edged's stats topic (configured every 1 s) under flood: longest gap {_fmt(gaps, 1)} s."]
    notes = sorted({s.note for s in sessions if s.note})
    if notes:
        lines.append("")
        lines.extend(f"Note: {n}" for n in notes)
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bench_pipeline.py --write: begin -->", "<!-- bench_pipeline.py --write: end -->"


def write_doc(body: str) -> Path:
    """Replace the generated block of docs/BENCHMARKS.md's Pipeline section (notes around it stay)."""
    path = REPO / "docs" / "BENCHMARKS.md"
    block = f"{BEGIN}\n{body.rstrip()}\n{END}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block.rstrip("\n") + text[b:]
    else:
        m = re.search(r"^## Pipeline\s*$", text, flags=re.M)
        if m:
            nxt = re.search(r"^## ", text[m.end():], flags=re.M)
            end = m.end() + nxt.start() if nxt else len(text)
            text = text[: m.start()] + "## Pipeline\n\n" + block + ("\n" if nxt else "") + text[end:]
        else:
            text = text.rstrip() + "\n\n## Pipeline\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# =========================================================================== main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--metrics", type=int, default=1000, help="metric topics")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds, per phase")
    p.add_argument("--warmup", type=float, default=3.0, help="flood seconds before the throughput window")
    p.add_argument("--lat-warmup", type=float, default=2.0, help="paced seconds before the latency window")
    p.add_argument("--repeats", type=int, default=3, help="sessions per (consumer, QoS)")
    p.add_argument("--qos", default="0,1", help="comma-separated QoS levels")
    p.add_argument("--consumers", default="edged,bare", help="comma-separated: edged, bare")
    p.add_argument("--phases", default="latency,throughput", help="comma-separated: latency, throughput")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--offered-rate", type=float, default=60000.0,
                   help="total readings/s offered in the throughput phase (well above what a Python consumer "
                        "takes); 0 = as fast as the broker takes them, which on 2 cores mostly measures how much "
                        "CPU the publishers and the broker take from the consumer")
    p.add_argument("--latency-rate", type=float, default=1.0, help="readings/s per metric in the latency phase")
    p.add_argument("--prefill", type=int, default=35, help="readings per metric before measuring (past learning)")
    p.add_argument("--prefill-rate", type=float, default=5000.0, help="readings/s during the prefill")
    p.add_argument("--max-inflight", type=int, default=100, help="Mosquitto max_inflight_messages (QoS 1)")
    p.add_argument("--max-queued", type=int, default=100000, help="Mosquitto max_queued_messages")
    p.add_argument("--daemon-prefix", default="", help="command prefix for the daemon, e.g. a profiler")
    p.add_argument("--print-pids", action="store_true", help="print the daemon's pid (to attach py-spy)")
    p.add_argument("--json", type=Path, help="also write every session's numbers here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    p.add_argument("--write", action="store_true", help="update the Pipeline section of docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    args.qos = [int(q) for q in args.qos.split(",") if q.strip()]
    args.phases = [c.strip() for c in args.phases.split(",") if c.strip()]
    args.consumers = [c.strip() for c in args.consumers.split(",") if c.strip()]
    if any(q not in (0, 1) for q in args.qos) or any(c not in ("edged", "bare") for c in args.consumers):
        p.error("--qos takes 0,1 and --consumers takes edged,bare")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(MOSQUITTO).exists():
        print(f"mosquitto not found ({MOSQUITTO}); `make mosquitto` installs it", file=sys.stderr)
        return 1
    command = "python tools/bench_pipeline.py" + ("" if argv is None and len(sys.argv) == 1 else " " +
                                                   " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    machine = machine_info()
    machine["edged"], code_hash = code_version()
    tmp = Path(tempfile.mkdtemp(prefix="edged-bench-"))
    sessions: list[Session] = []
    started = time.monotonic()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"bench: {machine['cpu']}, {machine['cores']} cores; temp dir {tmp}")
    try:
        for r in range(args.repeats):
            for qos in args.qos:
                order = args.consumers if r % 2 == 0 else list(reversed(args.consumers))
                for consumer in order:
                    t = time.monotonic()
                    s = run_session(args, tmp, consumer, qos, r, log)
                    sessions.append(s)
                    log(f"  [{r + 1}/{args.repeats}] {consumer:5s} qos{qos}: "
                        f"{(s.rate or 0):8,.0f} readings/s (offered {(s.offered or 0):,.0f}/s, "
                        f"cpu {(s.cpu_pct or 0):.0f} %, broker {(s.broker_cpu_pct or 0):.0f} %, "
                        f"publishers {(s.pub_cpu_pct or 0):.0f} %, others {(s.other_cpu_pct or 0):.0f} %), "
                        f"p50 {s.p50_ms or float('nan'):.1f} ms p99 {s.p99_ms or float('nan'):.1f} ms "
                        f"({s.lat_n}/{s.lat_expected}), rss {s.rss_mib or 0:.0f} MiB "
                        f"events/s {s.events or 0:.0f} / {s.lat_events or 0:.0f} {s.note} [{time.monotonic() - t:.0f} s]")
    except KeyboardInterrupt:
        log("interrupted; reporting what finished")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")
    if not sessions:
        return 1
    elapsed = time.monotonic() - started
    if code_version()[1] != code_hash:
        machine["edged"] += " (WARNING: edged/ changed during the run; sessions mix code versions)"
    body = render(args, sessions, machine, command, elapsed)
    print(body)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "command": command,
                                         "sessions": [s.__dict__ for s in sessions]}, indent=1))
    if args.write:
        log(f"wrote {write_doc(body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
