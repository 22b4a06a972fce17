"""Language models behind one interface (docs/llm.md).

``LanguageModel.generate(prompt, *, options, cancel) -> Stream``: a prompt (text
or token ids) in, streamed :class:`TokenEvent` values out (sync or async
iteration), then a :class:`Completion`. Backends:

* ``onnx`` (:class:`OnnxLanguageModel`): a decoder exported by optimum with its
  KV cache, run by onnxruntime with the model's `tokenizers` tokenizer;
* ``openai`` (:class:`OpenAIModel`): an OpenAI-compatible endpoint on the owner's
  hardware, allowed only where the policy permits ``llm.request`` to its host;
* ``scripted`` (:class:`ScriptedModel`): replays given replies (tests, demos).

Backends import numpy/onnxruntime/tokenizers lazily; importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

from .base import (
    Completion,
    EndpointError,
    EndpointRefusedError,
    GenerationOptions,
    LanguageModel,
    ModelLoadError,
    Stream,
    TokenEvent,
)
from .registry import LocalLLM, open_local_llm, register_local_llm, registered_llm

__all__ = [
    "Completion",
    "EndpointError",
    "EndpointRefusedError",
    "GenerationOptions",
    "LanguageModel",
    "LocalLLM",
    "ModelLoadError",
    "OnnxLanguageModel",
    "OpenAIModel",
    "ScriptedModel",
    "Stream",
    "TokenEvent",
    "open_local_llm",
    "register_local_llm",
    "registered_llm",
]

_LAZY = {"OnnxLanguageModel": ".onnx", "OpenAIModel": ".openai", "ScriptedModel": ".scripted"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)
