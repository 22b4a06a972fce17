"""kestrel-firstboot: give this device its own identity on its first boot (docs/image.md).

Run by ``kestrel-firstboot.service`` as root with the image's Python (/opt/kestrel/bin/python3).
Reads ``kestrel/owner.json``, ``device.yaml`` and one ``*.kbundle`` from the boot partition and
builds a state directory in a work directory with the real ``kestrel`` CLI (``init-agent``,
``trust init``, ``bundle verify``), then writes a receipt. After the receipt every step is
repeatable, so a power cut resumes: ``ota apply``, removing the consumed files from the boot
partition, enabling ``kestrel.service``, and the commit, a rename of the work state onto
/var/lib/kestrel. Before the receipt a power cut makes the next boot start over (nothing was
committed and the TPM counter has not moved). An existing identity is never replaced."""

from __future__ import annotations

import argparse
import errno
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from firstboot_settings import BUNDLE_SUFFIX, DEVICE_FILE, MAX_INPUT_BYTES, OWNER_FILE, BootInputs, parse_boot_inputs

from kestrel._internal.fsutil import atomic_write, fsync_dir
from kestrel.errors import DataError, KestrelError, TransportError, UsageError

RECEIPT = "complete.json"
RECEIPT_FORMAT = "kestrel-firstboot-receipt/1"
AGENT_FILE = "agent.json"
ERROR_FILE = "firstboot-error.txt"


WORK_NAME = ".kestrel-firstboot"  # the work directory inside a state directory that is a partition
IGNORED_IN_PARTITION = ("lost+found", WORK_NAME)


@dataclass(frozen=True)
class Layout:
    """Where first boot reads and writes; ``root`` prefixes every system path (tests use a tmp dir).

    With ``data_partition`` the state directory is the mount point of the image's data partition
    (KESTREL_DATA): the work directory then lives inside it (a rename cannot cross file systems
    nor replace a mount point) and the commit moves the staged entries in, the identity last."""

    root: Path
    boot: Path  # the boot partition's kestrel/ directory
    data_partition: bool = False

    state = property(lambda self: self.root / "var/lib/kestrel")
    work = property(
        lambda self: self.state / WORK_NAME if self.data_partition else self.root / "var/lib/kestrel-firstboot"
    )
    staged = property(lambda self: self.work / "state")
    inputs = property(lambda self: self.work / "inputs")
    config = property(lambda self: self.root / "etc/kestrel/device.yaml")
    machine_id = property(lambda self: self.root / "etc/machine-id")


def log(msg: str) -> None:
    print(f"kestrel-firstboot: {msg}", flush=True)


# -- inputs -----------------------------------------------------------------------------------
def read_boot_inputs(boot: Path) -> BootInputs:
    """Read and validate the owner's files; nothing is changed when they are refused."""
    files: dict[str, bytes] = {}
    if boot.is_dir():
        for entry in sorted(boot.iterdir()):
            if entry.name in (OWNER_FILE, DEVICE_FILE) or entry.name.endswith(BUNDLE_SUFFIX):
                if not entry.is_file() or entry.is_symlink():
                    raise DataError(f"{entry} is not a regular file", hint="replace it with a regular file")
                if entry.stat().st_size > MAX_INPUT_BYTES:
                    raise DataError(
                        f"{entry} is larger than {MAX_INPUT_BYTES} bytes", hint="remove it from the boot partition"
                    )
                try:
                    files[entry.name] = entry.read_bytes()
                except OSError as exc:
                    raise TransportError(
                        f"cannot read {entry}: {exc.strerror}", hint="check the SD card (fsck the boot partition)"
                    ) from None
    return parse_boot_inputs(files, where=str(boot))


def machine_id(layout: Layout, override: str | None) -> str:
    path = Path(override) if override else layout.machine_id
    try:
        value = path.read_text().strip()
    except OSError:
        value = ""
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        raise TransportError(
            f"{path} holds no machine id ({value[:40]!r})",
            hint="first boot must run after systemd has set the machine id (systemd-machine-id-setup --commit)",
        )
    return value


def commit_machine_id(layout: Layout) -> None:
    """A machine-bound key needs the machine id on disk, not the transient one of a first boot."""
    if layout.root == Path("/") and subprocess.run(["mountpoint", "-q", "/etc/machine-id"]).returncode == 0:
        run_tool(["systemd-machine-id-setup", "--commit"], what="commit the machine id")


# -- the kestrel CLI ----------------------------------------------------------------------------
def run_tool(cmd: list[str], *, what: str, env: dict[str, str] | None = None) -> str:
    """Run a command; its failure becomes a KestrelError carrying its message and exit code."""
    try:
        proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as exc:
        raise TransportError(
            f"cannot run {cmd[0]} to {what}: {exc.strerror}",
            hint="is the image's Kestrel installation complete? (/opt/kestrel)",
        ) from None
    if proc.returncode != 0:
        err = TransportError if proc.returncode == 3 else DataError
        detail = (proc.stderr.strip() or proc.stdout.strip() or "no message").replace("\n", "\n    ")
        exc = err(f"could not {what} (`{' '.join(cmd[:3])} ...` exited {proc.returncode}):\n    {detail}")
        exc.exit_code = proc.returncode if proc.returncode in (2, 3, 64) else err.exit_code
        raise exc
    return proc.stdout


def cli_env(opts: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KESTREL_STATE", "KESTREL_TCTI", "KESTREL_PASSPHRASE")}
    if opts.machine_id_file:
        env["KESTREL_MACHINE_ID_FILE"] = opts.machine_id_file
    return env


def expected_tpm(model_path: str) -> tuple[str, str | None]:
    """(board name, the TPM TCTI its profile names or None) for the detected board."""
    from kestrel.io.boards import load_profile

    try:
        profile = load_profile("auto", model_path=model_path)
    except KestrelError:
        return "unknown", None
    return profile.name, profile.tpm_tcti


def choose_tcti(opts: argparse.Namespace, keystore: str) -> str | None:
    """The TCTI of the TPM to use, or None for the machine-bound file keystore."""
    if keystore == "file":
        return None
    if opts.tcti:
        return opts.tcti
    if keystore == "auto" and opts.root == Path("/") and shutil.which("udevadm"):
        subprocess.run(["udevadm", "settle", "--timeout=10"], check=False)  # a TPM HAT's driver may load late
    if os.path.exists(opts.tpm_device):
        return f"device:{opts.tpm_device}"
    if keystore == "tpm":
        raise TransportError(
            f"owner.json asks for a TPM key but {opts.tpm_device} does not exist",
            hint='enable the TPM (e.g. dtoverlay=tpm-slb9670 in config.txt) or set "keystore": "auto"',
        )
    board, tcti = expected_tpm(opts.model_path)
    if tcti:  # a profile that names a TPM: say loudly that this card's key is not in one
        log(
            f"warning: the board profile {board} expects a TPM ({tcti}) but {opts.tpm_device} does not exist; "
            "the identity is created in the machine-bound file keystore instead. To use the TPM, fix it "
            "(TPM HAT, dtoverlay, the kestrel-vtpm service of the lab image) before the first boot, or set "
            '"keystore": "tpm" in owner.json to refuse to provision without one'
        )
    return None


def detect_board(model_path: str) -> str:
    from kestrel.io.boards import load_profile

    try:
        return load_profile("auto", model_path=model_path).name
    except KestrelError as exc:
        log(f"warning: board detection failed ({exc.message}); kestrel.service uses --board auto")
        return "unknown"


def build_state(layout: Layout, inputs: BootInputs, opts: argparse.Namespace) -> dict:
    """Create identity, trust root and initial bundle in the work directory; return the receipt."""
    env = cli_env(opts)
    owner = inputs.owner
    layout.work.mkdir(mode=0o700, parents=True)
    layout.inputs.mkdir(mode=0o700)
    for fname, data in inputs.bundles:  # apply exactly the bytes that were validated and hashed
        atomic_write(layout.inputs / fname, data)
    if inputs.device_yaml is not None:
        atomic_write(layout.inputs / DEVICE_FILE, inputs.device_yaml)
    tcti = choose_tcti(opts, owner.keystore if owner else "auto")
    if tcti is None:
        commit_machine_id(layout)
    name = owner.name if owner and owner.name else f"kestrel-{machine_id(layout, opts.machine_id_file)[:8]}"
    cmd = [opts.kestrel, "init-agent", "--name", name, "--state", str(layout.staged)]
    cmd += ["--tpm", "--tcti", tcti] if tcti else ["--machine-bound"]
    if owner:
        for did in owner.owners:
            cmd += ["--owner", did]
        cmd += ["--threshold", str(owner.threshold)]
    log(f"creating the agent identity ({'TPM ' + tcti if tcti else 'machine-bound file keystore'})")
    run_tool(cmd, what="create the agent identity", env=env)
    if owner and owner.groups:
        cmd = [opts.kestrel, "trust", "init", "--state", str(layout.staged), "--threshold", str(owner.threshold)]
        for did in owner.owners:
            cmd += ["--owner", did]
        for group in owner.groups:
            cmd += ["--group", group]
        run_tool(cmd, what="install the trust root and device groups", env=env)
    for fname, _ in inputs.bundles:  # verified now; applied after the receipt (the TPM counter moves then)
        run_tool(
            [opts.kestrel, "bundle", "verify", "--state", str(layout.staged), str(layout.inputs / fname)],
            what=f"verify the bundle {fname}",
            env=env,
        )
    shown = run_tool(
        [opts.kestrel, "identity", "show", "--json", "--state", str(layout.staged)],
        what="read the new identity",
        env=env,
    )
    ident = json.loads(shown)
    agent = {
        "format": "kestrel-agent/1",
        "did": ident["did"],
        "name": ident["name"],
        "algorithm": ident["algorithm"],
        "backend": ident["backend"],
        "protection": ident["protection"],
        "created_at": ident["created_at"],
        "board": detect_board(opts.model_path),
    }
    receipt = {
        "format": RECEIPT_FORMAT,
        "agent": agent,
        "consumed": dict(inputs.digests),
        "bundle": inputs.bundles[0][0] if inputs.bundles else None,
    }
    atomic_write(layout.work / RECEIPT, (json.dumps(receipt, indent=2, sort_keys=True) + "\n").encode())
    fsync_dir(layout.work)
    return receipt


def chown_tree(top: Path, user: str) -> None:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(
            f"no user {user!r} on this system",
            hint="the image creates it with systemd-sysusers (usr/lib/sysusers.d/kestrel.conf)",
        ) from None
    for dirpath, dirnames, filenames in os.walk(top):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(entry, pw.pw_uid, pw.pw_gid)


# -- after the receipt: finish (resumable) ------------------------------------------------------------
def remove_consumed(boot: Path, consumed: dict[str, str]) -> None:
    """Delete the boot files first boot consumed; a file changed since is left and named."""
    from firstboot_settings import sha256_hex

    for fname, digest in sorted(consumed.items()):
        path = boot / fname
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if sha256_hex(data) != digest:
            log(f"warning: {path} changed after provisioning; it was not applied and is left in place")
            continue
        path.unlink()
        log(f"removed {path}")
    if boot.is_dir():
        fsync_dir(boot)


def install_config(layout: Layout, user: str) -> None:
    src = layout.inputs / DEVICE_FILE
    if not src.exists():
        return
    etc = layout.config.parent
    if not etc.is_dir():
        etc.mkdir(parents=True)
        etc.chmod(0o755)  # explicit: the unit's UMask=0077 would make it 0700
    atomic_write(layout.config, src.read_bytes(), mode=0o640)
    gid = pwd.getpwnam(user).pw_gid
    os.chown(layout.config, 0 if os.geteuid() == 0 else os.getuid(), gid)  # secrets: not world-readable
    os.chmod(layout.config, 0o640)  # the daemon (group kestrel) reads it; UMask=0077 masked the create mode
    log(f"installed {layout.config}")


def enable_service(opts: argparse.Namespace) -> None:
    cmd = ["systemctl"] + ([] if opts.root == Path("/") else [f"--root={opts.root}"])
    run_tool(cmd + ["enable", "kestrel.service"], what="enable kestrel.service")


def check_state_empty(state: Path, *, partition: bool = False) -> None:
    """The new state may only replace an absent or empty /var/lib/kestrel; nothing is ever deleted.
    On a data partition, its lost+found and the work directory do not count."""
    ignored = IGNORED_IN_PARTITION if partition else ()
    if state.exists() and any(e.name not in ignored for e in state.iterdir()):
        raise DataError(
            f"{state} is not empty but holds no identity; refusing to mix it with a new one",
            hint="move its contents away (nothing is deleted), then reboot or rerun "
            "`systemctl start kestrel-firstboot`",
        )


def commit_state(layout: Layout, user: str) -> None:
    """Rename the work state onto /var/lib/kestrel (absent or an empty directory): the commit point."""
    state = layout.state
    if layout.data_partition:
        commit_into_partition(layout, user)
        return
    check_state_empty(state)
    state.parent.mkdir(parents=True, exist_ok=True)
    os.rename(layout.staged, state)
    fsync_dir(state.parent)


COMMITTING = "committing"
MIN_FREE_BYTES = 16 << 20  # identity, trust root, a bundle and the first ledger segment, with room to spare


def check_free_space(layout: Layout) -> None:
    """Refuse to start on a (nearly) full state file system: say so instead of failing half way."""
    where = layout.state if layout.state.exists() else layout.state.parent
    try:
        st = os.statvfs(where)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        what = "the data partition (KESTREL_DATA)" if layout.data_partition else "the file system"
        raise TransportError(
            f"{what} holding {layout.state} is full: {free >> 10} KiB free, first boot needs "
            f"{MIN_FREE_BYTES >> 20} MiB",
            hint="free space on it (nothing was provisioned and "
            "nothing is deleted), then reboot or run `systemctl start kestrel-firstboot`",
        )


def commit_into_partition(layout: Layout, user: str) -> None:
    """Move the staged entries into the partition's root, ``identity`` last (its presence means done).
    A marker makes a resumed boot go straight back here: the staged tree may be half moved."""
    marker = layout.work / COMMITTING
    if not marker.exists():
        check_state_empty(layout.state, partition=True)
        atomic_write(marker, b"")
        fsync_dir(layout.work)
    names = sorted(e.name for e in layout.staged.iterdir())
    for name in [n for n in names if n != "identity"] + [n for n in names if n == "identity"]:
        os.rename(layout.staged / name, layout.state / name)
    fsync_dir(layout.state)
    os.chmod(layout.state, 0o700)
    pw = pwd.getpwnam(user)
    os.chown(layout.state, pw.pw_uid, pw.pw_gid)


def apply_bundle(layout: Layout, fname: str, opts: argparse.Namespace) -> None:
    """``kestrel ota apply``; re-applying the active bundle changes nothing, so a resumed boot may repeat it."""
    log(f"applying {fname}")
    run_tool(
        [opts.kestrel, "ota", "apply", "--state", str(layout.staged), str(layout.inputs / fname)],
        what=f"apply the bundle {fname}",
        env=cli_env(opts),
    )


def finish(layout: Layout, receipt: dict, opts: argparse.Namespace) -> None:
    """Everything after the receipt; each step may run again after a power cut."""
    if layout.data_partition and (layout.work / COMMITTING).exists():
        log("resuming an interrupted commit")
        commit_state(layout, opts.user)
        return finish_boot_files(layout, receipt, opts)
    if receipt["bundle"]:
        apply_bundle(layout, receipt["bundle"], opts)
    chown_tree(layout.staged, opts.user)
    remove_consumed(layout.boot, receipt["consumed"])
    install_config(layout, opts.user)
    enable_service(opts)
    commit_state(layout, opts.user)
    finish_boot_files(layout, receipt, opts)


def finish_boot_files(layout: Layout, receipt: dict, opts: argparse.Namespace) -> None:
    agent = receipt["agent"]
    log(f"provisioned {agent['name']}: {agent['did']} ({agent['backend']}, board {agent['board']})")
    write_boot_file(layout.boot, AGENT_FILE, (json.dumps(agent, indent=2, sort_keys=True) + "\n").encode())
    (layout.boot / ERROR_FILE).unlink(missing_ok=True)
    shutil.rmtree(layout.work)
    fsync_dir(layout.work.parent)
    if opts.root == Path("/") and not opts.no_start:
        run_tool(["systemctl", "start", "--no-block", "kestrel.service"], what="start kestrel.service")


def write_boot_file(boot: Path, fname: str, data: bytes) -> None:
    try:
        boot.mkdir(parents=True, exist_ok=True)
        atomic_write(boot / fname, data, mode=0o644)
        # On FAT (the boot partition) a renamed file's directory entry gets its size and first
        # cluster only when the inode is written back: sync it under its new name, or a card pulled
        # within half a minute shows the file empty (seen under QEMU's raspi3b).
        fd = os.open(boot / fname, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except (OSError, KestrelError) as exc:
        log(f"warning: could not write {boot / fname}: {exc}")


def read_receipt(path: Path) -> dict:
    try:
        receipt = json.loads(path.read_bytes())
        if (
            not isinstance(receipt, dict)
            or receipt.get("format") != RECEIPT_FORMAT
            or not isinstance(receipt.get("consumed"), dict)
            or "bundle" not in receipt
            or not isinstance(receipt.get("agent"), dict)
            or "did" not in receipt["agent"]
        ):
            raise ValueError("unexpected contents")
    except ValueError as exc:
        raise DataError(
            f"{path} is damaged ({exc})",
            hint=f"delete {path.parent} to provision from scratch (the boot partition may no "
            "longer hold the owner's files: put them back first)",
        ) from None
    return receipt


def provision(opts: argparse.Namespace) -> int:
    partition = opts.data_partition == "yes" or (
        opts.data_partition == "auto" and os.path.ismount(opts.root / "var/lib/kestrel")
    )
    layout = Layout(root=opts.root, boot=opts.boot, data_partition=partition)
    if (layout.state / "identity").exists():
        log(f"{layout.state} already has an identity; nothing to do (it is never replaced)")
        if layout.work.exists():  # cut off after the commit: only copies of consumed inputs are left
            shutil.rmtree(layout.work)
            log(f"removed the leftover {layout.work}")
        return 0
    receipt_path = layout.work / RECEIPT
    if receipt_path.exists():
        log("resuming an interrupted first boot")
        receipt = read_receipt(receipt_path)
    else:
        if layout.work.exists():
            log(f"discarding the unfinished work of an interrupted first boot ({layout.work})")
            shutil.rmtree(layout.work)
        check_free_space(layout)  # first: a full partition is the owner's first problem, whatever fills it
        check_state_empty(layout.state, partition=layout.data_partition)
        inputs = read_boot_inputs(layout.boot)
        if inputs.owner is None:
            log(
                f"warning: no {layout.boot / OWNER_FILE}: the agent has no owner keys and no policy can be "
                "installed until `kestrel trust init` is run on the device"
            )
        try:
            receipt = build_state(layout, inputs, opts)
        except BaseException:
            shutil.rmtree(layout.work, ignore_errors=True)  # uncommitted: the next boot starts over
            raise
    finish(layout, receipt, opts)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kestrel-firstboot", description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/"), help="system root (tests: a directory)")
    p.add_argument(
        "--boot", type=Path, default=Path("/boot/firmware/kestrel"), help="the owner's directory on the boot partition"
    )
    p.add_argument("--kestrel", default="/opt/kestrel/bin/kestrel", help="the kestrel command")
    p.add_argument("--user", default="kestrel", help="owner of the state directory")
    p.add_argument("--tpm-device", default="/dev/tpmrm0")
    p.add_argument("--tcti", help="use this TPM instead of probing --tpm-device (tests: swtpm)")
    p.add_argument("--model-path", default="/proc/device-tree/model", help="device-tree model (board detection)")
    p.add_argument("--machine-id-file", help="machine id for the machine-bound keystore (tests)")
    p.add_argument("--no-start", action="store_true", help="enable kestrel.service but do not start it")
    p.add_argument(
        "--data-partition",
        choices=("auto", "yes", "no"),
        default="auto",
        help="is /var/lib/kestrel the data partition's mount point? (auto: look)",
    )
    opts = p.parse_args(argv)
    try:
        return provision(opts)
    except KestrelError as exc:
        failure: KestrelError = exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            failure = TransportError(
                f"no space left on the device writing {exc.filename or 'the state'}",
                hint="the data partition (KESTREL_DATA, mounted at /var/lib/kestrel) is full: "
                "free space on it (nothing was provisioned), then reboot or run "
                "`systemctl start kestrel-firstboot`",
            )
        else:
            failure = TransportError(
                f"{exc.filename or 'I/O'}: {exc.strerror}", hint="check the SD card and the root file system"
            )
    message = f"kestrel-firstboot failed: {failure}"
    print(message, file=sys.stderr, flush=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_boot_file(opts.boot, ERROR_FILE, f"{stamp} {message}\n".encode())
    return failure.exit_code


if __name__ == "__main__":
    sys.exit(main())
