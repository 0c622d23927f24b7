#!/usr/bin/env python3
"""The reading task's generator (tools/reading.py) and the shipped model
answering from a folder it makes, end to end.

- The generator: every fact of a folder is in the document its question names,
  once, and nowhere else; names are never reused; bad arguments and a folder
  that is not empty are one error line and status 1.
- `./run --nbce FOLDER -t 0 -n 8` with the folder's questions on standard
  input answers them from the facts the generator wrote (the truth here is
  the generator's, not the engine's), naming the right document as the source.
- tools/data/pride.txt is what tools/train/prepare_text.py makes of the
  assets' Pride and Prejudice (needs the assets: skipped without them, a
  failure under CI=true).

Usage: check_reading.py BIN_DIR TMP_DIR ASSETS_DIR
"""
import json
import os
import re
import shutil
import subprocess
import sys

from harness import BIN, TMP, check, finish, have, run

ASSETS = sys.argv[3] if len(sys.argv) > 3 else "../shared/assets"
MODEL = "models/reader.bin"
GEN = [sys.executable, "tools/reading.py"]
sys.path.insert(0, "tools")
import reading  # noqa: E402

folder = os.path.join(TMP, "reading_24")
shutil.rmtree(folder, ignore_errors=True)
p = subprocess.run(GEN + [folder, "--docs", "24", "--seed", "5"], capture_output=True, text=True)
check(p.returncode == 0, f"tools/reading.py makes a folder of 24 documents: {p.stderr.strip()}")
questions = [json.loads(l) for l in open(folder + ".jsonl", encoding="utf-8")]
docs = {n: open(os.path.join(folder, n), encoding="utf-8").read() for n in sorted(os.listdir(folder))}
check(len(docs) == 24 and len(questions) == 24 and len({q["file"] for q in questions}) == 24,
      "24 documents and 24 questions, each about a different document")
facts = re.compile(r"The (capital|password) of ([A-Z][a-z]+) is ([A-Z][a-z]+|\d{5})\.")
names = [m.group(2) for text in docs.values() for m in facts.finditer(text)]
check(len(names) == len(set(names)) and 24 <= len(names) <= 72,
      f"{len(names)} facts (1 to 3 a document), no name twice")
ok = all(sum(f"The {q['question'].split()[3]} of {q['question'].split()[5][:-1]} is {q['answer']}." in t
             for t in docs.values()) == 1 and
         f"is {q['answer']}." in docs[q["file"]] for q in questions)
check(ok, "every question's fact stands once, in the document its question names")
lengths = [len(json.loads(run(MODEL, "-f", os.path.join(folder, n), "--tokenize")[1])) for n in docs]
inside = sum(128 * 0.75 <= n <= 256 * 1.1 for n in lengths)
check(inside >= 0.9 * len(lengths), f"documents of about a quarter to a half of the 512-token context: "
      f"{inside} of {len(lengths)} within 96-281 tokens (from {min(lengths)} to {max(lengths)})")

for args, what in (([folder], "a folder that is not empty"), ([folder + "_x", "--docs", "0"], "--docs 0"),
                   ([folder + "_y", "--docs", "3", "--chars", "9", "2"], "--chars MIN above MAX")):
    p = subprocess.run(GEN + args + (["--docs", "2"] if args == [folder] else []), capture_output=True, text=True)
    lines = p.stderr.strip().splitlines()
    check(p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "),
          f"tools/reading.py with {what}: one error line, status 1: {p.stderr.strip()[:200]}")

p = subprocess.run([os.path.join(BIN, "run"), MODEL, "--nbce", folder, "-t", "0", "-n", "8", "--json"],
                   input="".join(q["question"] + "\n" for q in questions), capture_output=True, text=True)
rc, out = p.returncode, p.stdout
answers = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
check(rc == 0 and len(answers) == len(questions), f"--nbce answers every question on standard input (status {rc})")
right = sum(reading.answered(a["text"], q["answer"]) for a, q in zip(answers, questions))
sourced = sum(reading.answered(a["text"], q["answer"]) and q["file"] in [s["file"] for s in a["sources"]]
              and max(a["sources"], key=lambda s: s["tokens"])["file"] == q["file"] for a, q in zip(answers, questions))
check(right >= 23, f"the shipped model answers {right} of 24 questions over the 24 documents right (at least 23)")
check(sourced == right, f"each right answer names its document as the source of most of its tokens ({sourced})")

pride = os.path.join(ASSETS, "text", "pg1342_pride_and_prejudice.txt")
if have([pride], "tools/data/pride.txt against the assets' Pride and Prejudice"):
    out_dir = os.path.join(TMP, "prepared")
    p = subprocess.run([sys.executable, "tools/train/prepare_text.py", "--out", out_dir, "--pride", pride],
                       capture_output=True, text=True)
    same = p.returncode == 0 and open(os.path.join(out_dir, "pride.txt"), "rb").read() == \
        open("tools/data/pride.txt", "rb").read()
    check(same, "tools/data/pride.txt is what tools/train/prepare_text.py makes of the assets' Pride and Prejudice")
finish()
