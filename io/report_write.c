/* report_write.c — a report's files (see report.h): the gnuplot script
 * (report.gp), gnuplot run on it, and the directory with summary.md. The
 * runs, their summaries and the markdown table come from report.c. */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "file.h"

#include "strata/report.h"

static strata_err oom(const char *path)
{
    return strata_errorf(STRATA_ENOMEM, "%s: out of memory reading metrics", path);
}

static char *join(const char *dir, const char *name)
{
    char *p = NULL;
    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

/* Writes text to path; a short write (a full disk) is an error. */
static strata_err write_file(const char *path, const char *text)
{
    return strata_write_atomic(path, text, strlen(text));
}

/* --------------------------------------------------------- gnuplot script */

/* A gnuplot single-quoted string: '' for ', control characters as '?'. */
static void gp_str(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\'')
            fputs("''", f);
        else if (c < 0x20 || c == 0x7f)
            fputc('?', f);
        else
            fputc(c, f);
    }
    fputc('\'', f);
}

static void gp_block(FILE *f, const char *name, const strata_report_series *s)
{
    fprintf(f, "$%s << EOD\n", name);
    for (size_t i = 0; i < s->n; i++) fprintf(f, "%ld %.10g\n", s->step[i], s->val[i]);
    fputs("EOD\n", f);
}

/* One curve of a plot command; *first tracks the comma between curves. */
static void gp_curve(FILE *f, int *first, const char *block, const strata_report_series *s,
                     int color, int dash, int points, const char *title)
{
    fputs(*first ? "plot \\\n    " : ", \\\n    ", f);
    *first = 0;
    fprintf(f, "$%s using 1:2 with ", block);
    if (s->n == 1)
        fputs("points pt 7 ps 1.2", f);
    else if (points)
        fputs("linespoints pt 7 ps 0.8", f);
    else
        fputs("lines", f);
    fprintf(f, " lc %d dt %d lw 2 title ", color, dash);
    gp_str(f, title);
}

/* Starts a plot drawn into file.svg; gp_render draws it again into file.png. */
static void gp_begin(FILE *f, const char *file, const char *title, const char *ylabel)
{
    fputs("set title ", f);
    gp_str(f, title);
    fputs("\nset ylabel ", f);
    gp_str(f, ylabel);
    fprintf(f, "\nset terminal @svg_term\nset output '%s.svg'\n", file);
}

static void gp_render(FILE *f, const char *file)
{
    fprintf(f, "\nset terminal @png_term\nset output '%s.png'\nreplot\nset output\n\n", file);
}

/* A file-name-safe form of an eval set's name, unique among those so far. */
static char *plot_name(const char *name, char **taken, size_t n_taken)
{
    size_t n = strlen(name);
    char *s = malloc(n + 32);
    if (!s) return NULL;
    strcpy(s, "eval-");
    char *p = s + 5;
    for (size_t i = 0; i < n && i < 64; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.';
        *p++ = ok ? c : '_';
    }
    if (p == s + 5) *p++ = '_';
    *p = '\0';
    char *end = p;
    for (int k = 2;; k++) {
        int clash = 0;
        for (size_t i = 0; i < n_taken; i++)
            if (!strcmp(taken[i], s)) clash = 1;
        if (!clash) return s;
        sprintf(end, "-%d", k);
    }
}

static void curve_title(char *out, size_t cap, const strata_report_run *run, size_t n_runs,
                        const char *what)
{
    if (n_runs == 1)
        snprintf(out, cap, "%s", what ? what : run->label);
    else if (what)
        snprintf(out, cap, "%s: %s", run->label, what);
    else
        snprintf(out, cap, "%s", run->label);
}

/* Every eval set name over all runs, in order of first appearance. */
static strata_err eval_names(const strata_report_run *runs, size_t n_runs, const char ***out,
                             size_t *n_out)
{
    size_t total = 0;
    for (size_t r = 0; r < n_runs; r++) total += runs[r].n_eval;
    const char **names = calloc(total ? total : 1, sizeof *names);
    if (!names) return oom("report");
    size_t n = 0;
    for (size_t r = 0; r < n_runs; r++)
        for (size_t i = 0; i < runs[r].n_eval; i++) {
            size_t k = 0;
            while (k < n && strcmp(names[k], runs[r].eval[i].name)) k++;
            if (k == n) names[n++] = runs[r].eval[i].name;
        }
    *out = names;
    *n_out = n;
    return strata_ok();
}

/* The comment naming the runs, the terminals and the common settings. */
static void gp_header(FILE *f, const strata_report_run *runs, size_t n_runs)
{
    fputs("# Written by `strata report`; redraw with `gnuplot report.gp` in this directory.\n", f);
    for (size_t r = 0; r < n_runs; r++) {
        fprintf(f, "# run %zu: ", r);
        gp_str(f, runs[r].label);
        fputs(" from ", f);
        gp_str(f, runs[r].path);
        fputs("\n", f);
    }
    /* pngcairo draws antialiased; Debian's gnuplot-nox has it, other builds
     * may only have the libgd png terminal. */
    fputs("png_term = (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) ? \\\n"
          "    \"pngcairo size 960,560 font 'sans,11' background '#ffffff' noenhanced\" : \\\n"
          "    \"png size 960,560 font 'sans,11' background '#ffffff' noenhanced\"\n"
          "svg_term = \"svg size 960,560 dynamic font 'sans,11' background '#ffffff' "
          "noenhanced\"\n"
          "set encoding utf8\nset grid\nset key outside right top Left reverse\n"
          "set xlabel 'step'\nset format y '%g'\nset offsets 0, 0, graph 0.05, graph 0.05\n\n",
          f);
}

/* Every series as a named data block. */
static void gp_data(FILE *f, const strata_report_run *runs, size_t n_runs, const char **names)
{
    char block[64];
    for (size_t r = 0; r < n_runs; r++) {
        for (int fi = 0; fi < STRATA_REPORT_N_FIELDS; fi++) {
            if (fi == STRATA_REPORT_TOKENS || !runs[r].field[fi].n) continue;
            snprintf(block, sizeof block, "r%zu_%s", r, strata_report_field_name(fi));
            gp_block(f, block, &runs[r].field[fi]);
        }
        for (size_t i = 0; i < runs[r].n_eval; i++) {
            size_t k = 0;
            while (strcmp(names[k], runs[r].eval[i].name)) k++;
            snprintf(block, sizeof block, "r%zu_eval%zu", r, k);
            gp_block(f, block, &runs[r].eval[i].loss);
            snprintf(block, sizeof block, "r%zu_acc%zu", r, k);
            gp_block(f, block, &runs[r].eval[i].acc);
            snprintf(block, sizeof block, "r%zu_accn%zu", r, k);
            gp_block(f, block, &runs[r].eval[i].acc_norm);
        }
    }
    fputs("\n", f);
}

/* Training loss: one plot, one colour per run, one dash pattern per loss;
 * returns the plots written (0 or 1). */
static int gp_loss_plot(FILE *f, const strata_report_run *runs, size_t n_runs)
{
    char block[64], title[512];
    int plots = 0, first;
    static const int loss_fields[] = {STRATA_REPORT_LOSS, STRATA_REPORT_LOSS_NEW,
                                      STRATA_REPORT_LOSS_REPLAY};
    first = 1;
    for (size_t r = 0; r < n_runs; r++)
        for (int j = 0; j < 3; j++) {
            const strata_report_series *s = &runs[r].field[loss_fields[j]];
            if (!s->n) continue;
            if (first) gp_begin(f, "loss", "training loss", "loss (nats/token)");
            snprintf(block, sizeof block, "r%zu_%s", r, strata_report_field_name(loss_fields[j]));
            curve_title(title, sizeof title, &runs[r], n_runs,
                        strata_report_field_name(loss_fields[j]));
            gp_curve(f, &first, block, s, (int)r + 1, j + 1, 0, title);
        }
    if (!first) {
        gp_render(f, "loss");
        plots++;
    }

    return plots;
}

/* One plot per held-out set; returns how many were written. */
static int gp_eval_plots(FILE *f, const strata_report_run *runs, size_t n_runs, const char **names,
                         size_t n_names, char **files)
{
    char block[64], title[512];
    int plots = 0, first;
    for (size_t k = 0; k < n_names; k++) {
        first = 1;
        for (size_t r = 0; r < n_runs; r++) {
            const strata_report_eval *ev = strata_report_find_eval(&runs[r], names[k]);
            if (!ev || !ev->loss.n) continue;
            if (first) {
                snprintf(title, sizeof title, "held-out loss: %s", names[k]);
                gp_begin(f, files[k], title, "loss (nats/token)");
            }
            snprintf(block, sizeof block, "r%zu_eval%zu", r, k);
            curve_title(title, sizeof title, &runs[r], n_runs, NULL);
            if (n_runs == 1) snprintf(title, sizeof title, "%s", names[k]);
            gp_curve(f, &first, block, &ev->loss, (int)r + 1, 1, 1, title);
        }
        for (size_t r = 0; r < n_runs; r++) { /* a choice set: acc solid, acc_norm dashed */
            const strata_report_eval *ev = strata_report_find_eval(&runs[r], names[k]);
            if (!ev || ev->loss.n || !ev->acc.n) continue;
            if (first) {
                snprintf(title, sizeof title, "multiple-choice accuracy: %s", names[k]);
                gp_begin(f, files[k], title, "accuracy");
            }
            for (int j = 0; j < 2; j++) {
                const strata_report_series *s = j ? &ev->acc_norm : &ev->acc;
                if (!s->n) continue;
                snprintf(block, sizeof block, "r%zu_%s%zu", r, j ? "accn" : "acc", k);
                curve_title(title, sizeof title, &runs[r], n_runs, j ? "acc_norm" : "acc");
                gp_curve(f, &first, block, s, (int)r + 1, j + 1, 1, title);
            }
        }
        if (!first) {
            gp_render(f, files[k]);
            plots++;
        }
    }

    return plots;
}

/* Learning rate and throughput, one curve per run; returns the plots written. */
static int gp_single_plots(FILE *f, const strata_report_run *runs, size_t n_runs)
{
    char block[64], title[512];
    int plots = 0, first;
    static const struct {
        int field;
        const char *file, *title, *ylabel;
    } single[] = {
        {STRATA_REPORT_LR, "lr", "learning rate", "learning rate"},
        {STRATA_REPORT_TOKENS_PER_S, "tokens_per_s", "throughput", "tokens/s"},
    };
    for (size_t p = 0; p < sizeof single / sizeof single[0]; p++) {
        first = 1;
        for (size_t r = 0; r < n_runs; r++) {
            const strata_report_series *s = &runs[r].field[single[p].field];
            if (!s->n) continue;
            if (first) gp_begin(f, single[p].file, single[p].title, single[p].ylabel);
            snprintf(block, sizeof block, "r%zu_%s", r, strata_report_field_name(single[p].field));
            curve_title(title, sizeof title, &runs[r], n_runs, NULL);
            if (n_runs == 1)
                snprintf(title, sizeof title, "%s", strata_report_field_name(single[p].field));
            gp_curve(f, &first, block, s, (int)r + 1, 1, 0, title);
        }
        if (!first) {
            gp_render(f, single[p].file);
            plots++;
        }
    }
    return plots;
}

static strata_err write_script(FILE *f, const strata_report_run *runs, size_t n_runs, int *n_plots)
{
    const char **names = NULL;
    size_t n_names = 0;
    STRATA_TRY(eval_names(runs, n_runs, &names, &n_names));
    char **files = calloc(n_names ? n_names : 1, sizeof *files);
    if (!files) {
        free(names);
        return oom("report");
    }
    strata_err e = strata_ok();
    for (size_t k = 0; k < n_names; k++) {
        files[k] = plot_name(names[k], files, k);
        if (!files[k]) {
            e = oom("report");
            goto done;
        }
    }

    gp_header(f, runs, n_runs);
    gp_data(f, runs, n_runs, names);
    int plots = gp_loss_plot(f, runs, n_runs);
    plots += gp_eval_plots(f, runs, n_runs, names, n_names, files);
    plots += gp_single_plots(f, runs, n_runs);
    *n_plots = plots;
done:
    for (size_t k = 0; k < n_names; k++) free(files[k]);
    free(files);
    free(names);
    return e;
}

strata_err strata_report_write_script(const char *dir, const strata_report_run *runs, size_t n_runs,
                                      int *n_plots)
{
    *n_plots = 0;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return oom("report");
    strata_err e = write_script(f, runs, n_runs, n_plots);
    if (fclose(f) && !e.code) e = oom("report");
    if (e.code) {
        free(text);
        return e;
    }
    char *path = join(dir, "report.gp");
    e = path ? write_file(path, text) : oom("report");
    free(path);
    free(text);
    return e;
}

/* ------------------------------------------------------------ run gnuplot */

/* The last non-empty line of text, trimmed, into out. */
static void last_line(const char *text, char *out, size_t cap)
{
    const char *end = text + strlen(text);
    while (end > text && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ')) end--;
    const char *start = end;
    while (start > text && start[-1] != '\n') start--;
    while (start < end && *start == ' ') start++;
    size_t n = (size_t)(end - start) < cap - 1 ? (size_t)(end - start) : cap - 1;
    memcpy(out, start, n);
    out[n] = '\0';
}

strata_err strata_report_plot(const char *dir)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC))
        return strata_errorf(STRATA_EFAIL, "report: cannot create a pipe: %s", strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
    posix_spawn_file_actions_addchdir_np(&fa, dir);
    static char arg0[] = "gnuplot", arg1[] = "report.gp";
    char *argv[] = {arg0, arg1, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "gnuplot", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc) {
        close(fds[0]);
        if (rc == ENOENT)
            return strata_errorf(STRATA_EFAIL,
                                 "gnuplot not found on PATH; the plots need it "
                                 "(HINT: apt-get install gnuplot-nox); %s/summary.md is written",
                                 dir);
        return strata_errorf(STRATA_EFAIL, "cannot run gnuplot in %s: %s", dir, strerror(rc));
    }

    /* Keep the tail of what gnuplot says: its error is the last line. */
    char out[8192];
    size_t used = 0;
    for (;;) {
        if (used == sizeof out - 1) {
            memmove(out, out + sizeof out / 2, used - sizeof out / 2);
            used -= sizeof out / 2;
        }
        ssize_t n = read(fds[0], out + used, sizeof out - 1 - used);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        used += (size_t)n;
    }
    out[used] = '\0';
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return strata_errorf(STRATA_EFAIL, "gnuplot: cannot wait: %s", strerror(errno));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return strata_ok();
    char why[512];
    last_line(out, why, sizeof why);
    if (WIFSIGNALED(status)) snprintf(why, sizeof why, "killed by signal %d", WTERMSIG(status));
    return strata_errorf(STRATA_EFAIL, "gnuplot failed on %s/report.gp: %s", dir,
                         why[0] ? why : "no message");
}

/* ------------------------------------------------------------------ write */

strata_err strata_report_write(const char *dir, const strata_report_run *runs, size_t n_runs,
                               int plots, int *n_plots)
{
    *n_plots = 0;
    STRATA_TRY(strata_mkdir_p(dir));
    char *md = NULL;
    STRATA_TRY(strata_report_markdown(runs, n_runs, &md));
    char *path = join(dir, "summary.md");
    strata_err e = path ? write_file(path, md) : oom("report");
    free(path);
    free(md);
    if (e.code) return e;
    STRATA_TRY(strata_report_write_script(dir, runs, n_runs, n_plots));
    if (plots && *n_plots) STRATA_TRY(strata_report_plot(dir));
    return strata_ok();
}
