"""Wires the daemon from one Settings object; owns threads, signals and shutdown.

SIGTERM/SIGINT: stop intake (without unsubscribing: the broker keeps the session),
drain both lanes, publish ``offline``, disconnect, exit 0. SIGHUP: reload the config file;
an invalid file is reported and the running config kept.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from . import __version__, runtime, snapshot, wal
from .actions import register_core_actions
from .ask import Asker, make_cloud
from .auth import RequestAuth
from .commands import ActionRegistry, CommandLane
from .config import ConfigError, Settings
from .detector import make_detector
from .discovery import Discovery
from .facts import Facts
from .logs import get_logger
from .messages import RawMessage, Topics
from .mqtt import MqttLink
from .pipeline import SensorPipeline
from .phrasing import Phraser
from .publisher import Publisher, Spool
from .sdnotify import Notifier
from .stats import Stats

MIN_SNAPSHOT_GAP_S = 2.0
# ... and at most this many bytes a second on average between them: with the model detector a
# snapshot holds ~120 KB per metric, so 1,000 metrics every 2 s would be ~60 MB/s for an SD card.
SNAPSHOT_BYTES_PER_S = 1_000_000


def snapshot_gap_s(snapshot_bytes: int) -> float:
    """The least time between two snapshots taken early (episode boundaries, the WAL's size)."""
    return max(MIN_SNAPSHOT_GAP_S, snapshot_bytes / SNAPSHOT_BYTES_PER_S)


def should_snapshot(now: float, next_snapshot: float, since_last_s: float, snapshot_bytes: int,
                 episode_boundary: bool, logged_since: int | None) -> bool:
    """Whether to snapshot now: at the periodic time; early for an episode boundary or (strict,
    ``logged_since`` = readings logged since the last snapshot) after WAL_SNAPSHOT_READINGS,
    both no sooner than snapshot_gap_s after the last one. Episode boundaries are taken
    promptly, but an event storm must not turn into a write storm on an SD card; the WAL rule
    bounds the replay at start (a long replay before READY=1 would hit systemd's start timeout)."""
    early_ok = since_last_s >= snapshot_gap_s(snapshot_bytes)
    wal_due = logged_since is not None and logged_since >= WAL_SNAPSHOT_READINGS
    return now >= next_snapshot or (early_ok and (episode_boundary or wal_due))


# `online` waits for the command link's subscription, but not for ever: a broker that refuses
# the second connection must not keep the node offline.
COMMAND_LINK_GRACE_S = 5.0
# strict: a snapshot (and WAL checkpoint) after this many logged readings at the latest. Replay at
# start runs at the lane's speed (tens of thousands of readings a second on a 2-core x86): this
# keeps it to seconds, well inside systemd's TimeoutStartSec.
WAL_SNAPSHOT_READINGS = 50_000
# Mosquitto's count of the messages it dropped (full queues, clients too slow to take them; all
# clients together). Under a flood edged applies backpressure rather than dropping what it read,
# so the excess is dropped in the broker: this makes those drops visible on edged's stats.
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"

log = get_logger("edged.app")


class Daemon:
    def __init__(self, settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self._reload = reload
        self.topics = Topics(settings.mqtt.base_topic, settings.node_id)
        self.stats = Stats()
        self.ort_version = runtime.configure(settings.runtime)  # a provider that is not there: refuse to start
        detector = make_detector(settings.anomaly.detector, settings.anomaly.window, settings.anomaly.learning_readings,
                                 settings.anomaly.model_dir, settings.runtime)
        self.mqtt = MqttLink(settings, self.topics, self._on_message, self._on_connected)
        self.mqtt.announce_on_connect = False  # see _announce_if_ready
        # Requests (and the other control-plane topics: Home Assistant's status, the broker's drop
        # counter) come on a connection of their own, so that they never queue behind a backlog
        # of readings in the broker (a flood would otherwise delay them by seconds).
        self.command_link = MqttLink(settings, self.topics, self._on_command_message, self._announce_if_ready,
                                     primary=False, on_refused=self._command_link_refused)
        # Set when the broker refuses the command link (an ACL or a policy that lets this user in
        # once, or with one client id): its topics then come on the primary connection.
        self.commands_on_primary = False
        self._refusals = 0  # the command link's policy refusals in a row while the primary was in
        self._refusals_at = 0  # the command link's connect count when they began
        self._subs_lock = threading.Lock()  # the primary's subscriptions: computed and applied as one
        self._broker_dropped: int | None = None
        self._announce_lock = threading.Lock()
        self._announced_connect = 0
        self.state_dir = Path(settings.node.state_dir)
        self.strict = settings.durability.mode == "strict"
        writable = self._state_dir_writable()
        if self.strict and not writable:
            raise ConfigError(f"durability.mode = 'strict' needs a writable node.state_dir for its write-ahead log, "
                              f"and {str(self.state_dir)!r} is not (see the state_dir_unavailable line); "
                              f"fix the directory or set durability.mode = 'relaxed'")
        self.wal_dir = self.state_dir / "wal" if writable else None
        self.wal: wal.WalWriter | None = None  # strict: created in run(), after the replay
        spool = Spool(self.state_dir / "spool.sqlite", settings.durability.spool_max_messages) if writable else None
        self.publisher = Publisher(self.mqtt.publish, self.mqtt.connected.is_set, self.stats, spool)
        self.snapshot_path = self.state_dir / "state.npz" if writable else None
        self.snapshot_bytes = 0  # the size of the last snapshot written
        self.pipeline = SensorPipeline(settings, self.topics, detector, self.publisher, self.stats)
        self.pipeline.is_connected = self.mqtt.connected.is_set
        self.pipeline.stats_extra = self._extra_stats
        ha = settings.homeassistant
        self.discovery = Discovery(self.publisher, self.topics, ha.prefix, enabled=ha.discovery)
        self.pipeline.on_new_metric = self.discovery.on_new_metric
        self.pipeline.on_reannounce = self.discovery.on_connect
        self.pipeline.on_forget = self.discovery.on_forget
        self._control_topics = {BROKER_DROPPED_TOPIC, self.discovery.ha_status_topic}
        self.mqtt.stale_filters = [self.topics.request_filter, *sorted(self._control_topics)]  # moved to the command link
        self.prom_server = None
        self.registry = ActionRegistry()
        register_core_actions(self.registry, self.pipeline, self.mqtt.connected.is_set, self.request_reload)
        self.facts = Facts(self.pipeline)
        self.phraser = self._make_phraser(settings)
        self._make_asker(settings)
        secret = settings.mqtt.request_secret
        auth = RequestAuth(secret.get_secret_value() if secret else None, settings.mqtt.request_window_s)
        self.commands = CommandLane(self.topics, self.registry, self._publish_reply, self.stats, auth=auth)
        self._stopping = threading.Event()
        self._hup = threading.Event()
        self.notifier = Notifier()
        self._reported_stall = False

    def _make_phraser(self, settings: Settings) -> Phraser | None:
        if not settings.llm.enabled:
            return None
        models_dir = Path(settings.models.dir or Path(settings.node.state_dir) / "models")
        phraser = Phraser(models_dir / settings.llm.model, settings.llm.threads, self.stats,
                          max_new_tokens=settings.llm.max_new_tokens, load_now=settings.llm.load == "start",
                          lookup_tokens=settings.llm.lookup_tokens)
        if settings.llm.phrase_summaries:
            self.pipeline.on_episode_start = self._phrase_summary
        return phraser

    def _phrase_summary(self, event: dict) -> None:
        """Runs on the sensor lane: only queues; the `start` event has already gone out."""
        def done(text: str | None) -> None:
            if text is None:
                return
            payload = {"id": event["id"], "event": "summary", "kind": event["kind"], "metric": event["metric"],
                       "ts": event["ts"], "summary": text, "template": event["summary"], "model": self.settings.llm.model}
            self.publisher(self.topics.anomaly(event["metric"]), json.dumps(payload), qos=self.settings.mqtt.qos)
            self.stats.incr("events_summary")

        facts = {k: event[k] for k in ("metric", "value", "peak", "baseline", "unit", "direction", "duration_s", "start", "onset")}
        if event.get("expected") is not None:  # the same time on earlier days, what the reading is unlike
            facts["expected"] = event["expected"]
        self.phraser.submit_summary(event["summary"], facts, done, timeout_s=self.settings.llm.summary_timeout_s)

    def _make_asker(self, settings: Settings) -> None:
        self.cloud = make_cloud(settings.cloud)
        phraser = self.phraser if settings.llm.enabled and settings.llm.phrase_answers else None
        self.registry.register("ask", Asker(self.facts, self.cloud, settings.cloud, self.stats,
                                            settings.llm.answer_deadline_s, phraser=phraser, model_name=settings.llm.model))

    def _extra_stats(self) -> dict:  # wal_* counters come through self.stats
        extra = {"connected": self.mqtt.connected.is_set(), "connects": self.mqtt.connects,
                 "commands_connected": self.command_link.connected.is_set(),
                 "commands_on_primary": self.commands_on_primary,
                 **({"broker_dropped": self._broker_dropped} if self._broker_dropped is not None else {}),
                 "commands_queue_depth": self.commands.queue_depth, "spool_depth": self.publisher.depth()}
        if self.cloud is not None:
            extra["cloud"] = self.cloud.counters()
        return extra

    # ------------------------------------------------------------------ routing (network thread)
    def _on_message(self, msg: RawMessage) -> None:
        """The primary connection: readings (and the command link's topics when it was refused)."""
        if msg.topic in self._control_topics or msg.topic.startswith(self.topics.request_prefix):
            self._ack_now(msg)
            if self.commands_on_primary:
                self._on_command_message(msg)
            return  # else a subscription left in the persistent session by an older edged
        if self.wal is not None and msg.qos and len(msg.payload) <= self.settings.sensors.max_payload_bytes:
            self.wal.submit(msg, self.mqtt.generation)  # acknowledged once durable (or redelivered)
        else:
            # QoS 0, relaxed mode, or (strict) a payload over the size limit: the lane rejects it
            # as too_large, and it must not reach the log (a record that large reads as torn).
            self._ack_now(msg)
            self.pipeline.offer(msg)

    def _on_command_message(self, msg: RawMessage) -> None:
        """The command link: requests, Home Assistant's status, the broker's drop counter."""
        if msg.topic.startswith(self.topics.request_prefix):
            self.commands.offer(msg)
        elif msg.topic == BROKER_DROPPED_TOPIC:
            try:
                self._broker_dropped = int(msg.payload)
            except ValueError:
                pass  # not Mosquitto's counter: nothing to report
        elif self.discovery.enabled and msg.topic == self.discovery.ha_status_topic:
            if not msg.retain:  # a retained "online" arrives on every connect, which re-announces anyway
                self.discovery.on_ha_online(msg.payload)

    def _ack_now(self, msg: RawMessage) -> None:
        if self.mqtt.manual_ack and msg.qos:
            self.mqtt.ack(msg.mid, msg.qos, self.mqtt.generation)

    def _ack_durable(self, msg: RawMessage, generation: int) -> None:
        self.mqtt.ack(msg.mid, msg.qos, generation)

    def _on_connected(self) -> None:
        self.pipeline.request_reannounce()
        self._announce_if_ready()

    def _command_link_refused(self, reason: str) -> None:
        """The broker will not let the command link in (network thread of the link). Only
        refusals while the primary connection is in count -- a wrong password refuses both --
        and two in a row (paho retries with its backoff), so one hiccup of the broker's
        authentication backend does not move the requests for the rest of the run."""
        if not self.mqtt.connected.is_set() or self._refusals_at != self.command_link.connects:
            self._refusals, self._refusals_at = 0, self.command_link.connects
        if not self.mqtt.connected.is_set():
            return
        self._refusals += 1
        if self._refusals >= 2:
            self._commands_to_primary(reason)

    def _commands_to_primary(self, reason: str) -> None:
        """Take the command link's topics on the primary connection (requests then queue behind
        a backlog of readings, but they are answered) and stop the link."""
        with self._announce_lock:
            if self.commands_on_primary:
                return
            self.commands_on_primary = True
        log.warning("command_link_refused", reason=reason, client_id=self.command_link.client_id,
                    hint="requests now come on the sensor connection and can wait behind its backlog in a flood; "
                         "let this user connect a second time with that client id to keep them apart")
        # stop() joins the link's network thread, which is the one calling us
        threading.Thread(target=self.command_link.stop, name="command-link-stop", daemon=True).start()
        self._apply_primary_subscriptions()  # the SUBSCRIBE goes out before `online`
        self._announce_if_ready()

    def _announce_if_ready(self) -> None:
        """`online` once per primary connection, after the command link has subscribed (or
        after COMMAND_LINK_GRACE_S without it), so that a request sent on `online` is heard."""
        with self._announce_lock:
            connects = self.mqtt.connects
            if not self.mqtt.connected.is_set() or self._announced_connect == connects:
                return
            waited = time.monotonic() - self.mqtt.connected_at
            ready = self.command_link.subscribed.is_set() or self.commands_on_primary
            if not ready and waited < COMMAND_LINK_GRACE_S:
                return
            if not ready:
                log.warning("command_link_not_ready", waited_s=round(waited, 1),
                            hint="online announced anyway; requests are not answered until the command link connects")
            self._announced_connect = connects
            self.mqtt.announce_online()

    def _publish_reply(self, topic: str, payload: str | bytes, **kw) -> bool:
        if self.command_link.connected.is_set():
            return self.command_link.publish(topic, payload, **kw)
        return self.publisher(topic, payload, **kw)  # spooled while the broker is away

    def wanted_subscriptions(self) -> dict[str, int]:
        qos = self.settings.mqtt.qos
        wanted = {f: qos for f in self.settings.sensors.topics}
        if self.commands_on_primary:
            wanted.update(self.wanted_command_subscriptions())
        return wanted

    def _apply_primary_subscriptions(self) -> None:
        with self._subs_lock:  # a reload and the command link's fallback may both get here
            self.mqtt.set_wanted(self.wanted_subscriptions())

    def wanted_command_subscriptions(self) -> dict[str, int]:
        # $SYS: brokers without the counter (or an ACL that denies it) simply never send it.
        wanted = {self.topics.request_filter: 1, BROKER_DROPPED_TOPIC: 0}
        if self.discovery.enabled:
            wanted[self.discovery.ha_status_topic] = 1
        return wanted

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, *_: object) -> None:
        self._stopping.set()

    def request_reload(self, *_: object) -> None:
        self._hup.set()

    def reload(self) -> None:
        if self._reload is None:
            return
        try:
            new = self._reload()
        except ConfigError as exc:
            log.error("reload_rejected", error=str(exc), hint="the running configuration is kept")
            return
        restart_needed = [s for s in ("mqtt",) if getattr(new, s) != getattr(self.settings, s)]
        if new.node.id != self.settings.node.id or new.node.state_dir != self.settings.node.state_dir:
            restart_needed.append("node")
        restart_needed += [s for s in ("homeassistant", "metrics") if getattr(new, s) != getattr(self.settings, s)]
        if new.durability.mode != self.settings.durability.mode:
            restart_needed.append("durability")
        if (new.anomaly.detector, new.anomaly.model_dir) != (self.settings.anomaly.detector, self.settings.anomaly.model_dir):
            restart_needed.append("anomaly")  # the detector is built once, at start
        old = self.settings
        llm_changed = new.llm != old.llm or new.models != old.models
        self.settings = new  # the summary callback reads the current settings
        if llm_changed:
            if self.phraser is not None:
                self.phraser.stop()
            self.pipeline.on_episode_start = None
            self.phraser = self._make_phraser(new)
        if llm_changed or new.cloud != old.cloud:  # budgets and the breaker start afresh only then
            if self.cloud is not None:
                self.cloud.close()
            self._make_asker(new)
        self.settings = new
        self.pipeline.apply_settings(new)
        self._apply_primary_subscriptions()
        if not self.commands_on_primary:
            self.command_link.set_wanted(self.wanted_command_subscriptions())
        log.info("reloaded", needs_restart=restart_needed or None)

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self.request_reload)

    def save_snapshot(self) -> bool:
        if self.snapshot_path is None:
            return False
        try:
            size, wal_seq = snapshot.save(self.snapshot_path, self.pipeline)
            self.snapshot_bytes = size
            self.stats.incr("snapshots")
            log.debug("snapshot_saved", bytes=size, wal_seq=wal_seq)
        except OSError as exc:
            log.warning("snapshot_failed", path=str(self.snapshot_path), error=exc.strerror or str(exc))
            return False
        if self.wal is not None:
            self.wal.checkpoint(wal_seq)  # the WAL up to wal_seq is in the snapshot now
        return True

    def recover(self) -> None:
        """Snapshot first, then the WAL readings it does not cover, through the lane's own path."""
        if self.snapshot_path is not None:
            snapshot.restore(self.snapshot_path, self.pipeline)
        if self.wal_dir is None:
            return
        covered = self.pipeline.applied_seq
        found = wal.scan(self.wal_dir, repair=True)
        published = max(found.applied, covered)
        t0 = time.monotonic()
        try:
            replayed = self.pipeline.replay(wal.read(found, after_seq=covered), published_through=published)
        except Exception as exc:  # noqa: BLE001 - the same log would fail again at every start
            aside = self.wal_dir.with_name(f"{self.wal_dir.name}.bad-{int(time.time())}")
            os.replace(self.wal_dir, aside)
            log.error("wal_replay_failed", error=f"{type(exc).__name__}: {exc}", moved_to=str(aside),
                      applied_to_seq=self.pipeline.applied_seq,
                      hint="the log was set aside so that edged starts; readings after applied_to_seq are not in the state")
            found = wal.scan(self.wal_dir, repair=True)
            replayed = 0
        if replayed:
            self.stats.incr("wal_replayed", replayed)
            log.info("wal_replayed", readings=replayed, after_seq=covered, to_seq=self.pipeline.applied_seq,
                     events_published_before=published, seconds=round(time.monotonic() - t0, 3))
        if self.strict:
            self.wal = wal.WalWriter(
                self.wal_dir, state=found, next_seq=max(found.last_seq, covered, found.applied) + 1, stats=self.stats,
                deliver=self.pipeline.offer_durable, ack=self._ack_durable,
                applied=lambda: self.pipeline.applied_seq, max_pending=wal.MAX_UNACKED,
            )
        elif found.segments and self.save_snapshot():
            # relaxed after strict: the snapshot now holds what the WAL had; the WAL can go.
            wal.remove_through(found, self.pipeline.applied_seq)

    def run(self) -> int:
        self.recover()
        lanes = [
            threading.Thread(target=self.pipeline.run, name="sensor-lane", daemon=True),
            threading.Thread(target=self.commands.run, name="command-lane", daemon=True),
        ]
        for t in lanes:
            t.start()
        if self.wal is not None:
            self.wal.start()
        self._apply_primary_subscriptions()
        self.command_link.set_wanted(self.wanted_command_subscriptions())
        self.mqtt.start()
        self.command_link.start()
        log.info("started", version=__version__, onnxruntime=self.ort_version, provider=self.settings.runtime.provider, node=self.topics.node, detector=self.pipeline.detector.name,
                 topics=self.settings.sensors.topics, durability=self.settings.durability.mode)
        self.start_metrics_server()
        # Ready once the config is valid and the models are loaded; not waiting for the broker
        # (a Pi that boots before its broker must not be restarted in a loop).
        self.notifier.ready(self.health_line())
        next_status = next_ping = 0.0
        next_snapshot = time.monotonic() + self.settings.durability.snapshot_interval_s
        last_snapshot = -MIN_SNAPSHOT_GAP_S
        snapshot_seq = self.pipeline.applied_seq
        while not self._stopping.wait(0.25):
            self._announce_if_ready()
            if self._hup.is_set():
                self._hup.clear()
                self.reload()
            now = time.monotonic()
            if self.publisher.spool is not None and self.mqtt.connected.is_set() and self.publisher.depth():
                self.publisher.flush()
            logged = self.pipeline.applied_seq - snapshot_seq if self.wal is not None else None
            if should_snapshot(now, next_snapshot, now - last_snapshot, self.snapshot_bytes,
                            self.pipeline.snapshot_due.is_set(), logged):
                self.pipeline.snapshot_due.clear()
                snapshot_seq = self.pipeline.applied_seq
                self.save_snapshot()
                last_snapshot = now
                next_snapshot = now + self.settings.durability.snapshot_interval_s
            if self.notifier.watchdog_s and now >= next_ping and self.lanes_healthy(now):
                self.notifier.watchdog()
                next_ping = now + self.notifier.watchdog_s / 3
            if now >= next_status:
                self.notifier.status(self.health_line())
                next_status = now + 5.0
        log.info("stopping")
        self.notifier.stopping()
        if self.wal is not None:
            # Readings still arriving are not acknowledged (the broker redelivers them next
            # start); the pending ones are committed, acknowledged and handed to the lane.
            self.wal.stop()
        self.pipeline.close_intake()
        self.pipeline.stop()
        self.commands.stop()
        for t in lanes:
            t.join(timeout=10)
        if self.wal is not None:
            self.wal.finish()
        if self.phraser is not None:
            self.phraser.stop()
        self.save_snapshot()
        self.pipeline.publish_stats()
        self.command_link.stop()
        self.mqtt.stop()
        if self.prom_server is not None:
            self.prom_server.close()
        if self.publisher.spool is not None:
            self.publisher.spool.close()
        log.info("stopped")
        return 0

    def start_metrics_server(self) -> None:
        """The optional Prometheus endpoint ([metrics] prometheus = true); reads the stats payload
        at scrape time. A failure is logged as an error and the daemon runs on without it."""
        cfg = self.settings.metrics
        if not cfg.prometheus:
            return
        try:
            from .prom import start_server

            self.prom_server = start_server(cfg.host, cfg.port, self.pipeline.stats_payload)
        except ImportError:
            log.error("prometheus_unavailable", hint="prometheus-client is not installed in edged's environment "
                      "(pip install prometheus-client); the metrics endpoint is off")
            return
        except OSError as exc:
            log.error("prometheus_bind_failed", host=cfg.host, port=cfg.port, error=exc.strerror or str(exc),
                      hint="another process holds the port, or the address is not local: check [metrics] host/port")
            return
        log.info("prometheus_listening", url=self.prom_server.url)

    def lanes_healthy(self, now: float) -> bool:
        """Every lane moved within its deadline; a quiet night with no readings still counts
        as progress (the lanes wake on their own timers), a lane stuck in a call does not."""
        node = self.settings.node
        lanes = [("sensor", self.pipeline, node.sensor_lane_deadline_s),
                 ("command", self.commands, node.command_lane_deadline_s)]
        if self.wal is not None:  # strict: a dead or stuck writer would stop every acknowledgement
            lanes.append(("wal", self.wal, node.sensor_lane_deadline_s))
        stalled = [name for name, lane, deadline in lanes if now - lane.last_progress > deadline]
        if stalled and not self._reported_stall:
            log.error("lane_stalled", lanes=stalled,
                      hint="watchdog pings stop; systemd restarts edged when WatchdogSec runs out")
        self._reported_stall = bool(stalled)
        return not stalled

    def health_line(self) -> str:
        p = self.pipeline
        broker = "broker connected" if self.mqtt.connected.is_set() else "broker not connected"
        return f"{broker}, {len(p.store)} metrics, {len(p.open_episodes())} open episodes"

    def _state_dir_writable(self) -> bool:
        path = Path(self.settings.node.state_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            if self.strict:  # a directory that exists may still be read-only: try a file
                probe = path / f".write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            return True
        except OSError as exc:
            log.warning("state_dir_unavailable", path=str(path), error=exc.strerror)
            return False
