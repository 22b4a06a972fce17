"""Where the policy engine gets the policy in force: a :class:`PolicySource`, injected.

The engine (:mod:`.engine`) decides; which policy is active is the business of the layer
above it, OTA (``kestrel.ota.policy_source``: the policy of the active A/B slot). The
daemon and the CLI pass that source to :class:`~kestrel.policy.engine.PolicyEngine`
explicitly. Callers that pass none get the default that the ``kestrel`` package installs
(:func:`set_default_source`: the same OTA source), so the policy package never imports OTA.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import UsageError

if TYPE_CHECKING:  # `import kestrel` installs the default source: keep this module light
    from .model import Policy

__all__ = ["PolicySource", "FixedPolicySource", "default_source", "set_default_source"]


class PolicySource(Protocol):
    """The policy in force and a cheap probe for "it may have changed"."""

    def load(self) -> tuple[Policy, str] | None:
        """(policy, digest of the bundle that carried it), or None when there is none (deny all).

        Raises a KestrelError when the active policy cannot be read (the engine then denies
        everything and tries again at the next decision)."""
        ...

    def version(self) -> Hashable:
        """A value that changes whenever :meth:`load` may return something new (e.g. the stat
        of a pointer file). Called before decisions, so it must be cheap."""
        ...


class FixedPolicySource:
    """One policy that never changes (tests, ``kestrel policy explain --policy FILE``, tools)."""

    def __init__(self, policy: Policy | None, bundle_digest: str = "") -> None:
        self._found = (policy, bundle_digest) if policy is not None else None

    def load(self) -> tuple[Policy, str] | None:
        return self._found

    def version(self) -> Hashable:
        return 0


SourceFactory = Callable[[Path], PolicySource]
_default: SourceFactory | None = None


def set_default_source(factory: SourceFactory) -> None:
    """Install the source that engines built without ``source=`` use (done by ``kestrel/__init__``)."""
    global _default
    _default = factory


def default_source(state_dir: str | os.PathLike[str]) -> PolicySource:
    """The installed default source for ``state_dir``."""
    if _default is None:
        raise UsageError("no policy source is installed", hint="pass PolicyEngine(..., source=...)")
    return _default(Path(state_dir))
