"""fp32 numpy forward pass of the dequantized GGUF weights -- the yardstick.

Written independently of :mod:`graph`: llama.cpp's conventions (weights in GGUF row
order, pairwise "normal" rotary, K/V repeated per query head), no KV cache.  Used to
validate the ONNX decoder teacher-forced and as the "fp32 dequantized model" in the
llama.cpp agreement comparison.
"""

from __future__ import annotations

import numpy as np

from .gguf_model import GGUFModel


class ReferenceLlama:
    def __init__(self, model: GGUFModel):
        self.cfg = cfg = model.config
        self.emb = model.dense("token_embd.weight")
        self.head = model.dense("output.weight") if model.has("output.weight") else self.emb
        self.out_norm = model.dense("output_norm.weight")
        self.layers = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}"
            self.layers.append({n: model.dense(f"{p}.{n}.weight") for n in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")})

    def _norm(self, x, w):
        return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(self.cfg.rms_eps))) * w

    def _rope(self, x, pos):  # x [S, H, hd]; rotate pairs (2i, 2i+1) by pos * base^(-2i/hd)
        hd = x.shape[-1]
        theta = pos[:, None].astype(np.float64) * self.cfg.rope_base ** (-np.arange(0, hd, 2) / hd)[None, :]
        c, s = np.cos(theta).astype(np.float32)[:, None, :], np.sin(theta).astype(np.float32)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def logits(self, ids) -> np.ndarray:
        """[S, n_vocab] logits at every position of ``ids`` (causal, from position 0)."""
        cfg = self.cfg
        ids = np.asarray(ids, dtype=np.int64)
        s, hd, nh, nkv = len(ids), cfg.head_dim, cfg.n_head, cfg.n_head_kv
        pos = np.arange(s)
        x = self.emb[ids].astype(np.float32)
        mask = np.triu(np.full((s, s), -np.inf, np.float32), 1)
        for L in self.layers:
            h = self._norm(x, L["attn_norm"])
            q = self._rope((h @ L["attn_q"].T).reshape(s, nh, hd), pos)
            k = self._rope((h @ L["attn_k"].T).reshape(s, nkv, hd), pos)
            v = (h @ L["attn_v"].T).reshape(s, nkv, hd)
            k = np.repeat(k, nh // nkv, axis=1)
            v = np.repeat(v, nh // nkv, axis=1)
            att = np.einsum("qhd,khd->hqk", q, k) / np.float32(np.sqrt(hd)) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hqk,khd->qhd", att, v).reshape(s, nh * hd)
            x = x + o @ L["attn_output"].T
            h = self._norm(x, L["ffn_norm"])
            g = h @ L["ffn_gate"].T
            x = x + ((g / (1 + np.exp(-g))) * (h @ L["ffn_up"].T)) @ L["ffn_down"].T
        return self._norm(x, self.out_norm) @ self.head.T
