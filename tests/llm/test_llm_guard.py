"""Faithfulness guard: invented numbers, units and metric names are rejected; paraphrases pass."""

from __future__ import annotations

import pytest

from edged.llm.guard import check

FACTS = {
    "metric": "pump1/temperature",
    "value": 91.0,
    "unit": "°C",
    "baseline": 70.0,
    "z_score": 4.2,
    "window": "10 min",
}


@pytest.mark.parametrize("phrasing", [
    "The pump temperature is 91 °C, well above its 70 °C baseline.",
    "Temperature reached 91.0°C (z-score 4.2).",
    "The current temperature is 91 degrees Celsius, against a baseline of 70.",
    "Over the last 10 minutes the temp stayed at 91.",
    "pump1 is running hot: 91 °C.",
    "It is 91 degrees, which is unusual.",
    "The temperature is abnormally high.",
    "",
])
def test_faithful_paraphrases_pass(phrasing):
    v = check(phrasing, FACTS)
    assert v.ok, v.problems


@pytest.mark.parametrize("phrasing,problem", [
    ("Temperature is 92 °C.", "number 92"),
    ("The temperature rose by 21 °C.", "number 21"),  # derived, not stated
    ("Temperature reached 91.5 °C.", "number 91.5"),
    ("Three sensors report 91 °C.", "number Three"),
    ("Temperature: 91 °F.", "unit °F"),
    ("Temperature at 91 K.", "unit K"),
    ("Temperature at 91 %.", "unit %"),
    ("The pressure is 91 kPa.", "unit kPa"),
    ("Vibration is high at 91 °C.", "metric vibration"),
    ("The motor current is normal.", "metric current"),
    ("Humidity is rising.", "metric humidity"),
    ("The anomaly score is high.", "metric anomaly score"),
    ("It has been hot for 10 hours.", "unit h"),
])
def test_inventions_are_rejected(phrasing, problem):
    v = check(phrasing, FACTS)
    assert not v.ok
    assert any(p.startswith(problem) for p in v.problems), v.problems


@pytest.mark.parametrize("fact", [91, 91.0, "91", "91.0", "91 %", "91%", "91.00 %"])
@pytest.mark.parametrize("said", ["Load is 91 %.", "Load is 91%.", "Load is 91.0 %.", "Load is 91 percent."])
def test_number_forms_match_by_value(fact, said):
    facts = {"load": fact, "unit": "%"}
    assert check(said, facts).ok, check(said, facts).problems


def test_numbers_in_text_facts_and_thousands_separators():
    facts = "line3/flow = 1234 L/min at 2024-05-01 10:30; motor_current 12.5 A"
    assert check("Flow is 1,234 L/min and the motor current 12.5 A.", facts).ok
    assert not check("Flow is 1,235 L/min.", facts).ok
    assert check("The current flow reading is 1234 litres per minute.", facts).ok
    assert not check("The current flow reading is 1234 cubic metres per hour.", facts).ok


def test_identifiers_are_not_numbers():
    facts = {"metric": "P-101/co2", "value": 800, "unit": "ppm"}
    assert check("CO2 at P-101 is 800 ppm.", facts).ok
    assert not check("CO2 at P-102 is 800 ppm and pump 7 agrees.", facts).ok  # "7" is a number


def test_sign_may_be_dropped_but_not_invented_magnitudes():
    facts = {"metric": "tank/level", "delta": -5.0, "unit": "%"}
    assert check("The level fell by 5 %.", facts).ok
    assert check("Change: -5 %.", facts).ok
    assert not check("The level fell by 6 %.", facts).ok


def test_extra_numbers_are_allowed_explicitly():
    assert not check("2 sensors report 91 °C.", FACTS).ok
    assert check("2 sensors report 91 °C.", FACTS, extra_numbers=[2]).ok


# --- summaries must keep the metric and the headline number (edged.phrasing) -----------------

SPIKE = ("bench/m00", "bench/m00 rose to 95 (typical 20–20.3) at 15:36.")
SILENCE = ("bench/m01", "bench/m01 has sent no reading since 16:07 (expected every 60 seconds).")
HUMID = ("greenhouse/humidity", "greenhouse/humidity rose to 91% (typical 55–70%) at 14:02, 12 minutes so far.")


@pytest.mark.parametrize("event,phrasing", [
    (SPIKE, "Bench/m00 rose to 95 (typical 20–20.3) at 15:36."),
    (SPIKE, "m00 jumped to 95 at 15:36."),
    (SILENCE, "Sensor m01 stopped reporting at 16:07."),
    (HUMID, "The greenhouse humidity rose to 91% at 14:02."),
    (HUMID, "Humidity in the greenhouse is up to 91 percent."),
])
def test_summaries_that_keep_metric_and_headline_pass(event, phrasing):
    from edged.llm.guard import summary_keeps

    metric, template = event
    assert summary_keeps(phrasing, template, metric) == []


@pytest.mark.parametrize("event,phrasing,problems", [
    # what the 135M model wrote for the daemon's bench episodes (tools/bench_summary.py)
    (SPIKE, "The device has been disabled by the manufacturer.", 2),
    (SPIKE, "Bench 20.3: 97.", 2),
    (SILENCE, "The alarm was sent to the 16th of 16:07.", 1),  # keeps 16:07, names no metric
    (HUMID, "Greenhouse air got wetter.", 2),
    (HUMID, "The humidity is very high in the greenhouse.", 1),  # drops the 91
])
def test_summaries_that_drop_metric_or_headline_are_rejected(event, phrasing, problems):
    from edged.llm.guard import summary_keeps

    metric, template = event
    assert len(summary_keeps(phrasing, template, metric)) == problems


def test_check_alone_lets_an_invented_summary_through():
    assert check("The device has been disabled by the manufacturer.", SPIKE[1]).ok  # hence summary_keeps


def test_answers_must_keep_every_number_of_the_template():
    from edged.llm.guard import missing_numbers

    template = "kitchen/temperature: 21.3 °C now; today's minimum 18.9 °C at 06:10, maximum 23.4 °C at 13:45."
    # the 135M model's wording: every number it states is a fact, but the minimum's time is wrong
    wrong = "kitchen/temperature: 21.3 °C now; today's minimum 18.9 °C at 13:45; maximum 23.4 °C at 13:45."
    assert check(wrong, template).ok
    assert missing_numbers(wrong, template) == ["the number 06 is missing", "the number 10 is missing"]
    kept = "The kitchen is at 21.3 °C; today it went from 18.9 °C (06:10) up to 23.4 °C at 13:45."
    assert missing_numbers(kept, template) == []
    assert missing_numbers("It is -5 °C.", "It is 5 °C below zero: -5 °C.") == []  # by value, sign aside
