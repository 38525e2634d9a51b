/* schedule.h — the learning rate as a pure function of the step.
 *
 * Every schedule warms up linearly from lr/warmup to lr over `warmup` steps,
 * then: cosine decays to min_lr at total_steps; linear decays to min_lr;
 * constant holds lr; wsd (warmup-stable-decay) holds lr until the last
 * decay_fraction of total_steps, then decays linearly to min_lr. Steps past
 * total_steps get min_lr (constant: lr). No state, so resume needs nothing.
 */
#ifndef STRATA_SCHEDULE_H
#define STRATA_SCHEDULE_H

typedef enum strata_schedule_kind {
    STRATA_SCHED_COSINE,
    STRATA_SCHED_LINEAR,
    STRATA_SCHED_CONSTANT,
    STRATA_SCHED_WSD
} strata_schedule_kind;

typedef struct strata_schedule {
    strata_schedule_kind kind;
    float lr, min_lr;
    long warmup, total_steps;
    float decay_fraction; /* wsd only */
} strata_schedule;

/* Learning rate for the update made at step (0-based). */
float strata_schedule_lr(const strata_schedule *s, long step);
/* "cosine" | "linear" | "constant" | "wsd"; returns -1 if unknown. */
int strata_schedule_parse(const char *name);

#endif
