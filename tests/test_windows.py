"""windows.py: ring order, duplicates and late readings, history bucket stats, fixed memory."""

from __future__ import annotations

import numpy as np
import pytest

from edged.windows import APPENDED, DUPLICATE, HISTORY_TIERS, LATE, MetricStore

T0 = 1_750_032_000.0  # 2025-06-16T00:00:00Z, a day boundary in every tier


def add(store: MetricStore, slot: int, ts: float, value: float) -> int:
    return int(store.append(np.array([slot]), np.array([ts], dtype=float), np.array([value], dtype=float))[0])


def window_of(store: MetricStore, slot: int, length: int | None = None):
    vals, times = store.windows(np.array([slot]), length)
    return vals[0], times[0]


def test_ring_keeps_the_last_window_oldest_first():
    store = MetricStore(window=8, max_metrics=4)
    s = store.slot("a")
    for i in range(20):
        assert add(store, s, T0 + i, float(i)) == APPENDED
    vals, times = window_of(store, s)
    assert vals.tolist() == [float(i) for i in range(12, 20)]
    assert times.tolist() == [T0 + i for i in range(12, 20)]
    assert store.newest_ts(s) == T0 + 19
    assert store.last_values().tolist() == [19.0]


def test_short_history_is_nan_padded_on_the_left():
    store = MetricStore(window=8, max_metrics=4)
    s = store.slot("a")
    for i in range(3):
        add(store, s, T0 + i, 10.0 + i)
    vals, times = window_of(store, s)
    assert np.isnan(vals[:5]).all() and np.isnan(times[:5]).all()
    assert vals[5:].tolist() == [10.0, 11.0, 12.0]
    vals, _ = window_of(store, s, 2)
    assert vals.tolist() == [11.0, 12.0]


def test_metrics_are_independent_in_one_batch():
    store = MetricStore(window=4, max_metrics=4)
    a, b = store.slot("a"), store.slot("b")
    for i in range(6):
        store.append(np.array([a, b]), np.array([T0 + i, T0 + 10 * i]), np.array([i, -i], dtype=float))
    va, _ = window_of(store, a)
    vb, tb = window_of(store, b)
    assert va.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert vb.tolist() == [-2.0, -3.0, -4.0, -5.0] and tb[-1] == T0 + 50


def test_duplicate_timestamp_is_dropped_everywhere():
    store = MetricStore(window=8, max_metrics=4)
    s = store.slot("a")
    for i in range(5):
        add(store, s, T0 + i, 1.0)
    assert add(store, s, T0 + 4, 99.0) == DUPLICATE  # same time as the newest
    assert add(store, s, T0 + 2, 99.0) == DUPLICATE  # same time as one the ring still holds
    vals, _ = window_of(store, s)
    assert 99.0 not in vals and store.count[s] == 5
    st = store.stats(s, T0, T0 + 10)
    assert st.count == 5 and st.max == 1.0  # history did not count them either


def test_late_reading_updates_history_only():
    store = MetricStore(window=4, max_metrics=4)
    s = store.slot("a")
    for i in range(10):
        add(store, s, T0 + 10 * i, 5.0)
    assert add(store, s, T0 + 5, 42.0) == LATE  # older than the newest, not a time the ring holds
    assert add(store, s, T0, 7.0) == LATE  # its time was evicted from the ring: late, not duplicate
    vals, times = window_of(store, s)
    assert vals.tolist() == [5.0] * 4 and times.tolist() == [T0 + 60, T0 + 70, T0 + 80, T0 + 90]
    st = store.stats(s, T0, T0 + 100)
    assert st.count == 12 and st.max == 42.0 and st.min == 5.0
    assert st.last == 5.0 and st.last_ts == T0 + 90  # a late reading is never "the last one"


def test_append_after_late_is_ordered_again():
    store = MetricStore(window=4, max_metrics=4)
    s = store.slot("a")
    add(store, s, T0 + 10, 1.0)
    assert add(store, s, T0 + 5, 2.0) == LATE
    assert add(store, s, T0 + 11, 3.0) == APPENDED
    vals, times = window_of(store, s)
    assert vals[-2:].tolist() == [1.0, 3.0] and times[-2:].tolist() == [T0 + 10, T0 + 11]


def test_history_min_max_exact_after_downsampling_highest_today():
    """A day at one reading every 10 s: 'the highest value today' is exact, not a bucket average."""
    store = MetricStore(window=16, max_metrics=2)
    s = store.slot("greenhouse/temp")
    n = 8640
    ts = T0 + 10.0 * np.arange(n)
    values = 20 + 3 * np.sin(np.arange(n) / 500.0)
    values[4321] = 37.25  # one short peak mid-day
    values[777] = 3.5  # and one dip
    for t, v in zip(ts, values):
        add(store, s, float(t), float(v))
    today = store.stats(s, T0, T0 + 86400 - 1)
    assert today.count == n
    assert today.max == 37.25 and today.min == 3.5
    assert today.mean == pytest.approx(values.mean())
    assert today.last == values[-1] and today.last_ts == ts[-1]
    # The last hour comes from the 1-minute tier, exact as well.
    hour = store.stats(s, ts[-1] - 3600, ts[-1])
    tail = values[ts >= np.floor((ts[-1] - 3600) / 60) * 60]
    assert hour.count == tail.size and hour.max == tail.max() and hour.min == tail.min()
    assert hour.first_ts == np.floor((ts[-1] - 3600) / 60) * 60


def test_week_tier_keeps_extremes_of_old_days():
    store = MetricStore(window=8, max_metrics=1)
    s = store.slot("a")
    for day in range(5):
        for k in range(24):  # hourly readings
            value = 100.0 + day if k == 13 else float(day)
            add(store, s, T0 + day * 86400 + k * 3600, value)
    week = store.stats(s, T0, T0 + 5 * 86400)
    assert week.count == 120 and week.max == 104.0 and week.min == 0.0
    day1 = store.stats(s, T0 + 86400, T0 + 2 * 86400 - 1)  # older than the 24 h tier: the 3 h tier
    assert day1.max == 101.0 and day1.min == 1.0 and day1.count == 24


def test_history_forgets_beyond_its_horizon():
    store = MetricStore(window=8, max_metrics=1)
    s = store.slot("a")
    add(store, s, T0, 1000.0)
    week_s = HISTORY_TIERS[-1][0] * HISTORY_TIERS[-1][1]
    add(store, s, T0 + week_s + 86400, 1.0)
    st = store.stats(s, T0, T0 + week_s + 86400)
    assert st.max == 1.0 and st.count == 1


def test_no_stats_without_readings():
    store = MetricStore(window=8, max_metrics=2)
    s = store.slot("a")
    assert store.stats(s, T0, T0 + 60) is None


def test_fixed_memory_per_metric():
    store = MetricStore(window=64, max_metrics=100)
    slots = np.array([store.slot(f"m{i}") for i in range(100)])
    before = store.memory_bytes()
    for k in range(300):
        store.append(slots, np.full(100, T0 + 7.0 * k), np.random.default_rng(k).normal(size=100))
    assert store.memory_bytes() == before  # readings never grow memory
    per_metric = before / store.capacity
    tier_cells = sum(n for _, n in HISTORY_TIERS)
    assert per_metric <= 64 * 16 + 8 + tier_cells * 7 * 8
    assert store.capacity == 100


def test_max_metrics_refuses_new_names_never_evicts():
    store = MetricStore(window=8, max_metrics=3)
    assert [store.slot(n) for n in "abc"] == [0, 1, 2]
    assert store.slot("d") is None
    assert store.slot("a") == 0 and store.names == ["a", "b", "c"]
    assert store.slot("zz", create=False) is None


def test_capacity_grows_past_the_first_block():
    store = MetricStore(window=8, max_metrics=1000)
    slots = [store.slot(f"m{i}") for i in range(200)]
    assert slots == list(range(200)) and store.capacity >= 200
    add(store, 150, T0, 3.0)
    assert store.last_values()[150] == 3.0


def test_reset_forgets_the_ring_and_optionally_history():
    store = MetricStore(window=8, max_metrics=2)
    s = store.slot("a")
    for i in range(5):
        add(store, s, T0 + i, 9.0)
    store.reset(s)
    assert store.count[s] == 0 and np.isnan(window_of(store, s)[0]).all()
    assert add(store, s, T0 + 1, 1.0) == APPENDED  # times are forgotten too
    store.reset(s, history=True)
    add(store, s, T0 + 100, 2.0)
    assert store.stats(s, T0, T0 + 200).count == 1


def test_expected_interval_is_the_median_gap():
    store = MetricStore(window=16, max_metrics=2)
    a, b = store.slot("a"), store.slot("b")
    for i, gap in enumerate([10, 10, 10, 60, 10, 10]):
        add(store, a, T0 + sum([10, 10, 10, 60, 10, 10][:i]) + gap, 1.0)
    add(store, b, T0, 1.0)
    add(store, b, T0 + 5, 1.0)
    out = store.expected_intervals()
    assert out[0] == 10.0
    assert np.isnan(out[1])  # too few readings to learn
