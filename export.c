/* export.c - the checkpoint converter.
 *
 *   ./export SRC OUT [--quant TYPE] [--tokenizer tokenizer.bin|none]
 *
 * SRC is one of
 *   - a file ./run can open, read through the engine's own loader
 *     (model_load): llama2.c checkpoints (versions 0, 1, 2), GGUF files and
 *     model files written by this tool (to change their weight type);
 *   - a Hugging Face model folder (config.json and safetensors weights) of a
 *     Llama-family or DeepSeek-V2/V3 architecture, read by hf_load below.
 * Every source becomes a Model, a table of named tensors with a config;
 * writing that out is one function, so a new source format only needs a
 * reader that produces a Model.
 *
 * OUT is written to a temporary file beside it and renamed at the end
 * (tempfile.h), so a failed or interrupted export (Ctrl-C, SIGTERM, SIGHUP)
 * leaves neither a partial OUT nor the temporary file.
 */
#define MODEL_IMPLEMENTATION
#include "model.h"

#include "json.h"
#include "message.h"
#include "tempfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    message_print(stderr, "error: ", fmt, ap);
    va_end(ap);
    tempfile_discard(); /* a failed export leaves no partial output */
    exit(1);
}

/* Something the converter ignored or chose for the user: one line on stderr. */
static void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    message_print(stderr, "note: ", fmt, ap);
    va_end(ap);
}

/* --help: on standard output, status 0. A wrong command line is one error line instead. */
static void usage(void) {
    fprintf(stdout, "usage: ./export SRC OUT [--quant TYPE] [--tokenizer tokenizer.bin|none]\n"
                    "  SRC: a llama2.c checkpoint (.bin, versions 0-2), a model file written by ./export, a GGUF file,\n"
                    "       or a Hugging Face model folder (Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE, SmolLM3, DeepSeek-V2/V3;\n"
                    "       safetensors weights)\n"
                    "  TYPE: f32, f16, bf16, q8_0 (the default), q4_0, q5_0, q4_k, q6_k, or q4_k_m (q4_k with q6_k for\n"
                    "        the output and for attn_v and ffn_down on the layers llama.cpp's Q4_K_M gives more bits);\n"
                    "        a GGUF file keeps its own types unless --quant is given\n"
                    "  ./export --version   ./export --help\n");
    exit(0);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) die("out of memory");
    return p;
}

/* ===========================================================================
 * Hugging Face model folders.
 *
 * config.json says what the model is; the weights are model.safetensors, or
 * shards listed by model.safetensors.index.json. The shards are mapped
 * read-only and the model's tensors point into them, so even a large model
 * is converted without a copy of its weights in memory. Only the norms and
 * biases, which are small, are converted to f32 up front (the file format
 * stores vectors as f32), and for DeepSeek the MoE routers (stored f32) and
 * the absorbed key matrices, which are not slices of any source tensor.
 *
 * The reader accepts only what it can convert exactly: a config key or a
 * tensor that would change the model's math and that the engine does not
 * run is an error that names it, never a silently different model.
 */

/* One safetensors tensor, as its file's header describes it. */
typedef struct {
    char *name;
    int type;                /* TYPE_F32, TYPE_F16 or TYPE_BF16; -1 for a dtype we do not convert */
    char dtype[16];          /* the dtype as the file spells it, for messages */
    int ndim;
    int64_t shape[4];
    const uint8_t *data;     /* inside a mapped shard; not necessarily aligned */
    size_t nbytes;
    int file;                /* index into HfCheckpoint.files */
    int used;
} HfTensor;

typedef struct {
    char path[4096];
    void *map;
    size_t bytes;
} HfFile;

typedef struct {
    char dir[4096];
    HfFile *files;
    int n_files;
    HfTensor *tensors;
    int n_tensors, cap_tensors;
    float *vectors;          /* norms, biases and MoE routers converted to f32, owned */
    uint8_t *layer_pos;      /* POS_* per layer, owned; NULL when every layer uses RoPE */
    float **wk_b;            /* MLA: per layer the absorbed key matrix (attention.wk_b), f32, owned */
    int n_wk_b;
    int rotate_half;         /* the rotary rows of q and k are in rotate_half order: the writer reorders them */
} HfCheckpoint;

/* Reads a small file (a JSON document) whole. */
static char *read_small_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) die("'%s' is not a regular file", path);
    if (st.st_size > (64 << 20)) die("'%s' is too large for a JSON file (%lld bytes)", path, (long long)st.st_size);
    char *buf = xcalloc((size_t)st.st_size + 1, 1);
    if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) die("cannot read '%s'", path);
    fclose(f);
    *len = (size_t)st.st_size;
    return buf;
}

static void parse_json_file(JsonDoc *doc, const char *path) {
    size_t len;
    char *text = read_small_file(path, &len), err[256];
    if (json_parse(doc, text, len, err, sizeof err)) die("%s: %s", path, err);
    free(text);
    if (doc->root.type != JSON_OBJECT) die("%s: expected a JSON object at the top", path);
}

/* ---------------------------------------------------------------------------
 * safetensors: a little-endian u64 header length, a JSON header mapping each
 * tensor name to {dtype, shape, data_offsets: [begin, end)}, then the data,
 * with offsets relative to the end of the header.
 */
static int dtype_size(const char *dtype, int *type) {
    static const struct { const char *name; int size, type; } dtypes[] = {
        {"F32", 4, TYPE_F32}, {"F16", 2, TYPE_F16}, {"BF16", 2, TYPE_BF16}, {"F64", 8, -1}, {"I64", 8, -1},
        {"U64", 8, -1}, {"I32", 4, -1}, {"U32", 4, -1}, {"I16", 2, -1}, {"U16", 2, -1}, {"I8", 1, -1},
        {"U8", 1, -1}, {"BOOL", 1, -1}, {"F8_E4M3", 1, -1}, {"F8_E5M2", 1, -1},
    };
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(dtype, dtypes[i].name)) {
            *type = dtypes[i].type;
            return dtypes[i].size;
        }
    return 0;
}

/* A JSON number that is a whole count of bytes or elements (exact up to 2^53). */
static int json_count(const JsonValue *v, uint64_t *out) {
    double d;
    if (json_double(v, &d) || !(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static HfTensor *hf_find(HfCheckpoint *ck, const char *name) {
    for (int i = 0; i < ck->n_tensors; i++)
        if (!strcmp(ck->tensors[i].name, name)) return &ck->tensors[i];
    return NULL;
}

/* Maps one safetensors file and adds its tensors; returns its file index. */
static int read_safetensors(HfCheckpoint *ck, const char *file) {
    for (int i = 0; i < ck->n_files; i++) /* a shard named twice in the index is read once */
        if (!strcmp(strrchr(ck->files[i].path, '/') + 1, file)) return i;
    HfFile *hf = &ck->files[ck->n_files];
    if (snprintf(hf->path, sizeof hf->path, "%s/%s", ck->dir, file) >= (int)sizeof hf->path) die("path too long: %s/%s", ck->dir, file);
    const char *path = hf->path;
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) die("'%s' is not a regular file", path);
    if (st.st_size < 8) die("%s: truncated safetensors file (%lld bytes)", path, (long long)st.st_size);
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) die("%s: larger than this platform can map", path);
    hf->bytes = (size_t)st.st_size;
    hf->map = mmap(NULL, hf->bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (hf->map == MAP_FAILED) die("cannot map '%s': %s", path, strerror(errno));
    int index = ck->n_files++;

    const uint8_t *base = hf->map;
    uint64_t header_len;
    memcpy(&header_len, base, 8);
    if (header_len > hf->bytes - 8)
        die("%s: the header is %llu bytes long but the file has only %zu (truncated, or not a safetensors file)", path,
            (unsigned long long)header_len, hf->bytes);
    JsonDoc doc;
    char err[256];
    if (json_parse(&doc, (const char *)base + 8, (size_t)header_len, err, sizeof err)) die("%s: header: %s", path, err);
    if (doc.root.type != JSON_OBJECT) die("%s: the header is not a JSON object", path);
    const uint8_t *data = base + 8 + header_len;
    uint64_t data_len = hf->bytes - 8 - header_len;

    for (size_t i = 0; i < doc.root.len; i++) {
        const JsonValue *v = &doc.root.items[i];
        const char *name = v->key;
        if (!strcmp(name, "__metadata__")) continue;
        if (strlen(name) != v->key_len || !name[0]) die("%s: a tensor has an empty or corrupt name", path);
        if (hf_find(ck, name)) die("%s: tensor '%s' appears twice in the checkpoint", path, name);
        const char *dtype = json_string(json_get(v, "dtype"));
        const JsonValue *shape = json_get(v, "shape"), *offsets = json_get(v, "data_offsets");
        if (!dtype || !shape || shape->type != JSON_ARRAY || !offsets || offsets->type != JSON_ARRAY || offsets->len != 2)
            die("%s: tensor '%s' needs dtype, shape and data_offsets [begin, end]", path, name);
        HfTensor t = {0};
        int size = dtype_size(dtype, &t.type);
        if (!size) die("%s: tensor '%s' has unknown dtype '%s'", path, name, dtype);
        snprintf(t.dtype, sizeof t.dtype, "%s", dtype);
        if (shape->len > 4) die("%s: tensor '%s' has %zu dimensions (at most 4)", path, name, shape->len);
        t.ndim = (int)shape->len;
        uint64_t numel = 1, begin, end;
        for (int d = 0; d < t.ndim; d++) {
            uint64_t n;
            if (json_count(&shape->items[d], &n)) die("%s: tensor '%s' has a corrupt shape", path, name);
            if (n && numel > data_len / n) die("%s: tensor '%s' has a shape larger than the file", path, name);
            numel *= n; /* stays at most data_len: no overflow below */
            t.shape[d] = (int64_t)n;
        }
        if (json_count(&offsets->items[0], &begin) || json_count(&offsets->items[1], &end) || begin > end)
            die("%s: tensor '%s' has corrupt data_offsets", path, name);
        if (end > data_len)
            die("%s: tensor '%s' ends at byte %llu of the data, which has only %llu (truncated?)", path, name,
                (unsigned long long)end, (unsigned long long)data_len);
        if (end - begin != numel * (uint64_t)size)
            die("%s: tensor '%s' has %llu bytes, but dtype %s and its shape need %llu", path, name,
                (unsigned long long)(end - begin), dtype, (unsigned long long)(numel * size));
        t.name = strdup(name);
        if (!t.name) die("out of memory");
        t.data = data + begin;
        t.nbytes = (size_t)(end - begin);
        t.file = index;
        if (ck->n_tensors == ck->cap_tensors) {
            ck->cap_tensors = ck->cap_tensors ? 2 * ck->cap_tensors : 256;
            ck->tensors = realloc(ck->tensors, (size_t)ck->cap_tensors * sizeof *ck->tensors);
            if (!ck->tensors) die("out of memory");
        }
        ck->tensors[ck->n_tensors++] = t;
    }
    json_free(&doc);
    return index;
}

/* model.safetensors, or every shard model.safetensors.index.json lists. */
static void read_weights(HfCheckpoint *ck) {
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/model.safetensors", ck->dir);
    if (!stat(path, &st)) {
        ck->files = xcalloc(1, sizeof *ck->files);
        read_safetensors(ck, "model.safetensors");
        return;
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", ck->dir);
    if (stat(path, &st)) {
        snprintf(path, sizeof path, "%s/pytorch_model.bin", ck->dir);
        die("'%s' has no model.safetensors or model.safetensors.index.json%s", ck->dir,
            stat(path, &st) ? "" : " (PyTorch .bin weights are not supported: save the model with safetensors)");
    }
    JsonDoc doc;
    parse_json_file(&doc, path);
    const JsonValue *map = json_get(&doc.root, "weight_map");
    if (!map || map->type != JSON_OBJECT || !map->len) die("%s: missing or empty 'weight_map'", path);
    ck->files = xcalloc(map->len, sizeof *ck->files);
    for (size_t i = 0; i < map->len; i++) {
        const char *file = json_string(&map->items[i]);
        if (!file || !file[0] || strchr(file, '/') || !strcmp(file, "..") || strlen(file) != map->items[i].len)
            die("%s: weight_map entry '%s' is not a file name in the folder", path, map->items[i].key);
        int f = read_safetensors(ck, file);
        const HfTensor *t = hf_find(ck, map->items[i].key);
        if (!t || t->file != f) die("%s: tensor '%s' is not in %s, where the index puts it", path, map->items[i].key, file);
    }
    json_free(&doc);
}

static void hf_free(HfCheckpoint *ck) {
    for (int i = 0; i < ck->n_files; i++) munmap(ck->files[i].map, ck->files[i].bytes);
    for (int i = 0; i < ck->n_tensors; i++) free(ck->tensors[i].name);
    free(ck->files);
    free(ck->tensors);
    free(ck->vectors);
    free(ck->layer_pos);
    for (int i = 0; i < ck->n_wk_b; i++) free(ck->wk_b[i]);
    free(ck->wk_b);
    memset(ck, 0, sizeof *ck);
}

/* ---------------------------------------------------------------------------
 * config.json. Keys set to null count as absent, as transformers treats them.
 */
static const JsonValue *cfg_get(const JsonValue *obj, const char *key) {
    const JsonValue *v = json_get(obj, key);
    return v && v->type != JSON_NULL ? v : NULL;
}

static int cfg_int(const char *file, const JsonValue *obj, const char *key, int def, int required) {
    const JsonValue *v = cfg_get(obj, key);
    int x;
    if (!v) {
        if (required) die("%s: missing '%s'", file, key);
        return def;
    }
    if (json_int(v, &x)) die("%s: '%s' should be an integer", file, key);
    return x;
}

static double cfg_num(const char *file, const JsonValue *obj, const char *key, double def, int required) {
    const JsonValue *v = cfg_get(obj, key);
    double x;
    if (!v) {
        if (required) die("%s: missing '%s'", file, key);
        return def;
    }
    if (json_double(v, &x) || !isfinite(x)) die("%s: '%s' should be a number", file, key);
    return x;
}

static int cfg_bool(const char *file, const JsonValue *obj, const char *key, int def) {
    const JsonValue *v = cfg_get(obj, key);
    int x;
    if (!v) return def;
    if (json_bool(v, &x)) die("%s: '%s' should be true or false", file, key);
    return x;
}

static const char *cfg_str(const char *file, const JsonValue *obj, const char *key, const char *def) {
    const JsonValue *v = cfg_get(obj, key);
    if (!v) return def;
    if (!json_string(v)) die("%s: '%s' should be a string", file, key);
    return v->str;
}

/* The architectures this reader converts. They share the Llama decoder
   (RMSNorm, rotary attention, SwiGLU) and differ in a few details; DeepSeek
   replaces the attention with multi-head latent attention and most
   feed-forwards with a mixture of experts (read_deepseek). Defaults are the
   config classes' own, for keys a config.json may leave out (transformers
   omits values equal to the base class defaults, so tie_word_embeddings can
   be missing where the model class defaults to true). */
typedef struct {
    const char *name;
    int qkv_bias;            /* 1: q/k/v always have biases (Qwen2); 0: attention_bias decides; -1: never (Mistral) */
    int tied_default;
    double theta_default;
    int nope_layers;         /* no_rope_layers / no_rope_layer_interval (SmolLM3) */
    int sliding_all;         /* a set sliding_window applies to every layer (Mistral) */
    int deepseek;            /* 2 or 3: DeepSeek-V2 or -V3 (MLA, MoE); 0: Llama-style attention */
    int qk_norm;             /* per-head RMSNorm of q and k (Qwen3) */
    int qwen_moe;            /* every layer a mixture of experts, softmax router (Qwen3-MoE) */
} HfArch;

static const HfArch hf_archs[] = {
    {"LlamaForCausalLM", 0, 0, 10000.0, 0, 0, 0, 0, 0},
    {"MistralForCausalLM", -1, 0, 10000.0, 0, 1, 0, 0, 0},
    {"Qwen2ForCausalLM", 1, 0, 10000.0, 0, 0, 0, 0, 0},
    {"Qwen3ForCausalLM", 0, 0, 10000.0, 0, 0, 0, 1, 0},
    {"Qwen3MoeForCausalLM", 0, 0, 10000.0, 0, 0, 0, 1, 1},
    {"SmolLM3ForCausalLM", 0, 1, 2000000.0, 1, 0, 0, 0, 0},
    {"DeepseekV2ForCausalLM", -1, 0, 10000.0, 0, 0, 2, 0, 0},
    {"DeepseekV3ForCausalLM", -1, 0, 10000.0, 0, 0, 3, 0, 0},
};

/* Keys that do not change the forward pass (or that the code below reads);
   anything else gets a note, so a key we never heard of is at least seen. */
static const char *const hf_known_keys[] = {
    "architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings",
    "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor",
    "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act", "sliding_window", "use_sliding_window",
    "max_window_layers", "layer_types", "no_rope_layers", "no_rope_layer_interval", "quantization_config",
    "pretraining_tp", "attention_dropout", "initializer_range", "use_cache", "bos_token_id", "eos_token_id",
    "pad_token_id", "torch_dtype", "dtype", "transformers_version", "_name_or_path", "auto_map", "tokenizer_class",
    "use_mrope", "_attn_implementation", "_attn_implementation_autoset", "output_attentions",
    "output_hidden_states", "return_dict", "is_decoder", "is_encoder_decoder", "chunk_size_feed_forward",
    "id2label", "label2id", "problem_type", "task_specific_params", "finetuning_task", "prefix",
    "sep_token_id", "decoder_start_token_id", "cross_attention_hidden_size", "add_cross_attention",
    "tie_encoder_decoder", "torchscript", "pruned_heads", "num_labels",
};

/* The same for DeepSeek configs, which read the MLA and MoE keys (or, for
   aux_loss_alpha, seq_aux and ep_size, only train or shard with them). */
static const char *const hf_deepseek_keys[] = {
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "qk_head_dim", "v_head_dim",
    "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size", "moe_layer_freq",
    "first_k_dense_replace", "routed_scaling_factor", "topk_method", "n_group", "topk_group", "norm_topk_prob",
    "scoring_func", "rope_interleave", "num_nextn_predict_layers", "aux_loss_alpha", "seq_aux", "ep_size",
};

/* The same for Qwen3-MoE (router_aux_loss_coef and output_router_logits only train with it). */
static const char *const hf_qwen_moe_keys[] = {
    "num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
    "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef", "output_router_logits",
};

static int key_in(const char *key, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(key, list[i])) return 1;
    return 0;
}

static int hf_known_key(const char *key, const HfArch *arch) {
    return key_in(key, hf_known_keys, sizeof hf_known_keys / sizeof hf_known_keys[0]) ||
           (arch->deepseek && key_in(key, hf_deepseek_keys, sizeof hf_deepseek_keys / sizeof hf_deepseek_keys[0])) ||
           (arch->qwen_moe && key_in(key, hf_qwen_moe_keys, sizeof hf_qwen_moe_keys / sizeof hf_qwen_moe_keys[0]));
}

/* Rotary settings. Older configs have rope_theta and rope_scaling ({"type" or
   "rope_type", "factor", ...}) at the top level; newer ones put everything,
   rope_theta included, in one rope_parameters object. rotary_head is the
   size partial_rotary_factor applies to: head_dim, or for MLA the rotary
   part of a head (qk_rope_head_dim). */
static void read_rope(const char *file, const JsonValue *root, const HfArch *arch, ModelConfig *c, int rotary_head) {
    const JsonValue *params = cfg_get(root, "rope_parameters"), *scaling = cfg_get(root, "rope_scaling");
    if (params && params->type != JSON_OBJECT) die("%s: 'rope_parameters' should be an object", file);
    if (scaling && scaling->type != JSON_OBJECT) die("%s: 'rope_scaling' should be an object", file);
    if (params && scaling) /* which one transformers would read depends on its version: refuse to guess */
        die("%s: both 'rope_parameters' and 'rope_scaling' are set; keep one", file);
    if (params)
        for (size_t i = 0; i < params->len; i++)
            if (params->items[i].type == JSON_OBJECT) /* one set per layer type (e.g. sliding vs full) */
                die("%s: rope_parameters per layer type ('%s') are not supported", file, params->items[i].key);
    const JsonValue *s = params ? params : scaling;
    double theta = cfg_num(file, root, "rope_theta", arch->theta_default, 0);
    if (params) theta = cfg_num(file, params, "rope_theta", theta, 0);
    double partial = cfg_num(file, root, "partial_rotary_factor", 1.0, 0);
    if (params) partial = cfg_num(file, params, "partial_rotary_factor", partial, 0);
    if (!(partial > 0 && partial <= 1)) die("%s: partial_rotary_factor %g is not in (0, 1]", file, partial);
    c->rope_theta = (float)theta;
    c->rope_dim = (int)(rotary_head * partial); /* int() in transformers: truncates */

    const char *type = "default";
    if (s) type = cfg_str(file, s, "rope_type", cfg_str(file, s, "type", "default"));
    if (!strcmp(type, "default")) {
        c->rope_scaling = ROPE_SCALING_NONE;
    } else if (!strcmp(type, "linear")) {
        c->rope_scaling = ROPE_SCALING_LINEAR;
        c->rope_factor = (float)cfg_num(file, s, "factor", 0, 1);
    } else if (!strcmp(type, "llama3")) {
        c->rope_scaling = ROPE_SCALING_LLAMA3;
        c->rope_factor = (float)cfg_num(file, s, "factor", 0, 1);
        c->rope_low_freq_factor = (float)cfg_num(file, s, "low_freq_factor", 0, 1);
        c->rope_high_freq_factor = (float)cfg_num(file, s, "high_freq_factor", 0, 1);
        c->rope_orig_ctx = cfg_int(file, s, "original_max_position_embeddings", 0, 1);
    } else if (!strcmp(type, "dynamic")) {
        /* transformers grows the base past max_position_embeddings itself */
        c->rope_scaling = ROPE_SCALING_DYNAMIC;
        c->rope_factor = (float)cfg_num(file, s, "factor", 0, 1);
        c->rope_orig_ctx = c->max_seq_len;
    } else if (!strcmp(type, "yarn")) {
        if (cfg_get(s, "attention_factor")) die("%s: yarn with an explicit attention_factor is not supported yet", file);
        if (!cfg_bool(file, s, "truncate", 1)) die("%s: yarn with truncate = false is not supported yet", file);
        c->rope_scaling = ROPE_SCALING_YARN;
        c->rope_factor = (float)cfg_num(file, s, "factor", 0, 1);
        c->rope_orig_ctx = cfg_int(file, s, "original_max_position_embeddings", c->max_seq_len, 0);
        c->rope_beta_fast = (float)cfg_num(file, s, "beta_fast", 32, 0);
        c->rope_beta_slow = (float)cfg_num(file, s, "beta_slow", 1, 0);
        c->rope_mscale = (float)cfg_num(file, s, "mscale", 0, 0);
        c->rope_mscale_all_dim = (float)cfg_num(file, s, "mscale_all_dim", 0, 0);
    } else {
        die("%s: rope scaling type '%s' is not supported yet (this build runs default, linear, dynamic, llama3 and yarn)", file, type);
    }
}

/* Which layers use a sliding window, and how wide it is (0: none). The
   engine attends to the whole context, which is exact while a sequence is no
   longer than the window; the caller caps the default context to it. */
static int read_sliding_window(const char *file, const JsonValue *root, const HfArch *arch, int n_layers,
                               const uint8_t *layer_pos) {
    const JsonValue *types = cfg_get(root, "layer_types");
    int window = cfg_int(file, root, "sliding_window", 0, 0), sliding = 0;
    if (window < 0) die("%s: 'sliding_window' is negative", file);
    if (types) {
        if (types->type != JSON_ARRAY || types->len < (size_t)n_layers)
            die("%s: 'layer_types' should list a type for each of the %d layers", file, n_layers);
        for (int l = 0; l < n_layers; l++) {
            const char *t = json_string(&types->items[l]);
            if (!t) die("%s: 'layer_types' should hold strings", file);
            if (!strcmp(t, "sliding_attention")) sliding = 1;
            else if (strcmp(t, "full_attention")) die("%s: layer %d has attention type '%s', which is not supported", file, l, t);
        }
    } else if (arch->sliding_all) {
        sliding = window > 0;
    } else if (cfg_bool(file, root, "use_sliding_window", 0) && window > 0) {
        if (arch->nope_layers) { /* SmolLM3 slides its NoPE layers only */
            for (int l = 0; l < n_layers; l++) sliding |= layer_pos && layer_pos[l] == POS_NONE;
        } else { /* Qwen2: the layers from max_window_layers on */
            sliding = cfg_int(file, root, "max_window_layers", n_layers, 0) < n_layers;
        }
    }
    return sliding ? window : 0;
}

/* Per-layer position scheme of SmolLM3: no_rope_layers[l] is 1 where layer l
   uses RoPE and 0 where it uses none (NoPE); without the list, every
   no_rope_layer_interval-th layer is NoPE. */
static uint8_t *read_layer_pos(const char *file, const JsonValue *root, int n_layers) {
    uint8_t *pos = xcalloc((size_t)n_layers, 1);
    const JsonValue *list = cfg_get(root, "no_rope_layers");
    int any = 0;
    if (list) {
        if (list->type != JSON_ARRAY || list->len < (size_t)n_layers)
            die("%s: 'no_rope_layers' should have an entry for each of the %d layers", file, n_layers);
        for (int l = 0; l < n_layers; l++) {
            int use_rope;
            if (json_int(&list->items[l], &use_rope) || (use_rope != 0 && use_rope != 1))
                die("%s: 'no_rope_layers' entries should be 0 (no RoPE) or 1 (RoPE)", file);
            pos[l] = use_rope ? POS_ROPE : POS_NONE;
        }
    } else {
        int interval = cfg_int(file, root, "no_rope_layer_interval", 4, 0);
        if (interval <= 0) die("%s: 'no_rope_layer_interval' should be positive", file);
        for (int l = 0; l < n_layers; l++) pos[l] = (l + 1) % interval ? POS_ROPE : POS_NONE;
    }
    for (int l = 0; l < n_layers; l++) any |= pos[l] != POS_ROPE;
    if (!any) {
        free(pos);
        return NULL;
    }
    return pos;
}

/* An integer key where null means something other than absent (DeepSeek's
   q_lora_rank: null is a plain query projection, absent the class default). */
static int cfg_int_null(const char *file, const JsonValue *obj, const char *key, int def, int if_null) {
    const JsonValue *v = json_get(obj, key);
    return v && v->type == JSON_NULL ? if_null : cfg_int(file, obj, key, def, 0);
}

/* DeepSeek-V2/V3: multi-head latent attention in every layer, and a mixture
   of experts in the layers from first_k_dense_replace on (every
   moe_layer_freq-th). Defaults are those of transformers' config classes,
   which differ between the two. The routers are transformers' own: V2 takes
   a softmax over the experts (greedy, or group_limited_greedy: groups ranked
   by their best expert) and never renormalises the chosen weights; V3 takes
   sigmoids, chooses by them plus e_score_correction_bias (noaux_tc), ranks
   groups by their two best, and renormalises when norm_topk_prob. Returns
   num_nextn_predict_layers (V3's extra multi-token-prediction layers). */
/* Qwen3-MoE: every layer routes each token to its top num_experts_per_tok
   of num_experts (num_local_experts in newer configs) by a softmax, the
   chosen weights renormalised when norm_topk_prob says so. */
static void read_qwen_moe(const char *file, const JsonValue *root, ModelConfig *c) {
    c->ffn_kind = FFN_MOE;
    c->router = ROUTER_SOFTMAX;
    c->n_experts = cfg_int(file, root, "num_local_experts", cfg_int(file, root, "num_experts", 0, 0), 0);
    c->n_experts_used = cfg_int(file, root, "num_experts_per_tok", 0, 1);
    c->moe_hidden_dim = cfg_int(file, root, "moe_intermediate_size", 0, 1);
    c->norm_topk_prob = cfg_bool(file, root, "norm_topk_prob", 0);
    c->routed_scaling = 1;
    c->moe_layer_freq = 1;
    if (cfg_int(file, root, "decoder_sparse_step", 1, 0) != 1)
        die("%s: decoder_sparse_step other than 1 is not supported (every layer must be sparse)", file);
    const JsonValue *dense = cfg_get(root, "mlp_only_layers");
    if (dense && !(dense->type == JSON_ARRAY && dense->len == 0))
        die("%s: mlp_only_layers is not supported (every layer must be sparse)", file);
}

static int read_deepseek(const char *file, const JsonValue *root, const HfArch *arch, ModelConfig *c, int *rotate_half) {
    int v3 = arch->deepseek == 3;
    if (cfg_bool(file, root, "attention_bias", 0))
        die("%s: attention_bias = true is not supported for %s (no released model has attention biases)", file, arch->name);
    c->attn_kind = ATTN_MLA;
    c->q_lora_rank = cfg_int_null(file, root, "q_lora_rank", 1536, 0);
    c->kv_lora_rank = cfg_int(file, root, "kv_lora_rank", 512, 0);
    c->qk_nope_head_dim = cfg_int(file, root, "qk_nope_head_dim", 128, 0);
    c->qk_rope_head_dim = cfg_int(file, root, "qk_rope_head_dim", 64, 0);
    c->v_head_dim = cfg_int(file, root, "v_head_dim", 128, 0);
    const int big = 1 << 16;
    if (c->q_lora_rank < 0 || c->q_lora_rank > big || c->kv_lora_rank <= 0 || c->kv_lora_rank > big ||
        c->qk_nope_head_dim <= 0 || c->qk_nope_head_dim > big || c->qk_rope_head_dim <= 0 ||
        c->qk_rope_head_dim > big || c->qk_rope_head_dim % 2 || c->v_head_dim <= 0 || c->v_head_dim > big)
        die("%s: impossible MLA dimensions (q_lora_rank %d, kv_lora_rank %d, qk_nope_head_dim %d, qk_rope_head_dim %d "
            "(even), v_head_dim %d)", file, c->q_lora_rank, c->kv_lora_rank, c->qk_nope_head_dim, c->qk_rope_head_dim,
            c->v_head_dim);
    /* config.json's head_dim is qk_rope_head_dim (transformers sets it so for its rotary tables): not ours */
    c->head_dim = c->qk_nope_head_dim + c->qk_rope_head_dim;
    if (c->n_kv_heads != c->n_heads) /* every head has its own key and value, expanded from one shared latent */
        die("%s: num_key_value_heads %d differs from num_attention_heads %d, which latent attention does not allow", file,
            c->n_kv_heads, c->n_heads);
    /* V2 rotates adjacent pairs (view_as_complex), V3 too when rope_interleave; otherwise rotate_half */
    *rotate_half = v3 && !cfg_bool(file, root, "rope_interleave", 1);

    c->n_experts = cfg_int_null(file, root, "n_routed_experts", v3 ? 256 : 64, 0);
    if (c->n_experts < 0 || c->n_experts > big) die("%s: n_routed_experts %d is impossible", file, c->n_experts);
    if (c->n_experts > 0) {
        c->ffn_kind = FFN_MOE;
        c->n_experts_used = cfg_int_null(file, root, "num_experts_per_tok", v3 ? 8 : 0, 0);
        c->n_shared_experts = cfg_int_null(file, root, "n_shared_experts", v3 ? 1 : 2, 0);
        c->moe_hidden_dim = cfg_int(file, root, "moe_intermediate_size", v3 ? 2048 : 1407, 0);
        c->first_k_dense = cfg_int(file, root, "first_k_dense_replace", v3 ? 3 : 0, 0);
        c->moe_layer_freq = cfg_int(file, root, "moe_layer_freq", 1, 0);
        double scaling = cfg_num(file, root, "routed_scaling_factor", v3 ? 2.5 : 1.0, 0);
        c->routed_scaling = (float)scaling;
        if (c->n_experts_used < 1 || c->n_experts_used > c->n_experts)
            die("%s: num_experts_per_tok %d should be between 1 and n_routed_experts %d", file, c->n_experts_used, c->n_experts);
        if (c->n_shared_experts < 0 || c->n_shared_experts > big || c->moe_hidden_dim <= 0 || c->moe_hidden_dim > (1 << 20))
            die("%s: impossible n_shared_experts %d or moe_intermediate_size %d", file, c->n_shared_experts, c->moe_hidden_dim);
        if (c->first_k_dense < 0 || c->moe_layer_freq < 1)
            die("%s: first_k_dense_replace %d should be >= 0 and moe_layer_freq %d >= 1", file, c->first_k_dense, c->moe_layer_freq);
        if (!(scaling > 0)) die("%s: routed_scaling_factor %g should be positive", file, scaling);

        /* the original DeepSeek code reads scoring_func; transformers fixes it per version */
        const char *scoring = cfg_str(file, root, "scoring_func", v3 ? "sigmoid" : "softmax");
        if (strcmp(scoring, v3 ? "sigmoid" : "softmax"))
            die("%s: scoring_func '%s' is not supported (%s routes with %s)", file, scoring, arch->name, v3 ? "sigmoid" : "softmax");
        const char *method = cfg_str(file, root, "topk_method", v3 ? "noaux_tc" : "greedy");
        int norm = cfg_bool(file, root, "norm_topk_prob", v3);
        if (v3) {
            if (strcmp(method, "noaux_tc"))
                die("%s: topk_method '%s' is not supported (%s routes with noaux_tc)", file, method, arch->name);
            c->router = ROUTER_SIGMOID;
            c->n_expert_groups = cfg_int(file, root, "n_group", 8, 0);
            c->topk_groups = cfg_int(file, root, "topk_group", 4, 0);
            c->norm_topk_prob = norm;
        } else {
            c->router = ROUTER_SOFTMAX;
            if (!strcmp(method, "group_limited_greedy")) {
                c->n_expert_groups = cfg_int(file, root, "n_group", 0, 1);
                c->topk_groups = cfg_int(file, root, "topk_group", 0, 1);
            } else if (strcmp(method, "greedy")) {
                die("%s: topk_method '%s' is not supported (%s: greedy or group_limited_greedy)", file, method, arch->name);
            }
            if (norm)
                note("%s: norm_topk_prob is ignored, as transformers' DeepseekV2 router ignores it (the "
                     "chosen weights are not renormalised)", file);
        }
        if (c->n_expert_groups) {
            if (c->n_expert_groups < 0 || c->n_experts % c->n_expert_groups)
                die("%s: n_routed_experts %d is not a multiple of n_group %d", file, c->n_experts, c->n_expert_groups);
            int group = c->n_experts / c->n_expert_groups;
            if (c->topk_groups < 1 || c->topk_groups > c->n_expert_groups)
                die("%s: topk_group %d should be between 1 and n_group %d", file, c->topk_groups, c->n_expert_groups);
            if (c->topk_groups * group < c->n_experts_used)
                die("%s: topk_group %d groups of %d experts cannot hold num_experts_per_tok %d", file, c->topk_groups, group,
                    c->n_experts_used);
            if (v3 && group < 2)
                die("%s: n_group %d leaves one expert per group; the sigmoid router ranks a group by its two best", file,
                    c->n_expert_groups);
        }
    }
    int mtp = v3 ? cfg_int(file, root, "num_nextn_predict_layers", 0, 0) : 0;
    if (mtp < 0) die("%s: num_nextn_predict_layers %d is negative", file, mtp);
    return mtp;
}

/* ---------------------------------------------------------------------------
 * Rotary layout. Hugging Face's Llama-family attention rotates dims m and
 * m + rope_dim/2 of each head together (rotate_half); the kernel rotates
 * adjacent pairs (2m, 2m+1). So the rows of q_proj and k_proj, and their
 * biases, are reordered within each head: output row 2m is source row m and
 * output row 2m+1 is source row m + rope_dim/2, for m < rope_dim/2; rows past
 * rope_dim (partial rotary) stay in place. Both use frequency theta^(-2m /
 * rope_dim) for pair m. q and k are permuted alike, so q.k, and with it
 * attention, is unchanged; v and o_proj are not touched.
 *
 * The rotary rows need not start a head: an MLA query head is dn nope rows
 * then dr rotary rows, and kv_a_proj_with_mqa is the latent's c rows then
 * the shared rotary key's dr. So the rows are taken in blocks of head_dim
 * whose rotary part starts at row offset (0 for Llama).
 */
/* (rope_source_row, in model.h, which reorders GGUF files the same way) */

/* Element i of a tensor as f32 (the data need not be aligned). */
static float hf_value(const HfTensor *t, size_t i) {
    if (t->type == TYPE_F32) {
        float x;
        memcpy(&x, t->data + 4 * i, 4);
        return x;
    }
    uint16_t h;
    memcpy(&h, t->data + 2 * i, 2);
    return t->type == TYPE_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

/* f32 copy of a vector (norm or bias), optionally in rotary order. */
static void vector_to_f32(const HfTensor *t, float *out, int head_dim, int rope_dim) {
    int64_t n = t->shape[0];
    for (int64_t r = 0; r < n; r++) out[r] = hf_value(t, (size_t)(head_dim ? rope_source_row(r, head_dim, rope_dim, 0) : r));
}

/* Looks up a tensor the model needs and checks its dtype and shape: a
   vector, a matrix, or a stack of matrices (fused experts, 3-D). */
static const HfTensor *hf_need(HfCheckpoint *ck, const char *name, int ndim, const int64_t *shape) {
    HfTensor *t = hf_find(ck, name);
    if (!t) die("'%s': tensor '%s' is missing", ck->dir, name);
    if (t->type < 0)
        die("'%s': tensor '%s' has dtype %s (this converter reads F32, F16 and BF16; quantized checkpoints are not supported)",
            ck->dir, name, t->dtype);
    int same = t->ndim == ndim;
    for (int d = 0; d < ndim && same; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char got[128] = "", want[128] = "";
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        for (int d = 0; d < ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "", (long long)shape[d]);
        die("'%s': tensor '%s' has shape [%s], but config.json implies [%s]", ck->dir, name, got, want);
    }
    t->used = 1;
    return t;
}

/* attention.wk_b (MLA), mla_absorbed_key's transpose of kv_b_proj's key
   rows: with it the engine turns a query's nope part into the latent space
   once per token instead of expanding every cached latent into keys
   (absorbed attention). It is not a slice of the source, so it is built
   here, in f32, and quantized by the writer like any matrix. */
static float *absorbed_key(const HfTensor *kv_b, int n_heads, int dn, int dv, int c) {
    size_t n = (size_t)n_heads * (dn + dv) * c;
    float *src = xcalloc(n, sizeof(float)), *w = xcalloc((size_t)n_heads * c * dn, sizeof(float));
    for (size_t i = 0; i < n; i++) src[i] = hf_value(kv_b, i);
    mla_absorbed_key(src, n_heads, dn, dv, c, w);
    free(src);
    return w;
}

/* Reads a Hugging Face model folder into m: the config, and a tensor table
   under the engine's names that points into the mapped shards. */
static void hf_load(Model *m, HfCheckpoint *ck, const char *dir) {
    memset(m, 0, sizeof *m);
    memset(ck, 0, sizeof *ck);
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--; /* "folder/" and "folder" alike */
    if (dl >= sizeof ck->dir - 64) die("path too long: %s", dir);
    memcpy(ck->dir, dir, dl);

    char file[4200];
    snprintf(file, sizeof file, "%s/config.json", ck->dir);
    JsonDoc doc;
    parse_json_file(&doc, file);
    const JsonValue *root = &doc.root;

    const JsonValue *archs = cfg_get(root, "architectures");
    const char *arch_name = archs && archs->type == JSON_ARRAY && archs->len ? json_string(&archs->items[0]) : NULL;
    if (!arch_name) die("%s: 'architectures' should list the model class (e.g. [\"LlamaForCausalLM\"])", file);
    const HfArch *arch = NULL;
    for (size_t i = 0; i < sizeof hf_archs / sizeof hf_archs[0]; i++)
        if (!strcmp(arch_name, hf_archs[i].name)) arch = &hf_archs[i];
    if (!arch)
        die("%s: architecture '%s' is not supported (this build converts LlamaForCausalLM, MistralForCausalLM, "
            "Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, SmolLM3ForCausalLM, DeepseekV2ForCausalLM and "
            "DeepseekV3ForCausalLM)", file, arch_name);

    /* What would change the math and is not run by the engine. */
    if (cfg_get(root, "quantization_config")) die("%s: quantized checkpoints (quantization_config) are not supported", file);
    const char *act = cfg_str(file, root, "hidden_act", "silu");
    if (strcmp(act, "silu") && strcmp(act, "swish")) die("%s: hidden_act '%s' is not supported (only silu)", file, act);
    if (cfg_bool(file, root, "mlp_bias", 0)) die("%s: mlp_bias = true is not supported (the feed-forward has no biases)", file);
    if (cfg_bool(file, root, "use_mrope", 0)) die("%s: use_mrope = true (multimodal rotary) is not supported", file);

    ModelConfig *c = &m->cfg;
    c->arch = ARCH_LLAMA;
    c->dim = cfg_int(file, root, "hidden_size", 0, 1);
    c->n_layers = cfg_int(file, root, "num_hidden_layers", 0, 1);
    c->n_heads = cfg_int(file, root, "num_attention_heads", 0, 1);
    c->n_kv_heads = cfg_int(file, root, "num_key_value_heads", c->n_heads, 0);
    c->hidden_dim = cfg_int(file, root, "intermediate_size", 0, 1);
    c->vocab_size = cfg_int(file, root, "vocab_size", 0, 1);
    c->max_seq_len = cfg_int(file, root, "max_position_embeddings", 0, 1);
    c->norm_eps = (float)cfg_num(file, root, "rms_norm_eps", 1e-6, 0);
    if (c->n_heads <= 0 || c->dim <= 0) die("%s: hidden_size and num_attention_heads should be positive", file);
    int n_mtp = 0; /* DeepSeek-V3's multi-token-prediction layers, stored after the others */
    if (arch->deepseek) {
        n_mtp = read_deepseek(file, root, arch, c, &ck->rotate_half);
    } else {
        if (!cfg_get(root, "head_dim") && c->dim % c->n_heads)
            die("%s: hidden_size %d is not a multiple of num_attention_heads %d (and there is no head_dim)", file, c->dim, c->n_heads);
        c->head_dim = cfg_int(file, root, "head_dim", c->dim / c->n_heads, 0);
        c->v_head_dim = c->head_dim;
        ck->rotate_half = 1;
    }
    c->qk_norm = arch->qk_norm;
    if (arch->qwen_moe) read_qwen_moe(file, root, c);
    c->tied_embeddings = cfg_bool(file, root, "tie_word_embeddings", arch->tied_default);
    /* Llama-style attention_bias puts biases on q, k, v and o; Qwen2 always has q/k/v biases, never o */
    int attention_bias = arch->qkv_bias == 0 && cfg_bool(file, root, "attention_bias", 0);
    c->qkv_bias = arch->qkv_bias == 1 || attention_bias;
    c->out_bias = attention_bias;
    c->rope_pairs = ROPE_PAIRS_ADJACENT; /* after the permutation the writer does (rotate_half) */
    read_rope(file, root, arch, c, c->attn_kind == ATTN_MLA ? c->qk_rope_head_dim : c->head_dim);
    if (c->attn_kind == ATTN_MLA && c->rope_dim != c->qk_rope_head_dim)
        die("%s: partial_rotary_factor is not supported with latent attention (every qk_rope_head_dim dim rotates)", file);
    if (c->n_layers <= 0 || c->n_layers > 4096) die("%s: num_hidden_layers %d is impossible", file, c->n_layers);
    if (arch->nope_layers) ck->layer_pos = read_layer_pos(file, root, c->n_layers);
    int window = read_sliding_window(file, root, arch, c->n_layers, ck->layer_pos);
    if (window > 0 && window < c->max_seq_len) {
        note("the model uses a sliding attention window of %d tokens; the engine attends to the whole "
             "context, which is exact up to %d tokens: the default context is set to %d (max_position_embeddings "
             "is %d)", window, window, window, c->max_seq_len);
        c->max_seq_len = window;
    }
    for (size_t i = 0; i < root->len; i++)
        if (!hf_known_key(root->items[i].key, arch))
            note("%s: key '%s' is not known to the converter; ignored", file, root->items[i].key);
    json_free(&doc);
    char err[256];
    if (check_config(c, err, sizeof err)) die("%s: %s", file, err);

    read_weights(ck);

    /* The tensor table, under the engine's names. Vectors, and the MoE routers
       (f32 in the file, so that rounding never changes a token's experts), are
       converted to one f32 block. */
    int64_t q_dim = (int64_t)c->n_heads * c->head_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    size_t n_vec = (size_t)c->dim * (2 * (size_t)c->n_layers + 1) + (c->qkv_bias ? (size_t)c->n_layers * (q_dim + 2 * kv_dim) : 0) +
                   (c->out_bias ? (size_t)c->n_layers * c->dim : 0) +
                   (size_t)c->n_layers * ((size_t)c->q_lora_rank + c->kv_lora_rank) + /* MLA norms */
                   (c->qk_norm ? (size_t)c->n_layers * 2 * c->head_dim : 0) +
                   (size_t)c->n_layers * c->n_experts * ((size_t)c->dim + 1); /* routers and their biases */
    float *vec = ck->vectors = xcalloc(n_vec, sizeof(float));
    if (c->attn_kind == ATTN_MLA) {
        ck->wk_b = xcalloc((size_t)c->n_layers, sizeof *ck->wk_b);
        ck->n_wk_b = c->n_layers;
    }
    int cap = 0;
    char name[256], ours[64]; /* our names fit TENSOR_NAME_BYTES: layers < 4096, experts < 65536 */
#define ADD(engine_name, type, rows, cols, data)                                                                   \
    do {                                                                                                           \
        if (add_tensor(m, &cap, engine_name, type, rows, cols, data)) die("out of memory");                       \
    } while (0)
#define MATRIX(engine_name, hf_name, rows, cols)                                                                   \
    do {                                                                                                           \
        const HfTensor *t_ = hf_need(ck, hf_name, 2, (int64_t[]){rows, cols});                                     \
        ADD(engine_name, t_->type, rows, cols, t_->data);                                                          \
    } while (0)
#define VECTOR(engine_name, hf_name, n, head_dim, rope_dim)                                                        \
    do {                                                                                                           \
        vector_to_f32(hf_need(ck, hf_name, 1, (int64_t[]){n}), vec, head_dim, rope_dim);                           \
        ADD(engine_name, TYPE_F32, 0, n, vec);                                                                     \
        vec += n;                                                                                                  \
    } while (0)
#define F32_MATRIX(engine_name, hf_name, rows, cols)                                                               \
    do {                                                                                                           \
        const HfTensor *t_ = hf_need(ck, hf_name, 2, (int64_t[]){rows, cols});                                     \
        for (size_t i_ = 0; i_ < (size_t)(rows) * (size_t)(cols); i_++) vec[i_] = hf_value(t_, i_);              \
        ADD(engine_name, TYPE_F32, rows, cols, vec);                                                               \
        vec += (size_t)(rows) * (size_t)(cols);                                                                    \
    } while (0)
    MATRIX("tok_embeddings", "model.embed_tokens.weight", c->vocab_size, c->dim);
    VECTOR("norm", "model.norm.weight", c->dim, 0, 0);
    HfTensor *lm_head = hf_find(ck, "lm_head.weight");
    if (!c->tied_embeddings) MATRIX("output", "lm_head.weight", c->vocab_size, c->dim);
    else if (lm_head) { /* transformers ties it to the embedding whatever the file holds */
        lm_head->used = 1;
        note("lm_head.weight ignored: tie_word_embeddings is true, so the classifier is the embedding");
    }
    for (int l = 0; l < c->n_layers; l++) {
#define HF(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
#define OURS(suffix) (snprintf(ours, sizeof ours, "layers.%d.%s", l, suffix), ours)
        VECTOR(OURS("attention_norm"), HF("input_layernorm.weight"), c->dim, 0, 0);
        VECTOR(OURS("ffn_norm"), HF("post_attention_layernorm.weight"), c->dim, 0, 0);
        if (c->attn_kind == ATTN_MLA) { /* names and shapes: docs/FORMAT.md, multi-head latent attention */
            int64_t h = c->n_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim;
            int64_t rank = c->kv_lora_rank;
            if (c->q_lora_rank) {
                MATRIX(OURS("attention.wq_a"), HF("self_attn.q_a_proj.weight"), c->q_lora_rank, c->dim);
                VECTOR(OURS("attention.q_a_norm"), HF("self_attn.q_a_layernorm.weight"), c->q_lora_rank, 0, 0);
                MATRIX(OURS("attention.wq_b"), HF("self_attn.q_b_proj.weight"), q_dim, c->q_lora_rank);
            } else {
                MATRIX(OURS("attention.wq"), HF("self_attn.q_proj.weight"), q_dim, c->dim);
            }
            MATRIX(OURS("attention.wkv_a"), HF("self_attn.kv_a_proj_with_mqa.weight"), rank + dr, c->dim);
            VECTOR(OURS("attention.kv_a_norm"), HF("self_attn.kv_a_layernorm.weight"), rank, 0, 0);
            MATRIX(OURS("attention.wkv_b"), HF("self_attn.kv_b_proj.weight"), h * (dn + dv), rank);
            const HfTensor *kv_b = hf_find(ck, HF("self_attn.kv_b_proj.weight")); /* its shape was checked just above */
            ck->wk_b[l] = absorbed_key(kv_b, c->n_heads, c->qk_nope_head_dim, c->v_head_dim, c->kv_lora_rank);
            ADD(OURS("attention.wk_b"), TYPE_F32, h * rank, dn, ck->wk_b[l]);
            MATRIX(OURS("attention.wo"), HF("self_attn.o_proj.weight"), c->dim, h * dv);
        } else {
            MATRIX(OURS("attention.wq"), HF("self_attn.q_proj.weight"), q_dim, c->dim);
            MATRIX(OURS("attention.wk"), HF("self_attn.k_proj.weight"), kv_dim, c->dim);
            MATRIX(OURS("attention.wv"), HF("self_attn.v_proj.weight"), kv_dim, c->dim);
            MATRIX(OURS("attention.wo"), HF("self_attn.o_proj.weight"), c->dim, q_dim);
            if (c->qk_norm) {
                VECTOR(OURS("attention.q_norm"), HF("self_attn.q_norm.weight"), c->head_dim, c->head_dim, c->rope_dim);
                VECTOR(OURS("attention.k_norm"), HF("self_attn.k_norm.weight"), c->head_dim, c->head_dim, c->rope_dim);
            }
        }
        if (moe_layer(c, l)) { /* docs/FORMAT.md, mixture of experts */
            int64_t n_exp = c->n_experts, mh = c->moe_hidden_dim, shared = (int64_t)c->n_shared_experts * mh;
#define EXPERT(e, w) (snprintf(ours, sizeof ours, "layers.%d.feed_forward.experts.%d.%s", l, (int)(e), w), ours)
            F32_MATRIX(OURS("feed_forward.router"), HF("mlp.gate.weight"), n_exp, c->dim);
            if (c->router == ROUTER_SIGMOID)
                VECTOR(OURS("feed_forward.router_bias"), HF("mlp.gate.e_score_correction_bias"), n_exp, 0, 0);
            if (hf_find(ck, HF("mlp.experts.gate_up_proj"))) {
                /* transformers' in-memory layout: the experts stacked, each expert's gate rows then its up rows */
                const HfTensor *gate_up = hf_need(ck, HF("mlp.experts.gate_up_proj"), 3, (int64_t[]){n_exp, 2 * mh, c->dim});
                const HfTensor *down = hf_need(ck, HF("mlp.experts.down_proj"), 3, (int64_t[]){n_exp, c->dim, mh});
                size_t gate_up_row = type_row_bytes(gate_up->type, c->dim), down_row = type_row_bytes(down->type, mh);
                for (int64_t e = 0; e < n_exp; e++) {
                    const uint8_t *gate = gate_up->data + (size_t)(e * 2 * mh) * gate_up_row;
                    ADD(EXPERT(e, "w1"), gate_up->type, mh, c->dim, gate);
                    ADD(EXPERT(e, "w2"), down->type, c->dim, mh, down->data + (size_t)(e * c->dim) * down_row);
                    ADD(EXPERT(e, "w3"), gate_up->type, mh, c->dim, gate + (size_t)mh * gate_up_row);
                }
            } else { /* the hub layout: one tensor per expert and projection */
#define HF_EXPERT(e, proj) (snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s.weight", l, (int)(e), proj), name)
                for (int64_t e = 0; e < n_exp; e++) {
                    MATRIX(EXPERT(e, "w1"), HF_EXPERT(e, "gate_proj"), mh, c->dim);
                    MATRIX(EXPERT(e, "w2"), HF_EXPERT(e, "down_proj"), c->dim, mh);
                    MATRIX(EXPERT(e, "w3"), HF_EXPERT(e, "up_proj"), mh, c->dim);
                }
#undef HF_EXPERT
            }
#undef EXPERT
            if (shared) { /* the shared experts run as one SwiGLU n_shared_experts times as wide */
                MATRIX(OURS("feed_forward.shared.w1"), HF("mlp.shared_experts.gate_proj.weight"), shared, c->dim);
                MATRIX(OURS("feed_forward.shared.w2"), HF("mlp.shared_experts.down_proj.weight"), c->dim, shared);
                MATRIX(OURS("feed_forward.shared.w3"), HF("mlp.shared_experts.up_proj.weight"), shared, c->dim);
            }
        } else {
            MATRIX(OURS("feed_forward.w1"), HF("mlp.gate_proj.weight"), c->hidden_dim, c->dim);
            MATRIX(OURS("feed_forward.w2"), HF("mlp.down_proj.weight"), c->dim, c->hidden_dim);
            MATRIX(OURS("feed_forward.w3"), HF("mlp.up_proj.weight"), c->hidden_dim, c->dim);
        }
        if (c->qkv_bias) {
            VECTOR(OURS("attention.bq"), HF("self_attn.q_proj.bias"), q_dim, c->head_dim, c->rope_dim);
            VECTOR(OURS("attention.bk"), HF("self_attn.k_proj.bias"), kv_dim, c->head_dim, c->rope_dim);
            VECTOR(OURS("attention.bv"), HF("self_attn.v_proj.bias"), kv_dim, 0, 0);
        }
        if (c->out_bias) VECTOR(OURS("attention.bo"), HF("self_attn.o_proj.bias"), c->dim, 0, 0);
        HfTensor *inv_freq = hf_find(ck, HF("self_attn.rotary_emb.inv_freq"));
        if (inv_freq) inv_freq->used = 1; /* older checkpoints saved the RoPE table; it is recomputed */
#undef HF
#undef OURS
    }
#undef ADD
#undef MATRIX
#undef VECTOR
#undef F32_MATRIX
    if (ck->layer_pos && add_tensor(m, &cap, "layer_pos", TYPE_U8, 0, c->n_layers, ck->layer_pos)) die("out of memory");
    if (n_mtp > 0) { /* model.layers.N.* for N from num_hidden_layers on: a draft head, not part of the model */
        int n_skipped = 0;
        for (int i = 0; i < ck->n_tensors; i++) {
            const char *t = ck->tensors[i].name, *p = t + strlen("model.layers.");
            char *end;
            if (strncmp(t, "model.layers.", strlen("model.layers.")) || *p < '0' || *p > '9') continue;
            long layer = strtol(p, &end, 10);
            if (*end == '.' && layer >= c->n_layers && layer < (long)c->n_layers + n_mtp) {
                ck->tensors[i].used = 1;
                n_skipped++;
            }
        }
        if (n_skipped)
            note("%d tensors of the %d multi-token-prediction layer(s) (model.layers.%d and up) ignored: "
                 "the engine predicts one token at a time", n_skipped, n_mtp, c->n_layers);
    }
    for (int i = 0; i < ck->n_tensors; i++)
        if (!ck->tensors[i].used)
            die("'%s': tensor '%s' is not part of a %s with this config.json (an unsupported variant?)", ck->dir,
                ck->tensors[i].name, arch->name);
    if (model_bind(m, err, sizeof err)) die("'%s': %s", ck->dir, err);
}

/* ===========================================================================
 * Writing the model file.
 */

/* One tensor of the output file: where its data comes from and its new type. */
typedef struct {
    char name[TENSOR_NAME_BYTES];
    int type, ndim;
    int64_t shape[4];
    int src_type;
    const void *src;
    size_t nbytes;
    uint64_t offset;
    int rope_head_dim, rope_dim, rope_offset; /* rope_head_dim > 0: rows reordered by rope_source_row */
} OutTensor;

typedef struct {
    OutTensor *t;
    int n, cap;
} OutTable;

static OutTensor *out_add(OutTable *tab, const char *name, int type, int src_type, const void *src, int ndim, const int64_t *shape) {
    if (tab->n == tab->cap) {
        tab->cap = tab->cap ? tab->cap * 2 : 64;
        tab->t = realloc(tab->t, (size_t)tab->cap * sizeof *tab->t);
        if (!tab->t) die("out of memory");
    }
    OutTensor *o = &tab->t[tab->n++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->type = type;
    o->src_type = src_type;
    o->src = src;
    o->ndim = ndim;
    memcpy(o->shape, shape, (size_t)ndim * sizeof *shape);
    o->nbytes = tensor_bytes(type, ndim, shape);
    return o;
}

/* --quant's value: a type quantize_row writes, or QUANT_Q4_K_M. */
enum { QUANT_KEEP = -1, QUANT_Q4_K_M = -2 };

static int parse_type(const char *s) {
    if (!strcmp(s, "q4_k_m")) return QUANT_Q4_K_M;
    for (int t = 0; t < TYPE_COUNT; t++)
        if (type_can_quantize(t) && !strcmp(s, type_name(t))) return t;
    die("unknown --quant '%s' (use f32, f16, bf16, q8_0, q4_0, q5_0, q4_k, q6_k or q4_k_m)", s);
    return -1;
}

/* llama.cpp's choice of the layers that get more bits in its _M mixes: the
   first and last eighth, and every third layer between. */
static int more_bits_layer(int layer, int n_layers) {
    return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

/* The type a matrix gets under --quant: the Q4_K_M mix picks per tensor,
   then, as llama.cpp does, rows that do not fit a super-block type's 256
   fall back (q4_k to q5_0, q6_k to q8_0), and rows that fit no block to f16. */
static int export_type(const char *name, int n_layers, int quant) {
    int type = quant, layer = -1;
    if (quant == QUANT_Q4_K_M) {
        type = TYPE_Q4_K;
        sscanf(name, "layers.%d.", &layer);
        if (!strcmp(name, "output")) type = TYPE_Q6_K;
        else if ((ends_with(name, ".attention.wv") || ends_with(name, ".feed_forward.w2")) && layer >= 0 &&
                 more_bits_layer(layer, n_layers))
            type = TYPE_Q6_K;
    }
    return type;
}

static int export_fallback(int type, int64_t cols) {
    if (type_row_bytes(type, cols)) return type;
    type = type == TYPE_Q4_K ? TYPE_Q5_0 : type == TYPE_Q6_K ? TYPE_Q8_0 : type;
    return type_row_bytes(type, cols) ? type : TYPE_F16;
}

static void write_all(FILE *f, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, f) != n) die("cannot write '%s': %s", tempfile_path(), strerror(errno));
}

/* Writes one tensor, converting row by row so no second copy of a large
   matrix is ever held. Same type in and out: the bytes are copied as they are
   (row by row when the rows are reordered). Each source row is first copied
   to row_in, because a safetensors file does not align its data. */
static void write_tensor(FILE *f, const OutTensor *o, void *row_in, float *row_f32, void *row_out) {
    if (o->type == o->src_type && !o->rope_head_dim) { write_all(f, o->src, o->nbytes); return; }
    int64_t cols = o->shape[o->ndim - 1], rows = 1;
    for (int d = 0; d < o->ndim - 1; d++) rows *= o->shape[d];
    size_t in_bytes = type_row_bytes(o->src_type, cols), out_bytes = type_row_bytes(o->type, cols);
    for (int64_t r = 0; r < rows; r++) {
        int64_t s = o->rope_head_dim ? rope_source_row(r, o->rope_head_dim, o->rope_dim, o->rope_offset) : r;
        const uint8_t *src = (const uint8_t *)o->src + (size_t)s * in_bytes;
        if (o->type == o->src_type) { write_all(f, src, in_bytes); continue; }
        memcpy(row_in, src, in_bytes);
        dequantize_row(o->src_type, row_in, row_f32, cols);
        quantize_row(o->type, row_f32, row_out, cols);
        write_all(f, row_out, out_bytes);
    }
}

/* For a Hugging Face checkpoint whose rotary rows are in rotate_half order:
   which rows of tensor `name` the writer reorders (rope_source_row). Blocks
   of head_dim rows whose rotary part starts at offset: a Llama q or k head,
   an MLA query head (dn nope rows, then dr rotary), or the one block of
   kv_a_proj_with_mqa (the latent's rows, then the shared rotary key's).
   Returns the block size, 0 for tensors with no rotary rows. */
static int rope_rows(const ModelConfig *c, const char *name, int *rope_dim, int *offset) {
    *rope_dim = c->rope_dim;
    *offset = 0;
    if (c->attn_kind == ATTN_MLA) {
        if (ends_with(name, ".attention.wq") || ends_with(name, ".attention.wq_b")) {
            *offset = c->qk_nope_head_dim;
            return c->head_dim;
        }
        if (ends_with(name, ".attention.wkv_a")) {
            *offset = c->kv_lora_rank;
            return c->kv_lora_rank + c->qk_rope_head_dim;
        }
        return 0;
    }
    return ends_with(name, ".attention.wq") || ends_with(name, ".attention.wk") ? c->head_dim : 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--version")) printf("export %s\n", ENGINE_VERSION), exit(0);
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) usage();
    if (argc < 3 || argv[1][0] == '-' || argv[2][0] == '-')
        die("usage: ./export SRC OUT [--quant TYPE] [--tokenizer FILE|none] (./export --help says more)");
    const char *src = argv[1], *out = argv[2], *tok_path = NULL;
    int quant = QUANT_KEEP;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--quant") && i + 1 < argc) quant = parse_type(argv[++i]);
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tok_path = argv[++i];
        else if (!strcmp(argv[i], "--quant") || !strcmp(argv[i], "--tokenizer")) die("option %s needs a value", argv[i]);
        else die("unknown option '%s'", argv[i]);
    }
    int no_tokenizer = tok_path && !strcmp(tok_path, "none");
    if (no_tokenizer) tok_path = NULL;

    char err[512];
    Model m;
    HfCheckpoint hf = {0};
    struct stat st;
    int is_hf = !stat(src, &st) && S_ISDIR(st.st_mode);
    if (is_hf) hf_load(&m, &hf, src);
    else if (model_load(&m, src, err, sizeof err)) die("%s", err);
    if (quant == QUANT_KEEP && m.source != SOURCE_GGUF) quant = TYPE_Q8_0; /* GGUF files keep their types */
    Tokenizer *own_tok = NULL;
    const Tokenizer *tok = no_tokenizer ? NULL : m.tokenizer;
    if (tok_path) {
        own_tok = tokenizer_load(tok_path, m.cfg.vocab_size, err, sizeof err);
        if (!own_tok) die("%s", err);
        tok = own_tok;
    } else if (is_hf && !no_tokenizer) {
        /* tokenizer.json (or tokenizer.model), tokenizer_config.json and
           generation_config.json: tokenizer.c knows what they mean. */
        own_tok = tokenizer_load_hf(hf.dir, err, sizeof err);
        if (!own_tok) die("%s (--tokenizer none converts the model without one)", err);
        tok = own_tok;
    }
    /* The loader insists on this, so a file that disagrees is never written. A
       smaller tokenizer is fine: checkpoints pad their embedding (Qwen2: 151936
       rows for 151665 tokens), and the padding rows are never produced. */
    if (tok && tokenizer_n_vocab(tok) > m.cfg.vocab_size)
        die("the tokenizer has %d tokens but the model's vocabulary is only %d", tokenizer_n_vocab(tok), m.cfg.vocab_size);
    if (!tok) note("no tokenizer %s; ./run will need -z for this model", no_tokenizer ? "(--tokenizer none)" : "given (--tokenizer)");

    /* Create the output first, so an unwritable destination fails before any work. */
    int fd = tempfile_create(out);
    if (fd < 0) die("cannot create a temporary file beside '%s': %s", out, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) die("cannot write '%s': %s", tempfile_path(), strerror(errno));

    /* The output's tensor table: weights in the chosen type, vectors in f32. */
    OutTable tab = {0};
    int n_fallback = 0;
    const char *fallback_example = NULL;
    int fallback_from = 0, fallback_to = 0;
    for (int i = 0; i < m.n_tensors; i++) {
        const Tensor *t = &m.tensors[i];
        if (!strncmp(t->name, "tokenizer.", 10)) continue; /* rewritten below */
        int type = t->type;
        if (t->ndim == 2 && type_is_weight(t->type) && quant != QUANT_KEEP) {
            /* a MoE router stays f32: a rounded router score can change which experts a token gets */
            type = ends_with(t->name, ".feed_forward.router") ? TYPE_F32 : export_type(t->name, m.cfg.n_layers, quant);
            int fits = export_fallback(type, t->shape[1]);
            if (fits != type) {
                if (!n_fallback++) fallback_example = t->name, fallback_from = type, fallback_to = fits;
                type = fits;
            }
        }
        OutTensor *o = out_add(&tab, t->name, type, t->type, t->data, t->ndim, t->shape);
        /* Hugging Face's Llama-family q and k rows (and DeepSeek-V3's without
           rope_interleave) are in rotate_half order (see rope_source_row); the
           biases were reordered when they were read. */
        if (is_hf && hf.rotate_half) o->rope_head_dim = rope_rows(&m.cfg, t->name, &o->rope_dim, &o->rope_offset);
    }
    if (n_fallback)
        note("%d matrices have rows that are not a multiple of %s's %d (e.g. %s): stored as %s", n_fallback,
             type_name(fallback_from), type_block(fallback_from), fallback_example, type_name(fallback_to));
    TokenizerConfig tc = {0};
    TokenizerArray tok_arrays[TOKENIZER_MAX_ARRAYS];
    if (tok) {
        int n_arrays = tokenizer_serialize(tok, &tc, tok_arrays);
        for (int i = 0; i < n_arrays; i++) {
            char name[TENSOR_NAME_BYTES];
            snprintf(name, sizeof name, "tokenizer.%s", tok_arrays[i].name);
            if (tok_arrays[i].n > 0)
                out_add(&tab, name, tok_arrays[i].type, tok_arrays[i].type, tok_arrays[i].data, 1, &tok_arrays[i].n);
        }
    }

    /* Layout: header, table, then each tensor on a 64-byte boundary. */
    uint64_t offset = MODEL_HEADER_BYTES + (uint64_t)tab.n * sizeof(TensorEntry);
    int64_t widest = 1;
    for (int i = 0; i < tab.n; i++) {
        offset = (offset + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN;
        tab.t[i].offset = offset;
        offset += tab.t[i].nbytes;
        if (tab.t[i].shape[tab.t[i].ndim - 1] > widest) widest = tab.t[i].shape[tab.t[i].ndim - 1];
    }
    FileHeader h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, MODEL_MAGIC, 4);
    h.version = MODEL_VERSION;
    h.header_bytes = MODEL_HEADER_BYTES;
    h.n_tensors = (uint32_t)tab.n;
    h.table_offset = MODEL_HEADER_BYTES;
    h.file_bytes = offset;
    h.config = m.cfg;
    h.tokenizer = tc;

    write_all(f, &h, sizeof h);
    for (int i = 0; i < tab.n; i++) {
        TensorEntry e;
        memset(&e, 0, sizeof e);
        memcpy(e.name, tab.t[i].name, sizeof e.name);
        e.type = (uint32_t)tab.t[i].type;
        e.ndim = (uint32_t)tab.t[i].ndim;
        for (int d = 0; d < tab.t[i].ndim; d++) e.shape[d] = (uint64_t)tab.t[i].shape[d];
        e.offset = tab.t[i].offset;
        e.nbytes = tab.t[i].nbytes;
        write_all(f, &e, sizeof e);
    }
    float *row_f32 = malloc((size_t)widest * sizeof(float));
    void *row_in = malloc((size_t)widest * sizeof(float)), *row_out = malloc((size_t)widest * sizeof(float));
    if (!row_f32 || !row_in || !row_out) die("out of memory");
    static const uint8_t zeros[MODEL_ALIGN];
    int progress = isatty(STDERR_FILENO); /* a line per tensor would flood a log */
    uint64_t at = MODEL_HEADER_BYTES + (uint64_t)tab.n * sizeof(TensorEntry);
    for (int i = 0; i < tab.n; i++) {
        const OutTensor *o = &tab.t[i];
        write_all(f, zeros, o->offset - at);
        write_tensor(f, o, row_in, row_f32, row_out);
        at = o->offset + o->nbytes;
        if (progress) fprintf(stderr, "\r[%d/%d] %-40s %-5s", i + 1, tab.n, o->name, type_name(o->type));
    }
    if (progress) fprintf(stderr, "\n");
    if (fflush(f) || fsync(fileno(f)) || fclose(f)) die("cannot write '%s': %s", tempfile_path(), strerror(errno));
    if (tempfile_commit(out)) die("cannot rename '%s' to '%s': %s", tempfile_path(), out, strerror(errno));
    fprintf(stderr, "wrote %s: %d tensors, %.2f MiB, weights %s\n", out, tab.n, offset / 1048576.0,
            quant == QUANT_Q4_K_M ? "q4_k_m" : quant == QUANT_KEEP ? "as in the source" : type_name(quant));
    free(row_f32);
    free(row_in);
    free(row_out);
    free(tab.t);
    tokenizer_free(own_tok);
    model_free(&m);
    hf_free(&hf);
    return 0;
}
