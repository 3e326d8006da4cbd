"""`edged models bench`: what each installed model costs on this device, with the configured
provider and threads. Medians of a few runs; for comparisons across versions use tools/."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from .config import Settings


def bench_anomaly(settings: Settings, repeats: int = 5, metrics: int = 100) -> dict:
    """One detector call for ``metrics`` metrics at once (the sensor lane's batch), after warm-up."""
    from .detector import make_detector

    detector = make_detector("model", settings.anomaly.window, settings.anomaly.learning_readings,
                             settings.anomaly.model_dir, settings.runtime)
    rng = np.random.default_rng(0)
    steps = 200
    values = rng.normal(50, 1, (metrics, steps + detector.window))
    times = np.tile(np.arange(steps + detector.window, dtype=float) * 60, (metrics, 1))
    slots = np.arange(metrics)
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for k in range(steps):
            detector.score(slots, values[:, k:k + detector.window], times[:, k:k + detector.window])
        runs.append((time.perf_counter() - t0) / steps)
        for slot in slots:
            detector.reset(int(slot))
    per_call = statistics.median(runs)
    return {"model": "edged-anomaly-mlp", "provider": settings.runtime.provider,
            "threads": settings.runtime.intra_op_threads, "metrics_per_call": metrics,
            "ms_per_call": round(per_call * 1000, 3), "readings_per_s": round(metrics / per_call)}


def bench_llm(model_dir: Path, settings: Settings, repeats: int = 3) -> dict:
    from .llm.engine import Engine

    t0 = time.perf_counter()
    engine = Engine(model_dir, threads=settings.llm.threads, verify=False, lookup=settings.llm.lookup_tokens)
    load_s = time.perf_counter() - t0
    prompt = "Summarise: greenhouse/humidity rose to 91% (typical 55–70%) at 14:02, 12 minutes so far."
    prompt_tps, decode_tps = [], []
    for _ in range(repeats):
        gen = engine.chat(prompt, system=None, max_new_tokens=48)
        if gen.prompt_s > 0:
            prompt_tps.append((gen.prompt_tokens - gen.cached_tokens) / gen.prompt_s)
        if gen.decode_s > 0:
            decode_tps.append(len(gen.token_ids) / gen.decode_s)
    return {"model": model_dir.name, "provider": "cpu", "threads": settings.llm.threads,
            "lookup_tokens": engine.lookup, "load_s": round(load_s, 2),
            "prompt_tok_s": round(statistics.median(prompt_tps), 1) if prompt_tps else None,
            "decode_tok_s": round(statistics.median(decode_tps), 1) if decode_tps else None}
