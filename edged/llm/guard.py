"""Faithfulness guard: a model's phrasing may only state what the facts state.

    verdict = check("Pump 1 runs at 91 % load, 12 °C above baseline.", facts)
    if not verdict.ok: ...  # verdict.problems names each invented item

A phrasing is rejected when it contains

* a **number** whose value is not among the facts' numbers -- value equality, so 91, 91.0,
  91.00, "91 %" and "91%" all match a fact of 91 (and 1,234 matches 1234); a number's
  magnitude may be restated without its sign ("a drop of 5" for -5);
* a **unit** (after a number, or spelled out: "volts", "degrees Celsius") whose canonical
  form is not among the facts' units;
* a **metric name** (temperature, vibration, current, z-score, ...) that the facts do not
  name (aliases count: temp = temperature; a fact key ``motor_current`` names current).

Digits glued to letters on their left (``pump1``, ``CO2``, ``P-101``) are identifiers, not
numbers.  Pure Python, no model: it runs on every generated answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

# canonical unit -> aliases (matched case-sensitively when short, so "m" is not "M")
UNITS: dict[str, tuple[str, ...]] = {
    "°C": ("°C", "℃", "degC", "deg C", "degrees Celsius", "degree Celsius", "degrees C", "Celsius", "celsius"),
    "°F": ("°F", "℉", "degF", "degrees Fahrenheit", "degree Fahrenheit", "degrees F", "Fahrenheit", "fahrenheit"),
    "K": ("K", "kelvin", "kelvins"),
    "°": ("°", "degrees", "degree", "deg"),  # bare degrees: matches any temperature or angle fact
    "%": ("%", "percent", "per cent", "pct", "percentage points"),
    "V": ("V", "volt", "volts"), "mV": ("mV", "millivolt", "millivolts"), "kV": ("kV", "kilovolt", "kilovolts"),
    "A": ("A", "amp", "amps", "ampere", "amperes"), "mA": ("mA", "milliamp", "milliamps", "milliampere", "milliamperes"),
    "W": ("W", "watt", "watts"), "kW": ("kW", "kilowatt", "kilowatts"), "MW": ("MW", "megawatt", "megawatts"),
    "Wh": ("Wh", "watt-hour", "watt-hours"), "kWh": ("kWh", "kilowatt-hour", "kilowatt-hours"),
    "Hz": ("Hz", "hertz"), "kHz": ("kHz", "kilohertz"),
    "rpm": ("rpm", "RPM", "revolutions per minute"),
    "Pa": ("Pa", "pascal", "pascals"), "kPa": ("kPa", "kilopascal", "kilopascals"),
    "MPa": ("MPa", "megapascal", "megapascals"), "hPa": ("hPa", "hectopascal", "hectopascals"),
    "bar": ("bar", "bars"), "mbar": ("mbar", "millibar", "millibars"), "psi": ("psi",),
    "mm/s": ("mm/s", "millimetres per second", "millimeters per second"),
    "m/s": ("m/s", "metres per second", "meters per second"), "m/s²": ("m/s²", "m/s2", "g-force"),
    "mm": ("mm", "millimetre", "millimetres", "millimeter", "millimeters"),
    "cm": ("cm", "centimetre", "centimetres", "centimeter", "centimeters"),
    "m": ("m", "metre", "metres", "meter", "meters"), "km": ("km", "kilometre", "kilometres", "kilometer", "kilometers"),
    "g": ("g", "gram", "grams"), "kg": ("kg", "kilogram", "kilograms"),
    "L": ("L", "l", "litre", "litres", "liter", "liters"), "L/min": ("L/min", "l/min", "litres per minute", "liters per minute"),
    "m³/h": ("m³/h", "m3/h", "cubic metres per hour", "cubic meters per hour"),
    "ms": ("ms", "millisecond", "milliseconds"), "s": ("s", "sec", "secs", "second", "seconds"),
    "min": ("min", "mins", "minute", "minutes"), "h": ("h", "hr", "hrs", "hour", "hours"), "d": ("day", "days"),
    "dB": ("dB", "decibel", "decibels"), "lx": ("lx", "lux"), "ppm": ("ppm", "parts per million"),
    "µS/cm": ("µS/cm", "uS/cm"), "N·m": ("N·m", "Nm", "newton-metre", "newton-metres", "newton-meter", "newton-meters"),
}
# spelled-out aliases count anywhere; symbols only right after a number
_SYMBOLIC = {a for aliases in UNITS.values() for a in aliases if not re.fullmatch(r"[a-z][a-z -]{3,}", a)}
TEMPERATURE_UNITS = {"°C", "°F", "K", "°"}

METRICS: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature", "temperatures", "temp", "temps", "thermal"),
    "humidity": ("humidity", "relative humidity", "rh", "moisture"),
    "pressure": ("pressure", "pressures"),
    "vibration": ("vibration", "vibrations", "vibrating"),
    "voltage": ("voltage", "voltages"),
    "current": ("current", "currents", "amperage"),
    "power": ("power", "wattage"),
    "energy": ("energy",),
    "frequency": ("frequency", "frequencies"),
    "speed": ("speed", "rotational speed", "rotation speed"),
    "flow": ("flow", "flow rate", "flowrate", "flows"),
    "torque": ("torque",),
    "load": ("load", "loads"),
    "noise": ("noise", "sound level"),
    "co2": ("co2", "carbon dioxide"),
    "oxygen": ("oxygen", "o2"),
    "ph": ("ph",),
    "conductivity": ("conductivity",),
    "level": ("fill level", "tank level", "water level"),
    "battery": ("battery",),
    "signal": ("signal strength", "rssi"),
    "z-score": ("z-score", "z score", "zscore"),
    "anomaly score": ("anomaly score", "anomaly scores"),
}
# "the current temperature": "current" as an adjective is no metric name
_ADJECTIVE_NEXT = {"value", "values", "reading", "readings", "level", "levels", "state", "status", "time", "trend",
                   "situation", "condition", "conditions", "measurement", "measurements", "data", "rate", "setting",
                   "settings", "status", "mode", "week", "day", "month", "year", "shift", "period", "window"}
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()) if w != "_"}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
                      "hundred": 100, "thousand": 1000, "million": 1_000_000, "dozen": 12})

_NUM = re.compile(r"(?<![A-Za-z_\d.])(?<![A-Za-z]-)(?P<sign>[-−+]?)"
                  r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)(?![\d])")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-]*")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    problems: tuple[str, ...]
    numbers: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


def _value(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", "")).normalize()
    except InvalidOperation:
        return None


def _units_after_numbers(text: str) -> list[str]:
    found = []
    aliases = sorted(((a, c) for c, al in UNITS.items() for a in al if a in _SYMBOLIC), key=lambda x: -len(x[0]))
    for m in _NUM.finditer(text):
        rest = text[m.end():]
        rest = rest[1:] if rest[:1] in (" ", "\u00a0", "\u202f") else rest
        for alias, canon in aliases:
            if rest.startswith(alias) and not (rest[len(alias):len(alias) + 1].isalnum()):
                found.append(canon)
                break
    return found


def _spelled_units(text: str) -> list[str]:
    """Spelled-out units, longest first ("litres per minute" is L/min, not L and min)."""
    found = []
    low = text.lower()
    spelled = sorted(((a.lower(), c) for c, al in UNITS.items() for a in al if a not in _SYMBOLIC),
                     key=lambda x: -len(x[0]))
    for alias, canon in spelled:
        pattern = re.compile(r"(?<![a-z])" + re.escape(alias) + r"(?![a-z])")
        if pattern.search(low):
            found.append(canon)
            low = pattern.sub(lambda m: " " * len(m.group(0)), low)
    return list(dict.fromkeys(found))


def _standalone_units(text: str) -> list[str]:
    """Unit symbols standing alone in the facts (e.g. ``unit = °C``)."""
    tokens = set(re.split(r"[\s;,=()\[\]{}\"'_]+", text))
    return [c for c, aliases in UNITS.items() if any(a in tokens for a in aliases)]


def _units(text: str) -> list[str]:
    units = list(dict.fromkeys(_units_after_numbers(text) + _spelled_units(text)))
    if "°" in units and set(units) & (TEMPERATURE_UNITS - {"°"}):
        units.remove("°")  # "degrees Celsius": the scale says it all
    return units


def _metrics(text: str) -> list[str]:
    low = " ".join(re.split(r"[\s_/.:;,()\[\]{}\"'=]+", text.lower()))
    found = []
    for canon, aliases in METRICS.items():
        for a in aliases:
            for m in re.finditer(r"(?<![a-z0-9])" + re.escape(a) + r"(?![a-z0-9])", low):
                if canon == "current":
                    nxt = re.match(r"\s*-?\s*([a-z0-9\-]+)", low[m.end():])
                    if nxt and (nxt.group(1) in _ADJECTIVE_NEXT or _is_metric_word(nxt.group(1))):
                        continue
                found.append(canon)
                break
            if canon in found:
                break
    return found


def _is_metric_word(word: str) -> bool:
    return any(word == a for aliases in METRICS.values() for a in aliases if " " not in a)


def _numbers(text: str, words: bool) -> list[tuple[str, Decimal]]:
    out = []
    for m in _NUM.finditer(text):
        v = _value(m.group("num"))
        if v is not None:
            out.append((m.group(0).strip(), -v if m.group("sign") in ("-", "−") else v))
    if words:
        for w in _WORD.findall(text):
            if w.lower() in _NUMBER_WORDS:
                out.append((w, Decimal(_NUMBER_WORDS[w.lower()])))
    return out


def _flatten(facts: Any) -> str:
    """Facts as text: strings as is, mappings/sequences recursively (keys included), numbers by value."""
    if isinstance(facts, str):
        return facts
    if isinstance(facts, Mapping):
        return " ; ".join(f"{k} = {_flatten(v)}" for k, v in facts.items())
    if isinstance(facts, (list, tuple, set, frozenset)):
        return " ; ".join(_flatten(v) for v in facts)
    if isinstance(facts, bool) or facts is None:
        return str(facts)
    if isinstance(facts, float):
        return repr(facts) if facts == facts and abs(facts) != float("inf") else ""
    if isinstance(facts, (int, Decimal)):
        return str(facts)
    try:
        return json.dumps(facts)
    except TypeError:
        return str(facts)


def check(phrasing: str, facts: Any, extra_numbers: Iterable[float | int | str] = ()) -> Verdict:
    """Is every number, unit and metric name in ``phrasing`` backed by ``facts``?

    ``facts``: text, or a mapping / list (keys and values are facts).  ``extra_numbers``:
    values allowed besides the facts' (e.g. a count the caller states itself).
    """
    fact_text = _flatten(facts)
    fact_values = {v for _, v in _numbers(fact_text, words=True)}
    fact_values |= {abs(v) for v in fact_values}
    fact_values |= {v for v in (_value(str(x)) for x in extra_numbers) if v is not None}
    fact_units = set(_units(fact_text)) | set(_standalone_units(fact_text))
    fact_metrics = set(_metrics(fact_text))

    problems = []
    numbers = _numbers(phrasing, words=True)
    for shown, v in numbers:
        if v not in fact_values and abs(v) not in fact_values:
            problems.append(f"number {shown} is not in the facts")
    units = _units(phrasing)
    for u in units:
        if u in fact_units:
            continue
        if u == "°" and fact_units & TEMPERATURE_UNITS:
            continue
        if u in TEMPERATURE_UNITS - {"°"} and "°" in fact_units and not (fact_units & (TEMPERATURE_UNITS - {"°"})):
            continue  # the facts say "degrees" without a scale: "°C" is a guess, but not an invented unit
        problems.append(f"unit {u} is not in the facts")
    metrics = _metrics(phrasing)
    for name in metrics:
        if name not in fact_metrics:
            problems.append(f"metric {name} is not in the facts")
    return Verdict(not problems, tuple(problems), tuple(s for s, _ in numbers), tuple(units), tuple(metrics))


def summary_keeps(phrasing: str, template: str, metric: str) -> list[str]:
    """What a reworded event summary dropped from its template: the metric (its full name or
    its last path segment, ``/ _ - .`` read as spaces, any case) or the template's first number
    after the metric's name (the value, or a silence's clock time).  A summary that keeps
    neither tells the reader nothing true -- "The device has been disabled by the manufacturer."
    passes :func:`check` (it states no number, unit or metric), so summaries need both."""
    def norm(text: str) -> str:
        return " " + " ".join(re.sub(r"[/_\-.]", " ", text.lower()).split()) + " "

    said = norm(phrasing)
    problems = []
    if norm(metric) not in said and norm(metric.rsplit("/", 1)[-1]) not in said:
        problems.append(f"the metric {metric} is not named")
    rest = template[len(metric):] if template.startswith(metric) else template
    return problems + missing_numbers(phrasing, rest, first_only=True)


def missing_numbers(phrasing: str, source: str, first_only: bool = False) -> list[str]:
    """The numbers of ``source`` (a template answer) that ``phrasing`` no longer states, by value
    (sign aside; ``first_only``: just its first number).  A rewording told to keep every number
    that drops one has lost a fact -- often by re-attaching the numbers it kept to the wrong
    thing ("minimum 18.9 °C at 13:45")."""
    said = {abs(v) for _, v in _numbers(phrasing, words=True)}
    out, seen = [], set()
    for shown, v in _numbers(source, words=False)[:1 if first_only else None]:
        if abs(v) not in said and v not in seen:
            seen.add(v)
            out.append(f"the number {shown} is missing")
    return out
