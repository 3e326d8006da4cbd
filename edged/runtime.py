"""The only onnxruntime importer: process-wide settings now; session factory with
providers, threads, manifest checks and warm-up arrive with the ONNX anomaly model."""

from __future__ import annotations

from .config import RuntimeSettings

# onnxruntime's numeric severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
SEVERITY = {"verbose": 0, "info": 1, "warning": 2, "error": 3, "fatal": 4}


def configure(settings: RuntimeSettings) -> str:
    """Apply process-wide onnxruntime settings; returns the onnxruntime version."""
    import onnxruntime as ort

    ort.set_default_logger_severity(SEVERITY[settings.log_severity])
    return ort.__version__
