"""Home Assistant MQTT discovery: one device per node, two entities per metric.

For every metric the daemon knows, Home Assistant gets

* a ``sensor`` with the metric's anomaly score (``value_json.score``, in [0, 1]; unknown
  while the metric is learning), and
* a ``binary_sensor`` of device class ``problem`` that is on while the metric's status is
  ``anomalous``,

both reading the metric's retained ``<base>/<node>/state/<metric>`` topic and both available
while ``<base>/<node>/status`` is ``online``. Configs are published retained to
``<prefix>/<component>/<node_id>/<object_id>/config`` when a metric first appears, again on
every (re)connect and whenever Home Assistant announces itself on ``<prefix>/status``
(``online``), and removed (an empty retained payload) when the metric is forgotten.

The builders are pure functions returning ``(topic, payload)`` pairs; :class:`Discovery` is
the small stateful part the daemon calls, given a ``publish`` callable with the lanes'
signature (``publish(topic, payload, qos=, retain=)``). It is thread-safe: the sensor lane
announces new metrics while the network thread may relay Home Assistant's birth message.

Discovery topics allow only ``[a-zA-Z0-9_-]`` in ``node_id`` and ``object_id`` while metric
names contain ``/`` (and may contain anything else MQTT allows): :func:`safe_id` maps a name
deterministically, keeping safe names as they are and suffixing a short hash of the original
whenever characters had to be replaced or the name had to be shortened, so two metrics
that differ only in such characters (``a/b`` and ``a.b``) never share an entity.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from typing import Callable, Iterable, Iterator

from . import __version__
from .messages import Topics

DEFAULT_PREFIX = "homeassistant"
COMPONENTS = ("sensor", "binary_sensor")
ID_ALLOWED = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_ID_LEN = 96  # object ids end up in entity ids; keep them readable and well under HA's limits
HASH_LEN = 8  # hex digits of blake2b: 32 bits, ample for the metrics of one node

PublishFn = Callable[..., object]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()[:HASH_LEN]


def safe_id(text: str, max_len: int = MAX_ID_LEN) -> str:
    """``text`` mapped to ``[A-Za-z0-9_-]+``, deterministically.

    A name that is already safe (and short enough) is kept as it is. Otherwise every other
    character becomes ``_`` (runs collapsed, edges trimmed) and ``_<hash>`` of the original is
    appended, so distinct names stay distinct (``a/b`` → ``a_b_1f2e3d4c``; ``a.b`` gets another
    hash).
    """
    if text and ID_ALLOWED.match(text) and len(text) <= max_len:
        return text
    base = _UNSAFE.sub("_", text)
    base = re.sub(r"_+", "_", base).strip("_")
    base = base[: max_len - HASH_LEN - 1].rstrip("_")
    return f"{base}_{_digest(text)}" if base else _digest(text)


def node_key(topics: Topics) -> str:
    """The device's id: ``edged_<node>`` for the default base topic (``<base>_<node>`` otherwise)."""
    return safe_id(f"{topics.base}_{topics.node}".replace("/", "_"))


def device_info(topics: Topics, version: str = __version__) -> dict:
    return {
        "identifiers": [node_key(topics)],
        "name": f"edged {topics.node}",
        "manufacturer": "edged",
        "model": "MQTT edge anomaly detector",
        "sw_version": version,
    }


def config_topic(prefix: str, component: str, topics: Topics, metric: str) -> str:
    suffix = "score" if component == "sensor" else "anomaly"
    return f"{prefix}/{component}/{node_key(topics)}/{safe_id(metric)}_{suffix}/config"


def _common(topics: Topics, metric: str, component: str, suffix: str, name: str, version: str) -> dict:
    object_id = f"{node_key(topics)}_{safe_id(metric)}_{suffix}"
    return {
        "name": name,
        "unique_id": object_id,
        # object_id sets the entity id up to HA 2026.3; default_entity_id (domain.slug) from 2025.10 on.
        "object_id": object_id,
        "default_entity_id": f"{component}.{object_id.lower().replace('-', '_')}",
        "state_topic": topics.state(metric),
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "json_attributes_topic": topics.state(metric),
        "device": device_info(topics, version),
        "origin": {"name": "edged", "sw_version": version},
        "qos": 1,
    }


def score_config(prefix: str, topics: Topics, metric: str, version: str = __version__) -> tuple[str, dict]:
    """The anomaly-score ``sensor``: unknown while learning (score null renders ``None``)."""
    payload = _common(topics, metric, "sensor", "score", f"{metric} anomaly score", version)
    payload.update({
        "value_template": "{{ value_json.score }}",
        "state_class": "measurement",
        "suggested_display_precision": 3,
        "icon": "mdi:chart-bell-curve",
    })
    return config_topic(prefix, "sensor", topics, metric), payload


def anomaly_config(prefix: str, topics: Topics, metric: str, version: str = __version__) -> tuple[str, dict]:
    """The ``binary_sensor`` (device class problem): on while the status is ``anomalous``."""
    payload = _common(topics, metric, "binary_sensor", "anomaly", f"{metric} anomaly", version)
    payload.update({
        "value_template": "{{ 'ON' if value_json.status == 'anomalous' else 'OFF' }}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "problem",
    })
    return config_topic(prefix, "binary_sensor", topics, metric), payload


def metric_configs(prefix: str, topics: Topics, metric: str, version: str = __version__) -> list[tuple[str, str]]:
    """Both configs of one metric, payloads serialised."""
    return [(topic, json.dumps(payload, separators=(",", ":")))
            for topic, payload in (score_config(prefix, topics, metric, version),
                                   anomaly_config(prefix, topics, metric, version))]


def removals(prefix: str, topics: Topics, metric: str) -> list[tuple[str, bytes]]:
    """Empty retained payloads that delete a metric's entities."""
    return [(config_topic(prefix, component, topics, metric), b"") for component in COMPONENTS]


def validate_prefix(prefix: str) -> str:
    if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError("must be a non-empty topic without wildcards or leading/trailing '/'")
    return prefix


class Discovery:
    """What the daemon calls: ``on_new_metric``, ``on_connect``, ``on_ha_online``, ``on_forget``.

    ``publish`` is called as ``publish(topic, payload, qos=1, retain=True)``. The class keeps
    the set of announced metrics itself, so ``on_ha_online`` can run on any thread without
    touching the pipeline; ``on_connect(metrics)`` resynchronises it with the pipeline's.
    """

    def __init__(self, publish: PublishFn, topics: Topics, prefix: str = DEFAULT_PREFIX, *,
                 enabled: bool = True, version: str = __version__, qos: int = 1) -> None:
        self.publish = publish
        self.topics = topics
        self.prefix = validate_prefix(prefix)
        self.enabled = enabled
        self.version = version
        self.qos = qos
        self._known: dict[str, None] = {}  # insertion-ordered set
        self._lock = threading.Lock()
        self.published = 0

    @property
    def ha_status_topic(self) -> str:
        """Home Assistant's birth/last-will topic: subscribe to it (QoS 1) when enabled."""
        return f"{self.prefix}/status"

    def _send(self, pairs: Iterable[tuple[str, str | bytes]]) -> int:
        n = 0
        for topic, payload in pairs:
            self.publish(topic, payload, qos=self.qos, retain=True)
            n += 1
        self.published += n
        return n

    def _announce(self, metrics: Iterable[str]) -> int:
        return self._send(pair for m in metrics for pair in metric_configs(self.prefix, self.topics, m, self.version))

    def known(self) -> list[str]:
        with self._lock:
            return list(self._known)

    def on_new_metric(self, metric: str) -> bool:
        """A metric appeared: announce it once (returns whether anything was published)."""
        if not self.enabled:
            return False
        with self._lock:
            if metric in self._known:
                return False
            self._known[metric] = None
        self._announce([metric])
        return True

    def on_connect(self, metrics: Iterable[str] | None = None) -> int:
        """After every (re)connect: every config again. ``metrics`` (the pipeline's live
        metrics) replaces the known set, e.g. after a snapshot restore."""
        if not self.enabled:
            return 0
        with self._lock:
            if metrics is not None:
                self._known = dict.fromkeys(metrics)
            current = list(self._known)
        return self._announce(current)

    def on_ha_online(self, payload: bytes | str = b"online") -> int:
        """Home Assistant (re)started: its birth message ``online`` asks for every config again."""
        text = payload.decode("utf-8", "replace") if isinstance(payload, (bytes, bytearray)) else str(payload)
        if not self.enabled or text.strip() != "online":
            return 0
        return self._announce(self.known())

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Routing helper: True (and handled) when ``topic`` is Home Assistant's status topic."""
        if topic != self.ha_status_topic:
            return False
        self.on_ha_online(payload)
        return True

    def on_forget(self, metric: str) -> int:
        """The ``forget`` action: remove both entities (empty retained configs)."""
        if not self.enabled:
            return 0
        with self._lock:
            self._known.pop(metric, None)
        return self._send(removals(self.prefix, self.topics, metric))

    def __iter__(self) -> Iterator[str]:
        return iter(self.known())
