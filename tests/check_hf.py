#!/usr/bin/env python3
"""Hugging Face checkpoints against the transformers float64 oracle.

For every model folder in tests/fixtures/hf (made by tests/oracle/make_hf_fixtures.py):
export it to f32 and q8_0, then check `--tokenize` id for id and `--ppl --json`
mean NLL (within 1e-4 relative for f32, 1% for q8_0) on each reference text,
and the f32 export's with a q8_0 KV cache on the first text (1%; refused with
one error line where the cached rows are not in blocks of 32),
with the reference's run_args (e.g. a --ctx past a short trained length).
Where the reference has greedy continuations (transformers generating one
token at a time through its cache), the f32 export's `-t 0 --json` ids must
equal them.
Then every tricky string in tokenizer_cases.json through `--tokenize`, against
the ids the tokenizers library gave with add_special_tokens=True.

Usage: check_hf.py BIN_DIR TMP_DIR   Prints PASS/FAIL lines and "N passed, N failed".
"""
import json
import os
import re
import sys

from harness import BIN, TMP, check, export, finish, run

HF = "tests/fixtures/hf"

models = sorted(d for d in os.listdir(HF) if os.path.isfile(os.path.join(HF, d, "reference.json")))
exported = {}
for name in models:
    folder = os.path.join(HF, name)
    ref = json.load(open(os.path.join(folder, "reference.json")))
    args = ref.get("run_args", [])
    files = {}
    for quant in ("f32", "q8_0"):
        out = os.path.join(TMP, f"hf_{name}_{quant}.bin")
        ok, err = export(folder, out, quant)
        check(ok, f"{name}: ./export of the Hugging Face folder to {quant} ({ref['architecture']}, {ref['stored_dtype']})"
              + ("" if ok else f": {err.strip()[-300:]}"))
        files[quant] = out if ok else None
    exported[name] = files["f32"]
    for text in ref["texts"]:
        path = os.path.join(folder, text["file"])
        if files["f32"]:
            rc, out, err = run(files["f32"], "-f", path, "--tokenize")
            ids = json.loads(out) if rc == 0 else None
            check(ids == text["ids"], f"{name} {text['file']}: --tokenize equals the tokenizers library's {len(text['ids'])} ids")
        for quant, tol in (("f32", 1e-4), ("q8_0", 1e-2)):
            if not files[quant]:
                continue
            rc, out, err = run(files[quant], "-f", path, "--ppl", "--json", *args)
            got = json.loads(out)["mean_nll"] if rc == 0 else float("nan")
            rel = abs(got - text["mean_nll"]) / text["mean_nll"]
            check(rel <= tol, f"{name} {text['file']} {quant}: --ppl mean NLL {got:.6f} vs transformers float64 "
                  f"{text['mean_nll']:.6f} (rel {rel:.1e}, limit {tol:g})")
    hf_cfg = json.load(open(os.path.join(folder, "config.json")))
    if "kv_lora_rank" in hf_cfg:  # what a q8_0 cache blocks by 32: each head's rows, or the latent and rotary key
        widths = (hf_cfg["kv_lora_rank"], hf_cfg["qk_rope_head_dim"])
    else:
        widths = (hf_cfg.get("head_dim") or hf_cfg["hidden_size"] // hf_cfg["num_attention_heads"],)
    for text in ref["texts"][:1] if files["f32"] else []:
        rc, out, err = run(files["f32"], "-f", os.path.join(folder, text["file"]), "--ppl", "--json", "--kv", "q8_0", *args)
        if all(w % 32 == 0 for w in widths):
            got = json.loads(out)["mean_nll"] if rc == 0 else float("nan")
            rel = abs(got - text["mean_nll"]) / text["mean_nll"]
            check(rel <= 1e-2, f"{name} {text['file']} f32 weights, --kv q8_0: --ppl mean NLL {got:.6f} vs transformers "
                  f"float64 {text['mean_nll']:.6f} (rel {rel:.1e}, limit 1%)")
        else:
            check(rc == 1 and out == "" and len(err.strip().splitlines()) == 1 and "multiples of 32" in err,
                  f"{name}: --kv q8_0 with cached rows of {widths} numbers (not in 32s): one error line, status 1: {err.strip()}")
    if "kv_lora_rank" in hf_cfg and files["f32"]:  # latent attention: the cache is the compressed one, exactly
        for kv, size in (("f16", 2), ("f32", 4)):
            rc, out, err = run(files["f32"], "-p", "a", "-n", "1", "--verbose", "--kv", kv)
            want = hf_cfg["num_hidden_layers"] * (hf_cfg["kv_lora_rank"] + hf_cfg["qk_rope_head_dim"]) * size
            got = re.search(r"kv cache: (\d+) bytes per token", err)
            check(got is not None and int(got.group(1)) == want,
                  f"{name}: --verbose --kv {kv}: KV cache {got.group(1) if got else '?'} bytes per token = layers x "
                  f"(latent + rotary key) x {size} = {want}")
    for case in ref.get("greedy", []) if files["f32"] else []:
        rc, out, err = run(files["f32"], "-p", case["prompt"], "-t", "0", "-n", str(len(case["ids"])), "--ignore-eos",
                           "--json", *args)
        got = json.loads(out) if rc == 0 else {}
        check(got.get("ids") == case["ids"] and got.get("prompt_tokens") == len(case["prompt_ids"]),
              f"{name}: greedy continuation of a {len(case['prompt_ids'])}-token prompt, {len(case['ids'])} tokens, "
              f"equals transformers' (cached, one token at a time; smallest margin {case['min_margin']:.1e})"
              + ("" if rc == 0 else f": {err.strip()[-200:]}"))

cases = json.load(open(os.path.join(HF, "tokenizer_cases.json")))
for kind, model in (("spm", "llama"), ("bpe", "qwen2")):
    if not exported.get(model):
        continue
    bad = []
    for i, case in enumerate(cases[kind]):
        path = os.path.join(TMP, "case.txt")
        with open(path, "wb") as f:
            f.write(case["text"].encode("utf-8"))
        rc, out, err = run(exported[model], "-f", path, "--tokenize")
        if rc != 0 and case["ids_special"] == []:
            continue  # empty prompt without BOS: nothing to tokenize, an error is right
        if rc != 0 or json.loads(out) != case["ids_special"]:
            bad.append((i, case["text"][:40], out.strip()[:80], case["ids_special"][:12]))
    check(not bad, f"{kind} tokenizer ({model}): {len(cases[kind]) - len(bad)}/{len(cases[kind])} tricky strings "
          f"tokenize as the tokenizers library does" + (f"; first mismatch {bad[0]}" if bad else ""))


# The prompt that NFC lengthens most: U+1D160 decomposes into three code points
# of four bytes each (and does not compose back), so the ids are three times
# as many as the prompt's bytes. --tokenize must give them all (it used to
# refuse the prompt), equal to a byte-level BPE written here over the fixture's
# vocabulary and merges, run on the text Python's unicodedata normalizes. The
# normalized text has no letters, digits or spaces, so the Qwen2 pre-tokenizer
# regex takes it whole (" ?[^\s\p{L}\p{N}]+"): one word.
def gpt2_byte_chars():
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def byte_level_bpe(word, vocab, ranks):
    chars = gpt2_byte_chars()
    parts = [chars[b] for b in word]
    while len(parts) > 1:
        rank, i = min((ranks.get((parts[i], parts[i + 1]), float("inf")), i) for i in range(len(parts) - 1))
        if rank == float("inf"):
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [vocab[p] for p in parts]


if exported.get("qwen2"):
    import unicodedata
    tok = json.load(open(os.path.join(HF, "qwen2", "tokenizer.json")))
    vocab = tok["model"]["vocab"]
    ranks = {tuple(m.split(" ", 1) if isinstance(m, str) else m): r for r, m in enumerate(tok["model"]["merges"])}
    prompt = "\U0001D160" * 100
    normalized = unicodedata.normalize("NFC", prompt)
    one_word = all(unicodedata.category(c)[0] not in "LNZ" and not c.isspace() for c in normalized)
    want = byte_level_bpe(normalized.encode(), vocab, ranks)
    path = os.path.join(TMP, "nfc_longest.txt")
    with open(path, "wb") as f:
        f.write(prompt.encode())
    rc, out, err = run(exported["qwen2"], "-f", path, "--tokenize")
    got = json.loads(out) if rc == 0 else None
    check(one_word and len(normalized.encode()) == 3 * len(prompt.encode()) and got == want,
          f"qwen2: --tokenize of {len(prompt.encode())} bytes of U+1D160 (NFC: three times as many) gives the "
          f"{len(want)} ids of a byte-level BPE over the NFC text ({err.strip()[-120:] if rc else len(got)})")

finish()
