#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/seeds/CORPUS/.

Every seed is a small valid input, so the fuzzer starts from files that get
past the first checks: a tiny Llama (16 wide, one layer, the 1000-token
byte-level BPE of tests/fixtures/hf/tokenizers/bpe) written as a Hugging Face
folder here, exported by ./export to our format, written as a llama2.c
checkpoint and as a GGUF file by the small writers below (the formats as
docs/FORMAT.md and the GGUF specification describe them); its vocabulary in
every tokenizer format; JSON documents; command lines for ./run (generation,
scoring, chat, NBCE with a cache folder) and ./export.

seeds/model/tiny-q8_0.bin is also the model fuzz_run runs as "m".

Usage: tests/fuzz/make_seeds.py        (from the repository, after make)
"""
import json
import os
import shutil
import struct
import subprocess
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(ROOT, "tests", "fuzz", "seeds")
BPE = os.path.join(ROOT, "tests", "fixtures", "hf", "tokenizers", "bpe")
SPM = os.path.join(ROOT, "tests", "fixtures", "hf", "tokenizers", "spm")
TEXT = open(os.path.join(ROOT, "tests", "fixtures", "hf", "llama", "text0.txt"), "rb").read()[:300]

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB, CTX = 16, 32, 1, 2, 1, 8, 1000, 256
rng = np.random.default_rng(7)
W = {"model.embed_tokens.weight": (VOCAB, DIM), "model.norm.weight": (DIM,), "lm_head.weight": (VOCAB, DIM)}
for layer in range(LAYERS):
    p = f"model.layers.{layer}."
    W.update({p + "input_layernorm.weight": (DIM,), p + "post_attention_layernorm.weight": (DIM,),
              p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, DIM), p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, DIM),
              p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, DIM), p + "self_attn.o_proj.weight": (DIM, HEADS * HEAD_DIM),
              p + "mlp.gate_proj.weight": (HIDDEN, DIM), p + "mlp.up_proj.weight": (HIDDEN, DIM),
              p + "mlp.down_proj.weight": (DIM, HIDDEN)})
W = {k: (np.ones(s) if len(s) == 1 else rng.normal(0, 0.3, s)).astype(np.float32) for k, s in W.items()}


def put(corpus, name, data):
    os.makedirs(os.path.join(SEEDS, corpus), exist_ok=True)
    with open(os.path.join(SEEDS, corpus, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def archive(args, files=()):
    """fuzz.h's input format: arguments one per line, then "%% NAME" files."""
    out = "\n".join(args).encode()
    for name, data in files:
        out += b"\n%% " + name.encode() + b"\n" + (data if isinstance(data, bytes) else data.encode())
    return out


def safetensors(tensors):
    header, blob = {}, b""
    for name, a in tensors.items():
        a = a.astype(np.float16)  # half the size of float32 seeds
        header[name] = {"dtype": "F16", "shape": list(a.shape), "data_offsets": [len(blob), len(blob) + a.nbytes]}
        blob += a.tobytes()
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
                     "intermediate_size": HIDDEN, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
                     "head_dim": HEAD_DIM, "num_hidden_layers": LAYERS, "vocab_size": VOCAB,
                     "max_position_embeddings": CTX, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                     "tie_word_embeddings": False, "bos_token_id": 997, "eos_token_id": 997}, indent=1)
TOKENIZER_JSON = open(os.path.join(BPE, "tokenizer.json"), "rb").read()
TOKENIZER_CONFIG = open(os.path.join(BPE, "tokenizer_config.json"), "rb").read()
HF_FILES = [("config.json", CONFIG), ("model.safetensors", safetensors(W)), ("tokenizer.json", TOKENIZER_JSON),
            ("tokenizer_config.json", TOKENIZER_CONFIG)]


def llama2c():
    """A llama2.c version 0 checkpoint: seven int32s, then the float32 weights in its order."""
    L = range(LAYERS)
    g = lambda n: W[n]  # noqa: E731
    parts = [g("model.embed_tokens.weight")]
    for name in ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "post_attention_layernorm", "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"]:
        parts += [g(f"model.layers.{i}.{name}.weight") for i in L]
    parts.append(g("model.norm.weight"))
    parts.append(np.zeros((CTX, HEAD_DIM // 2), np.float32))  # the unused freq_cis tables
    parts.append(np.zeros((CTX, HEAD_DIM // 2), np.float32))
    parts.append(g("lm_head.weight"))
    head = struct.pack("<7i", DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, -VOCAB, CTX)  # negative: a separate classifier
    return head + b"".join(p.astype(np.float32).tobytes() for p in parts)


def gstr(b):
    return struct.pack("<Q", len(b)) + b


def gguf(with_tensors=True):
    """A GGUF version 3 file: the tiny model (f16 matrices) and its vocabulary, or the vocabulary alone."""
    vocab = json.loads(TOKENIZER_JSON)
    tokens = [None] * VOCAB
    for piece, i in vocab["model"]["vocab"].items():
        tokens[i] = piece.encode()
    for t in vocab["added_tokens"]:
        tokens[t["id"]] = t["content"].encode()
    merges = [m if isinstance(m, str) else " ".join(m) for m in vocab["model"]["merges"]]
    kv = []

    def add(key, vtype, payload):
        kv.append(gstr(key.encode()) + struct.pack("<I", vtype) + payload)

    add("general.architecture", 8, gstr(b"llama"))
    for k, v in [("embedding_length", DIM), ("block_count", LAYERS), ("attention.head_count", HEADS),
                 ("attention.head_count_kv", KV_HEADS), ("feed_forward_length", HIDDEN), ("context_length", CTX),
                 ("rope.dimension_count", HEAD_DIM)]:
        add("llama." + k, 4, struct.pack("<I", v))
    add("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5))
    add("tokenizer.ggml.model", 8, gstr(b"gpt2"))
    add("tokenizer.ggml.pre", 8, gstr(b"smollm"))
    add("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, VOCAB) + b"".join(gstr(t) for t in tokens))
    add("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, VOCAB) + struct.pack(f"<{VOCAB}i", *([1] * 997 + [3] * 3)))
    add("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, len(merges)) + b"".join(gstr(m.encode()) for m in merges))
    add("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 997))
    add("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 997))
    add("tokenizer.chat_template", 8, gstr(json.loads(TOKENIZER_CONFIG).get("chat_template", "").encode()))
    infos, blob = [], b""
    if with_tensors:
        names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
        hf_to_gguf = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                      "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                      "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
        for k in W:
            if k.startswith("model.layers."):
                _, _, layer, rest = k.split(".", 3)
                names[k] = f"blk.{layer}.{hf_to_gguf[rest[:-len('.weight')]]}.weight"
        for k, g in names.items():
            a = W[k]
            if k.endswith(("q_proj.weight", "k_proj.weight")):  # llama.cpp's converter: rotate_half rows to adjacent pairs
                h = a.shape[0] // HEAD_DIM
                a = a.reshape(h, 2, HEAD_DIM // 2, DIM).swapaxes(1, 2).reshape(a.shape)
            blob += bytes(-len(blob) % 32)
            ne, typ = list(reversed(a.shape)), 1 if a.ndim == 2 else 0  # matrices f16, norms f32
            a = a.astype(np.float16 if typ else np.float32)
            infos.append(gstr(g.encode()) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", typ, len(blob)))
            blob += a.tobytes()
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kv)) + b"".join(kv) + b"".join(infos)
    return head + bytes(-len(head) % 32) + blob


def llama2c_tokenizer():
    """llama2.c's tokenizer.bin: max piece length, then (score, length, bytes) per token."""
    vocab = json.loads(TOKENIZER_JSON)["model"]["vocab"]
    pieces = sorted(vocab, key=vocab.get)
    body = b"".join(struct.pack("<fi", -float(i), len(p.encode())) + p.encode() for i, p in enumerate(pieces))
    return struct.pack("<i", max(len(p.encode()) for p in pieces)) + body, len(pieces)


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf = os.path.join(tmp, "hf")
        os.makedirs(hf)
        for name, data in HF_FILES:
            with open(os.path.join(hf, name), "wb") as f:
                f.write(data if isinstance(data, bytes) else data.encode())
        models = {}
        for quant in ("q8_0", "q4_0", "f16"):
            out = os.path.join(tmp, f"tiny-{quant}.bin")
            subprocess.run([os.path.join(ROOT, "export"), hf, out, "--quant", quant], check=True, capture_output=True)
            models[quant] = open(out, "rb").read()
            put("model", f"tiny-{quant}.bin", models[quant])
        put("llama2c", "tiny-v0.bin", llama2c())
        put("gguf", "tiny-f16.gguf", gguf())

        # the vocabulary in every format tokenizer_load reads
        tok_bin, n = llama2c_tokenizer()
        put("tokenizer", "llama2c", archive(["tok.bin", str(n)], [("tok.bin", tok_bin)]))
        put("tokenizer", "tokenizer-json", archive(["tokenizer.json"], [("tokenizer.json", TOKENIZER_JSON), ("-", TEXT)]))
        put("tokenizer", "hf-folder", archive(["hf"], [("hf/tokenizer.json", TOKENIZER_JSON),
                                                       ("hf/tokenizer_config.json", TOKENIZER_CONFIG),
                                                       ("hf/generation_config.json", '{"eos_token_id": [997, 999]}')]))
        put("tokenizer", "spm", archive(["t.model"], [("t.model", open(os.path.join(SPM, "tokenizer.model"), "rb").read()),
                                                      ("-", TEXT)]))
        put("tokenizer", "gguf-vocab", archive(["v.gguf"], [("v.gguf", gguf(with_tensors=False))]))

        for i, text in enumerate([TEXT, "Hello <|im_start|>user\nhi<|im_end|> world".encode(), "é\u0301 ﬁ 你好 \xff\xfe".encode("utf-8", "surrogateescape")]):
            for lead in range(4):
                put("encode", f"text{i}-{lead}", bytes([lead]) + text)

        put("json", "config.json", CONFIG)
        put("json", "tokenizer_config.json", TOKENIZER_CONFIG)
        put("json", "history.json", json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \u00e9 \\n"},
                                                {"role": "assistant", "content": "Hello."}]))
        put("json", "safetensors-header.json", dict(HF_FILES)["model.safetensors"][8:8 + 400].split(b'"model.layers')[0] + b'"x":{}}')
        put("json", "numbers.json", '[0, -0.5e-3, 1E+2, 12345678901234567890, "\\ud83d\\ude00", true, false, null, {"a": {"b": []}}]')

        put("run", "generate", archive(["m", "-p", "Once upon a time", "-n", "4", "-t", "0"]))
        put("run", "sample-json", archive(["m", "-p", "Hi", "-n", "3", "-s", "5", "--top-k", "4", "--json"]))
        put("run", "tokenize", archive(["m", "--tokenize", "-f", "p.txt"], [("p.txt", TEXT)]))
        put("run", "ppl", archive(["m", "--ppl", "-f", "p.txt", "--ctx", "32"], [("p.txt", TEXT)]))
        put("run", "positions", archive(["m", "-p", "hello there", "-n", "4", "--pos", "leaky", "--window", "8", "--leaky-k", "4",
                                         "--kv", "q8_0", "--verbose"]))
        put("run", "rope", archive(["m", "-p", "x", "-n", "2", "--rope-scaling", "yarn", "--rope-factor", "2", "--ctx", "128"]))
        put("run", "help", archive(["--help"]))
        put("chat", "chat", archive(["m", "--chat", "-n", "4", "-t", "0"], [("-", "Hello\n\nWho are you?\n")]))
        put("chat", "history", archive(["m", "--chat", "-n", "3", "--chat-history", "h.json", "--system", "Be brief.",
                                        "--chat-template", "chatml"],
                                       [("h.json", json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}])),
                                        ("-", "And now?\n")]))
        docs = [("docs/a.txt", TEXT.decode("utf-8", "replace")), ("docs/sub/b.md", "# Notes\n\nThe key is under the mat.\n"),
                ("docs/c.txt", "Paris is the capital of France. " * 4)]
        put("nbce", "nbce", archive(["m", "--nbce", "docs", "-p", "Where is the key?", "-n", "4", "-t", "0"], docs))
        # a cache folder as a real run leaves it, so mutations reach the cache file reader
        work = os.path.join(tmp, "nbce")
        for name, data in docs:
            os.makedirs(os.path.dirname(os.path.join(work, name)), exist_ok=True)
            open(os.path.join(work, name), "w").write(data)
        shutil.copy(os.path.join(tmp, "tiny-q8_0.bin"), os.path.join(work, "m"))
        args = ["m", "--nbce", "docs", "-p", "Where is the key?", "-n", "4", "-t", "0", "--cache-dir", "cache"]
        subprocess.run([os.path.join(ROOT, "run")] + args, cwd=work, check=True, capture_output=True)
        cached = [("cache/" + f, open(os.path.join(work, "cache", f), "rb").read()) for f in sorted(os.listdir(os.path.join(work, "cache")))]
        put("nbce", "nbce-cache", archive(args, docs + cached[:2]))

        put("export", "hf", archive(["hf", "out.bin", "--quant", "q4_0"], [("hf/" + n, d) for n, d in HF_FILES]))
        put("export", "hf-keep", archive(["hf", "out.bin", "--quant", "f16", "--tokenizer", "none"],
                                         [("hf/" + n, d) for n, d in HF_FILES[:2]]))
        put("export", "ours", archive(["m.bin", "out.bin", "--quant", "q4_k"], [("m.bin", models["f16"])]))
        put("export", "gguf", archive(["m.gguf", "out.bin"], [("m.gguf", gguf())]))


if __name__ == "__main__":
    main()
