"""The sensor lane: inbound queue → decode → windows → detector → decision → publish.

``offer`` runs on the MQTT network thread and only appends to a bounded deque (the oldest
message is dropped, and counted, when it is full). The lane thread drains the queue in
batches; readings of one batch are grouped in rounds (round k holds the k-th reading of
each metric), and each round is scored by one detector call, so every reading is scored in
order and one call covers every metric that is due. A periodic tick runs in the same
thread, data or not: coalesced state publishes, silence detection, the stats topic.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Protocol

import numpy as np

from .config import Settings
from .decision import (
    ANOMALOUS,
    LEARNING,
    MUTED,
    OK,
    STALE,
    Event,
    MetricDecision,
    decide_silence,
    decide_value,
)
from .detector import Detector
from .logs import get_logger
from .messages import (
    DecodeLimits,
    RawMessage,
    Reading,
    Rejection,
    Topics,
    decode_payload,
    is_excluded,
    metric_name,
    topic_matches,
)
from .stats import RejectionReporter, Stats
from .windows import APPENDED, DUPLICATE, LATE, MetricStore

log = get_logger("edged.pipeline")

# State publishes per metric: a token bucket of 2 per second with a burst of 3. A metric that
# reports once a second (with jitter) is never delayed, even right after a faster spell (a
# bucket refilled at exactly its reading rate would stay empty and delay every jittered
# reading by up to a tick); one reporting faster than twice a second is coalesced.
STATE_RATE_PER_S = 2.0
STATE_BURST = 3.0
TICK_S = 0.2
SILENCE_CHECK_S = 0.5
RECENT_EVENTS = 512
BATCH_MAX = 2048
GATHER_S = 0.003
BACKPRESSURE_MAX_S = 0.05
CLOCK_WARNING_EVERY_S = 3600.0  # one "device clock ahead" warning an hour, however many readings
REDELIVERY_KEYS = 4096  # recent (topic, mid, payload hash) identities kept for QoS 1 redeliveries
SNAPSHOT_REDELIVERY_KEYS = 1024  # of those, the newest go into a snapshot (a redelivery is recent)


class Publish(Protocol):
    def __call__(
        self, topic: str, payload: str | bytes, *, qos: int = 0, retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> bool: ...


@dataclass(slots=True)
class _Scored:
    slot: int
    reading: Reading
    received: float


class Clock:
    """``wall``: time.time(); ``data``: the newest reading timestamp seen (replays, tests)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.data_now = -math.inf

    def observe(self, ts: float) -> None:
        if ts > self.data_now:
            self.data_now = ts

    def now(self) -> float:
        if self.mode == "data":
            return self.data_now if math.isfinite(self.data_now) else time.time()
        return time.time()


class SensorPipeline:
    def __init__(self, settings: Settings, topics: Topics, detector: Detector, publish: Publish,
                 stats: Stats) -> None:
        self.topics = topics
        self.detector = detector
        self.publish = publish
        self.stats = stats
        self.store = MetricStore(max(settings.anomaly.window, detector.window), settings.sensors.max_metrics)
        self.decisions: list[MetricDecision | None] = []  # by slot; None once forgotten
        self.lock = threading.RLock()  # held while state changes; the command lane reads under it
        self.clock = Clock(settings.node.clock)
        self.reporter = RejectionReporter()
        # strict durability: a reading in the queue may already be acknowledged (it is in the
        # WAL), so a full queue is never relieved by evicting the oldest: the WAL writer waits
        # (offer_durable), and a QoS 0 reading that finds the queue full is the one dropped.
        self.lossless = settings.durability.mode == "strict"
        self._queue_max = settings.sensors.queue_size
        self._queue: deque[RawMessage] = deque(maxlen=None if self.lossless else self._queue_max)
        self.applied_seq = 0  # the highest WAL seq the lane has processed (strict; restored from the snapshot)
        self._replaying = False  # WAL replay at start: no state publishes (re-announced on connect)
        self._replay_silent = False  # ... and these readings' events were published before the crash
        self._high_water = max(1, settings.sensors.queue_size // 4)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._intake_open = True
        self._tokens = np.zeros(0)
        self._token_time = np.zeros(0)
        self._interval_override = np.zeros(0)
        self._pending_state: set[int] = set()
        self._redeliveries: OrderedDict[tuple, None] = OrderedDict()
        # As many as the broker may have unacknowledged towards edged, with room to spare (the v5
        # Receive Maximum edged announces follows mqtt.max_inflight_messages).
        inflight = settings.mqtt.max_inflight_messages
        self._redelivery_keep = max(REDELIVERY_KEYS, 4 * inflight)
        self._snapshot_redelivery_keys = max(SNAPSHOT_REDELIVERY_KEYS, 2 * inflight)
        self._metric_cache: dict[str, bool] = {}
        self._reannounce = threading.Event()
        self.snapshot_due = threading.Event()
        self.recent_events: deque[dict] = deque(maxlen=RECENT_EVENTS)  # for questions about anomalies
        self._next_stats = 0.0
        self._clock_warned = -math.inf
        self._next_silence_check = 0.0
        self.started = time.time()
        self.last_progress = time.monotonic()
        self.stats_extra: Callable[[], dict] = lambda: {}
        self.is_connected: Callable[[], bool] = lambda: True
        self.on_episode_start: Callable[[dict], None] | None = None  # e.g. the LM's better wording
        self.on_new_metric: Callable[[str], None] | None = None  # e.g. Home Assistant discovery
        self.on_reannounce: Callable[[list[str]], None] | None = None  # live metric names, after every connect
        self.on_forget: Callable[[str], None] | None = None
        self._quiet_warned = False
        self.apply_settings(settings)

    # ------------------------------------------------------------------ configuration
    def apply_settings(self, settings: Settings) -> None:
        """(Re)read what the lane needs from the settings; safe on SIGHUP."""
        with self.lock:
            self.settings = settings
            cfg = settings.sensors
            self.filters = list(cfg.topics)
            self.limits = DecodeLimits(cfg.max_payload_bytes, cfg.max_json_depth, cfg.future_tolerance_s)
            self._metric_cache.clear()
            self._topic_cache: dict[str, str | None] = {}
            self._thresholds: dict[int, float] = {}
            for slot, name in enumerate(self.store.names):
                if name is None:
                    continue
                rule = settings.override_for(name)
                self._interval_override[slot] = rule.expected_interval_s if rule and rule.expected_interval_s else np.nan
                self._apply_recurring(slot, name)

    def _apply_recurring(self, slot: int, metric: str) -> None:
        quiet = self.settings.recurring_quiet(metric)
        set_quiet = getattr(self.detector, "set_quiet", None)  # the model detector's
        if set_quiet is not None:
            set_quiet(slot, quiet)
        elif quiet and not self._quiet_warned:  # the config refuses quiet with zscore, but a reload
            # may switch the detector setting while the running detector stays (it needs a restart)
            self._quiet_warned = True
            log.warning("recurring_ignored", metric=metric, detector=self.detector.name,
                        hint="recurring = 'quiet' takes effect once edged restarts with anomaly.detector = 'model'")

    def threshold_for(self, slot: int) -> float:
        """threshold ** sensitivity: sensitivity 2 turns 0.5 into 0.25 (more alerts)."""
        thr = self._thresholds.get(slot)
        if thr is None:
            rule = self.settings.override_for(self.store.names[slot])
            sens = (rule.sensitivity if rule and rule.sensitivity else 1.0) * self.settings.anomaly.sensitivity
            thr = self._thresholds[slot] = self.settings.anomaly.threshold ** sens
        return thr

    # ------------------------------------------------------------------ network thread
    def offer(self, msg: RawMessage) -> None:
        if not self._intake_open:
            return
        if len(self._queue) > self._high_water:
            # Backpressure: pause the network thread briefly so the lane gets the GIL (and TCP
            # slows the broker down) instead of reading messages only to drop them. Bounded, so
            # keepalives and commands still flow; past it, the oldest reading is dropped (counted).
            deadline = time.monotonic() + BACKPRESSURE_MAX_S
            while len(self._queue) > self._high_water and time.monotonic() < deadline and self._intake_open:
                time.sleep(0.0005)
        if len(self._queue) >= self._queue_max:
            self.stats.incr("dropped")
            if self.lossless:
                return  # strict: drop this (QoS 0) reading rather than evict a durable one
        self._queue.append(msg)  # relaxed: the deque's maxlen evicts the oldest
        if not self._wake.is_set():  # set() takes a lock; skip it when the lane is already woken
            self._wake.set()

    def offer_durable(self, msgs: list[RawMessage]) -> None:
        """The WAL writer's hand-over (strict): never drops; waits while the queue is full, so
        acknowledgements stop and the broker's in-flight window holds further readings back."""
        for msg in msgs:
            while len(self._queue) >= self._queue_max and self._intake_open:
                self._wake.set()
                time.sleep(0.001)
            self._queue.append(msg)
        self._wake.set()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ lane
    def run(self) -> None:
        """Thread body: batches, and the tick at least every TICK_S."""
        next_tick = time.monotonic()
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            if self._wake.wait(timeout) and len(self._queue) < BATCH_MAX // 4:
                # Micro-batching: a few ms of gathering spreads the fixed numpy cost of a round
                # over many readings, well inside the latency budget.
                time.sleep(GATHER_S)
            self._wake.clear()
            self.drain()
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + TICK_S
            self.last_progress = time.monotonic()
            if self._stop.is_set() and not self._queue:
                break
        self.flush_states(force=True)

    def close_intake(self) -> None:
        self._intake_open = False

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reannounce(self) -> None:
        self._reannounce.set()
        self._wake.set()

    def drain(self) -> None:
        """Process what is queued, but return within a bounded time so the tick runs under overload."""
        until = time.monotonic() + TICK_S
        while self._queue and time.monotonic() < until:
            batch = []
            try:
                for _ in range(BATCH_MAX):
                    batch.append(self._queue.popleft())
            except IndexError:
                pass
            self.process(batch)
        if self._queue:
            self._wake.set()  # more to do right after the tick

    # ------------------------------------------------------------------ processing
    def _metric_of(self, topic: str) -> str | None:
        cached = self._topic_cache.get(topic, False)
        if cached is not False:
            return cached
        metric = next((metric_name(f, topic) for f in self.filters if topic_matches(f, topic)), None)
        if len(self._topic_cache) > 4 * self.store.max_metrics:
            self._topic_cache.clear()  # bounded: a flood of distinct topics cannot grow memory
        self._topic_cache[topic] = metric
        return metric

    def _wanted(self, metric: str) -> bool:
        wanted = self._metric_cache.get(metric)
        if wanted is None:
            wanted = not is_excluded(metric, self.settings.sensors.exclude)
            if len(self._metric_cache) > 4 * self.store.max_metrics:
                self._metric_cache.clear()
            self._metric_cache[metric] = wanted
        return wanted

    def _is_redelivery(self, msg: RawMessage) -> bool:
        """QoS 1 redeliveries of readings without timestamps: (topic, mid, payload hash)."""
        if msg.qos == 0 or msg.mid == 0:
            return False
        key = (msg.topic, msg.mid, hashlib.blake2b(msg.payload, digest_size=8).digest())
        if msg.dup and key in self._redeliveries:
            return True
        self._redeliveries[key] = None
        if len(self._redeliveries) > self._redelivery_keep:
            self._redeliveries.popitem(last=False)
        return False

    def redelivery_keys(self, limit: int | None = None) -> list[list]:
        """The newest identities, JSON-ready, for the snapshot: a reading the snapshot covers may
        still be redelivered when its acknowledgement was lost in the crash."""
        keys = list(self._redeliveries)[-(limit or self._snapshot_redelivery_keys):]
        return [[topic, mid, digest.hex()] for topic, mid, digest in keys]

    def restore_redelivery_keys(self, keys: list) -> None:
        for key in keys[-self._redelivery_keep:]:
            try:
                topic, mid, digest = key
                self._redeliveries[(str(topic), int(mid), bytes.fromhex(digest))] = None
            except (TypeError, ValueError):
                continue  # a malformed entry only weakens duplicate detection; never a failed start

    def reject(self, topic: str, rejection: Rejection, now: float) -> None:
        self.stats.reject(rejection.reason)
        if self._replay_silent:
            return  # reported before the crash
        if rejection.reason == "ts_in_future" and now - self._clock_warned > CLOCK_WARNING_EVERY_S:
            self._clock_warned = now
            log.warning("device_clock_ahead", topic=topic[:200], detail=rejection.detail,
                        hint="readings stamped in the future are rejected; is the device clock synchronised (NTP)?")
        count = self.reporter.should_report(topic, now)
        if count:
            log.warning("rejected", topic=topic[:200], reason=rejection.reason, detail=rejection.detail, count=count)
            payload = {"topic": topic[:200], "reason": rejection.reason, "detail": rejection.detail, "count": count}
            self.publish(self.topics.error, json.dumps(payload), qos=0)

    def process(self, batch: list[RawMessage]) -> None:
        now = time.time()
        per_slot: dict[int, list[_Scored]] = {}
        with self.lock:
            seq = 0
            for msg in batch:
                if msg.seq:
                    seq = msg.seq  # the writer hands readings over in seq order
                metric = self._metric_of(msg.topic)
                if metric is None:
                    continue
                if msg.qos and self._is_redelivery(msg):
                    self.stats.incr("duplicates")
                    continue
                decoded = decode_payload(metric, msg.payload, msg.received, self.limits)
                if isinstance(decoded, Rejection):
                    self.reject(msg.topic, decoded, now)
                    continue
                for reading in decoded:
                    if not self._wanted(reading.metric):
                        self.stats.incr("excluded")
                        continue
                    slot = self.store.slot(reading.metric)
                    if slot is None:
                        self.reject(msg.topic, Rejection(
                            "metric_limit",
                            f"metric {reading.metric!r} refused: sensors.max_metrics = {self.store.max_metrics} reached",
                        ), now)
                        continue
                    if slot >= len(self.decisions) or self.decisions[slot] is None:
                        self._new_metric(slot, reading.metric)
                    if reading.unit and self.store.units[slot] != reading.unit:
                        self.store.units[slot] = reading.unit
                    per_slot.setdefault(slot, []).append(_Scored(slot, reading, msg.received))
            self.stats.incr("readings", sum(len(v) for v in per_slot.values()))
            depth = max((len(v) for v in per_slot.values()), default=0)
            for k in range(depth):
                self._score_round([v[k] for v in per_slot.values() if len(v) > k])
            if seq > self.applied_seq:
                self.applied_seq = seq  # under the lock: a snapshot sees state and seq together

    def replay(self, messages: Iterable[RawMessage], published_through: int) -> int:
        """Re-apply WAL readings at start, before the lane and MQTT start, through the same
        decode/apply path. Readings with seq <= ``published_through`` had been applied before
        the crash: their events were published then and are not published again (an episode
        they open is restored as announced, so its `end` still goes out). Later readings' events
        are published (spooled until the broker connects). States are re-announced on connect."""
        count = 0
        batch: list[RawMessage] = []
        self._replaying = True
        try:
            for msg in messages:
                silent = msg.seq <= published_through
                if batch and (silent != self._replay_silent or len(batch) >= BATCH_MAX):
                    self.process(batch)
                    batch = []
                self._replay_silent = silent
                batch.append(msg)
                count += 1
            if batch:
                self.process(batch)
        finally:
            self._replaying = self._replay_silent = False
        return count

    def _new_metric(self, slot: int, metric: str) -> None:
        rule = self.settings.override_for(metric)
        if rule and rule.unit:
            self.store.units[slot] = rule.unit
        if slot == len(self.decisions):
            self.decisions.append(MetricDecision(metric))
        else:  # a forgotten metric's row, reused
            self.decisions[slot] = MetricDecision(metric)
            self._thresholds.pop(slot, None)
            self.detector.reset(slot)
        if len(self._tokens) < self.store.capacity:
            self._tokens = _grown(self._tokens, self.store.capacity, STATE_BURST)
            self._token_time = _grown(self._token_time, self.store.capacity, 0.0)
            self._interval_override = _grown(self._interval_override, self.store.capacity, np.nan)
        self._interval_override[slot] = rule.expected_interval_s if rule and rule.expected_interval_s else np.nan
        self._apply_recurring(slot, metric)
        self._tokens[slot] = STATE_BURST
        log.info("metric_added", metric=metric, metrics=len(self.store))
        if self.on_new_metric is not None:
            self.on_new_metric(metric)

    def _score_round(self, items: list[_Scored]) -> None:
        slots = np.fromiter((i.slot for i in items), dtype=np.int64, count=len(items))
        ts = np.fromiter((i.reading.ts for i in items), dtype=float, count=len(items))
        values = np.fromiter((i.reading.value for i in items), dtype=float, count=len(items))
        outcome = self.store.append(slots, ts, values)
        if (outcome == DUPLICATE).any():
            self.stats.incr("duplicates", int((outcome == DUPLICATE).sum()))
        if (outcome == LATE).any():
            self.stats.incr("late", int((outcome == LATE).sum()))
        fresh = np.flatnonzero(outcome == APPENDED)
        if fresh.size == 0:
            return
        for i in fresh:
            if items[i].reading.has_ts:
                self.clock.observe(items[i].reading.ts)
        s = slots[fresh]
        win_vals, win_times = self.store.windows(s, self.detector.window)
        t0 = time.perf_counter()
        scores = self.detector.score(s, win_vals, win_times)
        self.stats.detector_latency.add(time.perf_counter() - t0)
        self.stats.incr("scored", int(fresh.size))
        mono = time.monotonic()
        explain = getattr(self.detector, "explain", None)
        for row, i in enumerate(fresh):
            item = items[i]
            slot = item.slot
            state = self.decisions[slot]
            score, threshold = float(scores[row]), self.threshold_for(slot)
            events = decide_value(
                state,
                ts=item.reading.ts,
                value=item.reading.value,
                score=score,
                threshold=threshold,
                end_ratio=self.settings.anomaly.end_ratio,
                end_after=self.settings.anomaly.end_after,
                context=win_vals[row, :-1],
                unit=self.store.units[slot],
                context_ts=win_times[row, :-1],
                # asked only when an episode may start: no callable built for the other readings
                explain=partial(explain, slot) if explain is not None and score >= threshold else None,
            )
            if state.muted_until and state.muted_until > self.clock.now():
                state.status = MUTED
            self._emit(events)
            if self._replaying:
                continue
            if self._take_token(slot, mono):
                self._publish_state(slot, mono)
                self.stats.ingest_latency.add(time.time() - item.received)
            else:
                self._pending_state.add(slot)

    # ------------------------------------------------------------------ publishing
    def state_payload(self, slot: int) -> dict:
        state = self.decisions[slot]
        n = self.store.count[slot]
        head = (n - 1) % self.store.window
        value = float(self.store.values[slot, head]) if n else None
        ts = float(self.store.times[slot, head]) if n else None
        score = state.last_score
        return {
            "value": value,
            "ts": round(ts, 3) if ts is not None else None,
            "score": round(score, 4) if math.isfinite(score) else None,
            "status": state.status,
            "unit": self.store.units[slot],
        }

    def _take_token(self, slot: int, mono: float) -> bool:
        tokens = min(STATE_BURST, self._tokens[slot] + (mono - self._token_time[slot]) * STATE_RATE_PER_S)
        self._token_time[slot] = mono
        if tokens >= 1.0:
            self._tokens[slot] = tokens - 1.0
            return True
        self._tokens[slot] = tokens
        return False

    def _publish_state(self, slot: int, mono: float) -> None:
        self._pending_state.discard(slot)
        self.publish(self.topics.state(self.store.names[slot]), json.dumps(self.state_payload(slot)),
                     qos=self.settings.mqtt.qos, retain=True)
        self.stats.incr("states_published")

    def _emit(self, events: list[Event]) -> None:
        for ev in events:
            state = self.decisions[self.store.index[ev.episode.metric]]
            muted = state.muted_until and state.muted_until > self.clock.now()
            if muted and ev.event == "start":
                ev.episode.announced = False
            if muted or not ev.episode.announced:  # never an `end` whose `start` nobody saw
                self.stats.incr("events_muted")
                continue
            payload = ev.payload()
            if self._replay_silent:  # WAL replay: published before the crash
                self.recent_events.append(payload)
                continue
            self.publish(self.topics.anomaly(ev.episode.metric), json.dumps(payload),
                         qos=self.settings.mqtt.qos, retain=False)
            self.recent_events.append(payload)
            self.snapshot_due.set()  # episode boundaries are snapshotted promptly
            if ev.event == "start" and self.on_episode_start is not None:
                self.on_episode_start(payload)
            self.stats.incr(f"events_{ev.event}")
            log.info("anomaly", phase=ev.event, kind=ev.episode.kind, metric=ev.episode.metric,
                     id=ev.episode.id, summary=ev.summary)

    def flush_states(self, force: bool = False) -> None:
        with self.lock:
            mono = time.monotonic()
            for slot in list(self._pending_state):
                if force or self._take_token(slot, mono):
                    self._publish_state(slot, mono)

    def reannounce(self) -> None:
        """After every (re)connect: every metric's retained state again."""
        with self.lock:
            mono = time.monotonic()
            for slot in self.live_slots():
                self._publish_state(slot, mono)
            if self.on_reannounce is not None:
                self.on_reannounce([self.store.names[slot] for slot in self.live_slots()])
        log.info("reannounced", metrics=len(self.store))

    # ------------------------------------------------------------------ tick
    def tick(self) -> None:
        if self._reannounce.is_set():
            self._reannounce.clear()
            self.reannounce()
            self._next_stats = 0.0  # fresh retained stats right after every connect
        self.flush_states()
        if time.monotonic() >= self._next_silence_check:
            self._next_silence_check = time.monotonic() + SILENCE_CHECK_S
            self.check_silence()
        if time.monotonic() >= self._next_stats and self.is_connected():
            self._next_stats = time.monotonic() + self.settings.node.stats_interval_s
            self.publish_stats()

    def check_silence(self) -> None:
        """Stale when now - last reading > stale_factor x expected interval (override, else learned)."""
        with self.lock:
            n = len(self.decisions)
            if n == 0:
                return
            now = self.clock.now()
            factor = self.settings.sensors.stale_factor
            override = self._interval_override[:n]
            interval = np.where(np.isnan(override), self.store.expected_intervals(), override)
            # A learned interval never makes silence shorter than min_silence_s; a configured one may.
            stale_after = np.where(np.isnan(override), np.maximum(factor * interval, self.settings.sensors.min_silence_s),
                                   factor * override)
            last = self.store.last_times()
            with np.errstate(invalid="ignore"):
                overdue = np.flatnonzero(now - last > stale_after)
            mono = time.monotonic()
            for slot in overdue:
                state = self.decisions[slot]
                if state is None or state.silence is not None:
                    continue
                if state.status == LEARNING and np.isnan(self._interval_override[slot]):
                    continue  # no events before the baseline exists (DESIGN.md), unless an interval is set
                events = decide_silence(state, now=now, last_ts=float(last[slot]), interval=float(interval[slot]),
                                        stale_after=float(stale_after[slot]),
                                        unit=self.store.units[slot])
                self._emit(events)
                self._publish_state(slot, mono)

    # ------------------------------------------------------------------ control (command lane, under the lock)
    def reset_metric(self, slot: int) -> None:
        """Forget the learned baseline and any open episode; the metric learns again."""
        self.store.reset(slot)
        self.detector.reset(slot)
        self.decisions[slot] = MetricDecision(self.store.names[slot])
        self._pending_state.discard(slot)
        self._publish_state(slot, time.monotonic())

    def set_muted(self, slot: int, until: float) -> None:
        state = self.decisions[slot]
        state.muted_until = until
        if until > self.clock.now():
            state.status = MUTED
        elif state.episode:
            state.status = ANOMALOUS
        elif state.silence:
            state.status = STALE
        else:
            state.status = LEARNING if math.isnan(state.last_score) else OK
        self._publish_state(slot, time.monotonic())

    def forget_metric(self, slot: int) -> str:
        """Drop the metric, its history and its retained state topic (empty retained payload)."""
        name = self.store.names[slot]
        self.store.release(slot)
        self.detector.reset(slot)
        self.decisions[slot] = None
        self._pending_state.discard(slot)
        self.publish(self.topics.state(name), b"", qos=1, retain=True)
        if self.on_forget is not None:
            self.on_forget(name)
        return name

    def after_restore(self) -> None:
        """Rebuild what derives from the settings after a snapshot replaced the state."""
        cap = self.store.capacity
        self._tokens = _grown(np.zeros(0), cap, STATE_BURST)
        self._token_time = _grown(np.zeros(0), cap, 0.0)
        self._interval_override = _grown(np.zeros(0), cap, np.nan)
        self.apply_settings(self.settings)
        self._reannounce.set()

    def live_slots(self) -> list[int]:
        return [slot for slot, state in enumerate(self.decisions) if state is not None]

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self.decisions:
            if state is not None:
                counts[state.status] = counts.get(state.status, 0) + 1
        return counts

    def open_episodes(self) -> list[dict]:
        out = []
        for state in self.decisions:
            if state is None:
                continue
            for ep in (state.episode, state.silence):
                if ep is not None:
                    out.append({"id": ep.id, "metric": ep.metric, "kind": ep.kind, "start": ep.start_ts})
        return out

    def stats_payload(self) -> dict:
        with self.lock:
            payload = {
                "ts": round(time.time(), 3),
                "uptime_s": round(time.time() - self.started, 1),
                "metrics": len(self.store),
                "status": self.status_counts(),
                "open_episodes": len(self.open_episodes()),
                "queue_depth": self.queue_depth,
                "detector": self.detector.name,
                "memory_state_bytes": self.store.memory_bytes(),
            }
        payload.update(self.stats.snapshot())
        payload.update(self.stats_extra())
        return payload

    def publish_stats(self) -> None:
        self.publish(self.topics.stats, json.dumps(self.stats_payload()), qos=0, retain=True)


def _grown(arr: np.ndarray, size: int, fill: float) -> np.ndarray:
    out = np.full(size, fill)
    out[: len(arr)] = arr
    return out


# Statuses other modules name; re-exported for the command lane.
__all__ = ["SensorPipeline", "Clock", "LEARNING", "STALE", "MUTED"]
