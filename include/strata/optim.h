/* optim.h — AdamW over a range of the parameter buffer.
 *
 * The optimizer owns Adam's first and second moments for the floats
 * [begin, end) of the parameter buffer: the whole buffer without ZeRO, this
 * rank's shard with it. Per-tensor settings (weight decay on 2-D weights
 * only, a learning-rate multiplier that is 0 for frozen tensors) come from a
 * table built once from the model. The update is PyTorch's AdamW to the
 * operation: p *= 1 - lr*wd; m, v updated; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
 * A frozen tensor's parameters and moments are never touched.
 */
#ifndef STRATA_OPTIM_H
#define STRATA_OPTIM_H

#include <stddef.h>

#include "strata/err.h"

typedef struct strata_adamw_config {
    float beta1, beta2, eps, weight_decay;
} strata_adamw_config;

/* One tensor's extent in the buffer and how the optimizer treats it. */
typedef struct strata_param_group {
    size_t begin, end; /* float offsets, padding included */
    int decay;         /* weight decay applies */
    float lr_mult;     /* 0 = frozen */
} strata_param_group;

typedef struct strata_adamw {
    strata_adamw_config cfg;
    size_t begin, end; /* the range this optimizer owns */
    float *m, *v;      /* (end - begin) floats each */
    long t;            /* updates applied so far (bias correction) */
} strata_adamw;

strata_err strata_adamw_init(strata_adamw *opt, const strata_adamw_config *cfg, size_t begin,
                             size_t end);
void strata_adamw_free(strata_adamw *opt);

/* One update of params[begin, end) from grads[begin, end) multiplied by
 * grad_scale (e.g. 1/tokens times the clipping factor). groups must cover
 * the buffer in order. Increments t. */
void strata_adamw_step(strata_adamw *opt, float *params, const float *grads, float grad_scale,
                       float lr, const strata_param_group *groups, int n_groups);

/* Sum of squares of grads[begin, end), in double, for the global norm;
 * allocates nothing (no out-of-memory to report). */
double strata_sum_squares(const float *x, size_t begin, size_t end);

#endif
