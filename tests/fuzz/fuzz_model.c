/* fuzz_model: a model file in any format model_load reads (ours, llama2.c
   checkpoints, GGUF), loaded, repacked and run for two tokens. Either the
   load fails with one error line, or the model runs (or reports non-finite
   activations); nothing is left held either way. */
#define MODEL_IMPLEMENTATION
#include "../../model.h"

static void run_two_tokens(const Model *m) {
    char err[512];
    Context *c = context_new(m, 8, 2, 2, 1, NULL, err, sizeof err);
    if (!c) { fuzz_expect_error_line("context_new", err); return; }
    Sequence s;
    if (sequence_init(&s, c, 8, err, sizeof err)) fuzz_expect_error_line("sequence_init", err);
    else {
        Sequence *seqs[2] = {&s, &s};
        int tokens[2] = {0, m->cfg.vocab_size - 1};
        uint8_t want[2] = {1, 1};
        if (model_forward(c, seqs, tokens, 2, want) < 0) fuzz_expect_error_line("model_forward", c->error);
        sequence_free(&s);
    }
    context_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_write_file("model", data, size);
    Model m;
    char err[512];
    if (model_load(&m, "model", err, sizeof err)) fuzz_expect_error_line("model_load", err);
    else {
        if (model_repack_pays(&m) && model_repack(&m, (size_t)64 << 20) < 0) fuzz_fail("model_repack ran out of memory");
        run_two_tokens(&m);
        model_free(&m);
    }
    fuzz_expect_clean("model_load, model_forward and model_free");
    return 0;
}
