/* gguf.h - the one GGUF reader: the header, metadata and tensor table of a
 * GGUF file (versions 2 and 3) held in memory, usually mapped.
 *
 * gguf_parse walks the whole header once and checks every length, count,
 * offset and shape against the buffer before it allocates or reads anything
 * they size: afterwards every pointer in a Gguf lies inside the buffer and
 * every string and array can be read without further checks. Strings are
 * not NUL-terminated (they point into the buffer); compare them with their
 * lengths. The model loader (model.h) and the tokenizer (tokenizer.c) both
 * read GGUF through this file.
 *
 * The layout (little-endian): "GGUF", version u32, tensor count u64,
 * metadata count u64; the metadata (key string, value type u32, value); the
 * tensor table (name string, dimensions u32, sizes u64 each, innermost
 * first, ggml type u32, offset u64 from the data section); then the data
 * section, starting at the next multiple of general.alignment (32 when the
 * key is absent). A string is a u64 byte count and the bytes; an array is an
 * element type u32, a count u64 and the elements.
 *
 * #define GGUF_IMPLEMENTATION in one C file before including it (tokenizer.c
 * does).
 */
#ifndef GGUF_H
#define GGUF_H

#include <stddef.h>
#include <stdint.h>

/* Metadata value types. */
enum {
    GGUF_U8, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL,
    GGUF_STRING, GGUF_ARRAY, GGUF_U64, GGUF_I64, GGUF_F64, GGUF_VALUE_TYPES
};

/* ggml's tensor types, numbered as ggml.h numbers them. */
enum {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q5_0 = 6, GGML_Q5_1 = 7,
    GGML_Q8_0 = 8, GGML_Q8_1 = 9, GGML_Q2_K = 10, GGML_Q3_K = 11, GGML_Q4_K = 12, GGML_Q5_K = 13,
    GGML_Q6_K = 14, GGML_Q8_K = 15, GGML_IQ2_XXS = 16, GGML_IQ2_XS = 17, GGML_IQ3_XXS = 18,
    GGML_IQ1_S = 19, GGML_IQ4_NL = 20, GGML_IQ3_S = 21, GGML_IQ2_S = 22, GGML_IQ4_XS = 23,
    GGML_I8 = 24, GGML_I16 = 25, GGML_I32 = 26, GGML_I64 = 27, GGML_F64 = 28, GGML_IQ1_M = 29,
    GGML_BF16 = 30, GGML_TQ1_0 = 34, GGML_TQ2_0 = 35, GGML_MXFP4 = 39, GGML_TYPES = 40
};

#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 63 /* ggml's limit on a tensor name, in bytes */

typedef struct {
    const char *key;
    size_t key_len;
    uint32_t type;         /* GGUF_* */
    uint32_t elem_type;    /* arrays: the elements' GGUF_* */
    uint64_t count;        /* strings: bytes; arrays: elements */
    const uint8_t *value;  /* a scalar's bytes, a string's bytes, an array's first element */
} GgufKv;

typedef struct {
    const char *name;
    size_t name_len;
    uint32_t n_dims;       /* 1..GGUF_MAX_DIMS */
    uint64_t ne[GGUF_MAX_DIMS]; /* sizes, innermost (a row's length) first, 1 past n_dims */
    uint32_t type;         /* GGML_* */
    uint64_t nbytes;
    const uint8_t *data;
} GgufTensor;

typedef struct {
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv, n_tensors;
    GgufKv *kv;
    GgufTensor *tensors;
    size_t data_offset;    /* where the data section starts */
} Gguf;

/* Reads the header of the GGUF file in buf[0..size). Returns 0, or -1 with
   one line in err (and nothing to free). */
int gguf_parse(Gguf *g, const void *buf, size_t size, char *err, size_t errlen);
void gguf_free(Gguf *g);

const GgufKv *gguf_find(const Gguf *g, const char *key);
/* Typed lookups: 0 found, -1 absent, -2 present with another type. gguf_int
   takes any integer or boolean type, gguf_float any number. */
int gguf_int(const Gguf *g, const char *key, int64_t *out);
int gguf_float(const Gguf *g, const char *key, double *out);
int gguf_str(const Gguf *g, const char *key, const char **s, size_t *len);
/* An array of elem_type (GGUF_*), or NULL when absent or of another kind. */
const GgufKv *gguf_array(const Gguf *g, const char *key, uint32_t elem_type);
/* Element i of a numeric array as int64 or double (checked by gguf_parse). */
int64_t gguf_array_int(const GgufKv *a, uint64_t i);
double gguf_array_float(const GgufKv *a, uint64_t i);
/* Walks an array of strings: *at starts at a->value; each call returns the
   next string and moves *at past it. */
void gguf_next_str(const uint8_t **at, const char **s, size_t *len);

const GgufTensor *gguf_tensor(const Gguf *g, const char *name);

/* "q4_K" and the like; NULL for a number ggml does not define. */
const char *ggml_type_name(uint32_t type);
/* Weights per block and bytes per block of a ggml type (0 when undefined). */
int ggml_block_size(uint32_t type);
size_t ggml_block_bytes(uint32_t type);

#endif /* GGUF_H */

#if defined(GGUF_IMPLEMENTATION) && !defined(GGUF_IMPLEMENTED)
#define GGUF_IMPLEMENTED
#include "message.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    int block;         /* weights per block */
    size_t bytes;      /* bytes per block */
} ggml_types[GGML_TYPES] = {
    [GGML_F32] = {"f32", 1, 4},         [GGML_F16] = {"f16", 1, 2},
    [GGML_Q4_0] = {"q4_0", 32, 18},     [GGML_Q4_1] = {"q4_1", 32, 20},
    [GGML_Q5_0] = {"q5_0", 32, 22},     [GGML_Q5_1] = {"q5_1", 32, 24},
    [GGML_Q8_0] = {"q8_0", 32, 34},     [GGML_Q8_1] = {"q8_1", 32, 36},
    [GGML_Q2_K] = {"q2_K", 256, 84},    [GGML_Q3_K] = {"q3_K", 256, 110},
    [GGML_Q4_K] = {"q4_K", 256, 144},   [GGML_Q5_K] = {"q5_K", 256, 176},
    [GGML_Q6_K] = {"q6_K", 256, 210},   [GGML_Q8_K] = {"q8_K", 256, 292},
    [GGML_IQ2_XXS] = {"iq2_xxs", 256, 66}, [GGML_IQ2_XS] = {"iq2_xs", 256, 74},
    [GGML_IQ3_XXS] = {"iq3_xxs", 256, 98}, [GGML_IQ1_S] = {"iq1_s", 256, 50},
    [GGML_IQ4_NL] = {"iq4_nl", 32, 18}, [GGML_IQ3_S] = {"iq3_s", 256, 110},
    [GGML_IQ2_S] = {"iq2_s", 256, 82},  [GGML_IQ4_XS] = {"iq4_xs", 256, 136},
    [GGML_I8] = {"i8", 1, 1},           [GGML_I16] = {"i16", 1, 2},
    [GGML_I32] = {"i32", 1, 4},         [GGML_I64] = {"i64", 1, 8},
    [GGML_F64] = {"f64", 1, 8},         [GGML_IQ1_M] = {"iq1_m", 256, 56},
    [GGML_BF16] = {"bf16", 1, 2},       [GGML_TQ1_0] = {"tq1_0", 256, 54},
    [GGML_TQ2_0] = {"tq2_0", 256, 66},  [GGML_MXFP4] = {"mxfp4", 32, 17},
};

const char *ggml_type_name(uint32_t type) { return type < GGML_TYPES ? ggml_types[type].name : NULL; }
int ggml_block_size(uint32_t type) { return type < GGML_TYPES ? ggml_types[type].block : 0; }
size_t ggml_block_bytes(uint32_t type) { return type < GGML_TYPES ? ggml_types[type].bytes : 0; }

static size_t gguf_value_bytes(uint32_t type) { /* fixed-size values; 0 for strings, arrays, unknown */
    static const size_t bytes[GGUF_VALUE_TYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return type < GGUF_VALUE_TYPES ? bytes[type] : 0;
}

static uint64_t gguf_rd(const uint8_t *p, size_t n) { /* little-endian, n <= 8 */
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = v << 8 | p[i];
    return v;
}

/* The parser's position: every read checks what is left first. */
typedef struct {
    const uint8_t *p, *end;
    char *err;
    size_t errlen;
    int failed;
} GgufCursor;

static int gguf_fail(GgufCursor *c, const char *fmt, ...) {
    if (!c->failed && c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        message_format(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    c->failed = 1;
    return -1;
}

static uint64_t gguf_take(GgufCursor *c, size_t n, const char *what) {
    if (c->failed) return 0;
    if ((size_t)(c->end - c->p) < n) {
        gguf_fail(c, "truncated GGUF file (in the %s)", what);
        return 0;
    }
    uint64_t v = gguf_rd(c->p, n);
    c->p += n;
    return v;
}

/* A string: its bytes stay in the buffer. */
static void gguf_take_str(GgufCursor *c, const char **s, size_t *len, const char *what) {
    uint64_t n = gguf_take(c, 8, what);
    *s = NULL, *len = 0;
    if (c->failed) return;
    if (n > (uint64_t)(c->end - c->p)) {
        gguf_fail(c, "GGUF %s of %llu bytes runs past the end of the file", what, (unsigned long long)n);
        return;
    }
    *s = (const char *)c->p, *len = (size_t)n;
    c->p += n;
}

/* A metadata value of the given type: checked and stepped over. */
static void gguf_take_value(GgufCursor *c, GgufKv *kv) {
    kv->value = c->p;
    if (kv->type == GGUF_STRING) {
        const char *s;
        size_t n;
        gguf_take_str(c, &s, &n, "string value");
        kv->value = (const uint8_t *)s, kv->count = n;
        return;
    }
    if (kv->type == GGUF_ARRAY) {
        kv->elem_type = (uint32_t)gguf_take(c, 4, "array type");
        kv->count = gguf_take(c, 8, "array length");
        kv->value = c->p;
        if (c->failed) return;
        size_t left = (size_t)(c->end - c->p), es = gguf_value_bytes(kv->elem_type);
        if (kv->elem_type == GGUF_STRING) {
            if (kv->count > left / 8) { /* every string takes at least its 8-byte length */
                gguf_fail(c, "GGUF array of %llu strings is longer than the file", (unsigned long long)kv->count);
                return;
            }
            for (uint64_t i = 0; i < kv->count && !c->failed; i++) {
                const char *s;
                size_t n;
                gguf_take_str(c, &s, &n, "string in an array");
            }
            return;
        }
        if (!es) {
            gguf_fail(c, kv->elem_type == GGUF_ARRAY ? "GGUF arrays of arrays are not supported"
                                                     : "GGUF array of unknown value type %u", kv->elem_type);
            return;
        }
        if (kv->count > left / es) {
            gguf_fail(c, "GGUF array of %llu values is longer than the file", (unsigned long long)kv->count);
            return;
        }
        c->p += kv->count * es;
        return;
    }
    size_t es = gguf_value_bytes(kv->type);
    if (!es) {
        gguf_fail(c, "GGUF metadata value of unknown type %u", kv->type);
        return;
    }
    gguf_take(c, es, "metadata value");
}

static int gguf_same(const char *s, size_t n, const char *z) { return strlen(z) == n && !memcmp(s, z, n); }

/* Names are checked for repeats by sorting them (a file may hold a million
   entries; comparing each with every other would take hours). */
typedef struct {
    const char *s;
    size_t n;
} GgufName;

static int gguf_name_cmp(const void *a, const void *b) {
    const GgufName *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* The first name that appears twice among the n at names (which it sorts), or NULL. */
static const GgufName *gguf_repeated(GgufName *names, uint64_t n) {
    if (n > 1) qsort(names, (size_t)n, sizeof *names, gguf_name_cmp);
    for (uint64_t i = 1; i < n; i++)
        if (!gguf_name_cmp(&names[i - 1], &names[i])) return &names[i];
    return NULL;
}

void gguf_free(Gguf *g) {
    free(g->kv);
    free(g->tensors);
    memset(g, 0, sizeof *g);
}

int gguf_parse(Gguf *g, const void *buf, size_t size, char *err, size_t errlen) {
    memset(g, 0, sizeof *g);
    const uint8_t *base = buf;
    GgufCursor c = {base, base + size, err, errlen, 0};
    if (errlen) err[0] = 0;
    if (size < 4 || memcmp(base, "GGUF", 4)) return gguf_fail(&c, "not a GGUF file (bad magic)");
    c.p += 4;
    g->version = (uint32_t)gguf_take(&c, 4, "header");
    g->n_tensors = gguf_take(&c, 8, "header");
    g->n_kv = gguf_take(&c, 8, "header");
    if (c.failed) return -1;
    if (g->version == 1) return gguf_fail(&c, "GGUF version 1 (2023) is not supported: convert the model again");
    if (g->version >= 0x01000000u) return gguf_fail(&c, "big-endian GGUF file: not supported");
    if (g->version != 2 && g->version != 3) return gguf_fail(&c, "unsupported GGUF version %u", g->version);
    /* Each metadata entry takes at least 13 bytes (key length, type, a byte
       of value), each tensor entry 32, and the tensor table follows the
       metadata: a count is checked against the bytes left for its entries
       before it sizes anything. */
    if (g->n_kv > (size_t)(c.end - c.p) / 13)
        return gguf_fail(&c, "GGUF metadata count %llu is more than the file holds", (unsigned long long)g->n_kv);
    g->kv = calloc(g->n_kv ? (size_t)g->n_kv : 1, sizeof *g->kv);
    if (!g->kv) return gguf_fail(&c, "out of memory reading the GGUF header");
    g->alignment = 32;
    for (uint64_t i = 0; i < g->n_kv && !c.failed; i++) {
        GgufKv *kv = &g->kv[i];
        gguf_take_str(&c, &kv->key, &kv->key_len, "metadata key");
        kv->type = (uint32_t)gguf_take(&c, 4, "metadata type");
        gguf_take_value(&c, kv);
        if (!c.failed && gguf_same(kv->key, kv->key_len, "general.alignment")) {
            uint64_t a = kv->type == GGUF_U32 ? gguf_rd(kv->value, 4) : 0;
            if (!a || (a & (a - 1))) gguf_fail(&c, "general.alignment must be a power of two (a u32)");
            g->alignment = (uint32_t)a;
        }
    }
    if (!c.failed && g->n_tensors > (size_t)(c.end - c.p) / 32)
        gguf_fail(&c, "GGUF tensor count %llu is more than the file holds after its metadata", (unsigned long long)g->n_tensors);
    if (!c.failed && !(g->tensors = calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof *g->tensors)))
        gguf_fail(&c, "out of memory reading the GGUF header");
    for (uint64_t i = 0; i < g->n_tensors && !c.failed; i++) {
        GgufTensor *t = &g->tensors[i];
        gguf_take_str(&c, &t->name, &t->name_len, "tensor name");
        t->n_dims = (uint32_t)gguf_take(&c, 4, "tensor dimensions");
        if (c.failed) break;
        if (t->name_len > GGUF_MAX_NAME) {
            gguf_fail(&c, "GGUF tensor name of %zu bytes (at most %d)", t->name_len, GGUF_MAX_NAME);
            break;
        }
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) {
            gguf_fail(&c, "GGUF tensor \"%.*s\" has %u dimensions", (int)t->name_len, t->name, t->n_dims);
            break;
        }
        uint64_t elements = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
            t->ne[d] = d < (int)t->n_dims ? gguf_take(&c, 8, "tensor shape") : 1;
            if (!c.failed && (t->ne[d] == 0 || t->ne[d] > (UINT64_C(1) << 62) / elements)) {
                gguf_fail(&c, "GGUF tensor \"%.*s\" has an impossible shape", (int)t->name_len, t->name);
                break;
            }
            elements *= t->ne[d];
        }
        t->type = (uint32_t)gguf_take(&c, 4, "tensor type");
        uint64_t offset = gguf_take(&c, 8, "tensor offset");
        if (c.failed) break;
        int block = ggml_block_size(t->type);
        if (!block) {
            gguf_fail(&c, "GGUF tensor \"%.*s\" has unknown type %u", (int)t->name_len, t->name, t->type);
            break;
        }
        if (t->ne[0] % (uint64_t)block) {
            gguf_fail(&c, "GGUF tensor \"%.*s\" (%s) has rows of %llu, not a multiple of %d", (int)t->name_len, t->name,
                      ggml_type_name(t->type), (unsigned long long)t->ne[0], block);
            break;
        }
        t->nbytes = elements / (uint64_t)block * ggml_block_bytes(t->type); /* at most 2^62 / 1 * 4: no overflow */
        t->data = (const uint8_t *)(uintptr_t)offset; /* an offset until the data section is known */
    }
    uint64_t most = g->n_kv > g->n_tensors ? g->n_kv : g->n_tensors;
    GgufName *names = c.failed ? NULL : malloc((size_t)(most ? most : 1) * sizeof *names);
    if (!c.failed && !names) gguf_fail(&c, "out of memory reading the GGUF header");
    for (int pass = 0; pass < 2 && !c.failed; pass++) {
        uint64_t n = pass ? g->n_tensors : g->n_kv;
        for (uint64_t i = 0; i < n; i++)
            names[i] = pass ? (GgufName){g->tensors[i].name, g->tensors[i].name_len} : (GgufName){g->kv[i].key, g->kv[i].key_len};
        const GgufName *twice = gguf_repeated(names, n);
        if (twice) gguf_fail(&c, "GGUF %s \"%.*s\" appears twice", pass ? "tensor" : "metadata key", (int)(twice->n > 80 ? 80 : twice->n), twice->s);
    }
    free(names);
    if (c.failed) {
        gguf_free(g);
        return -1;
    }
    size_t header = (size_t)(c.p - base);
    size_t data = header + (g->alignment - header % g->alignment) % g->alignment;
    if (g->n_tensors && data > size) {
        gguf_free(g);
        return gguf_fail(&c, "truncated GGUF file (no data section)");
    }
    g->data_offset = data;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        GgufTensor *t = &g->tensors[i];
        uint64_t offset = (uint64_t)(uintptr_t)t->data;
        if (offset % g->alignment || offset > size - data || t->nbytes > size - data - offset) {
            gguf_fail(&c, offset % g->alignment ? "GGUF tensor \"%.*s\" is not aligned to %u bytes"
                                                : "GGUF tensor \"%.*s\" runs past the end of the file (truncated?)",
                      (int)t->name_len, t->name, g->alignment);
            gguf_free(g);
            return -1;
        }
        t->data = base + data + offset;
    }
    return 0;
}

const GgufKv *gguf_find(const Gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (gguf_same(g->kv[i].key, g->kv[i].key_len, key)) return &g->kv[i];
    return NULL;
}

static int64_t gguf_as_int(uint32_t type, const uint8_t *p) {
    uint64_t u = gguf_rd(p, gguf_value_bytes(type));
    switch (type) {
    case GGUF_I8: return (int8_t)u;
    case GGUF_I16: return (int16_t)u;
    case GGUF_I32: return (int32_t)u;
    case GGUF_I64: return (int64_t)u;
    case GGUF_U64: return u > INT64_MAX ? INT64_MAX : (int64_t)u;
    default: return (int64_t)u;
    }
}

static double gguf_as_float(uint32_t type, const uint8_t *p) {
    if (type == GGUF_F32) {
        uint32_t u = (uint32_t)gguf_rd(p, 4);
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    if (type == GGUF_F64) {
        uint64_t u = gguf_rd(p, 8);
        double d;
        memcpy(&d, &u, 8);
        return d;
    }
    return (double)gguf_as_int(type, p);
}

static int gguf_is_int(uint32_t type) { return gguf_value_bytes(type) && type != GGUF_F32 && type != GGUF_F64; }

int gguf_int(const Gguf *g, const char *key, int64_t *out) {
    const GgufKv *kv = gguf_find(g, key);
    if (!kv) return -1;
    if (!gguf_is_int(kv->type)) return -2;
    *out = gguf_as_int(kv->type, kv->value);
    return 0;
}

int gguf_float(const Gguf *g, const char *key, double *out) {
    const GgufKv *kv = gguf_find(g, key);
    if (!kv) return -1;
    if (!gguf_value_bytes(kv->type) || kv->type == GGUF_BOOL) return -2;
    *out = gguf_as_float(kv->type, kv->value);
    return 0;
}

int gguf_str(const Gguf *g, const char *key, const char **s, size_t *len) {
    const GgufKv *kv = gguf_find(g, key);
    if (!kv) return -1;
    if (kv->type != GGUF_STRING) return -2;
    *s = (const char *)kv->value, *len = (size_t)kv->count;
    return 0;
}

const GgufKv *gguf_array(const Gguf *g, const char *key, uint32_t elem_type) {
    const GgufKv *kv = gguf_find(g, key);
    return kv && kv->type == GGUF_ARRAY && kv->elem_type == elem_type ? kv : NULL;
}

int64_t gguf_array_int(const GgufKv *a, uint64_t i) { return gguf_as_int(a->elem_type, a->value + i * gguf_value_bytes(a->elem_type)); }
double gguf_array_float(const GgufKv *a, uint64_t i) { return gguf_as_float(a->elem_type, a->value + i * gguf_value_bytes(a->elem_type)); }

void gguf_next_str(const uint8_t **at, const char **s, size_t *len) {
    *len = (size_t)gguf_rd(*at, 8);
    *s = (const char *)*at + 8;
    *at += 8 + *len;
}

const GgufTensor *gguf_tensor(const Gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (gguf_same(g->tensors[i].name, g->tensors[i].name_len, name)) return &g->tensors[i];
    return NULL;
}
#endif /* GGUF_IMPLEMENTATION */
