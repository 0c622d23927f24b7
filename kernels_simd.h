/* kernels_simd.h - the kernels of one instruction-set level.
 *
 * kernels.h includes this file once per level the compiler can target (the
 * scalar reference always; AVX2, AVX2 with AVX-VNNI and AVX-512 on x86-64;
 * NEON and NEON with the dot-product instructions on AArch64), each time
 * with the level's macros set (KERNELS_AVX2, KERNELS_AVXVNNI, KERNELS_AVX512,
 * KERNELS_NEON, KERNELS_DOTPROD) and the compiler told to generate that
 * level's instructions for every function in it. The names below get the
 * level's suffix (gemm_float becomes gemm_float_avx2), so the copies live
 * side by side in one program, and each copy ends in a table of its entry
 * points (Kernels, kernels.h) from which the engine picks one at start-up.
 * Code here is written once: `#if defined(KERNELS_AVX2)` and the like pick
 * a level's instructions, `#else` the portable loop.
 */

#define attn_scores KERNELS_NAME(attn_scores)
#define attn_scores_typed KERNELS_NAME(attn_scores_typed)
#define attn_weighted_sum KERNELS_NAME(attn_weighted_sum)
#define attn_weighted_sum_typed KERNELS_NAME(attn_weighted_sum_typed)
#define axpy KERNELS_NAME(axpy)
#define dot_block32_avx2 KERNELS_NAME(dot_block32_avx2)
#define dot_block32_neon KERNELS_NAME(dot_block32_neon)
#define dot_quant_rows KERNELS_NAME(dot_quant_rows)
#define dot_s8x16 KERNELS_NAME(dot_s8x16)
#define dot_superblock_avx2 KERNELS_NAME(dot_superblock_avx2)
#define dot_superblock_neon KERNELS_NAME(dot_superblock_neon)
#define dot_u8s8 KERNELS_NAME(dot_u8s8)
#define dpbusd_add KERNELS_NAME(dpbusd_add)
#define dpwssd_add KERNELS_NAME(dpwssd_add)
#define exp8_nonpositive KERNELS_NAME(exp8_nonpositive)
#define f16_to_f32 KERNELS_NAME(f16_to_f32)
#define f32_to_f16 KERNELS_NAME(f32_to_f16)
#define fifth_bits KERNELS_NAME(fifth_bits)
#define float_dot_tail KERNELS_NAME(float_dot_tail)
#define float_weight KERNELS_NAME(float_weight)
#define gemm_float KERNELS_NAME(gemm_float)
#define gemm_float_block KERNELS_NAME(gemm_float_block)
#define gemm_float_rows KERNELS_NAME(gemm_float_rows)
#define gemm_float_typed KERNELS_NAME(gemm_float_typed)
#define gemm_x8 KERNELS_NAME(gemm_x8)
#define gemm_x8_group KERNELS_NAME(gemm_x8_group)
#define gemm_x16_tile_avx512 KERNELS_NAME(gemm_x16_tile_avx512)
#define gemm_x8_tile_avx2 KERNELS_NAME(gemm_x8_tile_avx2)
#define gemm_x8_tile_neon KERNELS_NAME(gemm_x8_tile_neon)
#define hsum256 KERNELS_NAME(hsum256)
#define hsum_f32x4 KERNELS_NAME(hsum_f32x4)
#define hsum_s32x4 KERNELS_NAME(hsum_s32x4)
#define iq4_levels KERNELS_NAME(iq4_levels)
#define kv_load8 KERNELS_NAME(kv_load8)
#define kv_value KERNELS_NAME(kv_value)
#define load_f16x4 KERNELS_NAME(load_f16x4)
#define mlal_high_s8 KERNELS_NAME(mlal_high_s8)
#define mull_high_s8 KERNELS_NAME(mull_high_s8)
#define nibbles_u8 KERNELS_NAME(nibbles_u8)
#define padd_s32 KERNELS_NAME(padd_s32)
#define q8_x8_weights KERNELS_NAME(q8_x8_weights)
#define quantize_activations KERNELS_NAME(quantize_activations)
#define quantize_row_q8a KERNELS_NAME(quantize_row_q8a)
#define quantize_row_q8k KERNELS_NAME(quantize_row_q8k)
#define row_from_float KERNELS_NAME(row_from_float)
#define row_to_float KERNELS_NAME(row_to_float)
#define score_finish KERNELS_NAME(score_finish)
#define scores_block KERNELS_NAME(scores_block)
#define scores_heads KERNELS_NAME(scores_heads)
#define shr_u8 KERNELS_NAME(shr_u8)
#define softmax KERNELS_NAME(softmax)
#define softmax_tile KERNELS_NAME(softmax_tile)
#define sum8_tree KERNELS_NAME(sum8_tree)
#define superblock_scales_avx2 KERNELS_NAME(superblock_scales_avx2)
#define superblock_scales_neon KERNELS_NAME(superblock_scales_neon)
#define superblock_vec_avx2 KERNELS_NAME(superblock_vec_avx2)
#define superblock_vec_neon KERNELS_NAME(superblock_vec_neon)
#define table16_s8 KERNELS_NAME(table16_s8)
#define twice_u8 KERNELS_NAME(twice_u8)
#define weight4 KERNELS_NAME(weight4)
#define weight8 KERNELS_NAME(weight8)
#define weight_block_i8 KERNELS_NAME(weight_block_i8)
#define weight_block_neon KERNELS_NAME(weight_block_neon)
#define widen_s8 KERNELS_NAME(widen_s8)
#define wsum_block KERNELS_NAME(wsum_block)
#define wsum_heads KERNELS_NAME(wsum_heads)

/* f16 conversions: F16C's instructions where the level has them (the same
   bits as the portable versions: exact one way, nearest-even the other). */
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

/* A row of floats to a cache or weight type (the KV cache's writes) and
   back (the latent cache's reads, embeddings): quantize_row's and
   dequantize_row's results, f16 eight at a time where the level can. */
static void row_from_float(int type, const float *x, void *out, int64_t n) {
    int64_t i = 0;
    if (type != TYPE_F16) {
        quantize_row(type, x, out, n);
        return;
    }
#if defined(KERNELS_AVX2)
    for (; i + 8 <= n; i += 8) /* round to nearest even, as f32_to_f16 */
        _mm_storeu_si128((__m128i *)((uint16_t *)out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) ((uint16_t *)out)[i] = f32_to_f16(x[i]);
}

static void row_to_float(int type, const void *row, float *y, int64_t n) {
    int64_t i = 0;
    if (type != TYPE_F16) {
        dequantize_row(type, row, y, n);
        return;
    }
#if defined(KERNELS_AVX2)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i))));
#endif
    for (; i < n; i++) y[i] = f16_to_f32(((const uint16_t *)row)[i]);
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

/* Super-block activations: quantize_row_q8k_ref's bytes, scales and sums.
   The scale comes from the first value of largest magnitude (its sign
   matters: it becomes -127), found by comparing each vector with the
   block's largest |x|. */
static inline void quantize_row_q8k(const float *x, BlockQ8K *y, int64_t n) {
#if defined(KERNELS_AVX2)
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), big = _mm256_set1_ps(FLT_MAX);
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int i = 0; i < QK_K; i += 8) {
            __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask);
            m = _mm256_max_ps(m, a);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, big, _CMP_NLE_UQ)); /* inf or NaN */
        }
        memset(&y[b], 0, sizeof y[b]);
        if (_mm256_movemask_ps(bad)) { /* not finite (block_absmax) */
            y[b].d = NAN;
            continue;
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        if (amax == 0) continue;
        int first = 0;
        for (int i = 0; i < QK_K; i += 8) {
            int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask), _mm256_set1_ps(amax), _CMP_EQ_OQ));
            if (hit) {
                first = i + __builtin_ctz((unsigned)hit);
                break;
            }
        }
        float iscale = -127.0f / x[first];
        if (isinf(iscale)) continue; /* |max| below 127 / FLT_MAX: zeros, as a zero block */
        for (int g = 0; g < QK_K; g += 16) { /* rounded to nearest even (lrintf), at most 127, two vectors a group of 16 */
            __m256i lo = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_set1_ps(iscale), _mm256_loadu_ps(x + g))), _mm256_set1_epi32(127));
            __m256i hi = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_set1_ps(iscale), _mm256_loadu_ps(x + g + 8))), _mm256_set1_epi32(127));
            __m256i s = _mm256_add_epi32(lo, hi);
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            y[b].bsums[g / 16] = (int16_t)_mm_cvtsi128_si32(s4);
            __m128i p = _mm_packs_epi16(_mm_packs_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1)),
                                        _mm_packs_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1)));
            _mm_storeu_si128((__m128i *)(y[b].qs + g), p);
        }
        y[b].d = 1 / iscale;
    }
#else
    quantize_row_q8k_ref(x, y, n);
#endif
}

/* n activations in the form a weight type's dot products take. */
static inline void quantize_activations(int type, const float *x, void *out, int64_t n) {
    if (TYPE_INFO[type].act == ACT_Q8K) quantize_row_q8k(x, out, n);
    else quantize_row_q8a(x, out, n);
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
#if defined(KERNELS_AVX512)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(KERNELS_AVXVNNI)
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
static inline __attribute__((always_inline)) void dot_block32_avx2(const void *w, int type, const BlockQ8A *x,
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
#if defined(KERNELS_AVX512)
    return _mm256_dpwssd_epi32(acc, a, b);
#elif defined(KERNELS_AVXVNNI)
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

/* table[idx[i]] for sixteen indices below 16 (ARMv7 looks up each half
   of the indices in the table's two halves). */
static inline int8x16_t table16_s8(int8x16_t table, uint8x16_t idx) {
#if defined(__aarch64__)
    return vqtbl1q_s8(table, idx);
#else
    int8x8x2_t t = {{vget_low_s8(table), vget_high_s8(table)}};
    return vcombine_s8(vtbl2_s8(t, vreinterpret_s8_u8(vget_low_u8(idx))), vtbl2_s8(t, vreinterpret_s8_u8(vget_high_u8(idx))));
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
#if defined(KERNELS_AVX512)
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
#if defined(KERNELS_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    return vaddq_s32(acc, vaddq_s32(vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b))), vpaddlq_s16(mull_high_s8(a, b))));
#endif
}

/* Sixteen bytes as their low nibbles (nib[0]) and high nibbles (nib[1]):
   elements 0-15 and 16-31 of the 4- and 5-bit blocks' qs, of iq4's per 32. */
static inline void nibbles_u8(const uint8_t *qs, uint8x16_t nib[2]) {
    uint8x16_t packed = vld1q_u8(qs);
    nib[0] = vandq_u8(packed, vdupq_n_u8(15)), nib[1] = vshrq_n_u8(packed, 4);
}

/* iq4_nl's and iq4_xs's levels of sixteen indices. */
static inline int8x16_t iq4_levels(uint8x16_t idx) { return table16_s8(vld1q_s8(IQ4_LEVELS), idx); }

/* Block b of a row of a 32-element type as two vectors of 16 signed bytes
   (block32_unpack's q), with its scale and offset. q5's fifth bits: byte j
   of qh spread over lanes 8j..8j+7, each lane testing its own bit. */
static inline __attribute__((always_inline)) void weight_block_neon(const void *w, int type, int b, float *d, float *m,
                                                                    int8x16_t q[2]) {
    *m = 0;
    if (type == TYPE_Q8_0) {
        const BlockQ8_0 *blk = (const BlockQ8_0 *)w + b;
        *d = f16_to_f32(blk->d), q[0] = vld1q_s8(blk->qs), q[1] = vld1q_s8(blk->qs + 16);
        return;
    }
    uint8x16_t nib[2];
    const uint8_t *qh = NULL;
    switch (type) {
    case TYPE_Q4_0: nibbles_u8(((const BlockQ4_0 *)w + b)->qs, nib), *d = f16_to_f32(((const BlockQ4_0 *)w + b)->d); break;
    case TYPE_Q4_1: {
        const BlockQ4_1 *blk = (const BlockQ4_1 *)w + b;
        nibbles_u8(blk->qs, nib), *d = f16_to_f32(blk->d), *m = f16_to_f32(blk->m);
        break;
    }
    case TYPE_Q5_0: {
        const BlockQ5_0 *blk = (const BlockQ5_0 *)w + b;
        nibbles_u8(blk->qs, nib), *d = f16_to_f32(blk->d), qh = blk->qh;
        break;
    }
    case TYPE_Q5_1: {
        const BlockQ5_1 *blk = (const BlockQ5_1 *)w + b;
        nibbles_u8(blk->qs, nib), *d = f16_to_f32(blk->d), *m = f16_to_f32(blk->m), qh = blk->qh;
        break;
    }
    default: nibbles_u8(((const BlockIQ4_NL *)w + b)->qs, nib), *d = f16_to_f32(((const BlockIQ4_NL *)w + b)->d); break;
    }
    if (type == TYPE_IQ4_NL) {
        q[0] = iq4_levels(nib[0]), q[1] = iq4_levels(nib[1]);
        return;
    }
    if (qh) {
        uint32_t bits;
        memcpy(&bits, qh, 4);
        uint8x8_t h = vcreate_u8(bits);
        const uint8x16_t lane_bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ull));
        uint8x16_t lo = vcombine_u8(vdup_lane_u8(h, 0), vdup_lane_u8(h, 1)), hi = vcombine_u8(vdup_lane_u8(h, 2), vdup_lane_u8(h, 3));
        nib[0] = vorrq_u8(nib[0], vandq_u8(vtstq_u8(lo, lane_bit), vdupq_n_u8(0x10)));
        nib[1] = vorrq_u8(nib[1], vandq_u8(vtstq_u8(hi, lane_bit), vdupq_n_u8(0x10)));
    }
    /* q4_0's values are the nibbles less 8, q5_0's less 16; q4_1's and q5_1's are the nibbles */
    int8x16_t bias = vdupq_n_s8(type == TYPE_Q4_0 ? 8 : type == TYPE_Q5_0 ? 16 : 0);
    q[0] = vsubq_s8(vreinterpretq_s8_u8(nib[0]), bias), q[1] = vsubq_s8(vreinterpretq_s8_u8(nib[1]), bias);
}

/* One row of a 32-element type against n_x activation rows (stride blocks
   apart), NEON: each block unpacked once for all of them (weight_block_neon),
   each token's float operations those it gets alone. */
static inline __attribute__((always_inline)) void dot_block32_neon(const void *w, int type, const BlockQ8A *x, size_t stride,
                                                                  int n_x, int n, float *out) {
    float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
    float offsets[4] = {0, 0, 0, 0};
    for (int b = 0; b < n / QK; b++) {
        int8x16_t wq[2];
        float dw, mw;
        weight_block_neon(w, type, b, &dw, &mw, wq);
        for (int k = 0; k < n_x; k++) {
            const BlockQ8A *xb = x + k * stride + b;
            int32x4_t p = dot_s8x16(dot_s8x16(vdupq_n_s32(0), wq[0], vld1q_s8(xb->qs)), wq[1], vld1q_s8(xb->qs + 16));
            acc[k] = vfmaq_f32(acc[k], vcvtq_f32_s32(p), vdupq_n_f32(dw * xb->d));
            if (type_has_offset(type)) offsets[k] += mw * xb->d * (float)xb->sum;
        }
    }
    for (int k = 0; k < n_x; k++) out[k] = hsum_f32x4(acc[k]) + offsets[k];
}

/* Sixteen bytes as int16 lanes: bytes 0-7 in out[0], 8-15 in out[1]. */
static inline void widen_s8(int8x16_t b, int16x8_t out[2]) { out[0] = vmovl_s8(vget_low_s8(b)), out[1] = vmovl_s8(vget_high_s8(b)); }

/* Eight bytes, each twice: one per 32 elements made one per 16. */
static inline uint8x16_t twice_u8(uint8x8_t b) {
    uint8x8x2_t z = vzip_u8(b, b);
    return vcombine_u8(z.val[0], z.val[1]);
}

/* A super-block's scales in registers: superblock_scales' sixteen scales
   and offsets as int16 lanes, groups 0-7 in [0] and 8-15 in [1] (offsets
   0 where the type has none), d, dmin. */
static inline __attribute__((always_inline)) void superblock_scales_neon(const uint8_t *blk, int type, int16x8_t sc[2], int16x8_t mn[2],
                                                                          float *d, float *dmin) {
    const uint8x16_t m15 = vdupq_n_u8(15);
    mn[0] = mn[1] = vdupq_n_s16(0), *dmin = 0;
    switch (type) {
    case TYPE_Q2_K: { /* a scale in the low nibble, an offset in the high, per 16 */
        const BlockQ2_K *k = (const BlockQ2_K *)blk;
        uint8x16_t s = vld1q_u8(k->scales);
        widen_s8(vreinterpretq_s8_u8(vandq_u8(s, m15)), sc), widen_s8(vreinterpretq_s8_u8(vshrq_n_u8(s, 4)), mn);
        *d = f16_to_f32(k->d), *dmin = f16_to_f32(k->dmin);
        return;
    }
    case TYPE_Q3_K: { /* low nibbles of bytes 0-7 (scales 0-7), their high nibbles (8-15), two bits from bytes 8-11 */
        const BlockQ3_K *k = (const BlockQ3_K *)blk;
        static const int32_t pair_shifts[4] = {0, -2, -4, -6};
        uint32_t top;
        memcpy(&top, k->scales + 8, 4);
        uint8x8_t s = vld1_u8(k->scales);
        uint8x16_t low = vcombine_u8(vand_u8(s, vget_low_u8(m15)), vshr_n_u8(s, 4));
        /* scale g's high bits: bits 2(g / 4) of byte 8 + g % 4; the 32-bit shifts keep each byte's bits in the byte after the mask */
        uint8x16_t high = vandq_u8(vreinterpretq_u8_u32(vshlq_u32(vdupq_n_u32(top), vld1q_s32(pair_shifts))), vdupq_n_u8(3));
        widen_s8(vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, vshlq_n_u8(high, 4))), vdupq_n_s8(32)), sc);
        *d = f16_to_f32(k->d);
        return;
    }
    case TYPE_Q4_K:
    case TYPE_Q5_K: { /* k4_scale_offset for all eight at once */
        const BlockQ4_K *k = (const BlockQ4_K *)blk; /* q5_k begins as q4_k does */
        static const int8_t nibble_shifts[8] = {0, 0, 0, 0, -4, -4, -4, -4};
        uint32_t u2;
        memcpy(&u2, k->scales + 8, 4);
        uint8x8_t head = vld1_u8(k->scales), tail = vreinterpret_u8_u32(vdup_n_u32(u2)); /* bytes 0-7; 8-11 twice */
        uint8x8_t first = vand_u8(head, vdup_n_u8(63));                                  /* scales 0-3, offsets 0-3 */
        uint8x8_t second = vorr_u8(vand_u8(vshl_u8(tail, vld1_s8(nibble_shifts)), vget_low_u8(m15)),
                                   vshl_n_u8(vshr_n_u8(head, 6), 4));                    /* scales 4-7, offsets 4-7 */
        uint32x2x2_t so = vzip_u32(vreinterpret_u32_u8(first), vreinterpret_u32_u8(second)); /* the eight scales, the eight offsets */
        widen_s8(vreinterpretq_s8_u8(twice_u8(vreinterpret_u8_u32(so.val[0]))), sc);
        widen_s8(vreinterpretq_s8_u8(twice_u8(vreinterpret_u8_u32(so.val[1]))), mn);
        *d = f16_to_f32(k->d), *dmin = f16_to_f32(k->dmin);
        return;
    }
    case TYPE_Q6_K: {
        const BlockQ6_K *k = (const BlockQ6_K *)blk;
        widen_s8(vld1q_s8(k->scales), sc);
        *d = f16_to_f32(k->d);
        return;
    }
    default: { /* TYPE_IQ4_XS: nibbles of scales_l and bit pairs of scales_h, eight scales biased by 32 */
        const BlockIQ4_XS *k = (const BlockIQ4_XS *)blk;
        static const int16_t pair_shifts[8] = {0, -2, -4, -6, -8, -10, -12, -14};
        uint32_t l4;
        memcpy(&l4, k->scales_l, 4);
        uint8x8_t l = vcreate_u8(l4);
        uint8x8x2_t low = vzip_u8(vand_u8(l, vget_low_u8(m15)), vshr_n_u8(l, 4)); /* val[0]: scale j's low bits */
        uint8x8_t high = vmovn_u16(vandq_u16(vshlq_u16(vdupq_n_u16(k->scales_h), vld1q_s16(pair_shifts)), vdupq_n_u16(3)));
        widen_s8(vsubq_s8(vreinterpretq_s8_u8(twice_u8(vorr_u8(low.val[0], vshl_n_u8(high, 4)))), vdupq_n_s8(32)), sc);
        *d = f16_to_f32(k->d);
        return;
    }
    }
}

/* q >> shift, shift a variable (the immediate forms want a constant that
   only unrolling makes). A negative shift is a left shift. */
static inline uint8x16_t shr_u8(uint8x16_t q, int shift) { return vshlq_u8(q, vdupq_n_s8((int8_t)-shift)); }

/* Elements 32v..32v+31 of a super-block as two vectors of 16 signed bytes:
   superblock_unpack's q, the same bits pulled out in registers. */
static inline __attribute__((always_inline)) void superblock_vec_neon(const uint8_t *blk, int type, int v, int8x16_t q[2]) {
    const uint8x16_t m3 = vdupq_n_u8(3), m15 = vdupq_n_u8(15);
    switch (type) {
    case TYPE_Q2_K: {
        const uint8_t *qs = ((const BlockQ2_K *)blk)->qs + v / 4 * 32;
        for (int i = 0; i < 2; i++) q[i] = vreinterpretq_s8_u8(vandq_u8(shr_u8(vld1q_u8(qs + 16 * i), 2 * (v % 4)), m3));
        return;
    }
    case TYPE_Q3_K: { /* the low two bits, and 4 where the hmask bit is set, less 4 */
        const BlockQ3_K *k = (const BlockQ3_K *)blk;
        for (int i = 0; i < 2; i++) {
            uint8x16_t low = vandq_u8(shr_u8(vld1q_u8(k->qs + v / 4 * 32 + 16 * i), 2 * (v % 4)), m3);
            uint8x16_t four = vandq_u8(shr_u8(vld1q_u8(k->hmask + 16 * i), v - 2), vdupq_n_u8(4));
            q[i] = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, four)), vdupq_n_s8(4));
        }
        return;
    }
    case TYPE_Q4_K:
    case TYPE_Q5_K: {
        const uint8_t *qs = (type == TYPE_Q4_K ? ((const BlockQ4_K *)blk)->qs : ((const BlockQ5_K *)blk)->qs) + v / 2 * 32;
        for (int i = 0; i < 2; i++) {
            uint8x16_t packed = vld1q_u8(qs + 16 * i), nib = v % 2 ? vshrq_n_u8(packed, 4) : vandq_u8(packed, m15);
            if (type == TYPE_Q5_K) /* bit v of qh[l] to bit 4 */
                nib = vorrq_u8(nib, vandq_u8(shr_u8(vld1q_u8(((const BlockQ5_K *)blk)->qh + 16 * i), v - 4), vdupq_n_u8(0x10)));
            q[i] = vreinterpretq_s8_u8(nib);
        }
        return;
    }
    case TYPE_Q6_K: { /* low nibbles of ql[64h..+31], of ql[64h+32..], then the high nibbles; bit pair `part` of qh[32h..], less 32 */
        const BlockQ6_K *k = (const BlockQ6_K *)blk;
        int h = v / 4, part = v % 4;
        for (int i = 0; i < 2; i++) {
            uint8x16_t packed = vld1q_u8(k->ql + 64 * h + 32 * (part % 2) + 16 * i);
            uint8x16_t low = part < 2 ? vandq_u8(packed, m15) : vshrq_n_u8(packed, 4);
            uint8x16_t high = vandq_u8(shr_u8(vld1q_u8(k->qh + 32 * h + 16 * i), 2 * part - 4), vdupq_n_u8(0x30));
            q[i] = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, high)), vdupq_n_s8(32));
        }
        return;
    }
    default: { /* TYPE_IQ4_XS: per 32, 16 bytes of indices as iq4_nl's */
        uint8x16_t nib[2];
        nibbles_u8(((const BlockIQ4_XS *)blk)->qs + 16 * v, nib);
        q[0] = iq4_levels(nib[0]), q[1] = iq4_levels(nib[1]);
        return;
    }
    }
}

/* A super-block row against n_x (at most 4) BlockQ8K rows, stride blocks
   apart (the type is a constant, so each type compiles to its own fused
   kernel). Per 32 elements: unpacked in registers once for all tokens
   (superblock_vec_neon), two dots of 16 and pairwise sums that leave, every
   64 elements, four groups' sums in a vector, multiplied by their four
   scales into an int32 accumulator; the offsets times the sums of 16 (bsums)
   likewise. Exact integers, the reference's, in another order; then the
   reference's float operations (superblock_combine), so its bits. */
static inline __attribute__((always_inline)) void dot_superblock_neon(const void *w, int type, const BlockQ8K *x, size_t stride,
                                                                       int n_x, int n, float *out) {
    float s[4] = {0, 0, 0, 0};
    for (int b = 0; b < n / QK_K; b++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)b * TYPE_INFO[type].block_bytes;
        int16x8_t sc[2], mn[2];
        float d, dmin;
        superblock_scales_neon(blk, type, sc, mn, &d, &dmin);
        int32x4_t acc[4], half[4]; /* per token: the sum so far; after even v, groups 2v and 2v + 1 in two lanes each */
        for (int k = 0; k < n_x; k++) acc[k] = vdupq_n_s32(0);
#pragma GCC unroll 8 /* v must be a constant: it picks shifts, loads and scales (GCC leaves the loop rolled otherwise) */
        for (int v = 0; v < 8; v++) {
            int8x16_t q[2];
            superblock_vec_neon(blk, type, v, q);
            /* after odd v: groups 4j..4j + 3 (j = v / 2) summed, and their scales as int32 */
            int32x4_t scales = vmovl_s16(v % 4 == 1 ? vget_low_s16(sc[v / 4]) : vget_high_s16(sc[v / 4]));
            for (int k = 0; k < n_x; k++) {
                const int8_t *xq = x[k * stride + b].qs + 32 * v;
                int32x4_t pair = padd_s32(dot_s8x16(vdupq_n_s32(0), q[0], vld1q_s8(xq)), dot_s8x16(vdupq_n_s32(0), q[1], vld1q_s8(xq + 16)));
                if (v % 2 == 0) half[k] = pair;
                else acc[k] = vmlaq_s32(acc[k], padd_s32(half[k], pair), scales);
            }
        }
        for (int k = 0; k < n_x; k++) {
            const BlockQ8K *xb = x + k * stride + b;
            int32_t imin = 0;
            if (type_has_offset(type)) {
                int16x8_t bs[2] = {vld1q_s16(xb->bsums), vld1q_s16(xb->bsums + 8)};
                int32x4_t m = vmull_s16(vget_low_s16(mn[0]), vget_low_s16(bs[0]));
                m = vmlal_s16(m, vget_high_s16(mn[0]), vget_high_s16(bs[0]));
                m = vmlal_s16(m, vget_low_s16(mn[1]), vget_low_s16(bs[1]));
                imin = hsum_s32x4(vmlal_s16(m, vget_high_s16(mn[1]), vget_high_s16(bs[1])));
            }
            s[k] = superblock_combine(s[k], d, dmin, xb, hsum_s32x4(acc[k]), imin);
        }
    }
    for (int k = 0; k < n_x; k++) out[k] = s[k];
}
#endif

/* A quantized row against n_x (1 or 4) activation rows, `stride` blocks
   apart: BlockQ8A rows for the 32-element types, BlockQ8K for the
   super-block types (TYPE_INFO's act). On AVX2 and NEON each type gets its
   own specialized copy (the type is a constant in each case). */
static inline void dot_quant_rows(const void *w, int type, const void *x, size_t stride, int n_x, int n, float *out) {
#if defined(KERNELS_AVX2) || defined(KERNELS_NEON)
#if defined(KERNELS_AVX2)
#define DOT_BLOCK32 dot_block32_avx2
#define DOT_SUPERBLOCK dot_superblock_avx2
#else
#define DOT_BLOCK32 dot_block32_neon
#define DOT_SUPERBLOCK dot_superblock_neon
#endif
#define DOT_CASE(T, kernel, X)                                                           \
    case T:                                                                              \
        if (n_x == 4) kernel(w, T, (const X *)x, stride, 4, n, out);                     \
        else kernel(w, T, (const X *)x, stride, 1, n, out);                              \
        return;
    switch (type) {
    DOT_CASE(TYPE_Q8_0, DOT_BLOCK32, BlockQ8A)
    DOT_CASE(TYPE_Q4_0, DOT_BLOCK32, BlockQ8A)
    DOT_CASE(TYPE_Q4_1, DOT_BLOCK32, BlockQ8A)
    DOT_CASE(TYPE_Q5_0, DOT_BLOCK32, BlockQ8A)
    DOT_CASE(TYPE_Q5_1, DOT_BLOCK32, BlockQ8A)
    DOT_CASE(TYPE_IQ4_NL, DOT_BLOCK32, BlockQ8A)
    DOT_CASE(TYPE_Q2_K, DOT_SUPERBLOCK, BlockQ8K)
    DOT_CASE(TYPE_Q3_K, DOT_SUPERBLOCK, BlockQ8K)
    DOT_CASE(TYPE_Q4_K, DOT_SUPERBLOCK, BlockQ8K)
    DOT_CASE(TYPE_Q5_K, DOT_SUPERBLOCK, BlockQ8K)
    DOT_CASE(TYPE_Q6_K, DOT_SUPERBLOCK, BlockQ8K)
    DOT_CASE(TYPE_IQ4_XS, DOT_SUPERBLOCK, BlockQ8K)
    }
#undef DOT_CASE
#undef DOT_BLOCK32
#undef DOT_SUPERBLOCK
#else
    for (int k = 0; k < n_x; k++)
        out[k] = TYPE_INFO[type].act == ACT_Q8K ? dot_superblock_ref(w, type, (const BlockQ8K *)x + k * stride, n)
                                                : dot_block32_ref(w, type, (const BlockQ8A *)x + k * stride, n);
#endif
}

#if defined(KERNELS_AVX2)
/* acc + the sums of four products of unsigned u by signed s bytes, per int32 lane. */
static inline __m256i dpbusd_add(__m256i acc, __m256i u, __m256i s) {
#if defined(KERNELS_AVX512)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(KERNELS_AVXVNNI)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

static inline __attribute__((always_inline)) void gemm_x8_tile_avx2(const void *w, int type, const BlockQ8A *x, size_t stride,
                                                                     int n_x, int blocks, float *out, size_t out_stride) {
    __m256 acc[8];
    for (int k = 0; k < n_x; k++) acc[k] = _mm256_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        __m256i dot[8];
        for (int k = 0; k < n_x; k++) dot[k] = _mm256_setzero_si256();
        const uint16_t *d;
        if (type == TYPE_Q8_0) {
            const BlockQ8_0x8 *blk = (const BlockQ8_0x8 *)w + b;
            d = blk->d;
#if defined(KERNELS_AVX512) || defined(KERNELS_AVXVNNI)
            /* the stored weights (value + 128) by x, 128 x.sum taken off first */
            for (int k = 0; k < n_x; k++) dot[k] = _mm256_set1_epi32(-128 * x[k * stride + b].sum);
            for (int st = 0; st < 8; st++) {
                __m256i uw = _mm256_loadu_si256((const __m256i *)(blk->qs + st * 32));
                for (int k = 0; k < n_x; k++) {
                    int32_t x4;
                    memcpy(&x4, x[k * stride + b].qs + 4 * st, 4);
                    dot[k] = dpbusd_add(dot[k], uw, _mm256_set1_epi32(x4));
                }
            }
#else
            /* pmaddubsw saturates pairs of products at 32767, which 255 * 127 * 2 passes:
               |w| by x with w's sign instead (at most 127 * 128 * 2) */
            for (int st = 0; st < 8; st++) {
                __m256i wq = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk->qs + st * 32)), _mm256_set1_epi8(-128));
                __m256i uw = _mm256_abs_epi8(wq);
                for (int k = 0; k < n_x; k++) {
                    int32_t x4;
                    memcpy(&x4, x[k * stride + b].qs + 4 * st, 4);
                    dot[k] = dpbusd_add(dot[k], uw, _mm256_sign_epi8(_mm256_set1_epi32(x4), wq));
                }
            }
#endif
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
    for (int k = 0; k < n_x; k++) _mm256_storeu_ps(out + k * out_stride, acc[k]);
}
#endif

#if defined(KERNELS_AVX512)
/* Sixteen rows, two groups of eight (group_bytes apart), in 512-bit
   registers: lane 8g + r holds group g's row r and goes through the
   eight-row kernel's operations, so every output keeps its bits. On the
   development machine (Zen 4) a 512-bit vpdpbusd does twice the
   multiply-adds of a 256-bit one in the same time, given enough
   independent sums to cover its latency (measured: 24 chains run at the
   peak, 8 at half of it): each token's integer sums go in two chains, the
   even and the odd steps, 16 for eight tokens (exact integers, so the
   split changes no bit). */
static inline __attribute__((always_inline)) void gemm_x16_tile_avx512(const void *w, int type, size_t group_bytes,
                                                                        const BlockQ8A *x, size_t stride, int n_x, int blocks,
                                                                        float *out, size_t out_stride) {
    __m512 acc[8];
    for (int k = 0; k < n_x; k++) acc[k] = _mm512_setzero_ps();
    const uint8_t *g0 = w, *g1 = (const uint8_t *)w + group_bytes;
#define BOTH_GROUPS(a, b) _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(a))), _mm256_loadu_si256((const __m256i *)(b)), 1)
    for (int b = 0; b < blocks; b++) {
        __m512i dot[8][2];
        const uint16_t *d0, *d1;
        if (type == TYPE_Q8_0) {
            const BlockQ8_0x8 *lo = (const BlockQ8_0x8 *)g0 + b, *hi = (const BlockQ8_0x8 *)g1 + b;
            d0 = lo->d, d1 = hi->d;
            for (int k = 0; k < n_x; k++) /* the stored +128 */
                dot[k][0] = _mm512_set1_epi32(-128 * x[k * stride + b].sum), dot[k][1] = _mm512_setzero_si512();
#pragma GCC unroll 8 /* st % 2 must be a constant: it picks the register */
            for (int st = 0; st < 8; st++) {
                __m512i uw = BOTH_GROUPS(lo->qs + st * 32, hi->qs + st * 32);
                for (int k = 0; k < n_x; k++) {
                    int32_t x4;
                    memcpy(&x4, x[k * stride + b].qs + 4 * st, 4);
                    dot[k][st % 2] = _mm512_dpbusd_epi32(dot[k][st % 2], uw, _mm512_set1_epi32(x4));
                }
            }
        } else {
            const BlockQ4_0x8 *lo = (const BlockQ4_0x8 *)g0 + b, *hi = (const BlockQ4_0x8 *)g1 + b;
            d0 = lo->d, d1 = hi->d;
            const __m512i low4 = _mm512_set1_epi8(15);
            for (int k = 0; k < n_x; k++) /* the nibbles' +8 */
                dot[k][0] = _mm512_set1_epi32(-8 * x[k * stride + b].sum), dot[k][1] = _mm512_setzero_si512();
            for (int st = 0; st < 4; st++) {
                __m512i packed = BOTH_GROUPS(lo->qs + st * 32, hi->qs + st * 32);
                __m512i l = _mm512_and_si512(packed, low4), h = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
                for (int k = 0; k < n_x; k++) {
                    int32_t xl, xh;
                    memcpy(&xl, x[k * stride + b].qs + 4 * st, 4);
                    memcpy(&xh, x[k * stride + b].qs + 4 * st + 16, 4);
                    dot[k][0] = _mm512_dpbusd_epi32(dot[k][0], l, _mm512_set1_epi32(xl));
                    dot[k][1] = _mm512_dpbusd_epi32(dot[k][1], h, _mm512_set1_epi32(xh));
                }
            }
        }
        __m512 dw = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)d0)),
                                                            _mm_loadu_si128((const __m128i *)d1), 1));
        for (int k = 0; k < n_x; k++)
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(dot[k][0], dot[k][1])),
                                     _mm512_mul_ps(dw, _mm512_set1_ps(x[k * stride + b].d)), acc[k]);
    }
#undef BOTH_GROUPS
    for (int k = 0; k < n_x; k++) _mm512_storeu_ps(out + k * out_stride, acc[k]);
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
/* Sixteen of BlockQ8_0x8's stored weights (value + 128) as the signed values. */
static inline int8x16_t q8_x8_weights(const uint8_t *qs) { return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(qs), vdupq_n_u8(0x80))); }

static inline __attribute__((always_inline)) void gemm_x8_tile_neon(const void *w, int type, const BlockQ8A *x, size_t stride,
                                                                     int n_x, int blocks, float *out, size_t out_stride) {
    float32x4_t acc[GEMM_X8_NEON_TOKENS][2];
    for (int k = 0; k < GEMM_X8_NEON_TOKENS; k++) acc[k][0] = acc[k][1] = vdupq_n_f32(0);
    for (int b = 0; b < blocks; b++) {
        int32x4_t dot[GEMM_X8_NEON_TOKENS][2]; /* token k, rows 0-3 and 4-7 */
        const uint16_t *d;
#if defined(KERNELS_DOTPROD)
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
        int8x16_t w0 = q8_x8_weights(blk->qs + (st) * 32), w1 = q8_x8_weights(blk->qs + (st) * 32 + 16); \
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
                int8x16_t w0 = q8_x8_weights(blk->qs + st * 32), w1 = q8_x8_weights(blk->qs + st * 32 + 16);
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
    for (int k = 0; k < n_x; k++) vst1q_f32(out + k * out_stride, acc[k][0]), vst1q_f32(out + k * out_stride + 4, acc[k][1]);
}
#endif

/* One group of eight rows; constant types and token counts make specialized copies. */
static inline void gemm_x8_group(const void *w, int type, const BlockQ8A *x, size_t stride, int n_x, int blocks, float *out,
                                 size_t out_stride) {
#if defined(KERNELS_AVX2)
#define X8_CALL(T, n) gemm_x8_tile_avx2(w, T, x, stride, n, blocks, out, out_stride)
    if (type == TYPE_Q8_0) n_x == 8 ? X8_CALL(TYPE_Q8_0, 8) : n_x == 1 ? X8_CALL(TYPE_Q8_0, 1) : X8_CALL(TYPE_Q8_0, n_x);
    else n_x == 8 ? X8_CALL(TYPE_Q4_0, 8) : n_x == 1 ? X8_CALL(TYPE_Q4_0, 1) : X8_CALL(TYPE_Q4_0, n_x);
#undef X8_CALL
#elif defined(KERNELS_NEON)
    /* one token is decoding, GEMM_X8_NEON_TOKENS at a time the bulk of a batch */
    enum { T = GEMM_X8_NEON_TOKENS };
    for (int k0 = 0; k0 < n_x; k0 += T) {
        int m = n_x - k0 < T ? n_x - k0 : T;
        const BlockQ8A *xk = x + (size_t)k0 * stride;
        float *ok = out + (size_t)k0 * out_stride;
#define X8_CALL(T_, n) gemm_x8_tile_neon(w, T_, xk, stride, n, blocks, ok, out_stride)
        if (type == TYPE_Q8_0) m == T ? X8_CALL(TYPE_Q8_0, T) : m == 1 ? X8_CALL(TYPE_Q8_0, 1) : X8_CALL(TYPE_Q8_0, m);
        else m == T ? X8_CALL(TYPE_Q4_0, T) : m == 1 ? X8_CALL(TYPE_Q4_0, 1) : X8_CALL(TYPE_Q4_0, m);
#undef X8_CALL
    }
#else
    gemm_x8_ref(w, type, x, stride, n_x, blocks, out, out_stride);
#endif
}

static inline void gemm_x8(const void *w, int type, size_t group_bytes, int groups, const BlockQ8A *x, size_t stride, int n_x,
                           int blocks, float *out, size_t out_stride) {
#if defined(KERNELS_AVX512)
    /* batches only: decoding one token, the sixteen-row kernel ran at half the eight-row one's speed
       (TinyLlama-shape q4_0, 1 thread: 19-24 against 41-46 tok/s), the 512-bit insert per step
       costing more than it saves where memory, not the multiply-adds, sets the pace */
    if (groups == 2 && n_x > 1) {
#define X16_CALL(T, n) gemm_x16_tile_avx512(w, T, group_bytes, x, stride, n, blocks, out, out_stride)
        if (type == TYPE_Q8_0) n_x == 8 ? X16_CALL(TYPE_Q8_0, 8) : X16_CALL(TYPE_Q8_0, n_x);
        else n_x == 8 ? X16_CALL(TYPE_Q4_0, 8) : X16_CALL(TYPE_Q4_0, n_x);
#undef X16_CALL
        return;
    }
#endif
    for (int g = 0; g < groups; g++)
        gemm_x8_group((const uint8_t *)w + g * group_bytes, type, x, stride, n_x, blocks, out + 8 * g, out_stride);
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
 * Softmax and attention (moved from model.h)
 */
/* Eight partial sums added in a fixed tree: (0+1 + 2+3) + (4+5 + 6+7). */
#if defined(KERNELS_AVX2)
static inline float sum8_tree(__m256 v) {
    __m256 h = _mm256_hadd_ps(v, v);
    h = _mm256_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}
#endif

#if defined(KERNELS_AVX2)
/* exp of eight values at most 0 (a softmax's x - max), within 2 ulp of
   expf: x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two parts), exp(r) by
   Cephes' polynomial, 2^n put in the exponent; below -87 it is 0. */
static inline __m256 exp8_nonpositive(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(lo, x); /* in this order a NaN passes (max_ps returns its second operand), as in expf */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
#endif

/* One step of an online softmax (a tile of a row at a time): x[0..n) become
   exp(x[j] - max'), max' = the larger of *max and the tile's largest; the
   running *sum, and the output accumulated from earlier tiles (out[0..m)),
   are rescaled from the old max to max'. Starting from *max = -INFINITY and
   *sum = 0, the row's softmax is the final out divided by *sum. Eight at a
   time where AVX2 is: the tile's sum is kept in eight lanes and added in a
   fixed order, so the result does not depend on how n splits. */
static void softmax_tile(float *x, int n, float *max, float *sum, float *out, int m) {
    float new_max = *max, tile_sum = 0;
    int j = 0;
#if defined(KERNELS_AVX2)
    if (n >= 8) {
        __m256 vm = _mm256_loadu_ps(x);
        for (j = 8; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        if (_mm_cvtss_f32(h) > new_max) new_max = _mm_cvtss_f32(h);
    }
#endif
    for (; j < n; j++)
        if (x[j] > new_max) new_max = x[j];
    if (new_max > *max) { /* exp(-inf) = 0 on the first tile: nothing to rescale but zeros */
        float alpha = expf(*max - new_max);
        *sum *= alpha;
        for (int i = 0; i < m; i++) out[i] *= alpha;
        *max = new_max;
    }
    j = 0;
#if defined(KERNELS_AVX2)
    __m256 vmax = _mm256_set1_ps(new_max), vsum = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + j), vmax));
        _mm256_storeu_ps(x + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    tile_sum = sum8_tree(vsum);
#endif
    for (; j < n; j++) {
        x[j] = expf(x[j] - new_max);
        tile_sum += x[j];
    }
    *sum += tile_sum;
}

/* In place: x[j] = exp(x[j] - max) / sum (routing, sampling): one tile. */
static void softmax(float *x, int n) {
    float max = -INFINITY, sum = 0;
    softmax_tile(x, n, &max, &sum, NULL, 0);
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) x[j] *= inv;
}

/* Attention's two inner loops over a tile of cached positions, for one or
   more query heads that share the keys and values (a KV head's group). Each
   result is computed the same way whichever block of heads and positions it
   falls in, so splitting a range (near and far keys, tiles) or a batch
   changes no bit; grouping only saves loads: a key or value row is read and
   widened once for several heads. */

/* Eight cached values from element i of a row, as f32. */
#if defined(KERNELS_AVX2)
static inline __m256 kv_load8(const void *row, int type, size_t i) {
    if (type == TYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
    if (type == TYPE_Q8_0) { /* eight of a block's int8s, times its scale */
        const BlockQ8_0 *b = (const BlockQ8_0 *)row + i / QK;
        __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + i % QK))));
        return _mm256_mul_ps(q, _mm256_set1_ps(f16_to_f32(b->d)));
    }
    return _mm256_loadu_ps((const float *)row + i);
}
#endif

static inline float kv_value(const void *row, int type, size_t i) {
    if (type == TYPE_Q8_0) {
        const BlockQ8_0 *b = (const BlockQ8_0 *)row + i / QK;
        return f16_to_f32(b->d) * b->qs[i % QK];
    }
    return type == TYPE_F16 ? f16_to_f32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

/* One score: base + q . k over n elements, the SIMD part already in acc. */
static inline float score_finish(float d, const float *q, const void *k, int type, int from, int n, float base, float scale) {
    for (int i = from; i < n; i++) d += q[i] * kv_value(k, type, i);
    return (base + d) * scale;
}

#if defined(KERNELS_AVX2)
/* H query heads against K keys (H * K <= 8 accumulators, constants after
   inlining): one eight-wide FMA chain per score along the elements. */
static inline __attribute__((always_inline)) void scores_block(const float *q, size_t q_stride, int H, const void *k, int type,
                                                                size_t k_stride, int K, int n, float scale, int add, float *s,
                                                                size_t s_stride) {
    __m256 acc[8]; /* [h * K + u] */
    for (int i = 0; i < H * K; i++) acc[i] = _mm256_setzero_ps();
    int n8 = n & ~7;
    for (int i = 0; i < n8; i += 8) {
        __m256 kv[4];
        for (int u = 0; u < K; u++) kv[u] = kv_load8(k, type, (size_t)u * k_stride + i);
        for (int h = 0; h < H; h++) {
            __m256 qv = _mm256_loadu_ps(q + h * q_stride + i);
            for (int u = 0; u < K; u++) acc[h * K + u] = _mm256_fmadd_ps(qv, kv[u], acc[h * K + u]);
        }
    }
    float d[8];
    if (H * K == 8) { /* eight sum8_trees at once, the same bits: pairs, quads, then the two halves */
        __m256 r[4];
        for (int i = 0; i < 4; i++) r[i] = _mm256_hadd_ps(acc[2 * i], acc[2 * i + 1]);
        __m256 lo = _mm256_hadd_ps(r[0], r[1]), hi = _mm256_hadd_ps(r[2], r[3]);
        _mm256_storeu_ps(d, _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31)));
    } else
        for (int i = 0; i < H * K; i++) d[i] = sum8_tree(acc[i]);
    for (int h = 0; h < H; h++)
        for (int u = 0; u < K; u++) {
            float *sj = s + h * s_stride + u;
            *sj = score_finish(d[h * K + u], q + h * q_stride, kv_at(k, type, (size_t)u * k_stride), type, n8, n, add ? *sj : 0, scale);
        }
}

/* All count keys for H heads: blocks of 8/H keys, then one at a time. */
static inline __attribute__((always_inline)) void scores_heads(const float *q, size_t q_stride, int H, const void *k, int type,
                                                                size_t k_stride, int count, int n, float scale, int add, float *s,
                                                                size_t s_stride) {
    int j = 0, K = H == 4 ? 2 : 4;
    for (; j + K <= count; j += K)
        scores_block(q, q_stride, H, kv_at(k, type, (size_t)j * k_stride), type, k_stride, K, n, scale, add, s + j, s_stride);
    for (; j < count; j++)
        scores_block(q, q_stride, H, kv_at(k, type, (size_t)j * k_stride), type, k_stride, 1, n, scale, add, s + j, s_stride);
}
#endif

/* s[g * s_stride + j] = scale * (base + q_g . k_j) for the n_q query rows
   q_g (q_stride apart) and count key rows k_j of a cache part (k_stride
   elements apart), n elements used; base = the score already there with
   add, else 0. */
static inline __attribute__((always_inline)) void attn_scores_typed(const float *q, size_t q_stride, int n_q, const void *k,
                                                                     int type, size_t k_stride, int count, int n, float scale,
                                                                     int add, float *s, size_t s_stride) {
#if defined(KERNELS_AVX2)
    int g = 0;
    for (; g + 4 <= n_q; g += 4) scores_heads(q + g * q_stride, q_stride, 4, k, type, k_stride, count, n, scale, add, s + g * s_stride, s_stride);
    for (; g + 2 <= n_q; g += 2) scores_heads(q + g * q_stride, q_stride, 2, k, type, k_stride, count, n, scale, add, s + g * s_stride, s_stride);
    for (; g < n_q; g++) scores_heads(q + g * q_stride, q_stride, 1, k, type, k_stride, count, n, scale, add, s + g * s_stride, s_stride);
#else
    for (int g = 0; g < n_q; g++)
        for (int j = 0; j < count; j++) {
            float *sj = s + g * s_stride + j;
            *sj = score_finish(0, q + g * q_stride, kv_at(k, type, (size_t)j * k_stride), type, 0, n, add ? *sj : 0, scale);
        }
#endif
}

static void attn_scores(const float *q, size_t q_stride, int n_q, const void *k, int type, size_t k_stride, int count, int n,
                        float scale, int add, float *s, size_t s_stride) {
    if (type == TYPE_F16) attn_scores_typed(q, q_stride, n_q, k, TYPE_F16, k_stride, count, n, scale, add, s, s_stride);
    else if (type == TYPE_Q8_0) attn_scores_typed(q, q_stride, n_q, k, TYPE_Q8_0, k_stride, count, n, scale, add, s, s_stride);
    else attn_scores_typed(q, q_stride, n_q, k, TYPE_F32, k_stride, count, n, scale, add, s, s_stride);
}

#if defined(KERNELS_AVX2)
/* H heads' output columns [c0, c0 + 8C) += their weights times count value
   rows (constants H, C after inlining; H * C <= 8 accumulators). */
static inline __attribute__((always_inline)) void wsum_block(float *out, size_t o_stride, int H, const float *w, size_t w_stride,
                                                              const void *v, int type, size_t v_stride, int count, int C, int c0) {
    __m256 acc[4][8];
    for (int h = 0; h < H; h++)
        for (int u = 0; u < C; u++) acc[h][u] = _mm256_loadu_ps(out + h * o_stride + c0 + 8 * u);
    for (int j = 0; j < count; j++) {
        __m256 vv[8];
        for (int u = 0; u < C; u++) vv[u] = kv_load8(v, type, (size_t)j * v_stride + c0 + 8 * u);
        for (int h = 0; h < H; h++) {
            __m256 wj = _mm256_set1_ps(w[h * w_stride + j]);
            for (int u = 0; u < C; u++) acc[h][u] = _mm256_fmadd_ps(wj, vv[u], acc[h][u]);
        }
    }
    for (int h = 0; h < H; h++)
        for (int u = 0; u < C; u++) _mm256_storeu_ps(out + h * o_stride + c0 + 8 * u, acc[h][u]);
}

/* All n columns for H heads: blocks of 64 / H columns, then eight at a time. */
static inline __attribute__((always_inline)) int wsum_heads(float *out, size_t o_stride, int H, const float *w, size_t w_stride,
                                                             const void *v, int type, size_t v_stride, int count, int n) {
    int c0 = 0, C = 8 / H;
    for (; c0 + 8 * C <= n; c0 += 8 * C) wsum_block(out, o_stride, H, w, w_stride, v, type, v_stride, count, C, c0);
    for (; c0 + 8 <= n; c0 += 8) wsum_block(out, o_stride, H, w, w_stride, v, type, v_stride, count, 1, c0);
    return c0;
}
#endif

/* out_g += sum over j of w_g[j] * v_j for the n_q heads (outputs o_stride
   apart, weights w_stride apart) and count value rows v_j (v_stride elements
   apart, n used). Each column adds its rows in order with fused multiply-adds
   whatever the block. */
static inline __attribute__((always_inline)) void attn_weighted_sum_typed(float *out, size_t o_stride, int n_q, const float *w,
                                                                           size_t w_stride, const void *v, int type,
                                                                           size_t v_stride, int count, int n) {
    for (int g = 0; g < n_q;) {
        int H = 1, c0 = 0;
#if defined(KERNELS_AVX2)
        H = n_q - g >= 4 ? 4 : n_q - g >= 2 ? 2 : 1;
        if (H == 4) c0 = wsum_heads(out, o_stride, 4, w, w_stride, v, type, v_stride, count, n);
        else if (H == 2) c0 = wsum_heads(out, o_stride, 2, w, w_stride, v, type, v_stride, count, n);
        else c0 = wsum_heads(out, o_stride, 1, w, w_stride, v, type, v_stride, count, n);
#endif
        for (int h = 0; h < H; h++)
            for (int col = c0; col < n; col++) {
                float acc = out[h * o_stride + col];
                for (int j = 0; j < count; j++) acc = fmaf(w[h * w_stride + j], kv_value(v, type, (size_t)j * v_stride + col), acc);
                out[h * o_stride + col] = acc;
            }
        g += H, out += H * o_stride, w += H * w_stride;
    }
}

static void attn_weighted_sum(float *out, size_t o_stride, int n_q, const float *w, size_t w_stride, const void *v, int type,
                              size_t v_stride, int count, int n) {
    if (type == TYPE_F16) attn_weighted_sum_typed(out, o_stride, n_q, w, w_stride, v, TYPE_F16, v_stride, count, n);
    else if (type == TYPE_Q8_0) attn_weighted_sum_typed(out, o_stride, n_q, w, w_stride, v, TYPE_Q8_0, v_stride, count, n);
    else attn_weighted_sum_typed(out, o_stride, n_q, w, w_stride, v, TYPE_F32, v_stride, count, n);
}

#undef attn_scores
#undef attn_scores_typed
#undef attn_weighted_sum
#undef attn_weighted_sum_typed
#undef axpy
#undef dot_block32_avx2
#undef dot_block32_neon
#undef dot_quant_rows
#undef dot_s8x16
#undef dot_superblock_avx2
#undef dot_superblock_neon
#undef dot_u8s8
#undef dpbusd_add
#undef dpwssd_add
#undef exp8_nonpositive
#undef f16_to_f32
#undef f32_to_f16
#undef fifth_bits
#undef float_dot_tail
#undef float_weight
#undef gemm_float
#undef gemm_float_block
#undef gemm_float_rows
#undef gemm_float_typed
#undef gemm_x8
#undef gemm_x8_group
#undef gemm_x16_tile_avx512
#undef gemm_x8_tile_avx2
#undef gemm_x8_tile_neon
#undef hsum256
#undef hsum_f32x4
#undef hsum_s32x4
#undef iq4_levels
#undef kv_load8
#undef kv_value
#undef load_f16x4
#undef mlal_high_s8
#undef mull_high_s8
#undef nibbles_u8
#undef padd_s32
#undef q8_x8_weights
#undef quantize_activations
#undef quantize_row_q8a
#undef quantize_row_q8k
#undef row_from_float
#undef row_to_float
#undef score_finish
#undef scores_block
#undef scores_heads
#undef shr_u8
#undef softmax
#undef softmax_tile
#undef sum8_tree
#undef superblock_scales_avx2
#undef superblock_scales_neon
#undef superblock_vec_avx2
#undef superblock_vec_neon
#undef table16_s8
#undef twice_u8
#undef weight4
#undef weight8
#undef weight_block_i8
#undef weight_block_neon
#undef widen_s8
#undef wsum_block
#undef wsum_heads
#undef GEMM_FLOAT_ROWS
#undef GEMM_FLOAT_TOKENS
#undef GEMM_FLOAT_BLOCK_ROWS
#undef GEMM_X8_NEON_TOKENS

/* The level's entry points (kernels.h: Kernels). */
static const Kernels KERNELS_NAME(kernels) = {
    .name = KERNELS_LEVEL,
#if defined(KERNELS_AVX2) || defined(KERNELS_NEON)
    .repack_pays = 1,
#else
    .repack_pays = 0, /* the portable eight-row kernel is no faster than the row-by-row ones */
#endif
#if defined(KERNELS_AVX2)
    .superblock_exact = 0,
#else
    .superblock_exact = 1,
#endif
    .quantize_row_q8a = KERNELS_NAME(quantize_row_q8a),
    .quantize_row_q8k = KERNELS_NAME(quantize_row_q8k),
    .quantize_activations = KERNELS_NAME(quantize_activations),
    .row_from_float = KERNELS_NAME(row_from_float),
    .row_to_float = KERNELS_NAME(row_to_float),
    .dot_quant_rows = KERNELS_NAME(dot_quant_rows),
    .gemm_float = KERNELS_NAME(gemm_float),
    .gemm_x8 = KERNELS_NAME(gemm_x8),
    .axpy = KERNELS_NAME(axpy),
    .softmax_tile = KERNELS_NAME(softmax_tile),
    .softmax = KERNELS_NAME(softmax),
    .attn_scores = KERNELS_NAME(attn_scores),
    .attn_weighted_sum = KERNELS_NAME(attn_weighted_sum),
};
