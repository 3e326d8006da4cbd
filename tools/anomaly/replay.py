#!/usr/bin/env python3
"""Replay a CSV ``timestamp,value`` through the detector causally and write
``timestamp,value,anomaly_score`` (NAB results format; NaN while learning is written as 0).

  python tools/anomaly/replay.py IN.csv OUT.csv [--model-dir models/edged-anomaly-mlp] [--stream] [--float]

The default is the batch path (all time steps of the file at once: sliding windows, one ORT
call for all windows); ``--stream`` feeds the streaming detector one reading at a time, as
the daemon does. Both give the same scores (tools/anomaly/check_stream.py).
"""

from __future__ import annotations

import argparse
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


def replay(values: np.ndarray, times: np.ndarray, det, stream: bool = False) -> np.ndarray:
    if not stream:
        return score_series(values, det.p, det.model, times)
    W = det.window
    out = np.full(len(values), np.nan)
    win = np.full((1, W), np.nan)
    tw = np.full((1, W), np.nan)
    slot = np.zeros(1, dtype=np.int64)
    for t, (v, ts) in enumerate(zip(values, times)):
        win[0, :-1] = win[0, 1:]
        win[0, -1] = v
        tw[0, :-1] = tw[0, 1:]
        tw[0, -1] = ts
        out[t] = det.score(slot, win, tw)[0]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--float", action="store_true", help="float model instead of int8")
    args = ap.parse_args(argv)
    df = pd.read_csv(args.input)
    det = load_detector(args.model_dir, quantized=not args.float)
    x = df["value"].to_numpy(dtype=float)
    ts = pd.to_datetime(df["timestamp"]).values.astype("datetime64[ns]").astype(np.int64) / 1e9
    t0 = time.perf_counter()
    s = replay(x, ts, det, args.stream)
    dt = time.perf_counter() - t0
    df = df[["timestamp", "value"]].copy()
    df["anomaly_score"] = np.round(np.nan_to_num(s, nan=0.0), 6)
    df.to_csv(args.output, index=False)
    print(f"{len(x)} rows in {dt:.3f}s ({len(x) / dt:,.0f} rows/s, {'stream' if args.stream else 'batch'})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
