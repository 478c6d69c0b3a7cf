"""Writing and reading the call dumps of `tinkerloss verify`."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sdk_standins import new, old
from tinkerloss import Error, dump_call, load_call
from tinkerloss._dump import Call
from tinkerloss._sdk import datum_arrays

GENERATIONS = pytest.mark.parametrize("gen", [old, new], ids=["old", "new"])

LOGPROBS = np.array([-0.1, -2.5e-8, np.nan, -np.inf, -3.4028235e38, -1e-45], dtype=np.float32)


def call_objects(gen):
    """A cookbook-style RL call: image chunk, mask, non-finite values."""
    chunks = [gen.EncodedTextChunk(tokens=[11, 12]),
              gen.ImageChunk(data=bytes(range(256)), format="png", expected_tokens=2),
              gen.EncodedTextChunk(tokens=[13, 14])]
    datum = gen.Datum(
        model_input=gen.ModelInput(chunks=chunks),
        loss_fn_inputs={"target_tokens": np.array([12, 0, 0, 13, 14, 15], dtype=np.int64),
                        "logprobs": LOGPROBS,
                        "advantages": np.array([0, 0, 0, 0.7, 0.7, 0.7], dtype=np.float32),
                        "mask": gen.TensorData.from_torch(torch.tensor([0.0, 0, 0, 1, 1, 1]))})
    plain = gen.Datum(model_input=gen.ModelInput.from_ints([1, 2]),
                      loss_fn_inputs={"target_tokens": [2, 3], "logprobs": [-0.5, -0.25],
                                      "advantages": [1.0, 1.0]})
    result = gen.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[{"logprobs": gen.TensorData.from_numpy(np.float32([0.1, 1e-30, np.inf,
                                                                             -0.3, 0.0, -0.0]))},
                         {"logprobs": gen.TensorData.from_numpy(np.float32([-0.5, -0.25]))}],
        metrics={"loss:sum": 0.1 + 0.2, "ratio:max": math.inf, "kl:mean": math.nan})
    return [datum, plain], result


CONFIG = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}


def strict_json(text):
    """Parse text as JSON, refusing the NaN / Infinity extensions."""
    def refuse(name):
        raise ValueError(name)
    return json.loads(text, parse_constant=refuse)


@GENERATIONS
def test_dump_load_dump_is_byte_identical(gen, tmp_path):
    data, result = call_objects(gen)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    dump_call(first, data, "ppo", CONFIG, result)
    call = load_call(first)
    dump_call(second, call.data, call.loss_fn, call.loss_fn_config, call.result)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_text().endswith("}\n") and first.read_text().count("\n") == 1


def test_generations_write_the_same_bytes(tmp_path):
    written = []
    for gen in (old, new):
        data, result = call_objects(gen)
        path = tmp_path / f"{len(written)}.json"
        dump_call(path, data, "ppo", CONFIG, result)
        written.append(path.read_bytes())
    assert written[0] == written[1]


def test_dump_content(tmp_path):
    data, result = call_objects(new)
    path = tmp_path / "call.json"
    dump_call(path, data, "ppo", CONFIG, result)
    text = path.read_text()
    assert text.startswith('{"request":{"data":[{"model_input":{"chunks":[{"type":"encoded_text",')
    assert " " not in text  # compact
    doc = strict_json(text)  # valid JSON: no bare NaN or Infinity
    assert list(doc) == ["request", "response"]
    assert list(doc["request"]) == ["data", "loss_fn", "loss_fn_config"]
    assert list(doc["response"]) == ["loss_fn_output_type", "loss_fn_outputs", "metrics"]
    datum = doc["request"]["data"][0]
    assert datum["model_input"]["chunks"][1] == {
        "type": "image", "data": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6ChoqOkpaanqKmqq6ytrq+wsbKztLW2t7i5uru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj5OXm5+jp6uvs7e7v8PHy8/T19vf4+fr7/P3+/w==",
        "format": "png", "expected_tokens": 2}
    assert datum["loss_fn_inputs"]["mask"]["data"] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert datum["loss_fn_inputs"]["logprobs"]["data"][2:4] == ["nan", "-inf"]
    assert doc["response"]["metrics"] == {"loss:sum": 0.30000000000000004, "ratio:max": "inf",
                                          "kl:mean": "nan"}
    assert doc["request"]["loss_fn_config"] == CONFIG


def test_load_gives_wire_dicts_with_float_nan(tmp_path):
    data, result = call_objects(old)
    path = tmp_path / "call.json"
    dump_call(path, data, "cispo", None, result)
    call = load_call(path)
    assert isinstance(call, Call)
    assert call.loss_fn == "cispo" and call.loss_fn_config is None
    lp = call.data[0]["loss_fn_inputs"]["logprobs"]["data"]
    assert math.isnan(lp[2]) and lp[3] == -math.inf
    assert math.isnan(call.result["metrics"]["kl:mean"])
    assert call.result["loss_fn_outputs"][0]["logprobs"]["data"][2] == math.inf
    arrays = datum_arrays(call.data[0])
    np.testing.assert_array_equal(arrays.loss_fn_inputs["logprobs"], LOGPROBS)
    np.testing.assert_array_equal(arrays.input_tokens, [11, 12, -1, -1, 13, 14])
    assert strict_json(path.read_text())["request"]["loss_fn_config"] is None


def test_sparse_tensors_stay_sparse(tmp_path):
    targets = torch.zeros(5, 4, dtype=torch.int64)
    targets[2, 1] = 9
    datum = new.Datum(model_input=new.ModelInput.from_ints([1, 2, 3, 4, 5]),
                      loss_fn_inputs={"target_tokens": targets})
    result = new.ForwardBackwardOutput("ArrayRecord", [{"logprobs": new.TensorData.from_numpy(
        np.zeros((5, 4), np.float32))}], {})
    path = tmp_path / "call.json"
    dump_call(path, [datum], "cross_entropy", None, result)
    wire = load_call(path).data[0]["loss_fn_inputs"]["target_tokens"]
    assert wire["sparse_crow_indices"] == [0, 0, 0, 1, 1, 1] and wire["data"] == [9]
    np.testing.assert_array_equal(datum_arrays(load_call(path).data[0]).loss_fn_inputs["target_tokens"],
                                  targets.numpy())


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 40),
                  elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       st.floats(allow_nan=True, allow_infinity=True))
def test_float32_values_round_trip_exactly(tmp_path_factory, values, metric):
    path = tmp_path_factory.mktemp("rt") / "call.json"
    datum = {"model_input": {"chunks": [{"type": "encoded_text", "tokens": [1] * values.size}]},
             "loss_fn_inputs": {"logprobs": values}}
    result = {"loss_fn_outputs": [{"logprobs": values}], "metrics": {"m": metric}}
    dump_call(path, [datum], "importance_sampling", None, result)
    text = path.read_text()
    call = load_call(path)
    back = datum_arrays(call.data[0]).loss_fn_inputs["logprobs"]
    # bit for bit, NaN aside (its payload is not kept); -0.0 stays -0.0
    assert np.array_equal(np.isnan(back), np.isnan(values))
    finite = ~np.isnan(values)
    assert (back[finite].view(np.uint32) == values[finite].view(np.uint32)).all()
    got = call.result["metrics"]["m"]
    assert (math.isnan(got) and math.isnan(metric)) or got == metric
    dump_call(path, call.data, call.loss_fn, call.loss_fn_config, call.result)
    assert path.read_text() == text


def test_readme_recipe_dump_loads(tmp_path):
    """The README's recipe: model_dump JSON, no loss_fn_output_type."""
    data, result = call_objects(old)
    doc = {"request": {"data": [d.model_dump(mode="json") for d in data[1:]],
                       "loss_fn": "ppo", "loss_fn_config": None},
           "response": {"loss_fn_outputs": [{k: v.model_dump(mode="json") for k, v in out.items()}
                                            for out in result.loss_fn_outputs[1:]],
                        "metrics": {"loss:sum": 1.5}}}
    path = tmp_path / "readme.json"
    path.write_text(json.dumps(doc))
    call = load_call(path)
    assert call.result["loss_fn_output_type"] is None
    assert call.data[0]["loss_fn_inputs"]["target_tokens"] == {"data": [2, 3], "dtype": "int64",
                                                               "shape": [2]}


# ---- errors ------------------------------------------------------------------


def test_dump_errors_name_the_path_and_write_nothing(tmp_path):
    data, result = call_objects(new)
    bad = {"model_input": {"chunks": []},
           "loss_fn_inputs": {"advantages": {"data": [1.0], "dtype": "float32", "shape": [2]}}}
    path = tmp_path / "call.json"
    with pytest.raises(Error, match=r"^data\[2\]\.loss_fn_inputs\.advantages: 1 values, "
                                        r"expected 2 for shape \[2\] \(ERR_SHAPE\)$"):
        dump_call(path, data + [bad], "ppo", None, result)
    with pytest.raises(Error, match=r'^result\.metrics\["x"\]: is None'):
        dump_call(path, data, "ppo", None, {"loss_fn_outputs": [], "metrics": {"x": None}})
    with pytest.raises(Error, match=r'^loss_fn_config\["beta"\]: is \'a\''):
        dump_call(path, data, "dro", {"beta": "a"}, result)
    with pytest.raises(Error, match=r"^loss_fn: is null, expected a string"):
        dump_call(path, data, None, None, result)
    assert not path.exists()


@pytest.mark.parametrize("text, message", [
    ("{", r"not valid JSON"),
    ('{"request": {"data": [], "loss_fn": "ppo"}, "response": {"loss_fn_outputs": [], '
     '"metrics": {"m": NaN}}}', r"not valid JSON: NaN is not JSON"),
    ("[]", r'expected an object with "request" and "response"'),
    ('{"request": {"loss_fn": "ppo"}, "response": {}}', r"^request\.data: missing or not a list"),
    ('{"request": {"data": [], "loss_fn": "ppo"}}', r'missing "response"'),
    ('{"request": {"data": [], "loss_fn": 3}, "response": {"loss_fn_outputs": [], "metrics": {}}}',
     r"^request\.loss_fn: is int"),
    ('{"request": {"data": [{"model_input": {"chunks": []}, "loss_fn_inputs": {"w": '
     '{"data": ["NaN"], "dtype": "float32"}}}], "loss_fn": "ppo"}, "response": {}}',
     r"^request\.data\[0\]\.loss_fn_inputs\.w: data\[0\] is 'NaN', expected a number"),
    ('{"request": {"data": [], "loss_fn": "ppo", "loss_fn_config": [1]}, "response": {}}',
     r"^request\.loss_fn_config: is list"),
    ('{"request": {"data": [], "loss_fn": "ppo"}, "response": {"loss_fn_outputs": []}}',
     r"^response: missing 'metrics'"),
])
def test_load_errors_name_the_path(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(Error, match=message):
        load_call(path)
