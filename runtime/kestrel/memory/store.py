"""A crash-safe, bounded vector memory on hnswlib (the I/O shell; docs/memory-format.md).

Thread-safety: queries share a read lock; add, delete and replace take the write lock (hnswlib's
``add_items`` is not safe beside ``knn_query``). ``save`` holds the read lock, so queries go on
while it writes. One process at a time may open a memory for writing (``flock`` on ``lock``).

Eviction: when the memory is full, adding evicts the oldest entries first (the order of the
metadata map; ``replace`` makes an entry the youngest).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._internal.fsutil import atomic_write, ensure_private_dir, fsync_dir, read_bytes
from ..errors import DataError, TransportError, UsageError
from .format import SPACES, Header, MemoryFormatError, check_hnsw, decode_file, encode_file, index_name
from .rwlock import RWLock

__all__ = [
    "IndexParams",
    "Hit",
    "AddResult",
    "VectorMemory",
    "DimensionMismatchError",
    "MemoryFullError",
    "MemoryBusyError",
    "FILE_NAME",
]

FILE_NAME = "memory.kmem"
LOCK_NAME = "lock"


class DimensionMismatchError(DataError):
    """A vector's dimension differs from the memory's."""


class MemoryFullError(DataError):
    """More vectors in one call than the memory can ever hold."""


class MemoryBusyError(TransportError):
    """Another process has the memory open for writing."""


@dataclass(frozen=True)
class IndexParams:
    dim: int
    space: str = "cosine"
    capacity: int = 10_000
    M: int = 16
    ef_construction: int = 200
    ef: int = 64
    seed: int = 100

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise UsageError(f"space must be one of {', '.join(SPACES)}, not {self.space!r}")
        if self.dim < 1 or self.capacity < 1 or not 2 <= self.M <= 512 or self.ef < 1 or self.ef_construction < 1:
            raise UsageError("dim, capacity, ef and ef_construction must be positive; M in 2..512")


@dataclass(frozen=True)
class Hit:
    id: int
    distance: float
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AddResult:
    id: int
    evicted: tuple[int, ...] = ()


class VectorMemory:
    """Vectors with msgpack metadata in an hnswlib index, saved crash-safely to ``directory``."""

    def __init__(
        self,
        directory: Path,
        params: IndexParams,
        index: Any,
        entries: dict[int, Any],
        *,
        next_label: int,
        generation: int,
        info: dict[str, Any],
        lock_fd: int | None,
    ) -> None:
        self.directory = directory
        self.params = params
        self._index = index
        self._entries = entries
        self._next_label = next_label
        self._generation = generation
        self.info = info
        self._lock_fd = lock_fd
        self._rw = RWLock()
        self._save_lock = threading.Lock()
        self._dirty = False

    # ---- opening -------------------------------------------------------------------------
    @staticmethod
    def _lock(directory: Path) -> int:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MemoryBusyError(
                f"memory {directory} is open for writing by another process",
                hint="stop the daemon or use it through `kestrel call`",
            ) from None
        return fd

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], params: IndexParams, *, info: Mapping[str, Any] | None = None
    ) -> VectorMemory:
        import hnswlib

        directory = ensure_private_dir(directory)
        if (directory / FILE_NAME).exists():
            raise UsageError(f"a memory already exists in {directory}")
        lock_fd = cls._lock(directory)
        index = hnswlib.Index(space=params.space, dim=params.dim)
        index.init_index(
            max_elements=params.capacity,
            M=params.M,
            ef_construction=params.ef_construction,
            random_seed=params.seed,
            allow_replace_deleted=True,
        )
        index.set_ef(params.ef)
        index.set_num_threads(1)
        mem = cls(directory, params, index, {}, next_label=0, generation=0, info=dict(info or {}), lock_fd=lock_fd)
        mem.save()
        return mem

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, read_only: bool = False, ef: int | None = None) -> VectorMemory:
        """Load a saved memory, checking header, checksums and the index structure first."""
        import hnswlib
        import numpy as np

        directory = Path(directory)
        path = directory / FILE_NAME
        lock_fd = None if read_only else cls._lock(directory)
        try:
            header, meta = decode_file(read_bytes(path, what="memory file"), source=str(path))
            ipath = directory / index_name(header.generation)
            try:
                size = ipath.stat().st_size
            except FileNotFoundError:
                raise MemoryFormatError(
                    f"{path}: its index file {ipath.name} is missing", hint="restore the memory directory from a backup"
                ) from None
            if size != header.index_size or _sha256_file(ipath) != header.index_sha256:
                raise MemoryFormatError(
                    f"{ipath}: size or checksum does not match {FILE_NAME} (corrupt index)",
                    hint="restore the memory directory from a backup",
                )
            entries = {int(k): v for k, v in meta["entries"].items()}
            if size:
                found = check_hnsw(np.memmap(ipath, dtype=np.uint8, mode="r"), header, source=str(ipath))
                if found.live_labels != set(entries):
                    raise MemoryFormatError(f"{ipath}: live labels do not match the metadata in {FILE_NAME}")
            params = IndexParams(
                dim=header.dim,
                space=header.space,
                capacity=header.max_elements,
                M=header.M,
                ef_construction=header.ef_construction,
                ef=ef or header.ef,
            )
            index = hnswlib.Index(space=header.space, dim=header.dim)
            try:
                index.load_index(str(ipath), max_elements=header.max_elements, allow_replace_deleted=True)
            except RuntimeError as exc:
                raise MemoryFormatError(f"{ipath}: hnswlib refused the index: {exc}") from None
            index.set_ef(params.ef)  # load_index resets ef to 10
            index.set_num_threads(1)
            mem = cls(
                directory,
                params,
                index,
                entries,
                next_label=header.next_label,
                generation=header.generation,
                info=dict(meta.get("info") or {}),
                lock_fd=lock_fd,
            )
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if not read_only:
            mem._remove_strays()
        return mem

    @classmethod
    def open_or_create(
        cls, directory: str | os.PathLike[str], params: IndexParams, *, info: Mapping[str, Any] | None = None
    ) -> VectorMemory:
        if (Path(directory) / FILE_NAME).exists():
            mem = cls.open(directory)
            if mem.params.dim != params.dim:
                mem.close()
                raise DimensionMismatchError(
                    f"memory {directory} holds {mem.params.dim}-dimensional vectors, not {params.dim}",
                    hint="use the embedding model the memory was made with, or a new memory directory",
                )
            return mem
        return cls.create(directory, params, info=info)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> VectorMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reads ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def ef(self) -> int:
        return self.params.ef

    def _vectors(self, vectors: Any) -> Any:
        import numpy as np

        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.params.dim:
            raise DimensionMismatchError(
                f"vector of shape {list(np.shape(vectors))} does not fit this memory (dimension {self.params.dim})",
                hint="embed with the model the memory was made with",
            )
        if not np.isfinite(arr).all():
            raise DataError("vector contains NaN or infinity")
        return arr

    def search(self, vector: Any, k: int = 5) -> list[Hit]:
        """The ``k`` nearest entries, nearest first."""
        if k < 1:
            raise UsageError("k must be at least 1")
        q = self._vectors(vector)
        with self._rw.read():
            k = min(k, len(self._entries))
            if not k:
                return []
            while True:
                try:
                    labels, dists = self._index.knn_query(q, k=k, num_threads=1)
                    break
                except RuntimeError:  # too few reachable live points for k (many deletions)
                    if k == 1:
                        return []
                    k //= 2
            return [
                Hit(id=int(lab), distance=float(d), meta=self._entries.get(int(lab), {}))
                for lab, d in zip(labels[0], dists[0], strict=False)
            ]

    def get(self, id: int) -> Mapping[str, Any]:
        try:
            return self._entries[id]
        except KeyError:
            raise DataError(f"memory has no entry {id}") from None

    def ids(self) -> list[int]:
        """Entry ids, oldest first (the eviction order)."""
        with self._rw.read():
            return list(self._entries)

    # ---- writes --------------------------------------------------------------------------
    def add(self, vector: Any, meta: Mapping[str, Any] | None = None) -> AddResult:
        return self.add_many(self._vectors(vector), [meta or {}])[0]

    def add_many(
        self, vectors: Any, metas: Iterable[Mapping[str, Any]] | None = None, *, num_threads: int = 1
    ) -> list[AddResult]:
        """Add a batch; evicts the oldest entries if it would overflow the capacity."""
        import numpy as np

        arr = self._vectors(vectors)
        n = arr.shape[0]
        metas = list(metas) if metas is not None else [{} for _ in range(n)]
        if len(metas) != n:
            raise UsageError("one meta per vector")
        if n > self.params.capacity:
            raise MemoryFullError(f"{n} vectors exceed the memory's capacity of {self.params.capacity}")
        for m in metas:
            if not isinstance(m, Mapping):
                raise DataError("meta must be a mapping")
        with self._rw.write():
            overflow = len(self._entries) + n - self.params.capacity
            evicted: list[int] = []
            if overflow > 0:
                for label in list(self._entries)[:overflow]:
                    self._index.mark_deleted(label)
                    del self._entries[label]
                    evicted.append(label)
            labels = np.arange(self._next_label, self._next_label + n, dtype=np.uint64)
            self._index.add_items(arr, labels, num_threads=num_threads, replace_deleted=True)
            self._next_label += n
            for label, m in zip(labels.tolist(), metas, strict=False):
                self._entries[label] = dict(m)
            self._dirty = True
        return [AddResult(id=int(lab), evicted=tuple(evicted) if i == 0 else ()) for i, lab in enumerate(labels)]

    def delete(self, id: int) -> None:
        with self._rw.write():
            if id not in self._entries:
                raise DataError(f"memory has no entry {id}")
            self._index.mark_deleted(id)
            del self._entries[id]
            self._dirty = True

    def replace(self, id: int, vector: Any, meta: Mapping[str, Any] | None = None) -> None:
        """Replace an entry's vector (and meta, if given); it becomes the youngest entry."""
        arr = self._vectors(vector)
        with self._rw.write():
            if id not in self._entries:
                raise DataError(f"memory has no entry {id}")
            self._index.add_items(arr, [id], num_threads=1)
            old = self._entries.pop(id)
            self._entries[id] = dict(meta) if meta is not None else old
            self._dirty = True

    def set_ef(self, ef: int) -> None:
        with self._rw.write():
            self._index.set_ef(ef)
            self.params = IndexParams(**{**self.params.__dict__, "ef": ef})
            self._dirty = True

    # ---- persistence ---------------------------------------------------------------------
    def save(self) -> None:
        """Write a new generation: index (temp, fsync, rename), then the header file atomically."""
        if self._lock_fd is None:
            raise UsageError("memory was opened read-only")
        with self._save_lock, self._rw.read():
            gen = self._generation + 1
            final = self.directory / index_name(gen)
            tmp = self.directory / f".{final.name}.tmp.{os.getpid()}"
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
                self._index.save_index(str(tmp))
                _fsync_file(tmp)
                digest = _sha256_file(tmp)
                size = tmp.stat().st_size
                os.replace(tmp, final)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise TransportError(f"cannot save memory index {final}: {exc.strerror or exc}") from None
            header = Header(
                dim=self.params.dim,
                space=self.params.space,
                count=len(self._entries),
                max_elements=self.params.capacity,
                M=self.params.M,
                ef_construction=self.params.ef_construction,
                ef=self.params.ef,
                generation=gen,
                next_label=self._next_label,
                index_size=size,
                index_sha256=digest,
            )
            meta = {"entries": self._entries, "info": self.info}
            atomic_write(self.directory / FILE_NAME, encode_file(header, meta))  # fsyncs the directory too
            old = self._generation
            self._generation = gen
            self._dirty = False
        (self.directory / index_name(old)).unlink(missing_ok=True)

    @property
    def dirty(self) -> bool:
        return self._dirty

    def _remove_strays(self) -> None:
        keep = index_name(self._generation)
        for p in self.directory.iterdir():
            if (p.name.startswith("index-") and p.name.endswith(".hnsw") and p.name != keep) or (
                p.name.startswith(".index-") or p.name.startswith(f".{FILE_NAME}.tmp")
            ):
                p.unlink(missing_ok=True)
        fsync_dir(self.directory)


def _sha256_file(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
