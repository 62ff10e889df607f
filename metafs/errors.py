"""POSIX errors: raised inside the namenode, carried over gRPC, raised again by the client.

Inside the namenode every failure is an :class:`FsError` with an errno. The gRPC layer packs
it into a ``google.rpc.Status`` whose details hold an ``ErrorDetail``; the client turns it
back into the matching ``OSError`` subclass (``FileNotFoundError`` for ENOENT, ...), with
the path the caller named in it.
"""

from __future__ import annotations

import errno as _errno
import os

# gRPC status codes chosen per errno so that generic gRPC tooling shows something sensible.
_GRPC_CODE_NAMES = {
    _errno.ENOENT: "NOT_FOUND",
    _errno.EEXIST: "ALREADY_EXISTS",
    _errno.EACCES: "PERMISSION_DENIED",
    _errno.EPERM: "PERMISSION_DENIED",
    _errno.EINVAL: "INVALID_ARGUMENT",
    _errno.ENAMETOOLONG: "INVALID_ARGUMENT",
    _errno.E2BIG: "INVALID_ARGUMENT",
    _errno.ERANGE: "OUT_OF_RANGE",
    _errno.ENOTEMPTY: "FAILED_PRECONDITION",
    _errno.ENOTDIR: "FAILED_PRECONDITION",
    _errno.EISDIR: "FAILED_PRECONDITION",
    _errno.EIO: "INTERNAL",
    _errno.EAGAIN: "UNAVAILABLE",
    _errno.ENOSPC: "RESOURCE_EXHAUSTED",
    _errno.EDQUOT: "RESOURCE_EXHAUSTED",
    _errno.EOPNOTSUPP: "UNIMPLEMENTED",
    _errno.ENOSYS: "UNIMPLEMENTED",
    _errno.ETIMEDOUT: "DEADLINE_EXCEEDED",
}


class FsError(Exception):
    """A failure with a POSIX errno, raised by namenode operations."""

    def __init__(self, errno: int, message: str = "", path: str = "") -> None:
        self.errno = errno
        self.message = message or os.strerror(errno)
        self.path = path
        super().__init__(errno, self.message)

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        where = f": {self.path!r}" if self.path else ""
        return f"[{name}] {self.message}{where}"

    @property
    def grpc_code_name(self) -> str:
        return _GRPC_CODE_NAMES.get(self.errno, "FAILED_PRECONDITION")

    def to_oserror(self, path: str | None = None) -> OSError:
        return make_oserror(self.errno, self.message, path if path is not None else self.path)


def make_oserror(errno: int, message: str, path: str = "") -> OSError:
    """``OSError(errno, ...)`` picks the subclass (FileNotFoundError, ...) by errno."""
    if path:
        return OSError(errno, message, path)
    return OSError(errno, message)


def fail(errno: int, message: str = "", path: str = "") -> FsError:
    return FsError(errno, message, path)
