"""Reading datums and results of both SDK generations, and their dicts."""

import asyncio

import numpy as np
import pytest
import torch

from sdk_standins import new, old
from tinkerloss import Error, Status
from tinkerloss._sdk import (datum_arrays, datum_to_wire, output_arrays,
                             output_to_wire)

GENERATIONS = pytest.mark.parametrize("gen", [old, new], ids=["old", "new"])

TOKENS = [5, 9, 2, 7, 3]
TARGETS = np.array([9, 2, 7, 3], dtype=np.int64)
LOGPROBS = np.array([-0.5, -1.25, -0.125, -2.0], dtype=np.float32)
ADVANTAGES = np.array([0.0, 1.5, 1.5, -0.75], dtype=np.float32)


def rl_datum(gen):
    """A single-turn RL datum built from numpy arrays, as the cookbook does."""
    return gen.Datum(model_input=gen.ModelInput.from_ints(TOKENS[:-1]),
                     loss_fn_inputs={"target_tokens": gen.TensorData.from_numpy(TARGETS),
                                     "logprobs": gen.TensorData.from_numpy(LOGPROBS),
                                     "advantages": gen.TensorData.from_numpy(ADVANTAGES)})


def tensor_dict(values, dtype, shape=None):
    return {"data": list(values), "dtype": dtype, "shape": shape}


RL_WIRE = {
    "model_input": {"chunks": [{"type": "encoded_text", "tokens": TOKENS[:-1]}]},
    "loss_fn_inputs": {
        "target_tokens": {"data": TARGETS.tolist(), "dtype": "int64", "shape": [4]},
        "logprobs": {"data": LOGPROBS.tolist(), "dtype": "float32", "shape": [4]},
        "advantages": {"data": ADVANTAGES.tolist(), "dtype": "float32", "shape": [4]},
    },
}


def check_rl_arrays(norm):
    assert norm.model_input_length == 4
    np.testing.assert_array_equal(norm.input_tokens, TOKENS[:-1])
    assert norm.input_tokens.dtype == np.int64
    assert list(norm.loss_fn_inputs) == ["target_tokens", "logprobs", "advantages"]
    expected = {"target_tokens": TARGETS, "logprobs": LOGPROBS, "advantages": ADVANTAGES}
    for key, want in expected.items():
        got = norm.loss_fn_inputs[key]
        assert got.dtype == want.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)


# ---- the three forms agree ---------------------------------------------------


@GENERATIONS
def test_sdk_datum_reads_as_its_wire_dict(gen):
    datum = rl_datum(gen)
    assert datum_to_wire(datum) == RL_WIRE
    norm = datum_arrays(datum)
    check_rl_arrays(norm)
    for key, td in datum.loss_fn_inputs.items():  # the SDK's own conversions agree
        np.testing.assert_array_equal(td.to_numpy(), norm.loss_fn_inputs[key])
        np.testing.assert_array_equal(td.to_torch().numpy(), norm.loss_fn_inputs[key])


def test_wire_dict_reads_as_itself():
    assert datum_to_wire(RL_WIRE) == RL_WIRE
    check_rl_arrays(datum_arrays(RL_WIRE))


def test_null_shape_means_1d():
    wire = {"model_input": {"chunks": []},
            "loss_fn_inputs": {"weights": {"data": [1, 0.5], "dtype": "float32", "shape": None}}}
    assert datum_to_wire(wire)["loss_fn_inputs"]["weights"] == tensor_dict([1.0, 0.5], "float32", [2])


def test_old_model_dump_reads_like_the_object():
    """The JSON the old SDK wrote (model_dump, nulls for absent fields)."""
    datum = rl_datum(old)
    dumped = datum.model_dump(mode="json")
    assert dumped["loss_fn_inputs"]["advantages"]["sparse_crow_indices"] is None
    assert datum_to_wire(dumped) == datum_to_wire(datum) == RL_WIRE


@GENERATIONS
def test_lists_get_the_dtype_of_their_key(gen):
    """datum.py _KEY_TO_TYPE: integer advantages become float32, and the
    same lists in a plain dict read the same."""
    inputs = {"target_tokens": [9, 2, 7, 3], "advantages": [0, 1, 1, 0],
              "weights": [[1, 0], [0.5, 0]]}
    datum = gen.Datum(model_input=gen.ModelInput.from_ints([1, 2, 3, 4]), loss_fn_inputs=inputs)
    plain = {"model_input": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3, 4]}]},
             "loss_fn_inputs": inputs}
    for form in (datum, plain):
        wire = datum_to_wire(form)["loss_fn_inputs"]
        assert wire["target_tokens"] == tensor_dict([9, 2, 7, 3], "int64", [4])
        assert wire["advantages"] == tensor_dict([0.0, 1.0, 1.0, 0.0], "float32", [4])
        assert wire["weights"] == tensor_dict([1.0, 0.0, 0.5, 0.0], "float32", [2, 2])
        arrays = datum_arrays(form).loss_fn_inputs
        assert arrays["advantages"].dtype == np.float32
        assert arrays["weights"].shape == (2, 2)


def test_raw_numpy_gets_the_dtype_the_sdk_sends():
    """TensorData.from_numpy: floats -> float32, signed ints -> int64."""
    datum = {"model_input": {"chunks": []},
             "loss_fn_inputs": {"target_tokens": np.array([1, 2], dtype=np.int32),
                                "advantages": np.array([0.1, 0.2])}}
    wire = datum_to_wire(datum)["loss_fn_inputs"]
    assert wire["target_tokens"] == tensor_dict([1, 2], "int64", [2])
    assert wire["advantages"] == tensor_dict(np.float32([0.1, 0.2]).tolist(), "float32", [2])
    assert datum_arrays(datum).loss_fn_inputs["advantages"].dtype == np.float32


def test_integer_inputs_become_float32_and_float_targets_int64():
    datum = {"model_input": {"chunks": []},
             "loss_fn_inputs": {"target_tokens": np.array([3.0, 4.0]),
                                "weights": np.array([1, 0])}}
    arrays = datum_arrays(datum).loss_fn_inputs
    assert arrays["target_tokens"].dtype == np.int64 and arrays["weights"].dtype == np.float32
    np.testing.assert_array_equal(arrays["target_tokens"], [3, 4])


# ---- torch -------------------------------------------------------------------


@GENERATIONS
def test_torch_bfloat16_is_widened_to_float32(gen):
    adv = torch.tensor([0.1, -3.3, 7.0], dtype=torch.bfloat16)
    want = adv.float().numpy()
    for form in (gen.Datum(model_input=gen.ModelInput.from_ints([1, 2, 3]),
                           loss_fn_inputs={"advantages": adv}),
                 {"model_input": {"chunks": []}, "loss_fn_inputs": {"advantages": adv}}):
        got = datum_arrays(form).loss_fn_inputs["advantages"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        assert datum_to_wire(form)["loss_fn_inputs"]["advantages"]["dtype"] == "float32"


def test_torch_tensor_requiring_grad_is_detached():
    lp = torch.tensor([-0.5, -1.0], requires_grad=True)
    datum = {"model_input": {"chunks": []}, "loss_fn_inputs": {"logprobs": lp}}
    np.testing.assert_array_equal(datum_arrays(datum).loss_fn_inputs["logprobs"], [-0.5, -1.0])


def test_torch_bool_is_refused_like_the_sdk():
    datum = {"model_input": {"chunks": []},
             "loss_fn_inputs": {"mask": torch.tensor([True, False])}}
    with pytest.raises(Error, match=r"^data\[0\]\.loss_fn_inputs\.mask: has dtype bool"):
        datum_to_wire(datum, "data[0]")


# ---- sparse CSR --------------------------------------------------------------


def sparse_targets():
    """(N, K) top-K targets where most entries are 0: the SDK sends CSR."""
    dense = torch.zeros(6, 4, dtype=torch.int64)
    dense[1, 2], dense[4, 0], dense[4, 3] = 11, 7, 5
    return dense


@GENERATIONS
def test_sparse_csr_from_torch_is_densified(gen):
    dense = sparse_targets()
    datum = gen.Datum(model_input=gen.ModelInput.from_ints(list(range(6))),
                      loss_fn_inputs={"target_tokens": dense,
                                      "weights": torch.ones(6, 4)})
    td = datum.loss_fn_inputs["target_tokens"]
    assert td.sparse_crow_indices == [0, 0, 1, 1, 1, 3, 3]  # the SDK chose CSR
    assert datum.loss_fn_inputs["weights"].sparse_crow_indices is None  # dense is smaller
    wire = datum_to_wire(datum)["loss_fn_inputs"]["target_tokens"]
    assert wire == {"data": [11, 7, 5], "dtype": "int64", "shape": [6, 4],
                    "sparse_crow_indices": [0, 0, 1, 1, 1, 3, 3],
                    "sparse_col_indices": [2, 0, 3]}
    got = datum_arrays(datum).loss_fn_inputs["target_tokens"]
    np.testing.assert_array_equal(got, dense.numpy())
    np.testing.assert_array_equal(got, td.to_numpy())  # the SDK's own densification
    assert got.dtype == np.int64
    np.testing.assert_array_equal(datum_arrays({"model_input": {"chunks": []},
                                                "loss_fn_inputs": {"target_tokens": wire}})
                                  .loss_fn_inputs["target_tokens"], dense.numpy())


SPARSE = {"data": [1.5, 2.5], "dtype": "float32", "shape": [2, 3],
          "sparse_crow_indices": [0, 1, 2], "sparse_col_indices": [2, 0]}


@pytest.mark.parametrize("change, message", [
    ({"sparse_crow_indices": [0, 1]}, "sparse indices do not match: 2 row pointers for 2 rows"),
    ({"sparse_crow_indices": [0, 2, 2], "sparse_col_indices": [2, 0]}, None),
    ({"sparse_crow_indices": [0, 2, 1]}, "sparse indices do not match"),
    ({"sparse_col_indices": [3, 0]}, r"sparse_col_indices\[0\] = 3 is outside 3 columns"),
    ({"sparse_col_indices": None}, "must be set together"),
    ({"shape": [6]}, "needs a 2-D shape"),
    ({"sparse_crow_indices": [0, -1, 2]}, r"sparse_crow_indices\[1\] is -1|decrease"),
])
def test_malformed_sparse(change, message):
    td = dict(SPARSE, **change)
    datum = {"model_input": {"chunks": []}, "loss_fn_inputs": {"weights": td}}
    if message is None:  # two values in row 0, none in row 1: valid
        np.testing.assert_array_equal(datum_arrays(datum).loss_fn_inputs["weights"],
                                      [[2.5, 0, 1.5], [0, 0, 0]])
        return
    with pytest.raises(Error, match=r"^d\.loss_fn_inputs\.weights: .*" + message):
        datum_arrays(datum, "d")


# ---- images ------------------------------------------------------------------


def image_datum(gen, image_tokens=3, pointer_tokens=2):
    chunks = [gen.EncodedTextChunk(tokens=[1, 2]),
              gen.ImageChunk(data=b"\x89PNG\x00\xff", format="png", expected_tokens=image_tokens),
              gen.EncodedTextChunk(tokens=[3]),
              gen.ImageAssetPointerChunk(location="s3://b/i.jpeg", format="jpeg",
                                         expected_tokens=pointer_tokens)]
    n = 3 + (image_tokens or 0) + (pointer_tokens or 0)
    return gen.Datum(model_input=gen.ModelInput(chunks=chunks),
                     loss_fn_inputs={"target_tokens": np.arange(n, dtype=np.int64),
                                     "weights": np.ones(n, dtype=np.float32)})


@GENERATIONS
def test_image_chunks(gen):
    datum = image_datum(gen)
    norm = datum_arrays(datum)
    assert norm.model_input_length == datum.model_input.length == 8
    np.testing.assert_array_equal(norm.input_tokens, [1, 2, -1, -1, -1, 3, -1, -1])
    assert norm.model_input[1] == {"type": "image", "data": "iVBORwD/", "format": "png",
                                   "expected_tokens": 3}
    assert norm.model_input[3] == {"type": "image_asset_pointer", "location": "s3://b/i.jpeg",
                                   "format": "jpeg", "expected_tokens": 2}
    wire = datum_to_wire(datum)
    assert wire["model_input"]["chunks"] == norm.model_input
    # the SDK's own JSON of the model input (image bytes in base64) reads the same
    sdk_json = {"model_input": datum.model_input.model_dump(mode="json"),
                "loss_fn_inputs": wire["loss_fn_inputs"]}
    assert datum_to_wire(sdk_json) == wire


@GENERATIONS
def test_image_without_expected_tokens(gen):
    datum = image_datum(gen, image_tokens=None)
    wire = datum_to_wire(datum, "data[1]")  # the wire does not need the length
    assert wire["model_input"]["chunks"][1]["expected_tokens"] is None
    with pytest.raises(Error, match=r"^data\[1\]\.model_input\.chunks\[1\]: image chunk has no "
                                        "expected_tokens"):
        datum_arrays(datum, "data[1]")
    with pytest.raises(ValueError, match="expected_tokens needs to be set"):
        datum.model_input.length  # the SDK cannot tell the length either
    with pytest.raises(Error, match=r"^data\[1\]\.model_input\.chunks\[3\]: image_asset_pointer"):
        datum_arrays(image_datum(gen, pointer_tokens=None), "data[1]")


# ---- the cookbook's mask -----------------------------------------------------


@GENERATIONS
def test_mask_is_kept(gen):
    """rl/data_processing.py: mask as TensorData.from_torch(torch.tensor(list))."""
    mask = [0.0, 1.0, 1.0, 0.0]
    datum = gen.Datum(model_input=gen.ModelInput.from_ints([1, 2, 3, 4]),
                      loss_fn_inputs={"target_tokens": gen.TensorData.from_torch(torch.tensor(TARGETS)),
                                      "mask": gen.TensorData.from_torch(torch.tensor(mask))})
    assert datum_to_wire(datum)["loss_fn_inputs"]["mask"] == tensor_dict(mask, "float32", [4])
    np.testing.assert_array_equal(datum_arrays(datum).loss_fn_inputs["mask"], mask)
    plain = {"model_input": {"chunks": []}, "loss_fn_inputs": {"mask": [1, 0]}}
    assert datum_arrays(plain).loss_fn_inputs["mask"].dtype == np.float32


def test_mask_list_is_a_key_error_in_the_sdk():
    """The SDK's _KEY_TO_TYPE has no mask: a list there fails; we accept it."""
    with pytest.raises(KeyError):
        new.Datum(model_input=new.ModelInput.from_ints([1]), loss_fn_inputs={"mask": [1.0]})


# ---- no copies ---------------------------------------------------------------


def test_float32_and_int64_arrays_are_not_copied():
    adv = np.linspace(-1, 1, 1000, dtype=np.float32)
    tgt = np.arange(1000, dtype=np.int64)
    lp2d = np.zeros((250, 4), dtype=np.float32)
    torch_lp = torch.full((1000,), -0.5)
    forms = [
        ({"model_input": {"chunks": []},
          "loss_fn_inputs": {"advantages": adv, "target_tokens": tgt, "logprobs": torch_lp,
                             "weights": lp2d}}, "plain dict"),
        (new.Datum(model_input=new.ModelInput.from_ints([1]),
                   loss_fn_inputs={"advantages": adv, "target_tokens": tgt,
                                   "logprobs": torch_lp, "weights": lp2d}), "new Datum"),
        (new.Datum(model_input=new.ModelInput.from_ints([1]),
                   loss_fn_inputs={"advantages": new.TensorData.from_numpy(adv),
                                   "target_tokens": new.TensorData(data=tgt, dtype="int64", shape=None),
                                   "logprobs": new.TensorData.from_torch(torch_lp),
                                   "weights": new.TensorData.from_numpy(lp2d)}), "new TensorData"),
    ]
    for form, name in forms:
        arrays = datum_arrays(form).loss_fn_inputs
        assert np.shares_memory(arrays["advantages"], adv), name
        assert np.shares_memory(arrays["target_tokens"], tgt), name
        assert np.shares_memory(arrays["logprobs"], torch_lp.numpy()), name
        assert np.shares_memory(arrays["weights"], lp2d), name
        assert arrays["weights"].shape == (250, 4)


def test_non_contiguous_input_is_made_contiguous():
    adv = np.arange(10, dtype=np.float32)[::2]
    got = datum_arrays({"model_input": {"chunks": []},
                        "loss_fn_inputs": {"advantages": adv}}).loss_fn_inputs["advantages"]
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, [0, 2, 4, 6, 8])


# ---- JSON conventions and errors ---------------------------------------------


def test_non_finite_strings_in_float_data():
    datum = {"model_input": {"chunks": []},
             "loss_fn_inputs": {"logprobs": tensor_dict(["nan", "inf", "-inf", 1.5], "float32")}}
    got = datum_arrays(datum).loss_fn_inputs["logprobs"]
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf and got[3] == 1.5
    assert np.isnan(datum_to_wire(datum)["loss_fn_inputs"]["logprobs"]["data"][0])


def with_input(key, value, tokens=(1, 2, 3)):
    return {"model_input": {"chunks": [{"type": "encoded_text", "tokens": list(tokens)}]},
            "loss_fn_inputs": {key: value}}


BAD_DATUMS = [
    ({"loss_fn_inputs": {}}, r"data\[2\]: missing 'model_input'"),
    ({"model_input": {"chunks": {}}, "loss_fn_inputs": {}},
     r"data\[2\]\.model_input\.chunks: is dict, expected a list"),
    ({"model_input": {"chunks": [{"type": "dmel", "dmel": "AA=="}]}, "loss_fn_inputs": {}},
     r"data\[2\]\.model_input\.chunks\[0\]: chunk type 'dmel' is not supported"),
    ({"model_input": {"chunks": [{"tokens": [1]}]}, "loss_fn_inputs": {}},
     r"data\[2\]\.model_input\.chunks\[0\]: missing 'type'"),
    (with_input("x", None, tokens=[1, 2.5]),
     r"data\[2\]\.model_input\.chunks\[0\]: tokens\[1\] is 2\.5, expected an integer"),
    (with_input("x", None, tokens=[1, True]), r"tokens\[1\] is True, expected an integer"),
    ({"model_input": {"chunks": [{"type": "image", "data": "AA==", "format": "png",
                                  "expected_tokens": -1}]}, "loss_fn_inputs": {}},
     r"chunks\[0\]: expected_tokens is -1"),
    ({"model_input": {"chunks": []}}, r"data\[2\]: missing 'loss_fn_inputs'"),
    (with_input("advantages", tensor_dict([0.5, 1.0], "float32", [3])),
     r"data\[2\]\.loss_fn_inputs\.advantages: 2 values, expected 3 for shape \[3\]"),
    (with_input("advantages", tensor_dict([0.5], "float64")),
     r"advantages: dtype is 'float64', expected 'int64' or 'float32'"),
    (with_input("advantages", {"data": [0.5]}), r"advantages: missing 'dtype'"),
    (with_input("advantages", tensor_dict([0.5, "abc"], "float32")),
     r"advantages: data\[1\] is 'abc', expected a number"),
    (with_input("advantages", tensor_dict([0.5, None], "float32")),
     r"advantages: data\[1\] is None, expected a number"),
    (with_input("target_tokens", tensor_dict([1, "nan"], "int64")),
     r"target_tokens: data\[1\] is 'nan', expected a number"),
    (with_input("target_tokens", tensor_dict([1, 2.5], "int64")),
     r"target_tokens: value 2\.5 at flat index 1 is not an integer"),
    (with_input("target_tokens", tensor_dict([1, 2 ** 70], "int64")), r"outside the int64 range"),
    (with_input("advantages", tensor_dict([1.0], "float32", [-1])),
     r"advantages: shape \[-1\] has a negative dimension"),
    (with_input("advantages", tensor_dict([1.0], "float32", "x")),
     r"advantages: shape is str, expected a list of integers"),
    (with_input("advantages", np.float32(1.0)), r"advantages: is a scalar"),
    (with_input("advantages", np.array([1, 2], dtype=np.uint8)), r"advantages: has dtype uint8"),
    (with_input("advantages", [[1.0, 2.0], [3.0]]), r"advantages: is a ragged"),
    (with_input("advantages", ["a", "b"]), r"advantages: is a list that holds something other"),
    (with_input("advantages", "0.5"), r"advantages: is str, expected TensorData"),
    ({"model_input": {"chunks": []}, "loss_fn_inputs": [1]},
     r"data\[2\]\.loss_fn_inputs: is list, expected a mapping"),
]


@pytest.mark.parametrize("datum, message", BAD_DATUMS)
def test_malformed_datums_name_the_path(datum, message):
    for read in (datum_to_wire, datum_arrays):
        with pytest.raises(Error, match="^" + message if message.startswith("data") else message):
            read(datum, "data[2]")


def test_float_targets_must_hold_integers():
    datum = with_input("target_tokens", tensor_dict([1.0, 2.5], "float32"))
    assert datum_to_wire(datum)["loss_fn_inputs"]["target_tokens"]["dtype"] == "float32"
    with pytest.raises(Error, match=r"^data\[0\]\.loss_fn_inputs\.target_tokens: value 2\.5"):
        datum_arrays(datum, "data[0]")


def test_reading_errors_carry_status_and_path():
    with pytest.raises(Error) as info:
        datum_arrays(with_input("advantages", tensor_dict([0.5, 1.0], "float32", [3])), "data[4]")
    e = info.value
    assert e.status == Status.ERR_SHAPE and e.index == -1
    assert e.arg == "data[4].loss_fn_inputs.advantages"
    assert str(e) == ("data[4].loss_fn_inputs.advantages: 2 values, expected 3 for shape [3] "
                      "(ERR_SHAPE)")


# ---- results -----------------------------------------------------------------


OUT_WIRE = {"loss_fn_output_type": "ArrayRecord",
            "loss_fn_outputs": [{"logprobs": tensor_dict(LOGPROBS.tolist(), "float32", [4])},
                                {"logprobs": tensor_dict([-0.25, -1.0], "float32", [2])}],
            "metrics": {"loss:sum": 2.5, "tokens:sum": 6.0}}


def sdk_output(gen):
    return gen.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[{"logprobs": gen.TensorData.from_numpy(LOGPROBS)},
                         {"logprobs": gen.TensorData(data=[-0.25, -1.0], dtype="float32")}],
        metrics={"loss:sum": 2.5, "tokens:sum": 6})


@GENERATIONS
def test_outputs_of_both_generations(gen):
    result = sdk_output(gen)
    assert output_to_wire(result) == OUT_WIRE
    norm = output_arrays(result)
    assert norm.loss_fn_output_type == "ArrayRecord"
    assert norm.metrics == {"loss:sum": 2.5, "tokens:sum": 6.0}
    np.testing.assert_array_equal(norm.loss_fn_outputs[0]["logprobs"], LOGPROBS)
    assert norm.loss_fn_outputs[1]["logprobs"].dtype == np.float32


def test_output_dicts():
    assert output_to_wire(OUT_WIRE) == OUT_WIRE
    assert output_to_wire(sdk_output(old).model_dump(mode="json")) == OUT_WIRE
    # a dump written by the README's recipe has no loss_fn_output_type
    older = {"loss_fn_outputs": [], "metrics": {"loss:sum": "nan"}}
    norm = output_arrays(older)
    assert norm.loss_fn_output_type is None and np.isnan(norm.metrics["loss:sum"])


def test_output_shares_new_generation_memory():
    result = sdk_output(new)
    lp = output_arrays(result).loss_fn_outputs[0]["logprobs"]
    assert np.shares_memory(lp, LOGPROBS)


@pytest.mark.parametrize("result, message", [
    ({"loss_fn_outputs": []}, r"result: missing 'metrics'"),
    ({"metrics": {}}, r"result: missing 'loss_fn_outputs'"),
    ({"loss_fn_outputs": [], "metrics": {"loss:sum": "x"}},
     r'result\.metrics\["loss:sum"\]: is \'x\', expected a number'),
    ({"loss_fn_outputs": [], "metrics": {"ok": True}}, r'result\.metrics\["ok"\]: is True'),
    ({"loss_fn_outputs": [], "metrics": [1]}, r"result\.metrics: is list"),
    ({"loss_fn_outputs": [[1]], "metrics": {}}, r"result\.loss_fn_outputs\[0\]: is list"),
    ({"loss_fn_outputs": [{"logprobs": tensor_dict([1], "int8")}], "metrics": {}},
     r"result\.loss_fn_outputs\[0\]\.logprobs: dtype is 'int8'"),
    ({"loss_fn_output_type": 3, "loss_fn_outputs": [], "metrics": {}},
     r"result\.loss_fn_output_type: is int"),
])
def test_malformed_results_name_the_path(result, message):
    for read in (output_to_wire, output_arrays):
        with pytest.raises(Error, match="^" + message):
            read(result)


# ---- the stand-in clients ----------------------------------------------------


def fake_server(gen, metrics=None):
    """An `answer` that reads the datums with tinkerloss and returns fixed
    logprobs -0.25 * (1 + target % 7) and the cross_entropy loss:sum."""
    def answer(data, loss_fn, loss_fn_config):
        outputs, loss = [], 0.0
        for datum in data:
            inputs = datum_arrays(datum).loss_fn_inputs
            lp = (-0.25 * (1 + inputs["target_tokens"] % 7)).astype(np.float32)
            loss -= float((inputs.get("weights", np.zeros_like(lp)) * lp).sum())
            outputs.append({"logprobs": gen.TensorData.from_numpy(lp)})
        return gen.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs,
                                         metrics=dict(metrics or {}, **{"loss:sum": loss}))
    return answer


def sft_datum(gen, targets=(9, 2, 7, 3), weights=None):
    inputs = {"target_tokens": np.array(targets, dtype=np.int64)}
    if weights is not None:
        inputs["weights"] = np.array(weights, dtype=np.float32)
    return gen.Datum(model_input=gen.ModelInput.from_ints(list(range(len(targets)))),
                     loss_fn_inputs=inputs)


@GENERATIONS
def test_client_futures(gen):
    client = gen.TrainingClient(fake_server(gen))
    data = [sft_datum(gen, weights=[1, 1, 0, 1])]
    future = client.forward_backward(data, "cross_entropy")
    assert future.result().metrics["loss:sum"] == pytest.approx(0.75 + 0.75 + 1.0)
    assert future.result(timeout=5) is future.result()

    async def run():
        fwd = await client.forward_async(data, "ppo", {"clip_low_threshold": 0.9})
        fb = await client.forward_backward_async(data, "cross_entropy")
        return await fwd, await fb.result_async()

    fwd, fb = asyncio.run(run())
    assert output_to_wire(fwd)["loss_fn_outputs"] == output_to_wire(fb)["loss_fn_outputs"]
    assert [r[0] for r in client.requests] == ["forward_backward", "forward", "forward_backward"]
    assert client.requests[1][2:] == ("ppo", {"clip_low_threshold": 0.9})
    with pytest.raises(ValueError, match="No data provided"):
        client.forward([], "cross_entropy")


def test_client_errors_surface_at_result():
    def failing(data, loss_fn, loss_fn_config):
        raise RuntimeError("server said no")
    future = new.TrainingClient(failing).forward_backward([sft_datum(new)], "cross_entropy")
    with pytest.raises(RuntimeError, match="server said no"):
        future.result()


@GENERATIONS
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_forward_backward_custom(gen, use_async):
    client = gen.TrainingClient(fake_server(gen, metrics={"tokens:sum": 7.0}))
    data = [sft_datum(gen), sft_datum(gen, targets=(4, 1, 8), weights=[0.5, 0.5, 0.5])]
    seen = {}

    def loss_fn(got_data, logprobs_list):
        seen["data"], seen["logprobs"] = got_data, logprobs_list
        loss = sum((lp ** 2).sum() / 2 for lp in logprobs_list)  # dC/dlp = lp
        return loss, {"custom:mean": 1.25, "tokens:sum": -1.0}

    if use_async:
        async def run():
            future = await client.forward_backward_custom_async(data, loss_fn)
            return await future
        result = asyncio.run(run())
    else:
        result = client.forward_backward_custom(data, loss_fn).result()

    forward, backward = client.requests
    # the forward pass: cross_entropy, no config, zero weights where absent
    assert forward[0] == "forward" and forward[2:] == ("cross_entropy", None)
    fwd0 = datum_arrays(forward[1][0]).loss_fn_inputs
    assert list(fwd0) == ["target_tokens", "weights"]
    np.testing.assert_array_equal(fwd0["weights"], [0, 0, 0, 0])
    assert forward[1][1] is data[1]  # a datum with weights is sent as it is
    # the user's function: the original datums, float32 leaves requiring grad
    assert seen["data"] is data
    lps = seen["logprobs"]
    assert [lp.dtype for lp in lps] == [torch.float32] * 2
    assert all(lp.requires_grad and lp.is_leaf for lp in lps)
    # the backward pass: weights = -dC/dlp = -lp, target_tokens unchanged
    assert backward[0] == "forward_backward" and backward[2:] == ("cross_entropy", None)
    for datum, lp in zip(backward[1], lps):
        inputs = datum_arrays(datum).loss_fn_inputs
        np.testing.assert_array_equal(inputs["weights"], -lp.detach().numpy())
    assert datum_to_wire(backward[1][0])["loss_fn_inputs"]["target_tokens"] == \
        datum_to_wire(data[0])["loss_fn_inputs"]["target_tokens"]
    # metrics: the server's, updated by the user's
    assert result.metrics["tokens:sum"] == -1.0 and result.metrics["custom:mean"] == 1.25
    surrogate = sum(float((lp.detach() ** 2).sum()) for lp in lps)  # -sum(w lp) = sum(lp^2)
    assert result.metrics["loss:sum"] == pytest.approx(surrogate)


@GENERATIONS
def test_forward_backward_custom_rejects_other_keys(gen):
    client = gen.TrainingClient(fake_server(gen))
    datum = gen.Datum(model_input=gen.ModelInput.from_ints([1, 2]),
                      loss_fn_inputs={"target_tokens": [1, 2], "advantages": [1.0, 1.0]})
    with pytest.raises(ValueError, match=r"found unexpected keys: \['advantages'\]"):
        client.forward_backward_custom([datum], lambda d, lp: (lp[0].sum(), {}))
    no_targets = gen.Datum(model_input=gen.ModelInput.from_ints([1]), loss_fn_inputs={"weights": [1.0]})
    with pytest.raises(ValueError, match="target_tokens must be provided"):
        client.forward_backward_custom([no_targets], lambda d, lp: (lp[0].sum(), {}))
    assert client.requests == []
