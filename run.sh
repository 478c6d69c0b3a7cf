#!/usr/bin/env bash
# tinkerloss: the two commands of the README, plus `build`.
#   ./run.sh test    install what is missing, build, run every test
#   ./run.sh bench   install what is missing, build, run the benchmark
#   ./run.sh build   install what is missing, build
#   ./run.sh tinkerloss ARGS...   build if needed, run the command-line tool
set -euo pipefail
cd "$(dirname "$0")"

BUILD_DIR=${TL_BUILD_DIR:-build}

# Debian packages the build, the tests and the benchmark need.
PACKAGES=(meson ninja-build gcc libc6-dev pkg-config binutils check
          libopenblas-dev libjansson-dev python3)

log() { printf '[run.sh] %s\n' "$*" >&2; }

install_missing() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
            grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || {
            log "need root or sudo to install: ${missing[*]}"; exit 1; }
        sudo=(sudo)
    fi
    log "installing: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

configure() {
    if [ ! -f "$BUILD_DIR/build.ninja" ]; then
        log "configuring $BUILD_DIR/"
        meson setup "$BUILD_DIR" >/dev/null
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
    # 1. every suite once per ISA tier (a tier the CPU lacks is skipped)
    meson test -C "$BUILD_DIR" --num-processes "$(nproc)" --print-errorlogs \
        "$@" || rc=$?
    # 2. the same under AddressSanitizer + UndefinedBehaviorSanitizer, in a
    #    build of its own
    if [ ! -f "$SAN_DIR/build.ninja" ]; then
        log "configuring $SAN_DIR/ (address and undefined sanitizers)"
        meson setup "$SAN_DIR" -Db_sanitize=address,undefined \
            -Dbuildtype=debugoptimized -Db_lundef=false >/dev/null
    fi
    meson compile -C "$SAN_DIR" >/dev/null || {
        meson compile -C "$SAN_DIR"; exit 1; }
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C "$SAN_DIR" --num-processes "$(nproc)" \
        --print-errorlogs "$@" || rc=$?
    # One line counting every test case of every test program of both runs.
    python3 tests/summarize.py "$BUILD_DIR/meson-logs/testlog.json" \
        "$SAN_DIR/meson-logs/testlog.json" || rc=1
    return $rc
}

run_bench() {
    build
    if [ -x "$BUILD_DIR/bench/ppo_bench" ]; then
        "$BUILD_DIR/bench/ppo_bench" "$@"
    else
        "$BUILD_DIR/bench/logprob_bench" "$@"
    fi
}

run_tinkerloss() {
    build >&2
    exec "$BUILD_DIR/tools/tinkerloss" "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    test) run_tests "$@" ;;
    bench) run_bench "$@" ;;
    build) build ;;
    tinkerloss) run_tinkerloss "$@" ;;
    *) echo "usage: ./run.sh test|bench|build|tinkerloss [args...]" >&2
       exit 2 ;;
esac
