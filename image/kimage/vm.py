"""Boot the qemu-arm64 lab image under qemu-system-aarch64 (TCG) and talk to it over the test channel.

Host side of ``image/lab/testchan.py``: the guest's agent listens on the virtio-serial port
``org.kestrel.test``, which QEMU connects to a Unix socket here. The serial console (ttyAMA0) goes
to ``console.log`` in the VM's directory. No network device is given to the guest. Every wait is
bounded: a guest that does not answer, or a QEMU that dies, is an error naming the console's tail.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LabVm", "LabError", "Result", "boot_files", "partitions", "put_boot_file"]

CMDLINE = "root=LABEL=KESTREL_ROOT rw rootwait console=ttyAMA0,115200 systemd.show_status=1"
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}


def direct_boot(kernel: Path, initrd: Path, append: str) -> list[str]:
    """QEMU options both harnesses share: no default devices, no display, no reboot (a reboot ends
    QEMU), the kernel and initrd loaded by QEMU with this command line."""
    return [
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        append,
    ]


def spawn(argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    """Start QEMU in its own session (``stop`` kills the group); its stderr to ``workdir/qemu.stderr``."""
    with open(workdir / "qemu.stderr", "ab") as err:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill a QEMU started by ``spawn`` (its whole session) if it still runs."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def tail(console: str, lines: int = 40) -> str:
    """The last ``lines`` of a console log, for an error message."""
    return "console (last lines):\n" + "\n".join(console.splitlines()[-lines:])


class LabError(Exception):
    """The lab VM failed to boot, died or did not answer in time."""


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.strip()


def partitions(img: Path) -> list[tuple[int, int]]:
    """(offset, size) in bytes of each partition of ``img`` (sfdisk --json)."""
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True, timeout=30).stdout
    )["partitiontable"]
    unit = table.get("sectorsize", 512)
    return [(p["start"] * unit, p["size"] * unit) for p in table["partitions"]]


def boot_files(img: Path, dest: Path) -> tuple[Path, Path]:
    """Copy the kernel and initrd out of the image's boot partition (mtools, no mounts)."""
    offset = partitions(img)[0][0]
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ("vmlinuz", "initrd.img"):
        subprocess.run(
            ["mcopy", "-n", "-o", "-i", f"{img}@@{offset}", f"::{name}", str(dest / name)],
            check=True,
            env=MTOOLS_ENV,
            capture_output=True,
            timeout=60,
        )
        out.append(dest / name)
    return out[0], out[1]


def put_boot_file(img: Path, name: str, data: bytes, *, tmp: Path) -> None:
    """Write ``kestrel/NAME`` onto the image's boot partition, as an owner does on a card reader."""
    offset = partitions(img)[0][0]
    src = tmp / name
    src.write_bytes(data)
    subprocess.run(
        ["mcopy", "-o", "-i", f"{img}@@{offset}", str(src), f"::kestrel/{name}"],
        check=True,
        env=MTOOLS_ENV,
        capture_output=True,
        timeout=60,
    )


def read_boot_file(img: Path, name: str) -> bytes | None:
    offset = partitions(img)[0][0]
    proc = subprocess.run(
        ["mtype", "-i", f"{img}@@{offset}", f"::kestrel/{name}"], env=MTOOLS_ENV, capture_output=True, timeout=60
    )
    return proc.stdout if proc.returncode == 0 else None


class LabVm:
    """One VM on a private copy of the image (``disk``), kept across boots for reboot tests."""

    def __init__(
        self,
        disk: Path,
        *,
        kernel: Path,
        initrd: Path,
        workdir: Path,
        memory_mib: int = 1024,
        smp: int = 2,
        append: str = "",
    ) -> None:
        self.disk, self.kernel, self.initrd, self.workdir = disk, kernel, initrd, workdir
        self.memory_mib, self.smp, self.append = memory_mib, smp, append
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self._buf = b""
        self._next_id = 0
        self.boots = 0
        workdir.mkdir(parents=True, exist_ok=True)
        self.sock_path = workdir / "tc.sock"
        self.console_path = workdir / "console.log"

    @classmethod
    def from_image(cls, image: Path, workdir: Path, **kw: object) -> LabVm:
        """A VM on a sparse copy of ``image`` (each card is a fresh copy of the same image)."""
        workdir.mkdir(parents=True, exist_ok=True)
        disk = workdir / "disk.img"
        subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True, timeout=300)
        kernel, initrd = boot_files(disk, workdir / "boot")
        return cls(disk, kernel=kernel, initrd=initrd, workdir=workdir, **kw)  # type: ignore[arg-type]

    # -- lifecycle ------------------------------------------------------------------------------
    def argv(self) -> list[str]:
        append = f"{CMDLINE} {self.append}".strip()
        return [
            "qemu-system-aarch64",
            "-M",
            "virt",
            "-cpu",
            "cortex-a72",
            "-smp",
            str(self.smp),
            "-m",
            str(self.memory_mib),
            "-accel",
            "tcg,thread=multi",
            *direct_boot(self.kernel, self.initrd, append),
            "-drive",
            f"file={self.disk},if=none,id=hd0,format=raw,cache=unsafe",
            "-device",
            "virtio-blk-pci,drive=hd0",
            "-device",
            "virtio-rng-pci",
            "-serial",
            f"file:{self.console_path}",
            "-device",
            "virtio-serial-pci",
            "-chardev",
            f"socket,id=tc,path={self.sock_path},server=on,wait=off",
            "-device",
            "virtserialport,chardev=tc,name=org.kestrel.test",
        ]

    def start(self) -> None:
        if self.proc is not None:
            raise LabError("the VM is already running")
        self.sock_path.unlink(missing_ok=True)
        # A fresh console log per boot; earlier boots are kept as console.N.log.
        if self.console_path.exists():
            self.console_path.rename(self.workdir / f"console.{self.boots}.log")
        self.boots += 1
        self.started = time.monotonic()
        self.proc = spawn(self.argv(), self.workdir)
        deadline = time.monotonic() + 30
        while not self.sock_path.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise LabError("QEMU did not create its test-channel socket within 30 s")
            time.sleep(0.1)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.sock_path))
        self._buf = b""

    def wait_ready(self, timeout: float) -> float:
        """Wait until the guest's test agent answers; returns the seconds since QEMU started."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(f"the guest's test channel did not answer within {timeout:.0f} s\n{self.console_tail()}")
            try:
                self.request({"op": "ping"}, timeout=min(5.0, remaining))
                return time.monotonic() - self.started
            except TimeoutError:
                continue

    def boot(self, timeout: float = 900) -> float:
        self.start()
        return self.wait_ready(timeout)

    def poweroff(self, timeout: float = 300) -> None:
        """A clean shutdown (systemctl poweroff); QEMU exits when the guest powers off."""
        if self.proc is None:
            return
        try:
            self.request({"op": "run", "argv": ["systemctl", "--no-block", "poweroff"], "timeout": 30}, timeout=60)
        except (TimeoutError, LabError, OSError):
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise LabError(f"the guest did not power off within {timeout:.0f} s\n{self.console_tail()}") from None
        self._closed()

    def kill(self) -> None:
        stop(self.proc)
        self._closed()

    def _closed(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.proc = None, None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            err = (self.workdir / "qemu.stderr").read_text(errors="replace")[-2000:]
            raise LabError(f"QEMU exited with status {self.proc.returncode}: {err}\n{self.console_tail()}")

    # -- the channel -----------------------------------------------------------------------------
    def request(self, req: dict, *, timeout: float) -> dict:
        if self.sock is None:
            raise LabError("the VM is not running")
        self._next_id += 1
        rid = self._next_id
        self.sock.sendall(json.dumps({**req, "id": rid}).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue  # noise from before the agent started
                if reply.get("id") == rid:
                    if "error" in reply:
                        raise LabError(f"the guest refused {req.get('op')}: {reply['error']}")
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {req.get('op')} within {timeout:.0f} s")
            self._check_alive()
            self.sock.settimeout(min(remaining, 2.0))
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                self._check_alive()
                raise LabError("the test channel closed")
            self._buf += chunk

    def run(self, *argv: str, timeout: float = 120, input: bytes | None = None, check: bool = True) -> Result:
        """Run ``argv`` as root in the guest; ``check`` raises on a non-zero exit."""
        req: dict = {"op": "run", "argv": list(argv), "timeout": timeout}
        if input is not None:
            req["stdin"] = base64.b64encode(input).decode()
        reply = self.request(req, timeout=timeout + 60)
        res = Result(
            reply["rc"],
            base64.b64decode(reply["stdout"]).decode(errors="replace"),
            base64.b64decode(reply["stderr"]).decode(errors="replace"),
        )
        if check and res.rc != 0:
            raise LabError(
                f"`{' '.join(argv)}` exited {res.rc} in the guest:\n{res.stderr[-3000:]}\n{res.stdout[-2000:]}"
            )
        return res

    def put(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        self.request({"op": "put", "path": path, "data": base64.b64encode(data).decode(), "mode": mode}, timeout=300)

    def wait_for(self, argv: list[str], *, until: str, timeout: float, fail_on: tuple[str, ...] = ()) -> str:
        """Rerun ``argv`` until its stdout (stripped) equals ``until``; bounded; returns the last output."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.run(*argv, check=False, timeout=60).out
            if out == until:
                return out
            if out in fail_on:
                break
            time.sleep(1)
        raise LabError(
            f"`{' '.join(argv)}` printed {out!r}, not {until!r}, within {timeout:.0f} s\n{self.console_tail()}"
        )

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return tail(self.console(), lines)

    def __enter__(self) -> LabVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def qemu_available() -> str | None:
    """None if the lab can run here, else why not."""
    for tool in ("qemu-system-aarch64", "sfdisk", "mcopy", "mtype"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install qemu-system-arm fdisk mtools)"
    return None
