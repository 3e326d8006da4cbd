"""The QMatMul kernel (edged/llm/kernels/qmatmul.c): weight layout, reference, build.

QMatMul multiplies by a GGUF block matrix on int8 dot products: the activations are quantized
per block of 32 as llama.cpp's q8 does, and each block contributes ``d_w * d_x * sum(q_w * q_x)``
(+ ``m_w * s_x`` for Q4_1).  Mode "llama" is llama.cpp's own arithmetic (fp16-rounded d_x and
s_x); mode "precise" codes each block's residual a second time (~14 bits: within ~1e-3 of the
fp32 product).  :func:`reference` is either arithmetic in numpy (float64 sums), the kernel's
test oracle.

Weights are stored 16 rows side by side so that one AVX-512 VNNI instruction multiplies 4
codes of each of the 16 rows by the same 4 activation bytes: for row group ``g`` and block
``b`` the 64-byte step ``s`` holds, for row ``r`` and lane ``e`` in 0..3, at byte ``4r + e``

* 4-bit: code ``8s + e`` in the low nibble and code ``8s + 4 + e`` in the high one (s < 4);
* 8-bit: code ``4s + e`` (s < 8).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import quant

ROWS = 16  # weight rows per group (one 512-bit register of int32 sums)
TINY = 1e-30  # blocks whose largest |x| is below this count as zeros (qmatmul.c's TINY)
DOMAIN = "edged.llm"


@dataclass(frozen=True)
class Packed:
    """QMatMul's inputs 1-3 and attributes for one weight matrix."""

    codes: np.ndarray  # uint8 [G, nb, steps, 64], G = ceil(N / 16)
    scales: np.ndarray  # float16 [G, nb, 16]
    mins: np.ndarray  # float16 [G, nb, 16], or [0] when the type has none
    k: int
    n: int
    bits: int
    zero_point: int


def supported(w) -> bool:
    return isinstance(w, quant.BlockQuant) and w.source in ("Q4_0", "Q4_1", "Q8_0")


def _padded(a: np.ndarray) -> np.ndarray:
    """Rows padded with zeros to a multiple of 16 (the kernel never stores the padding's results)."""
    pad = -a.shape[0] % ROWS
    return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a


def _grouped(a: np.ndarray) -> np.ndarray:
    """[N, nb] per-block values (fp16 numbers) -> fp16 [G, nb, 16]."""
    a = _padded(a)
    n, nb = a.shape
    return np.ascontiguousarray(a.reshape(n // ROWS, ROWS, nb).transpose(0, 2, 1).astype(np.float16))


def ggml_mins(w: "quant.BlockQuant") -> np.ndarray:
    """Q4_1's per-block min m (``w = d q + m``), recovered exactly: ``corr - d zp`` is within far
    less than half an fp16 step of GGUF's fp16 m, so rounding to fp16 gives m back."""
    return (w.corr.astype(np.float64) - w.scale.astype(np.float64) * w.zp).astype(np.float16)


def pack(w: "quant.BlockQuant") -> Packed:
    if not supported(w):
        raise ValueError(f"QMatMul takes Q4_0, Q4_1 or Q8_0 matrices, not {w.source}")
    n, k = w.shape
    nb, g = k // quant.QK, -(-n // ROWS)
    codes = _padded(w.q).reshape(g, ROWS, nb, quant.QK).transpose(0, 2, 1, 3)  # [g, b, r, 32]
    if w.bits == 4:
        c = codes.reshape(g, nb, ROWS, 4, 2, 4)  # [g, b, r, s, half, e]: code 8s + 4 half + e
        packed = c[..., 0, :] | (c[..., 1, :] << 4)  # [g, b, r, s, e]
        steps = 4
    else:
        packed = codes.reshape(g, nb, ROWS, 8, 4)
        steps = 8
    packed = np.ascontiguousarray(packed.transpose(0, 1, 3, 2, 4).reshape(g, nb, steps, 64).astype(np.uint8))
    if w.source == "Q4_1":
        # w = d * q + m: codes are q itself, the ggml min is carried separately
        mins = _grouped(ggml_mins(w))
        zero_point = 0
    else:
        mins = np.zeros(0, np.float16)
        zero_point = 8 if w.source == "Q4_0" else 128
    return Packed(packed, _grouped(w.scale), mins, k, n, w.bits, zero_point)


def _fp16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(np.float16).astype(np.float64)


def _q8(x: np.ndarray):
    """Blocks of 32 of x [M, K], their scale d = amax / 127 and codes round(x * 127 / amax)."""
    x = np.asarray(x, np.float32)
    m, k = x.shape
    xb = x.reshape(m, k // quant.QK, quant.QK)
    amax = np.abs(xb).max(-1)
    amax = np.where(amax < np.float32(TINY), np.float32(0), amax)  # 127 / amax would overflow
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / np.where(amax != 0, amax, 1), 0).astype(np.float32)
    return xb, amax / np.float32(127), np.rint(xb * inv[..., None]).astype(np.int32)  # rint: ties to even


def quantize_activations(x: np.ndarray):
    """llama.cpp's q8_1: int8 codes, fp16 scale, fp16 ``d * sum`` per block of 32."""
    _, d, q = _q8(x)
    s = q.sum(-1)
    return q, _fp16(d), _fp16(d * s.astype(np.float32)), s


def quantize_precise(x: np.ndarray):
    """Precise mode: codes ``128 q + q2`` in units of ``d / 128`` (q2: the residual's int8 code),
    that unit, and the fp32 block sums."""
    xb, d, q = _q8(x)
    unit = d / np.float32(128)
    with np.errstate(divide="ignore"):
        inv_unit = np.where(d != 0, np.float32(1) / np.where(d != 0, unit, 1), 0).astype(np.float32)
    q2 = np.clip(np.rint((xb - d[..., None] * q.astype(np.float32)) * inv_unit[..., None]), -127, 127).astype(np.int32)
    return 128 * q + q2, unit.astype(np.float64), xb.sum(-1, dtype=np.float32).astype(np.float64)


def reference(x: np.ndarray, w: "quant.BlockQuant", precise: bool = False) -> np.ndarray:
    """x [M, K] @ w.T with QMatMul's arithmetic (float64 sums): llama.cpp's, or the precise mode."""
    if precise:
        q, d, s = quantize_precise(x)
    else:
        q, d, s, _ = quantize_activations(x)
    n, k = w.shape
    nb = k // quant.QK
    codes = w.q.reshape(n, nb, quant.QK).astype(np.int64)
    if w.source == "Q4_1":
        signed = codes
        mins = ggml_mins(w).astype(np.float64)
    else:
        signed = codes - (8 if w.source == "Q4_0" else 128)
        mins = None
    isum = np.einsum("mbk,nbk->mnb", q.astype(np.int64), signed)
    out = np.einsum("mnb,nb,mb->mn", isum.astype(np.float64), w.scale.astype(np.float64), d)
    if mins is not None:
        out += np.einsum("nb,mb->mn", mins, s)
    return out


# --- building the library ------------------------------------------------------------------
#
# The op is compiled on the machine that runs it (``-march=native``: AVX-512 VNNI where the CPU
# has it), when a model is built.  That needs a C compiler and onnxruntime's C API header, which
# no PyPI or Debian package here ships; the npm registry does, inside a Unity plugin package that
# redistributes onnxruntime's release files (MIT).  Only the three headers are taken out of it,
# after the whole download matched its pinned sha256.

LIBRARY = "qmatmul.so"
SOURCE = Path(__file__).with_name("kernels") / "qmatmul.c"
HEADERS = ("onnxruntime_c_api.h", "onnxruntime_error_code.h", "onnxruntime_ep_c_api.h")
HEADERS_URL = "https://registry.npmjs.org/com.github.asus4.onnxruntime/-/com.github.asus4.onnxruntime-0.4.9.tgz"
HEADERS_SHA256 = "e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d"  # onnxruntime 1.29's headers
HEADERS_MEMBER_DIR = "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers/"


class KernelBuildError(RuntimeError):
    """The QMatMul library cannot be compiled here (no compiler, no onnxruntime header)."""


def header_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edged" / "ort-include"


def _has_headers(folder: Path) -> bool:
    return all((folder / h).is_file() for h in HEADERS)


def fetch_headers(cache: Path | None = None, url: str = HEADERS_URL, sha256: str = HEADERS_SHA256,
                  progress: bool = False) -> Path:
    """onnxruntime's C headers in ``cache`` (default :func:`header_cache`), downloaded once."""
    import tarfile
    import tempfile

    cache = Path(cache or header_cache())
    if _has_headers(cache):
        return cache
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".ort-include-", dir=cache.parent) as tmp:
            part = Path(tmp) / "package.tgz"
            got = _download(url, part, progress)
            if got != sha256:
                raise KernelBuildError(f"{url}: sha256 {got} is not the pinned {sha256}")
            found = Path(tmp) / "include"
            found.mkdir()
            with tarfile.open(part, "r:gz") as tar:
                for name in HEADERS:
                    src = tar.extractfile(HEADERS_MEMBER_DIR + name)
                    if src is None:
                        raise KeyError(name)
                    (found / name).write_bytes(src.read())
            try:
                os.replace(found, cache)  # atomic; fails if another process filled the cache first
            except OSError:
                if not _has_headers(cache):
                    raise
    except (OSError, tarfile.TarError, KeyError) as exc:
        raise KernelBuildError(f"fetching onnxruntime's C headers from {url} into {cache} failed: {exc}") from None
    return cache


def _download(url: str, path: Path, progress: bool) -> str:
    """``url`` into ``path``; its sha256."""
    import hashlib
    import urllib.request

    from .build import progress_bar

    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as resp, open(path, "wb") as out:
        with progress_bar(progress, int(resp.headers.get("Content-Length") or 0) or None, "onnxruntime headers") as bar:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    return digest.hexdigest()


def ort_include_dir(progress: bool = False) -> Path:
    """``$ORT_INCLUDE_DIR`` when set, else the cache (downloaded the first time)."""
    env = os.environ.get("ORT_INCLUDE_DIR")
    if env:
        if not _has_headers(Path(env)):
            raise KernelBuildError(f"ORT_INCLUDE_DIR={env} does not hold {', '.join(HEADERS)}")
        return Path(env)
    return fetch_headers(progress=progress)


def compiler() -> list[str]:
    """The C compiler's command words: ``$CC`` (may carry flags), else cc or gcc on PATH."""
    import shlex

    cc = shlex.split(os.environ.get("CC", "")) or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not cc or not shutil.which(cc[0]):
        raise KernelBuildError(f"no C compiler ({' '.join(cc) if cc else 'cc or gcc'} not found): install gcc, "
                               "or build without the kernel (--kernel no)")
    return cc


def compile_library(out: Path, include: Path | None = None, march: str = "native", progress: bool = False) -> Path:
    """Compile :data:`SOURCE` into ``out`` for this CPU (``-march=native``) or another target."""
    include = include or ort_include_dir(progress=progress)
    # -ffp-contract=off: no fused multiply-adds, so the codes are the numpy reference's exactly
    cmd = [*compiler(), "-O3", f"-march={march}", "-ffp-contract=off", "-std=gnu11", "-shared", "-fPIC",
           f"-I{include}", str(SOURCE), "-o", str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise KernelBuildError(f"running {cmd[0]} failed: {exc}") from None
    if done.returncode:
        raise KernelBuildError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr.strip()[-2000:]}")
    return out


# x86 flags that name instruction sets a -march=native build may use (the rest -- hypervisor,
# frequency, bug bits -- can differ between boots of the same machine)
_ISA_PREFIXES = ("avx", "sse", "ssse", "fma", "f16c", "bmi", "amx", "vaes", "vpclmul", "gfni", "sha", "aes",
                 "popcnt", "movbe", "adx", "abm", "lzcnt")


# inner loops faster than onnxruntime's own kernels at both decode and prompts.  The 256-bit loops
# (avx-vnni, avx2) decode faster (this session's Xeon, 1 thread: 49-61 vs 40-42 tok/s) but take
# a prompt at less than half the graph's speed (rows not tiled: 150 vs 356 tok/s), and a daemon's
# answers are mostly prompt, so only --kernel yes builds them (docs/LLM.md)
SIMD_PATHS = ("avx512-vnni",)


def check_worthwhile(progress: bool = False) -> str:
    """Compile the op for this CPU in a scratch folder; its inner loop's name when that loop is
    faster than onnxruntime's kernels, else :class:`KernelBuildError` saying why."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="edged-qmatmul-") as tmp:
            path = library_path(compile_library(Path(tmp) / LIBRARY, progress=progress))
    except OSError as exc:
        raise KernelBuildError(f"a scratch build of the kernel failed: {exc}") from None
    if path not in SIMD_PATHS:
        raise KernelBuildError(f"this CPU gets QMatMul's {path} loop (no AVX-512 VNNI), which is slower than "
                               "onnxruntime's own kernels on prompts (--kernel yes builds it anyway)")
    return path


def library_path(library: Path) -> str:
    """The inner loop a compiled library runs: "avx512-vnni", "avx-vnni", "avx2" or "portable" (plain
    C: correct, but slower than onnxruntime's MatMulNBits, so `--kernel auto` does not use it)."""
    import ctypes

    try:
        fn = ctypes.CDLL(str(library)).qmatmul_path
    except (OSError, AttributeError) as exc:  # e.g. a noexec temporary folder
        raise KernelBuildError(f"loading {library} failed: {exc}") from None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def cpu_signature() -> str:
    """What a ``-march=native`` build depends on: the architecture and its instruction-set flags."""
    import hashlib
    import platform

    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key = line.split(":")[0].strip()
            if key in ("flags", "Features"):
                flags = line.split(":", 1)[1].split()
                if key == "flags":
                    flags = [f for f in flags if f.startswith(_ISA_PREFIXES)]
                break
    except OSError:
        pass
    return f"{platform.machine()}:{hashlib.sha256(' '.join(sorted(set(flags))).encode()).hexdigest()[:16]}"
