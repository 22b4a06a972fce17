"""Runtime options for inference sessions, read from a board profile (pure, no imports of ORT)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["RuntimeOptions", "PROVIDERS"]

PROVIDERS = ("cpu", "cuda", "tensorrt")


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a model on this board.

    ``providers`` is in preference order; ``cpu`` is always appended as the last resort.
    ``engine_cache_dir`` is where TensorRT keeps built engines (Jetson boards), so the minutes
    of engine building happen once per model, not once per boot.
    """

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    cpu_arena: bool = False
    spinning: bool = False
    providers: tuple[str, ...] = ("cpu",)
    engine_cache_dir: Path | None = None
    fp16: bool = False
    require_accelerator: bool = False

    @classmethod
    def from_profile(
        cls, profile: Any, *, engine_cache_dir: Path | None = None, source: str = "<profile>"
    ) -> RuntimeOptions:
        """Options from a board profile: a :class:`kestrel.io.boards.BoardProfile` (its ``ort_*``
        fields) or the mapping of a profile's ``onnxruntime:`` section (docs/models.md)."""
        if profile is None:
            return cls()
        if hasattr(profile, "ort_providers"):
            section: Mapping[str, Any] = {
                "intra_op_threads": profile.ort_intra_threads,
                "inter_op_threads": profile.ort_inter_threads,
                "providers": list(profile.ort_providers),
            }
            source = getattr(profile, "source", source)
        elif isinstance(profile, Mapping):
            section = profile
        else:
            raise ConfigError("board profile must be a BoardProfile or a mapping", path=source)
        known = {
            "intra_op_threads",
            "inter_op_threads",
            "cpu_arena",
            "spinning",
            "providers",
            "engine_cache_dir",
            "fp16",
            "require_accelerator",
        }
        for key in section:
            if key not in known:
                raise ConfigError(
                    f"unknown key (known: {', '.join(sorted(known))})", path=source, key=f"onnxruntime.{key}"
                )
        kwargs: dict[str, Any] = {}
        for key in ("intra_op_threads", "inter_op_threads"):
            if key in section:
                v = section[key]
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 256:
                    raise ConfigError("must be an integer 0..256 (0 = one per core)", path=source, key=key)
                kwargs[key] = v
        for key in ("cpu_arena", "spinning", "fp16", "require_accelerator"):
            if key in section:
                if not isinstance(section[key], bool):
                    raise ConfigError("must be true or false", path=source, key=key)
                kwargs[key] = section[key]
        if "providers" in section:
            prov = section["providers"]
            short = [_SHORT.get(p, p) for p in prov] if isinstance(prov, (list, tuple)) else None
            if short is None or not all(p in PROVIDERS for p in short):
                raise ConfigError(
                    f"must be a list of {', '.join(PROVIDERS)} (or their onnxruntime names)",
                    path=source,
                    key="providers",
                )
            kwargs["providers"] = tuple(dict.fromkeys(short))
        cache = section.get("engine_cache_dir", engine_cache_dir)
        if cache is not None:
            if not isinstance(cache, (str, Path)):
                raise ConfigError("must be a path", path=source, key="engine_cache_dir")
            kwargs["engine_cache_dir"] = Path(cache)
        return cls(**kwargs)


_SHORT = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}
