#!/usr/bin/env python3
"""Compile and run every C example of the documentation (README.md and
docs/*.md, tests/tl_docs.py) against the built library: the documentation
must match the code.
usage: check_readme.py SOURCE_ROOT CC INCLUDE_DIR GENERATED_DIR LIBRARY
                       [EXTRA_FLAG...]"""
import os
import re
import subprocess
import sys
import tempfile

from tl_docs import documentation


def main(root, cc, inc, gen, lib, *extra):
    blocks = re.findall(r"```c\n(.*?)```", documentation(root), re.S)
    if not blocks:
        print("no C examples found")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for i, code in enumerate(blocks):
            src = os.path.join(tmp, f"ex{i}.c")
            exe = os.path.join(tmp, f"ex{i}")
            with open(src, "w", encoding="utf-8") as f:
                f.write(code)
            cmd = [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", inc,
                   "-I", gen,
                   src, lib, "-fopenmp", "-ljansson", "-lopenblas", "-lm",
                   "-lpthread",
                   *extra, "-o", exe]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(f"example {i} does not compile:\n{r.stderr}")
                return 1
            r = subprocess.run([exe], capture_output=True, text=True)
            if r.returncode:
                print(f"example {i} exits {r.returncode}:\n{r.stdout}{r.stderr}")
                return 1
            print(f"example {i}: {r.stdout.strip().splitlines()[-1]}")
    print(f"{len(blocks)} C examples of the documentation compile and run")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
