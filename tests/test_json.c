/* test_json.c - checks json.h: every value kind, escapes, numbers, UTF-8,
 * nesting limits, malformed input (including every truncation of a document
 * and every single-byte corruption of it), error positions, and a large
 * generated tokenizer.json-sized document.
 *
 *   cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -O2 -o tests/bin/test_json \
 *      tests/test_json.c tokenizer.c -lm
 *   tests/bin/test_json
 *
 * (tokenizer.c holds the implementation: JSON_IMPLEMENTATION + json.h.)
 * Prints "PASS name" or "FAIL name: detail" per check and "N passed, N
 * failed" last; exits 1 if anything failed. Every input is handed to the
 * parser in a malloc'd buffer of exactly its length, with no NUL after it,
 * so that under AddressSanitizer any read past the end is caught.
 */
#include "../json.h"

#include <limits.h>
#include <stdint.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int n_passed, n_failed;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void check(int ok, const char *name, const char *fmt, ...)
{
    if (ok) {
        printf("PASS %s\n", name);
        n_passed++;
    } else {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL %s: ", name);
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
        n_failed++;
    }
    fflush(stdout);
}

/* ------------------------------------------------------------------------ */
/* Helpers */

static char err[256];

/* Parses n bytes of s from a private copy of exactly n bytes (no NUL after
   it), freed before returning: the document must not point into the input. */
static int parse_n(JsonDoc *doc, const char *s, size_t n)
{
    char *copy = malloc(n ? n : 1);
    if (!copy) { perror("malloc"); exit(2); }
    if (n) memcpy(copy, s, n);
    memset(err, 'X', sizeof err); /* so a missing error shows */
    err[sizeof err - 1] = '\0';
    int rc = json_parse(doc, copy, n, err, sizeof err);
    free(copy);
    return rc;
}

static int parse(JsonDoc *doc, const char *s)
{
    return parse_n(doc, s, strlen(s));
}

/* An error message as promised: "line L, column C: what", one line. */
static int well_formed_error(const char *e)
{
    unsigned long line, col;
    int used = 0;
    if (sscanf(e, "line %lu, column %lu: %n", &line, &col, &used) != 2 || used == 0) return 0;
    if (line < 1 || col < 1 || e[used] == '\0') return 0;
    /* The parser's own consistency checks (its two passes disagreeing) must
       never fire, whatever the input. */
    return strchr(e, '\n') == NULL && strchr(e, '\r') == NULL && strstr(e, "internal error") == NULL;
}

static int doc_is_empty(const JsonDoc *doc)
{
    return doc->arena == NULL && doc->root.type == JSON_NULL && doc->root.items == NULL && doc->root.str == NULL;
}

/* Expects n bytes of s to fail; want (may be NULL) must occur in the error. */
static void expect_fail_n(const char *name, const char *s, size_t n, const char *want)
{
    JsonDoc doc;
    int rc = parse_n(&doc, s, n);
    if (rc == 0) {
        check(0, name, "parsed, but should have failed");
        json_free(&doc);
        return;
    }
    if (rc != -1 || !well_formed_error(err) || !doc_is_empty(&doc)) {
        check(0, name, "rc %d, error \"%s\", document %s", rc, err, doc_is_empty(&doc) ? "empty" : "not empty");
        return;
    }
    if (want && !strstr(err, want)) {
        check(0, name, "error \"%s\" does not mention \"%s\"", err, want);
        return;
    }
    char full[400];
    snprintf(full, sizeof full, "%s -> %s", name, err);
    check(1, full, " ");
}

static void expect_fail(const char *name, const char *s, const char *want)
{
    expect_fail_n(name, s, strlen(s), want);
}

/* Expects s to fail at exactly this place. */
static void expect_fail_at(const char *name, const char *s, size_t n, unsigned long line, unsigned long col)
{
    JsonDoc doc;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "line %lu, column %lu: ", line, col);
    int rc = parse_n(&doc, s, n);
    if (rc == 0) json_free(&doc);
    check(rc == -1 && strncmp(err, prefix, strlen(prefix)) == 0, name, "rc %d, error \"%s\", expected it to start \"%s\"",
          rc, rc ? err : "", prefix);
}

/* Parses s as a single string value and compares the decoded bytes. */
static void expect_string(const char *name, const char *json, const char *want, size_t want_len)
{
    JsonDoc doc;
    if (parse(&doc, json) != 0) {
        check(0, name, "%s", err);
        return;
    }
    const JsonValue *v = &doc.root;
    int ok = v->type == JSON_STRING && v->len == want_len && memcmp(v->str, want, want_len) == 0 &&
             v->str[v->len] == '\0' && json_string(v) == v->str;
    check(ok, name, "type %d, len %zu (want %zu)", v->type, v->len, want_len);
    json_free(&doc);
}

static void expect_number(const char *name, const char *json, double want)
{
    JsonDoc doc;
    if (parse(&doc, json) != 0) {
        check(0, name, "%s", err);
        return;
    }
    double got = 0;
    int ok = doc.root.type == JSON_NUMBER && json_double(&doc.root, &got) == 0 && got == want &&
             signbit(got) == signbit(want);
    check(ok, name, "type %d, got %.17g, want %.17g", doc.root.type, got, want);
    json_free(&doc);
}

static double now_ms(void)
{
    struct timespec ts = {0, 0}; /* initialised for MemorySanitizer, which does not know timespec_get */
    timespec_get(&ts, TIME_UTC);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ------------------------------------------------------------------------ */
/* Value kinds and access */

static void test_kinds(void)
{
    JsonDoc doc;
    const char *s =
        "{\"n\": null, \"t\": true, \"f\": false, \"i\": 42, \"d\": -2.5e-3,\n"
        " \"s\": \"hi\", \"a\": [1, \"two\", [3], {}, []], \"o\": {\"x\": {\"y\": \"deep\"}}, \"e\": {}}";
    int rc = parse(&doc, s);
    check(rc == 0, "object with every kind of value parses", "%s", err);
    if (rc != 0) return;
    const JsonValue *r = &doc.root;
    check(r->type == JSON_OBJECT && r->len == 9 && r->key == NULL, "root is an object of 9 members, without a key",
          "type %d len %zu", r->type, r->len);
    static const char *keys[] = {"n", "t", "f", "i", "d", "s", "a", "o", "e"};
    static const JsonType types[] = {JSON_NULL, JSON_TRUE, JSON_FALSE, JSON_NUMBER, JSON_NUMBER,
                                     JSON_STRING, JSON_ARRAY, JSON_OBJECT, JSON_OBJECT};
    int order_ok = r->len == 9;
    for (size_t i = 0; order_ok && i < 9; i++)
        order_ok = r->items[i].key && r->items[i].key_len == 1 && !strcmp(r->items[i].key, keys[i]) &&
                   r->items[i].type == types[i] && json_array_item(r, i) == &r->items[i];
    check(order_ok, "members in file order with key, key_len and type", "mismatch");

    int b = -1, iv = 0;
    double d = 0;
    check(json_bool(json_get(r, "t"), &b) == 0 && b == 1, "json_bool(true)", "b=%d", b);
    check(json_bool(json_get(r, "f"), &b) == 0 && b == 0, "json_bool(false)", "b=%d", b);
    check(json_bool(json_get(r, "n"), &b) == -1, "json_bool(null) fails", " ");
    check(json_bool(json_get(r, "i"), &b) == -1, "json_bool(number) fails", " ");
    check(json_get(r, "n") && json_get(r, "n")->type == JSON_NULL, "null member", " ");
    check(json_int(json_get(r, "i"), &iv) == 0 && iv == 42, "json_int 42", "%d", iv);
    check(json_double(json_get(r, "d"), &d) == 0 && d == -2.5e-3, "json_double -2.5e-3", "%g", d);
    check(json_double(json_get(r, "s"), &d) == -1, "json_double(string) fails", " ");
    check(json_int(json_get(r, "d"), &iv) == -1, "json_int(-0.0025) fails", " ");
    const char *str = json_string(json_get(r, "s"));
    check(str && !strcmp(str, "hi") && json_get(r, "s")->len == 2, "json_string \"hi\"", "%s", str ? str : "NULL");
    check(json_string(json_get(r, "i")) == NULL && json_string(NULL) == NULL, "json_string(non-string) is NULL", " ");

    const JsonValue *a = json_get(r, "a");
    int arr_ok = a && a->type == JSON_ARRAY && a->len == 5;
    for (size_t i = 0; arr_ok && i < a->len; i++) arr_ok = a->items[i].key == NULL && a->items[i].key_len == 0;
    check(arr_ok, "array of 5 elements, none with a key", " ");
    if (arr_ok) {
        check(json_int(json_array_item(a, 0), &iv) == 0 && iv == 1, "array element 0 is 1", " ");
        check(!strcmp(json_string(json_array_item(a, 1)) ? json_string(json_array_item(a, 1)) : "", "two"),
              "array element 1 is \"two\"", " ");
        const JsonValue *inner = json_array_item(a, 2);
        check(inner && inner->type == JSON_ARRAY && inner->len == 1 && json_int(&inner->items[0], &iv) == 0 && iv == 3,
              "nested array [3]", " ");
        const JsonValue *eo = json_array_item(a, 3), *ea = json_array_item(a, 4);
        check(eo && eo->type == JSON_OBJECT && eo->len == 0 && eo->items == NULL && ea && ea->type == JSON_ARRAY &&
                  ea->len == 0 && ea->items == NULL,
              "empty object and empty array: len 0, items NULL", " ");
        check(json_array_item(a, 5) == NULL && json_array_item(a, (size_t)-1) == NULL, "json_array_item past the end is NULL",
              " ");
    }
    check(json_array_item(json_get(r, "s"), 0) == NULL && json_array_item(NULL, 0) == NULL,
          "json_array_item of a non-container is NULL", " ");
    const char *deep = json_string(json_get(json_get(json_get(r, "o"), "x"), "y"));
    check(deep && !strcmp(deep, "deep"), "chained json_get reaches o.x.y", " ");
    check(json_get(r, "missing") == NULL, "json_get of a missing key is NULL", " ");
    check(json_get(json_get(r, "a"), "x") == NULL && json_get(NULL, "x") == NULL && json_get(r, NULL) == NULL,
          "json_get on a non-object, NULL, or with a NULL key is NULL", " ");
    check(json_get(json_get(r, "e"), "x") == NULL, "json_get on an empty object is NULL", " ");
    json_free(&doc);
    check(doc_is_empty(&doc), "json_free leaves an empty document", " ");
    json_free(&doc); /* twice is harmless */
    json_free(NULL);

    /* Every kind as the root value, with surrounding whitespace. */
    static const struct { const char *text; JsonType type; } roots[] = {
        {" null ", JSON_NULL}, {"\ttrue\n", JSON_TRUE}, {"\r\nfalse", JSON_FALSE}, {"7", JSON_NUMBER},
        {"\"x\"", JSON_STRING}, {" [ ] ", JSON_ARRAY}, {"{ }", JSON_OBJECT}, {"\n\r\t [\n1\r,\t2 ]\n\r\t ", JSON_ARRAY},
    };
    for (size_t i = 0; i < sizeof roots / sizeof roots[0]; i++) {
        char name[80];
        snprintf(name, sizeof name, "root value #%zu of type %d, with whitespace", i, roots[i].type);
        rc = parse(&doc, roots[i].text);
        check(rc == 0 && doc.root.type == roots[i].type && doc.root.key == NULL, name, "rc %d: %s", rc, rc ? err : "");
        if (rc == 0) json_free(&doc);
    }

    /* Duplicate keys: both kept in order, json_get returns the last. */
    rc = parse(&doc, "{\"k\": 1, \"other\": 0, \"k\": 2}");
    check(rc == 0 && doc.root.len == 3 && json_int(json_get(&doc.root, "k"), &iv) == 0 && iv == 2,
          "duplicate keys: both kept, json_get returns the last", "rc %d iv %d", rc, iv);
    if (rc == 0) json_free(&doc);

    /* Keys are decoded like strings; a key with a NUL only matches by length. */
    rc = parse(&doc, "{\"a\\u0062\\n\": 1, \"\": 2, \"z\\u0000z\": 3}");
    check(rc == 0 && json_get(&doc.root, "ab\n") && json_int(json_get(&doc.root, ""), &iv) == 0 && iv == 2,
          "escaped key and empty key found by json_get", "rc %d", rc);
    if (rc == 0) {
        const JsonValue *m = json_array_item(&doc.root, 2);
        check(m && m->key_len == 3 && !memcmp(m->key, "z\0z", 4) && json_get(&doc.root, "z") == NULL,
              "key with \\u0000 keeps its length and does not match its C-string prefix", " ");
        json_free(&doc);
    }

    /* Empty input and no document. */
    expect_fail("empty input", "", "empty input");
    expect_fail("only whitespace", " \n\t\r ", "end of input");
    rc = json_parse(&doc, NULL, 0, err, sizeof err);
    check(rc == -1 && well_formed_error(err), "NULL text with length 0 is empty input", "%s", err);
    rc = json_parse(NULL, "1", 1, err, sizeof err);
    check(rc == -1 && well_formed_error(err), "NULL document is an error", "%s", err);
}

/* ------------------------------------------------------------------------ */
/* Strings */

static void test_strings(void)
{
    expect_string("empty string", "\"\"", "", 0);
    expect_string("plain ASCII with DEL (0x7F is not a control character here)", "\"a b~\x7f\"", "a b~\x7f", 5);
    expect_string("the eight short escapes", "\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"", "\" \\ / \b \f \n \r \t", 15);
    expect_string("\\u0041 is A, hex in either case", "\"\\u0041\\u004a\\u004A\"", "AJJ", 3);
    expect_string("\\u0000 gives a NUL inside the string", "\"a\\u0000b\"", "a\0b", 3);
    expect_string("\\u00e9 -> 2-byte UTF-8", "\"\\u00e9\"", "\xC3\xA9", 2);
    expect_string("\\u07FF -> 2-byte UTF-8 upper bound", "\"\\u07FF\"", "\xDF\xBF", 2);
    expect_string("\\u0800 -> 3-byte UTF-8 lower bound", "\"\\u0800\"", "\xE0\xA0\x80", 3);
    expect_string("\\u20AC -> 3-byte UTF-8 (euro sign)", "\"\\u20AC\"", "\xE2\x82\xAC", 3);
    expect_string("\\uFFFF -> 3-byte UTF-8", "\"\\uffff\"", "\xEF\xBF\xBF", 3);
    expect_string("surrogate pair \\uD83D\\uDE00 -> U+1F600", "\"\\uD83D\\uDE00\"", "\xF0\x9F\x98\x80", 4);
    expect_string("surrogate pair \\uD800\\uDC00 -> U+10000", "\"\\ud800\\udc00\"", "\xF0\x90\x80\x80", 4);
    expect_string("surrogate pair \\uDBFF\\uDFFF -> U+10FFFF", "\"\\uDBFF\\uDFFF\"", "\xF4\x8F\xBF\xBF", 4);
    expect_string("escapes mixed with text and raw UTF-8", "\"x\\u00e9y\xC3\xA9z\\uD83D\\uDE00!\"",
                  "x\xC3\xA9y\xC3\xA9z\xF0\x9F\x98\x80!", 12);
    expect_string("raw 2-, 3- and 4-byte UTF-8", "\"\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80\"",
                  "\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80", 14);
    expect_string("raw U+D7FF and U+E000 (around the surrogates)", "\"\xED\x9F\xBF\xEE\x80\x80\"",
                  "\xED\x9F\xBF\xEE\x80\x80", 6);
    expect_string("raw U+10FFFF", "\"\xF4\x8F\xBF\xBF\"", "\xF4\x8F\xBF\xBF", 4);
    expect_string("raw U+FEFF inside a string", "\"\xEF\xBB\xBF\"", "\xEF\xBB\xBF", 3);

    /* A long string with many escapes: the worst-case allocation is trimmed
       and the bytes are right. */
    {
        size_t reps = 20000;
        char *s = malloc(reps * 12 + 3), *want = malloc(reps * 6);
        size_t n = 0, w = 0;
        s[n++] = '"';
        for (size_t i = 0; i < reps; i++) {
            memcpy(s + n, i % 2 ? "\\uD83D\\uDE00" : "\\n\\t\\u00e9ab", 12);
            n += 12;
            if (i % 2) { memcpy(want + w, "\xF0\x9F\x98\x80", 4); w += 4; }
            else { memcpy(want + w, "\n\t\xC3\xA9" "ab", 6); w += 6; }
        }
        s[n++] = '"';
        JsonDoc doc;
        int rc = parse_n(&doc, s, n);
        check(rc == 0 && doc.root.len == w && !memcmp(doc.root.str, want, w), "long string of 20000 escapes",
              "rc %d len %zu want %zu", rc, rc ? 0 : doc.root.len, w);
        if (rc == 0) json_free(&doc);
        free(s);
        free(want);
    }

    /* Escape errors. */
    expect_fail("invalid escape \\x", "\"\\x41\"", "invalid escape");
    expect_fail("invalid escape \\'", "\"\\'\"", "invalid escape");
    expect_fail("invalid escape \\U", "\"\\U0041\"", "invalid escape");
    expect_fail("invalid escape \\0", "\"\\0\"", "invalid escape");
    expect_fail("invalid escape: backslash then a control byte", "\"\\\x01\"", "byte 0x01");
    expect_fail("\\u with 3 hex digits", "\"\\u123\"", "four hex digits");
    expect_fail("\\u with a non-hex digit", "\"\\u12G4\"", "four hex digits");
    expect_fail("\\u with a sign", "\"\\u+123\"", "four hex digits");
    expect_fail("\\u at the end of the string", "\"\\u\"", "four hex digits");
    expect_fail("lone high surrogate at the end", "\"\\uD800\"", "lone surrogate");
    expect_fail("lone high surrogate then text", "\"\\uD83Dabcdef\"", "lone surrogate");
    expect_fail("high surrogate then a BMP escape", "\"\\uD83D\\u0041\"", "lone surrogate");
    expect_fail("high surrogate then a high surrogate", "\"\\uD83D\\uD83D\"", "lone surrogate");
    expect_fail("high surrogate then a short \\u", "\"\\uD83D\\uDE0\"", "lone surrogate");
    expect_fail("high surrogate then another escape", "\"\\uD83D\\n\"", "lone surrogate");
    expect_fail("lone low surrogate", "\"\\uDC00\"", "lone surrogate");
    expect_fail("low surrogate then high surrogate", "\"\\uDE00\\uD83D\"", "lone surrogate");
    expect_fail("lone surrogate in a key", "{\"\\uDFFF\": 1}", "lone surrogate");
    expect_fail("unterminated string", "\"abc", "unterminated string");
    expect_fail("unterminated string ending in a backslash", "\"abc\\", "unterminated string");
    expect_fail("unterminated string ending in an escaped quote", "\"abc\\\"", "unterminated string");
    expect_fail("single-quoted string", "'abc'", "expected a value");

    /* Control characters must be escaped. */
    expect_fail("raw newline in a string", "\"a\nb\"", "control character 0x0A");
    expect_fail("raw tab in a string", "\"a\tb\"", "control character 0x09");
    expect_fail_n("raw NUL in a string", "\"a\0b\"", 5, "control character 0x00");
    expect_fail("raw 0x1F in a string", "\"\x1f\"", "control character 0x1F");
    expect_fail("raw control character in a key", "{\"a\rb\": 1}", "control character 0x0D");

    /* Invalid UTF-8, each form Unicode's table 3-7 excludes. */
    static const struct { const char *name, *text, *want; } bad[] = {
        {"UTF-8: stray continuation byte 0x80", "\"\x80\"", "continuation byte"},
        {"UTF-8: stray continuation byte 0xBF", "\"a\xBF\"", "continuation byte"},
        {"UTF-8: overlong 2-byte C0 80 (NUL)", "\"\xC0\x80\"", "overlong"},
        {"UTF-8: overlong 2-byte C1 BF", "\"\xC1\xBF\"", "overlong"},
        {"UTF-8: overlong 3-byte E0 80 80", "\"\xE0\x80\x80\"", "overlong"},
        {"UTF-8: overlong 3-byte E0 9F BF", "\"\xE0\x9F\xBF\"", "overlong"},
        {"UTF-8: overlong 4-byte F0 80 80 80", "\"\xF0\x80\x80\x80\"", "overlong"},
        {"UTF-8: overlong 4-byte F0 8F BF BF", "\"\xF0\x8F\xBF\xBF\"", "overlong"},
        {"UTF-8: encoded surrogate ED A0 80 (U+D800)", "\"\xED\xA0\x80\"", "surrogate"},
        {"UTF-8: encoded surrogate ED BF BF (U+DFFF)", "\"\xED\xBF\xBF\"", "surrogate"},
        {"UTF-8: encoded surrogate pair ED A0 BD ED B8 80", "\"\xED\xA0\xBD\xED\xB8\x80\"", "surrogate"},
        {"UTF-8: F4 90 80 80 (U+110000)", "\"\xF4\x90\x80\x80\"", "above U+10FFFF"},
        {"UTF-8: F5 lead byte", "\"\xF5\x80\x80\x80\"", "above U+10FFFF"},
        {"UTF-8: F7 BF BF BF", "\"\xF7\xBF\xBF\xBF\"", "above U+10FFFF"},
        {"UTF-8: 5-byte form F8 88 80 80 80", "\"\xF8\x88\x80\x80\x80\"", "never occurs"},
        {"UTF-8: 6-byte form FC 84 80 80 80 80", "\"\xFC\x84\x80\x80\x80\x80\"", "never occurs"},
        {"UTF-8: byte FE", "\"\xFE\"", "never occurs"},
        {"UTF-8: byte FF", "\"\xFF\"", "never occurs"},
        {"UTF-8: 2-byte sequence cut by the quote", "\"\xC3\"", "cut short"},
        {"UTF-8: 3-byte sequence cut by the quote", "\"\xE2\x82\"", "cut short"},
        {"UTF-8: 4-byte sequence cut by the quote", "\"\xF0\x9F\x98\"", "cut short"},
        {"UTF-8: lead byte followed by ASCII", "\"\xC3(\"", "cut short"},
        {"UTF-8: 3-byte lead, third byte not a continuation", "\"\xE2\x82(\"", "cut short"},
        {"UTF-8: 4-byte lead followed by a lead byte", "\"\xF0\xC3\xA9\xA9\"", "cut short"},
        {"UTF-8: invalid bytes in a key", "{\"\xC0\xAF\": 1}", "overlong"},
        {"UTF-8 outside a string (raw é as a value)", "\xC3\xA9", "expected a value, found byte 0xC3"},
        {"UTF-8 BOM in the middle", "[\xEF\xBB\xBF]", "byte 0xEF"},
        {"non-breaking space (C2 A0) is not whitespace", "[1,\xC2\xA0" "2]", "byte 0xC2"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) expect_fail(bad[i].name, bad[i].text, bad[i].want);

    /* Every 1- and 2-byte sequence after a quote, against an independent
       rule: valid exactly when Unicode says so. */
    {
        int wrong = 0;
        char detail[64] = "";
        for (int a = 0x80; a < 0x100 && !wrong; a++) {
            for (int b = 0; b < 0x100 && !wrong; b++) {
                unsigned char s[4] = {'"', (unsigned char)a, (unsigned char)b, '"'};
                int valid = a >= 0xC2 && a <= 0xDF && b >= 0x80 && b <= 0xBF;
                JsonDoc doc;
                int rc = parse_n(&doc, (const char *)s, 4);
                if (rc == 0) json_free(&doc);
                if ((rc == 0) != valid || (rc != 0 && !well_formed_error(err))) {
                    wrong = 1;
                    snprintf(detail, sizeof detail, "bytes %02X %02X: rc %d", a, b, rc);
                }
            }
        }
        check(!wrong, "all 2-byte sequences: only C2..DF 80..BF accepted", "%s", detail);
        wrong = 0;
        for (int a = 0xE0; a < 0x100 && !wrong; a++) {
            for (int b = 0x80; b < 0xC0 && !wrong; b++) {
                unsigned char s[5] = {'"', (unsigned char)a, (unsigned char)b, 0x80, '"'};
                int valid = (a == 0xE0 && b >= 0xA0) || (a >= 0xE1 && a <= 0xEC) || (a == 0xED && b <= 0x9F) ||
                            (a == 0xEE || a == 0xEF);
                JsonDoc doc;
                int rc = parse_n(&doc, (const char *)s, 5);
                if (rc == 0) json_free(&doc);
                if ((rc == 0) != valid) {
                    wrong = 1;
                    snprintf(detail, sizeof detail, "bytes %02X %02X 80: rc %d", a, b, rc);
                }
            }
        }
        check(!wrong, "all 3-byte lead/second-byte pairs: no overlongs, no surrogates", "%s", detail);
        wrong = 0;
        for (int a = 0xF0; a < 0x100 && !wrong; a++) {
            for (int b = 0x80; b < 0xC0 && !wrong; b++) {
                unsigned char s[6] = {'"', (unsigned char)a, (unsigned char)b, 0x80, 0x80, '"'};
                int valid = (a == 0xF0 && b >= 0x90) || (a >= 0xF1 && a <= 0xF3) || (a == 0xF4 && b <= 0x8F);
                JsonDoc doc;
                int rc = parse_n(&doc, (const char *)s, 6);
                if (rc == 0) json_free(&doc);
                if ((rc == 0) != valid) {
                    wrong = 1;
                    snprintf(detail, sizeof detail, "bytes %02X %02X 80 80: rc %d", a, b, rc);
                }
            }
        }
        check(!wrong, "all 4-byte lead/second-byte pairs: no overlongs, nothing above U+10FFFF", "%s", detail);
    }

    /* Every \uXXXX outside the surrogates decodes to the same UTF-8 that the
       raw character parses to. */
    {
        int wrong = 0;
        long bad_cp = -1;
        for (long cp = 1; cp < 0x10000 && !wrong; cp++) {
            if (cp >= 0xD800 && cp <= 0xDFFF) continue;
            char esc[16];
            snprintf(esc, sizeof esc, "\"\\u%04lx\"", cp);
            JsonDoc doc;
            if (parse(&doc, esc) != 0) { wrong = 1; bad_cp = cp; break; }
            const unsigned char *u = (const unsigned char *)doc.root.str;
            long back = -1;
            if (doc.root.len == 1) back = u[0];
            else if (doc.root.len == 2) back = (u[0] & 0x1F) << 6 | (u[1] & 0x3F);
            else if (doc.root.len == 3) back = (u[0] & 0x0F) << 12 | (u[1] & 0x3F) << 6 | (u[2] & 0x3F);
            size_t want_len = cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
            if (back != cp || doc.root.len != want_len) { wrong = 1; bad_cp = cp; }
            json_free(&doc);
        }
        check(!wrong, "every \\uXXXX from 0001 to FFFF (no surrogates) encodes to shortest UTF-8", "U+%04lX", bad_cp);
    }
}

/* ------------------------------------------------------------------------ */
/* Numbers */

static void test_numbers(void)
{
    expect_number("number 0", "0", 0.0);
    expect_number("number -0 keeps its sign", "-0", -0.0);
    expect_number("number -0.0 keeps its sign", "-0.0", -0.0);
    expect_number("number 1", "1", 1.0);
    expect_number("number -1", "-1", -1.0);
    expect_number("number 123456789", "123456789", 123456789.0);
    expect_number("number 1.5", "1.5", 1.5);
    expect_number("number 0.1 (correctly rounded)", "0.1", 0.1);
    expect_number("number -1.5e3", "-1.5e3", -1500.0);
    expect_number("number 1E+2", "1E+2", 100.0);
    expect_number("number 1e-2", "1e-2", 0.01);
    expect_number("number 1e00 (exponent with leading zeros is fine)", "1e00", 1.0);
    expect_number("number 0e0", "0e0", 0.0);
    expect_number("number 0.000", "0.000", 0.0);
    expect_number("number 10", "10", 10.0);
    expect_number("number 2.5e-3", "2.5e-3", 2.5e-3);
    expect_number("number 1e-7 (rms_norm_eps)", "1e-07", 1e-7);
    expect_number("number 500000.0 (rope_theta)", "500000.0", 500000.0);
    expect_number("number 999999999999999 (15 digits, fast path)", "999999999999999", 999999999999999.0);
    expect_number("number 9007199254740993 rounds like strtod", "9007199254740993", 9007199254740992.0);
    expect_number("big int 12345678901234567890", "12345678901234567890", 12345678901234567890.0);
    expect_number("big negative int", "-98765432109876543210", -98765432109876543210.0);
    expect_number("largest double", "1.7976931348623157e308", 1.7976931348623157e308);
    expect_number("smallest subnormal", "4.9406564584124654e-324", 4.9406564584124654e-324);
    expect_number("underflow to zero is accepted", "1e-400", 0.0);
    {
        JsonDoc doc;
        int rc = parse(&doc, "[3.25,-7,1e2]");
        double a = 0, b = 0, c = 0;
        check(rc == 0 && doc.root.len == 3 && json_double(&doc.root.items[0], &a) == 0 && a == 3.25 &&
                  json_double(&doc.root.items[1], &b) == 0 && b == -7 && json_double(&doc.root.items[2], &c) == 0 &&
                  c == 100,
              "numbers as array elements, the last against ']'", "rc %d", rc);
        if (rc == 0) json_free(&doc);
    }
    /* A 400-digit number: longer than any fixed buffer. */
    {
        char s[420];
        s[0] = '1';
        memset(s + 1, '0', 399);
        memcpy(s + 400, ".5e-300", 7);
        JsonDoc doc;
        int rc = parse_n(&doc, s, 407);
        check(rc == 0 && fabs(doc.root.number / 1e99 - 1) < 1e-15, "400-digit number with fraction and exponent",
              "rc %d: %s", rc, err);
        if (rc == 0) json_free(&doc);
    }
    /* Numbers at the very end of the buffer (no NUL after them). */
    expect_number("number ending the input: 7", "7", 7);
    expect_number("number ending the input: 1.25", "1.25", 1.25);
    expect_number("number ending the input: 5e3", "5e3", 5000);

    static const struct { const char *name, *text, *want; } bad[] = {
        {"leading zero 01", "01", "leading zeros"},
        {"leading zero -01", "-01", "leading zeros"},
        {"leading zeros 00", "00", "leading zeros"},
        {"leading zero 00.5", "00.5", "leading zeros"},
        {"plus sign +1", "+1", "expected a value, found '+'"},
        {"no integer part .5", ".5", "expected a value, found '.'"},
        {"no integer part -.5", "-.5", "expected a digit after '-'"},
        {"no fraction digits 1.", "1.", "after the decimal point"},
        {"no fraction digits 1.e5", "1.e5", "after the decimal point"},
        {"no fraction digits in an array [1.]", "[1.]", "after the decimal point"},
        {"lone minus", "-", "expected a digit after '-'"},
        {"minus then space", "- 1", "expected a digit after '-'"},
        {"minus minus", "--1", "expected a digit after '-'"},
        {"no exponent digits 1e", "1e", "in the exponent"},
        {"no exponent digits 1e+", "1e+", "in the exponent"},
        {"no exponent digits 1E-", "1E-", "in the exponent"},
        {"no exponent digits 1e+-1", "1e+-1", "in the exponent"},
        {"NaN", "NaN", "expected a value"},
        {"nan", "nan", "invalid literal"},
        {"Infinity", "Infinity", "expected a value"},
        {"-Infinity", "-Infinity", "expected a digit after '-'"},
        {"inf", "inf", "expected a value"},
        {"hex 0x10", "0x10", "after the JSON value"},
        {"overflow 1e400", "1e400", "out of range"},
        {"overflow -1e400", "-1e400", "out of range"},
        {"overflow 2e308", "[2e308]", "out of range"},
        {"huge 400-digit exponent", "1e99999999999999999999999999999999999999", "out of range"},
        {"two numbers 1 2", "1 2", "after the JSON value"},
        {"1.5.3", "1.5.3", "after the JSON value"},
        {"comma decimal 1,5", "1,5", "after the JSON value"},
        {"Arabic-Indic digit", "\xD9\xA1", "expected a value"},
        {"full-width digit", "\xEF\xBC\x91", "expected a value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) expect_fail(bad[i].name, bad[i].text, bad[i].want);

    /* json_int: integral values within int range only. */
    static const struct { const char *text; int ok; int want; } ints[] = {
        {"0", 1, 0},           {"-0", 1, 0},          {"2147483647", 1, INT_MAX}, {"-2147483648", 1, INT_MIN},
        {"2147483648", 0, 0},  {"-2147483649", 0, 0}, {"1e2", 1, 100},            {"1.0", 1, 1},
        {"1.5", 0, 0},         {"-0.5", 0, 0},        {"1e300", 0, 0},            {"-1e300", 0, 0},
        {"4294967296", 0, 0},  {"1e-300", 0, 0},      {"2147483647.5", 0, 0},     {"12345678901234567890", 0, 0},
        {"\"5\"", 0, 0},       {"true", 0, 0},        {"null", 0, 0},             {"[5]", 0, 0},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        JsonDoc doc;
        char name[80];
        snprintf(name, sizeof name, "json_int(%s) %s", ints[i].text, ints[i].ok ? "is exact" : "fails");
        if (parse(&doc, ints[i].text) != 0) {
            check(0, name, "%s", err);
            continue;
        }
        int out = 12345;
        int rc = json_int(&doc.root, &out);
        check(ints[i].ok ? rc == 0 && out == ints[i].want : rc == -1 && out == 12345, name, "rc %d out %d", rc, out);
        json_free(&doc);
    }
    int out = 7;
    double dout = 7;
    check(json_int(NULL, &out) == -1 && json_double(NULL, &dout) == -1 && json_bool(NULL, &out) == -1 && out == 7,
          "typed reads of NULL fail and leave *out alone", " ");

    /* strtod follows LC_NUMERIC; the parser must not. */
    const char *locales[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8", "ru_RU.UTF-8"};
    const char *got = NULL;
    for (size_t i = 0; i < sizeof locales / sizeof locales[0] && !got; i++) got = setlocale(LC_NUMERIC, locales[i]);
    if (got && localeconv()->decimal_point[0] != '.') {
        expect_number("1.5 under a locale with a decimal comma", "1.5", 1.5);
        expect_number("-2.75e1 under a locale with a decimal comma", "-2.75e1", -27.5);
        expect_fail("1,5 under a locale with a decimal comma is still two tokens", "1,5", "after the JSON value");
    } else {
        printf("SKIP decimal-comma locale checks: no such locale installed\n");
    }
    setlocale(LC_NUMERIC, "C");
}

/* ------------------------------------------------------------------------ */
/* Structure errors, trailing garbage, whitespace, BOM */

static void test_structure(void)
{
    static const struct { const char *name, *text, *want; } bad[] = {
        {"trailing comma in an array", "[1,]", "expected a value, found ']'"},
        {"leading comma in an array", "[,1]", "expected a value, found ','"},
        {"double comma in an array", "[1,,2]", "expected a value"},
        {"missing comma in an array", "[1 2]", "expected ',' or ']'"},
        {"trailing comma in an object", "{\"a\":1,}", "expected a string key"},
        {"member without a value", "{\"a\"}", "expected ':'"},
        {"member without a colon", "{\"a\" 1}", "expected ':'"},
        {"member with an empty value", "{\"a\":}", "expected a value"},
        {"number as a key", "{1:2}", "expected a string key"},
        {"unquoted key", "{a:1}", "expected a string key"},
        {"single-quoted key", "{'a':1}", "expected a string key"},
        {"missing comma in an object", "{\"a\":1 \"b\":2}", "expected ',' or '}'"},
        {"array closed with }", "[1}", "expected ',' or ']'"},
        {"object closed with ]", "{\"a\":1]", "expected ',' or '}'"},
        {"lone ]", "]", "expected a value"},
        {"lone }", "}", "expected a value"},
        {"lone :", ":", "expected a value"},
        {"unclosed [", "[", "end of input"},
        {"unclosed {", "{", "end of input"},
        {"unclosed [1,2", "[1,2", "end of input"},
        {"unclosed {\"a\":", "{\"a\":", "end of input"},
        {"unclosed {\"a\"", "{\"a\"", "end of input"},
        {"unclosed {\"a\":1,", "{\"a\":1,", "end of input"},
        {"truncated true", "tru", "invalid literal"},
        {"truncated null in an array", "[nul", "invalid literal"},
        {"misspelled false", "fals3", "invalid literal"},
        {"capitalised True", "True", "expected a value"},
        {"NULL", "NULL", "expected a value"},
        {"literal followed by letters", "[truex]", "expected ',' or ']'"},
        {"block comment", "/* c */ 1", "expected a value, found '/'"},
        {"line comment after a value", "[1] // c", "after the JSON value"},
        {"trailing garbage after an object", "{} x", "unexpected 'x' after the JSON value"},
        {"trailing ] after an array", "[1]]", "unexpected ']' after the JSON value"},
        {"two objects", "{}{}", "after the JSON value"},
        {"two strings", "\"a\"\"b\"", "after the JSON value"},
        {"nullx", "nullx", "after the JSON value"},
        {"trailing NUL byte", "[]\0", "byte 0x00 after the JSON value"},
        {"form feed is not whitespace", "\f[]", "byte 0x0C"},
        {"vertical tab is not whitespace", "[1,\v2]", "byte 0x0B"},
        {"BOM alone", "\xEF\xBB\xBF", "end of input"},
        {"two BOMs", "\xEF\xBB\xBF\xEF\xBB\xBF[]", "byte 0xEF"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = strlen(bad[i].text);
        if (!strcmp(bad[i].name, "trailing NUL byte")) n = 3;
        expect_fail_n(bad[i].name, bad[i].text, n, bad[i].want);
    }

    JsonDoc doc;
    int rc = parse(&doc, "\xEF\xBB\xBF{\"a\": 1}");
    check(rc == 0 && json_get(&doc.root, "a"), "a leading UTF-8 BOM is skipped (RFC 8259 8.1)", "%s", err);
    if (rc == 0) json_free(&doc);
    rc = parse(&doc, " \t\r\n[ \t\r\n1 \t\r\n, \t\r\n{ \t\r\n\"k\" \t\r\n: \t\r\n2 \t\r\n} \t\r\n] \t\r\n");
    check(rc == 0 && doc.root.len == 2 && doc.root.items[1].len == 1, "all four whitespace bytes between every token",
          "%s", err);
    if (rc == 0) json_free(&doc);

    /* Error positions: line counts '\n', column counts characters from 1. */
    const char *s1 = "{\n  \"a\": 1,\n  \"b\": x\n}";
    expect_fail_at("error position: line 3, column 8", s1, strlen(s1), 3, 8);
    const char *s2 = "[\"\xC3\xA9\", x]";
    expect_fail_at("error column counts a 2-byte character once", s2, strlen(s2), 1, 7);
    const char *s3 = "[\r\n1,\r\n?]";
    expect_fail_at("CRLF line ends count one line each", s3, strlen(s3), 3, 1);
    const char *s4 = "[1, 2";
    expect_fail_at("truncation is reported at the end of input", s4, strlen(s4), 1, 6);
    const char *s5 = "[\n\"abc";
    expect_fail_at("unterminated string is reported at its opening quote", s5, strlen(s5), 2, 1);
    const char *s6 = "[\"ab\\qc\"]";
    expect_fail_at("invalid escape is reported at its backslash", s6, strlen(s6), 1, 5);
    const char *s7 = "[\"ab\xE0\x80\x80\"]";
    expect_fail_at("invalid UTF-8 is reported at its lead byte", s7, strlen(s7), 1, 5);
    const char *s8 = "[0, 012]";
    expect_fail_at("leading zero is reported at the number", s8, strlen(s8), 1, 5);
    const char *s9 = "[\"\\uD800x\"]";
    expect_fail_at("lone surrogate is reported at its escape", s9, strlen(s9), 1, 3);
    expect_fail_at("empty input is line 1, column 1", "", 0, 1, 1);

    /* Small or missing error buffers. */
    char small[12];
    memset(small, 'Z', sizeof small);
    rc = json_parse(&doc, "[1,", 3, small, sizeof small);
    check(rc == -1 && memchr(small, '\0', sizeof small) && !strncmp(small, "line 1, co", 10),
          "a small error buffer is truncated and NUL-terminated", "%.12s", small);
    rc = json_parse(&doc, "[1,", 3, NULL, 0);
    check(rc == -1 && doc_is_empty(&doc), "no error buffer at all", " ");
    char one = 'Z';
    rc = json_parse(&doc, "[1,", 3, &one, 1);
    check(rc == -1 && one == '\0', "a 1-byte error buffer gets just the NUL", " ");
    rc = json_parse(&doc, "[1]", 3, NULL, 0);
    check(rc == 0 && doc.root.len == 1, "success needs no error buffer", " ");
    if (rc == 0) json_free(&doc);
}

/* ------------------------------------------------------------------------ */
/* Nesting */

/* depth arrays [[[...]]] or objects {"a":{"a":...}} around a 1, alternating
   when mixed. Returns the text (malloc'd), its length in *n. */
static char *nested(int depth, int mixed, size_t *n)
{
    char *s = malloc((size_t)depth * 6 + 8), *w = s;
    for (int i = 0; i < depth; i++) {
        if (mixed && i % 2) { memcpy(w, "{\"a\":", 5); w += 5; }
        else *w++ = '[';
    }
    *w++ = '1';
    for (int i = depth - 1; i >= 0; i--) *w++ = mixed && i % 2 ? '}' : ']';
    *n = (size_t)(w - s);
    return s;
}

static void test_nesting(void)
{
    JsonDoc doc;
    size_t n;
    char *s;
    char name[96];

    for (int mixed = 0; mixed < 2; mixed++) {
        const char *what = mixed ? "arrays and objects" : "arrays";
        s = nested(JSON_MAX_DEPTH, mixed, &n);
        int rc = parse_n(&doc, s, n);
        int depth = 0, iv = 0;
        const JsonValue *v = &doc.root;
        if (rc == 0) {
            while (v && (v->type == JSON_ARRAY || v->type == JSON_OBJECT)) {
                depth++;
                v = json_array_item(v, 0);
            }
        }
        snprintf(name, sizeof name, "%d nested %s (the limit) parse, innermost value 1", JSON_MAX_DEPTH, what);
        check(rc == 0 && depth == JSON_MAX_DEPTH && json_int(v, &iv) == 0 && iv == 1, name, "rc %d depth %d: %s", rc,
              depth, rc ? err : "");
        if (rc == 0) json_free(&doc);
        free(s);

        s = nested(JSON_MAX_DEPTH + 1, mixed, &n);
        snprintf(name, sizeof name, "%d nested %s (one past the limit) fail", JSON_MAX_DEPTH + 1, what);
        expect_fail_n(name, s, n, "nesting deeper than");
        free(s);
    }

    /* Far past the limit, open only, and open-close repeated: no recursion,
       no stack growth, a clean error. */
    n = 1000000;
    s = malloc(n);
    memset(s, '[', n);
    expect_fail_n("a million '[' fail cleanly", s, n, "nesting deeper than");
    for (size_t i = 0; i < n; i++) s[i] = i % 2 ? '{' : '[';
    expect_fail_n("a million alternating '[' and '{' fail cleanly", s, n, NULL);
    free(s);
    /* Depth is per path, not in total: many siblings at the limit are fine. */
    {
        size_t one;
        char *inner = nested(JSON_MAX_DEPTH - 1, 0, &one);
        size_t reps = 50;
        char *t = malloc(reps * (one + 1) + 2), *w = t;
        *w++ = '[';
        for (size_t i = 0; i < reps; i++) {
            if (i) *w++ = ',';
            memcpy(w, inner, one);
            w += one;
        }
        *w++ = ']';
        int rc = parse_n(&doc, t, (size_t)(w - t));
        check(rc == 0 && doc.root.len == reps, "50 sibling subtrees each at the depth limit", "rc %d: %s", rc,
              rc ? err : "");
        if (rc == 0) json_free(&doc);
        free(inner);
        free(t);
    }
}

/* ------------------------------------------------------------------------ */
/* Truncations and corruptions of a document that uses every feature */

static const char sample[] =
    "{\n"
    "  \"version\": \"1.0\",\n"
    "  \"truncation\": null,\n"
    "  \"padding\": {\"strategy\": \"BatchLongest\", \"pad_id\": 0, \"enabled\": true, \"off\": false},\n"
    "  \"added_tokens\": [\n"
    "    {\"id\": 0, \"content\": \"<unk>\", \"special\": true, \"lstrip\": false},\n"
    "    {\"id\": 1, \"content\": \"<s>\", \"special\": true, \"weight\": -1.25e-3},\n"
    "    {\"id\": 2, \"content\": \"\\u0000\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"special\": false}\n"
    "  ],\n"
    "  \"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\xE2\x96\x81\"},\n"
    "  \"model\": {\n"
    "    \"type\": \"BPE\", \"dropout\": null, \"fuse_unk\": true, \"theta\": 500000.0, \"big\": 12345678901234567890,\n"
    "    \"vocab\": {\"<unk>\": 0, \"\xC4\xA0t\": 1, \"\\u00e9t\\u00e9\": 2, \"\\uD83D\\uDE00\": 3, \"\xF0\x9F\x98\x80x\": 4,\n"
    "              \"\xE4\xB8\xAD\": 5, \"a\": -0, \"\": 7, \"nested\": [[], {}, [[1, 2], {\"k\": [3]}]]},\n"
    "    \"merges\": [\"\xC4\xA0 t\", \"e t\", \"\\u00e9 t\", \"x y\"]\n"
    "  }\n"
    "}";

static int check_sample(const JsonDoc *doc)
{
    const JsonValue *r = &doc->root, *m = json_get(r, "model"), *voc = json_get(m, "vocab");
    const JsonValue *at = json_get(r, "added_tokens"), *mer = json_get(m, "merges");
    int iv = -1;
    const char *c2 = json_string(json_get(json_array_item(at, 2), "content"));
    return r->type == JSON_OBJECT && r->len == 6 && voc && voc->len == 9 && at && at->len == 3 && mer &&
           mer->len == 4 && json_int(json_get(voc, "\xF0\x9F\x98\x80"), &iv) == 0 && iv == 3 &&
           json_int(json_get(voc, "\xC3\xA9t\xC3\xA9"), &iv) == 0 && iv == 2 && c2 &&
           json_get(json_array_item(at, 2), "content")->len == 9 && !memcmp(c2, "\0\"\\/\b\f\n\r\t", 9) &&
           !strcmp(json_string(json_get(json_get(r, "normalizer"), "content")), "\xE2\x96\x81") &&
           !strcmp(json_string(json_array_item(mer, 2)), "\xC3\xA9 t");
}

static void test_truncation_and_corruption(void)
{
    size_t n = sizeof sample - 1;
    JsonDoc doc;
    int rc = parse_n(&doc, sample, n);
    check(rc == 0 && check_sample(&doc), "the sample document parses and reads back", "%s", rc ? err : "wrong values");
    if (rc == 0) json_free(&doc);

    /* Every proper prefix is invalid (the root is an object). */
    size_t bad = 0, first_bad = 0;
    char detail[300] = "";
    for (size_t cut = 0; cut < n; cut++) {
        rc = parse_n(&doc, sample, cut);
        if (rc == 0) json_free(&doc);
        if (rc != -1 || !well_formed_error(err) || !doc_is_empty(&doc)) {
            if (!bad++) { first_bad = cut; snprintf(detail, sizeof detail, "rc %d, \"%s\"", rc, err); }
        }
    }
    char name[128];
    snprintf(name, sizeof name, "truncated at each of %zu offsets: every one fails cleanly with one error line", n);
    check(bad == 0, name, "%zu bad, first at %zu: %s", bad, first_bad, detail);

    /* Truncations end exactly at the end of the buffer: the error must point
       inside or right at its end, never past it. */
    bad = 0;
    for (size_t cut = 1; cut < n; cut++) {
        rc = parse_n(&doc, sample, cut);
        unsigned long line = 0, col = 0;
        sscanf(err, "line %lu, column %lu", &line, &col);
        unsigned long lines = 1;
        for (size_t i = 0; i < cut; i++) lines += sample[i] == '\n';
        if (rc == 0) json_free(&doc);
        if (line < 1 || line > lines) bad++;
    }
    check(bad == 0, "errors in truncated documents point within the text", "%zu bad", bad);

    /* Every byte replaced by each of a few troublemakers: parse or fail,
       never crash, always a well-formed error. */
    static const unsigned char subst[] = {0x00, '"', '\\', '[', ']', '{', '}', ',', ':', '0', '-', 'e', '.',
                                          0x80, 0xC3, 0xED, 0xF4, 0xFF, '\n', 'u'};
    char *copy = malloc(n);
    size_t parsed = 0, failed = 0;
    bad = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < sizeof subst; k++) {
            memcpy(copy, sample, n);
            copy[i] = (char)subst[k];
            rc = parse_n(&doc, copy, n);
            if (rc == 0) { parsed++; json_free(&doc); }
            else if (rc == -1 && well_formed_error(err) && doc_is_empty(&doc)) failed++;
            else bad++;
        }
    }
    snprintf(name, sizeof name, "%zu single-byte corruptions: %zu parse, %zu fail cleanly", n * sizeof subst, parsed,
             failed);
    check(bad == 0, name, "%zu misbehaved", bad);

    /* Every byte deleted. */
    bad = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(copy, sample, i);
        memcpy(copy + i, sample + i + 1, n - i - 1);
        rc = parse_n(&doc, copy, n - 1);
        if (rc == 0) json_free(&doc);
        else if (rc != -1 || !well_formed_error(err)) bad++;
    }
    check(bad == 0, "each byte deleted in turn: parse or fail cleanly", "%zu misbehaved", bad);
    free(copy);

    /* Random inputs over JSON's alphabet: a crude fuzzer, deterministic. */
    {
        static const char alphabet[] = "{}[]\",:\\/ \n0123456789-+.eEtruefalsnbfu\xC3\xA9\xED\xF0\x9F\x80";
        uint64_t x = 12345; /* 64 bits on every target: the LCG below needs them */
        char buf[64];
        bad = 0;
        size_t ok = 0;
        for (int iter = 0; iter < 200000; iter++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t len = (x >> 33) % sizeof buf;
            for (size_t i = 0; i < len; i++) {
                x = x * 6364136223846793005ULL + 1442695040888963407ULL;
                buf[i] = alphabet[(x >> 33) % (sizeof alphabet - 1)];
            }
            rc = parse_n(&doc, buf, len);
            if (rc == 0) { ok++; json_free(&doc); }
            else if (rc != -1 || !well_formed_error(err)) bad++;
        }
        snprintf(name, sizeof name, "200000 random inputs (%zu valid): no crash, every error well formed", ok);
        check(bad == 0, name, "%zu misbehaved", bad);
    }
}

/* ------------------------------------------------------------------------ */
/* A large document the size of a real tokenizer.json */

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

static void put(Buf *b, const char *s, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) { perror("realloc"); exit(2); }
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void puts_buf(Buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void putf(Buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    put(b, tmp, (size_t)n);
}

/* The decoded form of vocabulary entry i, as the generator writes it. */
static size_t vocab_key(char *out, int i)
{
    switch (i % 4) {
    case 0: return (size_t)sprintf(out, "\xC4\xA0word%d_suffix_for_length", i);
    case 1: return (size_t)sprintf(out, "piece%d\"quoted\"\\", i);
    case 2: return (size_t)sprintf(out, "\xC3\xA9t\xC3\xA9%d\xF0\x9F\x98\x80", i);
    default: return (size_t)sprintf(out, "tok%d/\n", i);
    }
}

static void test_large(void)
{
    const int nv = 150000, nm = 150000;
    Buf b = {0};
    puts_buf(&b, "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true}],\n");
    puts_buf(&b, "\"model\": {\"type\": \"BPE\", \"vocab\": {\n");
    for (int i = 0; i < nv; i++) {
        /* Written the way tokenizer.json files are: raw UTF-8 mostly, with
           escapes sprinkled in. */
        switch (i % 4) {
        case 0: putf(&b, "    \"\xC4\xA0word%d_suffix_for_length\": %d", i, i); break;
        case 1: putf(&b, "    \"piece%d\\\"quoted\\\"\\\\\": %d", i, i); break;
        case 2: putf(&b, "    \"\\u00e9t\xC3\xA9%d\\uD83D\\uDE00\": %d", i, i); break;
        default: putf(&b, "    \"tok%d\\/\\n\": %d", i, i); break;
        }
        puts_buf(&b, i + 1 < nv ? ",\n" : "\n");
    }
    puts_buf(&b, "  },\n  \"merges\": [\n");
    for (int i = 0; i < nm; i++) {
        putf(&b, "    \"\xC4\xA0w%d ord_%d_merged_piece\"%s\n", i, i * 7, i + 1 < nm ? "," : "");
    }
    puts_buf(&b, "  ]\n}}\n");

    JsonDoc doc;
    /* The text lives in a buffer of exactly its size, like a mapped file. */
    char *text = malloc(b.n);
    memcpy(text, b.p, b.n);
    free(b.p);
    double t0 = now_ms();
    int rc = json_parse(&doc, text, b.n, err, sizeof err);
    double ms = now_ms() - t0;
    char name[160];
    snprintf(name, sizeof name, "large document (%.1f MB, %d-member vocab, %d merges) parses in %.1f ms", b.n / 1e6, nv,
             nm, ms);
    /* Generous: catches quadratic behaviour even under sanitizers. The
       optimised build takes a few tens of milliseconds. */
    check(rc == 0 && ms < 5000, name, "rc %d: %s", rc, rc ? err : "too slow");
    if (rc != 0) { free(text); return; }
    free(text); /* the document must not need the text any more */

    const JsonValue *model = json_get(&doc.root, "model");
    const JsonValue *vocab = json_get(model, "vocab"), *merges = json_get(model, "merges");
    check(vocab && vocab->type == JSON_OBJECT && vocab->len == (size_t)nv, "vocab has 150000 members", "len %zu",
          vocab ? vocab->len : 0);
    check(merges && merges->type == JSON_ARRAY && merges->len == (size_t)nm, "merges has 150000 entries", "len %zu",
          merges ? merges->len : 0);
    if (vocab && vocab->len == (size_t)nv) {
        int wrong = -1;
        char want[128];
        for (int i = 0; i < nv && wrong < 0; i++) {
            const JsonValue *m = &vocab->items[i];
            size_t wn = vocab_key(want, i);
            int id = -1;
            if (m->key_len != wn || memcmp(m->key, want, wn) || m->key[wn] != '\0' || json_int(m, &id) || id != i)
                wrong = i;
        }
        check(wrong < 0, "every vocab key decoded and every id read back", "first wrong at %d", wrong);
        /* json_get is linear; a handful of look-ups is fine. */
        int id = -1;
        vocab_key(want, nv - 1);
        check(json_int(json_get(vocab, want), &id) == 0 && id == nv - 1, "json_get finds the last vocab entry", "%d", id);
        vocab_key(want, 2);
        check(json_int(json_get(vocab, want), &id) == 0 && id == 2, "json_get finds an escaped vocab key", "%d", id);
    }
    if (merges && merges->len == (size_t)nm) {
        int wrong = -1;
        char want[128];
        for (int i = 0; i < nm && wrong < 0; i++) {
            const JsonValue *m = &merges->items[i];
            int wn = sprintf(want, "\xC4\xA0w%d ord_%d_merged_piece", i, i * 7);
            if (m->type != JSON_STRING || m->len != (size_t)wn || memcmp(m->str, want, (size_t)wn) || m->key) wrong = i;
        }
        check(wrong < 0, "every merge string read back", "first wrong at %d", wrong);
    }
    json_free(&doc);

    /* Many small documents in a row: memory goes back each time (ASan's
       leak checker would report otherwise) and nothing is shared. */
    int ok = 1;
    for (int i = 0; i < 1000 && ok; i++) {
        char t[64];
        int tn = sprintf(t, "{\"i\": %d, \"s\": [\"%d\"]}", i, i);
        int iv = -1;
        if (parse_n(&doc, t, (size_t)tn) != 0) { ok = 0; break; }
        ok = json_int(json_get(&doc.root, "i"), &iv) == 0 && iv == i;
        json_free(&doc);
    }
    check(ok, "1000 documents parsed and freed one after another", " ");

    /* An array of a million small numbers: values far outnumber the text's
       bytes, so the arena has to grow well past its first block. */
    {
        size_t count = 1000000;
        char *t = malloc(count * 2 + 1), *w = t;
        *w++ = '[';
        for (size_t i = 0; i < count; i++) {
            *w++ = (char)('0' + i % 10);
            *w++ = i + 1 < count ? ',' : ']';
        }
        t0 = now_ms();
        rc = parse_n(&doc, t, (size_t)(w - t));
        ms = now_ms() - t0;
        int good = rc == 0 && doc.root.len == count;
        for (size_t i = 0; good && i < count; i += 9973) good = doc.root.items[i].number == (double)(i % 10);
        snprintf(name, sizeof name, "array of a million one-digit numbers parses in %.1f ms", ms);
        check(good, name, "rc %d: %s", rc, rc ? err : "wrong values");
        if (rc == 0) json_free(&doc);
        free(t);
    }
}

int main(void)
{
    test_kinds();
    test_strings();
    test_numbers();
    test_structure();
    test_nesting();
    test_truncation_and_corruption();
    test_large();
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
