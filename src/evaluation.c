/* Held-out evaluation and `strata eval`; see evaluation.h. */
#include "strata/evaluation.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/choice_eval.h"
#include "strata/log.h"
#include "strata/mem.h"
#include "strata/perf.h"
#include "strata/stop.h"
#include "strata/train_ckpt.h"
#include "strata/train_step.h"
#include "strata/trainer.h"

strata_err strata_eval_session_open(strata_eval_session *s, const strata_config *cfg,
                                    strata_comm *comm, strata_model *model,
                                    const strata_eval_config *sets, int n_sets, int micro_batch,
                                    const char *tokenizer_hash)
{
    memset(s, 0, sizeof *s);
    s->cfg = cfg, s->comm = comm, s->model = model;
    s->rank = strata_comm_rank(comm), s->world = strata_comm_size(comm);
    s->micro_batch = micro_batch, s->T = cfg->data.seq_len;
    int vocab = strata_model_get_shape(model)->vocab_size;
    for (int i = 0; i < n_sets && i < STRATA_MAX_EVALS; i++) {
        s->sets[i] = sets[i];
        s->baseline[i] = NAN;
        s->n_sets = i + 1;
        if (sets[i].kind == STRATA_EVAL_CHOICE)
            STRATA_TRY(strata_choice_open(&s->choice[i], &sets[i], vocab,
                                          strata_model_get_shape(model)->block_size, tokenizer_hash,
                                          cfg->path));
        else
            STRATA_TRY(
                strata_evalset_open(&s->data[i], sets[i].path, s->T, vocab, sets[i].max_samples));
    }
    size_t mb = (size_t)micro_batch, T = (size_t)s->T;
    s->rows = strata_malloc(mb * (T + 1) * sizeof(uint32_t));
    s->inputs = strata_malloc(mb * T * sizeof(uint32_t));
    s->targets = strata_malloc(mb * T * sizeof(uint32_t));
    if (!s->rows || !s->inputs || !s->targets)
        return strata_errorf(STRATA_ENOMEM, "out of memory for evaluation batches of %d x %d",
                             micro_batch, s->T);
    return strata_model_reserve(model, micro_batch, s->T);
}

void strata_eval_session_close(strata_eval_session *s)
{
    for (int i = 0; i < s->n_sets; i++) {
        if (s->data[i]) strata_evalset_close(s->data[i]);
        strata_choice_free(s->choice[i]);
    }
    strata_free(s->rows), strata_free(s->inputs), strata_free(s->targets);
    memset(s, 0, sizeof *s);
}

/* Adds the loss of samples [first, first + k) of set i to sums. */
static strata_err eval_batch(strata_eval_session *s, int i, long first, int k, double sums[2])
{
    STRATA_TRY(strata_evalset_read(s->data[i], first, k, s->rows));
    strata_split_rows(s->rows, k, s->T, s->inputs, s->targets);
    strata_model_set_dropout(s->model, 0.0f, 0, 0, NULL);
    float loss;
    STRATA_TRY(strata_model_forward(s->model, s->inputs, s->targets, k, s->T, NULL, &loss));
    sums[0] += (double)loss * k * s->T;
    sums[1] += (double)k * s->T;
    return strata_ok();
}

strata_err strata_eval_session_loss(strata_eval_session *s, int i, double *loss)
{
    long n = strata_evalset_n_samples(s->data[i]);
    long lo = n * s->rank / s->world, hi = n * (s->rank + 1) / s->world;
    int mb = s->micro_batch;
    long rounds = (n / s->world + 1 + mb - 1) / mb + 1;
    double sums[2] = {0, 0};
    for (long b = 0, first = lo; b < rounds; b++) {
        /* Every rank runs the same number of rounds so the stop agreement
         * stays a collective; ranks out of samples just agree. */
        if (strata_comm_agree(s->comm, strata_stop_requested() ? STRATA_AGREE_STOP : 0))
            return strata_errorf(STRATA_ESTOPPED, "stopped during evaluation");
        int k = (int)(hi - first < mb ? hi - first : mb);
        if (k <= 0) continue;
        STRATA_TRY(strata_comm_local_error(s->comm, eval_batch(s, i, first, k, sums)));
        first += k;
    }
    strata_comm_sum_doubles(s->comm, sums, 2);
    *loss = sums[1] > 0 ? sums[0] / sums[1] : NAN;
    return strata_ok();
}

/* JSON has no NaN: non-finite numbers are null. */
static json_t *number(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static strata_err write_record(strata_eval_session *s, int i, long step, double loss)
{
    json_t *r = json_object();
    if (!r) return strata_errorf(STRATA_ENOMEM, "out of memory for a metrics record");
    double delta = loss - s->baseline[i];
    json_object_set_new(r, "step", json_integer(step));
    json_object_set_new(r, "eval", json_string(s->sets[i].name));
    json_object_set_new(r, "loss", number(loss));
    json_object_set_new(r, "ppl", number(exp(loss)));
    json_object_set_new(r, "baseline", number(s->baseline[i]));
    if (s->sets[i].role == STRATA_EVAL_OLD) json_object_set_new(r, "forgetting", number(delta));
    if (s->sets[i].role == STRATA_EVAL_NEW) json_object_set_new(r, "learning", number(-delta));
    strata_err e = strata_metrics_write_json(s->metrics, r);
    json_decref(r);
    return e;
}

static strata_err write_choice_record(strata_eval_session *s, int i, long step,
                                      const strata_choice_result *r)
{
    json_t *j = json_object();
    if (!j) return strata_errorf(STRATA_ENOMEM, "out of memory for a metrics record");
    json_object_set_new(j, "step", json_integer(step));
    json_object_set_new(j, "eval", json_string(s->sets[i].name));
    json_object_set_new(j, "kind", json_string("choice"));
    json_object_set_new(j, "acc", number(r->acc));
    json_object_set_new(j, "acc_norm", number(r->acc_norm));
    json_object_set_new(j, "n_items", json_integer((json_int_t)r->n_items));
    json_object_set_new(j, "baseline", number(s->baseline[i]));
    json_object_set_new(j, "forgetting", number(s->baseline[i] - r->acc));
    strata_err e = strata_metrics_write_json(s->metrics, j);
    json_decref(j);
    return e;
}

/* A choice set: its accuracies, one progress line and one record. */
static strata_err run_choice(strata_eval_session *s, int i, long step)
{
    strata_choice_result r;
    STRATA_TRY(strata_choice_evaluate(s->model, s->choice[i], s->comm, s->micro_batch, &r));
    if (isnan(s->baseline[i])) s->baseline[i] = r.acc;
    strata_err e = strata_ok();
    if (s->rank == 0) {
        strata_log(STRATA_LOG_INFO,
                   "eval %-8s step %ld | acc %.4f | acc_norm %.4f | vs step-0 baseline %+.4f | "
                   "%zu items",
                   s->sets[i].name, step, r.acc, r.acc_norm, r.acc - s->baseline[i], r.n_items);
        if (s->metrics) e = strata_comm_local_error(s->comm, write_choice_record(s, i, step, &r));
    }
    strata_choice_result_free(&r);
    return e;
}

strata_err strata_eval_session_run(strata_eval_session *s, long step)
{
    for (int i = 0; i < s->n_sets; i++) {
        strata_watchdog_phase(s->watchdog, step, "evaluation");
        if (s->choice[i]) {
            STRATA_TRY(run_choice(s, i, step));
            continue;
        }
        double t0 = strata_now_seconds(), loss;
        STRATA_TRY(strata_eval_session_loss(s, i, &loss));
        if (isnan(s->baseline[i])) s->baseline[i] = loss;
        if (s->rank != 0) continue;
        strata_log(STRATA_LOG_INFO,
                   "eval %-8s step %ld | loss %.4f | ppl %.2f | vs step-0 baseline %+.4f | %.1f s",
                   s->sets[i].name, step, loss, exp(loss), loss - s->baseline[i],
                   strata_now_seconds() - t0);
        if (s->metrics)
            STRATA_TRY(strata_comm_local_error(s->comm, write_record(s, i, step, loss)));
    }
    return strata_ok();
}

json_t *strata_eval_baselines_to_json(const strata_eval_session *s)
{
    json_t *base = json_object();
    for (int i = 0; base && i < s->n_sets; i++)
        if (isfinite(s->baseline[i]))
            json_object_set_new(base, s->sets[i].name, json_real(s->baseline[i]));
    return base;
}

void strata_eval_baselines_from_json(strata_eval_session *s, const json_t *obj)
{
    for (int i = 0; i < s->n_sets; i++) {
        json_t *v = json_object_get(obj, s->sets[i].name);
        if (json_is_number(v)) s->baseline[i] = json_number_value(v);
    }
}

/* ---- strata eval -------------------------------------------------------- */

static strata_err eval_checkpoint(strata_eval_session *s, strata_model *m, const char *ckpt_path)
{
    const strata_config *cfg = s->cfg;
    strata_ckpt_state st = {0};
    strata_metrics *metrics = NULL;
    strata_err e = strata_train_model_open(cfg, ckpt_path, &m, &st);
    e = strata_comm_agree_error(s->comm, e);
    if (!e.code && cfg->n_evals == 0)
        e = strata_errorf(STRATA_EINPUT, "%s: no [eval.NAME] section to evaluate on", cfg->path);
    json_t *origin = e.code ? NULL : strata_train_origin(st.extra_json);
    if (!e.code)
        e = strata_eval_session_open(s, cfg, s->comm, m, cfg->evals, cfg->n_evals,
                                     cfg->train.micro_batch,
                                     json_string_value(json_object_get(origin, "tokenizer_hash")));
    json_decref(origin);
    /* Appended to the run's metrics file, everything in it kept. */
    if (!e.code && s->rank == 0 && cfg->log.metrics[0])
        e = strata_metrics_open(&metrics, cfg->log.metrics, LONG_MAX);
    e = strata_comm_agree_error(s->comm, e);
    if (!e.code) {
        s->metrics = metrics;
        strata_train_extra_baselines(st.extra_json, s);
        if (s->rank == 0)
            strata_log(STRATA_LOG_INFO, "evaluating %s (step %ld)", ckpt_path, st.step);
        e = strata_eval_session_run(s, st.step);
    }
    strata_metrics_close(metrics);
    strata_ckpt_state_free(&st);
    strata_eval_session_close(s);
    strata_model_free(m);
    return e;
}

strata_err strata_eval_run(const strata_config *cfg, strata_comm *comm, const char *ckpt_path)
{
    strata_eval_session s;
    memset(&s, 0, sizeof s);
    s.cfg = cfg, s.comm = comm;
    s.rank = strata_comm_rank(comm);
    return eval_checkpoint(&s, NULL, ckpt_path);
}
