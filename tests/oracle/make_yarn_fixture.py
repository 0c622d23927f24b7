#!/usr/bin/env python3
"""A YaRN-scaled variant of the tiny Llama fixture, scored by transformers.

Copies tests/fixtures/hf/llama3scale (a tiny f32 Llama saved by transformers)
to OUT_DIR with rope_parameters switched to YaRN (factor 4 over an original
context of 64, beta_fast 32, beta_slow 1), reloads it with transformers in
float64 and writes reference.json in the layout of make_hf_fixtures.py:
per-token NLL of text0..2, on the token ids the source fixture recorded
(the tokenizers library's; transformers 5's own tokenizer class differs from
tokenizer.json on one of the texts). Run on the GPU
machine (transformers, torch):

    python3 tests/oracle/make_yarn_fixture.py tests/fixtures/hf/llama3scale $OUT/yarn
"""
import json
import math
import os
import shutil
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

src, out = sys.argv[1], sys.argv[2]
shutil.copytree(src, out)
source_ids = [t["ids"] for t in json.load(open(os.path.join(src, "reference.json")))["texts"]]
os.remove(os.path.join(out, "reference.json"))
cfg = json.load(open(os.path.join(out, "config.json")))
cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": cfg["rope_parameters"]["rope_theta"], "factor": 4.0,
                          "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)

model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float64, attn_implementation="eager").eval()
texts = []
for i in range(3):
    name = f"text{i}.txt"
    text = open(os.path.join(out, name), encoding="utf-8").read()
    ids = source_ids[i]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    nll = [-lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]
    texts.append({"text": text, "file": name, "ids": ids, "nll": nll, "mean_nll": sum(nll) / len(nll)})
    print(name, len(ids), sum(nll) / len(nll), flush=True)
rot = model.model.rotary_emb
ref = {"model": "yarn", "architecture": "LlamaForCausalLM", "stored_dtype": "F32",
       "config_rope_spelling": "rope_parameters", "rope_parameters": cfg["rope_parameters"],
       "attention_scaling": float(getattr(rot, "attention_scaling", float("nan"))),
       "inv_freq": [float(x) for x in rot.inv_freq.double().tolist()],
       "reference": "transformers float64 (stock: RMSNorm and RoPE tables computed as transformers computes them)",
       "texts": texts, "versions": {"transformers": transformers.__version__, "torch": torch.__version__}}
json.dump(ref, open(os.path.join(out, "reference.json"), "w"), indent=1)
