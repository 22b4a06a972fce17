"""Text to vectors: tokenizers + an ONNX encoder + mean pooling + L2 normalisation.

The model's manifest drives the pipeline (docs/models.md, ``preprocessing`` of task
``embedding``): ``tokenizer`` (a tokenizer.json listed in the manifest), ``max_length``,
``pooling`` (``mean`` over the attention mask) and ``normalize``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import DataError
from .manifest import ManifestError
from .options import RuntimeOptions
from .session import Session, open_session
from .store import InstalledModel

__all__ = ["Embedder", "mean_pool"]


def mean_pool(hidden: Any, mask: Any, *, normalize: bool = True) -> Any:
    """Average token vectors where ``mask`` is 1; L2-normalise each row if asked."""
    import numpy as np

    m = mask[..., None].astype(np.float32)
    summed = (hidden * m).sum(axis=1)
    counts = np.clip(m.sum(axis=1), 1e-9, None)
    vec = summed / counts
    if normalize:
        vec /= np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
    return vec.astype(np.float32, copy=False)


class Embedder:
    """Sentence embeddings from an installed ``embedding`` model. Thread-safe."""

    def __init__(
        self, model: InstalledModel, *, options: RuntimeOptions | None = None, session: Session | None = None
    ) -> None:
        from tokenizers import Tokenizer

        man = model.manifest
        if man.task != "embedding":
            raise ManifestError(f"model {man.name} has task {man.task!r}, not 'embedding'")
        pre = man.preprocessing
        tok_file = pre.get("tokenizer")
        if not isinstance(tok_file, str):
            raise ManifestError(f"model {man.name}: preprocessing.tokenizer is not set")
        self.model = model
        self.session = session or open_session(model, options)
        self.max_length = int(pre.get("max_length", 256))
        self.normalize = bool(pre.get("normalize", True))
        if pre.get("pooling", "mean") != "mean":
            raise ManifestError(f"model {man.name}: pooling {pre.get('pooling')!r} is not supported (use 'mean')")
        try:
            tok = Tokenizer.from_file(str(model.file(tok_file)))
        except Exception as exc:
            raise ManifestError(f"model {man.name}: cannot load tokenizer {tok_file}: {exc}") from None
        tok.enable_truncation(self.max_length)
        tok.no_padding()  # tokenizer.json files may pin a fixed padded length
        self._tok = tok
        self._input_names = {s.name for s in man.inputs}
        self.output = str(pre.get("output", man.outputs[0].name))
        self.dim = int(man.outputs[0].shape[-1])  # type: ignore[arg-type]

    def embed(self, texts: Sequence[str]) -> Any:
        """Return a float32 array of shape (len(texts), dim)."""
        import numpy as np

        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings; wrap one text in a list")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        for t in texts:
            if not isinstance(t, str):
                raise DataError(f"cannot embed a {type(t).__name__}; texts must be strings")
        # One text per run: int8 dynamic quantization scales activations per tensor, so in a
        # padded batch a text's vector would depend on its neighbours. Stored and query vectors
        # must not, so every text is embedded alone (its own length, no padding).
        out = np.empty((len(texts), self.dim), np.float32)
        for i, enc in enumerate(self._tok.encode_batch(list(texts))):
            ids = np.array([enc.ids], dtype=np.int64)
            mask = np.array([enc.attention_mask], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feed["token_type_ids"] = np.zeros_like(ids)
            out[i] = mean_pool(self.session.run(feed)[self.output], mask, normalize=self.normalize)[0]
        return out

    def embed_one(self, text: str) -> Any:
        return self.embed([text])[0]
