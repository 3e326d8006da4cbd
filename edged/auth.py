"""Request authentication: a shared-secret HMAC over every request (docs/SECURITY.md).

Pure: no I/O, no paho, no settings object. The command lane calls
:meth:`RequestAuth.verify`; clients (``edged ask`` / ``edged status``, scripts) call
:func:`sign`. Both sides build the MAC input with :func:`mac_input`, so they cannot drift.

The MAC is HMAC-SHA256, hex encoded, over::

    ts + "\\n" + topic + "\\n" + body

- MQTT v5: ``ts`` and ``hmac`` travel as the user properties of that name and ``body`` is the
  payload, byte for byte (JSON or plain text).
- MQTT 3.1.1 (no properties): ``ts`` and ``hmac`` are members of the JSON object payload,
  beside the arguments, and ``body`` is the *canonical form* of that object without them:
  ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`` (pure ASCII;
  ``jq -acS 'del(.ts, .hmac)'`` produces the same bytes for strings, integers, booleans,
  null, arrays and objects).

``ts`` is decimal epoch seconds as text, digits with an optional fraction
(``1750000000`` or ``1750000000.123``); a JSON integer is accepted in the 3.1.1 form and
stands for its decimal text. A request is accepted when its ``ts`` is within ``window_s``
of the local clock and its (ts, hmac) pair has not been accepted before.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac as _hmac
import json
import math
import re
import time
from typing import Callable, Iterable, NamedTuple

# What a refused caller is told, whatever failed: no hint which part was wrong.
NOT_AUTHENTICATED = "request not authenticated"

TS_PROPERTY = "ts"
MAC_PROPERTY = "hmac"

_TS_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_MAC_RE = re.compile(r"[0-9a-fA-F]{64}")

# Internal refusal reasons (logged locally, never sent to the caller).
REFUSAL_REASONS = ("plain_text", "missing", "malformed", "stale", "bad_mac", "replay")


class AuthFailure(Exception):
    """A request that failed authentication; ``reason`` is for the local log only."""

    def __init__(self, reason: str) -> None:
        assert reason in REFUSAL_REASONS, reason
        super().__init__(reason)
        self.reason = reason


class Signed(NamedTuple):
    payload: bytes
    user_properties: list[tuple[str, str]]  # empty for the 3.1.1 form (or no secret)


def _key(secret: bytes | str | None) -> bytes | None:
    if secret is None:
        return None
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return key or None  # an empty secret means "no authentication", never "the empty key"


def canonical_json(obj: dict) -> bytes:
    """The 3.1.1 body: the arguments object (``ts``/``hmac`` removed), sorted, compact, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def mac_input(ts: str, topic: str, body: bytes) -> bytes:
    return ts.encode("ascii") + b"\n" + topic.encode("utf-8", "surrogatepass") + b"\n" + body


def compute_mac(key: bytes, ts: str, topic: str, body: bytes) -> str:
    return _hmac.new(key, mac_input(ts, topic, body), hashlib.sha256).hexdigest()


def format_ts(now: float) -> str:
    """Epoch seconds with milliseconds: two requests in one second still differ."""
    return f"{now:.3f}"


def sign(
    secret: bytes | str | None,
    topic: str,
    payload: bytes | str,
    *,
    v5: bool = True,
    now: float | None = None,
) -> Signed:
    """Sign one request for ``topic``. Returns the payload to publish and the v5 user properties.

    With no secret the payload comes back unchanged and without properties, so a client can
    call this unconditionally. ``v5=False`` (MQTT 3.1.1) needs a JSON object payload: ``ts``
    and ``hmac`` are added to it (any existing members of those names are replaced).
    """
    body = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    key = _key(secret)
    if key is None:
        return Signed(body, [])
    ts = format_ts(time.time() if now is None else now)
    if v5:
        return Signed(body, [(TS_PROPERTY, ts), (MAC_PROPERTY, compute_mac(key, ts, topic, body))])
    try:
        obj = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise ValueError("an MQTT 3.1.1 request must be a JSON object to carry ts and hmac")
    obj.pop(TS_PROPERTY, None)
    obj.pop(MAC_PROPERTY, None)
    mac = compute_mac(key, ts, topic, canonical_json(obj))
    return Signed(json.dumps({**obj, TS_PROPERTY: ts, MAC_PROPERTY: mac}).encode("utf-8"), [])


class RequestAuth:
    """Verifies requests against a shared secret; ``secret=None`` (or empty) accepts everything.

    ``clock`` returns epoch seconds (``time.time``). The replay cache holds the (ts, hmac)
    pairs accepted within the window; it is bounded by ``max_entries``: when full, the
    oldest entry is evicted and nothing at or before its ``ts`` is accepted any more, so an
    eviction can never reopen a replay.
    """

    def __init__(
        self,
        secret: bytes | str | None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        *,
        max_entries: int = 4096,
    ) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._key = _key(secret)
        self.window_s = float(window_s)
        self.clock = clock
        self.max_entries = max_entries
        self._seen: set[tuple[str, str]] = set()
        self._by_age: list[tuple[float, str, str]] = []  # heap of (ts, ts text, mac)
        self._floor = -math.inf  # ts at or below this is refused (evicted under pressure)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def __len__(self) -> int:
        return len(self._seen)

    def verify(self, topic: str, payload: bytes, user_properties: Iterable[tuple[str, str]] = ()) -> bytes:
        """The payload to parse (3.1.1: the canonical arguments), or raise :class:`AuthFailure`.

        The v5 form is used when the message carries a ``ts`` or ``hmac`` user property,
        else the 3.1.1 JSON form.
        """
        if self._key is None:
            return payload
        props = [(k, v) for k, v in user_properties if k in (TS_PROPERTY, MAC_PROPERTY)]
        if props:
            ts, mac = self._from_properties(props)
            body = payload
            result = payload
        else:
            ts, mac, body = self._from_json(payload)
            result = body
        self._check(ts, mac, topic, body)
        return result

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _from_properties(props: list[tuple[str, str]]) -> tuple[str, str]:
        ts = [v for k, v in props if k == TS_PROPERTY]
        mac = [v for k, v in props if k == MAC_PROPERTY]
        if len(ts) != 1 or len(mac) != 1:
            raise AuthFailure("missing" if not ts or not mac else "malformed")
        if not isinstance(ts[0], str) or not isinstance(mac[0], str):
            raise AuthFailure("malformed")
        return ts[0], mac[0]

    @staticmethod
    def _from_json(payload: bytes) -> tuple[str, str, bytes]:
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise AuthFailure("malformed") from None
        if not text.startswith("{"):
            raise AuthFailure("plain_text")
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise AuthFailure("malformed") from None
        if not isinstance(obj, dict):
            raise AuthFailure("malformed")
        if TS_PROPERTY not in obj or MAC_PROPERTY not in obj:
            raise AuthFailure("missing")
        ts, mac = obj.pop(TS_PROPERTY), obj.pop(MAC_PROPERTY)
        if isinstance(ts, int) and not isinstance(ts, bool) and ts >= 0:
            ts = str(ts)
        if not isinstance(ts, str) or not isinstance(mac, str):
            raise AuthFailure("malformed")
        try:
            body = canonical_json(obj)
        except (ValueError, RecursionError):  # e.g. a 4,000-digit integer argument
            raise AuthFailure("malformed") from None
        return ts, mac, body

    def _check(self, ts_text: str, mac: str, topic: str, body: bytes) -> None:
        if not _TS_RE.fullmatch(ts_text) or not _MAC_RE.fullmatch(mac):
            raise AuthFailure("malformed")
        ts = float(ts_text)
        now = self.clock()
        if abs(ts - now) > self.window_s:
            raise AuthFailure("stale")
        expected = compute_mac(self._key, ts_text, topic, body)  # type: ignore[arg-type]
        if not _hmac.compare_digest(expected, mac.lower()):
            raise AuthFailure("bad_mac")
        entry = (ts_text, mac.lower())
        if entry in self._seen or ts <= self._floor:
            raise AuthFailure("replay")
        self._remember(ts, entry, now)

    def _remember(self, ts: float, entry: tuple[str, str], now: float) -> None:
        # Entries older than the window can go: their ts would be refused as stale anyway.
        while self._by_age and self._by_age[0][0] < now - self.window_s:
            _, t, m = heapq.heappop(self._by_age)
            self._seen.discard((t, m))
        while len(self._seen) >= self.max_entries:
            old_ts, t, m = heapq.heappop(self._by_age)
            self._seen.discard((t, m))
            self._floor = max(self._floor, old_ts)
        self._seen.add(entry)
        heapq.heappush(self._by_age, (ts, *entry))
