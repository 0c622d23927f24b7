#!/usr/bin/env python3
"""Hugging Face oracle fixtures: tiny tokenizers, tiny random checkpoints and
float64 reference NLLs, written to a folder laid out like tests/fixtures/hf/.

Nothing here comes from the engine. See tests/oracle/HF_FIXTURES.md.

Usage:
    python3 make_hf_fixtures.py ASSETS_DIR OUT_DIR            # full run (torch, transformers,
                                                              # tokenizers, sentencepiece)
    python3 make_hf_fixtures.py ASSETS_DIR OUT_DIR --local-check
        # no torch/transformers/tokenizers: trains the SentencePiece model,
        # builds the SentencePiece->BPE merges, and runs the numpy reference on a
        # random checkpoint written by this script's own safetensors writer.

ASSETS_DIR must hold tinystories_200k_niklas6.txt, tinyshakespeare_input.txt and
pg1342_pride_and_prejudice.txt. OUT_DIR/hf/ receives the fixtures.
"""
import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import struct
import sys
import traceback

import numpy as np

# ----------------------------------------------------------------------------
# constants

SPM_VOCAB = 1000
BPE_BASE_VOCAB = 997          # + 3 special tokens = 1000
TRAIN_BYTES_EACH = 150_000    # from tinystories and from tinyshakespeare
SEED_BASE = 1234
INIT_STD = 0.05               # linear / embedding weights ~ N(0, INIT_STD)
BIAS_STD = 0.1                # qwen2 q/k/v biases ~ N(0, BIAS_STD)
NORM_LO, NORM_HI = 0.75, 1.25  # RMSNorm weights ~ U(NORM_LO, NORM_HI)

QWEN2_RE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
            r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# a little non-ASCII text mixed into the tokenizer training corpus so that a few
# multi-byte characters become pieces/merges (the rest goes to byte fallback)
MULTILINGUAL_LINES = [
    "Café au lait, naïve résumé — “quoted” and ‘single’ façade, jalapeño, Zürich.",
    "東京 北京 日本 中国 こんにちは 世界 ありがとう",
    "안녕하세요 세계 감사합니다",
    "Привет мир, спасибо большое.",
    "Ελληνικά γράμματα αβγδ.",
]
MULTILINGUAL_REPEAT = 40

TEXT2 = ("Numbers: 3.14159, 2,718 and 1234567890; dates like 2024-06-30.\n"
         "Unicode: café, naïve, résumé — “quotes” and ‘apostrophes’; 東京 and 北京; "
         "こんにちは; 안녕하세요; Привет!\n"
         "Emoji: 🙂 👍🏽 👨‍👩‍👧\n"
         "Code:\n"
         "def area(r):\n"
         "    return 3.14 * r ** 2  # circle\n"
         "\tif (x >= 10 && y != 0) { z = x / y; }\n"
         "Mixed   spacing,\ttabs and CAPS: DON'T, it's, we'll.\n"
         "The end.")

CHAT_CASES = [
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Hi there!"},
                  {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "What is 2+2?"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Tell me a story."}],
     "add_generation_prompt": True},
]

TOKENIZER_CASES = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n\n", "\r\n",
    "Hello world", " Hello world", "Hello world ", "  Hello   world  ",
    "Hello\tworld\n", "line1\r\nline2\r\n", "a\n\nb\n \n c", "   leading spaces then text",
    "trailing newline\n",
    "12345", "3.14159", "The year 2024 and 1,000,000 people",
    "123456789012345678901234567890", "007 0x1F -42 +3e10",
    "中文测试", "你好，世界！", "日本語のテキスト、カタカナ", "한국어 텍스트",
    "Привет мир", "مرحبا بالعالم", "नमस्ते",
    "🙂", "👍🏽", "👨\u200d👩\u200d👧\u200d👦 family", "🏳\ufe0f\u200d🌈",
    "e\u0301", "café", "cafe\u0301", "\u212b", "A\u030a", "\ufb01 ligature",
    "ÀÉÎÕÜ àéîõü ñ ß ø",
    "def f(x):\n    return x * 2\n",
    "int main() { printf(\"%d\\n\", 42); }",
    "if (a && b || !c) { x += 1; } // comment",
    "<html><body class=\"x\">Hi</body></html>",
    "DON'T", "it's", "We'll they'RE I'M you'VE she'd", "don't stop 'quoted' text",
    "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "<s>[INST] hi [/INST]", "</s>",
    "<unk>", "Hello <s> there", "<0x41>", "<0x0A> <0xFF>",
    "\u2581", "\u2581\u2581hi \u2581", "\u0120",
    "Pneumonoultramicroscopicsilicovolcanoconiosis", "a" * 200,
    "supercalifragilisticexpialidocious" * 3,
    "Mixed CASE and MiXeD", "\u00a0non-breaking\u00a0space", "zero\u200bwidth",
    "bell\x07 and esc\x1b[0m", "!!!???...,,,", "$100 & 50% off #hashtag @user",
    "e.g. i.e. U.S.A.", "Once upon a time, there was a little girl named Lily.",
]

# model specs: hidden/intermediate kept small so the folder stays ~12 MB
MODELS = [
    dict(name="llama", arch="LlamaForCausalLM", cfg_cls="LlamaConfig", tok="spm",
         dtype="bfloat16", shard=True, hidden=256, inter=288, heads=4, kv=2,
         eps=1e-5, theta=10000.0, scaling=None, tie=False),
    dict(name="llama3scale", arch="LlamaForCausalLM", cfg_cls="LlamaConfig", tok="bpe",
         dtype="float32", shard=False, hidden=128, inter=288, heads=2, kv=1,
         eps=1e-5, theta=500000.0,
         scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
         tie=True),
    dict(name="mistral", arch="MistralForCausalLM", cfg_cls="MistralConfig", tok="spm",
         dtype="float16", shard=False, hidden=256, inter=320, heads=4, kv=1,
         eps=1e-5, theta=1000000.0, scaling=None, tie=False),
    dict(name="qwen2", arch="Qwen2ForCausalLM", cfg_cls="Qwen2Config", tok="bpe",
         dtype="bfloat16", shard=False, hidden=256, inter=256, heads=4, kv=2,
         eps=1e-6, theta=1000000.0, scaling=None, tie=True),
    dict(name="smollm3", arch="SmolLM3ForCausalLM", cfg_cls="SmolLM3Config", tok="bpe",
         dtype="float32", shard=False, hidden=128, inter=288, heads=2, kv=1,
         eps=1e-6, theta=5000000.0, scaling=None, tie=True, no_rope_layers=[1, 0]),
]
N_LAYERS = 2
HEAD_DIM = 64
MAX_POS = 512

LOG = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)


def problem(msg):
    log("PROBLEM:", msg)
    PROBLEMS.append(msg)


PROBLEMS = []


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def rsig(x, n=10):
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{n}g}")


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------
# corpus and texts

def read_text(assets, name):
    with open(os.path.join(assets, name), "rb") as f:
        return f.read().decode("utf-8")


def cut_utf8(s, nbytes):
    b = s.encode("utf-8")[:nbytes]
    return b.decode("utf-8", errors="ignore")


def training_corpus(assets):
    ts = cut_utf8(read_text(assets, "tinystories_200k_niklas6.txt"), TRAIN_BYTES_EACH)
    sh = cut_utf8(read_text(assets, "tinyshakespeare_input.txt"), TRAIN_BYTES_EACH)
    ts = ts[:ts.rfind("\n") + 1]
    sh = sh[:sh.rfind("\n") + 1]
    ml = "\n".join(MULTILINGUAL_LINES) + "\n"
    return ts + "\n" + sh + "\n" + ml * MULTILINGUAL_REPEAT


def reference_texts(assets):
    ts = read_text(assets, "tinystories_200k_niklas6.txt")
    s = ts.find("\n\n", 185_000) + 2
    seg = ts[s:s + 800]
    t0 = seg[:seg.rfind(".") + 1]
    pp = read_text(assets, "pg1342_pride_and_prejudice.txt")  # CRLF kept
    s = pp.find("It is a truth universally acknowledged")
    assert s > 0
    seg = pp[s:s + 700]
    t1 = seg[:seg.rfind(".") + 1]
    return [t0, t1, TEXT2]


# ----------------------------------------------------------------------------
# SentencePiece

def train_spm(corpus, workdir):
    import sentencepiece as spm
    os.makedirs(workdir, exist_ok=True)
    inp = os.path.join(workdir, "spm_train.txt")
    with open(inp, "w", encoding="utf-8") as f:
        f.write(corpus)
    prefix = os.path.join(workdir, "spm")
    opts = dict(input=inp, model_prefix=prefix, model_type="bpe", vocab_size=SPM_VOCAB,
                byte_fallback=True, split_digits=True, remove_extra_whitespaces=False,
                add_dummy_prefix=True, normalization_rule_name="identity",
                allow_whitespace_only_pieces=True, character_coverage=0.9995,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                split_by_unicode_script=True, split_by_whitespace=True, split_by_number=True,
                max_sentence_length=4192, max_sentencepiece_length=16,
                num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
                hard_vocab_limit=True, minloglevel=2)
    spm.SentencePieceTrainer.train(**opts)
    opts = {k: v for k, v in opts.items() if k not in ("input", "model_prefix")}
    return prefix + ".model", opts


def spm_pieces(model_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    sp.Load(model_path)
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return sp, pieces


def spm_merges(pieces):
    """SentencePiece BPE -> HF BPE merges, as transformers' generate_merges does
    (LlamaConverter: ids 0..2 get score 0.0; merges ranked by the score of the
    merged piece, highest first)."""
    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    scores = {}
    for i, (p, s) in enumerate(pieces):
        scores[p] = 0.0 if i < 3 else s
    merges = []
    for merge, sc in scores.items():
        local = []
        for k in range(1, len(merge)):
            l, r = merge[:k], merge[k:]
            if l in vocab and r in vocab:
                local.append((l, r, sc))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
    return vocab, [(a, b) for a, b, _ in merges]


class _SpmShim:
    """Stands in for the slow LlamaTokenizer that LlamaConverter expects."""

    def __init__(self, model_path, legacy=True):
        import sentencepiece as spm
        self.vocab_file = model_path
        self.legacy = legacy
        self.add_prefix_space = True
        self.sp = spm.SentencePieceProcessor()
        self.sp.Load(model_path)

    def convert_ids_to_tokens(self, i):
        return self.sp.id_to_piece(i)


def build_spm_tokenizer_json(model_path):
    from tokenizers import Tokenizer, AddedToken, normalizers, decoders, processors
    from tokenizers.models import BPE
    info = {}
    sp, pieces = spm_pieces(model_path)
    vocab, merges = spm_merges(pieces)
    manual = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                           byte_fallback=True, dropout=None))
    manual.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                              normalizers.Replace(" ", "\u2581")])
    manual.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                        decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    conv = None
    try:
        from transformers.convert_slow_tokenizer import LlamaConverter
        conv = LlamaConverter(_SpmShim(model_path, legacy=True)).converted()
        info["converter"] = "LlamaConverter as shipped"
    except Exception as e:  # noqa
        info["converter_error"] = repr(e)
        log("LlamaConverter failed:", repr(e))
        # transformers 5.17: LlamaConverter.tokenizer() still calls the 4.x
        # SentencePieceExtractor(...).extract(vocab_scores) API, which 5.x changed.
        # Give it an extractor with the old API, built on transformers' own
        # generate_merges(vocab, vocab_scores).
        try:
            from transformers import convert_slow_tokenizer as cst

            class _Extractor:
                def __init__(self, path):
                    import sentencepiece as spm
                    self.sp = spm.SentencePieceProcessor()
                    self.sp.Load(path)

                def extract(self, vocab_scores=None):
                    sp = self.sp
                    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
                    return vocab, cst.generate_merges(vocab, vocab_scores)

            class _Conv(cst.LlamaConverter):
                SpmExtractor = _Extractor

            conv = _Conv(_SpmShim(model_path, legacy=True)).converted()
            info["converter"] = ("LlamaConverter with a 4.x-API SpmExtractor using "
                                 "transformers.convert_slow_tokenizer.generate_merges")
        except Exception as e2:  # noqa
            info["converter_error_2"] = repr(e2)
            log("LlamaConverter (compat extractor) failed:", repr(e2))

    def finish(tok):
        tok.post_processor = processors.TemplateProcessing(
            single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t in ("<unk>", "<s>", "</s>")])
        return tok

    manual = finish(manual)
    # agreement with sentencepiece on plain text
    probe = [t for t in TOKENIZER_CASES if t] + MULTILINGUAL_LINES + \
        ["Once upon a time there was a dog.", "  two leading", "x  y   z"]

    def agree(tok):
        n = 0
        for t in probe:
            if tok.encode(t, add_special_tokens=False).ids == sp.encode(t):
                n += 1
        return n

    info["probe_strings"] = len(probe)
    info["manual_agrees_with_sentencepiece"] = agree(manual)
    chosen = manual
    info["built_by"] = "manual (this script's copy of transformers' LlamaConverter, legacy=True)"
    if conv is not None:
        conv = finish(conv)
        cj = json.loads(conv.to_str())
        mj = json.loads(manual.to_str())
        info["converter_model_equals_manual"] = cj["model"] == mj["model"]
        info["converter_normalizer"] = cj.get("normalizer")
        info["converter_pre_tokenizer"] = cj.get("pre_tokenizer")
        info["converter_agrees_with_sentencepiece"] = agree(conv)
        if info["converter_agrees_with_sentencepiece"] >= info["manual_agrees_with_sentencepiece"]:
            chosen = conv
            info["built_by"] = (info["converter"] + ", legacy=True; then TemplateProcessing"
                                "(<s> $A) + <unk>/<s>/</s> as special added tokens")
    return chosen, info


def spm_tokenizer_config():
    def at(c):
        return {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True}
    return {
        "add_bos_token": True, "add_eos_token": False, "add_prefix_space": None,
        "added_tokens_decoder": {"0": at("<unk>"), "1": at("<s>"), "2": at("</s>")},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "chat_template": LLAMA2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "legacy": True,
        "model_max_length": MAX_POS, "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }


# ----------------------------------------------------------------------------
# byte-level BPE (Qwen2 style)

def train_bpe(corpus):
    from tokenizers import (Tokenizer, AddedToken, Regex, decoders, normalizers,
                            pre_tokenizers, processors, trainers)
    from tokenizers.models import BPE
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False, dropout=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_BASE_VOCAB, min_frequency=2, show_progress=False,
                                  special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = corpus.splitlines(keepends=True)
    tok.train_from_iterator(lines, trainer=trainer)
    n = tok.get_vocab_size()
    assert n == BPE_BASE_VOCAB, n
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in BPE_SPECIALS])
    for i, t in enumerate(BPE_SPECIALS):
        assert tok.token_to_id(t) == BPE_BASE_VOCAB + i
    return tok


def bpe_tokenizer_config():
    dec = {}
    for i, t in enumerate(BPE_SPECIALS):
        dec[str(BPE_BASE_VOCAB + i)] = {"content": t, "lstrip": False, "normalized": False,
                                        "rstrip": False, "single_word": False, "special": True}
    return {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": dec,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None, "chat_template": CHATML_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": MAX_POS,
        "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }


# ----------------------------------------------------------------------------
# tokenizer oracle

def case_entries_tokenizers(tok, texts):
    out = []
    for t in texts:
        e1 = tok.encode(t, add_special_tokens=False)
        e2 = tok.encode(t, add_special_tokens=True)
        out.append({"text": t, "ids_plain": e1.ids, "ids_special": e2.ids,
                    "decoded": tok.decode(e1.ids, skip_special_tokens=False),
                    "decoded_skip_special": tok.decode(e2.ids, skip_special_tokens=True),
                    "tokens": e1.tokens})
    return out


def case_entries_sentencepiece(sp, texts, bos=1):
    out = []
    for t in texts:
        ids = sp.encode(t)
        out.append({"text": t, "ids_plain": ids, "ids_special": [bos] + ids,
                    "decoded": sp.decode(ids), "tokens": [sp.id_to_piece(i) for i in ids]})
    return out


def case_entries_transformers(hf, texts):
    out = []
    for t in texts:
        a = list(hf.encode(t, add_special_tokens=False))
        b = list(hf.encode(t, add_special_tokens=True))
        out.append({"text": t, "ids_plain": a, "ids_special": b,
                    "decoded": hf.decode(a, skip_special_tokens=False),
                    "decoded_skip_special": hf.decode(b, skip_special_tokens=True)})
    return out


def diff_count(a, b, key):
    return sum(1 for x, y in zip(a, b) if x[key] != y[key])


def chat_cases(hf, tok_file):
    out = []
    for c in CHAT_CASES:
        e = {"messages": c["messages"], "add_generation_prompt": c["add_generation_prompt"]}
        try:
            s = hf.apply_chat_template(c["messages"], tokenize=False,
                                       add_generation_prompt=c["add_generation_prompt"])
            e["rendered"] = s
            e["ids"] = tok_file.encode(s, add_special_tokens=False).ids
            e["ids_transformers"] = list(hf.encode(s, add_special_tokens=False))
        except Exception as ex:  # noqa
            e["error"] = repr(ex)
            problem(f"chat template: {ex!r}")
        out.append(e)
    return out


# ----------------------------------------------------------------------------
# safetensors (own reader/writer, no torch)

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out, meta = {}, {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        buf = data[s:e]
        dt = v["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, "<f4")
        elif dt == "F16":
            a = np.frombuffer(buf, "<f2")
        elif dt == "BF16":
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "F64":
            a = np.frombuffer(buf, "<f8")
        else:
            raise ValueError(dt)
        out[k] = a.astype(np.float64).reshape(v["shape"])
        meta[k] = {"dtype": dt, "shape": v["shape"], "file": os.path.basename(path)}
    return out, meta


def write_safetensors(path, tensors):
    """tensors: name -> (dtype 'F32'|'F16'|'BF16', float array). For the local check."""
    hdr, blobs, off = {}, [], 0
    for k in sorted(tensors):
        dt, a = tensors[k]
        a = np.asarray(a, np.float32)
        if dt == "F32":
            b = a.astype("<f4").tobytes()
        elif dt == "F16":
            b = a.astype("<f2").tobytes()
        else:  # BF16, round to nearest even
            u = a.view(np.uint32).astype(np.uint64)
            u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
            b = u.tobytes()
        hdr[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load_checkpoint_np(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    W, meta = {}, {}
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    for fn in files:
        w, m = read_safetensors(os.path.join(d, fn))
        W.update(w)
        meta.update(m)
    return W, meta


# ----------------------------------------------------------------------------
# config reading (both spellings) and float64 RoPE

def rope_settings(cfg):
    """-> (theta, scaling dict or None, spelling). Accepts transformers 5.x
    `rope_parameters` and 4.x `rope_theta` + `rope_scaling`."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and rp and "rope_theta" not in rp and "rope_type" not in rp:
        rp = rp.get("full_attention") or next(iter(rp.values()))  # per-layer-type form
    if isinstance(rp, dict) and rp:
        theta = rp.get("rope_theta", cfg.get("rope_theta"))
        typ = rp.get("rope_type", rp.get("type", "default"))
        scaling = None if typ == "default" else dict(rp)
        return float(theta), scaling, "rope_parameters"
    theta = cfg["rope_theta"]
    rs = cfg.get("rope_scaling")
    if rs:
        typ = rs.get("rope_type", rs.get("type", "default"))
        if typ == "default":
            rs = None
    return float(theta), (dict(rs) if rs else None), "rope_theta+rope_scaling"


def inv_freq64(cfg):
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    prf = cfg.get("partial_rotary_factor", 1.0)
    assert prf in (None, 1.0), prf
    theta, scaling, _ = rope_settings(cfg)
    inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    if scaling is None:
        return inv
    typ = scaling.get("rope_type", scaling.get("type"))
    assert typ == "llama3", typ
    factor = float(scaling["factor"])
    lo = float(scaling["low_freq_factor"])
    hi = float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    low_wl, high_wl = old / lo, old / hi
    wl = 2 * math.pi / inv
    out = np.where(wl > low_wl, inv / factor, inv)
    smooth = (old / wl - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wl < high_wl) & ~(wl > low_wl)
    return np.where(medium, smoothed, out)


def rope_layers(cfg):
    L = cfg["num_hidden_layers"]
    nr = cfg.get("no_rope_layers")
    if nr is None:
        return [True] * L
    # SmolLM3: no_rope_layers[i] == 1 -> layer i USES rope; 0 -> NoPE
    return [bool(x) for x in nr]


# ----------------------------------------------------------------------------
# numpy float64 reference forward

def np_rms(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def np_forward(cfg, W, ids, use_rope=None):
    H = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    L = cfg["num_hidden_layers"]
    assert not cfg.get("sliding_window") or cfg.get("use_sliding_window") is False, \
        "sliding window not implemented in the numpy reference"
    if use_rope is None:
        use_rope = rope_layers(cfg)
    T = len(ids)
    x = W["model.embed_tokens.weight"][np.asarray(ids)]
    inv = inv_freq64(cfg)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(ang), np.sin(ang)

    def rot(q):  # q: (h, T, hd), rotate_half convention
        q1, q2 = q[..., :hd // 2], q[..., hd // 2:]
        return q * cos + np.concatenate([-q2, q1], axis=-1) * sin

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(L):
        p = f"model.layers.{l}."

        def lin(name, h):
            y = h @ W[p + name + ".weight"].T
            b = W.get(p + name + ".bias")
            return y + b if b is not None else y
        h = np_rms(x, W[p + "input_layernorm.weight"], eps)
        q = lin("self_attn.q_proj", h).reshape(T, nh, hd).transpose(1, 0, 2)
        k = lin("self_attn.k_proj", h).reshape(T, nkv, hd).transpose(1, 0, 2)
        v = lin("self_attn.v_proj", h).reshape(T, nkv, hd).transpose(1, 0, 2)
        if use_rope[l]:
            q, k = rot(q), rot(k)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=0)
        v = np.repeat(v, rep, axis=0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask
        s = s - s.max(-1, keepdims=True)
        a = np.exp(s)
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(T, nh * hd)
        x = x + lin("self_attn.o_proj", o)
        h = np_rms(x, W[p + "post_attention_layernorm.weight"], eps)
        g = lin("mlp.gate_proj", h)
        u = lin("mlp.up_proj", h)
        x = x + lin("mlp.down_proj", (g / (1 + np.exp(-g))) * u)
    x = np_rms(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight")
    if head is None:
        assert cfg.get("tie_word_embeddings", True), "no lm_head.weight but untied"
        head = W["model.embed_tokens.weight"]
    return x @ head.T


def nll_from_logits(logits, ids):
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    tgt = np.asarray(ids[1:])
    return lse[:-1] - logits[np.arange(len(tgt)), tgt]


# ----------------------------------------------------------------------------
# transformers side

class Float64Patch:
    """Stock HF computes RMSNorm in float32, RoPE cos/sin in float32 and the eager
    attention softmax in float32 even for a float64 model. Replace those three
    spots with float64 versions (RoPE angles from this script's inv_freq64)."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg

    def __enter__(self):
        import torch
        import torch.nn.functional as F
        self.F = F
        self.orig_softmax = F.softmax
        inv = torch.from_numpy(inv_freq64(self.cfg))
        n_norm = n_rot = 0
        self.inv_freq_stock_vs_f64 = []
        for name, mod in self.model.named_modules():
            cls = type(mod).__name__
            if cls.endswith("RMSNorm"):
                eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
                assert eps is not None and abs(eps - self.cfg["rms_norm_eps"]) < 1e-15, (name, eps)

                def norm64(hidden_states, _m=mod, _eps=eps):
                    x = hidden_states
                    return _m.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _eps))
                mod.forward = norm64
                n_norm += 1
            elif cls.endswith("RotaryEmbedding"):
                stock = getattr(mod, "inv_freq", None)
                if stock is not None:
                    st = stock.detach().to(torch.float64).cpu()
                    self.inv_freq_stock_vs_f64.append(
                        float(((st - inv).abs() / inv).max()))
                sc = getattr(mod, "attention_scaling", 1.0)
                assert sc == 1.0, sc

                def rope64(x, position_ids=None, *a, _inv=inv, **k):
                    fr = position_ids.to(torch.float64)[..., None] * _inv.to(x.device)
                    emb = torch.cat([fr, fr], dim=-1)
                    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
                mod.forward = rope64
                n_rot += 1
        L = self.cfg["num_hidden_layers"]
        assert n_norm == 2 * L + 1, n_norm
        assert n_rot >= 1, n_rot
        orig = self.orig_softmax

        def softmax64(input, dim=None, _stacklevel=3, dtype=None):
            if input.dtype == torch.float64 and dtype == torch.float32:
                dtype = torch.float64
            return orig(input, dim=dim, dtype=dtype)
        F.softmax = softmax64
        torch.nn.functional.softmax = softmax64
        self.info = {"rmsnorm_modules": n_norm, "rotary_modules": n_rot, "softmax": "float64",
                     "stock_inv_freq_max_rel_diff_vs_float64": max(self.inv_freq_stock_vs_f64 or [0])}
        return self

    def __exit__(self, *a):
        import torch
        self.F.softmax = self.orig_softmax
        torch.nn.functional.softmax = self.orig_softmax


def hf_logits(model, ids):
    import torch
    with torch.no_grad():
        t = torch.tensor([list(ids)], dtype=torch.long)
        pos = torch.arange(len(ids), dtype=torch.long)[None, :]
        out = model(input_ids=t, position_ids=pos, use_cache=False)
        lg = out.logits[0]
        assert lg.dtype == torch.float64, lg.dtype
        return lg.cpu().numpy()


def make_hf_config(spec, vocab, tok_ids):
    import inspect
    import transformers
    cls = getattr(transformers, spec["cfg_cls"])
    common = dict(vocab_size=vocab, hidden_size=spec["hidden"], intermediate_size=spec["inter"],
                  num_hidden_layers=N_LAYERS, num_attention_heads=spec["heads"],
                  num_key_value_heads=spec["kv"], head_dim=HEAD_DIM, hidden_act="silu",
                  max_position_embeddings=MAX_POS, rms_norm_eps=spec["eps"],
                  initializer_range=INIT_STD, tie_word_embeddings=spec["tie"],
                  bos_token_id=tok_ids["bos"], eos_token_id=tok_ids["eos"],
                  pad_token_id=tok_ids["pad"], attention_dropout=0.0, use_cache=True)
    if spec["cfg_cls"] == "LlamaConfig":
        common.update(attention_bias=False, mlp_bias=False)
    if spec["cfg_cls"] == "MistralConfig":
        common.update(sliding_window=None)
    if spec["cfg_cls"] == "Qwen2Config":
        common.update(use_sliding_window=False, sliding_window=None, max_window_layers=N_LAYERS)
    if spec["cfg_cls"] == "SmolLM3Config":
        common.update(no_rope_layers=list(spec["no_rope_layers"]), use_sliding_window=False,
                      sliding_window=None, attention_bias=False, mlp_bias=False)
    params = inspect.signature(cls.__init__).parameters
    rp = {"rope_type": "default", "rope_theta": spec["theta"]}
    if spec["scaling"]:
        rp.update(spec["scaling"])
    if "rope_parameters" in params:
        cfg = cls(**common, rope_parameters=rp)
        how = "rope_parameters"
    else:
        cfg = cls(**common, rope_theta=spec["theta"], rope_scaling=spec["scaling"])
        how = "rope_theta+rope_scaling"
    return cfg, how


def init_weights(model, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(NORM_LO + (NORM_HI - NORM_LO) * torch.rand(p.shape, generator=g,
                                                                   dtype=torch.float32))
            elif name.endswith(".bias"):
                p.copy_(BIAS_STD * torch.randn(p.shape, generator=g, dtype=torch.float32))
            else:
                p.copy_(INIT_STD * torch.randn(p.shape, generator=g, dtype=torch.float32))


def build_model(spec, out_dir, tok_dir, tok_ids, vocab, texts, seed):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    res = {"model": spec["name"], "architecture": spec["arch"], "tokenizer": spec["tok"],
           "stored_dtype": spec["dtype"], "seed": seed}
    d = os.path.join(out_dir, spec["name"])
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    cfg, how = make_hf_config(spec, vocab, tok_ids)
    res["config_constructed_with"] = how
    cls = getattr(transformers, spec["arch"])
    torch.manual_seed(seed)
    model = cls(cfg)
    init_weights(model, seed)
    dt = getattr(torch, spec["dtype"])
    model = model.to(dt).eval()
    stored = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kw = {}
    if spec["shard"]:
        total = sum(v.numel() * v.element_size() for v in stored.values())
        kw["max_shard_size"] = int(total / 2.5)
        res["max_shard_size"] = kw["max_shard_size"]
    model.save_pretrained(d, **kw)
    for fn in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, fn), os.path.join(d, fn))
    files = sorted(os.listdir(d))
    res["files"] = files
    with open(os.path.join(d, "config.json")) as f:
        saved_cfg = json.load(f)
    theta, scaling, spelling = rope_settings(saved_cfg)
    res["config_rope_spelling"] = spelling
    res["config_rope_keys"] = {k: saved_cfg[k] for k in ("rope_parameters", "rope_theta", "rope_scaling")
                               if k in saved_cfg}
    if spec["scaling"]:
        assert scaling and scaling.get("rope_type") == "llama3", scaling
    else:
        assert scaling is None, scaling
    assert theta == spec["theta"], theta
    if spec["shard"] and "model.safetensors.index.json" not in files:
        problem(f"{spec['name']}: not sharded: {files}")
    # texts
    hf_tok = AutoTokenizer.from_pretrained(d)
    from tokenizers import Tokenizer
    file_tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    sp = None
    if spec["tok"] == "spm":
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor()
        sp.Load(os.path.join(d, "tokenizer.model"))
    ids_list = []
    tinfo = []
    for i, t in enumerate(texts):
        b = t.encode("utf-8")
        with open(os.path.join(d, f"text{i}.txt"), "wb") as f:
            f.write(b)
        ids = list(hf_tok.encode(t, add_special_tokens=True))
        fids = file_tok.encode(t, add_special_tokens=True).ids
        ti = {"file": f"text{i}.txt", "n_bytes": len(b), "sha256": sha256(b),
              "ids_equal_tokenizers_json": ids == fids}
        if ids != fids:
            problem(f"{spec['name']} text{i}: transformers ids != tokenizers tokenizer.json ids")
        if sp is not None:
            ti["ids_equal_sentencepiece_plus_bos"] = ids == [1] + sp.encode(t)
        assert 50 <= len(ids) <= MAX_POS, len(ids)
        ids_list.append(ids)
        tinfo.append(ti)
    # load back (stored values) -> float64
    m2 = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager")
    sd2 = m2.state_dict()
    for k, v in stored.items():
        if k not in sd2:
            continue
        if not torch.equal(sd2[k].to(torch.float64), v.to(torch.float64)):
            raise SystemExit(f"{spec['name']}: reloaded {k} differs from saved values")
    res["reloaded_dtype"] = str(next(m2.parameters()).dtype)
    res["attn_implementation"] = getattr(m2.config, "_attn_implementation", None)
    assert res["attn_implementation"] == "eager", res["attn_implementation"]
    W, meta = load_checkpoint_np(d)
    res["tensors"] = {k: [meta[k]["dtype"], meta[k]["shape"], meta[k]["file"]] for k in sorted(meta)}
    # stock float64 (HF as shipped)
    m_stock = m2.to(torch.float64).eval()
    if spec["name"] == "smollm3":
        ur = [bool(getattr(l.self_attn, "use_rope", True)) for l in m_stock.model.layers]
        res["hf_use_rope_per_layer"] = ur
        res["no_rope_layers"] = saved_cfg.get("no_rope_layers")
        if ur != rope_layers(saved_cfg):
            problem(f"smollm3: HF use_rope {ur} != convention {rope_layers(saved_cfg)}")
    stock_nll = [nll_from_logits(hf_logits(m_stock, ids), ids) for ids in ids_list]
    # patched float64
    m64 = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").to(torch.float64).eval()
    with Float64Patch(m64, saved_cfg) as P:
        logits = [hf_logits(m64, ids) for ids in ids_list]
        res["float64_patch"] = P.info
    nll = [nll_from_logits(lg, ids) for lg, ids in zip(logits, ids_list)]
    # independent numpy reference from the safetensors bytes
    np_logits = [np_forward(saved_cfg, W, ids) for ids in ids_list]
    np_nll = [nll_from_logits(lg, ids) for lg, ids in zip(np_logits, ids_list)]
    d_np = max(float(np.abs(a - b).max()) for a, b in zip(nll, np_nll))
    d_np_logit = max(float(np.abs(a - b).max()) for a, b in zip(logits, np_logits))
    d_stock = max(float(np.abs(a - b).max()) for a, b in zip(nll, stock_nll))
    res["cross_check"] = {
        "numpy_float64_vs_hf_float64_max_abs_nll_diff": d_np,
        "numpy_float64_vs_hf_float64_max_abs_logit_diff": d_np_logit,
        "hf_stock_vs_hf_float64_max_abs_nll_diff": d_stock,
        "hf_stock_mean_nll": [float(x.mean()) for x in stock_nll],
    }
    if d_np > 1e-9:
        problem(f"{spec['name']}: numpy vs HF float64 NLL diff {d_np:.3e}")
        if spec["name"] == "smollm3":
            alt = [not x for x in rope_layers(saved_cfg)]
            a_nll = [nll_from_logits(np_forward(saved_cfg, W, ids, use_rope=alt), ids)
                     for ids in ids_list]
            res["cross_check"]["numpy_inverted_no_rope_convention_diff"] = max(
                float(np.abs(a - b).max()) for a, b in zip(nll, a_nll))
    log(f"{spec['name']}: mean NLL {[round(float(x.mean()), 6) for x in nll]} "
        f"n_tokens {[len(i) for i in ids_list]} numpy-vs-hf {d_np:.2e} stock-vs-f64 {d_stock:.2e}")
    res["texts"] = []
    for i, (t, ids, nl, ti) in enumerate(zip(texts, ids_list, nll, tinfo)):
        e = {"text": t, "ids": ids, "n_tokens": len(ids), "nll": [rsig(x) for x in nl],
             "mean_nll": float(nl.mean()), "sum_nll": float(nl.sum())}
        e.update(ti)
        res["texts"].append(e)
    res["logits_text0_pos0"] = [rsig(x) for x in logits[0][0]]
    res["logits_text0_last"] = [rsig(x) for x in logits[0][-1]]
    res["nll_definition"] = ("nll[t] = -ln softmax(logits[t])[ids[t+1]], t = 0..n_tokens-2, one "
                             "window from position 0; mean_nll/sum_nll over those n_tokens-1 values; "
                             "ids = HF tokenizer(text, add_special_tokens=True)")
    res["config"] = saved_cfg
    return res, d


# ----------------------------------------------------------------------------
# main

def versions():
    v = {"python": platform.python_version(), "numpy": np.__version__}
    for m in ("torch", "transformers", "tokenizers", "sentencepiece", "safetensors"):
        try:
            v[m] = __import__(m).__version__
        except Exception:  # noqa
            v[m] = None
    return v


def local_check(assets, out):
    """No torch/transformers/tokenizers needed."""
    os.makedirs(out, exist_ok=True)
    corpus = training_corpus(assets)
    log("corpus chars", len(corpus), "bytes", len(corpus.encode()))
    path, opts = train_spm(corpus, os.path.join(out, "work"))
    sp, pieces = spm_pieces(path)
    vocab, merges = spm_merges(pieces)
    log("spm pieces", len(pieces), "merges", len(merges), "first merges", merges[:5])
    log("byte pieces", pieces[3][0], pieces[258][0], "next", pieces[259:264])
    texts = reference_texts(assets)
    for i, t in enumerate(texts):
        log(f"text{i}: {len(t)} chars, {len(sp.encode(t)) + 1} spm tokens (with BOS)",
            repr(t[:60]))
    # numpy reference on a random checkpoint through our safetensors writer/reader
    rng = np.random.default_rng(0)
    cfg = {"hidden_size": 128, "intermediate_size": 96, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 64, "num_hidden_layers": 2,
           "rms_norm_eps": 1e-6, "vocab_size": 50, "tie_word_embeddings": True,
           "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 64},
           "no_rope_layers": [1, 0]}
    T = {}
    H, I, V = 128, 96, 50
    T["model.embed_tokens.weight"] = ("BF16", rng.normal(0, .05, (V, H)))
    T["model.norm.weight"] = ("F16", rng.uniform(.75, 1.25, H))
    for l in range(2):
        p = f"model.layers.{l}."
        T[p + "input_layernorm.weight"] = ("F32", rng.uniform(.75, 1.25, H))
        T[p + "post_attention_layernorm.weight"] = ("F32", rng.uniform(.75, 1.25, H))
        T[p + "self_attn.q_proj.weight"] = ("BF16", rng.normal(0, .05, (128, H)))
        T[p + "self_attn.q_proj.bias"] = ("BF16", rng.normal(0, .1, 128))
        T[p + "self_attn.k_proj.weight"] = ("F16", rng.normal(0, .05, (64, H)))
        T[p + "self_attn.v_proj.weight"] = ("F32", rng.normal(0, .05, (64, H)))
        T[p + "self_attn.o_proj.weight"] = ("F32", rng.normal(0, .05, (H, 128)))
        T[p + "mlp.gate_proj.weight"] = ("F32", rng.normal(0, .05, (I, H)))
        T[p + "mlp.up_proj.weight"] = ("F32", rng.normal(0, .05, (I, H)))
        T[p + "mlp.down_proj.weight"] = ("F32", rng.normal(0, .05, (H, I)))
    d = os.path.join(out, "np_model")
    os.makedirs(d, exist_ok=True)
    write_safetensors(os.path.join(d, "model.safetensors"), T)
    W, meta = load_checkpoint_np(d)
    for k, (dt, a) in T.items():
        a32 = np.asarray(a, np.float32)
        tol = {"F32": 0, "F16": 1e-3, "BF16": 8e-3}[dt]
        assert np.abs(W[k] - a32).max() <= tol * max(1.0, np.abs(a32).max()), k
    ids = list(rng.integers(0, V, 40))
    lg = np_forward(cfg, W, ids)
    nl = nll_from_logits(lg, ids)
    # causality: prefix logits must not change
    lg2 = np_forward(cfg, W, ids[:20])
    assert np.abs(lg[:20] - lg2).max() < 1e-12
    # rope invariance of NoPE layer: a 1-layer model... (skip) ; check llama3 branches
    inv = inv_freq64(cfg)
    base = 1.0 / (500000.0 ** (np.arange(0, 64, 2) / 64))
    ratio = base / inv
    log("llama3 inv_freq ratio (1 = unscaled, 8 = scaled):", np.round(ratio, 3).tolist())
    log("numpy forward ok, mean nll", float(nl.mean()), "ln V", math.log(V))
    log("rope spelling", rope_settings(cfg)[2], rope_settings({"rope_theta": 1e4, "rope_scaling": None}))
    log("tokenizer cases", len(TOKENIZER_CASES))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("assets")
    ap.add_argument("out")
    ap.add_argument("--local-check", action="store_true")
    a = ap.parse_args()
    if a.local_check:
        local_check(a.assets, a.out)
        return
    import torch
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    V = versions()
    log("versions", V)
    root = os.path.join(a.out, "hf")
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    work = os.path.join(a.out, "work")
    corpus = training_corpus(a.assets)
    corpus_info = {"tinystories_bytes": TRAIN_BYTES_EACH, "tinyshakespeare_bytes": TRAIN_BYTES_EACH,
                   "multilingual_lines": MULTILINGUAL_LINES, "multilingual_repeat": MULTILINGUAL_REPEAT,
                   "total_chars": len(corpus), "sha256": sha256(corpus.encode("utf-8"))}
    # --- spm
    tdir = os.path.join(root, "tokenizers")
    spm_dir = os.path.join(tdir, "spm")
    bpe_dir = os.path.join(tdir, "bpe")
    os.makedirs(spm_dir)
    os.makedirs(bpe_dir)
    model_path, spm_opts = train_spm(corpus, work)
    shutil.copy(model_path, os.path.join(spm_dir, "tokenizer.model"))
    spm_tok, spm_info = build_spm_tokenizer_json(os.path.join(spm_dir, "tokenizer.model"))
    spm_tok.save(os.path.join(spm_dir, "tokenizer.json"))
    write_json(os.path.join(spm_dir, "tokenizer_config.json"), spm_tokenizer_config())
    log("spm tokenizer.json:", spm_info)
    # --- bpe
    bpe_tok = train_bpe(corpus)
    bpe_tok.save(os.path.join(bpe_dir, "tokenizer.json"))
    write_json(os.path.join(bpe_dir, "tokenizer_config.json"), bpe_tokenizer_config())
    # --- tokenizer oracle
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    sp.Load(os.path.join(spm_dir, "tokenizer.model"))
    spm_file = Tokenizer.from_file(os.path.join(spm_dir, "tokenizer.json"))
    bpe_file = Tokenizer.from_file(os.path.join(bpe_dir, "tokenizer.json"))
    cases = {"spm": case_entries_tokenizers(spm_file, TOKENIZER_CASES),
             "spm_sentencepiece": case_entries_sentencepiece(sp, TOKENIZER_CASES),
             "bpe": case_entries_tokenizers(bpe_file, TOKENIZER_CASES)}
    tmeta = {}
    for name, d, ftok in (("spm", spm_dir, spm_file), ("bpe", bpe_dir, bpe_file)):
        try:
            hf = AutoTokenizer.from_pretrained(d)
            tmeta[name + "_transformers_class"] = type(hf).__name__
            cases[name + "_transformers"] = case_entries_transformers(hf, TOKENIZER_CASES)
            for key in ("ids_plain", "ids_special", "decoded"):
                tmeta[f"{name}_transformers_vs_tokenizers_{key}_mismatches"] = diff_count(
                    cases[name], cases[name + "_transformers"], key)
            cases.setdefault("chat", {})[name] = chat_cases(hf, ftok)
        except Exception as e:  # noqa
            problem(f"AutoTokenizer {name}: {e!r}")
            traceback.print_exc()
    try:  # what transformers builds from tokenizer.model alone (no tokenizer.json)
        only = os.path.join(work, "spm_model_only")
        os.makedirs(only, exist_ok=True)
        for fn in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copy(os.path.join(spm_dir, fn), os.path.join(only, fn))
        hf = AutoTokenizer.from_pretrained(only)
        cases["spm_transformers_from_model"] = case_entries_transformers(hf, TOKENIZER_CASES)
        for key in ("ids_plain", "ids_special"):
            tmeta[f"spm_transformers_from_model_vs_sentencepiece_{key}_mismatches"] = diff_count(
                cases["spm_sentencepiece"], cases["spm_transformers_from_model"], key)
            tmeta[f"spm_transformers_from_model_vs_spm_transformers_{key}_mismatches"] = diff_count(
                cases["spm_transformers"], cases["spm_transformers_from_model"], key)
    except Exception as e:  # noqa
        problem(f"AutoTokenizer spm from tokenizer.model only: {e!r}")
        traceback.print_exc()
    for key in ("ids_plain", "ids_special", "decoded"):
        tmeta[f"spm_sentencepiece_vs_tokenizers_{key}_mismatches"] = diff_count(
            cases["spm"], cases["spm_sentencepiece"], key)
    tmeta["spm_sentencepiece_vs_tokenizers_mismatch_texts"] = [
        a["text"] for a, b in zip(cases["spm"], cases["spm_sentencepiece"])
        if a["ids_plain"] != b["ids_plain"]]
    log("tokenizer meta", json.dumps(tmeta, ensure_ascii=False))
    cases["meta"] = {
        "versions": V, "stats": tmeta,
        "sources": {
            "spm": "tokenizers/spm/tokenizer.json via tokenizers.Tokenizer.from_file",
            "spm_sentencepiece": "tokenizers/spm/tokenizer.model via sentencepiece "
                                 "(ids_special = [1] + ids_plain; <s> etc. in text are plain text)",
            "spm_transformers": "transformers AutoTokenizer.from_pretrained(tokenizers/spm)",
            "spm_transformers_from_model": "transformers AutoTokenizer.from_pretrained on a folder "
                                           "holding only tokenizer.model + tokenizer_config.json",
            "bpe": "tokenizers/bpe/tokenizer.json via tokenizers.Tokenizer.from_file",
            "bpe_transformers": "transformers AutoTokenizer.from_pretrained(tokenizers/bpe)",
            "chat": "apply_chat_template(tokenize=False) by transformers; ids = tokenizer.json "
                    "encode(rendered, add_special_tokens=False)"},
        "fields": {"ids_plain": "add_special_tokens=False", "ids_special": "add_special_tokens=True",
                   "decoded": "decode(ids_plain) keeping special tokens",
                   "decoded_skip_special": "decode(ids_special, skip_special_tokens=True)",
                   "tokens": "token strings of ids_plain"},
    }
    write_json(os.path.join(root, "tokenizer_cases.json"), cases)
    # --- models
    texts = reference_texts(a.assets)
    tok_ids = {"spm": {"bos": 1, "eos": 2, "pad": None},
               "bpe": {"bos": None, "eos": BPE_BASE_VOCAB + 2, "pad": BPE_BASE_VOCAB}}
    vocab = {"spm": SPM_VOCAB, "bpe": BPE_BASE_VOCAB + len(BPE_SPECIALS)}
    summary = {"versions": V, "models": {}, "tokenizers": {
        "spm": {"trainer_options": spm_opts, "tokenizer_json": spm_info, "vocab_size": SPM_VOCAB},
        "bpe": {"vocab_size": vocab["bpe"], "specials": BPE_SPECIALS, "regex": QWEN2_RE}},
        "corpus": corpus_info}
    for i, spec in enumerate(MODELS):
        try:
            tdir_m = spm_dir if spec["tok"] == "spm" else bpe_dir
            res, d = build_model(spec, root, tdir_m, tok_ids[spec["tok"]], vocab[spec["tok"]],
                                 texts, SEED_BASE + i)
            res["versions"] = V
            write_json(os.path.join(d, "reference.json"), res)
            summary["models"][spec["name"]] = {
                "mean_nll": [t["mean_nll"] for t in res["texts"]],
                "n_tokens": [t["n_tokens"] for t in res["texts"]],
                "files": res["files"], "config_rope_spelling": res["config_rope_spelling"],
                "cross_check": res["cross_check"]}
        except Exception as e:  # noqa
            traceback.print_exc()
            problem(f"model {spec['name']}: {e!r}")
            summary["models"][spec["name"]] = {"error": repr(e)}
    summary["problems"] = PROBLEMS
    write_json(os.path.join(root, "manifest.json"), summary)
    log("PROBLEMS:", PROBLEMS)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
