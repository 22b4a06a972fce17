"""The ``onnx`` backend: a decoder exported by optimum, run by onnxruntime.

The model directory holds what ``optimum.exporters.onnx`` writes for the task
``text-generation-with-past``: ``model.onnx`` (inputs ``input_ids``,
``attention_mask``, optionally ``position_ids`` / ``use_cache_branch`` and
``past_key_values.{i}.key|value``; outputs ``logits`` and ``present.{i}.key|value``),
``config.json`` and ``tokenizer.json`` (a `tokenizers` file). See docs/llm.md.

With ``use_cache=True`` (the default) the prompt is run once and each further
step feeds one token plus the cache; with ``use_cache=False`` every step
recomputes the whole sequence (the baseline the benchmark and tests compare with).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ...errors import UsageError
from .base import GenerationOptions, ModelLoadError, Piece, Stream, drive
from .sampling import Sampler

__all__ = ["OnnxLanguageModel", "file_digest"]

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "float32"}


def file_digest(paths: Sequence[Path]) -> str:
    """sha256 over the given files, in order (streamed; fine for multi-GB weights)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class _Detokenizer:
    """Turns token ids into text incrementally, never splitting a UTF-8 character."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._cache: list[int] = []
        self._printed = 0

    def add(self, token_id: int) -> str:
        self._cache.append(token_id)
        text = self._tok.decode(self._cache, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        out = text[self._printed :]
        if text.endswith((" ", "\n")):
            self._cache, self._printed = [], 0
        else:
            self._printed = len(text)
        return out


class OnnxLanguageModel:
    """A local decoder with KV cache. Thread-safe: one generation runs at a time."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        threads: int | None = None,
        digest: str | None = None,
        name: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        model_path = self.model_dir / "model.onnx"
        tok_path = self.model_dir / "tokenizer.json"
        for path in (model_path, tok_path):
            if not path.is_file():
                raise ModelLoadError(
                    f"LLM directory {self.model_dir} has no {path.name}",
                    hint="export the model with optimum (task text-generation-with-past); see docs/llm.md",
                )
        self.config = self._read_config()
        weights = sorted(self.model_dir.glob("model.onnx*"))  # model.onnx_data: external weights of big models
        self.digest = digest or file_digest([*weights, tok_path])
        self._tokenizer = self._load_tokenizer(tok_path)
        self._session = self._load_session(model_path, threads)
        self._inspect_inputs()
        self.context_length = int(self.config.get("n_positions") or self.config.get("max_position_embeddings") or 2048)
        eos = self.config.get("eos_token_id")
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._lock = threading.Lock()

    # -- loading ----------------------------------------------------------------
    def _read_config(self) -> dict[str, Any]:
        path = self.model_dir / "config.json"
        if not path.is_file():
            return {}
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ModelLoadError(f"{path} must hold a JSON object")
        return config

    def _load_tokenizer(self, path: Path) -> Any:
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ModelLoadError(
                f"tokenizer {path} is corrupt or not a `tokenizers` file: {exc}",
                hint="re-export the model; the tokenizer.json must come from the same export",
            ) from None

    def _load_session(self, path: Path, threads: int | None) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = False
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf classes
            raise ModelLoadError(
                f"model {path} could not be loaded by onnxruntime: {str(exc).splitlines()[0]}",
                hint="the file is corrupt or truncated; rebuild or re-copy it and check its sha256",
            ) from None

    def _inspect_inputs(self) -> None:
        import numpy as np

        inputs = {i.name: i for i in self._session.get_inputs()}
        if "input_ids" not in inputs:
            raise ModelLoadError(f"{self.model_dir}/model.onnx has no input_ids input; not a decoder")
        self._past: list[tuple[str, str, tuple[int, int], Any]] = []
        for name, meta in inputs.items():
            m = _PAST.match(name)
            if not m:
                continue
            dims = [d if isinstance(d, int) else None for d in meta.shape]
            if len(dims) != 4 or dims[1] is None or dims[3] is None:
                raise ModelLoadError(f"{name} has shape {meta.shape}; expected [batch, heads, past, head_dim]")
            present = f"present.{m.group(1)}.{m.group(2)}"
            dtype = np.dtype(_DTYPES.get(meta.type, "float32"))
            self._past.append((name, present, (dims[1], dims[3]), dtype))
        self._past.sort(key=lambda p: (int(_PAST.match(p[0]).group(1)), p[0]))  # type: ignore[union-attr]
        if not self._past:
            raise ModelLoadError(
                f"{self.model_dir}/model.onnx has no past_key_values inputs",
                hint="export with task text-generation-with-past so the KV cache is an input",
            )
        outputs = {o.name for o in self._session.get_outputs()}
        missing = [p[1] for p in self._past if p[1] not in outputs] + (["logits"] if "logits" not in outputs else [])
        if missing:
            raise ModelLoadError(f"{self.model_dir}/model.onnx lacks outputs {missing}")
        self._has_positions = "position_ids" in inputs
        self._has_branch = "use_cache_branch" in inputs
        self._has_mask = "attention_mask" in inputs
        self._out_names = ["logits"] + [p[1] for p in self._past]

    # -- tokens -----------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # -- generation -------------------------------------------------------------
    def empty_cache(self) -> dict[str, Any]:
        import numpy as np

        return {name: np.zeros((1, h, 0, d), dtype=dt) for name, _, (h, d), dt in self._past}

    def forward(self, ids: Sequence[int], past: dict[str, Any], past_len: int) -> tuple[Any, dict[str, Any]]:
        """One onnxruntime call: logits of the last position and the new cache."""
        import numpy as np

        n = len(ids)
        feed: dict[str, Any] = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if self._has_mask:
            feed["attention_mask"] = np.ones((1, past_len + n), dtype=np.int64)
        if self._has_positions:
            feed["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None, :]
        if self._has_branch:
            feed["use_cache_branch"] = np.asarray([past_len > 0])
        feed.update(past)
        out = self._session.run(self._out_names, feed)
        logits = np.asarray(out[0][0, -1], dtype=np.float32)
        new_past = {p[0]: arr for p, arr in zip(self._past, out[1:], strict=False)}
        return logits, new_past

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        options: GenerationOptions = GenerationOptions(),
        cancel: threading.Event | None = None,
        use_cache: bool = True,
    ) -> Stream:
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise UsageError("the prompt is empty")
        if len(ids) >= self.context_length:
            raise UsageError(
                f"the prompt has {len(ids)} tokens; {self.name} holds at most {self.context_length - 1}",
                hint="shorten the prompt or give less memory context",
            )
        return drive(
            lambda: self._pieces(ids, options, use_cache),
            options=options,
            prompt_tokens=len(ids),
            cancel=cancel,
        )

    def _pieces(self, ids: list[int], options: GenerationOptions, use_cache: bool) -> Iterator[Piece]:
        with self._lock:
            sampler = Sampler(options)
            detok = _Detokenizer(self._tokenizer)
            seq = list(ids)
            past, feed = self.empty_cache(), list(ids)
            while True:
                if use_cache:
                    logits, past = self.forward(feed, past, len(seq) - len(feed))
                else:
                    logits, _ = self.forward(seq, self.empty_cache(), 0)
                token = sampler.pick(logits)
                if token in self.eos_ids:
                    return
                seq.append(token)
                feed = [token]
                yield Piece((token,), detok.add(token))
                if len(seq) >= self.context_length:
                    yield Piece((), "", final="context")
                    return
