/* dot_latency.c - how many independent vpdpbusd chains the int8 kernels need.
 *
 * Runs 8, 16 and 24 independent accumulator chains of 256- and 512-bit
 * vpdpbusd and prints instructions and multiply-adds per second: where more
 * chains run faster, one chain's latency, not the unit's throughput, sets
 * the pace (kernels_simd.h: gemm_x16_tile_avx512 keeps two chains a token).
 * Needs AVX-512 VNNI.   cc -O2 -o dot_latency bench/dot_latency.c && ./dot_latency
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
enum { STEPS = 200000000, MAX_CHAINS = 24 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The asm keeps the operands in registers and the compiler from folding the loop. */
#define CHAINS(NAME, V, ZERO, SET1, DP, REG)                                                 \
    static TARGET double NAME(int n) {                                                       \
        V acc[MAX_CHAINS], u = SET1(3), s = SET1(5);                                         \
        for (int j = 0; j < n; j++) acc[j] = ZERO();                                         \
        double t = now();                                                                    \
        for (long i = 0; i < STEPS / n; i++) {                                               \
            for (int j = 0; j < n; j++) acc[j] = DP(acc[j], u, s);                           \
            __asm__("" : "+" REG(u));                                                        \
        }                                                                                    \
        t = now() - t;                                                                       \
        for (int j = 0; j < n; j++) __asm__("" : : REG(acc[j]));                             \
        return t;                                                                            \
    }
CHAINS(chains_256, __m256i, _mm256_setzero_si256, _mm256_set1_epi8, _mm256_dpbusd_epi32, "v")
CHAINS(chains_512, __m512i, _mm512_setzero_si512, _mm512_set1_epi8, _mm512_dpbusd_epi32, "v")

int main(void) {
    if (!__builtin_cpu_supports("avx512vnni")) {
        fprintf(stderr, "error: this CPU has no AVX-512 VNNI\n");
        return 1;
    }
    const int counts[] = {8, 16, 24};
    for (int c = 0; c < 3; c++) {
        int n = counts[c];
        double t256 = chains_256(n), t512 = chains_512(n);
        double steps = (double)(STEPS / n) * n;
        printf("%2d chains: 256-bit %.2f G/s (%.0f G multiply-adds/s), 512-bit %.2f G/s (%.0f G multiply-adds/s)\n", n,
               steps / t256 / 1e9, steps * 32 / t256 / 1e9, steps / t512 / 1e9, steps * 64 / t512 / 1e9);
    }
    return 0;
}
