/* comm.h — everything strata does with MPI, and only here.
 *
 * The communicator wraps MPI_COMM_WORLD: rank 0 prints and writes files,
 * every rank computes. All MPI return codes are checked; a failure, or any
 * rank's fatal error (strata_comm_abort), ends the whole job with that
 * rank's message, never leaving the other ranks waiting in a collective.
 *
 * Gradient synchronisation (strata_grad_sync) cuts the gradient buffer into
 * buckets from its end (the last layer's gradients are final first) and
 * starts each bucket's non-blocking reduction as soon as backward has
 * finished it. With ZeRO-1 the reduction is a reduce-scatter: rank r keeps
 * the summed gradients of its shard [shard_begin, shard_end) only, updates
 * that part of the parameters, and an all-gather brings every rank the
 * whole updated buffer. By default a progress thread starts and drives the
 * buckets while the main thread computes; the main thread makes no MPI call
 * from the first strata_grad_sync_ready of a step to the end of its
 * strata_grad_sync_finish (the watchdog's emergency MPI_Abort excepted).
 */
#ifndef STRATA_COMM_H
#define STRATA_COMM_H

#include <stddef.h>

#include "strata/err.h"

typedef struct strata_comm strata_comm;

/* MPI_Init_thread (SERIALIZED: the main thread, or the gradient progress
 * thread while the main thread computes, never both). Works without mpirun
 * as a single rank. */
strata_err strata_comm_init(int *argc, char ***argv, strata_comm **out);
void strata_comm_finalize(strata_comm *c);
int strata_comm_rank(const strata_comm *c);
int strata_comm_size(const strata_comm *c);
const char *strata_comm_host(const strata_comm *c);
/* Ranks of this job on this node (they share its cores). */
int strata_comm_local_size(const strata_comm *c);

/* Logs "rank R (host): msg" (log.h, STRATA_LOG_FATAL) and ends the job
 * with code (MPI_Abort; _exit if that returns). For errors seen by some
 * ranks only. */
_Noreturn void strata_comm_abort(strata_comm *c, int code, const char *msg);

/* An error only this rank may have seen (a read, an allocation) in code
 * that every rank runs in step: with one rank it is returned, to travel up
 * to the CLI as a value; with more it ends the job (strata_comm_abort with
 * e's code), since the other ranks would wait for this one in the next
 * collective. Success is returned as is. */
strata_err strata_comm_local_error(strata_comm *c, strata_err e);

/* Agreement: every rank passes its flags; every rank gets their OR. */
enum {
    STRATA_AGREE_STOP = 1,      /* a stop was requested (signal), or rank 0 wants to save */
    STRATA_AGREE_ERROR = 4,     /* a rank failed */
    STRATA_AGREE_EXHAUSTED = 8, /* the new-data stream is used up */
    STRATA_AGREE_WAITING = 16   /* waiting for new shards (follow) */
};
int strata_comm_agree(strata_comm *c, int flags);
/* Agrees on an error some ranks may have: every rank gets the largest code;
 * the message is kept on rank 0 if it failed, else on the ranks that failed,
 * and emptied elsewhere, so each problem is printed once. */
strata_err strata_comm_agree_error(strata_comm *c, strata_err e);
/* Sum across ranks, in place. */
void strata_comm_sum_doubles(strata_comm *c, double *x, int n);
double strata_comm_max_double(strata_comm *c, double x);
/* Gathers each rank's part [begin_r, end_r) of a float buffer onto rank 0's
 * full-size buffer (ZeRO state for checkpoints). */
void strata_comm_gather_ranges(strata_comm *c, float *buf, size_t n_floats);

/* The part of an n_floats buffer rank r owns under ZeRO-1. */
void strata_comm_shard(const strata_comm *c, size_t n_floats, int rank, size_t *begin, size_t *end);

typedef struct strata_grad_sync strata_grad_sync;

/* Who drives the buckets in flight while backward runs: MPI_Test calls from
 * backward between blocks, or a thread of their own that polls every 50 us
 * (tests/bench_ddp.sh measures the two). */
typedef enum { STRATA_PROGRESS_TEST, STRATA_PROGRESS_THREAD } strata_comm_progress;

/* grads: the gradient buffer (n_floats). bucket_bytes: target bucket size.
 * zero: 1 for reduce-scatter (ZeRO-1), 0 for all-reduce. */
strata_err strata_grad_sync_create(strata_grad_sync **out, strata_comm *c, float *grads,
                                   size_t n_floats, size_t bucket_bytes, int zero,
                                   strata_comm_progress progress);
void strata_grad_sync_free(strata_grad_sync *g);
/* Called from backward: grads[ready_from, n_floats) are final. Starts every
 * bucket inside that range and drives the ones in flight. */
void strata_grad_sync_ready(strata_grad_sync *g, size_t ready_from);
/* Waits for every bucket (starting any not started yet). After it, grads
 * hold the sum across ranks: all of it, or with ZeRO-1 the shard
 * [shard_begin, shard_end) (the rest is stale). exposed_ms: time waited
 * here; hidden_fraction: share of the communication span that overlapped
 * backward. */
void strata_grad_sync_finish(strata_grad_sync *g, double *exposed_ms, double *hidden_fraction);
/* ZeRO-1: after each rank updated its shard of params, all ranks get all. */
void strata_grad_sync_allgather_params(strata_grad_sync *g, float *params);
void strata_grad_sync_shard(const strata_grad_sync *g, size_t *begin, size_t *end);

#endif
