/* export.c - the checkpoint converter.
 *
 *   ./export SRC OUT [--quant f32|f16|bf16|q8_0|q4_0] [--tokenizer tokenizer.bin]
 *
 * SRC is read through the engine's own loader (model_load), so anything ./run
 * can open can be converted: llama2.c checkpoints (versions 0, 1, 2) and
 * model files written by this tool (to change their weight type). Every
 * source becomes a Model, a table of named tensors with a config; writing
 * that out is one function, so a new source format only needs a reader that
 * produces a Model (Hugging Face folders are the next one).
 *
 * OUT is written to a temporary file beside it and renamed at the end, so a
 * failed export never leaves a partial OUT.
 */
#define MODEL_IMPLEMENTATION
#include "model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char temp_path[4096]; /* removed by die() if the export fails midway */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (temp_path[0]) unlink(temp_path);
    exit(1);
}

static void usage(void) {
    fprintf(stderr, "usage: ./export SRC OUT [--quant f32|f16|bf16|q8_0|q4_0] [--tokenizer tokenizer.bin]\n"
                    "  SRC: a llama2.c checkpoint (.bin, versions 0-2) or a model file written by ./export\n");
    exit(1);
}

/* One tensor of the output file: where its data comes from and its new type. */
typedef struct {
    char name[TENSOR_NAME_BYTES];
    int type, ndim;
    int64_t shape[4];
    int src_type;
    const void *src;
    size_t nbytes;
    uint64_t offset;
} OutTensor;

typedef struct {
    OutTensor *t;
    int n, cap;
} OutTable;

static OutTensor *out_add(OutTable *tab, const char *name, int type, int src_type, const void *src, int ndim, const int64_t *shape) {
    if (tab->n == tab->cap) {
        tab->cap = tab->cap ? tab->cap * 2 : 64;
        tab->t = realloc(tab->t, (size_t)tab->cap * sizeof *tab->t);
        if (!tab->t) die("out of memory");
    }
    OutTensor *o = &tab->t[tab->n++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->type = type;
    o->src_type = src_type;
    o->src = src;
    o->ndim = ndim;
    memcpy(o->shape, shape, (size_t)ndim * sizeof *shape);
    o->nbytes = tensor_bytes(type, ndim, shape);
    return o;
}

static int parse_type(const char *s) {
    for (int t = TYPE_F32; t <= TYPE_Q4_0; t++)
        if (!strcmp(s, type_name(t))) return t;
    die("unknown --quant '%s' (use f32, f16, bf16, q8_0 or q4_0)", s);
    return -1;
}

static void write_all(FILE *f, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, f) != n) die("cannot write '%s': %s", temp_path, strerror(errno));
}

/* Writes one tensor, converting row by row so no second copy of a large
   matrix is ever held. Same type in and out: the bytes are copied as they are. */
static void write_tensor(FILE *f, const OutTensor *o, float *row_f32, void *row_out) {
    if (o->type == o->src_type) { write_all(f, o->src, o->nbytes); return; }
    int64_t cols = o->shape[o->ndim - 1], rows = 1;
    for (int d = 0; d < o->ndim - 1; d++) rows *= o->shape[d];
    size_t in_bytes = type_row_bytes(o->src_type, cols), out_bytes = type_row_bytes(o->type, cols);
    for (int64_t r = 0; r < rows; r++) {
        dequantize_row(o->src_type, (const uint8_t *)o->src + (size_t)r * in_bytes, row_f32, cols);
        quantize_row(o->type, row_f32, row_out, cols);
        write_all(f, row_out, out_bytes);
    }
}

int main(int argc, char **argv) {
    if (argc < 3 || argv[1][0] == '-' || argv[2][0] == '-') usage();
    const char *src = argv[1], *out = argv[2], *tok_path = NULL;
    int quant = TYPE_Q8_0;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--quant") && i + 1 < argc) quant = parse_type(argv[++i]);
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tok_path = argv[++i];
        else if (!strcmp(argv[i], "--quant") || !strcmp(argv[i], "--tokenizer")) die("option %s needs a value", argv[i]);
        else die("unknown option '%s'", argv[i]);
    }
    struct stat st;
    if (!stat(src, &st) && S_ISDIR(st.st_mode))
        die("'%s' is a folder: Hugging Face model folders are not supported by this build yet", src);

    char err[512];
    Model m;
    if (model_load(&m, src, err, sizeof err)) die("%s", err);
    Tokenizer *own_tok = NULL;
    const Tokenizer *tok = m.tokenizer;
    if (tok_path) {
        own_tok = tokenizer_load_llama2c(tok_path, m.cfg.vocab_size, err, sizeof err);
        if (!own_tok) die("%s", err);
        tok = own_tok;
    }
    if (!tok) fprintf(stderr, "note: no tokenizer given (--tokenizer); ./run will need -z for this model\n");

    /* Create the output first, so an unwritable destination fails before any work. */
    if (snprintf(temp_path, sizeof temp_path, "%s.tmp.XXXXXX", out) >= (int)sizeof temp_path) die("output path too long");
    int fd = mkstemp(temp_path);
    if (fd < 0) {
        temp_path[0] = 0;
        die("cannot create a temporary file beside '%s': %s", out, strerror(errno));
    }
    mode_t mask = umask(0); /* mkstemp makes the file private; give it the usual permissions */
    umask(mask);
    fchmod(fd, 0666 & ~mask);
    FILE *f = fdopen(fd, "wb");
    if (!f) die("cannot write '%s': %s", temp_path, strerror(errno));

    /* The output's tensor table: weights in the chosen type, vectors in f32. */
    OutTable tab = {0};
    int n_fallback = 0;
    const char *fallback_example = NULL;
    for (int i = 0; i < m.n_tensors; i++) {
        const Tensor *t = &m.tensors[i];
        if (!strncmp(t->name, "tokenizer.", 10)) continue; /* rewritten below */
        int type = t->type;
        if (t->ndim == 2 && t->type <= TYPE_Q4_0) {
            type = quant;
            if (!type_row_bytes(type, t->shape[1])) {
                if (!n_fallback++) fallback_example = t->name;
                type = TYPE_F16;
            }
        }
        out_add(&tab, t->name, type, t->type, t->data, t->ndim, t->shape);
    }
    if (n_fallback)
        fprintf(stderr, "note: %d matrices have rows that are not a multiple of %d (e.g. %s): stored as f16\n", n_fallback,
                QK, fallback_example);
    TokenizerConfig tc = {0};
    TokenizerArray tok_arrays[TOKENIZER_MAX_ARRAYS];
    if (tok) {
        int n_arrays = tokenizer_serialize(tok, &tc, tok_arrays);
        for (int i = 0; i < n_arrays; i++) {
            char name[TENSOR_NAME_BYTES];
            snprintf(name, sizeof name, "tokenizer.%s", tok_arrays[i].name);
            if (tok_arrays[i].n > 0)
                out_add(&tab, name, tok_arrays[i].type, tok_arrays[i].type, tok_arrays[i].data, 1, &tok_arrays[i].n);
        }
    }

    /* Layout: header, table, then each tensor on a 64-byte boundary. */
    uint64_t offset = MODEL_HEADER_BYTES + (uint64_t)tab.n * sizeof(TensorEntry);
    int64_t widest = 1;
    for (int i = 0; i < tab.n; i++) {
        offset = (offset + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN;
        tab.t[i].offset = offset;
        offset += tab.t[i].nbytes;
        if (tab.t[i].shape[tab.t[i].ndim - 1] > widest) widest = tab.t[i].shape[tab.t[i].ndim - 1];
    }
    FileHeader h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, MODEL_MAGIC, 4);
    h.version = MODEL_VERSION;
    h.header_bytes = MODEL_HEADER_BYTES;
    h.n_tensors = (uint32_t)tab.n;
    h.table_offset = MODEL_HEADER_BYTES;
    h.file_bytes = offset;
    h.config = m.cfg;
    h.tokenizer = tc;

    write_all(f, &h, sizeof h);
    for (int i = 0; i < tab.n; i++) {
        TensorEntry e;
        memset(&e, 0, sizeof e);
        memcpy(e.name, tab.t[i].name, sizeof e.name);
        e.type = (uint32_t)tab.t[i].type;
        e.ndim = (uint32_t)tab.t[i].ndim;
        for (int d = 0; d < tab.t[i].ndim; d++) e.shape[d] = (uint64_t)tab.t[i].shape[d];
        e.offset = tab.t[i].offset;
        e.nbytes = tab.t[i].nbytes;
        write_all(f, &e, sizeof e);
    }
    float *row_f32 = malloc((size_t)widest * sizeof(float));
    void *row_out = malloc((size_t)widest * sizeof(float));
    if (!row_f32 || !row_out) die("out of memory");
    static const uint8_t zeros[MODEL_ALIGN];
    int progress = isatty(STDERR_FILENO); /* a line per tensor would flood a log */
    uint64_t at = MODEL_HEADER_BYTES + (uint64_t)tab.n * sizeof(TensorEntry);
    for (int i = 0; i < tab.n; i++) {
        const OutTensor *o = &tab.t[i];
        write_all(f, zeros, o->offset - at);
        write_tensor(f, o, row_f32, row_out);
        at = o->offset + o->nbytes;
        if (progress) fprintf(stderr, "\r[%d/%d] %-40s %-5s", i + 1, tab.n, o->name, type_name(o->type));
    }
    if (progress) fprintf(stderr, "\n");
    if (fflush(f) || fsync(fileno(f)) || fclose(f)) die("cannot write '%s': %s", temp_path, strerror(errno));
    if (rename(temp_path, out)) die("cannot rename '%s' to '%s': %s", temp_path, out, strerror(errno));
    temp_path[0] = 0;
    fprintf(stderr, "wrote %s: %d tensors, %.2f MiB, weights %s\n", out, tab.n, offset / 1048576.0, type_name(quant));
    free(row_f32);
    free(row_out);
    free(tab.t);
    tokenizer_free(own_tok);
    model_free(&m);
    return 0;
}
