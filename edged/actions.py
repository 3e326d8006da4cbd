"""The actions a request can name (DESIGN.md): status, metrics, reset, mute, unmute, forget,
reload. Each handler takes a Request and returns the reply's ``data`` or raises ActionError
with a message that says what was wrong and what is allowed. ``ask`` is registered by the
question router."""

from __future__ import annotations

import difflib
import time
from fnmatch import fnmatchcase
from typing import Callable

from . import __version__
from .commands import ActionError, ActionRegistry, Request
from .pipeline import SensorPipeline

MAX_MUTE_S = 7 * 86400
DEFAULT_MUTE_S = 3600


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def resolve_metrics(pipeline: SensorPipeline, request: Request, *, allow_glob: bool) -> list[int]:
    """The slots a request's ``metric`` names; an unknown name is an error with suggestions."""
    name = request.args.get("metric", request.text)
    if not isinstance(name, str) or not name.strip():
        raise ActionError('missing "metric": give a metric name, e.g. {"metric": "greenhouse/humidity"}')
    name = name.strip()
    known = pipeline.store.index
    if allow_glob and _is_glob(name):
        slots = [slot for metric, slot in known.items() if fnmatchcase(metric, name)]
        if not slots:
            raise ActionError(f"no metric matches {name[:80]!r}")
        return sorted(slots)
    if name in known:
        return [known[name]]
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; {len(known)} metrics are known (see the metrics action)"
    raise ActionError(f"unknown metric {name[:80]!r}{hint}")


def register_core_actions(registry: ActionRegistry, pipeline: SensorPipeline, connected: Callable[[], bool],
                          request_reload: Callable[[], None]) -> None:
    def status(request: Request) -> dict:
        with pipeline.lock:
            return {
                "node": pipeline.topics.node,
                "version": __version__,
                "uptime_s": round(time.time() - pipeline.started, 1),
                "connected": connected(),
                "metrics": len(pipeline.store),
                "status": pipeline.status_counts(),
                "open_episodes": pipeline.open_episodes(),
                "detector": pipeline.detector.name,
                "provider": pipeline.settings.runtime.provider,
                "queue_depth": pipeline.queue_depth,
            }

    def metrics(request: Request) -> dict:
        pattern = request.args.get("match", "*")
        if not isinstance(pattern, str):
            raise ActionError('"match" must be a glob string, e.g. "greenhouse/*"')
        with pipeline.lock:
            # readings: how many were appended since the metric appeared (or its last reset)
            items = [{"metric": pipeline.store.names[slot], **pipeline.state_payload(slot),
                      "readings": int(pipeline.store.count[slot])}
                     for slot in pipeline.live_slots() if fnmatchcase(pipeline.store.names[slot], pattern)]
        return {"count": len(items), "metrics": items}

    def reset(request: Request) -> dict:
        with pipeline.lock:
            slots = resolve_metrics(pipeline, request, allow_glob=True)
            for slot in slots:
                pipeline.reset_metric(slot)
            return {"reset": [pipeline.store.names[s] for s in slots]}

    def mute(request: Request) -> dict:
        duration = request.args.get("duration_s", DEFAULT_MUTE_S)
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 < duration <= MAX_MUTE_S:
            raise ActionError(f'"duration_s" must be a number of seconds in (0, {MAX_MUTE_S}]')
        with pipeline.lock:
            slots = resolve_metrics(pipeline, request, allow_glob=True)
            until = pipeline.clock.now() + float(duration)
            for slot in slots:
                pipeline.set_muted(slot, until)
            return {"muted": [pipeline.store.names[s] for s in slots], "until": round(until, 3)}

    def unmute(request: Request) -> dict:
        with pipeline.lock:
            slots = resolve_metrics(pipeline, request, allow_glob=True)
            for slot in slots:
                pipeline.set_muted(slot, 0.0)
            return {"unmuted": [pipeline.store.names[s] for s in slots]}

    def forget(request: Request) -> dict:
        with pipeline.lock:
            slots = resolve_metrics(pipeline, request, allow_glob=False)
            return {"forgotten": [pipeline.forget_metric(s) for s in slots]}

    def reload(request: Request) -> dict:
        request_reload()
        return {"reload": "requested"}

    for name, handler in (("status", status), ("metrics", metrics), ("reset", reset), ("mute", mute),
                          ("unmute", unmute), ("forget", forget), ("reload", reload)):
        registry.register(name, handler)
