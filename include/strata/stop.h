/* stop.h — stop requests from signals.
 *
 * SIGTERM, SIGINT and SIGUSR1 (Slurm's warning before a time limit or a
 * preemption) only set a flag; the trainer polls it between micro-steps and
 * evaluation batches, the ranks agree on it, save a checkpoint and exit 75.
 * A second signal during the save changes nothing: the flag is already set
 * and the save is atomic.
 */
#ifndef STRATA_STOP_H
#define STRATA_STOP_H

void strata_stop_install(void);
int strata_stop_requested(void);
/* The signal that asked to stop (0 if none), for the log line. */
int strata_stop_signal(void);

#endif
