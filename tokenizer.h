/* tokenizer.h - text <-> token ids for the engine (implemented in tokenizer.c).
 *
 * The tokenizer's data (pieces, scores, token types) lives either in a model
 * file written by ./export (mapped, used in place) or in a llama2.c
 * tokenizer.bin read with tokenizer_load_llama2c (owned by the tokenizer).
 * Everything else (the piece lookup index) is built once at creation.
 * There is no global state: two tokenizers can live in one process.
 */
#ifndef TOKENIZER_H
#define TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

/* How text is split into tokens. */
enum {
    TOKENIZER_NONE = 0,
    TOKENIZER_SPM = 1, /* SentencePiece-style BPE: merge the adjacent pair whose merged
                          piece has the highest score; byte fallback <0xNN>; spaces are
                          stored as ' ' in the pieces (llama2.c convention) */
};

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
    int32_t reserved[10];
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

/* Reads a llama2.c tokenizer.bin (the vocabulary size is not in that file, so
   the model's is passed). BOS = 1, EOS = 2, byte tokens are the pieces
   spelled "<0xNN>", piece 0 is <unk>. Returns NULL and writes err on failure. */
Tokenizer *tokenizer_load_llama2c(const char *path, int n_vocab, char *err, size_t errlen);

void tokenizer_free(Tokenizer *t);

/* The data the tokenizer runs on (what ./export writes into a model file). */
const TokenizerData *tokenizer_data(const Tokenizer *t);

/* Encodes len bytes of text (any bytes; not NUL-terminated). With add_bos
   (and the vocabulary having a BOS) ids[0] = BOS. Returns the number of ids,
   or -1 if more than max_ids would be needed. len + 3 ids always suffice.
   (Also -1 if memory runs out: encode allocates O(len) scratch, all freed.)
   Runs in O(len log len), so whole books can be encoded. Bytes that are not
   well-formed UTF-8 each become a byte token, so (given byte tokens in the
   vocabulary) decoding gives back the exact input. */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos,
                     int *ids, int max_ids);

/* The bytes token id stands for, to print after token prev (prev = -1 at the
   start): byte tokens give their byte, and a leading space is dropped right
   after BOS (as llama2.c and SentencePiece do). Control tokens give "".
   Returns a pointer valid for the tokenizer's lifetime; *len gets the length.
   The bytes are NOT NUL-terminated: use *len. Unknown tokens (<unk>) and ids
   out of range give "" as well. */
const char *tokenizer_decode(const Tokenizer *t, int prev, int id, size_t *len);

#endif
