"""The only paho-mqtt importer: connection, TLS, auth, LWT, backoff, subscriptions.

Reconnecting is owned by one policy: paho's own loop with ``reconnect_delay_set``
(exponential, capped at ``mqtt.reconnect_max_s``). Subscriptions are (re)made in
``on_connect``, and ``online`` is published there, so a broker restart is invisible to
users. Callbacks run on paho's network thread and only wrap messages into frozen
``RawMessage`` values for the lanes.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import threading
import time
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .auth import sign
from .config import Settings
from .logs import get_logger
from .messages import RawMessage, Topics
from .mqtt_wire import WireClient

log = get_logger("edged.mqtt")


def _quiet_paho(record: logging.LogRecord) -> bool:
    """paho logs every failed attempt and dropped socket as an ERROR of its own; edged already
    says so once, with the reason and a hint (mqtt_connect_failed / mqtt_disconnected)."""
    message = record.getMessage()
    return not message.startswith(("Client is not connected", "failed to receive on socket"))


class _Client(WireClient):
    """paho's client (with edged's receive path), remembering why the last connection
    attempt failed (paho drops it)."""

    last_error: BaseException | None = None

    def reconnect(self):
        try:
            result = super().reconnect()
        except OSError as exc:
            self.last_error = exc
            raise
        self.last_error = None
        return result


def explain_connect_error(exc: BaseException | None, host: str, port: int) -> tuple[str, str]:
    """(error, hint) for a failed connection attempt, in words a user can act on."""
    if exc is None:
        return "unknown", "see the broker's log"
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return text, "the broker's certificate is not trusted or does not match the host: check mqtt.ca_file and mqtt.host"
    if isinstance(exc, ssl.SSLError):
        if "WRONG_VERSION_NUMBER" in str(exc) or "record layer" in str(exc):
            return text, f"{host}:{port} does not speak TLS: set mqtt.tls = false or use the broker's TLS port"
        return text, "TLS handshake failed: check mqtt.ca_file, cert_file and key_file"
    if isinstance(exc, ConnectionRefusedError):
        return text, f"nothing listens on {host}:{port}: is the broker running, and are mqtt.host/port right?"
    if isinstance(exc, socket.gaierror):
        return text, f"cannot resolve {host!r}: check mqtt.host"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return text, f"{host}:{port} does not answer: network or firewall"
    return text, "see the broker's log"


class MqttLink:
    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        on_message: Callable[[RawMessage], None],
        on_connected: Callable[[], None] = lambda: None,
        *,
        primary: bool = True,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """``primary``: the node's session (persistent, LWT, ``online``). The other kind is the
        command link: requests only, a session of its own that starts clean (a request left
        from before a restart is not worth answering late), so that a request never waits
        behind a backlog of readings on the primary connection."""
        self.settings = settings
        self.primary = primary
        self.topics = topics
        self._on_message_cb = on_message
        self._on_connected_cb = on_connected
        # the command link: called when the broker refuses this connection for what it is (its
        # client id, user or rights), not for a passing reason: it will not be let in on a retry
        self._on_refused_cb = on_refused
        self._wanted: dict[str, int] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connected_at = 0.0  # time.monotonic() of the latest connect
        self.subscribed = threading.Event()  # this connection's SUBACK arrived
        # The primary link announces `online` itself unless the daemon takes that over (it
        # waits for the command link's subscriptions, so a request sent on `online` is heard).
        self.announce_on_connect = True
        self.stale_filters: list[str] = []  # unsubscribed when the broker kept an old session
        self.connects = 0
        self.publish_failures = 0
        self._closing = False
        self._refused = False
        # strict durability: QoS 1 readings are acknowledged by the caller (ack), not on receipt.
        # The command link carries no readings: it acknowledges on receipt.
        self.manual_ack = primary and settings.durability.mode == "strict"
        # Bumped on every connect and disconnect: an ack is only sent on the connection its
        # message came in on (after a reconnect the broker redelivers, and a packet id of the
        # old connection may name another message on the new one).
        self.generation = 0
        self._ack_lock = threading.Lock()
        cfg = settings.mqtt
        self.v5 = cfg.protocol == "v5"
        self.client_id = settings.client_id if primary else f"{settings.client_id}-commands"
        self.client = _Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else not primary,
            manual_ack=self.manual_ack,
        )
        paho_logger = logging.getLogger("paho")
        paho_logger.setLevel(logging.DEBUG if settings.log.level == "debug" else logging.WARNING)
        if _quiet_paho not in paho_logger.filters:
            paho_logger.addFilter(_quiet_paho)
        self.client.enable_logger(paho_logger)
        if cfg.username:
            password = cfg.password.get_secret_value() if cfg.password else None
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls:
            self.client.tls_set(
                ca_certs=cfg.ca_file or None,
                certfile=cfg.cert_file or None,
                keyfile=cfg.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if primary:
            self.client.will_set(topics.status, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=max(1, math.ceil(cfg.reconnect_max_s)))
        self.client.max_queued_messages_set(cfg.max_queued_messages)
        self.client.max_inflight_messages_set(cfg.max_inflight_messages)
        self.client.on_socket_open = set_no_delay
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish_fields = self._on_publish
        # QoS 2 (edged subscribes at most at QoS 1, but a broker may still send it) takes paho's path.
        self.client.on_message = lambda c, u, m: self._on_publish(m._topic, m.payload, m.qos, m.mid, bool(m.dup),
                                                                  bool(m.retain), m.properties or None)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        cfg = self.settings.mqtt
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = cfg.session_expiry_s if self.primary else 0
            if self.manual_ack:
                # The broker may have at most this many QoS 1 messages unacknowledged towards us
                # (the protocol's default is 65535): a bound on what waits for the WAL's commit.
                props.ReceiveMaximum = cfg.max_inflight_messages
        kwargs = {"clean_start": not self.primary, "properties": props} if self.v5 else {}
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s, **kwargs)
        self.client.loop_start()
        if self.primary:
            log.info("mqtt_connecting", host=cfg.host, port=cfg.port, protocol=cfg.protocol, tls=cfg.tls,
                     client_id=self.client_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline`` (retained), disconnect cleanly, keep the broker session."""
        if self.connected.is_set() and self.primary:
            info = self.client.publish(self.topics.status, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------ subscriptions
    def set_wanted(self, filters: dict[str, int]) -> None:
        """Make the subscriptions equal ``filters`` (filter → QoS), diffing against the current set."""
        with self._lock:
            added = {f: q for f, q in filters.items() if self._wanted.get(f) != q}
            removed = [f for f in self._wanted if f not in filters]
            self._wanted = dict(filters)
        if self.connected.is_set():
            if added:
                self.client.subscribe(list(added.items()))
            if removed:
                self.client.unsubscribe(removed)
        if added or removed:
            log.info("mqtt_subscriptions", added=sorted(added), removed=sorted(removed))

    # ------------------------------------------------------------------ publish
    def publish(
        self,
        topic: str,
        payload: str | bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> bool:
        props = None
        if correlation_data is not None and self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.publish_failures += 1
            return False
        return True

    # ------------------------------------------------------------------ acknowledgement (strict)
    def ack(self, mid: int, qos: int, generation: int) -> bool:
        """Acknowledge a QoS 1 message received on connection ``generation``; any thread. A
        message from an earlier connection is not acknowledged: the broker redelivers it."""
        if not self.manual_ack or qos == 0:
            return True
        with self._ack_lock:
            if generation != self.generation:
                return False
            self.client.ack(mid, qos)
        return True

    def _next_generation(self) -> None:
        with self._ack_lock:
            self.generation += 1

    # ------------------------------------------------------------------ callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = True  # the disconnect that follows is this refusal, already logged
            if not self.primary:  # the primary link says so once per attempt; no second line
                if self._on_refused_cb is not None and reason_code.value in POLICY_REFUSALS:
                    self._on_refused_cb(str(reason_code))
                return
            log.warning("mqtt_refused", reason=str(reason_code), host=self.settings.mqtt.host,
                        hint=_refusal_hint(str(reason_code)))
            return
        self._next_generation()
        self.connects += 1
        self.connected_at = time.monotonic()  # before `connected`: whoever sees it set finds this current
        self.connected.set()
        with self._lock:
            wanted = list(self._wanted.items())
        # Subscribe before announcing `online`: the broker handles one connection's packets in
        # order, so whoever reacts to `online` finds the subscriptions already in place.
        if self.stale_filters and getattr(flags, "session_present", False):
            stale = [f for f in self.stale_filters if f not in dict(wanted)]
            if stale:
                client.unsubscribe(stale)
        if wanted:
            client.subscribe(wanted)
        else:
            self.subscribed.set()
        if not self.primary:
            log.info("mqtt_commands_connected", subscriptions=len(wanted), connects=self.connects)
            return
        if self.announce_on_connect:
            self.announce_online()
        log.info("mqtt_connected", session_present=bool(getattr(flags, "session_present", False)),
                 subscriptions=len(wanted), connects=self.connects)
        self._on_connected_cb()

    def announce_online(self) -> None:
        self.client.publish(self.topics.status, "online", qos=1, retain=True)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if self.connected.is_set():
            self.subscribed.set()
            if not self.primary:
                self._on_connected_cb()

    def _on_connect_fail(self, client, userdata) -> None:
        # paho retries with its capped backoff; this runs once per failed attempt.
        if not self.primary:
            return
        cfg = self.settings.mqtt
        error, hint = explain_connect_error(getattr(client, "last_error", None), cfg.host, cfg.port)
        log.warning("mqtt_connect_failed", host=cfg.host, port=cfg.port, error=error, hint=hint,
                    retry_max_s=cfg.reconnect_max_s)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._next_generation()
        was = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        if not self.primary:
            self._refused = False
            if was and not self._closing:
                log.info("mqtt_commands_disconnected", reason=str(reason_code))
            return
        if was and not self._closing:
            log.warning("mqtt_disconnected", reason=str(reason_code))
        elif self._refused:
            self._refused = False
        elif not was and not self._closing:
            # The TCP connection opened but closed before any CONNACK: typically plain MQTT sent
            # to a TLS listener (the broker waits for a TLS ClientHello), or a broker refusing us.
            cfg = self.settings.mqtt
            hint = ("the broker closed the connection before answering: if port "
                    f"{cfg.port} is a TLS listener, set mqtt.tls = true (and mqtt.ca_file); otherwise see the broker's log"
                    if not cfg.tls else "the broker closed the TLS connection before answering: see the broker's log")
            log.warning("mqtt_handshake_failed", host=cfg.host, port=cfg.port, reason=str(reason_code), hint=hint,
                        retry_max_s=cfg.reconnect_max_s)

    def _on_publish(self, topic_bytes: bytes, payload: bytes, qos: int, mid: int, dup: bool, retain: bool,
                    props: Properties | None) -> None:
        topic = topic_bytes.decode("utf-8", "replace")  # brokers refuse invalid UTF-8 topics anyway
        if props is None or not self._is_request(topic):  # sensor readings: the hot path
            self._on_message_cb(RawMessage(topic, payload, time.time(), qos, mid, dup, retain))
            return
        correlation = getattr(props, "CorrelationData", None)
        self._on_message_cb(
            RawMessage(
                topic=topic,
                payload=payload,
                received=time.time(),
                qos=qos,
                mid=mid,
                dup=dup,
                retain=retain,
                response_topic=getattr(props, "ResponseTopic", None),
                correlation_data=bytes(correlation) if correlation is not None else None,
                user_properties=tuple(getattr(props, "UserProperty", ()) or ()),
            )
        )

    def _is_request(self, topic: str) -> bool:
        return topic.startswith(self.topics.request_prefix)


# CONNACK reasons that a retry will not change (MQTT 5 codes; paho maps 3.1.1's return codes 2, 4
# and 5 onto 133, 134 and 135): client identifier not valid, bad user name or password, not
# authorized, banned, bad authentication method
POLICY_REFUSALS = frozenset({133, 134, 135, 138, 140})


def _refusal_hint(reason: str) -> str:
    text = reason.lower()
    if "not authorized" in text or "bad user" in text or "password" in text:
        return "check mqtt.username and the password (EDGED_MQTT__PASSWORD, mqtt.password_file or the credential)"
    if "identifier" in text:
        return "the broker rejected mqtt.client_id"
    return "see the broker's log"


# --------------------------------------------------------------------------- short-lived clients
# Used by `edged simulate`, `edged status`, `edged ask`, tools and tests: same auth/TLS settings.


def set_no_delay(client, userdata, sock) -> None:
    """TCP_NODELAY on the broker connection. paho leaves Nagle's algorithm on, and MQTT is all
    small packets: a reply written right after the request's PUBACK waited for the broker's
    delayed ACK (~40 ms on Linux), once per hop that did the same (measured: an `ask` round trip of
    88 ms for a 1 ms answer, tools/bench_ask.py)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (a test double, a unix socket)
        pass


def connect_client(settings: Settings, host: str | None = None, port: int | None = None,
                   client_id: str = "", timeout: float = 10.0) -> paho.Client:
    """A connected client with a running network loop; raises ConnectionError with a reason."""
    cfg = settings.mqtt
    v5 = cfg.protocol == "v5"
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
    if cfg.tls:
        client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None, keyfile=cfg.key_file or None)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(c, u, flags, reason_code, props):
        if reason_code.is_failure:
            refused.append(str(reason_code))
        connected.set()

    client.on_connect = on_connect
    client.on_socket_open = set_no_delay
    host, port = host or cfg.host, port or cfg.port
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the MQTT broker at {host}:{port}: {exc.strerror or exc}") from None
    client.loop_start()
    if not connected.wait(timeout) or refused:
        client.loop_stop()
        why = refused[0] if refused else f"no CONNACK within {timeout:.0f} s"
        raise ConnectionError(f"MQTT broker at {host}:{port} refused the connection: {why}")
    return client


def request(settings: Settings, action: str, args: dict, timeout: float = 5.0) -> dict:
    """Send request/<action> and wait for the daemon's reply (v5 correlation, or transaction)."""
    import json
    import uuid

    topics = Topics(settings.mqtt.base_topic, settings.node_id)
    token = uuid.uuid4().hex
    reply_topic = f"{topics.root}/response/{action}/{token}" if settings.mqtt.protocol == "v5" else topics.response(action)
    got = threading.Event()
    box: dict = {}
    client = connect_client(settings, timeout=timeout)

    def on_message(c, u, msg):
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props else None
        if (corr is not None and bytes(corr) == token.encode()) or (isinstance(data, dict) and data.get("transaction") == token):
            box.update(data)
            got.set()

    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.subscribe(reply_topic, qos=1)
    subscribed.wait(timeout)
    props = None
    if settings.mqtt.protocol == "v5":
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = token.encode()
    topic, secret = topics.request_prefix + action, settings.mqtt.request_secret
    signed = sign(secret.get_secret_value() if secret else None, topic, json.dumps({**args, "transaction": token}),
                  v5=props is not None)
    if signed.user_properties:
        props.UserProperty = signed.user_properties
    client.publish(topic, signed.payload, qos=1, properties=props)
    try:
        if not got.wait(timeout):
            raise TimeoutError(f"no reply from node {topics.node!r} within {timeout:.0f} s (is edged running?)")
        return box
    finally:
        client.disconnect()
        client.loop_stop()
