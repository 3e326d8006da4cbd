"""Template answers from facts only: a Plan (edged.nlu) → (text, facts).

Every number an answer prints comes out of a fact dict in the returned list, printed with the
``decision.fmt_*`` helpers, so "no local answer states a number not in its facts" can be checked
literally. Facts come from :class:`edged.facts.Facts`; a few facts Facts does not offer yet
(when a door changed state, when a window's extreme happened, a sensor repeating one value) are
read here from the same pipeline state, under its lock, and returned as facts like the others.

``answer(plan, facts_source)`` answers a local plan; ``local_fallback(plan, facts_source, why)``
is the best local answer for a question meant for the cloud when the cloud cannot be used;
``cloud_facts(plan, facts_source)`` is what travels with a cloud request.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from .decision import fmt_clock, fmt_duration, fmt_number, fmt_value
from .facts import Window, shown
from .nlu.router import Plan

DEFAULT_PERIOD_S = 86400.0  # "any anomalies?" with no period: the last 24 hours
FLAT_MIN_S = 1800.0  # one value repeated this long (and the metric varied before) is worth saying
RECURRING_MIN = 4  # this many episodes of one metric in the period read as a cycle, not news

# binary sensors: (word for 1, word for 0) by what the metric name says; Home Assistant's
# convention for doors and windows is on = open, Zigbee2MQTT's "contact" is true = closed
BINARY_WORDS: tuple[tuple[tuple[str, ...], tuple[str, str]], ...] = (
    (("contact",), ("closed", "open")),
    (("door", "window", "gate", "garage", "hatch", "lid"), ("open", "closed")),
    (("motion", "occupancy", "presence"), ("motion", "no motion")),
    (("leak", "flood", "water_leak"), ("wet", "dry")),
)
HELP_TEXT = (
    "I answer from this node's own sensor data. You can ask for a current value (\"greenhouse humidity?\"), "
    "a statistic over a period (\"highest kitchen temperature today\", \"average outdoor temperature since noon\", "
    "\"min and max over the last hour\"), a trend (\"is the water level rising?\"), anomalies (\"anything unusual "
    "last night?\"), which sensors exist (\"list sensors\") and which are stale (\"which sensors stopped reporting?\"). "
    "Questions that need advice, outside knowledge or drafting text go to the cloud model when it is enabled."
)


# ------------------------------------------------------------------ small helpers
def _label(window: Window | None) -> str:
    return window.label if window else "now"


def _in_label(window: Window) -> str:
    label = window.label
    if label in ("today", "yesterday") or label.startswith(("since", "between", "this", "last night")):
        return label
    return f"in {label}"


def binary_words(metric: str, unit: str | None = None) -> tuple[str, str] | None:
    """('open', 'closed') for a door-like metric, None for a metric that is not two-state by name."""
    name = metric.lower()
    for words, states in BINARY_WORDS:
        if any(w in name for w in words):
            return states
    return None


def _is_binary(fs: Any, metric: str, current: dict | None) -> bool:
    if binary_words(metric) is None or current is None:
        return False
    return current.get("unit") in (None, "") and current.get("value") in (0.0, 1.0)


def _state_word(metric: str, value: float | None) -> str:
    words = binary_words(metric) or ("on", "off")
    if value is None:
        return "unknown"
    return words[0] if value >= 0.5 else words[1]


def _pipeline(fs: Any):
    return getattr(fs, "p", None)


# ------------------------------------------------------------------ facts Facts does not offer (yet)
def _slot(p, metric: str) -> int | None:
    return p.store.index.get(metric)


def _recent(p, slot: int) -> tuple[np.ndarray, np.ndarray]:
    """The metric's recent readings (values, times), oldest first, padding dropped. Under p.lock."""
    vals, times = p.store.windows(np.array([slot]))
    keep = np.isfinite(vals[0]) & np.isfinite(times[0])  # the ring writes both together
    return vals[0][keep], times[0][keep]


def _changes(fs: Any, metric: str, window: Window) -> dict | None:
    """State changes of a two-state metric in the window: exact from the recent readings, from the
    history buckets (and the anomaly events' start times) before that."""
    p = _pipeline(fs)
    if p is None:
        return None
    with p.lock:
        slot = _slot(p, metric)
        if slot is None:
            return None
        v, t = _recent(p, slot)
        ring_start = float(t[0]) if t.size else math.inf
        tier = next((tr for tr in p.store.tiers if tr.covers(window.until, window.since)), p.store.tiers[-1])
        b = tier.bucket[slot].copy()
        bmin, bmax = tier.min[slot].copy(), tier.max[slot].copy()
        blast, blast_ts, bcount = tier.last[slot].copy(), tier.last_ts[slot].copy(), tier.count[slot].copy()
        bsum = tier.sum[slot].copy()
        width = tier.width
        starts = [e["start"] for e in p.recent_events if e["metric"] == metric and e["event"] == "start"
                  and e["kind"] == "value" and e["direction"] == "up"]
    events: list[tuple[float, int, float]] = []  # (ts, new state, resolution s)
    prev: float | None = None
    order = np.argsort(b)
    for k in order:
        if b[k] < 0 or bcount[k] <= 0:
            continue
        lo = b[k] * width
        if lo + width < window.since - width:
            continue  # one bucket before the window tells the state it started in
        if lo >= min(ring_start, window.until):
            break  # the recent readings have exact times from here on
        if prev is not None:
            found: list[tuple[float, int, float]] = []
            # Inside a bucket only min/max/sum/last are known. With regular reports, the share of
            # readings at 1 (sum/count) is about the share of the bucket's time spent at 1, which
            # places a single change in it; an anomaly event's start time is exact and wins.
            duty = float(bsum[k] / bcount[k])
            if prev < 0.5 and bmax[k] >= 0.5:
                exact = [s for s in starts if lo <= s < lo + width]
                single = blast[k] >= 0.5
                when = exact[0] if exact else (lo + width * (1 - duty) if single else lo + width / 2)
                found.append((float(when), 1, 0.0 if exact else width))
                if not single:
                    found.append((float(max(when, min(blast_ts[k], when + width * duty))), 0, width))
            elif prev >= 0.5 and bmin[k] < 0.5:
                single = blast[k] < 0.5
                found.append((float(lo + width * duty if single else lo + width / 2), 0, width))
                if not single:
                    found.append((float(blast_ts[k]), 1, width))
            events.extend(e for e in found if e[0] < ring_start)
        prev = float(blast[k])
    for i in range(1, t.size):
        if (v[i] >= 0.5) != (v[i - 1] >= 0.5):
            events.append((float(t[i]), int(v[i] >= 0.5), 0.0))
    events = sorted(e for e in events if window.since <= e[0] <= window.until)
    on_word, off_word = binary_words(metric) or ("on", "off")
    rises = [e for e in events if e[1] == 1]
    state_now = float(v[-1]) if v.size else None
    fact = {
        "kind": "changes", "metric": metric, "window": window.label, "count": len(rises),
        "to_" + on_word.replace(" ", "_"): [fmt_clock(e[0]) for e in rises],
        "to_" + off_word.replace(" ", "_"): [fmt_clock(e[0]) for e in events if e[1] == 0],
        "times": [round(e[0], 3) for e in events], "states": [e[1] for e in events],
        "approximate": any(e[2] > 0 for e in events), "state_now": state_now,
    }
    spans = []
    for i, e in enumerate(events):  # each time it went to 1, and how long it stayed
        if e[1] == 1:
            end = next((x[0] for x in events[i + 1:] if x[1] == 0), None)
            if end is not None:
                spans.append({"from": fmt_clock(e[0]), "to": fmt_clock(end), "for": fmt_duration(end - e[0])})
    fact["spans"] = spans
    last_rise = max((e[0] for e in events if e[1] == 1), default=None)
    if state_now is not None and state_now >= 0.5 and last_rise is not None:
        fact["on_since"] = round(last_rise, 3)
        fact["on_since_clock"] = fmt_clock(last_rise)
    return fact


def _last_change(fs: Any, metric: str, now: float) -> dict | None:
    """The latest state change of a two-state metric, looking back a week at most."""
    for span in (3 * 3600, 86400, 7 * 86400):
        fact = _changes(fs, metric, Window(now - span, now, f"the last {fmt_duration(span)}"))
        if fact is None:
            return None
        if fact["times"]:
            return fact
    return fact


def _extreme_time(fs: Any, metric: str, window: Window, which: str) -> dict | None:
    """When the window's min or max happened: exact from the recent readings or the 1-minute
    history, else the middle of the history bucket (its width is given)."""
    p = _pipeline(fs)
    if p is None or which not in ("min", "max"):
        return None
    with p.lock:
        slot = _slot(p, metric)
        if slot is None:
            return None
        agg = p.store.stats(slot, window.since, window.until)
        if agg is None:
            return None
        target = agg.max if which == "max" else agg.min
        vals, times = p.store.windows(np.array([slot]))
        v, t = vals[0], times[0]
        hit = np.flatnonzero(np.isfinite(v) & (t >= window.since) & (t <= window.until) & (v == target))
        if hit.size:
            ts, res = float(t[hit[0]]), 0.0
        else:
            ts = res = None
            for tier in p.store.tiers:
                b = tier.bucket[slot]
                lo = max(np.floor(window.since / tier.width), b.max() - tier.size + 1)
                sel = (b >= lo) & (b <= np.floor(window.until / tier.width)) & (tier.count[slot] > 0)
                arr = tier.max[slot] if which == "max" else tier.min[slot]
                k = np.flatnonzero(sel & (arr == target))
                if k.size:
                    k = k[np.argmin(b[k])]  # the first time it got there
                    if tier.last[slot, k] == target:
                        ts, res = float(tier.last_ts[slot, k]), 0.0
                    elif tier.width <= 60:
                        ts, res = float(b[k] * tier.width), tier.width
                    else:
                        ts, res = float(b[k] * tier.width + tier.width / 2), tier.width
                    break
    if ts is None:
        return None
    return {"kind": "extreme", "metric": metric, "stat": which, "value": shown(target), "ts": round(ts, 3),
            "clock": fmt_clock(ts), "resolution_s": res, "window": window.label}


def _flat(fs: Any, metric: str, now: float) -> dict | None:
    """A metric repeating one value for a long time while it varied before (a frozen sensor)."""
    p = _pipeline(fs)
    if p is None:
        return None
    with p.lock:
        slot = _slot(p, metric)
        if slot is None:
            return None
        v, t = _recent(p, slot)
        if v.size < 10:
            return None
        last = v[-1]
        same = v == last
        if not same.all():
            k = int(np.flatnonzero(~same)[-1]) + 1
            since, n = float(t[k]), int(v.size - k)
        else:
            since, n = float(t[0]), int(v.size)
            for tier in p.store.tiers:  # extend back through the history while every bucket is that value
                b = tier.bucket[slot]
                order = np.argsort(b)[::-1]
                for k in order:
                    if b[k] < 0 or tier.count[slot, k] <= 0:
                        continue
                    lo = b[k] * tier.width
                    if lo >= since:
                        continue
                    if tier.min[slot, k] == last and tier.max[slot, k] == last:
                        since, n = lo, n + int(tier.count[slot, k])
                    else:
                        break
                else:
                    continue
                break
        day = p.store.stats(slot, now - DEFAULT_PERIOD_S, now)
    if now - since < FLAT_MIN_S or n < 10 or day is None or day.max == day.min:
        return None
    if binary_words(metric) is not None and last in (0.0, 1.0):
        return None
    return {"kind": "flat", "metric": metric, "value": shown(float(last)), "since": round(since, 3),
            "since_clock": fmt_clock(since), "readings": n, "for": fmt_duration(now - since)}


# ------------------------------------------------------------------ per intent
def _current_lines(plan: Plan, fs: Any, facts: list[dict]) -> list[str]:
    lines: list[str] = []
    now = fs.now()
    values: dict[str, dict] = {}
    for metric in plan.metrics:
        cur = fs.current(metric)
        if cur is None:
            lines.append(f"{metric} has no readings yet.")
            continue
        facts.append(cur)
        values[metric] = cur
        if _is_binary(fs, metric, cur):
            lines.append(_binary_line(plan, fs, metric, cur, now, facts))
            continue
        shown_value = fmt_value(cur["value"], cur["unit"])
        if cur["status"] == "stale":
            lines.append(f"{metric} is stale: no reading since {fmt_clock(cur['ts'])}; its last value was {shown_value}.")
            continue
        text = f"{metric} is {shown_value} now ({cur['status']})"
        if plan.convert and cur["unit"] in ("°C", "°F", "C", "F") and plan.convert != cur["unit"]:
            conv = _convert(cur["value"], cur["unit"], plan.convert)
            if conv is not None:
                facts.append({"kind": "converted", "metric": metric, "value": conv, "unit": plan.convert,
                              "from_value": cur["value"], "from_unit": cur["unit"]})
                text = f"{metric} is {fmt_value(conv, plan.convert)} ({shown_value}) now ({cur['status']})"
        flat = _flat(fs, metric, now)
        if flat:
            facts.append(flat)
            text += f"; it has repeated {fmt_value(flat['value'], cur['unit'])} since {flat['since_clock']}, so the sensor may be stuck"
        lines.append(text + ".")
    if plan.compare and len(values) >= 2:
        lines.insert(0, _compare_line(plan, list(values.values())[:2]))
    elif plan.yes_no and plan.state_asked in ("running", "on", "off", "working") and len(values) == 1:
        lines.insert(0, _running_line(plan, fs, next(iter(values.values())), facts))
    elif plan.yes_no and plan.state_asked in ("normal", "ok", "okay", "fine", "alright", "anomalous") and values:
        bad = [v["metric"] for v in values.values() if v["status"] in ("anomalous", "stale")]
        asked_bad = plan.state_asked == "anomalous"
        verdict = "Yes" if bool(bad) == asked_bad else "No"
        lines.insert(0, f"{verdict}: " + (f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not normal now."
                                            if bad else "the status is ok now."))
    return lines


def _binary_line(plan: Plan, fs: Any, metric: str, cur: dict, now: float, facts: list[dict]) -> str:
    state = _state_word(metric, cur["value"])
    prefix = ""
    if plan.yes_no and plan.state_asked:
        asked = {"opened": "open", "shut": "closed"}.get(plan.state_asked, plan.state_asked)
        if asked in (binary_words(metric) or ()):
            prefix = "Yes, " if asked == state else "No, "
    text = f"{prefix}{metric} is {state}"
    change = _last_change(fs, metric, now)
    if change:
        facts.append(change)
        if change["times"]:
            when = change["times"][-1]
            approx = "about " if change["approximate"] and when < now - 3 * 3600 else ""
            text += f" (since {approx}{fmt_clock(when)})"
    if cur["status"] == "stale":
        text += f"; but it is stale: no report since {fmt_clock(cur['ts'])}"
    return text + "."


def _compare_line(plan: Plan, pair: list[dict]) -> str:
    a, b = pair
    q = plan.question.lower()
    more = not re.search(r"\b(colder|cooler|lower|less|drier|smaller)\b", q)
    higher = a["value"] > b["value"]
    if a["value"] == b["value"]:
        verdict = "No, they are the same"
    else:
        verdict = ("Yes" if higher == more else "No")
    return (f"{verdict}: {a['metric']} is {fmt_value(a['value'], a['unit'])} and "
            f"{b['metric']} is {fmt_value(b['value'], b['unit'])}.")


def _running_line(plan: Plan, fs: Any, cur: dict, facts: list[dict]) -> str:
    now = fs.now()
    day = fs.stats(cur["metric"], Window(now - DEFAULT_PERIOD_S, now, "the last 24 hours"))
    if not day or not day.get("count") or day["max"] is None or day["max"] == day["min"]:
        return f"{cur['metric']} reads {fmt_value(cur['value'], cur['unit'])}."
    facts.append(day)
    running = cur["value"] > day["min"] + 0.5 * (day["max"] - day["min"])
    asked_on = plan.state_asked in ("running", "on", "working")
    verdict = "Yes" if running == asked_on else "No"
    state = "running" if running else "idle"
    return (f"{verdict}, it looks {state}: {fmt_value(cur['value'], cur['unit'])} now, against "
            f"{fmt_value(day['min'], cur['unit'])}–{fmt_value(day['max'], cur['unit'])} over the last 24 hours.")


def _convert(value: float, unit: str, to: str) -> float | None:
    c = value if unit in ("°C", "C") else (value - 32) * 5 / 9 if unit in ("°F", "F") else None
    if c is None:
        return None
    out = {"°C": c, "°F": c * 9 / 5 + 32, "K": c + 273.15}.get(to)
    return shown(out) if out is not None else None


def _stats_lines(plan: Plan, fs: Any, facts: list[dict]) -> list[str]:
    window = plan.window or Window(fs.now() - DEFAULT_PERIOD_S, fs.now(), "the last 24 hours")
    lines = []
    for metric in plan.metrics:
        cur = fs.current(metric)
        if cur is not None and _is_binary(fs, metric, cur):
            lines.append(_changes_line(fs, metric, window, cur, facts, plan.yes_no))
            continue
        st = fs.stats(metric, window)
        if st is None:
            lines.append(f"{metric} has no readings.")
            continue
        facts.append(st)
        if not st["count"]:
            text = f"There are no readings from {metric} {_in_label(window)}."
            if cur is not None and cur["status"] == "stale":
                facts.append(cur)
                text += f" It is stale: its last reading was at {fmt_clock(cur['ts'])}."
            lines.append(text)
            continue
        u = st["unit"]
        what = plan.stat
        if what in ("max", "min"):
            ext = _extreme_time(fs, metric, window, what)
            word = "Highest" if what == "max" else "Lowest"
            text = f"{word} {metric} {_in_label(window)}: {fmt_value(st[what], u)}"
            if ext and ext["value"] == st[what]:
                facts.append(ext)
                text += f" at {'about ' if ext['resolution_s'] > 60 else ''}{ext['clock']}"
            lines.append(text + ".")
        elif what == "mean":
            lines.append(f"Average {metric} {_in_label(window)}: {fmt_value(st['mean'], u)} "
                         f"(min {fmt_value(st['min'], u)}, max {fmt_value(st['max'], u)}).")
        else:
            lines.append(f"{metric} {_in_label(window)}: min {fmt_value(st['min'], u)}, max {fmt_value(st['max'], u)}, "
                         f"average {fmt_value(st['mean'], u)}.")
        if cur is not None and cur["status"] == "stale":
            facts.append(cur)
            lines[-1] = lines[-1][:-1] + f" (stale: no reading since {fmt_clock(cur['ts'])})."
    return lines


def _changes_line(fs: Any, metric: str, window: Window, cur: dict, facts: list[dict], yes_no: bool = False) -> str:
    ch = _changes(fs, metric, window)
    on_word, off_word = binary_words(metric) or ("on", "off")
    facts.append(cur)
    if ch is None:
        return f"{metric} is {_state_word(metric, cur['value'])} now."
    facts.append(ch)
    verb = {"open": "opened", "closed": "closed", "motion": "saw motion", "wet": "got wet", "on": "switched on"}.get(on_word, on_word)
    times = ch["to_" + on_word.replace(" ", "_")]
    n = ch["count"]
    about = "about " if ch["approximate"] else ""
    if n == 0:
        text = f"{metric} was not {verb} {_in_label(window)}"
    else:
        text = f"{metric} was {verb} {n} time{'s' if n != 1 else ''} {_in_label(window)}, at {about}{', '.join(times)}"
        if ch["spans"]:
            text += " (" + "; ".join(f"{on_word} {sp['from']}–{sp['to']}, {sp['for']}" for sp in ch["spans"]) + ")"
    if yes_no:
        text = ("Yes, " if n else "No, ") + text
    return text + f"; it is {_state_word(metric, cur['value'])} now."


def _trend_lines(plan: Plan, fs: Any, facts: list[dict]) -> list[str]:
    now = fs.now()
    window = plan.window or Window(now - 3 * 3600, now, "the last 3 hours")
    lines = []
    for metric in plan.metrics:
        tr = fs.trend(metric, window)
        cur = fs.current(metric)
        if tr is None:
            st = fs.stats(metric, window)
            if st and st.get("count"):
                facts.append(st)
                lines.append(f"{metric} {_in_label(window)}: from {fmt_value(st['min'], st['unit'])} to "
                             f"{fmt_value(st['max'], st['unit'])} (too few recent readings for a trend).")
            else:
                lines.append(f"There are not enough readings from {metric} {_in_label(window)} for a trend.")
            continue
        facts.append(tr)
        text = f"{metric} is {tr['direction']} {_in_label(window)}"
        if tr["direction"] != "steady":
            sign = "+" if tr["per_hour"] > 0 else ""
            text += f" ({sign}{fmt_value(tr['per_hour'], tr['unit'])} per hour)"
        if cur:
            facts.append(cur)
            text += f"; now {fmt_value(cur['value'], cur['unit'])}"
            flat = _flat(fs, metric, now) if tr["direction"] == "steady" else None
            if flat:  # not changing at all is a fault more often than a trend
                facts.append(flat)
                text += (f", the same value since {flat['since_clock']} ({flat['readings']} readings): "
                         f"the sensor may be stuck")
        lines.append(text + ".")
    return lines


def _anomaly_lines(plan: Plan, fs: Any, facts: list[dict]) -> list[str]:
    now = fs.now()
    window = plan.window or Window(now - DEFAULT_PERIOD_S, now, "the last 24 hours")
    metrics = list(plan.metrics) or [None]
    found: list[dict] = []
    for metric in metrics:
        found.extend(fs.anomalies(metric, window))
    by_metric: dict[str, list[dict]] = {}
    for a in found:
        by_metric.setdefault(a["metric"], []).append(a)
    lines, routine = [], []
    for metric, eps in by_metric.items():
        if len(eps) >= RECURRING_MIN and not any(e["open"] for e in eps):
            routine.append((metric, eps))
            continue
        facts.extend(eps)
        for e in eps[:3]:
            lines.append(_episode_line(e))
        if len(eps) > 3:
            lines.append(f"(and {len(eps) - 3} earlier episodes of {metric})")
    flats = [f for f in (_flat(fs, m, now) for m in (plan.metrics or fs.metrics())) if f]
    for f in flats:
        if f["since"] <= window.until:
            facts.append(f)
            lines.append(f"{f['metric']} has repeated {fmt_number(f['value'])} since {f['since_clock']} "
                         f"({f['readings']} readings): the sensor may be stuck.")
    asked = set(plan.metrics)
    for metric, eps in routine:
        fact = {"kind": "recurring", "metric": metric, "episodes": len(eps), "window": window.label}
        facts.append(fact)
        if metric in asked:  # asked about this sensor: say what it did
            facts.append(eps[0])
            lines.append(f"{metric} had {len(eps)} short episodes {_in_label(window)} that recur regularly "
                         f"(a cycle rather than an anomaly); the latest: {eps[0]['summary']}")
    if not lines:
        scope = f" for {', '.join(plan.metrics)}" if plan.metrics else ""
        text = f"No anomalies{scope} {_in_label(window)}."
        lines = [("No. " if plan.yes_no else "") + text]
    elif plan.yes_no:
        lines.insert(0, "Yes.")
    skipped = sum(len(eps) for metric, eps in routine if metric not in asked)
    if skipped:
        lines.append(f"({skipped} short episodes that recur regularly, a normal cycle, are left out; "
                     f"ask about a sensor to see them.)")
    return lines


def _episode_line(e: dict) -> str:
    """One anomaly episode: when it started, whether it is still open, and its summary."""
    state = "still open" if e["open"] else "ended"
    return f"{e['metric']}: {e['type']} anomaly from {fmt_clock(e.get('onset', e['start']))} ({state}): {e['summary']}"


def _stale_lines(plan: Plan, fs: Any, facts: list[dict]) -> list[str]:
    stale = fs.stale()
    wanted = set(plan.metrics)
    lines = []
    for s in stale:
        if wanted and s["metric"] not in wanted:
            continue
        facts.append(s)
        cur = fs.current(s["metric"])
        text = f"{s['metric']} has sent no reading since {fmt_clock(s['since'])}"
        if s.get("expected_interval_s"):
            text += f" (expected every {fmt_duration(s['expected_interval_s'])})"
        if cur is not None and cur["value"] is not None:
            facts.append(cur)
            text += f"; last value {fmt_value(cur['value'], cur['unit'])}"
        lines.append(text + ".")
    for metric in plan.metrics:
        if metric in {s["metric"] for s in stale}:
            continue
        cur = fs.current(metric)
        if cur is None:
            lines.append(f"{metric} has no readings yet.")
            continue
        facts.append(cur)
        text = f"{metric} is reporting: last reading at {fmt_clock(cur['ts'])}, {fmt_value(cur['value'], cur['unit'])} ({cur['status']})"
        flat = _flat(fs, metric, fs.now())
        if flat:
            facts.append(flat)
            text += (f"; but it has repeated {fmt_value(flat['value'], cur['unit'])} since {flat['since_clock']} "
                     f"({flat['readings']} readings), so the sensor may be stuck")
        lines.append(text + ".")
    if not lines:
        overview = fs.overview()
        facts.append(overview)
        return [f"No sensor is stale: all {overview['metrics']} are reporting."]
    return lines


def _list_lines(plan: Plan, fs: Any, facts: list[dict]) -> list[str]:
    overview = fs.overview()
    facts.append(overview)
    units = fs.units()
    items = []
    for metric in (plan.metrics or fs.metrics()):
        cur = fs.current(metric)
        status = cur["status"] if cur else "no data"
        if cur:
            facts.append({"kind": "status", "metric": metric, "status": status, "unit": units.get(metric)})
        unit = f"{units.get(metric)}, " if units.get(metric) else ""
        items.append(f"{metric} ({unit}{status})")
    if plan.metrics:
        return [f"{len(items)} of the {overview['metrics']} sensors: " + "; ".join(items) + "."]
    return [f"{overview['metrics']} sensors: " + "; ".join(items) + "."]


def _missing_lines(plan: Plan, fs: Any, facts: list[dict]) -> list[str]:
    names = fs.metrics()
    facts.append({"kind": "metrics", "metrics": names})
    what = " or ".join(plan.missing) if plan.missing else "such"
    return [f"There is no {what} sensor here. I have: {', '.join(names)}."]


def answer(plan: Plan, facts_source: Any) -> tuple[str, list[dict]]:
    """A short template answer from facts only, and those facts."""
    facts: list[dict] = []
    intent = plan.intent
    if intent == "help":
        lines = [HELP_TEXT]
    elif intent == "list":
        lines = _list_lines(plan, facts_source, facts)
    elif intent == "stale":
        lines = _stale_lines(plan, facts_source, facts)
    elif intent == "anomalies":
        lines = _anomaly_lines(plan, facts_source, facts)
    elif not plan.metrics:
        if plan.missing:
            lines = _missing_lines(plan, facts_source, facts)
        else:
            lines = ["I did not find a sensor in that question. " + HELP_TEXT]
    elif intent == "stats":
        lines = _stats_lines(plan, facts_source, facts)
    elif intent == "trend":
        lines = _trend_lines(plan, facts_source, facts)
    else:
        lines = _current_lines(plan, facts_source, facts)
    if plan.missing and plan.metrics:
        lines.append(f"There is no {' or '.join(plan.missing)} sensor.")
    return " ".join(lines), facts


def local_fallback(plan: Plan, facts_source: Any, why: str) -> tuple[str, list[dict]]:
    """For a cloud question when the cloud cannot be used: the best local answer, and a sentence
    on what could not be done."""
    if plan.metrics:
        intent = "stats" if plan.window is not None else "current_value"
        local = Plan(intent, plan.metrics, plan.window, "local", "fallback", plan.confidence, plan.stat,
                     missing=plan.missing, question=plan.question)
        text, facts = answer(local, facts_source)
        return f"{text} (I could not answer the rest: {why}.)", facts
    if plan.intent in ("anomalies", "stale", "list", "help"):
        return answer(plan, facts_source)
    text = f"I can't answer that on this device ({why}). I can tell you what the sensors measure: try \"help\"."
    return text, []


def cloud_facts(plan: Plan, facts_source: Any) -> list[dict]:
    """The facts that travel with a cloud request: the named metrics' current values (and the
    window's statistics), else an overview with the open anomalies."""
    facts: list[dict] = []
    now = facts_source.now()
    for metric in plan.metrics:
        cur = facts_source.current(metric)
        if cur:
            facts.append(cur)
        if plan.window is not None:
            st = facts_source.stats(metric, plan.window)
            if st:
                facts.append(st)
    if not plan.metrics:
        facts.append(facts_source.overview())
        facts.extend(facts_source.anomalies(None, Window(now - DEFAULT_PERIOD_S, now, "the last 24 hours"))[:10])
    return facts
