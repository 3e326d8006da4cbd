#!/usr/bin/env python3
"""Replay-path throughput: rows/s of the batch path over all NAB dev files, one process.

  python tools/anomaly/bench.py [--model-dir models/edged-anomaly-mlp] [--float] [--repeat 3]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matmuls: threads only add overhead
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))

from edged.anomaly.features import score_series  # noqa: E402
from edged.anomaly.model_detector import load_detector  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--float", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stream-metrics", type=int, default=0,
                    help="also time the streaming path: this many metrics scored together per call")
    ap.add_argument("--stream-steps", type=int, default=1000)
    args = ap.parse_args(argv)
    det = load_detector(args.model_dir, quantized=not args.float)
    files = sorted(glob.glob("/work/shared/data/nab-dev/data/*/*.csv"))
    frames = [pd.read_csv(f) for f in files]
    data = [(d["value"].to_numpy(float),
             pd.to_datetime(d["timestamp"]).values.astype("datetime64[ns]").astype(np.int64) / 1e9) for d in frames]
    rows = sum(len(x) for x, _ in data)
    best = np.inf
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for x, ts in data:
            score_series(x, det.p, det.model, ts)
        best = min(best, time.perf_counter() - t0)
    print(f"{rows} rows, {len(files)} files: best of {args.repeat}: {best:.2f}s = {rows / best:,.0f} rows/s "
          f"(params use={det.p.use}, model={'none' if det.model is None else det.model.path})")
    if args.stream_metrics:
        M, S, W = args.stream_metrics, args.stream_steps, det.window
        vals = [x for x, _ in data if len(x) >= S + W]
        series = np.stack([vals[i % len(vals)][: S + W] * (1 + 0.01 * i) for i in range(M)])
        slots = np.arange(M)
        t0 = time.perf_counter()
        for t in range(W, W + S):
            win = series[:, t - W + 1:t + 1]
            det.score(slots, win, np.broadcast_to(np.arange(t - W + 1, t + 1) * 300.0, win.shape))
        dt = time.perf_counter() - t0
        print(f"streaming: {M} metrics per call x {S} calls: {M * S / dt:,.0f} readings/s "
              f"({dt / S * 1e3:.2f} ms per call)")


if __name__ == "__main__":
    main()
