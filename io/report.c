/* report.c — metrics files to a summary table and gnuplot plots (see report.h). */
#include "strata/report.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "file.h"

static const char *const field_names[STRATA_REPORT_N_FIELDS] = {
    "loss", "loss_new", "loss_replay", "lr", "tokens_per_s", "tokens",
};

const char *strata_report_field_name(int f)
{
    return f >= 0 && f < STRATA_REPORT_N_FIELDS ? field_names[f] : "?";
}

/* ---------------------------------------------------------------- series */

static int series_push(strata_report_series *s, long step, double v)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        long *st = realloc(s->step, cap * sizeof *st);
        if (!st) return -1;
        s->step = st;
        double *va = realloc(s->val, cap * sizeof *va);
        if (!va) return -1;
        s->val = va;
        s->cap = cap;
    }
    s->step[s->n] = step;
    s->val[s->n] = v;
    s->n++;
    return 0;
}

/* Drops the values logged at `step` or later (a resumed run logs them again). */
static void series_cut(strata_report_series *s, long step)
{
    while (s->n > 0 && s->step[s->n - 1] >= step) s->n--;
}

static void series_free(strata_report_series *s)
{
    free(s->step);
    free(s->val);
    memset(s, 0, sizeof *s);
}

static long series_last_step(const strata_report_series *s)
{
    return s->n ? s->step[s->n - 1] : LONG_MIN;
}

static double series_last(const strata_report_series *s) { return s->n ? s->val[s->n - 1] : NAN; }

/* ------------------------------------------------------------------ load */

void strata_report_free(strata_report_run *run)
{
    if (!run) return;
    free(run->path);
    free(run->label);
    for (int f = 0; f < STRATA_REPORT_N_FIELDS; f++) series_free(&run->field[f]);
    for (size_t i = 0; i < run->n_eval; i++) {
        free(run->eval[i].name);
        series_free(&run->eval[i].loss);
        series_free(&run->eval[i].acc);
        series_free(&run->eval[i].acc_norm);
    }
    free(run->eval);
    memset(run, 0, sizeof *run);
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "unknown";
}

static strata_report_eval *eval_set(strata_report_run *run, const char *name)
{
    for (size_t i = 0; i < run->n_eval; i++)
        if (!strcmp(run->eval[i].name, name)) return &run->eval[i];
    strata_report_eval *ev = realloc(run->eval, (run->n_eval + 1) * sizeof *ev);
    if (!ev) return NULL;
    run->eval = ev;
    ev = &run->eval[run->n_eval];
    memset(ev, 0, sizeof *ev);
    ev->name = strdup(name);
    if (!ev->name) return NULL;
    run->n_eval++;
    return ev;
}

static strata_err oom(const char *path)
{
    return strata_errorf(STRATA_EFAIL, "%s: out of memory reading metrics", path);
}

/* A multiple-choice set's evaluation: "acc" and, if present, "acc_norm". */
static strata_err add_choice_record(strata_report_run *run, const json_t *obj, const char *path,
                                    long line, long step)
{
    static const char *const keys[2] = {"acc", "acc_norm"};
    double v[2] = {NAN, NAN};
    for (int k = 0; k < 2; k++) {
        const json_t *j = json_object_get(obj, keys[k]);
        if (!j || json_is_null(j)) continue;
        if (!json_is_number(j))
            return strata_errorf(STRATA_EINPUT, "%s:%ld: \"%s\" is %s, expected a number", path,
                                 line, keys[k], json_kind(j));
        v[k] = json_number_value(j);
    }
    strata_report_eval *ev = eval_set(run, json_string_value(json_object_get(obj, "eval")));
    if (!ev) return oom(path);
    series_cut(&ev->acc, step);
    series_cut(&ev->acc_norm, step);
    if (series_push(&ev->acc, step, v[0])) return oom(path);
    if (!isnan(v[1]) && series_push(&ev->acc_norm, step, v[1])) return oom(path);
    return strata_ok();
}

/* One parsed line: adds its values to run. *last_train is the step of the
 * latest training record so far (LONG_MIN before the first). */
static strata_err add_record(strata_report_run *run, const json_t *obj, const char *path, long line,
                             long *last_train)
{
    if (!json_is_object(obj))
        return strata_errorf(STRATA_EINPUT, "%s:%ld: %s, expected a JSON object", path, line,
                             json_kind(obj));
    const json_t *jstep = json_object_get(obj, "step");
    if (!jstep || json_is_null(jstep)) return strata_ok(); /* not a record */
    if (!json_is_integer(jstep) || json_integer_value(jstep) < 0 ||
        json_integer_value(jstep) > LONG_MAX)
        return strata_errorf(STRATA_EINPUT, "%s:%ld: \"step\" is %s, expected an integer >= 0",
                             path, line, json_is_integer(jstep) ? "negative" : json_kind(jstep));
    long step = (long)json_integer_value(jstep);

    const json_t *jeval = json_object_get(obj, "eval");
    if (jeval && !json_is_null(jeval)) {
        if (!json_is_string(jeval))
            return strata_errorf(STRATA_EINPUT, "%s:%ld: \"eval\" is %s, expected a string", path,
                                 line, json_kind(jeval));
        const json_t *jacc = json_object_get(obj, "acc");
        if (jacc && !json_is_null(jacc)) return add_choice_record(run, obj, path, line, step);
        const json_t *jloss = json_object_get(obj, "loss");
        if (!jloss || json_is_null(jloss)) return strata_ok();
        if (!json_is_number(jloss))
            return strata_errorf(STRATA_EINPUT, "%s:%ld: \"loss\" is %s, expected a number", path,
                                 line, json_kind(jloss));
        strata_report_eval *ev = eval_set(run, json_string_value(jeval));
        if (!ev) return oom(path);
        series_cut(&ev->loss, step);
        if (series_push(&ev->loss, step, json_number_value(jloss))) return oom(path);
        return strata_ok();
    }

    double v[STRATA_REPORT_N_FIELDS];
    int any = 0;
    for (int f = 0; f < STRATA_REPORT_N_FIELDS; f++) {
        const json_t *j = json_object_get(obj, field_names[f]);
        v[f] = NAN;
        if (!j || json_is_null(j)) continue;
        if (!json_is_number(j))
            return strata_errorf(STRATA_EINPUT, "%s:%ld: \"%s\" is %s, expected a number", path,
                                 line, field_names[f], json_kind(j));
        v[f] = json_number_value(j);
        any = 1;
    }
    if (!any) return strata_ok();
    /* A step at or before the last one: a resumed run logging again what the
     * stopped one had logged after its checkpoint. The later values win. */
    if (step <= *last_train)
        for (int f = 0; f < STRATA_REPORT_N_FIELDS; f++) series_cut(&run->field[f], step);
    *last_train = step;
    for (int f = 0; f < STRATA_REPORT_N_FIELDS; f++)
        if (!isnan(v[f]) && series_push(&run->field[f], step, v[f])) return oom(path);
    return strata_ok();
}

static strata_err load_lines(strata_report_run *run, FILE *fp, const char *path)
{
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    long line = 0, last_train = LONG_MIN;
    strata_err e = strata_ok();
    errno = 0;
    while ((len = getline(&buf, &cap, fp)) >= 0) {
        line++;
        int whole = len > 0 && buf[len - 1] == '\n';
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) len--;
        size_t skip = strspn(buf, " \t");
        if ((ssize_t)skip >= len) continue; /* blank line */
        json_error_t jerr;
        json_t *obj = json_loadb(buf, (size_t)len, JSON_DECODE_ANY, &jerr);
        /* A last line with no newline that does not parse is a record cut
         * short by a kill; the metrics writer drops it too when it reopens. */
        if (!obj && !whole) break;
        if (!obj) {
            e = strata_errorf(STRATA_EINPUT, "%s:%ld: not valid JSON (column %d: %s)", path, line,
                              jerr.column, jerr.text);
            break;
        }
        e = add_record(run, obj, path, line, &last_train);
        json_decref(obj);
        if (e.code) break;
    }
    if (!e.code && ferror(fp))
        e = strata_errorf(STRATA_EINPUT, "%s: cannot read: %s", path, strerror(errno));
    free(buf);
    return e;
}

static int run_is_empty(const strata_report_run *run)
{
    for (int f = 0; f < STRATA_REPORT_N_FIELDS; f++)
        if (run->field[f].n) return 0;
    for (size_t i = 0; i < run->n_eval; i++)
        if (run->eval[i].loss.n || run->eval[i].acc.n) return 0;
    return 1;
}

strata_err strata_report_load(strata_report_run *run, const char *path)
{
    memset(run, 0, sizeof *run);
    FILE *fp = fopen(path, "r");
    if (!fp) return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(fp);
        return strata_errorf(STRATA_EINPUT, "%s: is a directory, expected a metrics file", path);
    }
    run->path = strdup(path);
    strata_err e = run->path ? load_lines(run, fp, path) : oom(path);
    fclose(fp);
    if (!e.code && run_is_empty(run))
        e = strata_errorf(STRATA_EINPUT,
                          "%s: no metrics records (expected JSON lines with \"step\" and "
                          "\"loss\", or \"eval\" and \"loss\")",
                          path);
    if (e.code) strata_report_free(run);
    return e;
}

/* ---------------------------------------------------------------- labels */

/* path's last component without its extension, as a new string. */
static char *stem_of(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *s = strdup(base);
    if (!s) return NULL;
    char *dot = strrchr(s, '.');
    if (dot && dot != s) *dot = '\0';
    return s;
}

/* The name of the directory that holds path, or NULL. */
static char *parent_name(const char *path)
{
    char *real = realpath(path, NULL);
    if (!real) return NULL;
    char *slash = strrchr(real, '/');
    if (slash) *slash = '\0';
    const char *name = strrchr(real, '/');
    name = name ? name + 1 : real;
    char *s = *name ? strdup(name) : NULL;
    free(real);
    return s;
}

/* path without its extension. */
static char *path_stem(const char *path)
{
    char *s = strdup(path);
    if (!s) return NULL;
    char *dot = strrchr(s, '.');
    char *slash = strrchr(s, '/');
    if (dot && (!slash || dot > slash + 1)) *dot = '\0';
    return s;
}

static int label_taken(const strata_report_run *runs, size_t n, size_t self)
{
    for (size_t i = 0; i < n; i++)
        if (i != self && runs[i].label && !strcmp(runs[i].label, runs[self].label)) return 1;
    return 0;
}

strata_err strata_report_label_runs(strata_report_run *runs, size_t n_runs)
{
    for (size_t i = 0; i < n_runs; i++) {
        free(runs[i].label);
        char *stem = stem_of(runs[i].path);
        if (!stem) return oom(runs[i].path);
        if (!strcmp(stem, "metrics")) {
            char *parent = parent_name(runs[i].path);
            if (parent) {
                free(stem);
                stem = parent;
            }
        }
        runs[i].label = stem;
    }
    /* Two runs that share a name take their paths instead; the same file
     * given twice is numbered. */
    int *clash = calloc(n_runs ? n_runs : 1, sizeof *clash);
    if (!clash) return oom("report");
    for (size_t i = 0; i < n_runs; i++) clash[i] = label_taken(runs, n_runs, i);
    for (size_t i = 0; i < n_runs; i++) {
        if (!clash[i]) continue;
        char *p = path_stem(runs[i].path);
        if (!p) {
            free(clash);
            return oom(runs[i].path);
        }
        free(runs[i].label);
        runs[i].label = p;
    }
    free(clash);
    for (size_t i = 1; i < n_runs; i++)
        for (int k = 2; label_taken(runs, i, i); k++) {
            char *l = NULL;
            if (asprintf(&l, "%s#%d", runs[i].path, k) < 0) return oom(runs[i].path);
            free(runs[i].label);
            runs[i].label = l;
        }
    return strata_ok();
}

/* --------------------------------------------------------------- summary */

const strata_report_eval *strata_report_find_eval(const strata_report_run *run, const char *name)
{
    for (size_t i = 0; i < run->n_eval; i++)
        if (!strcmp(run->eval[i].name, name)) return &run->eval[i];
    return NULL;
}

strata_report_eval_summary strata_report_summarize_eval(const strata_report_eval *ev)
{
    strata_report_eval_summary s = {-1, -1, NAN, NAN, NAN};
    if (!ev || !ev->loss.n) return s;
    s.base_step = ev->loss.step[0];
    s.base = ev->loss.val[0];
    s.last_step = series_last_step(&ev->loss);
    s.last = series_last(&ev->loss);
    s.delta = s.last - s.base;
    return s;
}

strata_report_summary strata_report_summarize(const strata_report_run *run)
{
    strata_report_summary s;
    s.final_step = -1;
    for (int f = 0; f < STRATA_REPORT_N_FIELDS; f++)
        if (run->field[f].n && series_last_step(&run->field[f]) > s.final_step)
            s.final_step = series_last_step(&run->field[f]);
    for (size_t i = 0; i < run->n_eval; i++)
        if (run->eval[i].loss.n && series_last_step(&run->eval[i].loss) > s.final_step)
            s.final_step = series_last_step(&run->eval[i].loss);
    for (size_t i = 0; i < run->n_eval; i++)
        if (run->eval[i].acc.n && series_last_step(&run->eval[i].acc) > s.final_step)
            s.final_step = series_last_step(&run->eval[i].acc);
    const strata_report_series *tok = &run->field[STRATA_REPORT_TOKENS];
    s.tokens = tok->n ? (long)llround(series_last(tok)) : -1;
    s.final_loss = series_last(&run->field[STRATA_REPORT_LOSS]);
    s.final_loss_new = series_last(&run->field[STRATA_REPORT_LOSS_NEW]);
    s.final_loss_replay = series_last(&run->field[STRATA_REPORT_LOSS_REPLAY]);
    const strata_report_series *tps = &run->field[STRATA_REPORT_TOKENS_PER_S];
    double sum = 0;
    for (size_t i = 0; i < tps->n; i++) sum += tps->val[i];
    s.mean_tokens_per_s = tps->n ? sum / (double)tps->n : NAN;
    strata_report_eval_summary old =
        strata_report_summarize_eval(strata_report_find_eval(run, "old"));
    strata_report_eval_summary new =
        strata_report_summarize_eval(strata_report_find_eval(run, "new"));
    s.forgetting = old.delta;
    s.learning = -new.delta;
    return s;
}

/* -------------------------------------------------------------- markdown */

/* Text in a table cell: '|' escaped, control characters shown as '?'. */
static void md_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '|')
            fputs("\\|", f);
        else if (c < 0x20 || c == 0x7f)
            fputc('?', f);
        else
            fputc(c, f);
    }
}

static void md_num(FILE *f, const char *fmt, double v)
{
    fputs(" | ", f);
    if (isnan(v))
        fputs("n/a", f);
    else
        fprintf(f, fmt, v);
}

static void md_step(FILE *f, long v)
{
    fputs(" | ", f);
    if (v < 0)
        fputs("n/a", f);
    else
        fprintf(f, "%ld", v);
}

/* Multiple-choice sets: baseline (first) and last accuracy; forgetting is
 * the drop, baseline - last. Nothing when no run has one. */
static void md_choice_table(FILE *f, const strata_report_run *runs, size_t n_runs)
{
    int any = 0;
    for (size_t r = 0; r < n_runs; r++)
        for (size_t i = 0; i < runs[r].n_eval; i++) {
            const strata_report_series *a = &runs[r].eval[i].acc, *an = &runs[r].eval[i].acc_norm;
            if (!a->n) continue;
            if (!any++)
                fputs("\nMultiple-choice sets: accuracy at the baseline (the first evaluation) "
                      "and the last; forgetting = baseline acc - last acc.\n\n"
                      "| run | choice set | baseline step | baseline acc | last step | last acc "
                      "| last acc_norm | forgetting |\n"
                      "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
                      f);
            fputs("| ", f);
            md_text(f, runs[r].label ? runs[r].label : runs[r].path);
            fputs(" | ", f);
            md_text(f, runs[r].eval[i].name);
            md_step(f, a->step[0]);
            md_num(f, "%.4f", a->val[0]);
            md_step(f, series_last_step(a));
            md_num(f, "%.4f", series_last(a));
            md_num(f, "%.4f", series_last(an));
            md_num(f, "%+.4f", a->val[0] - series_last(a));
            fputs(" |\n", f);
        }
}

strata_err strata_report_markdown(const strata_report_run *runs, size_t n_runs, char **md)
{
    char *buf = NULL;
    size_t len = 0;
    *md = NULL;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return oom("report");

    fputs("# strata report\n\n", f);
    fputs("Training: the last logged value of each loss and the mean tokens/s. ", f);
    fputs("Forgetting = eval `old` last loss - its baseline; ", f);
    fputs("learning = eval `new` baseline - its last loss.\n\n", f);
    fputs("| run | final step | tokens | loss | loss_new | loss_replay | mean tokens/s "
          "| forgetting | learning |\n",
          f);
    fputs("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n", f);
    size_t n_rows = 0;
    for (size_t r = 0; r < n_runs; r++) {
        strata_report_summary s = strata_report_summarize(&runs[r]);
        fputs("| ", f);
        md_text(f, runs[r].label ? runs[r].label : runs[r].path);
        md_step(f, s.final_step);
        md_step(f, s.tokens);
        md_num(f, "%.4f", s.final_loss);
        md_num(f, "%.4f", s.final_loss_new);
        md_num(f, "%.4f", s.final_loss_replay);
        md_num(f, "%.1f", s.mean_tokens_per_s);
        md_num(f, "%.4f", s.forgetting);
        md_num(f, "%.4f", s.learning);
        fputs(" |\n", f);
        for (size_t i = 0; i < runs[r].n_eval; i++) n_rows += runs[r].eval[i].loss.n > 0;
    }

    fputs("\n", f);
    if (n_rows) {
        fputs("Held-out sets: baseline = the first evaluation (step 0: the init model), "
              "delta = last - baseline.\n\n",
              f);
        fputs("| run | eval set | baseline step | baseline loss | last step | last loss "
              "| delta |\n",
              f);
        fputs("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n", f);
        for (size_t r = 0; r < n_runs; r++)
            for (size_t i = 0; i < runs[r].n_eval; i++) {
                if (!runs[r].eval[i].loss.n) continue; /* a choice set: its own table */
                strata_report_eval_summary s = strata_report_summarize_eval(&runs[r].eval[i]);
                fputs("| ", f);
                md_text(f, runs[r].label ? runs[r].label : runs[r].path);
                fputs(" | ", f);
                md_text(f, runs[r].eval[i].name);
                md_step(f, s.base_step);
                md_num(f, "%.4f", s.base);
                md_step(f, s.last_step);
                md_num(f, "%.4f", s.last);
                md_num(f, "%+.4f", s.delta);
                fputs(" |\n", f);
            }
    } else {
        fputs("No evaluation records.\n", f);
    }
    md_choice_table(f, runs, n_runs);
    if (fclose(f)) {
        free(buf);
        return oom("report");
    }
    *md = buf;
    return strata_ok();
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
            snprintf(block, sizeof block, "r%zu_%s", r, field_names[fi]);
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
            snprintf(block, sizeof block, "r%zu_%s", r, field_names[loss_fields[j]]);
            curve_title(title, sizeof title, &runs[r], n_runs, field_names[loss_fields[j]]);
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
            snprintf(block, sizeof block, "r%zu_%s", r, field_names[single[p].field]);
            curve_title(title, sizeof title, &runs[r], n_runs, NULL);
            if (n_runs == 1) snprintf(title, sizeof title, "%s", field_names[single[p].field]);
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
