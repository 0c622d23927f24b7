"""Where things lie in a GGUF file, for the scripts that rewrite llama.cpp's files
(check_gguf_llamacpp.py, oracle/quantize_gguf_fixtures.py): no values are decoded
beyond what finding them needs."""
import struct

FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes


def layout(b):
    """b: a GGUF file's bytes. Returns n_kv, kv_end (where the tensor infos start), infos_end,
    data (the data section's offset), alignment, keys [name], and tensors
    [(name, ne, ggml type, offset in the data section, bytes)]."""
    u32 = lambda at: struct.unpack_from("<I", b, at)[0]  # noqa: E731
    u64 = lambda at: struct.unpack_from("<Q", b, at)[0]  # noqa: E731

    def skip(vtype, at):
        if vtype == 8:  # string
            return at + 8 + u64(at)
        if vtype == 9:  # array
            etype, count, at = u32(at), u64(at + 4), at + 12
            for _ in range(count):
                at = skip(etype, at)
            return at
        return at + FIXED[vtype]

    assert b[:4] == b"GGUF" and u32(4) in (2, 3)
    n_tensors, n_kv, at, alignment, keys = u64(8), u64(16), 24, 32, []
    for _ in range(n_kv):
        name = b[at + 8: at + 8 + u64(at)].decode()
        at += 8 + len(name)
        if name == "general.alignment":
            alignment = u32(at + 4)
        keys.append(name)
        at = skip(u32(at), at + 4)
    kv_end, infos = at, []
    for _ in range(n_tensors):
        name = b[at + 8: at + 8 + u64(at)].decode()
        at += 8 + len(name)
        nd = u32(at)
        ne = list(struct.unpack_from(f"<{nd}Q", b, at + 4))
        at += 4 + 8 * nd
        infos.append([name, ne, u32(at), u64(at + 4)])
        at += 12
    data = (at + alignment - 1) // alignment * alignment
    ends = sorted(off for _, _, _, off in infos)[1:] + [len(b) - data]
    by_off = dict(zip(sorted(off for _, _, _, off in infos), ends))
    tensors = [(name, ne, typ, off, by_off[off] - off) for name, ne, typ, off in infos]
    return {"n_kv": n_kv, "kv_end": kv_end, "infos_end": at, "data": data, "alignment": alignment, "keys": keys,
            "tensors": tensors}
