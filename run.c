/* run.c - the command line and the one main loop.
 *
 *   ./run MODEL [options]      generate text, score it (--ppl) or tokenize it
 *
 * MODEL is a file written by ./export or a llama2.c checkpoint (with -z for
 * its tokenizer.bin). The contract for every option is ../shared/docs/CLI.md;
 * README.md has examples.
 */
#define MODEL_IMPLEMENTATION
#include "model.h"
#include "json.h" /* --chat-history; the implementation is compiled in tokenizer.c */

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Every bad input ends here: one line on stderr, status 1. */
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------------------
 * Options.
 */
typedef struct {
    const char *model_path, *tokenizer_path, *prompt, *prompt_file;
    int steps;          /* -1: until end-of-sequence or a full context */
    float temperature, top_p;
    int top_k;
    unsigned long long seed;
    int threads, ctx;
    int ignore_eos, json, tokenize, ppl, verbose;
    int chat;
    const char *system, *chat_template, *chat_history;
    const char *pos;    /* --pos rope|nope|rerope|leaky, NULL = the model's */
    int window;         /* --window W, -1 = not given */
    float leaky_k;      /* --leaky-k K, 0 = not given */
    int logn;           /* --logn L, -1 = not given */
    const char *rope_scaling; /* --rope-scaling, NULL = the model's */
    float rope_factor, rope_theta; /* 0 = the model's */
    int rope_orig_ctx;  /* 0 = the model's */
} Options;

static void usage(void) {
    fprintf(stderr,
            "usage: ./run MODEL [options]\n"
            "  -p TEXT          prompt\n"
            "  -f FILE          read the prompt from FILE (- = stdin)\n"
            "  -n N             tokens to generate (default: until end-of-sequence or full context)\n"
            "  -t T             temperature, 0 = greedy (default 1.0)\n"
            "  --top-p P        nucleus sampling (default 0.9)\n"
            "  --top-k K        keep the K most likely tokens, 0 = off (default 0)\n"
            "  -s SEED          random seed (default: time-based)\n"
            "  -z FILE          tokenizer for a llama2.c checkpoint (tokenizer.bin, .model, .gguf, tokenizer.json)\n"
            "  --threads N      worker threads (default: online cores)\n"
            "  --ctx N          context length (default: the model's)\n"
            "  --ignore-eos     keep generating past end-of-sequence\n"
            "  --json           print one JSON object at the end instead of streaming\n"
            "  --tokenize       print the prompt's token ids as a JSON array and exit\n"
            "  --ppl            score the prompt: mean negative log-likelihood per token\n"
            "  --verbose        print the model's shape and memory use on stderr\n"
            "  --pos P          positions for rotary layers: rope, nope, rerope, leaky\n"
            "  --window W       rerope/leaky window (default: a quarter of the trained context)\n"
            "  --leaky-k K      leaky slope divisor (default 16)\n"
            "  --logn L         scale queries by max(1, ln(pos+1)/ln L); 0 = off (default: the trained\n"
            "                   context with rerope/leaky, else off)\n"
            "  --rope-scaling S rotary scaling instead of the model's: none, linear, ntk, dynamic, yarn\n"
            "  --rope-factor F  its factor (default: the model's; required for a scaling it has not)\n"
            "  --rope-theta B   rotary base (default: the model's)\n"
            "  --rope-orig-ctx L  the length dynamic and yarn scale from (default: the model's, else its\n"
            "                   trained context)\n"
            "  --chat           chat with the model's chat template (multi-turn when stdin is a terminal)\n"
            "  --system TEXT    system prompt for --chat\n"
            "  --chat-template NAME  the formatter to use instead of the detected one:\n"
            "                   llama2, mistral, llama3, chatml, deepseek\n"
            "  --chat-history FILE   earlier turns, a JSON array of {\"role\", \"content\"} objects\n");
    exit(1);
}

static long parse_int(const char *opt, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) die("invalid value '%s' for %s (an integer from %ld to %ld)", s, opt, lo, hi);
    return v;
}

static float parse_float(const char *opt, const char *s, float lo, float hi) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) die("invalid value '%s' for %s (a number from %g to %g)", s, opt, lo, hi);
    return v;
}

static int chat_family(const char *name); /* the --chat-template names, with the chat code below */

static int rope_scaling_kind(const char *name) {
    static const struct { const char *name; int kind; } kinds[] = {
        {"none", ROPE_SCALING_NONE}, {"linear", ROPE_SCALING_LINEAR}, {"ntk", ROPE_SCALING_NTK},
        {"dynamic", ROPE_SCALING_DYNAMIC}, {"yarn", ROPE_SCALING_YARN}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (!strcmp(name, kinds[i].name)) return kinds[i].kind;
    return -1;
}

/* --rope-*: the model's rotary settings, overridden. A scaling the model does
   not have starts from its defaults (YaRN's betas 32 and 1, the original
   context = the trained one); the engine checks the result when the context
   is made. */
static void override_rope(ModelConfig *c, const Options *o) {
    if (o->rope_scaling) {
        int kind = rope_scaling_kind(o->rope_scaling);
        if (kind != c->rope_scaling) {
            if (kind != ROPE_SCALING_NONE && !o->rope_factor)
                die("--rope-scaling %s needs --rope-factor (the model has no such scaling to take it from)", o->rope_scaling);
            c->rope_scaling = kind;
            c->rope_orig_ctx = c->max_seq_len;
            c->rope_beta_fast = 32, c->rope_beta_slow = 1, c->rope_mscale = c->rope_mscale_all_dim = 0;
        }
    }
    if (o->rope_factor) c->rope_factor = o->rope_factor;
    if (o->rope_theta) c->rope_theta = o->rope_theta;
    if (o->rope_orig_ctx) c->rope_orig_ctx = o->rope_orig_ctx;
    if ((o->rope_factor || o->rope_orig_ctx) && c->rope_scaling == ROPE_SCALING_NONE)
        die("--rope-factor and --rope-orig-ctx need a rope scaling (the model has none; add --rope-scaling)");
    if (o->rope_orig_ctx && c->rope_scaling != ROPE_SCALING_DYNAMIC && c->rope_scaling != ROPE_SCALING_YARN &&
        c->rope_scaling != ROPE_SCALING_LLAMA3)
        die("--rope-orig-ctx applies to dynamic, yarn and llama3 scaling");
}

static Options parse_options(int argc, char **argv) {
    Options o = {.steps = -1, .temperature = 1.0f, .top_p = 0.9f, .threads = 0, .ctx = 0, .window = -1, .logn = -1};
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = cores > 0 ? (int)cores : 1;
    o.seed = (unsigned long long)time(NULL);
    if (argc < 2 || argv[1][0] == '-') usage();
    o.model_path = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
#define VALUE() (has_value ? argv[++i] : (die("option %s needs a value", a), ""))
        if (!strcmp(a, "-p") || !strcmp(a, "-i")) o.prompt = VALUE();
        else if (!strcmp(a, "-f")) o.prompt_file = VALUE();
        else if (!strcmp(a, "-n")) o.steps = (int)parse_int(a, VALUE(), 0, INT_MAX);
        else if (!strcmp(a, "-t")) o.temperature = parse_float(a, VALUE(), 0, 100);
        else if (!strcmp(a, "--top-p")) o.top_p = parse_float(a, VALUE(), 0, 1);
        else if (!strcmp(a, "--top-k")) o.top_k = (int)parse_int(a, VALUE(), 0, INT_MAX);
        else if (!strcmp(a, "-s")) o.seed = (unsigned long long)parse_int(a, VALUE(), 0, LONG_MAX);
        else if (!strcmp(a, "-z")) o.tokenizer_path = VALUE();
        else if (!strcmp(a, "--threads")) o.threads = (int)parse_int(a, VALUE(), 1, 1024);
        else if (!strcmp(a, "--ctx")) o.ctx = (int)parse_int(a, VALUE(), 1, 1 << 24);
        else if (!strcmp(a, "--ignore-eos")) o.ignore_eos = 1;
        else if (!strcmp(a, "--json")) o.json = 1;
        else if (!strcmp(a, "--tokenize")) o.tokenize = 1;
        else if (!strcmp(a, "--ppl")) o.ppl = 1;
        else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) o.verbose = 1;
        else if (!strcmp(a, "--chat")) o.chat = 1;
        else if (!strcmp(a, "--system")) o.system = VALUE();
        else if (!strcmp(a, "--chat-template")) o.chat_template = VALUE();
        else if (!strcmp(a, "--chat-history")) o.chat_history = VALUE();
        else if (!strcmp(a, "--pos")) o.pos = VALUE();
        else if (!strcmp(a, "--window")) o.window = (int)parse_int(a, VALUE(), 0, 1 << 24);
        else if (!strcmp(a, "--leaky-k")) o.leaky_k = parse_float(a, VALUE(), 1, 1e9f);
        else if (!strcmp(a, "--logn")) {
            o.logn = (int)parse_int(a, VALUE(), 0, 1 << 30);
            if (o.logn == 1) die("invalid value '1' for --logn (0 for off, or a length above 1: ln 1 = 0)");
        }
        else if (!strcmp(a, "--rope-scaling")) o.rope_scaling = VALUE();
        else if (!strcmp(a, "--rope-factor")) o.rope_factor = parse_float(a, VALUE(), 1, 1e6f);
        else if (!strcmp(a, "--rope-theta")) o.rope_theta = parse_float(a, VALUE(), 1, 1e12f);
        else if (!strcmp(a, "--rope-orig-ctx")) o.rope_orig_ctx = (int)parse_int(a, VALUE(), 1, 1 << 24);
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage();
        else die("unknown option '%s' (./run with no arguments lists them)", a);
#undef VALUE
    }
    if (o.prompt && o.prompt_file) die("give the prompt with -p or -f, not both");
    if (!o.chat && (o.system || o.chat_template || o.chat_history))
        die("%s only applies with --chat", o.system ? "--system" : o.chat_template ? "--chat-template" : "--chat-history");
    if (o.chat && o.ppl) die("--ppl scores a text; it cannot be combined with --chat");
    if (o.chat_template && chat_family(o.chat_template) < 0)
        die("unknown chat template '%s' for --chat-template (one of llama2, mistral, llama3, chatml, deepseek)", o.chat_template);
    if (o.pos && strcmp(o.pos, "rope") && strcmp(o.pos, "nope") && strcmp(o.pos, "rerope") && strcmp(o.pos, "leaky"))
        die("unknown --pos '%s' (one of rope, nope, rerope, leaky)", o.pos);
    int rectify = o.pos && (!strcmp(o.pos, "rerope") || !strcmp(o.pos, "leaky"));
    if (!rectify && o.window >= 0) die("--window applies with --pos rerope or --pos leaky");
    if ((!o.pos || strcmp(o.pos, "leaky")) && o.leaky_k) die("--leaky-k applies with --pos leaky");
    if (o.rope_scaling && rope_scaling_kind(o.rope_scaling) < 0)
        die("unknown --rope-scaling '%s' (one of none, linear, ntk, dynamic, yarn)", o.rope_scaling);
    if (o.seed == 0) o.seed = (unsigned long long)time(NULL); /* xorshift needs a nonzero state */
    return o;
}

/* Reads a whole file (or stdin for "-") byte for byte; `what` names it in errors. */
static char *read_file(const char *path, const char *what, size_t *len) {
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) die("cannot open %s '%s': %s", what, path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) die("out of memory reading '%s'", path);
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        cap *= 2;
        buf = realloc(buf, cap);
    }
    if (ferror(f)) die("cannot read %s '%s'", what, path);
    if (f != stdin) fclose(f);
    *len = n;
    return buf;
}

/* ---------------------------------------------------------------------------
 * Sampling, as llama2.c does it: xorshift RNG, temperature, top-p; plus top-k.
 */
typedef struct {
    float prob;
    int id;
} Candidate;

typedef struct {
    int vocab;
    float temperature, top_p;
    int top_k;
    unsigned long long rng;
    float *probs;   /* [vocab] */
    Candidate *cand; /* [vocab] tokens that can still be drawn, most likely first */
} Sampler;

static unsigned int random_u32(unsigned long long *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (unsigned int)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(unsigned long long *state) { return (random_u32(state) >> 8) / 16777216.0f; }

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

static int by_prob_desc(const void *a, const void *b) {
    float pa = ((const Candidate *)a)->prob, pb = ((const Candidate *)b)->prob;
    return pa > pb ? -1 : pa < pb;
}

/* Sorts the tokens with p >= cutoff by probability, descending, into
   s->cand, and returns how many there are. */
static int sorted_candidates(Sampler *s, float cutoff) {
    int n = 0;
    for (int i = 0; i < s->vocab; i++)
        if (s->probs[i] >= cutoff) s->cand[n++] = (Candidate){s->probs[i], i};
    qsort(s->cand, (size_t)n, sizeof *s->cand, by_prob_desc);
    return n;
}

static int sample(Sampler *s, const float *logits) {
    if (s->temperature == 0) return argmax(logits, s->vocab);
    for (int i = 0; i < s->vocab; i++) s->probs[i] = logits[i] / s->temperature;
    if (s->top_k > 0 && s->top_k < s->vocab) { /* keep the k largest: everything below the k-th goes */
        softmax(s->probs, s->vocab);
        int n = sorted_candidates(s, 0);
        float kth = s->cand[s->top_k - 1].prob;
        for (int i = 0; i < n; i++)
            if (s->cand[i].prob < kth) s->probs[s->cand[i].id] = 0;
        float sum = 0;
        for (int i = 0; i < s->vocab; i++) sum += s->probs[i];
        for (int i = 0; i < s->vocab; i++) s->probs[i] /= sum;
    } else {
        softmax(s->probs, s->vocab);
    }
    float coin = random_f32(&s->rng);
    if (s->top_p <= 0 || s->top_p >= 1) { /* sample from the whole distribution */
        float cdf = 0;
        for (int i = 0; i < s->vocab; i++) {
            cdf += s->probs[i];
            if (coin < cdf) return i;
        }
        return s->vocab - 1;
    }
    /* Top-p: tokens below (1 - p) / (n - 1) cannot be in the nucleus, so they
       are dropped before sorting (llama2.c's shortcut). */
    int n = sorted_candidates(s, (1.0f - s->top_p) / (s->vocab - 1));
    float cum = 0;
    int last = n - 1;
    for (int i = 0; i < n; i++) {
        cum += s->cand[i].prob;
        if (cum > s->top_p) { last = i; break; }
    }
    float r = coin * cum, cdf = 0;
    for (int i = 0; i <= last; i++) {
        cdf += s->cand[i].prob;
        if (r < cdf) return s->cand[i].id;
    }
    return s->cand[last].id;
}

/* ---------------------------------------------------------------------------
 * Output: text is streamed as it is produced, but a UTF-8 character split
 * across tokens is held back until it is complete, so a terminal never
 * shows half a character. --json collects the text instead.
 */
typedef struct {
    char pending[4];
    int n_pending;
    char *text;             /* --json: everything, for the final object */
    size_t len, cap;
} TextOut;

static int utf8_length(unsigned char c) { return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1; }

static void text_append(TextOut *o, const char *s, size_t n) {
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->text = realloc(o->text, o->cap);
        if (!o->text) die("out of memory");
    }
    memcpy(o->text + o->len, s, n);
    o->len += n;
}

static void text_emit(TextOut *o, const char *s, size_t n, int stream) {
    if (!stream) { text_append(o, s, n); return; }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o->n_pending && (c & 0xc0) != 0x80) { /* a sequence broken off: let it out as it is */
            fwrite(o->pending, 1, (size_t)o->n_pending, stdout);
            o->n_pending = 0;
        }
        o->pending[o->n_pending++] = (char)c;
        if (o->n_pending == utf8_length((unsigned char)o->pending[0])) {
            fwrite(o->pending, 1, (size_t)o->n_pending, stdout);
            o->n_pending = 0;
        }
    }
    fflush(stdout);
}

static void text_flush(TextOut *o) {
    fwrite(o->pending, 1, (size_t)o->n_pending, stdout);
    o->n_pending = 0;
}

/* A JSON string; invalid UTF-8 becomes U+FFFD so the object stays valid. */
static void print_json_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        int len = utf8_length(c), ok = len > 1 || c < 0x80;
        for (int k = 1; ok && k < len; k++) ok = i + k < n && ((unsigned char)s[i + k] & 0xc0) == 0x80;
        if (!ok) { fputs("\\ufffd", f); i++; continue; }
        if (c == '"') fputs("\\\"", f);
        else if (c == '\\') fputs("\\\\", f);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fwrite(s + i, 1, (size_t)len, f);
        i += (size_t)len;
    }
    fputc('"', f);
}

/* ---------------------------------------------------------------------------
 * Running the model.
 */
typedef struct {
    Model model;
    Tokenizer *tokenizer; /* the model's, or the one given with -z */
    Tokenizer *own_tokenizer;
    Context *ctx;
    Sequence seq;
    int ctx_len;
} Engine;

/* Feeds tokens to the sequence in batches; logits of the last one (or of
   every one, with want_all) end up in the context. Returns logit rows. */
static int feed(Engine *e, const int *tokens, int n, const uint8_t *want) {
    Sequence *seqs[512];
    int batch = e->ctx->max_batch < 512 ? e->ctx->max_batch : 512, rows = 0;
    for (int i = 0; i < batch; i++) seqs[i] = &e->seq;
    for (int done = 0; done < n; done += batch) {
        int b = n - done < batch ? n - done : batch;
        rows = model_forward(e->ctx, seqs, tokens + done, b, want ? want + done : NULL);
        if (rows < 0) die("%s", e->ctx->error);
    }
    return rows;
}

static void print_verbose(const Engine *e, const Options *o) {
    const ModelConfig *c = &e->model.cfg;
    size_t kv_token = model_kv_bytes_per_token(&e->model);
    fprintf(stderr, "model: dim %d, %d layers, %d heads (%d KV heads, head dim %d), hidden %d, vocab %d, trained context %d\n",
            c->dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->hidden_dim, c->vocab_size, c->max_seq_len);
    fprintf(stderr, "weights: %.2f MiB mapped (%s)\n", e->model.map_bytes / 1048576.0, type_name(e->model.tok_emb.type));
    if (c->attn_kind == ATTN_MLA) {
        size_t mha = (size_t)c->n_layers * c->n_heads * (c->head_dim + c->v_head_dim) * sizeof(float);
        fprintf(stderr, "kv cache: %zu bytes per token (f32 latent attention: %d layers x (latent %d + rotary key %d) x 4 bytes; "
                "keys and values per head would take %zu), %.2f MiB for %d tokens\n", kv_token, c->n_layers,
                c->kv_lora_rank, c->qk_rope_head_dim, mha, (double)kv_token * e->ctx_len / 1048576.0, e->ctx_len);
    } else {
        fprintf(stderr, "kv cache: %zu bytes per token (f32 k and v: %d layers x %d KV heads x (%d + %d) dims x 4 bytes), %.2f MiB for %d tokens\n",
                kv_token, c->n_layers, c->n_kv_heads, c->head_dim, c->v_head_dim, (double)kv_token * e->ctx_len / 1048576.0, e->ctx_len);
    }
    if (c->ffn_kind == FFN_MOE)
        fprintf(stderr, "experts: %d routed (%d per token), %d shared, hidden %d; dense layers before %d\n", c->n_experts,
                c->n_experts_used, c->n_shared_experts, c->moe_hidden_dim, c->first_k_dense);
    if (e->seq.k_far) {
        size_t far = (size_t)c->n_layers * kv_far_width(c) * sizeof(float);
        fprintf(stderr, "rerope/leaky far keys: %zu more bytes per token (%.2f MiB for %d tokens)\n", far,
                (double)far * e->ctx_len / 1048576.0, e->ctx_len);
    }
    fprintf(stderr, "threads: %d\n", o->threads);
}

static void run_ppl(Engine *e, const int *tokens, int n, const Options *o) {
    if (n < 2) die("--ppl needs a text of at least two tokens");
    int window = e->ctx_len;
    if (window < 2) die("--ppl needs a context of at least two tokens");
    uint8_t *want = malloc((size_t)window);
    if (!want) die("out of memory");
    memset(want, 1, (size_t)window);
    double nll = 0;
    int predicted = 0;
    const int vocab = e->model.cfg.vocab_size;
    /* Consecutive windows overlap by one token, so every token after the
       first is predicted exactly once. */
    for (int start = 0; start < n - 1; start += window - 1) {
        int len = n - start < window ? n - start : window;
        e->seq.n_past = 0;
        e->seq.rope_len = len; /* dynamic NTK: as one forward pass over the window */
        int batch = e->ctx->max_batch;
        for (int done = 0; done < len; done += batch) {
            int b = len - done < batch ? len - done : batch;
            Sequence *seqs[512];
            for (int i = 0; i < b; i++) seqs[i] = &e->seq;
            if (model_forward(e->ctx, seqs, tokens + start + done, b, want) < 0) die("%s", e->ctx->error);
            for (int i = 0; i < b && start + done + i + 1 < start + len; i++) {
                const float *lg = e->ctx->logits + (size_t)i * vocab;
                float max = lg[argmax(lg, vocab)];
                double sum = 0;
                for (int v = 0; v < vocab; v++) sum += exp((double)lg[v] - max);
                nll += log(sum) + max - lg[tokens[start + done + i + 1]];
                predicted++;
            }
            /* Progress for long texts: a line that redraws itself on a
               terminal, a line per window in a log. */
            if (n > 4096 && (isatty(STDERR_FILENO) || done + b >= len)) {
                fprintf(stderr, "%sppl: %d/%d tokens scored, mean NLL so far %.4f%s", isatty(STDERR_FILENO) ? "\r" : "",
                        predicted + 1, n, nll / predicted, isatty(STDERR_FILENO) ? "" : "\n");
                fflush(stderr);
            }
        }
        if (start + len >= n) break;
    }
    if (n > 4096 && isatty(STDERR_FILENO)) fputc('\n', stderr);
    double mean = nll / predicted;
    if (o->json) printf("{\"tokens\": %d, \"mean_nll\": %.6f, \"ppl\": %.6f}\n", n, mean, exp(mean));
    else printf("tokens %d, mean_nll %.6f, ppl %.6f\n", n, mean, exp(mean));
    free(want);
}

/* One answer: what generate() produced and how it ended. */
typedef struct {
    int *ids;          /* generated tokens; an end token that stopped generation is not among them */
    int n_gen;
    int stop;          /* the end token that ended generation, or -1 */
    int unfed;         /* the last generated token when generation ended with it unfed (the -n
                          limit or a full context), or -1; a chat feeds it before the next turn */
    TextOut out;       /* --json: the text */
    double prefill_tps, decode_tps;
} Generation;

static void sampler_init(Sampler *s, int vocab, const Options *o) {
    *s = (Sampler){.vocab = vocab, .temperature = o->temperature, .top_p = o->top_p, .top_k = o->top_k, .rng = o->seed};
    s->probs = malloc((size_t)vocab * sizeof(float));
    s->cand = malloc((size_t)vocab * sizeof *s->cand);
    if (!s->probs || !s->cand) die("out of memory");
}

static void sampler_free(Sampler *s) {
    free(s->probs);
    free(s->cand);
}

/* Feeds the prompt after whatever the sequence already holds, then samples
   until end-of-sequence (or end_of_turn, when >= 0), the -n limit or a full
   context. Text streams to stdout unless --json. With skip_space, spaces at
   the start of the answer are not shown (chat answers follow "[/INST]" or
   "Assistant:" with a space the template does not count as content). */
static void generate(Engine *e, Sampler *s, const int *prompt, int n_prompt, int end_of_turn, int skip_space,
                     const Options *o, Generation *g) {
    int max_new = e->ctx_len - (e->seq.n_past + n_prompt) + 1; /* the last token is printed but never fed */
    if (o->steps >= 0 && o->steps < max_new) max_new = o->steps;
    memset(g, 0, sizeof *g);
    g->stop = g->unfed = -1;
    g->ids = malloc((size_t)(max_new > 0 ? max_new : 1) * sizeof(int));
    if (o->json) { /* room for the longest piece at every step: no allocation in the loop */
        g->out.cap = (size_t)(max_new > 0 ? max_new : 1) * tokenizer_max_piece_bytes(e->tokenizer) + 1;
        g->out.text = malloc(g->out.cap);
    }
    if (!g->ids || (o->json && !g->out.text)) die("out of memory");

    double t0 = now_seconds();
    e->seq.rope_len = e->seq.n_past + n_prompt; /* dynamic NTK: the prompt is rotated for its whole length */
    feed(e, prompt, n_prompt, NULL);
    double t1 = now_seconds(), t_first = t1;
    int prev = prompt[n_prompt - 1];
    while (g->n_gen < max_new) {
        int next = sample(s, e->ctx->logits);
        /* llama2.c's models end a story with BOS, so BOS stops generation too */
        if (!o->ignore_eos && (tokenizer_is_eos(e->tokenizer, next) || next == tokenizer_bos(e->tokenizer) ||
                               next == end_of_turn)) {
            g->stop = next;
            break;
        }
        g->ids[g->n_gen++] = next;
        size_t len;
        const char *piece = tokenizer_decode(e->tokenizer, prev, next, &len);
        if (skip_space) {
            while (len > 0 && *piece == ' ') piece++, len--;
            skip_space = len == 0;
        }
        text_emit(&g->out, piece, len, !o->json);
        prev = next;
        if (g->n_gen == 1) t_first = now_seconds();
        if (g->n_gen == max_new || e->seq.n_past >= e->ctx_len) {
            g->unfed = next;
            break;
        }
        feed(e, &next, 1, NULL);
    }
    double t2 = now_seconds();
    g->prefill_tps = n_prompt / (t1 - t0);
    g->decode_tps = g->n_gen > 1 ? (g->n_gen - 1) / (t2 - t_first) : 0;
}

/* Ends an answer: the newline after streamed text, or the --json object;
   then the statistics line on stderr. */
static void report(Generation *g, int n_prompt, const Options *o) {
    if (o->json) {
        printf("{\"text\": ");
        print_json_string(stdout, g->out.text ? g->out.text : "", g->out.len);
        printf(", \"ids\": [");
        for (int i = 0; i < g->n_gen; i++) printf(i ? ", %d" : "%d", g->ids[i]);
        printf("], \"prompt_tokens\": %d, \"generated_tokens\": %d, \"prefill_tok_s\": %.2f, \"decode_tok_s\": %.2f}\n",
               n_prompt, g->n_gen, g->prefill_tps, g->decode_tps);
    } else {
        text_flush(&g->out);
        printf("\n");
    }
    fflush(stdout);
    fprintf(stderr, "prompt: %d tokens, %.2f tok/s | generated: %d tokens, %.2f tok/s\n", n_prompt, g->prefill_tps,
            g->n_gen, g->decode_tps);
}

static void generation_free(Generation *g) {
    free(g->out.text);
    free(g->ids);
}

static void run_generate(Engine *e, const int *prompt, int n_prompt, const Options *o) {
    Sampler s;
    Generation g;
    sampler_init(&s, e->model.cfg.vocab_size, o);
    generate(e, &s, prompt, n_prompt, -1, 0, o, &g);
    report(&g, n_prompt, o);
    generation_free(&g);
    sampler_free(&s);
}

/* The context and the sequence, for ctx_len tokens (--ctx or the model's). */
static void engine_start(Engine *e, const Options *o) {
    char err[512];
    int batch = o->ppl ? (e->ctx_len < 256 ? e->ctx_len : 256) : (e->ctx_len < 512 ? e->ctx_len : 512);
    /* Positions: CLI.md's --pos, --window, --leaky-k and --logn. */
    int trained = e->model.cfg.max_seq_len;
    Positions pos = {POS_MODEL, 0, 1.0f, 0};
    if (o->pos && !strcmp(o->pos, "nope")) pos.scheme = POS_NOPE;
    if (o->pos && !strcmp(o->pos, "rerope")) pos.scheme = POS_REROPE;
    if (o->pos && !strcmp(o->pos, "leaky")) pos.scheme = POS_LEAKY;
    if (pos.scheme == POS_REROPE || pos.scheme == POS_LEAKY) {
        pos.window = o->window >= 0 ? o->window : trained / 4;
        pos.leaky_k = o->leaky_k ? o->leaky_k : 16.0f;
        pos.logn = o->logn >= 0 ? o->logn : trained;
    } else {
        pos.logn = o->logn > 0 ? o->logn : 0;
    }
    e->ctx = context_new(&e->model, e->ctx_len, batch, o->ppl ? batch : 1, o->threads, &pos, err, sizeof err);
    if (!e->ctx) die("%s", err);
    if (sequence_init(&e->seq, e->ctx, e->ctx_len, err, sizeof err)) die("%s", err);
    if (o->verbose) print_verbose(e, o);
}

static void engine_stop(Engine *e) {
    sequence_free(&e->seq);
    context_free(e->ctx);
}

/* Generation or scoring: the context and the sequence live only here. */
static void run_model(Engine *e, const int *tokens, int n, const Options *o) {
    e->ctx_len = o->ctx ? o->ctx : e->model.cfg.max_seq_len;
    if (!o->ppl && n > e->ctx_len) die("the prompt has %d tokens, more than the context of %d", n, e->ctx_len);
    engine_start(e, o);
    if (o->ppl) run_ppl(e, tokens, n, o);
    else run_generate(e, tokens, n, o);
    engine_stop(e);
}

/* ---------------------------------------------------------------------------
 * Chat.
 *
 * A chat template is a Jinja program, but the ones models ship with come in
 * a handful of families that differ only in the strings around each message.
 * Rather than embed a Jinja interpreter, we recognise the family by a
 * distinctive substring of the template and render the conversation with a
 * formatter written here (--chat-template NAME picks one explicitly). The
 * rendering writes special tokens out as text ("<|im_start|>", the
 * tokenizer's BOS piece where the template says bos_token) and is tokenized
 * with special-token parsing and without an automatic BOS, as
 * apply_chat_template followed by encode(add_special_tokens=False) does.
 *
 * The families, with the templates they were checked against (Hugging Face
 * tokenizer_config.json; "\n" is a newline, bos/eos the tokenizer's pieces):
 *
 *   llama2    Llama-2-*-chat. Detected by "<<SYS>>". The system message goes
 *             inside the first user message, which must follow it:
 *               bos "[INST] " strip("<<SYS>>\n" system "\n<</SYS>>\n\n" user) " [/INST]"
 *               " " strip(answer) " " eos
 *             and the next exchange starts with bos again. No generation prompt.
 *   mistral   Mistral-7B-Instruct. Detected by "[INST]" (without <<SYS>>).
 *             bos once, then per exchange OPEN user CLOSE [" "] answer eos,
 *             where OPEN and CLOSE are the template's own literals around
 *             [INST] and [/INST]:
 *               v0.1/v0.2 (2024 update): ' [INST] ' ... ' [/INST]', ' ' + answer
 *               v0.3:                    "[INST] " ... "[/INST]", " " + answer|trim
 *               original v0.1 card:      '[INST] ' ... ' [/INST]', answer
 *             The system text is prepended to a user message followed by
 *             "\n\n": the first one, or the last one where the template says
 *             "loop.last and system_message" (v0.3). Without a template:
 *             the original card's format.
 *   llama3    Meta-Llama-3-*-Instruct. Detected by "<|start_header_id|>".
 *               bos, then per message
 *               "<|start_header_id|>" role "<|end_header_id|>\n\n" trim(content) "<|eot_id|>"
 *               generation prompt "<|start_header_id|>assistant<|end_header_id|>\n\n"
 *             Llama 3.1 and later (the template says "Cutting Knowledge
 *             Date") always open with a system message that starts with
 *             "Cutting Knowledge Date: December 2023\nToday Date: DATE\n\n",
 *             DATE being the template's default date_string ("26 Jul 2024").
 *   chatml    Qwen2, Qwen2.5, SmolLM3 and many fine-tunes. Detected by
 *             "<|im_start|>".
 *               "<|im_start|>" role "\n" content "<|im_end|>\n"
 *               generation prompt "<|im_start|>assistant\n"
 *             Qwen's templates insert a default system message when there is
 *             none; we do so only when the template holds such a literal,
 *             '<|im_start|>system\nTEXT<|im_end|>', and use its TEXT.
 *             (SmolLM3's metadata system block is not reproduced.)
 *   deepseek  deepseek-llm-*-chat. Detected by "'User: '" with "Assistant:".
 *               bos, system "\n\n", "User: " user "\n\n", "Assistant: " answer eos
 *               generation prompt "Assistant:"
 *
 * Multi-turn chat keeps the KV cache: each turn feeds only what follows the
 * previous answer (its end-of-turn token, then the new user message and the
 * generation prompt), so every formatter renders a message from the message
 * alone and its place in the conversation, never from later messages.
 */
enum { CHAT_LLAMA2, CHAT_MISTRAL, CHAT_LLAMA3, CHAT_CHATML, CHAT_DEEPSEEK, CHAT_FAMILIES };
static const char *const chat_family_names[CHAT_FAMILIES] = {"llama2", "mistral", "llama3", "chatml", "deepseek"};
#define CHAT_FAMILY_LIST "llama2, mistral, llama3, chatml, deepseek"

enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };
static const char *const role_names[] = {"system", "user", "assistant"};

typedef struct {
    int role;                 /* ROLE_* */
    char *text;               /* owned; may hold NUL bytes */
    size_t len;
} ChatMessage;

typedef struct {
    ChatMessage *msg;
    int n, cap;
} Conversation;

typedef struct {
    int family;                       /* CHAT_* */
    char bos[64], eos[64];            /* the template's bos_token / eos_token: the tokenizer's pieces */
    const char *eot;                  /* the text that ends an answer */
    const char *after_eot;            /* and what follows it before the next message */
    int eot_id;                       /* the token that ends an answer, or -1 */
    char inst_open[16], inst_close[16]; /* mistral */
    int answer_space;                 /* mistral: " " before an answer */
    int trim_answer;                  /* mistral: answers are stripped */
    int system_last;                  /* mistral: the system text joins the last user message */
    char *default_system;             /* chatml: the template's own system message, or NULL */
    char *preamble;                   /* llama3.1: what starts the system message, or NULL */
} ChatFormat;

/* A growing string. */
typedef struct {
    char *s;
    size_t len, cap;
} Str;

static void str_add(Str *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        if (!b->s) die("out of memory");
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void str_puts(Str *b, const char *s) { str_add(b, s, strlen(s)); }

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* Appends s without leading and trailing whitespace, as Python's str.strip()
   and Jinja's |trim do (ASCII whitespace only). */
static void str_add_stripped(Str *b, const char *s, size_t n) {
    while (n > 0 && is_space(s[0])) s++, n--;
    while (n > 0 && is_space(s[n - 1])) n--;
    str_add(b, s, n);
}

static int chat_family(const char *name) {
    for (int i = 0; i < CHAT_FAMILIES; i++)
        if (!strcmp(name, chat_family_names[i])) return i;
    return -1;
}

/* Token id's piece as text ("" when there is none), for bos_token / eos_token. */
static void piece_text(const Tokenizer *t, int id, char *out, size_t cap) {
    const TokenizerData *d = tokenizer_data(t);
    out[0] = '\0';
    if (id < 0 || id >= d->n_vocab) return;
    size_t n = d->piece_offset[id + 1] - d->piece_offset[id];
    if (n >= cap) return;
    memcpy(out, d->piece_bytes + d->piece_offset[id], n);
    out[n] = '\0';
}

/* The Jinja string literal around an occurrence of `what` in the template,
   when only spaces stand between them and its quotes: for "[INST]" in
   "{{ ' [INST] ' + ...", " [INST] ". Returns 0, or -1 when there is none. */
static int template_literal(const char *tpl, const char *what, char *out, size_t cap) {
    size_t n = strlen(what);
    for (const char *p = strstr(tpl, what); p; p = strstr(p + 1, what)) {
        const char *a = p, *z = p + n;
        while (a > tpl && a[-1] == ' ') a--;
        while (*z == ' ') z++;
        if (a == tpl || (a[-1] != '\'' && a[-1] != '"') || *z != a[-1] || (size_t)(z - a) >= cap) continue;
        memcpy(out, a, (size_t)(z - a));
        out[z - a] = '\0';
        return 0;
    }
    return -1;
}

/* The text of a Jinja string literal starting at p and ending at `end` (not
   included), with its escapes undone; NULL when the stretch is not plain
   literal text (a quote or an expression in it). */
static char *template_unescape(const char *p, const char *end) {
    Str b = {0};
    for (; p < end; p++) {
        if (*p == '\'' || *p == '"' || *p == '{' || *p == '}') { free(b.s); return NULL; }
        if (*p == '\\' && p + 1 < end) {
            p++;
            char c = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
            str_add(&b, &c, 1);
        } else {
            str_add(&b, p, 1);
        }
    }
    if (!b.s) str_puts(&b, "");
    return b.s;
}

/* Qwen's default system message: the literal
   '<|im_start|>system\nTEXT<|im_end|>' in the template (a '<|im_start|>system\n'
   followed by an expression is where the user's system message goes). */
static char *chatml_default_system(const char *tpl) {
    const char *open = "<|im_start|>system";
    for (const char *p = strstr(tpl, open); p; p = strstr(p + 1, open)) {
        const char *q = p + strlen(open);
        if (!strncmp(q, "\\n", 2)) q += 2;
        else if (*q == '\n') q++;
        else continue;
        const char *end = strstr(q, "<|im_end|>");
        char *text = end ? template_unescape(q, end) : NULL;
        if (text && text[0]) return text;
        free(text);
    }
    return NULL;
}

/* Llama 3.1's system preamble: "Cutting Knowledge Date: D\nToday Date: T\n\n",
   D from the template's literal, T its default date_string. */
static char *llama3_preamble(const char *tpl) {
    const char *k = strstr(tpl, "Cutting Knowledge Date: ");
    if (!k) return NULL;
    k += strlen("Cutting Knowledge Date: ");
    size_t kn = 0;
    while (k[kn] && k[kn] != '\\' && k[kn] != '\n' && k[kn] != '"' && k[kn] != '\'' && kn < 64) kn++;
    const char *date = "26 Jul 2024";
    size_t dn = strlen(date);
    const char *d = strstr(tpl, "set date_string = ");
    if (d) {
        d += strlen("set date_string = ");
        char quote = *d;
        const char *z = quote == '"' || quote == '\'' ? strchr(d + 1, quote) : NULL;
        if (z && z - d - 1 < 64) date = d + 1, dn = (size_t)(z - d - 1);
    }
    Str b = {0};
    str_puts(&b, "Cutting Knowledge Date: ");
    str_add(&b, k, kn);
    str_puts(&b, "\nToday Date: ");
    str_add(&b, date, dn);
    str_puts(&b, "\n\n");
    return b.s;
}

/* Which family a template belongs to, or -1. The order matters: Llama 2's
   template also contains "[INST]". */
static int chat_detect(const char *tpl) {
    if (strstr(tpl, "<|start_header_id|>")) return CHAT_LLAMA3;
    if (strstr(tpl, "<|im_start|>")) return CHAT_CHATML;
    if (strstr(tpl, "<<SYS>>")) return CHAT_LLAMA2;
    if (strstr(tpl, "[INST]")) return CHAT_MISTRAL;
    if ((strstr(tpl, "'User: '") || strstr(tpl, "\"User: \"")) && strstr(tpl, "Assistant:")) return CHAT_DEEPSEEK;
    return -1;
}

/* Sets up the formatter: --chat-template's, else the detected one. A
   template we do not recognise, or none, is an error that names the way out. */
static void chat_format_init(ChatFormat *f, const Tokenizer *t, const char *name) {
    memset(f, 0, sizeof *f);
    size_t len = 0;
    const char *src = tokenizer_chat_template(t, &len);
    char *tpl = malloc(len + 1); /* the template is not NUL-terminated */
    if (!tpl) die("out of memory");
    if (src) memcpy(tpl, src, len);
    tpl[len] = '\0';
    if (name) {
        f->family = chat_family(name);
    } else if (!src || len == 0) {
        die("the model has no chat template; choose a formatter with --chat-template NAME (" CHAT_FAMILY_LIST ")");
    } else if ((f->family = chat_detect(tpl)) < 0) {
        die("the model's chat template is not one of the known families; choose a formatter with --chat-template NAME (" CHAT_FAMILY_LIST ")");
    }
    /* The template's own strings only count when it is of the family used. */
    int own = chat_detect(tpl) == f->family;
    const TokenizerData *d = tokenizer_data(t);
    piece_text(t, d->bos_id, f->bos, sizeof f->bos);
    piece_text(t, d->eos_id, f->eos, sizeof f->eos);
    f->eot = f->eos;
    f->after_eot = "";
    switch (f->family) {
    case CHAT_MISTRAL:
        strcpy(f->inst_open, "[INST] ");
        strcpy(f->inst_close, " [/INST]");
        if (own) {
            if (template_literal(tpl, "[INST]", f->inst_open, sizeof f->inst_open)) strcpy(f->inst_open, "[INST] ");
            if (template_literal(tpl, "[/INST]", f->inst_close, sizeof f->inst_close)) strcpy(f->inst_close, " [/INST]");
            f->answer_space = strstr(tpl, "' ' + message") || strstr(tpl, "\" \" + message");
            f->trim_answer = strstr(tpl, "|trim") || strstr(tpl, "| trim");
            f->system_last = strstr(tpl, "loop.last and system_message") != NULL;
        }
        break;
    case CHAT_LLAMA3:
        f->eot = "<|eot_id|>";
        if (own) f->preamble = llama3_preamble(tpl);
        break;
    case CHAT_CHATML:
        f->eot = "<|im_end|>";
        f->after_eot = "\n";
        if (own) f->default_system = chatml_default_system(tpl);
        break;
    }
    f->eot_id = f->eot[0] ? tokenizer_find(t, f->eot) : -1;
    if (f->eot[0] && f->eot_id < 0)
        fprintf(stderr, "warning: the vocabulary has no '%s' token: answers end only at end-of-sequence\n", f->eot);
    free(tpl);
}

static void chat_format_free(ChatFormat *f) {
    free(f->default_system);
    free(f->preamble);
}

/* Appends messages[from, n) as the family renders them, then (with
   gen_prompt) what opens the assistant's answer. from == 0 starts the
   conversation; from > 0 continues one whose earlier messages are in the
   cache. sys_at: the user message the system text joins (llama2, mistral). */
static void chat_render(Str *b, const ChatFormat *f, const ChatMessage *m, int n, int from, int sys_at, int gen_prompt) {
    const ChatMessage *sys = n > 0 && m[0].role == ROLE_SYSTEM ? &m[0] : NULL;
    if (from == 0) {
        if (f->family == CHAT_MISTRAL || f->family == CHAT_DEEPSEEK || f->family == CHAT_LLAMA3) str_puts(b, f->bos);
        if (f->family == CHAT_LLAMA3 && f->preamble) { /* 3.1: a system message, always */
            str_puts(b, "<|start_header_id|>system<|end_header_id|>\n\n");
            str_puts(b, f->preamble);
            if (sys) str_add_stripped(b, sys->text, sys->len);
            str_puts(b, "<|eot_id|>");
        }
        if (f->family == CHAT_CHATML && !sys && f->default_system && n > 0) {
            str_puts(b, "<|im_start|>system\n");
            str_puts(b, f->default_system);
            str_puts(b, "<|im_end|>\n");
        }
    }
    for (int i = from; i < n; i++) {
        const ChatMessage *x = &m[i];
        int user = x->role == ROLE_USER, answer = x->role == ROLE_ASSISTANT;
        switch (f->family) {
        case CHAT_LLAMA2:
            if (user) {
                Str c = {0};
                if (i == sys_at && sys) {
                    str_puts(&c, "<<SYS>>\n");
                    str_add(&c, sys->text, sys->len);
                    str_puts(&c, "\n<</SYS>>\n\n");
                }
                str_add(&c, x->text, x->len);
                str_puts(b, f->bos);
                str_puts(b, "[INST] ");
                str_add_stripped(b, c.s ? c.s : "", c.len);
                str_puts(b, " [/INST]");
                free(c.s);
            } else if (answer) {
                str_puts(b, " ");
                str_add_stripped(b, x->text, x->len);
                str_puts(b, " ");
                str_puts(b, f->eos);
            }
            break;
        case CHAT_MISTRAL:
            if (user) {
                str_puts(b, f->inst_open);
                if (i == sys_at && sys) {
                    str_add(b, sys->text, sys->len);
                    str_puts(b, "\n\n");
                }
                str_add(b, x->text, x->len);
                str_puts(b, f->inst_close);
            } else if (answer) {
                if (f->answer_space) str_puts(b, " ");
                if (f->trim_answer) str_add_stripped(b, x->text, x->len);
                else str_add(b, x->text, x->len);
                str_puts(b, f->eos);
            }
            break;
        case CHAT_LLAMA3:
            if (x->role == ROLE_SYSTEM && f->preamble) break; /* already in the preamble's message */
            str_puts(b, "<|start_header_id|>");
            str_puts(b, role_names[x->role]);
            str_puts(b, "<|end_header_id|>\n\n");
            str_add_stripped(b, x->text, x->len);
            str_puts(b, "<|eot_id|>");
            break;
        case CHAT_CHATML:
            str_puts(b, "<|im_start|>");
            str_puts(b, role_names[x->role]);
            str_puts(b, "\n");
            str_add(b, x->text, x->len);
            str_puts(b, "<|im_end|>\n");
            break;
        case CHAT_DEEPSEEK:
            str_puts(b, user ? "User: " : answer ? "Assistant: " : "");
            str_add(b, x->text, x->len);
            str_puts(b, answer ? f->eos : "\n\n");
            break;
        }
    }
    if (gen_prompt) {
        if (f->family == CHAT_LLAMA3) str_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        else if (f->family == CHAT_CHATML) str_puts(b, "<|im_start|>assistant\n");
        else if (f->family == CHAT_DEEPSEEK) str_puts(b, "Assistant:");
    }
}

/* Where the system text goes for llama2 (the first user message) and mistral
   (the first, or with v0.3 the last of the conversation as first rendered). */
static int chat_system_at(const ChatFormat *f, const Conversation *c) {
    if (c->n == 0 || c->msg[0].role != ROLE_SYSTEM) return -1;
    if (f->family == CHAT_MISTRAL && f->system_last) return c->n - 1; /* checked: it is the last user message */
    return 1;
}

static void conversation_add(Conversation *c, int role, const char *text, size_t len) {
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 8;
        c->msg = realloc(c->msg, (size_t)c->cap * sizeof *c->msg);
        if (!c->msg) die("out of memory");
    }
    char *copy = malloc(len + 1);
    if (!copy) die("out of memory");
    memcpy(copy, text, len);
    copy[len] = '\0';
    c->msg[c->n++] = (ChatMessage){role, copy, len};
}

static void conversation_free(Conversation *c) {
    for (int i = 0; i < c->n; i++) free(c->msg[i].text);
    free(c->msg);
}

/* Appends the turns of a --chat-history file: [{"role": ..., "content": ...}, ...]. */
static void load_history(Conversation *c, const char *path) {
    size_t len;
    char *text = read_file(path, "chat history", &len), err[256];
    JsonDoc doc;
    if (json_parse(&doc, text, len, err, sizeof err)) die("chat history '%s': %s", path, err);
    if (doc.root.type != JSON_ARRAY) die("chat history '%s': expected a JSON array of {\"role\", \"content\"} objects", path);
    for (size_t i = 0; i < doc.root.len; i++) {
        const JsonValue *item = json_array_item(&doc.root, i);
        const JsonValue *role = json_get(item, "role"), *content = json_get(item, "content");
        if (!json_string(role) || !json_string(content))
            die("chat history '%s': message %zu is not an object with string \"role\" and \"content\"", path, i + 1);
        int r = -1;
        for (int k = 0; k < 3; k++)
            if (!strcmp(role->str, role_names[k])) r = k;
        if (r < 0) die("chat history '%s': message %zu has role '%s' (system, user or assistant)", path, i + 1, role->str);
        conversation_add(c, r, content->str, content->len);
    }
    json_free(&doc);
    free(text);
}

/* An optional system message, then user and assistant in turn, ending with
   the user message to answer: the order every family's template demands. */
static void check_roles(const Conversation *c, const char *history) {
    int first = c->n > 0 && c->msg[0].role == ROLE_SYSTEM;
    for (int i = 0; i < c->n; i++) {
        int want = i < first ? ROLE_SYSTEM : (i - first) % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT;
        if (c->msg[i].role != want) {
            if (c->msg[i].role == ROLE_SYSTEM)
                die("chat history '%s': a system message can only come first", history ? history : "");
            die("%s%s%smessage %d has role '%s' where '%s' was expected (after an optional system message, "
                "roles alternate user/assistant)", history ? "chat history '" : "", history ? history : "",
                history ? "': " : "", i + 1, role_names[c->msg[i].role], role_names[want]);
        }
    }
    if (c->n == first || c->msg[c->n - 1].role != ROLE_USER)
        die("--chat needs a user message to answer: give it with -p or -f, or end the chat history with one");
}

/* Tokenizes a rendering: its special tokens parsed, no BOS added (the
   template writes it where it belongs). Appends to ids[*n..]. */
static void chat_tokenize(const Tokenizer *t, const Str *text, int **ids, int *n, int *cap) {
    if (text->len > (size_t)INT_MAX / 2 - 3) die("chat too long");
    int need = *n + 2 * (int)text->len + 3;
    if (need > *cap) {
        *cap = need;
        *ids = realloc(*ids, (size_t)need * sizeof(int));
        if (!*ids) die("out of memory");
    }
    int k = tokenizer_encode_ex(t, text->s ? text->s : "", text->len, 0, 1, *ids + *n, *cap - *n);
    if (k < 0) die("cannot tokenize the chat");
    *n += k;
}

/* One line from the terminal, without its newline; NULL at EOF. */
static char *read_turn(size_t *len) {
    static char *line;
    static size_t cap;
    fputs("> ", stderr);
    fflush(stderr);
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        fputc('\n', stderr);
        free(line);
        line = NULL;
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
    line[n] = '\0';
    *len = (size_t)n;
    return line;
}

static void run_chat(Engine *e, const Options *o) {
    ChatFormat f;
    chat_format_init(&f, e->tokenizer, o->chat_template);
    Conversation c = {0};
    if (o->system) conversation_add(&c, ROLE_SYSTEM, o->system, strlen(o->system));
    if (o->chat_history) {
        int before = c.n;
        load_history(&c, o->chat_history);
        if (before && c.n > before && c.msg[before].role == ROLE_SYSTEM)
            die("give the system prompt with --system or in the chat history, not both");
    }
    /* -f - reads the terminal to its end: then there is no next turn to read. */
    int interactive = isatty(STDIN_FILENO) && !o->tokenize && !(o->prompt_file && !strcmp(o->prompt_file, "-"));
    int history_ends_with_user = c.n > 0 && c.msg[c.n - 1].role == ROLE_USER;
    if (o->prompt || o->prompt_file) {
        size_t len = 0;
        char *text = o->prompt_file ? read_file(o->prompt_file, "prompt file", &len) : NULL;
        conversation_add(&c, ROLE_USER, text ? text : o->prompt, text ? len : strlen(o->prompt));
        free(text);
    } else if (!history_ends_with_user) {
        size_t len = 0;
        if (interactive) {
            char *line = read_turn(&len);
            if (!line || len == 0) goto done; /* nothing asked: nothing to do */
            conversation_add(&c, ROLE_USER, line, len);
        } else if (!o->tokenize || !isatty(STDIN_FILENO)) { /* the message is all of stdin */
            char *text = read_file("-", "standard input", &len);
            while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r')) len--;
            if (len > 0) conversation_add(&c, ROLE_USER, text, len);
            free(text);
        }
    }
    check_roles(&c, o->chat_history);

    int sys_at = chat_system_at(&f, &c);
    Str text = {0};
    chat_render(&text, &f, c.msg, c.n, 0, sys_at, 1);
    int *ids = NULL, n = 0, cap = 0;
    chat_tokenize(e->tokenizer, &text, &ids, &n, &cap);
    if (o->tokenize) {
        printf("[");
        for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
        printf("]\n");
        goto done_ids;
    }
    if (n == 0) die("the chat rendered to no tokens");
    e->ctx_len = o->ctx ? o->ctx : e->model.cfg.max_seq_len;
    if (n > e->ctx_len) die("the chat has %d tokens, more than the context of %d", n, e->ctx_len);
    engine_start(e, o);
    Sampler s;
    sampler_init(&s, e->model.cfg.vocab_size, o);
    for (int turn = 1;; turn++) {
        if (o->verbose)
            fprintf(stderr, "chat: turn %d feeds %d new tokens after %d in the cache (%s formatter)\n", turn, n,
                    e->seq.n_past, chat_family_names[f.family]);
        Generation g;
        generate(e, &s, ids, n, f.eot_id, 1, o, &g);
        report(&g, n, o);
        int full = e->seq.n_past >= e->ctx_len && g.unfed >= 0;
        /* What closes the answer in the cache: the end-of-turn token the model
           sampled, or (cut short, or ended by another token) the template's. */
        n = 0;
        text.len = 0;
        if (g.stop >= 0 && g.stop == f.eot_id) {
            ids[n++] = g.stop;
        } else {
            if (g.unfed >= 0) ids[n++] = g.unfed;
            str_puts(&text, f.eot);
        }
        str_puts(&text, f.after_eot);
        generation_free(&g);
        if (!interactive) break;
        if (full) {
            fprintf(stderr, "chat: the context of %d tokens is full; the conversation ends here (--ctx sets a larger one)\n",
                    e->ctx_len);
            break;
        }
        size_t len;
        char *line = read_turn(&len);
        if (!line || len == 0) break;
        conversation_add(&c, ROLE_ASSISTANT, "", 0); /* its tokens are in the cache already */
        conversation_add(&c, ROLE_USER, line, len);
        chat_render(&text, &f, c.msg, c.n, c.n - 1, sys_at, 1);
        chat_tokenize(e->tokenizer, &text, &ids, &n, &cap);
        if (e->seq.n_past + n > e->ctx_len) {
            fprintf(stderr, "chat: the context of %d tokens is full (%d in use, this turn needs %d more); the "
                    "conversation ends here (--ctx sets a larger one)\n", e->ctx_len, e->seq.n_past, n);
            break;
        }
    }
    sampler_free(&s);
    engine_stop(e);
done_ids:
    free(ids);
    free(text.s);
done:
    conversation_free(&c);
    chat_format_free(&f);
}

int main(int argc, char **argv) {
    Options o = parse_options(argc, argv);
    Engine e = {0};
    char err[512];
    if (model_load(&e.model, o.model_path, err, sizeof err)) die("%s", err);
    override_rope(&e.model.cfg, &o);
    e.tokenizer = e.model.tokenizer;
    if (o.tokenizer_path) {
        e.own_tokenizer = tokenizer_load(o.tokenizer_path, e.model.cfg.vocab_size, err, sizeof err);
        if (!e.own_tokenizer) die("%s", err);
        e.tokenizer = e.own_tokenizer;
    }
    if (!e.tokenizer) die("model '%s' has no tokenizer: pass its tokenizer.bin with -z", o.model_path);
    if (o.chat) {
        run_chat(&e, &o);
        tokenizer_free(e.own_tokenizer);
        model_free(&e.model);
        return 0;
    }

    size_t text_len = 0;
    char *text = o.prompt_file ? read_file(o.prompt_file, "prompt file", &text_len) : NULL;
    if (!text) {
        text_len = o.prompt ? strlen(o.prompt) : 0;
        text = malloc(text_len + 1);
        if (!text) die("out of memory");
        memcpy(text, o.prompt ? o.prompt : "", text_len);
    }
    /* Special tokens written in the prompt (<|im_start|>, <s>) are parsed as
       single tokens, as the tokenizers library does (tokenizer.h: then
       2 * len + 3 ids always suffice). */
    if (text_len > (size_t)INT_MAX / 2 - 3) die("prompt too long");
    int max_ids = 2 * (int)text_len + 3;
    int *tokens = malloc((size_t)max_ids * sizeof(int));
    if (!tokens) die("out of memory");
    int n = tokenizer_encode_ex(e.tokenizer, text, text_len, tokenizer_add_bos(e.tokenizer), 1, tokens, max_ids);
    if (n < 0) die("cannot tokenize the prompt");
    if (o.tokenize) {
        printf("[");
        for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", tokens[i]);
        printf("]\n");
    } else {
        if (n == 0) die("the prompt is empty and the model has no beginning-of-sequence token");
        run_model(&e, tokens, n, &o);
    }
    tokenizer_free(e.own_tokenizer);
    model_free(&e.model);
    free(tokens);
    free(text);
    return 0;
}

