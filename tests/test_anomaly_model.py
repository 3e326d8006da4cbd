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
    pad_v = np.concatenate([np.full(w, np.nan), values])  # the pipeline's windows: NaN before the first reading
    pad_t = np.concatenate([np.full(w, np.nan), times])
    slots = np.array([0])

    def window(i):
        return pad_v[None, i + 1:i + 1 + w], pad_t[None, i + 1:i + 1 + w]

    for i in range(300):
        a.score(slots, *window(i))
    b.load_state_dict({k: v.copy() for k, v in a.state_dict(1).items()})
    scored = 0
    for i in range(300, n):
        sa, sb = a.score(slots, *window(i)), b.score(slots, *window(i))
        np.testing.assert_array_equal(sa, sb)
        scored += bool(np.isfinite(sa).all())
    assert scored > 0  # past learning: real scores were compared, not only NaNs
