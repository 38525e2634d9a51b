/* The training loop; see trainer.h. It ties together what it runs: the
 * step's gradients (train_step.h), the parameter policy (param_policy.h),
 * evaluation (evaluation.h) and checkpoints (train_ckpt.h). */
#include "strata/trainer.h"

#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/ckpt.h"
#include "strata/evaluation.h"
#include "strata/generate.h"
#include "strata/loader.h"
#include "strata/log.h"
#include "strata/machine.h"
#include "strata/metrics.h"
#include "strata/model.h"
#include "strata/optim.h"
#include "strata/param_policy.h"
#include "strata/perf.h"
#include "strata/schedule.h"
#include "strata/stop.h"
#include "strata/train_ckpt.h"
#include "strata/train_step.h"
#include "strata/vocab_extend.h"
#include "strata/watchdog.h"

/* With follow, the ranks poll for new shards this often and agree each
 * time, so a signal still stops them and they move on (or give up)
 * together. */
#define FOLLOW_POLL_S 5.0

typedef struct trainer {
    const strata_config *cfg;
    strata_comm *comm;
    int rank, world, T;
    strata_model *model;
    size_t n_floats;
    strata_adamw opt; /* owns this rank's shard (all without ZeRO) */
    strata_grad_sync *sync;
    strata_loader *loader;
    strata_train_step *step;
    strata_param_policy policy;
    strata_eval_session evals;
    strata_train_ckpt ckpt;    /* ckpt.st: step, tokens seen, ... */
    strata_metrics *metrics;   /* rank 0 only */
    strata_watchdog *watchdog; /* NULL when [train] step_timeout = 0 */
    strata_schedule sched;
    double peak_gflops, flops_per_token;
    double train_peak_rss; /* max over ranks, before the final save */
    double step_ms_sum;
    long timed_steps;
} trainer;

typedef struct step_stats {
    double loss, loss_new, loss_replay, grad_norm, lr;
    double ms, data_ms, comm_ms, hidden;
    long n_new, n_replay;
    int skipped;        /* non-finite loss or norm: no update */
    int stop_requested; /* some rank got a stop signal during the step */
} step_stats;

/* Progress lines are rank 0's. */
#define SAY(t, ...)                                                                                \
    do {                                                                                           \
        if ((t)->rank == 0) strata_log(STRATA_LOG_INFO, __VA_ARGS__);                              \
    } while (0)

/* ---- setup -------------------------------------------------------------- */

static strata_err init_optimizer(trainer *t)
{
    const strata_config *c = t->cfg;
    size_t bucket = (size_t)(c->train.bucket_mb * 1024 * 1024);
    STRATA_TRY(strata_grad_sync_create(
        &t->sync, t->comm, strata_model_grads(t->model), t->n_floats, bucket, c->train.zero,
        c->train.comm_thread ? STRATA_PROGRESS_THREAD : STRATA_PROGRESS_TEST));
    size_t begin, end;
    strata_grad_sync_shard(t->sync, &begin, &end);
    strata_adamw_config ac = {(float)c->train.beta1, (float)c->train.beta2, (float)c->train.eps,
                              (float)c->train.weight_decay};
    STRATA_TRY(strata_adamw_init(&t->opt, &ac, begin, end));
    t->sched =
        (strata_schedule){c->train.schedule, (float)c->train.lr, (float)c->train.min_lr,
                          c->train.warmup,   c->train.steps,     (float)c->train.decay_fraction};
    return strata_ok();
}

static strata_err open_loader(trainer *t, const char *tokenizer_hash, int *slot_begin)
{
    const strata_config *c = t->cfg;
    if (!c->data.new_path[0])
        return strata_errorf(STRATA_EINPUT, "%s: [data] new is not set", c->path);
    if (c->train.global_batch < t->world)
        return strata_errorf(
            STRATA_EINPUT, "%s: [train] global_batch (%d) is smaller than the number of ranks (%d)",
            c->path, c->train.global_batch, t->world);
    strata_loader_config lc;
    memset(&lc, 0, sizeof lc);
    snprintf(lc.new_path, sizeof lc.new_path, "%s", c->data.new_path);
    memcpy(lc.replay, c->data.replay, sizeof lc.replay);
    lc.n_replay = c->data.n_replay;
    lc.replay_ratio = c->data.replay_ratio;
    lc.seq_len = c->data.seq_len;
    lc.vocab_size = strata_model_get_shape(t->model)->vocab_size;
    if (tokenizer_hash) snprintf(lc.tokenizer_hash, sizeof lc.tokenizer_hash, "%s", tokenizer_hash);
    lc.seed = c->data.seed;
    lc.global_batch = c->train.global_batch;
    lc.slot_begin = *slot_begin = (int)((long)t->rank * c->train.global_batch / t->world);
    lc.slot_end = (int)((long)(t->rank + 1) * c->train.global_batch / t->world);
    lc.follow = c->data.follow;
    lc.follow_timeout_s = c->data.follow_timeout;
    lc.wrap = c->data.wrap;
    lc.shuffle_window = c->data.shuffle_window;
    lc.prefetch = c->data.prefetch;
    return strata_loader_open(&t->loader, &lc);
}

/* The model and what trains it, before any resume. */
static strata_err open_parts(trainer *t, strata_ckpt_state *init)
{
    const strata_config *c = t->cfg;
    STRATA_TRY(strata_train_model_open(c, NULL, &t->model, init));
    t->T = c->data.seq_len;
    t->n_floats = strata_model_n_floats(t->model);
    STRATA_TRY(strata_policy_init(&t->policy, c, t->model));
    STRATA_TRY(init_optimizer(t));
    STRATA_TRY(strata_train_ckpt_init(&t->ckpt, c, t->comm, NULL, init->extra_json));
    json_t *ext = json_object_get(t->ckpt.origin, STRATA_VOCAB_EXTENSION_KEY);
    STRATA_TRY(strata_policy_set_new_rows(
        &t->policy, (long)json_integer_value(json_object_get(ext, "old_vocab_size"))));
    const char *tok = json_string_value(json_object_get(t->ckpt.origin, "tokenizer_hash"));
    int slot_begin = 0;
    STRATA_TRY(open_loader(t, tok, &slot_begin));
    STRATA_TRY(
        strata_train_step_create(&t->step, t->model, c->train.micro_batch, t->T, slot_begin));
    return strata_eval_session_open(&t->evals, c, t->comm, t->model, c->evals, c->n_evals,
                                    c->train.micro_batch, tok);
}

static strata_err setup(trainer *t)
{
    const strata_config *c = t->cfg;
    strata_ckpt_state init = {0};
    strata_err e = open_parts(t, &init);
    strata_ckpt_state_free(&init);
    STRATA_TRY(e);
    free(t->ckpt.st.data_fingerprint);
    t->ckpt.st.data_fingerprint = strdup(strata_loader_fingerprint(t->loader));
    if (!t->ckpt.st.data_fingerprint) return strata_errorf(STRATA_ENOMEM, "out of memory");
    int resumed;
    STRATA_TRY(
        strata_train_ckpt_resume(&t->ckpt, t->model, &t->opt, &t->evals, t->loader, &resumed));
    if (resumed) strata_policy_update_groups(&t->policy, t->ckpt.st.step);
    if (t->rank == 0 && c->log.metrics[0])
        STRATA_TRY(strata_metrics_open(&t->metrics, c->log.metrics,
                                       t->ckpt.st.step > 0 ? t->ckpt.st.step : -1));
    t->evals.metrics = t->metrics;
    t->flops_per_token = strata_flops_per_token(strata_model_get_shape(t->model), t->T);
    t->peak_gflops = strata_sgemm_peak_gflops(512, 0);
    t->ckpt.last_save_time = strata_now_seconds();
    return strata_ok();
}

static void trainer_free(trainer *t)
{
    strata_eval_session_close(&t->evals);
    strata_train_step_free(t->step);
    strata_policy_free(&t->policy);
    strata_model_free(t->model);
    strata_adamw_free(&t->opt);
    strata_grad_sync_free(t->sync);
    if (t->loader) strata_loader_close(t->loader);
    strata_metrics_close(t->metrics);
    strata_train_ckpt_free(&t->ckpt);
}

/* What this rank holds, so ZeRO-1's saving is visible: Adam's state is
 * (end - begin) floats per moment, the whole buffer without ZeRO. */
static void print_memory(const trainer *t)
{
    char machine[512];
    strata_machine_describe(machine, sizeof machine);
    const strata_model_shape *s = strata_model_get_shape(t->model);
    SAY(t, "model %s: %d layers, %d wide, %d/%d heads of %d, vocab %d, %zu parameters; on %s",
        strata_model_family_name(t->model), s->n_layer, s->n_embd, s->n_head, s->n_kv_head,
        s->head_dim, s->vocab_size, strata_model_n_params(t->model), machine);
    double mib = 1.0 / (1 << 20), n = (double)t->n_floats * 4;
    double adam = 2.0 * (double)(t->opt.end - t->opt.begin) * 4;
    double acts = (double)strata_model_activation_bytes(t->model);
    double reduce = t->world > 1 ? n : 0, extra = strata_policy_extra_bytes(&t->policy);
    char extra_text[64] = "";
    if (extra > 0)
        snprintf(extra_text, sizeof extra_text, ", init weights/Fisher %.0f MiB", extra * mib);
    SAY(t,
        "memory per rank: params %.0f MiB, grads %.0f MiB, adam m+v %.0f MiB%s, activations %.0f "
        "MiB, reduction buffers %.0f MiB%s; total %.0f MiB",
        n * mib, n * mib, adam * mib,
        t->cfg->train.zero && t->world > 1 ? " (ZeRO-1: 1/W of it)" : "", acts * mib, reduce * mib,
        extra_text, (2 * n + adam + acts + reduce + extra) * mib);
}

/* ---- one step ------------------------------------------------------------ */

/* Clipping, the penalties, AdamW, L1 and (ZeRO-1) the parameter all-gather. */
static void apply_update(trainer *t, const step_stats *s, double tokens)
{
    const strata_config *c = t->cfg;
    float *g = strata_model_grads(t->model), *p = strata_model_params(t->model);
    size_t lo = t->opt.begin, hi = t->opt.end;
    float clip = 1.0f;
    if (c->train.grad_clip > 0 && s->grad_norm > c->train.grad_clip)
        clip = (float)(c->train.grad_clip / (s->grad_norm + 1e-6));
    float scale = clip / (float)tokens;
    if (strata_policy_has_penalty(&t->policy)) {
#pragma omp parallel for schedule(static)
        for (size_t i = lo; i < hi; i++) g[i] *= scale;
        strata_policy_penalty_grads(&t->policy, g, p, lo, hi);
        scale = 1.0f;
    }
    strata_adamw_step(&t->opt, p, g, scale, (float)s->lr, t->policy.groups, t->policy.n_groups);
    strata_policy_l1_prox(&t->policy, p, (float)s->lr, lo, hi);
    strata_grad_sync_allgather_params(t->sync, p);
}

static strata_err train_step(trainer *t, const strata_batch *batch, step_stats *s)
{
    double t0 = strata_now_seconds();
    strata_step_opts o = strata_policy_step_opts(&t->policy, batch->step);
    strata_step_sums ls;
    STRATA_TRY(strata_comm_local_error(
        t->comm, strata_train_step_gradients(t->step, batch, &o, t->sync, &ls)));
    strata_watchdog_phase(t->watchdog, batch->step, "gradient reduction");
    strata_grad_sync_finish(t->sync, &s->comm_ms, &s->hidden);
    double sums[5] = {ls.loss_new, ls.tokens_new, ls.loss_replay, ls.tokens_replay,
                      strata_stop_requested()};
    strata_comm_sum_doubles(t->comm, sums, 5);

    double tokens = sums[1] + sums[3];
    double sq = strata_sum_squares(strata_model_grads(t->model), t->opt.begin, t->opt.end);
    if (t->cfg->train.zero && t->world > 1) strata_comm_sum_doubles(t->comm, &sq, 1);
    s->grad_norm = sqrt(sq) / tokens;
    s->loss = (sums[0] + sums[2]) / tokens;
    s->loss_new = sums[1] > 0 ? sums[0] / sums[1] : NAN;
    s->loss_replay = sums[3] > 0 ? sums[2] / sums[3] : NAN;
    s->n_new = (long)sums[1], s->n_replay = (long)sums[3];
    s->lr = strata_schedule_lr(&t->sched, batch->step);
    /* Sums are identical on every rank, so this decision is agreed. */
    s->skipped = !isfinite(s->loss) || !isfinite(s->grad_norm);
    if (!s->skipped) apply_update(t, s, tokens);
    s->stop_requested = sums[4] > 0;
    s->ms = (strata_now_seconds() - t0) * 1e3;
    return strata_ok();
}

/* JSON has no NaN: non-finite numbers are null. */
static json_t *number(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static strata_err write_step_record(trainer *t, long step, const step_stats *s, double tps,
                                    double mfu)
{
    json_t *r = json_object();
    if (!r) return strata_errorf(STRATA_ENOMEM, "out of memory for a metrics record");
    json_object_set_new(r, "step", json_integer(step));
    json_object_set_new(r, "tokens", json_integer(t->ckpt.st.tokens_seen));
    json_object_set_new(r, "loss", number(s->loss));
    json_object_set_new(r, "loss_new", number(s->loss_new));
    json_object_set_new(r, "loss_replay", number(s->loss_replay));
    json_object_set_new(r, "tokens_new", json_integer(s->n_new));
    json_object_set_new(r, "tokens_replay", json_integer(s->n_replay));
    json_object_set_new(r, "lr", number(s->lr));
    json_object_set_new(r, "grad_norm", number(s->grad_norm));
    json_object_set_new(r, "ms", number(s->ms));
    json_object_set_new(r, "tokens_per_s", number(tps));
    json_object_set_new(r, "mfu", number(mfu));
    json_object_set_new(r, "data_ms", number(s->data_ms));
    json_object_set_new(r, "comm_ms", number(s->comm_ms));
    json_object_set_new(r, "comm_hidden", number(s->hidden));
    json_object_set_new(r, "skipped", json_integer(s->skipped));
    strata_err e = strata_metrics_write_json(t->metrics, r);
    json_decref(r);
    return e;
}

static strata_err log_step(trainer *t, long step, const step_stats *s)
{
    const strata_config *c = t->cfg;
    double tokens = (double)c->train.global_batch * t->T;
    double tps = tokens / (s->ms / 1e3);
    double mfu =
        t->peak_gflops > 0 ? tps * t->flops_per_token / (t->peak_gflops * 1e9 * t->world) : NAN;
    t->step_ms_sum += s->ms;
    t->timed_steps++;
    double eta = (double)(c->train.steps - step) * (t->step_ms_sum / t->timed_steps) / 1e3;
    if (step % c->log.every && step != c->train.steps) return strata_ok();
    SAY(t,
        "step %ld/%ld | loss %.4f (new %.4f, replay %.4f) | lr %.2e | norm %.3f | %.0f ms | "
        "%.0f tok/s | data %.1f ms | comm %.1f ms | ETA %dh%02dm%02ds%s",
        step, c->train.steps, s->loss, s->loss_new, s->loss_replay, s->lr, s->grad_norm, s->ms, tps,
        s->data_ms, s->comm_ms, (int)(eta / 3600), (int)fmod(eta / 60, 60), (int)fmod(eta, 60),
        s->skipped ? " | SKIPPED (non-finite)" : "");
    if (!t->metrics) return strata_ok();
    return strata_comm_local_error(t->comm, write_step_record(t, step, s, tps, mfu));
}

/* ---- the loop ------------------------------------------------------------ */

/* This step's batch. Returns the agreed flags (STOP, EXHAUSTED). */
static strata_err next_batch(trainer *t, long step, strata_batch **batch, double *data_ms,
                             int *flags)
{
    int follow = t->cfg->data.follow, said = 0;
    for (;;) {
        int status = STRATA_LOADER_READY;
        double waited = 0;
        /* Waiting for new shards with follow is on purpose, not a hang. */
        if (follow)
            strata_watchdog_pause(t->watchdog);
        else
            strata_watchdog_phase(t->watchdog, step, "data");
        STRATA_TRY(strata_comm_local_error(
            t->comm, strata_loader_poll(t->loader, step, follow ? FOLLOW_POLL_S : -1.0, batch,
                                        &status, &waited)));
        *data_ms += waited;
        strata_watchdog_phase(t->watchdog, step, "step agreement");
        *flags = strata_comm_agree(
            t->comm, (strata_stop_requested() ? STRATA_AGREE_STOP : 0) |
                         (status == STRATA_LOADER_EXHAUSTED ? STRATA_AGREE_EXHAUSTED : 0) |
                         (status == STRATA_LOADER_WAITING ? STRATA_AGREE_WAITING : 0));
        if (!(*flags & STRATA_AGREE_WAITING) ||
            (*flags & (STRATA_AGREE_STOP | STRATA_AGREE_EXHAUSTED)))
            return strata_ok();
        if (!said++ && status == STRATA_LOADER_WAITING)
            strata_log(STRATA_LOG_NOTICE, "%s", strata_loader_wait_reason(t->loader));
    }
}

static strata_err stopped(void) { return strata_errorf(STRATA_ESTOPPED, "stopped"); }

static strata_err save(trainer *t)
{
    return strata_train_ckpt_save(&t->ckpt, t->model, &t->opt, &t->evals, t->watchdog);
}

/* [log] sample_every: a short sample (generate.h). Every rank computes it,
 * so that a bad prompt or tokenizer fails them all alike; rank 0 prints. */
static strata_err maybe_sample(trainer *t, long step)
{
    const strata_config *c = t->cfg;
    if (c->log.sample_every <= 0 || step % c->log.sample_every) return strata_ok();
    char *line = NULL;
    STRATA_TRY(strata_train_sample(t->model, c->log.sample_prompt, c->log.sample_tokenizer,
                                   c->data.seed, &line));
    SAY(t, "sample step %ld: %s", step, line);
    free(line);
    return strata_ok();
}

/* After step s: counters, log, the automatic watchdog, evaluation, save. */
static strata_err after_step(trainer *t, long step, const step_stats *s)
{
    const strata_config *c = t->cfg;
    strata_ckpt_state *st = &t->ckpt.st;
    st->step = step;
    st->tokens_seen += (long)c->train.global_batch * t->T;
    st->skipped_steps += s->skipped;
    st->bad_in_a_row = s->skipped ? st->bad_in_a_row + 1 : 0;
    if (c->train.step_timeout < 0 && t->timed_steps > 0) {
        double mean_s = t->step_ms_sum / t->timed_steps / 1e3;
        strata_watchdog_set_timeout(
            t->watchdog, fmax(STRATA_WATCHDOG_FLOOR_S, STRATA_WATCHDOG_STEP_RATIO * mean_s));
    }
    STRATA_TRY(log_step(t, step, s));
    if (st->bad_in_a_row >= c->train.max_bad_steps)
        return strata_errorf(STRATA_EFAIL,
                             "%d non-finite steps in a row (last at step %ld): stopping; "
                             "the last good checkpoint is kept (HINT: lower [train] lr)",
                             st->bad_in_a_row, step);
    if (s->stop_requested) return stopped();
    int want_save = t->rank == 0 && strata_train_ckpt_due(&t->ckpt, step) && !s->skipped;
    int agreed = strata_comm_agree(t->comm, want_save ? STRATA_AGREE_STOP : 0);
    if (c->log.eval_every > 0 && step % c->log.eval_every == 0 && step < c->train.steps)
        STRATA_TRY(strata_eval_session_run(&t->evals, step));
    STRATA_TRY(maybe_sample(t, step));
    if (agreed && step < c->train.steps) STRATA_TRY(save(t));
    return strata_ok();
}

/* The loop proper; returns STRATA_ESTOPPED after a stop (the caller saves). */
static strata_err run_loop(trainer *t)
{
    const strata_config *c = t->cfg;
    long step = t->ckpt.st.step;
    if (step == 0) STRATA_TRY(strata_eval_session_run(&t->evals, 0));
    STRATA_TRY(maybe_sample(t, step));
    while (step < c->train.steps) {
        strata_batch *batch = NULL;
        step_stats s = {0};
        int flags;
        STRATA_TRY(next_batch(t, step, &batch, &s.data_ms, &flags));
        if (flags & STRATA_AGREE_STOP) return stopped();
        if (flags & STRATA_AGREE_EXHAUSTED) {
            SAY(t,
                "the new-data stream is used up after step %ld (set [data] wrap or follow to go "
                "on)",
                step);
            break;
        }
        strata_policy_update_groups(&t->policy, step);
        strata_watchdog_phase(t->watchdog, step, "forward/backward");
        double data_ms = s.data_ms;
        STRATA_TRY(train_step(t, batch, &s));
        s.data_ms = data_ms;
        STRATA_TRY(after_step(t, ++step, &s));
    }
    t->train_peak_rss = strata_comm_max_double(t->comm, strata_peak_rss_bytes());
    /* A resumed run with nothing left to do only confirms DONE. */
    if (t->ckpt.last_saved_step == step) return strata_train_ckpt_done(&t->ckpt, step);
    STRATA_TRY(strata_eval_session_run(&t->evals, step));
    STRATA_TRY(save(t));
    return strata_train_ckpt_done(&t->ckpt, step);
}

/* After a stop on a signal: a checkpoint of the step reached, unless there is one. */
static strata_err save_on_stop(trainer *t)
{
    SAY(t, "stop requested (signal %d) at step %ld: saving a checkpoint", strata_stop_signal(),
        t->ckpt.st.step);
    if (t->ckpt.last_saved_step != t->ckpt.st.step) STRATA_TRY(save(t));
    return strata_errorf(STRATA_ESTOPPED,
                         "stopped at step %ld after a checkpoint; run again with resume = auto to "
                         "continue",
                         t->ckpt.st.step);
}

strata_err strata_train_run(const strata_config *cfg, strata_comm *comm)
{
    trainer t;
    memset(&t, 0, sizeof t);
    t.cfg = cfg, t.comm = comm;
    t.rank = strata_comm_rank(comm), t.world = strata_comm_size(comm);
    t.ckpt.last_saved_step = -1;
    strata_err e = strata_comm_agree_error(comm, setup(&t));
    if (!e.code && cfg->train.step_timeout != 0)
        t.watchdog = strata_watchdog_start(
            comm, cfg->train.step_timeout > 0 ? cfg->train.step_timeout : STRATA_WATCHDOG_FLOOR_S);
    if (!e.code) {
        t.evals.watchdog = t.watchdog;
        SAY(&t,
            "strata: %zu parameters, %d ranks x %d threads, global batch %d x %d tokens, %ld "
            "steps",
            strata_model_n_params(t.model), t.world, omp_get_max_threads(), cfg->train.global_batch,
            t.T, cfg->train.steps);
        print_memory(&t);
        e = run_loop(&t);
        if (e.code == STRATA_ESTOPPED) e = save_on_stop(&t);
    }
    strata_watchdog_stop(t.watchdog);
    if (t.train_peak_rss > 0)
        SAY(&t,
            "peak RSS while training: %.0f MiB (the largest rank; rank 0 gathers ZeRO's "
            "optimizer state to save)",
            t.train_peak_rss / (1 << 20));
    trainer_free(&t);
    return e;
}
