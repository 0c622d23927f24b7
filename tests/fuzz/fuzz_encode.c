/* fuzz_encode: any text through two real vocabularies, a SentencePiece one
   with byte fallback and a byte-level BPE whose tokenizer.json normalizes to
   NFC (tests/fixtures/hf/tokenizers). tokenizer.h promises that every id is
   in range, that tokenizer_max_ids(len) ids suffice with special tokens
   parsed, and that decoding gives back the text as the vocabulary normalizes it: the exact
   text for SentencePiece; for NFC, text that encodes and decodes to itself.
   The first byte picks the vocabulary and whether special tokens are parsed. */
#include "../../tokenizer.h"

static Tokenizer *vocab[2];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *dirs[2] = {FUZZ_PATH("tests/fixtures/hf/tokenizers/bpe"), FUZZ_PATH("tests/fixtures/hf/tokenizers/spm")};
    char err[512];
    for (int i = 0; i < 2; i++)
        if (!(vocab[i] = tokenizer_load_hf(dirs[i], err, sizeof err))) fuzz_fail("%s", err);
    fuzz_keep_held();
    return 0;
}

/* decode(encode(text)) into a new buffer; *out_len gets its length. */
static char *round_trip(const Tokenizer *t, const char *text, size_t len, int special, size_t *out_len) {
    int max_ids = (int)tokenizer_max_ids(len);
    int *ids = malloc(sizeof(int) * (size_t)max_ids);
    char *back = malloc(len * 4 + 64);
    if (!ids || !back) fuzz_fail("out of memory");
    int n = tokenizer_encode_ex(t, text, len, 1, special, ids, max_ids);
    if (n < 0) fuzz_fail("encoding %zu bytes needed more than %d ids", len, max_ids);
    size_t at = 0;
    for (int i = 0, prev = -1; i < n; prev = ids[i++]) {
        if (ids[i] < 0 || ids[i] >= tokenizer_n_vocab(t)) fuzz_fail("id %d out of range", ids[i]);
        size_t piece_len;
        const char *piece = tokenizer_decode(t, prev, ids[i], &piece_len);
        if (at + piece_len > len * 4 + 64) fuzz_fail("the decoded text is far longer than the input");
        memcpy(back + at, piece, piece_len);
        at += piece_len;
    }
    free(ids);
    *out_len = at;
    return back;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size || size > 1 << 20) return 0;
    int spm = data[0] & 1, special = data[0] >> 1 & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1, back_len, again_len;
    char *back = round_trip(vocab[spm], text, len, special, &back_len);
    if (!special && spm && (back_len != len || memcmp(back, text, len)))
        fuzz_fail("decode(encode(text)) differs from the text (%zu bytes back for %zu)", back_len, len);
    if (!special && !spm) {
        char *again = round_trip(vocab[spm], back, back_len, 0, &again_len);
        if (again_len != back_len || memcmp(again, back, back_len))
            fuzz_fail("NFC text did not encode and decode to itself (%zu bytes, then %zu)", back_len, again_len);
        free(again);
    }
    free(back);
    fuzz_expect_clean("tokenizer_encode_ex");
    return 0;
}
