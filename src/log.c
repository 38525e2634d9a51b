/* The log sink; see log.h. */
#include "strata/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static strata_log_fn sink;
static void *sink_ctx;

void strata_log_set(strata_log_fn fn, void *ctx)
{
    sink = fn;
    sink_ctx = ctx;
}

void strata_log(strata_log_level level, const char *fmt, ...)
{
    if (!sink) return;
    char small[1024], *line = small;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    /* A long line (a long path in it) is formatted again, whole. */
    if ((size_t)n >= sizeof small && (line = malloc((size_t)n + 1))) {
        va_start(ap, fmt);
        vsnprintf(line, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    if (!line) line = small;
    size_t len = strlen(line);
    if (len && line[len - 1] == '\n') line[len - 1] = 0;
    sink(sink_ctx, level, line);
    if (line != small) free(line);
}
