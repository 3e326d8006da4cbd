#!/usr/bin/env python3
"""The NAB table of docs/BENCHMARKS.md: `edged replay` over the dev corpus, scored by nab_score.py.

Each row is the daemon's own command, run as a subprocess:

    edged replay ../shared/data/nab-dev/data --out OUT -c CONFIG [--recurring quiet]
    python ../shared/eval/nab_score.py --results OUT --detector edged --optimize | --threshold 0.5

for the shipped detector, the same with every metric `recurring = "quiet"`, the float encoder
(a copy of the model directory whose int8 file is the float model, its manifest re-hashed), the
ablation without the model (a copy whose detector.json leaves the `model` channel out), and the
built-in z-score detector. The pooled leave-one-category-out score (the default grid of
rho_half x refractory x escalate chosen on the other three categories, scored at 0.5, all
out-of-fold files together) comes from tools/anomaly/nab_eval.py's in-process harness on the same
detector settings, the batch path that `edged replay` runs. The published detectors' scores on
the same 35 files are from ../shared/eval/README.md.

    .venv/bin/python tools/anomaly/nab_table.py            # print the table (~1.5 min on 2 cores)
    .venv/bin/python tools/anomaly/nab_table.py --write    # also replace the generated block in docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import nab_eval as ne  # noqa: E402 (sets up sys.path and the thread env for the harness)
from edged.anomaly.features import Params  # noqa: E402
from edged.manifest import read_manifest, sha256_file, write_manifest  # noqa: E402

MODEL_DIR = REPO / "models" / "edged-anomaly-mlp"
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
PUBLISHED = [  # ../shared/eval/README.md: same 35 files, their stored thresholds
    ("ARTime (published)", 67.54, 56.59, 73.51),
    ("Numenta HTM (published)", 66.47, 59.97, 70.98),
    ("CAD OSE (published)", 61.20, 56.94, 66.31),
    ("KNN CAD (published)", 52.97, 40.14, 59.56),
]
DEV_ROOT = Path(ne.EVAL_DIR).parent / "data" / "nab-dev"
BEGIN, END = "<!-- nab_table.py --write: begin -->", "<!-- nab_table.py --write: end -->"


def edged_bin() -> str:
    found = shutil.which("edged", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("edged is not installed in this Python's environment (make install)")
    return found


def float_model_dir(root: Path) -> Path:
    """The shipped model directory with the float encoder where the daemon loads the int8 one."""
    out = root / "models" / "float"
    shutil.copytree(MODEL_DIR, out, dirs_exist_ok=True)
    int8 = out / "model.int8.onnx"
    shutil.copyfile(out / "model.onnx", int8)
    manifest = read_manifest(out)
    for entry in manifest.files:
        if entry.path == int8.name:
            entry.sha256, entry.bytes = sha256_file(int8), int8.stat().st_size
    write_manifest(out, manifest)
    return out


def no_model_dir(root: Path) -> Path:
    """The shipped model directory whose detector.json leaves the model channel out."""
    out = root / "models" / "no-model"
    shutil.copytree(MODEL_DIR, out, dirs_exist_ok=True)
    spec = json.loads((out / "detector.json").read_text())
    spec["params"]["use"] = [c for c in spec["params"]["use"] if c != "model"]
    (out / "detector.json").write_text(json.dumps(spec, indent=2) + "\n")
    return out


def replay_and_score(name: str, root: Path, config: str, extra: list[str], data: Path, nab_root: Path) -> dict:
    cfg = root / f"{name}.toml"
    cfg.write_text(config)
    out = root / "results" / name
    shutil.rmtree(out, ignore_errors=True)  # a --keep folder from an earlier run
    # only the config written here: EDGED_* variables would override its keys
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    t0 = time.perf_counter()
    run([edged_bin(), "replay", str(data), "--out", str(out), "-c", str(cfg), "-q", *extra], env)
    replay_s = time.perf_counter() - t0
    scores = {}
    for mode, flag in (("opt", ["--optimize"]), ("fixed", ["--threshold", "0.5"])):
        js = root / f"{name}.{mode}.json"
        run([sys.executable, str(Path(ne.EVAL_DIR) / "nab_score.py"), "--results", str(out),
             "--detector", "edged", "--nab-root", str(nab_root), "--json", str(js), *flag], env)
        scores[mode] = json.loads(js.read_text())["profiles"]
    return {"scores": scores, "replay_s": replay_s}


def run(cmd: list[str], env: dict) -> None:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n  ".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {r.returncode}):\n  {tail}")


def loco_fixed(corpus, params: Params, model_path: str | None) -> float:
    """Pooled leave-one-category-out at 0.5 over nab_eval's default grid."""
    chans = ne.compute_channels(corpus, params, model_path, workers=2)
    times = [corpus.times(f) for f in corpus.files]
    results = ne.run_grid(corpus, params, lambda p: chans, times, ne.GRIDS["default"], echo=None)
    return ne.loco(corpus, results, modes=("fixed",))["fixed"]["pooled"]


def machine() -> str:
    sys.path.insert(0, str(REPO / "tools"))
    from bench_pipeline import machine_info  # the same description as the other benchmarks

    m = machine_info()
    return f"{m['cpu']}, {m['cores']} CPUs, {m['memory']}, Python {m['python']}"


def table(rows: list[tuple[str, dict | None, float | None]]) -> str:
    head = ("| detector | standard opt | low-FP opt | low-FN opt | standard @0.5 | low-FP @0.5 | low-FN @0.5 "
            "| LOCO (fixed 0.5) |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for label, r, loco in rows:
        if r is None:
            continue
        cells = [f"{r['opt'][p]['score']:.2f}" for p in PROFILES] + [f"{r['fixed'][p]['score']:.2f}" for p in PROFILES]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'' if loco is None else f'{loco:.2f}'} |")
    for label, std, lfp, lfn in PUBLISHED:
        lines.append(f"| {label} | {std:.2f} | {lfp:.2f} | {lfn:.2f} | | | | |")
    return "\n".join(lines)


def corpus_name(nab_root: Path) -> str:
    return "../shared/data/nab-dev" if nab_root.resolve() == DEV_ROOT.resolve() else str(nab_root)


def write_doc(body: str) -> Path:
    path = REPO / "docs" / "BENCHMARKS.md"
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no generated block ({BEGIN} ... {END}) to replace")
    a, b = text.index(BEGIN), text.index(END) + len(END)
    path.write_text(text[:a] + f"{BEGIN}\n{body.rstrip()}\n{END}" + text[b:])
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the generated block in docs/BENCHMARKS.md")
    ap.add_argument("--keep", default=None, help="keep the results folders here (default: a temporary folder)")
    args = ap.parse_args(argv)

    nab_root = Path(ne.NAB_ROOT)
    if args.write and nab_root.resolve() != DEV_ROOT.resolve():
        raise SystemExit(f"NAB_ROOT={nab_root} is not the dev corpus ({DEV_ROOT}): "
                         "--write only records the dev corpus's table")
    if args.keep:
        root = Path(args.keep)
        root.mkdir(parents=True, exist_ok=True)
        return build(args, nab_root, root)
    with tempfile.TemporaryDirectory(prefix="nab_table_") as tmp:
        return build(args, nab_root, Path(tmp))


def build(args, nab_root: Path, root: Path) -> int:
    data = nab_root / "data"
    t0 = time.perf_counter()
    shipped = json.loads((MODEL_DIR / "detector.json").read_text())["params"]
    params = Params.from_dict(shipped)
    def model_cfg(directory: Path) -> str:
        return f'[anomaly]\ndetector = "model"\nmodel_dir = {json.dumps(str(directory))}\n'
    variants = [  # (label, name, config, extra replay args, LOCO params, LOCO model file)
        ("edged `model`, shipped (int8 encoder)", "shipped", model_cfg(MODEL_DIR), [],
         params, str(MODEL_DIR / "model.int8.onnx")),
        ("same, float encoder", "float", model_cfg(float_model_dir(root)), [],
         params, str(MODEL_DIR / "model.onnx")),
        ("same, ablation: no model", "no-model", model_cfg(no_model_dir(root)), [],
         params.with_(use=tuple(c for c in params.use if c != "model")), None),
        ("same, every metric `recurring = \"quiet\"`", "quiet", model_cfg(MODEL_DIR), ["--recurring", "quiet"],
         params.quieted(), str(MODEL_DIR / "model.int8.onnx")),
        ("edged `zscore` (the built-in detector)", "zscore", '[anomaly]\ndetector = "zscore"\n', [], None, None),
    ]
    corpus = ne.Corpus(str(nab_root))
    rows, shipped_replay_s = [], float("nan")
    for label, name, config, extra, p, model_path in variants:
        print(f"{name}: edged replay + nab_score.py ...", file=sys.stderr, flush=True)
        r = replay_and_score(name, root, config, extra, data, nab_root)
        loco = None
        if p is not None:
            print(f"{name}: leave-one-category-out ...", file=sys.stderr, flush=True)
            loco = loco_fixed(corpus, p, model_path)
        rows.append((label, r["scores"], loco))
        if name == "shipped":
            shipped_replay_s = r["replay_s"]
    body = table(rows)
    took = time.perf_counter() - t0
    rows_n = sum(len(corpus.frames[f]) for f in corpus.files)
    note = (f"Generated by `tools/anomaly/nab_table.py --write` in {took:.0f} s on {machine()}: "
            f"`edged replay` over the {len(corpus.files)} files of {corpus_name(nab_root)} ({rows_n:,} rows; "
            f"the shipped detector's replay took {shipped_replay_s:.1f} s, {rows_n / shipped_replay_s:,.0f} rows/s "
            "including the process start and model load; tools/anomaly/bench.py measures the scoring rate), scored by ../shared/eval/nab_score.py (NAB v1.1 rules); LOCO by "
            "tools/anomaly/nab_eval.py's harness on the same settings.")
    print(note)
    print(body)
    if args.write:
        print(f"wrote {write_doc(note + chr(10) + chr(10) + body)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
