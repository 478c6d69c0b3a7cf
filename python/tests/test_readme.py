"""Every ```python example of the documentation (README.md and docs/*.md,
tests/tl_docs.py) runs as written. Examples that use
the SDK get stand-ins: `from tinker import types` imports the stand-in
types of the current SDK generation, and `training_client` is a stand-in
TrainingClient whose server computes with tinkerloss from a fixed model
(logits drawn per input token). The blocks marked <!-- cli-test --> belong
to the command-line sections: tests/test_cli.py runs them, beside the
files their commands name."""

import os
import re
import sys
import types as pytypes

import numpy as np
import pytest

import tinkerloss as tl
from sdk_standins import new

V = 100
EMBED = np.random.default_rng(42).standard_normal((V, V), dtype=np.float32)


def blocks():
    root = os.environ.get("TL_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
    sys.path.insert(0, os.path.join(root, "tests"))
    from tl_docs import documentation
    found = re.findall(r"(<!-- cli-test -->\s*)?```python\n(.*?)```", documentation(root),
                       re.S)
    return [code for marker, code in found if not marker]


def server(data, loss_fn, loss_fn_config):
    """The stand-in server: the fixed model's logits for each datum."""
    from tinkerloss._sdk import datum_arrays
    logits = [EMBED[datum_arrays(d).input_tokens] for d in data]
    res = tl.forward_backward(data, loss_fn, loss_fn_config, logits=logits, grads=False)
    return new.ForwardBackwardOutput(
        loss_fn_output_type=res.loss_fn_output_type,
        loss_fn_outputs=[{"logprobs": new.TensorData.from_numpy(o["logprobs"])}
                         for o in res.loss_fn_outputs],
        metrics=res.metrics)


@pytest.fixture
def fake_tinker(monkeypatch):
    module = pytypes.ModuleType("tinker")
    module.types = new
    monkeypatch.setitem(sys.modules, "tinker", module)
    monkeypatch.setitem(sys.modules, "tinker.types", new)


def test_there_are_examples():
    assert len(blocks()) >= 6


@pytest.mark.parametrize("index", range(len(blocks())))
def test_readme_example(index, fake_tinker, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = blocks()[index]
    namespace = {"__name__": f"readme_{index}", "training_client": new.TrainingClient(server)}
    exec(compile(code, f"documentation python example {index}", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.strip(), "an example shows something"
    # what the examples promise in their comments
    for line, comment in re.findall(r"print\((.*)\)\s+# (.*)", code):
        if comment.startswith(("(", "[", "torch.Size")):
            assert comment in out, (line, comment, out)
    if "dump_call" in code:
        tl.load_call(tmp_path / "call.json")
