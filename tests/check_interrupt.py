#!/usr/bin/env python3
"""./export stopped by a signal in the middle of writing leaves nothing behind.

./export writes OUT under a temporary name (OUT.tmp.XXXXXX) and renames it at
the end; SIGINT (Ctrl-C), SIGTERM and SIGHUP in between must remove the
temporary file, leave OUT as it was (absent, or the older file) and still
end the program by that signal.

To stop ./export mid-write without any timing, its stderr is a terminal
whose output is stopped with XOFF (Ctrl-S, as a user would press it): on a
terminal ./export draws a progress line after each tensor it writes, and
that first write blocks. So once the temporary file exists the export
cannot finish, and the signal is sent then.

Usage: check_interrupt.py BIN_DIR TMP_DIR MODEL   Prints PASS/FAIL lines and "N passed, N failed".
"""
import os
import signal
import subprocess
import sys
import termios
import time

from harness import BIN, TMP, check, finish

MODEL = sys.argv[3] if len(sys.argv) > 3 else "models/reader.bin"
ROOT = os.path.join(TMP, "interrupt")


def temporaries(name):
    return [f for f in os.listdir(ROOT) if f.startswith(name + ".tmp")]


def default_signals():
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def interrupted_export(name, sig, old=None):
    """Starts ./export MODEL ROOT/name on a stopped terminal, sends sig once
    its temporary file exists; returns (exit status, temporary files left,
    what ROOT/name holds or None, whether the temporary file was seen)."""
    out = os.path.join(ROOT, name)
    if old is not None:
        with open(out, "wb") as f:
            f.write(old)
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[0] |= termios.IXON  # XOFF stops the output
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    os.write(master, b"\x13")  # XOFF
    # the signals' default actions, as a program started in the foreground has them (a shell
    # starts background jobs with SIGINT ignored, and an ignored signal stays ignored)
    p = subprocess.Popen([os.path.join(BIN, "export"), MODEL, out, "--quant", "f32"], stdin=subprocess.DEVNULL,
                         stdout=slave, stderr=slave, preexec_fn=default_signals)
    os.close(slave)
    seen = False
    deadline = time.monotonic() + 120  # only a guard against a hung test, never a measurement
    while p.poll() is None and time.monotonic() < deadline:
        if temporaries(name):
            seen = True
            break
        time.sleep(0.01)
    if p.poll() is None:
        p.send_signal(sig)
    try:
        status = p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        status = p.wait()
    os.close(master)
    held = open(out, "rb").read() if os.path.exists(out) else None
    return status, temporaries(name), held, seen


os.makedirs(ROOT, exist_ok=True)
for f in os.listdir(ROOT):
    os.unlink(os.path.join(ROOT, f))

for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    name = f"out_{sig.name}.bin"
    status, left, held, seen = interrupted_export(name, sig)
    check(seen and status == -sig, f"{sig.name} while ./export writes: it dies of {sig.name} (status {status}; the "
          f"temporary file was {'seen' if seen else 'never seen'} before the signal)")
    check(seen and not left and held is None, f"{sig.name}: no {name}.tmp* left ({left}) and no {name}")

old = b"the output of an earlier export\n"
status, left, held, seen = interrupted_export("kept.bin", signal.SIGINT, old)
check(seen and status == -signal.SIGINT and not left and held == old,
      "SIGINT while ./export replaces an older OUT: the older OUT stays as it was, no temporary file left")

# The same export on a terminal that is not stopped completes (so what
# stopped the ones above was the signal, not something else).
p = subprocess.run([os.path.join(BIN, "export"), MODEL, os.path.join(ROOT, "whole.bin"), "--quant", "f32"],
                   capture_output=True)
check(p.returncode == 0 and os.path.getsize(os.path.join(ROOT, "whole.bin")) > 0 and not temporaries("whole.bin"),
      "the same export, not interrupted, writes OUT and leaves no temporary file")
finish()
