#!/usr/bin/env bash
# VNN-COMP: run one instance.
# Usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
#
# Runs `genbab verify ONNX VNNLIB --results-file RESULTS_FILE --timeout T'
# --config <category config>`, where T' is TIMEOUT less a start-up allowance
# (the same formula as genbab.batch.inner_timeout: T - min(T/2, 3 + 0.05 T)),
# so model loading and interpreter start count against TIMEOUT.  From outside,
# coreutils `timeout' sends SIGTERM at TIMEOUT and SIGKILL GENBAB_KILL_GRACE
# (default 2) seconds later.  A result is always written: when genbab leaves
# no results file, this script writes `timeout' (the time ran out), `unknown'
# (it was interrupted earlier by SIGTERM/SIGINT, or exited 0 without a result)
# or `error' (genbab failed: bad input, crash, out of memory).
#
# Environment: GENBAB_PYTHON (default python3), GENBAB_VNNCOMP_CONFIG (force a
# config file), GENBAB_ARGS (extra verify arguments, e.g. "--device cpu").
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
[ $# -eq 6 ] || die 1 "usage: $0 v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT"
check_version "$1"
CATEGORY=$2
ONNX=$3
VNNLIB=$4
RESULTS_FILE=$5
TIMEOUT=$6
KILL_GRACE=${GENBAB_KILL_GRACE:-2}

awk -v t="$TIMEOUT" 'BEGIN { exit !(t ~ /^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$/ && t + 0 > 0) }' \
    || die 1 "TIMEOUT must be a positive number of seconds, got '$TIMEOUT'"
INNER=$(awk -v t="$TIMEOUT" 'BEGIN { a = 3 + 0.05 * t; if (a > t / 2) a = t / 2;
                                     printf "%.3f", t - a }')
now_ms() { date +%s%3N; }
START_MS=$(now_ms)

write_result() {  # write_result WORD: write WORD unless genbab wrote a result
    [ -s "$RESULTS_FILE" ] && return 0
    local tmp="$RESULTS_FILE.$$.tmp"
    printf '%s\n' "$1" > "$tmp" && mv -f "$tmp" "$RESULTS_FILE"
    echo "run_instance.sh: wrote '$1' to $RESULTS_FILE" >&2
}

ran_out() {  # ran_out SECONDS: has at least SECONDS passed since the start?
    awk -v e="$(( $(now_ms) - START_MS ))" -v s="$1" 'BEGIN { exit !(e >= 1000 * s) }'
}

rm -f "$RESULTS_FILE"
mkdir -p "$(dirname "$RESULTS_FILE")"
MODEL=$(resolve_input "$ONNX")
SPEC=$(resolve_input "$VNNLIB")
if [ -z "$MODEL" ] || [ -z "$SPEC" ]; then
    echo "run_instance.sh: missing input file(s): $ONNX $VNNLIB" >&2
    write_result error
    exit 0
fi
CONFIG=$(find_config "$CATEGORY")
CMD=("$GENBAB_PY" -m genbab.cli verify "$MODEL" "$SPEC" --results-file "$RESULTS_FILE"
     --timeout "$INNER")
[ -n "$CONFIG" ] && CMD+=(--config "$CONFIG")
# shellcheck disable=SC2206 # GENBAB_ARGS is word-split on purpose
[ -n "${GENBAB_ARGS:-}" ] && CMD+=(${GENBAB_ARGS})
echo "run_instance.sh: category '$CATEGORY', config ${CONFIG:-built-in defaults}," \
     "timeout $TIMEOUT s (genbab: $INNER s)" >&2

INTERRUPTED=""
CHILD=""
on_signal() {  # forward to `timeout', which passes it on and kills after the grace
    INTERRUPTED=$1
    [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

timeout --kill-after="$KILL_GRACE" "$TIMEOUT" "${CMD[@]}" &
CHILD=$!
wait "$CHILD"
CODE=$?
while kill -0 "$CHILD" 2>/dev/null; do  # a trapped signal interrupted `wait'
    wait "$CHILD"
    CODE=$?
done

if [ -n "$INTERRUPTED" ]; then
    if ran_out "$INNER"; then write_result timeout; else write_result unknown; fi
    trap - TERM INT
    [ "$INTERRUPTED" = INT ] && exit 130
    exit 143
fi
case "$CODE" in
    0) write_result unknown ;;
    124) write_result timeout ;;  # `timeout' stopped genbab at TIMEOUT
    137) if ran_out "$TIMEOUT"; then write_result timeout; else write_result error; fi ;;
    *) write_result error ;;
esac
exit 0
