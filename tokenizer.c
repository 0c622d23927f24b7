/* tokenizer.c - text <-> token ids, see tokenizer.h.
 *
 * Two encoders share the symbol list and heap below:
 *
 * SentencePiece-style BPE (TOKENIZER_SPM) follows SentencePiece's BPE model
 * (and llama.cpp's SPM tokenizer): the text is split into UTF-8 characters,
 * then the adjacent pair whose concatenation is the highest-scoring piece is
 * merged, again and again, until no pair is a piece. Characters that never
 * became a piece fall back to their bytes (<0xNN> tokens).
 *
 * Rank BPE (TOKENIZER_BPE) follows Hugging Face tokenizers and llama.cpp's
 * BPE tokenizer: the text is cut into pre-tokens by a list of regexes, each
 * pre-token is split into bytes (byte-level) or characters, and the adjacent
 * pair that comes first in the merge list merges, until no listed pair is
 * left.
 *
 * The naive loop (llama2.c's) rescans every pair after every merge, which is
 * O(n^2) and takes minutes on a book (or on one long run of spaces). Here the
 * symbols form a doubly linked list over the text and the candidate pairs sit
 * in a binary heap ordered by (priority, position). A merge only creates the
 * two pairs around the merged symbol; pairs made stale by it stay in the heap
 * and are recognised and dropped when popped. Every merge pushes at most two
 * pairs, so the heap sees at most 3n entries: O(n log n) overall.
 *
 * Also here: a small regex engine for pre-tokenizer patterns (a Pike VM, so
 * matching is linear in the text), NFC normalization, and the loaders for
 * llama2.c, GGUF, Hugging Face and SentencePiece files.
 */
#define JSON_IMPLEMENTATION
#include "json.h"
#define GGUF_IMPLEMENTATION
#include "gguf.h"

#include "tokenizer.h"
#include "message.h"
#include "unicode_tables.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

/* Sanity bounds for a llama2.c tokenizer.bin. Real files have pieces of at
   most a few dozen bytes; anything beyond these is corruption, and refusing
   it early keeps a bad file from asking for gigabytes. */
#define LLAMA2C_MAX_TOKEN_LENGTH (1 << 16)
#define LLAMA2C_MAX_FILE_SIZE ((size_t)1 << 30)
#define TOKENIZER_MAX_VOCAB (1 << 26)
#define TOKENIZER_MAX_REGEXES 16
#define TOKENIZER_MAX_OWNED 16

typedef struct Regex Regex;

struct Tokenizer {
    TokenizerData data;   /* a copy; the arrays are borrowed, or in 'owned' */
    void *owned[TOKENIZER_MAX_OWNED]; /* the loader's blocks holding the arrays */

    /* Open-addressing hash of the pieces that text can produce (NORMAL,
       USER_DEFINED, UNUSED): piece -> id, -1 = empty. Normal tokens win over
       the others, then the lowest id. */
    int32_t *index;
    uint32_t index_mask;
    uint32_t max_piece_len; /* longest indexed piece: longer strings skip the lookup */

    /* SPM: USER_DEFINED pieces are matched whole before BPE and never merged
       (SentencePiece's behaviour); most vocabularies have none. */
    uint32_t max_user_len; /* 0 when there are no user-defined pieces */

    /* Added tokens matched in the raw text before anything else: CONTROL and
       UNKNOWN (only when parsing specials) and, for BPE, USER_DEFINED. A hash
       of their pieces, their lengths longest first, and which bytes start one. */
    int32_t *special;
    uint32_t special_mask;
    uint32_t special_lens[64];
    int n_special_lens;
    uint8_t special_first[256];
    uint8_t *strip_flags; /* [n_vocab] TOKENIZER_LSTRIP / RSTRIP, or NULL */

    /* BPE merges: open-addressing hash (left, right) -> rank; the merged id of each rank. */
    uint64_t *merge_keys;  /* (left << 32 | right) + 1, 0 = empty */
    int32_t *merge_rank;
    int32_t *merge_id;
    uint32_t merge_mask;

    Regex *regex[TOKENIZER_MAX_REGEXES];
    int n_regex;

    int byte_id[256];  /* byte fallback: the token of each byte, -1 if none */
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
    message_format(err, errlen, fmt, ap);
    va_end(ap);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Returns the byte a piece spelled exactly "<0xNN>" stands for, or -1. */
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
size_t utf8_char_len(const unsigned char *s, size_t avail)
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

/* A byte that is not part of well-formed UTF-8 decodes to this plus the byte:
   beyond Unicode, so it has no category and is not white space, and the
   regexes treat it like an unknown symbol. */
#define CP_BAD_BYTE 0x110000u

/* Decodes the character at s; *n gets its length in bytes. */
static uint32_t utf8_decode(const unsigned char *s, size_t avail, size_t *n)
{
    size_t l = utf8_char_len(s, avail);
    *n = l;
    switch (l) {
    case 1: return s[0] < 0x80 ? s[0] : CP_BAD_BYTE + s[0];
    case 2: return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    case 3: return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    default:
        return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 |
               (s[3] & 0x3F);
    }
}

/* Writes cp as UTF-8 (or the raw byte for CP_BAD_BYTE + b); returns the length. */
static size_t utf8_encode(uint32_t cp, char *out)
{
    if (cp >= CP_BAD_BYTE) {
        out[0] = (char)(cp - CP_BAD_BYTE);
        return 1;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
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
   pieces are reachable only through their ids (or, for CONTROL, when the
   caller asks to parse special tokens): the text "<s>" is not BOS. */
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

/* The added token spelled s[0..n), or -1. */
static int lookup_special(const Tokenizer *t, const char *s, size_t n)
{
    if (!t->special) return -1;
    uint32_t i = hash_bytes(s, n) & t->special_mask;
    for (;;) {
        int32_t id = t->special[i];
        if (id < 0) return -1;
        size_t pn;
        const char *p = piece_of(t, id, &pn);
        if (pn == n && memcmp(p, s, n) == 0) return id;
        i = (i + 1) & t->special_mask;
    }
}

/* A growable byte buffer, for loaders and normalization. */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} Buf;

static void buf_add(Buf *b, const void *data, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n && data) memcpy(b->p + b->n, data, n); /* data NULL: just make room */
    b->n += n;
    b->p[b->n] = '\0';
}

static void buf_addc(Buf *b, char c) { buf_add(b, &c, 1); }

/* ------------------------------------------------------------------------ */
/* Unicode properties (tables generated by tools/gen_unicode.py) */

/* The index of the last entry <= key in a table of sorted run starts that
   carry a payload in their low 'shift' bits. */
static size_t run_find(const uint32_t *runs, size_t n, uint32_t cp, int shift)
{
    size_t lo = 0, hi = n; /* runs[0] starts at 0 */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if ((runs[mid] >> shift) <= cp) lo = mid;
        else hi = mid;
    }
    return lo;
}

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static int unicode_gc(uint32_t cp)
{
    if (cp < 0x80) { /* ASCII is most of the text: a direct table */
        static int8_t ascii[128];
        static int ready;
        if (!ready) {
            for (uint32_t c = 0; c < 128; c++)
                ascii[c] = (int8_t)(unicode_gc_runs[run_find(unicode_gc_runs, N_OF(unicode_gc_runs), c, 5)] & 31);
            ready = 1; /* idempotent: racing threads write the same values */
        }
        return ascii[cp];
    }
    if (cp >= 0x110000) return UNICODE_GC_CN;
    return (int)(unicode_gc_runs[run_find(unicode_gc_runs, N_OF(unicode_gc_runs), cp, 5)] & 31);
}

static int unicode_is_space(uint32_t cp)
{
    if (cp < 0x80) return cp == ' ' || (cp >= 9 && cp <= 13);
    for (size_t i = 0; i < N_OF(unicode_ws_ranges); i += 2)
        if (cp >= unicode_ws_ranges[i] && cp <= unicode_ws_ranges[i + 1]) return 1;
    return 0;
}

/* Property bits of a code point: 1 << general category, plus white space. */
#define PROP_SPACE (1u << 30)
static uint32_t unicode_props(uint32_t cp)
{
    return 1u << unicode_gc(cp) | (unicode_is_space(cp) ? PROP_SPACE : 0);
}

static uint32_t unicode_lower(uint32_t cp)
{
    if (cp < 0x80) return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    size_t lo = 0, hi = N_OF(unicode_lower_map) / 2;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (unicode_lower_map[2 * mid] < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < N_OF(unicode_lower_map) / 2 && unicode_lower_map[2 * lo] == cp ? unicode_lower_map[2 * lo + 1] : cp;
}

/* ------------------------------------------------------------------------ */
/* NFC: canonical decomposition, canonical ordering, canonical composition. */

static int unicode_ccc(uint32_t cp)
{
    if (cp < 0x300 || cp >= 0x110000) return 0;
    return (int)(unicode_ccc_runs[run_find(unicode_ccc_runs, N_OF(unicode_ccc_runs), cp, 8)] & 255);
}

enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7, HANGUL_NV = 21, HANGUL_NT = 28,
       HANGUL_N = 21 * 28, HANGUL_COUNT = 19 * 21 * 28 };

static const uint32_t *find_decomp(uint32_t cp)
{
    size_t lo = 0, hi = N_OF(unicode_decomp) / 3;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (unicode_decomp[3 * mid] < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < N_OF(unicode_decomp) / 3 && unicode_decomp[3 * lo] == cp ? &unicode_decomp[3 * lo] : NULL;
}

/* Appends the full canonical decomposition of cp to out (at most 4 code points
   deep in practice; out has room for 32). */
static int decompose(uint32_t cp, uint32_t *out, int n)
{
    if (n >= 28) {
        out[n++] = cp;
        return n;
    }
    if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_COUNT) {
        uint32_t s = cp - HANGUL_S;
        out[n++] = HANGUL_L + s / HANGUL_N;
        out[n++] = HANGUL_V + (s % HANGUL_N) / HANGUL_NT;
        if (s % HANGUL_NT) out[n++] = HANGUL_T + s % HANGUL_NT;
        return n;
    }
    const uint32_t *d = cp >= 0xC0 && cp < 0x110000 ? find_decomp(cp) : NULL;
    if (!d) {
        out[n++] = cp;
        return n;
    }
    n = decompose(d[1], out, n);
    if (d[2]) n = decompose(d[2], out, n);
    return n;
}

/* The primary composite of a + b, or 0. */
static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= HANGUL_L && a < HANGUL_L + 19 && b >= HANGUL_V && b < HANGUL_V + HANGUL_NV)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_NV + (b - HANGUL_V)) * HANGUL_NT;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_COUNT && (a - HANGUL_S) % HANGUL_NT == 0 && b > HANGUL_T &&
        b < HANGUL_T + HANGUL_NT)
        return a + (b - HANGUL_T);
    size_t lo = 0, hi = N_OF(unicode_compose) / 3;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *e = &unicode_compose[3 * mid];
        if (e[0] < a || (e[0] == a && e[1] < b)) lo = mid + 1;
        else hi = mid;
    }
    if (lo < N_OF(unicode_compose) / 3 && unicode_compose[3 * lo] == a && unicode_compose[3 * lo + 1] == b)
        return unicode_compose[3 * lo + 2];
    return 0;
}

/* NFC of s[0..n) appended to out. Text below U+0300 is already NFC (no
   combining marks, nothing that decomposes canonically... except a few
   Latin-1 letters, which compose back to themselves), so runs of it are
   copied as they are. Ill-formed bytes pass through unchanged. */
static void nfc(const char *s, size_t n, Buf *out)
{
    uint32_t *cps = NULL;
    size_t cap = 0, m = 0;
    size_t i = 0;
    while (i < n) {
        /* copy the stretch that cannot change */
        size_t j = i;
        while (j < n && (unsigned char)s[j] < 0xCC) {
            size_t l;
            uint32_t cp = utf8_decode((const unsigned char *)s + j, n - j, &l);
            if (cp >= 0x300 && cp < CP_BAD_BYTE) break;
            j += l;
        }
        /* keep the last character of the stretch: a mark may combine with it */
        if (j < n && j > i) {
            size_t k = j - 1;
            while (k > i && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
            buf_add(out, s + i, k - i);
            i = k;
        } else {
            buf_add(out, s + i, j - i);
            i = j;
        }
        if (i >= n) break;
        /* decompose up to the next starter that follows a run (a "segment") */
        m = 0;
        size_t e = i;
        int seen = 0;
        while (e < n) {
            size_t l;
            uint32_t cp = utf8_decode((const unsigned char *)s + e, n - e, &l);
            if (seen && unicode_ccc(cp) == 0 && (cp < 0x300 || cp >= CP_BAD_BYTE)) break;
            uint32_t d[32];
            int nd = decompose(cp, d, 0);
            if (m + (size_t)nd > cap) {
                cap = (m + nd) * 2 + 64;
                uint32_t *nc = realloc(cps, cap * sizeof(*cps));
                if (!nc) {
                    out->oom = 1;
                    free(cps);
                    return;
                }
                cps = nc;
            }
            memcpy(cps + m, d, (size_t)nd * sizeof(*d));
            m += (size_t)nd;
            e += l;
            seen = 1;
        }
        /* canonical ordering: stable insertion sort of each run of marks */
        for (size_t a = 1; a < m; a++) {
            int c = unicode_ccc(cps[a]);
            if (c == 0) continue;
            size_t b = a;
            while (b > 0 && unicode_ccc(cps[b - 1]) > c) {
                uint32_t tmp = cps[b];
                cps[b] = cps[b - 1];
                cps[b - 1] = tmp;
                b--;
            }
        }
        /* composition (UAX #15): a mark joins the last starter unless a
           mark of the same or higher class came between them */
        size_t starter = (size_t)-1, w = 0;
        int last = 0;
        for (size_t a = 0; a < m; a++) {
            uint32_t cp = cps[a];
            int c = unicode_ccc(cp);
            if (starter != (size_t)-1) {
                uint32_t comp = compose_pair(cps[starter], cp);
                if (comp && (last < c || last == 0) && (w == starter + 1 || last < c)) {
                    cps[starter] = comp;
                    continue;
                }
            }
            if (c == 0) starter = w;
            last = c;
            cps[w++] = cp;
        }
        for (size_t a = 0; a < w; a++) {
            char u[4];
            buf_add(out, u, utf8_encode(cps[a], u));
        }
        i = e;
    }
    free(cps);
}

/* ------------------------------------------------------------------------ */
/* Regular expressions for pre-tokenizers
 *
 * Enough of the Oniguruma / PCRE syntax that tokenizer.json files use:
 * alternation, groups ((...), (?:...), (?i:...), (?i)), classes with ranges,
 * negation and \p{..} / \P{..} / \s \S \d \D \w \W, the escapes \r \n \t \f
 * \v \xHH \x{H..} \uHHHH, '.', quantifiers ? * + {m} {m,} {m,n} (greedy or
 * lazy), lookahead (?=...) (?!...), and the anchors ^ $ \A \z (at the ends of
 * the piece being split: the pre-tokenizers split pieces one by one).
 * Anything else is refused with a message naming it. Case-insensitivity
 * covers literals through Unicode's simple case mappings and class ranges of
 * ASCII letters.
 *
 * The pattern compiles to a program for a Pike VM: all alternatives advance
 * together one character at a time, in priority order, so a match costs
 * O(text x program) with no backtracking blow-up, and the leftmost match with
 * Perl's preferences (leftmost alternative, greedy or lazy) wins, as in
 * backtracking engines. Lookahead bodies (tiny in practice) run by
 * backtracking at the position where they are asked.
 */

enum { RX_CHAR, RX_ANY, RX_SPLIT, RX_JMP, RX_MATCH, RX_BOL, RX_EOL, RX_LOOK };

typedef struct {
    uint8_t op;
    uint8_t neg;  /* RX_LOOK: negative lookahead */
    int32_t x, y; /* RX_CHAR: class index; RX_SPLIT: preferred, other (relative);
                     RX_JMP: target (relative); RX_LOOK: body (relative), continuation (relative) */
} RxInst;

/* A class is a union of items, optionally negated. */
enum { RXI_RANGE, RXI_PROPS, RXI_NOT_PROPS };
typedef struct {
    uint8_t kind;
    uint32_t a, b; /* range a..b, or a property mask in a */
} RxItem;

typedef struct {
    int negate;
    int first, n; /* items[first .. first + n) */
    uint8_t ascii[16]; /* membership of the 128 ASCII code points, precomputed */
} RxClass;

struct Regex {
    RxInst *code;
    int n_code, cap_code;
    RxClass *cls;
    int n_cls, cap_cls;
    RxItem *items;
    int n_items, cap_items;
};

typedef struct {
    Regex *re;
    const char *p, *end;
    int icase;
    int depth;
    char *err;
    size_t errlen;
    const char *pattern;
} RxParser;

static int rx_fail(RxParser *P, const char *what)
{
    if (P->err && P->err[0] == '\0')
        set_err(P->err, P->errlen, "pre-tokenizer regex: %s at offset %d of \"%.60s\"", what,
                (int)(P->p - P->pattern), P->pattern);
    return -1;
}

static int rx_emit(RxParser *P, int op, int x, int y)
{
    Regex *re = P->re;
    if (re->n_code == re->cap_code) {
        int cap = re->cap_code ? re->cap_code * 2 : 64;
        if (cap > 1 << 20) return rx_fail(P, "pattern too large");
        RxInst *c = realloc(re->code, (size_t)cap * sizeof(*c));
        if (!c) return rx_fail(P, "out of memory");
        re->code = c;
        re->cap_code = cap;
    }
    re->code[re->n_code] = (RxInst){(uint8_t)op, 0, x, y};
    return re->n_code++;
}

/* Makes room for one instruction at 'at', shifting [at, n_code) up by one.
   Jumps are relative, so moved code stays valid; jumps from before 'at' into
   the moved code do not exist (code is built left to right). */
static int rx_insert(RxParser *P, int at, int op, int x, int y)
{
    if (rx_emit(P, RX_MATCH, 0, 0) < 0) return -1;
    Regex *re = P->re;
    memmove(&re->code[at + 1], &re->code[at], (size_t)(re->n_code - 1 - at) * sizeof(RxInst));
    re->code[at] = (RxInst){(uint8_t)op, 0, x, y};
    return at;
}

/* Appends a copy of code[a, b). */
static int rx_copy(RxParser *P, int a, int b)
{
    for (int i = a; i < b; i++) {
        RxInst in = P->re->code[i];
        if (rx_emit(P, in.op, in.x, in.y) < 0) return -1;
        P->re->code[P->re->n_code - 1].neg = in.neg;
    }
    return 0;
}

static int rx_item(RxParser *P, int kind, uint32_t a, uint32_t b)
{
    Regex *re = P->re;
    if (re->n_items == re->cap_items) {
        int cap = re->cap_items ? re->cap_items * 2 : 64;
        if (cap > 1 << 20) return rx_fail(P, "pattern too large");
        RxItem *v = realloc(re->items, (size_t)cap * sizeof(*v));
        if (!v) return rx_fail(P, "out of memory");
        re->items = v;
        re->cap_items = cap;
    }
    re->items[re->n_items++] = (RxItem){(uint8_t)kind, a, b};
    return 0;
}

static int rx_item_match(const RxItem *it, uint32_t cp, uint32_t props)
{
    switch (it->kind) {
    case RXI_RANGE: return cp >= it->a && cp <= it->b;
    case RXI_PROPS: return (props & it->a) != 0;
    default: return (props & it->a) == 0;
    }
}

static int rx_class_match(const Regex *re, const RxClass *c, uint32_t cp)
{
    if (cp < 128) return c->ascii[cp >> 3] >> (cp & 7) & 1;
    uint32_t props = unicode_props(cp);
    int in = 0;
    for (int i = 0; i < c->n && !in; i++) in = rx_item_match(&re->items[c->first + i], cp, props);
    return in != c->negate;
}

/* Seals the items added since 'first' into a class; returns its index. */
static int rx_class_end(RxParser *P, int first, int negate)
{
    Regex *re = P->re;
    if (re->n_cls == re->cap_cls) {
        int cap = re->cap_cls ? re->cap_cls * 2 : 16;
        RxClass *v = realloc(re->cls, (size_t)cap * sizeof(*v));
        if (!v) return rx_fail(P, "out of memory");
        re->cls = v;
        re->cap_cls = cap;
    }
    RxClass *c = &re->cls[re->n_cls];
    c->negate = negate;
    c->first = first;
    c->n = re->n_items - first;
    memset(c->ascii, 0, sizeof(c->ascii));
    for (uint32_t cp = 0; cp < 128; cp++) {
        uint32_t props = unicode_props(cp);
        int in = 0;
        for (int i = 0; i < c->n && !in; i++) in = rx_item_match(&re->items[first + i], cp, props);
        if (in != negate) c->ascii[cp >> 3] |= (uint8_t)(1u << (cp & 7));
    }
    return re->n_cls++;
}

/* General category masks by name ("L", "Lu", "Letter", ...); 0 = unknown. */
static uint32_t rx_category(const char *name, size_t n)
{
    static const char *gc2[] = {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe",
                                "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"};
    static const struct {
        const char *name;
        char letter;
    } longs[] = {{"Letter", 'L'}, {"Mark", 'M'}, {"Number", 'N'}, {"Punctuation", 'P'},
                 {"Symbol", 'S'}, {"Separator", 'Z'}, {"Other", 'C'}};
    char one = 0;
    if (n == 1) one = name[0];
    for (size_t i = 0; i < N_OF(longs); i++)
        if (strlen(longs[i].name) == n && memcmp(longs[i].name, name, n) == 0) one = longs[i].letter;
    uint32_t mask = 0;
    for (int g = 0; g < 30; g++) {
        if (one && gc2[g][0] == one) mask |= 1u << g;
        if (n == 2 && memcmp(gc2[g], name, 2) == 0) mask |= 1u << g;
    }
    if (n == 2 && memcmp(name, "L&", 2) == 0) mask = 1u << UNICODE_GC_LU | 1u << UNICODE_GC_LL | 1u << UNICODE_GC_LT;
    return mask;
}

#define RX_DIGIT_MASK (1u << UNICODE_GC_ND)
#define RX_WORD_MASK                                                                                            \
    (1u << UNICODE_GC_LU | 1u << UNICODE_GC_LL | 1u << UNICODE_GC_LT | 1u << UNICODE_GC_LM | 1u << UNICODE_GC_LO | \
     1u << UNICODE_GC_MN | 1u << UNICODE_GC_MC | 1u << UNICODE_GC_ME | 1u << UNICODE_GC_ND | 1u << UNICODE_GC_PC)

static int rx_hex(RxParser *P, int ndigits, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < ndigits; i++) {
        if (P->p >= P->end || hexval(*P->p) < 0) return rx_fail(P, "bad hex escape");
        v = v * 16 + (uint32_t)hexval(*P->p++);
    }
    *out = v;
    return 0;
}

/* Parses the escape after a backslash. Either a single code point (*cp,
   returns 1) or a set, added as items (returns 0). */
static int rx_escape(RxParser *P, uint32_t *cp)
{
    if (P->p >= P->end) return rx_fail(P, "pattern ends with a backslash");
    char c = *P->p++;
    switch (c) {
    case 'r': *cp = '\r'; return 1;
    case 'n': *cp = '\n'; return 1;
    case 't': *cp = '\t'; return 1;
    case 'f': *cp = '\f'; return 1;
    case 'v': *cp = '\v'; return 1;
    case 'e': *cp = 27; return 1;
    case '0': *cp = 0; return 1;
    case 's': return rx_item(P, RXI_PROPS, PROP_SPACE, 0);
    case 'S': return rx_item(P, RXI_NOT_PROPS, PROP_SPACE, 0);
    case 'd': return rx_item(P, RXI_PROPS, RX_DIGIT_MASK, 0);
    case 'D': return rx_item(P, RXI_NOT_PROPS, RX_DIGIT_MASK, 0);
    case 'w': return rx_item(P, RXI_PROPS, RX_WORD_MASK, 0);
    case 'W': return rx_item(P, RXI_NOT_PROPS, RX_WORD_MASK, 0);
    case 'x':
        if (P->p < P->end && *P->p == '{') {
            P->p++;
            uint32_t v = 0;
            int nd = 0;
            while (P->p < P->end && *P->p != '}') {
                if (hexval(*P->p) < 0 || ++nd > 6) return rx_fail(P, "bad \\x{...} escape");
                v = v * 16 + (uint32_t)hexval(*P->p++);
            }
            if (P->p >= P->end || nd == 0) return rx_fail(P, "bad \\x{...} escape");
            P->p++;
            *cp = v;
            return 1;
        }
        if (rx_hex(P, 2, cp) < 0) return -1;
        return 1;
    case 'u':
        if (rx_hex(P, 4, cp) < 0) return -1;
        return 1;
    case 'p':
    case 'P': {
        const char *name = P->p;
        size_t n = 1;
        if (P->p < P->end && *P->p == '{') {
            name = ++P->p;
            while (P->p < P->end && *P->p != '}') P->p++;
            if (P->p >= P->end) return rx_fail(P, "unterminated \\p{");
            n = (size_t)(P->p - name);
            P->p++;
        } else if (P->p < P->end) P->p++;
        else return rx_fail(P, "bad \\p");
        int neg = c == 'P';
        if (n > 0 && name[0] == '^') {
            neg = !neg;
            name++;
            n--;
        }
        uint32_t mask = rx_category(name, n);
        if (!mask) {
            char what[96];
            snprintf(what, sizeof(what), "unsupported property \\p{%.*s}", (int)(n < 40 ? n : 40), name);
            return rx_fail(P, what);
        }
        return rx_item(P, neg ? RXI_NOT_PROPS : RXI_PROPS, mask, 0);
    }
    default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '1' && c <= '9')) {
            char what[64];
            snprintf(what, sizeof(what), "unsupported escape \\%c", c);
            P->p--;
            return rx_fail(P, what);
        }
        *cp = (unsigned char)c; /* escaped punctuation (or a UTF-8 lead byte: decoded below) */
        if ((unsigned char)c >= 0x80) {
            size_t l;
            P->p--;
            *cp = utf8_decode((const unsigned char *)P->p, (size_t)(P->end - P->p), &l);
            P->p += l;
        }
        return 1;
    }
}

/* The other cases of cp (for case-insensitive literals). */
static int rx_case_variants(uint32_t cp, uint32_t out[4])
{
    int n = 0;
    out[n++] = cp;
    uint32_t lo = unicode_lower(cp);
    if (lo != cp) out[n++] = lo;
    for (size_t i = 0; i < N_OF(unicode_lower_map) && n < 4; i += 2)
        if (unicode_lower_map[i + 1] == lo && unicode_lower_map[i] != cp) out[n++] = unicode_lower_map[i];
    return n;
}

/* Adds the range a..b, with its ASCII letters' other case when icase. */
static int rx_range(RxParser *P, uint32_t a, uint32_t b)
{
    if (rx_item(P, RXI_RANGE, a, b) < 0) return -1;
    if (!P->icase) return 0;
    if (a == b) {
        uint32_t v[4];
        int n = rx_case_variants(a, v);
        for (int i = 1; i < n; i++)
            if (rx_item(P, RXI_RANGE, v[i], v[i]) < 0) return -1;
        return 0;
    }
    uint32_t lo = a > 'a' ? a : 'a', hi = b < 'z' ? b : 'z';
    if (lo <= hi && rx_item(P, RXI_RANGE, lo - 32, hi - 32) < 0) return -1;
    lo = a > 'A' ? a : 'A';
    hi = b < 'Z' ? b : 'Z';
    if (lo <= hi && rx_item(P, RXI_RANGE, lo + 32, hi + 32) < 0) return -1;
    return 0;
}

static uint32_t rx_next_cp(RxParser *P)
{
    size_t l;
    uint32_t cp = utf8_decode((const unsigned char *)P->p, (size_t)(P->end - P->p), &l);
    P->p += l;
    return cp;
}

/* After '[': parses the class up to ']' and emits an RX_CHAR. */
static int rx_parse_class(RxParser *P)
{
    int first = P->re->n_items, negate = 0;
    if (P->p < P->end && *P->p == '^') {
        negate = 1;
        P->p++;
    }
    int any = 0;
    for (;;) {
        if (P->p >= P->end) return rx_fail(P, "unterminated [");
        if (*P->p == ']' && any) {
            P->p++;
            break;
        }
        if (*P->p == '[') {
            if (P->p + 1 < P->end && P->p[1] == ':') return rx_fail(P, "POSIX classes [:...:] are not supported");
            /* a nested '[' is a literal in the patterns seen in the wild */
        }
        if (*P->p == '&' && P->p + 1 < P->end && P->p[1] == '&') return rx_fail(P, "class intersection && is not supported");
        any = 1;
        uint32_t lo;
        if (*P->p == '\\') {
            P->p++;
            int r = rx_escape(P, &lo);
            if (r < 0) return -1;
            if (r == 0) continue; /* a set */
        } else lo = rx_next_cp(P);
        uint32_t hi = lo;
        if (P->p + 1 < P->end && *P->p == '-' && P->p[1] != ']') {
            P->p++;
            if (*P->p == '\\') {
                P->p++;
                int r = rx_escape(P, &hi);
                if (r < 0) return -1;
                if (r == 0) return rx_fail(P, "a range cannot end in a class escape");
            } else hi = rx_next_cp(P);
            if (hi < lo) return rx_fail(P, "range out of order");
        }
        if (rx_range(P, lo, hi) < 0) return -1;
    }
    int c = rx_class_end(P, first, negate);
    return c < 0 ? -1 : rx_emit(P, RX_CHAR, c, 0);
}

static int rx_parse_alt(RxParser *P);

/* Parses {m}, {m,}, {m,n}; returns 1 if it was one (else leaves p alone). */
static int rx_parse_braces(RxParser *P, int *mn, int *mx)
{
    const char *s = P->p + 1;
    int m = 0, n = -1, digits = 0;
    while (s < P->end && *s >= '0' && *s <= '9') {
        m = m * 10 + (*s++ - '0');
        if (++digits > 4) return 0;
    }
    if (!digits) return 0;
    if (s < P->end && *s == ',') {
        s++;
        int d2 = 0;
        n = 0;
        while (s < P->end && *s >= '0' && *s <= '9') {
            n = n * 10 + (*s++ - '0');
            if (++d2 > 4) return 0;
        }
        if (!d2) n = -1; /* {m,} */
    } else n = m;
    if (s >= P->end || *s != '}') return 0;
    P->p = s + 1;
    *mn = m;
    *mx = n;
    return 1;
}

/* Wraps code[a, n_code) in a quantifier. */
static int rx_quantify(RxParser *P, int a, int mn, int mx, int lazy)
{
    Regex *re = P->re;
    int len = re->n_code - a;
    if (mx >= 0 && mx < mn) return rx_fail(P, "bad repetition {m,n}");
    if (mn > 1000 || mx > 1000) return rx_fail(P, "repetition count too large");
    if (mn == 0 && mx == 1) { /* x? */
        return rx_insert(P, a, RX_SPLIT, lazy ? len + 1 : 1, lazy ? 1 : len + 1) < 0 ? -1 : 0;
    }
    if (mn == 0 && mx < 0) { /* x*: L: split body, out; body; jmp L */
        if (rx_insert(P, a, RX_SPLIT, lazy ? len + 2 : 1, lazy ? 1 : len + 2) < 0) return -1;
        return rx_emit(P, RX_JMP, -(len + 1), 0) < 0 ? -1 : 0;
    }
    if (mn == 1 && mx < 0) { /* x+: body; split body, out */
        return rx_emit(P, RX_SPLIT, lazy ? 1 : -len, lazy ? -len : 1) < 0 ? -1 : 0;
    }
    /* general: m copies, then x* or (n - m) copies of x? */
    if (mn == 0) {
        /* the body is already there once: make it optional, then add the rest */
        if (mx == 0) {
            re->n_code = a;
            return 0;
        }
        if (rx_insert(P, a, RX_SPLIT, lazy ? len + 1 : 1, lazy ? 1 : len + 1) < 0) return -1;
        for (int i = 1; i < mx; i++) {
            int b = re->n_code;
            if (rx_copy(P, a + 1, a + 1 + len) < 0 || rx_quantify(P, b, 0, 1, lazy) < 0) return -1;
        }
        return 0;
    }
    for (int i = 1; i < mn; i++)
        if (rx_copy(P, a, a + len) < 0) return -1;
    if (mx < 0) {
        int b = re->n_code;
        return rx_copy(P, a, a + len) < 0 || rx_quantify(P, b, 0, -1, lazy) < 0 ? -1 : 0;
    }
    for (int i = mn; i < mx; i++) {
        int b = re->n_code;
        if (rx_copy(P, a, a + len) < 0 || rx_quantify(P, b, 0, 1, lazy) < 0) return -1;
    }
    return 0;
}

static int rx_parse_atom(RxParser *P)
{
    char c = *P->p;
    if (c == '(') {
        P->p++;
        int saved_icase = P->icase, look = -1, neg = 0;
        if (P->p < P->end && *P->p == '?') {
            P->p++;
            if (P->p >= P->end) return rx_fail(P, "unterminated group");
            char k = *P->p;
            if (k == ':') P->p++;
            else if (k == '=' || k == '!') {
                look = 1;
                neg = k == '!';
                P->p++;
            } else if (k == 'i' || k == '-') {
                int on = 1;
                while (P->p < P->end && (*P->p == 'i' || *P->p == '-')) {
                    if (*P->p == '-') on = 0;
                    else P->icase = on;
                    P->p++;
                }
                if (P->p < P->end && *P->p == ')') { /* (?i): for the rest of the enclosing group */
                    P->p++;
                    saved_icase = P->icase;
                    return 0;
                }
                if (P->p >= P->end || *P->p != ':') return rx_fail(P, "unsupported group flags");
                P->p++;
            } else if (k == '<' && P->p + 1 < P->end && (P->p[1] == '=' || P->p[1] == '!'))
                return rx_fail(P, "lookbehind is not supported");
            else if (k == '>') return rx_fail(P, "atomic groups are not supported");
            else if (k == '<' || k == 'P' || k == '\'') { /* named group: skip the name */
                char close = k == '\'' ? '\'' : '>';
                if (k == 'P') P->p++;
                while (P->p < P->end && *P->p != close) P->p++;
                if (P->p >= P->end) return rx_fail(P, "bad group name");
                P->p++;
            } else return rx_fail(P, "unsupported group");
        }
        if (++P->depth > 200) return rx_fail(P, "groups nested too deeply");
        int at = P->re->n_code;
        if (look >= 0 && rx_emit(P, RX_LOOK, 1, 0) < 0) return -1;
        if (rx_parse_alt(P) < 0) return -1;
        P->depth--;
        if (P->p >= P->end || *P->p != ')') return rx_fail(P, "missing )");
        P->p++;
        P->icase = saved_icase;
        if (look >= 0) {
            if (rx_emit(P, RX_MATCH, 0, 0) < 0) return -1;
            P->re->code[at].neg = (uint8_t)neg;
            P->re->code[at].y = P->re->n_code - at;
        }
        return 0;
    }
    if (c == '[') {
        P->p++;
        return rx_parse_class(P) < 0 ? -1 : 0;
    }
    if (c == '.') {
        P->p++;
        return rx_emit(P, RX_ANY, 0, 0) < 0 ? -1 : 0;
    }
    if (c == '^') {
        P->p++;
        return rx_emit(P, RX_BOL, 0, 0) < 0 ? -1 : 0;
    }
    if (c == '$') {
        P->p++;
        return rx_emit(P, RX_EOL, 0, 0) < 0 ? -1 : 0;
    }
    if (c == '*' || c == '+' || c == '?' || c == '{') return rx_fail(P, "nothing to repeat");
    int first = P->re->n_items;
    uint32_t cp;
    if (c == '\\') {
        P->p++;
        if (P->p < P->end && (*P->p == 'A' || *P->p == 'z' || *P->p == 'Z')) {
            if (*P->p == 'Z') return rx_fail(P, "\\Z is not supported");
            int op = *P->p == 'A' ? RX_BOL : RX_EOL;
            P->p++;
            return rx_emit(P, op, 0, 0) < 0 ? -1 : 0;
        }
        if (P->p < P->end && (*P->p == 'b' || *P->p == 'B' || *P->p == 'G'))
            return rx_fail(P, "word boundaries and \\G are not supported");
        int r = rx_escape(P, &cp);
        if (r < 0) return -1;
        if (r == 0) {
            int k = rx_class_end(P, first, 0);
            return k < 0 || rx_emit(P, RX_CHAR, k, 0) < 0 ? -1 : 0;
        }
    } else cp = rx_next_cp(P);
    if (rx_range(P, cp, cp) < 0) return -1;
    int k = rx_class_end(P, first, 0);
    return k < 0 || rx_emit(P, RX_CHAR, k, 0) < 0 ? -1 : 0;
}

static int rx_parse_concat(RxParser *P)
{
    while (P->p < P->end && *P->p != '|' && *P->p != ')') {
        int a = P->re->n_code;
        if (rx_parse_atom(P) < 0) return -1;
        if (a == P->re->n_code) continue; /* (?i) */
        for (;;) { /* quantifiers (a repeated one applies to the result) */
            if (P->p >= P->end) break;
            int mn, mx;
            char q = *P->p;
            if (q == '?') mn = 0, mx = 1, P->p++;
            else if (q == '*') mn = 0, mx = -1, P->p++;
            else if (q == '+') mn = 1, mx = -1, P->p++;
            else if (q == '{' && rx_parse_braces(P, &mn, &mx)) {
            } else break;
            int lazy = 0;
            if (P->p < P->end && *P->p == '?') {
                lazy = 1;
                P->p++;
            } else if (P->p < P->end && *P->p == '+')
                return rx_fail(P, "possessive quantifiers are not supported");
            if (P->re->code[a].op == RX_BOL || P->re->code[a].op == RX_EOL || P->re->code[a].op == RX_LOOK)
                return rx_fail(P, "a quantified assertion is not supported");
            if (rx_quantify(P, a, mn, mx, lazy) < 0) return -1;
        }
    }
    return 0;
}

static int rx_parse_alt(RxParser *P)
{
    int a = P->re->n_code;
    if (rx_parse_concat(P) < 0) return -1;
    while (P->p < P->end && *P->p == '|') {
        P->p++;
        /* split L1, L2; L1: left; jmp end; L2: right */
        int len = P->re->n_code - a;
        if (rx_insert(P, a, RX_SPLIT, 1, len + 2) < 0) return -1;
        int j = rx_emit(P, RX_JMP, 0, 0);
        if (j < 0) return -1;
        if (rx_parse_concat(P) < 0) return -1;
        P->re->code[j].x = P->re->n_code - j;
    }
    return 0;
}

static void regex_free(Regex *re)
{
    if (!re) return;
    free(re->code);
    free(re->cls);
    free(re->items);
    free(re);
}

static Regex *regex_compile(const char *pattern, size_t len, char *err, size_t errlen)
{
    Regex *re = calloc(1, sizeof(*re));
    if (!re) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    if (err && errlen) err[0] = '\0';
    RxParser P = {re, pattern, pattern + len, 0, 0, err, errlen, pattern};
    if (rx_parse_alt(&P) < 0 || (P.p < P.end && rx_fail(&P, "unbalanced )") < 0) ||
        rx_emit(&P, RX_MATCH, 0, 0) < 0) {
        regex_free(re);
        return NULL;
    }
    return re;
}

/* Does the program from pc match at pos (anything, any length)? Used for
   lookahead bodies, by backtracking with a step budget. */
static int rx_look(const Regex *re, int pc, const unsigned char *s, size_t pos, size_t end, int *budget)
{
    for (;;) {
        if (--*budget < 0) return 0;
        const RxInst *in = &re->code[pc];
        size_t l;
        switch (in->op) {
        case RX_MATCH: return 1;
        case RX_CHAR:
            if (pos >= end) return 0;
            if (!rx_class_match(re, &re->cls[in->x], utf8_decode(s + pos, end - pos, &l))) return 0;
            pos += l;
            pc++;
            break;
        case RX_ANY:
            if (pos >= end || s[pos] == '\n') return 0;
            utf8_decode(s + pos, end - pos, &l);
            pos += l;
            pc++;
            break;
        case RX_JMP: pc += in->x; break;
        case RX_SPLIT:
            if (rx_look(re, pc + in->x, s, pos, end, budget)) return 1;
            pc += in->y;
            break;
        case RX_BOL:
            if (pos != 0) return 0;
            pc++;
            break;
        case RX_EOL:
            if (pos != end) return 0;
            pc++;
            break;
        case RX_LOOK:
            if (rx_look(re, pc + in->x, s, pos, end, budget) == in->neg) return 0;
            pc += in->y;
            break;
        }
    }
}

/* Pike VM state, reused across matches. */
typedef struct {
    int *pcs[2];
    size_t *starts[2];
    int n[2];
    unsigned *mark; /* generation per pc */
    unsigned gen;
    int cap;
} RxVM;

static void rx_vm_free(RxVM *vm)
{
    free(vm->pcs[0]);
    free(vm->pcs[1]);
    free(vm->starts[0]);
    free(vm->starts[1]);
    free(vm->mark);
    memset(vm, 0, sizeof(*vm));
}

static int rx_vm_reserve(RxVM *vm, int n)
{
    if (vm->cap >= n) return 0;
    rx_vm_free(vm);
    vm->pcs[0] = malloc((size_t)n * sizeof(int));
    vm->pcs[1] = malloc((size_t)n * sizeof(int));
    vm->starts[0] = malloc((size_t)n * sizeof(size_t));
    vm->starts[1] = malloc((size_t)n * sizeof(size_t));
    vm->mark = calloc((size_t)n, sizeof(unsigned));
    if (!vm->pcs[0] || !vm->pcs[1] || !vm->starts[0] || !vm->starts[1] || !vm->mark) {
        rx_vm_free(vm);
        return -1;
    }
    vm->cap = n;
    vm->gen = 0;
    return 0;
}

/* Adds the thread at pc (following jumps, splits and assertions at pos) to list l. */
static void rx_add(const Regex *re, RxVM *vm, int l, int pc, size_t start, const unsigned char *s, size_t pos,
                   size_t end)
{
    for (;;) {
        if (vm->mark[pc] == vm->gen) return;
        vm->mark[pc] = vm->gen;
        const RxInst *in = &re->code[pc];
        switch (in->op) {
        case RX_JMP: pc += in->x; continue;
        case RX_SPLIT:
            rx_add(re, vm, l, pc + in->x, start, s, pos, end);
            pc += in->y;
            continue;
        case RX_BOL:
            if (pos != 0) return;
            pc++;
            continue;
        case RX_EOL:
            if (pos != end) return;
            pc++;
            continue;
        case RX_LOOK: {
            int budget = 100000;
            if (rx_look(re, pc + in->x, s, pos, end, &budget) == in->neg) return;
            pc += in->y;
            continue;
        }
        default:
            vm->pcs[l][vm->n[l]] = pc;
            vm->starts[l][vm->n[l]] = start;
            vm->n[l]++;
            return;
        }
    }
}

/* Finds the leftmost match in s[from, end) (s[0, end) is the whole piece, for
   the anchors). Returns 1 and sets *ms, *me, or 0. */
static int regex_search(const Regex *re, RxVM *vm, const unsigned char *s, size_t from, size_t end, size_t *ms,
                        size_t *me)
{
    int found = 0;
    int cur = 0;
    vm->n[0] = vm->n[1] = 0;
    size_t pos = from;
    for (;;) {
        if (++vm->gen == 0) { /* wrapped: clear the marks */
            memset(vm->mark, 0, (size_t)vm->cap * sizeof(unsigned));
            vm->gen = 1;
        }
        /* the new thread (lowest priority) is added after the running ones;
           the marks of this generation belong to the current list */
        if (!found) {
            /* re-mark the running threads so the new one does not duplicate them */
            for (int i = 0; i < vm->n[cur]; i++) vm->mark[vm->pcs[cur][i]] = vm->gen;
            rx_add(re, vm, cur, 0, pos, s, pos, end);
        }
        if (vm->n[cur] == 0) {
            if (found || pos >= end) break;
            size_t l;
            utf8_decode(s + pos, end - pos, &l);
            pos += l;
            continue;
        }
        size_t l = 0;
        uint32_t cp = 0;
        if (pos < end) cp = utf8_decode(s + pos, end - pos, &l);
        int nxt = 1 - cur;
        vm->n[nxt] = 0;
        if (++vm->gen == 0) {
            memset(vm->mark, 0, (size_t)vm->cap * sizeof(unsigned));
            vm->gen = 1;
        }
        for (int i = 0; i < vm->n[cur]; i++) {
            const RxInst *in = &re->code[vm->pcs[cur][i]];
            if (in->op == RX_MATCH) {
                found = 1;
                *ms = vm->starts[cur][i];
                *me = pos;
                break; /* lower-priority threads die */
            }
            if (pos >= end) continue;
            int ok = in->op == RX_ANY ? cp != '\n' : rx_class_match(re, &re->cls[in->x], cp);
            if (ok) rx_add(re, vm, nxt, vm->pcs[cur][i] + 1, vm->starts[cur][i], s, pos + l, end);
        }
        if (pos >= end) break;
        pos += l;
        cur = nxt;
        if (vm->n[cur] == 0 && found) break;
    }
    return found;
}

/* ------------------------------------------------------------------------ */
/* Creation */

static uint32_t hash_pair(uint32_t a, uint32_t b)
{
    uint64_t k = ((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(k >> 32);
}

/* The rank and merged id of the pair (a, b), or -1. */
static int merge_find(const Tokenizer *t, int a, int b, int *merged)
{
    if (!t->merge_keys) return -1;
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    uint32_t i = hash_pair((uint32_t)a, (uint32_t)b) & t->merge_mask;
    for (;;) {
        uint64_t k = t->merge_keys[i];
        if (k == 0) return -1;
        if (k == key) {
            int r = t->merge_rank[i];
            *merged = t->merge_id[r];
            return r;
        }
        i = (i + 1) & t->merge_mask;
    }
}

static int build_merges(Tokenizer *t, char *err, size_t errlen)
{
    const TokenizerData *d = &t->data;
    if (d->n_merges <= 0) return 0;
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)d->n_merges) cap *= 2;
    t->merge_keys = calloc(cap, sizeof(*t->merge_keys));
    t->merge_rank = malloc(cap * sizeof(*t->merge_rank));
    t->merge_id = malloc((size_t)d->n_merges * sizeof(*t->merge_id));
    char *tmp = malloc(2 * (size_t)t->max_piece_len + 2);
    if (!t->merge_keys || !t->merge_rank || !t->merge_id || !tmp) {
        free(tmp);
        set_err(err, errlen, "tokenizer: out of memory");
        return -1;
    }
    t->merge_mask = cap - 1;
    for (int r = 0; r < d->n_merges; r++) {
        uint32_t a = d->merges[2 * r], b = d->merges[2 * r + 1];
        t->merge_id[r] = -1;
        if (a >= (uint32_t)d->n_vocab || b >= (uint32_t)d->n_vocab) {
            free(tmp);
            set_err(err, errlen, "tokenizer: merge %d names token %u or %u, beyond the vocabulary", r, a, b);
            return -1;
        }
        size_t na, nb;
        const char *pa = piece_of(t, (int)a, &na), *pb = piece_of(t, (int)b, &nb);
        if (na + nb > t->max_piece_len) continue; /* makes no piece: never applies */
        memcpy(tmp, pa, na);
        memcpy(tmp + na, pb, nb);
        int m = lookup(t, tmp, na + nb);
        if (m < 0) continue;
        t->merge_id[r] = m;
        uint64_t key = ((uint64_t)a << 32 | b) + 1;
        uint32_t i = hash_pair(a, b) & t->merge_mask;
        while (t->merge_keys[i] != 0 && t->merge_keys[i] != key) i = (i + 1) & t->merge_mask;
        if (t->merge_keys[i] == 0) { /* a repeated pair keeps its first (best) rank */
            t->merge_keys[i] = key;
            t->merge_rank[i] = r;
        }
    }
    free(tmp);
    return 0;
}

/* Checks data and builds the indexes. The 'owned' blocks (may be NULL) are
   adopted: freed with the tokenizer, or right away on failure. */
static Tokenizer *build(const TokenizerData *d, void **owned, int n_owned, char *err, size_t errlen)
{
    Tokenizer *t = NULL;

    if (d == NULL) {
        set_err(err, errlen, "tokenizer: no data");
        goto fail;
    }
    if (d->kind != TOKENIZER_SPM && d->kind != TOKENIZER_BPE) {
        set_err(err, errlen, "tokenizer: unknown tokenizer kind %d", d->kind);
        goto fail;
    }
    if (d->n_vocab <= 0 || d->n_vocab > TOKENIZER_MAX_VOCAB) {
        set_err(err, errlen, "tokenizer: bad vocabulary size %d", d->n_vocab);
        goto fail;
    }
    if (!d->piece_offset || !d->piece_bytes || (!d->scores && d->kind == TOKENIZER_SPM) || !d->types) {
        set_err(err, errlen, "tokenizer: missing piece, score or type array");
        goto fail;
    }
    if (d->bos_id < -1 || d->bos_id >= d->n_vocab || d->eos_id < -1 || d->eos_id >= d->n_vocab) {
        set_err(err, errlen, "tokenizer: bos id %d or eos id %d out of range [-1, %d)",
                d->bos_id, d->eos_id, d->n_vocab);
        goto fail;
    }
    if (d->n_merges < 0 || (d->n_merges > 0 && !d->merges) || d->n_eos < 0 || (d->n_eos > 0 && !d->eos_ids) ||
        d->n_strip < 0 || (d->n_strip > 0 && !d->strip) || (d->pretok_len > 0 && !d->pretok)) {
        set_err(err, errlen, "tokenizer: inconsistent optional arrays");
        goto fail;
    }
    if (d->pretok_len > 0 && d->pretok[d->pretok_len - 1] != '\0') {
        set_err(err, errlen, "tokenizer: pre-tokenizer regexes are not NUL-terminated");
        goto fail;
    }
    for (int i = 0; i < d->n_eos; i++)
        if (d->eos_ids[i] >= (uint32_t)d->n_vocab) {
            set_err(err, errlen, "tokenizer: eos id %u out of range", d->eos_ids[i]);
            goto fail;
        }

    t = calloc(1, sizeof(*t));
    if (!t) {
        set_err(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    t->data = *d;
    for (int i = 0; i < n_owned; i++) t->owned[i] = owned[i];
    n_owned = 0;
    t->unk_id = -1;
    for (int b = 0; b < 256; b++) {
        t->byte_id[b] = -1;
        t->byte_str[b][0] = (char)b;
        t->byte_str[b][1] = '\0';
    }

    int n_text = 0, n_special = 0;
    int bpe = d->kind == TOKENIZER_BPE;
    for (int i = 0; i < d->n_vocab; i++) {
        if (d->piece_offset[i + 1] < d->piece_offset[i]) {
            set_err(err, errlen, "tokenizer: piece offsets decrease at token %d", i);
            goto fail;
        }
        if (d->scores) {
            float s = d->scores[i];
            if (s != s) {
                set_err(err, errlen, "tokenizer: token %d has a NaN score", i);
                goto fail;
            }
        }
        size_t n;
        const char *p = piece_of(t, i, &n);
        switch (d->types[i]) {
        case TOKEN_NORMAL:
        case TOKEN_USER_DEFINED:
        case TOKEN_UNUSED:
            if (n > 0) n_text++;
            if (n > t->max_piece_len) t->max_piece_len = (uint32_t)n;
            if (d->types[i] == TOKEN_USER_DEFINED && n > 0) {
                if (!bpe && n > t->max_user_len) t->max_user_len = (uint32_t)n;
                if (bpe) n_special++;
            }
            break;
        case TOKEN_UNKNOWN:
            if (t->unk_id < 0) t->unk_id = i;
            if (n > 0) n_special++;
            break;
        case TOKEN_CONTROL:
            if (n > 0) n_special++;
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

    /* Normal tokens first, then the other text pieces, ascending ids, and
       an id is only inserted if its piece is not there yet: with duplicate
       pieces a normal token wins, then the lowest id. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < d->n_vocab; i++) {
            size_t n;
            const char *p = piece_of(t, i, &n);
            if (!is_text_piece(d->types[i]) || (d->types[i] == TOKEN_NORMAL) != (pass == 0) || n == 0 ||
                lookup(t, p, n) >= 0)
                continue;
            uint32_t h = hash_bytes(p, n) & t->index_mask;
            while (t->index[h] >= 0) h = (h + 1) & t->index_mask;
            t->index[h] = i;
        }

    /* Byte-level vocabularies spell every byte as a normal one-byte piece. */
    if (d->flags & TOKENIZER_BYTE_LEVEL)
        for (int b = 0; b < 256; b++) {
            char c = (char)b;
            int id = lookup(t, &c, 1);
            if (id >= 0) t->byte_id[b] = id;
        }

    /* Added tokens matched in the raw text. */
    if (n_special > 0) {
        uint32_t scap = 16;
        while (scap < 2u * (uint32_t)n_special) scap *= 2;
        t->special = malloc(scap * sizeof(*t->special));
        if (!t->special) {
            set_err(err, errlen, "tokenizer: out of memory");
            goto fail;
        }
        memset(t->special, 0xff, scap * sizeof(*t->special));
        t->special_mask = scap - 1;
        for (int i = 0; i < d->n_vocab; i++) {
            int ty = d->types[i];
            size_t n;
            const char *p = piece_of(t, i, &n);
            if (n == 0 || !(ty == TOKEN_CONTROL || ty == TOKEN_UNKNOWN || (bpe && ty == TOKEN_USER_DEFINED)) ||
                lookup_special(t, p, n) >= 0)
                continue;
            uint32_t h = hash_bytes(p, n) & t->special_mask;
            while (t->special[h] >= 0) h = (h + 1) & t->special_mask;
            t->special[h] = i;
            t->special_first[(unsigned char)p[0]] = 1;
            int k = 0;
            while (k < t->n_special_lens && t->special_lens[k] > n) k++;
            if ((k < t->n_special_lens && t->special_lens[k] == n) || t->n_special_lens == 64) continue;
            memmove(&t->special_lens[k + 1], &t->special_lens[k],
                    (size_t)(t->n_special_lens - k) * sizeof(t->special_lens[0]));
            t->special_lens[k] = (uint32_t)n;
            t->n_special_lens++;
        }
        if (t->n_special_lens == 64) {
            /* more distinct lengths than the list holds: fall back to every length */
            t->n_special_lens = 0;
            for (uint32_t n = t->max_piece_len > 64 ? 64 : t->max_piece_len; n > 0; n--)
                t->special_lens[t->n_special_lens++] = n;
        }
    }
    if (d->n_strip > 0) {
        t->strip_flags = calloc((size_t)d->n_vocab, 1);
        if (!t->strip_flags) {
            set_err(err, errlen, "tokenizer: out of memory");
            goto fail;
        }
        for (int i = 0; i < d->n_strip; i++) {
            if (d->strip[2 * i] >= (uint32_t)d->n_vocab) {
                set_err(err, errlen, "tokenizer: strip flags for token %u beyond the vocabulary", d->strip[2 * i]);
                goto fail;
            }
            t->strip_flags[d->strip[2 * i]] = (uint8_t)(d->strip[2 * i + 1] & 3);
        }
    }

    if (bpe && build_merges(t, err, errlen) < 0) goto fail;

    for (size_t at = 0; at < d->pretok_len;) {
        size_t n = strlen(d->pretok + at);
        if (t->n_regex == TOKENIZER_MAX_REGEXES) {
            set_err(err, errlen, "tokenizer: more than %d pre-tokenizer regexes", TOKENIZER_MAX_REGEXES);
            goto fail;
        }
        char why[200];
        t->regex[t->n_regex] = regex_compile(d->pretok + at, n, why, sizeof(why));
        if (!t->regex[t->n_regex]) {
            set_err(err, errlen, "tokenizer: %s", why);
            goto fail;
        }
        t->n_regex++;
        at += n + 1;
    }
    return t;

fail:
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    tokenizer_free(t);
    return NULL;
}

Tokenizer *tokenizer_from_data(const TokenizerData *data, char *err, size_t errlen)
{
    return build(data, NULL, 0, err, errlen);
}

static const TokenizerArray *find_array(const TokenizerArray *arrays, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (arrays[i].name && strcmp(arrays[i].name, name) == 0) return &arrays[i];
    return NULL;
}

Tokenizer *tokenizer_new(const TokenizerConfig *cfg, const TokenizerArray *arrays, int n_arrays, char *err,
                         size_t errlen)
{
    const TokenizerArray *off = find_array(arrays, n_arrays, "offsets");
    const TokenizerArray *pieces = find_array(arrays, n_arrays, "pieces");
    const TokenizerArray *scores = find_array(arrays, n_arrays, "scores");
    const TokenizerArray *types = find_array(arrays, n_arrays, "types");
    const TokenizerArray *merges = find_array(arrays, n_arrays, "merges");
    const TokenizerArray *pretok = find_array(arrays, n_arrays, "pretok");
    const TokenizerArray *chat = find_array(arrays, n_arrays, "chat_template");
    const TokenizerArray *eos = find_array(arrays, n_arrays, "eos_ids");
    const TokenizerArray *strip = find_array(arrays, n_arrays, "strip");
    int64_t n = cfg->n_vocab;
    if (!off || !pieces || !types || (!scores && cfg->kind == TOKENIZER_SPM)) {
        set_err(err, errlen, "tokenizer: arrays missing");
        return NULL;
    }
    if (n <= 0 || n > TOKENIZER_MAX_VOCAB || off->type != TOKENIZER_ARRAY_U32 || off->n != n + 1 ||
        pieces->type != TOKENIZER_ARRAY_U8 || (scores && (scores->type != TOKENIZER_ARRAY_F32 || scores->n != n)) ||
        types->type != TOKENIZER_ARRAY_U8 || types->n != n ||
        (merges && (merges->type != TOKENIZER_ARRAY_U32 || merges->n % 2 || merges->n / 2 > INT_MAX)) ||
        (pretok && pretok->type != TOKENIZER_ARRAY_U8) || (chat && chat->type != TOKENIZER_ARRAY_U8) ||
        (eos && (eos->type != TOKENIZER_ARRAY_U32 || eos->n > INT_MAX)) ||
        (strip && (strip->type != TOKENIZER_ARRAY_U32 || strip->n % 2 || strip->n / 2 > INT_MAX))) {
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
        .scores = scores ? scores->data : NULL, .types = types->data, .flags = cfg->flags,
        .merges = merges ? merges->data : NULL, .n_merges = merges ? (int)(merges->n / 2) : 0,
        .pretok = pretok ? pretok->data : NULL, .pretok_len = pretok ? (size_t)pretok->n : 0,
        .chat_template = chat ? chat->data : NULL, .chat_template_len = chat ? (size_t)chat->n : 0,
        .eos_ids = eos ? eos->data : NULL, .n_eos = eos ? (int)eos->n : 0,
        .strip = strip ? strip->data : NULL, .n_strip = strip ? (int)(strip->n / 2) : 0,
    };
    return build(&d, NULL, 0, err, errlen);
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
    cfg->flags = d->flags;
    int n = 0;
    arrays[n++] = (TokenizerArray){"offsets", TOKENIZER_ARRAY_U32, d->n_vocab + 1, d->piece_offset};
    arrays[n++] = (TokenizerArray){"pieces", TOKENIZER_ARRAY_U8, d->piece_offset[d->n_vocab], d->piece_bytes};
    if (d->scores) arrays[n++] = (TokenizerArray){"scores", TOKENIZER_ARRAY_F32, d->n_vocab, d->scores};
    arrays[n++] = (TokenizerArray){"types", TOKENIZER_ARRAY_U8, d->n_vocab, d->types};
    if (d->n_merges > 0)
        arrays[n++] = (TokenizerArray){"merges", TOKENIZER_ARRAY_U32, 2 * (int64_t)d->n_merges, d->merges};
    if (d->pretok_len > 0)
        arrays[n++] = (TokenizerArray){"pretok", TOKENIZER_ARRAY_U8, (int64_t)d->pretok_len, d->pretok};
    if (d->chat_template_len > 0)
        arrays[n++] =
            (TokenizerArray){"chat_template", TOKENIZER_ARRAY_U8, (int64_t)d->chat_template_len, d->chat_template};
    if (d->n_eos > 0) arrays[n++] = (TokenizerArray){"eos_ids", TOKENIZER_ARRAY_U32, d->n_eos, d->eos_ids};
    if (d->n_strip > 0) arrays[n++] = (TokenizerArray){"strip", TOKENIZER_ARRAY_U32, 2 * (int64_t)d->n_strip, d->strip};
    return n;
}

int tokenizer_n_vocab(const Tokenizer *t) { return t->data.n_vocab; }
int tokenizer_bos(const Tokenizer *t) { return t->data.bos_id; }
int tokenizer_add_bos(const Tokenizer *t) { return t->data.add_bos && t->data.bos_id >= 0; }
size_t tokenizer_max_piece_bytes(const Tokenizer *t) { return t->max_piece_len > 1 ? t->max_piece_len : 1; }

int tokenizer_is_eos(const Tokenizer *t, int id)
{
    if (id < 0) return 0;
    if (id == t->data.eos_id) return 1;
    for (int i = 0; i < t->data.n_eos; i++)
        if ((uint32_t)id == t->data.eos_ids[i]) return 1;
    return 0;
}

const char *tokenizer_chat_template(const Tokenizer *t, size_t *len)
{
    if (len) *len = t->data.chat_template_len;
    return t->data.chat_template_len ? t->data.chat_template : NULL;
}

int tokenizer_find(const Tokenizer *t, const char *piece)
{
    size_t n = strlen(piece);
    for (int i = 0; i < t->data.n_vocab; i++) {
        size_t pn;
        const char *p = piece_of(t, i, &pn);
        if (pn == n && memcmp(p, piece, n) == 0) return i;
    }
    return -1;
}

void tokenizer_free(Tokenizer *t)
{
    if (!t) return;
    free(t->index);
    free(t->special);
    free(t->strip_flags);
    free(t->merge_keys);
    free(t->merge_rank);
    free(t->merge_id);
    for (int i = 0; i < t->n_regex; i++) regex_free(t->regex[i]);
    for (int i = 0; i < TOKENIZER_MAX_OWNED; i++) free(t->owned[i]);
    free(t);
}

const TokenizerData *tokenizer_data(const Tokenizer *t)
{
    return &t->data;
}

/* ------------------------------------------------------------------------ */
/* Files */

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
    unsigned char *buf = malloc(cap + 1);
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
        unsigned char *nb = realloc(buf, cap + 1);
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
    buf[n] = '\0'; /* convenient for text files; not counted */
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
    void *own[1] = {block};
    Tokenizer *t = build(&d, own, 1, why, sizeof(why));
    if (!t) set_err(err, errlen, "%s: %s", path, why);
    return t;

fail:
    free(buf);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Vocabulary assembly, shared by the GGUF, Hugging Face and SentencePiece
   loaders: pieces arrive in any order and spelling, the arrays come out in
   id order, each in its own block that the tokenizer adopts. */

typedef struct {
    int n_vocab;
    Buf bytes;          /* the pieces, in arrival order */
    uint32_t *at, *len; /* [n_vocab] where each piece is in bytes (len UINT32_MAX = none yet) */
    float *scores;      /* NULL unless the vocabulary has scores */
    uint8_t *types;
    uint32_t *merges;   /* pairs of ids */
    int n_merges, cap_merges;
    Buf pretok, chat;
    uint32_t eos[8];
    int n_eos;
    uint32_t *strip;
    int n_strip;
    TokenizerData d;
} Vocab;

static int vocab_init(Vocab *V, int n_vocab, int with_scores)
{
    memset(V, 0, sizeof(*V));
    V->n_vocab = n_vocab;
    V->at = calloc((size_t)n_vocab, sizeof(uint32_t));
    V->len = malloc((size_t)n_vocab * sizeof(uint32_t));
    V->types = malloc((size_t)n_vocab);
    V->scores = with_scores ? calloc((size_t)n_vocab, sizeof(float)) : NULL;
    if (!V->at || !V->len || !V->types || (with_scores && !V->scores)) return -1;
    memset(V->len, 0xff, (size_t)n_vocab * sizeof(uint32_t));
    memset(V->types, TOKEN_UNUSED, (size_t)n_vocab);
    return 0;
}

static void vocab_free(Vocab *V)
{
    free(V->bytes.p);
    free(V->at);
    free(V->len);
    free(V->scores);
    free(V->types);
    free(V->merges);
    free(V->pretok.p);
    free(V->chat.p);
    free(V->strip);
    memset(V, 0, sizeof(*V));
}

/* GPT-2's byte-to-unicode table, inverted: the byte a code point stands for
   in a byte-level piece, or -1. Printable Latin-1 bytes stand for themselves;
   the other 68 bytes were moved to U+0100 and up, in order. */
static int byte_level_byte(uint32_t cp)
{
    static int16_t table[324];
    static int ready;
    if (!ready) {
        for (int i = 0; i < 324; i++) table[i] = -1;
        int k = 0;
        for (int b = 0; b < 256; b++) {
            int self = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            table[self ? b : 256 + k++] = (int16_t)b;
        }
        ready = 1; /* idempotent */
    }
    return cp < 324 ? table[cp] : -1;
}

/* Appends a piece's stored form: spelling 0 = as is, 1 = byte-level (GPT-2
   characters back to bytes, when every character is one), 2 = U+2581 as ' '. */
static void vocab_spell(Buf *b, const char *s, size_t n, int spelling)
{
    if (spelling == 1) {
        size_t start = b->n;
        for (size_t i = 0; i < n;) {
            size_t l;
            uint32_t cp = utf8_decode((const unsigned char *)s + i, n - i, &l);
            int byte = byte_level_byte(cp);
            if (byte < 0) { /* not byte-level text (an added token?): keep it */
                b->n = start;
                buf_add(b, s, n);
                return;
            }
            buf_addc(b, (char)byte);
            i += l;
        }
        return;
    }
    if (spelling == 2) {
        for (size_t i = 0; i < n; i++) {
            if (i + 2 < n && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
                (unsigned char)s[i + 2] == 0x81) {
                buf_addc(b, ' ');
                i += 2;
            } else buf_addc(b, s[i]);
        }
        return;
    }
    buf_add(b, s, n);
}

static void vocab_set(Vocab *V, int id, const char *s, size_t n, int spelling, int type)
{
    size_t at = V->bytes.n;
    vocab_spell(&V->bytes, s, n, spelling);
    V->at[id] = (uint32_t)at;
    V->len[id] = (uint32_t)(V->bytes.n - at);
    V->types[id] = (uint8_t)type;
}

static int vocab_add_merge(Vocab *V, uint32_t a, uint32_t b)
{
    if (V->n_merges == V->cap_merges) {
        int cap = V->cap_merges ? V->cap_merges * 2 : 1024;
        uint32_t *m = realloc(V->merges, (size_t)cap * 2 * sizeof(uint32_t));
        if (!m) return -1;
        V->merges = m;
        V->cap_merges = cap;
    }
    V->merges[2 * V->n_merges] = a;
    V->merges[2 * V->n_merges + 1] = b;
    V->n_merges++;
    return 0;
}

static void vocab_add_regex(Vocab *V, const char *re)
{
    buf_add(&V->pretok, re, strlen(re) + 1);
}

static void vocab_add_eos(Vocab *V, int id)
{
    if (id < 0 || id >= V->n_vocab || id == V->d.eos_id) return;
    for (int i = 0; i < V->n_eos; i++)
        if (V->eos[i] == (uint32_t)id) return;
    if (V->d.eos_id < 0) {
        V->d.eos_id = id;
        return;
    }
    if (V->n_eos < 8) V->eos[V->n_eos++] = (uint32_t)id;
}

/* Lays the pieces out in id order and builds the tokenizer; V is emptied. */
static Tokenizer *vocab_finish(Vocab *V, const char *path, char *err, size_t errlen)
{
    void *own[TOKENIZER_MAX_OWNED];
    int n_own = 0;
    size_t total = 0;
    int nv = V->n_vocab;
    for (int i = 0; i < nv; i++)
        if (V->len[i] != UINT32_MAX) total += V->len[i];
    uint32_t *off = malloc(((size_t)nv + 1) * sizeof(uint32_t));
    char *bytes = malloc(total + 1);
    uint32_t *eos = V->n_eos ? malloc((size_t)V->n_eos * sizeof(uint32_t)) : NULL;
    if (!off || !bytes || (V->n_eos && !eos) || V->bytes.oom || V->pretok.oom || V->chat.oom || total > UINT32_MAX) {
        free(off);
        free(bytes);
        free(eos);
        vocab_free(V);
        set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    uint32_t o = 0;
    for (int i = 0; i < nv; i++) {
        off[i] = o;
        if (V->len[i] != UINT32_MAX) {
            memcpy(bytes + o, V->bytes.p + V->at[i], V->len[i]);
            o += V->len[i];
        }
    }
    off[nv] = o;
    bytes[o] = '\0';
    if (eos) memcpy(eos, V->eos, (size_t)V->n_eos * sizeof(uint32_t));

    TokenizerData d = V->d;
    d.n_vocab = nv;
    d.piece_offset = off;
    d.piece_bytes = bytes;
    d.scores = V->scores;
    d.types = V->types;
    d.merges = V->merges;
    d.n_merges = V->n_merges;
    d.pretok = V->pretok.p;
    d.pretok_len = V->pretok.n;
    d.chat_template = V->chat.p;
    d.chat_template_len = V->chat.n;
    d.eos_ids = eos;
    d.n_eos = V->n_eos;
    d.strip = V->strip;
    d.n_strip = V->n_strip;
    own[n_own++] = off;
    own[n_own++] = bytes;
    own[n_own++] = V->scores;
    own[n_own++] = V->types;
    own[n_own++] = V->merges;
    own[n_own++] = V->pretok.p;
    own[n_own++] = V->chat.p;
    own[n_own++] = eos;
    own[n_own++] = V->strip;
    V->scores = NULL;
    V->types = NULL;
    V->merges = NULL;
    V->pretok.p = NULL;
    V->chat.p = NULL;
    V->strip = NULL;
    vocab_free(V);
    char why[256];
    Tokenizer *t = build(&d, own, n_own, why, sizeof(why));
    if (!t) set_err(err, errlen, "%s: %s", path, why);
    return t;
}

/* The id of a piece (as stored) while the vocabulary is being assembled:
   a temporary hash over the pieces set so far, normal tokens first. */
typedef struct {
    int32_t *slot;
    uint32_t mask;
} PieceMap;

static int piecemap_find(const PieceMap *M, const Vocab *V, const char *s, size_t n)
{
    uint32_t i = hash_bytes(s, n) & M->mask;
    for (;;) {
        int32_t id = M->slot[i];
        if (id < 0) return -1;
        if (V->len[id] == n && memcmp(V->bytes.p + V->at[id], s, n) == 0) return id;
        i = (i + 1) & M->mask;
    }
}

static int piecemap_build(PieceMap *M, const Vocab *V)
{
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)V->n_vocab) cap *= 2;
    M->slot = malloc(cap * sizeof(int32_t));
    if (!M->slot) return -1;
    memset(M->slot, 0xff, cap * sizeof(int32_t));
    M->mask = cap - 1;
    for (int pass = 0; pass < 2; pass++)
        for (int id = 0; id < V->n_vocab; id++) {
            if (V->len[id] == UINT32_MAX || V->len[id] == 0 || (V->types[id] == TOKEN_NORMAL) != (pass == 0)) continue;
            const char *s = V->bytes.p + V->at[id];
            if (piecemap_find(M, V, s, V->len[id]) >= 0) continue;
            uint32_t i = hash_bytes(s, V->len[id]) & M->mask;
            while (M->slot[i] >= 0) i = (i + 1) & M->mask;
            M->slot[i] = id;
        }
    return 0;
}

/* Adds the merge "left right" (spelled as in the file) by ids. Merges of
   unknown pieces are skipped, as they can never apply. */
static int vocab_merge_text(Vocab *V, const PieceMap *M, const char *a, size_t na, const char *b, size_t nb,
                            int spelling, Buf *scratch)
{
    scratch->n = 0;
    vocab_spell(scratch, a, na, spelling);
    size_t split = scratch->n;
    vocab_spell(scratch, b, nb, spelling);
    if (scratch->oom) return -1;
    int ia = piecemap_find(M, V, scratch->p, split);
    int ib = piecemap_find(M, V, scratch->p + split, scratch->n - split);
    if (ia < 0 || ib < 0) return 0;
    return vocab_add_merge(V, (uint32_t)ia, (uint32_t)ib);
}

/* Pre-tokenizer regexes. */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3                                                                                               \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
    "\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                              \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
    "\\s+(?!\\S)|\\s+"
#define RE_TEKKEN                                                                                                 \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?" \
    "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"      \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_BLOOM " ?[^(\\s|.,!?\xe2\x80\xa6\xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81\xe0\xa5\xa4\xdb\x94\xd8\x8c)]+"
#define RE_CJK "[\xe4\xb8\x80-\xe9\xbe\xa5\xe0\xa0\x80-\xe4\xb8\x80\xea\xb0\x80-\xed\x9f\xbf]+"

/* llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) and the regexes of the
   Hugging Face tokenizers they stand for. */
static const struct {
    const char *names; /* '|'-separated */
    int flags;         /* TOKENIZER_IGNORE_MERGES; add_bos in bit 8 */
    const char *regex[6];
} gguf_pretok[] = {
    {"default", 0, {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}},
    {"llama3|llama-v3|llama-bpe|falcon3", TOKENIZER_IGNORE_MERGES | 256, {RE_LLAMA3}},
    {"dbrx|smaug-bpe|chatglm-bpe", 0, {RE_LLAMA3}},
    {"deepseek-llm", 0,
     {"[\\r\\n]",
      "\\s?[A-Za-z\xc2\xb5\xc3\x80-\xc3\x96\xc3\x98-\xc3\xb6\xc3\xb8-\xc6\xba\xc6\xbc-\xc6\xbf\xc7\x84-\xca\x93\xca"
      "\x95-\xca\xaf\xcd\xb0-\xcd\xb3\xcd\xb6\xcd\xb7\xcd\xbb-\xcd\xbd\xcd\xbf\xce\x86\xce\x88-\xce\x8a\xce\x8c\xce"
      "\x8e-\xce\xa1\xce\xa3-\xcf\xb5\xcf\xb7-\xd2\x81\xd2\x8a-\xd4\xaf\xd4\xb1-\xd5\x96\xe1\x82\xa0-\xe1\x83\x85"
      "\xe1\x8e\xa0-\xe1\x8f\xb5\xe1\x8f\xb8-\xe1\x8f\xbd\xe1\xb2\x90-\xe1\xb2\xba\xe1\xb2\xbd-\xe1\xb2\xbf\xe1\xb4"
      "\x80-\xe1\xb4\xab\xe1\xb5\xab-\xe1\xb5\xb7\xe1\xb5\xb9-\xe1\xb6\x9a\xe1\xb8\x80-\xe1\xbc\x95\xe1\xbc\x98-"
      "\xe1\xbc\x9d\xe1\xbc\xa0-\xe1\xbd\x85\xe1\xbd\x88-\xe1\xbd\x8d\xe1\xbd\x90-\xe1\xbd\x97\xe1\xbd\x99\xe1\xbd"
      "\x9b\xe1\xbd\x9d\xe1\xbd\x9f-\xe1\xbd\xbd\xe1\xbe\x80-\xe1\xbe\xb4\xe1\xbe\xb6-\xe1\xbe\xbc\xe1\xbe\xbe\xe1"
      "\xbf\x82-\xe1\xbf\x84\xe1\xbf\x86-\xe1\xbf\x8c\xe1\xbf\x90-\xe1\xbf\x93\xe1\xbf\x96-\xe1\xbf\x9b\xe1\xbf\xa0"
      "-\xe1\xbf\xac\xe1\xbf\xb2-\xe1\xbf\xb4\xe1\xbf\xb6-\xe1\xbf\xbc\xe2\x84\x82\xe2\x84\x87\xe2\x84\x8a-\xe2\x84"
      "\x93\xe2\x84\x95\xe2\x84\x99-\xe2\x84\x9d\xe2\x84\xa4\xe2\x84\xa6\xe2\x84\xa8\xe2\x84\xaa-\xe2\x84\xad\xe2"
      "\x84\xaf-\xe2\x84\xb4\xe2\x84\xb9\xe2\x84\xbc-\xe2\x84\xbf\xe2\x85\x85-\xe2\x85\x89\xe2\x85\x8e\xe2\x86\x83"
      "\xe2\x86\x84\xe2\xb0\x80-\xe2\xb1\xbb\xe2\xb1\xbe-\xe2\xb3\xa4\xe2\xb3\xab-\xe2\xb3\xae\xe2\xb3\xb2\xe2\xb3"
      "\xb3\xea\x99\x80-\xea\x99\xad\xea\x9a\x80-\xea\x9a\x9b\xea\x9c\xa2-\xea\x9d\xaf\xea\x9d\xb1-\xea\x9e\x87\xea"
      "\x9e\x8b-\xea\x9e\x8e\xea\xad\xb0-\xea\xae\xbf\xef\xac\x80-\xef\xac\x86\xef\xac\x93-\xef\xac\x97\xef\xbc\xa1"
      "-\xef\xbc\xba\xef\xbd\x81-\xef\xbd\x9a\xf0\x90\x90\x80-\xf0\x90\x91\x8f\xf0\x90\x92\xb0-\xf0\x90\x93\x93\xf0"
      "\x90\x93\x98-\xf0\x90\x93\xbb\xf0\x90\xb2\x80-\xf0\x90\xb2\xb2\xf0\x90\xb3\x80-\xf0\x90\xb3\xb2\xf0\x91\xa2"
      "\xa0-\xf0\x91\xa3\x9f\xf0\x9e\xa4\x80-\xf0\x9e\xa5\x83]+",
      "\\s?[!-/:-~\xef\xbc\x81-\xef\xbc\x8f\xef\xbc\x9a-\xef\xbd\x9e\xe2\x80\x98-\xe2\x80\x9f\xe3\x80\x80-\xe3\x80\x82]+",
      "\\s+$", RE_CJK, "\\p{N}+"}},
    {"deepseek-v3", 0,
     {"\\p{N}{1,3}", "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
      "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
      "?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
    {"deepseek-coder", 0, {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK, "\\p{N}"}},
    {"falcon", 0, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}},
    {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b", 0, {"\\p{N}", RE_GPT2}},
    {"gpt-2|phi-2|jina-es|jina-de|gigachat|jina-v1-en|jina-v2-es|jina-v2-de|jina-v2-code|roberta-bpe|mpt|olmo|jais",
     0,
     {RE_GPT2}},
    {"qwen2|deepseek-r1-qwen|stablelm2|megrez", 0, {RE_QWEN2}},
    {"poro-chat|bloom|gpt3-finnish", 0, {RE_BLOOM}},
    {"viking", 0, {RE_BLOOM, "\\p{N}"}},
    {"tekken", TOKENIZER_IGNORE_MERGES | 256, {RE_TEKKEN}},
};

static int name_in_list(const char *name, const char *list)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        if (l == n && memcmp(p, name, n) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* GGUF: the tokenizer.* metadata, through gguf.h (the file's tensors are not
   touched). */

/* An integer key, kept at -1 when absent; another type is an error. */
static int gguf_tok_int(const Gguf *g, const char *key, int64_t *out, char *what, size_t whatlen)
{
    *out = -1;
    if (gguf_int(g, key, out) == -2) {
        snprintf(what, whatlen, "%s is not an integer", key);
        return -1;
    }
    return 0;
}

Tokenizer *tokenizer_from_gguf(const Gguf *g, const char *path, char *err, size_t errlen)
{
    char what[200] = "";
    int64_t bos, eos, eot, eom, unk, add_bos, add_space, extra_ws;
    const char *ints[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
                          "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.remove_extra_whitespaces"};
    int64_t *int_out[] = {&bos, &eos, &eot, &eom, &unk, &add_bos, &add_space, &extra_ws};
    for (size_t i = 0; i < N_OF(ints) && !*what; i++) gguf_tok_int(g, ints[i], int_out[i], what, sizeof what);
    const char *model = NULL, *pre = NULL, *chat = NULL;
    size_t model_len = 0, pre_len = 0, chat_len = 0;
    const char *strs[] = {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template"};
    const char **str_out[] = {&model, &pre, &chat};
    size_t *len_out[] = {&model_len, &pre_len, &chat_len};
    for (size_t i = 0; i < N_OF(strs) && !*what; i++)
        if (gguf_str(g, strs[i], str_out[i], len_out[i]) == -2) snprintf(what, sizeof what, "%s is not a string", strs[i]);
    const GgufKv *tokens = gguf_array(g, "tokenizer.ggml.tokens", GGUF_STRING);
    const GgufKv *merges = gguf_array(g, "tokenizer.ggml.merges", GGUF_STRING);
    const GgufKv *scores = gguf_array(g, "tokenizer.ggml.scores", GGUF_F32);
    const GgufKv *ttypes = gguf_array(g, "tokenizer.ggml.token_type", GGUF_I32);
    if (!ttypes) ttypes = gguf_array(g, "tokenizer.ggml.token_type", GGUF_U32);
    const char *arrays[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"};
    const GgufKv *array_of[] = {tokens, merges, scores, ttypes};
    for (size_t i = 0; i < N_OF(arrays) && !*what; i++)
        if (!array_of[i] && gguf_find(g, arrays[i]))
            snprintf(what, sizeof what, "%s is not an array of %s", arrays[i],
                     i < 2 ? "strings" : i == 2 ? "f32" : "i32");
    Vocab V;
    memset(&V, 0, sizeof(V));
    Tokenizer *t = NULL;
    int spm = 0, pre_index = -1;
    if (*what) goto done;
    if (!model) {
        snprintf(what, sizeof what, "no tokenizer.ggml.model key (no tokenizer in this GGUF)");
        goto done;
    }
    spm = model_len == 5 && !memcmp(model, "llama", 5);
    if (!spm && !(model_len == 4 && !memcmp(model, "gpt2", 4))) {
        const char *kind = model_len == 4 && !memcmp(model, "bert", 4) ? " (WordPiece)"
                           : model_len == 2 && !memcmp(model, "t5", 2) ? " (Unigram)" : "";
        snprintf(what, sizeof what, "tokenizer model '%.*s'%s is not supported (only 'llama' and 'gpt2')",
                 (int)(model_len > 60 ? 60 : model_len), model, kind);
        goto done;
    }
    if (!tokens || tokens->count == 0 || tokens->count > TOKENIZER_MAX_VOCAB) {
        snprintf(what, sizeof what, "missing or empty tokenizer.ggml.tokens");
        goto done;
    }
    if ((scores && scores->count != tokens->count) || (ttypes && ttypes->count != tokens->count)) {
        snprintf(what, sizeof what, "tokenizer.ggml.scores / token_type do not match the token count");
        goto done;
    }
    if (spm && !scores) {
        snprintf(what, sizeof what, "a 'llama' (SentencePiece) vocabulary needs tokenizer.ggml.scores");
        goto done;
    }
    if (!spm) {
        char name[100];
        snprintf(name, sizeof name, "%.*s", pre ? (int)(pre_len > 80 ? 80 : pre_len) : 7, pre ? pre : "default");
        for (size_t i = 0; i < N_OF(gguf_pretok) && pre_index < 0; i++)
            if (name_in_list(name, gguf_pretok[i].names)) pre_index = (int)i;
        if (pre_index < 0 || (pre && pre_len > 80)) {
            snprintf(what, sizeof what, "pre-tokenizer '%s' (tokenizer.ggml.pre) is not supported", name);
            goto done;
        }
    }

    int nv = (int)tokens->count;
    if (vocab_init(&V, nv, spm) < 0) {
        snprintf(what, sizeof what, "out of memory");
        goto done;
    }
    const uint8_t *at = tokens->value;
    for (int i = 0; i < nv; i++) {
        int type = ttypes ? (int)gguf_array_int(ttypes, (uint64_t)i) : TOKEN_NORMAL;
        if (type == 0) type = TOKEN_NORMAL; /* undefined */
        if (type < TOKEN_NORMAL || type > TOKEN_BYTE) {
            snprintf(what, sizeof what, "token %d has unknown type %d", i, type);
            goto done;
        }
        const char *piece;
        size_t piece_len;
        gguf_next_str(&at, &piece, &piece_len);
        int spelling = spm ? 2 : type == TOKEN_NORMAL ? 1 : 0;
        vocab_set(&V, i, piece, piece_len, spelling, type);
        if (spm) V.scores[i] = (float)gguf_array_float(scores, (uint64_t)i);
    }
    V.d.kind = spm ? TOKENIZER_SPM : TOKENIZER_BPE;
    V.d.bos_id = bos >= 0 && bos < nv ? (int)bos : -1;
    V.d.eos_id = eos >= 0 && eos < nv ? (int)eos : -1;
    vocab_add_eos(&V, eot >= 0 && eot < nv ? (int)eot : -1);
    vocab_add_eos(&V, eom >= 0 && eom < nv ? (int)eom : -1);
    if (unk >= 0 && unk < nv && V.types[unk] == TOKEN_NORMAL) V.types[unk] = TOKEN_UNKNOWN;
    if (spm) {
        V.d.add_bos = add_bos >= 0 ? (int)add_bos : 1;
        V.d.add_prefix_space = add_space >= 0 ? (int)add_space : 1;
        if (extra_ws > 0) V.d.flags |= TOKENIZER_REMOVE_EXTRA_WS;
    } else {
        V.d.flags |= TOKENIZER_BYTE_LEVEL | (gguf_pretok[pre_index].flags & TOKENIZER_IGNORE_MERGES);
        V.d.add_bos = add_bos >= 0 ? (int)add_bos : (gguf_pretok[pre_index].flags & 256) != 0;
        for (int i = 0; i < 6 && gguf_pretok[pre_index].regex[i]; i++)
            vocab_add_regex(&V, gguf_pretok[pre_index].regex[i]);
        PieceMap M;
        if (piecemap_build(&M, &V) < 0) {
            snprintf(what, sizeof what, "out of memory");
            goto done;
        }
        Buf scratch = {0};
        const uint8_t *mat = merges ? merges->value : NULL;
        for (uint64_t i = 0; merges && i < merges->count && !*what; i++) {
            const char *m;
            size_t n;
            gguf_next_str(&mat, &m, &n);
            const char *sp = n > 1 ? memchr(m + 1, ' ', n - 1) : NULL;
            if (!sp) snprintf(what, sizeof what, "a merge is not two pieces separated by a space");
            else if (vocab_merge_text(&V, &M, m, (size_t)(sp - m), sp + 1, n - (size_t)(sp - m) - 1, 1, &scratch) < 0)
                snprintf(what, sizeof what, "out of memory");
        }
        free(scratch.p);
        free(M.slot);
        if (*what) goto done;
    }
    if (chat) buf_add(&V.chat, chat, chat_len);
    t = vocab_finish(&V, path, err, errlen);

done:
    if (*what) set_err(err, errlen, "%s: %s", path, what);
    vocab_free(&V);
    return t;
}

Tokenizer *tokenizer_load_gguf(const char *path, char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (!path) {
        set_err(err, errlen, "tokenizer: no path given");
        return NULL;
    }
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: cannot open: %s", path, fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0) close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    void *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED) {
        set_err(err, errlen, size ? "%s: cannot map: %s" : "%s: empty file", path, strerror(errno));
        return NULL;
    }
    Gguf g;
    char why[256];
    Tokenizer *t = NULL;
    if (gguf_parse(&g, map, size, why, sizeof why)) set_err(err, errlen, "%s: %s", path, why);
    else t = tokenizer_from_gguf(&g, path, err, errlen);
    gguf_free(&g);
    munmap(map, size);
    return t;
}

/* ------------------------------------------------------------------------ */
/* SentencePiece tokenizer.model: a protobuf ModelProto, read with a minimal
   wire-format reader. Fields used: pieces (1: piece 1, score 2, type 3),
   trainer_spec (2: model_type 3, unk/bos/eos ids 40-42) and normalizer_spec
   (3: name 1, precompiled_charsmap 2, add_dummy_prefix 3,
   remove_extra_whitespaces 4). */

typedef struct {
    const unsigned char *p, *end;
    int bad;
} Pb;

static uint64_t pb_varint(Pb *r)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) break;
        unsigned char b = *r->p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) return v;
    }
    r->bad = 1;
    return 0;
}

/* Reads the next field: returns its number (0 at the end or on error), its
   wire type, and for length-delimited fields the bytes in *sub. */
static int pb_field(Pb *r, int *wire, Pb *sub, uint64_t *value)
{
    if (r->bad || r->p >= r->end) return 0;
    uint64_t key = pb_varint(r);
    *wire = (int)(key & 7);
    *value = 0;
    switch (*wire) {
    case 0: *value = pb_varint(r); break;
    case 1:
        if (r->end - r->p < 8) r->bad = 1;
        else r->p += 8;
        break;
    case 5:
        if (r->end - r->p < 4) r->bad = 1;
        else {
            *value = rd_u32(r->p);
            r->p += 4;
        }
        break;
    case 2: {
        uint64_t n = pb_varint(r);
        if (r->bad || n > (uint64_t)(r->end - r->p)) {
            r->bad = 1;
            break;
        }
        sub->p = r->p;
        sub->end = r->p + n;
        sub->bad = 0;
        r->p += n;
        break;
    }
    default: r->bad = 1;
    }
    if (r->bad || key >> 3 == 0 || key >> 3 > INT_MAX) {
        r->bad = 1;
        return 0;
    }
    return (int)(key >> 3);
}

/* Builds from a tokenizer.model held in memory. */
static Tokenizer *spm_from_memory(const unsigned char *data, size_t size, const char *path, char *err, size_t errlen)
{
    Pb r = {data, data + size, 0}, sub;
    int wire, n_pieces = 0, model_type = 1 /* UNIGRAM, the proto default */;
    int add_dummy = 1, extra_ws = 1, bos = 1, eos = 2, has_charsmap = 0;
    char norm_name[64] = "";
    uint64_t v;
    int f;
    /* pass 1: count pieces, read the specs */
    while ((f = pb_field(&r, &wire, &sub, &v)) != 0) {
        if (f == 1 && wire == 2) n_pieces++;
        else if ((f == 2 || f == 3) && wire == 2) {
            Pb s = sub, x;
            int g, w;
            uint64_t u;
            while ((g = pb_field(&s, &w, &x, &u)) != 0) {
                if (f == 2 && g == 3 && w == 0) model_type = (int)u;
                if (f == 2 && g == 41 && w == 0) bos = (int)(int32_t)u;
                if (f == 2 && g == 42 && w == 0) eos = (int)(int32_t)u;
                if (f == 3 && g == 1 && w == 2)
                    snprintf(norm_name, sizeof(norm_name), "%.*s", (int)(x.end - x.p), (const char *)x.p);
                if (f == 3 && g == 2 && w == 2 && x.end > x.p) has_charsmap = 1;
                if (f == 3 && g == 3 && w == 0) add_dummy = u != 0;
                if (f == 3 && g == 4 && w == 0) extra_ws = u != 0;
            }
            if (s.bad) r.bad = 1;
        }
    }
    if (r.bad) {
        set_err(err, errlen, "%s: not a SentencePiece model (bad protobuf)", path);
        return NULL;
    }
    if (n_pieces == 0 || n_pieces > TOKENIZER_MAX_VOCAB) {
        set_err(err, errlen, "%s: no pieces (not a SentencePiece model?)", path);
        return NULL;
    }
    if (model_type != 2) {
        static const char *types[] = {"?", "Unigram", "BPE", "word", "char"};
        set_err(err, errlen, "%s: SentencePiece model type %s is not supported (only BPE)", path,
                model_type >= 0 && model_type <= 4 ? types[model_type] : "unknown");
        return NULL;
    }
    if (has_charsmap && strcmp(norm_name, "identity") != 0) {
        set_err(err, errlen, "%s: SentencePiece normalization '%s' is not supported (only identity)", path,
                norm_name[0] ? norm_name : "custom");
        return NULL;
    }
    Vocab V;
    if (vocab_init(&V, n_pieces, 1) < 0) {
        vocab_free(&V);
        set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    r = (Pb){data, data + size, 0};
    int i = 0;
    while ((f = pb_field(&r, &wire, &sub, &v)) != 0) {
        if (f != 1 || wire != 2) continue;
        Pb s = sub, x = {0};
        int g, w;
        uint64_t u;
        const unsigned char *piece = NULL;
        size_t plen = 0;
        float score = 0;
        int type = TOKEN_NORMAL;
        while ((g = pb_field(&s, &w, &x, &u)) != 0) {
            if (g == 1 && w == 2) piece = x.p, plen = (size_t)(x.end - x.p);
            if (g == 2 && w == 5) {
                uint32_t bits = (uint32_t)u;
                memcpy(&score, &bits, 4);
            }
            if (g == 3 && w == 0) type = (int)u;
        }
        if (s.bad || !piece || type < TOKEN_NORMAL || type > TOKEN_BYTE) {
            vocab_free(&V);
            set_err(err, errlen, "%s: piece %d is malformed", path, i);
            return NULL;
        }
        vocab_set(&V, i, (const char *)piece, plen, 2, type);
        V.scores[i] = score;
        i++;
    }
    V.d.kind = TOKENIZER_SPM;
    V.d.bos_id = bos >= 0 && bos < n_pieces ? bos : -1;
    V.d.eos_id = eos >= 0 && eos < n_pieces ? eos : -1;
    V.d.add_bos = 1;
    V.d.add_prefix_space = add_dummy;
    if (extra_ws) V.d.flags |= TOKENIZER_REMOVE_EXTRA_WS;
    return vocab_finish(&V, path, err, errlen);
}

Tokenizer *tokenizer_load_spm(const char *path, char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (!path) {
        set_err(err, errlen, "tokenizer: no path given");
        return NULL;
    }
    size_t size;
    unsigned char *buf = read_file(path, &size, err, errlen);
    if (!buf) return NULL;
    Tokenizer *t = spm_from_memory(buf, size, path, err, errlen);
    free(buf);
    return t;
}

/* ------------------------------------------------------------------------ */
/* Hugging Face tokenizer.json (+ tokenizer_config.json, generation_config.json) */

typedef struct {
    int byte_level, metaspace, add_prefix_space, flags;
    int n_splitters; /* pre-tokenizers that split, so far */
    Vocab *V;
    char *err;
    size_t errlen;
    const char *path;
} HfPipe;

static int hf_unsupported(HfPipe *H, const char *what, const char *name)
{
    set_err(H->err, H->errlen, "%s: %s '%.60s' is not supported", H->path, what, name ? name : "?");
    return -1;
}

/* Appends a regex matching the literal s. */
static void regex_quote(Buf *b, const char *s)
{
    for (; *s; s++) {
        if (strchr("\\^$.|?*+()[]{}", *s)) buf_addc(b, '\\');
        buf_addc(b, *s);
    }
    buf_addc(b, '\0');
}

static int hf_normalizer(HfPipe *H, const JsonValue *n)
{
    if (!n || n->type == JSON_NULL) return 0;
    const char *type = json_string(json_get(n, "type"));
    if (!type) return hf_unsupported(H, "normalizer", "(no type)");
    if (!strcmp(type, "Sequence")) {
        const JsonValue *list = json_get(n, "normalizers");
        if (!list || list->type != JSON_ARRAY) return hf_unsupported(H, "normalizer", "Sequence without a list");
        for (size_t i = 0; i < list->len; i++)
            if (hf_normalizer(H, &list->items[i]) < 0) return -1;
        return 0;
    }
    if (!strcmp(type, "NFC")) {
        H->flags |= TOKENIZER_NFC;
        return 0;
    }
    if (!strcmp(type, "Prepend")) {
        const char *p = json_string(json_get(n, "prepend"));
        if (!p || strcmp(p, "\xe2\x96\x81")) return hf_unsupported(H, "normalizer Prepend of", p);
        H->add_prefix_space = 1;
        return 0;
    }
    if (!strcmp(type, "Replace")) {
        const char *from = json_string(json_get(json_get(n, "pattern"), "String"));
        const char *to = json_string(json_get(n, "content"));
        if (!from || !to || strcmp(from, " ") || strcmp(to, "\xe2\x96\x81"))
            return hf_unsupported(H, "normalizer Replace (only \" \" -> U+2581)", to);
        H->metaspace = 1;
        return 0;
    }
    return hf_unsupported(H, "normalizer", type);
}

static int hf_pretokenizer(HfPipe *H, const JsonValue *p)
{
    if (!p || p->type == JSON_NULL) return 0;
    const char *type = json_string(json_get(p, "type"));
    if (!type) return hf_unsupported(H, "pre-tokenizer", "(no type)");
    int b;
    if (!strcmp(type, "Sequence")) {
        const JsonValue *list = json_get(p, "pretokenizers");
        if (!list || list->type != JSON_ARRAY) return hf_unsupported(H, "pre-tokenizer", "Sequence without a list");
        for (size_t i = 0; i < list->len; i++)
            if (hf_pretokenizer(H, &list->items[i]) < 0) return -1;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        H->byte_level = 1;
        if (json_bool(json_get(p, "add_prefix_space"), &b) == 0 && b) {
            if (H->n_splitters > 0) return hf_unsupported(H, "pre-tokenizer", "ByteLevel add_prefix_space after a split");
            H->add_prefix_space = 1;
        }
        int use_regex = 1;
        json_bool(json_get(p, "use_regex"), &use_regex);
        if (use_regex) {
            vocab_add_regex(H->V, RE_GPT2);
            H->n_splitters++;
        }
        return 0;
    }
    if (!strcmp(type, "Split")) {
        const JsonValue *pat = json_get(p, "pattern");
        const char *re = json_string(json_get(pat, "Regex")), *lit = json_string(json_get(pat, "String"));
        const char *behavior = json_string(json_get(p, "behavior"));
        int invert = 0;
        json_bool(json_get(p, "invert"), &invert);
        if ((!re && !lit) || invert) return hf_unsupported(H, "pre-tokenizer Split", invert ? "invert" : "pattern");
        if (!behavior || strcmp(behavior, "Isolated")) return hf_unsupported(H, "Split behavior", behavior);
        if (re) vocab_add_regex(H->V, re);
        else regex_quote(&H->V->pretok, lit);
        H->n_splitters++;
        return 0;
    }
    if (!strcmp(type, "Digits")) {
        int individual = 0;
        json_bool(json_get(p, "individual_digits"), &individual);
        vocab_add_regex(H->V, individual ? "\\p{N}" : "\\p{N}+");
        H->n_splitters++;
        return 0;
    }
    if (!strcmp(type, "Metaspace")) {
        const char *rep = json_string(json_get(p, "replacement"));
        if (rep && strcmp(rep, "\xe2\x96\x81")) return hf_unsupported(H, "Metaspace replacement", rep);
        H->metaspace = 1;
        const char *scheme = json_string(json_get(p, "prepend_scheme"));
        if (scheme) {
            if (!strcmp(scheme, "always")) H->add_prefix_space = 1;
            else if (!strcmp(scheme, "first")) {
                H->add_prefix_space = 1;
                H->flags |= TOKENIZER_PREFIX_FIRST;
            } else if (strcmp(scheme, "never")) return hf_unsupported(H, "Metaspace prepend_scheme", scheme);
        } else if (json_bool(json_get(p, "add_prefix_space"), &b) == 0 && b)
            H->add_prefix_space = 1;
        int split = 1;
        json_bool(json_get(p, "split"), &split);
        if (split) {
            /* each U+2581 (stored as ' ') starts a new piece */
            vocab_add_regex(H->V, "[^ ]+| [^ ]*");
            H->n_splitters++;
        }
        return 0;
    }
    return hf_unsupported(H, "pre-tokenizer", type);
}

/* The text of a tokenizer_config.json token entry: "..." or {"content": "..."}. */
static const char *hf_token_text(const JsonValue *v)
{
    if (!v) return NULL;
    if (v->type == JSON_STRING) return v->str;
    return json_string(json_get(v, "content"));
}

static int vocab_find(const Vocab *V, const char *s)
{
    size_t n = strlen(s);
    for (int i = 0; i < V->n_vocab; i++)
        if (V->len[i] == n && memcmp(V->bytes.p + V->at[i], s, n) == 0) return i;
    return -1;
}

/* Reads dir/name as JSON into doc; returns 1 if read, 0 if absent, -1 on error. */
static int hf_read_json(const char *dir, const char *name, JsonDoc *doc, char *path, size_t path_cap, char *err,
                        size_t errlen)
{
    size_t dir_len = strlen(dir);
    snprintf(path, path_cap, "%s%s%s", dir, dir_len && dir[dir_len - 1] == '/' ? "" : "/", name); /* no "//" */
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    size_t size;
    unsigned char *text = read_file(path, &size, err, errlen);
    if (!text) return -1;
    char why[200];
    int rc = json_parse(doc, (const char *)text, size, why, sizeof(why));
    free(text);
    if (rc < 0) {
        set_err(err, errlen, "%s: %s", path, why);
        return -1;
    }
    return 1;
}

/* Finds the BOS a TemplateProcessing post-processor puts first, or -1. */
static int hf_post_bos(const JsonValue *pp)
{
    if (!pp) return -1;
    const char *type = json_string(json_get(pp, "type"));
    if (!type) return -1;
    if (!strcmp(type, "Sequence")) {
        const JsonValue *list = json_get(pp, "processors");
        for (size_t i = 0; list && list->type == JSON_ARRAY && i < list->len; i++) {
            int id = hf_post_bos(&list->items[i]);
            if (id >= 0) return id;
        }
        return -1;
    }
    if (strcmp(type, "TemplateProcessing")) return -1;
    const JsonValue *single = json_get(pp, "single");
    if (!single || single->type != JSON_ARRAY || single->len == 0) return -1;
    const char *name = json_string(json_get(json_get(&single->items[0], "SpecialToken"), "id"));
    if (!name) return -1;
    const JsonValue *ids = json_get(json_get(json_get(pp, "special_tokens"), name), "ids");
    int id;
    if (!ids || ids->type != JSON_ARRAY || ids->len != 1 || json_int(&ids->items[0], &id) < 0) return -1;
    return id;
}

Tokenizer *tokenizer_load_hf(const char *dir, char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (!dir) {
        set_err(err, errlen, "tokenizer: no folder given");
        return NULL;
    }
    char path[4096], cpath[4096];
    JsonDoc doc = {0}, cfg = {0}, gen = {0};
    Vocab V;
    memset(&V, 0, sizeof(V));
    Tokenizer *t = NULL;
    int rc = hf_read_json(dir, "tokenizer.json", &doc, path, sizeof(path), err, errlen);
    if (rc < 0) return NULL;
    if (rc == 0) {
        snprintf(path, sizeof(path), "%s/tokenizer.model", dir);
        FILE *f = fopen(path, "rb");
        if (!f) {
            set_err(err, errlen, "%s: no tokenizer.json or tokenizer.model", dir);
            return NULL;
        }
        fclose(f);
        return tokenizer_load_spm(path, err, errlen);
    }
    const JsonValue *root = &doc.root, *model = json_get(root, "model");
    const char *mtype = json_string(json_get(model, "type"));
    const JsonValue *vocab = json_get(model, "vocab"), *merges = json_get(model, "merges");
    if (!model || model->type != JSON_OBJECT) {
        set_err(err, errlen, "%s: no \"model\" object", path);
        goto done;
    }
    if (mtype ? strcmp(mtype, "BPE") != 0 : !merges) {
        set_err(err, errlen, "%s: model type '%.40s' is not supported (only BPE)", path, mtype ? mtype : "?");
        goto done;
    }
    if (!vocab || vocab->type != JSON_OBJECT || !merges || merges->type != JSON_ARRAY) {
        set_err(err, errlen, "%s: BPE model without a vocab object and a merges list", path);
        goto done;
    }
    const char *s;
    if (((s = json_string(json_get(model, "continuing_subword_prefix"))) && *s) ||
        ((s = json_string(json_get(model, "end_of_word_suffix"))) && *s)) {
        set_err(err, errlen, "%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported", path);
        goto done;
    }
    double dropout;
    if (json_double(json_get(model, "dropout"), &dropout) == 0 && dropout > 0) {
        set_err(err, errlen, "%s: BPE dropout is not supported", path);
        goto done;
    }
    const JsonValue *added = json_get(root, "added_tokens");
    /* Every id is one of the file's entries, so there are no more ids than
       entries: a larger id would size the arrays by a number the file merely
       states (one entry could ask for gigabytes) and leave holes in them. */
    size_t n_entries = vocab->len + (added && added->type == JSON_ARRAY ? added->len : 0);
    if (n_entries > TOKENIZER_MAX_VOCAB) {
        set_err(err, errlen, "%s: %zu vocab and added-token entries, more than %d", path, n_entries, TOKENIZER_MAX_VOCAB);
        goto done;
    }
    int nv = 0, id;
    for (size_t i = 0; i < vocab->len; i++) {
        if (json_int(&vocab->items[i], &id) < 0 || id < 0) {
            set_err(err, errlen, "%s: vocab entry %zu has a bad id", path, i);
            goto done;
        }
        if ((size_t)id >= n_entries) {
            set_err(err, errlen, "%s: vocab entry %zu has id %d, not below %zu, the number of vocab and added-token entries",
                    path, i, id, n_entries);
            goto done;
        }
        if (id >= nv) nv = id + 1;
    }
    for (size_t i = 0; added && added->type == JSON_ARRAY && i < added->len; i++) {
        if (json_int(json_get(&added->items[i], "id"), &id) < 0 || id < 0 ||
            !json_string(json_get(&added->items[i], "content"))) {
            set_err(err, errlen, "%s: added token %zu has a bad id or content", path, i);
            goto done;
        }
        if ((size_t)id >= n_entries) {
            set_err(err, errlen, "%s: added token %zu has id %d, not below %zu, the number of vocab and added-token entries",
                    path, i, id, n_entries);
            goto done;
        }
        if (id >= nv) nv = id + 1;
    }
    if (nv == 0) {
        set_err(err, errlen, "%s: empty vocabulary", path);
        goto done;
    }
    if (vocab_init(&V, nv, 0) < 0) {
        set_err(err, errlen, "%s: out of memory", path);
        goto done;
    }
    HfPipe H = {0};
    H.V = &V;
    H.err = err;
    H.errlen = errlen;
    H.path = path;
    if (hf_normalizer(&H, json_get(root, "normalizer")) < 0 || hf_pretokenizer(&H, json_get(root, "pre_tokenizer")) < 0)
        goto done;
    if (H.byte_level && H.metaspace) {
        set_err(err, errlen, "%s: both ByteLevel and U+2581 spaces: not supported", path);
        goto done;
    }
    int spelling = H.byte_level ? 1 : H.metaspace ? 2 : 0, byte_fallback = 0, b;
    json_bool(json_get(model, "byte_fallback"), &byte_fallback);
    for (size_t i = 0; i < vocab->len; i++) {
        const JsonValue *e = &vocab->items[i];
        json_int(e, &id);
        int type = byte_fallback && parse_byte_piece(e->key, e->key_len) >= 0 ? TOKEN_BYTE : TOKEN_NORMAL;
        vocab_set(&V, id, e->key, e->key_len, type == TOKEN_BYTE ? 0 : spelling, type);
    }
    const char *unk = json_string(json_get(model, "unk_token"));
    for (size_t i = 0; added && added->type == JSON_ARRAY && i < added->len; i++) {
        const JsonValue *a = &added->items[i];
        const JsonValue *content = json_get(a, "content");
        int special = 0, lstrip = 0, rstrip = 0, single = 0;
        json_int(json_get(a, "id"), &id);
        json_bool(json_get(a, "special"), &special);
        json_bool(json_get(a, "lstrip"), &lstrip);
        json_bool(json_get(a, "rstrip"), &rstrip);
        json_bool(json_get(a, "single_word"), &single);
        if (single) {
            set_err(err, errlen, "%s: added token \"%.40s\" has single_word, which is not supported", path,
                    content->str);
            goto done;
        }
        vocab_set(&V, id, content->str, content->len, 0, special ? TOKEN_CONTROL : TOKEN_USER_DEFINED);
        if (lstrip || rstrip) {
            uint32_t *ns = realloc(V.strip, (size_t)(V.n_strip + 1) * 2 * sizeof(uint32_t));
            if (!ns) {
                set_err(err, errlen, "%s: out of memory", path);
                goto done;
            }
            V.strip = ns;
            V.strip[2 * V.n_strip] = (uint32_t)id;
            V.strip[2 * V.n_strip + 1] = (lstrip ? TOKENIZER_LSTRIP : 0) | (rstrip ? TOKENIZER_RSTRIP : 0);
            V.n_strip++;
        }
    }
    if (unk) {
        /* the unknown token keeps its spelling, whatever the vocabulary's */
        for (size_t i = 0; i < vocab->len; i++)
            if (!strcmp(vocab->items[i].key, unk)) {
                json_int(&vocab->items[i], &id);
                V.types[id] = TOKEN_UNKNOWN;
            }
    }
    /* merges: "a b" strings or [a, b] pairs */
    PieceMap M;
    if (piecemap_build(&M, &V) < 0) {
        set_err(err, errlen, "%s: out of memory", path);
        goto done;
    }
    Buf scratch = {0};
    for (size_t i = 0; i < merges->len; i++) {
        const JsonValue *m = &merges->items[i];
        const char *a = NULL, *bb = NULL;
        size_t na = 0, nb = 0;
        if (m->type == JSON_STRING) {
            const char *sp = m->len > 1 ? memchr(m->str + 1, ' ', m->len - 1) : NULL;
            if (sp) a = m->str, na = (size_t)(sp - m->str), bb = sp + 1, nb = m->len - na - 1;
        } else if (m->type == JSON_ARRAY && m->len == 2 && m->items[0].type == JSON_STRING &&
                   m->items[1].type == JSON_STRING) {
            a = m->items[0].str, na = m->items[0].len, bb = m->items[1].str, nb = m->items[1].len;
        }
        if (!a) {
            set_err(err, errlen, "%s: merge %zu is not two pieces", path, i);
            free(scratch.p);
            free(M.slot);
            goto done;
        }
        if (vocab_merge_text(&V, &M, a, na, bb, nb, spelling, &scratch) < 0) {
            set_err(err, errlen, "%s: out of memory", path);
            free(scratch.p);
            free(M.slot);
            goto done;
        }
    }
    free(scratch.p);
    free(M.slot);

    V.d.kind = TOKENIZER_BPE;
    V.d.flags = H.flags | (H.byte_level ? TOKENIZER_BYTE_LEVEL : 0);
    if (json_bool(json_get(model, "ignore_merges"), &b) == 0 && b) V.d.flags |= TOKENIZER_IGNORE_MERGES;
    if (json_bool(json_get(model, "fuse_unk"), &b) == 0 && b) V.d.flags |= TOKENIZER_FUSE_UNK;
    V.d.add_prefix_space = H.add_prefix_space;
    V.d.bos_id = V.d.eos_id = -1;
    V.d.bos_id = hf_post_bos(json_get(root, "post_processor"));
    V.d.add_bos = V.d.bos_id >= 0;
    if (V.d.bos_id >= nv) V.d.bos_id = -1, V.d.add_bos = 0;

    /* tokenizer_config.json: BOS / EOS by text, add_bos_token, chat template */
    rc = hf_read_json(dir, "tokenizer_config.json", &cfg, cpath, sizeof(cpath), err, errlen);
    if (rc < 0) goto done;
    if (rc > 0) {
        const char *bt = hf_token_text(json_get(&cfg.root, "bos_token"));
        const char *et = hf_token_text(json_get(&cfg.root, "eos_token"));
        if (bt && (id = vocab_find(&V, bt)) >= 0) V.d.bos_id = id;
        if (et && (id = vocab_find(&V, et)) >= 0) V.d.eos_id = id;
        if (json_bool(json_get(&cfg.root, "add_bos_token"), &b) == 0) V.d.add_bos = b;
        const JsonValue *ct = json_get(&cfg.root, "chat_template");
        if (ct && ct->type == JSON_STRING) buf_add(&V.chat, ct->str, ct->len);
        else if (ct && ct->type == JSON_ARRAY) { /* named templates: "default", else the first */
            for (size_t i = 0; i < ct->len; i++) {
                const char *name = json_string(json_get(&ct->items[i], "name"));
                const JsonValue *tpl = json_get(&ct->items[i], "template");
                if (tpl && tpl->type == JSON_STRING && (V.chat.n == 0 || (name && !strcmp(name, "default")))) {
                    V.chat.n = 0;
                    buf_add(&V.chat, tpl->str, tpl->len);
                }
            }
        }
    }
    if (V.chat.n == 0) { /* newer folders keep it in its own file */
        snprintf(cpath, sizeof(cpath), "%s/chat_template.jinja", dir);
        FILE *f = fopen(cpath, "rb");
        if (f) {
            fclose(f);
            size_t size;
            unsigned char *text = read_file(cpath, &size, err, errlen);
            if (!text) goto done;
            buf_add(&V.chat, text, size);
            free(text);
        }
    }
    /* generation_config.json: eos_token_id, one or a list */
    rc = hf_read_json(dir, "generation_config.json", &gen, cpath, sizeof(cpath), err, errlen);
    if (rc < 0) goto done;
    if (rc > 0) {
        const JsonValue *e = json_get(&gen.root, "eos_token_id");
        if (e && e->type == JSON_ARRAY) {
            for (size_t i = 0; i < e->len; i++)
                if (json_int(&e->items[i], &id) == 0) vocab_add_eos(&V, id);
        } else if (json_int(e, &id) == 0)
            vocab_add_eos(&V, id);
        if (json_int(json_get(&gen.root, "bos_token_id"), &id) == 0 && id >= 0 && id < nv && V.d.bos_id < 0)
            V.d.bos_id = id;
    }
    if (V.d.add_bos && V.d.bos_id < 0) V.d.add_bos = 0;
    t = vocab_finish(&V, path, err, errlen);

done:
    vocab_free(&V);
    json_free(&doc);
    json_free(&cfg);
    json_free(&gen);
    return t;
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
    float score; /* SPM: the merged piece's score; BPE: minus the merge's rank */
    int left, right;
    uint32_t len; /* len of left + len of right when the pair was made */
    int id;       /* the merged piece */
} Candidate;

typedef struct {
    Candidate *v;
    size_t n, cap;
} Agenda;

/* Heap order: higher score first; on a tie the leftmost pair, which is
   SentencePiece's and Hugging Face's rule (a symbol keeps the index of its
   first character, so indices follow text order). */
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

/* One encode call's output and scratch. */
typedef struct {
    const Tokenizer *t;
    int *ids;
    int max_ids, n;
    int fail; /* out of room or memory */
    Symbol *sym;
    size_t sym_cap;
    Agenda q;
    RxVM vm;
    Buf norm, tmp;
} Enc;

static void emit(Enc *E, int id)
{
    if (E->fail) return;
    if ((E->t->data.flags & TOKENIZER_FUSE_UNK) && id == E->t->unk_id && E->n > 0 && E->ids[E->n - 1] == id) return;
    if (E->n >= E->max_ids) {
        E->fail = 1;
        return;
    }
    E->ids[E->n++] = id;
}

static int reserve_symbols(Enc *E, size_t n)
{
    if (n <= E->sym_cap) return 0;
    Symbol *s = realloc(E->sym, n * sizeof(*s));
    if (!s) return -1;
    E->sym = s;
    E->sym_cap = n;
    return 0;
}

/* Queues the pair (a, b) if it can merge. */
static int try_pair(Enc *E, const char *text, int a, int b)
{
    const Tokenizer *t = E->t;
    const Symbol *sym = E->sym;
    if (a < 0 || b < 0 || sym[a].frozen || sym[b].frozen) return 0;
    uint32_t len = sym[a].len + sym[b].len;
    Candidate c = {0, a, b, len, -1};
    if (t->data.kind == TOKENIZER_SPM) {
        c.id = lookup(t, text + sym[a].start, len);
        if (c.id < 0) return 0;
        c.score = t->data.scores[c.id];
    } else {
        if (sym[a].id < 0 || sym[b].id < 0) return 0;
        int rank = merge_find(t, sym[a].id, sym[b].id, &c.id);
        if (rank < 0) return 0;
        c.score = -(float)rank; /* ranks stay below 2^24, exact in a float */
    }
    return agenda_push(&E->q, c);
}

/* Merges the n_sym symbols over text until no pair applies, then emits. */
static void merge_and_emit(Enc *E, const char *text, int n_sym)
{
    const Tokenizer *t = E->t;
    Symbol *sym = E->sym;
    E->q.n = 0;
    for (int i = 0; i + 1 < n_sym; i++)
        if (try_pair(E, text, i, i + 1) < 0) goto oom;

    while (E->q.n > 0) {
        Candidate c = agenda_pop(&E->q);
        Symbol *l = &sym[c.left], *r = &sym[c.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != c.len) continue; /* stale */

        /* The left symbol absorbs the right one, which leaves the list. */
        l->len = c.len;
        l->id = c.id;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = c.left;

        if (try_pair(E, text, l->prev, c.left) < 0) goto oom;
        if (try_pair(E, text, c.left, l->next) < 0) goto oom;
    }

    for (int i = 0; i >= 0; i = sym[i].next) {
        const Symbol *s = &sym[i];
        if (s->id >= 0) {
            emit(E, s->id);
            continue;
        }
        /* Byte fallback; a character the vocabulary cannot spell at all
           becomes one <unk> (or vanishes if there is no <unk> either). */
        const unsigned char *p = (const unsigned char *)text + s->start;
        int all_bytes = 1;
        for (uint32_t k = 0; k < s->len; k++)
            if (t->byte_id[p[k]] < 0) all_bytes = 0;
        if (all_bytes) {
            for (uint32_t k = 0; k < s->len; k++) emit(E, t->byte_id[p[k]]);
        } else if (t->unk_id >= 0) {
            emit(E, t->unk_id);
        }
    }
    return;
oom:
    E->fail = 1;
}

/* SentencePiece-style BPE over buf[0..n) (the dummy prefix already there). */
static void spm_encode(Enc *E, const char *buf, size_t n)
{
    const Tokenizer *t = E->t;
    if (n == 0) return;
    if (reserve_symbols(E, n) < 0) {
        E->fail = 1;
        return;
    }
    Symbol *sym = E->sym;
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
    merge_and_emit(E, buf, n_sym);
}

/* Rank BPE over one pre-token. */
static void bpe_word(Enc *E, const char *s, size_t n)
{
    const Tokenizer *t = E->t;
    if (n == 0 || E->fail) return;
    if (t->data.flags & TOKENIZER_IGNORE_MERGES) {
        int id = lookup(t, s, n);
        if (id >= 0) {
            emit(E, id);
            return;
        }
    }
    if (reserve_symbols(E, n) < 0) {
        E->fail = 1;
        return;
    }
    int byte_level = t->data.flags & TOKENIZER_BYTE_LEVEL;
    int n_sym = 0;
    for (size_t pos = 0; pos < n;) {
        Symbol *y = &E->sym[n_sym];
        size_t l = byte_level ? 1 : utf8_char_len((const unsigned char *)s + pos, n - pos);
        y->id = lookup(t, s + pos, l);
        y->frozen = 0;
        y->start = (uint32_t)pos;
        y->len = (uint32_t)l;
        y->prev = n_sym - 1;
        y->next = n_sym + 1;
        n_sym++;
        pos += l;
    }
    E->sym[n_sym - 1].next = -1;
    merge_and_emit(E, s, n_sym);
}

/* Splits s[0..n) by the regex of this level (matches and the text between
   them are both pieces, as Hugging Face's Split with "Isolated" and
   llama.cpp do), each piece going on to the next level. */
static void pretokenize(Enc *E, const char *s, size_t n, int level)
{
    const Tokenizer *t = E->t;
    if (n == 0 || E->fail) return;
    if (level == t->n_regex) {
        bpe_word(E, s, n);
        return;
    }
    const Regex *re = t->regex[level];
    const unsigned char *u = (const unsigned char *)s;
    size_t pos = 0, from = 0;
    while (from < n && !E->fail) {
        size_t ms = 0, me = 0;
        if (!regex_search(re, &E->vm, u, from, n, &ms, &me)) break;
        if (me == ms) { /* an empty match splits nothing: search again one character on */
            if (ms >= n) break; /* at the very end there is no character to step over */
            from = ms + utf8_char_len(u + ms, n - ms);
            continue;
        }
        if (ms > pos) pretokenize(E, s + pos, ms - pos, level + 1);
        pretokenize(E, s + ms, me - ms, level + 1);
        pos = from = me;
    }
    if (pos < n) pretokenize(E, s + pos, n - pos, level + 1);
}

/* The pieces of an SPM vocabulary spell SentencePiece's meta space "▁" as
   ' ', and SentencePiece itself cannot tell a "▁" typed in the text from a
   space: map them to ' ' as well, in place. */
static void metaspace_to_space(char *p, size_t *n)
{
    size_t w = 0;
    for (size_t r = 0; r < *n;) {
        if (r + 2 < *n && (unsigned char)p[r] == 0xE2 && (unsigned char)p[r + 1] == 0x96 && (unsigned char)p[r + 2] == 0x81) {
            p[w++] = ' ';
            r += 3;
        } else {
            p[w++] = p[r++];
        }
    }
    *n = w;
}

/* One stretch of text between added tokens. */
static void encode_fragment(Enc *E, const char *s, size_t n, int at_start)
{
    const Tokenizer *t = E->t;
    const TokenizerData *d = &t->data;
    if (n == 0 || E->fail) return;
    E->tmp.n = 0;
    if (d->kind == TOKENIZER_SPM) {
        if (d->flags & TOKENIZER_REMOVE_EXTRA_WS) {
            /* SentencePiece: no leading or trailing spaces, runs become one */
            size_t a = 0, b = n;
            while (a < b && s[a] == ' ') a++;
            while (b > a && s[b - 1] == ' ') b--;
            if (a == b) return;
            if (d->add_prefix_space) buf_addc(&E->tmp, ' ');
            for (size_t i = a; i < b; i++)
                if (s[i] != ' ' || s[i - 1] != ' ') buf_addc(&E->tmp, s[i]);
        } else {
            /* SentencePiece's dummy prefix: " Hello" and "Hello" mid-sentence
               are then the same tokens. */
            if (d->add_prefix_space) buf_addc(&E->tmp, ' ');
            buf_add(&E->tmp, s, n);
        }
        if (E->tmp.oom) {
            E->fail = 1;
            return;
        }
        metaspace_to_space(E->tmp.p, &E->tmp.n);
        spm_encode(E, E->tmp.p, E->tmp.n);
        return;
    }
    if (d->flags & TOKENIZER_NFC) {
        E->norm.n = 0;
        nfc(s, n, &E->norm);
        if (E->norm.oom) {
            E->fail = 1;
            return;
        }
        s = E->norm.p;
        n = E->norm.n;
    }
    int prefix = 0;
    if (d->add_prefix_space) {
        if (d->flags & TOKENIZER_BYTE_LEVEL) prefix = s[0] != ' '; /* ByteLevel's add_prefix_space */
        else prefix = at_start || !(d->flags & TOKENIZER_PREFIX_FIRST);
    }
    int metaspace = !(d->flags & TOKENIZER_BYTE_LEVEL); /* an SPM vocabulary with merge ranks */
    if (prefix || metaspace) {
        if (prefix) buf_addc(&E->tmp, ' ');
        buf_add(&E->tmp, s, n);
        if (E->tmp.oom) {
            E->fail = 1;
            return;
        }
        if (metaspace) metaspace_to_space(E->tmp.p, &E->tmp.n);
        s = E->tmp.p;
        n = E->tmp.n;
    }
    pretokenize(E, s, n, 0);
}

static int is_ascii_space(char c) { return c == ' ' || (c >= 9 && c <= 13); }

int tokenizer_encode_ex(const Tokenizer *t, const char *text, size_t len, int add_bos, int parse_special, int *ids,
                        int max_ids)
{
    if (max_ids < 0 || (len > 0 && text == NULL) || len > (size_t)INT_MAX - 8) return -1;
    Enc E = {.t = t, .ids = ids, .max_ids = max_ids};
    if (add_bos && t->data.bos_id >= 0) emit(&E, t->data.bos_id);
    if (E.fail) return -1;
    if (len == 0) return E.n;

    int max_prog = 0;
    for (int i = 0; i < t->n_regex; i++)
        if (t->regex[i]->n_code > max_prog) max_prog = t->regex[i]->n_code;
    if (max_prog > 0 && rx_vm_reserve(&E.vm, max_prog) < 0) return -1;

    /* Added tokens first: they are cut out of the raw text, leftmost and
       longest first, and the stretches between them are encoded apart. */
    size_t frag = 0;
    if (t->special) {
        for (size_t i = 0; i < len && !E.fail;) {
            if (!t->special_first[(unsigned char)text[i]]) {
                i++;
                continue;
            }
            int id = -1;
            size_t l = 0;
            for (int k = 0; k < t->n_special_lens && id < 0; k++) {
                l = t->special_lens[k];
                if (l > len - i) continue;
                int c = lookup_special(t, text + i, l);
                if (c >= 0 && (parse_special || t->data.types[c] == TOKEN_USER_DEFINED)) id = c;
            }
            if (id < 0) {
                i++;
                continue;
            }
            int strip = t->strip_flags ? t->strip_flags[id] : 0;
            size_t fend = i;
            if (strip & TOKENIZER_LSTRIP)
                while (fend > frag && is_ascii_space(text[fend - 1])) fend--;
            encode_fragment(&E, text + frag, fend - frag, frag == 0);
            emit(&E, id);
            i += l;
            if (strip & TOKENIZER_RSTRIP)
                while (i < len && is_ascii_space(text[i])) i++;
            frag = i;
        }
    }
    encode_fragment(&E, text + frag, len - frag, frag == 0);

    free(E.q.v);
    free(E.sym);
    free(E.norm.p);
    free(E.tmp.p);
    rx_vm_free(&E.vm);
    return E.fail ? -1 : E.n;
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos, int *ids, int max_ids)
{
    return tokenizer_encode_ex(t, text, len, add_bos, 0, ids, max_ids);
}

size_t tokenizer_max_ids(size_t len)
{
    /* Text of len bytes is k added tokens (at least a byte each) and m <= k + 1
       stretches between them of s_1 + ... + s_m <= len - k bytes. Each byte
       of a normalized stretch (at most 3 s_i bytes) is at most one id, plus
       one for its prefix space; each added token one; BOS one:
       1 + sum(3 s_i + 1) + k <= 3 (len - k) + (k + 1) + k + 1 <= 3 len + 2. */
    if (len > (SIZE_MAX - 2) / TOKENIZER_NFC_MAX_GROWTH) return SIZE_MAX;
    return TOKENIZER_NFC_MAX_GROWTH * len + 2;
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
    if (!(t->data.flags & TOKENIZER_BYTE_LEVEL) && t->data.add_prefix_space && prev >= 0 && prev == t->data.bos_id &&
        n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    *len = n;
    return p;
}

/* ------------------------------------------------------------------------ */
/* Choosing the loader */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static Tokenizer *tokenizer_load_any(const char *path, int n_vocab, char *err, size_t errlen);

/* Any format, for a model of n_vocab embeddings: a tokenizer with ids past
   them would feed the model tokens it does not have. */
Tokenizer *tokenizer_load(const char *path, int n_vocab, char *err, size_t errlen)
{
    Tokenizer *t = tokenizer_load_any(path, n_vocab, err, errlen);
    if (t && n_vocab > 0 && tokenizer_n_vocab(t) > n_vocab) {
        set_err(err, errlen, "%s: the tokenizer has %d tokens, more than the model's %d", path, tokenizer_n_vocab(t), n_vocab);
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

static Tokenizer *tokenizer_load_any(const char *path, int n_vocab, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return tokenizer_load_hf(path, err, errlen);
    if (ends_with(path, "tokenizer.json")) { /* the folder holds its config files too */
        size_t n = strlen(path) - strlen("tokenizer.json");
        char *dir = malloc(n + 2);
        if (!dir) {
            set_err(err, errlen, "out of memory");
            return NULL;
        }
        if (n) memcpy(dir, path, n);
        else dir[n++] = '.';
        dir[n] = '\0';
        Tokenizer *t = tokenizer_load_hf(dir, err, errlen);
        free(dir);
        return t;
    }
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    if (f) {
        size_t got = fread(magic, 1, 4, f);
        (void)got;
        fclose(f);
    }
    if (!memcmp(magic, "GGUF", 4)) return tokenizer_load_gguf(path, err, errlen);
    if (ends_with(path, ".model")) return tokenizer_load_spm(path, err, errlen);
    return tokenizer_load_llama2c(path, n_vocab, err, errlen);
}
