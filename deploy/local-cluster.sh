#!/usr/bin/env bash
# Installs what is missing, builds kiln and runs a local 3-node cluster on
# 127.0.0.1 in the foreground. Ctrl-C stops every node it started.
#
#   deploy/local-cluster.sh [N]        N nodes (default 3)
#   KILN_CLUSTER_DIR=/path             where data dirs and logs go
#                                      (default ./.cluster)
# Node i listens on API 127.0.0.1:(7070+10*i), Raft +1, gossip +2, so node 0
# uses the CONTRACT defaults and `kiln --addr ...` talks to any of them.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
dir=${KILN_CLUSTER_DIR:-$(pwd)/.cluster}

deploy/install-deps.sh
deploy/build.sh >/dev/null
mkdir -p "$dir"

pids=()
stop() {
    trap - INT TERM EXIT
    echo
    echo "stopping ${#pids[@]} nodes..."
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    echo "stopped."
    exit 0
}
trap stop INT TERM
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done' EXIT

join=""
for ((i = 0; i < n; i++)); do
    base=$((7070 + 10 * i))
    [ "$i" -gt 0 ] && join="--join 127.0.0.1:7072"
    # shellcheck disable=SC2086
    ./build/kiln agent --name "node$i" --data-dir "$dir/node$i" \
        --api "127.0.0.1:$base" --raft "127.0.0.1:$((base + 1))" \
        --gossip "127.0.0.1:$((base + 2))" --bootstrap-expect "$n" $join \
        >>"$dir/node$i.log" 2>&1 &
    pids+=($!)
    echo "node$i: API http://127.0.0.1:$base  (log $dir/node$i.log)"
done
echo
echo "try:  ./build/kiln nodes    ./build/kiln submit -- echo hello"
echo "Ctrl-C stops the cluster; data stays in $dir (restart resumes it)."
# Exit as soon as any node dies, so a failure is not hidden.
wait -n "${pids[@]}" || true
echo "a node exited; see the logs in $dir" >&2
exit 1
