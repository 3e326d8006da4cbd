"""Per-metric state snapshots: written atomically, restored at start.

One ``.npz`` file holds the store's arrays (rings and history buckets) and a JSON document
with the names, units, decisions (statuses, open episodes), recent events, the data
clock, and for strict durability the WAL sequence number it covers (every reading up to it
is in the state; the WAL before it can go) plus the newest QoS 1 redelivery identities. It
is written to a temporary file, fsynced and renamed over the old one, so a crash
leaves either the old or the new snapshot. A snapshot that cannot be read, or that was
written by another format version or window size, is set aside with a warning — never a
crash loop — and the daemon starts fresh.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .decision import Baseline, Episode, MetricDecision
from .logs import get_logger

log = get_logger("edged.snapshot")

FORMAT_VERSION = 1
TIER_ARRAYS = ("bucket", "min", "max", "sum", "count", "last", "last_ts")


class SnapshotError(Exception):
    pass


def _episode_to_json(ep: Episode | None) -> dict | None:
    if ep is None:
        return None
    data = asdict(ep)
    data["baseline"] = ep.baseline.as_dict() if ep.baseline else None
    return data


def _episode_from_json(data: dict | None) -> Episode | None:
    if data is None:
        return None
    base = data.pop("baseline")
    return Episode(**data, baseline=Baseline(base["median"], base["p05"], base["p95"]) if base else None)


def save(path: Path, pipeline) -> tuple[int, int]:
    """Write the pipeline's state to ``path`` atomically; returns (bytes written, the WAL
    sequence number the snapshot covers)."""
    with pipeline.lock:
        store = pipeline.store
        n = len(store.names)
        # Copies under the lock (fast memcpy); compressing and writing happen outside it.
        arrays = {"values": store.values[:n].copy(), "times": store.times[:n].copy(), "count": store.count[:n].copy()}
        for t, tier in enumerate(store.tiers):
            for name in TIER_ARRAYS:
                arrays[f"tier{t}_{name}"] = getattr(tier, name)[:n].copy()
        meta = {
            "version": FORMAT_VERSION,
            "saved_at": time.time(),
            "window": store.window,
            "tiers": [[tier.width, tier.size] for tier in store.tiers],
            "names": list(store.names),
            "units": list(store.units),
            "free": list(store.free),
            "decisions": [
                None if d is None else {
                    "metric": d.metric, "status": d.status, "last_score": d.last_score, "below": d.below,
                    "muted_until": d.muted_until, "episode": _episode_to_json(d.episode),
                    "silence": _episode_to_json(d.silence),
                }
                for d in pipeline.decisions
            ],
            "recent_events": list(pipeline.recent_events),
            "data_now": pipeline.clock.data_now if np.isfinite(pipeline.clock.data_now) else None,
            "detector": pipeline.detector.name,
            "wal_seq": pipeline.applied_seq,
            "redeliveries": pipeline.redelivery_keys(),
        }
        wal_seq = pipeline.applied_seq
        state_fn = getattr(pipeline.detector, "state_dict", None)
        if state_fn is not None:
            for key, value in state_fn(n).items():
                arrays[f"detector_{key}"] = np.array(value, copy=True)
        meta_bytes = json.dumps(meta, allow_nan=True).encode()
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(meta_bytes, dtype=np.uint8), **arrays)
    data = buffer.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)
    return len(data), wal_seq


def _load(path: Path, pipeline) -> dict:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zip/npz errors come in many types
        raise SnapshotError(f"unreadable: {exc}") from None
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"no valid metadata: {exc}") from None
    if meta.get("version") != FORMAT_VERSION:
        raise SnapshotError(f"format version {meta.get('version')!r}, this edged writes {FORMAT_VERSION}")
    store = pipeline.store
    if meta["window"] != store.window or meta["tiers"] != [[t.width, t.size] for t in store.tiers]:
        raise SnapshotError(f"window/history layout changed (snapshot window {meta['window']}, now {store.window})")
    if len(meta["names"]) > store.max_metrics:
        raise SnapshotError(f"{len(meta['names'])} metrics > sensors.max_metrics = {store.max_metrics}")
    wal_seq = meta.get("wal_seq", 0)
    if isinstance(wal_seq, bool) or not isinstance(wal_seq, int) or wal_seq < 0:
        raise SnapshotError(f"bad wal_seq {wal_seq!r}")
    if not isinstance(meta.get("redeliveries", []), list):
        raise SnapshotError("bad redeliveries list")
    meta["arrays"] = arrays
    return meta


def restore(path: Path, pipeline) -> int:
    """Load a snapshot into a fresh pipeline; returns the number of metrics restored (0: none)."""
    if not path.exists():
        return 0
    try:
        meta = _load(path, pipeline)
    except SnapshotError as exc:
        aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
        os.replace(path, aside)
        log.warning("snapshot_set_aside", path=str(path), reason=str(exc), moved_to=str(aside),
                    hint="starting with fresh state; the old file is kept for inspection")
        return 0
    arrays = meta["arrays"]
    with pipeline.lock:
        store = pipeline.store
        n = len(meta["names"])
        store._grow(max(n, store.capacity))
        store.values[:n], store.times[:n], store.count[:n] = arrays["values"], arrays["times"], arrays["count"]
        for t, tier in enumerate(store.tiers):
            for name in TIER_ARRAYS:
                getattr(tier, name)[:n] = arrays[f"tier{t}_{name}"]
        store.names = list(meta["names"])
        store.units = list(meta["units"])
        store.free = list(meta["free"])
        store.index = {name: slot for slot, name in enumerate(store.names) if name is not None}
        pipeline.decisions = []
        for slot, d in enumerate(meta["decisions"]):
            if d is None:
                pipeline.decisions.append(None)
                continue
            pipeline.decisions.append(MetricDecision(
                metric=d["metric"], status=d["status"], last_score=float(d["last_score"]), below=d["below"],
                muted_until=d["muted_until"], episode=_episode_from_json(d["episode"]),
                silence=_episode_from_json(d["silence"]),
            ))
        pipeline.after_restore()
        pipeline.recent_events.extend(meta["recent_events"])
        pipeline.applied_seq = meta.get("wal_seq", 0)  # absent in snapshots of older builds
        pipeline.restore_redelivery_keys(meta.get("redeliveries") or [])
        if meta["data_now"] is not None:
            pipeline.clock.observe(float(meta["data_now"]))
        loader = getattr(pipeline.detector, "load_state_dict", None)
        detector_state = {k[len("detector_"):]: v for k, v in arrays.items() if k.startswith("detector_")}
        if loader is not None and detector_state and meta["detector"] == pipeline.detector.name:
            loader(detector_state)
    log.info("snapshot_restored", path=str(path), metrics=len(store.index), age_s=round(time.time() - meta["saved_at"], 1),
             wal_seq=pipeline.applied_seq)
    return len(store.index)
