#!/usr/bin/env python3
"""Soak-fuzz every decoder of untrusted input with the properties of tests/test_fuzz.py.

Two phases, the same property checks (imported from tests/test_fuzz.py):

1. hypothesis: every ``@given`` test of tests/test_fuzz.py with ``--examples`` examples each
   (the "soak" profile), shrinking any failure to a minimal reproducer;
2. a direct generator loop (``--random`` cases): random mutations of a seed corpus fed to
   decode_payload, parse_request and RequestAuth.verify, tens of thousands per second.

Prints cases/s per phase, counts per rejection reason, known bugs hit (with their first
reproducer) and every failure with a reproducer. Exit status: 0 clean, 1 a failure or a
known bug was hit (``--allow-known``: known bugs alone exit 0), 2 bad usage.

    .venv/bin/python tools/fuzz.py                      # ~100k+ cases, a few minutes
    .venv/bin/python tools/fuzz.py --examples 200 --random 5000 --seed 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def _load(examples: int):
    os.environ["FUZZ_PROFILE"] = "soak"
    os.environ["FUZZ_EXAMPLES"] = str(examples)
    import test_fuzz  # noqa: E402  (reads the two variables at import)

    return test_fuzz


SEEDS = [
    b"21.5", b"-3", b"ON", b"off", b"true", b"NaN", b"1e400",
    b'{"value": 21.5, "ts": 1750000000, "unit": "C"}',
    b'{"value": true, "timestamp": "2025-06-15T15:06:40Z"}',
    b'{"value": "OFF", "time": 1750000000123}',
    b'{"temperature": 21.5, "humidity": 40, "contact": true, "state": "ON", "name": "x", "update": {"a": 1}}',
    b'[{"bn": "dev/", "bt": 1750000000, "bu": "C", "n": "t", "v": 21.5}, {"n": "h", "v": 40, "t": -5}]',
    b'[{"n": "door", "vb": true}, {"n": "label", "vs": "x"}, {"n": "blob", "vd": "AAEC"}]',
    b'[{"bn": "a:", "bv": 10, "n": "b", "v": 1, "u": "%"}, {"t": 2, "v": 3}]',
    b'{"transaction": "t1", "metric": "tank/level", "duration_s": 3600}',
    b"how warm is the greenhouse?",
]
TOKENS = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"{", b"}", b"[", b"]", b",", b":", b'"', b"NaN", b"Infinity",
          b"-", b"1e400", b"1" + b"0" * 400, b"\\u", b"\\ud800", b"\xef\xbb\xbf", b" ", b"null", b"true", b'"v"',
          b'"ts"', b'"n"', b'"bt"', b'"vb"', b"+", b"#", b"/", b"[" * 50, b"{\"a\":" * 20]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 2:
            del buf[pos:pos + rng.randint(1, 8)]
        elif op == 3:
            other = rng.choice(SEEDS)
            start = rng.randint(0, len(other))
            buf[pos:pos] = other[start:start + rng.randint(1, 30)]
        elif op == 4:
            buf = buf[:pos]
        else:
            n = rng.randint(0, 4000)
            buf[pos:pos] = str(rng.choice([n, -n, rng.random() * 10**rng.randint(0, 15), 1750000000 + n])).encode()
    return bytes(buf)


def random_phase(tf, cases: int, seed: int, failures: list) -> float:
    from edged.messages import DecodeLimits

    rng = random.Random(seed)
    limits = [DecodeLimits(), DecodeLimits(max_payload_bytes=64, max_json_depth=2, future_tolerance_s=0.0)]
    t0 = time.perf_counter()
    for i in range(cases):
        payload = mutate(rng, rng.choice(SEEDS))
        now = tf.NOW if rng.random() < 0.8 else rng.uniform(946684800.0, 4e9)
        which = i % 10
        try:
            if which < 7:
                tf.check_decode("dev/x", payload, now, rng.choice(limits))
            elif which < 9:
                tf.check_parse_request("status", payload, now)
            else:
                props = rng.choice([[], [("ts", "1750000000.000"), ("hmac", "0" * 64)], [("ts", payload[:12].decode("latin-1"))]])
                tf.check_verify("edged/n/request/status", payload, props)
        except tf.KnownBug:  # counted by the check
            pass
        except Exception as exc:  # noqa: BLE001 - every escape is a finding
            failures.append(("random", f"{type(exc).__name__}: {exc}"[:2000], traceback.format_exc(limit=4)))
    return time.perf_counter() - t0


def hypothesis_phase(tf, only: str | None, failures: list) -> list[tuple[str, int, float]]:
    results = []
    for name in sorted(dir(tf)):
        fn = getattr(tf, name)
        if not (name.startswith("test_") and hasattr(fn, "hypothesis")) or (only and only not in name):
            continue
        before = sum(tf.CASES.values())
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - hypothesis raises the shrunk failure
            notes = "\n".join(getattr(exc, "__notes__", []))
            failures.append((name, f"{type(exc).__name__}: {exc}"[:2000], notes))
        elapsed = time.perf_counter() - t0
        n = sum(tf.CASES.values()) - before
        results.append((name, n, elapsed))
        print(f"  {name:<62} {n:>8} cases {elapsed:7.1f} s {n / max(elapsed, 1e-9):>9.0f}/s", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=5000, help="hypothesis examples per property (default 5000)")
    ap.add_argument("--random", type=int, default=60000, help="direct mutation cases (default 60000)")
    ap.add_argument("--seed", type=int, default=int(time.time()), help="seed of the direct loop")
    ap.add_argument("--only", help="run only the hypothesis properties whose name contains this")
    ap.add_argument("--allow-known", action="store_true", help="known bugs alone do not fail the run")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.examples < 0 or args.random < 0:
        ap.error("--examples and --random must be >= 0")

    tf = _load(max(args.examples, 1))
    failures: list[tuple[str, str, str]] = []
    started = time.perf_counter()

    print(f"phase 1: hypothesis, {args.examples} examples per property (profile soak)")
    per_test = hypothesis_phase(tf, args.only, failures) if args.examples else []
    hyp_cases = sum(n for _, n, _ in per_test)
    hyp_time = sum(t for _, _, t in per_test)

    print(f"phase 2: direct mutation loop, {args.random} cases, seed {args.seed}")
    rnd_before = sum(tf.CASES.values())
    rnd_time = random_phase(tf, args.random, args.seed, failures) if args.random else 0.0
    rnd_cases = sum(tf.CASES.values()) - rnd_before
    total = sum(tf.CASES.values())
    elapsed = time.perf_counter() - started

    print("\n== figures")
    print(f"cases: {total} in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f}/s overall)")
    print(f"  hypothesis: {hyp_cases} cases, {hyp_cases / max(hyp_time, 1e-9):.0f}/s")
    print(f"  direct:     {rnd_cases} cases, {rnd_cases / max(rnd_time, 1e-9):.0f}/s")
    print("cases per decoder: " + ", ".join(f"{k} {v}" for k, v in tf.CASES.most_common()))
    print("outcomes (rejection reason / result):")
    for reason, n in sorted(tf.REJECTED.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {reason:<22} {n}")
    from edged.messages import REASONS

    sensor_reasons = set(REASONS) - {"metric_limit", "bad_request"}  # those two are raised outside decode_payload
    unseen = sorted(r for r in sensor_reasons if not tf.REJECTED.get(r))
    if unseen:
        print(f"  (never produced: {', '.join(unseen)})")
    if tf.KNOWN_HITS:
        print("known bugs hit (tolerated by the test suite, pinned by strict xfails):")
        for kind, n in tf.KNOWN_HITS.most_common():
            print(f"  {kind}: {n} cases — {tf.KNOWN_BUGS[kind]}\n    first reproducer: {tf.KNOWN_FIRST[kind][:600]}")
    if failures:
        print(f"FAILURES: {len(failures)}")
        for where, what, detail in failures[:20]:
            print(f"--- {where}: {what}\n{detail}")
    else:
        print("failures: none")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cases": total, "seconds": round(elapsed, 2), "hypothesis_cases": hyp_cases, "direct_cases": rnd_cases,
            "per_decoder": dict(tf.CASES), "outcomes": dict(tf.REJECTED), "known_bugs": dict(tf.KNOWN_HITS),
            "failures": [{"where": w, "what": x} for w, x, _ in failures], "seed": args.seed,
        }, indent=2))
    if failures or (tf.KNOWN_HITS and not args.allow_known):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
