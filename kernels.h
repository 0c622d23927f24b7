/* kernels.h - weight types, quantization blocks, the scalar reference dot
 * products, the kernel levels and the thread pool. Included by model.h; not
 * a public API of its own.
 *
 * The kernels themselves are in kernels_simd.h, compiled below once per
 * instruction-set level (portable C; AVX2+FMA+F16C, AVX-VNNI, AVX-512 on
 * x86-64; NEON and dotprod on AArch64, NEON on ARMv7 with VFPv4) into a
 * Kernels table each; kernels_select picks the table at run time. SIMD and
 * scalar agree to float rounding; the integer parts of the quantized dots
 * agree exactly.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* KERNELS_SCALAR_ONLY (the fuzz builds, which test parsing, not speed):
   the portable level alone, compiled in a quarter of the time. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(KERNELS_SCALAR_ONLY)
#include <cpuid.h>
#include <immintrin.h> /* every level's intrinsics, usable in functions that target the level */
#define KERNELS_X86 1
#endif
/* NEON: always on AArch64; on 32-bit ARM only with VFPv4's fused
   multiply-add (-mfpu=neon-vfpv4: Cortex-A7/A15 and later, Raspberry Pi 2
   on), because the float kernels' chains are fused multiply-adds, like the
   fmaf of their scalar tails and of gemm_x8_ref. Older ARMv7 NEON
   (-mfpu=neon) gets the portable kernels. ARMv7's NEON arithmetic flushes
   subnormal floats to zero, so there the kernels can differ from the scalar
   reference below 1.2e-38; each output is still computed one way only. */
#if defined(__ARM_NEON) && defined(__ARM_FEATURE_FMA) && !defined(KERNELS_SCALAR_ONLY)
#include <arm_neon.h>
#define KERNELS_ARM_NEON 1
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
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
   long. q8_0's values are stored plus 128, as unsigned bytes: x86's
   multiply-add (vpdpbusd, pmaddubsw) takes one operand unsigned, and the
   128 times the activations' sum comes off once a block (x.sum), cheaper
   than moving each weight's sign onto the activations. */
typedef struct {
    uint16_t d[8];
    uint8_t qs[8 * QK]; /* value + 128 */
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

/* The portable conversions; each kernel level has its own (kernels_simd.h). */
static inline float f16_to_f32(uint16_t h) { return f16_to_f32_soft(h); }
static inline uint16_t f32_to_f16(float f) { return f32_to_f16_soft(f); }

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
    case TYPE_F16: for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = f32_to_f16(x[i]); break;
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

/* The bias the SIMD kernels add to make a super-block type's integers
   unsigned: 2^this (32 for q6_k, 4 for q3_k); -1 for none. */
static inline int superblock_bias_log2(int type) { return type == TYPE_Q6_K ? 5 : type == TYPE_Q3_K ? 2 : -1; }

/* Floats from a row of any weight type. For the block types this is ggml's
   arithmetic, operation for operation, so GGUF weights come out bit for bit
   as llama.cpp sees them. */
static inline void dequantize_row(int type, const void *row, float *y, int64_t n) {
    switch (type) {
    case TYPE_F32: memcpy(y, row, (size_t)n * 4); return;
    case TYPE_F16: for (int64_t i = 0; i < n; i++) y[i] = f16_to_f32(((const uint16_t *)row)[i]); return;
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
static inline void quantize_row_q8k_ref(const float *x, BlockQ8K *y, int64_t n) {
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

/* Bytes that n activations take in either quantized form (the larger). */
static inline size_t activation_bytes(int64_t n) {
    size_t a = (size_t)(n / QK + 1) * sizeof(BlockQ8A), k = (size_t)(n / QK_K + 1) * sizeof(BlockQ8K);
    return a > k ? a : k;
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

/* ---------------------------------------------------------------------------
 * Eight interleaved rows (BlockQ8_0x8 / BlockQ4_0x8) against n_x <= 8
 * activation rows, `stride` blocks apart: out[k * out_stride + r] = row r .
 * x_k.
 * Per block, the integer dot of each row is exact; then acc_r +=
 * (float)dot_r * (d_r * d_x) in one fused multiply-add, block after block.
 * The SIMD versions do exactly these operations, so they give the scalar
 * reference's bits, and a token gives the same bits whatever else is in
 * its batch. q4_0's nibbles are used unsigned and 8 * sum(x) comes off
 * after.
 */
static inline void gemm_x8_ref(const void *w, int type, const BlockQ8A *x, size_t stride, int n_x, int blocks, float *out,
                               size_t out_stride) {
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
                        for (int e = 0; e < 4; e++) dot[r] += (blk->qs[(st * 8 + r) * 4 + e] - 128) * xb->qs[4 * st + e];
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
        memcpy(out + k * out_stride, acc, sizeof acc);
    }
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
                for (int st = 0; st < 8; st++)
                    for (int e = 0; e < 4; e++) o->qs[(st * 8 + r) * 4 + e] = (uint8_t)(in->qs[4 * st + e] + 128);
            } else {
                const BlockQ4_0 *in = (const BlockQ4_0 *)rows + (size_t)r * blocks + b;
                BlockQ4_0x8 *o = (BlockQ4_0x8 *)out + b;
                o->d[r] = in->d;
                for (int st = 0; st < 4; st++) memcpy(o->qs + (st * 8 + r) * 4, in->qs + 4 * st, 4);
            }
        }
}

/* ---------------------------------------------------------------------------
 * Kernel levels. kernels_simd.h is compiled once per instruction-set level
 * (the names get the level's suffix), and each copy fills one of these
 * tables; the engine calls its kernels through the table that
 * kernels_select picks when a model is loaded: the best level this CPU has,
 * or the one the RUN_KERNELS environment variable names.
 */
typedef struct {
    const char *name;  /* "scalar", "avx2", "avxvnni", "avx512", "neon", "dotprod" */
    int repack_pays;   /* the eight-row kernels (gemm_x8) beat the row-by-row ones */
    int superblock_exact; /* the super-block dots give dot_superblock_ref's bits (AVX2's sum in another order) */
    void (*quantize_row_q8a)(const float *x, BlockQ8A *y, int64_t n);
    void (*quantize_row_q8k)(const float *x, BlockQ8K *y, int64_t n);
    void (*quantize_activations)(int type, const float *x, void *out, int64_t n);
    void (*row_from_float)(int type, const float *x, void *out, int64_t n);  /* quantize_row's result */
    void (*row_to_float)(int type, const void *row, float *y, int64_t n);    /* dequantize_row's */
    void (*dot_quant_rows)(const void *w, int type, const void *x, size_t stride, int n_x, int n, float *out);
    void (*gemm_float)(const void *w, int type, size_t row_bytes, int n_rows, const float *x, size_t x_stride, int n_x, int n,
                       float *out, size_t out_stride);
    /* `groups` (1 or 2) groups of eight interleaved rows, group_bytes apart, against n_x <= 8 tokens:
       out[k * out_stride + 8 g + r] (gemm_x8_ref for each group) */
    void (*gemm_x8)(const void *w, int type, size_t group_bytes, int groups, const BlockQ8A *x, size_t stride, int n_x, int blocks,
                    float *out, size_t out_stride);
    void (*axpy)(float *y, float a, const float *x, int n);
    void (*softmax_tile)(float *x, int n, float *max, float *sum, float *out, int m);
    void (*softmax)(float *x, int n);
    void (*attn_scores)(const float *q, size_t q_stride, int n_q, const void *k, int type, size_t k_stride, int count, int n,
                        float scale, int add, float *s, size_t s_stride);
    void (*attn_weighted_sum)(float *out, size_t o_stride, int n_q, const float *w, size_t w_stride, const void *v, int type,
                              size_t v_stride, int count, int n);
} Kernels;

/* Element `index` of a row of a cache type (f32, f16, q8_0: multiples of
   32 for q8_0). */
static inline void *kv_at(const void *base, int type, size_t index) { return (uint8_t *)base + type_row_bytes(type, (int64_t)index); }

#define KERNELS_CAT(name, level) name##_##level
#define KERNELS_CAT2(name, level) KERNELS_CAT(name, level)
#define KERNELS_NAME(name) KERNELS_CAT2(name, KERNELS_SUFFIX)

/* The compiler's instructions for a level: every function up to the
   matching KERNELS_TARGET_END targets it. */
#if defined(__clang__)
#define KERNELS_PRAGMA(x) _Pragma(#x)
#define KERNELS_TARGET(isa) KERNELS_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define KERNELS_TARGET_END _Pragma("clang attribute pop")
#else
#define KERNELS_PRAGMA(x) _Pragma(#x)
#define KERNELS_TARGET(isa) _Pragma("GCC push_options") KERNELS_PRAGMA(GCC target(isa))
#define KERNELS_TARGET_END _Pragma("GCC pop_options")
#endif

#define KERNELS_SUFFIX scalar
#define KERNELS_LEVEL "scalar"
#include "kernels_simd.h"
#undef KERNELS_SUFFIX
#undef KERNELS_LEVEL

#if defined(KERNELS_X86)
#define KERNELS_AVX2 1
#define KERNELS_SUFFIX avx2
#define KERNELS_LEVEL "avx2"
KERNELS_TARGET("avx2,fma,f16c")
#include "kernels_simd.h"
KERNELS_TARGET_END
#undef KERNELS_SUFFIX
#undef KERNELS_LEVEL

#define KERNELS_AVXVNNI 1
#define KERNELS_SUFFIX avxvnni
#define KERNELS_LEVEL "avxvnni"
KERNELS_TARGET("avx2,fma,f16c,avxvnni")
#include "kernels_simd.h"
KERNELS_TARGET_END
#undef KERNELS_SUFFIX
#undef KERNELS_LEVEL
#undef KERNELS_AVXVNNI

#define KERNELS_AVX512 1
#define KERNELS_SUFFIX avx512
#define KERNELS_LEVEL "avx512"
KERNELS_TARGET("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#include "kernels_simd.h"
KERNELS_TARGET_END
#undef KERNELS_SUFFIX
#undef KERNELS_LEVEL
#undef KERNELS_AVX512
#undef KERNELS_AVX2
#endif

#if defined(KERNELS_ARM_NEON)
#define KERNELS_NEON 1
#define KERNELS_SUFFIX neon
#define KERNELS_LEVEL "neon"
#include "kernels_simd.h"
#undef KERNELS_SUFFIX
#undef KERNELS_LEVEL
#if defined(__aarch64__) && !defined(__clang__)
#define KERNELS_DOTPROD 1
#define KERNELS_SUFFIX dotprod
#define KERNELS_LEVEL "dotprod"
KERNELS_TARGET("arch=armv8.2-a+dotprod")
#include "kernels_simd.h"
KERNELS_TARGET_END
#undef KERNELS_SUFFIX
#undef KERNELS_LEVEL
#undef KERNELS_DOTPROD
#endif
#undef KERNELS_NEON
#endif

/* What this CPU can run of each level. */
#if defined(KERNELS_X86)
static inline int cpu_x86_has(int level) { /* 1: AVX2+FMA+F16C, 2: and AVX-VNNI, 3: and AVX-512 F/BW/VL/VNNI */
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = c >> 12 & 1, osxsave = c >> 27 & 1, avx = c >> 28 & 1, f16c = c >> 29 & 1;
    if (!(fma && osxsave && avx && f16c)) return 0;
    uint32_t xcr0, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(xcr0_high) : "c"(0)); /* what the OS saves: ymm (bits 1-2), zmm (5-7) */
    if ((xcr0 & 6) != 6 || !__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b >> 5 & 1)) return 0;
    if (level == 1) return 1;
    if (level == 3) return (b >> 16 & 1) && (b >> 30 & 1) && (b >> 31 & 1) && (c >> 11 & 1) && (xcr0 & 0xe6) == 0xe6;
    unsigned a1, b1, c1, d1;
    return __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) && (a1 >> 4 & 1);
}
#endif

typedef struct {
    const Kernels *kernels;
    int cpu_level; /* passed to the CPU check (0: always available) */
} KernelLevel;

/* Lowest first. */
static const KernelLevel KERNEL_LEVELS[] = {
    {&kernels_scalar, 0},
#if defined(KERNELS_X86)
    {&kernels_avx2, 1},
    {&kernels_avxvnni, 2},
    {&kernels_avx512, 3},
#endif
#if defined(KERNELS_ARM_NEON)
    {&kernels_neon, 0},
#if defined(__aarch64__) && !defined(__clang__)
    {&kernels_dotprod, 1},
#endif
#endif
};
#define KERNEL_LEVEL_COUNT (int)(sizeof KERNEL_LEVELS / sizeof KERNEL_LEVELS[0])

static inline int kernels_available(int i) {
    if (KERNEL_LEVELS[i].cpu_level == 0) return 1;
#if defined(KERNELS_X86)
    return cpu_x86_has(KERNEL_LEVELS[i].cpu_level);
#elif defined(__aarch64__) && defined(__linux__) && defined(HWCAP_ASIMDDP)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return 0;
#endif
}

/* The names of the levels this CPU has, lowest first, ", " between. */
static inline void kernels_names(char *out, size_t size) {
    size_t used = 0;
    out[0] = 0;
    for (int i = 0; i < KERNEL_LEVEL_COUNT && used < size; i++)
        if (kernels_available(i)) used += (size_t)snprintf(out + used, size - used, "%s%s", used ? ", " : "", KERNEL_LEVELS[i].kernels->name);
}

/* The best level this CPU has, or the one `want` names (RUN_KERNELS): NULL
   with a message in err when that one is unknown or not available here. */
static inline const Kernels *kernels_select(const char *want, char *err, size_t errlen) {
    const Kernels *best = NULL;
    for (int i = 0; i < KERNEL_LEVEL_COUNT; i++)
        if (kernels_available(i)) {
            best = KERNEL_LEVELS[i].kernels;
            if (want && !strcmp(want, best->name)) return best;
        }
    if (!want || !*want) return best;
    char names[128];
    kernels_names(names, sizeof names);
    snprintf(err, errlen, "RUN_KERNELS=%s: not a kernel level this CPU has (it has: %s)", want, names);
    return NULL;
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
