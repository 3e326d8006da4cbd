"""Measure question understanding + local answers on a labelled question file.

    TZ=UTC .venv/bin/python tools/eval_questions.py tests/data/questions.jsonl
    TZ=UTC .venv/bin/python tools/eval_questions.py tests/data/nlu_dev.jsonl --show-fail

Feeds tests/data/scenario.py's readings into a real SensorPipeline (node.clock = "data", the
RobustZScoreDetector, no broker), then for every question runs ``understand`` + ``answer`` (the
template path the daemon takes for a local route) and checks it against the labels the way
tests/data/README.md describes: route, intent, metrics, window, and every ``expect`` key with the
metric's tolerance. Prints routing accuracy, the share of local-labelled questions answered
locally, correctness (answered locally with the right values), the invented-number rate
(numbers in an answer that are neither in the question nor in its facts) and latency p50/p95 of
understand + answer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
sys.path.insert(0, str(REPO))

if os.environ.get("TZ") != "UTC":  # the labels are UTC wall-clock
    os.environ["TZ"] = "UTC"
    time.tzset()

from edged.answers import answer, cloud_facts  # noqa: E402
from edged.config import Settings  # noqa: E402
from edged.decision import fmt_clock, fmt_number  # noqa: E402
from edged.detector import RobustZScoreDetector  # noqa: E402
from edged.facts import Facts  # noqa: E402
from edged.logs import setup_logging  # noqa: E402
from edged.messages import RawMessage, Topics  # noqa: E402
from edged.nlu import understand  # noqa: E402
from edged.pipeline import SensorPipeline  # noqa: E402
from edged.stats import Stats  # noqa: E402


def load_scenario():
    spec = importlib.util.spec_from_file_location("edged_eval_scenario", DATA / "scenario.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_facts(scenario, end_ts: float | None = None) -> Facts:
    """A pipeline fed the whole scenario (data clock), silence checked, wrapped in Facts."""
    end_ts = end_ts or scenario.DEFAULT_END_TS
    settings = Settings()
    settings.node.clock = "data"
    published: list[tuple] = []

    def publish(topic, payload, **kw):
        published.append((topic, payload, kw))
        return True

    pipeline = SensorPipeline(settings, Topics("edged", "eval"), RobustZScoreDetector(), publish, Stats())
    now = time.time()
    batch = [RawMessage(topic, json.dumps(payload).encode(), now) for topic, payload in scenario.readings(end_ts)]
    for i in range(0, len(batch), 2048):
        pipeline.process(batch[i:i + 2048])
    pipeline.check_silence()
    return Facts(pipeline)


# ------------------------------------------------------------------ checking an answer
NUM = re.compile(r"(?<![\w.:])[-+]?\d+(?:\.\d+)?(?![\w:])")
CLOCK = re.compile(r"\b\d{1,2}:\d{2}\b")


def _strip_names(text: str, names: list[str]) -> str:
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(name, " M ")
    return text


def numbers_in(text: str, names: list[str]) -> tuple[list[float], list[str]]:
    text = _strip_names(text, names)
    clocks = CLOCK.findall(text)
    text = CLOCK.sub(" ", text)
    return [float(x) for x in NUM.findall(text)], clocks


def _fact_numbers(obj, nums: set[str], clocks: set[str]) -> None:
    if isinstance(obj, dict):
        for v in obj.values():
            _fact_numbers(v, nums, clocks)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _fact_numbers(v, nums, clocks)
    elif isinstance(obj, bool) or obj is None:
        return
    elif isinstance(obj, (int, float)):
        nums.add(fmt_number(float(obj)))
        if obj > 1e9:
            clocks.add(fmt_clock(float(obj)))
    elif isinstance(obj, str):
        clocks.update(CLOCK.findall(obj))
        for x in NUM.findall(CLOCK.sub(" ", obj)):
            nums.add(fmt_number(float(x)))


def invented(text: str, facts: list[dict], question: str, names: list[str]) -> list[str]:
    """Numbers and clock times in the answer found neither in its facts nor in the question."""
    nums, clocks = set(), set()
    _fact_numbers(facts, nums, clocks)
    q_nums, q_clocks = numbers_in(question, names)
    nums.update(fmt_number(abs(x)) for x in q_nums)
    nums.update(fmt_number(x) for x in q_nums)
    clocks.update(q_clocks)
    a_nums, a_clocks = numbers_in(text, names)
    out = [fmt_number(x) for x in a_nums if fmt_number(x) not in nums and fmt_number(abs(x)) not in nums]
    out += [c for c in a_clocks if c not in clocks and c.zfill(5) not in clocks]
    return out


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _near_clock(want: str, clocks: list[str], tol_min: int = 5) -> bool:
    w = _minutes(want)
    return any(min(abs(_minutes(c) - w), 1440 - abs(_minutes(c) - w)) <= tol_min for c in clocks)


def _named(text: str, metric: str) -> bool:
    if metric in text:
        return True
    place, _, what = metric.partition("/")
    low = text.lower()
    return place in low and what.replace("_", " ") in low


YES = re.compile(r"\byes\b", re.I)
NO = re.compile(r"\bno\b|\bnot\b|\bisn'?t\b", re.I)


def check_expect(q: dict, text: str, ref: dict, scenario, names: list[str]) -> list[str]:
    """The expect keys an answer fails (empty: correct)."""
    exp = q["expect"]
    fails = []
    nums, clocks = numbers_in(text, names)
    low = text.lower()
    for v in exp.get("values", []):
        want = ref.get(v["value_ref"])
        if want is None:
            fails.append(f"values: no reference {v['value_ref']}")
            continue
        tol = scenario.METRICS[v["metric"]]["tol"] or 1e-9
        if v.get("convert") == "°F":
            want = want * 9 / 5 + 32
            tol = tol * 9 / 5
        if not any(abs(x - want) <= tol + 1e-9 for x in nums):
            fails.append(f"values: {v['value_ref']}={want:g} not in answer")
    for t in exp.get("times", []):
        want = ref.get(t["time_ref"])
        if want is None or not _near_clock(want, clocks):
            fails.append(f"times: {t['time_ref']}={want} not in answer")
    if "door" in exp:
        if not re.search(rf"\b{exp['door']}\b", low):
            fails.append(f"door: '{exp['door']}' not said")
    if "count" in exp:
        want = ref.get(exp["count"]["value_ref"]) if isinstance(exp["count"], dict) else exp["count"]
        if want is None or not any(x == want for x in nums):
            fails.append(f"count: {want} not in answer")
    if "yes_no" in exp:
        head = low[:60]
        if exp["yes_no"] == "yes" and not YES.search(head):
            fails.append("yes_no: no 'yes'")
        if exp["yes_no"] == "no" and (YES.search(head) or not NO.search(head)):
            fails.append("yes_no: no 'no'")
    if "mention_metrics" in exp:
        for m in exp["mention_metrics"]:
            if not _named(text, m):
                fails.append(f"mention: {m} not named")
        allowed = set(exp["mention_metrics"]) | set(exp.get("may_mention", [])) | set(q.get("metrics", []))
        for m in names:
            if m not in allowed and m in text:
                fails.append(f"mention: {m} named but not anomalous")
    for m in exp.get("stale", []):
        if not re.search(r"stale|no reading since|not report|no report since|sent no reading", low):
            fails.append(f"stale: {m} not presented as old")
    if exp.get("no_data"):
        if not re.search(r"\bno (?:readings|data)\b", low):
            fails.append("no_data: not said")
    if exp.get("no_such_metric"):
        if not re.search(r"\bno\b.*\bsensor\b", low) or nums:
            fails.append("no_such_metric: not said, or a number given")
    if exp.get("help") and "ask" not in low:
        fails.append("help: no description")
    for place in exp.get("places", []):
        if place.lower() not in low:
            fails.append(f"places: {place} not named")
    return fails


def expected_window(q: dict, scenario, end_ts: float) -> tuple[float, float] | None:
    w = q["window"]
    kind = w["kind"]
    if kind is None:
        return None
    wins = scenario.windows(end_ts)
    if kind == "last":
        return end_ts - w["seconds"], end_ts
    if kind == "today":
        return wins["today"]
    if kind == "yesterday":
        return wins["yesterday"]
    if kind == "night":
        return wins["night"]
    if kind == "since":
        midnight = end_ts - scenario.END_TIME_OF_DAY_S
        at = midnight + w["since_hour"] * 3600 + (w["since_minute"] or 0) * 60
        return (at if at <= end_ts else at - 86400), end_ts
    return None


def evaluate(path: Path, facts: Facts | None = None, scenario=None, show: bool = False) -> dict:
    scenario = scenario or load_scenario()
    facts = facts or build_facts(scenario)
    end_ts = scenario.DEFAULT_END_TS
    ref = scenario.reference(end_ts)
    questions = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    names = facts.metrics()
    units = facts.units()
    rows = []
    latencies = []
    for q in questions:
        t0 = time.perf_counter()
        plan = understand(q["question"], units, facts.now())
        if plan.route == "local":
            text, used = answer(plan, facts)
        else:
            text, used = "", cloud_facts(plan, facts)
        latencies.append(time.perf_counter() - t0)
        row = {"id": q["id"], "question": q["question"], "label_route": q["route"], "route": plan.route,
               "reason": plan.route_reason, "intent": plan.intent, "label_intent": q["intent"],
               "metrics": list(plan.metrics), "label_metrics": q["metrics"], "text": text}
        row["route_ok"] = plan.route == q["route"]
        row["intent_ok"] = plan.intent == q["intent"]
        row["metrics_ok"] = set(plan.metrics) == set(q["metrics"])
        want_w = expected_window(q, scenario, end_ts)
        got_w = (plan.window.since, plan.window.until) if plan.window else None
        row["window_ok"] = (want_w is None and got_w is None) or (
            want_w is not None and got_w is not None and abs(want_w[0] - got_w[0]) < 2 and abs(want_w[1] - got_w[1]) < 2)
        if q["route"] == "local" and plan.route == "local":
            row["fails"] = check_expect(q, text, ref, scenario, names)
        elif q["route"] == "local":
            row["fails"] = [f"routed to cloud ({plan.route_reason})"]
        else:
            row["fails"] = []
            want_facts = set(q["expect"].get("facts", []))
            sent = {f.get("metric") for f in used}
            row["cloud_facts_ok"] = want_facts <= sent
        row["invented"] = invented(text, used, q["question"], names) if plan.route == "local" else []
        rows.append(row)
    local = [r for r in rows if r["label_route"] == "local"]
    cloud = [r for r in rows if r["label_route"] == "cloud"]
    answered = [r for r in rows if r["route"] == "local"]
    lat = sorted(latencies)
    result = {
        "file": str(path), "questions": len(rows), "local_labelled": len(local), "cloud_labelled": len(cloud),
        "routing_accuracy": sum(r["route_ok"] for r in rows) / len(rows),
        "answered_locally": sum(r["route"] == "local" for r in local) / max(1, len(local)),
        "correct_local": sum(not r["fails"] for r in local) / max(1, len(local)),
        "intent_accuracy": sum(r["intent_ok"] for r in rows) / len(rows),
        "metrics_accuracy_local": sum(r["metrics_ok"] for r in local) / max(1, len(local)),
        "window_accuracy": sum(r["window_ok"] for r in rows) / len(rows),
        "cloud_facts_ok": sum(r.get("cloud_facts_ok", False) for r in cloud if r["route"] == "cloud")
        / max(1, sum(r["route"] == "cloud" for r in cloud)),
        "invented_rate": sum(bool(r["invented"]) for r in answered) / max(1, len(answered)),
        "latency_p50_ms": 1000 * statistics.median(lat),
        "latency_p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
        "rows": rows,
    }
    if show:
        for r in rows:
            bad = r["fails"] or not r["route_ok"] or r["invented"]
            if bad or show == "all":
                print(f"--- {r['id']} {r['question']!r}")
                print(f"    route {r['route']} (label {r['label_route']}; {r['reason']}); intent {r['intent']} "
                      f"(label {r['label_intent']}); metrics {r['metrics']} (label {r['label_metrics']})")
                if r["text"]:
                    print(f"    answer: {r['text'][:400]}")
                for f in r["fails"]:
                    print(f"    FAIL {f}")
                if r["invented"]:
                    print(f"    INVENTED {r['invented']}")
    return result


def summary(res: dict) -> str:
    return (f"{res['file']}: {res['questions']} questions ({res['local_labelled']} local, {res['cloud_labelled']} cloud)\n"
            f"  routing accuracy          {res['routing_accuracy']:.1%}\n"
            f"  answered locally          {res['answered_locally']:.1%} of local-labelled\n"
            f"  correct (local, values)   {res['correct_local']:.1%} of local-labelled\n"
            f"  intent accuracy           {res['intent_accuracy']:.1%}\n"
            f"  metrics accuracy (local)  {res['metrics_accuracy_local']:.1%}\n"
            f"  window accuracy           {res['window_accuracy']:.1%}\n"
            f"  cloud facts carried       {res['cloud_facts_ok']:.1%} of cloud-routed cloud-labelled\n"
            f"  invented-number rate      {res['invented_rate']:.1%} of local answers\n"
            f"  latency understand+answer p50 {res['latency_p50_ms']:.2f} ms, p95 {res['latency_p95_ms']:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, default=[DATA / "nlu_dev.jsonl", DATA / "questions.jsonl"])
    ap.add_argument("--show-fail", action="store_true", help="print every question that fails a check")
    ap.add_argument("--show-all", action="store_true", help="print every question and answer")
    ap.add_argument("--json", type=Path, help="write the per-question rows here")
    ap.add_argument("--llm", type=Path, help="a built LM directory: also phrase every local answer with it "
                    "(under the guard, as the daemon does) and report its latency and rejections")
    ap.add_argument("--threads", type=int, default=2, help="LM threads (with --llm)")
    args = ap.parse_args(argv)
    setup_logging("warning")
    scenario = load_scenario()
    t0 = time.perf_counter()
    facts = build_facts(scenario)
    print(f"scenario ingested in {time.perf_counter() - t0:.1f} s; now = {fmt_clock(facts.now())} (TZ=UTC)")
    results = []
    for path in args.files:
        res = evaluate(path, facts, scenario, show="all" if args.show_all else args.show_fail)
        print(summary(res))
        results.append(res)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.llm:
        print(phrasing_report(args.llm, args.threads, facts, results[-1]))
    return 0


def phrasing_report(model_dir: Path, threads: int, facts: Facts, result: dict) -> str:
    """Template answer → the LM's guarded wording, timed per question (template + LM = what the
    daemon's `ask` costs when [llm] phrase_answers is on)."""
    from edged.phrasing import Phraser
    from edged.stats import Stats as _Stats

    stats = _Stats()
    phraser = Phraser(model_dir, threads, stats, load_now=True)
    timings, accepted, numbers_bad = [], 0, 0
    names = facts.metrics()
    for row in result["rows"]:
        if row["route"] != "local" or not row["text"] or row["intent"] in ("help", "list"):
            continue
        t0 = time.perf_counter()
        plan = understand(row["question"], facts.units(), facts.now())
        text, used = answer(plan, facts)
        phrased = phraser.phrase_answer(text, used, time.monotonic() + 10)
        timings.append(time.perf_counter() - t0)
        if phrased:
            accepted += 1
            numbers_bad += bool(invented(phrased, used, row["question"], names))
    phraser.stop()
    timings.sort()
    snap = stats.snapshot()
    return (f"LM-phrased answers ({model_dir.name}, {threads} threads): {len(timings)} questions, "
            f"p50 {1000 * statistics.median(timings):.0f} ms, p95 {1000 * timings[int(0.95 * (len(timings) - 1))]:.0f} ms; "
            f"wording accepted {accepted}, guard rejections {snap.get('llm_guard_rejections', 0)}, "
            f"accepted with a number not in the facts {numbers_bad}; decode {snap['llm_tokens_per_s']} tok/s")


if __name__ == "__main__":
    raise SystemExit(main())
