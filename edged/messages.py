"""Topic scheme, frozen message types and pure payload decoding.

Nothing here does I/O: the MQTT callback wraps a message into a ``RawMessage``,
the sensor lane calls :func:`decode_payload` and gets either readings or a
``Rejection`` naming the reason. Every rule lives in this one module so the
README, the tests and the decoder cannot drift apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase

# Earliest timestamp accepted: anything before 2000-01-01 is a device with an unset clock.
MIN_TIMESTAMP = 946684800.0
# Epoch values above this are milliseconds (1e11 s is the year 5138).
EPOCH_MS_THRESHOLD = 1e11
# SenML (RFC 8428 §4.5.3): times below 2**28 are relative to "now".
SENML_RELATIVE_LIMIT = 2**28

BOOLEAN_STRINGS = {"ON": 1.0, "OFF": 0.0}
TIMESTAMP_KEYS = ("ts", "timestamp", "time")

# Rejection reasons: the complete list, documented in the README.
REASONS = (
    "too_large",
    "invalid_utf8",
    "too_deep",
    "invalid_json",
    "no_value",
    "not_finite",
    "bad_timestamp",
    "ts_too_old",
    "ts_in_future",
    "bad_senml",
    "metric_limit",
    "bad_request",
)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """What the MQTT network thread hands over: copied, immutable, no parsing yet."""

    topic: str
    payload: bytes
    received: float  # wall-clock arrival time, epoch seconds
    qos: int = 0
    mid: int = 0
    dup: bool = False
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    seq: int = 0  # strict durability: the reading's write-ahead-log sequence number (0: not logged)


@dataclass(frozen=True, slots=True)
class Reading:
    metric: str
    value: float
    ts: float  # epoch seconds
    has_ts: bool  # False when ts is the arrival time
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str

    def __post_init__(self) -> None:
        assert self.reason in REASONS, self.reason


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_payload_bytes: int = 64 * 1024
    max_json_depth: int = 8
    future_tolerance_s: float = 300.0


@dataclass(slots=True)
class Topics:
    """The daemon's own topics under ``<base_topic>/<node>``."""

    base: str
    node: str
    root: str = field(init=False)

    def __post_init__(self) -> None:
        self.root = f"{self.base}/{self.node}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def stats(self) -> str:
        return f"{self.root}/stats"

    @property
    def error(self) -> str:
        return f"{self.root}/error"

    def state(self, metric: str) -> str:
        return f"{self.root}/state/{metric}"

    def anomaly(self, metric: str) -> str:
        return f"{self.root}/anomaly/{metric}"

    @property
    def request_filter(self) -> str:
        return f"{self.root}/request/+"

    @property
    def request_prefix(self) -> str:
        return f"{self.root}/request/"

    def response(self, action: str) -> str:
        return f"{self.root}/response/{action}"


def filter_prefix(topic_filter: str) -> str:
    """The literal prefix of a subscription filter: everything before the first wildcard level."""
    levels = []
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            break
        levels.append(level)
    return "/".join(levels)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest)."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def metric_name(topic_filter: str, topic: str) -> str:
    """``sensors/#`` matched ``sensors/greenhouse/humidity`` → ``greenhouse/humidity``."""
    prefix = filter_prefix(topic_filter)
    if prefix and topic.startswith(prefix + "/"):
        return topic[len(prefix) + 1 :]
    if prefix == topic:
        return topic.rsplit("/", 1)[-1]
    return topic


def is_excluded(metric: str, patterns: list[str] | tuple[str, ...]) -> bool:
    return any(fnmatchcase(metric, p) for p in patterns)


# --------------------------------------------------------------------------- decoding


def topic_safe(name: str) -> bool:
    """A metric name must be publishable as a topic level: no wildcards, control characters
    or lone surrogates (a NUL would make the broker drop the connection)."""
    for ch in name:
        code = ord(ch)
        if ch in "+#" or code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF:
            return False
    return True


def _json_depth(obj: object) -> int:
    """Nesting depth of decoded JSON, iteratively (no recursion on hostile input)."""
    depth = 0
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in node)
    return depth


def _number(value: object) -> float | None:
    """A reading's value: numbers, booleans and the strings ON/OFF; None for anything else."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # a JSON integer with 400 digits
            return math.inf
    if isinstance(value, str):
        return BOOLEAN_STRINGS.get(value.strip().upper())
    return None


def parse_timestamp(raw: object) -> float:
    """Epoch seconds, epoch milliseconds or ISO-8601 → epoch seconds. Raises ValueError."""
    if isinstance(raw, bool):
        raise ValueError(f"timestamp must be a number or ISO-8601 string, got {raw!r}")
    if isinstance(raw, (int, float)):
        try:
            ts = float(raw)
        except OverflowError:
            raise ValueError("timestamp is out of range") from None
        if not math.isfinite(ts):
            raise ValueError(f"timestamp is not finite: {raw!r}")
        return ts / 1000.0 if abs(ts) >= EPOCH_MS_THRESHOLD else ts
    if isinstance(raw, str):
        text = raw.strip()
        try:
            return parse_timestamp(float(text))
        except ValueError:
            pass
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"timestamp {raw[:40]!r} is neither epoch seconds/milliseconds nor ISO-8601"
            ) from None
        if parsed.tzinfo is None:  # naive times are taken as UTC (documented)
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    raise ValueError(f"timestamp must be a number or ISO-8601 string, got {type(raw).__name__}")


def _check_time(ts: float, now: float, limits: DecodeLimits) -> Rejection | None:
    if ts < MIN_TIMESTAMP:
        return Rejection("ts_too_old", f"timestamp {ts:.0f} is before 2000-01-01")
    if ts > now + limits.future_tolerance_s:
        return Rejection(
            "ts_in_future",
            f"timestamp is {ts - now:.0f} s ahead of the local clock "
            f"(tolerance {limits.future_tolerance_s:.0f} s; is the device clock synchronised?)",
        )
    return None


def _reading(
    metric: str, value: float, ts_raw: object, unit: object, now: float, limits: DecodeLimits
) -> Reading | Rejection:
    if not math.isfinite(value):
        return Rejection("not_finite", f"value of {metric} is not a finite number")
    if ts_raw is None:
        ts, has_ts = now, False
    else:
        try:
            ts = parse_timestamp(ts_raw)
        except ValueError as exc:
            return Rejection("bad_timestamp", str(exc))
        has_ts = True
        bad = _check_time(ts, now, limits)
        if bad:
            return bad
    unit_text = str(unit)[:16] if isinstance(unit, (str, int, float)) and unit != "" else None
    return Reading(metric, value, ts, has_ts, unit_text)


def _first_timestamp(obj: dict) -> object:
    for key in TIMESTAMP_KEYS:
        if key in obj:
            return obj[key]
    return None


def _decode_object(metric: str, obj: dict, now: float, limits: DecodeLimits) -> list[Reading] | Rejection:
    ts_raw = _first_timestamp(obj)
    if "value" in obj:
        value = _number(obj["value"])
        if value is None:
            return Rejection("no_value", f'"value" is {str(obj["value"])[:40]!r}, not a number or boolean')
        result = _reading(metric, value, ts_raw, obj.get("unit"), now, limits)
        return result if isinstance(result, Rejection) else [result]
    # Flat multi-field object (Zigbee2MQTT style): every numeric/boolean field is a reading.
    readings: list[Reading] = []
    for key, raw in obj.items():
        if key in TIMESTAMP_KEYS or key == "unit" or not isinstance(key, str) or not key or not topic_safe(key):
            continue  # a key that cannot be a topic level is skipped like a non-numeric field
        value = _number(raw)
        if value is None:
            continue  # names, nested objects, other strings: skipped by design
        result = _reading(f"{metric}/{key}", value, ts_raw, None, now, limits)
        if isinstance(result, Rejection):
            return result
        readings.append(result)
    if not readings:
        return Rejection("no_value", "JSON object has no numeric or boolean field")
    return readings


def _decode_senml(metric: str, pack: list, now: float, limits: DecodeLimits) -> list[Reading] | Rejection:
    """RFC 8428 SenML JSON: base fields carry over to later records."""
    base_name, base_time, base_unit, base_value = "", 0.0, None, 0.0
    readings: list[Reading] = []
    for index, record in enumerate(pack):
        if not isinstance(record, dict):
            return Rejection("bad_senml", f"record {index} is not an object")
        try:
            if "bn" in record:
                if not isinstance(record["bn"], str):
                    return Rejection("bad_senml", f"record {index}: bn must be a string")
                base_name = record["bn"]
            if "bt" in record:
                base_time = float(record["bt"])
            if "bu" in record:
                base_unit = record["bu"]
            if "bv" in record:
                base_value = float(record["bv"])
            rel_time = float(record.get("t", 0.0))
        except (TypeError, ValueError, OverflowError):
            return Rejection("bad_senml", f"record {index}: bt/bv/t must be numbers")
        name = record.get("n", "")
        if not isinstance(name, str):
            return Rejection("bad_senml", f"record {index}: n must be a string")
        if "v" in record:
            value = _number(record["v"]) if not isinstance(record["v"], (str, bool)) else None
            if value is None:
                return Rejection("bad_senml", f"record {index}: v must be a number")
            value += base_value
        elif "vb" in record:
            if not isinstance(record["vb"], bool):
                return Rejection("bad_senml", f"record {index}: vb must be a boolean")
            value = 1.0 if record["vb"] else 0.0
        else:
            continue  # vs / vd / sum-only records carry no numeric reading
        full_name = (base_name + name).strip("/").replace(":", "/")
        if not full_name:
            return Rejection("bad_senml", f"record {index} has no name (bn + n is empty)")
        if not topic_safe(full_name) or "//" in full_name:
            return Rejection("bad_senml", f"record {index}: name {full_name[:40]!r} cannot be a topic level "
                                          "(no '+', '#', empty levels or control characters)")
        when = base_time + rel_time
        if not math.isfinite(when):
            return Rejection("bad_timestamp", f"record {index}: time is not finite")
        ts_raw: object = when if (base_time or rel_time) else None
        if ts_raw is not None and abs(when) < SENML_RELATIVE_LIMIT:
            ts_raw = now + when  # relative to now, per RFC 8428
        result = _reading(f"{metric}/{full_name}", value, ts_raw, record.get("u", base_unit), now, limits)
        if isinstance(result, Rejection):
            return result
        readings.append(result)
    if not readings:
        return Rejection("no_value", "SenML pack has no numeric or boolean record")
    return readings


def decode_payload(
    metric: str, payload: bytes, now: float, limits: DecodeLimits = DecodeLimits()
) -> list[Reading] | Rejection:
    """Turn one sensor payload into readings, or say precisely why not."""
    if len(payload) > limits.max_payload_bytes:
        return Rejection("too_large", f"{len(payload)} bytes > limit {limits.max_payload_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("invalid_utf8", f"invalid UTF-8 at byte {exc.start}")
    text = text.strip()
    if not text:
        return Rejection("no_value", "empty payload")
    try:
        obj = json.loads(text)
    except RecursionError:
        return Rejection("too_deep", f"JSON nested deeper than {limits.max_json_depth}")
    except ValueError as exc:
        if text[0] in "{[":  # meant to be JSON: say so rather than "no value"
            return Rejection("invalid_json", f"payload starts with {text[0]!r} but is not valid JSON: {exc}"[:160])
        value = _number(text)  # bare ON/OFF
        if value is None:
            return Rejection("no_value", f"payload {text[:40]!r} is not a number, boolean or JSON")
        return [Reading(metric, value, now, False)]
    # Depth cannot exceed the number of opening brackets: flat readings skip the walk.
    depth = _json_depth(obj) if text.count("{") + text.count("[") > limits.max_json_depth else 0
    if depth > limits.max_json_depth:
        return Rejection("too_deep", f"JSON nesting depth {depth} > limit {limits.max_json_depth}")
    if isinstance(obj, dict):
        return _decode_object(metric, obj, now, limits)
    if isinstance(obj, list):
        if any(isinstance(r, dict) for r in obj):  # a pack with a stray non-record is bad SenML
            return _decode_senml(metric, obj, now, limits)
        return Rejection("no_value", "a JSON array must be a SenML pack (a list of records)")
    value = _number(obj)
    if value is None:
        return Rejection("no_value", f"payload {text[:40]!r} is not a number or boolean")
    result = _reading(metric, value, None, None, now, limits)
    return result if isinstance(result, Rejection) else [result]
