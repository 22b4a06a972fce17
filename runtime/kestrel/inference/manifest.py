"""Model manifests: the pure core (bytes in, typed values out, no I/O).

A manifest (``manifest.json``, format ``kestrel.model/1``, see docs/models.md) names a model,
its runtime, the sha256 of every file, its inputs and outputs, preprocessing, quantization,
source and license. :func:`parse_manifest` checks its structure; :func:`verify_digests`
checks measured file digests against it and returns a :class:`VerifiedManifest` or raises.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "RUNTIMES",
    "DTYPES",
    "ManifestError",
    "ModelHashError",
    "TensorSpec",
    "FileEntry",
    "Manifest",
    "VerifiedManifest",
    "parse_manifest",
    "encode_manifest",
    "verify_digests",
]

MANIFEST_FORMAT = "kestrel.model/1"
MANIFEST_NAME = "manifest.json"
RUNTIMES = ("onnx", "tflite")
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_MANIFEST_BYTES = 1 << 20


class ManifestError(DataError):
    """A model manifest is malformed or inconsistent with its model."""


class ModelHashError(DataError):
    """A model file does not match the sha256 its manifest names."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, dtype and shape (``None`` or a string for a free axis)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A parsed (not yet verified) manifest."""

    name: str
    version: str
    runtime: str
    model_file: str
    files: tuple[FileEntry, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    task: str
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    postprocessing: Mapping[str, Any] = field(default_factory=dict)
    quantization: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    license: str = ""
    build: Mapping[str, Any] = field(default_factory=dict)
    digest: str = ""  # sha256 hex of the exact manifest bytes

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise ManifestError(f"model {self.name}: manifest lists no file {path!r}")

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise ManifestError(f"model {self.name}: manifest names no input {name!r}")


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose every file was measured and matched. Only ``verify_digests`` makes one."""

    manifest: Manifest


def _req(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ManifestError(f"{where}: missing key {key!r}", hint="rebuild the model with `kestrel models build`")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ManifestError(f"{where}: key {key!r} has the wrong type ({type(value).__name__})")
    return value


def _tensor(obj: Any, where: str) -> TensorSpec:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: must be an object")
    name = _req(obj, "name", str, where)
    dtype = _req(obj, "dtype", str, where)
    if dtype not in DTYPES:
        raise ManifestError(f"{where}: unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    shape = _req(obj, "shape", list, where)
    dims: list[int | str | None] = []
    for d in shape:
        if d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0):
            dims.append(d)
        else:
            raise ManifestError(f"{where}: bad dimension {d!r} in shape")
    return TensorSpec(name=name, dtype=dtype, shape=tuple(dims))


def _tensors(obj: Mapping[str, Any], key: str, where: str) -> tuple[TensorSpec, ...]:
    items = _req(obj, key, list, where)
    if not items:
        raise ManifestError(f"{where}: {key} is empty")
    specs = tuple(_tensor(t, f"{where}: {key}[{i}]") for i, t in enumerate(items))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}: duplicate names in {key}")
    return specs


def parse_manifest(data: bytes, *, source: str = "<manifest>") -> Manifest:
    """Parse manifest bytes; raise :class:`ManifestError` naming ``source`` on any defect."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{source}: not valid JSON ({exc})", hint="rebuild the model") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{source}: manifest must be a JSON object")
    fmt = obj.get("format")
    if fmt != MANIFEST_FORMAT:
        raise ManifestError(f"{source}: unsupported format {fmt!r}, expected {MANIFEST_FORMAT!r}")
    name = _req(obj, "name", str, source)
    if not _NAME_RE.match(name):
        raise ManifestError(f"{source}: bad model name {name!r}", hint="lowercase letters, digits, . _ -")
    runtime = _req(obj, "runtime", str, source)
    if runtime not in RUNTIMES:
        raise ManifestError(f"{source}: unknown runtime {runtime!r}", hint=f"use one of {', '.join(RUNTIMES)}")
    files_obj = _req(obj, "files", dict, source)
    files = []
    for path, entry in sorted(files_obj.items()):
        where = f"{source}: files[{path!r}]"
        if not _FILE_RE.match(path):
            raise ManifestError(f"{where}: file names must be plain names inside the model folder")
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: must be an object")
        digest = _req(entry, "sha256", str, where)
        if not _HEX64.match(digest):
            raise ManifestError(f"{where}: sha256 must be 64 lowercase hex digits")
        size = _req(entry, "size", int, where)
        files.append(FileEntry(path=path, sha256=digest, size=size))
    model_file = _req(obj, "model_file", str, source)
    if model_file not in files_obj:
        raise ManifestError(f"{source}: model_file {model_file!r} is not listed in files")
    pre = obj.get("preprocessing", {})
    for key in ("tokenizer",):
        ref = pre.get(key) if isinstance(pre, dict) else None
        if ref is not None and ref not in files_obj:
            raise ManifestError(f"{source}: preprocessing.{key} {ref!r} is not listed in files")
    maps = {}
    for key in ("preprocessing", "postprocessing", "quantization", "source", "build"):
        value = obj.get(key, {})
        if not isinstance(value, dict):
            raise ManifestError(f"{source}: {key} must be an object")
        maps[key] = value
    return Manifest(
        name=name,
        version=_req(obj, "version", str, source),
        runtime=runtime,
        model_file=model_file,
        files=tuple(files),
        inputs=_tensors(obj, "inputs", source),
        outputs=_tensors(obj, "outputs", source),
        task=_req(obj, "task", str, source),
        license=_req(obj, "license", str, source),
        digest=hashlib.sha256(data).hexdigest(),
        **maps,
    )


def encode_manifest(obj: Mapping[str, Any]) -> bytes:
    """Canonical bytes for a manifest object (sorted keys, two-space indent, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def verify_digests(manifest: Manifest, measured: Mapping[str, tuple[str, int]]) -> VerifiedManifest:
    """Check ``measured`` (path -> (sha256 hex, size)) against every file of ``manifest``."""
    for entry in manifest.files:
        got = measured.get(entry.path)
        if got is None:
            raise ModelHashError(
                f"model {manifest.name}: file {entry.path} is missing",
                hint="rebuild or re-copy the model folder",
            )
        digest, size = got
        if digest != entry.sha256 or size != entry.size:
            raise ModelHashError(
                f"model {manifest.name}: {entry.path} does not match its manifest "
                f"(sha256 {digest[:16]}..., {size} bytes; expected {entry.sha256[:16]}..., {entry.size} bytes)",
                hint="the file is corrupt or was replaced; rebuild it with `kestrel models build` and redeploy",
            )
    return VerifiedManifest(manifest=manifest)
