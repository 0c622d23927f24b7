#!/usr/bin/env bash
# CPU benchmark: llama.cpp (llama-bench), llama2.c (run / runq) and our ./run.
#
# This script builds nothing and fetches nothing: pass the paths of binaries
# that were built elsewhere (peer code lives outside this repo).
#
# Usage:
#   bench/bench.sh --models DIR [--llama-bench PATH] [--llama2c-run PATH]
#                  [--llama2c-runq PATH] [--ours PATH] [options]
#
# Every engine is optional; only those given are measured.
#   --models DIR          directory with the model files, named by shape:
#                           SHAPE-f32.gguf SHAPE-q8_0.gguf SHAPE-q4_0.gguf  (llama.cpp)
#                           SHAPE-v0.bin (llama2.c run, f32)  SHAPE-v2.bin (runq, int8)
#                           SHAPE-run-{f32,q8_0,q4_0}.bin (ours: ./export SHAPE-v0.bin SHAPE-run-q8_0.bin
#                             --tokenizer tokenizer.bin --quant q8_0)
#                         (made by bench/mkmodel.py + llama.cpp's llama2c converter
#                          and llama-quantize)
#   --shapes "A B"        shapes to run (default: "tinyllama stories110m"; missing files skipped)
#   --threads "1 2"       thread counts (default: "1 2")
#   --quants "f32 q8_0 q4_0"   GGUF types for llama-bench (default: f32 q8_0 q4_0)
#   --pp N                prompt length (default 512)   --tg N  tokens generated (default 128)
#   --reps N              repetitions (default 3; llama-bench -r N)
#   --tokenizer PATH      llama2.c tokenizer.bin (default: the repo's shared copy if found)
#   --ours PATH           our engine's ./run (see bench_ours below)
#   --ours-formats "f32 q8_0 q4_0"  which SHAPE-run-FMT.bin files our engine is timed on
#   --timeout S           per-command timeout in seconds (default 1800)
#   --note TEXT           a line printed above the table (e.g. peer commits); repeatable
#   --wait-idle S         before each row wait up to S s for the cores to be idle
#                         (others compiling on the same 2 cores skew results; default 0 = don't wait)
#   -v                    show the raw output of every command on stderr
#
# Output: a Markdown table on stdout (progress and notes on stderr).
# Numbers are mean ± stddev over the repetitions, in tokens/second.
#   pp = prompt processing (batched prefill) of --pp tokens
#   tg = decode, --tg tokens one at a time
# llama2.c has no batched prefill: its "achieved tok/s" (no prompt, -n tg+1
# steps) is reported as tg. OpenMP builds use OMP_NUM_THREADS=N; a build
# without OpenMP runs single-threaded whatever N is.
set -u -o pipefail

LLAMA_BENCH="" ; L2C_RUN="" ; L2C_RUNQ="" ; OURS=""
MODELS="" ; SHAPES="tinyllama stories110m" ; THREADS="1 2" ; QUANTS="f32 q8_0 q4_0"
NOTES=() ; PP=512 ; TG=128 ; REPS=3 ; TOKENIZER="" ; OURS_FORMATS="f32 q8_0 q4_0" ; TIMEOUT=1800 ; VERBOSE=0 ; WAIT_IDLE=0

die() { echo "bench.sh: $*" >&2; exit 2; }
log() { echo "# $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --llama-bench)   LLAMA_BENCH="$2"; shift 2 ;;
        --llama2c-run)   L2C_RUN="$2"; shift 2 ;;
        --llama2c-runq)  L2C_RUNQ="$2"; shift 2 ;;
        --ours)          OURS="$2"; shift 2 ;;
        --ours-formats)  OURS_FORMATS="$2"; shift 2 ;;
        --models)        MODELS="$2"; shift 2 ;;
        --shapes)        SHAPES="$2"; shift 2 ;;
        --threads)       THREADS="$2"; shift 2 ;;
        --quants)        QUANTS="$2"; shift 2 ;;
        --pp)            PP="$2"; shift 2 ;;
        --tg)            TG="$2"; shift 2 ;;
        --reps)          REPS="$2"; shift 2 ;;
        --tokenizer)     TOKENIZER="$2"; shift 2 ;;
        --timeout)       TIMEOUT="$2"; shift 2 ;;
        --wait-idle)     WAIT_IDLE="$2"; shift 2 ;;
        --note)          NOTES+=("$2"); shift 2 ;;
        -v)              VERBOSE=1; shift ;;
        -h|--help)       sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[ -n "$MODELS" ] || die "--models DIR is required"
[ -d "$MODELS" ] || die "no such directory: $MODELS"
[ -n "$LLAMA_BENCH$L2C_RUN$L2C_RUNQ$OURS" ] || die "nothing to measure: give --llama-bench, --llama2c-run, --llama2c-runq and/or --ours"
for b in "$LLAMA_BENCH" "$L2C_RUN" "$L2C_RUNQ" "$OURS"; do
    [ -z "$b" ] || [ -x "$b" ] || die "not an executable: $b"
done
if [ -z "$TOKENIZER" ]; then
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    for t in "$here/../shared/assets/llama2c/tokenizer.bin" /work/shared/assets/llama2c/tokenizer.bin; do
        [ -f "$t" ] && { TOKENIZER="$t"; break; }
    done
fi
if [ -n "$L2C_RUN$L2C_RUNQ" ] && [ ! -f "$TOKENIZER" ]; then
    die "llama2.c needs a tokenizer.bin: give --tokenizer PATH"
fi

TMP="$(mktemp -d)"; trap '[ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null; rm -rf "$TMP"' EXIT
ROWS="$TMP/rows"; : > "$ROWS"

# row ENGINE MODEL FORMAT THREADS PP_CELL TG_CELL, + an "other" column: the
# mean number of runnable tasks in the kernel (/proc/stat procs_running, all
# containers) during the measurement, minus our own threads and the sampler.
# Clearly > 0 (say > 0.3) = something else competed for the 2 cores: the
# numbers of that row are suspect (multi-threaded ones most of all).
SAMPLER="" ; OTHER=""
# --wait-idle S: before each measurement wait (at most S seconds) until no
# other task has been runnable for 2 s, i.e. the 2 cores are free.
wait_idle() {
    [ "$WAIT_IDLE" -gt 0 ] || return 0
    local t0=$SECONDS i busy
    while :; do
        busy=0
        for i in 1 2 3 4 5 6 7 8; do
            [ "$(sed -n 's/^procs_running //p' /proc/stat)" -gt 1 ] && busy=1
            sleep 0.25
        done
        [ $busy = 0 ] && return 0
        if [ $((SECONDS - t0)) -ge "$WAIT_IDLE" ]; then log "machine still busy after ${WAIT_IDLE}s, measuring anyway"; return 0; fi
        sleep 3
    done
}
sampler_start() {  # sampler_start NTHREADS
    wait_idle
    SAMPLER_N="$1"; : > "$TMP/procs"
    ( while :; do sed -n 's/^procs_running //p' /proc/stat >> "$TMP/procs"; sleep 0.25; done ) &
    SAMPLER=$!
}
sampler_stop() {
    [ -n "$SAMPLER" ] && { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; }
    SAMPLER=""
    OTHER="$(awk -v n="$SAMPLER_N" '{ s += $1; c++ } END { if (c) printf "%.2f", s / c - n - 1; else print "?" }' "$TMP/procs")"
}
row() { printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$@" "$OTHER" >> "$ROWS"; }

# stats: reads numbers (one per line), prints "mean ± sd" (sample sd; 0 for n=1)
stats() {
    awk 'NF { x[n++] = $1; s += $1 }
         END { if (n == 0) { print "n/a"; exit }
               m = s / n; v = 0; for (i = 0; i < n; i++) v += (x[i] - m) ^ 2
               sd = (n > 1) ? sqrt(v / (n - 1)) : 0
               printf "%.2f ± %.2f\n", m, sd }'
}

runcmd() {  # runcmd OUTFILE ERRFILE cmd...   (with timeout; -v echoes output)
    local out="$1" err="$2"; shift 2
    timeout "$TIMEOUT" "$@" > "$out" 2> "$err"
    local rc=$?
    if [ "$VERBOSE" = 1 ]; then cat "$out" "$err" >&2; fi
    return $rc
}

# --------------------------------------------------------------------------
# llama.cpp: llama-bench -p PP -n TG -t N -r REPS, one call per model,
# all thread counts in one call; parses the markdown table it prints.
bench_llamacpp() {
    local shape="$1" q m n
    for q in $QUANTS; do
        m="$MODELS/$shape-$q.gguf"
        [ -f "$m" ] || { log "skip llama.cpp $shape $q: no $m"; continue; }
        for n in $THREADS; do
            log "llama.cpp $shape $q threads $n ..."
            sampler_start "$n"
            if ! runcmd "$TMP/lb.out" "$TMP/lb.err" "$LLAMA_BENCH" -m "$m" -p "$PP" -n "$TG" -t "$n" -r "$REPS" -o md; then
                sampler_stop
                log "llama-bench failed on $m:"; tail -5 "$TMP/lb.err" >&2
                row "llama.cpp" "$shape" "$q" "$n" "FAILED" "FAILED"; continue
            fi
            sampler_stop
            local build; build="$(grep -ho 'build: .*' "$TMP/lb.out" "$TMP/lb.err" | head -1)"
            [ -n "$build" ] && echo "$build" > "$TMP/llamacpp_build"
            # columns located by header name: threads, test, t/s
            awk -F'|' -v shape="$shape" -v q="$q" -v other="$OTHER" -v pp="pp$PP" -v tg="tg$TG" '
                function trim(s) { gsub(/^ +| +$/, "", s); return s }
                /^\| *-/ { next }
                /^\| *model/ { for (i = 1; i <= NF; i++) { h = trim($i); if (h == "threads") ct = i; if (h == "test") cx = i; if (h == "t/s") cs = i } next }
                /^\|/ && ct && cx && cs { t = trim($ct); x = trim($cx); v = trim($cs)
                    if (x == pp) P[t] = v; else if (x == tg) G[t] = v; if (!(t in seen)) { seen[t] = 1; order[no++] = t } }
                END { for (k = 0; k < no; k++) { t = order[k]
                        printf "| llama.cpp | %s | %s | %s | %s | %s | %s |\n", shape, q, t, (t in P) ? P[t] : "-", (t in G) ? G[t] : "-", other } }
            ' "$TMP/lb.out" >> "$ROWS"
        done
    done
}

# --------------------------------------------------------------------------
# llama2.c: BIN MODEL -z TOK -n TG+1 -t 0 -i "" ; "achieved tok/s: X" on stderr.
# (no prompt: the BOS token is forwarded, then TG tokens decoded; the timer
#  starts after the first forward, so X = decode tok/s over TG tokens)
bench_llama2c() {
    local label="$1" bin="$2" shape="$3" fmt="$4" m n r v
    m="$MODELS/$shape-$fmt.bin"
    [ -f "$m" ] || { log "skip $label $shape: no $m"; return; }
    for n in $THREADS; do
        log "$label $shape $fmt threads $n ..."
        : > "$TMP/vals"
        # one untimed warm-up run (page cache)
        OMP_NUM_THREADS="$n" runcmd "$TMP/l2.out" "$TMP/l2.err" "$bin" "$m" -z "$TOKENIZER" -n 8 -t 0 -i "" || true
        sampler_start "$n"
        for r in $(seq "$REPS"); do
            if OMP_NUM_THREADS="$n" runcmd "$TMP/l2.out" "$TMP/l2.err" "$bin" "$m" -z "$TOKENIZER" -n $((TG + 1)) -t 0 -i ""; then
                v="$(sed -n 's/^achieved tok\/s: *\([0-9.eE+-]*\).*/\1/p' "$TMP/l2.err" | tail -1)"
                [ -n "$v" ] && echo "$v" >> "$TMP/vals" || { log "$label: no 'achieved tok/s' line"; tail -3 "$TMP/l2.err" >&2; }
            else
                log "$label failed on $m:"; tail -3 "$TMP/l2.err" >&2
            fi
        done
        sampler_stop
        row "$label" "$shape" "$fmt" "$n" "-" "$(stats < "$TMP/vals")"
    done
}

# --------------------------------------------------------------------------
# HOOK: our engine. ============================================================
# CLI:  ./run MODEL.bin -p TEXT -n N -t 0 --threads N
# stderr must contain a line like
#   prompt: 512 tokens, 123.4 tok/s | generated: 128 tokens, 45.6 tok/s
# The prompt is "hello" repeated PP-1 times (one SentencePiece token each with
# the Llama vocabulary, + BOS = PP tokens); the token counts actually reported
# are shown in the table when they differ from PP / TG.
# Adjust this function if the CLI or the stats line changes.
bench_ours() {
    local shape="$1" fmt m n r line prompt np ng
    prompt="$(yes hello | head -n $((PP - 1)) | tr '\n' ' ' | sed 's/ $//')"
    for fmt in $OURS_FORMATS; do
        m="$MODELS/$shape-run-$fmt.bin"
        [ -f "$m" ] || { log "skip ours $shape $fmt: no $m"; continue; }
        for n in $THREADS; do
            log "ours $shape $fmt threads $n ..."
            : > "$TMP/ppv"; : > "$TMP/tgv"; np=""; ng=""
            runcmd "$TMP/o.out" "$TMP/o.err" "$OURS" "$m" -p "hello" -n 8 -t 0 --threads "$n" || true  # warm-up
            sampler_start "$n"
            for r in $(seq "$REPS"); do
                if ! runcmd "$TMP/o.out" "$TMP/o.err" "$OURS" "$m" -p "$prompt" -n "$TG" -t 0 --threads "$n"; then
                    log "ours failed on $m (threads $n):"; tail -3 "$TMP/o.err" >&2; continue
                fi
                line="$(grep -E 'prompt: *[0-9]+ tokens, *[0-9.]+ tok/s *\| *generated: *[0-9]+ tokens, *[0-9.]+ tok/s' "$TMP/o.err" | tail -1)"
                if [ -z "$line" ]; then log "ours: no stats line on stderr"; tail -3 "$TMP/o.err" >&2; continue; fi
                np="$(echo "$line" | sed -E 's/.*prompt: *([0-9]+) tokens.*/\1/')"
                ng="$(echo "$line" | sed -E 's/.*generated: *([0-9]+) tokens.*/\1/')"
                echo "$line" | sed -E 's/.*prompt: *[0-9]+ tokens, *([0-9.]+) tok\/s.*/\1/' >> "$TMP/ppv"
                echo "$line" | sed -E 's/.*generated: *[0-9]+ tokens, *([0-9.]+) tok\/s.*/\1/' >> "$TMP/tgv"
            done
            sampler_stop
            local ppc tgc
            ppc="$(stats < "$TMP/ppv")"; tgc="$(stats < "$TMP/tgv")"
            [ -n "$np" ] && [ "$np" != "$PP" ] && ppc="$ppc (pp$np)"
            [ -n "$ng" ] && [ "$ng" != "$TG" ] && tgc="$tgc (tg$ng)"
            row "ours" "$shape" "$fmt" "$n" "$ppc" "$tgc"
        done
    done
}
# ==============================================================================

for shape in $SHAPES; do
    [ -n "$OURS" ]        && bench_ours "$shape"
    [ -n "$LLAMA_BENCH" ] && bench_llamacpp "$shape"
    [ -n "$L2C_RUN" ]     && bench_llama2c "llama2.c $(basename "$L2C_RUN")" "$L2C_RUN" "$shape" v0
    [ -n "$L2C_RUNQ" ]    && bench_llama2c "llama2.c $(basename "$L2C_RUNQ")" "$L2C_RUNQ" "$shape" v2
done

# ---------------------------------------------------------------------------
cpu="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')"
echo "CPU: ${cpu:-?}, $(nproc) cores visible; load average at end: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')"
[ -f "$TMP/llamacpp_build" ] && echo "llama.cpp $(cat "$TMP/llamacpp_build")"
for n in "${NOTES[@]+"${NOTES[@]}"}"; do echo "$n"; done
echo "other = mean runnable tasks besides this benchmark during the row (> ~0.3: contended, suspect)"
echo "pp = prompt of $PP tokens, tg = $TG generated tokens, tok/s, mean ± sd over $REPS runs"
echo
echo "| engine | model | format | threads | pp$PP tok/s | tg$TG tok/s | other |"
echo "|---|---|---|---:|---:|---:|---:|"
cat "$ROWS"
