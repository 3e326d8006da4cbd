"""How long an anomaly's LM-worded `summary` event trails its `start` event, in the daemon.

A private Mosquitto and `edged run` with a built language model loaded at start (built-in
z-score detector, learning 20 readings, data clock). For each of ``--episodes`` metrics in turn,
a probe publishes 30 steady readings and one spike, then times the `start` event's arrival and
the `summary` event's arrival (same episode id). Reports p50/p95/max of the delay and how many
summaries came (the guard may reject a wording: then no summary follows, by design).

    .venv/bin/python tools/bench_summary.py --llm /var/lib/edged/models/smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import Broker, _paho_client, machine_info, percentile, start_edged, stop_edged, wait_for  # noqa: E402

NODE = "sumbench"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llm", type=Path, required=True, help="a built model directory")
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lookup", type=int, help="[llm] lookup_tokens (0: one token per pass; default: the daemon's)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for one summary")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="edged-bench-summary-"))
    broker = Broker(tmp, max_inflight=20, max_queued=100000).start()
    cfg = tmp / "edged.toml"
    lookup_line = "" if args.lookup is None else f"lookup_tokens = {args.lookup}\n"
    cfg.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "{tmp / "state"}"\nclock = "data"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[anomaly]\ndetector = "zscore"\nlearning_readings = 20\n'
        f'[llm]\nenabled = true\nload = "start"\nthreads = {args.threads}\n{lookup_line}model = "{args.llm.name}"\n'
        f'[models]\ndir = "{args.llm.parent}"\n[log]\nlevel = "warning"\n'
    )
    daemon = start_edged(cfg, tmp)
    events: dict[tuple[str, str], float] = {}
    lock = threading.Lock()
    client = _paho_client(f"sumbench-{os.getpid()}")

    def on_message(c, u, m):
        if m.topic == f"edged/{NODE}/status":
            with lock:
                events[("status", m.payload.decode())] = time.monotonic()
            return
        ev = json.loads(m.payload)
        with lock:
            events.setdefault((ev["id"], ev["event"]), time.monotonic())

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(f"edged/{NODE}/anomaly/#", 1), (f"edged/{NODE}/status", 1)])
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    delays: list[float] = []
    missing = 0
    seen_starts: set[str] = set()

    def new_start():
        with lock:
            return next(((eid, t) for (eid, kind), t in events.items() if kind == "start" and eid not in seen_starts), None)

    try:
        wait_for(lambda: ("status", "online") in events or daemon.poll() is not None, 120, "edged online")
        t0 = 1_750_000_000.0
        for k in range(args.episodes):
            metric = f"sensors/bench/m{k:02d}"
            for i in range(31):
                value = 20.0 + (i % 4) * 0.1 if i < 30 else 95.0 + k
                client.publish(metric, json.dumps({"value": value, "ts": t0 + 60 * i}), qos=1)
            start_id, t_start = wait_for(new_start, 30, "a start event")
            seen_starts.add(start_id)
            try:
                t_sum = wait_for(lambda: events.get((start_id, "summary")), args.timeout, "its summary")
                delays.append(t_sum - t_start)
            except TimeoutError:
                missing += 1
            t0 += 31 * 60
    finally:
        client.disconnect()
        client.loop_stop()
        stop_edged(daemon, 30)
        broker.stop()
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; model {args.llm}, {args.threads} threads")
    print(f"episodes {args.episodes}: summaries {len(delays)}, none within {args.timeout:.0f} s {missing}")
    if delays:
        ms = [d * 1000 for d in delays]
        print(f"start -> summary: p50 {statistics.median(ms):.0f} ms, p95 {percentile(ms, 95):.0f} ms, max {max(ms):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
