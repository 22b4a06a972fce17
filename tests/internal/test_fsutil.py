"""The crash-safe file primitives every sub-package builds on."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from kestrel._internal.fsutil import atomic_write, check_private, ensure_private_dir, read_bytes
from kestrel.errors import DataError, TransportError


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_ensure_private_dir_makes_every_missing_parent_0700(tmp_path):
    old = os.umask(0o022)
    try:
        ensure_private_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3


def test_ensure_private_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(TransportError, match="Not a directory"):
        ensure_private_dir(tmp_path / "f")


def test_atomic_write_replaces_whole_file_with_tight_mode(tmp_path):
    target = tmp_path / "secret"
    target.write_bytes(b"old contents that are longer")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temp file left behind


def test_atomic_write_from_many_threads_never_mixes(tmp_path):
    target = tmp_path / "state.json"
    payloads = [bytes([i]) * 4096 for i in range(16)]
    errors = []

    def write(data):
        try:
            for _ in range(20):
                atomic_write(target, data)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in payloads


def test_atomic_write_into_missing_dir_is_a_transport_error(tmp_path):
    with pytest.raises(TransportError, match="cannot write"):
        atomic_write(tmp_path / "missing" / "f", b"x")


def test_check_private_refuses_group_readable_and_symlinks(tmp_path):
    f = tmp_path / "key"
    f.write_bytes(b"k")
    os.chmod(f, 0o640)
    with pytest.raises(TransportError, match="chmod 600"):
        check_private(f)
    os.chmod(f, 0o600)
    check_private(f)
    link = tmp_path / "link"
    link.symlink_to(f)
    with pytest.raises(TransportError, match="symbolic link"):
        check_private(link)


def test_read_bytes_limits_size_and_names_missing_files(tmp_path):
    f = tmp_path / "blob"
    f.write_bytes(b"x" * 11)
    assert read_bytes(f, what="blob", max_size=11) == b"x" * 11
    with pytest.raises(DataError, match="larger than 10 bytes"):
        read_bytes(f, what="blob", max_size=10)
    with pytest.raises(TransportError, match="blob not found"):
        read_bytes(tmp_path / "nope", what="blob")
