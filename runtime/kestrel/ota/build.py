"""Build bundles from files (owner side). Only regular files are read; limits apply."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from .._internal.fsutil import read_bytes
from ..policy import parse_policy
from .bundle import Limits, build_manifest, encode_bundle, format_time
from .errors import BundleFormatError

__all__ = ["make_bundle", "build_bundle_files"]


def make_bundle(
    *,
    policy: bytes,
    models: Sequence[tuple[str, bytes]] = (),
    counter: int,
    now: float,
    expires: float,
    agents: Sequence[str] = (),
    groups: Sequence[str] = (),
    label: str | None = None,
    policy_name: str = "policy.yaml",
) -> bytes:
    """An unsigned bundle (pure). The policy is parsed first so a bad one is never shipped."""
    parse_policy(policy, source=policy_name)
    contents = [(policy_name, "policy", policy)] + [(n, "model", d) for n, d in models]
    manifest = build_manifest(
        version=label or f"{format_time(now)}#{counter}",
        counter=counter,
        created=now,
        expires=expires,
        agents=agents,
        groups=groups,
        contents=contents,
    )
    return encode_bundle(manifest, b"[]", [d for _, _, d in contents])


def _regular(path: Path, limit: int) -> bytes:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise BundleFormatError(f"cannot read {path}: {exc.strerror}", code="missing-file") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise BundleFormatError(
            f"{path} is {kind}; bundles hold regular files only",
            code="not-regular-file",
            hint="copy the file's content to a regular file",
        )
    if st.st_size > limit:
        raise BundleFormatError(f"{path} is {st.st_size} bytes, over the limit of {limit}", code="oversize")
    return read_bytes(path, what="bundle content", max_size=limit)


def build_bundle_files(
    *,
    policy: Path,
    models: Sequence[Path],
    counter: int,
    now: float,
    expires: float,
    agents: Sequence[str],
    groups: Sequence[str],
    label: str | None = None,
    limits: Limits = Limits(),
) -> bytes:
    pdata = _regular(policy, limits.max_policy)
    mdata = [(m.name, _regular(m, limits.max_entry)) for m in models]
    return make_bundle(
        policy=pdata, models=mdata, counter=counter, now=now, expires=expires, agents=agents, groups=groups, label=label
    )
