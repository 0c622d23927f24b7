#!/bin/sh
# Binary size and peak memory per target: the README's embedding table.
#   bench/footprint.sh SMALL_MODEL LARGE_MODEL [FOLDER...]
# Each FOLDER holds a `run` (build/static, or build/cross/T, whose `run` is
# a script running run.bin under qemu-user). For every folder: the size of
# the static binary, and the peak resident memory (GNU time's max RSS) of
# generating 16 tokens from each model with 1 thread, and of `run --help`
# (what the loader, libc and, under qemu, the emulator take before any
# model; subtract it to compare targets).
set -eu
SMALL=$1 LARGE=$2
shift 2
[ $# -gt 0 ] || set -- build/static build/cross/aarch64 build/cross/armhf build/cross/riscv64
TIME=/usr/bin/time
[ -x $TIME ] || { echo "error: needs GNU time (apt-get install time)" >&2; exit 1; }
peak() { # peak KiB of a command, its output thrown away
    $TIME -f '%M' -o /tmp/footprint.$$ "$@" > /dev/null 2>&1 || true
    tail -n 1 /tmp/footprint.$$
}
echo "| target | run binary | run --help | $(basename $SMALL) | $(basename $LARGE) |"
echo "| --- | --- | --- | --- | --- |"
for dir in "$@"; do
    bin=$dir/run.bin; [ -f $bin ] || bin=$dir/run
    size=$(wc -c < $bin)
    base=$(peak $dir/run --help)
    small=$(peak $dir/run $SMALL -p 'Once upon a time' -n 16 --threads 1)
    large=$(peak $dir/run $LARGE -p 'Once upon a time' -n 16 --threads 1)
    echo "| $(basename $dir) | $((size / 1024)) KiB | $((base / 1024)) MiB | $((small / 1024)) MiB | $((large / 1024)) MiB |"
done
rm -f /tmp/footprint.$$
