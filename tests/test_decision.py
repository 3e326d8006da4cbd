"""decision.py: hysteresis, episode ids, silence episodes, summary wording."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edged.decision import (
    ANOMALOUS,
    LEARNING,
    OK,
    STALE,
    Baseline,
    Episode,
    Event,
    MetricDecision,
    decide_silence,
    decide_value,
    fmt_clock,
    fmt_duration,
    fmt_number,
    fmt_value,
    summarize,
)

T0 = 1_750_000_000.0
CONTEXT = np.array([60.0, 60.5, 61.0, 61.5, 62.0] * 8)


def step(state, ts, value, score, *, threshold=0.5, end_ratio=0.7, end_after=3, unit=None):
    return decide_value(state, ts=ts, value=value, score=score, threshold=threshold, end_ratio=end_ratio,
                        end_after=end_after, context=CONTEXT, unit=unit)


def test_learning_until_scores_exist():
    state = MetricDecision("m")
    assert step(state, T0, 500.0, float("nan")) == []
    assert state.status == LEARNING
    assert step(state, T0 + 1, 61.0, 0.01) == [] and state.status == OK


def test_episode_start_and_end_share_one_id():
    state = MetricDecision("greenhouse/humidity")
    [start] = step(state, T0, 95.0, 0.9, unit="%")
    assert start.event == "start" and state.status == ANOMALOUS
    assert re.fullmatch(r"[0-9a-f]{12}", start.episode.id)
    p = start.payload()
    assert p["kind"] == "value" and p["direction"] == "up" and p["value"] == 95.0 and p["peak"] == 95.0
    assert p["baseline"] == {"median": 61.0, "p05": 60.0, "p95": 62.0}
    assert step(state, T0 + 1, 99.0, 0.95) == []
    assert [step(state, T0 + 2 + i, 61.0, 0.01) for i in range(2)] == [[], []]
    [end] = step(state, T0 + 4, 61.0, 0.01)
    assert end.event == "end" and end.episode.id == start.episode.id
    assert end.payload()["peak"] == 99.0 and end.payload()["duration_s"] == 4.0
    assert state.status == OK and state.episode is None
    [again] = step(state, T0 + 10, 10.0, 0.9)
    assert again.episode.id != start.episode.id and again.payload()["direction"] == "down"


def test_hysteresis_noisy_score_around_threshold_does_not_flap():
    rng = np.random.default_rng(3)
    state = MetricDecision("noisy")
    events = []
    for i, score in enumerate(0.5 + rng.uniform(-0.12, 0.12, size=2000)):  # never below 0.35 (= 0.5 x 0.7)
        events += step(state, T0 + i, 61.0 + score, float(score))
    assert [e.event for e in events] == ["start"]
    assert state.status == ANOMALOUS


def test_end_needs_consecutive_readings_below_the_end_level():
    state = MetricDecision("m")
    step(state, T0, 90.0, 0.8)
    # Below the end level twice, then one in the dead band (0.35..0.5): the count restarts.
    seq = [0.1, 0.1, 0.4, 0.1, 0.1]
    assert all(step(state, T0 + 1 + i, 61.0, s) == [] for i, s in enumerate(seq))
    [end] = step(state, T0 + 10, 61.0, 0.1)
    assert end.event == "end"
    # In the dead band a fresh episode does not start either.
    assert step(state, T0 + 11, 63.0, 0.45) == [] and state.status == OK


def test_peak_is_the_largest_deviation_from_the_baseline():
    state = MetricDecision("m")
    step(state, T0, 40.0, 0.9)  # down
    step(state, T0 + 1, 30.0, 0.9)
    step(state, T0 + 2, 50.0, 0.9)
    assert state.episode.peak == 30.0 and state.episode.direction == "down"


def test_silence_episode_and_its_end_by_a_reading():
    state = MetricDecision("lab/door")
    assert decide_silence(state, now=T0 + 50, last_ts=T0, interval=10, stale_after=50, unit=None) == []  # not yet
    [start] = decide_silence(state, now=T0 + 51, last_ts=T0, interval=10, stale_after=50, unit=None)
    assert state.status == STALE
    p = start.payload()
    assert p["kind"] == "silence" and p["event"] == "start" and p["start"] == T0
    assert decide_silence(state, now=T0 + 500, last_ts=T0, interval=10, stale_after=50, unit=None) == []  # one episode
    [end] = step(state, T0 + 600, 1.0, float("nan"))
    assert end.event == "end" and end.episode.id == start.episode.id and end.episode.kind == "silence"
    assert end.payload()["duration_s"] == 600.0
    assert state.silence is None and state.status == LEARNING


def test_silence_needs_a_last_reading():
    state = MetricDecision("m")
    assert decide_silence(state, now=T0, last_ts=float("nan"), interval=1, stale_after=2, unit=None) == []


def test_an_anomaly_inside_the_usual_band_has_no_direction():
    """A flatline or a daily cycle that fails to come can be flagged at a value inside the metric's
    usual band: the episode says it is unusual there, not that it rose or fell."""
    state = MetricDecision("plant/stuck")
    [start] = step(state, T0, 61.2, 0.9, unit="°C")
    assert start.payload()["direction"] == "none"
    assert start.summary == f"plant/stuck is unusual at 61.2°C (typical 60–62°C) at {fmt_clock(T0)}."


def test_an_episode_the_detector_explains_by_the_time_of_day_is_worded_against_that():
    """When the detector's time-of-day channel started the episode, what the reading is unlike is
    the same time on earlier days: direction, wording and the payload's ``expected`` say so, and
    the detector is asked only when an episode starts."""
    asked = []

    def explain():
        asked.append(1)
        return {"channel": "season", "expected": 80.0}

    state = MetricDecision("greenhouse/light")
    assert decide_value(state, ts=T0, value=61.0, score=0.1, threshold=0.5, end_ratio=0.7, end_after=3,
                        context=CONTEXT, unit="%", explain=explain) == [] and asked == []
    [start] = decide_value(state, ts=T0 + 1, value=61.5, score=0.9, threshold=0.5, end_ratio=0.7, end_after=3,
                           context=CONTEXT, unit="%", explain=explain)
    p = start.payload()
    assert asked == [1] and p["expected"] == 80.0 and p["direction"] == "down" and p["onset"] == p["start"]
    assert start.summary == f"greenhouse/light is 61.5% at {fmt_clock(T0 + 1)}, below the 80% it had at this time on earlier days."
    other = MetricDecision("m")
    [plain] = decide_value(other, ts=T0, value=95.0, score=0.9, threshold=0.5, end_ratio=0.7, end_after=3,
                           context=CONTEXT, unit=None, explain=lambda: {"channel": "excursion"})
    assert plain.payload()["expected"] is None and plain.summary.startswith("m rose to 95 (typical 60–62)")
    [end] = [e for i in range(3) for e in decide_value(state, ts=T0 + 2 + i, value=60.0, score=0.0, threshold=0.5,
                                                        end_ratio=0.7, end_after=3, context=CONTEXT, unit="%")]
    assert end.summary == "greenhouse/light is no longer flagged after 3 seconds, at 60% (it had 80% at this time on earlier days)."
    assert end.payload()["peak"] == 60.0  # the furthest from what it is unlike, not from the window's median


@pytest.mark.parametrize("odd", [None, {"expected": "eighty"}, {"expected": float("nan")}, {"expected": [1, 2]}, 42])
def test_an_odd_explanation_never_stops_an_episode(odd):
    state = MetricDecision("m")
    [start] = decide_value(state, ts=T0, value=95.0, score=0.9, threshold=0.5, end_ratio=0.7, end_after=3,
                           context=CONTEXT, unit=None, explain=lambda: odd)
    assert start.payload()["expected"] is None and start.payload()["direction"] == "up"


def test_value_summary_wording():
    ep = Episode("abc", "value", "greenhouse/humidity", T0, Baseline(61.0, 60.0, 62.0), "up", 95.0, 95.0, 0.9, T0 + 125, "%")
    text = summarize("start", ep)
    assert text.startswith("greenhouse/humidity rose to 95% (typical 60–62%) at " + fmt_clock(T0))
    assert text.endswith(", 2 minutes so far.")
    ep.value = 61.2
    end = summarize("end", ep)
    assert end == "greenhouse/humidity is back to normal at 61.2% after 2 minutes (peak 95%, typical 60–62%)."
    down = Episode("d", "value", "lab/t", T0, Baseline(20.0, 19.5, 20.5), "down", 3.25, 3.25, 0.9, T0, "°C")
    assert summarize("start", down) == f"lab/t fell to 3.25°C (typical 19.5–20.5°C) at {fmt_clock(T0)}."
    assert "(low 3.25°C" in summarize("end", down)
    power = Episode("p", "value", "power", T0, None, "none", 1500.0, 1500.0, 0.9, T0, "W")
    assert summarize("start", power) == f"power changed to 1500 W at {fmt_clock(T0)}."


def test_silence_summary_wording():
    ep = Episode("s", "silence", "lab/door", T0, None, "none", float("nan"), float("nan"), 1.0, T0 + 300, None, 60.0)
    assert summarize("start", ep) == f"lab/door has sent no reading since {fmt_clock(T0)} (expected every 60 seconds)."
    ep.last_ts = T0 + 7200
    assert summarize("end", ep) == "lab/door is reporting again after 2 hours of silence."
    payload = Event("start", ep, T0, "x").payload()
    assert payload["value"] is None and payload["peak"] is None and payload["baseline"] is None


@pytest.mark.parametrize(
    "value,text",
    [(95.0, "95"), (21.456, "21.5"), (0.1234, "0.12"), (0.001234, "0.00123"), (1234.4, "1234.4"), (12345.6, "12346"), (-0.0, "0"), (2.5, "2.5"),
     (10.04, "10")],
)
def test_fmt_number(value, text):
    assert fmt_number(value) == text


@pytest.mark.parametrize("seconds,text", [(1, "1 second"), (45, "45 seconds"), (120, "2 minutes"), (5400, "1.5 hours"),
                                          (7200, "2 hours")])
def test_fmt_duration(seconds, text):
    assert fmt_duration(seconds) == text


def test_fmt_value_units():
    assert fmt_value(21.5, "°C") == "21.5°C"
    assert fmt_value(40, "%") == "40%"
    assert fmt_value(1013.2, "hPa") == "1013.2 hPa"
    assert fmt_value(3, None) == "3"
