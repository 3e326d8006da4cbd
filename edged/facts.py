"""Facts: the query layer over the daemon's own state that every answer is built from.

Each fact is a small dict with a ``kind`` and plain values. Numbers are rounded the way
answers print them (``decision.fmt_number``), so an answer's numbers can be checked
against its facts literally. Reads happen under the pipeline's lock, on the command lane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .decision import fmt_number
from .pipeline import SensorPipeline


@dataclass(frozen=True, slots=True)
class Window:
    """A time window of a question: [since, until] in epoch seconds, with the user's words."""

    since: float
    until: float
    label: str

    @property
    def seconds(self) -> float:
        return self.until - self.since


def shown(value: float | None) -> float | None:
    """The number as an answer prints it (91.04 → 91, 0.1234 → 0.123)."""
    if value is None or not math.isfinite(value):
        return None
    return float(fmt_number(value))


class Facts:
    def __init__(self, pipeline: SensorPipeline) -> None:
        self.p = pipeline

    def now(self) -> float:
        return self.p.clock.now()

    def metrics(self) -> list[str]:
        with self.p.lock:
            return sorted(self.p.store.index)

    def units(self) -> dict[str, str | None]:
        with self.p.lock:
            return {name: self.p.store.units[slot] for name, slot in self.p.store.index.items()}

    def _slot(self, metric: str) -> int | None:
        return self.p.store.index.get(metric)

    def current(self, metric: str) -> dict | None:
        with self.p.lock:
            slot = self._slot(metric)
            if slot is None or self.p.store.count[slot] == 0:
                return None
            state = self.p.state_payload(slot)
        return {
            "kind": "current", "metric": metric, "value": shown(state["value"]), "unit": state["unit"],
            "ts": state["ts"], "age_s": round(max(0.0, self.now() - state["ts"]), 1), "status": state["status"],
        }

    def stats(self, metric: str, window: Window) -> dict | None:
        with self.p.lock:
            slot = self._slot(metric)
            if slot is None:
                return None
            agg = self.p.store.stats(slot, window.since, window.until)
            unit = self.p.store.units[slot]
        if agg is None:
            return {"kind": "stats", "metric": metric, "window": window.label, "count": 0, "unit": unit}
        return {
            "kind": "stats", "metric": metric, "window": window.label, "unit": unit, "count": agg.count,
            "min": shown(agg.min), "max": shown(agg.max), "mean": shown(agg.mean), "last": shown(agg.last),
            "since": round(max(window.since, agg.first_ts), 3), "until": round(window.until, 3),
        }

    def trend(self, metric: str, window: Window) -> dict | None:
        """Least-squares slope over the recent readings in the window, per hour."""
        with self.p.lock:
            slot = self._slot(metric)
            if slot is None:
                return None
            values, times = self.p.store.windows(np.array([slot]))
            unit = self.p.store.units[slot]
        v, t = values[0], times[0]
        keep = np.isfinite(v) & np.isfinite(t) & (t >= window.since) & (t <= window.until)
        if keep.sum() < 3 or np.ptp(t[keep]) <= 0:
            return None
        slope_h = float(np.polyfit(t[keep] - t[keep][0], v[keep], 1)[0]) * 3600
        change = slope_h * np.ptp(t[keep]) / 3600
        spread = float(np.ptp(v[keep])) or 1.0
        direction = "steady" if abs(change) < 0.25 * spread else "rising" if change > 0 else "falling"
        return {"kind": "trend", "metric": metric, "window": window.label, "direction": direction,
                "per_hour": shown(slope_h), "unit": unit}

    def anomalies(self, metric: str | None, window: Window) -> list[dict]:
        """Episodes that started in the window or are still open, newest first."""
        with self.p.lock:
            events = list(self.p.recent_events)
            open_ids = {ep["id"] for ep in self.p.open_episodes()}
        ended = {e["id"]: e for e in events if e["event"] == "end"}
        out = []
        for e in reversed(events):
            if e["event"] != "start" or (metric and e["metric"] != metric):
                continue
            since = e.get("onset", e["start"])  # where the excursion began (events before onsets: the start)
            if not (window.since <= since <= window.until or e["id"] in open_ids):
                continue
            end = ended.get(e["id"])
            out.append({
                "kind": "anomaly", "metric": e["metric"], "id": e["id"], "type": e["kind"],
                "start": e["start"], "onset": since, "open": e["id"] in open_ids, "direction": e["direction"],
                "value": shown(e["value"]) if e["value"] is not None else None,
                "peak": shown(end["peak"]) if end and end["peak"] is not None else shown(e["peak"]) if e["peak"] is not None else None,
                "unit": e["unit"], "summary": (end or e)["summary"],
            })
        return out

    def stale(self) -> list[dict]:
        with self.p.lock:
            out = []
            for slot in self.p.live_slots():
                state = self.p.decisions[slot]
                if state.silence is not None:
                    out.append({"kind": "stale", "metric": state.metric, "since": round(state.silence.start_ts, 3),
                                "expected_interval_s": shown(state.silence.expected_interval_s)})
        return out

    def overview(self) -> dict:
        with self.p.lock:
            return {"kind": "overview", "metrics": len(self.p.store), "status": self.p.status_counts(),
                    "open_episodes": len(self.p.open_episodes())}
