/* choice_eval.c — multiple-choice scoring (see choice_eval.h). */
#include "strata/choice_eval.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/stop.h"

/* Logits one batch may hold: 16 Mi floats (64 MiB). */
#define LOGIT_BUDGET_FLOATS (16L << 20)

typedef struct row_ref {
    int len;
    size_t cand;
} row_ref;

/* Longest first (batches pad less), then in file order. */
static int longest_first(const void *pa, const void *pb)
{
    const row_ref *a = pa, *b = pb;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->cand < b->cand ? -1 : a->cand > b->cand;
}

/* Rows in the batch that starts at rows[0] (the longest of them). */
static int batch_rows(const row_ref *rows, size_t left, int micro_batch, int Vp)
{
    long fit = LOGIT_BUDGET_FLOATS / ((long)(rows[0].len - 1) * Vp);
    long k = micro_batch < fit ? micro_batch : fit;
    if (k < 1) k = 1;
    return (int)((size_t)k < left ? (size_t)k : left);
}

/* The continuation's log-likelihood from its row's logits (T, Vp): position
 * p's token is predicted by the logits at p - 1; softmax over the V real ids. */
static double row_ll(const float *logits, int V, int Vp, const uint32_t *row, int len, int n_cont)
{
    double ll = 0.0;
    for (int p = len - n_cont; p < len; p++) {
        const float *z = logits + (size_t)(p - 1) * Vp;
        double mx = z[0], sum = 0.0;
        for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        for (int v = 0; v < V; v++) sum += exp((double)z[v] - mx);
        ll += (double)z[row[p]] - mx - log(sum);
    }
    return ll;
}

/* This rank's rows: the candidates of items [n r / W, n (r + 1) / W), sorted. */
static row_ref *rank_rows(const strata_choice_set *set, int rank, int world, size_t *n_rows)
{
    size_t n = set->n_items;
    size_t lo = n * (size_t)rank / (size_t)world, hi = n * (size_t)(rank + 1) / (size_t)world;
    size_t c_lo = lo < n ? set->items[lo].first_cand : set->n_cands;
    size_t c_hi = hi < n ? set->items[hi].first_cand : set->n_cands;
    *n_rows = c_hi - c_lo;
    row_ref *rows = malloc((*n_rows ? *n_rows : 1) * sizeof *rows);
    if (!rows) return NULL;
    for (size_t i = 0; i < *n_rows; i++) rows[i] = (row_ref){set->cands[c_lo + i].len, c_lo + i};
    qsort(rows, *n_rows, sizeof *rows, longest_first);
    return rows;
}

/* Scores rows[0 .. k) in one forward, writing their ll. */
static strata_err score_batch(strata_model *m, const strata_choice_set *set, const row_ref *rows,
                              int k, uint32_t *inputs, double *ll)
{
    const strata_model_shape *sh = strata_model_get_shape(m);
    int T = rows[0].len - 1;
    memset(inputs, 0, (size_t)k * T * sizeof(uint32_t)); /* padding: id 0, after every row */
    for (int j = 0; j < k; j++)
        memcpy(inputs + (size_t)j * T, set->tokens + set->cands[rows[j].cand].off,
               (size_t)(rows[j].len - 1) * sizeof(uint32_t));
    strata_model_set_dropout(m, 0.0f, 0, 0, NULL);
    float unused;
    strata_err e = strata_model_forward(m, inputs, NULL, k, T, NULL, &unused);
    if (e.code)
        return strata_errorf(e.code, "%s: scoring %d rows of %d tokens: %s", set->path, k, T,
                             e.msg);
    const float *logits = strata_model_logits(m);
    for (int j = 0; j < k; j++) {
        const strata_choice_cand *c = &set->cands[rows[j].cand];
        ll[rows[j].cand] = row_ll(logits + (size_t)j * T * sh->padded_vocab, sh->vocab_size,
                                  sh->padded_vocab, set->tokens + c->off, c->len, c->n_cont);
    }
    return strata_ok();
}

/* acc and acc_norm from every candidate's ll. */
static void accuracies(const strata_choice_set *set, strata_choice_result *r)
{
    for (size_t i = 0; i < set->n_items; i++) {
        const strata_choice_item *it = &set->items[i];
        const double *ll = r->ll + it->first_cand;
        const strata_choice_cand *c = set->cands + it->first_cand;
        int best = 0, best_norm = 0;
        for (int j = 1; j < it->n_cands; j++) {
            if (ll[j] > ll[best]) best = j;
            if (ll[j] / c[j].n_char > ll[best_norm] / c[best_norm].n_char) best_norm = j;
        }
        r->correct += best == it->answer;
        r->correct_norm += best_norm == it->answer;
    }
    r->acc = (double)r->correct / (double)set->n_items;
    r->acc_norm = (double)r->correct_norm / (double)set->n_items;
}

strata_err strata_choice_evaluate(strata_model *m, const strata_choice_set *set, strata_comm *comm,
                                  int micro_batch, strata_choice_result *out)
{
    memset(out, 0, sizeof *out);
    out->n_items = set->n_items, out->n_cands = set->n_cands;
    int Vp = strata_model_get_shape(m)->padded_vocab;
    size_t n_rows;
    row_ref *rows = rank_rows(set, comm ? strata_comm_rank(comm) : 0,
                              comm ? strata_comm_size(comm) : 1, &n_rows);
    out->ll = calloc(set->n_cands ? set->n_cands : 1, sizeof *out->ll);
    int T_max = n_rows ? rows[0].len - 1 : 1;
    uint32_t *inputs = malloc((size_t)(micro_batch > 0 ? micro_batch : 1) * T_max * sizeof *inputs);
    strata_err e = strata_ok();
    if (!rows || !out->ll || !inputs || set->n_cands > INT32_MAX)
        e = strata_errorf(STRATA_ENOMEM, "%s: out of memory scoring the set", set->path);
    long n_batches = 0;
    for (size_t i = 0; i < n_rows; n_batches++)
        i += batch_rows(rows + i, n_rows - i, micro_batch, Vp);
    /* Every rank runs the same number of rounds, so the stop agreement stays a collective. */
    long rounds = comm ? (long)strata_comm_max_double(comm, (double)n_batches) : n_batches;
    int stopped = 0;
    size_t i = 0;
    for (long b = 0; b < rounds && !stopped; b++) {
        int stop = strata_stop_requested() ? STRATA_AGREE_STOP : 0;
        stopped = comm ? strata_comm_agree(comm, stop) : stop;
        if (stopped || i >= n_rows || e.code) continue;
        int k = batch_rows(rows + i, n_rows - i, micro_batch, Vp);
        e = score_batch(m, set, rows + i, k, inputs, out->ll);
        i += (size_t)k;
    }
    free(rows);
    free(inputs);
    /* A failure one rank saw (out of memory) ends the job, never leaving the others waiting. */
    if (e.code && comm) strata_comm_abort(comm, e.code, e.msg);
    if (stopped || e.code) {
        strata_choice_result_free(out);
        return e.code ? e : strata_errorf(STRATA_ESTOPPED, "stopped");
    }
    if (comm) strata_comm_sum_doubles(comm, out->ll, (int)set->n_cands); /* each ll has one owner */
    accuracies(set, out);
    return strata_ok();
}

void strata_choice_result_free(strata_choice_result *r)
{
    free(r->ll);
    r->ll = NULL;
}
