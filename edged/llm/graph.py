"""The ONNX decoder: LLaMA with a KV cache, weights carried over from GGUF exactly.

Inputs
  input_ids       int64 [batch, seq]
  logits_index    int64 [m]          positions (within ``seq``) whose logits are wanted;
                                     ``[seq - 1]`` when generating, ``arange(seq)`` to score
  past_key_<i>    float32 [batch, n_head_kv, past, head_dim]   (``past`` may be 0)
  past_value_<i>  float32 [batch, n_head_kv, past, head_dim]
Outputs
  logits          float32 [batch, m, n_vocab]
  present_key_<i>, present_value_<i>   the caches with ``seq`` more positions

Weights: block-quantized matrices become ``com.microsoft.MatMulNBits`` (4- or 8-bit,
uint8 zero points) and the embedding ``com.microsoft.GatherBlockQuantized``; a Q4_1
remainder is added as ``blocksum(x) @ corr.T`` (see :mod:`quant`).  With ``kernel`` set, the
fused graph runs every block matrix as edged's own ``edged.llm.QMatMul`` instead (:mod:`qkernel`).  GGUF stores the
q/k rows of each head interleaved for llama.cpp's pairwise rotary; the rows are put
back in half-split order (a pure row permutation, exact) so rotary is two slices.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import qkernel, quant
from .gguf_model import GGUFModel, LlamaConfig

OPSET = 21
MS = "com.microsoft"


def unpermute_rows(n_head: int, head_dim: int) -> np.ndarray:
    """Row order that undoes convert_hf_to_gguf's q/k permutation (pairs -> halves)."""
    per_head = np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
    return (np.arange(n_head)[:, None] * head_dim + per_head[None, :]).reshape(-1)


def _take_rows(w, index):
    return w.rows(index) if isinstance(w, quant.BlockQuant) else np.ascontiguousarray(w[index])


def _concat(parts):
    if isinstance(parts[0], quant.BlockQuant):
        return quant.concat_rows(parts)
    return np.concatenate(parts)


class _Builder:
    def __init__(self, accuracy_level: int, kernel: str = ""):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.acc = accuracy_level
        self.kernel = kernel  # "precise" | "llama": block matrices as edged's QMatMul in that mode (see qkernel)
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"const_{len(self._consts)}", arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, n_out: int = 1,
           domain: str = "", outputs: list[str] | None = None, **attrs) -> str | list[str]:
        outs = outputs or [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name("n_" + op_type), domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    # --- linear layers -------------------------------------------------------------------
    def blocksum(self, x: str, k: int) -> str:
        xb = self.op("Reshape", [x, self.const([0, 0, k // quant.QK, quant.QK])], "xblk")
        return self.op("ReduceSum", [xb, self.const([-1])], "bsum", keepdims=0)

    def linear(self, x: str, w, prefix: str, bsums: dict, split8: bool = False) -> str:
        if split8 and isinstance(w, quant.BlockQuant) and w.bits == 8 and w.corr is None:
            hi, lo = w.split_nibbles()
            return self.op("Add", [self.linear(x, hi, prefix + "_hi", bsums), self.linear(x, lo, prefix + "_lo", bsums)],
                           prefix + "_sum")
        if isinstance(w, np.ndarray):  # float [N, K]
            wt = self.init(f"{prefix}.weight_t", w.T.astype(np.float32))
            return self.op("MatMul", [x, wt], prefix)
        n, k = w.shape
        b = self.init(f"{prefix}.qweight", w.matmulnbits_b())
        s = self.init(f"{prefix}.scales", w.scale.reshape(-1))
        z = self.init(f"{prefix}.zero_points", w.matmulnbits_zp())
        y = self.op("MatMulNBits", [x, b, s, z], prefix, domain=MS, K=k, N=n, bits=w.bits,
                    block_size=quant.QK, accuracy_level=self.acc)
        if w.corr is not None:
            if x not in bsums:
                bsums[x] = self.blocksum(x, k)
            c = self.init(f"{prefix}.block_corr_t", np.ascontiguousarray(w.corr.T))
            y = self.op("Add", [y, self.op("MatMul", [bsums[x], c], prefix + "_corr")], prefix + "_out")
        return y

    def embedding(self, ids: str, w) -> str:
        if isinstance(w, np.ndarray):
            return self.op("Gather", [self.init("token_embd.weight", w), ids], "embd", axis=0)
        w8 = w.widened()
        q = self.init("token_embd.q8", w8.q)
        s = self.init("token_embd.scales", w8.scale)
        z = self.init("token_embd.zero_points", w8.zp)
        e = self.op("GatherBlockQuantized", [q, ids, s, z], "embd", domain=MS, bits=8,
                    block_size=quant.QK, gather_axis=0, quantize_axis=1)
        if w8.corr is not None:  # Q4_1 embedding: add each block's remainder to its 32 values
            c = self.op("Gather", [self.init("token_embd.block_corr", w8.corr), ids], "embd_corr", axis=0)
            c = self.op("Unsqueeze", [c, self.const([-1])])
            c = self.op("Expand", [c, self.const([1, 1, 1, quant.QK])])
            c = self.op("Reshape", [c, self.const([0, 0, -1])])
            e = self.op("Add", [e, c], "embd_sum")
        return e


def build_decoder(model: GGUFModel, accuracy_level: int = 0, head: str = "split4",
                  fuse: bool = True, attention: str = "gqa") -> onnx.ModelProto:
    """The decoder ModelProto (deterministic: same GGUF and options -> same bytes)."""
    cfg: LlamaConfig = model.config
    b = _Builder(accuracy_level)
    hd, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_head_kv
    rep = nh // nkv
    half = hd // 2

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("logits_index", TensorProto.INT64, ["m"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "m", cfg.n_vocab])]
    for i in range(cfg.n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", TensorProto.FLOAT, ["batch", nkv, "past", hd]))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", TensorProto.FLOAT, ["batch", nkv, "total", hd]))

    # positions, rotary tables, causal mask -- shared by every layer
    ids_shape = b.op("Shape", ["input_ids"], "ids_shape")
    seq = b.op("Gather", [ids_shape, b.const(1)], "seq", axis=0)
    past = b.op("Gather", [b.op("Shape", ["past_key_0"], "past_shape"), b.const(2)], "past", axis=0)
    total = b.op("Add", [past, seq], "total")
    inv_freq = cfg.rope_base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    if attention != "gqa":
        qpos = b.op("Range", [past, total, b.const(1)], "qpos")  # [S]
        kpos = b.op("Range", [b.const(0), total, b.const(1)], "kpos")  # [T]
        ang = b.op("Mul", [b.op("Unsqueeze", [b.op("Cast", [qpos], to=TensorProto.FLOAT), b.const([1])]),
                           b.init("rope.inv_freq", inv_freq.astype(np.float32)[None, :])], "rope_angle")  # [S, half]
        cos, sin = b.op("Cos", [ang], "rope_cos"), b.op("Sin", [ang], "rope_sin")
        qpos_rep = b.op("Unsqueeze", [b.op("Tile", [qpos, b.const([rep])]), b.const([1])], "qpos_rep")  # [rep*S, 1]
        masked = b.op("Greater", [b.op("Unsqueeze", [kpos, b.const([0])]), qpos_rep], "future")  # [rep*S, T]
        neg_inf = b.const(np.float32(-np.inf), np.float32)
        scale = b.const(np.float32(1.0 / np.sqrt(hd)), np.float32)

    def rope(x):  # x [B, H, S, hd], half-split rotary
        x1 = b.op("Slice", [x, b.const([0]), b.const([half]), b.const([-1])])
        x2 = b.op("Slice", [x, b.const([half]), b.const([hd]), b.const([-1])])
        lo = b.op("Sub", [b.op("Mul", [x1, cos]), b.op("Mul", [x2, sin])])
        hi = b.op("Add", [b.op("Mul", [x2, cos]), b.op("Mul", [x1, sin])])
        return b.op("Concat", [lo, hi], "rot", axis=-1)

    def heads(x, n):  # [B, S, n*hd] -> [B, n, S, hd]
        return b.op("Transpose", [b.op("Reshape", [x, b.const([0, 0, n, hd])])], perm=[0, 2, 1, 3])

    if attention == "gqa":
        seqlens_k = b.op("Cast", [b.op("Sub", [b.op("Reshape", [total, b.const([1])]), b.const([1])])],
                         "seqlens_k", to=TensorProto.INT32)  # batch 1: the last position's index
        total_i32 = b.op("Cast", [total], "total_i32", to=TensorProto.INT32)
        angles = np.arange(cfg.n_ctx, dtype=np.float64)[:, None] * inv_freq[None, :]
        cos_cache = b.init("rope.cos_cache", np.cos(angles).astype(np.float32))
        sin_cache = b.init("rope.sin_cache", np.sin(angles).astype(np.float32))
    q_perm = unpermute_rows(nh, hd)
    k_perm = unpermute_rows(nkv, hd)
    x = b.embedding("input_ids", model.weight("token_embd.weight"))
    for i in range(cfg.n_layer):
        p = f"blk.{i}"
        bsums: dict = {}
        h = b.op("SimplifiedLayerNormalization", [x, b.init(f"{p}.attn_norm", model.weight(f"{p}.attn_norm.weight"))],
                 "attn_norm", axis=-1, epsilon=cfg.rms_eps)
        wq = _take_rows(model.weight(f"{p}.attn_q.weight"), q_perm)
        wk = _take_rows(model.weight(f"{p}.attn_k.weight"), k_perm)
        wv = model.weight(f"{p}.attn_v.weight")
        if fuse and quant.can_fuse([wq, wk, wv]):
            qkv = b.linear(h, _concat([wq, wk, wv]), f"{p}.attn_qkv", bsums)
            q, k, v = b.op("Split", [qkv, b.const([nh * hd, nkv * hd, nkv * hd])], "qkv", n_out=3, axis=-1)
        else:
            q = b.linear(h, wq, f"{p}.attn_q", bsums)
            k = b.linear(h, wk, f"{p}.attn_k", bsums)
            v = b.linear(h, wv, f"{p}.attn_v", bsums)
        if attention == "gqa":  # one fused op: rotary, cache append, causal GQA softmax(QK^T)V
            o, _, _ = b.op("GroupQueryAttention", [q, k, v, f"past_key_{i}", f"past_value_{i}", seqlens_k, total_i32,
                                                   cos_cache, sin_cache], "gqa", domain=MS,
                           outputs=[b.name("attn_flat"), f"present_key_{i}", f"present_value_{i}"],
                           n_out=3, num_heads=nh, kv_num_heads=nkv, do_rotary=1, rotary_interleaved=0,
                           scale=float(1.0 / np.sqrt(hd)))
        else:
            q = rope(heads(b.op("Mul", [q, scale]), nh))  # 1/sqrt(64) is a power of two: exact
            k = rope(heads(k, nkv))
            v = heads(v, nkv)
            k_all = b.op("Concat", [f"past_key_{i}", k], outputs=[f"present_key_{i}"], axis=2)
            v_all = b.op("Concat", [f"past_value_{i}", v], outputs=[f"present_value_{i}"], axis=2)
            # grouped-query attention without repeating K/V: query heads of one KV head side by side
            qg = b.op("Reshape", [q, b.const([0, nkv, -1, hd])], "q_grouped")  # [B, nkv, rep*S, hd]
            scores = b.op("MatMul", [qg, b.op("Transpose", [k_all], perm=[0, 1, 3, 2])], "scores")
            scores = b.op("Where", [masked, neg_inf, scores], "scores_masked")
            probs = b.op("Softmax", [scores], "probs", axis=-1)
            o = b.op("MatMul", [probs, v_all], "attn")  # [B, nkv, rep*S, hd]
            o = b.op("Reshape", [o, b.const([0, nh, -1, hd])])
            o = b.op("Reshape", [b.op("Transpose", [o], perm=[0, 2, 1, 3]), b.const([0, 0, nh * hd])], "attn_flat")
        x = b.op("Add", [x, b.linear(o, model.weight(f"{p}.attn_output.weight"), f"{p}.attn_output", bsums)], "resid")
        h = b.op("SimplifiedLayerNormalization", [x, b.init(f"{p}.ffn_norm", model.weight(f"{p}.ffn_norm.weight"))],
                 "ffn_norm", axis=-1, epsilon=cfg.rms_eps)
        wg, wu = model.weight(f"{p}.ffn_gate.weight"), model.weight(f"{p}.ffn_up.weight")
        if fuse and quant.can_fuse([wg, wu]):
            gu = b.linear(h, _concat([wg, wu]), f"{p}.ffn_gate_up", bsums)
            g, u = b.op("Split", [gu, b.const([cfg.n_ff, cfg.n_ff])], "gate_up", n_out=2, axis=-1)
        else:
            g = b.linear(h, wg, f"{p}.ffn_gate", bsums)
            u = b.linear(h, wu, f"{p}.ffn_up", bsums)
        act = b.op("Mul", [b.op("Mul", [g, b.op("Sigmoid", [g])], "silu"), u], "swiglu")
        x = b.op("Add", [x, b.linear(act, model.weight(f"{p}.ffn_down.weight"), f"{p}.ffn_down", bsums)], "resid")

    x = b.op("Gather", [x, "logits_index"], "last_hidden", axis=1)
    x = b.op("SimplifiedLayerNormalization", [x, b.init("output_norm", model.weight("output_norm.weight"))],
             "output_norm", axis=-1, epsilon=cfg.rms_eps)
    w_out = model.weight("output.weight") if model.has("output.weight") else model.weight("token_embd.weight")
    if head == "int8":  # 8-bit kernel with int8 activations (fast; not exact)
        b.acc = 4
    logits = b.linear(x, w_out, "output", {}, split8=(head == "split4"))
    b.op("Identity", [logits], outputs=["logits"])

    graph = helper.make_graph(b.nodes, "llama_decoder", inputs, outputs, b.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                          producer_name="edged.llm", producer_version="1")
    m.ir_version = 10
    return m


# --- the fused graph -----------------------------------------------------------------------
#
# Same weights and arithmetic, fewer and larger nodes, and a KV cache that is never copied:
#
#   input_ids              int64 [1, seq]
#   logits_index           int64 [m]
#   seqlens_k              int32 [1]     past + seq - 1 (GroupQueryAttention's convention)
#   total_sequence_length  int32 []      past + seq
#   past_key_<i>, past_value_<i>   float32 [1, n_head_kv, max_length, head_dim]: the whole cache
#                          buffer; the caller binds present_<kind>_<i> to the *same* memory
#                          (IO binding) and GroupQueryAttention writes the new positions in place.
#
# Per layer: SkipSimplifiedLayerNormalization (residual add + RMSNorm in one node), one
# MatMulNBits for q/k/v packed straight into GroupQueryAttention (rotary inside, no Split), the
# Q4_1 remainder as ``Gemm(x @ S, corr.T, y)`` (S: the 0/1 block-sum matrix, so one MatMul and
# one Gemm instead of Reshape/ReduceSum/MatMul/Add), gate/up fused.  Hidden state is 2-D
# ``[seq, d]`` (batch 1).

def _fused_linear(b: _Builder, x: str, w, prefix: str, bsums: dict, split8: bool = False) -> str:
    if split8 and isinstance(w, quant.BlockQuant) and w.bits == 8 and w.corr is None:
        hi, lo = w.split_nibbles()
        return b.op("Add", [_fused_linear(b, x, hi, prefix + "_hi", bsums), _fused_linear(b, x, lo, prefix + "_lo", bsums)],
                    prefix + "_sum")
    if isinstance(w, np.ndarray):
        return b.op("MatMul", [x, b.init(f"{prefix}.weight_t", w.T.astype(np.float32))], prefix)
    if b.kernel and qkernel.supported(w):
        p = qkernel.pack(w)
        return b.op("QMatMul", [x, b.init(f"{prefix}.codes", p.codes), b.init(f"{prefix}.scales", p.scales),
                                b.init(f"{prefix}.mins", p.mins)], prefix, domain=qkernel.DOMAIN,
                    K=p.k, N=p.n, bits=p.bits, zero_point=p.zero_point, precise=int(b.kernel == "precise"))
    n, k = w.shape
    y = b.op("MatMulNBits", [x, b.init(f"{prefix}.qweight", w.matmulnbits_b()), b.init(f"{prefix}.scales", w.scale.reshape(-1)),
                             b.init(f"{prefix}.zero_points", w.matmulnbits_zp())], prefix, domain=MS,
             K=k, N=n, bits=w.bits, block_size=quant.QK, accuracy_level=b.acc)
    if w.corr is None:
        return y
    if x not in bsums:
        s = np.zeros((k, k // quant.QK), np.float32)
        s[np.arange(k), np.arange(k) // quant.QK] = 1.0
        bsums[x] = b.op("MatMul", [x, b.const(s, np.float32)], "bsum")
    return b.op("Gemm", [bsums[x], b.init(f"{prefix}.block_corr_t", np.ascontiguousarray(w.corr.T)), y], prefix + "_out")


# The output matrix is as large as all the layers' attention weights together, and onnxruntime's
# exact (fp32-activation) 8-bit kernel is slow, so head="rescore" runs it with int8 activations
# and then makes the winner exact.  MLAS quantizes the activations per block of 32 with
# scale = amax / 127 and rounds to nearest, so every int8 logit is within
# err[n] <= sum_b amax_b / 254 * sum_{k in b} |w[n, k]| of the exact one.  Every row whose
# interval [approx - 2 err, approx + 2 err] (2x: room for the fp32 sums) reaches the best lower
# end could be the exact maximum; those rows -- a median of 18-34 of 49,152 -- are gathered
# dequantized and their logits recomputed in fp32.  The top-1 is then the exact model's; the
# other logits stay int8-accurate (they only matter to sampling with a temperature).
def _rescored_head(b: _Builder, h: str, w: "quant.BlockQuant", shared: str | None) -> str:
    n, k = w.shape
    nb = k // quant.QK
    acc, b.acc = b.acc, 4
    approx = _fused_linear(b, h, w, "output", {})  # a Q4_1 remainder is added in fp32: no int8 error in it
    b.acc = acc
    l1 = np.abs(w.q.reshape(n, nb, quant.QK).astype(np.float64) - w.zp[:, :, None]).sum(-1) * np.abs(w.scale)
    bound_t = b.init("output.err_per_amax_t", np.ascontiguousarray((l1 * (2.0 / 254.0)).T.astype(np.float32)))
    amax = b.op("ReduceMax", [b.op("Abs", [b.op("Reshape", [h, b.const([0, nb, quant.QK])])]), b.const([-1])], "amax", keepdims=0)
    err = b.op("Add", [b.op("MatMul", [amax, bound_t], "err"), b.const(np.float32(1e-6), np.float32)], "err_abs")
    best_low = b.op("ReduceMax", [b.op("Sub", [approx, err]), b.const([-1])], "best_low", keepdims=1)
    cand = b.op("Transpose", [b.op("NonZero", [b.op("GreaterOrEqual", [b.op("Add", [approx, err]), best_low])])], "cand")
    pos, tok = (b.op("Reshape", [b.op("Gather", [cand, b.const([j])], axis=1), b.const([-1])], name)
                for j, name in ((0, "cand_pos"), (1, "cand_tok")))  # b.const(j) would be [1]-shaped
    rows = _gather_rows(b, w, tok, shared or "output_rows")
    exact = b.op("ReduceSum", [b.op("Mul", [rows, b.op("Gather", [h, pos], "cand_h", axis=0)]), b.const([-1])],
                 "cand_logit", keepdims=0)
    return b.op("ScatterND", [approx, cand, exact], "logits_2d")


def _gather_rows(b: _Builder, w: "quant.BlockQuant", ids: str, prefix: str) -> str:
    """Rows ``ids`` of ``w`` dequantized exactly, [len(ids), K]; reuses the embedding's tensors when tied."""
    w8 = w.widened()
    names = [f"{prefix}.q8", f"{prefix}.scales", f"{prefix}.zero_points"]
    have = {t.name for t in b.inits}
    if names[0] not in have:
        names = [b.init(names[0], w8.q), b.init(names[1], w8.scale), b.init(names[2], w8.zp)]
    rows = b.op("GatherBlockQuantized", [names[0], ids, names[1], names[2]], "rows", domain=MS, bits=8,
                block_size=quant.QK, gather_axis=0, quantize_axis=1)
    if w8.corr is not None:
        corr = f"{prefix}.block_corr"
        if corr not in have:
            b.init(corr, w8.corr)
        c = b.op("Unsqueeze", [b.op("Gather", [corr, ids], "rows_corr", axis=0), b.const([-1])])
        c = b.op("Reshape", [b.op("Expand", [c, b.const([1, 1, quant.QK])]), b.const([0, -1])])
        rows = b.op("Add", [rows, c], "rows_sum")
    return rows


def build_fused_decoder(model: GGUFModel, accuracy_level: int = 0, head: str = "split4",
                        kernel: str = "") -> onnx.ModelProto:
    """``kernel`` ("precise" | "llama"): every block matrix, the output one included, as QMatMul
    in that mode (``accuracy_level`` and ``head`` unused)."""
    cfg: LlamaConfig = model.config
    b = _Builder(accuracy_level, kernel)
    hd, nh, nkv, d = cfg.head_dim, cfg.n_head, cfg.n_head_kv, cfg.n_embd
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"]),
        helper.make_tensor_value_info("logits_index", TensorProto.INT64, ["m"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "m", cfg.n_vocab])]
    for i in range(cfg.n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", TensorProto.FLOAT, [1, nkv, "max_length", hd]))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", TensorProto.FLOAT, [1, nkv, "max_length", hd]))
    inv_freq = cfg.rope_base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = np.arange(cfg.n_ctx, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos_cache = b.init("rope.cos_cache", np.cos(angles).astype(np.float32))
    sin_cache = b.init("rope.sin_cache", np.sin(angles).astype(np.float32))
    q_perm, k_perm = unpermute_rows(nh, hd), unpermute_rows(nkv, hd)

    x = b.op("Reshape", [b.embedding("input_ids", model.weight("token_embd.weight")), b.const([-1, d])], "embd_2d")
    delta = None  # the residual branch not yet added to x
    for i in range(cfg.n_layer):
        p = f"blk.{i}"
        bsums: dict = {}
        g = b.init(f"{p}.attn_norm", model.weight(f"{p}.attn_norm.weight"))
        if delta is None:
            h = b.op("SimplifiedLayerNormalization", [x, g], "attn_norm", axis=-1, epsilon=cfg.rms_eps)
        else:
            h, _, _, x = b.op("SkipSimplifiedLayerNormalization", domain=MS, inputs=[delta, x, g], n_out=4, epsilon=cfg.rms_eps,
                              outputs=[b.name("attn_norm"), "", "", b.name("resid")])
        wq = _take_rows(model.weight(f"{p}.attn_q.weight"), q_perm)
        wk = _take_rows(model.weight(f"{p}.attn_k.weight"), k_perm)
        wv = model.weight(f"{p}.attn_v.weight")
        if quant.can_fuse([wq, wk, wv]):
            qkv = _fused_linear(b, h, _concat([wq, wk, wv]), f"{p}.attn_qkv", bsums)
            q_in = [b.op("Reshape", [qkv, b.const([1, -1, (nh + 2 * nkv) * hd])], "qkv_3d"), "", ""]
        else:
            q_in = [b.op("Reshape", [_fused_linear(b, h, w, f"{p}.attn_{r}", bsums), b.const([1, -1, n * hd])], f"{r}_3d")
                    for w, r, n in ((wq, "q", nh), (wk, "k", nkv), (wv, "v", nkv))]
        o, _, _ = b.op("GroupQueryAttention", [*q_in, f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_sequence_length",
                                         cos_cache, sin_cache], "gqa", domain=MS, n_out=3,
                 outputs=[b.name("attn"), f"present_key_{i}", f"present_value_{i}"],
                 num_heads=nh, kv_num_heads=nkv, do_rotary=1, rotary_interleaved=0, scale=float(1.0 / np.sqrt(hd)))
        o = b.op("Reshape", [o, b.const([-1, nh * hd])], "attn_2d")
        a = _fused_linear(b, o, model.weight(f"{p}.attn_output.weight"), f"{p}.attn_output", bsums)
        h, _, _, x = b.op("SkipSimplifiedLayerNormalization", domain=MS, inputs=[a, x, b.init(f"{p}.ffn_norm", model.weight(f"{p}.ffn_norm.weight"))],
                          n_out=4, epsilon=cfg.rms_eps, outputs=[b.name("ffn_norm"), "", "", b.name("resid")])
        wg, wu = model.weight(f"{p}.ffn_gate.weight"), model.weight(f"{p}.ffn_up.weight")
        if quant.can_fuse([wg, wu]):
            gate, up = b.op("Split", [_fused_linear(b, h, _concat([wg, wu]), f"{p}.ffn_gate_up", bsums),
                                      b.const([cfg.n_ff, cfg.n_ff])], "gate_up", n_out=2, axis=-1)
        else:
            gate = _fused_linear(b, h, wg, f"{p}.ffn_gate", bsums)
            up = _fused_linear(b, h, wu, f"{p}.ffn_up", bsums)
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])], "silu"), up], "swiglu")
        delta = _fused_linear(b, act, model.weight(f"{p}.ffn_down.weight"), f"{p}.ffn_down", bsums)

    h = b.op("SkipSimplifiedLayerNormalization", [delta, x, b.init("output_norm", model.weight("output_norm.weight"))],
             "output_norm", domain=MS, epsilon=cfg.rms_eps)
    h = b.op("Gather", [h, "logits_index"], "last_hidden", axis=0)
    tied = not model.has("output.weight")
    w_out = model.weight("token_embd.weight" if tied else "output.weight")
    if kernel and qkernel.supported(w_out):
        logits = _fused_linear(b, h, w_out, "output", {})
    elif head == "rescore" and isinstance(w_out, quant.BlockQuant):
        logits = _rescored_head(b, h, w_out, "token_embd" if tied else None)
    else:
        if head == "int8":
            b.acc = 4
        logits = _fused_linear(b, h, w_out, "output", {}, split8=(head == "split4"))
    b.op("Reshape", [logits, b.const([1, -1, cfg.n_vocab])], outputs=["logits"])

    graph = helper.make_graph(b.nodes, "llama_decoder_fused", inputs, outputs, b.inits)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)]
    if kernel:
        opsets.append(helper.make_opsetid(qkernel.DOMAIN, 1))
    m = helper.make_model(graph, opset_imports=opsets,
                          producer_name="edged.llm", producer_version="1")
    m.ir_version = 10
    return m
