"""The season channel: the series against itself at the same time of day on the days before. It
catches a daily cycle that fails to come (lights or heating that never switch on), which no
window of the last hours shows: every reading stays inside the range, the window looks like the
nights before it. Batch (replay) and streaming paths agree; snapshots carry its ring."""

from __future__ import annotations

import numpy as np
import pytest

from edged.anomaly.features import calibrate, learning_mask, raw_channels, score_series
from edged.detector import make_detector
from edged.replay import score_rows

DAY_S = 86400.0
T0 = 1_750_032_000.0  # a midnight (UTC)


def lights(days: int, step_s: float = 300.0, off_day: int | None = None, seed: int = 0,
           jitter_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A greenhouse light level: 80 from 06:00 to 18:00, 20 at night, noise sd 1; on ``off_day``
    the lights never come on."""
    rng = np.random.default_rng(seed)
    n = int(days * DAY_S / step_s)
    t = T0 + step_s * np.arange(n) + (rng.uniform(-jitter_s, jitter_s, n) if jitter_s else 0.0)
    hour = ((t - T0) % DAY_S) / 3600.0
    on = (hour >= 6) & (hour < 18)
    if off_day is not None:
        on &= np.floor((t - T0) / DAY_S) != off_day
    return np.where(on, 80.0, 20.0) + rng.normal(0, 1, n), t


def test_a_daily_cycle_that_fails_to_come_is_caught_by_the_season_channel_alone():
    det = make_detector("model", 64, 30)
    p = det.p
    assert "season" in p.use
    v, t = lights(days=10, off_day=7)
    missed = (t >= T0 + 7 * DAY_S + 6 * 3600) & (t < T0 + 7 * DAY_S + 18 * 3600)
    first = int(np.flatnonzero(missed)[0])
    shipped = np.nan_to_num(score_series(v, p, det.model, t))
    without = np.nan_to_num(score_series(v, p.with_(use=tuple(c for c in p.use if c != "season")), det.model, t))
    assert first <= np.flatnonzero(shipped >= 0.5)[0] <= first + 3  # when the lights should have come on
    assert without[missed].max() < 0.5  # no other channel sees it: the values stay in their range
    # no alarm on the normal days before, nor on day 8, when the lights are back (one odd day is
    # not the new normal: the nearest of the last 7 days counts, not yesterday)
    day = np.floor((t - T0) / DAY_S)
    assert (shipped[(day >= 1) & (day < 7)] < 0.5).all()
    assert (shipped[day >= 8] < 0.5).all()
    from test_anomaly_model import pipeline_windows

    rows = make_detector("model", 64, 30)
    window = pipeline_windows(v, t, rows.window)
    for i in range(first + 4):  # the streaming detector says what led its score, and against what
        rows.score(np.array([0]), *window(i))
        if shipped[i] >= 0.5:
            break
    why = rows.explain(0)
    assert why["channel"] == "season" and abs(why["expected"] - 80.0) < 4, why
    ch = raw_channels(v, p, det.model, t)
    season = calibrate(ch, p.with_(use=("season",)), learning_mask(len(v), p, t), t)
    assert season[first] > 2 * calibrate(ch, p.with_(use=tuple(c for c in p.use if c != "season")),
                                         learning_mask(len(v), p, t), t)[first]


def test_season_wakes_after_two_earlier_days_and_learns_one_more():
    """The season channel says nothing until two earlier days have readings at that time (one day
    cannot tell today's anomaly from an echo of yesterday's), then its values fill its calibration
    for a day before its ratio counts (a channel that wakes on an empty calibration alarms at once)."""
    from edged.anomaly.features import season_channel

    det = make_detector("model", 64, 30)
    v, t = lights(days=4)
    s, live, _ = season_channel(v, t, det.p)
    day = (t - T0) / DAY_S
    assert (s[day < 2] == 0).all() and (s[day >= 2] > 0).mean() > 0.99
    assert not live[day < 3].any() and live[day >= 3].all()


@pytest.mark.parametrize("shift_s", [0.0, 3600.0])
def test_batch_equals_rows_with_dense_jittered_readings_and_a_gap(shift_s):
    """Readings every minute, jittered (a 5-minute block holds 4 to 6), a 5-hour gap on day 4 and
    the lights off on day 5: the streaming detector's season ring equals the batch path's sums."""
    from edged.anomaly.model_detector import ModelDetector

    shipped = make_detector("model", 64, 30)
    p = shipped.p.with_(season_shift_s=shift_s)
    v, t = lights(days=6, step_s=60.0, off_day=5, seed=3, jitter_s=20.0)
    t = np.sort(t)
    gap = (t > T0 + 4 * DAY_S + 3600) & (t < T0 + 4 * DAY_S + 6 * 3600)
    v, t = v[~gap], t[~gap]
    batch = ModelDetector(p, shipped.model).score_series(v, t)
    rows = score_rows(ModelDetector(p, shipped.model), t, v)
    np.testing.assert_allclose(np.nan_to_num(rows, nan=-1), np.nan_to_num(batch, nan=-1), rtol=0, atol=1e-9)
    assert np.array_equal(np.flatnonzero(batch >= 0.5), np.flatnonzero(rows >= 0.5))
    on_time = np.flatnonzero(t >= T0 + 5 * DAY_S + 6 * 3600)[0]
    # the missing lights, seen by both paths within the 20-minute span the channel averages (an
    # hour later when each earlier day is also compared an hour later)
    assert (batch[on_time + int(shift_s / 60):on_time + int(shift_s / 60) + 25] >= 0.5).any()


def test_a_snapshot_from_other_season_settings_restarts_only_the_season_channel():
    """Other season settings with the same ring length (10-minute blocks over 14 days, the
    recurrence span in as many blocks as the shipped one): the ring's
    block ids would never match, but its wake time and calibration would; the channel starts
    afresh (silent until its calibration is its own), the others keep theirs."""
    from edged.anomaly.model_detector import ModelDetector

    new = make_detector("model", 64, 30)
    other = new.p.with_(season_block_s=600.0, season_days=14, season_span_s=2400.0, recur_span_s=14400.0)
    a, b = ModelDetector(other, new.model), ModelDetector(new.p, new.model)
    assert a.season_len == b.season_len
    v, t = lights(days=4)
    from test_anomaly_model import pipeline_windows

    window = pipeline_windows(v, t, a.window)
    for i in range(len(v)):
        a.score(np.array([0]), *window(i))
    assert np.isfinite(a.swoke[0])
    b.load_state_dict({k: x.copy() for k, x in a.state_dict(1).items()})
    j = b.cal_channels.index("season")
    assert b.n[0] == len(v) and np.isinf(b.swoke[0]) and (b.sblk[0] == -1).all() and np.isinf(b.hist[0, j]).all()
    k = b.cal_channels.index("model")
    np.testing.assert_array_equal(b.hist[0, k], a.hist[0, a.cal_channels.index("model")])


def test_a_snapshot_carries_the_season_ring():
    from test_anomaly_model import pipeline_windows

    a, b = make_detector("model", 64, 30), make_detector("model", 64, 30)
    v, t = lights(days=9, off_day=8)
    window = pipeline_windows(v, t, a.window)
    slot = np.array([0])
    cut = int(7.5 * 288)
    for i in range(cut):
        a.score(slot, *window(i))
    b.load_state_dict({k: x.copy() for k, x in a.state_dict(1).items()})
    got = []
    for i in range(cut, len(v)):
        sa, sb = a.score(slot, *window(i)), b.score(slot, *window(i))
        np.testing.assert_array_equal(sa, sb)
        got.append(sa[0])
    assert max(got) >= 0.5  # the restored detector still catches the missing day


def test_season_shift_spares_a_daylight_saving_change_and_still_sees_a_missing_day():
    """A cycle driven by local time moves an hour in UTC at a daylight-saving change: compared
    only at the same UTC time, every earlier day disagrees at its edges and the channel alarms once.
    With season_shift_s = 3600 each earlier day is also compared an hour earlier and later: no
    alarm, and a day without the cycle is still caught, an hour later (docs/ANOMALY.md section 12)."""
    det = make_detector("model", 64, 30)
    shifted = det.p.with_(season_shift_s=3600.0)
    n = 12 * 288
    t = T0 + 300.0 * np.arange(n)
    local = t + np.where(t >= T0 + 8 * DAY_S, 3600.0, 0.0)  # from day 8 the clocks go an hour ahead
    hour = ((local - T0) % DAY_S) / 3600.0
    v = np.where((hour >= 6) & (hour < 18), 80.0, 20.0) + np.random.default_rng(2).normal(0, 1, n)
    day = np.floor((t - T0) / DAY_S)
    fired = {name: np.nan_to_num(score_series(v, p, det.model, t)) >= 0.5 for name, p in (("same time", det.p), ("shifted", shifted))}
    assert fired["same time"][day == 8].sum() >= 1 and not fired["same time"][(day >= 2) & (day < 8)].any()
    assert not fired["shifted"][day >= 2].any()
    off, _ = lights(days=10, off_day=7)
    caught = np.flatnonzero(np.nan_to_num(score_series(off, shifted, det.model, t[:len(off)])) >= 0.5)
    due = int(7 * 288 + 6 * 12)  # 06:00 on day 7
    assert len(caught) and due + 12 <= caught[0] <= due + 15


def test_a_level_change_that_recurs_at_this_time_every_day_does_not_raise_shift_alarms():
    """Recurrence: where the last 2 hours repeat the same 2 hours of one of the 7 earlier days
    within the noise, the shift channel says nothing (what happens every morning is not news); a
    change that never happened at this time still raises it. Batch and rows agree."""
    from edged.anomaly.features import calibrate, learning_mask, raw_channels, recur_offsets, recurs

    det = make_detector("model", 64, 30)
    p = det.p
    assert p.recur_noise > 0 and p.recur_use == ("shift",)
    n = 9 * 288
    t = T0 + 300.0 * np.arange(n)
    rng = np.random.default_rng(4)
    step = np.where(((t - T0) % DAY_S) >= 8 * 3600, 5.0, 0.0)  # a machine that starts at 08:00 every day
    v = 20 + step + rng.normal(0, 0.5, n)
    v[int(8.5 * 288):] += 12  # day 8, 12:00: a level it never had (the daily step is in the calibration)
    ch = raw_channels(v, p, det.model, t)
    learning = learning_mask(n, p, t)
    shift = calibrate(ch, p.with_(use=("shift",)), learning, t)
    unvetoed = calibrate(ch, p.with_(use=("shift",), recur_noise=0.0), learning, t)
    day = np.floor((t - T0) / DAY_S)
    morning = (((t - T0) % DAY_S) >= 8 * 3600) & (((t - T0) % DAY_S) < 8.5 * 3600) & (day >= 3) & (day < 8)

    def recurring(rows):
        return recurs(*ch["season_blocks"].lookup(recur_offsets(p), rows), ch["step_noise"][rows], p)

    rows = np.flatnonzero(morning)
    assert recurring(rows).mean() > 0.8  # the daily start repeats within the noise
    tested = rows[unvetoed[rows] >= p.recur_min * p.rho_half]  # the test is made where shift could matter
    assert len(tested) >= 5 and (shift[tested] == 0.0).mean() > 0.8
    assert np.array_equal(shift[rows][unvetoed[rows] < p.recur_min * p.rho_half],
                          unvetoed[rows][unvetoed[rows] < p.recur_min * p.rho_half])
    new = int(8.5 * 288)
    assert not recurring(np.arange(new, new + 6)).any() and shift[new:new + 6].max() > 0  # not recurring
    batch = det.score_series(v, t)
    rows = score_rows(make_detector("model", 64, 30), t, v)
    np.testing.assert_allclose(np.nan_to_num(rows, nan=-1), np.nan_to_num(batch, nan=-1), rtol=0, atol=1e-9)
    assert (batch[new:new + 6] >= 0.5).any()


def test_a_snapshot_with_a_shorter_season_ring_keeps_the_season_channel():
    """A snapshot from before the recurrence test (a ring of 2,020 places, 6 season settings saved)
    loads into the current ring (2,040): the blocks go to their places by id, the channel keeps its
    calibration and learning state, and the metric scores on as if it had never stopped."""
    from edged.anomaly.model_detector import ModelDetector
    from test_anomaly_model import pipeline_windows

    cur = make_detector("model", 64, 30)
    short = cur.p.with_(recur_span_s=1200.0, recur_noise=0.0)  # the ring of 7 days + 20 minutes
    a, b, ref = ModelDetector(short, cur.model), ModelDetector(cur.p.with_(recur_noise=0.0), cur.model), \
        ModelDetector(cur.p.with_(recur_noise=0.0), cur.model)
    assert a.season_len == 7 * 288 + 4 and b.season_len == 7 * 288 + 24
    v, t = lights(days=9, off_day=8)
    window = pipeline_windows(v, t, a.window)
    cut = int(7.5 * 288)
    for i in range(cut):
        a.score(np.array([0]), *window(i))
        ref.score(np.array([0]), *window(i))
    saved = {k: x.copy() for k, x in a.state_dict(1).items()}
    saved["season_geometry"] = saved["season_geometry"][:6]  # as written before the recurrence span was saved
    b.load_state_dict(saved)
    j = b.cal_channels.index("season")
    np.testing.assert_array_equal(b.hist[0, j], a.hist[0, j])
    assert b.swoke[0] == a.swoke[0]
    got = []
    for i in range(cut, len(v)):
        sb, sr = b.score(np.array([0]), *window(i)), ref.score(np.array([0]), *window(i))
        np.testing.assert_array_equal(sb, sr)
        got.append(sb[0])
    assert max(got) >= 0.5  # the missing day is still caught
