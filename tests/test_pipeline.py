"""The sensor lane's state-publish coalescing, driven by its own clock argument."""

from __future__ import annotations

import json
import random
import time

from edged.config import Settings
from edged.detector import RobustZScoreDetector
from edged.messages import RawMessage, Topics
from edged.pipeline import SensorPipeline
from edged.stats import Stats


def _pipeline_with_one_metric() -> tuple[SensorPipeline, int]:
    p = SensorPipeline(Settings(), Topics("edged", "test"), RobustZScoreDetector(), lambda *a, **k: True, Stats())
    p.process([RawMessage("sensors/a/b", json.dumps({"value": 1.0, "ts": time.time()}).encode(), time.time())])
    return p, p.store.index["a/b"]


def test_once_a_second_with_jitter_is_never_coalesced_even_after_a_fast_spell():
    p, slot = _pipeline_with_one_metric()
    mono = time.monotonic() + 10.0  # after the first reading's own clock reading
    for _ in range(50):  # ten readings a second for five seconds: coalesced, bucket emptied
        mono += 0.1
        p._take_token(slot, mono)
    rng = random.Random(7)
    delayed = 0
    for _ in range(300):  # then once a second, +-0.3 s of jitter
        mono += 1.0 + rng.uniform(-0.3, 0.3)
        delayed += not p._take_token(slot, mono)
    assert delayed <= 1  # at most the first reading after the spell waits for its token


def test_a_fast_metric_is_capped():
    p, slot = _pipeline_with_one_metric()
    mono = time.monotonic() + 10.0  # after the first reading's own clock reading
    granted = 0
    for _ in range(1000):  # 20 readings a second for 50 s
        mono += 0.05
        granted += p._take_token(slot, mono)
    assert granted <= 50 * 2 + 3  # the bucket's rate and burst, not the readings' rate
