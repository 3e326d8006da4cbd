"""The command lane: request/<action> → registry → reply, on its own thread.

Replies follow DESIGN.md: to the MQTT v5 Response Topic with the Correlation Data echoed
when the request has them, else to ``<root>/response/<action>``; the ``transaction`` field
is echoed either way. A slow action never blocks the sensor lane (separate thread and
queue), and a sensor flood never starves commands (separate queue).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .auth import NOT_AUTHENTICATED, AuthFailure, RequestAuth
from .logs import get_logger
from .messages import RawMessage, Topics
from .stats import Stats

log = get_logger("edged.commands")

MAX_REQUEST_BYTES = 16 * 1024
# Refused (unauthenticated) requests draw at most one log line per this many seconds.
AUTH_LOG_EVERY_S = 60.0


class ActionError(Exception):
    """A request that cannot be served; the message goes back to the caller as is."""


@dataclass(frozen=True, slots=True)
class Request:
    action: str
    args: dict[str, Any]
    text: str | None  # plain-text payloads (e.g. a question for `ask`)
    transaction: Any
    received: float


Handler = Callable[[Request], dict]


class ActionRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        self._handlers[name] = handler

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)


def parse_request(action: str, payload: bytes, received: float) -> Request:
    if len(payload) > MAX_REQUEST_BYTES:
        raise ActionError(f"request too large: {len(payload)} bytes (limit {MAX_REQUEST_BYTES})")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ActionError("request payload is not valid UTF-8") from None
    if not text:
        return Request(action, {}, None, None, received)
    if text[0] == "{":
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise ActionError("request payload starts with '{' but is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ActionError("request JSON must be an object")
        transaction = obj.pop("transaction", None)
        if transaction is not None and not isinstance(transaction, (str, int)):
            raise ActionError("transaction must be a string or an integer")
        return Request(action, obj, None, transaction, received)
    return Request(action, {}, text, None, received)


def _best_effort_transaction(payload: bytes) -> Any:
    """The ``transaction`` of a refused request, so the caller can match the refusal."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    transaction = obj.get("transaction") if isinstance(obj, dict) else None
    if isinstance(transaction, bool) or not isinstance(transaction, (str, int)):
        return None
    if isinstance(transaction, str) and len(transaction) > 128:
        return None
    if isinstance(transaction, int) and abs(transaction) >= 2**63:
        return None
    return transaction


class CommandLane:
    def __init__(self, topics: Topics, registry: ActionRegistry, publish, stats: Stats, queue_size: int = 256,
                 auth: RequestAuth | None = None) -> None:
        self.topics = topics
        self.registry = registry
        self.publish = publish
        self.stats = stats
        self.auth = auth  # None, or a RequestAuth without a secret: requests are not authenticated
        self._auth_log_at = -float("inf")  # monotonic time of the last refusal log line
        self._auth_log_pending = 0
        self._queue: deque[RawMessage] = deque(maxlen=queue_size)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.last_progress = time.monotonic()

    def offer(self, msg: RawMessage) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.stats.incr("commands_dropped")
        self._queue.append(msg)
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def run(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            while self._queue:
                self.last_progress = time.monotonic()  # a long `ask` is one request, not a stall
                self.handle(self._queue.popleft())
            self.last_progress = time.monotonic()
            if self._stop.is_set() and not self._queue:
                return

    def _refuse(self, msg: RawMessage, action: str, failure: AuthFailure) -> None:
        """Count, log (at most once a minute), and answer without saying what failed."""
        self.stats.incr("requests_unauthenticated")
        self.stats.incr("requests_failed")
        now = time.monotonic()
        self._auth_log_pending += 1
        if now - self._auth_log_at >= AUTH_LOG_EVERY_S:
            log.warning("request_refused", reason=failure.reason, topic=msg.topic[:200],
                        refused=self._auth_log_pending, hint="requests must be signed with the shared secret "
                        "(docs/SECURITY.md); check the client's secret and clock")
            self._auth_log_at, self._auth_log_pending = now, 0
        reply: dict[str, Any] = {"status": "error", "error": NOT_AUTHENTICATED}
        transaction = _best_effort_transaction(msg.payload) if len(msg.payload) <= MAX_REQUEST_BYTES else None
        if transaction is not None:
            reply["transaction"] = transaction
        # An unauthenticated sender must not make the daemon publish to a topic of its choosing:
        # a v5 Response Topic is honoured only under this node's response/ tree.
        topic = msg.response_topic
        if not topic or not topic.startswith(self.topics.root + "/response/"):
            topic = self.topics.response(action[:60] or "unknown")
        self.publish(topic, json.dumps(reply), qos=1, retain=False, correlation_data=msg.correlation_data)

    def handle(self, msg: RawMessage) -> None:
        action = msg.topic[len(self.topics.request_prefix):]
        self.stats.incr("requests")
        transaction = None
        payload = msg.payload
        if self.auth is not None and self.auth.enabled and len(payload) <= MAX_REQUEST_BYTES:
            # (a payload over the limit is refused by parse_request as too large, unread)
            try:
                payload = self.auth.verify(msg.topic, payload, msg.user_properties)
            except AuthFailure as failure:
                self._refuse(msg, action, failure)
                return
            except Exception:  # a bug in verification must neither kill the lane nor let a request in
                log.exception("request_auth_failed", action=action[:60])
                self._refuse(msg, action, AuthFailure("malformed"))
                return
        try:
            request = parse_request(action, payload, msg.received)
            transaction = request.transaction
            handler = self.registry.get(action)
            if handler is None:
                raise ActionError(f"unknown action {action[:60]!r}; available: {', '.join(self.registry.names())}")
            reply: dict[str, Any] = {"status": "ok", "data": handler(request)}
        except ActionError as exc:
            reply = {"status": "error", "error": str(exc)}
            self.stats.incr("requests_failed")
        except Exception:  # a bug in a handler must not kill the lane
            log.exception("action_failed", action=action[:60])
            reply = {"status": "error", "error": "internal error while handling the request"}
            self.stats.incr("requests_failed")
        if transaction is not None:
            reply["transaction"] = transaction
        topic = msg.response_topic or self.topics.response(action[:60] or "unknown")
        self.publish(topic, json.dumps(reply), qos=1, retain=False, correlation_data=msg.correlation_data)
