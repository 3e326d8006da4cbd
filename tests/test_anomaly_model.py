"""The ONNX anomaly detector: manifest checks, batch path == streaming path, causality,
int8 vs float agreement, and `edged replay` with it."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from edged.detector import make_detector
from edged.manifest import ModelError, verify
from edged.replay import score_rows

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "edged-anomaly-mlp"


def series(n: int = 1200, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = 1_700_000_000 + 300.0 * np.arange(n)
    v = 50 + 5 * np.sin(np.arange(n) * 2 * np.pi / 288) + rng.normal(0, 0.5, n)
    v[700] += 40  # spike
    v[900:] += 12  # level shift
    t[500] = t[499]  # a duplicate timestamp: not appended, keeps the previous score
    return v, t


def pipeline_windows(values: np.ndarray, times: np.ndarray, w: int):
    """window(i): the (values, times) window of w the pipeline hands the detector with reading i
    newest; NaN before the first reading."""
    pad_v = np.concatenate([np.full(w, np.nan), values])
    pad_t = np.concatenate([np.full(w, np.nan), times])

    def window(i):
        return pad_v[None, i + 1:i + 1 + w], pad_t[None, i + 1:i + 1 + w]

    return window


def test_committed_model_matches_its_manifest():
    manifest = verify(MODEL_DIR)
    assert {f.path for f in manifest.files} >= {"model.int8.onnx", "model.onnx"}


def test_tampered_model_is_refused(tmp_path, edged_cli):
    bad = tmp_path / "model"
    shutil.copytree(MODEL_DIR, bad)
    data = bytearray((bad / "model.int8.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="model.int8.onnx"):
        make_detector("model", 64, 30, str(bad))
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("timestamp,value\n2024-01-01 00:00:00,1\n")
    cfg = tmp_path / "e.toml"
    cfg.write_text(f'[anomaly]\ndetector = "model"\nmodel_dir = "{bad}"\n')
    proc = edged_cli("replay", str(csv_in), "--config", str(cfg))
    assert proc.returncode == 1 and "sha256 of model.int8.onnx" in proc.stderr and "Traceback" not in proc.stderr


def test_batch_path_equals_row_at_a_time_path():
    v, t = series()
    batch = make_detector("model", 64, 30).score_series(v, t)
    rows = score_rows(make_detector("model", 64, 30), t, v)
    assert np.allclose(np.nan_to_num(batch, nan=-1), np.nan_to_num(rows, nan=-1), atol=1e-9)
    assert np.array_equal(np.flatnonzero(batch >= 0.5), np.flatnonzero(rows >= 0.5))
    assert (batch[695:720] >= 0.5).any()  # the spike is detected


def test_causal_appending_rows_never_changes_earlier_scores():
    v, t = series()
    full = make_detector("model", 64, 30).score_series(v, t)
    part = make_detector("model", 64, 30).score_series(v[:800], t[:800])
    assert np.allclose(np.nan_to_num(full[:800], nan=-1), np.nan_to_num(part, nan=-1), atol=1e-12)


def test_int8_agrees_with_float():
    from edged.anomaly.model_detector import load_detector

    v, t = series(seed=9)
    q = load_detector(str(MODEL_DIR), quantized=True).score_series(v, t)
    f = load_detector(str(MODEL_DIR), quantized=False).score_series(v, t)
    # Stated tolerance: scores within 0.02 (measured 0.003 here), and the same detections.
    assert np.nanmax(np.abs(q - f)) < 0.02
    assert np.array_equal(np.flatnonzero(q >= 0.5), np.flatnonzero(f >= 0.5))


def test_replay_with_the_model_writes_nab_results(tmp_path, edged_cli):
    v, t = series()
    v, t = v[:600], t[:600]
    src = tmp_path / "in" / "sub" / "s.csv"
    src.parent.mkdir(parents=True)
    with open(src, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for ts, x in zip(t, v):
            w.writerow([np.datetime64(int(ts), "s").astype(str).replace("T", " "), round(float(x), 4)])
    cfg = tmp_path / "e.toml"
    cfg.write_text('[anomaly]\ndetector = "model"\n')
    proc = edged_cli("replay", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(open(tmp_path / "out" / "sub" / "s.csv")))
    assert rows[0] == ["timestamp", "value", "anomaly_score"] and len(rows) == 601
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows[1:])


def test_replay_reads_iso_and_epoch_stamps_alike_and_names_a_bad_line(tmp_path):
    """Naive ISO stamps take a vectorised parse; any other form goes row by row: same times."""
    from edged.replay import ReplayError, read_series

    t = 1_700_000_000.0 + 300.0 * np.arange(50)
    iso = tmp_path / "iso.csv"
    epoch = tmp_path / "epoch.csv"
    iso.write_text("timestamp,value\n" + "".join(
        f"{np.datetime64(int(x), 's').astype(str).replace('T', ' ')},{i}\n" for i, x in enumerate(t)))
    epoch.write_text("timestamp,value\n" + "".join(f"{int(x)},{i}\n" for i, x in enumerate(t)))
    a, b = read_series(iso), read_series(epoch)
    np.testing.assert_array_equal(a.times, t)
    np.testing.assert_array_equal(b.times, t)
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01T00:05:00+00:00,2\n")
    np.testing.assert_array_equal(read_series(mixed).times, [1704067200.0, 1704067500.0])
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2024-01-01 00:00:00,1\n2024-13-45 00:05:00,2\n")
    with pytest.raises(ReplayError, match=r"bad.csv:3: timestamp '2024-13-45 00:05:00' is neither"):
        read_series(bad)
    bad.write_text("timestamp,value\n0000-01-01 00:00:00,1\n")  # numpy would take year 0, datetime does not
    with pytest.raises(ReplayError, match=r"bad.csv:2: timestamp '0000-01-01 00:00:00' is neither"):
        read_series(bad)


def test_models_list_and_verify_see_the_anomaly_models(tmp_path, edged_cli):
    bad = tmp_path / "other-model"
    shutil.copytree(MODEL_DIR, bad)
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "state"}"\n[anomaly]\nmodel_dir = "{bad}"\n')
    import json

    rows = json.loads(edged_cli("models", "list", "--json", "--config", str(cfg)).stdout)
    anomaly = [r for r in rows if r.get("kind") == "anomaly"]
    assert [r["in_use"] for r in anomaly] == [False, True] and all(r["installed"] for r in anomaly)
    assert anomaly[0]["name"] == "edged-anomaly-mlp" and anomaly[1]["path"] == str(bad)
    ok = edged_cli("models", "verify", "--config", str(cfg))
    assert ok.returncode == 0 and ok.stdout.count(": ok") == 2, ok.stdout + ok.stderr
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    failed = edged_cli("models", "verify", "--config", str(cfg))
    assert failed.returncode == 1 and "sha256 of model.onnx" in failed.stderr and "edged-anomaly-mlp: ok" in failed.stdout


def test_batch_equals_rows_with_jitter_gaps_and_a_flatline():
    """The refractory period is counted in time (refractory x the median sampling interval), the
    learning period lasts a day of data time, and a flatline feeds the stuck channel: the batch
    path still equals the row path."""
    v, t = series(n=1500, seed=5)
    rng = np.random.default_rng(1)
    t = t + np.cumsum(rng.uniform(-20, 20, len(t)))
    t[1100:] += 6 * 3600.0  # a gap
    v[1200:1260] = v[1200]  # stuck
    det = make_detector("model", 64, 30)
    assert det.p.refractory_unit == "time" and "stuck" in det.p.use
    batch = det.score_series(v, t)
    rows = score_rows(make_detector("model", 64, 30), t, v)
    assert np.allclose(np.nan_to_num(batch, nan=-1), np.nan_to_num(rows, nan=-1), atol=1e-9)
    assert np.array_equal(np.flatnonzero(batch >= 0.5), np.flatnonzero(rows >= 0.5))
    assert np.isnan(batch[:288]).all() and not np.isnan(batch[300:]).any()  # a day of learning at 5 min
    assert (batch[1200:1215] >= 0.5).any()  # the flatline


def test_model_detector_state_round_trips_through_state_dict():
    """What the snapshot saves is enough to go on scoring exactly as if never stopped."""
    from edged.detector import make_detector

    rng = np.random.default_rng(3)
    n = 400
    values = 20 + np.sin(np.arange(n) / 20) + rng.normal(0, 0.2, n)
    times = 1_750_000_000.0 + 300.0 * np.arange(n)  # 33 h: past learning (150 readings and a day)
    a, b = make_detector("model", 64, 30), make_detector("model", 64, 30)
    w = a.window
    window = pipeline_windows(values, times, w)
    slots = np.array([0])

    for i in range(300):
        a.score(slots, *window(i))
    b.load_state_dict({k: v.copy() for k, v in a.state_dict(1).items()})
    scored = 0
    for i in range(300, n):
        sa, sb = a.score(slots, *window(i)), b.score(slots, *window(i))
        np.testing.assert_array_equal(sa, sb)
        scored += bool(np.isfinite(sa).all())
    assert scored > 0  # past learning: real scores were compared, not only NaNs


def test_decayed_peak_is_the_decayed_max_of_earlier_values():
    from edged.anomaly.features import decayed_peak

    rng = np.random.default_rng(4)
    c = np.abs(rng.normal(size=500)) * (rng.uniform(size=500) > 0.3)
    half = 40.0
    got = decayed_peak(c, half)
    want = np.zeros(500)
    for t in range(1, 500):
        want[t] = max([c[s] * 2 ** (-(t - 1 - s) / half) for s in range(t)] + [0.0])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_long_memory_thins_false_alarms_on_clean_daily_cycles():
    """A clean daily cycle with noise has no anomaly: after the first days its false alarms must
    thin out (the long-memory calibration), not recur at a constant rate."""
    from edged.anomaly.features import score_series

    det = make_detector("model", 64, 30)
    assert det.p.long_gamma > 0 and "model" in det.p.long_use
    without = det.p.with_(long_gamma=0.0)
    days, n_series = 10, 30
    t = 1_750_000_000.0 + 300.0 * np.arange(days * 288)
    late = {"shipped": 0, "without": 0}
    for seed in range(n_series):
        rng = np.random.default_rng(seed)
        v = 20 + 3 * np.sin(2 * np.pi * t / 86400 + rng.uniform(0, 6.3)) + rng.normal(0, 0.3, len(t))
        for name, p in (("shipped", det.p), ("without", without)):
            s = np.nan_to_num(score_series(v, p, det.model, t))
            late[name] += int(np.sum(s[4 * 288:] >= 0.5))  # days 5-10
    assert late["without"] >= 5  # the effect being guarded: without it, alarms recur
    assert late["shipped"] * 2 <= late["without"], late


@pytest.mark.parametrize("channel", ["model", "shift", "volatility"])
def test_long_memory_remembers_a_channel_peak_after_its_calibration_ring_forgot_it(channel):
    """The shipped long memory covers model, shift and volatility (docs/ANOMALY.md section 14): a
    value half as high as one seen 1,600 readings earlier, beyond the 1,000-block calibration ring,
    stays below the alarm level; with the long memory on model alone, shift and volatility alarm."""
    from edged.anomaly.features import calibrate

    p = make_detector("model", 64, 30).p
    assert p.long_gamma > 0 and {"model", "shift", "volatility"} <= set(p.long_use)
    n, first, later = 2400, 400, 2000
    t = 1_750_000_000.0 + 300.0 * np.arange(n)  # one reading per calibration block
    c = np.abs(np.random.default_rng(5).normal(0, 0.1, n))
    c[first], c[later] = 1.0, 0.5
    learning = np.arange(n) < 288
    shipped = calibrate({channel: c}, p.with_(use=(channel,)), learning, t)
    model_only = calibrate({channel: c}, p.with_(use=(channel,), long_gamma=0.7, long_use=("model",)), learning, t)
    assert shipped[first] > p.rho_half  # the first one alarms
    assert shipped[later] < p.rho_half
    if channel != "model":
        assert model_only[later] > p.rho_half


def test_snapshot_from_before_time_blocks_and_long_memory_still_loads():
    """A snapshot written before the calibration blocks, the long-memory peak and the norm rings
    existed keeps the metric's learning, calibration history and embeddings."""
    a, b = make_detector("model", 64, 30), make_detector("model", 64, 30)
    w = a.window
    rng = np.random.default_rng(2)
    n = 230
    window = pipeline_windows(20 + rng.normal(size=n), 1_750_000_000.0 + 300.0 * np.arange(n), w)
    slot = np.array([0])

    for i in range(200):
        a.score(slot, *window(i))
    old = {k: x.copy() for k, x in a.state_dict(1).items() if k not in a._ADDED}
    old["memb"][np.isinf(a.mnorm[:1])] = np.nan  # the old rings marked an empty place with NaN
    old["hist"][0, :, 199] = a.gmax[0]  # and wrote each reading into the calibration ring at once
    assert np.isnan(old["memb"]).any() and not np.isnan(old["memb"]).all()
    b.load_state_dict(old)
    assert b.n[0] == 200 and b.lpeak[0].sum() == 0.0
    for i in range(200, n):
        np.testing.assert_array_equal(a.score(slot, *window(i)), b.score(slot, *window(i)))  # learning: NaN
    np.testing.assert_array_equal(a.hist[0], b.hist[0])  # the history goes on where it was
    np.testing.assert_array_equal(a.memb[0], b.memb[0])
    np.testing.assert_array_equal(a.mnorm[0], b.mnorm[0])
    np.testing.assert_array_equal(a.qstat[0], b.qstat[0])
    np.testing.assert_array_equal(a.lpeak[0], b.lpeak[0])  # learning readings stay out of the peak
    assert a.group[0] == b.group[0] == n - 1


def _ar1(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(0, 1, n)
    v = np.empty(n)
    v[0] = e[0]
    for i in range(1, n):
        v[i] = 0.9 * v[i - 1] + e[i]
    return 50 + v


def test_dense_readings_batch_equals_rows_with_time_blocks():
    """Readings every 30 s (10 per 5-minute calibration block), jittered, with a gap: the
    streaming detector's block bookkeeping equals the batch path's."""
    n = 5200
    rng = np.random.default_rng(8)
    t = 1_750_000_000.0 + 30.0 * np.arange(n) + rng.uniform(-5, 5, n)
    t[4000:] += 2 * 3600.0
    v = _ar1(n, 8)
    v[4600] += 60  # a spike after learning (a day = 2,880 readings)
    det = make_detector("model", 64, 30)
    assert det.p.calib_block_s == 300.0
    batch = det.score_series(v, t)
    rows = score_rows(make_detector("model", 64, 30), t, v)
    assert np.allclose(np.nan_to_num(batch, nan=-1), np.nan_to_num(rows, nan=-1), atol=1e-9)
    assert np.array_equal(np.flatnonzero(batch >= 0.5), np.flatnonzero(rows >= 0.5))
    assert batch[4600] >= 0.5


def test_false_alarms_per_day_do_not_grow_with_the_sampling_rate():
    """AR(1) noise read every 10 s: calibrating on 5-minute block maxima keeps the alarm rate per
    day near that of a 5-minute series instead of 30x it."""
    from edged.anomaly.features import score_series

    det = make_detector("model", 64, 30)
    per_block = det.p
    per_reading = det.p.with_(calib_block_s=0.0)
    n = 3 * 8640  # 3 days at 10 s
    t = 1_750_000_000.0 + 10.0 * np.arange(n)
    alarms = {"blocks": 0, "readings": 0}
    for seed in range(2):
        v = _ar1(n, seed)
        for name, p in (("blocks", per_block), ("readings", per_reading)):
            alarms[name] += int(np.sum(np.nan_to_num(score_series(v, p, det.model, t)) >= 0.5))
    assert alarms["readings"] >= 10, alarms  # the problem: several alarms per metric-day
    assert alarms["blocks"] * 4 <= alarms["readings"], alarms


def test_noise_aware_excursion_spares_day_two_of_a_noisy_cycle():
    """Day 2 of a noisy daily cycle lands just past day 1's extremes in many series: a new extreme
    by less than ~1.65 noise sd is not news (excursion_noise), a real spike still is."""
    from edged.anomaly.features import score_series

    det = make_detector("model", 64, 30)
    assert det.p.excursion_noise > 0
    fixed_scale = det.p.with_(excursion_noise=0.0)
    t = 1_750_000_000.0 + 300.0 * np.arange(2 * 288)
    day2 = {"shipped": 0, "fixed_scale": 0}
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        v = 20 + 3 * np.sin(2 * np.pi * t / 86400 + rng.uniform(0, 6.3)) + rng.normal(0, 0.9, len(t))
        for name, p in (("shipped", det.p), ("fixed_scale", fixed_scale)):
            day2[name] += int(np.sum(np.nan_to_num(score_series(v, p, det.model, t)) >= 0.5))
    assert day2["fixed_scale"] >= 5, day2
    assert day2["shipped"] * 3 <= day2["fixed_scale"], day2
    v[450] += 12  # ~13 noise sd: still an anomaly
    assert np.nan_to_num(score_series(v, det.p, det.model, t))[450] >= 0.5


def test_a_round_in_any_slot_order_scores_as_each_metric_alone():
    """The detector scores a round of metrics per call; whether their slots come in order, shuffled
    (a block of consecutive slots: the ring view path) or with holes (the gathered-copy path), each
    metric's scores are those it gets alone."""
    rng = np.random.default_rng(11)
    n, k = 420, 5
    t = 1_750_000_000.0 + 300.0 * np.arange(n)
    v = 20 + np.sin(np.arange(n)[:, None] / (15 + np.arange(k))) + rng.normal(0, 0.2, (n, k))
    v[380, 2] += 9
    together, alone = make_detector("model", 64, 30), [make_detector("model", 64, 30) for _ in range(k)]
    w = together.window
    pad_v = np.vstack([np.full((w, k), np.nan), v])
    pad_t = np.concatenate([np.full(w, np.nan), t])
    got, want = np.zeros((n, k)), np.zeros((n, k))
    for i in range(n):
        wins_v, wins_t = pad_v[i + 1:i + 1 + w].T, np.tile(pad_t[i + 1:i + 1 + w], (k, 1))
        order = [np.arange(k), rng.permutation(k), np.array([4, 0, 2])][i % 3]  # the last: 1 and 3 go first
        if i % 3 == 2:
            rest = np.array([1, 3])
            got[i, rest] = together.score(rest, wins_v[rest], wins_t[rest])
        got[i, order] = together.score(order, wins_v[order], wins_t[order])
        for j in range(k):
            want[i, j] = alone[j].score(np.array([0]), wins_v[j:j + 1], wins_t[j:j + 1])[0]
    np.testing.assert_allclose(np.nan_to_num(got, nan=-1), np.nan_to_num(want, nan=-1), rtol=0, atol=1e-12)
    assert np.isfinite(want[300:]).all() and want[380, 2] >= 0.5


def test_volatility_channel_flags_a_series_that_starts_to_move_more_inside_its_range():
    """A metric that begins to oscillate within its usual range (no new extreme, no lasting level
    change) is what the denoising encoder is trained to ignore; the volatility channel's ratio
    passes the alarm level within a few readings and leads the other channels there, and the
    streaming path scores the series as the batch path does."""
    from edged.anomaly.features import calibrate, learning_mask, raw_channels, score_series

    det = make_detector("model", 64, 30)
    p = det.p
    assert "volatility" in p.use
    n, onset = 2400, 2000
    t = 1_750_000_000.0 + 300.0 * np.arange(n)
    rng = np.random.default_rng(11)
    v = 30 + rng.normal(0, 0.2, n)
    v[[10, 30]] += [8.0, -8.0]  # the range is set early, while the detector learns
    v[onset:] += np.where(np.arange(n - onset) % 2, 2.0, -2.0)  # a fast oscillation inside that range
    assert v[onset:].max() < v[:onset].max() and v[onset:].min() > v[:onset].min()
    ch = raw_channels(v, p, det.model, t)
    learning = learning_mask(n, p, t)
    vol = calibrate(ch, p.with_(use=("volatility",)), learning, t)
    others = calibrate(ch, p.with_(use=tuple(c for c in p.use if c != "volatility")), learning, t)
    assert vol[onset - 48:onset].max() < p.rho_half  # quiet before
    assert (vol[onset:onset + 10] > p.rho_half).sum() >= 5
    assert (vol[onset + 4:onset + 10] > 1.5 * others[onset + 4:onset + 10]).all()  # it leads
    batch = score_series(v, p, det.model, t)
    rows = score_rows(make_detector("model", 64, 30), t, v)
    np.testing.assert_allclose(np.nan_to_num(rows, nan=-1), np.nan_to_num(batch, nan=-1), atol=1e-9)
    assert (rows[onset:onset + 10] >= 0.5).any()


@pytest.mark.parametrize("old_use, names_saved", [
    (("excursion", "model", "shift", "stuck"), False),  # a snapshot from before channels were named
    (("excursion", "shift", "model", "stuck"), True),  # another order: the columns go by name
    (("excursion", "model", "shift", "stuck", "volatility"), True),  # from before the season channel
])
def test_snapshot_from_before_an_added_channel_keeps_the_other_channels(old_use, names_saved):
    """A snapshot saved without the volatility or season channel loads: the other channels keep
    their calibration, and a new channel stays silent while it has no calibration history of its
    own, so the metric scores exactly as the old detector would."""
    from edged.anomaly.model_detector import ModelDetector

    new = make_detector("model", 64, 30)
    a, b = ModelDetector(new.p.with_(use=old_use), new.model), ModelDetector(new.p, new.model)
    added = [c for c in b.cal_channels if c not in a.cal_channels]
    assert set(added) == {"volatility", "season"} - set(old_use)
    rng = np.random.default_rng(5)
    n = 700
    v = 20 + np.sin(np.arange(n) / 30) + rng.normal(0, 0.3, n)
    v[600:] += np.where(np.arange(100) % 2, 1.5, -1.5)  # would wake the volatility channel
    window = pipeline_windows(v, 1_750_000_000.0 + 300.0 * np.arange(n), b.window)
    slot = np.array([0])
    for i in range(400):
        a.score(slot, *window(i))
    saved = {k: x.copy() for k, x in a.state_dict(1).items() if names_saved or k != "channels"}
    b.load_state_dict(saved)
    assert b.n[0] == 400
    for c in added:
        assert np.isinf(b.hist[0, b.cal_channels.index(c)]).all()
    for c in a.cal_channels:
        np.testing.assert_array_equal(b.hist[0, b.cal_channels.index(c)], a.hist[0, a.cal_channels.index(c)])
    scored = 0
    for i in range(400, n):
        sa, sb = a.score(slot, *window(i)), b.score(slot, *window(i))
        np.testing.assert_array_equal(sa, sb)
        scored += bool(np.isfinite(sa).all())
    assert scored > 250


def test_a_snapshot_whose_channels_cannot_be_read_is_learned_afresh():
    det = make_detector("model", 64, 30)
    window = pipeline_windows(20 + np.random.default_rng(1).normal(size=300), 1_750_000_000.0 + 300.0 * np.arange(300),
                              det.window)
    for i in range(300):
        det.score(np.array([0]), *window(i))
    state = {k: x.copy() for k, x in det.state_dict(1).items()}
    state["channels"] = np.array([99] * len(det.cal_channels))  # a channel this build does not know
    fresh = make_detector("model", 64, 30)
    fresh.load_state_dict(state)
    assert fresh.n[0] == 0
    state["channels"] = np.array(state["channels"][:1]) * 0  # fewer names than columns
    fresh.load_state_dict(state)
    assert fresh.n[0] == 0

def test_calibration_blocks_are_counted_so_jitter_does_not_merge_a_5_minute_series():
    """Blocks hold calib_block_s / the median interval readings (at least 1) and span less than
    calib_block_s: a 5-minute series jittered by up to 2 minutes keeps one reading per block (cut at
    fixed 5-minute times, 0, 1 or 2 of its readings fell in a block, and NAB lost 3.5 points), and a
    30-second series has blocks of 10 readings, cut short at a gap."""
    from edged.anomaly.features import calibration_groups

    p = make_detector("model", 64, 30).p
    rng = np.random.default_rng(3)
    n = 2000
    five = 1_750_000_000.0 + 300.0 * np.arange(n) + rng.uniform(-120, 120, n)
    assert np.array_equal(calibration_groups(n, p, five), np.arange(n))
    thirty = 1_750_000_000.0 + 30.0 * np.arange(n) + rng.uniform(-5, 5, n)
    thirty[1234:] += 3600.0  # an hour without readings
    g = calibration_groups(n, p, thirty)
    sizes = np.bincount(g)
    first = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    spans = np.maximum.reduceat(thirty, first) - thirty[first]
    assert sizes.max() <= 11 and np.median(sizes) == 10 and (spans < p.calib_block_s).all()  # 300 s / ~30 s
    assert 1234 in first and sizes[g[1233]] < 10  # the gap cuts the block before it short


def test_a_jittered_5_minute_series_streams_as_it_replays_and_a_snapshot_with_absolute_blocks_loads():
    from edged.replay import score_rows

    rng = np.random.default_rng(4)
    n = 900
    t = 1_750_000_000.0 + 300.0 * np.arange(n) + rng.uniform(-120, 120, n)
    v = _ar1(n, 4)
    v[700] += 40
    batch = make_detector("model", 64, 30).score_series(v, t)
    rows = score_rows(make_detector("model", 64, 30), t, v)
    assert np.allclose(np.nan_to_num(batch, nan=-1), np.nan_to_num(rows, nan=-1), atol=1e-9) and batch[700] >= 0.5

    a, b = make_detector("model", 64, 30), make_detector("model", 64, 30)
    window = pipeline_windows(v, t, a.window)
    slot = np.array([0])
    for i in range(600):
        a.score(slot, *window(i))
    old = {k: x.copy() for k, x in a.state_dict(1).items() if k not in ("bfirst", "bcount", "bsize")}
    old["block"] = np.array([7], dtype=np.int64)  # written when blocks were cut at fixed times
    b.load_state_dict(old)
    assert b.n[0] == 600 and b.group[0] == a.group[0]  # not discarded: it learned
    for i in range(600, n):  # every reading was a block of its own either way: the same scores
        np.testing.assert_array_equal(a.score(slot, *window(i)), b.score(slot, *window(i)))


def test_streaming_calibration_blocks_equal_the_batch_groups_on_awkward_timestamps():
    """The streaming detector's block bookkeeping (per metric: the block's first time, count and
    size) against features.calibration_groups, several metrics per call, on sequences that move
    k = round(300 s / median interval) or cut blocks: jittered 30 s, gaps, a rate that changes,
    intervals at the rounding edges (120 s: k = 2.5, 200 s: 1.5), bursts."""
    from edged.anomaly.features import Params, calibration_groups
    from edged.anomaly.model_detector import ModelDetector

    rng = np.random.default_rng(11)
    n = 700
    start = 1_750_000_000.0
    steps = {
        "jittered_30s": 30.0 + rng.uniform(-5, 5, n),
        "gaps": np.where(rng.random(n) < 0.02, 900.0, 30.0),
        "slow_then_fast": np.r_[np.full(n // 2, 300.0), np.full(n - n // 2, 10.0)],
        "fast_then_slow": np.r_[np.full(n // 2, 10.0), np.full(n - n // 2, 300.0)],
        "at_2.5": np.full(n, 120.0),
        "at_1.5": np.full(n, 200.0),
        "bursts": np.where(np.arange(n) % 50 < 40, 2.0, 600.0),
    }
    p = Params().with_(use=("excursion", "shift"), calib_block_s=300.0)
    det = ModelDetector(p)
    times = {k: start + np.cumsum(s) for k, s in steps.items()}
    slots = np.arange(len(steps)) * 3  # sparse: the arrays grow
    T = np.vstack(list(times.values()))
    X = rng.normal(size=T.shape)
    w = det.window
    groups = np.zeros(T.shape, dtype=np.int64)
    for i in range(n):
        lo = max(0, i + 1 - w)
        pad = w - (i + 1 - lo)
        wv = np.hstack([np.full((len(slots), pad), np.nan), X[:, lo:i + 1]])
        wt = np.hstack([np.full((len(slots), pad), np.nan), T[:, lo:i + 1]])
        order = rng.permutation(len(slots)) if i % 3 else np.arange(len(slots))
        chosen = order[: 1 + i % len(slots)] if i % 5 == 0 else order  # now and then only some metrics
        det.score(slots[chosen], wv[chosen], wt[chosen])
        rest = np.setdiff1d(np.arange(len(slots)), chosen)
        if len(rest):
            det.score(slots[rest], wv[rest], wt[rest])
        groups[:, i] = det.group[slots]
    for j, (name, t) in enumerate(times.items()):
        np.testing.assert_array_equal(groups[j], calibration_groups(n, p, t), err_msg=name)
    sizes = np.bincount(calibration_groups(n, p, times["at_1.5"])[100:])
    assert sizes.max() == 2  # round(1.5) = 2, and 2 readings 200 s apart fit in 300 s
