#!/usr/bin/env python3
"""GGUF files written by llama.cpp's own converter from Hugging Face fixture folders
(tests/fixtures/hf, made by make_mla_fixtures.py), for the GGUF paths the trained fixtures
of make_gguf_models.py leave out: Llama 3's rope scaling (the converter stores it as the
rope_freqs tensor) and DeepSeek's YaRN with a plain query projection. The folders'
reference.json (transformers float64) is what check_gguf_llamacpp.py compares them with.

Nothing of llama.cpp is in this repository; pass the converter of a llama.cpp checkout:

    python3 tests/oracle/convert_fixtures_to_gguf.py --converter PEER/convert_hf_to_gguf.py \\
        --fixtures tests/fixtures/hf --out tests/fixtures/gguf deepseek_v2_yarn llama3_rope

Needs torch, numpy, sentencepiece and safetensors (the converter's own needs). The config is
copied with the transformers 4 spellings the converter reads (rope_theta and rope_scaling
instead of rope_parameters, and Llama 3's original_max_position_embeddings at the top level
too, where LlamaModel looks for it; DeepSeek's scoring_func, and no head_dim, which it would
write twice); the tokenizer is the folder's tokenizer.model through the converter's SentencePiece
writer, with tokenizer_config.json's add_prefix_space left out (see below). Each file is
written as hf-NAME-f32.gguf.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

# DeepseekV2Model.set_vocab knows only BPE with a known pre-tokenizer hash: use the converter's
# SentencePiece writer instead (LlamaModel tries it first by itself).
RUNNER = r"""
import os, sys
cls, conv = sys.argv[1], sys.argv[2]
sys.argv = [conv] + sys.argv[3:]
sys.path.insert(0, os.path.dirname(os.path.abspath(conv)))
import convert_hf_to_gguf as c
if cls != "-":
    getattr(c, cls).set_vocab = lambda self: self._set_vocab_sentencepiece()
c.main()
"""


def old_spellings(cfg):
    c = dict(cfg)
    rp = c.pop("rope_parameters", None) or {}
    c["rope_theta"] = rp.get("rope_theta", 10000.0)
    if rp.get("rope_type", "default") != "default":
        c["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
        c["rope_scaling"]["type"] = rp["rope_type"]
        if rp["rope_type"] == "llama3":  # LlamaModel reads it at the top level (default 8192)
            c["original_max_position_embeddings"] = rp["original_max_position_embeddings"]
    if c["architectures"][0].startswith("Deepseek"):
        c["scoring_func"] = "softmax"
        c.pop("head_dim", None)
        c["num_key_value_heads"] = c["num_attention_heads"]
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--converter", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("names", nargs="+")
    a = ap.parse_args()
    for name in a.names:
        src = os.path.join(a.fixtures, name)
        with tempfile.TemporaryDirectory() as tmp:
            for f in os.listdir(src):
                if f != "reference.json":
                    shutil.copy(os.path.join(src, f), tmp)
            # the tokenizers library prepends the space by tokenizer.json's Metaspace whatever
            # add_prefix_space says; without the key the converter keeps SentencePiece's default
            tc = os.path.join(tmp, "tokenizer_config.json")
            if os.path.exists(tc):
                t = json.load(open(tc))
                t.pop("add_prefix_space", None)
                json.dump(t, open(tc, "w"), indent=1)
            cfg = json.load(open(os.path.join(src, "config.json")))
            json.dump(old_spellings(cfg), open(os.path.join(tmp, "config.json"), "w"), indent=1)
            cls = "DeepseekV2Model" if cfg["architectures"][0].startswith("Deepseek") else "-"
            out = os.path.join(a.out, f"hf-{name}-f32.gguf")
            p = subprocess.run([sys.executable, "-c", RUNNER, cls, a.converter, tmp, "--outtype", "f32", "--outfile", out,
                                "--model-name", name], capture_output=True, text=True)
            print(name, "rc", p.returncode, (p.stdout + p.stderr)[-1500:] if p.returncode else out, flush=True)


if __name__ == "__main__":
    main()
