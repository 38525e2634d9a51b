/* EWC's diagonal Fisher (`strata fisher`); see trainer.h. */
#include <stdlib.h>
#include <string.h>

#include "strata/ckpt.h"
#include "strata/evaluation.h"
#include "strata/log.h"
#include "strata/mem.h"
#include "strata/train_ckpt.h"
#include "strata/train_step.h"
#include "strata/trainer.h"

/* Sequences are summed across ranks in double, this many floats at a time. */
#define FISHER_SUM_CHUNK (1 << 20)

/* Per-sequence squared gradients of samples [lo, hi), summed into fisher. */
static strata_err accumulate(strata_eval_session *s, long lo, long hi, float *fisher)
{
    int T = s->T;
    size_t n = strata_model_n_floats(s->model);
    float *g = strata_model_grads(s->model);
    strata_backward_opts bo = {.loss_scale = 1.0f / T};
    for (long i = lo; i < hi; i++) {
        STRATA_TRY(strata_evalset_read(s->data[0], i, 1, s->rows));
        strata_split_rows(s->rows, 1, T, s->inputs, s->targets);
        strata_model_zero_grad(s->model);
        strata_model_set_dropout(s->model, 0.0f, 0, 0, NULL);
        float loss;
        STRATA_TRY(
            strata_model_forward_backward(s->model, s->inputs, s->targets, 1, T, NULL, &loss, &bo));
#pragma omp parallel for schedule(static)
        for (size_t k = 0; k < n; k++) fisher[k] += g[k] * g[k];
    }
    return strata_ok();
}

/* Sums fisher across ranks in double and divides by the sequence count. */
static strata_err average(strata_comm *comm, float *fisher, size_t n, long count)
{
    double *buf = strata_malloc(FISHER_SUM_CHUNK * sizeof(double));
    STRATA_TRY(strata_comm_local_error(
        comm,
        buf ? strata_ok() : strata_errorf(STRATA_ENOMEM, "out of memory for the Fisher sum")));
    for (size_t lo = 0; lo < n; lo += FISHER_SUM_CHUNK) {
        size_t m = n - lo < FISHER_SUM_CHUNK ? n - lo : FISHER_SUM_CHUNK;
        for (size_t k = 0; k < m; k++) buf[k] = fisher[lo + k];
        strata_comm_sum_doubles(comm, buf, (int)m);
        for (size_t k = 0; k < m; k++) fisher[lo + k] = (float)(buf[k] / (double)count);
    }
    strata_free(buf);
    return strata_ok();
}

static strata_err estimate(strata_eval_session *s, const char *out_path, const char *source)
{
    size_t n = strata_model_n_floats(s->model);
    float *fisher = strata_calloc(n, sizeof(float));
    STRATA_TRY(strata_comm_local_error(
        s->comm,
        fisher ? strata_ok() : strata_errorf(STRATA_ENOMEM, "out of memory for the Fisher")));
    long count = strata_evalset_n_samples(s->data[0]);
    strata_err e =
        strata_comm_local_error(s->comm, accumulate(s, count * s->rank / s->world,
                                                    count * (s->rank + 1) / s->world, fisher));
    if (!e.code) e = average(s->comm, fisher, n, count);
    if (!e.code && s->rank == 0) {
        memcpy(strata_model_params(s->model), fisher, n * sizeof(float));
        e = strata_ckpt_write(out_path, s->model, NULL, NULL, NULL);
        if (!e.code)
            strata_log(STRATA_LOG_INFO, "wrote %s: diagonal Fisher over %ld sequences of %s",
                       out_path, count, source);
    }
    strata_free(fisher);
    return strata_comm_agree_error(s->comm, e);
}

strata_err strata_fisher_run(const strata_config *cfg, strata_comm *comm, const char *out_path,
                             long n_samples)
{
    strata_model *m = NULL;
    strata_eval_session s;
    memset(&s, 0, sizeof s);
    strata_eval_config set = {.name = "fisher", .max_samples = n_samples};
    const char *source = cfg->data.n_replay ? cfg->data.replay[0].path : cfg->data.new_path;
    snprintf(set.path, sizeof set.path, "%s", source);
    strata_err e = strata_comm_agree_error(comm, strata_train_model_open(cfg, NULL, &m, NULL));
    if (!e.code) e = strata_eval_session_open(&s, cfg, comm, m, &set, 1, 1, NULL);
    if (!e.code) e = estimate(&s, out_path, source);
    strata_eval_session_close(&s);
    strata_model_free(m);
    return e;
}
