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

static Options parse_options(int argc, char **argv) {
    Options o = {.steps = -1, .temperature = 1.0f, .top_p = 0.9f, .threads = 0, .ctx = 0};
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

static void softmax(float *x, int n) {
    float max = x[argmax(x, n)], sum = 0;
    for (int i = 0; i < n; i++) sum += x[i] = expf(x[i] - max);
    for (int i = 0; i < n; i++) x[i] /= sum;
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
    fprintf(stderr, "kv cache: %zu bytes per token (f32 k and v: %d layers x %d KV heads x (%d + %d) dims x 4 bytes), %.2f MiB for %d tokens\n",
            kv_token, c->n_layers, c->n_kv_heads, c->head_dim, c->v_head_dim, (double)kv_token * e->ctx_len / 1048576.0, e->ctx_len);
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
        }
        if (start + len >= n) break;
    }
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
    e->ctx = context_new(&e->model, e->ctx_len, batch, o->ppl ? batch : 1, o->threads, err, sizeof err);
    if (!e->ctx) die("%s", err);
    if (sequence_init(&e->seq, &e->model, e->ctx_len, err, sizeof err)) die("%s", err);
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

@@CHAT@@

int main(int argc, char **argv) {
    Options o = parse_options(argc, argv);
    Engine e = {0};
    char err[512];
    if (model_load(&e.model, o.model_path, err, sizeof err)) die("%s", err);
    e.tokenizer = e.model.tokenizer;
    if (o.tokenizer_path) {
        e.own_tokenizer = tokenizer_load(o.tokenizer_path, e.model.cfg.vocab_size, err, sizeof err);
        if (!e.own_tokenizer) die("%s", err);
        e.tokenizer = e.own_tokenizer;
    }
    if (!e.tokenizer) die("model '%s' has no tokenizer: pass its tokenizer.bin with -z", o.model_path);

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

