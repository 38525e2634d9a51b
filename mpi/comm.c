/* MPI for strata: init, agreement, and bucketed gradient reduction. */
#include "strata/comm.h"

#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "strata/log.h"
#include "strata/tree_sum.h"

struct strata_comm {
    int rank, size, local_size;
    int serialized; /* MPI_THREAD_SERIALIZED: a progress thread may call MPI */
    char host[MPI_MAX_PROCESSOR_NAME];
};

/* Every MPI call goes through here: a failure ends the job with its text. */
static void check(strata_comm *c, int rc, const char *what)
{
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING], msg[MPI_MAX_ERROR_STRING + 128];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    snprintf(msg, sizeof msg, "%s failed: %s", what, text);
    strata_comm_abort(c, 1, msg);
}

strata_err strata_comm_init(int *argc, char ***argv, strata_comm **out)
{
    /* SERIALIZED lets the gradient progress thread call MPI while the main
     * thread computes; the two never call MPI at the same time. */
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
        return strata_errorf(STRATA_EFAIL, "MPI_Init_thread failed");
    if (provided < MPI_THREAD_FUNNELED)
        return strata_errorf(STRATA_EFAIL, "MPI provides no MPI_THREAD_FUNNELED support");
    /* Errors come back as return codes, which check() turns into an abort
     * with a message, instead of MPI's default silent abort. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    strata_comm *c = calloc(1, sizeof *c);
    if (!c) return strata_errorf(STRATA_ENOMEM, "out of memory");
    c->serialized = provided >= MPI_THREAD_SERIALIZED;
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    int len = 0;
    MPI_Get_processor_name(c->host, &len);
    MPI_Comm node;
    c->local_size = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_size(node, &c->local_size);
        MPI_Comm_free(&node);
    }
    *out = c;
    return strata_ok();
}

void strata_comm_finalize(strata_comm *c)
{
    free(c);
    MPI_Finalize();
}

int strata_comm_rank(const strata_comm *c) { return c->rank; }
int strata_comm_size(const strata_comm *c) { return c->size; }
const char *strata_comm_host(const strata_comm *c) { return c->host; }
int strata_comm_local_size(const strata_comm *c) { return c->local_size; }

strata_err strata_comm_agree_error(strata_comm *c, strata_err e)
{
    if (c->size == 1) return e;
    int codes[2] = {e.code, c->rank == 0 ? e.code : 0}, all[2];
    check(c, MPI_Allreduce(codes, all, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "error agreement");
    if (!all[0]) return e;
    if (!e.code || (c->rank != 0 && all[1])) {
        e.msg[0] = 0;
    } else if (c->rank != 0) {
        char msg[sizeof e.msg];
        snprintf(msg, sizeof msg, "rank %d (%s): %s", c->rank, c->host, e.msg);
        memcpy(e.msg, msg, sizeof msg);
    }
    e.code = all[0];
    return e;
}

_Noreturn void strata_comm_abort(strata_comm *c, int code, const char *msg)
{
    if (c && c->size > 1)
        strata_log(STRATA_LOG_FATAL, "rank %d (%s): %s", c->rank, c->host, msg);
    else
        strata_log(STRATA_LOG_FATAL, "%s", msg);
    if (c && c->size > 1) MPI_Abort(MPI_COMM_WORLD, code);
    _exit(code);
}

strata_err strata_comm_local_error(strata_comm *c, strata_err e)
{
    if (e.code && c->size > 1) strata_comm_abort(c, e.code, e.msg);
    return e;
}

int strata_comm_agree(strata_comm *c, int flags)
{
    int all = flags;
    if (c->size > 1)
        check(c, MPI_Allreduce(&flags, &all, 1, MPI_INT, MPI_BOR, MPI_COMM_WORLD), "agreement");
    return all;
}

void strata_comm_sum_doubles(strata_comm *c, double *x, int n)
{
    if (c->size > 1)
        check(c, MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "sum");
}

double strata_comm_max_double(strata_comm *c, double x)
{
    double m = x;
    if (c->size > 1) check(c, MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "max");
    return m;
}

/* Shards are aligned to 16 floats so every rank's part starts on a cache line. */
void strata_comm_shard(const strata_comm *c, size_t n_floats, int rank, size_t *begin, size_t *end)
{
    size_t units = (n_floats + 15) / 16, W = (size_t)c->size;
    size_t b = units * rank / W * 16, e = units * (rank + 1) / W * 16;
    *begin = b < n_floats ? b : n_floats;
    *end = e < n_floats ? e : n_floats;
}

static void range_counts(strata_comm *c, size_t n_floats, int *counts, int *displs)
{
    for (int r = 0; r < c->size; r++) {
        size_t b, e;
        strata_comm_shard(c, n_floats, r, &b, &e);
        if (e - b > (size_t)1 << 30)
            strata_comm_abort(c, 1, "shard larger than 2^30 floats: use more ranks");
        counts[r] = (int)(e - b);
        displs[r] = (int)b;
    }
}

void strata_comm_gather_ranges(strata_comm *c, float *buf, size_t n_floats)
{
    if (c->size == 1) return;
    int *counts = malloc(c->size * sizeof(int)), *displs = malloc(c->size * sizeof(int));
    if (!counts || !displs) strata_comm_abort(c, 1, "out of memory");
    range_counts(c, n_floats, counts, displs);
    if (c->rank == 0)
        check(c,
              MPI_Gatherv(MPI_IN_PLACE, 0, MPI_FLOAT, buf, counts, displs, MPI_FLOAT, 0,
                          MPI_COMM_WORLD),
              "gather");
    else
        check(c,
              MPI_Gatherv(buf + displs[c->rank], counts[c->rank], MPI_FLOAT, NULL, NULL, NULL,
                          MPI_FLOAT, 0, MPI_COMM_WORLD),
              "gather");
    free(counts);
    free(displs);
}

/* ---- gradient synchronisation ---------------------------------------- */

/* The sum of the ranks' gradients is formed in one fixed order, a
 * left-complete binary tree over ranks (split at the largest power of two
 * below the count), and never by MPI's own reduction, whose order depends
 * on the algorithm Open MPI picks for the message size and transport. Each
 * bucket goes in two phases: an all-to-all hands rank r every rank's part
 * of its shard of the bucket, rank r adds those W parts along the tree, and
 * (without ZeRO) an all-gather returns the sums to everyone. That moves as
 * many bytes as a ring all-reduce, and the trainer sums micro-batches along
 * the same tree (tree_sum.h, the one implementation of it), so a run's gradients, and so its
 * parameters, come out bitwise the same on any number of ranks whenever the micro-batches per rank
 * are a power of two (one, typically). */

/* Non-blocking collectives must start in the same order on every rank, but
 * ranks see the first phase end at different moments. So each phase has a
 * communicator of its own, and second phases start strictly in bucket
 * order: a bucket whose first phase ended early waits as SCATTERED. */
enum { BUCKET_IDLE, BUCKET_SCATTERING, BUCKET_SCATTERED, BUCKET_GATHERING, BUCKET_DONE };

typedef struct bucket {
    size_t lo, hi; /* float range of the gradient buffer */
    int state;
    MPI_Request req;
    int *counts, *displs; /* each rank's shard part of the bucket, offsets from lo */
    int *recv_counts, *recv_displs;
    float *parts; /* W x counts[rank]: every rank's part of this rank's share */
} bucket;

/* With a progress thread, backward only records how far the gradients are
 * final (ready_from) and the thread starts and drives the buckets, polling
 * every PROGRESS_POLL_US while some are in flight; between steps it sleeps
 * on the condition variable. The main thread makes no MPI call from the
 * first ready() to the end of finish(), so MPI_THREAD_SERIALIZED holds. */
#define PROGRESS_POLL_US 50

typedef struct progress_thread {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake, done_cond;
    size_t ready_from; /* grads[ready_from, n) are final; n_floats: none */
    int finishing, done, quit;
} progress_thread;

struct strata_grad_sync {
    strata_comm *comm;
    float *grads;
    size_t n_floats;
    int zero;
    size_t shard_begin, shard_end;
    bucket *buckets; /* buckets[0] is the end of the buffer */
    int n_buckets;
    int next_reduce; /* buckets before this one have been reduced */
    MPI_Comm scatter_comm, gather_comm;
    double first_start;
    progress_thread *progress; /* NULL: driven by MPI_Test from backward */
};

static strata_err init_bucket(strata_grad_sync *g, bucket *b)
{
    strata_comm *c = g->comm;
    int W = c->size;
    b->counts = calloc(W, sizeof(int)), b->displs = calloc(W, sizeof(int));
    b->recv_counts = calloc(W, sizeof(int)), b->recv_displs = calloc(W, sizeof(int));
    if (!b->counts || !b->displs || !b->recv_counts || !b->recv_displs)
        return strata_errorf(STRATA_ENOMEM, "out of memory");
    for (int r = 0; r < W; r++) {
        size_t sb, se;
        strata_comm_shard(c, g->n_floats, r, &sb, &se);
        size_t lo = b->lo > sb ? b->lo : sb, hi = b->hi < se ? b->hi : se;
        b->counts[r] = hi > lo ? (int)(hi - lo) : 0;
        b->displs[r] = hi > lo ? (int)(lo - b->lo) : 0;
    }
    int mine = b->counts[c->rank];
    for (int r = 0; r < W; r++) b->recv_counts[r] = mine, b->recv_displs[r] = r * mine;
    b->parts = malloc(((size_t)W * mine + 1) * sizeof(float));
    return b->parts ? strata_ok() : strata_errorf(STRATA_ENOMEM, "out of memory");
}

static strata_err start_progress_thread(strata_grad_sync *g);

strata_err strata_grad_sync_create(strata_grad_sync **out, strata_comm *c, float *grads,
                                   size_t n_floats, size_t bucket_bytes, int zero,
                                   strata_comm_progress progress)
{
    strata_grad_sync *g = calloc(1, sizeof *g);
    if (!g) return strata_errorf(STRATA_ENOMEM, "out of memory");
    g->comm = c, g->grads = grads, g->n_floats = n_floats, g->zero = zero && c->size > 1;
    strata_comm_shard(c, n_floats, c->rank, &g->shard_begin, &g->shard_end);
    if (!g->zero) g->shard_begin = 0, g->shard_end = n_floats;
    *out = g;
    if (c->size == 1) return strata_ok();
    size_t per = bucket_bytes / sizeof(float);
    if (per < 1024) per = 1024;
    if (per > (size_t)1 << 30) per = (size_t)1 << 30;
    g->n_buckets = (int)((n_floats + per - 1) / per);
    g->buckets = calloc(g->n_buckets, sizeof *g->buckets);
    if (!g->buckets) return strata_errorf(STRATA_ENOMEM, "out of memory");
    check(c, MPI_Comm_dup(MPI_COMM_WORLD, &g->scatter_comm), "communicator duplication");
    check(c, MPI_Comm_dup(MPI_COMM_WORLD, &g->gather_comm), "communicator duplication");
    for (int i = 0; i < g->n_buckets; i++) {
        bucket *b = &g->buckets[i];
        b->hi = n_floats - (size_t)i * per;
        b->lo = b->hi > per ? b->hi - per : 0;
        STRATA_TRY(init_bucket(g, b));
    }
    if (progress == STRATA_PROGRESS_THREAD && c->serialized) return start_progress_thread(g);
    return strata_ok();
}

static void stop_progress_thread(strata_grad_sync *g);

void strata_grad_sync_free(strata_grad_sync *g)
{
    if (!g) return;
    stop_progress_thread(g);
    for (int i = 0; i < g->n_buckets; i++) {
        bucket *b = &g->buckets[i];
        free(b->counts), free(b->displs), free(b->recv_counts), free(b->recv_displs);
        free(b->parts);
    }
    if (g->buckets) {
        MPI_Comm_free(&g->scatter_comm);
        MPI_Comm_free(&g->gather_comm);
    }
    free(g->buckets);
    free(g);
}

static void start_bucket(strata_grad_sync *g, bucket *b)
{
    if (!g->first_start) g->first_start = MPI_Wtime();
    b->state = BUCKET_SCATTERING;
    check(g->comm,
          MPI_Ialltoallv(g->grads + b->lo, b->counts, b->displs, MPI_FLOAT, b->parts,
                         b->recv_counts, b->recv_displs, MPI_FLOAT, g->scatter_comm, &b->req),
          "gradient all-to-all");
}

/* Phase one done: add the parts along the tree, then share the sums. */
static void reduce_bucket(strata_grad_sync *g, bucket *b)
{
    strata_comm *c = g->comm;
    int mine = b->counts[c->rank];
    strata_tree_sum_parts(b->parts, (size_t)mine, c->size, !g->progress);
    memcpy(g->grads + b->lo + b->displs[c->rank], b->parts, (size_t)mine * sizeof(float));
    if (g->zero) {
        b->state = BUCKET_DONE;
        return;
    }
    b->state = BUCKET_GATHERING;
    check(c,
          MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, g->grads + b->lo, b->counts, b->displs,
                          MPI_FLOAT, g->gather_comm, &b->req),
          "gradient all-gather");
}

static int request_done(strata_grad_sync *g, bucket *b, int block)
{
    int flag = 1;
    if (block)
        check(g->comm, MPI_Wait(&b->req, MPI_STATUS_IGNORE), "gradient reduction");
    else
        check(g->comm, MPI_Test(&b->req, &flag, MPI_STATUS_IGNORE), "gradient reduction");
    return flag;
}

/* Drives every bucket in flight; with block, until all are done. */
static void advance_all(strata_grad_sync *g, int block)
{
    for (int i = 0; i < g->n_buckets; i++) {
        bucket *b = &g->buckets[i];
        if (b->state == BUCKET_SCATTERING && request_done(g, b, block)) b->state = BUCKET_SCATTERED;
        if (b->state == BUCKET_SCATTERED && i == g->next_reduce) {
            reduce_bucket(g, b);
            g->next_reduce++;
        }
        if (b->state == BUCKET_GATHERING && request_done(g, b, block)) b->state = BUCKET_DONE;
        if (!block && b->state == BUCKET_IDLE) break; /* later buckets are not started yet */
    }
}

/* Starts the buckets inside grads[ready_from, n) and drives those in flight. */
static void drive(strata_grad_sync *g, size_t ready_from)
{
    for (int i = 0; i < g->n_buckets; i++)
        if (g->buckets[i].state == BUCKET_IDLE && g->buckets[i].lo >= ready_from)
            start_bucket(g, &g->buckets[i]);
    advance_all(g, 0);
}

static int in_flight(const strata_grad_sync *g)
{
    for (int i = 0; i < g->n_buckets; i++)
        if (g->buckets[i].state != BUCKET_IDLE && g->buckets[i].state != BUCKET_DONE) return 1;
    return 0;
}

/* Starts what is left and waits for every bucket, then makes them idle. */
static void complete_all(strata_grad_sync *g)
{
    drive(g, 0);
    advance_all(g, 1);
    for (int i = 0; i < g->n_buckets; i++) g->buckets[i].state = BUCKET_IDLE;
    g->next_reduce = 0;
}

static void *progress_main(void *arg)
{
    strata_grad_sync *g = arg;
    progress_thread *p = g->progress;
    size_t seen_from = g->n_floats;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        int busy = in_flight(g);
        if (!p->quit && !p->finishing && p->ready_from == seen_from) {
            if (!busy) {
                pthread_cond_wait(&p->wake, &p->lock);
                continue;
            }
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += PROGRESS_POLL_US * 1000L;
            if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&p->wake, &p->lock, &until);
        }
        if (p->quit) break;
        int finishing = p->finishing;
        seen_from = p->ready_from;
        pthread_mutex_unlock(&p->lock);
        if (finishing)
            complete_all(g);
        else
            drive(g, seen_from);
        pthread_mutex_lock(&p->lock);
        if (finishing) {
            p->finishing = 0, p->done = 1;
            p->ready_from = seen_from = g->n_floats;
            pthread_cond_signal(&p->done_cond);
        }
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static strata_err start_progress_thread(strata_grad_sync *g)
{
    progress_thread *p = calloc(1, sizeof *p);
    if (!p) return strata_errorf(STRATA_ENOMEM, "out of memory");
    p->ready_from = g->n_floats;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done_cond, NULL);
    g->progress = p;
    if (pthread_create(&p->thread, NULL, progress_main, g)) {
        g->progress = NULL;
        free(p);
        return strata_errorf(STRATA_EFAIL, "cannot start the communication progress thread");
    }
    return strata_ok();
}

static void stop_progress_thread(strata_grad_sync *g)
{
    progress_thread *p = g->progress;
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->quit = 1;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done_cond);
    free(p);
    g->progress = NULL;
}

void strata_grad_sync_ready(strata_grad_sync *g, size_t ready_from)
{
    if (g->comm->size == 1) return;
    progress_thread *p = g->progress;
    if (!p) {
        drive(g, ready_from);
        return;
    }
    pthread_mutex_lock(&p->lock);
    if (ready_from < p->ready_from) {
        p->ready_from = ready_from;
        pthread_cond_signal(&p->wake);
    }
    pthread_mutex_unlock(&p->lock);
}

void strata_grad_sync_finish(strata_grad_sync *g, double *exposed_ms, double *hidden_fraction)
{
    *exposed_ms = 0.0;
    *hidden_fraction = 1.0;
    if (g->comm->size == 1) return;
    double t0 = MPI_Wtime();
    progress_thread *p = g->progress;
    if (p) {
        pthread_mutex_lock(&p->lock);
        p->finishing = 1;
        pthread_cond_signal(&p->wake);
        while (!p->done) pthread_cond_wait(&p->done_cond, &p->lock);
        p->done = 0;
        pthread_mutex_unlock(&p->lock);
    } else {
        complete_all(g);
    }
    double t1 = MPI_Wtime(), span = t1 - g->first_start;
    *exposed_ms = (t1 - t0) * 1e3;
    *hidden_fraction = span > 0 ? 1.0 - (t1 - t0) / span : 1.0;
    g->first_start = 0;
}

void strata_grad_sync_allgather_params(strata_grad_sync *g, float *params)
{
    if (!g->zero) return;
    strata_comm *c = g->comm;
    int *counts = malloc(c->size * sizeof(int)), *displs = malloc(c->size * sizeof(int));
    if (!counts || !displs) strata_comm_abort(c, 1, "out of memory");
    range_counts(c, g->n_floats, counts, displs);
    check(c,
          MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, params, counts, displs, MPI_FLOAT,
                         MPI_COMM_WORLD),
          "parameter all-gather");
    free(counts);
    free(displs);
}

void strata_grad_sync_shard(const strata_grad_sync *g, size_t *begin, size_t *end)
{
    *begin = g->shard_begin;
    *end = g->shard_end;
}
