#!/usr/bin/env python3
"""Tiny DeepSeek-V2/V3 checkpoints (multi-head latent attention, mixture of
experts) and Qwen3/Qwen3-MoE ones (per-head q/k norms, experts) saved by
transformers, scored by transformers in float64.

Each model gets random weights (seeded), is saved with save_pretrained in its
own format, then reloaded from the saved folder in float64 (so a bf16 save is
scored with the weights it stores) and run with eager attention. It borrows
the tokenizer, texts and token ids of tests/fixtures/hf/llama (a 1000-piece
SentencePiece-style BPE the tokenizers library tokenizes; see
HF_FIXTURES.md). reference.json holds, per text, the per-token NLL of one
forward pass, and greedy continuations generated one token at a time through
transformers' cache. To show that float rounding cannot flip a routing
decision or a greedy token, it records the smallest gap met between the last
chosen and the first rejected router score (per token, per MoE layer) and
between the two best logits.

Run on the GPU machine (transformers, torch):

    python3 tests/oracle/make_mla_fixtures.py tests/fixtures/hf/llama $OUT [MODEL...]
"""
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_generation import greedy_through_cache  # noqa: E402

src, out_root = sys.argv[1], sys.argv[2]
only = sys.argv[3:]  # model names; all when none
src_ref = json.load(open(os.path.join(src, "reference.json")))

COMMON = dict(vocab_size=1000, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=16,
              qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6,
              initializer_range=0.1, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
MODELS = {
    # V2 with a plain query projection, greedy top-2 of 8 experts, one shared expert, no rope scaling.
    "deepseek_v2": ("DeepseekV2", "float32", dict(
        COMMON, num_hidden_layers=3, q_lora_rank=None, intermediate_size=96, first_k_dense_replace=1,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
        topk_method="greedy", routed_scaling_factor=1.0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # V2 with a query latent, group-limited routing, scaled routing weights and DeepSeek's YaRN
    # (mscale on the softmax scale), stored in bf16.
    "deepseek_v2_lora": ("DeepseekV2", "bfloat16", dict(
        COMMON, num_hidden_layers=3, q_lora_rank=24, intermediate_size=96, first_k_dense_replace=1,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=2, moe_intermediate_size=32,
        topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=2.0,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 128, "beta_fast": 32.0, "beta_slow": 1.0,
                         "mscale": 0.707, "mscale_all_dim": 0.707})),
    # A dense latent-attention model: every layer before first_k_dense_replace, so no experts at all.
    "deepseek_v2_dense": ("DeepseekV2", "float32", dict(
        COMMON, num_hidden_layers=2, q_lora_rank=None, intermediate_size=96, first_k_dense_replace=2,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # V3: sigmoid router with a score-correction bias, groups ranked by their top two, normalised weights.
    "deepseek_v3": ("DeepseekV3", "float32", dict(
        COMMON, num_hidden_layers=3, q_lora_rank=24, intermediate_size=96, first_k_dense_replace=1,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
        n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, rope_interleave=True,
        num_nextn_predict_layers=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
}
# Qwen3 (per-head q/k RMSNorm) and Qwen3-MoE (softmax top-2 of 8 experts, renormalised), the same sizes.
QWEN = dict(vocab_size=1000, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=96, max_position_embeddings=512, rms_norm_eps=1e-6, initializer_range=0.1,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, num_hidden_layers=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
MODELS["qwen3"] = ("Qwen3", "bfloat16", dict(QWEN))
MODELS["qwen3_moe"] = ("Qwen3Moe", "float32", dict(QWEN, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                                    norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[]))

# For the GGUF path (convert_fixtures_to_gguf.py): a plain-query MLA model with DeepSeek's YaRN and
# greedy routing (what llama.cpp's converter can describe), and a Llama with Llama 3's rope scaling.
MODELS["deepseek_v2_yarn"] = ("DeepseekV2", "float32", dict(
    COMMON, num_hidden_layers=2, q_lora_rank=None, intermediate_size=96, first_k_dense_replace=1,
    n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
    topk_method="greedy", routed_scaling_factor=1.0,
    rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128,
                     "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}))
MODELS["llama3_rope"] = ("Llama", "float32", dict(
    QWEN, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64}))

route_gaps = []


def router_hook(module, inputs, output):
    """Smallest gap between the k-th and (k+1)-th choice score of each token."""
    x = inputs[0].reshape(-1, module.weight.shape[1]).double()
    logits = x @ module.weight.double().T
    if hasattr(module, "e_score_correction_bias"):
        s = logits.sigmoid() + module.e_score_correction_bias.double()
    else:
        s = logits.softmax(-1)
    srt = s.sort(dim=-1, descending=True).values
    k = getattr(module, "top_k", None) or module.config.num_experts_per_tok
    route_gaps.append(float((srt[:, k - 1] - srt[:, k]).min()))


def load(folder):
    # eager experts: the grouped-matmul kernel refuses float64
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager",
                                             experts_implementation="eager").eval()
    for mod in m.modules():
        if type(mod).__name__.lower().endswith("topkrouter"):
            mod.register_forward_hook(router_hook)
    return m




manifest = {}
for name, (family, dtype, kw) in MODELS.items():
    if only and name not in only:
        continue
    torch.manual_seed(1234)
    cfg_cls = getattr(transformers, family + "Config")
    model_cls = getattr(transformers, family + "ForCausalLM")
    model = model_cls(cfg_cls(**kw)).eval()
    with torch.no_grad():  # random routing biases, so that they matter
        for mod in model.modules():
            if hasattr(mod, "e_score_correction_bias"):
                mod.e_score_correction_bias.copy_(torch.randn_like(mod.e_score_correction_bias) * 0.05)
    folder = os.path.join(out_root, name)
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "text0.txt", "text1.txt", "text2.txt"):
        shutil.copy(os.path.join(src, f), folder)
    tensors = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as st:
                for k in st.keys():
                    tensors[k] = list(st.get_slice(k).get_shape())
    route_gaps.clear()
    texts = []
    for t in src_ref["texts"]:
        ids = t["ids"]
        m = load(folder)
        with torch.no_grad():
            logits = m(input_ids=torch.tensor([ids])).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        nll = [-lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
        texts.append({"file": t["file"], "text": open(os.path.join(folder, t["file"]), encoding="utf-8").read(), "ids": ids, "nll": nll, "mean_nll": sum(nll) / len(nll)})
        print(name, t["file"], len(ids), sum(nll) / len(nll), flush=True)
    cases = []
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    for t, n_chars, n_gen in ((0, 40, 60), (1, 500, 30)):
        prompt = open(os.path.join(folder, f"text{t}.txt"), encoding="utf-8").read()[:n_chars]
        prompt_ids = tok.encode(prompt).ids
        gen, margin = greedy_through_cache(load(folder), prompt_ids, n_gen)
        cases.append({"prompt": prompt, "prompt_ids": prompt_ids, "ids": gen, "min_margin": margin})
        print(name, "greedy", len(prompt_ids), n_gen, "min margin", margin, flush=True)
    ref = {"model": name, "architecture": family + "ForCausalLM", "stored_dtype": dtype,
           "reference": "transformers float64, eager attention", "tensors": tensors,
           "min_route_gap": min(route_gaps) if route_gaps else None, "texts": texts, "greedy": cases,
           "versions": {"transformers": transformers.__version__, "torch": torch.__version__}}
    print(name, "min route gap", ref["min_route_gap"], "tensors", len(tensors), flush=True)
    json.dump(ref, open(os.path.join(folder, "reference.json"), "w"), indent=1)
    manifest[name] = {"min_route_gap": ref["min_route_gap"], "n_tensors": len(tensors)}
json.dump(manifest, open(os.path.join(out_root, "mla_manifest.json"), "w"), indent=1)
