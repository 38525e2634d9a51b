/* cli_report.c — `strata report METRICS.jsonl [MORE.jsonl ...] --out DIR`:
 * plots and a summary table from one or more runs' metrics files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/cli.h"
#include "strata/report.h"

static const char usage[] =
    "usage: strata report METRICS.jsonl [MORE.jsonl ...] --out DIR [--no-plots]\n"
    "\n"
    "Reads metrics files (JSON Lines written by `strata train`) and writes into DIR:\n"
    "  summary.md          final losses, tokens/s, each eval set's baseline and last\n"
    "                      loss, forgetting (old) and learning (new); also printed\n"
    "  loss.svg/.png       training loss, loss_new, loss_replay over steps\n"
    "  eval-NAME.svg/.png  each held-out set's loss over steps\n"
    "  lr.svg/.png, tokens_per_s.svg/.png\n"
    "  report.gp           the gnuplot script that draws them\n"
    "Several files overlay their runs, each labelled by its file's stem (or its\n"
    "directory's name for metrics.jsonl). Plots need gnuplot (apt-get install\n"
    "gnuplot-nox); --no-plots writes only summary.md and report.gp.\n";

static int fail(strata_err e) { return strata_cli_fail("report", e); }

static int bad_usage(const char *what)
{
    fprintf(stderr, "strata report: %s (try strata report --help)\n", what);
    return STRATA_EINPUT;
}

int strata_cli_report(int argc, char **argv)
{
    const char *out = NULL;
    int plots = 1;
    char **files = calloc((size_t)(argc > 0 ? argc : 1), sizeof *files);
    if (!files) return fail(strata_errorf(STRATA_ENOMEM, "out of memory"));
    size_t n_files = 0;
    int only_files = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_files || a[0] != '-' || !a[1]) {
            files[n_files++] = argv[i];
        } else if (!strcmp(a, "--")) {
            only_files = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            free(files);
            return 0;
        } else if (!strcmp(a, "--out") || !strcmp(a, "-o")) {
            if (i + 1 >= argc) {
                free(files);
                return bad_usage("--out needs a directory");
            }
            out = argv[++i];
        } else if (!strncmp(a, "--out=", 6)) {
            out = a + 6;
        } else if (!strcmp(a, "--no-plots")) {
            plots = 0;
        } else {
            fprintf(stderr, "strata report: unknown option '%s' (try strata report --help)\n", a);
            free(files);
            return STRATA_EINPUT;
        }
    }
    if (!n_files || !out || !*out) {
        free(files);
        return bad_usage(!n_files ? "no metrics file given" : "--out DIR is required");
    }

    strata_report_run *runs = calloc(n_files, sizeof *runs);
    if (!runs) {
        free(files);
        return fail(strata_errorf(STRATA_ENOMEM, "out of memory"));
    }
    strata_err e = strata_ok();
    size_t loaded = 0;
    for (; loaded < n_files; loaded++) {
        e = strata_report_load(&runs[loaded], files[loaded]);
        if (e.code) break;
    }
    if (!e.code) e = strata_report_label_runs(runs, n_files);

    /* summary.md is written and shown before gnuplot runs: without gnuplot
     * the numbers are still there, and the command still fails for the plots. */
    int n_plots = 0;
    char *md = NULL;
    if (!e.code) e = strata_report_markdown(runs, n_files, &md);
    if (!e.code) e = strata_report_write(out, runs, n_files, 0, &n_plots);
    if (!e.code) {
        fputs(md, stdout);
        fflush(stdout);
        if (plots && n_plots) e = strata_report_plot(out);
    }
    if (!e.code) {
        if (plots)
            fprintf(stderr, "strata report: wrote %s/summary.md and %d plot%s (SVG and PNG)\n", out,
                    n_plots, n_plots == 1 ? "" : "s");
        else
            fprintf(stderr, "strata report: wrote %s/summary.md and %s/report.gp (no plots)\n", out,
                    out);
    }
    free(md);
    for (size_t i = 0; i < loaded; i++) strata_report_free(&runs[i]);
    free(runs);
    free(files);
    return e.code ? fail(e) : 0;
}
