/* test_report.c — `strata report`'s numbers come from the metrics file, and
 * bad metrics files are refused with the file and the line. */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata/report.h"

static char tmpdir[256];

/* cmocka 1.1.5 (Debian 12) compares only floats; these numbers are doubles. */
#define assert_double_equal(a, b, eps) assert_near((a), (b), (eps), #a, __LINE__)

static void assert_near(double a, double b, double eps, const char *what, int line)
{
    if (!(fabs(a - b) <= eps)) fail_msg("line %d: %s is %.17g, expected %.17g", line, what, a, b);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/strata-test-report-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    return nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes text to tmpdir/name (creating its directory) and returns the path. */
static const char *write_metrics(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    mkdir(path, 0777);
    *slash = '/';
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    return path;
}

/* Two evaluations of two sets around four training records, one of them
 * without loss_replay, plus keys the report does not know. */
static const char hand_made[] =
    "{\"step\": 0, \"eval\": \"old\", \"loss\": 3.25, \"ppl\": 25.79}\n"
    "{\"step\": 0, \"eval\": \"new\", \"loss\": 5.5, \"ppl\": 244.69}\n"
    "{\"step\": 10, \"tokens\": 10240, \"loss\": 5.0, \"loss_new\": 5.25, \"loss_replay\": 4.0,"
    " \"lr\": 0.0001, \"grad_norm\": 1.5, \"ms\": 50.0, \"tokens_per_s\": 1000.0, \"mfu\": 0.1,"
    " \"data_ms\": 1.0, \"comm_ms\": 0.5}\n"
    "\n"
    "{\"step\": 20, \"tokens\": 20480, \"loss\": 4.5, \"loss_new\": 4.75, \"loss_replay\": 3.5,"
    " \"lr\": 0.0003, \"tokens_per_s\": 3000.0}\n"
    "{\"step\": 30, \"tokens\": 30720, \"loss\": 4.0, \"loss_new\": 4.125, \"lr\": 0.0002,"
    " \"tokens_per_s\": 2000, \"some_future_key\": [1, 2]}\n"
    "{\"step\": 30, \"eval\": \"old\", \"loss\": 3.5, \"ppl\": 33.1, \"forgetting\": 0.25}\n"
    "{\"step\": 30, \"eval\": \"new\", \"loss\": 4.25, \"ppl\": 70.1, \"learning\": 1.25}\n"
    "{\"event\": \"checkpoint\", \"path\": \"ckpt-30.h5\"}\n";

static void summary_numbers_equal_the_hand_made_metrics(void **state)
{
    (void)state;
    strata_report_run run;
    strata_err e = strata_report_load(&run, write_metrics("hand.jsonl", hand_made));
    assert_int_equal(e.code, 0);
    assert_int_equal(run.field[STRATA_REPORT_LOSS].n, 3);
    assert_int_equal(run.field[STRATA_REPORT_LOSS_REPLAY].n, 2);
    assert_int_equal(run.n_eval, 2);

    strata_report_summary s = strata_report_summarize(&run);
    assert_int_equal(s.final_step, 30);
    assert_int_equal(s.tokens, 30720);
    assert_double_equal(s.final_loss, 4.0, 1e-12);
    assert_double_equal(s.final_loss_new, 4.125, 1e-12);
    assert_double_equal(s.final_loss_replay, 3.5, 1e-12); /* the last that has one */
    assert_double_equal(s.mean_tokens_per_s, 2000.0, 1e-9);
    assert_double_equal(s.forgetting, 0.25, 1e-12); /* 3.5 - 3.25 */
    assert_double_equal(s.learning, 1.25, 1e-12);   /* 5.5 - 4.25 */
    strata_report_free(&run);
}

static void eval_baseline_is_the_first_evaluation_and_delta_is_last_minus_it(void **state)
{
    (void)state;
    strata_report_run run;
    assert_int_equal(strata_report_load(&run, write_metrics("hand.jsonl", hand_made)).code, 0);
    const strata_report_eval *old = strata_report_find_eval(&run, "old");
    assert_non_null(old);
    assert_null(strata_report_find_eval(&run, "absent"));
    strata_report_eval_summary s = strata_report_summarize_eval(old);
    assert_int_equal(s.base_step, 0);
    assert_int_equal(s.last_step, 30);
    assert_double_equal(s.base, 3.25, 1e-12);
    assert_double_equal(s.last, 3.5, 1e-12);
    assert_double_equal(s.delta, 0.25, 1e-12);
    strata_report_free(&run);
}

static void markdown_table_prints_the_numbers_to_four_decimals(void **state)
{
    (void)state;
    strata_report_run run;
    assert_int_equal(strata_report_load(&run, write_metrics("hand.jsonl", hand_made)).code, 0);
    assert_int_equal(strata_report_label_runs(&run, 1).code, 0);
    char *md = NULL;
    assert_int_equal(strata_report_markdown(&run, 1, &md).code, 0);
    assert_non_null(strstr(md, "| hand | 30 | 30720 | 4.0000 | 4.1250 | 3.5000 | 2000.0 | "
                               "0.2500 | 1.2500 |\n"));
    assert_non_null(strstr(md, "| hand | old | 0 | 3.2500 | 30 | 3.5000 | +0.2500 |\n"));
    assert_non_null(strstr(md, "| hand | new | 0 | 5.5000 | 30 | 4.2500 | -1.2500 |\n"));
    free(md);
    strata_report_free(&run);
}

static void missing_fields_are_absent_not_zero(void **state)
{
    (void)state;
    strata_report_run run;
    const char *p =
        write_metrics("noreplay.jsonl", "{\"step\": 5, \"loss\": 2.5}\n"
                                        "{\"step\": 6, \"loss\": 2.25, \"lr\": null}\n");
    assert_int_equal(strata_report_load(&run, p).code, 0);
    assert_int_equal(strata_report_label_runs(&run, 1).code, 0);
    strata_report_summary s = strata_report_summarize(&run);
    assert_int_equal(s.final_step, 6);
    assert_int_equal(s.tokens, -1);
    assert_double_equal(s.final_loss, 2.25, 1e-12);
    assert_true(isnan(s.final_loss_replay));
    assert_true(isnan(s.mean_tokens_per_s));
    assert_true(isnan(s.forgetting));
    assert_true(isnan(s.learning));
    char *md = NULL;
    assert_int_equal(strata_report_markdown(&run, 1, &md).code, 0);
    assert_non_null(strstr(md, "| noreplay | 6 | n/a | 2.2500 | n/a | n/a | n/a | n/a | n/a |"));
    assert_non_null(strstr(md, "No evaluation records."));
    free(md);
    strata_report_free(&run);
}

static void resumed_run_overlap_is_replaced_by_the_later_records(void **state)
{
    (void)state;
    /* Stopped after step 30 with a checkpoint at 20: the resumed run logs
     * 30 again (and evaluates old at 20 again); the later values win. */
    const char *p =
        write_metrics("resumed.jsonl", "{\"step\": 10, \"loss\": 4.0, \"tokens_per_s\": 100}\n"
                                       "{\"step\": 20, \"loss\": 3.0, \"tokens_per_s\": 100}\n"
                                       "{\"step\": 20, \"eval\": \"old\", \"loss\": 9.0}\n"
                                       "{\"step\": 30, \"loss\": 2.0, \"tokens_per_s\": 100}\n"
                                       "{\"step\": 30, \"loss\": 2.5, \"tokens_per_s\": 400}\n"
                                       "{\"step\": 20, \"eval\": \"old\", \"loss\": 8.0}\n"
                                       "{\"step\": 40, \"loss\": 1.5, \"tokens_per_s\": 400}\n");
    strata_report_run run;
    assert_int_equal(strata_report_load(&run, p).code, 0);
    const strata_report_series *loss = &run.field[STRATA_REPORT_LOSS];
    assert_int_equal(loss->n, 4);
    long steps[] = {10, 20, 30, 40};
    double vals[] = {4.0, 3.0, 2.5, 1.5};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(loss->step[i], steps[i]);
        assert_double_equal(loss->val[i], vals[i], 1e-12);
    }
    strata_report_summary s = strata_report_summarize(&run);
    assert_double_equal(s.mean_tokens_per_s, 250.0, 1e-9); /* (100+100+400+400)/4 */
    const strata_report_eval *old = strata_report_find_eval(&run, "old");
    assert_int_equal(old->loss.n, 1);
    assert_double_equal(old->loss.val[0], 8.0, 1e-12);
    strata_report_free(&run);
}

/* Loads text and checks it is refused as bad input with msg containing want. */
static void assert_refused(const char *name, const char *text, const char *want)
{
    const char *p = write_metrics(name, text);
    strata_report_run run;
    strata_err e = strata_report_load(&run, p);
    assert_int_equal(e.code, STRATA_EINPUT);
    if (!strstr(e.msg, want)) fail_msg("message \"%s\" lacks \"%s\"", e.msg, want);
    assert_null(run.path); /* nothing left to free */
}

static void line_that_is_not_json_is_rejected_with_file_and_line(void **state)
{
    (void)state;
    assert_refused("broken.jsonl",
                   "{\"step\": 1, \"loss\": 2.0}\n{\"step\": 2, \"loss\": 1.9}\n"
                   "{\"step\": 3, \"loss\": 1.8\n{\"step\": 4, \"loss\": 1.7}\n",
                   "broken.jsonl:3: not valid JSON");
    assert_refused("text.jsonl", "{\"step\": 1, \"loss\": 2.0}\nstep=2 loss=1.9\n",
                   "text.jsonl:2: not valid JSON");
    assert_refused("two.jsonl", "{\"step\": 1, \"loss\": 2.0} {\"step\": 2}\n",
                   "two.jsonl:1: not valid JSON");
}

static void last_line_cut_short_by_a_kill_is_dropped(void **state)
{
    (void)state;
    strata_report_run run;
    const char *p = write_metrics("killed.jsonl", "{\"step\": 1, \"loss\": 2.0}\n"
                                                  "{\"step\": 2, \"loss\": 1.9}\n"
                                                  "{\"step\": 3, \"lo");
    assert_int_equal(strata_report_load(&run, p).code, 0);
    assert_int_equal(run.field[STRATA_REPORT_LOSS].n, 2);
    assert_double_equal(strata_report_summarize(&run).final_loss, 1.9, 1e-12);
    strata_report_free(&run);
    /* With its newline, the same line is an error: the file was not cut. */
    assert_refused("whole.jsonl", "{\"step\": 1, \"loss\": 2.0}\n{\"step\": 3, \"lo\n",
                   "whole.jsonl:2: not valid JSON");
}

static void wrong_kinds_of_values_are_rejected_with_file_and_line(void **state)
{
    (void)state;
    assert_refused("array.jsonl", "{\"step\": 1, \"loss\": 2.0}\n[1, 2]\n",
                   "array.jsonl:2: an array, expected a JSON object");
    assert_refused("str.jsonl", "\n{\"step\": 1, \"loss\": \"2.0\"}\n",
                   "str.jsonl:2: \"loss\" is a string, expected a number");
    assert_refused("step.jsonl", "{\"step\": 1.5, \"loss\": 2.0}\n",
                   "step.jsonl:1: \"step\" is a number, expected an integer >= 0");
    assert_refused("neg.jsonl", "{\"step\": -3, \"loss\": 2.0}\n",
                   "neg.jsonl:1: \"step\" is negative");
    assert_refused("evalname.jsonl", "{\"step\": 0, \"eval\": 7, \"loss\": 2.0}\n",
                   "evalname.jsonl:1: \"eval\" is an integer, expected a string");
    assert_refused("evalloss.jsonl", "{\"step\": 0, \"eval\": \"old\", \"loss\": true}\n",
                   "evalloss.jsonl:1: \"loss\" is a boolean, expected a number");
}

static void missing_or_empty_file_is_bad_input(void **state)
{
    (void)state;
    strata_report_run run;
    char path[512];
    snprintf(path, sizeof path, "%s/does-not-exist.jsonl", tmpdir);
    strata_err e = strata_report_load(&run, path);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "does-not-exist.jsonl: cannot open"));
    assert_refused("empty.jsonl", "", "empty.jsonl: no metrics records");
    assert_refused("norecords.jsonl", "{\"event\": \"start\"}\n\n{\"step\": 3}\n",
                   "norecords.jsonl: no metrics records");
}

static void runs_are_labelled_by_stem_or_by_directory_for_metrics_jsonl(void **state)
{
    (void)state;
    const char *rec = "{\"step\": 1, \"loss\": 2.0}\n";
    char paths[4][512];
    snprintf(paths[0], 512, "%s", write_metrics("replay0/metrics.jsonl", rec));
    snprintf(paths[1], 512, "%s", write_metrics("replay25/metrics.jsonl", rec));
    snprintf(paths[2], 512, "%s", write_metrics("baseline.jsonl", rec));
    snprintf(paths[3], 512, "%s", write_metrics("replay0/baseline.jsonl", rec));
    strata_report_run runs[4];
    for (int i = 0; i < 4; i++) assert_int_equal(strata_report_load(&runs[i], paths[i]).code, 0);
    assert_int_equal(strata_report_label_runs(runs, 4).code, 0);
    assert_string_equal(runs[0].label, "replay0");
    assert_string_equal(runs[1].label, "replay25");
    /* Two "baseline"s: each takes its path without the extension. */
    char want[512];
    snprintf(want, sizeof want, "%s/baseline", tmpdir);
    assert_string_equal(runs[2].label, want);
    snprintf(want, sizeof want, "%s/replay0/baseline", tmpdir);
    assert_string_equal(runs[3].label, want);
    for (int i = 0; i < 4; i++) strata_report_free(&runs[i]);

    /* The same file twice is numbered. */
    for (int i = 0; i < 2; i++) assert_int_equal(strata_report_load(&runs[i], paths[2]).code, 0);
    assert_int_equal(strata_report_label_runs(runs, 2).code, 0);
    assert_string_not_equal(runs[0].label, runs[1].label);
    for (int i = 0; i < 2; i++) strata_report_free(&runs[i]);
}

static void writing_without_plots_makes_the_directory_summary_and_script(void **state)
{
    (void)state;
    strata_report_run runs[2];
    assert_int_equal(strata_report_load(&runs[0], write_metrics("hand.jsonl", hand_made)).code, 0);
    assert_int_equal(
        strata_report_load(&runs[1], write_metrics("other.jsonl", "{\"step\": 4, \"lr\": 1e-4}\n"))
            .code,
        0);
    assert_int_equal(strata_report_label_runs(runs, 2).code, 0);
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/out/deeper", tmpdir);
    int n_plots = -1;
    strata_err e = strata_report_write(dir, runs, 2, 0, &n_plots);
    assert_int_equal(e.code, 0);
    assert_int_equal(n_plots, 5); /* loss, eval-old, eval-new, lr, tokens_per_s */

    char *md = NULL;
    assert_int_equal(strata_report_markdown(runs, 2, &md).code, 0);
    snprintf(path, sizeof path, "%s/summary.md", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    assert_string_equal(buf, md);
    free(md);

    snprintf(path, sizeof path, "%s/report.gp", dir);
    f = fopen(path, "r");
    assert_non_null(f);
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    /* Both runs' lr curves in one plot, each drawn as SVG and PNG. */
    assert_non_null(strstr(buf, "$r0_lr using 1:2"));
    assert_non_null(strstr(buf, "$r1_lr using 1:2"));
    assert_non_null(strstr(buf, "set output 'lr.svg'"));
    assert_non_null(strstr(buf, "set output 'lr.png'"));
    assert_non_null(strstr(buf, "set output 'eval-old.svg'"));
    assert_non_null(strstr(buf, "30 4.125\n")); /* r0's last loss_new */
    for (int i = 0; i < 2; i++) strata_report_free(&runs[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(summary_numbers_equal_the_hand_made_metrics),
        cmocka_unit_test(eval_baseline_is_the_first_evaluation_and_delta_is_last_minus_it),
        cmocka_unit_test(markdown_table_prints_the_numbers_to_four_decimals),
        cmocka_unit_test(missing_fields_are_absent_not_zero),
        cmocka_unit_test(resumed_run_overlap_is_replaced_by_the_later_records),
        cmocka_unit_test(line_that_is_not_json_is_rejected_with_file_and_line),
        cmocka_unit_test(last_line_cut_short_by_a_kill_is_dropped),
        cmocka_unit_test(wrong_kinds_of_values_are_rejected_with_file_and_line),
        cmocka_unit_test(missing_or_empty_file_is_bad_input),
        cmocka_unit_test(runs_are_labelled_by_stem_or_by_directory_for_metrics_jsonl),
        cmocka_unit_test(writing_without_plots_makes_the_directory_summary_and_script),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
