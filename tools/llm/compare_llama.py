"""Teacher-forced top-1 agreement with llama.cpp on the same GGUF.

    .venv/bin/python tools/llm/compare_llama.py --gguf ~/.cache/edged/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
        --model-dir /tmp/edged-models/smollm2-135m [--model-dir OTHER ...] [--n-new 64]

For each of the prompts below (chat-formatted), llama.cpp continues greedily for ``n_new``
tokens; that fixed token sequence is then scored teacher-forced by every model, and at each
of the ``n_new`` continuation positions we ask: is the model's top-1 the same as llama.cpp's?
(Free-running text diverges after the first differing token; teacher forcing does not.)
Models: each edged build given, and the fp32 dequantized model (:mod:`edged.llm.reference`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

PROMPTS = [
    "What is the capital of France?",
    "Pump P-101 reports a bearing temperature of 91.0 °C against a baseline of 70.0 °C. Summarize the status.",
    "Explain in two sentences why vibration monitoring helps predict motor failures.",
    "Write a short haiku about a factory at night.",
    "List three common causes of high motor current.",
    "Translate to French: The compressor is running normally.",
    "What does a z-score of 3.9 mean for a sensor reading?",
    "Give me a Python function that returns the mean of a list.",
    "How do I reset a tripped circuit breaker safely?",
    "The humidity in the server room is 78 %. Is that a problem?",
    "Describe the water cycle for a ten-year-old.",
    "What should an operator check first when a conveyor belt stops?",
]


def fwd_edged(model_dir: str, seq: list[int], threads: int) -> np.ndarray:
    from edged.llm.engine import Engine

    eng = fwd_edged.cache.get(model_dir)
    if eng is None:
        eng = fwd_edged.cache[model_dir] = Engine(model_dir, threads=threads, verify=False)
    return eng.score(seq).argmax(-1)  # teacher-forced, one pass, either graph variant


fwd_edged.cache = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--model-dir", action="append", default=[])
    ap.add_argument("--n-new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="results do not depend on it; 1 is robust on a busy machine")
    ap.add_argument("--no-reference", action="store_true", help="skip the fp32 numpy model")
    ap.add_argument("--json", help="write per-prompt results here")
    a = ap.parse_args()

    from edged.llm.chat import from_template
    from edged.llm.gguf_model import GGUFModel
    from edged.llm.tokenizer import build_tokenizer

    gm = GGUFModel(a.gguf)
    vocab = gm.vocab()
    tok, fmt = build_tokenizer(vocab), from_template(vocab.chat_template)
    prompts = [tok.encode(fmt.render([{"role": "user", "content": p}]), add_special_tokens=False).ids for p in PROMPTS]

    sys.path.insert(0, str(HERE))
    from bench_llm import llama_python

    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        inp.write_text(json.dumps({"prompts": prompts, "n_new": a.n_new}))
        subprocess.run([llama_python(), str(HERE / "llama_worker.py"), "forced", a.gguf, str(inp), str(out),
                        "--threads", str(a.threads)], check=True)
        ll = json.loads(out.read_text())

    models: dict[str, callable] = {}
    for d in a.model_dir:
        models[f"edged:{Path(d).name}"] = lambda seq, d=d: fwd_edged(d, seq, a.threads)
    if not a.no_reference:
        from edged.llm.reference import ReferenceLlama

        ref = ReferenceLlama(gm)
        models["fp32 dequantized (numpy)"] = lambda seq: ref.logits(seq).argmax(-1)

    rows: dict[str, list[float]] = {m: [] for m in models}
    llama_self = []
    for i, (prompt, seq, top1) in enumerate(zip(prompts, ll["sequences"], ll["top1"])):
        n0 = len(prompt)
        span = slice(n0 - 1, n0 - 1 + a.n_new)  # positions predicting the continuation tokens
        want = np.asarray(top1)[span]
        llama_self.append(float(np.mean(want == np.asarray(seq[n0:]))))
        for name, f in models.items():
            rows[name].append(float(np.mean(np.asarray(f(seq))[span] == want)))
        print(f"prompt {i:2d}: " + "  ".join(f"{n} {rows[n][-1]:.3f}" for n in models), flush=True)
    print(f"\n{len(prompts)} prompts x {a.n_new} positions, top-1 agreement with llama.cpp (teacher-forced):")
    print(f"| model | agreement | min prompt |\n|---|---|---|")
    for name, v in rows.items():
        print(f"| {name} | {100 * np.mean(v):.2f} % | {100 * min(v):.1f} % |")
    print(f"(llama.cpp batch vs its own incremental greedy: {100 * np.mean(llama_self):.2f} %)")
    if a.json:
        Path(a.json).write_text(json.dumps({"llama": ll, "agreement": rows}, indent=1))


if __name__ == "__main__":
    main()
