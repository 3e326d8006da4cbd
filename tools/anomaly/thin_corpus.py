#!/usr/bin/env python3
"""Write an irregularly sampled copy of the NAB dev corpus (a robustness check, not a benchmark).

Each row is kept with probability KEEP (seeded); the rows that bound a labelled window and the
first row are always kept, so the labels still match rows. Sensors that report on change, or
drop readings, give the detector such series. ``--jitter S`` also moves each kept row's timestamp
by up to S seconds either way (at most 0.45 x the file's median interval, and never past the midpoint
to a neighbour, so the order holds; the first row, the window edges and rows beside a repeated or
backward timestamp stay): a sensor whose clock or schedule wanders. ``--gaps K`` also removes K
stretches of 1-8 hours per file, each where it touches no labelled window: a sensor that goes
silent now and then. ``--scale A --offset B`` writes A x value + B (other units). Score the copy
with the usual harness:

    python tools/anomaly/thin_corpus.py /tmp/nab-thin60 --keep 0.6
    python tools/anomaly/thin_corpus.py /tmp/nab-jitter120 --keep 1 --jitter 120
    python tools/anomaly/thin_corpus.py /tmp/nab-gaps6 --keep 1 --gaps 6
    NAB_ROOT=/tmp/nab-thin60 python tools/anomaly/nab_eval.py <the shipped --use/--set flags>

The copy holds NAB data: write it outside the repository (the data is never copied in).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import pandas as pd

NAB_ROOT = os.environ.get("NAB_ROOT", "/work/shared/data/nab-dev")
ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MARKER = "THINNED_BY_EDGED"  # only a directory holding this file is ever replaced


def _overlaps(a: str, b: str) -> bool:
    """a and b are the same directory, or one holds the other."""
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="directory for the copy (not inside the repository or the corpus; "
                                 "replaced only if an earlier run wrote it)")
    ap.add_argument("--keep", type=float, default=0.6, help="probability that a row is kept (0 < keep <= 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="move each timestamp but the window edges and the first by up to this many seconds")
    ap.add_argument("--gaps", type=int, default=0, help="remove this many 1-8 hour stretches per file, outside windows")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every value by this")
    ap.add_argument("--offset", type=float, default=0.0, help="... then add this")
    args = ap.parse_args(argv)
    if not 0 < args.keep <= 1:
        ap.error(f"--keep must be in (0, 1], got {args.keep}")
    if args.jitter < 0:
        ap.error(f"--jitter must be >= 0, got {args.jitter}")
    out = os.path.realpath(args.out)
    source = os.path.realpath(NAB_ROOT)
    if _overlaps(out, ROOT):
        ap.error(f"{out} is inside the repository; NAB data is not copied there")
    if _overlaps(out, source):
        ap.error(f"{out} overlaps the corpus it copies ({source}); pick another directory")
    if os.path.exists(out):
        if not os.path.isfile(os.path.join(out, MARKER)):
            ap.error(f"{out} exists and was not written by this tool; it is not replaced")
        shutil.rmtree(out)
    rng = np.random.default_rng(args.seed)
    jitter_rng = np.random.default_rng([args.seed, 1])  # its own draws: --keep picks the same rows with or without it
    gap_rng = np.random.default_rng([args.seed, 2])
    with open(os.path.join(source, "labels", "combined_windows.json")) as fh:
        windows = json.load(fh)
    for sub in ("config", "labels"):
        shutil.copytree(os.path.join(source, sub), os.path.join(out, sub))
    with open(os.path.join(out, MARKER), "w") as fh:
        fh.write(f"thin_corpus.py --keep {args.keep} --jitter {args.jitter} --gaps {args.gaps} --scale {args.scale} "
                 f"--offset {args.offset} --seed {args.seed} of {source}\n")
    kept = total = 0
    for rel in sorted(windows):
        df = pd.read_csv(os.path.join(source, "data", rel))
        keep = rng.random(len(df)) < args.keep
        keep[0] = True
        stamps = pd.to_datetime(df["timestamp"])
        fixed = np.zeros(len(df), dtype=bool)
        fixed[0] = True
        for edge in {s for w in windows[rel] for s in w}:
            fixed |= (stamps == pd.Timestamp(edge)).to_numpy()
        keep |= fixed
        secs = stamps.to_numpy().astype("datetime64[s]").astype(np.int64)
        if args.gaps > 0 and len(df) > 5:
            inside = np.zeros(len(df), dtype=bool)
            for a, b in windows[rel]:
                inside |= ((stamps >= pd.Timestamp(a)) & (stamps <= pd.Timestamp(b))).to_numpy()
            for _ in range(args.gaps):  # after the first fifth: the detector has started
                at = int(gap_rng.integers(len(df) // 5, len(df)))
                cut = (secs >= secs[at]) & (secs < secs[at] + gap_rng.uniform(1, 8) * 3600)
                if not (cut & (inside | fixed)).any():
                    keep &= ~cut
        if args.jitter > 0 and len(df) > 1:
            d = np.diff(secs)
            fixed |= np.r_[d <= 0, False] | np.r_[False, d <= 0]  # beside a repeated or backward stamp
            j = min(args.jitter, 0.45 * float(np.median(d)))
            moved = secs + np.round(jitter_rng.uniform(-j, j, len(secs))).astype(np.int64)
            mid = (secs[:-1] + secs[1:]) // 2  # each row stays between the midpoints to its neighbours
            moved = np.clip(moved, np.r_[secs[0], mid + 1], np.r_[mid, secs[-1]])
            df["timestamp"] = pd.to_datetime(np.where(fixed, secs, moved), unit="s").strftime("%Y-%m-%d %H:%M:%S")
        if args.scale != 1.0 or args.offset != 0.0:
            df["value"] = df["value"] * args.scale + args.offset
        path = os.path.join(out, "data", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        df[keep].to_csv(path, index=False, float_format="%.10g" if args.scale != 1.0 or args.offset != 0.0 else None)
        kept += int(keep.sum())
        total += len(df)
    print(f"{out}: kept {kept} of {total} rows ({kept / total:.1%}) in {len(windows)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
