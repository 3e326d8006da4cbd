"""The only onnxruntime importer: process-wide settings and the session factory.

A session is created from a verified model directory (manifest + sha256), with the
configured execution provider and thread count; the provider actually in use is logged,
and a provider that was asked for but is not available is an error — never a silent
fall-back to the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import RuntimeSettings
from .logs import get_logger
from .manifest import Manifest, ModelError, verify

log = get_logger("edged.runtime")

# onnxruntime's numeric severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
SEVERITY = {"verbose": 0, "info": 1, "warning": 2, "error": 3, "fatal": 4}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float16)": "float16"}


def configure(settings: RuntimeSettings) -> str:
    """Apply process-wide onnxruntime settings; returns the onnxruntime version."""
    import onnxruntime as ort

    ort.set_default_logger_severity(SEVERITY[settings.log_severity])
    wanted = PROVIDERS[settings.provider]
    if wanted not in ort.get_available_providers():  # an error at start, never a silent CPU fall-back
        raise ModelError(
            f"runtime.provider = {settings.provider!r} needs {wanted}, which this onnxruntime build lacks "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu for CUDA/TensorRT"
        )
    return ort.__version__


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def make_session(model_path: Path, settings: RuntimeSettings, *, threads: int | None = None):
    """An InferenceSession on the configured provider; ModelError when it cannot be had."""
    import onnxruntime as ort

    wanted = PROVIDERS[settings.provider]
    if wanted not in ort.get_available_providers():
        raise ModelError(
            f"runtime.provider = {settings.provider!r} needs {wanted}, which this onnxruntime build lacks "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu for CUDA/TensorRT"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads if threads is None else threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = SEVERITY[settings.log_severity]
    # A tiny model called many times a second: spinning threads only burn the cores the broker needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load {model_path}: {exc}") from None
    in_use = session.get_providers()[0]
    if in_use != wanted:
        raise ModelError(f"asked for {wanted} but onnxruntime runs {model_path.name} on {in_use}")
    log.info("model_session", model=str(model_path), provider=in_use, threads=options.intra_op_num_threads)
    return session


def check_io(session, manifest: Manifest) -> None:
    """The graph's inputs/outputs must be the manifest's (names, dtypes, fixed dims)."""
    for kind, actual, expected in (("input", session.get_inputs(), manifest.inputs),
                                   ("output", session.get_outputs(), manifest.outputs)):
        if len(actual) != len(expected):
            raise ModelError(f"{manifest.name}: graph has {len(actual)} {kind}s, manifest says {len(expected)}")
        for a, e in zip(actual, expected):
            dtype = _ORT_DTYPES.get(a.type, a.type)
            if a.name != e.name or dtype != e.dtype:
                raise ModelError(f"{manifest.name}: {kind} {a.name}:{dtype} does not match manifest {e.name}:{e.dtype}")
            shape = list(a.shape)
            if len(shape) != len(e.shape) or any(
                isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(shape, e.shape)
            ):
                raise ModelError(f"{manifest.name}: {kind} {a.name} has shape {shape}, manifest says {e.shape}")


def load_model(directory: Path, settings: RuntimeSettings, role: str = "model"):
    """Verify the directory, open a session on its ``role`` file, check its I/O; (session, manifest)."""
    manifest = verify(directory)
    session = make_session(Path(directory) / manifest.file(role).path, settings)
    check_io(session, manifest)
    return session, manifest


def warm_up(session, feeds: dict[str, np.ndarray]) -> None:
    """One run so the first real request does not pay for lazy initialisation."""
    session.run(None, feeds)
