#!/usr/bin/env python3
"""The tinkerloss command line: every verb, its output and exit status.
usage: test_cli.py TINKERLOSS GOLDEN_DIR"""
import ast
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

EXE, GOLDEN = sys.argv[1], sys.argv[2]
SOURCE = os.path.dirname(os.path.abspath(GOLDEN))
results = []


class Skip(Exception):
    """A case that cannot run here (a Python module or a program is
    missing); reported, counted neither passed nor failed."""


def case(name):
    def wrap(fn):
        try:
            fn()
            results.append((name, None))
        except Skip as e:
            results.append((name, Skip(str(e))))
        except AssertionError as e:  # a failed expectation
            results.append((name, str(e) or "assertion failed"))
        except Exception as e:  # noqa: BLE001 - report anything else too
            results.append((name, f"{type(e).__name__}: {e}"))
        return fn
    return wrap


def need(*modules):
    """The modules, imported, or Skip (Debian: python3-numpy,
    python3-torch)."""
    try:
        return [__import__(m) for m in modules]
    except ImportError as e:
        raise Skip(str(e)) from None


def run(*args):
    r = subprocess.run([EXE, *args], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def golden(name):
    return os.path.join(GOLDEN, name)


TMP = tempfile.mkdtemp()
FMT = {"<f4": "f", "<f8": "d", "<f2": "e", ">f4": "f", "<i2": "h",
       "<u2": "H"}


def write_npy(path, rows, dtype="<f4", lead=()):
    """rows [N, V] as a .npy file of shape lead + (N, V) (the rows repeated
    prod(lead) times), padded as numpy pads."""
    n, v = len(rows), len(rows[0])
    shape = tuple(lead) + (n, v)
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype, shape)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    values = [x for r in rows for x in r] * math.prod(lead)
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)))
        f.write(header.encode("latin1"))
        f.write(struct.pack("%s%d%s" % (dtype[0], len(values), FMT[dtype]),
                            *values))


def read_npy(path):
    """(descr, shape, data bytes) of a format 1.0 .npy file."""
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:8] == b"\x93NUMPY\x01\x00", raw[:8]
    hlen = struct.unpack("<H", raw[8:10])[0]
    assert (10 + hlen) % 64 == 0, hlen
    d = ast.literal_eval(raw[10:10 + hlen].decode("latin1"))
    assert d["fortran_order"] is False, d
    return d["descr"], d["shape"], raw[10 + hlen:]


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bf16_value(x):
    """x rounded to bfloat16 (nearest even), as a float."""
    return struct.unpack("<f", struct.pack("<I", bf16_round(x) << 16))[0]


def bf16_round(x):
    """The bfloat16 bits of float32 x rounded to nearest even (no NaN)."""
    u = f32_bits(x)
    return ((u + 0x7fff + ((u >> 16) & 1)) & 0xffffffff) >> 16


LOGITS = [[0.5, -1.0, 2.0, 0.0, 1.5], [3.0, 0.25, -2.0, 1.0, 0.0],
          [0.0, 0.0, 0.0, 0.0, 4.0]]
FULL = [4, 2, 0, 4]
REQUEST = {
    "data": [{"model_input": {"chunks": [{"type": "encoded_text", "tokens": FULL[:-1]}]},
              "loss_fn_inputs": {
                  "target_tokens": {"data": FULL[1:], "dtype": "int64", "shape": [3]},
                  "logprobs": {"data": [-1.0, -0.5, -0.3], "dtype": "float32", "shape": None},
                  "advantages": {"data": [1.0, -0.5, 0.0], "dtype": "float32", "shape": None}}}],
    "loss_fn": "ppo",
    "loss_fn_config": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}}


def ref_logprobs(t=1.0):
    out = []
    for row, tok in zip(LOGITS, FULL[1:]):
        z = [x / t for x in row]
        m = max(z)
        lse = m + math.log(sum(math.exp(x - m) for x in z))
        out.append(z[tok] - lse)
    return out


def files():
    req = os.path.join(TMP, "request.json")
    with open(req, "w") as f:
        json.dump(REQUEST, f)
    npy = os.path.join(TMP, "logits.npy")
    write_npy(npy, LOGITS)
    js = os.path.join(TMP, "logits.json")
    with open(js, "w") as f:
        json.dump({"data": [x for r in LOGITS for x in r], "dtype": "float32",
                   "shape": [3, 5]}, f)
    return req, npy, js


@case("check passes on the committed fixtures")
def _():
    names = sorted(n for n in os.listdir(GOLDEN) if n.endswith(".json"))
    rc, out, err = run("check", *[golden(n) for n in names])
    assert rc == 0, out + err
    last = out.strip().splitlines()[-1]
    assert last.endswith(" passed, 0 failed"), last
    assert all(l.startswith("PASS ") for l in out.strip().splitlines()[:-1])


@case("check fails on a changed expected value")
def _():
    with open(golden("losses.json")) as f:
        doc = json.load(f)
    doc["cases"][1]["expected"]["metrics"]["loss:sum"] += 0.01
    bad = os.path.join(TMP, "bad.json")
    with open(bad, "w") as f:
        json.dump(doc, f)
    rc, out, _ = run("check", bad)
    assert rc == 1, out
    assert "FAIL " + doc["cases"][1]["name"] in out, out
    assert out.strip().splitlines()[-1].endswith(" passed, 1 failed"), out


@case("check compares the gradients of the output projection")
def _():
    with open(golden("head.json")) as f:
        doc = json.load(f)
    names = []
    for key in ("grad_lm_head", "grad_lm_head_bias", "grad_hidden"):
        d = json.loads(json.dumps(doc))
        c = d["cases"][0]
        t = c["expected"][key]
        (t[1] if key == "grad_hidden" else t)["data"][3] += 1e-3
        bad = os.path.join(TMP, "bad_head.json")
        with open(bad, "w") as f:
            json.dump({"format": d["format"], "cases": [c]}, f)
        rc, out, _ = run("check", bad)
        assert rc == 1, out
        assert "FAIL " + c["name"] in out and key in out, out
        names.append(key)
    # logits and an output projection in one case are refused
    c = json.loads(json.dumps(doc["cases"][0]))
    v = c["lm_head"]["shape"][0]
    c["logits"] = [{"data": [0.0] * (h["shape"][0] * v), "dtype": "float32",
                    "shape": [h["shape"][0], v]} for h in c["hidden"]]
    with open(bad, "w") as f:
        json.dump({"format": doc["format"], "cases": [c]}, f)
    rc, out, _ = run("check", bad)
    assert rc == 1 and "not both" in out, out
    # a hidden state of the wrong width names its path
    c = json.loads(json.dumps(doc["cases"][0]))
    c["hidden"][0]["shape"][1] -= 1
    c["hidden"][0]["data"] = c["hidden"][0]["data"][:-5]
    with open(bad, "w") as f:
        json.dump({"format": doc["format"], "cases": [c]}, f)
    rc, out, _ = run("check", bad)
    assert rc == 1 and "hidden[0]" in out, out


@case("check: unreadable files and usage")
def _():
    rc, _, err = run("check", os.path.join(TMP, "missing.json"))
    assert rc == 2 and "cannot open" in err, err
    notjson = os.path.join(TMP, "notjson.json")
    with open(notjson, "w") as f:
        f.write("{\"format\": [1,")
    rc, _, err = run("check", notjson)
    assert rc == 2 and "invalid JSON" in err, err
    rc, _, err = run("check")
    assert rc == 2 and "missing FILE..." in err, err
    rc, _, err = run("frobnicate")
    assert rc == 2 and 'unknown command "frobnicate"' in err and "usage" in err, err


@case("compute from .npy logits matches float64")
def _():
    req, npy, _ = files()
    rc, out, err = run("compute", req, "--logits", npy)
    assert rc == 0, err
    doc = json.loads(out)
    lp = doc["loss_fn_outputs"][0]["logprobs"]["data"]
    for got, want in zip(lp, ref_logprobs()):
        assert abs(got - want) < 1e-6, (got, want)
    assert doc["loss_fn_output_type"] == "ArrayRecord"
    assert "loss:sum" in doc["metrics"] and "grad_logits" not in doc


@case("compute: JSON logits, gradients, temperature, output file")
def _():
    req, npy, js = files()
    out_path = os.path.join(TMP, "out.json")
    rc, _, err = run("compute", req, "--logits", js, "--grads", "-o", out_path)
    assert rc == 0, err
    with open(out_path) as f:
        doc = json.load(f)
    g = doc["grad_logits"][0]
    assert g["shape"] == [3, 5] and len(g["data"]) == 15
    # each gradient row sums to zero (softmax sums to one)
    for r in range(3):
        assert abs(sum(g["data"][5 * r:5 * r + 5])) < 1e-6
    rc, out, err = run("compute", req, "--logits", npy, "--temperature", "2")
    assert rc == 0, err
    lp = json.loads(out)["loss_fn_outputs"][0]["logprobs"]["data"]
    for got, want in zip(lp, ref_logprobs(2.0)):
        assert abs(got - want) < 1e-6, (got, want)


@case("compute: errors")
def _():
    req, npy, _ = files()
    rc, _, err = run("compute", req, "--logits", npy, npy)
    assert rc == 2 and "2 logits files for 1 datums" in err, err
    short = os.path.join(TMP, "short.npy")
    write_npy(short, LOGITS[:2])
    rc, _, err = run("compute", req, "--logits", short)
    assert rc == 2 and "data[0].logits has 2 rows" in err, err
    rc, _, err = run("compute", "--logits", npy)
    assert rc == 2 and "missing REQUEST.json" in err, err
    rc, _, err = run("compute", req)
    assert rc == 2 and "--logits FILE... is required" in err, err


@case("compute: float64 .npy logits give the float32 results, noted")
def _():
    req, npy, _ = files()
    f8 = os.path.join(TMP, "f8.npy")
    write_npy(f8, LOGITS, "<f8")
    rc, out4, err = run("compute", req, "--logits", npy, "--grads")
    assert rc == 0, err
    rc, out8, err = run("compute", req, "--logits", f8, "--grads")
    assert rc == 0, err
    d4, d8 = json.loads(out4), json.loads(out8)
    assert d8.pop("notes") == [f"{f8}: float64 logits converted to float32"], d8
    assert "notes" not in d4 and d4 == d8, (d4, d8)


@case("compute: leading dimensions of size 1 are the same logits")
def _():
    req, npy, _ = files()
    rc, want, err = run("compute", req, "--logits", npy, "--grads")
    assert rc == 0, err
    for lead in ((1,), (1, 1)):
        p = os.path.join(TMP, "lead.npy")
        write_npy(p, LOGITS, lead=lead)
        rc, out, err = run("compute", req, "--logits", p, "--grads")
        assert rc == 0 and out == want, (lead, err)
    write_npy(p, LOGITS, lead=(2,))
    rc, out, err = run("compute", req, "--logits", p)
    assert rc == 2 and out == "", out
    assert f"{p}: shape (2, 3, 5): expected [N, V] or leading dimensions of size 1" in err, err


# LOGITS scaled so that their float32 values need rounding to bfloat16,
# then rounded: bfloat16 values
BF_LOGITS = [[bf16_value(1.37 * x + 0.01) for x in r] for r in LOGITS]


def bf16_files():
    """The same bfloat16 logits as '<i2' and '<u2' .npy files and as a JSON
    bfloat16 TENSOR."""
    bits = [[bf16_round(x) for x in r] for r in BF_LOGITS]
    i2, u2 = os.path.join(TMP, "bf_i2.npy"), os.path.join(TMP, "bf_u2.npy")
    write_npy(i2, [[b - 65536 if b >= 32768 else b for b in r] for r in bits], "<i2")
    write_npy(u2, bits, "<u2")
    js = os.path.join(TMP, "bf.json")
    with open(js, "w") as f:
        json.dump({"data": [x for r in BF_LOGITS for x in r],
                   "dtype": "bfloat16", "shape": [3, 5]}, f)
    return i2, u2, js


@case("compute: bfloat16 bits as '<i2' and '<u2' equal a JSON bfloat16 TENSOR")
def _():
    req = files()[0]
    i2, u2, js = bf16_files()
    rc, want, err = run("compute", req, "--logits", js, "--grads")
    assert rc == 0, err
    assert want != run("compute", req, "--logits", files()[1], "--grads")[1]
    for p in (i2, u2):
        rc, out, err = run("compute", req, "--logits", p, "--grads",
                           "--logits-dtype", "bfloat16")
        assert rc == 0 and out == want, (p, err, out, want)
    # a JSON TENSOR says its dtype itself
    rc, out, err = run("compute", req, "--logits", js, "--grads",
                       "--logits-dtype", "bfloat16")
    assert rc == 0 and out == want, err


@case("compute: wrong .npy files are refused, naming what was found")
def _():
    req, npy, _ = files()
    p = os.path.join(TMP, "wrong.npy")
    bad = [
        ("<f2", (), f"{p}: dtype '<f2' is not supported: expected '<f4' (float32) or '<f8' (float64)"),
        (">f4", (), f"{p}: dtype '>f4' is not supported"),
        ("<i2", (), f"{p}: dtype '<i2' (2-byte integers): for bfloat16 bits use --logits-dtype bfloat16"),
        ("<f4", ("--logits-dtype", "bfloat16"),
         f"{p}: dtype '<f4', but the logits are read as bfloat16 (--logits-dtype bfloat16)"),
    ]
    for dtype, extra, want in bad:
        write_npy(p, [[int(x) for x in r] for r in LOGITS] if dtype == "<i2" else LOGITS, dtype)
        rc, out, err = run("compute", req, "--logits", p, *extra)
        assert rc == 2 and out == "" and want in err, (dtype, err)
    # a float64 value float32 cannot hold, by its index
    rows = [list(r) for r in LOGITS]
    rows[1][2] = -1e39
    write_npy(p, rows, "<f8")
    rc, _, err = run("compute", req, "--logits", p)
    assert rc == 2 and f"{p}: element 7 (row 1, column 2) is -1e+39, beyond float32's range" in err, err
    # a file cut short
    write_npy(p, LOGITS)
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 4)
    rc, _, err = run("compute", req, "--logits", p)
    assert rc == 2 and f"{p}: file is truncated" in err, err


@case("compute: a torch.save file is refused with the numpy.save recipe")
def _():
    (torch,) = need("torch")
    req = files()[0]
    for zipped in (True, False):
        p = os.path.join(TMP, f"logits_{zipped}.pt")
        torch.save(torch.tensor(LOGITS), p,
                   _use_new_zipfile_serialization=zipped)
        rc, _, err = run("compute", req, "--logits", p)
        assert rc == 2 and (
            f"{p}: looks like a torch.save file; save the tensor with "
            "numpy.save(path, t.float().numpy()) or, for bfloat16, "
            "numpy.save(path, t.view(torch.int16).numpy()) with "
            "--logits-dtype bfloat16") in err, err


@case("compute --grads-out: float32 files hold the JSON's gradients bit for bit")
def _():
    req, npy, _ = files()
    gdir = os.path.join(TMP, "grads_f32")
    os.makedirs(gdir, exist_ok=True)
    rc, out_json, err = run("compute", req, "--logits", npy, "--grads")
    assert rc == 0, err
    rc, out_files, err = run("compute", req, "--logits", npy, "--grads-out", gdir)
    assert rc == 0, err
    dj, df = json.loads(out_json), json.loads(out_files)
    g = dj.pop("grad_logits")[0]
    path = os.path.join(gdir, "grad_0.npy")
    assert df.pop("grad_logits_files") == [path], df
    assert dj == df, (dj, df)
    descr, shape, data = read_npy(path)
    assert descr == "<f4" and shape == (3, 5), (descr, shape)
    assert data == struct.pack("<15f", *g["data"]), (data, g)
    assert any(x != 0 for x in g["data"])
    try:  # and as numpy reads it, where it is installed
        import numpy
    except ImportError:
        return
    a = numpy.load(path)
    want = numpy.array(g["data"], dtype=numpy.float32).reshape(3, 5)
    assert a.dtype == numpy.float32 and a.tobytes() == want.tobytes(), (a, want)


@case("compute --grads-out: bfloat16 logits give '<u2' gradients, the float32 ones rounded")
def _():
    req = files()[0]
    _, u2, _ = bf16_files()
    gdir = os.path.join(TMP, "grads_bf16")
    os.makedirs(gdir, exist_ok=True)
    bf = ("--logits", u2, "--logits-dtype", "bfloat16")
    rc, out_json, err = run("compute", req, *bf, "--grads")
    assert rc == 0, err
    rc, out_files, err = run("compute", req, *bf, "--grads-out", gdir)
    assert rc == 0, err
    g = json.loads(out_json)["grad_logits"][0]["data"]
    descr, shape, data = read_npy(os.path.join(gdir, "grad_0.npy"))
    assert descr == "<u2" and shape == (3, 5), (descr, shape)
    # the library's bfloat16 gradient is its float32 one rounded once to
    # nearest even (tinkerloss.h, tl_logprobs_backward; tested bit for bit
    # in test_backward)
    want = [bf16_round(x) for x in g]
    assert list(struct.unpack("<15H", data)) == want, (data, want)
    assert any(bf16_value(x) != x for x in g), g  # rounding was needed
    try:  # and PyTorch's rounding, where it is installed
        import numpy
        import torch
    except ImportError:
        return
    a = numpy.load(os.path.join(gdir, "grad_0.npy"))
    t = torch.tensor(g, dtype=torch.float32).to(torch.bfloat16)
    assert a.dtype == numpy.uint16 and a.shape == (3, 5), a
    assert a.view(numpy.int16).ravel().tolist() == t.view(torch.int16).tolist()


@case("compute --grads-out: a directory that is not there is named")
def _():
    req, npy, _ = files()
    missing = os.path.join(TMP, "no_such_dir")
    out = os.path.join(TMP, "not_written.json")
    rc, _, err = run("compute", req, "--logits", npy, "--grads-out", missing, "-o", out)
    assert rc == 2 and f"{missing}: cannot write the gradient files there: No such file or directory" in err, err
    assert not os.path.exists(out)


def dump_from_compute():
    req, npy, _ = files()
    rc, out, err = run("compute", req, "--logits", npy)
    assert rc == 0, err
    resp = json.loads(out)
    return {"request": json.loads(json.dumps(REQUEST)), "response": {
        "loss_fn_outputs": resp["loss_fn_outputs"], "metrics": resp["metrics"]}}


@case("verify: a consistent call agrees")
def _():
    path = os.path.join(TMP, "dump.json")
    with open(path, "w") as f:
        json.dump(dump_from_compute(), f)
    rc, out, err = run("verify", path)
    assert rc == 0, out + err
    assert out.strip().splitlines()[-1] == "0 problems", out


@case("verify: disagreement and inconsistency are findings")
def _():
    dump = dump_from_compute()
    dump["response"]["metrics"]["loss:sum"] += 0.5
    dump["request"]["data"][0]["loss_fn_inputs"]["target_tokens"]["data"][1] = 3
    path = os.path.join(TMP, "dump_bad.json")
    with open(path, "w") as f:
        json.dump(dump, f)
    rc, out, _ = run("verify", path)
    assert rc == 1, out
    assert "FINDING metric loss:sum" in out and "DISAGREES" in out, out
    assert ("FINDING request.data[0].loss_fn_inputs.target_tokens: "
            "target_tokens[1] is 3 but model_input[2] is 0") in out, out
    assert out.strip().splitlines()[-1] == "2 problems", out


@case("verify: unreadable input")
def _():
    rc, _, err = run("verify", os.path.join(TMP, "missing.json"))
    assert rc == 2, err
    path = os.path.join(TMP, "noresp.json")
    with open(path, "w") as f:
        json.dump({"request": REQUEST}, f)
    rc, _, err = run("verify", path)
    assert rc == 2 and "response" in err, err
    rc, _, err = run("verify")
    assert rc == 2 and "missing DUMP.json" in err, err


def write_dump(name, dump):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        json.dump(dump, f)
    return path


@case("verify --logits: the server's logprobs token by token")
def _():
    _, npy, js = files()
    ok = write_dump("dump_ok.json", dump_from_compute())
    for logits in (npy, js):
        rc, out, err = run("verify", ok, "--logits", logits)
        assert rc == 0, out + err
        assert "note: data[0] logprobs: largest |server - from the logits|" in out, out
        assert "metric loss:sum: server" in out and "from the logits" in out, out
        assert out.strip().splitlines()[-1] == "0 problems", out
    dump = dump_from_compute()
    dump["response"]["loss_fn_outputs"][0]["logprobs"]["data"][2] -= 0.05
    bad = write_dump("dump_lp.json", dump)
    rc, out, _ = run("verify", bad, "--logits", npy)
    assert rc == 1, out
    assert "FINDING response.loss_fn_outputs[0].logprobs[2]: server" in out, out
    assert "|difference| 0.05" in out, out
    # wrong number of files, misshapen logits: errors naming them
    rc, _, err = run("verify", ok, "--logits", npy, npy)
    assert rc == 2 and "2 logits files for 1 datums" in err, err
    short = os.path.join(TMP, "short_v.npy")
    write_npy(short, LOGITS[:2])
    rc, _, err = run("verify", ok, "--logits", short)
    assert rc == 2 and "2 rows of logits for the 3 positions" in err, err


@case("verify --atol/--rtol hold every comparison")
def _():
    dump = dump_from_compute()
    dump["response"]["metrics"]["loss:sum"] += 0.003
    path = write_dump("dump_003.json", dump)
    rc, out, _ = run("verify", path, "--atol", "0.01", "--rtol", "0.01")
    assert rc == 0, out
    rc, out, _ = run("verify", path, "--atol", "1e-7", "--rtol", "1e-7")
    assert rc == 1 and "FINDING metric loss:sum" in out, out
    assert "(tolerance 6.5e-08)" in out or "tolerance" in out, out


@case("verify: positive, missing and unshifted values, named by side")
def _():
    dump = dump_from_compute()
    dump["response"]["loss_fn_outputs"][0]["logprobs"]["data"][1] = 0.7
    rc, out, _ = run("verify", write_dump("dump_pos.json", dump))
    assert rc == 1, out
    assert ("FINDING response.loss_fn_outputs[0].logprobs[1] = 0.699999988 "
            "is positive") in out, out
    dump = dump_from_compute()
    dump["request"]["data"][0]["loss_fn_inputs"]["logprobs"]["data"][0] = 0.25
    rc, out, _ = run("verify", write_dump("dump_qpos.json", dump))
    assert "FINDING request.data[0].loss_fn_inputs.logprobs[0] = 0.25 is positive" in out, out
    dump = dump_from_compute()
    dump["response"]["loss_fn_outputs"][0]["logprobs"]["data"][2] = None
    rc, out, _ = run("verify", write_dump("dump_null.json", dump))
    assert rc == 1, out
    assert ("FINDING response.loss_fn_outputs[0].logprobs[2] is missing "
            "(null or \"nan\")") in out, out
    assert out.strip().splitlines()[-1] == "1 problem", out
    # Python's json.dump writes a bare NaN, which JSON does not have
    path = os.path.join(TMP, "dump_nan.json")
    with open(path, "w") as f:
        json.dump(dump, f)
        f.seek(0)
    with open(path) as f:
        text = f.read().replace("null", "NaN")
    with open(path, "w") as f:
        f.write(text)
    rc, _, err = run("verify", path)
    assert rc == 2 and "invalid token near 'NaN'" in err and '"nan"' in err, err
    # three unshifted datums: one diagnosis
    dump = dump_from_compute()
    d0 = dump["request"]["data"][0]
    d0["loss_fn_inputs"]["target_tokens"]["data"] = FULL[:-1]
    dump["request"]["data"] = [d0, d0, d0]
    dump["response"]["loss_fn_outputs"] *= 3
    dump["response"]["metrics"] = {}
    rc, out, _ = run("verify", write_dump("dump_unshifted.json", dump))
    assert rc == 1, out
    lines = [l for l in out.splitlines() if l.startswith("FINDING")]
    assert lines[0] == ("FINDING request.data[0].loss_fn_inputs.target_tokens "
                        "equals model_input: the targets are not shifted "
                        "(target_tokens must be model_input[1:] followed by "
                        "the next token); 3 datums in all"), lines
    assert out.strip().splitlines()[-1] == "2 problems", out  # and no loss:sum


@case("a cookbook dump: the mask, and an image chunk, in verify and compute")
def _():
    req, npy, _ = files()
    image_req = json.loads(json.dumps(REQUEST))
    d0 = image_req["data"][0]
    d0["loss_fn_inputs"]["mask"] = {"data": [0.0, 0.0, 0.0, 1.0, 1.0],
                                    "dtype": "float32"}
    # an image of 2 positions before the text: 5 positions in all
    d0["model_input"]["chunks"].insert(0, {"type": "image", "data": "iVBORw0K",
                                           "format": "png", "expected_tokens": 2})
    ti = d0["loss_fn_inputs"]
    ti["target_tokens"] = {"data": [9, FULL[0]] + FULL[1:], "dtype": "int64", "shape": [5]}
    for key, pad in (("logprobs", -2.0), ("advantages", 0.0)):
        ti[key]["data"] = [pad, pad] + ti[key]["data"]
    rows = [[0.0] * 10 for _ in range(2)] + [r + [0.0] * 5 for r in LOGITS]
    big = os.path.join(TMP, "logits_img.npy")
    write_npy(big, rows)
    path = write_dump("req_img.json", image_req)
    rc, out, err = run("compute", path, "--logits", big)
    assert rc == 0, err
    resp = json.loads(out)
    assert len(resp["loss_fn_outputs"][0]["logprobs"]["data"]) == 5
    dump = write_dump("dump_img.json", {"request": image_req, "response": {
        "loss_fn_outputs": resp["loss_fn_outputs"], "metrics": resp["metrics"]}})
    rc, out, err = run("verify", dump, "--logits", big)
    assert rc == 0, out + err
    assert out.strip().splitlines()[-1] == "0 problems", out
    # the mask chooses the sampled tokens of the sampler metrics
    assert "metric sampler_entropy:mean: server 0.400000006" in out, out
    del d0["model_input"]["chunks"][0]["expected_tokens"]
    rc, _, err = run("verify", write_dump("dump_img2.json", {
        "request": image_req, "response": json.loads(json.dumps(resp))}))
    assert rc == 2 and "request.data[0].model_input.chunks[0].expected_tokens: missing" in err, err


@case("version and help")
def _():
    for args in (("version",), ("--version",)):
        rc, out, _ = run(*args)
        assert rc == 0 and out.startswith("tinkerloss "), out
    rc, out, _ = run("--help")
    assert rc == 0 and "usage" in out, out
    for cmd in ("check", "verify", "compute"):
        for args in ((cmd, "--help"), (cmd, "-h"), ("help", cmd)):
            rc, out, err = run(*args)
            assert rc == 0 and out.startswith(f"usage: tinkerloss {cmd} "), \
                (args, out, err)
    rc, out, _ = run("compute", "--help")
    for opt in ("--logits", "--logits-dtype", "--grads", "--grads-out",
                "--temperature", "--threads", "-o"):
        assert "\n  " + opt + " " in out or "\n  " + opt + "\n" in out, (opt, out)


@case("strict arguments: every value checked, every mistake named")
def _():
    req, npy, _ = files()
    bad = [
        (("compute", req, "--logits", npy, "--threads", "x"),
         '--threads: "x" is not an integer'),
        (("compute", req, "--logits", npy, "--threads", "-2"),
         "--threads: -2 is outside [0, 4096]"),
        (("compute", req, "--logits", npy, "--temperature", "abc"),
         '--temperature: "abc" is not a finite number'),
        (("compute", req, "--logits", npy, "--temperature", "nan"),
         '--temperature: "nan" is not a finite number'),
        (("compute", req, "--logits", npy, "--temperature", "0"),
         "--temperature: 0 is outside"),
        (("compute", req, "--logits", npy, "--temperature"),
         "--temperature needs a value (T)"),
        (("compute", req, "--logits", npy, "--frob"), "unknown option --frob"),
        (("compute", req, "--logits"), "--logits needs at least one FILE"),
        (("compute", req, "--logits", npy, "--logits-dtype", "float16"),
         '--logits-dtype: "float16" is not one of float32|bfloat16'),
        (("compute", req, "--logits", npy, "--grads=1"),
         "--grads takes no value"),
        (("verify", "d.json", "--atol", "-1"), "--atol: -1 is outside"),
        (("verify", "d.json", "--rtol", "1e"), '--rtol: "1e" is not a finite number'),
        (("verify", "a.json", "b.json"), 'unexpected argument "b.json"'),
        (("version", "x"), 'unexpected argument "x"'),
    ]
    for args, want in bad:
        rc, out, err = run(*args)
        assert rc == 2 and want in err, (args, rc, err)
        assert out == "", (args, out)
    # the same values in --opt=value form, and "--" before operands
    rc, out, err = run("compute", "--threads=1", "--temperature=2",
                       "--logits", npy, "--", req)
    assert rc == 0, err


@case("docs: the compute section's commands run as written")
def _():
    need("numpy", "torch")
    if not os.access("/usr/bin/time", os.X_OK):
        raise Skip("/usr/bin/time is not installed (Debian: time)")
    sys.path.insert(0, os.path.join(SOURCE, "tests"))
    from tl_docs import documentation
    blocks = re.findall(r"<!-- cli-test -->\s*```(sh|python)\n(.*?)```",
                        documentation(SOURCE), re.S)
    assert len(blocks) == 5, blocks
    # a folder where the documentation's paths lead to the tool under test
    work = os.path.join(TMP, "readme")
    os.makedirs(os.path.join(work, "build", "tools"))
    exe = os.path.abspath(EXE)
    os.symlink(exe, os.path.join(work, "build", "tools", "tinkerloss"))
    os.symlink(os.path.join(SOURCE, "bench"), os.path.join(work, "bench"))
    with open(os.path.join(work, "run.sh"), "w") as f:
        f.write('#!/bin/sh\n[ "$1" = tinkerloss ] || exit 99\nshift\n'
                'exec "%s" "$@"\n' % exe)
    os.chmod(os.path.join(work, "run.sh"), 0o755)
    with open(os.path.join(work, "request.json"), "w") as f:
        json.dump(dict(REQUEST, data=REQUEST["data"] * 2), f)
    errs = []
    for lang, code in blocks:
        cmd = (["/usr/bin/python3", "-c", code] if lang == "python"
               else ["sh", "-eu", "-c", code])
        r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        assert r.returncode == 0, (code, r.stdout, r.stderr)
        errs.append(r.stderr)
    for name, d in (("output.json", "grads"), ("output_bf16.json", "grads_bf16")):
        with open(os.path.join(work, name)) as f:
            out = json.load(f)
        assert len(out["loss_fn_outputs"]) == 2, out
        assert out["grad_logits_files"] == [f"{d}/grad_0.npy", f"{d}/grad_1.npy"], out
        descr, shape, _ = read_npy(os.path.join(work, d, "grad_1.npy"))
        assert descr == ("<u2" if d == "grads_bf16" else "<f4") and shape == (3, 5)
    assert "Maximum resident set size" in errs[-1], errs[-1]
    assert not os.path.exists(os.path.join(work, "big.npy"))


shutil.rmtree(TMP, ignore_errors=True)
failed = [(n, e) for n, e in results if e and not isinstance(e, Skip)]
skipped = [(n, e) for n, e in results if isinstance(e, Skip)]
for n, e in results:
    if isinstance(e, Skip):
        print(f"skip {n}: {e}")
    else:
        print(("ok   " if not e else "FAIL ") + n + ("" if not e else ": " + e))
passed = len(results) - len(failed) - len(skipped)
print(f"tl-check: {passed} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
