/* test_loader.c — the loader hands each rank its slots of every global
 * batch, read ahead on a thread, the same batches as reading on demand,
 * waits for new shards when following, and reports what goes wrong. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <hdf5.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "strata/loader.h"
#include "strata/sampler.h"

static char dir[256];

enum { T = 16, G = 8 };

static const char *path_of(const char *name)
{
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* Token i of the shard with this seed: consecutive ids from a shard-specific
 * start, so a row shows which shard and offset it came from. */
static uint32_t tok(int seed, int64_t i, int vocab)
{
    return (uint32_t)((seed * 4099 + i) % vocab);
}

static void put_str(hid_t obj, const char *name, const char *v)
{
    hid_t sp = H5Screate(H5S_SCALAR), t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, v);
    H5Aclose(a);
    H5Tclose(t);
    H5Sclose(sp);
}

static void put_int(hid_t obj, const char *name, int64_t v)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Sclose(sp);
}

/* Writes a shard of n tokens; bad_at >= 0 puts an id >= vocab there. Written
 * under a temporary name and renamed, as a producer feeding a follower must. */
static void write_shard(const char *path, int seed, int64_t n, int vocab, const char *tokenizer,
                        int64_t bad_at)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims = (hsize_t)n, ck = 64;
    hid_t sp = H5Screate_simple(1, &dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, &ck);
    hid_t d = H5Dcreate2(f, "/tokens", H5T_STD_U16LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    uint32_t *t = malloc((size_t)n * sizeof *t);
    for (int64_t i = 0; i < n; i++) t[i] = i == bad_at ? (uint32_t)vocab : tok(seed, i, vocab);
    H5Dwrite(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, t);
    free(t);
    put_int(d, "vocab_size", vocab);
    put_int(d, "eot_token", -1);
    put_str(d, "tokenizer", tokenizer);
    put_str(d, "format", "strata-tokens-1");
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(sp);
    H5Fclose(f);
    assert_int_equal(rename(tmp, path), 0);
}

/* Atomically (a temporary file renamed over the old one), as a manifest
 * should be rewritten under a following run: an in-place rewrite can be read
 * half-done, empty even, by the loader's thread. */
static void write_text(const char *path, const char *text)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, path), 0);
}

/* The shards of the test's streams, to check rows against sample ids. */
typedef struct layout {
    int n;
    int seed[8];
    int64_t tokens[8];
} layout;

static const layout NEW = {3, {1, 2, 3}, {1000, 517, 2000}}; /* new.manifest */
static const layout OLD = {2, {11, 12}, {3000, 1500}};       /* old/ directory */

static void make_streams(void)
{
    write_shard(path_of("a.h5"), 1, 1000, 50000, "gpt2", -1);
    write_shard(path_of("b.h5"), 2, 517, 50000, "gpt2", -1);
    write_shard(path_of("c.h5"), 3, 2000, 50000, "gpt2", -1);
    write_text(path_of("new.manifest"), "# the new domain\na.h5\n\nb.h5   # short one\nc.h5\n");
    mkdir(path_of("old"), 0755);
    write_shard(path_of("old/x-000.h5"), 11, 3000, 50000, "gpt2", -1);
    write_shard(path_of("old/x-001.h5"), 12, 1500, 50000, "gpt2", -1);
    write_shard(path_of("old/x.val.h5"), 13, 500, 50000, "gpt2", -1); /* not part of the stream */
}

static strata_loader_config base_config(void)
{
    strata_loader_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.new_path, sizeof c.new_path, "%s", path_of("new.manifest"));
    snprintf(c.replay[0].path, sizeof c.replay[0].path, "%s", path_of("old"));
    c.replay[0].weight = 1.0;
    c.n_replay = 1;
    c.replay_ratio = 0.25;
    c.seq_len = T;
    c.vocab_size = 50257;
    c.seed = 42;
    c.global_batch = G;
    c.slot_begin = 0;
    c.slot_end = G;
    c.shuffle_window = 32;
    c.prefetch = 1;
    return c;
}

/* Checks every row holds the T+1 tokens its sample id names. */
static void check_rows(const strata_batch *b)
{
    for (int r = 0; r < b->n; r++) {
        int src = strata_sample_id_source(b->sample_id[r]);
        int64_t idx = strata_sample_id_index(b->sample_id[r]);
        const layout *l = src == 0 ? &NEW : &OLD;
        assert_int_equal(b->is_replay[r], src != 0);
        int k = 0;
        while (k < l->n && idx >= (l->tokens[k] - 1) / T) idx -= (l->tokens[k++] - 1) / T;
        assert_true(k < l->n);
        for (int i = 0; i <= T; i++)
            assert_int_equal(b->tokens[(size_t)r * (T + 1) + (size_t)i],
                             tok(l->seed[k], idx * T + i, 50000));
    }
}

static strata_loader *open_ok(const strata_loader_config *c)
{
    strata_loader *l = NULL;
    strata_err e = strata_loader_open(&l, c);
    if (e.code) fail_msg("loader_open: %s", e.msg);
    return l;
}

static void prefetch_returns_the_same_batches_as_reading_on_demand(void **state)
{
    strata_loader_config c = base_config();
    strata_loader *ahead = open_ok(&c);
    c.prefetch = 0;
    strata_loader *inline_ = open_ok(&c);
    int steps = (int)strata_loader_steps_available(ahead);
    assert_int_equal(steps, (999 / T + 516 / T + 1999 / T) / 6);
    for (long s = 0; s < steps; s++) {
        strata_batch *a, *b;
        int ex = 1;
        double wait = -1;
        assert_int_equal(strata_loader_get(ahead, s, &a, &ex, &wait).code, 0);
        assert_int_equal(ex, 0);
        assert_true(wait >= 0);
        assert_int_equal(strata_loader_get(inline_, s, &b, &ex, NULL).code, 0);
        assert_int_equal(a->step, s);
        assert_int_equal(a->n, G);
        assert_memory_equal(a->tokens, b->tokens, (size_t)G * (T + 1) * sizeof *a->tokens);
        assert_memory_equal(a->sample_id, b->sample_id, (size_t)G * sizeof *a->sample_id);
        check_rows(a);
        int replay = 0;
        for (int r = 0; r < G; r++) replay += a->is_replay[r];
        assert_int_equal(replay, 2);
    }
    /* Asked out of order (a resume), the answer is the same. */
    strata_batch *x;
    int ex;
    int64_t ids[G];
    assert_int_equal(strata_loader_get(ahead, 7, &x, &ex, NULL).code, 0);
    memcpy(ids, x->sample_id, sizeof ids);
    assert_int_equal(strata_loader_get(ahead, 2, &x, &ex, NULL).code, 0);
    assert_int_equal(strata_loader_get(ahead, 7, &x, &ex, NULL).code, 0);
    assert_memory_equal(ids, x->sample_id, sizeof ids);
    strata_loader_close(ahead);
    strata_loader_close(inline_);
}

static void each_rank_reads_its_slice_of_the_same_global_batch(void **state)
{
    strata_loader_config c = base_config();
    strata_loader *one = open_ok(&c);
    for (int W = 2; W <= 4; W++) {
        strata_loader *rank[4];
        for (int r = 0; r < W; r++) {
            c.slot_begin = r * G / W;
            c.slot_end = (r + 1) * G / W;
            rank[r] = open_ok(&c);
        }
        for (long s = 0; s < 20; s += 3) {
            strata_batch *all;
            int ex;
            assert_int_equal(strata_loader_get(one, s, &all, &ex, NULL).code, 0);
            int row = 0;
            for (int r = 0; r < W; r++) {
                strata_batch *b;
                assert_int_equal(strata_loader_get(rank[r], s, &b, &ex, NULL).code, 0);
                assert_int_equal(b->n, (r + 1) * G / W - r * G / W);
                assert_memory_equal(b->tokens, all->tokens + (size_t)row * (T + 1),
                                    (size_t)b->n * (T + 1) * sizeof *b->tokens);
                assert_memory_equal(b->sample_id, all->sample_id + row,
                                    (size_t)b->n * sizeof *b->sample_id);
                row += b->n;
            }
            assert_int_equal(row, G);
        }
        for (int r = 0; r < W; r++) strata_loader_close(rank[r]);
    }
    strata_loader_close(one);
}

static void the_run_ends_or_wraps_when_the_new_stream_is_used_up(void **state)
{
    strata_loader_config c = base_config();
    strata_loader *l = open_ok(&c);
    long n = strata_loader_steps_available(l);
    strata_batch *b;
    int ex = -1;
    assert_int_equal(strata_loader_get(l, n - 1, &b, &ex, NULL).code, 0);
    assert_int_equal(ex, 0);
    assert_int_equal(strata_loader_get(l, n, &b, &ex, NULL).code, 0);
    assert_int_equal(ex, 1);
    assert_null(b);
    strata_loader_close(l);
    c.wrap = 1;
    l = open_ok(&c);
    for (long s = n - 2; s < 3 * n; s += n / 3) {
        assert_int_equal(strata_loader_get(l, s, &b, &ex, NULL).code, 0);
        assert_int_equal(ex, 0);
        check_rows(b);
    }
    strata_loader_close(l);
}

typedef struct appender {
    int delay_ms;
} appender;

static void *append_shard(void *arg)
{
    appender *a = arg;
    usleep((useconds_t)a->delay_ms * 1000);
    write_shard(path_of("f-2.h5"), 22, 1200, 50000, "gpt2", -1);
    FILE *f = fopen(path_of("follow.manifest"), "a");
    fputs("f-2.h5\n", f);
    fclose(f);
    return NULL;
}

static void a_following_run_waits_for_a_shard_appended_to_the_manifest(void **state)
{
    write_shard(path_of("f-1.h5"), 21, 1100, 50000, "gpt2", -1);
    write_text(path_of("follow.manifest"), "f-1.h5\n");
    strata_loader_config c = base_config();
    snprintf(c.new_path, sizeof c.new_path, "%s", path_of("follow.manifest"));
    c.follow = 1;
    c.follow_poll_s = 0.02;
    c.shuffle_window = 16;
    strata_loader *l = open_ok(&c);
    assert_int_equal(strata_loader_steps_available(l), -1);
    /* f-1 holds 68 samples: 4 whole windows of 16 = 64 usable, 10 steps of 6. */
    long s = 0;
    strata_batch *b;
    int status;
    for (; s < 10; s++) {
        assert_int_equal(strata_loader_poll(l, s, 5.0, &b, &status, NULL).code, 0);
        assert_int_equal(status, STRATA_LOADER_READY);
    }
    assert_int_equal(strata_loader_poll(l, s, 0.1, &b, &status, NULL).code, 0);
    assert_int_equal(status, STRATA_LOADER_WAITING);
    assert_null(b);
    assert_non_null(strstr(strata_loader_wait_reason(l), "follow.manifest"));
    char fp0[256];
    snprintf(fp0, sizeof fp0, "%s", strata_loader_fingerprint(l));

    /* Another thread appends a shard; the blocked step goes on. */
    pthread_t th;
    appender a = {150};
    pthread_create(&th, NULL, append_shard, &a);
    int ex = 1;
    double wait_ms = 0;
    assert_int_equal(strata_loader_get(l, s, &b, &ex, &wait_ms).code, 0);
    pthread_join(th, NULL);
    assert_int_equal(ex, 0);
    assert_true(wait_ms >= 50);
    int beyond = 0; /* samples past the 4 windows usable before */
    for (int r = 0; r < G; r++)
        if (!b->is_replay[r]) beyond += strata_sample_id_index(b->sample_id[r]) >= 64;
    assert_true(beyond > 0);
    assert_int_equal(strata_loader_get(l, s + 1, &b, &ex, NULL).code, 0);
    /* The fingerprint grew by the appended shard, and a checkpoint taken
     * before it still matches. */
    assert_non_null(strstr(strata_loader_fingerprint(l), "f-2.h5:1200"));
    assert_int_equal(strata_loader_check_fingerprint(l, fp0).code, 0);
    strata_loader_close(l);

    /* With a timeout, a follower that gets nothing gives up: exhausted. */
    c.follow_timeout_s = 0.2;
    l = open_ok(&c);
    assert_int_equal(strata_loader_get(l, 1000, &b, &ex, NULL).code, 0);
    assert_int_equal(ex, 1);
    strata_loader_close(l);
}

static void a_following_run_refuses_a_manifest_rewritten_under_it(void **state)
{
    write_shard(path_of("g-1.h5"), 31, 1100, 50000, "gpt2", -1);
    write_shard(path_of("g-2.h5"), 32, 1100, 50000, "gpt2", -1);
    write_text(path_of("rewrite.manifest"), "g-1.h5\n");
    strata_loader_config c = base_config();
    snprintf(c.new_path, sizeof c.new_path, "%s", path_of("rewrite.manifest"));
    c.follow = 1;
    c.follow_poll_s = 0.02;
    c.shuffle_window = 16;
    strata_loader *l = open_ok(&c);
    strata_batch *b;
    int status;
    assert_int_equal(strata_loader_poll(l, 9, 5.0, &b, &status, NULL).code, 0);
    assert_int_equal(status, STRATA_LOADER_READY);
    /* Someone replaces the first entry instead of appending. */
    write_text(path_of("rewrite.manifest"), "g-2.h5\ng-1.h5\n");
    strata_err e = strata_loader_poll(l, 10, 5.0, &b, &status, NULL);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "rewrite.manifest: shard 1 was"));
    assert_non_null(strstr(e.msg, "only appending is allowed"));
    strata_loader_close(l);
}

static void a_bad_token_read_by_the_thread_is_reported_by_get(void **state)
{
    write_shard(path_of("bad.h5"), 5, 3000, 50000, "gpt2", 1234);
    strata_loader_config c = base_config();
    snprintf(c.new_path, sizeof c.new_path, "%s", path_of("bad.h5"));
    c.replay_ratio = 0;
    c.shuffle_window = 1; /* in order: sample 77 holds token 1234 */
    strata_loader *l = open_ok(&c);
    strata_batch *b;
    int ex;
    strata_err e = strata_ok();
    long s = 0;
    for (; s < 100 && !e.code; s++) e = strata_loader_get(l, s, &b, &ex, NULL);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_int_equal(s - 1, 1234 / T / G);
    assert_non_null(strstr(e.msg, "bad.h5"));
    assert_non_null(strstr(e.msg, "token 1234 is 50000, not < vocab_size 50000"));
    strata_loader_close(l);
}

static void broken_streams_and_settings_are_refused_at_open(void **state)
{
    strata_loader *l = NULL;
    strata_loader_config c = base_config();
    c.vocab_size = 256; /* the model's vocabulary is smaller than the data's */
    strata_err e = strata_loader_open(&l, &c);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "a.h5: vocab_size 50000 is larger than the model's 256"));

    write_text(path_of("missing.manifest"), "a.h5\nnot-there.h5\n");
    c = base_config();
    snprintf(c.new_path, sizeof c.new_path, "%s", path_of("missing.manifest"));
    e = strata_loader_open(&l, &c);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "missing.manifest:2"));
    assert_non_null(strstr(e.msg, "not-there.h5"));

    write_text(path_of("loop-a.manifest"), "a.h5\nloop-b.manifest\n");
    write_text(path_of("loop-b.manifest"), "loop-a.manifest\n");
    snprintf(c.new_path, sizeof c.new_path, "%s", path_of("loop-a.manifest"));
    e = strata_loader_open(&l, &c);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "includes itself"));

    mkdir(path_of("empty"), 0755);
    snprintf(c.new_path, sizeof c.new_path, "%s", path_of("empty"));
    e = strata_loader_open(&l, &c);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "no shards"));

    write_shard(path_of("bytes.h5"), 1, 1000, 50000, "byte", -1);
    c = base_config();
    snprintf(c.new_path, sizeof c.new_path, "%s", path_of("bytes.h5"));
    e = strata_loader_open(&l, &c);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "tokenizer byte"));

    c = base_config();
    c.follow = c.wrap = 1;
    assert_int_equal(strata_loader_open(&l, &c).code, STRATA_EINPUT);
    c = base_config();
    c.n_replay = 0;
    e = strata_loader_open(&l, &c);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "no replay source"));
    assert_null(l);
}

static void an_evalset_is_consecutive_samples_of_a_stream(void **state)
{
    strata_evalset *ev = NULL;
    strata_err e = strata_evalset_open(&ev, path_of("new.manifest"), T, 50257, 0);
    assert_int_equal(e.code, 0);
    long n = strata_evalset_n_samples(ev);
    assert_int_equal(n, 999 / T + 516 / T + 1999 / T);
    uint32_t *t = malloc((size_t)n * (T + 1) * sizeof *t);
    assert_int_equal(strata_evalset_read(ev, 0, (int)n, t).code, 0);
    /* sample 62 is the first of b.h5 (a.h5 holds 62) */
    assert_int_equal(t[(size_t)62 * (T + 1)], tok(2, 0, 50000));
    assert_int_equal(t[(size_t)61 * (T + 1) + T], tok(1, 61 * T + T, 50000));
    assert_int_not_equal(strata_evalset_read(ev, n - 1, 2, t).code, 0);
    strata_evalset_close(ev);
    assert_int_equal(strata_evalset_open(&ev, path_of("new.manifest"), T, 50257, 10).code, 0);
    assert_int_equal(strata_evalset_n_samples(ev), 10);
    strata_evalset_close(ev);
    free(t);
}

static void a_changed_stream_is_refused_on_resume(void **state)
{
    strata_loader_config c = base_config();
    strata_loader *l = open_ok(&c);
    const char *fp = strata_loader_fingerprint(l);
    assert_non_null(strstr(fp, "new=a.h5:1000,b.h5:517,c.h5:2000"));
    assert_non_null(strstr(fp, "replay1=x-000.h5:3000,x-001.h5:1500"));
    assert_int_equal(strata_loader_check_fingerprint(l, fp).code, 0);
    assert_int_equal(strata_loader_check_fingerprint(
                         l, "new=a.h5:1000,b.h5:517;replay1=x-000.h5:3000,x-001.h5:1500")
                         .code,
                     0);
    strata_err e = strata_loader_check_fingerprint(
        l, "new=a.h5:1000,b.h5:999,c.h5:2000;replay1=x-000.h5:3000,x-001.h5:1500");
    assert_int_equal(e.code, STRATA_EINPUT);
    e = strata_loader_check_fingerprint(l,
                                        "new=a.h5:1000,b.h5:517,c.h5:2000;replay1=x-000.h5:3000");
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "replay1"));
    strata_loader_close(l);
}

static int setup(void **state)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/strata-loader-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(dir)) return -1;
    make_streams();
    return 0;
}

static int teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(prefetch_returns_the_same_batches_as_reading_on_demand),
        cmocka_unit_test(each_rank_reads_its_slice_of_the_same_global_batch),
        cmocka_unit_test(the_run_ends_or_wraps_when_the_new_stream_is_used_up),
        cmocka_unit_test(a_following_run_waits_for_a_shard_appended_to_the_manifest),
        cmocka_unit_test(a_following_run_refuses_a_manifest_rewritten_under_it),
        cmocka_unit_test(a_bad_token_read_by_the_thread_is_reported_by_get),
        cmocka_unit_test(broken_streams_and_settings_are_refused_at_open),
        cmocka_unit_test(an_evalset_is_consecutive_samples_of_a_stream),
        cmocka_unit_test(a_changed_stream_is_refused_on_resume),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
