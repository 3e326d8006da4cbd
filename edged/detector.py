"""The Detector protocol and the built-in rolling robust z-score detector.

A detector scores a batch of metric windows in one call: ``values`` and ``times`` are
``(batch, length)`` arrays, oldest first, NaN-padded on the left, the last column being the
reading to score. It returns one score per row in [0, 1] (NaN while the metric is still
learning). ``slots`` identify the metrics so a detector can keep per-metric state
(normalisation, calibration) in arrays indexed by slot; ``reset(slot)`` forgets it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .windows import row_median




@runtime_checkable
class Detector(Protocol):
    name: str
    window: int  # readings of context (the scored reading included) the detector wants

    def score(self, slots: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray: ...

    def reset(self, slot: int) -> None: ...

    # optional: ``explain(slot) -> dict``, what led the slot's last score ("channel", and "expected":
    # the value the reading was compared with, where that is not the window before it); the pipeline
    # asks it when an episode starts (edged/anomaly/model_detector.py)


ENVELOPE_BUCKET_S = 3600.0  # the day-long envelope is kept as hourly min/max buckets
ENVELOPE_HOURS = 24  # the envelope: the readings of the last 24 hours before the detector's window
NO_HOUR = np.iinfo(np.int64).min  # an empty bucket


class RobustZScoreDetector:
    """A robust z-score against the preceding window, judged against the metric's last day.

    Short term: z = |x - median| / scale over the preceding window. The noise scale is
    1.4826 MAD, or 1.2533 x the mean absolute deviation from the median where the MAD is 0 (a
    sensor rounding to 0.1 that repeats its usual value in over half the window: the MAD alone
    would then score a one-step change as an outlier; the mean deviation is used only there,
    since it is not robust to an excursion inside the window). Floors: 5 % of the window's
    spread and a hair of the level, so a perfectly flat metric does not alarm on its first
    rounding change.

    Day-long envelope: per slot, hourly min/max buckets of the metric's readings. A value inside
    the range the metric took over the last ENVELOPE_HOURS before the detector's window (the
    hours before the one of the window's oldest reading: a rise in progress does not raise its
    own bar) is not news however unusual it is for the last hour: a daily cycle, a pump's run,
    the kitchen while cooking. So z is measured from the envelope's edge:
    z = min(z, max(0, x - envelope max, envelope min - x) / scale). A metric that has only ever
    shown two values (a door, a switch) keeps the plain z: its envelope is both states and
    says nothing about them.

    ``z_half`` is the z at which the score is 0.5: score = z² / (z² + z_half²).
    Assumption (as the daemon's pipeline and the replay guarantee): at most one reading per slot
    per ``score`` call, in time order. ``score_series`` is the same arithmetic for a whole series.
    """

    name = "zscore"

    def __init__(self, window: int = 64, learning_readings: int = 30, z_half: float = 6.0,
                 envelope: bool = True, capacity: int = 16) -> None:
        self.window = window
        self.learning_readings = learning_readings
        self.z_half = z_half
        self.envelope = envelope
        self.capacity = 0
        self._alloc(capacity)

    # ------------------------------------------------------------------ per-slot state
    # per hourly bucket: the two lowest and the two highest readings (the envelope uses the
    # second of each, so one glitch reading does not widen a day's envelope)
    _STATE = ("hour", "lo1", "lo2", "hi1", "hi2", "v0", "v1", "many")

    def _alloc(self, capacity: int) -> None:
        old = {name: getattr(self, name) for name in self._STATE} if self.capacity else None
        k = ENVELOPE_HOURS + 1
        self.hour = np.full((capacity, k), NO_HOUR, dtype=np.int64)  # bucket index (hours since the epoch)
        self.lo1 = np.full((capacity, k), np.inf)
        self.lo2 = np.full((capacity, k), np.inf)
        self.hi1 = np.full((capacity, k), -np.inf)
        self.hi2 = np.full((capacity, k), -np.inf)
        self.v0 = np.full(capacity, np.nan)  # the first two distinct values a metric showed
        self.v1 = np.full(capacity, np.nan)
        self.many = np.zeros(capacity, dtype=bool)  # a third distinct value was seen
        if old:
            for name, arr in old.items():
                getattr(self, name)[: len(arr)] = arr
        self.capacity = capacity

    def _ensure(self, slots: np.ndarray) -> None:
        need = int(slots.max()) + 1 if len(slots) else 0
        if need > self.capacity:
            self._alloc(max(need, 2 * self.capacity))

    def reset(self, slot: int) -> None:
        if slot >= self.capacity:
            return
        self.hour[slot] = NO_HOUR
        self.lo1[slot] = self.lo2[slot] = np.inf
        self.hi1[slot] = self.hi2[slot] = -np.inf
        self.v0[slot] = self.v1[slot] = np.nan
        self.many[slot] = False

    def state_dict(self, n: int) -> dict[str, np.ndarray]:
        """Per-slot state of slots [0, n) for the snapshot."""
        self._ensure(np.array([max(n - 1, 0)]))
        return {name: getattr(self, name)[:n] for name in self._STATE}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if set(state) != set(self._STATE) or state["hour"].shape[1:] != self.hour.shape[1:]:
            return  # another layout: start the envelope afresh (it refills within a day)
        n = len(state["hour"])
        self._ensure(np.array([max(n - 1, 0)]))
        for name in self._STATE:
            getattr(self, name)[:n] = state[name]

    # ------------------------------------------------------------------ scoring
    def _short_z(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z, scale) of each row's last reading against the rest of the row; NaN while learning."""
        context = values[:, :-1]
        current = values[:, -1]
        n = np.sum(~np.isnan(context), axis=1)
        z = np.full(len(current), np.nan)
        scale = np.full(len(current), np.nan)
        ready = n >= max(self.learning_readings - 1, 2)
        if not ready.any():
            return z, scale
        ctx = context[ready]
        with np.errstate(all="ignore"):
            med = row_median(ctx)
            dev = np.abs(ctx - med[:, None])
            mad = row_median(dev)
            noise = 1.4826 * mad
            collapsed = mad == 0
            if collapsed.any():  # the mean absolute deviation takes over (0 only for a flat window)
                noise[collapsed] = 1.2533 * np.nanmean(dev[collapsed], axis=1)
            spread = np.nanmax(ctx, axis=1) - np.nanmin(ctx, axis=1)
            s = np.maximum.reduce([noise, 0.05 * spread, 1e-4 * np.abs(med), np.full_like(med, 1e-9)])
            z[ready] = np.abs(current[ready] - med) / s
        scale[ready] = s
        return z, scale

    def _squash(self, z: np.ndarray) -> np.ndarray:
        return z * z / (z * z + self.z_half**2)

    def score(self, slots: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        z, scale = self._short_z(values)
        slots = np.asarray(slots, dtype=np.int64)
        if self.envelope and len(slots) == len(z) and len(slots):
            self._ensure(slots)
            x = values[:, -1]
            hour = np.floor(times[:, -1] / ENVELOPE_BUCKET_S).astype(np.int64)
            # the hour of the window's oldest reading (the window is NaN-padded on the left);
            # the envelope is what came before the window, so a ramp does not raise its own bar
            oldest_t = times[:, 0].copy()
            padded = np.isnan(oldest_t)
            if padded.any():
                ctx_t = times[padded, :-1]
                first = np.argmax(~np.isnan(ctx_t), axis=1) if ctx_t.shape[1] else np.zeros(len(ctx_t), dtype=np.int64)
                got = ctx_t[np.arange(len(ctx_t)), first] if ctx_t.shape[1] else np.full(len(ctx_t), np.nan)
                oldest_t[padded] = np.where(np.isnan(got), times[padded, -1], got)
            oldest = np.floor(oldest_t / ENVELOPE_BUCKET_S).astype(np.int64)
            hours = self.hour[slots]
            inside = (hours >= (hour - ENVELOPE_HOURS)[:, None]) & (hours < oldest[:, None])
            active = self.many[slots] & inside.any(axis=1)
            if active.any():
                lo = np.where(inside, self.lo2[slots], np.inf).min(axis=1)
                hi = np.where(inside, self.hi2[slots], -np.inf).max(axis=1)
                with np.errstate(invalid="ignore"):
                    excess = np.maximum(np.maximum(x - hi, lo - x), 0.0)
                    z = np.where(active, np.minimum(z, excess / scale), z)
            self._observe(slots, x, hour)
        return self._squash(z)

    def _observe(self, slots: np.ndarray, x: np.ndarray, hour: np.ndarray) -> None:
        """Add this call's readings (one per slot) to the envelope and the distinct-value memory."""
        col = hour % (ENVELOPE_HOURS + 1)
        new = self.hour[slots, col] != hour
        self.hour[slots, col] = hour
        lo1 = np.where(new, np.inf, self.lo1[slots, col])
        lo2 = np.where(new, np.inf, self.lo2[slots, col])
        hi1 = np.where(new, -np.inf, self.hi1[slots, col])
        hi2 = np.where(new, -np.inf, self.hi2[slots, col])
        self.lo2[slots, col] = np.minimum(lo2, np.maximum(lo1, x))
        self.lo1[slots, col] = np.minimum(lo1, x)
        self.hi2[slots, col] = np.maximum(hi2, np.minimum(hi1, x))
        self.hi1[slots, col] = np.maximum(hi1, x)
        pending = ~self.many[slots]
        if not pending.any():
            return
        slots, x = slots[pending], x[pending]
        v0, v1 = self.v0[slots], self.v1[slots]
        first = np.isnan(v0)
        second = ~first & np.isnan(v1) & (x != v0)
        third = ~first & ~np.isnan(v1) & (x != v0) & (x != v1)
        self.v0[slots[first]] = x[first]
        self.v1[slots[second]] = x[second]
        self.many[slots[third]] = True

    def score_series(self, values: np.ndarray, times: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """A whole series at once (a fresh metric), equal to scoring it reading by reading through
        MetricStore (tests/test_detector.py)."""
        appended = appended_mask(times)
        v, t = values[appended], times[appended]
        pad = np.full(self.window - 1, np.nan)
        wins = np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, v]), self.window)
        z = np.empty(len(v))
        scale = np.empty(len(v))
        for start in range(0, len(v), chunk):
            z[start:start + chunk], scale[start:start + chunk] = self._short_z(wins[start:start + chunk])
        if self.envelope and len(v):
            lo, hi, active = envelope_series(v, t, self.window)
            with np.errstate(invalid="ignore"):
                excess = np.maximum(np.maximum(v - hi, lo - v), 0.0)
                z = np.where(active, np.minimum(z, excess / scale), z)
        return spread_scores(appended, self._squash(z))


def _range_extreme(x: np.ndarray, start: np.ndarray, stop: np.ndarray, op) -> np.ndarray:
    """op (np.minimum / np.maximum) over x[start:stop] per row (a sparse table; stop > start)."""
    table = [x]
    span = 1
    while 2 * span <= max(int((stop - start).max()), 1):
        prev = table[-1]
        table.append(op(prev[:-span], prev[span:]))
        span *= 2
    length = stop - start
    level = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
    out = np.empty(len(start))
    for k in np.unique(level):
        rows = level == k
        width = 1 << int(k)
        out[rows] = op(table[k][start[rows]], table[k][stop[rows] - width])
    return out


def envelope_series(v: np.ndarray, t: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each reading of an appended series: the envelope's low and high (over the hourly
    buckets of the last ENVELOPE_HOURS before the hour of the detector window's oldest reading,
    each bucket's second-lowest and second-highest reading) and whether it is in use, exactly as
    RobustZScoreDetector.score keeps them reading by reading."""
    n = len(v)
    hour = np.floor(t / ENVELOPE_BUCKET_S).astype(np.int64)  # non-decreasing: appended times increase
    buckets, first = np.unique(hour, return_index=True)
    ends = np.append(first[1:], n)
    order = np.lexsort((v, hour))  # by hour, then value: each bucket's readings sorted
    sv = v[order]
    two = ends - first >= 2
    lo2 = np.where(two, sv[np.minimum(first + 1, n - 1)], np.inf)
    hi2 = np.where(two, sv[np.maximum(ends - 2, 0)], -np.inf)
    index = np.arange(n)
    oldest = hour[np.maximum(index - (window - 1), 0)]  # the hour of the window's oldest reading
    b_start = np.searchsorted(buckets, hour - ENVELOPE_HOURS, side="left")
    b_stop = np.searchsorted(buckets, oldest, side="left")
    has = b_stop > b_start
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    if has.any():
        lo[has] = _range_extreme(lo2, b_start[has], b_stop[has], np.minimum)
        hi[has] = _range_extreme(hi2, b_start[has], b_stop[has], np.maximum)
    # a third distinct value among the earlier readings
    _, first_index = np.unique(v, return_index=True)
    third = np.sort(first_index)[2] if len(first_index) >= 3 else n
    active = has & (index > third)
    return lo, hi, active


def appended_mask(times: np.ndarray) -> np.ndarray:
    """The store's ordering rule over a whole series: only readings newer than every earlier one
    are appended (and scored); a duplicate or late one keeps the last appended reading's score."""
    if len(times) == 0:
        return np.zeros(0, dtype=bool)
    return times > np.concatenate([[-np.inf], np.maximum.accumulate(times)[:-1]])


def spread_scores(appended: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    index = np.cumsum(appended) - 1  # the last appended reading at or before each row
    return np.where(index >= 0, fresh[np.maximum(index, 0)] if len(fresh) else np.nan, np.nan)


def make_detector(kind: str, window: int, learning_readings: int, model_dir: str = "", runtime_settings=None) -> Detector:
    """``zscore``: the built-in rolling robust z-score. ``model``: the ONNX window encoder with
    range-excursion, level-shift, stuck-value, volatility and time-of-day channels (edged/anomaly, models/edged-anomaly-mlp); its
    model directory is checked against its manifest (sha256) before anything loads."""
    if kind == "zscore":
        return RobustZScoreDetector(window=window, learning_readings=learning_readings)
    if kind == "model":
        from pathlib import Path

        from .anomaly.model_detector import DEFAULT_MODEL_DIR, load_detector
        from .manifest import verify

        directory = model_dir or DEFAULT_MODEL_DIR
        verify(Path(directory))  # ModelError names the file that does not match
        return load_detector(directory, runtime_settings=runtime_settings)
    raise ValueError(f"unknown detector {kind!r}")
