#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting, builds
# with -Werror, runs every test tier, then rebuilds with ASan+UBSan and runs
# the unit and in-process cluster tiers again under the sanitizers.
#
#   deploy/test.sh            everything (what CI runs)
#   KILN_TEST_FAST=1 deploy/test.sh   skip the sanitizer pass
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)

deploy/install-deps.sh || { echo "test: dependency install failed" >&2; exit 1; }

fail=0
passed=0
failed=0
skipped=0
step() { echo; echo "==== $*"; }

step "format check (clang-format)"
files=$(git ls-files 'src/*.c' 'src/*.h' 'tests/*.c' 'tests/*.h' 2>/dev/null)
[ -n "$files" ] || files=$(find src tests -name '*.[ch]')
if ! clang-format --dry-run -Werror $files; then
    echo "format: run 'clang-format -i' on the files above" >&2
    fail=1
fi

run_ctest() { # build-dir label-regex
    local dir=$1 labels=$2 log
    log=$(mktemp)
    (cd "$dir" && ctest --output-on-failure -j"$jobs" -L "$labels") 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local p f
    p=$(grep -Eo '[0-9]+ tests passed' "$log" | head -1 | grep -Eo '^[0-9]+' || true)
    # ctest: "100% tests passed, 0 tests failed out of 7"
    read -r p f < <(sed -nE 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1 \2/p' "$log" | awk '{print $2-$1, $1}')
    local s
    s=$(grep -c '(Skipped)' "$log" || true)
    # ctest counts a skipped test as passed: report it apart
    passed=$((passed + ${p:-0} - ${s:-0}))
    failed=$((failed + ${f:-0}))
    skipped=$((skipped + ${s:-0}))
    rm -f "$log"
    return "$rc"
}

step "build (RelWithDebInfo, -Werror)"
if cmake -S . -B build -DKILN_WERROR=ON >/dev/null && cmake --build build -j"$jobs"; then
    step "tests: unit, cluster, integration"
    run_ctest build 'unit|cluster|integration' || fail=1
else
    echo "build failed" >&2
    fail=1
    failed=$((failed + 1))
fi

if [ -z "${KILN_TEST_FAST:-}" ]; then
    step "build (ASan+UBSan, -Werror)"
    if cmake -S . -B build-asan -DKILN_WERROR=ON -DCMAKE_BUILD_TYPE=Debug \
            -DKILN_SANITIZE=address,undefined >/dev/null &&
        cmake --build build-asan -j"$jobs"; then
        step "tests under ASan+UBSan: unit, cluster"
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
            run_ctest build-asan 'unit|cluster' || fail=1
    else
        echo "sanitizer build failed" >&2
        fail=1
        failed=$((failed + 1))
    fi
fi

echo
if [ "$skipped" -gt 0 ]; then
    echo "test: $skipped skipped (could not run on this machine: see their output above)"
fi
echo "test: $passed passed, $failed failed"
[ "$fail" -eq 0 ] && [ "$failed" -eq 0 ]
