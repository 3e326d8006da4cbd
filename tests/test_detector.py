"""The built-in robust z-score detector: its noise scale on quantised sensors, the day-long
envelope (a daily cycle or a routine seen within the last day is not news), two-state sensors,
its per-slot state, and the batch (replay) path equal to the reading-by-reading one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edged.decision import MetricDecision, decide_value, onset
from edged.detector import NO_HOUR, RobustZScoreDetector
from edged.replay import score_rows
from edged.windows import MetricStore

T0 = 1_750_000_000.0
DAY = 86400.0


def stream(det: RobustZScoreDetector, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    return score_rows(det, times, values)


def daily(hours: float, step: float = 60.0, amp: float = 5.0, noise: float = 0.2, seed: int = 1):
    t = T0 + np.arange(0, hours * 3600, step)
    rng = np.random.default_rng(seed)
    v = 20 + amp * np.sin(2 * math.pi * (t - T0) / DAY) + noise * rng.standard_normal(len(t))
    return t, np.round(v, 1)


def test_batch_equals_streaming_on_mixed_series():
    rng = np.random.default_rng(7)
    t, v = daily(40)
    v[1500:1530] += 12  # an excursion beyond the day's range
    v[2000] = 5.0  # a spike down
    t = t.copy()
    t[300:600] += 3 * 3600  # a gap of three hours...
    t[600:] += 3 * 3600
    t[700] = t[699]  # ...a duplicate...
    t[800] = t[790]  # ...and a late reading
    door = (rng.random(len(t)) < 0.02).astype(float)
    walk = np.round(np.cumsum(rng.standard_normal(len(t))), 2)
    for values in (v, door, walk, np.full(len(t), 3.0)):
        batch = RobustZScoreDetector().score_series(values, t)
        rows = stream(RobustZScoreDetector(), t, values)
        np.testing.assert_array_equal(np.nan_to_num(batch, nan=-1), np.nan_to_num(rows, nan=-1))


def test_several_metrics_in_one_call_equal_each_alone():
    """The pipeline scores a round of metrics per call (one reading each): per-slot state must
    not leak between slots."""
    t, a = daily(30, seed=2)
    b = np.round(np.where((np.arange(len(t)) // 300) % 2 == 0, 1.2, 355.0), 1)  # a pump's runs
    c = (np.arange(len(t)) % 97 == 0).astype(float)  # a two-state sensor
    series = [a, b, c]
    det = RobustZScoreDetector()
    store = MetricStore(det.window, 8)
    slots = np.array([store.slot(f"m{k}") for k in range(3)])
    got = np.empty((3, len(t)))
    for i in range(len(t)):
        store.append(slots, np.full(3, t[i]), np.array([s_[i] for s_ in series]))
        vals, times = store.windows(slots, det.window)
        got[:, i] = det.score(slots, vals, times)
    for k, values in enumerate(series):
        want = RobustZScoreDetector().score_series(values, t)
        np.testing.assert_array_equal(np.nan_to_num(got[k], nan=-1), np.nan_to_num(want, nan=-1))


def test_quantised_near_constant_sensor_is_not_flagged_for_one_step():
    # over half the window repeats 21.5 (MAD = 0): one 0.1 step must not read as an outlier
    ctx = np.array([21.5] * 36 + [21.4] * 13 + [21.6] * 12 + [21.3, 21.7])
    det = RobustZScoreDetector(envelope=False)
    row = np.concatenate([ctx, [21.7]])[None, :]
    times = (T0 + 60 * np.arange(row.shape[1]))[None, :]
    assert det.score(np.array([0]), row, times)[0] < 0.35  # the MAD alone (0) made it 0.74
    row[0, -1] = 23.5  # two degrees is still an outlier
    assert det.score(np.array([0]), row, times)[0] > 0.9


def test_daily_cycle_is_not_flagged_on_the_second_day_but_a_new_extreme_is():
    t, v = daily(48, noise=0.05)
    v[-300] = 40.0  # far beyond anything in the last day
    scores = RobustZScoreDetector().score_series(v, t)
    second_day = (t >= T0 + DAY) & (np.arange(len(t)) != len(t) - 300)
    assert np.nanmax(scores[second_day]) < 0.5
    assert scores[-300] > 0.9


def test_a_routine_seen_within_the_day_is_not_news_the_first_time_is():
    t = T0 + 60.0 * np.arange(int(30 * 60))  # 30 hours, one reading a minute
    rng = np.random.default_rng(3)
    v = np.round(21 + 0.1 * rng.standard_normal(len(t)), 1)
    first, second = slice(300, 345), slice(300 + 20 * 60, 345 + 20 * 60)  # 45 minutes, 20 hours apart
    v[first] += 3.0
    v[second] += 2.8
    scores = RobustZScoreDetector().score_series(v, t)
    assert np.nanmax(scores[first]) > 0.9
    assert np.nanmax(scores[second]) < 0.5


def test_one_glitch_does_not_widen_the_envelope_for_a_day():
    t = T0 + 60.0 * np.arange(int(20 * 60))
    rng = np.random.default_rng(4)
    v = np.round(21 + 0.1 * rng.standard_normal(len(t)), 1)
    v[200] = 60.0  # one bad reading
    v[900:905] = 45.0  # hours later: a real excursion, lower than the glitch
    scores = RobustZScoreDetector().score_series(v, t)
    assert scores[200] > 0.9 and scores[900] > 0.9


def test_a_two_state_sensor_is_flagged_at_every_change_from_its_usual_state():
    t = T0 + 300.0 * np.arange(600)  # every 5 minutes, ~2 days
    v = np.zeros(len(t))
    for at in (100, 250, 400, 550):
        v[at:at + 3] = 1.0
    scores = RobustZScoreDetector().score_series(v, t)
    assert all(scores[at] > 0.9 for at in (100, 250, 400, 550))


def test_state_survives_a_snapshot_and_reset_forgets_it():
    t, v = daily(30)
    det = RobustZScoreDetector()
    store_scores = stream(det, t[:-1], v[:-1])
    assert np.isfinite(store_scores[-1])
    state = {k: np.array(a, copy=True) for k, a in det.state_dict(1).items()}
    again = RobustZScoreDetector()
    again.load_state_dict(state)
    for name in state:
        np.testing.assert_array_equal(getattr(again, name)[:1], getattr(det, name)[:1])
    det.reset(0)
    assert not det.many[0] and (det.hour[0] == NO_HOUR).all()


def test_onset_traces_a_gradual_rise_back_to_where_it_left_its_level():
    rng = np.random.default_rng(5)
    ts = T0 + 60.0 * np.arange(63)
    ctx = 65 + 0.4 * rng.standard_normal(63)
    ctx[-10:] += np.linspace(1.5, 12, 10)  # ten readings already rising
    assert onset(ctx, ts, "up") == pytest.approx(ts[-10], abs=120)
    flat = 65 + 0.4 * rng.standard_normal(63)
    flat[-1] = 64.0
    assert onset(flat, ts, "up") is None  # a step: the episode starts at its own reading


def test_episode_start_keeps_its_reading_and_carries_the_onset():
    rng = np.random.default_rng(6)
    ts = T0 + 60.0 * np.arange(63)
    ctx = 65 + 0.4 * rng.standard_normal(63)
    ctx[-6:] += np.linspace(2, 10, 6)
    state = MetricDecision("gh/h")
    events = decide_value(state, ts=ts[-1] + 60, value=80.0, score=0.9, threshold=0.5, end_ratio=0.7,
                          end_after=3, context=ctx, unit="%", context_ts=ts)
    payload = events[0].payload()
    assert payload["start"] == round(ts[-1] + 60, 3)
    assert ts[-8] <= payload["onset"] <= ts[-5]
    assert "rising since" in events[0].summary
