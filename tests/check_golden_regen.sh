#!/bin/sh
# Regenerating the golden fixtures reproduces the committed files byte for
# byte. Skipped (exit 77) where Debian's python3-torch is not installed.
set -eu
gen=$1
if ! /usr/bin/python3 -c 'import torch, numpy' 2>/dev/null; then
    echo "python3-torch or python3-numpy not installed: skipped"
    exit 77
fi
exec /usr/bin/python3 "$gen" --check
