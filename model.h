/* model.h - the engine: model file format, weights, run state, forward pass.
 *
 * A single header in the stb style. Include it anywhere for the declarations;
 * in exactly one C file write
 *
 *     #define MODEL_IMPLEMENTATION
 *     #include "model.h"
 *
 * to compile the implementation, and link tokenizer.c, -lm and -lpthread.
 * There is no global state: a program may load several models and run many
 * sequences against each.
 *
 * The pieces, from the bottom up:
 *   Model     the mapped model file: config, tensor table, weights, tokenizer.
 *             Read-only once loaded; shared by everything that runs it.
 *   Sequence  one token stream's KV cache, allocated once for its capacity.
 *   Context   scratch buffers for a batch of tokens, the rotary speeds and the
 *             thread pool. One forward call runs a batch whose tokens may
 *             belong to different sequences (NBCE's rows), so the weights are
 *             read once for all of them.
 */
#ifndef MODEL_H
#define MODEL_H

#define ENGINE_VERSION "0.2.0" /* ./run --version, ./export --version */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kernels.h"
#include "tokenizer.h"

/* Model files are little-endian and mapped as they are. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "big-endian hosts are not supported: model files are little-endian and used in place"
#endif

/* ---------------------------------------------------------------------------
 * The model file format (docs/FORMAT.md has the full description).
 * Little-endian; the header is followed by the tensor table; every tensor's
 * data starts on a 64-byte boundary and is used in place from the mapping.
 */
#define MODEL_MAGIC "RUNM"
#define MODEL_VERSION 1
#define MODEL_ALIGN 64
#define MODEL_HEADER_BYTES 1024
#define TENSOR_NAME_BYTES 48

enum { ARCH_LLAMA = 1 };                               /* llama-family decoder */
enum { POS_ROPE = 0, POS_NONE = 1 };                   /* per-layer position scheme in the file */
/* What rotary layers do at run time (--pos): the model's RoPE, or no
   positions, or RoPE with the relative distance rectified (ReRoPE: min(d, W);
   Leaky ReRoPE: d below W, W + (d - W) / K beyond). docs/POSITIONS.md, docs/ALGORITHMS.md. */
enum { POS_MODEL = 0, POS_NOPE = 1, POS_REROPE = 2, POS_LEAKY = 3 };
enum { ROPE_SCALING_NONE = 0, ROPE_SCALING_LINEAR = 1, ROPE_SCALING_NTK = 2, ROPE_SCALING_DYNAMIC = 3,
       ROPE_SCALING_YARN = 4, ROPE_SCALING_LLAMA3 = 5 };
enum { ROPE_PAIRS_ADJACENT = 0 };                      /* (2m, 2m+1); the converter permutes other layouts */
enum { ATTN_GQA = 0, ATTN_MLA = 1 };
enum { FFN_SWIGLU = 0, FFN_MOE = 1 };
enum { ROUTER_SOFTMAX = 0, ROUTER_SIGMOID = 1 };

/* Every field is 4 bytes; the layout is fixed and later features fill
   fields rather than move them. Zero means "absent / default" throughout. */
typedef struct {
    int32_t arch;              /* ARCH_* */
    int32_t dim;               /* residual stream width */
    int32_t n_layers;
    int32_t n_heads;           /* query heads */
    int32_t n_kv_heads;        /* key/value heads; divides n_heads */
    int32_t head_dim;          /* query/key size per head */
    int32_t v_head_dim;        /* value size per head */
    int32_t hidden_dim;        /* SwiGLU inner width (dense layers) */
    int32_t vocab_size;
    int32_t max_seq_len;       /* the context length the model was trained at */
    float norm_eps;            /* RMSNorm epsilon */
    float rope_theta;          /* RoPE base */
    int32_t rope_dim;          /* rotated dims per head (partial rotary when < head_dim) */
    int32_t rope_pairs;        /* ROPE_PAIRS_* */
    int32_t rope_scaling;      /* ROPE_SCALING_* */
    float rope_factor;         /* scaling factor s */
    int32_t rope_orig_ctx;     /* original context for YaRN / llama3; dynamic NTK's threshold length */
    float rope_beta_fast, rope_beta_slow;    /* YaRN ramp */
    float rope_mscale, rope_mscale_all_dim;  /* YaRN attention-scale terms */
    float rope_low_freq_factor, rope_high_freq_factor; /* llama3 scaling */
    int32_t attn_kind;         /* ATTN_* */
    int32_t q_lora_rank;       /* MLA: 0 = plain query projection */
    int32_t kv_lora_rank;      /* MLA latent size */
    int32_t qk_nope_head_dim, qk_rope_head_dim;
    int32_t ffn_kind;          /* FFN_* */
    int32_t n_experts, n_experts_used, n_shared_experts, moe_hidden_dim;
    int32_t first_k_dense;     /* MoE: the first k layers are dense */
    int32_t moe_layer_freq;    /* MoE: every n-th layer after those is MoE */
    int32_t router;            /* ROUTER_* */
    int32_t n_expert_groups, topk_groups, norm_topk_prob;
    float routed_scaling;
    int32_t qkv_bias;          /* q, k, v projections have biases */
    int32_t out_bias;          /* output projection has a bias */
    int32_t tied_embeddings;   /* classifier = token embedding */
    int32_t qk_norm;           /* each head's query and key RMS-normalised before RoPE (Qwen3) */
    int32_t reserved[20];
} ModelConfig;

typedef struct {
    char magic[4];             /* "RUNM" */
    uint32_t version;          /* MODEL_VERSION */
    uint32_t header_bytes;     /* MODEL_HEADER_BYTES */
    uint32_t n_tensors;
    uint64_t table_offset;     /* n_tensors TensorEntry records */
    uint64_t file_bytes;       /* the whole file, to detect truncation up front */
    ModelConfig config;
    TokenizerConfig tokenizer;
    uint8_t reserved[MODEL_HEADER_BYTES - 32 - sizeof(ModelConfig) - sizeof(TokenizerConfig)];
} FileHeader;

typedef struct {
    char name[TENSOR_NAME_BYTES]; /* NUL-terminated */
    uint32_t type;             /* TYPE_* */
    uint32_t ndim;             /* 1..4 */
    uint64_t shape[4];         /* outermost first: a matrix is [rows = outputs, cols = inputs] */
    uint64_t offset;           /* from the start of the file; a multiple of MODEL_ALIGN */
    uint64_t nbytes;
} TensorEntry;

_Static_assert(sizeof(ModelConfig) == 256, "config size is part of the format");
_Static_assert(sizeof(TokenizerConfig) == 64, "tokenizer config size is part of the format");
_Static_assert((int)TOKENIZER_ARRAY_F32 == (int)TYPE_F32 && (int)TOKENIZER_ARRAY_U8 == (int)TYPE_U8 && (int)TOKENIZER_ARRAY_U32 == (int)TYPE_U32,
               "tokenizer arrays are stored as tensors of these types");
_Static_assert(sizeof(FileHeader) == MODEL_HEADER_BYTES, "header size is part of the format");
_Static_assert(sizeof(TensorEntry) == 104, "tensor entry size is part of the format");

/* ---------------------------------------------------------------------------
 * In memory.
 */
typedef struct {
    char name[TENSOR_NAME_BYTES];
    int type;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} Tensor;

/* A weight matrix W[rows][cols]; y = W x. After model_repack a q8_0 or
   q4_0 matrix may hold its rows eight at a time (interleaved: BlockQ8_0x8,
   BlockQ4_0x8), which only matmul reads. */
typedef struct {
    int type;
    int rows, cols;
    size_t row_bytes;
    const void *data;
    int interleaved;
} Matrix;

typedef struct {
    Matrix w1, w2, w3;         /* gate, down, up */
} Expert;

typedef struct {
    const float *attn_norm, *ffn_norm;
    Matrix wq, wk, wv, wo;     /* multi-head latent attention: wq only without a query latent */
    const float *bq, *bk, *bv; /* NULL when the model has no q/k/v biases */
    const float *bo;           /* NULL when the output projection has no bias */
    const float *q_norm, *k_norm; /* [head_dim] per-head RMSNorm weights; NULL without qk_norm */
    /* multi-head latent attention (FORMAT.md): query latent, key/value
       latent with the shared rotary key, up-projections */
    Matrix wq_a, wq_b, wkv_a, wkv_b, wk_b;
    Matrix wv_b;               /* the value rows of wkv_b alone (rows 0 unless the file has them); without
                                  wkv_b (rows 0 then) a prefill is never expanded */
    const float *q_a_norm, *kv_a_norm;
    /* feed-forward: the dense SwiGLU, or in a MoE layer the shared experts
       (rows 0 when there are none) beside the routed ones */
    Matrix w1, w2, w3;         /* gate, down, up */
    Matrix router;             /* MoE layers: [n_experts, dim], f32 */
    const float *router_bias;  /* sigmoid router: added when choosing */
    Expert *experts;           /* MoE layers: [n_experts]; NULL in dense layers */
    int pos;                   /* POS_* */
} Layer;

enum { SOURCE_NATIVE = 0, SOURCE_LLAMA2C_V0 = 1, SOURCE_LLAMA2C_V1 = 2, SOURCE_LLAMA2C_V2 = 3, SOURCE_GGUF = 4 };

typedef struct {
    ModelConfig cfg;
    TokenizerConfig tok_cfg;
    int source;                /* SOURCE_*: what the file was */
    int n_tensors;
    Tensor *tensors;
    Matrix tok_emb, output;
    const float *final_norm;
    const float *rope_divisors; /* [rope_dim/2] or NULL: pair m turns at its frequency / rope_divisors[m]
                                   (the rope_freqs of llama 3.1 GGUF files) */
    Layer *layers;
    Expert *experts;           /* the MoE layers' experts, one block */
    Tokenizer *tokenizer;      /* NULL when the file carries none */
    void *map;                 /* the file, mapped read-only */
    size_t map_bytes;
    void *owned;               /* weights the loader had to convert (llama2.c int8 files) */
    void *repacked;            /* model_repack's interleaved copies */
    size_t repacked_bytes;
    const Kernels *kernels;    /* the instruction-set level the forward pass runs on (kernels_select) */
} Model;

typedef struct {
    int scheme;                /* POS_MODEL, POS_NOPE, POS_REROPE, POS_LEAKY */
    int window;                /* W for rerope and leaky */
    float leaky_k;             /* K for leaky (> 1 leaks, 1 is RoPE) */
    int logn;                  /* L: queries scaled by max(1, ln(pos + 1) / ln L); 0 = off */
} Positions;

/* One sequence's KV cache. Layout: k[layer][position][kv_head][head_dim] and
   v[layer][position][kv_head][v_head_dim], f32, f16 or q8_0 (kv_type, the
   context's when the sequence was made), allocated for `capacity`
   positions; keys are stored rotated by their position. Under ReRoPE and
   Leaky ReRoPE a second key copy k_far (same layout) holds what distant
   queries read: the raw key (ReRoPE) or the key rotated by position / K
   (Leaky), so a decode step never re-rotates the cache. Under multi-head
   latent attention a position keeps only k[layer][position][latent +
   rotary key] (the normalised latent, then the shared rotary key, rotated)
   and no v; k_far holds the rotary key's far copy. n_past positions are
   filled. Under dynamic NTK scaling a token at position p is rotated for a
   sequence length of max(p + 1, rope_len): set rope_len to a prompt's full
   length before feeding it to rotate the prompt as one forward pass over it
   does (transformers' convention; generation then rotates each new token
   for the length so far). */
typedef struct {
    int n_past;
    int capacity;
    int rope_len;
    int kv_type;               /* TYPE_F32, TYPE_F16 or TYPE_Q8_0 */
    void *k, *v;
    void *k_far;               /* NULL unless the context rectifies positions */
} Sequence;

typedef struct {
    const Model *model;
    const Kernels *kern;       /* model->kernels */
    int ctx_len;               /* longest sequence this context serves */
    int kv_type;               /* the KV caches of sequences made for it: TYPE_F32 (context_new's default),
                                  TYPE_F16 or TYPE_Q8_0 (set before making them) */
    int max_batch;             /* most tokens in one forward call */
    int max_logits;            /* most logit rows one call returns */
    ThreadPool *pool;
    Positions positions;
    float attn_scale;          /* softmax scale: 1/sqrt(head_dim), times DeepSeek's YaRN correction */
    double *rope_speeds;       /* [rope_dim / 2]: each pair's rotation per position, for sequences no
                                  longer than the original context (the only length dynamic NTK depends on) */
    /* batch scratch, [max_batch][width] each */
    float *x, *xb, *xb2, *q, *k, *v, *hb, *hb2;
    BlockQ8A *xq;              /* quantized activations: per 32 for the 32-element types */
    BlockQ8K *xk;              /* per 256 for the super-block types */
    int *pos;                  /* position of each batch token */
    float *tok_cos, *tok_sin;  /* its rotation, [max_batch][rope_dim / 2] */
    float *q_far;              /* rectified schemes: each token's query for distant keys, [max_batch][q_dim] */
    float *far_cos, *far_sin;  /* its rotation, [max_batch][rope_dim / 2] */
    float *kfar_cos, *kfar_sin; /* Leaky: the far copy's key rotation, [max_batch][rope_dim / 2] */
    float *k_far_row;          /* one token's far key before it is cached */
    float *scores;             /* attention, [n_threads][scores_stride]: a tile of scores, max and sum per query head */
    size_t scores_stride;
    /* multi-head latent attention: each token's query latent [max_batch][q_lora_rank];
       per thread, a head's absorbed query and attended latent, and their int8 copies */
    float *qa, *mla_work;
    void *mla_q8;               /* BlockQ8A or BlockQ8K rows, as the weights take */
    /* prefill may expand the latents instead: one sequence's per-head keys
       and values [ctx_len][n_heads][nope + value dims], made from
       [max_batch][latent] at a time; NULL when too large to keep */
    float *mla_kv, *mla_lat;
    int mla_path;              /* 0: whichever costs less, 1: always absorbed, 2: expand every one-sequence batch
                                  of 2+ tokens (decode steps always stay absorbed) */
    /* mixture of experts: router logits [max_batch][n_experts], each token's
       chosen experts and weights [max_batch][n_experts_used], the tokens of
       one expert gathered [max_batch][dim] and its outputs [max_batch][dim] */
    float *router_logits, *route_w, *moe_in, *moe_out;
    int *route_id, *moe_tokens;
    float *logits;             /* [max_logits][vocab] */
    Sequence **feed_seqs;      /* sequence_feed's batch: [max_batch] copies of one sequence */
    size_t scratch_bytes;      /* everything above, allocated once by context_new */
    char error[256];
} Context;

/* Loads a model file written by ./export, a llama2.c checkpoint (versions
   0, 1 and 2) or a GGUF file, and picks the kernels it runs on: the best
   level this CPU has, or the one the environment variable RUN_KERNELS
   names (kernels.h: kernels_select). Returns 0, or -1 with one line in err. */
int model_load(Model *m, const char *path, char *err, size_t errlen);
void model_free(Model *m);
/* Copies the q8_0 and q4_0 matrices that only matmul reads into the
   interleaved layout its eight-row kernels use (faster at every level but
   the portable one: model_repack_pays), provided they take at most
   `limit` bytes. Results change in the last bits, not between thread counts
   or batch sizes. Returns the bytes copied (0: nothing, or too large), or -1
   when memory runs out (the model is unchanged). */
long long model_repack(Model *m, size_t limit);
int model_repack_pays(const Model *m);
const Tensor *model_tensor(const Model *m, const char *name);
/* KV-cache bytes one token takes in one sequence, f32. */
size_t model_kv_bytes_per_token(const Model *m);
/* The same for a sequence made for context c: its cache type, and the far
   key copy of ReRoPE and Leaky ReRoPE. */
size_t context_kv_bytes_per_token(const Context *c);

/* A sequence for use with context c (and any context of the same model and
   positions). Returns 0, or -1 with one line in err; -2 (also with the line)
   when the memory for `capacity` positions is not to be had, so a program
   can say that a shorter one may fit. */
int sequence_init(Sequence *s, const Context *c, int capacity, char *err, size_t errlen);
void sequence_free(Sequence *s);

/* positions: NULL = the model's own. */
Context *context_new(const Model *m, int ctx_len, int max_batch, int max_logits, int n_threads,
                     const Positions *positions, char *err, size_t errlen);
void context_free(Context *c);

/* Runs n tokens forward. tokens[i] is appended to sequence seqs[i] (the same
   sequence may appear several times, in order: a prompt). For the tokens with
   want[i] != 0 (want NULL: only the last token), the next-token logits are
   written, in order, to c->logits. Returns the number of logit rows, or -1
   with c->error set: a full sequence, or activations that became inf or NaN
   (weights that hold them); then the positions taken are given back. */
int model_forward(Context *c, Sequence *const *seqs, const int *tokens, int n, const uint8_t *want);
/* Appends tokens[0 .. n) (a prompt, or one sampled token) to s, running
   them forward max_batch at a time. Returns the next-token logits after the
   last one (c->logits, valid until the next call), or NULL with c->error set. */
const float *sequence_feed(Context *c, Sequence *s, const int *tokens, int n);

/* Copies positions [0, n) of src into dst, two sequences of the same model
   and positions (n <= src->n_past, n <= dst->capacity); dst->n_past = n.
   Returns 0, or -1 when they do not match. */
int sequence_copy(Sequence *dst, const Sequence *src, const Model *m, int n);
/* Writes positions [0, n) of s to f, or reads them from f into s (setting
   n_past = n). Raw values in the cache's layout and type, layer by layer;
   the caller keeps what identifies them (model_digest, the cache type, the
   tokens). checksum, when not NULL, is continued (hash_bytes) over the bytes
   written or read, so a caller can tell a damaged file. Returns 0, or -1 on
   a short read or a failed write. */
int sequence_file_io(Sequence *s, const Model *m, int n, FILE *f, int writing, uint64_t *checksum);
/* A 64-bit fingerprint of what a KV cache depends on besides its tokens:
   the configuration, the tensor table, samples of every tensor's bytes and
   the position settings. */
uint64_t model_digest(const Model *m, const Positions *positions);
/* FNV-1a, continued from h (start from FNV_OFFSET). */
#define FNV_OFFSET 0xcbf29ce484222325ull
uint64_t hash_bytes(uint64_t h, const void *data, size_t n);

/* ---------------------------------------------------------------------------
 * NBCE, naive-Bayes context extension (docs/NBCE.md). Row 0 holds the
 * question alone, rows 1..n one context each with the question. Every step
 * feeds all rows the same token and pools their next-token distributions:
 * each row is cut to its top-p nucleus; the row with the least entropy is
 * chosen, the previous step's row with a bonus of eta (or the rows are
 * averaged); the scores are (1 + beta) * pooled - beta * row 0, with row 0
 * left out where it has cut the token.
 */
enum { NBCE_MIN_ENTROPY = 0, NBCE_MEAN = 1 };

typedef struct {
    int vocab, batch;          /* batch: most tokens nbce_feed runs forward at once */
    float beta, eta, top_p;
    int pool;                  /* NBCE_MIN_ENTROPY or NBCE_MEAN */
    int prev;                  /* the row chosen at the last step; 0 before the first */
    /* the step being pooled; rows come in order, row 0 first */
    int rows, chosen;
    float chosen_entropy;
    float *uncond, *pooled, *row; /* [vocab] truncated log-probabilities of row 0, of the chosen row
                                  (mean: the sum over rows), of the row being added */
    uint8_t *kept;             /* [vocab] mean pooling: some row kept the token */
    int threads;               /* rows are cut in parallel; per thread: */
    uint32_t *keys;            /* [threads][2][vocab] sorting scratch */
    int *ids;                  /* [threads][2][vocab] */
    float *exps;               /* [threads][vocab] */
    float *entropy;            /* [batch] the entropies of a batch's rows */
    Sequence **batch_seqs;     /* nbce_feed's batch, [batch] */
    int *batch_tokens;
    uint8_t *batch_want;
} Nbce;

/* For rows run with context c. Returns 0, or -1 with one line in err. */
int nbce_init(Nbce *nb, const Context *c, float beta, float eta, float top_p, int pool, char *err, size_t errlen);
void nbce_free(Nbce *nb);
/* lp = log-softmax(logits) cut to the top-p nucleus as transformers'
   TopPLogitsWarper cuts it: the least likely tokens whose probabilities add
   up to at most 1 - top_p become -inf (never the most likely one), without
   renormalising. Returns the entropy of what is kept,
   -sum exp(lp) * max(lp, -100). */
float nbce_truncate(Nbce *nb, const float *logits, float *lp);
/* Adds the next row's logits to the step (row 0 first). */
void nbce_add(Nbce *nb, const float *logits);
/* Ends the step: z = the pooled scores. Returns the chosen row (>= 1; 0
   under mean pooling), or -1 when fewer than two rows were added. */
int nbce_pool(Nbce *nb, float *z);
/* Appends tokens[r][0 .. n_tokens[r]) (at least one) to rows[r] for every
   row, running all rows together in batches so the weights are read once
   per batch, and pools the rows' next-token distributions into z. Returns
   the chosen row as nbce_pool does, or -1 with c->error set. progress, when
   not NULL, hears the tokens done after every batch. */
int nbce_feed(Nbce *nb, Context *c, Sequence *const *rows, const int *const *tokens, const int *n_tokens, int n_rows,
              float *z, void (*progress)(void *arg, int done, int total), void *arg);

/* ---------------------------------------------------------------------------
 * Sampling, as llama2.c does it (xorshift RNG, temperature, top-p) plus
 * top-k. Temperature 0 is greedy. The same seed gives the same tokens.
 */
typedef struct {
    float prob;
    int id;
} SampleCandidate;

typedef struct {
    int vocab;
    float temperature;         /* 0: always the most likely token */
    float top_p;               /* nucleus; 0 or 1 (and above): the whole distribution */
    int top_k;                 /* 0: no limit */
    unsigned long long rng;    /* xorshift state, from the seed */
    float *probs;              /* [vocab] */
    SampleCandidate *cand;     /* [vocab] tokens that can still be drawn, most likely first */
} Sampler;

/* Any seed (0 included) gives a fixed sequence. Returns 0, or -1 when memory runs out. */
int sampler_init(Sampler *s, int vocab, float temperature, float top_p, int top_k, unsigned long long seed);
void sampler_free(Sampler *s);
/* Draws the next token from logits[vocab]. */
int sampler_sample(Sampler *s, const float *logits);

/* ===========================================================================
 * Implementation
 */
#ifdef MODEL_IMPLEMENTATION

#include "message.h"
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(MODEL_BLIS)
#include <blis.h> /* make BLIS=1: f32 prefill through bli_sgemm */
#endif

static int seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        message_format(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

const Tensor *model_tensor(const Model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

/* What one position of one layer keeps: keys (GQA) or the latent and the
   shared rotary key (MLA), the values (none under MLA: the latent is both),
   and the distant-key copy of the rectified schemes (MLA: rotary part only). */
static size_t kv_key_width(const ModelConfig *c) {
    return c->attn_kind == ATTN_MLA ? (size_t)c->kv_lora_rank + c->qk_rope_head_dim : (size_t)c->n_kv_heads * c->head_dim;
}
static size_t kv_value_width(const ModelConfig *c) {
    return c->attn_kind == ATTN_MLA ? 0 : (size_t)c->n_kv_heads * c->v_head_dim;
}
static size_t kv_far_width(const ModelConfig *c) {
    return c->attn_kind == ATTN_MLA ? (size_t)c->qk_rope_head_dim : (size_t)c->n_kv_heads * c->head_dim;
}

size_t model_kv_bytes_per_token(const Model *m) {
    const ModelConfig *c = &m->cfg;
    return (size_t)c->n_layers * (kv_key_width(c) + kv_value_width(c)) * sizeof(float);
}

#define ATTN_TILE 64 /* attention's positions per tile (the attention tasks) */

/* Element `index` of a cache part: f32, f16 or q8_0 (whose indices are at
   block starts: every width and head offset is a multiple of 32, which
   kv_type_fits checks). */

/* Whether a q8_0 cache can hold this model's rows: each head's keys and
   values (MLA: the latent and the rotary key) start and end on blocks. */
static int kv_type_fits(const ModelConfig *c, int type) {
    if (type != TYPE_Q8_0) return type == TYPE_F32 || type == TYPE_F16;
    if (c->attn_kind == ATTN_MLA) return c->kv_lora_rank % QK == 0 && c->qk_rope_head_dim % QK == 0;
    return c->head_dim % QK == 0 && c->v_head_dim % QK == 0;
}

/* Whether layer l routes to experts (DeepSeek: after the first k dense
   layers, every moe_layer_freq-th). */
static int moe_layer(const ModelConfig *c, int l) {
    return c->ffn_kind == FFN_MOE && l >= c->first_k_dense && l % (c->moe_layer_freq > 0 ? c->moe_layer_freq : 1) == 0;
}

/* Bytes a tensor of this type and shape takes, or 0 if the shape cannot be
   stored in that type (rows not a multiple of its block) or its size does
   not fit a size_t (a file's 4-dim shape, or 32 bits). Counted in 64 bits:
   type_row_bytes's size_t would wrap on a 32-bit platform. */
static size_t tensor_bytes(int type, int ndim, const int64_t *shape) {
    uint64_t rows = 1, block = (uint64_t)type_block(type), cols = (uint64_t)shape[ndim - 1];
    for (int i = 0; i < ndim - 1; i++) {
        if (shape[i] <= 0 || rows > UINT64_MAX / (uint64_t)shape[i]) return 0;
        rows *= (uint64_t)shape[i];
    }
    if (shape[ndim - 1] <= 0 || !block || cols % block) return 0;
    uint64_t row = cols / block * (uint64_t)TYPE_INFO[type].block_bytes;
    return rows > SIZE_MAX / row ? 0 : (size_t)(rows * row);
}

/* A file size for messages: "5.0 GiB", "300.0 MiB". */
static const char *size_text(uint64_t bytes, char *buf, size_t len) {
    if (bytes >= (1ull << 30)) snprintf(buf, len, "%.1f GiB", bytes / 1073741824.0);
    else snprintf(buf, len, "%.1f MiB", bytes / 1048576.0);
    return buf;
}

/* ---------------------------------------------------------------------------
 * Binding: from the tensor table to the Layer/Matrix structs, checking every
 * shape against the config so nothing downstream reads out of bounds.
 */
static int bind_matrix(Model *m, Matrix *out, const char *name, int64_t rows, int64_t cols, char *err, size_t errlen) {
    const Tensor *t = model_tensor(m, name);
    if (!t) return seterr(err, errlen, "tensor '%s' is missing", name);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return seterr(err, errlen, "tensor '%s' has the wrong shape (expected [%lld, %lld])", name,
                      (long long)rows, (long long)cols);
    if (!type_is_weight(t->type)) return seterr(err, errlen, "tensor '%s' has type %s, not a weight type", name, type_name(t->type));
    out->type = t->type;
    out->rows = (int)rows;
    out->cols = (int)cols;
    out->row_bytes = type_row_bytes(t->type, cols);
    out->data = t->data;
    return 0;
}

static int bind_vector(Model *m, const float **out, const char *name, int64_t n, int optional, char *err, size_t errlen) {
    const Tensor *t = model_tensor(m, name);
    *out = NULL;
    if (!t) return optional ? 0 : seterr(err, errlen, "tensor '%s' is missing", name);
    if (t->ndim != 1 || t->shape[0] != n || t->type != TYPE_F32)
        return seterr(err, errlen, "tensor '%s' should be f32 [%lld]", name, (long long)n);
    *out = t->data;
    return 0;
}

static int check_config(const ModelConfig *c, char *err, size_t errlen) {
    if (c->arch != ARCH_LLAMA) return seterr(err, errlen, "unknown architecture %d", c->arch);
    if (c->attn_kind != ATTN_GQA && c->attn_kind != ATTN_MLA) return seterr(err, errlen, "unknown attention kind %d", c->attn_kind);
    if (c->ffn_kind != FFN_SWIGLU && c->ffn_kind != FFN_MOE) return seterr(err, errlen, "unknown feed-forward kind %d", c->ffn_kind);
    if (c->rope_scaling < ROPE_SCALING_NONE || c->rope_scaling > ROPE_SCALING_LLAMA3)
        return seterr(err, errlen, "unknown rope scaling kind %d", c->rope_scaling);
    if (c->rope_pairs != ROPE_PAIRS_ADJACENT) return seterr(err, errlen, "unknown rotary pairing %d", c->rope_pairs);
    const int64_t big = 1 << 20;
    if (c->dim <= 0 || c->dim > big || c->n_layers <= 0 || c->n_layers > 4096 || c->n_heads <= 0 ||
        c->n_heads > 4096 || c->n_kv_heads <= 0 || c->head_dim <= 0 || c->head_dim > 4096 || c->v_head_dim <= 0 ||
        c->v_head_dim > 4096 || c->hidden_dim <= 0 || c->hidden_dim > big || c->vocab_size <= 0 ||
        c->vocab_size > (1 << 24) || c->max_seq_len <= 0)
        return seterr(err, errlen, "impossible dimensions in the model config");
    /* every field that can size a buffer is bounded, also where this model does not use it */
    if (c->kv_lora_rank < 0 || c->kv_lora_rank > (1 << 16) || c->q_lora_rank < 0 || c->q_lora_rank > (1 << 16) ||
        c->qk_nope_head_dim < 0 || c->qk_nope_head_dim > 4096 || c->qk_rope_head_dim < 0 || c->qk_rope_head_dim > 4096 ||
        c->n_experts < 0 || c->n_experts > 4096 || c->n_experts_used < 0 || c->n_experts_used > 4096 ||
        c->n_shared_experts < 0 || c->n_shared_experts > 64 || c->moe_hidden_dim < 0 || c->moe_hidden_dim > (1 << 20) ||
        c->n_expert_groups < 0 || c->n_expert_groups > 4096 || c->topk_groups < 0 || c->topk_groups > 4096 ||
        c->first_k_dense < 0 || c->moe_layer_freq < 0 || c->rope_orig_ctx < 0)
        return seterr(err, errlen, "impossible latent-attention or expert dimensions in the model config");
    if (c->n_heads % c->n_kv_heads)
        return seterr(err, errlen, "n_heads (%d) is not a multiple of n_kv_heads (%d)", c->n_heads, c->n_kv_heads);
    if (c->rope_dim < 0 || c->rope_dim > c->head_dim || c->rope_dim % 2)
        return seterr(err, errlen, "rotary dims (%d) must be even and at most head_dim (%d)", c->rope_dim, c->head_dim);
    if (c->attn_kind == ATTN_MLA &&
        (c->kv_lora_rank <= 0 || c->kv_lora_rank > (1 << 16) || c->q_lora_rank < 0 || c->q_lora_rank > (1 << 16) ||
         c->qk_nope_head_dim < 0 || c->qk_rope_head_dim < 0 || c->qk_nope_head_dim + c->qk_rope_head_dim != c->head_dim ||
         c->rope_dim != c->qk_rope_head_dim || c->n_kv_heads != c->n_heads || c->qkv_bias || c->out_bias || c->qk_norm))
        return seterr(err, errlen, "inconsistent latent attention dimensions (latent %d, query latent %d, nope %d + rope %d "
                      "= head_dim %d, rope_dim %d)", c->kv_lora_rank, c->q_lora_rank, c->qk_nope_head_dim,
                      c->qk_rope_head_dim, c->head_dim, c->rope_dim);
    if (c->ffn_kind == FFN_MOE) {
        int groups = c->n_expert_groups > 1 ? c->n_expert_groups : 1;
        if (c->n_experts <= 0 || c->n_experts > 4096 || c->n_experts_used <= 0 || c->n_experts_used > c->n_experts ||
            c->n_shared_experts < 0 || c->n_shared_experts > 64 || c->moe_hidden_dim <= 0 || c->moe_hidden_dim > (1 << 20) ||
            c->first_k_dense < 0 || c->moe_layer_freq < 0 || (c->router != ROUTER_SOFTMAX && c->router != ROUTER_SIGMOID) ||
            c->n_experts % groups || c->topk_groups < 0 || c->topk_groups > groups ||
            (groups > 1 && c->topk_groups * (c->n_experts / groups) < c->n_experts_used) ||
            !(isfinite(c->routed_scaling) && c->routed_scaling >= 0))
            return seterr(err, errlen, "inconsistent mixture-of-experts settings (%d experts, %d used, %d groups, %d kept)",
                          c->n_experts, c->n_experts_used, c->n_expert_groups, c->topk_groups);
    }
    if (!(c->norm_eps > 0 && c->norm_eps < 1) || !(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return seterr(err, errlen, "impossible norm epsilon or rope theta in the model config");
    if ((c->rope_scaling == ROPE_SCALING_LINEAR || c->rope_scaling == ROPE_SCALING_NTK) &&
        !(c->rope_factor >= 1 && isfinite(c->rope_factor)))
        return seterr(err, errlen, "%s rope scaling needs a factor >= 1", c->rope_scaling == ROPE_SCALING_NTK ? "ntk" : "linear");
    if (c->rope_scaling == ROPE_SCALING_DYNAMIC && !(c->rope_factor >= 1 && isfinite(c->rope_factor) && c->rope_orig_ctx > 0))
        return seterr(err, errlen, "dynamic ntk rope scaling needs a factor >= 1 and a positive original context");
    if ((c->rope_scaling == ROPE_SCALING_NTK || c->rope_scaling == ROPE_SCALING_DYNAMIC) && c->rope_dim <= 2)
        return seterr(err, errlen, "ntk rope scaling needs more than 2 rotary dims");
    if (c->rope_scaling == ROPE_SCALING_LLAMA3 &&
        !(c->rope_factor >= 1 && isfinite(c->rope_factor) && c->rope_low_freq_factor > 0 &&
          c->rope_high_freq_factor > c->rope_low_freq_factor && isfinite(c->rope_high_freq_factor) && c->rope_orig_ctx > 0))
        return seterr(err, errlen, "llama3 rope scaling needs factor >= 1, 0 < low_freq_factor < high_freq_factor "
                                   "and a positive original context");
    if (c->rope_scaling == ROPE_SCALING_YARN &&
        !(c->rope_factor >= 1 && isfinite(c->rope_factor) && c->rope_orig_ctx > 0 && c->rope_beta_fast > 0 &&
          c->rope_beta_slow > 0 && isfinite(c->rope_beta_fast) && c->rope_mscale >= 0 && c->rope_mscale_all_dim >= 0))
        return seterr(err, errlen, "yarn rope scaling needs factor >= 1, a positive original context and positive betas");
    return 0;
}

static int model_bind(Model *m, char *err, size_t errlen) {
    const ModelConfig *c = &m->cfg;
    char why[256];
    if (!(m->kernels = kernels_select(getenv("RUN_KERNELS"), why, sizeof why))) return seterr(err, errlen, "%s", why);
    if (check_config(c, err, errlen)) return -1;
    char name[96]; /* longer than any stored name: a name that does not fit is simply not found */
    int64_t q_dim = (int64_t)c->n_heads * c->head_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t att_dim = (int64_t)c->n_heads * c->v_head_dim, v_dim = (int64_t)c->n_kv_heads * c->v_head_dim;
    int64_t lat = c->kv_lora_rank, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    int64_t shared = (int64_t)c->n_shared_experts * c->moe_hidden_dim;
    if (bind_matrix(m, &m->tok_emb, "tok_embeddings", c->vocab_size, c->dim, err, errlen)) return -1;
    if (c->tied_embeddings) m->output = m->tok_emb;
    else if (bind_matrix(m, &m->output, "output", c->vocab_size, c->dim, err, errlen)) return -1;
    if (bind_vector(m, &m->final_norm, "norm", c->dim, 0, err, errlen)) return -1;
    if (bind_vector(m, &m->rope_divisors, "rope_freqs", c->rope_dim / 2, 1, err, errlen)) return -1;
    for (int i = 0; m->rope_divisors && i < c->rope_dim / 2; i++)
        if (!(m->rope_divisors[i] > 0) || !isfinite(m->rope_divisors[i])) return seterr(err, errlen, "tensor 'rope_freqs' holds a value that is not positive");
    const Tensor *layer_pos = model_tensor(m, "layer_pos");
    if (layer_pos && (layer_pos->type != TYPE_U8 || layer_pos->ndim != 1 || layer_pos->shape[0] != c->n_layers))
        return seterr(err, errlen, "tensor 'layer_pos' should be u8 [%d]", c->n_layers);
    int n_moe = 0;
    for (int l = 0; l < c->n_layers; l++) n_moe += moe_layer(c, l);
    m->layers = calloc((unsigned)c->n_layers, sizeof(Layer)); /* 1..4096 (check_config) */
    m->experts = n_moe ? calloc((size_t)n_moe * c->n_experts, sizeof(Expert)) : NULL;
    if (!m->layers || (n_moe && !m->experts)) return seterr(err, errlen, "out of memory");
    Expert *next_experts = m->experts;
    for (int l = 0; l < c->n_layers; l++) {
        Layer *L = &m->layers[l];
#define LAYER_NAME(suffix) (snprintf(name, sizeof name, "layers.%d." suffix, l), name)
#define MATRIX(field, suffix, rows, cols) bind_matrix(m, &L->field, LAYER_NAME(suffix), rows, cols, err, errlen)
#define VECTOR(field, suffix, n, optional) bind_vector(m, &L->field, LAYER_NAME(suffix), n, optional, err, errlen)
        if (VECTOR(attn_norm, "attention_norm", c->dim, 0) || VECTOR(ffn_norm, "ffn_norm", c->dim, 0) ||
            MATRIX(wo, "attention.wo", c->dim, att_dim))
            return -1;
        if (c->attn_kind == ATTN_MLA) {
            if ((c->q_lora_rank ? MATRIX(wq_a, "attention.wq_a", c->q_lora_rank, c->dim) ||
                                      VECTOR(q_a_norm, "attention.q_a_norm", c->q_lora_rank, 0) ||
                                      MATRIX(wq_b, "attention.wq_b", q_dim, c->q_lora_rank)
                                : MATRIX(wq, "attention.wq", q_dim, c->dim)) ||
                MATRIX(wkv_a, "attention.wkv_a", lat + dr, c->dim) || VECTOR(kv_a_norm, "attention.kv_a_norm", lat, 0) ||
                MATRIX(wk_b, "attention.wk_b", c->n_heads * lat, dn))
                return -1;
            /* wkv_b, wv_b or both; with neither, the error names wkv_b */
            int has_v_b = model_tensor(m, LAYER_NAME("attention.wv_b")) != NULL;
            if ((has_v_b && MATRIX(wv_b, "attention.wv_b", att_dim, lat)) ||
                ((!has_v_b || model_tensor(m, LAYER_NAME("attention.wkv_b"))) &&
                 MATRIX(wkv_b, "attention.wkv_b", c->n_heads * (dn + c->v_head_dim), lat)))
                return -1;
        } else if (MATRIX(wq, "attention.wq", q_dim, c->dim) || MATRIX(wk, "attention.wk", kv_dim, c->dim) ||
                   MATRIX(wv, "attention.wv", v_dim, c->dim) || VECTOR(bq, "attention.bq", q_dim, !c->qkv_bias) ||
                   VECTOR(bk, "attention.bk", kv_dim, !c->qkv_bias) || VECTOR(bv, "attention.bv", v_dim, !c->qkv_bias) ||
                   VECTOR(bo, "attention.bo", c->dim, !c->out_bias) ||
                   VECTOR(q_norm, "attention.q_norm", c->head_dim, !c->qk_norm) ||
                   VECTOR(k_norm, "attention.k_norm", c->head_dim, !c->qk_norm)) {
            return -1;
        }
        if (!moe_layer(c, l)) {
            if (MATRIX(w1, "feed_forward.w1", c->hidden_dim, c->dim) || MATRIX(w2, "feed_forward.w2", c->dim, c->hidden_dim) ||
                MATRIX(w3, "feed_forward.w3", c->hidden_dim, c->dim))
                return -1;
        } else {
            if ((shared && (MATRIX(w1, "feed_forward.shared.w1", shared, c->dim) ||
                            MATRIX(w2, "feed_forward.shared.w2", c->dim, shared) ||
                            MATRIX(w3, "feed_forward.shared.w3", shared, c->dim))) ||
                MATRIX(router, "feed_forward.router", c->n_experts, c->dim) ||
                VECTOR(router_bias, "feed_forward.router_bias", c->n_experts, c->router != ROUTER_SIGMOID))
                return -1;
            if (L->router.type != TYPE_F32) return seterr(err, errlen, "tensor '%s' should be f32", LAYER_NAME("feed_forward.router"));
            L->experts = next_experts;
            next_experts += c->n_experts;
            for (int e = 0; e < c->n_experts; e++) {
                const char *parts[3] = {"w1", "w2", "w3"};
                Matrix *w[3] = {&L->experts[e].w1, &L->experts[e].w2, &L->experts[e].w3};
                for (int k = 0; k < 3; k++) {
                    snprintf(name, sizeof name, "layers.%d.feed_forward.experts.%d.%s", l, e, parts[k]);
                    if (bind_matrix(m, w[k], name, k == 1 ? c->dim : c->moe_hidden_dim, k == 1 ? c->moe_hidden_dim : c->dim,
                                    err, errlen))
                        return -1;
                }
            }
        }
#undef MATRIX
#undef VECTOR
#undef LAYER_NAME
        L->pos = layer_pos ? ((const uint8_t *)layer_pos->data)[l] : POS_ROPE;
        if (L->pos != POS_ROPE && L->pos != POS_NONE) return seterr(err, errlen, "layer %d has unknown position scheme %d", l, L->pos);
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Native model files.
 */
/* Every tensor named tokenizer.* goes to the tokenizer, which knows what they mean. */
static int load_tokenizer_tensors(Model *m, char *err, size_t errlen) {
    if (m->tok_cfg.kind == TOKENIZER_NONE) return 0;
    TokenizerArray arrays[TOKENIZER_MAX_ARRAYS];
    int n = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const Tensor *t = &m->tensors[i];
        if (strncmp(t->name, "tokenizer.", 10)) continue;
        if (n == TOKENIZER_MAX_ARRAYS) return seterr(err, errlen, "too many tokenizer tensors");
        if (t->ndim != 1 || (t->type != TYPE_U8 && t->type != TYPE_U32 && t->type != TYPE_F32))
            return seterr(err, errlen, "tensor '%s' should be a vector of u8, u32 or f32", t->name);
        arrays[n++] = (TokenizerArray){t->name + 10, t->type, t->shape[0], t->data};
    }
    char terr[200];
    m->tokenizer = tokenizer_new(&m->tok_cfg, arrays, n, terr, sizeof terr);
    return m->tokenizer ? 0 : seterr(err, errlen, "%s", terr);
}

static int load_native(Model *m, char *err, size_t errlen) {
    const uint8_t *base = m->map;
    FileHeader h;
    if (m->map_bytes < sizeof h) return seterr(err, errlen, "truncated header");
    memcpy(&h, base, sizeof h);
    if (h.version != MODEL_VERSION) return seterr(err, errlen, "unsupported format version %u (this build reads %d)", h.version, MODEL_VERSION);
    if (h.header_bytes != MODEL_HEADER_BYTES) return seterr(err, errlen, "corrupt header (header size %u)", h.header_bytes);
    if (h.file_bytes != m->map_bytes)
        return seterr(err, errlen, "truncated or padded: the header says %llu bytes, the file has %zu",
                      (unsigned long long)h.file_bytes, m->map_bytes);
    if (h.n_tensors == 0 || h.n_tensors > 1000000 || h.table_offset < sizeof h ||
        h.table_offset > m->map_bytes || (m->map_bytes - h.table_offset) / sizeof(TensorEntry) < h.n_tensors)
        return seterr(err, errlen, "corrupt tensor table");
    m->cfg = h.config;
    m->tok_cfg = h.tokenizer;
    m->n_tensors = (int)h.n_tensors;
    m->tensors = calloc(h.n_tensors, sizeof(Tensor));
    if (!m->tensors) return seterr(err, errlen, "out of memory");
    for (uint32_t i = 0; i < h.n_tensors; i++) {
        TensorEntry e;
        memcpy(&e, base + h.table_offset + (size_t)i * sizeof e, sizeof e);
        Tensor *t = &m->tensors[i];
        if (!memchr(e.name, 0, sizeof e.name) || !e.name[0]) return seterr(err, errlen, "tensor %u has a corrupt name", i);
        memcpy(t->name, e.name, sizeof t->name);
        if (e.type >= TYPE_COUNT) return seterr(err, errlen, "tensor '%s' has unknown type %u", t->name, e.type);
        if (e.ndim < 1 || e.ndim > 4) return seterr(err, errlen, "tensor '%s' has %u dimensions", t->name, e.ndim);
        t->type = (int)e.type;
        t->ndim = (int)e.ndim;
        for (uint32_t d = 0; d < e.ndim; d++) {
            if (e.shape[d] == 0 || e.shape[d] > (1ull << 40)) return seterr(err, errlen, "tensor '%s' has an impossible shape", t->name);
            t->shape[d] = (int64_t)e.shape[d];
        }
        size_t want = tensor_bytes(t->type, t->ndim, t->shape);
        if (!want || want != e.nbytes)
            return seterr(err, errlen, "tensor '%s': %llu bytes do not match type %s and its shape", t->name,
                          (unsigned long long)e.nbytes, type_name(t->type));
        if (e.offset % MODEL_ALIGN) return seterr(err, errlen, "tensor '%s' is not %d-byte aligned", t->name, MODEL_ALIGN);
        if (e.offset > m->map_bytes || e.nbytes > m->map_bytes - e.offset)
            return seterr(err, errlen, "tensor '%s' lies outside the file (truncated?)", t->name);
        t->data = base + e.offset;
        t->nbytes = e.nbytes;
    }
    if (model_bind(m, err, errlen)) return -1;
    if (m->tok_cfg.kind != TOKENIZER_NONE && m->tok_cfg.n_vocab > m->cfg.vocab_size)
        return seterr(err, errlen, "the tokenizer has %d tokens, the model only %d", m->tok_cfg.n_vocab, m->cfg.vocab_size);
    return load_tokenizer_tensors(m, err, errlen);
}

/* ---------------------------------------------------------------------------
 * llama2.c checkpoints. Version 0: seven int32 (dim, hidden_dim, n_layers,
 * n_heads, n_kv_heads, vocab_size (negative: separate classifier), seq_len),
 * then f32 weights grouped by kind across layers, and a RoPE table we ignore.
 * Versions 1 and 2 (export.py): a 256-byte header with magic "ak42"; version
 * 2 stores the matrices as int8 groups with f32 scales, which the loader
 * expands to f32 (such files are small models; ./export requantizes them).
 */
#define LLAMA2C_MAGIC 0x616b3432u

typedef struct {
    const char *name; /* "%d" for per-layer tensors */
    int per_layer;
    int64_t rows, cols; /* rows == 0: a vector of cols */
} Llama2cTensor;

static int add_tensor(Model *m, int *cap, const char *name, int type, int64_t rows, int64_t cols, const void *data) {
    if (m->n_tensors == *cap) {
        int ncap = *cap ? *cap * 2 : 64;
        Tensor *t = realloc(m->tensors, (size_t)ncap * sizeof *t);
        if (!t) return -1;
        m->tensors = t;
        *cap = ncap;
    }
    Tensor *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->ndim = rows ? 2 : 1;
    t->shape[0] = rows ? rows : cols;
    t->shape[1] = rows ? cols : 0;
    t->data = data;
    t->nbytes = tensor_bytes(type, t->ndim, t->shape);
    return 0;
}

static int load_llama2c(Model *m, char *err, size_t errlen) {
    const uint8_t *base = m->map;
    int32_t hdr[7];
    size_t pos;
    int version, shared, group = 0;
    uint32_t magic = 0;
    if (m->map_bytes >= 4) memcpy(&magic, base, 4);
    if (magic == LLAMA2C_MAGIC) {
        if (m->map_bytes < 256) return seterr(err, errlen, "truncated llama2.c header");
        memcpy(&version, base + 4, 4);
        if (version != 1 && version != 2) return seterr(err, errlen, "unsupported llama2.c checkpoint version %d", version);
        memcpy(hdr, base + 8, sizeof hdr);
        shared = base[36];
        if (version == 2) memcpy(&group, base + 37, 4);
        pos = 256;
    } else {
        if (m->map_bytes < sizeof hdr) return seterr(err, errlen, "not a model file (too short)");
        memcpy(hdr, base, sizeof hdr);
        version = 0;
        shared = hdr[5] > 0;
        pos = sizeof hdr;
    }
    /* version 0: a negative vocabulary size marks a separate classifier (negated in 64 bits: INT32_MIN too) */
    int64_t dim = hdr[0], hidden = hdr[1], n_layers = hdr[2], n_heads = hdr[3], n_kv = hdr[4], seq_len = hdr[6];
    int64_t vocab = version == 0 && hdr[5] < 0 ? -(int64_t)hdr[5] : hdr[5];
    if (dim <= 0 || hidden <= 0 || n_layers <= 0 || n_heads <= 0 || n_kv <= 0 || vocab <= 0 || seq_len <= 0 ||
        dim > (1 << 20) || hidden > (1 << 22) || n_layers > 4096 || n_heads > dim || n_kv > n_heads ||
        vocab > (1 << 24) || seq_len > (1 << 24) || dim % n_heads || n_heads % n_kv || (dim / n_heads) % 2)
        return seterr(err, errlen, version ? "impossible dimensions in the llama2.c header"
                                           : "not a model file (unknown magic, and not a llama2.c checkpoint)");
    int64_t hs = dim / n_heads, kv_dim = n_kv * hs;
    ModelConfig *c = &m->cfg;
    memset(c, 0, sizeof *c);
    *c = (ModelConfig){.arch = ARCH_LLAMA, .dim = (int)dim, .n_layers = (int)n_layers, .n_heads = (int)n_heads,
                       .n_kv_heads = (int)n_kv, .head_dim = (int)hs, .v_head_dim = (int)hs, .hidden_dim = (int)hidden,
                       .vocab_size = (int)vocab, .max_seq_len = (int)seq_len, .norm_eps = 1e-5f,
                       .rope_theta = 10000.0f, .rope_dim = (int)hs, .tied_embeddings = shared};
    /* Tensors in file order for each version. */
    const Llama2cTensor emb = {"tok_embeddings", 0, vocab, dim}, fnorm = {"norm", 0, 0, dim};
    const Llama2cTensor an = {"layers.%d.attention_norm", 1, 0, dim}, fn = {"layers.%d.ffn_norm", 1, 0, dim};
    const Llama2cTensor mats[7] = {
        {"layers.%d.attention.wq", 1, dim, dim},       {"layers.%d.attention.wk", 1, kv_dim, dim},
        {"layers.%d.attention.wv", 1, kv_dim, dim},    {"layers.%d.attention.wo", 1, dim, dim},
        {"layers.%d.feed_forward.w1", 1, hidden, dim}, {"layers.%d.feed_forward.w2", 1, dim, hidden},
        {"layers.%d.feed_forward.w3", 1, hidden, dim},
    };
    const Llama2cTensor out = {"output", 0, vocab, dim};
    Llama2cTensor order[16];
    int n = 0, n_f32;
    if (version == 0) {
        order[n++] = emb; order[n++] = an;
        for (int i = 0; i < 4; i++) order[n++] = mats[i];
        order[n++] = fn;
        for (int i = 4; i < 7; i++) order[n++] = mats[i];
        order[n++] = fnorm;
        order[n++] = (Llama2cTensor){"rope_table", 0, 0, seq_len * hs}; /* freq_cis real + imag, skipped */
        n_f32 = n;
    } else if (version == 1) {
        order[n++] = an; order[n++] = fn; order[n++] = fnorm; order[n++] = emb;
        for (int i = 0; i < 7; i++) order[n++] = mats[i];
        n_f32 = n;
    } else {
        order[n++] = an; order[n++] = fn; order[n++] = fnorm;
        n_f32 = n;
        order[n++] = emb;
        for (int i = 0; i < 7; i++) order[n++] = mats[i];
    }
    if (!shared) order[n++] = out;
    if (version != 2) n_f32 = n;

    /* Sizes first: the file must be exactly this long. */
    int64_t total_q = 0, expect = (int64_t)pos;
    for (int i = 0; i < n; i++) {
        int64_t numel = (order[i].rows ? order[i].rows : 1) * order[i].cols * (order[i].per_layer ? n_layers : 1);
        if (i < n_f32) expect += numel * 4;
        else total_q += numel;
    }
    if (version == 2) {
        if (group <= 0 || dim % group) return seterr(err, errlen, "corrupt llama2.c int8 group size %d", group);
        expect += total_q + total_q / group * 4;
    }
    if ((int64_t)m->map_bytes != expect)
        return seterr(err, errlen, version ? "truncated or corrupt llama2.c checkpoint: %zu bytes, expected %lld"
                                           : "not a model file (unknown magic; as a llama2.c checkpoint it would be %2$lld bytes, not %1$zu)",
                      m->map_bytes, (long long)expect);
    float *deq = NULL;
    if (version == 2) {
        char size[32];
        if ((uint64_t)total_q > SIZE_MAX / sizeof(float)) /* 32-bit: the f32 copy cannot exist, and its size would wrap */
            return seterr(err, errlen, "its int8 weights expand to %s of f32, more than this %d-bit system can address "
                          "(convert it with ./export --quant q8_0 on a 64-bit machine)",
                          size_text((uint64_t)total_q * sizeof(float), size, sizeof size), (int)sizeof(void *) * 8);
        deq = m->owned = malloc((size_t)total_q * sizeof(float));
        if (!deq) return seterr(err, errlen, "out of memory expanding the int8 checkpoint");
        const int8_t *q = (const int8_t *)(base + pos + (expect - (int64_t)pos - total_q - total_q / group * 4));
        const uint8_t *scales = (const uint8_t *)q + total_q;
        for (int64_t i = 0; i < total_q; i++) {
            float s;
            memcpy(&s, scales + (i / group) * 4, 4);
            deq[i] = q[i] * s;
        }
    }
    int cap = 0;
    char name[TENSOR_NAME_BYTES];
    const uint8_t *p = base + pos;
    const float *pq = deq;
    for (int i = 0; i < n; i++) {
        const Llama2cTensor *t = &order[i];
        int64_t numel = (t->rows ? t->rows : 1) * t->cols;
        for (int64_t l = 0; l < (t->per_layer ? n_layers : 1); l++) {
            const void *data = i < n_f32 ? (const void *)p : (const void *)pq;
            snprintf(name, sizeof name, t->name, (int)l);
            if (strcmp(t->name, "rope_table") && add_tensor(m, &cap, name, TYPE_F32, t->rows, t->cols, data))
                return seterr(err, errlen, "out of memory");
            if (i < n_f32) p += numel * 4;
            else pq += numel;
        }
    }
    m->source = SOURCE_LLAMA2C_V0 + version;
    return model_bind(m, err, errlen);
}

/* ---------------------------------------------------------------------------
 * GGUF files (llama.cpp's format), read through gguf.h and used in place.
 * The metadata gives the config; the tensors are renamed to ours and their
 * shapes turned outermost-first. A 3-D tensor of experts becomes one matrix
 * per expert; the other 3-D tensors (latent attention's per-head k_b and
 * v_b) keep their rows one after another. ggml's byte layouts are ours.
 * Two kinds of tensor are written into memory the loader owns: llama.cpp's
 * converter leaves the rotary rows of q and k in rotate_half order for
 * every family but llama (whose rows it reorders into adjacent pairs, as
 * ours), so for those q, k and their biases and norms are copied reordered
 * (rope_source_row); and a latent-attention file with attn_kv_b alone gets
 * the absorbed key matrix built from it (mla_absorbed_key).
 */
typedef struct {
    const char *arch;       /* general.architecture */
    int rotate_half;        /* q/k rows left in rotate_half order by the converter */
    int qkv_bias;           /* q, k, v biases in every layer */
    int qk_norm;            /* per-head q/k RMSNorm (attn_q_norm, attn_k_norm) */
    int moe;                /* may have expert layers (ARCH.expert_count) */
    int mla;                /* multi-head latent attention (ARCH.attention.kv_lora_rank) */
    int norm_topk;          /* the chosen experts' weights are renormalised unless ARCH.expert_weights_norm says */
    int nope_every;         /* every nope_every-th layer has no positions (NoPE); 0: none */
} GgufArch;

/* SmolLM3's files do not say which layers are NoPE: llama.cpp takes every
   fourth (layers 3, 7, ...), the checkpoints' default, and so do we. */
static const GgufArch gguf_archs[] = {
    {"llama", 0, 0, 0, 1, 0, 1, 0}, /* Llama 2 and 3, Mistral, TinyLlama, SmolLM2; with experts, Mixtral */
    {"qwen2", 1, 1, 0, 0, 0, 0, 0},
    {"qwen3", 1, 0, 1, 0, 0, 0, 0},
    {"qwen3moe", 1, 0, 1, 1, 0, 1, 0},
    {"deepseek2", 0, 0, 0, 1, 1, 0, 0},
    {"smollm3", 0, 0, 0, 0, 0, 0, 4},
};

/* Output row r of a head's rotary block comes from source row
   rope_source_row(r): rotate_half's dims m and m + rope_dim/2 become the
   adjacent pair (2m, 2m+1). Blocks of head_dim rows whose rotary part starts
   at offset; rows outside it stay. (./export reorders Hugging Face rows the
   same way.) */
static int64_t rope_source_row(int64_t r, int head_dim, int rope_dim, int offset) {
    int64_t head = r / head_dim, i = r % head_dim - offset;
    if (i < 0 || i >= rope_dim) return r;
    return head * head_dim + offset + (i % 2 ? rope_dim / 2 + i / 2 : i / 2);
}

/* The absorbed key of latent attention (FORMAT.md, attention.wk_b): per
   head h, the transpose of its dn key rows of kv_b [h·(dn+dv), lat]:
   out[(h·lat + i)·dn + j] = kv_b[(h·(dn+dv) + j)·lat + i]. */
static void mla_absorbed_key(const float *kv_b, int n_heads, int dn, int dv, int lat, float *out) {
    for (int64_t h = 0; h < n_heads; h++)
        for (int64_t j = 0; j < dn; j++)
            for (int64_t i = 0; i < lat; i++) out[(h * lat + i) * dn + j] = kv_b[(h * (dn + dv) + j) * lat + i];
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int ggml_to_type(uint32_t ggml) {
    switch (ggml) {
    case GGML_F32: return TYPE_F32;
    case GGML_F16: return TYPE_F16;
    case GGML_BF16: return TYPE_BF16;
    case GGML_Q8_0: return TYPE_Q8_0;
    case GGML_Q4_0: return TYPE_Q4_0;
    case GGML_Q4_1: return TYPE_Q4_1;
    case GGML_Q5_0: return TYPE_Q5_0;
    case GGML_Q5_1: return TYPE_Q5_1;
    case GGML_IQ4_NL: return TYPE_IQ4_NL;
    case GGML_Q2_K: return TYPE_Q2_K;
    case GGML_Q3_K: return TYPE_Q3_K;
    case GGML_Q4_K: return TYPE_Q4_K;
    case GGML_Q5_K: return TYPE_Q5_K;
    case GGML_Q6_K: return TYPE_Q6_K;
    case GGML_IQ4_XS: return TYPE_IQ4_XS;
    default: return -1;
    }
}

/* key = "ARCH.suffix" as an integer in [lo, hi]; *out unchanged when absent. */
static int gguf_arch_int(const Gguf *g, const char *arch, const char *suffix, int64_t lo, int64_t hi, int32_t *out,
                         char *err, size_t errlen) {
    char key[96];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = gguf_int(g, key, &v);
    if (rc == -1) return 0;
    if (rc == -2 || v < lo || v > hi) return seterr(err, errlen, "GGUF key %s %s", key, rc == -2 ? "is not an integer" : "is out of range");
    *out = (int32_t)v;
    return 0;
}

static int gguf_arch_float(const Gguf *g, const char *arch, const char *suffix, float *out, char *err, size_t errlen) {
    char key[96];
    double v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = gguf_float(g, key, &v);
    if (rc == -1) return 0;
    if (rc == -2 || !isfinite(v)) return seterr(err, errlen, "GGUF key %s is not a number", key);
    *out = (float)v;
    return 0;
}

/* The config from ARCH.* metadata; check_config judges the values. */
static int gguf_config(const Gguf *g, const GgufArch *arch, ModelConfig *c, char *err, size_t errlen) {
    const char *a = arch->arch;
    *c = (ModelConfig){.arch = ARCH_LLAMA, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .qkv_bias = arch->qkv_bias,
                       .qk_norm = arch->qk_norm};
    if (gguf_arch_int(g, a, "embedding_length", 1, 1 << 20, &c->dim, err, errlen) ||
        gguf_arch_int(g, a, "block_count", 1, 4096, &c->n_layers, err, errlen) ||
        gguf_arch_int(g, a, "attention.head_count", 1, 4096, &c->n_heads, err, errlen) ||
        gguf_arch_int(g, a, "feed_forward_length", 1, 1 << 20, &c->hidden_dim, err, errlen) ||
        gguf_arch_int(g, a, "context_length", 1, INT32_MAX, &c->max_seq_len, err, errlen) ||
        gguf_arch_float(g, a, "attention.layer_norm_rms_epsilon", &c->norm_eps, err, errlen) ||
        gguf_arch_float(g, a, "rope.freq_base", &c->rope_theta, err, errlen))
        return -1;
    if (!c->dim || !c->n_layers || !c->n_heads || !c->hidden_dim)
        return seterr(err, errlen, "GGUF file without %s.embedding_length, block_count, attention.head_count or feed_forward_length", a);
    if (!c->max_seq_len) c->max_seq_len = 4096;
    c->n_kv_heads = c->n_heads;
    c->head_dim = c->dim / c->n_heads;
    if (gguf_arch_int(g, a, "attention.head_count_kv", 1, 4096, &c->n_kv_heads, err, errlen) ||
        gguf_arch_int(g, a, "attention.key_length", 1, 4096, &c->head_dim, err, errlen))
        return -1;
    c->v_head_dim = c->head_dim;
    c->rope_dim = c->head_dim;
    if (gguf_arch_int(g, a, "attention.value_length", 1, 4096, &c->v_head_dim, err, errlen) ||
        gguf_arch_int(g, a, "rope.dimension_count", 0, 4096, &c->rope_dim, err, errlen))
        return -1;

    /* RoPE scaling: none, linear or YaRN (llama 3's comes as the rope_freqs tensor) */
    const char *scaling;
    size_t n;
    char key[96];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (!gguf_str(g, key, &scaling, &n) && !(n == 4 && !memcmp(scaling, "none", 4))) {
        if (n == 6 && !memcmp(scaling, "linear", 6)) c->rope_scaling = ROPE_SCALING_LINEAR;
        else if (n == 4 && !memcmp(scaling, "yarn", 4)) c->rope_scaling = ROPE_SCALING_YARN;
        else return seterr(err, errlen, "GGUF rope scaling '%.*s' is not supported (none, linear and yarn are)", (int)(n > 20 ? 20 : n), scaling);
        float log_mul = 0, attn_factor = 1;
        c->rope_beta_fast = 32, c->rope_beta_slow = 1;
        if (gguf_arch_float(g, a, "rope.scaling.factor", &c->rope_factor, err, errlen) ||
            gguf_arch_int(g, a, "rope.scaling.original_context_length", 1, INT32_MAX, &c->rope_orig_ctx, err, errlen) ||
            gguf_arch_float(g, a, "rope.scaling.yarn_beta_fast", &c->rope_beta_fast, err, errlen) ||
            gguf_arch_float(g, a, "rope.scaling.yarn_beta_slow", &c->rope_beta_slow, err, errlen) ||
            gguf_arch_float(g, a, "rope.scaling.yarn_log_multiplier", &log_mul, err, errlen) ||
            gguf_arch_float(g, a, "rope.scaling.attn_factor", &attn_factor, err, errlen))
            return -1;
        if (attn_factor != 1) return seterr(err, errlen, "GGUF %s.rope.scaling.attn_factor other than 1 is not supported", a);
        /* llama.cpp's yarn_log_multiplier is 0.1 mscale_all_dim, and it takes mscale to be the same */
        c->rope_mscale = c->rope_mscale_all_dim = 10 * log_mul;
    }

    if (arch->moe) {
        gguf_arch_int(g, a, "expert_count", 0, 4096, &c->n_experts, err, errlen);
        if (c->n_experts) {
            int32_t gating = 1;
            c->ffn_kind = FFN_MOE;
            c->moe_hidden_dim = c->hidden_dim;
            c->moe_layer_freq = 1;
            c->norm_topk_prob = arch->norm_topk;
            c->routed_scaling = 1;
            if (gguf_arch_int(g, a, "expert_used_count", 1, c->n_experts, &c->n_experts_used, err, errlen) ||
                gguf_arch_int(g, a, "expert_feed_forward_length", 1, 1 << 20, &c->moe_hidden_dim, err, errlen) ||
                gguf_arch_int(g, a, "expert_shared_count", 0, 64, &c->n_shared_experts, err, errlen) ||
                gguf_arch_int(g, a, "leading_dense_block_count", 0, c->n_layers, &c->first_k_dense, err, errlen) ||
                gguf_arch_float(g, a, "expert_weights_scale", &c->routed_scaling, err, errlen) ||
                gguf_arch_int(g, a, "expert_weights_norm", 0, 1, &c->norm_topk_prob, err, errlen) ||
                gguf_arch_int(g, a, "expert_gating_func", 0, 1000, &gating, err, errlen) ||
                gguf_arch_int(g, a, "expert_group_count", 0, c->n_experts, &c->n_expert_groups, err, errlen) ||
                gguf_arch_int(g, a, "expert_group_used_count", 0, c->n_experts, &c->topk_groups, err, errlen))
                return -1;
            if (!c->n_experts_used) return seterr(err, errlen, "GGUF file with experts but without %s.expert_used_count", a);
            if (gating > 2) return seterr(err, errlen, "GGUF %s.expert_gating_func %d is not supported (softmax and sigmoid are)", a, gating);
            c->router = gating == 2 ? ROUTER_SIGMOID : ROUTER_SOFTMAX;
        }
    }
    if (arch->mla) {
        int32_t k_mla = 0, v_mla = 0;
        c->attn_kind = ATTN_MLA;
        if (gguf_arch_int(g, a, "attention.kv_lora_rank", 0, 1 << 16, &c->kv_lora_rank, err, errlen) ||
            gguf_arch_int(g, a, "attention.q_lora_rank", 0, 1 << 16, &c->q_lora_rank, err, errlen) ||
            gguf_arch_int(g, a, "attention.key_length_mla", 0, 4096, &k_mla, err, errlen) ||
            gguf_arch_int(g, a, "attention.value_length_mla", 0, 4096, &v_mla, err, errlen))
            return -1;
        if (!c->kv_lora_rank) return seterr(err, errlen, "GGUF file without %s.attention.kv_lora_rank", a);
        /* newer converters describe the cache as one shared key/value head
           (key_length = latent + rotary) and the heads in key_length_mla */
        if (k_mla) c->head_dim = k_mla;
        if (v_mla) c->v_head_dim = v_mla;
        c->n_kv_heads = c->n_heads;
        c->qk_rope_head_dim = c->rope_dim;
        c->qk_nope_head_dim = c->head_dim - c->rope_dim;
    }
    return 0;
}

/* Our name for a GGUF tensor name, or "" for one we do not use. Returns 1
   for a tensor of experts, whose matrix for expert e is named with e. */
static int gguf_our_name(const GgufTensor *t, int expert, char *out, size_t len) {
    static const char *map[][2] = {
        {"attn_norm.weight", "attention_norm"},        {"ffn_norm.weight", "ffn_norm"},
        {"attn_q.weight", "attention.wq"},             {"attn_k.weight", "attention.wk"},
        {"attn_v.weight", "attention.wv"},             {"attn_output.weight", "attention.wo"},
        {"attn_q.bias", "attention.bq"},               {"attn_k.bias", "attention.bk"},
        {"attn_v.bias", "attention.bv"},               {"attn_q_norm.weight", "attention.q_norm"},
        {"attn_k_norm.weight", "attention.k_norm"},    {"attn_q_a.weight", "attention.wq_a"},
        {"attn_q_a_norm.weight", "attention.q_a_norm"}, {"attn_q_b.weight", "attention.wq_b"},
        {"attn_kv_a_mqa.weight", "attention.wkv_a"},   {"attn_kv_a_norm.weight", "attention.kv_a_norm"},
        {"attn_kv_b.weight", "attention.wkv_b"},       {"attn_k_b.weight", "attention.wk_b"},
        {"attn_v_b.weight", "attention.wv_b"},         {"ffn_gate.weight", "feed_forward.w1"},
        {"ffn_down.weight", "feed_forward.w2"},        {"ffn_up.weight", "feed_forward.w3"},
        {"ffn_gate_inp.weight", "feed_forward.router"}, {"exp_probs_b.bias", "feed_forward.router_bias"},
        {"ffn_gate_shexp.weight", "feed_forward.shared.w1"}, {"ffn_down_shexp.weight", "feed_forward.shared.w2"},
        {"ffn_up_shexp.weight", "feed_forward.shared.w3"},
    };
    static const char *experts[][2] = {
        {"ffn_gate_exps.weight", "w1"}, {"ffn_down_exps.weight", "w2"}, {"ffn_up_exps.weight", "w3"},
    };
    char name[GGUF_MAX_NAME + 1];
    snprintf(name, sizeof name, "%.*s", (int)t->name_len, t->name);
    out[0] = 0;
    if (!strcmp(name, "token_embd.weight")) snprintf(out, len, "tok_embeddings");
    else if (!strcmp(name, "output.weight")) snprintf(out, len, "output");
    else if (!strcmp(name, "output_norm.weight")) snprintf(out, len, "norm");
    else if (!strcmp(name, "rope_freqs.weight")) snprintf(out, len, "rope_freqs");
    int layer, at = 0;
    if (sscanf(name, "blk.%d.%n", &layer, &at) != 1 || at == 0 || layer < 0) return 0;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(name + at, map[i][0])) snprintf(out, len, "layers.%d.%s", layer, map[i][1]);
    for (size_t i = 0; i < sizeof experts / sizeof experts[0]; i++)
        if (!strcmp(name + at, experts[i][0])) {
            snprintf(out, len, "layers.%d.feed_forward.experts.%d.%s", layer, expert, experts[i][1]);
            return 1;
        }
    return 0;
}

/* The tensors we use, renamed, outermost dimension first. */
static int gguf_tensors(Model *m, const Gguf *g, char *err, size_t errlen) {
    int cap = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const GgufTensor *gt = &g->tensors[i];
        char name[TENSOR_NAME_BYTES];
        int experts = gguf_our_name(gt, 0, name, sizeof name);
        if (!name[0]) continue;
        int type = ggml_to_type(gt->type), nd = (int)gt->n_dims;
        if (type < 0)
            return seterr(err, errlen, "tensor '%.*s' is %s, a weight type this engine does not run (it runs f32, f16, "
                          "bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl and iq4_xs)",
                          (int)gt->name_len, gt->name, ggml_type_name(gt->type));
        if (nd < 1 || nd > 3 || (experts && nd != 3))
            return seterr(err, errlen, "tensor '%.*s' has %d dimensions", (int)gt->name_len, gt->name, nd);
        int64_t shape[3];
        for (int d = 0; d < nd; d++) {
            if (gt->ne[d] == 0 || gt->ne[d] > (1ull << 40))
                return seterr(err, errlen, "tensor '%.*s' has an impossible shape", (int)gt->name_len, gt->name);
            shape[nd - 1 - d] = (int64_t)gt->ne[d];
        }
        if (tensor_bytes(type, nd, shape) != gt->nbytes)
            return seterr(err, errlen, "tensor '%.*s' does not fit its type and shape", (int)gt->name_len, gt->name);
        /* one matrix per expert, or a 3-D tensor's rows one after another */
        int64_t parts = 1, rows = nd == 1 ? 0 : nd == 2 ? shape[0] : shape[0] * shape[1], cols = shape[nd - 1];
        if (experts) parts = shape[0], rows = shape[1];
        if (parts > 4096) return seterr(err, errlen, "tensor '%.*s' has more than 4096 experts", (int)gt->name_len, gt->name);
        for (int64_t e = 0; e < parts; e++) {
            if (experts) gguf_our_name(gt, (int)e, name, sizeof name);
            if (add_tensor(m, &cap, name, type, rows, cols, (const uint8_t *)gt->data + (size_t)e * (gt->nbytes / (size_t)parts)))
                return seterr(err, errlen, "out of memory");
        }
    }
    return 0;
}

/* The tensors the loader writes itself (see above), into one block it owns:
   the first pass sizes it, the second fills it. */
static int gguf_convert(Model *m, const GgufArch *arch, char *err, size_t errlen) {
    const ModelConfig *c = &m->cfg;
    int lat = c->kv_lora_rank, dn = c->qk_nope_head_dim, dv = c->v_head_dim, cap = m->n_tensors;
    size_t total = 0, kv_rows = (size_t)c->n_heads * (size_t)(dn + dv);
    char name[96];
    float *kv_b = NULL;
    int rc = -1;
    for (int pass = 0; pass < 2; pass++) {
        uint8_t *at = m->owned;
        for (int i = 0; arch->rotate_half && i < m->n_tensors; i++) {
            Tensor *t = &m->tensors[i];
            if (!ends_with(t->name, ".attention.wq") && !ends_with(t->name, ".attention.wk") &&
                !ends_with(t->name, ".attention.bq") && !ends_with(t->name, ".attention.bk") &&
                !ends_with(t->name, ".attention.q_norm") && !ends_with(t->name, ".attention.k_norm"))
                continue;
            if (t->shape[0] % c->head_dim) {
                seterr(err, errlen, "tensor '%s' is not a whole number of heads", t->name);
                goto done;
            }
            size_t row = t->nbytes / (size_t)t->shape[0], bytes = (t->nbytes + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN;
            if (pass) {
                for (int64_t r = 0; r < t->shape[0]; r++)
                    memcpy(at + (size_t)r * row, (const uint8_t *)t->data + (size_t)rope_source_row(r, c->head_dim, c->rope_dim, 0) * row, row);
                t->data = at;
                at += bytes;
            } else total += bytes;
        }
        for (int l = 0; c->attn_kind == ATTN_MLA && l < c->n_layers; l++) {
            snprintf(name, sizeof name, "layers.%d.attention.wk_b", l);
            if (model_tensor(m, name)) continue;
            snprintf(name, sizeof name, "layers.%d.attention.wkv_b", l);
            const Tensor *t = model_tensor(m, name);
            if (!t) continue; /* model_bind names what is missing */
            if (t->ndim != 2 || (size_t)t->shape[0] != kv_rows || t->shape[1] != lat) {
                seterr(err, errlen, "tensor '%s' has the wrong shape (expected [%zu, %d])", name, kv_rows, lat);
                goto done;
            }
            if ((uint64_t)kv_rows * lat > SIZE_MAX / sizeof(float) / 4) { /* a 32-bit system */
                seterr(err, errlen, "tensor '%s' is too large to convert on this system", name);
                goto done;
            }
            size_t bytes = ((size_t)c->n_heads * lat * dn * sizeof(float) + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN;
            if (!pass) {
                total += bytes;
                continue;
            }
            if (!kv_b && !(kv_b = malloc(kv_rows * lat * sizeof(float)))) {
                seterr(err, errlen, "out of memory");
                goto done;
            }
            for (size_t r = 0; r < kv_rows; r++)
                dequantize_row(t->type, (const uint8_t *)t->data + r * (t->nbytes / kv_rows), kv_b + r * lat, lat);
            mla_absorbed_key(kv_b, c->n_heads, dn, dv, lat, (float *)at);
            snprintf(name, sizeof name, "layers.%d.attention.wk_b", l);
            if (add_tensor(m, &cap, name, TYPE_F32, (int64_t)c->n_heads * lat, dn, at)) {
                seterr(err, errlen, "out of memory");
                goto done;
            }
            at += bytes;
        }
        if (arch->nope_every) { /* the per-layer position schemes, as layer_pos in our files */
            size_t bytes = ((size_t)c->n_layers + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN;
            if (pass) {
                for (int l = 0; l < c->n_layers; l++) at[l] = (l + 1) % arch->nope_every ? POS_ROPE : POS_NONE;
                if (add_tensor(m, &cap, "layer_pos", TYPE_U8, 0, c->n_layers, at)) {
                    seterr(err, errlen, "out of memory");
                    goto done;
                }
                at += bytes;
            } else total += bytes;
        }
        if (!pass && total && posix_memalign(&m->owned, MODEL_ALIGN, total)) {
            m->owned = NULL;
            seterr(err, errlen, "out of memory converting the tensors");
            goto done;
        }
    }
    rc = 0;
done:
    free(kv_b);
    return rc;
}

static int load_gguf(Model *m, char *err, size_t errlen) {
    Gguf g;
    char why[256];
    if (gguf_parse(&g, m->map, m->map_bytes, why, sizeof why)) return seterr(err, errlen, "%s", why);
    int rc = -1;
    const char *arch_name;
    size_t arch_len;
    const GgufArch *arch = NULL;
    char names[96] = "";
    if (gguf_str(&g, "general.architecture", &arch_name, &arch_len)) {
        seterr(err, errlen, "GGUF file without general.architecture");
        goto done;
    }
    for (size_t i = 0; i < sizeof gguf_archs / sizeof gguf_archs[0]; i++) {
        if (strlen(gguf_archs[i].arch) == arch_len && !memcmp(gguf_archs[i].arch, arch_name, arch_len)) arch = &gguf_archs[i];
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", gguf_archs[i].arch);
    }
    if (!arch) {
        seterr(err, errlen, "GGUF architecture '%.*s' is not supported (supported: %s)", (int)(arch_len > 40 ? 40 : arch_len), arch_name, names);
        goto done;
    }
    ModelConfig *c = &m->cfg;
    if (gguf_config(&g, arch, c, err, errlen) || gguf_tensors(m, &g, err, errlen)) goto done;
    const Tensor *emb = model_tensor(m, "tok_embeddings");
    if (!emb || emb->ndim != 2) {
        seterr(err, errlen, "GGUF file without a token_embd.weight matrix");
        goto done;
    }
    c->vocab_size = (int32_t)(emb->shape[0] < (1 << 24) ? emb->shape[0] : -1);
    c->tied_embeddings = !model_tensor(m, "output");
    if (check_config(c, err, errlen) || gguf_convert(m, arch, err, errlen) || model_bind(m, err, errlen)) goto done;
    char terr[256];
    m->tokenizer = gguf_find(&g, "tokenizer.ggml.model") ? tokenizer_from_gguf(&g, "its tokenizer", terr, sizeof terr) : NULL;
    if (gguf_find(&g, "tokenizer.ggml.model") && !m->tokenizer) {
        seterr(err, errlen, "%s", terr);
        goto done;
    }
    if (m->tokenizer && tokenizer_n_vocab(m->tokenizer) > c->vocab_size) {
        seterr(err, errlen, "the tokenizer has %d tokens, the model only %d", tokenizer_n_vocab(m->tokenizer), c->vocab_size);
        goto done;
    }
    m->source = SOURCE_GGUF;
    rc = 0;
done:
    gguf_free(&g);
    return rc;
}

/* The whole file is mapped, so it must fit the address space: on a 32-bit
   system (armhf) a file over 4 GiB cannot be mapped at all, and one of 2-4
   GiB only where that much address space is free in one piece. Those are
   refused with one line naming the size, never truncated. Offsets and sizes
   are 64-bit throughout (off_t is, with _FILE_OFFSET_BITS=64), and every
   offset is checked against the mapped size before it becomes a pointer. */
int model_load(Model *m, const char *path, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    char why[256], size[32];
    const int bits = (int)sizeof(void *) * 8;
    int fd = open(path, O_RDONLY);
    if (fd < 0 && errno == EOVERFLOW) /* a 32-bit build without _FILE_OFFSET_BITS=64 */
        return seterr(err, errlen, "model '%s' is over 2 GiB and this build cannot open it (build with -D_FILE_OFFSET_BITS=64)", path);
    if (fd < 0) return seterr(err, errlen, "cannot open model '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return seterr(err, errlen, "model '%s' is not a regular file", path);
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return seterr(err, errlen, "model '%s' is %s: more than this %d-bit system can map", path,
                      size_text((uint64_t)st.st_size, size, sizeof size), bits);
    }
    m->map_bytes = (size_t)st.st_size;
    if (m->map_bytes == 0) {
        close(fd);
        return seterr(err, errlen, "model '%s' is empty", path);
    }
    m->map = mmap(NULL, m->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (m->map == MAP_FAILED) {
        m->map = NULL;
        m->map_bytes = 0;
        size_text((uint64_t)st.st_size, size, sizeof size);
        if (map_errno == ENOMEM && bits < 64)
            return seterr(err, errlen, "model '%s' is %s: more than this %d-bit system can map (no free address range "
                          "that large)", path, size, bits);
        if (map_errno == ENOMEM)
            return seterr(err, errlen, "cannot map model '%s' (%s): out of address space (is `ulimit -v` set?)", path, size);
        return seterr(err, errlen, "cannot map model '%s' (%s): %s", path, size, strerror(map_errno));
    }
    int rc = m->map_bytes >= 4 && !memcmp(m->map, MODEL_MAGIC, 4) ? load_native(m, why, sizeof why)
             : m->map_bytes >= 4 && !memcmp(m->map, "GGUF", 4)  ? load_gguf(m, why, sizeof why)
                                                                   : load_llama2c(m, why, sizeof why);
    if (rc) {
        model_free(m);
        return seterr(err, errlen, "model '%s': %s", path, why);
    }
    return 0;
}

/* The matrices model_repack may interleave: every q8_0/q4_0 one that only
   matmul reads (not the embedding table, whose rows are looked up, nor the
   latent up-projections, whose rows attention reads one by one), with rows
   in eights. Calls fn for each; stops at a nonzero return. */
static int each_repackable(Model *m, int (*fn)(Model *m, Matrix *w, void *arg), void *arg) {
    const ModelConfig *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        Layer *L = &m->layers[l];
        Matrix *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w1, &L->w2, &L->w3, &L->wq_a, &L->wq_b, &L->wkv_a};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            if (fn(m, ws[i], arg)) return 1;
        for (int e = 0; L->experts && e < c->n_experts; e++)
            if (fn(m, &L->experts[e].w1, arg) || fn(m, &L->experts[e].w2, arg) || fn(m, &L->experts[e].w3, arg)) return 1;
    }
    return fn(m, &m->output, arg);
}

static int repackable(const Matrix *w) {
    return (w->type == TYPE_Q8_0 || w->type == TYPE_Q4_0) && !w->interleaved && w->rows > 0 && w->rows % 8 == 0 && w->cols % QK == 0;
}

static int count_repack(Model *m, Matrix *w, void *arg) {
    (void)m;
    if (repackable(w)) *(size_t *)arg += (size_t)w->rows * w->row_bytes;
    return 0;
}

static int do_repack(Model *m, Matrix *w, void *arg) {
    if (!repackable(w)) return 0;
    uint8_t **at = arg, *out = *at;
    int blocks = w->cols / QK;
    for (int g = 0; g < w->rows / 8; g++)
        repack_x8((const uint8_t *)w->data + (size_t)g * 8 * w->row_bytes, w->type, blocks, out + (size_t)g * 8 * w->row_bytes);
    /* The mapped original is not read again: give its whole pages back, or
       the matrix would sit in memory twice (the kernel re-reads them from
       the file should anything touch them). */
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), from = (uintptr_t)w->data, to = from + (size_t)w->rows * w->row_bytes;
    uintptr_t map = (uintptr_t)m->map;
    from = (from + page - 1) / page * page, to = to / page * page;
    if (m->map && from >= map && to <= map + m->map_bytes && to > from) madvise((void *)from, to - from, MADV_DONTNEED);
    w->data = out;
    w->interleaved = 1;
    *at = out + (size_t)w->rows * w->row_bytes;
    return 0;
}

int model_repack_pays(const Model *m) { return m->kernels->repack_pays; }

long long model_repack(Model *m, size_t limit) {
    size_t total = 0;
    each_repackable(m, count_repack, &total);
    if (!total || total > limit) return 0;
    void *buf = NULL;
    if (posix_memalign(&buf, MODEL_ALIGN, total)) return -1;
    uint8_t *at = buf;
    each_repackable(m, do_repack, &at);
    free(m->repacked);
    m->repacked = buf;
    m->repacked_bytes += total;
    return (long long)total;
}

void model_free(Model *m) {
    if (m->tokenizer) tokenizer_free(m->tokenizer);
    free(m->layers);
    free(m->experts);
    free(m->tensors);
    free(m->owned);
    free(m->repacked);
    if (m->map) munmap(m->map, m->map_bytes);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------------------
 * Sequences and contexts.
 */
static int rectified(const Positions *p) { return p->scheme == POS_REROPE || p->scheme == POS_LEAKY; }

size_t context_kv_bytes_per_token(const Context *ctx) {
    const ModelConfig *c = &ctx->model->cfg;
    size_t w = kv_key_width(c) + kv_value_width(c) + (rectified(&ctx->positions) ? kv_far_width(c) : 0);
    return (size_t)c->n_layers * type_row_bytes(ctx->kv_type, (int64_t)w);
}

int sequence_init(Sequence *s, const Context *ctx, int capacity, char *err, size_t errlen) {
    const ModelConfig *c = &ctx->model->cfg;
    memset(s, 0, sizeof *s);
    if (capacity <= 0) return seterr(err, errlen, "context length must be positive");
    int kt = ctx->kv_type;
    if (!kv_type_fits(c, kt))
        return seterr(err, errlen, "a %s KV cache needs head sizes that are multiples of %d (this model's: %d)", type_name(kt), QK,
                      c->attn_kind == ATTN_MLA ? c->qk_rope_head_dim : c->head_dim);
    /* calloc checks its own product; this one may not fit a 32-bit size_t */
    uint64_t positions = (uint64_t)capacity * (uint64_t)c->n_layers;
    size_t vw = kv_value_width(c);
    s->kv_type = kt;
    if (positions <= SIZE_MAX) {
        s->k = calloc((size_t)positions, type_row_bytes(kt, (int64_t)kv_key_width(c)));
        s->v = vw ? calloc((size_t)positions, type_row_bytes(kt, (int64_t)vw)) : NULL;
        if (rectified(&ctx->positions)) s->k_far = calloc((size_t)positions, type_row_bytes(kt, (int64_t)kv_far_width(c)));
    }
    if (!s->k || (vw && !s->v) || (rectified(&ctx->positions) && !s->k_far)) {
        sequence_free(s);
        double bytes = (double)capacity * (double)context_kv_bytes_per_token(ctx);
        seterr(err, errlen, "cannot allocate %.1f %s for a KV cache of %d tokens", bytes / (bytes >= 1e9 ? 1e9 : 1e6),
               bytes >= 1e9 ? "GB" : "MB", capacity);
        return -2;
    }
    s->capacity = capacity;
    return 0;
}

void sequence_free(Sequence *s) {
    free(s->k);
    free(s->v);
    free(s->k_far);
    memset(s, 0, sizeof *s);
}

/* The rotation speed of pair m, with the model's scaling applied, for a
   sequence of len tokens (only dynamic NTK depends on it). */
static double rope_freq(const ModelConfig *cfg, int m, int len) {
    double theta = cfg->rope_theta, d = cfg->rope_dim, s = cfg->rope_factor;
    /* NTK-aware scaling raises the base so the slowest pair slows by about
       the factor while the fastest keep their speed: base * s^(d / (d - 2)).
       Dynamic NTK does so only past the original context, with the factor
       growing with the length: s * len / L - (s - 1). */
    if (cfg->rope_scaling == ROPE_SCALING_NTK) theta *= pow(s, d / (d - 2));
    if (cfg->rope_scaling == ROPE_SCALING_DYNAMIC && len > cfg->rope_orig_ctx)
        theta *= pow(s * len / cfg->rope_orig_ctx - (s - 1), d / (d - 2));
    double freq = pow(theta, -2.0 * m / d);
    if (cfg->rope_scaling == ROPE_SCALING_LINEAR) freq /= cfg->rope_factor;
    if (cfg->rope_scaling == ROPE_SCALING_LLAMA3) {
        /* Llama 3: rotations with a wavelength longer than orig_ctx /
           low_freq_factor (too slow to have turned much in training) are
           slowed by the factor, as in linear scaling; those shorter than
           orig_ctx / high_freq_factor are kept; in between, the two blend
           linearly in orig_ctx / wavelength. */
        double wavelen = 2 * M_PI / freq, ctx = cfg->rope_orig_ctx;
        double lo = cfg->rope_low_freq_factor, hi = cfg->rope_high_freq_factor;
        if (wavelen > ctx / lo) freq /= cfg->rope_factor;
        else if (wavelen >= ctx / hi) {
            double smooth = (ctx / wavelen - lo) / (hi - lo);
            freq = (1 - smooth) * freq / cfg->rope_factor + smooth * freq;
        }
    }
    if (cfg->rope_scaling == ROPE_SCALING_YARN) {
        /* YaRN (as transformers computes it): pairs that turn more than
           beta_fast times over the original context keep their speed, those
           that turn less than beta_slow times are slowed by the factor, and a
           linear ramp over the pair index blends the ones between. */
        double d = cfg->rope_dim, lb = 2 * log(cfg->rope_theta), ctx = cfg->rope_orig_ctx;
        double lo = floor(d * log(ctx / (cfg->rope_beta_fast * 2 * M_PI)) / lb);
        double hi = ceil(d * log(ctx / (cfg->rope_beta_slow * 2 * M_PI)) / lb);
        if (lo < 0) lo = 0;
        if (hi > d - 1) hi = d - 1;
        if (hi == lo) hi += 0.001;
        double ramp = (m - lo) / (hi - lo);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        freq = freq / cfg->rope_factor * ramp + freq * (1 - ramp);
    }
    return freq;
}

/* YaRN's attention factor: the rotations are scaled by it, so both q
   and k are, and every rotary score by its square (transformers' convention;
   0.1 ln(s) + 1, or the ratio of the two mscale terms when both are given). */
static double rope_magnitude(const ModelConfig *cfg) {
    if (cfg->rope_scaling != ROPE_SCALING_YARN || cfg->rope_factor <= 1) return 1.0;
    double ln_s = log(cfg->rope_factor);
    if (cfg->rope_mscale > 0 && cfg->rope_mscale_all_dim > 0)
        return (0.1 * cfg->rope_mscale * ln_s + 1) / (0.1 * cfg->rope_mscale_all_dim * ln_s + 1);
    return 0.1 * ln_s + 1;
}

/* cos and sin of angle * freq(m) for every pair, for a sequence of len
   tokens: one token's rotation. Computed for each token of a batch rather
   than kept for every position of the context: its cost is that of the
   cosines, small beside the token's matrix products, and a context of any
   length takes no time or memory to set up. */
static void rope_row(const Context *c, double angle, int len, float *cos_out, float *sin_out) {
    const Model *model = c->model;
    const ModelConfig *cfg = &model->cfg;
    double mag = rope_magnitude(cfg);
    int own_speeds = cfg->rope_scaling == ROPE_SCALING_DYNAMIC && len > cfg->rope_orig_ctx;
    for (int m = 0; m < cfg->rope_dim / 2; m++) {
        double freq = own_speeds ? rope_freq(cfg, m, len) : c->rope_speeds[m];
        double a = angle * freq / (model->rope_divisors ? model->rope_divisors[m] : 1.0);
        cos_out[m] = (float)(mag * cos(a));
        sin_out[m] = (float)(mag * sin(a));
    }
}

void context_free(Context *c) {
    if (!c) return;
    pool_free(c->pool);
    free(c->rope_speeds);
    free(c->x); free(c->xb); free(c->xb2); free(c->q); free(c->k); free(c->v); free(c->hb); free(c->hb2);
    free(c->xq); free(c->xk); free(c->pos); free(c->tok_cos); free(c->tok_sin); free(c->scores); free(c->logits);
    free(c->q_far); free(c->far_cos); free(c->far_sin); free(c->kfar_cos); free(c->kfar_sin); free(c->k_far_row);
    free(c->qa); free(c->mla_work); free(c->mla_q8); free(c->mla_kv); free(c->mla_lat);
    free(c->router_logits); free(c->route_w); free(c->route_id); free(c->moe_in); free(c->moe_out); free(c->moe_tokens);
    free(c->feed_seqs);
    free(c);
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* context_new's allocations, counted so a program can report its memory. */
/* n * m elements of `each` bytes, NULL when out of memory or when the size
   does not fit size_t (a 32-bit system with large dimensions). */
static void *context_alloc(Context *c, size_t n, size_t m, size_t each) {
    if ((m && n > SIZE_MAX / m) || (each && n * m > SIZE_MAX / each)) return NULL;
    size_t bytes = n * m * each;
    void *p = malloc(bytes ? bytes : 1);
    if (p) c->scratch_bytes += bytes;
    return p;
}

Context *context_new(const Model *m, int ctx_len, int max_batch, int max_logits, int n_threads,
                     const Positions *positions, char *err, size_t errlen) {
    const ModelConfig *cfg = &m->cfg;
    if (ctx_len <= 0 || max_batch <= 0 || max_logits <= 0 || n_threads <= 0) {
        seterr(err, errlen, "context sizes must be positive");
        return NULL;
    }
    if (check_config(cfg, err, errlen)) return NULL; /* again: a program may have changed the rotary settings */
    Positions pos = positions ? *positions : (Positions){POS_MODEL, 0, 1.0f, 0};
    if (pos.scheme < POS_MODEL || pos.scheme > POS_LEAKY || pos.window < 0 || pos.logn < 0 || pos.logn == 1 ||
        !(pos.leaky_k >= 1)) {
        seterr(err, errlen, "invalid position settings (window >= 0, leaky K >= 1, log-n length 0 or above 1)");
        return NULL;
    }
    Context *c = calloc(1, sizeof *c);
    if (!c) { seterr(err, errlen, "out of memory"); return NULL; }
    c->model = m;
    c->kern = m->kernels;
    c->positions = pos;
    c->ctx_len = ctx_len;
    c->kv_type = TYPE_F32;
    c->max_batch = max_batch;
    c->max_logits = max_logits;
    double scale = 1 / sqrt((double)cfg->head_dim);
    if (cfg->attn_kind == ATTN_MLA && cfg->rope_scaling == ROPE_SCALING_YARN && cfg->rope_mscale_all_dim > 0 &&
        cfg->rope_factor > 1) { /* DeepSeek's YaRN sharpens the softmax by mscale^2 (docs/POSITIONS.md) */
        double mscale = 0.1 * cfg->rope_mscale_all_dim * log(cfg->rope_factor) + 1;
        scale *= mscale * mscale;
    }
    c->attn_scale = (float)scale;
    int64_t q_dim = (int64_t)cfg->n_heads * cfg->head_dim, att_dim = (int64_t)cfg->n_heads * cfg->v_head_dim;
    int64_t ffn = max64(cfg->hidden_dim, (int64_t)cfg->moe_hidden_dim * max64(cfg->n_shared_experts, 1));
    int64_t wide = max64(max64(max64(cfg->dim, q_dim), max64(att_dim, ffn)), max64(cfg->q_lora_rank, cfg->kv_lora_rank));
    int64_t kv_in = max64((int64_t)cfg->n_kv_heads * cfg->head_dim, (int64_t)kv_key_width(cfg));
    size_t B = (size_t)max_batch, half = (size_t)(cfg->rope_dim / 2);
    c->pool = pool_new(n_threads);
#if defined(MODEL_BLIS)
    bli_thread_set_num_threads(1); /* each pool thread makes its own single-threaded calls */
#endif
    c->rope_speeds = context_alloc(c, (half ? half : 1), 1, sizeof(double));
    c->x = context_alloc(c, B, cfg->dim, sizeof(float));
    c->xb = context_alloc(c, B, wide, sizeof(float));
    c->xb2 = context_alloc(c, B, cfg->dim, sizeof(float));
    c->q = context_alloc(c, B, q_dim, sizeof(float));
    c->k = context_alloc(c, B, kv_in, sizeof(float));
    c->v = context_alloc(c, B, (size_t)cfg->n_kv_heads * cfg->v_head_dim, sizeof(float));
    c->hb = context_alloc(c, B, ffn, sizeof(float));
    c->hb2 = context_alloc(c, B, ffn, sizeof(float));
    c->xq = context_alloc(c, B, ((size_t)wide / QK + 1), sizeof(BlockQ8A));
    c->xk = context_alloc(c, B, ((size_t)wide / QK_K + 1), sizeof(BlockQ8K));
    c->pos = context_alloc(c, B, 1, sizeof(int));
    c->tok_cos = context_alloc(c, B, (half ? half : 1), sizeof(float));
    c->tok_sin = context_alloc(c, B, (half ? half : 1), sizeof(float));
    int n_threads_real = c->pool ? c->pool->n_threads : 1;
    c->scores_stride = (size_t)(ATTN_TILE + 2) * (cfg->attn_kind == ATTN_MLA ? 1 : cfg->n_heads / cfg->n_kv_heads);
    c->scores = context_alloc(c, (size_t)n_threads_real, c->scores_stride, sizeof(float));
    int extra_ok = 1;
    if (cfg->attn_kind == ATTN_MLA) {
        size_t lat = (size_t)cfg->kv_lora_rank, widest = (size_t)max64(cfg->qk_nope_head_dim, cfg->kv_lora_rank);
        if (cfg->q_lora_rank) extra_ok &= !!(c->qa = context_alloc(c, B, cfg->q_lora_rank, sizeof(float)));
        extra_ok &= !!(c->mla_work = context_alloc(c, (size_t)n_threads_real, (2 * lat + cfg->qk_rope_head_dim), sizeof(float)));
        extra_ok &= !!(c->mla_q8 = context_alloc(c, (size_t)n_threads_real, 1, activation_bytes(widest)));
        uint64_t expanded = (uint64_t)ctx_len * cfg->n_heads * (cfg->qk_nope_head_dim + cfg->v_head_dim);
        if (expanded * sizeof(float) <= ((uint64_t)1 << 29)) { /* up to 512 MiB; beyond, prefill stays absorbed */
            extra_ok &= !!(c->mla_kv = context_alloc(c, expanded, 1, sizeof(float)));
            extra_ok &= !!(c->mla_lat = context_alloc(c, B, lat, sizeof(float)));
        }
    }
    if (cfg->ffn_kind == FFN_MOE) {
        extra_ok &= !!(c->router_logits = context_alloc(c, B, cfg->n_experts, sizeof(float)));
        extra_ok &= !!(c->route_w = context_alloc(c, B, cfg->n_experts_used, sizeof(float)));
        extra_ok &= !!(c->route_id = context_alloc(c, B, cfg->n_experts_used, sizeof(int)));
        extra_ok &= !!(c->moe_in = context_alloc(c, B, cfg->dim, sizeof(float)));
        extra_ok &= !!(c->moe_out = context_alloc(c, B, cfg->dim, sizeof(float)));
        extra_ok &= !!(c->moe_tokens = context_alloc(c, B, 1, sizeof(int)));
    }
    c->logits = context_alloc(c, (size_t)max_logits, cfg->vocab_size, sizeof(float));
    c->feed_seqs = context_alloc(c, B, 1, sizeof(Sequence *));
    if (rectified(&pos)) {
        c->q_far = context_alloc(c, B, q_dim, sizeof(float));
        c->far_cos = context_alloc(c, B, (half ? half : 1), sizeof(float));
        c->far_sin = context_alloc(c, B, (half ? half : 1), sizeof(float));
        c->kfar_cos = context_alloc(c, B, (half ? half : 1), sizeof(float));
        c->kfar_sin = context_alloc(c, B, (half ? half : 1), sizeof(float));
        c->k_far_row = context_alloc(c, kv_far_width(cfg), 1, sizeof(float));
        if (!c->q_far || !c->far_cos || !c->far_sin || !c->kfar_cos || !c->kfar_sin || !c->k_far_row) {
            context_free(c);
            seterr(err, errlen, "out of memory for the run state");
            return NULL;
        }
    }
    if (!extra_ok || !c->pool || !c->rope_speeds || !c->x || !c->xb || !c->xb2 || !c->q || !c->k || !c->v ||
        !c->hb || !c->hb2 || !c->xq || !c->xk || !c->pos || !c->tok_cos || !c->tok_sin || !c->scores || !c->logits ||
        !c->feed_seqs) {
        context_free(c);
        seterr(err, errlen, "out of memory for the run state");
        return NULL;
    }
    for (size_t i = 0; i < half; i++) c->rope_speeds[i] = rope_freq(cfg, (int)i, 1);
    return c;
}

/* ---------------------------------------------------------------------------
 * Matrix multiplication: out[t][r] = W[r] . in[t] for a batch of tokens and
 * one or more matrices that read the same input (q/k/v, gate/up), so the
 * input is quantized once and one pool job covers them all. Threads split the
 * rows; each output is one dot product, computed the same way whatever the
 * split or the batch size, so results are bit-identical for any --threads
 * and a token gives the same numbers in a prompt batch as alone.
 */
typedef struct {
    float *out;
    const Matrix *w;
} MatmulOut;

typedef struct {
    const float *in;
    const BlockQ8A *inq;
    const BlockQ8K *ink;
    int n, cols;
    const MatmulOut *outs;
    int n_outs;
    int64_t total_rows;
    const Kernels *kern;
} MatmulJob;

static inline float row_dot(const Kernels *kern, const Matrix *w, int r, const float *x, const void *xq) {
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
    float out;
    if (type_is_quantized(w->type)) kern->dot_quant_rows(row, w->type, xq, 0, 1, w->cols, &out);
    else kern->gemm_float(row, w->type, 0, 1, x, 0, 1, w->cols, &out, 1);
    return out;
}

#define MATMUL_TILE 16 /* rows kept hot in cache while the batch streams past */
#define MODEL_BLIS_MIN_TOKENS 16 /* make BLIS=1: smaller batches stay on gemm_float */

static void matmul_task(void *arg, int ith, int nth) {
    const MatmulJob *job = arg;
    int64_t lo, hi;
    split_range(job->total_rows, ith, nth, MATMUL_TILE, &lo, &hi);
    int64_t first = 0; /* first global row of the current matrix */
    size_t blocks = (size_t)job->cols / QK;
    for (int o = 0; o < job->n_outs && lo < hi; o++) {
        const Matrix *w = job->outs[o].w;
        int64_t end = first + w->rows;
        for (int64_t r0 = lo > first ? lo : first; r0 < hi && r0 < end; r0 += MATMUL_TILE) {
            int64_t r1 = r0 + MATMUL_TILE;
            if (r1 > hi) r1 = hi;
            if (r1 > end) r1 = end;
            if (w->interleaved) { /* sixteen rows (two groups of eight) at a time, up to eight tokens each call (tiles start at multiples of 8) */
                size_t group_bytes = 8 * w->row_bytes;
                for (int t = 0; t < job->n; t += 8) {
                    int k = job->n - t < 8 ? job->n - t : 8;
                    for (int64_t g = r0; g < r1; g += 16)
                        job->kern->gemm_x8((const uint8_t *)w->data + (size_t)(g - first) * w->row_bytes, w->type, group_bytes,
                                           r1 - g >= 16 ? 2 : 1, job->inq + (size_t)t * blocks, blocks, k, (int)blocks,
                                           job->outs[o].out + (size_t)t * w->rows + (g - first), (size_t)w->rows);
                }
                continue;
            }
#if defined(MODEL_BLIS)
            /* The thread's rows of an f32 matrix against a batch of at least
               MODEL_BLIS_MIN_TOKENS, in one BLIS call: out^T = W x^T. BLIS
               sums in its own order, so such a batch's numbers differ in the
               last bits from decoding the same tokens one at a time. */
            if (w->type == TYPE_F32 && job->n >= MODEL_BLIS_MIN_TOKENS) {
                int64_t last = hi < end ? hi : end;
                float one = 1.0f, zero = 0.0f;
                bli_sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, job->n, last - r0, w->cols, &one, (float *)job->in, job->cols, 1,
                          (float *)w->data + (size_t)(r0 - first) * w->cols, 1, w->cols, &zero,
                          job->outs[o].out + (r0 - first), w->rows, 1);
                break;
            }
#endif
            if (!type_is_quantized(w->type)) { /* the tile of rows against the whole batch, register-blocked */
                job->kern->gemm_float((const uint8_t *)w->data + (size_t)(r0 - first) * w->row_bytes, w->type, w->row_bytes, (int)(r1 - r0),
                           job->in, (size_t)job->cols, job->n, w->cols, job->outs[o].out + (r0 - first), (size_t)w->rows);
                continue;
            }
            /* token t's activations in the form this type takes, tokens `stride` blocks apart */
            int k_form = TYPE_INFO[w->type].act == ACT_Q8K;
            size_t stride = k_form ? (size_t)job->cols / QK_K : blocks;
#define TOKEN_ACT(t) (k_form ? (const void *)(job->ink + (size_t)(t) * stride) : (const void *)(job->inq + (size_t)(t) * stride))
            int t = 0;
            for (; t + 4 <= job->n; t += 4) { /* four tokens per weight row: the row is loaded and unpacked once */
                float *y = job->outs[o].out + (size_t)t * w->rows - first, r4[4];
                for (int64_t r = r0; r < r1; r++) {
                    const void *row = (const uint8_t *)w->data + (size_t)(r - first) * w->row_bytes;
                    job->kern->dot_quant_rows(row, w->type, TOKEN_ACT(t), stride, 4, w->cols, r4);
                    for (int k = 0; k < 4; k++) y[(size_t)k * w->rows + r] = r4[k];
                }
            }
            for (; t < job->n; t++) {
                const void *xq = TOKEN_ACT(t);
                float *y = job->outs[o].out + (size_t)t * w->rows - first;
                for (int64_t r = r0; r < r1; r++)
                    job->kern->dot_quant_rows((const uint8_t *)w->data + (size_t)(r - first) * w->row_bytes, w->type, xq, 0, 1, w->cols, y + r);
            }
#undef TOKEN_ACT
        }
        first = end;
    }
}

typedef struct {
    const float *in;
    BlockQ8A *out;   /* NULL when no matrix takes this form */
    BlockQ8K *out_k;
    int n, cols;
    const Kernels *kern;
} QuantizeJob;

static void quantize_task(void *arg, int ith, int nth) {
    const QuantizeJob *job = arg;
    int64_t lo, hi;
    split_range(job->n, ith, nth, 1, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        if (job->out) job->kern->quantize_row_q8a(job->in + t * job->cols, job->out + t * (job->cols / QK), job->cols);
        if (job->out_k) job->kern->quantize_row_q8k(job->in + t * job->cols, job->out_k + t * (job->cols / QK_K), job->cols);
    }
}

static void matmul(Context *c, const float *in, int n, const MatmulOut *outs, int n_outs) {
    MatmulJob job = {.in = in, .inq = c->xq, .ink = c->xk, .n = n, .cols = outs[0].w->cols, .outs = outs, .n_outs = n_outs, .kern = c->kern};
    int forms[3] = {0, 0, 0}, aligned = 1; /* which activation forms (ACT_*) the matrices take */
    for (int o = 0; o < n_outs; o++) {
        aligned &= !outs[o].w->interleaved || job.total_rows % 8 == 0; /* its eight-row groups fall on tile bounds */
        job.total_rows += outs[o].w->rows;
        forms[TYPE_INFO[outs[o].w->type].act] = 1;
    }
    if (forms[ACT_Q8A] || forms[ACT_Q8K]) {
        QuantizeJob q = {in, forms[ACT_Q8A] ? c->xq : NULL, forms[ACT_Q8K] ? c->xk : NULL, n, job.cols, c->kern};
        pool_run(c->pool, quantize_task, &q);
    }
    if (aligned) {
        pool_run(c->pool, matmul_task, &job);
        return;
    }
    for (int o = 0; o < n_outs; o++) { /* one matrix at a time */
        MatmulJob one = {.in = in, .inq = c->xq, .ink = c->xk, .n = n, .cols = job.cols, .outs = outs + o, .n_outs = 1, .total_rows = outs[o].w->rows, .kern = c->kern};
        pool_run(c->pool, matmul_task, &one);
    }
}

/* ---------------------------------------------------------------------------
 * The forward pass.
 */
/* Returns -1 when x holds an inf or NaN (or values whose squares overflow):
   the one comparison that lets the forward pass stop on a residual stream
   gone non-finite. */
static int rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = w[i] * (scale * x[i]);
    return ss <= FLT_MAX ? 0 : -1;
}

/* Rotates adjacent pairs (2m, 2m+1) of the first rope_dim dims of each head. */
static void rope(float *vec, int n_heads, int head_dim, int rope_dim, const float *cos_p, const float *sin_p) {
    for (int h = 0; h < n_heads; h++) {
        float *v = vec + (size_t)h * head_dim;
        for (int m = 0; m < rope_dim / 2; m++) {
            float x0 = v[2 * m], x1 = v[2 * m + 1];
            v[2 * m] = x0 * cos_p[m] - x1 * sin_p[m];
            v[2 * m + 1] = x0 * sin_p[m] + x1 * cos_p[m];
        }
    }
}

typedef struct {
    Context *c;
    Sequence *const *seqs;
    int layer, n;
    int rectified;             /* this layer's distant keys come from k_far */
} AttentionJob;

/* Under rectified positions, keys at distance >= W (positions before the
   one returned) are scored with the far query against the far key copy, the
   nearer ones as plain RoPE. */
static int first_near_key(const AttentionJob *job, int p) {
    int from = job->rectified ? p - job->c->positions.window + 1 : 0;
    return from > 0 ? from : 0;
}

/* Positions are visited ATTN_TILE at a time, at multiples of ATTN_TILE
   whatever the batch, so a token's numbers do not depend on its batch:
   scores of the tile, one online-softmax step, its weighted values. A
   thread's scratch holds one tile of scores and the running max and sum per
   query head, whatever the context length. */

/* Asks for count cache rows (stride elements apart, n used) ahead of their
   use: the prefetcher does not follow a head's rows, strided among the
   other heads', soon enough. */
static void prefetch_rows(const void *base, int type, size_t stride, int count, int n) {
    for (int j = 0; j < count; j++) {
        const char *row = kv_at(base, type, (size_t)j * stride);
        for (size_t b = 0; b < type_row_bytes(type, n); b += 64) __builtin_prefetch(row + b);
    }
}

typedef struct {
    float *scores;             /* [n_q][ATTN_TILE] */
    float *max, *sum;          /* [n_q] */
    int n_q;
    const Kernels *kern;
} AttnTiles;

static AttnTiles attn_tiles(Context *c, int ith, int n_q) {
    float *base = c->scores + (size_t)ith * c->scores_stride;
    AttnTiles a = {base, base + (size_t)n_q * ATTN_TILE, base + (size_t)n_q * (ATTN_TILE + 1), n_q, c->kern};
    for (int g = 0; g < n_q; g++) a.max[g] = -INFINITY, a.sum[g] = 0;
    return a;
}

/* The tile [j0, j0 + count) of scores is in a->scores: softmax step and its
   values (count rows from v) into the heads' outputs (o_stride apart, n). */
static void attn_tile_values(AttnTiles *a, float *out, size_t o_stride, const void *v, int type, size_t v_stride, int count, int n) {
    for (int g = 0; g < a->n_q; g++)
        a->kern->softmax_tile(a->scores + (size_t)g * ATTN_TILE, count, &a->max[g], &a->sum[g], out + (size_t)g * o_stride, n);
    a->kern->attn_weighted_sum(out, o_stride, a->n_q, a->scores, ATTN_TILE, v, type, v_stride, count, n);
}

static void attn_tiles_finish(const AttnTiles *a, float *out, size_t o_stride, int n) {
    for (int g = 0; g < a->n_q; g++) {
        float inv = 1.0f / a->sum[g];
        for (int i = 0; i < n; i++) out[(size_t)g * o_stride + i] *= inv;
    }
}

/* One (token, KV head) pair per work item: its group of query heads against
   the sequence's cached keys and values up to the token's own position. */
static void attention_task(void *arg, int ith, int nth) {
    const AttentionJob *job = arg;
    Context *c = job->c;
    const ModelConfig *cfg = &c->model->cfg;
    int hd = cfg->head_dim, vd = cfg->v_head_dim, group = cfg->n_heads / cfg->n_kv_heads;
    size_t kv_stride = (size_t)cfg->n_kv_heads * hd, v_stride = (size_t)cfg->n_kv_heads * vd, q_dim = (size_t)cfg->n_heads * hd;
    float scale = c->attn_scale;
    int64_t lo, hi;
    split_range((int64_t)job->n * cfg->n_kv_heads, ith, nth, 1, &lo, &hi);
    for (int64_t item = lo; item < hi; item++) {
        int t = (int)(item / cfg->n_kv_heads), kvh = (int)(item % cfg->n_kv_heads);
        const Sequence *s = job->seqs[t];
        int p = c->pos[t], near_from = first_near_key(job, p);
        int kt = s->kv_type;
        size_t layer_k = (size_t)job->layer * s->capacity * kv_stride + (size_t)kvh * hd;
        const void *kc = kv_at(s->k, kt, layer_k), *kf = near_from > 0 ? kv_at(s->k_far, kt, layer_k) : NULL;
        const void *vc = kv_at(s->v, kt, (size_t)job->layer * s->capacity * v_stride + (size_t)kvh * vd);
        const float *q = c->q + (size_t)t * q_dim + (size_t)kvh * group * hd;
        const float *qf = near_from > 0 ? c->q_far + (size_t)t * q_dim + (size_t)kvh * group * hd : NULL;
        float *out = c->xb + (size_t)t * cfg->n_heads * vd + (size_t)kvh * group * vd;
        AttnTiles a = attn_tiles(c, ith, group);
        memset(out, 0, (size_t)group * vd * sizeof(float));
        for (int j0 = 0; j0 <= p; j0 += ATTN_TILE) {
            int j1 = j0 + ATTN_TILE <= p + 1 ? j0 + ATTN_TILE : p + 1, m = near_from < j0 ? j0 : near_from > j1 ? j1 : near_from;
            prefetch_rows(kv_at(vc, kt, (size_t)j0 * v_stride), kt, v_stride, j1 - j0, vd); /* in flight during the scores */
            if (j1 + ATTN_TILE <= p + 1) prefetch_rows(kv_at(kc, kt, (size_t)j1 * kv_stride), kt, kv_stride, ATTN_TILE, hd);
            if (m > j0) /* keys before near_from: the far query on the far copy */
                c->kern->attn_scores(qf, hd, group, kv_at(kf, kt, (size_t)j0 * kv_stride), kt, kv_stride, m - j0, hd, scale, 0, a.scores, ATTN_TILE);
            if (j1 > m)
                c->kern->attn_scores(q, hd, group, kv_at(kc, kt, (size_t)m * kv_stride), kt, kv_stride, j1 - m, hd, scale, 0, a.scores + (m - j0),
                            ATTN_TILE);
            attn_tile_values(&a, out, vd, kv_at(vc, kt, (size_t)j0 * v_stride), kt, v_stride, j1 - j0, vd);
        }
        attn_tiles_finish(&a, out, vd, vd);
    }
}

/* Multi-head latent attention, absorbed (docs/ALGORITHMS.md): a head's key
   up-projection is folded into its query, q_abs = [W_uk^T q_nope | q_rope],
   so each score is one dot product with a cached row [latent | rotary key];
   the head attends over latents and applies its value up-projection after.
   The cache is never expanded into per-head keys and values. */
static void attention_mla_task(void *arg, int ith, int nth) {
    const AttentionJob *job = arg;
    Context *c = job->c;
    const ModelConfig *cfg = &c->model->cfg;
    const Layer *L = &c->model->layers[job->layer];
    int lat = cfg->kv_lora_rank, dn = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    size_t row = (size_t)lat + dr, q_dim = (size_t)cfg->n_heads * cfg->head_dim;
    float *q_abs = c->mla_work + (size_t)ith * (2 * row - dr), *o_lat = q_abs + row;
    void *xq = (uint8_t *)c->mla_q8 + (size_t)ith * activation_bytes(dn > lat ? dn : lat);
    int64_t lo, hi;
    split_range((int64_t)job->n * cfg->n_heads, ith, nth, 1, &lo, &hi);
    for (int64_t item = lo; item < hi; item++) {
        int t = (int)(item / cfg->n_heads), h = (int)(item % cfg->n_heads), p = c->pos[t];
        const Sequence *s = job->seqs[t];
        const float *q = c->q + (size_t)t * q_dim + (size_t)h * cfg->head_dim; /* [nope | rotated rope] */
        if (type_is_quantized(L->wk_b.type)) c->kern->quantize_activations(L->wk_b.type, q, xq, dn);
        for (int i = 0; i < lat; i++) q_abs[i] = row_dot(c->kern, &L->wk_b, h * lat + i, q, xq);
        memcpy(q_abs + lat, q + dn, (size_t)dr * sizeof(float));
        int kt = s->kv_type, near_from = first_near_key(job, p);
        const void *kc = kv_at(s->k, kt, (size_t)job->layer * s->capacity * row);
        const void *kf = near_from > 0 ? kv_at(s->k_far, kt, (size_t)job->layer * s->capacity * dr) : NULL;
        const float *qf = near_from > 0 ? c->q_far + (size_t)t * q_dim + (size_t)h * cfg->head_dim + dn : NULL;
        AttnTiles a = attn_tiles(c, ith, 1);
        memset(o_lat, 0, (size_t)lat * sizeof(float));
        for (int j0 = 0; j0 <= p; j0 += ATTN_TILE) {
            int j1 = j0 + ATTN_TILE <= p + 1 ? j0 + ATTN_TILE : p + 1, m = near_from < j0 ? j0 : near_from > j1 ? j1 : near_from;
            if (m > j0) { /* distant keys: the latent part as it is, the rotary part from the far copy */
                c->kern->attn_scores(q_abs, 0, 1, kv_at(kc, kt, (size_t)j0 * row), kt, row, m - j0, lat, 1.0f, 0, a.scores, 0);
                c->kern->attn_scores(qf, 0, 1, kv_at(kf, kt, (size_t)j0 * dr), kt, (size_t)dr, m - j0, dr, c->attn_scale, 1, a.scores, 0);
            }
            if (j1 > m)
                c->kern->attn_scores(q_abs, 0, 1, kv_at(kc, kt, (size_t)m * row), kt, row, j1 - m, (int)row, c->attn_scale, 0, a.scores + (m - j0), 0);
            attn_tile_values(&a, o_lat, 0, kv_at(kc, kt, (size_t)j0 * row), kt, row, j1 - j0, lat);
        }
        attn_tiles_finish(&a, o_lat, 0, lat);
        /* the value up-projection: wv_b's rows h·dv + i, or wkv_b's h·(dn+dv) + dn + i */
        const Matrix *v_up = L->wv_b.rows ? &L->wv_b : &L->wkv_b;
        int v_first = L->wv_b.rows ? h * dv : h * (dn + dv) + dn;
        if (type_is_quantized(v_up->type)) c->kern->quantize_activations(v_up->type, o_lat, xq, lat);
        float *out = c->xb + (size_t)t * cfg->n_heads * dv + (size_t)h * dv;
        for (int i = 0; i < dv; i++) out[i] = row_dot(c->kern, v_up, v_first + i, o_lat, xq);
    }
}

/* The same attention with the latents expanded (c->mla_kv, by mla_expand):
   per head, scores q_nope . k_nope + q_rope . k_rope and a weighted sum of
   values. Cheaper for a long prefill: the up-projections are paid once per
   position instead of once per query. Agrees with the absorbed form to
   float rounding (test_model.c). */
static void attention_mla_expanded_task(void *arg, int ith, int nth) {
    const AttentionJob *job = arg;
    Context *c = job->c;
    const ModelConfig *cfg = &c->model->cfg;
    int lat = cfg->kv_lora_rank, dn = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    size_t row = (size_t)lat + dr, q_dim = (size_t)cfg->n_heads * cfg->head_dim, kv_row = (size_t)cfg->n_heads * (dn + dv);
    int64_t lo, hi;
    split_range((int64_t)job->n * cfg->n_heads, ith, nth, 1, &lo, &hi);
    for (int64_t item = lo; item < hi; item++) {
        int t = (int)(item / cfg->n_heads), h = (int)(item % cfg->n_heads), p = c->pos[t];
        const Sequence *s = job->seqs[t];
        const float *q = c->q + (size_t)t * q_dim + (size_t)h * cfg->head_dim;
        int kt = s->kv_type, near_from = first_near_key(job, p);
        const void *kc = kv_at(s->k, kt, (size_t)job->layer * s->capacity * row);
        const void *kf = near_from > 0 ? kv_at(s->k_far, kt, (size_t)job->layer * s->capacity * dr) : NULL;
        const float *kv = c->mla_kv + (size_t)h * (dn + dv);
        const float *qf = near_from > 0 ? c->q_far + (size_t)t * q_dim + (size_t)h * cfg->head_dim + dn : NULL;
        float *out = c->xb + (size_t)t * cfg->n_heads * dv + (size_t)h * dv;
        AttnTiles a = attn_tiles(c, ith, 1);
        memset(out, 0, (size_t)dv * sizeof(float));
        for (int j0 = 0; j0 <= p; j0 += ATTN_TILE) {
            int j1 = j0 + ATTN_TILE <= p + 1 ? j0 + ATTN_TILE : p + 1, m = near_from < j0 ? j0 : near_from > j1 ? j1 : near_from;
            c->kern->attn_scores(q, 0, 1, kv + (size_t)j0 * kv_row, TYPE_F32, kv_row, j1 - j0, dn, 1.0f, 0, a.scores, 0); /* nope part */
            if (m > j0)
                c->kern->attn_scores(qf, 0, 1, kv_at(kf, kt, (size_t)j0 * dr), kt, (size_t)dr, m - j0, dr, c->attn_scale, 1, a.scores, 0);
            if (j1 > m)
                c->kern->attn_scores(q + dn, 0, 1, kv_at(kc, kt, (size_t)m * row + lat), kt, row, j1 - m, dr, c->attn_scale, 1,
                            a.scores + (m - j0), 0);
            attn_tile_values(&a, out, 0, kv + (size_t)j0 * kv_row + dn, TYPE_F32, kv_row, j1 - j0, dv);
        }
        attn_tiles_finish(&a, out, 0, dv);
    }
}

/* Whether this call should expand the latents: only for a batch of one
   sequence, when the expansion (every position's up-projection) costs less
   than absorbing (every query's up-projections, and scores and sums over
   latents rather than heads' keys and values). Multiply-adds per head. */
static int mla_expand_pays(const Context *c, Sequence *const *seqs, int n) {
    const ModelConfig *cfg = &c->model->cfg;
    if (!c->mla_kv || c->mla_path == 1 || n < 2) return 0; /* a decode step stays absorbed */
    for (int t = 1; t < n; t++)
        if (seqs[t] != seqs[0]) return 0;
    if (c->mla_path == 2) return 1;
    double lat = cfg->kv_lora_rank, dn = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    double attended = 0; /* query-key pairs */
    for (int t = 0; t < n; t++) attended += c->pos[t] + 1;
    double positions = c->pos[n - 1] + 1;
    double expanded = positions * lat * (dn + dv) + attended * (dn + dr + dv);
    double absorbed = n * lat * (dn + dv) + attended * (2 * lat + dr);
    return expanded < absorbed;
}

/* Per-head keys and values of positions [0, positions) of s in this layer,
   from the latents: c->mla_kv[j] = wkv_b . latent_j. The batch's own
   positions (from c->pos[0] on) take theirs from c->k as computed, the
   earlier ones from the cache; so a prefill's keys and values do not depend
   on how the cache rounds (llama.cpp expands before it caches, too). */
static void mla_expand(Context *c, const Layer *L, const Sequence *s, int layer, int positions) {
    const ModelConfig *cfg = &c->model->cfg;
    size_t lat = (size_t)cfg->kv_lora_rank, row = lat + cfg->qk_rope_head_dim;
    size_t kv_row = (size_t)cfg->n_heads * (cfg->qk_nope_head_dim + cfg->v_head_dim);
    for (int j0 = 0; j0 < positions; j0 += c->max_batch) {
        int m = positions - j0 < c->max_batch ? positions - j0 : c->max_batch;
        for (int j = 0, p = j0; j < m; j++, p++)
            if (p >= c->pos[0]) memcpy(c->mla_lat + j * lat, c->k + (size_t)(p - c->pos[0]) * row, lat * sizeof(float));
            else c->kern->row_to_float(s->kv_type, kv_at(s->k, s->kv_type, ((size_t)layer * s->capacity + p) * row), c->mla_lat + j * lat, (int64_t)lat);
        MatmulOut kv[1] = {{c->mla_kv + (size_t)j0 * kv_row, &L->wkv_b}};
        matmul(c, c->mla_lat, m, kv, 1);
    }
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* Chooses a token's experts from its router logits (FORMAT.md, "Mixture of
   experts"): ids[k] and weights w[k] for k < n_experts_used. logits is
   overwritten with the probabilities. */
static void route(const Kernels *kern, const ModelConfig *cfg, float *logits, const float *bias, int *ids, float *w) {
    int E = cfg->n_experts, K = cfg->n_experts_used, groups = cfg->n_expert_groups > 1 ? cfg->n_expert_groups : 1;
    int per = E / groups;
    float choose[4096]; /* the scores experts are chosen by; E <= 4096 (check_config) */
    if (cfg->router == ROUTER_SOFTMAX) kern->softmax(logits, E);
    else
        for (int e = 0; e < E; e++) logits[e] = 1.0f / (1.0f + expf(-logits[e]));
    for (int e = 0; e < E; e++) choose[e] = logits[e] + (bias ? bias[e] : 0.0f);
    if (groups > 1) {
        /* group-limited: a group ranks by its best score (softmax router) or
           the sum of its best two (sigmoid router); only the best topk_groups
           groups stay eligible */
        float group_score[4096];
        for (int g = 0; g < groups; g++) {
            float a = -INFINITY, b = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (choose[e] > a) b = a, a = choose[e];
                else if (choose[e] > b) b = choose[e];
            }
            group_score[g] = cfg->router == ROUTER_SOFTMAX || per < 2 ? a : a + b;
        }
        for (int kept = 0; kept < cfg->topk_groups; kept++) {
            int best = -1;
            for (int g = 0; g < groups; g++)
                if (group_score[g] != INFINITY && (best < 0 || group_score[g] > group_score[best])) best = g;
            group_score[best] = INFINITY; /* kept */
        }
        for (int g = 0; g < groups; g++)
            if (group_score[g] != INFINITY)
                for (int e = g * per; e < (g + 1) * per; e++) choose[e] = -INFINITY;
    }
    float sum = 0;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (choose[e] != INFINITY && (best < 0 || choose[e] > choose[best])) best = e;
        choose[best] = INFINITY; /* taken */
        ids[k] = best;
        w[k] = logits[best];
        sum += w[k];
    }
    float scale = cfg->routed_scaling > 0 ? cfg->routed_scaling : 1.0f;
    for (int k = 0; k < K; k++) w[k] = (cfg->norm_topk_prob ? w[k] / (sum + 1e-20f) : w[k]) * scale;
}

/* The routed experts of a MoE layer, added to the residual stream c->x:
   x[t] += sum over token t's experts of w * expert(xb[t]). Experts run one
   after another on the tokens that chose them, so only chosen experts'
   weights are read, each once per call; a token's sum is taken in expert
   order whatever else is in the batch. */
static void moe(Context *c, const Layer *L, int n) {
    const ModelConfig *cfg = &c->model->cfg;
    int E = cfg->n_experts, K = cfg->n_experts_used, dim = cfg->dim, hidden = cfg->moe_hidden_dim;
    MatmulOut r[1] = {{c->router_logits, &L->router}};
    matmul(c, c->xb, n, r, 1);
    for (int t = 0; t < n; t++)
        route(c->kern, cfg, c->router_logits + (size_t)t * E, L->router_bias, c->route_id + (size_t)t * K, c->route_w + (size_t)t * K);
    for (int e = 0; e < E; e++) {
        int m = 0;
        for (int slot = 0; slot < n * K; slot++)
            if (c->route_id[slot] == e) {
                c->moe_tokens[m] = slot;
                memcpy(c->moe_in + (size_t)m++ * dim, c->xb + (size_t)(slot / K) * dim, (size_t)dim * sizeof(float));
            }
        if (!m) continue;
        const Expert *x = &L->experts[e];
        MatmulOut gate_up[2] = {{c->hb, &x->w1}, {c->hb2, &x->w3}};
        matmul(c, c->moe_in, m, gate_up, 2);
        for (size_t i = 0; i < (size_t)m * hidden; i++) c->hb[i] = silu(c->hb[i]) * c->hb2[i];
        MatmulOut down[1] = {{c->moe_out, &x->w2}};
        matmul(c, c->hb, m, down, 1);
        for (int i = 0; i < m; i++) {
            int slot = c->moe_tokens[i];
            c->kern->axpy(c->x + (size_t)(slot / K) * dim, c->route_w[slot], c->moe_out + (size_t)i * dim, dim);
        }
    }
}

/* Latent attention's projections of c->xb: queries into c->q (through the
   normalised query latent when the model has one) and the key/value latent
   with the shared rotary key into c->k, the latent normalised. */
static void attention_mla_inputs(Context *c, const Layer *L, int n) {
    const ModelConfig *cfg = &c->model->cfg;
    int ql = cfg->q_lora_rank, lat = cfg->kv_lora_rank, row = (int)kv_key_width(cfg);
    MatmulOut a[2] = {{ql ? c->qa : c->q, ql ? &L->wq_a : &L->wq}, {c->k, &L->wkv_a}};
    matmul(c, c->xb, n, a, 2);
    if (ql) {
        for (int t = 0; t < n; t++) rmsnorm(c->qa + (size_t)t * ql, c->qa + (size_t)t * ql, L->q_a_norm, ql, cfg->norm_eps);
        MatmulOut b[1] = {{c->q, &L->wq_b}};
        matmul(c, c->qa, n, b, 1);
    }
    for (int t = 0; t < n; t++) rmsnorm(c->k + (size_t)t * row, c->k + (size_t)t * row, L->kv_a_norm, lat, cfg->norm_eps);
}

/* The forward pass's end when the activations are no longer finite (weights
   that hold inf or NaN, or values past float's range): the positions taken
   are given back, as for a full sequence. */
static int forward_nonfinite(Context *c, Sequence *const *seqs, int n, const char *part, int layer) {
    for (int t = 0; t < n; t++) seqs[t]->n_past--;
    char of_layer[32] = "";
    if (layer) snprintf(of_layer, sizeof of_layer, " of layer %d", layer);
    return seterr(c->error, sizeof c->error, "the activations became non-finite (inf or NaN) in the %s%s: the model's "
                  "weights hold such values or overflow", part, of_layer);
}

int model_forward(Context *c, Sequence *const *seqs, const int *tokens, int n, const uint8_t *want) {
    const Model *m = c->model;
    const ModelConfig *cfg = &m->cfg;
    int dim = cfg->dim, hd = cfg->head_dim, half = cfg->rope_dim / 2;
    int q_dim = cfg->n_heads * hd, kv_dim = cfg->n_kv_heads * hd, v_dim = (int)kv_value_width(cfg);
    int k_width = (int)kv_key_width(cfg); /* a token's keys as cached: kv_dim, or latent + rotary key */
    if (n <= 0 || n > c->max_batch) return seterr(c->error, sizeof c->error, "batch of %d tokens (at most %d)", n, c->max_batch);
    int n_out = 0;
    for (int t = 0; t < n; t++) n_out += want ? !!want[t] : t == n - 1;
    if (n_out > c->max_logits) return seterr(c->error, sizeof c->error, "%d logit rows requested (at most %d)", n_out, c->max_logits);
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= cfg->vocab_size)
            return seterr(c->error, sizeof c->error, "token id %d out of range", tokens[t]);
    /* Each token takes the next position of its sequence; on a full sequence
       the positions taken so far are given back and nothing has changed. */
    for (int t = 0; t < n; t++) {
        int p = seqs[t]->n_past;
        if (p >= seqs[t]->capacity || p >= c->ctx_len) {
            for (int u = 0; u < t; u++) seqs[u]->n_past--;
            return seterr(c->error, sizeof c->error, "context full (%d tokens)", p);
        }
        c->pos[t] = seqs[t]->n_past++;
    }
    for (int t = 0; t < n; t++)
        if (rectified(&c->positions) && !seqs[t]->k_far) {
            for (int u = 0; u < n; u++) seqs[u]->n_past--;
            return seterr(c->error, sizeof c->error, "the sequence was made for a context without ReRoPE");
        }
    for (int t = 0; t < n; t++)
        c->kern->row_to_float(m->tok_emb.type, (const uint8_t *)m->tok_emb.data + (size_t)tokens[t] * m->tok_emb.row_bytes,
                              c->x + (size_t)t * dim, dim);
    const Positions *ps = &c->positions;
    for (int t = 0; t < n; t++) {
        /* position p, for a sequence of p + 1 tokens or of the prompt's full length (dynamic NTK) */
        int p = c->pos[t], len = seqs[t]->rope_len > p + 1 ? seqs[t]->rope_len : p + 1;
        rope_row(c, p, len, c->tok_cos + (size_t)t * half, c->tok_sin + (size_t)t * half);
        if (rectified(ps)) {
            /* ReRoPE: every distant key is at distance W: the query turns by
               W, the key stays raw. Leaky: the query turns by (pos + W(K-1)) / K
               and the key by pos / K, so the score sees W + (d - W) / K. */
            double k = ps->leaky_k, q_angle = ps->scheme == POS_REROPE ? ps->window : (c->pos[t] + ps->window * (k - 1)) / k;
            rope_row(c, q_angle, len, c->far_cos + (size_t)t * half, c->far_sin + (size_t)t * half);
            rope_row(c, ps->scheme == POS_REROPE ? 0.0 : c->pos[t] / k, len, c->kfar_cos + (size_t)t * half,
                     c->kfar_sin + (size_t)t * half);
        }
    }

    for (int l = 0; l < cfg->n_layers; l++) {
        const Layer *L = &m->layers[l];
        /* attention */
        int nonfinite = 0;
        for (int t = 0; t < n; t++) nonfinite |= rmsnorm(c->xb + (size_t)t * dim, c->x + (size_t)t * dim, L->attn_norm, dim, cfg->norm_eps);
        if (nonfinite) return forward_nonfinite(c, seqs, n, l ? "feed-forward" : "token embeddings", l);
        int rotary = L->pos == POS_ROPE && ps->scheme != POS_NOPE, mla = cfg->attn_kind == ATTN_MLA;
        if (mla) attention_mla_inputs(c, L, n);
        else {
            MatmulOut qkv[3] = {{c->q, &L->wq}, {c->k, &L->wk}, {c->v, &L->wv}};
            matmul(c, c->xb, n, qkv, 3);
        }
        for (int t = 0; t < n; t++) {
            float *q = c->q + (size_t)t * q_dim, *k = c->k + (size_t)t * k_width, *v = c->v + (size_t)t * v_dim;
            if (L->bq) {
                for (int i = 0; i < q_dim; i++) q[i] += L->bq[i];
                for (int i = 0; i < kv_dim; i++) k[i] += L->bk[i];
                for (int i = 0; i < v_dim; i++) v[i] += L->bv[i];
            }
            if (L->q_norm) { /* Qwen3: every head's query and key normalised on its own */
                for (int h = 0; h < cfg->n_heads; h++) rmsnorm(q + (size_t)h * hd, q + (size_t)h * hd, L->q_norm, hd, cfg->norm_eps);
                for (int h = 0; h < cfg->n_kv_heads; h++) rmsnorm(k + (size_t)h * hd, k + (size_t)h * hd, L->k_norm, hd, cfg->norm_eps);
            }
            Sequence *s = seqs[t];
            if (ps->logn) { /* log-n: queries sharpen past the length L, in every layer */
                float lambda = logf((float)c->pos[t] + 1) / logf((float)ps->logn);
                if (lambda > 1)
                    for (int i = 0; i < q_dim; i++) q[i] *= lambda;
            }
            /* What rotates: each query head's rotary dims (the first rope_dim,
               or under MLA the last dr after the nope dims), and each key head
               (under MLA the one shared rotary key after the latent). */
            float *q_rot = q + (mla ? cfg->qk_nope_head_dim : 0), *k_rot = k + (mla ? cfg->kv_lora_rank : 0);
            int k_heads = mla ? 1 : cfg->n_kv_heads, k_stride = mla ? cfg->rope_dim : hd;
            size_t far_width = kv_far_width(cfg);
            if (rotary) {
                if (rectified(ps)) { /* the far query and key, from the raw ones */
                    float *qf = c->q_far + (size_t)t * q_dim, *kf = c->k_far_row;
                    memcpy(qf, q, (size_t)q_dim * sizeof(float));
                    memcpy(kf, k_rot, far_width * sizeof(float));
                    rope(qf + (q_rot - q), cfg->n_heads, hd, cfg->rope_dim, c->far_cos + (size_t)t * half, c->far_sin + (size_t)t * half);
                    rope(kf, k_heads, k_stride, cfg->rope_dim, c->kfar_cos + (size_t)t * half, c->kfar_sin + (size_t)t * half);
                    c->kern->row_from_float(s->kv_type, kf, kv_at(s->k_far, s->kv_type, ((size_t)l * s->capacity + c->pos[t]) * far_width), (int64_t)far_width);
                }
                const float *cs = c->tok_cos + (size_t)t * half, *sn = c->tok_sin + (size_t)t * half;
                rope(q_rot, cfg->n_heads, hd, cfg->rope_dim, cs, sn);
                rope(k_rot, k_heads, k_stride, cfg->rope_dim, cs, sn);
            }
            c->kern->row_from_float(s->kv_type, k, kv_at(s->k, s->kv_type, ((size_t)l * s->capacity + c->pos[t]) * k_width), k_width);
            if (v_dim) c->kern->row_from_float(s->kv_type, v, kv_at(s->v, s->kv_type, ((size_t)l * s->capacity + c->pos[t]) * v_dim), v_dim);
        }
        AttentionJob aj = {c, seqs, l, n, rotary && rectified(ps)};
        int expand = mla && L->wkv_b.rows && mla_expand_pays(c, seqs, n);
        if (expand) mla_expand(c, L, seqs[0], l, c->pos[n - 1] + 1);
        pool_run(c->pool, expand ? attention_mla_expanded_task : mla ? attention_mla_task : attention_task, &aj);
        MatmulOut o[1] = {{c->xb2, &L->wo}};
        matmul(c, c->xb, n, o, 1);
        for (size_t i = 0; i < (size_t)n * dim; i++) c->x[i] += c->xb2[i] + (L->bo ? L->bo[i % dim] : 0.0f);

        /* feed-forward: the routed experts, then w2(silu(w1 x) * w3 x) of the
           dense layer or of the shared experts */
        for (int t = 0; t < n; t++) nonfinite |= rmsnorm(c->xb + (size_t)t * dim, c->x + (size_t)t * dim, L->ffn_norm, dim, cfg->norm_eps);
        if (nonfinite) return forward_nonfinite(c, seqs, n, "attention", l + 1);
        if (L->experts) moe(c, L, n);
        if (L->w1.rows) {
            MatmulOut gate_up[2] = {{c->hb, &L->w1}, {c->hb2, &L->w3}};
            matmul(c, c->xb, n, gate_up, 2);
            for (size_t i = 0; i < (size_t)n * L->w1.rows; i++) c->hb[i] = silu(c->hb[i]) * c->hb2[i];
            MatmulOut down[1] = {{c->xb2, &L->w2}};
            matmul(c, c->hb, n, down, 1);
            for (size_t i = 0; i < (size_t)n * dim; i++) c->x[i] += c->xb2[i];
        }
    }
    /* final norm and classifier for the wanted rows only */
    int r = 0, nonfinite = 0;
    for (int t = 0; t < n; t++)
        if (want ? want[t] : t == n - 1)
            nonfinite |= rmsnorm(c->xb + (size_t)r++ * dim, c->x + (size_t)t * dim, m->final_norm, dim, cfg->norm_eps);
    if (nonfinite) return forward_nonfinite(c, seqs, n, "feed-forward", cfg->n_layers);
    MatmulOut cls[1] = {{c->logits, &m->output}};
    if (n_out) matmul(c, c->xb, n_out, cls, 1);
    for (size_t i = 0; i < (size_t)n_out * cfg->vocab_size; i++) nonfinite |= !(fabsf(c->logits[i]) <= FLT_MAX);
    if (nonfinite) return forward_nonfinite(c, seqs, n, "classifier", 0);
    return n_out;
}

const float *sequence_feed(Context *c, Sequence *s, const int *tokens, int n) {
    for (int i = 0; i < n && i < c->max_batch; i++) c->feed_seqs[i] = s;
    for (int done = 0; done < n; done += c->max_batch) {
        int b = n - done < c->max_batch ? n - done : c->max_batch;
        if (model_forward(c, c->feed_seqs, tokens + done, b, NULL) < 0) return NULL;
    }
    return c->logits;
}

/* ---------------------------------------------------------------------------
 * Keeping and moving KV caches: positions [0, n) of each of a sequence's
 * parts (keys, values, far keys), layer by layer.
 */
typedef struct {
    uint8_t *base;
    size_t width;              /* bytes per position */
} KvPart;

static int kv_parts(const Sequence *s, const Model *m, KvPart parts[3]) {
    int n = 0;
    int kt = s->kv_type;
    parts[n++] = (KvPart){s->k, type_row_bytes(kt, (int64_t)kv_key_width(&m->cfg))};
    if (s->v) parts[n++] = (KvPart){s->v, type_row_bytes(kt, (int64_t)kv_value_width(&m->cfg))};
    if (s->k_far) parts[n++] = (KvPart){s->k_far, type_row_bytes(kt, (int64_t)kv_far_width(&m->cfg))};
    return n;
}

int sequence_copy(Sequence *dst, const Sequence *src, const Model *m, int n) {
    KvPart to[3], from[3];
    int parts = kv_parts(dst, m, to);
    if (parts != kv_parts(src, m, from) || !!dst->k_far != !!src->k_far || dst->kv_type != src->kv_type || n < 0 ||
        n > src->n_past || n > dst->capacity)
        return -1;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < parts; p++)
            memcpy(to[p].base + (size_t)l * dst->capacity * to[p].width, from[p].base + (size_t)l * src->capacity * from[p].width,
                   (size_t)n * to[p].width);
    dst->n_past = n;
    return 0;
}

int sequence_file_io(Sequence *s, const Model *m, int n, FILE *f, int writing, uint64_t *checksum) {
    KvPart parts[3];
    int np = kv_parts(s, m, parts);
    if (n < 0 || n > s->capacity || (writing && n > s->n_past)) return -1;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < np; p++) {
            uint8_t *at = parts[p].base + (size_t)l * s->capacity * parts[p].width;
            size_t bytes = (size_t)n * parts[p].width;
            if ((writing ? fwrite(at, 1, bytes, f) : fread(at, 1, bytes, f)) != bytes) return -1;
            if (checksum) *checksum = hash_bytes(*checksum, at, bytes);
        }
    if (!writing) s->n_past = n;
    return 0;
}

uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

uint64_t model_digest(const Model *m, const Positions *positions) {
    uint64_t h = hash_bytes(FNV_OFFSET, &m->cfg, sizeof m->cfg);
    Positions pos = positions ? *positions : (Positions){POS_MODEL, 0, 1.0f, 0};
    h = hash_bytes(h, &pos, sizeof pos);
    for (int i = 0; i < m->n_tensors; i++) {
        const Tensor *t = &m->tensors[i];
        h = hash_bytes(h, t->name, strlen(t->name));
        h = hash_bytes(h, &t->type, sizeof t->type);
        h = hash_bytes(h, t->shape, sizeof t->shape);
        /* 64 bytes from each sixteenth: any re-export with other weights differs */
        for (size_t k = 0; k < 16 && t->nbytes; k++) {
            size_t at = t->nbytes / 16 * k, len = t->nbytes - at < 64 ? t->nbytes - at : 64;
            h = hash_bytes(h, (const uint8_t *)t->data + at, len);
        }
    }
    return h;
}

/* ---------------------------------------------------------------------------
 * NBCE.
 */
int nbce_init(Nbce *nb, const Context *c, float beta, float eta, float top_p, int pool, char *err, size_t errlen) {
    memset(nb, 0, sizeof *nb);
    if (!(top_p > 0 && top_p <= 1) || !(beta >= -1) || !(eta >= 0) || (pool != NBCE_MIN_ENTROPY && pool != NBCE_MEAN))
        return seterr(err, errlen, "invalid NBCE settings (top-p in (0, 1], beta >= -1, eta >= 0)");
    size_t V = (size_t)c->model->cfg.vocab_size;
    nb->vocab = (int)V;
    nb->batch = c->max_batch < c->max_logits ? c->max_batch : c->max_logits;
    nb->beta = beta, nb->eta = eta, nb->top_p = top_p, nb->pool = pool;
    nb->uncond = malloc(V * sizeof(float));
    nb->pooled = malloc(V * sizeof(float));
    nb->row = malloc(V * sizeof(float));
    nb->kept = malloc(V);
    nb->threads = c->pool ? c->pool->n_threads : 1;
    size_t T = (size_t)nb->threads;
    nb->keys = malloc(T * 2 * V * sizeof(uint32_t));
    nb->ids = malloc(T * 2 * V * sizeof(int));
    nb->exps = malloc(T * V * sizeof(float));
    nb->entropy = malloc((size_t)nb->batch * sizeof(float));
    nb->batch_seqs = malloc((size_t)nb->batch * sizeof(Sequence *));
    nb->batch_tokens = malloc((size_t)nb->batch * sizeof(int));
    nb->batch_want = malloc((size_t)nb->batch);
    if (!nb->uncond || !nb->pooled || !nb->row || !nb->kept || !nb->keys || !nb->ids || !nb->exps || !nb->entropy ||
        !nb->batch_seqs || !nb->batch_tokens || !nb->batch_want) {
        nbce_free(nb);
        return seterr(err, errlen, "out of memory for NBCE");
    }
    return 0;
}

void nbce_free(Nbce *nb) {
    free(nb->uncond);
    free(nb->pooled);
    free(nb->row);
    free(nb->kept);
    free(nb->keys);
    free(nb->ids);
    free(nb->exps);
    free(nb->entropy);
    free(nb->batch_seqs);
    free(nb->batch_tokens);
    free(nb->batch_want);
    memset(nb, 0, sizeof *nb);
}

/* Sorts ids[0..n) by keys ascending, stably: least significant byte first,
   skipping a byte all keys share. keys and ids have room for 2n. */
static void radix_sort(uint32_t *keys, int *ids, int n) {
    uint32_t *k0 = keys, *k1 = keys + n;
    int *i0 = ids, *i1 = ids + n;
    for (int shift = 0; shift < 32; shift += 8) {
        size_t count[257] = {0};
        for (int i = 0; i < n; i++) count[((k0[i] >> shift) & 255) + 1]++;
        if (count[((k0[0] >> shift) & 255) + 1] == (size_t)n) continue;
        for (int b = 0; b < 256; b++) count[b + 1] += count[b];
        for (int i = 0; i < n; i++) {
            size_t to = count[(k0[i] >> shift) & 255]++;
            k1[to] = k0[i], i1[to] = i0[i];
        }
        uint32_t *kt = k0; k0 = k1; k1 = kt;
        int *it = i0; i0 = i1; i1 = it;
    }
    if (k0 != keys) {
        memcpy(keys, k0, (size_t)n * sizeof *keys);
        memcpy(ids, i0, (size_t)n * sizeof *ids);
    }
}

/* nbce_truncate with thread ith's scratch; lp may be logits itself. */
static float truncate_row(const Nbce *nb, int ith, const float *logits, float *lp) {
    int V = nb->vocab, n = 0;
    uint32_t *keys = nb->keys + (size_t)ith * 2 * V;
    int *ids = nb->ids + (size_t)ith * 2 * V;
    float *e = nb->exps + (size_t)ith * V, max = -INFINITY;
    for (int v = 0; v < V; v++)
        if (logits[v] > max) max = logits[v];
    double sum = 0, h = 0;
    for (int v = 0; v < V; v++) sum += e[v] = expf(logits[v] - max);
    float lse = max + (float)log(sum), inv = (float)(1 / sum);
    /* With a nucleus, tokens below (1 - top_p) / V go in any case: together
       they hold at most 1 - top_p and they are the least likely. Only the
       rest are sorted, by probability, whose float bits sort as integers. */
    double cut = 1.0 - nb->top_p, cum = 0;
    float floor_p = nb->top_p < 1 ? (float)(cut / V) : -1;
    for (int v = 0; v < V; v++) {
        float p = e[v] * inv;
        lp[v] = logits[v] - lse;
        if (p > floor_p) {
            memcpy(&keys[n], &p, sizeof p);
            ids[n++] = v;
        } else {
            cum += p;
            lp[v] = -INFINITY;
        }
    }
    int first = 0; /* the first token kept, in ascending order */
    if (nb->top_p < 1) {
        radix_sort(keys, ids, n);
        for (; first < n - 1; first++) { /* never the most likely */
            float p;
            memcpy(&p, &keys[first], sizeof p);
            if ((cum += p) > cut) break;
            lp[ids[first]] = -INFINITY;
        }
    }
    for (int i = first; i < n; i++) {
        float p, l = lp[ids[i]];
        memcpy(&p, &keys[i], sizeof p);
        h -= (double)p * (l > -100 ? l : -100);
    }
    return (float)h;
}

float nbce_truncate(Nbce *nb, const float *logits, float *lp) { return truncate_row(nb, 0, logits, lp); }

/* Adds a row already cut (lp) with entropy h to the step. */
static void pool_row(Nbce *nb, const float *lp, float h) {
    int r = nb->rows++;
    size_t bytes = (size_t)nb->vocab * sizeof(float);
    if (r == 0) {
        if (lp != nb->uncond) memcpy(nb->uncond, lp, bytes);
        return;
    }
    if (nb->pool == NBCE_MEAN) {
        for (int v = 0; v < nb->vocab; v++) {
            float x = lp[v] > -100 ? lp[v] : -100;
            nb->pooled[v] = r == 1 ? x : nb->pooled[v] + x;
            nb->kept[v] = (r > 1 && nb->kept[v]) || lp[v] > -INFINITY;
        }
        return;
    }
    if (r == nb->prev) h -= nb->eta;
    if (nb->chosen == 0 || h < nb->chosen_entropy) { /* the first of equals stays */
        memcpy(nb->pooled, lp, bytes);
        nb->chosen = r;
        nb->chosen_entropy = h;
    }
}

void nbce_add(Nbce *nb, const float *logits) {
    float *lp = nb->rows == 0 ? nb->uncond : nb->row;
    pool_row(nb, lp, truncate_row(nb, 0, logits, lp));
}

typedef struct {
    const Nbce *nb;
    float *rows;               /* [n][vocab] logits, cut in place */
    int n;
} TruncateJob;

static void truncate_task(void *arg, int ith, int nth) {
    const TruncateJob *job = arg;
    for (int k = ith; k < job->n; k += nth) {
        float *row = job->rows + (size_t)k * job->nb->vocab;
        job->nb->entropy[k] = truncate_row(job->nb, ith, row, row);
    }
}

int nbce_pool(Nbce *nb, float *z) {
    int contexts = nb->rows - 1, chosen = nb->pool == NBCE_MEAN ? 0 : nb->chosen;
    nb->rows = nb->chosen = 0;
    if (contexts < 1) return -1;
    for (int v = 0; v < nb->vocab; v++) {
        float p = nb->pool == NBCE_MEAN ? (nb->kept[v] ? nb->pooled[v] / contexts : -INFINITY) : nb->pooled[v];
        /* -inf - -inf would be NaN: where row 0 has cut the token, the pooled value stands alone */
        z[v] = p == -INFINITY ? p : nb->uncond[v] > -100 ? (1 + nb->beta) * p - nb->beta * nb->uncond[v] : p;
    }
    nb->prev = chosen;
    return chosen;
}

int nbce_feed(Nbce *nb, Context *c, Sequence *const *rows, const int *const *tokens, const int *n_tokens, int n_rows,
              float *z, void (*progress)(void *arg, int done, int total), void *arg) {
    int total = 0;
    if (c->pool->n_threads > nb->threads || c->max_batch < nb->batch || c->max_logits < nb->batch)
        return seterr(c->error, sizeof c->error, "the NBCE state was made for a smaller context");
    for (int r = 0; r < n_rows; r++) {
        if (n_tokens[r] < 1) return seterr(c->error, sizeof c->error, "NBCE row %d has no token to feed", r);
        total += n_tokens[r];
    }
    nb->rows = nb->chosen = 0;
    /* Rows in order, each one's tokens in order, cut into batches: a row's
       last token asks for logits, so they arrive in row order. */
    int r = 0, i = 0, done = 0;
    while (r < n_rows) {
        int b = 0;
        for (; b < nb->batch && r < n_rows; b++) {
            nb->batch_seqs[b] = rows[r];
            nb->batch_tokens[b] = tokens[r][i];
            nb->batch_want[b] = ++i == n_tokens[r];
            if (i == n_tokens[r]) r++, i = 0;
        }
        int out = model_forward(c, nb->batch_seqs, nb->batch_tokens, b, nb->batch_want);
        if (out < 0) {
            nb->rows = nb->chosen = 0;
            return -1;
        }
        /* the rows are cut in parallel, then pooled in order */
        TruncateJob job = {nb, c->logits, out};
        if (out) pool_run(c->pool, truncate_task, &job);
        for (int k = 0; k < out; k++) pool_row(nb, c->logits + (size_t)k * nb->vocab, nb->entropy[k]);
        done += b;
        if (progress) progress(arg, done, total);
    }
    int chosen = nbce_pool(nb, z);
    if (chosen < 0) return seterr(c->error, sizeof c->error, "NBCE needs the unconditional row and at least one context");
    return chosen;
}

/* ---------------------------------------------------------------------------
 * Sampling.
 */
int sampler_init(Sampler *s, int vocab, float temperature, float top_p, int top_k, unsigned long long seed) {
    /* xorshift never leaves the state 0, so seed 0 starts from another constant */
    *s = (Sampler){.vocab = vocab, .temperature = temperature, .top_p = top_p, .top_k = top_k,
                   .rng = seed ? seed : 0x9e3779b97f4a7c15ull};
    s->probs = malloc((size_t)vocab * sizeof(float));
    s->cand = malloc((size_t)vocab * sizeof *s->cand);
    if (s->probs && s->cand) return 0;
    sampler_free(s);
    return -1;
}

void sampler_free(Sampler *s) {
    free(s->probs);
    free(s->cand);
    s->probs = NULL;
    s->cand = NULL;
}

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

/* Candidate a comes before b: more likely first, the lower id on a tie (a
   total order, so every platform draws the same token). */
static int candidate_before(SampleCandidate a, SampleCandidate b) { return a.prob > b.prob || (a.prob == b.prob && a.id < b.id); }

/* Sorts the tokens with p >= cutoff by probability, descending, into
   s->cand, and returns how many there are. A heap sort: in place, where
   qsort may allocate on every token. */
static int sorted_candidates(Sampler *s, float cutoff) {
    int n = 0;
    for (int i = 0; i < s->vocab; i++)
        if (s->probs[i] >= cutoff) s->cand[n++] = (SampleCandidate){s->probs[i], i};
    SampleCandidate *c = s->cand;
    for (int end = n, start = n / 2; end > 1;) { /* a heap with the last candidate on top, then taken off */
        if (start > 0) start--;
        else { SampleCandidate t = c[0]; c[0] = c[--end]; c[end] = t; }
        for (int i = start;;) { /* sift down */
            int child = 2 * i + 1;
            if (child >= end) break;
            if (child + 1 < end && candidate_before(c[child], c[child + 1])) child++;
            if (!candidate_before(c[i], c[child])) break;
            SampleCandidate t = c[i]; c[i] = c[child]; c[child] = t;
            i = child;
        }
    }
    return n;
}

int sampler_sample(Sampler *s, const float *logits) {
    if (s->temperature == 0) return argmax(logits, s->vocab);
    for (int i = 0; i < s->vocab; i++) s->probs[i] = logits[i] / s->temperature;
    kernels_scalar.softmax(s->probs, s->vocab); /* the portable exp: a seed samples the same tokens on any CPU */
    if (s->top_k > 0 && s->top_k < s->vocab) { /* keep the k largest: everything below the k-th goes */
        int n = sorted_candidates(s, 0);
        float kth = s->cand[s->top_k - 1].prob;
        for (int i = 0; i < n; i++)
            if (s->cand[i].prob < kth) s->probs[s->cand[i].id] = 0;
        float sum = 0;
        for (int i = 0; i < s->vocab; i++) sum += s->probs[i];
        for (int i = 0; i < s->vocab; i++) s->probs[i] /= sum;
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

#endif /* MODEL_IMPLEMENTATION */
#endif /* MODEL_H */
