"""edged's PUBLISH decoding equals paho's own, and the buffered reader loses nothing."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import wait_for
from edged.mqtt_wire import WireClient, decode_publish_fields


def _publish_body(topic: bytes, mid: int, qos: int, props: Properties | None, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:
        body += props.pack()
    return body + payload


_NO_NUL = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))  # MQTT strings forbid NUL


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=40).map(lambda t: t.encode()),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1]),
    mid=st.integers(1, 65535),
    dup=st.booleans(),
    retain=st.booleans(),
    v5=st.booleans(),
    response_topic=st.one_of(st.none(), st.text(_NO_NUL, min_size=1, max_size=20)),
    correlation=st.one_of(st.none(), st.binary(min_size=1, max_size=16)),
)
def test_fields_equal_paho_decode(topic, payload, qos, mid, dup, retain, v5, response_topic, correlation):
    props = None
    if v5:
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    packet = _publish_body(topic, mid, qos, props, payload)

    ours = decode_publish_fields(header, packet, v5)
    theirs = _packet.decode_publish(header, packet, MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
    assert ours[:6] == (theirs.topic, theirs.payload, theirs.qos, theirs.mid if qos else 0, theirs.dup, theirs.retain)
    if ours[6] is None:  # no properties on the wire: paho's object is empty too
        assert not v5 or theirs.properties.json() == Properties(PacketTypes.PUBLISH).json()
    else:
        assert ours[6].json() == theirs.properties.json()


def test_burst_is_read_whole_and_in_order(broker):
    """Thousands of readings arrive in few large reads (packets split across reads included)."""
    got: list[tuple[bytes, bytes, int]] = []
    done = threading.Event()
    total = 5000

    def sink(topic, payload, qos, mid, dup, retain, props):
        got.append((bytes(topic), payload, qos))
        if len(got) == total:
            done.set()

    sub = WireClient(callback_api_version=CallbackAPIVersion.VERSION2, client_id="wire-sub",
                     protocol=paho.MQTTv5)
    sub.on_publish_fields = sink
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("wire/#", qos=1)
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="wire-pub")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        assert subscribed.wait(10)
        infos = [pub.publish(f"wire/m{i % 7}", b"x" * (i % 200), qos=i % 2) for i in range(total)]
        for info in infos:
            info.wait_for_publish(10)
        wait_for(done.is_set, 20, what="every reading to arrive")
        expected = [(f"wire/m{i % 7}".encode(), b"x" * (i % 200), i % 2) for i in range(total)]
        for qos in (0, 1):  # MQTT orders each QoS flow, not the two against each other
            assert [m for m in got if m[2] == qos] == [m for m in expected if m[2] == qos]
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()


def slow_flood_reader(client_id: str, sink) -> tuple[WireClient, threading.Event]:
    """A wire client subscribed to flood/#, handing each message to ``sink``; the event is set
    once the subscription is acknowledged."""
    slow = WireClient(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
    slow.on_publish_fields = sink
    subscribed = threading.Event()
    slow.on_subscribe = lambda *a: subscribed.set()
    slow.on_connect = lambda c, u, f, rc, p: c.subscribe("flood/#", qos=0)
    return slow, subscribed


class Flood:
    """A paho client publishing to flood/x as fast as it can, from a thread, until stop()."""

    def __init__(self, client_id: str) -> None:
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(500):
                self.client.publish("flood/x", b"1" * 40, qos=0)
            time.sleep(0.001)  # lets the publishing client's loop write

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def test_a_flood_does_not_starve_outgoing_publishes(broker):
    """The buffered reader must hand the loop back for writes while readings keep coming."""
    received = threading.Event()
    slow, subscribed = slow_flood_reader("wire-slow", lambda *fields: time.sleep(0.0002))  # slower than the flood
    watcher = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="wire-watch")
    watcher.on_message = lambda c, u, m: received.set()
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe("out/#", qos=0)
    flood = Flood("wire-flood")
    clients = (slow, watcher, flood.client)
    for c in clients:
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
    try:
        assert subscribed.wait(10)
        wait_for(watcher.is_connected, 10, what="the watcher to connect")
        flood.start()
        wait_for(lambda: slow._buffered() > 0, 10, what="a backlog in the reader's buffer")
        slow.publish("out/state", b"still here", qos=0)
        wait_for(received.is_set, 5, what="the publish made during the flood")
    finally:
        flood.stop()
        for c in clients:
            c.disconnect()
            c.loop_stop()


def test_an_outgoing_packet_does_not_wait_for_the_backlog_with_qos1_in_flight(broker):
    """paho's own loop_read handles as many packets per call as there are QoS > 0 messages in
    flight; the wire client writes what was queued every few packets of a backlog instead."""
    consumed = [0]

    def sink(*fields):
        consumed[0] += 1
        time.sleep(0.0002)  # a consumer slower than the flood

    slow, subscribed = slow_flood_reader("wire-slow-qos1", sink)
    written = {}
    slow.on_publish = lambda c, u, mid, rc, p: written.setdefault(mid, consumed[0])
    flood = Flood("wire-flood-qos1")
    clients = (slow, flood.client)
    for c in clients:
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
    try:
        assert subscribed.wait(10)
        flood.start()
        wait_for(lambda: slow._buffered() > 0, 10, what="a backlog in the reader's buffer")
        for _ in range(300):  # their PUBACKs queue behind the backlog: 300 messages in flight
            slow.publish("bulk/x", b"q", qos=1)
        before = consumed[0]
        state_mid = slow.publish("out/state", b"now", qos=0).mid
        wait_for(lambda: state_mid in written, 10, what="the QoS 0 publish to be written")
        # paho's loop_read would handle ~300 packets first; the wire client writes every 2 ms,
        # i.e. after at most ~10 packets of this consumer (>= 0.2 ms each)
        assert written[state_mid] - before <= 20, (before, written[state_mid])
    finally:
        flood.stop()
        for c in clients:
            c.disconnect()
            c.loop_stop()


def test_qos2_publishes_reach_the_link_through_paho_path(broker):
    """edged subscribes at QoS 0/1, but a QoS 2 delivery (its own path in paho) must not vanish."""
    import uuid

    from edged.config import Settings
    from edged.messages import Topics
    from edged.mqtt import MqttLink

    node = f"w{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate({"node": {"id": node}, "mqtt": {"host": "127.0.0.1", "port": broker.port}})
    got = []
    link = MqttLink(settings, Topics(settings.mqtt.base_topic, node), got.append)
    link.set_wanted({"q2/#": 2})
    link.start()
    pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"q2-pub-{node}")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        wait_for(lambda: link.subscribed.is_set(), 10, what="the link's subscription")
        pub.publish("q2/a", b"42", qos=2).wait_for_publish(10)
        wait_for(lambda: got, 10, what="the QoS 2 message")
        assert (got[0].topic, got[0].payload, got[0].qos) == ("q2/a", b"42", 2)
    finally:
        pub.disconnect()
        pub.loop_stop()
        link.stop()
