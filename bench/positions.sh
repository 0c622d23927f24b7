#!/usr/bin/env bash
# Extrapolation table for the position schemes (docs/POSITIONS.md): mean NLL of
# a model trained at 512 tokens (llama2.c's stories260K) scored in windows of
# 256 ... 4096 tokens, under RoPE, NoPE, ReRoPE and Leaky ReRoPE (log-n on and
# off) and RoPE with NTK-aware and dynamic NTK scaling, and the decode speed of
# each after a 4000-token prompt.
# Usage: bench/positions.sh [ASSETS_DIR] > table.md   (uses ./run; takes a few minutes)
set -eu
A=${1:-../shared/assets}
M="$A/llama2c/stories260K.bin -z $A/llama2c/tok512.bin"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
head -c 100000 "$A/text/tinystories_200k_niklas6.txt" > "$T/tinystories.txt"
head -c 100000 "$A/text/pg1342_pride_and_prejudice.txt" > "$T/pride.txt"
SCHEMES=("rope:--pos rope" "nope:--pos nope"
         "rerope w128 log-n:--pos rerope --window 128" "rerope w128:--pos rerope --window 128 --logn 0"
         "leaky w128 k8 log-n:--pos leaky --window 128 --leaky-k 8" "leaky w128 k8:--pos leaky --window 128 --leaky-k 8 --logn 0"
         "ntk-aware s8:--rope-scaling ntk --rope-factor 8" "dynamic ntk s2:--rope-scaling dynamic --rope-factor 2")
LENGTHS="256 512 1024 2048 4096"
for text in tinystories pride; do
    echo "Mean NLL, first 100 kB of $text, scored in windows of N tokens (trained at 512):"
    echo
    printf '| scheme |'; for n in $LENGTHS; do printf ' %s |' "$n"; done; echo
    printf '|---|'; for n in $LENGTHS; do printf -- '---:|'; done; echo
    for s in "${SCHEMES[@]}"; do
        printf '| %s |' "${s%%:*}"
        for n in $LENGTHS; do
            # shellcheck disable=SC2086
            nll=$(./run $M -f "$T/$text.txt" --ppl --json --ctx "$n" ${s#*:} 2>/dev/null | sed -E 's/.*"mean_nll": ([0-9.]+).*/\1/')
            printf ' %s |' "$nll"
        done
        echo
    done
    echo
done
echo "Decode after a 4000-token prompt (128 tokens, 1 thread, tok/s, best of 3):"
echo
echo "| scheme | decode tok/s |"
echo "|---|---:|"
head -c 8000 "$A/text/tinystories_200k_niklas6.txt" > "$T/prompt.txt"
for s in "${SCHEMES[@]}"; do
    best=0
    for r in 1 2 3; do
        # shellcheck disable=SC2086
        tps=$(./run $M -f "$T/prompt.txt" --ctx 4200 -n 128 -t 0 --ignore-eos --threads 1 ${s#*:} 2>&1 >/dev/null |
              sed -nE 's/.*generated: [0-9]+ tokens, ([0-9.]+) tok\/s.*/\1/p')
        best=$(python3 -c "print(max($best, ${tps:-0}))")
    done
    echo "| ${s%%:*} | $best |"
done
