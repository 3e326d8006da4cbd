"""Fixtures that talk to real things: a Mosquitto broker per session (and per test where a
test stops or reconfigures it), the daemon as a real subprocess, and a paho probe client.

Synchronisation is by polling with a deadline (``wait_for``), never by sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
REPO = Path(__file__).resolve().parents[1]
# Mosquitto started as root drops to the "mosquitto" user, which cannot read the tests'
# private temp dirs: stay root then (no effect for a non-root user).
RUN_AS = "user root\n" if os.geteuid() == 0 else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A private Mosquitto on a free port with a temporary config."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.skip("mosquitto is not installed (make test installs it)")
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"

    def write_conf(self) -> None:
        body = self.extra_conf if "listener" in self.extra_conf else f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{self.extra_conf}"
        self.conf.write_text(
            f"{body}\n{RUN_AS}persistence true\npersistence_location {self.workdir}/\nautosave_interval 1\n"
            f"max_queued_messages 100000\nlog_dest file {self.log}\nlog_type error\nlog_type warning\n"
        )

    def start(self) -> "Broker":
        self.write_conf()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, 10, what="mosquitto to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log.read_text() if self.log.exists() else ''}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        wait_for(lambda: not port_open(self.port), 5, what="mosquitto port to close")

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Broker:
    b = Broker(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path) -> Broker:
    """A broker this test may stop, kill and restart."""
    b = Broker(tmp_path / "broker")
    b.workdir.mkdir()
    b.start()
    yield b
    b.stop(signal.SIGKILL)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None
    at: float

    def json(self):
        return json.loads(self.payload)


class Probe:
    """A real MQTT client for tests: subscribe, publish, and wait for what edged publishes."""

    def __init__(self, port: int, protocol: int = paho.MQTTv5) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=protocol)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props else None
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), corr, time.time()))

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos)
        wait_for(self._subscribed.is_set, 5, what=f"SUBACK for {topic}")

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False, properties=None) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(5)

    def on(self, topic_part: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if topic_part in m.topic]

    def wait_topic(self, topic: str, predicate: Callable[[Received], bool] = lambda m: True, timeout: float = 30.0) -> Received:
        def find():
            with self._lock:
                for m in self.messages:
                    if m.topic == topic and predicate(m):
                        return m
            return None

        return wait_for(find, timeout, what=f"a message on {topic}")

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probe_factory():
    made: list[Probe] = []

    def make(port: int, protocol: int = paho.MQTTv5) -> Probe:
        p = Probe(port, protocol)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def v5_request_properties(response_topic: str, correlation: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    return props


class Daemon:
    """`edged run` as a real subprocess with its own config file."""

    def __init__(self, tmp: Path, port: int, extra: str = "", node: str | None = None, env: dict | None = None,
                 clock: str = "data", mqtt_extra: str = "", detector: str | None = "zscore") -> None:
        """``detector``: the pipeline-semantics tests here run the built-in z-score, which learns in
        ``learning_readings`` (30) readings, so a test needs tens of readings, not the model
        detector's 150 readings and one day of data time; the model detector (the product default)
        has its own e2e tests (tests/test_anomaly_e2e.py), which pass ``detector=None``."""
        self.node = node or f"t{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.config = tmp / f"{self.node}.toml"
        self.log_path = tmp / f"{self.node}.log"
        if detector is not None:
            line = f'detector = "{detector}"\n'
            extra = extra.replace("[anomaly]\n", "[anomaly]\n" + line, 1) if "[anomaly]\n" in extra \
                else f"{extra}\n[anomaly]\n{line}"
        self.config.write_text(
            f'[node]\nid = "{self.node}"\nstate_dir = "{tmp / "state"}"\nstats_interval_s = 1\nclock = "{clock}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_max_s = 1\n{mqtt_extra}\n{extra}\n'
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None

    @property
    def root(self) -> str:
        return f"edged/{self.node}"

    def start(self) -> "Daemon":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "run", "--config", str(self.config), "--log-format", "json"],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp,
        )
        return self

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "raw", "line": line})
        return out

    def wait_log(self, event: str, timeout: float = 30.0) -> dict:
        return wait_for(lambda: next((e for e in self.log_lines() if e.get("event") == event), None), timeout,
                        what=f"log event {event!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc


@pytest.fixture
def daemon_factory(tmp_path):
    made: list[Daemon] = []

    def make(port: int, extra: str = "", **kw) -> Daemon:
        d = Daemon(tmp_path, port, extra, **kw)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(5)


@pytest.fixture
def edged_cli(tmp_path):
    """Run the CLI as a user would: a subprocess, its exit code, stdout and stderr."""

    def run(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        full_env.update(env or {})
        return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True,
                              env=full_env, cwd=tmp_path, timeout=timeout)

    return run


# --------------------------------------------------------------------------- helpers for the e2e suites


def start_node(daemon_factory, probe_factory, port: int, extra: str = "", **kw):
    """Start a daemon, connect a probe subscribed to everything under its root, wait for ``online``."""
    d = daemon_factory(port, extra, **kw)
    probe = probe_factory(port)
    probe.subscribe(f"{d.root}/#")
    probe.wait_topic(f"{d.root}/status", lambda m: m.payload == b"online", timeout=15)
    wait_subscribed(probe, d.root)
    return d, probe


def wait_subscribed(probe, root: str, timeout: float = 10.0) -> None:
    """``online`` is published before the daemon's SUBSCRIBE (see the test report), so a reading sent
    the moment ``online`` shows can be lost. A request round trip proves the subscriptions are live:
    the request filter and the sensor filters go out in one SUBSCRIBE packet."""
    token = uuid.uuid4().hex.encode()
    reply_topic = f"edged-test/ready/{token.decode()}"
    probe.subscribe(reply_topic)

    def attempt():
        probe.publish(f"{root}/request/status", "{}", properties=v5_request_properties(reply_topic, token))
        try:
            return probe.wait_topic(reply_topic, timeout=0.5)
        except AssertionError:
            return None

    wait_for(attempt, timeout, what=f"the daemon under {root} to answer a request")
    probe.client.unsubscribe(reply_topic)


def latest_stats(probe, root: str, predicate=lambda s: True, timeout: float = 10.0) -> dict:
    """The newest stats payload that satisfies ``predicate`` (stats are published every second)."""

    def find():
        for m in reversed(probe.on(f"{root}/stats")):
            if m.topic == f"{root}/stats":
                data = m.json()
                if predicate(data):
                    return data
        return None

    return wait_for(find, timeout, what=f"stats on {root}/stats matching the condition")


def states(probe, root: str) -> dict[str, dict]:
    """The newest state payload per metric seen so far."""
    out: dict[str, dict] = {}
    prefix = f"{root}/state/"
    for m in probe.on(prefix):
        if m.topic.startswith(prefix):
            out[m.topic[len(prefix):]] = m.json()
    return out
