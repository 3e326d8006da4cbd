"""manifest.json: what a model directory holds and where it came from; verification."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A model directory that does not match its manifest: refuse to load it."""


def sha256_file(path: str | Path, progress=None, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            if progress is not None:
                progress(len(block))
    return h.hexdigest()


def write_manifest(model_dir: Path, files: list[str], **info) -> dict:
    """``files`` relative to ``model_dir``; ``info`` (source, architecture, ...) as is.  Deterministic."""
    doc = {"format_version": FORMAT_VERSION, **info,
           "files": {name: {"sha256": sha256_file(model_dir / name), "bytes": (model_dir / name).stat().st_size}
                     for name in sorted(files)}}
    (model_dir / MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return doc


def read_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: missing") from exc
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc})") from exc
    if doc.get("format_version") != FORMAT_VERSION or not isinstance(doc.get("files"), dict):
        raise ManifestError(f"{path}: unknown manifest format")
    return doc


def verify(model_dir: str | Path) -> dict:
    """Check every file's size and sha256; return the manifest or raise :class:`ManifestError`."""
    model_dir = Path(model_dir)
    doc = read_manifest(model_dir)
    for name, meta in sorted(doc["files"].items()):
        path = model_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ManifestError(f"{name}: path outside the model directory")
        if not path.is_file():
            raise ManifestError(f"{name}: missing")
        if path.stat().st_size != meta["bytes"] or sha256_file(path) != meta["sha256"]:
            raise ManifestError(f"{name}: sha256 mismatch (file changed or corrupt)")
    return doc
