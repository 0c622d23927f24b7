#!/usr/bin/env python3
"""Turns the public-domain sources the project trains on into plain text:
paragraphs of prose separated by one blank line, straight quotes, no page
furniture. The shipped model's training and the reading-task documents
(tools/reading.py) read these files.

    python3 tools/train/prepare_text.py --out DIR \
        --pride pg1342_pride_and_prejudice.txt \
        --shakespeare tinyshakespeare_input.txt \
        --kjv kjv.txt            # the output of: bible Gen1:1-Rev22:21 (Debian's bible-kjv)

writes DIR/pride.txt, DIR/shakespeare.txt and DIR/kjv.txt (each source that
is given). tools/data/pride.txt is this script's pride.txt.
"""
import argparse
import os
import re

QUOTES = {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2014": "--", "\u00a0": " "}


def plain(s):
    for a, b in QUOTES.items():
        s = s.replace(a, b)
    return s


def paragraphs_of(text):
    """Blank-line separated blocks, each joined into one line."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        p = " ".join(block.split())
        if p:
            out.append(p)
    return out


def pride(raw):
    t = raw.decode("utf-8-sig").replace("\r\n", "\n")
    start = t.index("It is a truth universally acknowledged")
    end = t.rindex("[Illustration:", 0, t.index("*** END OF THE PROJECT GUTENBERG"))
    t = t[start:end]
    t = re.sub(r"\[_?Copyright[^\]]*\]", "", t)     # inside illustration captions
    t = re.sub(r"\[Illustration(:[^\]]*)?\]", "", t)
    t = re.sub(r"(?m)^\s*(CHAPTER|Chapter) [IVXLC]+\.\]?\s*$", "", t)
    t = t.replace("_", "")                          # italics
    return [plain(p) for p in paragraphs_of(t)]


def shakespeare(raw):
    """Speeches keep their line breaks (verse); one speech a paragraph."""
    t = raw.decode("utf-8").replace("\r\n", "\n")
    out = []
    for block in re.split(r"\n\s*\n", t):
        lines = [" ".join(l.split()) for l in block.split("\n") if l.strip()]
        if lines:
            out.append("\n".join(lines))
    return out


def kjv(raw, verses_per_paragraph=5):
    """bible's output: a 'Book N' line, then verses '  N text' wrapped at 80
    columns. Verse numbers go; every few verses of a chapter make a paragraph."""
    t = raw.decode("utf-8")
    out = []
    for chapter in re.split(r"\n\s*\n(?=[1-3]? ?[A-Z][A-Za-z ]+ \d+\n)", t):
        verses = re.split(r"(?m)^\s+\d+ ", chapter)[1:]
        verses = [" ".join(v.split()) for v in verses]
        for i in range(0, len(verses), verses_per_paragraph):
            p = " ".join(v for v in verses[i:i + verses_per_paragraph] if v)
            if p:
                out.append(plain(p))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pride")
    ap.add_argument("--shakespeare")
    ap.add_argument("--kjv")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name, clean in (("pride", pride), ("shakespeare", shakespeare), ("kjv", kjv)):
        src = getattr(a, name)
        if not src:
            continue
        with open(src, "rb") as f:
            paras = clean(f.read())
        with open(os.path.join(a.out, name + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(paras) + "\n")
        print(f"{name}: {len(paras)} paragraphs, {sum(map(len, paras))} characters")


if __name__ == "__main__":
    main()
