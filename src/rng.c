#include "strata/rng.h"

#include <math.h>

float strata_rng_normal(uint64_t bits)
{
    /* u1 in (0, 1] so the log is finite; u2 in [0, 1). */
    double u1 = ((double)(bits >> 32) + 1.0) * 0x1p-32;
    double u2 = (double)(bits & 0xffffffffu) * 0x1p-32;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}
