#include "strata/metrics.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file.h"

struct strata_metrics {
    FILE *f;
    char path[4096];
};

/* Rewrites path keeping only complete records with step <= last_step. */
static strata_err truncate_after(const char *path, long last_step)
{
    FILE *in = fopen(path, "r");
    if (!in) return strata_ok(); /* nothing logged yet */
    strata_out_file out;
    strata_err e = strata_out_open(&out, path);
    if (e.code) {
        fclose(in);
        return e;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) > 0) {
        if (line[n - 1] != '\n') break; /* a torn last line */
        json_t *obj = json_loads(line, 0, NULL);
        json_t *step = obj ? json_object_get(obj, "step") : NULL;
        if (step && json_is_integer(step) && json_integer_value(step) <= last_step)
            strata_out_write(&out, line, (size_t)n);
        json_decref(obj);
    }
    free(line);
    fclose(in);
    return strata_out_finish(&out);
}

strata_err strata_metrics_open(strata_metrics **out, const char *path, long keep_through_step)
{
    STRATA_TRY(strata_mkdir_parent(path));
    if (keep_through_step >= 0) STRATA_TRY(truncate_after(path, keep_through_step));
    strata_metrics *m = calloc(1, sizeof *m);
    if (!m) return strata_errorf(STRATA_ENOMEM, "out of memory");
    m->f = fopen(path, keep_through_step >= 0 ? "a" : "w");
    if (!m->f) {
        free(m);
        return strata_errorf(STRATA_EINPUT, "%s: cannot open metrics file: %s", path,
                             strerror(errno));
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    *out = m;
    return strata_ok();
}

strata_err strata_metrics_write_json(strata_metrics *m, const json_t *record)
{
    /* Real numbers with 6 significant digits, as the records always had. */
    char *text = json_dumps(record, JSON_COMPACT | JSON_REAL_PRECISION(6));
    if (!text) return strata_errorf(STRATA_ENOMEM, "%s: out of memory for a record", m->path);
    strata_err e = strata_ok();
    if (fprintf(m->f, "%s\n", text) < 0 || fflush(m->f))
        e = strata_errorf(STRATA_EFAIL, "%s: write failed: %s", m->path, strerror(errno));
    free(text);
    return e;
}

strata_err strata_write_small_file(const char *path, const char *text)
{
    return strata_write_atomic(path, text, strlen(text));
}

void strata_metrics_close(strata_metrics *m)
{
    if (!m) return;
    fclose(m->f);
    free(m);
}
