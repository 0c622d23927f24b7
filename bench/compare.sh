#!/usr/bin/env bash
# Side-by-side CPU benchmark: our ./run against llama.cpp's llama-bench,
# ik_llama.cpp's llama-bench and llama2.c's run / runq, interleaved on the
# same shapes, weight types and
# thread counts, with the machine's memory read bandwidth measured in the same
# run; then two special rows: long-context decode and NBCE.
#
# It builds none of the peers and fetches nothing: pass the paths of their
# binaries, built from their own sources outside this repository. It compiles
# bench/bandwidth.c (ours) with cc into its temporary folder.
#
# Usage:
#   bench/compare.sh --models DIR [--llama-bench PATH] [--ik-llama-bench PATH]
#                    [--llama2c-run PATH] [--llama2c-runq PATH] [--ours PATH] [options]
#
#   --models DIR       the model files, named by shape:
#                        SHAPE-{f32,f16,q8_0,q4_0}.gguf   llama.cpp (llama-bench)
#                        SHAPE-run-{f32,f16,q8_0,q4_0}.bin  ours (./export SHAPE-v0.bin ... --quant TYPE)
#                        SHAPE-v0.bin  llama2.c run (f32)   SHAPE-v2.bin  llama2.c runq (int8, groups of 64)
#                        SHAPE-{Q4_K_M,Q6_K,Q4_0}.gguf   --gguf-types: the same file through every engine
#                      missing files are skipped (see README "Benchmarks" for the commands)
#   --llama-bench PATH llama.cpp's llama-bench, --ik-llama-bench PATH ik_llama.cpp's (each run
#                      with LD_LIBRARY_PATH led by its own folder, for .so files beside it)
#   --llama2c-run PATH, --llama2c-runq PATH   llama2.c's run and runq (e.g. run_omp, runq_omp)
#   --ours PATH        our engine (default: ./run of this repository)
#   --shapes "A B"     shapes (default "stories110m tinyllama")
#   --types "..."      weight types (default "f32 f16 q8_0 q4_0"); llama2.c's run counts as
#                      f32, its runq as q8_0 (int8 with an f32 scale per 64: 1.0625 bytes a
#                      weight, as q8_0), and its ratios are to llama.cpp's row of that type
#   --gguf-types "..." GGUF files (llama-quantize's type names) that llama.cpp, ik_llama.cpp and
#                      ours all run, file for file (default "Q4_K_M Q6_K Q4_0"; "" = none)
#   --threads "2"      thread counts (default "2")
#   --reps N           interleaved repetitions, the table shows medians (default 3)
#   --pp N, --tg N     prompt and decode lengths (default 512 and 128)
#   --skip-pp "S:T .." no prefill for these shape:type pairs (default "tinyllama:f32": slow
#                      and not a target); "" = measure all
#   --no-long, --no-nbce   leave out the special rows
#   --long-model PATH  long-context model (default DIR/tinyllama-4k-run-q4_0.bin: the
#                      TinyLlama shape, 4 KV heads, made with bench/mkmodel.py --seq-len 4096)
#   --long-ctx N       the context reached by the last decoded token (default 4096)
#   --long-tg N        tokens decoded in the long-context runs (default 32)
#   --nbce-model PATH  NBCE model (default DIR/stories110m-run-q4_0.bin)
#   --nbce-contexts N  contexts of the NBCE step (default 16); one row alone is the reference
#   --assets DIR       shared assets for bench/nbce.sh (default: ../shared/assets)
#   --tokenizer PATH   llama2.c's tokenizer.bin (default: the shared assets' copy)
#   --wait-idle S      before each measurement wait up to S s for the other tasks to stop (default 0)
#   --timeout S        per-command timeout (default 900)
#   --note TEXT        a line printed under the tables (peer commits, build flags); repeatable
#   -v                 every command's output on stderr
#
# Output: markdown tables on stdout, progress on stderr. Timing is never part of
# `make test`.
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
LLAMA_BENCH="" ; IK_BENCH="" ; GGUF_TYPES="Q4_K_M Q6_K Q4_0" ; L2C_RUN="" ; L2C_RUNQ="" ; OURS="$REPO/run" ; MODELS=""
SHAPES="stories110m tinyllama" ; TYPES="f32 f16 q8_0 q4_0" ; THREADS="2" ; REPS=3 ; PP=512 ; TG=128
SKIP_PP="tinyllama:f32" ; DO_LONG=1 ; DO_NBCE=1 ; LONG_MODEL="" ; LONG_CTX=4096 ; LONG_TG=32 ; LONG_SHORT=64
NBCE_MODEL="" ; NBCE_C=16 ; ASSETS="" ; TOKENIZER="" ; WAIT_IDLE=0 ; TIMEOUT=900 ; VERBOSE=0 ; NOTES=()
BW_MB=512 ; BW_SAMPLES=5

die() { echo "compare.sh: $*" >&2; exit 2; }
log() { echo "# [$(date -u +%H:%M:%S)] $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --models)        MODELS="$2"; shift 2 ;;
        --llama-bench)   LLAMA_BENCH="$2"; shift 2 ;;
        --ik-llama-bench) IK_BENCH="$2"; shift 2 ;;
        --gguf-types)    GGUF_TYPES="$2"; shift 2 ;;
        --llama2c-run)   L2C_RUN="$2"; shift 2 ;;
        --llama2c-runq)  L2C_RUNQ="$2"; shift 2 ;;
        --ours)          OURS="$2"; shift 2 ;;
        --shapes)        SHAPES="$2"; shift 2 ;;
        --types)         TYPES="$2"; shift 2 ;;
        --threads)       THREADS="$2"; shift 2 ;;
        --reps)          REPS="$2"; shift 2 ;;
        --pp)            PP="$2"; shift 2 ;;
        --tg)            TG="$2"; shift 2 ;;
        --skip-pp)       SKIP_PP="$2"; shift 2 ;;
        --no-long)       DO_LONG=0; shift ;;
        --no-nbce)       DO_NBCE=0; shift ;;
        --long-model)    LONG_MODEL="$2"; shift 2 ;;
        --long-ctx)      LONG_CTX="$2"; shift 2 ;;
        --long-tg)       LONG_TG="$2"; shift 2 ;;
        --nbce-model)    NBCE_MODEL="$2"; shift 2 ;;
        --nbce-contexts) NBCE_C="$2"; shift 2 ;;
        --assets)        ASSETS="$2"; shift 2 ;;
        --tokenizer)     TOKENIZER="$2"; shift 2 ;;
        --wait-idle)     WAIT_IDLE="$2"; shift 2 ;;
        --timeout)       TIMEOUT="$2"; shift 2 ;;
        --note)          NOTES+=("$2"); shift 2 ;;
        -v)              VERBOSE=1; shift ;;
        -h|--help)       sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[ -n "$MODELS" ] || die "--models DIR is required (see --help)"
[ -d "$MODELS" ] || die "no such directory: $MODELS"
for b in "$LLAMA_BENCH" "$IK_BENCH" "$L2C_RUN" "$L2C_RUNQ" "$OURS"; do
    [ -z "$b" ] || [ -x "$b" ] || die "not an executable: $b"
done
[ -x "$OURS" ] || die "no engine binary $OURS (make run, or --ours PATH)"
OURS_VERSION="$(git -C "$(dirname "$OURS")" rev-parse --short HEAD 2>/dev/null)$(git -C "$(dirname "$OURS")" diff --quiet HEAD -- '*.c' '*.h' 2>/dev/null || echo ' + uncommitted changes')"
[ -n "$LLAMA_BENCH" ] || log "no --llama-bench: the ratio columns stay empty"
[ -n "$LONG_MODEL" ] || LONG_MODEL="$MODELS/tinyllama-4k-run-q4_0.bin"
[ -n "$NBCE_MODEL" ] || NBCE_MODEL="$MODELS/stories110m-run-q4_0.bin"
if [ -z "$ASSETS" ]; then
    for a in "$REPO/../shared/assets" "$REPO/shared/assets" /work/shared/assets; do [ -d "$a" ] && { ASSETS="$a"; break; }; done
fi
if [ -z "$TOKENIZER" ] && [ -n "$ASSETS" ] && [ -f "$ASSETS/llama2c/tokenizer.bin" ]; then TOKENIZER="$ASSETS/llama2c/tokenizer.bin"; fi
if [ -n "$L2C_RUN$L2C_RUNQ" ] && [ ! -f "$TOKENIZER" ]; then die "llama2.c needs a tokenizer.bin: --tokenizer PATH"; fi

TMP="$(mktemp -d)"
SAMPLER=""
trap '[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; rm -rf "$TMP"' EXIT
D="$TMP/d"; mkdir -p "$D"
T_START=$SECONDS
# a copy of the engine, so that a rebuild in the repository during the run changes nothing
cp "$OURS" "$TMP/run" || die "cannot copy $OURS"; OURS="$TMP/run"

cc -O2 -march=native -pthread -o "$TMP/bandwidth" "$HERE/bandwidth.c" 2> "$TMP/cc.err" ||
    cc -O2 -pthread -o "$TMP/bandwidth" "$HERE/bandwidth.c" 2>> "$TMP/cc.err" ||
    { cat "$TMP/cc.err" >&2; die "cannot compile bench/bandwidth.c"; }

median() { sort -g | awk 'NF { x[n++] = $1 } END { if (n == 0) print ""; else if (n % 2) print x[(n - 1) / 2]; else print (x[n / 2 - 1] + x[n / 2]) / 2 }'; }
mean() { awk 'NF { s += $1; n++ } END { if (n) printf "%.2f\n", s / n }'; }
med() { [ -s "$D/$1" ] && median < "$D/$1"; }  # med FILE: the median of a value file, empty if none

runcmd() {  # runcmd OUT ERR cmd...: with the timeout; -v echoes the output
    local out="$1" err="$2"; shift 2
    timeout "$TIMEOUT" "$@" > "$out" 2> "$err"
    local rc=$?
    [ "$VERBOSE" = 1 ] && { echo "\$ $*" >&2; tail -c 2000 "$out" >&2; tail -c 2000 "$err" >&2; }
    return $rc
}

# ---------------------------------------------------------------------------
# Load: "other" = the mean number of runnable tasks (/proc/stat procs_running,
# sampled every 0.25 s) during a measurement, minus the benchmark's own threads
# and the sampler. Clearly above 0 (say > 0.3): something else had the cores
# and the row is suspect. Short single-threaded phases (loading) pull it below 0.
# wait_idle: the CPUs' busy share over half a second, from /proc/stat's
# jiffies (not procs_running, which counts the probe's own shell and sed as
# runnable, so on 2 cores it never looked idle); idle = less than a quarter
# of one core busy, four probes in a row.
cpu_busy_permille() {
    local a b i idle total=0
    read -r -a a < <(sed -n 's/^cpu  //p' /proc/stat); sleep 0.5
    read -r -a b < <(sed -n 's/^cpu  //p' /proc/stat)
    idle=$(( b[3] + b[4] - a[3] - a[4] ))  # idle, iowait
    for i in 0 1 2 3 4 5 6 7; do total=$(( total + b[i] - a[i] )); done
    echo $(( total > 0 ? 1000 * (total - idle) / total : 0 ))
}
wait_idle() {
    [ "$WAIT_IDLE" -gt 0 ] || return 0
    local t0=$SECONDS quiet=0 limit=$(( 250 / $(nproc) ))
    while [ $quiet -lt 4 ]; do
        if [ "$(cpu_busy_permille)" -le "$limit" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        [ $((SECONDS - t0)) -ge "$WAIT_IDLE" ] && { log "still busy after ${WAIT_IDLE}s, measuring anyway"; return 0; }
    done
}
sampler_start() {  # sampler_start NTHREADS
    wait_idle
    SAMPLER_N="$1"; : > "$TMP/procs"
    ( while :; do sed -n 's/^procs_running //p' /proc/stat >> "$TMP/procs"; sleep 0.25; done ) &
    SAMPLER=$!
}
sampler_stop() {  # sampler_stop FILE: appends this measurement's "other" to FILE
    [ -n "$SAMPLER" ] && { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; }
    SAMPLER=""
    awk -v n="$SAMPLER_N" '{ s += $1; c++ } END { if (c) printf "%.2f\n", s / c - n - 1 }' "$TMP/procs" >> "$1"
}

bw_sample() {  # bw_sample THREADS FILE...: one bandwidth measurement (median of its passes), GB/s
    local v f
    v="$("$TMP/bandwidth" --threads "$1" --mb "$BW_MB" --samples "$BW_SAMPLES" --quiet 2>/dev/null)" || return 0
    shift
    for f in "$@"; do echo "$v" >> "$D/$f"; done
}

# prompt N: "hello" N-1 times, which with BOS is N tokens for the Llama vocabulary
prompt() { yes hello | head -n $(($1 - 1)) | paste -sd' '; }
PROMPT_PP="$(prompt "$PP")"

jfield() { tail -1 "$1" | sed -nE "s/.*\"$2\": ([0-9.eE+-]+).*/\1/p"; }

# ---------------------------------------------------------------------------
# One repetition of each engine. KEY names the row; values go to $D/KEY.{pp,tg,other}.

# llama.cpp and ik_llama.cpp: llama-bench -r 1 with their default settings (their own
# warm-up runs first: a full pp, one gen token), JSON (one field a line in both forks);
# pp = the n_prompt=PP test, tg = the n_gen=TG test (from an empty cache).
m_llamacpp() {  # KEY GGUF THREADS DOPP BINARY [EXTRA llama-bench ARGS]
    local key="$1" m="$2" n="$3" p=0 bin="$5"; shift 5
    [ "$4" = 1 ] && p="$PP"
    sampler_start "$n"
    # each fork's .so files beside its binary come first (the two forks' libllama.so differ)
    if ! runcmd "$TMP/lb.out" "$TMP/lb.err" env LD_LIBRARY_PATH="$(cd "$(dirname "$bin")" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$bin" -m "$m" -p "$p" -n "$TG" -t "$n" -r 1 -o json "$@"; then
        sampler_stop "$D/$key.other"; log "$bin failed on $m:"; tail -5 "$TMP/lb.err" >&2; return
    fi
    sampler_stop "$D/$key.other"
    tr -d ',' < "$TMP/lb.out" | awk '$1 == "\"n_prompt\":" { np = $2 } $1 == "\"n_gen\":" { ng = $2 } $1 == "\"avg_ts\":" { print np, ng, $2 }' |
        while read -r np ng ts; do
            if [ "$np" = "$PP" ] && [ "$ng" = 0 ]; then echo "$ts" >> "$D/$key.pp"
            elif [ "$np" = 0 ] && [ "$ng" = "$TG" ]; then echo "$ts" >> "$D/$key.tg"; fi
        done
}

# ours: prefill = a PP-token prompt with -n 1 (prefill_tok_s); decode = TG tokens from
# an empty context (BOS only), as llama-bench's tg and llama2.c do (decode_tok_s).
m_ours() {  # KEY MODEL THREADS DOPP [EXTRA ARGS]
    local key="$1" m="$2" n="$3" dopp="$4" v; shift 4
    sampler_start "$n"
    if [ "$dopp" = 1 ]; then
        if runcmd "$TMP/o.out" "$TMP/o.err" "$OURS" "$m" -p "$PROMPT_PP" -n 1 -t 0 --ignore-eos --json --threads "$n" "$@"; then
            v="$(jfield "$TMP/o.out" prompt_tokens)"
            [ "$v" = "$PP" ] || log "ours: the prompt took $v tokens, not $PP"
            jfield "$TMP/o.out" prefill_tok_s >> "$D/$key.pp"
        else log "ours failed on $m:"; tail -3 "$TMP/o.err" >&2; fi
    fi
    if runcmd "$TMP/o.out" "$TMP/o.err" "$OURS" "$m" -p "" -n "$TG" -t 0 --ignore-eos --json --threads "$n" "$@"; then
        v="$(jfield "$TMP/o.out" generated_tokens)"
        [ "$v" = "$TG" ] || log "ours: generated $v tokens, not $TG"
        jfield "$TMP/o.out" decode_tok_s >> "$D/$key.tg"
    else log "ours failed on $m:"; tail -3 "$TMP/o.err" >&2; fi
    sampler_stop "$D/$key.other"
}

# llama2.c: BIN MODEL -z TOK -n TG+1 -t 0 -i "": BOS is forwarded, then TG tokens are
# decoded; "achieved tok/s" on stderr is timed from after the first forward.
m_l2c() {  # KEY BIN MODEL THREADS
    local key="$1" bin="$2" m="$3" n="$4" v
    sampler_start "$n"
    if OMP_NUM_THREADS="$n" runcmd "$TMP/l2.out" "$TMP/l2.err" "$bin" "$m" -z "$TOKENIZER" -n $((TG + 1)) -t 0 -i ""; then
        v="$(sed -n 's/^achieved tok\/s: *\([0-9.eE+-]*\).*/\1/p' "$TMP/l2.err" | tail -1)"
        [ -n "$v" ] && echo "$v" >> "$D/$key.tg" || { log "$bin: no 'achieved tok/s' line"; tail -3 "$TMP/l2.err" >&2; }
    else log "$bin failed on $m:"; tail -3 "$TMP/l2.err" >&2; fi
    sampler_stop "$D/$key.other"
}

# ---------------------------------------------------------------------------
# Shapes from our engine's --verbose line:
#   model: dim D, L layers, H heads (K KV heads, head dim HD), hidden F, vocab V, trained context C
shape_of() {  # shape_of MODEL -> "D L H K HD F V C"
    "$OURS" "$1" --verbose -p "" -n 1 -t 0 --threads 1 2>&1 >/dev/null |
        sed -nE 's/^model: dim ([0-9]+), ([0-9]+) layers, ([0-9]+) heads \(([0-9]+) KV heads, head dim ([0-9]+)\), hidden ([0-9]+), vocab ([0-9]+), trained context ([0-9]+).*/\1 \2 \3 \4 \5 \6 \7 \8/p'
}
# Bytes a decode step reads: every layer matrix (q, k, v, o, gate, up, down) and the
# classifier, once, at the type's bytes per weight; norms, the embedding row and the KV
# cache are left out (the cache: see the note under the table).
BPW_f32=4 ; BPW_f16=2 ; BPW_bf16=2 ; BPW_q8_0=1.0625 ; BPW_q4_0=0.5625
BPW_q4_k=0.5625 ; BPW_q5_k=0.6875 ; BPW_q6_k=0.8203125 ; BPW_q2_k=0.328125 ; BPW_q3_k=0.4296875
step_bytes() {  # step_bytes "SHAPE" TYPE
    local bpw="BPW_$2"
    echo "$1" | awk -v b="${!bpw:-0}" '{ d = $1; L = $2; h = $3; k = $4; hd = $5; f = $6; v = $7
        printf "%.0f\n", (L * (2 * d * h * hd + 2 * d * k * hd + 3 * d * f) + v * d) * b }'
}
# A GGUF file's mixes have no single bytes per weight: the mapped weights (our --verbose
# line "weights: M MiB mapped (EMBEDDING TYPE)") less the embedding, of which a step reads one row.
gguf_step_bytes() {  # gguf_step_bytes "SHAPE" GGUF
    local line bpw
    line="$("$OURS" "$2" --verbose -p "" -n 1 -t 0 --threads 1 2>&1 >/dev/null | sed -nE 's/^weights: ([0-9.]+) MiB mapped \(([a-z0-9_]+)\).*/\1 \2/p')"
    bpw="BPW_${line#* }"
    echo "$1" | awk -v m="${line%% *}" -v b="${!bpw:-0}" '{ printf "%.0f\n", m * 1048576 - $7 * $1 * b }'
}
is_gguf_type() { case " $GGUF_TYPES " in *" $1 "*) return 0 ;; esac; return 1; }

pp_on() {  # pp_on SHAPE TYPE: 1 unless in --skip-pp
    local s
    for s in $SKIP_PP; do [ "$s" = "$1:$2" ] && { echo 0; return; }; done
    echo 1
}

# ---------------------------------------------------------------------------
# The main table: for every shape, type and thread count, REPS rounds; each round runs every
# engine once, the engines' order rotating from round to round, with a bandwidth sample
# before each engine's run.
ROWKEYS=()
for shape in $SHAPES; do
    SH=""
    for f in "$MODELS/$shape"-run-{f32,f16,q8_0,q4_0}.bin; do [ -f "$f" ] && { SH="$(shape_of "$f")"; break; }; done
    for t in $GGUF_TYPES; do [ -z "$SH" ] && [ -f "$MODELS/$shape-$t.gguf" ] && SH="$(shape_of "$MODELS/$shape-$t.gguf")"; done
    [ -n "$SH" ] || { log "skip $shape: no $MODELS/$shape-run-TYPE.bin or GGUF file to read its shape from"; continue; }
    echo "$SH" > "$D/shape_$shape"
    for type in $TYPES $GGUF_TYPES; do
        for n in $THREADS; do
            dopp="$(pp_on "$shape" "$type")"
            E=()   # "KEY|kind|args..."
            g="$MODELS/$shape-$type.gguf" ; o="$MODELS/$shape-run-$type.bin"
            is_gguf_type "$type" && o="$g"   # the same file for every engine
            [ -n "$LLAMA_BENCH" ] && [ -f "$g" ] && E+=("$shape|$type|$n|llama.cpp")
            is_gguf_type "$type" && [ -n "$IK_BENCH" ] && [ -f "$g" ] && E+=("$shape|$type|$n|ik_llama.cpp")
            [ -f "$o" ] && E+=("$shape|$type|$n|ours")
            [ -f "$o" ] && { [ "$type" = q8_0 ] || [ "$type" = q4_0 ]; } && E+=("$shape|$type|$n|ours, no repack")
            [ "$type" = f32 ] && [ -n "$L2C_RUN" ] && [ -f "$MODELS/$shape-v0.bin" ] && E+=("$shape|$type|$n|llama2.c $(basename "$L2C_RUN")")
            [ "$type" = q8_0 ] && [ -n "$L2C_RUNQ" ] && [ -f "$MODELS/$shape-v2.bin" ] && E+=("$shape|$type|$n|llama2.c $(basename "$L2C_RUNQ")")
            [ ${#E[@]} -gt 0 ] || { log "skip $shape $type: no model files"; continue; }
            ROWKEYS+=("${E[@]}")
            if is_gguf_type "$type"; then gguf_step_bytes "$SH" "$g" > "$D/bytes_$shape-$type"; else step_bytes "$SH" "$type" > "$D/bytes_$shape-$type"; fi
            gid="$shape|$type|$n"
            # the group's files into the page cache (not timed)
            files=("$o"); [ -f "$g" ] && [ "$g" != "$o" ] && files+=("$g")
            [ "$type" = f32 ] && files+=("$MODELS/$shape-v0.bin"); [ "$type" = q8_0 ] && files+=("$MODELS/$shape-v2.bin")
            for f in "${files[@]}"; do [ -f "$f" ] && cat "$f" > /dev/null; done
            for rep in $(seq "$REPS"); do
                log "$shape $type, $n threads, round $rep/$REPS (elapsed $(( (SECONDS - T_START) / 60 ))m$(( (SECONDS - T_START) % 60 ))s)"
                k=$(( (rep - 1) % ${#E[@]} ))
                for i in $(seq 0 $((${#E[@]} - 1))); do
                    key="${E[$(( (i + k) % ${#E[@]} ))]}"
                    bw_sample "$n" "$gid.bw" "bw_all_$n"   # before every engine's run: the bandwidth swings
                    case "${key##*|}" in
                        llama.cpp)          m_llamacpp "$key" "$g" "$n" "$dopp" "$LLAMA_BENCH" ;;
                        ik_llama.cpp)       m_llamacpp "$key" "$g" "$n" "$dopp" "$IK_BENCH" -rtr 1 ;; # run-time repacking: its fastest CPU setting
                        ours)               m_ours "$key" "$o" "$n" "$dopp" ;;
                        "ours, no repack")  m_ours "$key" "$o" "$n" "$dopp" --no-repack ;;
                        "llama2.c $(basename "${L2C_RUN:-/-}")")  m_l2c "$key" "$L2C_RUN" "$MODELS/$shape-v0.bin" "$n" ;;
                        "llama2.c $(basename "${L2C_RUNQ:-/-}")") m_l2c "$key" "$L2C_RUNQ" "$MODELS/$shape-v2.bin" "$n" ;;
                    esac
                done
            done
        done
    done
done

# ---------------------------------------------------------------------------
# Long context: our decode of LONG_TG tokens after a LONG_SHORT-token prompt and after
# a (LONG_CTX - LONG_TG)-token one, interleaved, on a GQA model.
LONG_N="${THREADS##* }"
if [ "$DO_LONG" = 1 ]; then
    if [ ! -f "$LONG_MODEL" ]; then
        log "skip long context: no $LONG_MODEL (bench/mkmodel.py ... --shape tinyllama --seq-len $LONG_CTX, then ./export ... --quant q4_0)"
        DO_LONG=0
    else
        LSH="$(shape_of "$LONG_MODEL")"; echo "$LSH" > "$D/long_shape"
        LONG_TYPE="$(basename "$LONG_MODEL" .bin)"; LONG_TYPE="${LONG_TYPE##*-}"   # SHAPE-run-TYPE.bin
        LONG_P=$((LONG_CTX - LONG_TG)); LCTX_ARGS=()
        [ "$(echo "$LSH" | awk '{ print $8 }')" -lt "$LONG_CTX" ] && LCTX_ARGS=(--ctx "$LONG_CTX")
        P_SHORT="$(prompt "$LONG_SHORT")"; P_LONG="$(prompt "$LONG_P")"
        cat "$LONG_MODEL" > /dev/null
        for rep in $(seq "$REPS"); do
            order="short long"; [ $((rep % 2)) = 0 ] && order="long short"
            for which in $order; do
                log "long context: $which prompt, round $rep/$REPS (elapsed $(( (SECONDS - T_START) / 60 ))m$(( (SECONDS - T_START) % 60 ))s)"
                if [ "$which" = short ]; then P="$P_SHORT"; want=$LONG_SHORT; else P="$P_LONG"; want=$LONG_P; fi
                sampler_start "$LONG_N"
                if runcmd "$TMP/o.out" "$TMP/o.err" "$OURS" "$LONG_MODEL" -p "$P" -n "$LONG_TG" -t 0 --ignore-eos --json --threads "$LONG_N" "${LCTX_ARGS[@]+"${LCTX_ARGS[@]}"}"; then
                    [ "$(jfield "$TMP/o.out" prompt_tokens)" = "$want" ] || log "long context: the prompt took $(jfield "$TMP/o.out" prompt_tokens) tokens, not $want"
                    jfield "$TMP/o.out" decode_tok_s >> "$D/long_$which.tg"
                    jfield "$TMP/o.out" prefill_tok_s >> "$D/long_$which.pp"
                else log "ours failed on $LONG_MODEL:"; tail -3 "$TMP/o.err" >&2; fi
                sampler_stop "$D/long_$which.other"
            done
        done
    fi
fi

# ---------------------------------------------------------------------------
# NBCE: bench/nbce.sh with NBCE_C contexts: one decode step over all rows (the contexts
# and the unconditional row) against one row alone, its runs interleaved.
if [ "$DO_NBCE" = 1 ]; then
    if [ ! -f "$NBCE_MODEL" ]; then log "skip NBCE: no $NBCE_MODEL"; DO_NBCE=0
    elif [ -z "$ASSETS" ]; then log "skip NBCE: no shared assets folder (--assets DIR)"; DO_NBCE=0
    else
        log "NBCE: $NBCE_C contexts on $(basename "$NBCE_MODEL") (elapsed $(( (SECONDS - T_START) / 60 ))m$(( (SECONDS - T_START) % 60 ))s)"
        sampler_start "$LONG_N"
        RUN="$OURS" runcmd "$TMP/nbce.out" "$TMP/nbce.err" "$HERE/nbce.sh" "$NBCE_MODEL" --threads "$LONG_N" \
            --contexts "$NBCE_C" --reps "$REPS" --assets "$ASSETS" || { log "bench/nbce.sh failed:"; tail -5 "$TMP/nbce.err" >&2; DO_NBCE=0; }
        sampler_stop "$D/nbce.other"
    fi
fi

# ---------------------------------------------------------------------------
# Tables.
fmt() { [ -n "$1" ] && printf "%.${2:-1}f" "$1" || printf -- "-"; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' || printf -- "-"; }
cpu="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')"
flags=""; for f in avx2 avx512f avx512_vnni avx512_bf16; do grep -qw "$f" /proc/cpuinfo 2>/dev/null && flags="$flags $f"; done
echo "Machine: ${cpu:-?} (${flags# }), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); ours at ${OURS_VERSION:-?}; $(( (SECONDS - T_START) / 60 )) min."
for n in $THREADS; do
    [ -s "$D/bw_all_$n" ] && echo "Read bandwidth, $n threads: median $(fmt "$(med "bw_all_$n")") GB/s over $(wc -l < "$D/bw_all_$n") samples (min $(fmt "$(sort -g "$D/bw_all_$n" | head -1)"), max $(fmt "$(sort -g "$D/bw_all_$n" | tail -1)"))."
done
echo
echo "| engine | model | weights | threads | pp$PP tok/s | pp vs llama.cpp | pp vs ik | tg$TG tok/s | tg vs llama.cpp | tg vs ik | read GB/s | MB/step | bound tok/s | tg/bound | other |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for key in "${ROWKEYS[@]+"${ROWKEYS[@]}"}"; do
    IFS='|' read -r shape type n eng <<< "$key"
    gid="$shape|$type|$n"; wt="$type"; rtype="$type"
    case "$eng" in "llama2.c $(basename "${L2C_RUNQ:-/-}")") wt="int8/64" ;; esac
    pp="$(med "$key.pp")"; tg="$(med "$key.tg")"
    lpp="$(med "$shape|$rtype|$n|llama.cpp.pp")"; ltg="$(med "$shape|$rtype|$n|llama.cpp.tg")"
    ipp="$(med "$shape|$rtype|$n|ik_llama.cpp.pp")"; itg="$(med "$shape|$rtype|$n|ik_llama.cpp.tg")"
    bw="$(med "$gid.bw")"; bytes="$(cat "$D/bytes_$shape-$type")"
    bound=""; [ -n "$bw" ] && bound="$(awk -v g="$bw" -v b="$bytes" 'BEGIN { print g * 1e9 / b }')"
    other="$( [ -s "$D/$key.other" ] && mean < "$D/$key.other")"
    if [ "$eng" = llama.cpp ]; then rp="$( [ -n "$pp" ] && echo 1.00 || echo -)"; rt="$( [ -n "$tg" ] && echo 1.00 || echo -)"
    else rp="$(ratio "$pp" "$lpp")"; rt="$(ratio "$tg" "$ltg")"; fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$eng" "$shape" "$wt" "$n" \
        "$(fmt "$pp")" "$rp" "$(ratio "$pp" "$ipp")" "$(fmt "$tg")" "$rt" "$(ratio "$tg" "$itg")" "$(fmt "$bw")" "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')" \
        "$(fmt "$bound")" "$(ratio "$tg" "$bound")" "${other:--}"
done
echo
echo "Medians of $REPS interleaved rounds (engine order rotating). pp$PP: a $PP-token prompt prefilled as one batch;"
echo "tg$TG: $TG tokens decoded one at a time from an empty context (llama-bench's tg; ours after BOS with \`-p \"\" --json\`;"
echo "llama2.c's \"achieved tok/s\", which has no batched prefill). Ratios are to llama.cpp's row of the same model, weights"
echo "and threads; llama2.c runq's int8 with an f32 scale per 64 weights (1.0625 bytes a weight, as q8_0) is set against q8_0."
echo "\"vs ik\": to ik_llama.cpp's row of the same GGUF file. The GGUF rows (--gguf-types) run one file through every engine."
echo "Both llama-benches run with their defaults; ik_llama.cpp also with -rtr 1 (run-time repacking, its fastest CPU setting; flash attention is on by default there)."
echo "read GB/s: bench/bandwidth.c ($BW_MB MiB read sequentially by the row's threads, median of $BW_SAMPLES passes) sampled before"
echo "every engine's run; the median of the samples taken for the rows of the same model, weights and threads."
echo "MB/step: the weights a decode step reads (every layer matrix and the classifier at the"
echo "type's bytes per weight: f32 4, f16 2, q8_0 1.0625, q4_0 0.5625; for the GGUF files of --gguf-types, whose mixes"
echo "differ by tensor: the file's weights less the embedding). The KV cache is not counted: at the last of tg$TG's"
kvs=""; for shape in $SHAPES; do [ -f "$D/shape_$shape" ] && kvs="$kvs, $(awk -v t="$TG" -v s="$shape" '{ printf "%s %.1f MB", s, $2 * 2 * $4 * $5 * 2 * t / 1e6 }' "$D/shape_$shape")"; done
echo "steps it holds${kvs#,} in f16 (ours and llama.cpp by default; llama2.c keeps f32, twice that), half that on average."
echo "bound tok/s = read GB/s / MB/step; tg/bound = decode as a fraction of it. other: mean runnable tasks besides the benchmark"
echo "during the row's runs (above ~0.3 something else had the cores: the row is suspect)."
for s in $SKIP_PP; do case " $SHAPES " in *" ${s%%:*} "*) echo "No prefill for ${s/:/ } (--skip-pp): slow, and not one of the targets.";; esac; done

if [ "$DO_LONG" = 1 ] && [ -s "$D/long_short.tg" ]; then
    read -r d L h k hd f v c < "$D/long_shape"
    s_tg="$(med long_short.tg)"; l_tg="$(med long_long.tg)"
    echo
    echo "Long context: $(basename "$LONG_MODEL") (dim $d, $L layers, $h heads, $k KV heads, trained context $c$([ ${#LCTX_ARGS[@]} -gt 0 ] && echo ", --ctx $LONG_CTX")), $LONG_N threads, $LONG_TG tokens decoded after the prompt, medians of $REPS interleaved runs."
    echo
    echo "| prompt tokens | decoded positions | decode tok/s | ms/token | cost vs $LONG_SHORT | prefill tok/s | other |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    for which in short long; do
        if [ "$which" = short ]; then np=$LONG_SHORT; else np=$LONG_P; fi
        tg="$(med "long_$which.tg")"
        printf '| %s | %s–%s | %s | %s | %s | %s | %s |\n' "$np" "$np" $((np + LONG_TG - 1)) "$(fmt "$tg" 2)" \
            "$( [ -n "$tg" ] && awk -v t="$tg" 'BEGIN { printf "%.2f", 1000 / t }' || echo -)" "$(ratio "$s_tg" "$tg")" \
            "$(fmt "$(med "long_$which.pp")")" "$(mean < "$D/long_$which.other")"
    done
    echo
    echo "cost vs $LONG_SHORT = ms/token over ms/token after the $LONG_SHORT-token prompt (the target: at most 1.3 at 4096)."
    awk -v t="$LONG_CTX" -v s="$LONG_SHORT" -v w="$(step_bytes "$(cat "$D/long_shape")" "$LONG_TYPE")" -v ty="$LONG_TYPE" '{ kv = $2 * 2 * $4 * $5 * 2
        printf "For scale: a step at position %d reads %.0f MB of f16 KV cache besides %.0f MB of %s weights, %.2fx the bytes of a step at %d.\n",
            t, kv * t / 1e6, w / 1e6, ty, (w + kv * t) / (w + kv * s), s }' "$D/long_shape"
fi

if [ "$DO_NBCE" = 1 ] && [ -s "$TMP/nbce.out" ]; then
    line="$(grep -E "^\| $NBCE_C \| " "$TMP/nbce.out" | head -1)"
    rows="$(echo "$line" | awk -F'|' '{ gsub(/ /, "", $3); print $3 }')"
    ptok="$(echo "$line" | awk -F'|' '{ gsub(/ /, "", $4); print $4 }')"
    nb="$(echo "$line" | awk -F'|' '{ gsub(/ /, "", $5); print $5 }')"
    one="$(sed -nE 's/.*one row alone: ([0-9.]+) ms\/token.*/\1/p' "$TMP/nbce.out" | head -1)"
    echo
    echo "NBCE: $(basename "$NBCE_MODEL") ($(shape_of "$NBCE_MODEL" | awk '{ printf "dim %s, %s layers, %s heads, %s KV heads", $1, $2, $3, $4 }')), $LONG_N threads, bench/nbce.sh --contexts $NBCE_C --reps $REPS (medians of interleaved runs, 32 tokens each)."
    echo
    echo "| contexts | rows | prompt tokens | NBCE ms/step | one row ms/step | ratio | other |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$NBCE_C" "${rows:--}" "${ptok:--}" "${nb:--}" "${one:--}" \
        "$(ratio "$nb" "$one")" "$(mean < "$D/nbce.other")"
    echo
    echo "One step decodes one token for every row (the $NBCE_C contexts and the unconditional one) as a batch; one row ms/step:"
    echo "plain generation of one context's row (a document and the question). Issue 7's target: ratio at most 3 for 16 rows at q4_0."
fi
echo
for n in "${NOTES[@]+"${NOTES[@]}"}"; do echo "$n"; done
exit 0
