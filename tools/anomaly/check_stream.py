#!/usr/bin/env python3
"""Check that the streaming detector (row at a time, several metrics per call, as the daemon
calls it) equals the batch replay path, on the first ROWS rows of a few NAB dev files.

  python tools/anomaly/check_stream.py [--rows 3000] [--model-dir models/edged-anomaly-mlp] [--set field=value ...]
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
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)

from edged.anomaly.features import score_series  # noqa: E402
from edged.anomaly.model_detector import ModelDetector, load_detector  # noqa: E402

SETS: list = []


def with_params(det, sets):
    from nab_eval import parse_set

    return ModelDetector(det.p.with_(**parse_set(sets)), det.model)

FILES = ["realKnownCause/nyc_taxi.csv", "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv",
         "artificialWithAnomaly/art_daily_jumpsup.csv", "realKnownCause/rogue_agent_key_hold.csv"]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--float", action="store_true", help="use the float model instead of int8")
    ap.add_argument("--set", action="append", help="override a shipped Param, field=value (as nab_eval.py)")
    args = ap.parse_args(argv)
    det = load_detector(args.model_dir, quantized=not args.float)
    if args.set:
        det = with_params(det, args.set)
    frames = [pd.read_csv(os.path.join("/work/shared/data/nab-dev/data", f)).iloc[: args.rows] for f in FILES]
    data = [d["value"].to_numpy(float) for d in frames]
    stamps = [pd.to_datetime(d["timestamp"]).values.astype("datetime64[ns]").astype(np.int64) / 1e9 for d in frames]
    # irregular sampling: jitter one series, cut gaps into another
    rng = np.random.default_rng(0)
    stamps[1] = stamps[1] + rng.uniform(-60, 60, len(stamps[1])).cumsum() * 0.01
    for at in (700, 1500, 2100):
        if at < len(stamps[2]):
            stamps[2][at:] += 6 * 3600.0
    batch = [score_series(x, det.p, det.model, ts) for x, ts in zip(data, stamps)]
    W = det.window
    n = max(len(x) for x in data)
    stream = [np.full(len(x), np.nan) for x in data]
    slots_all = np.arange(len(data)) * 3 + 1  # sparse slot ids: arrays must grow
    t0 = time.perf_counter()
    for t in range(n):
        live = [i for i, x in enumerate(data) if t < len(x)]
        if t % 7 == 3:  # sometimes one metric per call, sometimes all: batch composition must not matter
            groups = [[i] for i in live]
        else:
            groups = [live]
        for g in groups:
            vals = np.full((len(g), W), np.nan)
            tms = np.full((len(g), W), np.nan)
            for r, i in enumerate(g):
                seg = data[i][max(0, t - W + 1): t + 1]
                vals[r, W - len(seg):] = seg
                tms[r, W - len(seg):] = stamps[i][max(0, t - W + 1): t + 1]
            out = det.score(slots_all[g], vals, tms)
            for r, i in enumerate(g):
                stream[i][t] = out[r]
    dt = time.perf_counter() - t0
    worst = 0.0
    for f, a, b in zip(FILES, batch, stream):
        same_nan = np.array_equal(np.isnan(a), np.isnan(b))
        d = np.nanmax(np.abs(a - b)) if np.any(~np.isnan(a)) else 0.0
        worst = max(worst, d)
        print(f"{f:55s} NaN pattern equal: {same_nan}  max |batch - stream| = {d:.2e}")
    rows = sum(len(x) for x in data)
    print(f"stream path: {rows} rows in {dt:.1f}s ({rows / dt:.0f} rows/s, row-at-a-time)")
    ok = worst < 1e-9
    print("EQUAL" if ok else "DIFFERENT")
    return 0 if ok else 1


def check_with_store(rows: int = 3000, model_dir=None) -> bool:
    """Same check through the daemon's own MetricStore (edged.windows) and the Detector protocol,
    the way Pipeline._score_round calls it: append one reading per metric, gather windows, score."""
    from edged.detector import Detector
    from edged.windows import MetricStore

    det = load_detector(model_dir)
    if SETS:
        det = with_params(det, SETS)
    assert isinstance(det, Detector)
    frames = [pd.read_csv(os.path.join("/work/shared/data/nab-dev/data", f)).iloc[:rows] for f in FILES]
    data = [d["value"].to_numpy(float) for d in frames]
    stamps = [pd.to_datetime(d["timestamp"]).values.astype("datetime64[ns]").astype(np.int64) / 1e9 for d in frames]
    store = MetricStore(max(64, det.window), 100)
    slots = np.array([store.slot(f) for f in FILES], dtype=np.int64)
    out = [np.full(len(x), np.nan) for x in data]
    for t in range(max(len(x) for x in data)):
        live = np.array([i for i, x in enumerate(data) if t < len(x)])
        s = slots[live]
        store.append(s, np.array([stamps[i][t] for i in live]), np.array([data[i][t] for i in live]))
        v, tm = store.windows(s, det.window)
        sc = det.score(s, v, tm)
        for r, i in enumerate(live):
            out[i][t] = sc[r]
    batch = [score_series(x, det.p, det.model, ts) for x, ts in zip(data, stamps)]
    same_nan = all(np.array_equal(np.isnan(a), np.isnan(b)) for a, b in zip(batch, out))
    worst = max(float(np.nanmax(np.abs(a - b))) for a, b in zip(batch, out))
    print(f"through MetricStore + Detector protocol: NaN pattern equal: {same_nan}  max |batch - stream| = {worst:.2e}")
    return same_nan and worst < 1e-9


if __name__ == "__main__":
    SETS[:] = [v for k, v in zip(sys.argv, sys.argv[1:]) if k == "--set"]
    rc = main()
    sys.exit(rc or (0 if check_with_store() else 1))
