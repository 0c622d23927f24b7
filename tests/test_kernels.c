/* test_kernels.c - every kernel and weight type against a plain f32 reference.
 *
 * The reference for a quantized dot product is the f32 dot of the
 * dequantized weight and the dequantized activation, summed in double: it
 * shares no code with the kernels beyond the dequantizers, which are checked
 * separately against the quantization error bounds.
 */
#define MODEL_IMPLEMENTATION
#include "../model.h"
#include "check.h"

#include <float.h>

/* The kernel level under test: main runs the kernel tests once for every
   level this CPU has (kernels.h: KERNEL_LEVELS). */
static const Kernels *K;

static float dot_quant(const void *w, int type, const void *x, int n) {
    float r;
    K->dot_quant_rows(w, type, x, 0, 1, n, &r);
    return r;
}

static float dot_float(const void *w, int type, const float *x, int n) {
    float r;
    K->gemm_float(w, type, 0, 1, x, 0, 1, n, &r, 1);
    return r;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float randn(void) { /* Box-Muller on xorshift */
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    double u1 = ((rng_state >> 11) + 1.0) / 9007199254740993.0;
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    double u2 = (rng_state >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
}

static void fill(float *x, int n, float scale) {
    for (int i = 0; i < n; i++) x[i] = randn() * scale;
}

/* The level's f16 conversions (row_to_float and row_from_float: eight at a
   time where it can, then its own scalar conversion for the rest) against
   the portable ones. */
static void test_half_conversions(void) {
    enum { N = 65536 + 7 }; /* every half, and a tail past the vectors */
    static uint16_t halves[N], back[N];
    static float wide[N];
    for (uint32_t i = 0; i < N; i++) halves[i] = (uint16_t)(i * 40503u); /* a permutation, so each vector holds mixed values */
    K->row_to_float(TYPE_F16, halves, wide, N);
    int bad = 0;
    for (uint32_t i = 0; i < N; i++) {
        float a = f16_to_f32_soft(halves[i]);
        if (memcmp(&a, &wide[i], 4) && !(isnan(a) && isnan(wide[i]))) bad++;
        if (!isnan(a) && f32_to_f16_soft(a) != halves[i]) bad++; /* every finite half survives a round trip */
    }
    CHECK(bad == 0, "f16 <-> f32: all 65536 halves convert as the portable code does and round-trip (%d bad)", bad);
    bad = 0;
    float specials[] = {0.0f, -0.0f, 65504.0f, 65520.0f, 1e-8f, 5.96e-8f, INFINITY, -INFINITY};
    for (int i = 0; i < N; i++) wide[i] = i < 8 ? specials[i] : randn() * (float)pow(2, (int)(randn() * 8));
    K->row_from_float(TYPE_F16, wide, back, N);
    for (int i = 0; i < N; i++) {
        float x = wide[i];
        if (f32_to_f16_soft(x) != back[i]) bad++;
        /* nearest: no other half is closer */
        float y = f16_to_f32_soft(back[i]);
        if (fabsf(y) < 65504 && fabsf(x - y) > fabsf(x) * (1.0f / 2048) + 6e-8f) bad++;
    }
    CHECK(bad == 0, "f32 -> f16 rounds to nearest, software == hardware (%d bad)", bad);
    bad = 0;
    for (int i = 0; i < 100000; i++) {
        float x = randn() * 100, y = bf16_to_f32(f32_to_bf16(x));
        if (fabsf(x - y) > fabsf(x) / 256) bad++;
    }
    CHECK(bad == 0, "f32 -> bf16 -> f32 within half an ulp of bf16 (%d bad)", bad);
}

/* Quantize/dequantize round trips stay within half a step of each group. */
static void test_quant_roundtrip(void) {
    enum { N = 4096 };
    static float x[N], y[N];
    static BlockQ8_0 q8[N / QK];
    static BlockQ4_0 q4[N / QK];
    static BlockQ8A qa[N / QK];
    fill(x, N, 1.0f);
    x[5] = 40.0f; /* an outlier: only its group's step grows */
    quantize_row_q8_0(x, q8, N);
    dequantize_row(TYPE_Q8_0, q8, y, N);
    int bad = 0;
    for (int b = 0; b < N / QK; b++) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[b * QK + j]));
        float step = f16_to_f32(q8[b].d);
        if (fabsf(step - amax / 127) > amax / 127 / 1000) bad++;
        for (int j = 0; j < QK; j++)
            if (fabsf(x[b * QK + j] - y[b * QK + j]) > step * 0.5f * 1.01f + 1e-7f) bad++;
    }
    CHECK(bad == 0, "q8_0 round trip within half a step per group (%d bad)", bad);
    quantize_row_q4_0(x, q4, N);
    dequantize_row(TYPE_Q4_0, q4, y, N);
    bad = 0;
    for (int b = 0; b < N / QK; b++) {
        float step = fabsf(f16_to_f32(q4[b].d));
        /* 16 levels, -8..7: the largest magnitude takes -8 exactly; values
           on the other side beyond 7.5 steps clamp to 7, one step off at most */
        for (int j = 0; j < QK; j++) {
            float e = fabsf(x[b * QK + j] - y[b * QK + j]);
            float bound = fabsf(x[b * QK + j]) > 7.5f * step ? step : step * 0.5f;
            if (e > bound * 1.01f + 1e-6f) bad++;
        }
    }
    CHECK(bad == 0, "q4_0 round trip within half a step per group (one step where 7 clamps) (%d bad)", bad);
    quantize_row_q8a_ref(x, qa, N); /* the kernels give its bytes: test_quantize_q8a */
    bad = 0;
    for (int b = 0; b < N / QK; b++)
        for (int j = 0; j < QK; j++)
            if (fabsf(x[b * QK + j] - qa[b].qs[j] * qa[b].d) > qa[b].d * 0.5f * 1.001f + 1e-7f) bad++;
    CHECK(bad == 0, "activation int8 round trip within half a step (%d bad)", bad);
    float zeros[QK] = {0};
    quantize_row_q4_0(zeros, q4, QK);
    dequantize_row(TYPE_Q4_0, q4, y, QK);
    bad = 0;
    for (int j = 0; j < QK; j++) bad += y[j] != 0;
    CHECK(bad == 0, "an all-zero group stays zero");
}

static double dot_double(const float *a, const float *b, int n, double *mag) {
    double s = 0;
    *mag = 0;
    for (int i = 0; i < n; i++) {
        s += (double)a[i] * b[i];
        *mag += fabs((double)a[i] * b[i]);
    }
    return s;
}

/* Every type's dot product, SIMD and scalar, against the f32 reference. */
static void test_dots(void) {
    const int lengths[] = {1, 5, 8, 13, 32, 64, 96, 172, 1000, 2048, 5632}; /* the quantized types skip n % 32 */
    for (int type = TYPE_F32; type <= TYPE_Q4_0; type++) {
        int bad_simd = 0, bad_ref = 0, cases = 0;
        double worst = 0;
        for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++) {
            int n = lengths[li];
            if (type_is_quantized(type) && n % QK) continue;
            float *w = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float));
            float *wd = malloc(n * sizeof(float)), *xd = malloc(n * sizeof(float));
            void *wq = malloc(type_row_bytes(type, n));
            BlockQ8A *xq = malloc((n / QK + 1) * sizeof(BlockQ8A));
            for (int rep = 0; rep < 20; rep++, cases++) {
                fill(w, n, 0.05f);
                fill(x, n, 1.0f);
                quantize_row(type, w, wq, n);
                dequantize_row(type, wq, wd, n);
                memcpy(xd, x, n * sizeof(float));
                if (type_is_quantized(type)) {
                    K->quantize_row_q8a(x, xq, n);
                    for (int i = 0; i < n; i++) xd[i] = xq[i / QK].qs[i % QK] * xq[i / QK].d;
                }
                double mag, want = dot_double(wd, xd, n, &mag);
                float got, ref;
                switch (type) {
                case TYPE_F32: got = dot_float(wq, type, x, n); ref = dot_f32_ref(wq, x, n); break;
                case TYPE_F16: got = dot_float(wq, type, x, n); ref = dot_f16_ref(wq, x, n); break;
                case TYPE_BF16: got = dot_float(wq, type, x, n); ref = dot_bf16_ref(wq, x, n); break;
                default: got = dot_quant(wq, type, xq, n); ref = dot_block32_ref(wq, type, xq, n); break;
                }
                double tol = 1e-5 * mag + 1e-6;
                if (fabs(got - want) > tol) bad_simd++;
                if (fabs(ref - want) > tol) bad_ref++;
                if (fabs(got - want) / (mag + 1e-30) > worst) worst = fabs(got - want) / (mag + 1e-30);
            }
            free(w); free(x); free(wd); free(xd); free(wq); free(xq);
        }
        CHECK(bad_simd == 0 && bad_ref == 0, "dot %s: kernel and scalar path match the f32 reference (%d cases, worst rel %.2g)",
              type_name(type), cases, worst);
    }
    /* The quantized dot's integer part is exact: with scales 1 the kernel equals the reference bit for bit. */
    BlockQ8_0 w[4];
    BlockQ8A a[4];
    for (int b = 0; b < 4; b++) {
        w[b].d = f32_to_f16(1.0f);
        a[b].d = 1.0f;
        for (int j = 0; j < QK; j++) {
            w[b].qs[j] = (int8_t)(j % 2 ? -127 : 127);
            a[b].qs[j] = (int8_t)(j % 3 ? -128 + j : 127);
        }
    }
    CHECK(dot_quant(w, TYPE_Q8_0, a, 4 * QK) == dot_block32_ref(w, TYPE_Q8_0, a, 4 * QK), "q8_0 dot at the int8 extremes is exact");
}

/* The four-token quantized kernel gives each token the bits the one-token kernel gives. */
static void test_dot_x4(void) {
    enum { N = 2048, B = N / QK };
    static float w[N], x[4][N];
    static BlockQ8_0 w8[B];
    static BlockQ4_0 w4[B];
    static BlockQ8A xq[4 * B];
    int same = 1;
    for (int rep = 0; rep < 10; rep++) {
        fill(w, N, 0.05f);
        for (int k = 0; k < 4; k++) {
            fill(x[k], N, 1.0f);
            K->quantize_row_q8a(x[k], xq + k * B, N);
        }
        quantize_row_q8_0(w, w8, N);
        quantize_row_q4_0(w, w4, N);
        const void *rows[2] = {w8, w4};
        const int types[2] = {TYPE_Q8_0, TYPE_Q4_0};
        for (int i = 0; i < 2; i++) {
            float out[4];
            K->dot_quant_rows(rows[i], types[i], xq, B, 4, N, out);
            for (int k = 0; k < 4; k++) {
                float one = dot_quant(rows[i], types[i], xq + k * B, N);
                same &= !memcmp(&one, &out[k], sizeof one);
            }
        }
    }
    CHECK(same, "q8_0 and q4_0: four tokens at once == one at a time, bit for bit");
}

/* gemm_float, every type and row length (none to several vectors long, with
   and without a remainder): each output is within rounding of the double
   dot, and every blocking of 9 rows by 9 tokens, at every offset, gives
   each output the bits of the 1 x 1 call (9 rows: decoding's blocks of 8
   run too); outputs outside the block are left alone. */
static void test_gemm_float(void) {
    enum { ROWS = 9, TOKENS = 9, MAX_N = 2048, PAD = 3 };
    static float w[ROWS][MAX_N], wd[ROWS][MAX_N], x[TOKENS][MAX_N + PAD];
    static uint8_t wq[ROWS * (MAX_N * 4 + 8)];
    const int lengths[] = {1, 3, 7, 8, 13, 16, 100, 172, 2048};
    for (int type = TYPE_F32; type <= TYPE_BF16; type++) {
        int bad_ref = 0, bad_bits = 0, touched = 0, calls = 0;
        double worst = 0;
        for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++) {
            int n = lengths[li];
            size_t row_bytes = type_row_bytes(type, n) + 8, x_stride = MAX_N + PAD; /* neither packed tight */
            for (int r = 0; r < ROWS; r++) {
                fill(w[r], n, 0.05f);
                quantize_row(type, w[r], wq + r * row_bytes, n);
                dequantize_row(type, wq + r * row_bytes, wd[r], n);
            }
            for (int t = 0; t < TOKENS; t++) fill(x[t], n, 1.0f);
            float one[ROWS][TOKENS];
            for (int r = 0; r < ROWS; r++)
                for (int t = 0; t < TOKENS; t++) {
                    K->gemm_float(wq + r * row_bytes, type, row_bytes, 1, x[t], x_stride, 1, n, &one[r][t], 1);
                    double mag, want = dot_double(wd[r], x[t], n, &mag);
                    if (fabs(one[r][t] - want) > 1e-5 * mag + 1e-6) bad_ref++;
                    if (fabs(one[r][t] - want) / (mag + 1e-30) > worst) worst = fabs(one[r][t] - want) / (mag + 1e-30);
                    float d = dot_float(wq + r * row_bytes, type, x[t], n);
                    bad_bits += memcmp(&d, &one[r][t], sizeof d) != 0;
                }
            for (int nr = 1; nr <= ROWS; nr++)
                for (int nx = 1; nx <= TOKENS; nx++)
                    for (int r0 = 0; r0 + nr <= ROWS; r0++)
                        for (int t0 = 0; t0 + nx <= TOKENS; t0++, calls++) {
                            enum { STRIDE = ROWS + 2 }; /* out rows with a gap */
                            float out[TOKENS][STRIDE];
                            for (int t = 0; t < TOKENS; t++)
                                for (int r = 0; r < STRIDE; r++) out[t][r] = -1e30f;
                            K->gemm_float(wq + r0 * row_bytes, type, row_bytes, nr, x[t0], x_stride, nx, n, out[0], STRIDE);
                            for (int t = 0; t < TOKENS; t++)
                                for (int r = 0; r < STRIDE; r++) {
                                    if (t < nx && r < nr) bad_bits += memcmp(&out[t][r], &one[r0 + r][t0 + t], sizeof(float)) != 0;
                                    else touched += out[t][r] != -1e30f;
                                }
                        }
        }
        CHECK(bad_ref == 0, "gemm_float %s: within rounding of the double dot, rows of 1 to 2048 (worst rel %.2g)", type_name(type), worst);
        CHECK(bad_bits == 0 && touched == 0,
              "gemm_float %s: %d blockings of 9 rows x 9 tokens give every output the 1 x 1 bits (%d differ, %d outside written)",
              type_name(type), calls, bad_bits, touched);
    }
}

/* Activation quantization: the SIMD path gives the reference's bytes, scale and sum. */
static void test_quantize_q8a(void) {
    enum { N = 4096 };
    static float x[N];
    static BlockQ8A a[N / QK], b[N / QK];
    static BlockQ8K ka[N / QK_K], kb[N / QK_K];
    int same = 1, same_k = 1;
    for (int rep = 0; rep < 24; rep++) {
        fill(x, N, rep % 2 ? 1.0f : 30.0f);
        if (rep == 3) memset(x, 0, sizeof x); /* all zero: scale 0 */
        if (rep == 4) for (int i = 0; i < N; i++) x[i] = (i % 7) - 3.5f; /* ties: x * (1 / d) on .5 */
        if (rep == 5) for (int i = 0; i < N; i++) x[i] = i % 8 == 1 ? -3.0f : i % 8 == 5 ? 3.0f : (float)(i % 5) * 0.5f; /* -max, then +max in one vector: the first decides */
        if (rep == 6) for (int i = 0; i < N; i++) x[i] *= 1e-37f; /* some super-blocks too small to invert */
        K->quantize_row_q8a(x, a, N);
        quantize_row_q8a_ref(x, b, N);
        for (int k = 0; k < N / QK; k++) {
            int32_t sum = 0;
            for (int j = 0; j < QK; j++) sum += b[k].qs[j];
            same &= a[k].d == b[k].d && a[k].sum == b[k].sum && sum == b[k].sum && !memcmp(a[k].qs, b[k].qs, QK);
        }
        K->quantize_row_q8k(x, ka, N);
        quantize_row_q8k_ref(x, kb, N);
        same_k &= !memcmp(ka, kb, sizeof ka);
    }
    CHECK(same, "activation quantization: the kernel gives the reference's values, scales and sums");
    CHECK(same_k, "super-block activation quantization: the kernel gives the reference's bytes (values, scale, sums of 16)");
}

/* Activations that hold inf or NaN (weights that do) or are too small to
   invert the scale of: every path writes the same block, its integers zero
   (no NaN is converted to int: undefined) and, when not finite, a NaN
   scale, so that every product with it is NaN; the finite blocks next to it
   are untouched; the dot products and the q4_0 / q8_0 eight-row kernels
   give NaN; softmax's exp lets NaN through. */
static void test_quantize_nonfinite(void) {
    enum { N = 512, B = N / QK, KB = N / QK_K };
    static float x[N], w[8][N];
    static BlockQ8A a[B], ref[B], alone[B];
    static BlockQ8K k[KB];
    static BlockQ8_0 kv[B], w8[8 * B];
    static BlockQ4_0 w4[8 * B];
    static BlockQ8_0x8 p8[B];
    static BlockQ4_0x8 p4[B];
    const float bad[3] = {INFINITY, -INFINITY, NAN};
    const int lanes[4] = {0, 7, 8, 31}; /* first and last of an eight-wide vector, the next one, the block's last */
    int same = 1, zeroed = 1, kept = 1, k_ok = 1, kv_ok = 1, dots_nan = 1, tiny_zero = 1;
    for (int r = 0; r < 8; r++) {
        fill(w[r], N, 0.05f);
        quantize_row_q8_0(w[r], w8 + r * B, N);
        quantize_row_q4_0(w[r], w4 + r * B, N);
    }
    repack_x8(w8, TYPE_Q8_0, B, p8);
    repack_x8(w4, TYPE_Q4_0, B, p4);
    for (int v = 0; v < 3; v++)
        for (int l = 0; l < 4; l++) {
            fill(x, N, 1.0f);
            K->quantize_row_q8a(x, alone, N);
            x[QK + lanes[l]] = bad[v]; /* block 1 */
            K->quantize_row_q8a(x, a, N);
            quantize_row_q8a_ref(x, ref, N);
            same &= !memcmp(a, ref, sizeof a);
            zeroed &= isnan(a[1].d) && a[1].sum == 0;
            for (int j = 0; j < QK; j++) zeroed &= a[1].qs[j] == 0;
            kept &= !memcmp(&a[0], &alone[0], sizeof a[0]) && !memcmp(&a[2], &alone[2], sizeof(BlockQ8A) * (B - 2));
            K->quantize_row_q8k(x, k, N);
            k_ok &= isnan(k[0].d) && !isnan(k[1].d);
            for (int j = 0; j < QK_K; j++) k_ok &= k[0].qs[j] == 0;
            for (int j = 0; j < QK_K / 16; j++) k_ok &= k[0].bsums[j] == 0;
            quantize_row_q8_0(x, kv, N);
            kv_ok &= isnan(f16_to_f32(kv[1].d)) && !isnan(f16_to_f32(kv[0].d));
            for (int j = 0; j < QK; j++) kv_ok &= kv[1].qs[j] == 0;
            float out[8], out_ref[8];
            for (int t = 0; t < 2; t++) {
                K->gemm_x8(t ? (const void *)p4 : (const void *)p8, t ? TYPE_Q4_0 : TYPE_Q8_0, 0, 1, a, B, 1, B, out, 8);
                gemm_x8_ref(t ? (const void *)p4 : (const void *)p8, t ? TYPE_Q4_0 : TYPE_Q8_0, a, B, 1, B, out_ref, 8);
                for (int r = 0; r < 8; r++) dots_nan &= isnan(out[r]) && isnan(out_ref[r]);
            }
            dots_nan &= isnan(dot_quant(w8, TYPE_Q8_0, a, N)) && isnan(dot_quant(w4, TYPE_Q4_0, a, N));
        }
    for (int i = 0; i < N; i++) x[i] = (i % 5 - 2) * 1e-38f; /* scale about 1.6e-40: no finite inverse */
    K->quantize_row_q8a(x, a, N);
    quantize_row_q8a_ref(x, ref, N);
    K->quantize_row_q8k(x, k, N);
    tiny_zero &= !memcmp(a, ref, sizeof a) && a[0].sum == 0 && !isnan(a[0].d) && k[0].d == 0;
    for (int j = 0; j < QK; j++) tiny_zero &= a[0].qs[j] == 0;
    for (int j = 0; j < QK_K; j++) tiny_zero &= k[0].qs[j] == 0;
    CHECK(same, "inf, -inf or NaN in an activation block: the kernel writes the reference's bytes");
    CHECK(zeroed, "a block that is not finite: NaN scale, zero integers and sum");
    CHECK(kept, "the finite blocks beside it quantize as without it");
    CHECK(k_ok, "super-block activations: a block that is not finite gets a NaN scale and zeros");
    CHECK(kv_ok, "a q8_0 KV-cache block that is not finite: f16 NaN scale, zero integers");
    CHECK(dots_nan, "q8_0 and q4_0 dot products and eight-row kernels (scalar and SIMD) give NaN for it");
    CHECK(tiny_zero, "activations below 4e-37: zeros on every path (the scale has no finite inverse)");
    float e[37];
    for (int i = 0; i < 37; i++) e[i] = (float)i / 37 - 1;
    e[20] = NAN;
    float max = -INFINITY, sum = 0;
    K->softmax_tile(e, 37, &max, &sum, NULL, 0);
    CHECK(isnan(sum) && isnan(e[20]), "softmax with a NaN score: its exp and the sum are NaN (eight-wide and scalar)");
}

/* Interleaved rows, one group of eight or two (sixteen rows, as matmul
   calls it): the kernel gives the reference's bits for 1-8 tokens, each
   token the same bits whatever else is in the call, and the results agree
   with the row-by-row dot products to rounding; outputs go out_stride
   apart and nothing else is written. */
static void test_gemm_x8(void) {
    enum { N = 2048, B = N / QK, ROWS = 16, STRIDE = ROWS + 3 };
    static float w[ROWS][N], x[8][N];
    static BlockQ8_0 w8[ROWS * B];
    static BlockQ4_0 w4[ROWS * B];
    static BlockQ8_0x8 p8[2 * B];
    static BlockQ4_0x8 p4[2 * B];
    static BlockQ8A xq[8 * B];
    int same_ref = 1, same_batch = 1, untouched = 1;
    double worst = 0;
    for (int rep = 0; rep < 6; rep++) {
        for (int r = 0; r < ROWS; r++) {
            fill(w[r], N, 0.05f);
            quantize_row_q8_0(w[r], w8 + r * B, N);
            quantize_row_q4_0(w[r], w4 + r * B, N);
        }
        for (int k = 0; k < 8; k++) {
            fill(x[k], N, 1.0f);
            K->quantize_row_q8a(x[k], xq + k * B, N);
        }
        for (int g = 0; g < 2; g++) {
            repack_x8(w8 + g * 8 * B, TYPE_Q8_0, B, p8 + g * B);
            repack_x8(w4 + g * 8 * B, TYPE_Q4_0, B, p4 + g * B);
        }
        const void *packed[2] = {p8, p4}, *plain[2] = {w8, w4};
        const int types[2] = {TYPE_Q8_0, TYPE_Q4_0};
        const size_t rowb[2] = {sizeof(BlockQ8_0), sizeof(BlockQ4_0)}, group[2] = {B * sizeof(BlockQ8_0x8), B * sizeof(BlockQ4_0x8)};
        for (int i = 0; i < 2; i++)
            for (int groups = 1; groups <= 2; groups++) {
                float all[8][STRIDE], ref[8][STRIDE];
                for (int k = 0; k < 8; k++)
                    for (int r = 0; r < STRIDE; r++) all[k][r] = ref[k][r] = -1e30f;
                K->gemm_x8(packed[i], types[i], group[i], groups, xq, B, 8, B, all[0], STRIDE);
                for (int g = 0; g < groups; g++)
                    gemm_x8_ref((const uint8_t *)packed[i] + g * group[i], types[i], xq, B, 8, B, ref[0] + 8 * g, STRIDE);
                same_ref &= !memcmp(all, ref, sizeof all);
                for (int k = 0; k < 8; k++)
                    for (int r = 8 * groups; r < STRIDE; r++) untouched &= all[k][r] == -1e30f;
                for (int n_x = 1; n_x <= 7; n_x++)
                    for (int k0 = 0; k0 + n_x <= 8; k0++) {
                        float part[8][STRIDE];
                        K->gemm_x8(packed[i], types[i], group[i], groups, xq + k0 * B, B, n_x, B, part[0], STRIDE);
                        for (int k = 0; k < n_x; k++) same_batch &= !memcmp(part[k], all[k0 + k], 8 * groups * sizeof(float));
                    }
                for (int k = 0; k < 8; k++)
                    for (int r = 0; r < 8 * groups; r++) {
                        float one = dot_quant((const uint8_t *)plain[i] + (size_t)r * B * rowb[i], types[i], xq + k * B, N);
                        double e = fabs(one - all[k][r]) / (fabs(one) + 1.0); /* these dots are about 2 in size */
                        if (e > worst) worst = e;
                    }
            }
    }
    CHECK(same_ref, "interleaved rows (8 and 16): the kernel gives the scalar reference's bits (q8_0, q4_0)");
    CHECK(same_batch, "interleaved rows: 1 to 7 tokens in a call give the bits they get among 8");
    CHECK(untouched, "interleaved rows: nothing is written past the rows asked for");
    CHECK(worst < 1e-5, "interleaved rows agree with the row-by-row dot products to rounding (worst rel %.2g)", worst);
}

/* The NEON kernels' shims for AArch64 instructions that ARMv7 lacks, against
   their definitions, on lanes that all differ (the kernels call some only
   with repeated lanes, where a mixed-up half would not show). */
static void test_neon_shims(void) {
#if defined(KERNELS_ARM_NEON)
    int8_t a[16], b[16];
    int16_t acc[8], prod[8], sum[8];
    int32_t p[4], q[4], pq[4];
    volatile float tiny = 1e-8f; /* not a constant: GCC folds vaddvq_f32 of constants left to right, unlike faddp */
    float v[4] = {1.0f, tiny, -1.0f, tiny}, f[4];
    uint16_t h[4] = {0x3c00, 0xc500, 0x0001, 0x7bff}; /* 1, -5, the least subnormal, the largest finite */
    for (int i = 0; i < 16; i++) a[i] = (int8_t)(i * 17 - 128), b[i] = (int8_t)(100 - i * 13);
    for (int i = 0; i < 8; i++) acc[i] = (int16_t)(i * 1000 - 3000);
    for (int i = 0; i < 4; i++) p[i] = i * 7 - 100000, q[i] = 1000000 * (i + 1) + i;
    int ok = 1;
    vst1q_s16(prod, mull_high_s8_neon(vld1q_s8(a), vld1q_s8(b)));
    vst1q_s16(sum, mlal_high_s8_neon(vld1q_s16(acc), vld1q_s8(a), vld1q_s8(b)));
    for (int i = 0; i < 8; i++) ok &= prod[i] == a[8 + i] * b[8 + i] && sum[i] == acc[i] + a[8 + i] * b[8 + i];
    vst1q_s32(pq, padd_s32_neon(vld1q_s32(p), vld1q_s32(q)));
    ok &= pq[0] == p[0] + p[1] && pq[1] == p[2] + p[3] && pq[2] == q[0] + q[1] && pq[3] == q[2] + q[3];
    float s = hsum_f32x4_neon(vld1q_f32(v)), want = (v[0] + v[1]) + (v[2] + v[3]); /* 0 in that order, 1e-8 left to right */
    ok &= !memcmp(&s, &want, sizeof s);
    vst1q_f32(f, load_f16x4_neon(h));
    for (int i = 0; i < 4; i++) ok &= f[i] == f16_to_f32_soft(h[i]);
    uint8_t idx[16];
    int8_t looked_up[16];
    for (int i = 0; i < 16; i++) idx[i] = (uint8_t)((7 * i + 3) % 16); /* every index once, both halves from both */
    vst1q_s8(looked_up, table16_s8_neon(vld1q_s8(a), vld1q_u8(idx)));
    for (int i = 0; i < 16; i++) ok &= looked_up[i] == a[idx[i]];
    CHECK(ok, "NEON shims: widening products, pairwise sums, the horizontal sum's order, four halves to f32, table lookup");
#elif defined(__arm__) || defined(__aarch64__)
    printf("SKIP NEON kernels not compiled (32-bit ARM needs NEON with VFPv4: -mfpu=neon-vfpv4)\n");
#endif
}

/* The softmax's exp: within 2 ulp of the true value over its range, 0 below it. */
static void test_softmax_exp(void) {
    enum { N = 1000008 };
    static float x[N], y[N];
    double worst = 0;
    int zero = 1;
    for (int i = 0; i < N; i++) x[i] = y[i] = -100.0f * (float)i / 1000000.0f;
    float max = 0, tile_sum = 0; /* a running max of 0 above every x: the tile's values become exp(x) */
    K->softmax_tile(y, N, &max, &tile_sum, NULL, 0);
    for (int i = 0; i < N; i++) {
        if (x[i] < -87.0f) { zero &= y[i] == 0 || y[i] == expf(x[i]); continue; } /* the portable path is expf itself */
        double want = exp((double)x[i]), e = fabs(y[i] - want) / (want * FLT_EPSILON);
        if (e > worst) worst = e;
    }
    CHECK(worst <= 2 && zero, "softmax's exp within 2 ulp of exp on [-87, 0] (worst %.2f ulp), 0 below", worst);
    float a[37], b[37];
    for (int i = 0; i < 37; i++) a[i] = b[i] = (float)sin(i * 0.7) * 5;
    K->softmax(a, 37);
    double sum = 0, worst_p = 0, m = -1e30;
    for (int i = 0; i < 37; i++) m = fmax(m, b[i]);
    double z = 0;
    for (int i = 0; i < 37; i++) z += exp(b[i] - m);
    for (int i = 0; i < 37; i++) sum += a[i], worst_p = fmax(worst_p, fabs(a[i] - exp(b[i] - m) / z));
    CHECK(fabs(sum - 1) < 1e-6 && worst_p < 1e-7, "softmax of 37 values: sums to 1, each within 1e-7 of exp(x - max) / sum");
}

/* Random blocks of a GGUF weight type: random bytes (every bit pattern of the
   quants is valid) with the f16 scales set to ordinary values. */
static void random_blocks(int type, void *row, int64_t n) {
    static const struct { int type, d, second; } scales[] = { /* byte offsets of the f16 scale and offset (or -1) */
        {TYPE_Q8_0, 0, -1}, {TYPE_Q4_0, 0, -1}, {TYPE_Q4_1, 0, 2}, {TYPE_Q5_0, 0, -1}, {TYPE_Q5_1, 0, 2},
        {TYPE_IQ4_NL, 0, -1}, {TYPE_Q2_K, 80, 82}, {TYPE_Q3_K, 108, -1}, {TYPE_Q4_K, 0, 2}, {TYPE_Q5_K, 0, 2},
        {TYPE_Q6_K, 208, -1}, {TYPE_IQ4_XS, 0, -1}};
    uint8_t *p = row;
    size_t bytes = type_row_bytes(type, n), bb = (size_t)TYPE_INFO[type].block_bytes;
    for (size_t i = 0; i < bytes; i++) {
        rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
        p[i] = (uint8_t)(rng_state >> 24);
    }
    for (size_t i = 0; i < sizeof scales / sizeof *scales; i++) {
        if (scales[i].type != type) continue;
        for (size_t b = 0; b < bytes / bb; b++) {
            uint16_t d = f32_to_f16(randn() * 0.01f), m = f32_to_f16(randn() * 0.01f);
            memcpy(p + b * bb + scales[i].d, &d, 2);
            if (scales[i].second >= 0) memcpy(p + b * bb + scales[i].second, &m, 2);
        }
    }
}

/* What the AVX2 super-block kernel's float sums can round: per element
   |d x.d sc| (|q| + 2 bias) |x| + |dmin x.d mn| |x| (its integer lanes hold
   the biased products and the bias taken off; the offsets come separately).
   With u = 2^-24, nb super-blocks: each lane's 2nb fused multiply-adds, the
   rounded d x.d and the final sum of eight lanes err by at most
   (2nb + 4) u times this; the reference's combination by (nb + 4) u times
   its own magnitudes, which are smaller. So |kernel - reference| <=
   (3nb + 8) u times it. */
static double superblock_rounding_scale(const void *row, int type, const BlockQ8K *x, int n) {
    int8_t q[QK_K];
    int16_t sc[16], mn[16];
    int bias = superblock_bias_log2(type) >= 0 ? 1 << superblock_bias_log2(type) : 0;
    double a = 0;
    for (int b = 0; b < n / QK_K; b++) {
        float d, dmin;
        superblock_unpack(row, type, b, q, sc, mn, &d, &dmin);
        for (int i = 0; i < QK_K; i++)
            a += (fabs((double)d * sc[i / 16]) * (abs(q[i]) + 2 * bias) + fabs((double)dmin * mn[i / 16])) * abs(x[b].qs[i]) * fabs(x[b].d);
    }
    return (3.0 * (n / QK_K) + 8) * 0x1p-24 * a;
}

/* The GGUF block types: for random blocks, the scalar dot (dot_block32_ref,
   dot_superblock_ref) equals the double dot of the dequantized weight and
   activation; the SIMD kernel agrees with the reference to float rounding
   (the super-block types on AVX2 within superblock_rounding_scale; on NEON
   they give its bits: the same integers, the same float operations); four
   tokens at a time give each token the bits it gets alone. */
static void test_gguf_types(void) {
    enum { N = 2048, T = 4 };
    const int types[] = {TYPE_Q4_1, TYPE_Q5_0, TYPE_Q5_1, TYPE_IQ4_NL, TYPE_Q2_K, TYPE_Q3_K, TYPE_Q4_K, TYPE_Q5_K, TYPE_Q6_K, TYPE_IQ4_XS};
    static float x[T][N], wd[N], xd[T][N];
    static uint8_t row[N * 2], act[T][N * 2];
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
        int type = types[ti], k_form = TYPE_INFO[type].act == ACT_Q8K, bad_ref = 0, bad_simd = 0, bad_x4 = 0, cases = 0;
        double worst = 0;
        double worst_simd = 0; /* the super-block kernel's worst error as a fraction of its bound */
        for (int rep = 0; rep < 30; rep++) {
            int n = rep % 3 == 0 ? N : rep % 3 == 1 ? 256 : 768;
            random_blocks(type, row, n);
            dequantize_row(type, row, wd, n);
            size_t stride = k_form ? (size_t)n / QK_K : (size_t)n / QK, block_bytes = k_form ? sizeof(BlockQ8K) : sizeof(BlockQ8A);
            for (int t = 0; t < T; t++) {
                fill(x[t], n, 1.0f);
                K->quantize_activations(type, x[t], act[0] + t * stride * block_bytes, n);
                for (int i = 0; i < n; i++) {
                    if (k_form) {
                        const BlockQ8K *b = (const BlockQ8K *)(act[0] + t * stride * block_bytes) + i / QK_K;
                        xd[t][i] = b->qs[i % QK_K] * b->d;
                    } else {
                        const BlockQ8A *b = (const BlockQ8A *)(act[0] + t * stride * block_bytes) + i / QK;
                        xd[t][i] = b->qs[i % QK] * b->d;
                    }
                }
            }
            float four[T];
            K->dot_quant_rows(row, type, act[0], stride, 4, n, four);
            for (int t = 0; t < T; t++, cases++) {
                const void *xt = act[0] + t * stride * block_bytes;
                double mag, want = dot_double(wd, xd[t], n, &mag);
                float ref = k_form ? dot_superblock_ref(row, type, xt, n) : dot_block32_ref(row, type, xt, n);
                float got = dot_quant(row, type, xt, n);
                double tol = 1e-5 * mag + 1e-6;
                if (fabs(ref - want) > tol) bad_ref++;
                if (k_form && !K->superblock_exact) {
                    double e = fabs((double)got - ref) / superblock_rounding_scale(row, type, xt, n);
                    if (!(e <= 1)) bad_simd++;
                    if (e > worst_simd) worst_simd = e;
                } else if (k_form ? memcmp(&got, &ref, sizeof got) : fabs(got - want) > tol) bad_simd++;
                if (memcmp(&four[t], &got, sizeof got)) bad_x4++;
                if (fabs(ref - want) / (mag + 1e-30) > worst) worst = fabs(ref - want) / (mag + 1e-30);
            }
        }
        CHECK(bad_ref == 0, "%s: the scalar dot equals the dequantized weights' dot in double (%d cases, worst rel %.2g)",
              type_name(type), cases, worst);
        if (k_form && !K->superblock_exact)
            CHECK(bad_simd == 0, "%s: the kernel is within its rounding bound of the scalar reference (worst %.2g of it)",
                  type_name(type), worst_simd);
        else CHECK(bad_simd == 0, "%s: the kernel %s the scalar reference", type_name(type), k_form ? "gives the bits of" : "agrees to rounding with");
        CHECK(bad_x4 == 0, "%s: four tokens at a time give each token its bits alone", type_name(type));
    }
    /* With unit scales and offsets every float operation is exact, so the
       32-element kernels give the reference's bits as well: a wrong weight
       anywhere shows, however small. */
    for (int type = TYPE_Q8_0; type <= TYPE_IQ4_NL; type++) {
        if (TYPE_INFO[type].act != ACT_Q8A) continue;
        enum { B = 4 };
        static float xs[B * QK];
        BlockQ8A a[B];
        fill(xs, B * QK, 1.0f);
        K->quantize_row_q8a(xs, a, B * QK);
        for (int b = 0; b < B; b++) a[b].d = 1.0f;
        random_blocks(type, row, B * QK);
        uint16_t one = f32_to_f16(1.0f);
        for (int b = 0; b < B; b++) {
            uint8_t *blk = row + b * TYPE_INFO[type].block_bytes; /* d first, then m where there is one */
            memcpy(blk, &one, 2);
            if (type_has_offset(type)) memcpy(blk + 2, &one, 2);
        }
        CHECK(dot_quant(row, type, a, B * QK) == dot_block32_ref(row, type, a, B * QK),
              "%s with unit scales: the kernel in use gives the bits of the scalar reference", type_name(type));
    }
    /* Q8_K activations as ggml makes them: the largest magnitude becomes -127 and d = max / -127; the sums of 16 add up. */
    float v[QK_K];
    for (int i = 0; i < QK_K; i++) v[i] = (float)(i % 7) - 3.0f;
    v[100] = 5.0f;
    BlockQ8K q;
    K->quantize_row_q8k(v, &q, QK_K);
    int sums_ok = 1;
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int i = 0; i < 16; i++) s += q.qs[16 * g + i];
        sums_ok &= s == q.bsums[g];
    }
    CHECK(q.qs[100] == -127 && q.d == 1 / (-127.0f / 5.0f) && q.qs[3] == 0 && sums_ok,
          "q8_K activations: the largest value maps to -127, d = 1 / (-127 / max), bsums are the sums of 16");
}

/* ./export's quantizers for q5_0, q4_k and q6_k: each value within half a
   step of its level, where the step and offset are the block's as stored
   (superblock_scales), except the few beyond the outermost levels; and the
   error overall below q4_0's (q4_k) and q5_0's (q6_k), the point of them. */
static void test_quantizers(void) {
    enum { N = 8192 };
    static float x[N], y[N];
    static uint8_t row[N * 4]; /* room for any type (quantize_row's f32 case) */
    fill(x, N, 0.02f);
    for (int i = 0; i < N; i += 997) x[i] *= 6; /* outliers */
    const int types[] = {TYPE_Q4_0, TYPE_Q5_0, TYPE_Q4_K, TYPE_Q6_K};
    double rms[4];
    for (int ti = 0; ti < 4; ti++) {
        int type = types[ti], bad = 0, clamped = 0;
        switch (type) { /* quantize_row's cases, called directly: the float ones inlined here make GCC warn */
        case TYPE_Q4_0: quantize_row_q4_0(x, (BlockQ4_0 *)row, N); break;
        case TYPE_Q5_0: quantize_row_q5_0(x, (BlockQ5_0 *)row, N); break;
        case TYPE_Q4_K: quantize_row_q4_k(x, (BlockQ4_K *)row, N); break;
        default: quantize_row_q6_k(x, (BlockQ6_K *)row, N); break;
        }
        for (int64_t b = 0; b < N / type_block(type); b++) /* a block at a time: the whole row inlined here makes GCC warn about the float cases */
            dequantize_row(type, row + b * type_row_bytes(type, type_block(type)), y + b * type_block(type), type_block(type));
        double e2 = 0, x2 = 0;
        for (int i = 0; i < N; i++) e2 += (double)(x[i] - y[i]) * (x[i] - y[i]), x2 += (double)x[i] * x[i];
        rms[ti] = sqrt(e2 / x2);
        if (type == TYPE_Q4_0) continue;
        for (int i = 0; i < N; i++) {
            float step, off = 0, lo, hi;
            if (type == TYPE_Q5_0) step = f16_to_f32(((const BlockQ5_0 *)row)[i / QK].d), lo = -16, hi = 15;
            else {
                int16_t sc[16], mn[16];
                float d, dmin;
                superblock_scales(row, type, i / QK_K, sc, mn, &d, &dmin);
                step = d * sc[i % QK_K / 16], off = dmin * mn[i % QK_K / 16];
                lo = type == TYPE_Q4_K ? 0 : -32, hi = type == TYPE_Q4_K ? 15 : 31;
            }
            float level = step != 0 ? (x[i] + off) / step : 0;
            if (level < lo - 0.5f || level > hi + 0.5f) { clamped++; continue; }
            if (fabsf(x[i] - y[i]) > fabsf(step) * 0.5f * 1.01f + 1e-7f) bad++;
        }
        CHECK(bad == 0 && clamped < N / 50, "%s quantizer: every value within half a step of its level (%d bad, %d beyond the outer levels, rel rms %.3f)",
              type_name(type), bad, clamped, rms[ti]);
    }
    CHECK(rms[2] < rms[0] && rms[3] < rms[1], "q4_k's error is below q4_0's (%.3f < %.3f), q6_k's below q5_0's (%.3f < %.3f)", rms[2], rms[0],
          rms[3], rms[1]);
}

int main(void) {
    test_neon_shims();
    test_quant_roundtrip();
    test_quantizers();
    for (int i = 0; i < KERNEL_LEVEL_COUNT; i++) {
        if (!kernels_available(i)) {
            printf("SKIP kernels %s: this CPU lacks it\n", KERNEL_LEVELS[i].kernels->name);
            continue;
        }
        K = KERNEL_LEVELS[i].kernels;
        printf("== kernels %s\n", K->name);
        test_softmax_exp();
        test_quantize_q8a();
        test_quantize_nonfinite();
        test_gemm_x8();
        test_dot_x4();
        test_gemm_float();
        test_half_conversions();
        test_dots();
        test_gguf_types();
    }
    return check_summary();
}
