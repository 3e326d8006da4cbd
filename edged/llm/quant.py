"""GGUF block formats, decoded into the exact form onnxruntime's quantized ops run.

Every supported weight ``w[n, k]`` (row ``n`` = output feature, ``k`` = input feature,
GGUF's ``ne = [K, N]``) is written as

    w[n, k] = scale[n, b] * (q[n, k] - zp[n, b]) + corr[n, b]        b = k // 32

with ``q``/``zp`` small unsigned integers -- which is what ``com.microsoft.MatMulNBits``
(and ``GatherBlockQuantized``) compute -- plus an optional per-block float ``corr``.

* Q4_0 (``d * (q - 8)``):  scale = d, zp = 8, no correction.
* Q8_0 (``d * q``, q int8): stored as u = q + 128, zp = 128 (8-bit), no correction.
* Q4_1 (``d * q + m``):    zp = clip(round(-m / d), 0, 15), corr = m + d * zp.  The
  correction is applied in the graph as ``blocksum(x) @ corr.T`` (sum of the activations
  in each block times the per-block remainder), so the uint8-zero-point fast kernel runs
  and the product is still the original weight exactly.
* F16 / F32: plain float matrices (fp16 -> fp32 is exact).

Nothing is re-quantized: ``scale`` is the fp16 ``d`` widened to fp32 and ``q`` is copied
bit for bit, so :meth:`BlockQuant.dequantize` equals gguf's own dequantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK = 32  # block size of every supported quantized type

# ggml type ids (gguf.GGMLQuantizationType values), kept here so this module needs only numpy
F32, F16, Q4_0, Q4_1, Q8_0 = 0, 1, 2, 3, 8
TYPE_NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q8_0: "Q8_0"}
BLOCK_BYTES = {Q4_0: 18, Q4_1: 20, Q8_0: 34}


class UnsupportedTensor(ValueError):
    """A tensor type the converter does not carry over exactly."""


@dataclass(frozen=True)
class BlockQuant:
    """``w = scale * (q - zp) + corr`` per block of 32 along K; see the module docstring."""

    bits: int  # storage width for MatMulNBits: 4 or 8
    q: np.ndarray  # uint8 [N, K], one value per element (unpacked)
    scale: np.ndarray  # float32 [N, nb]
    zp: np.ndarray  # uint8 [N, nb]
    corr: np.ndarray | None  # float32 [N, nb] or None
    source: str  # ggml type name it came from

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape  # type: ignore[return-value]

    @property
    def n_blocks(self) -> int:
        return self.q.shape[1] // QK

    def dequantize(self) -> np.ndarray:
        """float32 weights, computed in float64 and rounded once (exact for fp16 inputs)."""
        n, k = self.q.shape
        w = self.q.reshape(n, -1, QK).astype(np.float64) - self.zp[:, :, None]
        w *= self.scale[:, :, None].astype(np.float64)
        if self.corr is not None:
            w += self.corr[:, :, None].astype(np.float64)
        return w.reshape(n, k).astype(np.float32)

    def rows(self, index: np.ndarray) -> "BlockQuant":
        """The same weights with rows (output features) reordered/selected -- exact."""
        return BlockQuant(
            self.bits,
            np.ascontiguousarray(self.q[index]),
            np.ascontiguousarray(self.scale[index]),
            np.ascontiguousarray(self.zp[index]),
            None if self.corr is None else np.ascontiguousarray(self.corr[index]),
            self.source,
        )

    def widened(self) -> "BlockQuant":
        """8-bit storage of the same values (4-bit codes fit in a byte unchanged)."""
        return BlockQuant(8, self.q, self.scale, self.zp, self.corr, self.source)

    def split_nibbles(self) -> tuple["BlockQuant", "BlockQuant"]:
        """An 8-bit weight as the sum of two 4-bit ones, exactly:

        ``s * (u - zp)`` with ``u = 16 * hi + lo`` equals
        ``16s * (hi - zp // 16) + s * (lo - zp % 16)``.  onnxruntime's fp32 4-bit kernel is
        fast where its 8-bit one is not, so the Q8_0 output matrix runs as two 4-bit ones.
        """
        if self.bits != 8 or self.corr is not None:
            raise ValueError("only plain 8-bit weights split")
        hi = BlockQuant(4, self.q >> 4, self.scale * np.float32(16), self.zp >> 4, None, self.source)
        lo = BlockQuant(4, self.q & 0x0F, self.scale, self.zp & 0x0F, None, self.source)
        return hi, lo

    # --- onnxruntime layouts -------------------------------------------------------------
    def matmulnbits_b(self) -> np.ndarray:
        """B input of MatMulNBits: uint8 [N, nb, blob]; 4-bit: element 2i low nibble, 2i+1 high."""
        n, k = self.q.shape
        if self.bits == 8:
            return self.q.reshape(n, -1, QK).copy()
        q = self.q.reshape(n, -1, QK // 2, 2)
        return (q[..., 0] | (q[..., 1] << 4)).astype(np.uint8)

    def matmulnbits_zp(self) -> np.ndarray:
        """zero_points input of MatMulNBits: uint8, flat; 4-bit packed two blocks a byte per row."""
        if self.bits == 8:
            return self.zp.reshape(-1).copy()
        n, nb = self.zp.shape
        z = self.zp
        if nb % 2:
            z = np.concatenate([z, np.zeros((n, 1), np.uint8)], axis=1)
        z = z.reshape(n, -1, 2)
        return (z[..., 0] | (z[..., 1] << 4)).astype(np.uint8).reshape(-1)


def concat_rows(parts: list[BlockQuant]) -> BlockQuant:
    """Stack weights along N (fusing e.g. q/k/v into one MatMulNBits); exact."""
    first = parts[0]
    if any(p.bits != first.bits or (p.corr is None) != (first.corr is None) for p in parts):
        raise ValueError("cannot fuse tensors of different layouts")
    corr = None if first.corr is None else np.concatenate([p.corr for p in parts])  # type: ignore[misc]
    return BlockQuant(
        first.bits,
        np.concatenate([p.q for p in parts]),
        np.concatenate([p.scale for p in parts]),
        np.concatenate([p.zp for p in parts]),
        corr,
        "+".join(sorted({p.source for p in parts})),
    )


def can_fuse(parts: list["BlockQuant | np.ndarray"]) -> bool:
    if all(isinstance(p, np.ndarray) for p in parts):
        return True
    if not all(isinstance(p, BlockQuant) for p in parts):
        return False
    first = parts[0]
    return all(p.bits == first.bits and (p.corr is None) == (first.corr is None) for p in parts)  # type: ignore[union-attr]


def _fp16(raw: np.ndarray) -> np.ndarray:
    """[..., 2] uint8 -> float32 (little-endian fp16 widened, exact)."""
    return np.ascontiguousarray(raw).view("<f2")[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml 4-bit block layout: byte j holds element j (low) and j + 16 (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint8)


def decode_blocks(raw: np.ndarray, ggml_type: int, n_cols: int) -> BlockQuant:
    """Raw GGUF rows (uint8 [N, row_bytes]) of a quantized type -> :class:`BlockQuant`."""
    if ggml_type not in BLOCK_BYTES:
        raise UnsupportedTensor(f"ggml type {TYPE_NAMES.get(ggml_type, ggml_type)} is not a block type")
    if n_cols % QK:
        raise UnsupportedTensor(f"row length {n_cols} is not a multiple of {QK}")
    raw = np.asarray(raw, dtype=np.uint8)
    n = raw.size // (n_cols // QK * BLOCK_BYTES[ggml_type])
    nb = n_cols // QK
    blocks = raw.reshape(n, nb, BLOCK_BYTES[ggml_type])
    d = _fp16(blocks[..., 0:2])
    name = TYPE_NAMES[ggml_type]
    if ggml_type == Q8_0:
        q = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return BlockQuant(8, q.reshape(n, n_cols), d, np.full((n, nb), 128, np.uint8), None, name)
    if ggml_type == Q4_0:
        q = _nibbles(blocks[..., 2:])
        return BlockQuant(4, q.reshape(n, n_cols), d, np.full((n, nb), 8, np.uint8), None, name)
    # Q4_1: w = d*q + m  ->  d*(q - zp) + (m + d*zp)
    m = _fp16(blocks[..., 2:4])
    q = _nibbles(blocks[..., 4:])
    d64, m64 = d.astype(np.float64), m.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(d64 != 0, np.rint(-m64 / np.where(d64 != 0, d64, 1.0)), 0.0)
    zp = np.clip(zp, 0, 15)
    corr = (m64 + d64 * zp).astype(np.float32)
    return BlockQuant(4, q.reshape(n, n_cols), d, zp.astype(np.uint8), corr, name)


def decode_float(data: np.ndarray, ggml_type: int) -> np.ndarray:
    if ggml_type == F32:
        return np.asarray(data, dtype=np.float32)
    if ggml_type == F16:
        return np.asarray(data).view(np.float16).astype(np.float32) if np.asarray(data).dtype != np.float16 else np.asarray(data).astype(np.float32)
    raise UnsupportedTensor(f"ggml type {TYPE_NAMES.get(ggml_type, ggml_type)} is not a float type")


def is_block_type(ggml_type: int) -> bool:
    return ggml_type in BLOCK_BYTES


def supported(ggml_type: int) -> bool:
    return ggml_type in TYPE_NAMES
