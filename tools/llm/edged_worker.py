"""edged side of the benchmark, in a fresh process (load time and peak RSS are per process).

    python edged_worker.py MODEL_DIR IN.json OUT.json --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy  # noqa: F401  -- imported before the clock starts, as in llama_worker.py

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verify", action="store_true", help="include the sha256 check in the load time")
    ap.add_argument("--lookup", type=int, default=0, help="prompt-lookup draft length (0: one token per pass)")
    a = ap.parse_args()
    job = json.load(open(a.inp))
    t = time.perf_counter()
    from edged.llm.engine import Engine

    # warm=False: the job is raw token ids (its own system turn), so no chat system prompt is
    # precomputed -- llama.cpp's worker does no such work either
    eng = Engine(a.model_dir, threads=a.threads, verify=a.verify, warm=False, lookup=a.lookup)
    eng.generate([job["prompt"][0]], max_new_tokens=0)  # first run allocates: part of loading
    load_s = time.perf_counter() - t
    # "eos" in the job: stop at those ids (the answer's own length); else always decode n_new tokens
    eng.eos_ids = frozenset(job.get("eos", ()))
    out = eng.generate(job["prompt"], max_new_tokens=job["n_new"] + 1)
    # decode_s covers one decoder step per token but the last (the one after it needs none)
    steps = len(out.token_ids) - (0 if out.finish_reason == "eos" else 1)
    res = {"load_s": load_s, "prompt_tps": len(job["prompt"]) / out.prompt_s,
           "decode_tps": steps / out.decode_s, "new_tokens": len(out.token_ids),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    json.dump(res, open(a.out, "w"))


if __name__ == "__main__":
    main()
