"""A deterministic 26-hour sensor scenario for the question set (``questions.jsonl``).

No broker code here: :func:`readings` returns ``(topic, payload_dict)`` pairs in time order,
ready to be JSON-encoded and published; :func:`reference` recomputes, with plain Python and
numpy over exactly those readings, every true value the questions refer to (``value_ref``).

Time and timezone
-----------------
- Everything assumes **TZ=UTC**: "today", "yesterday", "since 9", "last night" and the clock
  times in answers are UTC wall-clock. The tests set ``TZ=UTC`` for the daemon and themselves.
- The labels assume ``end_ts`` falls at **15:45 UTC** (``DEFAULT_END_TS`` is Sunday
  2025-06-15 15:45:00 UTC); :func:`readings` refuses any other time of day, so "since 9" or
  "last night" always mean the same stretch of the scenario. :func:`end_ts_on` gives the
  15:45 UTC instant of another day if a test needs one.
- "Now" is ``end_ts``: the daemon should run with ``node.clock = "data"`` (its clock is then
  the newest reading's timestamp, which is ``end_ts``), so staleness and "today" are judged
  against the scenario's time, not the machine's.

Readings
--------
One reading per metric per minute on the minute grid ``end_ts - k*60`` (k = 0 … 1560), except
``garage/door`` (a contact sensor: a heartbeat every 5 minutes plus one report at every change,
on odd seconds) and ``outdoor/pressure`` (stops reporting two hours before ``end_ts``).
Values are rounded as a real device would send them (``METRICS[m]["decimals"]``); the reference
uses the rounded values. ``garage/door`` payloads carry JSON ``true`` for **open**, ``false``
for closed (Home Assistant's door convention: on = open), and no unit.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np

SEED = 20250615
HOURS = 26
STEP_S = 60
DOOR_HEARTBEAT_S = 300
END_TIME_OF_DAY_S = 15 * 3600 + 45 * 60  # 15:45 UTC
DEFAULT_END_TS = 1750002300.0  # 2025-06-15 15:45:00 UTC (a Sunday)
TOPIC_PREFIX = "sensors/"  # subscribe to "sensors/#": metric = topic minus "sensors/"

METRICS: dict[str, dict] = {
    "greenhouse/temperature": {"unit": "°C", "decimals": 1, "tol": 0.15, "place": "greenhouse", "what": "air temperature"},
    "greenhouse/humidity": {"unit": "%", "decimals": 1, "tol": 0.15, "place": "greenhouse", "what": "relative humidity"},
    "greenhouse/soil_moisture": {"unit": "%", "decimals": 1, "tol": 0.15, "place": "greenhouse", "what": "soil moisture"},
    "kitchen/temperature": {"unit": "°C", "decimals": 1, "tol": 0.15, "place": "kitchen", "what": "air temperature"},
    "kitchen/humidity": {"unit": "%", "decimals": 1, "tol": 0.15, "place": "kitchen", "what": "relative humidity"},
    "garage/door": {"unit": None, "decimals": None, "tol": 0.0, "place": "garage", "what": "door contact",
                    "states": {1: "open", 0: "closed"}},
    "basement/water_level": {"unit": "cm", "decimals": 1, "tol": 0.15, "place": "basement", "what": "sump water level"},
    "basement/pump_power": {"unit": "W", "decimals": 1, "tol": 0.6, "place": "basement", "what": "sump pump power"},
    "outdoor/temperature": {"unit": "°C", "decimals": 1, "tol": 0.15, "place": "outdoor", "what": "air temperature"},
    "outdoor/pressure": {"unit": "hPa", "decimals": 1, "tol": 0.15, "place": "outdoor", "what": "air pressure"},
}
STALE_METRIC = "outdoor/pressure"
STALE_SILENT_S = 2 * 3600  # outdoor/pressure's last reading is end_ts - 2 h

# Event times, in seconds before end_ts (with the default end_ts at 15:45 UTC: clock time in the comment).
HUMIDITY_SPIKE = (5 * 3600 + 15 * 60, 4 * 3600 + 25 * 60)  # 10:30 → 11:20, peak near 10:52
WATER_SHIFT_START = 3 * 3600  # 12:45, ramps for 15 min from ~12 cm to ~31 cm and stays
WATER_SHIFT_RAMP_S = 15 * 60
SOIL_STUCK_START = 6 * 3600 + 15 * 60  # 09:30, greenhouse/soil_moisture repeats one value
SOIL_WATERING = 8 * 3600 + 45 * 60  # 07:00, a normal watering (+9 %)
KITCHEN_COOKING = ((21 * 3600 + 15 * 60, 20 * 3600 + 30 * 60), (3 * 3600 + 45 * 60, 3 * 3600 + 5 * 60))  # 18:30-19:15 yday, 12:00-12:40
PUMP_PERIOD_S, PUMP_RUN_S, PUMP_FIRST_S = 47 * 60, 3 * 60, 11 * 60
# Door (open, close) as seconds before end_ts; close None = still open at end_ts.
DOOR_OPENINGS: tuple[tuple[float, float | None], ...] = (
    (21 * 3600 + 40 * 60 - 12, 21 * 3600 + 36 * 60 - 41),  # 18:05:12 → 18:09:41 yesterday (car home)
    (13 * 3600 + 31 * 60 + 33, 13 * 3600 + 13 * 60 + 55),  # 02:13:27 → 02:31:05 at night (unexpected)
    (7 * 3600 + 56 * 60 + 50, 7 * 3600 + 51 * 60 + 20),  # 07:48:10 → 07:53:40 (car out)
    (24 * 60 - 15, None),  # 15:21:15, still open now
)


def end_ts_on(day: str) -> float:
    """The 15:45 UTC instant of ``day`` (``"YYYY-MM-DD"``): an end_ts the labels fit."""
    d = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return (d + timedelta(seconds=END_TIME_OF_DAY_S)).timestamp()


def _check_end(end_ts: float) -> float:
    end_ts = float(end_ts)
    if (end_ts - END_TIME_OF_DAY_S) % 86400 != 0:
        raise ValueError(
            f"end_ts {end_ts} is not 15:45:00 UTC; the question labels assume it (use end_ts_on(day))"
        )
    return end_ts


def _diurnal(t: np.ndarray, peak_hour: float) -> np.ndarray:
    """cos wave in [-1, 1], +1 at ``peak_hour`` UTC."""
    hour = (t % 86400) / 3600.0
    return np.cos(2 * math.pi * (hour - peak_hour) / 24.0)


def _bump(t: np.ndarray, start: float, end: float, rise_s: float = 600.0) -> np.ndarray:
    """0 outside [start, end], 1 inside, with smooth edges of ``rise_s``."""
    up = np.clip((t - start) / rise_s, 0, 1)
    down = np.clip((end - t) / rise_s, 0, 1)
    s = np.minimum(up, down)
    return 0.5 - 0.5 * np.cos(math.pi * s)


def _series(end_ts: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The minute grid and the rounded value of every regular metric on it."""
    n = HOURS * 3600 // STEP_S + 1
    t = end_ts - STEP_S * np.arange(n - 1, -1, -1, dtype=float)
    rel = end_ts - t  # seconds before end
    rng = np.random.default_rng(SEED)
    noise = {m: rng.standard_normal(n) for m in METRICS}
    day = (t - (end_ts - END_TIME_OF_DAY_S)) / 86400.0  # -1.x yesterday, 0.x today

    # Outdoor: a cool night, today warmer than yesterday; min near 04:30, max near 14:30.
    warm = 20.0 + 2.5 * np.clip((day * 24 + 6) / 12, 0, 1)  # yesterday cooler; warms 18:00 → 06:00
    outdoor_t = warm - 5.5 + 6.5 * _diurnal(t, 14.5) + 0.15 * noise["outdoor/temperature"]
    # Greenhouse follows the sun, hotter by day; humidity moves against temperature.
    gh_t = 18.0 + 9.0 * np.clip(_diurnal(t, 13.5), -0.6, 1) + 0.1 * day + 0.15 * noise["greenhouse/temperature"]
    spike = _bump(-rel, -HUMIDITY_SPIKE[0], -HUMIDITY_SPIKE[1], rise_s=1320.0)
    gh_h = 70.0 - 7.0 * _diurnal(t, 13.5) + 26.0 * spike + 0.4 * noise["greenhouse/humidity"]
    # Soil dries slowly, watered at 07:00, then the sensor freezes at 09:30.
    watered = rel <= SOIL_WATERING
    soil = np.where(watered, 47.0 - 0.55 * (SOIL_WATERING - rel) / 3600.0,
                    38.0 + 0.25 * (rel - SOIL_WATERING) / 3600.0)
    soil = soil + 0.12 * noise["greenhouse/soil_moisture"]
    # Kitchen: steady, warmer and damper while cooking.
    cook = sum(_bump(-rel, -a, -b) for a, b in KITCHEN_COOKING)
    kit_t = 21.2 + 0.4 * _diurnal(t, 17.0) + 2.8 * cook + 0.1 * noise["kitchen/temperature"]
    kit_h = 47.0 + 1.5 * _diurnal(t, 5.0) + 13.0 * cook + 0.5 * noise["kitchen/humidity"]
    # Basement: the sump level jumps to ~31 cm at 12:45 (a leak) and stays; the pump cycles.
    ramp = np.clip((WATER_SHIFT_START - rel) / WATER_SHIFT_RAMP_S, 0, 1)
    level = 12.0 + 19.0 * ramp + 0.2 * noise["basement/water_level"]
    since_start = (t - t[0]) - PUMP_FIRST_S
    running = (since_start >= 0) & ((since_start % PUMP_PERIOD_S) < PUMP_RUN_S)
    pump = np.where(running, 355.0 + 6.0 * noise["basement/pump_power"], 1.2 + 0.05 * noise["basement/pump_power"])
    # Pressure: a front coming in, falling from ~1014 to ~1006 hPa.
    pressure = 1014.0 - 7.5 * np.clip((rel.max() - rel) / rel.max(), 0, 1) ** 1.5 + 0.12 * noise["outdoor/pressure"]

    values = {
        "greenhouse/temperature": gh_t,
        "greenhouse/humidity": gh_h,
        "greenhouse/soil_moisture": soil,
        "kitchen/temperature": kit_t,
        "kitchen/humidity": kit_h,
        "basement/water_level": level,
        "basement/pump_power": pump,
        "outdoor/temperature": outdoor_t,
        "outdoor/pressure": pressure,
    }
    out = {m: np.round(v, METRICS[m]["decimals"]) for m, v in values.items()}
    stuck = rel <= SOIL_STUCK_START
    first_stuck = int(np.argmax(stuck))
    out["greenhouse/soil_moisture"][stuck] = out["greenhouse/soil_moisture"][first_stuck]
    return t, out


def _door_series(end_ts: float) -> tuple[np.ndarray, np.ndarray]:
    """Door reports (times, 1 open / 0 closed): heartbeats every 5 min plus every change."""
    start = end_ts - HOURS * 3600
    changes: list[tuple[float, int]] = []
    for opened, closed in DOOR_OPENINGS:
        changes.append((end_ts - opened, 1))
        if closed is not None:
            changes.append((end_ts - closed, 0))
    beats = start + DOOR_HEARTBEAT_S * np.arange(HOURS * 3600 // DOOR_HEARTBEAT_S + 1)
    times = sorted({float(b) for b in beats} | {c for c, _ in changes})

    def state_at(ts: float) -> int:
        state = 0
        for when, s in changes:
            if when <= ts:
                state = s
        return state

    return np.array(times), np.array([state_at(x) for x in times], dtype=float)


def _all_series(end_ts: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    t, values = _series(end_ts)
    series = {m: (t, v) for m, v in values.items()}
    keep = t <= end_ts - STALE_SILENT_S
    series[STALE_METRIC] = (t[keep], values[STALE_METRIC][keep])
    series["garage/door"] = _door_series(end_ts)
    return series


def readings(end_ts: float = DEFAULT_END_TS) -> list[tuple[str, dict]]:
    """Every reading of the scenario as ``(topic, payload)``, in time order (ties by topic)."""
    end_ts = _check_end(end_ts)
    rows: list[tuple[float, str, dict]] = []
    for metric, (times, vals) in _all_series(end_ts).items():
        unit = METRICS[metric]["unit"]
        for ts, v in zip(times.tolist(), vals.tolist()):
            if metric == "garage/door":
                payload: dict = {"value": bool(v), "ts": ts}
            else:
                payload = {"value": v, "ts": ts, "unit": unit}
            rows.append((ts, TOPIC_PREFIX + metric, payload))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [(topic, payload) for _, topic, payload in rows]


# --------------------------------------------------------------------------- reference


def windows(end_ts: float = DEFAULT_END_TS) -> dict[str, tuple[float, float]]:
    """Named windows as inclusive ``[start, end]`` epoch seconds (TZ=UTC)."""
    end_ts = _check_end(end_ts)
    midnight = end_ts - END_TIME_OF_DAY_S

    def since(hour: int, minute: int = 0) -> float:
        at = midnight + hour * 3600 + minute * 60
        return at if at <= end_ts else at - 86400  # "since 22:00" at 15:45 means yesterday 22:00

    w = {
        "last_15m": (end_ts - 900, end_ts),
        "last_30m": (end_ts - 1800, end_ts),
        "last_45m": (end_ts - 2700, end_ts),
        "last_hour": (end_ts - 3600, end_ts),
        "last_90m": (end_ts - 5400, end_ts),
        "last_2h": (end_ts - 7200, end_ts),
        "last_3h": (end_ts - 10800, end_ts),
        "last_4h": (end_ts - 4 * 3600, end_ts),
        "last_6h": (end_ts - 6 * 3600, end_ts),
        "last_12h": (end_ts - 12 * 3600, end_ts),
        "last_24h": (end_ts - 24 * 3600, end_ts),
        "today": (midnight, end_ts),
        "yesterday": (midnight - 86400, midnight - 1e-6),
        "night": (midnight - 2 * 3600, midnight + 6 * 3600),  # "last night": 22:00 → 06:00
        "since_6": (since(6), end_ts),
        "since_9": (since(9), end_ts),
        "since_12": (since(12), end_ts),
        "since_14_30": (since(14, 30), end_ts),
        "since_22": (since(22), end_ts),
    }
    return w


def _fmt_clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M")


def reference(end_ts: float = DEFAULT_END_TS) -> dict:
    """The true values behind every ``value_ref`` / ``time_ref`` in questions.jsonl.

    Keys:
    - ``current:<metric>``, ``last_ts:<metric>``, ``unit:<metric>``
    - ``<stat>:<metric>:<window>`` for stat in min, max, mean, count, first, last, min_ts, max_ts
      and every window of :func:`windows` (absent when the window holds no reading: count is 0)
    - ``stale_metrics`` (list), ``metrics`` (list), ``anomalous_metrics`` (list: episodes today)
    - ``door:state`` ("open"/"closed"), ``door:open_since``, ``door:last_opened``,
      ``door:opens:<window>`` (number of openings), ``door:night_open``/``door:night_close``
    - ``episode:<name>:start|end|peak|value|peak_ts``: the scripted events (see README)
    - ``clock:<key>``: "HH:MM" (UTC) for each timestamp-valued key above
    """
    end_ts = _check_end(end_ts)
    series = _all_series(end_ts)
    wins = windows(end_ts)
    ref: dict = {"end_ts": end_ts, "metrics": sorted(METRICS)}
    for metric, (t, v) in series.items():
        ref[f"current:{metric}"] = float(v[-1])
        ref[f"last_ts:{metric}"] = float(t[-1])
        ref[f"unit:{metric}"] = METRICS[metric]["unit"]
        for name, (lo, hi) in wins.items():
            sel = (t >= lo) & (t <= hi)
            ref[f"count:{metric}:{name}"] = int(sel.sum())
            if not sel.any():
                continue
            tv, vv = t[sel], v[sel]
            ref[f"min:{metric}:{name}"] = float(vv.min())
            ref[f"max:{metric}:{name}"] = float(vv.max())
            ref[f"mean:{metric}:{name}"] = float(vv.mean())
            ref[f"first:{metric}:{name}"] = float(vv[0])
            ref[f"last:{metric}:{name}"] = float(vv[-1])
            ref[f"min_ts:{metric}:{name}"] = float(tv[int(np.argmin(vv))])
            ref[f"max_ts:{metric}:{name}"] = float(tv[int(np.argmax(vv))])

    # Staleness: silent for longer than 5x its own reporting interval (the daemon's default factor).
    stale = []
    for metric, (t, _) in series.items():
        interval = float(np.median(np.diff(t)))
        if end_ts - t[-1] > 5 * interval:
            stale.append(metric)
    ref["stale_metrics"] = sorted(stale)

    # Door.
    opens = [(end_ts - o, None if c is None else end_ts - c) for o, c in DOOR_OPENINGS]
    t_door, v_door = series["garage/door"]
    ref["door:state"] = METRICS["garage/door"]["states"][int(v_door[-1])]
    ref["door:last_opened"] = opens[-1][0]
    if opens[-1][1] is None:
        ref["door:open_since"] = opens[-1][0]
    for name, (lo, hi) in wins.items():
        ref[f"door:opens:{name}"] = sum(1 for o, _ in opens if lo <= o <= hi)
    night_lo, night_hi = wins["night"]
    night = [(o, c) for o, c in opens if night_lo <= o <= night_hi]
    ref["door:night_open"], ref["door:night_close"] = night[0]

    # Scripted episodes, measured on the readings.
    t, v = series["greenhouse/humidity"]
    lo, hi = end_ts - HUMIDITY_SPIKE[0], end_ts - HUMIDITY_SPIKE[1]
    sel = (t >= lo) & (t <= hi)
    k = int(np.argmax(np.where(sel, v, -np.inf)))
    ref.update({"episode:humidity_spike:start": lo, "episode:humidity_spike:end": hi,
                "episode:humidity_spike:peak": float(v[k]), "episode:humidity_spike:peak_ts": float(t[k])})
    t, v = series["basement/water_level"]
    before = (t < end_ts - WATER_SHIFT_START) & (t >= end_ts - WATER_SHIFT_START - 3600)
    after = t >= end_ts - WATER_SHIFT_START + WATER_SHIFT_RAMP_S
    ref.update({"episode:water_level_shift:start": end_ts - WATER_SHIFT_START,
                "episode:water_level_shift:before": float(np.median(v[before])),
                "episode:water_level_shift:after": float(np.median(v[after]))})
    t, v = series["greenhouse/soil_moisture"]
    ref.update({"episode:soil_stuck:start": end_ts - SOIL_STUCK_START,
                "episode:soil_stuck:value": float(v[-1])})
    ref.update({"episode:door_night:start": ref["door:night_open"], "episode:door_night:end": ref["door:night_close"]})
    ref.update({"episode:pressure_silent:start": ref[f"last_ts:{STALE_METRIC}"]})
    ref["anomalous_metrics"] = sorted(["greenhouse/humidity", "basement/water_level", "greenhouse/soil_moisture",
                                       "garage/door", STALE_METRIC])

    def is_time(key: str) -> bool:
        head = key.split(":")[0]
        if head in ("last_ts", "min_ts", "max_ts"):
            return True
        if head == "door":
            return key in ("door:last_opened", "door:open_since", "door:night_open", "door:night_close")
        return head == "episode" and key.endswith((":start", ":end", ":peak_ts"))

    for key in [k for k in ref if is_time(k)]:
        ref["clock:" + key] = _fmt_clock(ref[key])
    return ref


if __name__ == "__main__":  # a quick look: python tests/data/scenario.py
    rows = readings()
    ref = reference()
    print(len(rows), "readings")
    for m in sorted(METRICS):
        print(f"{m:28s} now={ref[f'current:{m}']!s:8} today min={ref.get(f'min:{m}:today')} "
              f"max={ref.get(f'max:{m}:today')} mean={ref.get(f'mean:{m}:today', float('nan')):.2f}")
    for k in sorted(k for k in ref if k.startswith(("episode:", "door:", "clock:episode", "clock:door", "stale"))):
        print(k, ref[k])


def publish(port: int, host: str = "127.0.0.1", wait_s: float = 60.0) -> int:
    """Publish the scenario's readings (QoS 1, as fast as the broker takes them) to a broker;
    returns how many. Shared by tests/test_questions_e2e.py and tools/bench_ask.py."""
    import json

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.max_queued_messages_set(0)
    c.connect(host, port)
    c.loop_start()
    infos = [c.publish(topic, json.dumps(payload), qos=1) for topic, payload in readings(DEFAULT_END_TS)]
    for info in infos[-50:]:
        info.wait_for_publish(wait_s)
    c.disconnect()
    c.loop_stop()
    return len(infos)
