/* kernels.h - weight types, quantization blocks, dot-product kernels and the
 * thread pool. Included by model.h; not a public API of its own.
 *
 * Every kernel has a portable scalar version, which is the reference the
 * tests compare against, and SIMD versions chosen at compile time (AVX2+FMA+F16C,
 * AVX-512 VNNI for the int8 dots, NEON on AArch64 and on ARMv7 with VFPv4).
 * SIMD and scalar agree to float rounding; the integer parts of the quantized
 * dots agree exactly.
 */
#ifndef KERNELS_H
#define KERNELS_H

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KERNELS_AVX2 1
#endif
/* NEON: always on AArch64; on 32-bit ARM only with VFPv4's fused
   multiply-add (-mfpu=neon-vfpv4: Cortex-A7/A15 and later, Raspberry Pi 2
   on), because the float kernels' chains are fused multiply-adds, like the
   fmaf of their scalar tails and of gemm_x8_ref. Older ARMv7 NEON
   (-mfpu=neon) gets the portable kernels. ARMv7's NEON arithmetic flushes
   subnormal floats to zero, so there the kernels can differ from the scalar
   reference below 1.2e-38; each output is still computed one way only. */
#if defined(__ARM_NEON) && defined(__ARM_FEATURE_FMA)
#include <arm_neon.h>
#define KERNELS_NEON 1
#endif

/* ---------------------------------------------------------------------------
 * Types. The numbering is part of the model file format (docs/FORMAT.md).
 */
enum {
    TYPE_F32 = 0,
    TYPE_F16 = 1,
    TYPE_BF16 = 2,
    TYPE_Q8_0 = 3,   /* groups of 32: f16 scale + 32 int8, 8.5 bits per weight */
    TYPE_Q4_0 = 4,   /* groups of 32: f16 scale + 16 bytes of 4-bit values, 4.5 bits */
    TYPE_U8 = 5,     /* raw bytes (tokenizer pieces, per-layer flags) */
    TYPE_U32 = 6,
    TYPE_Q4_1 = 7,   /* groups of 32: scale and offset + 4-bit values, 5 bits */
    TYPE_Q5_0 = 8,   /* groups of 32: scale + 5-bit values, 5.5 bits */
    TYPE_Q5_1 = 9,   /* groups of 32: scale and offset + 5-bit values, 6 bits */
    TYPE_IQ4_NL = 10, /* groups of 32: scale + 4-bit indices into a fixed table of 16 levels, 4.5 bits */
    TYPE_Q2_K = 11,  /* super-blocks of 256, below: 2.625 bits */
    TYPE_Q3_K = 12,  /* 3.4375 bits */
    TYPE_Q4_K = 13,  /* 4.5 bits */
    TYPE_Q5_K = 14,  /* 5.5 bits */
    TYPE_Q6_K = 15,  /* 6.5625 bits */
    TYPE_IQ4_XS = 16, /* 4.25 bits */
    TYPE_COUNT
};

#define QK 32 /* weights per quantization group */

/* The scale sits beside its quants, as in ggml; the byte layout matches
   ggml's Q8_0 and Q4_0 blocks (q4_0: element j in the low nibble of qs[j],
   element j+16 in the high nibble; value = (nibble - 8) * d). */
typedef struct {
    uint16_t d; /* f16 scale */
    int8_t qs[QK];
} BlockQ8_0;

typedef struct {
    uint16_t d; /* f16 scale */
    uint8_t qs[QK / 2];
} BlockQ4_0;

/* Activations quantized for the integer dot products: one f32 scale per
   32 values, and their sum (q4_0's offset of 8 is taken out with it).
   Weights are dotted with these, never with each other. */
typedef struct {
    float d;
    int32_t sum;
    int8_t qs[QK];
} BlockQ8A;

/* Eight q8_0 or q4_0 rows interleaved, block by block, so that one integer
   multiply-add instruction works on all eight at once and the eight scales
   load together (model_repack makes them at load time; files never hold
   them). Within a block, the values go in eight steps of four: q8_0 keeps
   row r's values 4s..4s+3 at qs[(s * 8 + r) * 4], q4_0 keeps row r's byte
   4s + e (values 4s + e and 4s + e + 16 in its two nibbles) at
   qs[(s * 8 + r) * 4 + e] for s < 4. Each is exactly eight plain blocks
   long. */
typedef struct {
    uint16_t d[8];
    int8_t qs[8 * QK];
} BlockQ8_0x8;

typedef struct {
    uint16_t d[8];
    uint8_t qs[4 * QK];
} BlockQ4_0x8;

_Static_assert(sizeof(BlockQ8_0x8) == 8 * 34 && sizeof(BlockQ4_0x8) == 8 * 18, "an interleaved block is eight blocks");

_Static_assert(sizeof(BlockQ8_0) == 34, "BlockQ8_0 must be packed as in the file");
_Static_assert(sizeof(BlockQ4_0) == 18, "BlockQ4_0 must be packed as in the file");

/* The byte layouts below are ggml's, so GGUF files map as they are. */
typedef struct {
    uint16_t d, m; /* f16 scale and offset: value = q * d + m, q in 0..15 */
    uint8_t qs[QK / 2]; /* as q4_0: element j low nibble, j + 16 high */
} BlockQ4_1;

typedef struct {
    uint16_t d;
    uint8_t qh[4]; /* bit j: the fifth bit of element j */
    uint8_t qs[QK / 2]; /* value = (q - 16) * d */
} BlockQ5_0;

typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QK / 2]; /* value = q * d + m */
} BlockQ5_1;

typedef struct {
    uint16_t d;
    uint8_t qs[QK / 2]; /* value = IQ4_LEVELS[q] * d */
} BlockIQ4_NL;

/* Super-blocks: 256 weights, in sub-blocks of 16 or 32 that each have a
   small integer scale (and offset), times the block's f16 scales. */
#define QK_K 256

typedef struct {
    uint8_t scales[16]; /* per 16: scale in the low nibble, offset in the high */
    uint8_t qs[64];     /* 2-bit values: element 128h + 32j + l in bits 2j of qs[32h + l] */
    uint16_t d, dmin;   /* value = d * scale * q - dmin * offset */
} BlockQ2_K;

typedef struct {
    uint8_t hmask[32];  /* bit 4h + j of hmask[l]: element 128h + 32j + l's third bit, which unset means -4 */
    uint8_t qs[64];     /* low two bits, as q2_k */
    uint8_t scales[12]; /* sixteen 6-bit scales, biased by 32 */
    uint16_t d;         /* value = d * (scale - 32) * q */
} BlockQ3_K;

typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12]; /* eight 6-bit scales and eight 6-bit offsets, one per 32 */
    uint8_t qs[128];    /* element 64j + l in the low nibble of qs[32j + l], 64j + 32 + l in the high */
} BlockQ4_K;

typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12]; /* as q4_k */
    uint8_t qh[32];     /* bits 2j and 2j + 1 of qh[l]: the fifth bit of elements 64j + l and 64j + 32 + l */
    uint8_t qs[128];
} BlockQ5_K;

typedef struct {
    uint8_t ql[128];   /* low four bits, two halves of 128 */
    uint8_t qh[64];    /* high two bits */
    int8_t scales[16]; /* one per 16 */
    uint16_t d;        /* value = d * scale * (q - 32) */
} BlockQ6_K;

typedef struct {
    uint16_t d;
    uint16_t scales_h;  /* high two bits of the eight 6-bit scales (biased by 32) */
    uint8_t scales_l[4]; /* low four bits */
    uint8_t qs[128];    /* per 32: indices as iq4_nl's */
} BlockIQ4_XS;

/* Activations for the super-block types, as ggml's Q8_K: one scale per 256
   and the sums of each 16, for the offsets. */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} BlockQ8K;

_Static_assert(sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24 && sizeof(BlockIQ4_NL) == 18,
               "32-element blocks as in ggml");
_Static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 &&
               sizeof(BlockQ6_K) == 210 && sizeof(BlockIQ4_XS) == 136 && sizeof(BlockQ8K) == 292,
               "super-blocks as in ggml");
_Static_assert(offsetof(BlockQ5_K, scales) == offsetof(BlockQ4_K, scales), "q5_k begins as q4_k does (superblock_scales)");

/* iq4_nl's and iq4_xs's sixteen levels (non-uniform, denser near zero). */
static const int8_t IQ4_LEVELS[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* How a weight type is stored and which activations its dot products take. */
enum { ACT_FLOAT, ACT_Q8A, ACT_Q8K };

typedef struct {
    const char *name;
    int block;       /* elements per block (1 for the float types) */
    int block_bytes;
    int act;         /* ACT_*: what the matrix kernels multiply it by; ACT_FLOAT too for non-weights */
} TypeInfo;

static const TypeInfo TYPE_INFO[TYPE_COUNT] = {
    [TYPE_F32] = {"f32", 1, 4, ACT_FLOAT},
    [TYPE_F16] = {"f16", 1, 2, ACT_FLOAT},
    [TYPE_BF16] = {"bf16", 1, 2, ACT_FLOAT},
    [TYPE_Q8_0] = {"q8_0", QK, sizeof(BlockQ8_0), ACT_Q8A},
    [TYPE_Q4_0] = {"q4_0", QK, sizeof(BlockQ4_0), ACT_Q8A},
    [TYPE_U8] = {"u8", 1, 1, ACT_FLOAT},
    [TYPE_U32] = {"u32", 1, 4, ACT_FLOAT},
    [TYPE_Q4_1] = {"q4_1", QK, sizeof(BlockQ4_1), ACT_Q8A},
    [TYPE_Q5_0] = {"q5_0", QK, sizeof(BlockQ5_0), ACT_Q8A},
    [TYPE_Q5_1] = {"q5_1", QK, sizeof(BlockQ5_1), ACT_Q8A},
    [TYPE_IQ4_NL] = {"iq4_nl", QK, sizeof(BlockIQ4_NL), ACT_Q8A},
    [TYPE_Q2_K] = {"q2_k", QK_K, sizeof(BlockQ2_K), ACT_Q8K},
    [TYPE_Q3_K] = {"q3_k", QK_K, sizeof(BlockQ3_K), ACT_Q8K},
    [TYPE_Q4_K] = {"q4_k", QK_K, sizeof(BlockQ4_K), ACT_Q8K},
    [TYPE_Q5_K] = {"q5_k", QK_K, sizeof(BlockQ5_K), ACT_Q8K},
    [TYPE_Q6_K] = {"q6_k", QK_K, sizeof(BlockQ6_K), ACT_Q8K},
    [TYPE_IQ4_XS] = {"iq4_xs", QK_K, sizeof(BlockIQ4_XS), ACT_Q8K},
};

static inline const char *type_name(int type) { return type >= 0 && type < TYPE_COUNT ? TYPE_INFO[type].name : "unknown"; }

/* A type a matrix can have (not the tokenizer's raw arrays). */
static inline int type_is_weight(int type) { return type >= 0 && type < TYPE_COUNT && type != TYPE_U8 && type != TYPE_U32; }

static inline int type_is_quantized(int type) { return type_is_weight(type) && TYPE_INFO[type].act != ACT_FLOAT; }

static inline int type_block(int type) { return type >= 0 && type < TYPE_COUNT ? TYPE_INFO[type].block : 0; }

/* Bytes of one row of n elements, or 0 when n does not fit the type's blocks. */
static inline size_t type_row_bytes(int type, int64_t n) {
    if (type < 0 || type >= TYPE_COUNT || n < 0 || n % TYPE_INFO[type].block) return 0;
    return (size_t)(n / TYPE_INFO[type].block) * (size_t)TYPE_INFO[type].block_bytes;
}

/* ---------------------------------------------------------------------------
 * Half-precision conversions (portable bit manipulation; F16C when present).
 */
static inline float f16_to_f32_soft(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (mant << 13);           /* inf, nan */
    else if (exp) bits = sign | ((exp + 112) << 23) | (mant << 13);       /* normal */
    else if (!mant) bits = sign;                                          /* zero */
    else {                                                                /* subnormal */
        int e = -1;
        do { mant <<= 1; e++; } while (!(mant & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even, as IEEE and F16C do. */
static inline uint16_t f32_to_f16_soft(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0));
    if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds to inf */
    if (ax < 0x38800000) {                                  /* subnormal or zero in f16 */
        if (ax < 0x33000000) return (uint16_t)sign;
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e, r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ax - 0x38000000; /* rebias exponent 127 -> 15 */
    uint32_t h = r >> 13, rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static inline float f16_to_f32(uint16_t h) {
#if defined(KERNELS_AVX2)
    return _cvtsh_ss(h);
#else
    return f16_to_f32_soft(h);
#endif
}

static inline uint16_t f32_to_f16(float f) {
#if defined(KERNELS_AVX2)
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    return f32_to_f16_soft(f);
#endif
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet nan */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* ---------------------------------------------------------------------------
 * Quantization of one row (n a multiple of QK for the block types).
 */

/* The largest |x[i]|, or NaN when some x[i] is NaN (fmaxf would pass over
   it). The quantizers of the KV cache and of activations take a block whose
   absmax is not finite (an inf or NaN in it, from weights that hold them) as
   a NaN scale with zero integers: converting such a value to an integer is
   undefined, while the NaN scale makes every product with the block NaN, so
   the forward pass sees it and reports it. */
static inline float block_absmax(const float *x, int n) {
    float amax = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax || a != a) amax = a; /* once NaN, no comparison is true: it stays */
    }
    return amax;
}

static inline void quantize_row_q8_0(const float *x, BlockQ8_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = block_absmax(x, QK);
        if (!(amax <= FLT_MAX)) { /* not finite: see block_absmax */
            y[b].d = f32_to_f16(NAN);
            memset(y[b].qs, 0, sizeof y[b].qs);
            continue;
        }
        y[b].d = f32_to_f16(amax / 127.0f);
        float d = f16_to_f32(y[b].d), id = d ? 1.0f / d : 0.0f; /* quantize with the scale as stored */
        for (int j = 0; j < QK; j++) y[b].qs[j] = (int8_t)lrintf(x[j] * id);
    }
}

/* The value of largest magnitude maps to -8, so its sign uses the extra level. */
static inline void quantize_row_q4_0(const float *x, BlockQ4_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = 0, max = 0;
        for (int j = 0; j < QK; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        y[b].d = f32_to_f16(max / -8.0f);
        float d = f16_to_f32(y[b].d), id = d ? 1.0f / d : 0.0f;
        for (int j = 0; j < QK / 2; j++) {
            int lo = (int)lrintf(x[j] * id) + 8, hi = (int)lrintf(x[j + QK / 2] * id) + 8;
            lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
            hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
            y[b].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

/* q5_0: like q4_0 with 16 levels each side; ./export's fallback for q4_k
   matrices whose rows are not a multiple of 256 (as llama.cpp's). */
static inline void quantize_row_q5_0(const float *x, BlockQ5_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = 0, max = 0;
        for (int j = 0; j < QK; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        y[b].d = f32_to_f16(max / -16.0f);
        float d = f16_to_f32(y[b].d), id = d ? 1.0f / d : 0.0f;
        uint32_t qh = 0;
        for (int j = 0; j < QK; j++) {
            int q = (int)lrintf(x[j] * id) + 16;
            q = q < 0 ? 0 : q > 31 ? 31 : q;
            if (j < QK / 2) y[b].qs[j] = (uint8_t)(q & 15);
            else y[b].qs[j - QK / 2] |= (uint8_t)((q & 15) << 4);
            qh |= (uint32_t)(q >> 4) << j;
        }
        memcpy(y[b].qh, &qh, 4);
    }
}

/* The integer in [lo, hi] nearest x / step (0 for a zero step). */
static inline int quant_level(float x, float step, int lo, int hi) {
    int q = step != 0 ? (int)lrintf(x / step) : 0;
    return q < lo ? lo : q > hi ? hi : q;
}

/* The scale s minimizing sum (x - s * q)^2 for the levels q in [lo, hi],
   searched over candidates around amax / |lo| (the largest value reaching
   the widest level), each refitted by least squares. 0 for all-zero x. */
static inline float fit_symmetric_scale(const float *x, int n, int lo, int hi) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]), max = x[i];
    if (amax == 0) return 0;
    float best = 0, best_err = INFINITY;
    for (int c = -4; c <= 4; c++) {
        float s = max / (lo + 0.25f * c), num = 0, den = 0, err = 0;
        for (int i = 0; i < n; i++) {
            int q = quant_level(x[i], s, lo, hi);
            num += x[i] * q, den += (float)q * q;
        }
        if (den > 0) s = num / den;
        for (int i = 0; i < n; i++) {
            float e = x[i] - s * quant_level(x[i], s, lo, hi);
            err += e * e;
        }
        if (err < best_err) best_err = err, best = s;
    }
    return best;
}

/* q6_k: each 16 values' scale fitted (levels -32..31), the sixteen scales
   stored as int8 times the block's f16 scale, the values requantized with
   the scales as stored. */
static inline void quantize_row_q6_k(const float *x, BlockQ6_K *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float scale[16], smax = 0;
        for (int g = 0; g < 16; g++) {
            scale[g] = fit_symmetric_scale(x + 16 * g, 16, -32, 31);
            if (fabsf(scale[g]) > fabsf(smax)) smax = scale[g];
        }
        BlockQ6_K *k = &y[b];
        memset(k, 0, sizeof *k);
        k->d = f32_to_f16(smax / -128.0f);
        float d = f16_to_f32(k->d);
        uint8_t q[QK_K];
        for (int g = 0; g < 16; g++) {
            k->scales[g] = (int8_t)quant_level(scale[g], d, -128, 127);
            float step = d * k->scales[g];
            for (int i = 0; i < 16; i++) q[16 * g + i] = (uint8_t)(quant_level(x[16 * g + i], step, -32, 31) + 32);
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *v = q + 128 * h + l; /* v[0], v[32], v[64], v[96]: superblock_unpack's parts 0-3 */
                k->ql[64 * h + l] = (uint8_t)((v[0] & 15) | (v[64] & 15) << 4);
                k->ql[64 * h + 32 + l] = (uint8_t)((v[32] & 15) | (v[96] & 15) << 4);
                k->qh[32 * h + l] = (uint8_t)(v[0] >> 4 | (v[32] >> 4) << 2 | (v[64] >> 4) << 4 | (v[96] >> 4) << 6);
            }
    }
}

/* q4_k: each 32 values get a scale and an offset (value = scale * q -
   offset, q in 0..15, offset >= 0 so the range reaches zero), fitted by
   alternating least squares; the eight scales and eight offsets become
   6-bit integers times the block's two f16 scales, and the values are
   requantized with the scales as stored. */
static inline void quantize_row_q4_k(const float *x, BlockQ4_K *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float scale[8], offset[8], smax = 0, omax = 0;
        for (int j = 0; j < 8; j++) {
            const float *v = x + 32 * j;
            float lo = 0, hi = 0;
            for (int i = 0; i < 32; i++) lo = fminf(lo, v[i]), hi = fmaxf(hi, v[i]);
            float s = (hi - lo) / 15, o = -lo;
            for (int it = 0; it < 4 && s > 0; it++) { /* refit s and o to the levels, then the levels to them */
                float sq = 0, sqq = 0, sx = 0, sqx = 0;
                for (int i = 0; i < 32; i++) {
                    float q = (float)quant_level(v[i] + o, s, 0, 15);
                    sq += q, sqq += q * q, sx += v[i], sqx += q * v[i];
                }
                float det = 32 * sqq - sq * sq;
                if (det <= 0) break;
                float ns = (32 * sqx - sq * sx) / det, no = (sq * sqx - sqq * sx) / det; /* v = ns * q - no */
                if (ns <= 0) break;
                s = ns, o = no < 0 ? 0 : no;
            }
            scale[j] = s, offset[j] = o;
            smax = fmaxf(smax, s), omax = fmaxf(omax, o);
        }
        BlockQ4_K *k = &y[b];
        k->d = f32_to_f16(smax / 63), k->dmin = f32_to_f16(omax / 63);
        float d = f16_to_f32(k->d), dmin = f16_to_f32(k->dmin);
        int sc[8], mn[8];
        for (int j = 0; j < 8; j++) sc[j] = quant_level(scale[j], d, 0, 63), mn[j] = quant_level(offset[j], dmin, 0, 63);
        for (int j = 0; j < 4; j++) {
            k->scales[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
            k->scales[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
            k->scales[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
        }
        for (int i = 0; i < QK_K; i++) {
            int j = i / 32, q = quant_level(x[i] + dmin * mn[j], d * sc[j], 0, 15);
            uint8_t *byte = &k->qs[i / 64 * 32 + i % 32];
            if (j % 2) *byte |= (uint8_t)(q << 4);
            else *byte = (uint8_t)q;
        }
    }
}

/* Converts n floats to a row of the given weight type. */
static inline void quantize_row(int type, const float *x, void *out, int64_t n) {
    switch (type) {
    case TYPE_F32: memcpy(out, x, (size_t)n * 4); break;
    case TYPE_F16: {
        int64_t i = 0;
#if defined(KERNELS_AVX2)
        for (; i + 8 <= n; i += 8) /* round to nearest even, as f32_to_f16 */
            _mm_storeu_si128((__m128i *)((uint16_t *)out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < n; i++) ((uint16_t *)out)[i] = f32_to_f16(x[i]);
        break;
    }
    case TYPE_BF16: for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = f32_to_bf16(x[i]); break;
    case TYPE_Q8_0: quantize_row_q8_0(x, out, n); break;
    case TYPE_Q4_0: quantize_row_q4_0(x, out, n); break;
    case TYPE_Q5_0: quantize_row_q5_0(x, out, n); break;
    case TYPE_Q4_K: quantize_row_q4_k(x, out, n); break;
    case TYPE_Q6_K: quantize_row_q6_k(x, out, n); break;
    }
}

/* The types quantize_row writes (./export --quant). */
static inline int type_can_quantize(int type) {
    return type == TYPE_F32 || type == TYPE_F16 || type == TYPE_BF16 || type == TYPE_Q8_0 || type == TYPE_Q4_0 ||
           type == TYPE_Q5_0 || type == TYPE_Q4_K || type == TYPE_Q6_K;
}

/* Block b of a row of a 32-element type as integers and the block's scale
   (returned) and offset: element j = q[j] * d + *m, with *m = 0 for the
   types without an offset. */
static inline int type_has_offset(int type) {
    return type == TYPE_Q4_1 || type == TYPE_Q5_1 || type == TYPE_Q2_K || type == TYPE_Q4_K || type == TYPE_Q5_K;
}

static inline float block32_unpack(const void *row, int type, int64_t b, int8_t q[QK], float *m) {
    *m = 0;
    const uint8_t *qs; /* the 16 bytes of nibbles, for the 4- and 5-bit types */
    uint32_t qh = 0;
    float d;
    switch (type) {
    case TYPE_Q8_0: {
        const BlockQ8_0 *k = (const BlockQ8_0 *)row + b;
        memcpy(q, k->qs, QK);
        return f16_to_f32(k->d);
    }
    case TYPE_Q4_0: { const BlockQ4_0 *k = (const BlockQ4_0 *)row + b; qs = k->qs, d = f16_to_f32(k->d); break; }
    case TYPE_Q4_1: { const BlockQ4_1 *k = (const BlockQ4_1 *)row + b; qs = k->qs, d = f16_to_f32(k->d), *m = f16_to_f32(k->m); break; }
    case TYPE_Q5_0: { const BlockQ5_0 *k = (const BlockQ5_0 *)row + b; qs = k->qs, d = f16_to_f32(k->d), memcpy(&qh, k->qh, 4); break; }
    case TYPE_Q5_1: {
        const BlockQ5_1 *k = (const BlockQ5_1 *)row + b;
        qs = k->qs, d = f16_to_f32(k->d), *m = f16_to_f32(k->m), memcpy(&qh, k->qh, 4);
        break;
    }
    default: { const BlockIQ4_NL *k = (const BlockIQ4_NL *)row + b; qs = k->qs, d = f16_to_f32(k->d); break; }
    }
    for (int j = 0; j < QK / 2; j++) {
        int lo = qs[j] & 15, hi = qs[j] >> 4;
        switch (type) {
        case TYPE_Q4_0: lo -= 8, hi -= 8; break;
        case TYPE_Q5_0: lo = (lo | ((qh >> j) & 1) << 4) - 16, hi = (hi | ((qh >> (j + 16)) & 1) << 4) - 16; break;
        case TYPE_Q5_1: lo |= ((qh >> j) & 1) << 4, hi |= ((qh >> (j + 16)) & 1) << 4; break;
        case TYPE_IQ4_NL: lo = IQ4_LEVELS[lo], hi = IQ4_LEVELS[hi]; break;
        }
        q[j] = (int8_t)lo, q[j + QK / 2] = (int8_t)hi;
    }
    return d;
}

/* q4_k's and q5_k's packing of eight 6-bit scales and eight 6-bit offsets
   into 12 bytes: sub-block j's. */
static inline void k4_scale_offset(const uint8_t s[12], int j, int *scale, int *offset) {
    if (j < 4) *scale = s[j] & 63, *offset = s[j + 4] & 63;
    else *scale = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4, *offset = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
}

/* Super-block b's scales: sixteen (one per 16 elements; the types with
   32-element sub-blocks repeat theirs), sixteen offsets (0 for the types
   without) and the block's two f16 scales, so that element i =
   (d * sc[i / 16]) * q[i] - dmin * mn[i / 16] (superblock_unpack's q). */
static inline void superblock_scales(const void *row, int type, int64_t b, int16_t sc[16], int16_t mn[16], float *d,
                                     float *dmin) {
    memset(mn, 0, 16 * sizeof *mn);
    *dmin = 0;
    switch (type) {
    case TYPE_Q2_K: {
        const BlockQ2_K *k = (const BlockQ2_K *)row + b;
        for (int g = 0; g < 16; g++) sc[g] = k->scales[g] & 15, mn[g] = k->scales[g] >> 4;
        *d = f16_to_f32(k->d), *dmin = f16_to_f32(k->dmin);
        return;
    }
    case TYPE_Q3_K: {
        const BlockQ3_K *k = (const BlockQ3_K *)row + b;
        for (int g = 0; g < 16; g++) {
            int low = g < 8 ? k->scales[g] & 15 : k->scales[g - 8] >> 4, high = (k->scales[8 + g % 4] >> (2 * (g / 4))) & 3;
            sc[g] = (int16_t)((low | high << 4) - 32);
        }
        *d = f16_to_f32(k->d);
        return;
    }
    case TYPE_Q4_K:
    case TYPE_Q5_K: { /* the two share their first 16 bytes: d, dmin, scales */
        const BlockQ4_K *k = (const BlockQ4_K *)((const uint8_t *)row + (size_t)b * TYPE_INFO[type].block_bytes);
        for (int j = 0; j < 8; j++) {
            int s_, o_;
            k4_scale_offset(k->scales, j, &s_, &o_);
            sc[2 * j] = sc[2 * j + 1] = (int16_t)s_, mn[2 * j] = mn[2 * j + 1] = (int16_t)o_;
        }
        *d = f16_to_f32(k->d), *dmin = f16_to_f32(k->dmin);
        return;
    }
    case TYPE_Q6_K: {
        const BlockQ6_K *k = (const BlockQ6_K *)row + b;
        for (int g = 0; g < 16; g++) sc[g] = k->scales[g];
        *d = f16_to_f32(k->d);
        return;
    }
    default: { /* TYPE_IQ4_XS */
        const BlockIQ4_XS *k = (const BlockIQ4_XS *)row + b;
        for (int j = 0; j < 8; j++) {
            int ls = ((k->scales_l[j / 2] >> (4 * (j % 2))) & 15) | ((k->scales_h >> (2 * j)) & 3) << 4;
            sc[2 * j] = sc[2 * j + 1] = (int16_t)(ls - 32);
        }
        *d = f16_to_f32(k->d);
        return;
    }
    }
}

/* Super-block b of a row as 256 integers, with superblock_scales' scales. */
static inline void superblock_unpack(const void *row, int type, int64_t b, int8_t q[QK_K], int16_t sc[16], int16_t mn[16],
                                     float *d, float *dmin) {
    superblock_scales(row, type, b, sc, mn, d, dmin);
    switch (type) {
    case TYPE_Q2_K: {
        const BlockQ2_K *k = (const BlockQ2_K *)row + b;
        for (int i = 0; i < QK_K; i++) q[i] = (int8_t)((k->qs[i / 128 * 32 + i % 32] >> (i % 128 / 32 * 2)) & 3);
        return;
    }
    case TYPE_Q3_K: {
        const BlockQ3_K *k = (const BlockQ3_K *)row + b;
        for (int i = 0; i < QK_K; i++) {
            int j = i % 128 / 32, low = (k->qs[i / 128 * 32 + i % 32] >> (2 * j)) & 3;
            q[i] = (int8_t)(low - ((k->hmask[i % 32] >> (i / 128 * 4 + j)) & 1 ? 0 : 4));
        }
        return;
    }
    case TYPE_Q4_K:
    case TYPE_Q5_K: {
        const uint8_t *qs = type == TYPE_Q4_K ? ((const BlockQ4_K *)row + b)->qs : ((const BlockQ5_K *)row + b)->qs;
        const uint8_t *qh = type == TYPE_Q5_K ? ((const BlockQ5_K *)row + b)->qh : NULL;
        for (int i = 0; i < QK_K; i++) {
            int sub = i / 32, byte = qs[i / 64 * 32 + i % 32];
            q[i] = (int8_t)((sub % 2 ? byte >> 4 : byte & 15) | (qh ? ((qh[i % 32] >> sub) & 1) << 4 : 0));
        }
        return;
    }
    case TYPE_Q6_K: {
        const BlockQ6_K *k = (const BlockQ6_K *)row + b;
        for (int i = 0; i < QK_K; i++) {
            int h = i / 128, part = i % 128 / 32, l = i % 32; /* parts 0-3: low nibbles of ql[l], ql[l + 32], then high */
            int low = k->ql[64 * h + l + (part % 2) * 32] >> (part / 2 * 4) & 15, high = (k->qh[32 * h + l] >> (2 * part)) & 3;
            q[i] = (int8_t)((low | high << 4) - 32);
        }
        return;
    }
    default: { /* TYPE_IQ4_XS */
        const BlockIQ4_XS *k = (const BlockIQ4_XS *)row + b;
        for (int i = 0; i < QK_K; i++) {
            int byte = k->qs[i / 32 * 16 + i % 16];
            q[i] = IQ4_LEVELS[i % 32 < 16 ? byte & 15 : byte >> 4];
        }
        return;
    }
    }
}

/* Floats from a row of any weight type. For the block types this is ggml's
   arithmetic, operation for operation, so GGUF weights come out bit for bit
   as llama.cpp sees them. */
static inline void dequantize_row(int type, const void *row, float *y, int64_t n) {
    switch (type) {
    case TYPE_F32: memcpy(y, row, (size_t)n * 4); return;
    case TYPE_F16: {
        int64_t i = 0;
#if defined(KERNELS_AVX2)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i))));
#endif
        for (; i < n; i++) y[i] = f16_to_f32(((const uint16_t *)row)[i]);
        return;
    }
    case TYPE_BF16: for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(((const uint16_t *)row)[i]); return;
    }
    int offset = type_has_offset(type);
    if (TYPE_INFO[type].act == ACT_Q8A) {
        int8_t q[QK];
        for (int64_t b = 0; b < n / QK; b++) {
            float m, d = block32_unpack(row, type, b, q, &m);
            for (int j = 0; j < QK; j++) y[b * QK + j] = offset ? q[j] * d + m : q[j] * d;
        }
        return;
    }
    int8_t q[QK_K];
    int16_t sc[16], mn[16];
    for (int64_t b = 0; b < n / QK_K; b++) {
        float d, dmin;
        superblock_unpack(row, type, b, q, sc, mn, &d, &dmin);
        for (int i = 0; i < QK_K; i++) {
            float dl = d * sc[i / 16];
            y[b * QK_K + i] = offset ? dl * q[i] - dmin * mn[i / 16] : dl * q[i];
        }
    }
}

/* Activations for the super-block types, as ggml quantizes them: the value
   of largest magnitude becomes -127 exactly. */
static inline void quantize_row_q8k(const float *x, BlockQ8K *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float amax = 0, max = 0;
        for (int i = 0; i < QK_K; i++)
            if (fabsf(x[i]) > amax || x[i] != x[i]) amax = fabsf(x[i]), max = x[i]; /* NaN stays, as block_absmax */
        memset(&y[b], 0, sizeof y[b]);
        if (!(amax <= FLT_MAX)) { /* not finite (block_absmax) */
            y[b].d = NAN;
            continue;
        }
        if (amax == 0) continue;
        float iscale = -127.0f / max;
        if (isinf(iscale)) continue; /* |max| below 127 / FLT_MAX: zeros, as a zero block */
        for (int i = 0; i < QK_K; i++) {
            long v = lrintf(iscale * x[i]);
            y[b].qs[i] = (int8_t)(v > 127 ? 127 : v);
            y[b].bsums[i / 16] += y[b].qs[i];
        }
        y[b].d = 1 / iscale;
    }
}

/* Activations: f32 scale, symmetric int8. */
/* A scale at most 2^-128 has no finite inverse: such a block (|x| below
   about 3.7e-37) quantizes to zeros. */
#define Q8A_MIN_SCALE 0x1p-128f
static inline void quantize_row_q8a_ref(const float *x, BlockQ8A *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = block_absmax(x, QK);
        if (!(amax <= FLT_MAX)) { /* not finite (block_absmax) */
            memset(&y[b], 0, sizeof y[b]);
            y[b].d = NAN;
            continue;
        }
        float d = amax / 127.0f, id = d > Q8A_MIN_SCALE ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < QK; j++) sum += y[b].qs[j] = (int8_t)lrintf(x[j] * id);
        y[b].d = d;
        y[b].sum = sum;
    }
}

static inline void quantize_row_q8a(const float *x, BlockQ8A *y, int64_t n) {
#if defined(KERNELS_AVX2)
    /* the reference's operations eight at a time: |x|, max, x * (1 / d) rounded to nearest even */
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        __m256 v[4], m = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(x + 8 * i), m = _mm256_max_ps(m, _mm256_and_ps(v[i], abs_mask));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        float d = amax / 127.0f, id = d > Q8A_MIN_SCALE ? 1.0f / d : 0.0f;
        __m256i q[4];
        for (int i = 0; i < 4; i++) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        /* packing works within 128-bit halves; the permute puts the groups of four back in order */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        /* a finite block rounds to -127..127; an inf or NaN in it (x * id NaN: the
           max above may pass over a NaN) converts to INT_MIN, packed to -128 */
        if (_mm256_movemask_epi8(_mm256_cmpeq_epi8(p, _mm256_set1_epi8(-128)))) {
            memset(&y[b], 0, sizeof y[b]);
            y[b].d = NAN;
            continue;
        }
        _mm256_storeu_si256((__m256i *)y[b].qs, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        y[b].d = d;
        y[b].sum = _mm_cvtsi128_si32(s4);
    }
#else
    quantize_row_q8a_ref(x, y, n);
#endif
}

/* Bytes that n activations take in either quantized form (the larger). */
static inline size_t activation_bytes(int64_t n) {
    size_t a = (size_t)(n / QK + 1) * sizeof(BlockQ8A), k = (size_t)(n / QK_K + 1) * sizeof(BlockQ8K);
    return a > k ? a : k;
}

/* n activations in the form a weight type's dot products take. */
static inline void quantize_activations(int type, const float *x, void *out, int64_t n) {
    if (TYPE_INFO[type].act == ACT_Q8K) quantize_row_q8k(x, out, n);
    else quantize_row_q8a(x, out, n);
}

/* ---------------------------------------------------------------------------
 * Dot products: one weight row against one activation row.
 * The scalar versions are the reference; `*_ref` names are always compiled so
 * the tests can compare the SIMD build against them.
 */
static inline float dot_f32_ref(const float *a, const float *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline float dot_f16_ref(const uint16_t *w, const float *x, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += f16_to_f32(w[i]) * x[i];
    return s;
}

static inline float dot_bf16_ref(const uint16_t *w, const float *x, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += bf16_to_f32(w[i]) * x[i];
    return s;
}

/* A row of a 32-element type against activations in BlockQ8A. */
static inline float dot_block32_ref(const void *w, int type, const BlockQ8A *x, int n) {
    float s = 0;
    int8_t q[QK];
    for (int b = 0; b < n / QK; b++) {
        float m, d = block32_unpack(w, type, b, q, &m);
        int32_t acc = 0;
        for (int j = 0; j < QK; j++) acc += q[j] * x[b].qs[j];
        s += (float)acc * d * x[b].d;
        if (type_has_offset(type)) s += m * x[b].d * (float)x[b].sum;
    }
    return s;
}

/* A row of a super-block type against activations in BlockQ8K. The integer
   sums are exact; NEON's kernel computes the same integers and combines them
   with the same float operations, so it gives these bits; AVX2's sums the
   same integers in another order of float operations (dot_superblock_avx2). */
static inline float superblock_combine(float s, float d, float dmin, const BlockQ8K *x, int32_t isum, int32_t imin) {
    return s + (d * x->d * (float)isum - dmin * x->d * (float)imin);
}

static inline float dot_superblock_ref(const void *w, int type, const BlockQ8K *x, int n) {
    float s = 0;
    int8_t q[QK_K];
    int16_t sc[16], mn[16];
    for (int b = 0; b < n / QK_K; b++) {
        float d, dmin;
        superblock_unpack(w, type, b, q, sc, mn, &d, &dmin);
        int32_t isum = 0, imin = 0;
        for (int g = 0; g < 16; g++) {
            int32_t p = 0;
            for (int i = 0; i < 16; i++) p += q[16 * g + i] * x[b].qs[16 * g + i];
            isum += sc[g] * p;
            imin += mn[g] * x[b].bsums[g];
        }
        s = superblock_combine(s, d, dmin, &x[b], isum, imin);
    }
    return s;
}

#if defined(KERNELS_AVX2)
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Sum of products of 32 unsigned by 32 signed bytes, as 8 int32 lanes. */
static inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* The fifth bits of a 5-bit block: byte j is 0x10 where bit j of qh is set. */
static inline __m256i fifth_bits(const uint8_t qh4[4]) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    const __m256i spread = _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), spread); /* byte j: byte j / 8 of qh */
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), _mm256_set1_epi8(0x10));
}

/* Block b of a row of a 32-element type as 32 bytes (block32_unpack's q),
   with its scale and offset. */
static inline __attribute__((always_inline)) __m256i weight_block_i8(const void *w, int type, int b, float *d, float *m) {
    *m = 0;
    if (type == TYPE_Q8_0) {
        const BlockQ8_0 *blk = (const BlockQ8_0 *)w + b;
        *d = f16_to_f32(blk->d);
        return _mm256_loadu_si256((const __m256i *)blk->qs);
    }
    const uint8_t *qs;
    switch (type) {
    case TYPE_Q4_0: qs = ((const BlockQ4_0 *)w + b)->qs, *d = f16_to_f32(((const BlockQ4_0 *)w + b)->d); break;
    case TYPE_Q4_1: {
        const BlockQ4_1 *blk = (const BlockQ4_1 *)w + b;
        qs = blk->qs, *d = f16_to_f32(blk->d), *m = f16_to_f32(blk->m);
        break;
    }
    case TYPE_Q5_0: qs = ((const BlockQ5_0 *)w + b)->qs, *d = f16_to_f32(((const BlockQ5_0 *)w + b)->d); break;
    case TYPE_Q5_1: {
        const BlockQ5_1 *blk = (const BlockQ5_1 *)w + b;
        qs = blk->qs, *d = f16_to_f32(blk->d), *m = f16_to_f32(blk->m);
        break;
    }
    default: qs = ((const BlockIQ4_NL *)w + b)->qs, *d = f16_to_f32(((const BlockIQ4_NL *)w + b)->d); break;
    }
    const __m128i low4 = _mm_set1_epi8(15);
    __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(packed, low4), hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
    if (type == TYPE_IQ4_NL) {
        const __m128i levels = _mm_loadu_si128((const __m128i *)IQ4_LEVELS);
        return _mm256_set_m128i(_mm_shuffle_epi8(levels, hi), _mm_shuffle_epi8(levels, lo));
    }
    __m256i q = _mm256_set_m128i(hi, lo);
    if (type == TYPE_Q4_0) return _mm256_sub_epi8(q, _mm256_set1_epi8(8));
    if (type == TYPE_Q4_1) return q;
    q = _mm256_or_si256(q, fifth_bits(type == TYPE_Q5_0 ? ((const BlockQ5_0 *)w + b)->qh : ((const BlockQ5_1 *)w + b)->qh));
    return type == TYPE_Q5_0 ? _mm256_sub_epi8(q, _mm256_set1_epi8(16)) : q;
}

/* One row of a 32-element type against n_x activation rows (stride blocks
   apart). Each result goes through exactly the operations it would alone,
   in the same order, so a batch gives the same bits as single tokens; the
   weight block is loaded and made unsigned once for all of them. maddubs and
   dpbusd want one unsigned operand, so the weight's sign moves onto the
   activation: |w| * sign(w)x = wx. */
static inline __attribute__((always_inline)) void dot_quant_avx2(const void *w, int type, const BlockQ8A *x,
                                                                  size_t stride, int n_x, int n, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    float offsets[4] = {0, 0, 0, 0};
    for (int b = 0; b < n / QK; b++) {
        float dw, mw;
        __m256i wq = weight_block_i8(w, type, b, &dw, &mw), uw = _mm256_sign_epi8(wq, wq);
        for (int k = 0; k < n_x; k++) {
            const BlockQ8A *xb = x + k * stride + b;
            __m256i sx = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)xb->qs), wq);
            __m256 p = _mm256_cvtepi32_ps(dot_u8s8(uw, sx));
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb->d), p, acc[k]);
            if (type_has_offset(type)) offsets[k] += mw * xb->d * (float)xb->sum;
        }
    }
    for (int k = 0; k < n_x; k++) out[k] = hsum256(acc[k]) + offsets[k];
}

/* acc + a[2i] * b[2i] + a[2i + 1] * b[2i + 1] per int32 lane, for int16 a
   and b; exact (no saturation), so any of the three gives the same sums. */
static inline __m256i dpwssd_add(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, a, b);
#elif defined(__AVXVNNI__)
    return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

/* A super-block's scales in registers: superblock_scales' sixteen scales
   and offsets as int16 lanes (offsets 0 where the type has none), d, dmin. */
static inline __attribute__((always_inline)) void superblock_scales_avx2(const uint8_t *blk, int type, __m256i *sc, __m256i *mn,
                                                                          float *d, float *dmin) {
    const __m128i m15 = _mm_set1_epi8(15);
    *mn = _mm256_setzero_si256(), *dmin = 0;
    switch (type) {
    case TYPE_Q2_K: { /* a scale in the low nibble, an offset in the high, per 16 */
        const BlockQ2_K *k = (const BlockQ2_K *)blk;
        __m128i s = _mm_loadu_si128((const __m128i *)k->scales);
        *sc = _mm256_cvtepu8_epi16(_mm_and_si128(s, m15)), *mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), m15));
        *d = f16_to_f32(k->d), *dmin = f16_to_f32(k->dmin);
        return;
    }
    case TYPE_Q3_K: { /* low nibbles of bytes 0-7 (scales 0-7), their high nibbles (8-15), two bits from bytes 8-11 */
        const BlockQ3_K *k = (const BlockQ3_K *)blk;
        uint32_t top;
        memcpy(&top, k->scales + 8, 4);
        __m128i s = _mm_loadl_epi64((const __m128i *)k->scales);
        __m128i low = _mm_unpacklo_epi64(_mm_and_si128(s, m15), _mm_and_si128(_mm_srli_epi16(s, 4), m15));
        /* scale g's high bits: bits 2(g / 4) of byte 8 + g % 4; the 32-bit shifts keep each byte's bits in the byte after the mask */
        __m128i high = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32((int)top), _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
        *sc = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_or_si128(low, _mm_slli_epi16(high, 4))), _mm256_set1_epi16(32));
        *d = f16_to_f32(k->d);
        return;
    }
    case TYPE_Q4_K:
    case TYPE_Q5_K: { /* k4_scale_offset for all eight at once, on 32-bit words u0 u1 u2 of the 12 bytes */
        const BlockQ4_K *k = (const BlockQ4_K *)blk; /* q5_k begins as q4_k does */
        __m128i head = _mm_loadu_si128((const __m128i *)blk); /* words: d and dmin, u0, u1, u2 */
        __m128i a = _mm_shuffle_epi32(head, 0xa5);            /* u0 u0 u1 u1 */
        __m128i u2 = _mm_srlv_epi32(_mm_shuffle_epi32(head, 0xff), _mm_setr_epi32(0, 0, 0, 4));
        __m128i low6 = _mm_and_si128(a, _mm_set1_epi8(63)); /* words 0, 2: scales 0-3, offsets 0-3 */
        __m128i high = _mm_or_si128(_mm_and_si128(u2, m15), _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(a, 6), _mm_set1_epi8(3)), 4));
        __m128i so = _mm_blend_epi32(low6, high, 0xa); /* bytes 0-7: the eight scales, 8-15: the eight offsets */
        *sc = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(so, so)), *mn = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(so, so));
        *d = f16_to_f32(k->d), *dmin = f16_to_f32(k->dmin);
        return;
    }
    case TYPE_Q6_K: {
        const BlockQ6_K *k = (const BlockQ6_K *)blk;
        *sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)k->scales));
        *d = f16_to_f32(k->d);
        return;
    }
    default: { /* TYPE_IQ4_XS: nibbles of scales_l and bit pairs of scales_h, eight scales biased by 32 */
        const BlockIQ4_XS *k = (const BlockIQ4_XS *)blk;
        uint32_t l4;
        memcpy(&l4, k->scales_l, 4);
        __m128i l = _mm_cvtsi32_si128((int)l4);
        l = _mm_unpacklo_epi8(_mm_and_si128(l, m15), _mm_and_si128(_mm_srli_epi16(l, 4), m15)); /* bytes 0-7: scale j's low bits */
        __m256i h = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(k->scales_h), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                     _mm256_set1_epi32(3));
        __m128i h16 = _mm_packs_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        __m128i s8 = _mm_sub_epi16(_mm_add_epi16(_mm_cvtepu8_epi16(l), _mm_slli_epi16(h16, 4)), _mm_set1_epi16(32));
        *sc = _mm256_set_m128i(_mm_unpackhi_epi16(s8, s8), _mm_unpacklo_epi16(s8, s8));
        *d = f16_to_f32(k->d);
        return;
    }
    }
}

/* Elements 32v..32v+31 of a super-block as bytes: superblock_unpack's q plus
   a bias that makes them unsigned (2^superblock_bias_log2: 32 for q6_k, 4
   for q3_k), except iq4_xs's, which stay signed. */
static inline int superblock_bias_log2(int type) { return type == TYPE_Q6_K ? 5 : type == TYPE_Q3_K ? 2 : -1; }

static inline __attribute__((always_inline)) __m256i superblock_vec_avx2(const uint8_t *blk, int type, int v) {
    const __m256i m3 = _mm256_set1_epi8(3), m15 = _mm256_set1_epi8(15);
    switch (type) {
    case TYPE_Q2_K: return _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(((const BlockQ2_K *)blk)->qs + v / 4 * 32)), 2 * (v % 4)), m3);
    case TYPE_Q3_K: {
        const BlockQ3_K *k = (const BlockQ3_K *)blk;
        __m256i low = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(k->qs + v / 4 * 32)), 2 * (v % 4)), m3);
        __m256i third = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)k->hmask), v), _mm256_set1_epi8(1));
        return _mm256_or_si256(low, _mm256_slli_epi16(third, 2));
    }
    case TYPE_Q4_K:
    case TYPE_Q5_K: {
        const uint8_t *qs = type == TYPE_Q4_K ? ((const BlockQ4_K *)blk)->qs : ((const BlockQ5_K *)blk)->qs;
        __m256i p = _mm256_loadu_si256((const __m256i *)(qs + v / 2 * 32));
        __m256i q = _mm256_and_si256(v % 2 ? _mm256_srli_epi16(p, 4) : p, m15);
        if (type == TYPE_Q4_K) return q;
        /* bit v of each qh byte moved to bit 4: 16-bit shifts of at most 4 keep it within its byte */
        __m256i hb = _mm256_loadu_si256((const __m256i *)((const BlockQ5_K *)blk)->qh);
        hb = v < 4 ? _mm256_slli_epi16(hb, 4 - v) : _mm256_srli_epi16(hb, v - 4);
        return _mm256_or_si256(q, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
    }
    case TYPE_Q6_K: { /* low nibbles of ql[64h..+31], of ql[64h+32..], then the high nibbles; bit pair `part` of qh[32h..] */
        const BlockQ6_K *k = (const BlockQ6_K *)blk;
        int h = v / 4, part = v % 4;
        __m256i l = _mm256_loadu_si256((const __m256i *)(k->ql + 64 * h + 32 * (part % 2)));
        __m256i hh = _mm256_loadu_si256((const __m256i *)(k->qh + 32 * h));
        hh = part == 0 ? _mm256_slli_epi16(hh, 4) : part == 1 ? _mm256_slli_epi16(hh, 2) : part == 2 ? hh : _mm256_srli_epi16(hh, 2);
        return _mm256_or_si256(_mm256_and_si256(part < 2 ? l : _mm256_srli_epi16(l, 4), m15), _mm256_and_si256(hh, _mm256_set1_epi8(0x30)));
    }
    default: { /* TYPE_IQ4_XS: 16 bytes, low nibbles (elements 0-15) in the low half, high nibbles in the high */
        const BlockIQ4_XS *k = (const BlockIQ4_XS *)blk;
        __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(k->qs + 16 * v)));
        __m256i idx = _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4)), m15);
        return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IQ4_LEVELS)), idx);
    }
    }
}

/* A super-block row against n_x (at most 4) BlockQ8K rows, stride blocks
   apart, unpacking and multiplying 32 elements at a time (the type is a
   constant, so each type compiles to its own fused kernel). Per 32: bytes
   multiplied pairwise into int16 (maddubs; no sum of two products exceeds
   2 * 127 * 127), then by the two 16-element scales into int32 (dpwssd).
   q6_k's and q3_k's bias comes off with the sums of 16 (bsums) times the
   scales. That much is exact integer arithmetic; the eight int32 lanes of a
   super-block then go into eight float sums (d x.d times the lanes, less
   dmin x.d times the offsets' lanes, each one fused multiply-add), added up
   once at the end of the row: no horizontal sum per super-block, which the
   reference's combination (superblock_combine) would cost. So the result
   differs from the reference by float rounding only (tests/test_kernels.c
   bounds it); each token still gets the same operations in any batch. */
static inline __attribute__((always_inline)) void dot_superblock_avx2(const void *w, int type, const BlockQ8K *x, size_t stride,
                                                                       int n_x, int n, float *out) {
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const int bias_log2 = superblock_bias_log2(type);
    for (int b = 0; b < n / QK_K; b++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)b * TYPE_INFO[type].block_bytes;
        __m256i sc, mn, acc[4][2]; /* two chains per token, even and odd v: half the latency of one */
        for (int k = 0; k < n_x; k++) acc[k][0] = acc[k][1] = _mm256_setzero_si256();
        float d, dmin;
        superblock_scales_avx2(blk, type, &sc, &mn, &d, &dmin);
        /* scales 0-7 and 8-15 in both 128-bit halves, for the shuffles that spread two of them over a vector's halves */
        const __m256i halves[2] = {_mm256_permute2x128_si256(sc, sc, 0x00), _mm256_permute2x128_si256(sc, sc, 0x11)};
#pragma GCC unroll 8 /* v must be a constant: it picks shifts, loads and the accumulator (GCC leaves the loop rolled otherwise) */
        for (int v = 0; v < 8; v++) {
            __m256i q = superblock_vec_avx2(blk, type, v), u = type == TYPE_IQ4_XS ? _mm256_sign_epi8(q, q) : q;
            int i = v % 4; /* the low half takes int16 scale 2i of halves[v / 4], the high half 2i + 1 */
            __m256i pick = _mm256_set_m128i(_mm_set1_epi16((short)((4 * i + 3) << 8 | (4 * i + 2))), _mm_set1_epi16((short)((4 * i + 1) << 8 | 4 * i)));
            __m256i scv = _mm256_shuffle_epi8(halves[v / 4], pick);
            for (int k = 0; k < n_x; k++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x[k * stride + b].qs + 32 * v));
                if (type == TYPE_IQ4_XS) xv = _mm256_sign_epi8(xv, q); /* |q| * sign(q)x = qx, for maddubs' unsigned operand */
                acc[k][v % 2] = dpwssd_add(acc[k][v % 2], _mm256_maddubs_epi16(u, xv), scv);
            }
        }
        for (int k = 0; k < n_x; k++) {
            const BlockQ8K *xb = x + k * stride + b;
            __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
            __m256i sum = _mm256_add_epi32(acc[k][0], acc[k][1]);
            if (bias_log2 >= 0) sum = _mm256_sub_epi32(sum, _mm256_slli_epi32(_mm256_madd_epi16(bs, sc), bias_log2));
            s[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb->d), _mm256_cvtepi32_ps(sum), s[k]);
            if (type_has_offset(type))
                s[k] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * xb->d), _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mn)), s[k]);
        }
    }
    for (int k = 0; k < n_x; k++) out[k] = hsum256(s[k]);
}
#endif

#if defined(KERNELS_NEON)
/* What the NEON kernels use of AArch64's additions to NEON, written with
   ARMv7's instructions where those are missing: one kernel serves both, and
   the two give the same bits (each shim sums in the AArch64 order). */

/* (v0 + v1) + (v2 + v3) */
static inline float hsum_f32x4(float32x4_t v) {
#if defined(__aarch64__)
    return vaddvq_f32(v);
#else
    float32x2_t s = vpadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(vpadd_f32(s, s), 0);
#endif
}

/* a0 + a1, a2 + a3, b0 + b1, b2 + b3 */
static inline int32x4_t padd_s32(int32x4_t a, int32x4_t b) {
#if defined(__aarch64__)
    return vpaddq_s32(a, b);
#else
    return vcombine_s32(vpadd_s32(vget_low_s32(a), vget_high_s32(a)), vpadd_s32(vget_low_s32(b), vget_high_s32(b)));
#endif
}

/* The products of the high eight bytes of a and b as int16 (and those added to acc). */
static inline int16x8_t mull_high_s8(int8x16_t a, int8x16_t b) {
#if defined(__aarch64__)
    return vmull_high_s8(a, b);
#else
    return vmull_s8(vget_high_s8(a), vget_high_s8(b));
#endif
}

static inline int16x8_t mlal_high_s8(int16x8_t acc, int8x16_t a, int8x16_t b) {
#if defined(__aarch64__)
    return vmlal_high_s8(acc, a, b);
#else
    return vmlal_s8(acc, vget_high_s8(a), vget_high_s8(b));
#endif
}

/* Four halves from h, as f32. GCC's 32-bit arm_neon.h declares the
   conversion only under -mfp16-format=ieee; the instruction itself comes
   with VFPv4, which KERNELS_NEON requires there. */
static inline float32x4_t load_f16x4(const uint16_t *h) {
#if defined(__aarch64__)
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
#else
    float32x4_t f;
    __asm__("vcvt.f32.f16 %q0, %P1" : "=w"(f) : "w"(vld1_u16(h)));
    return f;
#endif
}
#endif

/* ---------------------------------------------------------------------------
 * Float weights (f32, f16, bf16) against float activations, a block of rows
 * against a block of tokens:
 *
 *   out[t * out_stride + r] = row r of w (rows row_bytes apart) . x row t
 *                             (x_stride floats apart), r < n_rows, t < n_x.
 *
 * Each output is one chain, the same whatever is computed beside it: a
 * vector accumulator takes one fused multiply-add per 8 elements (4 on NEON)
 * along the row, its lanes are summed in a fixed order, and the n % 8 (n % 4)
 * elements left over are added one fmaf at a time. So a token gives the same
 * bits in a batch as alone, and any split of rows over threads gives the same
 * bits. Blocking only decides how many chains run side by side: R rows by T
 * tokens cost R + T vector loads per R * T multiply-adds (one row by four
 * tokens: five per four, and the loads are the limit).
 *
 * gemm_float takes any n_rows and n_x and blocks them itself: tokens
 * GEMM_FLOAT_TOKENS at a time, rows GEMM_FLOAT_ROWS at a time against them,
 * and more rows at a time against fewer tokens (decoding, one token: eight
 * rows, so that eight chains hide the multiply-add latency). It reads the
 * rows once per token block, so callers pass tiles of rows that stay in cache
 * (multiples of GEMM_FLOAT_ROWS: the rows left over go in smaller blocks)
 * with all their tokens.
 */
#if defined(KERNELS_AVX2) && defined(__AVX512VL__)
/* AVX-512 only for its 32 registers: the same eight-lane operations as
   AVX2, so the same bits, with 4 x 4 accumulators. */
#define GEMM_FLOAT_ROWS 4
#define GEMM_FLOAT_TOKENS 4
#define GEMM_FLOAT_BLOCK_ROWS(t) ((t) <= 2 ? 8 : 4) /* rows per block against t tokens */
#elif defined(KERNELS_NEON) && defined(__aarch64__)
/* 32 q registers: 4 x 4 accumulators, 4 weight vectors, a token's vector. */
#define GEMM_FLOAT_ROWS 4
#define GEMM_FLOAT_TOKENS 4
#define GEMM_FLOAT_BLOCK_ROWS(t) ((t) <= 2 ? 8 : 4)
#elif defined(KERNELS_AVX2) || defined(KERNELS_NEON)
/* 3 x 4 accumulators, 3 weight vectors and a token's vector fill the 16
   registers (AVX2's ymm, ARMv7's q). */
#define GEMM_FLOAT_ROWS 3
#define GEMM_FLOAT_TOKENS 4
#define GEMM_FLOAT_BLOCK_ROWS(t) ((t) == 1 ? 8 : (t) == 2 ? 4 : 3)
#else
/* the plain loop: nothing to gain from blocking */
#define GEMM_FLOAT_ROWS 1
#define GEMM_FLOAT_TOKENS 1
#endif

/* Element i of an f32, f16 or bf16 row. */
static inline float float_weight(const void *w, int type, int i) {
    if (type == TYPE_F32) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    return type == TYPE_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

/* s plus the products of elements [from, n) of a weight row and x, in order
   (the elements a vector loop leaves over). */
static inline float float_dot_tail(float s, const void *w, int type, const float *x, int from, int n) {
    for (int j = from; j < n; j++) s = fmaf(float_weight(w, type, j), x[j], s);
    return s;
}

#if defined(KERNELS_AVX2)
/* Eight weights of an f32, f16 or bf16 row from index i, as f32. */
static inline __m256 weight8(const void *w, int type, int i) {
    if (type == TYPE_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (type == TYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* n_rows x n_x outputs, at most 8 x 4 (and as many as the registers hold);
   a constant type, n_rows and n_x make the accumulators registers. */
static inline __attribute__((always_inline)) void gemm_float_block(const void *w, int type, size_t row_bytes, int n_rows,
                                                                    const float *x, size_t x_stride, int n_x, int n,
                                                                    float *out, size_t out_stride) {
    __m256 acc[8][4];
    for (int r = 0; r < n_rows; r++)
        for (int t = 0; t < n_x; t++) acc[r][t] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        /* Each vector is loaded once into a register: left alone, GCC folds
           the load into every multiply-add that uses it, and the extra loads
           (two per cycle) become the limit. The empty asm hides the value. */
        if (n_x == 1) { /* the token's vector stays, each weight vector is used once */
            __m256 xv = _mm256_loadu_ps(x + i);
            if (n_rows > 1) __asm__("" : "+x"(xv));
            /* Short rows (768 f16 weights are 24 cache lines) end before the
               prefetcher has ramped up on each of the eight streams: ask for
               the next block's lines, one per 64 bytes (hints: past the
               matrix's end they are dropped). f16 decode 1.1-1.5x against the same blocks without it. */
            size_t at = (size_t)i * (type == TYPE_F32 ? 4 : 2);
            if (at % 64 == 0)
                for (int r = 0; r < n_rows; r++) __builtin_prefetch((const uint8_t *)w + (n_rows + r) * row_bytes + at);
            for (int r = 0; r < n_rows; r++) acc[r][0] = _mm256_fmadd_ps(weight8((const uint8_t *)w + r * row_bytes, type, i), xv, acc[r][0]);
            continue;
        }
        __m256 wv[8];
        for (int r = 0; r < n_rows; r++) {
            wv[r] = weight8((const uint8_t *)w + r * row_bytes, type, i);
            __asm__("" : "+x"(wv[r]));
        }
        for (int t = 0; t < n_x; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * x_stride + i);
            if (n_rows > 1) __asm__("" : "+x"(xv));
            for (int r = 0; r < n_rows; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    for (int r = 0; r < n_rows; r++)
        for (int t = 0; t < n_x; t++)
            out[t * out_stride + r] = float_dot_tail(hsum256(acc[r][t]), (const uint8_t *)w + r * row_bytes, type, x + t * x_stride, i, n);
}
#elif defined(KERNELS_NEON)
/* Four weights of an f32, f16 or bf16 row from index i, as f32. */
static inline float32x4_t weight4(const void *w, int type, int i) {
    if (type == TYPE_F32) return vld1q_f32((const float *)w + i);
    if (type == TYPE_F16) return load_f16x4((const uint16_t *)w + i);
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)w + i), 16));
}

/* n_rows x n_x outputs, at most 8 x 4 (and at most 16 of them). */
static inline __attribute__((always_inline)) void gemm_float_block(const void *w, int type, size_t row_bytes, int n_rows,
                                                                    const float *x, size_t x_stride, int n_x, int n,
                                                                    float *out, size_t out_stride) {
    float32x4_t acc[8][4];
    for (int r = 0; r < n_rows; r++)
        for (int t = 0; t < n_x; t++) acc[r][t] = vdupq_n_f32(0);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t wv[8];
        for (int r = 0; r < n_rows; r++) wv[r] = weight4((const uint8_t *)w + r * row_bytes, type, i);
        for (int t = 0; t < n_x; t++) {
            float32x4_t xv = vld1q_f32(x + t * x_stride + i);
            for (int r = 0; r < n_rows; r++) acc[r][t] = vfmaq_f32(acc[r][t], wv[r], xv);
        }
    }
    for (int r = 0; r < n_rows; r++)
        for (int t = 0; t < n_x; t++)
            out[t * out_stride + r] = float_dot_tail(hsum_f32x4(acc[r][t]), (const uint8_t *)w + r * row_bytes, type, x + t * x_stride, i, n);
}
#endif

#if defined(GEMM_FLOAT_BLOCK_ROWS)
/* All rows against n_x (constant) tokens: blocks of `block_rows` rows, then
   what is left in blocks of 4, 2 and 1 (each size a constant, so the
   accumulators stay registers). */
static inline __attribute__((always_inline)) void gemm_float_rows(const void *w, int type, size_t row_bytes, int n_rows,
                                                                   int block_rows, const float *x, size_t x_stride, int n_x,
                                                                   int n, float *out, size_t out_stride) {
#define GEMM_FLOAT_BLOCK(rows)                                                                                         \
    do {                                                                                                               \
        gemm_float_block((const uint8_t *)w + (size_t)r * row_bytes, type, row_bytes, rows, x, x_stride, n_x, n, out + r, \
                         out_stride);                                                                                  \
        r += rows;                                                                                                     \
    } while (0)
    int r = 0;
    while (r + block_rows <= n_rows) GEMM_FLOAT_BLOCK(block_rows);
    if (block_rows > 4 && r + 4 <= n_rows) GEMM_FLOAT_BLOCK(4);
    if (block_rows > 2 && r + 2 <= n_rows) GEMM_FLOAT_BLOCK(2);
    if (r < n_rows) GEMM_FLOAT_BLOCK(1);
#undef GEMM_FLOAT_BLOCK
}

/* Constant type: one specialized copy per type and token count (up to
   GEMM_FLOAT_TOKENS, four on every SIMD path). */
static inline __attribute__((always_inline)) void gemm_float_typed(const void *w, int type, size_t row_bytes, int n_rows,
                                                                    const float *x, size_t x_stride, int n_x, int n,
                                                                    float *out, size_t out_stride) {
    _Static_assert(GEMM_FLOAT_TOKENS == 4, "the token counts below");
    for (int t = 0; t < n_x; t += GEMM_FLOAT_TOKENS) {
        const float *xt = x + (size_t)t * x_stride;
        float *ot = out + (size_t)t * out_stride;
        switch (n_x - t) {
        case 1: gemm_float_rows(w, type, row_bytes, n_rows, GEMM_FLOAT_BLOCK_ROWS(1), xt, x_stride, 1, n, ot, out_stride); break;
        case 2: gemm_float_rows(w, type, row_bytes, n_rows, GEMM_FLOAT_BLOCK_ROWS(2), xt, x_stride, 2, n, ot, out_stride); break;
        case 3: gemm_float_rows(w, type, row_bytes, n_rows, GEMM_FLOAT_BLOCK_ROWS(3), xt, x_stride, 3, n, ot, out_stride); break;
        default: gemm_float_rows(w, type, row_bytes, n_rows, GEMM_FLOAT_BLOCK_ROWS(4), xt, x_stride, 4, n, ot, out_stride); break;
        }
    }
}
#endif

static inline void gemm_float(const void *w, int type, size_t row_bytes, int n_rows, const float *x, size_t x_stride,
                              int n_x, int n, float *out, size_t out_stride) {
#if defined(GEMM_FLOAT_BLOCK_ROWS)
    if (type == TYPE_F32) gemm_float_typed(w, TYPE_F32, row_bytes, n_rows, x, x_stride, n_x, n, out, out_stride);
    else if (type == TYPE_F16) gemm_float_typed(w, TYPE_F16, row_bytes, n_rows, x, x_stride, n_x, n, out, out_stride);
    else gemm_float_typed(w, TYPE_BF16, row_bytes, n_rows, x, x_stride, n_x, n, out, out_stride);
#else
    for (int t = 0; t < n_x; t++)
        for (int r = 0; r < n_rows; r++) {
            const void *wr = (const uint8_t *)w + (size_t)r * row_bytes;
            const float *xt = x + (size_t)t * x_stride;
            out[(size_t)t * out_stride + r] = type == TYPE_F32 ? dot_f32_ref(wr, xt, n)
                                            : type == TYPE_F16 ? dot_f16_ref(wr, xt, n) : dot_bf16_ref(wr, xt, n);
        }
#endif
}

/* An f32, f16 or bf16 weight row against one activation row. */
static inline float dot_float(const void *w, int type, const float *x, int n) {
    float r;
    gemm_float(w, type, 0, 1, x, 0, 1, n, &r, 1);
    return r;
}

#if defined(KERNELS_NEON)
/* The sum of a vector's four int32 lanes. */
static inline int32_t hsum_s32x4(int32x4_t v) {
#if defined(__aarch64__)
    return vaddvq_s32(v);
#else
    int32x2_t s = vpadd_s32(vget_low_s32(v), vget_high_s32(v));
    return vget_lane_s32(vpadd_s32(s, s), 0);
#endif
}

/* Sums of four products of 16 signed bytes each: the dot-product
   instruction where the CPU has it, widening multiplies where not (the same
   integers either way). */
static inline int32x4_t dot_s8x16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    return vaddq_s32(acc, vaddq_s32(vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b))), vpaddlq_s16(mull_high_s8(a, b))));
#endif
}

/* One row of a 32-element type against one activation row, NEON: the
   block's weights as two vectors of 16 signed bytes (q8_0 and q4_0 unpacked
   in vector registers, the others by block32_unpack). */
static inline float dot_quant_neon(const void *w, int type, const BlockQ8A *x, int n) {
    float32x4_t acc = vdupq_n_f32(0);
    float offsets = 0;
    for (int b = 0; b < n / QK; b++) {
        int8x16_t w0, w1;
        float dw, mw = 0;
        if (type == TYPE_Q8_0) {
            const BlockQ8_0 *blk = (const BlockQ8_0 *)w + b;
            w0 = vld1q_s8(blk->qs), w1 = vld1q_s8(blk->qs + 16), dw = f16_to_f32(blk->d);
        } else if (type == TYPE_Q4_0) {
            const BlockQ4_0 *blk = (const BlockQ4_0 *)w + b;
            uint8x16_t packed = vld1q_u8(blk->qs);
            w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(15))), vdupq_n_s8(8));
            w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(packed, 4)), vdupq_n_s8(8));
            dw = f16_to_f32(blk->d);
        } else {
            int8_t q[QK];
            dw = block32_unpack(w, type, b, q, &mw);
            w0 = vld1q_s8(q), w1 = vld1q_s8(q + 16);
        }
        int32x4_t p = dot_s8x16(dot_s8x16(vdupq_n_s32(0), w0, vld1q_s8(x[b].qs)), w1, vld1q_s8(x[b].qs + 16));
        acc = vfmaq_f32(acc, vcvtq_f32_s32(p), vdupq_n_f32(dw * x[b].d));
        if (type_has_offset(type)) offsets += mw * x[b].d * (float)x[b].sum;
    }
    return hsum_f32x4(acc) + offsets;
}

/* A super-block row against n_x (at most 4) BlockQ8K rows: unpacked by
   superblock_unpack once for all of them, multiplied 16 bytes at a time;
   the reference's integers and float operations. */
static inline void dot_superblock_neon(const void *w, int type, const BlockQ8K *x, size_t stride, int n_x, int n, float *out) {
    float s[4] = {0, 0, 0, 0};
    for (int b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];
        int16_t sc[16], mn[16];
        float d, dmin;
        superblock_unpack(w, type, b, q, sc, mn, &d, &dmin);
        for (int k = 0; k < n_x; k++) {
            const BlockQ8K *xb = x + k * stride + b;
            int32_t isum = 0, imin = 0;
            for (int g = 0; g < 16; g++) {
                isum += sc[g] * hsum_s32x4(dot_s8x16(vdupq_n_s32(0), vld1q_s8(q + 16 * g), vld1q_s8(xb->qs + 16 * g)));
                imin += mn[g] * xb->bsums[g];
            }
            s[k] = superblock_combine(s[k], d, dmin, xb, isum, imin);
        }
    }
    for (int k = 0; k < n_x; k++) out[k] = s[k];
}
#endif

/* A quantized row against n_x (1 or 4) activation rows, `stride` blocks
   apart: BlockQ8A rows for the 32-element types, BlockQ8K for the
   super-block types (TYPE_INFO's act). On AVX2 each type gets its own
   specialized copy (the type is a constant in each case). */
static inline void dot_quant_rows(const void *w, int type, const void *x, size_t stride, int n_x, int n, float *out) {
#if defined(KERNELS_AVX2)
#define DOT_CASE(T, kernel, X)                                                           \
    case T:                                                                              \
        if (n_x == 4) kernel(w, T, (const X *)x, stride, 4, n, out);                     \
        else kernel(w, T, (const X *)x, stride, 1, n, out);                              \
        return;
    switch (type) {
    DOT_CASE(TYPE_Q8_0, dot_quant_avx2, BlockQ8A)
    DOT_CASE(TYPE_Q4_0, dot_quant_avx2, BlockQ8A)
    DOT_CASE(TYPE_Q4_1, dot_quant_avx2, BlockQ8A)
    DOT_CASE(TYPE_Q5_0, dot_quant_avx2, BlockQ8A)
    DOT_CASE(TYPE_Q5_1, dot_quant_avx2, BlockQ8A)
    DOT_CASE(TYPE_IQ4_NL, dot_quant_avx2, BlockQ8A)
    DOT_CASE(TYPE_Q2_K, dot_superblock_avx2, BlockQ8K)
    DOT_CASE(TYPE_Q3_K, dot_superblock_avx2, BlockQ8K)
    DOT_CASE(TYPE_Q4_K, dot_superblock_avx2, BlockQ8K)
    DOT_CASE(TYPE_Q5_K, dot_superblock_avx2, BlockQ8K)
    DOT_CASE(TYPE_Q6_K, dot_superblock_avx2, BlockQ8K)
    DOT_CASE(TYPE_IQ4_XS, dot_superblock_avx2, BlockQ8K)
    }
#undef DOT_CASE
#elif defined(KERNELS_NEON)
    if (TYPE_INFO[type].act == ACT_Q8K) dot_superblock_neon(w, type, (const BlockQ8K *)x, stride, n_x, n, out);
    else
        for (int k = 0; k < n_x; k++) out[k] = dot_quant_neon(w, type, (const BlockQ8A *)x + k * stride, n);
#else
    for (int k = 0; k < n_x; k++)
        out[k] = TYPE_INFO[type].act == ACT_Q8K ? dot_superblock_ref(w, type, (const BlockQ8K *)x + k * stride, n)
                                                : dot_block32_ref(w, type, (const BlockQ8A *)x + k * stride, n);
#endif
}

/* A quantized row against one activation row. */
static inline float dot_quant(const void *w, int type, const void *x, int n) {
    float r = 0;
    dot_quant_rows(w, type, x, 0, 1, n, &r);
    return r;
}

/* The same row against four activation rows, `stride` blocks apart: the same
   results as four dot_quant calls, bit for bit. */
static inline void dot_quant_x4(const void *w, int type, const void *x, size_t stride, int n, float out[4]) {
    dot_quant_rows(w, type, x, stride, 4, n, out);
}

/* ---------------------------------------------------------------------------
 * Eight interleaved rows (BlockQ8_0x8 / BlockQ4_0x8) against n_x <= 8
 * activation rows, `stride` blocks apart: out[k * 8 + r] = row r . x_k.
 * Per block, the integer dot of each row is exact; then acc_r +=
 * (float)dot_r * (d_r * d_x) in one fused multiply-add, block after block.
 * The SIMD versions do exactly these operations, so they give the scalar
 * reference's bits, and a token gives the same bits whatever else is in
 * its batch. q4_0's nibbles are used unsigned and 8 * sum(x) comes off
 * after.
 */
static inline void gemm_x8_ref(const void *w, int type, const BlockQ8A *x, size_t stride, int n_x, int blocks, float *out) {
    for (int k = 0; k < n_x; k++) {
        float acc[8] = {0};
        for (int b = 0; b < blocks; b++) {
            const BlockQ8A *xb = x + k * stride + b;
            int32_t dot[8] = {0};
            const uint16_t *d;
            if (type == TYPE_Q8_0) {
                const BlockQ8_0x8 *blk = (const BlockQ8_0x8 *)w + b;
                d = blk->d;
                for (int st = 0; st < 8; st++)
                    for (int r = 0; r < 8; r++)
                        for (int e = 0; e < 4; e++) dot[r] += blk->qs[(st * 8 + r) * 4 + e] * xb->qs[4 * st + e];
            } else {
                const BlockQ4_0x8 *blk = (const BlockQ4_0x8 *)w + b;
                d = blk->d;
                for (int st = 0; st < 4; st++)
                    for (int r = 0; r < 8; r++)
                        for (int e = 0; e < 4; e++) {
                            int q = blk->qs[(st * 8 + r) * 4 + e];
                            dot[r] += (q & 15) * xb->qs[4 * st + e] + (q >> 4) * xb->qs[4 * st + e + 16];
                        }
                for (int r = 0; r < 8; r++) dot[r] -= 8 * xb->sum;
            }
            for (int r = 0; r < 8; r++) acc[r] = fmaf((float)dot[r], f16_to_f32(d[r]) * xb->d, acc[r]);
        }
        memcpy(out + 8 * k, acc, sizeof acc);
    }
}

#if defined(KERNELS_AVX2)
/* acc + the sums of four products of unsigned u by signed s bytes, per int32 lane. */
static inline __m256i dpbusd_add(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

static inline __attribute__((always_inline)) void gemm_x8_avx2(const void *w, int type, const BlockQ8A *x, size_t stride,
                                                                int n_x, int blocks, float *out) {
    __m256 acc[8];
    for (int k = 0; k < n_x; k++) acc[k] = _mm256_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        __m256i dot[8];
        for (int k = 0; k < n_x; k++) dot[k] = _mm256_setzero_si256();
        const uint16_t *d;
        if (type == TYPE_Q8_0) {
            const BlockQ8_0x8 *blk = (const BlockQ8_0x8 *)w + b;
            d = blk->d;
            for (int st = 0; st < 8; st++) { /* |w| by x with w's sign: the unsigned-by-signed product */
                __m256i wq = _mm256_loadu_si256((const __m256i *)(blk->qs + st * 32)), uw = _mm256_abs_epi8(wq);
                for (int k = 0; k < n_x; k++) {
                    int32_t x4;
                    memcpy(&x4, x[k * stride + b].qs + 4 * st, 4);
                    dot[k] = dpbusd_add(dot[k], uw, _mm256_sign_epi8(_mm256_set1_epi32(x4), wq));
                }
            }
        } else {
            const BlockQ4_0x8 *blk = (const BlockQ4_0x8 *)w + b;
            d = blk->d;
            const __m256i low4 = _mm256_set1_epi8(15);
            for (int st = 0; st < 4; st++) {
                __m256i packed = _mm256_loadu_si256((const __m256i *)(blk->qs + st * 32));
                __m256i lo = _mm256_and_si256(packed, low4), hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
                for (int k = 0; k < n_x; k++) {
                    int32_t xl, xh;
                    memcpy(&xl, x[k * stride + b].qs + 4 * st, 4);
                    memcpy(&xh, x[k * stride + b].qs + 4 * st + 16, 4);
                    dot[k] = dpbusd_add(dpbusd_add(dot[k], lo, _mm256_set1_epi32(xl)), hi, _mm256_set1_epi32(xh));
                }
            }
            for (int k = 0; k < n_x; k++) dot[k] = _mm256_sub_epi32(dot[k], _mm256_set1_epi32(8 * x[k * stride + b].sum));
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d));
        for (int k = 0; k < n_x; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[k]), _mm256_mul_ps(dw, _mm256_set1_ps(x[k * stride + b].d)), acc[k]);
    }
    for (int k = 0; k < n_x; k++) _mm256_storeu_ps(out + 8 * k, acc[k]);
}
#endif

#if defined(KERNELS_NEON)
/* The same operations with NEON: rows 0-3 and 4-7 of a step are one vector
   each, and every four-byte group of a row meets the token's four values of
   that step. With the dot-product extension, one sdot per vector (x's group
   picked by lane); without it, widening multiplies whose int16 products are
   summed pairwise into int32 (every product of int8 fits int16 exactly).
   At most GEMM_X8_NEON_TOKENS tokens a call: each token's int32 sums take
   four q registers, so four tokens fill half of AArch64's 32 but would
   leave nothing of ARMv7's 16 for the weights (they spill). */
#if defined(__aarch64__)
#define GEMM_X8_NEON_TOKENS 4
#else
#define GEMM_X8_NEON_TOKENS 2
#endif
static inline __attribute__((always_inline)) void gemm_x8_neon(const void *w, int type, const BlockQ8A *x, size_t stride,
                                                                int n_x, int blocks, float *out) {
    float32x4_t acc[GEMM_X8_NEON_TOKENS][2];
    for (int k = 0; k < GEMM_X8_NEON_TOKENS; k++) acc[k][0] = acc[k][1] = vdupq_n_f32(0);
    for (int b = 0; b < blocks; b++) {
        int32x4_t dot[GEMM_X8_NEON_TOKENS][2]; /* token k, rows 0-3 and 4-7 */
        const uint16_t *d;
#if defined(__ARM_FEATURE_DOTPROD)
        int8x16_t xv[GEMM_X8_NEON_TOKENS][2]; /* token k's values 0-15 and 16-31 */
        for (int k = 0; k < n_x; k++) {
            const BlockQ8A *xb = x + k * stride + b;
            xv[k][0] = vld1q_s8(xb->qs), xv[k][1] = vld1q_s8(xb->qs + 16);
            dot[k][0] = dot[k][1] = vdupq_n_s32(0);
        }
        if (type == TYPE_Q8_0) {
            const BlockQ8_0x8 *blk = (const BlockQ8_0x8 *)w + b;
            d = blk->d;
#define X8_Q8_STEP(st)                                                                                     \
    do {                                                                                                   \
        int8x16_t w0 = vld1q_s8(blk->qs + (st) * 32), w1 = vld1q_s8(blk->qs + (st) * 32 + 16);             \
        for (int k = 0; k < n_x; k++) {                                                                    \
            dot[k][0] = vdotq_laneq_s32(dot[k][0], w0, xv[k][(st) / 4], (st) % 4);                         \
            dot[k][1] = vdotq_laneq_s32(dot[k][1], w1, xv[k][(st) / 4], (st) % 4);                         \
        }                                                                                                  \
    } while (0)
            X8_Q8_STEP(0); X8_Q8_STEP(1); X8_Q8_STEP(2); X8_Q8_STEP(3);
            X8_Q8_STEP(4); X8_Q8_STEP(5); X8_Q8_STEP(6); X8_Q8_STEP(7);
#undef X8_Q8_STEP
        } else {
            const BlockQ4_0x8 *blk = (const BlockQ4_0x8 *)w + b;
            d = blk->d;
            const uint8x16_t low4 = vdupq_n_u8(15);
            /* nibbles 0..15 as signed bytes: low ones meet values 4st.., high ones 16 + 4st.. */
#define X8_Q4_STEP(st)                                                                                     \
    do {                                                                                                   \
        uint8x16_t p0 = vld1q_u8(blk->qs + (st) * 32), p1 = vld1q_u8(blk->qs + (st) * 32 + 16);            \
        int8x16_t l0 = vreinterpretq_s8_u8(vandq_u8(p0, low4)), h0 = vreinterpretq_s8_u8(vshrq_n_u8(p0, 4)); \
        int8x16_t l1 = vreinterpretq_s8_u8(vandq_u8(p1, low4)), h1 = vreinterpretq_s8_u8(vshrq_n_u8(p1, 4)); \
        for (int k = 0; k < n_x; k++) {                                                                    \
            dot[k][0] = vdotq_laneq_s32(vdotq_laneq_s32(dot[k][0], l0, xv[k][0], (st)), h0, xv[k][1], (st)); \
            dot[k][1] = vdotq_laneq_s32(vdotq_laneq_s32(dot[k][1], l1, xv[k][0], (st)), h1, xv[k][1], (st)); \
        }                                                                                                  \
    } while (0)
            X8_Q4_STEP(0); X8_Q4_STEP(1); X8_Q4_STEP(2); X8_Q4_STEP(3);
#undef X8_Q4_STEP
        }
#else
        int32x4_t pair[GEMM_X8_NEON_TOKENS][4]; /* token k, rows 0-1, 2-3, 4-5, 6-7: two partial sums per row */
        for (int k = 0; k < n_x; k++)
            for (int j = 0; j < 4; j++) pair[k][j] = vdupq_n_s32(0);
        if (type == TYPE_Q8_0) {
            const BlockQ8_0x8 *blk = (const BlockQ8_0x8 *)w + b;
            d = blk->d;
            for (int st = 0; st < 8; st++) {
                int8x16_t w0 = vld1q_s8(blk->qs + st * 32), w1 = vld1q_s8(blk->qs + st * 32 + 16);
                for (int k = 0; k < n_x; k++) {
                    int32_t x4;
                    memcpy(&x4, x[k * stride + b].qs + 4 * st, 4);
                    int8x16_t xg = vreinterpretq_s8_s32(vdupq_n_s32(x4));
                    pair[k][0] = vpadalq_s16(pair[k][0], vmull_s8(vget_low_s8(w0), vget_low_s8(xg)));
                    pair[k][1] = vpadalq_s16(pair[k][1], mull_high_s8(w0, xg));
                    pair[k][2] = vpadalq_s16(pair[k][2], vmull_s8(vget_low_s8(w1), vget_low_s8(xg)));
                    pair[k][3] = vpadalq_s16(pair[k][3], mull_high_s8(w1, xg));
                }
            }
        } else {
            const BlockQ4_0x8 *blk = (const BlockQ4_0x8 *)w + b;
            d = blk->d;
            const uint8x16_t low4 = vdupq_n_u8(15);
            for (int st = 0; st < 4; st++) {
                uint8x16_t p0 = vld1q_u8(blk->qs + st * 32), p1 = vld1q_u8(blk->qs + st * 32 + 16);
                int8x16_t l0 = vreinterpretq_s8_u8(vandq_u8(p0, low4)), h0 = vreinterpretq_s8_u8(vshrq_n_u8(p0, 4));
                int8x16_t l1 = vreinterpretq_s8_u8(vandq_u8(p1, low4)), h1 = vreinterpretq_s8_u8(vshrq_n_u8(p1, 4));
                for (int k = 0; k < n_x; k++) { /* |nibble * x| <= 15 * 128: a low and a high product fit int16 */
                    int32_t xl4, xh4;
                    memcpy(&xl4, x[k * stride + b].qs + 4 * st, 4);
                    memcpy(&xh4, x[k * stride + b].qs + 4 * st + 16, 4);
                    int8x16_t xl = vreinterpretq_s8_s32(vdupq_n_s32(xl4)), xh = vreinterpretq_s8_s32(vdupq_n_s32(xh4));
                    pair[k][0] = vpadalq_s16(pair[k][0], vmlal_s8(vmull_s8(vget_low_s8(l0), vget_low_s8(xl)), vget_low_s8(h0), vget_low_s8(xh)));
                    pair[k][1] = vpadalq_s16(pair[k][1], mlal_high_s8(mull_high_s8(l0, xl), h0, xh));
                    pair[k][2] = vpadalq_s16(pair[k][2], vmlal_s8(vmull_s8(vget_low_s8(l1), vget_low_s8(xl)), vget_low_s8(h1), vget_low_s8(xh)));
                    pair[k][3] = vpadalq_s16(pair[k][3], mlal_high_s8(mull_high_s8(l1, xl), h1, xh));
                }
            }
        }
        for (int k = 0; k < n_x; k++)
            dot[k][0] = padd_s32(pair[k][0], pair[k][1]), dot[k][1] = padd_s32(pair[k][2], pair[k][3]);
#endif
        if (type == TYPE_Q4_0)
            for (int k = 0; k < n_x; k++) {
                int32x4_t off = vdupq_n_s32(8 * x[k * stride + b].sum);
                dot[k][0] = vsubq_s32(dot[k][0], off), dot[k][1] = vsubq_s32(dot[k][1], off);
            }
        float32x4_t dw0 = load_f16x4(d), dw1 = load_f16x4(d + 4);
        for (int k = 0; k < n_x; k++) {
            float xd = x[k * stride + b].d;
            acc[k][0] = vfmaq_f32(acc[k][0], vcvtq_f32_s32(dot[k][0]), vmulq_n_f32(dw0, xd));
            acc[k][1] = vfmaq_f32(acc[k][1], vcvtq_f32_s32(dot[k][1]), vmulq_n_f32(dw1, xd));
        }
    }
    for (int k = 0; k < n_x; k++) vst1q_f32(out + 8 * k, acc[k][0]), vst1q_f32(out + 8 * k + 4, acc[k][1]);
}
#endif

static inline void gemm_x8(const void *w, int type, const BlockQ8A *x, size_t stride, int n_x, int blocks, float *out) {
#if defined(KERNELS_AVX2)
    /* constant types and token counts: specialized copies */
    if (type == TYPE_Q8_0) {
        if (n_x == 8) gemm_x8_avx2(w, TYPE_Q8_0, x, stride, 8, blocks, out);
        else if (n_x == 1) gemm_x8_avx2(w, TYPE_Q8_0, x, stride, 1, blocks, out);
        else gemm_x8_avx2(w, TYPE_Q8_0, x, stride, n_x, blocks, out);
    } else {
        if (n_x == 8) gemm_x8_avx2(w, TYPE_Q4_0, x, stride, 8, blocks, out);
        else if (n_x == 1) gemm_x8_avx2(w, TYPE_Q4_0, x, stride, 1, blocks, out);
        else gemm_x8_avx2(w, TYPE_Q4_0, x, stride, n_x, blocks, out);
    }
#elif defined(KERNELS_NEON)
    /* constant types and token counts: one token is decoding, GEMM_X8_NEON_TOKENS at a time the bulk of a batch */
    enum { T = GEMM_X8_NEON_TOKENS };
    for (int k0 = 0; k0 < n_x; k0 += T) {
        int m = n_x - k0 < T ? n_x - k0 : T;
        const BlockQ8A *xk = x + (size_t)k0 * stride;
        if (type == TYPE_Q8_0) {
            if (m == T) gemm_x8_neon(w, TYPE_Q8_0, xk, stride, T, blocks, out + 8 * k0);
            else if (m == 1) gemm_x8_neon(w, TYPE_Q8_0, xk, stride, 1, blocks, out + 8 * k0);
            else gemm_x8_neon(w, TYPE_Q8_0, xk, stride, m, blocks, out + 8 * k0);
        } else {
            if (m == T) gemm_x8_neon(w, TYPE_Q4_0, xk, stride, T, blocks, out + 8 * k0);
            else if (m == 1) gemm_x8_neon(w, TYPE_Q4_0, xk, stride, 1, blocks, out + 8 * k0);
            else gemm_x8_neon(w, TYPE_Q4_0, xk, stride, m, blocks, out + 8 * k0);
        }
    }
#else
    gemm_x8_ref(w, type, x, stride, n_x, blocks, out);
#endif
}

/* Rows r0..r0+7 of a q8_0 or q4_0 matrix (each `blocks` blocks) as one
   run of interleaved blocks. */
static inline void repack_x8(const void *rows, int type, int blocks, void *out) {
    for (int b = 0; b < blocks; b++)
        for (int r = 0; r < 8; r++) {
            if (type == TYPE_Q8_0) {
                const BlockQ8_0 *in = (const BlockQ8_0 *)rows + (size_t)r * blocks + b;
                BlockQ8_0x8 *o = (BlockQ8_0x8 *)out + b;
                o->d[r] = in->d;
                for (int st = 0; st < 8; st++) memcpy(o->qs + (st * 8 + r) * 4, in->qs + 4 * st, 4);
            } else {
                const BlockQ4_0 *in = (const BlockQ4_0 *)rows + (size_t)r * blocks + b;
                BlockQ4_0x8 *o = (BlockQ4_0x8 *)out + b;
                o->d[r] = in->d;
                for (int st = 0; st < 4; st++) memcpy(o->qs + (st * 8 + r) * 4, in->qs + 4 * st, 4);
            }
        }
}

/* y += a * x */
static inline void axpy(float *y, float a, const float *x, int n) {
    int i = 0;
#if defined(KERNELS_AVX2)
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

/* ---------------------------------------------------------------------------
 * Thread pool: n-1 workers plus the calling thread. pool_run(fn, arg) calls
 * fn(arg, i, n) once for each i in [0, n) and returns when all are done.
 * Workers spin briefly on a generation counter (a decode step issues hundreds
 * of short jobs) and sleep on a condition variable when idle.
 */
typedef void (*PoolTask)(void *arg, int ith, int nth);

typedef struct ThreadPool ThreadPool;

typedef struct {
    ThreadPool *pool;
    int ith;
    pthread_t thread;
} PoolWorker;

struct ThreadPool {
    int n_threads;
    PoolWorker *workers;
    PoolTask task;
    void *arg;
    atomic_int generation; /* bumped once per job */
    atomic_int pending;    /* workers still running the current job */
    int stop;
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int sleepers, waiting;
};

#define POOL_SPINS 20000

/* One step of a spin-wait. Every so often the core is offered to another
   runnable thread: on a busy machine the thread we wait for may be the one
   that needs it. */
static inline void spin_pause(int spins) {
    if (spins % 1024 == 1023) { sched_yield(); return; }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void *pool_worker_main(void *p) {
    PoolWorker *w = p;
    ThreadPool *pool = w->pool;
    int seen = 0;
    for (;;) {
        int gen, spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen) {
            if (++spins < POOL_SPINS) { spin_pause(spins); continue; }
            pthread_mutex_lock(&pool->lock);
            pool->sleepers++;
            while (atomic_load(&pool->generation) == seen) pthread_cond_wait(&pool->wake, &pool->lock);
            pool->sleepers--;
            pthread_mutex_unlock(&pool->lock);
            spins = 0;
        }
        seen = gen;
        if (pool->stop) return NULL;
        pool->task(pool->arg, w->ith, pool->n_threads);
        if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool->lock);
            if (pool->waiting) pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->lock);
        }
    }
}

static void pool_run(ThreadPool *pool, PoolTask task, void *arg) {
    if (pool->n_threads == 1) { task(arg, 0, 1); return; }
    pool->task = task;
    pool->arg = arg;
    atomic_store(&pool->pending, pool->n_threads - 1);
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    if (pool->sleepers) pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    task(arg, 0, pool->n_threads);
    for (int spins = 0; atomic_load_explicit(&pool->pending, memory_order_acquire); spins++) {
        if (spins < POOL_SPINS) { spin_pause(spins); continue; }
        pthread_mutex_lock(&pool->lock);
        pool->waiting = 1;
        while (atomic_load(&pool->pending)) pthread_cond_wait(&pool->done, &pool->lock);
        pool->waiting = 0;
        pthread_mutex_unlock(&pool->lock);
    }
}

static void pool_free(ThreadPool *pool) {
    if (!pool) return;
    if (pool->workers) {
        pthread_mutex_lock(&pool->lock);
        pool->stop = 1;
        atomic_fetch_add(&pool->generation, 1);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
        for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->workers[i].thread, NULL);
        free(pool->workers);
    }
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    free(pool);
}

static ThreadPool *pool_new(int n_threads) {
    ThreadPool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    if (pool->n_threads == 1) return pool;
    pool->workers = calloc((size_t)pool->n_threads, sizeof *pool->workers);
    if (!pool->workers) { pool_free(pool); return NULL; }
    for (int i = 1; i < pool->n_threads; i++) {
        pool->workers[i].pool = pool;
        pool->workers[i].ith = i;
        if (pthread_create(&pool->workers[i].thread, NULL, pool_worker_main, &pool->workers[i])) {
            pool->n_threads = i; /* join the ones that started */
            pool_free(pool);
            return NULL;
        }
    }
    return pool;
}

/* The half-open range [*lo, *hi) of n items that thread ith of nth handles,
   in whole multiples of `align` so the split never changes what one item computes. */
static inline void split_range(int64_t n, int ith, int nth, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t units = (n + align - 1) / align;
    int64_t a = units * ith / nth, b = units * (ith + 1) / nth;
    *lo = a * align < n ? a * align : n;
    *hi = b * align < n ? b * align : n;
}

#endif
