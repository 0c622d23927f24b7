#!/usr/bin/env python3
"""Tiny trained models of six architectures, converted to GGUF by llama.cpp's
own converters, with transformers float64 reference numbers.

Run on the GPU machine (transformers 5, torch, sentencepiece, numpy,
safetensors). Nothing of llama.cpp is in this repository: the converters are
peers outside it, named on the command line (a folder holding
convert_hf_to_gguf.py and its gguf-py/, as in a llama.cpp checkout):

    python3 tests/oracle/make_gguf_models.py --mainline PEER/llama.cpp --ik PEER/ik_llama.cpp \
        --assets DIR_WITH_tok512.model_AND_tinystories_200k_niklas6.txt \
        --heldout tests/fixtures/gguf/heldout_pride.txt --out OUTDIR [--only llama,qwen2] [--steps 400]

For each model it
 1. builds the transformers model (hidden 256, 2 layers, vocab 512 = tok512.model, ...),
 2. trains it on TinyStories (AdamW, seq 256, batch 32, fixed seeds) so its predictions are not uniform,
 3. saves a Hugging Face folder (safetensors, config.json, tokenizer.model, tokenizer_config.json),
 4. writes a COPY of that folder for conversion whose config.json also has the
    spellings the converters read (rope_theta, ...; see CONFIG_FIXES) and converts it to
    f32, f16 and bf16 GGUF with the converter as it is, then checks the metadata with gguf-py
    (DeepseekV2Model and ik's Qwen3MoeModel only write BPE vocabularies; for them the converter
    runs through RUNNER_SPM_VOCAB, which points their set_vocab at the converter's own
    _set_vocab_sentencepiece, the method Qwen2Model.set_vocab calls, and changes nothing else),
 5. scores fixed held-out texts in float64 with transformers (eager attention,
    RMSNorm/RoPE/softmax/router made float64: Float64Patch) and writes hf_reference.json.

--convert-only --only NAME converts OUT/NAME/hf again (no training) and updates
OUT/hf_reference.json; the committed qwen3moe files were made that way (GGUF_FIXTURES.md).
--only NAME with an OUT/hf_reference.json already there (a copy of the committed one) adds the
trained models to it and keeps the others: smollm3 was added that way.
"""
import argparse
import copy
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_files import log, sha256_file  # noqa: E402
from hf_generation import greedy_through_cache  # noqa: E402

BOS, EOS = 1, 2
SEQ, BATCH = 256, 32
THETA = 10000.0
GREEDY_PROMPT = "Once upon a time, there was a little girl named"
GREEDY_N = 32
TS_HELDOUT_BYTES = 12000   # the last bytes of the TinyStories file (cut at a line start) are never trained on
TS_REF_BYTES = 900         # the first bytes of that held-out tail (cut at a line end) are scored in one window
PPL_CTX = 128              # llama-perplexity -c 128: chunks of 128 tokens, first token BOS, second half scored

COMMON = dict(vocab_size=512, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
              rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS,
              hidden_act="silu", initializer_range=0.02)

# name: (transformers family, extra config, converter ("mainline" or "ik"), seed)
MODELS = {
    "llama": ("Llama", dict(attention_bias=False, mlp_bias=False), "mainline", 101),
    "qwen2": ("Qwen2", dict(use_sliding_window=False), "mainline", 102),
    "qwen3": ("Qwen3", dict(attention_bias=False, use_sliding_window=False), "ik", 103),
    "qwen3moe": ("Qwen3Moe", dict(attention_bias=False, use_sliding_window=False, num_experts=4,
                                  num_experts_per_tok=2, norm_topk_prob=True, moe_intermediate_size=256,
                                  decoder_sparse_step=1, mlp_only_layers=[], output_router_logits=False),
                 "ik", 104),
    # llama.cpp (mainline and ik) takes a DeepSeek-V2 file without a query latent only when it
    # has 27 layers (it infers "Lite" from n_layer), so this one has q_lora_rank 256.
    # norm_topk_prob false and routed_scaling_factor 1.0: transformers' and llama.cpp's routing agree.
    "deepseek2": ("DeepseekV2", dict(num_key_value_heads=4, q_lora_rank=256, kv_lora_rank=256,
                                     qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                                     first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2,
                                     n_shared_experts=1, moe_intermediate_size=256, topk_method="greedy",
                                     routed_scaling_factor=1.0, norm_topk_prob=False, n_group=None,
                                     topk_group=None, attention_bias=False),
                  "mainline", 105),
    # llama.cpp's smollm3 takes every fourth layer as NoPE (the file cannot say which), so four layers
    # with the checkpoints' default pattern; tied embeddings as in SmolLM3-3B. Saved in bf16 (STORE_BF16).
    "smollm3": ("SmolLM3", dict(num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0], no_rope_layer_interval=4,
                                tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
                                use_sliding_window=False, pad_token_id=None),
                "ik", 106),
}
# Models whose trained weights are rounded to bf16 before saving, so that the converter's bf16 file
# holds exactly the weights transformers scores (a bf16 GGUF checked against float64 at 1e-4).
STORE_BF16 = {"smollm3"}


def rnd(x, n=10):
    return float(f"{x:.{n}g}")


# ----------------------------------------------------------------------------
# tokenizer and texts

def load_sp(model_path, remove_extra_whitespaces):
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString(open(model_path, "rb").read())
    m.normalizer_spec.remove_extra_whitespaces = remove_extra_whitespaces
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return sp


def texts(args):
    raw = open(os.path.join(args.assets, "tinystories_200k_niklas6.txt"), "rb").read()
    cut = raw.index(b"\n", len(raw) - TS_HELDOUT_BYTES) + 1
    train, held = raw[:cut], raw[cut:]
    start = len(held) - len(held.lstrip(b"\n"))
    ref_end = held.index(b"\n", start + TS_REF_BYTES)
    ts_ref = held[start:ref_end]
    pride = open(args.heldout, "rb").read()
    return train, cut, cut + start, ts_ref, pride


# ----------------------------------------------------------------------------
# transformers float64

class Float64Patch:
    """Stock transformers computes RMSNorm, RoPE cos/sin (or DeepSeek's complex
    rotation), the attention softmax and the MoE router in float32 even for a
    float64 model. Inside this context all of it is float64: RMSNorm modules get a
    float64 forward, rotary modules return float64 angles computed from theta,
    softmax with dtype=float32 on float64 input stays float64, and
    Tensor.float()/.type(float32)/.to(float32) on a float64 tensor is a no-op.
    `counts` says how often each spot was met."""

    def __init__(self, model, theta):
        self.model, self.theta = model, theta
        self.counts = {"rmsnorm_modules": 0, "rotary_modules": 0, "softmax_upcast": 0, "float_noop": 0,
                       "type_noop": 0, "to_noop": 0, "rotary_calls": 0}

    def __enter__(self):
        T = torch.Tensor
        F = torch.nn.functional
        self.saved = {"F.softmax": F.softmax, "torch.softmax": torch.softmax, "T.softmax": T.softmax,
                      "T.float": T.float, "T.type": T.type, "T.to": T.to}
        c = self.counts
        for name, mod in self.model.named_modules():
            cls = type(mod).__name__
            if cls.endswith("RMSNorm"):
                eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
                assert eps is not None

                def norm64(hidden_states, _m=mod, _eps=eps):
                    x = hidden_states
                    assert x.dtype == torch.float64, x.dtype
                    return _m.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _eps))
                mod.forward = norm64
                c["rmsnorm_modules"] += 1
            elif cls.endswith("RotaryEmbedding"):
                orig = mod.forward
                dim = mod.inv_freq.numel() * 2
                inv = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
                sc = getattr(mod, "attention_scaling", 1.0)
                assert sc == 1.0, sc
                stock = mod.inv_freq.detach().double().cpu()
                c["stock_inv_freq_max_rel_err"] = max(c.get("stock_inv_freq_max_rel_err", 0.0),
                                                      float(((stock - inv).abs() / inv).max()))

                def rope64(x, position_ids, *a, _orig=orig, _inv=inv, **k):
                    out = _orig(x, position_ids, *a, **k)
                    fr = position_ids.to(torch.float64)[..., None] * _inv.to(position_ids.device)
                    c["rotary_calls"] += 1
                    if isinstance(out, tuple):
                        emb = torch.cat([fr, fr], dim=-1)
                        assert emb.shape == out[0].shape, (emb.shape, out[0].shape)
                        return emb.cos(), emb.sin()
                    assert out.is_complex() and out.shape == fr.shape, (out.dtype, out.shape, fr.shape)
                    return torch.polar(torch.ones_like(fr), fr)
                mod.forward = rope64
                c["rotary_modules"] += 1
        assert c["rmsnorm_modules"] > 0 and c["rotary_modules"] > 0, c
        sv = self.saved

        def fix(input, dtype):
            if dtype in (torch.float32,) and isinstance(input, torch.Tensor) and input.dtype == torch.float64:
                c["softmax_upcast"] += 1
                return torch.float64
            return dtype

        def F_softmax(input, dim=None, _stacklevel=3, dtype=None):
            return sv["F.softmax"](input, dim=dim, dtype=fix(input, dtype))

        def torch_softmax(input, dim, dtype=None, **k):
            return sv["torch.softmax"](input, dim, dtype=fix(input, dtype), **k)

        def T_softmax(self_, dim, dtype=None, **k):
            return sv["T.softmax"](self_, dim, dtype=fix(self_, dtype), **k)

        def T_float(self_, *a, **k):
            if self_.dtype == torch.float64:
                c["float_noop"] += 1
                return self_
            return sv["T.float"](self_, *a, **k)

        def T_type(self_, dtype=None, *a, **k):
            if self_.dtype == torch.float64 and dtype in (torch.float32, "torch.FloatTensor"):
                c["type_noop"] += 1
                return self_
            if dtype is None:
                return sv["T.type"](self_)
            return sv["T.type"](self_, dtype, *a, **k)

        def T_to(self_, *a, **k):
            if self_.dtype == torch.float64:
                if k.get("dtype") == torch.float32:
                    k = dict(k)
                    del k["dtype"]
                    c["to_noop"] += 1
                a = list(a)
                for i, v in enumerate(a):
                    if v is torch.float32:
                        del a[i]
                        c["to_noop"] += 1
                        break
                if not a and not k:
                    return self_
            return sv["T.to"](self_, *a, **k)

        F.softmax = F_softmax
        torch.softmax = torch_softmax
        T.softmax = T_softmax
        T.float = T_float
        T.type = T_type
        T.to = T_to
        return self

    def __exit__(self, *a):
        T = torch.Tensor
        F = torch.nn.functional
        F.softmax = self.saved["F.softmax"]
        torch.softmax = self.saved["torch.softmax"]
        T.softmax = self.saved["T.softmax"]
        T.float = self.saved["T.float"]
        T.type = self.saved["T.type"]
        T.to = self.saved["T.to"]


def load64(folder):
    from transformers import AutoModelForCausalLM
    try:
        m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager",
                                                 experts_implementation="eager")
    except (TypeError, ValueError) as e:
        log("load64: without experts_implementation:", e)
        m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager")
    return m.eval()


class RouteGaps:
    """Smallest gap between the k-th and (k+1)-th router probability met (per token, per MoE layer)."""

    def __init__(self, model, k):
        self.k, self.gaps, self.hooks = k, [], []
        for name, mod in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(mod, "weight"):
                self.hooks.append(mod.register_forward_hook(self.hook))

    def hook(self, module, inputs, output):
        x = inputs[0].reshape(-1, module.weight.shape[1]).double()
        s = (x @ module.weight.double().T).softmax(-1)
        srt = s.sort(dim=-1, descending=True).values
        self.gaps.append(float((srt[:, self.k - 1] - srt[:, self.k]).min()))

    def close(self):
        for h in self.hooks:
            h.remove()


def logits_of(model, ids):
    with torch.no_grad():
        t = torch.tensor([list(ids)], dtype=torch.long)
        pos = torch.arange(len(ids), dtype=torch.long)[None, :]
        lg = model(input_ids=t, position_ids=pos, use_cache=False).logits[0]
        return lg.double()


def nll_list(lg, ids):
    lp = torch.log_softmax(lg, dim=-1)
    return [float(-lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]


def perplexity_chunks(model, ids, n_ctx):
    """llama-perplexity's method: chunk k is ids[k*n_ctx:(k+1)*n_ctx] with its first token
    replaced by BOS, from an empty cache; the tokens at positions n_ctx/2+1 .. n_ctx-1 are
    scored. Returns per-chunk NLL lists and the running PPL llama-perplexity prints."""
    n_chunk = len(ids) // n_ctx
    first = n_ctx // 2
    chunks, running, tot, cnt = [], [], 0.0, 0
    for k in range(n_chunk):
        toks = list(ids[k * n_ctx:(k + 1) * n_ctx])
        toks[0] = BOS
        lg = logits_of(model, toks)
        lp = torch.log_softmax(lg, dim=-1)
        nll = [float(-lp[j, toks[j + 1]]) for j in range(first, n_ctx - 1)]
        tot += sum(nll)
        cnt += len(nll)
        chunks.append(nll)
        running.append(math.exp(tot / cnt))
    return chunks, running, math.exp(tot / cnt), cnt


def references(name, folder, spec_k, texts_ids, prompt_ids):
    """float64 references of the saved folder, plus the stock (unpatched) float64 numbers for comparison."""
    res = {}
    m = load64(folder)
    for n, p in m.named_parameters():
        assert p.dtype == torch.float64, (n, p.dtype)
    ts_ids, pride_ids = texts_ids
    # stock float64 first (transformers as shipped), for the record
    lg_stock = logits_of(m, ts_ids)
    stock_nll = nll_list(lg_stock, ts_ids)
    with Float64Patch(m, THETA) as P:
        gaps = RouteGaps(m, spec_k) if spec_k else None
        lg = logits_of(m, ts_ids)
        ts_nll = nll_list(lg, ts_ids)
        chunks, running, ppl, cnt = perplexity_chunks(m, pride_ids, PPL_CTX)
        gen, margin = greedy_through_cache(m, prompt_ids, GREEDY_N)
        # the greedy ids again from one full forward pass (no cache)
        full = list(prompt_ids) + gen
        lg_full = logits_of(m, full)
        again = [int(lg_full[len(prompt_ids) - 1 + i].argmax()) for i in range(GREEDY_N)]
        if gaps:
            gaps.close()
        counts = dict(P.counts)
    res["float64_patch"] = counts
    res["tinystories"] = {"nll": [rnd(x) for x in ts_nll], "mean_nll": sum(ts_nll) / len(ts_nll),
                          "n_scored": len(ts_nll)}
    res["pride_perplexity"] = {"n_ctx": PPL_CTX, "n_chunks": len(chunks), "n_scored": cnt, "ppl": ppl,
                               "running_ppl": [rnd(x) for x in running],
                               "chunk_mean_nll": [rnd(sum(c) / len(c)) for c in chunks],
                               "chunk_nll": [[rnd(x) for x in c] for c in chunks]}
    res["greedy"] = {"prompt": GREEDY_PROMPT, "prompt_ids": list(prompt_ids), "ids": gen,
                     "min_top2_logit_margin": margin, "full_forward_argmax_agrees": again == gen}
    res["min_route_gap"] = min(gaps.gaps) if gaps and gaps.gaps else None
    res["cross_check"] = {"stock_float64_vs_patched_max_abs_nll_diff_tinystories":
                          max(abs(a - b) for a, b in zip(stock_nll, ts_nll))}
    log(name, "ref: tinystories mean nll %.6f, pride ppl %.4f over %d chunks, greedy margin %.3g, "
        "route gap %s, stock diff %.3g, patch %s" % (res["tinystories"]["mean_nll"], ppl, len(chunks), margin,
                                                   res["min_route_gap"],
                                                   res["cross_check"][
                                                       "stock_float64_vs_patched_max_abs_nll_diff_tinystories"],
                                                   counts))
    return res


# ----------------------------------------------------------------------------
# model, training, saving

def make_config(family, extra):
    import inspect
    cls = getattr(transformers, family + "Config")
    kw = dict(COMMON)
    if family == "DeepseekV2":
        del kw["head_dim"]  # DeepseekV2Config sets head_dim = qk_rope_head_dim (the RoPE width) itself
    kw.update(extra)
    params = inspect.signature(cls.__init__).parameters
    if "rope_parameters" in params:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": THETA}
    else:
        kw["rope_theta"] = THETA
    return cls(**kw)


def build(family, cfg):
    cls = getattr(transformers, family + "ForCausalLM")
    try:
        cfg._experts_implementation = "eager"
    except Exception:
        pass
    return cls(cfg)


def train(model, data, steps, seed, dev):
    g = torch.Generator().manual_seed(seed)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warm = 30

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        p = (s - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    data_t = torch.tensor(data, dtype=torch.long)
    n = len(data) - SEQ - 1
    losses = []
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, n, (BATCH,), generator=g)
        b = torch.stack([data_t[i:i + SEQ + 1] for i in idx.tolist()])
        b[:, 0] = BOS
        b = b.to(dev)
        out = model(input_ids=b[:, :-1], use_cache=False)
        loss = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]),
                                                 b[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == steps - 1:
            log(f"  step {step} loss {float(loss):.4f} ({time.time() - t0:.1f}s)")
    model.eval().to("cpu").float()
    return losses


TOKENIZER_CONFIG = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                    "unk_token": "<unk>", "model_max_length": 512, "tokenizer_class": "LlamaTokenizer"}


def conversion_config(name, cfg):
    """The converters read config.json as plain JSON with the transformers 4 spellings.
    Return the copy used for conversion and a list of what was changed."""
    c = copy.deepcopy(cfg)
    changes = []

    def setk(k, v):
        if c.get(k) != v:
            changes.append({"set": k, "value": v, "was": c.get(k, "<absent>")})
            c[k] = v

    def delk(k):
        if k in c:
            changes.append({"removed": k, "was": c[k]})
            del c[k]
    rp = c.get("rope_parameters") or {}
    theta = rp.get("rope_theta", c.get("rope_theta"))
    assert theta == THETA, (name, theta)
    assert rp.get("rope_type", "default") == "default", rp
    setk("rope_theta", theta)            # every converter: gguf ARCH.rope.freq_base
    if c.get("rope_scaling") is not None:
        delk("rope_scaling")
    if name == "qwen3moe":
        setk("num_experts", cfg.get("num_experts", cfg.get("num_local_experts")))  # Qwen2MoeModel reads num_experts
        delk("num_local_experts")        # the base class would write expert_count a second time
    if name == "deepseek2":
        setk("scoring_func", "softmax")  # DeepseekV2Model reads hparams["scoring_func"]
        # transformers 5 writes head_dim = qk_rope_head_dim; the base class would write it as
        # key_length/value_length and DeepseekV2Model then writes key_length again (a duplicate key)
        delk("head_dim")
        setk("num_key_value_heads", c["num_attention_heads"])
    if name == "smollm3":
        # ik's LlamaModel.set_gguf_parameters at this commit pops num_experts_per_tok and reads
        # prefix_dense_intermediate_size (Cohere2-MoE code that landed in the Llama class): give it both,
        # as no experts and the dense FFN width, so it writes what it writes for any Llama
        for k, v in (("num_experts_per_tok", None), ("prefix_dense_intermediate_size", c["intermediate_size"])):
            changes.append({"set": k, "value": v, "was": c.get(k, "<absent>")})
            c[k] = v
    return c, changes


def unfuse_experts(folder, inter):
    """If transformers saved the experts fused (experts.gate_up_proj (E, 2I, H), experts.down_proj
    (E, H, I)), rewrite the conversion copy's safetensors with one tensor per expert, the names the
    converters read. Returns the names rewritten (none when the save already has them per expert)."""
    from safetensors.torch import load_file, save_file
    done = []
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".safetensors"):
            continue
        p = os.path.join(folder, f)
        sd = load_file(p)
        fused = [k for k in sd if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj")]
        if not fused:
            continue
        for k in fused:
            w = sd.pop(k)
            base = k.rsplit(".", 1)[0]
            for e in range(w.shape[0]):
                if k.endswith("gate_up_proj"):
                    assert w.shape[1] == 2 * inter, w.shape
                    sd[f"{base}.{e}.gate_proj.weight"] = w[e, :inter].contiguous()
                    sd[f"{base}.{e}.up_proj.weight"] = w[e, inter:].contiguous()
                else:
                    assert w.shape[2] == inter, w.shape
                    sd[f"{base}.{e}.down_proj.weight"] = w[e].contiguous()
            done.append(k)
        save_file(sd, p, metadata={"format": "pt"})
        idx = os.path.join(folder, "model.safetensors.index.json")
        assert not os.path.exists(idx), "sharded save: not handled"
    return done


RUNNER_SPM_VOCAB = r"""
import os, sys
cls, conv = sys.argv[1], sys.argv[2]
sys.argv = [conv] + sys.argv[3:]
sys.path.insert(0, os.path.dirname(os.path.abspath(conv)))
import convert_hf_to_gguf as c
# This class's set_vocab only knows BPE (a tokenizer.json with a known pre-tokenizer hash);
# use the converter's own SentencePiece vocab writer, the one Qwen2Model.set_vocab calls.
getattr(c, cls).set_vocab = lambda self: self._set_vocab_sentencepiece()
c.main()
"""
# converter classes whose set_vocab never tries tokenizer.model
SPM_VOCAB_CLASS = {"deepseek2": "DeepseekV2Model", "qwen3moe": "Qwen3MoeModel",
                   # SmolLM3Model.set_vocab also loads the folder with AutoTokenizer for its chat template
                   "smollm3": "SmolLM3Model"}


def convert(conv_py, folder, outtype, outfile, spm_runner, model_name):
    args = [folder, "--outtype", outtype, "--outfile", outfile, "--model-name", model_name]
    if spm_runner:
        cmd = [sys.executable, "-c", RUNNER_SPM_VOCAB, spm_runner, conv_py] + args
    else:
        cmd = [sys.executable, conv_py] + args
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    return {"cmd": ["python3" if x == sys.executable else x for x in cmd if x != RUNNER_SPM_VOCAB]
            + ([f"(runner: {spm_runner}.set_vocab -> _set_vocab_sentencepiece)"] if spm_runner else []),
            "rc": p.returncode, "seconds": round(time.time() - t0, 2),
            "log_tail": (p.stdout + p.stderr)[-3000:]}


EXPECT = {
    "common": {"block_count": 2, "context_length": 512, "embedding_length": 256,
               "attention.head_count": 4, "rope.freq_base": THETA, "attention.layer_norm_rms_epsilon": 1e-5},
    "llama": {"feed_forward_length": 256, "attention.head_count_kv": 2, "rope.dimension_count": 64,
              "vocab_size": 512},
    "qwen2": {"feed_forward_length": 256, "attention.head_count_kv": 2},
    "qwen3": {"feed_forward_length": 256, "attention.head_count_kv": 2, "attention.key_length": 64},
    "qwen3moe": {"attention.head_count_kv": 2, "expert_count": 4, "expert_used_count": 2,
                 "expert_feed_forward_length": 256, "attention.key_length": 64},
    "deepseek2": {"feed_forward_length": 256, "attention.head_count_kv": 4, "rope.dimension_count": 32,
                  "attention.q_lora_rank": 256, "attention.kv_lora_rank": 256, "attention.key_length": 96,
                  "attention.value_length": 64, "leading_dense_block_count": 1, "expert_count": 4,
                  "expert_used_count": 2, "expert_shared_count": 1, "expert_feed_forward_length": 256,
                  "expert_weights_scale": 1.0, "expert_weights_norm": False, "expert_gating_func": 1},
    "smollm3": {"block_count": 4, "feed_forward_length": 256, "attention.head_count_kv": 2,
                "rope.dimension_count": 64, "vocab_size": 512},
}


def gguf_summary(path, arch, gguf_py):
    """Metadata (less the token lists) and tensors of a GGUF file, read with the peer's gguf-py,
    and the expected keys checked."""
    sys.path.insert(0, gguf_py)
    import gguf  # noqa
    from gguf import GGUFReader
    r = GGUFReader(path)
    kv = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        if f.name in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                      "tokenizer.ggml.merges"):
            kv[f.name] = f"<array of {len(f.data)}>"
            continue
        v = f.contents() if hasattr(f, "contents") else None
        if v is None:
            if f.types and f.types[0] == gguf.GGUFValueType.STRING:
                v = bytes(f.parts[-1]).decode("utf-8")
            else:
                v = f.parts[-1].tolist()
                v = v[0] if len(v) == 1 else v
        if isinstance(v, float):
            v = float(np.float32(v))
        kv[f.name] = v
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape]}
               for t in r.tensors]
    problems = []
    if kv.get("general.architecture") != arch:
        problems.append(f"general.architecture {kv.get('general.architecture')!r} != {arch!r}")
    exp = dict(EXPECT["common"])
    exp.update(EXPECT[arch])
    for k, v in exp.items():
        key = f"{arch}.{k}"
        got = kv.get(key)
        if got is None:
            problems.append(f"missing {key}")
        elif isinstance(v, float) and not isinstance(v, bool):
            if abs(float(got) - v) > 1e-6 * max(1.0, abs(v)):
                problems.append(f"{key} = {got} != {v}")
        elif got != v:
            problems.append(f"{key} = {got} != {v}")
    for k, v in (("tokenizer.ggml.model", "llama"), ("tokenizer.ggml.bos_token_id", BOS),
                 ("tokenizer.ggml.eos_token_id", EOS), ("tokenizer.ggml.add_bos_token", True)):
        if kv.get(k) != v:
            problems.append(f"{k} = {kv.get(k)!r} != {v!r}")
    return {"kv": kv, "tensors": tensors, "n_tensors": len(tensors), "problems": problems}


def conversion_jobs(args, name, entry, saved):
    """Write the conversion copy of OUT/name/hf and return the converter runs to do."""
    which, extra = MODELS[name][2], MODELS[name][1]
    mdir = os.path.join(args.out, name)
    hf = os.path.join(mdir, "hf")
    cdir = os.path.join(mdir, "hf_for_conversion")
    if os.path.exists(cdir):
        shutil.rmtree(cdir)
    shutil.copytree(hf, cdir)
    ccfg, changes = conversion_config(name, saved)
    json.dump(ccfg, open(os.path.join(cdir, "config.json"), "w"), indent=2)
    entry["conversion_config_changes"] = changes
    entry["conversion_unfused_experts"] = unfuse_experts(cdir, extra.get("moe_intermediate_size", 0))
    entry["conversion_config"] = ccfg
    conv_py = os.path.join(args.mainline if which == "mainline" else args.ik, "convert_hf_to_gguf.py")
    return [(name, t, conv_py, cdir, os.path.join(mdir, f"{name}-{t}.gguf"), SPM_VOCAB_CLASS.get(name))
            for t in ("f32", "f16", "bf16")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mainline", required=True, help="folder with mainline llama.cpp's convert_hf_to_gguf.py + gguf-py")
    ap.add_argument("--ik", required=True, help="folder with ik_llama.cpp's convert_hf_to_gguf.py + gguf-py")
    ap.add_argument("--assets", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--peer-commits", default="", help="JSON {peer: commit} to record")
    ap.add_argument("--convert-only", action="store_true",
                    help="no training: convert the --only models' OUT/NAME/hf again and update OUT/hf_reference.json")
    args = ap.parse_args()
    only = [x for x in args.only.split(",") if x]
    os.makedirs(args.out, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    tok_path = os.path.join(args.assets, "tok512.model")
    sp = load_sp(tok_path, remove_extra_whitespaces=False)
    sp_default = load_sp(tok_path, remove_extra_whitespaces=True)
    train_b, train_cut, ts_start, ts_ref_b, pride_b = texts(args)
    t0 = time.time()
    data = [BOS] + sp.encode(train_b.decode("utf-8"))
    log(f"training tokens {len(data)} ({time.time() - t0:.1f}s)")
    ts_ids = [BOS] + sp.encode(ts_ref_b.decode("utf-8"))
    pride_ids = [BOS] + sp.encode(pride_b.decode("utf-8"))
    prompt_ids = [BOS] + sp.encode(GREEDY_PROMPT)
    assert len(ts_ids) <= 512, len(ts_ids)
    tok_agree = {"tinystories": ts_ids == [BOS] + sp_default.encode(ts_ref_b.decode("utf-8")),
                 "pride": pride_ids == [BOS] + sp_default.encode(pride_b.decode("utf-8"))}

    out = {
        "what": "transformers float64 references of the tiny models in tests/fixtures/gguf (made by "
                "tests/oracle/make_gguf_models.py)",
        "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version(),
                     "sentencepiece": __import__("sentencepiece").__version__},
        "peer_commits": json.loads(args.peer_commits) if args.peer_commits else {},
        "tokenizer": {"file": "tok512.model", "sha256": sha256_file(tok_path),
                      "how": "ids = [1] + sentencepiece encode(text) (adds the dummy-prefix space), with "
                             "remove_extra_whitespaces switched off as llama.cpp's SPM tokenizer does",
                      "same_ids_with_remove_extra_whitespaces_on": tok_agree},
        "texts": {
            "tinystories": {"source": "tinystories_200k_niklas6.txt", "held_out_from_byte": train_cut,
                            "bytes": [ts_start, ts_start + len(ts_ref_b)], "text": ts_ref_b.decode("utf-8"),
                            "sha256": hashlib.sha256(ts_ref_b).hexdigest(), "ids": ts_ids},
            "pride": {"file": "tests/fixtures/gguf/heldout_pride.txt", "sha256": hashlib.sha256(pride_b).hexdigest(),
                      "n_bytes": len(pride_b), "ids": pride_ids},
        },
        "training": {"data": f"tinystories_200k_niklas6.txt bytes [0, {train_cut}): [BOS] + sentencepiece "
                             "encode(all of it); random windows of 257 tokens",
                     "n_tokens": len(data), "steps": args.steps, "batch": BATCH, "seq": SEQ,
                     "optimizer": "AdamW lr 2e-3 betas (0.9, 0.95) wd 0.1, 30 warmup steps, cosine to 10%, "
                                  "clip 1.0, float32 on " + dev + ", windows start with BOS"},
        "perplexity_method": "llama-perplexity's: chunk k = ids[128k:128k+128] with its first token replaced "
                             "by BOS, each from an empty cache; tokens at positions 65..127 are scored "
                             "(63 a chunk); running_ppl[k] = exp(mean NLL over chunks 0..k)",
        "models": {},
    }
    conv_jobs = []
    if args.convert_only:
        prev = json.load(open(os.path.join(args.out, "hf_reference.json")))
        prev.setdefault("converted_again", []).append({"models": only, "made": out["made"],
                                                       "versions": out["versions"]})
        out = prev
        for name in only:
            e = out["models"][name]
            e.pop("conversions", None)
            e["converted_again"] = out["made"]
            saved = json.load(open(os.path.join(args.out, name, "hf", "config.json")))
            conv_jobs += conversion_jobs(args, name, e, saved)
    for name, (family, extra, which, seed) in MODELS.items():
        if args.convert_only:
            break
        if only and name not in only:
            continue
        entry = {"family": family + "ForCausalLM", "converter": which, "seed": seed}
        out["models"][name] = entry
        try:
            torch.manual_seed(seed)
            np.random.seed(seed)
            cfg = make_config(family, extra)
            model = build(family, cfg)
            if name == "qwen2":  # non-zero q/k/v biases, then trained
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n.endswith("_proj.bias"):
                            p.normal_(0.0, 0.1)
            n_params = sum(p.numel() for p in model.parameters())
            log(f"== {name}: {family}ForCausalLM, {n_params} parameters")
            t1 = time.time()
            losses = train(model, data, args.steps, seed, dev)
            entry.update(n_params=n_params, train_seconds=round(time.time() - t1, 1),
                         loss_first=losses[0], loss_last_10=sum(losses[-10:]) / 10)
            mdir = os.path.join(args.out, name)
            hf = os.path.join(mdir, "hf")
            if name in STORE_BF16:
                model.to(torch.bfloat16)
                entry["stored_dtype"] = "bfloat16 (the trained float32 weights rounded)"
            model.save_pretrained(hf)
            shutil.copy(tok_path, os.path.join(hf, "tokenizer.model"))
            json.dump(TOKENIZER_CONFIG, open(os.path.join(hf, "tokenizer_config.json"), "w"), indent=1)
            saved = json.load(open(os.path.join(hf, "config.json")))
            entry["hf_config"] = saved
            from safetensors import safe_open
            shapes = {}
            for f in sorted(os.listdir(hf)):
                if f.endswith(".safetensors"):
                    with safe_open(os.path.join(hf, f), "pt") as st:
                        for k in st.keys():
                            shapes[k] = list(st.get_slice(k).get_shape())
            entry["hf_tensors"] = shapes
            if name == "qwen2":
                entry["qwen2_bias_abs_mean"] = {n: float(p.abs().mean()) for n, p in model.named_parameters()
                                                if n.endswith("_proj.bias")}
            conv_jobs += conversion_jobs(args, name, entry, saved)
            del model
            entry["reference"] = references(name, hf, extra.get("num_experts_per_tok"), (ts_ids, pride_ids),
                                            prompt_ids)
        except Exception as e:  # keep going with the other models
            import traceback
            traceback.print_exc()
            entry["error"] = f"{type(e).__name__}: {e}"
    # conversions, in parallel
    t1 = time.time()
    with ThreadPoolExecutor(max_workers=8) as ex:
        futs = {ex.submit(convert, j[2], j[3], j[1], j[4], j[5], "tiny-" + j[0]): j for j in conv_jobs}
        results = {(j[0], j[1]): f.result() for f, j in futs.items()}
    log(f"conversions: {len(conv_jobs)} in {time.time() - t1:.1f}s")
    for (name, t), r in sorted(results.items()):
        e = out["models"][name]
        e.setdefault("conversions", {})[t] = r
        path = os.path.join(args.out, name, f"{name}-{t}.gguf")
        log(f"{name} {t}: rc {r['rc']} {r['seconds']}s")
        if r["rc"] != 0:
            log(r["log_tail"])
            continue
        r["sha256"] = sha256_file(path)
        r["bytes"] = os.path.getsize(path)
        try:
            s = gguf_summary(path, name, os.path.join(args.ik, "gguf-py"))
            r["problems"] = s["problems"]
            if t == "f32":
                e["gguf_kv"] = s["kv"]
                e["gguf_tensors"] = s["tensors"]
            log(f"   {s['n_tensors']} tensors, problems: {s['problems']}")
        except Exception as ex_:
            import traceback
            traceback.print_exc()
            r["problems"] = [f"gguf read failed: {ex_}"]
        r["log_tail"] = r["log_tail"][-600:]
    ref_path = os.path.join(args.out, "hf_reference.json")
    if only and not args.convert_only and os.path.exists(ref_path):
        # models added to an existing set: the texts must be the ones the others were scored on
        prev = json.load(open(ref_path))
        assert prev["texts"] == out["texts"] and prev["tokenizer"]["sha256"] == out["tokenizer"]["sha256"]
        prev["models"].update(out["models"])
        prev.setdefault("added", []).append({"models": only, "made": out["made"], "versions": out["versions"],
                                             "peer_commits": out["peer_commits"]})
        out = prev
    json.dump(out, open(ref_path, "w"), indent=1)
    log("done")


if __name__ == "__main__":
    main()
