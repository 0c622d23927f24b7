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

for t in test_kernels test_json test_tokenizer test_model; do
    run_suite $t $TESTBIN/$t "$ASSETS"
done
# TEST_SUBSET=core (make test-cross in CI, where every program runs under
# qemu): the C unit tests and the command-line checks below, without these
# suites of Hugging Face fixtures, chat and NBCE options.
if [ "${TEST_SUBSET:-all}" = core ]; then
    echo "SKIP check_hf, check_export_errors, check_chat, check_nbce_cli, check_nbce: TEST_SUBSET=core"
else
    # Hugging Face checkpoints and tokenizers against transformers (tests/fixtures/hf)
    run_suite check_hf python3 tests/check_hf.py "$BIN" $TMP
    run_suite check_export_errors python3 tests/check_export_errors.py "$BIN" $TMP
    run_suite check_chat python3 tests/check_chat.py "$BIN" $TMP
    run_suite check_nbce_cli python3 tests/check_nbce_cli.py "$BIN" $TMP
    run_suite check_nbce python3 tests/check_nbce.py "$BIN" $TMP "$ASSETS"
fi
# Model files over 2 and 4 GiB (sparse), on 64- and 32-bit targets
run_suite check_large_file python3 tests/check_large_file.py "$BIN" $TMP "$ASSETS"

echo "== command line"
have_assets=1
if [ ! -f "$ASSETS/PROVENANCE.md" ]; then
    have_assets=0
    if [ "$CI" = true ]; then fail "assets found at $ASSETS (required when CI=true)"
    else echo "SKIP command-line tests that need assets: none at $ASSETS"; fi
fi

# expect_error NAME COMMAND...: exit status 1 (no signal), exactly one line on
# stderr, and it starts with "error: ".
expect_error() {
    _check_name=$1; shift
    "$@" > $TMP/err.out 2> $TMP/err.txt
    status=$?
    lines=$(wc -l < $TMP/err.txt)
    if [ $status -eq 1 ] && [ "$lines" -eq 1 ] && grep -q '^error: ' $TMP/err.txt; then
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
: > $TMP/empty.bin
expect_error "empty model file" $BIN/run $TMP/empty.bin
expect_error "export from a missing file" $BIN/export $TMP/does-not-exist.bin $TMP/x.bin
expect_error "export of a text file" $BIN/export $TMP/garbage.bin $TMP/x.bin
check "a failed export leaves no output" test ! -e $TMP/x.bin

if [ $have_assets -eq 1 ]; then
    V0=$ASSETS/llama2c/stories260K.bin
    V1=$ASSETS/llama2c/stories260K_v1.bin
    TOK=$ASSETS/llama2c/tok512.bin
    GOLDEN=$ASSETS/golden/stories260K_t0_n200.stdout

    # llama2.c's own test: exact greedy output of stories260K.
    $BIN/run $V0 -z $TOK -t 0 -n 200 > $TMP/golden.out 2> $TMP/golden.err
    check "stories260K.bin -z tok512.bin -t 0 -n 200 prints llama2.c's expected text exactly" cmp -s $TMP/golden.out $GOLDEN
    check "the stats line reports prompt and generated tokens with tok/s" \
        grep -Eq '^prompt: 1 tokens, [0-9.]+ tok/s \| generated: 200 tokens, [0-9.]+ tok/s$' $TMP/golden.err
    $BIN/run $V1 -z $TOK -t 0 -n 200 --threads 1 > $TMP/golden1.out 2>/dev/null
    check "the version-1 checkpoint prints the same text" cmp -s $TMP/golden1.out $GOLDEN

    for q in f32 f16 q8_0 q4_0; do
        $BIN/export $V0 $TMP/s_$q.bin --tokenizer $TOK --quant $q 2> $TMP/export_$q.err
        check "export --quant $q succeeds" test -s $TMP/s_$q.bin
    done
    check "export notes the f16 fallback for rows of 172" grep -q 'note: 5 matrices have rows that are not a multiple of 32 (e.g. layers.0.feed_forward.w2): stored as f16' $TMP/export_q8_0.err
    $BIN/run $TMP/s_f32.bin -t 0 -n 200 > $TMP/golden_f32.out 2>/dev/null
    check "the exported f32 model (tokenizer inside) prints the expected text" cmp -s $TMP/golden_f32.out $GOLDEN
    # Small contexts: --ctx N gives the first N tokens of the story, then stops.
    for n in 1 2 3 7; do
        $BIN/run $TMP/s_f32.bin -t 0 -n 200 --ctx $n > $TMP/ctx_$n.out 2>/dev/null
        check "--ctx $n prints the start of the expected text and stops" python3 -c "
got=open('$TMP/ctx_$n.out',encoding='utf-8').read().rstrip('\\n'); want=open('$GOLDEN',encoding='utf-8').read()
assert 0 < len(got) < 40 and want.startswith(got), repr(got)"
    done

    # The example programs (examples/): model.h inside another program.
    $EXBIN/generate $TMP/s_f32.bin '' 200 > $TMP/example_generate.out 2> $TMP/example_generate.err
    check "examples/generate prints llama2.c's expected text exactly" cmp -s $TMP/example_generate.out $GOLDEN
    $EXBIN/generate $TMP/s_q8_0.bin 'Once upon a time' 60 0.8 > $TMP/example_sampled.out 2>/dev/null
    $BIN/run $TMP/s_q8_0.bin -p 'Once upon a time' -n 60 -t 0.8 --top-p 0.9 -s 42 --kv f32 > $TMP/run_sampled.out 2>/dev/null
    check "examples/generate samples what ./run samples (same seed, top-p, f32 cache)" cmp -s $TMP/example_sampled.out $TMP/run_sampled.out
    mkdir -p $TMP/example_docs
    printf 'Tom had a red ball. He played with it in the park every day.' > $TMP/example_docs/a.txt
    printf 'Lily had a small cat named Kitty. Kitty liked milk.' > $TMP/example_docs/b.txt
    printf 'The sun was hot. Ben went to swim in the lake.' > $TMP/example_docs/c.txt
    $EXBIN/nbce_qa $TMP/s_q8_0.bin 'What did Lily have?' "$(cat $TMP/example_docs/a.txt)" "$(cat $TMP/example_docs/b.txt)" \
        "$(cat $TMP/example_docs/c.txt)" > $TMP/example_nbce.out 2>/dev/null
    $BIN/run $TMP/s_q8_0.bin --nbce $TMP/example_docs -p 'What did Lily have?' -t 0 -n 48 --kv f32 > $TMP/run_nbce.out 2>/dev/null
    check "examples/nbce_qa over documents in memory answers as ./run --nbce over them as files" \
        sh -c "head -n -1 $TMP/example_nbce.out | cmp -s - $TMP/run_nbce.out"
    check "examples/nbce_qa names the document chosen most: Lily's" grep -qx 'source: document 2' $TMP/example_nbce.out
    expect_error "examples/generate on a missing model" $EXBIN/generate $TMP/nope.bin hi

    $BIN/run $TMP/s_q8_0.bin -t 0 -n 40 > $TMP/q8.out 2>/dev/null
    check "the q8_0 model still tells the story" grep -q '^Once upon a time, there was a little girl named Lily' $TMP/q8.out

    # Sampling: the same seed gives the same text for every thread count.
    for t in 1 2 3; do
        $BIN/run $TMP/s_q8_0.bin -t 0.9 --top-p 0.9 -s 42 -n 120 --threads $t > $TMP/sample_$t.out 2>/dev/null
    done
    check "sampled text with a fixed seed is identical for 1, 2 and 3 threads" \
        sh -c "cmp -s $TMP/sample_1.out $TMP/sample_2.out && cmp -s $TMP/sample_1.out $TMP/sample_3.out"
    $BIN/run $TMP/s_q8_0.bin -t 0.9 -s 43 -n 120 > $TMP/sample_43.out 2>/dev/null
    check "another seed gives another text" sh -c "! cmp -s $TMP/sample_1.out $TMP/sample_43.out"
    $BIN/run $TMP/s_q8_0.bin -t 1 --top-k 1 -s 7 -n 50 > $TMP/topk1.out 2>/dev/null
    $BIN/run $TMP/s_q8_0.bin -t 0 -n 50 > $TMP/greedy50.out 2>/dev/null
    check "--top-k 1 samples the greedy text" cmp -s $TMP/topk1.out $TMP/greedy50.out

    # -f reads the prompt byte for byte, same as -p.
    printf 'Once upon a time' > $TMP/prompt.txt
    $BIN/run $TMP/s_f32.bin -f $TMP/prompt.txt -t 0 -n 30 > $TMP/f.out 2>/dev/null
    $BIN/run $TMP/s_f32.bin -p 'Once upon a time' -t 0 -n 30 > $TMP/p.out 2>/dev/null
    check "-f FILE and -p TEXT give the same output" cmp -s $TMP/f.out $TMP/p.out
    $BIN/run $TMP/s_f32.bin -f - -t 0 -n 30 < $TMP/prompt.txt > $TMP/stdin.out 2>/dev/null
    check "-f - reads the prompt from stdin" cmp -s $TMP/stdin.out $TMP/p.out

    # --tokenize and --json.
    ids=$($BIN/run $TMP/s_f32.bin -p 'Once upon a time' --tokenize)
    check "--tokenize prints the ids with BOS as a JSON array" test "$ids" = "[1, 403, 407, 261, 378]"
    $BIN/run $TMP/s_f32.bin -p 'Once upon a time' -t 0 -n 25 --json > $TMP/gen.json 2>/dev/null
    check "--json prints one valid object with text, ids and counts" python3 -c "
import json,sys
o=json.loads(open('$TMP/gen.json').read().strip().splitlines()[-1])
assert set(o)=={'text','ids','prompt_tokens','generated_tokens','prefill_tok_s','decode_tok_s'}, o
assert o['prompt_tokens']==5 and o['generated_tokens']==25==len(o['ids'])
assert o['text'].startswith(','), o['text']
"
    check "--json text equals the streamed text" python3 -c "
import json
o=json.loads(open('$TMP/gen.json').read().strip().splitlines()[-1])
s=open('$TMP/p.out',encoding='utf-8').read()
# p.out holds 30 tokens, the JSON 25; the JSON text must be its beginning
assert s.startswith(o['text']) and len(o['text'])>20, (s,o['text'])
"
    $BIN/run $TMP/s_f32.bin -f $ASSETS/text/tinystories_sample_cs336.txt --ppl --json > $TMP/ppl.json 2>/dev/null
    check "--ppl --json prints tokens, mean_nll and ppl = exp(mean_nll)" python3 -c "
import json,math
o=json.loads(open('$TMP/ppl.json').read())
assert set(o)=={'tokens','mean_nll','ppl'} and o['tokens']>100, o
assert 0.5<o['mean_nll']<4 and abs(math.exp(o['mean_nll'])-o['ppl'])<1e-3*o['ppl'], o
"
    $BIN/run $TMP/s_f32.bin -f $ASSETS/text/tinystories_sample_cs336.txt --ppl --json --ctx 64 > $TMP/ppl64.json 2>/dev/null
    check "--ppl over a text longer than --ctx scores it in windows (same token count, higher loss)" python3 -c "
import json
a=json.loads(open('$TMP/ppl.json').read()); b=json.loads(open('$TMP/ppl64.json').read())
assert a['tokens']==b['tokens'] and b['mean_nll']>a['mean_nll'], (a,b)
"
    $BIN/run $TMP/s_f32.bin -p 'Once upon a time' -n 5 --verbose -t 0 --kv f32 > /dev/null 2> $TMP/verbose.err
    check "--verbose --kv f32 prints the KV cache bytes per token" grep -q 'kv cache: 1280 bytes per token' $TMP/verbose.err
    $BIN/run $TMP/s_f32.bin -p 'Once upon a time' -n 5 --verbose -t 0 > /dev/null 2> $TMP/verbose.err
    check "the KV cache is f16 by default: half the bytes" grep -q 'kv cache: 640 bytes per token (f16' $TMP/verbose.err
    check "--verbose's memory line: the file's weights + 512 tokens x 640 bytes of KV cache + scratch = its total" python3 -c "
import os,re
line=[l for l in open('$TMP/verbose.err') if l.startswith('memory:')][0]
w,rep,kv,scratch,batch,total=re.fullmatch(r'memory: ([0-9.]+) MiB weights \\(([0-9.]+) MiB of them repacked in memory, the rest mapped\\) \\+ ([0-9.]+) MiB kv cache \\+ ([0-9.]+) MiB scratch \\(batches of ([0-9]+) tokens\\) = ([0-9.]+) MiB\\n',line).groups()
M=1048576
assert abs(float(w)-os.path.getsize('$TMP/s_f32.bin')/M)<0.01 and float(rep)==0, line
assert abs(float(kv)-512*640/M)<0.01 and 0<float(scratch)<64 and int(batch)==512, line
assert abs(float(w)+float(kv)+float(scratch)-float(total))<0.02, line"

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

    # Positions from the command line: the invariants end to end.
    $BIN/run $V0 -z $TOK -f $TMP/oracle_tiny.txt --ppl --json > $TMP/pos_rope.json 2>/dev/null
    $BIN/run $V0 -z $TOK -f $TMP/oracle_tiny.txt --ppl --json --pos rerope --window 100000 > $TMP/pos_rerope_wide.json 2>/dev/null
    check "--pos rerope with a window beyond the text scores exactly as RoPE" cmp -s $TMP/pos_rope.json $TMP/pos_rerope_wide.json
    $BIN/run $V0 -z $TOK -f $TMP/oracle_tiny.txt --ppl --json --pos rerope --window 0 --logn 0 > $TMP/pos_rerope0.json 2>/dev/null
    $BIN/run $V0 -z $TOK -f $TMP/oracle_tiny.txt --ppl --json --pos nope > $TMP/pos_nope.json 2>/dev/null
    check "--pos rerope --window 0 scores exactly as --pos nope" cmp -s $TMP/pos_rerope0.json $TMP/pos_nope.json
    check "--pos nope scores worse than RoPE on stories260K (trained with RoPE)" python3 -c "
import json
a=json.load(open('$TMP/pos_rope.json')); b=json.load(open('$TMP/pos_nope.json'))
assert b['mean_nll'] > a['mean_nll'] + 0.1, (a, b)"

    run_suite check_positions python3 tests/check_positions.py "$BIN" $TMP "$ASSETS"

    # Malformed model files: truncated at several points, corrupted fields.
    size=$(wc -c < $TMP/s_q8_0.bin)
    for cut in 3 100 1024 1500 $((size / 2)) $((size - 1)); do
        head -c $cut $TMP/s_q8_0.bin > $TMP/cut.bin
        expect_error "model truncated to $cut bytes" $BIN/run $TMP/cut.bin -p hi
    done
    cp $TMP/s_q8_0.bin $TMP/padded.bin; printf 'x' >> $TMP/padded.bin
    expect_error "model with trailing bytes" $BIN/run $TMP/padded.bin -p hi
    corrupt() { # corrupt OFFSET BYTES-AS-PRINTF
        cp $TMP/s_q8_0.bin $TMP/bad.bin
        printf "$2" | dd of=$TMP/bad.bin bs=1 seek=$1 conv=notrunc 2>/dev/null
    }
    corrupt 4 '\143'; expect_error "unsupported format version" $BIN/run $TMP/bad.bin -p hi
    corrupt 0 'XXXX'; expect_error "wrong magic" $BIN/run $TMP/bad.bin -p hi
    corrupt 36 '\377\377\377\177'; expect_error "impossible dim in the config" $BIN/run $TMP/bad.bin -p hi
    corrupt 48 '\003\000\000\000'; expect_error "n_heads not a multiple of n_kv_heads" $BIN/run $TMP/bad.bin -p hi
    corrupt $((1024 + 48)) '\115\000\000\000'; expect_error "unknown tensor type" $BIN/run $TMP/bad.bin -p hi
    corrupt $((1024 + 88)) '\001'; expect_error "misaligned tensor offset" $BIN/run $TMP/bad.bin -p hi
    corrupt $((1024 + 56)) '\377\000\000\000'; expect_error "tensor shape that does not match its size" $BIN/run $TMP/bad.bin -p hi
    corrupt 1024 'nonexistent_tensor\000'; expect_error "a required tensor missing" $BIN/run $TMP/bad.bin -p hi
    head -c 500000 $V0 > $TMP/cut_v0.bin
    expect_error "truncated llama2.c checkpoint" $BIN/run $TMP/cut_v0.bin -z $TOK -p hi
    head -c 100000 $V1 > $TMP/cut_v1.bin
    expect_error "truncated llama2.c version-1 checkpoint" $BIN/run $TMP/cut_v1.bin -z $TOK -p hi
    head -c 3000 $TOK > $TMP/cut_tok.bin
    expect_error "truncated tokenizer.bin" $BIN/run $V0 -z $TMP/cut_tok.bin -p hi
    expect_error "llama2.c checkpoint without -z" $BIN/run $V0 -p hi
    expect_error "missing tokenizer file" $BIN/run $V0 -z $TMP/nope.bin -p hi

    # Bad options.
    M=$TMP/s_q8_0.bin
    expect_error "-n not a number" $BIN/run $M -n abc
    expect_error "-n negative" $BIN/run $M -n -5
    expect_error "--threads 0" $BIN/run $M --threads 0
    expect_error "--top-p above 1" $BIN/run $M --top-p 1.5
    expect_error "-t negative" $BIN/run $M -t -1
    expect_error "--ctx 0" $BIN/run $M --ctx 0
    expect_error "unknown option" $BIN/run $M --frobnicate
    expect_error "option without its value" $BIN/run $M -p
    expect_error "-p and -f together" $BIN/run $M -p hi -f $TMP/prompt.txt
    expect_error "missing prompt file" $BIN/run $M -f $TMP/nope.txt
    expect_error "prompt longer than the context" $BIN/run $M --ctx 8 -p 'Once upon a time there was a little girl named Lily who loved to play'
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
    expect_error "export with an unknown --quant" $BIN/export $V0 $TMP/y.bin --quant q3_k
    expect_error "export with a truncated tokenizer" $BIN/export $V0 $TMP/y.bin --tokenizer $TMP/cut_tok.bin
    check "failed exports leave no output and no temporary files" sh -c "! ls $TMP/y.bin* >/dev/null 2>&1"
    expect_error "export into a missing folder" $BIN/export $V0 $TMP/no/such/dir/out.bin --tokenizer $TOK
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
