"""Generation on onnxruntime + numpy + tokenizers.

    engine = Engine("/var/lib/edged/models/smollm2-135m", threads=2,
                    system_prompt="You answer questions about sensor readings.")
    out = engine.chat("What is the pump temperature?", max_new_tokens=64, timeout_s=5,
                      on_text=print)
    out.text, out.finish_reason     # "eos" | "stop" | "length" | "deadline" | "context"

* KV cache, by graph variant (model.json ``graph``):
  - ``fused``: one float32 buffer per layer and kind, ``[1, n_head_kv, max_length, head_dim]``,
    bound (IO binding) as both the past input and the present output; GroupQueryAttention
    writes the new positions in place -- no per-step copies, no per-step allocations.  Small
    inputs and the logits output are pre-allocated and bound once.
  - ``plain``: the decoder returns the cache with the new positions; it is fed back each step.
* Warm system prompts: each system turn is run once (the default one at start-up or on
  ``set_system_prompt``, others on first use; the last WARM_SYSTEMS used are kept) and its
  cache reused by every request with that system prompt (plain: immutable arrays, shared;
  fused: its positions stay in the buffers -- later requests write after them -- and a
  snapshot restores them if another sequence overwrote them).
* Greedy by default; ``temperature`` > 0 samples (``top_p``, ``seed`` for repeatability).
  Greedy decoding on the fused graph checks prompt-lookup drafts in one pass (``lookup``;
  see LOOKUP_TOKENS below): the same tokens, faster where the output copies its input.
* Stop sequences cut the text before them; EOS / end-of-turn tokens end generation.
* A wall-clock deadline returns what has been generated so far, flagged ``deadline``.
* ``on_text`` receives text deltas as they become final (held back while they could still
  turn into a stop sequence or are an incomplete UTF-8 character).
* One request at a time per engine (a lock); onnxruntime's threads: ``threads``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import manifest, sampling
from .chat import ChatFormat
from .tokenizer import load_tokenizer

PREFILL_CHUNK = 64  # prompt tokens per decoder call (deadline checked between chunks)
# Prompt lookup: a rewrite of a template answer copies runs of its input.  When the last
# LOOKUP_MATCH tokens occurred earlier in the context, the up to LOOKUP_TOKENS tokens that followed
# them there are a draft; one pass over [next token, *draft] gives the model's own choice after
# each, and the draft is kept up to its first disagreement -- the greedy tokens are unchanged
# (up to fp32 rounding: a pass over several positions sums in another order, ~1e-4 on a logit).
# A pass over n tokens costs ~1.8-3.7x a one-token step here (n = 2..10: onnxruntime's M > 1
# kernels dequantize the weights), so a draft pays only on runs of several copied tokens.
# Drafts are only checked while they have been paying: an average (EMA, weight 1/2) of the
# share of each draft the model kept, updated also from drafts not checked (compared with the
# tokens then generated) -- free text stops drafting after a miss or two, a copy resumes it.
# 3 of 8 kept is about break-even at the pass costs above.
LOOKUP_TOKENS = 8
LOOKUP_MATCH = 3
LOOKUP_GATE = 3 / 8


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # eos | stop | length | deadline | context
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the warm system-prompt cache
    prompt_s: float = 0.0
    decode_s: float = 0.0

    @property
    def timed_out(self) -> bool:
        return self.finish_reason == "deadline"


@dataclass
class _Cache:
    ids: tuple[int, ...]
    past: dict[str, np.ndarray] | None = field(repr=False)  # fused: a snapshot of the first len(ids) positions, or None
    logits: np.ndarray | None = field(default=None, repr=False)  # after the last id


WARM_SYSTEMS = 4  # system turns whose KV cache is kept, least recently used dropped (the daemon uses two)
DEFAULT_MAX_LENGTH = 2048  # fused graph: KV buffer positions (pages are only touched as they fill)


class Engine:
    def __init__(self, model_dir: str | Path, threads: int = 2, verify: bool = True,
                 system_prompt: str | None = None, spin: bool = True, max_length: int | None = None,
                 warm: bool = True, lookup: int = LOOKUP_TOKENS):
        """``warm=False``: the system turn's cache is computed on the first ``chat`` instead of now.

        ``lookup``: greedy decoding on the fused graph drafts up to this many tokens by prompt
        lookup and checks them in one pass (0: one token per pass)."""
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.manifest = manifest.verify(self.model_dir) if verify else manifest.read_manifest(self.model_dir)
        info = json.loads((self.model_dir / "model.json").read_text(encoding="utf-8"))
        self.config = info["config"]
        self.eos_ids = frozenset(info["eos_token_ids"])
        self.tokenizer = load_tokenizer(self.model_dir / "tokenizer.json")
        self.chat_format = ChatFormat.load(self.model_dir / "chat_template.json")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if info.get("custom_ops"):  # op libraries: files of the manifest (hashed above unless verify=False)
            from .qkernel import cpu_signature

            listed = set(self.manifest.get("files", {}))
            if any(Path(lib).name != lib or lib not in listed for lib in info["custom_ops"]):
                raise manifest.ManifestError(f"{self.model_dir}: model.json names op libraries outside its manifest")
            if info.get("cpu") != cpu_signature():
                raise manifest.ManifestError(
                    f"{self.model_dir}: its QMatMul kernel was compiled for another CPU ({info.get('cpu')}, this one is "
                    f"{cpu_signature()}): rebuild it here with `edged models pull`")
            for library in info["custom_ops"]:
                so.register_custom_ops_library(str(self.model_dir / library))
        self.session = ort.InferenceSession(str(self.model_dir / "decoder.onnx"), so,
                                            providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._lock = threading.Lock()
        n_kv, hd = self.config["n_head_kv"], self.config["head_dim"]
        self.graph = info.get("graph", "plain")
        self.lookup = lookup if self.graph == "fused" else 0
        self.lookup_stats = {"passes": 0, "drafted": 0, "accepted": 0}  # since start
        self.n_ctx = self.config["n_ctx"]
        if self.graph == "fused":
            self.n_ctx = min(self.n_ctx, max_length or DEFAULT_MAX_LENGTH)
            self._init_binding(ort, n_kv, hd)
            self._empty = _Cache((), {})
        else:
            empty = np.zeros((1, n_kv, 0, hd), np.float32)
            self._empty = _Cache((), {f"past_{k}_{i}": empty for i in range(self.config["n_layer"]) for k in ("key", "value")})
        self._warm: OrderedDict[str | None, _Cache] = OrderedDict()  # system prompt -> its turn's cache
        self._warm_system = system_prompt  # chat()'s default
        if warm:
            self.set_system_prompt(system_prompt)

    # --- prompts -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def set_system_prompt(self, system: str | None) -> None:
        """Make ``system`` chat()'s default, its turn run now and kept for later requests."""
        self._warm_system = system
        self._system_cache(system)

    def _system_cache(self, system: str | None) -> _Cache:
        """The cache after ``system``'s turn: computed on its first use and kept (WARM_SYSTEMS of
        them; fused: as a snapshot, restored when the buffers hold another sequence)."""
        with self._lock:
            cache = self._warm.get(system)
            if cache is None:
                prefix = self.chat_format.system_prefix(system)
                cache = self._extend(self._empty, self.encode(prefix), None) if prefix else self._empty
                if self.graph == "fused" and prefix:
                    cache = self._snapshot(cache)
                self._warm[system] = cache
                while len(self._warm) > WARM_SYSTEMS:
                    self._warm.popitem(last=False)
            self._warm.move_to_end(system)
            return cache

    def chat(self, user: str | list[dict], system: str | None = ..., **kw) -> Generation:  # type: ignore[assignment]
        """Answer one user message (or a message list) under ``system`` (default: the warm one)."""
        if isinstance(user, str):
            messages = [{"role": "user", "content": user}]
        else:
            messages = list(user)
            if messages and messages[0]["role"] == "system":
                system, messages = messages[0]["content"], messages[1:]
        if system is ...:
            system = self._warm_system
        body = "".join(self.chat_format.turn(m["role"], m["content"]) for m in messages) + "<|im_start|>assistant\n"
        return self.generate(self.encode(body), cache=self._system_cache(system), **kw)

    # --- fused graph: IO binding ---------------------------------------------------------
    def _init_binding(self, ort, n_kv: int, hd: int) -> None:
        io = self._io = self.session.io_binding()
        # np.zeros: calloc'd, so untouched positions cost no resident memory
        self._kv = {f"past_{k}_{i}": np.zeros((1, n_kv, self.n_ctx, hd), np.float32)
                    for i in range(self.config["n_layer"]) for k in ("key", "value")}
        self._keep = []  # OrtValues wrap numpy memory: keep both alive
        for name, arr in self._kv.items():
            ov = ort.OrtValue.ortvalue_from_numpy(arr)
            self._keep.append(ov)
            io.bind_ortvalue_input(name, ov)
            io.bind_ortvalue_output(name.replace("past", "present", 1), ov)
        self._step_ids = np.zeros((1, 1), np.int64)
        self._step_index = np.zeros((1,), np.int64)
        self._seqlens = np.zeros((1,), np.int32)
        self._total = np.zeros((), np.int32)
        self._logits = np.zeros((1, 1, self.config["n_vocab"]), np.float32)
        for name, arr in (("seqlens_k", self._seqlens), ("total_sequence_length", self._total)):
            ov = ort.OrtValue.ortvalue_from_numpy(arr)
            self._keep.append(ov)
            io.bind_ortvalue_input(name, ov)
        self._step_ov = [ort.OrtValue.ortvalue_from_numpy(a) for a in (self._step_ids, self._step_index)]
        self._logits_ov = ort.OrtValue.ortvalue_from_numpy(self._logits)
        self._bind_step()
        self._buf_ids: tuple[int, ...] = ()  # the positions the buffers hold now

    def _bind_step(self) -> None:
        self._io.bind_ortvalue_input("input_ids", self._step_ov[0])
        self._io.bind_ortvalue_input("logits_index", self._step_ov[1])
        self._io.bind_ortvalue_output("logits", self._logits_ov)
        self._step_bound = True

    def _seat(self, cache: _Cache) -> None:
        """Make the buffers hold ``cache``'s positions (normally they already do)."""
        n = len(cache.ids)
        if self._buf_ids[:n] == cache.ids:
            return
        if cache.past is None:
            raise ValueError("this cache's positions were overwritten and it has no snapshot")
        for name, arr in self._kv.items():
            arr[:, :, :n] = cache.past[name]
        self._buf_ids = cache.ids

    def _snapshot(self, cache: _Cache) -> _Cache:
        n = len(cache.ids)
        return _Cache(cache.ids, {k: v[:, :, :n].copy() for k, v in self._kv.items()}, cache.logits)

    def _run_fused(self, cache: _Cache, ids: list[int]) -> _Cache:
        self._seat(cache)
        past, n = len(cache.ids), len(ids)
        self._seqlens[0] = past + n - 1
        self._total[()] = past + n
        if n == 1:
            if not self._step_bound:
                self._bind_step()
            self._step_ids[0, 0] = ids[0]
            self._step_index[0] = 0
        else:
            self._io.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
            self._io.bind_cpu_input("logits_index", np.asarray([n - 1], np.int64))
            self._step_bound = False
        try:
            self.session.run_with_iobinding(self._io)
        except BaseException:
            self._buf_ids = cache.ids  # positions before the new ones are untouched
            raise
        self._buf_ids = cache.ids + tuple(ids)
        return _Cache(self._buf_ids, None, self._logits[0, -1].copy())

    def score(self, ids: list[int]) -> np.ndarray:
        """Logits ``[len(ids), n_vocab]`` of ``ids`` from an empty cache, in one pass (teacher-forced)."""
        if not 0 < len(ids) < self.n_ctx:
            raise ValueError(f"{len(ids)} tokens: score 1 to {self.n_ctx - 1}")
        feed_ids = np.asarray([ids], np.int64)
        index = np.arange(len(ids), dtype=np.int64)
        with self._lock:
            if self.graph != "fused":
                return self.session.run(["logits"], {"input_ids": feed_ids, "logits_index": index, **self._empty.past})[0][0]
            self._seqlens[0], self._total[()] = len(ids) - 1, len(ids)
            self._io.bind_cpu_input("input_ids", feed_ids)
            self._io.bind_cpu_input("logits_index", index)
            self._io.bind_output("logits", "cpu")
            self._buf_ids = ()
            try:
                self.session.run_with_iobinding(self._io)
                self._buf_ids = tuple(ids)
                return self._io.get_outputs()[-1].numpy()[0].copy()
            finally:
                self._bind_step()

    # --- generation ----------------------------------------------------------------------
    def _run(self, cache: _Cache, ids: list[int]) -> _Cache:
        if self.graph == "fused":
            return self._run_fused(cache, ids)
        feed = {"input_ids": np.asarray([ids], np.int64), "logits_index": np.asarray([len(ids) - 1], np.int64),
                **cache.past}
        out = self.session.run(self._outputs, feed)
        past = {name.replace("present", "past", 1): v for name, v in zip(self._outputs[1:], out[1:])}
        return _Cache(cache.ids + tuple(ids), past, out[0][0, -1])

    def _extend(self, cache: _Cache, ids: list[int], deadline: float | None) -> _Cache | None:
        for start in range(0, len(ids), PREFILL_CHUNK):
            if deadline is not None and time.monotonic() >= deadline:
                return None
            cache = self._run(cache, ids[start:start + PREFILL_CHUNK])
        return cache

    def _lookahead(self, cur: _Cache, tok: int, draft: list[int]) -> list[_Cache]:
        """One pass over ``[tok, *draft]`` after ``cur``: the caches along the greedy path, as far
        as the draft agrees with the model's own choices, plus the one after its first miss."""
        ids = [tok, *draft]
        self._seat(cur)
        past = len(cur.ids)
        self._seqlens[0], self._total[()] = past + len(ids) - 1, past + len(ids)
        self._io.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        self._io.bind_cpu_input("logits_index", np.arange(len(ids), dtype=np.int64))
        self._io.bind_output("logits", "cpu")
        try:
            self.session.run_with_iobinding(self._io)
            out = self._io.get_outputs()[-1]  # held while its rows are copied below
            logits = out.numpy()[0]
        except BaseException:
            self._buf_ids = cur.ids
            raise
        finally:
            self._bind_step()
        self._buf_ids = cur.ids + tuple(ids)  # positions past the kept ones are overwritten later
        chain = [_Cache(cur.ids + (tok,), None, logits[0].copy())]
        for i, d in enumerate(draft):
            if int(np.argmax(logits[i])) != d:
                break
            chain.append(_Cache(chain[-1].ids + (d,), None, logits[i + 1].copy()))
        self.lookup_stats["passes"] += 1
        self.lookup_stats["drafted"] += len(draft)
        self.lookup_stats["accepted"] += len(chain) - 1
        return chain

    def generate(self, prompt_ids: list[int], *, cache: _Cache | None = None, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop: tuple[str, ...] | list[str] = (), timeout_s: float | None = None,
                 deadline: float | None = None, on_text: Callable[[str], None] | None = None) -> Generation:
        """Continue ``cache`` (default: empty) with ``prompt_ids`` and generate.

        ``deadline`` is a ``time.monotonic()`` instant; ``timeout_s`` is relative to now.
        """
        t0 = time.monotonic()
        if timeout_s is not None:
            deadline = min(deadline if deadline is not None else float("inf"), t0 + timeout_s)
        rng = np.random.default_rng(seed) if temperature > 0 else None
        stops = tuple(s for s in stop if s)
        base = cache or self._empty
        n_ctx = self.n_ctx
        with self._lock:
            if not prompt_ids and base.logits is None:
                raise ValueError("empty prompt")
            if len(base.ids) + len(prompt_ids) >= n_ctx:
                raise ValueError(f"prompt of {len(base.ids) + len(prompt_ids)} tokens exceeds the context ({n_ctx})")
            cur = self._extend(base, list(prompt_ids), deadline) if prompt_ids else base
            t1 = time.monotonic()
            result = Generation("", [], "deadline", len(prompt_ids) + len(base.ids), len(base.ids), t1 - t0)
            if cur is None:
                return result
            stream = _Stream(self.tokenizer, stops, on_text)
            drafter = _Drafter(cur.ids) if self.lookup > 0 and rng is None else None
            chain: list[_Cache] = []  # caches a lookahead pass computed, next first
            reason = "length"
            while len(result.token_ids) < max_new_tokens:
                if deadline is not None and time.monotonic() >= deadline:
                    reason = "deadline"
                    break
                tok = sampling.choose(cur.logits, temperature, top_p, rng)
                if tok in self.eos_ids:
                    reason = "eos"
                    break
                result.token_ids.append(tok)
                if drafter is not None:
                    drafter.add(tok)
                if stream.push(result.token_ids):
                    reason = "stop"
                    break
                if len(cur.ids) >= n_ctx:
                    reason = "context"
                    break
                if len(result.token_ids) < max_new_tokens:
                    nxt = cur.ids + (tok,)
                    if chain and chain[0].ids == nxt:
                        cur = chain.pop(0)
                        continue
                    chain = []
                    room = min(self.lookup, max_new_tokens - len(result.token_ids) - 1, n_ctx - len(nxt) - 1)
                    draft = drafter.propose(room) if drafter is not None else []
                    if draft:
                        chain = self._lookahead(cur, tok, draft)
                        drafter.checked(len(chain) - 1, len(draft))
                        cur = chain.pop(0)
                    else:
                        cur = self._run(cur, [tok])
            result.text = stream.finish(result.token_ids, reason == "stop")
            result.finish_reason = reason
            result.decode_s = time.monotonic() - t1
            return result


class _Drafter:
    """Prompt-lookup drafts: where each run of ``n`` tokens last occurred in the context, and
    whether drafting has been paying lately (``kept``: the recent share of drafts kept; see LOOKUP_GATE)."""

    def __init__(self, ids: tuple[int, ...], n: int = LOOKUP_MATCH, gate: float = LOOKUP_GATE):
        self.n, self.gate, self.kept = n, gate, gate
        self.where: dict[tuple[int, ...], int] = {}  # n-gram -> index just after its latest occurrence
        self.ids: list[int] = []
        self.shadow: list[int] = []  # a draft not checked, compared with the tokens as they come
        self.shadow_at = 0
        self._extend(list(ids))

    def _extend(self, ids: list[int]) -> None:
        n, start = self.n, len(self.ids)
        self.ids.extend(ids)
        # index every n-gram that ends before the newest token, so it never matches itself
        for end in range(max(start, n), len(self.ids)):
            self.where[tuple(self.ids[end - n:end])] = end

    def _score(self, kept: int, drafted: int) -> None:
        self.kept = 0.5 * self.kept + 0.5 * kept / drafted

    def add(self, tok: int) -> None:
        """``tok`` was generated (drafted or not)."""
        self._extend([tok])
        if self.shadow:
            i = len(self.ids) - 1 - self.shadow_at
            if i >= len(self.shadow) or self.shadow[i] != tok:
                self._score(i, len(self.shadow))
                self.shadow = []

    def propose(self, k: int) -> list[int]:
        """A draft of up to ``k`` tokens to check now, or [] (none found, or drafting not paying)."""
        at = self.where.get(tuple(self.ids[-self.n:])) if k > 0 else None
        if at is None:
            return []
        draft = self.ids[at:at + k]
        if self.kept >= self.gate:
            return draft
        if not self.shadow:
            self.shadow, self.shadow_at = draft, len(self.ids)
        return []

    def checked(self, kept: int, drafted: int) -> None:
        """A proposed draft of ``drafted`` tokens was checked; the model kept its first ``kept``."""
        self._score(kept, drafted)


class _Stream:
    """Incremental detokenization with stop sequences and held-back partial text."""

    def __init__(self, tokenizer, stops: tuple[str, ...], on_text):
        self.tok, self.stops, self.on_text = tokenizer, stops, on_text
        self.sent = 0  # characters already handed to on_text
        self.text = ""

    def push(self, ids: list[int]) -> bool:
        """Update with all generated ids; True when a stop sequence has appeared."""
        self.text = self.tok.decode(ids, skip_special_tokens=True)
        for s in self.stops:
            if s in self.text[max(0, self.sent - len(s)):]:
                self.text = self.text[: self.text.index(s, max(0, self.sent - len(s)))]
                return True
        safe = len(self.text)
        if self.text.endswith("\ufffd"):  # an incomplete UTF-8 sequence so far
            safe = len(self.text.rstrip("\ufffd"))
        for s in self.stops:  # hold back a tail that could still become a stop sequence
            for k in range(min(len(s) - 1, safe), 0, -1):
                if self.text[safe - k: safe] == s[:k]:
                    safe -= k
                    break
        self._emit(safe)
        return False

    def _emit(self, upto: int) -> None:
        if upto > self.sent:
            if self.on_text is not None:
                self.on_text(self.text[self.sent: upto])
            self.sent = upto

    def finish(self, ids: list[int], stopped: bool) -> str:
        if not stopped:
            self.text = self.tok.decode(ids, skip_special_tokens=True)
        self._emit(len(self.text))
        return self.text
