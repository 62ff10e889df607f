"""The block store contract, block keys and block checksums.

A block store holds immutable objects ("blocks") under string keys. Every store offers the
same five operations: :meth:`BlockStore.put` (durable before it returns), a ranged
:meth:`BlockStore.get`, an idempotent :meth:`BlockStore.delete`, :meth:`BlockStore.list`
and :meth:`BlockStore.head` / :meth:`BlockStore.exists`. Failures are
:class:`~metafs.errors.FsError`: ENOENT (:class:`BlockNotFound`) for a missing block, EIO
for everything the store could not do, EINVAL for a malformed key.

Checksums are one CRC-32 per fixed-size piece of the block, written as
``crc32:<piece>:<8 hex digits per piece>``, so that a ranged read of any piece-aligned span
is verified without fetching the whole block.
"""

from __future__ import annotations

import errno
import re
import uuid
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol

from ..errors import FsError

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,511}$")


class BlockNotFound(FsError):
    """The store has no block under this key."""

    def __init__(self, key: str) -> None:
        super().__init__(errno.ENOENT, f"block {key} is not in the block store", key)


class StoreUnavailable(FsError):
    """The store could not be reached for longer than a request waits out (EIO). A namenode
    answers a call that met it as unavailable, so that its client tries the call again."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(errno.EIO, message, key)


class ChecksumError(FsError):
    """A block's bytes do not match its checksum."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(errno.EIO, f"block {key} failed its checksum ({detail})", key)


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """What a store knows about one stored block."""

    key: str
    size: int
    mtime: float  # seconds since the epoch when the block was stored


def check_key(key: str) -> str:
    """Return ``key`` if it is a well-formed block key, else raise EINVAL."""
    if not isinstance(key, str) or not _KEY_RE.match(key) or ".." in key.split("/") \
            or "//" in key or key.endswith("/"):
        raise FsError(errno.EINVAL, f"malformed block key {key!r}")
    return key


def new_key(ino: int, index: int) -> str:
    """A fresh, never reused key for chunk ``index`` of inode ``ino``."""
    return f"{ino}/{index}-{uuid.uuid4().hex}"


def key_belongs_to(key: str, ino: int) -> bool:
    return key.startswith(f"{ino}/")


# ---------------------------------------------------------------- checksums
def checksum(data: bytes | bytearray | memoryview, piece: int) -> str:
    """The checksum string of ``data`` with one CRC-32 per ``piece`` bytes."""
    if piece <= 0:
        raise ValueError("checksum piece size must be positive")
    mv = memoryview(data)
    parts = [f"{zlib.crc32(mv[i:i + piece]):08x}" for i in range(0, len(mv), piece)]
    return f"crc32:{piece}:{''.join(parts)}"


def _split_checksum(value: str) -> tuple[int, str]:
    """``(piece size, hex digits: 8 per piece)`` of a checksum string; EINVAL when
    malformed. The digits are not decoded: a ranged read checks a few pieces of a block
    with thousands."""
    try:
        algo, piece_s, digits = value.split(":", 2)
        piece = int(piece_s)
        if algo != "crc32" or piece <= 0 or len(digits) % 8:
            raise ValueError
        return piece, digits
    except ValueError:
        raise FsError(errno.EINVAL, f"malformed block checksum {value[:40]!r}") from None


def parse_checksum(value: str) -> tuple[int, list[int]]:
    """``(piece size, [crc per piece])`` of a checksum string; EINVAL when malformed."""
    piece, digits = _split_checksum(value)
    try:
        return piece, [int(digits[i:i + 8], 16) for i in range(0, len(digits), 8)]
    except ValueError:
        raise FsError(errno.EINVAL, f"malformed block checksum {value[:40]!r}") from None


def checksum_pieces(value: str) -> tuple[int, int]:
    """``(piece size, number of pieces)`` of a checksum string."""
    piece, digits = _split_checksum(value)
    return piece, len(digits) // 8


def pieces_for(length: int, piece: int) -> int:
    return (length + piece - 1) // piece


def verify(key: str, data: bytes | bytearray | memoryview, first_piece: int, value: str,
           npieces: int | None = None) -> None:
    """Check ``data``, which starts at piece ``first_piece`` of block ``key``, against the
    block's checksum ``value``. ``data`` must be whole pieces (the block's last piece may be
    short); with ``npieces`` it must be exactly that many. Raises :class:`ChecksumError`."""
    piece, digits = _split_checksum(value)
    total = len(digits) // 8
    mv = memoryview(data)
    n = pieces_for(len(mv), piece)
    if npieces is not None and n != npieces:
        raise ChecksumError(key, f"{n} pieces where {npieces} were expected: block is short")
    if first_piece + n > total:
        raise ChecksumError(key, "block is longer than its checksum says")
    for j in range(n):
        chunk = mv[j * piece:(j + 1) * piece]
        idx = first_piece + j
        if len(chunk) < piece and idx != total - 1:
            raise ChecksumError(key, f"piece {idx} is short")
        try:
            want = int(digits[idx * 8:idx * 8 + 8], 16)
        except ValueError:
            raise FsError(errno.EINVAL, f"malformed block checksum {value[:40]!r}") from None
        if zlib.crc32(chunk) != want:
            raise ChecksumError(key, f"piece {idx} differs")


def read_verified(store: "BlockIO", key: str, value: str, start: int,
                  end: int) -> bytes | bytearray:
    """Bytes ``[start, end)`` of block ``key``, fetched with one ranged GET widened to whole
    checksum pieces and verified. Past the block's end there is nothing (a short result)."""
    piece, total = checksum_pieces(value)
    p0 = start // piece
    p1 = min(total, pieces_for(end, piece))
    if p0 >= p1:
        return b""
    data = store.get(key, p0 * piece, p1 * piece)
    verify(key, data, p0, value, p1 - p0)
    lo, hi = start - p0 * piece, end - p0 * piece
    if lo == 0 and hi >= len(data):
        return data  # the whole span asked for (e.g. a whole block): no copy
    return bytes(memoryview(data)[lo:hi])


# ---------------------------------------------------------------- the contracts
class BlockIO(Protocol):
    """What a reader or writer of one file needs from wherever its blocks live: a ranged
    read and a whole-block write. Every :class:`BlockStore` offers it; so does a view of
    the store through presigned URLs, which can do nothing else."""

    url: str

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes | bytearray:
        """As :meth:`BlockStore.get`."""
        ...

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """As :meth:`BlockStore.put`."""
        ...


class BlockStore(ABC):
    """Immutable objects under string keys. Implementations must be thread-safe."""

    url: str

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        from ..metrics import instrument_store  # calls, results, latency and bytes

        instrument_store(cls)

    @abstractmethod
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` under ``key``; durable once this returns. A key is written once."""

    @abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the block (to its end when ``end`` is None); fewer when
        the block is shorter, none when ``start`` is at or past its end."""

    @abstractmethod
    def head(self, key: str) -> BlockInfo | None:
        """The block's size and time, or None when it is not stored."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the block; removing a missing block is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlockInfo]:
        """Every stored block whose key starts with ``prefix`` (including unfinished
        uploads a store keeps under its own keys, so that garbage collection sees them)."""

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove several blocks; returns how many were asked for."""
        n = 0
        for k in keys:
            self.delete(k)
            n += 1
        return n

    def presign(self, key: str, put: bool = False, expires: float = 900.0) -> str:
        """A URL that lets a client without credentials GET (or PUT) this block."""
        raise FsError(errno.EOPNOTSUPP, f"{type(self).__name__} cannot presign URLs")

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> "BlockStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
