#!/usr/bin/env python3
"""--nbce DIR from the command line: documents, chunks, invariants, reuse, errors.

The decoding itself is checked against transformers in check_nbce.py; this
script checks what surrounds it, with the shipped model (models/reader.bin)
and paragraphs of the novel in the repository (tools/data/pride.txt), so it
needs none of the developers' assets:

1. Bad folders and files: one error line and status 1, or a warning and the
   file skipped; the order of documents; text clean-up.
2. Chunking of a long public-domain text: as many chunks as its tokens
   need, every row fits beside the answer's fixed room, the chunks cover the
   document in order, cuts fall between words; -n changes neither the
   chunks nor the start of the answer.
3. Invariants end to end: one context with beta 0 is plain greedy decoding
   of its row; identical contexts behave as one; renaming the files (so the
   contexts come in another order) changes nothing but the indices; threads.
4. Reuse: follow-up questions on standard input, and --cache-dir across runs,
   give the same answers as fresh runs while prefilling less.
5. --mem, option errors, the chat format of rows for a chat model.

Usage: check_nbce_cli.py BIN_DIR TMP_DIR   Prints PASS/FAIL/SKIP lines and "N passed, N failed".
"""
import json
import os
import shutil
import subprocess
import sys

from harness import BIN, TMP, check, export, finish, one_error_line

MODEL = ["models/reader.bin"]
PRIDE = "tools/data/pride.txt"  # Pride and Prejudice, paragraphs between blank lines (models/PROVENANCE.md)
ROOT = os.path.join(TMP, "nbce_cli")


def run(args, stdin_text=None):
    p = subprocess.run([os.path.join(BIN, "run"), *args], capture_output=True,
                       input=stdin_text.encode() if stdin_text is not None else None,
                       stdin=None if stdin_text is not None else subprocess.DEVNULL)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def nbce(folder, *args, stdin_text=None, model=None):
    return run([*(model or MODEL), "--nbce", folder, *args], stdin_text)


def folder(name, files):
    """A fresh folder under ROOT with files {relative path: bytes or str}."""
    path = os.path.join(ROOT, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    for rel, data in files.items():
        full = os.path.join(path, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
    return path


def answer(out):
    """The --json object on the last line of stdout, or None."""
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def rows_of(out):
    try:
        return [json.loads(line) for line in out.strip().splitlines()]
    except ValueError:
        return None


def contexts_of(err):
    """--verbose's context lines: (path, chunk, start, end, row tokens)."""
    got = []
    for line in err.splitlines():
        if line.startswith("nbce: context "):
            head, rest = line[len("nbce: context "):].split(": ", 1)
            path, chunk, span, row = rest.split(", ", 3)
            a, b = span[len("bytes "):].split("-")
            got.append((path, int(chunk.split()[1]), int(a), int(b), int(row.split()[2])))
    return got


shutil.rmtree(ROOT, ignore_errors=True)
os.makedirs(ROOT)
# Six documents: paragraphs of 300-700 characters from across the novel (one
# chunk each), and an open prompt on which the contexts take turns.
paragraphs = [p.strip() for p in open(PRIDE, encoding="utf-8").read().split("\n\n") if 300 <= len(p.strip()) <= 700]
stories = paragraphs[5::10][:6]
Q = "Once upon a time"
GREEDY = ["-t", "0", "-n", "24", "--json"]

# ---------------------------------------------------------------------------
# 1. Folders and files
rc, out, err = nbce(os.path.join(ROOT, "missing"), "-p", Q)
check(one_error_line(rc, err, "cannot open document folder", "missing"), f"a missing folder: {err.strip()}")
plain = folder("plainfile", {"a.txt": stories[0]})
rc, out, err = nbce(os.path.join(plain, "a.txt"), "-p", Q)
check(one_error_line(rc, err, "not one"), f"a file instead of a folder: {err.strip()}")
empty = folder("empty", {})
rc, out, err = nbce(empty, "-p", Q)
check(one_error_line(rc, err, "no documents", "no files"), f"an empty folder: {err.strip()}")
junk = folder("junk", {"blank.txt": " \n\n\t\n", "zero.txt": b"", "image.bin": bytes(range(256)) * 4})
rc, out, err = nbce(junk, "-p", Q)
warned = "skipping 'blank.txt': empty" in err and "skipping 'zero.txt': empty" in err and "skipping 'image.bin': not a text" in err
check(rc == 1 and warned and err.strip().splitlines()[-1].startswith("error: no documents"),
      f"a folder of empty and binary files: a warning for each, then one error: {err.strip()}")
mixed = folder("mixed", {"image.bin": b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(200), "story.txt": stories[0]})
rc, out, err = nbce(mixed, "-p", Q, *GREEDY)
a = answer(out)
check(rc == 0 and "skipping 'image.bin': not a text file" in err and a and
      {s["file"] for s in a["sources"]} == {"story.txt"}, "a binary file is skipped with a warning; the text is used")
if os.geteuid() != 0:
    locked = folder("locked", {"a.txt": stories[0], "b.txt": stories[1]})
    os.chmod(os.path.join(locked, "b.txt"), 0)
    rc, out, err = nbce(locked, "-p", Q)
    check(one_error_line(rc, err, "cannot open document", "b.txt"), f"an unreadable document: {err.strip()}")
    os.chmod(os.path.join(locked, "b.txt"), 0o644)
else:
    print("SKIP an unreadable document (running as root, which reads every file)")
links = folder("links", {"real/a.txt": stories[0]})
os.symlink("real", os.path.join(links, "zlinked"))
os.symlink("nowhere.txt", os.path.join(links, "broken.txt"))
rc, out, err = nbce(links, "-p", Q, "--verbose", *GREEDY)
ctx = contexts_of(err)
check(rc == 0 and [c[0] for c in ctx] == ["real/a.txt"] and "not entering the linked folder 'zlinked'" in err
      and "skipping 'broken.txt'" in err, "a linked folder is not entered and a broken link is skipped, with warnings")

order = folder("order", {"b.txt": stories[0], "a/c.txt": stories[1], "A.txt": stories[2], "a b.txt": stories[3]})
rc, out, err = nbce(order, "-p", Q, "--verbose", "-n", "1")
check(rc == 0 and [c[0] for c in contexts_of(err)] == ["A.txt", "a b.txt", "a/c.txt", "b.txt"],
      f"documents come in byte-wise order of their relative paths: {[c[0] for c in contexts_of(err)]}")

clean = folder("clean", {"a.txt": stories[0] + "\n\n \t\r\n", "b.txt": "Tom saw a cat\xff. The end".encode("latin-1")})
rc, out, err = nbce(clean, "-p", Q, "--tokenize", "-n", "16")
rows = rows_of(out) if rc == 0 else None
ref = folder("clean_ref", {"r1.txt": stories[0] + "\n\n" + Q, "r2.txt": "Tom saw a cat\ufffd. The end\n\n" + Q})
want = [rows_of(run([*MODEL, "-f", os.path.join(ref, f), "--tokenize"])[1]) for f in ("r1.txt", "r2.txt")]
check(rows is not None and len(rows) == 3 and rows[1:] == [w[0] for w in want],
      "trailing whitespace is dropped and a byte that is not UTF-8 becomes U+FFFD (rows as -f of the expected text)")
rc0 = run([*MODEL, "-p", "\n\n" + Q, "--tokenize"])
check(rows is not None and rows[0] == rows_of(rc0[1])[0], "row 0 is the template with an empty context, BOS in front")

# ---------------------------------------------------------------------------
# 2. Chunking
pride = open(PRIDE, "rb").read()[:20000]
book = folder("book", {"pride.txt": pride})
text = pride.rstrip(b" \t\n\v\f\r")
rc, out, err = nbce(book, "-p", "Who is Mr. Bingley?", "--verbose", "-t", "0", "-n", "20")
ctx = contexts_of(err)
n_text = len(rows_of(run([*MODEL, "-f", os.path.join(book, "pride.txt"), "--tokenize"])[1])[0]) - 1
ROOM = 512 // 4  # every row keeps a quarter of the context, at most 256 tokens, for the answer
need = -(-n_text // (512 - ROOM))  # rows of at most 512 - ROOM tokens hold the text's tokens
check(rc == 0 and len(ctx) >= need > 1 and max(c[4] for c in ctx) <= 512 - ROOM,
      f"a 20 kB text of {n_text} tokens in a 512-token context: {len(ctx)} chunks (at least {need}), every row within "
      f"512 - {ROOM} tokens (longest {max([c[4] for c in ctx] or [0])})")
covered = ctx and ctx[0][2] == 0 and ctx[-1][3] == len(text) and all(
    not text[a[3]:b[2]].strip() and a[1] + 1 == b[1] for a, b in zip(ctx, ctx[1:]))
check(covered, "the chunks cover the document in order, with only whitespace between them")
between_words = all(text[c[3] - 1:c[3]] not in b" \t\r\n" and text[c[3]:c[3] + 1] in b" \t\r\n" for c in ctx[:-1])
at_paragraphs = sum(text[c[3]:c[3] + 4].replace(b"\r", b"").startswith(b"\n\n") for c in ctx[:-1])
at_sentences = sum(text[c[3] - 3:c[3]].rstrip(b"\"')]_*").endswith((b".", b"!", b"?")) and
                   not text[c[3]:c[3] + 4].replace(b"\r", b"").startswith(b"\n\n") for c in ctx[:-1])
check(between_words and at_paragraphs + at_sentences >= 0.8 * (len(ctx) - 1),
      f"every cut falls between words; of {len(ctx) - 1} cuts {at_paragraphs} at blank lines, {at_sentences} more at "
      f"sentence ends")
# The chunks depend on the documents, the question and the model, not on
# the answer budget: with -n 8 and -n 16 the same chunks, and greedy
# decoding gives the 8-token answer as the start of the 16-token one.
runs = {n: nbce(book, "-p", "Who is Mr. Bingley?", "--verbose", "-t", "0", "-n", str(n), "--json") for n in (8, 16)}
short_run, long_run = (answer(runs[n][1]) for n in (8, 16))
check(contexts_of(runs[8][2]) == contexts_of(runs[16][2]) == ctx,
      f"-n 8, -n 16 and -n 20 cut the text into the same chunks ({[len(contexts_of(r[2])) for r in runs.values()]})")
check(short_run and long_run and len(short_run["ids"]) == 8 and long_run["ids"][:8] == short_run["ids"] and
      long_run["chosen"][:8] == short_run["chosen"],
      "the greedy answer with -n 8 is the first 8 tokens (and chosen contexts) of the one with -n 16")
rc, out, err = nbce(book, "-p", "Who is Mr. Bingley?", "-n", str(ROOM + 1))
check(one_error_line(rc, err, f"-n {ROOM + 1}", "--ctx"), f"-n beyond the answer's room: one error ({err.strip()[:200]})")
rc, out, err = nbce(book, "-p", "Who is Mr. Bingley?", "-n", str(ROOM + 1), "--ctx", "1024", "--json")
check(rc == 0 and answer(out) is not None, "with --ctx 1024 (a room of 256) the same -n fits")
rc, out, err = nbce(book, "-p", "Who is Mr. Bingley?", "--verbose", "-n", "0", "--nbce-chunk", "100")
ctx100 = contexts_of(err)
q_row = len(rows_of(run([*MODEL, "-p", "\n\nWho is Mr. Bingley?", "--tokenize"])[1])[0])
check(rc == 0 and len(ctx100) > len(ctx) and all(c[4] <= 100 + q_row + 2 for c in ctx100),
      f"--nbce-chunk 100 caps every context at 100 tokens ({len(ctx100)} chunks)")

# ---------------------------------------------------------------------------
# 3. Invariants
one = folder("one", {"a.txt": stories[1]})
rc, out, err = nbce(one, "-p", Q, "--beta", "0", *GREEDY)
row = folder("one_row", {"row.txt": stories[1] + "\n\n" + Q})
rc2, out2, err2 = run([*MODEL, "-f", os.path.join(row, "row.txt"), *GREEDY])
a, b = answer(out), answer(out2)
check(a and b and a["ids"] == b["ids"] and a["chosen"] == [0] * len(a["ids"]),
      "one context with beta 0 == plain greedy decoding of its row")
four = folder("four", {f"s{i}.txt": stories[i] for i in range(4)})
rc, out, err = nbce(four, "-p", Q, *GREEDY)
base = answer(out)
check(base is not None and len(base["chosen"]) == base["generated_tokens"] and
      sum(s["tokens"] for s in base["sources"]) == base["generated_tokens"] and
      all(s["chunk"] == 0 for s in base["sources"]) and len(set(base["chosen"])) > 1,
      f"--json: a chosen context per token, sources adding up to the answer (chosen {base and base['chosen']})")
check(base is not None and "sources:" in err and all(f"{s['file']}, chunk 0: {s['tokens']} token" in err
                                                       for s in base["sources"]), "the sources are listed on stderr")
rc, out, err = nbce(four, "-p", Q, "--threads", "1", *GREEDY)
a = answer(out)
check(a and base and (a["ids"], a["chosen"]) == (base["ids"], base["chosen"]), "--threads 1 == --threads 2")
twins = folder("twins", {"a.txt": stories[1], "b.txt": stories[1]})
rc, out, err = nbce(twins, "-p", Q, *GREEDY)
rc2, out2, err2 = nbce(one, "-p", Q, *GREEDY)
a, b = answer(out), answer(out2)
check(a and b and a["ids"] == b["ids"] and set(a["chosen"]) == {0},
      "two identical contexts == that context alone; the first of the two is chosen every time")
renamed = folder("renamed", {f"{'zyxw'[i]}.txt": stories[i] for i in range(4)})
rc, out, err = nbce(renamed, "-p", Q, *GREEDY)
a = answer(out)
names = {f"s{i}.txt": f"{'zyxw'[i]}.txt" for i in range(4)}
check(a and base and a["ids"] == base["ids"] and
      sorted((s["file"], s["tokens"]) for s in a["sources"]) ==
      sorted((names[s["file"]], s["tokens"]) for s in base["sources"]),
      "contexts in another order give the same answer from the same sources")
rc, out, err = nbce(four, "-p", Q, "--pool", "mean", *GREEDY)
a = answer(out)
check(a and set(a["chosen"]) == {-1} and len(a["sources"]) == 4 and a["ids"] != base["ids"],
      "--pool mean: no single context is chosen, every context counts, the answer differs")
rc, out, err = nbce(four, "-p", Q, "-n", "0", "--json")
a = answer(out)
check(rc == 0 and a and a["ids"] == [] and a["chosen"] == [] and a["sources"] == [], "-n 0 answers nothing")

# ---------------------------------------------------------------------------
# 4. Reuse
Q2 = "Elizabeth"
rc, out, err = nbce(four, *GREEDY, stdin_text=f"{Q}\n\n{Q2}\n")
objs = [json.loads(line) for line in out.strip().splitlines()] if rc == 0 else []
rc2, out2, err2 = nbce(four, "-p", Q2, *GREEDY)
fresh = answer(out2)
check(len(objs) == 2 and objs[0]["ids"] == base["ids"] and fresh and objs[1]["ids"] == fresh["ids"]
      and objs[1]["chosen"] == fresh["chosen"],
      "questions on standard input are answered in turn, the second as a fresh run answers it")
prefills = [line for line in err.splitlines() if line.startswith("nbce: prefilled")]
check(len(prefills) == 2 and "came from caches" not in prefills[0] and "came from caches" in prefills[1],
      f"the second question reuses the documents' caches: {prefills}")
cache = os.path.join(ROOT, "kvcache")
shutil.rmtree(cache, ignore_errors=True)
rc, out, err = nbce(four, "-p", Q, "--cache-dir", cache, *GREEDY)
files = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
check(rc == 0 and answer(out)["ids"] == base["ids"] and len(files) == 5 and all(f.endswith(".kv") for f in files),
      f"--cache-dir keeps a cache file per row and nothing else ({files})")
rc, out, err = nbce(four, "-p", Q2, "--cache-dir", cache, *GREEDY)
check(rc == 0 and answer(out)["ids"] == fresh["ids"] and "came from caches" in err,
      "a later run with another question loads the documents' caches and answers as a fresh run")


def warnings(err):
    return [line for line in err.splitlines() if line.startswith("warning:")]


# Damaged cache files: cut short, one byte of the KV changed (only the
# checksum tells), the version of another engine. Each is one warning, the
# answer is a fresh run's, and the file is written again, so the next run
# loads it without a warning. The folder is given with a trailing slash:
# the paths printed have one slash before the file's name.
damaged = os.path.join(cache, files[1])
good = open(damaged, "rb").read()
for how, damage in (("cut short", lambda d: d[:40]), ("with one byte of its KV changed", lambda d: d[:-100] + bytes(
        [d[-100] ^ 0x10]) + d[-99:]), ("of another version", lambda d: d[:4] + bytes([d[4] + 1]) + d[5:])):
    with open(damaged, "wb") as f:
        f.write(damage(good))
    rc, out, err = nbce(four, "-p", Q2, "--cache-dir", cache + "/", *GREEDY)
    warned = warnings(err)
    check(rc == 0 and answer(out)["ids"] == fresh["ids"] and len(warned) == 1 and f"'{damaged}'" in warned[0],
          f"a cache file {how}: one warning naming it, and the answer is a fresh run's ({warned})")
    rc, out, err = nbce(four, "-p", Q2, "--cache-dir", cache + "/", *GREEDY)
    check(rc == 0 and answer(out)["ids"] == fresh["ids"] and not warnings(err) and
          open(damaged, "rb").read() == good and sorted(os.listdir(cache)) == files,
          f"the cache file {how} was written again: the next run loads it without a warning ({warnings(err)})")
rc, out, err = nbce(four, "-p", Q2, "--cache-dir", os.path.join(plain, "a.txt"), *GREEDY)
check(one_error_line(rc, err, "--cache-dir", "a.txt", "not one"), f"--cache-dir naming a file: one error ({err.strip()[:300]})")
rc, out, err = nbce(four, "-p", Q, "--pos", "rerope", "--window", "64", "--cache-dir", cache, "-n", "1")
check(rc == 0 and "came from caches" not in err, "caches made under other position settings are not used")

# ---------------------------------------------------------------------------
# 5. Memory, options, chat rows
rc, out, err = nbce(four, "-p", Q, "--mem", "100K")
check(one_error_line(rc, err, "KV cache", "more than", "--mem", "--nbce-chunk", "-n"),
      f"rows that need more than --mem: one error naming the sizes and the ways out: {err.strip()}")
rc, out, err = nbce(four, "-p", Q, "--mem", "100K", "--kv", "f32")
check(one_error_line(rc, err, "--kv f16"), f"with an f32 cache the memory error also offers an f16 one: {err.strip()}")
rc, out, err = nbce(four, "-p", Q, "-n", "1")
check(rc == 0 and "nbce: 4 documents, 4 contexts + the unconditional row" in err and "KV cache" in err,
      "the KV memory of all rows is reported before starting")
for args, words in (
        (["--beta", "1"], ["--beta", "only applies with --nbce"]),
        (["--nbce", four, "--pool", "max"], ["unknown --pool"]),
        (["--nbce", four, "--template", "{context} only"], ["--template", "{question}"]),
        (["--nbce", four, "--ppl"], ["--ppl"]),
        (["--nbce", four, "--chat"], ["--chat"]),
        (["--nbce", four, "--nbce-top-p", "0"], ["--nbce-top-p"]),
        (["--nbce", four, "--mem", "lots"], ["--mem"]),
        (["--nbce", four, "--cache-dir", os.path.join(plain, "a.txt", "sub")], ["cache folder"]),
        (["--nbce", four, "--system", "Be brief."], ["--system"]),
        (["--nbce", four, "-p", "word " * 600], ["no room for documents"])):
    rc, out, err = run([*MODEL, *args])
    check(one_error_line(rc, err, *words), f"{' '.join(a[:40] for a in args)}: {err.strip()[:200]}")
rc, out, err = nbce(four, stdin_text="")
check(one_error_line(rc, err, "needs a question"), f"no question at all: {err.strip()}")

chat_model = os.path.join(TMP, "nbce_llama_f32.bin")
ok, err = export("tests/fixtures/hf/llama", chat_model)
check(ok, "the llama fixture (Llama 2 chat template) exports")
if ok:
    docs = folder("chat", {"a.txt": "The key is under the mat.", "b.txt": "The sky is green today."})
    rc, out, err = nbce(docs, "-p", "Where is the key?", "--tokenize", model=[chat_model])
    rows = rows_of(out) if rc == 0 else None
    want = [rows_of(run([chat_model, "--chat", "-p", c + "\n\nWhere is the key?", "--tokenize"])[1])[0]
            for c in ("", "The key is under the mat.", "The sky is green today.")]
    check(rows == want, "a chat model's rows are the default template as its user message, in its chat format")
    rc, out, err = nbce(docs, "-p", "Where is the key?", "--tokenize", "--template", "{context}\\n\\n{question}",
                        model=[chat_model])
    want = rows_of(run([chat_model, "-p", "The key is under the mat.\n\nWhere is the key?", "--tokenize"])[1])[0]
    check(rc == 0 and rows_of(out)[1] == want, "--template writes rows as given (\\n a newline), no chat format")
    rc, out, err = nbce(docs, "-p", "Where is the key?", "--system", "Answer briefly.", "--tokenize", model=[chat_model])
    want = rows_of(run([chat_model, "--chat", "--system", "Answer briefly.", "-p",
                        "The key is under the mat.\n\nWhere is the key?", "--tokenize"])[1])[0]
    check(rc == 0 and rows_of(out)[1] == want, "--system joins each row's chat rendering")
    rc, out, err = nbce(docs, "-p", "Where is the key?", "-n", "4", "--json", model=[chat_model])
    check(rc == 0 and answer(out) is not None, "NBCE runs on an exported Hugging Face chat model")
finish()
