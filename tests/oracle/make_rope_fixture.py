#!/usr/bin/env python3
"""Rope-scaling variants of the tiny Llama fixture, scored by transformers.

Copies tests/fixtures/hf/llama3scale (a tiny f32 Llama saved by transformers)
to OUT_DIR with its rope parameters switched to one variant, reloads it with
transformers in float64 and writes reference.json in the layout of
make_hf_fixtures.py: per-token NLL of text0..2 from one forward pass over
each text, on the token ids the source fixture recorded (the tokenizers
library's; transformers 5's own tokenizer class differs from tokenizer.json
on one of the texts).

Variants:
  yarn     factor 4 over an original context of 64, beta_fast 32, beta_slow 1.
  dynamic  dynamic NTK, factor 4, max_position_embeddings 64: the texts run
           past it, so the RoPE base grows with the sequence. The reference
           also holds greedy continuations made one token at a time with the
           KV cache (the way generation sees dynamic NTK: each new token is
           rotated for the length so far, cached keys keep their rotation),
           with the smallest top-1/top-2 logit margin met on the way.

Run on the GPU machine (transformers, torch):

    python3 tests/oracle/make_rope_fixture.py yarn tests/fixtures/hf/llama3scale $OUT/yarn
    python3 tests/oracle/make_rope_fixture.py dynamic tests/fixtures/hf/llama3scale $OUT/dynamic
"""
import inspect
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_generation import greedy_through_cache  # noqa: E402

variant, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.copytree(src, out)
source_ids = [t["ids"] for t in json.load(open(os.path.join(src, "reference.json")))["texts"]]
os.remove(os.path.join(out, "reference.json"))
cfg = json.load(open(os.path.join(out, "config.json")))
theta = cfg["rope_parameters"]["rope_theta"]
run_args = []
if variant == "yarn":
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": theta, "factor": 4.0,
                              "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0}
elif variant == "dynamic":
    cfg["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": theta, "factor": 4.0}
    cfg["max_position_embeddings"] = 64
    run_args = ["--ctx", "512"]  # the engine's default context is the trained length
    from transformers import modeling_rope_utils
    print(inspect.getsource(modeling_rope_utils._compute_dynamic_ntk_parameters))
    print(inspect.getsource(modeling_rope_utils.dynamic_rope_update))
else:
    sys.exit(f"unknown variant {variant}")
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)


def load():
    """A fresh model: dynamic NTK keeps state (the longest length seen) between calls."""
    return AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float64, attn_implementation="eager").eval()




texts = []
for i in range(3):
    name = f"text{i}.txt"
    text = open(os.path.join(out, name), encoding="utf-8").read()
    ids = source_ids[i]
    model = load()  # a longer earlier text would leave dynamic NTK's base raised
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    nll = [-lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]
    texts.append({"text": text, "file": name, "ids": ids, "nll": nll, "mean_nll": sum(nll) / len(nll)})
    print(name, len(ids), sum(nll) / len(nll), flush=True)
rot = model.model.rotary_emb
ref = {"model": variant, "architecture": "LlamaForCausalLM", "stored_dtype": "F32",
       "config_rope_spelling": "rope_parameters", "rope_parameters": cfg["rope_parameters"],
       "attention_scaling": float(getattr(rot, "attention_scaling", float("nan"))),
       "inv_freq": [float(x) for x in getattr(rot, "original_inv_freq", rot.inv_freq).double().tolist()],
       "reference": "transformers float64 (stock: RMSNorm and RoPE tables computed as transformers computes them)",
       "run_args": run_args, "texts": texts,
       "versions": {"transformers": transformers.__version__, "torch": torch.__version__}}
if variant == "dynamic":
    # A short prompt whose continuation crosses the trained length, and a long
    # one already past it (its prompt is rotated for its whole length).
    # The prompts are text (the engine takes text), tokenized by the tokenizers library.
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    cases = []
    for t, n_chars, n_gen in ((0, 80, 90), (1, 600, 40)):
        prompt = texts[t]["text"][:n_chars]
        prompt_ids = tok.encode(prompt).ids
        gen, margin = greedy_through_cache(load(), prompt_ids, n_gen)
        cases.append({"prompt": prompt, "prompt_ids": prompt_ids, "ids": gen, "min_margin": margin})
        print("greedy", len(prompt_ids), n_gen, "min margin", margin, flush=True)
    ref["greedy"] = cases
json.dump(ref, open(os.path.join(out, "reference.json"), "w"), indent=1)
