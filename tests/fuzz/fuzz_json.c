/* fuzz_json: the JSON reader (config.json, tokenizer.json, chat histories,
   safetensors headers). A document either parses, and every value in it can
   be walked, or fails with one error line; json_free releases everything. */
#include "../../json.h"

static void walk(const JsonValue *v, int depth) {
    if (depth > JSON_MAX_DEPTH + 1) fuzz_fail("a document deeper than JSON_MAX_DEPTH was accepted");
    int i;
    double d;
    json_int(v, &i), json_double(v, &d), json_bool(v, &i);
    const char *s = json_string(v);
    if (s && strlen(s) > v->len) fuzz_fail("a string longer than its recorded length");
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT)
        for (size_t k = 0; k < v->len; k++) {
            const JsonValue *item = json_array_item(v, k);
            if (v->type == JSON_OBJECT && strlen(v->items[k].key) == v->items[k].key_len && !json_get(v, v->items[k].key)) fuzz_fail("a member json_get cannot find");
            walk(item ? item : &v->items[k], depth + 1);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    JsonDoc doc;
    char err[512];
    if (json_parse(&doc, (const char *)data, size, err, sizeof err)) fuzz_expect_error_line("json_parse", err);
    else walk(&doc.root, 0);
    json_free(&doc);
    fuzz_expect_clean("json_parse and json_free");
    return 0;
}
