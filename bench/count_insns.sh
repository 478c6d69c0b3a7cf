#!/usr/bin/env bash
# Instructions per logit element of one call, counted rather than timed
# (emulated timings mean nothing; counts are exact and repeatable):
#   bench/count_insns.sh X86_BUILD_DIR ARM64_BUILD_DIR [N V]
# x86-64: valgrind's callgrind counts the instructions of build/bench/ppo_bench
#   on the scalar and AVX2 tiers (valgrind does not decode AVX-512);
# arm64: qemu-aarch64 with the plugin bench/qemu_insns.c, on the scalar and
#   NEON tiers.
# Each figure is (count of 3 calls - count of 1 call) / (2 N V): setup and
# workload generation cancel out. One thread, the PPO loss. ./run.sh insns
# builds what this needs and runs it.
set -euo pipefail
x86=$1 arm=$2 n=${3:-16} v=${4:-32000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -shared -fPIC -O2 "$(dirname "$0")/qemu_insns.c" -o "$tmp/qemu_insns.so"

count() { # ARCH ISA DTYPE MODE CALLS -> instructions
    local args=(--calls "$5" --tokens "$n" --vocab "$v" --isa "$2"
                --dtype "$3" --mode "$4" --threads 1)
    if [ "$1" = x86 ]; then
        OMP_NUM_THREADS=1 valgrind --tool=callgrind \
            --callgrind-out-file=/dev/null "$x86/bench/ppo_bench" "${args[@]}" \
            2>&1 >/dev/null | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
    else
        OMP_NUM_THREADS=1 qemu-aarch64 -L / -plugin "$tmp/qemu_insns.so" \
            "$arm/bench/ppo_bench" "${args[@]}" 2>&1 >/dev/null |
            sed -n 's/^qemu_insns: \([0-9]*\) instructions$/\1/p'
    fi
}

printf '%-7s %-6s %-5s %-7s %14s\n' arch isa dtype mode insns/element
for spec in "x86 scalar" "x86 avx2" "arm64 scalar" "arm64 neon"; do
    set -- $spec
    for dtype in f32 bf16; do
        for mode in fwd fwdbwd; do
            one=$(count "$1" "$2" "$dtype" "$mode" 1)
            three=$(count "$1" "$2" "$dtype" "$mode" 3)
            [ -n "$one" ] && [ -n "$three" ] || {
                echo "count_insns: no count for $spec $dtype $mode" >&2; exit 1; }
            printf '%-7s %-6s %-5s %-7s %14.3f\n' "$1" "$2" "$dtype" "$mode" \
                "$(awk -v a="$one" -v b="$three" -v e=$((2 * n * v)) 'BEGIN { print (b - a) / e }')"
        done
    done
done
