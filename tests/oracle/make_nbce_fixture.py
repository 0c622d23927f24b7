#!/usr/bin/env python3
"""Independent float64 oracle for NBCE (naive-Bayes context extension) on stories260K.

Follows bojone/NBCE test.py's decode loop as docs/NBCE.md ("One step, exactly")
states it, with greedy choice instead of sampling at tau = 0.01:

  rows k = 0..n: row 0 = the template with an empty context, row i+1 = context i;
  each step, from the last position of every row:
    lp_k  = logits_k - logsumexp(logits_k)
    top-p on every row (transformers' TopPLogitsWarper: sort ascending, cumsum of
          the softmax of the sorted values, drop entries with cumsum <= 1 - p but
          never the largest; dropped = -inf; no renormalisation)
    H_k   = -sum_v exp(lp_k[v]) * clamp(lp_k[v], -100, 0)
    H_prev -= eta from the second step on
    k*    = argmin_{k>=1} H_k (first index on ties)
    z     = (1 + beta) lp_k* - beta lp_0 where lp_0 > -100, else lp_k*
    token = argmax z (first index on ties); stop on 1 (BOS) or 2 (EOS)
  and the token is appended to every row. --pool mean replaces the choice of k* by
  P = mean_{k>=1} max(lp_k, -100) (-inf where every row k>=1 is -inf).

Rows run independently from position 0 (no padding), each recomputed in full at
every step. The model is the transformers LlamaForCausalLM that make_fixtures.py
builds from stories260K.bin, in float64 (patch_float64); the NBCE step runs in
torch with transformers' own TopPLogitsWarper, and again in plain numpy as a
cross-check. The numpy float64 llama2.c-layout forward of make_fixtures.py runs
the whole loop a second time; both must give the same tokens and choices.

Documents are excerpts of tinystories_sample_cs336.txt. The fixture holds their
exact file bytes (trailing whitespace included), the ids of every row, the
generated ids, the chosen context per step, the sources, and per-step robustness
margins (the script fails if one is below MIN_MARGIN: the engine computes in
float32, so a decision closer than that could flip there).

Usage:
    python3 make_nbce_fixture.py ASSETS_DIR OUT_JSON [--numpy-only] [--device cpu]
ASSETS_DIR holds stories260K.bin, tok512.model and tinystories_sample_cs336.txt.
--numpy-only: no torch/transformers (a local logic check; the fixture then says so).
"""
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import BOS, HF, load_llama2c_v0, np_forward, oracle_args, stories_tokenizer  # noqa: E402

EOS = 2
STOP = (BOS, EOS)
MIN_MARGIN = 1e-4
SOURCE_TEXT = "tinystories_sample_cs336.txt"
DEFAULT_TEMPLATE = "{context}\n\n{question}"

# Excerpts of tinystories_sample_cs336.txt (each must occur in it verbatim).
BEN_QUOTE = ("One day, Ben was walking through the store when he came across a very special vase. "
             "When Ben saw it he was amazed!\nHe said, \u201cWow, that is a really amazing vase! Can I buy it?\u201d")
OLLIE = ("Once upon a time, there was a reliable otter named Ollie. He lived in a river with his family. "
         "They all loved to play and swim together.")
OLLIE_FISH = (OLLIE + "\nOne day, Ollie's mom said, \"Ollie, hurry and get some fish for dinner!\" "
              "Ollie swam fast to catch fish.")
TIM = ("One day, a little boy named Tim went to the park. He saw a big tiger. The tiger was not mean, "
       "but very easy to play with. Tim and the tiger played all day. They had lots of fun.")
BOB = ("Once upon a time there was a friendly little boy called Bob. Bob loved to pick flowers and look "
       "for birds. One day he decided to go outside with his friends to pick some more flowers.")
LUCY = ("Once upon a time, in a small house, there lived a little girl named Lucy. Lucy loved the color "
        "orange. She had an orange dress, an orange ball, and even an orange cat.")
EXCERPTS = [BEN_QUOTE, OLLIE, OLLIE_FISH, TIM, BOB, LUCY]

# Folders: (file name, file text). Names sort differently byte-wise than
# case-insensitively or naturally ("B_" < "a10" < "a9" < "b_"); each file ends
# in a different run of C isspace characters (dropped by the engine).
DOCS4 = [("B_lucy.txt", LUCY + "\n"),
         ("a10_ben.txt", BEN_QUOTE + " \t\r\n\n"),
         ("a9_ollie.txt", OLLIE_FISH),
         ("b_tim.txt", TIM + "\n\v\f \n")]
DOCS3 = [("1.txt", TIM + "\r\n"), ("2.txt", LUCY + "\n\n"), ("3.txt", BOB + " ")]
DOCS_DUP = [("a.txt", OLLIE + "\n"), ("b.txt", LUCY + "\n"), ("c.txt", LUCY + " \t\n\n")]

CASES = [
    {"name": "defaults_4docs",
     "description": "defaults (beta 0.25, eta 0.1, top-p 0.95, min-entropy), 4 documents",
     "docs": DOCS4, "question": "Mom went to the", "n": 24, "opts": {}},
    {"name": "beta1_eta05",
     "description": "beta 1.0, eta 0.5, the same 4 documents, another question",
     "docs": DOCS4, "question": "Why was Lily happy?", "n": 24,
     "opts": {"beta": 1.0, "eta": 0.5}},
    {"name": "one_doc_beta0_eta0",
     "description": "one document, beta 0, eta 0: equals plain greedy decoding of its row",
     "docs": [("only.txt", BEN_QUOTE + "\n")], "question": "Once upon a time, Lily", "n": 24,
     "opts": {"beta": 0.0, "eta": 0.0}},
    {"name": "mean_3docs",
     "description": "mean pooling, 3 documents",
     "docs": DOCS3, "question": "Ollie went to the", "n": 24, "opts": {"pool": "mean"}},
    {"name": "template_topp09",
     "description": "custom template with \\n, --nbce-top-p 0.9, 3 documents, 2 threads",
     "docs": DOCS3, "question": "Where did Lily go?", "n": 24,
     "opts": {"top_p": 0.9, "template": "Story: {context}\\nQuestion: {question}\\nAnswer:", "threads": 2}},
    {"name": "duplicate_docs",
     "description": "two identical documents (b.txt, c.txt after trailing whitespace) and one other: "
                    "c.txt is never chosen",
     "docs": DOCS_DUP, "question": "One day, Lily", "n": 24, "opts": {}},
]

C_ISSPACE = b" \t\n\v\f\r"


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# ----------------------------------------------------------------------------
# the NBCE step, twice: plain numpy, and torch with transformers' TopPLogitsWarper

def np_log_softmax(x):
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def np_top_p(lp, p):
    """HF TopPLogitsWarper on one row. Returns (masked row, distance of 1-p to the
    nearest value of the ascending cumsum, number of entries dropped)."""
    order = np.argsort(lp, kind="stable")
    s = lp[order]
    e = np.exp(s - s[-1])
    cum = np.cumsum(e / e.sum())
    drop = cum <= 1.0 - p
    drop[-1] = False
    out = lp.copy()
    out[order[drop]] = -np.inf
    return out, float(np.min(np.abs(cum - (1.0 - p)))), int(drop.sum())


def np_entropy(lp):
    with np.errstate(invalid="ignore"):
        t = np.exp(lp) * np.clip(lp, -100.0, 0.0)
    t[np.isneginf(lp)] = 0.0
    return float(-np.sum(t))


def np_step(logits, opt, k_prev, first):
    """One NBCE step in numpy from the rows' last-position logits (rows, V)."""
    lp = np.stack([np_top_p(np_log_softmax(l), opt["top_p"])[0] for l in logits])
    beta = opt["beta"]
    H = H_raw = None
    if opt["pool"] == "mean":
        k = -1
        clipped = np.maximum(lp[1:], -100.0)
        P = clipped.mean(axis=0)
        P[np.all(np.isneginf(lp[1:]), axis=0)] = -np.inf
        base = P
    else:
        H = np.array([np_entropy(r) for r in lp])
        H_raw = H.copy()
        if not first:
            H[k_prev] -= opt["eta"]
        k = 1 + int(np.argmin(H[1:]))
        base = lp[k]
    with np.errstate(invalid="ignore"):
        merged = (1.0 + beta) * base - beta * lp[0]
    z = np.where(lp[0] > -100.0, merged, base)
    assert not np.any(np.isnan(z))
    return int(np.argmax(z)), k, H, z, lp, H_raw


class TorchStep:
    def __init__(self):
        import torch
        import transformers
        try:
            from transformers import TopPLogitsWarper
        except ImportError:
            from transformers.generation.logits_process import TopPLogitsWarper
        self.torch = torch
        self.warper = TopPLogitsWarper
        self.version = transformers.__version__

    def __call__(self, logits, opt, k_prev, first):
        """bojone/NBCE test.py's core, float64, greedy instead of tau = 0.01 sampling."""
        torch = self.torch
        logits = torch.tensor(np.asarray(logits), dtype=torch.float64)
        logits = logits - logits.logsumexp(dim=-1, keepdim=True)
        dummy_ids = torch.zeros((logits.shape[0], 1), dtype=torch.long)
        logits = self.warper(opt["top_p"])(dummy_ids, logits)
        beta = opt["beta"]
        if opt["pool"] == "mean":
            k = -1
            rows = logits[1:]
            P = rows.clamp(min=-100.0).mean(dim=0)
            P = torch.where(torch.isneginf(rows).all(dim=0), torch.full_like(P, -float("inf")), P)
            base = P
        else:
            ent = -(logits.exp() * logits.clip(-100, 0)).sum(dim=-1)
            if not first:
                ent[k_prev] -= opt["eta"]
            k = int(ent[1:].argmin()) + 1
            base = logits[k]
        uncond = logits[0]
        merged = (1 + beta) * base - beta * uncond
        z = torch.where(uncond > -100, merged, base)
        return int(z.argmax()), k


# ----------------------------------------------------------------------------
# rows

def strip_trailing_space(b):
    while b and b[-1] in C_ISSPACE:
        b = b[:-1]
    return b


def build_case(case, sp):
    o = case["opts"]
    opt = {"beta": o.get("beta", 0.25), "eta": o.get("eta", 0.1), "top_p": o.get("top_p", 0.95),
           "pool": o.get("pool", "min-entropy")}
    template_arg = o.get("template")
    template = DEFAULT_TEMPLATE if template_arg is None else template_arg.replace("\\n", "\n")
    docs = sorted(case["docs"], key=lambda d: d[0].encode("utf-8"))
    contexts = []
    for name, text in docs:
        ctx = strip_trailing_space(text.encode("utf-8")).decode("utf-8")
        contexts.append({"file": name, "chunk": 0, "text": ctx, "context_tokens": len(sp.encode(ctx))})
    rows = []
    for ctx in [""] + [c["text"] for c in contexts]:
        text = template.replace("{context}", ctx).replace("{question}", case["question"])
        rows.append({"text": text, "ids": [BOS] + sp.encode(text)})
    for c, r in zip(contexts, rows[1:]):
        c["row_tokens"] = len(r["ids"])
    args = []
    if "beta" in o:
        args += ["--beta", f"{o['beta']:g}"]
    if "eta" in o:
        args += ["--eta", f"{o['eta']:g}"]
    if "top_p" in o:
        args += ["--nbce-top-p", f"{o['top_p']:g}"]
    if "pool" in o:
        args += ["--pool", o["pool"]]
    if template_arg is not None:
        args += ["--template", template_arg]
    if "threads" in o:
        args += ["--threads", str(o["threads"])]
    return opt, template_arg, template, docs, contexts, rows, args


def decode_loop(logits_fn, row_ids, opt, n, step_fn, margins=False, identical=None):
    """Greedy NBCE decode. Returns ids, chosen (per emitted token), the stop token
    or None, and per-step records (for every step, the stopping one included)."""
    rows = [list(r) for r in row_ids]
    ids, chosen, steps = [], [], []
    k_prev, stop = None, None
    for t in range(n):
        last = np.stack([logits_fn(r)[-1] for r in rows])
        res = step_fn(last, opt, k_prev, t == 0)
        tok, k = res[0], res[1]
        if margins:
            steps.append(step_margins(last, opt, res, identical))
        if tok in STOP:
            stop = tok
            break
        ids.append(tok)
        chosen.append(k - 1 if k >= 0 else -1)
        k_prev = k
        for r in rows:
            r.append(tok)
    return ids, chosen, stop, steps


def step_margins(last, opt, res, identical):
    tok, k, H, z, lp, H_raw = res
    rec = {"token": tok, "k": k}
    topp = []
    for l in last:
        _, m, nd = np_top_p(np_log_softmax(l), opt["top_p"])
        topp.append(m)
    rec["top_p_margin"] = min(topp)
    rec["top_p_margins"] = topp
    zs = np.sort(z[np.isfinite(z)])[::-1]
    rec["z_gap"] = float(zs[0] - zs[1]) if len(zs) > 1 else None
    rec["kept"] = [int(np.isfinite(r).sum()) for r in lp]
    if H is not None:
        rec["H"] = [float(h) for h in H]  # after the eta bonus
        rivals = [H[j] - H[k] for j in range(1, len(H)) if j != k and j not in identical.get(k, ())]
        rec["entropy_gap"] = float(min(rivals)) if rivals else None
        # rows with exactly the ids of the chosen one tie exactly; a later one must lose
        for j in identical.get(k, ()):
            assert H_raw[j] == H_raw[k], (j, k, H_raw[j], H_raw[k])
            assert j > k, f"row {j} identical to the chosen row {k} comes first: not first index"
    return rec


# ----------------------------------------------------------------------------

def run_case(case, sp, cfg, primary_fn, np_fn, torch_step, stats):
    """Decodes one case; returns its fixture record and a list of failures."""
    failures = []
    opt, template_arg, template, docs, contexts, rows, cli = build_case(case, sp)
    row_ids = [r["ids"] for r in rows]
    longest = max(len(r) for r in row_ids) + case["n"]
    assert longest < cfg["seq_len"], (case["name"], longest)
    for c in contexts:
        assert 40 <= c["context_tokens"] <= 150, (case["name"], c["file"], c["context_tokens"])
    identical = {}
    for i in range(1, len(row_ids)):
        identical[i] = [j for j in range(1, len(row_ids)) if j != i and row_ids[j] == row_ids[i]]

    ids, chosen, stop, steps = decode_loop(primary_fn, row_ids, opt, case["n"], np_step, True, identical)
    text = sp.decode(ids)
    print(f"\n== {case['name']}: {case['description']}", flush=True)
    print("  rows:", [len(r) for r in row_ids], "context tokens:", [c["context_tokens"] for c in contexts])
    print("  ids:", ids)
    print("  chosen:", chosen, "stop:", stop)
    print("  text:", repr(text), flush=True)

    if torch_step is not None:
        t_ids, t_chosen, t_stop, _ = decode_loop(primary_fn, row_ids, opt, case["n"], torch_step)
        if (t_ids, t_chosen, t_stop) != (ids, chosen, stop):
            stats["steps_equal"] = False
            failures.append(f"{case['name']}: torch/TopPLogitsWarper step differs from the numpy step")
        n_ids, n_chosen, n_stop, _ = decode_loop(np_fn, row_ids, opt, case["n"], np_step)
        if (n_ids, n_chosen, n_stop) != (ids, chosen, stop):
            stats["forward_equal"] = False
            failures.append(f"{case['name']}: numpy forward gives other tokens or choices than transformers")
        for r in row_ids:
            seq = r + ids
            stats["max_logit_diff"] = max(stats["max_logit_diff"], float(np.max(np.abs(primary_fn(seq) - np_fn(seq)))))

    # the invariants the brief asks for
    if case["name"] == "one_doc_beta0_eta0":
        g, seq = [], list(row_ids[1])
        for _ in range(case["n"]):
            tok = int(np.argmax(primary_fn(seq)[-1]))
            if tok in STOP:
                break
            g.append(tok)
            seq.append(tok)
        if g != ids:
            failures.append(f"{case['name']}: NBCE with one document, beta 0, eta 0 is not plain greedy")
        assert all(c == 0 for c in chosen)
    if case["name"] == "duplicate_docs":
        dup = [i for i in range(len(contexts)) if identical[i + 1]]
        assert dup == [1, 2], dup
        if 2 in chosen:
            failures.append(f"{case['name']}: the second of two identical documents was chosen")
        if 1 not in chosen:
            failures.append(f"{case['name']}: the first of the two identical documents is never chosen")
    # sources: the contexts behind the answer's tokens, in context order, with how many
    # tokens each chose (under mean pooling every context weighs in on every token)
    if opt["pool"] == "mean":
        assert all(c == -1 for c in chosen)
        count = [len(ids)] * len(contexts)
    else:
        count = [chosen.count(i) for i in range(len(contexts))]
    sources = [{"file": c["file"], "chunk": 0, "tokens": n} for c, n in zip(contexts, count) if n]

    eta_decisive = 0
    for t, s in enumerate(steps):
        if t > 0 and "H" in s and opt["eta"] > 0:
            H0 = list(s["H"])
            H0[steps[t - 1]["k"]] += opt["eta"]
            if 1 + int(np.argmin(H0[1:])) != s["k"]:
                eta_decisive += 1
    mins = {}
    for key in ("entropy_gap", "z_gap", "top_p_margin"):
        vals = [s[key] for s in steps if s.get(key) is not None]
        mins[key] = min(vals) if vals else None
        if vals and min(vals) < MIN_MARGIN:
            failures.append(f"{case['name']}: {key} {min(vals):.3g} below {MIN_MARGIN:g}")
    print("  smallest margins:", mins, "eta decisive at", eta_decisive, "steps", flush=True)

    record = {
        "name": case["name"], "description": case["description"],
        "question": case["question"], "max_tokens": case["n"],
        "template": template_arg, "template_text": template,
        "beta": opt["beta"], "eta": opt["eta"], "top_p": opt["top_p"], "pool": opt["pool"],
        "args": cli,
        "documents": [{"file": n, "text": t, "bytes_sha256": sha256(t.encode("utf-8"))} for n, t in docs],
        "contexts": contexts,
        "rows": rows,
        "ids": ids, "text": text, "stop_token": stop,
        "chosen": chosen, "distinct_chosen": len(set(chosen)),
        "eta_decisive_steps": eta_decisive,
        "sources": sources,
        "min_margins": mins,
        "steps": [{k: v for k, v in s.items()} for s in steps],
    }
    return record, failures


def main():
    args = oracle_args()
    import sentencepiece as spm
    A = lambda n: os.path.join(args.assets, n)
    cfg, W, raw = load_llama2c_v0(A("stories260K.bin"))
    tok_bytes = open(A("tok512.model"), "rb").read()
    sp = stories_tokenizer(A("tok512.model"), cfg["vocab_size"])
    assert sp.eos_id() == EOS

    source = open(A(SOURCE_TEXT), "rb").read().decode("utf-8")
    for ex in EXCERPTS:
        assert ex in source, f"not an excerpt of {SOURCE_TEXT}: {ex[:60]!r}"

    versions = {"python": sys.version.split()[0], "numpy": np.__version__, "sentencepiece": spm.__version__}
    np_fn = lambda toks: np_forward(cfg, W, toks)
    if args.numpy_only:
        primary_fn, torch_step = np_fn, None
        oracle = "numpy float64 reference of make_fixtures.py (transformers NOT run: --numpy-only)"
    else:
        hf = HF(cfg, W, args.device)
        hf.patch_float64()
        versions.update(hf.versions)
        primary_fn, torch_step = hf.logits, TorchStep()
        oracle = ("transformers LlamaForCausalLM from make_fixtures.py, float64 (patch_float64), eager "
                  "attention, each row recomputed from position 0 at every step; NBCE step in torch float64 "
                  "with transformers.TopPLogitsWarper")
    print("versions:", versions, flush=True)

    failures = []
    out_cases = []
    stats = {"steps_equal": True, "forward_equal": True, "max_logit_diff": 0.0}
    cross = {"numpy_step_vs_torch_step_equal": None, "numpy_forward_vs_hf_equal": None,
             "max_abs_logit_diff_hf_vs_numpy_forward": None}
    for case in CASES:
        record, f = run_case(case, sp, cfg, primary_fn, np_fn, torch_step, stats)
        out_cases.append(record)
        failures += f

    if torch_step is not None:
        cross = {"numpy_step_vs_torch_step_equal": stats["steps_equal"],
                 "numpy_forward_vs_hf_equal": stats["forward_equal"],
                 "max_abs_logit_diff_hf_vs_numpy_forward": stats["max_logit_diff"]}
        if not stats["max_logit_diff"] < 1e-9:
            failures.append(f"transformers and numpy forward differ by {stats['max_logit_diff']:.3g} in logits")
    switching = [c["name"] for c in out_cases if c["distinct_chosen"] >= 2 and c["pool"] != "mean"]
    if not switching:
        failures.append("no case chooses two different contexts")
    if not any(c["eta_decisive_steps"] for c in out_cases):
        print("note: in no case does eta change a choice", flush=True)
    overall = {}
    for key in ("entropy_gap", "z_gap", "top_p_margin"):
        vals = [c["min_margins"][key] for c in out_cases if c["min_margins"][key] is not None]
        overall[key] = min(vals)
    print("\ncases that switch context:", switching, flush=True)
    print("smallest margins overall:", overall, flush=True)
    print("cross checks:", cross, flush=True)

    fixture = {
        "description": "NBCE oracle for stories260K: greedy naive-Bayes context extension over document "
                       "folders (bojone/NBCE test.py's step, ALGORITHMS.md 6.2); see tests/oracle/README.md",
        "generator": "tests/oracle/make_nbce_fixture.py",
        "oracle": oracle,
        "model_file": "stories260K.bin", "model_sha256": sha256(raw),
        "tokenizer_file": "tok512.model", "tokenizer_sha256": sha256(tok_bytes),
        "engine_tokenizer_file": "tok512.bin",
        "source_text": SOURCE_TEXT,
        "conventions": {
            "rows": "row 0 = template with an empty context, row i+1 = context i; contexts = files in "
                    "byte-wise order of their names, trailing C isspace characters dropped",
            "tokenize": "BOS + sentencepiece encode(row text) (dummy prefix; remove_extra_whitespaces off)",
            "chosen": "0-based context index (k* - 1) per emitted token; -1 for mean pooling",
            "stop": "tokens 1 (BOS) and 2 (EOS) stop generation and are not emitted",
            "sources": "the contexts that chose at least one emitted token, in context order; tokens = how "
                       "many emitted tokens each chose (mean pooling: every context, tokens = all emitted)",
            "margins": "entropy_gap: H of the best rival (after the eta bonus; rows with identical ids "
                       "excluded) minus H of the chosen row; z_gap: largest minus second largest finite z; "
                       "top_p_margin: smallest |cumsum - (1 - p)| over every row's ascending cumsum",
            "min_margin_required": MIN_MARGIN,
        },
        "versions": versions,
        "cross_check": cross,
        "min_margins": overall,
        "cases": out_cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out_json)), exist_ok=True)
    with open(args.out_json, "w", encoding="utf-8") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", args.out_json, flush=True)
    if failures:
        raise SystemExit("FAILED: " + "; ".join(failures))
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
