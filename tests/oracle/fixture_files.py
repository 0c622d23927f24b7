"""What the GGUF fixture scripts share (make_gguf_models.py, quantize_gguf_fixtures.py)."""
import hashlib


def log(*a):
    print(*a, flush=True)


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
