#!/usr/bin/env bash
# Every measurement BENCHMARKS.md reports, one after the other, on a machine
# left otherwise idle (nothing compiling): its tables and plots come from
# one run of this script. Output goes to the terminal and to
# target/bench-run/<name>.log; the plots to benches/plots/.
#
#   bash benches/run-all.sh
#
# Needs valgrind and taskset, and the machine's PostgreSQL and Redis
# (DATABASE_URL / REDIS_URL) for the store rows and the store comparison.
# About 20 minutes on the 2-core VM of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-run
mkdir -p "$out"

# Build everything first, so no compilation overlaps a measurement.
cargo bench --all-features --no-run
cargo bench --manifest-path benches/store_comparison/Cargo.toml --target-dir target --no-run

step() {
    local name=$1
    shift
    echo "== $name: $*" | tee "$out/$name.log"
    "$@" 2>&1 | tee -a "$out/$name.log"
}

git rev-parse --short HEAD > "$out/commit" 2>/dev/null || true
step overhead bash benches/overhead.sh
step callgrind env ROUNDS=3 bash benches/callgrind.sh
step contention cargo bench --all-features --bench contention
for run in 1 2 3; do
    step "e2e-$run" cargo bench --all-features --bench e2e
done
step memory cargo bench --all-features --bench memory
step stores cargo bench --manifest-path benches/store_comparison/Cargo.toml --target-dir target
echo "== logs in $out/"
