/* fuzz_run: ./run's whole program on a fuzzed command line and files: its
   options, prompt files, chat input and --chat-history, chat templates, NBCE
   folders and cache files. The model "m" is a tiny Llama (FUZZ_MODEL); the
   input may name any file it brings. */
#define main run_main
#include "../../run.c"
#undef main

#include <errno.h>

/* Inputs whose work is unbounded are skipped, not run: a file outside the
   scratch folder (/dev/zero as a prompt), a thread count (the machine has one
   core here), or a number large enough to ask for a long generation. */
static int bounded(const FuzzInput *f) {
    for (int i = 1; i < f->argc; i++) {
        const char *a = f->argv[i];
        if (a[0] == '/' || strstr(a, "..") || !strcmp(a, "--threads")) return 0;
        char *end;
        errno = 0;
        long long v = strtoll(a, &end, 10);
        if (end != a && !*end && !errno && v >= 1000 && v <= INT_MAX) return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FuzzInput f;
    if (fuzz_unpack(&f, data, size)) return -1;
    if (bounded(&f)) {
        if (access("m", F_OK)) symlink(FUZZ_MODEL, "m");
        fuzz_call(run_main, &f);
    }
    fuzz_input_free(&f);
    return 0;
}
