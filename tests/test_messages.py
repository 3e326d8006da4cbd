"""decode_payload and the topic helpers: every input format, every sensor rejection reason.

Pure and fast: no broker. The same rules are checked over MQTT in test_ingest_e2e.py.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.messages import (
    MIN_TIMESTAMP,
    REASONS,
    DecodeLimits,
    Reading,
    Rejection,
    decode_payload,
    filter_prefix,
    is_excluded,
    metric_name,
    parse_timestamp,
    topic_matches,
)

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z
ISO_NOW = "2025-06-15T15:06:40Z"


def ok(payload, metric="m", now=NOW, limits=DecodeLimits()) -> list[Reading]:
    raw = payload if isinstance(payload, bytes) else (payload if isinstance(payload, str) else json.dumps(payload)).encode()
    out = decode_payload(metric, raw, now, limits)
    assert not isinstance(out, Rejection), out
    return out


def rejected(payload, metric="m", now=NOW, limits=DecodeLimits()) -> Rejection:
    raw = payload if isinstance(payload, bytes) else (payload if isinstance(payload, str) else json.dumps(payload)).encode()
    out = decode_payload(metric, raw, now, limits)
    assert isinstance(out, Rejection), out
    assert out.reason in REASONS
    assert out.detail  # always says why
    return out


def by_metric(readings: list[Reading]) -> dict[str, Reading]:
    return {r.metric: r for r in readings}


# --------------------------------------------------------------------------- accepted formats


@pytest.mark.parametrize("text,value", [("21.5", 21.5), ("-3", -3.0), (" 7 \n", 7.0), ("0", 0.0), ("1e3", 1000.0)])
def test_bare_number(text, value):
    [r] = ok(text, metric="greenhouse/t")
    assert r == Reading("greenhouse/t", value, NOW, False, None)


@pytest.mark.parametrize("text,value", [("true", 1.0), ("false", 0.0)])
def test_bare_json_boolean(text, value):
    [r] = ok(text)
    assert r.value == value and r.has_ts is False and r.ts == NOW


@pytest.mark.parametrize("text,value", [("ON", 1.0), ("OFF", 0.0), ("on", 1.0), ("off", 0.0), ('"ON"', 1.0), ('"OFF"', 0.0)])
def test_on_off_strings(text, value):
    [r] = ok(text)
    assert r.value == value


def test_value_object_with_epoch_seconds_and_unit():
    [r] = ok({"value": 21.5, "ts": NOW - 10, "unit": "°C"}, metric="lab/t")
    assert r == Reading("lab/t", 21.5, NOW - 10, True, "°C")


@pytest.mark.parametrize(
    "stamp",
    [
        NOW - 60,  # epoch seconds
        int((NOW - 60) * 1000),  # epoch milliseconds
        (NOW - 60) * 1000.0,
        "2025-06-15T15:05:40Z",  # ISO-8601, Z
        "2025-06-15T17:05:40+02:00",  # ISO-8601 with an offset
        "2025-06-15T15:05:40",  # naive: UTC
        "2025-06-15T15:05:40.000Z",
        str(NOW - 60),  # a number in a string
    ],
)
@pytest.mark.parametrize("key", ["ts", "timestamp"])
def test_value_object_timestamp_forms(stamp, key):
    [r] = ok({"value": 1, key: stamp})
    assert r.has_ts and r.ts == pytest.approx(NOW - 60, abs=1e-3)


def test_value_object_boolean_and_on_off_values():
    assert ok({"value": True})[0].value == 1.0
    assert ok({"value": False})[0].value == 0.0
    assert ok({"value": "OFF"})[0].value == 0.0


def test_value_object_without_ts_uses_arrival_time():
    [r] = ok({"value": 3})
    assert r.ts == NOW and r.has_ts is False and r.unit is None


def test_unit_is_truncated_and_empty_unit_is_none():
    assert ok({"value": 1, "unit": "x" * 40})[0].unit == "x" * 16
    assert ok({"value": 1, "unit": ""})[0].unit is None


def test_multi_field_zigbee2mqtt_object():
    payload = {
        "temperature": 21.4,
        "humidity": 48,
        "contact": True,  # a closed door in Zigbee2MQTT's convention: a reading of 1
        "occupancy": False,
        "state": "ON",
        "linkquality": 120,  # decoded; the pipeline's exclude globs drop it
        "name": "hall sensor",  # other strings: skipped
        "update": {"state": "idle", "installed_version": 5},  # nested objects: skipped
        "tags": ["a", "b"],  # lists: skipped
        "ts": NOW - 5,
    }
    readings = by_metric(ok(payload, metric="hall/dev"))
    assert set(readings) == {
        "hall/dev/temperature", "hall/dev/humidity", "hall/dev/contact", "hall/dev/occupancy",
        "hall/dev/state", "hall/dev/linkquality",
    }
    assert readings["hall/dev/contact"].value == 1.0
    assert readings["hall/dev/occupancy"].value == 0.0
    assert readings["hall/dev/state"].value == 1.0
    assert readings["hall/dev/humidity"].value == 48.0
    assert all(r.ts == NOW - 5 and r.has_ts for r in readings.values())


def test_multi_field_without_timestamp():
    readings = ok({"a": 1, "b": 2.5})
    assert [(r.metric, r.value, r.has_ts) for r in readings] == [("m/a", 1.0, False), ("m/b", 2.5, False)]


def test_senml_pack_with_base_name_time_and_units():
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": NOW - 100, "bu": "Cel", "n": "temp", "v": 23.1},
        {"n": "temp", "v": 23.5, "t": 10},
        {"n": "hum", "u": "%RH", "v": 40, "t": 20},
        {"n": "door", "vb": True, "t": 30},
        {"n": "label", "vs": "kitchen"},  # string values carry no reading
    ]
    readings = ok(pack, metric="pack")
    assert [(r.metric, r.value, r.ts, r.unit) for r in readings] == [
        ("pack/urn/dev/ow/10e2073a01080063/temp", 23.1, NOW - 100, "Cel"),
        ("pack/urn/dev/ow/10e2073a01080063/temp", 23.5, NOW - 90, "Cel"),
        ("pack/urn/dev/ow/10e2073a01080063/hum", 40.0, NOW - 80, "%RH"),
        ("pack/urn/dev/ow/10e2073a01080063/door", 1.0, NOW - 70, "Cel"),
    ]
    assert all(r.has_ts for r in readings)


def test_senml_slash_base_name_and_base_value():
    readings = ok([{"bn": "room4/", "bt": NOW, "bv": 100, "n": "power", "v": 5}, {"n": "door", "vb": False}], metric="sim")
    assert [(r.metric, r.value) for r in readings] == [("sim/room4/power", 105.0), ("sim/room4/door", 0.0)]


def test_senml_relative_time_is_relative_to_now():
    [r] = ok([{"n": "t", "v": 1, "t": -30}])
    assert r.ts == NOW - 30 and r.has_ts
    [r] = ok([{"n": "t", "v": 1}])  # no time at all: arrival time
    assert r.ts == NOW and not r.has_ts


def test_senml_bt_in_milliseconds():
    [r] = ok([{"bn": "d/", "bt": int(NOW * 1000), "n": "x", "v": 1}])
    assert r.ts == pytest.approx(NOW)


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("payload", ["hello", '"hello"', "", "   ", "null", {"name": "x", "update": {"a": 1}}, {"value": "high"},
                                     {"value": None}, {"value": [1]}, [1, 2, 3], []])
def test_no_value(payload):
    assert rejected(payload).reason == "no_value"


def test_senml_pack_without_numeric_record_is_no_value():
    assert rejected([{"n": "label", "vs": "x"}]).reason == "no_value"


@pytest.mark.parametrize("payload", ["NaN", "Infinity", "-Infinity", "1e999", '{"value": NaN}', '{"value": Infinity}',
                                     '{"a": 1, "b": NaN}', '[{"n": "x", "v": NaN}]', "1" * 400])
def test_not_finite(payload):
    assert rejected(payload).reason == "not_finite"


@pytest.mark.parametrize("stamp", [0, 1, 946684799, "1999-12-31T23:59:59Z", 946684799999])
def test_timestamp_before_2000(stamp):
    r = rejected({"value": 1, "ts": stamp})
    assert r.reason == "ts_too_old" and "2000" in r.detail


def test_timestamp_at_2000_is_accepted():
    assert ok({"value": 1, "ts": MIN_TIMESTAMP})[0].ts == MIN_TIMESTAMP


def test_timestamp_beyond_future_tolerance():
    r = rejected({"value": 1, "ts": NOW + 301})
    assert r.reason == "ts_in_future" and "301" in r.detail and "synchronised" in r.detail
    assert ok({"value": 1, "ts": NOW + 300})[0].ts == NOW + 300  # the tolerance itself is fine
    tight = DecodeLimits(future_tolerance_s=0)
    assert rejected({"value": 1, "ts": NOW + 1}, limits=tight).reason == "ts_in_future"
    iso_future = (datetime.fromtimestamp(NOW, timezone.utc) + timedelta(hours=2)).isoformat()
    assert rejected({"value": 1, "timestamp": iso_future}).reason == "ts_in_future"


def test_multi_field_and_senml_check_time_too():
    assert rejected({"a": 1, "ts": NOW + 3600}).reason == "ts_in_future"
    assert rejected([{"bn": "d/", "bt": 500_000_000, "n": "x", "v": 1}]).reason == "ts_too_old"
    assert rejected([{"bn": "d/", "bt": NOW + 3600, "n": "x", "v": 1}]).reason == "ts_in_future"


@pytest.mark.parametrize("stamp", ["yesterday", True, [1], {"a": 1}, "2025-13-45T00:00:00Z"])
def test_bad_timestamp(stamp):
    assert rejected({"value": 1, "ts": stamp}).reason == "bad_timestamp"


def test_payload_over_size_limit():
    limits = DecodeLimits(max_payload_bytes=64)
    r = rejected(b"1" + b" " * 64, limits=limits)
    assert r.reason == "too_large" and "65" in r.detail and "64" in r.detail
    assert ok(b"1" + b" " * 63, limits=limits)[0].value == 1.0  # exactly at the limit
    assert rejected(json.dumps({"value": 1, "pad": "x" * 70000}).encode()).reason == "too_large"  # default 64 KiB


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"21.\xc3", b'{"value": "\xe9"}'])
def test_invalid_utf8(payload):
    assert rejected(payload).reason == "invalid_utf8"


def nested(depth: int) -> str:
    """A multi-field object with one number at the top and an object nested ``depth`` levels."""
    return '{"x": 1, "a": ' + '{"a": ' * (depth - 2) + '{"v": 1}' + "}" * (depth - 2) + "}"


def test_json_nested_too_deep():
    assert [r.metric for r in ok(nested(8))] == ["m/x"]  # depth 8 is the default limit
    assert rejected(nested(9)).reason == "too_deep"
    assert rejected(nested(3), limits=DecodeLimits(max_json_depth=2)).reason == "too_deep"
    hostile = "[" * 100_000 + "]" * 100_000  # must not blow the stack
    assert rejected(hostile, limits=DecodeLimits(max_payload_bytes=1 << 20)).reason == "too_deep"


def test_depth_limit_counts_nested_skipped_fields():
    payload = {"t": 1, "update": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}
    assert rejected(payload).reason == "too_deep"


@pytest.mark.parametrize(
    "pack,fragment",
    [
        ([{"bn": 5, "n": "x", "v": 1}], "bn"),
        ([{"n": 5, "v": 1}], "n must"),
        ([{"n": "x", "v": "12"}], "v must"),
        ([{"n": "x", "v": True}], "v must"),
        ([{"n": "x", "vb": 1}], "vb must"),
        ([{"bt": "noon", "n": "x", "v": 1}], "bt"),
        ([{"n": "x", "v": 1, "t": "later"}], "t must"),
        ([{"v": 1}], "no name"),
        ([{"bn": "d/", "n": "x", "v": 1}, 7], "not an object"),
    ],
)
def test_bad_senml(pack, fragment):
    r = rejected(pack)
    assert r.reason == "bad_senml" and fragment in r.detail


@pytest.mark.parametrize("payload", ['{"value": 1', '{"value": }', "[{]", '{"a": 1,}'])
def test_broken_json_is_invalid_json(payload):
    """A payload that starts like JSON but does not parse is reported as such, not as 'no value'."""
    assert rejected(payload).reason == "invalid_json"


def test_rejection_reasons_are_closed():
    with pytest.raises(AssertionError):
        Rejection("made_up", "x")


# --------------------------------------------------------------------------- timestamps and topics


def test_parse_timestamp_forms():
    assert parse_timestamp(NOW) == NOW
    assert parse_timestamp(NOW * 1000) == NOW
    assert parse_timestamp(ISO_NOW) == NOW
    assert parse_timestamp("2025-06-15T15:06:40.250+00:00") == NOW + 0.25
    for bad in (math.nan, math.inf, "soon", None, True):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


@pytest.mark.parametrize(
    "flt,topic,metric",
    [
        ("sensors/#", "sensors/greenhouse/humidity", "greenhouse/humidity"),
        ("sensors/+/temp", "sensors/kitchen/temp", "kitchen/temp"),
        ("zigbee2mqtt/+", "zigbee2mqtt/hall", "hall"),
        ("home/lab/t", "home/lab/t", "t"),
        ("#", "a/b", "a/b"),
    ],
)
def test_metric_name(flt, topic, metric):
    assert topic_matches(flt, topic)
    assert metric_name(flt, topic) == metric


def test_topic_matching_and_prefix():
    assert filter_prefix("a/b/+/c/#") == "a/b"
    assert not topic_matches("sensors/+", "sensors/a/b")
    assert topic_matches("sensors/#", "sensors/a/b")
    assert not topic_matches("sensors/a", "sensors/b")


def test_exclude_globs():
    patterns = ["*/linkquality", "*/battery"]
    assert is_excluded("hall/dev/linkquality", patterns)
    assert is_excluded("x/battery", patterns)
    assert not is_excluded("hall/dev/temperature", patterns)
    assert not is_excluded("linkquality", patterns)  # '*/' needs a level before it
    assert not is_excluded("hall/battery_low", patterns)


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_reject_with_a_known_reason(payload):
    out = decode_payload("m", payload, NOW)
    if isinstance(out, Rejection):
        assert out.reason in REASONS and out.reason not in ("metric_limit", "bad_request")
    else:
        assert out and all(math.isfinite(r.value) and math.isfinite(r.ts) for r in out)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_any_finite_number_round_trips(x):
    [r] = ok(repr(x))
    assert r.value == x
