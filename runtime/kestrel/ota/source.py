"""The policy in force on a device: the policy of the active A/B slot, as a policy source.

``policy_source(state_dir)`` is what the daemon and the CLI hand to
:class:`kestrel.policy.engine.PolicyEngine` (``source=``); it is also the default the
``kestrel`` package installs for engines built without one. The engine asks ``version()``
(one ``stat`` of ``STATE/ota/active.json``) before decisions and ``load()`` when it changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._internal.paths import StateLayout

if TYPE_CHECKING:
    from ..policy import Policy

__all__ = ["ActiveSlotSource", "policy_source"]


class ActiveSlotSource:
    """The policy of the active slot under ``STATE/ota`` (a :class:`kestrel.policy.source.PolicySource`)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.pointer = StateLayout(self.state_dir).ota / "active.json"

    def load(self) -> tuple[Policy, str] | None:
        """(policy, bundle digest) of the active slot, None before the first bundle; raises when damaged."""
        from .apply import active_policy

        return active_policy(self.state_dir)

    def version(self) -> tuple[int, int] | None:
        """The pointer file's (inode, mtime): an apply or rollback replaces it by a rename."""
        try:
            st = os.stat(self.pointer)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)


def policy_source(state_dir: str | os.PathLike[str]) -> ActiveSlotSource:
    """The policy source of the device at ``state_dir``: its active OTA slot."""
    return ActiveSlotSource(state_dir)
