/* json.h - a small JSON reader for the converter (config.json,
 * tokenizer.json, tokenizer_config.json, safetensors headers).
 *
 * Single header in the stb style: define JSON_IMPLEMENTATION in one C file.
 * The whole document is parsed into one arena; values point into it. Strings
 * are decoded (escapes, \uXXXX with surrogate pairs, to UTF-8) and
 * NUL-terminated, but may contain NUL bytes, so use len. Malformed input,
 * including invalid UTF-8, lone surrogates, trailing garbage and nesting
 * deeper than JSON_MAX_DEPTH, gives an error with the line and column.
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
    JsonValue *items;     /* JSON_ARRAY: elements; JSON_OBJECT: member values, in file order */
    const char *key;      /* for a member of an object: its decoded key, NUL-terminated */
    size_t key_len;
};

typedef struct {
    JsonValue root;
    void *arena;          /* everything the document allocated */
} JsonDoc;

#define JSON_MAX_DEPTH 256

/* Parses len bytes. Returns 0, or -1 with one line in err ("line L, column C: ..."). */
int json_parse(JsonDoc *doc, const char *text, size_t len, char *err, size_t errlen);
void json_free(JsonDoc *doc);

/* The member `key` of an object, or NULL when v is not an object or has no such member
   (the last one wins when a key repeats). */
const JsonValue *json_get(const JsonValue *v, const char *key);

/* Typed reads: return 0 and set *out when v exists and has the right type
   (json_int also requires an integral number within int range), else -1. */
int json_int(const JsonValue *v, int *out);
int json_double(const JsonValue *v, double *out);
int json_bool(const JsonValue *v, int *out);
const char *json_string(const JsonValue *v); /* NULL when not a string */

#endif
