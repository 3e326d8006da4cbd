"""Counters, latency percentiles and the rate-limited rejection reporter.

The stats topic, `edged status` and (later) Prometheus read the same numbers from here.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

import numpy as np


LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)


class Latency:
    """Recent samples (bounded) → p50/p99 in milliseconds; and, since the start, a count, a sum
    and cumulative buckets (what a Prometheus histogram exposes: edged.prom reads them here)."""

    def __init__(self, keep: int = 4096, buckets_ms: tuple[float, ...] = LATENCY_BUCKETS_MS) -> None:
        self.samples: deque[float] = deque(maxlen=keep)
        self.buckets_ms = buckets_ms
        self._bounds_s = [b / 1000 for b in buckets_ms]
        self._per_bucket = [0] * len(buckets_ms)  # not cumulative; above the last bound: only in count
        self.count = 0
        self.sum_s = 0.0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.count += 1  # before the bucket: a concurrent reader never sees buckets above +Inf
        self.sum_s += seconds
        i = bisect.bisect_left(self._bounds_s, seconds)  # le semantics: a value on a bound counts in it
        if i < len(self._per_bucket):
            self._per_bucket[i] += 1

    def summary(self) -> dict:
        out: dict = {"p50_ms": None, "p99_ms": None}
        if self.samples:
            arr = np.fromiter(self.samples, dtype=float)
            p50, p99 = np.percentile(arr, [50, 99]) * 1000
            out = {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}
        buckets, running = {}, 0
        for bound, n in zip(self.buckets_ms, list(self._per_bucket)):
            running += n
            buckets[f"{bound:g}"] = running
        buckets["+Inf"] = max(self.count, running)
        out.update(count=buckets["+Inf"], sum_ms=round(self.sum_s * 1000, 3), buckets_ms=buckets)
        return out


class Rate:
    """Recent samples of a rate (tokens/s) → median."""

    def __init__(self, keep: int = 256) -> None:
        self.samples: deque[float] = deque(maxlen=keep)

    def add(self, value: float) -> None:
        self.samples.append(value)

    def summary(self) -> float | None:
        return round(float(np.median(np.fromiter(self.samples, dtype=float))), 1) if self.samples else None


class Stats:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.ingest_latency = Latency()  # message received → state published
        self.detector_latency = Latency()  # one detector call
        self.llm_tokens_per_s = Rate()
        self._lock = threading.Lock()

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def snapshot(self) -> dict:
        with self._lock:
            counters = dict(self.counters)
            rejected = dict(self.rejected)
        return {
            **counters,
            "rejected": rejected,
            "rejected_total": sum(rejected.values()),
            "ingest_latency": self.ingest_latency.summary(),
            "detector_latency": self.detector_latency.summary(),
            "llm_tokens_per_s": self.llm_tokens_per_s.summary(),
        }


@dataclass(slots=True)
class _TopicReport:
    last_report: float
    pending: int


class RejectionReporter:
    """At most one log line and one error-topic report per topic per ``every_s``.

    Rejections in between are counted and carried by the next report (``count``). The
    table of topics is bounded: a flood of distinct topics cannot grow memory.
    """

    def __init__(self, every_s: float = 60.0, max_topics: int = 1024) -> None:
        self.every_s = every_s
        self.max_topics = max_topics
        self._topics: OrderedDict[str, _TopicReport] = OrderedDict()

    def should_report(self, topic: str, now: float) -> int:
        """0: stay quiet; n > 0: report now, covering n rejections."""
        entry = self._topics.get(topic)
        if entry is None:
            self._topics[topic] = _TopicReport(now, 0)
            if len(self._topics) > self.max_topics:
                self._topics.popitem(last=False)
            return 1
        self._topics.move_to_end(topic)
        if now - entry.last_report >= self.every_s:
            count = entry.pending + 1
            entry.last_report, entry.pending = now, 0
            return count
        entry.pending += 1
        return 0
