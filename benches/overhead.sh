#!/usr/bin/env bash
# Time per request of benches/overhead.rs's `overhead` group, three runs
# pinned to CPU 1, each saved as a criterion baseline (run1, run2, run3),
# then benches/plots.rs draws benches/plots/overhead.svg from them (the
# median of the three runs' medians, with their min–max).
#
#   bash benches/overhead.sh                     # 1 s warm-up, 3 s per row
#   MEASURE=0.5 WARMUP=0.2 bash benches/overhead.sh   # a quick check
#   bash benches/overhead.sh 'overhead/(bare|tower)'  # other criterion args
#
# Extra arguments go to each criterion run; the first, if it does not start
# with `-`, replaces the filter `overhead/`. Needs taskset (util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."

MEASURE=${MEASURE:-3}
WARMUP=${WARMUP:-1}
filter="overhead/"
if [[ $# -gt 0 && $1 != -* ]]; then
    filter=$1
    shift
fi

if ! command -v taskset >/dev/null; then
    echo "taskset is missing: apt-get install util-linux" >&2
    exit 1
fi

build_log=$(cargo bench --bench overhead --all-features --no-run 2>&1) || {
    echo "$build_log" >&2
    exit 1
}
binary=$(echo "$build_log" | sed -n 's/.*Executable .*(\(.*overhead-[^)]*\))$/\1/p' | tail -1)
if [[ -z "$binary" || ! -x "$binary" ]]; then
    echo "could not find the overhead bench's binary in cargo's output:" >&2
    echo "$build_log" >&2
    exit 1
fi
echo "binary: $binary; warm-up ${WARMUP} s, measurement ${MEASURE} s per row"

for run in run1 run2 run3; do
    echo "== $run"
    taskset -c 1 "$binary" --bench "$filter" \
        --warm-up-time "$WARMUP" --measurement-time "$MEASURE" --noplot \
        --save-baseline "$run" "$@"
done

cargo bench --all-features --bench plots -- run1 run2 run3
