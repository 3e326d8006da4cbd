"""Flood run (issue 6, item 3): edged offered the highest rate this machine produces, for 60 s.

A private Mosquitto, edged (``python -m edged run``, built-in detector), and ``--publishers``
separate processes that publish pre-encoded QoS 0 readings over raw MQTT 3.1.1 sockets as
fast as the broker takes them (no cap: the offered rate is this machine's highest). Meanwhile
a requester process sends ``request/status`` every ``--request-every`` s with a deadline and
times each reply, and edged's RSS is sampled from /proc.

Reports: the offered rate (what the publishers got into the broker), readings applied and
dropped per second (from edged's stats topic, where the drops are counted), peak RSS and RSS
over time (bounded = flat), and the requests answered within their deadline.

    .venv/bin/python tools/flood.py                      # 60 s, ~75 s in all
    .venv/bin/python tools/flood.py --seconds 20 --json /tmp/flood.json

A benchmark, not a test: exits 0 unless the run itself fails; --check makes it exit 1 when a
request went unanswered within its deadline or edged died.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import (  # noqa: E402 - tools share the benchmark's broker and publishers
    Broker,
    start_edged,
    stop_edged,
    RawPublisher,
    _paho_client,
    _utf8,
    _value,
    machine_info,
    vm_hwm_bytes,
    wait_for,
)

NODE = "flood"
PREFIX = "flood"


def publisher(index: int, port: int, metrics: int, stop, sent) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pub = RawPublisher(port, f"flood-pub-{index}-{os.getpid()}", qos=0)
    topics = [_utf8(f"{PREFIX}/m{j:04d}") for j in range(index, metrics, 2)] or [_utf8(f"{PREFIX}/m0000")]
    seq = 0
    while not stop.is_set():
        now = time.time()
        packets = [pub.packet(t, b'{"value": %.3f, "ts": %.6f}' % (_value(seq, i), now)) for i, t in enumerate(topics[:200])]
        topics = topics[200:] + topics[:200]
        pub.send(packets)
        seq += 1
        sent.value += len(packets)
    pub.close()


def requester(port: int, every: float, deadline_s: float, stop, out_path: str) -> None:
    """request/status every ``every`` s; each reply's latency, or None when it never came."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = f"edged/{NODE}"
    replies: dict[str, float] = {}
    client = _paho_client(f"flood-req-{os.getpid()}")
    client.on_message = lambda c, u, m: replies.setdefault(json.loads(m.payload).get("transaction", ""), time.monotonic())
    subscribed = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{root}/response/#", 1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    subscribed.wait(10)
    sent: dict[str, float] = {}
    n = 0
    while not stop.is_set():
        tx = f"r{n}"
        sent[tx] = time.monotonic()
        client.publish(f"{root}/request/status", json.dumps({"transaction": tx}), qos=1)
        n += 1
        stop.wait(every)
    time.sleep(deadline_s)  # the last requests' deadline
    client.disconnect()
    client.loop_stop()
    latencies = [(replies[tx] - t) if tx in replies else None for tx, t in sent.items()]
    Path(out_path).write_text(json.dumps(latencies))


def stats_watcher(port: int, stop, out_path: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rows: list[dict] = []
    client = _paho_client(f"flood-stats-{os.getpid()}")

    def on_message(c, u, m):
        if not m.retain:
            s = json.loads(m.payload)
            rows.append({"recv": time.time(), **{k: s.get(k) for k in ("ts", "readings", "scored", "dropped", "queue_depth", "broker_dropped")}})

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"edged/{NODE}/stats", 0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    Path(out_path).write_text(json.dumps(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="flood duration")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--metrics", type=int, default=1000, help="metric topics")
    ap.add_argument("--request-every", type=float, default=1.0, help="seconds between status requests")
    ap.add_argument("--deadline", type=float, default=5.0, help="a request's deadline, seconds")
    ap.add_argument("--queue-size", type=int, default=0, help="edged's sensors.queue_size (0: its default)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--check", action="store_true", help="exit 1 when a request missed its deadline or edged died")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="edged-flood-"))
    broker = Broker(tmp, max_inflight=100, max_queued=100000, extra="sys_interval 1\n").start()
    cfg = tmp / "edged.toml"
    queue = f"queue_size = {args.queue_size}\n" if args.queue_size else ""
    cfg.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "{tmp / "state"}"\nstats_interval_s = 1\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nqos = 0\nreconnect_max_s = 1\n'
        f'[sensors]\ntopics = ["{PREFIX}/#"]\nmax_metrics = {args.metrics + 10}\n{queue}'
        f'[log]\nlevel = "warning"\nformat = "json"\n'
    )
    daemon = start_edged(cfg, tmp)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    sent = [ctx.Value("q", 0, lock=False) for _ in range(args.publishers)]
    watcher = ctx.Process(target=stats_watcher, args=(broker.port, stop, str(tmp / "stats.json")))
    watcher.start()
    try:
        wait_for(lambda: (tmp / "state").exists() or daemon.poll() is not None, 30, "edged to start")
        if daemon.poll() is not None:
            raise RuntimeError(f"edged exited with {daemon.returncode}; see {tmp / 'edged.log'}")
        req = ctx.Process(target=requester, args=(broker.port, args.request_every, args.deadline, stop, str(tmp / "req.json")))
        req.start()
        time.sleep(2)  # edged and the requester settle before the flood
        pubs = [ctx.Process(target=publisher, args=(i, broker.port, args.metrics, stop, sent[i])) for i in range(args.publishers)]
        for p in pubs:
            p.start()
        t0 = time.monotonic()
        rss: list[tuple[float, float]] = []
        while time.monotonic() - t0 < args.seconds and daemon.poll() is None:
            time.sleep(0.5)
            try:
                current = int(Path(f"/proc/{daemon.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:
                break
            rss.append((time.monotonic() - t0, current / 2**20))
        elapsed = time.monotonic() - t0
        offered = sum(s.value for s in sent)
        peak = (vm_hwm_bytes(daemon.pid) or 0) / 2**20
        alive = daemon.poll() is None
        stop.set()
        for p in pubs:
            p.join(10)
        req.join(args.deadline + 15)
        watcher.join(10)
    finally:
        stop.set()
        stop_edged(daemon)
        broker.stop()

    stats = json.loads((tmp / "stats.json").read_text()) if (tmp / "stats.json").exists() else []
    latencies = json.loads((tmp / "req.json").read_text()) if (tmp / "req.json").exists() else []
    answered = [x for x in latencies if x is not None]
    in_time = [x for x in answered if x <= args.deadline]
    window = [r for r in stats if r["scored"] is not None]
    applied = dropped = broker_dropped = None
    if len(window) >= 2:
        a, b = window[0], window[-1]
        span = (b["ts"] - a["ts"]) or 1.0
        applied = (b["scored"] - a["scored"]) / span
        dropped = ((b["dropped"] or 0) - (a["dropped"] or 0)) / span
        if a.get("broker_dropped") is not None and b.get("broker_dropped") is not None:
            broker_dropped = (b["broker_dropped"] - a["broker_dropped"]) / span
    first = [m for t, m in rss if t <= 10]
    last = [m for t, m in rss if t >= elapsed - 10]
    machine = machine_info()
    result = {
        "machine": f"{machine.get('cpu')}, {machine.get('cores')} cores, Python {machine.get('python')}",
        "seconds": round(elapsed, 1), "publishers": args.publishers, "metrics": args.metrics,
        "offered_per_s": round(offered / elapsed), "applied_per_s": round(applied) if applied else None,
        "dropped_per_s": round(dropped) if dropped is not None else None,
        "dropped_total": window[-1]["dropped"] if window else None,
        "broker_dropped_per_s": round(broker_dropped) if broker_dropped is not None else None,
        "peak_rss_mib": round(peak, 1),
        "rss_first_10s_max_mib": round(max(first), 1) if first else None,
        "rss_last_10s_max_mib": round(max(last), 1) if last else None,
        "requests": len(latencies), "answered": len(answered), "answered_in_deadline": len(in_time),
        "request_p50_ms": round(statistics.median(answered) * 1000, 1) if answered else None,
        "request_max_ms": round(max(answered) * 1000, 1) if answered else None,
        "deadline_s": args.deadline, "edged_alive": alive, "workdir": str(tmp),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.check and (not alive or len(in_time) < len(latencies)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
