#!/usr/bin/env python3
"""`ask` benchmark: in-daemon latency of local answers, the cloud path's overhead, and the
`edged ask` round trip, through a private Mosquitto and a local OpenAI-compatible server.

Set-up (all on this machine, nothing leaves 127.0.0.1):

- a private Mosquitto on a free port with a temporary config;
- a tiny OpenAI-compatible ``POST /v1/chat/completions`` server in this process that answers
  every request after a fixed, known delay (``--cloud-delay``, 0.25 s), and times itself from
  the moment the request's headers were read to the moment its answer was written;
- ``edged run`` as a subprocess (``node.clock = "data"``, TZ=UTC, ``[llm] enabled = false``
  so local answers are the templates, ``[cloud]`` pointed at that server, no retries), fed the
  question set's scenario (tests/data/scenario.py, 14,249 readings) before anything is asked.

Measured, in ``--runs`` runs (each asks every question of tests/data/questions.jsonl once,
one at a time, from a paho v5 client with a response topic and correlation data):

1. local template answers (the questions labelled ``local``): the reply's ``latency_ms``
   (request received by the daemon's MQTT thread → reply ready to publish) and the client's
   MQTT round trip (publish → reply received), p50/p95 per run;
2. the cloud path (the questions labelled ``cloud``): the daemon's added overhead = the reply's
   ``latency_ms`` minus the server's own time for that request (and the same for the client's
   round trip), p50/p95 per run; the size of each request body and what it carries;
3. ``edged ask "..."`` as a user runs it: wall time from process start to the answer line on
   stdout (Python start-up, imports, config, connect, subscribe, request, reply) and to exit,
   next to bare ``python -c pass`` and ``edged --version`` start-up, ``--cli-runs`` times.

Figures are median [min–max] over the runs. The daemon's first answers after start are not
counted (``--warmup`` questions are asked first).

    .venv/bin/python tools/bench_ask.py                 # ~1.5 min
    .venv/bin/python tools/bench_ask.py --write         # also update docs/BENCHMARKS.md
    .venv/bin/python tools/bench_ask.py --runs 2 --cli-runs 3

This is a benchmark, not a test: it asserts nothing and exits 0 unless a run fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

from bench_pipeline import Broker as _Broker  # noqa: E402
from bench_pipeline import code_version, machine_info, percentile, start_edged, stop_edged, wait_for  # noqa: E402

from edged.mqtt import set_no_delay  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
NODE = "benchask"
API_KEY = "sk-bench-" + "x" * 24
RUN_AS = "user root\n" if os.geteuid() == 0 else ""  # root: stay root to read the private temp dir
BEGIN, END = "<!-- bench_ask.py --write: begin -->", "<!-- bench_ask.py --write: end -->"
CLI_QUESTIONS = ("what's the greenhouse humidity?", "how warm was the kitchen today?",
                 "is the garage door open?", "any anomalies today?", "which sensors are stale?")


# =========================================================================== the cloud stand-in
@dataclass
class CloudRequest:
    size: int  # request body bytes
    server_s: float  # headers read → answer written
    body: dict


class FixedDelayCloud:
    """POST /v1/chat/completions answered after ``delay_s``; every request recorded and timed."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.requests: list[CloudRequest] = []
        self.lock = threading.Lock()
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body are two writes: with Nagle on, the body would wait for the
            # client's delayed ACK (~40 ms) and count against the daemon (real servers set this)
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                t_in = time.perf_counter()
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(cloud.delay_s)
                body = json.dumps({
                    "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
                    "model": "bench-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "A cloud answer."},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": 4,
                              "total_tokens": len(raw) // 4 + 4},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                server_s = time.perf_counter() - t_in
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = {}
                with cloud.lock:
                    cloud.requests.append(CloudRequest(len(raw), server_s, parsed))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "FixedDelayCloud":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


# =========================================================================== broker, daemon, asker
def Broker(workdir: Path, nodelay: bool = False) -> _Broker:
    """bench_pipeline's private Mosquitto, with Mosquitto's default in-flight window (20)."""
    return _Broker(workdir, max_inflight=20, max_queued=100000,
                   extra=RUN_AS + ("set_tcp_nodelay true\n" if nodelay else ""))


def daemon_config(tmp: Path, port: int, base_url: str, llm: Path | None = None, lookup: int | None = None) -> Path:
    """``llm``: a built model directory; local answers are then phrased by it (under the guard).
    ``lookup``: ``[llm] lookup_tokens`` (None: the daemon's default)."""
    path = tmp / "edged.toml"
    lookup_line = "" if lookup is None else f"lookup_tokens = {lookup}\n"
    llm_section = (f'[llm]\nenabled = true\nload = "start"\nmodel = "{llm.name}"\n{lookup_line}'
                   f'[models]\ndir = "{llm.parent}"\n' if llm else '[llm]\nenabled = false\n')
    path.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "{tmp / "state"}"\nstats_interval_s = 1\nclock = "data"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[sensors]\nmax_metrics = 100\n'
        f'{llm_section}'
        f'[cloud]\nenabled = true\nbase_url = "{base_url}"\nmodel = "bench-model"\nmax_retries = 0\ntimeout_s = 5\n'
        f'daily_requests = 0\ndaily_tokens = 0\n'
        f'[log]\nlevel = "warning"\n'
    )
    return path


def daemon_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    env.update({"TZ": "UTC", "EDGED_CLOUD__API_KEY": API_KEY, "OPENBLAS_NUM_THREADS": "1"})
    return env


class Asker:
    """One paho v5 client: publish a question with a response topic and correlation data, wait."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._Properties, self._PacketTypes = Properties, PacketTypes
        self.reply_topic = f"bench-ask/replies/{uuid.uuid4().hex[:8]}"
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"bench-ask-{uuid.uuid4().hex[:8]}")
        self.client.max_queued_messages_set(0)
        self.replies: dict[bytes, tuple[float, dict]] = {}
        self.cond = threading.Condition()
        self.stats: dict = {}
        self.client.on_message = self._on_message
        self.client.on_socket_open = set_no_delay  # as edged's own clients (the daemon, `edged ask`) do
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(self.reply_topic, 1), (f"edged/{NODE}/stats", 0)])
        if not subscribed.wait(10):
            raise RuntimeError("no SUBACK from the broker")

    def _on_message(self, client, userdata, msg) -> None:
        at = time.perf_counter()
        if msg.topic.endswith("/stats"):
            try:
                self.stats = json.loads(msg.payload)
            except ValueError:
                pass
            return
        corr = getattr(msg.properties, "CorrelationData", None)
        with self.cond:
            self.replies[bytes(corr or b"")] = (at, json.loads(msg.payload))
            self.cond.notify_all()

    def ask(self, question: str, timeout: float = 30.0) -> tuple[float, dict]:
        """(client round trip in s, reply)."""
        token = uuid.uuid4().hex.encode()
        props = self._Properties(self._PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = token
        t0 = time.perf_counter()
        self.client.publish(f"edged/{NODE}/request/ask", json.dumps({"question": question}), qos=1, properties=props)
        with self.cond:
            if not self.cond.wait_for(lambda: token in self.replies, timeout):
                raise TimeoutError(f"no reply to {question!r} in {timeout} s")
            at, reply = self.replies.pop(token)
        return at - t0, reply

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def load_scenario():
    spec = importlib.util.spec_from_file_location("edged_bench_scenario", DATA / "scenario.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# =========================================================================== measuring
@dataclass
class Run:
    local_ms: list[float] = field(default_factory=list)  # reply latency_ms, local answers
    local_rtt_ms: list[float] = field(default_factory=list)
    cloud_ms: list[float] = field(default_factory=list)  # reply latency_ms, cloud answers
    cloud_rtt_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)  # latency_ms - server time
    rtt_overhead_ms: list[float] = field(default_factory=list)  # client round trip - server time
    sizes: list[int] = field(default_factory=list)
    facts: list[int] = field(default_factory=list)
    off_route: list[str] = field(default_factory=list)


def measure_run(asker: Asker, cloud: FixedDelayCloud, local_qs: list[str], cloud_qs: list[str]) -> Run:
    run = Run()
    for q in local_qs:
        rtt, reply = asker.ask(q)
        data = reply.get("data", {})
        if reply.get("status") != "ok" or data.get("source") != "local":
            run.off_route.append(q)
            continue
        run.local_ms.append(float(data["latency_ms"]))
        run.local_rtt_ms.append(rtt * 1000)
    for q in cloud_qs:
        before = cloud.count()
        rtt, reply = asker.ask(q)
        data = reply.get("data", {})
        if data.get("source") == "cloud":  # the server records a request after writing its answer
            try:
                wait_for(lambda: cloud.count() > before, 2.0, "the server's record", interval=0.001)
            except TimeoutError:
                pass
        if reply.get("status") != "ok" or data.get("source") != "cloud" or cloud.count() != before + 1:
            run.off_route.append(q)
            continue
        req = cloud.requests[-1]
        server_ms = req.server_s * 1000
        run.cloud_ms.append(float(data["latency_ms"]))
        run.cloud_rtt_ms.append(rtt * 1000)
        run.server_ms.append(server_ms)
        run.overhead_ms.append(float(data["latency_ms"]) - server_ms)
        run.rtt_overhead_ms.append(rtt * 1000 - server_ms)
        run.sizes.append(req.size)
        run.facts.append(_facts_in(req.body))
    return run


def _user_block(body: dict, tag: str):
    try:
        user = body["messages"][1]["content"]
        m = re.search(rf"<{tag}>\n(.*)\n</{tag}>", user, flags=re.S)
        return json.loads(m.group(1)) if m else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _facts_in(body: dict) -> int:
    facts = _user_block(body, "facts")
    return len(facts) if isinstance(facts, list) else 0


def shared_summary(cloud: FixedDelayCloud) -> dict:
    """What the request bodies carried: keys, fact fields, message sizes."""
    keys: set[str] = set()
    fields: set[str] = set()
    kinds: set[str] = set()
    system_chars: list[int] = []
    user_chars: list[int] = []
    with_key = 0
    nested: dict[str, int] = {}  # fact fields whose value is a list or an object, and their largest size
    for req in cloud.requests:
        keys |= set(req.body)
        with_key += API_KEY in json.dumps(req.body)
        for f in _user_block(req.body, "facts") or []:
            for k, v in (f.items() if isinstance(f, dict) else ()):
                if isinstance(v, (list, dict)):
                    name = f"{f.get('kind', '?')}.{k}"
                    nested[name] = max(nested.get(name, 0), len(v))
        msgs = req.body.get("messages") or []
        if len(msgs) >= 2:
            system_chars.append(len(msgs[0].get("content", "")))
            user_chars.append(len(msgs[1].get("content", "")))
        for fact in _user_block(req.body, "facts") or []:
            if isinstance(fact, dict):
                fields |= set(fact)
                if "kind" in fact:
                    kinds.add(str(fact["kind"]))
    return {"keys": sorted(keys), "fact_fields": sorted(fields), "fact_kinds": sorted(kinds),
            "requests": len(cloud.requests), "with_key": with_key, "nested": nested,
            "system_chars": statistics.median(system_chars) if system_chars else None,
            "user_chars": (min(user_chars), statistics.median(user_chars), max(user_chars)) if user_chars else None}


def time_command(cmd: list[str], env: dict, cwd: Path, first_line: bool) -> tuple[float, float | None, str, str]:
    """(wall s to exit, wall s to the first stdout line or None, stdout, stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd, text=True)
    t_line = None
    out_lines = []
    if first_line:
        line = proc.stdout.readline()
        t_line = time.perf_counter() - t0
        out_lines.append(line)
    rest, err = proc.communicate(timeout=60)
    t_exit = time.perf_counter() - t0
    out_lines.append(rest)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {err.strip()[-300:]}")
    return t_exit, t_line, "".join(out_lines), err


def measure_cli(config: Path, tmp: Path, runs: int, log) -> dict:
    env = daemon_env()
    edged = [sys.executable, "-m", "edged"]
    out: dict[str, list[float]] = {"python": [], "version": [], "answer": [], "exit": [], "daemon_ms": []}
    for r in range(runs):
        out["python"].append(time_command([sys.executable, "-c", "pass"], env, tmp, False)[0])
        out["version"].append(time_command(edged + ["--version"], env, tmp, False)[0])
        for q in CLI_QUESTIONS:
            t_exit, t_line, stdout, stderr = time_command(edged + ["ask", q, "--config", str(config)], env, tmp, True)
            if not stdout.strip():
                raise RuntimeError(f"edged ask {q!r} printed nothing: {stderr[-300:]}")
            m = re.search(r"\(local, [^,]+, ([\d.]+) ms\)", stderr)
            out["answer"].append(t_line)
            out["exit"].append(t_exit)
            if m:
                out["daemon_ms"].append(float(m.group(1)))
        log(f"  cli run {r + 1}/{runs}: answer printed after {statistics.median(out['answer'][-len(CLI_QUESTIONS):]) * 1000:.0f} ms "
            f"(median of {len(CLI_QUESTIONS)}), python -c pass {out['python'][-1] * 1000:.0f} ms")
    return out


# =========================================================================== report
def _p(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def _agg(values: list[float | None], digits: int = 1) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} [{min(vals):,.{digits}f}–{max(vals):,.{digits}f}]"


def render(args, runs: list[Run], cli: dict | None, shared: dict, machine: dict, command: str, elapsed: float,
           n_local: int, n_cloud: int, ingest_s: float) -> str:
    per = lambda attr, q: [_p(getattr(r, attr), q) for r in runs]  # noqa: E731
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']} RAM, Linux {machine['kernel']}; "
        f"Python {machine['python']}, paho-mqtt {machine['paho']}, Mosquitto {machine['mosquitto']}; edged at {machine['edged']}. "
        f"1-minute load average {machine.get('load', '?')} (other jobs on the machine count in it).",
        "",
        f"Command: `python {command}` ({elapsed:.0f} s; {len(runs)} runs of the question set, each question asked "
        f"once per run, one at a time; median [min–max] over runs). Daemon: `edged run`, TZ=UTC, node.clock = \"data\", "
        f"{f'`[llm]` {args.llm.name} loaded at start (local answers LM-phrased under the guard)' if args.llm else '`[llm] enabled = false` (template answers)'}, fed the scenario of tests/data/scenario.py first "
        f"({ingest_s:.0f} s to ingest); private Mosquitto "
        f"({'`set_tcp_nodelay true`' if args.broker_nodelay else 'its default `set_tcp_nodelay false`'}); the cloud is a local OpenAI-compatible server in the "
        f"benchmark process that answers every request after {args.cloud_delay * 1000:.0f} ms.",
        "",
        "`latency_ms` is the reply's own figure: request received by the daemon's MQTT thread → reply ready to "
        "publish. MQTT round trip: the asking client's publish → the reply's arrival (two broker hops more).",
        "",
        "| path | questions per run | reply latency_ms p50 | p95 | MQTT round trip p50 | p95 |",
        "|---|---|---|---|---|---|",
        f"| local, {'LM-phrased' if args.llm else 'template'} | {n_local} | {_agg(per('local_ms', 50))} | {_agg(per('local_ms', 95))} | "
        f"{_agg(per('local_rtt_ms', 50))} | {_agg(per('local_rtt_ms', 95))} |",
        f"| cloud ({args.cloud_delay * 1000:.0f} ms server) | {n_cloud} | {_agg(per('cloud_ms', 50))} | "
        f"{_agg(per('cloud_ms', 95))} | {_agg(per('cloud_rtt_ms', 50))} | {_agg(per('cloud_rtt_ms', 95))} |",
        "",
        "Cloud-path overhead = reply latency − the server's own time for that request (headers read → answer "
        "written): question understanding, fact gathering, building and sending the request, the TCP connect, "
        "reading and checking the answer, the hand-off between threads.",
        "",
        "| figure | p50 | p95 |",
        "|---|---|---|",
        f"| server's own time, ms | {_agg(per('server_ms', 50))} | {_agg(per('server_ms', 95))} |",
        f"| **daemon overhead** (latency_ms − server), ms | **{_agg(per('overhead_ms', 50))}** | "
        f"**{_agg(per('overhead_ms', 95))}** |",
        f"| MQTT round trip − server, ms | {_agg(per('rtt_overhead_ms', 50))} | {_agg(per('rtt_overhead_ms', 95))} |",
    ]
    sizes = [s for r in runs for s in r.sizes]
    facts = [f for r in runs for f in r.facts]
    if sizes:
        uc = shared["user_chars"]
        lines += [
            "",
            f"Request body: {statistics.median(sizes):,.0f} bytes median [{min(sizes):,}–{max(sizes):,}] "
            f"(JSON keys {', '.join(shared['keys'])}); system prompt {shared['system_chars']:.0f} characters; user "
            f"message {uc[1]:.0f} characters median [{uc[0]}–{uc[2]}], carrying the question and "
            f"{statistics.median(facts):.0f} facts median [{min(facts)}–{max(facts)}]. Fact kinds sent: "
            f"{', '.join(shared['fact_kinds']) or '–'}; fields: {', '.join(shared['fact_fields']) or '–'} "
            f"(the default `[cloud] share`: metric names, current values, anomaly summaries). Of "
            f"{shared['requests']} request bodies, {shared['with_key']} contained the API key; fact values that "
            f"are lists or objects (a history dump would be one): "
            + (", ".join(f"`{k}` (≤ {n} items)" for k, n in sorted(shared["nested"].items())) or "none") + ".",
        ]
    if cli:
        lines += [
            "",
            f"`edged ask \"…\"` as a user runs it: a new Python process per question "
            f"({len(CLI_QUESTIONS)} local questions x {args.cli_runs} runs), wall time from the process start; the "
            f"daemon's `latency_ms` for the same requests; start-up alone for comparison.",
            "",
            "| figure | p50 ms | p95 ms |",
            "|---|---|---|",
            f"| `edged ask` → answer printed | **{_fmt_ms(cli['answer'], 50)}** | {_fmt_ms(cli['answer'], 95)} |",
            f"| `edged ask` → process exit | {_fmt_ms(cli['exit'], 50)} | {_fmt_ms(cli['exit'], 95)} |",
            f"| in the daemon (latency_ms) | {_fmt_ms(cli['daemon_ms'], 50, 1)} | {_fmt_ms(cli['daemon_ms'], 95, 1)} |",
            f"| `python -c pass` | {_fmt_ms(cli['python'], 50)} | {_fmt_ms(cli['python'], 95)} |",
            f"| `python -m edged --version` | {_fmt_ms(cli['version'], 50)} | {_fmt_ms(cli['version'], 95)} |",
        ]
    off = sorted({q for r in runs for q in r.off_route})
    if off:
        lines += ["", f"Not counted (answered on another route than labelled, or an error): {len(off)} question(s): "
                  + "; ".join(repr(q) for q in off[:6]) + (" …" if len(off) > 6 else "")]
    return "\n".join(lines) + "\n"


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _fmt_ms(values_s_or_ms: list[float], q: float, digits: int = 0) -> str:
    if not values_s_or_ms:
        return "–"
    scale = 1.0 if digits else 1000.0  # CLI times are seconds, daemon figures are ms
    return f"{_p(values_s_or_ms, q) * scale:,.{digits}f}"


def write_doc(body: str) -> Path:
    """Replace the generated block in docs/BENCHMARKS.md (under "## Questions"); notes around it stay."""
    path = REPO / "docs" / "BENCHMARKS.md"
    block = f"{BEGIN}\n{body.rstrip()}\n{END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        m = re.search(r"^## Questions\s*$", text, flags=re.M)
        if m:
            text = text[: m.end()] + "\n\n" + block + "\n" + text[m.end():]
        else:
            text = text.rstrip() + "\n\n## Questions\n\n" + block + "\n"
    path.write_text(text)
    return path


# =========================================================================== main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="passes over the question set")
    p.add_argument("--warmup", type=int, default=10, help="questions asked (and not counted) before the runs")
    p.add_argument("--cloud-delay", type=float, default=0.25, help="seconds the cloud stand-in waits before answering")
    p.add_argument("--cli-runs", type=int, default=3, help=f"passes of `edged ask` over {len(CLI_QUESTIONS)} questions")
    p.add_argument("--broker-nodelay", action="store_true",
                   help="Mosquitto `set_tcp_nodelay true` (its default is false: Nagle's algorithm on the broker's "
                        "sockets, ~40 ms per MQTT hop that writes two packets back to back)")
    p.add_argument("--llm", type=Path, help="a built LM directory (e.g. /var/lib/edged/models/smollm2-135m): "
                   "local answers are LM-phrased; the table's 'local' rows then measure that (not with --write)")
    p.add_argument("--lookup", type=int, help="with --llm: [llm] lookup_tokens (0: one token per pass; default: the daemon's)")
    p.add_argument("--json", type=Path, help="also write every sample here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    p.add_argument("--write", action="store_true", help="update the Questions section of docs/BENCHMARKS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.llm and args.write:
        print("--llm and --write: the Questions block describes template answers; quote LM runs by hand", file=sys.stderr)
        return 2
    if not Path(MOSQUITTO).exists():
        print(f"mosquitto not found ({MOSQUITTO}); `make mosquitto` installs it", file=sys.stderr)
        return 1
    given = argv if argv is not None else sys.argv[1:]
    command = "tools/bench_ask.py" + ("" if not given else " " + " ".join(shlex.quote(a) for a in given))
    machine = machine_info()
    machine["edged"], code_hash = code_version()
    questions = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines() if line.strip()]
    local_qs = [q["question"] for q in questions if q["route"] == "local"]
    cloud_qs = [q["question"] for q in questions if q["route"] == "cloud"]
    tmp = Path(tempfile.mkdtemp(prefix="edged-bench-ask-"))
    started = time.monotonic()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_start = _loadavg()
    log(f"bench_ask: {machine['cpu']}, {machine['cores']} cores, load average {load_start}; temp dir {tmp}")
    broker = cloud = daemon = asker = None
    runs: list[Run] = []
    cli = None
    try:
        broker = Broker(tmp, args.broker_nodelay).start()
        cloud = FixedDelayCloud(args.cloud_delay).start()
        config = daemon_config(tmp, broker.port, cloud.base_url, args.llm, args.lookup)
        daemon = start_edged(config, tmp, env=daemon_env())
        asker = Asker(broker.port)
        wait_for(lambda: asker.stats or daemon.poll() is not None, 30, "the daemon's stats")
        if daemon.poll() is not None:
            raise RuntimeError(f"edged exited: {(tmp / 'edged.log').read_text()[-1000:]}")
        t = time.monotonic()
        n = load_scenario().publish(broker.port, wait_s=120)
        wait_for(lambda: asker.stats.get("readings", 0) >= n, 180, f"the daemon to ingest {n} readings")
        ingest_s = time.monotonic() - t
        log(f"  scenario: {n} readings ingested in {ingest_s:.1f} s")
        for q in (local_qs + cloud_qs)[: args.warmup]:
            asker.ask(q)
        for r in range(args.runs):
            run = measure_run(asker, cloud, local_qs, cloud_qs)
            runs.append(run)
            log(f"  run {r + 1}/{args.runs}: local p50 {_p(run.local_ms, 50) or 0:.1f} ms p95 {_p(run.local_ms, 95) or 0:.1f} ms; "
                f"cloud overhead p50 {_p(run.overhead_ms, 50) or 0:.1f} ms p95 {_p(run.overhead_ms, 95) or 0:.1f} ms "
                f"(server {_p(run.server_ms, 50) or 0:.0f} ms); off-route {len(run.off_route)}")
        if args.llm:  # how many local answers the model's wording replaced (the rest kept the template)
            before = asker.stats
            wait_for(lambda: asker.stats is not before, 10, "the daemon's next stats")  # they cover every answer
            st = asker.stats
            log(f"  LM: {st.get('llm_generations', 0)} generations, {st.get('llm_guard_rejections', 0)} refused by the "
                f"guard, {st.get('llm_expired', 0)} expired in the queue, {st.get('llm_timeouts', 0)} timed out")
        if args.cli_runs:
            cli = measure_cli(config, tmp, args.cli_runs, log)
    except KeyboardInterrupt:
        log("interrupted; reporting what finished")
    finally:
        if asker:
            asker.close()
        stop_edged(daemon, 15)
        if cloud:
            cloud.stop()
        if broker:
            broker.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")
    if not runs:
        return 1
    elapsed = time.monotonic() - started
    machine["load"] = f"{load_start} at the start, {_loadavg()} at the end"
    if code_version()[1] != code_hash:
        machine["edged"] += " (WARNING: edged/ changed during the run)"
    body = render(args, runs, cli, shared_summary(cloud), machine, command, elapsed, len(local_qs), len(cloud_qs),
                  ingest_s)
    print(body)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "command": command, "runs": [r.__dict__ for r in runs],
                                         "cli": cli}, indent=1))
    if args.write:
        log(f"wrote {write_doc(body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
