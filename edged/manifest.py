"""Model manifests: what a model directory holds, checked before anything loads it.

``models/<name>/manifest.json`` names the model, its task, every file with its sha256, the
ONNX inputs/outputs, the quantization and where it came from. ``verify`` refuses a
directory whose files are missing or altered, with a message naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST = "manifest.json"


class ModelError(Exception):
    """A model that must not be loaded; the message says which file and why."""


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    dtype: str
    shape: list[int | str]


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = None
    role: str = ""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    task: str
    files: list[FileEntry]
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    quantization: dict[str, Any] | str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    def file(self, role: str) -> FileEntry:
        for entry in self.files:
            if entry.role == role:
                return entry
        raise ModelError(f"manifest of {self.name} lists no file with role {role!r}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} does not exist: not a model directory") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} cannot be read as JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("files"), dict):  # {"name": {"sha256", "bytes"}} form
        data["files"] = [{"path": name, **entry} for name, entry in data["files"].items()]
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ModelError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def verify(directory: Path) -> Manifest:
    """Read the manifest and check every file's size and sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for entry in manifest.files:
        target = (directory / entry.path).resolve()
        if directory.resolve() not in target.parents:
            raise ModelError(f"{manifest.name}: file {entry.path!r} lies outside the model directory")
        if not target.is_file():
            raise ModelError(f"{manifest.name}: file {entry.path} is missing from {directory}")
        if entry.bytes is not None and target.stat().st_size != entry.bytes:
            raise ModelError(f"{manifest.name}: {entry.path} has {target.stat().st_size} bytes, manifest says {entry.bytes}")
        actual = sha256_file(target)
        if actual != entry.sha256:
            raise ModelError(
                f"{manifest.name}: sha256 of {entry.path} is {actual[:16]}…, manifest says {entry.sha256[:16]}… "
                "(file altered or corrupt: rebuild or reinstall the model)"
            )
    return manifest


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest.model_dump(exclude_none=True), indent=2, sort_keys=False) + "\n")
    return path
