/* check.h - the tests' one way of reporting: a line per check, then a
 * summary line "N passed, N failed" that tests/run_tests.sh adds up. */
#ifndef CHECK_H
#define CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_passed, check_failed;

static void check_report(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf(ok ? "PASS " : "FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (ok) check_passed++;
    else check_failed++;
}

#define CHECK(cond, ...) check_report(!!(cond), __VA_ARGS__)

static int check_summary(void) {
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}

/* The shared assets folder: argv[1], or ../shared/assets. Returns NULL (and
   reports a skip) when it is missing; under CI=true that is a failure. */
static const char *assets_dir(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "../shared/assets";
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/PROVENANCE.md", dir);
    FILE *f = fopen(probe, "rb");
    if (f) { fclose(f); return dir; }
    const char *ci = getenv("CI");
    if (ci && !strcmp(ci, "true")) CHECK(0, "assets not found at %s (required when CI=true)", dir);
    else printf("SKIP assets not found at %s\n", dir);
    return NULL;
}

#endif
