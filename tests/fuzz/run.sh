#!/bin/sh
# Runs every fuzz corpus against its target for FUZZ_TIME seconds each
# (make fuzz builds the targets first). FUZZ_JOBS corpora run side by side
# (default: one per two cores); FUZZ_WORKERS processes share each corpus
# (libFuzzer's -fork, default 1). The corpus grows in build/fuzz/corpus/NAME
# from the seeds in tests/fuzz/seeds/NAME; an input that breaks a promise is
# saved as build/fuzz/crashes/NAME-*, to be minimised and kept in
# tests/fuzz/regressions/TARGET/, which make test replays.
# Prints one line per corpus (executions, coverage) and fails on any crash.
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
FUZZ_TIME=${FUZZ_TIME:-30}
FUZZ_WORKERS=${FUZZ_WORKERS:-1}
cores=$(nproc 2>/dev/null || echo 2)
FUZZ_JOBS=${FUZZ_JOBS:-$(( cores / 2 > 0 ? cores / 2 : 1 ))}
# corpus:target pairs (tests/fuzz/corpora, which make test replays too); the
# model target reads all three model formats, the run target ./run's command
# line with its chat and NBCE inputs
CORPORA=${FUZZ_CORPORA:-$(cat tests/fuzz/corpora)}
OUT=$ROOT/build/fuzz
mkdir -p "$OUT/corpus" "$OUT/crashes" "$OUT/logs" "$OUT/tmp"

one() { # corpus target
    corpus=$1 target=$2
    mkdir -p "$OUT/corpus/$corpus"
    # ./run and ./export end in exit(1) holding memory on purpose: the harness
    # frees it, so LeakSanitizer only watches the library targets
    leaks=1
    case $target in run|export) leaks=0 ;; esac
    fork=
    [ "$FUZZ_WORKERS" -gt 1 ] && fork="-fork=$FUZZ_WORKERS -ignore_ooms=0 -ignore_timeouts=0 -ignore_crashes=0"
    TMPDIR=$OUT/tmp ASAN_OPTIONS=detect_leaks=$leaks:allocator_may_return_null=1 \
        "$OUT/fuzz_$target" $fork -max_total_time="$FUZZ_TIME" -timeout=20 -rss_limit_mb=3072 -malloc_limit_mb=512 \
        -max_len=262144 -print_final_stats=1 -artifact_prefix="$OUT/crashes/$corpus-" \
        "$OUT/corpus/$corpus" "$ROOT/tests/fuzz/seeds/$corpus" > "$OUT/logs/$corpus.log" 2>&1
    status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$OUT/logs/$corpus.log" | awk '{ s += $2 } END { print s + 0 }')
    cov=$(grep -o ' cov: [0-9]*' "$OUT/logs/$corpus.log" | tail -n 1 | awk '{ print $2 + 0 }')
    ft=$(grep -o ' ft: [0-9]*' "$OUT/logs/$corpus.log" | tail -n 1 | awk '{ print $2 + 0 }')
    files=$(ls "$OUT/corpus/$corpus" | wc -l)
    verdict=ok
    [ $status -ne 0 ] && verdict="FAILED (status $status, see build/fuzz/logs/$corpus.log)"
    printf '%-10s %-10s %10s execs %7s edges %7s features %6s inputs  %s\n' "$corpus" "fuzz_$target" "${execs:-0}" "${cov:-0}" "${ft:-0}" "$files" "$verdict"
    [ $status -eq 0 ]
}

failed=0
running=0
: > "$OUT/results"
for pair in $CORPORA; do
    ( one "${pair%%:*}" "${pair#*:}" >> "$OUT/results" ) &
    running=$((running + 1))
    if [ $running -ge "$FUZZ_JOBS" ]; then wait; running=0; fi
done
wait
cat "$OUT/results"
grep -q FAILED "$OUT/results" && failed=1
n=$(wc -l < "$OUT/results")
bad=$(grep -c FAILED "$OUT/results")
echo "fuzz: $n corpora, $FUZZ_TIME s each, $bad failed"
exit $failed
