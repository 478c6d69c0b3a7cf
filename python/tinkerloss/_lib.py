"""The shared library, its declarations, errors and contexts.

`ffi` is generated at build time from include/tinkerloss.h and
include/tinkerloss_io.h (python/gen_ffi.py); `lib` is the shared library
built from the same objects as the C library, installed beside this file
and opened with ffi.dlopen (cffi's ABI mode). cffi releases the GIL for
the duration of every call into it.
"""

from __future__ import annotations

import enum
import os
import threading

from ._ffi import ffi

__all__ = ["ffi", "lib", "Error", "Status", "check", "context", "fail"]

lib = ffi.dlopen(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "_libtinkerloss.so"))

# tl_status, with the C names less their TL_ prefix: Status.ERR_SHAPE.
Status = enum.IntEnum("Status", {name[3:]: value for value, name in
                                 sorted(ffi.typeof("tl_status").elements.items())})


class Error(Exception):
    """Every failure of tinkerloss: the library's status (a Status), the
    argument or input path at fault (`arg`, "" if none), the element or row
    index (`index`, -1 if none) and the library's message."""

    def __init__(self, status, arg: str, index: int, message: str):
        self.status = Status(status)
        self.arg = arg
        self.index = index
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        named = self.message.startswith(self.arg) and \
            self.message[len(self.arg):len(self.arg) + 1] in ("", " ", ":", "[", ".", "=")
        where = f"{self.arg}: " if self.arg and not named else ""
        at = f", index {self.index}" if self.index >= 0 else ""
        return f"{where}{self.message} ({self.status.name}{at})"

    def __reduce__(self):
        return (Error, (int(self.status), self.arg, self.index, self.message))


def fail(status: Status, arg: str, message: str, index: int = -1) -> Error:
    """An Error raised by the Python layer (the library's own come from
    check)."""
    return Error(status, arg, index, message)


def _text(chars) -> str:
    return ffi.string(chars).decode("utf-8", "replace")


def check(status: int, err) -> None:
    """Raise the Error a C call reported (status != TL_OK) with its tl_error."""
    if status:
        raise Error(status, _text(err.arg), int(err.index),
                    _text(err.message) or _text(lib.tl_strerror(status)))


class _Context:
    """One thread's tl_ctx, freed with it, and the settings last given to
    it (so that a call setting the same values sets nothing)."""

    def __init__(self):
        ptr = lib.tl_ctx_new()
        if ptr == ffi.NULL:
            raise MemoryError("tl_ctx_new: out of memory")
        self.ptr = ffi.gc(ptr, lib.tl_ctx_free)
        self.err = ffi.new("tl_error *")
        self.settings = {}

    def set(self, param: int, value: float) -> None:
        if self.settings.get(param) != value:
            self.settings.pop(param, None)
            check(lib.tl_ctx_set(self.ptr, param, value, self.err), self.err)
            self.settings[param] = value


_local = threading.local()


def context(*, threads=None, temperature: float = 1.0, entropy: bool = False):
    """The calling thread's context (its memory kept from one call to the
    next, as the library intends), with these settings. A context serves one
    call at a time: each thread has its own."""
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = _Context()
    if threads is None:
        threads = 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise fail(Status.ERR_VALUE, "threads",
                   f"threads must be a whole number >= 0 or None, got {threads!r}")
    ctx.set(lib.TL_PARAM_THREADS, threads)
    ctx.set(lib.TL_PARAM_TEMPERATURE, _number(temperature, "temperature"))
    ctx.set(lib.TL_PARAM_ENTROPY, 1 if entropy else 0)
    return ctx


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise fail(Status.ERR_VALUE, name, f"{name} must be a number, got {value!r}") from None
