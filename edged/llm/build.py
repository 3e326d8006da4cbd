"""The build: one GGUF in, one model directory out.

    decoder.onnx        LLaMA decoder with KV cache (see :mod:`graph`)
    tokenizer.json      ``tokenizers`` byte-level BPE from the GGUF vocabulary
    chat_template.json  the GGUF's chat template and its recognized format
    model.json          hyper-parameters and special token ids the engine needs
    manifest.json       sha256 of each of the above, the source file and its sha256, ...

Needs numpy, onnx, gguf and tokenizers; runs in seconds; the same GGUF and options give
byte-identical files.  Idempotent: a directory that verifies and was built from the same
source with the same options is left alone.  The directory is written next to the target
and renamed into place, so a failed build never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from . import chat, manifest
from .gguf_model import GGUFModel

BUILD_VERSION = 2  # bump whenever the files written for the same input change


HEADS = ("split4", "int8", "rescore")
KERNELS = ("", "precise", "llama")


@dataclass(frozen=True)
class BuildOptions:
    accuracy_level: int = 0  # MatMulNBits accuracy_level of the 4-bit layers (0: fp32 activations)
    # output matrix: "rescore" (int8 kernel, then the rows that could hold the maximum recomputed in
    # fp32: the exact top-1; fused graph only), "split4" (exact logits, two fp32 4-bit kernels) or
    # "int8" (int8 kernel alone, approximate).  A float output matrix is a plain fp32 MatMul under
    # any of them (exact); the option is recorded as asked.
    head: str = ""  # "": the graph's exact head (fused: "rescore", plain: "split4")
    fuse: bool = True  # q/k/v and gate/up each as one MatMulNBits
    attention: str = "gqa"  # plain graph only: "gqa" (com.microsoft.GroupQueryAttention) or "ops" (plain ONNX ops)
    graph: str = "fused"  # "fused": contrib ops, in-place KV buffers, run with IO binding; "plain": per-op graph
    external_data: bool = True  # weights in decoder.onnx.data (page-aligned; onnxruntime maps it: faster load, less RSS)
    # every block matrix (the output one too) as edged's QMatMul, compiled for this CPU into the
    # model directory (edged/llm/qkernel.py); fused graph only.  "precise": activations as two int8
    # passes (~14 bits); "llama": llama.cpp's q8 activations.  "": onnxruntime's MatMulNBits
    kernel: str = ""

    def __post_init__(self):
        if not self.head:
            object.__setattr__(self, "head", "rescore" if self.graph == "fused" else "split4")


# ``edged models pull --precision``: named sets of the options above, with edged's QMatMul kernel
# (when it can be compiled here) and without it.
# * "exact" (the default): the greedy tokens of the fp32 dequantized model.  With the kernel, every
#   block matrix runs on two int8 passes (activations to ~14 bits: within ~1e-3 of fp32, and the
#   same teacher-forced agreement with llama.cpp as the fp32 model, 97.66 %); without it, every
#   layer in fp32 and the output matrix's top-1 exact ("rescore"; the plain graph: "split4").
# * "fast": llama.cpp's own q8 arithmetic with the kernel, int8 activations (MatMulNBits
#   accuracy_level 4 and an int8 head) without it -- not exact (96.9 % / 97.4 %; docs/LLM.md).
# The manifest records the resulting options, not the name.
PRECISIONS: dict[str, tuple[dict, dict]] = {
    "exact": ({"kernel": "precise"}, {}),
    "fast": ({"kernel": "llama"}, {"accuracy_level": 4, "head": "int8"}),
}


def precision_options(precision: str = "exact", kernel: bool = False, **options) -> BuildOptions:
    """:class:`BuildOptions` for a named precision, plus other fields (e.g. ``graph``); ``kernel``:
    use QMatMul (fused graph only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (allowed: {', '.join(PRECISIONS)})")
    with_kernel, without = PRECISIONS[precision]
    use = with_kernel if kernel and options.get("graph", "fused") == "fused" else without
    return BuildOptions(**{**options, **use})


def progress_bar(enabled: bool, total: int | None, desc: str):
    """A tqdm byte counter when ``enabled`` and tqdm is installed, else a null context (None)."""
    if not enabled:
        return nullcontext(None)
    try:
        from tqdm import tqdm
    except ImportError:  # a plain line per step instead
        return nullcontext(None)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=True)


def is_current(out_dir: Path, source_sha256: str, options: BuildOptions) -> bool:
    try:
        doc = manifest.verify(out_dir)
    except manifest.ManifestError:
        return False
    if not (doc.get("source", {}).get("sha256") == source_sha256
            and doc.get("build") == {"version": BUILD_VERSION, **asdict(options)}):
        return False
    if options.kernel:  # a kernel compiled for another CPU is rebuilt for this one
        from .qkernel import cpu_signature
        try:
            info = json.loads((out_dir / "model.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return info.get("cpu") == cpu_signature() and info.get("kernel_source") == source_sha256_of_kernel()
    return True


def source_sha256_of_kernel() -> str:
    """sha256 of qmatmul.c: a model compiled from other source is rebuilt."""
    from .qkernel import SOURCE

    return manifest.sha256_file(SOURCE)


def build(gguf_path: str | Path, out_dir: str | Path, options: BuildOptions = BuildOptions(),
          progress: bool = False, source_name: str | None = None) -> dict:
    """Build (or keep) ``out_dir`` from ``gguf_path``; returns the manifest."""
    from . import graph, tokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    size = gguf_path.stat().st_size
    with progress_bar(progress, 2 * size, f"build {out_dir.name}") as bar:
        step = bar.update if bar is not None else None
        source_sha = manifest.sha256_file(gguf_path, step)
        if is_current(out_dir, source_sha, options):
            if bar is not None:
                bar.update(size)
            return manifest.read_manifest(out_dir)
        model = GGUFModel(gguf_path)
        cfg, vocab = model.config, model.vocab()
        chat_format = chat.from_template(vocab.chat_template)

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name}.build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            if options.head not in HEADS:
                raise ValueError(f"unknown head {options.head!r} (allowed: {', '.join(HEADS)})")
            if options.head == "rescore" and options.graph == "plain":
                raise ValueError('head "rescore" needs the fused graph')
            if options.kernel not in KERNELS:
                raise ValueError(f"unknown kernel {options.kernel!r} (allowed: {', '.join(k for k in KERNELS if k)})")
            if options.kernel and options.graph != "fused":
                raise ValueError(f"kernel {options.kernel!r} needs the fused graph")
            extra_files = []
            if options.kernel:
                from . import qkernel
                qkernel.compile_library(tmp / qkernel.LIBRARY, progress=progress)
                extra_files.append(qkernel.LIBRARY)
            if options.graph == "fused":
                proto = graph.build_fused_decoder(model, options.accuracy_level, options.head, kernel=options.kernel)
            elif options.graph == "plain":
                proto = graph.build_decoder(model, options.accuracy_level, options.head, options.fuse, options.attention)
            else:
                raise ValueError(f"unknown graph variant {options.graph!r} (fused | plain)")
            if options.external_data:
                _move_weights_out(proto, tmp / "decoder.onnx.data")
            data = proto.SerializeToString()
            del proto
            (tmp / "decoder.onnx").write_bytes(data)
            if step:
                step(size * 3 // 4)
            tokenizer.save_tokenizer(vocab, tmp / "tokenizer.json")
            (tmp / "chat_template.json").write_text(chat_format.to_json(), encoding="utf-8")
            stop_ids = sorted({i for i in (vocab.eos_id,) if i is not None}
                              | {vocab.tokens.index(s) for s in chat_format.stop if s in vocab.tokens})
            model_info = {
                "architecture": model.architecture,
                "config": cfg.to_dict(),
                "bos_token_id": vocab.bos_id,
                "eos_token_ids": stop_ids,
                "add_bos": vocab.add_bos,
                "pad_token_id": vocab.pad_id,
                "kv_dtype": "float32",
                "graph": options.graph,
                "custom_ops": extra_files,
            }
            if extra_files:  # compiled with -march=native: runs on this kind of CPU only
                model_info["cpu"] = qkernel.cpu_signature()
                model_info["kernel_source"] = source_sha256_of_kernel()
            (tmp / "model.json").write_text(json.dumps(model_info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            doc = manifest.write_manifest(
                tmp, ["decoder.onnx", *(["decoder.onnx.data"] if options.external_data else []),
                      "tokenizer.json", "chat_template.json", "model.json", *extra_files],
                name=out_dir.name,
                source={"file": source_name or gguf_path.name, "sha256": source_sha, "bytes": size},
                architecture=model.architecture,
                quantization={"file_type": model.file_type, "tensors": _type_counts(model)},
                build={"version": BUILD_VERSION, **asdict(options)},
            )
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            if out_dir.exists():
                out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if bar is not None:
            bar.update(2 * size - bar.n)
    return doc


EXTERNAL_MIN_BYTES = 4096
EXTERNAL_ALIGN = 4096  # page-aligned offsets (onnxruntime memory-maps the file)


def _move_weights_out(proto, path: Path) -> None:
    """Large initializers -> ``path`` (aligned offsets, deterministic), referenced as external data."""
    from onnx.external_data_helper import set_external_data

    offset = 0
    with open(path, "wb") as fh:
        for t in proto.graph.initializer:
            if len(t.raw_data) < EXTERNAL_MIN_BYTES:
                continue
            pad = -offset % EXTERNAL_ALIGN
            fh.write(b"\0" * pad)
            offset += pad
            raw = t.raw_data
            fh.write(raw)
            set_external_data(t, path.name, offset, len(raw))
            t.ClearField("raw_data")
            t.data_location = t.EXTERNAL
            offset += len(raw)
    os.chmod(path, 0o644)


def _type_counts(model: GGUFModel) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in model.tensor_types().values():
        counts[t] = counts.get(t, 0) + 1
    return dict(sorted(counts.items()))
