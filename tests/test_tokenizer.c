/* test_tokenizer.c - checks tokenizer.c against llama.cpp's Llama 2 test
 * vectors, SentencePiece's output on whole texts, round trips, and bad files.
 *
 *   cc -O2 -o tests/bin/test_tokenizer tests/test_tokenizer.c tokenizer.c
 *   tests/bin/test_tokenizer [ASSETS]      (default ../shared/assets)
 *
 * Prints "PASS name" or "FAIL name: detail" per check and "N passed, N failed"
 * last; exits 1 if anything failed. Without the assets folder it skips (exit
 * 0), except under CI=true, where missing assets are a failure.
 */
#define _POSIX_C_SOURCE 200809L /* mkstemp, stat, close, unlink */

#include "../tokenizer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int passed, failed;
    const char *assets;
} Report;

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void check(Report *r, int ok, const char *name, const char *fmt, ...)
{
    if (ok) {
        r->passed++;
        printf("PASS %s\n", name);
        return;
    }
    r->failed++;
    printf("FAIL %s: ", name);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

static char *asset_path(const Report *r, const char *rel)
{
    size_t n = strlen(r->assets) + strlen(rel) + 2;
    char *p = malloc(n);
    if (!p) abort();
    snprintf(p, n, "%s/%s", r->assets, rel);
    return p;
}

/* Reads a whole file (NUL appended for convenience, not counted). */
static char *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb) free(buf);
        buf = nb;
    }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = '\0';
    *size = n;
    return buf;
}

static int write_all(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

/* Encodes into a fresh array big enough for any text (len + 3). */
static int *encode_alloc(const Tokenizer *t, const char *text, size_t len, int add_bos, int *n)
{
    int *ids = malloc((len + 3) * sizeof(int));
    if (!ids) abort();
    *n = tokenizer_encode(t, text, len, add_bos, ids, (int)(len + 3));
    return ids;
}

static uint32_t hash_ids(const int *ids, int n)
{
    uint32_t h = 2166136261u; /* FNV-1a, one step per id */
    for (int i = 0; i < n; i++) {
        h ^= (uint32_t)ids[i];
        h *= 16777619u;
    }
    return h;
}

static void fmt_ids(char *out, size_t cap, const int *ids, int n)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < n && used + 16 < cap; i++)
        used += (size_t)snprintf(out + used, cap - used, "%s%d", i ? " " : "", ids[i]);
    if (n < 0) snprintf(out, cap, "(error %d)", n);
}

/* Decodes ids as a program prints them (each token after its predecessor). */
static char *decode_all(const Tokenizer *t, const int *ids, int n, size_t *out_len)
{
    size_t cap = 64, len = 0;
    char *out = malloc(cap);
    if (!out) abort();
    for (int i = 0; i < n; i++) {
        size_t pl;
        const char *p = tokenizer_decode(t, i ? ids[i - 1] : -1, ids[i], &pl);
        while (len + pl > cap) {
            cap *= 2;
            out = realloc(out, cap);
            if (!out) abort();
        }
        memcpy(out + len, p, pl);
        len += pl;
    }
    *out_len = len;
    return out;
}

/* Encode with BOS, decode, compare byte for byte. */
static void check_roundtrip(Report *r, const char *name, const Tokenizer *t, const char *text,
                            size_t len)
{
    int n;
    int *ids = encode_alloc(t, text, len, 1, &n);
    if (n < 1 || ids[0] != tokenizer_data(t)->bos_id) {
        check(r, 0, name, "encode returned %d ids, first %d", n, n > 0 ? ids[0] : -1);
        free(ids);
        return;
    }
    size_t dl;
    char *dec = decode_all(t, ids, n, &dl);
    size_t at = 0;
    while (at < len && at < dl && dec[at] == text[at]) at++;
    check(r, dl == len && at == len, name, "decoded %zu bytes of %zu, first difference at byte %zu",
          dl, len, at);
    free(dec);
    free(ids);
}

/* ------------------------------------------------------------------------ */

/* llama.cpp's tests/test-tokenizer-0 vectors: .inp holds the strings, each
   followed by "\n__ggml_vocab_test__\n" (the last one too); .out holds one
   line of expected ids per string, each id preceded by a space, encoded with
   no BOS and the dummy prefix space. */
static void test_ggml_vectors(Report *r, const Tokenizer *t)
{
    static const char sep[] = "\n__ggml_vocab_test__\n";
    char *inp_path = asset_path(r, "ggml-vocab/ggml-vocab-llama-spm.gguf.inp");
    char *out_path = asset_path(r, "ggml-vocab/ggml-vocab-llama-spm.gguf.out");
    size_t inp_n, out_n;
    char *inp = read_all(inp_path, &inp_n);
    char *out = read_all(out_path, &out_n);
    if (!inp || !out) {
        check(r, 0, "ggml_vectors_read", "cannot read %s or %s", inp_path, out_path);
        goto done;
    }

    int n_str = 0, n_lines = 0;
    for (const char *p = inp; (p = strstr(p, sep)) != NULL; p += strlen(sep)) n_str++;
    for (size_t i = 0; i < out_n; i++) n_lines += out[i] == '\n';
    check(r, n_str > 0 && n_str == n_lines, "ggml_vectors_parse",
          "%d strings in .inp but %d lines in .out", n_str, n_lines);
    if (n_str != n_lines) goto done;

    const char *s = inp, *line = out;
    for (int k = 0; k < n_str; k++) {
        const char *end = strstr(s, sep);
        size_t len = (size_t)(end - s);

        int want[512], n_want = 0;
        const char *eol = strchr(line, '\n');
        for (const char *p = line; p < eol;) {
            char *q;
            long v = strtol(p, &q, 10);
            if (q == p) break;
            if (n_want < 512) want[n_want++] = (int)v;
            p = q;
        }

        int n_got;
        int *got = encode_alloc(t, s, len, 0, &n_got);
        int same = n_got == n_want;
        for (int i = 0; same && i < n_got; i++) same = got[i] == want[i];

        char name[64], ws[2048], gs[2048];
        snprintf(name, sizeof(name), "llama_spm_vector_%02d", k);
        fmt_ids(ws, sizeof(ws), want, n_want);
        fmt_ids(gs, sizeof(gs), got, n_got);
        check(r, same, name, "string %d: expected [%s] got [%s]", k, ws, gs);
        free(got);

        s = end + strlen(sep);
        line = eol + 1;
    }
done:
    free(inp);
    free(out);
    free(inp_path);
    free(out_path);
}

/* Whole texts against ids that SentencePiece 0.1.97 gives with the matching
   tokenizer.model (count and FNV-1a over the ids, no BOS). tok512.model asks
   SentencePiece to collapse runs of whitespace (remove_extra_whitespaces),
   which tokenizer.bin cannot say and llama2.c never did, so its reference ids
   were made with that switch off. Llama 2's model has it off already. */
static void test_sentencepiece_texts(Report *r, const Tokenizer *llama, const Tokenizer *t512)
{
    static const struct {
        const char *file;
        int llama; /* which tokenizer: 1 = Llama 2, 0 = tok512 */
        int count;
        uint32_t hash;
    } cases[] = {
        {"text/tinystories_sample_cs336.txt", 1, 990, 0x6776d584u},
        {"text/tinystories_sample_cs336.txt", 0, 1882, 0x17c9e2d3u},
        {"text/pg1342_pride_and_prejudice.txt", 1, 209822, 0x272a6ac5u},
        {"text/pg1342_pride_and_prejudice.txt", 0, 448967, 0x906017e8u},
        {"text/tinyshakespeare_input.txt", 1, 368633, 0x44d3d947u},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char name[128];
        const char *base = strrchr(cases[i].file, '/') + 1;
        snprintf(name, sizeof(name), "sentencepiece_ids_%s_%.*s", cases[i].llama ? "llama2" : "tok512",
                 (int)strcspn(base, "."), base);
        char *path = asset_path(r, cases[i].file);
        size_t len;
        char *text = read_all(path, &len);
        if (!text) {
            check(r, 0, name, "cannot read %s", path);
            free(path);
            continue;
        }
        int n;
        clock_t c0 = clock();
        int *ids = encode_alloc(cases[i].llama ? llama : t512, text, len, 0, &n);
        double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
        uint32_t h = n > 0 ? hash_ids(ids, n) : 0;
        check(r, n == cases[i].count && h == cases[i].hash, name,
              "got %d ids hash %08x, SentencePiece gives %d ids hash %08x", n, (unsigned)h,
              cases[i].count, (unsigned)cases[i].hash);
        printf("     (%zu bytes -> %d tokens in %.3f s)\n", len, n, secs);
        free(ids);
        free(text);
        free(path);
    }
}

static void test_roundtrips(Report *r, const Tokenizer *llama, const Tokenizer *t512)
{
    static const char once[] = "Once upon a time";
    int ids[64];
    int n = tokenizer_encode(t512, once, strlen(once), 1, ids, 64);
    /* SentencePiece with tok512.model: [403, 407, 261, 378], then BOS in front. */
    static const int want[] = {1, 403, 407, 261, 378};
    int same = n == 5;
    for (int i = 0; same && i < n; i++) same = ids[i] == want[i];
    char gs[256];
    fmt_ids(gs, sizeof(gs), ids, n);
    check(r, same, "tok512_once_upon_ids", "expected [1 403 407 261 378] got [%s]", gs);
    check_roundtrip(r, "tok512_once_upon_roundtrip", t512, once, strlen(once));

    static const struct {
        const char *file;
        size_t limit;
    } files[] = {
        {"text/tinystories_sample_cs336.txt", 20480},
        {"text/pg1342_pride_and_prejudice.txt", 20480},
        {"text/pg1342_pride_and_prejudice.txt", 0}, /* 0 = whole file */
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char *path = asset_path(r, files[i].file);
        size_t len;
        char *text = read_all(path, &len);
        const char *base = strrchr(files[i].file, '/') + 1;
        for (int which = 0; which < 2; which++) {
            char name[128];
            snprintf(name, sizeof(name), "roundtrip_%s_%.*s_%s", which ? "tok512" : "llama2",
                     (int)strcspn(base, "."), base, files[i].limit ? "20k" : "whole");
            if (!text) {
                check(r, 0, name, "cannot read %s", path);
                continue;
            }
            size_t n_bytes = files[i].limit && files[i].limit < len ? files[i].limit : len;
            check_roundtrip(r, name, which ? t512 : llama, text, n_bytes);
        }
        free(text);
        free(path);
    }

    /* Arbitrary bytes (ill-formed UTF-8, NULs) survive too, and len + 3 ids
       are enough even when every byte falls back. */
    unsigned char junk[4096];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof(junk); i++) {
        x = x * 1103515245u + 12345u;
        junk[i] = (unsigned char)(x >> 16);
    }
    check_roundtrip(r, "roundtrip_llama2_random_bytes", llama, (const char *)junk, sizeof(junk));
    check_roundtrip(r, "roundtrip_tok512_random_bytes", t512, (const char *)junk, sizeof(junk));
}

static void test_special_text(Report *r, const Tokenizer *llama)
{
    static const char *texts[] = {"<s>", "</s>", "<unk>", "<0x0A>", "a<s>b</s>c"};
    int bad = 0;
    char detail[512] = "";
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        int ids[64];
        int n = tokenizer_encode(llama, texts[i], strlen(texts[i]), 0, ids, 64);
        for (int k = 0; k < n; k++) {
            uint8_t type = tokenizer_data(llama)->types[ids[k]];
            if (type != TOKEN_NORMAL) {
                bad = 1;
                snprintf(detail, sizeof(detail), "\"%s\" produced id %d of type %d", texts[i],
                         ids[k], type);
            }
        }
        if (n <= 0) {
            bad = 1;
            snprintf(detail, sizeof(detail), "\"%s\" gave %d", texts[i], n);
        }
    }
    check(r, !bad, "special_text_is_plain_text", "%s", detail);

    int ids[8];
    int n = tokenizer_encode(llama, "<s>", 3, 0, ids, 8);
    /* SentencePiece: "<s>" -> "▁<", "s", ">" */
    check(r, n == 3 && ids[0] == 529 && ids[1] == 29879 && ids[2] == 29958, "text_bos_not_bos",
          "got %d ids, first %d", n, n > 0 ? ids[0] : -1);
}

static void test_decode(Report *r, const Tokenizer *llama)
{
    size_t n;
    const char *p;

    p = tokenizer_decode(llama, -1, 1, &n);
    check(r, n == 0 && p && p[0] == '\0', "decode_bos_empty", "BOS gave %zu bytes", n);
    p = tokenizer_decode(llama, 5, 2, &n);
    check(r, n == 0, "decode_eos_empty", "EOS gave %zu bytes", n);
    p = tokenizer_decode(llama, -1, 0, &n);
    check(r, n == 0, "decode_unk_empty", "<unk> gave %zu bytes", n);
    p = tokenizer_decode(llama, -1, 32000, &n);
    check(r, n == 0 && p != NULL, "decode_out_of_range_empty", "id 32000 gave %zu bytes", n);
    p = tokenizer_decode(llama, -1, -7, &n);
    check(r, n == 0 && p != NULL, "decode_negative_empty", "id -7 gave %zu bytes", n);
    p = tokenizer_decode(llama, -1, 13, &n); /* <0x0A> */
    check(r, n == 1 && p[0] == '\n', "decode_byte_token", "<0x0A> gave %zu bytes", n);
    p = tokenizer_decode(llama, 1, 3 + 0xE2, &n); /* byte tokens keep their value after BOS */
    check(r, n == 1 && (unsigned char)p[0] == 0xE2, "decode_byte_token_after_bos",
          "<0xE2> gave %zu bytes", n);
    p = tokenizer_decode(llama, 1, 15043, &n); /* " Hello" right after BOS */
    check(r, n == 5 && memcmp(p, "Hello", 5) == 0, "decode_strips_space_after_bos",
          "got \"%.*s\"", (int)n, p);
    p = tokenizer_decode(llama, 29892, 15043, &n); /* " Hello" after "," */
    check(r, n == 6 && memcmp(p, " Hello", 6) == 0, "decode_keeps_space_elsewhere",
          "got \"%.*s\"", (int)n, p);
    p = tokenizer_decode(llama, -1, 15043, &n); /* at the very start (no BOS) */
    check(r, n == 6 && memcmp(p, " Hello", 6) == 0, "decode_keeps_space_without_bos",
          "got \"%.*s\"", (int)n, p);
    p = tokenizer_decode(llama, -1, 15043, NULL);
    check(r, p != NULL, "decode_null_len", "returned NULL");
}

static void test_encode_edges(Report *r, const Tokenizer *llama)
{
    int ids[16];
    int n = tokenizer_encode(llama, "", 0, 1, ids, 16);
    check(r, n == 1 && ids[0] == 1, "encode_empty_is_bos", "got %d ids", n);
    n = tokenizer_encode(llama, "", 0, 0, ids, 16);
    check(r, n == 0, "encode_empty_no_bos", "got %d ids", n);
    n = tokenizer_encode(llama, NULL, 0, 0, ids, 0);
    check(r, n == 0, "encode_null_empty", "got %d", n);

    n = tokenizer_encode(llama, "Hello world", 11, 1, ids, 3);
    check(r, n == 3 && ids[0] == 1 && ids[1] == 15043 && ids[2] == 3186, "encode_exact_fit",
          "got %d", n);
    n = tokenizer_encode(llama, "Hello world", 11, 1, ids, 2);
    check(r, n == -1, "encode_too_small_is_minus_one", "got %d", n);
    n = tokenizer_encode(llama, "Hello world", 11, 1, ids, 0);
    check(r, n == -1, "encode_no_room_for_bos", "got %d", n);
}

/* A hand-made vocabulary for rules the Llama 2 vectors may not reach. */
static void test_synthetic(Report *r)
{
    static const char *pieces[] = {
        "<unk>", "<s>", "</s>", " ", "a", "b", "ab", "ba", "ab", "<x>", "<", "x", ">", "<x",
    };
    static const float scores[] = {0, 0, 0, -1, -1, -1, 1, 1, 5, 0, -1, -1, -1, 10};
    static const uint8_t types[] = {
        TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_NORMAL,
        TOKEN_NORMAL,  TOKEN_NORMAL,  TOKEN_NORMAL,  TOKEN_NORMAL, TOKEN_USER_DEFINED,
        TOKEN_NORMAL,  TOKEN_NORMAL,  TOKEN_NORMAL,  TOKEN_NORMAL,
    };
    enum { N = sizeof(pieces) / sizeof(pieces[0]) };
    uint32_t off[N + 1];
    char bytes[128];
    off[0] = 0;
    for (int i = 0; i < N; i++) {
        size_t l = strlen(pieces[i]);
        memcpy(bytes + off[i], pieces[i], l);
        off[i + 1] = off[i] + (uint32_t)l;
    }
    TokenizerData d = {TOKENIZER_SPM, N, -1, -1, 0, 0, off, bytes, scores, types};
    char err[256] = "";
    Tokenizer *t = tokenizer_from_data(&d, err, sizeof(err));
    check(r, t != NULL, "synthetic_new", "%s", err);
    if (!t) return;

    static const struct {
        const char *name, *text;
        int n, ids[8];
    } cases[] = {
        /* equal scores: the leftmost pair merges first; "ab" is id 6, not 8 */
        {"synthetic_tie_leftmost_ab", "aba", 2, {6, 4}},
        {"synthetic_tie_leftmost_ba", "bab", 2, {7, 5}},
        /* the user-defined "<x>" is matched whole, though "<x" scores higher */
        {"synthetic_user_defined_whole", "a<x>b", 3, {4, 9, 5}},
        /* no byte tokens: a character with no piece is one <unk> */
        {"synthetic_unk_fallback", "c\xc3\xa9" "a", 3, {0, 0, 4}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int ids[16];
        int n = tokenizer_encode(t, cases[i].text, strlen(cases[i].text), 1, ids, 16);
        int same = n == cases[i].n;
        for (int k = 0; same && k < n; k++) same = ids[k] == cases[i].ids[k];
        char gs[128];
        fmt_ids(gs, sizeof(gs), ids, n);
        check(r, same, cases[i].name, "got [%s]", gs);
    }
    tokenizer_free(t);

    /* Each broken field is refused with a message. */
    static const char *names[] = {
        "new_rejects_unknown_kind", "new_rejects_zero_vocab",   "new_rejects_bos_out_of_range",
        "new_rejects_offsets_decreasing", "new_rejects_unknown_type", "new_rejects_bad_byte_piece",
        "new_rejects_nan_score",    "new_rejects_null_arrays",
    };
    for (int k = 0; k < 8; k++) {
        TokenizerData b = d;
        uint32_t boff[N + 1];
        uint8_t btypes[N];
        float bscores[N];
        memcpy(boff, off, sizeof(off));
        memcpy(btypes, types, sizeof(types));
        memcpy(bscores, scores, sizeof(scores));
        b.piece_offset = boff;
        b.types = btypes;
        b.scores = bscores;
        switch (k) {
        case 0: b.kind = 7; break;
        case 1: b.n_vocab = 0; break;
        case 2: b.bos_id = N; break;
        case 3: boff[5] = boff[4] - 1; break;
        case 4: btypes[4] = 9; break;
        case 5: btypes[6] = TOKEN_BYTE; break; /* "ab" is no byte */
        case 6: bscores[3] = strtof("nan", NULL); break;
        case 7: b.types = NULL; break;
        }
        err[0] = '\0';
        t = tokenizer_from_data(&b, err, sizeof(err));
        check(r, t == NULL && err[0] != '\0' && !strchr(err, '\n'), names[k], "t=%p err=\"%s\"",
              (void *)t, err);
        tokenizer_free(t);
    }
}

/* ------------------------------------------------------------------------ */
/* Broken tokenizer.bin files */

static void expect_load_error(Report *r, const char *name, const char *path, int n_vocab)
{
    char err[512];
    memset(err, 0, sizeof(err));
    Tokenizer *t = tokenizer_load_llama2c(path, n_vocab, err, sizeof(err));
    int ok = t == NULL && err[0] != '\0' && strchr(err, '\n') == NULL && strstr(err, path) != NULL;
    check(r, ok, name, "t=%p err=\"%s\"", (void *)t, err);
    if (ok) printf("     (%s)\n", err);
    tokenizer_free(t);
}

static void test_bad_files(Report *r, const char *good_path)
{
    size_t size;
    char *good = read_all(good_path, &size);
    if (!good) {
        check(r, 0, "bad_files_setup", "cannot read %s", good_path);
        return;
    }
    char tmp[] = "/tmp/test_tokenizer_XXXXXX";
    int fd = mkstemp(tmp);
    if (fd < 0) {
        check(r, 0, "bad_files_setup", "mkstemp failed");
        free(good);
        return;
    }
    close(fd);

    expect_load_error(r, "load_missing_file", "/nonexistent/dir/tokenizer.bin", 32000);
    expect_load_error(r, "load_directory", "/tmp", 32000);

    /* Truncated at several points: empty, inside the header, inside a
       token's header, inside a piece, one byte short. */
    static const size_t cuts[] = {0, 2, 4, 10, 20, 0 /* half */, 1 /* size - 1 */};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        size_t n = cuts[i];
        if (i == 5) n = size / 2;
        if (i == 6) n = size - 1;
        char name[64];
        snprintf(name, sizeof(name), "load_truncated_%zu", n);
        if (write_all(tmp, good, n) < 0) {
            check(r, 0, name, "cannot write %s", tmp);
            continue;
        }
        expect_load_error(r, name, tmp, 32000);
    }

    /* The right file with the wrong vocabulary size. */
    write_all(tmp, good, size);
    expect_load_error(r, "load_vocab_too_large", tmp, 32001);
    expect_load_error(r, "load_vocab_too_small", tmp, 31999);
    expect_load_error(r, "load_vocab_zero", tmp, 0);

    /* Trailing garbage. */
    char *big = malloc(size + 3);
    if (!big) abort();
    memcpy(big, good, size);
    memcpy(big + size, "xyz", 3);
    write_all(tmp, big, size + 3);
    expect_load_error(r, "load_trailing_garbage", tmp, 32000);

    /* Token 1's length (at 4 + 8 + 5 + 4) set to -5, then to 1e9 (absurd:
       above max_token_length). */
    memcpy(big, good, size);
    int32_t v = -5;
    memcpy(big + 4 + 8 + 5 + 4, &v, 4);
    write_all(tmp, big, size);
    expect_load_error(r, "load_negative_length", tmp, 32000);
    v = 1000000000;
    memcpy(big + 4 + 8 + 5 + 4, &v, 4);
    write_all(tmp, big, size);
    expect_load_error(r, "load_absurd_length", tmp, 32000);

    /* max_token_length that no tokenizer has. */
    memcpy(big, good, size);
    v = -1;
    memcpy(big, &v, 4);
    write_all(tmp, big, size);
    expect_load_error(r, "load_bad_max_token_length", tmp, 32000);

    /* A NaN score. */
    memcpy(big, good, size);
    float nan = strtof("nan", NULL);
    memcpy(big + 4, &nan, 4);
    write_all(tmp, big, size);
    expect_load_error(r, "load_nan_score", tmp, 32000);

    /* And the untouched copy loads: the checks above failed for their own
       reason, not because of the temp file. */
    write_all(tmp, good, size);
    char err[256] = "";
    Tokenizer *t = tokenizer_load_llama2c(tmp, 32000, err, sizeof(err));
    check(r, t != NULL, "load_good_copy", "%s", err);
    tokenizer_free(t);

    unlink(tmp);
    free(big);
    free(good);
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    Report r = {0, 0, argc > 1 ? argv[1] : "../shared/assets"};
    struct stat st;
    if (stat(r.assets, &st) != 0 || !S_ISDIR(st.st_mode)) {
        const char *ci = getenv("CI");
        int required = ci && strcmp(ci, "true") == 0;
        if (required) printf("FAIL tokenizer tests: assets not found at %s (required when CI=true)\n", r.assets);
        else printf("SKIP tokenizer tests: assets not found at %s\n", r.assets);
        printf("0 passed, %d failed\n", required);
        return required;
    }

    char err[512] = "";
    char *llama_path = asset_path(&r, "llama2c/tokenizer.bin");
    char *t512_path = asset_path(&r, "llama2c/tok512.bin");
    Tokenizer *llama = tokenizer_load_llama2c(llama_path, 32000, err, sizeof(err));
    check(&r, llama != NULL, "load_llama2_tokenizer_bin", "%s", err);
    Tokenizer *t512 = tokenizer_load_llama2c(t512_path, 512, err, sizeof(err));
    check(&r, t512 != NULL, "load_tok512_bin", "%s", err);

    if (llama) {
        const TokenizerData *d = tokenizer_data(llama);
        size_t n3 = d->piece_offset[4] - d->piece_offset[3];
        int ok = d->kind == TOKENIZER_SPM && d->n_vocab == 32000 && d->bos_id == 1 &&
                 d->eos_id == 2 && d->add_bos && d->add_prefix_space &&
                 d->types[0] == TOKEN_UNKNOWN && d->types[1] == TOKEN_CONTROL &&
                 d->types[2] == TOKEN_CONTROL && d->types[3] == TOKEN_BYTE &&
                 d->types[258] == TOKEN_BYTE && d->types[259] == TOKEN_NORMAL && n3 == 6 &&
                 memcmp(d->piece_bytes + d->piece_offset[3], "<0x00>", 6) == 0;
        check(&r, ok, "llama2_data_fields", "kind/bos/eos/types/pieces not as expected");

        test_ggml_vectors(&r, llama);
        test_special_text(&r, llama);
        test_decode(&r, llama);
        test_encode_edges(&r, llama);
        test_bad_files(&r, llama_path);
    }
    if (llama && t512) {
        test_roundtrips(&r, llama, t512);
        test_sentencepiece_texts(&r, llama, t512);
    }
    test_synthetic(&r);

    tokenizer_free(llama);
    tokenizer_free(t512);
    free(llama_path);
    free(t512_path);
    printf("%d passed, %d failed\n", r.passed, r.failed);
    return r.failed ? 1 : 0;
}
