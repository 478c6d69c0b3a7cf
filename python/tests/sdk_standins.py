"""Stand-ins for the tinker SDK's public types and TrainingClient, for tests.

They reproduce the public shapes of the SDK (repository
thinking-machines-lab/tinker; each class cites its source file there) in two
generations:

- ``old``: SDK 0.19 and earlier, where TensorData, Datum and
  ForwardBackwardOutput are pydantic models (``model_dump(mode="json")``
  writes null for absent optional fields);
- ``new``: SDK 0.20 to 0.25, where they are frozen dataclasses; TensorData
  keeps a numpy array (``to_numpy()``), ``data`` is a property.

ModelInput and its chunks are pydantic models in both.  The classes work with
pydantic 1.10 (Debian 12's python3-pydantic) and 2.x (what the SDK itself
requires); with 1.10 they offer ``model_dump`` like 2.x.

The TrainingClient stand-ins compute nothing: each request is answered by the
callable ``answer(data, loss_fn, loss_fn_config) -> ForwardBackwardOutput``
given at construction, so a test decides what the "server" returns.
"""

from __future__ import annotations

import base64
import json
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Annotated, Dict, List, Literal, Optional, Sequence, Union

import numpy as np
import pydantic

try:
    import torch
except ImportError:  # the SDK works without torch, and so do these
    torch = None

__all__ = ["old", "new", "APIFuture"]

PYDANTIC_V2 = int(pydantic.VERSION.split(".")[0]) >= 2


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


# ---- pydantic bases: tinker/_models.py StrictBase (requests: frozen, extra
# fields forbidden) and BaseModel (responses: frozen, extra fields ignored) --

if PYDANTIC_V2:

    class StrictBase(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    class ResponseBase(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    def _before_field(name):
        return pydantic.field_validator(name, mode="before")

    _before_model = pydantic.model_validator(mode="before")

else:

    class _V1Base(pydantic.BaseModel):
        class Config:
            frozen = True
            json_encoders = {bytes: _b64}  # ImageChunk data, as the SDK's field_serializer

        def model_dump(self, mode: str = "python"):
            """pydantic 2's name for dict(); mode="json" gives JSON values."""
            return json.loads(self.json()) if mode == "json" else self.dict()

    class StrictBase(_V1Base):
        class Config:
            extra = "forbid"

    class ResponseBase(_V1Base):
        class Config:
            extra = "ignore"

    def _before_field(name):
        return pydantic.validator(name, pre=True, allow_reuse=True)

    _before_model = pydantic.root_validator(pre=True, allow_reuse=True)


# ---- model input: same in both generations --------------------------------


class EncodedTextChunk(StrictBase):
    """tinker/types/encoded_text_chunk.py"""

    tokens: Sequence[int]
    type: Literal["encoded_text"] = "encoded_text"

    @property
    def length(self) -> int:
        return len(self.tokens)


class ImageChunk(StrictBase):
    """tinker/types/image_chunk.py: bytes, base64 in JSON (both ways)."""

    data: bytes
    format: Literal["png", "jpeg"]
    expected_tokens: Optional[int] = None
    type: Literal["image"] = "image"

    @_before_field("data")
    def validate_data(cls, value):
        return base64.b64decode(value) if isinstance(value, str) else value

    if PYDANTIC_V2:

        @pydantic.field_serializer("data")
        def serialize_data(self, value: bytes) -> str:
            return _b64(value)

    @property
    def length(self) -> int:
        if self.expected_tokens is None:
            raise ValueError("ImageChunk expected_tokens needs to be set in order to compute the length")
        return self.expected_tokens


class ImageAssetPointerChunk(StrictBase):
    """tinker/types/image_asset_pointer_chunk.py"""

    format: Literal["png", "jpeg"]
    location: str
    expected_tokens: Optional[int] = None
    type: Literal["image_asset_pointer"] = "image_asset_pointer"

    @property
    def length(self) -> int:
        if self.expected_tokens is None:
            raise ValueError(
                "ImageAssetPointerChunk expected_tokens needs to be set in order to compute the length")
        return self.expected_tokens


# tinker/types/model_input_chunk.py (the SDK 0.25 union also has DmelChunk)
ModelInputChunk = Annotated[Union[EncodedTextChunk, ImageAssetPointerChunk, ImageChunk],
                            pydantic.Field(discriminator="type")]


class ModelInput(StrictBase):
    """tinker/types/_pydantic_types/model_input.py (before 0.20:
    tinker/types/model_input.py)"""

    chunks: List[ModelInputChunk]

    @classmethod
    def from_ints(cls, tokens: List[int]) -> "ModelInput":
        return cls(chunks=[EncodedTextChunk(tokens=tokens)])

    @property
    def length(self) -> int:
        return sum(chunk.length for chunk in self.chunks)


# ---- the dtype rules shared by both generations ----------------------------

# tinker/types/datum.py _KEY_TO_TYPE: the dtype of a list under each key.
# A list under any other key (e.g. the cookbook's "mask") is a KeyError there.
KEY_TO_TYPE = {
    "target_tokens": "int64",
    "weights": "float32",
    "advantages": "float32",
    "logprobs": "float32",
    "clip_low_threshold": "float32",
    "clip_high_threshold": "float32",
}
SPARSE_ELIGIBLE_KEYS = {"target_tokens", "weights"}


def _numpy_dtype_to_tensor(dtype) -> str:
    """tensor_data.py _convert_numpy_dtype_to_tensor"""
    if dtype.kind == "f":
        return "float32"
    if dtype.kind == "i":
        return "int64"
    raise ValueError(f"Unsupported numpy dtype: {dtype}")


def _torch_dtype_to_tensor(dtype) -> str:
    """tensor_data.py _convert_torch_dtype_to_tensor"""
    return "float32" if dtype.is_floating_point else "int64"


def _tensor_to_torch_dtype(dtype: str):
    return {"float32": torch.float32, "int64": torch.int64}[dtype]


def _worth_csr(tensor) -> bool:
    """tensor_data.py from_torch_sparse: CSR only when it is smaller than dense."""
    nnz = tensor.count_nonzero().item()
    return (tensor.shape[0] + 1) + 2 * nnz < tensor.shape[0] * tensor.shape[1]


def _to_csr(tensor):
    """The values, row pointers and column indices of a 2-D tensor in CSR."""
    with warnings.catch_warnings():  # torch 1.13: "CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        csr = tensor.to_sparse_csr()
    return csr.values(), csr.crow_indices().tolist(), csr.col_indices().tolist()


def _from_torch_sparse(cls, tensor, data_of):
    """tensor_data.py from_torch_sparse (both generations; `data_of` gives
    the values as the generation keeps them): CSR when that is smaller."""
    if tensor.ndim != 2 or not _worth_csr(tensor):
        return cls.from_torch(tensor)
    values, crow, col = _to_csr(tensor)
    return cls(data=data_of(values), dtype=_torch_dtype_to_tensor(tensor.dtype),
               shape=list(tensor.shape), sparse_crow_indices=crow, sparse_col_indices=col)


def _coerce_input(key: str, value, tensor_data):
    """datum.py _maybe_convert_array (both generations): torch tensors,
    numpy arrays and numeric lists become `tensor_data`; 2-D torch
    target_tokens/weights become CSR when that is smaller.  Anything else is
    returned unchanged."""
    if torch is not None and isinstance(value, torch.Tensor):
        if key in SPARSE_ELIGIBLE_KEYS and value.ndim == 2:
            return tensor_data.from_torch_sparse(value)
        return tensor_data.from_torch(value)
    if isinstance(value, np.ndarray):
        return tensor_data.from_numpy(value)
    if isinstance(value, list):
        array = np.asarray(value)  # ragged nested lists raise ValueError
        if array.dtype.kind in "fiu":
            cast = np.int64 if KEY_TO_TYPE[key] == "int64" else np.float32
            return tensor_data.from_numpy(array.astype(cast))
        return tensor_data(data=value, dtype=KEY_TO_TYPE[key], shape=[len(value)])
    return value


# ---- old generation (SDK <= 0.19): pydantic models -------------------------


class OldTensorData(StrictBase):
    """tinker/types/_pydantic_types/tensor_data.py at SDK 0.19 (before 0.18
    without the sparse fields).  StrictInt keeps pydantic 1.10 from truncating
    float data to int (pydantic 2's smart union does not)."""

    data: Union[List[pydantic.StrictInt], List[float]]
    dtype: Literal["int64", "float32"]
    shape: Optional[List[int]] = None
    sparse_crow_indices: Optional[List[int]] = None
    sparse_col_indices: Optional[List[int]] = None

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> "OldTensorData":
        return cls(data=array.flatten().tolist(), dtype=_numpy_dtype_to_tensor(array.dtype),
                   shape=list(array.shape))

    @classmethod
    def from_torch(cls, tensor) -> "OldTensorData":
        # tolist() gives bfloat16 values as Python floats: float32 on the wire
        return cls(data=tensor.flatten().tolist(), dtype=_torch_dtype_to_tensor(tensor.dtype),
                   shape=list(tensor.shape))

    @classmethod
    def from_torch_sparse(cls, tensor) -> "OldTensorData":
        return _from_torch_sparse(cls, tensor, lambda values: values.tolist())

    def to_numpy(self) -> np.ndarray:
        if self.sparse_crow_indices is not None:
            return self.to_torch().numpy()
        arr = np.array(self.data, dtype=np.int64 if self.dtype == "int64" else np.float32)
        return arr.reshape(self.shape) if self.shape is not None else arr

    def to_torch(self):
        torch_dtype = _tensor_to_torch_dtype(self.dtype)
        if self.sparse_crow_indices is not None:
            crow = torch.tensor(self.sparse_crow_indices, dtype=torch.int64)
            col = torch.tensor(self.sparse_col_indices, dtype=torch.int64)
            values = torch.tensor(self.data, dtype=torch_dtype)
            return torch.sparse_csr_tensor(crow, col, values, self.shape).to_dense()
        tensor = torch.tensor(self.data, dtype=torch_dtype)
        return tensor.reshape(self.shape) if self.shape is not None else tensor


class OldDatum(StrictBase):
    """tinker/types/_pydantic_types/datum.py at SDK 0.19 (fields in this
    order; arrays, tensors and lists coerced before validation)."""

    loss_fn_inputs: Dict[str, OldTensorData]
    model_input: ModelInput

    @_before_model
    def convert_tensors(cls, values):
        inputs = values.get("loss_fn_inputs") if isinstance(values, dict) else None
        if isinstance(inputs, dict):
            values = dict(values)
            values["loss_fn_inputs"] = {k: _coerce_input(k, v, OldTensorData) for k, v in inputs.items()}
        return values


class OldForwardBackwardOutput(ResponseBase):
    """tinker/types/_pydantic_types/forward_backward_output.py at SDK 0.19"""

    loss_fn_output_type: str
    loss_fn_outputs: List[Dict[str, OldTensorData]]
    metrics: Dict[str, float]


# ---- new generation (SDK >= 0.20): frozen dataclasses ----------------------


@dataclass(frozen=True, eq=False, init=False)
class NewTensorData:
    """tinker/types/tensor_data.py at SDK 0.25: the values live in a numpy
    array in the declared dtype (shaped when dense), `data` is built from it."""

    dtype: str
    shape: Optional[List[int]] = None
    sparse_crow_indices: Optional[List[int]] = None
    sparse_col_indices: Optional[List[int]] = None
    _numpy: np.ndarray = field(repr=False, default=None)

    def __init__(self, data=None, dtype=None, shape=None, sparse_crow_indices=None,
                 sparse_col_indices=None):
        if dtype is None:
            raise TypeError("TensorData requires `dtype`")
        np_dtype = {"float32": np.float32, "int64": np.int64}[dtype]
        if isinstance(data, np.ndarray):
            if data.dtype != np_dtype:
                arr = data.astype(np_dtype)
            elif not data.flags.writeable:
                arr = data.copy()
            else:
                arr = data  # kept as is: no copy
        elif data is None:
            arr = np.empty(0, dtype=np_dtype)
        else:
            arr = np.asarray(data, dtype=np_dtype)
        if sparse_crow_indices is None and shape is not None and list(arr.shape) != shape:
            arr = arr.reshape(shape)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "sparse_crow_indices", sparse_crow_indices)
        object.__setattr__(self, "sparse_col_indices", sparse_col_indices)
        object.__setattr__(self, "_numpy", arr)

    @property
    def data(self):
        return self._numpy.flatten().tolist()

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> "NewTensorData":
        return cls(data=array, dtype=_numpy_dtype_to_tensor(array.dtype), shape=list(array.shape))

    @classmethod
    def from_torch(cls, tensor) -> "NewTensorData":
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: widened to float32
            tensor = tensor.float()
        return cls.from_numpy(tensor.contiguous().numpy())

    @classmethod
    def from_torch_sparse(cls, tensor) -> "NewTensorData":
        return _from_torch_sparse(cls, tensor, lambda values: values.numpy())

    def to_numpy(self) -> np.ndarray:
        if self.sparse_crow_indices is not None:
            return self.to_torch().numpy()
        return self._numpy

    def to_torch(self):
        torch_dtype = _tensor_to_torch_dtype(self.dtype)
        if self.sparse_crow_indices is not None:
            crow = torch.tensor(self.sparse_crow_indices, dtype=torch.int64)
            col = torch.tensor(self.sparse_col_indices, dtype=torch.int64)
            values = torch.from_numpy(self._numpy).to(torch_dtype)
            return torch.sparse_csr_tensor(crow, col, values, self.shape).to_dense()
        return torch.from_numpy(self._numpy)


@dataclass(frozen=True)
class NewDatum:
    """tinker/types/datum.py at SDK 0.25: loss_fn_inputs coerced after init;
    an unsupported value is a TypeError."""

    model_input: ModelInput
    loss_fn_inputs: Dict[str, NewTensorData] = field(default_factory=dict)

    def __post_init__(self):
        coerced = {}
        for key, value in self.loss_fn_inputs.items():
            value = _coerce_input(key, value, NewTensorData)
            if not isinstance(value, NewTensorData):
                raise TypeError(f"Unsupported loss_fn_inputs value for {key!r}: {type(value).__name__}")
            coerced[key] = value
        object.__setattr__(self, "loss_fn_inputs", coerced)


@dataclass(frozen=True)
class NewForwardBackwardOutput:
    """tinker/types/forward_backward_output.py at SDK 0.25"""

    loss_fn_output_type: str
    loss_fn_outputs: List[Dict[str, NewTensorData]]
    metrics: Dict[str, float] = field(default_factory=dict)


# ---- futures and clients ---------------------------------------------------


class APIFuture:
    """tinker/lib/public_interfaces/api_future.py APIFuture: result(timeout),
    result_async(timeout), and awaitable.  `compute` runs at once (the request
    is sent when the call is made); its value, or its exception, is delivered
    by result()."""

    def __init__(self, compute):
        try:
            self._value, self._error = compute(), None
        except Exception as exc:  # surfaced by result(), like a failed request
            self._value, self._error = None, exc

    def result(self, timeout: Optional[float] = None):
        if self._error is not None:
            raise self._error
        return self._value

    async def result_async(self, timeout: Optional[float] = None):
        return self.result(timeout)

    def __await__(self):
        return self.result_async().__await__()


class _TrainingClient:
    """tinker/lib/public_interfaces/training_client.py TrainingClient: the
    forward/backward methods.  Each request is one call of `answer` (the SDK
    may split a batch into chunks and combine their results; not done here).
    `requests` records (method, data, loss_fn, loss_fn_config) per request."""

    types: SimpleNamespace  # the generation's Datum and TensorData

    def __init__(self, answer):
        self.answer = answer
        self.requests = []

    def _submit(self, method: str, data, loss_fn: str, loss_fn_config) -> APIFuture:
        data = list(data)
        if not data:
            raise ValueError("No data provided")
        self.requests.append((method, data, loss_fn, loss_fn_config))
        return APIFuture(lambda: self.answer(data, loss_fn, loss_fn_config))

    def forward(self, data, loss_fn: str, loss_fn_config: Optional[Dict[str, float]] = None) -> APIFuture:
        return self._submit("forward", data, loss_fn, loss_fn_config)

    async def forward_async(self, data, loss_fn: str,
                            loss_fn_config: Optional[Dict[str, float]] = None) -> APIFuture:
        return self.forward(data, loss_fn, loss_fn_config)

    def forward_backward(self, data, loss_fn: str,
                         loss_fn_config: Optional[Dict[str, float]] = None) -> APIFuture:
        return self._submit("forward_backward", data, loss_fn, loss_fn_config)

    async def forward_backward_async(self, data, loss_fn: str,
                                     loss_fn_config: Optional[Dict[str, float]] = None) -> APIFuture:
        return self.forward_backward(data, loss_fn, loss_fn_config)

    def forward_backward_custom(self, data, loss_fn, *, loss_type_input: str = "logprobs") -> APIFuture:
        """Blocks for the forward pass and the user's loss, returns the
        future of the backward request (as the SDK does)."""
        return self._custom(data, loss_fn, loss_type_input)

    async def forward_backward_custom_async(self, data, loss_fn, *,
                                            loss_type_input: str = "logprobs") -> APIFuture:
        return self._custom(data, loss_fn, loss_type_input)

    def _custom(self, data, loss_fn, loss_type_input: str) -> APIFuture:
        """forward_backward_custom_async of SDK 0.16 to 0.25."""
        if torch is None:
            raise ImportError("PyTorch is not installed. Cannot run custom forward_backward.")
        if loss_type_input != "logprobs":
            raise ValueError(f"Unsupported loss_type_input={loss_type_input!r}. "
                             "Supported values are: logprobs")
        # 1. forward with cross_entropy: target_tokens, and weights (zeros
        #    when the datum has none); no other key is allowed
        forward_data = [self._custom_forward_datum(d) for d in data]
        forward_result = self.forward(forward_data, "cross_entropy", None).result()
        # 2. the logprobs as float32 leaf tensors requiring grad
        logprobs_list = []
        for out in forward_result.loss_fn_outputs:
            logprob = torch.tensor(out["logprobs"].data)
            if out["logprobs"].shape is not None:
                logprob = logprob.reshape(out["logprobs"].shape)
            logprobs_list.append(logprob.clone().detach().requires_grad_(True))
        # 3. the user's loss on the original datums, and its gradient
        loss, metrics = loss_fn(data, logprobs_list)
        loss.backward()
        grads = []
        for logprob in logprobs_list:
            if logprob.grad is None:
                raise ValueError("No gradient computed for logprob tensor")
            grads.append(logprob.grad)
        # 4. forward_backward of the linear surrogate: cross_entropy with
        #    weights = -dC/dlogprobs (a torch tensor, coerced by Datum)
        linear_data = [
            self.types.Datum(model_input=datum.model_input,
                             loss_fn_inputs={"target_tokens": datum.loss_fn_inputs["target_tokens"],
                                             "weights": -grad})
            for datum, grad in zip(data, grads, strict=True)
        ]
        backward = self.forward_backward(linear_data, "cross_entropy", None)

        # 5. the user's metrics update the server's (same names: the user's win)
        def add_custom_metrics():
            result = backward.result()
            result.metrics.update(metrics)
            return result

        return APIFuture(add_custom_metrics)

    def _custom_forward_datum(self, datum):
        """training_client.py _get_custom_loss_forward_data, for one datum."""
        target_tokens = datum.loss_fn_inputs.get("target_tokens")
        if target_tokens is None:
            raise ValueError("target_tokens must be provided when using cross_entropy")
        unexpected = sorted(set(datum.loss_fn_inputs) - {"target_tokens", "weights"})
        if unexpected:
            raise ValueError("forward_backward_custom only supports loss_fn_inputs keys "
                             "{'target_tokens', 'weights'}; "
                             f"found unexpected keys: {unexpected}")
        if "weights" in datum.loss_fn_inputs:
            return datum
        inputs = dict(datum.loss_fn_inputs)
        inputs["weights"] = self.types.TensorData(data=[0.0] * len(target_tokens.data), dtype="float32",
                                                  shape=target_tokens.shape)
        return self.types.Datum(model_input=datum.model_input, loss_fn_inputs=inputs)


class OldTrainingClient(_TrainingClient):
    types = SimpleNamespace(Datum=OldDatum, TensorData=OldTensorData)


class NewTrainingClient(_TrainingClient):
    types = SimpleNamespace(Datum=NewDatum, TensorData=NewTensorData)


_CHUNKS = dict(ModelInput=ModelInput, EncodedTextChunk=EncodedTextChunk, ImageChunk=ImageChunk,
               ImageAssetPointerChunk=ImageAssetPointerChunk)

old = SimpleNamespace(TensorData=OldTensorData, Datum=OldDatum,
                      ForwardBackwardOutput=OldForwardBackwardOutput,
                      TrainingClient=OldTrainingClient, **_CHUNKS)
new = SimpleNamespace(TensorData=NewTensorData, Datum=NewDatum,
                      ForwardBackwardOutput=NewForwardBackwardOutput,
                      TrainingClient=NewTrainingClient, **_CHUNKS)
