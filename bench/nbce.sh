#!/usr/bin/env bash
# NBCE decode cost as the number of contexts grows (docs/BENCHMARKS.md): time per
# generated token with 1, 4, 16 and 64 contexts of about 256 tokens, all rows
# decoded as one batch per step, next to decoding the same rows one by one
# (plain generation, measured), and the total prefill throughput.
#
# Usage: bench/nbce.sh MODEL [-z TOKENIZER] [--threads N] [--assets DIR] [ASSETS_DIR]
#                      [--contexts "1 4 16 64"] [--tokens N] [--reps R] [--all-rows]
#   MODEL, -z      the model (-z FILE is passed to ./run as it is, for llama2.c checkpoints)
#   ASSETS_DIR     ../shared/assets by default (text/pg1342_pride_and_prejudice.txt is cut into documents)
#   --threads N    worker threads for every run (default: online cores)
#   --contexts L   the context counts (default "1 4 16 64")
#   --tokens N     tokens generated per run (default 32; -n N --ignore-eos -t 0)
#   --reps R       runs per measurement, interleaved; the table shows medians (default 3)
#   --all-rows     decode every row one by one for every context count (slow: 65 rows for 64
#                  contexts); by default rows 0-4 are, which covers 1 and 4 contexts, and larger
#                  counts use (C + 1) x the one-row cost, whose multiplication 1 and 4 check
#   RUN=path       the engine binary (default ./run); KEEP=1 keeps the work folder (mktemp)
# Prints a markdown table on stdout, progress on stderr. Takes ~5 minutes for a
# stories110M-shaped q8_0 model on 2 cores. Timing is never part of `make test`.
set -eu

usage() { sed -n '7,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 1; }

RUN=${RUN:-./run}
MODEL=""; ASSETS=../shared/assets; THREADS=""; CONTEXTS="1 4 16 64"; NGEN=32; REPS=3; ALL_ROWS=0
ZARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -z) [ $# -ge 2 ] || usage; ZARGS=(-z "$2"); shift 2 ;;
        --threads) [ $# -ge 2 ] || usage; THREADS=$2; shift 2 ;;
        --assets) [ $# -ge 2 ] || usage; ASSETS=$2; shift 2 ;;
        --contexts) [ $# -ge 2 ] || usage; CONTEXTS=$2; shift 2 ;;
        --tokens) [ $# -ge 2 ] || usage; NGEN=$2; shift 2 ;;
        --reps) [ $# -ge 2 ] || usage; REPS=$2; shift 2 ;;
        --all-rows) ALL_ROWS=1; shift ;;
        -h|--help) usage ;;
        -*) echo "error: unknown option $1" >&2; usage ;;
        *) if [ -z "$MODEL" ]; then MODEL=$1; else ASSETS=$1; fi; shift ;;
    esac
done
[ -n "$MODEL" ] || usage
[ -f "$MODEL" ] || { echo "error: no model file '$MODEL'" >&2; exit 1; }
[ -x "$RUN" ] || { echo "error: no engine binary '$RUN' (make, or RUN=path)" >&2; exit 1; }
THREADS=${THREADS:-$(nproc)}
TEXT="$ASSETS/text/pg1342_pride_and_prejudice.txt"
[ -f "$TEXT" ] || { echo "error: no text '$TEXT' (the assets folder is the first argument after the model)" >&2; exit 1; }
DOC_TOKENS=256       # tokens per document
TOL=3                # ... give or take
Q="Who is the story about?"
MAXC=0; for c in $CONTEXTS; do [ "$c" -gt "$MAXC" ] && MAXC=$c; done
ALL_FLAG=""; [ $ALL_ROWS = 0 ] || ALL_FLAG=" --all-rows"
COMMAND="bench/nbce.sh $MODEL${ZARGS[0]+ ${ZARGS[*]}} --threads $THREADS --contexts \"$CONTEXTS\" --tokens $NGEN --reps $REPS$ALL_FLAG $ASSETS"

T=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$T"' EXIT
log() { echo "nbce.sh: $*" >&2; }

# engine OUT ARGS...: runs ./run MODEL [-z ..] --threads N ARGS, stdout to $T/OUT.out, stderr to $T/OUT.err;
# stops the bench with the engine's stderr if it fails.
engine() {
    local out=$1; shift
    if ! "$RUN" "$MODEL" "${ZARGS[@]+"${ZARGS[@]}"}" --threads "$THREADS" "$@" > "$T/$out.out" 2> "$T/$out.err"; then
        log "the engine failed: $RUN $MODEL ${ZARGS[*]+${ZARGS[*]}} --threads $THREADS $*"
        tail -5 "$T/$out.err" >&2
        exit 1
    fi
}
field() { tail -1 "$T/$1.out" | sed -nE "s/.*\"$2\": ([0-9.]+).*/\1/p"; }
median() { sort -g | awk '{ x[n++] = $1 } END { if (n == 0) print "nan"; else if (n % 2) print x[(n - 1) / 2]; else print (x[n / 2 - 1] + x[n / 2]) / 2 }'; }

# ---- documents: consecutive pieces of the novel (from chapter 1), whole words joined by spaces,
# each cut so that it takes DOC_TOKENS tokens in its row, as the engine's --tokenize counts them:
# row i's length minus the unconditional row's (BOS, "\n\n" and the question).
start=$(grep -n -m1 'It is a truth universally acknowledged' "$TEXT" | cut -d: -f1 || true)
tail -n "+${start:-1}" "$TEXT" | tr -d '\r' | tr -s '[:space:]' '\n' | grep -v '^$' > "$T/words" || true
head -n 2000 "$T/words" | paste -sd' ' > "$T/probe.txt"
engine probe -f "$T/probe.txt" --tokenize
probe_tokens=$(awk -F', ' '{ print NF - 1 }' "$T/probe.out")
init=$(awk -v t="$probe_tokens" -v d="$DOC_TOKENS" 'BEGIN { printf "%d", d * 2000 / t + 0.5 }')
rowtokens() {  # rowtokens DOCFILE: the tokens of the row "DOC\n\nQ" (as --tokenize counts them, BOS included)
    { cat "$1"; printf '\n\n%s' "$Q"; } > "$T/row.txt"
    engine rowtok -f "$T/row.txt" --tokenize
    awk -F', ' '{ print NF }' "$T/rowtok.out"
}
printf '' > "$T/empty"
L0=$(rowtokens "$T/empty")
log "cutting $MAXC documents of $DOC_TOKENS tokens from $(basename "$TEXT") ..."
# One document after the other, each from where the last one ended: its number of words is searched
# between a count that gives too few tokens and one that gives too many; when one word separates
# them (a word of many tokens at the end), the nearer of the two is taken.
mkdir -p "$T/all"
pos=0
for i in $(seq 0 $((MAXC - 1))); do
    doc="$T/all/$(printf 'doc%02d.txt' "$i")"
    n=$init; lo_n=0; hi_n=0; best_n=0; best_e=1000000
    while :; do
        sed -n "$((pos + 1)),$((pos + n))p;$((pos + n))q" "$T/words" | paste -sd' ' | tr -d '\n' > "$doc"
        [ "$(wc -w < "$doc")" -eq "$n" ] || { log "the text is too short for $MAXC documents"; exit 1; }
        t=$(($(rowtokens "$doc") - L0)); e=$((t > DOC_TOKENS ? t - DOC_TOKENS : DOC_TOKENS - t))
        [ "$e" -lt "$best_e" ] && { best_e=$e; best_n=$n; }
        [ "$e" -le "$TOL" ] && break
        if [ "$t" -lt "$DOC_TOKENS" ]; then lo_n=$n; else hi_n=$n; fi
        if [ "$hi_n" -gt 0 ] && [ $((hi_n - lo_n)) -le 1 ]; then
            [ "$n" -eq "$best_n" ] || sed -n "$((pos + 1)),$((pos + best_n))p" "$T/words" | paste -sd' ' | tr -d '\n' > "$doc"
            n=$best_n; break
        fi
        n=$(awk -v n="$n" -v d="$DOC_TOKENS" -v t="$t" 'BEGIN { printf "%d", n * d / t + 0.5 }')
        [ "$n" -gt "$lo_n" ] || n=$((lo_n + 1))
        [ "$hi_n" -eq 0 ] || [ "$n" -lt "$hi_n" ] || n=$((hi_n - 1))
    done
    pos=$((pos + n))
done
# the rows as NBCE builds them: one per document (none split) and the unconditional row
engine tok --nbce "$T/all" -p "$Q" -n "$NGEN" --tokenize
awk -F', ' '{ print NF }' "$T/tok.out" > "$T/rowlen"
rows=$(wc -l < "$T/rowlen")
[ "$rows" -eq $((MAXC + 1)) ] || { log "--nbce --tokenize gave $rows rows for $MAXC documents, expected $((MAXC + 1))"; exit 1; }
read -r lo hi < <(tail -n +2 "$T/rowlen" | awk -v l0="$(head -1 "$T/rowlen")" '{ t = $1 - l0; if (NR == 1 || t < lo) lo = t; if (NR == 1 || t > hi) hi = t } END { print lo, hi }')
log "documents: $lo to $hi tokens each"
# the folders: the first C documents; the rows' texts for plain generation (the default template,
# {context}\n\n{question}; row 0, the unconditional row, has an empty context)
for c in $CONTEXTS; do
    mkdir -p "$T/c$c"
    for i in $(seq 0 $((c - 1))); do cp "$T/all/$(printf 'doc%02d.txt' "$i")" "$T/c$c/"; done
done
PLAIN_ROWS=4; [ "$MAXC" -lt 4 ] && PLAIN_ROWS=$MAXC; [ $ALL_ROWS = 1 ] && PLAIN_ROWS=$MAXC
printf '\n\n%s' "$Q" > "$T/row0.txt"
for r in $(seq 1 "$PLAIN_ROWS"); do
    { cat "$T/all/$(printf 'doc%02d.txt' $((r - 1)))"; printf '\n\n%s' "$Q"; } > "$T/row$r.txt"
done
# the plain prompt must be the NBCE row, id for id
for r in $(seq 0 "$PLAIN_ROWS"); do
    engine rowtok -f "$T/row$r.txt" --tokenize
    [ "$(cat "$T/rowtok.out")" = "$(sed -n "$((r + 1))p" "$T/tok.out")" ] ||
        { log "row $r: plain --tokenize differs from the NBCE row's ids"; exit 1; }
done

# ---- measurements, interleaved: every rep runs each NBCE size, then each row alone
engine warm -f "$T/row0.txt" -n 4 --ignore-eos -t 0 --json   # page the model in
for rep in $(seq "$REPS"); do
    for c in $CONTEXTS; do
        log "rep $rep/$REPS: NBCE, $c contexts ..."
        engine nb -n "$NGEN" --ignore-eos -t 0 --json --nbce "$T/c$c" -p "$Q"
        line=$(grep -m1 '^nbce: .* contexts + the unconditional row' "$T/nb.err" || true)
        got=$(echo "$line" | sed -nE 's/^nbce: [0-9]+ documents, ([0-9]+) contexts.*/\1/p')
        [ "$got" = "$c" ] || { log "expected $c contexts, the engine says: ${line:-(no nbce: line)}"; exit 1; }
        [ "$(field nb generated_tokens)" = "$NGEN" ] || { log "NBCE with $c contexts generated $(field nb generated_tokens) tokens, not $NGEN"; exit 1; }
        field nb decode_tok_s >> "$T/nb_dec_$c"; field nb prefill_tok_s >> "$T/nb_pre_$c"
        field nb prompt_tokens > "$T/nb_prompt_$c"
    done
    log "rep $rep/$REPS: rows 0-$PLAIN_ROWS one at a time ..."
    for r in $(seq 0 "$PLAIN_ROWS"); do
        engine pl -f "$T/row$r.txt" -n "$NGEN" --ignore-eos -t 0 --json
        [ "$(field pl generated_tokens)" = "$NGEN" ] || { log "row $r generated $(field pl generated_tokens) tokens, not $NGEN"; exit 1; }
        field pl decode_tok_s >> "$T/pl_dec_$r"; field pl prefill_tok_s >> "$T/pl_pre_$r"
    done
done

# ---- the table
ms() { awk '{ print 1000 / $1 }' "$1" | median; }
for r in $(seq 0 "$PLAIN_ROWS"); do ms "$T/pl_dec_$r" > "$T/pl_ms_$r"; done
one=$(cat "$T/pl_ms_1")                          # one full row (a document and the question)
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || true)
echo "machine: ${cpu:-?}, $THREADS threads ($(nproc) online cores), $(date -u '+%Y-%m-%d %H:%M UTC'); command: $COMMAND"
echo
echo "| contexts | rows | prompt tokens | NBCE ms/token | one-by-one ms/token | ratio | prefill tok/s |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
checks=""
for c in $CONTEXTS; do
    nb=$(ms "$T/nb_dec_$c"); pre=$(median < "$T/nb_pre_$c")
    if [ "$c" -le "$PLAIN_ROWS" ]; then
        seq_ms=$(for r in $(seq 0 "$c"); do cat "$T/pl_ms_$r"; done | awk '{ s += $1 } END { print s }'); mark=""
        checks="$checks; $c: $(printf '%.1f' "$seq_ms") summed vs $((c + 1)) x $(printf '%.2f' "$one") = $(awk -v a="$one" -v k=$((c + 1)) 'BEGIN { printf "%.1f", a * k }')"
    else
        seq_ms=$(awk -v a="$one" -v k=$((c + 1)) 'BEGIN { print a * k }'); mark=" *"
    fi
    printf '| %s | %s | %s | %.1f | %.1f%s | %.2f | %.0f |\n' "$c" $((c + 1)) "$(cat "$T/nb_prompt_$c")" "$nb" "$seq_ms" "$mark" \
        "$(awk -v a="$seq_ms" -v b="$nb" 'BEGIN { print a / b }')" "$pre"
done
echo
echo "$NGEN greedy tokens per run, medians of $REPS interleaved runs; documents of $lo-$hi tokens (target $DOC_TOKENS) from"\
     "$(basename "$TEXT"), question \"$Q\". NBCE ms/token = 1000 / decode_tok_s of \`--nbce\` (all rows, one batch per step);"\
     "one-by-one = the sum of each row's own ms/token with plain generation of that row's text (rows 0-$PLAIN_ROWS decoded,"\
     "one row alone: $(printf '%.2f' "$one") ms/token, prefill $(median < "$T/pl_pre_1" | xargs printf '%.0f') tok/s)."
[ -n "$checks" ] && echo "Measured sums against (C + 1) x one row, contexts${checks#;}."
for c in $CONTEXTS; do [ "$c" -gt "$PLAIN_ROWS" ] && { echo "* (C + 1) x one row's ms/token (--all-rows measures every row)."; break; }; done
exit 0

