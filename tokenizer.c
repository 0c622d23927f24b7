/* tokenizer.c - text <-> token ids (SentencePiece-style BPE), see tokenizer.h.
 *
 * Encoding follows SentencePiece's BPE model (and llama.cpp's SPM tokenizer):
 * the text is split into UTF-8 characters, then the adjacent pair whose
 * concatenation is the highest-scoring piece is merged, again and again, until
 * no pair is a piece. Characters that never became a piece fall back to their
 * bytes (<0xNN> tokens).
 *
 * The naive loop (llama2.c's) rescans every pair after every merge, which is
 * O(n^2) and takes minutes on a book. Here the symbols form a doubly linked
 * list over the text and the candidate pairs sit in a binary heap ordered by
 * (score desc, position asc). A merge only creates the two pairs around the
 * merged symbol; pairs made stale by it stay in the heap and are recognised
 * and dropped when popped. Every merge pushes at most two pairs, so the heap
 * sees at most 3n entries: O(n log n) overall.
 */
#include "tokenizer.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sanity bounds for a llama2.c tokenizer.bin. Real files have pieces of at
   most a few dozen bytes; anything beyond these is corruption, and refusing
   it early keeps a bad file from asking for gigabytes. */
#define LLAMA2C_MAX_TOKEN_LENGTH (1 << 16)
#define LLAMA2C_MAX_FILE_SIZE ((size_t)1 << 30)
#define TOKENIZER_MAX_VOCAB (1 << 26)

struct Tokenizer {
    TokenizerData data;   /* a copy; the arrays are borrowed, or in 'owned' */
    void *owned;          /* the loader's block holding the arrays, or NULL */

    /* Open-addressing hash of the pieces that text can produce (NORMAL,
       USER_DEFINED, UNUSED): piece -> lowest id with that piece, -1 = empty. */
    int32_t *index;
    uint32_t index_mask;
    uint32_t max_piece_len; /* longest indexed piece: longer strings skip the lookup */

    /* USER_DEFINED pieces are matched whole before BPE and never merged
       (SentencePiece's behaviour); most vocabularies have none. */
    uint32_t max_user_len; /* 0 when there are no user-defined pieces */

    int byte_id[256];  /* byte fallback: the <0xNN> token of each byte, -1 if none */
    int unk_id;        /* first TOKEN_UNKNOWN id, -1 if none */
    char byte_str[256][2]; /* what a byte token decodes to: 1-byte strings */
};

/* ------------------------------------------------------------------------ */
/* Small helpers */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Returns the byte a piece spelled exactly "<0xNN>" (uppercase hex, as
   SentencePiece writes them) stands for, or -1. */
static int parse_byte_piece(const char *p, size_t n)
{
    if (n != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
    int hi = hexval(p[3]), lo = hexval(p[4]);
    if (hi < 0 || lo < 0) return -1;
    return hi * 16 + lo;
}

/* The byte a TOKEN_BYTE piece stands for: "<0xNN>", or (older exports) the
   raw byte itself. -1 if the piece is neither. */
static int byte_token_value(const char *p, size_t n)
{
    if (n == 1) return (unsigned char)p[0];
    return parse_byte_piece(p, n);
}

/* Length of the well-formed UTF-8 character at s (Unicode's table 3-7: no
   overlongs, no surrogates, nothing above U+10FFFF), or 1 for a byte that
   does not start one. Ill-formed bytes thus become symbols of their own and
   reach the output through byte fallback unchanged, so decode(encode(x)) == x
   for any bytes. */
static size_t utf8_char_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */

    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 1;

    if (avail < n) return 1;
    if (s[1] < lo || s[1] > hi) return 1;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 1;
    return n;
}

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static const char *piece_of(const Tokenizer *t, int id, size_t *n)
{
    const uint32_t *off = t->data.piece_offset;
    *n = off[id + 1] - off[id];
    return t->data.piece_bytes + off[id];
}

/* Text can only ever produce these pieces. CONTROL (<s>), UNKNOWN and BYTE
   pieces are reachable only through their ids: the text "<s>" is not BOS. */
static int is_text_piece(int type)
{
    return type == TOKEN_NORMAL || type == TOKEN_USER_DEFINED || type == TOKEN_UNUSED;
}

/* The id of the text piece spelled s[0..n), or -1. */
static int lookup(const Tokenizer *t, const char *s, size_t n)
{
    if (n == 0 || n > t->max_piece_len) return -1;
    uint32_t i = hash_bytes(s, n) & t->index_mask;
    for (;;) {
        int32_t id = t->index[i];
        if (id < 0) return -1;
        size_t pn;
        const char *p = piece_of(t, id, &pn);
        if (pn == n && memcmp(p, s, n) == 0) return id;
        i = (i + 1) & t->index_mask;
    }
}

/* ------------------------------------------------------------------------ */
/* Creation */

/* Checks data and builds the index. 'owned' (may be NULL) is adopted: freed
   with the tokenizer, or right away on failure. */
static Tokenizer *build(const TokenizerData *d, void *owned, char *err, size_t errlen)
{
    Tokenizer *t = NULL;

    if (d == NULL) {
        set_err(err, errlen, "tokenizer: no data");
        goto fail;
    }
    if (d->kind != TOKENIZER_SPM) {
        set_err(err, errlen, "tokenizer: unknown tokenizer kind %d", d->kind);
        goto fail;
    }
    if (d->n_vocab <= 0 || d->n_vocab > TOKENIZER_MAX_VOCAB) {
        set_err(err, errlen, "tokenizer: bad vocabulary size %d", d->n_vocab);
        goto fail;
    }
    if (!d->piece_offset || !d->piece_bytes || !d->scores || !d->types) {
        set_err(err, errlen, "tokenizer: missing piece, score or type array");
        goto fail;
    }
    if (d->bos_id < -1 || d->bos_id >= d->n_vocab || d->eos_id < -1 || d->eos_id >= d->n_vocab) {
        set_err(err, errlen, "tokenizer: bos id %d or eos id %d out of range [-1, %d)",
                d->bos_id, d->eos_id, d->n_vocab);
        goto fail;
    }

    t = calloc(1, sizeof(*t));
    if (!t) {
        set_err(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    t->data = *d;
    t->owned = owned;
    owned = NULL;
    t->unk_id = -1;
    for (int b = 0; b < 256; b++) {
        t->byte_id[b] = -1;
        t->byte_str[b][0] = (char)b;
        t->byte_str[b][1] = '\0';
    }

    int n_text = 0;
    for (int i = 0; i < d->n_vocab; i++) {
        if (d->piece_offset[i + 1] < d->piece_offset[i]) {
            set_err(err, errlen, "tokenizer: piece offsets decrease at token %d", i);
            goto fail;
        }
        float s = d->scores[i];
        if (s != s) {
            set_err(err, errlen, "tokenizer: token %d has a NaN score", i);
            goto fail;
        }
        size_t n;
        const char *p = piece_of(t, i, &n);
        switch (d->types[i]) {
        case TOKEN_NORMAL:
        case TOKEN_USER_DEFINED:
        case TOKEN_UNUSED:
            if (n > 0) n_text++;
            if (n > t->max_piece_len) t->max_piece_len = (uint32_t)n;
            if (d->types[i] == TOKEN_USER_DEFINED && n > t->max_user_len)
                t->max_user_len = (uint32_t)n;
            break;
        case TOKEN_UNKNOWN:
            if (t->unk_id < 0) t->unk_id = i;
            break;
        case TOKEN_CONTROL:
            break;
        case TOKEN_BYTE: {
            int b = byte_token_value(p, n);
            if (b < 0) {
                set_err(err, errlen, "tokenizer: byte token %d is not spelled <0xNN>", i);
                goto fail;
            }
            if (t->byte_id[b] < 0) t->byte_id[b] = i;
            break;
        }
        default:
            set_err(err, errlen, "tokenizer: token %d has unknown type %d", i, d->types[i]);
            goto fail;
        }
    }

    /* Load factor <= 1/2 keeps probe chains short. */
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)n_text) cap *= 2;
    t->index = malloc(cap * sizeof(*t->index));
    if (!t->index) {
        set_err(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    memset(t->index, 0xff, cap * sizeof(*t->index)); /* all -1 */
    t->index_mask = cap - 1;

    /* Ascending ids, and an id is only inserted if its piece is not there
       yet: with duplicate pieces the lowest id wins. */
    for (int i = 0; i < d->n_vocab; i++) {
        size_t n;
        const char *p = piece_of(t, i, &n);
        if (!is_text_piece(d->types[i]) || n == 0 || lookup(t, p, n) >= 0) continue;
        uint32_t h = hash_bytes(p, n) & t->index_mask;
        while (t->index[h] >= 0) h = (h + 1) & t->index_mask;
        t->index[h] = i;
    }
    return t;

fail:
    free(owned);
    tokenizer_free(t);
    return NULL;
}

Tokenizer *tokenizer_from_data(const TokenizerData *data, char *err, size_t errlen)
{
    return build(data, NULL, err, errlen);
}

static const TokenizerArray *find_array(const TokenizerArray *arrays, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(arrays[i].name, name) == 0) return &arrays[i];
    return NULL;
}

Tokenizer *tokenizer_new(const TokenizerConfig *cfg, const TokenizerArray *arrays, int n_arrays, char *err,
                         size_t errlen)
{
    const TokenizerArray *off = find_array(arrays, n_arrays, "offsets");
    const TokenizerArray *pieces = find_array(arrays, n_arrays, "pieces");
    const TokenizerArray *scores = find_array(arrays, n_arrays, "scores");
    const TokenizerArray *types = find_array(arrays, n_arrays, "types");
    int64_t n = cfg->n_vocab;
    if (!off || !pieces || !scores || !types) {
        set_err(err, errlen, "tokenizer: arrays missing");
        return NULL;
    }
    if (n <= 0 || off->type != TOKENIZER_ARRAY_U32 || off->n != n + 1 || pieces->type != TOKENIZER_ARRAY_U8 ||
        scores->type != TOKENIZER_ARRAY_F32 || scores->n != n || types->type != TOKENIZER_ARRAY_U8 || types->n != n) {
        set_err(err, errlen, "tokenizer: arrays have the wrong types or sizes");
        return NULL;
    }
    if (((const uint32_t *)off->data)[n] > (uint64_t)pieces->n) {
        set_err(err, errlen, "tokenizer: pieces are truncated");
        return NULL;
    }
    TokenizerData d = {
        .kind = cfg->kind, .n_vocab = (int)n, .bos_id = cfg->bos_id, .eos_id = cfg->eos_id, .add_bos = cfg->add_bos,
        .add_prefix_space = cfg->add_prefix_space, .piece_offset = off->data, .piece_bytes = pieces->data,
        .scores = scores->data, .types = types->data,
    };
    return build(&d, NULL, err, errlen);
}

int tokenizer_serialize(const Tokenizer *t, TokenizerConfig *cfg, TokenizerArray arrays[TOKENIZER_MAX_ARRAYS])
{
    const TokenizerData *d = &t->data;
    memset(cfg, 0, sizeof(*cfg));
    cfg->kind = d->kind;
    cfg->n_vocab = d->n_vocab;
    cfg->bos_id = d->bos_id;
    cfg->eos_id = d->eos_id;
    cfg->add_bos = d->add_bos;
    cfg->add_prefix_space = d->add_prefix_space;
    int n = 0;
    arrays[n++] = (TokenizerArray){"offsets", TOKENIZER_ARRAY_U32, d->n_vocab + 1, d->piece_offset};
    arrays[n++] = (TokenizerArray){"pieces", TOKENIZER_ARRAY_U8, d->piece_offset[d->n_vocab], d->piece_bytes};
    arrays[n++] = (TokenizerArray){"scores", TOKENIZER_ARRAY_F32, d->n_vocab, d->scores};
    arrays[n++] = (TokenizerArray){"types", TOKENIZER_ARRAY_U8, d->n_vocab, d->types};
    return n;
}

int tokenizer_n_vocab(const Tokenizer *t) { return t->data.n_vocab; }
int tokenizer_bos(const Tokenizer *t) { return t->data.bos_id; }
int tokenizer_add_bos(const Tokenizer *t) { return t->data.add_bos && t->data.bos_id >= 0; }
int tokenizer_is_eos(const Tokenizer *t, int id) { return id >= 0 && id == t->data.eos_id; }
size_t tokenizer_max_piece_bytes(const Tokenizer *t) { return t->max_piece_len > 1 ? t->max_piece_len : 1; }

void tokenizer_free(Tokenizer *t)
{
    if (!t) return;
    free(t->index);
    free(t->owned);
    free(t);
}

const TokenizerData *tokenizer_data(const Tokenizer *t)
{
    return &t->data;
}

/* ------------------------------------------------------------------------ */
/* llama2.c tokenizer.bin */

/* Reads a whole file; the caller frees. Reading to EOF (rather than trusting
   a size from fseek) also works on pipes and reports read errors. */
static unsigned char *read_file(const char *path, size_t *size, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break; /* EOF or error, told apart below */
        if (cap >= LLAMA2C_MAX_FILE_SIZE) {
            set_err(err, errlen, "%s: file too large for a tokenizer (over %zu bytes)", path,
                    (size_t)LLAMA2C_MAX_FILE_SIZE);
            free(buf);
            fclose(f);
            return NULL;
        }
        cap *= 2;
        unsigned char *nb = realloc(buf, cap);
        if (!nb) free(buf);
        buf = nb;
    }
    if (!buf) {
        set_err(err, errlen, "%s: out of memory", path);
        fclose(f);
        return NULL;
    }
    if (ferror(f)) {
        set_err(err, errlen, "%s: read error: %s", path, strerror(errno));
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size = n;
    return buf;
}

/* The file is written by Python's struct module on little-endian machines;
   decoding byte by byte keeps the reader independent of the host. */
static uint32_t rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int32_t rd_i32(const unsigned char *p)
{
    uint32_t u = rd_u32(p);
    int32_t v;
    memcpy(&v, &u, sizeof(v));
    return v;
}

static float rd_f32(const unsigned char *p)
{
    uint32_t u = rd_u32(p);
    float v;
    memcpy(&v, &u, sizeof(v));
    return v;
}

Tokenizer *tokenizer_load_llama2c(const char *path, int n_vocab, char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (path == NULL) {
        set_err(err, errlen, "tokenizer: no path given");
        return NULL;
    }
    if (n_vocab <= 0 || n_vocab > TOKENIZER_MAX_VOCAB) {
        set_err(err, errlen, "%s: bad vocabulary size %d", path, n_vocab);
        return NULL;
    }
    size_t size;
    unsigned char *buf = read_file(path, &size, err, errlen);
    if (!buf) return NULL;

    /* Pass 1: walk and check the file, adding up the piece bytes. */
    if (size < 4) {
        set_err(err, errlen, "%s: truncated: %zu bytes, no header", path, size);
        goto fail;
    }
    int32_t max_len = rd_i32(buf);
    if (max_len <= 0 || max_len > LLAMA2C_MAX_TOKEN_LENGTH) {
        set_err(err, errlen, "%s: bad max_token_length %d (not a llama2.c tokenizer?)", path,
                (int)max_len);
        goto fail;
    }
    size_t pos = 4, total = 0;
    for (int i = 0; i < n_vocab; i++) {
        if (size - pos < 8) {
            set_err(err, errlen, "%s: truncated at token %d of %d (file is %zu bytes)", path, i,
                    n_vocab, size);
            goto fail;
        }
        int32_t len = rd_i32(buf + pos + 4);
        if (len < 0) {
            set_err(err, errlen, "%s: token %d has negative length %d", path, i, (int)len);
            goto fail;
        }
        if (len > max_len) {
            set_err(err, errlen, "%s: token %d has length %d > max_token_length %d", path, i,
                    (int)len, (int)max_len);
            goto fail;
        }
        pos += 8;
        if (size - pos < (size_t)len) {
            set_err(err, errlen, "%s: truncated inside token %d of %d (file is %zu bytes)", path,
                    i, n_vocab, size);
            goto fail;
        }
        pos += (size_t)len;
        total += (size_t)len;
    }
    if (pos != size) {
        set_err(err, errlen, "%s: %zu trailing bytes after %d tokens (wrong vocabulary size?)",
                path, size - pos, n_vocab);
        goto fail;
    }
    if (total > UINT32_MAX) { /* cannot happen below LLAMA2C_MAX_FILE_SIZE; stated for offsets */
        set_err(err, errlen, "%s: pieces too large", path);
        goto fail;
    }

    /* Pass 2: fill one block holding every array (one free in tokenizer_free).
       4-byte arrays first so they stay aligned. */
    size_t nv = (size_t)n_vocab;
    size_t block_size = (nv + 1) * sizeof(uint32_t) + nv * sizeof(float) + nv + total + 1;
    unsigned char *block = malloc(block_size);
    if (!block) {
        set_err(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    uint32_t *off = (uint32_t *)block;
    float *scores = (float *)(off + nv + 1);
    uint8_t *types = (uint8_t *)(scores + nv);
    char *bytes = (char *)(types + nv);

    pos = 4;
    uint32_t o = 0;
    for (int i = 0; i < n_vocab; i++) {
        scores[i] = rd_f32(buf + pos);
        uint32_t len = (uint32_t)rd_i32(buf + pos + 4);
        pos += 8;
        memcpy(bytes + o, buf + pos, len);
        pos += len;
        off[i] = o;
        o += len;
        off[i + 1] = o;

        if (i == 0) types[i] = TOKEN_UNKNOWN;
        else if (i == 1 || i == 2) types[i] = TOKEN_CONTROL;
        else if (parse_byte_piece(bytes + off[i], len) >= 0) types[i] = TOKEN_BYTE;
        else types[i] = TOKEN_NORMAL;
    }
    bytes[o] = '\0';
    free(buf);

    TokenizerData d = {
        .kind = TOKENIZER_SPM,
        .n_vocab = n_vocab,
        .bos_id = n_vocab > 1 ? 1 : -1,
        .eos_id = n_vocab > 2 ? 2 : -1,
        .add_bos = 1,
        .add_prefix_space = 1,
        .piece_offset = off,
        .piece_bytes = bytes,
        .scores = scores,
        .types = types,
    };
    char why[256];
    Tokenizer *t = build(&d, block, why, sizeof(why));
    if (!t) set_err(err, errlen, "%s: %s", path, why);
    return t;

fail:
    free(buf);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Encoding */

typedef struct {
    int prev, next; /* neighbours in the list, -1 at the ends */
    uint32_t start; /* the symbol is text[start .. start + len) */
    uint32_t len;   /* 0 once merged into its left neighbour */
    int id;         /* its piece, or -1 (a character that is no piece) */
    int frozen;     /* a user-defined piece: never merged */
} Symbol;

/* A pair that could merge. It is stale once either side has changed, which
   shows as a side of length 0 (absorbed) or a different total length (grew):
   symbols only grow, and only by absorbing their right neighbour. */
typedef struct {
    float score;
    int left, right;
    uint32_t len; /* len of left + len of right when the pair was made */
    int id;       /* the merged piece */
} Candidate;

typedef struct {
    Candidate *v;
    size_t n, cap;
} Agenda;

/* Heap order: higher score first; on a tie the leftmost pair, which is
   SentencePiece's rule (a symbol keeps the index of its first character, so
   indices follow text order). */
static int cand_before(const Candidate *a, const Candidate *b)
{
    if (a->score != b->score) return a->score > b->score;
    return a->left < b->left;
}

static int agenda_push(Agenda *q, Candidate c)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 1024;
        Candidate *v = realloc(q->v, cap * sizeof(*v));
        if (!v) return -1;
        q->v = v;
        q->cap = cap;
    }
    size_t i = q->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_before(&c, &q->v[parent])) break;
        q->v[i] = q->v[parent];
        i = parent;
    }
    q->v[i] = c;
    return 0;
}

static Candidate agenda_pop(Agenda *q)
{
    Candidate top = q->v[0];
    Candidate last = q->v[--q->n];
    size_t i = 0;
    for (;;) {
        size_t kid = 2 * i + 1;
        if (kid >= q->n) break;
        if (kid + 1 < q->n && cand_before(&q->v[kid + 1], &q->v[kid])) kid++;
        if (!cand_before(&q->v[kid], &last)) break;
        q->v[i] = q->v[kid];
        i = kid;
    }
    if (q->n > 0) q->v[i] = last;
    return top;
}

/* Queues the pair (a, b) if their concatenation is a piece. */
static int try_pair(const Tokenizer *t, const char *text, const Symbol *sym, int a, int b,
                    Agenda *q)
{
    if (a < 0 || b < 0 || sym[a].frozen || sym[b].frozen) return 0;
    uint32_t len = sym[a].len + sym[b].len;
    int id = lookup(t, text + sym[a].start, len);
    if (id < 0) return 0;
    Candidate c = {t->data.scores[id], a, b, len, id};
    return agenda_push(q, c);
}

/* Appends one id; -1 when ids[] is full. */
static int emit(int *ids, int max_ids, int *n, int id)
{
    if (*n >= max_ids) return -1;
    ids[(*n)++] = id;
    return 0;
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos, int *ids,
                     int max_ids)
{
    int n_ids = 0, ret = -1;
    char *buf = NULL;
    Symbol *sym = NULL;
    Agenda q = {NULL, 0, 0};

    if (max_ids < 0 || (len > 0 && text == NULL) || len > (size_t)INT_MAX - 8) return -1;
    if (add_bos && t->data.bos_id >= 0 && emit(ids, max_ids, &n_ids, t->data.bos_id) < 0)
        return -1;
    if (len == 0) return n_ids;

    /* SentencePiece's dummy prefix: " Hello" and "Hello" mid-sentence are
       then the same tokens. */
    size_t prefix = t->data.add_prefix_space ? 1 : 0;
    size_t n = len + prefix;
    buf = malloc(n);
    sym = malloc(n * sizeof(*sym));
    if (!buf || !sym) goto done;
    if (prefix) buf[0] = ' ';
    memcpy(buf + prefix, text, len);

    /* Split into initial symbols: a user-defined piece (longest match), else
       one UTF-8 character. */
    int n_sym = 0;
    for (size_t pos = 0; pos < n;) {
        Symbol *s = &sym[n_sym];
        size_t l = 0;
        s->frozen = 0;
        s->id = -1;
        for (size_t ul = t->max_user_len < n - pos ? t->max_user_len : n - pos; ul > 0; ul--) {
            int id = lookup(t, buf + pos, ul);
            if (id >= 0 && t->data.types[id] == TOKEN_USER_DEFINED) {
                l = ul;
                s->id = id;
                s->frozen = 1;
                break;
            }
        }
        if (l == 0) {
            l = utf8_char_len((const unsigned char *)buf + pos, n - pos);
            s->id = lookup(t, buf + pos, l);
        }
        s->start = (uint32_t)pos;
        s->len = (uint32_t)l;
        s->prev = n_sym - 1;
        s->next = n_sym + 1;
        n_sym++;
        pos += l;
    }
    sym[n_sym - 1].next = -1;

    for (int i = 0; i + 1 < n_sym; i++)
        if (try_pair(t, buf, sym, i, i + 1, &q) < 0) goto done;

    while (q.n > 0) {
        Candidate c = agenda_pop(&q);
        Symbol *l = &sym[c.left], *r = &sym[c.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != c.len) continue; /* stale */

        /* The left symbol absorbs the right one, which leaves the list. */
        l->len = c.len;
        l->id = c.id;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = c.left;

        if (try_pair(t, buf, sym, l->prev, c.left, &q) < 0) goto done;
        if (try_pair(t, buf, sym, c.left, l->next, &q) < 0) goto done;
    }

    for (int i = 0; i >= 0; i = sym[i].next) {
        const Symbol *s = &sym[i];
        if (s->id >= 0) {
            if (emit(ids, max_ids, &n_ids, s->id) < 0) goto done;
            continue;
        }
        /* Byte fallback; a character the vocabulary cannot spell at all
           becomes one <unk> (or vanishes if there is no <unk> either). */
        const unsigned char *p = (const unsigned char *)buf + s->start;
        int all_bytes = 1;
        for (uint32_t k = 0; k < s->len; k++)
            if (t->byte_id[p[k]] < 0) all_bytes = 0;
        if (all_bytes) {
            for (uint32_t k = 0; k < s->len; k++)
                if (emit(ids, max_ids, &n_ids, t->byte_id[p[k]]) < 0) goto done;
        } else if (t->unk_id >= 0) {
            if (emit(ids, max_ids, &n_ids, t->unk_id) < 0) goto done;
        }
    }
    ret = n_ids;

done:
    free(q.v);
    free(sym);
    free(buf);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Decoding */

const char *tokenizer_decode(const Tokenizer *t, int prev, int id, size_t *len)
{
    size_t unused;
    if (len == NULL) len = &unused;
    *len = 0;
    if (id < 0 || id >= t->data.n_vocab) return "";

    size_t n;
    const char *p = piece_of(t, id, &n);
    switch (t->data.types[id]) {
    case TOKEN_CONTROL:
    case TOKEN_UNKNOWN:
        return "";
    case TOKEN_BYTE:
        *len = 1;
        return t->byte_str[byte_token_value(p, n)]; /* checked at creation */
    default:
        break;
    }
    /* The dummy prefix space of the first word is not part of the text. */
    if (prev >= 0 && prev == t->data.bos_id && n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    *len = n;
    return p;
}
