"""Small GGUF files written with gguf's own writer: random LLaMA weights, every tensor type.

``tiny_gguf(path, types=..., tied=...)`` writes a 2-layer model small enough to convert
and run in well under a second; ``types`` maps a role to a ggml type name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("onnx")
pytest.importorskip("tokenizers")

REAL_GGUF = Path(os.environ.get("EDGED_SMOLLM2_GGUF",
                                Path.home() / ".cache" / "edged" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
DATA = Path(__file__).parent / "data"

TINY = dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96)
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a test model.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def byte_vocab() -> tuple[list[str], list[int], list[str]]:
    """3 control tokens, the 256 byte-level symbols, and a few merges (GPT-2 style)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    symbols = [chr(c) for _, c in sorted(zip(bs, cs))]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "Ġ s", "o n"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + symbols + [m.replace(" ", "") for m in merges]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    return tokens, types, merges


def _tensor(w: gguf.GGUFWriter, name: str, arr: np.ndarray, type_name: str) -> None:
    t = gguf.GGMLQuantizationType[type_name]
    if type_name == "F32":
        w.add_tensor(name, arr.astype(np.float32))
    elif type_name == "F16":
        w.add_tensor(name, arr.astype(np.float16))
    else:
        w.add_tensor(name, gguf.quants.quantize(arr.astype(np.float32), t), raw_dtype=t)


def write_tiny_gguf(path: Path, types: dict | None = None, tied: bool = True, seed: int = 0,
                    arch: str = "llama") -> Path:
    """``types``: role -> ggml type; roles: embd, output, attn_q, attn_k, attn_v, attn_output, ffn_gate,
    ffn_up, ffn_down (default Q4_1 layers, Q8_0 embedding, like SmolLM2)."""
    t = {"embd": "Q8_0", "output": "Q8_0", **{r: "Q4_1" for r in
         ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}, **(types or {})}
    rng = np.random.default_rng(seed)
    tokens, token_types, merges = byte_vocab()
    d, nh, nkv, ff, nl = TINY["n_embd"], TINY["n_head"], TINY["n_head_kv"], TINY["n_ff"], TINY["n_layer"]
    hd = d // nh
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(nl)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(len(tokens))
    w.add_file_type(3)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    def mat(n, k, scale=0.25):
        return rng.standard_normal((n, k)).astype(np.float32) * scale

    _tensor(w, "token_embd.weight", mat(len(tokens), d, 1.0), t["embd"])
    for i in range(nl):
        p = f"blk.{i}"
        _tensor(w, f"{p}.attn_norm.weight", 1 + 0.1 * rng.standard_normal(d).astype(np.float32), "F32")
        _tensor(w, f"{p}.ffn_norm.weight", 1 + 0.1 * rng.standard_normal(d).astype(np.float32), "F32")
        _tensor(w, f"{p}.attn_q.weight", mat(nh * hd, d), t["attn_q"])
        _tensor(w, f"{p}.attn_k.weight", mat(nkv * hd, d), t["attn_k"])
        _tensor(w, f"{p}.attn_v.weight", mat(nkv * hd, d), t["attn_v"])
        _tensor(w, f"{p}.attn_output.weight", mat(d, nh * hd), t["attn_output"])
        _tensor(w, f"{p}.ffn_gate.weight", mat(ff, d), t["ffn_gate"])
        _tensor(w, f"{p}.ffn_up.weight", mat(ff, d), t["ffn_up"])
        _tensor(w, f"{p}.ffn_down.weight", mat(d, ff), t["ffn_down"])
    _tensor(w, "output_norm.weight", 1 + 0.1 * rng.standard_normal(d).astype(np.float32), "F32")
    if not tied:
        _tensor(w, "output.weight", mat(len(tokens), d, 0.5), t["output"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path):
    def make(name: str = "tiny.gguf", **kw) -> Path:
        return write_tiny_gguf(tmp_path / name, **kw)
    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A built model directory from the default tiny GGUF (shared, read-only)."""
    from edged.llm.build import build

    root = tmp_path_factory.mktemp("tiny-model")
    src = write_tiny_gguf(root / "tiny.gguf")
    build(src, root / "tiny")
    return root / "tiny"


@pytest.fixture(scope="session")
def tiny_plain_model_dir(tmp_path_factory):
    """The same tiny model built with the plain per-op graph."""
    from edged.llm.build import BuildOptions, build

    root = tmp_path_factory.mktemp("tiny-plain-model")
    build(write_tiny_gguf(root / "tiny.gguf"), root / "tiny", BuildOptions(graph="plain"))
    return root / "tiny"


@pytest.fixture(scope="session")
def real_gguf():
    if not REAL_GGUF.is_file():
        pytest.skip(f"{REAL_GGUF} absent (edged models pull smollm2-135m, or set EDGED_SMOLLM2_GGUF)")
    return REAL_GGUF


def assert_top1_exact(got: np.ndarray, want: np.ndarray, top_tol: float, rest_tol: float) -> None:
    """``got`` [S, V] against the fp32 reference ``want``: the same top-1 at every position, its
    logit within ``top_tol`` x max|want|, every other logit within ``rest_tol`` x max|want|.
    The fused graph's default head ("rescore") is exact at the top-1 and int8-accurate elsewhere."""
    scale = np.abs(want).max()
    top = want.argmax(-1)
    rows = np.arange(len(want))
    assert (got.argmax(-1) == top).all()
    np.testing.assert_allclose(got[rows, top], want[rows, top], rtol=0, atol=top_tol * scale)
    np.testing.assert_allclose(got, want, rtol=0, atol=rest_tol * scale)
