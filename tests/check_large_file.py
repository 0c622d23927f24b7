#!/usr/bin/env python3
"""Model files over 2 GiB and over 4 GiB, without the disk: the shipped
model (models/reader.bin, whose greedy tokens are checked against the
transformers oracle first) rewritten with one extra tensor, a sparse hole,
placed before the weights so that every real tensor lies past 2.5 GiB (or
5 GiB) in the file. The loader ignores tensors it has no use for
(docs/FORMAT.md: later features add tensors under new names), so the big file
must give exactly the small one's greedy tokens. On a 32-bit target (armhf) the
5 GiB file cannot be mapped and must be refused with one `error: ` line and
status 1; so must a 3.9 GiB one (no free address range that long) and a
llama2.c int8 (version 2) checkpoint whose f32 expansion would pass 4 GiB.
A 64-bit target runs the 5 GiB file like the small one.
Every target refuses a tensor whose shape says 2^32 bytes more than its
nbytes (a size that wraps in a 32-bit size_t).
Usage: check_large_file.py BIN_DIR TMP_DIR [MODEL]."""
import json
import os
import shutil
import struct
import sys

from harness import BIN, TMP, check, finish, one_error_line, run

MODEL = sys.argv[3] if len(sys.argv) > 3 else "models/reader.bin"
GREEDY = json.load(open("tests/fixtures/reader_oracle.json", encoding="utf-8"))["greedy"][0]
PROMPT = ["-p", GREEDY["prompt"], "-t", "0", "-n", "32", "--ignore-eos", "--json"]
GiB = 1 << 30
HEADER, ENTRY, ALIGN = 1024, 104, 64
work = os.path.join(TMP, "large_file")


def skip(why):
    if os.environ.get("CI") == "true":
        check(False, why + " (required when CI=true)")
    else:
        print("SKIP " + why, flush=True)


def target_bits():
    """32 or 64: the ELF class of BIN/run.bin (the cross builds' binary beside
    its qemu script) or BIN/run, else this host's."""
    for name in ("run.bin", "run"):
        try:
            with open(os.path.join(BIN, name), "rb") as f:
                ident = f.read(5)
        except OSError:
            continue
        if ident[:4] == b"\x7fELF" and ident[4] in (1, 2):
            return 32 if ident[4] == 1 else 64
    return struct.calcsize("P") * 8


def sparse_ok():
    """Whether TMP keeps holes: a 64 MiB file with one byte written takes
    (almost) no blocks."""
    probe = os.path.join(work, "probe")
    with open(probe, "wb") as f:
        f.seek(64 << 20)
        f.write(b"x")
    used = os.stat(probe).st_blocks * 512
    os.remove(probe)
    return used < (1 << 20)


def with_hole(src, dst, hole):
    """Writes src (a native model file) to dst with a tensor 'padding', u8
    [hole] of unwritten bytes, first in the data, so every other tensor moves
    hole bytes further into the file. Header and table are fixed as the
    format asks: n_tensors, each offset (64-byte aligned), file_bytes."""
    data = open(src, "rb").read()
    assert data[:4] == b"RUNM"
    n, table = struct.unpack_from("<IQ", data, 12)[0], struct.unpack_from("<Q", data, 16)[0]
    entries = [bytearray(data[table + i * ENTRY: table + (i + 1) * ENTRY]) for i in range(n)]
    first = -(-(table + (n + 1) * ENTRY) // ALIGN) * ALIGN  # the data starts after the longer table
    pad = bytearray(ENTRY)
    pad[:7] = b"padding"
    struct.pack_into("<II4QQQ", pad, 48, 5, 1, hole, 0, 0, 0, first, hole)  # type 5 = u8, ndim 1
    at = first + -(-hole // ALIGN) * ALIGN
    moved = []
    for e in entries:
        off, nbytes = struct.unpack_from("<QQ", e, 88)
        struct.pack_into("<Q", e, 88, at)
        moved.append((at, data[off: off + nbytes]))
        at = -(-(at + nbytes) // ALIGN) * ALIGN
    end = moved[-1][0] + len(moved[-1][1])
    header = bytearray(data[:HEADER])
    struct.pack_into("<I", header, 12, n + 1)
    struct.pack_into("<Q", header, 24, end)
    with open(dst, "wb") as f:
        f.write(header)
        f.seek(table)
        for e in entries + [pad]:
            f.write(e)
        for off, blob in moved:
            f.seek(off)
            f.write(blob)
        f.truncate(end)
    return min(off for off, _ in moved)


def llama2c_v2(dst):
    """A llama2.c version-2 checkpoint (int8 groups, f32 scales), all holes:
    dim 4096, 6 layers, hidden 11008, vocab 32000, shared classifier. Its
    1.35 G int8 weights fit a 32-bit address space (1.4 GiB file) but their
    f32 expansion (5.0 GiB) does not."""
    dim, hidden, layers, heads, kv, vocab, seq, group = 4096, 11008, 6, 32, 32, 32000, 2048, 64
    f32 = (2 * layers + 1) * dim  # attention_norm, ffn_norm, norm
    q = vocab * dim + layers * (4 * dim * dim + 3 * hidden * dim)
    size = 256 + 4 * f32 + q + q // group * 4
    head = bytearray(256)
    struct.pack_into("<Ii7iB i", head, 0, 0x616B3432, 2, dim, hidden, layers, heads, kv, vocab, seq, 1, group)
    with open(dst, "wb") as f:
        f.write(head)
        f.truncate(size)
    return size


def expect_refusal(path, name, *must):
    rc, out, err = run(path, "-t", "0", "-n", "8")
    lines = err.splitlines()
    ok = one_error_line(rc, err, *must)
    check(ok, f"{name}: status 1, one line: {lines[0] if len(lines) == 1 else err.strip()[:300]!r}"
              + ("" if ok else f" (status {rc}, {len(lines)} lines)"))


def greedy(path):
    """(status, the --json object's ids and text, stderr) of the fixture's prompt."""
    rc, out, err = run(path, *PROMPT)
    try:
        o = json.loads(out.strip().splitlines()[-1]) if rc == 0 else {}
    except (ValueError, IndexError):
        o = {}
    return rc, (o.get("ids"), o.get("text")), err


def expect_same(path, name, want, bits):
    rc, got, err = greedy(path)
    if (bits == 32 and rc == 1 and len(err.splitlines()) == 1 and "system can map" in err
            and os.environ.get("CI") != "true"):
        print(f"SKIP {name}: this 32-bit system has no address range that large free: {err.strip()}", flush=True)
        return
    check(rc == 0 and got == want, f"{name}: the small file's {len(want[0])} greedy tokens and text"
          + ("" if rc == 0 and got == want else f" (status {rc}: {err.strip()[-300:]!r})"))


def main():
    os.makedirs(work, exist_ok=True)
    if not sparse_ok():
        skip(f"large model files: {TMP} does not keep sparse files (the test would write GiBs)")
        return
    bits = target_bits()
    small = MODEL
    rc, want, err = greedy(small)
    k = next((i for i, m in enumerate(GREEDY["margins"]) if m < 1.0), len(GREEDY["ids"]))
    check(rc == 0 and want[0] and want[0][:k] == GREEDY["ids"][:k],
          f"the small file ({small}, {bits}-bit target): its first {k} greedy tokens are transformers' "
          f"(before a margin below 1 nat)" + ("" if rc == 0 else f": {err.strip()[-300:]}"))
    if rc:
        return

    # A size that wraps in 32 bits: tokenizer.pieces claims 2^32 more bytes
    # than it has, which a size_t product would wrap back to its real nbytes.
    wrapped = os.path.join(work, "wrapped.bin")
    data = bytearray(open(small, "rb").read())
    for i in range(struct.unpack_from("<I", data, 12)[0]):
        at = HEADER + i * ENTRY
        if data[at: at + 17] == b"tokenizer.pieces\0":
            struct.pack_into("<Q", data, at + 56, struct.unpack_from("<Q", data, at + 56)[0] + (1 << 32))
    open(wrapped, "wb").write(data)
    expect_refusal(wrapped, "a tensor whose shape is 2^32 bytes more than its nbytes is refused", "tokenizer.pieces")
    os.remove(wrapped)

    big = os.path.join(work, "big_2_5g.bin")
    first = with_hole(small, big, 5 * GiB // 2)
    st = os.stat(big)
    check(st.st_size > 5 * GiB // 2 and first > 5 * GiB // 2 and st.st_blocks * 512 < os.path.getsize(small) + (1 << 20),
          f"a {st.st_size / GiB:.2f} GiB file, weights from byte {first}, {st.st_blocks * 512 >> 10} KiB on disk (the small file's data)")
    expect_same(big, "the 2.5 GiB file (weights past 2^31)", want, bits)
    os.remove(big)

    huge = os.path.join(work, "big_5g.bin")
    first = with_hole(small, huge, 5 * GiB)
    if bits == 32:
        expect_refusal(huge, "32-bit: the 5 GiB file is refused", "5.0 GiB", "32-bit")
    else:
        expect_same(huge, f"64-bit: the 5 GiB file (weights from byte {first}, past 2^32)", want, bits)
    os.remove(huge)

    if bits == 32:
        # Within a 32-bit size_t, but no free address range that long:
        # mmap's ENOMEM must become the same kind of line.
        near = os.path.join(work, "big_3_9g.bin")
        with_hole(small, near, 39 * GiB // 10)
        expect_refusal(near, "32-bit: the 3.9 GiB file is refused", "3.9 GiB", "32-bit")
        os.remove(near)
        v2 = os.path.join(work, "int8_v2.bin")
        size = llama2c_v2(v2)
        expect_refusal(v2, f"32-bit: a {size / GiB:.1f} GiB llama2.c int8 checkpoint expanding to 5.0 GiB of f32 is refused",
                       "5.0 GiB", "32-bit")
        os.remove(v2)


try:
    main()
finally:
    shutil.rmtree(work, ignore_errors=True)
finish()
