"""Models: manifests, the model store, inference sessions (onnxruntime, LiteRT), embeddings.

Nothing here imports numpy, onnxruntime, tokenizers or LiteRT at import time: they are loaded
when a session opens. Host-side building (``kestrel models build``) lives in
:mod:`kestrel.inference.build` and is never imported by the device runtime. See docs/models.md.
"""

from __future__ import annotations

from .embedding import Embedder, mean_pool
from .manifest import (
    Manifest,
    ManifestError,
    ModelHashError,
    TensorSpec,
    VerifiedManifest,
    parse_manifest,
    verify_digests,
)
from .options import RuntimeOptions
from .runner import ModelRunner, run_model, threshold_exceeded
from .session import InputError, LiteRtSession, OrtSession, Session, open_session
from .store import InstalledModel, ModelNotFoundError, ModelStore, load_model_dir

__all__ = [
    "Embedder",
    "mean_pool",
    "Manifest",
    "ManifestError",
    "ModelHashError",
    "TensorSpec",
    "VerifiedManifest",
    "parse_manifest",
    "verify_digests",
    "RuntimeOptions",
    "ModelRunner",
    "run_model",
    "threshold_exceeded",
    "InputError",
    "LiteRtSession",
    "OrtSession",
    "Session",
    "open_session",
    "InstalledModel",
    "ModelNotFoundError",
    "ModelStore",
    "load_model_dir",
]
