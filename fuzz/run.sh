#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 600),
# one after the other, in one process each, and prints libFuzzer's final
# figures. Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`).
#
#   fuzz/run.sh                     # every target, 10 minutes each
#   SECONDS_PER_TARGET=60 fuzz/run.sh token_parse stripe_webhook
#
# The working corpus grows in fuzz/corpus/<target>/ (ignored by git); the
# committed seeds in fuzz/seeds/<target>/ are read, never written.
# Crashes land in fuzz/artifacts/<target>/.
set -uo pipefail
cd "$(dirname "$0")"
seconds="${SECONDS_PER_TARGET:-600}"
logs="${FUZZ_LOGS:-target/logs}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p "$logs"
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target (${seconds} s)"
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$logs/$target.log" 2>&1
    code=$?
    [ $code -ne 0 ] && status=$code
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)|^==[0-9]+==|panicked|SUMMARY' \
        "$logs/$target.log" | tail -n 12
    echo "exit code $code; artifacts: $(ls "artifacts/$target" 2>/dev/null | wc -l)"
done
exit $status
