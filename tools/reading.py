#!/usr/bin/env python3
"""The reading task: documents of prose with facts in them, and questions
about those facts. The shipped model is trained on it (tools/train/train.py)
and bench/nbce_accuracy.py measures NBCE with it.

A document is prose paragraphs (filler) with fact sentences placed between
sentences. A fact sentence is exactly one of

    The capital of NAME is VALUE.      NAME, VALUE: invented words of 2-4 syllables
    The password of NAME is DIGITS.    DIGITS: five digits

and its question is "What is the capital of NAME?" (or password). The answer
is right when the model's greedy continuation begins with VALUE (followed by
anything but a letter or digit).

Make a folder of documents for `./run --nbce`:

    python3 tools/reading.py DIR --docs 16 --seed 1 [--questions FILE] [--count Q]

writes DIR/doc-0000.txt ... and, in FILE (default DIR.jsonl beside DIR),
Q questions (default one per document, at most 200), each about a fact of a
different document: {"question", "answer", "file"}. Every document holds
--facts MIN MAX facts about names that no other document mentions, and is
about a random length of --chars MIN MAX characters, facts included
(the default, 480-840, gives documents of about 128-256 tokens of the
shipped model's vocabulary, a quarter to a half of its 512-token context).
"""
import argparse
import json
import os
import random
import re

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FILLER = os.path.join(HERE, "data", "pride.txt")

ONSETS = list("bdfghklmnprstvz") * 3 + ["br", "dr", "gr", "kr", "tr", "st", "th", "sh", "v", "l", "m", "n", ""]
VOWELS = list("aeiou") * 4 + ["ia", "ea", "ou", "ai", "y"]
CODAS = [""] * 12 + list("nrlsm")
KINDS = ("capital", "password")
DOC_CHARS = (480, 840)  # a document's length: about 128-256 tokens of the shipped model
DOC_FACTS = (1, 3)      # facts in a document


def invent_word(rng):
    """A capitalised made-up word of 2 to 4 syllables, such as Veltria or Morun."""
    while True:
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.choice((2, 2, 3, 3, 4))))
        if len(w) <= 10:
            return w[0].upper() + w[1:]


class Fact:
    def __init__(self, kind, name, value):
        self.kind, self.name, self.value = kind, name, value

    def sentence(self):
        return f"The {self.kind} of {self.name} is {self.value}."

    def question(self):
        return f"What is the {self.kind} of {self.name}?"


def random_value(rng, kind):
    return invent_word(rng) if kind == "capital" else "".join(rng.choice("0123456789") for _ in range(5))


class Names:
    """Hands out names, never the same twice."""

    def __init__(self, rng):
        self.rng, self.used = rng, set()

    def new(self):
        while True:
            w = invent_word(self.rng)
            if w not in self.used:
                self.used.add(w)
                return w

    def fact(self, kind=None):
        kind = kind or self.rng.choice(KINDS)
        return Fact(kind, self.new(), random_value(self.rng, kind))


def read_paragraphs(path):
    with open(path, encoding="utf-8") as f:
        return [p.strip() for p in f.read().split("\n\n") if p.strip()]


SENTENCE_END = re.compile(r'(?<=[.!?;:])["\')]*\s+(?=["\'(]?[A-Z])')
ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Col.", "Capt.", "Esq.", "Rev.", "Lt.", "Gen.")


def split_sentences(paragraph):
    """Cut after . ! ? ; or : (and closing quotes) where a capital follows,
    but not after a title such as Mr."""
    out, start = [], 0
    for m in SENTENCE_END.finditer(paragraph):
        if paragraph[:m.start()].endswith(ABBREVIATIONS):
            continue
        out.append(paragraph[start:m.start() + len(m.group(0).rstrip())].strip())
        start = m.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if s]


def filler(rng, paragraphs, n_chars):
    """Consecutive paragraphs from a random place, as lists of sentences,
    about n_chars long: cut at the sentence end nearest to it."""
    i = rng.randrange(len(paragraphs))
    out, total = [], 0
    while True:
        take = []
        for s in split_sentences(paragraphs[i % len(paragraphs)]):
            if total + len(s) > n_chars and total + len(s) - n_chars > n_chars - total and (take or out):
                if take:
                    out.append(take)
                return out
            take.append(s)
            total += len(s) + 1
        out.append(take)
        i += 1


def document(rng, paragraphs, n_chars, facts):
    """A document of about n_chars (facts included): filler with each fact
    put between two sentences at random (or before the first or after the
    last)."""
    room = n_chars - sum(len(f.sentence()) + 1 for f in facts)
    paras = filler(rng, paragraphs, max(1, room))
    slots = [(p, s) for p in range(len(paras)) for s in range(len(paras[p]) + 1)]
    placed = [(rng.choice(slots), i) for i in range(len(facts))]
    for (p, s), i in sorted(placed, reverse=True):  # from the end, so earlier places stay put
        paras[p].insert(s, facts[i].sentence())
    return "\n\n".join(" ".join(p) for p in paras)


def row(context, question):
    """The text the model reads: NBCE's default row template."""
    return f"{context}\n\n{question}"


def answered(continuation, value):
    """The continuation begins with the value, and the value is whole."""
    c = continuation.lstrip()
    return c.startswith(value) and not c[len(value):len(value) + 1].isalnum()


def make_folder(folder, n_docs, seed, chars, n_facts, paragraphs, count):
    """Writes n_docs documents into folder; returns `count` questions, each about
    one fact of a different document (several per document past n_docs)."""
    rng = random.Random(seed)
    names = Names(rng)
    os.makedirs(folder, exist_ok=True)
    if any(os.scandir(folder)):
        raise SystemExit(f"error: folder '{folder}' is not empty")
    docs = []
    for d in range(n_docs):
        facts = [names.fact() for _ in range(rng.randint(*n_facts))]
        text = document(rng, paragraphs, rng.randint(*chars), facts)
        name = f"doc-{d:04d}.txt"
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        docs.append((name, facts))
    order = list(range(n_docs))
    rng.shuffle(order)
    questions = []
    for i in range(count):
        name, facts = docs[order[i % n_docs]]
        f = facts[(i // n_docs) % len(facts)]
        questions.append({"question": f.question(), "answer": f.value, "file": name})
    return questions


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--docs", type=int, required=True, help="documents in the folder")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chars", type=int, nargs=2, default=DOC_CHARS, metavar=("MIN", "MAX"))
    ap.add_argument("--facts", type=int, nargs=2, default=DOC_FACTS, metavar=("MIN", "MAX"))
    ap.add_argument("--count", type=int, help="questions (default: one per document, at most 200)")
    ap.add_argument("--questions", help="where the questions go (default: FOLDER.jsonl)")
    ap.add_argument("--filler", default=DEFAULT_FILLER, help="paragraphs separated by blank lines")
    a = ap.parse_args()
    if a.docs < 1 or a.chars[0] < 1 or a.chars[0] > a.chars[1] or a.facts[0] < 1 or a.facts[0] > a.facts[1]:
        raise SystemExit("error: --docs, --chars and --facts need positive counts with MIN <= MAX")
    count = a.count if a.count is not None else min(a.docs, 200)
    qs = make_folder(a.folder, a.docs, a.seed, tuple(a.chars), tuple(a.facts), read_paragraphs(a.filler), count)
    path = a.questions or a.folder.rstrip("/") + ".jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for q in qs:
            f.write(json.dumps(q) + "\n")


if __name__ == "__main__":
    main()
