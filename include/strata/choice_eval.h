/* choice_eval.h — scoring a multiple-choice set (choice.h) with a model.
 *
 * A candidate's score is the sum, over its continuation's tokens, of the
 * token's log-likelihood given everything before it in the row:
 *   ll = sum_{p = len - n_cont}^{len - 1} log softmax(logits[p - 1])[row[p]]
 * from the model's forward over row[0 .. len - 1) (no dropout), the
 * log-softmax over the vocab_size real ids (not the padding rows) in double.
 * Rows run in batches of up to micro_batch rows, longest first, each batch
 * padded at its end to its longest row (causal attention: padding changes
 * nothing before it) and kept under 64 MiB of logits.
 *
 * Ranks split the items (rank r of W takes items [n r / W, n (r + 1) / W));
 * a sum across ranks gives every rank every candidate's ll, and every rank
 * then computes the same accuracies:
 *   acc      = mean over items of [argmax_i ll_i == answer]
 *   acc_norm = mean over items of [argmax_i ll_i / n_char_i == answer]
 * (argmax: the first of equal maxima), acc_norm being lm-evaluation-harness's
 * length normalisation by the continuation's characters.
 */
#ifndef STRATA_CHOICE_EVAL_H
#define STRATA_CHOICE_EVAL_H

#include <stddef.h>

#include "strata/choice.h"
#include "strata/comm.h"
#include "strata/err.h"
#include "strata/model.h"

typedef struct strata_choice_result {
    size_t n_items, n_cands;
    double *ll; /* (n_cands), every rank; free with strata_choice_result_free */
    long correct, correct_norm;
    double acc, acc_norm;
} strata_choice_result;

/* Scores set on every rank (a collective: every rank calls it). Between
 * batches the ranks agree on stop requests (stop.h): STRATA_ESTOPPED when
 * one arrived. A failing forward (out of memory) ends the job through
 * strata_comm_abort. comm NULL: this process alone, no MPI (a failure is
 * returned). */
strata_err strata_choice_evaluate(strata_model *m, const strata_choice_set *set, strata_comm *comm,
                                  int micro_batch, strata_choice_result *out);
void strata_choice_result_free(strata_choice_result *r);

#endif
