#!/usr/bin/env python3
"""NBCE answering questions over folders of N documents, against one context.

    python3 bench/nbce_accuracy.py [--model models/reader.bin] [--ns 1,4,16,64,256]
                                   [--questions 200] [--seed 1] [--threads T] [--json FILE]

For each N, folders of N documents from tools/reading.py (each document about
480-840 characters, a quarter to a half of the shipped model's 512-token
context, with 1-3 facts about names no other document mentions) and
--questions questions, each about a fact of a different document (several
folders when N is small). Every question is answered four ways, greedy, 8
tokens at most, and is right when the answer begins with the fact's value:

- ceiling: the document with the answer alone in one context,
  `{document}\\n\\n{question}`;
- truncation: one context holding the folder's documents in order, as many
  whole ones as fit beside the question and the answer (the answer's document
  is among them when it comes early enough, at a random place);
- NBCE: `./run --nbce FOLDER -t 0 -n 8`, every question of a folder a line of
  standard input, so that the documents are prefilled once per folder, with
  min-entropy pooling (the default) and with `--pool mean`.

Prints one Markdown table; --json keeps every answer. Seconds per question
are wall-clock time of ./run, the NBCE ones including the folder's prefill
spread over its questions.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import reading  # noqa: E402

ANSWER_TOKENS = 8


def run(args, stdin=None):
    t = time.time()
    p = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[:3])}...: {p.stderr.strip()[-400:]}")
    return p.stdout, p.stderr, time.time() - t


def doc_text(folder, name):
    with open(os.path.join(folder, name), encoding="utf-8") as f:
        return f.read().rstrip()  # as --nbce reads a document


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=os.path.join(HERE, "..", "run"))
    ap.add_argument("--model", default=os.path.join(HERE, "..", "models", "reader.bin"))
    ap.add_argument("--ns", default="1,4,16,64,256")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="write every answer here")
    a = ap.parse_args()
    base = [a.run, a.model, "--threads", str(a.threads)]
    _, err, _ = run(base + ["-p", "a", "-n", "1", "--verbose"])
    per_token = int(re.search(r"kv cache: (\d+) bytes per token", err).group(1))
    ctx = int(re.search(r"context (\d+)", err).group(1)) if re.search(r"context (\d+)", err) else 512
    paragraphs = reading.read_paragraphs(reading.DEFAULT_FILLER)
    work = tempfile.mkdtemp(prefix="nbce_accuracy_")
    ntok = lambda text: len(json.loads(run(base + ["-p", text, "--tokenize"])[0]))  # noqa: E731
    rows, details = [], {}
    try:
        for n in map(int, a.ns.split(",")):
            per_folder = min(n, a.questions)
            folders = []
            for f in range(math.ceil(a.questions / per_folder)):
                folder = os.path.join(work, f"n{n}_{f}")
                count = min(per_folder, a.questions - f * per_folder)
                qs = reading.make_folder(folder, n, a.seed * 100003 + n * 101 + f, reading.DOC_CHARS, reading.DOC_FACTS,
                                         paragraphs, count)
                folders.append((folder, qs))
            res = {"ceiling": [], "truncation": [], "min-entropy": [], "mean": []}
            secs = {k: 0.0 for k in res}
            kv = {k: 0.0 for k in res}
            fitted = []
            for folder, qs in folders:
                names = sorted(os.listdir(folder))
                texts = {name: doc_text(folder, name) for name in names}
                lengths = {name: ntok(texts[name]) for name in names}
                for q in qs:
                    for how in ("ceiling", "truncation"):
                        if how == "ceiling":
                            context = texts[q["file"]]
                        else:  # whole documents in folder order while they fit
                            room = ctx - ANSWER_TOKENS - ntok(reading.row("", q["question"]))
                            take, used = [], 0
                            for name in names:
                                if used + lengths[name] + 2 > room:
                                    break
                                take.append(name)
                                used += lengths[name] + 2
                            while take and ntok(reading.row("\n\n".join(texts[x] for x in take), q["question"])) > \
                                    ctx - ANSWER_TOKENS:
                                take.pop()
                            fitted.append(len(take))
                            context = "\n\n".join(texts[x] for x in take)
                        prompt = reading.row(context, q["question"])
                        out, _, dt = run(base + ["-p", prompt, "-t", "0", "-n", str(ANSWER_TOKENS), "--json"])
                        o = json.loads(out.strip().splitlines()[-1])
                        res[how].append({"question": q["question"], "answer": q["answer"], "got": o["text"],
                                         "right": reading.answered(o["text"], q["answer"])})
                        secs[how] += dt
                        kv[how] = max(kv[how], (o["prompt_tokens"] + ANSWER_TOKENS) * per_token)
                lines = "".join(q["question"] + "\n" for q in qs)
                for pool in ("min-entropy", "mean"):
                    out, err, dt = run(base + ["--nbce", folder, "-t", "0", "-n", str(ANSWER_TOKENS), "--json",
                                               "--pool", pool], stdin=lines)
                    answers = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
                    assert len(answers) == len(qs), (len(answers), len(qs), err[-300:])
                    for q, o in zip(qs, answers):
                        src = [s["file"] for s in o["sources"]]
                        res[pool].append({"question": q["question"], "answer": q["answer"], "got": o["text"],
                                          "right": reading.answered(o["text"], q["answer"]), "sources": src})
                    secs[pool] += dt
                    mib = [float(x) for x in re.findall(r"KV cache ([0-9.]+) MiB", err)]
                    kv[pool] = max(kv[pool], max(mib) * 1048576)
                for folder_file in (folder, folder + ".jsonl"):
                    shutil.rmtree(folder_file, ignore_errors=True)
            acc = {k: sum(r["right"] for r in v) / len(v) for k, v in res.items()}
            row = {"n": n, "questions": len(res["ceiling"]), "fit": sum(fitted) / len(fitted),
                   "accuracy": acc, "s_per_question": {k: secs[k] / len(res[k]) for k in res},
                   "kv_mib": {k: kv[k] / 1048576 for k in kv}}
            rows.append(row)
            details[n] = res
            print(f"N={n}: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| documents | fit in one context | ceiling | truncation | NBCE min-entropy | NBCE mean "
          "| min-entropy / ceiling | s/question: ceiling, truncation, min-entropy, mean "
          "| KV MiB: one context, NBCE |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        A, S, K = r["accuracy"], r["s_per_question"], r["kv_mib"]
        print(f"| {r['n']} | {r['fit']:.1f} | {A['ceiling']:.1%} | {A['truncation']:.1%} | {A['min-entropy']:.1%} "
              f"| {A['mean']:.1%} | {A['min-entropy'] / A['ceiling']:.2f} "
              f"| {S['ceiling']:.2f}, {S['truncation']:.2f}, {S['min-entropy']:.2f}, {S['mean']:.2f} "
              f"| {K['truncation']:.1f}, {K['min-entropy']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "answers": details}, f, indent=1)


if __name__ == "__main__":
    main()
