"""Kestrel lab test channel, guest side (qemu-arm64 image only; docs/image.md, "The test channel").

Reads requests from a virtio-serial port, one JSON object per line, and answers each with one JSON
line on the same port. Requests:

    {"id": N, "op": "ping"}                                     -> {"id": N, "boot_id": "...", "uptime": S}
    {"id": N, "op": "run", "argv": [...], "timeout": S,
     "stdin": "<base64>"?}                                      -> {"id": N, "rc": R, "stdout": b64, "stderr": b64}
    {"id": N, "op": "put", "path": P, "data": b64, "mode": M}  -> {"id": N, "rc": 0}

A command that outlives its timeout is killed (rc 124). A malformed line gets {"id": null, "error": ...}.
Runs as root with the system's python3 (standard library only), independent of /opt/kestrel.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import time

MAX_LINE = 64 << 20
MAX_OUTPUT = 16 << 20


def b64(data: bytes) -> str:
    return base64.b64encode(data[-MAX_OUTPUT:]).decode()


def handle(req: dict) -> dict:
    rid = req.get("id")
    op = req.get("op")
    if op == "ping":
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot_id = fh.read().strip()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return {"id": rid, "boot_id": boot_id, "uptime": uptime}
    if op == "run":
        argv = req["argv"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            return {"id": rid, "error": "argv must be a non-empty list of strings"}
        stdin = base64.b64decode(req["stdin"]) if req.get("stdin") else b""
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=float(req.get("timeout", 60)))
            return {"id": rid, "rc": proc.returncode, "stdout": b64(proc.stdout), "stderr": b64(proc.stderr)}
        except subprocess.TimeoutExpired as exc:
            return {"id": rid, "rc": 124, "stdout": b64(exc.stdout or b""), "stderr": b64(exc.stderr or b"")}
        except OSError as exc:
            return {"id": rid, "rc": 127, "stdout": "", "stderr": b64(f"{argv[0]}: {exc.strerror}".encode())}
    if op == "put":
        path, data = req["path"], base64.b64decode(req["data"])
        tmp = f"{path}.testchan-tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, int(req.get("mode", 0o644)))
        os.replace(tmp, path)
        return {"id": rid, "rc": 0}
    return {"id": rid, "error": f"unknown op {op!r}"}


def serve(port: str) -> None:
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    buf = b""
    while True:
        events = poller.poll(1000)
        if not events:
            continue
        if any(ev & select.POLLHUP for _, ev in events) and not any(ev & select.POLLIN for _, ev in events):
            time.sleep(0.5)  # no host connected: wait for one
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            time.sleep(0.5)
            continue
        buf += chunk
        if len(buf) > MAX_LINE and b"\n" not in buf:
            buf = b""
            reply(fd, {"id": None, "error": f"request longer than {MAX_LINE} bytes"})
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                reply(fd, {"id": None, "error": f"malformed request: {exc}"})
                continue
            try:
                answer = handle(req)
            except (KeyError, TypeError, ValueError, OSError) as exc:
                answer = {"id": req.get("id"), "error": f"{type(exc).__name__}: {exc}"}
            reply(fd, answer)


def reply(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode() + b"\n"
    while data:
        n = os.write(fd, data)
        data = data[n:]


if __name__ == "__main__":
    serve(sys.argv[1])
