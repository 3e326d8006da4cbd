"""The local language model's worker: better wording for answers and anomaly summaries.

One thread owns the engine (a 135M model uses the cores it is given; two generations at a
time would only slow both). Jobs wait in a small priority queue: questions first, then
summaries; a summary that finds the queue full is dropped and counted — the template
summary already went out with the ``start`` event. Every phrasing passes the faithfulness
guard (a number, unit or metric name not in the facts rejects it) or the template stands.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .logs import get_logger
from .stats import Stats

log = get_logger("edged.phrasing")

QUESTION, SUMMARY = 0, 1  # priorities: lower runs first
SUMMARY_SYSTEM = (
    "You rewrite sensor alerts for a home owner. Rewrite the alert in one short, plain sentence. "
    "Keep every number, unit and sensor name exactly as given; add no number of your own."
)
ANSWER_SYSTEM = (
    "You rewrite a device's answer in one or two short, friendly sentences. Keep every number, unit, "
    "time and sensor name exactly as given; add nothing that is not in the answer."
)


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    system: str = field(compare=False)
    text: str = field(compare=False)
    facts: object = field(compare=False)
    deadline: float = field(compare=False)  # monotonic
    done: Callable[[str | None], None] = field(compare=False)


class Phraser:
    """Owns the engine and the worker thread; ``phrase_*`` calls never block the caller's lane
    beyond the deadline they pass."""

    def __init__(self, model_dir: Path, threads: int, stats: Stats, *, max_new_tokens: int = 64,
                 max_summaries: int = 8, load_now: bool = False, engine_factory=None, lookup_tokens: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.lookup_tokens = lookup_tokens  # None: the engine's default
        self.stats = stats
        self.max_new_tokens = max_new_tokens
        self.max_summaries = max_summaries
        self._engine_factory = engine_factory
        self._engine = None
        self._load_error: str | None = None
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stop = False
        self.last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lm-worker", daemon=True)
        self._thread.start()
        if load_now:
            self.engine()

    # ------------------------------------------------------------------ engine
    def engine(self):
        """Load once (at start or on first use); a model that cannot load disables phrasing."""
        if self._engine is None and self._load_error is None:
            t0 = time.monotonic()
            try:
                if self._engine_factory is not None:
                    self._engine = self._engine_factory()
                else:
                    from .llm.engine import Engine

                    lookup = {} if self.lookup_tokens is None else {"lookup": self.lookup_tokens}
                    self._engine = Engine(self.model_dir, threads=self.threads, verify=True, spin=False, **lookup)
                log.info("llm_loaded", model=str(self.model_dir), load_s=round(time.monotonic() - t0, 2))
            except Exception as exc:  # missing files, checksum mismatch, onnxruntime errors
                self._load_error = str(exc)[:300]
                log.warning("llm_unavailable", model=str(self.model_dir), error=self._load_error,
                            hint="answers and summaries use the templates; install with: edged models pull smollm2-135m")
        return self._engine

    @property
    def available(self) -> bool:
        return self._load_error is None

    # ------------------------------------------------------------------ submitting
    def submit_summary(self, summary: str, facts: dict, on_done: Callable[[str | None], None], timeout_s: float = 10.0) -> bool:
        with self._cv:
            queued = sum(1 for j in self._heap if j.priority == SUMMARY)
            if queued >= self.max_summaries or not self.available:
                self.stats.incr("llm_summaries_dropped")
                return False
            heapq.heappush(self._heap, _Job(SUMMARY, next(self._seq), SUMMARY_SYSTEM, summary, facts,
                                            time.monotonic() + timeout_s, on_done))
            self._cv.notify()
        return True

    def phrase_answer(self, answer: str, facts: object, deadline: float) -> str | None:
        """Blocking until ``deadline`` (monotonic): the guarded phrasing, or None."""
        if not self.available or deadline - time.monotonic() < 0.2:
            return None
        box: list[str | None] = []
        ready = threading.Event()

        def done(text: str | None) -> None:
            box.append(text)
            ready.set()

        with self._cv:
            heapq.heappush(self._heap, _Job(QUESTION, next(self._seq), ANSWER_SYSTEM, answer, facts, deadline, done))
            self._cv.notify()
        ready.wait(max(0.0, deadline - time.monotonic()))
        return box[0] if box else None

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._stop:
                    self._cv.wait(1.0)
                    self.last_progress = time.monotonic()
                if self._stop:
                    return
                job = heapq.heappop(self._heap)
            self.last_progress = time.monotonic()
            try:
                job.done(self._phrase(job))
            except Exception:  # a bug here must not kill the worker
                log.exception("llm_job_failed")
                job.done(None)
            self.last_progress = time.monotonic()

    def _phrase(self, job: _Job) -> str | None:
        from .llm.guard import check, missing_numbers, summary_keeps

        remaining = job.deadline - time.monotonic()
        if remaining <= 0.1:
            self.stats.incr("llm_expired")
            return None
        engine = self.engine()
        if engine is None:
            return None
        t0 = time.monotonic()
        gen = engine.chat(job.text, system=job.system, max_new_tokens=self.max_new_tokens, timeout_s=remaining,
                          stop=("\n\n",))
        elapsed = time.monotonic() - t0
        self.stats.incr("llm_generations")
        self.stats.incr("llm_tokens", len(gen.token_ids))
        if gen.decode_s > 0:
            self.stats.llm_tokens_per_s.add(len(gen.token_ids) / gen.decode_s)
        text = " ".join(gen.text.split())
        if gen.timed_out or not text:
            self.stats.incr("llm_timeouts" if gen.timed_out else "llm_empty")
            return None
        facts_text = json.dumps(job.facts) if not isinstance(job.facts, str) else job.facts
        problems = list(check(text, [facts_text, job.text]).problems)
        if job.priority == SUMMARY and isinstance(job.facts, dict) and job.facts.get("metric"):
            problems += summary_keeps(text, job.text, str(job.facts["metric"]))
        elif job.priority == QUESTION:  # an answer states what was asked for: every number stays
            problems += missing_numbers(text, job.text)
        if problems:
            self.stats.incr("llm_guard_rejections")
            log.info("llm_phrasing_rejected", problems=problems[:3], seconds=round(elapsed, 2))
            return None
        return text
