/* test_tempfile.c - checks tempfile.h: a committed file appears whole under
 * its final name, a discarded or failed one leaves nothing, and a program
 * stopped by SIGINT, SIGTERM or SIGHUP while it writes leaves no temporary
 * file behind and still dies of that signal.
 *
 * Each signal case runs in a child process (fork): the child creates its
 * temporary file, tells the parent through a pipe, and waits; the parent
 * sends the signal, then looks at how the child ended and what is left in
 * the folder. The folder is $TEST_TMP/tempfile (tests/tmp by default).
 */
#include "../tempfile.h"
#include "check.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[4096];

/* How many entries of dir start with prefix. */
static int count_entries(const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (!strncmp(de->d_name, prefix, strlen(prefix))) n++;
    closedir(d);
    return n;
}

static void path_in_dir(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", dir, name); }

/* A child that creates the temporary file for `name`, writes to it, says so
   on the pipe and waits to be signalled. Without ignore, the signal starts
   with its default action; with ignore, the signal is ignored
   before the file is made; the child then removes the file itself and exits
   with 0. */
static void signalled_child(const char *name, int sig, int ignore) {
    char final_path[4200];
    path_in_dir(final_path, sizeof final_path, name);
    int ready[2], go[2];
    if (pipe(ready) || pipe(go)) {
        CHECK(0, "pipe");
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        /* as a program started in the foreground, or with the signal ignored (a shell runs
           background jobs, make test-cross's among them, with SIGINT ignored) */
        signal(sig, ignore ? SIG_IGN : SIG_DFL);
        int fd = tempfile_create(final_path);
        if (fd < 0 || write(fd, "partial", 7) != 7) _exit(2);
        char c = 1;
        if (write(ready[1], &c, 1) != 1) _exit(3);
        if (read(go[0], &c, 1) != 1) _exit(4); /* blocks until the parent has signalled */
        tempfile_discard();
        _exit(0);
    }
    char c;
    int created = read(ready[0], &c, 1) == 1;
    int left_before = count_entries(name);
    kill(pid, sig);
    if (write(go[1], &c, 1) != 1) CHECK(0, "write to the child");
    int status;
    waitpid(pid, &status, 0);
    close(ready[0]), close(ready[1]), close(go[0]), close(go[1]);
    const char *signame = sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP";
    if (ignore) {
        CHECK(created && WIFEXITED(status) && WEXITSTATUS(status) == 0 && count_entries(name) == 0,
              "%s ignored before the file is made stays ignored: the program goes on and removes the file itself", signame);
    } else {
        CHECK(created && left_before == 1, "%s: the child's temporary file exists before the signal", signame);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == sig, "%s: the child dies of %s (status %#x)", signame, signame,
              status);
        CHECK(count_entries(name) == 0, "%s: no '%s.tmp.*' and no '%s' left", signame, name, name);
    }
}

static int read_back(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    int n = (int)fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

int main(void) {
    const char *tmp = getenv("TEST_TMP") ? getenv("TEST_TMP") : "tests/tmp";
    snprintf(dir, sizeof dir, "%s/tempfile", tmp);
    mkdir(tmp, 0777);
    mkdir(dir, 0777);
    DIR *d = opendir(dir); /* left from an earlier run */
    for (struct dirent *de; d && (de = readdir(d));) {
        char p[4400];
        path_in_dir(p, sizeof p, de->d_name);
        if (de->d_name[0] != '.') unlink(p);
    }
    if (d) closedir(d);
    umask(022);

    /* Signals first: each child starts as a program that has not made a
       temporary file yet (the handlers are installed by the first one). */
    signalled_child("int.bin", SIGINT, 0);
    signalled_child("term.bin", SIGTERM, 0);
    signalled_child("hup.bin", SIGHUP, 0);
    signalled_child("ignored.bin", SIGTERM, 1);

    /* commit: the final name, whole, with a new file's permissions */
    char final_path[4200], buf[64];
    path_in_dir(final_path, sizeof final_path, "out.bin");
    int fd = tempfile_create(final_path);
    CHECK(fd >= 0 && !strncmp(tempfile_path(), final_path, strlen(final_path)) &&
              !strncmp(tempfile_path() + strlen(final_path), ".tmp.", 5),
          "tempfile_create makes OUT.tmp.XXXXXX beside OUT (%s)", tempfile_path());
    CHECK(count_entries("out.bin.tmp.") == 1 && count_entries("out.bin") == 1, "only the temporary file exists while writing");
    CHECK(fd >= 0 && write(fd, "whole", 5) == 5 && !close(fd) && !tempfile_commit(final_path), "tempfile_commit succeeds");
    struct stat st;
    int have_stat = !stat(final_path, &st);
    CHECK(read_back(final_path, buf, sizeof buf) == 5 && !memcmp(buf, "whole", 5) && count_entries("out.bin") == 1,
          "after the commit: OUT holds what was written, no temporary file is left");
    CHECK(have_stat && (st.st_mode & 0777) == 0644, "OUT has a new file's permissions under umask 022 (%o)",
          (unsigned)(st.st_mode & 0777));
    /* a commit replaces an older file at once */
    fd = tempfile_create(final_path);
    CHECK(fd >= 0 && write(fd, "newer!", 6) == 6 && !close(fd) && !tempfile_commit(final_path) &&
              read_back(final_path, buf, sizeof buf) == 6 && !memcmp(buf, "newer!", 6) && count_entries("out.bin") == 1,
          "a second commit replaces OUT");

    /* discard, and failures */
    path_in_dir(final_path, sizeof final_path, "dropped.bin");
    fd = tempfile_create(final_path);
    close(fd);
    tempfile_discard();
    CHECK(fd >= 0 && count_entries("dropped.bin") == 0, "tempfile_discard removes the temporary file");
    path_in_dir(final_path, sizeof final_path, "no/such/folder/x.bin");
    errno = 0;
    CHECK(tempfile_create(final_path) == -1 && errno == ENOENT && !tempfile_live,
          "tempfile_create in a missing folder: -1, ENOENT, nothing registered");
    path_in_dir(final_path, sizeof final_path, "busy");
    mkdir(final_path, 0777);
    char inside[4300];
    snprintf(inside, sizeof inside, "%s/keep", final_path);
    FILE *keep = fopen(inside, "wb"); /* a folder that is not empty cannot be renamed over */
    if (keep) fclose(keep);
    fd = tempfile_create(final_path);
    close(fd);
    CHECK(fd >= 0 && tempfile_commit(final_path) == -1 && count_entries("busy.tmp.") == 0 && !tempfile_live,
          "a commit that cannot rename: -1, and the temporary file is removed");
    unlink(inside);
    rmdir(final_path);

    /* a committed file is the program's output: a signal after the commit keeps it */
    pid_t pid = fork();
    path_in_dir(final_path, sizeof final_path, "kept.bin");
    if (pid == 0) {
        fd = tempfile_create(final_path);
        if (fd < 0 || close(fd) || tempfile_commit(final_path)) _exit(2);
        raise(SIGTERM);
        _exit(3);
    }
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM && count_entries("kept.bin") == 1 &&
              count_entries("kept.bin.tmp.") == 0,
          "SIGTERM after the commit: the program still dies of it, the committed file stays");
    return check_summary();
}
