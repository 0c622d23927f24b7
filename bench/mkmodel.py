#!/usr/bin/python3
"""Write a random-weight llama2.c checkpoint of a given shape (for benchmarks).

Usage (use Debian's python + python3-numpy, not a pyenv python without numpy):

    /usr/bin/python3 bench/mkmodel.py OUT.bin --shape tinyllama [--format v0|v2] [--seed S]
    /usr/bin/python3 bench/mkmodel.py OUT.bin --dim 2048 --hidden 5632 --layers 22 \
        --heads 32 --kv-heads 4 --vocab 32000 --seq-len 2048 [--format v0|v2] [--seed S]

    (apt-get install python3-numpy if `import numpy` fails.)

Formats (as in karpathy/llama2.c export.py):
  v0  legacy_export: 7 x int32 header (dim, hidden_dim, n_layers, n_heads,
      n_kv_heads, vocab_size, seq_len), vocab_size > 0 = shared classifier
      (negative = separate wcls appended at the end), then f32:
      token_embedding[vocab,dim], rms_att[L,dim], wq[L,dim,dim],
      wk[L,kv_dim,dim], wv[L,kv_dim,dim], wo[L,dim,dim], rms_ffn[L,dim],
      w1[L,hidden,dim], w2[L,dim,hidden], w3[L,hidden,dim], rms_final[dim],
      freq_cis_real[seq_len,head_size/2], freq_cis_imag[seq_len,head_size/2]
      (, wcls[vocab,dim] if not shared).   Read by run.c.
  v2  version2_export: 256-byte header (uint32 magic 0x616b3432 "ak42",
      int32 version=2, 7 x int32 params (vocab_size positive), uint8
      shared_classifier, int32 group_size, zero pad), then f32 norms
      (rms_att[L,dim], rms_ffn[L,dim], rms_final[dim]), then for every weight
      in order token_embedding, wq[0..L), wk.., wv.., wo.., w1.., w2.., w3..
      (, wcls if not shared): int8 values, then f32 scales (one per group of
      group_size, symmetric, scale = max|w|/127).   Read by runq.c.

Weights are N(0, 0.02) float32, norms are 1.0. The classifier rows of
tokens 1 (BOS) and 2 (EOS) are set to zero (the embedding rows when the
classifier is shared) so that greedy decoding never picks them: run.c stops
at BOS, and a benchmark must not end early on random weights
(--keep-special-rows turns this off). With the same --seed, the v0
and v2 files hold the same weights (v2 is the Q8_0 quantization of v0), since
the matrices are drawn from one generator in the same order in both formats.
Everything is written matrix by matrix, so memory stays small.
"""
import argparse
import math
import struct
import sys

try:
    import numpy as np
except ImportError:
    sys.exit("numpy missing: run with /usr/bin/python3 (apt-get install python3-numpy)")

SHAPES = {
    "tinyllama": dict(dim=2048, hidden=5632, layers=22, heads=32, kv_heads=4, vocab=32000, seq_len=2048),
    "stories110m": dict(dim=768, hidden=2048, layers=12, heads=12, kv_heads=12, vocab=32000, seq_len=1024),
    "stories15m": dict(dim=288, hidden=768, layers=6, heads=6, kv_heads=6, vocab=32000, seq_len=256),
}

STD = 0.02


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="preset shape (explicit flags override it)")
    ap.add_argument("--dim", type=int)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--format", choices=["v0", "v2"], default="v0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group-size", type=int, default=64, help="v2 quantization group size (default 64)")
    ap.add_argument("--keep-special-rows", action="store_true",
                    help="do not zero the classifier rows of tokens 1 and 2 (BOS/EOS)")
    ap.add_argument("--unshared-classifier", action="store_true",
                    help="write a separate output classifier (wcls) instead of sharing the embedding")
    a = ap.parse_args()
    cfg = dict(SHAPES[a.shape]) if a.shape else {}
    for k in ("dim", "hidden", "layers", "heads", "kv_heads", "vocab", "seq_len"):
        v = getattr(a, k)
        if v is not None:
            cfg[k] = v
        if k not in cfg:
            ap.error(f"--{k.replace('_', '-')} is required (or give --shape)")
    if cfg["dim"] % cfg["heads"] or cfg["heads"] % cfg["kv_heads"]:
        ap.error("dim must be divisible by heads, and heads by kv-heads")
    return a, cfg


class Writer:
    def __init__(self, f, seed, zero_rows_of=None):
        self.f = f
        self.rng = np.random.default_rng(seed)
        self.zero_rows_of = zero_rows_of  # matrix name whose rows 1, 2 are zeroed

    def rand(self, shape, name=None):
        x = self.rng.standard_normal(shape, dtype=np.float32)
        x *= np.float32(STD)
        if name is not None and name == self.zero_rows_of:
            x[1:3] = 0.0
        return x

    def f32(self, arr):
        self.f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())

    def ones(self, n):
        self.f32(np.ones(n, dtype=np.float32))


def matrices(cfg, shared):
    """(name, shape) of every random matrix, in the order both exports use."""
    d, h, L = cfg["dim"], cfg["hidden"], cfg["layers"]
    kv = d // cfg["heads"] * cfg["kv_heads"]
    out = [("tok_embeddings", (cfg["vocab"], d))]
    for name, shp in (("wq", (d, d)), ("wk", (kv, d)), ("wv", (kv, d)), ("wo", (d, d)),
                      ("w1", (h, d)), ("w2", (d, h)), ("w3", (h, d))):
        out += [(f"{name}.{l}", shp) for l in range(L)]
    if not shared:
        out.append(("output", (cfg["vocab"], d)))
    return out


def freqs(cfg):
    hs = cfg["dim"] // cfg["heads"]
    # model.py precompute_freqs_cis(dim // n_heads, max_seq_len), theta 10000
    inv = 1.0 / (10000.0 ** (np.arange(0, hs, 2)[: hs // 2].astype(np.float32) / hs))
    t = np.arange(cfg["seq_len"], dtype=np.float32)
    fr = np.outer(t, inv).astype(np.float32)
    return np.cos(fr), np.sin(fr)


def write_v0(w, cfg, shared):
    d, L = cfg["dim"], cfg["layers"]
    vocab = cfg["vocab"] if shared else -cfg["vocab"]
    w.f.write(struct.pack("<7i", d, cfg["hidden"], L, cfg["heads"], cfg["kv_heads"], vocab, cfg["seq_len"]))
    mats = matrices(cfg, shared)
    it = iter(mats)

    def emit(count):
        for _ in range(count):
            name, shp = next(it)
            w.f32(w.rand(shp, name))

    emit(1)                 # token embedding
    w.ones(L * d)           # rms_att
    emit(4 * L)             # wq, wk, wv, wo
    w.ones(L * d)           # rms_ffn
    emit(3 * L)             # w1, w2, w3
    w.ones(d)               # rms_final
    cos, sin = freqs(cfg)
    w.f32(cos)
    w.f32(sin)
    if not shared:
        emit(1)             # wcls


def write_v2(w, cfg, shared, gs):
    d, L = cfg["dim"], cfg["layers"]
    while d % gs != 0:
        gs //= 2
        print(f"BACKOFF: reducing group size to {gs} to fit dim", file=sys.stderr)
    hdr = struct.pack("<Ii", 0x616B3432, 2)
    hdr += struct.pack("<7i", d, cfg["hidden"], L, cfg["heads"], cfg["kv_heads"], cfg["vocab"], cfg["seq_len"])
    hdr += struct.pack("<B", int(shared)) + struct.pack("<i", gs)
    w.f.write(hdr + b"\0" * (256 - len(hdr)))
    w.ones(L * d)  # rms_att
    w.ones(L * d)  # rms_ffn
    w.ones(d)      # rms_final
    for name, shp in matrices(cfg, shared):
        x = w.rand(shp, name)
        assert x.size % gs == 0, f"{name}: numel not a multiple of group size {gs}"
        x = x.reshape(-1, gs)
        scale = np.abs(x).max(axis=1) / np.float32(127.0)
        div = np.where(scale == 0, np.float32(1.0), scale)  # all-zero groups (zeroed rows) -> q = 0
        q = np.round(x / div[:, None]).astype(np.int8)  # round half to even, like torch.round
        w.f.write(q.tobytes())
        w.f32(scale.astype(np.float32))


def main():
    a, cfg = parse_args()
    shared = not a.unshared_classifier
    with open(a.out, "wb", buffering=16 << 20) as f:
        zr = None if a.keep_special_rows else ("tok_embeddings" if shared else "output")
        w = Writer(f, a.seed, zr)
        if a.format == "v0":
            write_v0(w, cfg, shared)
        else:
            write_v2(w, cfg, shared, a.group_size)
        size = f.tell()
    d, h, L, kv = cfg["dim"], cfg["hidden"], cfg["layers"], cfg["dim"] // cfg["heads"] * cfg["kv_heads"]
    nparam = cfg["vocab"] * d * (1 if shared else 2) + L * (2 * d * d + 2 * kv * d + 3 * d * h + 2 * d) + d
    print(f"wrote {a.out}: format {a.format}, {size} bytes, {nparam/1e6:.1f}M params, "
          f"cfg {cfg}, shared_classifier={shared}, seed {a.seed}", file=sys.stderr)


if __name__ == "__main__":
    main()
