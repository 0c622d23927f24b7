/* replay.c - a main for the fuzz targets without libFuzzer: runs every file
   named (or every file in a folder named) through LLVMFuzzerTestOneInput
   once. make test replays the seeds and the regression inputs this way with
   the normal compiler; a broken promise aborts with the file's name. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <limits.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "replay: cannot open %s\n", path); return 1; }
    size_t cap = 1 << 16, n = 0, got;
    uint8_t *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0)
        if ((n += got) == cap) buf = realloc(buf, cap *= 2);
    fclose(f);
    if (!buf) { fprintf(stderr, "replay: out of memory\n"); return 1; }
    fprintf(stdout, "replay: %s\n", path); /* the last one named is the one that failed */
    fflush(stdout);
    uint8_t *copy = malloc(n ? n : 1); /* exactly n bytes, so ASan sees a read past the input */
    memcpy(copy, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(copy, n);
    free(copy);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

int main(int argc, char **argv) {
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    int failed = 0, count = 0;
    for (int i = 1; i < argc; i++) /* absolute: the targets work in their scratch folder */
        if (!(argv[i] = realpath(argv[i], NULL))) { perror("replay"); return 1; }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        stat(argv[i], &st);
        if (!S_ISDIR(st.st_mode)) {
            failed |= replay_file(argv[i]);
            count++;
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, NULL, by_name);
        for (int k = 0; k < n; k++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], names[k]->d_name);
            if (!stat(path, &st) && S_ISREG(st.st_mode)) {
                failed |= replay_file(path);
                count++;
            }
            free(names[k]);
        }
        free(n >= 0 ? names : NULL);
    }
    printf("replay: %d inputs, all kept the promises\n", count);
    return failed;
}
