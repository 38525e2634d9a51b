/* watchdog.h — no silent hangs: a rank stuck too long ends the whole job.
 *
 * A lost link or a dead node leaves MPI collectives waiting forever. The
 * watchdog is a thread that watches the phase the main thread announced
 * last (data, compute, reduce, checkpoint, eval); when one phase lasts
 * longer than the timeout it prints one line (rank, host, step, phase,
 * seconds waited) and ends the job: MPI_Abort, and if that does not return
 * within 10 s (the abort may itself need the lost network), SIGALRM's
 * default action ends the process. Nothing is written after it fires, so
 * the last checkpoint stays the last good one.
 */
#ifndef STRATA_WATCHDOG_H
#define STRATA_WATCHDOG_H

#include "strata/comm.h"

typedef struct strata_watchdog strata_watchdog;

/* [train] step_timeout < 0 (automatic): the timeout is the larger of a floor
 * and a multiple of the mean step time measured so far, so a slow machine
 * is not mistaken for a hang and a fast one still notices within minutes. */
#define STRATA_WATCHDOG_FLOOR_S    300.0
#define STRATA_WATCHDOG_STEP_RATIO 20.0

/* timeout_s <= 0: the watchdog does nothing. */
strata_watchdog *strata_watchdog_start(strata_comm *c, double timeout_s);
/* Marks the start of a phase (a string literal) of step; restarts the clock. */
void strata_watchdog_phase(strata_watchdog *w, long step, const char *phase);
/* Changes the timeout (the automatic one follows the measured step time). */
void strata_watchdog_set_timeout(strata_watchdog *w, double timeout_s);
/* Stops watching (e.g. while waiting for new shards on purpose). */
void strata_watchdog_pause(strata_watchdog *w);
void strata_watchdog_stop(strata_watchdog *w);

#endif
