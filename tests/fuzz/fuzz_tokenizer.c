/* fuzz_tokenizer: every tokenizer format tokenizer_load reads: llama2.c's
   tokenizer.bin, SentencePiece's tokenizer.model, Hugging Face tokenizer.json
   and its folder (tokenizer_config.json, generation_config.json), and GGUF
   vocabularies. The input's first argument names the file or folder to load,
   the second the model's vocabulary size (default 32000); its standard input
   section is encoded with the vocabulary that loads, and every id must be in
   range and decode. */
#include "../../tokenizer.h"

static const char sample[] = "Hello, world! <s> 1234 \xc3\xa9t\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd \xff\n\t  end";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FuzzInput f;
    if (fuzz_unpack(&f, data, size)) return -1;
    long n_vocab = f.argc > 2 ? strtol(f.argv[2], NULL, 10) : 32000;
    if (f.argc < 2 || f.argv[1][0] == '/' || strstr(f.argv[1], "..") || n_vocab < 1 || n_vocab > 1 << 20) {
        fuzz_input_free(&f);
        return -1;
    }
    char err[512];
    Tokenizer *t = tokenizer_load(f.argv[1], (int)n_vocab, err, sizeof err);
    if (!t) fuzz_expect_error_line("tokenizer_load", err);
    else {
        const char *text = f.stdin_data ? f.stdin_data : sample;
        size_t len = f.stdin_data ? f.stdin_len : sizeof sample - 1;
        int max_ids = (int)tokenizer_max_ids(len), vocab = tokenizer_n_vocab(t);
        int *ids = malloc(sizeof(int) * (size_t)max_ids);
        if (!ids) fuzz_fail("out of memory");
        for (int special = 0; special < 2; special++) {
            int n = tokenizer_encode_ex(t, text, len, 1, special, ids, max_ids);
            if (n < 0) fuzz_fail("encoding %zu bytes needed more than %d ids", len, max_ids);
            for (int i = 0, prev = -1; i < n; prev = ids[i++]) {
                if (ids[i] < 0 || ids[i] >= vocab) fuzz_fail("id %d out of range (vocabulary %d)", ids[i], vocab);
                size_t piece_len;
                const char *piece = tokenizer_decode(t, prev, ids[i], &piece_len);
                if (!piece || piece_len > tokenizer_max_piece_bytes(t)) fuzz_fail("id %d decodes past the longest piece", ids[i]);
            }
        }
        free(ids);
        tokenizer_free(t);
    }
    fuzz_expect_clean("tokenizer_load, encode and tokenizer_free");
    fuzz_input_free(&f);
    return 0;
}
