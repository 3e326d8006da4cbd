"""Which metrics a question is about, matched against the metric names the daemon really has.

Input: the question and the live metrics with their units (``{"greenhouse/humidity": "%"}``).
A metric name is read as places (every path part but the last) and a quantity (its last part,
through :mod:`lexicon`; the unit decides when the words say nothing). A question is read as
mentions of places and quantities, each word matched exactly, through the lexicons, or as a
misspelling (edit distance, :mod:`fuzzy`); "green house" and "sensor.greenhouse_humidity" are
joined/split first. Mentions are paired clause by clause ("kitchen temperature and greenhouse
humidity" is two metrics, not four), and a pair that names no existing metric is reported as
missing, so the answer can say "there is no basement humidity sensor" instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from .fuzzy import best_match
from .lexicon import COMMON_WORDS, PLACES, QUANTITIES, UNIT_QUANTITY, WEAK_PLACE_WORDS

WEAK_QUANTITY_WORDS = {"level", "open", "opened", "closed", "shut", "load", "draw", "drawing", "charge", "light",
                       "bright", "sound", "loud", "fire", "energy", "water", "dew", "carbon", "heat", "watering",
                       "watered", "contact", "gate", "current"}
ALL_WORDS = re.compile(r"\b(all|every|each|everywhere|all the|both)\b")
CLAUSE_SPLIT = re.compile(r"\s*(?:,|;|\band\b|\bvs\.?|\bversus\b|\bthan\b|\bcompared (?:to|with)\b|\bor\b|\bplus\b|\balso\b|\?)\s*")


@dataclass(frozen=True, slots=True)
class MetricInfo:
    name: str
    places: tuple[str, ...]
    quantities: tuple[str, ...]  # concepts the name (or unit) stands for
    unit: str | None


@dataclass(slots=True)
class Mention:
    kind: str  # "place" | "quantity" | "metric"
    key: str  # concept (place or quantity) or a metric name
    pos: int  # character offset in the normalised question
    weak: bool = False
    text: str = ""


@dataclass(slots=True)
class MetricMatch:
    metrics: list[str] = field(default_factory=list)  # in the order the question names them
    missing: list[str] = field(default_factory=list)  # what was asked for and does not exist ("bedroom co2")
    places: list[str] = field(default_factory=list)
    quantities: list[str] = field(default_factory=list)
    every: bool = False  # "all temperatures", "everywhere"
    mentions: list[Mention] = field(default_factory=list)
    fuzzy: int = 0  # how many words were corrected (lowers confidence)


def _words_of(phrase: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9₂.]+", phrase.lower()) if w]


# phrase → (kind, concept); built once from the lexicons
_PHRASES: dict[str, tuple[str, str]] = {}
for _q, _words in QUANTITIES.items():
    for _w in _words:
        _PHRASES.setdefault(_w, ("quantity", _q))
for _p, _words in PLACES.items():
    for _w in _words:
        _PHRASES.setdefault(_w, ("place", _p))
    _PHRASES.setdefault(_p.replace("_", " "), ("place", _p))
_MAX_PHRASE = max(len(p.split()) for p in _PHRASES)


def describe(name: str, unit: str | None) -> MetricInfo:
    """A metric name read as places + quantities ("basement/pump_power" → basement; pump, power)."""
    parts = [p for p in name.lower().split("/") if p]
    place_parts, last = parts[:-1], parts[-1] if parts else ""
    places: list[str] = []
    for part in place_parts:
        concept = _PHRASES.get(part.replace("_", " "))
        places.append(concept[1] if concept and concept[0] == "place" else part)
    quantities: list[str] = []
    words = _words_of(last.replace("_", " "))
    joined = " ".join(words)
    if joined in _PHRASES and _PHRASES[joined][0] == "quantity":
        quantities.append(_PHRASES[joined][1])
    for w in words:
        concept = _PHRASES.get(w)
        if concept and concept[0] == "quantity":
            quantities.append(concept[1])
        elif concept and concept[0] == "place" and not place_parts:
            places.append(concept[1])
        quantities.append("w:" + w)  # the word itself: "pump" in basement/pump_power
    if unit and unit.lower() in UNIT_QUANTITY:
        quantities.append(UNIT_QUANTITY[unit.lower()])
    if not place_parts and not places:
        places.append(last)
    return MetricInfo(name, tuple(dict.fromkeys(places)), tuple(dict.fromkeys(quantities)), unit)


def normalise(question: str) -> str:
    q = question.lower().replace("’", "'")
    q = re.sub(r"([a-z0-9])[/_.]([a-z])", r"\1 \2", q)  # greenhouse/humidity, sensor.x_y
    q = re.sub(r"([a-z])[/_.]([a-z0-9])", r"\1 \2", q)
    q = re.sub(r"[^a-z0-9₂°%:' ,;?!.-]+", " ", q)
    return " ".join(q.split())


class Vocabulary:
    """The words a question is matched against, for one set of live metrics."""

    def __init__(self, metrics: dict[str, str | None]) -> None:
        self.infos = {name: describe(name, unit) for name, unit in metrics.items()}
        self.phrases = dict(_PHRASES)
        for info in self.infos.values():
            for place in info.places:
                self.phrases.setdefault(place.replace("_", " "), ("place", place))
            for q in info.quantities:
                if q.startswith("w:"):
                    word = q[2:]
                    if word not in self.phrases:
                        self.phrases[word] = ("quantity", q)
        # misspellings are corrected towards strong words only ("hear" must not become "heat")
        self.places_present = {p for info in self.infos.values() for p in info.places}
        self.quantities_present = {q for info in self.infos.values() for q in info.quantities}
        # A misspelling is corrected only towards a strong word for something that exists: saying
        # "there is no such sensor" needs the exact word ("moment" must not become "motion").
        self.fuzzy_vocab = tuple(sorted(
            p for p, (kind, key) in self.phrases.items()
            if " " not in p and len(p) >= 4 and p not in WEAK_QUANTITY_WORDS and p not in WEAK_PLACE_WORDS
            and key in (self.places_present if kind == "place" else self.quantities_present)))
        self.places_present = {p for info in self.infos.values() for p in info.places}
        self.quantities_present = {q for info in self.infos.values() for q in info.quantities}

    def lookup(self, word: str) -> tuple[tuple[str, str] | None, bool]:
        hit = self.phrases.get(word)
        if hit:
            return hit, False
        if word in COMMON_WORDS or len(word) < 4 or word.isdigit():
            return None, False
        near, _ = best_match(word, self.fuzzy_vocab)
        if near:
            return self.phrases[near], True
        return None, False


@lru_cache(maxsize=64)
def _vocabulary(items: tuple[tuple[str, str | None], ...]) -> Vocabulary:
    return Vocabulary(dict(items))


def vocabulary(metrics: dict[str, str | None]) -> Vocabulary:
    return _vocabulary(tuple(sorted(metrics.items(), key=lambda kv: kv[0])))


def find_mentions(q: str, vocab: Vocabulary) -> tuple[list[Mention], int]:
    """Places and quantities named in a normalised question, in order."""
    mentions: list[Mention] = []
    fuzzy = 0
    # exact metric names first ("greenhouse/temperature" survived normalisation as two words)
    tokens = [(m.group(0), m.start()) for m in re.finditer(r"[a-z0-9₂]+(?:'[a-z]+)?", q)]
    i = 0
    while i < len(tokens):
        matched = False
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            words = [t for t, _ in tokens[i:i + n]]
            phrase = " ".join(words)
            hit = vocab.phrases.get(phrase)
            if (hit is None and n == 2 and all(len(w) >= 3 and w not in COMMON_WORDS for w in words)
                    and not any(w in vocab.phrases for w in words)):
                joined = "".join(words)  # "green house" → greenhouse, "temp erature" → temperature
                hit = vocab.phrases.get(joined)
                if hit is None:
                    near, dist = best_match(joined, vocab.fuzzy_vocab)
                    if near and dist <= 1:
                        hit = vocab.phrases[near]
                        fuzzy += 1
            if hit is None and n == 1:
                hit, was_fuzzy = vocab.lookup(words[0])
                if hit and was_fuzzy:
                    fuzzy += 1
            if hit:
                kind, key = hit
                weak = (phrase in WEAK_QUANTITY_WORDS if kind == "quantity" else phrase in WEAK_PLACE_WORDS)
                mentions.append(Mention(kind, key, tokens[i][1], weak, phrase))
                i += n
                matched = True
                break
        if not matched:
            i += 1
    return mentions, fuzzy


def _strong(mentions: list[Mention], kind: str) -> list[Mention]:
    of_kind = [m for m in mentions if m.kind == kind]
    strong = [m for m in of_kind if not m.weak]
    return strong or of_kind


def _clauses(q: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in CLAUSE_SPLIT.finditer(q):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(q):
        spans.append((start, len(q)))
    return spans or [(0, len(q))]


def _metrics_for(vocab: Vocabulary, places: list[str], quantities: list[str]) -> list[str]:
    out = []
    for name, info in vocab.infos.items():
        if places and not any(p in info.places for p in places):
            continue
        if quantities and not any(q in info.quantities for q in quantities):
            continue
        out.append(name)
    return out


def match_metrics(question: str, metrics: dict[str, str | None]) -> MetricMatch:
    vocab = vocabulary(metrics)
    q = normalise(question)
    mentions, fuzzy = find_mentions(q, vocab)
    result = MetricMatch(mentions=mentions, fuzzy=fuzzy, every=bool(ALL_WORDS.search(q)))
    if not mentions:
        return result
    all_places = [m.key for m in _strong(mentions, "place")]
    all_quantities = [m.key for m in _strong(mentions, "quantity")]
    result.places = list(dict.fromkeys(all_places))
    result.quantities = list(dict.fromkeys(all_quantities))
    chosen: list[tuple[int, str]] = []
    missing: list[str] = []
    for lo, hi in _clauses(q):
        inside = [m for m in mentions if lo <= m.pos < hi]
        if not inside:
            continue
        places = [m.key for m in _strong(inside, "place")]
        quantities = [m.key for m in _strong(inside, "quantity")]
        if places and not quantities:
            # "… in the kitchen and in the greenhouse": the quantity said elsewhere
            quantities = [k for k in result.quantities]
        if quantities and not places:
            places = [k for k in result.places if k in vocab.places_present]
            if places and not _metrics_for(vocab, places, quantities):
                places = []  # "greenhouse temperature and the pump": the pump is elsewhere
        absent = [x for x in quantities if x not in vocab.quantities_present]
        if absent:
            # "battery of the door sensor", "co2 in the kitchen": a quantity no metric has
            present_words = [_q_word(x) for x in quantities if x not in absent]
            missing.append(" ".join([*(p.replace("_", " ") for p in places), *present_words,
                                     *(_q_word(x) for x in absent)]))
            continue
        for place in places or [None]:
            wanted_q = quantities
            found = _metrics_for(vocab, [place] if place else [], wanted_q)
            if found:
                pos = min(m.pos for m in inside)
                chosen.extend((pos, f) for f in found)
                continue
            if place and place not in vocab.places_present:
                missing.append(" ".join(filter(None, [place.replace("_", " "),
                                                      *(_q_word(x) for x in wanted_q)])))
            elif wanted_q and not any(x in vocab.quantities_present for x in wanted_q):
                missing.append(" ".join(filter(None, [place and place.replace("_", " "),
                                                      *(_q_word(x) for x in wanted_q)])))
            elif place and wanted_q:
                missing.append(f"{place.replace('_', ' ')} {' '.join(_q_word(x) for x in wanted_q)}")
    seen: dict[str, int] = {}
    for pos, name in sorted(chosen, key=lambda x: x[0]):
        seen.setdefault(name, pos)
    result.metrics = list(seen)
    result.missing = list(dict.fromkeys(m for m in missing if m))
    return result


def _q_word(concept: str) -> str:
    if concept.startswith("w:"):
        return concept[2:]
    return {"co2": "CO2", "soil_moisture": "soil moisture", "water_level": "water level", "uv": "UV",
            "air_quality": "air quality"}.get(concept, concept.replace("_", " "))
