/* nbce_qa.c - NBCE over documents held in memory: each document becomes a
 * row "document\n\nquestion" (row 0 has no document); all rows are decoded
 * together and their next-token predictions pooled (model.h's NBCE), with
 * the settings `./run --nbce` uses by default.
 *
 *   make examples
 *   examples/nbce_qa model.bin "question" "document 1" "document 2" ...
 *
 * Prints the greedy answer, then the document chosen at most steps. Each
 * document must fit the context with the question (./run --nbce splits
 * longer ones into chunks).
 */
#define MODEL_IMPLEMENTATION
#include "../model.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_ROWS = 16, ANSWER_TOKENS = 48 };

static int fail(const char *what) {
    fprintf(stderr, "error: %s\n", what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc - 2 > MAX_ROWS) return fail("usage: nbce_qa model.bin question document... (up to 15)");
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
    int n_rows = argc - 2, ctx_len = model.cfg.max_seq_len;

    /* Row texts: the question after nothing, then after each document. */
    const char *question = argv[2];
    int *ids[MAX_ROWS], n_ids[MAX_ROWS];
    for (int r = 0; r < n_rows; r++) {
        const char *doc = r ? argv[2 + r] : "";
        size_t len = strlen(doc) + strlen(question) + 2;
        char *text = malloc(len + 1);
        size_t max_ids = tokenizer_max_ids(len);
        ids[r] = max_ids <= INT_MAX ? malloc(max_ids * sizeof(int)) : NULL;
        if (!text || !ids[r]) return fail("out of memory");
        snprintf(text, len + 1, "%s\n\n%s", doc, question);
        n_ids[r] = tokenizer_encode(tok, text, strlen(text), tokenizer_add_bos(tok), ids[r], (int)max_ids);
        free(text);
        if (n_ids[r] <= 0 || n_ids[r] + ANSWER_TOKENS > ctx_len) return fail("a document does not fit the context");
    }

    /* One context serves every row; each row has its own KV cache. */
    Context *ctx = context_new(&model, ctx_len, 64, 64, 2, NULL, err, sizeof err);
    if (!ctx) return fail(err);
    Sequence seqs[MAX_ROWS], *rows[MAX_ROWS];
    for (int r = 0; r < n_rows; r++) {
        if (sequence_init(&seqs[r], ctx, n_ids[r] + ANSWER_TOKENS, err, sizeof err)) return fail(err);
        rows[r] = &seqs[r];
    }
    Nbce nb;
    Sampler greedy;
    if (sampler_init(&greedy, model.cfg.vocab_size, 0, 0, 0, 0)) return fail("out of memory");
    float *z = malloc((size_t)model.cfg.vocab_size * sizeof(float));
    if (!z || nbce_init(&nb, ctx, 0.25f, 0.1f, 0.95f, NBCE_MIN_ENTROPY, err, sizeof err)) return fail(err);

    /* Feed the rows, then decode: every step feeds the chosen token to all rows. */
    int votes[MAX_ROWS] = {0}, one[MAX_ROWS], ones[MAX_ROWS];
    const int *step_ids[MAX_ROWS];
    int chosen = nbce_feed(&nb, ctx, rows, (const int *const *)ids, n_ids, n_rows, z, NULL, NULL);
    int prev = -1;
    for (int i = 0; i < ANSWER_TOKENS && chosen >= 0; i++) {
        votes[chosen]++;
        int next = sampler_sample(&greedy, z);
        if (tokenizer_is_eos(tok, next) || next == tokenizer_bos(tok)) break;
        size_t len;
        const char *piece = tokenizer_decode(tok, prev, next, &len);
        fwrite(piece, 1, len, stdout);
        prev = next;
        for (int r = 0; r < n_rows; r++) one[r] = next, ones[r] = 1, step_ids[r] = &one[r];
        chosen = nbce_feed(&nb, ctx, rows, step_ids, ones, n_rows, z, NULL, NULL);
    }
    if (chosen < 0) return fail(ctx->error);
    int best = 1;
    for (int r = 2; r < n_rows; r++)
        if (votes[r] > votes[best]) best = r;
    printf("\nsource: document %d\n", best); /* 1 = the first on the command line */

    nbce_free(&nb);
    sampler_free(&greedy);
    free(z);
    for (int r = 0; r < n_rows; r++) sequence_free(&seqs[r]), free(ids[r]);
    context_free(ctx);
    model_free(&model);
    return 0;
}
