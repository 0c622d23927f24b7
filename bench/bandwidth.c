/* Memory read bandwidth: THREADS threads each read their slice of one buffer
 * much larger than the caches, sequentially, with wide loads, PASSES times; a
 * sample is the bytes of one pass over the whole buffer divided by the time of
 * that pass (all threads start together and the pass ends when the slowest one
 * is done). Prints one line per sample, then the median, in GB/s (1e9 bytes/s).
 *
 *   cc -O2 -march=native -pthread -o bandwidth bench/bandwidth.c
 *   ./bandwidth [--threads N] [--mb SIZE] [--samples K] [--quiet]
 *
 *   --threads N   reader threads (default: online cores)
 *   --mb SIZE     buffer size in MiB (default 1024; keep it well above the last-level cache)
 *   --samples K   passes over the buffer, each timed (default 5; one untimed pass comes first)
 *   --quiet       print the median only
 *
 * What a decode step does is read the weights once, so this is the ceiling
 * that matters for decode: bench/compare.sh divides it by a step's bytes.
 * Standalone: used by the benchmark only, never by the engine or `make test`. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef uint64_t vec __attribute__((vector_size(32)));  /* 256-bit loads where the CPU has them */

static unsigned char *buf;
static size_t slice;   /* bytes per thread, a multiple of 8 vectors */
static int nthreads, passes;
static pthread_barrier_t start_bar, end_bar;
static volatile uint64_t sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sums the slice with eight independent accumulators so the loads, not the
 * adds, set the pace; the sum is kept so the compiler cannot drop the reads. */
static uint64_t read_slice(const unsigned char *p, size_t n) {
    const vec *v = (const vec *)p;
    size_t nv = n / sizeof(vec);
    vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
    for (size_t i = 0; i < nv; i += 8) {
        a0 += v[i]; a1 += v[i + 1]; a2 += v[i + 2]; a3 += v[i + 3];
        a4 += v[i + 4]; a5 += v[i + 5]; a6 += v[i + 6]; a7 += v[i + 7];
    }
    vec s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    return s[0] + s[1] + s[2] + s[3];
}

static void *worker(void *arg) {
    size_t t = (size_t)arg;
    unsigned char *p = buf + t * slice;
    memset(p, (int)t + 1, slice);  /* first touch by the thread that reads it */
    uint64_t s = 0;
    for (int k = 0; k <= passes; k++) {  /* pass 0 is untimed */
        pthread_barrier_wait(&start_bar);
        s += read_slice(p, slice);
        pthread_barrier_wait(&end_bar);
    }
    sink += s;
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long mb = 1024;
    int quiet = 0;
    nthreads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    passes = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) nthreads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atol(argv[++i]);
        else if (!strcmp(argv[i], "--samples") && i + 1 < argc) passes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quiet")) quiet = 1;
        else {
            fprintf(stderr, "usage: %s [--threads N] [--mb SIZE] [--samples K] [--quiet]\n", argv[0]);
            return 2;
        }
    }
    if (nthreads < 1 || mb < 1 || passes < 1) { fprintf(stderr, "bandwidth: bad arguments\n"); return 2; }
    size_t unit = 8 * sizeof(vec);
    slice = ((size_t)mb * 1048576 / nthreads) / unit * unit;
    size_t total = slice * nthreads;
    if (posix_memalign((void **)&buf, 4096, total)) { fprintf(stderr, "bandwidth: out of memory\n"); return 1; }

    pthread_barrier_init(&start_bar, NULL, nthreads + 1);
    pthread_barrier_init(&end_bar, NULL, nthreads + 1);
    pthread_t *th = malloc(sizeof *th * nthreads);
    for (int t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)(size_t)t);

    double *gbs = malloc(sizeof *gbs * passes);
    for (int k = 0; k <= passes; k++) {
        pthread_barrier_wait(&start_bar);
        double t0 = now();
        pthread_barrier_wait(&end_bar);
        double dt = now() - t0;
        if (k > 0) {
            gbs[k - 1] = total / dt / 1e9;
            if (!quiet) printf("sample %d: %.2f GB/s\n", k, gbs[k - 1]);
        }
    }
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    qsort(gbs, passes, sizeof *gbs, cmp);
    double med = passes % 2 ? gbs[passes / 2] : (gbs[passes / 2 - 1] + gbs[passes / 2]) / 2;
    if (quiet) printf("%.2f\n", med);
    else printf("median: %.2f GB/s (%d threads, %zu MiB, %d samples)\n", med, nthreads, total >> 20, passes);
    free(gbs); free(th); free(buf);
    return 0;
}
