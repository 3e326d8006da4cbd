"""Read a LLaMA-architecture GGUF: hyper-parameters, weights (as :mod:`quant` forms), vocabulary."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import quant

SUPPORTED_ARCHITECTURES = ("llama",)


class GGUFError(ValueError):
    """The file is not a GGUF this converter carries over exactly."""


@dataclass(frozen=True)
class LlamaConfig:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx: int
    rope_base: float
    rms_eps: float
    rope_dim: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Vocab:
    model: str  # tokenizer.ggml.model, e.g. "gpt2"
    pre: str  # tokenizer.ggml.pre, e.g. "smollm"
    tokens: list[str]
    token_types: list[int]  # 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


Weight = "quant.BlockQuant | np.ndarray"


class GGUFModel:
    """Lazily decoded view of a GGUF file (memory-mapped by gguf's reader)."""

    def __init__(self, path: str | Path):
        from gguf import GGUFReader  # build-time dependency only

        self.path = Path(path)
        try:
            self._r = GGUFReader(str(self.path))
        except Exception as exc:  # noqa: BLE001 - the reader raises many types
            raise GGUFError(f"{self.path}: not a readable GGUF file ({exc})") from exc
        self._tensors = {t.name: t for t in self._r.tensors}
        self.architecture = self.field("general.architecture")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise GGUFError(f"architecture {self.architecture!r} is not supported (only llama)")
        for name, t in self._tensors.items():
            if not quant.supported(int(t.tensor_type)):
                raise GGUFError(f"tensor {name} has type {t.tensor_type.name}; supported: Q4_0, Q4_1, Q8_0, F16, F32")

    # --- metadata ------------------------------------------------------------------------
    def field(self, key: str, default=None):
        f = self._r.fields.get(key)
        if f is None:
            return default
        return f.contents()

    @property
    def config(self) -> LlamaConfig:
        a = self.architecture
        n_embd = int(self.field(f"{a}.embedding_length"))
        n_head = int(self.field(f"{a}.attention.head_count"))
        head_dim = n_embd // n_head
        emb = self._tensors["token_embd.weight"]
        n_vocab = int(self.field(f"{a}.vocab_size", int(emb.shape[1])))
        rope_dim = int(self.field(f"{a}.rope.dimension_count", head_dim))
        if rope_dim != head_dim:
            raise GGUFError(f"partial rotary ({rope_dim} of {head_dim}) is not supported")
        if self.field(f"{a}.rope.scaling.type") not in (None, "none"):
            raise GGUFError("rope scaling is not supported")
        return LlamaConfig(
            n_layer=int(self.field(f"{a}.block_count")),
            n_embd=n_embd,
            n_ff=int(self.field(f"{a}.feed_forward_length")),
            n_head=n_head,
            n_head_kv=int(self.field(f"{a}.attention.head_count_kv", n_head)),
            head_dim=head_dim,
            n_vocab=n_vocab,
            n_ctx=int(self.field(f"{a}.context_length", 2048)),
            rope_base=float(self.field(f"{a}.rope.freq_base", 10000.0)),
            rms_eps=float(self.field(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_dim=rope_dim,
        )

    @property
    def file_type(self) -> str:
        """Quantization summary, e.g. ``"Q4_1 (Q4_1 x210, F32 x61, Q8_0 x1)"``."""
        counts: dict[str, int] = {}
        for t in self._tensors.values():
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        main = max((c, n) for n, c in counts.items() if n not in ("F32",))[1] if len(counts) > 1 else next(iter(counts))
        return main

    def tensor_types(self) -> dict[str, str]:
        return {name: t.tensor_type.name for name, t in sorted(self._tensors.items())}

    def vocab(self) -> Vocab:
        def opt_int(key):
            v = self.field(key)
            return None if v is None else int(v)

        return Vocab(
            model=str(self.field("tokenizer.ggml.model")),
            pre=str(self.field("tokenizer.ggml.pre", "default")),
            tokens=list(self.field("tokenizer.ggml.tokens")),
            token_types=[int(x) for x in self.field("tokenizer.ggml.token_type", [])],
            merges=list(self.field("tokenizer.ggml.merges", [])),
            bos_id=opt_int("tokenizer.ggml.bos_token_id"),
            eos_id=opt_int("tokenizer.ggml.eos_token_id"),
            unk_id=opt_int("tokenizer.ggml.unknown_token_id"),
            pad_id=opt_int("tokenizer.ggml.padding_token_id"),
            add_bos=bool(self.field("tokenizer.ggml.add_bos_token", False)),
            chat_template=self.field("tokenizer.chat_template"),
        )

    # --- tensors -------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self._tensors

    def ggml_type(self, name: str) -> int:
        return int(self._tensors[name].tensor_type)

    def weight(self, name: str):
        """A matrix as :class:`quant.BlockQuant` (block types) or float32 [N, K]; vectors as float32."""
        t = self._tensors[name]
        gt = int(t.tensor_type)
        ne = [int(x) for x in t.shape]  # ggml order: ne[0] is the contiguous (input) dimension
        if quant.is_block_type(gt):
            if len(ne) != 2:
                raise GGUFError(f"{name}: quantized tensor with {len(ne)} dims")
            return quant.decode_blocks(t.data, gt, ne[0])
        arr = quant.decode_float(t.data, gt)
        return arr.reshape(list(reversed(ne))) if len(ne) > 1 else arr.reshape(ne)

    def dense(self, name: str) -> np.ndarray:
        w = self.weight(name)
        return w.dequantize() if isinstance(w, quant.BlockQuant) else w
