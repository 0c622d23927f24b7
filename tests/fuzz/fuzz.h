/* fuzz.h - what every fuzz target shares (tests/fuzz/README.md).
 *
 * The engine's sources are compiled with `-include tests/fuzz/fuzz.h`, which
 * routes their allocations, open files and folders, mappings, exit() and the
 * core count through the tracker in fuzz.c. That is what lets one process run
 * millions of inputs through code written to end in exit(1):
 *   - exit() jumps back to the target (fuzz_call), so an error is a return;
 *   - whatever the input left behind (its memory, files, mappings) is
 *     released after it, so the next input starts from nothing;
 *   - a library call that returns without releasing what it took is a leak,
 *     reported as a crash (fuzz_expect_clean);
 *   - the machine has one core, so no thread pool outlives an input.
 * fuzz.c itself is compiled with FUZZ_TRACKER and sees the real functions.
 */
#ifndef FUZZ_H
#define FUZZ_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

void *fuzz_malloc(size_t n);
void *fuzz_calloc(size_t n, size_t size);
void *fuzz_realloc(void *p, size_t n);
void fuzz_free(void *p);
char *fuzz_strdup(const char *s);
char *fuzz_strndup(const char *s, size_t n);
int fuzz_posix_memalign(void **p, size_t align, size_t n);
FILE *fuzz_fopen(const char *path, const char *mode);
FILE *fuzz_fdopen(int fd, const char *mode);
FILE *fuzz_open_memstream(char **buf, size_t *len);
int fuzz_fclose(FILE *f);
DIR *fuzz_opendir(const char *path);
int fuzz_closedir(DIR *d);
void *fuzz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int fuzz_munmap(void *addr, size_t len);
long fuzz_sysconf(int name);
_Noreturn void fuzz_exit(int status);

#ifndef FUZZ_TRACKER
#define malloc fuzz_malloc
#define calloc fuzz_calloc
#define realloc fuzz_realloc
#define free fuzz_free
#define strdup fuzz_strdup
#define strndup fuzz_strndup
#define posix_memalign fuzz_posix_memalign
#define fopen fuzz_fopen
#define fdopen fuzz_fdopen
#define open_memstream fuzz_open_memstream
#define fclose fuzz_fclose
#define opendir fuzz_opendir
#define closedir fuzz_closedir
#define mmap fuzz_mmap
#define munmap fuzz_munmap
#define sysconf fuzz_sysconf
#define exit fuzz_exit
#endif

/* ---- what the targets use ---------------------------------------------- */

/* An input as a command line and files. The text before the first line that
   starts with "%% " is the argument list, one argument per line; each
   "%% NAME" line starts a file NAME (a relative path; "-" is standard input)
   holding every byte up to the next "\n%% " or the end of the input. */
#define FUZZ_MAX_ARGS 64
typedef struct {
    int argc;
    char *argv[FUZZ_MAX_ARGS + 2];
    const char *stdin_data;
    size_t stdin_len;
} FuzzInput;

/* Empties the scratch folder (the current directory of every target, under
   $TMPDIR), then splits data into f and writes its files there. Returns 0,
   or -1 when the input does not describe a command (too many arguments, a
   file name leaving the folder): such inputs are skipped. */
int fuzz_unpack(FuzzInput *f, const uint8_t *data, size_t size);
void fuzz_input_free(FuzzInput *f);

/* Runs fn(argc, argv) as a program: standard input from f, standard output
   discarded, standard error kept. Returns the exit status (the return value
   of fn or the status given to exit). Then checks the promise: status 0 or 1;
   status 1 with exactly one line that starts with "error: ", the last one,
   with no control characters; status 0 without one. Everything the program
   left behind is released. FUZZ_SHOW=1 in the environment prints the
   status and what the program wrote to standard error. */
int fuzz_call(int (*fn)(int, char **), const FuzzInput *f);

/* What the target holds for good (vocabularies loaded once) is not the
   next input's: forget it. */
void fuzz_keep_held(void);

/* After a library call: nothing it allocated, opened or mapped is still held. */
void fuzz_expect_clean(const char *what);

/* An error message a library function wrote: one line, not empty, no control
   characters. */
void fuzz_expect_error_line(const char *what, const char *err);

/* Writes data to NAME in the scratch folder (emptied first). */
void fuzz_write_file(const char *name, const uint8_t *data, size_t size);

/* The file a target names at build time, by absolute path (FUZZ_ROOT is the
   repository). */
#define FUZZ_PATH(rel) FUZZ_ROOT "/" rel

_Noreturn void fuzz_fail(const char *fmt, ...);

#endif
