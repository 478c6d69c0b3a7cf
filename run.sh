#!/usr/bin/env bash
# tinkerloss: the two commands of the README, plus `build`.
#   ./run.sh test    install what is missing, build, run every test
#   ./run.sh bench   install what is missing, build, run the benchmark
#   ./run.sh build   install what is missing, build
#   ./run.sh tinkerloss ARGS...   build if needed, run the command-line tool
#   ./run.sh python ARGS...       build if needed, run /usr/bin/python3 with
#                                 the build tree's tinkerloss package
#   ./run.sh fuzz [SECONDS]       run the libFuzzer targets (default 300 s)
#   ./run.sh valgrind             the unit tests under valgrind's memcheck
#   ./run.sh insns [N V]          instructions per element, x86-64 and arm64
set -euo pipefail
cd "$(dirname "$0")"

BUILD_DIR=${TL_BUILD_DIR:-build}

# Debian packages the build, the tests and the benchmark need. The
# command-line tests use numpy and torch (.npy files) and time (a README
# command). The Python package: cffi builds and loads it, numpy is its one
# dependency; its tests use pytest, hypothesis, torch (the reference),
# pydantic (the older SDK's stand-in types), venv, pip and meson-python
# (the install test), matplotlib (the watcher's plot).
PACKAGES=(meson ninja-build gcc libc6-dev pkg-config binutils check
          libopenblas-dev libjansson-dev python3 python3-numpy python3-cffi
          python3-pytest python3-hypothesis python3-torch python3-pydantic
          python3-venv python3-pip python3-mesonpy python3-matplotlib git time)

log() { printf '[run.sh] %s\n' "$*" >&2; }

# Runs a command as root: directly, or through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        command -v sudo >/dev/null || {
            log "need root or sudo to run: $*"; exit 1; }
        sudo "$@"
    fi
}

install_missing() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
            grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

configure() {
    if [ ! -f "$BUILD_DIR/build.ninja" ]; then
        log "configuring $BUILD_DIR/"
        meson setup "$BUILD_DIR" -Dpython=enabled >/dev/null
    fi
}

build() {
    install_missing
    configure
    meson compile -C "$BUILD_DIR" >/dev/null || {
        log "build failed; rerunning verbosely"
        meson compile -C "$BUILD_DIR"
        exit 1
    }
}

SAN_DIR=${TL_SAN_DIR:-build-san}

run_tests() {
    build
    local rc=0
    # the summary counts this run only: a filtered run (./run.sh test
    # --suite python) that matches nothing in a build writes no log there
    rm -f "$BUILD_DIR/meson-logs/testlog.json" "$SAN_DIR/meson-logs/testlog.json"
    # 1. every suite once per ISA tier (a tier the CPU lacks is skipped)
    meson test -C "$BUILD_DIR" --num-processes "$(nproc)" --print-errorlogs \
        "$@" || rc=$?
    #    (the Python package's tests, suite python, run in this build only)
    # 2. the same under AddressSanitizer + UndefinedBehaviorSanitizer, in a
    #    build of its own
    if [ ! -f "$SAN_DIR/build.ninja" ]; then
        log "configuring $SAN_DIR/ (address and undefined sanitizers)"
        meson setup "$SAN_DIR" -Db_sanitize=address,undefined \
            -Dbuildtype=debugoptimized -Db_lundef=false -Dpython=disabled \
            >/dev/null
    fi
    meson compile -C "$SAN_DIR" >/dev/null || {
        meson compile -C "$SAN_DIR"; exit 1; }
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C "$SAN_DIR" --num-processes "$(nproc)" \
        --print-errorlogs "$@" || rc=$?
    # 3. the tier suites of an arm64 build under qemu, on the NEON and
    #    scalar tiers (TL_ARM64=0 leaves them out, for a quicker run)
    local logs=("$BUILD_DIR/meson-logs/testlog.json"
                "$SAN_DIR/meson-logs/testlog.json")
    #    (an arm64 host ran them natively in 1.)
    if [ "${TL_ARM64:-1}" != 0 ] && [ "$(uname -m)" != aarch64 ]; then
        run_arm64_tests || rc=$?
        logs+=("$ARM_DIR/meson-logs/testlog.json")
    fi
    # One line counting every test case of every test program of all runs.
    /usr/bin/python3 tests/summarize.py "${logs[@]}" || rc=1
    return $rc
}

ARM_DIR=${TL_ARM_DIR:-build-arm64}

# The arm64 cross build (cross/aarch64-linux-gnu.ini): Debian's cross
# compiler, the arm64 libraries through multiarch, qemu-user to run them.
ARM_PACKAGES=(gcc-aarch64-linux-gnu qemu-user libc6:arm64 libgomp1:arm64
              check:arm64 libjansson-dev:arm64 libopenblas-dev:arm64)

# Unit and golden suites of the arm64 build under emulation, each on the
# NEON and the scalar tier, and ppo_bench's calls (about 3 minutes on 2
# cores).
run_arm64_tests() {
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "adding the arm64 architecture (Debian multiarch)"
        as_root dpkg --add-architecture arm64
        as_root apt-get update -qq
    fi
    PACKAGES=("${ARM_PACKAGES[@]}")
    install_missing
    if [ ! -f "$ARM_DIR/build.ninja" ]; then
        log "configuring $ARM_DIR/ (arm64 cross build, run under qemu)"
        meson setup "$ARM_DIR" --cross-file cross/aarch64-linux-gnu.ini \
            >/dev/null
    fi
    meson compile -C "$ARM_DIR" >/dev/null || {
        meson compile -C "$ARM_DIR"; exit 1; }
    [ -z "${TL_ARM64_BUILD_ONLY:-}" ] || return 0
    meson test -C "$ARM_DIR" --no-rebuild \
        --num-processes "$(nproc)" --print-errorlogs \
        --suite neon --suite scalar --suite bench-calls
}

run_bench() {
    build
    if [ -x "$BUILD_DIR/bench/ppo_bench" ]; then
        "$BUILD_DIR/bench/ppo_bench" "$@"
    else
        "$BUILD_DIR/bench/logprob_bench" "$@"
    fi
}

FUZZ_DIR=${TL_FUZZ_DIR:-build-fuzz}

# libFuzzer targets (clang, ASan + UBSan, OpenMP through LLVM's libomp so
# that the thread counts the diff target compares really run), SECONDS in
# total: half to the differential target (diff), the rest shared by the
# others; new inputs go to $FUZZ_DIR/corpus-*, crashes to
# $FUZZ_DIR/artifacts.
run_fuzz() {
    local total=${1:-300}
    PACKAGES+=(clang libclang-rt-14-dev libomp-14-dev)
    install_missing
    if [ ! -f "$FUZZ_DIR/build.ninja" ]; then
        log "configuring $FUZZ_DIR/ (clang, libFuzzer, sanitizers, OpenMP)"
        CC=clang meson setup "$FUZZ_DIR" -Dfuzz=true -Dopenmp=enabled \
            -Db_sanitize=address,undefined -Db_lundef=false \
            -Dbuildtype=debugoptimized >/dev/null
    elif meson introspect --buildoptions "$FUZZ_DIR" | /usr/bin/python3 -c '
import json, sys
sys.exit(0 if any(o["name"] == "openmp" and o["value"] != "enabled"
                  for o in json.load(sys.stdin)) else 1)'; then
        log "$FUZZ_DIR/ was configured without OpenMP: enabling it"
        meson configure "$FUZZ_DIR" -Dopenmp=enabled >/dev/null
    fi
    meson compile -C "$FUZZ_DIR" >/dev/null || { meson compile -C "$FUZZ_DIR"; exit 1; }
    local targets=(json npy api diff) rc=0 trc t
    local other=$(( total / 2 / 3 ))
    [ "$other" -ge 1 ] || other=1
    local diff=$(( total - 3 * other ))
    [ "$diff" -ge 1 ] || diff=1
    mkdir -p "$FUZZ_DIR/artifacts"
    for t in "${targets[@]}"; do
        local each=$other
        [ "$t" = diff ] && each=$diff
        mkdir -p "$FUZZ_DIR/corpus-$t"
        log "fuzz_$t for ${each}s"
        trc=0
        # idle OpenMP threads sleep instead of spinning (the diff target
        # runs 3 threads on 2 cores); UBSan stops at its first report
        OMP_WAIT_POLICY=passive \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        "$FUZZ_DIR/tests/fuzz/fuzz_$t" -max_total_time="$each" \
            -artifact_prefix="$FUZZ_DIR/artifacts/$t-" -print_final_stats=1 \
            "$FUZZ_DIR/corpus-$t" "tests/fuzz/corpus/$t" \
            >"$FUZZ_DIR/fuzz_$t.log" 2>&1 || trc=1
        # the last status line: executions, coverage, speed (none if it
        # stopped while loading its corpus: not an error of this script)
        { grep -E '^#[0-9]+' "$FUZZ_DIR/fuzz_$t.log" || true; } |
            tail -n 1 | sed "s/^/fuzz_$t: /"
        { grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' \
            "$FUZZ_DIR/fuzz_$t.log" || true; } | sed "s/^/fuzz_$t: /"
        if [ "$trc" -ne 0 ]; then
            rc=1
            log "fuzz_$t found a problem: see $FUZZ_DIR/fuzz_$t.log and $FUZZ_DIR/artifacts"
        fi
    done
    return $rc
}

# Every unit-test program under valgrind's memcheck (AVX2 tier, and
# OpenBLAS's Haswell kernels: valgrind does not decode AVX-512), no fork,
# full leak check. What libgomp keeps
# for its thread pool until exit is not counted (tests/valgrind.supp).
run_valgrind() {
    PACKAGES+=(valgrind)
    build
    local rc=0 t
    for t in "$BUILD_DIR"/tests/test_*; do
        [ -f "$t" ] && [ -x "$t" ] || continue
        local args=()
        [ "$(basename "$t")" = test_golden ] && args=(golden/*.json)
        log "memcheck $(basename "$t")"
        TL_ISA=avx2 OPENBLAS_CORETYPE=Haswell CK_FORK=no CK_DEFAULT_TIMEOUT=0 \
            valgrind -q \
            --error-exitcode=99 --leak-check=full \
            --errors-for-leak-kinds=definite,indirect,possible \
            --suppressions=tests/valgrind.supp \
            "$t" "${args[@]}" >"$BUILD_DIR/valgrind-$(basename "$t").log" 2>&1 || {
            rc=1; log "memcheck: $(basename "$t") failed, see $BUILD_DIR/valgrind-$(basename "$t").log"; }
        tail -n 1 "$BUILD_DIR/valgrind-$(basename "$t").log"
    done
    [ $rc -eq 0 ] && log "memcheck: no errors, no leaks"
    return $rc
}

# Instructions per logit element, x86-64 (scalar, AVX2) and arm64 (scalar,
# NEON, under qemu): bench/count_insns.sh.
run_insns() {
    PACKAGES+=(valgrind)
    build
    TL_ARM64_BUILD_ONLY=1 run_arm64_tests
    bench/count_insns.sh "$BUILD_DIR" "$ARM_DIR" "$@"
}

run_tinkerloss() {
    build >&2
    exec "$BUILD_DIR/tools/tinkerloss" "$@"
}

# /usr/bin/python3 with the build tree's package first on its path
# (build/python is laid out as the installed package).
run_python() {
    build >&2
    [ -f "$BUILD_DIR/python/tinkerloss/_ffi.py" ] || {
        log "the Python package was not built (see 'meson configure $BUILD_DIR' for -Dpython)"
        exit 1; }
    PYTHONPATH="$PWD/$BUILD_DIR/python${PYTHONPATH:+:$PYTHONPATH}" \
        exec /usr/bin/python3 "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    test) run_tests "$@" ;;
    bench) run_bench "$@" ;;
    build) build ;;
    tinkerloss) run_tinkerloss "$@" ;;
    python) run_python "$@" ;;
    fuzz) run_fuzz "$@" ;;
    valgrind) run_valgrind ;;
    insns) run_insns "$@" ;;
    *) echo "usage: ./run.sh test|bench|build|tinkerloss|python|fuzz|valgrind|insns [args...]" >&2
       exit 2 ;;
esac
