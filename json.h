/* json.h - a small JSON reader for the converter (config.json,
 * tokenizer.json, tokenizer_config.json, safetensors headers).
 *
 * Single header in the stb style: define JSON_IMPLEMENTATION in one C file.
 * The whole document is parsed into one arena; values point into it. Strings
 * are decoded (escapes, \uXXXX with surrogate pairs, to UTF-8) and
 * NUL-terminated, but may contain NUL bytes, so use len. Malformed input,
 * including invalid UTF-8, lone surrogates, trailing garbage and nesting
 * deeper than JSON_MAX_DEPTH, gives an error with the line and column.
 *
 * The grammar is RFC 8259's, with no extensions (no comments, no trailing
 * commas, no NaN). Two choices the RFC leaves to the reader: a UTF-8 byte
 * order mark before the document is skipped, and a number too large for a
 * double (1e400) is an error rather than infinity. Error columns count
 * characters (UTF-8 sequences), not bytes, from 1.
 */
#ifndef JSON_H
#define JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue JsonValue;
struct JsonValue {
    JsonType type;
    double number;        /* JSON_NUMBER */
    const char *str;      /* JSON_STRING: decoded UTF-8, NUL-terminated */
    size_t len;           /* JSON_STRING: bytes; JSON_ARRAY / JSON_OBJECT: number of items */
    JsonValue *items;     /* JSON_ARRAY: elements; JSON_OBJECT: member values, in file order
                             (NULL when len is 0) */
    const char *key;      /* for a member of an object: its decoded key, NUL-terminated */
    size_t key_len;
};

typedef struct {
    JsonValue root;
    void *arena;          /* everything the document allocated */
} JsonDoc;

#define JSON_MAX_DEPTH 256

/* Parses len bytes. Returns 0, or -1 with one line in err ("line L, column C: ...").
   The text need not be NUL-terminated. On failure the document is empty, and
   json_free on it is harmless. */
int json_parse(JsonDoc *doc, const char *text, size_t len, char *err, size_t errlen);
void json_free(JsonDoc *doc);

/* The member `key` of an object, or NULL when v is not an object or has no such member
   (the last one wins when a key repeats). */
const JsonValue *json_get(const JsonValue *v, const char *key);

/* Item i of an array (or member i of an object, in file order), or NULL when
   v is neither or i >= v->len. */
const JsonValue *json_array_item(const JsonValue *v, size_t i);

/* Typed reads: return 0 and set *out when v exists and has the right type
   (json_int also requires an integral number within int range), else -1. */
int json_int(const JsonValue *v, int *out);
int json_double(const JsonValue *v, double *out);
int json_bool(const JsonValue *v, int *out);
const char *json_string(const JsonValue *v); /* NULL when not a string */

#endif /* JSON_H */

/* ========================================================================= */
/* Implementation. Outside the JSON_H guard so that a file which already saw
   the declarations (through another header) still gets it. */
#if defined(JSON_IMPLEMENTATION) && !defined(JSON_IMPLEMENTATION_DONE)
#define JSON_IMPLEMENTATION_DONE

#include "message.h"
#include <float.h>
#include <limits.h>
#include <locale.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* The arena: a list of big blocks, newest first. Allocation bumps a pointer
   in the newest block; nothing is freed before json_free. A tokenizer.json
   makes a few hundred thousand values, and one malloc each would cost more
   than the parse itself. The first block is sized by the first pass
   (json_count) to hold the whole document; more blocks are only needed when
   that estimate falls short, which takes malformed input. */

typedef struct JsonBlock JsonBlock;
struct JsonBlock {
    JsonBlock *next;
    size_t used, cap;
};

/* The data starts after the header, rounded up so that it keeps malloc's
   alignment (16 on the usual 64-bit ABIs). */
#define JSON_BLOCK_HEADER ((sizeof(JsonBlock) + 15) & ~(size_t)15)
#define JSON_BLOCK_MIN ((size_t)4096)
/* Regular blocks stop doubling here: past it the doubling would only reserve
   address space that a document never uses. */
#define JSON_BLOCK_MAX ((size_t)32 << 20)

static char *json_block_data(JsonBlock *b)
{
    return (char *)b + JSON_BLOCK_HEADER;
}

typedef struct {
    const char *text, *end; /* the input */
    JsonBlock *blocks;      /* the arena, newest block first */
    size_t first_cap;       /* size of the first block: json_count's estimate */
    size_t *counts;         /* items of each container, in order of opening (json_count) */
    size_t ncounts, counts_cap;
    char *err;
    size_t errlen;
    int failed;             /* an error has been written (the first one wins) */
} JsonParser;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void json_error(JsonParser *P, const char *at, const char *fmt, ...)
{
    if (P->failed) return;
    P->failed = 1;
    if (P->err == NULL || P->errlen == 0) return;
    /* Line and column are worked out only now, by rescanning: tracking them
       while parsing would slow down every document for the sake of the bad
       ones. */
    size_t line = 1, col = 1;
    for (const char *q = P->text; q < at; q++) {
        if (*q == '\n') { line++; col = 1; }
        else if (((unsigned char)*q & 0xC0) != 0x80) col++; /* continuation bytes add nothing */
    }
    int n = snprintf(P->err, P->errlen, "line %zu, column %zu: ", line, col);
    if (n < 0 || (size_t)n >= P->errlen) return;
    va_list ap;
    va_start(ap, fmt);
    message_format(P->err + n, P->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* What sits at p, for messages: "'x'", "byte 0xNN" or "end of input".
   Never a raw control character, so the message stays one line. */
static const char *json_describe(const JsonParser *P, const char *p, char buf[16])
{
    if (p >= P->end) return "end of input";
    unsigned char c = (unsigned char)*p;
    if (c >= 0x20 && c < 0x7F) snprintf(buf, 16, "'%c'", c);
    else snprintf(buf, 16, "byte 0x%02X", c);
    return buf;
}

static void *json_alloc(JsonParser *P, size_t size, size_t align)
{
    JsonBlock *b = P->blocks;
    if (b) {
        size_t off = (b->used + align - 1) & ~(align - 1);
        if (off <= b->cap && size <= b->cap - off) {
            b->used = off + size;
            return json_block_data(b) + off;
        }
    }
    if (size > SIZE_MAX - JSON_BLOCK_HEADER) return NULL;
    size_t cap;
    int alone = 0;
    if (b == NULL) {
        cap = P->first_cap > size ? P->first_cap : size;
    } else {
        cap = b->cap < JSON_BLOCK_MIN ? JSON_BLOCK_MIN : b->cap < JSON_BLOCK_MAX / 2 ? b->cap * 2 : JSON_BLOCK_MAX;
        alone = size > cap / 4;
        if (alone) cap = size;
    }
    JsonBlock *nb = malloc(JSON_BLOCK_HEADER + cap);
    if (nb == NULL) return NULL;
    nb->used = size;
    nb->cap = cap;
    if (alone && b) {
        /* A big request (the items of a 150k-member object) gets a block of
           its own behind the current one, so the room left in the current
           block still serves the small allocations that follow. */
        nb->next = b->next;
        b->next = nb;
    } else {
        nb->next = b;
        P->blocks = nb;
    }
    return json_block_data(nb);
}

/* Gives back the tail of the latest allocation p (old bytes, now only new
   needed). Strings are allocated at their worst-case size and trimmed. */
static void json_shrink(JsonParser *P, char *p, size_t old, size_t new_size)
{
    JsonBlock *b = P->blocks;
    if (b && p + old == json_block_data(b) + b->used) b->used -= old - new_size;
}

static void json_free_blocks(JsonBlock *b)
{
    while (b) {
        JsonBlock *next = b->next;
        free(b);
        b = next;
    }
}

/* ------------------------------------------------------------------------ */
/* Scanners. Each takes p at the first byte of its token and returns the
   position after it, or NULL after writing the error. None reads at or past
   P->end. */

static const char *json_skip_space(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

static int json_is_digit(const char *p, const char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

static long json_hex4(const char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

static char *json_put_utf8(char *w, long cp)
{
    if (cp < 0x80) {
        *w++ = (char)cp;
    } else if (cp < 0x800) {
        *w++ = (char)(0xC0 | (cp >> 6));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *w++ = (char)(0xE0 | (cp >> 12));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *w++ = (char)(0xF0 | (cp >> 18));
        *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (char)(0x80 | (cp & 0x3F));
    }
    return w;
}

/* Length of the well-formed UTF-8 sequence at s (lead byte >= 0x80), or 0
   with the error written. Well-formed is Unicode's table 3-7: no overlong
   forms, no surrogates, nothing above U+10FFFF. The second byte's allowed
   range depends on the lead byte; that is where those three are excluded. */
static size_t json_utf8_len(JsonParser *P, const char *s, const char *end)
{
    unsigned char c = (unsigned char)s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t n;
    if (c < 0xC0) {
        json_error(P, s, "invalid UTF-8 in a string: unexpected continuation byte 0x%02X", c);
        return 0;
    } else if (c < 0xC2) {
        json_error(P, s, "invalid UTF-8 in a string: overlong encoding (lead byte 0x%02X)", c);
        return 0;
    } else if (c < 0xE0) {
        n = 2;
    } else if (c < 0xF0) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;      /* below: overlong */
        else if (c == 0xED) hi = 0x9F; /* above: U+D800..U+DFFF */
    } else if (c < 0xF5) {
        n = 4;
        if (c == 0xF0) lo = 0x90;      /* below: overlong */
        else if (c == 0xF4) hi = 0x8F; /* above: beyond U+10FFFF */
    } else if (c < 0xF8) {
        json_error(P, s, "invalid UTF-8 in a string: code point above U+10FFFF (lead byte 0x%02X)", c);
        return 0;
    } else {
        json_error(P, s, "invalid UTF-8 in a string: byte 0x%02X never occurs in UTF-8", c);
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        unsigned char d = s + i < end ? (unsigned char)s[i] : 0;
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (d >= l && d <= h) continue;
        if (i == 1 && d >= 0x80 && d <= 0xBF) {
            /* A continuation byte, but one this lead byte may not take. */
            const char *why = c == 0xED ? "UTF-16 surrogate encoded in UTF-8"
                              : c == 0xF4 ? "code point above U+10FFFF" : "overlong encoding";
            json_error(P, s, "invalid UTF-8 in a string: %s (bytes 0x%02X 0x%02X)", why, c, d);
        } else {
            json_error(P, s, "invalid UTF-8 in a string: sequence cut short (lead byte 0x%02X)", c);
        }
        return 0;
    }
    return n;
}

/* A string token at p (the opening quote). Decodes it into the arena. */
static const char *json_parse_string(JsonParser *P, const char *p, const char **out, size_t *out_len)
{
    const char *end = P->end, *q = p + 1;
    /* Find the closing quote first: escapes only ever shrink, so its distance
       bounds the decoded size and one allocation fits the string. */
    while (q < end && *q != '"') {
        if (*q == '\\' && end - q >= 2) q += 2;
        else q++;
    }
    if (q >= end) {
        json_error(P, p, "unterminated string");
        return NULL;
    }
    size_t cap = (size_t)(q - p); /* the raw bytes, plus one for the NUL */
    char *buf = json_alloc(P, cap, 1);
    if (buf == NULL) {
        json_error(P, p, "out of memory");
        return NULL;
    }
    char *w = buf;
    const char *r = p + 1;
    /* Every read below stays before q: the scan above paired each backslash
       with the byte after it, so r + 1 < q after a backslash, and \u checks
       its length; a quote ends no escape and no UTF-8 sequence early. */
    while (r < q) {
        unsigned char c = (unsigned char)*r;
        if (c >= 0x20 && c < 0x80 && c != '\\') {
            *w++ = (char)c;
            r++;
        } else if (c < 0x20) {
            json_error(P, r, "control character 0x%02X in a string (it must be escaped)", c);
            return NULL;
        } else if (c >= 0x80) {
            size_t n = json_utf8_len(P, r, q);
            if (n == 0) return NULL;
            for (size_t i = 0; i < n; i++) *w++ = *r++; /* at most 4: cheaper than a memcpy call */
        } else {
            char e = r[1];
            switch (e) {
            case '"': *w++ = '"'; r += 2; break;
            case '\\': *w++ = '\\'; r += 2; break;
            case '/': *w++ = '/'; r += 2; break;
            case 'b': *w++ = '\b'; r += 2; break;
            case 'f': *w++ = '\f'; r += 2; break;
            case 'n': *w++ = '\n'; r += 2; break;
            case 'r': *w++ = '\r'; r += 2; break;
            case 't': *w++ = '\t'; r += 2; break;
            case 'u': {
                long cp = q - r >= 6 ? json_hex4(r + 2) : -1;
                if (cp < 0) {
                    json_error(P, r, "\\u must be followed by four hex digits");
                    return NULL;
                }
                if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    json_error(P, r, "lone surrogate \\u%04lX (a low surrogate with no high one before it)", cp);
                    return NULL;
                }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    /* UTF-16 in disguise: the pair together is one code point. */
                    long lo = q - r >= 12 && r[6] == '\\' && r[7] == 'u' ? json_hex4(r + 8) : -1;
                    if (lo < 0xDC00 || lo > 0xDFFF) {
                        json_error(P, r, "lone surrogate \\u%04lX (a high surrogate not followed by a low one)", cp);
                        return NULL;
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    r += 6;
                }
                r += 6;
                w = json_put_utf8(w, cp);
                break;
            }
            default: {
                char what[16];
                json_error(P, r, "invalid escape: backslash followed by %s", json_describe(P, r + 1, what));
                return NULL;
            }
            }
        }
    }
    *w = '\0';
    size_t n = (size_t)(w - buf);
    json_shrink(P, buf, cap, n + 1);
    *out = buf;
    *out_len = n;
    return q + 1;
}

/* A number token at p ('-' or a digit). The grammar is checked here, so that
   strtod, which accepts much more (hex, "inf", leading '+', "1."), only ever
   sees what JSON allows. */
static const char *json_parse_number(JsonParser *P, const char *p, double *out)
{
    const char *s = p, *end = P->end;
    char what[16];
    int neg = 0, integer = 1;
    if (*p == '-') { neg = 1; p++; }
    if (!json_is_digit(p, end)) {
        json_error(P, p, "expected a digit after '-', found %s", json_describe(P, p, what));
        return NULL;
    }
    const char *digits = p;
    if (*p == '0') {
        p++;
        if (json_is_digit(p, end)) {
            json_error(P, s, "numbers may not have leading zeros");
            return NULL;
        }
    } else {
        while (json_is_digit(p, end)) p++;
    }
    size_t ndigits = (size_t)(p - digits);
    if (p < end && *p == '.') {
        integer = 0;
        p++;
        if (!json_is_digit(p, end)) {
            json_error(P, p, "expected a digit after the decimal point, found %s", json_describe(P, p, what));
            return NULL;
        }
        while (json_is_digit(p, end)) p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        integer = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!json_is_digit(p, end)) {
            json_error(P, p, "expected a digit in the exponent, found %s", json_describe(P, p, what));
            return NULL;
        }
        while (json_is_digit(p, end)) p++;
    }

    /* Fast path for the common case (token ids, sizes): an integer below
       2^53 is exact in a double, so this equals what strtod would give. */
    if (integer && ndigits <= 15) {
        uint64_t v = 0;
        for (const char *d = digits; d < p; d++) v = v * 10 + (uint64_t)(*d - '0');
        *out = neg ? -(double)v : (double)v;
        return p;
    }

    /* strtod wants a NUL-terminated string and the input is not one. Longer
       numbers than this are rare enough (and the arena's size is planned
       without them) that they get a malloc of their own. */
    size_t n = (size_t)(p - s);
    char small[64];
    char *buf = n < sizeof small ? small : malloc(n + 1);
    if (buf == NULL) {
        json_error(P, s, "out of memory");
        return NULL;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *stop;
    double v = strtod(buf, &stop);
    if (stop != buf + n) {
        /* strtod follows the C locale's decimal point; under a locale that
           uses another one it stops at the '.', so say it that locale's way. */
        const char *dp = localeconv()->decimal_point;
        char *dot = strchr(buf, '.');
        if (dot && dp && dp[0] && !dp[1]) {
            *dot = dp[0];
            v = strtod(buf, &stop);
        }
    }
    int ok = stop == buf + n;
    if (buf != small) free(buf);
    if (!ok) {
        json_error(P, s, "number could not be converted");
        return NULL;
    }
    if (v > DBL_MAX || v < -DBL_MAX) {
        json_error(P, s, "number out of range (its magnitude is above %g)", DBL_MAX);
        return NULL;
    }
    *out = v;
    return p;
}

static const char *json_parse_literal(JsonParser *P, const char *p, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(P->end - p) < n || memcmp(p, word, n) != 0) {
        json_error(P, p, "invalid literal (expected '%s')", word);
        return NULL;
    }
    return p + n;
}

/* ------------------------------------------------------------------------ */
/* The parser works in two passes. The first (json_count) only finds where
   containers open and close and counts the items of each; the second parses
   for real and, knowing each count when a container opens, writes its items
   straight into one exactly sized array in the arena. A single pass would
   have to collect items on a side stack and copy them once the container
   closes, which for a tokenizer.json means twice the memory touched and a
   copy of every value. The first pass also sums what the arena will hold,
   so a valid document usually needs one block.

   The first pass trusts nothing but checks nothing either: on malformed
   input its counts may be wrong, but only for containers after the point
   where the second pass stops with an error. (Both passes agree on what is
   inside a string, and up to the first error they see the same tokens.) The
   second pass still checks every count before using it. */

static int json_count_push(JsonParser *P)
{
    if (P->ncounts == P->counts_cap) {
        size_t cap = P->counts_cap ? P->counts_cap * 2 : 256;
        if (cap > SIZE_MAX / sizeof(size_t)) return -1;
        size_t *c = realloc(P->counts, cap * sizeof(size_t));
        if (c == NULL) return -1;
        P->counts = c;
        P->counts_cap = cap;
    }
    P->counts[P->ncounts++] = 0;
    return 0;
}

/* Returns the number of arena bytes the document needs (an estimate when it
   is malformed), or SIZE_MAX when out of memory. */
static size_t json_count(JsonParser *P, const char *p)
{
    const char *end = P->end;
    size_t opened[JSON_MAX_DEPTH]; /* indexes into counts of the open containers */
    int depth = 0;
    int want = 0;                  /* the next token starts an item of opened[depth - 1] */
    size_t items = 0, bytes = 0;
    while (p < end) {
        char c = *p;
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') { p++; continue; }
        if (c == ',') { want = 1; p++; continue; }
        if (c == ':') { want = 0; p++; continue; }
        if (c == ']' || c == '}') {
            if (depth > 0) depth--;
            want = 0;
            p++;
            continue;
        }
        /* Any other byte starts a token (or is an error the second pass will
           report); in an object, the counted tokens are the keys. */
        if (want && depth > 0) {
            P->counts[opened[depth - 1]]++;
            items++;
        }
        want = 0;
        if (c == '[' || c == '{') {
            /* Deeper than the limit the second pass stops, so neither the
               counts nor the rest of the text matter. */
            if (depth == JSON_MAX_DEPTH) break;
            if (json_count_push(P) != 0) return SIZE_MAX;
            opened[depth++] = P->ncounts - 1;
            want = 1;
            p++;
        } else if (c == '"') {
            const char *q = p + 1;
            while (q < end && *q != '"') {
                if (*q == '\\' && end - q >= 2) q += 2;
                else q++;
            }
            bytes += (size_t)(q - p); /* the decoded string and its NUL fit in this */
            p = q < end ? q + 1 : end;
        } else {
            p++;
        }
    }
    /* Each items array may need padding for its alignment. */
    if (items > (SIZE_MAX / 2 - bytes) / (sizeof(JsonValue) + _Alignof(JsonValue))) return SIZE_MAX / 2;
    return bytes + items * sizeof(JsonValue) + P->ncounts * _Alignof(JsonValue);
}

typedef struct {
    JsonType type;        /* JSON_ARRAY or JSON_OBJECT */
    JsonValue *items;     /* its items, allocated when it opened */
    size_t n, cap;        /* filled so far, and the count from the first pass */
    const char *key;      /* its own key in the enclosing object, or NULL */
    size_t key_len;
} JsonFrame;

/* The second pass is iterative, with an explicit stack of open containers,
   so the C stack stays small whatever the input and depth is a counter. */
int json_parse(JsonDoc *doc, const char *text, size_t len, char *err, size_t errlen)
{
    JsonParser P;
    JsonFrame frames[JSON_MAX_DEPTH];
    int depth = 0;
    size_t next_container = 0; /* index into P.counts of the next container to open */
    JsonValue v;
    const char *key = NULL;    /* the key of the value being parsed, NULL in an array */
    size_t key_len = 0;
    char what[16];

    if (err && errlen) err[0] = '\0';
    if (text == NULL) text = ""; /* lets len == 0 with NULL through; NULL + 0 is undefined */
    memset(&P, 0, sizeof P);
    P.text = text;
    P.end = text + len;
    P.err = err;
    P.errlen = errlen;
    if (doc == NULL) {
        json_error(&P, text, "no document to parse into");
        return -1;
    }
    memset(doc, 0, sizeof *doc);

    const char *p = text, *end = P.end;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3; /* RFC 8259 8.1: may ignore a BOM */

    size_t need = json_count(&P, p);
    if (need == SIZE_MAX) {
        json_error(&P, p, "out of memory");
        goto fail;
    }
    P.first_cap = need < JSON_BLOCK_MIN ? JSON_BLOCK_MIN : need;

value: /* p: where a value may start, after optional space */
    p = json_skip_space(p, end);
    memset(&v, 0, sizeof v);
    if (p == end) {
        json_error(&P, p, depth == 0 && p == text ? "empty input" : "unexpected end of input, expected a value");
        goto fail;
    }
    switch (*p) {
    case '{':
    case '[':
        if (depth == JSON_MAX_DEPTH) {
            json_error(&P, p, "nesting deeper than %d arrays and objects", JSON_MAX_DEPTH);
            goto fail;
        }
        if (next_container >= P.ncounts) {
            json_error(&P, p, "internal error: containers miscounted");
            goto fail;
        }
        {
            JsonFrame *f = &frames[depth++];
            f->type = *p == '{' ? JSON_OBJECT : JSON_ARRAY;
            f->cap = P.counts[next_container++];
            f->n = 0;
            f->items = NULL;
            f->key = key;
            f->key_len = key_len;
            if (f->cap > 0) {
                f->items = json_alloc(&P, f->cap * sizeof(JsonValue), _Alignof(JsonValue));
                if (f->items == NULL) {
                    json_error(&P, p, "out of memory");
                    goto fail;
                }
            }
        }
        key = NULL;
        key_len = 0;
        p = json_skip_space(p + 1, end);
        if (p < end && *p == (frames[depth - 1].type == JSON_OBJECT ? '}' : ']')) {
            p++;
            goto close;
        }
        if (frames[depth - 1].type == JSON_OBJECT) goto member;
        goto value;
    case '"':
        v.type = JSON_STRING;
        p = json_parse_string(&P, p, &v.str, &v.len);
        break;
    case 't':
        v.type = JSON_TRUE;
        p = json_parse_literal(&P, p, "true");
        break;
    case 'f':
        v.type = JSON_FALSE;
        p = json_parse_literal(&P, p, "false");
        break;
    case 'n':
        v.type = JSON_NULL;
        p = json_parse_literal(&P, p, "null");
        break;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        v.type = JSON_NUMBER;
        p = json_parse_number(&P, p, &v.number);
        break;
    default:
        json_error(&P, p, "expected a value, found %s", json_describe(&P, p, what));
        goto fail;
    }
    if (p == NULL) goto fail;

done: /* v is complete; p is just after it */
    v.key = key;
    v.key_len = key_len;
    if (depth == 0) goto finish;
    {
        JsonFrame *f = &frames[depth - 1];
        if (f->n == f->cap) {
            json_error(&P, p, "internal error: items miscounted");
            goto fail;
        }
        f->items[f->n++] = v;
    }
    key = NULL;
    key_len = 0;
    p = json_skip_space(p, end);
    {
        int object = frames[depth - 1].type == JSON_OBJECT;
        char closer = object ? '}' : ']';
        if (p < end && *p == ',') {
            p = json_skip_space(p + 1, end);
            if (object) goto member;
            goto value;
        }
        if (p < end && *p == closer) {
            p++;
            goto close;
        }
        json_error(&P, p, "expected ',' or '%c' after %s, found %s", closer,
                   object ? "an object member" : "an array element", json_describe(&P, p, what));
        goto fail;
    }

member: /* p: where a key must start, after space */
    if (p == end || *p != '"') {
        json_error(&P, p, "expected a string key, found %s", json_describe(&P, p, what));
        goto fail;
    }
    p = json_parse_string(&P, p, &key, &key_len);
    if (p == NULL) goto fail;
    p = json_skip_space(p, end);
    if (p == end || *p != ':') {
        json_error(&P, p, "expected ':' after an object key, found %s", json_describe(&P, p, what));
        goto fail;
    }
    p++;
    goto value;

close: /* the innermost container ended; p is after its bracket */
    {
        JsonFrame *f = &frames[--depth];
        memset(&v, 0, sizeof v);
        v.type = f->type;
        v.len = f->n;
        v.items = f->n ? f->items : NULL;
        key = f->key;
        key_len = f->key_len;
    }
    goto done;

finish:
    p = json_skip_space(p, end);
    if (p != end) {
        json_error(&P, p, "unexpected %s after the JSON value", json_describe(&P, p, what));
        goto fail;
    }
    free(P.counts);
    doc->root = v;
    doc->arena = P.blocks;
    return 0;

fail:
    free(P.counts);
    json_free_blocks(P.blocks);
    return -1;
}

void json_free(JsonDoc *doc)
{
    if (doc == NULL) return;
    json_free_blocks(doc->arena);
    memset(doc, 0, sizeof *doc);
}

/* ------------------------------------------------------------------------ */
/* Access */

const JsonValue *json_get(const JsonValue *v, const char *key)
{
    if (v == NULL || v->type != JSON_OBJECT || key == NULL) return NULL;
    size_t n = strlen(key);
    /* From the end, so that the last of repeated keys wins. */
    for (size_t i = v->len; i-- > 0;) {
        const JsonValue *m = &v->items[i];
        if (m->key_len == n && memcmp(m->key, key, n) == 0) return m;
    }
    return NULL;
}

const JsonValue *json_array_item(const JsonValue *v, size_t i)
{
    if (v == NULL || (v->type != JSON_ARRAY && v->type != JSON_OBJECT) || i >= v->len) return NULL;
    return &v->items[i];
}

int json_int(const JsonValue *v, int *out)
{
    if (v == NULL || v->type != JSON_NUMBER) return -1;
    double d = v->number;
    /* Range first: converting an out-of-range double to int is undefined. */
    if (!(d >= (double)INT_MIN && d <= (double)INT_MAX)) return -1;
    int i = (int)d;
    if ((double)i != d) return -1;
    *out = i;
    return 0;
}

int json_double(const JsonValue *v, double *out)
{
    if (v == NULL || v->type != JSON_NUMBER) return -1;
    *out = v->number;
    return 0;
}

int json_bool(const JsonValue *v, int *out)
{
    if (v == NULL || (v->type != JSON_TRUE && v->type != JSON_FALSE)) return -1;
    *out = v->type == JSON_TRUE;
    return 0;
}

const char *json_string(const JsonValue *v)
{
    return v && v->type == JSON_STRING ? v->str : NULL;
}

#endif /* JSON_IMPLEMENTATION */
