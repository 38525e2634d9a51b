/* report.h — metrics files (JSON Lines) to plots and a summary table.
 *
 * A metrics file holds one JSON object per line (docs/DESIGN.md): a training
 * record per logged step (step, tokens, loss, loss_new, loss_replay, lr,
 * tokens_per_s, ...) and an evaluation record per held-out set and
 * evaluation (step, eval: "NAME", loss, ppl; a multiple-choice set's has acc
 * and acc_norm in place of loss). Any field but step may be
 * missing or null; unknown keys are ignored; an object with no "step", or
 * with no value this module reads, is not a record and is skipped. A line
 * that is not JSON, a line that is not an object, or a known field of the
 * wrong type is an error naming file:line; so is a file with no records.
 * Only a last line without its newline that does not parse is dropped: a
 * record a killed run was writing (the metrics writer drops it as well).
 *
 * A resumed run may log again steps it had logged before it was stopped:
 * when a record's step is not past the last one of its kind (training, or
 * evaluation of the same set), the earlier records from that step on are
 * dropped, so the later run wins and every series has increasing steps.
 *
 * Plots are drawn by gnuplot, run as a child process on a generated script
 * (DIR/report.gp, self-contained: `cd DIR && gnuplot report.gp` redraws).
 */
#ifndef STRATA_REPORT_H
#define STRATA_REPORT_H

#include <stddef.h>

#include "strata/err.h"

/* The training-record fields a report reads, in this order. */
enum {
    STRATA_REPORT_LOSS,
    STRATA_REPORT_LOSS_NEW,
    STRATA_REPORT_LOSS_REPLAY,
    STRATA_REPORT_LR,
    STRATA_REPORT_TOKENS_PER_S,
    STRATA_REPORT_TOKENS,
    STRATA_REPORT_N_FIELDS
};

/* The JSON key of field f ("loss", "loss_new", ...). */
const char *strata_report_field_name(int f);

/* One value over steps: steps strictly increase. */
typedef struct strata_report_series {
    size_t n, cap;
    long *step;
    double *val;
} strata_report_series;

typedef struct strata_report_eval {
    char *name; /* the record's "eval" value */
    strata_report_series loss;
    /* kind = choice sets (records with "acc"): accuracy and acc_norm */
    strata_report_series acc, acc_norm;
} strata_report_eval;

typedef struct strata_report_run {
    char *path;
    char *label; /* set by strata_report_label_runs */
    strata_report_series field[STRATA_REPORT_N_FIELDS];
    size_t n_eval; /* eval sets, in order of first appearance */
    strata_report_eval *eval;
} strata_report_run;

/* Reads a metrics file into *run (zeroed first). A missing or unreadable
 * file, a bad line or a file with no records is STRATA_EINPUT. On error
 * *run holds nothing to free. */
strata_err strata_report_load(strata_report_run *run, const char *path);
void strata_report_free(strata_report_run *run);

/* Names each run for plots and tables: its file's stem ("a" for a.jsonl),
 * or its parent directory's name when the stem is "metrics"
 * (runs/replay5/metrics.jsonl is "replay5"). Where two runs would share a
 * name, both take their path without the extension instead. */
strata_err strata_report_label_runs(strata_report_run *runs, size_t n_runs);

/* The eval set of that name, or NULL. */
const strata_report_eval *strata_report_find_eval(const strata_report_run *run, const char *name);

/* A run's numbers for the summary; NaN (or -1 for counts) where the metrics
 * hold no such value. */
typedef struct strata_report_summary {
    long final_step;   /* last step of any record */
    long tokens;       /* last "tokens" value, -1 if none */
    double final_loss; /* last value of each training loss */
    double final_loss_new;
    double final_loss_replay;
    double mean_tokens_per_s; /* mean over every record that has it */
    double forgetting;        /* eval "old": last loss - baseline loss */
    double learning;          /* eval "new": baseline loss - last loss */
} strata_report_summary;

strata_report_summary strata_report_summarize(const strata_report_run *run);

/* An eval set's baseline (its first evaluation: step 0 when the run
 * evaluated its init model) and its last evaluation. */
typedef struct strata_report_eval_summary {
    long base_step, last_step;
    double base, last;
    double delta; /* last - base */
} strata_report_eval_summary;

strata_report_eval_summary strata_report_summarize_eval(const strata_report_eval *ev);

/* The summary as Markdown (what summary.md holds), in a string the caller
 * frees: a table of runs, a table of every run's held-out loss sets and one
 * of its multiple-choice sets (forgetting = baseline acc - last acc). */
strata_err strata_report_markdown(const strata_report_run *runs, size_t n_runs, char **md);

/* Writes DIR/report.gp, the gnuplot script that draws every plot as SVG and
 * PNG into DIR: loss.*, eval-NAME.* (one per eval set), lr.*, tokens_per_s.*
 * (a plot with no data in any run is left out). Each run's curves are
 * overlaid and labelled with its label. *n_plots gets how many. */
strata_err strata_report_write_script(const char *dir, const strata_report_run *runs, size_t n_runs,
                                      int *n_plots);

/* Runs gnuplot on DIR/report.gp in DIR. gnuplot not on PATH, or failing, is
 * STRATA_EFAIL with what to do (install gnuplot-nox) or gnuplot's message. */
strata_err strata_report_plot(const char *dir);

/* Everything at once: creates DIR (and its parents), writes DIR/summary.md
 * and DIR/report.gp and, when plots is nonzero, runs gnuplot. */
strata_err strata_report_write(const char *dir, const strata_report_run *runs, size_t n_runs,
                               int plots, int *n_plots);

#endif
