#!/usr/bin/env python3
"""GGUF files made by llama.cpp's own converter and quantizer (tests/fixtures/gguf,
made outside the repository by tests/oracle/, see GGUF_FIXTURES.md), against
llama.cpp's numbers and transformers' in float64:
- every tensor of every quantized file dequantizes (./export --quant f32) to
  exactly the floats ggml's own to_float gives (their sha256);
- ./run --ppl-chunks --ctx 128 on the held-out text agrees with llama.cpp's
  llama-perplexity on the same file within 2e-3 relative, for every weight type;
- the f16 files' perplexity agrees with transformers in float64 within 1e-4;
- --tokenize equals llama-tokenize's ids;
- ./export --quant q4_k_m chooses llama-quantize's Q4_K_M type for every tensor,
  and its quantizers score no worse than 1.02 x llama-quantize's perplexity;
- an architecture the engine does not run yet is one error line naming it.

Usage: check_gguf_llamacpp.py BIN_DIR TMP_DIR   Prints PASS/FAIL lines and "N passed, N failed".
"""
import hashlib
import json
import os
import struct
import subprocess

from harness import BIN, TMP, check, finish, run

FIX = "tests/fixtures/gguf"
ref = json.load(open(os.path.join(FIX, "reference.json")))
hf = json.load(open(os.path.join(FIX, "hf_reference.json")))["models"]
text = os.path.join(FIX, "heldout_pride.txt")
work = os.path.join(TMP, "gguf_llamacpp")
os.makedirs(work, exist_ok=True)
RUNS = ("llama", "qwen2")  # the architectures the engine runs; the others must be refused by name

# GGUF tensor names as ./export names them (llama's rows need no reordering)
LAYER = {"attn_norm": "attention_norm", "ffn_norm": "ffn_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
         "attn_v": "attention.wv", "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1",
         "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}


def our_name(gguf_name):
    base = gguf_name[:-len(".weight")]
    if base == "token_embd": return "tok_embeddings"
    if base == "output_norm": return "norm"
    if base == "output": return "output"
    _, layer, part = base.split(".", 2)
    return f"layers.{layer}.{LAYER[part]}"


TYPE_NAMES = {0: "f32", 1: "f16", 2: "bf16", 3: "q8_0", 4: "q4_0", 7: "q4_1", 8: "q5_0", 9: "q5_1", 10: "iq4_nl",
              11: "q2_k", 12: "q3_k", 13: "q4_k", 14: "q5_k", 15: "q6_k", 16: "iq4_xs"}  # docs/FORMAT.md


def types_of(path):
    """Our model file's tensors: name -> type name."""
    raw = open(path, "rb").read()
    n, table = struct.unpack_from("<I", raw, 12)[0], struct.unpack_from("<Q", raw, 16)[0]
    return {raw[table + 104 * i: table + 104 * i + 48].split(b"\0")[0].decode():
            TYPE_NAMES.get(struct.unpack_from("<I", raw, table + 104 * i + 48)[0], "?") for i in range(n)}


def tensors_of(path):
    """Our model file's tensors: name -> raw bytes (docs/FORMAT.md)."""
    raw = open(path, "rb").read()
    n, table = struct.unpack_from("<I", raw, 12)[0], struct.unpack_from("<Q", raw, 16)[0]
    out = {}
    for i in range(n):
        e = raw[table + 104 * i: table + 104 * (i + 1)]
        off, nbytes = struct.unpack_from("<QQ", e, 88)
        out[e[:48].split(b"\0")[0].decode()] = raw[off: off + nbytes]
    return out


for name, f in sorted(ref["files"].items()):
    if not f["committed"]:
        continue
    path = os.path.join(FIX, name)
    arch = f["arch"]
    if arch not in RUNS:
        rc, _, err = run(path, "-p", "x", "-n", "1")
        check(rc == 1 and len(err.strip().splitlines()) == 1 and f"'{arch}'" in err,
              f"{name}: an architecture not run yet is one error line naming it ({err.strip()})")
        continue
    # perplexity against llama.cpp's own forward pass on the same file
    p = f["perplexity"]["mainline"]["kv_f16"]
    rc, out, err = run(path, "-f", text, "--ppl-chunks", "--ctx", "128", "--json")
    ours = json.loads(out)["ppl"] if rc == 0 else float("nan")
    rel = abs(ours / p["ppl"] - 1)
    check(rc == 0 and rel <= 2e-3, f"{name}: --ppl-chunks {ours:.4f} vs llama-perplexity {p['ppl']:.4f} (rel {rel:.1e} <= 2e-3)")
    if f["type"].lower() == "f16":
        want = hf[arch]["reference"]["pride_perplexity"]["ppl"]
        rel = abs(ours / want - 1)
        check(rel <= 1e-4, f"{name}: perplexity {ours:.4f} vs transformers float64 {want:.4f} (rel {rel:.1e} <= 1e-4)")
    if arch != "llama":
        continue  # qwen2's q/k rows are reordered on the way in, so their bytes differ from ggml's by design
    # dequantization, bit for bit with ggml's to_float
    f32 = os.path.join(work, name + ".f32.bin")
    e = subprocess.run([os.path.join(BIN, "export"), path, f32, "--quant", "f32"], capture_output=True, text=True)
    if e.returncode:
        check(False, f"{name}: ./export --quant f32 ({e.stderr.strip()})")
        continue
    ours_t = tensors_of(f32)
    bad = [t["name"] for t in f["tensors"] if hashlib.sha256(ours_t.get(our_name(t["name"]), b"")).hexdigest() != t["sha256_f32"]]
    types = sorted({t["type"] for t in f["tensors"]})
    check(not bad, f"{name}: all {len(f['tensors'])} tensors ({', '.join(types)}) dequantize to ggml's floats bit for bit"
          + (f" (differ: {', '.join(bad[:3])})" if bad else ""))
    os.remove(f32)

# ./export --quant q4_k_m picks each tensor's type as llama-quantize's Q4_K_M did for the same model,
# and its own quantizers score close to llama.cpp's
mine = os.path.join(work, "llama-q4_k_m.bin")
e = subprocess.run([os.path.join(BIN, "export"), os.path.join(FIX, "llama-f16.gguf"), mine, "--quant", "q4_k_m"], capture_output=True, text=True)
theirs = ref["files"]["llama-Q4_K_M.gguf"]
got = types_of(mine) if e.returncode == 0 else {}
differ = [t["name"] for t in theirs["tensors"] if got.get(our_name(t["name"])) != t["type"].lower()]
check(e.returncode == 0 and not differ, f"./export --quant q4_k_m gives every tensor llama-quantize's Q4_K_M type"
      + (f" (differ: {', '.join(differ[:3])})" if differ else ""))
rc, out, _ = run(mine, "-f", text, "--ppl-chunks", "--ctx", "128", "--json")
ours, want = (json.loads(out)["ppl"] if rc == 0 else float("nan")), theirs["perplexity"]["mainline"]["kv_f16"]["ppl"]
check(rc == 0 and ours <= want * 1.02, f"our q4_k_m quantization scores {ours:.2f}, no worse than 1.02 x llama-quantize's Q4_K_M {want:.2f}")

# the tokenizer from the GGUF metadata against llama-tokenize on the same file
tok = ref["tokenize"]
bad = []
for case in tok["cases"]:
    rc, out, _ = run(os.path.join(FIX, tok["file"]), "-p", case["text"], "--tokenize")
    if rc or json.loads(out) != case["mainline"]:
        bad.append(case["text"][:20])
check(not bad, f"--tokenize on {tok['file']} equals llama-tokenize for {len(tok['cases'])} strings" + (f" (differ: {bad})" if bad else ""))
rc, out, _ = run(os.path.join(FIX, tok["file"]), "-f", text, "--tokenize")
check(rc == 0 and json.loads(out) == tok["heldout_ids"], f"--tokenize of the held-out text equals llama-tokenize's {len(tok['heldout_ids'])} ids")
finish()
