#!/usr/bin/env python3
"""Write a llama2.c v0 checkpoint (bench/mkmodel.py's output) as an F16 GGUF file,
so llama.cpp's llama-quantize can make the GGUF weight types that bench/compare.sh
runs through every engine. The gguf Python package is llama.cpp's (gguf-py); it
is not part of this repository: put its folder on PYTHONPATH.

Usage (Debian's python with numpy):

    PYTHONPATH=PATH/llama.cpp/gguf-py /usr/bin/python3 bench/mkgguf.py \\
        SHAPE-v0.bin tokenizer.bin SHAPE-f16.gguf

The classifier is written as its own tensor (output.weight, a copy of the
embedding when the checkpoint shares them), as in the real TinyLlama, so that
llama-quantize's mixes give it their usual type. Weights stay in llama2.c's
(Meta's) order of the rotary pairs, which is GGUF's for the llama architecture.
"""
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "oracle"))
from make_fixtures import load_llama2c_v0  # noqa: E402  (the repository's reader of llama2.c checkpoints)

try:
    import gguf
except ImportError:
    sys.exit("mkgguf.py: no gguf package; put llama.cpp's gguf-py folder on PYTHONPATH")


def read_vocab(path, n_vocab):
    """llama2.c's tokenizer.bin: max length, then per token a float score, a length, the bytes."""
    with open(path, "rb") as f:
        data = f.read()
    at, tokens, scores = 4, [], []
    for _ in range(n_vocab):
        score, n = struct.unpack_from("<fi", data, at)
        tokens.append(data[at + 8:at + 8 + n].decode("utf-8", errors="replace"))
        scores.append(score)
        at += 8 + n
    types = []
    for i, t in enumerate(tokens):
        if i == 0:
            types.append(gguf.TokenType.UNKNOWN)
        elif i in (1, 2):
            types.append(gguf.TokenType.CONTROL)
        elif t.startswith("<0x") and t.endswith(">") and len(t) == 6:
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, tok_path, out = sys.argv[1:]
    cfg, W, _ = load_llama2c_v0(src)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = (
        cfg[k] for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"))
    emb, rms_att, wq, wk, wv, wo = W["emb"], W["rms_att"], W["wq"], W["wk"], W["wv"], W["wo"]
    rms_ffn, w1, w2, w3, rms_final, cls = W["rms_ffn"], W["w1"], W["w2"], W["w3"], W["rms_final"], W["wcls"]

    wr = gguf.GGUFWriter(out, "llama")
    wr.add_name("random %dx%d" % (dim, layers))
    wr.add_context_length(seq_len)
    wr.add_embedding_length(dim)
    wr.add_block_count(layers)
    wr.add_feed_forward_length(hidden)
    wr.add_rope_dimension_count(dim // heads)
    wr.add_head_count(heads)
    wr.add_head_count_kv(kv_heads)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = read_vocab(tok_path, vocab)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(tokens)
    wr.add_token_scores(scores)
    wr.add_token_types(types)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)

    f16 = lambda a: np.ascontiguousarray(a, dtype=np.float16)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    wr.add_tensor("token_embd.weight", f16(emb))
    for l in range(layers):
        for name, a in (("attn_q", wq), ("attn_k", wk), ("attn_v", wv), ("attn_output", wo),
                        ("ffn_gate", w1), ("ffn_down", w2), ("ffn_up", w3)):
            wr.add_tensor("blk.%d.%s.weight" % (l, name), f16(a[l]))
        wr.add_tensor("blk.%d.attn_norm.weight" % l, f32(rms_att[l]))
        wr.add_tensor("blk.%d.ffn_norm.weight" % l, f32(rms_ffn[l]))
    wr.add_tensor("output_norm.weight", f32(rms_final))
    wr.add_tensor("output.weight", f16(cls))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    print("wrote %s: dim %d, %d layers, %d heads (%d KV), hidden %d, vocab %d" % (out, dim, layers, heads, kv_heads, hidden, vocab))


if __name__ == "__main__":
    main()
