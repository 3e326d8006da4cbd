"""Benchmark: edged's engine vs llama.cpp, same GGUF weights, same threads, interleaved, medians.

    .venv/bin/python tools/llm/bench_llm.py --gguf ~/.cache/edged/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
        --model-dir /tmp/edged-models/smollm2-135m [--model-dir OTHER ...] --threads 2 --trials 5
    # or build graph variants from the GGUF (into --build-dir) and compare them:
    .venv/bin/python tools/llm/bench_llm.py --gguf ... --graph fused --graph plain --threads 1 --trials 5

Each trial runs every engine once, in a fresh process, in turn (A B A B ...), so drifting load
on a shared machine hits all of them alike.  Reports load time, prompt tok/s, decode tok/s
and peak RSS, median over trials (min-max in brackets), and each edged engine's ratio to
llama.cpp per trial (the two runs of a trial are neighbours in time), median [min-max].  llama.cpp comes from
llama-cpp-python in its own venv (tools/llm/llama_env.sh builds it when missing).

``--job phrasing --lookup 8`` measures the daemon's own kind of work (rewriting a template
answer) with prompt-lookup drafts in both engines; the default (``--job explain``, no lookup)
is the like-for-like one-token-per-step decode figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

PROMPT = ("<|im_start|>system\nYou are a concise assistant for an industrial monitoring system.<|im_end|>\n"
          "<|im_start|>user\nPump P-101 reports a bearing temperature of 91.0 °C against a baseline of 70.0 °C, "
          "vibration of 4.2 mm/s (z-score 3.9) and motor current of 12.5 A over the last 10 minutes. The ambient "
          "temperature is 24 °C. Explain in two sentences what an operator should check first, and why.<|im_end|>\n"
          "<|im_start|>assistant\n")


# --job phrasing: what the daemon asks of the model -- rewrite a template answer, keeping its
# numbers and names (edged/phrasing.py's system prompt), so much of the output copies the input
PHRASING_ANSWER = ("Yes: 2 anomalies in the greenhouse in the last hour: greenhouse/humidity rose to 91% at 14:02 "
                   "(typical 55-70%, ended 14:20); greenhouse/soil_moisture fell to 12% at 14:30 (typical 30-45%, "
                   "ongoing, 25 minutes so far). The other 4 greenhouse metrics stayed within their usual range.")


def job_prompt(job: str) -> str:
    if job == "explain":
        return PROMPT
    from edged.phrasing import ANSWER_SYSTEM

    return (f"<|im_start|>system\n{ANSWER_SYSTEM}<|im_end|>\n<|im_start|>user\n{PHRASING_ANSWER}<|im_end|>\n"
            "<|im_start|>assistant\n")


def llama_python() -> str:
    venv = subprocess.run([str(HERE / "llama_env.sh")], check=True, capture_output=True, text=True).stdout.strip()
    return str(Path(venv) / "bin" / "python")


def run(cmd: list[str], out: Path) -> dict:
    subprocess.run(["nice", "-n", "0", *cmd], check=True)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--model-dir", action="append", default=[])
    ap.add_argument("--graph", action="append", default=[], choices=["fused", "plain"],
                    help="build this graph variant from --gguf (into --build-dir/<variant>) and bench it")
    ap.add_argument("--build-dir", default="/tmp/edged-llm-variants")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--n-new", type=int, help="new tokens (default 64; phrasing: up to 160, ending at the model's end of turn)")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--job", choices=["explain", "phrasing"], default="explain",
                    help="explain: a free-form answer (the default); phrasing: rewrite a template answer, as the daemon does")
    ap.add_argument("--lookup", type=int, default=0,
                    help="prompt-lookup draft length for every engine (llama.cpp: its LlamaPromptLookupDecoding); "
                         "0: one token per step (the like-for-like decode figure)")
    a = ap.parse_args()
    if a.n_new is None:
        a.n_new = 160 if a.job == "phrasing" else 64

    from edged.llm.tokenizer import load_tokenizer

    for variant in a.graph:
        d = Path(a.build_dir) / variant
        # in a child process (a no-op when current): a fork of a parent that built a model would
        # start with the parent's peak RSS (Linux keeps ru_maxrss across fork/exec)
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from edged.llm.build import "
                        "precision_options, build; build(sys.argv[2], sys.argv[3], precision_options(graph=sys.argv[4]))",
                        str(REPO), a.gguf, str(d), variant], check=True)
        a.model_dir.append(str(d))
    if not a.model_dir:
        ap.error("give --model-dir and/or --graph")

    prompt = load_tokenizer(Path(a.model_dir[0]) / "tokenizer.json").encode(job_prompt(a.job), add_special_tokens=False).ids
    llama_py = llama_python()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        spec = {"prompt": prompt, "n_new": a.n_new}
        if a.job == "phrasing":  # the answer ends where the model ends it, in both engines
            spec["eos"] = json.loads((Path(a.model_dir[0]) / "model.json").read_text())["eos_token_ids"]
        job.write_text(json.dumps(spec))
        out = Path(tmp) / "out.json"
        engines = [("llama.cpp", [llama_py, str(HERE / "llama_worker.py"), "bench", a.gguf, str(job), str(out)])]
        for d in a.model_dir:
            graph = json.loads((Path(d) / "model.json").read_text()).get("graph", "plain")
            engines.append((f"edged:{Path(d).name} ({graph})", [sys.executable, str(HERE / "edged_worker.py"), d, str(job), str(out)]))
        for trial in range(a.trials):
            for name, cmd in (engines if trial % 2 == 0 else engines[::-1]):
                r = run(cmd + ["--threads", str(a.threads), "--lookup", str(a.lookup)], out)
                results.setdefault(name, []).append(r)
                print(f"trial {trial} {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)
    print(f"\njob {a.job}, lookup {a.lookup}: prompt {len(prompt)} tokens, {a.n_new} new tokens, {a.threads} threads, "
          f"{a.trials} trials (median [min-max])")
    keys = ["load_s", "prompt_tps", "decode_tps", "peak_rss_mb"]
    print("| engine | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, rs in results.items():
        cells = []
        for k in keys:
            v = [r[k] for r in rs]
            cells.append(f"{statistics.median(v):.3g} [{min(v):.3g}-{max(v):.3g}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    base = results["llama.cpp"]
    print("\nratio edged / llama.cpp, per trial, median [min-max] (load and RSS: lower is better)")
    print("| engine | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, rs in results.items():
        if name == "llama.cpp":
            continue
        cells = []
        for k in keys:
            v = [r[k] / b[k] for r, b in zip(rs, base)]
            cells.append(f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
