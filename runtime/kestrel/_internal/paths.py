"""Where things live: the state directory and its layout (see docs/state-dir.md)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_state_dir", "resolve_state_dir", "StateLayout"]


def default_state_dir() -> Path:
    env = os.environ.get("KESTREL_STATE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(xdg) / "kestrel"


def resolve_state_dir(arg: str | os.PathLike[str] | None) -> Path:
    return Path(arg) if arg else default_state_dir()


class StateLayout:
    """Names of the sub-directories of a state directory. One owner per entry."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    identity = property(lambda self: self.root / "identity")  # identity sub-package
    ledger = property(lambda self: self.root / "ledger")  # ledger sub-package
    ota = property(lambda self: self.root / "ota")  # trust root, A/B slots, counter
    models = property(lambda self: self.root / "models")  # installed model store
    memory = property(lambda self: self.root / "memory")  # vector memory
    run = property(lambda self: self.root / "run")  # control socket, pid
    data = property(lambda self: self.root / "data")  # outbox, calendar, sync offsets
