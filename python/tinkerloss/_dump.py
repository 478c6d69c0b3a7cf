"""The call dump read by ``tinkerloss verify``: one forward_backward request
and its response in the SDK's JSON shapes.

    {"request": {"data": [DATUM, ...], "loss_fn": "ppo",
                 "loss_fn_config": {"clip_low_threshold": 0.8} | null},
     "response": {"loss_fn_output_type": "...",
                  "loss_fn_outputs": [{"logprobs": TENSOR}, ...],
                  "metrics": {"loss:sum": -1.5, ...}}}

JSON has no NaN or infinities: the library writes them as the strings
"nan", "inf" and "-inf", and so does this module.  Floats are written as the
repr of the Python float, which for a float32 value is exact, so the values
read back are the float32 values written.  The output is compact, in a fixed
key order, and dump -> load -> dump gives a byte-identical file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ._lib import Status
from ._sdk import _describe, _fail, datum_to_wire, float_map, output_to_wire

__all__ = ["Call", "dump_call", "load_call"]


@dataclass
class Call:
    """A loaded dump: `data` are wire-shape datum dicts and `result` the
    wire-shape ForwardBackwardOutput dict, with NaN and infinities as floats."""

    data: list
    loss_fn: str
    loss_fn_config: dict | None
    result: dict


def _loss_fn(value, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"is {_describe(value)}, expected a string")
    return value


def _config(value, path: str) -> dict | None:
    return None if value is None else float_map(value, path)


def _json_safe(value):
    """`value` with every non-finite float replaced by its string spelling."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def dump_call(path: str | os.PathLike, data, loss_fn: str, loss_fn_config, result) -> None:
    """Write a call dump to `path`.

    `data` is the list of datums sent (SDK objects of either generation or
    wire dicts; image chunks and client-side keys such as `mask` are kept),
    `result` the ForwardBackwardOutput received (or its dict).  A malformed
    value raises Error naming it (`data[2].loss_fn_inputs.advantages: ...`,
    `result.metrics["loss:sum"]: ...`) and nothing is written."""
    text = dump_text(data, loss_fn, loss_fn_config, result)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise _fail(os.fspath(path), f"cannot be written ({exc.strerror})", Status.ERR_IO) from None


def dump_text(data, loss_fn: str, loss_fn_config, result) -> str:
    """The text dump_call writes (one line, ending with a newline)."""
    doc = {
        "request": {
            "data": [datum_to_wire(d, f"data[{i}]") for i, d in enumerate(data)],
            "loss_fn": _loss_fn(loss_fn, "loss_fn"),
            "loss_fn_config": _config(loss_fn_config, "loss_fn_config"),
        },
        "response": output_to_wire(result, "result"),
    }
    return json.dumps(_json_safe(doc), separators=(",", ":"), allow_nan=False) + "\n"


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON (write \"nan\", \"inf\" or \"-inf\")")


def load_call(path: str | os.PathLike) -> Call:
    """Read a call dump written by dump_call (or by hand in the same shape).

    Raises Error naming the JSON path of what is malformed, or the file
    when it is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError, or a bare NaN / Infinity
        raise _fail(os.fspath(path), f"not valid JSON: {exc}", Status.ERR_JSON) from None
    except OSError as exc:
        raise _fail(os.fspath(path), f"cannot be read ({exc.strerror})", Status.ERR_IO) from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("request"), Mapping):
        raise _fail(os.fspath(path), 'expected an object with "request" and "response"',
                    Status.ERR_JSON)
    request = doc["request"]
    data = request.get("data")
    if not isinstance(data, list):
        raise _fail("request.data", "missing or not a list", Status.ERR_JSON)
    if "response" not in doc:
        raise _fail(os.fspath(path), 'missing "response"', Status.ERR_JSON)
    return Call(
        data=[datum_to_wire(d, f"request.data[{i}]") for i, d in enumerate(data)],
        loss_fn=_loss_fn(request.get("loss_fn"), "request.loss_fn"),
        loss_fn_config=_config(request.get("loss_fn_config"), "request.loss_fn_config"),
        result=output_to_wire(doc["response"], "response"),
    )
