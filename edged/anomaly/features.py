"""Causal anomaly channels for one metric, in batch form (many time steps of one series).

The streaming detector (:mod:`edged.anomaly.model_detector`) computes exactly the same
quantities one reading at a time from per-slot state; :func:`score_series` is the replay
path used by the NAB harness and the CSV replayer. Every quantity at step ``t`` only uses
readings ``0..t``.

Channels (all in units of the metric's running range ``hi - lo`` of the readings before t):

* ``excursion``  how far the reading lies beyond the running min/max;
* ``knn``        distance of the latest ``knn_window`` readings (an embedding of them when a
                 model is given) to the nearest non-overlapping window of the last
                 ``knn_memory`` steps;
* ``shift``      |mean of the last ``ls_recent`` readings - median of the ``ls_ref`` before|;
* ``model``      distance of the encoder's embedding of the latest window to the nearest past one;
* ``stuck``      a run of identical readings against the longest earlier completed run (a flatline
                 whose length is unusual for this series; fixed scale, like ``excursion``);
* ``volatility`` mean |x[i] - x[i-1]| over the last ``vol_len`` steps: a change in how much the
                 series moves, which the denoising encoder is trained not to see;
* ``season``     |mean of the last ``season_span_s`` seconds - the mean of the same span one day
                 earlier|, the smallest over the last ``season_days`` days (0 until
                 ``season_min_days`` of them have readings there): the series does not do what
                 it did at this time of day on any recent day (a daily cycle that fails to come,
                 or comes at the wrong hour), which no window of the last hours can show.

Calibration: each channel (except ``excursion``, which has a fixed scale) is divided by
its own rolling order statistic (``calib_q`` quantile of its previous ``calib_len`` values,
zero-filled at start, floored at ``floor``), and those in ``long_use`` by at least
``long_gamma`` x their peak since learning, decayed with a half-life of ``long_half`` values;
a "value" is the maximum over a calibration block of readings (about ``calib_block_s`` seconds'
worth of them for a series read more often; one reading per block for series read that often or
less). The score is ``r^2 / (r^2 + rho_half^2)`` of the largest ratio ``r``. Refractory
(``refractory_mode = "level"``, shipped): after an emitted score >= 0.5 the scores of the
following period are scaled by ``suppress`` unless a ratio exceeds ``escalate`` x the one that
opened it; the period lasts ``refractory`` readings, or
(``refractory_unit = "time"``, shipped) ``refractory`` x the series' own median sampling
interval in seconds, so it means the same at any sampling rate and a gap shortens it. Nothing
is scored while learning: the first ``learn`` readings and the first ``learn_s`` seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view as _swv

# snapshots name their calibration channels by index into CHANNELS: append, never reorder
CHANNELS = ("excursion", "knn", "shift", "model", "stuck", "volatility", "season")
FIXED_SCALE = ("excursion", "stuck")  # channels with a fixed scale (not calibrated by their own history)
TUPLE_FIELDS = ("use", "long_use", "recur_use", "quiet_use")  # lists in detector.json


@dataclass(frozen=True)
class Params:
    knn_window: int = 16
    knn_memory: int = 600
    knn_center: bool = False  # subtract each window's mean (shape only) before the distance
    ls_recent: int = 4
    ls_ref: int = 48
    vol_len: int = 48  # volatility channel: mean |x[i] - x[i-1]| over the last vol_len steps
    # season channel: the readings' sums and counts in season_block_s buckets of absolute time;
    # the mean over the last season_span_s (the current bucket so far and the ones before) against
    # the same buckets 1..season_days days earlier, the most similar of those days counts
    season_days: int = 7
    season_min_days: int = 2  # 0 until this many earlier days have readings there: one cannot tell
    # today's anomaly from an echo of yesterday's
    season_learn_s: float = 86400.0  # its values calibrate it, its ratio counts this long after it wakes
    season_span_s: float = 1200.0
    season_block_s: float = 300.0
    # ... and also the span this much earlier and later on each of those days (0: off): a cycle
    # driven by local time moves by an hour at a daylight-saving change, a schedule drifts a little
    season_shift_s: float = 0.0
    # recurrence: where the last recur_span_s of block means lie within recur_noise x sqrt(2) x the
    # step noise of the same span on one of the season_days earlier days (every block compared, at
    # least half of them with readings on both days), the channels of recur_use say nothing: what
    # happens every Monday morning is not news (0: off; needs the season channel's blocks)
    recur_noise: float = 0.0
    recur_span_s: float = 7200.0
    recur_use: tuple = ("shift",)
    recur_min: float = 0.5  # ... tested where their ratio reaches this fraction of rho_half (cost)
    # a metric set to recurring = "quiet" (config) has the test on these channels too: 2-15x fewer
    # alarms on daily and weekly routines, but subtle real changes that resemble an earlier day go
    # unflagged (NAB dev 71.6 -> 66.0; docs/ANOMALY.md section 13)
    quiet_use: tuple = ("shift", "model", "volatility")
    calib_len: int = 1000
    calib_q: float = 0.99
    calib_every: int = 8  # recompute each channel's order statistic every k readings (held between)
    # calibration history in blocks of readings: k consecutive readings, k = calib_block_s / the
    # median sampling interval (rounded, at least 1), and less than calib_block_s apart, enter the
    # history as one value, their max, so a metric read every second keeps the calibration horizon
    # (and the false-alarm rate per day) of one read every calib_block_s; readings that far apart or
    # further are one block each, jittered or not (0: every reading a block)
    calib_block_s: float = 0.0
    floor: float = 0.01
    # long memory: a calibrated channel (of long_use) is also divided by long_gamma x its decayed
    # peak since learning (half-life long_half calibration values), so a clean series' false alarms thin out
    # with time instead of recurring at the rate the 1,000-reading order statistic allows
    long_gamma: float = 0.0  # 0: off
    long_half: float = 3000.0
    long_use: tuple = ("model",)
    excursion_scale: float = 0.03
    # excursion also needs excursion_noise x the step noise (1.4826 x median |x[i] - x[i-1]| / sqrt(2)
    # over the noise_len readings before t): a new extreme by less than a few noise sd is not news
    excursion_noise: float = 0.0
    noise_len: int = 32
    rho_half: float = 1.25
    refractory: int = 300
    suppress: float = 0.0
    escalate: float = 3.0
    refractory_mode: str = "level"  # after a score >= 0.5 suppress `refractory` steps; or "escalate" (threshold-free)
    # "readings": the refractory period is `refractory` readings; "time": it lasts `refractory` x the
    # series' median sampling interval (of the gap_context intervals before the detection), in
    # seconds, so a gap ends it; "seconds": it lasts `refractory` seconds
    refractory_unit: str = "readings"
    stuck_min: int = 4  # stuck channel: run of identical readings / (stuck_scale x the longest earlier
    stuck_scale: float = 2.0  # completed run, at least stuck_min); 0 until one run has completed
    learn: int = 150
    learn_s: float = 0.0  # ... and, with times, for at least learn_s seconds after the first reading
    gap_context: int = 32  # a reading more than gap_factor x the median of the previous
    gap_factor: float = 4.0  # gap_context intervals after its predecessor follows a gap
    use: tuple = ("excursion", "knn", "shift")
    weights: dict = field(default_factory=dict)  # channel -> multiplier of its ratio

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in TUPLE_FIELDS:
            d[k] = list(getattr(self, k))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Params":
        d = dict(d)
        for k in TUPLE_FIELDS:
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def with_(self, **kw) -> "Params":
        return replace(self, **kw)

    def quieted(self) -> "Params":
        """These settings for a metric set to recurring = "quiet": the recurrence test on quiet_use too."""
        return self.with_(recur_use=tuple(dict.fromkeys(self.recur_use + self.quiet_use)))


def _range_scale(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    mag = np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1.0)
    return np.maximum(hi - lo, 1e-9 * mag)


def running_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """lo[t], hi[t]: min/max of x[0..t-1] (x[0] itself at t = 0)."""
    prev = np.r_[x[:1], x[:-1]]
    return np.minimum.accumulate(prev), np.maximum.accumulate(prev)


def knn_distance_batch(emb: np.ndarray, valid_from: int, lag: int, memory: int, block: int = 128) -> np.ndarray:
    """d[t] = min over s in [t-lag-memory+1, t-lag], s >= valid_from, of ||emb[t]-emb[s]|| / sqrt(dim).

    0 where no candidate exists or t < valid_from. Blocks of ``block`` rows against a band of
    ``memory + block - 1`` candidates; an additive 0/inf mask keeps each row's own band.
    """
    T, dim = emb.shape
    out = np.zeros(T)
    pad = lag + memory + block
    E = np.vstack([np.zeros((pad, dim)), emb])  # padded rows are invalid candidates
    sq = np.einsum("ij,ij->i", E, E)
    sq[: pad + valid_from] = np.inf
    i = np.arange(block)[:, None]
    j = np.arange(memory + block - 1)[None, :]
    band = np.where((j >= i) & (j <= i + memory - 1), 0.0, np.inf)
    for a in range(valid_from, T, block):
        b = min(a + block, T)
        n = b - a
        s0 = a - lag - memory + 1 + pad  # padded index of the first candidate of row a
        Cb = E[s0:s0 + memory + n - 1]
        Eb = E[a + pad:b + pad]
        d2 = sq[a + pad:b + pad, None] + sq[None, s0:s0 + memory + n - 1] - 2.0 * (Eb @ Cb.T)
        d2 += band[:n, : memory + n - 1]
        m = d2.min(axis=1)
        has = np.isfinite(m)
        out[a:b][has] = np.sqrt(np.maximum(m[has], 0.0) / dim)
    return out


def knn_inputs(x: np.ndarray, lo: np.ndarray, scale: np.ndarray, w: int) -> np.ndarray:
    """(T - w + 1, w) windows ending at t = w-1.., placed in the running range at t."""
    V = _swv(x, w)
    t = np.arange(w - 1, len(x))
    return (V - lo[t, None]) / scale[t, None]


ENCODER_CLIP = (-1.0, 2.0)


def encoder_inputs(x: np.ndarray, lo: np.ndarray, scale: np.ndarray, w: int) -> np.ndarray:
    """Encoder input for windows ending at t = w-1..: readings placed in the running range at t."""
    return place_in_range(_swv(x, w), lo[w - 1:], scale[w - 1:])


def place_in_range(V: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip((V - lo[:, None]) / scale[:, None], *ENCODER_CLIP).astype(np.float32)


def model_inputs(x: np.ndarray, lo: np.ndarray, scale: np.ndarray, w: int) -> np.ndarray:
    """Model input for windows ending at t = w-1..: centred on the context median, range-scaled."""
    V = _swv(x, w)
    return normalise_model_window(V, scale[w - 1:])


def normalise_model_window(V: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Centre each window on the median of its context, scale by its context's robust spread
    (floored at 1% of the running range), compress with asinh (|u| <= ~4.4 after clipping at
    40) so a static int8 input scale keeps resolution near 0. float32 for the model."""
    ctx = V[:, :-1]
    med = np.median(ctx, axis=1)
    mad = np.median(np.abs(ctx - med[:, None]), axis=1)
    s = np.maximum(1.4826 * mad, 0.01 * scale)
    s = np.maximum(s, 1e-12)
    return np.arcsinh(np.clip((V - med[:, None]) / s[:, None], -40.0, 40.0)).astype(np.float32)


def prev_interval_median(times: np.ndarray, gc: int) -> np.ndarray:
    """m[t] = median of the gc sampling intervals before reading t (times[t-gc]-times[t-gc-1] ..
    times[t-1]-times[t-2]); NaN for t < gc + 1."""
    T = len(times)
    m = np.full(T, np.nan)
    if T < gc + 2:
        return m
    d = np.diff(times)  # d[i] = times[i+1] - times[i]
    med = np.median(_swv(d, gc), axis=1)  # med[j] = median d[j..j+gc-1] = intervals ending at j+1..j+gc
    m[gc + 1:] = med[:T - gc - 1]
    return m


def gap_flags(times: np.ndarray, p: Params) -> np.ndarray:
    """gap[t]: reading t follows a gap (its interval > gap_factor x the median of the previous
    gap_context intervals). Needs t >= gap_context + 1."""
    T = len(times)
    gap = np.zeros(T, dtype=bool)
    gc = p.gap_context
    if times is None or T < gc + 2:
        return gap
    d = np.r_[np.nan, np.diff(times)]
    med = prev_interval_median(times, gc)
    t = np.arange(gc + 1, T)
    gap[t] = d[t] > p.gap_factor * med[t]
    return gap


def refractory_span(times: np.ndarray, p: Params) -> np.ndarray | None:
    """Seconds a refractory period opened at each reading lasts (None: counted in readings)."""
    if p.refractory_unit == "readings":
        return None
    if times is None:
        raise ValueError(f"refractory_unit={p.refractory_unit!r} needs the readings' times")
    if p.refractory_unit == "seconds":
        return np.full(len(times), float(p.refractory))
    if p.refractory_unit == "time":
        return np.nan_to_num(p.refractory * prev_interval_median(np.asarray(times, dtype=float), p.gap_context))
    raise ValueError(f"unknown refractory_unit {p.refractory_unit!r}")


NOISE_C = 1.4826 / np.sqrt(2.0)


def _steps_ending(x: np.ndarray, n: int, stat, lag: int) -> np.ndarray:
    """out[t] = stat of the n steps |x[i] - x[i-1]| into readings t-lag-n+1..t-lag (0 before there are n)."""
    T = len(x)
    out = np.zeros(T)
    first = n + lag
    if T <= first:
        return out
    steps = _swv(np.abs(np.diff(x)), n)  # row j: the steps into readings j+1..j+n
    out[first:] = stat(steps, axis=1)[:T - first]
    return out


def step_noise(x: np.ndarray, L: int) -> np.ndarray:
    """s[t] = 1.4826 / sqrt(2) x median |x[i] - x[i-1]| over the readings t-L..t-1 (0 for t < L)."""
    return NOISE_C * _steps_ending(x, L - 1, np.median, lag=1)


def stuck_channel(x: np.ndarray, p: Params) -> np.ndarray:
    """Run of identical readings ending at t / (stuck_scale x max(longest completed earlier run,
    stuck_min)); 0 while no run has completed (a series flat from its start says nothing)."""
    T = len(x)
    if T == 0:
        return np.zeros(0)
    idx = np.arange(T)
    eq = np.r_[False, x[1:] == x[:-1]]
    run = idx - np.maximum.accumulate(np.where(eq, 0, idx)) + 1
    ended = np.zeros(T)
    ended[:-1] = np.where(~eq[1:], run[:-1], 0)  # a run ending at s is complete at s + 1
    best = np.r_[0.0, np.maximum.accumulate(ended)[:-1]]
    return np.where(best > 0, run / (p.stuck_scale * np.maximum(best, p.stuck_min)), 0.0)


def volatility_channel(x: np.ndarray, L: int) -> np.ndarray:
    """v[t] = mean |x[i] - x[i-1]| over i = t-L+1..t (0 for t < L), in the metric's units."""
    return _steps_ending(x, L, np.mean, lag=0)


DAY_S = 86400.0
CHUNK_ROWS = 16384  # batch lookups of the season blocks run in (rows x offsets) chunks of this many rows


def season_geometry(p: Params) -> tuple[int, int, int]:
    """(blocks per day, blocks in the recent span, ring length) of the season channel; the ring
    holds the blocks from season_days days + the shift + the span back up to the current one."""
    day = int(round(DAY_S / p.season_block_s))
    span = max(int(round(p.season_span_s / p.season_block_s)), 1)
    return day, span, p.season_days * day + season_shifts(p)[-1] + max(span, recur_blocks(p))


def recur_blocks(p: Params) -> int:
    """Blocks in the recurrence span (the ring keeps them whether the test is on or off)."""
    return max(int(round(p.recur_span_s / p.season_block_s)), 1)


def recur_offsets(p: Params) -> np.ndarray:
    """Block offsets of the recurrence test: the span now (j = 0..R-1), then k days earlier (k x day + j)."""
    day, R = season_geometry(p)[0], recur_blocks(p)
    return np.array([k * day + j for k in range(p.season_days + 1) for j in range(R)], dtype=np.int64)


def recurs(S: np.ndarray, C: np.ndarray, noise: np.ndarray, p: Params) -> np.ndarray:
    """Whether the last recurrence span repeats one of the earlier days within the noise, shared by
    the batch and the streaming path. ``S``, ``C``: (sum, count) of the blocks of
    :func:`recur_offsets` (the current block so far first); ``noise``: the step noise, metric units."""
    n, R = S.shape[0], recur_blocks(p)
    if p.recur_noise <= 0:
        return np.zeros(n, dtype=bool)
    now_s, now_c = S[:, :R], C[:, :R]
    limit = p.recur_noise * np.sqrt(2.0) * noise
    found = np.zeros(n, dtype=bool)
    for k in range(1, p.season_days + 1):
        lag_s, lag_c = S[:, k * R:(k + 1) * R], C[:, k * R:(k + 1) * R]
        both = (lag_c > 0) & (now_c > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.where(both, np.abs(now_s / now_c - lag_s / lag_c), 0.0).max(axis=1)
        # at least half the span's blocks compared: a metric read every 15 minutes or less often is
        # never silenced (counting only the blocks it fills cost 3.8 points on realKnownCause's
        # 30-minute nyc_taxi: a few sparse blocks repeat an earlier day by chance)
        found |= (2 * both.sum(axis=1) >= R) & (gap < limit)
    return found


def season_shifts(p: Params) -> list[int]:
    """The shifts (in blocks) each earlier day is compared at: 0 first, then -s and +s."""
    s = int(round(p.season_shift_s / p.season_block_s))
    return [0, -s, s] if s > 0 else [0]


def season_offsets(p: Params) -> np.ndarray:
    """Block offsets back from the current block: the recent span (j = 0..span-1), then, for
    k = 1..season_days and each shift s, the span k days earlier moved by s (k x day - s + j)."""
    day, span, _ = season_geometry(p)
    now = [j for j in range(span)]
    return np.array(now + [k * day - s + j for k in range(1, p.season_days + 1) for s in season_shifts(p)
                           for j in range(span)], dtype=np.int64)


def season_distance(S: np.ndarray, C: np.ndarray, p: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(smallest distance, days compared, the most similar day's value at this time) of the season
    channel, shared by the batch and the streaming path. ``S``, ``C``: (sum, count) of the
    readings in the blocks of :func:`season_offsets`, shape (readings, offsets); the current block
    counts the readings so far. Day k is compared over the blocks that have readings on both days only, so a gap (or a
    sparse block) on one side does not set a partial span against a full one."""
    _, span, _ = season_geometry(p)
    n, K, nshift = S.shape[0], p.season_days, len(season_shifts(p))
    lag_s, lag_c = S[:, span:].reshape(n, K * nshift, span), C[:, span:].reshape(n, K * nshift, span)
    ls, lc, rs, rc = 0.0, 0.0, 0.0, 0.0  # (n, days x shifts) after the first block: sums over j in order
    for j in range(span):
        both = (lag_c[:, :, j] > 0) & (C[:, None, j] > 0)
        ls, lc = ls + np.where(both, lag_s[:, :, j], 0.0), lc + np.where(both, lag_c[:, :, j], 0.0)
        rs, rc = rs + np.where(both, S[:, None, j], 0.0), rc + np.where(both, C[:, None, j], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(lc > 0, np.abs(rs / rc - ls / lc), np.inf)
        # what the reading is unlike, as a person reads it: that day's value in this very block
        # (the span's mean where the block had none)
        then = np.where(lag_c[:, :, 0] > 0, lag_s[:, :, 0] / lag_c[:, :, 0], ls / lc)
    k = d.argmin(axis=1)
    days = (lc > 0).reshape(n, K, nshift).any(axis=2).sum(axis=1)
    return d[np.arange(n), k], days, then[np.arange(n), k]


@dataclass(frozen=True)
class Blocks:
    """A series' readings in season_block_s blocks: each reading's block id ``b``, the sum and count
    of its block up to and including it (in reading order, as the streaming ring adds them), and
    each block's id, sum and count (``ub``, ``bsum``, ``bcnt``)."""

    b: np.ndarray
    partial: np.ndarray
    pos: np.ndarray
    ub: np.ndarray
    bsum: np.ndarray
    bcnt: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, times: np.ndarray, p: Params) -> "Blocks":
        T = len(x)
        b = np.floor(np.asarray(times, dtype=float) / p.season_block_s).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        ends = np.r_[starts[1:], T]
        partial = x.copy()
        for a, e in zip(starts, ends):
            if e - a > 1:
                partial[a:e] = np.cumsum(x[a:e])
        pos = (np.arange(T) - starts[np.searchsorted(starts, np.arange(T), side="right") - 1] + 1).astype(float)
        return cls(b, partial, pos, b[starts], partial[ends - 1], (ends - starts).astype(float))

    def lookup(self, offsets: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
        """(sum, count) of the blocks ``offsets`` back from each reading of ``rows`` (a slice or
        indices); offset 0 is the reading's own block so far; 0, 0 where a block has no readings."""
        b = self.b[rows]
        ids = b[:, None] - offsets[None, :]
        i = np.minimum(np.searchsorted(self.ub, ids), len(self.ub) - 1)
        hit = (self.ub[i] == ids) & (ids < b[:, None])
        S, C = np.where(hit, self.bsum[i], 0.0), np.where(hit, self.bcnt[i], 0.0)
        S[:, 0], C[:, 0] = self.partial[rows], self.pos[rows]
        return S, C


def season_channel(x: np.ndarray, times: np.ndarray, p: Params,
                   chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray, Blocks | None]:
    """(s, live, blocks): s[t] = min over k = 1..season_days of |recent mean - the mean of the same
    blocks k days earlier| (metric units; 0 while fewer than season_min_days earlier days have
    readings there); live[t]: its ratio counts, season_learn_s after s first had its days (until then
    its values only fill its calibration, as every channel's do while the detector learns); the
    series' :class:`Blocks` (for the recurrence test). Sums run in reading order, block by block, as
    the streaming detector keeps them, so both paths agree."""
    T = len(x)
    if T == 0:
        return np.zeros(0), np.zeros(0, dtype=bool), None
    blocks = Blocks.of(x, times, p)
    offsets = season_offsets(p)
    best, days = np.empty(T), np.empty(T, dtype=np.int64)
    for a in range(0, T, chunk):  # (rows x offsets) arrays: bounded memory on long replays
        e = min(a + chunk, T)
        best[a:e], days[a:e], _ = season_distance(*blocks.lookup(offsets, slice(a, e)), p)
    awake = days >= max(p.season_min_days, 1)
    ts = np.asarray(times, dtype=float)
    woke = ts[np.argmax(awake)] if awake.any() else np.inf
    return np.where(awake, best, 0.0), awake & (ts - woke >= p.season_learn_s), blocks


def since_gap(gap: np.ndarray) -> np.ndarray:
    """Readings since the last gap (large when none)."""
    idx = np.arange(len(gap))
    last = np.maximum.accumulate(np.where(gap, idx, -(10**12)))
    return idx - last


def raw_channels(x: np.ndarray, p: Params, model=None, times: np.ndarray | None = None) -> dict:
    """Raw causal channels of one series (float64[T] each). With ``times``, the window channels
    (knn, shift, volatility, model) are 0 while their window spans a gap in the sampling."""
    x = np.asarray(x, dtype=float)
    T = len(x)
    lo, hi = running_range(x)
    scale = _range_scale(lo, hi)
    ch = {}
    ch["excursion"] = np.maximum(np.maximum(x - hi, lo - x), 0.0) / scale
    noise = step_noise(x, p.noise_len) if p.excursion_noise > 0 or p.recur_noise > 0 else None
    if p.excursion_noise > 0:
        ch["noise"] = noise / scale
    w = p.knn_window
    knn = np.zeros(T)
    if "knn" in p.use and T >= w:
        Z = knn_inputs(x, lo, scale, w)
        if p.knn_center:
            Z = Z - Z.mean(axis=1, keepdims=True)
        emb = np.asarray(Z)
        knn[w - 1:] = knn_distance_batch(emb, 0, w, p.knn_memory)
    ch["knn"] = knn
    k, L = p.ls_recent, p.ls_ref
    shift = np.zeros(T)
    if "shift" in p.use and T >= k + L:
        rec = _swv(x, k).mean(axis=1)  # rec[i] = mean x[i..i+k-1], ends at t=i+k-1
        ref = np.median(_swv(x, L), axis=1)  # ref[j] = median x[j..j+L-1]
        t = np.arange(k + L - 1, T)
        shift[t] = np.abs(rec[t - k + 1] - ref[t - k - L + 1]) / scale[t]
    ch["shift"] = shift
    if "stuck" in p.use:
        ch["stuck"] = stuck_channel(x, p)
    if "volatility" in p.use:
        ch["volatility"] = volatility_channel(x, p.vol_len) / scale
    if "season" in p.use:
        if times is None:
            raise ValueError("the season channel needs the readings' times")
        season, ch["season_live"], blocks = season_channel(x, times, p)
        ch["season"] = season / scale
        if p.recur_noise > 0 and blocks is not None:  # what the recurrence test reads (calibrate)
            ch["season_blocks"], ch["step_noise"] = blocks, noise
    if "model" in p.use and model is not None:
        mw = model.window
        mch = np.zeros(T)
        if T >= mw:
            if model.kind == "encoder":  # nearest-past-window distance in the learned embedding
                emb = model.embed(encoder_inputs(x, lo, scale, mw))
                mch[mw - 1:] = knn_distance_batch(emb, 0, mw, p.knn_memory)
            else:  # classifier: softplus(logit)
                mch[mw - 1:] = model.run(model_inputs(x, lo, scale, mw))
        ch["model"] = mch
    if times is not None:
        sg = since_gap(gap_flags(np.asarray(times, dtype=float), p))
        spans = {"knn": p.knn_window, "shift": p.ls_recent + p.ls_ref, "volatility": p.vol_len + 1,
                 "model": model.window if model is not None else 0}
        for name, L in spans.items():
            if name in ch:
                ch[name] = np.where(sg < L - 1, 0.0, ch[name])
    return ch


def rolling_order_stat(c: np.ndarray, n: int, q: float, every: int = 1, block: int = 4096) -> np.ndarray:
    """o[t] = the int(q*(n-1))-th smallest of c[t'-n..t'-1] (zero-filled before 0), where
    t' = t - t % every: recomputed every ``every`` steps, held in between."""
    T = len(c)
    k = int(q * (n - 1))
    padded = np.r_[np.zeros(n), c]
    at = np.arange(0, T, every)
    vals = np.empty(len(at))
    for a in range(0, len(at), block):
        ts = at[a:a + block]
        W = _swv(padded, n)[ts]  # rows padded[t'..t'+n-1] = c[t'-n..t'-1] (a copy)
        W.partition(k, axis=1)
        vals[a:a + block] = W[:, k]
    return np.repeat(vals, every)[:T]


def decayed_peak(c: np.ndarray, half: float) -> np.ndarray:
    """M[t] = max over s < t of c[s] * 2^(-(t-1-s)/half), 0 when there is none.
    The streaming detector keeps M by M <- max(M * 2^(-1/half), c[t]); here in the log domain."""
    T = len(c)
    ld = -np.log(2.0) / half
    s = np.arange(T)
    keep = c > 0
    lc = np.full(T, -np.inf)
    lc[keep] = np.log(c[keep])
    cm = np.maximum.accumulate(lc - s * ld)
    out = np.zeros(T)
    out[1:] = np.exp(cm[:-1] + (s[1:] - 1) * ld)
    return out


def block_sizes(med_dt: np.ndarray, block_s: float) -> np.ndarray:
    """Readings per calibration block started at each reading: block_s / the median of the
    intervals before it, rounded, at least 1 (1 while that median is unknown)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(med_dt > 0, np.floor(block_s / med_dt + 0.5), 1.0)
    return np.clip(np.nan_to_num(k, nan=1.0), 1, 1 << 30).astype(np.int64)


def calibration_groups(T: int, p: Params, times: np.ndarray | None = None) -> np.ndarray:
    """Index of each reading's calibration block (non-decreasing; 0..T-1 without blocks). A block
    starts at a reading and holds the block_sizes() readings from there, or fewer where
    calib_block_s runs out first (a gap). Counted, not cut at fixed times: blocks of absolute time
    held 0, 1 or 2 readings of a jittered 5-minute series at random (docs/ANOMALY.md section 13)."""
    if p.calib_block_s <= 0 or times is None or T == 0:
        return np.arange(T)
    ts = np.asarray(times, dtype=float)
    if T < 2 or np.min(np.diff(ts)) * 1.5 > p.calib_block_s:  # every median interval gives k = 1
        return np.arange(T)
    k = block_sizes(prev_interval_median(ts, p.gap_context), p.calib_block_s)
    if (k == 1).all():
        return np.arange(T)
    g = np.empty(T, dtype=np.int64)
    block, count, size, start = -1, 0, 0, 0.0
    for i, (now, k_i) in enumerate(zip(ts.tolist(), k.tolist())):
        if count >= size or now - start >= p.calib_block_s:
            block, count, size, start = block + 1, 0, k_i, now
        count += 1
        g[i] = block
    return g


def calibrate(ch: dict, p: Params, learning: np.ndarray | None = None,
              times: np.ndarray | None = None) -> np.ndarray:
    """Largest calibrated ratio over the channels in use (float64[T]). ``learning`` marks the
    readings kept out of the long-memory peak (the learning period's distances are inflated:
    the nearest-window memory is still nearly empty). A reading is calibrated by the blocks
    completed before its own (:func:`calibration_groups`)."""
    T = len(next(iter(ch.values())))
    g = calibration_groups(T, p, times)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if T else np.zeros(0, dtype=np.int64)
    ratios = []
    for name in p.use:
        if name not in ch:
            continue
        c = ch[name]
        wgt = p.weights.get(name, 1.0)
        if name == "excursion":
            den = p.excursion_scale if "noise" not in ch else np.maximum(p.excursion_scale, p.excursion_noise * ch["noise"])
            ratios.append(wgt * c / den)
        elif name == "stuck":
            ratios.append(wgt * c)
        else:
            blocks = np.maximum.reduceat(c, starts) if T else c
            o = rolling_order_stat(blocks, p.calib_len, p.calib_q, p.calib_every)
            if p.long_gamma > 0 and name in p.long_use:
                kept = c if learning is None else np.where(learning, 0.0, c)
                kept_blocks = np.maximum.reduceat(kept, starts) if T else kept
                o = np.maximum(o, p.long_gamma * decayed_peak(kept_blocks, p.long_half))
            o = o[g]
            ratio = wgt * c / np.maximum(o, p.floor)
            if name + "_live" in ch:
                ratio = np.where(ch[name + "_live"], ratio, 0.0)
            if p.recur_noise > 0 and name in p.recur_use and "season_blocks" in ch:
                # tested where the ratio reaches recur_min x the alarm level, once the season channel
                # is trusted (two earlier days and its learning day): the test reads 8 x 24 blocks
                tested = np.flatnonzero((ratio >= p.recur_min * p.rho_half) & ch["season_live"])
                for a in range(0, len(tested), CHUNK_ROWS):
                    rows = tested[a:a + CHUNK_ROWS]
                    S, C = ch["season_blocks"].lookup(recur_offsets(p), rows)
                    ratio[rows[recurs(S, C, ch["step_noise"][rows], p)]] = 0.0
            ratios.append(ratio)
    return np.max(np.vstack(ratios), axis=0)


def squash(r: np.ndarray, rho_half: float) -> np.ndarray:
    r2 = r * r
    return r2 / (r2 + rho_half * rho_half)


def refractory_filter(r: np.ndarray, R: int, escalate: float, suppress: float) -> np.ndarray:
    """Keep ratio r[t] when it exceeds ``escalate`` times every r of the R previous steps,
    else scale it by ``suppress``."""
    if R <= 0:
        return r.copy()
    prev = np.r_[np.zeros(R), r[:-1]]
    m = _swv(prev, R).max(axis=1)
    return np.where(r > escalate * m, r, suppress * r)


def refractory_level(r: np.ndarray, R: int, level: float, suppress: float, escalate: float = np.inf,
                     times: np.ndarray | None = None, span: np.ndarray | None = None) -> np.ndarray:
    """After an emitted ratio >= level (score >= 0.5), scale the next R ratios by ``suppress``,
    unless one exceeds ``escalate`` times the ratio that opened the period: that one is emitted
    and opens a new period. With ``span`` (seconds per reading), a period opened at reading t
    covers the readings up to times[t] + span[t] instead of the next R."""
    out = r.copy()
    if R <= 0:
        return out
    until, last = -np.inf, np.inf
    for t in np.flatnonzero(r >= level):
        now = t if span is None else times[t]
        inside = now <= until
        if inside and not r[t] > escalate * last:
            continue
        if span is None:
            until = t + R
            end = t + 1 + R
        else:
            until = times[t] + span[t]
            end = int(np.searchsorted(times, until, side="right"))
        out[t + 1:end] *= suppress
        if inside:  # an escalation inside the period: undo the earlier suppression of t itself
            out[t] = r[t]
        last = r[t]
    return out


def apply_refractory(r: np.ndarray, p: Params, times: np.ndarray | None = None) -> np.ndarray:
    if p.refractory_mode == "level":
        span = refractory_span(times, p)
        return refractory_level(r, p.refractory, p.rho_half, p.suppress, p.escalate,
                                None if span is None else np.asarray(times, dtype=float), span)
    return refractory_filter(r, p.refractory, p.escalate, p.suppress)


def score_from_ratio(r: np.ndarray, p: Params, times: np.ndarray | None = None) -> np.ndarray:
    """Refractory + squash of the combined ratio; nothing is emitted (NaN) while learning, and
    nothing emitted means nothing opens a refractory period."""
    learning = learning_mask(len(r), p, times)
    r = np.where(learning, 0.0, r)
    out = squash(apply_refractory(r, p, times), p.rho_half)
    out[learning] = np.nan
    return out


def learning_mask(T: int, p: Params, times: np.ndarray | None = None) -> np.ndarray:
    """Readings scored NaN: the first ``learn`` readings and those within ``learn_s`` seconds of the first."""
    m = np.arange(T) < p.learn
    if p.learn_s > 0 and times is not None and T:
        ts = np.asarray(times, dtype=float)
        m |= ts - ts[0] < p.learn_s
    return m


def score_from_channels(ch: dict, p: Params, times: np.ndarray | None = None) -> np.ndarray:
    T = len(next(iter(ch.values())))
    return score_from_ratio(calibrate(ch, p, learning_mask(T, p, times), times), p, times)


def score_series(x: np.ndarray, p: Params, model=None, times: np.ndarray | None = None) -> np.ndarray:
    return score_from_channels(raw_channels(x, p, model, times), p, times)
