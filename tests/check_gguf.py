#!/usr/bin/env python3
"""GGUF model files through ./run: the reader (gguf.h) and the loader.

The files are written here from the shipped model (models/reader.bin) by a
small GGUF writer that follows the format as gguf.h describes it, not
the engine's code:
- as llama.cpp writes the llama family (rotary rows in adjacent pairs, as our
  files): ./run must print exactly what it prints from reader.bin, and score
  the same --ppl, bit for bit;
- as llama.cpp writes qwen2 (rotary rows left in rotate_half order, q/k/v
  biases): the loader reorders q and k, so again the same output bit for bit
  (the biases are zero);
- GGUF version 2 and general.alignment 64 read as well; ./export of the
  llama copy to q8_0 writes models/reader.bin again, byte for byte;
- damaged copies (truncated anywhere in the header, counts and lengths past
  the end, a repeated key, unknown value and tensor types, a tensor past the
  end or misaligned, a missing tensor, a wrong shape, an unsupported
  architecture or weight type): one error line and status 1 each.

Usage: check_gguf.py BIN_DIR TMP_DIR [MODEL]   Prints PASS/FAIL lines and "N passed, N failed".
"""
import os
import resource
import struct
import subprocess
import sys

from harness import BIN, TMP, check, finish, one_error_line, run

MODEL = sys.argv[3] if len(sys.argv) > 3 else "models/reader.bin"
work = os.path.join(TMP, "gguf")
os.makedirs(work, exist_ok=True)

# --- the shipped model, read by its layout (docs/FORMAT.md) ---------------
raw = open(MODEL, "rb").read()
n_tensors, table = struct.unpack_from("<I", raw, 12)[0], struct.unpack_from("<Q", raw, 16)[0]
(arch, dim, n_layers, n_heads, n_kv, head_dim, v_head_dim, hidden, vocab, ctx, eps, theta) = struct.unpack_from("<10i2f", raw, 32)
tensors = {}
for i in range(n_tensors):
    e = raw[table + 104 * i: table + 104 * (i + 1)]
    name = e[:48].split(b"\0")[0].decode()
    typ, ndim = struct.unpack_from("<II", e, 48)
    shape = struct.unpack_from("<4Q", e, 56)[:ndim]
    off, nbytes = struct.unpack_from("<QQ", e, 88)
    tensors[name] = (typ, shape, raw[off: off + nbytes])

# the vocabulary as GGUF's "llama" model spells it: spaces as U+2581, byte pieces as <0xNN>
offsets = struct.unpack(f"<{vocab + 1}I", tensors["tokenizer.offsets"][2])
pieces, types = tensors["tokenizer.pieces"][2], tensors["tokenizer.types"][2]
scores = struct.unpack(f"<{vocab}f", tensors["tokenizer.scores"][2])
tokens = []
for i in range(vocab):
    p = pieces[offsets[i]: offsets[i + 1]]
    tokens.append(p if types[i] == 6 else p.replace(b" ", "\u2581".encode()))

OUR_TO_GGML = {0: 0, 1: 1, 2: 30, 3: 8, 4: 2}  # f32 f16 bf16 q8_0 q4_0 -> ggml's numbers
LAYER = {"attention_norm": "attn_norm.weight", "ffn_norm": "ffn_norm.weight", "attention.wq": "attn_q.weight",
         "attention.wk": "attn_k.weight", "attention.wv": "attn_v.weight", "attention.wo": "attn_output.weight",
         "feed_forward.w1": "ffn_gate.weight", "feed_forward.w2": "ffn_down.weight", "feed_forward.w3": "ffn_up.weight"}


def gstr(b):
    return struct.pack("<Q", len(b)) + b


def kv_entry(key, vtype, payload):
    return gstr(key.encode()) + struct.pack("<I", vtype) + payload


U32, I32, F32, STRING, ARRAY = 4, 5, 6, 8, 9


def half_order(data, rows, row_bytes):
    """The inverse of the loader's reordering: adjacent pairs back to rotate_half order per head."""
    out = bytearray(len(data))
    for r in range(rows):
        head, i = divmod(r, head_dim)
        src = head * head_dim + (2 * i if i < head_dim // 2 else 2 * (i - head_dim // 2) + 1)
        out[r * row_bytes: (r + 1) * row_bytes] = data[src * row_bytes: (src + 1) * row_bytes]
    return bytes(out)


def gguf(arch_name="llama", version=3, alignment=None, rotate_half=False, biases=False, extra_kv=(), drop=(),
         retype=None, reshape=None):
    """A GGUF file of the shipped model; the options make the variants and damage below."""
    kv = [kv_entry("general.architecture", STRING, gstr(arch_name.encode()))]
    if alignment:
        kv.append(kv_entry("general.alignment", U32, struct.pack("<I", alignment)))
    for k, v in [("embedding_length", dim), ("block_count", n_layers), ("attention.head_count", n_heads),
                 ("attention.head_count_kv", n_kv), ("feed_forward_length", hidden), ("context_length", ctx),
                 ("rope.dimension_count", head_dim)]:
        kv.append(kv_entry(f"{arch_name}.{k}", U32, struct.pack("<I", v)))
    kv.append(kv_entry(f"{arch_name}.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", eps)))
    kv.append(kv_entry(f"{arch_name}.rope.freq_base", F32, struct.pack("<f", theta)))
    kv.append(kv_entry("tokenizer.ggml.model", STRING, gstr(b"llama")))
    kv.append(kv_entry("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, vocab) + b"".join(gstr(t) for t in tokens)))
    kv.append(kv_entry("tokenizer.ggml.scores", ARRAY, struct.pack("<IQ", F32, vocab) + struct.pack(f"<{vocab}f", *scores)))
    kv.append(kv_entry("tokenizer.ggml.token_type", ARRAY, struct.pack("<IQ", I32, vocab) + struct.pack(f"<{vocab}i", *types)))
    kv.append(kv_entry("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 1)))
    kv.append(kv_entry("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 2)))
    kv += list(extra_kv)
    items = []
    for name, (typ, shape, data) in tensors.items():
        if name.startswith("tokenizer."):
            continue
        if name == "tok_embeddings":
            g = "token_embd.weight"
        elif name == "norm":
            g = "output_norm.weight"
        else:
            _, layer, rest = name.split(".", 2)
            g = f"blk.{layer}.{LAYER[rest]}"
            if rotate_half and rest in ("attention.wq", "attention.wk"):
                data = half_order(data, shape[0], len(data) // shape[0])
        items.append((g, OUR_TO_GGML[typ], list(reversed(shape)), data))
        if biases and name.endswith(("attention.wq", "attention.wk", "attention.wv")):
            items.append((g.replace(".weight", ".bias"), 0, [shape[0]], bytes(4 * shape[0])))
    align = alignment or 32
    infos, blob = [], b""
    for g, t, ne, data in items:
        if g in drop:
            continue
        t = retype.get(g, t) if retype else t
        ne = reshape.get(g, ne) if reshape else ne
        blob += bytes(-len(blob) % align)
        infos.append(gstr(g.encode()) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", t, len(blob)))
        blob += data
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos), len(kv)) + b"".join(kv) + b"".join(infos)
    return head + bytes(-len(head) % align) + blob, len(head)


def write(name, data):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


PROMPT = ["-p", "It is a truth universally acknowledged", "-t", "0", "-n", "40"]
rc, want, _ = run(MODEL, *PROMPT)
text = os.path.join(work, "pride.txt")
with open(text, "wb") as f:
    f.write(open("tools/data/pride.txt", "rb").read()[:6000])
rc2, want_ppl, _ = run(MODEL, "-f", text, "--ppl", "--json", "--ctx", "256")
check(rc == 0 and rc2 == 0 and len(want) > 40, "the shipped model runs (the reference for the GGUF copies)")

variants = [("llama.gguf", "llama, GGUF version 3", {}),
            ("llama_v2_align64.gguf", "llama, version 2, general.alignment 64", {"version": 2, "alignment": 64}),
            ("qwen2.gguf", "qwen2 (rotate_half rows, zero q/k/v biases)", {"arch_name": "qwen2", "rotate_half": True, "biases": True})]
for name, what, opts in variants:
    data, _ = gguf(**opts)
    path = write(name, data)
    rc, out, err = run(path, *PROMPT)
    check(rc == 0 and out == want, f"{what}: ./run prints what models/reader.bin prints ({err.strip()[-120:]})")
    rc, ppl, err = run(path, "-f", text, "--ppl", "--json", "--ctx", "256")
    check(rc == 0 and ppl == want_ppl, f"{what}: --ppl equals the native file's, bit for bit ({ppl.strip()} vs {want_ppl.strip()})")

out = os.path.join(work, "from_gguf.bin")
p = subprocess.run([os.path.join(BIN, "export"), os.path.join(work, "llama.gguf"), out, "--quant", "q8_0"],
                   capture_output=True, text=True)
check(p.returncode == 0 and open(out, "rb").read() == raw,
      f"./export of the llama GGUF copy to q8_0 writes models/reader.bin again, byte for byte ({p.stderr.strip()[-120:]})")


def expect_error(path, what, word=None):
    rc, out, err = run(path, "-p", "hi", "-n", "1")
    ok = one_error_line(rc, err, *([word] if word else []))
    check(ok, f"{what}: one error line{' naming ' + repr(word) if word else ''} ({err.strip()[:200]})")


good, header_len = gguf()
# truncated: inside the fixed header, in the metadata, in the tensor table, in the data
for cut in (3, 10, 23, 60, 200, 5000, header_len - 10, header_len + 100, len(good) - 1):
    expect_error(write("cut.gguf", good[:cut]), f"GGUF truncated to {cut} bytes")
bad = bytearray(good)
struct.pack_into("<Q", bad, 16, 1 << 40)
expect_error(write("bad.gguf", bytes(bad)), "a metadata count of 2^40", "metadata count")
bad = bytearray(good)
struct.pack_into("<Q", bad, 8, 1 << 40)
expect_error(write("bad.gguf", bytes(bad)), "a tensor count of 2^40", "tensor count")
bad = bytearray(good)
struct.pack_into("<Q", bad, 24, 1 << 50)  # the first key's length
expect_error(write("bad.gguf", bytes(bad)), "a key length past the end of the file", "past the end")
bad = bytearray(good)
struct.pack_into("<I", bad, 4, 1)
expect_error(write("bad.gguf", bytes(bad)), "GGUF version 1", "version 1")
struct.pack_into("<I", bad, 4, 7)
expect_error(write("bad.gguf", bytes(bad)), "GGUF version 7", "version 7")
first_type_at = 24 + 8 + len(b"general.architecture")
bad = bytearray(good)
struct.pack_into("<I", bad, first_type_at, 99)
expect_error(write("bad.gguf", bytes(bad)), "an unknown metadata value type", "unknown type")
data, _ = gguf(extra_kv=[kv_entry("general.architecture", STRING, gstr(b"llama"))])
expect_error(write("bad.gguf", data), "a repeated metadata key", "appears twice")
data, _ = gguf(extra_kv=[kv_entry("general.alignment", U32, struct.pack("<I", 48))])
expect_error(write("bad.gguf", data), "general.alignment 48 (not a power of two)", "power of two")
data, _ = gguf(extra_kv=[kv_entry("tokenizer.ggml.merges", ARRAY, struct.pack("<IQ", STRING, 1 << 40))])
expect_error(write("bad.gguf", data), "an array of 2^40 strings", "longer than the file")
# The tensor table follows the metadata: a tensor count the whole file could
# hold (32 bytes an entry), but not the bytes after the metadata, is refused
# as a count before the table is allocated (it used to be read into garbage).
bad = bytearray(good)
struct.pack_into("<Q", bad, 8, (len(good) - 24) // 32)
expect_error(write("bad.gguf", bytes(bad)), "a tensor count more than the bytes after the metadata hold", "tensor count")

# Files of some 50 bytes with huge counts and lengths: one error line each,
# naming what does not fit, and nothing allocated that they ask for: ./run
# runs in 200 MB of address space (not an ASan build, which reserves
# terabytes for itself at start).
asan = b"__asan_init" in open(os.path.join(BIN, "run"), "rb").read()


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (200 << 20, 200 << 20))


def header(n_tensors, n_kv):
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


tiny = [
    ("a metadata count of 2^31", header(0, 1 << 31) + bytes(28), "metadata count"),
    ("a tensor count of 2^31", header(1 << 31, 0) + bytes(28), "tensor count"),
    ("a key of 2^31 bytes", header(0, 1) + struct.pack("<Q", 1 << 31) + bytes(20), "past the end"),
    ("a string value of 2^31 bytes", header(0, 1) + kv_entry("k", STRING, struct.pack("<Q", 1 << 31)), "past the end"),
    ("an array of 2^29 u32", header(0, 1) + kv_entry("k", ARRAY, struct.pack("<IQ", U32, 1 << 29)), "longer than the file"),
    ("an array of 2^28 strings", header(0, 1) + kv_entry("k", ARRAY, struct.pack("<IQ", STRING, 1 << 28)),
     "longer than the file"),
    ("a tensor name of 2^31 bytes", header(1, 0) + struct.pack("<Q", 1 << 31) + bytes(24), "past the end"),
    ("a tensor of 2^31 dimensions", header(1, 0) + gstr(b"t") + struct.pack("<I", 1 << 31) + bytes(20), "dimensions"),
]
for what, data, word in tiny:
    path = write("tiny.gguf", data)
    p = subprocess.run([os.path.join(BIN, "run"), path, "-p", "hi"], capture_output=True,
                       preexec_fn=None if asan else limited)
    lines = p.stderr.decode("utf-8", "replace").strip().splitlines()
    check(p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0],
          f"a {len(data)}-byte GGUF file with {what}: one error line naming {word!r}"
          f"{'' if asan else ' in 200 MB of memory'} ({lines[:2]})")
data, _ = gguf(arch_name="gpt-neox")
expect_error(write("bad.gguf", data), "an unsupported architecture", "gpt-neox")
data, _ = gguf(arch_name="gpt\nneox\x1b[2J")
expect_error(write("bad.gguf", data), "an architecture name with a newline and an escape sequence", "gpt\\nneox\\x1b[2J")
u32 = lambda key, v: kv_entry(key, U32, struct.pack("<I", v))  # noqa: E731
data, _ = gguf(arch_name="deepseek2")
expect_error(write("bad.gguf", data), "deepseek2 without attention.kv_lora_rank", "kv_lora_rank")
data, _ = gguf(arch_name="qwen3")
expect_error(write("bad.gguf", data), "qwen3 without its per-head q/k norms", "attention.q_norm")
data, _ = gguf(extra_kv=[u32("llama.expert_count", 8)])
expect_error(write("bad.gguf", data), "experts without expert_used_count", "expert_used_count")
data, _ = gguf(extra_kv=[u32("llama.expert_count", 8), u32("llama.expert_used_count", 9)])
expect_error(write("bad.gguf", data), "more experts used than there are", "expert_used_count")
data, _ = gguf(extra_kv=[u32("llama.expert_count", 8), u32("llama.expert_used_count", 2), u32("llama.expert_gating_func", 3)])
expect_error(write("bad.gguf", data), "an unknown expert gating function", "expert_gating_func")
data, _ = gguf(extra_kv=[u32("llama.expert_count", 8), u32("llama.expert_used_count", 2)])
expect_error(write("bad.gguf", data), "experts announced but no router or expert tensors", "feed_forward.router")
data, _ = gguf(extra_kv=[kv_entry("llama.rope.scaling.type", STRING, gstr(b"longrope"))])
expect_error(write("bad.gguf", data), "an unsupported rope scaling", "longrope")
data, _ = gguf(drop={"blk.3.ffn_up.weight"})
expect_error(write("bad.gguf", data), "a missing tensor", "layers.3.feed_forward.w3")
data, _ = gguf(reshape={"blk.0.attn_k.weight": [256, 64]})
expect_error(write("bad.gguf", data), "a wrong shape", "layers.0.attention.wk")
data, _ = gguf(retype={"blk.0.attn_q.weight": 77})
expect_error(write("bad.gguf", data), "an unknown tensor type", "unknown type 77")
data, _ = gguf(retype={"blk.0.attn_q.weight": 19})  # iq1_s: defined by ggml, not run here
expect_error(write("bad.gguf", data), "a weight type this build does not run", "iq1_s")
bad = bytearray(good)
idx = bad.find(b"blk.0.attn_q.weight")
ndim_at = idx + len(b"blk.0.attn_q.weight")
struct.pack_into("<Q", bad, ndim_at + 4 + 16 + 4, 1 << 40)  # its offset
expect_error(write("bad.gguf", bytes(bad)), "a tensor offset past the end", "past the end")
struct.pack_into("<Q", bad, ndim_at + 4 + 16 + 4, 8)
expect_error(write("bad.gguf", bytes(bad)), "a misaligned tensor offset", "aligned")
finish()
