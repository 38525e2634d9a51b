#include "strata/schedule.h"

#include <math.h>
#include <string.h>

float strata_schedule_lr(const strata_schedule *s, long step)
{
    if (step < s->warmup) return s->lr * (float)(step + 1) / (float)s->warmup;
    if (s->kind == STRATA_SCHED_CONSTANT) return s->lr;
    if (step >= s->total_steps) return s->min_lr;
    long decay_begin = s->warmup;
    if (s->kind == STRATA_SCHED_WSD) {
        long stable_end = s->total_steps - (long)lround(s->decay_fraction * s->total_steps);
        if (step < stable_end) return s->lr;
        decay_begin = stable_end > s->warmup ? stable_end : s->warmup;
    }
    long span = s->total_steps - decay_begin;
    double frac = span > 0 ? (double)(step - decay_begin) / (double)span : 1.0;
    double shape = s->kind == STRATA_SCHED_COSINE ? 0.5 * (1.0 + cos(M_PI * frac)) : 1.0 - frac;
    return (float)(s->min_lr + shape * (s->lr - s->min_lr));
}

int strata_schedule_parse(const char *name)
{
    static const char *names[] = {"cosine", "linear", "constant", "wsd"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}
