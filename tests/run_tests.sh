#!/bin/sh
# The whole test suite: the C unit tests, then the command line end to end.
# Run from the repository root (make test does). The last line is
# "N passed, N failed". Tests that need ../shared/assets skip when it is
# missing, and fail when CI=true.
ASSETS=${ASSETS:-../shared/assets}
# BIN: where run, export and the test programs are (make sanitize sets it)
BIN=${BIN:-.}
TESTBIN=$BIN
EXBIN=$BIN # the example programs (make examples)
[ "$BIN" = . ] && TESTBIN=tests/bin && EXBIN=examples
export EXPORT="$BIN/export"
TMP=${TEST_TMP:-tests/tmp} # its own folder lets several runs go at once (make test-cross)
export TEST_TMP=$TMP
mkdir -p $TMP
passed=0
failed=0

pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }
check() { # check NAME CONDITION-COMMAND...
    _check_name=$1; shift
    if "$@"; then pass "$_check_name"; else fail "$_check_name"; fi
}

# run_suite NAME COMMAND...: a program that prints PASS/FAIL/SKIP lines and
# ends with "N passed, N failed"; its counts are added to ours.
run_suite() {
    _suite=$1; shift
    echo "== $_suite"
    "$@" > $TMP/$_suite.log 2>&1
    _status=$?
    grep -E '^(PASS|FAIL|SKIP)' $TMP/$_suite.log
    _summary=$(tail -n 1 $TMP/$_suite.log)
    _p=$(echo "$_summary" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\1/p')
    _f=$(echo "$_summary" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\2/p')
    if [ -z "$_p" ]; then
        tail -n 5 $TMP/$_suite.log
        fail "$_suite ran to completion (exit status $_status)"
    else
        passed=$((passed + _p)); failed=$((failed + _f))
        [ $_status -eq 0 ] || [ "$_f" -gt 0 ] || fail "$_suite exit status $_status"
    fi
}

for t in test_kernels test_json test_tokenizer test_model test_tempfile; do
    run_suite $t $TESTBIN/$t "$ASSETS"
done
# TEST_SUBSET=core (make test-cross in CI, where every program runs under
# qemu): the C unit tests and the command-line checks below, without these
# Python suites (each runs the engine many times, and qemu is slow).
if [ "${TEST_SUBSET:-all}" = core ]; then
    echo "SKIP check_reader, check_hf, check_export_errors, check_interrupt, check_chat, check_nbce_cli, check_nbce, check_reading, check_positions, check_gguf, check_gguf_llamacpp: TEST_SUBSET=core"
else
    # the shipped model against its oracle fixture (transformers, SentencePiece)
    run_suite check_reader python3 tests/check_reader.py "$BIN" $TMP models/reader.bin
    # Hugging Face checkpoints and tokenizers against transformers (tests/fixtures/hf)
    run_suite check_hf python3 tests/check_hf.py "$BIN" $TMP
    run_suite check_export_errors python3 tests/check_export_errors.py "$BIN" $TMP
    # ./export stopped by SIGINT, SIGTERM or SIGHUP mid-write leaves no temporary file
    run_suite check_interrupt python3 tests/check_interrupt.py "$BIN" $TMP models/reader.bin
    run_suite check_chat python3 tests/check_chat.py "$BIN" $TMP
    run_suite check_nbce_cli python3 tests/check_nbce_cli.py "$BIN" $TMP
    run_suite check_nbce python3 tests/check_nbce.py "$BIN" $TMP "$ASSETS"
    # the reading task's generator, and the shipped model answering from its folder
    run_suite check_reading python3 tests/check_reading.py "$BIN" $TMP "$ASSETS"
    # positions past stories260K's trained context against a float64 reference
    run_suite check_positions python3 tests/check_positions.py "$BIN" $TMP "$ASSETS"
    # GGUF copies of the shipped model, and damaged ones
    run_suite check_gguf python3 tests/check_gguf.py "$BIN" $TMP models/reader.bin
    # GGUF files made by llama.cpp's converter and quantizer, against llama.cpp's and transformers' numbers
    run_suite check_gguf_llamacpp python3 tests/check_gguf_llamacpp.py "$BIN" $TMP
fi
# Model files over 2 and 4 GiB (sparse), on 64- and 32-bit targets
run_suite check_large_file python3 tests/check_large_file.py "$BIN" $TMP models/reader.bin

echo "== command line"

# expect_error NAME COMMAND...: exit status 1 (no signal), exactly one line on
# stderr, and it starts with "error: ".
expect_error() {
    _check_name=$1; shift
    "$@" > $TMP/err.out 2> $TMP/err.txt
    status=$?
    lines=$(wc -l < $TMP/err.txt)
    # content quoted from a file or an argument comes escaped: no control character but the newline
    if [ $status -eq 1 ] && [ "$lines" -eq 1 ] && grep -q '^error: ' $TMP/err.txt &&
       ! tr -d '\n' < $TMP/err.txt | LC_ALL=C grep -q '[[:cntrl:]]'; then
        pass "$_check_name: $(cat $TMP/err.txt)"
    else
        fail "$_check_name (status $status, $lines lines on stderr: $(head -c 300 $TMP/err.txt))"
    fi
}

# Option errors need no model file at all.
expect_error "no such model" $BIN/run $TMP/does-not-exist.bin -p hi
expect_error "model is a folder" $BIN/run tests -p hi
printf 'this is not a model file, just text' > $TMP/garbage.bin
expect_error "unknown magic" $BIN/run $TMP/garbage.bin -p hi
# a llama2.c (version 0) header whose vocabulary size is INT32_MIN: negated in 64 bits, too large
# (negating it in int was undefined; UBSan, under make sanitize, reported it)
printf '\100\0\0\0\200\0\0\0\001\0\0\0\004\0\0\0\004\0\0\0\0\0\0\200\040\0\0\0' > $TMP/vocab_min.bin
expect_error "llama2.c header with vocab_size INT32_MIN" $BIN/run $TMP/vocab_min.bin -p hi
: > $TMP/empty.bin
expect_error "empty model file" $BIN/run $TMP/empty.bin
expect_error "export from a missing file" $BIN/export $TMP/does-not-exist.bin $TMP/x.bin
expect_error "export of a text file" $BIN/export $TMP/garbage.bin $TMP/x.bin
check "a failed export leaves no output" test ! -e $TMP/x.bin

# expect_error_naming WORD NAME COMMAND...: as expect_error, and the line
# names WORD (so the damage made is the one the loader reports).
expect_error_naming() {
    _word=$1; shift
    expect_error "$@"
    grep -qF -- "$_word" $TMP/err.txt || fail "$1: the error names '$_word'"
}

# ---------------------------------------------------------------------------
# The shipped model, models/reader.bin (models/PROVENANCE.md), and copies of
# it made here: every command-line check that needs only some model file, so
# a clone without the assets runs them too. References: its oracle fixture
# (tests/fixtures/reader_oracle.json: SentencePiece's ids, transformers'
# float64 greedy tokens, checked in full by check_reader.py), the format's
# layout (docs/FORMAT.md), and relations that must hold.
M=models/reader.bin
echo "== command line: models/reader.bin"
RFIX=tests/fixtures/reader_oracle.json
fixture() { python3 -c "import json,sys; f=json.load(open('$RFIX')); sys.stdout.buffer.write(($1).encode())"; }
P1=$(fixture "f['greedy'][0]['prompt']") # It is a truth universally acknowledged
P2=$(fixture "f['greedy'][1]['prompt']") # a prompt the model is unsure about: margins of 0.01-3 nats
# greedy_prefix: the fixture's greedy ids for P1 before the first step whose
# margin is below 1 nat (a q8_0 model may flip those).
greedy_prefix="g=f['greedy'][0]; k=next((i for i,m in enumerate(g['margins']) if m<1.0),len(g['ids'])); want=g['ids'][:k]"

check "./run --version prints model.h's ENGINE_VERSION" sh -c \
    "$BIN/run --version | grep -qx \"run \$(sed -n 's/^#define ENGINE_VERSION \"\\(.*\\)\".*/\\1/p' model.h)\""
check "./run --help prints the options on stdout, status 0" sh -c "$BIN/run --help 2>/dev/null | grep -q -- '--ppl-chunks'"
check "./export --help prints its usage on stdout, status 0" sh -c "$BIN/export --help 2>/dev/null | grep -q -- '--quant'"
# called wrongly, each program says so in one line (the usage is --help's)
expect_error "./run with no arguments" $BIN/run
expect_error "./export with one argument" $BIN/export $M
expect_error "./export with an option where OUT goes" $BIN/export $M --quant q8_0
expect_error_naming "--ppl" "--tokenize with --ppl" $BIN/run $M -p hi --tokenize --ppl
expect_error_naming "-n applies to generation" "--ppl with -n" $BIN/run $M -p hi --ppl -n 5
expect_error_naming "-t applies to generation" "--tokenize with -t" $BIN/run $M -p hi --tokenize -t 0
expect_error_naming "--ignore-eos" "--ppl-chunks with --ignore-eos" $BIN/run $M -p hi --ppl-chunks --ignore-eos
expect_error "--tokenize to a full device" sh -c "$BIN/run $M -p hi --tokenize > /dev/full"
expect_error "--ppl --json to a full device" sh -c "$BIN/run $M -p 'hi there' --ppl --json > /dev/full"
$BIN/run $M -p hi -n 4 > /dev/full 2> $TMP/full.err
full_status=$?
check "generation to a full device: status 1, the error named last" sh -c \
    "test $full_status -eq 1 && tail -n 1 $TMP/full.err | grep -q '^error: cannot write the output'"
$BIN/run $M -p "$P1" -t 0 -n 12 > $TMP/r_named.out 2> $TMP/r_named.err
$BIN/run -p "$P1" -t 0 -n 12 > $TMP/r_default.out 2>/dev/null
check "./run without a model name runs models/reader.bin" sh -c "test -s $TMP/r_named.out && cmp -s $TMP/r_named.out $TMP/r_default.out"
check "the stats line reports prompt and generated tokens with tok/s, and why generation stopped" \
    grep -Eq '^prompt: [0-9]+ tokens, [0-9.]+ tok/s \| generated: 12 tokens, [0-9.]+ tok/s \| stopped: the -n limit$' $TMP/r_named.err
# The default seed is shown in --json and by --verbose, and -s with it samples the same text again;
# two runs started together get different seeds.
$BIN/run $M -p "$P2" -n 24 --json > $TMP/seed_a.json 2>/dev/null
$BIN/run $M -p "$P2" -n 24 --json > $TMP/seed_b.json 2>/dev/null
seed_a=$(python3 -c "import json; print(json.load(open('$TMP/seed_a.json'))['seed'])")
$BIN/run $M -p "$P2" -n 24 --json -s "$seed_a" > $TMP/seed_again.json 2>/dev/null
check "-s with the seed --json showed samples the same tokens" python3 -c "
import json; a, b = (json.load(open(f)) for f in ('$TMP/seed_a.json', '$TMP/seed_again.json'))
assert a['ids'] == b['ids'] and a['seed'] == b['seed'], (a, b)"
check "two runs without -s get different seeds" python3 -c "
import json; assert json.load(open('$TMP/seed_a.json'))['seed'] != json.load(open('$TMP/seed_b.json'))['seed']"
$BIN/run $M -p "$P2" -n 2 -s 7 --verbose 2> $TMP/seed_v.err > /dev/null
check "--verbose prints the seed" grep -q 'seed: 7$' $TMP/seed_v.err
# Why generation stopped: an end token, the -n limit (even when it equals what the context has left),
# a full context.
Q_EOS=$(printf 'The capital of Veltria is Morun.\n\nWhat is the capital of Veltria?')
$BIN/run $M -p "$Q_EOS" -t 0 --json > $TMP/fin_stop.out 2> $TMP/fin_stop.err
check "an answer that ends with end of text: finish_reason stop" sh -c \
    "grep -q '\"finish_reason\": \"stop\"' $TMP/fin_stop.out && grep -q '| stopped: end of text$' $TMP/fin_stop.err"
$BIN/run $M -p "$P1" -t 0 -n 3 --json > $TMP/fin_len.out 2>/dev/null
check "-n 3: finish_reason length" grep -q '"generated_tokens": 3, "finish_reason": "length"' $TMP/fin_len.out
$BIN/run $M -p "Once upon" -t 0 --ctx 8 --json > $TMP/fin_ctx.out 2> $TMP/fin_ctx.err
check "a full context: finish_reason context, and the stats line says to raise --ctx" sh -c \
    "grep -q '\"finish_reason\": \"context\"' $TMP/fin_ctx.out && grep -q 'stopped: the context is full (--ctx' $TMP/fin_ctx.err"
$BIN/run $M -p "Once upon" -t 0 --ctx 8 -n 5 --json > $TMP/fin_ctx_n.out 2>/dev/null
check "-n equal to what the context has left: finish_reason length" grep -q '"finish_reason": "length"' $TMP/fin_ctx_n.out

# Sampling: the same seed gives the same text for every thread count.
for t in 1 2 3; do
    $BIN/run $M -p "$P2" -t 0.9 --top-p 0.9 -s 42 -n 100 --threads $t > $TMP/r_sample_$t.out 2>/dev/null
done
check "sampled text with a fixed seed is identical for 1, 2 and 3 threads" \
    sh -c "test -s $TMP/r_sample_1.out && cmp -s $TMP/r_sample_1.out $TMP/r_sample_2.out && cmp -s $TMP/r_sample_1.out $TMP/r_sample_3.out"
$BIN/run $M -p "$P2" -t 0.9 -s 43 -n 100 > $TMP/r_sample_43.out 2>/dev/null
check "another seed gives another text" sh -c "! cmp -s $TMP/r_sample_1.out $TMP/r_sample_43.out"
$BIN/run $M -p "$P2" -t 1 --top-k 1 -s 7 -n 40 --ignore-eos > $TMP/r_topk1.out 2>/dev/null
$BIN/run $M -p "$P2" -t 0 -n 40 --ignore-eos > $TMP/r_greedy40.out 2>/dev/null
check "--top-k 1 samples the greedy text (where the model is unsure: margins of 0.01-3 nats)" cmp -s $TMP/r_topk1.out $TMP/r_greedy40.out

# -f reads the prompt byte for byte, same as -p and -f -.
printf '%s' "$P1" > $TMP/prompt.txt
$BIN/run $M -f $TMP/prompt.txt -t 0 -n 30 > $TMP/f.out 2>/dev/null
$BIN/run $M -p "$P1" -t 0 -n 30 > $TMP/p.out 2>/dev/null
check "-f FILE and -p TEXT give the same output" sh -c "test -s $TMP/p.out && cmp -s $TMP/f.out $TMP/p.out"
$BIN/run $M -f - -t 0 -n 30 < $TMP/prompt.txt > $TMP/stdin.out 2>/dev/null
check "-f - reads the prompt from stdin" cmp -s $TMP/stdin.out $TMP/p.out

# --tokenize and --json.
hello=$(fixture "next(c['text'] for c in f['tokenizer_cases'] if c['text']=='Hello world')")
$BIN/run $M -p "$hello" --tokenize > $TMP/r_hello.ids
check "--tokenize -p 'Hello world' prints SentencePiece's ids with BOS as a JSON array" python3 -c "
import json
want=[c['ids_special'] for c in json.load(open('$RFIX'))['tokenizer_cases'] if c['text']=='Hello world'][0]
got=open('$TMP/r_hello.ids').read()
assert got==json.dumps(want)+'\\n', (got, want)"
$BIN/run $M -p "$P1" -t 0 -n 25 --json > $TMP/gen.json 2>/dev/null
$BIN/run $M -p "$P1" --tokenize > $TMP/p1.ids
check "--json prints one valid object: text, ids (transformers' greedy tokens), counts" python3 -c "
import json
f=json.load(open('$RFIX')); $greedy_prefix
o=json.loads(open('$TMP/gen.json').read().strip().splitlines()[-1])
assert set(o)=={'text','ids','prompt_tokens','generated_tokens','finish_reason','seed','prefill_tok_s','decode_tok_s'}, o
assert o['prompt_tokens']==len(json.load(open('$TMP/p1.ids'))) and o['generated_tokens']==25==len(o['ids']), o
assert len(want)>=8 and o['ids'][:len(want)]==want[:25], (o['ids'], want)"
check "--json text equals the streamed text" python3 -c "
import json
o=json.loads(open('$TMP/gen.json').read().strip().splitlines()[-1])
s=open('$TMP/p.out',encoding='utf-8').read()
# p.out holds 30 tokens, the JSON 25; the JSON text must be its beginning
assert s.startswith(o['text']) and len(o['text'])>20, (s,o['text'])"

# --ppl over a text longer than the context (the fixture's 328-token reading
# task text, in windows of 128 tokens; check_reader.py scores the 1082-token
# one against transformers).
fixture "[t['text'] for t in f['texts'] if t['name']=='task'][0]" > $TMP/r_task.txt
$BIN/run $M -f $TMP/r_task.txt --ppl --json --ctx 128 > $TMP/ppl.json 2>/dev/null
check "--ppl --json prints tokens (SentencePiece's count), mean_nll and ppl = exp(mean_nll)" python3 -c "
import json,math
o=json.loads(open('$TMP/ppl.json').read()); t=[t for t in json.load(open('$RFIX'))['texts'] if t['name']=='task'][0]
assert set(o)=={'tokens','mean_nll','ppl'} and o['tokens']==len(t['ids'])>128, o
assert 0<o['mean_nll']<4 and abs(math.exp(o['mean_nll'])-o['ppl'])<1e-3*o['ppl'], o"
$BIN/run $M -f $TMP/r_task.txt --ppl --json --ctx 64 > $TMP/ppl64.json 2>/dev/null
check "--ppl over a text longer than --ctx scores it in windows (same token count, higher loss at --ctx 64 than 128)" python3 -c "
import json
a=json.loads(open('$TMP/ppl.json').read()); b=json.loads(open('$TMP/ppl64.json').read())
assert a['tokens']==b['tokens'] and b['mean_nll']>a['mean_nll'], (a,b)"

# ---------------------------------------------------------------------------
# Kernel levels (docs/BUILD.md): the binary holds every level of its
# architecture and runs the best one this CPU has; RUN_KERNELS picks another.
# Each level this CPU has is checked against transformers' float64 numbers
# for the shipped model: the task text's perplexity (1%, as check_reader.py),
# the greedy prefix of P1, and threads that do not change a sampled text.
levels=$($BIN/run $M -p x -n 1 --verbose 2>&1 >/dev/null | sed -n 's/^kernels: [a-z0-9]* (this CPU has: \([a-z0-9, ]*\);.*/\1/p' | tr -d ,)
check "--verbose names the kernel level in use and the levels this CPU has (scalar among them)" \
    sh -c "echo ' $levels ' | grep -q ' scalar '"
for L in $levels; do
    RUN_KERNELS=$L $BIN/run $M -p x -n 1 --verbose 2> $TMP/lv_$L.err > /dev/null
    check "RUN_KERNELS=$L: --verbose says the model runs on $L" grep -q "^kernels: $L " $TMP/lv_$L.err
    RUN_KERNELS=$L $BIN/run $M -f $TMP/r_task.txt --ppl --json --ctx 512 > $TMP/lv_ppl_$L.json 2>/dev/null
    check "RUN_KERNELS=$L: the task text's mean NLL within 1% of transformers' float64" python3 -c "
import json
o=json.loads(open('$TMP/lv_ppl_$L.json').read()); t=[t for t in json.load(open('$RFIX'))['texts'] if t['name']=='task'][0]
assert o['tokens']==len(t['ids']) and abs(o['mean_nll']-t['mean_nll'])<=0.01*t['mean_nll'], (o, t['mean_nll'])"
    RUN_KERNELS=$L $BIN/run $M -p "$P1" -t 0 -n 32 --ignore-eos --json > $TMP/lv_greedy_$L.json 2>/dev/null
    check "RUN_KERNELS=$L: greedy ids of P1 are transformers' float64 ones up to the first margin below 1 nat" python3 -c "
import json
f=json.load(open('$RFIX')); $greedy_prefix
o=json.loads(open('$TMP/lv_greedy_$L.json').read().strip().splitlines()[-1])
assert len(want)>=8 and o['ids'][:len(want)]==want[:32], (o['ids'], want)"
    for t in 1 3; do
        RUN_KERNELS=$L $BIN/run $M -p "$P2" -t 0.9 -s 42 -n 60 --threads $t > $TMP/lv_sample_${L}_$t.out 2>/dev/null
    done
    check "RUN_KERNELS=$L: a sampled text with a fixed seed is the same at 1 and 3 threads" \
        sh -c "test -s $TMP/lv_sample_${L}_1.out && cmp -s $TMP/lv_sample_${L}_1.out $TMP/lv_sample_${L}_3.out"
done
expect_error_naming "scalar" "RUN_KERNELS naming no level: one line listing the levels this CPU has" env RUN_KERNELS=avx1024 $BIN/run $M -p x -n 1
# The static binary carries the same levels: on an SSE2-only x86-64 (qemu's
# qemu64 CPU) it runs the portable level, on an AVX2 one (Haswell) the AVX2
# level, each printing what the native binary prints at that level.
if [ "$BIN" = . ] && [ "$(uname -m)" = x86_64 ]; then
    if ! command -v qemu-x86_64 >/dev/null 2>&1 || [ ! -x build/static/run ]; then
        if [ "$CI" = true ]; then fail "qemu-x86_64 and build/static/run found (required when CI=true)"
        else echo "SKIP the static binary under qemu-x86_64: needs qemu-user and make static"; fi
    else
        for cpu in qemu64:scalar Haswell:avx2; do
            c=${cpu%%:*} L=${cpu#*:}
            qemu-x86_64 -cpu $c build/static/run $M -p "$P1" -t 0 -n 24 --verbose > $TMP/q_$c.out 2> $TMP/q_$c.err
            RUN_KERNELS=$L $BIN/run $M -p "$P1" -t 0 -n 24 > $TMP/q_native_$L.out 2>/dev/null
            check "the static binary on qemu's $c CPU runs the $L level and prints the native binary's $L text" \
                sh -c "grep -q '^kernels: $L ' $TMP/q_$c.err && test -s $TMP/q_$c.out && cmp -s $TMP/q_$c.out $TMP/q_native_$L.out"
        done
    fi
fi

# Positions from the command line: the invariants end to end.
$BIN/run $M -f $TMP/r_task.txt --ppl --json --ctx 128 --pos rerope --window 100000 > $TMP/pos_rerope_wide.json 2>/dev/null
check "--pos rerope with a window beyond the context scores exactly as RoPE" \
    sh -c "test -s $TMP/ppl.json && cmp -s $TMP/ppl.json $TMP/pos_rerope_wide.json"
$BIN/run $M -f $TMP/r_task.txt --ppl --json --ctx 128 --pos rerope --window 0 --logn 0 > $TMP/pos_rerope0.json 2>/dev/null
$BIN/run $M -f $TMP/r_task.txt --ppl --json --ctx 128 --pos nope > $TMP/pos_nope.json 2>/dev/null
check "--pos rerope --window 0 scores exactly as --pos nope" sh -c "test -s $TMP/pos_nope.json && cmp -s $TMP/pos_rerope0.json $TMP/pos_nope.json"
check "--pos nope scores worse than RoPE (the model was trained with RoPE)" python3 -c "
import json
a=json.load(open('$TMP/ppl.json')); b=json.load(open('$TMP/pos_nope.json'))
assert b['mean_nll'] > a['mean_nll'] + 0.1, (a, b)"

# --verbose: the KV cache and memory lines, against the config in the fixture
# (bytes per token = layers x KV heads x (2 x head dim) x bytes per number).
$BIN/run $M -p "$P1" -n 5 --verbose -t 0 --kv f32 > /dev/null 2> $TMP/verbose32.err
$BIN/run $M -p "$P1" -n 5 --verbose -t 0 > /dev/null 2> $TMP/verbose.err
$BIN/run $M -p "$P1" -n 5 --verbose -t 0 --no-repack > /dev/null 2> $TMP/verbose_norepack.err
kv16=$(fixture "str((lambda m: m['num_hidden_layers']*m['num_key_value_heads']*2*(m['hidden_size']//m['num_attention_heads'])*2)(f['model']))")
check "--verbose --kv f32 prints the KV cache bytes per token (layers x KV heads x 2 x head dim x 4: $((kv16 * 2)))" \
    grep -q "^kv cache: $((kv16 * 2)) bytes per token (f32" $TMP/verbose32.err
check "the KV cache is f16 by default: half the bytes ($kv16)" grep -q "^kv cache: $kv16 bytes per token (f16" $TMP/verbose.err
check "--verbose's memory line: weights = the file, repacked = every q8_0 matrix and the tied classifier's copy (or none), + 512 x $kv16 bytes of KV + scratch = its total" python3 -c "
import json,os,re
m=json.load(open('$RFIX'))['model']; M=1048576
d,L,h,kv,hid,V=m['hidden_size'],m['num_hidden_layers'],m['num_attention_heads'],m['num_key_value_heads'],m['intermediate_size'],m['vocab_size']
q8=lambda rows,cols: rows*cols//32*34  # q8_0: 34 bytes per 32 weights (docs/FORMAT.md)
kvd=kv*(d//h)
matrices=L*(2*q8(d,d)+2*q8(kvd,d)+2*q8(hid,d)+q8(d,hid))+q8(V,d)
def parse(path):
    line=[l for l in open(path) if l.startswith('memory:')][0]
    g=re.fullmatch(r'memory: ([0-9.]+) MiB weights \\(([0-9.]+) MiB of them repacked in memory, the rest mapped\\) \\+ ([0-9.]+) MiB kv cache \\+ ([0-9.]+) MiB scratch \\(batches of ([0-9]+) tokens\\) = ([0-9.]+) MiB\\n',line)
    assert g, line
    return [float(x) for x in g.groups()], line
(w,rep,kvm,scratch,batch,total),line=parse('$TMP/verbose.err')
assert abs(w-os.path.getsize('$M')/M)<0.01, line
assert rep==0 or abs(rep-matrices/M)<0.01, (line, matrices/M)
assert (rep>0)==('of matrices copied interleaved' in open('$TMP/verbose.err').read()), line
assert abs(kvm-512*$kv16/M)<0.01 and 0<scratch<64 and int(batch)==512, line
assert abs(w+kvm+scratch-total)<0.02, line
(w2,rep2,kvm2,s2,b2,t2),line2=parse('$TMP/verbose_norepack.err')
assert rep2==0 and (w2,kvm2,s2)==(w,kvm,scratch), line2"

# Small contexts: --ctx P+N-1 after the P-token prompt P1 gives N tokens
# (the last one is never fed), the start of transformers' greedy text.
np1=$(python3 -c "import json; print(len(json.load(open('$TMP/p1.ids'))))")
for n in 1 2 3 7; do
    $BIN/run $M -p "$P1" -t 0 -n 200 --ctx $((np1 + n - 1)) --json > $TMP/ctx_$n.json 2>/dev/null
    check "--ctx $((np1 + n - 1)) after a $np1-token prompt gives $n token(s), the start of transformers' greedy ones" python3 -c "
import json
f=json.load(open('$RFIX')); $greedy_prefix
o=json.loads(open('$TMP/ctx_$n.json').read().strip().splitlines()[-1])
assert o['generated_tokens']==$n and o['ids']==want[:$n], o"
done
$BIN/run $M -p '' -t 0 -n 5 --json > $TMP/ctx_bos5.json 2>/dev/null
$BIN/run $M -p '' -t 0 -n 200 --ctx 1 --json > $TMP/ctx_bos1.json 2>/dev/null
check "--ctx 1 after BOS alone gives one token, the first of -n 5" python3 -c "
import json
a,b=(json.loads(open(p).read().strip().splitlines()[-1]) for p in ('$TMP/ctx_bos5.json','$TMP/ctx_bos1.json'))
assert a['generated_tokens']==5 and b['ids']==a['ids'][:1], (a,b)"

# Copies through ./export: q8_0 again is the same file (dequantizing a q8_0
# block and quantizing it again gives back its bytes); f32 holds the same
# weights; q4_0 requantizes.
for q in q8_0 f32 q4_0; do
    $BIN/export $M $TMP/r_$q.bin --quant $q 2> $TMP/r_export_$q.err
    check "export models/reader.bin --quant $q succeeds" test -s $TMP/r_$q.bin
done
check "export --quant q8_0 of the q8_0 model writes the same file, byte for byte" cmp -s $M $TMP/r_q8_0.bin
fixture "[t['text'] for t in f['texts'] if t['name']=='pride'][0][:1000]" > $TMP/r_pride.txt # 284 tokens
for q in f32 q4_0; do
    $BIN/run $TMP/r_$q.bin -f $TMP/r_pride.txt --ppl --json > $TMP/r_ppl_$q.json 2>/dev/null
done
$BIN/run $M -f $TMP/r_pride.txt --ppl --json > $TMP/r_ppl_q8_0.json 2>/dev/null
$BIN/run $TMP/r_q4_0.bin -p "$P1" -n 1 --verbose > /dev/null 2> $TMP/r_q4_0.err
# (the book is memorised, down to 0.03 nats a token, while the q8_0
# activations' rounding moves the mean by up to 5e-4 nats: more than 1% there)
check "the f32 copy scores the book as the q8_0 model does (within 1% or 5e-4 nats), the q4_0 copy worse but still knows it (< 0.5 nats)" python3 -c "
import json
a,b,c=(json.load(open('$TMP/r_ppl_%s.json' % q)) for q in ('q8_0','f32','q4_0'))
assert a['tokens']==b['tokens']==c['tokens'] and abs(b['mean_nll']-a['mean_nll'])<=max(0.01*a['mean_nll'],5e-4), (a,b)
assert a['mean_nll'] < c['mean_nll'] < 0.5, (a,c)"
check "the q4_0 copy is q4_0 (--verbose)" grep -q '^weights: [0-9.]* MiB mapped (q4_0)' $TMP/r_q4_0.err
$BIN/run $TMP/r_f32.bin -p "$P1" -n 1 --verbose > /dev/null 2> $TMP/r_f32.err
check "the f32 copy: nothing to repack, all its weights mapped" \
    grep -Eq '^memory: [0-9.]+ MiB weights \(0.00 MiB of them repacked in memory, the rest mapped\)' $TMP/r_f32.err

# The example programs (examples/): model.h inside another program.
$EXBIN/generate $M "$P1" 30 > $TMP/example_generate.out 2>/dev/null
$BIN/run $M -p "$P1" -t 0 -n 30 --kv f32 > $TMP/run_greedy.out 2>/dev/null
check "examples/generate prints ./run's greedy text (f32 cache)" sh -c "test -s $TMP/run_greedy.out && cmp -s $TMP/example_generate.out $TMP/run_greedy.out"
$EXBIN/generate $M "$P2" 60 0.8 > $TMP/example_sampled.out 2>/dev/null
$BIN/run $M -p "$P2" -n 60 -t 0.8 --top-p 0.9 -s 42 --kv f32 > $TMP/run_sampled.out 2>/dev/null
check "examples/generate samples what ./run samples (same seed, top-p, f32 cache)" \
    sh -c "test -s $TMP/run_sampled.out && cmp -s $TMP/example_sampled.out $TMP/run_sampled.out"
# NBCE over reading-task documents (tools/reading.py): three documents, the
# answer in exactly one of them (question 1 of seed 1: a capital, in the
# second document).
rm -rf $TMP/reading_docs $TMP/reading_docs.jsonl
python3 tools/reading.py $TMP/reading_docs --docs 3 --seed 1
set -- $TMP/reading_docs/*.txt
i=1
q=$(python3 -c "import json; print(json.loads(open('$TMP/reading_docs.jsonl').readlines()[$i - 1])['question'])")
$EXBIN/nbce_qa $M "$q" "$(cat $1)" "$(cat $2)" "$(cat $3)" > $TMP/example_nbce_$i.out 2>/dev/null
$BIN/run $M --nbce $TMP/reading_docs -p "$q" -t 0 -n 48 --kv f32 > $TMP/run_nbce_$i.out 2>/dev/null
check "examples/nbce_qa over documents in memory answers question $i as ./run --nbce over them as files" \
    sh -c "test -s $TMP/run_nbce_$i.out && head -n -1 $TMP/example_nbce_$i.out | cmp -s - $TMP/run_nbce_$i.out"
check "examples/nbce_qa answers question $i right and names the document that holds the fact" python3 -c "
import json,sys
sys.path.insert(0,'tools'); import reading
q=json.loads(open('$TMP/reading_docs.jsonl').readlines()[$i - 1])
lines=open('$TMP/example_nbce_$i.out',encoding='utf-8').read().split('\\n')
files=sorted(n for n in __import__('os').listdir('$TMP/reading_docs'))
assert reading.answered(''.join(lines[:-2]), q['answer']), (lines, q)
assert lines[-2]=='source: document %d' % (files.index(q['file'])+1), (lines[-2], q['file'], files)"
expect_error "examples/generate on a missing model" $EXBIN/generate $TMP/nope.bin hi

# Malformed model files: truncated at several points, corrupted fields. The
# offsets come from docs/FORMAT.md's layout and this file's own header and
# tensor table.
size=$(wc -c < $M)
table_end=$(python3 -c "
import struct; d=open('$M','rb').read(32); n,t=struct.unpack_from('<IQ',d,12)[0],struct.unpack_from('<Q',d,16)[0]; print(t+104*n)")
for cut in 3 100 1024 1500 $table_end $((size / 2)) $((size - 1)); do
    head -c $cut $M > $TMP/cut.bin
    expect_error "model truncated to $cut bytes" $BIN/run $TMP/cut.bin -p hi
done
cp $M $TMP/padded.bin; printf 'x' >> $TMP/padded.bin
expect_error_naming "truncated or padded" "model with trailing bytes" $BIN/run $TMP/padded.bin -p hi
# entry NAME: the offset of tensor NAME's entry in the table
entry() { python3 -c "
import struct,sys; d=open('$M','rb').read(); n,t=struct.unpack_from('<I',d,12)[0],struct.unpack_from('<Q',d,16)[0]
print([t+104*i for i in range(n) if d[t+104*i:t+104*i+48].split(b'\0')[0]==b'$1'][0])"; }
corrupt() { # corrupt OFFSET BYTES-AS-PRINTF
    cp $M $TMP/bad.bin
    printf "$2" | dd of=$TMP/bad.bin bs=1 seek=$1 conv=notrunc 2>/dev/null
}
EMB=$(entry tok_embeddings); WQ=$(entry layers.0.attention.wq); SCORES=$(entry tokenizer.scores)
corrupt 4 '\143'; expect_error_naming "version 99" "unsupported format version" $BIN/run $TMP/bad.bin -p hi
corrupt 0 'XXXX'; expect_error_naming "magic" "wrong magic" $BIN/run $TMP/bad.bin -p hi
corrupt 12 '\377\377\377\377'; expect_error "n_tensors far past the file" $BIN/run $TMP/bad.bin -p hi
# Fields a dense model does not use are bounded too (they once sized the run's buffers): config field i
# is at 32 + 4 i (docs/FORMAT.md).
corrupt 156 '\377\377\377\177'; expect_error_naming "expert dimensions" "a dense model with n_shared_experts 2^31-1" $BIN/run $TMP/bad.bin -p hi
corrupt 160 '\000\000\000\100'; expect_error_naming "expert dimensions" "a dense model with moe_hidden_dim 2^30" $BIN/run $TMP/bad.bin -p hi
corrupt 136 '\377\377\377\177'; expect_error_naming "latent-attention" "a GQA model with qk_nope_head_dim 2^31-1" $BIN/run $TMP/bad.bin -p hi
# a latent-attention model (attn_kind 1, field 23; kv_lora_rank 64, field 25) whose nope + rope head
# dims (fields 26, 27) would overflow int as a sum: refused by the bounds first (UBSan caught the sum)
corrupt 124 '\001'
for patch in "132 \100" "136 \377\377\377\177" "140 \001"; do
    printf "${patch#* }" | dd of=$TMP/bad.bin bs=1 seek=${patch%% *} conv=notrunc 2>/dev/null
done
expect_error_naming "latent-attention" "an MLA model with qk_nope_head_dim 2^31-1 and qk_rope_head_dim 1" $BIN/run $TMP/bad.bin -p hi
# A trained context of 2^31-1 tokens (field 9) is the default --ctx: its KV cache (terabytes) cannot be
# allocated, which is said at once and names --ctx; with --ctx 64 the model runs. The address-space limit
# makes the failure certain whatever the machine's overcommit policy; ASan reserves terabytes of shadow
# memory, so the sanitized build runs without it and has its allocator return NULL instead of aborting
# (its warning for each refused allocation goes to a log, which must hold nothing else).
corrupt 68 '\377\377\377\177'
check "a model trained for 2^31-1 tokens runs a short prompt with --ctx 64" sh -c \
    "$BIN/run $TMP/bad.bin -p hi -n 1 --ctx 64 > $TMP/long_ctx.out 2>/dev/null && test -s $TMP/long_ctx.out"
rm -f $TMP/asan_ctx.*
case $BIN in
    *sanitize*) memlimit=:; asan_options=allocator_may_return_null=1:log_path=$TMP/asan_ctx ;;
    *) memlimit='ulimit -v 33554432'; asan_options= ;;
esac
expect_error_naming "--ctx" "a model trained for 2^31-1 tokens without --ctx" \
    env ASAN_OPTIONS=$asan_options sh -c "$memlimit; exec $BIN/run $TMP/bad.bin -p hi -n 1"
case $BIN in *sanitize*)
    check "ASan's log of that run holds only its refused allocations" sh -c \
        "cat $TMP/asan_ctx.* > $TMP/asan_ctx.txt && grep -q 'failed to allocate' $TMP/asan_ctx.txt && ! grep -v 'failed to allocate' $TMP/asan_ctx.txt" ;;
esac
corrupt 28 '\001'; expect_error_naming "truncated or padded" "file_bytes not the file's size" $BIN/run $TMP/bad.bin -p hi
corrupt 32 '\011'; expect_error_naming "architecture" "unknown architecture" $BIN/run $TMP/bad.bin -p hi
corrupt 36 '\377\377\377\177'; expect_error "impossible dim in the config" $BIN/run $TMP/bad.bin -p hi
corrupt 48 '\003\000\000\000'; expect_error_naming "n_kv_heads (3)" "n_heads not a multiple of n_kv_heads" $BIN/run $TMP/bad.bin -p hi
corrupt 64 '\377\017\000\000'; expect_error_naming "tok_embeddings" "vocab_size 4095 in the config, 4096 rows in the embedding" $BIN/run $TMP/bad.bin -p hi
corrupt 288 '\007'; expect_error_naming "tokenizer kind" "unknown tokenizer kind" $BIN/run $TMP/bad.bin -p hi
corrupt 292 '\210\023\000\000'; expect_error_naming "5000" "a tokenizer of 5000 pieces for 4096 embeddings" $BIN/run $TMP/bad.bin -p hi
corrupt 300 '\210\023\000\000'; expect_error_naming "eos" "eos id out of range" $BIN/run $TMP/bad.bin -p hi
corrupt $((EMB + 48)) '\115\000\000\000'; expect_error_naming "type 77" "unknown tensor type" $BIN/run $TMP/bad.bin -p hi
# a tensor name with a newline and an escape sequence, quoted by that error: one escaped line
corrupt $EMB 'e\n\033[2J\000'; printf '\115' | dd of=$TMP/bad.bin bs=1 seek=$((EMB + 48)) conv=notrunc 2>/dev/null
expect_error_naming "'e\\n\\x1b[2J' has unknown type 77" "a tensor name with control characters" $BIN/run $TMP/bad.bin -p hi
# a tokenizer.json whose pre-tokenizer regex (quoted by its error) holds a newline and an escape sequence
mkdir -p $TMP/badregex
python3 -c "
import json; j=json.load(open('tests/fixtures/hf/tokenizers/bpe/tokenizer.json'))
j['pre_tokenizer']['pretokenizers'][0]['pattern']['Regex']='a\n\x1b[2J(b'
json.dump(j, open('$TMP/badregex/tokenizer.json', 'w'))"
expect_error_naming '"a\n\x1b[2J(b"' "a pre-tokenizer regex with control characters" $BIN/run $M -z $TMP/badregex/tokenizer.json -p hi
# the same through the folder, named with a trailing slash: the path in the message has no "//"
expect_error_naming "badregex/tokenizer.json:" "a tokenizer folder named with a trailing slash" $BIN/run $M -z $TMP/badregex/ -p hi
corrupt $((EMB + 88)) '\001'; expect_error_naming "aligned" "misaligned tensor offset" $BIN/run $TMP/bad.bin -p hi
corrupt $((EMB + 56)) '\377'; expect_error_naming "shape" "tensor shape that does not match its size" $BIN/run $TMP/bad.bin -p hi
corrupt $((SCORES + 88)) '\000\000\000\001'; expect_error "tensor data past the end of the file" $BIN/run $TMP/bad.bin -p hi
corrupt $WQ 'nonexistent_tensor\000'; expect_error_naming "layers.0.attention.wq" "a required tensor missing" $BIN/run $TMP/bad.bin -p hi

# Weights that hold inf or NaN make the activations non-finite: one error line naming the part where
# it showed, never an integer conversion of a NaN (undefined; UBSan, under make sanitize, reports it
# as more lines and another status). A NaN in an f32 norm weight reaches the int8 quantization of
# the activations, in the q8_0 model and in a q4_0 copy (whose kernel subtracts 8 * the block's sum);
# an inf or NaN f16 block scale (the first two bytes of a q8_0 block) in wq, w2, the embedding row of
# BOS (id 1) and the last embedding row, the classifier's (tied embeddings, 272 bytes a row).
# poison SRC TENSOR BYTE BYTES-AS-PRINTF: $TMP/poisoned.bin is SRC with those bytes at BYTE of TENSOR's data
poison() {
    cp $1 $TMP/poisoned.bin
    _at=$(python3 -c "
import struct; d=open('$1','rb').read(); n,t=struct.unpack_from('<I',d,12)[0],struct.unpack_from('<Q',d,16)[0]
print([struct.unpack_from('<Q',d,t+104*i+88)[0] for i in range(n) if d[t+104*i:t+104*i+48].split(b'\0')[0]==b'$2'][0] + $3)")
    printf "$4" | dd of=$TMP/poisoned.bin bs=1 seek=$_at conv=notrunc 2>/dev/null
}
NAN32='\000\000\300\177'; INF16='\000\174'; NAN16='\000\176'
$BIN/export $M $TMP/reader_q4_0.bin --quant q4_0 > /dev/null 2>&1
for src in $M $TMP/reader_q4_0.bin; do
    poison $src layers.0.attention_norm 0 $NAN32
    expect_error_naming "non-finite (inf or NaN) in the attention of layer 1" "$src: a NaN attention_norm weight" \
        $BIN/run $TMP/poisoned.bin -p "$P1" -n 2
    expect_error_naming "non-finite (inf or NaN) in the attention of layer 1" "$src: a NaN attention_norm weight, one thread, a two-token prompt" \
        $BIN/run $TMP/poisoned.bin -p hi -n 2 --threads 1
done
poison $M layers.0.attention.wq 0 $INF16
expect_error_naming "non-finite (inf or NaN) in the attention of layer 1" "an inf q8_0 scale in wq (a q8_0 KV cache)" \
    $BIN/run $TMP/poisoned.bin -p "$P1" -n 2 --kv q8_0
poison $M layers.0.feed_forward.w2 0 $NAN16
expect_error_naming "non-finite (inf or NaN) in the feed-forward of layer 1" "a NaN q8_0 scale in w2" $BIN/run $TMP/poisoned.bin -p "$P1" -n 2
poison $M tok_embeddings 272 $INF16
expect_error_naming "non-finite (inf or NaN) in the token embeddings" "an inf scale in BOS's embedding" $BIN/run $TMP/poisoned.bin -p "$P1" -n 2
poison $M tok_embeddings $((272 * 4095)) $INF16
expect_error_naming "non-finite (inf or NaN) in the classifier" "an inf scale in the last embedding row, the classifier's" \
    $BIN/run $TMP/poisoned.bin -p "$P1" -n 2
expect_error_naming "non-finite (inf or NaN) in the classifier" "the same with --ppl" $BIN/run $TMP/poisoned.bin -p "$P1" --ppl

# Bad options.
expect_error "-n not a number" $BIN/run $M -n abc
expect_error "-n negative" $BIN/run $M -n -5
expect_error "--threads 0" $BIN/run $M --threads 0
expect_error "--top-p above 1" $BIN/run $M --top-p 1.5
expect_error "-t negative" $BIN/run $M -t -1
expect_error "--ctx 0" $BIN/run $M --ctx 0
expect_error "--ppl with --ctx 1" $BIN/run $M --ppl -p "$P1" --ctx 1
expect_error "unknown option" $BIN/run $M --frobnicate
# quoted arguments with a newline, a carriage return and an escape sequence in them stay on one escaped line
expect_error_naming '--frob\nni\rcate\x1b[2J' "an unknown option with control characters" \
    $BIN/run $M "$(printf -- '--frob\nni\rcate\033[2J')"
expect_error_naming 'no\nsuch\x1b[2J.bin' "a missing model whose name has control characters" \
    $BIN/run "$(printf 'no\nsuch\033[2J.bin')" -p hi
expect_error "option without its value" $BIN/run $M -p
expect_error "-p and -f together" $BIN/run $M -p hi -f $TMP/prompt.txt
expect_error "missing prompt file" $BIN/run $M -f $TMP/nope.txt
expect_error "prompt longer than the context" $BIN/run $M --ctx 8 -p "$P1 $P2"
expect_error "--ppl on a one-token text" $BIN/run $M --ppl -p ''
expect_error "unknown --pos" $BIN/run $M --pos spiral
expect_error "unknown --kv" $BIN/run $M --kv q3
expect_error "--window without rerope or leaky" $BIN/run $M --window 64
expect_error "--leaky-k without leaky" $BIN/run $M --pos rerope --leaky-k 4
expect_error "--logn 1" $BIN/run $M --logn 1
expect_error "--leaky-k below 1" $BIN/run $M --pos leaky --leaky-k 0.5
expect_error "unknown --rope-scaling" $BIN/run $M --rope-scaling wobbly
expect_error "--rope-scaling ntk without a factor" $BIN/run $M --rope-scaling ntk
expect_error "--rope-factor on a model without scaling" $BIN/run $M --rope-factor 2
expect_error "--rope-factor below 1" $BIN/run $M --rope-scaling linear --rope-factor 0.5
expect_error "--rope-orig-ctx with ntk" $BIN/run $M --rope-scaling ntk --rope-factor 2 --rope-orig-ctx 64
expect_error "export with an unknown --quant" $BIN/export $M $TMP/y.bin --quant q3_k
expect_error "export of a truncated model" $BIN/export $TMP/cut.bin $TMP/y.bin
check "failed exports leave no output and no temporary files" sh -c "! ls $TMP/y.bin* >/dev/null 2>&1"
expect_error "export into a missing folder" $BIN/export $M $TMP/no/such/dir/out.bin

# ---------------------------------------------------------------------------
# What only stories260K and its tokenizer can check (the developers' assets):
# llama2.c's exact golden text, its checkpoint versions and tokenizer.bin, the
# f16 fallback of rows that are not a multiple of 32, its float64 oracle.
echo "== command line: stories260K (assets)"
have_assets=1
if [ ! -f "$ASSETS/PROVENANCE.md" ]; then
    have_assets=0
    if [ "$CI" = true ]; then fail "assets found at $ASSETS (required when CI=true)"
    else echo "SKIP command-line tests that need assets: none at $ASSETS"; fi
fi
if [ $have_assets -eq 1 ]; then
    V0=$ASSETS/llama2c/stories260K.bin
    V1=$ASSETS/llama2c/stories260K_v1.bin
    TOK=$ASSETS/llama2c/tok512.bin
    GOLDEN=$ASSETS/golden/stories260K_t0_n200.stdout

    # llama2.c's own test: exact greedy output of stories260K.
    $BIN/run $V0 -z $TOK -t 0 -n 200 > $TMP/golden.out 2> $TMP/golden.err
    check "stories260K.bin -z tok512.bin -t 0 -n 200 prints llama2.c's expected text exactly" cmp -s $TMP/golden.out $GOLDEN
    $BIN/run $V1 -z $TOK -t 0 -n 200 --threads 1 > $TMP/golden1.out 2>/dev/null
    check "the version-1 checkpoint prints the same text" cmp -s $TMP/golden1.out $GOLDEN

    for q in f32 f16 q8_0 q4_0; do
        $BIN/export $V0 $TMP/s_$q.bin --tokenizer $TOK --quant $q 2> $TMP/export_$q.err
        check "export --quant $q succeeds" test -s $TMP/s_$q.bin
    done
    check "export notes the f16 fallback for rows of 172" grep -q "note: 5 matrices have rows that are not a multiple of q8_0's 32 (e.g. layers.0.feed_forward.w2): stored as f16" $TMP/export_q8_0.err
    $BIN/run $TMP/s_f32.bin -t 0 -n 200 > $TMP/golden_f32.out 2>/dev/null
    check "the exported f32 model (tokenizer inside) prints the expected text" cmp -s $TMP/golden_f32.out $GOLDEN
    # Small contexts: --ctx N gives the first N tokens of the story, then stops.
    for n in 1 2 3 7; do
        $BIN/run $TMP/s_f32.bin -t 0 -n 200 --ctx $n > $TMP/ctx_$n.out 2>/dev/null
        check "--ctx $n prints the start of the expected text and stops" python3 -c "
got=open('$TMP/ctx_$n.out',encoding='utf-8').read().rstrip('\\n'); want=open('$GOLDEN',encoding='utf-8').read()
assert 0 < len(got) < 40 and want.startswith(got), repr(got)"
    done
    $EXBIN/generate $TMP/s_f32.bin '' 200 > $TMP/example_generate.out 2> $TMP/example_generate.err
    check "examples/generate prints llama2.c's expected text exactly" cmp -s $TMP/example_generate.out $GOLDEN
    $BIN/run $TMP/s_q8_0.bin -t 0 -n 40 > $TMP/q8.out 2>/dev/null
    check "the q8_0 model still tells the story" grep -q '^Once upon a time, there was a little girl named Lily' $TMP/q8.out
    $BIN/run $TMP/s_f32.bin -p 'Once upon a time' -n 5 --verbose -t 0 --kv f32 > /dev/null 2> $TMP/verbose.err
    check "--verbose --kv f32 prints stories260K's KV cache bytes per token (5 x 4 x (8 + 8) x 4)" grep -q 'kv cache: 1280 bytes per token' $TMP/verbose.err

    # The float64 transformers oracle (tests/oracle): same ids, same NLL, same greedy tokens.
    FIX=tests/fixtures/stories260K_oracle.json
    head -c 1000 $ASSETS/text/tinystories_sample_cs336.txt > $TMP/oracle_tiny.txt
    head -c 3000 $ASSETS/text/pg1342_pride_and_prejudice.txt > $TMP/oracle_pride.txt
    for case in tiny:tinystories:512 pride:pride_ctx128:128; do
        f=${case%%:*}; rest=${case#*:}; name=${rest%%:*}; ctx=${rest#*:}
        $BIN/run $V0 -z $TOK -f $TMP/oracle_$f.txt --tokenize > $TMP/oracle_$f.ids
        check "oracle $name: --tokenize equals SentencePiece's ids" python3 -c "
import json
assert json.load(open('$TMP/oracle_$f.ids'))==json.load(open('$FIX'))['cases']['$name']['ids']"
        for model in $V0 $TMP/s_f32.bin; do
            $BIN/run $model -z $TOK -f $TMP/oracle_$f.txt --ppl --json --ctx $ctx > $TMP/oracle_$f.ppl
            check "oracle $name: --ppl of $(basename $model) within 1e-4 of transformers' float64 NLL" python3 -c "
import json
got=json.load(open('$TMP/oracle_$f.ppl')); want=json.load(open('$FIX'))['cases']['$name']
assert got['tokens']==want['n_tokens'], got
assert abs(got['mean_nll']-want['mean_nll'])<=1e-4*want['mean_nll'], (got, want['mean_nll'])"
        done
        $BIN/run $TMP/s_q8_0.bin -f $TMP/oracle_$f.txt --ppl --json --ctx $ctx > $TMP/oracle_$f.q8
        check "oracle $name: --ppl of the q8_0 export within 1% of transformers' float64 NLL" python3 -c "
import json
got=json.load(open('$TMP/oracle_$f.q8')); want=json.load(open('$FIX'))['cases']['$name']
assert abs(got['mean_nll']-want['mean_nll'])<=1e-2*want['mean_nll'], (got, want['mean_nll'])"
    done
    $BIN/run $V0 -z $TOK -t 0 -n 64 --json > $TMP/oracle_greedy.json 2>/dev/null
    check "oracle: 64 greedy tokens from BOS equal transformers' float64 argmax" python3 -c "
import json
got=json.loads(open('$TMP/oracle_greedy.json').read().splitlines()[-1])['ids']
assert got==json.load(open('$FIX'))['greedy']['ids'], got"

    # llama2.c's files, malformed: truncated checkpoints and tokenizer.bin.
    head -c 500000 $V0 > $TMP/cut_v0.bin
    expect_error "truncated llama2.c checkpoint" $BIN/run $TMP/cut_v0.bin -z $TOK -p hi
    head -c 100000 $V1 > $TMP/cut_v1.bin
    expect_error "truncated llama2.c version-1 checkpoint" $BIN/run $TMP/cut_v1.bin -z $TOK -p hi
    head -c 3000 $TOK > $TMP/cut_tok.bin
    expect_error "truncated tokenizer.bin" $BIN/run $V0 -z $TMP/cut_tok.bin -p hi
    expect_error "llama2.c checkpoint without -z" $BIN/run $V0 -p hi
    expect_error "missing tokenizer file" $BIN/run $V0 -z $TMP/nope.bin -p hi
    # A tokenizer with more tokens than the model's 512 embeddings, in every format -z takes
    for z in $ASSETS/ggml-vocab/ggml-vocab-llama-spm.gguf tests/fixtures/hf/llama3_rope/tokenizer.model \
             tests/fixtures/hf/llama3_rope/tokenizer.json tests/fixtures/hf/llama3_rope; do
        expect_error_naming "more than the model's 512" "-z $(basename $z) (more tokens than the model)" $BIN/run $V0 -z $z -p hi
    done
    expect_error_naming "more than the model's 512" "export --tokenizer with more tokens than the model" \
        $BIN/export $V0 $TMP/big_tok.bin --tokenizer tests/fixtures/hf/llama3_rope/tokenizer.model
    expect_error "export with a truncated tokenizer" $BIN/export $V0 $TMP/y.bin --tokenizer $TMP/cut_tok.bin
    check "a failed export with a tokenizer leaves no output and no temporary files" sh -c "! ls $TMP/y.bin* >/dev/null 2>&1"
fi

# The fuzz targets (tests/fuzz) replayed on their seeds and on every input
# that once broke a promise: no crash, no sanitizer report (under make
# sanitize), and on failure exactly one error line.
REPLAYBIN=
[ "$BIN" = . ] && REPLAYBIN=build/replay
[ "$BIN" = build/sanitize ] && REPLAYBIN=build/sanitize
if [ -z "$REPLAYBIN" ]; then
    echo "SKIP fuzz replays: not built for $BIN"
else
    echo "== fuzz replays"
    for pair in $(cat tests/fuzz/corpora); do
        corpus=${pair%%:*} target=${pair#*:}
        check "fuzz_$target replays the $corpus seeds" sh -c "$REPLAYBIN/fuzz_$target tests/fuzz/seeds/$corpus > $TMP/replay.log 2>&1 || { tail -n 3 $TMP/replay.log; exit 1; }"
    done
    for dir in tests/fuzz/regressions/*/; do
        target=$(basename $dir)
        check "fuzz_$target replays its regressions ($(ls $dir | wc -l) inputs)" sh -c "$REPLAYBIN/fuzz_$target $dir > $TMP/replay.log 2>&1 || { tail -n 3 $TMP/replay.log; exit 1; }"
    done
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
