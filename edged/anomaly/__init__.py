"""Streaming anomaly detection for edged: causal channels (range excursion, nearest-past-window
distance in a learned embedding, level shift, stuck value, volatility, time of day against earlier days),
per-metric rolling-quantile calibration, a
refractory filter, and an int8 ONNX window encoder (models/edged-anomaly-mlp).

The daemon's default detector: ``[anomaly] detector = "model"`` -> ``edged.detector.make_detector``
-> :func:`load_detector` on the bundled model directory (``edged/_models/edged-anomaly-mlp`` in an
installed wheel, ``models/edged-anomaly-mlp`` in the source tree), checked against its manifest.
"""

from .features import Params, score_series
from .model_detector import ModelDetector, load_detector

__all__ = ["ModelDetector", "Params", "load_detector", "score_series"]
