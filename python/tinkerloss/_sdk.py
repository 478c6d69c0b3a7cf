"""Reading Tinker SDK objects by duck typing, without importing the SDK.

A datum or a forward_backward result may come in three forms:

- an SDK object of the older generation (tinker < 0.20: pydantic models
  ``Datum``, ``TensorData``, ``ForwardBackwardOutput``);
- an SDK object of the newer generation (tinker >= 0.20: frozen dataclasses;
  ``TensorData`` keeps a numpy array behind ``to_numpy()`` and computes
  ``data`` as a property);
- a dict in the wire JSON shape, e.g. ``{"model_input": {"chunks": [...]},
  "loss_fn_inputs": {key: {"data", "dtype", "shape", ...}}}``.

Fields are read by name, from a dict or from attributes, so all three go
through the same code.  Inside ``loss_fn_inputs`` a value may also be what the
SDK's ``Datum`` coerces into a ``TensorData`` (tinker/types/datum.py,
``_maybe_convert_array``): a numpy array, a torch tensor or a (nested) list.

Two views of each are offered:

- ``*_to_wire``: plain JSON-ready Python values (lists, ints, floats, str),
  as written to a call dump.  Float NaN and infinities stay floats here;
  the dump writer spells them as strings.
- ``*_arrays``: numpy arrays for computation.  An array that already has the
  right dtype and is contiguous is returned as is (or as a view), never copied.

Every error is a ``Error`` whose message starts with the path of the bad
value, e.g. ``data[2].loss_fn_inputs.advantages: 12 values, expected 13 for
shape [13]``; callers pass the path prefix.
"""

from __future__ import annotations

import base64
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ._lib import Error, Status

__all__ = [
    "NormDatum",
    "NormOutput",
    "datum_to_wire",
    "datum_arrays",
    "datum_inputs",
    "output_to_wire",
    "output_arrays",
]


def _fail(path: str, message: str, status: Status = Status.ERR_VALUE) -> Error:
    """What cannot be read: an Error whose arg is the path of the offending
    value and whose message starts with it."""
    return Error(status, path, -1, f"{path}: {message}")


def _describe(value) -> str:
    """A short description of a value's type for error messages."""
    return "null" if value is None else type(value).__name__


_MISSING = object()


def _get(obj, name: str, path: str, default=_MISSING):
    """Field `name` of a dict, or attribute `name` of an object.

    Without a default a missing field is an error naming `path` (the path of
    `obj`)."""
    if isinstance(obj, Mapping):
        value = obj.get(name, _MISSING)
    else:
        value = getattr(obj, name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise _fail(path, f"missing {name!r} (got {_describe(obj)})", Status.ERR_MISSING)
        return default
    return value


# ---- numbers ---------------------------------------------------------------

# The library's JSON spelling of the float values JSON lacks.
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def float_value(value, path: str) -> float:
    """A metric or config value as a Python float: a number, or one of the
    strings "nan", "inf", "-inf"."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    raise _fail(path, f"is {value!r}, expected a number")


def float_map(mapping, path: str) -> dict:
    """A str -> float mapping (metrics, loss_fn_config) as a new dict."""
    if not isinstance(mapping, Mapping):
        raise _fail(path, f"is {_describe(mapping)}, expected a mapping of names to numbers")
    out = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise _fail(path, f"key {key!r} is not a string")
        out[key] = float_value(value, f'{path}["{key}"]')
    return out


def _int_array(seq, path: str, what: str) -> np.ndarray:
    """A flat sequence of integers (tokens, shape, CSR indices) as int64.

    Bools and floats are refused, whatever their value."""
    if isinstance(seq, np.ndarray):
        if seq.ndim != 1 or (seq.dtype.kind not in "iu" and seq.size):
            raise _fail(path, f"{what} is a {seq.ndim}-D {seq.dtype} array, expected integers")
        return seq.astype(np.int64, copy=False)
    if not isinstance(seq, (list, tuple)):
        raise _fail(path, f"{what} is {_describe(seq)}, expected a list of integers")
    if not set(map(type, seq)) <= {int}:
        for i, x in enumerate(seq):
            if not _is_int(x):
                raise _fail(path, f"{what}[{i}] is {x!r}, expected an integer")
    try:
        return np.array(seq, dtype=np.int64)
    except OverflowError:
        raise _fail(path, f"{what} holds an integer outside the int64 range") from None


def _cast(arr: np.ndarray, dtype, path: str) -> np.ndarray:
    """`arr` as `dtype` (np.int64 or np.float32): the array itself when it
    already is, else a converted copy.  Floats converted to int64 must hold
    integers; booleans count as 0 and 1 (the SDK accepts lists of them)."""
    if arr.dtype == dtype:
        return arr
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise _fail(path, f"holds {arr.dtype} values, expected numbers")
    if dtype == np.int64:
        if kind == "f":
            bad = ~np.isfinite(arr) | (arr != np.trunc(arr))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise _fail(path, f"value {arr.flat[i]!r} at flat index {i} is not an integer")
        if kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise _fail(path, "holds an integer outside the int64 range")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, as in the SDK
        return arr.astype(dtype)


def _wire_numbers(seq, dtype: str, path: str) -> np.ndarray:
    """The flat `data` list of a wire TensorData as a numpy array of `dtype`.

    Elements must be numbers; float32 data may also hold the strings "nan",
    "inf" and "-inf" (the library's JSON convention).  Integral floats are
    accepted in int64 data."""
    np_dtype = np.int64 if dtype == "int64" else np.float32
    if isinstance(seq, np.ndarray):
        return _cast(seq.reshape(-1), np_dtype, path)
    if not isinstance(seq, (list, tuple)):
        raise _fail(path, f"data is {_describe(seq)}, expected a list of numbers")
    if not set(map(type, seq)) <= {int, float}:
        seq = [_wire_number(x, i, dtype, path) for i, x in enumerate(seq)]
    try:
        arr = np.array(seq)
    except OverflowError:
        raise _fail(path, "data holds an integer outside the int64 range") from None
    if arr.size == 0:
        return np.zeros(0, np_dtype)
    if arr.dtype.kind not in "iuf":  # Python ints beyond 64 bits become objects
        raise _fail(path, "data holds an integer outside the int64 range")
    return _cast(arr, np_dtype, path)


def _wire_number(x, i: int, dtype: str, path: str):
    """Element `i` of a wire data list, checked (the slow path)."""
    if _is_number(x):
        return x
    if dtype == "float32" and isinstance(x, str) and x in _NON_FINITE:
        return _NON_FINITE[x]
    raise _fail(path, f"data[{i}] is {x!r}, expected a number")


# ---- tensors ---------------------------------------------------------------


@dataclass
class _Tensor:
    """One TensorData, read: `values` hold the dense array (shaped `shape`),
    or for CSR the flat non-zero values with `crow`/`col` set."""

    values: np.ndarray
    dtype: str  # the wire dtype: "int64" or "float32"
    shape: list
    crow: np.ndarray | None = None
    col: np.ndarray | None = None

    def wire(self) -> dict:
        out = {"data": self.values.ravel().tolist(), "dtype": self.dtype, "shape": list(self.shape)}
        if self.crow is not None:
            out["sparse_crow_indices"] = self.crow.tolist()
            out["sparse_col_indices"] = self.col.tolist()
        return out

    def dense(self, dtype, path: str) -> np.ndarray:
        """The dense C-contiguous array in `dtype`, without a copy when the
        values already are that."""
        if self.crow is None:
            arr = self.values
        else:
            arr = np.zeros(self.shape, self.values.dtype)
            rows = np.repeat(np.arange(self.shape[0]), np.diff(self.crow))
            arr[rows, self.col] = self.values
        arr = _cast(arr, dtype, path)
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _key_dtype(key: str) -> str:
    """The dtype the SDK gives a list under `key` (datum.py `_KEY_TO_TYPE`:
    int64 for target_tokens, float32 for the others; keys the SDK does not
    list, such as the cookbook's mask, are taken as float32)."""
    return "int64" if key == "target_tokens" else "float32"


def _read_tensor(value, key: str, path: str) -> _Tensor:
    """A loss_fn_inputs or loss_fn_outputs value: TensorData (object or
    dict), numpy array, torch tensor or list."""
    torch = sys.modules.get("torch")  # a torch tensor implies torch is imported
    if isinstance(value, Mapping):
        return _read_tensor_data(value, path)
    if isinstance(value, (np.ndarray, np.generic)):
        return _from_array(np.asarray(value), path)
    if torch is not None and isinstance(value, torch.Tensor):
        return _from_array(_torch_to_numpy(value, torch, path), path)
    if isinstance(value, (list, tuple)):
        return _from_list(value, key, path)
    if hasattr(value, "dtype"):  # not hasattr(value, "data"): a property may build a list
        return _read_tensor_data(value, path)
    raise _fail(path, f"is {_describe(value)}, expected TensorData, a numpy array, "
                      "a torch tensor or a list")


def _from_array(arr: np.ndarray, path: str) -> _Tensor:
    """A numpy array as the SDK's TensorData.from_numpy sends it: floats as
    float32, signed integers as int64, other dtypes refused."""
    if arr.ndim == 0:
        raise _fail(path, "is a scalar, expected an array")
    if arr.dtype.kind == "f":
        dtype = "float32"
    elif arr.dtype.kind == "i":
        dtype = "int64"
    else:
        raise _fail(path, f"has dtype {arr.dtype}; the SDK sends only float and "
                          "signed integer arrays", Status.ERR_DTYPE)
    return _Tensor(_cast(arr, np.float32 if dtype == "float32" else np.int64, path),
                   dtype, list(arr.shape))


def _torch_to_numpy(tensor, torch, path: str) -> np.ndarray:
    """A CPU torch tensor as numpy, sharing its memory when it can;
    bfloat16 (which numpy lacks) widened to float32 as the SDK does."""
    if tensor.device.type != "cpu":
        raise _fail(path, f"is a torch tensor on {tensor.device}; move it to the CPU",
                    Status.ERR_UNSUPPORTED)
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError) as exc:
        raise _fail(path, f"cannot read the torch tensor ({exc})") from None


def _from_list(seq, key: str, path: str) -> _Tensor:
    """A (nested, rectangular) list of numbers, in the dtype of its key."""
    try:
        arr = np.array(seq)
    except (ValueError, OverflowError):
        raise _fail(path, "is a ragged or out-of-range list; expected a rectangular "
                          "array of numbers") from None
    if arr.size and arr.dtype.kind not in "biuf":
        raise _fail(path, "is a list that holds something other than numbers")
    dtype = _key_dtype(key)
    return _Tensor(_cast(arr, np.int64 if dtype == "int64" else np.float32, path),
                   dtype, list(arr.shape))


def _read_tensor_data(td, path: str) -> _Tensor:
    """A TensorData of either SDK generation, or its wire dict."""
    dtype = _get(td, "dtype", path)
    if dtype not in ("int64", "float32"):
        raise _fail(path, f"dtype is {dtype!r}, expected 'int64' or 'float32'",
                    Status.ERR_DTYPE)
    np_dtype = np.int64 if dtype == "int64" else np.float32
    shape = _get(td, "shape", path, None)
    crow = _get(td, "sparse_crow_indices", path, None)
    col = _get(td, "sparse_col_indices", path, None)
    if shape is not None:
        shape = _int_array(shape, path, "shape").tolist()
        if any(n < 0 for n in shape):
            raise _fail(path, f"shape {shape} has a negative dimension")
    if crow is not None or col is not None:
        return _read_csr(_wire_numbers(_get(td, "data", path), dtype, path),
                         dtype, shape, crow, col, path)
    if not isinstance(td, Mapping) and isinstance(getattr(type(td), "data", None), property):
        # The newer SDK keeps the values as an array and builds `data` as a
        # list on each access: to_numpy() gives the array itself.
        values = _cast(np.asarray(td.to_numpy()), np_dtype, path)
    else:
        values = _wire_numbers(_get(td, "data", path), dtype, path)
    if shape is None:  # a null shape means 1-D
        shape = [values.size]
    if values.size != math.prod(shape):
        raise _fail(path, f"{values.size} values, expected {math.prod(shape)} for shape {shape}",
                    Status.ERR_SHAPE)
    return _Tensor(values.reshape(shape), dtype, shape)


def _read_csr(values: np.ndarray, dtype: str, shape, crow, col, path: str) -> _Tensor:
    """A sparse CSR TensorData: checks that the indices describe `shape`."""
    if crow is None or col is None:
        raise _fail(path, "sparse_crow_indices and sparse_col_indices must be set together")
    if shape is None or len(shape) != 2:
        raise _fail(path, f"a sparse CSR tensor needs a 2-D shape, got {shape}")
    crow = _int_array(crow, path, "sparse_crow_indices")
    col = _int_array(col, path, "sparse_col_indices")
    rows, cols = shape
    nnz = values.size
    if crow.size != rows + 1 or crow[0] != 0 or crow[-1] != nnz or col.size != nnz:
        raise _fail(path, f"sparse indices do not match: {crow.size} row pointers for {rows} "
                          f"rows, {col.size} column indices and {nnz} values")
    if (np.diff(crow) < 0).any():
        raise _fail(path, f"sparse_crow_indices decrease at {int(np.flatnonzero(np.diff(crow) < 0)[0])}")
    if nnz and (col.min() < 0 or col.max() >= cols):
        q = int(np.flatnonzero((col < 0) | (col >= cols))[0])
        raise _fail(path, f"sparse_col_indices[{q}] = {col[q]} is outside {cols} columns")
    return _Tensor(values, dtype, list(shape), crow, col)


# ---- model input -----------------------------------------------------------


def _expected_tokens(chunk, path: str):
    n = _get(chunk, "expected_tokens", path, None)
    if n is not None and not (_is_int(n) and n >= 0):
        raise _fail(path, f"expected_tokens is {n!r}, expected a non-negative integer or null")
    return None if n is None else int(n)


def _string_field(chunk, name: str, path: str) -> str:
    value = _get(chunk, name, path)
    if not isinstance(value, str):
        raise _fail(path, f"{name} is {_describe(value)}, expected a string")
    return value


def _read_chunk(chunk, path: str) -> dict:
    """One ModelInput chunk (pydantic model or dict) as its wire dict."""
    kind = _get(chunk, "type", path)
    if kind == "encoded_text":
        tokens = _int_array(_get(chunk, "tokens", path), path, "tokens")
        return {"type": "encoded_text", "tokens": tokens.tolist()}
    if kind == "image":
        data = _get(chunk, "data", path)
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = base64.b64encode(data).decode("ascii")  # as the SDK serialises it
        elif not isinstance(data, str):
            raise _fail(path, f"data is {_describe(data)}, expected bytes or a base64 string")
        return {"type": "image", "data": data, "format": _string_field(chunk, "format", path),
                "expected_tokens": _expected_tokens(chunk, path)}
    if kind == "image_asset_pointer":
        return {"type": "image_asset_pointer", "location": _string_field(chunk, "location", path),
                "format": _string_field(chunk, "format", path),
                "expected_tokens": _expected_tokens(chunk, path)}
    raise _fail(path, f"chunk type {kind!r} is not supported (expected 'encoded_text', "
                      "'image' or 'image_asset_pointer')")


# ---- datums ----------------------------------------------------------------


def _read_datum(obj, path: str) -> tuple[list, dict]:
    """The chunks (wire dicts) and the loss_fn_inputs (key -> _Tensor)."""
    model_input = _get(obj, "model_input", path)
    chunks = _get(model_input, "chunks", f"{path}.model_input")
    if not isinstance(chunks, (list, tuple)):
        raise _fail(f"{path}.model_input.chunks", f"is {_describe(chunks)}, expected a list")
    wire_chunks = [_read_chunk(c, f"{path}.model_input.chunks[{i}]") for i, c in enumerate(chunks)]
    return wire_chunks, _read_inputs(obj, path)


def _read_inputs(obj, path: str) -> dict:
    """The loss_fn_inputs of a datum (key -> _Tensor)."""
    inputs = _get(obj, "loss_fn_inputs", path)
    if not isinstance(inputs, Mapping):
        raise _fail(f"{path}.loss_fn_inputs", f"is {_describe(inputs)}, expected a mapping")
    tensors = {}
    for key, value in inputs.items():
        if not isinstance(key, str):
            raise _fail(f"{path}.loss_fn_inputs", f"key {key!r} is not a string")
        tensors[key] = _read_tensor(value, key, f"{path}.loss_fn_inputs.{key}")
    return tensors


def _dense_inputs(tensors: dict, path: str) -> dict:
    return {key: t.dense(np.int64 if key == "target_tokens" else np.float32,
                         f"{path}.loss_fn_inputs.{key}")
            for key, t in tensors.items()}


def datum_inputs(obj, path: str = "datum") -> dict:
    """A datum's loss_fn_inputs as dense arrays, int64 for target_tokens and
    float32 for every other key; the model input is not read."""
    return _dense_inputs(_read_inputs(obj, path), path)


def datum_to_wire(obj, path: str = "datum") -> dict:
    """A datum in the wire JSON shape, with plain Python values.

    TensorData keep their dtype, explicit shape and CSR indices as given;
    numpy arrays and torch tensors get the dtype the SDK would send (float32
    for floats, int64 for integers), lists the dtype of their key.  Image
    bytes become base64 strings."""
    chunks, tensors = _read_datum(obj, path)
    return {"model_input": {"chunks": chunks},
            "loss_fn_inputs": {key: t.wire() for key, t in tensors.items()}}


@dataclass
class NormDatum:
    """A datum ready for computation.

    `model_input`: the chunks as wire dicts; `model_input_length`: the text
    tokens plus each image's expected_tokens; `input_tokens`: int64 of that
    length, -1 at image positions; `loss_fn_inputs`: dense arrays, int64 for
    target_tokens and float32 for every other key (all keys kept)."""

    model_input: list
    model_input_length: int
    input_tokens: np.ndarray
    loss_fn_inputs: dict


def datum_arrays(obj, path: str = "datum") -> NormDatum:
    """A datum as numpy arrays (see NormDatum)."""
    chunks, tensors = _read_datum(obj, path)
    pieces = []
    for i, chunk in enumerate(chunks):
        if chunk["type"] == "encoded_text":
            pieces.append(np.array(chunk["tokens"], dtype=np.int64))
        elif chunk["expected_tokens"] is None:
            raise _fail(f"{path}.model_input.chunks[{i}]",
                        f"{chunk['type']} chunk has no expected_tokens, so its length "
                        "in the model input is unknown")
        else:
            pieces.append(np.full(chunk["expected_tokens"], -1, dtype=np.int64))
    input_tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    arrays = _dense_inputs(tensors, path)
    return NormDatum(chunks, int(input_tokens.size), input_tokens, arrays)


# ---- results ---------------------------------------------------------------


def _read_output(result, path: str) -> tuple:
    """loss_fn_output_type (str or None), the outputs (name -> _Tensor per
    datum) and the metrics (name -> float) of a ForwardBackwardOutput."""
    kind = _get(result, "loss_fn_output_type", path, None)
    if kind is not None and not isinstance(kind, str):
        raise _fail(f"{path}.loss_fn_output_type", f"is {_describe(kind)}, expected a string")
    outputs = _get(result, "loss_fn_outputs", path)
    if not isinstance(outputs, (list, tuple)):
        raise _fail(f"{path}.loss_fn_outputs", f"is {_describe(outputs)}, expected a list")
    read = []
    for i, out in enumerate(outputs):
        p = f"{path}.loss_fn_outputs[{i}]"
        if not isinstance(out, Mapping):
            raise _fail(p, f"is {_describe(out)}, expected a mapping of names to TensorData")
        read.append({name: _read_tensor(v, name, f"{p}.{name}") for name, v in out.items()})
    metrics = float_map(_get(result, "metrics", path), f"{path}.metrics")
    return kind, read, metrics


def output_to_wire(result, path: str = "result") -> dict:
    """A ForwardBackwardOutput (either generation, or its dict) in the wire
    JSON shape; a missing loss_fn_output_type (older dumps) becomes None."""
    kind, outputs, metrics = _read_output(result, path)
    return {"loss_fn_output_type": kind,
            "loss_fn_outputs": [{name: t.wire() for name, t in out.items()} for out in outputs],
            "metrics": metrics}


@dataclass
class NormOutput:
    """A forward_backward result ready for computation: each datum's outputs
    as dense arrays in their own dtype, the metrics as floats."""

    loss_fn_output_type: str | None
    loss_fn_outputs: list
    metrics: dict


def output_arrays(result, path: str = "result") -> NormOutput:
    """A ForwardBackwardOutput as numpy arrays (see NormOutput)."""
    kind, outputs, metrics = _read_output(result, path)
    arrays = [{name: t.dense(t.values.dtype, f"{path}.loss_fn_outputs[{i}].{name}")
               for name, t in out.items()}
              for i, out in enumerate(outputs)]
    return NormOutput(kind, arrays, metrics)
