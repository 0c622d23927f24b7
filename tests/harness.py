"""What the Python test scripts share: reporting, and running ./run and ./export.

Every script prints one "PASS name" / "FAIL name" line per check and ends with
"N passed, N failed", the line tests/run_tests.sh adds up.
"""
import os
import subprocess
import sys

BIN = sys.argv[1] if len(sys.argv) > 1 else "."
TMP = sys.argv[2] if len(sys.argv) > 2 else "tests/tmp"
counts = {"passed": 0, "failed": 0}


def check(ok, name):
    print(("PASS " if ok else "FAIL ") + name, flush=True)
    counts["passed" if ok else "failed"] += 1


def finish():
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    sys.exit(1 if counts["failed"] else 0)


def have(paths, what):
    """Whether every one of paths exists; if not, `what` is skipped with a
    message, or fails when CI=true (where the developers' assets must be)."""
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return True
    if os.environ.get("CI") == "true":
        check(False, f"{what}: {missing[0]} found (required when CI=true)")
    else:
        print(f"SKIP {what}: no {missing[0]}", flush=True)
    return False


def run(*args, stdin=subprocess.DEVNULL):
    """./run with args: (exit status, stdout, stderr) as text."""
    p = subprocess.run([os.path.join(BIN, "run"), *args], capture_output=True, stdin=stdin)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def one_error_line(rc, err, *words):
    """What every refusal must look like: status 1 and exactly one line on
    stderr, "error: ..." naming each of words, with no control character in
    it (content quoted from a file or a command line comes escaped)."""
    lines = err.strip().splitlines()
    return (rc == 1 and len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words)
            and not any(ord(ch) < 32 or ord(ch) == 127 for ch in lines[0]))


def export(folder, out, quant="f32", *extra):
    """./export folder out --quant quant: (whether out was written, stderr)."""
    p = subprocess.run([os.path.join(BIN, "export"), folder, out, "--quant", quant, *extra], capture_output=True)
    return p.returncode == 0 and os.path.exists(out), p.stderr.decode("utf-8", "replace")
