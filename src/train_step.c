/* One step's gradients with accumulation; see train_step.h. */
#include "strata/train_step.h"

#include <stdlib.h>
#include <string.h>

#include "strata/mem.h"
#include "strata/tree_sum.h"

struct strata_train_step {
    strata_model *model;
    int micro_batch, T, L, slot_begin;
    size_t n_floats;
    uint32_t *inputs, *targets; /* (micro_batch, T) */
    float *seq_loss;            /* (micro_batch) */
    int64_t *slot_ids;          /* (micro_batch) global slots, for dropout */
    strata_tree_sum tree;       /* the micro-batches' partial sums */
    /* During the last micro-batch's backward: */
    strata_grad_sync *sync;
    size_t folded_from; /* grads[folded_from, end) hold the whole sum */
};

strata_err strata_train_step_create(strata_train_step **out, strata_model *m, int micro_batch,
                                    int T, int slot_begin)
{
    strata_train_step *s = calloc(1, sizeof *s);
    if (!s) return strata_errorf(STRATA_ENOMEM, "out of memory");
    s->model = m, s->micro_batch = micro_batch, s->T = T, s->slot_begin = slot_begin;
    s->L = strata_model_get_shape(m)->n_layer;
    s->n_floats = strata_model_n_floats(m);
    strata_tree_sum_init(&s->tree, s->n_floats, 1);
    size_t mb = (size_t)micro_batch;
    s->inputs = strata_malloc(mb * T * sizeof(uint32_t));
    s->targets = strata_malloc(mb * T * sizeof(uint32_t));
    s->seq_loss = strata_malloc(mb * sizeof(float));
    s->slot_ids = strata_malloc(mb * sizeof(int64_t));
    *out = s;
    if (!s->inputs || !s->targets || !s->seq_loss || !s->slot_ids)
        return strata_errorf(STRATA_ENOMEM, "out of memory for micro-batches of %d x %d tokens",
                             micro_batch, T);
    return strata_ok();
}

void strata_train_step_free(strata_train_step *s)
{
    if (!s) return;
    strata_tree_sum_free(&s->tree);
    strata_free(s->inputs), strata_free(s->targets);
    strata_free(s->seq_loss), strata_free(s->slot_ids);
    free(s);
}

void strata_split_rows(const uint32_t *rows, int n, int T, uint32_t *inputs, uint32_t *targets)
{
    for (int i = 0; i < n; i++) {
        memcpy(inputs + (size_t)i * T, rows + (size_t)i * (T + 1), T * sizeof(uint32_t));
        memcpy(targets + (size_t)i * T, rows + (size_t)i * (T + 1) + 1, T * sizeof(uint32_t));
    }
}

/* Backward of the last micro-batch finished block `layer`: its range of
 * grads is final in this micro-batch, so the pending sums go in there and
 * the reduction may start on it. */
static void on_block_done(void *ctx, int layer)
{
    strata_train_step *s = ctx;
    size_t from, end;
    if (layer < 0)
        from = 0;
    else if (layer >= s->L)
        from = strata_model_top_begin(s->model);
    else
        strata_model_block_range(s->model, layer, &from, &end);
    if (from < s->folded_from) {
        strata_tree_sum_fold(&s->tree, strata_model_grads(s->model), from, s->folded_from);
        s->folded_from = from;
    }
    if (s->sync) strata_grad_sync_ready(s->sync, from);
}

/* Forward and backward of slots [first, first + k) of batch. */
static strata_err micro_batch(strata_train_step *s, const strata_batch *batch, int first, int k,
                              int last, const strata_step_opts *o, strata_step_sums *sums)
{
    int T = s->T;
    strata_model_zero_grad(s->model);
    strata_split_rows(batch->tokens + (size_t)first * (T + 1), k, T, s->inputs, s->targets);
    for (int i = 0; i < k; i++) s->slot_ids[i] = s->slot_begin + first + i;
    strata_model_set_dropout(s->model, o->dropout, o->seed, batch->step, s->slot_ids);
    strata_backward_opts bo = {.loss_scale = 1.0f,
                               .first_trainable_block = o->first_trainable_block,
                               .embeddings_frozen = o->embeddings_frozen,
                               .stop_at_top = o->stop_at_top,
                               .on_block_done = last ? on_block_done : NULL,
                               .ctx = s};
    float loss;
    STRATA_TRY(strata_model_forward_backward(s->model, s->inputs, s->targets, k, T, s->seq_loss,
                                             &loss, &bo));
    for (int i = 0; i < k; i++) {
        double l = (double)s->seq_loss[i] * T;
        if (batch->is_replay[first + i])
            sums->loss_replay += l, sums->tokens_replay += T;
        else
            sums->loss_new += l, sums->tokens_new += T;
    }
    if (last) return strata_ok();
    return strata_tree_sum_push(&s->tree, strata_model_grads(s->model), 0);
}

strata_err strata_train_step_gradients(strata_train_step *s, const strata_batch *batch,
                                       const strata_step_opts *o, strata_grad_sync *sync,
                                       strata_step_sums *sums)
{
    memset(sums, 0, sizeof *sums);
    strata_tree_sum_reset(&s->tree);
    s->sync = sync;
    s->folded_from = s->n_floats;
    for (int first = 0; first < batch->n; first += s->micro_batch) {
        int k = batch->n - first < s->micro_batch ? batch->n - first : s->micro_batch;
        STRATA_TRY(micro_batch(s, batch, first, k, first + k >= batch->n, o, sums));
    }
    if (batch->n == 0) { /* no slots on this rank: it still takes part in the reduction */
        strata_model_zero_grad(s->model);
        on_block_done(s, -1);
    }
    return strata_ok();
}
