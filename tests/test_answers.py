"""Template answers (edged.answers) over a real SensorPipeline fed readings directly: every
number an answer prints must be in its facts."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from edged.answers import answer, cloud_facts, local_fallback
from edged.config import Settings
from edged.decision import fmt_clock, fmt_number
from edged.detector import RobustZScoreDetector
from edged.facts import Facts
from edged.messages import RawMessage, Topics
from edged.nlu import understand
from edged.pipeline import SensorPipeline
from edged.stats import Stats

END = 1750002300.0  # 15:45 UTC
HUMIDITY = [60.0 + (i % 7) * 0.5 for i in range(180)]
HUMIDITY[150] = 91.9  # a spike at END - 29 min


@pytest.fixture(scope="module")
def facts():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    settings = Settings()
    settings.node.clock = "data"
    calls: list[tuple] = []

    def publish(topic, payload, **kw):
        calls.append((topic, payload, kw))
        return True

    p = SensorPipeline(settings, Topics("edged", "test"), RobustZScoreDetector(), publish, Stats())
    rows = []
    for i in range(180):  # three hours, one reading a minute
        ts = END - (179 - i) * 60
        rows.append(("sensors/greenhouse/humidity", {"value": HUMIDITY[i], "ts": ts, "unit": "%"}))
        rows.append(("sensors/kitchen/temperature", {"value": 21.0 + (i % 5) * 0.1, "ts": ts, "unit": "°C"}))
        if i < 120:  # silent for the last hour
            rows.append(("sensors/outdoor/pressure", {"value": 1007.0 + (i % 3) * 0.1, "ts": ts, "unit": "hPa"}))
        rows.append(("sensors/garage/door", {"value": i >= 170, "ts": ts + 1}))
    rows.sort(key=lambda r: r[1]["ts"])
    p.process([RawMessage(t, json.dumps(pl).encode(), time.time()) for t, pl in rows])
    p.check_silence()
    assert calls, "the pipeline publishes states"
    yield Facts(p)
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def ask(facts: Facts, question: str):
    plan = understand(question, facts.units(), facts.now())
    text, used = answer(plan, facts)
    return plan, text, used


def fact_numbers(facts: list[dict]) -> tuple[set[str], set[str]]:
    nums, clocks = set(), set()

    def walk(o):
        if isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif isinstance(o, bool) or o is None:
            return
        elif isinstance(o, (int, float)):
            nums.add(fmt_number(float(o)))
            if o > 1e9:
                clocks.add(fmt_clock(float(o)))
        elif isinstance(o, str):
            clocks.update(re.findall(r"\b\d{1,2}:\d{2}\b", o))
            nums.update(fmt_number(float(x)) for x in re.findall(r"\d+(?:\.\d+)?", re.sub(r"\d{1,2}:\d{2}", " ", o)))

    walk(facts)
    return nums, clocks


def assert_grounded(text: str, facts: list[dict], names: list[str], question: str = "") -> None:
    for name in names:
        text = text.replace(name, " ")
    nums, clocks = fact_numbers(facts)
    for c in re.findall(r"\b\d{1,2}:\d{2}\b", text):
        assert c in clocks or c in question, (c, text)
    for x in re.findall(r"(?<![\w.:])\d+(?:\.\d+)?(?![\w:])", re.sub(r"\b\d{1,2}:\d{2}\b", " ", text)):
        assert fmt_number(float(x)) in nums or x in question, (x, text, facts)


def test_current_value(facts):
    plan, text, used = ask(facts, "greenhouse humidity?")
    assert plan.route == "local"
    assert text.startswith(f"greenhouse/humidity is {fmt_number(HUMIDITY[-1])}% now")
    assert used[0]["kind"] == "current" and used[0]["metric"] == "greenhouse/humidity"
    assert_grounded(text, used, facts.metrics())


def test_max_with_its_time(facts):
    _, text, used = ask(facts, "highest greenhouse humidity in the last hour")
    assert "91.9%" in text and fmt_clock(END - 29 * 60) in text
    assert_grounded(text, used, facts.metrics())


def test_stats_default_min_max_mean(facts):
    _, text, used = ask(facts, "kitchen temperature in the last 2 hours")
    assert "min 21°C" in text and "max 21.4°C" in text and "average" in text
    assert_grounded(text, used, facts.metrics())


def test_stale_metric_is_presented_as_old(facts):
    _, text, used = ask(facts, "air pressure?")
    assert "stale" in text and fmt_clock(END - 60 * 60) in text
    _, text, used = ask(facts, "which sensors stopped reporting?")
    assert "outdoor/pressure" in text and "greenhouse/humidity" not in text
    assert_grounded(text, used, facts.metrics())


def test_door_state_and_when_it_changed(facts):
    _, text, used = ask(facts, "is the garage door closed?")
    assert text.startswith("No, garage/door is open") and fmt_clock(END - 9 * 60 + 1) in text
    assert_grounded(text, used, facts.metrics())


def test_no_such_sensor_gives_no_number(facts):
    plan, text, used = ask(facts, "what's the CO2 in the bedroom?")
    assert plan.route == "local" and plan.intent == "out_of_scope"
    assert "no bedroom CO2 sensor" in text and "kitchen/temperature" in text
    assert not re.search(r"\d", text.replace("CO2", ""))


def test_anomalies_and_help_and_list(facts):
    _, text, used = ask(facts, "any anomalies in the last 3 hours?")
    assert "greenhouse/humidity" in text
    assert_grounded(text, used, facts.metrics())
    _, text, _ = ask(facts, "help")
    assert "ask" in text and not re.search(r"\d", text)
    _, text, used = ask(facts, "list sensors")
    assert text.startswith("4 sensors") and all(m in text for m in facts.metrics())


def test_no_data_in_window(facts):
    _, text, used = ask(facts, "outdoor pressure in the last 15 minutes")
    assert "no readings" in text and "stale" in text
    assert_grounded(text, used, facts.metrics())


def test_local_fallback_and_cloud_facts(facts):
    plan = understand("why is the greenhouse so humid?", facts.units(), facts.now())
    assert plan.route == "cloud"
    text, used = local_fallback(plan, facts, "the cloud is not configured")
    assert "greenhouse/humidity" in text and "the cloud is not configured" in text
    assert_grounded(text, used, facts.metrics())
    assert {f.get("metric") for f in cloud_facts(plan, facts)} >= {"greenhouse/humidity"}
    plan = understand("write a poem", facts.units(), facts.now())
    text, used = local_fallback(plan, facts, "the cloud is unreachable")
    assert "can't answer" in text and used == []
