"""The window model: an ONNX network scoring the newest reading of a normalised window.

Input ``window`` float32 [N, W] (see :func:`edged.anomaly.features.normalise_model_window`),
output ``logit`` float32 [N, 1]: the log-odds that an anomaly started within the window's
last readings. The detector uses ``softplus(logit)`` (= -log(1 - p), a non-negative
surprise) as one channel. Rows are independent: the int8 model is statically quantized
(fixed activation scales), so a row's output does not depend on the rest of its batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class OnnxWindowModel:
    def __init__(self, path: str, threads: int = 1, runtime_settings=None) -> None:
        """The session comes from edged.runtime (provider checked and logged, threads, no
        spinning) when the daemon passes its [runtime] settings; tools may use the defaults."""
        from ..config import RuntimeSettings
        from ..runtime import make_session

        self.path = path
        settings = runtime_settings or RuntimeSettings(intra_op_threads=threads)
        self.session = make_session(Path(path), settings)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.window = int(inp.shape[1])
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.kind = "encoder" if out.name == "embedding" else "classifier"
        self.dim = int(out.shape[1]) if isinstance(out.shape[1], int) else 1
        manifest = os.path.join(os.path.dirname(path), "manifest.json")
        self.manifest = json.load(open(manifest)) if os.path.exists(manifest) else None

    def logits(self, X: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return np.zeros(0)
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(X, dtype=np.float32)})[0]
        return out.reshape(-1).astype(np.float64)

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Encoder models: (N, D) float64 embeddings."""
        if len(X) == 0:
            return np.zeros((0, self.dim))
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(X, dtype=np.float32)})[0]
        return out.astype(np.float64)

    def run(self, X: np.ndarray) -> np.ndarray:
        z = self.logits(X)
        return np.logaddexp(0.0, z)  # softplus
