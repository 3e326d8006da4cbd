"""question → Plan: intent, metrics, window, and whether the local side can answer it.

Pure: no MQTT, no clock of its own (``now`` is passed in), no I/O. The local side answers
what is in the daemon's own data (values, statistics, anomalies, which sensors exist and which
are stale, help, "there is no such sensor"); the cloud gets what needs judgement or knowledge
(why, what should I do, is X good for Y, forecasts, drafting text, long multi-part requests)
and anything the parser is not confident about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..facts import Window
from . import intent as cues
from .lexicon import COMMON_WORDS
from .metrics import match_metrics, normalise
from .timewin import parse_window

LOCAL, CLOUD = "local", "cloud"
MAX_LOCAL_WORDS = 40  # longer than this is a multi-part request or prose: the cloud's job
CONFIDENT = 0.5

CONVERT = [(re.compile(r"\b(?:in|to|into|as)\s+(?:degrees\s+)?(?:fahrenheit|farenheit|°f|f)\b"), "°F"),
           (re.compile(r"\b(?:in|to|into|as)\s+(?:degrees\s+)?(?:celsius|centigrade|°c|c)\b"), "°C"),
           (re.compile(r"\b(?:in|to|into|as)\s+kelvin\b"), "K")]
WHEN = re.compile(r"\b(?:when|what time|since when|how long|at what time|last (?:opened|closed|changed|time))\b")
STATE_ASK = re.compile(r"\b(open|opened|closed|shut|running|on|off|working|normal|ok|okay|fine|alright|anomalous)\b")


@dataclass(frozen=True, slots=True)
class Plan:
    intent: str
    metrics: tuple[str, ...]
    window: Window | None
    route: str  # "local" | "cloud"
    route_reason: str
    confidence: float
    stat: str | None = None  # "min" | "max" | "mean" | "range" | "count" | None
    missing: tuple[str, ...] = ()  # sensors asked for that do not exist ("bedroom co2")
    compare: bool = False  # "is it warmer outside than in the kitchen"
    yes_no: bool = False  # "is the garage door closed?"
    state_asked: str | None = None  # the state a yes/no question names ("closed", "running")
    convert: str | None = None  # unit to convert a value to ("°F")
    asks_when: bool = False  # "since when", "what time"
    question: str = field(default="", compare=False)


def _parts(q: str) -> int:
    """How many separate requests a question holds (sentences / question marks / 'also')."""
    pieces = [p for p in re.split(r"[?!]+|\.\s+|;|\balso\b|\band then\b|,?\s*\bthen\b|\bplus\b|\bafter that\b", q) if len(p.split()) >= 3]
    return len(pieces)


def understand(question: str, metrics: dict[str, str | None], now: float) -> Plan:
    q = normalise(question)
    base = dict(question=question)
    if not q.strip(" ?!.,"):
        return Plan("help", (), None, LOCAL, "empty question: help", 1.0, **base)
    window, _ = parse_window(q, now)
    mm = match_metrics(question, metrics)
    s = cues.score(q)
    words = q.split()
    found = tuple(mm.metrics)
    missing = tuple(mm.missing)
    convert = next((unit for rx, unit in CONVERT if rx.search(q)), None)
    asks_when = bool(WHEN.search(q))
    state = STATE_ASK.search(q)
    # "garage door shut?": a state word in a short question is a yes/no question too
    yes_no = s.yes_no or bool(state and q.rstrip().endswith("?") and not re.match(r"\s*(?:what|which|when|how|where|who)\b", q))
    extra = dict(missing=missing, compare=s.compare, yes_no=yes_no, convert=convert, asks_when=asks_when,
                 state_asked=state.group(1) if state and yes_no else None, **base)
    confidence = max(0.3, 0.95 - 0.1 * mm.fuzzy)

    def plan(intent: str, route: str, reason: str, conf: float = confidence, stat: str | None = None,
             mets: tuple[str, ...] = found) -> Plan:
        return Plan(intent, mets, window, route, reason, round(conf, 2), stat, **extra)

    # --- the cloud's: drafting, why, advice, knowledge, long multi-part
    if s.cloud_draft:
        return plan("cloud", CLOUD, "drafting text")
    if s.cloud_why:
        return plan("cloud", CLOUD, "asks why: needs judgement")
    if s.cloud_advice:
        return plan("cloud", CLOUD, "asks for advice or a judgement")
    if s.help and not found and not missing:
        return plan("help", LOCAL, "asks what can be asked", 0.9)
    if s.knowledge:
        if found and mm.quantities:
            return plan("cloud", CLOUD, "needs knowledge beyond the sensors")
        return plan("out_of_scope", CLOUD, "knowledge beyond the sensors")
    if len(words) > MAX_LOCAL_WORDS or _parts(q) >= 3:
        return plan("cloud", CLOUD, "long multi-part request")

    # --- local
    if s.greeting and not found:
        return plan("help", LOCAL, "greeting", 0.9)
    if s.help and not found:
        return plan("help", LOCAL, "asks what can be asked", 0.9)
    strong_stale = bool(re.search(r"\b(stale|offline|silent|not reporting|stopped|not sending|last heard|gone quiet|"
                                  r"no (?:new )?(?:data|readings|updates)|haven'?t (?:reported|sent|updated)|hasn'?t (?:reported|sent|updated)|"
                                  r"dead|unresponsive|hear(?:d)? from|still (?:sending|reporting))\b", q))
    if strong_stale or (s.stale and not s.anomalies and not (found and not s.yes_no)):
        return plan("stale", LOCAL, "asks which sensors are stale")
    if s.anomalies:
        return plan("anomalies", LOCAL, "asks about anomalies")
    if s.list and not found and not missing:
        return plan("list", LOCAL, "asks which sensors exist")
    if missing and not found:
        return plan("out_of_scope", LOCAL, "no such sensor", 0.8, mets=())
    if s.list and (mm.every or not mm.quantities) and not s.stat and window is None:
        # "what do you measure in the basement": the sensors of that place
        return plan("list", LOCAL, "asks which sensors exist")
    if not found:
        if s.list:
            return plan("list", LOCAL, "asks which sensors exist")
        if s.help:
            return plan("help", LOCAL, "asks what can be asked", 0.8)
        return plan("out_of_scope", CLOUD, "no sensor or intent recognised", 0.2)
    if s.trend:
        return plan("trend", LOCAL, "asks for a trend", stat=None)
    if s.count and window is not None:
        return plan("stats", LOCAL, "asks how often", stat="count")
    if s.stat or window is not None:
        if window is None and s.stat in ("max", "min", "range", "mean"):
            # "highest temperature" with no period: the last 24 hours
            return Plan("stats", found, Window(now - 86400, now, "the last 24 hours"), LOCAL,
                        "statistic over the default period", round(confidence - 0.1, 2), s.stat, **extra)
        return plan("stats", LOCAL, "statistics over a period", stat=s.stat)
    unexplained = [w for w in words if len(w) >= 4 and w.isalpha() and w not in COMMON_WORDS]
    if len(unexplained) > 6:
        confidence -= 0.2
    if confidence < CONFIDENT:
        return plan("current_value", CLOUD, "low confidence", confidence)
    return plan("current_value", LOCAL, "current value")
