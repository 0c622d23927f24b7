#!/usr/bin/env python3
"""Quantized GGUF fixtures made by llama.cpp's own llama-quantize, and llama.cpp's
own numbers for them (tests/fixtures/gguf/reference.json).

Nothing of llama.cpp is in this repository. The peers are built outside it
(see tests/oracle/GGUF_FIXTURES.md) and named on the command line:

    python3 tests/oracle/quantize_gguf_fixtures.py \
        --mainline-build /tmp/peers/llama.cpp/build --ik-build /tmp/peers/ik_llama.cpp/build \
        --models DIR_FROM_make_gguf_models.py --out tests/fixtures/gguf [--scratch /tmp/gguf_scratch]

Needs numpy (and sentencepiece for the tokenizer cross-check); reads GGUF files
with the mainline peer's gguf-py (BUILD/../gguf-py) and dequantizes every tensor
with the mainline peer's libggml-base.so through ctypes (ggml_get_type_traits(type)->to_float).

What it does:
 1. copies NAME-f16.gguf of every model and hf_reference.json into --out;
 2. quantizes llama-f16.gguf with mainline llama-quantize to every type in LLAMA_TYPES and
    the other models' f16 files to Q4_K_M and Q8_0 (with ik_llama.cpp's llama-quantize where
    mainline cannot load the architecture: qwen3, qwen3moe, and deepseek2, whose file mainline
    refuses without deepseek2.rope.scaling.yarn_log_multiplier); files in COMMIT go to --out,
    the others to --scratch (made again the same way by this script);
 3. for every file (f32, f16, bf16 and the quantized ones): sha256, every tensor's type and
    shape, the sha256 of the float32 little-endian bytes ggml's to_float gives for the whole
    tensor and its first 8 values, checked against gguf-py's numpy dequantize where it has one;
    llama-perplexity -c 128 -t 2 on the held-out text with each runtime that loads the
    architecture, with the default f16 KV cache and with an f32 one (final PPL and the
    running value printed after each chunk);
 4. llama-tokenize ids of a few strings on llama-f16.gguf (both runtimes), with sentencepiece's.
"""
import argparse
import ctypes
import datetime
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_files import log, sha256_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gguf_layout import layout  # noqa: E402

ARCHS = ["llama", "qwen2", "qwen3", "qwen3moe", "deepseek2", "smollm3"]
LLAMA_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K",
               "IQ4_NL", "IQ4_XS"]
OTHER_TYPES = ["Q4_K_M", "Q8_0"]
# which llama-quantize / llama-perplexity can load each architecture
QUANTIZER = {"llama": "mainline", "qwen2": "mainline", "qwen3": "ik", "qwen3moe": "ik", "deepseek2": "ik",
             "smollm3": "ik"}
RUNTIMES = {"llama": ["mainline", "ik"], "qwen2": ["mainline", "ik"], "qwen3": ["ik"], "qwen3moe": ["ik"],
            "deepseek2": ["mainline", "ik"], "smollm3": ["ik"]}
NOT_LOADED = {
    ("qwen3", "mainline"): "unknown model architecture: 'qwen3' (mainline has no qwen3 at this commit)",
    ("qwen3moe", "mainline"): "unknown model architecture: 'qwen3moe'",
    ("smollm3", "mainline"): "unknown model architecture: 'smollm3'",
}
# the file the quantizations are made from: f16, or bf16 where the model was saved in bf16 (exact)
QUANT_SOURCE = {"smollm3": "bf16"}
# Mainline at this commit refuses a deepseek2 file without deepseek2.rope.scaling.yarn_log_multiplier,
# which the converter writes only with YaRN. Its llama-perplexity runs a copy with the key added as 0:
# the multiplier scales ln(rope factor), 0 without YaRN, so the forward pass is the one the file describes.
MAINLINE_EXTRA_KEY = {"deepseek2": ("deepseek2.rope.scaling.yarn_log_multiplier", 0.0)}
IK_NO_F32_KV = ("ik_llama.cpp runs flash attention by default and its CPU flash attention stops with a fatal "
                "error on an f32 K cache (iqk_flash_attn.cpp:314); with -fa off it refuses an f32 V cache "
                "('V cache quantization requires flash_attn')")
TOKENIZE_STRINGS = ["Once upon a time", "Hello world", " leading space", "two  spaces and\nnew lines\n\n",
                    "It is a truth universally acknowledged", "caf\u00e9 \u2013 \u201cquoted\u201d \u2019",
                    "Lily's 3 cats: 42!", ""]
THREADS = 2
WORKDIR = None  # the tools run here (ik's llama-perplexity leaves a llama.log in its working directory)


def committed(arch, kind):
    """The quantization source (f16, smollm3's bf16) of every architecture, every llama quantization,
    Q4_K_M of the others, and llama's f32 (greedy generation against transformers)."""
    if kind in ("f32", "f16", "bf16"):
        return kind == QUANT_SOURCE.get(arch, "f16") or (kind == "f32" and arch == "llama")
    return arch == "llama" or kind == "Q4_K_M"


class Peer:
    def __init__(self, build, name):
        self.build, self.name = os.path.abspath(build), name
        self.bin = os.path.join(self.build, "bin")
        self.src = os.path.dirname(self.build)
        for t in ("llama-quantize", "llama-perplexity", "llama-tokenize"):
            assert os.path.exists(os.path.join(self.bin, t)), (name, t)

    def tool(self, t):
        return os.path.join(self.bin, t)

    def info(self):
        cache = {}
        for line in open(os.path.join(self.build, "CMakeCache.txt"), errors="replace"):
            m = re.match(r"^(CMAKE_BUILD_TYPE|GGML_NATIVE|GGML_AVX\w*|LLAMA_CURL|CMAKE_C_COMPILER|"
                         r"CMAKE_CXX_COMPILER|BUILD_SHARED_LIBS):\w+=(.*)$", line.strip())
            if m:
                cache[m.group(1)] = m.group(2)
        v = subprocess.run([self.tool("llama-perplexity"), "--version"], capture_output=True, text=True)
        return {"build_dir": self.build, "cmake_cache": cache, "version_output": (v.stdout + v.stderr).strip()}


# ----------------------------------------------------------------------------
# ggml's own dequantization through ctypes

class GGMLTypeTraits(ctypes.Structure):
    # ggml/include/ggml.h (mainline c392e509): struct ggml_type_traits
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


class GGMLInitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class GGML:
    def __init__(self, lib_path):
        self.lib = ctypes.CDLL(lib_path)
        self.lib.ggml_get_type_traits.restype = ctypes.POINTER(GGMLTypeTraits)
        self.lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        # ggml_init fills the fp16 -> fp32 table that the block scales are read through
        self.lib.ggml_init.restype = ctypes.c_void_p
        self.lib.ggml_init.argtypes = [GGMLInitParams]
        self.lib.ggml_free.argtypes = [ctypes.c_void_p]
        self.lib.ggml_free(self.lib.ggml_init(GGMLInitParams(1 << 20, None, False)))

    def traits(self, t):
        return self.lib.ggml_get_type_traits(int(t)).contents

    def to_float(self, ggml_type, raw, n):
        tr = self.traits(ggml_type)
        if int(ggml_type) == 0:  # F32: no to_float; the bytes are the values
            assert len(raw) == 4 * n
            return np.frombuffer(raw, dtype="<f4").copy()
        assert tr.to_float, tr.type_name
        assert n % tr.blck_size == 0 and len(raw) == n // tr.blck_size * tr.type_size, (tr.type_name, n, len(raw))
        buf = ctypes.create_string_buffer(raw, len(raw))
        out = np.empty(n, dtype=np.float32)
        TO_FLOAT(tr.to_float)(ctypes.cast(buf, ctypes.c_void_p),
                              out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n)
        return out


def tensor_records(path, ggml, gguf):
    from gguf import GGUFReader
    r = GGUFReader(path)
    recs = []
    for t in r.tensors:
        n = int(t.n_elements)
        raw = t.data.tobytes()
        y = ggml.to_float(t.tensor_type, raw, n)
        rec = {"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
               "n_bytes": len(raw), "sha256_f32": hashlib.sha256(y.astype("<f4").tobytes()).hexdigest(),
               "first8": [float(v) for v in y[:8]]}
        try:  # an independent reading: gguf-py's numpy dequantization
            ref = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)
            rec["gguf_py_max_abs_diff"] = float(np.max(np.abs(ref - y))) if n else 0.0
        except NotImplementedError:
            rec["gguf_py_max_abs_diff"] = None
        recs.append(rec)
    return recs


# ----------------------------------------------------------------------------
# llama.cpp tools

PPL_RUNNING = re.compile(r"\[(\d+)\]([0-9.]+|nan|inf),")
PPL_FINAL = re.compile(r"Final estimate: PPL(?: over \d+ chunks for n_ctx=\d+)? = ([0-9.]+) \+/- ([0-9.]+)")


def perplexity(peer, model, text, kv_f32):
    cmd = [peer.tool("llama-perplexity"), "-m", model, "-f", text, "-c", "128", "-t", str(THREADS)]
    if kv_f32:
        cmd += ["-ctk", "f32", "-ctv", "f32"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=WORKDIR)
    outp = p.stdout + p.stderr
    m = PPL_FINAL.search(outp)
    res = {"cmd": " ".join([os.path.basename(cmd[0])] + [os.path.basename(c) if c in (model, text) else c
                                                          for c in cmd[1:]]),
           "rc": p.returncode, "seconds": round(time.time() - t0, 2)}
    if p.returncode != 0 or not m:
        err = [ln for ln in outp.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
        res["error"] = err[-3:] if err else outp[-500:]
        return res
    res["ppl"] = float(m.group(1))
    res["ppl_err"] = float(m.group(2))
    res["running_ppl"] = [float(v) for _, v in PPL_RUNNING.findall(outp)]
    mc = re.search(r"calculating perplexity over (\d+) chunks", outp)
    res["n_chunks"] = int(mc.group(1)) if mc else len(res["running_ppl"])
    return res


def with_f32_key(src, dst, key, value):
    """A copy of the GGUF file src with one more float32 metadata key (the header re-padded; the
    tensor offsets are relative to the data section, so they stay)."""
    b = open(src, "rb").read()
    g = layout(b)
    assert key not in g["keys"], (src, key)
    extra = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<If", 6, value)
    head = b[:16] + struct.pack("<Q", g["n_kv"] + 1) + b[24:g["kv_end"]] + extra + b[g["kv_end"]:g["infos_end"]]
    with open(dst, "wb") as f:
        f.write(head + b"\0" * (-len(head) % g["alignment"]) + b[g["data"]:])


def tokenize(peer, model, s=None, file=None):
    src = ["-f", file] if file else ["-p", s]
    p = subprocess.run([peer.tool("llama-tokenize"), "-m", model] + src + ["--ids", "--log-disable"],
                       capture_output=True, text=True, cwd=WORKDIR)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("[")]
    return json.loads(line[-1]) if p.returncode == 0 and line else {"rc": p.returncode, "out": p.stdout[-300:]}


def quantize(peer, src, dst, qtype):
    p = subprocess.run([peer.tool("llama-quantize"), src, dst, qtype, str(THREADS)], capture_output=True, text=True,
                       cwd=WORKDIR)
    if p.returncode != 0:
        raise RuntimeError(f"llama-quantize {qtype} {src}: {(p.stdout + p.stderr)[-800:]}")
    return " ".join(["llama-quantize", os.path.basename(src), os.path.basename(dst), qtype, str(THREADS)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mainline-build", required=True)
    ap.add_argument("--ik-build", required=True)
    ap.add_argument("--mainline-commit", default="c392e5094deaf2d1a7c18683214f007fad3fe42b")
    ap.add_argument("--ik-commit", default="8337e4cd3861406fc04e0854b1409cd1b027fbc9")
    ap.add_argument("--models", required=True, help="make_gguf_models.py's output folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scratch", default="/tmp/gguf_scratch")
    ap.add_argument("--heldout", default=None, help="default: OUT/heldout_pride.txt")
    ap.add_argument("--tok-model", default=None, help="tok512.model, for the sentencepiece ids of the strings")
    ap.add_argument("--only", default="", help="ARCH,...: redo these architectures' files in OUT/reference.json, keep the rest")
    args = ap.parse_args()
    archs = [a for a in args.only.split(",") if a] or ARCHS
    global WORKDIR
    args.out, args.models, args.scratch = (os.path.abspath(x) for x in (args.out, args.models, args.scratch))
    WORKDIR = args.scratch
    peers = {"mainline": Peer(args.mainline_build, "llama.cpp"), "ik": Peer(args.ik_build, "ik_llama.cpp")}
    sys.path.insert(0, os.path.join(peers["mainline"].src, "gguf-py"))
    import gguf  # the mainline peer's gguf-py
    ggml = GGML(os.path.join(peers["mainline"].bin, "libggml-base.so"))
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.scratch, exist_ok=True)
    heldout = os.path.abspath(args.heldout or os.path.join(args.out, "heldout_pride.txt"))
    hb = open(heldout, "rb").read()

    ref = {
        "what": "llama.cpp's own numbers for the GGUF fixtures in tests/fixtures/gguf (made by "
                "tests/oracle/quantize_gguf_fixtures.py; the transformers float64 numbers are in hf_reference.json)",
        "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "peers": {"mainline": dict(repo="ggerganov/llama.cpp", commit=args.mainline_commit, **peers["mainline"].info()),
                  "ik": dict(repo="ikawrakow/ik_llama.cpp", commit=args.ik_commit, **peers["ik"].info())},
        "heldout": {"file": "heldout_pride.txt", "n_bytes": len(hb), "sha256": hashlib.sha256(hb).hexdigest(),
                    "source": "pg1342_pride_and_prejudice.txt bytes [36300, 43314) (Project Gutenberg eBook "
                              "#1342, from 'It is a truth universally acknowledged'; CRLF kept)"},
        "perplexity_settings": {"c": 128, "t": THREADS, "kv_cache": {"f16": "the default (f16 K and V cache); mainline's default "
                                                                             "runs without flash attention, ik_llama.cpp's with it",
                                                                      "f32": "-ctk f32 -ctv f32 (mainline only)"},
                                "note": "running_ppl[k] is the value llama-perplexity prints after chunk k+1"},
        "dequantization": "ggml_get_type_traits(type)->to_float(x, y, n_elements) from the mainline peer's "
                          "libggml-base.so over the whole tensor (F32 tensors: their bytes); sha256 of y as "
                          "float32 little-endian; gguf_py_max_abs_diff compares gguf-py's numpy dequantize",
        "files": {},
        "tokenize": {},
    }
    if archs != ARCHS:
        prev = json.load(open(os.path.join(args.out, "reference.json")))
        prev["files"] = {k: v for k, v in prev["files"].items() if v["arch"] not in archs}
        prev.setdefault("redone", []).append({"archs": archs, "made": ref["made"], "peers": ref["peers"]})
        ref = prev

    # 1-2: the files
    plan = []  # (arch, kind, path, how)
    for arch in archs:
        for kind in ("f32", "f16", "bf16"):
            src = os.path.join(args.models, arch, f"{arch}-{kind}.gguf")
            if committed(arch, kind):
                dst = os.path.join(args.out, f"{arch}-{kind}.gguf")
                shutil.copyfile(src, dst)
                plan.append((arch, kind, dst, f"convert_hf_to_gguf.py --outtype {kind} (make_gguf_models.py)"))
            else:
                plan.append((arch, kind, src, f"convert_hf_to_gguf.py --outtype {kind} (make_gguf_models.py)"))
    shutil.copyfile(os.path.join(args.models, "hf_reference.json"), os.path.join(args.out, "hf_reference.json"))
    for arch in archs:
        source = os.path.join(args.out, f"{arch}-{QUANT_SOURCE.get(arch, 'f16')}.gguf")
        q = peers[QUANTIZER[arch]]
        for qt in (LLAMA_TYPES if arch == "llama" else OTHER_TYPES):
            dst = os.path.join(args.out if committed(arch, qt) else args.scratch, f"{arch}-{qt}.gguf")
            how = quantize(q, source, dst, qt)
            plan.append((arch, qt, dst, f"{q.name} {how}"))
            log("quantized", os.path.basename(dst), os.path.getsize(dst))

    # 3: numbers for every file
    for arch, kind, path, how in plan:
        name = os.path.basename(path)
        t0 = time.time()
        rec = {"arch": arch, "type": kind, "committed": committed(arch, kind), "made_by": how,
               "bytes": os.path.getsize(path), "sha256": sha256_file(path)}
        recs = tensor_records(path, ggml, gguf)
        rec["tensor_types"] = {}
        for t in recs:
            rec["tensor_types"][t["type"]] = rec["tensor_types"].get(t["type"], 0) + 1
        bad = [t["name"] for t in recs if t["gguf_py_max_abs_diff"] not in (None, 0.0)]
        rec["gguf_py_disagrees"] = bad
        rec["tensors"] = recs
        rec["perplexity"] = {}
        for rt in ("mainline", "ik"):
            if rt not in RUNTIMES[arch]:
                rec["perplexity"][rt] = {"not_loaded": NOT_LOADED[(arch, rt)]}
                continue
            run_path, note = path, None
            if rt == "mainline" and arch in MAINLINE_EXTRA_KEY:
                key, value = MAINLINE_EXTRA_KEY[arch]
                run_path = os.path.join(args.scratch, "mainline-" + name)
                with_f32_key(path, run_path, key, value)
                note = f"run on a copy with {key} = {value} added (MAINLINE_EXTRA_KEY)"
            rec["perplexity"][rt] = {"kv_f16": perplexity(peers[rt], run_path, heldout, False)}
            if note:
                rec["perplexity"][rt]["loaded_from"] = note
            if rt == "mainline":
                rec["perplexity"][rt]["kv_f32"] = perplexity(peers[rt], run_path, heldout, True)
            else:
                rec["perplexity"][rt]["kv_f32"] = {"not_run": IK_NO_F32_KV}
        ref["files"][name] = rec
        summ = {rt: (v.get("kv_f16", {}).get("ppl"), v.get("kv_f32", {}).get("ppl")) for rt, v in rec["perplexity"].items()}
        log(f"{name}: {rec['bytes']} bytes, types {rec['tensor_types']}, ppl {summ}, "
            f"gguf-py disagrees on {len(bad)}, {time.time() - t0:.1f}s")

    # 4: tokenizer (kept as it was when only some architectures are redone)
    if archs != ARCHS:
        with open(os.path.join(args.out, "reference.json"), "w") as f:
            json.dump(ref, f, indent=1)
        log("updated", os.path.join(args.out, "reference.json"))
        return
    llama_f16 = os.path.join(args.out, "llama-f16.gguf")
    sp = None
    if args.tok_model:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb
        m = pb.ModelProto()
        m.ParseFromString(open(args.tok_model, "rb").read())
        m.normalizer_spec.remove_extra_whitespaces = False
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(m.SerializeToString())
    ref["tokenize"]["file"] = "llama-f16.gguf"
    ref["tokenize"]["how"] = "llama-tokenize -m llama-f16.gguf -p STRING --ids --log-disable (adds BOS)"
    cases = []
    for s in TOKENIZE_STRINGS:
        c = {"text": s, "mainline": tokenize(peers["mainline"], llama_f16, s), "ik": tokenize(peers["ik"], llama_f16, s)}
        if sp is not None:
            c["sentencepiece"] = [1] + sp.encode(s)  # remove_extra_whitespaces off, BOS in front
        cases.append(c)
        log("tokenize", repr(s), c["mainline"], "same in ik:", c["ik"] == c["mainline"],
            "same as sentencepiece:", c.get("sentencepiece") == c["mainline"])
    ref["tokenize"]["cases"] = cases
    held_ids = tokenize(peers["mainline"], llama_f16, file=heldout)
    ref["tokenize"]["heldout_ids"] = held_ids
    hf = json.load(open(os.path.join(args.out, "hf_reference.json")))
    ref["tokenize"]["heldout_ids_match_hf_reference"] = held_ids == hf["texts"]["pride"]["ids"]
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    log("wrote", os.path.join(args.out, "reference.json"))


if __name__ == "__main__":
    main()
