#include "strata/watchdog.h"

#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "strata/log.h"

/* How often the thread looks at the clock, and how long MPI_Abort may take
 * before SIGALRM ends the process (the abort may need the lost network). */
#define WATCH_POLL_US (200 * 1000)
#define ABORT_GRACE_S 10

struct strata_watchdog {
    strata_comm *comm;
    pthread_t thread;
    _Atomic double timeout_s;
    _Atomic double phase_start; /* 0 = paused */
    _Atomic long step;
    _Atomic(const char *) phase;
    atomic_int running;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *watch(void *arg)
{
    strata_watchdog *w = arg;
    while (atomic_load(&w->running)) {
        usleep(WATCH_POLL_US);
        double start = atomic_load(&w->phase_start), limit = atomic_load(&w->timeout_s);
        if (start <= 0 || limit <= 0) continue;
        double waited = now() - start;
        if (waited < limit) continue;
        strata_log(STRATA_LOG_FATAL,
                   "watchdog: rank %d (%s) step %ld phase '%s' waited %.0f s > step_timeout "
                   "%.0f s; ending the job (the last checkpoint is kept)",
                   strata_comm_rank(w->comm), strata_comm_host(w->comm), atomic_load(&w->step),
                   atomic_load(&w->phase), waited, limit);
        alarm(ABORT_GRACE_S); /* if MPI_Abort needs the lost network and hangs */
        MPI_Abort(MPI_COMM_WORLD, 1);
        _exit(1);
    }
    return NULL;
}

strata_watchdog *strata_watchdog_start(strata_comm *c, double timeout_s)
{
    strata_watchdog *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->comm = c;
    atomic_store(&w->timeout_s, timeout_s);
    atomic_store(&w->phase, "setup");
    atomic_store(&w->running, 1);
    if (pthread_create(&w->thread, NULL, watch, w)) {
        free(w);
        return NULL;
    }
    return w;
}

void strata_watchdog_phase(strata_watchdog *w, long step, const char *phase)
{
    if (!w) return;
    atomic_store(&w->step, step);
    atomic_store(&w->phase, phase);
    atomic_store(&w->phase_start, now());
}

void strata_watchdog_set_timeout(strata_watchdog *w, double timeout_s)
{
    if (w) atomic_store(&w->timeout_s, timeout_s);
}

void strata_watchdog_pause(strata_watchdog *w)
{
    if (w) atomic_store(&w->phase_start, 0.0);
}

void strata_watchdog_stop(strata_watchdog *w)
{
    if (!w) return;
    atomic_store(&w->running, 0);
    pthread_join(w->thread, NULL);
    free(w);
}
