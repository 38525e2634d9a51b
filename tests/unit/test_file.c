/* test_file.c — io/file.h, the one way strata replaces a file: a process
 * killed (SIGKILL) at any moment of a replacement leaves the previous file
 * complete under its name, or the complete new one, never a mix or a
 * truncation; mkdir -p makes every level and refuses a file on the way. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../io/file.h"

/* 4 MiB versions: a write of one takes long enough to be killed inside. */
#define VERSION_BYTES ((size_t)4 << 20)
#define PIECE         ((size_t)64 << 10)

static char dir[PATH_MAX];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "%s/strata-test-file-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Reads the whole of path (NULL if missing); *n its size. */
static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(VERSION_BYTES + 2);
    assert_non_null(buf);
    *n = fread(buf, 1, VERSION_BYTES + 1, f);
    fclose(f);
    return buf;
}

/* Version v of the file: VERSION_BYTES bytes, each (v + i / PIECE) % 251,
 * so a mix of two versions or a torn end can be told from either. */
static void fill_version(char *buf, int v)
{
    for (size_t i = 0; i < VERSION_BYTES; i++) buf[i] = (char)((v + i / PIECE) % 251);
}

/* Which version path holds (-1: none, a mix, or a torn one). */
static int version_of(const char *path)
{
    size_t n = 0;
    char *buf = slurp(path, &n);
    if (!buf || n != VERSION_BYTES) {
        free(buf);
        return -1;
    }
    int v = (unsigned char)buf[0];
    for (size_t i = 0; i < VERSION_BYTES; i++)
        if ((unsigned char)buf[i] != (unsigned char)((v + i / PIECE) % 251)) {
            free(buf);
            return -1;
        }
    free(buf);
    return v;
}

static int count_temporaries(void)
{
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -c '\\.tmp-' > '%s/count'", dir, dir);
    if (system(cmd) < 0) return -1;
    char path[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/count", dir);
    FILE *f = fopen(path, "r");
    int n = -1;
    if (f && fscanf(f, "%d", &n) != 1) n = -1;
    if (f) fclose(f);
    unlink(path);
    return n;
}

static void test_write_atomic_replaces(void **state)
{
    (void)state;
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/a.txt", dir);
    assert_int_equal(strata_write_atomic(path, "old\n", 4).code, 0);
    assert_int_equal(strata_write_atomic(path, "newer\n", 6).code, 0);
    size_t n = 0;
    char *got = slurp(path, &n);
    assert_non_null(got);
    assert_int_equal(n, 6);
    assert_memory_equal(got, "newer\n", 6);
    free(got);
    assert_int_equal(count_temporaries(), 0);
}

/* A failed write (the directory is gone) reports the path and leaves no file. */
static void test_write_into_missing_dir_fails(void **state)
{
    (void)state;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/no/such/a.txt", dir);
    strata_err e = strata_write_atomic(path, "x", 1);
    assert_int_equal(e.code, STRATA_EFAIL);
    assert_non_null(strstr(e.msg, "no/such/a.txt: cannot create"));
}

/* Abort keeps the old file and removes the temporary one. */
static void test_abort_keeps_old(void **state)
{
    (void)state;
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/b.txt", dir);
    assert_int_equal(strata_write_atomic(path, "old\n", 4).code, 0);
    strata_out_file o;
    assert_int_equal(strata_out_open(&o, path).code, 0);
    strata_out_write(&o, "half", 4);
    strata_out_abort(&o);
    size_t n = 0;
    char *got = slurp(path, &n);
    assert_int_equal(n, 4);
    assert_memory_equal(got, "old\n", 4);
    free(got);
    assert_int_equal(count_temporaries(), 0);
}

/* The child replaces path with versions first, first+1, ... forever; after
 * each piece it may tell the parent how far it got (one byte on fd). */
static void writer_child(const char *path, int first, int fd)
{
    char *buf = malloc(VERSION_BYTES);
    if (!buf) _exit(3);
    for (int v = first;; v++) {
        fill_version(buf, v % 251);
        strata_out_file o;
        if (strata_out_open(&o, path).code) _exit(4);
        for (size_t off = 0; off < VERSION_BYTES; off += PIECE) {
            strata_out_write(&o, buf + off, PIECE);
            if (fd >= 0 && off == VERSION_BYTES / 2 && write(fd, "h", 1) != 1) _exit(5);
        }
        if (strata_out_finish(&o).code) _exit(6);
        if (fd >= 0 && write(fd, "d", 1) != 1) _exit(5);
    }
}

/* Kills a writer (SIGKILL) halfway through its data, and at random moments
 * (inside a write, the fsync, the rename, between two files): every time the
 * name holds one complete version, the old one or one the child finished. */
static void test_kill_leaves_a_whole_file(void **state)
{
    (void)state;
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/state.bin", dir);
    char *buf = malloc(VERSION_BYTES);
    assert_non_null(buf);
    fill_version(buf, 7);
    assert_int_equal(strata_write_atomic(path, buf, VERSION_BYTES).code, 0);
    free(buf);
    srand(12345);
    int seen_old = 0, seen_new = 0;
    for (int round = 0; round < 24; round++) {
        int before = version_of(path);
        assert_true(before >= 0);
        int p[2];
        assert_int_equal(pipe(p), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            writer_child(path, 100 + 10 * round, p[1]);
        }
        close(p[1]);
        char c = 0;
        if (round % 2 == 0) {
            /* halfway through the data of the first new version */
            assert_int_equal(read(p[0], &c, 1), 1);
            assert_int_equal(c, 'h');
        } else {
            /* anywhere: 0 to ~60 ms in, through several whole versions */
            struct timespec ts = {0, (long)(rand() % 60) * 1000000L};
            nanosleep(&ts, NULL);
        }
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        close(p[0]);
        int after = version_of(path);
        if (after < 0) fail_msg("round %d: %s is torn after a kill", round, path);
        if (round % 2 == 0) {
            /* killed before its first finish: the old file, untouched */
            assert_int_equal(after, before);
            seen_old++;
        } else {
            /* or one this child finished: first, first + 1, ... (mod 251) */
            int first = (100 + 10 * round) % 251;
            assert_true(after == before || (after - first + 251) % 251 < 100);
            seen_new += after != before;
        }
    }
    assert_int_equal(seen_old, 12);
    (void)seen_new; /* how many random kills came after a finish varies with the machine */
}

static void test_mkdir_p(void **state)
{
    (void)state;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/x/y//z/", dir);
    assert_int_equal(strata_mkdir_p(path).code, 0);
    assert_int_equal(strata_mkdir_p(path).code, 0); /* existing: fine */
    struct stat sb;
    snprintf(path, sizeof path, "%s/x/y/z", dir);
    assert_int_equal(stat(path, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));

    snprintf(path, sizeof path, "%s/x/y/z/file.txt", dir);
    assert_int_equal(strata_mkdir_parent(path).code, 0);
    assert_int_equal(strata_write_atomic(path, "f", 1).code, 0);
    /* a file where a directory should be: bad input, naming it */
    strata_err e = strata_mkdir_p(path);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "file.txt: not a directory"));
    snprintf(path, sizeof path, "%s/x/y/z/file.txt/deeper", dir);
    e = strata_mkdir_p(path);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "file.txt"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_atomic_replaces),
        cmocka_unit_test(test_write_into_missing_dir_fails),
        cmocka_unit_test(test_abort_keeps_old),
        cmocka_unit_test(test_kill_leaves_a_whole_file),
        cmocka_unit_test(test_mkdir_p),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
