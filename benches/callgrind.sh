#!/usr/bin/env bash
# Instructions per request on the cache-hit path, under callgrind: counts
# that do not move with the machine's load, unlike criterion's wall-clock
# rows. Each variant of benches/instructions.rs runs at two iteration
# counts; the difference divided by the extra iterations is the cost of one
# request (setup, warm-up and exit cancel out).
#
#   bash benches/callgrind.sh            # 1 000 and 11 000 iterations
#   ROUNDS=3 bash benches/callgrind.sh   # repeat, to show the spread
#
# Needs valgrind (Debian: apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind is missing: apt-get install valgrind" >&2
    exit 1
fi

LOW=${LOW:-1000}
HIGH=${HIGH:-11000}
ROUNDS=${ROUNDS:-1}

binary=$(cargo bench --bench instructions --all-features --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*instructions-[^"]*\)".*/\1/p' | tail -1)
if [[ -z "$binary" ]]; then
    echo "could not build benches/instructions.rs" >&2
    exit 1
fi

# Instructions (Ir) of one run of `variant` with `iterations`.
instructions() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$binary" "$1" "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

echo "binary: $binary"
echo "valgrind: $(valgrind --version); $LOW and $HIGH iterations; $ROUNDS round(s)"
echo
echo "| variant | instructions per request | over bare |"
echo "|---|---|---|"
declare -A per
for round in $(seq "$ROUNDS"); do
    for variant in bare session session_1000 validate_only subscription both; do
        low=$(instructions "$variant" "$LOW")
        high=$(instructions "$variant" "$HIGH")
        per[$variant]=$(( (high - low) / (HIGH - LOW) ))
    done
    for variant in bare session session_1000 validate_only subscription both; do
        if [[ $variant == bare ]]; then
            over="—"
        else
            over="+$(( per[$variant] - per[bare] ))"
        fi
        echo "| $variant | ${per[$variant]} | $over |"
    done
done
