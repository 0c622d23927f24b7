/* tempfile.h - writing a file so that it is never seen half-written.
 *
 * The file is written under a temporary name beside its final one, then
 * renamed over it (a rename within one folder replaces the old file at
 * once: a reader sees the old file or the new one, whole). Until then the
 * temporary file is removed when the program fails (tempfile_discard, from
 * the error path) or is stopped by SIGINT, SIGTERM or SIGHUP (a handler),
 * so neither a failed write nor Ctrl-C leaves "NAME.tmp.XXXXXX" behind.
 *
 *     int fd = tempfile_create(path);      // -1 with errno
 *     ... write to fd ...
 *     if (failed) tempfile_discard();
 *     else if (tempfile_commit(path)) ...  // -1 with errno; removed
 *
 * One temporary file at a time: ./export writes one output and ./run one
 * cache file after another. Used by export.c and run.c (the NBCE cache).
 */
#ifndef TEMPFILE_H
#define TEMPFILE_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The temporary file's path; the signal handler removes it while
   tempfile_live is set. */
static char tempfile_name[4096 + 16];
static volatile sig_atomic_t tempfile_live;

/* Only what is async-signal-safe: unlink, then die of the signal as the
   program would have without the handler (the parent sees which one). */
static void tempfile_on_signal(int sig) {
    if (tempfile_live) unlink(tempfile_name);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Installs the handler for the signals that stop a program by default. A
   signal the program was started with ignored (nohup, a background job)
   stays ignored, and a handler of the program's own is kept. */
static void tempfile_catch_signals(void) {
    static int installed;
    static const int signals[] = {SIGINT, SIGTERM, SIGHUP};
    if (installed) return;
    installed = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tempfile_on_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof signals / sizeof *signals; i++) sigaddset(&sa.sa_mask, signals[i]);
    for (size_t i = 0; i < sizeof signals / sizeof *signals; i++) {
        struct sigaction old;
        if (!sigaction(signals[i], NULL, &old) && old.sa_handler == SIG_DFL) sigaction(signals[i], &sa, NULL);
    }
}

/* Creates "final_path.tmp.XXXXXX", open for writing, with the permissions
   a new file gets (0666 less the umask; mkstemp makes it private). Returns
   its descriptor, or -1 with errno set. The path is registered before
   mkstemp creates the file, so there is no moment at which the file exists
   and a signal would not remove it. */
static int tempfile_create(const char *final_path) {
    tempfile_catch_signals();
    if (snprintf(tempfile_name, sizeof tempfile_name, "%s.tmp.XXXXXX", final_path) >= (int)sizeof tempfile_name) {
        errno = ENAMETOOLONG;
        return -1;
    }
    tempfile_live = 1;
    int fd = mkstemp(tempfile_name);
    if (fd < 0) {
        int e = errno;
        tempfile_live = 0;
        errno = e;
        return -1;
    }
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask);
    return fd;
}

/* The temporary file's path, for messages. */
static const char *tempfile_path(void) { return tempfile_name; }

/* Removes the temporary file, if one is registered. */
static void tempfile_discard(void) {
    if (!tempfile_live) return;
    unlink(tempfile_name);
    tempfile_live = 0;
}

/* Renames the written (and closed) temporary file over final_path. Returns 0,
   or -1 with errno set and the temporary file removed. */
static int tempfile_commit(const char *final_path) {
    if (rename(tempfile_name, final_path)) {
        int e = errno;
        tempfile_discard();
        errno = e;
        return -1;
    }
    tempfile_live = 0;
    return 0;
}

#endif
