"""Pure decisions: scores → statuses and anomaly episodes, with hysteresis; summaries.

No I/O and no clock: the pipeline passes times in, gets events out. An episode starts when
a metric's score reaches its threshold and ends only after ``end_after`` consecutive
readings below ``threshold x end_ratio``, so a noisy metric near the threshold does not
flap. Silence (no reading for too long) is an episode of kind ``silence``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

LEARNING, OK, ANOMALOUS, STALE, MUTED = "learning", "ok", "anomalous", "stale", "muted"


@dataclass(frozen=True, slots=True)
class Baseline:
    median: float
    p05: float
    p95: float

    @classmethod
    def of(cls, values: np.ndarray) -> "Baseline | None":
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return None
        p05, med, p95 = np.percentile(finite, [5, 50, 95])
        return cls(float(med), float(p05), float(p95))

    def as_dict(self) -> dict[str, float]:
        return {"median": round(self.median, 6), "p05": round(self.p05, 6), "p95": round(self.p95, 6)}


@dataclass(slots=True)
class Episode:
    id: str
    kind: str  # "value" | "silence"
    metric: str
    start_ts: float
    baseline: Baseline | None
    direction: str  # "up" | "down" | "none"
    value: float
    peak: float
    score: float
    last_ts: float
    unit: str | None = None
    expected_interval_s: float | None = None
    announced: bool = True  # False when the start fell in a mute: its end is not published either
    onset_ts: float | None = None  # when the excursion began, if before the reading that started the episode
    # the value at this time of day on the most similar earlier day, when the detector's time-of-day
    # channel started the episode (what the reading was unlike); direction is relative to it
    expected: float | None = None

    @property
    def since_ts(self) -> float:
        """The episode's beginning as a person would say it: the onset, else the start."""
        return self.onset_ts if self.onset_ts is not None else self.start_ts

    @property
    def duration_s(self) -> float:
        return max(0.0, self.last_ts - self.since_ts)


@dataclass(frozen=True, slots=True)
class Event:
    """An anomaly event, ready to be encoded as the anomaly/<metric> payload."""

    event: str  # "start" | "end"
    episode: Episode
    ts: float
    summary: str

    def payload(self) -> dict:
        ep = self.episode
        return {
            "id": ep.id,
            "event": self.event,
            "kind": ep.kind,
            "metric": ep.metric,
            "ts": round(self.ts, 3),
            "start": round(ep.start_ts, 3),
            "onset": round(ep.since_ts, 3),
            "score": _finite(ep.score),
            "value": _finite(ep.value),
            "peak": _finite(ep.peak),
            "baseline": ep.baseline.as_dict() if ep.baseline else None,
            "direction": ep.direction,
            "expected": _finite(ep.expected),
            "duration_s": round(ep.duration_s, 3),
            "unit": ep.unit,
            "summary": self.summary,
        }


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


# --------------------------------------------------------------------------- wording


def fmt_number(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 10000 or v == int(v):
        text = f"{v:.0f}"
    elif a >= 10:
        text = f"{v:.1f}"
    elif a >= 0.1:
        text = f"{v:.2f}"
    else:
        text = f"{v:.3g}"
    if "." in text and "e" not in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def fmt_value(v: float, unit: str | None) -> str:
    if not unit:
        return fmt_number(v)
    glue = "" if unit in ("%", "°C", "°F", "°", "‰") else " "
    return f"{fmt_number(v)}{glue}{unit}"


def fmt_duration(seconds: float) -> str:
    if seconds < 9.95:
        text = fmt_number(round(seconds, 1))
        return f"{text} second{'' if text == '1' else 's'}"
    s = int(round(seconds))
    if s < 90:
        return f"{s} second{'s' if s != 1 else ''}"
    m = round(s / 60)
    if m < 90:
        return f"{m} minutes"
    h = s / 3600
    return f"{h:.1f} hours".replace(".0 ", " ")


def fmt_clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M")


def summarize(event: str, ep: Episode) -> str:
    """The template summary: one plain sentence, only facts from the episode."""
    if ep.kind == "silence":
        interval = f" (expected every {fmt_duration(ep.expected_interval_s)})" if ep.expected_interval_s else ""
        if event == "end":
            return f"{ep.metric} is reporting again after {fmt_duration(ep.duration_s)} of silence."
        return f"{ep.metric} has sent no reading since {fmt_clock(ep.start_ts)}{interval}."
    typical = ""
    if ep.baseline:
        typical = f" (typical {fmt_value(ep.baseline.p05, None)}–{fmt_value(ep.baseline.p95, ep.unit)})"
    verb = {"up": "rose to", "down": "fell to"}.get(ep.direction, "is unusual at" if ep.baseline else "changed to")
    if event == "end" and ep.expected is not None:  # the detector stopped flagging it: say no more than that
        return (f"{ep.metric} is no longer flagged after {fmt_duration(ep.duration_s)}, at {fmt_value(ep.value, ep.unit)} "
                f"(it had {fmt_value(ep.expected, ep.unit)} at this time on earlier days).")
    if event == "end":
        peak_word = "peak" if ep.direction != "down" else "low"
        return (
            f"{ep.metric} is back to normal at {fmt_value(ep.value, ep.unit)} after "
            f"{fmt_duration(ep.duration_s)} ({peak_word} {fmt_value(ep.peak, ep.unit)}{typical and ', ' + typical[2:-1]})."
        )
    since = ""
    if ep.onset_ts is not None and fmt_clock(ep.onset_ts) != fmt_clock(ep.start_ts):
        moving = {"up": "rising", "down": "falling"}.get(ep.direction, "changing")
        since = f", {moving} since {fmt_clock(ep.onset_ts)}"
    so_far = f", {fmt_duration(ep.duration_s)} so far" if ep.duration_s >= 1 else ""
    if ep.expected is not None:  # unlike the same time on earlier days: say so, not the last hours' range
        rel = {"up": "above", "down": "below"}.get(ep.direction, "unlike")
        return (f"{ep.metric} is {fmt_value(ep.value, ep.unit)} at {fmt_clock(ep.start_ts)}, {rel} the "
                f"{fmt_value(ep.expected, ep.unit)} it had at this time on earlier days{so_far}.")
    return f"{ep.metric} {verb} {fmt_value(ep.value, ep.unit)}{typical} at {fmt_clock(ep.start_ts)}{since}{so_far}."


# --------------------------------------------------------------------------- state machine


@dataclass(slots=True)
class MetricDecision:
    """One metric's episode state. ``below`` counts consecutive readings under the end level."""

    metric: str
    episode: Episode | None = None
    silence: Episode | None = None
    below: int = 0
    status: str = LEARNING
    last_score: float = float("nan")
    muted_until: float = 0.0


def episode_id(metric: str, kind: str, start_ts: float) -> str:
    """Deterministic: re-processing the same readings (after a crash) yields the same id."""
    return hashlib.blake2b(f"{metric}|{kind}|{start_ts:.3f}".encode(), digest_size=6).hexdigest()


def decide_value(
    state: MetricDecision,
    *,
    ts: float,
    value: float,
    score: float,
    threshold: float,
    end_ratio: float,
    end_after: int,
    context: np.ndarray,
    unit: str | None,
    context_ts: np.ndarray | None = None,
    explain: Callable[[], dict] | None = None,
) -> list[Event]:
    """Advance one metric by one scored reading. ``context`` (and ``context_ts``, their times)
    are the readings before this one, oldest first; with the times, an episode's onset is
    traced back to where the excursion began (see :func:`onset`). ``explain`` (asked only when an
    episode starts) is the detector's account of the score: an ``expected`` value there (the same
    time on earlier days) replaces the window's median as what the reading is compared with."""
    events: list[Event] = []
    state.last_score = score
    if state.silence is not None:  # a reading ends a silence episode
        ep = state.silence
        ep.last_ts = ts
        events.append(Event("end", ep, ts, summarize("end", ep)))
        state.silence = None
    if math.isnan(score):
        state.status = ANOMALOUS if state.episode else LEARNING
        return events
    ep = state.episode
    if ep is None:
        if score >= threshold:
            baseline = Baseline.of(context)
            direction = "none"
            expected = _expected(explain)
            if expected is not None:
                direction = "up" if value > expected else "down" if value < expected else "none"
            # inside its usual band the reading is not high or low: the anomaly is one of shape (a
            # flatline, a cycle that changed), and "rose to" would mislead
            elif baseline and not baseline.p05 <= value <= baseline.p95:
                direction = "up" if value > baseline.median else "down"
            ep = Episode(episode_id(state.metric, "value", ts), "value", state.metric, ts, baseline, direction, value, value,
                         score, ts, unit, expected=expected)
            if context_ts is not None and expected is None:  # an onset is where it left the window's level
                ep.onset_ts = onset(context, context_ts, direction)
            state.episode, state.below = ep, 0
            events.append(Event("start", ep, ts, summarize("start", ep)))
    else:
        ep.value, ep.last_ts, ep.score = value, ts, max(ep.score, score)
        centre = ep.expected if ep.expected is not None else ep.baseline.median if ep.baseline else 0.0
        if abs(value - centre) > abs(ep.peak - centre):
            ep.peak = value
        state.below = state.below + 1 if score < threshold * end_ratio else 0
        if state.below >= end_after:
            events.append(Event("end", ep, ts, summarize("end", ep)))
            state.episode, state.below = None, 0
    state.status = ANOMALOUS if state.episode else OK
    return events


def _expected(explain: Callable[[], dict] | None) -> float | None:
    """The finite number a detector's explanation gives as ``expected``, else None (a detector's
    account is optional and may be anything: it never stops an episode from starting)."""
    info = explain() if explain is not None else None
    try:
        value = float(info["expected"]) if isinstance(info, dict) and info.get("expected") is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def onset(context: np.ndarray, context_ts: np.ndarray, direction: str) -> float | None:
    """When the excursion that just started an episode began: the first of the run of readings
    right before it that already lay beyond the context's median by more than its noise
    (1.4826 MAD), in the episode's direction. A detector fires some readings into a gradual
    rise; a person asking "when did it start" means where it left its usual level. None when
    the reading before was not part of the excursion (a step, a spike, a door)."""
    if direction not in ("up", "down") or len(context) == 0:
        return None
    keep = np.isfinite(context) & np.isfinite(context_ts)
    c, t = context[keep], context_ts[keep]
    if len(c) < 3:
        return None
    med = float(np.median(c))
    noise = 1.4826 * float(np.median(np.abs(c - med)))
    beyond = c > med + noise if direction == "up" else c < med - noise
    if not beyond[-1]:
        return None
    inside = np.flatnonzero(~beyond)
    first = int(inside[-1]) + 1 if len(inside) else 0
    return float(t[first])


def decide_silence(
    state: MetricDecision, *, now: float, last_ts: float, interval: float, stale_after: float, unit: str | None
) -> list[Event]:
    """Called by the periodic tick: a metric silent for longer than ``stale_after`` goes stale."""
    if state.silence is not None or not math.isfinite(last_ts) or now - last_ts <= stale_after:
        return []
    ep = Episode(episode_id(state.metric, "silence", last_ts), "silence", state.metric, last_ts, None, "none", float("nan"), float("nan"), 1.0, now, unit, interval)
    state.silence = ep
    state.status = STALE
    return [Event("start", ep, now, summarize("start", ep))]
