/* loader.c — this rank's samples of each global batch, read ahead.
 *
 * Two batch buffers: the one handed to the trainer (valid until its next
 * call) and the one the worker thread fills with the next step. The worker
 * is the only thread that calls HDF5 or touches the streams once the loader
 * is open (with prefetch off, the caller's thread does the same work in
 * place of it). Everything the two threads share sits under one mutex: the
 * buffers' states, the request, the stop flag, the wait message and the
 * pending fingerprint.
 */
#include "strata/loader.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "strata/sampler.h"
#include "strata/shard.h"
#include "strata/stream.h"

#define N_SOURCES   (1 + STRATA_SAMPLER_MAX_REPLAY)
#define CACHE_SLOTS 16 /* open shards kept per loader (each keeps ~32 MiB of chunks) */

enum { BUF_FREE, BUF_FILLING, BUF_READY };

typedef struct buffer {
    strata_batch b;
    int state;
    long step;
    int status; /* STRATA_LOADER_READY / EXHAUSTED / WAITING */
    strata_err err;
} buffer;

typedef struct cached_shard {
    int source, index;
    strata_shard *sh;
    uint64_t used;
} cached_shard;

/* Open shards, least recently used first out. */
typedef struct shard_cache {
    cached_shard c[CACHE_SLOTS];
    uint64_t tick;
} shard_cache;

typedef struct read_item {
    int source, shard, row;
    int64_t local;
} read_item;

struct strata_loader {
    strata_loader_config cfg;
    int n, T;
    strata_stream *src[N_SOURCES]; /* 0: new (NULL when every slot is replay) */
    strata_sampler sp;
    shard_cache cache;
    read_item *items;
    char *fp;         /* the caller's fingerprint */
    char *fp_pending; /* the worker's newer one, taken at the next get */

    /* waiting for new data (worker or inline) */
    long wait_step;
    double wait_since;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int have_thread, stop;
    buffer buf[2];
    int handed;   /* buffer the caller holds, -1 none */
    long request; /* step the worker should fill next, -1 none */
    char wait_msg[768];
    char wait_msg_out[768];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static struct timespec abs_time(double t)
{
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- open shards -------------------------------------------------------- */

static void cache_clear(shard_cache *c)
{
    for (int i = 0; i < CACHE_SLOTS; i++) {
        strata_shard_close(c->c[i].sh);
        c->c[i].sh = NULL;
    }
}

/* The open shard `index` of stream st (source `source`), opening it (and
 * closing the least recently used) on a miss. A shard that no longer
 * matches what the stream saw at open time is an error. */
static strata_err cache_get(shard_cache *c, const strata_stream *st, int source, int index,
                            strata_shard **out)
{
    int victim = 0;
    for (int i = 0; i < CACHE_SLOTS; i++) {
        cached_shard *cs = &c->c[i];
        if (cs->sh && cs->source == source && cs->index == index) {
            cs->used = ++c->tick;
            *out = cs->sh;
            return strata_ok();
        }
        if (!cs->sh || (c->c[victim].sh && cs->used < c->c[victim].used)) victim = i;
    }
    const strata_stream_shard *ss = strata_stream_shard_at(st, index);
    strata_shard *sh = NULL;
    STRATA_TRY(strata_shard_open(&sh, ss->path));
    const strata_shard_info *a = strata_shard_get_info(sh), *b = &ss->info;
    if (a->n_tokens != b->n_tokens || a->vocab_size != b->vocab_size) {
        strata_shard_close(sh);
        return strata_errorf(STRATA_EINPUT,
                             "%s: shard changed since the stream was opened (%" PRId64
                             " tokens, vocab_size %d; was %" PRId64 ", %d)",
                             ss->path, a->n_tokens, a->vocab_size, b->n_tokens, b->vocab_size);
    }
    cached_shard *cs = &c->c[victim];
    strata_shard_close(cs->sh);
    cs->sh = sh;
    cs->source = source;
    cs->index = index;
    cs->used = ++c->tick;
    *out = sh;
    return strata_ok();
}

/* Reads sample `sample` of stream st into row (T+1 tokens). */
static strata_err read_sample(shard_cache *c, const strata_stream *st, int source, int shard,
                              int64_t local, int T, uint32_t *row)
{
    strata_shard *sh = NULL;
    STRATA_TRY(cache_get(c, st, source, shard, &sh));
    return strata_shard_read(sh, local * T, (int64_t)T + 1, row);
}

/* ---- fingerprints ------------------------------------------------------- */

static char *stream_fp(const strata_stream *st)
{
    size_t n = st ? strata_stream_fingerprint(st, NULL, 0) : 0;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    s[0] = 0;
    if (st) strata_stream_fingerprint(st, s, n + 1);
    return s;
}

/* "new=a.h5:100,b.h5:200;replay1=c.h5:300" */
static char *build_fingerprint(strata_loader *l)
{
    char *parts[N_SOURCES] = {0};
    size_t total = 1;
    int nsrc = 1 + l->cfg.n_replay;
    for (int i = 0; i < nsrc; i++) {
        if (!(parts[i] = stream_fp(l->src[i]))) goto fail;
        total += strlen(parts[i]) + 16;
    }
    char *out = malloc(total);
    if (!out) goto fail;
    size_t m = 0;
    for (int i = 0; i < nsrc; i++) {
        if (i == 0)
            m += (size_t)snprintf(out + m, total - m, "new=%s", parts[i]);
        else
            m += (size_t)snprintf(out + m, total - m, ";replay%d=%s", i, parts[i]);
        free(parts[i]);
    }
    return out;
fail:
    for (int i = 0; i < nsrc; i++) free(parts[i]);
    return NULL;
}

/* Splits "k=v;k=v" at the i-th part; returns its length or -1. */
static int fp_part(const char *fp, int i, const char **part)
{
    const char *p = fp;
    for (int k = 0; k < i; k++) {
        p = strchr(p, ';');
        if (!p) return -1;
        p++;
    }
    const char *end = strchr(p, ';');
    *part = p;
    return end ? (int)(end - p) : (int)strlen(p);
}

strata_err strata_loader_check_fingerprint(const strata_loader *l, const char *saved)
{
    const char *cur = l->fp;
    for (int i = 0;; i++) {
        const char *a = NULL, *b = NULL;
        int na = fp_part(saved, i, &a), nb = fp_part(cur, i, &b);
        if (na < 0 && nb < 0) return strata_ok();
        if (na < 0 || nb < 0)
            return strata_errorf(STRATA_EINPUT,
                                 "data streams differ from the checkpoint's: %d sources then, "
                                 "%d now",
                                 na < 0 ? i : i + 1, nb < 0 ? i : i + 1);
        int same = na == nb && memcmp(a, b, (size_t)na) == 0;
        /* The new stream may have grown at its end: "new=x" -> "new=x,y". */
        int grown = i == 0 && nb > na && memcmp(a, b, (size_t)na) == 0 &&
                    (a[na - 1] == '=' || b[na] == ',');
        if (!same && !grown) {
            const char *eq = memchr(b, '=', (size_t)nb);
            int kn = eq ? (int)(eq - b) : nb;
            return strata_errorf(STRATA_EINPUT,
                                 "data stream '%.*s' differs from the checkpoint's: was '%.*s', "
                                 "now '%.*s' (HINT: shards may only be appended to the new "
                                 "stream)",
                                 kn, b, na > 200 ? 200 : na, a, nb > 200 ? 200 : nb, b);
        }
    }
}

/* ---- filling one step --------------------------------------------------- */

static int cmp_item(const void *pa, const void *pb)
{
    const read_item *a = pa, *b = pb;
    if (a->source != b->source) return a->source < b->source ? -1 : 1;
    if (a->shard != b->shard) return a->shard < b->shard ? -1 : 1;
    if (a->local != b->local) return a->local < b->local ? -1 : 1;
    return a->row - b->row;
}

/* Waits (refreshing the new stream) until step is available, the deadline
 * passes (WAITING), follow times out (EXHAUSTED) or the loader stops. */
static strata_err await_step(strata_loader *l, long step, double deadline, int *status)
{
    double poll = l->cfg.follow_poll_s > 0 ? l->cfg.follow_poll_s : 2.0;
    for (;;) {
        int st = strata_sampler_step_status(&l->sp, step);
        if (st == STRATA_SAMPLE_OK) {
            *status = STRATA_LOADER_READY;
            return strata_ok();
        }
        if (st == STRATA_SAMPLE_END) {
            *status = STRATA_LOADER_EXHAUSTED;
            return strata_ok();
        }
        double t = now_s();
        if (l->wait_step != step) {
            l->wait_step = step;
            l->wait_since = t;
        }
        int added = 0;
        STRATA_TRY(strata_stream_refresh(l->src[0], &added));
        if (added) {
            l->sp.new_samples = strata_stream_n_samples(l->src[0]);
            char *fp = build_fingerprint(l);
            pthread_mutex_lock(&l->mu);
            free(l->fp_pending);
            l->fp_pending = fp;
            pthread_mutex_unlock(&l->mu);
            continue;
        }
        int64_t per_step = l->sp.global_batch - l->sp.replay_slots;
        int64_t usable = l->sp.new_samples / l->sp.window * l->sp.window;
        pthread_mutex_lock(&l->mu);
        snprintf(l->wait_msg, sizeof l->wait_msg,
                 "waiting for new shards in %s: step %ld needs %" PRId64 " new samples, %" PRId64
                 " usable (whole windows of %" PRId64 ")",
                 l->cfg.new_path, step, ((int64_t)step + 1) * per_step, usable, l->sp.window);
        pthread_mutex_unlock(&l->mu);
        if (l->cfg.follow_timeout_s > 0 && t - l->wait_since >= l->cfg.follow_timeout_s) {
            *status = STRATA_LOADER_EXHAUSTED;
            return strata_ok();
        }
        if (t >= deadline) {
            *status = STRATA_LOADER_WAITING;
            return strata_ok();
        }
        double until = t + poll < deadline ? t + poll : deadline;
        if (l->cfg.follow_timeout_s > 0 && l->wait_since + l->cfg.follow_timeout_s < until)
            until = l->wait_since + l->cfg.follow_timeout_s;
        /* Sleep until the next re-read; wake early to stop, or when the
         * caller asked for another step (a resume) instead of this one. */
        struct timespec ts = abs_time(until);
        pthread_mutex_lock(&l->mu);
        int cancel = 0;
        while (!(cancel = l->stop || (l->request >= 0 && l->request != step)) && now_s() < until)
            if (pthread_cond_timedwait(&l->cv, &l->mu, &ts) == ETIMEDOUT) break;
        pthread_mutex_unlock(&l->mu);
        if (cancel) {
            *status = STRATA_LOADER_WAITING;
            return strata_ok();
        }
    }
}

/* Fills buffer b with step (or sets its status). No lock held. */
static void fill_step(strata_loader *l, buffer *b, long step, double deadline)
{
    b->err = strata_ok();
    b->status = STRATA_LOADER_READY;
    b->err = await_step(l, step, deadline, &b->status);
    if (b->err.code || b->status != STRATA_LOADER_READY) return;
    pthread_mutex_lock(&l->mu);
    l->wait_msg[0] = 0;
    pthread_mutex_unlock(&l->mu);
    l->wait_step = -1;

    int T = l->T, row_len = T + 1;
    for (int r = 0; r < l->n; r++) {
        strata_sample_ref ref;
        int j = l->cfg.slot_begin + r;
        if (strata_sampler_slot(&l->sp, step, j, &ref) != STRATA_SAMPLE_OK) {
            b->err =
                strata_errorf(STRATA_EFAIL, "loader: slot %d of step %ld has no sample", j, step);
            return;
        }
        read_item *it = &l->items[r];
        it->source = ref.source;
        it->row = r;
        it->shard = strata_stream_locate(l->src[ref.source], ref.index, &it->local);
        b->b.is_replay[r] = ref.source != 0;
        b->b.sample_id[r] = strata_sample_id(&ref);
    }
    /* Read in file order: neighbouring samples share chunks in the cache. */
    qsort(l->items, (size_t)l->n, sizeof *l->items, cmp_item);
    for (int i = 0; i < l->n; i++) {
        read_item *it = &l->items[i];
        b->err = read_sample(&l->cache, l->src[it->source], it->source, it->shard, it->local, T,
                             b->b.tokens + (size_t)it->row * (size_t)row_len);
        if (b->err.code) return;
    }
    b->b.step = step;
}

static int free_buffer(const strata_loader *l)
{
    for (int i = 0; i < 2; i++)
        if (l->buf[i].state == BUF_FREE && i != l->handed) return i;
    return -1;
}

static void *worker_main(void *arg)
{
    strata_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && (l->request < 0 || free_buffer(l) < 0))
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->stop) break;
        int i = free_buffer(l);
        long step = l->request;
        l->request = -1;
        l->buf[i].state = BUF_FILLING;
        l->buf[i].step = step;
        pthread_mutex_unlock(&l->mu);
        fill_step(l, &l->buf[i], step, INFINITY);
        pthread_mutex_lock(&l->mu);
        l->buf[i].state = BUF_READY;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---- open / get / close ------------------------------------------------- */

static strata_err check_config(const strata_loader_config *c, int R)
{
    if (c->seq_len < 1) return strata_errorf(STRATA_EINPUT, "[data] seq_len %d < 1", c->seq_len);
    if (c->vocab_size < 1)
        return strata_errorf(STRATA_EINPUT, "[model] vocab_size %d < 1", c->vocab_size);
    if (c->global_batch < 1)
        return strata_errorf(STRATA_EINPUT, "[train] global_batch %d < 1", c->global_batch);
    if (c->slot_begin < 0 || c->slot_end < c->slot_begin || c->slot_end > c->global_batch)
        return strata_errorf(STRATA_EFAIL, "loader: slots [%d, %d) outside a batch of %d",
                             c->slot_begin, c->slot_end, c->global_batch);
    if (!(c->replay_ratio >= 0 && c->replay_ratio <= 1))
        return strata_errorf(STRATA_EINPUT, "[data] replay_ratio %g outside [0, 1]",
                             c->replay_ratio);
    if (c->n_replay < 0 || c->n_replay > STRATA_SAMPLER_MAX_REPLAY)
        return strata_errorf(STRATA_EINPUT, "[data] replay: %d sources, at most %d", c->n_replay,
                             STRATA_SAMPLER_MAX_REPLAY);
    if (R > 0 && c->n_replay == 0)
        return strata_errorf(STRATA_EINPUT,
                             "[data] replay_ratio %g gives %d replay slots but no replay source "
                             "is set",
                             c->replay_ratio, R);
    if (R < c->global_batch && !c->new_path[0])
        return strata_errorf(STRATA_EINPUT, "[data] new is not set");
    if (c->follow && c->wrap)
        return strata_errorf(STRATA_EINPUT,
                             "[data] follow and wrap exclude each other (follow waits for new "
                             "shards, wrap starts the stream over)");
    if (c->shuffle_window < 0)
        return strata_errorf(STRATA_EINPUT, "[data] shuffle_window %d < 0", c->shuffle_window);
    return strata_ok();
}

static strata_err open_streams(strata_loader *l, int R)
{
    const strata_loader_config *c = &l->cfg;
    strata_stream_opts o = {.seq_len = c->seq_len, .max_vocab = c->vocab_size};
    if (c->new_path[0]) {
        o.allow_empty = c->follow;
        STRATA_TRY(strata_stream_open(&l->src[0], c->new_path, &o));
        if (strata_stream_n_samples(l->src[0]) == 0 && !c->follow && R < c->global_batch)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: no samples at seq_len %d (every shard has fewer than %d "
                                 "tokens)",
                                 c->new_path, c->seq_len, c->seq_len + 1);
    }
    o.allow_empty = 0;
    for (int i = 0; i < c->n_replay; i++) {
        STRATA_TRY(strata_stream_open(&l->src[1 + i], c->replay[i].path, &o));
        if (strata_stream_n_samples(l->src[1 + i]) == 0 && c->replay[i].weight > 0 && R > 0)
            return strata_errorf(STRATA_EINPUT, "%s: no samples at seq_len %d", c->replay[i].path,
                                 c->seq_len);
    }
    /* One tokenizer for everything the model sees. */
    const strata_shard_info *first = NULL;
    const char *first_path = NULL;
    for (int i = 0; i < 1 + c->n_replay; i++) {
        const strata_shard_info *in = l->src[i] ? strata_stream_info(l->src[i]) : NULL;
        if (!in) continue;
        if (!first) {
            first = in;
            first_path = strata_stream_path(l->src[i]);
        } else if (strcmp(in->tokenizer, first->tokenizer) != 0 ||
                   in->vocab_size != first->vocab_size) {
            return strata_errorf(STRATA_EINPUT,
                                 "%s: tokenizer %s with vocab_size %d, but %s has tokenizer %s "
                                 "with vocab_size %d (one model reads one tokenizer's ids)",
                                 strata_stream_path(l->src[i]), in->tokenizer, in->vocab_size,
                                 first_path, first->tokenizer, first->vocab_size);
        }
        if (c->tokenizer_hash[0] && strcmp(in->tokenizer_hash, c->tokenizer_hash) != 0)
            return strata_errorf(
                STRATA_EINPUT,
                "%s: packed with tokenizer %.12s%s, but the model's is %.12s... (HINT: pack the "
                "data with the model's own tokenizer.json)",
                strata_stream_path(l->src[i]), in->tokenizer_hash[0] ? in->tokenizer_hash : "",
                in->tokenizer_hash[0] ? "..." : in->tokenizer, c->tokenizer_hash);
    }
    return strata_ok();
}

strata_err strata_loader_open(strata_loader **out, const strata_loader_config *cfg)
{
    *out = NULL;
    int R = strata_sampler_replay_slots(cfg->replay_ratio, cfg->global_batch);
    STRATA_TRY(check_config(cfg, R));
    strata_loader *l = calloc(1, sizeof *l);
    if (!l) return strata_errorf(STRATA_ENOMEM, "loader: out of memory");
    l->cfg = *cfg;
    l->n = cfg->slot_end - cfg->slot_begin;
    l->T = cfg->seq_len;
    l->handed = -1;
    l->request = -1;
    l->wait_step = -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&l->mu, NULL);

    strata_err e = open_streams(l, R);
    if (!e.code) {
        strata_sampler *sp = &l->sp;
        sp->seed = cfg->seed;
        sp->global_batch = cfg->global_batch;
        sp->replay_slots = R;
        sp->window = cfg->shuffle_window > 0 ? cfg->shuffle_window : STRATA_SAMPLER_WINDOW;
        sp->new_samples = l->src[0] ? strata_stream_n_samples(l->src[0]) : 0;
        sp->new_final = !cfg->follow;
        sp->wrap = cfg->wrap;
        sp->n_replay = R > 0 ? cfg->n_replay : 0;
        for (int i = 0; i < sp->n_replay; i++) {
            sp->replay_samples[i] = strata_stream_n_samples(l->src[1 + i]);
            sp->replay_weight[i] = cfg->replay[i].weight;
        }
        e = strata_sampler_check(sp);
    }
    if (!e.code && !(l->fp = build_fingerprint(l)))
        e = strata_errorf(STRATA_ENOMEM, "loader: out of memory");
    size_t rows = (size_t)(l->n > 0 ? l->n : 1);
    for (int i = 0; i < 2 && !e.code; i++) {
        strata_batch *b = &l->buf[i].b;
        b->n = l->n;
        b->T = l->T;
        b->tokens = calloc(rows * (size_t)(l->T + 1), sizeof *b->tokens);
        b->is_replay = calloc(rows, 1);
        b->sample_id = calloc(rows, sizeof *b->sample_id);
        if (!b->tokens || !b->is_replay || !b->sample_id)
            e = strata_errorf(STRATA_ENOMEM, "loader: out of memory for %zu x %d tokens", rows,
                              l->T + 1);
    }
    if (!e.code && !(l->items = calloc(rows, sizeof *l->items)))
        e = strata_errorf(STRATA_ENOMEM, "loader: out of memory");
    if (!e.code && cfg->prefetch) {
        int rc = pthread_create(&l->thread, NULL, worker_main, l);
        if (rc)
            e = strata_errorf(STRATA_EFAIL, "loader: cannot start thread: %s", strerror(rc));
        else
            l->have_thread = 1;
    }
    if (e.code) {
        strata_loader_close(l);
        return e;
    }
    *out = l;
    return strata_ok();
}

static int ready_buffer(const strata_loader *l, long step)
{
    for (int i = 0; i < 2; i++)
        if (l->buf[i].state == BUF_READY && l->buf[i].step == step) return i;
    return -1;
}

strata_err strata_loader_poll(strata_loader *l, long step, double timeout_s, strata_batch **batch,
                              int *status, double *wait_ms)
{
    double t0 = now_s(), deadline = timeout_s < 0 ? INFINITY : t0 + timeout_s;
    *batch = NULL;
    *status = STRATA_LOADER_WAITING;
    if (wait_ms) *wait_ms = 0;
    if (step < 0) return strata_errorf(STRATA_EFAIL, "loader: step %ld < 0", step);
    int i = -1;
    pthread_mutex_lock(&l->mu);
    if (l->fp_pending) {
        free(l->fp);
        l->fp = l->fp_pending;
        l->fp_pending = NULL;
    }
    if (l->handed >= 0) {
        l->buf[l->handed].state = BUF_FREE;
        l->handed = -1;
    }
    if (!l->have_thread) {
        pthread_mutex_unlock(&l->mu);
        buffer *b = &l->buf[0];
        fill_step(l, b, step, deadline);
        pthread_mutex_lock(&l->mu);
        if (b->err.code || b->status != STRATA_LOADER_WAITING) i = 0;
    } else {
        for (;;) {
            if ((i = ready_buffer(l, step)) >= 0) break;
            /* Drop read-ahead for other steps (a resume, or a repeat). */
            int filling = 0;
            for (int k = 0; k < 2; k++) {
                if (l->buf[k].state == BUF_READY) l->buf[k].state = BUF_FREE;
                if (l->buf[k].state == BUF_FILLING && l->buf[k].step == step) filling = 1;
            }
            if (!filling && l->request != step) {
                l->request = step;
                pthread_cond_broadcast(&l->cv);
            }
            if (now_s() >= deadline) break;
            if (isinf(deadline)) {
                pthread_cond_wait(&l->cv, &l->mu);
            } else {
                struct timespec ts = abs_time(deadline);
                pthread_cond_timedwait(&l->cv, &l->mu, &ts);
            }
        }
    }
    strata_err e = strata_ok();
    if (i >= 0) {
        buffer *b = &l->buf[i];
        l->handed = i;
        e = b->err;
        *status = b->status;
        if (!e.code && b->status == STRATA_LOADER_READY) {
            *batch = &b->b;
            if (l->have_thread) { /* read ahead the next step */
                l->request = step + 1;
                pthread_cond_broadcast(&l->cv);
            }
        }
        if (b->status == STRATA_LOADER_WAITING) *status = STRATA_LOADER_WAITING;
    }
    snprintf(l->wait_msg_out, sizeof l->wait_msg_out, "%s",
             *status == STRATA_LOADER_WAITING ? l->wait_msg : "");
    pthread_mutex_unlock(&l->mu);
    if (wait_ms) *wait_ms = 1e3 * (now_s() - t0);
    return e;
}

strata_err strata_loader_get(strata_loader *l, long step, strata_batch **batch, int *exhausted,
                             double *wait_ms)
{
    int status;
    *exhausted = 0;
    STRATA_TRY(strata_loader_poll(l, step, -1, batch, &status, wait_ms));
    if (status != STRATA_LOADER_READY) *exhausted = 1;
    return strata_ok();
}

const char *strata_loader_wait_reason(strata_loader *l) { return l->wait_msg_out; }

long strata_loader_steps_available(const strata_loader *l)
{
    if (l->cfg.follow) return -1;
    int64_t n = strata_sampler_steps_available(&l->sp);
    return n > (int64_t)LONG_MAX ? LONG_MAX : (long)n;
}

const char *strata_loader_fingerprint(const strata_loader *l) { return l->fp ? l->fp : ""; }

void strata_loader_close(strata_loader *l)
{
    if (!l) return;
    if (l->have_thread) {
        pthread_mutex_lock(&l->mu);
        l->stop = 1;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
    }
    cache_clear(&l->cache);
    for (int i = 0; i < N_SOURCES; i++) strata_stream_close(l->src[i]);
    for (int i = 0; i < 2; i++) {
        free(l->buf[i].b.tokens);
        free(l->buf[i].b.is_replay);
        free(l->buf[i].b.sample_id);
    }
    free(l->items);
    free(l->fp);
    free(l->fp_pending);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* ---- held-out sets ------------------------------------------------------ */

struct strata_evalset {
    strata_stream *st;
    shard_cache cache;
    long n;
    int T;
};

strata_err strata_evalset_open(strata_evalset **out, const char *path, int seq_len, int vocab_size,
                               long max_samples)
{
    *out = NULL;
    strata_evalset *e = calloc(1, sizeof *e);
    if (!e) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    strata_stream_opts o = {.seq_len = seq_len, .max_vocab = vocab_size};
    strata_err err = strata_stream_open(&e->st, path, &o);
    if (!err.code) {
        int64_t n = strata_stream_n_samples(e->st);
        if (n == 0)
            err = strata_errorf(STRATA_EINPUT, "%s: no samples at seq_len %d", path, seq_len);
        if (max_samples > 0 && n > max_samples) n = max_samples;
        e->n = n > LONG_MAX ? LONG_MAX : (long)n;
        e->T = seq_len;
    }
    if (err.code) {
        strata_evalset_close(e);
        return err;
    }
    *out = e;
    return strata_ok();
}

long strata_evalset_n_samples(const strata_evalset *e) { return e->n; }

strata_err strata_evalset_read(strata_evalset *e, long first, int n, uint32_t *tokens)
{
    if (first < 0 || n < 0 || first > e->n || n > e->n - first)
        return strata_errorf(STRATA_EFAIL, "%s: samples [%ld, %ld) outside 0 .. %ld",
                             strata_stream_path(e->st), first, first + n, e->n);
    for (int i = 0; i < n; i++) {
        int64_t local;
        int sh = strata_stream_locate(e->st, first + i, &local);
        STRATA_TRY(read_sample(&e->cache, e->st, 0, sh, local, e->T,
                               tokens + (size_t)i * (size_t)(e->T + 1)));
    }
    return strata_ok();
}

void strata_evalset_close(strata_evalset *e)
{
    if (!e) return;
    cache_clear(&e->cache);
    strata_stream_close(e->st);
    free(e);
}
