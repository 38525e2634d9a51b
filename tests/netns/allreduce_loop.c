/* allreduce_loop.c - MPI_Allreduce in a loop, checking every sum, printing progress.
 *
 * Used by tests/netns/ to show that a namespace cluster runs MPI over TCP, and
 * to see what a job does when a host's link is cut or its processes are killed.
 *
 *   allreduce_loop [iters [count [every [sleep_ms [abort_after_s]]]]]
 *     iters     iterations, 0 = until killed (default 1000)
 *     count     doubles per MPI_Allreduce (default 65536 = 512 KiB)
 *     every     rank 0 prints a progress line every `every` iterations (default 100)
 *     sleep_ms  pause between iterations, to keep the CPU free (default 0)
 *     abort_after_s  a watchdog sketch (default 0 = off): a thread on every
 *               rank calls MPI_Abort(MPI_COMM_WORLD, 3) when no iteration has
 *               ended for that many seconds, then _exit(3) if it returns; for
 *               seeing what MPI_Abort does when a host is cut off
 *
 * Iteration i, element j: rank r sends (r+1) * ((i+j) % 1000 + 1), so the sum is
 * n(n+1)/2 * ((i+j) % 1000 + 1): small integers, exact in double. Every rank
 * checks every element; a wrong sum prints the first bad element and aborts (2).
 *
 * Output (rank 0, flushed line by line, times since MPI_Init returned):
 *   allreduce_loop: 3 ranks, count 65536: r0=strata-h0 r1=strata-h1 r2=strata-h2
 *   allreduce_loop: iter 100 ok 0.512 s
 *   allreduce_loop: done 1000 iterations on 3 ranks, sums ok, 4.870 s
 */
#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static _Atomic double last_ok; /* when the last iteration ended (now_s) */
static _Atomic long cur_iter;
static double abort_after;
static int my_rank;
static char my_name[MPI_MAX_PROCESSOR_NAME];

static void *watchdog(void *arg)
{
    (void)arg;
    for (;;) {
        sleep_ms(100);
        double waited = now_s() - atomic_load(&last_ok);
        if (waited > abort_after) {
            fprintf(
                stderr,
                "allreduce_loop: watchdog: rank %d host %s iter %ld: waited %.1f s, MPI_Abort\n",
                my_rank, my_name, atomic_load(&cur_iter), waited);
            fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, 3);
            _exit(3);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    abort_after = argc > 5 ? atof(argv[5]) : 0;
    if (abort_after > 0) {
        int provided;
        MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
        if (provided < MPI_THREAD_MULTIPLE)
            fprintf(stderr, "allreduce_loop: no MPI_THREAD_MULTIPLE (%d)\n", provided);
    } else {
        MPI_Init(&argc, &argv);
    }
    double t0 = MPI_Wtime();
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    long iters = argc > 1 ? strtol(argv[1], 0, 0) : 1000;
    long count = argc > 2 ? strtol(argv[2], 0, 0) : 65536;
    long every = argc > 3 ? strtol(argv[3], 0, 0) : 100;
    int pause = argc > 4 ? atoi(argv[4]) : 0;
    if (iters < 0 || count < 1 || count > (1L << 28) || every < 1 || pause < 0 || abort_after < 0) {
        if (rank == 0)
            fprintf(stderr,
                    "usage: allreduce_loop [iters [count [every [sleep_ms [abort_after_s]]]]]\n");
        MPI_Finalize();
        return 2;
    }

    char name[MPI_MAX_PROCESSOR_NAME] = {0};
    int len = 0;
    MPI_Get_processor_name(name, &len);
    my_rank = rank;
    memcpy(my_name, name, sizeof my_name);
    char *names = rank == 0 ? malloc((size_t)n * MPI_MAX_PROCESSOR_NAME) : NULL;
    MPI_Gather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0,
               MPI_COMM_WORLD);
    if (rank == 0) {
        printf("allreduce_loop: %d ranks, count %ld:", n, count);
        for (int r = 0; r < n; r++)
            printf(" r%d=%s", r, names + (size_t)r * MPI_MAX_PROCESSOR_NAME);
        printf("\n");
        fflush(stdout);
        free(names);
    }

    double *s = malloc((size_t)count * sizeof *s), *r = malloc((size_t)count * sizeof *r);
    if (!s || !r) {
        fprintf(stderr, "allreduce_loop: rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const double tri = (double)n * (n + 1) / 2;
    long i;
    atomic_store(&last_ok, now_s());
    if (abort_after > 0) {
        pthread_t th;
        if (pthread_create(&th, NULL, watchdog, NULL) != 0) {
            fprintf(stderr, "allreduce_loop: rank %d: cannot start the watchdog\n", rank);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        pthread_detach(th);
    }
    for (i = 0; iters == 0 || i < iters; i++) {
        for (long j = 0; j < count; j++) s[j] = (double)(rank + 1) * (double)((i + j) % 1000 + 1);
        MPI_Allreduce(s, r, (int)count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        for (long j = 0; j < count; j++) {
            double want = tri * (double)((i + j) % 1000 + 1);
            if (r[j] != want) {
                fprintf(
                    stderr,
                    "allreduce_loop: rank %d (%s): iter %ld element %ld: got %.17g want %.17g\n",
                    rank, name, i, j, r[j], want);
                fflush(stderr);
                MPI_Abort(MPI_COMM_WORLD, 2);
            }
        }
        if (rank == 0 && (i + 1) % every == 0) {
            printf("allreduce_loop: iter %ld ok %.3f s\n", i + 1, MPI_Wtime() - t0);
            fflush(stdout);
        }
        atomic_store(&cur_iter, i + 1);
        atomic_store(&last_ok, now_s());
        if (pause) sleep_ms(pause);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        printf("allreduce_loop: done %ld iterations on %d ranks, sums ok, %.3f s\n", i, n,
               MPI_Wtime() - t0);
        fflush(stdout);
    }
    free(s);
    free(r);
    MPI_Finalize();
    return 0;
}
