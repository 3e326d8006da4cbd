"""`edged simulate`: realistic sensor streams with injected anomalies, in every payload format.

Devices carry a few metrics each (temperature, humidity, pressure, CO2, power, a door
contact) with noise, a daily cycle and slow drift. Each metric gets anomalies injected on a
seeded schedule: ``spike`` (one wild reading), ``shift`` (the level moves for a while),
``stuck`` (the value freezes), ``dropout`` (no readings for a while). Formats: ``bare``
(a number, no timestamp), ``json`` ({"value","ts","unit"}), ``multi`` (one Zigbee2MQTT-
style object per device), ``senml`` (one RFC 8428 pack per device), ``mixed`` (by device).

:func:`generate` is pure (no broker) so tests and benchmarks reuse the same streams.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

import numpy as np

FORMATS = ("bare", "json", "multi", "senml")
ANOMALY_KINDS = ("spike", "shift", "stuck", "dropout")
# kind: (unit, level, daily amplitude, noise sd, drift per day)
KINDS = {
    "temperature": ("°C", 21.0, 3.0, 0.15, 0.3),
    "humidity": ("%", 60.0, -8.0, 0.6, 1.0),
    "pressure": ("hPa", 1013.0, 0.8, 0.2, 2.0),
    "co2": ("ppm", 520.0, 120.0, 12.0, 5.0),
    "power": ("W", 140.0, 60.0, 6.0, 3.0),
    "door": ("", 0.0, 0.0, 0.0, 0.0),
}
KIND_ORDER = tuple(KINDS)
METRICS_PER_DEVICE = 3


@dataclass
class SimulationSpec:
    prefix: str = "sensors/sim"
    metrics: int = 4
    rate: float = 1.0  # readings per second per metric (wall clock)
    duration: float = 60.0  # wall seconds; 0 = forever
    fmt: str = "mixed"
    anomalies: tuple[str, ...] = ANOMALY_KINDS
    anomaly_every: float = 120.0  # simulated seconds between anomalies of one metric
    speedup: float = 1.0  # simulated seconds per wall second
    seed: int = 7
    qos: int = 0
    start_ts: float | None = None

    def validate(self) -> None:
        if self.fmt not in (*FORMATS, "mixed"):
            raise ValueError(f"--format {self.fmt!r}: allowed: {', '.join(FORMATS)}, mixed")
        bad = [a for a in self.anomalies if a not in (*ANOMALY_KINDS, "none")]
        if bad:
            raise ValueError(f"--anomalies {','.join(bad)!r}: allowed: {', '.join(ANOMALY_KINDS)}, none")
        if self.speedup != 1 and self.fmt == "bare":
            raise ValueError("--speedup needs timestamped payloads: use --format json, multi, senml or mixed")
        if self.speedup != 1 and not self.duration:
            raise ValueError("--speedup needs a --duration (timestamps are laid out so they end at the present)")
        if self.prefix.endswith("/") or "+" in self.prefix or "#" in self.prefix:
            raise ValueError("--prefix must be a topic without wildcards or a trailing '/'")


@dataclass(frozen=True)
class Injection:
    kind: str
    start: float
    duration: float
    magnitude: float


class SimMetric:
    def __init__(self, index: int, rng: np.random.Generator, spec: SimulationSpec, t0: float) -> None:
        self.index = index
        self.device = f"room{index // METRICS_PER_DEVICE + 1}"
        d, j = divmod(index, METRICS_PER_DEVICE)
        self.kind = KIND_ORDER[(d + 2 * j) % len(KIND_ORDER)]
        self.unit, self.level, self.amp, self.noise, self.drift = KINDS[self.kind]
        self.level *= 1 + 0.05 * rng.standard_normal()
        self.phase = rng.uniform(0, 2 * math.pi)
        self.rng = np.random.default_rng(rng.integers(1 << 32))
        self.injections: list[Injection] = []
        kinds = [a for a in spec.anomalies if a != "none"]
        if kinds and spec.anomaly_every > 0:
            t = t0 + spec.anomaly_every * (0.5 + 0.5 * rng.random())
            horizon = t0 + (spec.duration or 86400) * spec.speedup
            while t < horizon:
                kind = kinds[int(rng.integers(len(kinds)))]
                dur = 0.0 if kind == "spike" else spec.anomaly_every * rng.uniform(0.15, 0.3)
                sign = 1 if rng.random() < 0.5 else -1
                self.injections.append(Injection(kind, t, dur, sign * rng.uniform(6, 10)))
                t += spec.anomaly_every * rng.uniform(0.8, 1.2)
        self.stuck_value: float | None = None
        self.door = 0.0

    @property
    def metric(self) -> str:
        return f"{self.device}/{self.kind}"

    def active(self, ts: float, step: float) -> Injection | None:
        """The injection covering ``ts``; a spike covers exactly one reading (the first at or after its start)."""
        for inj in self.injections:
            if inj.start <= ts < inj.start + max(inj.duration, step):
                return inj
            if inj.start > ts:
                break
        return None

    def value(self, ts: float, step: float) -> float | None:
        """The reading at ``ts``; None during a dropout."""
        if self.kind == "door":
            if self.rng.random() < min(1.0, step / 1800):
                self.door = 1.0 - self.door
            return self.door
        day = 2 * math.pi * (ts % 86400) / 86400
        base = self.level + self.amp * math.sin(day + self.phase) + self.drift * (ts / 86400 % 10)
        v = base + self.noise * float(self.rng.standard_normal())
        inj = self.active(ts, step)
        spread = max(self.noise, abs(self.amp) * 0.1, 1e-3)
        if inj is None:
            self.stuck_value = None
            return round(v, 3)
        if inj.kind == "dropout":
            return None
        if inj.kind == "stuck":
            if self.stuck_value is None:
                self.stuck_value = round(v, 3)
            return self.stuck_value
        if inj.kind == "spike":
            return round(v + inj.magnitude * spread * 3, 3)
        return round(v + inj.magnitude * spread, 3)  # shift


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def device_format(spec: SimulationSpec, device_index: int) -> str:
    fmt = FORMATS[device_index % len(FORMATS)] if spec.fmt == "mixed" else spec.fmt
    return "json" if fmt == "bare" and spec.speedup != 1 else fmt  # bare payloads carry no time


def encode(fmt: str, prefix: str, device: str, readings: list[tuple[SimMetric, float]], ts: float) -> list[tuple[str, bytes]]:
    """One device's readings at ``ts`` → (topic, payload) messages in the given format."""
    if fmt == "bare":
        return [(f"{prefix}/{m.metric}", _bare(v)) for m, v in readings]
    if fmt == "json":
        out = []
        for i, (m, v) in enumerate(readings):
            stamp: object = round(ts * 1000) if i % 2 == 0 else _iso(ts)  # epoch ms and ISO-8601 both
            body: dict = {"value": bool(v) if m.kind == "door" else v, "ts": stamp}
            if m.unit:
                body["unit"] = m.unit
            out.append((f"{prefix}/{m.metric}", json.dumps(body).encode()))
        return out
    if fmt == "multi":
        body = {m.kind: (bool(v) if m.kind == "door" else v) for m, v in readings}
        body.update({"linkquality": 120, "battery": 97, "ts": round(ts, 3)})
        return [(f"{prefix}/{device}", json.dumps(body).encode())]
    records: list[dict] = [{"bn": "", "bt": round(ts, 3)}]
    for i, (m, v) in enumerate(readings):
        rec: dict = {"n": m.kind}
        if m.kind == "door":
            rec["vb"] = bool(v)
        else:
            rec["v"] = v
            if m.unit:
                rec["u"] = m.unit
        records[0].update(rec) if i == 0 else records.append(rec)
    return [(f"{prefix}/{device}", json.dumps(records).encode())]


def _bare(v: float) -> bytes:
    return (str(int(v)) if float(v).is_integer() else repr(v)).encode()


def build(spec: SimulationSpec) -> tuple[list[SimMetric], float]:
    rng = np.random.default_rng(spec.seed)
    t0 = spec.start_ts
    if t0 is None:  # sped-up timestamps end at the present, never ahead of the clock
        t0 = time.time() - (spec.duration * spec.speedup if spec.speedup != 1 else 0.0)
    return [SimMetric(i, rng, spec, t0) for i in range(spec.metrics)], t0


def generate(spec: SimulationSpec, steps: int | None = None) -> Iterator[tuple[int, float, list[tuple[str, bytes]]]]:
    """Yield (step, simulated ts, messages) without any broker."""
    metrics, t0 = build(spec)
    step_s = spec.speedup / spec.rate
    devices: dict[str, list[SimMetric]] = {}
    for m in metrics:
        devices.setdefault(m.device, []).append(m)
    k = 0
    while steps is None or k < steps:
        ts = t0 + k * step_s
        messages: list[tuple[str, bytes]] = []
        for d_index, (device, members) in enumerate(devices.items()):
            readings = [(m, v) for m in members if (v := m.value(ts, step_s)) is not None]
            if readings:
                messages.extend(encode(device_format(spec, d_index), spec.prefix, device, readings, ts))
        yield k, ts, messages
        k += 1


def run_simulation(spec: SimulationSpec, host: str, port: int, settings, *, quiet: bool = False) -> int:
    from .mqtt import connect_client

    client = connect_client(settings, host, port)
    period = 1.0 / spec.rate
    start = time.monotonic()
    sent = 0
    info = None
    last_report = start
    try:
        for k, ts, messages in generate(spec):
            due = start + k * period
            if spec.duration and due - start >= spec.duration:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for topic, payload in messages:
                info = client.publish(topic, payload, qos=spec.qos)
            sent += len(messages)
            now = time.monotonic()
            if not quiet and now - last_report >= 1.0 and sys.stderr.isatty():
                print(f"\rsimulate: {sent} messages, t={_iso(ts)}", end="", file=sys.stderr, flush=True)
                last_report = now
    except KeyboardInterrupt:
        pass
    finally:
        if info is not None:
            try:
                info.wait_for_publish(5)
            except (RuntimeError, ValueError):
                pass
        client.disconnect()
        client.loop_stop()
        if not quiet and sys.stderr.isatty():
            print(file=sys.stderr)
    return sent
