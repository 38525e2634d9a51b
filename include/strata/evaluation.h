/* evaluation.h — held-out loss and multiple-choice accuracy: a model, its
 * eval sets and the ranks.
 *
 * An evaluation session borrows a model and a communicator and owns the
 * eval sets and the rows it reads them into. Each set's samples are split
 * across the ranks in contiguous ranges; every rank runs the same number of
 * micro-batch rounds (agreeing each round whether to stop), so evaluation
 * stays collective however the samples divide. The mean loss is summed in
 * double across ranks. The first loss a set gets is its baseline (the init
 * model's, at step 0); a resumed run takes the baselines from its
 * checkpoint (strata_eval_baselines_*), so forgetting (role old: loss -
 * baseline) and learning (role new: baseline - loss) keep one reference.
 * A kind = choice set (choice.h, choice_eval.h) is scored the same way,
 * collectively; its baseline is the step-0 accuracy and its record's
 * forgetting = baseline - acc.
 * Training, `strata eval` and `strata fisher` use it.
 */
#ifndef STRATA_EVALUATION_H
#define STRATA_EVALUATION_H

#include <jansson.h>

#include "strata/choice.h"
#include "strata/comm.h"
#include "strata/config.h"
#include "strata/err.h"
#include "strata/loader.h"
#include "strata/metrics.h"
#include "strata/model.h"
#include "strata/watchdog.h"

typedef struct strata_eval_session {
    const strata_config *cfg;
    strata_comm *comm;         /* borrowed */
    strata_model *model;       /* borrowed */
    strata_metrics *metrics;   /* borrowed, NULL: print only (rank 0 writes) */
    strata_watchdog *watchdog; /* borrowed, may be NULL */
    int rank, world, micro_batch, T;
    int n_sets;
    strata_eval_config sets[STRATA_MAX_EVALS];
    strata_evalset *data[STRATA_MAX_EVALS];      /* kind = loss */
    strata_choice_set *choice[STRATA_MAX_EVALS]; /* kind = choice */
    double baseline[STRATA_MAX_EVALS];           /* NAN until measured */
    uint32_t *rows, *inputs, *targets;           /* (micro_batch, T+1), (micro_batch, T) x 2 */
} strata_eval_session;

/* Opens sets[0 .. n_sets) (cfg->evals for training and `strata eval`) for
 * model and reserves its activations for micro-batches. tokenizer_hash is
 * the identity recorded with the model (NULL: none), which a choice set's
 * tokenizer must match. */
strata_err strata_eval_session_open(strata_eval_session *s, const strata_config *cfg,
                                    strata_comm *comm, strata_model *model,
                                    const strata_eval_config *sets, int n_sets, int micro_batch,
                                    const char *tokenizer_hash);
void strata_eval_session_close(strata_eval_session *s);

/* Mean loss of set i over its samples. STRATA_ESTOPPED when the ranks
 * agreed on a stop request mid-way. An error only this rank saw (a read,
 * the model) ends the job through strata_comm_abort when W > 1. */
strata_err strata_eval_session_loss(strata_eval_session *s, int i, double *loss);
/* Evaluates every set at step: one progress line each (rank 0, log.h) and
 * one metrics record each. STRATA_ESTOPPED on a stop request. */
strata_err strata_eval_session_run(strata_eval_session *s, long step);

/* The baselines as a JSON object {name: loss} (finite ones only). */
json_t *strata_eval_baselines_to_json(const strata_eval_session *s);
/* Takes the baselines of the sets named in obj (a JSON object). */
void strata_eval_baselines_from_json(strata_eval_session *s, const json_t *obj);

#endif
