#!/usr/bin/env python3
"""Oracle fixture for the shipped model (models/reader.bin): what transformers
in float64 and SentencePiece say about the Hugging Face folder it was exported
from. Nothing here comes from the engine.

    python3 tests/oracle/make_reader_fixture.py HF_DIR tests/fixtures/reader_oracle.json

HF_DIR is tools/train/train.py's output (config.json, model.safetensors,
tokenizer.model). The fixture holds, for texts made here:
- `texts`: each text, its ids (BOS + SentencePiece's encode), the NLL of
  every token in float64 and their mean, scored in windows of `ctx` tokens
  overlapping by one token, as `./run --ppl --ctx` scores;
- `greedy`: argmax tokens through the KV cache from a prompt, with the gap
  between the two best logits at each step;
- `reading`: reading-task questions (tools/reading.py, fixed seed): the row,
  the right answer and the greedy answer with its smallest logit gap;
- `tokenizer_cases`: SentencePiece's ids for tricky strings.
"""
import json
import os
import random
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import make_hf_fixtures as hf  # noqa: E402
import reading  # noqa: E402
from hf_generation import greedy_through_cache  # noqa: E402

UNSEEN = ("The lighthouse keeper climbed the narrow stair every evening at dusk, carrying a lamp and a small "
          "book of accounts. From the top he could see the fishing boats coming home across the grey water, "
          "and he wrote down each one by name as it passed the rocks. His daughter, who was nine, liked to "
          "sit beside him and guess which boat would come in last. Most nights she was right, and when she "
          "was wrong she said the sea had cheated.")


def texts():
    paras = reading.read_paragraphs(reading.DEFAULT_FILLER)
    pride = "\n\n".join(paras[400:412])[:1500]
    pride = pride[:pride.rfind(".") + 1]
    long = "\n\n".join(paras[900:960])[:4000]
    rng = random.Random(7)
    names = reading.Names(rng)
    facts = [names.fact() for _ in range(3)]
    task = reading.row(reading.document(rng, paras, 800, facts), facts[1].question()) + f" {facts[1].value}."
    return [("pride", pride, 512), ("unseen", UNSEEN, 512), ("task", task, 512), ("long_ctx128", long, 128)]


def reading_cases(n=12):
    paras = reading.read_paragraphs(reading.DEFAULT_FILLER)
    rng = random.Random(11)
    out = []
    for _ in range(n):
        names = reading.Names(rng)
        facts = [names.fact() for _ in range(rng.randint(1, 3))]
        doc = reading.document(rng, paras, rng.randint(500, 880), facts)
        f = rng.choice(facts)
        out.append({"row": reading.row(doc, f.question()), "answer": f.value})
    return out


def windows(n, ctx):
    """[start, end) windows of ctx tokens overlapping by one, as --ppl cuts."""
    out, s = [], 0
    while True:
        e = min(n, s + ctx)
        out.append((s, e))
        if e == n:
            return out
        s = e - 1


def main():
    hf_dir, out_path = sys.argv[1], sys.argv[2]
    import sentencepiece as spm
    import torch
    from transformers import LlamaForCausalLM
    sp = spm.SentencePieceProcessor(model_file=os.path.join(hf_dir, "tokenizer.model"))
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    model = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").to(torch.float64).eval()
    fix = {"model": {k: cfg.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                             "num_key_value_heads", "intermediate_size", "vocab_size",
                                             "max_position_embeddings")},
           "versions": hf.versions(), "texts": [], "greedy": [], "reading": []}
    with hf.Float64Patch(model, cfg) as patch:
        fix["float64_patch"] = patch.info
        for name, text, ctx in texts():
            ids = [1] + sp.encode(text)
            nll = []
            for s, e in windows(len(ids), ctx):
                nll += list(hf.nll_from_logits(hf.hf_logits(model, ids[s:e]), ids[s:e]))
            fix["texts"].append({"name": name, "text": text, "ctx": ctx, "ids": ids,
                                 "nll": [float(f"{x:.9g}") for x in nll], "mean_nll": float(np.mean(nll))})
        for prompt in ("It is a truth universally acknowledged", "The old house stood at the end of the lane,"):
            ids = [1] + sp.encode(prompt)
            gen, margins = [], []
            past, feed = None, ids
            with torch.no_grad():
                for _ in range(32):
                    o = model(input_ids=torch.tensor([feed]), past_key_values=past, use_cache=True)
                    past = o.past_key_values
                    top = torch.topk(o.logits[0, -1], 2)
                    gen.append(int(top.indices[0]))
                    margins.append(float(top.values[0] - top.values[1]))
                    feed = [gen[-1]]
            fix["greedy"].append({"prompt": prompt, "ids": gen, "margins": margins, "text": sp.decode(gen)})
        for case in reading_cases():
            ids = [1] + sp.encode(case["row"])
            gen, margin = greedy_through_cache(model, ids, 8)
            if 2 in gen:
                gen = gen[:gen.index(2)]
            case.update({"greedy_ids": gen, "greedy_text": sp.decode(gen), "min_margin": margin,
                         "correct": reading.answered(sp.decode(gen), case["answer"])})
            fix["reading"].append(case)
    fix["tokenizer_cases"] = hf.case_entries_sentencepiece(sp, hf.TOKENIZER_CASES)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(fix, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("reading:", sum(c["correct"] for c in fix["reading"]), "of", len(fix["reading"]),
          "; mean NLL", [round(t["mean_nll"], 4) for t in fix["texts"]])


if __name__ == "__main__":
    main()
