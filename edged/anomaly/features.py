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
    ls_recent: int = 4
    ls_ref: int = 48
    calib_len: int = 1000
    calib_q: float = 0.99
    floor: float = 0.01
    excursion_scale: float = 0.05
    rho_half: float = 2.0
    refractory: int = 100
    suppress: float = 0.0
    escalate: float = 1.5
    learn: int = 150
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


def knn_distance_batch(emb: np.ndarray, valid_from: int, lag: int, memory: int, block: int = 512) -> np.ndarray:
    """d[t] = min over s in [t-lag-memory+1, t-lag], s >= valid_from, of ||emb[t]-emb[s]|| / sqrt(dim).

    0 where no candidate exists or t < valid_from.
    """
    T, dim = emb.shape
    out = np.zeros(T)
    sq = np.einsum("ij,ij->i", emb, emb)
    for a in range(valid_from, T, block):
        b = min(a + block, T)
        s0 = max(a - lag - memory + 1, valid_from)
        s1 = b - lag  # exclusive
        if s1 <= s0:
            continue
        E = emb[a:b]
        C = emb[s0:s1]
        d2 = sq[a:b, None] + sq[None, s0:s1] - 2.0 * (E @ C.T)
        t_idx = np.arange(a, b)[:, None]
        s_idx = np.arange(s0, s1)[None, :]
        ok = (s_idx <= t_idx - lag) & (s_idx >= t_idx - lag - memory + 1)
        d2 = np.where(ok, d2, np.inf)
        m = d2.min(axis=1)
        has = np.isfinite(m)
        out[a:b][has] = np.sqrt(np.maximum(m[has], 0.0) / dim)
    return out


def knn_inputs(x: np.ndarray, lo: np.ndarray, scale: np.ndarray, w: int) -> np.ndarray:
    """(T - w + 1, w) windows ending at t = w-1.., placed in the running range at t."""
    V = _swv(x, w)
    t = np.arange(w - 1, len(x))
    return (V - lo[t, None]) / scale[t, None]


def model_inputs(x: np.ndarray, lo: np.ndarray, scale: np.ndarray, w: int) -> np.ndarray:
    """Model input for windows ending at t = w-1..: centred on the context median, range-scaled."""
    V = _swv(x, w)
    return normalise_model_window(V, scale[w - 1:])


def normalise_model_window(V: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Centre each window on the median of its context, scale by its context's robust spread
    (floored at 1% of the running range), clip to [-20, 20]. float32 for the model."""
    ctx = V[:, :-1]
    med = np.median(ctx, axis=1)
    mad = np.median(np.abs(ctx - med[:, None]), axis=1)
    s = np.maximum(1.4826 * mad, 0.01 * scale)
    return np.clip((V - med[:, None]) / s[:, None], -20.0, 20.0).astype(np.float32)


def raw_channels(x: np.ndarray, p: Params, model=None) -> dict:
    """Raw causal channels of one series (float64[T] each)."""
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
            mch[mw - 1:] = model.run(model_inputs(x, lo, scale, mw))
        ch["model"] = mch
    return ch


def rolling_order_stat(c: np.ndarray, n: int, q: float, block: int = 4096) -> np.ndarray:
    """o[t] = the int(q*(n-1))-th smallest of c[t-n..t-1] (zero-filled before 0)."""
    T = len(c)
    k = int(q * (n - 1))
    padded = np.r_[np.zeros(n), c]
    out = np.empty(T)
    for a in range(0, T, block):
        b = min(a + block, T)
        W = _swv(padded[a:b + n - 1], n)  # rows: windows starting at padded a.., i.e. c[t-n..t-1]
        out[a:b] = np.partition(W, k, axis=1)[:, k]
    return out


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
            o = rolling_order_stat(c, p.calib_len, p.calib_q)
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


def score_from_channels(ch: dict, p: Params) -> np.ndarray:
    r = calibrate(ch, p)
    out = squash(refractory_filter(r, p.refractory, p.escalate, p.suppress), p.rho_half)
    out[: p.learn] = np.nan
    return out


def score_series(x: np.ndarray, p: Params, model=None) -> np.ndarray:
    return score_from_channels(raw_channels(x, p, model), p)
