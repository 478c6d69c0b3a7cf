#!/usr/bin/env python3
"""Print one line `N passed, M failed` over every test case that
`meson test` ran: a check-based program counts its own cases (its line
`tl-check: N passed, M failed`), any other test counts as one case.
Exits non-zero if anything failed or nothing ran."""
import json
import re
import sys

CASES = re.compile(r"^tl-check: (\d+) passed, (\d+) failed$", re.M)


def main(path):
    passed = failed = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            t = json.loads(line)
            ok = t.get("result") in ("OK", "EXPECTEDFAIL", "SKIP")
            m = CASES.findall(t.get("stdout") or "")
            if m:
                p, fl = (int(x) for x in m[-1])
                passed += p
                failed += fl
                if not ok and fl == 0:  # crashed or timed out after counting
                    failed += 1
            elif ok:
                passed += 1
            else:
                failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
