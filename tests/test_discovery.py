"""Home Assistant MQTT discovery: payloads against HA's documented discovery fields, ids and
topics in HA's charset, and the retained configs on a real Mosquitto."""

from __future__ import annotations

import json
import re
import threading
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edged import __version__
from edged.discovery import (
    Discovery,
    anomaly_config,
    config_topic,
    metric_configs,
    node_key,
    removals,
    safe_id,
    score_config,
)
from edged.messages import Topics

from conftest import wait_for

TOPICS = Topics("edged", "pi4")
METRICS = [
    "greenhouse/humidity",
    "greenhouse/temperature",
    "a/b",
    "a.b",
    "a_b",
    "a b",
    "a__b",
    "door/contact",
    "zigbee/0x00158d0001a2b3c4/temperature",
    "température/salon",
    "x" * 300,
    "x" * 299 + "y",
    "-",
    "plain_metric-1",
]
# HA's discovery topic: <prefix>/<component>/[<node_id>/]<object_id>/config, ids in [a-zA-Z0-9_-].
TOPIC_RE = re.compile(r"^homeassistant/(sensor|binary_sensor)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config$")
# Documented (full, unabbreviated) MQTT entity options used by edged; no abbreviations.
DOCUMENTED_SENSOR = {
    "name", "unique_id", "object_id", "default_entity_id", "state_topic", "value_template", "availability_topic",
    "payload_available", "payload_not_available", "json_attributes_topic", "device", "origin", "qos",
    "state_class", "suggested_display_precision", "icon",
}
DOCUMENTED_BINARY = {
    "name", "unique_id", "object_id", "default_entity_id", "state_topic", "value_template", "availability_topic",
    "payload_available", "payload_not_available", "json_attributes_topic", "device", "origin", "qos",
    "payload_on", "payload_off", "device_class",
}
DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "sw_version"}
ABBREVIATIONS = {"stat_t", "val_tpl", "uniq_id", "avty_t", "pl_avail", "pl_not_avail", "dev", "ids", "mf", "mdl",
                 "sw", "obj_id", "json_attr_t", "dev_cla", "stat_cla", "pl_on", "pl_off", "o", "~"}


# --------------------------------------------------------------------------- ids


def test_safe_id_keeps_safe_names_and_maps_the_rest_deterministically():
    assert safe_id("plain_metric-1") == "plain_metric-1"
    mapped = safe_id("greenhouse/humidity")
    assert re.fullmatch(r"greenhouse_humidity_[0-9a-f]{8}", mapped)
    assert safe_id("greenhouse/humidity") == mapped  # deterministic (no per-process hash seed)
    ids = [safe_id(m) for m in METRICS]
    assert len(set(ids)) == len(METRICS), "distinct metrics must map to distinct ids"
    for i in ids:
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", i) and len(i) <= 96
    assert re.fullmatch(r"[0-9a-f]{8}", safe_id("///"))
    assert safe_id("") and re.fullmatch(r"[a-zA-Z0-9_-]+", safe_id(""))


def test_node_key():
    assert node_key(TOPICS) == "edged_pi4"
    assert node_key(Topics("home/edged", "pi.lan")) != node_key(Topics("home/edged", "pi_lan"))
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", node_key(Topics("home/edged", "pi.lan")))


# --------------------------------------------------------------------------- payloads


@pytest.mark.parametrize("metric", METRICS)
def test_payloads_carry_the_documented_fields(metric):
    for (topic, p), component, allowed in ((score_config("homeassistant", TOPICS, metric), "sensor", DOCUMENTED_SENSOR),
                                           (anomaly_config("homeassistant", TOPICS, metric), "binary_sensor",
                                            DOCUMENTED_BINARY)):
        assert TOPIC_RE.match(topic), topic
        assert topic.split("/")[1] == component
        assert set(p) <= allowed, set(p) - allowed
        assert not set(p) & ABBREVIATIONS
        # required by HA for these platforms, and what edged promises
        for key in ("state_topic", "unique_id", "name", "value_template", "device", "availability_topic"):
            assert p[key], key
        assert p["state_topic"] == f"edged/pi4/state/{metric}"
        assert p["json_attributes_topic"] == p["state_topic"]
        assert p["availability_topic"] == "edged/pi4/status"
        assert (p["payload_available"], p["payload_not_available"]) == ("online", "offline")
        assert set(p["device"]) == DEVICE_KEYS
        assert p["device"]["identifiers"] == ["edged_pi4"]
        assert p["device"]["sw_version"] == __version__
        assert p["device"]["manufacturer"] and p["device"]["model"] and p["device"]["name"] == "edged pi4"
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", p["object_id"])
        assert re.fullmatch(rf"{component}\.[a-z0-9_]+", p["default_entity_id"])
        # the entity name must not repeat the device name (HA strips it and warns)
        assert not p["name"].startswith(p["device"]["name"])
        assert metric in p["name"]
        assert p["qos"] in (0, 1, 2)
    _, binary = anomaly_config("homeassistant", TOPICS, metric)
    assert binary["device_class"] == "problem"
    assert (binary["payload_on"], binary["payload_off"]) == ("ON", "OFF")


def test_unique_ids_and_topics_are_unique_across_metrics_and_nodes():
    seen_ids, seen_topics = set(), set()
    for node in ("pi4", "jetson"):
        topics = Topics("edged", node)
        for metric in METRICS:
            for topic, payload in metric_configs("homeassistant", topics, metric):
                p = json.loads(payload)
                assert p["unique_id"] not in seen_ids
                assert topic not in seen_topics
                seen_ids.add(p["unique_id"])
                seen_topics.add(topic)
    assert len(seen_ids) == 2 * 2 * len(METRICS)


def test_value_templates_render_as_home_assistant_would():
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    _, score = score_config("homeassistant", TOPICS, "greenhouse/humidity")
    _, binary = anomaly_config("homeassistant", TOPICS, "greenhouse/humidity")

    def render(template, state):
        return env.from_string(template).render(value_json=state, value=json.dumps(state)).strip()

    state = {"value": 81.0, "ts": 1.0, "score": 0.9731, "status": "anomalous", "unit": "%"}
    assert float(render(score["value_template"], state)) == pytest.approx(0.9731)
    assert render(binary["value_template"], state) == binary["payload_on"]
    for status in ("learning", "ok", "stale", "muted"):
        assert render(binary["value_template"], {**state, "status": status}) == binary["payload_off"]
    # learning: score null renders "None", which HA's MQTT sensor takes as unknown
    assert render(score["value_template"], {**state, "score": None, "status": "learning"}) == "None"


def test_removals_are_empty_payloads_on_the_same_topics():
    pairs = removals("homeassistant", TOPICS, "a/b")
    assert [t for t, _ in pairs] == [t for t, _ in metric_configs("homeassistant", TOPICS, "a/b")]
    assert all(p == b"" for _, p in pairs)
    assert config_topic("ha", "sensor", TOPICS, "a/b").startswith("ha/sensor/edged_pi4/a_b_")


def test_bad_prefix_is_refused():
    for bad in ("", "home/#", "/homeassistant", "homeassistant/", "ha/+"):
        with pytest.raises(ValueError):
            Discovery(lambda *a, **k: None, TOPICS, bad)


# --------------------------------------------------------------------------- the class


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, bytes | str, int, bool]] = []

    def __call__(self, topic, payload, *, qos=0, retain=False, correlation_data=None):
        self.calls.append((topic, payload, qos, retain))
        return True

    def topics(self):
        return [c[0] for c in self.calls]


def test_discovery_class_lifecycle():
    rec = Recorder()
    d = Discovery(rec, TOPICS)
    assert d.ha_status_topic == "homeassistant/status"
    assert d.on_new_metric("greenhouse/humidity") is True
    assert d.on_new_metric("greenhouse/humidity") is False  # once per metric
    d.on_new_metric("door/contact")
    assert len(rec.calls) == 4
    assert all(qos == 1 and retain for _, _, qos, retain in rec.calls)
    assert all(TOPIC_RE.match(t) for t in rec.topics())

    rec.calls.clear()
    assert d.on_connect() == 4  # every (re)connect: everything again
    assert d.on_connect(["greenhouse/humidity", "tank/level"]) == 4  # resynchronised with the pipeline
    assert d.known() == ["greenhouse/humidity", "tank/level"]

    rec.calls.clear()
    assert d.on_ha_online(b"offline") == 0
    assert d.on_message("homeassistant/status", b"online") is True
    assert len(rec.calls) == 4
    assert d.on_message("sensors/x", b"online") is False

    rec.calls.clear()
    assert d.on_forget("tank/level") == 2
    assert [p for _, p, _, _ in rec.calls] == [b"", b""]
    assert all(retain for *_, retain in rec.calls)
    assert d.known() == ["greenhouse/humidity"]

    off = Recorder()
    disabled = Discovery(off, TOPICS, enabled=False)
    disabled.on_new_metric("a")
    disabled.on_connect(["a"])
    disabled.on_ha_online("online")
    disabled.on_forget("a")
    assert off.calls == []


def test_concurrent_new_metrics_announce_each_once():
    rec = Recorder()
    d = Discovery(rec, TOPICS)
    names = [f"m/{i}" for i in range(50)]
    threads = [threading.Thread(target=lambda: [d.on_new_metric(n) for n in names]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(rec.calls) == 2 * len(names)
    assert sorted(d.known()) == sorted(names)


# --------------------------------------------------------------------------- a real broker


class Client:
    def __init__(self, port: int):
        self.messages: dict[str, list[tuple[bytes, bool]]] = {}
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.setdefault(msg.topic, []).append((bytes(msg.payload), bool(msg.retain)))

    def subscribe(self, topic):
        self.subscribed.clear()
        self.c.subscribe(topic, 1)
        wait_for(self.subscribed.is_set, 5, what=f"SUBACK for {topic}")

    def publish(self, topic, payload, *, qos=0, retain=False, correlation_data=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        # Like MqttLink.publish, never block the network thread (a callback publishing, as the
        # daemon does for HA's birth message); elsewhere wait, so the test's order holds.
        if threading.current_thread() is not self.c._thread:
            info.wait_for_publish(5)
        return True

    def count(self, topic):
        with self.lock:
            return len(self.messages.get(topic, []))

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def retained_configs(port: int, prefix: str, expect: int) -> dict[str, dict]:
    """What a fresh subscriber (Home Assistant starting) gets: the retained configs."""
    fresh = Client(port)
    try:
        fresh.subscribe(f"{prefix}/#")
        if expect:
            wait_for(lambda: sum(fresh.count(t) for t in list(fresh.messages)) >= expect, 10,
                     what=f"{expect} retained configs")
        else:  # deletions: give the broker a round trip to deliver anything it still holds
            marker = f"{prefix}/zz-marker"
            fresh.publish(marker, b"x", qos=1)
            wait_for(lambda: fresh.count(marker), 5, what="the marker")
        with fresh.lock:
            return {t: json.loads(v[-1][0]) for t, v in fresh.messages.items()
                    if t.endswith("/config") and v[-1][1] and v[-1][0]}
    finally:
        fresh.close()


def test_retained_configs_on_a_real_broker(broker):
    prefix = f"ha{uuid.uuid4().hex[:8]}"  # the session broker is shared: a prefix of our own
    topics = Topics("edged", f"n{uuid.uuid4().hex[:6]}")
    daemon_side = Client(broker.port)
    d = Discovery(daemon_side.publish, topics, prefix)
    # What the daemon does: subscribe to HA's status topic, route it to the class.
    daemon_side.c.on_message = lambda c, u, msg: d.on_message(msg.topic, bytes(msg.payload))
    daemon_side.subscribe(d.ha_status_topic)
    try:
        d.on_new_metric("greenhouse/humidity")
        d.on_new_metric("door/contact")
        configs = retained_configs(broker.port, prefix, 4)
        assert len(configs) == 4
        for topic, p in configs.items():
            assert re.fullmatch(rf"{prefix}/(sensor|binary_sensor)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config", topic)
            assert p["availability_topic"] == topics.status
            assert p["state_topic"] in (topics.state("greenhouse/humidity"), topics.state("door/contact"))
        assert {p["unique_id"] for p in configs.values()} == {
            json.loads(pl)["unique_id"] for m in ("greenhouse/humidity", "door/contact")
            for _, pl in metric_configs(prefix, topics, m)}

        # Home Assistant restarts: its birth message brings every config again.
        ha = Client(broker.port)
        try:
            ha.subscribe(f"{prefix}/+/{node_key(topics)}/#")
            wait_for(lambda: sum(ha.count(t) for t in list(ha.messages)) >= 4, 10, what="retained configs")
            before = sum(ha.count(t) for t in list(ha.messages))
            ha.publish(f"{prefix}/status", b"online", qos=1)
            wait_for(lambda: sum(ha.count(t) for t in list(ha.messages)) >= before + 4, 10,
                     what="configs re-published after HA's birth message")
            with ha.lock:
                fresh = [v[-1] for v in ha.messages.values()]
            assert all(not retain for _, retain in fresh)  # live publishes, not retained replays
        finally:
            ha.close()

        # forget: the configs are gone for anyone who subscribes later.
        d.on_forget("door/contact")
        left = retained_configs(broker.port, prefix, 2)
        assert len(left) == 2
        assert all(p["state_topic"] == topics.state("greenhouse/humidity") for p in left.values())
    finally:
        for m in d.known():
            d.on_forget(m)
        daemon_side.close()
    assert retained_configs(broker.port, prefix, 0) == {}


# --------------------------------------------------------------------------- the daemon (once wired)

from edged.config import Settings  # noqa: E402

WIRED = "homeassistant" in Settings.model_fields


@pytest.mark.skipif(not WIRED, reason="[homeassistant] is not wired into config.py/app.py yet")
def test_daemon_announces_reannounces_and_removes(broker, daemon_factory, probe_factory):
    from conftest import start_node

    prefix = f"ha{uuid.uuid4().hex[:8]}"
    sensors = f"s{uuid.uuid4().hex[:8]}"
    d, probe = start_node(daemon_factory, probe_factory, broker.port,
                          f'[sensors]\ntopics = ["{sensors}/#"]\n[homeassistant]\nprefix = "{prefix}"\n')
    probe.subscribe(f"{prefix}/#")
    topics = Topics("edged", d.node)
    metric = "greenhouse/humidity"
    score_topic = config_topic(prefix, "sensor", topics, metric)
    anomaly_topic = config_topic(prefix, "binary_sensor", topics, metric)

    probe.publish(f"{sensors}/{metric}", "55.5")
    first = probe.wait_topic(score_topic, lambda m: m.payload != b"")
    assert first.json()["state_topic"] == f"{d.root}/state/{metric}"
    assert probe.wait_topic(anomaly_topic).json()["device_class"] == "problem"
    state = probe.wait_topic(f"{d.root}/state/{metric}")
    assert state.json()["status"] == "learning"  # what the score sensor shows as unknown

    # Home Assistant's birth message: the configs again.
    n = len(probe.on(score_topic))
    probe.publish(f"{prefix}/status", "online")
    wait_for(lambda: len(probe.on(score_topic)) > n, 10, what="configs re-published after HA's birth message")

    # forget: empty retained configs remove the entities.
    probe.publish(f"{d.root}/request/forget", json.dumps({"metric": metric, "transaction": "f1"}))
    assert probe.wait_topic(f"{d.root}/response/forget").json()["status"] == "ok"
    probe.wait_topic(score_topic, lambda m: m.payload == b"")
    probe.wait_topic(anomaly_topic, lambda m: m.payload == b"")
    assert d.stop() == 0
