/* train_step.h — one optimizer step's gradients on one rank.
 *
 * Forward and backward over the rank's slots of a global batch, micro-batch
 * by micro-batch. The micro-batches' gradients are added along the one
 * summation tree (tree_sum.h) in buffers this object owns, sized by its own
 * model, so runs of different models in one process never share them. The
 * last micro-batch folds the pending sums in block by block as backward
 * finishes each block and tells the gradient reduction (comm.h) that those
 * floats are final, so communication starts while backward still runs.
 * Afterwards the model's gradient buffer holds the sum over the rank's
 * micro-batches of the summed (not averaged) token losses' gradients.
 */
#ifndef STRATA_TRAIN_STEP_H
#define STRATA_TRAIN_STEP_H

#include <stdint.h>

#include "strata/comm.h"
#include "strata/err.h"
#include "strata/loader.h"
#include "strata/model.h"

/* What backward computes this step (param_policy.h decides it). */
typedef struct strata_step_opts {
    int first_trainable_block; /* blocks below get no gradient */
    int embeddings_frozen;
    int stop_at_top; /* feature extraction: only the final norm and the lm head */
    float dropout;   /* p, 0 = off */
    uint64_t seed;   /* dropout masks' key, with the step and the global slot */
} strata_step_opts;

/* The rank's loss sums of one step: summed token losses and token counts
 * of the new data and of the replay. */
typedef struct strata_step_sums {
    double loss_new, tokens_new, loss_replay, tokens_replay;
} strata_step_sums;

typedef struct strata_train_step strata_train_step;

/* micro_batch sequences of T tokens per forward; slot_begin: this rank's
 * first slot of the global batch (dropout names samples by global slot). */
strata_err strata_train_step_create(strata_train_step **out, strata_model *m, int micro_batch,
                                    int T, int slot_begin);
void strata_train_step_free(strata_train_step *s);
/* The gradients of batch into the model's gradient buffer (zeroed first).
 * sync (may be NULL) is told as ranges become final. Errors: the model's
 * (bad shape, STRATA_ENOMEM) and STRATA_ENOMEM for accumulation buffers. */
strata_err strata_train_step_gradients(strata_train_step *s, const strata_batch *batch,
                                       const strata_step_opts *o, strata_grad_sync *sync,
                                       strata_step_sums *sums);

/* Splits n rows of T+1 tokens into inputs and targets (n, T) each. */
void strata_split_rows(const uint32_t *rows, int n, int T, uint32_t *inputs, uint32_t *targets);

#endif
