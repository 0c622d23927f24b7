/* generate.c - the engine inside another program: load a model, feed a
 * prompt, pull the answer one token at a time.
 *
 *   make examples
 *   examples/generate model.bin "Once upon a time" [max_tokens] [temperature]
 *
 * The model file must carry its tokenizer (./export --tokenizer ...).
 */
#define MODEL_IMPLEMENTATION
#include "../model.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what) {
    fprintf(stderr, "error: %s\n", what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) return fail("usage: generate model.bin prompt [max_tokens] [temperature]");
    int max_new = argc > 3 ? atoi(argv[3]) : 100;
    float temperature = argc > 4 ? (float)atof(argv[4]) : 0.0f;
    char err[256];
    Model model;
    if (model_load(&model, argv[1], err, sizeof err)) return fail(err);
    const Tokenizer *tok = model.tokenizer;
    if (!tok) return fail("the model file has no tokenizer");
    /* q8_0/q4_0 matrices in the layout of the fastest kernels: a copy in
       memory, where a SIMD version of those kernels is compiled (as ./run
       does, so both give the same numbers). Leave it out when the model
       barely fits in RAM; the model as stored works as well. */
    if (model_repack_pays(&model)) model_repack(&model, SIZE_MAX);

    /* One context (scratch and threads) and one sequence (its KV cache),
       both sized once: nothing below allocates per token. */
    int ctx_len = model.cfg.max_seq_len;
    Context *ctx = context_new(&model, ctx_len, 64, 1, 2, NULL, err, sizeof err);
    Sequence seq;
    Sampler sampler;
    if (!ctx || sequence_init(&seq, ctx, ctx_len, err, sizeof err)) return fail(err);
    if (sampler_init(&sampler, model.cfg.vocab_size, temperature, 0.9f, 0, 42)) return fail("out of memory");

    size_t len = strlen(argv[2]);
    size_t max_ids = tokenizer_max_ids(len);
    int *ids = max_ids <= INT_MAX ? malloc(max_ids * sizeof(int)) : NULL;
    int n = ids ? tokenizer_encode(tok, argv[2], len, tokenizer_add_bos(tok), ids, (int)max_ids) : -1;
    if (n <= 0 || n >= ctx_len) return fail("the prompt does not fit the context");

    const float *logits = sequence_feed(ctx, &seq, ids, n);
    int prev = ids[n - 1];
    for (int i = 0; i < max_new && logits; i++) {
        int next = sampler_sample(&sampler, logits);
        if (tokenizer_is_eos(tok, next) || next == tokenizer_bos(tok)) break;
        size_t piece_len;
        const char *piece = tokenizer_decode(tok, prev, next, &piece_len);
        fwrite(piece, 1, piece_len, stdout);
        fflush(stdout);
        prev = next;
        if (seq.n_past == ctx_len) break; /* the context is full */
        logits = sequence_feed(ctx, &seq, &next, 1);
    }
    putchar('\n');
    if (!logits) return fail(ctx->error);

    free(ids);
    sampler_free(&sampler);
    sequence_free(&seq);
    context_free(ctx);
    model_free(&model);
    return 0;
}
