#!/bin/sh
# The install commands of the documentation, run as written: every ```sh
# block that follows a line "<!-- install-test -->" in the documentation
# (README.md and docs/*.md, tests/tl_docs.py) runs in a fresh
# shell whose HOME is an empty temporary folder and whose current folder is
# a copy of the sources (so that the blocks' relative paths work),
# with example.c the first C example of the documentation (README.md's).
# A block fails the test if it fails.
# usage: check_install.sh SOURCE_ROOT
set -eu
src=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 - "$src" "$tmp" <<'EOF'
import os, re, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from tl_docs import documentation
text = documentation(sys.argv[1])
blocks = re.findall(r"<!-- install-test -->\s*```sh\n(.*?)```", text, re.S)
c = re.findall(r"```c\n(.*?)```", text, re.S)
if not blocks or not c:
    sys.exit("no install blocks or no C example in the documentation")
for i, b in enumerate(blocks):
    open(f"{sys.argv[2]}/block{i}.sh", "w").write(b)
open(f"{sys.argv[2]}/example.c", "w").write(c[0])
print(f"{len(blocks)} install blocks")
EOF
n=0
for block in "$tmp"/block*.sh; do
    work=$tmp/work$n home=$tmp/home$n
    mkdir -p "$home"
    # the sources as they are in the working tree (tracked and new files,
    # not the build folders)
    mkdir -p "$work"
    git -C "$src" ls-files -z --cached --others --exclude-standard |
        (cd "$src" && tar --null -T - -cf -) | tar -C "$work" -xf -
    cp "$tmp/example.c" "$work/example.c"
    echo "== $(head -n 1 "$block")"
    if ! (cd "$work" && HOME=$home sh -eux "$block") >"$tmp/log$n" 2>&1; then
        cat "$tmp/log$n"
        echo "install block $n failed"
        exit 1
    fi
    tail -n 1 "$tmp/log$n"
    n=$((n + 1))
done
echo "tl-check: $n passed, 0 failed"
