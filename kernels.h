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
    TYPE_Q8_0 = 3, /* groups of 32: f16 scale + 32 int8, 8.5 bits per weight */
    TYPE_Q4_0 = 4, /* groups of 32: f16 scale + 16 bytes of 4-bit values, 4.5 bits */
    TYPE_U8 = 5,   /* raw bytes (tokenizer pieces, per-layer flags) */
    TYPE_U32 = 6,
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

static inline const char *type_name(int type) {
    static const char *names[TYPE_COUNT] = {"f32", "f16", "bf16", "q8_0", "q4_0", "u8", "u32"};
    return type >= 0 && type < TYPE_COUNT ? names[type] : "unknown";
}

static inline int type_is_quantized(int type) { return type == TYPE_Q8_0 || type == TYPE_Q4_0; }

/* Bytes of one row of n elements, or 0 when n does not fit the type's groups. */
static inline size_t type_row_bytes(int type, int64_t n) {
    switch (type) {
    case TYPE_F32: case TYPE_U32: return (size_t)n * 4;
    case TYPE_F16: case TYPE_BF16: return (size_t)n * 2;
    case TYPE_U8: return (size_t)n;
    case TYPE_Q8_0: return n % QK ? 0 : (size_t)(n / QK) * sizeof(BlockQ8_0);
    case TYPE_Q4_0: return n % QK ? 0 : (size_t)(n / QK) * sizeof(BlockQ4_0);
    }
    return 0;
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
static inline void quantize_row_q8_0(const float *x, BlockQ8_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
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
    }
}

static inline void dequantize_row(int type, const void *row, float *y, int64_t n) {
    switch (type) {
    case TYPE_F32: memcpy(y, row, (size_t)n * 4); break;
    case TYPE_F16: {
        int64_t i = 0;
#if defined(KERNELS_AVX2)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i))));
#endif
        for (; i < n; i++) y[i] = f16_to_f32(((const uint16_t *)row)[i]);
        break;
    }
    case TYPE_BF16: for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(((const uint16_t *)row)[i]); break;
    case TYPE_Q8_0:
        for (int64_t b = 0; b < n / QK; b++) {
            const BlockQ8_0 *blk = (const BlockQ8_0 *)row + b;
            float d = f16_to_f32(blk->d);
            for (int j = 0; j < QK; j++) y[b * QK + j] = blk->qs[j] * d;
        }
        break;
    case TYPE_Q4_0:
        for (int64_t b = 0; b < n / QK; b++) {
            const BlockQ4_0 *blk = (const BlockQ4_0 *)row + b;
            float d = f16_to_f32(blk->d);
            for (int j = 0; j < QK / 2; j++) {
                y[b * QK + j] = ((blk->qs[j] & 15) - 8) * d;
                y[b * QK + j + QK / 2] = ((blk->qs[j] >> 4) - 8) * d;
            }
        }
        break;
    }
}

/* Activations: f32 scale, symmetric int8. */
static inline void quantize_row_q8a_ref(const float *x, BlockQ8A *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
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
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        __m256i q[4];
        for (int i = 0; i < 4; i++) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        /* packing works within 128-bit halves; the permute puts the groups of four back in order */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)y[b].qs, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        y[b].d = d;
        y[b].sum = _mm_cvtsi128_si32(s4);
    }
#else
    quantize_row_q8a_ref(x, y, n);
#endif
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

static inline float dot_q8_0_ref(const BlockQ8_0 *w, const BlockQ8A *x, int n) {
    float s = 0;
    for (int b = 0; b < n / QK; b++) {
        int32_t acc = 0;
        for (int j = 0; j < QK; j++) acc += w[b].qs[j] * x[b].qs[j];
        s += (float)acc * f16_to_f32(w[b].d) * x[b].d;
    }
    return s;
}

static inline float dot_q4_0_ref(const BlockQ4_0 *w, const BlockQ8A *x, int n) {
    float s = 0;
    for (int b = 0; b < n / QK; b++) {
        int32_t acc = 0;
        for (int j = 0; j < QK / 2; j++) {
            acc += ((w[b].qs[j] & 15) - 8) * x[b].qs[j];
            acc += ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + QK / 2];
        }
        s += (float)acc * f16_to_f32(w[b].d) * x[b].d;
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

/* Block b of a q8_0 or q4_0 row as 32 signed bytes, with its scale. */
static inline __m256i weight_block_i8(const void *w, int type, int b, float *d) {
    if (type == TYPE_Q8_0) {
        const BlockQ8_0 *blk = (const BlockQ8_0 *)w + b;
        *d = f16_to_f32(blk->d);
        return _mm256_loadu_si256((const __m256i *)blk->qs);
    }
    const BlockQ4_0 *blk = (const BlockQ4_0 *)w + b;
    *d = f16_to_f32(blk->d);
    const __m128i low4 = _mm_set1_epi8(15);
    __m128i packed = _mm_loadu_si128((const __m128i *)blk->qs);
    __m128i lo = _mm_and_si128(packed, low4), hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low4);
    return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
}

/* One quantized weight row against n_x activation rows (stride blocks
   apart). Each result goes through exactly the operations it would alone,
   in the same order, so a batch gives the same bits as single tokens; the
   weight block is loaded and made unsigned once for all of them. maddubs and
   dpbusd want one unsigned operand, so the weight's sign moves onto the
   activation: |w| * sign(w)x = wx. */
static inline __attribute__((always_inline)) void dot_quant_avx2(const void *w, int type, const BlockQ8A *x,
                                                                  size_t stride, int n_x, int n, float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < n / QK; b++) {
        float dw;
        __m256i wq = weight_block_i8(w, type, b, &dw), uw = _mm256_sign_epi8(wq, wq);
        for (int k = 0; k < n_x; k++) {
            const BlockQ8A *xb = x + k * stride + b;
            __m256i sx = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)xb->qs), wq);
            __m256 p = _mm256_cvtepi32_ps(dot_u8s8(uw, sx));
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb->d), p, acc[k]);
        }
    }
    for (int k = 0; k < n_x; k++) out[k] = hsum256(acc[k]);
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
/* One quantized weight row against one activation row, NEON: the block's
   weights as two vectors of 16 signed bytes, multiplied with the dot-product
   instructions where the CPU has them, widening multiplies where not. */
static inline float dot_quant_neon(const void *w, int type, const BlockQ8A *x, int n) {
    float32x4_t acc = vdupq_n_f32(0);
    for (int b = 0; b < n / QK; b++) {
        int8x16_t w0, w1;
        float dw;
        if (type == TYPE_Q8_0) {
            const BlockQ8_0 *blk = (const BlockQ8_0 *)w + b;
            w0 = vld1q_s8(blk->qs), w1 = vld1q_s8(blk->qs + 16), dw = f16_to_f32(blk->d);
        } else {
            const BlockQ4_0 *blk = (const BlockQ4_0 *)w + b;
            uint8x16_t packed = vld1q_u8(blk->qs);
            w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(15))), vdupq_n_s8(8));
            w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(packed, 4)), vdupq_n_s8(8));
            dw = f16_to_f32(blk->d);
        }
        int8x16_t x0 = vld1q_s8(x[b].qs), x1 = vld1q_s8(x[b].qs + 16);
#if defined(__ARM_FEATURE_DOTPROD)
        int32x4_t p = vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
        int16x8_t l0 = vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), h0 = mull_high_s8(w0, x0);
        int16x8_t l1 = vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), h1 = mull_high_s8(w1, x1);
        int32x4_t p = vaddq_s32(vaddq_s32(vpaddlq_s16(l0), vpaddlq_s16(h0)), vaddq_s32(vpaddlq_s16(l1), vpaddlq_s16(h1)));
#endif
        acc = vfmaq_f32(acc, vcvtq_f32_s32(p), vdupq_n_f32(dw * x[b].d));
    }
    return hsum_f32x4(acc);
}
#endif

/* A q8_0 or q4_0 weight row against one activation row. */
static inline float dot_quant(const void *w, int type, const BlockQ8A *x, int n) {
#if defined(KERNELS_AVX2)
    float r;
    if (type == TYPE_Q8_0) dot_quant_avx2(w, TYPE_Q8_0, x, 0, 1, n, &r); /* constant types: two specialized copies */
    else dot_quant_avx2(w, TYPE_Q4_0, x, 0, 1, n, &r);
    return r;
#elif defined(KERNELS_NEON)
    return dot_quant_neon(w, type, x, n);
#else
    return type == TYPE_Q8_0 ? dot_q8_0_ref(w, x, n) : dot_q4_0_ref(w, x, n);
#endif
}

/* The same row against four activation rows, `stride` blocks apart: the same
   results as four dot_quant calls, bit for bit. */
static inline void dot_quant_x4(const void *w, int type, const BlockQ8A *x, size_t stride, int n, float out[4]) {
#if defined(KERNELS_AVX2)
    if (type == TYPE_Q8_0) dot_quant_avx2(w, TYPE_Q8_0, x, stride, 4, n, out);
    else dot_quant_avx2(w, TYPE_Q4_0, x, stride, 4, n, out);
#else
    for (int k = 0; k < 4; k++) out[k] = dot_quant(w, type, x + k * stride, n);
#endif
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
