#!/usr/bin/env python3
"""Causal NAB evaluation harness for the edged anomaly detectors.

Runs a detector over every CSV of the NAB dev subset (replay path: many time steps per
call, equal to the streaming path, see tests in tools/anomaly/check_stream.py), writes NAB
results files (timestamp,value,anomaly_score) into a temp dir, and scores them with
/work/shared/eval/nab_score.py: optimized threshold, fixed threshold 0.5, and a pooled
leave-one-category-out (LOCO) score over a grid of settings.

Examples:
  python tools/anomaly/nab_eval.py                         # default Params, no model
  python tools/anomaly/nab_eval.py --model models/edged-anomaly-mlp/model.int8.onnx --use excursion,model,shift   # shipped
  python tools/anomaly/nab_eval.py --grid default          # + LOCO over the grid
  python tools/anomaly/nab_eval.py --set refractory=200 --set rho_half=3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matmuls: threads only add overhead
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)
EVAL_DIR = os.environ.get("NAB_EVAL_DIR", "/work/shared/eval")
NAB_ROOT = os.environ.get("NAB_ROOT", "/work/shared/data/nab-dev")
sys.path.insert(0, EVAL_DIR)

import nab_score  # noqa: E402

from edged.anomaly.features import TUPLE_FIELDS, Params, calibrate, learning_mask, raw_channels, score_from_channels, score_from_ratio  # noqa: E402
from edged.detector import appended_mask, spread_scores  # noqa: E402

CATEGORIES = ["artificialNoAnomaly", "artificialWithAnomaly", "realAWSCloudwatch", "realKnownCause"]
STRUCTURAL = ("knn_window", "knn_memory", "knn_center", "ls_recent", "ls_ref", "vol_len", "use", "stuck_min", "stuck_scale",
              "season_days", "season_min_days", "season_learn_s", "season_span_s", "season_block_s", "season_shift_s",
              "recur_noise", "recur_span_s",
              "gap_context", "gap_factor", "excursion_noise", "noise_len")
CALIBRATION = STRUCTURAL + ("calib_len", "calib_q", "calib_every", "floor", "excursion_scale", "weights", "long_gamma", "long_half", "long_use", "calib_block_s", "learn", "learn_s", "recur_use", "recur_min",
                            "rho_half")  # the recurrence test reads the ratio against recur_min x rho_half


# ----------------------------------------------------------------------------- data
def epoch_seconds(col) -> np.ndarray:
    return pd.to_datetime(col).values.astype("datetime64[ns]").astype(np.int64) / 1e9


class Corpus:
    def __init__(self, nab_root: str = NAB_ROOT):
        with open(os.path.join(nab_root, "labels", "combined_windows.json")) as fh:
            self.windows = json.load(fh)
        self.files = sorted(self.windows)
        self.profiles = nab_score.load_profiles(nab_root)
        self.geoms = nab_score.load_geometries(nab_root, self.files, self.windows)
        self.frames = {f: pd.read_csv(os.path.join(nab_root, "data", f)) for f in self.files}
        self.cat = {f: f.split("/")[0] for f in self.files}

    def values(self, f):
        """The readings the daemon appends (and scores): a repeated or late timestamp is not
        appended (edged.detector.appended_mask); :meth:`spread` gives those rows the last score."""
        return self.frames[f]["value"].to_numpy(dtype=float)[self.keep(f)]

    def times(self, f):
        return self.all_times(f)[self.keep(f)]

    def all_times(self, f):
        return epoch_seconds(self.frames[f]["timestamp"])

    def keep(self, f):
        return appended_mask(self.all_times(f))

    def spread(self, f, scores):
        return spread_scores(self.keep(f), scores)

    def idx(self, cats):
        return [i for i, f in enumerate(self.files) if self.cat[f] in cats]


def score(corpus: Corpus, scores: list, idx=None, threshold=None, profile="standard"):
    """(NAB score, threshold) on files idx; threshold None -> NAB-optimized."""
    idx = range(len(corpus.files)) if idx is None else idx
    g = [corpus.geoms[i] for i in idx]
    s = [np.nan_to_num(scores[i], nan=0.0) for i in idx]
    w = corpus.profiles[profile]
    if threshold is None:
        threshold, _ = nab_score.optimize_threshold(g, s, w)
    r = nab_score.score_corpus(g, s, w, threshold)
    return r.normalized, threshold


# ----------------------------------------------------------------------------- running
_MODEL = None


def _load_model(path):
    global _MODEL
    if path and (_MODEL is None or _MODEL.path != path):
        from edged.anomaly.model import OnnxWindowModel

        _MODEL = OnnxWindowModel(path)
    return _MODEL if path else None


def _channels_job(args):
    x, times, pdict, model_path = args
    p = Params.from_dict(pdict)
    return raw_channels(x, p, _load_model(model_path), times)


def compute_channels(corpus: Corpus, p: Params, model_path=None, workers=2):
    jobs = [(corpus.values(f), corpus.times(f), p.to_dict(), model_path) for f in corpus.files]
    # biggest files first for load balance
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][0]))
    out = [None] * len(jobs)
    if workers <= 1:
        for i in order:
            out[i] = _channels_job(jobs[i])
    else:
        with ProcessPoolExecutor(workers) as ex:
            for i, ch in zip(order, ex.map(_channels_job, [jobs[i] for i in order])):
                out[i] = ch
    return out


def write_results(corpus: Corpus, scores: list, outdir: str, detector="edged"):
    for f, s in zip(corpus.files, scores):
        df = corpus.frames[f][["timestamp", "value"]].copy()
        df["anomaly_score"] = np.round(np.nan_to_num(s, nan=0.0), 6)
        path = os.path.join(outdir, os.path.dirname(f), f"{detector}_{os.path.basename(f)}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        df.to_csv(path, index=False)


def run_cli_score(outdir: str, extra: list) -> str:
    cmd = [sys.executable, os.path.join(EVAL_DIR, "nab_score.py"), "--results", outdir, "--detector", "edged",
           "--profile", "standard", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


# ----------------------------------------------------------------------------- LOCO
def loco(corpus: Corpus, results: dict, modes=("optimized", "fixed")):
    """results: config label -> list of per-file scores. Returns the pooled out-of-fold scores
    of each of ``modes``.

    optimized: per held-out category, the config *and threshold* maximizing the NAB score on
    the other categories; held-out detections = score >= that threshold; pooled scoring of
    all out-of-fold detections at 0.5.
    fixed: per held-out category, the config maximizing the score at 0.5 on the others.
    """
    out = {}
    for mode in modes:
        pooled = [None] * len(corpus.files)
        picks = {}
        for c in CATEGORIES:
            train = corpus.idx([k for k in CATEGORIES if k != c])
            best = None
            for label, sc in results.items():
                v, thr = score(corpus, sc, train, None if mode == "optimized" else 0.5)
                if best is None or v > best[0] + 1e-12:
                    best = (v, thr, label)
            v, thr, label = best
            picks[c] = {"config": label, "train_score": round(v, 3), "threshold": thr}
            for i in corpus.idx([c]):
                s = np.nan_to_num(results[label][i], nan=0.0)
                pooled[i] = (s >= thr).astype(float)
        total, _ = score(corpus, pooled, None, 0.5)
        per_cat = {}
        for c in CATEGORIES:
            v, _ = score(corpus, pooled, corpus.idx([c]), 0.5)
            per_cat[c] = round(v, 2) if np.isfinite(v) else None
        out[mode] = {"pooled": total, "picks": picks, "per_category": per_cat}
    return out


def run_grid(corpus: Corpus, base: Params, channels_for, times: list, grid: dict, echo=print,
             ratio_cache: dict | None = None) -> dict:
    """Per-file scores of every setting of ``grid`` (field -> values) on top of ``base``:
    config label -> list of per-file scores, for :func:`loco`. ``channels_for(p)`` gives the raw
    channels of Params p (cached by the caller); calibrations are shared where they can be, also
    across calls that pass the same ``ratio_cache``."""
    keys = list(grid)
    results = {}
    ratio_cache = {} if ratio_cache is None else ratio_cache
    for combo in itertools.product(*(grid[k] for k in keys)):
        upd = dict(zip(keys, combo))
        if "use" in upd and isinstance(upd["use"], str):
            upd["use"] = tuple(upd["use"].split(","))
        p = base.with_(**upd)
        key = tuple((k, str(getattr(p, k))) for k in CALIBRATION)
        if key not in ratio_cache:
            ratio_cache[key] = [calibrate(ch, p, learning_mask(len(tm), p, tm), tm) for ch, tm in zip(channels_for(p), times)]
        sc = [corpus.spread(f, score_from_ratio(r, p, tm)) for f, r, tm in zip(corpus.files, ratio_cache[key], times)]
        label = json.dumps(upd, sort_keys=True)
        results[label] = sc
        if echo:
            o, th = score(corpus, sc)
            f5, _ = score(corpus, sc, None, 0.5)
            echo(f"  grid {label:60s} opt {o:6.2f} (thr {th:.3f})  at0.5 {f5:6.2f}")
    return results


def print_windows(corpus: Corpus, scores: list, threshold: float) -> None:
    """Where the points go: per file, the false positives (count and NAB cost) and each window's
    first detection (reward / MAX_TP at row k of the window's n) or MISS (with its top score)."""
    w = corpus.profiles["standard"]
    for g, s in zip(corpus.geoms, scores):
        s = np.nan_to_num(s, nan=0.0)
        det = g.scored & (s >= threshold)
        fp = det & (g.window_id < 0)
        parts = []
        for _gid, left, right in g.windows:
            sl = slice(left, right + 1)
            if not g.scored[sl].any():
                parts.append("probation")
            elif det[sl].any():
                first = int(np.flatnonzero(det[sl])[0])
                reward = float(np.max(g.tp_curve[sl][det[sl]])) / nab_score.MAX_TP
                parts.append(f"{reward:.2f}@{first}/{right - left + 1}")
            else:
                parts.append(f"MISS(top {np.max(s[sl]):.2f})")
        cost = w["fpWeight"] * float(np.sum(g.fp_curve[fp]))
        print(f"  {g.relpath:58s} fp {int(fp.sum()):2d} ({cost:+.2f})  {' '.join(parts)}")


def parse_set(items):
    kw = {}
    for it in items or []:
        k, v = it.split("=", 1)
        if k in TUPLE_FIELDS:
            kw[k] = tuple(v.split(","))
        elif k == "weights":
            kw[k] = json.loads(v)
        elif v in ("true", "false", "True", "False"):
            kw[k] = v.lower() == "true"
        else:
            for cast in (int, float, str):
                try:
                    kw[k] = cast(v)
                    break
                except ValueError:
                    continue
    return kw


GRIDS = {
    # few knobs: refractory length and the score scale (rho_half only moves the 0.5 point)
    "default": {"rho_half": [1.1, 1.25, 1.4, 1.6, 1.8, 2.0], "refractory": [200, 300, 500], "escalate": [2.0, 3.0, 5.0]},
    "small": {"rho_half": [1.1, 1.25, 1.4, 1.6, 1.8, 2.0], "refractory": [300]},
    # the default grid extended to lower rho_half (a higher calib_q moves the optimum below 1.1)
    "wide": {"rho_half": [0.8, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0], "refractory": [200, 300, 500],
             "escalate": [2.0, 3.0, 5.0]},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", action="append", help="Params field=value (repeatable)")
    ap.add_argument("--use", default=None, help="comma list of channels (excursion,knn,shift,model)")
    ap.add_argument("--model", default=None, help="ONNX window model for the 'model' channel")
    ap.add_argument("--grid", default=None, help=f"LOCO over a grid: {list(GRIDS)} or JSON dict field->list")
    ap.add_argument("--out", default=None, help="results dir (default: a temp dir)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-category", action="store_true")
    ap.add_argument("--json", default=None, help="write a summary JSON here")
    ap.add_argument("--windows", action="store_true",
                    help="per file at 0.5: false positives and, per labelled window, the reward of its first "
                         "detection (1 = the window's left edge) and where it fell, or MISS with the window's top score")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    corpus = Corpus()
    kw = parse_set(args.set)
    if args.use:
        kw["use"] = tuple(args.use.split(","))
    base = Params().with_(**kw)
    t1 = time.perf_counter()
    chans_cache = {}

    def channels_for(p: Params):
        key = tuple((k, str(getattr(p, k))) for k in STRUCTURAL)
        if key not in chans_cache:
            chans_cache[key] = compute_channels(corpus, p, args.model, args.workers)
        return chans_cache[key]

    chans = channels_for(base)
    times = [corpus.times(f) for f in corpus.files]
    scores = [corpus.spread(f, score_from_channels(ch, base, tm)) for f, ch, tm in zip(corpus.files, chans, times)]
    t2 = time.perf_counter()
    rows = sum(len(corpus.frames[f]) for f in corpus.files)
    opt, thr = score(corpus, scores)
    fixed, _ = score(corpus, scores, None, 0.5)
    summary = {"params": base.to_dict(), "model": args.model, "optimized": opt, "opt_threshold": thr,
               "at_0.5": fixed, "rows": rows, "detector_s": t2 - t1}
    print(f"params: {json.dumps(base.to_dict())}  model={args.model}")
    print(f"standard: optimized {opt:.2f} (thr {thr:.4f})   at 0.5: {fixed:.2f}   "
          f"[{rows} rows, detector {t2 - t1:.1f}s with {args.workers} workers]")
    if args.per_category:
        for c in CATEGORIES:
            v, _ = score(corpus, scores, corpus.idx([c]), thr)
            v5, _ = score(corpus, scores, corpus.idx([c]), 0.5)
            print(f"  {c:24s} at opt thr {v:7.2f}   at 0.5 {v5:7.2f}")

    if args.windows:
        print_windows(corpus, scores, 0.5)

    outdir = args.out or tempfile.mkdtemp(prefix="nab_edged_")
    write_results(corpus, scores, outdir)
    cli_opt = run_cli_score(outdir, ["--optimize"]).strip().splitlines()[-1]
    cli_fix = run_cli_score(outdir, ["--threshold", "0.5"]).strip().splitlines()[-1]
    print(f"nab_score.py --optimize:      {cli_opt}")
    print(f"nab_score.py --threshold 0.5: {cli_fix}")
    print(f"results in {outdir}")

    if args.grid:
        grid = GRIDS[args.grid] if args.grid in GRIDS else json.loads(args.grid)
        results = run_grid(corpus, base, channels_for, times, grid)
        lo = loco(corpus, results)
        for mode, r in lo.items():
            print(f"LOCO pooled ({mode}): {r['pooled']:.2f}   per category {r['per_category']}")
            for c, pk in r["picks"].items():
                print(f"    held out {c:24s} -> {pk['config']} thr {pk['threshold']:.4f} (train {pk['train_score']})")
        summary["loco"] = lo
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2, default=str)
    print(f"total {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
