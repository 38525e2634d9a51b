/* metrics.h — the metrics file: JSON Lines, one object per logged step or
 * evaluation (see docs/DESIGN.md for the fields).
 *
 * Only rank 0 writes it. Each line is written whole and flushed, so a kill
 * leaves at most one partial last line, which reopening drops. Reopening for
 * a resumed run also drops every record after the resumed step: those steps
 * will be run again and logged again, so the file never holds a step twice.
 */
#ifndef STRATA_METRICS_H
#define STRATA_METRICS_H

#include <jansson.h>

#include "strata/err.h"

typedef struct strata_metrics strata_metrics;

/* keep_through_step < 0: start a new file; otherwise keep the records with
 * step <= keep_through_step and append after them. */
strata_err strata_metrics_open(strata_metrics **out, const char *path, long keep_through_step);
/* Writes one record built with jansson (names escaped, non-finite numbers
 * as null: json_real refuses them, so callers pass json_null()). */
strata_err strata_metrics_write_json(strata_metrics *m, const json_t *record);
void strata_metrics_close(strata_metrics *m);

/* Replaces the small text file path with text atomically and durably (a
 * run's DONE marker for slurm/). */
strata_err strata_write_small_file(const char *path, const char *text);

#endif
