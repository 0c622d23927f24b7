#!/usr/bin/env python3
"""Trains the project's own model (models/reader.bin) on a GPU: its
SentencePiece vocabulary, then a transformers LlamaForCausalLM, saved as a
Hugging Face folder that ./export converts.

    python3 tools/train/train.py --data DIR --out HF_DIR [--steps 6000] [--seed 1]

DIR holds pride.txt, kjv.txt and shakespeare.txt from tools/train/prepare_text.py.
A quarter of every batch is plain text from the three books (a row starts at a
paragraph, after BOS); the rest is the reading task of tools/reading.py: a
document of Pride and Prejudice or King James prose with facts in it, then a
question and its answer, `{document}\\n\\n{question} {answer}.` and EOS, packed
into rows of 512 tokens, the answer's tokens weighing ANSWER_WEIGHT times
more in the loss, the documents short at first (CURRICULUM). In 30% of the task examples the question asks about
a name the document does not mention, and the answer is a fresh random value:
there the model learns to be unsure, which is what lets NBCE's min-entropy
pooling find the one document that knows. Some distractor facts have names
that begin like the asked one, so that the whole name has to match.

Everything is seeded (the vocabulary, the data workers, the weights); a GPU
still sums in its own order, so a rerun gives a model of the same quality,
not the same bits. At the end it prints the reading-task accuracy and the
entropy of the first answer token with and without the fact (eval.json in
HF_DIR).
"""
import argparse
import json
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import reading  # noqa: E402

SEQ = 512
BOS, EOS = 1, 2
VOCAB = 4096
MODEL = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=SEQ,
             rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, hidden_act="silu",
             bos_token_id=BOS, eos_token_id=EOS, pad_token_id=None)
BOOKS = {"pride": 0.4, "kjv": 0.3, "shakespeare": 0.3}   # share of the plain-text rows
FILLERS = {"pride": 0.6, "kjv": 0.4}                      # where task documents come from
TASK_SHARE = 0.75
NEGATIVE_SHARE = 0.3
NEAR_NAME_SHARE = 0.3
ANSWER_WEIGHT = 20.0   # the answer's tokens (and EOS) count this much in the loss
CURRICULUM = 0.4       # documents grow from a few sentences to full length over this share of the steps


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---- the vocabulary ----

def train_tokenizer(books, rng, workdir):
    """BPE with byte fallback and one piece per digit, keeping every space and
    newline as written (Llama 2's settings), on the books and some task text."""
    import sentencepiece as spm
    lines = [line for paras in books.values() for p in paras for line in p.split("\n") if line.strip()]
    for _ in range(20000):
        f = reading.Names(rng).fact()
        lines.append(f.sentence())
        lines.append(f"{f.question()} {f.value}.")
    inp = os.path.join(workdir, "spm_input.txt")
    with open(inp, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    prefix = os.path.join(workdir, "tokenizer")
    spm.SentencePieceTrainer.train(
        input=inp, model_prefix=prefix, model_type="bpe", vocab_size=VOCAB, byte_fallback=True,
        split_digits=True, remove_extra_whitespaces=False, add_dummy_prefix=True,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, character_coverage=0.9999,
        unk_id=0, bos_id=BOS, eos_id=EOS, pad_id=-1, max_sentence_length=1 << 16,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=16, minloglevel=2)
    os.remove(inp)
    return prefix + ".model"


# ---- the data ----

def near_name(rng, name):
    """A name that begins as `name` does and ends otherwise."""
    while True:
        other = name[:max(2, len(name) // 2)] + reading.invent_word(rng).lower()[:rng.randint(2, 4)]
        if other != name:
            return other


def task_example(rng, fillers, progress=1.0):
    """One reading-task example: (document and question, answer). Early in
    training (progress < CURRICULUM) documents are short and hold few facts,
    so that copying the answer is found first."""
    names = reading.Names(rng)
    paragraphs = fillers[rng.choices(list(FILLERS), weights=list(FILLERS.values()))[0]]
    grown = min(1.0, progress / CURRICULUM)
    n_chars = int(math.exp(rng.uniform(math.log(60), math.log(150 + 1750 * grown))))
    negative = rng.random() < NEGATIVE_SHARE
    facts = [names.fact() for _ in range(rng.randint(0 if negative else 1, 1 + round(5 * grown)))]
    asked = names.fact() if negative else rng.choice(facts)
    if grown > 0.5 and rng.random() < NEAR_NAME_SHARE:
        other = near_name(rng, asked.name)
        if other not in names.used:
            facts.append(reading.Fact(asked.kind, other, reading.random_value(rng, asked.kind)))
    rng.shuffle(facts)
    doc = reading.document(rng, paragraphs, n_chars, facts)
    return reading.row(doc, asked.question()), f" {asked.value}."


def book_row(rng, sp, books):
    name = rng.choices(list(BOOKS), weights=list(BOOKS.values()))[0]
    paras = books[name]
    i, text = rng.randrange(len(paras)), []
    while sum(map(len, text)) < 5 * SEQ:
        text.append(paras[i % len(paras)])
        i += 1
    ids = [BOS] + sp.encode("\n\n".join(text))
    return ids[:SEQ], [1.0] * SEQ


def task_row(rng, sp, fillers, progress):
    """Examples packed into SEQ tokens, each BOS ... EOS; the weight of each
    token as a prediction target (ANSWER_WEIGHT for the answer and EOS)."""
    ids, weights = [], []
    while len(ids) < SEQ:
        question, answer = task_example(rng, fillers, progress)
        head, full = sp.encode(question), sp.encode(question + answer)
        n_answer = len(full) - len(head) if full[:len(head)] == head else 0
        ids += [BOS] + full + [EOS]
        weights += [1.0] * (1 + len(full) - n_answer) + [ANSWER_WEIGHT] * (n_answer + 1)
    return ids[:SEQ], weights[:SEQ]


def batches(sp_path, books, fillers, batch, seed, steps, workers=12):
    """Endless batches of (ids [batch, SEQ], target weights [batch, SEQ],
    is_task [batch]) from data-loader workers, which take turns."""
    import torch

    class Rows(torch.utils.data.IterableDataset):
        def __iter__(self):
            import sentencepiece as spm
            info = torch.utils.data.get_worker_info()
            rng = random.Random(seed * 1009 + (info.id if info else 0))
            sp = spm.SentencePieceProcessor(model_file=sp_path)
            for made in range(1 << 62):
                progress = made * workers / steps
                task = [rng.random() < TASK_SHARE for _ in range(batch)]
                rows = [task_row(rng, sp, fillers, progress) if t else book_row(rng, sp, books) for t in task]
                yield (torch.tensor([r[0] for r in rows], dtype=torch.long), torch.tensor([r[1] for r in rows]),
                       torch.tensor(task))

    return torch.utils.data.DataLoader(Rows(), batch_size=None, num_workers=workers, prefetch_factor=4,
                                       persistent_workers=True)


# ---- evaluation ----

def evaluate(model, sp, fillers, seed, n=300):
    """Greedy answers from one document (as NBCE's ceiling) and from two
    shorter documents in one context (as truncation, within the 512 tokens),
    and the entropy of the first answer token with the fact and without it
    (a password's first token is the space before its digits, certain either
    way: the minimum without the fact is that)."""
    import torch
    rng = random.Random(seed)
    paras = fillers["pride"]
    dev = next(model.parameters()).device

    def greedy(text, n_new=8):
        ids = torch.tensor([[BOS] + sp.encode(text)], device=dev)
        out = model.generate(ids, max_new_tokens=n_new, do_sample=False, eos_token_id=EOS, pad_token_id=EOS)
        return sp.decode(out[0, ids.shape[1]:].tolist())

    def first_entropy(text):
        ids = torch.tensor([[BOS] + sp.encode(text)], device=dev)
        with torch.no_grad():
            p = torch.softmax(model(ids).logits[0, -1].float(), -1)
        return float(-(p * torch.log(p.clamp_min(1e-30))).sum())

    one = many = 0
    h_pos, h_neg = [], []
    for i in range(n):
        names = reading.Names(rng)
        docs = [[names.fact() for _ in range(rng.randint(1, 3))] for _ in range(2)]
        texts = [reading.document(rng, paras, rng.randint(500, 760), f) for f in docs]
        asked = rng.choice(docs[0])
        one += reading.answered(greedy(reading.row(texts[0], asked.question())), asked.value)
        order = [0, 1]
        rng.shuffle(order)
        joined = "\n\n".join(texts[j] for j in order)
        many += reading.answered(greedy(reading.row(joined, asked.question())), asked.value)
        if i < 100:
            h_pos.append(first_entropy(reading.row(texts[0], asked.question())))
            h_neg.append(first_entropy(reading.row(texts[1], asked.question())))
    samples = {}
    for prompt in ("It is a truth universally acknowledged", "The old house stood at the end of the lane,",
                   "And it came to pass"):
        samples[prompt] = greedy(prompt, 60)
    h_pos.sort(), h_neg.sort()
    return {"one_document_accuracy": one / n, "two_documents_accuracy": many / n, "questions": n,
            "first_token_entropy_with_fact": {"mean": sum(h_pos) / len(h_pos), "max": h_pos[-1]},
            "first_token_entropy_without_fact": {"mean": sum(h_neg) / len(h_neg), "min": h_neg[0],
                                                 "p10": h_neg[len(h_neg) // 10]},
            "greedy_samples": samples}


# ---- training ----

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval", type=int, default=300, help="reading-task questions at the end")
    a = ap.parse_args()

    import sentencepiece as spm
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(a.out, exist_ok=True)
    books = {name: reading.read_paragraphs(os.path.join(a.data, name + ".txt")) for name in BOOKS}
    fillers = {name: books[name] for name in FILLERS}
    rng = random.Random(a.seed)
    t0 = time.time()
    sp_path = train_tokenizer(books, rng, a.out)
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    sample = "\n\n".join(books["pride"][:200])
    log(f"tokenizer: {sp.get_piece_size()} pieces in {time.time() - t0:.0f} s, "
        f"{len(sample) / len(sp.encode(sample)):.2f} characters per token of Pride and Prejudice")

    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = "cuda"
    model = LlamaForCausalLM(LlamaConfig(**MODEL)).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    warmup = min(300, a.steps // 10)

    def lr_at(step):
        if step < warmup:
            return a.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, a.steps - warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    model.train()
    t0 = time.time()
    sums = {"book": [0.0, 0], "task": [0.0, 0], "answer": [0.0, 0]}
    for step, (x, w, is_task) in enumerate(batches(sp_path, books, fillers, a.batch, a.seed, a.steps)):
        if step == a.steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, w = x.to(dev, non_blocking=True), w[:, 1:].to(dev, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
        ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, VOCAB), x[:, 1:].reshape(-1),
                             reduction="none").view(x.shape[0], -1)
        loss = (ce * w).sum() / w.sum()
        per_row = ce.mean(1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == a.steps - 1:
            pr, t = per_row.detach().cpu(), is_task
            for key, m in (("task", t), ("book", ~t)):
                if m.any():
                    sums[key][0] += float(pr[m].mean())
                    sums[key][1] += 1
            answer = w > 1
            sums["answer"][0] += float((ce.detach() * answer).sum() / answer.sum().clamp_min(1))
            sums["answer"][1] += 1
        if (step + 1) % 100 == 0 or step == a.steps - 1:
            el = time.time() - t0
            msg = ", ".join(f"{k} loss {s / max(c, 1):.3f}" for k, (s, c) in sums.items())
            log(f"step {step + 1}/{a.steps}: {msg}, lr {lr_at(step):.2e}, {el / (step + 1) * 1000:.0f} ms/step, "
                f"{(step + 1) * a.batch * SEQ / el / 1e6:.2f}M tok/s")
            sums = {"book": [0.0, 0], "task": [0.0, 0], "answer": [0.0, 0]}
    log(f"trained {a.steps} steps in {time.time() - t0:.0f} s")

    model.eval()
    model.config.use_cache = True
    model.save_pretrained(a.out)
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                   "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
                   "legacy": True, "add_prefix_space": None, "clean_up_tokenization_spaces": False,
                   "model_max_length": SEQ, "sp_model_kwargs": {}}, f, indent=2)
    for stale in ("tokenizer.vocab",):
        if os.path.exists(os.path.join(a.out, stale)):
            os.remove(os.path.join(a.out, stale))
    if a.eval:
        t1 = time.time()
        with torch.no_grad():
            ev = evaluate(model, sp, fillers, a.seed + 1, a.eval)
        ev["steps"], ev["batch"], ev["seed"], ev["parameters"] = a.steps, a.batch, a.seed, n_params
        with open(os.path.join(a.out, "eval.json"), "w") as f:
            json.dump(ev, f, indent=2)
        log(f"eval in {time.time() - t1:.0f} s: " + json.dumps(ev, indent=1))


if __name__ == "__main__":
    main()
