/* trainer.h — one training run: the loop that ties model, optimizer, data,
 * communicator and checkpoints together.
 *
 * Every rank runs the same loop on its slots of each global batch. Per step:
 * agree on stop/exhausted, forward+backward over the rank's micro-batches
 * (gradients summed, communication only on the last), reduce gradients in
 * buckets while backward runs, scale by the global token count, clip by the
 * global norm, skip the update if anything is non-finite, apply AdamW (and
 * the anti-forgetting penalties), log, evaluate, checkpoint. Rank 0 logs
 * (log.h) and writes every file. What it runs lives in modules of their own:
 * train_step.h, param_policy.h, evaluation.h, train_ckpt.h.
 */
#ifndef STRATA_TRAINER_H
#define STRATA_TRAINER_H

#include "strata/comm.h"
#include "strata/config.h"
#include "strata/err.h"

/* Runs cfg to its last step (or until the data ends, or a signal). Returns
 * STRATA_ESTOPPED after a stop on a signal and a good checkpoint. Errors
 * every rank sees alike (config, checkpoint) come back as values, and so
 * does every error of a single-rank run (STRATA_ENOMEM included); errors
 * only one of several ranks sees end the job (strata_comm_local_error). */
strata_err strata_train_run(const strata_config *cfg, strata_comm *comm);

/* Evaluates the checkpoint at ckpt_path on cfg's eval sets: one progress
 * line per set, and one record per set appended to [log] metrics when it is
 * set (forgetting/learning against the baselines stored in the checkpoint). */
strata_err strata_eval_run(const strata_config *cfg, strata_comm *comm, const char *ckpt_path);

/* EWC's diagonal Fisher: for each of n_samples sequences of the first
 * replay source (the old data; [data] new when there is none), the squared
 * gradient of that sequence's mean loss, averaged over the sequences (the
 * ranks split them). Written to out_path in the checkpoint format: its
 * /model/<name> tensors hold F. [train] ewc with [train] fisher = out_path
 * uses it. */
strata_err strata_fisher_run(const strata_config *cfg, strata_comm *comm, const char *out_path,
                             long n_samples);

#endif
