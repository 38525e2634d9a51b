/* Whole training runs in this process, read through the log sink (log.h):
 * the progress lines match the metrics file; an eval set's name with a
 * quote stays valid JSON; out-of-memory forced at every hooked allocation
 * of a run comes back as STRATA_ENOMEM naming out-of-memory (never a crash,
 * another code or a run that "succeeds"); the used-up stream is said and
 * ends the run cleanly; a resume that changes global_batch is refused
 * through the checkpoint's typed record; the default checkpoint directory
 * is beside the config. */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "strata/comm.h"
#include "strata/config.h"
#include "strata/log.h"
#include "strata/mem.h"
#include "strata/rng.h"
#include "strata/shard.h"
#include "strata/trainer.h"

/* Under ASan: MPI's and HDF5's allocations at init stay until exit; their
 * leak reports match tests/lsan.supp only with whole stacks, which the fast
 * unwinder cuts short. Read by the sanitizer runtime; unused otherwise. */
__attribute__((used)) const char *__asan_default_options(void);
__attribute__((used)) const char *__asan_default_options(void) { return "fast_unwind_on_malloc=0"; }
__attribute__((used)) const char *__lsan_default_options(void);
__attribute__((used)) const char *__lsan_default_options(void) { return "fast_unwind_on_malloc=0"; }

static char dir[256];
static strata_comm *comm;

/* The sink: every line kept, with its level. */
typedef struct captured {
    char *text; /* lines joined by '\n' */
    size_t len;
    int warnings;
} captured;
static captured cap;

static void keep_line(void *ctx, strata_log_level level, const char *line)
{
    captured *c = ctx;
    size_t n = strlen(line);
    c->text = realloc(c->text, c->len + n + 2);
    memcpy(c->text + c->len, line, n);
    c->len += n;
    c->text[c->len++] = '\n';
    c->text[c->len] = 0;
    if (level == STRATA_LOG_WARN) c->warnings++;
}

static void reset_capture(void)
{
    free(cap.text);
    memset(&cap, 0, sizeof cap);
}

static int count_lines(const char *prefix)
{
    int n = 0;
    for (const char *p = cap.text; p && *p; p = strchr(p, '\n') + 1) {
        if (!strncmp(p, prefix, strlen(prefix))) n++;
        if (!strchr(p, '\n')) break;
    }
    return n;
}

static const char *path_of(const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", dir, name);
    return buf[i];
}

static void write_shard(const char *name, int n_tokens, uint64_t seed)
{
    strata_shard_writer *w;
    strata_shard_writer_opts o = {.vocab_size = 256, .eot_token = 0, .tokenizer = "byte"};
    assert_int_equal(strata_shard_writer_open(&w, path_of(name), &o).code, 0);
    uint32_t *t = malloc(sizeof(uint32_t) * n_tokens);
    /* A little structure to learn: runs of one byte. */
    for (int i = 0; i < n_tokens; i++)
        t[i] = 1 + (uint32_t)strata_rng_below(strata_rng_u64(seed, i / 4, 0, 0), 40);
    assert_int_equal(strata_shard_writer_doc(w).code, 0);
    assert_int_equal(strata_shard_writer_append(w, t, n_tokens).code, 0);
    assert_int_equal(strata_shard_writer_close(w).code, 0);
    free(t);
}

static void write_config(const char *name, const char *extra)
{
    FILE *f = fopen(path_of(name), "w");
    assert_non_null(f);
    fprintf(f,
            "[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\nvocab_size = 256\n"
            "[data]\nnew = train.h5\nseq_len = 16\nseed = 7\nprefetch = 0\n"
            "[train]\nsteps = 4\nglobal_batch = 4\nmicro_batch = 2\nwarmup = 1\n"
            "step_timeout = 0\n"
            "[checkpoint]\nresume = never\n"
            "[log]\nevery = 1\nmetrics = metrics.jsonl\n"
            "[eval.he\"ld]\npath = val.h5\nrole = old\n%s",
            extra);
    fclose(f);
}

static strata_err run(const char *config, char **sets, int n_sets)
{
    strata_config cfg;
    strata_err e = strata_config_load(&cfg, path_of(config), sets, n_sets);
    if (e.code) return e;
    reset_capture();
    return strata_train_run(&cfg, comm);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "%s/strata-trainer-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) return -1;
    write_shard("train.h5", 3000, 1);
    write_shard("val.h5", 400, 2);
    write_config("run.ini", "");
    strata_log_set(keep_line, &cap);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    strata_log_set(NULL, NULL);
    reset_capture();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The metrics record of `step` (the first with "eval" when eval). */
static json_t *record(long step, int eval)
{
    FILE *f = fopen(path_of("metrics.jsonl"), "r");
    assert_non_null(f);
    char line[4096];
    json_t *found = NULL;
    while (!found && fgets(line, sizeof line, f)) {
        json_error_t err;
        json_t *r = json_loads(line, 0, &err);
        assert_non_null(r); /* every line is valid JSON */
        if (json_integer_value(json_object_get(r, "step")) == step &&
            (json_object_get(r, "eval") != NULL) == eval)
            found = r;
        else
            json_decref(r);
    }
    fclose(f);
    return found;
}

static void test_sink_lines(void **state)
{
    (void)state;
    reset_capture();
    char long_text[3001];
    memset(long_text, 'x', 3000);
    long_text[3000] = 0;
    strata_log(STRATA_LOG_INFO, "a %s z\n", long_text); /* longer than the stack buffer */
    strata_log(STRATA_LOG_WARN, "w %d", 7);
    assert_int_equal(cap.len, 3005 + 4); /* newline removed, one added per line by keep_line */
    assert_int_equal(strncmp(cap.text + 3002, " z\nw 7\n", 7), 0);
    assert_int_equal(cap.warnings, 1);
    strata_log_set(NULL, NULL); /* no sink: dropped */
    strata_log(STRATA_LOG_INFO, "dropped");
    strata_log_set(keep_line, &cap);
    assert_null(strstr(cap.text, "dropped"));
}

static void test_progress_through_the_sink(void **state)
{
    (void)state;
    assert_int_equal(run("run.ini", NULL, 0).code, 0);
    assert_int_equal(count_lines("step "), 4);
    assert_int_equal(count_lines("eval he\"ld"), 2); /* step 0 and the last step */
    assert_int_equal(count_lines("saved "), 1);
    assert_int_equal(cap.warnings, 0);
    const char *last = strstr(cap.text, "step 4/4 | loss ");
    assert_non_null(last);
    double printed = atof(last + strlen("step 4/4 | loss "));
    json_t *r = record(4, 0);
    assert_non_null(r);
    assert_true(fabs(json_number_value(json_object_get(r, "loss")) - printed) < 6e-5);
    assert_true(printed > 1.0 && printed < 6.0);
    json_decref(r);
    r = record(4, 1);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "eval")), "he\"ld");
    assert_true(json_is_number(json_object_get(r, "forgetting"))); /* role = old */
    json_decref(r);
    /* Beside the config, not in the current directory. */
    struct stat sb;
    assert_int_equal(stat(path_of("ckpt/ckpt-4.h5"), &sb), 0);
    assert_int_equal(stat(path_of("ckpt/DONE"), &sb), 0);
}

static void test_out_of_memory_everywhere(void **state)
{
    (void)state;
    strata_mem_fail_after(0);
    assert_int_equal(run("run.ini", NULL, 0).code, 0);
    long n = strata_mem_fail_after(0);
    assert_true(n >= 10); /* model, policy, step, evaluation, ... */
    print_message("forcing out-of-memory at each of %ld allocations\n", n);
    for (long k = 1; k <= n; k++) {
        strata_mem_fail_after(k);
        strata_err e = run("run.ini", NULL, 0);
        strata_mem_fail_after(0);
        if (e.code != STRATA_ENOMEM || !strstr(e.msg, "out of memory"))
            fail_msg("allocation %ld of %ld: code %d, '%s'", k, n, e.code, e.msg);
    }
}

static void test_stream_used_up(void **state)
{
    (void)state;
    char *sets[] = {"train.steps=1000", "log.every=1000"};
    assert_int_equal(run("run.ini", sets, 2).code, 0);
    const char *said = strstr(cap.text, "the new-data stream is used up after step ");
    assert_non_null(said);
    long step = atol(said + strlen("the new-data stream is used up after step "));
    assert_true(step > 10 && step < 1000);
    char name[64];
    snprintf(name, sizeof name, "saved %s/ckpt/ckpt-%ld.h5", dir, step);
    assert_non_null(strstr(cap.text, name));
}

static void test_resume_refuses_other_batch(void **state)
{
    (void)state;
    char *first[] = {"checkpoint.every=2", "train.steps=2"};
    assert_int_equal(run("run.ini", first, 2).code, 0);
    char *second[] = {"checkpoint.resume=auto", "train.global_batch=8"};
    strata_err e = run("run.ini", second, 2);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "[train] global_batch = 8 differs from checkpoint"));
    assert_non_null(strstr(e.msg, "(global_batch = 4)"));
    char *same[] = {"checkpoint.resume=auto", "train.steps=4"};
    assert_int_equal(run("run.ini", same, 2).code, 0);
    assert_non_null(strstr(cap.text, "resumed from"));
}

static void test_default_checkpoint_dir(void **state)
{
    (void)state;
    strata_config a, b, c;
    assert_int_equal(mkdir(path_of("a"), 0777), 0);
    write_config("a/x.ini", "");
    assert_int_equal(strata_config_load(&a, path_of("a/x.ini"), NULL, 0).code, 0);
    assert_string_equal(a.checkpoint.dir, path_of("a/ckpt"));
    char *sets[] = {"checkpoint.dir=elsewhere"};
    assert_int_equal(strata_config_load(&b, path_of("a/x.ini"), sets, 1).code, 0);
    assert_string_equal(b.checkpoint.dir, "elsewhere"); /* --set: as typed */
    assert_int_equal(strata_config_load(&c, path_of("run.ini"), NULL, 0).code, 0);
    assert_int_equal(c.evals[0].role, STRATA_EVAL_OLD);
}

int main(int argc, char **argv)
{
    if (strata_comm_init(&argc, &argv, &comm).code) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sink_lines),
        cmocka_unit_test(test_progress_through_the_sink),
        cmocka_unit_test(test_out_of_memory_everywhere),
        cmocka_unit_test(test_stream_used_up),
        cmocka_unit_test(test_resume_refuses_other_batch),
        cmocka_unit_test(test_default_checkpoint_dir),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    strata_comm_finalize(comm);
    return rc;
}
