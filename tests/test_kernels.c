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

static void test_half_conversions(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = f16_to_f32_soft((uint16_t)h), b = f16_to_f32((uint16_t)h);
        if (memcmp(&a, &b, 4) && !(isnan(a) && isnan(b))) bad++;
        if (!isnan(a) && f32_to_f16_soft(a) != h) bad++; /* every finite half survives a round trip */
    }
    CHECK(bad == 0, "f16 <-> f32: all 65536 halves convert and round-trip (%d bad)", bad);
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        float x = randn() * (float)pow(2, (int)(randn() * 8));
        if (f32_to_f16_soft(x) != f32_to_f16(x)) bad++;
        /* nearest: no other half is closer */
        uint16_t h = f32_to_f16_soft(x);
        float y = f16_to_f32_soft(h);
        if (fabsf(y) < 65504 && fabsf(x - y) > fabsf(x) * (1.0f / 2048) + 6e-8f) bad++;
    }
    float specials[] = {0.0f, -0.0f, 65504.0f, 65520.0f, 1e-8f, 5.96e-8f, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof specials / sizeof *specials; i++)
        if (f32_to_f16_soft(specials[i]) != f32_to_f16(specials[i])) bad++;
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
    quantize_row_q8a(x, qa, N);
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
    const int lengths[] = {32, 64, 96, 172, 1000, 2048, 5632};
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
                    quantize_row_q8a(x, xq, n);
                    for (int i = 0; i < n; i++) xd[i] = xq[i / QK].qs[i % QK] * xq[i / QK].d;
                }
                double mag, want = dot_double(wd, xd, n, &mag);
                float got, ref;
                switch (type) {
                case TYPE_F32: got = dot_float(wq, type, x, n); ref = dot_f32_ref(wq, x, n); break;
                case TYPE_F16: got = dot_float(wq, type, x, n); ref = dot_f16_ref(wq, x, n); break;
                case TYPE_BF16: got = dot_float(wq, type, x, n); ref = dot_bf16_ref(wq, x, n); break;
                case TYPE_Q8_0: got = dot_quant(wq, type, xq, n); ref = dot_q8_0_ref(wq, xq, n); break;
                default: got = dot_quant(wq, type, xq, n); ref = dot_q4_0_ref(wq, xq, n); break;
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
    CHECK(dot_quant(w, TYPE_Q8_0, a, 4 * QK) == dot_q8_0_ref(w, a, 4 * QK), "q8_0 dot at the int8 extremes is exact");
}

/* The four-token kernel gives each token the bits the one-token kernel gives. */
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
            quantize_row_q8a(x[k], xq + k * B, N);
        }
        quantize_row_q8_0(w, w8, N);
        quantize_row_q4_0(w, w4, N);
        const void *rows[2] = {w8, w4};
        const int types[2] = {TYPE_Q8_0, TYPE_Q4_0};
        for (int i = 0; i < 2; i++) {
            float out[4];
            dot_quant_x4(rows[i], types[i], xq, B, N, out);
            for (int k = 0; k < 4; k++) {
                float one = dot_quant(rows[i], types[i], xq + k * B, N);
                same &= !memcmp(&one, &out[k], sizeof one);
            }
        }
    }
    CHECK(same, "q8_0 and q4_0: four tokens at once == one at a time, bit for bit");
    same = 1;
    const int lengths[] = {172, 2048, 100, 8};
    for (int type = TYPE_F32; type <= TYPE_BF16; type++)
        for (int li = 0; li < 4; li++) {
            int n = lengths[li];
            uint16_t wh[N];
            fill(w, n, 0.05f);
            for (int k = 0; k < 4; k++) fill(x[k], n, 1.0f);
            quantize_row(type, w, type == TYPE_F32 ? (void *)w : (void *)wh, n);
            const void *row = type == TYPE_F32 ? (const void *)w : (const void *)wh;
            float out[4];
            dot_float_x4(row, type, x[0], N, n, out);
            for (int k = 0; k < 4; k++) {
                float one = dot_float(row, type, x[k], n);
                same &= !memcmp(&one, &out[k], sizeof one);
            }
        }
    CHECK(same, "f32, f16 and bf16: four tokens at once == one at a time, bit for bit (rows of 8 to 2048)");
}

int main(void) {
    test_dot_x4();
    test_half_conversions();
    test_quant_roundtrip();
    test_dots();
    return check_summary();
}
