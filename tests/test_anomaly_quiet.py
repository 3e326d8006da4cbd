"""recurring = "quiet": a metric whose changes repeat the same hours of one of the last 7 days (an
office's weekday routine) raises no alarm for them on the level-shift, window-shape and volatility
channels. The streaming detector does it per metric, the batch path (replay) with
Params.quieted(); the two agree, and the config names a bad setting."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from edged.anomaly.features import score_series
from edged.config import ConfigError, Settings, load_settings
from edged.detector import RobustZScoreDetector, make_detector
from edged.messages import RawMessage, Topics
from edged.pipeline import SensorPipeline
from edged.stats import Stats

DAY_S = 86400.0
MONDAY = 1_750_032_000.0  # 2025-06-16 00:00 UTC, a Monday


def office(days: int, seed: int, step_s: float = 300.0) -> tuple[np.ndarray, np.ndarray]:
    """An office's CO2 level: up from 08:00 to 18:00 on Monday to Friday, flat at night and at the
    weekend, noise sd 1 (the weekday cycle of tools/anomaly/false_alarms.py)."""
    rng = np.random.default_rng(seed)
    t = MONDAY + step_s * np.arange(int(days * DAY_S / step_s))
    hour = ((t - MONDAY) % DAY_S) / 3600.0
    weekday = ((t - MONDAY) // DAY_S) % 7 < 5
    busy = weekday & (hour >= 8) & (hour < 18)
    level = 400.0 + busy * 300.0 * np.sin(np.pi * np.clip((hour - 8) / 10, 0, 1))
    return level + rng.normal(0, 1.0, len(t)), t


def alarms(scores: np.ndarray) -> int:
    s = np.nan_to_num(scores) >= 0.5
    return int((s[1:] & ~s[:-1]).sum())


def test_quiet_silences_a_weekday_routine_that_the_default_alarms_on_every_monday():
    det = make_detector("model", 64, 30)
    p = det.p
    days = 16  # the second and third Mondays (day 7 and day 14) come after everything has learned
    quiet = 0
    for seed in range(6):
        v, t = office(days, seed)
        later = t >= MONDAY + 7 * DAY_S
        day = (t[later] - MONDAY) // DAY_S
        default = np.nan_to_num(score_series(v, p, det.model, t)[later]) >= 0.5
        # the default alarms on a routine it has not seen for 2 days: the office on Monday morning
        assert set(day[default]) == {7, 14}, (seed, set(day[default]))
        quiet += alarms(score_series(v, p.quieted(), det.model, t)[later])
    assert quiet <= 1


def test_quieted_params_add_the_quiet_channels_to_the_recurrence_test_once():
    p = make_detector("model", 64, 30).p
    q = p.quieted()
    assert q.recur_use == ("shift", "model", "volatility") and q.quieted() == q
    assert q.with_(recur_use=p.recur_use) == p  # nothing else changes


@pytest.fixture(scope="module")
def quiet_and_default_streams():
    """Slot 0 quiet, slot 1 default, the same office series fed row by row to one detector."""
    from test_anomaly_model import pipeline_windows

    det = make_detector("model", 64, 30)
    v, t = office(10, seed=3)
    det.set_quiet(0, True)
    window = pipeline_windows(v, t, det.window)
    out = np.zeros((len(v), 2))
    for i in range(len(v)):
        wv, wt = window(i)
        out[i] = det.score(np.array([0, 1]), np.vstack([wv, wv]), np.vstack([wt, wt]))
    return det, v, t, out


def test_the_streaming_detector_is_quiet_per_metric_and_equals_the_batch_path(quiet_and_default_streams):
    det, v, t, rows = quiet_and_default_streams
    quiet = score_series(v, det.p.quieted(), det.model, t)
    default = score_series(v, det.p, det.model, t)
    np.testing.assert_allclose(np.nan_to_num(rows[:, 0], nan=-1), np.nan_to_num(quiet, nan=-1), atol=1e-9)
    np.testing.assert_allclose(np.nan_to_num(rows[:, 1], nan=-1), np.nan_to_num(default, nan=-1), atol=1e-9)
    assert alarms(rows[:, 0]) < alarms(rows[:, 1])  # the setting changed what the first metric says


def test_quiet_is_a_setting_that_a_reset_a_snapshot_and_a_larger_capacity_keep():
    det = make_detector("model", 64, 30)
    det.set_quiet(3, True)
    det.reset(3)
    det.set_quiet(40, True)  # grows the arrays
    assert det.quiet[3] and det.quiet[40] and not det.quiet[:3].any()
    det.load_state_dict(make_detector("model", 64, 30).state_dict(8))  # learned state only
    assert det.quiet[3] and det.quiet[40]
    assert "quiet" not in det.state_dict(41)


def test_the_config_says_which_metrics_are_quiet_and_names_a_bad_value(tmp_path):
    s = Settings.model_validate({"anomaly": {"recurring": "alarm"},
                                 "sensors": {"override": [{"match": "office/*", "recurring": "quiet"},
                                                          {"match": "lab/*", "sensitivity": 2.0}]}})
    assert s.recurring_quiet("office/co2") and not s.recurring_quiet("lab/temp") and not s.recurring_quiet("x")
    assert Settings.model_validate({"anomaly": {"recurring": "quiet"}}).recurring_quiet("lab/temp")
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[anomaly]\nrecurring = "silent"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert "anomaly.recurring" in str(err.value) and "'alarm'" in str(err.value) and "'quiet'" in str(err.value)
    cfg.write_text('[anomaly]\ndetector = "zscore"\n[[sensors.override]]\nmatch = "office/*"\nrecurring = "quiet"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert "sensors.override[0].recurring" in str(err.value) and "detector" in str(err.value)
    cfg.write_text('[anomaly]\ndetector = "zscore"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={"EDGED_ANOMALY__RECURRING": "quiet"})
    assert "anomaly.recurring = 'quiet' needs anomaly.detector = 'model'" in str(err.value)
    cfg.write_text("")
    assert load_settings(cfg, environ={"EDGED_ANOMALY__RECURRING": "quiet"}).recurring_quiet("any/metric")


def test_the_pipeline_sets_each_new_metric_from_its_override_and_again_on_reload():
    settings = Settings.model_validate({"sensors": {"override": [{"match": "office/*", "recurring": "quiet"}]}})
    det = make_detector("model", 64, 30)
    pipe = SensorPipeline(settings, Topics("edged", "test"), det, lambda *a, **k: True, Stats())
    now = time.time()
    pipe.process([RawMessage(f"sensors/{m}", json.dumps({"value": 1.0, "ts": now}).encode(), now)
                  for m in ("office/co2", "lab/temp")])
    office_slot, lab_slot = pipe.store.index["office/co2"], pipe.store.index["lab/temp"]
    assert det.quiet[office_slot] and not det.quiet[lab_slot]
    pipe.apply_settings(Settings.model_validate({"anomaly": {"recurring": "quiet"}}))  # SIGHUP with a new file
    assert det.quiet[office_slot] and det.quiet[lab_slot]
    det.quiet[:] = False
    pipe.after_restore()  # a snapshot replaced the state: what derives from the settings is set again
    assert det.quiet[office_slot] and det.quiet[lab_slot]
    # the z-score detector has no such setting (a reload may ask for it before the restart that
    # switches the detector): the lane logs it once and scores on
    z = SensorPipeline(Settings(), Topics("edged", "test"), RobustZScoreDetector(), lambda *a, **k: True, Stats())
    z.settings = Settings.model_validate({"anomaly": {"recurring": "quiet"}})
    z.process([RawMessage(f"sensors/{m}", json.dumps({"value": 1.0, "ts": now}).encode(), now) for m in ("a/b", "c/d")])
    assert z._quiet_warned and len(z.store) == 2


def test_replay_takes_recurring_from_the_option_or_the_config(tmp_path, edged_cli):
    det = make_detector("model", 64, 30)
    v, t = office(9, seed=5)
    src = tmp_path / "office.csv"
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for ts, x in zip(t, v):
            w.writerow([int(ts), repr(float(x))])
    cfg = tmp_path / "e.toml"
    cfg.write_text('[anomaly]\ndetector = "model"\n')

    runs = iter(range(10))

    def replayed(*extra):
        out = tmp_path / f"out{next(runs)}.csv"
        proc = edged_cli("replay", str(src), "--out", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
        return np.array([float(r[2]) for r in list(csv.reader(open(out)))[1:]])

    quiet = np.nan_to_num(np.clip(score_series(v, det.p.quieted(), det.model, t), 0, 1))
    default = np.nan_to_num(np.clip(score_series(v, det.p, det.model, t), 0, 1))
    assert np.abs(quiet - default).max() > 0.1
    np.testing.assert_allclose(replayed("--config", str(cfg), "--recurring", "quiet"), quiet, atol=1e-6)
    np.testing.assert_allclose(replayed("--config", str(cfg)), default, atol=1e-6)
    cfg.write_text('[anomaly]\ndetector = "model"\nrecurring = "quiet"\n')
    np.testing.assert_allclose(replayed("--config", str(cfg), "-q"), quiet, atol=1e-6)
    proc = edged_cli("replay", str(src), "--config", str(cfg), "--recurring", "loud")
    assert proc.returncode == 2 and "--recurring 'loud'" in proc.stderr and "'quiet'" in proc.stderr


def test_over_mqtt_an_override_makes_one_of_two_identical_office_metrics_quiet(broker, daemon_factory, probe_factory):
    """A real daemon (the model detector, data clock) and Mosquitto: two metrics get the same 16
    days of an office's readings; the override sets ``office/quiet`` quiet. ``office/alarm`` raises
    an episode on the second and third Monday morning, ``office/quiet`` on neither."""
    from conftest import latest_stats, start_node
    from test_anomaly_e2e import _publish_rows

    d, probe = start_node(daemon_factory, probe_factory, broker.port, detector=None,
                          extra='[[sensors.override]]\nmatch = "office/quiet"\nrecurring = "quiet"\n')
    v, t = office(16, seed=0)
    names = ("alarm", "quiet")
    _publish_rows(broker.port, [(f"sensors/office/{n}", {"value": round(float(x), 2), "ts": float(ts)})
                                for x, ts in zip(v, t) for n in names])
    later = MONDAY + 7 * DAY_S
    probe.wait_topic(f"{d.root}/anomaly/office/alarm",  # the last event expected, then every reading scored
                     lambda m: m.json()["event"] == "start" and m.json()["start"] >= MONDAY + 14 * DAY_S, timeout=120)
    latest_stats(probe, d.root, lambda s: s.get("readings", 0) >= len(names) * len(v), timeout=120)

    def start_days(name):
        events = [m.json() for m in probe.on(f"{d.root}/anomaly/office/{name}")]
        return sorted({int((e["start"] - MONDAY) // DAY_S) for e in events if e["event"] == "start" and e["start"] >= later})

    assert start_days("alarm") == [7, 14]
    assert start_days("quiet") == []
