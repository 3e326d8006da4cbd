#!/usr/bin/env python3
"""How much of a NAB dev score is the luck of the encoder's training seed, and a fair comparison.

Trains the window encoder with tools/anomaly/train.py under N seeds (the shipped seed first), scores
the detector with each through the nab_eval.py harness (the shipped detector.json settings, or
--set / --use), and prints per seed and as median [min-max]: optimized, at 0.5, and the pooled
leave-one-category-out score at 0.5 over the default grid, twice:

* per seed: the settings of each fold chosen on that seed's model alone (what nab_eval.py reports
  for the shipped model);
* seed-averaged: the settings of each fold chosen on the mean over all seeds of the other
  categories' scores, then applied to every seed (the estimate that does not fit one model's noise).

``--ensemble K`` also scores the encoders of each K consecutive seeds run side by side in one ONNX
model, their embeddings concatenated (one nearest-window distance over all of them).

``--vs field=value`` (repeatable) scores a second detector on the same models and prints the paired
difference per seed with its mean and standard error: a change that moves the dev score by less
than about two standard errors of that difference is not a finding.

Training needs torch, which edged does not depend on: give a Python that has it with --python.

    python3 -m venv /tmp/trainenv && /tmp/trainenv/bin/pip install torch==2.13.0 numpy onnx \\
        onnxruntime==1.32.0 structlog pydantic
    .venv/bin/python tools/anomaly/seed_study.py --python /tmp/trainenv/bin/python --seeds 15 --models /tmp/seeds
    .venv/bin/python tools/anomaly/seed_study.py --models /tmp/seeds --seeds 15 --vs use=excursion,shift,stuck,volatility

With --models DIR the trained models are kept there and reused by later runs (same seeds and
train.py arguments). Per seed ~10-20 s of training and ~10 s of scoring on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import nab_eval as ne  # noqa: E402 (sets up sys.path and the thread env for the harness)
from edged.anomaly.features import Params  # noqa: E402

SHIPPED_DIR = os.path.join(ne.ROOT, "models", "edged-anomaly-mlp")
SHIPPED_SEED = 20261  # train.py's default: the shipped model
METRICS = ("optimized", "at_0.5", "loco_fixed")


def shipped_params() -> Params:
    with open(os.path.join(SHIPPED_DIR, "detector.json")) as fh:
        return Params.from_dict(json.load(fh)["params"])


def trained_model(python: str, root: str, seed: int, extra: list[str]) -> str:
    """The int8 model of ``seed`` under root, trained now unless an earlier run with the same
    train.py arguments left it there."""
    out = os.path.join(root, f"seed{seed}")
    model, stamp = os.path.join(out, "model.int8.onnx"), os.path.join(out, "train_args.json")
    if os.path.exists(model) and os.path.exists(stamp) and json.load(open(stamp)) == extra:
        return model
    cmd = [python, os.path.join(HERE, "train.py"), "--out", out, "--seed", str(seed), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ne.ROOT))
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        hint = "\n(train.py needs torch: pass --python with a Python that has it, see --help)" if "torch" in "".join(tail) else ""
        raise SystemExit(f"training seed {seed} failed ({' '.join(cmd)}):\n  " + "\n  ".join(tail) + hint)
    with open(stamp, "w") as fh:
        json.dump(extra, fh)
    return model


def merge_encoders(paths: list[str], out: str) -> str:
    """One ONNX model running the encoders of ``paths`` side by side on the same window, their
    embeddings concatenated: the nearest-window distance of an ensemble, in one session."""
    import onnx
    from onnx import compose, helper

    models = [onnx.load(p) for p in paths]
    first = models[0]
    nodes, inits, infos = [], [], []
    for k, m in enumerate(models):
        g = compose.add_prefix(m, f"m{k}_").graph
        nodes.append(helper.make_node("Identity", [first.graph.input[0].name], [g.input[0].name]))
        nodes += g.node
        inits += g.initializer
        infos += g.value_info
    outs = [f"m{k}_{first.graph.output[0].name}" for k in range(len(models))]
    nodes.append(helper.make_node("Concat", outs, [first.graph.output[0].name], axis=1))
    dim = sum(m.graph.output[0].type.tensor_type.shape.dim[1].dim_value for m in models)
    output = helper.make_tensor_value_info(first.graph.output[0].name,
                                           first.graph.output[0].type.tensor_type.elem_type, ["N", dim])
    graph = helper.make_graph(nodes, "encoder_ensemble", [first.graph.input[0]], [output], initializer=inits,
                              value_info=infos)
    merged = helper.make_model(graph, opset_imports=first.opset_import, ir_version=first.ir_version)
    onnx.checker.check_model(merged)
    onnx.save(merged, out)
    return out


class Detector:
    """One detector setting scored on every seed's model: per seed the headline scores and, per
    grid config, the detections at 0.5 (kept as booleans for the seed-averaged LOCO)."""

    def __init__(self, corpus: ne.Corpus, base: Params, grid: dict):
        self.corpus, self.base, self.grid = corpus, base, grid
        self.rows: list[dict] = []
        self.detections: list[dict] = []  # per seed: config label -> per-file bool arrays

    def add(self, seed: int, model_path: str, workers: int) -> dict:
        corpus = self.corpus
        cache = {}

        def channels_for(p: Params):
            key = tuple((k, str(getattr(p, k))) for k in ne.STRUCTURAL)
            if key not in cache:
                cache[key] = ne.compute_channels(corpus, p, model_path, workers)
            return cache[key]

        times = [corpus.times(f) for f in corpus.files]
        ratios = {}  # calibrations shared by the base setting and the grid
        own = ne.run_grid(corpus, self.base, channels_for, times, {}, echo=None, ratio_cache=ratios)
        scores = next(iter(own.values()))
        opt, _ = ne.score(corpus, scores)
        fixed, _ = ne.score(corpus, scores, None, 0.5)
        results = ne.run_grid(corpus, self.base, channels_for, times, self.grid, echo=None, ratio_cache=ratios)
        lo = ne.loco(corpus, results, modes=("fixed",))
        self.detections.append({k: [np.nan_to_num(s, nan=0.0) >= 0.5 for s in v] for k, v in results.items()})
        row = {"seed": seed, "optimized": opt, "at_0.5": fixed, "loco_fixed": lo["fixed"]["pooled"]}
        self.rows.append(row)
        return row

    def seed_averaged_loco(self) -> tuple[list[float], dict]:
        """Per held-out category, the config with the best mean score at 0.5 over the seeds on the
        other categories; the pooled out-of-fold score of every seed with those picks."""
        corpus = self.corpus
        labels = list(self.detections[0])
        picks = {}
        for c in ne.CATEGORIES:
            train = corpus.idx([k for k in ne.CATEGORIES if k != c])
            picks[c] = max(labels, key=lambda lab: np.mean(
                [ne.score(corpus, [d.astype(float) for d in det[lab]], train, 0.5)[0] for det in self.detections]))
        pooled = []
        for det in self.detections:
            out = [None] * len(corpus.files)
            for c in ne.CATEGORIES:
                for i in corpus.idx([c]):
                    out[i] = det[picks[c]][i].astype(float)
            pooled.append(ne.score(corpus, out, None, 0.5)[0])
        return pooled, picks


def spread(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{np.median(v):6.2f} [{v.min():.2f}-{v.max():.2f}]  mean {v.mean():.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="a Python with torch, for train.py")
    ap.add_argument("--seeds", type=int, default=10, help=f"how many seeds: {SHIPPED_SEED} (shipped) and the next ones")
    ap.add_argument("--models", default=None, help="keep (and reuse) the trained models in this directory")
    ap.add_argument("--train-arg", action="append", default=[],
                    help="passed to train.py (repeatable), e.g. --train-arg=--epochs --train-arg=3")
    ap.add_argument("--set", action="append", help="override a shipped detector Param, field=value (repeatable)")
    ap.add_argument("--use", default=None, help="comma list of channels (default: the shipped ones)")
    ap.add_argument("--vs", action="append", help="a second detector: the first with field=value (repeatable)")
    ap.add_argument("--ensemble", type=int, default=0,
                    help="also score ensembles of this many consecutive seeds (embeddings concatenated)")
    ap.add_argument("--grid", default="default", help=f"LOCO grid: {list(ne.GRIDS)} or JSON dict field->list")
    ap.add_argument("--float", action="store_true", help="score each seed's float model (model.onnx), not its int8 one")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None, help="write per-seed results and the summary here")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")

    kw = ne.parse_set(args.set)
    if args.use:
        kw["use"] = tuple(args.use.split(","))
    base = shipped_params().with_(**kw)
    grid = ne.GRIDS[args.grid] if args.grid in ne.GRIDS else json.loads(args.grid)
    corpus = ne.Corpus()
    detectors = {"A": Detector(corpus, base, grid)}
    print(f"A: {json.dumps(base.to_dict())}")
    if args.vs:
        detectors["B"] = Detector(corpus, base.with_(**ne.parse_set(args.vs)), grid)
        print(f"B: A with {' '.join(args.vs)}")
    print(f"train.py args: {args.train_arg or '(defaults)'}   LOCO grid: {json.dumps(grid)}")
    ensembles = Detector(corpus, base, grid) if args.ensemble > 1 else None
    models = []

    tmp = None if args.models else tempfile.TemporaryDirectory(prefix="edged_seeds_")
    root = args.models or tmp.name
    os.makedirs(root, exist_ok=True)
    t0 = time.perf_counter()
    head = " ".join(f"{name + ' ' + m:>14}" for name in detectors for m in METRICS)
    print(f"{'seed':>6} {head}" + ("   B-A at 0.5" if args.vs else ""))
    try:
        for i in range(args.seeds):
            seed = SHIPPED_SEED + i
            model = trained_model(args.python, root, seed, args.train_arg)
            if args.float:
                model = os.path.join(os.path.dirname(model), "model.onnx")
            models.append(model)
            rows = [d.add(seed, model, args.workers) for d in detectors.values()]
            cells = " ".join(f"{r[m]:14.2f}" for r in rows for m in METRICS)
            diff = f"   {rows[1]['at_0.5'] - rows[0]['at_0.5']:+11.2f}" if args.vs else ""
            print(f"{seed:>6} {cells}{diff}", flush=True)
        if ensembles is not None:
            for g in range(0, len(models) - args.ensemble + 1, args.ensemble):
                seeds = range(SHIPPED_SEED + g, SHIPPED_SEED + g + args.ensemble)
                merged = merge_encoders(models[g:g + args.ensemble],
                                        os.path.join(root, f"ensemble{seeds[0]}-{seeds[-1]}.onnx"))
                r = ensembles.add(seeds[0], merged, args.workers)
                cells = " ".join(f"{r[m]:14.2f}" for m in METRICS)
                print(f"A with the encoders of seeds {seeds[0]}-{seeds[-1]} together: {cells}", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    print(f"over {args.seeds} seeds ({time.perf_counter() - t0:.0f} s), median [min-max]:")
    summary = {}
    for name, d in detectors.items():
        pooled, picks = d.seed_averaged_loco()
        summary[name] = {m: [r[m] for r in d.rows] for m in METRICS}
        summary[name]["loco_seed_averaged"] = pooled
        summary[name]["loco_seed_averaged_picks"] = picks
        for m in (*METRICS, "loco_seed_averaged"):
            label = {"loco_fixed": "LOCO, per seed", "loco_seed_averaged": "LOCO, seed-averaged"}.get(m, m)
            print(f"  {name} {label:20s} {spread(summary[name][m])}")
    if ensembles is not None and ensembles.rows:
        for m in METRICS:
            print(f"  A, ensembles of {args.ensemble}: {m:12s} {spread([r[m] for r in ensembles.rows])}")
    if args.vs:
        for m in ("optimized", "at_0.5"):
            dv = np.array(summary["B"][m]) - np.array(summary["A"][m])
            se = dv.std(ddof=1) / np.sqrt(len(dv)) if len(dv) > 1 else float("nan")
            print(f"  B - A {m:8s} mean {dv.mean():+.2f} (standard error {se:.2f}), B better in {int((dv > 0).sum())} of {len(dv)}")
        dl = np.array(summary["B"]["loco_seed_averaged"]) - np.array(summary["A"]["loco_seed_averaged"])
        print(f"  B - A LOCO, seed-averaged mean {dl.mean():+.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"A": base.to_dict(), "vs": args.vs, "train_args": args.train_arg,
                       "seeds": [SHIPPED_SEED + i for i in range(args.seeds)], "summary": summary}, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
