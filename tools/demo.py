#!/usr/bin/env python3
"""`make demo`: a private broker, the edged daemon, simulated sensors and a readable view.

What it starts, each in its own process group (Ctrl-C reaches only this script, which then
stops everything in order):

1. Mosquitto on a free port of 127.0.0.1 with a temporary config -- or, with ``--host`` /
   ``--port``, an existing broker (nothing is started then; the daemon also sees whatever else
   is published under ``sensors/#`` there, and retained topics under ``edged/demo/`` stay on
   that broker afterwards);
2. ``python -m edged run`` with a temporary config (node id ``demo``, state_dir in a temp
   dir, stats every 10 s, a short learning phase so events appear within ~30-40 s);
3. ``python -m edged simulate``: 10 metrics over 4 devices (one device per payload format:
   bare number, JSON value, Zigbee2MQTT-style object, SenML pack), 2 readings/s per metric,
   anomalies (spike, shift, stuck, dropout) injected every ~40 s per metric;
4. a subscriber on ``edged/demo/#`` that prints what edged publishes, one readable line per
   message (colours only on a terminal; ``NO_COLOR`` turns them off).

It also sends one malformed reading (to show the ``error`` topic) and one ``status`` request
(to show request/response). Runs until Ctrl-C, or for ``DEMO_SECONDS`` seconds when that
environment variable (or ``--seconds``) is > 0; then stops the simulator, sends SIGTERM to the
daemon, shows its ``offline``, stops the broker and exits 0 (1 when the daemon failed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODE = "demo"
BASE = f"edged/{NODE}"
SIM_PREFIX = "sensors/sim"  # the daemon keeps the default sensors/#: metric names are sim/room1/temperature, ...
BAD_TOPIC = f"{SIM_PREFIX}/garage/temperature"

try:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError:  # pragma: no cover - run outside the venv
    sys.exit("demo: paho-mqtt is missing. Run `make demo` (it creates .venv and installs edged), "
             "or .venv/bin/python tools/demo.py")


# --------------------------------------------------------------------------- output


class Out:
    """Thread-safe printing; ANSI colours only on a terminal without NO_COLOR."""

    def __init__(self, color: bool) -> None:
        self.color = color
        self.lock = threading.Lock()
        self.width = max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))

    def c(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color and code else text

    def line(self, tag: str, text: str, code: str = "", tag_code: str = "") -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.lock:
            print(f"{self.c(stamp, '2')} {self.c(f'{tag:<8}', tag_code or code)} {self.c(text, code) if code and not tag_code else text}",
                  flush=True)

    def cont(self, text: str, code: str = "") -> None:
        """A continuation line, indented under the text column."""
        with self.lock:
            print(" " * 18 + self.c(text, code), flush=True)

    def note(self, text: str) -> None:
        with self.lock:
            print(self.c(f"demo: {text}", "2"), flush=True)


BOLD, DIM, RED, GREEN, YELLOW, BLUE, MAGENTA, CYAN = "1", "2", "31", "32", "33", "34", "35", "36"
STATUS_CODE = {"ok": GREEN, "learning": DIM, "anomalous": RED + ";1", "stale": YELLOW, "muted": MAGENTA}


def fmt_num(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    a = abs(v)
    if a >= 1000 or float(v).is_integer():
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if a >= 0.1 else f"{v:.3g}"


def _secs(v) -> str:
    return f"{round(v, 1):g}" if isinstance(v, (int, float)) else "?"


def fmt_val(v, unit) -> str:
    text = fmt_num(v)
    if unit and v is not None:
        text += unit if unit in ("%", "°C", "°F") else f" {unit}"
    return text


class View:
    """Turns edged's publications into lines. States: one line when a metric's status changes,
    plus an overview of every metric every ``overview_s`` seconds (or every publish with --all-states)."""

    def __init__(self, out: Out, all_states: bool, overview_s: float, raw: bool = False) -> None:
        self.out = out
        self.raw = raw
        self.all_states = all_states
        self.overview_s = overview_s
        self.states: dict[str, dict] = {}
        self.counts = {"state": 0, "start": 0, "end": 0, "error": 0, "stats": 0}
        self.offline = threading.Event()
        self.online = threading.Event()
        self._next_overview = time.monotonic() + overview_s
        self._lock = threading.Lock()

    def on_message(self, client, userdata, msg) -> None:
        try:
            self.show(msg.topic, bytes(msg.payload), bool(msg.retain))
            if self.raw:
                flag = " (retained)" if msg.retain else ""
                self.out.cont(f"{msg.topic}{flag} {bytes(msg.payload).decode('utf-8', 'replace')}", DIM)
        except Exception as exc:  # never let a display bug kill paho's thread
            self.out.line("?", f"{msg.topic}: {bytes(msg.payload)[:200]!r} ({type(exc).__name__}: {exc})")

    def show(self, topic: str, payload: bytes, retained: bool) -> None:
        rest = topic[len(BASE) + 1:] if topic.startswith(BASE + "/") else topic
        kind, _, name = rest.partition("/")
        text = payload.decode("utf-8", "replace")
        old = self.out.c(" (retained, from before)", DIM) if retained and kind in ("status", "stats") else ""
        if kind == "status":
            if text == "online":
                self.online.set()
                self.out.line("status", f"online{old}", GREEN + ";1")
            else:
                if not retained:
                    self.offline.set()
                self.out.line("status", f"{text}{old}", RED + ";1")
        elif kind == "state":
            self.state(name, json.loads(payload))
        elif kind == "anomaly":
            self.anomaly(json.loads(payload))
        elif kind == "stats":
            self.stats(json.loads(payload), old)
        elif kind == "error":
            self.counts["error"] += 1
            e = json.loads(payload)
            self.out.line("error", f"{e.get('topic')}: {e.get('reason')} – {e.get('detail')} (count {e.get('count')})", YELLOW)
        elif kind in ("request", "response"):
            self.out.line(kind, f"{name} {text[:self.out.width - 30]}", CYAN)
        else:
            self.out.line(kind[:8] or "?", f"{rest} {text[:200]}")

    # ---------------------------------------------------------------- states
    def state(self, metric: str, s: dict) -> None:
        self.counts["state"] += 1
        with self._lock:
            before = self.states.get(metric, {}).get("status")
            self.states[metric] = s
            overview_due = time.monotonic() >= self._next_overview
            if overview_due:
                self._next_overview = time.monotonic() + self.overview_s
        status = s.get("status")
        if self.all_states or status != before:
            score = f"score {s['score']:.2f}" if isinstance(s.get("score"), (int, float)) else "score –"
            arrow = f"{before} → " if before and before != status else ""
            self.out.line("state", f"{metric:<22} {fmt_val(s.get('value'), s.get('unit')):>12}  {score:<10} "
                          + self.out.c(f"{arrow}{status}", STATUS_CODE.get(status, "")), tag_code=BLUE)
        if overview_due:
            self.overview()

    def overview(self) -> None:
        with self._lock:
            items = sorted(self.states.items())
        parts = [f"{m} {fmt_val(s.get('value'), s.get('unit'))} " + self.out.c(str(s.get("status")), STATUS_CODE.get(s.get("status"), ""))
                 for m, s in items]
        plain = [f"{m} {fmt_val(s.get('value'), s.get('unit'))} {s.get('status')}" for m, s in items]
        lines, cur, cur_len = [], [], 0
        for part, p in zip(parts, plain):
            if cur and cur_len + len(p) + 3 > self.out.width - 18:
                lines.append(" · ".join(cur))
                cur, cur_len = [], 0
            cur.append(part)
            cur_len += len(p) + 3
        if cur:
            lines.append(" · ".join(cur))
        if lines:
            self.out.line("states", lines[0], tag_code=BLUE)
            for ln in lines[1:]:
                self.out.cont(ln)

    # ---------------------------------------------------------------- events
    def anomaly(self, e: dict) -> None:
        ev = e.get("event")
        if ev in self.counts:
            self.counts[ev] += 1
        what = f"{e.get('kind')} {e.get('metric')}"
        if ev == "start":
            score = f"score {e['score']:.2f}" if isinstance(e.get("score"), (int, float)) else ""
            detail = f"{what}  {score}  direction {e.get('direction')}  id {e.get('id')}"
            self.out.line("ANOMALY", self.out.c("start ", RED + ";1") + detail, tag_code=RED + ";1")
        elif ev == "end":
            detail = f"{what}  after {_secs(e.get('duration_s'))} s  peak {fmt_val(e.get('peak'), e.get('unit'))}  id {e.get('id')}"
            self.out.line("anomaly", self.out.c("end   ", GREEN + ";1") + detail, tag_code=GREEN)
        else:
            self.out.line("anomaly", f"{ev} {what}  id {e.get('id')}", tag_code=MAGENTA)
        for ln in textwrap.wrap(f"» {e.get('summary')}", self.out.width - 20) or [""]:
            self.out.cont(ln, YELLOW + ";1" if ev == "start" else BOLD)

    def stats(self, s: dict, old: str) -> None:
        self.counts["stats"] += 1
        status = ", ".join(f"{k} {v}" for k, v in sorted((s.get("status") or {}).items())) or "–"
        lat = (s.get("ingest_latency") or {}).get("p50_ms")
        rej = s.get("rejected_total", 0)
        text = (f"readings {s.get('readings', 0)} · metrics {s.get('metrics', 0)} ({status}) · open episodes "
                f"{s.get('open_episodes', 0)} · events {s.get('events_start', 0)} start/{s.get('events_end', 0)} end · "
                f"rejected {rej} · excluded {s.get('excluded', 0)} · dropped {s.get('dropped', 0)} · "
                f"ingest p50 {fmt_num(lat)} ms{old}")
        self.out.line("stats", text, DIM)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def _child_setup() -> None:
    """In the child: own process group (Ctrl-C goes to the demo only); die with the demo on Linux."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(cmd: list[str], log_file: Path, *, env: dict | None = None, pipe_stderr: bool = False) -> subprocess.Popen:
    fh = open(log_file, "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh,
                            stderr=subprocess.PIPE if pipe_stderr else subprocess.STDOUT,
                            env=env, cwd=REPO, preexec_fn=_child_setup)
    fh.close()
    return proc


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(p, os.X_OK):
            return p
    return None


def stop_proc(proc: subprocess.Popen | None, sig: int, timeout: float) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except ProcessLookupError:
            pass
    return proc.returncode


def pump_daemon_log(proc: subprocess.Popen, log_file: Path, out: Out) -> None:
    """Copy the daemon's JSON log lines to a file; show warnings and errors as they happen."""
    with open(log_file, "ab") as fh:
        for raw in iter(proc.stderr.readline, b""):
            fh.write(raw)
            fh.flush()
            try:
                entry = json.loads(raw)
            except ValueError:
                out.line("edged", raw.decode("utf-8", "replace").rstrip(), DIM)
                continue
            level = entry.get("level")
            if level in ("warning", "error", "critical"):
                extras = {k: v for k, v in entry.items() if k not in ("event", "level", "logger", "timestamp")}
                detail = " ".join(f"{k}={v}" for k, v in extras.items())
                out.line("log", f"{level}: {entry.get('event')} {detail}"[: out.width - 20], YELLOW if level == "warning" else RED)


def daemon_config(state_dir: Path, host: str, port: int, learning: int) -> str:
    return f"""\
# Written by tools/demo.py for one demo run.
[node]
id = "{NODE}"
state_dir = "{state_dir}"
stats_interval_s = 10

[mqtt]
host = "{host}"
port = {port}
reconnect_max_s = 2

[sensors]
# topics keeps its default ["sensors/#"], so the simulator's sensors/sim/room1/temperature
# becomes the metric sim/room1/temperature. The simulated dropouts last 6-12 s: let them
# count as silence (the default floor of 30 s suits real sensors, not a one-minute demo).
min_silence_s = 4

[llm]
enabled = false   # no model is installed for the demo; answers and summaries use templates

[anomaly]
# The one-minute demo uses the built-in z-score: the default model detector learns each metric
# for 150 readings and a day of data time, longer than the demo runs.
detector = "zscore"
learning_readings = {learning}
"""


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env_seconds = os.environ.get("DEMO_SECONDS", "0").strip() or "0"
    try:
        default_seconds = float(env_seconds)
    except ValueError:
        sys.exit(f"demo: DEMO_SECONDS={env_seconds!r} is not a number")
    ap = argparse.ArgumentParser(description="edged demo: broker + daemon + simulated sensors + a readable view.")
    ap.add_argument("--host", help="use this existing broker instead of starting Mosquitto")
    ap.add_argument("--port", type=int, help="port of the existing broker (default 1883 with --host)")
    ap.add_argument("--seconds", type=float, default=default_seconds,
                    help="stop after this many seconds; 0: until Ctrl-C (default: $DEMO_SECONDS or 0)")
    ap.add_argument("--metrics", type=int, default=10, help="simulated metrics (10 covers all four payload formats)")
    ap.add_argument("--rate", type=float, default=2.0, help="readings per second per metric")
    ap.add_argument("--anomaly-every", type=float, default=40.0, help="seconds between injected anomalies per metric")
    ap.add_argument("--learning", type=int, default=20, help="[anomaly] learning_readings for the demo daemon")
    ap.add_argument("--seed", type=int, default=7, help="simulator seed")
    ap.add_argument("--all-states", action="store_true", help="print every state publish (about one per metric per second)")
    ap.add_argument("--raw", action="store_true", help="also print every topic and raw payload")
    ap.add_argument("--overview-every", type=float, default=15.0, help="seconds between overviews of all states")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) afterwards")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Out(color=sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb")

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)

    tmp = Path(tempfile.mkdtemp(prefix="edged-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}  # the demo's config only
    broker = daemon = sim = None
    sub: paho.Client | None = None
    view = View(out, args.all_states, args.overview_every, args.raw)
    pump: threading.Thread | None = None
    rc_daemon: int | None = None
    failed = False
    try:
        # 1. the broker
        if args.host or args.port:
            host, port = args.host or "127.0.0.1", args.port or 1883
            if not port_open(host, port):
                out.note(f"no MQTT broker answers at {host}:{port}")
                return 1
            out.note(f"using the broker at {host}:{port} (retained topics under {BASE}/ stay there)")
        else:
            mosq = find_mosquitto()
            if not mosq:
                out.note("mosquitto is not installed: `make demo` installs it (apt-get), "
                         "or pass --host/--port of a running broker")
                return 1
            host, port = "127.0.0.1", free_port()
            conf = tmp / "mosquitto.conf"
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n")
            broker = spawn([mosq, "-c", str(conf)], tmp / "mosquitto.log")
            deadline = time.monotonic() + 10
            while not port_open(host, port):
                if broker.poll() is not None or time.monotonic() > deadline:
                    out.note(f"mosquitto did not start:\n{(tmp / 'mosquitto.log').read_text(errors='replace')}")
                    return 1
                time.sleep(0.05)
            out.note(f"started mosquitto on {host}:{port}")

        # 2. the subscriber, before the daemon, so it sees `online`
        sub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"edged-demo-view-{os.getpid()}",
                          protocol=paho.MQTTv311)
        sub.on_message = view.on_message
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{BASE}/#", qos=1)
        sub.connect(host, port, keepalive=30)
        sub.loop_start()
        if not subscribed.wait(10):
            out.note("the subscriber could not subscribe")
            return 1

        # 3. the daemon
        config = tmp / "edged-demo.toml"
        state_dir = tmp / "state"
        config.write_text(daemon_config(state_dir, host, port, args.learning))
        out.note(f"config {config}, logs in {tmp}")
        daemon = spawn([sys.executable, "-m", "edged", "run", "--config", str(config), "--log-format", "json"],
                       tmp / "edged.out", env=env, pipe_stderr=True)
        pump = threading.Thread(target=pump_daemon_log, args=(daemon, tmp / "edged.log", out), daemon=True)
        pump.start()
        deadline = time.monotonic() + 30
        while not view.online.wait(0.1):
            if daemon.poll() is not None or time.monotonic() > deadline:
                pump.join(2)
                out.note(f"edged did not come online (exit code {daemon.poll()}); its log:\n"
                         + (tmp / "edged.log").read_text(errors="replace")[-4000:])
                failed = True
                return 1

        # 4. the simulator
        sim_cmd = [sys.executable, "-m", "edged", "simulate", "--config", str(config), "--host", host,
                   "--port", str(port), "--prefix", SIM_PREFIX, "--metrics", str(args.metrics),
                   "--rate", str(args.rate), "--duration", "0", "--format", "mixed",
                   "--anomaly-every", str(args.anomaly_every), "--seed", str(args.seed), "--quiet"]
        sim = spawn(sim_cmd, tmp / "simulate.log", env=env)
        out.note(f"simulating {args.metrics} metrics at {args.rate:g} readings/s each, anomalies every "
                 f"~{args.anomaly_every:g} s per metric; learning takes {args.learning} readings. "
                 + (f"Stopping after {args.seconds:g} s." if args.seconds > 0 else "Ctrl-C stops."))

        # 5. wait, with two small extras: a malformed reading and a status request
        started = time.monotonic()
        extras = [(6.0, lambda: sub.publish(BAD_TOPIC, b"n/a", qos=1)),
                  (15.0, lambda: sub.publish(f"{BASE}/request/status", json.dumps({"transaction": "demo-1"}), qos=1))]
        while True:
            elapsed = time.monotonic() - started
            while extras and elapsed >= extras[0][0]:
                extras.pop(0)[1]()
            if args.seconds > 0 and elapsed >= args.seconds:
                break
            if daemon.poll() is not None:
                out.note(f"edged exited unexpectedly with code {daemon.returncode} (log: {tmp / 'edged.log'})")
                failed = True
                break
            if sim.poll() is not None:
                out.note(f"the simulator exited with code {sim.returncode}: "
                         + (tmp / "simulate.log").read_text(errors="replace")[-2000:])
                failed = True
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        if out.color:
            print()
        out.note("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the shutdown below is bounded; let it finish
        try:
            if sim is not None:
                stop_proc(sim, signal.SIGINT, 5)
            if daemon is not None and daemon.poll() is None:
                out.note("stopping edged (SIGTERM)")
                rc_daemon = stop_proc(daemon, signal.SIGTERM, 20)
                if sub is not None:
                    view.offline.wait(5)
            elif daemon is not None:
                rc_daemon = daemon.returncode
            if pump is not None:
                pump.join(2)
            time.sleep(0.2)  # let the last messages print
            if sub is not None:
                sub.disconnect()
                sub.loop_stop()
            if broker is not None:
                stop_proc(broker, signal.SIGTERM, 5)
        finally:
            c = view.counts
            if daemon is not None:
                out.note(f"edged exited with code {rc_daemon}; seen: {c['state']} state publishes, "
                         f"{c['start']} anomaly starts, {c['end']} ends, {c['error']} error reports, {c['stats']} stats")
            if args.keep or failed or (rc_daemon not in (None, 0)):
                out.note(f"configs and logs kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed or rc_daemon not in (None, 0) else 0


if __name__ == "__main__":
    sys.exit(main())
