#!/usr/bin/env python3
"""The shipped model, models/reader.bin, against its oracle fixture
(tests/fixtures/reader_oracle.json, made by tests/oracle/make_reader_fixture.py
from the Hugging Face folder it was exported from: SentencePiece's ids and
transformers' numbers in float64). Nothing here needs the developers' assets.

- the config in the file is the Hugging Face config (--verbose's model line);
- each text: --tokenize (-f, byte for byte) equals SentencePiece's ids, and
  --ppl --json --ctx CTX gives its token count and a mean NLL within 1% of
  transformers' (the model is q8_0; its f32 export matched within 1e-5), or
  5e-4 nats where 1% is less (the book text, 0.028 nats per token: q8_0's
  rounding moves it by some 1e-4 whatever its size);
- each tricky string: --tokenize equals SentencePiece's ids with BOS; where
  the string holds a control piece's text (<s>, </s>, <unk>), ./run parses it
  as that token (as the tokenizers library does; SentencePiece's encode keeps
  it as text, and so does the library's tokenizer_encode, which test_model
  checks against these ids), so there the ids must be the control ids with
  each piece of text between them tokenized alone;
- greedy continuations of the fixture's prompts (32 tokens, --ignore-eos):
  the ids equal transformers' up to the first step whose margin between the
  two best logits is below 1 nat, at least 8 steps in all;
- the reading task (tools/reading.py): every row's greedy answer (-n 8) is
  right by reading.answered(), and equals transformers' where its smallest
  margin is at least 1 nat.

Usage: check_reader.py BIN_DIR TMP_DIR [MODEL]   Prints PASS/FAIL lines and "N passed, N failed".
"""
import json
import os
import re
import sys

from harness import TMP, check, finish, run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import reading  # noqa: E402

MODEL = sys.argv[3] if len(sys.argv) > 3 else "models/reader.bin"
FIX = json.load(open("tests/fixtures/reader_oracle.json", encoding="utf-8"))
CONTROL = {"<unk>": 0, "<s>": 1, "</s>": 2}  # SentencePiece's control pieces; ids as models/PROVENANCE.md
MARGIN = 1.0  # nats between the two best logits: below it, q8_0 rounding may pick the other token
work = os.path.join(TMP, "reader")
os.makedirs(work, exist_ok=True)


def text_file(name, text):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    return path


def tokenize(text, name="case.txt"):
    rc, out, err = run(MODEL, "-f", text_file(name, text), "--tokenize")
    return json.loads(out) if rc == 0 else err.strip()


def generate(*args):
    """The --json object of a run, or {} with its error."""
    rc, out, err = run(MODEL, *args, "--json")
    try:
        return json.loads(out.strip().splitlines()[-1]) if rc == 0 else {"error": err.strip()[-200:]}
    except (ValueError, IndexError):
        return {"error": out[-200:]}


def same_text(got, want):
    """SentencePiece's decode drops the space a text's first piece starts
    with; the engine, continuing a prompt, keeps it."""
    return got == want or got == " " + want


# The config: the file's against the Hugging Face config.json's.
rc, out, err = run(MODEL, "-p", "x", "-n", "0", "--verbose")
m = FIX["model"]
want = (f"model: dim {m['hidden_size']}, {m['num_hidden_layers']} layers, {m['num_attention_heads']} heads "
        f"({m['num_key_value_heads']} KV heads, head dim {m['hidden_size'] // m['num_attention_heads']}), "
        f"hidden {m['intermediate_size']}, vocab {m['vocab_size']}, trained context {m['max_position_embeddings']}")
check(rc == 0 and want in err.splitlines(), f"{MODEL}: the config is the Hugging Face config ({want})")

# Texts: ids and NLL.
for t in FIX["texts"]:
    got = tokenize(t["text"], f"text_{t['name']}.txt")
    check(got == t["ids"], f"text {t['name']}: --tokenize equals SentencePiece's {len(t['ids'])} ids"
          + ("" if got == t["ids"] else f" (got {str(got)[:120]})"))
    rc, out, err = run(MODEL, "-f", os.path.join(work, f"text_{t['name']}.txt"), "--ppl", "--json", "--ctx", str(t["ctx"]))
    o = json.loads(out) if rc == 0 else {}
    tol = max(0.01 * t["mean_nll"], 5e-4)
    ok = o.get("tokens") == len(t["ids"]) and abs(o.get("mean_nll", float("nan")) - t["mean_nll"]) <= tol
    check(ok, f"text {t['name']}: --ppl --ctx {t['ctx']} over {len(t['ids'])} tokens, mean NLL "
              f"{o.get('mean_nll', float('nan')):.6f} vs transformers' float64 {t['mean_nll']:.6f} (within {tol:.2g})"
          + ("" if rc == 0 else f": {err.strip()[-200:]}"))

# Tricky strings.
control = re.compile("(" + "|".join(re.escape(p) for p in CONTROL) + ")")
plain_bad, special = [], []
for i, case in enumerate(FIX["tokenizer_cases"]):
    got = tokenize(case["text"])
    if not control.search(case["text"]):
        if got != case["ids_special"]:
            plain_bad.append((i, case["text"][:30], str(got)[:80], case["ids_special"][:12]))
        continue
    want = [1]
    for part in control.split(case["text"]):
        if part in CONTROL:
            want.append(CONTROL[part])
        elif part:
            alone = tokenize(part, "part.txt")
            want += alone[1:] if isinstance(alone, list) else [alone]
    special.append(case["text"])
    check(got == want, f"{case['text']!r}: its control piece(s) become their ids, the text between them tokenized "
                       f"alone ({got} vs {want})")
n_plain = len(FIX["tokenizer_cases"]) - len(special)
check(not plain_bad, f"{n_plain - len(plain_bad)} of {n_plain} tricky strings without control pieces: --tokenize -f "
                     f"equals SentencePiece's ids with BOS" + (f"; first mismatch {plain_bad[0]}" if plain_bad else ""))

# Greedy continuations.
compared = 0
for g in FIX["greedy"]:
    o = generate("-p", g["prompt"], "-t", "0", "-n", str(len(g["ids"])), "--ignore-eos")
    k = next((i for i, x in enumerate(g["margins"]) if x < MARGIN), len(g["ids"]))
    compared += k
    ids = o.get("ids", [])
    ok = k > 0 and ids[:k] == g["ids"][:k]
    check(ok, f"greedy after {g['prompt']!r}: the first {k} tokens (before a margin below {MARGIN}) equal "
              f"transformers' float64 argmax" + ("" if ok else f" (got {ids[:k]}, want {g['ids'][:k]}; {o.get('error', '')})"))
    if ids == g["ids"]:
        check(same_text(o["text"], g["text"]), f"greedy after {g['prompt']!r}: all {len(ids)} tokens equal, and so "
                                               f"does the text SentencePiece decodes from them")
check(compared >= 8, f"greedy: {compared} steps compared in all (at least 8)")

# The reading task.
for i, case in enumerate(FIX["reading"]):
    o = generate("-f", text_file(f"row_{i}.txt", case["row"]), "-t", "0", "-n", "8")
    text = o.get("text", "")
    check(reading.answered(text, case["answer"]),
          f"reading {i}: {case['row'].splitlines()[-1]!r} answered {text!r} (right: {case['answer']!r})"
          + ("" if "error" not in o else f": {o['error']}"))
    if case["min_margin"] >= MARGIN:
        ok = o.get("ids") == case["greedy_ids"] and same_text(text, case["greedy_text"])
        check(ok, f"reading {i}: the answer's tokens and text equal transformers' greedy ones "
                  f"(smallest margin {case['min_margin']:.2f})")
finish()
