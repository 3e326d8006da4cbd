#!/usr/bin/env python3
"""How long one huge event deafens the shipped anomaly detector (docs/ANOMALY.md section 14).

Each series is a clean daily cycle (amplitude 3, noise 0.3, 5-minute readings) with one spike of
``--spike`` on day ``--spike-day`` and, on day ``--step-day``, a level step of ``--step`` that lasts
a day. It prints how many spikes and steps the detector catches (a score >= 0.5 within 15 minutes of
the spike, within 2 hours of the step's start), and the alarms elsewhere from day 3 on. ``--set``
compares another setting, as in nab_eval.py:

    python tools/anomaly/after_spike.py --step 1.5
    python tools/anomaly/after_spike.py --step 1.5 --set long_gamma=0.7 --set long_use=model   # before section 14

Fixed seeds: the same command prints the same counts.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from edged.anomaly.features import score_series  # noqa: E402
from edged.anomaly.model_detector import load_detector  # noqa: E402
from nab_eval import parse_set  # noqa: E402

DAY = 288  # 5-minute readings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=30)
    ap.add_argument("--spike", type=float, default=60.0, help="spike height (the cycle's amplitude is 3)")
    ap.add_argument("--spike-day", type=int, default=4)
    ap.add_argument("--step", type=float, default=1.5, help="height of the later level step")
    ap.add_argument("--step-day", type=int, default=11)
    ap.add_argument("--set", action="append", help="override a shipped Param, field=value")
    args = ap.parse_args(argv)
    if args.spike_day < 2:
        ap.error("--spike-day must be 2 or later: the detector learns on day 1 and raises nothing there")
    if args.step_day <= args.spike_day:
        ap.error("--step-day must come after --spike-day")

    det = load_detector()
    p = det.p.with_(**parse_set(args.set)) if args.set else det.p
    days = args.step_day + 3
    t = 1_750_000_000.0 + 300.0 * np.arange(days * DAY)
    rng = np.random.default_rng(0)
    spikes = steps = other = 0
    for _ in range(args.series):
        x = 3 * np.sin(2 * np.pi * t / 86400 + rng.uniform(0, 6.3)) + rng.normal(0, 0.3, len(t))
        spike_at = (args.spike_day - 1) * DAY + int(rng.integers(0, DAY))
        step_at = (args.step_day - 1) * DAY + int(rng.integers(0, DAY))
        x[spike_at] += args.spike
        x[step_at:step_at + DAY] += args.step
        alarm = np.nan_to_num(score_series(x, p, det.model, t)) >= 0.5
        hit_spike, hit_step = alarm[spike_at:spike_at + 3].any(), alarm[step_at:step_at + 24].any()
        spikes += hit_spike
        steps += hit_step
        # alarms from day 3 on that belong to neither event (the step's day and the day after it excluded)
        elsewhere = alarm.copy()
        elsewhere[:2 * DAY] = False
        elsewhere[spike_at:spike_at + 3] = False
        elsewhere[step_at:step_at + 2 * DAY] = False
        other += int(elsewhere.sum())
    changed = f" ({' '.join(args.set)})" if args.set else ""
    print(f"{args.series} series{changed}: spike {args.spike:g} on day {args.spike_day} caught in {spikes}, "
          f"step {args.step:g} on day {args.step_day} caught in {steps}; other alarms from day 3: {other}")


if __name__ == "__main__":
    main()
