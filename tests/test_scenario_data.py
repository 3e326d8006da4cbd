"""Sanity of the question-set data only (tests/data): the scenario, the reference, the labels.

Fast and broker-free. These tests never look at how questions are answered: they check that
the scenario is deterministic and decodable, and that every label in questions.jsonl points
at something the scenario and its reference really contain.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edged.messages import decode_payload, metric_name, topic_matches
from edged.windows import HISTORY_TIERS

DATA = Path(__file__).resolve().parent / "data"

INTENTS = {"current_value", "stats", "anomalies", "list", "stale", "help", "out_of_scope", "cloud"}
ROUTES = {"local", "cloud"}
WINDOW_KINDS = {"last", "today", "since", "yesterday", "night", None}
STATS = {"current", "min", "max", "mean", "first", "last"}
EXPECT_KEYS = {"values", "times", "door", "count", "yes_no", "mention_metrics", "may_mention", "stale",
               "no_data", "no_such_metric", "help", "places", "facts"}
QUESTION_KEYS = {"id", "question", "intent", "metrics", "window", "route", "expect", "notes"}


def _load_scenario():
    spec = importlib.util.spec_from_file_location("edged_test_scenario", DATA / "scenario.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scenario = _load_scenario()
END = scenario.DEFAULT_END_TS


@pytest.fixture(scope="module")
def rows():
    return scenario.readings(END)


@pytest.fixture(scope="module")
def ref():
    return scenario.reference(END)


@pytest.fixture(scope="module")
def questions():
    lines = (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def window_name(w: dict) -> str | None:
    """The reference's name for a question's window object."""
    kind = w["kind"]
    if kind is None:
        return None
    if kind == "last":
        names = {900: "last_15m", 1800: "last_30m", 2700: "last_45m", 3600: "last_hour", 5400: "last_90m",
                 7200: "last_2h", 10800: "last_3h", 14400: "last_4h", 21600: "last_6h", 43200: "last_12h",
                 86400: "last_24h"}
        return names[w["seconds"]]
    if kind == "since":
        return f"since_{w['since_hour']}" + (f"_{w['since_minute']}" if w["since_minute"] else "")
    return kind


# --------------------------------------------------------------------------- scenario


def test_scenario_is_deterministic(rows):
    again = scenario.readings(END)
    assert again == rows
    assert scenario.reference(END) == scenario.reference(END)
    later = scenario.end_ts_on("2025-06-16")
    assert later == END + 86400
    shifted = scenario.readings(later)
    assert [p["value"] for _, p in shifted] == [p["value"] for _, p in rows]  # same values, a day later


def test_end_ts_must_be_1545_utc():
    with pytest.raises(ValueError):
        scenario.readings(END + 60)
    with pytest.raises(ValueError):
        scenario.reference(END - 3600)


def test_readings_shape(rows):
    assert 10_000 < len(rows) < 20_000
    times = [p["ts"] for _, p in rows]
    assert times == sorted(times), "readings must be in time order"
    assert times[0] == END - scenario.HOURS * 3600 and times[-1] == END
    seen = Counter()
    for topic, payload in rows:
        assert topic.startswith("sensors/") and topic_matches("sensors/#", topic)
        metric = metric_name("sensors/#", topic)
        assert metric in scenario.METRICS
        seen[metric] += 1
        if metric == "garage/door":
            assert set(payload) == {"value", "ts"} and isinstance(payload["value"], bool)
        else:
            assert set(payload) == {"value", "ts", "unit"}
            assert payload["unit"] == scenario.METRICS[metric]["unit"]
            assert isinstance(payload["value"], float) and math.isfinite(payload["value"])
    assert set(seen) == set(scenario.METRICS)
    assert len(scenario.METRICS) >= 8
    assert len({m.split("/")[0] for m in scenario.METRICS}) >= 3


def test_every_payload_decodes_to_one_reading(rows):
    for topic, payload in rows:
        metric = metric_name("sensors/#", topic)
        out = decode_payload(metric, json.dumps(payload).encode(), now=END)
        assert isinstance(out, list) and len(out) == 1, (topic, payload, out)
        reading = out[0]
        assert reading.metric == metric and reading.ts == payload["ts"] and reading.has_ts
        assert reading.value == float(payload["value"])


def test_scripted_events(rows, ref):
    """The events the README describes (times for the default end_ts, 15:45 UTC)."""
    assert ref["stale_metrics"] == ["outdoor/pressure"]
    assert ref["clock:last_ts:outdoor/pressure"] == "13:45"
    for metric in scenario.METRICS:
        if metric != "outdoor/pressure":
            assert END - ref[f"last_ts:{metric}"] <= 300, metric
    assert ref["door:state"] == "open" and ref["clock:door:open_since"] == "15:21"
    assert (ref["clock:door:night_open"], ref["clock:door:night_close"]) == ("02:13", "02:31")
    assert ref["door:opens:today"] == 3 and ref["door:opens:yesterday"] == 1
    assert ref["clock:episode:humidity_spike:start"] == "10:30"
    assert ref["episode:humidity_spike:peak"] > ref["max:greenhouse/humidity:yesterday"] + 10
    assert ref["max:greenhouse/humidity:today"] == ref["episode:humidity_spike:peak"]
    assert ref["clock:episode:water_level_shift:start"] == "12:45"
    assert ref["episode:water_level_shift:after"] - ref["episode:water_level_shift:before"] > 15
    assert ref["clock:episode:soil_stuck:start"] == "09:30"
    soil = [p["value"] for t, p in rows if t == "sensors/greenhouse/soil_moisture" and p["ts"] >= END - 6.25 * 3600]
    assert len(set(soil)) == 1 and len(soil) > 300
    assert "count:outdoor/pressure:last_hour" in ref and ref["count:outdoor/pressure:last_hour"] == 0
    assert "max:outdoor/pressure:last_hour" not in ref


def test_reference_does_not_depend_on_local_timezone(monkeypatch, ref):
    import time

    if not hasattr(time, "tzset"):
        pytest.skip("no tzset on this platform")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert scenario.reference(END) == ref
    finally:
        monkeypatch.undo()
        time.tzset()


# --------------------------------------------------------------------------- questions


def test_question_fields_and_enums(questions):
    assert len(questions) >= 80
    ids = [q["id"] for q in questions]
    assert len(ids) == len(set(ids))
    texts = [q["question"].strip().lower() for q in questions]
    assert len(texts) == len(set(texts)), "duplicate question text"
    for q in questions:
        assert set(q) == QUESTION_KEYS, q["id"]
        assert isinstance(q["question"], str) and q["question"].strip(), q["id"]
        assert q["intent"] in INTENTS, q["id"]
        assert q["route"] in ROUTES, q["id"]
        assert isinstance(q["metrics"], list), q["id"]
        w = q["window"]
        assert set(w) == {"kind", "seconds", "since_hour", "since_minute"}, q["id"]
        assert w["kind"] in WINDOW_KINDS, q["id"]
        assert (w["seconds"] is not None) == (w["kind"] == "last"), q["id"]
        assert (w["since_hour"] is not None) == (w["kind"] == "since"), q["id"]
        if w["since_minute"] is not None:
            assert w["kind"] == "since" and 0 < w["since_minute"] < 60, q["id"]
        assert isinstance(q["expect"], dict) and set(q["expect"]) <= EXPECT_KEYS, q["id"]
        assert isinstance(q["notes"], str), q["id"]
        # Routing rules of the README: cloud intent goes to the cloud; sensor intents stay local.
        if q["intent"] == "cloud":
            assert q["route"] == "cloud", q["id"]
        elif q["intent"] != "out_of_scope":
            assert q["route"] == "local", q["id"]
        if q["route"] == "cloud":
            assert "facts" in q["expect"], q["id"]
        else:
            assert q["expect"] and "facts" not in q["expect"], q["id"]


def test_route_and_intent_mix(questions):
    routes = Counter(q["route"] for q in questions)
    local_share = routes["local"] / len(questions)
    assert 0.65 <= local_share <= 0.75, routes
    intents = Counter(q["intent"] for q in questions)
    assert set(intents) == INTENTS, intents
    windows = Counter(q["window"]["kind"] for q in questions)
    assert set(windows) == WINDOW_KINDS, windows


def test_labels_point_at_the_scenario(questions, ref):
    metrics = set(scenario.METRICS)
    places = {m.split("/")[0] for m in metrics}
    for q in questions:
        e = q["expect"]
        for key in ("metrics",):
            assert set(q[key]) <= metrics, q["id"]
        for key in ("mention_metrics", "may_mention", "stale", "facts"):
            assert set(e.get(key, [])) <= metrics, (q["id"], key)
        assert set(e.get("places", [])) <= places, q["id"]
        wname = window_name(q["window"])
        for v in e.get("values", []):
            assert set(v) <= {"metric", "stat", "value_ref", "convert"}, q["id"]
            assert v["metric"] in metrics and v["stat"] in STATS, q["id"]
            assert v["value_ref"] in ref, (q["id"], v["value_ref"])
            assert isinstance(ref[v["value_ref"]], float), q["id"]
            parts = v["value_ref"].split(":")
            assert parts[0] == v["stat"] and parts[1] == v["metric"], q["id"]
            if v["stat"] == "current":
                assert len(parts) == 2, q["id"]
            else:
                assert parts[2] == wname, (q["id"], "value_ref window differs from the window label")
            assert v["metric"] in q["metrics"], (q["id"], "a value's metric must be in metrics")
            assert v.get("convert") in (None, "°F"), q["id"]
        for t in e.get("times", []):
            assert t["metric"] in metrics, q["id"]
            assert re.fullmatch(r"\d\d:\d\d", str(ref.get(t["time_ref"], ""))), (q["id"], t["time_ref"])
        if "count" in e:
            assert isinstance(ref[e["count"]["value_ref"]], int), q["id"]
            assert e["count"]["value_ref"].endswith(":" + wname), q["id"]
        if "door" in e:
            assert e["door"] == ref["door:state"] and "garage/door" in q["metrics"], q["id"]
        if e.get("no_data"):
            for m in q["metrics"]:
                assert ref[f"count:{m}:{wname}"] == 0, q["id"]
        if "stale" in e:
            assert set(e["stale"]) <= set(ref["stale_metrics"]), q["id"]
        if q["intent"] in ("current_value", "stats"):
            assert q["metrics"], q["id"]
        if q["intent"] == "out_of_scope" and q["route"] == "local":
            assert e.get("no_such_metric") is True, q["id"]


def _tier_for(lo: float, end: float) -> float:
    for width, size in HISTORY_TIERS:
        if lo >= (math.floor(end / width) - size + 1) * width:
            return width
    return HISTORY_TIERS[-1][0]


def test_expected_values_do_not_hinge_on_window_edges(questions):
    """A stat a question expects must not change when its window is widened to the edges of
    the history buckets the daemon keeps: the right answer is then unambiguous."""
    series = scenario._all_series(END)
    wins = scenario.windows(END)
    for q in questions:
        for v in q["expect"].get("values", []):
            stat, metric, *rest = v["value_ref"].split(":")
            if stat not in ("min", "max", "mean"):
                continue
            lo, hi = wins[rest[0]]
            width = _tier_for(lo, END)
            t, vals = series[metric]
            exact = vals[(t >= lo) & (t <= hi)]
            wide = vals[(t >= math.floor(lo / width) * width) & (t < (math.floor(hi / width) + 1) * width)]
            fn = {"min": np.min, "max": np.max, "mean": np.mean}[stat]
            tol = max(scenario.METRICS[metric]["tol"], 1e-9)
            assert abs(fn(wide) - fn(exact)) <= tol, (q["id"], v["value_ref"], fn(exact), fn(wide))
