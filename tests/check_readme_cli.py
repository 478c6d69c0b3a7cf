#!/usr/bin/python3
"""Every tinkerloss command the documentation (README.md and docs/*.md,
tests/tl_docs.py) shows, run as written.

usage: check_readme_cli.py SOURCE_ROOT TINKERLOSS GOLDEN_DIR

Each line of a ```sh block (other than those marked <!-- cli-test -->,
which tests/test_cli.py runs whole) that starts with "./run.sh tinkerloss" or
"tinkerloss" (with its backslash continuations) runs through bash, with
the command replaced by the built executable, in a scratch directory
holding the files the examples name: a request of two datums
(request.json), their logits (datum0.npy, datum1.npy), a dump of the call
as a server would answer it (call.json), and the golden fixtures
(golden/). Every command must succeed (exit status 0) and print something.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

from tl_docs import documentation

ROOT, EXE, GOLDEN = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]


def commands(text):
    out = []
    # blocks marked <!-- cli-test --> run whole, in test_cli.py
    for marked, block in re.findall(r"(<!-- cli-test -->\s*)?```sh\n(.*?)```",
                                    text, re.S):
        if marked:
            continue
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines:
            line = line.strip()
            m = re.match(r"(?:\./run\.sh )?tinkerloss(\s.*)?$", line)
            if m:
                out.append(m.group(1) or "")
    return out


def write_npy(path, rows):
    n, v = len(rows), len(rows[0])
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (n, v)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)))
        f.write(header.encode("latin1"))
        f.write(struct.pack("<%df" % (n * v), *[x for r in rows for x in r]))


def sandbox():
    d = tempfile.mkdtemp()
    os.symlink(os.path.abspath(GOLDEN), os.path.join(d, "golden"))
    data = []
    for i, full in enumerate(([3, 1, 4, 1, 5], [2, 7, 1, 8])):
        n = len(full) - 1
        rows = [[((7 * r + 3 * j + i) % 11) * 0.25 - 1.0 for j in range(9)]
                for r in range(n)]
        write_npy(os.path.join(d, f"datum{i}.npy"), rows)
        data.append({
            "model_input": {"chunks": [{"type": "encoded_text", "tokens": full[:-1]}]},
            "loss_fn_inputs": {
                "target_tokens": {"data": full[1:], "dtype": "int64", "shape": [n]},
                "logprobs": {"data": [-2.0 - 0.1 * t for t in range(n)], "dtype": "float32"},
                "advantages": {"data": [0.5] * n, "dtype": "float32"},
                "mask": {"data": [1.0] * n, "dtype": "float32"}}})
    request = {"data": data, "loss_fn": "ppo", "loss_fn_config": None}
    with open(os.path.join(d, "request.json"), "w") as f:
        json.dump(request, f)
    r = subprocess.run([EXE, "compute", "request.json", "--logits", "datum0.npy",
                        "datum1.npy"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    resp = json.loads(r.stdout)
    with open(os.path.join(d, "call.json"), "w") as f:
        json.dump({"request": request, "response": resp}, f)
    return d


def main():
    cmds = commands(documentation(ROOT))
    d = sandbox()
    failed = 0
    for args in cmds:
        r = subprocess.run(["bash", "-c", f"'{EXE}'{args}"], cwd=d,
                           capture_output=True, text=True)
        ok = r.returncode == 0 and (r.stdout or os.listdir(d))
        print(("ok   " if ok else "FAIL ") + "tinkerloss" + args +
              ("" if ok else f"\n  exit {r.returncode}: {r.stderr.strip()}"))
        failed += not ok
    shutil.rmtree(d)
    if not cmds:
        print("no tinkerloss command found in the documentation")
        failed = 1
    print(f"tl-check: {len(cmds) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
