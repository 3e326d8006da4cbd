"""paho's client with a leaner receive path for the flood of sensor readings.

A bare paho consumer spends most of its time outside the application: per PUBLISH it makes
about four system calls (a ``select`` and three ``recv`` for the command byte, the length
and the body), builds an MQTTv5 ``Properties`` object even when the packet carries none,
an ``MQTTMessage`` with its own ``threading.Condition``, and walks the topic matcher for
filtered callbacks that edged never registers. Each of those system calls also releases
the GIL, which the sensor lane is waiting for, so they cost far more than their own time.

``WireClient`` changes two things and leaves the protocol to paho:

- reads come from a 64 KiB buffer filled by one ``recv``, and ``loop_read`` goes on while
  the buffer holds bytes, so one wake-up handles hundreds of packets (but reads the socket
  only once, and writes what was queued every 2 ms meanwhile, so that writes and pings are never
  starved by a flood);
- QoS 0 and 1 PUBLISH packets are decoded here into plain fields and handed to
  ``on_publish_fields``; MQTTv5 properties are parsed (by paho) only when present.
  QoS 2 and everything else take paho's own path.

It relies on paho 2.x internals (``_sock_recv``, ``_in_packet``, ``_send_puback``, ``_packet_read``,
``_packet_write``, ``_loop_rc_handle``);
pyproject pins ``paho-mqtt < 3`` and tests/test_mqtt_wire.py checks the decoding against
paho's own ``decode_publish``.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

READ_CHUNK = 65536
# While a backlog is drained, what was queued goes out at most this often: a reply or a state
# waits ~2 ms, and at QoS 1 the PUBACKs of a burst leave in a few sends, not one send per packet.
DRAIN_WRITE_EVERY_S = 0.002

# topic, payload, qos, mid, dup, retain, properties (None when the packet has none)
PublishSink = Callable[[bytes, bytes, int, int, bool, bool, Optional[Properties]], None]


class MalformedPublish(ValueError):
    pass


def decode_publish_fields(header: int, packet: bytes, v5: bool) -> tuple:
    """The fields of a PUBLISH packet (``packet`` = everything after the fixed header)."""
    qos = (header & 0x06) >> 1
    if len(packet) < 2:
        raise MalformedPublish("PUBLISH shorter than its topic length")
    topic_end = 2 + int.from_bytes(packet[0:2], "big")
    if topic_end > len(packet):
        raise MalformedPublish("PUBLISH topic runs past the packet")
    topic = packet[2:topic_end]
    if not v5 and not topic:
        raise MalformedPublish("topic can't be empty in MQTTv3")
    pos = topic_end
    mid = 0
    if qos:
        if pos + 2 > len(packet):
            raise MalformedPublish("PUBLISH has no packet id")
        mid = int.from_bytes(packet[pos:pos + 2], "big")
        pos += 2
    properties = None
    if v5:
        if pos < len(packet) and packet[pos] == 0:  # property length 0: the common case
            pos += 1
        else:
            properties = Properties(PacketTypes.PUBLISH)
            _, length = properties.unpack(packet[pos:])
            pos += length
    return topic, bytes(packet[pos:]), qos, mid, bool(header & 0x08), bool(header & 0x01), properties


class WireClient(paho.Client):
    on_publish_fields: PublishSink | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._reads_left = 1

    def reconnect(self):
        self._rbuf, self._rpos = b"", 0  # bytes of a dead connection must not reach the new one
        return super().reconnect()

    def _buffered(self) -> int:
        return len(self._rbuf) - self._rpos

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            if self._reads_left <= 0:
                raise BlockingIOError  # paho keeps the partial packet and resumes after select()
            self._reads_left -= 1
            chunk = super()._sock_recv(max(bufsize, READ_CHUNK))  # raises BlockingIOError when empty
            if len(chunk) <= bufsize:
                self._rbuf, self._rpos = b"", 0
                return chunk  # b"" (closed) included
            self._rbuf, self._rpos = chunk, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:self._rpos]  # may be short: paho asks again for the rest

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """One socket read, then every packet it brought, one at a time, with what was queued
        meanwhile (a reply, a state, PUBACKs) written between them every DRAIN_WRITE_EVERY_S: an
        outgoing packet waits ~2 ms, not for the rest of a 64 KB backlog. (paho's own loop_read
        handles as many packets per call as there are QoS > 0 messages in flight, whatever
        ``max_packets`` says, so it is not called here.)"""
        # One socket read per call: under a flood the socket never runs dry, and paho's loop
        # must still get round to its select(), keepalive pings and reconnects. select() cannot
        # see bytes already in the buffer, so they are all handled before going back to it.
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        self._reads_left = 1
        write_rc = MQTTErrorCode.MQTT_ERR_SUCCESS  # AGAIN: the send buffer is full, select() waits for it
        wrote = False
        last_write = time.monotonic()
        while True:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:  # the buffer is empty and the one read is spent
                break
            if write_rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.want_write():
                now = time.monotonic()
                if now - last_write >= DRAIN_WRITE_EVERY_S:
                    # _packet_write, not loop_write: a failed write must not close the socket before
                    # the packets already received (a broker's DISCONNECT with its reason) are handled
                    write_rc = self._packet_write()
                    wrote, last_write = True, now
        if wrote:
            if self.want_write():
                self._call_socket_register_write()
            else:
                self._call_socket_unregister_write()
        if write_rc > 0:
            return self._loop_rc_handle(write_rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        sink = self.on_publish_fields
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos == 3:
            self._easy_log(paho.MQTT_LOG_ERR, "malformed PUBLISH: QoS 3")
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        if sink is None or qos == 2:  # paho's path; MqttLink's on_message forwards to the same sink
            return super()._handle_publish()
        try:
            topic, payload, qos, mid, dup, retain, properties = decode_publish_fields(
                header, self._in_packet["packet"], self._protocol == MQTTProtocolVersion.MQTTv5)
        except Exception as exc:  # noqa: BLE001 - a broken packet ends the connection, as in paho
            self._easy_log(paho.MQTT_LOG_ERR, "malformed PUBLISH: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        with self._in_callback_mutex:
            try:
                sink(topic, payload, qos, mid, dup, retain, properties)
            except Exception as err:  # noqa: BLE001 - paho's own rule for callbacks
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS
