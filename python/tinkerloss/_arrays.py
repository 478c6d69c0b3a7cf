"""numpy arrays and torch tensors as the library's views, without copies.

An array is read where it lies: its address, dtype, shape and strides (in
elements) are taken from it and handed to the library, which reads rows
`stride` elements apart. What the library cannot address is refused with
an Error saying what to do: a strided last dimension, negative strides,
rows closer than a row's length, a CUDA tensor, a read-only output.

Arrays of any number of leading dimensions are cut into as few blocks of
evenly spaced rows as their strides allow (a slice logits[:, :-1] of a
[B, L, V] buffer is B blocks of L - 1 rows), one library call per block.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from ._lib import Status, fail, lib

__all__ = ["View", "view", "new", "blocks", "kind_of", "matrix", "check_rows"]

F32, BF16, I64 = lib.TL_F32, lib.TL_BF16, lib.TL_I64
_NAMES = {F32: "float32", BF16: "bfloat16", I64: "int64"}
_NUMPY = {np.dtype(np.float32): F32, np.dtype(np.int64): I64}


def _torch():
    """torch if it was imported (a torch tensor implies it is)."""
    return sys.modules.get("torch")


@dataclass
class View:
    """An array as the library sees it. `obj` keeps it alive."""

    obj: object
    kind: str  # "numpy" or "torch"
    ptr: int
    dtype: int  # F32, BF16 or I64
    shape: tuple
    strides: tuple  # in elements
    itemsize: int

    @property
    def ndim(self) -> int:
        return len(self.shape)


def kind_of(obj) -> str | None:
    if isinstance(obj, np.ndarray):
        return "numpy"
    torch = _torch()
    if torch is not None and isinstance(obj, torch.Tensor):
        return "torch"
    return None


def view(obj, name: str, dtypes, *, writable: bool = False) -> View:
    """`obj` (numpy array or CPU torch tensor) as a View, its dtype one of
    `dtypes`; an Error naming `name` otherwise."""
    kind = kind_of(obj)
    if kind == "numpy":
        v = _numpy_view(obj, name, writable)
    elif kind == "torch":
        v = _torch_view(obj, name, writable)
    else:
        raise fail(Status.ERR_DTYPE, name, f"{name} is {type(obj).__name__}, expected a "
                   "numpy array or a torch tensor")
    if v.dtype not in dtypes:
        want = " or ".join(_NAMES[d] for d in dtypes)
        raise fail(Status.ERR_DTYPE, name, f"{name} has dtype {_dtype_name(obj)}, expected {want}")
    if any(s < 0 for s in v.strides):
        raise fail(Status.ERR_SIZE, name, f"{name} has negative strides {v.strides}; "
                   "pass a copy in ascending order (np.ascontiguousarray)")
    return v


def _dtype_name(obj) -> str:
    return str(obj.dtype).replace("torch.", "")


def _numpy_view(a: np.ndarray, name: str, writable: bool) -> View:
    dtype = _NUMPY.get(a.dtype, -1)
    size = a.dtype.itemsize
    if writable and not a.flags.writeable:
        raise fail(Status.ERR_VALUE, name, f"{name} is read-only; the results are written into it")
    if not a.flags.aligned or any(s % size for s in a.strides):
        raise fail(Status.ERR_SIZE, name, f"{name} is not aligned to its {size}-byte elements")
    return View(a, "numpy", a.__array_interface__["data"][0], dtype, a.shape,
                tuple(s // size for s in a.strides), size)


def _torch_view(t, name: str, writable: bool) -> View:
    torch = _torch()
    if t.device.type != "cpu":
        raise fail(Status.ERR_UNSUPPORTED, name, f"{name} is a tensor on {t.device}; tinkerloss "
                   "computes on the CPU: move it there with .cpu()")
    if t.layout != torch.strided:
        raise fail(Status.ERR_UNSUPPORTED, name, f"{name} is a {t.layout} tensor; expected a "
                   "dense one (.to_dense())")
    dtype = {torch.float32: F32, torch.bfloat16: BF16, torch.int64: I64}.get(t.dtype, -1)
    if writable and t.requires_grad:
        raise fail(Status.ERR_VALUE, name, f"{name} requires grad and cannot be written in "
                   "place; pass out.detach() (the same memory)")
    return View(t, "torch", t.data_ptr(), dtype, tuple(t.shape), tuple(t.stride()),
                t.element_size())


def new(kind: str, shape, dtype: int):
    """A new uninitialised array of `kind` (float32 or bfloat16)."""
    if kind == "torch":
        torch = _torch()
        return torch.empty(tuple(shape), dtype=torch.bfloat16 if dtype == BF16 else torch.float32)
    return np.empty(shape, np.float32)


def check_rows(v: View, name: str, lead: int) -> None:
    """The last dimension of v (its rows, after `lead` leading dimensions)
    is contiguous."""
    if v.ndim > lead and v.shape[-1] > 1 and v.strides[-1] != 1 and 0 not in v.shape:
        raise fail(Status.ERR_SIZE, name, f"{name} has a strided last dimension (stride "
                   f"{v.strides[-1]}); the library reads rows of contiguous elements: "
                   "pass .contiguous() (torch) or np.ascontiguousarray (numpy)")


def matrix(obj, name: str) -> View:
    """A float32 or bfloat16 [N, V] logits matrix with contiguous rows."""
    v = view(obj, name, (F32, BF16))
    if v.ndim != 2:
        raise fail(Status.ERR_SHAPE, name, f"{name} has shape {list(v.shape)}, expected [N, V]")
    check_rows(v, name, 1)
    return v


@dataclass
class Operand:
    """One array of a blocked call: `row` is its row length when its rows
    must be packed (targets, per-row outputs), None when they may be any
    stride apart that is at least `width` (logits, gradients)."""

    v: View | None
    name: str
    row: int | None
    width: int = 1


def blocks(lead: tuple, ops: list):
    """The blocks of evenly spaced rows of the leading shape `lead` that
    every operand can address: yields (row0, rows, [(address, row stride)
    per operand]) with row0 the block's first row in row-major order. An
    operand that cannot be addressed so is an Error."""
    dims = [i for i, n in enumerate(lead) if n != 1]
    if any(lead[i] == 0 for i in dims):
        return
    strides = [[op.v.strides[i] for i in dims] if op.v else None for op in ops]
    inner = len(dims) - 1
    count = lead[dims[inner]] if dims else 1
    m = inner  # dims[m:] form one block
    while m > 0 and all(s is None or s[m - 1] == count * s[inner] for s in strides):
        m -= 1
        count *= lead[dims[m]]
    steps = []
    for op, s in zip(ops, strides):
        step = s[inner] if s else (op.row if op.row else op.width)
        if op.v is not None and op.row is not None and dims and step != op.row:
            raise fail(Status.ERR_SIZE, op.name, f"{op.name} is not contiguous over its leading "
                       "dimensions; pass .contiguous() (torch) or np.ascontiguousarray (numpy)")
        if op.v is not None and op.row is None and dims and step < op.width:
            raise fail(Status.ERR_SIZE, op.name, f"{op.name} has rows {step} elements apart, "
                       f"fewer than the {op.width} of a row (a broadcast or overlapping view)")
        steps.append(step)
    outer = [lead[i] for i in dims[:m]]
    for row0, idx in enumerate(np.ndindex(*outer)):
        addrs = []
        for op, s, step in zip(ops, strides, steps):
            if op.v is None:
                addrs.append((0, step))
                continue
            off = sum(int(i) * int(st) for i, st in zip(idx, s))
            addrs.append((op.v.ptr + off * op.v.itemsize, step))
        yield row0 * count, count, addrs
