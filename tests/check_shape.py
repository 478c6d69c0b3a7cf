#!/usr/bin/python3
"""The code's shape, as the project holds it: every public function takes
at most 8 parameters, no file in lib/ has more than 600 lines, and no
function in lib/ or tools/ more than 100 (from its opening brace at the
start of a line to its closing one). Prints the largest of each.
usage: check_shape.py SOURCE_ROOT"""
import glob
import os
import re
import sys

MAX_PARAMS, MAX_FILE, MAX_FUNCTION = 8, 600, 100


def public_params(root):
    """(count, name) of every TL_API function."""
    out = []
    for h in glob.glob(os.path.join(root, "include", "*.h")):
        text = re.sub(r"/\*.*?\*/", "", open(h, encoding="utf-8").read(),
                      flags=re.S)
        for m in re.finditer(r"TL_API\s+[^;{]*?\b(tl_\w+)\s*\(([^;]*?)\)\s*;",
                             text, re.S):
            args = m.group(2).strip()
            n = 0 if args in ("", "void") else args.count(",") + 1
            out.append((n, m.group(1)))
    return out


def functions(path):
    """(lines, name) of every function of a C file."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out, start = [], None
    for i, line in enumerate(lines):
        if line.startswith("{") and start is None:
            start = i
            # the signature's first line: the last line above that starts
            # with a letter
            j = i - 1
            while j > 0 and not re.match(r"[A-Za-z_]", lines[j]):
                j -= 1
            m = re.search(r"(\w+)\s*\(", " ".join(lines[j:i]))
            name = m.group(1) if m else "?"
        elif line.startswith("}") and start is not None:
            out.append((i - start + 1, f"{os.path.relpath(path)}:{name}"))
            start = None
    return out


def main(root):
    os.chdir(root)
    params = public_params(root)
    files = [(sum(1 for _ in open(f, encoding="utf-8")), f)
             for f in glob.glob("lib/**/*.[ch]", recursive=True)]
    funcs = [fn for f in glob.glob("lib/**/*.c", recursive=True) +
             glob.glob("tools/*.c") for fn in functions(f)]
    bad = 0
    for what, items, limit in (("parameters of a public function", params,
                                MAX_PARAMS),
                               ("lines of a file in lib/", files, MAX_FILE),
                               ("lines of a function in lib/ or tools/",
                                funcs, MAX_FUNCTION)):
        worst = max(items)
        over = [i for i in items if i[0] > limit]
        print(f"most {what}: {worst[0]} ({worst[1]}); limit {limit}")
        for n, name in over:
            print(f"  over the limit: {name} with {n}")
        bad += len(over)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
