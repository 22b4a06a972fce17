"""The ledger's strict msgpack profile (pure): one decoder for the writer, the verifiers, sync and the collector.

A ledger record is msgpack, but not every msgpack document is a record. Data is in the
profile (docs/ledger-format.md, section 1.1) when it is exactly one msgpack object whose every
part uses the shortest encoding msgpack's reference packer (``msgpack.packb(obj,
use_bin_type=True)``) writes for it:

* integers in the smallest form (non-negative ones in the unsigned forms), lengths of str,
  bin, array and map in the smallest form;
* floats only as float64 (``0xcb``), never float32;
* str only valid UTF-8; map keys only str, each at most once;
* no ext types (the timestamp extension included), no bytes after the object.

Checking this needs no parser of our own: the data is decoded (C msgpack, str keys and no
ext enforced by hooks) and packed again; in the profile means the bytes are equal. When they
differ, :func:`diagnose` walks the bytes once to say which rule was broken and where (the
slow path, run only for data that is refused anyway).
"""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from .errors import RecordError

__all__ = ["loads_strict", "is_strict", "strict_checker", "diagnose"]

_packers = threading.local()


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"ext type {code}")


def _str_keys(obj: dict) -> dict:
    for key in obj:
        if type(key) is not str:
            raise ValueError("a map key that is not a str")
    return obj


def _packer() -> msgpack.Packer:
    try:
        return _packers.packer
    except AttributeError:
        _packers.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        return _packers.packer


def _decode(data: bytes | memoryview) -> Any:
    # timestamp=1: the timestamp extension (-1, which bypasses ext_hook) decodes to a float,
    # which packs as float64, so the comparison below refuses it
    return msgpack.unpackb(
        data, raw=False, strict_map_key=True, object_hook=_str_keys, ext_hook=_refuse_ext, timestamp=1
    )


def strict_checker(*, tail: bytes = b"", tail_len: int = 0) -> Callable[[bytes], Any]:
    """A fast :func:`is_strict` for one thread's loop over many documents (bytes only).

    The str-key hook (the costly part of the decode) runs only when the document holds a bin marker
    (``c4``..``c6``): a key can only be non-str here by being bin, since the decoder refuses int, nil,
    bool and float keys itself (``strict_map_key``). Documents that end with ``tail`` and then
    ``tail_len`` bytes (a record's ``prev`` written last: ``a4 "prev" c4 20`` and the hash) are
    searched before that tail only, since its bin is a value."""
    pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
    hooked = functools.partial(
        msgpack.unpackb, raw=False, strict_map_key=True, object_hook=_str_keys, ext_hook=_refuse_ext, timestamp=1
    )
    plain = functools.partial(msgpack.unpackb, raw=False, strict_map_key=True, ext_hook=_refuse_ext, timestamp=1)
    skip = len(tail) + tail_len

    def check(data: bytes) -> Any:
        try:
            end = len(data) - skip if skip and data[-skip : len(data) - tail_len] == tail else len(data)
            bins = data.find(b"\xc4", 0, end) >= 0 or data.find(b"\xc5", 0, end) >= 0 or data.find(b"\xc6", 0, end) >= 0
            obj = (hooked if bins else plain)(data)
            return obj if pack(obj) == data else None
        except Exception:
            return None

    return check


def is_strict(data: bytes | memoryview) -> Any:
    """The decoded object if ``data`` is in the profile, else ``None`` (the verifiers' fast path;
    None is never a valid record or body, so it cannot be confused with a result)."""
    try:
        data = bytes(data)
        obj = _decode(data)
        return obj if _packer().pack(obj) == data else None
    except Exception:
        return None


def loads_strict(data: bytes | memoryview, *, what: str = "record") -> Any:
    """Decode ``data``; raise :class:`RecordError` naming the broken rule if it is not in the profile."""
    obj = is_strict(data)
    if obj is None:
        raise RecordError(
            f"{what} is not strict msgpack: {diagnose(bytes(data))}",
            hint="a record is written only by the agent's ledger; see docs/ledger-format.md, section 1.1",
        )
    return obj


# -- the slow path: name the first broken rule -------------------------------------------------


class _Bad(Exception):
    pass


def diagnose(data: bytes) -> str:
    """What is wrong with ``data`` (which the fast check refused), and at which byte."""
    try:
        end = _walk(data, 0, 0)
    except _Bad as exc:
        return str(exc)
    except (IndexError, struct.error):
        return f"truncated: the data ends inside a value ({len(data)} bytes)"
    if end != len(data):
        return f"{len(data) - end} bytes after the object (at byte {end})"
    return "not in the profile"  # not reached for data the fast check refused; kept as a safe answer


_INT_BOUNDS = {0xCC: 0x80, 0xCD: 0x100, 0xCE: 0x10000, 0xCF: 0x100000000}  # smallest value that needs the form
_SINT_FORMS = {0xD0: (1, -0x20), 0xD1: (2, -0x80), 0xD2: (4, -0x8000), 0xD3: (8, -0x80000000)}
_LEN_FORMS = {  # marker: (kind, size of the length, smallest length that needs the form)
    0xD9: ("str", 1, 32),
    0xDA: ("str", 2, 0x100),
    0xDB: ("str", 4, 0x10000),
    0xC4: ("bin", 1, 0),
    0xC5: ("bin", 2, 0x100),
    0xC6: ("bin", 4, 0x10000),
    0xDC: ("array", 2, 16),
    0xDD: ("array", 4, 0x10000),
    0xDE: ("map", 2, 16),
    0xDF: ("map", 4, 0x10000),
}
_EXT = {0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


def _walk(data: bytes, off: int, depth: int, *, key: bool = False) -> int:
    """Check one value at ``off``; return the offset after it (raise _Bad naming the problem)."""
    if depth > 512:
        raise _Bad(f"nested deeper than 512 levels (at byte {off})")
    m = data[off]
    if key and not (0xA0 <= m <= 0xBF or m in (0xD9, 0xDA, 0xDB)):
        raise _Bad(f"a map key that is not a str (marker 0x{m:02x} at byte {off})")
    if m <= 0x7F or m >= 0xE0 or m in (0xC0, 0xC2, 0xC3):
        return off + 1
    if m == 0xCA:
        raise _Bad(f"a float32 (0xca) at byte {off}: floats are float64")
    if m == 0xCB:
        return off + 9
    if m in _INT_BOUNDS:
        size = 1 << (m - 0xCC)
        value = int.from_bytes(data[off + 1 : off + 1 + size], "big")
        if len(data) < off + 1 + size:
            raise IndexError
        if value < _INT_BOUNDS[m]:
            raise _Bad(f"integer {value} in a longer form than needed (0x{m:02x} at byte {off})")
        return off + 1 + size
    if m in _SINT_FORMS:
        size, lowest = _SINT_FORMS[m]
        if len(data) < off + 1 + size:
            raise IndexError
        value = int.from_bytes(data[off + 1 : off + 1 + size], "big", signed=True)
        if value >= 0:
            raise _Bad(f"non-negative integer {value} in a signed form (0x{m:02x} at byte {off})")
        if value >= lowest:
            raise _Bad(f"integer {value} in a longer form than needed (0x{m:02x} at byte {off})")
        return off + 1 + size
    if m in _EXT:
        raise _Bad(f"an ext type (marker 0x{m:02x} at byte {off}): ext types are not allowed")
    if 0xA0 <= m <= 0xBF or m in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6):
        if 0xA0 <= m <= 0xBF:
            kind, n, start = "str", m & 0x1F, off + 1
        else:
            kind, size, least = _LEN_FORMS[m]
            n, start = _length(data, off, size, least, kind)
        if len(data) < start + n:
            raise IndexError
        if kind == "str":
            try:
                data[start : start + n].decode("utf-8")
            except UnicodeDecodeError:
                raise _Bad(f"a str that is not valid UTF-8 (at byte {off})") from None
        return start + n
    if 0x90 <= m <= 0x9F or m in (0xDC, 0xDD):
        n, pos = (m & 0x0F, off + 1) if m <= 0x9F else _length(data, off, *_LEN_FORMS[m][1:], "array")
        for _ in range(n):
            pos = _walk(data, pos, depth + 1)
        return pos
    if 0x80 <= m <= 0x8F or m in (0xDE, 0xDF):
        n, pos = (m & 0x0F, off + 1) if m <= 0x8F else _length(data, off, *_LEN_FORMS[m][1:], "map")
        seen: set[bytes] = set()
        for _ in range(n):
            end = _walk(data, pos, depth + 1, key=True)
            name = data[pos:end]
            if name in seen:
                raise _Bad(f"duplicate map key {_key_text(name)} (at byte {pos})")
            seen.add(name)
            pos = _walk(data, end, depth + 1)
        return pos
    raise _Bad(f"marker 0x{m:02x} at byte {off} is not valid msgpack")


def _length(data: bytes, off: int, size: int, least: int, kind: str) -> tuple[int, int]:
    if len(data) < off + 1 + size:
        raise IndexError
    n = int.from_bytes(data[off + 1 : off + 1 + size], "big")
    if n < least:
        raise _Bad(f"{kind} of length {n} in a longer form than needed (0x{data[off]:02x} at byte {off})")
    return n, off + 1 + size


def _key_text(encoded: bytes) -> str:
    try:
        return repr(msgpack.unpackb(encoded, raw=False))
    except Exception:
        return encoded.hex()
