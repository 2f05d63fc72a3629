#!/usr/bin/env bash
# Benchmarks (docs/benchmarks.md): builds with -DKILN_BENCH=ON into
# build-bench/, runs every tests/bench/bench_* program and prints a summary
# table of their RESULT lines. Everything runs on 127.0.0.1.
#
#   deploy/bench.sh                  all benchmarks (about 10 minutes)
#   deploy/bench.sh --quick          fewer trials, smaller sizes
#   deploy/bench.sh raft jobs        only these (gossip raft jobs pipelines)
#   build-bench/bench_raft [--quick] [--trials N]   one benchmark alone
set -uo pipefail
cd "$(dirname "$0")/.."

quick=()
only=()
for arg in "$@"; do
    case $arg in
        --quick) quick=(--quick) ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) only+=("$arg") ;;
    esac
done

cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_BENCH=ON \
    >/dev/null || { echo "bench: cmake failed" >&2; exit 1; }
[ ${#only[@]} -gt 0 ] || only=(gossip raft jobs pipelines)
targets=(kiln bench_ticker)
for b in "${only[@]}"; do targets+=("bench_$b"); done
cmake --build build-bench -j"$(nproc)" --target "${targets[@]}" >/dev/null ||
    { echo "bench: build failed" >&2; exit 1; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
echo "kiln benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r)"
for b in "${only[@]}"; do
    bin=build-bench/bench_$b
    [ -x "$bin" ] || { echo "bench: no $bin" >&2; status=1; continue; }
    echo "==== $bin ${quick[*]}"
    start=$(date +%s)
    if ! "$bin" "${quick[@]}" | tee -a "$out"; then
        echo "bench: $bin failed" >&2
        status=1
    fi
    echo "==== $bin: $(( $(date +%s) - start )) s"
done

echo
echo "Summary"
printf '%-8s %-28s %14s %-9s %s\n' bench metric value unit note
grep '^RESULT|' "$out" | while IFS='|' read -r _ bench metric value unit note; do
    printf '%-8s %-28s %14s %-9s %s\n' "$bench" "$metric" "$value" "$unit" "$note"
done
exit $status
