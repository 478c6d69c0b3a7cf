#!/usr/bin/env python3
"""Print one line `N passed, M failed` over every test case of the
`meson test` runs whose JSON logs are given: a program that counts its own
cases prints a line `tl-check: N passed, M failed`; any other test counts
as one case; a skipped test (exit 77, e.g. an ISA tier the CPU lacks) is
counted apart. A log that does not exist (a filtered run that matched no
test of that build) counts nothing. Exits non-zero if anything failed or
nothing ran."""
import json
import os
import re
import sys

CASES = re.compile(r"^tl-check: (\d+) passed, (\d+) failed$", re.M)


def main(*paths):
    passed = failed = skipped = 0
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                t = json.loads(line)
                if t.get("result") == "SKIP":
                    skipped += 1
                    continue
                ok = t.get("result") in ("OK", "EXPECTEDFAIL")
                m = CASES.findall(t.get("stdout") or "")
                if m:
                    p, fl = (int(x) for x in m[-1])
                    passed += p
                    failed += fl
                    if not ok and fl == 0:  # crashed after counting
                        failed += 1
                elif ok:
                    passed += 1
                else:
                    failed += 1
    tail = f", {skipped} skipped" if skipped else ""
    print(f"{passed} passed, {failed} failed{tail}")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
