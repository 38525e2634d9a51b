/* The left-complete summation tree, streaming; see tree_sum.h. */
#include "strata/tree_sum.h"

#include <string.h>

#include "strata/mem.h"

void strata_tree_sum_init(strata_tree_sum *t, size_t n, int threaded)
{
    memset(t, 0, sizeof *t);
    t->n = n;
    t->threaded = threaded;
}

void strata_tree_sum_free(strata_tree_sum *t)
{
    for (int d = 0; d < STRATA_TREE_MAX_DEPTH; d++) strata_free(t->spare[d]);
    memset(t, 0, sizeof *t);
}

void strata_tree_sum_reset(strata_tree_sum *t) { t->n_pending = 0; }

/* a[lo, hi) += b[lo, hi). The progress thread adds serially: an OpenMP team
 * of its own would compete with backward's for the cores. */
static void add_into(float *a, const float *b, size_t lo, size_t hi, int threaded)
{
#pragma omp parallel for schedule(static) if (threaded && hi - lo > 65536)
    for (size_t i = lo; i < hi; i++) a[i] += b[i];
}

strata_err strata_tree_sum_push(strata_tree_sum *t, float *part, int in_place)
{
    strata_tree_part cur = {in_place ? part : NULL, 1};
    const float *right = part;
    while (t->n_pending && t->pending[t->n_pending - 1].leaves == cur.leaves) {
        strata_tree_part *top = &t->pending[--t->n_pending];
        add_into(top->buf, right, 0, t->n, t->threaded);
        cur = (strata_tree_part){top->buf, top->leaves * 2};
        right = top->buf;
    }
    if (!cur.buf) {
        int d = t->n_pending;
        if (d >= STRATA_TREE_MAX_DEPTH)
            return strata_errorf(STRATA_EFAIL, "more than 2^%d parts to sum", d);
        if (!t->spare[d] && !(t->spare[d] = strata_malloc(t->n * sizeof(float))))
            return strata_errorf(STRATA_ENOMEM, "out of memory for gradient accumulation (%zu MiB)",
                                 t->n * sizeof(float) >> 20);
        memcpy(t->spare[d], part, t->n * sizeof(float));
        cur.buf = t->spare[d];
    }
    t->pending[t->n_pending++] = cur;
    return strata_ok();
}

void strata_tree_sum_fold(strata_tree_sum *t, float *last, size_t lo, size_t hi)
{
    for (int d = t->n_pending - 1; d >= 0; d--)
        add_into(last, t->pending[d].buf, lo, hi, t->threaded);
}

void strata_tree_sum_parts(float *parts, size_t n, int count, int threaded)
{
    if (count < 2) return;
    strata_tree_sum t;
    strata_tree_sum_init(&t, n, threaded);
    /* In place never allocates, so push cannot fail here. */
    for (int i = 0; i < count - 1; i++) (void)strata_tree_sum_push(&t, parts + (size_t)i * n, 1);
    float *last = parts + (size_t)(count - 1) * n;
    strata_tree_sum_fold(&t, last, 0, n);
    if (count > 1) memcpy(parts, last, n * sizeof(float));
}
