/* run.c - the command line and the one main loop.
 *
 *   ./run MODEL [options]      generate text, score it (--ppl) or tokenize it
 *   ./run [options]            the same with the shipped model, models/reader.bin
 *
 * MODEL is a file written by ./export or a llama2.c checkpoint (with -z for
 * its tokenizer.bin). README.md documents every option, with examples.
 */
#define MODEL_IMPLEMENTATION
#include "model.h"
#include "json.h" /* --chat-history; the implementation is compiled in tokenizer.c */
#include "message.h"
#include "tempfile.h" /* --cache-dir files appear whole or not at all */

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <signal.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <unistd.h>

/* Every bad input ends here: one line on stderr, status 1. */
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    message_print(stderr, "error: ", fmt, ap);
    va_end(ap);
    exit(1);
}

/* Something skipped or ignored: one line on stderr, and the run goes on. */
static void warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    message_print(stderr, "warning: ", fmt, ap);
    va_end(ap);
}

/* Output that could not be written (a full disk, a closed file) is an
   error like any other: checked once, before a successful exit. */
static void finish_output(void) {
    if (fflush(stdout) == EOF || ferror(stdout)) die("cannot write the output: %s", strerror(errno ? errno : EIO));
}

/* The default seed: from the system's random source (or, without one, the
   clock and the process id), so that runs started together differ. It is
   shown by --verbose and --json, so a good sample can be had again with -s. */
static unsigned long long fresh_seed(void) {
    unsigned long long seed = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&seed, sizeof seed, 1, f) != 1) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (unsigned long long)ts.tv_sec * 1000000007ull ^ (unsigned long long)ts.tv_nsec ^ (unsigned long long)getpid() << 32;
    }
    if (f) fclose(f);
    return seed >> 1 ? seed >> 1 : 1; /* positive as -s takes it (up to LLONG_MAX), and nonzero */
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------------------
 * Options.
 */
#define DEFAULT_MODEL "models/reader.bin" /* the project's own model, when none is named */
typedef struct {
    const char *model_path, *tokenizer_path, *prompt, *prompt_file;
    int steps;          /* -1: until end-of-sequence or a full context */
    float temperature, top_p;
    int top_k;
    unsigned long long seed;
    int threads, ctx;
    int ignore_eos, json, tokenize, ppl, ppl_chunks, verbose;
    int chat;
    const char *system, *chat_template, *chat_history;
    const char *pos;    /* --pos rope|nope|rerope|leaky, NULL = the model's */
    int window;         /* --window W, -1 = not given */
    float leaky_k;      /* --leaky-k K, 0 = not given */
    int logn;           /* --logn L, -1 = not given */
    const char *rope_scaling; /* --rope-scaling, NULL = the model's */
    float rope_factor, rope_theta; /* 0 = the model's */
    int rope_orig_ctx;  /* 0 = the model's */
    const char *nbce_dir;   /* --nbce DIR: answer from the documents in DIR */
    float beta, eta, nbce_top_p;
    int pool;           /* NBCE_MIN_ENTROPY or NBCE_MEAN */
    char *row_template; /* --template, "\n" turned into newlines; NULL = the default */
    const char *cache_dir;  /* --cache-dir: KV caches of documents kept between runs */
    double mem;         /* --mem: bytes the NBCE rows may take; 0 = what the system has available */
    int nbce_chunk;     /* --nbce-chunk: most tokens in one context; 0 = what fits */
    int no_repack;      /* --no-repack: matrices stay as the file has them */
    int kv_type;        /* --kv: TYPE_F16 (default) or TYPE_F32 */
} Options;

/* --help: on standard output, status 0. A wrong command line is one error line instead. */
static void usage(void) {
    fprintf(stdout,
            "usage: ./run [MODEL] [options]   (MODEL: default " DEFAULT_MODEL " beside ./run)\n"
            "  -p TEXT          prompt\n"
            "  -f FILE          read the prompt from FILE (- = stdin)\n"
            "  -n N             tokens to generate (default: until end-of-sequence or full context)\n"
            "  -t T             temperature, 0 = greedy (default 1.0)\n"
            "  --top-p P        nucleus sampling (default 0.9)\n"
            "  --top-k K        keep the K most likely tokens, 0 = off (default 0)\n"
            "  -s SEED          random seed (default: a fresh one, shown by --verbose and --json)\n"
            "  -z FILE          tokenizer for a llama2.c checkpoint (tokenizer.bin, .model, .gguf, tokenizer.json)\n"
            "  --threads N      worker threads (default: online cores)\n"
            "  --ctx N          context length (default: the model's)\n"
            "  --ignore-eos     keep generating past end-of-sequence\n"
            "  --json           print one JSON object at the end instead of streaming\n"
            "  --tokenize       print the prompt's token ids as a JSON array and exit\n"
            "  --ppl            score the prompt: mean negative log-likelihood per token\n"
            "  --ppl-chunks     score as llama.cpp's llama-perplexity does: chunks of --ctx tokens, each\n"
            "                   starting with BOS, the second half of each scored (implies --ppl)\n"
            "  --verbose        print the model's shape and memory use on stderr\n"
            "  --no-repack      use quantized matrices as stored, not interleaved for the eight-row kernels\n"
            "  --kv T           KV cache type: f16, f32 or q8_0 (default f16; q8_0 needs head sizes in 32s)\n"
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
            "  --chat           chat with the model's chat template (multi-turn when stdin is a terminal;\n"
            "                   there Ctrl-C stops an answer, and at the prompt Ctrl-C or Ctrl-D ends the chat)\n"
            "  --system TEXT    system prompt for --chat\n"
            "  --chat-template NAME  the formatter to use instead of the detected one:\n"
            "                   llama2, mistral, llama3, chatml, deepseek\n"
            "  --chat-history FILE   earlier turns, a JSON array of {\"role\", \"content\"} objects\n"
            "  --nbce DIR       answer the prompt (the question) from the documents in DIR; without -p or -f,\n"
            "                   every line of standard input is a question\n"
            "  --beta B         NBCE: weight of the unconditional row (default 0.25)\n"
            "  --eta E          NBCE: entropy bonus for the previously chosen context (default 0.1)\n"
            "  --nbce-top-p P   NBCE: per-row nucleus before pooling (default 0.95)\n"
            "  --pool P         NBCE: min-entropy or mean (default min-entropy)\n"
            "  --template T     NBCE: row template with {context} and {question}; \\n is a newline\n"
            "                   (default {context}\\n\\n{question}, in the model's chat format if it has one)\n"
            "  --nbce-chunk N   NBCE: most tokens in one context (default: what fits beside the question and\n"
            "                   the answer's room, a quarter of the context up to 256 tokens; -n fits in it)\n"
            "  --cache-dir DIR  NBCE: keep the documents' KV caches in DIR for later runs\n"
            "  --mem SIZE       NBCE: memory the rows' KV caches may take, e.g. 2G (default: what is available)\n"
            "  --version        print the version and exit\n"
            "  -h, --help       print this and exit\n");
    exit(0);
}

/* 64 bits on every target: a seed shown by --json on a 64-bit machine must
   be accepted by -s on a 32-bit one. */
static long long parse_int(const char *opt, const char *s, long long lo, long long hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) die("invalid value '%s' for %s (an integer from %lld to %lld)", s, opt, lo, hi);
    return v;
}

static float parse_float(const char *opt, const char *s, float lo, float hi) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) die("invalid value '%s' for %s (a number from %g to %g)", s, opt, lo, hi);
    return v;
}

/* A size in bytes: a number with an optional K, M, G or T (powers of 1024),
   optionally followed by B or iB. */
static double parse_size(const char *opt, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end), unit = 1;
    const char *units = "KMGT";
    const char *u = *end ? strchr(units, *end & ~0x20) : NULL;
    if (u) {
        for (const char *k = units; k <= u; k++) unit *= 1024;
        end++;
        if (*end == 'i' && end[1] == 'B') end += 2;
        else if ((*end & ~0x20) == 'B') end++;
    } else if ((*end & ~0x20) == 'B') {
        end++;
    }
    if (errno || end == s || *end || !(v > 0) || v * unit > 1e18)
        die("invalid value '%s' for %s (a size such as 512M or 2G)", s, opt);
    return v * unit;
}

/* --template: "\n" written in the option stands for a newline. */
static char *unescape_template(const char *t) {
    char *out = malloc(strlen(t) + 1), *w = out;
    if (!out) die("out of memory");
    for (; *t; t++) {
        if (t[0] == '\\' && t[1] == 'n') *w++ = '\n', t++;
        else *w++ = *t;
    }
    *w = '\0';
    return out;
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

/* The model ./run reads when none is named: the repository's own, found
   beside the program (so ./run works from any folder), else in the current
   folder. */
static const char *default_model(void) {
    static char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - sizeof DEFAULT_MODEL);
    char *slash = n > 0 ? memrchr(path, '/', (size_t)n) : NULL;
    if (slash) {
        memcpy(slash + 1, DEFAULT_MODEL, sizeof DEFAULT_MODEL);
        if (access(path, R_OK) == 0) return path;
    }
    if (access(DEFAULT_MODEL, R_OK) == 0) return DEFAULT_MODEL;
    die("no model named, and the default %s is not beside ./run or in this folder (./run MODEL [options])", DEFAULT_MODEL);
    return NULL;
}

static Options parse_options(int argc, char **argv) {
    Options o = {.steps = -1, .temperature = 1.0f, .top_p = 0.9f, .threads = 0, .ctx = 0, .window = -1, .logn = -1,
                 .beta = 0.25f, .eta = 0.1f, .nbce_top_p = 0.95f, .pool = NBCE_MIN_ENTROPY, .kv_type = TYPE_F16};
    int nbce_option = 0; /* the index of an NBCE-only option given */
    int gen_option = 0;  /* the index of an option that only generation uses */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = cores > 0 ? (int)cores : 1;
    o.seed = 0; /* none given: fresh_seed() below */
    int seed_given = 0;
    if (argc < 2) die("no model or options given (./run MODEL -p TEXT; ./run --help lists the options)");
    int first = argv[1][0] == '-' ? 1 : 2; /* options straight away: the default model */
    o.model_path = first == 2 ? argv[1] : NULL;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
#define VALUE() (has_value ? argv[++i] : (die("option %s needs a value", a), ""))
        if (!strcmp(a, "-p") || !strcmp(a, "-i")) o.prompt = VALUE();
        else if (!strcmp(a, "-f")) o.prompt_file = VALUE();
        else if (!strcmp(a, "-n")) o.steps = (int)parse_int(a, VALUE(), 0, INT_MAX), gen_option = i - 1;
        else if (!strcmp(a, "-t")) o.temperature = parse_float(a, VALUE(), 0, 100), gen_option = i - 1;
        else if (!strcmp(a, "--top-p")) o.top_p = parse_float(a, VALUE(), 0, 1), gen_option = i - 1;
        else if (!strcmp(a, "--top-k")) o.top_k = (int)parse_int(a, VALUE(), 0, INT_MAX), gen_option = i - 1;
        else if (!strcmp(a, "-s")) o.seed = (unsigned long long)parse_int(a, VALUE(), 0, LLONG_MAX), seed_given = 1, gen_option = i - 1;
        else if (!strcmp(a, "-z")) o.tokenizer_path = VALUE();
        else if (!strcmp(a, "--threads")) o.threads = (int)parse_int(a, VALUE(), 1, 1024);
        else if (!strcmp(a, "--ctx")) o.ctx = (int)parse_int(a, VALUE(), 1, 1 << 24);
        else if (!strcmp(a, "--ignore-eos")) o.ignore_eos = 1, gen_option = i;
        else if (!strcmp(a, "--json")) o.json = 1;
        else if (!strcmp(a, "--tokenize")) o.tokenize = 1;
        else if (!strcmp(a, "--ppl")) o.ppl = 1;
        else if (!strcmp(a, "--ppl-chunks")) o.ppl = o.ppl_chunks = 1;
        else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) o.verbose = 1;
        else if (!strcmp(a, "--no-repack")) o.no_repack = 1;
        else if (!strcmp(a, "--kv")) {
            const char *t = VALUE();
            if (!strcmp(t, "f16")) o.kv_type = TYPE_F16;
            else if (!strcmp(t, "f32")) o.kv_type = TYPE_F32;
            else if (!strcmp(t, "q8_0")) o.kv_type = TYPE_Q8_0;
            else die("unknown --kv '%s' (f16, f32 or q8_0)", t);
        }
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
        else if (!strcmp(a, "--nbce")) o.nbce_dir = VALUE();
        else if (!strcmp(a, "--beta")) o.beta = parse_float(a, VALUE(), -1, 1e6f), nbce_option = i - 1;
        else if (!strcmp(a, "--eta")) o.eta = parse_float(a, VALUE(), 0, 1e6f), nbce_option = i - 1;
        else if (!strcmp(a, "--nbce-top-p")) {
            o.nbce_top_p = parse_float(a, VALUE(), 0, 1), nbce_option = i - 1;
            if (o.nbce_top_p == 0) die("invalid value '0' for --nbce-top-p (a nucleus above 0, at most 1)");
        }
        else if (!strcmp(a, "--pool")) {
            const char *p = VALUE();
            nbce_option = i - 1;
            if (!strcmp(p, "min-entropy")) o.pool = NBCE_MIN_ENTROPY;
            else if (!strcmp(p, "mean")) o.pool = NBCE_MEAN;
            else die("unknown --pool '%s' (min-entropy or mean)", p);
        }
        else if (!strcmp(a, "--template")) {
            free(o.row_template);
            o.row_template = unescape_template(VALUE()), nbce_option = i - 1;
            if (!strstr(o.row_template, "{context}") || !strstr(o.row_template, "{question}"))
                die("--template needs both {context} and {question}");
        }
        else if (!strcmp(a, "--nbce-chunk")) o.nbce_chunk = (int)parse_int(a, VALUE(), 1, 1 << 24), nbce_option = i - 1;
        else if (!strcmp(a, "--cache-dir")) o.cache_dir = VALUE(), nbce_option = i - 1;
        else if (!strcmp(a, "--mem")) o.mem = parse_size(a, VALUE()), nbce_option = i - 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage();
        else if (!strcmp(a, "--version")) printf("run %s\n", ENGINE_VERSION), finish_output(), exit(0);
        else die("unknown option '%s' (./run --help lists them)", a);
#undef VALUE
    }
    if (!o.model_path) o.model_path = default_model();
    if (o.prompt && o.prompt_file) die("give the prompt with -p or -f, not both");
    if (nbce_option && !o.nbce_dir) die("%s only applies with --nbce", argv[nbce_option]);
    if (o.nbce_dir && (o.chat || o.ppl || o.chat_history))
        die("--nbce answers a question from documents; it cannot be combined with %s",
            o.chat ? "--chat" : o.ppl ? "--ppl" : "--chat-history");
    if (!o.chat && !o.nbce_dir && (o.system || o.chat_template || o.chat_history))
        die("%s only applies with --chat", o.system ? "--system" : o.chat_template ? "--chat-template" : "--chat-history");
    if (o.nbce_dir && o.system && o.row_template)
        die("--system applies to NBCE rows in the model's chat format, not with --template");
    if (o.chat && o.ppl) die("--ppl scores a text; it cannot be combined with --chat");
    if (o.tokenize && o.ppl) die("--tokenize prints the prompt's ids; it cannot be combined with --ppl");
    /* (NBCE's rows leave room for -n answer tokens, so -n shapes what its --tokenize prints) */
    if ((o.ppl || (o.tokenize && !o.nbce_dir)) && gen_option)
        die("%s applies to generation; %s generates nothing", argv[gen_option], o.ppl ? "--ppl" : "--tokenize");
    if (o.chat_template && chat_family(o.chat_template) < 0)
        die("unknown chat template '%s' for --chat-template (one of llama2, mistral, llama3, chatml, deepseek)", o.chat_template);
    if (o.pos && strcmp(o.pos, "rope") && strcmp(o.pos, "nope") && strcmp(o.pos, "rerope") && strcmp(o.pos, "leaky"))
        die("unknown --pos '%s' (one of rope, nope, rerope, leaky)", o.pos);
    int rectify = o.pos && (!strcmp(o.pos, "rerope") || !strcmp(o.pos, "leaky"));
    if (!rectify && o.window >= 0) die("--window applies with --pos rerope or --pos leaky");
    if ((!o.pos || strcmp(o.pos, "leaky")) && o.leaky_k) die("--leaky-k applies with --pos leaky");
    if (o.rope_scaling && rope_scaling_kind(o.rope_scaling) < 0)
        die("unknown --rope-scaling '%s' (one of none, linear, ntk, dynamic, yarn)", o.rope_scaling);
    if (!seed_given) o.seed = fresh_seed();
    else if (o.seed == 0) o.seed = 0x5eed; /* xorshift needs a nonzero state; -s 0 is still one fixed seed */
    return o;
}

/* The first number in a file (a cgroup's limit or usage), or -1. */
static double number_in_file(const char *path) {
    FILE *f = fopen(path, "r");
    unsigned long long v;
    int ok = f && fscanf(f, "%llu", &v) == 1; /* "max" (no limit) reads as nothing */
    if (f) fclose(f);
    return ok ? (double)v : -1;
}

/* Memory this process may still take: the system's MemAvailable, or less
   inside a container whose cgroup sets a limit (v2 memory.max, v1
   memory.limit_in_bytes), where going over means being killed. */
static double available_memory(void) {
    double avail = -1;
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        unsigned long long kb;
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = kb * 1024.0;
    }
    if (f) fclose(f);
    if (avail < 0) {
        long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        avail = pages > 0 && size > 0 ? (double)pages * size : 1e18;
    }
    f = fopen("/proc/self/cgroup", "r");
    while (f && fgets(line, sizeof line, f)) { /* "0::/path" (v2) or "N:memory:/path" (v1) */
        char *ctrl = strchr(line, ':'), *path = ctrl ? strchr(ctrl + 1, ':') : NULL;
        if (!path) continue;
        *path++ = 0;
        path[strcspn(path, "\n")] = 0;
        char limit_file[512], usage_file[512];
        if (!strcmp(ctrl + 1, "")) {
            snprintf(limit_file, sizeof limit_file, "/sys/fs/cgroup%s/memory.max", path);
            snprintf(usage_file, sizeof usage_file, "/sys/fs/cgroup%s/memory.current", path);
        } else if (strstr(ctrl + 1, "memory")) {
            snprintf(limit_file, sizeof limit_file, "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", path);
            snprintf(usage_file, sizeof usage_file, "/sys/fs/cgroup/memory%s/memory.usage_in_bytes", path);
        } else {
            continue;
        }
        double limit = number_in_file(limit_file), used = number_in_file(usage_file);
        if (limit > 0 && used >= 0 && limit - used < avail) avail = limit > used ? limit - used : 0;
    }
    if (f) fclose(f);
    return avail;
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

/* Appends tokens to the sequence; returns the logits after the last one. */
static const float *feed(Engine *e, const int *tokens, int n) {
    const float *logits = sequence_feed(e->ctx, &e->seq, tokens, n);
    if (!logits) die("%s", e->ctx->error);
    return logits;
}

static void print_verbose(const Engine *e, const Options *o) {
    const ModelConfig *c = &e->model.cfg;
    int kv = e->ctx->kv_type;
    size_t kv_token = (size_t)c->n_layers * type_row_bytes(kv, (int64_t)(kv_key_width(c) + kv_value_width(c)));
    double elem = type_row_bytes(kv, QK) / (double)QK; /* bytes per cached number: q8_0 keeps a scale per 32 */
    const char *kt = type_name(kv);
    fprintf(stderr, "model: dim %d, %d layers, %d heads (%d KV heads, head dim %d), hidden %d, vocab %d, trained context %d\n",
            c->dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->hidden_dim, c->vocab_size, c->max_seq_len);
    fprintf(stderr, "weights: %.2f MiB mapped (%s)", e->model.map_bytes / 1048576.0, type_name(e->model.tok_emb.type));
    if (e->model.repacked_bytes)
        fprintf(stderr, ", %.2f MiB of matrices copied interleaved for the eight-row kernels", e->model.repacked_bytes / 1048576.0);
    fputc('\n', stderr);
    if (c->attn_kind == ATTN_MLA) {
        size_t mha = (size_t)c->n_layers * c->n_heads * (c->head_dim + c->v_head_dim) * sizeof(float);
        fprintf(stderr, "kv cache: %zu bytes per token (%s latent attention: %d layers x (latent %d + rotary key %d) x %.4g bytes; "
                "keys and values per head would take %.0f), %.2f MiB for %d tokens\n", kv_token, kt, c->n_layers,
                c->kv_lora_rank, c->qk_rope_head_dim, elem, mha / 4 * elem, (double)kv_token * e->ctx_len / 1048576.0, e->ctx_len);
    } else {
        fprintf(stderr, "kv cache: %zu bytes per token (%s k and v: %d layers x %d KV heads x (%d + %d) dims x %.4g bytes), %.2f MiB for %d tokens\n",
                kv_token, kt, c->n_layers, c->n_kv_heads, c->head_dim, c->v_head_dim, elem, (double)kv_token * e->ctx_len / 1048576.0, e->ctx_len);
    }
    if (c->ffn_kind == FFN_MOE)
        fprintf(stderr, "experts: %d routed (%d per token), %d shared, hidden %d; dense layers before %d\n", c->n_experts,
                c->n_experts_used, c->n_shared_experts, c->moe_hidden_dim, c->first_k_dense);
    if (e->ctx->positions.scheme == POS_REROPE || e->ctx->positions.scheme == POS_LEAKY) {
        size_t far = (size_t)c->n_layers * type_row_bytes(kv, (int64_t)kv_far_width(c));
        fprintf(stderr, "rerope/leaky far keys: %zu more bytes per token (%.2f MiB for %d tokens)\n", far,
                (double)far * e->ctx_len / 1048576.0, e->ctx_len);
    }
    char levels[128];
    kernels_names(levels, sizeof levels);
    fprintf(stderr, "kernels: %s (this CPU has: %s; RUN_KERNELS=NAME picks another)\n", e->model.kernels->name, levels);
    fprintf(stderr, "threads: %d, seed: %llu\n", o->threads, o->seed);
    /* The budget. Weights are used from the mapped file, which the kernel
       reads in as they are used and may drop again, except the matrices
       repacked into memory (their mapped pages are given back). */
    double mib = 1048576.0, kv_bytes = e->seq.k ? (double)context_kv_bytes_per_token(e->ctx) * e->seq.capacity : 0;
    double total = (double)e->model.map_bytes + kv_bytes + e->ctx->scratch_bytes;
    fprintf(stderr, "memory: %.2f MiB weights (%.2f MiB of them repacked in memory, the rest mapped) + %.2f MiB kv cache%s "
            "+ %.2f MiB scratch (batches of %d tokens) = %.2f MiB\n", e->model.map_bytes / mib, e->model.repacked_bytes / mib,
            kv_bytes / mib, e->seq.k ? "" : " (NBCE: per row, below)", e->ctx->scratch_bytes / mib, e->ctx->max_batch, total / mib);
}

/* --ppl: consecutive windows of the context that overlap by one token, so
   every token after the first is predicted exactly once. --ppl-chunks:
   llama.cpp's llama-perplexity scheme, so the numbers compare with its own:
   whole chunks of the context only, each with BOS in place of its first
   token (when the model's prompts start with BOS), and only the
   predictions in the second half of each chunk counted. */
static void run_ppl(Engine *e, const int *tokens, int n, const Options *o) {
    if (n < 2) die("--ppl needs a text of at least two tokens");
    int window = e->ctx_len, chunks = o->ppl_chunks;
    if (window < 2) die("--ppl needs a context of at least two tokens");
    if (chunks && n < window)
        die("--ppl-chunks needs at least one whole chunk: the text has %d tokens, the context is %d (a smaller --ctx?)", n, window);
    uint8_t *want = malloc((size_t)window);
    int *chunk = malloc((size_t)window * sizeof *chunk);
    if (!want || !chunk) die("out of memory");
    memset(want, 1, (size_t)window);
    int bos = tokenizer_add_bos(e->tokenizer) ? tokenizer_bos(e->tokenizer) : -1;
    int first = chunks ? window / 2 : 0; /* predictions from this position of a window on are counted */
    double nll = 0;
    int predicted = 0;
    const int vocab = e->model.cfg.vocab_size;
    for (int start = 0; chunks ? start + window <= n : start < n - 1; start += chunks ? window : window - 1) {
        int len = n - start < window ? n - start : window;
        memcpy(chunk, tokens + start, (size_t)len * sizeof *chunk);
        if (chunks && bos >= 0) chunk[0] = bos;
        e->seq.n_past = 0;
        e->seq.rope_len = len; /* dynamic NTK: as one forward pass over the window */
        int batch = e->ctx->max_batch;
        for (int done = 0; done < len; done += batch) {
            int b = len - done < batch ? len - done : batch;
            Sequence *seqs[512];
            for (int i = 0; i < b; i++) seqs[i] = &e->seq;
            if (model_forward(e->ctx, seqs, chunk + done, b, want) < 0) die("%s", e->ctx->error);
            for (int i = 0; i < b && done + i + 1 < len; i++) {
                if (done + i < first) continue;
                const float *lg = e->ctx->logits + (size_t)i * vocab;
                float max = lg[argmax(lg, vocab)];
                double sum = 0;
                for (int v = 0; v < vocab; v++) sum += exp((double)lg[v] - max);
                nll += log(sum) + max - lg[chunk[done + i + 1]];
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
        if (!chunks && start + len >= n) break;
    }
    if (n > 4096 && isatty(STDERR_FILENO)) fputc('\n', stderr);
    double mean = nll / predicted;
    if (o->json) printf("{\"tokens\": %d, \"mean_nll\": %.6f, \"ppl\": %.6f}\n", n, mean, exp(mean));
    else printf("tokens %d, mean_nll %.6f, ppl %.6f\n", n, mean, exp(mean));
    free(want);
    free(chunk);
}

/* Why an answer ended: --json's "finish_reason" and the statistics line's words. */
enum { FINISH_STOP, FINISH_LENGTH, FINISH_CONTEXT, FINISH_INTERRUPTED };
static const char *const finish_json[] = {"stop", "length", "context", "interrupted"};
static const char *const finish_words[] = {"end of text", "the -n limit", "the context is full (--ctx sets a larger one)",
                                           "interrupted (Ctrl-C)"};

/* Ctrl-C in a terminal chat (README.md, "Chat"): while an answer is being
   generated it stops the answer, at the prompt it ends the chat. The handler
   only notes it here; generate() and read_message() look. Everywhere else SIGINT
   keeps its default action and this stays 0. */
static volatile sig_atomic_t interrupted;

/* One answer: what generate() produced and how it ended. */
typedef struct {
    int *ids;          /* generated tokens; an end token that stopped generation is not among them */
    int n_gen;
    int finish;        /* FINISH_STOP (an end token), FINISH_LENGTH (max_new tokens), FINISH_CONTEXT,
                          FINISH_INTERRUPTED (Ctrl-C in a terminal chat) */
    int stop;          /* the end token that ended generation, or -1 */
    int unfed;         /* the last generated token when generation ended with it unfed (the -n
                          limit or a full context), or -1; a chat feeds it before the next turn */
    TextOut out;       /* --json: the text */
    double prefill_tps, decode_tps;
} Generation;

static void sampler_start(Sampler *s, int vocab, const Options *o) {
    if (sampler_init(s, vocab, o->temperature, o->top_p, o->top_k, o->seed)) die("out of memory");
}

/* What generate() samples from and feeds: one sequence, or NBCE's rows.
   step feeds one token and returns the scores for the next. */
typedef struct {
    const float *(*step)(void *self, int token);
    void *self;
} Stepper;

/* Samples from scores (after the token prev) until end-of-sequence (or
   end_of_turn, when >= 0), max_new tokens or Ctrl-C in a terminal chat,
   feeding each token but the last through st. Text streams to stdout unless
   --json. With skip_space, spaces at the start of the answer are not shown
   (chat answers follow "[/INST]" or "Assistant:" with a space the template
   does not count as content). The caller sets g->prefill_tps. */
static void generate(const Tokenizer *tok, Sampler *s, const float *scores, int prev, int max_new, Stepper st,
                     int end_of_turn, int skip_space, const Options *o, Generation *g) {
    memset(g, 0, sizeof *g);
    g->stop = g->unfed = -1;
    g->finish = FINISH_LENGTH;
    g->ids = malloc((size_t)(max_new > 0 ? max_new : 1) * sizeof(int));
    if (o->json) { /* room for the longest piece at every step: no allocation in the loop */
        g->out.cap = (size_t)(max_new > 0 ? max_new : 1) * tokenizer_max_piece_bytes(tok) + 1;
        g->out.text = malloc(g->out.cap);
    }
    if (!g->ids || (o->json && !g->out.text)) die("out of memory");
    double t_first = now_seconds();
    while (g->n_gen < max_new) {
        if (interrupted) { /* every token shown so far has been fed: the cache holds the answer up to here */
            g->finish = FINISH_INTERRUPTED;
            break;
        }
        int next = sampler_sample(s, scores);
        /* llama2.c's models end a story with BOS, so BOS stops generation too */
        if (!o->ignore_eos && (tokenizer_is_eos(tok, next) || next == tokenizer_bos(tok) || next == end_of_turn)) {
            g->stop = next;
            g->finish = FINISH_STOP;
            break;
        }
        g->ids[g->n_gen++] = next;
        size_t len;
        const char *piece = tokenizer_decode(tok, prev, next, &len);
        if (skip_space) {
            while (len > 0 && *piece == ' ') piece++, len--;
            skip_space = len == 0;
        }
        text_emit(&g->out, piece, len, !o->json);
        prev = next;
        if (g->n_gen == 1) t_first = now_seconds();
        if (g->n_gen == max_new) {
            g->unfed = next;
            break;
        }
        scores = st.step(st.self, next);
    }
    g->decode_tps = g->n_gen > 1 ? (g->n_gen - 1) / (now_seconds() - t_first) : 0;
}

static const float *sequence_step(void *self, int token) {
    Engine *e = self;
    return feed(e, &token, 1);
}

/* Feeds the prompt after whatever the sequence already holds, then
   generates until the -n limit or a full context (the last token is printed
   but never fed). */
static void generate_sequence(Engine *e, Sampler *s, const int *prompt, int n_prompt, int end_of_turn, int skip_space,
                              const Options *o, Generation *g) {
    int room = e->ctx_len - (e->seq.n_past + n_prompt) + 1, max_new = room;
    if (o->steps >= 0 && o->steps < max_new) max_new = o->steps;
    double t0 = now_seconds();
    e->seq.rope_len = e->seq.n_past + n_prompt; /* dynamic NTK: the prompt is rotated for its whole length */
    feed(e, prompt, n_prompt);
    double t1 = now_seconds();
    generate(e->tokenizer, s, e->ctx->logits, prompt[n_prompt - 1], max_new, (Stepper){sequence_step, e}, end_of_turn,
             skip_space, o, g);
    if (g->finish == FINISH_LENGTH && (o->steps < 0 || o->steps > room)) g->finish = FINISH_CONTEXT;
    g->prefill_tps = n_prompt / (t1 - t0);
}

/* Ends an answer: the newline after streamed text, or the --json object;
   then the statistics line on stderr. */
static void report(Generation *g, int n_prompt, const char *extra_json, const Options *o) {
    if (o->json) {
        printf("{\"text\": ");
        print_json_string(stdout, g->out.text ? g->out.text : "", g->out.len);
        printf(", \"ids\": [");
        for (int i = 0; i < g->n_gen; i++) printf(i ? ", %d" : "%d", g->ids[i]);
        printf("], \"prompt_tokens\": %d, \"generated_tokens\": %d, \"finish_reason\": \"%s\", \"seed\": %llu, "
               "\"prefill_tok_s\": %.2f, \"decode_tok_s\": %.2f%s%s}\n", n_prompt, g->n_gen, finish_json[g->finish], o->seed,
               g->prefill_tps, g->decode_tps, extra_json ? ", " : "", extra_json ? extra_json : "");
    } else {
        text_flush(&g->out);
        printf("\n");
    }
    fflush(stdout);
    fprintf(stderr, "prompt: %d tokens, %.2f tok/s | generated: %d tokens, %.2f tok/s | stopped: %s\n", n_prompt,
            g->prefill_tps, g->n_gen, g->decode_tps, finish_words[g->finish]);
}

static void generation_free(Generation *g) {
    free(g->out.text);
    free(g->ids);
}

static void run_generate(Engine *e, const int *prompt, int n_prompt, const Options *o) {
    Sampler s;
    Generation g;
    sampler_start(&s, e->model.cfg.vocab_size, o);
    generate_sequence(e, &s, prompt, n_prompt, -1, 0, o, &g);
    report(&g, n_prompt, NULL, o);
    generation_free(&g);
    sampler_free(&s);
}

/* The context for ctx_len tokens (--ctx or the model's), and the sequence
   unless NBCE makes its own rows. */
static void engine_start(Engine *e, const Options *o) {
    char err[512];
    int batch = o->ppl ? (e->ctx_len < 256 ? e->ctx_len : 256) : (e->ctx_len < 512 && !o->nbce_dir ? e->ctx_len : 512);
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
    e->ctx = context_new(&e->model, e->ctx_len, batch, o->ppl || o->nbce_dir ? batch : 1, o->threads, &pos, err, sizeof err);
    if (!e->ctx) die("%s", err);
    e->ctx->kv_type = o->kv_type;
    int made = o->nbce_dir ? 0 : sequence_init(&e->seq, e->ctx, e->ctx_len, err, sizeof err);
    if (made == -2) die("%s; use --ctx N for a shorter context", err); /* the default is the model's trained length */
    if (made) die("%s", err);
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
        warn("the vocabulary has no '%s' token: answers end only at end-of-sequence", f->eot);
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

/* How many ids len bytes of text may take (tokenizer_max_ids: NFC can make
   text three times longer), beside `held` ids a buffer holds already; what
   names the text if the count would not fit an int. */
static int id_room(size_t len, int held, const char *what) {
    size_t most = tokenizer_max_ids(len);
    if (most > (size_t)(INT_MAX - held)) die("%s is too long to tokenize", what);
    return (int)most;
}

/* Tokenizes a rendering: its special tokens parsed, no BOS added (the
   template writes it where it belongs). Appends to ids[*n..]. */
static void chat_tokenize(const Tokenizer *t, const Str *text, int **ids, int *n, int *cap) {
    int need = *n + id_room(text->len, *n, "the chat");
    if (need > *cap) {
        *cap = need;
        *ids = realloc(*ids, (size_t)need * sizeof(int));
        if (!*ids) die("out of memory");
    }
    int k = tokenizer_encode_ex(t, text->s ? text->s : "", text->len, 0, 1, *ids + *n, *cap - *n);
    if (k < 0) die("cannot tokenize the chat");
    *n += k;
}

static void note_interrupt(int sig) {
    (void)sig;
    interrupted = 1;
}

/* Ctrl-C from now on stops an answer or ends the chat, unless the shell that
   started us set SIGINT to be ignored. SA_RESTART: a read or write that it
   comes in the middle of carries on (a write to a terminal held up by flow
   control would otherwise lose text); the prompt waits in pselect, which a
   handled signal always interrupts. */
static void catch_interrupt(void) {
    struct sigaction action, before;
    if (sigaction(SIGINT, NULL, &before) == 0 && before.sa_handler == SIG_IGN) return;
    memset(&action, 0, sizeof action);
    action.sa_handler = note_interrupt;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGINT, &action, NULL);
}

/* Waits until fd has something to read; 0 then, -1 if Ctrl-C came first.
   SIGINT is let through only inside pselect, so one that comes just before
   the wait is seen rather than left for the next key. */
static int wait_for_input(int fd) {
    sigset_t sigint, outside, inside;
    sigemptyset(&sigint);
    sigaddset(&sigint, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigint, &outside);
    inside = outside;
    sigdelset(&inside, SIGINT);
    int ready = 0;
    while (!interrupted && ready <= 0) {
        fd_set fds;
        FD_ZERO(&fds);
        FD_SET(fd, &fds);
        ready = pselect(fd + 1, &fds, NULL, NULL, NULL, &inside);
        if (ready < 0 && errno != EINTR) die("cannot read standard input: %s", strerror(errno));
    }
    pthread_sigmask(SIG_SETMASK, &outside, NULL);
    return interrupted ? -1 : 0;
}

/* The terminal a chat reads its messages from. It is read with read(2) into
   buf, not through stdio, so that every wait for input is in wait_for_input:
   stdio could hold a line already read while pselect waits for more. */
typedef struct {
    char *buf;
    size_t used, cap; /* bytes in buf, its size */
    size_t taken;     /* the first `taken` bytes: the line returned last time, dropped on the next call */
} Terminal;

/* The next message typed at the terminal, after a "> " prompt: one line,
   without its line ending. An empty line is passed over and the prompt comes
   again, as in llama-cli. NULL when the chat ends here: at the end of input
   (Ctrl-D) or on Ctrl-C, each said on stderr. */
static char *read_message(Terminal *t, size_t *len) {
    const char *ended = NULL;
    fputs("> ", stderr);
    fflush(stderr);
    for (;;) {
        if (t->taken) memmove(t->buf, t->buf + t->taken, t->used - t->taken);
        t->used -= t->taken;
        t->taken = 0;
        char *end = t->used ? memchr(t->buf, '\n', t->used) : NULL;
        if (end) {
            t->taken = (size_t)(end - t->buf) + 1;
        } else {
            if (t->used + 1 >= t->cap) {
                size_t cap = t->cap ? 2 * t->cap : 4096;
                char *grown = realloc(t->buf, cap);
                if (!grown) die("out of memory");
                t->buf = grown;
                t->cap = cap;
            }
            if (wait_for_input(fileno(stdin)) < 0) {
                ended = "interrupted";
                break;
            }
            ssize_t got = read(fileno(stdin), t->buf + t->used, t->cap - t->used - 1);
            if (got < 0) {
                if (errno != EINTR && errno != EAGAIN) die("cannot read standard input: %s", strerror(errno));
                continue;
            }
            if (got > 0) {
                t->used += (size_t)got;
                continue;
            }
            if (t->used == 0) {
                ended = "end of input";
                break;
            }
            end = t->buf + t->used; /* the end of input after text (Ctrl-D twice) ends its line */
            t->taken = t->used;
        }
        size_t n = (size_t)(end - t->buf);
        while (n > 0 && t->buf[n - 1] == '\r') n--;
        if (n > 0) {
            t->buf[n] = '\0';
            *len = n;
            return t->buf;
        }
        fputs("> ", stderr);
        fflush(stderr);
    }
    fprintf(stderr, "\nchat: %s; the conversation ends\n", ended);
    return NULL;
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
    int interactive = isatty(fileno(stdin)) && !o->tokenize && !(o->prompt_file && !strcmp(o->prompt_file, "-"));
    Terminal terminal = {0};
    int history_ends_with_user = c.n > 0 && c.msg[c.n - 1].role == ROLE_USER;
    if (interactive) catch_interrupt();
    if (o->prompt || o->prompt_file) {
        size_t len = 0;
        char *text = o->prompt_file ? read_file(o->prompt_file, "prompt file", &len) : NULL;
        conversation_add(&c, ROLE_USER, text ? text : o->prompt, text ? len : strlen(o->prompt));
        free(text);
    } else if (!history_ends_with_user) {
        size_t len = 0;
        if (interactive) {
            char *line = read_message(&terminal, &len);
            if (!line) goto done;
            conversation_add(&c, ROLE_USER, line, len);
        } else if (!o->tokenize || !isatty(fileno(stdin))) { /* the message is all of stdin */
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
    /* The worker threads start with SIGINT blocked: Ctrl-C then always goes
       to this thread, the one that waits at the prompt. */
    sigset_t sigint, mask;
    sigemptyset(&sigint);
    sigaddset(&sigint, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigint, &mask);
    engine_start(e, o);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    Sampler s;
    sampler_start(&s, e->model.cfg.vocab_size, o);
    for (int turn = 1;; turn++) {
        if (o->verbose)
            fprintf(stderr, "chat: turn %d feeds %d new tokens after %d in the cache (%s formatter)\n", turn, n,
                    e->seq.n_past, chat_family_names[f.family]);
        Generation g;
        generate_sequence(e, &s, ids, n, f.eot_id, 1, o, &g);
        interrupted = 0; /* a Ctrl-C during the answer has stopped it; one from here on ends the chat */
        report(&g, n, NULL, o);
        int full = e->seq.n_past >= e->ctx_len && g.unfed >= 0;
        /* What closes the answer in the cache: the end-of-turn token the model
           sampled, or (cut short by -n or Ctrl-C, or ended by another token)
           the template's. */
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
        char *line = read_message(&terminal, &len);
        if (!line) break;
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
    free(terminal.buf);
    conversation_free(&c);
    chat_format_free(&f);
}

/* ---------------------------------------------------------------------------
 * NBCE over a folder of documents (docs/NBCE.md).
 *
 * Every regular file under the folder, in byte-wise order of its path
 * relative to the folder, is a document. A document too long to share a
 * row with the question and the answer's fixed room (a quarter of the
 * context, at most 256 tokens, whatever -n is) is cut into consecutive
 * chunks: at blank lines, else at sentence ends, else at line ends, else
 * between words, else between characters. Each chunk is one context with
 * one row; row 0 has none. All rows are prefilled together, then every
 * step runs them forward as one batch and pools their predictions (model.h's
 * nbce_feed).
 *
 * A row's KV cache serves as long as it can: the next question of the same
 * run keeps the longest run of leading tokens the new row shares with the
 * old one, and with --cache-dir the part of a row before the question is
 * saved in a file named by the model and those tokens, for later runs.
 */

/* NBCE's next question: one line from standard input, without its newline;
   NULL at EOF. On a terminal it asks with "> ". */
static char *read_question(size_t *len) {
    static char *line;
    static size_t cap;
    int terminal = isatty(STDIN_FILENO);
    if (terminal) {
        fputs("> ", stderr);
        fflush(stderr);
    }
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        if (terminal) fputc('\n', stderr);
        free(line);
        line = NULL;
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
    line[n] = '\0';
    *len = (size_t)n;
    return line;
}

typedef struct {
    char *path;                /* relative to the folder */
    char *text;                /* well-formed UTF-8, trailing whitespace dropped */
    size_t len;
} Document;

typedef struct {
    int doc, chunk;            /* the document and the chunk's number in it */
    size_t start, len;         /* the chunk's bytes in the document's text */
} Chunk;

typedef struct {
    int *ids, n;               /* the row's prompt */
    int prefix;                /* leading ids that do not depend on the question */
    Sequence seq;              /* capacity n + the answer budget */
    int cache_file_damaged;    /* its --cache-dir file was unusable: write it again */
} Row;

/* How rows are written: the template, wrapped in the model's chat format
   when it has one and no --template was given. */
typedef struct {
    const char *tpl;
    int chat;
    ChatFormat format;
    const char *system;
} RowFormat;

/* a/b, with one slash between them when a already ends with one ("kv/"). */
static char *path_join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 2);
    if (!p) die("out of memory");
    memcpy(p, a, la);
    if (!la || a[la - 1] != '/') p[la++] = '/';
    memcpy(p + la, b, lb + 1);
    return p;
}

typedef struct {
    char **paths;
    int n, cap;
} PathList;

/* The regular files under root/rel, recursively; folders reached through a
   symbolic link are not entered (they could loop). */
static void collect_files(const char *root, const char *rel, PathList *list, int depth) {
    char *dir = rel ? path_join(root, rel) : strdup(root);
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d) die("cannot open document folder '%s': %s", dir ? dir : root, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char *r = rel ? path_join(rel, de->d_name) : strdup(de->d_name), *full = path_join(root, r);
        struct stat st, lst;
        if (!r) die("out of memory");
        if (stat(full, &st)) {
            warn("skipping '%s': %s", r, strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            if (!lstat(full, &lst) && S_ISLNK(lst.st_mode)) warn("not entering the linked folder '%s'", r);
            else if (depth >= 64) die("document folder '%s' is nested more than 64 deep", full);
            else collect_files(root, r, list, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            if (list->n == list->cap) {
                list->cap = list->cap ? 2 * list->cap : 64;
                list->paths = realloc(list->paths, (size_t)list->cap * sizeof *list->paths);
                if (!list->paths) die("out of memory");
            }
            list->paths[list->n++] = r;
            r = NULL;
        }
        free(r);
        free(full);
    }
    closedir(d);
    free(dir);
}

static int by_path(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Reads one document. Returns 0 (with a warning) for one that is not text
   or is empty; bytes that are not UTF-8 in a text become U+FFFD. */
static int load_document(const char *root, char *rel, Document *doc) {
    char *full = path_join(root, rel);
    size_t len;
    char *raw = read_file(full, "document", &len);
    free(full);
    size_t bad = 0;
    for (size_t i = 0; i < len;) {
        size_t l = utf8_char_len((const unsigned char *)raw + i, len - i);
        bad += l == 1 && (unsigned char)raw[i] >= 0x80;
        if (raw[i] == '\0') bad = len; /* NUL: binary */
        i += l;
    }
    if (len && bad * 10 > len) { /* more than one byte in ten is not UTF-8 */
        warn("skipping '%s': not a text file", rel);
        free(raw);
        return 0;
    }
    char *text = malloc(len + 2 * bad + 1), *w = text;
    if (!text) die("out of memory");
    for (size_t i = 0; i < len;) {
        size_t l = utf8_char_len((const unsigned char *)raw + i, len - i);
        if (l == 1 && (unsigned char)raw[i] >= 0x80) memcpy(w, "\xEF\xBF\xBD", 3), w += 3;
        else memcpy(w, raw + i, l), w += l;
        i += l;
    }
    free(raw);
    while (w > text && is_space(w[-1])) w--;
    if (w == text) {
        warn("skipping '%s': empty", rel);
        free(text);
        return 0;
    }
    *doc = (Document){rel, text, (size_t)(w - text)};
    return 1;
}

static Document *load_documents(const char *dir, int *n_docs) {
    struct stat st;
    if (stat(dir, &st)) die("cannot open document folder '%s': %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) die("--nbce needs a folder: '%s' is not one", dir);
    PathList list = {0};
    collect_files(dir, NULL, &list, 0);
    if (list.n) qsort(list.paths, (size_t)list.n, sizeof *list.paths, by_path);
    Document *docs = malloc((size_t)(list.n ? list.n : 1) * sizeof *docs);
    if (!docs) die("out of memory");
    int n = 0;
    for (int i = 0; i < list.n; i++)
        if (load_document(dir, list.paths[i], &docs[n])) n++;
        else free(list.paths[i]);
    free(list.paths);
    if (n == 0) {
        free(docs);
        die("no documents in '%s' (%s)", dir, list.n ? "every file was empty or not text" : "it holds no files");
    }
    *n_docs = n;
    return docs;
}

/* ---- chunks ---- */

typedef struct {
    const Tokenizer *tok;
    const char *text;          /* the document */
    int max;                   /* most tokens in a chunk */
    int *buf, cap;             /* tokenizer output */
    Chunk *chunks;
    int n, chunks_cap, doc;
} Chunker;

static int count_tokens(Chunker *k, size_t start, size_t end) {
    int most = id_room(end - start, 0, "a document");
    if (most > k->cap) {
        k->cap = most;
        k->buf = realloc(k->buf, (size_t)k->cap * sizeof(int));
        if (!k->buf) die("out of memory");
    }
    int n = tokenizer_encode_ex(k->tok, k->text + start, end - start, 0, 1, k->buf, k->cap);
    if (n < 0) die("cannot tokenize a document");
    return n;
}

/* Closing quotes, brackets and emphasis that may follow a sentence's end:
   their length at s, or 0. */
static size_t closer_len(const char *s, size_t avail) {
    if (avail && strchr("\"')]_*", *s) && *s) return 1;
    if (avail >= 3 && (!memcmp(s, "\xE2\x80\x9D", 3) || !memcmp(s, "\xE2\x80\x99", 3))) return 3; /* ” ’ */
    return 0;
}

enum { CUT_PARAGRAPH, CUT_SENTENCE, CUT_LINE, CUT_WORD, CUT_CHARACTER };

/* The end of the piece that starts at `at` when cutting at `level`: after a
   blank line, a sentence, a line, a word or a character. Whitespace after
   the cut stays with the piece before it. */
static size_t piece_end(const char *s, size_t at, size_t end, int level) {
    if (level == CUT_CHARACTER) return at + utf8_char_len((const unsigned char *)s + at, end - at);
    for (size_t i = at; i < end; i++) {
        size_t cut = 0;
        if (level == CUT_PARAGRAPH && s[i] == '\n') {
            size_t j = i + 1;
            int lines = 1;
            while (j < end && is_space(s[j])) lines += s[j++] == '\n';
            if (lines >= 2) cut = j;
        } else if (level == CUT_SENTENCE && (s[i] == '.' || s[i] == '!' || s[i] == '?')) {
            size_t j = i + 1, l;
            while ((l = closer_len(s + j, end - j))) j += l;
            if (j == end || is_space(s[j])) cut = j;
        } else if (level == CUT_SENTENCE && end - i >= 3 &&
                   (!memcmp(s + i, "\xE3\x80\x82", 3) || !memcmp(s + i, "\xEF\xBC\x81", 3) || !memcmp(s + i, "\xEF\xBC\x9F", 3))) {
            cut = i + 3; /* 。！？ */
        } else if (level == CUT_LINE && s[i] == '\n') {
            cut = i + 1;
        } else if (level == CUT_WORD && is_space(s[i]) && i > at && !is_space(s[i - 1])) {
            cut = i;
        }
        if (cut) {
            while (cut < end && is_space(s[cut])) cut++;
            return cut;
        }
    }
    return end;
}

static void add_chunk(Chunker *k, size_t start, size_t end) {
    while (start < end && is_space(k->text[start])) start++;
    while (end > start && is_space(k->text[end - 1])) end--;
    if (start == end) return;
    if (k->n == k->chunks_cap) {
        k->chunks_cap = k->chunks_cap ? 2 * k->chunks_cap : 16;
        k->chunks = realloc(k->chunks, (size_t)k->chunks_cap * sizeof *k->chunks);
        if (!k->chunks) die("out of memory");
    }
    k->chunks[k->n++] = (Chunk){k->doc, 0, start, end - start};
}

/* Extends a chunk ending at j with whole pieces of `level` while they fit
   in target tokens (est counts them, piece by piece). A chunk that is not
   yet half full when the next piece does not fit takes what fits of that
   piece at the next level, so a long paragraph after a short one (or a
   paragraph longer than a chunk) is cut at a sentence, a word or a
   character. */
static size_t fill_chunk(Chunker *k, size_t j, size_t end, int level, int *est, int target) {
    while (j < end) {
        size_t next = piece_end(k->text, j, end, level);
        int c = count_tokens(k, j, next);
        if (*est + c <= target) {
            *est += c;
            j = next;
            continue;
        }
        if (level < CUT_CHARACTER && *est < target / 2) j = fill_chunk(k, j, next, level + 1, est, target);
        break;
    }
    return j;
}

/* Cuts [0, end) into chunks of at most k->max tokens. The pieces are
   counted one by one, so a chunk is checked whole and, if it came out longer
   (tokens can merge or split across pieces), cut again a little shorter. */
static void split_text(Chunker *k, size_t end) {
    for (size_t i = 0; i < end;) {
        for (int target = k->max;;) {
            int est = 0;
            size_t j = fill_chunk(k, i, end, CUT_PARAGRAPH, &est, target);
            if (j == i) j = i + utf8_char_len((const unsigned char *)k->text + i, end - i); /* never nothing */
            size_t a = i, b = j; /* the chunk as it will be cut */
            while (a < b && is_space(k->text[a])) a++;
            while (b > a && is_space(k->text[b - 1])) b--;
            int exact = count_tokens(k, a, b);
            if (exact <= k->max || target <= 1) {
                add_chunk(k, i, j);
                i = j;
                break;
            }
            target -= exact - k->max;
        }
    }
}

/* ---- rows ---- */

/* The row's text: the template with the context and the question (up to
   where the question goes, with head_only), in the chat format if any. */
static void render_row(Str *out, const RowFormat *rf, const char *ctx, size_t ctx_len, const char *q, size_t q_len,
                       int head_only) {
    Str content = {0};
    for (const char *t = rf->tpl; *t;) {
        if (!strncmp(t, "{context}", 9)) {
            str_add(&content, ctx, ctx_len);
            t += 9;
        } else if (!strncmp(t, "{question}", 10)) {
            if (head_only) break;
            str_add(&content, q, q_len);
            t += 10;
        } else {
            str_add(&content, t++, 1);
        }
    }
    out->len = 0;
    if (!rf->chat) {
        str_add(out, content.s ? content.s : "", content.len);
    } else {
        ChatMessage m[2];
        int n = 0;
        if (rf->system) m[n++] = (ChatMessage){ROLE_SYSTEM, (char *)rf->system, strlen(rf->system)};
        m[n++] = (ChatMessage){ROLE_USER, content.s ? content.s : "", content.len};
        Conversation c = {m, n, n};
        chat_render(out, &rf->format, m, n, 0, chat_system_at(&rf->format, &c), 1);
    }
    free(content.s);
}

/* Tokenizes a row as a prompt: one string, special tokens parsed, BOS in
   front as for a prompt (a chat rendering writes its own). */
static int tokenize_row(const Tokenizer *t, const RowFormat *rf, const Str *text, int **ids) {
    int cap = id_room(text->len, 0, "an NBCE row");
    *ids = malloc((size_t)cap * sizeof(int));
    if (!*ids) die("out of memory");
    int n = tokenizer_encode_ex(t, text->s ? text->s : "", text->len, !rf->chat && tokenizer_add_bos(t), 1, *ids, cap);
    if (n < 0) die("cannot tokenize an NBCE row");
    if (n == 0) die("an NBCE row is empty and the model has no beginning-of-sequence token");
    return n;
}

static int common_prefix(const int *a, int na, const int *b, int nb) {
    int i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

/* Row r's prompt and the part of it that does not depend on the question. */
static void make_row(const Engine *e, const RowFormat *rf, const char *ctx, size_t ctx_len, const char *q, size_t q_len,
                     Row *row) {
    Str text = {0};
    int *head;
    render_row(&text, rf, ctx, ctx_len, q, q_len, 0);
    row->n = tokenize_row(e->tokenizer, rf, &text, &row->ids);
    render_row(&text, rf, ctx, ctx_len, q, q_len, 1);
    int n_head = tokenize_row(e->tokenizer, rf, &text, &head);
    row->prefix = common_prefix(row->ids, row->n, head, n_head);
    free(head);
    free(text.s);
}

static void rows_free(Row *rows, int n) {
    for (int r = 0; r < n; r++) {
        free(rows[r].ids);
        sequence_free(&rows[r].seq);
    }
    free(rows);
}

/* ---- KV cache files: "RUNK", version, model digest, n, checksum, ids[n],
   then the KV of positions [0, n) as sequence_file_io writes it. The
   checksum is FNV-1a (hash_bytes) over the ids and the KV, so a file that
   was cut short or changed is told apart from a good one. ---- */

#define KV_FILE_VERSION 2
#define KV_FILE_CHECKSUM_AT 20 /* after the magic, version, digest and n */

/* The file for row's prefix (malloc'd): named by the model and its tokens. */
static char *kv_file_path(const char *dir, uint64_t digest, const Row *row) {
    char name[32];
    snprintf(name, sizeof name, "%016llx.kv", (unsigned long long)hash_bytes(digest, row->ids, (size_t)row->prefix * sizeof(int)));
    return path_join(dir, name);
}

/* Loads the saved prefix of row into its sequence; returns the positions
   loaded: 0 when there is no such file, and 0 with a warning (and the row
   marked for kv_file_save to write it again) when the file is short,
   damaged, of another version or not this row's. */
static int kv_file_load(Engine *e, Row *row, const char *dir, uint64_t digest) {
    char *path = kv_file_path(dir, digest, row);
    FILE *f = fopen(path, "rb");
    if (!f) {
        free(path);
        return 0;
    }
    char magic[4];
    uint32_t version;
    uint64_t d, stored, checksum = FNV_OFFSET;
    int32_t n;
    int ok = fread(magic, 4, 1, f) == 1 && !memcmp(magic, "RUNK", 4) && fread(&version, 4, 1, f) == 1 &&
             version == KV_FILE_VERSION && fread(&d, 8, 1, f) == 1 && d == digest && fread(&n, 4, 1, f) == 1 &&
             n == row->prefix && fread(&stored, 8, 1, f) == 1;
    for (int i = 0; ok && i < n; i++) {
        int32_t id;
        ok = fread(&id, 4, 1, f) == 1 && id == row->ids[i];
        checksum = hash_bytes(checksum, &id, sizeof id);
    }
    ok = ok && !sequence_file_io(&row->seq, &e->model, n, f, 0, &checksum) && checksum == stored && fgetc(f) == EOF;
    fclose(f);
    if (!ok) {
        warn("the KV cache file '%s' is damaged or does not match this row; computing it again", path);
        row->seq.n_past = 0;
        row->cache_file_damaged = 1;
    }
    free(path);
    return ok ? n : 0;
}

/* Saves row's prefix, unless its file is there already (and was not found
   damaged): written to a temporary file in the same folder and renamed, so
   a run sharing the folder never reads a half-written file. Returns 0, or
   -1 with a warning. */
static int kv_file_save(Engine *e, Row *row, const char *dir, uint64_t digest) {
    char *path = kv_file_path(dir, digest, row);
    if (!row->cache_file_damaged && !access(path, F_OK)) {
        free(path);
        return 0;
    }
    int fd = tempfile_create(path);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (fd >= 0 && !f) close(fd);
    uint32_t version = KV_FILE_VERSION;
    int32_t n = row->prefix;
    uint64_t checksum = FNV_OFFSET;
    int ok = f && fwrite("RUNK", 4, 1, f) == 1 && fwrite(&version, 4, 1, f) == 1 && fwrite(&digest, 8, 1, f) == 1 &&
             fwrite(&n, 4, 1, f) == 1 && fwrite(&checksum, 8, 1, f) == 1; /* a placeholder until the payload is written */
    for (int i = 0; ok && i < n; i++) {
        int32_t id = row->ids[i];
        ok = fwrite(&id, 4, 1, f) == 1;
        checksum = hash_bytes(checksum, &id, sizeof id);
    }
    ok = ok && !sequence_file_io(&row->seq, &e->model, n, f, 1, &checksum);
    ok = ok && !fseek(f, KV_FILE_CHECKSUM_AT, SEEK_SET) && fwrite(&checksum, 8, 1, f) == 1;
    if (f && fclose(f)) ok = 0;
    if (ok && tempfile_commit(path)) ok = 0;
    if (!ok) {
        warn("cannot write the KV cache file '%s': %s", path, strerror(errno));
        tempfile_discard();
    }
    free(path);
    return ok ? 0 : -1;
}

/* ---- memory ---- */


static const char *mib(double bytes, char *buf, size_t cap) {
    if (bytes >= 1024.0 * 1048576) snprintf(buf, cap, "%.2f GiB", bytes / (1024.0 * 1048576));
    else snprintf(buf, cap, "%.1f MiB", bytes / 1048576);
    return buf;
}

/* ---- one question ---- */

typedef struct {
    Engine *e;
    Nbce *nb;
    Sequence **seqs;           /* [rows] */
    const int **tokens;        /* [rows], each pointing at token */
    int *ones;                 /* [rows] */
    int n_rows, token;
    float *z;                  /* [vocab] */
    int *chosen, n_chosen;     /* the row chosen for each generated token */
    int is_tty, last_done;
    double t0;
} NbceRun;

static const float *nbce_step(void *self, int token) {
    NbceRun *r = self;
    r->token = token;
    int k = nbce_feed(r->nb, r->e->ctx, r->seqs, r->tokens, r->ones, r->n_rows, r->z, NULL, NULL);
    if (k < 0) die("%s", r->e->ctx->error);
    r->chosen[r->n_chosen++] = k;
    return r->z;
}

/* A line that redraws itself on a terminal; in a log, a line at each
   quarter of a long prefill. */
static void prefill_progress(void *arg, int done, int total) {
    NbceRun *r = arg;
    if (!r->is_tty && (total <= 4096 || done == total || 4LL * done / total == 4LL * r->last_done / total)) {
        r->last_done = done;
        return;
    }
    r->last_done = done;
    double dt = now_seconds() - r->t0;
    fprintf(stderr, "%snbce: prefill %d/%d tokens, %.0f tok/s%s", r->is_tty ? "\r" : "", done, total,
            dt > 0 ? done / dt : 0, r->is_tty ? "" : "\n");
    fflush(stderr);
}

/* Chunks every document for rows of at most row_max tokens and makes the
   rows; a row that still comes out too long has its document cut finer. */
static Row *build_rows(const Engine *e, const RowFormat *rf, const Document *docs, int n_docs, const char *q, size_t q_len,
                       int row_max, int chunk_max, Chunk **chunks_out, int *n_rows) {
    Chunker k = {.tok = e->tokenizer};
    Row *rows = calloc(1, sizeof *rows);
    if (!rows) die("out of memory");
    make_row(e, rf, "", 0, q, q_len, &rows[0]);
    int n = 1;
    for (int d = 0; d < n_docs; d++) {
        k.text = docs[d].text;
        k.doc = d;
        k.max = chunk_max;
        for (;;) {
            int first = k.n;
            if (count_tokens(&k, 0, docs[d].len) <= k.max) { /* whole, leading whitespace and all */
                if (k.n == k.chunks_cap) {
                    k.chunks_cap = k.chunks_cap ? 2 * k.chunks_cap : 16;
                    k.chunks = realloc(k.chunks, (size_t)k.chunks_cap * sizeof *k.chunks);
                    if (!k.chunks) die("out of memory");
                }
                k.chunks[k.n++] = (Chunk){d, 0, 0, docs[d].len};
            } else {
                split_text(&k, docs[d].len);
            }
            rows = realloc(rows, (size_t)(n + k.n - first) * sizeof *rows);
            if (!rows) die("out of memory");
            int over = 0;
            for (int c = first; c < k.n; c++) {
                k.chunks[c].chunk = c - first;
                Row *row = &rows[n + c - first];
                memset(row, 0, sizeof *row);
                make_row(e, rf, docs[d].text + k.chunks[c].start, k.chunks[c].len, q, q_len, row);
                if (row->n - row_max > over) over = row->n - row_max;
            }
            if (!over) {
                n += k.n - first;
                break;
            }
            for (int c = first; c < k.n; c++) free(rows[n + c - first].ids);
            k.n = first;
            k.max -= over;
            if (k.max < 1) die("cannot cut document '%s' into chunks that fit in a row", docs[d].path);
        }
    }
    free(k.buf);
    *chunks_out = k.chunks;
    *n_rows = n;
    return rows;
}

/* Answers one question; the rows of the last answer come in (old) and the
   new ones go out, for the next question to reuse. */
static Row *nbce_answer(Engine *e, Nbce *nb, Sampler *s, const RowFormat *rf, const Document *docs, int n_docs,
                        const char *q, size_t q_len, Row *old, int n_old, int *n_out, uint64_t digest, const Options *o) {
    int ctx_len = e->ctx_len;
    /* Every row keeps the same room for the answer, whatever -n asks for, so
       the chunks (and with them the answer) do not depend on -n: with -n 8
       the answer is the first 8 tokens of the -n 16 one. */
    int answer_room = ctx_len / 4 < 256 ? ctx_len / 4 : 256;
    int budget = o->steps >= 0 ? o->steps : answer_room;
    if (budget > answer_room)
        die("-n %d does not fit in the %d tokens every NBCE row keeps for the answer (a quarter of the %d-token context, "
            "at most 256); lower -n%s", budget, answer_room, ctx_len, answer_room < 256 ? " or raise --ctx" : "");
    /* Chunks leave room for the question rounded up to 32 tokens, so a
       follow-up question of about the same length gets the same chunks and
       their caches serve it. */
    Row probe = {0};
    make_row(e, rf, "", 0, q, q_len, &probe);
    int overhead = (probe.n + 4 + 31) / 32 * 32, row_max = ctx_len - answer_room;
    int chunk_max = row_max - overhead;
    if (o->nbce_chunk && o->nbce_chunk < chunk_max) chunk_max = o->nbce_chunk;
    if (chunk_max < 16)
        die("no room for documents: the question takes %d tokens and the answer %d of the %d-token context "
            "(shorten the question or raise --ctx)", probe.n, answer_room, ctx_len);
    free(probe.ids);
    Chunk *chunks;
    int n_rows;
    Row *rows = build_rows(e, rf, docs, n_docs, q, q_len, row_max, chunk_max, &chunks, &n_rows);
    *n_out = n_rows;

    if (o->tokenize) { /* the rows' ids, one line each, row 0 first */
        for (int r = 0; r < n_rows; r++) {
            printf("[");
            for (int i = 0; i < rows[r].n; i++) printf(i ? ", %d" : "%d", rows[r].ids[i]);
            printf("]\n");
        }
        free(chunks);
        return rows;
    }

    if (o->verbose)
        for (int r = 1; r < n_rows; r++) {
            const Chunk *c = &chunks[r - 1];
            fprintf(stderr, "nbce: context %d: %s, chunk %d, bytes %zu-%zu, row of %d tokens (%d before the question)\n",
                    r - 1, docs[c->doc].path, c->chunk, c->start, c->start + c->len, rows[r].n, rows[r].prefix);
        }

    /* Memory: every row's cache for its prompt and the answer. */
    size_t per_token = context_kv_bytes_per_token(e->ctx);
    double need = 0, held = 0;
    long long prompt_tokens = 0;
    for (int r = 0; r < n_rows; r++) need += (double)(rows[r].n + budget) * per_token, prompt_tokens += rows[r].n;
    for (int r = 0; r < n_old; r++) held += (double)old[r].seq.capacity * per_token;
    double limit = o->mem ? o->mem : available_memory() + held;
    char b1[32], b2[32];
    if (need > limit) {
        char why[512];
        snprintf(why, sizeof why, "the %d NBCE rows (%lld prompt tokens, %d more each for the answer) need %s of KV cache at "
                 "%zu bytes per token, more than the %s available%s; use fewer or shorter contexts (fewer documents, or "
                 "--nbce-chunk N), a smaller answer budget (-n)%s", n_rows, prompt_tokens, budget, mib(need, b1, sizeof b1),
                 per_token, mib(limit, b2, sizeof b2), o->mem ? " (--mem)" : "",
                 o->kv_type == TYPE_F32 ? " or an f16 cache (--kv f16)" : "");
        /* given back first: after the last use of `rows` the compiler may keep no pointer to them, and
           LeakSanitizer then reports the exit as a leak */
        rows_free(rows, n_rows);
        free(chunks);
        die("%s", why);
    }
    fprintf(stderr, "nbce: %d documents, %d contexts + the unconditional row, %lld prompt tokens; KV cache %s "
            "(%zu bytes per token, %s available)\n", n_docs, n_rows - 1, prompt_tokens, mib(need, b1, sizeof b1), per_token,
            mib(limit, b2, sizeof b2));

    /* Reuse: each new row takes the old row that shares the most leading
       tokens with it. Dynamic NTK rotates a prompt for its length, so its
       caches never carry over. */
    int reuse_ok = e->model.cfg.rope_scaling != ROPE_SCALING_DYNAMIC;
    long long reused = 0;
    char err[512];
    for (int r = 0; r < n_rows; r++) {
        Row *row = &rows[r];
        int best = -1, best_len = 0;
        for (int k = 0; reuse_ok && k < n_old; k++) {
            if (!old[k].seq.k) continue;
            int c = common_prefix(row->ids, row->n, old[k].ids, old[k].n);
            if (c > old[k].seq.n_past) c = old[k].seq.n_past;
            if (c > best_len) best = k, best_len = c;
        }
        if (best_len > row->n - 1) best_len = row->n - 1; /* the last token is fed again for its logits */
        if (best >= 0 && best_len > 0 && old[best].seq.capacity >= row->n + budget) {
            row->seq = old[best].seq;
            memset(&old[best].seq, 0, sizeof old[best].seq);
            row->seq.n_past = best_len;
        } else {
            if (sequence_init(&row->seq, e->ctx, row->n + budget, err, sizeof err)) die("%s", err);
            if (best >= 0 && best_len > 0 && sequence_copy(&row->seq, &old[best].seq, &e->model, best_len))
                die("cannot copy a KV cache");
        }
        if (reuse_ok && o->cache_dir && row->seq.n_past < row->prefix && row->prefix < row->n) {
            int saved = row->seq.n_past;
            if (!kv_file_load(e, row, o->cache_dir, digest)) row->seq.n_past = saved;
        }
        row->seq.rope_len = row->n;
        reused += row->seq.n_past;
    }
    rows_free(old, n_old);

    /* Prefill all rows together, then the answer. */
    NbceRun run = {.e = e, .nb = nb, .n_rows = n_rows, .is_tty = isatty(STDERR_FILENO)};
    run.seqs = malloc((size_t)n_rows * sizeof *run.seqs);
    run.tokens = malloc((size_t)n_rows * sizeof *run.tokens);
    run.ones = malloc((size_t)n_rows * sizeof *run.ones);
    run.z = malloc((size_t)e->model.cfg.vocab_size * sizeof *run.z);
    run.chosen = malloc((size_t)(budget + 1) * sizeof *run.chosen);
    if (!run.seqs || !run.tokens || !run.ones || !run.z || !run.chosen) die("out of memory");
    for (int r = 0; r < n_rows; r++) {
        run.seqs[r] = &rows[r].seq;
        run.tokens[r] = rows[r].ids + rows[r].seq.n_past;
        run.ones[r] = rows[r].n - rows[r].seq.n_past;
    }
    run.t0 = now_seconds();
    int k = nbce_feed(nb, e->ctx, run.seqs, run.tokens, run.ones, n_rows, run.z, prefill_progress, &run);
    if (k < 0) die("%s", e->ctx->error);
    double t1 = now_seconds();
    long long fed = prompt_tokens - reused;
    if (run.is_tty) fputc('\r', stderr);
    fprintf(stderr, "nbce: prefilled %lld tokens in %.2f s (%.0f tok/s)%s", fed, t1 - run.t0, fed / (t1 - run.t0),
            run.is_tty ? "\033[K" : "");
    if (reused) fprintf(stderr, "; %lld more came from caches", reused);
    fputc('\n', stderr);
    if (reuse_ok && o->cache_dir) /* after one file could not be written, the others would not be either */
        for (int r = 0; r < n_rows; r++)
            if (rows[r].prefix > 1 && rows[r].prefix < rows[r].n && kv_file_save(e, &rows[r], o->cache_dir, digest)) break;

    run.chosen[run.n_chosen++] = k;
    for (int r = 0; r < n_rows; r++) run.tokens[r] = &run.token, run.ones[r] = 1;
    Generation g;
    generate(e->tokenizer, s, run.z, rows[0].ids[rows[0].n - 1], budget, (Stepper){nbce_step, &run},
             rf->chat ? rf->format.eot_id : -1, rf->chat, o, &g);
    g.prefill_tps = fed / (t1 - run.t0);

    /* Sources: the contexts whose rows chose the answer's tokens. */
    int *count = calloc((size_t)n_rows, sizeof *count);
    if (!count) die("out of memory");
    for (int i = 0; i < g.n_gen; i++)
        for (int r = 1; r < n_rows; r++) count[r] += o->pool == NBCE_MEAN || run.chosen[i] == r;
    Str js = {0};
    if (o->json) {
        char num[32];
        str_puts(&js, "\"chosen\": [");
        for (int i = 0; i < g.n_gen; i++) {
            snprintf(num, sizeof num, i ? ", %d" : "%d", run.chosen[i] - 1);
            str_puts(&js, num);
        }
        str_puts(&js, "], \"sources\": [");
        for (int r = 1, first = 1; r < n_rows; r++) {
            if (!count[r]) continue;
            const Chunk *c = &chunks[r - 1];
            /* a JSON string of the path, via the same escaping as the text */
            char *buf = NULL;
            size_t blen = 0;
            FILE *mf = open_memstream(&buf, &blen);
            if (!mf) die("out of memory");
            print_json_string(mf, docs[c->doc].path, strlen(docs[c->doc].path));
            fclose(mf);
            str_puts(&js, first ? "{\"file\": " : ", {\"file\": ");
            str_add(&js, buf, blen);
            free(buf);
            snprintf(num, sizeof num, ", \"chunk\": %d", c->chunk);
            str_puts(&js, num);
            snprintf(num, sizeof num, ", \"tokens\": %d}", count[r]);
            str_puts(&js, num);
            first = 0;
        }
        str_puts(&js, "]");
    }
    report(&g, (int)prompt_tokens, js.s, o);
    if (g.n_gen == budget && o->steps < 0)
        fprintf(stderr, "nbce: the answer reached its budget of %d tokens (-n sets it)\n", budget);
    fprintf(stderr, "sources%s:\n", o->pool == NBCE_MEAN ? " (mean pooling: every context weighs in on every token)" : "");
    for (int r = 1; r < n_rows; r++)
        if (count[r])
            fprintf(stderr, "  %s, chunk %d: %d token%s\n", docs[chunks[r - 1].doc].path, chunks[r - 1].chunk, count[r],
                    count[r] == 1 ? "" : "s");
    free(js.s);
    free(count);
    generation_free(&g);
    free(run.seqs);
    free(run.tokens);
    free(run.ones);
    free(run.z);
    free(run.chosen);
    free(chunks);
    return rows;
}

static void run_nbce(Engine *e, const Options *o) {
    int n_docs;
    Document *docs = load_documents(o->nbce_dir, &n_docs);
    RowFormat rf = {.tpl = o->row_template ? o->row_template : "{context}\n\n{question}", .system = o->system};
    if (!o->row_template) { /* the model's chat format, when it has a known one */
        size_t len = 0;
        const char *tpl = tokenizer_chat_template(e->tokenizer, &len);
        char *copy = tpl ? strndup(tpl, len) : NULL;
        int family = copy ? chat_detect(copy) : -1;
        free(copy);
        if (o->chat_template || family >= 0) {
            rf.chat = 1;
            chat_format_init(&rf.format, e->tokenizer, o->chat_template);
        } else if (tpl && len) {
            warn("the model's chat template is not a known family; NBCE rows use the plain template "
                 "(--chat-template NAME chooses a format)");
        }
    } else if (o->chat_template) {
        die("--chat-template applies to NBCE rows in the model's chat format, not with --template");
    }
    if (o->system && !rf.chat) die("--system needs a chat format (the model has none; --chat-template NAME chooses one)");
    e->ctx_len = o->ctx ? o->ctx : e->model.cfg.max_seq_len;
    engine_start(e, o);
    Nbce nb;
    char err[512];
    if (nbce_init(&nb, e->ctx, o->beta, o->eta, o->nbce_top_p, o->pool, err, sizeof err)) die("%s", err);
    uint64_t digest = model_digest(&e->model, &e->ctx->positions);
    digest = hash_bytes(digest, &e->ctx->kv_type, sizeof e->ctx->kv_type); /* the cache files hold values of this type */
    struct stat st;
    if (o->cache_dir && mkdir(o->cache_dir, 0777) && errno != EEXIST)
        die("cannot create the cache folder '%s': %s", o->cache_dir, strerror(errno));
    if (o->cache_dir && (stat(o->cache_dir, &st) || !S_ISDIR(st.st_mode)))
        die("--cache-dir needs a folder: '%s' is not one", o->cache_dir);
    Sampler s;
    sampler_start(&s, e->model.cfg.vocab_size, o);
    Row *rows = NULL;
    int n_rows = 0;
    if (o->prompt || o->prompt_file) {
        size_t len = 0;
        char *text = o->prompt_file ? read_file(o->prompt_file, "prompt file", &len) : NULL;
        const char *q = text ? text : o->prompt;
        rows = nbce_answer(e, &nb, &s, &rf, docs, n_docs, q, text ? len : strlen(q), rows, n_rows, &n_rows, digest, o);
        free(text);
    } else { /* a question per line of standard input */
        size_t len;
        char *line;
        int asked = 0;
        while ((line = read_question(&len))) {
            if (len == 0) {
                if (isatty(STDIN_FILENO)) break;
                continue;
            }
            rows = nbce_answer(e, &nb, &s, &rf, docs, n_docs, line, len, rows, n_rows, &n_rows, digest, o);
            asked++;
            if (o->tokenize) break;
        }
        if (!asked && !isatty(STDIN_FILENO)) die("--nbce needs a question: give it with -p or -f, or as lines on standard input");
    }
    rows_free(rows, n_rows);
    sampler_free(&s);
    nbce_free(&nb);
    if (rf.chat) chat_format_free(&rf.format);
    for (int d = 0; d < n_docs; d++) {
        free(docs[d].path);
        free(docs[d].text);
    }
    free(docs);
    context_free(e->ctx);
}

int main(int argc, char **argv) {
    Options o = parse_options(argc, argv);
    Engine e = {0};
    char err[512];
    if (model_load(&e.model, o.model_path, err, sizeof err)) die("%s", err);
    override_rope(&e.model.cfg, &o);
    /* Interleaved copies of the quantized matrices, where that is faster and
       they fit beside everything else; otherwise the mapped file serves. */
    if (!o.no_repack && !o.tokenize && model_repack_pays(&e.model)) {
        /* a copy only while it takes at most half of the memory left: a model
           near or above that runs from the mapped file as it is */
        double half = available_memory() / 2;
        if (model_repack(&e.model, half < (double)SIZE_MAX ? (size_t)half : SIZE_MAX) < 0)
            warn("no memory to copy the matrices into the faster layout; using them as stored");
    }
    e.tokenizer = e.model.tokenizer;
    if (o.tokenizer_path) {
        e.own_tokenizer = tokenizer_load(o.tokenizer_path, e.model.cfg.vocab_size, err, sizeof err);
        if (!e.own_tokenizer) die("%s", err);
        e.tokenizer = e.own_tokenizer;
    }
    if (!e.tokenizer) die("model '%s' has no tokenizer: pass its tokenizer.bin with -z", o.model_path);
    if (o.chat || o.nbce_dir) {
        if (o.chat) run_chat(&e, &o);
        else run_nbce(&e, &o);
        free(o.row_template);
        tokenizer_free(e.own_tokenizer);
        model_free(&e.model);
        finish_output();
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
       single tokens, as the tokenizers library does. */
    int max_ids = id_room(text_len, 0, "the prompt");
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
    finish_output();
    return 0;
}

