"""Synthetic metric series with injected anomalies (training data for the window model).

Never NAB: every series is generated here from a seeded numpy Generator. A series is a sum of
a level, a trend or random walk, daily/weekly-like cycles (periods in readings), a noise kind
(gaussian, laplace, student-t, multiplicative, quantised, sparse spikes, on/off bursts),
occasional benign regime changes, and 0-3 injected anomalies of many kinds. Returns values
and a per-reading label: 1 while an anomaly is within ``early`` readings of its onset.
"""

from __future__ import annotations

import numpy as np

ANOMALY_KINDS = ("spike", "dip", "level_up", "level_down", "variance", "flatline", "drift",
                 "bump", "dropout", "period", "noise_burst", "spike_train")


def base_series(rng: np.random.Generator, n: int, parts: bool = False):
    """A normal series; with ``parts`` also its clean (noise-free) component."""
    t = np.arange(n, dtype=float)
    x = np.zeros(n)
    # cycles
    for _ in range(rng.integers(0, 3)):
        period = float(rng.choice([24, 48, 96, 144, 288, 336, 2016]) * rng.uniform(0.8, 1.25))
        amp = rng.uniform(0.2, 3.0)
        shape = rng.integers(0, 3)
        ph = rng.uniform(0, 2 * np.pi)
        s = np.sin(2 * np.pi * t / period + ph)
        if shape == 1:
            s = np.sign(s)  # square wave
        elif shape == 2:
            s = np.maximum(s, 0) ** 2  # daytime bumps
        x += amp * s
    # trend / random walk
    kind = rng.integers(0, 3)
    if kind == 1:
        x += rng.normal(0, 2.0) * t / n
    elif kind == 2:
        x += np.cumsum(rng.normal(0, rng.uniform(0.005, 0.05), n))
    # noise
    sigma = rng.uniform(0.02, 1.0)
    nk = rng.integers(0, 7)
    if nk == 0:
        e = rng.normal(0, sigma, n)
    elif nk == 1:
        e = rng.laplace(0, sigma, n)
    elif nk == 2:
        e = sigma * rng.standard_t(3, n) * 0.6
    elif nk == 3:
        e = rng.normal(0, sigma, n) * (1 + 0.5 * np.abs(x))
    elif nk == 4:  # sparse benign spikes on a calm signal
        e = rng.normal(0, sigma * 0.3, n) + (rng.random(n) < rng.uniform(0.002, 0.03)) * rng.exponential(3 * sigma + 1, n)
    elif nk == 5:  # AR(1) noise
        e = np.zeros(n)
        phi = rng.uniform(0.5, 0.95)
        z = rng.normal(0, sigma, n)
        for i in range(1, n):
            e[i] = phi * e[i - 1] + z[i]
    else:  # on/off bursts (cpu-like)
        state = (np.cumsum(rng.random(n) < 0.01) % 2).astype(float)
        e = rng.normal(0, sigma, n) + state * rng.uniform(0.5, 3.0)
    clean = x.copy()
    x += e
    # benign regime changes (not labelled): slow level changes smeared over many readings
    if rng.random() < 0.2:
        at = rng.integers(n // 4, n)
        reg = rng.normal(0, 1.0) * (1 - np.exp(-np.arange(n - at) / rng.uniform(50, 300)))
        x[at:] += reg
        clean[at:] += reg
    a, b = rng.uniform(0.1, 100.0), rng.uniform(-50, 200)
    x = x * a + b
    clean = clean * a + b
    if rng.random() < 0.3:  # quantised readings
        q = np.std(x) * rng.uniform(0.01, 0.2) + 1e-9
        x = np.round(x / q) * q
    if rng.random() < 0.25:  # non-negative metrics (cpu %, counts)
        floor = np.quantile(x, rng.uniform(0.0, 0.3))
        x = np.maximum(x, floor)
        clean = np.maximum(clean, floor)
    return (x, clean) if parts else x


def inject(rng: np.random.Generator, x: np.ndarray, kind: str, at: int, early: int):
    """Returns (new x, label array): label 1 from the onset for up to ``early`` readings."""
    n = len(x)
    x = x.copy()
    ctx = x[max(0, at - 200):at]
    sd = np.std(np.diff(ctx)) / np.sqrt(2) + 1e-9 if len(ctx) > 2 else 1.0
    rngs = np.ptp(ctx) + 1e-9 if len(ctx) > 2 else 1.0
    mag = rng.uniform(0.3, 1.5) * rngs + rng.uniform(3, 8) * sd
    L = 1
    if kind == "spike":
        L = int(rng.integers(1, 4)); x[at:at + L] += mag * rng.uniform(0.8, 2.0)
    elif kind == "dip":
        L = int(rng.integers(1, 4)); x[at:at + L] -= mag * rng.uniform(0.8, 2.0)
    elif kind in ("level_up", "level_down"):
        L = n - at; x[at:] += (1 if kind == "level_up" else -1) * mag * rng.uniform(0.5, 1.2)
    elif kind == "variance":
        L = int(rng.integers(20, 300)); seg = x[at:at + L]
        x[at:at + L] = seg + rng.normal(0, rng.uniform(3, 10) * sd, len(seg))
    elif kind == "flatline":
        L = int(rng.integers(20, 400)); x[at:at + L] = x[at - 1] if rng.random() < 0.7 else np.median(ctx)
    elif kind == "drift":
        L = n - at; ramp = np.arange(L) / rng.uniform(20, 200)
        x[at:] += np.sign(rng.normal()) * np.minimum(ramp, rng.uniform(1, 3)) * mag
    elif kind == "bump":
        L = int(rng.integers(5, 60)); x[at:at + L] += np.sign(rng.normal()) * mag * np.hanning(L + 2)[1:-1][: n - at]
    elif kind == "dropout":
        L = int(rng.integers(3, 50)); x[at:at + L] = np.min(ctx) - rng.uniform(0, 0.5) * rngs if rng.random() < 0.5 else 0.0
    elif kind == "period":
        L = int(rng.integers(30, 300)); seg = np.arange(min(L, n - at))
        x[at:at + L] += mag * 0.5 * np.sin(2 * np.pi * seg / rng.uniform(4, 20))
    elif kind == "noise_burst":
        L = int(rng.integers(5, 80)); x[at:at + L] += rng.laplace(0, mag * 0.3, min(L, n - at))
    elif kind == "spike_train":
        L = int(rng.integers(30, 200)); m = rng.random(min(L, n - at)) < 0.15
        x[at:at + L][m] += mag * rng.uniform(0.5, 1.5)
    lab = np.zeros(n, dtype=np.float32)
    lab[at:at + min(L, early)] = 1.0
    return x, lab


def make_series(rng: np.random.Generator, n: int = 2000, early: int = 16):
    x = base_series(rng, n)
    lab = np.zeros(n, dtype=np.float32)
    k = rng.integers(0, 4)
    spots = np.sort(rng.choice(np.arange(n // 4, n - 20), size=k, replace=False)) if k else []
    last = -10**9
    for at in spots:
        if at - last < 150:
            continue
        kind = ANOMALY_KINDS[rng.integers(len(ANOMALY_KINDS))]
        x, l2 = inject(rng, x, kind, int(at), early)
        lab = np.maximum(lab, l2)
        last = at
    return x, lab


STRUCTURAL = ("level_up", "level_down", "flatline", "drift", "bump", "dropout", "period")


def make_pair(rng: np.random.Generator, n: int = 2000):
    """(noisy series, clean series): structural anomalies are injected into both (they are
    signal), noise-like ones (spikes, variance, bursts) only into the noisy series."""
    x, clean = base_series(rng, n, parts=True)
    k = rng.integers(0, 4)
    for at in (np.sort(rng.choice(np.arange(n // 4, n - 20), size=k, replace=False)) if k else []):
        kind = ANOMALY_KINDS[rng.integers(len(ANOMALY_KINDS))]
        x2, _ = inject(rng, x, kind, int(at), 16)
        if kind in ("flatline", "dropout"):
            clean = np.where(x2 != x, x2, clean)  # constant in both
        elif kind in STRUCTURAL:
            clean = clean + (x2 - x)
        x = x2
    return x, clean
