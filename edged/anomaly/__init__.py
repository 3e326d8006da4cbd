"""Streaming anomaly detection for edged: causal channels (range excursion, nearest-past-window
distance in a learned embedding, level shift), per-metric rolling-quantile calibration, a
refractory filter, and an int8 ONNX window encoder (models/edged-anomaly-mlp).

Integration into the daemon (edged/detector.py ``make_detector``), e.g.::

    if kind == "onnx":
        from .anomaly import load_detector
        return load_detector()          # models/edged-anomaly-mlp/{detector.json, model.int8.onnx}
"""

from .features import Params, score_series
from .model_detector import ModelDetector, load_detector

__all__ = ["ModelDetector", "Params", "load_detector", "score_series"]
