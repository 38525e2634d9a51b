/* tree_sum.h — the one order in which strata adds gradients.
 *
 * The sum of parts 0 .. n-1 is formed along a left-complete binary tree:
 * split at the largest power of two below the count, each half summed the
 * same way. It is formed streaming, like a binary counter: each pushed part
 * merges with the pending partial sum of its own size, and the last part
 * folds the pending sums in, smallest first (the tree's right spine). So a
 * pushed sequence and the recursive definition give the same bits, and the
 * ranks (mpi/comm.c: parts side by side, summed in place) and the
 * micro-batches of a rank (src/train_step.c: each part copied once, into
 * buffers this object owns) are added in one order. Float addition is
 * commutative, so only the tree's shape matters.
 */
#ifndef STRATA_TREE_SUM_H
#define STRATA_TREE_SUM_H

#include <stddef.h>

#include "strata/err.h"

#define STRATA_TREE_MAX_DEPTH 32 /* 2^32 parts: more than any batch */

typedef struct strata_tree_part {
    float *buf;
    long leaves;
} strata_tree_part;

/* Pending partial sums of n floats each. Copies of pushed parts live in
 * buffers owned by the object (one per depth, allocated on first use,
 * freed by strata_tree_sum_free); in-place parts live where the caller put
 * them. */
typedef struct strata_tree_sum {
    size_t n;
    int threaded; /* add with an OpenMP team (not from a progress thread) */
    strata_tree_part pending[STRATA_TREE_MAX_DEPTH];
    int n_pending;
    float *spare[STRATA_TREE_MAX_DEPTH];
} strata_tree_sum;

void strata_tree_sum_init(strata_tree_sum *t, size_t n, int threaded);
void strata_tree_sum_free(strata_tree_sum *t);
/* Forgets the pending sums (keeps the buffers), for the next sum. */
void strata_tree_sum_reset(strata_tree_sum *t);
/* Pushes a part that is not the last. in_place: part becomes storage of a
 * pending sum and must stay valid until the fold; otherwise it is copied.
 * STRATA_ENOMEM when a copy buffer cannot be allocated. */
strata_err strata_tree_sum_push(strata_tree_sum *t, float *part, int in_place);
/* The last part: last[lo, hi) becomes the sum of every part pushed since
 * the reset and last itself (call it for disjoint ranges, in any order). */
void strata_tree_sum_fold(strata_tree_sum *t, float *last, size_t lo, size_t hi);
/* parts[0 .. count) side by side, n floats apart: parts[0] becomes their
 * sum, in place. */
void strata_tree_sum_parts(float *parts, size_t n, int count, int threaded);

#endif
