"""Shell helpers of the image recipe: run commands (or print them in --dry-run), clear errors."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BuildError", "Runner", "TOOL_PACKAGES"]

# Debian package that provides each host tool the recipe needs (for the error message).
TOOL_PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "debootstrap": "debootstrap",
    "qemu-aarch64-static": "qemu-user-static",
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "systemd-sysusers": "systemd",
    "systemd-tmpfiles": "systemd",
    "chroot": "coreutils",
    "git": "git",
    "xz": "xz-utils",
}


class BuildError(Exception):
    """A build step failed: ``message`` says which and why, ``hint`` what to do. Exit code 1 or 64."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message, self.hint, self.exit_code = message, hint, exit_code

    def __str__(self) -> str:
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


@dataclass
class Runner:
    """Runs the recipe's commands; with ``dry_run`` it prints them and runs nothing."""

    dry_run: bool = False
    log: list[str] = field(default_factory=list)

    def say(self, msg: str) -> None:
        print(f"kestrel-image: {msg}", flush=True)

    def run(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        *,
        what: str,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        argv = [os.fspath(c) for c in cmd]
        line = " ".join(shlex.quote(a) for a in argv)
        self.log.append(line)
        if self.dry_run:
            print(f"+ {line}" + (" <<stdin" if stdin is not None else ""), flush=True)
            return
        full_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run(argv, env=full_env, input=stdin, cwd=cwd, stdout=sys.stdout, stderr=subprocess.PIPE)
        except OSError as exc:
            raise BuildError(f"cannot {what}: {argv[0]}: {exc.strerror}", hint=self._tool_hint(argv[0])) from None
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-15:]
            raise BuildError(
                f"cannot {what}: `{line[:200]}` exited {proc.returncode}\n    " + "\n    ".join(tail),
                hint="fix the cause above and rerun: finished stages are skipped",
            )

    def need_tools(self, *tools: str) -> None:
        missing = [t for t in tools if shutil.which(t) is None]
        if missing and not self.dry_run:
            raise BuildError(
                f"missing host tools: {', '.join(missing)}",
                exit_code=64,
                hint="apt-get install " + " ".join(sorted({TOOL_PACKAGES.get(t, t) for t in missing})),
            )

    def need_root(self, stage: str) -> None:
        if os.geteuid() != 0 and not self.dry_run:
            raise BuildError(
                f"stage {stage} must run as root (it creates files owned by other users, runs chroot and debootstrap)",
                exit_code=64,
                hint="rerun with sudo",
            )

    @staticmethod
    def _tool_hint(tool: str) -> str | None:
        name = Path(tool).name
        return f"apt-get install {TOOL_PACKAGES[name]}" if name in TOOL_PACKAGES else None
