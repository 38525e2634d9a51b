/* The training loop; see trainer.h. */
#include "strata/trainer.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata/ckpt.h"
#include "strata/loader.h"
#include "strata/machine.h"
#include "strata/metrics.h"
#include "strata/model.h"
#include "strata/optim.h"
#include "strata/perf.h"
#include "strata/schedule.h"
#include "strata/stop.h"
#include "strata/vocab_extend.h"
#include "strata/watchdog.h"

typedef struct eval_state {
    strata_evalset *set;
    double baseline; /* loss of the init model, NAN until measured */
} eval_state;

typedef struct trainer {
    const strata_config *cfg;
    strata_comm *comm;
    int rank, world;
    strata_model *model;
    int L, T;
    size_t n_floats;
    strata_adamw opt; /* owns this rank's shard (all without ZeRO) */
    strata_grad_sync *sync;
    strata_loader *loader;
    eval_state evals[STRATA_MAX_EVALS];
    strata_metrics *metrics;   /* rank 0 only */
    strata_watchdog *watchdog; /* NULL when [train] step_timeout = 0 */
    strata_param_group *groups;
    int n_groups;
    float *theta0;  /* init weights, for L2-SP, EWC and L1-to-init */
    float *fisher;  /* EWC's diagonal Fisher, model layout */
    json_t *origin; /* where the model came from ("import" of its checkpoints' extra_json) */
    uint32_t *inputs, *targets;
    float *seq_loss;
    int slot_begin;    /* this rank's first slot in the global batch */
    int64_t *slot_ids; /* (micro_batch) global slots of a micro-batch, for dropout */
    strata_schedule sched;
    strata_ckpt_state st;
    double peak_gflops, flops_per_token;
    double last_save_time;
    long last_saved_step;  /* -1 until this run saved */
    double train_peak_rss; /* max over ranks, before the final save */
    double step_ms_sum, tokens_per_s_sum;
    long timed_steps;
} trainer;

/* ---- helpers ---------------------------------------------------------- */

static void say(const trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const trainer *t, const char *fmt, ...)
{
    if (t->rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

/* JSON has no NaN: non-finite numbers are written as null. */
static const char *json_num(char *buf, double x)
{
    if (!isfinite(x)) return "null";
    snprintf(buf, 32, "%.6g", x);
    return buf;
}

static strata_err make_dirs(const char *dir)
{
    char p[STRATA_PATH_MAX];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) && errno != EEXIST)
            return strata_errorf(STRATA_EINPUT, "%s: cannot create directory: %s", p,
                                 strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0777) && errno != EEXIST)
        return strata_errorf(STRATA_EINPUT, "%s: cannot create directory: %s", p, strerror(errno));
    return strata_ok();
}

/* ---- model, optimizer groups ----------------------------------------- */

static int frozen_blocks_at(const trainer *t, long step)
{
    const strata_config *c = t->cfg;
    if (c->train.freeze_all_blocks) return t->L;
    int k = c->train.freeze_blocks < t->L ? c->train.freeze_blocks : t->L;
    if (c->train.unfreeze_every > 0) k -= (int)(step / c->train.unfreeze_every);
    return k > 0 ? k : 0;
}

/* The first row strata extend-vocab added to the model, 0 if none. */
static long new_token_rows(const trainer *t)
{
    json_t *ext = json_object_get(t->origin, STRATA_VOCAB_EXTENSION_KEY);
    return (long)json_integer_value(json_object_get(ext, "old_vocab_size"));
}

/* One group per tensor: weight decay on 2-D weights, lr multiplier 0 for a
 * frozen tensor and decay^(L-1-l) for block l with layer-wise lr decay. */
static void build_groups(trainer *t, long step)
{
    const strata_config *c = t->cfg;
    int frozen = frozen_blocks_at(t, step);
    int n = strata_model_n_tensors(t->model);
    int untied = strata_model_find_role(t->model, STRATA_ROLE_LM_HEAD) != NULL;
    for (int i = 0; i < n; i++) {
        const strata_tensor *ts = strata_model_tensor(t->model, i);
        strata_param_group *g = &t->groups[i];
        g->begin = ts->offset;
        g->end = i + 1 < n ? strata_model_tensor(t->model, i + 1)->offset : t->n_floats;
        g->decay = ts->decay;
        int is_embedding = ts->role == STRATA_ROLE_TOKEN_EMBED || ts->role == STRATA_ROLE_POS_EMBED;
        double depth = ts->layer >= 0 ? t->L - 1 - ts->layer : (is_embedding ? t->L : 0);
        g->lr_mult = (float)pow(c->train.layer_lr_decay, depth);
        if (ts->layer >= 0 && ts->layer < frozen) g->lr_mult = 0;
        if (is_embedding && c->train.freeze_embeddings) g->lr_mult = 0;
        /* Backprop stops at the lowest trainable block, so below it the
         * embeddings get no gradient: freeze them rather than let weight
         * decay alone shrink them. */
        if (is_embedding && frozen > 0 && !c->train.freeze_all_blocks) g->lr_mult = 0;
        /* Feature extraction trains the final norm and the lm head only (the
         * token embedding too when it is the tied head). */
        if (c->train.freeze_all_blocks && ts->role == STRATA_ROLE_POS_EMBED) g->lr_mult = 0;
        if (c->train.freeze_all_blocks && ts->role == STRATA_ROLE_TOKEN_EMBED && untied)
            g->lr_mult = 0;
    }
    t->n_groups = n;
    /* The rows strata extend-vocab added learn at new_token_lr_mult (groups has room). */
    t->n_groups = strata_vocab_lr_groups(t->model, new_token_rows(t), c->train.new_token_lr_mult,
                                         c->train.new_token_steps, step, t->groups, n);
}

/* EWC's Fisher file has the checkpoint layout: read it into a scratch model. */
static strata_err load_fisher(trainer *t)
{
    const strata_config *c = t->cfg;
    if (!c->train.fisher[0])
        return strata_errorf(STRATA_EINPUT,
                             "%s: [train] ewc is %g but [train] fisher is not set "
                             "(HINT: strata fisher --config ... --out fisher.h5)",
                             c->path, c->train.ewc);
    strata_model *scratch;
    STRATA_TRY(strata_model_create(&scratch, strata_model_get_shape(t->model)));
    strata_err e = strata_ckpt_load(c->train.fisher, scratch, NULL, NULL, NULL);
    if (!e.code) {
        t->fisher = malloc(t->n_floats * sizeof(float));
        if (t->fisher)
            memcpy(t->fisher, strata_model_params(scratch), t->n_floats * sizeof(float));
        else
            e = strata_errorf(STRATA_EFAIL, "out of memory for the Fisher");
    }
    strata_model_free(scratch);
    return e;
}

static void read_origin(trainer *t, const char *json);

static strata_err init_model(trainer *t, strata_ckpt_state *init_state)
{
    const strata_config *c = t->cfg;
    int scratch = !strcmp(c->model.init, "scratch");
    strata_model_shape file_shape, shape;
    if (!scratch) STRATA_TRY(strata_ckpt_read_shape(c->model.init, &file_shape));
    STRATA_TRY(strata_config_model_shape(c, scratch ? NULL : &file_shape, &shape));
    strata_err e = strata_model_create(&t->model, &shape);
    if (e.code) return strata_errorf(e.code, "%s: [model] %s", c->path, e.msg);
    if (c->data.seq_len > shape.block_size)
        return strata_errorf(STRATA_EINPUT,
                             "%s: [data] seq_len (%d) exceeds the model's block_size (%d)", c->path,
                             c->data.seq_len, shape.block_size);
    if (c->model.dropout > 0 && !strata_model_has_dropout(t->model))
        return strata_errorf(STRATA_EINPUT,
                             "%s: [model] dropout is not implemented for the %s family", c->path,
                             strata_model_family_name(t->model));
    t->L = shape.n_layer;
    t->T = c->data.seq_len;
    t->n_floats = strata_model_n_floats(t->model);
    if (scratch)
        strata_model_init(t->model, c->train.init_seed);
    else {
        strata_ckpt_state local = {0};
        strata_ckpt_state *st = init_state ? init_state : &local;
        STRATA_TRY(strata_ckpt_load(c->model.init, t->model, NULL, NULL, st));
        read_origin(t, st->extra_json);
        strata_ckpt_state_free(&local);
    }
    if (c->train.l2sp > 0 || c->train.ewc > 0 || (c->train.l1 > 0 && c->train.l1_to_init)) {
        t->theta0 = malloc(t->n_floats * sizeof(float));
        if (!t->theta0) return strata_errorf(STRATA_EFAIL, "out of memory for init weights");
        memcpy(t->theta0, strata_model_params(t->model), t->n_floats * sizeof(float));
    }
    if (c->train.ewc > 0) STRATA_TRY(load_fisher(t));
    t->groups = calloc(strata_model_n_tensors(t->model) + 2, sizeof *t->groups);
    if (!t->groups) return strata_errorf(STRATA_EFAIL, "out of memory");
    if (c->train.new_token_lr_mult != 1 && new_token_rows(t) <= 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: [train] new_token_lr_mult is set but [model] init records no "
                             "vocabulary extension (strata extend-vocab makes one)",
                             c->path);
    build_groups(t, 0);
    return strata_ok();
}

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

/* ---- data --------------------------------------------------------------- */

static strata_err init_data(trainer *t)
{
    const strata_config *c = t->cfg;
    strata_loader_config lc;
    memset(&lc, 0, sizeof lc);
    snprintf(lc.new_path, sizeof lc.new_path, "%s", c->data.new_path);
    memcpy(lc.replay, c->data.replay, sizeof lc.replay);
    lc.n_replay = c->data.n_replay;
    lc.replay_ratio = c->data.replay_ratio;
    lc.seq_len = c->data.seq_len;
    lc.vocab_size = strata_model_get_shape(t->model)->vocab_size;
    const char *tok = json_string_value(json_object_get(t->origin, "tokenizer_hash"));
    if (tok) snprintf(lc.tokenizer_hash, sizeof lc.tokenizer_hash, "%s", tok);
    lc.seed = c->data.seed;
    lc.global_batch = c->train.global_batch;
    lc.slot_begin = (int)((long)t->rank * c->train.global_batch / t->world);
    lc.slot_end = (int)((long)(t->rank + 1) * c->train.global_batch / t->world);
    t->slot_begin = lc.slot_begin;
    lc.follow = c->data.follow;
    lc.follow_timeout_s = c->data.follow_timeout;
    lc.wrap = c->data.wrap;
    lc.shuffle_window = c->data.shuffle_window;
    lc.prefetch = c->data.prefetch;
    if (!c->data.new_path[0])
        return strata_errorf(STRATA_EINPUT, "%s: [data] new is not set", c->path);
    if (c->train.global_batch < t->world)
        return strata_errorf(
            STRATA_EINPUT, "%s: [train] global_batch (%d) is smaller than the number of ranks (%d)",
            c->path, c->train.global_batch, t->world);
    STRATA_TRY(strata_loader_open(&t->loader, &lc));
    for (int i = 0; i < c->n_evals; i++) {
        STRATA_TRY(strata_evalset_open(&t->evals[i].set, c->evals[i].path, c->data.seq_len,
                                       strata_model_get_shape(t->model)->vocab_size,
                                       c->evals[i].max_samples));
        t->evals[i].baseline = NAN;
    }
    int mb = c->train.micro_batch, T = t->T;
    t->inputs = malloc((size_t)mb * T * sizeof(uint32_t));
    t->targets = malloc((size_t)mb * T * sizeof(uint32_t));
    t->seq_loss = malloc((size_t)mb * sizeof(float));
    t->slot_ids = malloc((size_t)mb * sizeof(int64_t));
    if (!t->inputs || !t->targets || !t->seq_loss || !t->slot_ids)
        return strata_errorf(STRATA_EFAIL, "out of memory");
    return strata_model_reserve(t->model, mb, T);
}

/* Splits rows of T+1 tokens into inputs and targets. */
static void split_rows(const uint32_t *rows, int n, int T, uint32_t *inputs, uint32_t *targets)
{
    for (int i = 0; i < n; i++) {
        memcpy(inputs + (size_t)i * T, rows + (size_t)i * (T + 1), T * sizeof(uint32_t));
        memcpy(targets + (size_t)i * T, rows + (size_t)i * (T + 1) + 1, T * sizeof(uint32_t));
    }
}

/* ---- evaluation ------------------------------------------------------- */

/* Mean loss over an eval set, its samples split across ranks. Returns NAN
 * and sets *stopped when a stop request arrives mid-way. */
static double evaluate_set(trainer *t, strata_evalset *set, int *stopped)
{
    long n = strata_evalset_n_samples(set);
    long lo = n * t->rank / t->world, hi = n * (t->rank + 1) / t->world;
    int mb = t->cfg->train.micro_batch, T = t->T;
    uint32_t *rows = malloc((size_t)mb * (T + 1) * sizeof(uint32_t));
    if (!rows) strata_comm_abort(t->comm, 1, "out of memory in evaluation");
    long max_batches = (n / t->world + 1 + mb - 1) / mb + 1;
    double sums[2] = {0, 0};
    long first = lo;
    for (long b = 0; b < max_batches; b++) {
        /* Every rank runs the same number of rounds so the stop agreement
         * below stays a collective; ranks out of samples just agree. */
        if (strata_comm_agree(t->comm, strata_stop_requested() ? STRATA_AGREE_STOP : 0)) {
            *stopped = 1;
            free(rows);
            return NAN;
        }
        int k = (int)(hi - first < mb ? hi - first : mb);
        if (k <= 0) continue;
        strata_err e = strata_evalset_read(set, first, k, rows);
        if (e.code) strata_comm_abort(t->comm, e.code, e.msg);
        split_rows(rows, k, T, t->inputs, t->targets);
        strata_model_set_dropout(t->model, 0.0f, 0, 0, NULL);
        float loss = strata_model_forward(t->model, t->inputs, t->targets, k, T, NULL);
        sums[0] += (double)loss * k * T;
        sums[1] += (double)k * T;
        first += k;
    }
    free(rows);
    strata_comm_sum_doubles(t->comm, sums, 2);
    return sums[1] > 0 ? sums[0] / sums[1] : NAN;
}

static int evaluate_all(trainer *t, long step)
{
    char b1[32], b2[32], b3[32];
    for (int i = 0; i < t->cfg->n_evals; i++) {
        int stopped = 0;
        strata_watchdog_phase(t->watchdog, step, "evaluation");
        double t0 = strata_now_seconds();
        double loss = evaluate_set(t, t->evals[i].set, &stopped);
        if (stopped) return 1;
        eval_state *ev = &t->evals[i];
        if (isnan(ev->baseline)) ev->baseline = loss;
        double delta = loss - ev->baseline;
        const char *name = t->cfg->evals[i].name;
        say(t, "eval %-8s step %ld | loss %.4f | ppl %.2f | vs step-0 baseline %+.4f | %.1f s\n",
            name, step, loss, exp(loss), delta, strata_now_seconds() - t0);
        if (t->metrics) {
            char extra[128] = "";
            if (!strcmp(name, "old"))
                snprintf(extra, sizeof extra, ",\"forgetting\":%s", json_num(b3, delta));
            if (!strcmp(name, "new"))
                snprintf(extra, sizeof extra, ",\"learning\":%s", json_num(b3, -delta));
            strata_err e = strata_metrics_write(
                t->metrics, "\"step\":%ld,\"eval\":\"%s\",\"loss\":%s,\"ppl\":%s,\"baseline\":%s%s",
                step, name, json_num(b1, loss), json_num(b2, exp(loss)), json_num(b3, ev->baseline),
                extra);
            if (e.code) strata_comm_abort(t->comm, 1, e.msg);
        }
    }
    return 0;
}

/* Eval baselines travel in the checkpoint as a JSON object. */
/* extra_json of this run's checkpoints: the eval baselines (so a resumed
 * run reports forgetting against the same step-0 figures) and the model's
 * origin, carried from the init checkpoint (its import and tokenizer). */
static char *baselines_json(const trainer *t)
{
    json_t *root = json_object(), *base = json_object();
    for (int i = 0; root && base && i < t->cfg->n_evals; i++)
        if (isfinite(t->evals[i].baseline))
            json_object_set_new(base, t->cfg->evals[i].name, json_real(t->evals[i].baseline));
    json_object_set_new(root, "eval_baselines", base);
    if (t->origin) json_object_set(root, "import", t->origin);
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return text;
}

/* The "import" member of a checkpoint's extra_json, kept as the model's origin. */
static void read_origin(trainer *t, const char *json)
{
    json_t *root = json ? json_loads(json, 0, NULL) : NULL;
    json_t *imp = json_object_get(root, "import");
    if (json_is_object(imp)) {
        json_decref(t->origin);
        t->origin = json_incref(imp);
    }
    json_decref(root);
}

static void read_baselines(trainer *t, const char *json)
{
    json_t *root = json ? json_loads(json, 0, NULL) : NULL;
    json_t *base = json_object_get(root, "eval_baselines");
    for (int i = 0; i < t->cfg->n_evals; i++) {
        json_t *v = json_object_get(base, t->cfg->evals[i].name);
        if (json_is_number(v)) t->evals[i].baseline = json_number_value(v);
    }
    json_decref(root);
    read_origin(t, json);
}

/* ---- checkpoints ---------------------------------------------------------- */

static void warn_bad_checkpoint(void *ctx, const char *msg)
{
    (void)ctx;
    fprintf(stderr, "strata: warning: %s\n", msg);
}

/* Saves on rank 0 (Adam's moments gathered first under ZeRO); all ranks
 * learn whether it worked, so a full disk ends the job on every rank. */
static strata_err save_checkpoint(trainer *t)
{
    const strata_config *c = t->cfg;
    float *m = t->opt.m, *v = t->opt.v;
    float *full_m = NULL, *full_v = NULL;
    if (c->train.zero && t->world > 1) {
        full_m = calloc(t->n_floats, sizeof(float));
        full_v = calloc(t->n_floats, sizeof(float));
        if (!full_m || !full_v)
            strata_comm_abort(t->comm, 1, "out of memory gathering optimizer state");
        memcpy(full_m + t->opt.begin, t->opt.m, (t->opt.end - t->opt.begin) * sizeof(float));
        memcpy(full_v + t->opt.begin, t->opt.v, (t->opt.end - t->opt.begin) * sizeof(float));
        strata_comm_gather_ranges(t->comm, full_m, t->n_floats);
        strata_comm_gather_ranges(t->comm, full_v, t->n_floats);
        m = full_m, v = full_v;
    }
    strata_watchdog_phase(t->watchdog, t->st.step, "checkpoint");
    strata_err e = strata_ok();
    char saved[STRATA_PATH_MAX] = "";
    double t0 = strata_now_seconds();
    if (t->rank == 0) {
        t->st.adam_t = t->opt.t;
        t->st.world_size = t->world;
        free(t->st.extra_json);
        t->st.extra_json = baselines_json(t);
        e = make_dirs(c->checkpoint.dir);
        if (!e.code)
            e = strata_ckpt_save(c->checkpoint.dir, t->model, m, v, &t->st, c->checkpoint.keep,
                                 c->checkpoint.keep_every, saved, sizeof saved);
    }
    free(full_m);
    free(full_v);
    int failed = strata_comm_agree(t->comm, e.code ? STRATA_AGREE_ERROR : 0);
    if (failed && !e.code) e = strata_errorf(STRATA_EFAIL, "rank 0 failed to save a checkpoint");
    if (!e.code) say(t, "saved %s (%.2f s)\n", saved, strata_now_seconds() - t0);
    t->last_save_time = strata_now_seconds();
    if (!e.code) t->last_saved_step = t->st.step;
    return e;
}

/* Refuses a resume whose config changes what cannot change mid-run. */
static strata_err check_resume_compatible(const trainer *t, const strata_ckpt_state *st,
                                          const char *path)
{
    const strata_config *c = t->cfg;
    if (st->seed != c->data.seed)
        return strata_errorf(STRATA_EINPUT,
                             "%s: [data] seed is %llu but checkpoint %s was made with %llu; "
                             "a resumed run cannot change it (HINT: resume = never to start over)",
                             c->path, (unsigned long long)c->data.seed, path,
                             (unsigned long long)st->seed);
    if (st->data_fingerprint) {
        strata_err e = strata_loader_check_fingerprint(t->loader, st->data_fingerprint);
        if (e.code)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: [data] streams differ from those of checkpoint %s: %s (a "
                                 "resumed run cannot change its data; HINT: resume = never to "
                                 "start over)",
                                 c->path, path, e.msg);
    }
    /* Keys that define the data order. */
    static const char *fixed[] = {
        "global_batch = ", "replay_ratio = ", "seq_len = ", "shuffle_window = "};
    char *now = strata_config_text(c);
    for (int i = 0; now && st->config && i < 4; i++) {
        const char *a = strstr(now, fixed[i]), *b = strstr(st->config, fixed[i]);
        if (a && b && strcspn(a, "\n") == strcspn(b, "\n") && !strncmp(a, b, strcspn(a, "\n")))
            continue;
        if (!a || !b) continue;
        strata_err e =
            strata_errorf(STRATA_EINPUT,
                          "%s: %.*s differs from checkpoint %s (%.*s): a resumed run "
                          "cannot change it",
                          c->path, (int)strcspn(a, "\n"), a, path, (int)strcspn(b, "\n"), b);
        free(now);
        return e;
    }
    free(now);
    return strata_ok();
}

static strata_err resume(trainer *t)
{
    const strata_config *c = t->cfg;
    const char *mode = c->checkpoint.resume;
    if (!strcmp(mode, "never")) return strata_ok();
    float *m = calloc(t->n_floats, sizeof(float)), *v = calloc(t->n_floats, sizeof(float));
    if (!m || !v) return strata_errorf(STRATA_EFAIL, "out of memory for optimizer state");
    char path[STRATA_PATH_MAX] = "";
    strata_ckpt_state st = {0};
    strata_err e = strata_ok();
    /* Every rank reads the same file: the result is the same everywhere, so
     * a bad checkpoint is an error all ranks return alike. */
    if (!strcmp(mode, "auto"))
        e = strata_ckpt_load_latest(c->checkpoint.dir, t->model, m, v, &st, path, sizeof path,
                                    t->rank == 0 ? warn_bad_checkpoint : NULL, NULL);
    else {
        snprintf(path, sizeof path, "%s", mode);
        e = strata_ckpt_load(path, t->model, m, v, &st);
    }
    if (!e.code && path[0]) e = check_resume_compatible(t, &st, path);
    if (e.code || !path[0]) {
        free(m), free(v);
        strata_ckpt_state_free(&st);
        return e;
    }
    memcpy(t->opt.m, m + t->opt.begin, (t->opt.end - t->opt.begin) * sizeof(float));
    memcpy(t->opt.v, v + t->opt.begin, (t->opt.end - t->opt.begin) * sizeof(float));
    free(m), free(v);
    t->opt.t = st.adam_t;
    free(t->st.config), free(t->st.data_fingerprint), free(t->st.extra_json);
    t->st = st;
    read_baselines(t, st.extra_json);
    build_groups(t, st.step);
    say(t, "resumed from %s at step %ld (%ld tokens seen, saved on %d ranks)\n", path, st.step,
        st.tokens_seen, st.world_size);
    return strata_ok();
}

/* ---- one step ----------------------------------------------------------- */

/* Micro-batch gradients are added along the same left-complete tree as the
 * ranks' (strata_tree_sum), streaming: each finished micro-batch merges with
 * the pending partial sum of its own size, like a binary counter. Partial
 * sums wait in `pending`, largest first; the last micro-batch folds them in
 * block by block as backward finishes each block, so the gradient
 * reduction still starts early. */
typedef struct partial_sum {
    float *buf;
    int leaves;
} partial_sum;

typedef struct accumulation {
    trainer *t;
    partial_sum pending[32];
    int n_pending;
    size_t folded_from; /* the last micro-batch: grads[folded_from, end) are final */
} accumulation;

static float *spare_buffers[32]; /* reused across steps; one per depth */

static float *acquire_buffer(trainer *t, int depth)
{
    if (!spare_buffers[depth]) {
        spare_buffers[depth] = malloc(t->n_floats * sizeof(float));
        if (!spare_buffers[depth])
            strata_comm_abort(t->comm, 1, "out of memory for gradient accumulation");
    }
    return spare_buffers[depth];
}

/* grads holds a finished micro-batch that is not the last: merge or keep it. */
static void push_micro_batch(accumulation *a)
{
    trainer *t = a->t;
    const float *g = strata_model_grads(t->model);
    size_t n = t->n_floats;
    partial_sum cur = {NULL, 1};
    while (a->n_pending && a->pending[a->n_pending - 1].leaves == cur.leaves) {
        partial_sum *top = &a->pending[a->n_pending - 1];
        const float *right = cur.buf ? cur.buf : g;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) top->buf[i] += right[i];
        cur = (partial_sum){top->buf, top->leaves * 2};
        a->n_pending--;
    }
    if (!cur.buf) {
        cur.buf = acquire_buffer(t, a->n_pending);
        memcpy(cur.buf, g, n * sizeof(float));
    }
    a->pending[a->n_pending++] = cur;
}

/* The last micro-batch: grads[from, folded_from) are final in it; add the
 * pending sums there, smallest first (the tree's right spine). */
static void fold_range(accumulation *a, size_t from)
{
    float *g = strata_model_grads(a->t->model);
    for (int d = a->n_pending - 1; d >= 0; d--) {
        const float *left = a->pending[d].buf;
#pragma omp parallel for schedule(static)
        for (size_t i = from; i < a->folded_from; i++) g[i] = left[i] + g[i];
    }
    a->folded_from = from;
}

static void on_block_done(void *ctx, int layer)
{
    accumulation *a = ctx;
    trainer *t = a->t;
    size_t from, end;
    if (layer < 0)
        from = 0;
    else if (layer >= t->L)
        from = strata_model_top_begin(t->model);
    else
        strata_model_block_range(t->model, layer, &from, &end);
    if (from < a->folded_from) fold_range(a, from);
    strata_grad_sync_ready(t->sync, from);
}
/* Adds the anti-forgetting penalties' gradients (already per-token scaled
 * grads in g): alpha (theta - theta0) for L2-SP, lambda F (theta - theta0)
 * for EWC. */
static void add_penalty_grads(trainer *t, float *g, float *p, size_t lo, size_t hi)
{
    float alpha = (float)t->cfg->train.l2sp, lambda = (float)t->cfg->train.ewc;
    if (!t->theta0 || (alpha == 0 && lambda == 0)) return;
    const float *p0 = t->theta0, *F = t->fisher;
#pragma omp parallel for schedule(static)
    for (size_t i = lo; i < hi; i++) {
        float d = p[i] - p0[i];
        g[i] += alpha * d + (F ? lambda * F[i] * d : 0.0f);
    }
}

/* L1 as a proximal step: soft-threshold each trained weight toward its
 * anchor (0, or theta0) by lr * lambda, so it can land exactly on it. */
static void l1_prox(trainer *t, float *p, float lr)
{
    float lambda = (float)t->cfg->train.l1;
    if (lambda == 0) return;
    for (int gi = 0; gi < t->n_groups; gi++) {
        const strata_param_group *g = &t->groups[gi];
        size_t lo = g->begin > t->opt.begin ? g->begin : t->opt.begin;
        size_t hi = g->end < t->opt.end ? g->end : t->opt.end;
        if (lo >= hi || g->lr_mult == 0 || !g->decay) continue;
        float thr = lr * g->lr_mult * lambda;
#pragma omp parallel for schedule(static)
        for (size_t i = lo; i < hi; i++) {
            float a = t->theta0 && t->cfg->train.l1_to_init ? t->theta0[i] : 0.0f;
            float d = p[i] - a;
            p[i] = d > thr ? p[i] - thr : d < -thr ? p[i] + thr : a;
        }
    }
}

typedef struct step_stats {
    double loss, loss_new, loss_replay, grad_norm, lr;
    double ms, data_ms, comm_ms, hidden;
    long n_new, n_replay;
    int skipped;
} step_stats;

/* Forward and backward over this rank's slots, micro-batch by micro-batch;
 * only the last micro-batch starts the gradient reduction. */
static void compute_gradients(trainer *t, const strata_batch *batch, double sums[5])
{
    int mb = t->cfg->train.micro_batch, T = t->T, frozen = frozen_blocks_at(t, batch->step);
    accumulation acc = {.t = t, .folded_from = t->n_floats};
    for (int first = 0; first < batch->n; first += mb) {
        int k = batch->n - first < mb ? batch->n - first : mb;
        int last = first + k >= batch->n;
        strata_model_zero_grad(t->model);
        split_rows(batch->tokens + (size_t)first * (T + 1), k, T, t->inputs, t->targets);
        for (int i = 0; i < k; i++) t->slot_ids[i] = t->slot_begin + first + i;
        strata_model_set_dropout(t->model, (float)t->cfg->model.dropout, t->cfg->data.seed,
                                 batch->step, t->slot_ids);
        strata_backward_opts bo = {.loss_scale = 1.0f,
                                   .first_trainable_block = frozen,
                                   .embeddings_frozen = t->cfg->train.freeze_embeddings,
                                   .stop_at_top = t->cfg->train.freeze_all_blocks,
                                   .on_block_done = last ? on_block_done : NULL,
                                   .ctx = &acc};
        float loss;
        strata_err e = strata_model_forward_backward(t->model, t->inputs, t->targets, k, T,
                                                     t->seq_loss, &loss, &bo);
        if (e.code) strata_comm_abort(t->comm, e.code, e.msg);
        if (!last) push_micro_batch(&acc);
        for (int i = 0; i < k; i++) {
            int replay = batch->is_replay[first + i];
            sums[replay ? 2 : 0] += (double)t->seq_loss[i] * T;
            sums[replay ? 3 : 1] += T;
        }
    }
    if (batch->n == 0) {
        strata_model_zero_grad(t->model);
        on_block_done(&acc, -1);
    }
}

static step_stats train_step(trainer *t, const strata_batch *batch)
{
    const strata_config *c = t->cfg;
    step_stats s = {0};
    double t0 = strata_now_seconds();
    /* sums: loss_new, tokens_new, loss_replay, tokens_replay, stop flag */
    double sums[5] = {0};
    compute_gradients(t, batch, sums);
    strata_watchdog_phase(t->watchdog, batch->step, "gradient reduction");
    strata_grad_sync_finish(t->sync, &s.comm_ms, &s.hidden);
    sums[4] = strata_stop_requested();
    strata_comm_sum_doubles(t->comm, sums, 5);

    float *g = strata_model_grads(t->model), *p = strata_model_params(t->model);
    size_t lo = t->opt.begin, hi = t->opt.end;
    double tokens = sums[1] + sums[3];
    double sq = strata_sum_squares(g, lo, hi);
    if (c->train.zero && t->world > 1) strata_comm_sum_doubles(t->comm, &sq, 1);
    s.grad_norm = sqrt(sq) / tokens;
    s.loss = (sums[0] + sums[2]) / tokens;
    s.loss_new = sums[1] > 0 ? sums[0] / sums[1] : NAN;
    s.loss_replay = sums[3] > 0 ? sums[2] / sums[3] : NAN;
    s.n_new = (long)sums[1], s.n_replay = (long)sums[3];
    s.lr = strata_schedule_lr(&t->sched, batch->step);

    /* Sums are identical on every rank, so this decision is agreed. */
    if (!isfinite(s.loss) || !isfinite(s.grad_norm)) {
        s.skipped = 1;
    } else {
        float clip = 1.0f;
        if (c->train.grad_clip > 0 && s.grad_norm > c->train.grad_clip)
            clip = (float)(c->train.grad_clip / (s.grad_norm + 1e-6));
        float scale = clip / (float)tokens;
        if (t->theta0 && (c->train.l2sp > 0 || c->train.ewc > 0)) {
#pragma omp parallel for schedule(static)
            for (size_t i = lo; i < hi; i++) g[i] *= scale;
            add_penalty_grads(t, g, p, lo, hi);
            scale = 1.0f;
        }
        strata_adamw_step(&t->opt, p, g, scale, (float)s.lr, t->groups, t->n_groups);
        l1_prox(t, p, (float)s.lr);
        strata_grad_sync_allgather_params(t->sync, p);
    }
    if (sums[4] > 0) s.ms = -1; /* marker: a stop was requested during the step */
    double dt = strata_now_seconds() - t0;
    s.ms = sums[4] > 0 ? -dt * 1e3 : dt * 1e3;
    return s;
}

static void log_step(trainer *t, long step, const step_stats *s)
{
    const strata_config *c = t->cfg;
    double ms = fabs(s->ms);
    double tokens = (double)c->train.global_batch * t->T;
    double tps = tokens / (ms / 1e3);
    double mfu =
        t->peak_gflops > 0 ? tps * t->flops_per_token / (t->peak_gflops * 1e9 * t->world) : NAN;
    t->step_ms_sum += ms;
    t->timed_steps++;
    double eta = (double)(c->train.steps - step) * (t->step_ms_sum / t->timed_steps) / 1e3;
    if (step % c->log.every && step != c->train.steps) return;
    say(t,
        "step %ld/%ld | loss %.4f (new %.4f, replay %.4f) | lr %.2e | norm %.3f | %.0f ms | "
        "%.0f tok/s | data %.1f ms | comm %.1f ms | ETA %dh%02dm%02ds%s\n",
        step, c->train.steps, s->loss, s->loss_new, s->loss_replay, s->lr, s->grad_norm, ms, tps,
        s->data_ms, s->comm_ms, (int)(eta / 3600), (int)fmod(eta / 60, 60), (int)fmod(eta, 60),
        s->skipped ? " | SKIPPED (non-finite)" : "");
    if (!t->metrics) return;
    char b[12][32];
    strata_err e = strata_metrics_write(
        t->metrics,
        "\"step\":%ld,\"tokens\":%ld,\"loss\":%s,\"loss_new\":%s,\"loss_replay\":%s,\"tokens_new\":"
        "%ld,"
        "\"tokens_replay\":%ld,\"lr\":%s,\"grad_norm\":%s,\"ms\":%s,\"tokens_per_s\":%s,\"mfu\":%s,"
        "\"data_ms\":%s,\"comm_ms\":%s,\"comm_hidden\":%s,\"skipped\":%d",
        step, t->st.tokens_seen, json_num(b[0], s->loss), json_num(b[1], s->loss_new),
        json_num(b[2], s->loss_replay), s->n_new, s->n_replay, json_num(b[3], s->lr),
        json_num(b[4], s->grad_norm), json_num(b[5], ms), json_num(b[6], tps), json_num(b[7], mfu),
        json_num(b[8], s->data_ms), json_num(b[9], s->comm_ms), json_num(b[10], s->hidden),
        s->skipped);
    if (e.code) strata_comm_abort(t->comm, 1, e.msg);
}

/* ---- the run ------------------------------------------------------------ */

static void trainer_free(trainer *t)
{
    strata_model_free(t->model);
    strata_adamw_free(&t->opt);
    strata_grad_sync_free(t->sync);
    if (t->loader) strata_loader_close(t->loader);
    for (int i = 0; i < STRATA_MAX_EVALS; i++)
        if (t->evals[i].set) strata_evalset_close(t->evals[i].set);
    strata_metrics_close(t->metrics);
    free(t->groups), free(t->theta0), free(t->fisher);
    json_decref(t->origin);
    free(t->inputs), free(t->targets), free(t->seq_loss), free(t->slot_ids);
    strata_ckpt_state_free(&t->st);
}

/* The campaign's end, for slurm/: DONE holds "FINAL_STEP TARGET_STEPS",
 * replaced atomically like `latest`. */
static strata_err write_done_marker(const trainer *t, long step)
{
    if (t->rank != 0) return strata_ok();
    char path[STRATA_PATH_MAX + 8], tmp[STRATA_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/DONE", t->cfg->checkpoint.dir);
    snprintf(tmp, sizeof tmp, "%s/.DONE.tmp-%d", t->cfg->checkpoint.dir, (int)getpid());
    FILE *f = fopen(tmp, "w");
    int ok = f && fprintf(f, "%ld %ld\n", step, t->cfg->train.steps) > 0 && fflush(f) == 0 &&
             fsync(fileno(f)) == 0;
    if (f && fclose(f)) ok = 0;
    if (!ok || rename(tmp, path)) {
        int err = errno;
        unlink(tmp);
        return strata_errorf(STRATA_EFAIL, "%s: cannot write: %s", path, strerror(err));
    }
    return strata_ok();
}

/* What this rank holds, so ZeRO-1's saving is visible: Adam's state is
 * (end - begin) floats per moment, the whole buffer without ZeRO. */
static void print_memory(const trainer *t)
{
    char machine[512];
    strata_machine_describe(machine, sizeof machine);
    const strata_model_shape *s = strata_model_get_shape(t->model);
    say(t, "model %s: %d layers, %d wide, %d/%d heads of %d, vocab %d, %zu parameters; on %s\n",
        strata_model_family_name(t->model), s->n_layer, s->n_embd, s->n_head, s->n_kv_head,
        s->head_dim, s->vocab_size, strata_model_n_params(t->model), machine);
    double mib = 1.0 / (1 << 20), n = (double)t->n_floats * 4;
    double adam = 2.0 * (double)(t->opt.end - t->opt.begin) * 4;
    double acts = (double)strata_model_activation_bytes(t->model);
    double reduce = t->world > 1 ? n : 0, extra = (t->theta0 ? n : 0) + (t->fisher ? n : 0);
    char extra_text[64] = "";
    if (extra > 0)
        snprintf(extra_text, sizeof extra_text, ", init weights/Fisher %.0f MiB", extra * mib);
    say(t,
        "memory per rank: params %.0f MiB, grads %.0f MiB, adam m+v %.0f MiB%s, activations %.0f "
        "MiB, "
        "reduction buffers %.0f MiB%s; total %.0f MiB\n",
        n * mib, n * mib, adam * mib,
        t->cfg->train.zero && t->world > 1 ? " (ZeRO-1: 1/W of it)" : "", acts * mib, reduce * mib,
        extra_text, (2 * n + adam + acts + reduce + extra) * mib);
}

static strata_err setup(trainer *t, const strata_config *cfg, strata_comm *comm)
{
    t->cfg = cfg;
    t->comm = comm;
    t->rank = strata_comm_rank(comm);
    t->world = strata_comm_size(comm);
    STRATA_TRY(init_model(t, NULL));
    STRATA_TRY(init_optimizer(t));
    STRATA_TRY(init_data(t));
    t->st.seed = cfg->data.seed;
    t->st.config = strata_config_text(cfg);
    t->st.data_fingerprint = strdup(strata_loader_fingerprint(t->loader));
    STRATA_TRY(resume(t));
    if (t->rank == 0 && cfg->log.metrics[0])
        STRATA_TRY(
            strata_metrics_open(&t->metrics, cfg->log.metrics, t->st.step > 0 ? t->st.step : -1));
    strata_model_shape shape = *strata_model_get_shape(t->model);
    t->flops_per_token = strata_flops_per_token(&shape, t->T);
    t->peak_gflops = strata_sgemm_peak_gflops(512, 0);
    t->last_save_time = strata_now_seconds();
    t->last_saved_step = t->st.step > 0 ? t->st.step : -1; /* resumed: that one exists */
    return strata_ok();
}

static int time_to_save(const trainer *t, long step)
{
    const strata_config *c = t->cfg;
    if (c->checkpoint.every > 0 && step % c->checkpoint.every == 0) return 1;
    if (c->checkpoint.every_minutes > 0 &&
        strata_now_seconds() - t->last_save_time >= c->checkpoint.every_minutes * 60)
        return 1;
    return 0;
}

/* This step's batch. With follow the loader may wait for new shards: the
 * ranks poll every few seconds and agree each time, so a signal still stops
 * them and they move on (or give up) together. Returns agreed flags. */
enum { AGREE_WAITING = 8 };
static int next_batch(trainer *t, long step, strata_batch **batch, double *data_ms)
{
    int said = 0;
    for (;;) {
        int status = STRATA_LOADER_READY;
        double waited = 0;
        /* Waiting for new shards with follow is on purpose, not a hang. */
        if (t->cfg->data.follow)
            strata_watchdog_pause(t->watchdog);
        else
            strata_watchdog_phase(t->watchdog, step, "data");
        strata_err e = strata_loader_poll(t->loader, step, t->cfg->data.follow ? 5.0 : -1.0, batch,
                                          &status, &waited);
        if (e.code) strata_comm_abort(t->comm, e.code, e.msg);
        *data_ms += waited;
        strata_watchdog_phase(t->watchdog, step, "step agreement");
        int flags = (strata_stop_requested() ? STRATA_AGREE_STOP : 0) |
                    (status == STRATA_LOADER_EXHAUSTED ? STRATA_AGREE_ERROR : 0) |
                    (status == STRATA_LOADER_WAITING ? AGREE_WAITING : 0);
        flags = strata_comm_agree(t->comm, flags);
        if (!(flags & AGREE_WAITING) || (flags & (STRATA_AGREE_STOP | STRATA_AGREE_ERROR)))
            return flags;
        if (!said++ && status == STRATA_LOADER_WAITING)
            fprintf(stderr, "strata: %s\n", strata_loader_wait_reason(t->loader));
    }
}

/* The loop proper; returns STRATA_ESTOPPED after a stop and its checkpoint. */
static strata_err run_loop(trainer *t)
{
    const strata_config *c = t->cfg;
    long step = t->st.step;
    if (step == 0 && c->n_evals > 0 && evaluate_all(t, 0)) return strata_ok();
    while (step < c->train.steps) {
        strata_batch *batch = NULL;
        double data_ms = 0;
        int flags = next_batch(t, step, &batch, &data_ms);
        if (flags & STRATA_AGREE_ERROR) {
            say(t,
                "the new-data stream is used up after step %ld (set [data] wrap or follow to go "
                "on)\n",
                step);
            break;
        }
        if (flags & STRATA_AGREE_STOP) return strata_errorf(STRATA_ESTOPPED, "stopped");
        build_groups(t, step);
        strata_watchdog_phase(t->watchdog, step, "forward/backward");
        step_stats s = train_step(t, batch);
        if (c->train.step_timeout < 0 && t->timed_steps > 0)
            strata_watchdog_set_timeout(t->watchdog,
                                        fmax(300.0, 20.0 * t->step_ms_sum / t->timed_steps / 1e3));
        s.data_ms = data_ms;
        step++;
        t->st.step = step;
        t->st.tokens_seen += (long)c->train.global_batch * t->T;
        if (s.skipped) {
            t->st.skipped_steps++;
            t->st.bad_in_a_row++;
        } else {
            t->st.bad_in_a_row = 0;
        }
        log_step(t, step, &s);
        if (t->st.bad_in_a_row >= c->train.max_bad_steps)
            return strata_errorf(STRATA_EFAIL,
                                 "%d non-finite steps in a row (last at step %ld): stopping; "
                                 "the last good checkpoint is kept (HINT: lower [train] lr)",
                                 t->st.bad_in_a_row, step);
        if (s.ms < 0) return strata_errorf(STRATA_ESTOPPED, "stopped");
        int want_save = t->rank == 0 && time_to_save(t, step) && !s.skipped;
        int agreed = strata_comm_agree(t->comm, want_save ? STRATA_AGREE_STOP : 0);
        if (c->log.eval_every > 0 && step % c->log.eval_every == 0 && step < c->train.steps &&
            c->n_evals > 0 && evaluate_all(t, step))
            return strata_errorf(STRATA_ESTOPPED, "stopped");
        if (agreed && step < c->train.steps) STRATA_TRY(save_checkpoint(t));
    }
    t->train_peak_rss = strata_comm_max_double(t->comm, strata_peak_rss_bytes());
    /* A resumed run with nothing left to do only confirms DONE. */
    if (t->last_saved_step == step) return write_done_marker(t, step);
    if (c->n_evals > 0 && evaluate_all(t, step)) return strata_errorf(STRATA_ESTOPPED, "stopped");
    STRATA_TRY(save_checkpoint(t));
    return write_done_marker(t, step);
}

strata_err strata_train_run(const strata_config *cfg, strata_comm *comm)
{
    trainer t;
    memset(&t, 0, sizeof t);
    strata_err e = strata_comm_agree_error(comm, setup(&t, cfg, comm));
    if (!e.code && cfg->train.step_timeout != 0)
        t.watchdog = strata_watchdog_start(
            comm, cfg->train.step_timeout > 0 ? cfg->train.step_timeout : 300.0);
    if (!e.code) {
        say(&t,
            "strata: %zu parameters, %d ranks x %d threads, global batch %d x %d tokens, %ld "
            "steps\n",
            strata_model_n_params(t.model), t.world, omp_get_max_threads(), cfg->train.global_batch,
            t.T, cfg->train.steps);
        print_memory(&t);
        e = run_loop(&t);
        if (e.code == STRATA_ESTOPPED) {
            say(&t, "stop requested (signal %d) at step %ld: saving a checkpoint\n",
                strata_stop_signal(), t.st.step);
            strata_err se = t.last_saved_step == t.st.step ? strata_ok() : save_checkpoint(&t);
            e = se.code ? se
                        : strata_errorf(STRATA_ESTOPPED,
                                        "stopped at step %ld after a checkpoint; "
                                        "run again with resume = auto to continue",
                                        t.st.step);
        }
    }
    strata_watchdog_stop(t.watchdog);
    if (t.train_peak_rss > 0)
        say(&t,
            "peak RSS while training: %.0f MiB (the largest rank; rank 0 gathers ZeRO's "
            "optimizer state to save)\n",
            t.train_peak_rss / (1 << 20));
    trainer_free(&t);
    return e;
}

strata_err strata_eval_run(const strata_config *cfg, strata_comm *comm, const char *ckpt_path)
{
    trainer t;
    memset(&t, 0, sizeof t);
    t.cfg = cfg, t.comm = comm;
    t.rank = strata_comm_rank(comm), t.world = strata_comm_size(comm);
    strata_config local = *cfg;
    snprintf(local.model.init, sizeof local.model.init, "%s", ckpt_path);
    local.train.l2sp = local.train.ewc = local.train.l1 = 0;
    t.cfg = &local;
    strata_ckpt_state st = {0};
    strata_err e = strata_comm_agree_error(comm, init_model(&t, &st));
    for (int i = 0; !e.code && i < cfg->n_evals; i++) {
        e = strata_evalset_open(&t.evals[i].set, cfg->evals[i].path, cfg->data.seq_len,
                                strata_model_get_shape(t.model)->vocab_size,
                                cfg->evals[i].max_samples);
        t.evals[i].baseline = NAN;
    }
    if (!e.code && cfg->n_evals == 0)
        e = strata_errorf(STRATA_EINPUT, "%s: no [eval.NAME] section to evaluate on", cfg->path);
    if (!e.code) {
        int mb = cfg->train.micro_batch;
        t.T = cfg->data.seq_len;
        t.inputs = malloc((size_t)mb * t.T * sizeof(uint32_t));
        t.targets = malloc((size_t)mb * t.T * sizeof(uint32_t));
        e = t.inputs && t.targets ? strata_model_reserve(t.model, mb, t.T)
                                  : strata_errorf(STRATA_EFAIL, "out of memory");
    }
    if (!e.code) {
        say(&t, "evaluating %s (step %ld)\n", ckpt_path, st.step);
        if (evaluate_all(&t, st.step)) e = strata_errorf(STRATA_ESTOPPED, "stopped");
    }
    strata_ckpt_state_free(&st);
    trainer_free(&t);
    return e;
}

/* Per-sequence squared gradients, summed into fisher (n_floats). */
static void accumulate_fisher(trainer *t, strata_evalset *set, long lo, long hi, float *fisher)
{
    int T = t->T;
    uint32_t *row = malloc((size_t)(T + 1) * sizeof(uint32_t));
    if (!row) strata_comm_abort(t->comm, 1, "out of memory");
    float *g = strata_model_grads(t->model);
    strata_backward_opts bo = {.loss_scale = 1.0f / T};
    for (long i = lo; i < hi; i++) {
        strata_err e = strata_evalset_read(set, i, 1, row);
        if (e.code) strata_comm_abort(t->comm, e.code, e.msg);
        split_rows(row, 1, T, t->inputs, t->targets);
        strata_model_zero_grad(t->model);
        strata_model_set_dropout(t->model, 0.0f, 0, 0, NULL);
        float loss;
        e = strata_model_forward_backward(t->model, t->inputs, t->targets, 1, T, NULL, &loss, &bo);
        if (e.code) strata_comm_abort(t->comm, e.code, e.msg);
#pragma omp parallel for schedule(static)
        for (size_t k = 0; k < t->n_floats; k++) fisher[k] += g[k] * g[k];
    }
    free(row);
}

strata_err strata_fisher_run(const strata_config *cfg, strata_comm *comm, const char *out_path,
                             long n_samples)
{
    trainer t;
    memset(&t, 0, sizeof t);
    t.cfg = cfg, t.comm = comm;
    t.rank = strata_comm_rank(comm), t.world = strata_comm_size(comm);
    strata_config local = *cfg;
    local.train.l2sp = local.train.ewc = local.train.l1 = 0;
    t.cfg = &local;
    const char *source = cfg->data.n_replay ? cfg->data.replay[0].path : cfg->data.new_path;
    strata_evalset *set = NULL;
    float *fisher = NULL;
    strata_err e = strata_comm_agree_error(comm, init_model(&t, NULL));
    if (!e.code)
        e = strata_evalset_open(&set, source, cfg->data.seq_len,
                                strata_model_get_shape(t.model)->vocab_size, n_samples);
    if (!e.code) {
        t.T = cfg->data.seq_len;
        t.inputs = malloc((size_t)t.T * sizeof(uint32_t));
        t.targets = malloc((size_t)t.T * sizeof(uint32_t));
        fisher = calloc(t.n_floats, sizeof(float));
        e = t.inputs && t.targets && fisher ? strata_model_reserve(t.model, 1, t.T)
                                            : strata_errorf(STRATA_EFAIL, "out of memory");
    }
    if (!e.code) {
        long n = strata_evalset_n_samples(set);
        accumulate_fisher(&t, set, n * t.rank / t.world, n * (t.rank + 1) / t.world, fisher);
        /* Sum across ranks in double, chunk by chunk, then average. */
        enum { CHUNK = 1 << 20 };
        double *buf = malloc(CHUNK * sizeof(double));
        if (!buf) strata_comm_abort(comm, 1, "out of memory");
        for (size_t lo = 0; lo < t.n_floats; lo += CHUNK) {
            size_t m = t.n_floats - lo < CHUNK ? t.n_floats - lo : CHUNK;
            for (size_t k = 0; k < m; k++) buf[k] = fisher[lo + k];
            strata_comm_sum_doubles(comm, buf, (int)m);
            for (size_t k = 0; k < m; k++) fisher[lo + k] = (float)(buf[k] / (double)n);
        }
        free(buf);
        if (t.rank == 0) {
            memcpy(strata_model_params(t.model), fisher, t.n_floats * sizeof(float));
            e = strata_ckpt_write(out_path, t.model, NULL, NULL, NULL);
            if (!e.code)
                say(&t, "wrote %s: diagonal Fisher over %ld sequences of %s\n", out_path, n,
                    source);
        }
        e = strata_comm_agree_error(comm, e);
    }
    if (set) strata_evalset_close(set);
    free(fisher);
    trainer_free(&t);
    return e;
}
