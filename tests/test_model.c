/* test_model.c - the forward pass and the model file, on the real stories260K
 * checkpoint (../shared/assets):
 *   - logits against a naive f32 reference forward written here, apart from
 *     model.h's kernels (llama2.c's run.c is the model for it), for every
 *     weight type ./export writes;
 *   - a prompt prefilled as one batch equals the same tokens fed one by one,
 *     bit for bit, and so do several sequences sharing one batch;
 *   - logits are bit-identical for 1, 2, 3 and 4 threads;
 *   - llama2.c versions 0, 1 and 2 load the same weights (version 2 written
 *     here from export.py's description of it);
 *   - ./export round trips: config, tokenizer and every tensor come back
 *     within the type's rounding, f32 exactly.
 * What does not depend on stories260K (the reference forward, batching,
 * threads, positions, NBCE rows, no allocation per token, two models in one
 * process, the repacked layout) also runs on the shipped q8_0 model, with or
 * without the assets, and its tokenizer is checked against SentencePiece's
 * ids in its oracle fixture; the models built in memory (GQA tiles, latent
 * attention, NBCE pooling) run either way.
 * Usage: test_model [ASSETS_DIR [MODEL]]   (run from the repository root;
 * MODEL: the shipped model, models/reader.bin)
 */
#define MODEL_IMPLEMENTATION
#include "../model.h"
#include "check.h"
#include "../json.h"

/* Every malloc, calloc, realloc and posix_memalign of this program (its
   engine code, tokenizer.c, and libc itself in static builds) passes
   through these: test_model is linked with -Wl,--wrap=... (the
   Makefile's ALLOC_WRAP), so a test can count what a stretch of code
   allocates. */
static volatile long check_allocations; /* volatile: the compiler assumes malloc changes no variable of ours */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
int __wrap_posix_memalign(void **p, size_t align, size_t n);
void *__wrap_malloc(size_t n) { check_allocations++; return __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { check_allocations++; return __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { check_allocations++; return __real_realloc(p, n); }
int __wrap_posix_memalign(void **p, size_t align, size_t n) { check_allocations++; return __real_posix_memalign(p, align, n); }

#include <sys/stat.h>

static char path_v0[4096], path_v1[4096], path_tok[4096];
static const char *tmp_dir = "tests/tmp"; /* $TEST_TMP when set: runs side by side keep apart */

/* ---------------------------------------------------------------------------
 * Naive reference forward: one token at a time, plain loops, f32, weights
 * dequantized up front.
 */
typedef struct {
    ModelConfig c;
    float *emb, *out, *final_norm;
    float **wq, **wk, **wv, **wo, **w1, **w2, **w3, **an, **fn;
    float *kc, *vc; /* [layer][pos][kv_dim] */
} RefModel;

static float *deq_matrix(const Matrix *m) {
    float *x = malloc((size_t)m->rows * m->cols * sizeof(float));
    for (int r = 0; r < m->rows; r++)
        dequantize_row(m->type, (const uint8_t *)m->data + (size_t)r * m->row_bytes, x + (size_t)r * m->cols, m->cols);
    return x;
}

static float *copy_vec(const float *v, int n) {
    float *x = malloc(n * sizeof(float));
    memcpy(x, v, n * sizeof(float));
    return x;
}

static void ref_init(RefModel *r, const Model *m, int ctx) {
    r->c = m->cfg;
    int L = r->c.n_layers;
    r->emb = deq_matrix(&m->tok_emb);
    r->out = deq_matrix(&m->output);
    r->final_norm = copy_vec(m->final_norm, r->c.dim);
    float ***all[] = {&r->wq, &r->wk, &r->wv, &r->wo, &r->w1, &r->w2, &r->w3, &r->an, &r->fn};
    for (int i = 0; i < 9; i++) *all[i] = malloc(L * sizeof(float *));
    for (int l = 0; l < L; l++) {
        const Layer *y = &m->layers[l];
        r->wq[l] = deq_matrix(&y->wq); r->wk[l] = deq_matrix(&y->wk); r->wv[l] = deq_matrix(&y->wv);
        r->wo[l] = deq_matrix(&y->wo); r->w1[l] = deq_matrix(&y->w1); r->w2[l] = deq_matrix(&y->w2);
        r->w3[l] = deq_matrix(&y->w3);
        r->an[l] = copy_vec(y->attn_norm, r->c.dim);
        r->fn[l] = copy_vec(y->ffn_norm, r->c.dim);
    }
    size_t kv = (size_t)r->c.n_kv_heads * r->c.head_dim;
    r->kc = calloc((size_t)L * ctx * kv, sizeof(float));
    r->vc = calloc((size_t)L * ctx * kv, sizeof(float));
}

static void ref_free(RefModel *r) {
    for (int l = 0; l < r->c.n_layers; l++) {
        free(r->wq[l]); free(r->wk[l]); free(r->wv[l]); free(r->wo[l]); free(r->w1[l]); free(r->w2[l]); free(r->w3[l]);
        free(r->an[l]); free(r->fn[l]);
    }
    free(r->wq); free(r->wk); free(r->wv); free(r->wo); free(r->w1); free(r->w2); free(r->w3); free(r->an); free(r->fn);
    free(r->emb); free(r->out); free(r->final_norm); free(r->kc); free(r->vc);
}

static void ref_matvec(float *y, const float *w, const float *x, int rows, int cols) {
    for (int i = 0; i < rows; i++) {
        double s = 0;
        for (int j = 0; j < cols; j++) s += (double)w[(size_t)i * cols + j] * x[j];
        y[i] = (float)s;
    }
}

static void ref_rmsnorm(float *o, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) o[i] = (float)(w[i] * x[i] * s);
}

/* Logits of the token at position pos (the cache holds positions < pos). */
static void ref_forward(RefModel *r, int ctx, int token, int pos, float *logits) {
    const ModelConfig *c = &r->c;
    int dim = c->dim, hd = c->head_dim, kv = c->n_kv_heads * hd, hidden = c->hidden_dim;
    float x[4096], xb[4096], q[4096], k[4096], v[4096], att[4096], h1[16384], h3[16384], o[4096];
    memcpy(x, r->emb + (size_t)token * dim, dim * sizeof(float));
    for (int l = 0; l < c->n_layers; l++) {
        ref_rmsnorm(xb, x, r->an[l], dim, c->norm_eps);
        ref_matvec(q, r->wq[l], xb, c->n_heads * hd, dim);
        ref_matvec(k, r->wk[l], xb, kv, dim);
        ref_matvec(v, r->wv[l], xb, kv, dim);
        for (int i = 0; i < c->n_heads * hd; i += 2) { /* adjacent pairs, angle pos * theta^(-2m/d) */
            int m = (i % hd) / 2;
            double a = pos * pow(c->rope_theta, -2.0 * m / hd), cs = cos(a), sn = sin(a);
            float q0 = q[i], q1 = q[i + 1];
            q[i] = (float)(q0 * cs - q1 * sn); q[i + 1] = (float)(q0 * sn + q1 * cs);
            if (i < kv) {
                float k0 = k[i], k1 = k[i + 1];
                k[i] = (float)(k0 * cs - k1 * sn); k[i + 1] = (float)(k0 * sn + k1 * cs);
            }
        }
        float *kc = r->kc + (size_t)l * ctx * kv, *vc = r->vc + (size_t)l * ctx * kv;
        memcpy(kc + (size_t)pos * kv, k, kv * sizeof(float));
        memcpy(vc + (size_t)pos * kv, v, kv * sizeof(float));
        for (int h = 0; h < c->n_heads; h++) {
            int g = h / (c->n_heads / c->n_kv_heads);
            double max = -1e300, sum = 0;
            for (int j = 0; j <= pos; j++) {
                double s = 0;
                for (int d = 0; d < hd; d++) s += (double)q[h * hd + d] * kc[(size_t)j * kv + g * hd + d];
                att[j] = (float)(s / sqrt(hd));
                if (att[j] > max) max = att[j];
            }
            for (int j = 0; j <= pos; j++) sum += exp(att[j] - max);
            for (int d = 0; d < hd; d++) {
                double s = 0;
                for (int j = 0; j <= pos; j++) s += exp(att[j] - max) / sum * vc[(size_t)j * kv + g * hd + d];
                o[h * hd + d] = (float)s;
            }
        }
        ref_matvec(xb, r->wo[l], o, dim, c->n_heads * hd);
        for (int i = 0; i < dim; i++) x[i] += xb[i];
        ref_rmsnorm(xb, x, r->fn[l], dim, c->norm_eps);
        ref_matvec(h1, r->w1[l], xb, hidden, dim);
        ref_matvec(h3, r->w3[l], xb, hidden, dim);
        for (int i = 0; i < hidden; i++) h1[i] = (float)(h1[i] / (1 + exp(-(double)h1[i])) * h3[i]);
        ref_matvec(xb, r->w2[l], h1, dim, hidden);
        for (int i = 0; i < dim; i++) x[i] += xb[i];
    }
    ref_rmsnorm(xb, x, r->final_norm, dim, c->norm_eps);
    ref_matvec(logits, r->out, xb, c->vocab_size, dim);
}

static const int prompt[] = {1, 403, 407, 261, 378, 289, 31, 44, 280, 401, 260, 301, 288, 269, 339, 394, 270, 30, 46, 259};
#define N_PROMPT ((int)(sizeof prompt / sizeof *prompt))

static double rel_error(const float *a, const float *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

/* The prompt's logits under positions p, fed `step` tokens per call (0: all
   at once, 1: token by token) to a sequence with the given rope_len, on
   2 threads (or `threads`), into out [N_PROMPT][vocab]. */
static void logits_threads(const Model *m, const Positions *p, int step, int rope_len, int threads, float *out);

static void logits_fed(const Model *m, const Positions *p, int step, int rope_len, float *out) {
    logits_threads(m, p, step, rope_len, 2, out);
}

static int mla_path; /* Context.mla_path for the contexts logits_threads makes */
static int kv_type = TYPE_F32; /* and their Context.kv_type */

static void logits_threads(const Model *m, const Positions *p, int step, int rope_len, int threads, float *out) {
    int V = m->cfg.vocab_size, ctx = 64;
    char err[256];
    Context *c = context_new(m, ctx, N_PROMPT, N_PROMPT, threads, p, err, sizeof err);
    c->mla_path = mla_path;
    c->kv_type = kv_type;
    Sequence s;
    sequence_init(&s, c, ctx, err, sizeof err);
    s.rope_len = rope_len;
    Sequence *seqs[N_PROMPT];
    uint8_t want[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) seqs[i] = &s, want[i] = 1;
    if (!step) step = N_PROMPT;
    for (int t = 0; t < N_PROMPT; t += step) {
        int n = N_PROMPT - t < step ? N_PROMPT - t : step;
        model_forward(c, seqs, prompt + t, n, want);
        memcpy(out + (size_t)t * V, c->logits, (size_t)n * V * sizeof(float));
    }
    sequence_free(&s);
    context_free(c);
}

static void logits_with(const Model *m, const Positions *p, int step, float *out) { logits_fed(m, p, step, 0, out); }

/* Runs the prompt through the engine as one batch (all logits, 2 threads)
   and through the reference one token at a time; returns the worst relative error. */
static double compare_with_reference(const Model *m) {
    int V = m->cfg.vocab_size, ctx = 64;
    float *logits = malloc((size_t)N_PROMPT * V * sizeof(float)), *ref = malloc(V * sizeof(float));
    logits_with(m, NULL, 0, logits);
    RefModel r;
    ref_init(&r, m, ctx);
    double worst = 0;
    for (int t = 0; t < N_PROMPT; t++) {
        ref_forward(&r, ctx, prompt[t], t, ref);
        double e = rel_error(logits + (size_t)t * V, ref, V);
        if (e > worst) worst = e;
    }
    free(ref);
    free(logits);
    ref_free(&r);
    return worst;
}

/* ---------------------------------------------------------------------------
 * Batching and threads.
 */
static void test_batching_and_threads(const Model *m) {
    int V = m->cfg.vocab_size, ctx = 64;
    char err[256];
    float *batch_logits = malloc((size_t)N_PROMPT * V * sizeof(float));
    Sequence s, s2;
    Sequence *seqs[2 * N_PROMPT];
    uint8_t want[2 * N_PROMPT];
    memset(want, 1, sizeof want);

    /* one batch, 1 thread: the baseline */
    Context *c = context_new(m, ctx, 2 * N_PROMPT, 2 * N_PROMPT, 1, NULL, err, sizeof err);
    sequence_init(&s, c, ctx, err, sizeof err);
    for (int i = 0; i < N_PROMPT; i++) seqs[i] = &s;
    int rows = model_forward(c, seqs, prompt, N_PROMPT, want);
    memcpy(batch_logits, c->logits, (size_t)N_PROMPT * V * sizeof(float));
    CHECK(rows == N_PROMPT && s.n_past == N_PROMPT, "a %d-token batch returns a logit row per wanted token", N_PROMPT);

    /* token by token */
    int same = 1;
    s.n_past = 0;
    for (int t = 0; t < N_PROMPT; t++) {
        model_forward(c, seqs, prompt + t, 1, NULL);
        same &= !memcmp(c->logits, batch_logits + (size_t)t * V, V * sizeof(float));
    }
    CHECK(same, "prefill as one batch == token-by-token decode, bit for bit");

    /* two sequences interleaved in one batch: A gets the prompt, B its reverse */
    int tokens[2 * N_PROMPT];
    sequence_init(&s2, c, ctx, err, sizeof err);
    s.n_past = 0;
    for (int t = 0; t < N_PROMPT; t++) {
        tokens[2 * t] = prompt[t], seqs[2 * t] = &s;
        tokens[2 * t + 1] = prompt[N_PROMPT - 1 - t], seqs[2 * t + 1] = &s2;
    }
    model_forward(c, seqs, tokens, 2 * N_PROMPT, want);
    same = 1;
    for (int t = 0; t < N_PROMPT; t++) same &= !memcmp(c->logits + (size_t)2 * t * V, batch_logits + (size_t)t * V, V * sizeof(float));
    float *b_logits = malloc((size_t)N_PROMPT * V * sizeof(float));
    for (int t = 0; t < N_PROMPT; t++) memcpy(b_logits + (size_t)t * V, c->logits + (size_t)(2 * t + 1) * V, V * sizeof(float));
    s2.n_past = 0;
    int rev[N_PROMPT];
    for (int t = 0; t < N_PROMPT; t++) rev[t] = prompt[N_PROMPT - 1 - t], seqs[t] = &s2;
    model_forward(c, seqs, rev, N_PROMPT, want);
    same &= !memcmp(c->logits, b_logits, (size_t)N_PROMPT * V * sizeof(float));
    CHECK(same, "two sequences sharing a batch == each run alone, bit for bit");
    context_free(c);

    for (int threads = 2; threads <= 4; threads++) {
        c = context_new(m, ctx, N_PROMPT, N_PROMPT, threads, NULL, err, sizeof err);
        s.n_past = 0;
        for (int i = 0; i < N_PROMPT; i++) seqs[i] = &s;
        model_forward(c, seqs, prompt, N_PROMPT, want);
        CHECK(!memcmp(c->logits, batch_logits, (size_t)N_PROMPT * V * sizeof(float)),
              "%d threads give bit-identical logits to 1 thread", threads);
        context_free(c);
    }

    c = context_new(m, ctx, 4, 4, 1, NULL, err, sizeof err);
    s.n_past = 0;
    for (int i = 0; i < 4; i++) seqs[i] = &s;
    rows = model_forward(c, seqs, prompt, 5, NULL);
    CHECK(rows < 0 && strstr(c->error, "batch"), "a batch larger than the context's maximum is refused: %s", c->error);
    int bad_token = m->cfg.vocab_size;
    rows = model_forward(c, seqs, &bad_token, 1, NULL);
    CHECK(rows < 0 && strstr(c->error, "out of range"), "an out-of-range token id is refused: %s", c->error);
    s.n_past = s.capacity - 2;
    rows = model_forward(c, seqs, prompt, 4, NULL);
    CHECK(rows < 0 && strstr(c->error, "context full") && s.n_past == s.capacity - 2,
          "a batch that overflows its sequence is refused and leaves it as it was: %s", c->error);
    context_free(c);
    sequence_free(&s);
    sequence_free(&s2);
    free(batch_logits);
    free(b_logits);
}

/* ---------------------------------------------------------------------------
 * Positions (--pos): the invariants of docs/POSITIONS.md, "How it is checked".
 */
static void test_positions(const Model *m) {
    size_t bytes = (size_t)N_PROMPT * m->cfg.vocab_size * sizeof(float);
    float *rope = malloc(bytes), *a = malloc(bytes), *b = malloc(bytes);
    const Positions model = {POS_MODEL, 0, 1, 0}, nope = {POS_NOPE, 0, 1, 0};
    logits_with(m, &model, 0, rope);

    logits_with(m, &(Positions){POS_REROPE, N_PROMPT, 1, 0}, 0, a);
    CHECK(!memcmp(a, rope, bytes), "ReRoPE with a window as long as the text == RoPE, bit for bit");
    logits_with(m, &(Positions){POS_REROPE, 4, 1, 0}, 0, a);
    CHECK(rel_error(a, rope, (int)(bytes / 4)) > 1e-3, "ReRoPE with window 4 differs from RoPE (rel %.2g)",
          rel_error(a, rope, (int)(bytes / 4)));
    logits_with(m, &(Positions){POS_REROPE, 0, 1, 0}, 0, a);
    logits_with(m, &nope, 0, b);
    CHECK(!memcmp(a, b, bytes), "ReRoPE with window 0 == NoPE, bit for bit");
    CHECK(rel_error(b, rope, (int)(bytes / 4)) > 1e-3, "NoPE differs from RoPE");
    logits_with(m, &(Positions){POS_LEAKY, 4, 1, 0}, 0, a);
    double e = rel_error(a, rope, (int)(bytes / 4));
    CHECK(e < 1e-5, "Leaky ReRoPE with K = 1 == RoPE to rounding (rel %.2g)", e);
    logits_with(m, &(Positions){POS_LEAKY, 4, 1e9f, 0}, 0, a);
    logits_with(m, &(Positions){POS_REROPE, 4, 1, 0}, 0, b);
    e = rel_error(a, b, (int)(bytes / 4));
    CHECK(e < 1e-4, "Leaky ReRoPE with a huge K == ReRoPE to rounding (rel %.2g)", e);
    logits_with(m, &(Positions){POS_MODEL, 0, 1, N_PROMPT}, 0, a);
    CHECK(!memcmp(a, rope, bytes), "log-n with L at least the text length changes nothing");
    logits_with(m, &(Positions){POS_MODEL, 0, 1, 4}, 0, a);
    CHECK(rel_error(a, rope, (int)(bytes / 4)) > 1e-4, "log-n with L = 4 sharpens the later queries");

    const Positions cases[] = {{POS_REROPE, 5, 1, 8}, {POS_LEAKY, 5, 4, 8}, {POS_NOPE, 0, 1, 0}};
    const char *names[] = {"ReRoPE W=5 with log-n", "Leaky W=5 K=4 with log-n", "NoPE"};
    for (int i = 0; i < 3; i++) {
        logits_with(m, &cases[i], 0, a);
        logits_with(m, &cases[i], 1, b);
        CHECK(!memcmp(a, b, bytes), "%s: prefill as one batch == token-by-token decode, bit for bit", names[i]);
    }
    free(rope);
    free(a);
    free(b);
}

/* ---------------------------------------------------------------------------
 * Rope scaling set at run time (--rope-scaling): NTK-aware and dynamic NTK.
 * The numbers themselves are checked against float64 references by
 * check_positions.py and check_hf.py; these are the invariants.
 */
static void test_rope_scaling(Model *m) {
    size_t bytes = (size_t)N_PROMPT * m->cfg.vocab_size * sizeof(float);
    int n = (int)(bytes / sizeof(float));
    float *rope = malloc(bytes), *a = malloc(bytes), *b = malloc(bytes);
    ModelConfig saved = m->cfg;
    logits_with(m, NULL, 0, rope);

    m->cfg.rope_scaling = ROPE_SCALING_NTK, m->cfg.rope_factor = 1;
    logits_with(m, NULL, 0, a);
    CHECK(!memcmp(a, rope, bytes), "NTK-aware scaling with factor 1 == RoPE, bit for bit");
    m->cfg.rope_factor = 4;
    logits_with(m, NULL, 0, a);
    CHECK(rel_error(a, rope, n) > 1e-4, "NTK-aware scaling with factor 4 differs from RoPE (rel %.2g)", rel_error(a, rope, n));

    m->cfg.rope_scaling = ROPE_SCALING_DYNAMIC, m->cfg.rope_factor = 4, m->cfg.rope_orig_ctx = N_PROMPT;
    logits_fed(m, NULL, 0, N_PROMPT, a);
    CHECK(!memcmp(a, rope, bytes), "dynamic NTK within its original context == RoPE, bit for bit");
    m->cfg.rope_orig_ctx = 8;
    logits_fed(m, NULL, 0, 0, a);
    logits_fed(m, NULL, 1, 0, b);
    CHECK(!memcmp(a, b, bytes) && rel_error(a, rope, n) > 1e-4,
          "dynamic NTK past its original context: differs from RoPE, and one batch == token by token, bit for bit");
    logits_fed(m, NULL, 0, N_PROMPT, a);
    logits_fed(m, NULL, 7, N_PROMPT, b);
    CHECK(!memcmp(a, b, bytes), "dynamic NTK with the prompt's length set: one batch == batches of 7, bit for bit");
    logits_fed(m, NULL, 1, 0, b);
    CHECK(rel_error(a, b, n) > 1e-5, "dynamic NTK: rotating the prompt for its whole length differs from "
          "rotating each token for the length so far (rel %.2g)", rel_error(a, b, n));

    char err[256];
    m->cfg.rope_scaling = ROPE_SCALING_NTK, m->cfg.rope_factor = 0.5f;
    Context *c = context_new(m, 64, 4, 4, 1, NULL, err, sizeof err);
    CHECK(!c && strstr(err, "factor"), "a context refuses rotary settings changed to nonsense: %s", err);
    context_free(c);
    m->cfg = saved;
    free(rope);
    free(a);
    free(b);
}

/* ---------------------------------------------------------------------------
 * Latent attention and experts: a tiny random DeepSeek-style model built in
 * memory (layer 0 dense, layer 1 MoE with a sigmoid router, groups and a
 * shared expert). Its numbers are checked against transformers by
 * check_hf.py; these are the invariants.
 */
static float rand_weight(uint32_t *state, float scale) {
    *state ^= *state << 13, *state ^= *state >> 17, *state ^= *state << 5;
    return ((float)(*state >> 8) / (1 << 24) - 0.5f) * scale;
}

static int build_mla_model(Model *m, int q_lora) {
    memset(m, 0, sizeof *m);
    ModelConfig *c = &m->cfg;
    *c = (ModelConfig){.arch = ARCH_LLAMA, .dim = 64, .n_layers = 2, .n_heads = 4, .n_kv_heads = 4, .head_dim = 40,
                       .v_head_dim = 16, .hidden_dim = 96, .vocab_size = 512, .max_seq_len = 64, .norm_eps = 1e-5f,
                       .rope_theta = 10000, .rope_dim = 8, .attn_kind = ATTN_MLA, .q_lora_rank = q_lora,
                       .kv_lora_rank = 32, .qk_nope_head_dim = 32, .qk_rope_head_dim = 8, .ffn_kind = FFN_MOE,
                       .n_experts = 8, .n_experts_used = 2, .n_shared_experts = 1, .moe_hidden_dim = 32,
                       .first_k_dense = 1, .router = ROUTER_SIGMOID, .n_expert_groups = 4, .topk_groups = 2,
                       .norm_topk_prob = 1, .routed_scaling = 2.5f};
    struct { char name[96]; int rows, cols; float scale, base; } t[64];
    int n = 0, dim = c->dim, h = c->n_heads, lat = c->kv_lora_rank, dn = c->qk_nope_head_dim, dv = c->v_head_dim;
#define T(nm, r, cl, sc, b) (snprintf(t[n].name, sizeof t[n].name, "%s", nm), t[n].rows = r, t[n].cols = cl, t[n].scale = sc, t[n++].base = b)
    T("tok_embeddings", c->vocab_size, dim, 2, 0); T("output", c->vocab_size, dim, 0.5f, 0); T("norm", 0, dim, 0.2f, 1);
    for (int l = 0; l < 2; l++) {
        char nm[80];
#define L_(suffix) (snprintf(nm, sizeof nm, "layers.%d.%s", l, suffix), nm)
        T(L_("attention_norm"), 0, dim, 0.2f, 1); T(L_("ffn_norm"), 0, dim, 0.2f, 1);
        if (q_lora) { T(L_("attention.wq_a"), q_lora, dim, 0.3f, 0); T(L_("attention.q_a_norm"), 0, q_lora, 0.2f, 1);
                      T(L_("attention.wq_b"), h * c->head_dim, q_lora, 0.4f, 0); }
        else T(L_("attention.wq"), h * c->head_dim, dim, 0.3f, 0);
        T(L_("attention.wkv_a"), lat + c->qk_rope_head_dim, dim, 0.3f, 0); T(L_("attention.kv_a_norm"), 0, lat, 0.2f, 1);
        T(L_("attention.wkv_b"), h * (dn + dv), lat, 0.4f, 0); T(L_("attention.wk_b"), h * lat, dn, 0, 0);
        T(L_("attention.wo"), dim, h * dv, 0.3f, 0);
        if (l == 0) { T(L_("feed_forward.w1"), c->hidden_dim, dim, 0.3f, 0); T(L_("feed_forward.w2"), dim, c->hidden_dim, 0.3f, 0);
                      T(L_("feed_forward.w3"), c->hidden_dim, dim, 0.3f, 0); continue; }
        T(L_("feed_forward.router"), c->n_experts, dim, 0.5f, 0); T(L_("feed_forward.router_bias"), 0, c->n_experts, 0.1f, 0);
        T(L_("feed_forward.shared.w1"), 32, dim, 0.3f, 0); T(L_("feed_forward.shared.w2"), dim, 32, 0.3f, 0);
        T(L_("feed_forward.shared.w3"), 32, dim, 0.3f, 0);
        for (int e = 0; e < c->n_experts; e++) {
            char en[40];
            snprintf(en, sizeof en, "feed_forward.experts.%d.w1", e); T(L_(en), 32, dim, 0.3f, 0);
            snprintf(en, sizeof en, "feed_forward.experts.%d.w2", e); T(L_(en), dim, 32, 0.3f, 0);
            snprintf(en, sizeof en, "feed_forward.experts.%d.w3", e); T(L_(en), 32, dim, 0.3f, 0);
        }
#undef L_
    }
#undef T
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)(t[i].rows ? t[i].rows : 1) * t[i].cols;
    float *data = malloc(total * sizeof(float)), *p = data, *wkv_b = NULL;
    m->owned = data;
    uint32_t state = 12345;
    int cap = 0;
    for (int i = 0; i < n; i++) {
        size_t count = (size_t)(t[i].rows ? t[i].rows : 1) * t[i].cols;
        for (size_t k = 0; k < count; k++) p[k] = t[i].base + rand_weight(&state, t[i].scale);
        if (strstr(t[i].name, "attention.wkv_b")) wkv_b = p;
        if (strstr(t[i].name, "attention.wk_b")) /* per head, the transpose of wkv_b's key rows */
            for (int hh = 0; hh < h; hh++)
                for (int r = 0; r < lat; r++)
                    for (int j = 0; j < dn; j++) p[((size_t)hh * lat + r) * dn + j] = wkv_b[((size_t)hh * (dn + dv) + j) * lat + r];
        if (add_tensor(m, &cap, t[i].name, TYPE_F32, t[i].rows, t[i].cols, p)) return -1;
        p += count;
    }
    char err[256];
    if (model_bind(m, err, sizeof err)) {
        CHECK(0, "the random latent-attention model binds: %s", err);
        return -1;
    }
    return 0;
}

/* A random llama-shaped model (f32, 2 layers) with the given heads. */
static int build_gqa_model(Model *m, int n_heads, int n_kv_heads, int hd) {
    memset(m, 0, sizeof *m);
    ModelConfig *c = &m->cfg;
    int dim = n_heads * hd, kv = n_kv_heads * hd, hidden = 64, V = 512;
    *c = (ModelConfig){.arch = ARCH_LLAMA, .dim = dim, .n_layers = 2, .n_heads = n_heads, .n_kv_heads = n_kv_heads,
                       .head_dim = hd, .v_head_dim = hd, .hidden_dim = hidden, .vocab_size = V, .max_seq_len = 256,
                       .norm_eps = 1e-5f, .rope_theta = 10000, .rope_dim = hd};
    struct { char name[64]; int rows, cols; float scale, base; } t[32];
    int n = 0;
#define T(r, cl, sc, b, ...) (snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__), t[n].rows = r, t[n].cols = cl, t[n].scale = sc, t[n++].base = b)
    T(V, dim, 2, 0, "tok_embeddings"); T(V, dim, 0.5f, 0, "output"); T(0, dim, 0.2f, 1, "norm");
    for (int l = 0; l < 2; l++) {
        T(0, dim, 0.2f, 1, "layers.%d.attention_norm", l); T(0, dim, 0.2f, 1, "layers.%d.ffn_norm", l);
        T(dim, dim, 0.6f, 0, "layers.%d.attention.wq", l); T(kv, dim, 0.6f, 0, "layers.%d.attention.wk", l);
        T(kv, dim, 0.4f, 0, "layers.%d.attention.wv", l); T(dim, dim, 0.3f, 0, "layers.%d.attention.wo", l);
        T(hidden, dim, 0.3f, 0, "layers.%d.feed_forward.w1", l); T(dim, hidden, 0.3f, 0, "layers.%d.feed_forward.w2", l);
        T(hidden, dim, 0.3f, 0, "layers.%d.feed_forward.w3", l);
    }
#undef T
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)(t[i].rows ? t[i].rows : 1) * t[i].cols;
    float *data = malloc(total * sizeof(float)), *p = data;
    m->owned = data;
    uint32_t state = 777u + (uint32_t)n_heads * 31u + (uint32_t)n_kv_heads;
    int cap = 0;
    for (int i = 0; i < n; i++) {
        size_t count = (size_t)(t[i].rows ? t[i].rows : 1) * t[i].cols;
        for (size_t k = 0; k < count; k++) p[k] = t[i].base + rand_weight(&state, t[i].scale);
        if (add_tensor(m, &cap, t[i].name, TYPE_F32, t[i].rows, t[i].cols, p)) return -1;
        p += count;
    }
    char err[256];
    if (model_bind(m, err, sizeof err)) {
        CHECK(0, "the random %d/%d-head model binds: %s", n_heads, n_kv_heads, err);
        return -1;
    }
    return 0;
}

/* Attention over several 64-position tiles with groups of 3 and 8 query
   heads per KV head (head sizes 8 and 12: SIMD blocks of 4, 2 and 1 heads,
   and a tail of 4 elements), fed in uneven batches on 2 threads, against
   the naive reference one token at a time; and head size 32 with f32, f16
   and q8_0 caches, the last two within their rounding. */
static void test_gqa_tiles(void) {
    const int shapes[][4] = {{12, 4, 8, TYPE_F32}, {8, 1, 12, TYPE_F32}, {4, 2, 32, TYPE_F32}, {4, 2, 32, TYPE_F16}, {4, 2, 32, TYPE_Q8_0}};
    enum { LEN = 150 };
    for (int k = 0; k < 5; k++) {
        Model m;
        if (build_gqa_model(&m, shapes[k][0], shapes[k][1], shapes[k][2])) continue;
        int V = m.cfg.vocab_size, tokens[LEN];
        uint32_t state = 99;
        for (int i = 0; i < LEN; i++) tokens[i] = (int)((rand_weight(&state, 1) + 0.5f) * (V - 1));
        char err[256];
        Context *c = context_new(&m, LEN, 64, 64, 2, NULL, err, sizeof err);
        Sequence s;
        RefModel r;
        if (!c || sequence_init(&s, c, LEN, err, sizeof err)) {
            CHECK(0, "GQA %d/%d context: %s", shapes[k][0], shapes[k][1], err);
            model_free(&m);
            continue;
        }
        c->kv_type = shapes[k][3];
        sequence_free(&s);
        if (sequence_init(&s, c, LEN, err, sizeof err)) {
            CHECK(0, "GQA %s cache: %s", type_name(shapes[k][3]), err);
            context_free(c);
            model_free(&m);
            continue;
        }
        ref_init(&r, &m, LEN);
        float *ref = malloc((size_t)V * sizeof(float));
        Sequence *seqs[64];
        uint8_t want[64];
        for (int i = 0; i < 64; i++) seqs[i] = &s, want[i] = 1;
        double worst = 0;
        for (int t = 0, step = 37; t < LEN; t += step) { /* batches that straddle the tiles */
            int nb = LEN - t < step ? LEN - t : step;
            model_forward(c, seqs, tokens + t, nb, want);
            for (int i = 0; i < nb; i++) {
                ref_forward(&r, LEN, tokens[t + i], t + i, ref);
                double e = rel_error(c->logits + (size_t)i * V, ref, V);
                if (e > worst) worst = e;
            }
        }
        /* This random model is sharp (its f16 cache moves the logits 1.7e-3,
           q8_0's 4.5e-2, the same in the scalar build); a wrong scale or
           block moves them by about 1. */
        double tol = shapes[k][3] == TYPE_Q8_0 ? 0.1 : shapes[k][3] == TYPE_F16 ? 1e-2 : 1e-5;
        CHECK(worst < tol, "GQA, %d query heads on %d KV heads, head size %d, %s cache: 150 positions (3 attention tiles) in "
              "batches of 37 match the naive reference (rel %.2g, limit %g)", shapes[k][0], shapes[k][1], m.cfg.head_dim,
              type_name(shapes[k][3]), worst, tol);
        free(ref);
        ref_free(&r);
        sequence_free(&s);
        context_free(c);
        model_free(&m);
    }
}

/* An f16 KV cache: logits within f16 rounding of the f32 cache's, and the
   bit-for-bit invariants hold within it (batching, threads, ReRoPE). */
static void test_kv_f16(const Model *m, const char *what) {
    size_t bytes = (size_t)N_PROMPT * m->cfg.vocab_size * sizeof(float);
    int n = (int)(bytes / sizeof(float));
    float *f32 = malloc(bytes), *a = malloc(bytes), *b = malloc(bytes);
    logits_fed(m, NULL, 0, 0, f32);
    kv_type = TYPE_F16;
    logits_fed(m, NULL, 0, 0, a);
    double e = rel_error(a, f32, n);
    CHECK(e > 0 && e < 2e-3, "%s, f16 KV cache: logits within f16 rounding of the f32 cache's (rel %.2g)", what, e);
    logits_fed(m, NULL, 1, 0, b);
    int same = !memcmp(a, b, bytes);
    logits_threads(m, NULL, 7, 0, 3, b);
    same &= !memcmp(a, b, bytes);
    CHECK(same, "%s, f16 KV cache: one batch == token by token == batches of 7 on 3 threads, bit for bit", what);
    Positions wide = {POS_REROPE, 1000, 1.0f, 0}, leaky = {POS_LEAKY, 4, 3.0f, 0};
    logits_fed(m, &wide, 0, 0, b);
    same = !memcmp(a, b, bytes);
    logits_fed(m, &leaky, 0, 0, a);
    logits_fed(m, &leaky, 1, 0, b);
    CHECK(same && !memcmp(a, b, bytes), "%s, f16 KV cache: ReRoPE with a wide window == RoPE; Leaky W=4 prefill == decode, "
          "bit for bit (far keys in f16 too)", what);
    kv_type = TYPE_F32;
    free(f32);
    free(a);
    free(b);
}

static void test_mla(int q_lora) {
    Model m;
    if (build_mla_model(&m, q_lora)) return;
    size_t bytes = (size_t)N_PROMPT * m.cfg.vocab_size * sizeof(float);
    int n = (int)(bytes / sizeof(float));
    float *rope = malloc(bytes), *a = malloc(bytes);
    const char *what = q_lora ? "latent attention with a query latent, MoE" : "latent attention, MoE";
    /* the two ways to attend: expanded (the default for this prefill) and absorbed */
    mla_path = 2;
    logits_fed(&m, NULL, 0, 0, a);
    mla_path = 0;
    logits_fed(&m, NULL, 0, 0, rope);
    CHECK(!memcmp(a, rope, bytes), "%s: a 20-token prefill expands the latents (cheaper than absorbing)", what);
    mla_path = 1; /* absorbed from here on: the bit-for-bit invariants hold within one way */
    test_kv_f16(&m, what);
    logits_fed(&m, NULL, 0, 0, rope);
    CHECK(rel_error(a, rope, n) < 1e-5, "%s: expanded and absorbed attention agree to rounding (rel %.2g)", what,
          rel_error(a, rope, n));
    logits_fed(&m, NULL, 1, 0, a);
    CHECK(!memcmp(a, rope, bytes), "%s: prefill as one batch == token-by-token decode, bit for bit", what);
    logits_fed(&m, NULL, 7, 0, a);
    CHECK(!memcmp(a, rope, bytes), "%s: batches of 7 == one batch, bit for bit", what);
    logits_threads(&m, NULL, 0, 0, 1, a);
    int same = !memcmp(a, rope, bytes);
    logits_threads(&m, NULL, 0, 0, 3, a);
    CHECK(same && !memcmp(a, rope, bytes), "%s: 1, 2 and 3 threads give bit-identical logits", what);
    logits_fed(&m, &(Positions){POS_REROPE, N_PROMPT, 1, 0}, 0, 0, a);
    CHECK(!memcmp(a, rope, bytes), "%s: ReRoPE with a window as long as the text == RoPE, bit for bit", what);
    logits_fed(&m, &(Positions){POS_REROPE, 4, 1, 0}, 0, 0, a);
    CHECK(rel_error(a, rope, n) > 1e-4, "%s: ReRoPE with window 4 differs (rel %.2g)", what, rel_error(a, rope, n));
    float *b = malloc(bytes);
    logits_fed(&m, &(Positions){POS_REROPE, 4, 1, 8}, 1, 0, b);
    logits_fed(&m, &(Positions){POS_REROPE, 4, 1, 8}, 0, 0, a);
    CHECK(!memcmp(a, b, bytes), "%s: ReRoPE W=4 with log-n, prefill == token-by-token decode, bit for bit", what);
    mla_path = 2;
    logits_fed(&m, &(Positions){POS_REROPE, 4, 1, 8}, 0, 0, a);
    mla_path = 1;
    CHECK(rel_error(a, b, n) < 1e-5, "%s: ReRoPE W=4 with log-n, expanded and absorbed agree to rounding (rel %.2g)",
          what, rel_error(a, b, n));
    logits_fed(&m, &(Positions){POS_LEAKY, 4, 1, 0}, 0, 0, a);
    CHECK(rel_error(a, rope, n) < 1e-5, "%s: Leaky ReRoPE with K = 1 == RoPE to rounding (rel %.2g)", what, rel_error(a, rope, n));

    /* two sequences in one batch (the experts see both sequences' tokens) == each alone */
    char err[256];
    Context *c = context_new(&m, 64, 2 * N_PROMPT, 2 * N_PROMPT, 2, NULL, err, sizeof err);
    Sequence s1, s2;
    sequence_init(&s1, c, 64, err, sizeof err);
    sequence_init(&s2, c, 64, err, sizeof err);
    Sequence *seqs[2 * N_PROMPT];
    int tokens[2 * N_PROMPT];
    uint8_t want[2 * N_PROMPT];
    for (int t = 0; t < N_PROMPT; t++) {
        tokens[2 * t] = prompt[t], seqs[2 * t] = &s1, want[2 * t] = 1;
        tokens[2 * t + 1] = prompt[N_PROMPT - 1 - t], seqs[2 * t + 1] = &s2, want[2 * t + 1] = 0;
    }
    c->mla_path = 1;
    model_forward(c, seqs, tokens, 2 * N_PROMPT, want);
    CHECK(!memcmp(c->logits, rope, bytes), "%s: a sequence sharing its batch with another == alone, bit for bit", what);
    CHECK(model_kv_bytes_per_token(&m) == (size_t)m.cfg.n_layers * (m.cfg.kv_lora_rank + m.cfg.qk_rope_head_dim) * 4 &&
              !s1.v, "%s: the cache holds %zu bytes per token, layers x (latent + rotary key) x 4, and no values", what,
          model_kv_bytes_per_token(&m));
    /* only the chosen experts are read: poison every other expert of the MoE
       layer with NaN (the weights are this test's own memory) and feed the
       same token again */
    int V = m.cfg.vocab_size, chosen[2] = {0}, used = m.cfg.n_experts_used;
    s1.n_past = 0;
    model_forward(c, seqs, prompt, 1, NULL);
    memcpy(chosen, c->route_id, (size_t)used * sizeof(int));
    float *before = malloc((size_t)V * sizeof(float));
    memcpy(before, c->logits, (size_t)V * sizeof(float));
    const Layer *moe_layer_1 = &m.layers[1];
    for (int e = 0; e < m.cfg.n_experts; e++) {
        if (e == chosen[0] || e == chosen[1]) continue;
        const Matrix *w = &moe_layer_1->experts[e].w1;
        for (size_t i = 0; i < (size_t)w->rows * w->cols; i++) ((float *)w->data)[i] = NAN;
    }
    s1.n_past = 0;
    model_forward(c, seqs, prompt, 1, NULL);
    CHECK(used == 2 && !memcmp(before, c->logits, (size_t)V * sizeof(float)),
          "%s: a token reads only its %d chosen experts (the others poisoned with NaN change nothing)", what, used);
    free(before);
    sequence_free(&s1);
    sequence_free(&s2);
    context_free(c);
    mla_path = 0;
    free(rope);
    free(a);
    free(b);
    model_free(&m);
}

/* ---------------------------------------------------------------------------
 * llama2.c formats.
 */
static float *deq_tensor(const Tensor *t, size_t *numel) {
    int64_t cols = t->shape[t->ndim - 1], rows = 1;
    for (int d = 0; d < t->ndim - 1; d++) rows *= t->shape[d];
    float *x = malloc((size_t)rows * cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        dequantize_row(t->type, (const uint8_t *)t->data + r * type_row_bytes(t->type, cols), x + r * cols, cols);
    *numel = (size_t)rows * cols;
    return x;
}

/* Same names and shapes, and every value within tol of the reference, measured
   against the largest magnitude of its scale group: `group` consecutive
   elements (0: a row). The worst error goes to *worst. */
static int same_tensors(const Model *ref, const Model *b, int group, double tol, double *worst) {
    *worst = 0;
    if (ref->n_tensors != b->n_tensors) return 0;
    for (int i = 0; i < ref->n_tensors; i++) {
        const Tensor *ta = &ref->tensors[i], *tb = model_tensor(b, ta->name);
        if (!tb || ta->ndim != tb->ndim || memcmp(ta->shape, tb->shape, sizeof ta->shape)) return 0;
        size_t n, n2, g = group ? (size_t)group : (size_t)ta->shape[ta->ndim - 1];
        float *xa = deq_tensor(ta, &n), *xb = deq_tensor(tb, &n2);
        for (size_t s = 0; s < n; s += g) {
            float amax = 0;
            for (size_t j = s; j < s + g && j < n; j++) amax = fmaxf(amax, fabsf(xa[j]));
            for (size_t j = s; j < s + g && j < n; j++) {
                double e = fabs(xa[j] - xb[j]) / (amax + 1e-30);
                if (e > *worst) *worst = e;
            }
        }
        free(xa);
        free(xb);
    }
    return *worst <= tol;
}

/* Writes stories260K as a llama2.c version-2 file: 256-byte header (magic,
   version 2, seven ints, shared-classifier byte, group size), f32 norms,
   then every matrix's int8 values, then all their f32 scales. */
static int write_v2(const Model *m, const char *path, int group) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint8_t hdr[256] = {0};
    uint32_t magic = 0x616b3432u;
    int32_t ints[9] = {0, 2, m->cfg.dim, m->cfg.hidden_dim, m->cfg.n_layers, m->cfg.n_heads, m->cfg.n_kv_heads,
                       m->cfg.vocab_size, m->cfg.max_seq_len};
    memcpy(ints, &magic, 4);
    memcpy(hdr, ints, sizeof ints);
    hdr[36] = 1;
    memcpy(hdr + 37, &group, 4);
    fwrite(hdr, 1, 256, f);
    char name[64];
    const char *norms[] = {"attention_norm", "ffn_norm"};
    for (int k = 0; k < 2; k++)
        for (int l = 0; l < m->cfg.n_layers; l++) {
            snprintf(name, sizeof name, "layers.%d.%s", l, norms[k]);
            const Tensor *t = model_tensor(m, name);
            fwrite(t->data, 1, t->nbytes, f);
        }
    fwrite(model_tensor(m, "norm")->data, 1, m->cfg.dim * 4, f);
    const char *mats[] = {"attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"};
    const Tensor *order[64];
    int n = 0;
    order[n++] = model_tensor(m, "tok_embeddings");
    for (int k = 0; k < 7; k++)
        for (int l = 0; l < m->cfg.n_layers; l++) {
            snprintf(name, sizeof name, "layers.%d.%s", l, mats[k]);
            order[n++] = model_tensor(m, name);
        }
    for (int pass = 0; pass < 2; pass++) /* values, then scales */
        for (int i = 0; i < n; i++) {
            const float *w = order[i]->data;
            size_t numel = order[i]->nbytes / 4;
            for (size_t g = 0; g < numel / group; g++) {
                float amax = 0;
                for (int j = 0; j < group; j++) amax = fmaxf(amax, fabsf(w[g * group + j]));
                float scale = amax / 127.0f;
                if (pass == 1) { fwrite(&scale, 4, 1, f); continue; }
                for (int j = 0; j < group; j++) {
                    int8_t q = (int8_t)roundf(scale ? w[g * group + j] / scale : 0);
                    fwrite(&q, 1, 1, f);
                }
            }
        }
    return fclose(f);
}

/* Greedy tokens of models a and b (NULL: a alone), each with its own
   context and sequence; with b, their steps alternate. */
static void greedy_side_by_side(const Model *a, const Model *b, int n, int *out_a, int *out_b) {
    const Model *ms[2] = {a, b};
    int *outs[2] = {out_a, out_b}, n_models = b ? 2 : 1;
    Context *c[2] = {NULL, NULL};
    Sequence s[2];
    const float *logits[2];
    char err[256];
    for (int i = 0; i < n_models; i++) {
        c[i] = context_new(ms[i], 64, 8, 1, 2, NULL, err, sizeof err);
        sequence_init(&s[i], c[i], 64, err, sizeof err);
        logits[i] = sequence_feed(c[i], &s[i], prompt, 5);
    }
    for (int t = 0; t < n; t++)
        for (int i = 0; i < n_models; i++) {
            outs[i][t] = argmax(logits[i], ms[i]->cfg.vocab_size);
            logits[i] = sequence_feed(c[i], &s[i], &outs[i][t], 1);
        }
    for (int i = 0; i < n_models; i++) sequence_free(&s[i]), context_free(c[i]);
}

/* No global state: a real model and a random GQA model, decoding in turn. */
static void test_two_models(const Model *v0) {
    Model g;
    if (build_gqa_model(&g, 8, 2, 16)) {
        CHECK(0, "two models: the random model builds");
        return;
    }
    int alone0[40], alone1[40], both0[40], both1[40], differ = 0;
    greedy_side_by_side(v0, NULL, 40, alone0, NULL);
    greedy_side_by_side(&g, NULL, 40, alone1, NULL);
    greedy_side_by_side(v0, &g, 40, both0, both1);
    for (int t = 0; t < 40; t++) differ += alone0[t] != alone1[t];
    CHECK(differ > 20 && !memcmp(alone0, both0, sizeof alone0) && !memcmp(alone1, both1, sizeof alone1),
          "two models in one process, decoding in turn, each give the tokens they give alone (the two differ at %d of 40)", differ);
    model_free(&g);
}

static void test_llama2c_versions(const Model *v0) {
    char err[512];
    Model v1;
    int rc = model_load(&v1, path_v1, err, sizeof err);
    CHECK(rc == 0, "llama2.c version 1 file loads %s", rc ? err : "");
    if (rc) return;
    double worst;
    int same = same_tensors(v0, &v1, 0, 0, &worst);
    CHECK(same && !memcmp(&v0->cfg, &v1.cfg, sizeof v0->cfg),
          "versions 0 and 1 hold the same config and weights");
    model_free(&v1);

    char p2[4096];
    snprintf(p2, sizeof p2, "%s/stories260K_v2.bin", tmp_dir);
    Model v2;
    rc = write_v2(v0, p2, 64) || model_load(&v2, p2, err, sizeof err);
    CHECK(rc == 0, "llama2.c version 2 (int8, groups of 64) file loads %s", rc ? err : "");
    if (rc) return;
    same = same_tensors(v0, &v2, 64, 0.5 / 127 * 1.0001, &worst);
    CHECK(v2.source == SOURCE_LLAMA2C_V2 && same,
          "version 2 weights equal version 0 within half an int8 step of each group (worst %.5f of the group's max)", worst);
    double e = compare_with_reference(&v2);
    CHECK(e < 1e-5, "version 2 forward matches the reference on its own weights (rel %.2g)", e);
    model_free(&v2);
}

/* ---------------------------------------------------------------------------
 * ./export round trips.
 */
/* model_repack: the quantized matrices interleaved eight rows at a time
   give the same logits to rounding, and keep every bit-for-bit invariant.
   stories260K's gate/up have 172 rows and its down matrix is f16; in the
   shipped model every matrix is quantized with rows in eights, so all are
   interleaved, and a last-bit difference crosses int8 rounding boundaries
   in 8 layers, not 5 (5.5e-3 seen on x86): a looser bound there, still far
   below what a wrong block or scale does (about 1). */
static void test_repack(Model *m, const char *type, int stories) {
    int V = m->cfg.vocab_size;
    size_t bytes = (size_t)N_PROMPT * V * sizeof(float);
    float *plain = malloc(bytes), *a = malloc(bytes), *b = malloc(bytes);
    logits_fed(m, NULL, 0, 0, plain);
    CHECK(model_repack(m, 0) == 0 && !m->layers[0].wq.interleaved, "%s: model_repack copies nothing beyond its limit", type);
    long long got = model_repack(m, SIZE_MAX);
    const Layer *L = &m->layers[0];
    if (stories) {
        CHECK(got > 0 && L->wq.interleaved && L->wk.interleaved && L->wo.interleaved && m->output.interleaved &&
              !L->w1.interleaved && !L->w2.interleaved && !m->tok_emb.interleaved && m->output.data != m->tok_emb.data &&
              model_repack(m, SIZE_MAX) == 0,
              "%s: model_repack interleaves q/k/v/o and a copy of the tied classifier (%lld bytes), not gate/up (172 rows, not "
              "in eights), the f16 down matrix or the embeddings, and only once", type, got);
    } else {
        long long want = (long long)m->output.rows * m->output.row_bytes;
        int all = m->output.interleaved && !m->tok_emb.interleaved && m->output.data != m->tok_emb.data;
        for (int l = 0; l < m->cfg.n_layers; l++) {
            const Matrix *ws[] = {&m->layers[l].wq, &m->layers[l].wk, &m->layers[l].wv, &m->layers[l].wo,
                                  &m->layers[l].w1, &m->layers[l].w2, &m->layers[l].w3};
            for (int i = 0; i < 7; i++) all &= ws[i]->interleaved, want += (long long)ws[i]->rows * ws[i]->row_bytes;
        }
        CHECK(got == want && all && model_repack(m, SIZE_MAX) == 0,
              "%s: model_repack interleaves all seven matrices of every layer and a copy of the tied classifier (%lld "
              "bytes, their sum %lld), not the embeddings, and only once", type, got, want);
    }
    logits_fed(m, NULL, 0, 0, a);
    double e = rel_error(a, plain, N_PROMPT * V);
    /* The two kernels round differently in the last bit; where that moves a
       later activation across an int8 rounding boundary, the logits move by
       about one quantization step (seen at 1.3e-3 on ARM), not more. */
    double tol = stories ? 5e-3 : 5e-2;
    CHECK(e < tol, "%s repacked: logits equal the row-by-row kernels' to within activation quantization steps (rel %.2g, "
          "limit %g)", type, e, tol);
    logits_fed(m, NULL, 1, 0, b);
    CHECK(!memcmp(a, b, bytes), "%s repacked: prefill as one batch == token-by-token decode, bit for bit", type);
    logits_fed(m, NULL, 5, 0, b);
    int same = !memcmp(a, b, bytes);
    for (int th = 1; th <= 3; th += 2) {
        logits_threads(m, NULL, 0, 0, th, b);
        same &= !memcmp(a, b, bytes);
    }
    CHECK(same, "%s repacked: batches of 5 and 1 or 3 threads give the same bits", type);
    free(plain);
    free(a);
    free(b);
}

static void test_nbce_rows(const Model *m);
static void test_no_allocation_per_token(const Model *m);

static void test_export(const Model *v0) {
    const char *types[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};
    /* Worst element error relative to the row's largest value: f16 and bf16
       round each value; q8_0 steps are max/127, q4_0 steps max/8 (one step
       where the 4-bit range clamps). */
    const double tol[] = {0, 1.0 / 2048, 1.0 / 256, 0.5 / 127 * 1.01, 1.0 / 8 * 1.01};
    const int group[] = {0, 0, 0, QK, QK};
    const double fwd_tol[] = {1e-5, 1e-5, 1e-5, 1e-5, 1e-5};
    char cmd[16384], out[4096], err[512];
    for (int i = 0; i < 5; i++) {
        snprintf(out, sizeof out, "%s/stories260K_%s.bin", tmp_dir, types[i]);
        const char *exporter = getenv("EXPORT") ? getenv("EXPORT") : "./export";
        snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' --tokenizer '%s' --quant %s 2>/dev/null", exporter, path_v0, out, path_tok, types[i]);
        int rc = system(cmd);
        Model m;
        rc = rc || model_load(&m, out, err, sizeof err);
        CHECK(rc == 0, "export --quant %s writes a file that loads %s", types[i], rc ? err : "");
        if (rc) continue;
        Model stripped = m; /* compare weights only: the tokenizer tensors are extra */
        stripped.n_tensors = v0->n_tensors;
        double worst;
        int ok = same_tensors(v0, &stripped, group[i], tol[i], &worst);
        CHECK(ok && !memcmp(&m.cfg, &v0->cfg, sizeof m.cfg), "export %s: config equal, weights within %.3g of their group's max (worst %.3g)",
              types[i], tol[i], worst);
        if (i == 0) {
            int exact = 1;
            for (int t = 0; t < v0->n_tensors; t++) {
                const Tensor *a = &v0->tensors[t], *b = model_tensor(&m, a->name);
                exact &= b && a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes);
            }
            CHECK(exact, "export f32: every tensor byte-identical to the source");
        }
        for (int t = 0; t < m.n_tensors; t++) {
            size_t off = (const uint8_t *)m.tensors[t].data - (const uint8_t *)m.map;
            if (off % MODEL_ALIGN) { ok = 0; break; }
        }
        CHECK(ok, "export %s: every tensor is 64-byte aligned", types[i]);
        double e = compare_with_reference(&m);
        CHECK(e < (type_is_quantized(m.layers[0].wq.type) ? 2e-2 : fwd_tol[i]),
              "export %s: forward matches the f32 reference on the dequantized weights (rel %.2g)", types[i], e);
        if (type_is_quantized(m.layers[0].wq.type)) test_repack(&m, types[i], 1);
        if (i == 3) { /* the quantized path's invariants (the shipped model gets them without the assets) */
            test_batching_and_threads(&m);
            test_nbce_rows(&m);
            test_no_allocation_per_token(&m);
            test_two_models(&m);
            CHECK(m.layers[0].w1.type == TYPE_Q8_0 && m.layers[0].w2.type == TYPE_F16,
                  "rows of 172 (not a multiple of 32) fall back to f16, the rest stay q8_0");
            Tokenizer *t = tokenizer_load_llama2c(path_tok, m.cfg.vocab_size, err, sizeof err);
            TokenizerConfig ca, cb;
            TokenizerArray aa[TOKENIZER_MAX_ARRAYS], ab[TOKENIZER_MAX_ARRAYS];
            int na = tokenizer_serialize(t, &ca, aa), nb = tokenizer_serialize(m.tokenizer, &cb, ab);
            int same = na == nb && !memcmp(&ca, &cb, sizeof ca);
            for (int k = 0; same && k < na; k++) {
                size_t elem = aa[k].type == TOKENIZER_ARRAY_U8 ? 1 : 4;
                same = !strcmp(aa[k].name, ab[k].name) && aa[k].type == ab[k].type && aa[k].n == ab[k].n &&
                       !memcmp(aa[k].data, ab[k].data, (size_t)aa[k].n * elem);
            }
            CHECK(same, "the embedded tokenizer equals tokenizer.bin");
            tokenizer_free(t);
        }
        model_free(&m);
    }
}

/* ---------------------------------------------------------------------------
 * NBCE: the pooling step on hand-made distributions, then rows run together.
 */

/* An Nbce over a vocabulary of V tokens with no model behind it. */
static int nbce_small(Nbce *nb, Model *fake, Context *fc, int V, float beta, float eta, float top_p, int pool) {
    memset(fake, 0, sizeof *fake);
    memset(fc, 0, sizeof *fc);
    fake->cfg.vocab_size = V;
    fc->model = fake;
    fc->max_batch = fc->max_logits = 4;
    char err[256];
    return nbce_init(nb, fc, beta, eta, top_p, pool, err, sizeof err);
}

static int close_to(const float *a, const double *b, int n, double tol) {
    for (int i = 0; i < n; i++)
        if (isinf(b[i]) ? !(isinf(a[i]) && a[i] < 0) : !(fabs(a[i] - b[i]) <= tol)) return 0;
    return 1;
}

/* Two tokens with probabilities p and 1 - p: entropy H(p) (no nucleus cut). */
static void two_way(float *logits, double p) { logits[0] = (float)log(p), logits[1] = (float)log(1 - p); }

static double binary_entropy(double p) { return -p * log(p) - (1 - p) * log(1 - p); }

/* p in [0.5, 1) with H(p) = h. */
static double p_for_entropy(double h) {
    double lo = 0.5, hi = 1 - 1e-12;
    for (int i = 0; i < 200; i++) {
        double mid = (lo + hi) / 2;
        if (binary_entropy(mid) > h) lo = mid;
        else hi = mid;
    }
    return (lo + hi) / 2;
}

static void test_nbce_pooling(void) {
    Model fake;
    Context fc;
    Nbce nb;
    /* docs/NBCE.md's worked example ("One step, exactly"): beta 0.25, top-p 0.95, V = 5. */
    const float rows[3][5] = {{2, 1, 0.5f, -1, -3}, {0, 3, 0.2f, -2, -4}, {1, 0.9f, 1.1f, 0.8f, -5}};
    const double lp_want[3][5] = {{-0.499280, -1.499280, -1.999280, -INFINITY, -INFINITY},
                                  {-3.111762, -0.111762, -2.911762, -INFINITY, -INFINITY},
                                  {-1.343183, -1.443183, -1.243183, -1.543183, -INFINITY}};
    const double h_want[3] = {0.908590, 0.396828, 1.379825};
    const double z_want[5] = {-3.764883, 0.235117, -3.139883, -INFINITY, -INFINITY};
    if (nbce_small(&nb, &fake, &fc, 5, 0.25f, 0.1f, 0.95f, NBCE_MIN_ENTROPY)) { CHECK(0, "nbce_init"); return; }
    int lp_ok = 1, h_ok = 1;
    float lp[5], z[5];
    for (int r = 0; r < 3; r++) {
        float h = nbce_truncate(&nb, rows[r], lp);
        lp_ok &= close_to(lp, lp_want[r], 5, 2e-6);
        h_ok &= fabs(h - h_want[r]) < 2e-6;
    }
    CHECK(lp_ok, "NBCE golden vector: top-p 0.95 cuts each row as transformers' TopPLogitsWarper (no renormalising)");
    CHECK(h_ok, "NBCE golden vector: the entropies of the cut rows are 0.908590, 0.396828, 1.379825");
    for (int r = 0; r < 3; r++) nbce_add(&nb, rows[r]);
    int k = nbce_pool(&nb, z);
    CHECK(k == 1 && close_to(z, z_want, 5, 2e-6), "NBCE golden vector: context 1 is chosen and z = 1.25 lp1 - 0.25 lp0 "
          "(row 0's cut tokens -inf), got row %d, z = %g %g %g %g %g", k, z[0], z[1], z[2], z[3], z[4]);
    nb.prev = 2; /* the previous choice was row 2: 1.379825 - 0.1 is still above 0.396828 */
    for (int r = 0; r < 3; r++) nbce_add(&nb, rows[r]);
    CHECK(nbce_pool(&nb, z) == 1, "NBCE golden vector: with the bonus for the previous row 2, context 1 still wins");
    nbce_free(&nb);

    /* Stickiness: after row 1 was chosen, a rival lower by less than eta
       does not win; lower by more than eta it does. */
    nbce_small(&nb, &fake, &fc, 2, 0, 0.1f, 1.0f, NBCE_MIN_ENTROPY);
    float uncond[2], a[2], b[2];
    two_way(uncond, 0.6);
    two_way(a, p_for_entropy(0.5));
    int wins[2];
    for (int i = 0; i < 2; i++) {
        two_way(b, p_for_entropy(i ? 0.5 - 0.15 : 0.5 - 0.05));
        nb.prev = 1;
        nbce_add(&nb, uncond);
        nbce_add(&nb, a);
        nbce_add(&nb, b);
        wins[i] = nbce_pool(&nb, z);
    }
    CHECK(wins[0] == 1 && wins[1] == 2, "NBCE eta 0.1: a rival 0.05 lower keeps the previous row (got %d), 0.15 lower wins (got %d)",
          wins[0], wins[1]);
    nb.prev = 0; /* the first step has no bonus: the lower entropy wins outright */
    two_way(b, p_for_entropy(0.45));
    nbce_add(&nb, uncond), nbce_add(&nb, a), nbce_add(&nb, b);
    CHECK(nbce_pool(&nb, z) == 2 && nb.prev == 2, "NBCE: without a previous choice the least entropy wins and becomes the previous");
    /* equal entropies: the first row */
    nb.prev = 0;
    nbce_add(&nb, uncond), nbce_add(&nb, a), nbce_add(&nb, a);
    CHECK(nbce_pool(&nb, z) == 1, "NBCE: of two rows with equal entropy the first is chosen");
    nbce_free(&nb);

    /* Random distributions: the row chosen is the argmin of the entropies
       nbce_truncate reports (with the bonus), and z follows the formula. */
    uint32_t state = 12345;
    int follows = 1, formula = 1;
    enum { V = 64, R = 6 };
    nbce_small(&nb, &fake, &fc, V, 0.5f, 0.2f, 0.9f, NBCE_MIN_ENTROPY);
    float lg[R][V], lps[R][V], zz[V];
    for (int trial = 0; trial < 200; trial++) {
        float h[R];
        for (int r = 0; r < R; r++) {
            float sharp = 1 + 4 * (rand_weight(&state, 1) + 1);
            for (int v = 0; v < V; v++) lg[r][v] = sharp * rand_weight(&state, 1);
            h[r] = nbce_truncate(&nb, lg[r], lps[r]);
        }
        int prev = nb.prev, best = 1;
        float hb = h[1] - (prev == 1 ? nb.eta : 0);
        for (int r = 2; r < R; r++) {
            float hr = h[r] - (prev == r ? nb.eta : 0);
            if (hr < hb) best = r, hb = hr;
        }
        for (int r = 0; r < R; r++) nbce_add(&nb, lg[r]);
        int got = nbce_pool(&nb, zz);
        follows &= got == best;
        for (int v = 0; v < V; v++) {
            float want = lps[best][v] == -INFINITY ? -INFINITY : lps[0][v] > -100 ? 1.5f * lps[best][v] - 0.5f * lps[0][v] : lps[best][v];
            formula &= zz[v] == want;
        }
    }
    CHECK(follows, "NBCE: over 200 random steps the chosen row is the least entropy the truncation reported (eta for the previous)");
    CHECK(formula, "NBCE: z = (1 + beta) lp_chosen - beta lp_0 where row 0 kept the token, lp_chosen elsewhere, bit for bit");
    nbce_free(&nb);

    /* Mean pooling: the mean of the cut rows (cut tokens count as -100), -inf only where every row cut the token. */
    nbce_small(&nb, &fake, &fc, 5, 0.25f, 0.1f, 0.95f, NBCE_MEAN);
    for (int r = 0; r < 3; r++) nbce_add(&nb, rows[r]);
    k = nbce_pool(&nb, z);
    double mean_want[5];
    for (int v = 0; v < 5; v++) {
        double p1 = isinf(lp_want[1][v]) ? -100 : lp_want[1][v], p2 = isinf(lp_want[2][v]) ? -100 : lp_want[2][v];
        double pm = isinf(lp_want[1][v]) && isinf(lp_want[2][v]) ? -INFINITY : (p1 + p2) / 2;
        mean_want[v] = isinf(pm) ? pm : isinf(lp_want[0][v]) ? pm : 1.25 * pm - 0.25 * lp_want[0][v];
    }
    CHECK(k == 0 && close_to(z, mean_want, 5, 1e-5), "NBCE mean pooling on the golden vector (no row chosen; z %g %g %g %g %g)",
          z[0], z[1], z[2], z[3], z[4]);
    nbce_free(&nb);
    char err[256];
    nbce_small(&nb, &fake, &fc, 5, 0.25f, 0.1f, 0.95f, NBCE_MIN_ENTROPY);
    nbce_add(&nb, rows[0]);
    CHECK(nbce_pool(&nb, z) == -1, "NBCE: a step with only the unconditional row is refused");
    nbce_free(&nb);
    CHECK(nbce_init(&nb, &fc, 0.25f, 0.1f, 1.5f, NBCE_MIN_ENTROPY, err, sizeof err) < 0 && strstr(err, "top-p"),
          "NBCE: a nucleus above 1 is refused: %s", err);
}

static long nbce_step_allocations; /* made by nbce_feed's decode steps, over every nbce_run */

/* Rows of a real model run together: step by step, the batch split and the
   thread count change nothing; identical contexts behave as one. Returns the
   chosen rows and the last z. */
static void nbce_run(const Model *m, int batch, int threads, const int *const *rows, const int *lens, int n_rows, int steps,
                     int *chosen, float *z_out) {
    char err[256];
    Context *c = context_new(m, 64, batch, batch, threads, NULL, err, sizeof err);
    Nbce nb;
    nbce_init(&nb, c, 0.25f, 0.1f, 0.95f, NBCE_MIN_ENTROPY, err, sizeof err);
    Sequence seqs[4], *sp[4];
    const int *toks[4];
    int ones[4], token = 0;
    for (int r = 0; r < n_rows; r++) sequence_init(&seqs[r], c, 64, err, sizeof err), sp[r] = &seqs[r];
    float *z = malloc((size_t)m->cfg.vocab_size * sizeof(float));
    chosen[0] = nbce_feed(&nb, c, sp, rows, lens, n_rows, z, NULL, NULL);
    long allocations = check_allocations;
    for (int s = 1; s < steps; s++) {
        token = argmax(z, m->cfg.vocab_size);
        for (int r = 0; r < n_rows; r++) toks[r] = &token, ones[r] = 1;
        chosen[s] = nbce_feed(&nb, c, sp, toks, ones, n_rows, z, NULL, NULL);
    }
    nbce_step_allocations += check_allocations - allocations;
    memcpy(z_out, z, (size_t)m->cfg.vocab_size * sizeof(float));
    free(z);
    for (int r = 0; r < n_rows; r++) sequence_free(&seqs[r]);
    nbce_free(&nb);
    context_free(c);
}

/* The token loop of a program that embeds the engine: sample, decode,
   feed. After start-up it allocates nothing (DEVELOPERS.md), which the
   wrapped allocator (top of this file) counts. */
static void test_no_allocation_per_token(const Model *m) {
    char err[256];
    /* stories260K's tokenizer is tok512.bin beside it; the shipped model carries its own */
    Tokenizer *own = m->tokenizer ? NULL : tokenizer_load_llama2c(path_tok, m->cfg.vocab_size, err, sizeof err);
    const Tokenizer *tok = m->tokenizer ? m->tokenizer : own;
    Context *c = context_new(m, 256, 64, 1, 2, NULL, err, sizeof err);
    Sequence seq;
    Sampler top_p, top_k;
    if (!tok || !c || sequence_init(&seq, c, 256, err, sizeof err) ||
        sampler_init(&top_p, m->cfg.vocab_size, 0.9f, 0.9f, 0, 7) || sampler_init(&top_k, m->cfg.vocab_size, 1.0f, 0, 40, 7)) {
        CHECK(0, "allocation test set-up: %s", err);
        return;
    }
    long before = check_allocations;
    Sampler probe;
    sampler_init(&probe, m->cfg.vocab_size, 1, 0, 0, 1);
    long counted = check_allocations - before;
    const float *logits = sequence_feed(c, &seq, prompt, 20);
    int drawn = sampler_sample(&probe, logits); /* uses the probe, so its allocations are not optimised away */
    sampler_free(&probe);
    CHECK(counted == 2 && drawn >= 0, "the allocation counter sees sampler_init's two buffers (%ld)", counted);
    int prev = prompt[19], steps = 0;
    size_t printed = 0;
    before = check_allocations;
    while (logits && seq.n_past < 250) {
        int next = sampler_sample(steps % 2 ? &top_k : &top_p, logits);
        size_t len;
        tokenizer_decode(tok, prev, next, &len);
        printed += len;
        prev = next;
        logits = sequence_feed(c, &seq, &next, 1);
        steps++;
    }
    CHECK(logits && check_allocations == before, "%d tokens sampled (top-p and top-k), decoded and fed allocate nothing "
          "(%ld allocations, %zu bytes of text)", steps, check_allocations - before, printed);
    sampler_free(&top_p);
    sampler_free(&top_k);
    sequence_free(&seq);
    context_free(c);
    tokenizer_free(own);
}

static void test_nbce_rows(const Model *m) {
    int V = m->cfg.vocab_size, steps = 12;
    static const int q[] = {1, 403, 407, 261}, ctx_a[] = {1, 378, 289, 31, 44, 280, 401, 260, 403, 407, 261},
                     ctx_b[] = {1, 301, 288, 269, 339, 394, 270, 30, 46, 259, 403, 407, 261};
    const int *rows3[3] = {q, ctx_a, ctx_b}, lens3[3] = {4, 11, 13};
    int c_ref[12], c_alt[12];
    float *z_ref = malloc(V * sizeof(float)), *z_alt = malloc(V * sizeof(float));
    nbce_run(m, 64, 2, rows3, lens3, 3, steps, c_ref, z_ref);
    nbce_run(m, 5, 1, rows3, lens3, 3, steps, c_alt, z_alt);
    CHECK(!memcmp(c_ref, c_alt, sizeof c_ref) && !memcmp(z_ref, z_alt, V * sizeof(float)),
          "NBCE rows: batches of 5 tokens on 1 thread == batches of 64 on 2 threads, bit for bit");
    const int *rows_same[3] = {q, ctx_a, ctx_a}, lens_same[3] = {4, 11, 11};
    const int *rows_one[2] = {q, ctx_a}, lens_one[2] = {4, 11};
    nbce_run(m, 64, 2, rows_same, lens_same, 3, steps, c_alt, z_alt);
    int c_one[12];
    float *z_one = malloc(V * sizeof(float));
    nbce_run(m, 64, 2, rows_one, lens_one, 2, steps, c_one, z_one);
    int all_first = 1;
    for (int s = 0; s < steps; s++) all_first &= c_alt[s] == 1 && c_one[s] == 1;
    CHECK(all_first && !memcmp(z_alt, z_one, V * sizeof(float)),
          "NBCE rows: two identical contexts == that context alone (row 1 chosen at every step, same scores bit for bit)");
    CHECK(nbce_step_allocations == 0, "NBCE rows: %d decode steps of 2-3 rows allocate nothing (%ld allocations)",
          4 * (steps - 1), nbce_step_allocations);
    free(z_ref);
    free(z_alt);
    free(z_one);
}

/* The checks that hold for any model file with f32 weights (stories260K,
   the shipped model's f32 export): its forward against the naive reference,
   then, with `invariants`, the invariants, bit for bit or to rounding. */
static void test_any_model(Model *m, const char *what, int invariants) {
    double e = compare_with_reference(m);
    CHECK(e < 1e-5, "%s forward (batched, 2 threads) matches the naive f32 reference (rel %.2g)", what, e);
    if (!invariants) return;
    test_batching_and_threads(m);
    test_kv_f16(m, what);
    test_positions(m);
    test_rope_scaling(m);
    test_nbce_rows(m);
    test_no_allocation_per_token(m);
    test_two_models(m);
}

/* The shipped model's tokenizer against SentencePiece's ids in its oracle
   fixture (tests/fixtures/reader_oracle.json): every text and tricky string.
   tokenizer_encode leaves control pieces written in the text (<s>, </s>,
   <unk>) as text, as SentencePiece's encode does; ./run parses them
   (check_reader.py checks that side). */
static void test_shipped_tokenizer(const Tokenizer *t, const char *fixture) {
    FILE *f = fopen(fixture, "rb");
    char *buf = NULL, err[256] = "";
    long n = f && !fseek(f, 0, SEEK_END) ? ftell(f) : -1;
    JsonDoc doc = {0};
    int ok = n > 0 && !fseek(f, 0, SEEK_SET) && (buf = malloc((size_t)n)) && fread(buf, 1, (size_t)n, f) == (size_t)n &&
             !json_parse(&doc, buf, (size_t)n, err, sizeof err);
    if (f) fclose(f);
    CHECK(ok && t, "%s reads, and the model has a tokenizer%s%s", fixture, *err ? ": " : "", err);
    int good = 0, total = 0, first_bad = -1;
    const char *groups[2][2] = {{"texts", "ids"}, {"tokenizer_cases", "ids_special"}};
    for (int g = 0; ok && t && g < 2; g++) {
        const JsonValue *cases = json_get(&doc.root, groups[g][0]);
        for (size_t i = 0; cases && i < cases->len; i++) {
            const JsonValue *c = json_array_item(cases, i), *text = json_get(c, "text"), *want = json_get(c, groups[g][1]);
            if (!text || text->type != JSON_STRING || !want || want->type != JSON_ARRAY) continue;
            int max = (int)tokenizer_max_ids(text->len), *ids = malloc((size_t)max * sizeof(int));
            int got = tokenizer_encode(t, text->str, text->len, tokenizer_add_bos(t), ids, max), same = got == (int)want->len;
            for (int k = 0; same && k < got; k++) {
                int id;
                same = json_int(json_array_item(want, (size_t)k), &id) == 0 && id == ids[k];
            }
            good += same, total++;
            if (!same && first_bad < 0) first_bad = total - 1;
            free(ids);
        }
    }
    char bad[64] = "";
    if (first_bad >= 0) snprintf(bad, sizeof bad, "; the first wrong one: #%d", first_bad);
    CHECK(total >= 70 && good == total, "the shipped model's tokenizer: %d of %d texts and tricky strings (control pieces "
          "among them, as text) encode to SentencePiece's ids with BOS%s", good, total, bad);
    json_free(&doc);
    free(buf);
}

/* The shipped model (q8_0). Its q8_0 kernels round the activations to 8
   bits, so a difference in the last bit anywhere (an f16 cache, a far key)
   moves its logits by a percent or more through 8 layers: the checks to
   rounding run on its f32 export, the file itself gets the reference within
   that rounding, the bit-for-bit invariants and the repacked layout. */
/* The shipped model: its tokenizer, its q8_0 forward against the reference
   and its repacked layout, then its f32 export against the reference.
   `generic`: both also get the invariants (batches, threads, NBCE rows, no
   allocation per token, two models at once), which otherwise stories260K and
   its exports check (thirty times cheaper to run: this matters under qemu,
   make test-cross). */
static void test_shipped_model(const char *path, int generic) {
    Model m;
    char err[512], out[4096], cmd[8192], what[4200];
    if (model_load(&m, path, err, sizeof err)) {
        CHECK(0, "%s loads: %s", path, err);
        return;
    }
    test_shipped_tokenizer(m.tokenizer, "tests/fixtures/reader_oracle.json");
    if (!type_is_quantized(m.layers[0].wq.type)) {
        test_any_model(&m, path, generic);
        model_free(&m);
        return;
    }
    double e = compare_with_reference(&m);
    CHECK(e < 0.1, "%s (%s) forward matches the naive f32 reference on its dequantized weights within its 8-bit "
          "activations (rel %.2g, limit 0.1; a wrong scale or block moves it by about 1)", path, type_name(m.layers[0].wq.type), e);
    if (generic) { /* the quantized path's invariants; with the assets, on stories260K's q8_0 export (test_export) */
        test_batching_and_threads(&m);
        test_nbce_rows(&m);
        test_no_allocation_per_token(&m);
        test_two_models(&m);
    }
    test_repack(&m, path, 0);
    model_free(&m);

    snprintf(out, sizeof out, "%s/shipped_f32.bin", tmp_dir);
    const char *exporter = getenv("EXPORT") ? getenv("EXPORT") : "./export";
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' --quant f32 2>/dev/null", exporter, path, out);
    int rc = system(cmd) || model_load(&m, out, err, sizeof err);
    CHECK(rc == 0, "%s exports to f32 and loads %s", path, rc ? err : "");
    if (rc) return;
    snprintf(what, sizeof what, "%s as f32", path);
    test_any_model(&m, what, generic);
    model_free(&m);
    remove(out);
}

int main(int argc, char **argv) {
    if (getenv("TEST_TMP")) tmp_dir = getenv("TEST_TMP");
    mkdir(tmp_dir, 0755);
    /* models built here, in memory, and the shipped one */
    test_gqa_tiles();
    test_mla(0);
    test_mla(24);
    test_nbce_pooling();
    const char *assets = assets_dir(argc, argv);
    test_shipped_model(argc > 2 ? argv[2] : "models/reader.bin", !assets);
    if (!assets) return check_summary();
    snprintf(path_v0, sizeof path_v0, "%s/llama2c/stories260K.bin", assets);
    snprintf(path_v1, sizeof path_v1, "%s/llama2c/stories260K_v1.bin", assets);
    snprintf(path_tok, sizeof path_tok, "%s/llama2c/tok512.bin", assets);
    Model m;
    char err[512];
    if (model_load(&m, path_v0, err, sizeof err)) {
        CHECK(0, "stories260K loads: %s", err);
        return check_summary();
    }
    test_any_model(&m, "stories260K", 1);
    test_llama2c_versions(&m);
    test_export(&m);
    model_free(&m);
    return check_summary();
}
