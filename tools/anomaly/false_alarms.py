#!/usr/bin/env python3
"""False alarms of the shipped anomaly detector on clean synthetic series (no anomaly in them).

NAB hides a detector's early life (its first 15 % is probation) and charges a false positive
little; a daemon's user sees every alarm. This counts, per day since a metric's first reading,
how many alarms (score >= 0.5) the detector raises on series that hold nothing abnormal:

* ``cycle10`` / ``cycle30``: a daily cycle (amplitude 3) with Gaussian noise of 10 % / 30 % of
  the amplitude, 5-minute readings;
* ``ar1`` / ``ar1_10s``: AR(1) noise (phi 0.9) around a constant, 1-minute / 10-second readings;
* ``quantised``: a daily cycle rounded to 0.5 (a coarse sensor), 5-minute readings;
* ``counts``: Poisson counts per 5 minutes whose rate follows the day (0.5 at night to 10.5 at
  midday; events, requests, mentions);
* ``weekdays``: a daily cycle on Monday to Friday only, flat at the weekend (an office), 5-minute
  readings; the weekend and the Monday after it are new, every week, to a memory of 2-3.5 days.

    python tools/anomaly/false_alarms.py [--days 10] [--series 160] [--set field=value ...] [--recurring quiet]

``--set`` overrides a shipped Param (as tools/anomaly/nab_eval.py), e.g. ``--set long_gamma=0``
for the detector without its long-memory calibration. Fixed seeds: the same command prints the
same table.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matmuls: threads only cost here
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402

from edged.anomaly.features import calibrate, learning_mask, raw_channels, score_from_channels  # noqa: E402
from edged.anomaly.model_detector import load_detector  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nab_eval import parse_set  # noqa: E402

DAY = 86400.0


def make_series(kind: str, days: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    step = {"ar1": 60.0, "ar1_10s": 10.0}.get(kind, 300.0)
    t = 1_750_000_000.0 + step * np.arange(int(days * DAY / step))
    phase = rng.uniform(0, 2 * np.pi)
    cycle = 20 + 3 * np.sin(2 * np.pi * t / DAY + phase)
    if kind == "cycle10":
        v = cycle + rng.normal(0, 0.3, len(t))
    elif kind == "cycle30":
        v = cycle + rng.normal(0, 0.9, len(t))
    elif kind == "quantised":
        v = np.round((cycle + rng.normal(0, 0.3, len(t))) * 2) / 2
    elif kind == "counts":
        v = rng.poisson(0.5 + 10 * np.maximum(0.0, np.sin(2 * np.pi * t / DAY + phase))).astype(float)
    elif kind == "weekdays":
        weekday = np.floor(t / DAY + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
        v = np.where(weekday < 5, cycle, 20.0) + rng.normal(0, 0.3, len(t))
    elif kind.startswith("ar1"):
        e = rng.normal(0, 1, len(t))
        v = np.empty(len(t))
        v[0] = e[0]
        for i in range(1, len(t)):
            v[i] = 0.9 * v[i - 1] + e[i]
        v += 50
    else:
        raise ValueError(kind)
    return v, t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--series", type=int, default=160, help="series per kind")
    ap.add_argument("--kinds", default="cycle10,cycle30,quantised,ar1")
    ap.add_argument("--set", action="append", help="override a shipped Param, field=value")
    ap.add_argument("--channels", action="store_true", help="also say which channel raised each alarm")
    ap.add_argument("--recurring", choices=("alarm", "quiet"), default="alarm",
                    help="as the config's [anomaly] recurring: 'quiet' = every metric set quiet")
    args = ap.parse_args(argv)
    det = load_detector()
    p = det.p.with_(**parse_set(args.set))
    if args.recurring == "quiet":
        p = p.quieted()
    print(f"params overridden: {parse_set(args.set) or 'none'}; recurring = {args.recurring}")
    print(f"alarms per 100 metric-days, by day since the first reading ({args.series} series per kind)")
    head = " ".join(f"d{d + 1:<4d}" for d in range(args.days))
    print(f"{'kind':10s} {head} | days 5+ | series with any")
    for kind in args.kinds.split(","):
        per_day = np.zeros(args.days)
        any_alarm = 0
        by_channel: dict[str, int] = {}
        for seed in range(args.series):
            v, t = make_series(kind, args.days, seed)
            ch = raw_channels(v, p, det.model, t)
            s = np.nan_to_num(score_from_channels(ch, p, t))
            if args.channels:
                learning = learning_mask(len(v), p, t)
                alone = {name: calibrate(ch, p.with_(use=(name,)), learning, t) for name in p.use}
                for i in np.flatnonzero(s >= 0.5):
                    top = max(alone, key=lambda name: alone[name][i])
                    by_channel[top] = by_channel.get(top, 0) + 1
            day = ((t - t[0]) // DAY).astype(int)
            hits = day[s >= 0.5]
            np.add.at(per_day, hits, 1)
            any_alarm += len(hits) > 0
        rate = 100 * per_day / args.series
        late = 100 * per_day[4:].sum() / (args.series * max(args.days - 4, 1))
        print(f"{kind:10s} " + " ".join(f"{r:5.1f}" for r in rate) + f" | {late:7.2f} | {any_alarm}/{args.series}"
              + (f"   by channel {by_channel}" if args.channels else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
