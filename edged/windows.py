"""Per-metric state in fixed memory: recent-reading rings and a bucketed history.

All metrics live in shared 2-D numpy arrays (one row a metric), so gathering the windows
of every metric due for scoring is one fancy-indexing operation, and memory per metric is
fixed: ``window`` readings plus the history buckets of :data:`HISTORY_TIERS`.

Ordering rule (documented in the README):
- a reading stamped after the metric's newest reading is appended (ring + history);
- one stamped exactly at a time the ring still holds is a duplicate and is dropped;
- an older one ("late") updates the history buckets only: the detector sees an
  ordered stream, the statistics still count it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (bucket width in seconds, number of buckets): 3 h at 1 min, 24 h at 15 min, 7 days at 3 h.
HISTORY_TIERS: tuple[tuple[float, int], ...] = ((60.0, 180), (900.0, 96), (10800.0, 56))
_GROW_STEP = 64


def row_median(x: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN for an all-NaN row). Full rows (the normal case)
    take np.median; rows with NaN are sorted (NaN sorts last) and the middle of their valid
    part is read off — numpy's nanmedian goes through masked arrays and costs ~10-100x more."""
    nan = np.isnan(x)
    full = ~nan.any(axis=1)
    if full.all():
        return np.median(x, axis=1)
    out = np.empty(len(x))
    if full.any():
        out[full] = np.median(x[full], axis=1)
    part = np.sort(x[~full], axis=1)
    k = (~nan[~full]).sum(axis=1)
    lo = np.take_along_axis(part, np.maximum((k - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(part, np.minimum(k // 2, part.shape[1] - 1)[:, None], axis=1)[:, 0]
    out[~full] = np.where(k > 0, (lo + hi) / 2, np.nan)
    return out


@dataclass(frozen=True, slots=True)
class Stats:
    """Aggregate over a time window, exact min/max whatever the downsampling."""

    count: int
    min: float
    max: float
    mean: float
    last: float
    last_ts: float
    first_ts: float  # start of the earliest bucket used


class HistoryTier:
    def __init__(self, width: float, size: int, capacity: int) -> None:
        self.width = width
        self.size = size
        self.bucket = np.full((capacity, size), -1, dtype=np.int64)
        self.min = np.zeros((capacity, size))
        self.max = np.zeros((capacity, size))
        self.sum = np.zeros((capacity, size))
        self.count = np.zeros((capacity, size), dtype=np.int64)
        self.last = np.zeros((capacity, size))
        self.last_ts = np.zeros((capacity, size))

    def grow(self, capacity: int) -> None:
        for name in ("bucket", "min", "max", "sum", "count", "last", "last_ts"):
            old = getattr(self, name)
            fill = -1 if name == "bucket" else 0
            new = np.full((capacity, self.size), fill, dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def clear(self, slot: int) -> None:
        self.bucket[slot] = -1
        self.count[slot] = 0

    def add(self, slots: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        """Add one reading per slot (slots unique within a call)."""
        idx = np.floor(ts / self.width).astype(np.int64)
        pos = idx % self.size
        current = self.bucket[slots, pos]
        fresh = current < idx
        keep = current <= idx  # current > idx: the slot holds a newer bucket, reading too old
        s, p, i = slots[fresh], pos[fresh], idx[fresh]
        self.bucket[s, p] = i
        self.min[s, p] = np.inf
        self.max[s, p] = -np.inf
        self.sum[s, p] = 0.0
        self.count[s, p] = 0
        self.last_ts[s, p] = -np.inf
        s, p, t, v = slots[keep], pos[keep], ts[keep], values[keep]
        self.min[s, p] = np.minimum(self.min[s, p], v)
        self.max[s, p] = np.maximum(self.max[s, p], v)
        self.sum[s, p] += v
        self.count[s, p] += 1
        newer = t >= self.last_ts[s, p]
        self.last[s[newer], p[newer]] = v[newer]
        self.last_ts[s[newer], p[newer]] = t[newer]

    def covers(self, newest_ts: float, since: float) -> bool:
        oldest_kept = (np.floor(newest_ts / self.width) - self.size + 1) * self.width
        return since >= oldest_kept

    def stats(self, slot: int, since: float, until: float) -> Stats | None:
        # Only the last ``size`` buckets are history: a stale bucket the ring has not yet
        # overwritten (a metric that went quiet for a while) must not leak into a query.
        lo = max(np.floor(since / self.width), self.bucket[slot].max() - self.size + 1)
        hi = np.floor(until / self.width)
        sel = (self.bucket[slot] >= lo) & (self.bucket[slot] <= hi) & (self.count[slot] > 0)
        if not sel.any():
            return None
        count = int(self.count[slot][sel].sum())
        newest = int(np.argmax(np.where(sel, self.last_ts[slot], -np.inf)))
        return Stats(
            count=count,
            min=float(self.min[slot][sel].min()),
            max=float(self.max[slot][sel].max()),
            mean=float(self.sum[slot][sel].sum() / count),
            last=float(self.last[slot, newest]),
            last_ts=float(self.last_ts[slot, newest]),
            first_ts=float(self.bucket[slot][sel].min() * self.width),
        )


@dataclass(slots=True)
class AppendResult:
    """Per input reading: 0 appended, 1 duplicate (dropped), 2 late (history only)."""

    outcome: np.ndarray


APPENDED, DUPLICATE, LATE = 0, 1, 2


class MetricStore:
    def __init__(self, window: int, max_metrics: int) -> None:
        self.window = window
        self.max_metrics = max_metrics
        self.capacity = 0
        self.names: list[str | None] = []  # None: a forgotten metric's row, free for reuse
        self.index: dict[str, int] = {}
        self.free: list[int] = []
        self.units: list[str | None] = []
        self.values = np.zeros((0, window))
        self.times = np.zeros((0, window))
        self.count = np.zeros(0, dtype=np.int64)  # readings ever appended to the ring
        self.tiers = [HistoryTier(w, n, 0) for w, n in HISTORY_TIERS]
        self._grow(min(_GROW_STEP, max_metrics))

    # ------------------------------------------------------------------ registry
    def _grow(self, capacity: int) -> None:
        capacity = min(capacity, self.max_metrics)
        if capacity <= self.capacity:
            return
        values = np.full((capacity, self.window), np.nan)
        times = np.full((capacity, self.window), np.nan)
        count = np.zeros(capacity, dtype=np.int64)
        values[: self.capacity] = self.values
        times[: self.capacity] = self.times
        count[: self.capacity] = self.count
        self.values, self.times, self.count = values, times, count
        for tier in self.tiers:
            tier.grow(capacity)
        self.capacity = capacity

    def slot(self, name: str, *, create: bool = True) -> int | None:
        """The metric's row; None when it is new and the store is full (or create=False)."""
        slot = self.index.get(name)
        if slot is not None or not create:
            return slot
        if self.free:
            slot = self.free.pop()
            self.names[slot], self.units[slot] = name, None
            self.index[name] = slot
            return slot
        if len(self.names) >= self.max_metrics:
            return None
        if len(self.names) >= self.capacity:
            self._grow(self.capacity * 2)
        slot = len(self.names)
        self.names.append(name)
        self.units.append(None)
        self.index[name] = slot
        return slot

    def __len__(self) -> int:
        return len(self.index)

    def release(self, slot: int) -> None:
        """Forget a metric entirely; its row is reused by the next new metric."""
        name = self.names[slot]
        if name is None:
            return
        del self.index[name]
        self.names[slot] = None
        self.reset(slot, history=True)
        self.free.append(slot)

    def reset(self, slot: int, *, history: bool = False) -> None:
        self.values[slot] = np.nan
        self.times[slot] = np.nan
        self.count[slot] = 0
        if history:
            for tier in self.tiers:
                tier.clear(slot)

    # ------------------------------------------------------------------ writes
    def newest_ts(self, slot: int) -> float:
        if self.count[slot] == 0:
            return -np.inf
        return float(self.times[slot, (self.count[slot] - 1) % self.window])

    def append(self, slots: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """One reading per slot (unique slots). Returns the outcome per reading."""
        n = self.count[slots]
        head = (n - 1) % self.window
        newest = np.where(n > 0, self.times[slots, head], -np.inf)
        outcome = np.full(len(slots), APPENDED, dtype=np.int8)
        older = ts <= newest
        if older.any():
            for k in np.flatnonzero(older):
                outcome[k] = DUPLICATE if np.any(self.times[slots[k]] == ts[k]) else LATE
        fresh = outcome == APPENDED
        s = slots[fresh]
        pos = self.count[s] % self.window
        self.values[s, pos] = values[fresh]
        self.times[s, pos] = ts[fresh]
        self.count[s] += 1
        hist = outcome != DUPLICATE
        for tier in self.tiers:
            tier.add(slots[hist], ts[hist], values[hist])
        return outcome

    # ------------------------------------------------------------------ reads
    def windows(self, slots: np.ndarray, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Values and times of the last ``length`` readings, oldest first, NaN-padded on the left."""
        length = length or self.window
        offsets = np.arange(-length, 0)
        cols = (self.count[slots, None] + offsets[None, :]) % self.window
        rows = slots[:, None]
        vals = self.values[rows, cols]
        times = self.times[rows, cols]
        missing = offsets[None, :] < -self.count[slots, None]
        vals[missing] = np.nan
        times[missing] = np.nan
        return vals, times

    def expected_intervals(self) -> np.ndarray:
        """Median spacing of each metric's recent readings (NaN with fewer than 3)."""
        n = len(self.names)
        if n == 0:
            return np.zeros(0)
        _, times = self.windows(np.arange(n))
        with np.errstate(all="ignore"):
            gaps = np.diff(times, axis=1)
            gaps[gaps <= 0] = np.nan
            ok = np.sum(~np.isnan(gaps), axis=1) >= 2
            out = np.full(n, np.nan)
            if ok.any():
                out[ok] = row_median(gaps[ok])
        return out

    def last_times(self) -> np.ndarray:
        n = len(self.names)
        slots = np.arange(n)
        head = (self.count[:n] - 1) % self.window
        return np.where(self.count[:n] > 0, self.times[slots, head], np.nan)

    def last_values(self) -> np.ndarray:
        n = len(self.names)
        slots = np.arange(n)
        head = (self.count[:n] - 1) % self.window
        return np.where(self.count[:n] > 0, self.values[slots, head], np.nan)

    def stats(self, slot: int, since: float, until: float) -> Stats | None:
        """Aggregates over [since, until] from the finest tier that still covers ``since``."""
        newest = self.newest_ts(slot)
        if not np.isfinite(newest):
            return None
        for tier in self.tiers:
            if tier.covers(max(newest, until), since):
                return tier.stats(slot, since, until)
        return self.tiers[-1].stats(slot, since, until)

    def memory_bytes(self) -> int:
        total = self.values.nbytes + self.times.nbytes + self.count.nbytes
        for tier in self.tiers:
            total += sum(getattr(tier, a).nbytes for a in ("bucket", "min", "max", "sum", "count", "last", "last_ts"))
        return total
