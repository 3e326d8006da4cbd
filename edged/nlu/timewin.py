"""A deterministic grammar for the time window of a question.

``parse_window(text, now)`` finds the first time expression in a (normalised, lower-case)
question and returns ``(Window | None, is_now)``: ``None`` when the question names no period
("right now", "currently" or nothing at all). Wall-clock words ("today", "since 9", "last
night") use the process's local time zone (the daemon runs with its host's TZ; tests set
TZ=UTC). Every rule is a regular expression over words, so the same words always give the
same window: no model, no guessing.

Grammar (informally)::

    window  := ("in"|"over"|"during"|"for")? ("the")? ("last"|"past"|"previous") AMOUNT UNIT
             | AMOUNT UNIT "ago"? ... (only with last/past/previous/within)
             | ("last"|"past") UNIT              -- "last hour", "past day", "last week"
             | "today" | "so far today" | "yesterday" | "this week"
             | "since" CLOCK | "since" ("midnight"|"noon"|"this morning"|"yesterday")
             | "between" CLOCK "and" CLOCK | "from" CLOCK ("to"|"until") CLOCK
             | "this" ("morning"|"afternoon"|"evening") | "last night" | "overnight" | "tonight"
    CLOCK   := H | H:MM | H(am|pm) | H:MM(am|pm) | "noon" | "midnight"
    AMOUNT  := digits | "a" | "an" | "one" … "twelve" | "a couple of" | "a few" | "half an"
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

from ..facts import Window

NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20,
    "thirty": 30, "forty": 40, "forty-five": 45, "fifty": 50, "sixty": 60, "ninety": 90,
    "couple": 2, "couple of": 2, "a couple of": 2, "few": 3, "a few": 3, "several": 3,
}
UNIT_SECONDS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "wk": 604800, "week": 604800, "weeks": 604800,
}
_AMOUNT = r"(\d+(?:\.\d+)?|a couple of|couple of|a few|few|several|half an?|an?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty-five|forty|fifty|sixty|ninety)"
_UNIT = r"(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d|weeks?|wks?|w)"
_RECENT = r"(?:last|past|previous|preceding|recent|within(?: the)?(?: last| past)?)"

_RE_LAST_N = re.compile(rf"\b{_RECENT}\s+{_AMOUNT}\s*{_UNIT}\b")
_RE_N_AGO_SINCE = re.compile(rf"\b(?:since|from)\s+{_AMOUNT}\s*{_UNIT}\s+ago\b")
_RE_LAST_UNIT = re.compile(r"\b(?:last|past|previous|this)\s+(hour|day|week|half hour|half an hour|quarter hour|quarter of an hour|24 ?h(?:ours|rs)?)\b")
_RE_HALF_HOUR = re.compile(r"\b(?:last|past)\s+(?:half an hour|half hour|30 mins?)\b")
_CLOCK = r"(noon|midday|midnight|\d{1,2}(?:[:.h]\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.|o\s?'?\s?clock|h)?)"
_RE_SINCE_CLOCK = re.compile(rf"\bsince\s+(?:(?:about|around|roughly)\s+)?{_CLOCK}(?!\s*{_UNIT}\b)(?![\d%])")
_RE_BETWEEN = re.compile(rf"\b(?:between|from)\s+{_CLOCK}\s+(?:and|to|until|till|-)\s+{_CLOCK}")
_RE_SINCE_WORD = re.compile(r"\bsince\s+(this morning|yesterday|last night|today|the morning|morning|breakfast|lunch|lunchtime)\b")
_RE_TODAY = re.compile(r"\b(today|so far today|this day|todays|today's)\b")
_RE_YESTERDAY = re.compile(r"\b(yesterday|yesterdays|yesterday's|the day before)\b")
_RE_NIGHT = re.compile(r"\b(last night|overnight|over night|during the night|in the night|at night|tonight)\b")
_RE_PART_OF_DAY = re.compile(r"\bthis (morning|afternoon|evening)\b")
_RE_THIS_WEEK = re.compile(r"\b(this week|past week|last week|last 7 days|past 7 days)\b")
# terse: "max temp 1h", "humidity 30 min" (digits and a unit, no "last")
_RE_BARE_N = re.compile(rf"(?<!\bevery )(?<!\beach )(?<!\bfor )(?<!\bin )(?<!\bat )\b(\d+(?:\.\d+)?)\s*(minutes?|mins?|m|hours?|hrs?|h|days?|d)\b(?!\s*ago)(?!\s*(?:later|from now))")
_RE_NOW = re.compile(r"\b(right now|now|currently|current|at the moment|at present|presently|these days|atm|rn)\b")

PART_OF_DAY = {"morning": (6, 12), "afternoon": (12, 18), "evening": (18, 22)}
NIGHT = (22, 6)  # "last night": 22:00 yesterday → 06:00 today


def _amount(text: str) -> float | None:
    text = text.strip()
    if text.startswith("half"):
        return 0.5
    try:
        return float(text)
    except ValueError:
        return NUMBER_WORDS.get(text)


def _midnight(now: float) -> datetime:
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)


def _clock(text: str) -> tuple[int, int] | None:
    """'9' → (9, 0); '2pm' → (14, 0); '14:30' → (14, 30); 'noon' → (12, 0). None if not a time."""
    t = text.strip().replace(" ", "").replace(".", ":").replace("a:m:", "am").replace("p:m:", "pm")
    if t in ("noon", "midday"):
        return 12, 0
    if t == "midnight":
        return 0, 0
    t = re.sub(r"o'?clock$", "oclock", t)
    m = re.fullmatch(r"(\d{1,2})(?:[:h](\d{2}))?(am|pm|oclock|h)?", t)
    if not m:
        return None
    hour, minute, suffix = int(m.group(1)), int(m.group(2) or 0), m.group(3) or ""
    if suffix == "pm" and hour < 12:
        hour += 12
    elif suffix == "am" and hour == 12:
        hour = 0
    if hour > 23 or minute > 59:
        return None
    return hour, minute


def _at(now: float, hour: int, minute: int = 0) -> float:
    """Today's hour:minute, or yesterday's when that is still ahead of now."""
    at = _midnight(now) + timedelta(hours=hour, minutes=minute)
    ts = at.timestamp()
    if ts > now:
        ts = (at - timedelta(days=1)).timestamp()
    return ts


def _hhmm(hour: int, minute: int) -> str:
    return f"{hour:02d}:{minute:02d}"


def _plural(n: float, unit: str) -> str:
    text = f"{n:g}"
    return f"{text} {unit}" if text == "1" else f"{text} {unit}s"


def parse_window(text: str, now: float | None = None) -> tuple[Window | None, bool]:
    """The window a question names, and whether it asks about "now" explicitly."""
    now = time.time() if now is None else now
    q = " ".join(text.lower().replace("’", "'").split())
    mid = _midnight(now)
    today0 = mid.timestamp()

    if m := _RE_BETWEEN.search(q):
        a, b = _clock(m.group(1)), _clock(m.group(2))
        if a and b:
            # "between 2 and 4" with no am/pm: the afternoon when the morning reading is ahead of now
            since = _at(now, *a)
            until = since + ((b[0] - a[0]) * 3600 + (b[1] - a[1]) * 60) % 86400
            return Window(since, min(until, now), f"between {_hhmm(*a)} and {_hhmm(*b)}"), False
    if m := _RE_N_AGO_SINCE.search(q):
        n, unit = _amount(m.group(1)), m.group(2)
        if n:
            seconds = n * UNIT_SECONDS[unit]
            return Window(now - seconds, now, f"the last {_plural(n, _unit_word(unit))}"), False
    if m := _RE_HALF_HOUR.search(q):
        return Window(now - 1800, now, "the last 30 minutes"), False
    if m := _RE_LAST_N.search(q):
        n, unit = _amount(m.group(1)), m.group(2)
        if n:
            seconds = n * UNIT_SECONDS[unit]
            word = _unit_word(unit)
            if n == 0.5 and word == "hour":
                return Window(now - 1800, now, "the last 30 minutes"), False
            return Window(now - seconds, now, f"the last {_plural(n, word)}"), False
    if m := _RE_LAST_UNIT.search(q):
        what = m.group(1)
        if what.startswith("half"):
            return Window(now - 1800, now, "the last 30 minutes"), False
        if what.startswith("quarter"):
            return Window(now - 900, now, "the last 15 minutes"), False
        if what.startswith("24"):
            return Window(now - 86400, now, "the last 24 hours"), False
        if what == "hour":
            return Window(now - 3600, now, "the last hour"), False
        if what == "day":
            if q[m.start():].startswith("this"):
                return Window(today0, now, "today"), False
            return Window(now - 86400, now, "the last 24 hours"), False
        if what == "week":
            return Window(now - 7 * 86400, now, "the last 7 days"), False
    if m := _RE_SINCE_WORD.search(q):
        what = m.group(1)
        if what == "yesterday":
            return Window(today0 - 86400, now, "since yesterday"), False
        if what == "last night":
            return Window(_at(now, NIGHT[0]), now, "since last night (22:00)"), False
        if what == "today":
            return Window(today0, now, "today"), False
        if what in ("lunch", "lunchtime"):
            return Window(_at(now, 12), now, "since 12:00"), False
        return Window(_at(now, 6), now, "since 06:00"), False
    if m := _RE_SINCE_CLOCK.search(q):
        hm = _clock(m.group(1))
        if hm:
            return Window(_at(now, *hm), now, f"since {_hhmm(*hm)}"), False
    if _RE_NIGHT.search(q):
        start = mid - timedelta(days=1) + timedelta(hours=NIGHT[0])
        end = mid + timedelta(hours=NIGHT[1])
        if end.timestamp() > now:  # asked before 06:00: the night that is ending now
            start, end = start - timedelta(days=1), end - timedelta(days=1)
        return Window(start.timestamp(), min(end.timestamp(), now), "last night (22:00–06:00)"), False
    if m := _RE_PART_OF_DAY.search(q):
        lo, hi = PART_OF_DAY[m.group(1)]
        since = (mid + timedelta(hours=lo)).timestamp()
        until = min((mid + timedelta(hours=hi)).timestamp(), now)
        if since < now:
            return Window(since, until, f"this {m.group(1)}"), False
    if _RE_YESTERDAY.search(q):
        start = mid - timedelta(days=1)
        return Window(start.timestamp(), today0 - 1e-3, "yesterday"), False
    if _RE_TODAY.search(q):
        return Window(today0, now, "today"), False
    if _RE_THIS_WEEK.search(q):
        return Window(now - 7 * 86400, now, "the last 7 days"), False
    if m := _RE_BARE_N.search(q):
        n, unit = float(m.group(1)), m.group(2)
        if n > 0:
            word = _unit_word(unit)
            return Window(now - n * UNIT_SECONDS[unit], now, f"the last {_plural(n, word)}"), False
    return None, bool(_RE_NOW.search(q))


def _unit_word(unit: str) -> str:
    seconds = UNIT_SECONDS[unit]
    return {1: "second", 60: "minute", 3600: "hour", 86400: "day", 604800: "week"}[seconds]
