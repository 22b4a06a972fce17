"""Bundle files in bounded memory: size and head are checked before the contents are read,
every refusal is recorded with the file's size and sha256, the drop directory obeys its limit."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

from kestrel.ota import apply_bundle_file, scan_drop_dir
from kestrel.ota.bundle import MAX_HEAD, Limits
from kestrel.ota.errors import BundleError

from .conftest import Device

BIG = 200 * 1024 * 1024


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def _peak_while(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        try:
            out: object = fn()
        except BundleError as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_an_oversize_file_is_refused_before_it_is_read_and_recorded(device: Device, tmp_path: Path) -> None:
    path = _sparse(tmp_path / "huge.kbundle", BIG)
    err, peak = _peak_while(
        lambda: apply_bundle_file(
            device.state, path, ledger=device.ledger, now=device.now, limits=Limits(max_bundle=16 << 20)
        )
    )
    assert isinstance(err, BundleError) and err.code == "oversize"
    assert peak < 4 << 20, peak  # hashed in 1 MiB pieces: memory does not follow the file's size
    rec = device.kinds("ota.rejected")[-1]
    assert (rec["reason"], rec["size"], rec["file"]) == ("oversize", BIG, "huge.kbundle")
    assert rec["sha256"] == _sha256_file(path)


@pytest.mark.parametrize("head", [b"NOTABUNDLE", b"KSTRLBN1\xff\xff\xff\xff"])
def test_a_bad_head_is_refused_after_reading_only_the_head(device: Device, tmp_path: Path, head: bytes) -> None:
    path = _sparse(tmp_path / "bad.kbundle", 64 << 20, head)
    err, peak = _peak_while(lambda: apply_bundle_file(device.state, path, ledger=device.ledger, now=device.now))
    assert isinstance(err, BundleError) and err.code in ("bad-magic", "oversize")
    assert peak < MAX_HEAD + (4 << 20), peak
    assert device.kinds("ota.rejected")[-1]["size"] == 64 << 20


def test_a_signed_head_with_a_wrong_size_is_refused_without_reading_the_contents(
    device: Device, tmp_path: Path
) -> None:
    good = device.bundle(counter=1)
    path = _sparse(tmp_path / "padded.kbundle", 32 << 20, good)  # a valid head, then 32 MiB of zeros
    err, peak = _peak_while(lambda: apply_bundle_file(device.state, path, ledger=device.ledger, now=device.now))
    assert isinstance(err, BundleError) and err.code == "trailing-data"
    assert peak < MAX_HEAD + (4 << 20), peak
    (tmp_path / "short.kbundle").write_bytes(good[:-10])
    with pytest.raises(BundleError) as short:
        apply_bundle_file(device.state, tmp_path / "short.kbundle", ledger=device.ledger, now=device.now)
    assert short.value.code == "truncated"


def test_a_good_file_applies(device: Device, tmp_path: Path) -> None:
    path = tmp_path / "v1.kbundle"
    path.write_bytes(device.bundle(counter=1))
    res = apply_bundle_file(device.state, path, ledger=device.ledger, now=device.now)
    assert res.changed and device.kinds("ota.applied")[-1]["counter"] == 1


def test_fifos_and_symlinks_are_refused_and_recorded(device: Device, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.kbundle"
    os.mkfifo(fifo)
    link = tmp_path / "link.kbundle"
    link.symlink_to("/etc/passwd")
    for path in (fifo, link):
        with pytest.raises(BundleError) as err:
            apply_bundle_file(device.state, path, ledger=device.ledger, now=device.now)
        assert err.value.code == "not-regular-file"
    assert [r["file"] for r in device.kinds("ota.rejected")] == ["fifo.kbundle", "link.kbundle"]


def test_the_drop_directory_obeys_the_configured_limit(device: Device, tmp_path: Path) -> None:
    drop = tmp_path / "usb"
    drop.mkdir()
    _sparse(drop / "a-huge.kbundle", BIG)
    (drop / "b-small.kbundle").write_bytes(device.bundle(counter=1))
    found, peak = _peak_while(
        lambda: scan_drop_dir(
            device.state, drop, ledger=device.ledger, now=device.now, limits=Limits(max_bundle=1 << 20)
        )
    )
    assert peak < 8 << 20, peak
    assert [(p.name, getattr(r, "code", "applied")) for p, r in found] == [
        ("a-huge.kbundle", "oversize"),
        ("b-small.kbundle", "applied"),
    ]
    assert [r["reason"] for r in device.kinds("ota.rejected")] == ["oversize"]
    # a second scan neither re-applies nor re-rejects
    assert (
        scan_drop_dir(device.state, drop, ledger=device.ledger, now=device.now, limits=Limits(max_bundle=1 << 20)) == []
    )
