"""GGUF -> ONNX conversion: exact block reconstruction, graph == fp32 reference, build/verify."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from gguf import GGUFReader, quants

from edged.llm import graph, manifest, quant
from edged.llm.build import BuildOptions, build
from edged.llm.gguf_model import GGUFError, GGUFModel
from edged.llm.reference import ReferenceLlama

TYPES = ["Q4_0", "Q4_1", "Q8_0", "F16", "F32"]
LAYER_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.mark.parametrize("type_name", TYPES)
def test_exact_reconstruction_every_tensor(tiny_gguf, type_name):
    path = tiny_gguf(types={"embd": type_name, "output": type_name, **{r: type_name for r in LAYER_ROLES}}, tied=False)
    model = GGUFModel(path)
    n = 0
    for t in GGUFReader(str(path)).tensors:
        if t.tensor_type.name != type_name:
            continue
        ours = model.dense(t.name)
        theirs = quants.dequantize(t.data, t.tensor_type).reshape(ours.shape)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, theirs), t.name  # bit for bit, not approximately
        n += 1
    assert n >= 2 + 7 * 2


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
def test_block_form_is_the_ggml_formula(type_name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 96)).astype(np.float32) * rng.uniform(0.01, 10)
    x[0, :32] = 0.0  # d == 0 block
    x[1, :32] = np.abs(x[1, :32]) + 3  # all-positive block (Q4_1: m > 0, zp clips to 0)
    x[2, :32] = -np.abs(x[2, :32]) - 3  # all-negative block
    t = quants.GGMLQuantizationType[type_name]
    raw = quants.quantize(x, t)
    bq = quant.decode_blocks(raw, int(t), 96)
    assert np.array_equal(bq.dequantize(), quants.dequantize(raw, t))
    assert bq.q.max() < (16 if bq.bits == 4 else 256)
    if type_name == "Q4_1":  # the remainder is small unless the zero point had to clip
        unclipped = (bq.zp > 0) & (bq.zp < 15)
        assert np.all(np.abs(bq.corr[unclipped]) <= bq.scale[unclipped] / 2 + 1e-12)


def _run_single(w: quant.BlockQuant, x: np.ndarray, split8: bool) -> np.ndarray:
    from onnx import TensorProto, helper

    b = graph._Builder(0)
    y = b.linear("x", w, "w", {}, split8=split8)
    b.op("Identity", [y], outputs=["y"])
    g = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, w.shape[1]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.OPSET), helper.make_opsetid(graph.MS, 1)])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("type_name,split8", [("Q4_0", False), ("Q4_1", False), ("Q8_0", False), ("Q8_0", True)])
def test_matmulnbits_layout(type_name, split8):
    rng = np.random.default_rng(2)
    t = quants.GGMLQuantizationType[type_name]
    raw = quants.quantize(rng.standard_normal((40, 160)).astype(np.float32), t)
    bq = quant.decode_blocks(raw, int(t), 160)  # nb = 5: odd, exercises zero-point padding
    x = rng.standard_normal((1, 3, 160)).astype(np.float32)
    want = x.astype(np.float64) @ quants.dequantize(raw, t).T.astype(np.float64)
    got = _run_single(bq, x, split8)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(want).max())


def test_unsupported_type_is_refused(tiny_gguf):
    path = tiny_gguf(types={"attn_q": "Q5_0"})
    with pytest.raises(GGUFError, match="Q5_0"):
        GGUFModel(path)


def test_unsupported_architecture_is_refused(tiny_gguf):
    with pytest.raises(GGUFError, match="architecture"):
        GGUFModel(tiny_gguf(arch="gpt2"))


def _empty_past(cfg, n=1):
    return {f"past_{k}_{i}": np.zeros((n, cfg.n_head_kv, 0, cfg.head_dim), np.float32)
            for i in range(cfg.n_layer) for k in ("key", "value")}


CONFIGS = [
    ({}, True, "split4"),  # SmolLM2's mix: Q4_1 layers, tied Q8_0 embedding
    ({}, True, "int8"),
    ({}, True, "ops"),  # plain-op attention instead of GroupQueryAttention
    ({"embd": "Q4_0", "output": "Q4_1", **{r: "Q4_0" for r in LAYER_ROLES}}, False, "split4"),
    ({"embd": "Q4_1", "attn_q": "Q8_0", "attn_k": "F16", "attn_v": "F32", "ffn_gate": "Q8_0", "ffn_up": "Q4_1"},
     True, "split4"),
    ({"embd": "F16", "output": "F32", **{r: "F16" for r in LAYER_ROLES}}, False, "split4"),
]


@pytest.mark.parametrize("types,tied,head", CONFIGS)
def test_decoder_matches_fp32_reference_teacher_forced(tiny_gguf, types, tied, head):
    model = GGUFModel(tiny_gguf(types=types, tied=tied))
    cfg = model.config
    kw = {"attention": "ops"} if head == "ops" else {"head": head}
    sess = ort.InferenceSession(graph.build_decoder(model, **kw).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(3).integers(0, cfg.n_vocab, 24)
    want = ReferenceLlama(model).logits(ids)
    got = sess.run(["logits"], {"input_ids": ids[None], "logits_index": np.arange(len(ids)), **_empty_past(cfg)})[0][0]
    tol = 5e-2 if head == "int8" else 1e-3  # int8: the head's activations are quantized
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
    if head != "int8":
        assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("attention", ["gqa", "ops"])
def test_kv_cache_steps_equal_one_pass(tiny_gguf, attention):
    model = GGUFModel(tiny_gguf())
    cfg = model.config
    sess = ort.InferenceSession(graph.build_decoder(model, attention=attention).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(4).integers(0, cfg.n_vocab, 12)
    full = sess.run(["logits"], {"input_ids": ids[None], "logits_index": np.arange(12), **_empty_past(cfg)})[0][0]
    names = [o.name for o in sess.get_outputs()]
    past, rows = _empty_past(cfg), []
    for chunk in (ids[:5], ids[5:6], ids[6:11], ids[11:]):
        out = sess.run(None, {"input_ids": chunk[None], "logits_index": np.arange(len(chunk)), **past})
        rows.append(out[0][0])
        past = {n.replace("present", "past"): v for n, v in zip(names[1:], out[1:])}
    np.testing.assert_allclose(np.concatenate(rows), full, atol=1e-4 * np.abs(full).max())


def _fused_session(model, **kw):
    return ort.InferenceSession(graph.build_fused_decoder(model, **kw).SerializeToString(),
                                providers=["CPUExecutionProvider"])


def _fused_run(sess, cfg, chunks, max_length=64):
    """Run ``chunks`` in turn through the fused graph, the KV buffers bound in place; logits rows."""
    bufs = {f"past_{k}_{i}": np.zeros((1, cfg.n_head_kv, max_length, cfg.head_dim), np.float32)
            for i in range(cfg.n_layer) for k in ("key", "value")}
    io, keep = sess.io_binding(), []
    for name, arr in bufs.items():
        keep.append(ort.OrtValue.ortvalue_from_numpy(arr))
        io.bind_ortvalue_input(name, keep[-1])
        io.bind_ortvalue_output(name.replace("past", "present"), keep[-1])
    rows, pos = [], 0
    for chunk in chunks:
        n = len(chunk)
        io.bind_cpu_input("input_ids", np.asarray(chunk, np.int64)[None])
        io.bind_cpu_input("logits_index", np.arange(n, dtype=np.int64))
        io.bind_cpu_input("seqlens_k", np.array([pos + n - 1], np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(pos + n, np.int32))
        io.bind_output("logits", "cpu")
        sess.run_with_iobinding(io)
        rows.append(io.get_outputs()[-1].numpy()[0])
        pos += n
    return np.concatenate(rows), bufs


@pytest.mark.parametrize("types,tied,head", [c for c in CONFIGS if c[2] != "ops"])
def test_fused_decoder_matches_fp32_reference_teacher_forced(tiny_gguf, types, tied, head):
    model = GGUFModel(tiny_gguf(types=types, tied=tied))
    ids = np.random.default_rng(3).integers(0, model.config.n_vocab, 24)
    want = ReferenceLlama(model).logits(ids)
    got, _ = _fused_run(_fused_session(model, head=head), model.config, [ids])
    tol = 5e-2 if head == "int8" else 1e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
    if head != "int8":
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_fused_kv_buffers_filled_in_place_steps_equal_one_pass(tiny_gguf):
    model = GGUFModel(tiny_gguf())
    cfg = model.config
    sess = _fused_session(model)
    ids = np.random.default_rng(4).integers(0, cfg.n_vocab, 20)
    full, _ = _fused_run(sess, cfg, [ids])
    steps, bufs = _fused_run(sess, cfg, [ids[:5], ids[5:6], ids[6:13], ids[13:14], ids[14:15], ids[15:]])
    np.testing.assert_allclose(steps, full, atol=1e-4 * np.abs(full).max())
    np.testing.assert_allclose(steps, ReferenceLlama(model).logits(ids), atol=1e-3 * np.abs(full).max())
    k = bufs["past_key_0"]
    assert k[:, :, :20].any(axis=-1).all() and not k[:, :, 20:].any()  # written in place, nothing past 20


def test_build_is_deterministic_idempotent_and_verified(tiny_gguf, tmp_path):
    src = tiny_gguf()
    doc_a = build(src, tmp_path / "a" / "m")
    doc_b = build(src, tmp_path / "b" / "m")
    assert doc_a == doc_b
    for name in doc_a["files"]:
        assert (tmp_path / "a" / "m" / name).read_bytes() == (tmp_path / "b" / "m" / name).read_bytes()
    assert doc_a["source"]["sha256"] == manifest.sha256_file(src)
    assert doc_a["architecture"] == "llama" and doc_a["quantization"]["tensors"]["Q4_1"] == 14
    onnx_file = tmp_path / "a" / "m" / "decoder.onnx"
    mtime = onnx_file.stat().st_mtime_ns
    build(src, tmp_path / "a" / "m")  # already current: nothing rewritten
    assert onnx_file.stat().st_mtime_ns == mtime
    build(src, tmp_path / "a" / "m", BuildOptions(head="int8"))  # other options: rebuilt
    assert manifest.verify(tmp_path / "a" / "m")["build"]["head"] == "int8"


@pytest.mark.parametrize("variant", ["fused", "plain"])
def test_graph_variant_is_recorded(tiny_gguf, tmp_path, variant):
    doc = build(tiny_gguf(), tmp_path / "m", BuildOptions(graph=variant))
    assert doc["build"]["graph"] == variant
    assert json.loads((tmp_path / "m" / "model.json").read_text())["graph"] == variant
    with pytest.raises(ValueError, match="graph variant"):
        build(tiny_gguf(), tmp_path / "n", BuildOptions(graph="nope"))


def test_verify_refuses_tampered_files(tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, d)
    assert manifest.verify(d)["name"] == "tiny"
    data = bytearray((d / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (d / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(manifest.ManifestError, match="decoder.onnx"):
        manifest.verify(d)
    (d / "decoder.onnx").unlink()
    with pytest.raises(manifest.ManifestError, match="missing"):
        manifest.verify(d)
    (d / "manifest.json").unlink()
    with pytest.raises(manifest.ManifestError):
        manifest.verify(d)


def test_rebuild_repairs_a_tampered_directory(tiny_gguf, tmp_path):
    src = tiny_gguf()
    out = tmp_path / "m"
    build(src, out)
    (out / "tokenizer.json").write_text("{}")
    build(src, out)
    manifest.verify(out)


# --- head="rescore": int8 output matrix, then the rows that could hold the maximum in fp32 -----

RESCORE_CONFIGS = [
    ({}, True),  # SmolLM2's mix: the tied Q8_0 embedding is the output matrix (its tensors shared)
    ({"embd": "Q4_0", "output": "Q4_1", **{r: "Q4_0" for r in LAYER_ROLES}}, False),  # Q4_1 head: remainder
    ({"embd": "Q4_1", "attn_q": "Q8_0", "attn_k": "F16", "ffn_up": "Q4_1"}, True),  # tied Q4_1 embedding
    ({"embd": "F16", "output": "F32"}, False),  # a float head: a plain MatMul, exact anyway
]


@pytest.mark.parametrize("types,tied", RESCORE_CONFIGS)
def test_fused_rescore_head_gives_the_exact_top1(tiny_gguf, types, tied):
    model = GGUFModel(tiny_gguf(types=types, tied=tied))
    ids = np.random.default_rng(3).integers(0, model.config.n_vocab, 24)
    want = ReferenceLlama(model).logits(ids)
    got, _ = _fused_run(_fused_session(model, head="rescore"), model.config, [ids])
    top = want.argmax(-1)
    assert (got.argmax(-1) == top).all()
    rows = np.arange(len(ids))
    np.testing.assert_allclose(got[rows, top], want[rows, top], rtol=0, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-2 * np.abs(want).max())  # the others: int8-accurate


def _head_session(w: quant.BlockQuant, head: str):
    from onnx import TensorProto, helper

    b = graph._Builder(4 if head == "int8" else 0)  # int8: the head alone, int8 activations
    y = graph._rescored_head(b, "h", w, None) if head == "rescore" else graph._fused_linear(b, "h", w, "o", {})
    b.op("Identity", [y], outputs=["y"])
    g = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, w.shape[1]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.OPSET), helper.make_opsetid(graph.MS, 1)])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_rescore_head_picks_the_exact_maximum_among_near_ties():
    """4,000 rows, in pairs that differ by one step of one weight: the int8 logits misorder close
    rows, the rescored ones must not (and the int8 error stays inside the bound the graph assumes)."""
    rng = np.random.default_rng(11)
    n_pairs, k = 2000, 192
    raw = quants.quantize(rng.standard_normal((n_pairs, k)).astype(np.float32), quants.GGMLQuantizationType.Q8_0)
    base = quant.decode_blocks(raw, int(quants.GGMLQuantizationType.Q8_0), k)
    q2 = base.q.copy()
    col = rng.integers(0, k, n_pairs)
    q2[np.arange(n_pairs), col] = np.where(q2[np.arange(n_pairs), col] < 255, q2[np.arange(n_pairs), col] + 1,
                                           q2[np.arange(n_pairs), col] - 1)
    w = quant.concat_rows([base, quant.BlockQuant(8, q2, base.scale, base.zp, None, "Q8_0")])
    exact_w = w.dequantize().astype(np.float64)
    rescore, int8 = _head_session(w, "rescore"), _head_session(w, "int8")
    # activations with outlier channels, as a real model's final hidden state has
    h = rng.standard_normal((400, k)).astype(np.float32)
    h[:, rng.integers(0, k, 3)] *= 40
    want = h.astype(np.float64) @ exact_w.T
    got = rescore.run(None, {"h": h})[0]
    picked = want[np.arange(len(h)), got.argmax(-1)]
    best = want.max(-1)
    assert (picked >= best - 2e-7 * np.abs(best)).all()  # the maximum, up to fp32 resolution (~1e-6 here)
    # the assumption behind the bound: per-32-block int8 activations, error <= amax_b / 254 * |w| block sums
    l1 = np.abs(exact_w).reshape(len(exact_w), -1, quant.QK).sum(-1)
    bound = (np.abs(h).reshape(len(h), -1, quant.QK).max(-1) / 254) @ l1.T
    err = np.abs(int8.run(None, {"h": h})[0] - want)
    assert (err <= bound * 1.02 + 1e-5).all()
    swapped = (int8.run(None, {"h": h})[0].argmax(-1) != want.argmax(-1)).sum()
    assert swapped > 0  # the int8 head alone does get pairs wrong: this test can fail
