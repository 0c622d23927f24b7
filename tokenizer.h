/* tokenizer.h - text <-> token ids for the engine (implemented in tokenizer.c).
 *
 * Two algorithms cover the common LLM vocabularies:
 *   SentencePiece-style BPE (Llama 2, TinyLlama, Mistral, Phi-3, llama2.c):
 *     merges by piece score, byte fallback, "\xe2\x96\x81" stored as ' '.
 *   Byte-level / rank BPE (GPT-2, Llama 3, Qwen2, SmolLM, DeepSeek, Falcon,
 *     StarCoder, MPT, ...; and Hugging Face's BPE form of SentencePiece
 *     vocabularies): a regex pre-tokenizer, then merges by rank.
 * The tokenizer's data lives either in a model file written by ./export
 * (mapped, used in place) or in memory read by one of the loaders below
 * (llama2.c tokenizer.bin, GGUF, Hugging Face folder, SentencePiece
 * tokenizer.model). Everything else (lookup indexes, compiled regexes) is
 * built once at creation. There is no global state.
 */
#ifndef TOKENIZER_H
#define TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "gguf.h"

/* How text is split into tokens. */
enum {
    TOKENIZER_NONE = 0,
    TOKENIZER_SPM = 1, /* SentencePiece-style BPE: merge the adjacent pair whose merged
                          piece has the highest score; byte fallback <0xNN>; spaces are
                          stored as ' ' in the pieces (llama2.c convention) */
    TOKENIZER_BPE = 2, /* rank BPE: the text is split by the pre-tokenizer regexes, then
                          the pair listed first in the merges merges first. With
                          TOKENIZER_BYTE_LEVEL the pieces of normal tokens are stored as
                          raw bytes (GPT-2's byte-to-unicode mapping undone); without it,
                          as for TOKENIZER_SPM, ' ' stands for U+2581 */
};

/* TokenizerConfig.flags / TokenizerData.flags */
enum {
    TOKENIZER_BYTE_LEVEL = 1 << 0,    /* BPE over bytes; every byte is a token */
    TOKENIZER_IGNORE_MERGES = 1 << 1, /* a pre-token that is a whole piece is taken as is (Llama 3) */
    TOKENIZER_NFC = 1 << 2,           /* NFC-normalize text before pre-tokenization */
    TOKENIZER_REMOVE_EXTRA_WS = 1 << 3, /* SentencePiece: drop leading/trailing spaces, collapse runs */
    TOKENIZER_FUSE_UNK = 1 << 4,      /* consecutive <unk> become one */
    TOKENIZER_PREFIX_FIRST = 1 << 5,  /* add_prefix_space only at the very start of the text
                                         (Metaspace prepend_scheme "first"), not after special tokens */
};

/* Per-token flags of added tokens (the "strip" array). */
enum { TOKENIZER_LSTRIP = 1, TOKENIZER_RSTRIP = 2 };

/* Token types, numbered as SentencePiece numbers them. */
enum {
    TOKEN_NORMAL = 1,
    TOKEN_UNKNOWN = 2,
    TOKEN_CONTROL = 3, /* <s>, </s>: never produced by encoding plain text */
    TOKEN_USER_DEFINED = 4,
    TOKEN_UNUSED = 5,
    TOKEN_BYTE = 6, /* <0xNN>: decodes to the single byte NN */
};

/* The tokenizer's data as stored in a model file. Arrays are borrowed. */
typedef struct {
    int kind;                     /* TOKENIZER_* */
    int n_vocab;
    int bos_id, eos_id;           /* -1 when the vocabulary has none */
    int add_bos;                  /* a prompt starts with BOS */
    int add_prefix_space;         /* SentencePiece's dummy prefix: " " before non-empty text */
    const uint32_t *piece_offset; /* [n_vocab + 1]: piece i is piece_bytes[off[i] .. off[i+1]) */
    const char *piece_bytes;
    const float *scores;          /* [n_vocab] merge priority (TOKENIZER_SPM) */
    const uint8_t *types;         /* [n_vocab] TOKEN_* */
    /* Added with the second tokenizer kind; zero / NULL when unused. */
    int flags;                    /* TOKENIZER_* flags */
    const uint32_t *merges;       /* [2 * n_merges] (left id, right id), best rank first (BPE) */
    int n_merges;
    const char *pretok;           /* pre-tokenizer regexes, each NUL-terminated, applied in turn */
    size_t pretok_len;            /* bytes, the NULs included */
    const char *chat_template;    /* not NUL-terminated */
    size_t chat_template_len;
    const uint32_t *eos_ids;      /* more ids that end generation (besides eos_id) */
    int n_eos;
    const uint32_t *strip;        /* [2 * n_strip] (id, TOKENIZER_LSTRIP | TOKENIZER_RSTRIP) */
    int n_strip;
} TokenizerData;

typedef struct Tokenizer Tokenizer;

/* Builds a tokenizer over borrowed arrays (they must outlive it).
   Returns NULL and writes one line to err on invalid data. The struct has no
   size for piece_bytes: the caller makes sure it holds piece_offset[n_vocab]
   bytes. When two tokens have the same piece, encoding uses the lower id. */
Tokenizer *tokenizer_from_data(const TokenizerData *data, char *err, size_t errlen);

/* ---------------------------------------------------------------------------
 * How a model file stores a tokenizer: a few scalars in the file header
 * (TokenizerConfig, 64 bytes, part of the format) and named arrays, stored as
 * tensors "tokenizer.NAME". Only tokenizer.c knows what the arrays mean; the
 * converter writes whatever tokenizer_serialize lists and the loader hands
 * every tokenizer.* tensor back to tokenizer_new.
 */
typedef struct {
    int32_t kind;              /* TOKENIZER_*; 0 = the file has no tokenizer */
    int32_t n_vocab;
    int32_t bos_id, eos_id;    /* -1 = none */
    int32_t add_bos;
    int32_t add_prefix_space;
    int32_t flags;             /* TOKENIZER_BYTE_LEVEL, ... */
    int32_t reserved[9];
} TokenizerConfig;

/* Element types of the arrays: the model file's tensor type numbers. */
enum { TOKENIZER_ARRAY_F32 = 0, TOKENIZER_ARRAY_U8 = 5, TOKENIZER_ARRAY_U32 = 6 };

typedef struct {
    const char *name;          /* without the "tokenizer." prefix */
    int type;                  /* TOKENIZER_ARRAY_* */
    int64_t n;                 /* elements */
    const void *data;
} TokenizerArray;

#define TOKENIZER_MAX_ARRAYS 16

/* A tokenizer over arrays read from a model file (borrowed: they must outlive
   it). Returns NULL and writes one line to err when something is missing or
   inconsistent. */
Tokenizer *tokenizer_new(const TokenizerConfig *cfg, const TokenizerArray *arrays, int n_arrays, char *err,
                         size_t errlen);

/* What to store in a model file for t: fills *cfg and arrays, returns how many arrays. */
int tokenizer_serialize(const Tokenizer *t, TokenizerConfig *cfg, TokenizerArray arrays[TOKENIZER_MAX_ARRAYS]);

int tokenizer_n_vocab(const Tokenizer *t);
int tokenizer_bos(const Tokenizer *t);            /* -1 when none */
int tokenizer_add_bos(const Tokenizer *t);        /* does a prompt start with BOS */
int tokenizer_is_eos(const Tokenizer *t, int id); /* does id end generation */
size_t tokenizer_max_piece_bytes(const Tokenizer *t); /* the longest a decoded token can be */

/* Loaders. Each returns NULL and writes one line to err on failure, naming
   what is wrong or unsupported (e.g. a WordPiece or Unigram vocabulary).

   tokenizer_load_gguf: the tokenizer.ggml.* metadata of a GGUF file (model
   "llama" = SentencePiece, "gpt2" = byte-level BPE with the pre-tokenizer
   llama.cpp names in tokenizer.ggml.pre), plus tokenizer.chat_template.
   tokenizer_load_hf: a Hugging Face model folder: tokenizer.json (BPE models),
   tokenizer_config.json (add_bos_token, bos/eos, chat_template) and
   generation_config.json (eos_token_id, one or a list); tokenizer.model when
   there is no tokenizer.json.
   tokenizer_load_spm: a SentencePiece tokenizer.model (BPE model type). */
/* Any tokenizer file a user may hand over: a Hugging Face folder (or a file
   in one named tokenizer.json), a GGUF file, a SentencePiece .model, else a
   llama2.c tokenizer.bin (which needs n_vocab; the others carry theirs).
   One with more tokens than n_vocab (the model's embeddings) is refused. */
Tokenizer *tokenizer_load(const char *path, int n_vocab, char *err, size_t errlen);

Tokenizer *tokenizer_load_gguf(const char *path, char *err, size_t errlen);
/* The same from a GGUF file already parsed (a model file model.h has mapped);
   path names it in errors. */
Tokenizer *tokenizer_from_gguf(const Gguf *g, const char *path, char *err, size_t errlen);
Tokenizer *tokenizer_load_hf(const char *dir, char *err, size_t errlen);
Tokenizer *tokenizer_load_spm(const char *path, char *err, size_t errlen);

/* The chat template (Jinja source) the vocabulary came with, or NULL; *len
   gets its length (it is not NUL-terminated). */
const char *tokenizer_chat_template(const Tokenizer *t, size_t *len);

/* The lowest id whose piece is exactly the NUL-terminated text (special
   tokens such as "<|im_end|>" included), or -1. Pieces are compared as
   stored: SentencePiece's U+2581 is a space, byte-level pieces are raw bytes. */
int tokenizer_find(const Tokenizer *t, const char *piece);

/* Reads a llama2.c tokenizer.bin (the vocabulary size is not in that file, so
   the model's is passed). BOS = 1, EOS = 2, byte tokens are the pieces
   spelled "<0xNN>", piece 0 is <unk>. Returns NULL and writes err on failure. */
Tokenizer *tokenizer_load_llama2c(const char *path, int n_vocab, char *err, size_t errlen);

void tokenizer_free(Tokenizer *t);

/* The data the tokenizer runs on (what ./export writes into a model file). */
const TokenizerData *tokenizer_data(const Tokenizer *t);

/* Encodes len bytes of text (any bytes; not NUL-terminated). With add_bos
   (and the vocabulary having a BOS) ids[0] = BOS. Returns the number of ids,
   or -1 if more than max_ids would be needed; tokenizer_max_ids(len) ids
   always suffice. (Also -1 if memory runs out: encode allocates O(len)
   scratch, all freed.)
   Runs in O(len log len), so whole books can be encoded. Bytes that are not
   well-formed UTF-8 each become a byte token, so (given byte tokens in the
   vocabulary) decoding gives back the exact input.
   Special (control) tokens are NOT recognised in the text: "<s>" or
   "<|im_end|>" in a prompt are plain text, so user text cannot forge them.
   Added tokens that are not special (USER_DEFINED) are always recognised,
   as SentencePiece, Hugging Face and llama.cpp do. */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos,
                     int *ids, int max_ids);

/* NFC (TOKENIZER_NFC) can make text longer, and the ids come from the
   normalized text: a code point decomposes into up to three whose UTF-8 is
   up to three times as long (U+1D160 MUSICAL SYMBOL EIGHTH NOTE, 4 bytes,
   becomes U+1D158 U+1D165 U+1D16E, 12 bytes, and does not compose back), and
   composition only shortens. tests/test_tokenizer.c derives this factor
   from unicode_tables.h. */
#define TOKENIZER_NFC_MAX_GROWTH 3

/* The most ids tokenizer_encode or tokenizer_encode_ex (parse_special or
   not) can return for len bytes: 3 * len + 2 (SIZE_MAX if that overflows).
   Each byte of the normalized text gives at most one id, as does each added
   token; then BOS and a prefix space per stretch between added tokens. */
size_t tokenizer_max_ids(size_t len);

/* tokenizer_encode with a choice: parse_special = 1 turns the text of
   control tokens (e.g. "<|im_start|>" in a rendered chat template) into
   those tokens, matched before normalization and pre-tokenization, leftmost
   and longest first, honouring their lstrip/rstrip flags. */
int tokenizer_encode_ex(const Tokenizer *t, const char *text, size_t len, int add_bos,
                        int parse_special, int *ids, int max_ids);

/* The bytes token id stands for, to print after token prev (prev = -1 at the
   start): byte tokens give their byte, and a leading space is dropped right
   after BOS (as llama2.c and SentencePiece do). Control tokens give "".
   Returns a pointer valid for the tokenizer's lifetime; *len gets the length.
   The bytes are NOT NUL-terminated: use *len. Unknown tokens (<unk>) and ids
   out of range give "" as well. */
const char *tokenizer_decode(const Tokenizer *t, int prev, int id, size_t *len);

/* Length of the well-formed UTF-8 character at s (no overlongs, surrogates
   or code points above U+10FFFF), or 1 for a byte that does not start one
   (s[0] < 0x80 also gives 1: test it to tell the two apart). s[0] is always
   read, so avail (the bytes s holds) must be at least 1. */
size_t utf8_char_len(const unsigned char *s, size_t avail);

#endif
