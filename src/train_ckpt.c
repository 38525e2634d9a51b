/* A training run's checkpoints; see train_ckpt.h. */
#include "strata/train_ckpt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/log.h"
#include "strata/mem.h"
#include "strata/metrics.h"
#include "strata/perf.h"

/* ---- the model a config names ------------------------------------------ */

static strata_err check_model(const strata_config *c, const strata_model *m)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    if (c->data.seq_len > s->block_size)
        return strata_errorf(STRATA_EINPUT,
                             "%s: [data] seq_len (%d) exceeds the model's block_size (%d)", c->path,
                             c->data.seq_len, s->block_size);
    if (c->model.dropout > 0 && !strata_model_has_dropout(m))
        return strata_errorf(STRATA_EINPUT,
                             "%s: [model] dropout is not implemented for the %s family", c->path,
                             strata_model_family_name(m));
    return strata_ok();
}

static strata_err create_model(const strata_config *c, const char *init, strata_model **out)
{
    int scratch = !strcmp(init, "scratch");
    strata_model_shape file_shape, shape;
    if (!scratch) STRATA_TRY(strata_ckpt_read_shape(init, &file_shape));
    STRATA_TRY(strata_config_model_shape(c, scratch ? NULL : &file_shape, &shape));
    strata_err e = strata_model_create(out, &shape);
    if (e.code) return strata_errorf(e.code, "%s: [model] %s", c->path, e.msg);
    e = strata_model_set_precision(*out, (strata_precision)c->train.precision);
    if (e.code) return strata_errorf(e.code, "%s: [train] precision: %s", c->path, e.msg);
    return check_model(c, *out);
}

strata_err strata_train_model_open(const strata_config *cfg, const char *init, strata_model **out,
                                   strata_ckpt_state *init_state)
{
    if (!init) init = cfg->model.init;
    *out = NULL;
    strata_model *m = NULL;
    strata_err e = create_model(cfg, init, &m);
    if (!e.code && !strcmp(init, "scratch"))
        strata_model_init(m, cfg->train.init_seed);
    else if (!e.code)
        e = strata_ckpt_load(init, m, NULL, NULL, init_state);
    if (e.code) {
        strata_model_free(m);
        return e;
    }
    *out = m;
    return strata_ok();
}

/* ---- extra_json ---------------------------------------------------------- */

void strata_train_extra_baselines(const char *extra_json, strata_eval_session *evals)
{
    json_t *root = extra_json ? json_loads(extra_json, 0, NULL) : NULL;
    strata_eval_baselines_from_json(evals, json_object_get(root, "eval_baselines"));
    json_decref(root);
}

json_t *strata_train_origin(const char *extra_json)
{
    json_t *root = extra_json ? json_loads(extra_json, 0, NULL) : NULL;
    json_t *imp = json_object_get(root, "import");
    json_t *origin = json_is_object(imp) ? json_incref(imp) : NULL;
    json_decref(root);
    return origin;
}

/* The values that fix the data order, typed. */
static json_t *resume_record(const strata_config *c)
{
    return json_pack("{s:i, s:i, s:i, s:f}", "global_batch", c->train.global_batch, "seq_len",
                     c->data.seq_len, "shuffle_window", c->data.shuffle_window, "replay_ratio",
                     c->data.replay_ratio);
}

static char *extra_json(const strata_train_ckpt *k, const strata_eval_session *evals)
{
    json_t *root = json_object();
    if (!root) return NULL;
    json_object_set_new(root, "eval_baselines",
                        evals ? strata_eval_baselines_to_json(evals) : json_object());
    if (k->origin) json_object_set(root, "import", k->origin);
    json_object_set_new(root, "resume", resume_record(k->cfg));
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return text;
}

strata_err strata_train_ckpt_init(strata_train_ckpt *k, const strata_config *cfg, strata_comm *comm,
                                  const strata_loader *loader, const char *init_extra_json)
{
    memset(k, 0, sizeof *k);
    k->cfg = cfg, k->comm = comm;
    k->last_saved_step = -1;
    k->last_save_time = strata_now_seconds();
    k->origin = strata_train_origin(init_extra_json);
    k->st.seed = cfg->data.seed;
    k->st.config = strata_config_text(cfg);
    k->st.data_fingerprint = loader ? strdup(strata_loader_fingerprint(loader)) : NULL;
    if (!k->st.config || (loader && !k->st.data_fingerprint))
        return strata_errorf(STRATA_ENOMEM, "out of memory");
    return strata_ok();
}

void strata_train_ckpt_free(strata_train_ckpt *k)
{
    strata_ckpt_state_free(&k->st);
    json_decref(k->origin);
    k->origin = NULL;
}

/* ---- saving ---------------------------------------------------------------- */

int strata_train_ckpt_due(const strata_train_ckpt *k, long step)
{
    const strata_config *c = k->cfg;
    if (c->checkpoint.every > 0 && step % c->checkpoint.every == 0) return 1;
    if (c->checkpoint.every_minutes > 0 &&
        strata_now_seconds() - k->last_save_time >= c->checkpoint.every_minutes * 60)
        return 1;
    return 0;
}

/* Under ZeRO-1 each rank holds a part of Adam's moments: rank 0 gathers
 * them into full buffers (*m, *v; NULL elsewhere than rank 0 is fine). */
static strata_err gather_moments(strata_train_ckpt *k, const strata_adamw *opt, size_t n, float **m,
                                 float **v)
{
    *m = strata_calloc(n, sizeof(float));
    *v = strata_calloc(n, sizeof(float));
    if (!*m || !*v)
        return strata_errorf(STRATA_ENOMEM, "out of memory gathering optimizer state (%zu MiB)",
                             2 * n * sizeof(float) >> 20);
    memcpy(*m + opt->begin, opt->m, (opt->end - opt->begin) * sizeof(float));
    memcpy(*v + opt->begin, opt->v, (opt->end - opt->begin) * sizeof(float));
    strata_comm_gather_ranges(k->comm, *m, n);
    strata_comm_gather_ranges(k->comm, *v, n);
    return strata_ok();
}

static strata_err write_on_rank0(strata_train_ckpt *k, const strata_model *m, const float *am,
                                 const float *av, const strata_eval_session *evals, char *saved)
{
    const strata_config *c = k->cfg;
    free(k->st.extra_json);
    k->st.extra_json = extra_json(k, evals);
    if (!k->st.extra_json) return strata_errorf(STRATA_ENOMEM, "out of memory");
    return strata_ckpt_save(c->checkpoint.dir, m, am, av, &k->st, c->checkpoint.keep,
                            c->checkpoint.keep_every, saved, STRATA_PATH_MAX);
}

strata_err strata_train_ckpt_save(strata_train_ckpt *k, const strata_model *m,
                                  const strata_adamw *opt, const strata_eval_session *evals,
                                  strata_watchdog *w)
{
    int rank = strata_comm_rank(k->comm), world = strata_comm_size(k->comm);
    const float *am = opt->m, *av = opt->v;
    float *full_m = NULL, *full_v = NULL;
    if (k->cfg->train.zero && world > 1) {
        STRATA_TRY(strata_comm_local_error(
            k->comm, gather_moments(k, opt, strata_model_n_floats(m), &full_m, &full_v)));
        am = full_m, av = full_v;
    }
    strata_watchdog_phase(w, k->st.step, "checkpoint");
    strata_err e = strata_ok();
    char saved[STRATA_PATH_MAX] = "";
    double t0 = strata_now_seconds();
    k->st.adam_t = opt->t;
    k->st.world_size = world;
    if (rank == 0) e = write_on_rank0(k, m, am, av, evals, saved);
    strata_free(full_m), strata_free(full_v);
    int failed = strata_comm_agree(k->comm, e.code ? STRATA_AGREE_ERROR : 0);
    if (failed && !e.code) e = strata_errorf(STRATA_EFAIL, "rank 0 failed to save a checkpoint");
    if (!e.code && rank == 0)
        strata_log(STRATA_LOG_INFO, "saved %s (%.2f s)", saved, strata_now_seconds() - t0);
    k->last_save_time = strata_now_seconds();
    if (!e.code) k->last_saved_step = k->st.step;
    return e;
}

strata_err strata_train_ckpt_done(const strata_train_ckpt *k, long step)
{
    if (strata_comm_rank(k->comm) != 0) return strata_ok();
    char path[STRATA_PATH_MAX + 8], text[64];
    snprintf(path, sizeof path, "%s/DONE", k->cfg->checkpoint.dir);
    snprintf(text, sizeof text, "%ld %ld\n", step, k->cfg->train.steps);
    return strata_write_small_file(path, text);
}

/* ---- resuming ---------------------------------------------------------------- */

/* Older checkpoints have no typed "resume" record: the same keys are
 * compared as lines of their resolved config text. */
static strata_err check_config_text(const strata_config *c, const char *saved, const char *path)
{
    static const char *fixed[] = {
        "global_batch = ", "replay_ratio = ", "seq_len = ", "shuffle_window = "};
    char *now = strata_config_text(c);
    strata_err e = strata_ok();
    for (int i = 0; now && saved && !e.code && i < 4; i++) {
        const char *a = strstr(now, fixed[i]), *b = strstr(saved, fixed[i]);
        if (!a || !b) continue;
        int la = (int)strcspn(a, "\n"), lb = (int)strcspn(b, "\n");
        if (la == lb && !strncmp(a, b, la)) continue;
        e = strata_errorf(STRATA_EINPUT,
                          "%s: %.*s differs from checkpoint %s (%.*s): a resumed run cannot "
                          "change it",
                          c->path, la, a, path, lb, b);
    }
    free(now);
    return e;
}

/* One typed value of the "resume" record against the config's. */
static strata_err check_value(const strata_config *c, const json_t *rec, const char *key,
                              double now, const char *section, const char *path)
{
    const json_t *v = json_object_get(rec, key);
    if (!json_is_number(v) || json_number_value(v) == now) return strata_ok();
    return strata_errorf(STRATA_EINPUT,
                         "%s: [%s] %s = %.15g differs from checkpoint %s (%s = %.15g): a "
                         "resumed run cannot change it",
                         c->path, section, key, now, path, key, json_number_value(v));
}

static strata_err check_data_order(const strata_config *c, const strata_ckpt_state *st,
                                   const char *path)
{
    json_t *root = st->extra_json ? json_loads(st->extra_json, 0, NULL) : NULL;
    json_t *rec = json_object_get(root, "resume");
    strata_err e = strata_ok();
    if (!json_is_object(rec))
        e = check_config_text(c, st->config, path);
    else if (!(e = check_value(c, rec, "global_batch", c->train.global_batch, "train", path))
                  .code &&
             !(e = check_value(c, rec, "replay_ratio", c->data.replay_ratio, "data", path)).code &&
             !(e = check_value(c, rec, "seq_len", c->data.seq_len, "data", path)).code)
        e = check_value(c, rec, "shuffle_window", c->data.shuffle_window, "data", path);
    json_decref(root);
    return e;
}

/* Refuses a resume whose config changes what cannot change mid-run. */
static strata_err check_compatible(const strata_config *c, const strata_loader *loader,
                                   const strata_ckpt_state *st, const char *path)
{
    if (st->seed != c->data.seed)
        return strata_errorf(STRATA_EINPUT,
                             "%s: [data] seed is %llu but checkpoint %s was made with %llu; "
                             "a resumed run cannot change it (HINT: resume = never to start over)",
                             c->path, (unsigned long long)c->data.seed, path,
                             (unsigned long long)st->seed);
    if (st->data_fingerprint && loader) {
        strata_err e = strata_loader_check_fingerprint(loader, st->data_fingerprint);
        if (e.code)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: [data] streams differ from those of checkpoint %s: %s (a "
                                 "resumed run cannot change its data; HINT: resume = never to "
                                 "start over)",
                                 c->path, path, e.msg);
    }
    return check_data_order(c, st, path);
}

static void warn_bad_checkpoint(void *ctx, const char *msg)
{
    (void)ctx;
    strata_log(STRATA_LOG_WARN, "%s", msg);
}

/* Loads the checkpoint resume names into m and the full moments. */
static strata_err load_resume(strata_train_ckpt *k, strata_model *m, float *am, float *av,
                              strata_ckpt_state *st, char *path)
{
    const strata_config *c = k->cfg;
    /* Every rank reads the same file: the result is the same everywhere, so
     * a bad checkpoint is an error all ranks return alike. */
    if (!strcmp(c->checkpoint.resume, "auto"))
        return strata_ckpt_load_latest(c->checkpoint.dir, m, am, av, st, path, STRATA_PATH_MAX,
                                       strata_comm_rank(k->comm) == 0 ? warn_bad_checkpoint : NULL,
                                       NULL);
    snprintf(path, STRATA_PATH_MAX, "%s", c->checkpoint.resume);
    return strata_ckpt_load(path, m, am, av, st);
}

strata_err strata_train_ckpt_resume(strata_train_ckpt *k, strata_model *m, strata_adamw *opt,
                                    strata_eval_session *evals, const strata_loader *loader,
                                    int *resumed)
{
    *resumed = 0;
    if (!strcmp(k->cfg->checkpoint.resume, "never")) return strata_ok();
    size_t n = strata_model_n_floats(m);
    float *am = strata_calloc(n, sizeof(float)), *av = strata_calloc(n, sizeof(float));
    char path[STRATA_PATH_MAX] = "";
    strata_ckpt_state st = {0};
    strata_err e = am && av ? load_resume(k, m, am, av, &st, path)
                            : strata_errorf(STRATA_ENOMEM, "out of memory for optimizer state");
    if (!e.code && path[0]) e = check_compatible(k->cfg, loader, &st, path);
    if (!e.code && path[0]) {
        memcpy(opt->m, am + opt->begin, (opt->end - opt->begin) * sizeof(float));
        memcpy(opt->v, av + opt->begin, (opt->end - opt->begin) * sizeof(float));
        opt->t = st.adam_t;
        json_t *origin = strata_train_origin(st.extra_json);
        if (origin) json_decref(k->origin), k->origin = origin;
        strata_train_extra_baselines(st.extra_json, evals);
        strata_ckpt_state_free(&k->st);
        k->st = st;
        memset(&st, 0, sizeof st);
        k->last_saved_step = k->st.step;
        *resumed = 1;
        if (strata_comm_rank(k->comm) == 0)
            strata_log(STRATA_LOG_INFO,
                       "resumed from %s at step %ld (%ld tokens seen, saved on %d ranks)", path,
                       k->st.step, k->st.tokens_seen, k->st.world_size);
    }
    strata_free(am), strata_free(av);
    strata_ckpt_state_free(&st);
    return e;
}
