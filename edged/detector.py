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


class RobustZScoreDetector:
    """|x - median| / (1.4826 MAD) over the preceding window, squashed into [0, 1].

    ``z_half`` is the z at which the score is 0.5: score = z² / (z² + z_half²). The scale has
    a floor (a share of the window's spread and a hair of the level) so a perfectly flat metric
    does not alarm on its first rounding change.
    """

    name = "zscore"

    def __init__(self, window: int = 64, learning_readings: int = 30, z_half: float = 6.0) -> None:
        self.window = window
        self.learning_readings = learning_readings
        self.z_half = z_half

    def score(self, slots: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        context = values[:, :-1]
        current = values[:, -1]
        n = np.sum(~np.isnan(context), axis=1)
        scores = np.full(len(current), np.nan)
        ready = n >= max(self.learning_readings - 1, 2)
        if not ready.any():
            return scores
        ctx = context[ready]
        with np.errstate(all="ignore"):
            med = row_median(ctx)
            mad = row_median(np.abs(ctx - med[:, None]))
            spread = np.nanmax(ctx, axis=1) - np.nanmin(ctx, axis=1)
            scale = np.maximum.reduce([1.4826 * mad, 0.05 * spread, 1e-4 * np.abs(med), np.full_like(med, 1e-9)])
            z = np.abs(current[ready] - med) / scale
        scores[ready] = z * z / (z * z + self.z_half**2)
        return scores

    def reset(self, slot: int) -> None:  # stateless: everything comes from the window
        return None

    def score_series(self, values: np.ndarray, times: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """A whole series at once, equal to scoring it reading by reading through MetricStore."""
        return series_scores(self, values, times, chunk)


def appended_mask(times: np.ndarray) -> np.ndarray:
    """The store's ordering rule over a whole series: only readings newer than every earlier one
    are appended (and scored); a duplicate or late one keeps the last appended reading's score."""
    if len(times) == 0:
        return np.zeros(0, dtype=bool)
    return times > np.concatenate([[-np.inf], np.maximum.accumulate(times)[:-1]])


def spread_scores(appended: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    index = np.cumsum(appended) - 1  # the last appended reading at or before each row
    return np.where(index >= 0, fresh[np.maximum(index, 0)] if len(fresh) else np.nan, np.nan)


def series_scores(detector, values: np.ndarray, times: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Batch scoring of one series for any window-only detector, equal to the row path."""
    appended = appended_mask(times)
    v, t = values[appended], times[appended]
    pad = np.full(detector.window - 1, np.nan)
    wins = np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, v]), detector.window)
    twins = np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, t]), detector.window)
    fresh = np.empty(len(v))
    for start in range(0, len(v), chunk):
        stop = start + chunk
        fresh[start:stop] = detector.score(np.zeros(0, dtype=np.int64), wins[start:stop], twins[start:stop])
    return spread_scores(appended, fresh)


def make_detector(kind: str, window: int, learning_readings: int, model_dir: str = "", runtime_settings=None) -> Detector:
    """``zscore``: the built-in rolling robust z-score. ``model``: the ONNX window encoder with
    range-excursion and level-shift channels (edged/anomaly, models/edged-anomaly-mlp); its
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
