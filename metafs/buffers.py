"""Copying between Python buffers and raw memory without the interpreter lock.

``memmove(dest, src, n)`` copies the first ``n`` bytes of any contiguous buffer (bytes,
bytearray, mmap, memoryview) to the address ``dest`` with one C memmove, made without the
interpreter lock (a slice assignment holds it for the whole copy); ``address(buf)`` is the
address of a writable buffer's first byte.
"""

from __future__ import annotations

import ctypes
from typing import Any


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (the buffer protocol's view of an object's memory)."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_GetBuffer.restype = ctypes.c_int
_Release = ctypes.pythonapi.PyBuffer_Release
_Release.argtypes = [ctypes.POINTER(_PyBuffer)]
_Release.restype = None
_C_CONTIGUOUS = 0x0020 | 0x0008  # PyBUF_C_CONTIGUOUS


def memmove(dest: int, src: Any, n: int) -> None:
    """Copy the first ``n`` bytes of buffer ``src`` to address ``dest``."""
    if type(src) is bytes:
        if len(src) < n:
            raise ValueError(f"buffer of {len(src)} bytes where {n} were to be copied")
        ctypes.memmove(dest, src, n)
        return
    view = _PyBuffer()
    if _GetBuffer(src, ctypes.byref(view), _C_CONTIGUOUS) != 0:
        raise BufferError("not a contiguous buffer")
    try:
        if view.len < n:
            raise ValueError(f"buffer of {view.len} bytes where {n} were to be copied")
        ctypes.memmove(dest, view.buf, n)
    finally:
        _Release(ctypes.byref(view))


def address(buf: Any) -> int:
    """The address of a writable buffer's first byte (keep ``buf`` alive while it is used)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))
