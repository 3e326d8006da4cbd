"""Streaming anomaly detector: range excursion + nearest-past-window distance + level shift +
stuck value + volatility + time of day (season) + an ONNX window model, each calibrated per
metric by a rolling quantile of its own history, combined, squashed into [0, 1] and passed
through a refractory filter.

Implements the :class:`edged.detector.Detector` protocol. All per-metric state lives in
arrays indexed by slot (grown on demand). The arithmetic is the same as the batch replay path
:func:`edged.anomaly.features.score_series` (tools/anomaly/check_stream.py checks equality).

Assumption: ``score`` is called once per appended reading of a slot, in time order (the
daemon's store drops duplicates and keeps late readings out of the window).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..logs import get_logger
from .features import (CHANNELS, FIXED_SCALE, NOISE_C, Params, _range_scale, block_sizes, normalise_model_window,
                       place_in_range, recur_offsets, recurs, season_distance, season_geometry, season_offsets, squash)

log = get_logger("edged.anomaly")

BUNDLED_MODEL = "edged-anomaly-mlp"
# a wheel carries the committed models as package data (setup.py's build hook); a source tree
# or an editable install has them at the top level, models/<name>/
PACKAGE_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_models")
SOURCE_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "models")


def bundled_models_root() -> str:
    """The directory holding the bundled models (<root>/<name>/manifest.json)."""
    for root in (PACKAGE_MODELS, SOURCE_MODELS):
        if os.path.isfile(os.path.join(root, BUNDLED_MODEL, "manifest.json")):
            return root
    return PACKAGE_MODELS


def bundled_model_dir(name: str = BUNDLED_MODEL) -> str:
    return os.path.join(bundled_models_root(), name)


DEFAULT_MODEL_DIR = bundled_model_dir()


class ModelDetector:
    name = "onnx-anomaly"

    def __init__(self, params: Params | None = None, model=None, capacity: int = 16) -> None:
        self.p = params or Params()
        self.model = model if "model" in self.p.use else None
        p = self.p
        self.cal_channels = [c for c in p.use if c not in FIXED_SCALE and (c != "model" or self.model is not None)]
        if p.refractory_unit not in ("readings", "time", "seconds"):
            raise ValueError(f"unknown refractory_unit {p.refractory_unit!r}")
        need = [p.knn_window, p.ls_recent + p.ls_ref, p.gap_context + 2, p.noise_len + 1]
        if "volatility" in p.use:
            need.append(p.vol_len + 1)
        if self.model is not None:
            need.append(self.model.window)
        self.window = int(max(need))
        self.ring_len = p.knn_memory + p.knn_window
        self.encoder = self.model is not None and self.model.kind == "encoder"
        self.mring_len = p.knn_memory + (self.model.window if self.model is not None else 0)
        self.long_decay = 2.0 ** (-1.0 / p.long_half)
        self.season = "season" in p.use
        self.season_len = season_geometry(p)[2]
        self.season_offsets = season_offsets(p)
        self.recur_offsets = recur_offsets(p)
        # the channels behind the rows of score's ratios (explain() names the largest with them)
        self.ratio_names = [c for c in p.use if c in CHANNELS and (c != "model" or self.model is not None)]
        self.capacity = 0
        self._alloc(capacity)

    # ------------------------------------------------------------------ state
    _STATE = ("n", "lo", "hi", "emb", "hist", "qstat", "prev_r", "until", "until_time", "first_time", "run",
              "best_run", "last_fire", "last_gap", "memb", "lpeak", "bfirst", "bcount", "bsize", "group", "gmax", "gmax_kept",
              "enorm", "mnorm", "ssum", "scnt", "sblk", "swoke")
    # newer than some snapshots (those kept every reading as its own calibration block, NaN for
    # an empty place in the embedding rings instead of a zero vector with an infinite norm, and
    # those from before the season channel)
    _ADDED = ("lpeak", "bfirst", "bcount", "bsize", "group", "gmax", "gmax_kept", "enorm", "mnorm", "ssum", "scnt", "sblk",
              "swoke")
    _DROPPED = ("block",)  # in older snapshots: the calibration block in absolute time

    def _alloc(self, capacity: int) -> None:
        p = self.p
        old = self.__dict__.copy() if self.capacity else None
        self.n = np.zeros(capacity, dtype=np.int64)
        self.lo = np.zeros(capacity)
        self.hi = np.zeros(capacity)
        knn = "knn" in p.use
        # embedding rings: an empty place is a zero vector whose squared norm (enorm, mnorm) is inf
        self.emb = np.zeros((capacity, self.ring_len if knn else 1, p.knn_window if knn else 1))
        self.enorm = np.full((capacity, self.ring_len if knn else 1), np.inf)
        self.hist = np.zeros((capacity, len(self.cal_channels), p.calib_len))
        self.qstat = np.zeros((capacity, len(self.cal_channels)))
        nc = len(self.cal_channels)
        self.lpeak = np.zeros((capacity, nc))  # decayed peak of the completed blocks since learning (long_gamma)
        # the calibration block in progress: its first reading's time, readings so far, readings it takes
        # (0, 0: the next reading starts one)
        self.bfirst = np.zeros(capacity)
        self.bcount = np.zeros(capacity, dtype=np.int64)
        self.bsize = np.zeros(capacity, dtype=np.int64)
        self.group = np.zeros(capacity, dtype=np.int64)  # index of the current block among the metric's blocks
        self.gmax = np.zeros((capacity, nc))  # each channel's max over the current block
        self.gmax_kept = np.zeros((capacity, nc))  # ... over its readings past learning
        esc = p.refractory_mode != "level"
        self.prev_r = np.zeros((capacity, max(p.refractory, 1) if esc else 1))
        self.until = np.full(capacity, -1, dtype=np.int64)
        self.until_time = np.full(capacity, -np.inf)
        self.first_time = np.zeros(capacity)
        self.run = np.zeros(capacity, dtype=np.int64)
        self.best_run = np.zeros(capacity, dtype=np.int64)
        self.last_fire = np.full(capacity, np.inf)
        self.last_gap = np.full(capacity, -(10**12), dtype=np.int64)
        self.memb = np.zeros((capacity, self.mring_len if self.encoder else 1, self.model.dim if self.encoder else 1))
        self.mnorm = np.full((capacity, self.mring_len if self.encoder else 1), np.inf)
        # season ring: sum and count of the readings of each season_block_s bucket, at its block
        # id mod the ring length; sblk says which block a place holds (-1: none)
        nb = self.season_len if self.season else 1
        self.ssum = np.zeros((capacity, nb))
        self.scnt = np.zeros((capacity, nb), dtype=np.int32)
        self.sblk = np.full((capacity, nb), -1, dtype=np.int64)
        self.swoke = np.full(capacity, np.inf)  # when the season channel first had its days
        # what explain() tells about the last reading (not in snapshots: every score sets them)
        self.lead = np.full(capacity, -1, dtype=np.int64)  # index in ratio_names of the largest ratio
        self.expected = np.full(capacity, np.nan)  # the season channel's most similar day, its value then
        # recurring = "quiet" (a setting, not learned state: the pipeline sets it from the config)
        self.quiet = np.zeros(capacity, dtype=bool)
        if old:
            k = old["capacity"]
            for name in self._STATE + ("lead", "expected", "quiet"):
                getattr(self, name)[:k] = old[name]
        self.capacity = capacity

    def state_dict(self, n: int) -> dict[str, np.ndarray]:
        """Per-slot state of slots [0, n) for the snapshot: a restart neither re-learns nor
        loses its calibration (about 120 KB per metric with the shipped params). ``channels``
        names the columns of the calibration arrays (indices into CHANNELS)."""
        self._ensure(np.array([max(n - 1, 0)]))
        state = {name: getattr(self, name)[:n] for name in self._STATE}
        state["channels"] = np.array([CHANNELS.index(c) for c in self.cal_channels], dtype=np.int64)
        state["season_geometry"] = self._season_geometry()
        return state

    def _season_geometry(self) -> np.ndarray:
        p = self.p
        kept = (p.season_block_s, p.season_span_s, p.season_days, p.season_min_days, p.season_learn_s, p.season_shift_s,
                p.recur_span_s)
        return np.array(kept if self.season else [], dtype=float)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        state = dict(state)
        for k in self._DROPPED:  # the next reading starts a calibration block (bcount = bsize = 0)
            state.pop(k, None)
        geometry = state.pop("season_geometry", None)
        mine = self._season_geometry()
        # the season settings (the first 6; the 7th, the recurrence span, only sizes the ring, and
        # snapshots from before it have 6) decide whether the season state is this channel's
        season_kept = (geometry is not None and len(mine) >= 6 and len(geometry) >= 6
                       and np.array_equal(np.asarray(geometry, float)[:6], mine[:6]))
        state = self._by_channel_name(state)
        if state is None:
            return
        saved_ring = None
        if not season_kept:  # saved without the season channel or with other season params: it starts afresh
            for k in self._SEASON_RING + ("swoke",):
                state.pop(k, None)
        elif "sblk" in state and state["sblk"].shape[1:] != self.sblk.shape[1:]:
            saved_ring = tuple(state.pop(k) for k in self._SEASON_RING)  # another ring length: placed by block id below
        if set(self._STATE) - set(self._ADDED) - set(state) or set(state) - set(self._STATE) or any(
                state[k].shape[1:] != getattr(self, k).shape[1:] for k in state):
            log.warning("detector_state_discarded", reason="saved with other params or another model",
                        hint="every metric learns afresh")
            return
        n = len(state["n"])
        self._ensure(np.array([max(n - 1, 0)]))
        for name in state:
            getattr(self, name)[:n] = state[name]
        for ring, norm in (("emb", "enorm"), ("memb", "mnorm")):
            if norm not in state:  # NaN marked an empty place
                e = getattr(self, ring)[:n]
                empty = np.isnan(e).any(axis=2)
                e[empty] = 0.0
                getattr(self, norm)[:n] = np.where(empty, np.inf, np.einsum("bmj,bmj->bm", e, e))
        if "group" not in state:  # every reading was a block: the last one is the current block
            last = np.maximum(state["n"] - 1, 0)
            self.group[:n] = last
            self.gmax[:n] = self.hist[np.arange(n), :, last % self.p.calib_len]
            self.gmax_kept[:n] = 0.0  # that reading may have been a learning one: keep it out of the peak
        if "bsize" not in state:  # saved with blocks of absolute time: the next reading starts a block
            self.bcount[:n] = self.bsize[:n] = 0
        if not season_kept and self.season:  # an empty ring, and silent until its calibration is its own
            self.ssum[:n], self.scnt[:n], self.sblk[:n], self.swoke[:n] = 0.0, 0, -1, np.inf
            j = self.cal_channels.index("season")
            self.hist[:n, j], self.qstat[:n, j] = np.inf, np.inf
            self.lpeak[:n, j] = self.gmax[:n, j] = self.gmax_kept[:n, j] = 0.0
        if saved_ring is not None:
            self._place_ring(*saved_ring)

    def _place_ring(self, ssum: np.ndarray, scnt: np.ndarray, sblk: np.ndarray) -> None:
        """A season ring saved with another length (the same blocks): each slot's newest blocks that
        fit go to their places in this one (a block's place is its id mod the length)."""
        nb = self.season_len
        self.ssum[:len(sblk)], self.scnt[:len(sblk)], self.sblk[:len(sblk)] = 0.0, 0, -1
        for slot, ids in enumerate(sblk):
            keep = np.flatnonzero((ids >= 0) & (ids > ids.max() - nb))
            pos = np.mod(ids[keep], nb)
            self.ssum[slot, pos], self.scnt[slot, pos], self.sblk[slot, pos] = ssum[slot, keep], scnt[slot, keep], ids[keep]

    _SEASON_RING = ("ssum", "scnt", "sblk")
    # calibrated channels newer than snapshots that do not name their channels
    _ADDED_CHANNELS = ("volatility", "season")
    _CHANNEL_STATE = ("hist", "qstat", "lpeak", "gmax", "gmax_kept")

    def _by_channel_name(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The calibration columns of a snapshot, rearranged into this detector's channel order
        by name. A channel the snapshot lacks (added since) gets a history of +inf, so it stays
        silent (its calibrated ratio is 0) until nearly calib_len of its own blocks have replaced
        it, while the others keep their calibration; a saved channel no longer in use is dropped.
        Snapshots from before ``channels`` was saved held every channel but the added ones, in
        order. None (and a log line) when the snapshot's channels cannot be read."""
        codes = state.pop("channels", None)
        if "qstat" not in state or state["qstat"].ndim != 2:
            return state
        old_nc = state["qstat"].shape[1]
        if codes is None:
            saved = [c for c in self.cal_channels if c not in self._ADDED_CHANNELS]
        else:
            codes = np.asarray(codes).ravel()
            saved = [CHANNELS[int(i)] if 0 <= int(i) < len(CHANNELS) else None for i in codes]
        if len(saved) != old_nc or None in saved:
            log.warning("detector_state_discarded", reason="the snapshot's calibration channels do not match",
                        saved_columns=old_nc, channels=self.cal_channels, hint="every metric learns afresh")
            return None
        if saved == self.cal_channels:
            return state
        for name in self._CHANNEL_STATE:
            if name not in state:
                continue
            a = state[name]
            fill = np.inf if name in ("hist", "qstat") else 0.0
            out = np.full((a.shape[0], len(self.cal_channels)) + a.shape[2:], fill)
            for j, c in enumerate(self.cal_channels):
                if c in saved:
                    out[:, j] = a[:, saved.index(c)]
            state[name] = out
        return state

    def _ensure(self, slots: np.ndarray) -> None:
        need = int(slots.max()) + 1 if len(slots) else 0
        if need > self.capacity:
            self._alloc(max(need, 2 * self.capacity))

    def score_series(self, values: np.ndarray, times: np.ndarray, quiet: bool = False) -> np.ndarray:
        """A whole series in one ORT call; equal to the row-at-a-time path (tests/test_anomaly_model.py),
        also for a metric set quiet (``quiet``, as :meth:`set_quiet`)."""
        from ..detector import appended_mask, spread_scores
        from .features import score_series

        keep = appended_mask(times)
        p = self.p.quieted() if quiet else self.p
        return spread_scores(keep, score_series(values[keep], p, self.model, times[keep]))

    def set_quiet(self, slot: int, quiet: bool) -> None:
        """recurring = "quiet" for ``slot``: a change that repeats the same hours of one of the
        earlier days says nothing on the channels of quiet_use either (Params.quieted). Needs the
        season channel and the recurrence test (recur_noise > 0); a no-op without them."""
        self._ensure(np.array([slot], dtype=np.int64))
        self.quiet[slot] = bool(quiet)

    def reset(self, slot: int) -> None:
        if slot >= self.capacity:
            return
        self.n[slot] = 0
        self.lo[slot] = self.hi[slot] = 0.0
        self.emb[slot] = 0.0
        self.enorm[slot] = np.inf
        self.hist[slot] = 0.0
        self.qstat[slot] = 0.0
        self.lpeak[slot] = 0.0
        self.bfirst[slot] = 0.0
        self.bcount[slot] = self.bsize[slot] = 0
        self.group[slot] = 0
        self.gmax[slot] = 0.0
        self.gmax_kept[slot] = 0.0
        self.prev_r[slot] = 0.0
        self.until[slot] = -1
        self.until_time[slot] = -np.inf
        self.first_time[slot] = 0.0
        self.run[slot] = 0
        self.best_run[slot] = 0
        self.last_fire[slot] = np.inf
        self.last_gap[slot] = -(10**12)
        self.memb[slot] = 0.0
        self.mnorm[slot] = np.inf
        self.ssum[slot] = 0.0
        self.scnt[slot] = 0
        self.sblk[slot] = -1
        self.swoke[slot] = np.inf
        self.lead[slot] = -1
        self.expected[slot] = np.nan

    # ------------------------------------------------------------------ scoring
    def score(self, slots: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        p = self.p
        slots = np.asarray(slots, dtype=np.int64)
        self._ensure(slots)
        B = len(slots)
        x = values[:, -1].astype(float)
        t = self.n[slots].copy()  # step index of this reading
        first = t == 0
        now = times[:, -1].astype(float)
        self.first_time[slots[first]] = now[first]
        learning = (t < p.learn) | ((now - self.first_time[slots] < p.learn_s) if p.learn_s > 0 else False)
        self.lo[slots[first]] = x[first]
        self.hi[slots[first]] = x[first]
        lo, hi = self.lo[slots], self.hi[slots]
        scale = _range_scale(lo, hi)
        ch = {"excursion": np.maximum(np.maximum(x - hi, lo - x), 0.0) / scale}
        noise = np.zeros(B)  # step noise, metric units (the excursion's floor, the recurrence test)
        if p.excursion_noise > 0 or p.recur_noise > 0:
            L = p.noise_len
            okn = t >= L
            if okn.any():
                ad = np.abs(np.diff(values[okn, -(L + 1):-1], axis=1))
                noise[okn] = NOISE_C * np.median(ad, axis=1)
        if p.excursion_noise > 0:
            ch["noise"] = noise / scale

        w = p.knn_window
        full = t >= w - 1
        knn = np.zeros(B)
        if "knn" in p.use:
            Z = (values[:, -w:] - lo[:, None]) / scale[:, None]
            if p.knn_center:
                Z = Z - Z.mean(axis=1, keepdims=True)
            Z = np.where(full[:, None], Z, 0.0)
            has, dist, sq = _nearest(self.emb, self.enorm, slots, t, Z, full, w)
            knn[has] = dist[has]
            pos = np.mod(t, self.ring_len)
            self.emb[slots, pos] = Z
            self.enorm[slots, pos] = np.where(full, sq, np.inf)
        ch["knn"] = knn

        k, L = p.ls_recent, p.ls_ref
        shift = np.zeros(B)
        if "shift" in p.use:
            okk = t >= k + L - 1
            if okk.any():
                v = values[okk]
                rec = v[:, -k:].mean(axis=1)
                ref = np.median(v[:, -(k + L):-k], axis=1)
                shift[okk] = np.abs(rec - ref) / scale[okk]
        ch["shift"] = shift

        if "volatility" in p.use:
            vl = p.vol_len
            vol = np.zeros(B)
            okv = t >= vl
            if okv.any():
                vol[okv] = np.abs(np.diff(values[okv, -(vl + 1):], axis=1)).mean(axis=1) / scale[okv]
            ch["volatility"] = vol

        if self.season:
            sblock = np.floor(now / p.season_block_s).astype(np.int64)  # each reading's season block
            season, ch["season_live"] = self._season(slots, x, now, sblock)
            ch["season"] = season / scale

        # stuck: run of identical readings against the longest completed earlier run
        same = (t > 0) & (x == values[:, -2])
        run_prev, best = self.run[slots], self.best_run[slots]
        best = np.where(~same & (t > 0), np.maximum(best, run_prev), best)
        run = np.where(same, run_prev + 1, 1)
        self.run[slots], self.best_run[slots] = run, best
        if "stuck" in p.use:
            ch["stuck"] = np.where(best > 0, run / (p.stuck_scale * np.maximum(best, p.stuck_min)), 0.0)

        if self.model is not None:
            mw = self.model.window
            mch = np.zeros(B)
            okm = t >= mw - 1
            if self.encoder:
                Em = np.zeros((B, self.model.dim))
                if okm.any():
                    Em[okm] = self.model.embed(place_in_range(values[okm, -mw:], lo[okm], scale[okm]))
                has, dist, sq = _nearest(self.memb, self.mnorm, slots, t, Em, okm, mw)
                mch[has] = dist[has]
                pos = np.mod(t, self.mring_len)
                self.memb[slots, pos] = Em
                self.mnorm[slots, pos] = np.where(okm, sq, np.inf)
            elif okm.any():
                mch[okm] = self.model.run(normalise_model_window(values[okm, -mw:], scale[okm]))
            ch["model"] = mch

        # sampling gaps: window channels are 0 while their window spans a gap
        gc = p.gap_context
        okg = t >= gc + 1
        med_dt = np.full(B, np.nan)  # median of the gc intervals before this reading
        if okg.any():
            d = np.diff(times[okg, -(gc + 2):].astype(float), axis=1)
            med_dt[okg] = np.median(d[:, :-1], axis=1)
            gap = d[:, -1] > p.gap_factor * med_dt[okg]
            self.last_gap[slots[okg][gap]] = t[okg][gap]
        sg = t - self.last_gap[slots]
        spans = {"knn": p.knn_window, "shift": p.ls_recent + p.ls_ref, "volatility": p.vol_len + 1,
                 "model": self.model.window if self.model is not None else 0}
        for name, L in spans.items():
            if name in ch:
                ch[name] = np.where(sg < L - 1, 0.0, ch[name])

        # calibration by a rolling order statistic of each channel's own history of block maxima
        kq = int(p.calib_q * (p.calib_len - 1))
        if p.calib_block_s > 0:  # as features.calibration_groups
            new = ((self.bcount[slots] >= self.bsize[slots]) | (now - self.bfirst[slots] >= p.calib_block_s)) | (t == 0)
            ns = slots[new]
            self.bfirst[ns], self.bcount[ns], self.bsize[ns] = now[new], 0, block_sizes(med_dt[new], p.calib_block_s)
            self.bcount[slots] += 1
        else:
            new = np.ones(B, dtype=bool)
        closing = new & (t > 0)  # this reading starts a new block: the one before is complete
        cs = slots[closing]
        if len(cs):  # the finished block enters the history and the long-memory peak
            self.hist[cs, :, np.mod(self.group[cs], p.calib_len)] = self.gmax[cs]
            self.lpeak[cs] = np.maximum(self.lpeak[cs] * self.long_decay, self.gmax_kept[cs])
            self.group[cs] += 1
            self.gmax[cs] = 0.0
            self.gmax_kept[cs] = 0.0
        due = slots[(t == 0) | (closing & (self.group[slots] % p.calib_every == 0))]
        if len(due):
            self.qstat[due] = np.partition(self.hist[due], kq, axis=2)[:, :, kq]
        ratios = []
        for name in p.use:
            if name not in ch:
                continue
            wgt = p.weights.get(name, 1.0)
            if name == "excursion":
                den = p.excursion_scale if "noise" not in ch else np.maximum(p.excursion_scale, p.excursion_noise * ch["noise"])
                ratios.append(wgt * ch[name] / den)
                continue
            if name == "stuck":
                ratios.append(wgt * ch[name])
                continue
            j = self.cal_channels.index(name)
            o = self.qstat[slots, j]
            if p.long_gamma > 0 and name in p.long_use:
                o = np.maximum(o, p.long_gamma * self.lpeak[slots, j])
            ratio = wgt * ch[name] / np.maximum(o, p.floor)
            if name + "_live" in ch:
                ratio = np.where(ch[name + "_live"], ratio, 0.0)
            tested = (name in p.recur_use) | (self.quiet[slots] if name in p.quiet_use else False)
            if p.recur_noise > 0 and self.season and np.any(tested):  # as features.calibrate
                rows = np.flatnonzero(tested & (ratio >= p.recur_min * p.rho_half) & ch["season_live"])
                if len(rows):
                    S, C = self._gather(slots[rows], sblock[rows], self.recur_offsets)
                    ratio[rows[recurs(S, C, noise[rows], p)]] = 0.0
            ratios.append(ratio)
            self.gmax[slots, j] = np.maximum(self.gmax[slots, j], ch[name])
            self.gmax_kept[slots, j] = np.maximum(self.gmax_kept[slots, j], np.where(learning, 0.0, ch[name]))
        stacked = np.vstack(ratios)
        r = np.max(stacked, axis=0)
        self.lead[slots] = np.argmax(stacked, axis=0)
        r[learning] = 0.0  # nothing is emitted while learning, so nothing opens a refractory period

        # refractory
        R = p.refractory
        if R <= 0:
            rr = r
        elif p.refractory_mode == "level":
            inside = t <= self.until[slots] if p.refractory_unit == "readings" else now <= self.until_time[slots]
            escal = inside & (r >= p.rho_half) & (r > p.escalate * self.last_fire[slots])
            rr = np.where(inside & ~escal, p.suppress * r, r)
            fire = (~inside | escal) & (r >= p.rho_half)
            if p.refractory_unit == "readings":
                self.until[slots[fire]] = t[fire] + R
            else:
                span = float(R) if p.refractory_unit == "seconds" else np.nan_to_num(R * med_dt[fire])
                self.until_time[slots[fire]] = now[fire] + span
            self.last_fire[slots[fire]] = r[fire]
        else:
            prev = self.prev_r[slots]
            rr = np.where(r > p.escalate * prev.max(axis=1), r, p.suppress * r)
            self.prev_r[slots, np.mod(t, R)] = r
        out = squash(rr, p.rho_half)
        out[learning] = np.nan

        # advance the running range and the counters
        self.lo[slots] = np.minimum(lo, x)
        self.hi[slots] = np.maximum(hi, x)
        self.n[slots] = t + 1
        return out

    def explain(self, slot: int) -> dict:
        """What led the last score of ``slot``: the channel with the largest ratio, and when that
        is the season channel, ``expected``: the value at this time of day on the most similar earlier
        day (what the reading was compared with). The decision layer words a start with it."""
        names = self.ratio_names
        if slot >= self.capacity or not 0 <= self.lead[slot] < len(names):
            return {}
        lead = names[self.lead[slot]]
        out = {"channel": lead}
        if lead == "season" and np.isfinite(self.expected[slot]):
            out["expected"] = float(self.expected[slot])
        return out

    def _gather(self, slots: np.ndarray, b: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sum, count) the season ring holds for the blocks ``offsets`` back from each slot's
        current block ``b``; 0, 0 where it holds none (features.Blocks.lookup in the batch path)."""
        nb = self.season_len
        ids = b[:, None] - offsets[None, :]
        q, rows = np.mod(ids, nb), slots[:, None]
        hit = self.sblk[rows, q] == ids
        return np.where(hit, self.ssum[rows, q], 0.0), np.where(hit, self.scnt[rows, q], 0).astype(float)

    def _season(self, slots: np.ndarray, x: np.ndarray, now: np.ndarray,
                b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Adds the reading to its block ``b`` in the season ring, then the nearest of the earlier
        days' distances (the batch path's :func:`edged.anomaly.features.season_channel`, same order
        of sums)."""
        p, nb = self.p, self.season_len
        pos = np.mod(b, nb)
        fresh = self.sblk[slots, pos] != b
        self.ssum[slots[fresh], pos[fresh]] = 0.0
        self.scnt[slots[fresh], pos[fresh]] = 0
        self.sblk[slots, pos] = b
        self.ssum[slots, pos] += x
        self.scnt[slots, pos] += 1

        best, days, then = season_distance(*self._gather(slots, b, self.season_offsets), p)
        awake = days >= max(p.season_min_days, 1)
        self.expected[slots] = np.where(awake & np.isfinite(best), then, np.nan)
        self.swoke[slots] = np.where(awake, np.minimum(self.swoke[slots], now), self.swoke[slots])
        return np.where(awake, best, 0.0), awake & (now - self.swoke[slots] >= p.season_learn_s)


def _nearest(ring_arr, norm_arr, slots, t, Z, full, lag):
    """Nearest past embedding for each row of Z: the candidates are the whole ring but its ``lag``
    newest places, i.e. steps s in [t-lag-memory+1, t-lag] (ring length memory + lag); an empty
    place has an infinite squared norm. Returns (has, distance / sqrt(dim), squared norms of Z)."""
    ring_len, dim = ring_arr.shape[1], ring_arr.shape[2]
    sqz = np.einsum("ij,ij->i", Z, Z)
    B = len(slots)
    lo = int(slots.min()) if B else 0
    if B and int(slots.max()) - lo == B - 1 and len(np.unique(slots)) == B:
        # the slots are a block of consecutive ones (in any order, as a round of all metrics is):
        # work on a view of the rings in slot order, not on a ~40 KB-per-metric gathered copy
        order = slots - lo  # each call row's row in the block
        Zb, tt, sq = np.empty_like(Z), np.empty_like(t), np.empty_like(sqz)
        Zb[order], tt[order], sq[order] = Z, t, sqz
        rows = slice(lo, lo + B)
    else:
        order, Zb, tt, sq, rows = None, Z, t, sqz, slots
    dot = np.matmul(ring_arr[rows], Zb[:, :, None])[:, :, 0]  # (B, ring_len)
    d2 = sq[:, None] + norm_arr[rows] - 2.0 * dot
    age = np.mod(tt[:, None] - np.arange(ring_len)[None, :], ring_len)
    d2[age < lag] = np.inf
    m = d2.min(axis=1)
    if order is not None:
        m = m[order]
    has = np.isfinite(m) & full
    dist = np.zeros(len(slots))
    dist[has] = np.sqrt(np.maximum(m[has], 0.0) / dim)
    return has, dist, sqz


def load_detector(model_dir: str | None = None, params_path: str | None = None, quantized: bool = True,
                  runtime_settings=None) -> ModelDetector:
    """The shipped configuration: models/<name>/detector.json (Params) + the int8 model."""
    from .model import OnnxWindowModel

    model_dir = os.path.abspath(model_dir or DEFAULT_MODEL_DIR)
    params_path = params_path or os.path.join(model_dir, "detector.json")
    params = Params.from_dict(json.load(open(params_path))["params"]) if os.path.exists(params_path) else Params()
    model = None
    if "model" in params.use:
        model = OnnxWindowModel(os.path.join(model_dir, "model.int8.onnx" if quantized else "model.onnx"),
                                runtime_settings=runtime_settings)
    return ModelDetector(params, model)
