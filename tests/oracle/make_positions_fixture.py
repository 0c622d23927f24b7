#!/usr/bin/python3
"""Float64 reference NLL of stories260K under each position scheme (docs/POSITIONS.md, docs/ALGORITHMS.md).

Independent of the engine's two-key-copy method: every score is computed the
way the reference code states it, score(i, j) = (l_i q_i) . R(-rho(i - j)) k_j
with q and k unrotated, rho the rectified distance, l_i the log-n factor
max(1, ln(i + 1) / ln L) applied to the query before rotation, and R(a) the
rotation of each adjacent pair (2m, 2m+1) by a * theta^(-2m/d). The rope
scaling cases change theta^(-2m/d) as docs/POSITIONS.md and transformers'
rope utilities define them: linear divides it by the factor s; NTK-aware
raises the base to theta * s^(d/(d-2)); dynamic NTK does so with
s * T / L - (s - 1) in place of s, for a window of T tokens past the trained L.

The text is longer than stories260K's trained 512 tokens, so the cases show
extrapolation. Runs locally with numpy (Debian's python3-numpy):

    /usr/bin/python3 tests/oracle/make_positions_fixture.py ../shared/assets tests/fixtures/positions_oracle.json
"""
import hashlib
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import load_llama2c_v0, nll_from_logits, np_forward  # noqa: E402

TEXT_BYTES = 2400  # about 1200 tokens of tok512: well past the trained 512
CASES = [
    {"name": "rope", "pos": "rope", "args": ["--pos", "rope"]},
    {"name": "nope", "pos": "nope", "args": ["--pos", "nope"]},
    {"name": "rerope_w128_logn512", "pos": "rerope", "window": 128, "logn": 512,
     "args": ["--pos", "rerope", "--window", "128", "--logn", "512"]},
    {"name": "rerope_w256_nologn", "pos": "rerope", "window": 256, "logn": 0,
     "args": ["--pos", "rerope", "--window", "256", "--logn", "0"]},
    {"name": "leaky_w128_k8_logn512", "pos": "leaky", "window": 128, "k": 8.0, "logn": 512,
     "args": ["--pos", "leaky", "--window", "128", "--leaky-k", "8", "--logn", "512"]},
    {"name": "rope_logn256", "pos": "rope", "logn": 256, "args": ["--pos", "rope", "--logn", "256"]},
    {"name": "linear_s2", "pos": "rope", "scaling": "linear", "factor": 2.0,
     "args": ["--rope-scaling", "linear", "--rope-factor", "2"]},
    {"name": "ntk_s4", "pos": "rope", "scaling": "ntk", "factor": 4.0,
     "args": ["--rope-scaling", "ntk", "--rope-factor", "4"]},
    {"name": "dynamic_s2", "pos": "rope", "scaling": "dynamic", "factor": 2.0,
     "args": ["--rope-scaling", "dynamic", "--rope-factor", "2"]},
    {"name": "ntk_s4_rerope_w128", "pos": "rerope", "window": 128, "logn": 0, "scaling": "ntk", "factor": 4.0,
     "args": ["--pos", "rerope", "--window", "128", "--logn", "0", "--rope-scaling", "ntk", "--rope-factor", "4"]},
]


def frequencies(case, hs, T, trained):
    """theta^(-2m/d) for the pairs m of one head, under the case's rope scaling."""
    base, s = 10000.0, case.get("factor", 1.0)
    if case.get("scaling") == "ntk":
        base *= s ** (hs / (hs - 2))
    if case.get("scaling") == "dynamic" and T > trained:
        base *= (s * T / trained - (s - 1)) ** (hs / (hs - 2))
    freq = base ** (-2.0 * np.arange(hs // 2, dtype=np.float64) / hs)
    return freq / s if case.get("scaling") == "linear" else freq


def rectified(r, case):
    """The distance a score sees, for true distances r >= 0."""
    w = case.get("window", 0)
    if case["pos"] == "rope":
        return r
    if case["pos"] == "nope":
        return np.zeros_like(r)
    if case["pos"] == "rerope":
        return np.minimum(r, w)
    return np.where(r < w, r, w + (r - w) / case["k"])


def rectified_attention(case):
    """Causal attention scoring (l_i q_i) . R(-rho(i - j)) k_j on raw q and k."""
    def attention(cfg, q, k, v):
        T, nh, hs = q.shape
        nkv = k.shape[1]
        rep = nh // nkv
        freq = frequencies(case, hs, T, cfg["seq_len"])
        L = case.get("logn", 0)
        lam = np.ones(T) if not L else np.maximum(1.0, np.log(np.arange(T) + 1.0) / math.log(L))
        q = q * lam[:, None, None]
        att = np.empty((T, nh, hs))
        for i in range(T):
            rho = rectified(np.arange(i, -1, -1, dtype=np.float64), case)  # distance to key j = 0..i
            ang = -rho[:, None] * freq[None, :]  # (i+1, hs/2): rotate keys by -rho
            c, s = np.cos(ang), np.sin(ang)
            k0, k1 = k[: i + 1, :, 0::2], k[: i + 1, :, 1::2]  # (i+1, nkv, hs/2)
            kr = np.empty((i + 1, nkv, hs))
            kr[:, :, 0::2] = k0 * c[:, None, :] - k1 * s[:, None, :]
            kr[:, :, 1::2] = k0 * s[:, None, :] + k1 * c[:, None, :]
            for h in range(nh):
                g = h // rep
                sc = kr[:, g, :] @ q[i, h, :] / math.sqrt(hs)
                pr = np.exp(sc - sc.max())
                att[i, h, :] = (pr / pr.sum()) @ v[: i + 1, g, :]
        return att
    return attention


def main():
    assets, out = sys.argv[1], sys.argv[2]
    model_path = os.path.join(assets, "llama2c/stories260K.bin")
    raw = open(model_path, "rb").read()
    loaded = load_llama2c_v0(model_path)
    cfg, W = loaded[0], loaded[1]
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    proto.ParseFromString(open(os.path.join(assets, "llama2c/tok512.model"), "rb").read())
    proto.normalizer_spec.remove_extra_whitespaces = False  # as llama2.c's tokenizer.bin (see make_fixtures.py)
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    text = open(os.path.join(assets, "text/tinystories_200k_niklas6.txt"), "rb").read()[:TEXT_BYTES]
    while text and (text[-1] & 0xC0) == 0x80:  # whole UTF-8 characters only
        text = text[:-1]
    if text and text[-1] >= 0xC0:
        text = text[:-1]
    ids = [1] + sp.encode(text.decode("utf-8"))
    results = []
    for case in CASES:
        nll = nll_from_logits(np_forward(cfg, W, ids, rectified_attention(case)), ids)
        results.append({**case, "mean_nll": float(nll.mean())})
        print(f"{case['name']}: mean_nll {nll.mean():.6f}", flush=True)
    doc = {
        "description": "float64 reference NLL of stories260K under each position scheme; "
                       "see tests/oracle/make_positions_fixture.py",
        "model_file": "stories260K.bin", "model_sha256": hashlib.sha256(raw).hexdigest(),
        "text_file": "text/tinystories_200k_niklas6.txt", "n_bytes": len(text), "n_tokens": len(ids),
        "trained_context": cfg["seq_len"], "ids": ids, "cases": results,
    }
    with open(out, "w") as fo:
        json.dump(doc, fo, indent=1)


if __name__ == "__main__":
    main()
