/* fuzz.c - the tracker and the harness behind fuzz.h. */
#define FUZZ_TRACKER
#include "fuzz.h"

#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <sys/stat.h>

_Noreturn void fuzz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz: ", stdout);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(ap);
    abort(); /* libFuzzer saves the input */
}

/* ---- the tracker: one open-addressing table of what inputs hold --------- */

enum { HELD_HEAP = 1, HELD_FILE, HELD_DIR, HELD_MAP };
typedef struct {
    void *p; /* NULL: empty slot; (void *)1: deleted */
    size_t len;
    int kind;
} Held;
static Held *held;
static size_t held_cap, held_used, held_live; /* slots, slots not empty, live entries */
#define DELETED ((void *)1)

static size_t slot_of(const void *p) { return ((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull & (held_cap - 1); }

static void track(void *p, int kind, size_t len);
static void grow(void) {
    Held *old = held;
    size_t old_cap = held_cap;
    held_cap = held_cap ? held_cap * 2 : 1024;
    held = calloc(held_cap, sizeof *held);
    if (!held) fuzz_fail("the tracker is out of memory");
    held_used = held_live = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].p && old[i].p != DELETED) track(old[i].p, old[i].kind, old[i].len);
    free(old);
}

static void track(void *p, int kind, size_t len) {
    if (!p) return;
    if ((held_used + 1) * 2 > held_cap) grow();
    size_t i = slot_of(p);
    while (held[i].p && held[i].p != DELETED) i = (i + 1) & (held_cap - 1);
    if (!held[i].p) held_used++;
    held[i] = (Held){p, len, kind};
    held_live++;
}

/* Forgets p; returns its kind (0: not tracked, e.g. a buffer getline made). */
static int untrack(void *p) {
    if (!p || !held_cap) return 0;
    for (size_t i = slot_of(p); held[i].p; i = (i + 1) & (held_cap - 1))
        if (held[i].p == p) {
            int kind = held[i].kind;
            held[i].p = DELETED;
            held_live--;
            return kind;
        }
    return 0;
}

void *fuzz_malloc(size_t n) { void *p = malloc(n); track(p, HELD_HEAP, n); return p; }
void *fuzz_calloc(size_t n, size_t size) { void *p = calloc(n, size); track(p, HELD_HEAP, n * size); return p; }
void *fuzz_realloc(void *p, size_t n) {
    int was_held = untrack(p); /* before: once realloc succeeds, p may not be looked at */
    void *q = realloc(p, n);
    if (q) track(q, HELD_HEAP, n);
    else if (n && was_held) track(p, HELD_HEAP, 0); /* failed: p is still the caller's */
    return q;
}
void fuzz_free(void *p) { untrack(p); free(p); }
char *fuzz_strdup(const char *s) { char *p = strdup(s); track(p, HELD_HEAP, 0); return p; }
char *fuzz_strndup(const char *s, size_t n) { char *p = strndup(s, n); track(p, HELD_HEAP, 0); return p; }
int fuzz_posix_memalign(void **p, size_t align, size_t n) {
    int r = posix_memalign(p, align, n);
    if (!r) track(*p, HELD_HEAP, n);
    return r;
}
FILE *fuzz_fopen(const char *path, const char *mode) { FILE *f = fopen(path, mode); track(f, HELD_FILE, 0); return f; }
FILE *fuzz_fdopen(int fd, const char *mode) { FILE *f = fdopen(fd, mode); track(f, HELD_FILE, 0); return f; }
FILE *fuzz_open_memstream(char **buf, size_t *len) { FILE *f = open_memstream(buf, len); track(f, HELD_FILE, 0); return f; }
int fuzz_fclose(FILE *f) { untrack(f); return fclose(f); }
DIR *fuzz_opendir(const char *path) { DIR *d = opendir(path); track(d, HELD_DIR, 0); return d; }
int fuzz_closedir(DIR *d) { untrack(d); return closedir(d); }
void *fuzz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    void *p = mmap(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED) track(p, HELD_MAP, len);
    return p;
}
int fuzz_munmap(void *addr, size_t len) { untrack(addr); return munmap(addr, len); }
long fuzz_sysconf(int name) { return name == _SC_NPROCESSORS_ONLN ? 1 : sysconf(name); }

/* Releases everything still held; returns how many things were. */
static size_t release_all(void) {
    size_t n = held_live;
    for (int pass = 0; pass < 2; pass++) /* files and folders first: a memstream's buffer is heap */
        for (size_t i = 0; i < held_cap; i++) {
            Held h = held[i];
            if (!h.p || h.p == DELETED || (pass == 0) != (h.kind == HELD_FILE || h.kind == HELD_DIR)) continue;
            held[i].p = DELETED;
            held_live--;
            if (h.kind == HELD_HEAP) free(h.p);
            else if (h.kind == HELD_FILE) fclose(h.p);
            else if (h.kind == HELD_DIR) closedir(h.p);
            else munmap(h.p, h.len);
        }
    fuzz_keep_held(); /* the table is empty now: clear its deleted slots */
    return n;
}

/* File descriptors an input opened with open() and did not close. */
static void close_new_fds(int first_free) {
    for (int fd = first_free; fd < first_free + 256; fd++) close(fd);
}

void fuzz_keep_held(void) {
    if (held) memset(held, 0, held_cap * sizeof *held);
    held_used = held_live = 0;
}

void fuzz_expect_clean(const char *what) {
    size_t n = held_live;
    if (n) {
        release_all();
        fuzz_fail("%s returned holding %zu allocations, files or mappings", what, n);
    }
}

void fuzz_expect_error_line(const char *what, const char *err) {
    if (!err[0]) fuzz_fail("%s failed with an empty error message", what);
    for (const char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) fuzz_fail("%s: control character 0x%02x in the error line '%s'", what, *p, err);
}

/* ---- the scratch folder -------------------------------------------------- */

static char scratch[4096];
static int first_free_fd = -1;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag;
    if (ftw->level > 0) remove(path);
    return 0;
}

static void scratch_empty(void) {
    if (!scratch[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(scratch, sizeof scratch, "%s/fuzz-scratch.%ld", tmp && *tmp ? tmp : "/tmp", (long)getpid());
        if (mkdir(scratch, 0700) && errno != EEXIST) fuzz_fail("cannot make %s", scratch);
        int fd = dup(0);
        first_free_fd = fd;
        close(fd);
    }
    /* the input may have made the folder unreadable or changed directory */
    chmod(scratch, 0700);
    if (chdir(scratch)) fuzz_fail("cannot enter %s", scratch);
    nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void fuzz_write_file(const char *name, const uint8_t *data, size_t size) {
    scratch_empty();
    FILE *f = fopen(name, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f)) fuzz_fail("cannot write %s/%s", scratch, name);
}

static int write_member(const char *name, size_t name_len, const uint8_t *data, size_t size) {
    char path[256];
    if (!name_len || name_len >= sizeof path || name[0] == '/') return -1;
    memcpy(path, name, name_len);
    path[name_len] = 0;
    if (strstr(path, "..") || memchr(path, 0, name_len)) return -1;
    for (char *s = strchr(path, '/'); s; s = strchr(s + 1, '/')) { /* its folders */
        *s = 0;
        mkdir(path, 0700);
        *s = '/';
    }
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, size, f) == size;
    return fclose(f) || !ok ? -1 : 0;
}

int fuzz_unpack(FuzzInput *f, const uint8_t *data, size_t size) {
    memset(f, 0, sizeof *f);
    scratch_empty();
    const uint8_t *end = data + size, *p = data;
    /* the arguments: lines up to the first "%% " line */
    f->argv[f->argc++] = strdup("prog");
    while (p < end && !(end - p >= 3 && !memcmp(p, "%% ", 3))) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        const uint8_t *line_end = nl ? nl : end;
        if (f->argc > FUZZ_MAX_ARGS) goto skip;
        f->argv[f->argc++] = strndup((const char *)p, (size_t)(line_end - p)); /* a NUL inside shortens it */
        p = nl ? nl + 1 : end;
    }
    /* the files */
    while (p < end) {
        const uint8_t *name = p + 3, *nl = memchr(name, '\n', (size_t)(end - name));
        const uint8_t *body = nl ? nl + 1 : end, *next = body;
        while (next < end && !(end - next >= 4 && !memcmp(next, "\n%% ", 4))) next++;
        size_t name_len = (size_t)((nl ? nl : end) - name), body_len = (size_t)(next - body);
        if (name_len == 1 && name[0] == '-') f->stdin_data = (const char *)body, f->stdin_len = body_len;
        else if (write_member((const char *)name, name_len, body, body_len)) goto skip;
        p = next < end ? next + 1 : end;
    }
    return 0;
skip:
    fuzz_input_free(f);
    return -1;
}

void fuzz_input_free(FuzzInput *f) {
    for (int i = 0; i < f->argc; i++) free(f->argv[i]);
    f->argc = 0;
}

/* ---- running a program --------------------------------------------------- */

static jmp_buf exit_jump;
static int exit_status, in_call;

_Noreturn void fuzz_exit(int status) {
    if (!in_call) exit(status);
    exit_status = status;
    longjmp(exit_jump, 1);
}

int fuzz_call(int (*fn)(int, char **), const FuzzInput *f) {
    char *err_text = NULL, *argv[FUZZ_MAX_ARGS + 2];
    size_t err_len = 0;
    int argc = f->argc;
    memcpy(argv, f->argv, sizeof(char *) * (size_t)argc);
    argv[argc] = NULL;
    FILE *saved_in = stdin, *saved_out = stdout, *saved_err = stderr;
    FILE *in = fmemopen((void *)(f->stdin_data ? f->stdin_data : ""), f->stdin_len, "r");
    FILE *out = fopen("/dev/null", "w"), *err = open_memstream(&err_text, &err_len);
    if (!in || !out || !err) fuzz_fail("cannot set up the standard streams");
    stdin = in, stdout = out, stderr = err;
    in_call = 1;
    if (!setjmp(exit_jump)) exit_status = fn(argc, argv);
    in_call = 0;
    stdin = saved_in, stdout = saved_out, stderr = saved_err;
    release_all();
    fclose(in);
    fclose(out);
    fclose(err);
    close_new_fds(first_free_fd);
    if (chdir(scratch)) fuzz_fail("cannot enter %s", scratch);

    int status = exit_status, errors = 0;
    if (getenv("FUZZ_SHOW")) fprintf(stderr, "status %d, stderr:\n%s", status, err_text ? err_text : "");
    const char *last = NULL;
    for (char *line = err_text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (!strncmp(line, "error: ", 7)) errors++;
        last = line;
        if (!nl) break;
        line = nl + 1;
    }
    if (status != 0 && status != 1) fuzz_fail("exit status %d:\n%s", status, err_text);
    if (status == 1) {
        if (errors != 1 || strncmp(last, "error: ", 7))
            fuzz_fail("exit status 1 needs exactly one error line, the last; stderr was:\n%s", err_text);
        for (const char *c = last; *c && *c != '\n'; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) fuzz_fail("control character 0x%02x in the error line:\n%s", *c, last);
        if (last[strlen(last) - 1] != '\n') fuzz_fail("the error line does not end with a newline:\n%s", last);
    } else if (errors)
        fuzz_fail("exit status 0 with an error line:\n%s", err_text);
    free(err_text);
    return status;
}
