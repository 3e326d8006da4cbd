"""llama.cpp side of the comparison and the benchmark; runs in the llama-cpp-python venv.

    python llama_worker.py forced GGUF IN.json OUT.json --threads 2
        IN: {"prompts": [[ids...]...], "n_new": 64}
        OUT: {"sequences": [[ids...]...], "top1": [[...]...]}  greedy continuation by llama.cpp,
             then llama.cpp's top-1 at every position of prompt + continuation (teacher-forced)
    python llama_worker.py bench GGUF IN.json OUT.json --threads 2
        IN: {"prompt": [ids...], "n_new": 64}   OUT: load_s, prompt_tps, decode_tps, peak_rss_mb
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def _no_extra_buffer_types() -> None:
    """Load weights without llama.cpp's "extra buffer types" (AMX / repacking).

    A build with GGML_NATIVE on this machine kind (AMX-capable Xeon in a VM) crashes in
    ggml_backend_amx_mul_mat (SIGSEGV); plain CPU buffers work.  Q4_1 has no repacked
    layout anyway, so this costs llama.cpp nothing on this model.
    """
    import llama_cpp.llama_cpp as lc

    if getattr(lc, "_edged_patched", False):
        return
    orig = lc.llama_model_default_params

    def params():
        p = orig()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    lc.llama_model_default_params = params
    lc._edged_patched = True


def _load(gguf: str, threads: int, logits_all: bool, n_ctx: int = 1024, lookup: int = 0):
    _no_extra_buffer_types()
    from llama_cpp import Llama

    draft = None
    if lookup:  # llama-cpp-python's own prompt-lookup drafts (n-grams of 3 down to 1)
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=lookup)
    return Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512,
                 logits_all=logits_all, verbose=False, use_mmap=True, draft_model=draft)


def forced(args, job):
    llm = _load(args.gguf, args.threads, True)
    seqs, top1 = [], []
    for prompt in job["prompts"]:
        llm.reset()
        llm.eval(prompt)
        seq = list(prompt)
        for _ in range(job["n_new"]):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            seq.append(tok)
            llm.eval([tok])
        llm.reset()
        llm.eval(seq)  # teacher-forced: the whole sequence in one batch
        top1.append([int(x) for x in np.argmax(llm.scores[: len(seq)], axis=-1)])
        seqs.append(seq)
    return {"sequences": seqs, "top1": top1}


def bench(args, job):
    t = time.perf_counter()
    llm = _load(args.gguf, args.threads, False, lookup=args.lookup)
    llm.eval([job["prompt"][0]])  # first call allocates compute buffers: part of loading
    load_s = time.perf_counter() - t
    llm.reset()
    t = time.perf_counter()
    llm.eval(job["prompt"])
    prompt_s = time.perf_counter() - t
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    eos = set(job.get("eos", ()))  # stop there (the answer's own length); else n_new tokens
    new = []
    t = time.perf_counter()
    if args.lookup:  # generate() drafts and verifies; its first token comes from the prompt's logits
        for tok in llm.generate(job["prompt"], temp=0.0, top_k=1, repeat_penalty=1.0):
            if tok in eos:
                break
            new.append(tok)
            if len(new) > job["n_new"]:
                break
    else:
        while tok not in eos:
            new.append(tok)
            if len(new) > job["n_new"]:
                break
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode_s = time.perf_counter() - t
    # as edged_worker.py: one decoder step per token but the last, unless it ended at an eos
    steps = len(new) - (0 if len(new) <= job["n_new"] else 1)
    return {"load_s": load_s, "prompt_tps": len(job["prompt"]) / prompt_s, "decode_tps": steps / decode_s,
            "new_tokens": len(new),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["forced", "bench"])
    ap.add_argument("gguf")
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lookup", type=int, default=0, help="bench: prompt-lookup draft length (0: plain decode)")
    a = ap.parse_args()
    job = json.load(open(a.inp))
    res = {"forced": forced, "bench": bench}[a.task](a, job)
    json.dump(res, open(a.out, "w"))
