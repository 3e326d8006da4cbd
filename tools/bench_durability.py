#!/usr/bin/env python3
"""Durability benchmark: QoS 1 reading throughput and fsyncs/s, `relaxed` against `strict`.

Each run starts a private Mosquitto (persistence off, ``max_inflight_messages`` = ``--inflight``,
Mosquitto's default 20) and ``edged run`` as a subprocess with a fresh state dir on the same
disk as this checkout (not /tmp, which may be a RAM disk), then floods it with QoS 1 JSON
readings (``--metrics`` metrics, round robin) from a raw-socket publisher for ``--duration`` s.
Rates come from the daemon's own stats topic (every 1 s): readings applied per second =
Δ``scored`` / Δ``ts``, fsyncs per second = Δ``wal_fsyncs`` / Δ``ts``, readings per fsync =
Δ``wal_records`` / Δ``wal_fsyncs``, over the flood after a 1 s warm-up. Configurations
(``--configs``, mode:protocol) are relaxed over v5, strict over v5 and strict over 3.1.1;
runs alternate them and the table gives the median [min–max] of ``--runs`` runs each.

    .venv/bin/python tools/bench_durability.py            # ~1.5 min on 2 cores
    .venv/bin/python tools/bench_durability.py --write    # also rewrite the Durability section of docs/BENCHMARKS.md

A benchmark, not a test: it asserts nothing and exits 0 unless a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import (REPO, Broker, RawPublisher, _utf8, code_version, cpu_seconds,  # noqa: E402
                            machine_info, start_edged, stop_edged, wait_for)

from edged.wal import BATCH_MAX, COMMIT_DELAY_S  # noqa: E402

NODE = "benchdur"
PREFIX = "benchdur"
DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- bench_durability.py --write: begin -->", "<!-- bench_durability.py --write: end -->"


def _config(tmp: Path, port: int, mode: str, protocol: str, metrics: int) -> Path:
    path = tmp / "edged.toml"
    path.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "{tmp / "state"}"\nstats_interval_s = 1\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nqos = 1\nreconnect_max_s = 1\nprotocol = "{protocol}"\n'
        f'[sensors]\ntopics = ["{PREFIX}/#"]\nmax_metrics = {metrics + 10}\n'
        f'[durability]\nmode = "{mode}"\n[llm]\nenabled = false\n[homeassistant]\ndiscovery = false\n'
        # The built-in detector, as bench_pipeline: the model detector's scoring would dominate
        # the CPU and hide what the durability mode itself costs.
        f'[anomaly]\ndetector = "zscore"\n'
        f'[log]\nlevel = "warning"\nformat = "json"\n'
    )
    return path


class Monitor:
    """Collects the daemon's stats publishes; a reading on <prefix>/_ready shows it is up."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.stats: list[dict] = []
        self.ready = threading.Event()
        root = f"edged/{NODE}"
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-dur-monitor",
                                  protocol=paho.MQTTv5)

        def on_message(c, u, msg):
            if msg.topic == f"{root}/stats" and not msg.retain:
                self.stats.append(json.loads(msg.payload))
            elif msg.topic == f"{root}/state/_ready":
                self.ready.set()

        subscribed = threading.Event()
        self.client.on_message = on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(f"{root}/stats", 0), (f"{root}/state/_ready", 1)])
        subscribed.wait(10)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError("edged did not come up")
            self.client.publish(f"{PREFIX}/_ready", json.dumps({"value": 1, "ts": time.time()}), qos=1)
            self.ready.wait(0.5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _delta(samples: list[dict], key: str, t0: float, t1: float) -> tuple[float, float] | None:
    inside = [s for s in samples if t0 <= s["ts"] <= t1]
    if len(inside) < 2 or inside[-1]["ts"] - inside[0]["ts"] < 0.5:
        return None
    return inside[-1].get(key, 0) - inside[0].get(key, 0), inside[-1]["ts"] - inside[0]["ts"]


def run_once(args, config: str, parent: Path) -> dict:
    mode, protocol = config.split(":")
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-dur-{mode}-", dir=parent))
    broker = Broker(tmp, max_inflight=args.inflight, max_queued=1_000_000).start()
    conf = _config(tmp, broker.port, mode, protocol, args.metrics)
    daemon = start_edged(conf, tmp)
    monitor = Monitor(broker.port)
    try:
        monitor.wait_ready()
        pub = RawPublisher(broker.port, f"bench-dur-pub-{mode}", qos=1, max_unacked=5000)
        topics = [_utf8(f"{PREFIX}/m{j:04d}") for j in range(args.metrics)]
        t_start = time.time()
        cpu0 = cpu_seconds(daemon.pid)
        k, sent = 0, 0
        while time.time() - t_start < args.duration:
            now = time.time()
            packets = []
            for _ in range(200):
                value = 20.0 + ((sent * 7919) % 1000) / 1000.0
                packets.append(pub.packet(topics[k], b'{"value": %.3f, "ts": %.6f}' % (value, now + sent * 1e-6)))
                k = (k + 1) % args.metrics
                sent += 1
            pub.send(packets)
        t_end = time.time()
        cpu1 = cpu_seconds(daemon.pid)
        wait_for(lambda: any(s["ts"] >= t_end for s in monitor.stats), 10, "the stats after the flood")
        pub.close()
        t0 = t_start + 1.0  # warm-up
        scored = _delta(monitor.stats, "scored", t0, t_end + 0.5)
        fsyncs = _delta(monitor.stats, "wal_fsyncs", t0, t_end + 0.5)
        records = _delta(monitor.stats, "wal_records", t0, t_end + 0.5)
        last = monitor.stats[-1]
        return {
            "config": config,
            "readings_per_s": scored[0] / scored[1] if scored else None,
            "fsyncs_per_s": fsyncs[0] / fsyncs[1] if fsyncs else None,
            "readings_per_fsync": records[0] / fsyncs[0] if records and fsyncs and fsyncs[0] else None,
            "cpu_pct": 100 * (cpu1 - cpu0) / (t_end - t_start) if cpu0 is not None and cpu1 is not None else None,
            "dropped": last.get("dropped", 0),
            "published": sent,
        }
    finally:
        monitor.close()
        stop_edged(daemon)
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _fmt(values: list[float | None], digits: int = 0) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(statistics.median(vals))} [{f.format(min(vals))}–{f.format(max(vals))}]"


def render(args, runs: list[dict], machine: dict, command: str, elapsed: float, load: tuple[float, float]) -> str:
    version, _ = code_version()
    lines = [
        BEGIN,
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']} RAM, Linux {machine['kernel']}; "
        f"Python {machine['python']}, paho-mqtt {machine['paho']}, Mosquitto {machine['mosquitto']}; edged at {version}; "
        f"state dir on the checkout's file system. Load average (1 min) before / after the runs: {load[0]:.1f} / "
        f"{load[1]:.1f} (other processes share the machine: compare the modes within this table only).",
        "",
        f"Command: `{command}` ({elapsed:.0f} s; {args.runs} runs per configuration, alternating; median [min–max]).",
        "",
        f"Load: QoS 1 JSON readings `{{\"value\", \"ts\"}}` on {args.metrics} metrics from one raw-socket publisher, "
        f"as fast as the broker takes them, for {args.duration:g} s (the first second is not measured). "
        f"Broker: `max_inflight_messages {args.inflight}` (Mosquitto's default); over MQTT v5 edged in strict mode "
        f"also announces a Receive Maximum of `mqtt.max_inflight_messages` (1000). Group commit: after "
        f"{COMMIT_DELAY_S * 1000:g} ms or {BATCH_MAX} readings, whichever first.",
        "",
        "| mode | protocol | readings/s | fsyncs/s | readings per fsync | edged CPU % | dropped |",
        "|---|---|---|---|---|---|---|",
    ]
    for config in args.configs.split(","):
        rows = [r for r in runs if r["config"] == config]
        if not rows:
            continue
        mode, protocol = config.split(":")
        lines.append(f"| {mode} | {protocol} | {_fmt([r['readings_per_s'] for r in rows])} | {_fmt([r['fsyncs_per_s'] for r in rows])} | "
                     f"{_fmt([r['readings_per_fsync'] for r in rows], 1)} | {_fmt([r['cpu_pct'] for r in rows])} | "
                     f"{_fmt([r['dropped'] for r in rows])} |")
    lines.append(END)
    return "\n".join(lines)


def write_doc(body: str) -> None:
    text = DOC.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + body + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Durability\n\n" + body + "\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per configuration (default 3)")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds of flood per run (default 6)")
    ap.add_argument("--metrics", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=20, help="Mosquitto max_inflight_messages (default 20, its own default)")
    ap.add_argument("--configs", default="relaxed:v5,strict:v5,strict:v311",
                    help="mode:protocol pairs, comma-separated (default relaxed:v5,strict:v5,strict:v311)")
    ap.add_argument("--write", action="store_true", help="rewrite the Durability section of docs/BENCHMARKS.md")
    ap.add_argument("--json", type=Path, help="also write the raw runs here")
    args = ap.parse_args(argv)
    configs = args.configs.split(",")
    machine = machine_info()
    print(f"machine: {machine}", flush=True)
    parent = REPO / ".bench-tmp"
    parent.mkdir(exist_ok=True)
    runs: list[dict] = []
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    try:
        for i in range(args.runs):
            order = configs if i % 2 == 0 else list(reversed(configs))
            for config in order:
                r = run_once(args, config, parent)
                runs.append(r)
                print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    command = "python tools/bench_durability.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    body = render(args, runs, machine, command.strip(), time.monotonic() - t0, (load0, os.getloadavg()[0]))
    print(body)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2))
    if args.write:
        write_doc(body)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
