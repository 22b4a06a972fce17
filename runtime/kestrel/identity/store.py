"""Shell: create, load and unlock an agent identity in ``STATE/identity``.

Layout (docs/state-dir.md; every file 0600, the directory 0700)::

    identity/identity.json      public facts (encode_identity)
    identity/key.enc            file keystore envelope (docs/identity.md)
    identity/machine.key        32 random bytes, machine-bound keystores only
    identity/key.tpm.pem        TPM-wrapped key blob (TSS2 PRIVATE KEY PEM)
    identity/provisioning.json  owner keys given to init-agent (read by kestrel.ota)

An identity is installed atomically: all files are written and fsync'd in a
fresh staging directory, which is then renamed to ``identity``. A rename onto
a non-empty ``identity`` fails, so an identity is never replaced.
"""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime
from pathlib import Path

from .._internal.fsutil import ensure_private_dir, fsync_dir
from .._internal.paths import StateLayout
from ..errors import TransportError, UsageError
from . import envelope as env_mod
from .envelope import KdfParams
from .errors import IdentityCorruptError, IdentityExistsError, IdentityNotFoundError
from .keys import Algorithm, Signer, SoftwareSigner
from .record import Identity, encode_identity, parse_identity
from .secrets import (
    as_bytes,
    create_private_file,
    machine_id,
    read_private_file,
    resolve_passphrase,
)

__all__ = [
    "IDENTITY_FILE",
    "KEY_FILE",
    "TPM_KEY_FILE",
    "MACHINE_KEY_FILE",
    "create_identity",
    "ensure_no_identity",
    "identity_dir",
    "create_identity_with_signer",
    "install_identity",
    "load_identity",
    "open_signer",
    "open_file_signer",
]

IDENTITY_FILE = "identity.json"
KEY_FILE = "key.enc"
TPM_KEY_FILE = "key.tpm.pem"
MACHINE_KEY_FILE = "machine.key"
_MAX_NAME = 128


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME or not name.isprintable():
        raise UsageError(f"invalid agent name {name!r}", hint=f"use 1 to {_MAX_NAME} printable characters")


def identity_dir(state_dir: str | os.PathLike[str]) -> Path:
    return StateLayout(state_dir).identity


def ensure_no_identity(state_dir: str | os.PathLike[str]) -> None:
    """Raise IdentityExistsError if ``STATE/identity`` holds anything."""
    _refuse_existing(identity_dir(state_dir))


def _refuse_existing(ident_dir: Path) -> None:
    try:
        present = ident_dir.exists() and any(ident_dir.iterdir())
    except OSError as exc:
        raise TransportError(f"cannot read {ident_dir}: {exc.strerror or exc}") from None
    if present:
        raise IdentityExistsError(
            f"an identity already exists in {ident_dir}; an agent's identity is not replaceable",
            hint="`kestrel identity show` prints it; use another --state directory for a new agent",
        )


def _machine_secret(ident_dir: Path, *, machine_id_path: str | os.PathLike[str] | None) -> bytes:
    secret = read_private_file(ident_dir / MACHINE_KEY_FILE, what="machine-bound secret")
    return secret + machine_id(machine_id_path)


def install_identity(state_dir: str | os.PathLike[str], identity: Identity, files: dict[str, bytes]) -> None:
    """Atomically create ``STATE/identity`` holding identity.json and ``files`` (all 0600)."""
    root = ensure_private_dir(state_dir)
    ident_dir = identity_dir(root)
    _refuse_existing(ident_dir)
    staging = root / f".identity.new.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        staging.mkdir(mode=0o700)
    except OSError as exc:
        raise TransportError(
            f"cannot create {staging}: {exc.strerror or exc}", hint="choose a writable --state directory"
        ) from None
    try:
        for name, data in files.items():
            create_private_file(staging / name, data)
        create_private_file(staging / IDENTITY_FILE, encode_identity(identity))
        fsync_dir(staging)
        try:
            os.rename(staging, ident_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                _refuse_existing(ident_dir)
            raise TransportError(f"cannot install {ident_dir}: {exc.strerror or exc}") from None
        fsync_dir(root)
    except BaseException:
        import shutil  # rarely needed: keep it (and bz2/lzma) out of an idle daemon

        shutil.rmtree(staging, ignore_errors=True)  # our own fresh, never-used material
        raise


def create_identity_with_signer(
    state_dir: str | os.PathLike[str],
    *,
    name: str,
    backend: str = "file",
    algorithm: Algorithm = Algorithm.ED25519,
    passphrase: bytes | str | None = None,
    tcti: str | None = None,
    machine_bound: bool = False,
    kdf: KdfParams | None = None,
    machine_id_path: str | os.PathLike[str] | None = None,
    signer: SoftwareSigner | None = None,
    created_at: str | None = None,
) -> tuple[Identity, Signer]:
    """Like :func:`create_identity`, also returning the unlocked signer.

    ``signer`` and ``created_at`` restore an existing software key (see backup).
    """
    _check_name(name)
    algorithm = Algorithm(algorithm)
    _refuse_existing(identity_dir(state_dir))
    created_at = created_at or _now_rfc3339()
    if backend == "tpm":
        if algorithm is not Algorithm.P256 or signer is not None or machine_bound or passphrase:
            raise UsageError(
                "a TPM identity is always a fresh P-256 key, with no passphrase",
                hint="drop --algorithm ed25519 / --passphrase-file / --machine-bound",
            )
        from .tpm import TPMSigner, create_tpm_key, resolve_tcti

        tcti = resolve_tcti(tcti)
        pem, public_key = create_tpm_key(tcti)
        identity = Identity(public_key.did, name, algorithm, "tpm", created_at, public_key, tcti, "tpm")
        install_identity(state_dir, identity, {TPM_KEY_FILE: pem})
        return identity, TPMSigner(pem, tcti=tcti, expected=public_key)
    if backend != "file":
        raise UsageError(f"unknown keystore backend {backend!r}", hint="use 'file' or 'tpm'")
    if machine_bound and passphrase is not None:
        raise UsageError("choose either a passphrase or --machine-bound, not both")
    signer = signer or SoftwareSigner.generate(algorithm)
    files: dict[str, bytes] = {}
    if machine_bound:
        files[MACHINE_KEY_FILE] = os.urandom(32)
        secret = files[MACHINE_KEY_FILE] + machine_id(machine_id_path)
        kdf = KdfParams.machine()
    else:
        secret = resolve_passphrase(passphrase, what="new keystore", confirm=True)
    files[KEY_FILE] = env_mod.seal(signer, secret, kdf=kdf)
    public_key = signer.public_key
    identity = Identity(
        public_key.did,
        name,
        public_key.algorithm,
        "file",
        created_at,
        public_key,
        None,
        "machine-bound" if machine_bound else "passphrase",
    )
    install_identity(state_dir, identity, files)
    return identity, signer


def create_identity(
    state_dir: str | os.PathLike[str],
    *,
    name: str,
    backend: str = "file",
    algorithm: Algorithm = Algorithm.ED25519,
    passphrase: bytes | str | None = None,
    tcti: str | None = None,
    machine_bound: bool = False,
    kdf: KdfParams | None = None,
    machine_id_path: str | os.PathLike[str] | None = None,
) -> Identity:
    """Create the agent's key pair and ``STATE/identity``; refuse if one exists."""
    identity, signer = create_identity_with_signer(
        state_dir,
        name=name,
        backend=backend,
        algorithm=algorithm,
        passphrase=passphrase,
        tcti=tcti,
        machine_bound=machine_bound,
        kdf=kdf,
        machine_id_path=machine_id_path,
    )
    close = getattr(signer, "close", None)
    if close is not None:
        close()
    return identity


def load_identity(state_dir: str | os.PathLike[str]) -> Identity:
    """Read identity.json (public facts only; nothing is unlocked)."""
    path = identity_dir(state_dir) / IDENTITY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityNotFoundError(
            f"no agent identity in {Path(state_dir)}",
            hint=f"create one with: kestrel init-agent --name NAME --state {state_dir}",
        ) from None
    except OSError as exc:
        raise TransportError(
            f"cannot read {path}: {exc.strerror or exc}", hint="check the state directory's owner and permissions"
        ) from None
    return parse_identity(data, source=str(path))


def open_file_signer(
    state_dir: str | os.PathLike[str],
    identity: Identity,
    *,
    passphrase: bytes | str | None = None,
    machine_id_path: str | os.PathLike[str] | None = None,
) -> SoftwareSigner:
    ident_dir = identity_dir(state_dir)
    path = ident_dir / KEY_FILE
    envelope = env_mod.parse_envelope(read_private_file(path, what="keystore"), what=f"keystore {path}")
    if envelope.public_key != identity.public_key:
        raise IdentityCorruptError(
            f"{path} holds a different key than identity.json ({identity.did})",
            hint="the identity directory was mixed up; restore it from a backup",
        )
    if envelope.kdf.kdf is env_mod.Kdf.MACHINE:
        secret = _machine_secret(ident_dir, machine_id_path=machine_id_path)
    else:
        secret = resolve_passphrase(as_bytes(passphrase), what=f"keystore of {identity.name}")
    return env_mod.open_envelope(envelope, secret, what=f"keystore {path}")


def open_signer(
    state_dir: str | os.PathLike[str],
    *,
    passphrase: bytes | str | None = None,
    tcti: str | None = None,
    machine_id_path: str | os.PathLike[str] | None = None,
) -> Signer:
    """Unlock the identity's private key: a SoftwareSigner or a TPMSigner."""
    identity = load_identity(state_dir)
    if identity.backend == "tpm":
        from .tpm import TPMSigner, resolve_tcti

        pem = read_private_file(identity_dir(state_dir) / TPM_KEY_FILE, what="TPM key blob")
        chosen = tcti or os.environ.get("KESTREL_TCTI") or identity.tcti
        return TPMSigner(pem, tcti=resolve_tcti(chosen), expected=identity.public_key)
    return open_file_signer(state_dir, identity, passphrase=passphrase, machine_id_path=machine_id_path)
