#!/usr/bin/env python3
"""--nbce against the float64 transformers oracle of tests/oracle/make_nbce_fixture.py.

For every case of tests/fixtures/nbce_oracle.json: write its documents (exact
bytes, trailing whitespace included) into a fresh folder under TMP_DIR, then
  run stories260K.bin -z tok512.bin --nbce DIR -p QUESTION [case args] -t 0 -n N --json
must end with a JSON object whose "ids" (greedy tokens), "chosen" (0-based context
per token, -1 for --pool mean) and "sources" equal the oracle's, and
  run ... --nbce DIR -p QUESTION [case args] --tokenize
must print one JSON array of ids per row, row 0 (the empty context) first,
equal to SentencePiece's ids of each row.

Usage: check_nbce.py BIN_DIR TMP_DIR [ASSETS_DIR]
Prints PASS/FAIL/SKIP lines and "N passed, N failed". Without the assets the
checks are skipped, unless CI=true.
"""
import json
import os
import shutil
import sys

from harness import TMP, check, finish, have, run

ASSETS = sys.argv[3] if len(sys.argv) > 3 else os.environ.get("ASSETS", "../shared/assets")
FIXTURE = "tests/fixtures/nbce_oracle.json"


def first_difference(got, want):
    """Index of the first differing element of two lists (the shorter length if one is a prefix)."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return i
    return min(len(got), len(want))


def short(x, n=160):
    s = x if isinstance(x, str) else json.dumps(x)
    return s if len(s) <= n else s[:n] + "..."


def last_json_object(out):
    """The last non-empty stdout line as a JSON object, or (None, why)."""
    lines = [l for l in out.splitlines() if l.strip()]
    if not lines:
        return None, "no output on stdout"
    try:
        obj = json.loads(lines[-1])
    except ValueError as e:
        return None, f"last stdout line is not JSON ({e}): {short(lines[-1])}"
    if not isinstance(obj, dict):
        return None, f"last stdout line is not a JSON object: {short(lines[-1])}"
    return obj, ""


def compare_list(name, what, got, want, unit="step"):
    if got == want:
        return True, ""
    if not isinstance(got, list):
        return False, f"{name}: {what} is {short(got)}, not a list"
    i = first_difference(got, want)
    if i < len(got) and i < len(want):
        why = f"first difference at {unit} {i}: {short(got[i])} instead of {short(want[i])}"
    else:
        why = f"{len(got)} entries instead of {len(want)} (equal up to {unit} {i})"
    return False, f"{name}: {what} differs from the oracle's, {why}; got {short(got)}"


def check_case(model, tok, case):
    name = f"nbce {case['name']}"
    folder = os.path.join(TMP, "nbce_" + case["name"])
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for doc in case["documents"]:
        with open(os.path.join(folder, doc["file"]), "wb") as f:
            f.write(doc["text"].encode("utf-8"))
    base = [model, "-z", tok, "--nbce", folder, "-p", case["question"], *case["args"]]
    shown = " ".join(case["args"]) or "defaults"
    what = f"{name} ({shown})"

    rc, out, err = run(*base, "-t", "0", "-n", str(case["max_tokens"]), "--json")
    obj, why = last_json_object(out) if rc == 0 else (None, f"exit status {rc}: {short(err.strip()[-300:], 300)}")
    if obj is None:
        for part in ("ids", "chosen", "sources"):
            check(False, f"{what}: {part}: no JSON result ({why})")
    else:
        for key, unit in (("ids", "step"), ("chosen", "step"), ("sources", "entry")):
            if key not in obj:
                check(False, f"{what}: the JSON object has no \"{key}\" (keys: {', '.join(obj)})")
                continue
            ok, msg = compare_list(name, f'"{key}"', obj[key], case[key], unit)
            n = len(case[key])
            label = {"ids": f"{n} greedy ids equal the oracle's",
                     "chosen": f"the chosen context at each of {n} steps equals the oracle's "
                               f"({case['distinct_chosen']} distinct)",
                     "sources": f"sources equal the oracle's {n} used contexts"}[key]
            check(ok, f"{what}: {label}" + ("" if ok else f" -- {msg}"))

    rc, out, err = run(*base, "--tokenize")
    want = [r["ids"] for r in case["rows"]]
    label = f"{what}: --tokenize prints the {len(want)} rows' ids (row 0 first) as SentencePiece does"
    if rc != 0:
        check(False, f"{label} -- exit status {rc}: {short(err.strip()[-300:], 300)}")
        return
    rows, bad = [], None
    for i, line in enumerate(l for l in out.splitlines() if l.strip()):
        try:
            rows.append(json.loads(line))
        except ValueError:
            bad = f"line {i + 1} is not JSON: {short(line)}"
            break
    if bad:
        check(False, f"{label} -- {bad}")
        return
    if len(rows) != len(want):
        check(False, f"{label} -- {len(rows)} lines instead of {len(want)}")
        return
    for r, (g, w) in enumerate(zip(rows, want)):
        if g != w:
            ok, msg = compare_list(f"{name} row {r}", "ids", g, w, "token")
            check(False, f"{label} -- {msg}")
            return
    check(True, label)


def main():
    fx = json.load(open(FIXTURE, encoding="utf-8"))
    model = os.path.join(ASSETS, "llama2c", fx["model_file"])
    tok = os.path.join(ASSETS, "llama2c", fx["engine_tokenizer_file"])
    if not have([model, tok], "nbce checks"):
        finish()
    for case in fx["cases"]:
        check_case(model, tok, case)
    finish()


if __name__ == "__main__":
    main()
