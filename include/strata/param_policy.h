/* param_policy.h — what each parameter may learn, and what pulls it back.
 *
 * Freezing ([train] freeze = embeddings, blocks:k or all_blocks), gradual
 * unfreezing (one more block every unfreeze_every steps, from the top),
 * layer-wise lr decay (block l of L gets decay^(L-1-l), the embeddings
 * decay^L) become one optimizer group per tensor: its range, whether weight
 * decay applies, and an lr multiplier (0 = frozen). The anti-forgetting
 * terms act against the init weights theta0: L2-SP adds alpha (theta -
 * theta0) to the per-token gradient, EWC lambda F (theta - theta0) with F
 * the diagonal Fisher read from [train] fisher, and L1 is a proximal step
 * that soft-thresholds each trained 2-D weight toward 0 (or theta0) by lr *
 * lr_mult * lambda, so a weight can land exactly on its anchor.
 */
#ifndef STRATA_PARAM_POLICY_H
#define STRATA_PARAM_POLICY_H

#include <stddef.h>

#include "strata/config.h"
#include "strata/err.h"
#include "strata/model.h"
#include "strata/optim.h"
#include "strata/train_step.h"

typedef struct strata_param_policy {
    const strata_config *cfg;
    strata_model *model; /* borrowed */
    int L;
    size_t n_floats;
    strata_param_group *groups; /* one per tensor, + 2 for the new-token rows */
    int n_groups;
    long first_new_row; /* the first row strata extend-vocab added, 0: none */
    float *theta0;      /* init weights, when a penalty or L1-to-init needs them */
    float *fisher;      /* EWC's diagonal Fisher, model layout */
} strata_param_policy;

/* Takes theta0 from the model as it is now (the init weights), reads the
 * Fisher for EWC and builds step 0's groups. */
strata_err strata_policy_init(strata_param_policy *p, const strata_config *cfg, strata_model *m);
void strata_policy_free(strata_param_policy *p);
/* Blocks frozen at step (from the bottom). */
int strata_policy_frozen_blocks(const strata_param_policy *p, long step);
/* The first embedding row strata extend-vocab added (0: none, from the
 * model's origin): those rows get [train] new_token_lr_mult. EINPUT when
 * the multiplier is set on a model that was never extended. */
strata_err strata_policy_set_new_rows(strata_param_policy *p, long first_new_row);
/* Rebuilds the groups for step (gradual unfreezing moves with it). */
void strata_policy_update_groups(strata_param_policy *p, long step);
/* What backward computes at step. */
strata_step_opts strata_policy_step_opts(const strata_param_policy *p, long step);
/* 1 when L2-SP or EWC adds a gradient term. */
int strata_policy_has_penalty(const strata_param_policy *p);
/* g[lo, hi) (already per-token scaled) += the L2-SP and EWC gradients. */
void strata_policy_penalty_grads(const strata_param_policy *p, float *g, const float *params,
                                 size_t lo, size_t hi);
/* L1's proximal step on params[lo, hi) after the update at rate lr. */
void strata_policy_l1_prox(const strata_param_policy *p, float *params, float lr, size_t lo,
                           size_t hi);
/* Bytes of theta0 and the Fisher, for the memory line. */
double strata_policy_extra_bytes(const strata_param_policy *p);

#endif
