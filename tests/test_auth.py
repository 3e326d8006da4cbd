"""Request authentication (docs/SECURITY.md): sign / verify, the command lane's refusals,
and both wire forms over a real Mosquitto (in process: MqttLink + CommandLane).

The daemon end-to-end test (a config key wiring RequestAuth into app.py) is not here yet:
app.py and config.py belong to another change.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import threading
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import wait_for
from edged.auth import (
    NOT_AUTHENTICATED,
    AuthFailure,
    RequestAuth,
    canonical_json,
    compute_mac,
    sign,
)
from edged.commands import ActionRegistry, CommandLane, parse_request
from edged.messages import RawMessage, Topics
from edged.stats import Stats

SECRET = b"correct horse battery staple"
NOW = 1_750_000_000.0
TOPIC = "edged/n1/request/status"


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def auth(window_s: float = 60.0, clock: Clock | None = None, **kw) -> RequestAuth:
    return RequestAuth(SECRET, window_s, clock or Clock(), **kw)


def refused(a: RequestAuth, topic: str, payload: bytes, props=()) -> str:
    with pytest.raises(AuthFailure) as exc:
        a.verify(topic, payload, props)
    return exc.value.reason


# --------------------------------------------------------------------------- the MAC itself


def test_mac_is_hmac_sha256_over_ts_topic_payload():
    body = b'{"metric":"tank/level"}'
    expected = hmac.new(SECRET, b"1750000000.000\n" + TOPIC.encode() + b"\n" + body, hashlib.sha256).hexdigest()
    assert compute_mac(SECRET, "1750000000.000", TOPIC, body) == expected
    signed = sign(SECRET, TOPIC, body, v5=True, now=NOW)
    assert signed.payload == body
    assert signed.user_properties == [("ts", "1750000000.000"), ("hmac", expected)]


def test_v311_canonical_form_is_sorted_compact_ascii_without_ts_and_hmac():
    obj = {"z": 1, "a": "é", "transaction": "t1", "nested": {"b": [1, 2], "a": None}}
    assert canonical_json(obj) == b'{"a":"\\u00e9","nested":{"a":null,"b":[1,2]},"transaction":"t1","z":1}'
    signed = sign(SECRET, TOPIC, json.dumps(obj), v5=False, now=NOW)
    assert signed.user_properties == []
    sent = json.loads(signed.payload)
    assert sent["ts"] == "1750000000.000"
    assert sent["hmac"] == compute_mac(SECRET, "1750000000.000", TOPIC, canonical_json(obj))
    # Key order and whitespace do not matter: the receiver re-canonicalises.
    shuffled = ('{ "hmac": "%s",\n "nested": {"a": null, "b": [1, 2]}, "ts": "1750000000.000", "z": 1, '
                '"transaction": "t1", "a": "\\u00e9" }' % sent["hmac"]).encode()
    body = auth().verify(TOPIC, shuffled)
    assert json.loads(body) == obj
    request = parse_request("status", body, NOW)
    assert request.transaction == "t1" and request.args == {"z": 1, "a": "é", "nested": {"b": [1, 2], "a": None}}


def test_v311_integer_ts_stands_for_its_decimal_text():
    mac = compute_mac(SECRET, "1750000000", TOPIC, b"{}")
    assert auth().verify(TOPIC, json.dumps({"ts": 1750000000, "hmac": mac}).encode()) == b"{}"


def test_sign_replaces_existing_fields_and_needs_json_for_v311():
    signed = sign(SECRET, TOPIC, b'{"ts": "old", "hmac": "old", "x": 1}', v5=False, now=NOW)
    assert auth().verify(TOPIC, signed.payload) == b'{"x":1}'
    assert json.loads(sign(SECRET, TOPIC, b"", v5=False, now=NOW).payload).keys() == {"ts", "hmac"}
    with pytest.raises(ValueError, match="JSON object"):
        sign(SECRET, TOPIC, "how warm is it?", v5=False)


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("jq")), reason="needs openssl and jq")
def test_shell_recipe_from_security_md(tmp_path):
    """The documented shell signing recipe produces MACs the daemon accepts (both forms)."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    script = r"""
set -eu
SECRET=$(cat "$1"); TOPIC=$2; ARGS=$3; TS=$4
# MQTT v5: MAC over ts \n topic \n payload (the payload exactly as published)
printf '%s\n%s\n%s' "$TS" "$TOPIC" "$ARGS" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1
# MQTT 3.1.1: MAC over the canonical arguments, then add ts and hmac to the object
BODY=$(printf '%s' "$ARGS" | jq -acS 'del(.ts, .hmac)')
MAC=$(printf '%s\n%s\n%s' "$TS" "$TOPIC" "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)
printf '%s' "$ARGS" | jq -c --arg ts "$TS" --arg mac "$MAC" '. + {ts: $ts, hmac: $mac}'
"""
    args = '{"metric": "tank/level", "transaction": "sh-1", "note": "grüße"}'
    out = subprocess.run(["bash", "-c", script, "sign", str(secret_file), TOPIC, args, "1750000000.5"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    v5_mac, v311_payload = out[0], out[1]
    a = auth()
    assert a.verify(TOPIC, args.encode(), [("ts", "1750000000.5"), ("hmac", v5_mac)]) == args.encode()
    body = a.verify(TOPIC, v311_payload.encode())
    assert json.loads(body) == json.loads(args)


# --------------------------------------------------------------------------- verify: accepted


def test_good_v5_request_is_accepted_once_and_payload_is_untouched():
    a = auth()
    signed = sign(SECRET, TOPIC, b'{"transaction": 7}', now=NOW - 30)
    assert a.verify(TOPIC, signed.payload, signed.user_properties) == b'{"transaction": 7}'
    assert refused(a, TOPIC, signed.payload, signed.user_properties) == "replay"


def test_v5_plain_text_payload_is_fine_when_signed():
    signed = sign(SECRET, "edged/n1/request/ask", "how warm is the greenhouse?", now=NOW)
    assert auth().verify("edged/n1/request/ask", signed.payload, signed.user_properties) == signed.payload


def test_uppercase_hex_and_other_user_properties_are_accepted():
    signed = sign(SECRET, TOPIC, b"{}", now=NOW)
    props = [("client", "x"), ("ts", signed.user_properties[0][1]), ("hmac", signed.user_properties[1][1].upper())]
    assert auth().verify(TOPIC, b"{}", props) == b"{}"


def test_no_secret_means_no_authentication():
    for secret in (None, b"", ""):
        a = RequestAuth(secret, 60, Clock())
        assert not a.enabled
        assert a.verify(TOPIC, b"plain text") == b"plain text"
        assert sign(secret, TOPIC, "x") == (b"x", [])
    assert RequestAuth("text secret", 60, Clock()).enabled


def test_window_edges():
    a = auth(window_s=60)
    for ts in (NOW - 60, NOW + 60, NOW):
        s = sign(SECRET, TOPIC, b"{}", now=ts)
        a.verify(TOPIC, s.payload, s.user_properties)
    for ts in (NOW - 60.01, NOW + 60.01, NOW - 3600, 0.0):
        s = sign(SECRET, TOPIC, b"{}", now=ts)
        assert refused(a, TOPIC, s.payload, s.user_properties) == "stale"


# --------------------------------------------------------------------------- verify: refused


def test_bad_mac_wrong_secret_topic_payload_or_ts():
    a = auth()
    s = sign(SECRET, TOPIC, b'{"metric": "a"}', now=NOW)
    (_, ts), (_, mac) = s.user_properties
    assert refused(a, TOPIC, b'{"metric": "b"}', s.user_properties) == "bad_mac"
    assert refused(a, "edged/n1/request/forget", s.payload, s.user_properties) == "bad_mac"
    assert refused(a, TOPIC, s.payload, [("ts", "1750000001.000"), ("hmac", mac)]) == "bad_mac"
    wrong = sign(b"another secret", TOPIC, s.payload, now=NOW)
    assert refused(a, TOPIC, wrong.payload, wrong.user_properties) == "bad_mac"
    # A v311 MAC does not verify after an argument was changed.
    v311 = json.loads(sign(SECRET, TOPIC, b'{"metric": "a"}', v5=False, now=NOW).payload)
    v311["metric"] = "b"
    assert refused(a, TOPIC, json.dumps(v311).encode()) == "bad_mac"
    # ... and nothing was remembered: the genuine request still goes through.
    assert a.verify(TOPIC, s.payload, s.user_properties)


def test_plain_text_is_refused_without_v5_properties():
    a = auth()
    for payload in (b"how warm is it?", b"", b"  ", b"42", b'"text"'):
        assert refused(a, TOPIC, payload) == "plain_text"


@pytest.mark.parametrize(
    "props,reason",
    [
        ([("ts", "1750000000")], "missing"),
        ([("hmac", "0" * 64)], "missing"),
        ([("ts", "1750000000"), ("ts", "1750000000"), ("hmac", "0" * 64)], "malformed"),
        ([("ts", "1750000000"), ("hmac", "0" * 63)], "malformed"),
        ([("ts", "1750000000"), ("hmac", "g" * 64)], "malformed"),
        ([("ts", "1.75e9"), ("hmac", "0" * 64)], "malformed"),
        ([("ts", "-1750000000"), ("hmac", "0" * 64)], "malformed"),
        ([("ts", " 1750000000"), ("hmac", "0" * 64)], "malformed"),
        ([("ts", "nan"), ("hmac", "0" * 64)], "malformed"),
        ([("ts", "1" * 40), ("hmac", "0" * 64)], "malformed"),
    ],
)
def test_missing_or_malformed_properties(props, reason):
    assert refused(auth(), TOPIC, b"{}", props) == reason


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b'{"metric": "a"}', "missing"),
        (b'{"ts": "1750000000"}', "missing"),
        (b'{"hmac": "' + b"0" * 64 + b'"}', "missing"),
        (b'{"ts": 1750000000.5, "hmac": "' + b"0" * 64 + b'"}', "malformed"),  # a float: send a string
        (b'{"ts": true, "hmac": "' + b"0" * 64 + b'"}', "malformed"),
        (b'{"ts": "1750000000", "hmac": 5}', "malformed"),
        (b'{"ts": -1, "hmac": "' + b"0" * 64 + b'"}', "malformed"),
        (b"{not json", "malformed"),
        (b"[1, 2]", "plain_text"),
        (b"\xff\xfe{}", "malformed"),
    ],
)
def test_missing_or_malformed_json_fields(payload, reason):
    assert refused(auth(), TOPIC, payload) == reason


def test_replay_of_v311_request_with_reordered_keys_is_still_a_replay():
    a = auth()
    payload = sign(SECRET, TOPIC, b'{"a": 1, "b": 2}', v5=False, now=NOW).payload
    a.verify(TOPIC, payload)
    obj = json.loads(payload)
    reordered = json.dumps(dict(reversed(list(obj.items())))).encode()
    assert refused(a, TOPIC, reordered) == "replay"


def test_replay_cache_is_bounded_and_eviction_never_reopens_a_replay():
    clock = Clock()
    a = auth(clock=clock, max_entries=8)
    signed = [sign(SECRET, TOPIC, b"{}", now=NOW - 50 + i) for i in range(20)]
    for s in signed:
        a.verify(TOPIC, s.payload, s.user_properties)
        assert len(a) <= 8
    for s in signed:  # evicted or not, every one of them stays refused
        assert refused(a, TOPIC, s.payload, s.user_properties) == "replay"
    fresh = sign(SECRET, TOPIC, b"{}", now=NOW)
    assert a.verify(TOPIC, fresh.payload, fresh.user_properties) == b"{}"


def test_replay_cache_forgets_what_the_window_refuses_anyway():
    clock = Clock()
    a = auth(clock=clock, window_s=60)
    first = sign(SECRET, TOPIC, b"{}", now=NOW)
    a.verify(TOPIC, first.payload, first.user_properties)
    clock.t += 61
    later = sign(SECRET, TOPIC, b"{}", now=clock.t)
    a.verify(TOPIC, later.payload, later.user_properties)
    assert len(a) == 1
    assert refused(a, TOPIC, first.payload, first.user_properties) == "stale"


def test_constructor_checks_its_arguments():
    with pytest.raises(ValueError):
        RequestAuth(SECRET, 0, Clock())
    with pytest.raises(ValueError):
        RequestAuth(SECRET, float("nan"), Clock())
    with pytest.raises(ValueError):
        RequestAuth(SECRET, 60, Clock(), max_entries=0)


# --------------------------------------------------------------------------- the command lane


class Sent(list):
    def __call__(self, topic, payload, *, qos=0, retain=False, correlation_data=None):
        self.append((topic, json.loads(payload), correlation_data))
        return True


class FakeLog:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict]] = []

    def warning(self, event, **kw):
        self.warnings.append((event, kw))

    def exception(self, event, **kw):
        self.warnings.append((event, kw))


@pytest.fixture
def lane(monkeypatch):
    import edged.commands as commands

    fake_log = FakeLog()
    monkeypatch.setattr(commands, "log", fake_log)
    topics = Topics("edged", "n1")
    registry = ActionRegistry()
    seen: list = []
    registry.register("status", lambda r: seen.append(r) or {"args": r.args, "text": r.text})
    registry.register("ask", lambda r: seen.append(r) or {"text": r.text})
    sent, stats = Sent(), Stats()
    clock = Clock()
    cl = CommandLane(topics, registry, sent, stats, auth=RequestAuth(SECRET, 60, clock))
    cl.sent, cl.seen, cl.fake_log, cl.clock = sent, seen, fake_log, clock
    return cl


def msg(topic=TOPIC, payload=b"{}", props=(), response_topic=None, correlation=None) -> RawMessage:
    return RawMessage(topic, payload, NOW, qos=1, response_topic=response_topic, correlation_data=correlation,
                      user_properties=tuple(props))


def test_lane_serves_signed_requests_in_both_forms(lane):
    s = sign(SECRET, TOPIC, b'{"metric": "x", "transaction": "t5"}', now=NOW)
    lane.handle(msg(payload=s.payload, props=s.user_properties, response_topic="edged/n1/response/status/abc",
                    correlation=b"abc"))
    assert lane.sent[-1] == ("edged/n1/response/status/abc",
                             {"status": "ok", "data": {"args": {"metric": "x"}, "text": None}, "transaction": "t5"},
                             b"abc")
    s = sign(SECRET, TOPIC, b'{"metric": "y", "transaction": 9}', v5=False, now=NOW)
    lane.handle(msg(payload=s.payload))
    assert lane.sent[-1] == ("edged/n1/response/status",
                             {"status": "ok", "data": {"args": {"metric": "y"}, "text": None}, "transaction": 9}, None)
    ask = "edged/n1/request/ask"
    s = sign(SECRET, ask, "is the door open?", now=NOW)
    lane.handle(msg(topic=ask, payload=s.payload, props=s.user_properties))
    assert lane.sent[-1][1] == {"status": "ok", "data": {"text": "is the door open?"}}
    assert lane.stats.counters["requests_unauthenticated"] == 0


def test_lane_refuses_everything_else_with_one_uninformative_answer(lane):
    good = sign(SECRET, TOPIC, b'{"transaction": "t1"}', now=NOW)
    lane.handle(msg(payload=good.payload, props=good.user_properties))
    cases = [
        msg(payload=b'{"transaction": "t1"}'),  # unsigned JSON
        msg(payload=b"status please"),  # plain text
        msg(payload=good.payload, props=good.user_properties),  # replay
        msg(payload=b'{"transaction": "t1", "x": 1}', props=good.user_properties),  # tampered
        msg(payload=good.payload, props=sign(SECRET, TOPIC, good.payload, now=NOW - 600).user_properties),  # stale
        msg(payload=good.payload, props=[("ts", "x"), ("hmac", "y")]),  # malformed
    ]
    for m in cases:
        lane.handle(m)
    replies = [r for _, r, _ in lane.sent[1:]]
    assert len(replies) == len(cases)
    for reply in replies:
        assert reply["status"] == "error" and reply["error"] == NOT_AUTHENTICATED == "request not authenticated"
        assert set(reply) <= {"status", "error", "transaction"}
    assert replies[0]["transaction"] == "t1"  # so a 3.1.1 caller can match its refusal
    assert len(lane.seen) == 1  # only the genuine request reached a handler
    assert lane.stats.counters["requests_unauthenticated"] == len(cases)
    assert lane.stats.counters["requests_failed"] == len(cases)
    assert lane.stats.counters["requests"] == len(cases) + 1
    # Logged once for the whole burst (at most once a minute), with the count when it logs again.
    assert [e for e, _ in lane.fake_log.warnings] == ["request_refused"]


def test_lane_logs_refusals_at_most_once_a_minute(lane, monkeypatch):
    import edged.commands as commands

    t = [1000.0]
    monkeypatch.setattr(commands.time, "monotonic", lambda: t[0])
    for _ in range(5):
        lane.handle(msg(payload=b"{}"))
        t[0] += 10
    assert len(lane.fake_log.warnings) == 1
    t[0] = 1000.0 + 60
    lane.handle(msg(payload=b"{}"))
    assert len(lane.fake_log.warnings) == 2
    assert lane.fake_log.warnings[1][1]["refused"] == 5  # 4 quiet ones plus this one


def test_lane_refusal_never_replies_outside_the_nodes_response_tree(lane):
    lane.handle(msg(payload=b"{}", response_topic="sensors/greenhouse/temperature", correlation=b"c"))
    lane.handle(msg(payload=b"{}", response_topic="edged/n1/response/status/tok", correlation=b"d"))
    assert [(t, c) for t, _, c in lane.sent] == [("edged/n1/response/status", b"c"),
                                                   ("edged/n1/response/status/tok", b"d")]


def test_lane_too_large_request_is_refused_as_too_large_unread(lane):
    lane.handle(msg(payload=b"{" + b" " * 20000 + b"}"))
    assert "too large" in lane.sent[-1][1]["error"]
    assert lane.stats.counters["requests_unauthenticated"] == 0


def test_lane_without_auth_or_secret_is_unchanged():
    for auth_arg in ({}, {"auth": None}, {"auth": RequestAuth(None, 60, Clock())}):
        registry = ActionRegistry()
        registry.register("status", lambda r: {"text": r.text})
        sent = Sent()
        CommandLane(Topics("edged", "n1"), registry, sent, Stats(), **auth_arg).handle(msg(payload=b"plain"))
        assert sent == [("edged/n1/response/status", {"status": "ok", "data": {"text": "plain"}}, None)]


def test_lane_survives_a_verification_bug(lane, monkeypatch):
    def boom(*a):
        raise RuntimeError("bug")

    monkeypatch.setattr(lane.auth, "verify", boom)
    lane.handle(msg(payload=b"{}"))
    assert lane.sent[-1][1]["error"] == NOT_AUTHENTICATED
    assert lane.seen == []


# --------------------------------------------------------------------------- over a real broker


@pytest.mark.parametrize("protocol", ["v5", "v311"])
def test_signed_requests_over_mosquitto(broker, protocol):
    """paho → MqttLink → RawMessage.user_properties → CommandLane → reply, both wire forms."""
    from edged.config import Settings
    from edged.mqtt import MqttLink

    node = f"a{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate({"node": {"id": node},
                                        "mqtt": {"host": "127.0.0.1", "port": broker.port, "protocol": protocol}})
    topics = Topics(settings.mqtt.base_topic, node)
    registry = ActionRegistry()
    registry.register("status", lambda r: {"args": r.args})
    box: dict = {}
    link = MqttLink(settings, topics, lambda m: box.setdefault("lane").handle(m))
    box["lane"] = CommandLane(topics, registry, link.publish, Stats(), auth=RequestAuth(SECRET, 60))
    link.set_wanted({topics.request_filter: 1})
    link.start()
    client_proto = paho.MQTTv5 if protocol == "v5" else paho.MQTTv311
    client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, protocol=client_proto)
    replies: list[dict] = []
    lock = threading.Lock()

    def on_message(c, u, m):
        with lock:
            replies.append(json.loads(m.payload))

    client.on_message = on_message
    try:
        wait_for(link.connected.is_set, 10, what="MqttLink to connect")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.subscribe(f"{topics.root}/response/#", 1)
        topic = topics.request_prefix + "status"

        def round_trip():  # both subscriptions are live once an (unsigned) ping is answered
            client.publish(topic, b'{"transaction": "ping"}', qos=1)
            with lock:
                return any(r.get("transaction") == "ping" for r in replies)

        wait_for(round_trip, 10, interval=0.2, what="the request subscription")
        with lock:
            replies.clear()
        signed = sign(SECRET, topic, json.dumps({"metric": "m", "transaction": "good"}), v5=protocol == "v5")
        props = None
        if signed.user_properties:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = signed.user_properties
        client.publish(topic, signed.payload, qos=1, properties=props).wait_for_publish(5)
        client.publish(topic, signed.payload, qos=1, properties=props).wait_for_publish(5)  # a replay
        client.publish(topic, json.dumps({"transaction": "plain"}), qos=1).wait_for_publish(5)
        wait_for(lambda: sum(r.get("transaction") != "ping" for r in replies) >= 3, 10, what="three replies")
        with lock:
            got = [r for r in replies if r.get("transaction") != "ping"]
        by_tx = {r.get("transaction"): r for r in got}
        assert got[0] == {"status": "ok", "data": {"args": {"metric": "m"}}, "transaction": "good"}
        assert got[1] == {"status": "error", "error": NOT_AUTHENTICATED, "transaction": "good"}
        assert by_tx["plain"] == {"status": "error", "error": NOT_AUTHENTICATED, "transaction": "plain"}
    finally:
        client.disconnect()
        client.loop_stop()
        link.stop()
