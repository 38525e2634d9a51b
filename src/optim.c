#include "strata/optim.h"

#include <math.h>
#include <stdlib.h>

strata_err strata_adamw_init(strata_adamw *opt, const strata_adamw_config *cfg, size_t begin,
                             size_t end)
{
    opt->cfg = *cfg;
    opt->begin = begin;
    opt->end = end;
    opt->t = 0;
    size_t n = end > begin ? end - begin : 0;
    opt->m = calloc(n ? n : 1, sizeof(float));
    opt->v = calloc(n ? n : 1, sizeof(float));
    if (!opt->m || !opt->v) {
        strata_adamw_free(opt);
        return strata_errorf(STRATA_ENOMEM, "out of memory for optimizer state (%zu floats)", 2 * n);
    }
    return strata_ok();
}

void strata_adamw_free(strata_adamw *opt)
{
    free(opt->m);
    free(opt->v);
    opt->m = opt->v = NULL;
}

void strata_adamw_step(strata_adamw *opt, float *params, const float *grads, float grad_scale,
                       float lr, const strata_param_group *groups, int n_groups)
{
    opt->t++;
    const float b1 = opt->cfg.beta1, b2 = opt->cfg.beta2, eps = opt->cfg.eps;
    const float bc1 = 1.0f - powf(b1, (float)opt->t);
    const float bc2_sqrt = sqrtf(1.0f - powf(b2, (float)opt->t));
    for (int g = 0; g < n_groups; g++) {
        size_t lo = groups[g].begin > opt->begin ? groups[g].begin : opt->begin;
        size_t hi = groups[g].end < opt->end ? groups[g].end : opt->end;
        if (lo >= hi || groups[g].lr_mult == 0.0f) continue;
        const float glr = lr * groups[g].lr_mult;
        const float decay = groups[g].decay ? 1.0f - glr * opt->cfg.weight_decay : 1.0f;
        const float step_size = glr / bc1;
        /* m and v hold [opt->begin, opt->end): index them from there (a
         * pointer moved before an array's start is undefined behaviour). */
        float *m = opt->m, *v = opt->v;
        const size_t ob = opt->begin;
#pragma omp parallel for schedule(static)
        for (size_t i = lo; i < hi; i++) {
            float gr = grads[i] * grad_scale;
            float p = params[i] * decay;
            m[i - ob] = b1 * m[i - ob] + (1.0f - b1) * gr;
            v[i - ob] = b2 * v[i - ob] + (1.0f - b2) * gr * gr;
            params[i] = p - step_size * m[i - ob] / (sqrtf(v[i - ob]) / bc2_sqrt + eps);
        }
    }
}

double strata_sum_squares(const float *x, size_t begin, size_t end)
{
    /* Fixed-size chunks summed in order: the same answer at any thread
     * count. The partial sums go through a fixed array, a batch of chunks at
     * a time, so the norm needs no allocation and cannot run out of memory. */
    enum { CHUNK = 1 << 16, BATCH = 256 };
    double partial[BATCH], total = 0.0;
    for (size_t first = begin; first < end; first += (size_t)CHUNK * BATCH) {
        size_t span = end - first, n_chunks = (span + CHUNK - 1) / CHUNK;
        if (n_chunks > BATCH) n_chunks = BATCH;
#pragma omp parallel for schedule(static)
        for (size_t c = 0; c < n_chunks; c++) {
            size_t lo = first + c * CHUNK, hi = lo + CHUNK < end ? lo + CHUNK : end;
            double s = 0.0;
            for (size_t i = lo; i < hi; i++) s += (double)x[i] * x[i];
            partial[c] = s;
        }
        for (size_t c = 0; c < n_chunks; c++) total += partial[c];
    }
    return total;
}
