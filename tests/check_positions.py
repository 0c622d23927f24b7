#!/usr/bin/env python3
"""--pos against the float64 reference of tests/oracle/make_positions_fixture.py:
stories260K on a text past its trained 512 tokens, under RoPE, NoPE, ReRoPE,
Leaky ReRoPE and log-n; --ppl mean NLL within 1e-4 relative (f32 weights).
Usage: check_positions.py BIN_DIR TMP_DIR [ASSETS_DIR]."""
import json
import os
import sys

from harness import TMP, check, finish, have, run

ASSETS = sys.argv[3] if len(sys.argv) > 3 else "../shared/assets"
fx = json.load(open("tests/fixtures/positions_oracle.json"))
model, tok = os.path.join(ASSETS, "llama2c/stories260K.bin"), os.path.join(ASSETS, "llama2c/tok512.bin")
if not have([model, tok, os.path.join(ASSETS, fx["text_file"])], "positions past stories260K's context"):
    finish()
text = os.path.join(TMP, "positions_text.txt")
with open(text, "wb") as f:
    f.write(open(os.path.join(ASSETS, fx["text_file"]), "rb").read()[: fx["n_bytes"]])
base = [model, "-z", tok, "-f", text, "--ctx", str(fx["n_tokens"])]
rc, out, err = run(*base, "--tokenize")
check(rc == 0 and json.loads(out) == fx["ids"], f"positions text: --tokenize gives the reference's {fx['n_tokens']} ids")
for case in fx["cases"]:
    rc, out, err = run(*base, "--ppl", "--json", "--kv", "f32", *case["args"])  # the float64 oracle: an f32 cache
    got = json.loads(out)["mean_nll"] if rc == 0 else float("nan")
    rel = abs(got - case["mean_nll"]) / case["mean_nll"]
    check(rel <= 1e-4, f"{' '.join(case['args'])}: --ppl {got:.6f} vs float64 reference {case['mean_nll']:.6f} "
          f"past the trained {fx['trained_context']} tokens (rel {rel:.1e})")
finish()
