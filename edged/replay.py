"""`edged replay`: the daemon's scoring over a CSV of ``timestamp,value``, no broker.

Output is NAB's results format: ``timestamp,value,anomaly_score`` in the input's row order,
the score in [0, 1] and causal (a row's score uses rows up to and including it). A folder
in gives a folder out with the same relative paths.

A detector may offer ``score_series(values, times) -> scores`` to score a whole series at
once (many time steps per call); it must equal the row-at-a-time path, which is what
:func:`score_rows` runs and what the tests compare against.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .detector import Detector
from .messages import parse_timestamp
from .windows import APPENDED, MetricStore


class ReplayError(Exception):
    """Bad input for replay; the message names the file and line."""


@dataclass
class Series:
    stamps: list[str]  # as written in the input, echoed in the output
    times: np.ndarray
    values: np.ndarray


# "2014-04-01 00:05:00" / "2014-04-01T00:05:00.250": what numpy parses exactly as parse_timestamp does
NAIVE_ISO = re.compile(r"\s*(?!0000)\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?\s*$")


def read_series(path: Path) -> Series:
    stamps: list[str] = []
    times: list[float] = []
    values: list[float] = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ReplayError(f"{path}: empty file")
            cols = [h.strip().lower() for h in header]
            if "timestamp" not in cols or "value" not in cols:
                raise ReplayError(f"{path}: header must name the columns timestamp and value, got {header}")
            ti, vi = cols.index("timestamp"), cols.index("value")
            lines: list[int] = []
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    stamp, value = row[ti], float(row[vi])
                except (ValueError, IndexError) as exc:
                    raise ReplayError(f"{path}:{line_no}: {exc}") from None
                stamps.append(stamp)
                values.append(value)
                lines.append(line_no)
    except UnicodeDecodeError:
        raise ReplayError(f"{path}: not UTF-8 text") from None
    times = None
    if all(NAIVE_ISO.match(st) for st in stamps):  # the usual case: one vectorised parse (naive = UTC)
        try:
            us = np.array([st.strip() for st in stamps], dtype="datetime64[us]").astype(np.int64)
            # beyond 2^53 us (after 2255) the division could round differently from datetime's
            times = us / 1e6 if not len(us) or np.abs(us).max() < 2**53 else None
        except ValueError:  # a month 13 or the like: the row path below names the line
            times = None
    if times is None:
        times = []
        for stamp, line_no in zip(stamps, lines):
            try:
                times.append(parse_timestamp(stamp))
            except ValueError as exc:
                raise ReplayError(f"{path}:{line_no}: {exc}") from None
    return Series(stamps, np.asarray(times, dtype=float), np.asarray(values, dtype=float))


def score_rows(detector: Detector, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The streaming path, one reading at a time, exactly as the sensor lane runs it."""
    store = MetricStore(detector.window, 1)
    slot = np.array([store.slot("replay")])
    scores = np.zeros(len(values))
    last = np.nan
    for i in range(len(values)):
        outcome = store.append(slot, times[i : i + 1], values[i : i + 1])
        if outcome[0] == APPENDED:  # the lane scores appended readings only (duplicates/late are not)
            win_vals, win_times = store.windows(slot, detector.window)
            last = detector.score(slot, win_vals, win_times)[0]
        scores[i] = last
    return scores


def score_series(detector: Detector, times: np.ndarray, values: np.ndarray, quiet: bool = False) -> np.ndarray:
    """``quiet``: as a metric set to recurring = "quiet" (the model detector)."""
    batch = getattr(detector, "score_series", None)
    if quiet:
        if not hasattr(detector, "set_quiet"):
            raise ReplayError(f"recurring = 'quiet' needs the model detector, not {getattr(detector, 'name', detector)!r}")
        scores = batch(values, times, quiet=True)
    else:
        scores = batch(values, times) if batch is not None else score_rows(detector, times, values)
    return np.nan_to_num(np.clip(scores, 0.0, 1.0), nan=0.0)


def write_results(path: Path, series: Series, scores: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["timestamp", "value", "anomaly_score"])
        for stamp, value, score in zip(series.stamps, series.values, scores):
            out.writerow([stamp, repr(float(value)) if not float(value).is_integer() else int(value), f"{score:.6f}"])


def plan(inp: Path, out: Path | None) -> list[tuple[Path, Path]]:
    """(input, output) pairs: a file → OUT (default INPUT.scored.csv); a folder → same relative paths."""
    if inp.is_dir():
        if out is None:
            raise ReplayError("replaying a folder needs --out FOLDER")
        files = sorted(p for p in inp.rglob("*.csv") if p.is_file())
        if not files:
            raise ReplayError(f"{inp}: no .csv files")
        return [(f, out / f.relative_to(inp)) for f in files]
    if not inp.is_file():
        raise ReplayError(f"{inp}: no such file or folder")
    return [(inp, out or inp.with_suffix(".scored.csv"))]


def replay(pairs: Iterable[tuple[Path, Path]], make_detector, progress=None, quiet: bool = False) -> int:
    """Score every pair with a fresh detector each (series are independent). Returns rows.
    ``quiet``: every series as a metric set to recurring = "quiet"."""
    rows = 0
    for src, dst in pairs:
        series = read_series(src)
        detector = make_detector()
        scores = score_series(detector, series.times, series.values, quiet)
        write_results(dst, series, scores)
        rows += len(scores)
        if progress is not None:
            progress(len(scores))
    return rows
