"""The :class:`Agent` facade: one object holding an agent's identity, signer and ledger.

::

    from kestrel import Agent
    with Agent.open(state_dir) as agent:
        receipt = agent.ledger.append("note", {"text": "hello"})
        agent.ledger.verify()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the ledger is imported lazily: kestrel.ledger pulls msgpack and friends
    from ..identity import Identity, Signer
    from ..identity.keys import Algorithm
    from ..ledger import Ledger

__all__ = ["Agent", "created_body", "ensure_fresh_state"]

_DURABILITY = ("strict", "batched")
DurabilityMode = Literal["strict", "batched"]


class Agent:
    """An opened agent. Use :meth:`open` (or :meth:`create`); close it, or use ``with``."""

    def __init__(self, state_dir: Path, identity: Identity, signer: Signer, ledger: Ledger) -> None:
        self._state_dir = state_dir
        self._identity = identity
        self._signer = signer
        self._ledger = ledger
        self._closed = False

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        passphrase: bytes | str | None = None,
        durability: DurabilityMode = "batched",
        tcti: str | None = None,
    ) -> Agent:
        """Unlock the identity in ``state_dir`` and open its ledger."""
        from ..identity import load_identity, open_signer

        _check_durability(durability)
        state = Path(state_dir)
        identity = load_identity(state)
        signer = open_signer(state, passphrase=passphrase, tcti=tcti)
        return cls._with_ledger(state, identity, signer, durability)

    @classmethod
    def create(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        name: str,
        backend: str = "file",
        algorithm: Algorithm | str = "ed25519",
        passphrase: bytes | str | None = None,
        machine_bound: bool = False,
        tcti: str | None = None,
        durability: DurabilityMode = "batched",
    ) -> Agent:
        """Create a new identity (refusing if one exists), open the ledger, record ``agent.created``."""
        from ..identity import Algorithm, create_identity_with_signer

        _check_durability(durability)
        state = Path(state_dir)
        ensure_fresh_state(state)
        identity, signer = create_identity_with_signer(
            state,
            name=name,
            backend=backend,
            algorithm=Algorithm(algorithm),
            passphrase=passphrase,
            machine_bound=machine_bound,
            tcti=tcti,
        )
        agent = cls._with_ledger(state, identity, signer, durability)
        try:
            agent.ledger.append("agent.created", created_body(identity))
        except BaseException:
            agent.close()
            raise
        return agent

    @classmethod
    def _with_ledger(cls, state: Path, identity: Identity, signer: Signer, durability: DurabilityMode) -> Agent:
        from .._internal.paths import StateLayout

        try:
            from ..ledger import Ledger

            ledger = Ledger.open(StateLayout(state).ledger, signer=signer, durability=durability)
        except BaseException:
            _close(signer)
            raise
        return cls(state, identity, signer, ledger)

    # -- properties ------------------------------------------------------
    @property
    def id(self) -> str:
        """The AgentID (a did:key); never changes."""
        return self._identity.did

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def signer(self) -> Signer:
        return self._signer

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle ---------------------------------------------------------
    def close(self) -> None:
        """Flush and close the ledger, then release the signer (TPM connection). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._ledger.close()
        finally:
            _close(self._signer)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Agent({self.id!r}, name={self._identity.name!r}, state_dir={str(self._state_dir)!r})"


def ensure_fresh_state(state_dir: str | os.PathLike[str]) -> None:
    """Refuse (IdentityExistsError) if ``state_dir`` has an identity, or a ledger without one.

    A new key can never continue an existing ledger, so this runs before anything is created.
    """
    from .._internal.paths import StateLayout
    from ..identity import IdentityExistsError
    from ..identity.store import ensure_no_identity

    state_dir = Path(state_dir)
    ensure_no_identity(state_dir)
    ledger_dir = StateLayout(state_dir).ledger
    try:
        orphan = ledger_dir.is_dir() and any(ledger_dir.iterdir())
    except OSError:
        orphan = False  # unreadable: the ledger itself reports it
    if orphan:
        raise IdentityExistsError(
            f"{ledger_dir} holds the ledger of an earlier agent but {state_dir}/identity is missing",
            hint="restore that agent's identity with `kestrel identity restore BACKUP`, or move the "
            "ledger away / use another --state for a new agent",
        )


def created_body(identity: Identity) -> dict[str, Any]:
    """The body of the ``agent.created`` ledger record."""
    return {
        "name": identity.name,
        "did": identity.did,
        "algorithm": identity.algorithm.value,
        "backend": identity.backend,
    }


def _check_durability(durability: str) -> None:
    if durability not in _DURABILITY:
        from ..errors import UsageError

        raise UsageError(f"unknown durability mode {durability!r}", hint="use 'strict' or 'batched'")


def _close(signer: Any) -> None:
    close = getattr(signer, "close", None)
    if close is not None:
        close()
