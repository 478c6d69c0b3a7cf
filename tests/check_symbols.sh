#!/bin/sh
# Every global symbol defined by the library must start with tl_ or TL_.
# usage: check_symbols.sh NM LIBRARY
set -eu
nm_bin=$1 lib=$2
syms=$("$nm_bin" -g --defined-only "$lib" 2>/dev/null |
       awk 'NF >= 3 && $2 ~ /^[A-Z]$/ { print $3 }')
if [ -z "$syms" ]; then
    echo "no global symbols found in $lib"
    exit 1
fi
# sanitizer builds add their own instrumentation symbols (__odr_asan.*)
syms=$(printf '%s\n' "$syms" | grep -v -E '^__(odr_)?(asan|ubsan|tsan)' || true)
bad=$(printf '%s\n' "$syms" | grep -v -E '^(tl_|TL_)' || true)
count=$(printf '%s\n' "$syms" | wc -l)
if [ -n "$bad" ]; then
    echo "global symbols without the tl_ prefix:"
    printf '  %s\n' $bad
    exit 1
fi
echo "$count global symbols, all prefixed tl_/TL_"
