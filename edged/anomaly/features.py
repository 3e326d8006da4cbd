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
* ``model``      the neural model's anomaly logit for the latest window (optional).

Calibration: each channel (except ``excursion``, which has a fixed scale) is divided by
its own rolling order statistic (``calib_q`` quantile of its previous ``calib_len`` values,
zero-filled at start, floored at ``floor``); the score is ``r^2 / (r^2 + rho_half^2)`` of the
largest ratio ``r``. Refractory: a score is only emitted when it exceeds every raw score of
the previous ``refractory`` steps (a new local record), otherwise it is scaled by
``suppress``. This keeps the operating point free: whatever threshold is applied, a burst
of high scores yields one detection per record, not one per reading.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view as _swv

CHANNELS = ("excursion", "knn", "shift", "model")


@dataclass(frozen=True)
class Params:
    knn_window: int = 16
    knn_memory: int = 600
    knn_center: bool = False  # subtract each window's mean (shape only) before the distance
    ls_recent: int = 4
    ls_ref: int = 48
    calib_len: int = 1000
    calib_q: float = 0.99
    calib_every: int = 8  # recompute each channel's order statistic every k readings (held between)
    floor: float = 0.01
    excursion_scale: float = 0.03
    rho_half: float = 1.25
    refractory: int = 300
    suppress: float = 0.0
    escalate: float = 3.0
    refractory_mode: str = "level"  # after a score >= 0.5 suppress `refractory` steps; or "escalate" (threshold-free)
    learn: int = 150
    gap_context: int = 32  # a reading more than gap_factor x the median of the previous
    gap_factor: float = 4.0  # gap_context intervals after its predecessor follows a gap
    use: tuple = ("excursion", "knn", "shift")
    weights: dict = field(default_factory=dict)  # channel -> multiplier of its ratio

    def to_dict(self) -> dict:
        d = asdict(self)
        d["use"] = list(self.use)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Params":
        d = dict(d)
        if "use" in d:
            d["use"] = tuple(d["use"])
        return cls(**d)

    def with_(self, **kw) -> "Params":
        return replace(self, **kw)


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


def gap_flags(times: np.ndarray, p: Params) -> np.ndarray:
    """gap[t]: reading t follows a gap (its interval > gap_factor x the median of the previous
    gap_context intervals). Needs t >= gap_context + 1."""
    T = len(times)
    gap = np.zeros(T, dtype=bool)
    gc = p.gap_context
    if times is None or T < gc + 2:
        return gap
    d = np.r_[np.nan, np.diff(times)]
    med = np.median(_swv(d[1:], gc), axis=1)  # med[j] = median d[j+1..j+gc]
    t = np.arange(gc + 1, T)
    gap[t] = d[t] > p.gap_factor * med[t - gc - 1]
    return gap


def since_gap(gap: np.ndarray) -> np.ndarray:
    """Readings since the last gap (large when none)."""
    idx = np.arange(len(gap))
    last = np.maximum.accumulate(np.where(gap, idx, -(10**12)))
    return idx - last


def raw_channels(x: np.ndarray, p: Params, model=None, times: np.ndarray | None = None) -> dict:
    """Raw causal channels of one series (float64[T] each). With ``times``, the window channels
    (knn, shift, model) are 0 while their window spans a gap in the sampling."""
    x = np.asarray(x, dtype=float)
    T = len(x)
    lo, hi = running_range(x)
    scale = _range_scale(lo, hi)
    ch = {}
    ch["excursion"] = np.maximum(np.maximum(x - hi, lo - x), 0.0) / scale
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
        spans = {"knn": p.knn_window, "shift": p.ls_recent + p.ls_ref,
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


def calibrate(ch: dict, p: Params) -> np.ndarray:
    """Largest calibrated ratio over the channels in use (float64[T])."""
    ratios = []
    for name in p.use:
        if name not in ch:
            continue
        c = ch[name]
        wgt = p.weights.get(name, 1.0)
        if name == "excursion":
            ratios.append(wgt * c / p.excursion_scale)
        else:
            o = rolling_order_stat(c, p.calib_len, p.calib_q, p.calib_every)
            ratios.append(wgt * c / np.maximum(o, p.floor))
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


def refractory_level(r: np.ndarray, R: int, level: float, suppress: float, escalate: float = np.inf) -> np.ndarray:
    """After an emitted ratio >= level (score >= 0.5), scale the next R ratios by ``suppress``,
    unless one exceeds ``escalate`` times the ratio that opened the period: that one is emitted
    and opens a new period."""
    out = r.copy()
    if R <= 0:
        return out
    until, last = -1, np.inf
    for t in np.flatnonzero(r >= level):
        if t <= until and not r[t] > escalate * last:
            continue
        out[t + 1:t + 1 + R] *= suppress
        if t <= until:  # an escalation inside the period: undo the earlier suppression of t itself
            out[t] = r[t]
        until, last = t + R, r[t]
    return out


def apply_refractory(r: np.ndarray, p: Params) -> np.ndarray:
    if p.refractory_mode == "level":
        return refractory_level(r, p.refractory, p.rho_half, p.suppress, p.escalate)
    return refractory_filter(r, p.refractory, p.escalate, p.suppress)


def score_from_ratio(r: np.ndarray, p: Params) -> np.ndarray:
    """Refractory + squash of the combined ratio; nothing is emitted (NaN) while learning, and
    nothing emitted means nothing opens a refractory period."""
    r = r.copy()
    r[: p.learn] = 0.0
    out = squash(apply_refractory(r, p), p.rho_half)
    out[: p.learn] = np.nan
    return out


def score_from_channels(ch: dict, p: Params) -> np.ndarray:
    return score_from_ratio(calibrate(ch, p), p)


def score_series(x: np.ndarray, p: Params, model=None, times: np.ndarray | None = None) -> np.ndarray:
    return score_from_channels(raw_channels(x, p, model, times), p)
