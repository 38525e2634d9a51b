/* report.c — metrics files to runs, their labels, summaries and the markdown
 * summary table (see report.h); report_write.c writes the gnuplot script,
 * runs gnuplot and writes a report's directory. */
#include "strata/report.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
    return strata_errorf(STRATA_ENOMEM, "%s: out of memory reading metrics", path);
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
