"""Property-based tests over every decoder of untrusted input: sensor payloads
(``decode_payload``), requests (``parse_request``, ``RequestAuth.verify``) and configuration
(``load_settings`` from a file plus environment, ``set_value``).

The properties are what callers rely on:

- ``decode_payload`` returns ``list[Reading]`` or a ``Rejection`` and raises nothing; every
  rejection names a reason from ``REASONS`` with a non-empty detail; every reading has a
  finite value and a finite timestamp (stamped ones inside [2000-01-01, now + tolerance]),
  and a metric name that can be published as an MQTT topic level suffix.
- ``parse_request`` raises only ``ActionError``; ``RequestAuth.verify`` only ``AuthFailure``,
  and a signed request verifies once whatever its arguments.
- ``load_settings`` / ``set_value`` raise only ``ConfigError``, whose message names a key,
  an environment variable or the file; a failed ``set_value`` leaves the file unchanged.

Profiles: ``ci`` (default, ~200 examples per test) and ``soak`` (many); pick one with
``FUZZ_PROFILE=soak``, or set ``FUZZ_EXAMPLES=N``. ``tools/fuzz.py`` runs these same
properties for 100,000+ cases and reports rates and rejection counts.

Known bugs in modules this suite may not change are tolerated here (the example is
discarded and counted in ``KNOWN_HITS``) and pinned by strict-xfail reproducers at the end
of the file: fix the bug, and the reproducer's XPASS tells you to delete both entries.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import traceback
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from edged.auth import AuthFailure, RequestAuth, sign
from edged.commands import MAX_REQUEST_BYTES, ActionError, Request, parse_request
from edged.config import ConfigError, Settings, load_settings
from edged.config_file import set_value
from edged.messages import MIN_TIMESTAMP, REASONS, DecodeLimits, Reading, Rejection, decode_payload

# --------------------------------------------------------------------------- profiles

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=200, **_COMMON)
settings.register_profile("soak", max_examples=20_000, **_COMMON)
FUZZ = settings(settings.get_profile(os.environ.get("FUZZ_PROFILE", "ci")),
                **({"max_examples": int(os.environ["FUZZ_EXAMPLES"])} if os.environ.get("FUZZ_EXAMPLES") else {}))

# Tallies read by tools/fuzz.py (cases per property, rejections by reason, known bugs hit).
CASES: Counter[str] = Counter()
REJECTED: Counter[str] = Counter()
KNOWN_HITS: Counter[str] = Counter()
KNOWN_FIRST: dict[str, str] = {}

KNOWN_BUGS = {
    "decode_overflow": "messages.parse_timestamp: float() of a JSON integer beyond 1e308 raises OverflowError",
    "metric_not_topic_safe": "messages: JSON field names / SenML names become metric (topic) levels unchecked",
    "toml_not_configerror": "config.read_toml: RecursionError / ValueError from tomllib escape as non-ConfigError",
    "env_json_not_configerror": "config.env_overrides: deeply nested JSON in EDGED_* raises RecursionError",
    "secret_file_not_configerror": "config._read_secret: NUL in path (ValueError) / non-UTF-8 file escape",
    "set_value_non_table": "config_file.set_value: [section] that is not a table raises TypeError/AttributeError",
}


class KnownBug(Exception):
    """Raised by :func:`known_bug` outside hypothesis (tools/fuzz.py's direct loop)."""


def known_bug(kind: str, reproducer: str) -> None:
    """Count a known bug, remember its first reproducer, and discard the example."""
    assert kind in KNOWN_BUGS, kind
    KNOWN_HITS[kind] += 1
    KNOWN_FIRST.setdefault(kind, reproducer)
    if currently_in_test_context():
        reject()
    raise KnownBug(kind)


# --------------------------------------------------------------------------- shared strategies

NOW = 1_750_000_000.0
HUGE_INTS = [10**400, -(10**400), 10**309, 2**63, -(2**63) - 1, 2**64, 10**4000]
FUNNY_TEXT = ["", " ", "ON", "OFF", " on ", "off", "NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "-0",
              "1750000000", "1750000000000", "2025-06-15T15:06:40Z", "2025-06-15", "1999-12-31T23:59:59+14:00",
              "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "\u0000", "\ud800", "a+b", "#", "a/b",
              "/", "//", ":", "é", "\u2028", "\ufffe", "x" * 300]

texts = st.one_of(st.text(max_size=12), st.sampled_from(FUNNY_TEXT))
names = st.one_of(st.text(max_size=8), st.sampled_from(["a", "b/c", "", "+", "#", "a\u0000", "\udc80", "ts", "value",
                                                        "unit", "timestamp", "time", "n:m", "/x/", "linkquality"]))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.sampled_from(HUGE_INTS),
    st.floats(), st.floats(-1e12, 1e12), texts,
)
json_values = st.recursive(scalars, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(names, ch, max_size=4),
                           max_leaves=12)


def _iso(dt: datetime, sep: str, tz: str) -> str:
    return dt.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + tz


timestamps = st.one_of(
    st.floats(NOW - 1e6, NOW + 1e4),  # seconds around now
    st.integers(int(NOW * 1000) - 10**9, int(NOW * 1000) + 10**7),  # milliseconds
    st.integers(-(2**40), 2**40), st.floats(), st.sampled_from(HUGE_INTS), st.booleans(), st.none(),
    st.builds(_iso, st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
              st.sampled_from(["T", " "]), st.sampled_from(["", "Z", "z", "+00:00", "-05:30", "+14:00"])),
    texts, st.lists(st.integers(), max_size=2), st.dictionaries(names, st.integers(), max_size=2),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(names, scalars, max_size=3))


@st.composite
def value_objects(draw):
    """{"value": v, "ts"|"timestamp"|"time": t, "unit": u}, each member optional and of any type."""
    obj = {}
    if draw(st.integers(0, 5)):  # mostly present
        obj["value"] = draw(values)
    if draw(st.booleans()):
        obj[draw(st.sampled_from(["ts", "timestamp", "time"]))] = draw(timestamps)
    if draw(st.booleans()):
        obj["unit"] = draw(st.one_of(texts, st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)))
    return obj


multi_field = st.dictionaries(names, st.one_of(values, timestamps), max_size=8)


@st.composite
def senml_records(draw):
    rec = {}
    for key, strat in [
        ("bn", st.one_of(names, st.integers(), st.none())),
        ("bt", st.one_of(st.floats(NOW - 1e5, NOW), st.integers(0, 2**28), timestamps)),
        ("bu", st.one_of(texts, st.integers(), st.none())),
        ("bv", st.one_of(st.floats(), st.integers(), texts, st.sampled_from(HUGE_INTS))),
        ("n", st.one_of(names, st.integers(), st.none(), st.lists(st.integers(), max_size=1))),
        ("u", st.one_of(texts, st.integers())),
        ("v", st.one_of(st.floats(), st.integers(), st.sampled_from(HUGE_INTS), st.booleans(), texts, st.none())),
        ("vb", st.one_of(st.booleans(), st.integers(0, 1), texts)),
        ("vs", texts), ("vd", texts), ("s", st.floats()),
        ("t", st.one_of(st.floats(-1e4, 1e4), st.integers(-(2**29), 2**29), timestamps)),
    ]:
        if draw(st.integers(0, 2)) == 0:
            rec[key] = draw(strat)
    return rec


senml_packs = st.lists(st.one_of(senml_records(), senml_records(), scalars), min_size=0, max_size=6)


def dumps(obj, draw_style: int = 0) -> bytes:
    """JSON text with NaN/Infinity literals as Python writes them; a few layout styles."""
    if draw_style == 1:
        return json.dumps(obj, indent=1).encode("utf-8", "surrogatepass")
    if draw_style == 2:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8
    return json.dumps(obj, separators=(",", ":")).encode()


@st.composite
def deep_json(draw):
    depth = draw(st.integers(1, 6000))
    kind = draw(st.sampled_from(["list", "object", "senml"]))
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'[{"n":"x","v":' + b"[" * depth + b"1" + b"]" * depth + b"}]"


@st.composite
def wide_json(draw):
    width = draw(st.integers(1, 6000))
    kind = draw(st.sampled_from(["fields", "senml", "array"]))
    if kind == "fields":
        return json.dumps({f"f{i}": i for i in range(width)}).encode()
    if kind == "senml":
        return json.dumps([{"bn": "dev/", "bt": NOW}] + [{"n": f"s{i}", "v": i, "t": -i} for i in range(width)]).encode()
    return json.dumps(list(range(width))).encode()


@st.composite
def mutated(draw, base):
    """A structurally valid payload with a few bytes flipped, cut or inserted (invalid UTF-8 too)."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"{", b"]", b",", b'"',
                                                  b"NaN", b"1e400", b"-", b"\\u", b"\xef\xbb\xbf"]))
        elif op == 2:
            del data[pos:]
        else:
            data[pos:pos] = data[: draw(st.integers(0, 16))]
    return bytes(data)


structured = st.one_of(
    st.builds(dumps, value_objects(), st.integers(0, 2)),
    st.builds(dumps, multi_field, st.integers(0, 2)),
    st.builds(dumps, senml_packs, st.integers(0, 2)),
    st.builds(dumps, json_values, st.integers(0, 2)),
)
sensor_payloads = st.one_of(
    structured,
    st.binary(max_size=200),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 400, b"-1e400", b"true", b"ON", b" off\n",
                     b"\xef\xbb\xbf21.5", b"", b"  ", b"null", b'"ON"', b"[]", b"{}", b"[{}]", b"[1, {}]"]),
    deep_json(), wide_json(), mutated(structured),
)
limits_strategy = st.one_of(
    st.just(DecodeLimits()),
    st.builds(DecodeLimits, max_payload_bytes=st.integers(16, 4096), max_json_depth=st.integers(1, 64),
              future_tolerance_s=st.floats(0, 1e6)),
)
nows = st.one_of(st.just(NOW), st.floats(MIN_TIMESTAMP, 4e9))


# --------------------------------------------------------------------------- decode_payload


def topic_safe(metric: str) -> bool:
    """Publishable as part of a topic: valid UTF-8, no wildcard, no NUL (MQTT 5 §4.7, §1.5.4)."""
    if any(c in metric for c in "+#\x00"):
        return False
    try:
        metric.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_decode(metric: str, payload: bytes, now: float, limits: DecodeLimits = DecodeLimits()) -> None:
    """The decode_payload properties for one input (shared with tools/fuzz.py)."""
    CASES["decode_payload"] += 1
    shown = f"{payload!r}" if len(payload) <= 2000 else f"{payload[:2000]!r} + ... ({len(payload)} bytes)"
    repro = f"decode_payload({metric!r}, {shown}, {now!r}, {limits!r})"
    try:
        out = decode_payload(metric, payload, now, limits)
    except OverflowError as exc:
        known_bug("decode_overflow", f"{repro}: OverflowError: {exc}")
    if isinstance(out, Rejection):
        assert out.reason in REASONS, repro
        assert isinstance(out.detail, str) and out.detail.strip(), repro
        if len(payload) > limits.max_payload_bytes:
            assert out.reason == "too_large", repro
        REJECTED[out.reason] += 1
        return
    assert isinstance(out, list) and out, repro
    REJECTED["accepted"] += 1
    for r in out:
        assert isinstance(r, Reading), repro
        assert isinstance(r.value, float) and math.isfinite(r.value), repro
        assert isinstance(r.ts, float) and math.isfinite(r.ts), repro
        assert r.metric == metric or r.metric.startswith(metric + "/"), repro
        if r.has_ts:
            assert MIN_TIMESTAMP <= r.ts <= now + limits.future_tolerance_s, repro
        else:
            assert r.ts == now, repro
        assert r.unit is None or (isinstance(r.unit, str) and 0 < len(r.unit) <= 16), repro
    unsafe = [r.metric for r in out if not topic_safe(r.metric)]
    if unsafe:
        known_bug("metric_not_topic_safe", f"{repro} -> metric {unsafe[0]!r}")


@FUZZ
@given(payload=sensor_payloads, now=nows, limits=limits_strategy)
def test_decode_payload_any_input(payload, now, limits):
    check_decode("dev/sensor", payload, now, limits)


@FUZZ
@given(obj=value_objects(), now=nows)
def test_decode_value_objects(obj, now):
    check_decode("m", dumps(obj), now)


@FUZZ
@given(pack=senml_packs, now=nows, style=st.integers(0, 2))
def test_decode_senml_packs(pack, now, style):
    check_decode("m", dumps(pack, style), now)


@FUZZ
@given(obj=multi_field, now=nows)
def test_decode_multi_field_objects(obj, now):
    check_decode("zigbee/dev", dumps(obj), now)


@FUZZ
@given(payload=st.one_of(deep_json(), wide_json()), limits=limits_strategy)
def test_decode_deep_and_wide_json(payload, limits):
    check_decode("m", payload, NOW, limits)


def test_decode_fixed_edge_cases():
    """Named cases the generators might take long to find, checked every run."""
    for payload in [b"NaN", b"Infinity", b"-Infinity", b'{"value": NaN}', b'{"value": Infinity}', b'{"a": -Infinity}',
                    b"1" + b"0" * 400, b'{"value": 1' + b"0" * 400 + b"}", b'[{"n": "x", "v": 1e400}]',
                    b'[{"bn": "a/", "bt": 1750000000}]', b'[{"bn": "a/", "bt": 1750000000, "bu": "C"}, {"n": "t", "v": 1}]',
                    b'[{"n": "s", "vs": "text"}, {"n": "d", "vd": "AAEC"}]', b'[{"bt": 1750000000, "n": "x", "v": 1, "t": -5}]',
                    b'[{"n": "", "v": 1}]', b'[{"n": 5, "v": 1}]', b'[{"n": "x", "v": 1, "vb": true}]',
                    b'[{"n": "x", "vb": 1}]', b'[{"n": "x", "v": 1}, 5]', b'{"value": "21.5"}', b'{"value": {"v": 1}}',
                    b'{"value": 1, "ts": "yesterday"}', b'{"value": 1, "ts": true}', b'{"value": 1, "unit": ["C"]}',
                    b"\xff\xfe", b"\xed\xa0\x80", b'"\\ud800"', b"[" * 100000, b'{"a": {"b": 1}}', b"{\"a\": 1,}"]:
        check_decode("m", payload, NOW)


# --------------------------------------------------------------------------- parse_request and verify

request_payloads = st.one_of(
    structured, st.binary(max_size=200), st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(lambda obj, tx: json.dumps({**obj, "transaction": tx}).encode(),
              st.dictionaries(names, json_values, max_size=4), json_values),
    deep_json(), mutated(structured),
    st.integers(MAX_REQUEST_BYTES - 2, MAX_REQUEST_BYTES + 2).map(lambda n: b"{" + b" " * (n - 2) + b"}"),
)


def check_parse_request(action: str, payload: bytes, received: float) -> None:
    CASES["parse_request"] += 1
    repro = f"parse_request({action!r}, {payload[:400]!r}, {received!r})"
    try:
        r = parse_request(action, payload, received)
    except ActionError as exc:
        assert str(exc).strip(), repro
        REJECTED["request_error"] += 1
        return
    REJECTED["request_ok"] += 1
    assert isinstance(r, Request) and r.action == action and r.received is received, repro
    assert len(payload) <= MAX_REQUEST_BYTES, repro
    assert isinstance(r.args, dict) and "transaction" not in r.args, repro
    assert r.transaction is None or isinstance(r.transaction, (str, int)), repro
    assert r.text is None or (isinstance(r.text, str) and r.text == r.text.strip() and r.text), repro
    assert not (r.text and r.args), repro


@FUZZ
@given(action=st.one_of(st.sampled_from(["ask", "status", "mute"]), st.text(max_size=10)), payload=request_payloads,
       received=st.floats())
def test_parse_request_any_input(action, payload, received):
    check_parse_request(action, payload, received)


SECRET = b"fuzz-secret"
props_strategy = st.lists(st.tuples(st.sampled_from(["ts", "hmac", "x"]),
                                    st.one_of(texts, st.just("1750000000.000"), st.just("0" * 64))), max_size=4)


def check_verify(topic: str, payload: bytes, props: list) -> None:
    CASES["verify"] += 1
    auth = RequestAuth(SECRET, 60, lambda: NOW)
    try:
        out = auth.verify(topic, payload, props)
    except AuthFailure as exc:
        REJECTED[f"auth_{exc.reason}"] += 1
        return
    raise AssertionError(f"forged request accepted: verify({topic!r}, {payload[:200]!r}, {props!r}) -> {out[:80]!r}")


@FUZZ
@given(topic=st.text(max_size=30), payload=request_payloads, props=props_strategy)
def test_verify_refuses_unsigned_input_and_raises_only_authfailure(topic, payload, props):
    check_verify(topic, payload, props)


def check_sign_roundtrip(topic: str, args: dict, v5: bool, skew: float, flip: int | None) -> None:
    CASES["sign_verify"] += 1
    auth = RequestAuth(SECRET, 60, lambda: NOW)
    try:
        signed = sign(SECRET, topic, json.dumps(args), v5=v5, now=NOW + skew)
    except ValueError:  # an argument json cannot write back (e.g. 5,000 digits): not signable
        return
    if flip is not None:  # any change to the payload is refused
        data = bytearray(signed.payload)
        data[flip % len(data)] ^= 0x01
        try:
            auth.verify(topic, bytes(data), signed.user_properties)
        except AuthFailure:
            REJECTED["auth_tampered"] += 1
        else:  # a flip inside a JSON string escape may leave the same object: then it is still the same request
            assert not v5 and json.loads(bytes(data)) == json.loads(signed.payload) or bytes(data) == signed.payload
        return
    body = auth.verify(topic, signed.payload, signed.user_properties)
    REJECTED["auth_ok"] += 1
    if v5:
        assert body == signed.payload
    else:
        assert json.dumps(json.loads(body), sort_keys=True) == json.dumps(
            {k: v for k, v in args.items() if k not in ("ts", "hmac")}, sort_keys=True)
    with pytest.raises(AuthFailure):
        auth.verify(topic, signed.payload, signed.user_properties)  # once only


@FUZZ
@given(topic=st.text(max_size=30), args=st.dictionaries(names, json_values, max_size=5), v5=st.booleans(),
       skew=st.floats(-59, 59), flip=st.none() | st.integers(0, 10**6))
def test_sign_then_verify_roundtrip(topic, args, v5, skew, flip):
    check_sign_roundtrip(topic, args, v5, skew, flip)


# --------------------------------------------------------------------------- configuration


def _section_keys() -> dict[str, list[str]]:
    return {name: list(f.annotation.model_fields) for name, f in Settings.model_fields.items()}


SECTIONS = _section_keys()
KNOWN_KEYS = [f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks]
_TMP = Path(tempfile.mkdtemp(prefix="edged-fuzz-"))
(_TMP / "adir").mkdir(exist_ok=True)
(_TMP / "binary").write_bytes(b"\xff\xfe\x00secret")
(_TMP / "secret.txt").write_text("s3cret\n")
FILE_VALUES = ["", str(_TMP / "missing"), str(_TMP / "adir"), str(_TMP / "binary"), str(_TMP / "secret.txt"),
               "rel/missing", "a\u0000b"]


class _TooManyDigits:
    """Stands for an integer Python refuses to print (over 4,300 digits): written as such in TOML."""

    def __repr__(self) -> str:
        return "<1 followed by 4,500 zeros>"


TOO_MANY_DIGITS = _TooManyDigits()


def toml_value(v) -> str:
    """A TOML literal for ``v`` (our own emitter: it must also write what tomlkit refuses)."""
    if v is TOO_MANY_DIGITS:
        return "1" + "0" * 4500
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\u007f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, datetime):
        return v.isoformat()
    return '""'


toml_scalars = st.one_of(st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([10**30, TOO_MANY_DIGITS]), st.floats(),
                         st.text(max_size=12), st.sampled_from(["v5", "v311", "wall", "data", "sensors/#", "a/+/b",
                                                                 "#", "debug", "json", "zscore", "cpu"]),
                         st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)))
toml_values = st.recursive(toml_scalars, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(
    st.sampled_from(["match", "sensitivity", "unit", "x"]), ch, max_size=3), max_leaves=6)


@st.composite
def config_documents(draw):
    """(TOML text, keys it mentions): known sections/keys with values of any type, some unknown ones."""
    sections: dict[str, dict] = {}
    mentioned: set[str] = set()
    for _ in range(draw(st.integers(0, 6))):
        section = draw(st.one_of(st.sampled_from(list(SECTIONS)), st.sampled_from(["mqq", "Node", "x"])))
        key = draw(st.one_of(st.sampled_from(SECTIONS.get(section, ["k"]) or ["k"]), st.sampled_from(["prot", "x"])))
        value = draw(st.sampled_from(FILE_VALUES)) if key.endswith("_file") else draw(toml_values)
        sections.setdefault(section, {})[key] = value
        mentioned |= {section, f"{section}.{key}"}
    lines = []
    for section, kv in sections.items():
        lines.append(f"[{json.dumps(section)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in kv.items()]
    if draw(st.integers(0, 4)) == 0:  # sensors.override as an array of tables
        lines.append("[[sensors.override]]")
        lines += [f"{k} = {toml_value(draw(toml_values))}" for k in draw(st.lists(
            st.sampled_from(["match", "sensitivity", "expected_interval_s", "unit", "bogus"]), max_size=3, unique=True))]
        mentioned |= {"sensors", "sensors.override"}
    text = "\n".join(lines) + "\n"
    return text, mentioned


raw_config_texts = st.one_of(
    st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.integers(1, 3000).map(lambda n: "a = " + "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: "a = " + "{b = " * n + "1" + "}" * n),
    st.sampled_from(["[mqtt]\nport = 1" + "0" * 5000, "[mqtt]\nport = 1883\n[mqtt]\n", "mqtt = 5\n", "[mqtt\n",
                     "[sensors]\noverride = 3\n", "[[mqtt]]\n", "[node]\nid = \"a/b\"\n", "\ufeff[node]\n"]),
)
env_names = st.one_of(st.sampled_from([f"EDGED_{k.replace('.', '__').upper()}" for k in KNOWN_KEYS]),
                      st.sampled_from(["EDGED_MQTT", "EDGED_X__Y", "EDGED___", "EDGED_A__B__C", "EDGED_MQTT__PROT"]))
env_values = st.one_of(st.text(max_size=10).filter(lambda s: "\x00" not in s), st.sampled_from(
    ["1884", "[1, 2]", "{\"a\": 1}", "[", "{", "true", "v5", "nan", "-1", "1" + "0" * 5000, "[" * 5000,
     " [\"sensors/#\"]", str(_TMP / "binary")]))
environments = st.dictionaries(env_names, env_values, max_size=3)


def _names_something(msg: str, path: Path, mentioned: set[str], environ: dict[str, str]) -> bool:
    return (str(path) in msg or any(k in msg for k in mentioned) or any(n in msg for n in environ)
            or any(k in msg for k in KNOWN_KEYS) or any(f"{s}:" in msg or f"{s}." in msg for s in SECTIONS))


def check_load_settings(text: str | bytes, environ: dict[str, str], mentioned: set[str] = frozenset()) -> None:
    CASES["load_settings"] += 1
    path = _TMP / "edged.toml"
    if isinstance(text, str):
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    else:
        path.write_bytes(text)
    repro = f"load_settings(<file {text[:300]!r}>, environ={environ!r})"
    try:
        result = load_settings(path, environ=environ)
    except ConfigError as exc:
        msg = str(exc)
        assert msg.strip(), repro
        assert _names_something(msg, path, set(mentioned), environ), f"{repro}: message names no key or file: {msg!r}"
        REJECTED["config_error"] += 1
        return
    except RecursionError as exc:
        frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
        kind = "env_json_not_configerror" if "env_overrides" in frames else "toml_not_configerror"
        known_bug(kind, f"{repro}: RecursionError")
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
            known_bug("toml_not_configerror", f"{repro}: ValueError: {exc}")
        known_bug("secret_file_not_configerror", f"{repro}: {type(exc).__name__}: {exc}")
    assert isinstance(result, Settings), repro
    REJECTED["config_ok"] += 1


@FUZZ
@given(doc=config_documents(), environ=environments)
def test_load_settings_documents(doc, environ):
    text, mentioned = doc
    check_load_settings(text, environ, mentioned)


@FUZZ
@given(text=raw_config_texts, environ=st.one_of(st.just({}), environments))
def test_load_settings_raw_text(text, environ):
    check_load_settings(text, environ)


@FUZZ
@given(doc=config_documents(), bad=st.binary(max_size=8))
def test_load_settings_invalid_utf8(doc, bad):
    check_load_settings(doc[0].encode("utf-8", "surrogatepass") + b"\xff" + bad, {})


def check_set_value(text: str, key: str, raw: str) -> None:
    CASES["set_value"] += 1
    path = _TMP / "set.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    before = path.read_bytes()
    repro = f"set_value(<file {text[:300]!r}>, {key!r}, {raw!r})"
    try:
        set_value(path, key, raw)
    except ConfigError as exc:
        assert str(exc).strip(), repro
        assert path.read_bytes() == before, f"{repro}: a failed set changed the file"
        REJECTED["set_error"] += 1
        return
    except (TypeError, AttributeError, KeyError) as exc:
        known_bug("set_value_non_table", f"{repro}: {type(exc).__name__}: {exc}")
    REJECTED["set_ok"] += 1
    try:  # what set wrote must load, except that a secret *_file need not exist yet
        load_settings(path, environ={})
    except ConfigError as exc:
        assert "_file" in str(exc) and "secret file" in str(exc), f"{repro}: wrote a file that does not load: {exc}"


@FUZZ
@given(doc=st.one_of(config_documents(), st.sampled_from([("mqtt = 5\n", set()), ("[mqtt]\nport = 1883\n", set()),
                                                           ("mqtt = [1]\n", set()), ('node = "x"\n', set())])),
       key=st.one_of(st.sampled_from(KNOWN_KEYS), st.sampled_from(["mqtt", "mqtt.", ".port", "a.b.c", "mqt.port",
                                                                    "mqtt.prot", "sensors.override.match"])),
       raw=st.one_of(st.sampled_from(["1884", "true", "[\"a/#\"]", "v311", "{a = 1}", "1e400", "nan", "\"\"", "[",
                                      "1" + "0" * 5000, "2024-01-01T00:00:00"]), st.text(max_size=12)))
def test_set_value_any_input(doc, key, raw):
    check_set_value(doc[0], key, raw)


# --------------------------------------------------------------------------- known bugs, pinned
# Each reproducer fails today; when the proposed fix lands it XPASSes (strict): delete the
# test and the KNOWN_BUGS entry. (All six were fixed; the reproducers below now guard against regressions.)


def test_known_bug_huge_integer_timestamp():
    out = decode_payload("m", b'{"value": 1, "ts": 1' + b"0" * 400 + b"}", NOW)
    assert isinstance(out, Rejection) and out.reason == "bad_timestamp"


@pytest.mark.parametrize("payload", [b'{"a+b": 1}', b'[{"n": "#", "v": 1}]', b'{"\\ud800": 1}', b'{"a\\u0000": 1}'])
def test_known_bug_metric_names_must_be_topic_safe(payload):
    out = decode_payload("m", payload, NOW)
    assert isinstance(out, Rejection) or all(topic_safe(r.metric) for r in out)


@pytest.mark.parametrize("text", ["a = " + "[" * 2000 + "]" * 2000, "[mqtt]\nport = 1" + "0" * 5000])
def test_known_bug_toml_errors_are_config_errors(text, tmp_path):
    path = tmp_path / "edged.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})


def test_known_bug_deep_json_in_environment_is_a_config_error(tmp_path):
    path = tmp_path / "edged.toml"
    path.write_text("")
    with pytest.raises(ConfigError, match="EDGED_MQTT__PORT"):
        load_settings(path, environ={"EDGED_MQTT__PORT": "[" * 100_000})


@pytest.mark.parametrize("secret_file", ["a\u0000b", str(_TMP / "binary")], ids=["nul-in-path", "binary-file"])
def test_known_bug_secret_file_errors_are_config_errors(secret_file, tmp_path):
    path = tmp_path / "edged.toml"
    path.write_text(f"[mqtt]\npassword_file = {json.dumps(secret_file)}\n")
    with pytest.raises(ConfigError, match="password_file"):
        load_settings(path, environ={})


def test_known_bug_set_value_into_a_non_table(tmp_path):
    path = tmp_path / "edged.toml"
    path.write_text("mqtt = 5\n")
    with pytest.raises(ConfigError):
        set_value(path, "mqtt.port", "1884")
    assert path.read_text() == "mqtt = 5\n"
