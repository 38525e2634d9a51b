/* bench_loader.c — how long a training step waits for its data.
 *
 *   bench_loader DIR STEP_MS STEPS
 *
 * Shapes of configs/small.ini (G = 8, T = 256, one rank) with 25 % replay,
 * so that every step also reads random samples from an old corpus. The new
 * stream is 4 shards of 4 Mi tokens and the replay corpus one of 16 Mi,
 * uint16 ids in chunks of 1 Mi tokens (as `strata pack` writes them), once
 * uncompressed and once with shuffle+deflate 4. For each:
 *  - on demand (prefetch = 0): the time strata_loader_get takes to read a
 *    step, i.e. what a step would wait without the reader thread;
 *  - read ahead (prefetch = 1): data_ms (the wait strata_loader_get
 *    reports) while the main thread busies itself for STEP_MS per step, a
 *    stand-in for forward/backward, against that same STEP_MS.
 * The first step of each run is cold (nothing read ahead yet) and is shown
 * apart.
 */
#include <hdf5.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "strata/loader.h"

enum { G = 8, T = 256 };
#define CHUNK ((hsize_t)1 << 20)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

static void put_attrs(hid_t d)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    int64_t v[2] = {50257, 50256};
    const char *names[2] = {"vocab_size", "eot_token"};
    for (int i = 0; i < 2; i++) {
        hid_t a = H5Acreate2(d, names[i], H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT64, &v[i]);
        H5Aclose(a);
    }
    const char *sv[2] = {"gpt2", "strata-tokens-1"}, *sn[2] = {"tokenizer", "format"};
    for (int i = 0; i < 2; i++) {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, strlen(sv[i]) + 1);
        hid_t a = H5Acreate2(d, sn[i], t, sp, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, t, sv[i]);
        H5Aclose(a);
        H5Tclose(t);
    }
    H5Sclose(sp);
}

/* n tokens of GPT-2-like ids: a Zipf-ish draw, so deflate sees text-like
 * statistics rather than uniform noise. */
static void write_shard(const char *path, hsize_t n, int deflate, uint64_t seed)
{
    uint16_t *t = malloc(n * sizeof *t);
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (hsize_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double u = (double)(x >> 11) * 0x1p-53;
        t[i] = (uint16_t)((uint64_t)(50257.0 * u * u * u) % 50257);
    }
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t sp = H5Screate_simple(1, &n, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t ck = CHUNK;
    H5Pset_chunk(dcpl, 1, &ck);
    if (deflate) {
        H5Pset_shuffle(dcpl);
        H5Pset_deflate(dcpl, 4);
    }
    hid_t d = H5Dcreate2(f, "/tokens", H5T_STD_U16LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, t);
    put_attrs(d);
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(sp);
    H5Fclose(f);
    free(t);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct stats {
    double first, mean, p99, max;
} stats;

static stats summarize(double *v, int n)
{
    stats s = {v[0], 0, 0, 0};
    double sum = 0;
    for (int i = 1; i < n; i++) sum += v[i];
    s.mean = n > 1 ? sum / (n - 1) : 0;
    qsort(v + 1, (size_t)(n - 1), sizeof *v, cmp_d);
    s.p99 = n > 1 ? v[1 + (int)(0.99 * (n - 2))] : 0;
    s.max = n > 1 ? v[n - 1] : 0;
    return s;
}

/* Runs `steps` steps; with prefetch, spins step_ms per step in between.
 * times[i] receives step i's wait (prefetch) or read time (on demand). */
static int run(const strata_loader_config *cfg, int steps, double step_ms, double *times)
{
    strata_loader *l = NULL;
    strata_err e = strata_loader_open(&l, cfg);
    if (e.code) {
        fprintf(stderr, "bench_loader: %s\n", e.msg);
        return -1;
    }
    volatile double sink = 0;
    for (int s = 0; s < steps; s++) {
        strata_batch *b;
        int ex;
        double wait = 0, t0 = now_ms();
        e = strata_loader_get(l, s, &b, &ex, &wait);
        if (e.code || ex) {
            fprintf(stderr, "bench_loader: step %d: %s\n", s, e.code ? e.msg : "exhausted");
            strata_loader_close(l);
            return -1;
        }
        times[s] = cfg->prefetch ? wait : now_ms() - t0;
        for (int r = 0; r < b->n; r++) sink += b->tokens[(size_t)r * (T + 1)];
        if (cfg->prefetch)
            for (double t1 = now_ms(); now_ms() - t1 < step_ms;) sink += 1.0;
    }
    strata_loader_close(l);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: bench_loader DIR STEP_MS STEPS\n");
        return 2;
    }
    const char *dir = argv[1];
    double step_ms = atof(argv[2]);
    int steps = atoi(argv[3]);
    if (steps < 2 || step_ms < 0) return 2;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    double *times = malloc((size_t)steps * sizeof *times);
    printf("loader bench: G=%d T=%d, 25%% replay (2 of 8 slots), one rank; new stream 4 x 4 Mi "
           "tokens, replay corpus 16 Mi tokens, uint16 in chunks of 1 Mi tokens\n",
           G, T);
    for (int deflate = 0; deflate <= 1; deflate++) {
        char path[4096], manifest[4096];
        snprintf(manifest, sizeof manifest, "%s/new-%d.manifest", dir, deflate);
        FILE *m = fopen(manifest, "w");
        if (!m) {
            perror(manifest);
            return 1;
        }
        for (int i = 0; i < 4; i++) {
            snprintf(path, sizeof path, "%s/new-%d-%d.h5", dir, deflate, i);
            write_shard(path, 4 * CHUNK, deflate, 1 + (uint64_t)i);
            fprintf(m, "new-%d-%d.h5\n", deflate, i);
        }
        fclose(m);
        snprintf(path, sizeof path, "%s/old-%d.h5", dir, deflate);
        write_shard(path, 16 * CHUNK, deflate, 99);

        strata_loader_config c;
        memset(&c, 0, sizeof c);
        snprintf(c.new_path, sizeof c.new_path, "%s", manifest);
        snprintf(c.replay[0].path, sizeof c.replay[0].path, "%s", path);
        c.replay[0].weight = 1;
        c.n_replay = 1;
        c.replay_ratio = 0.25;
        c.seq_len = T;
        c.vocab_size = 50257;
        c.seed = 1234;
        c.global_batch = G;
        c.slot_end = G;
        const char *kind = deflate ? "shuffle+deflate 4" : "uncompressed";

        c.prefetch = 0;
        if (run(&c, steps, 0, times)) return 1;
        stats od = summarize(times, steps);
        double tok_s = G * (T + 1) / (od.mean / 1e3);
        printf("  %-17s on demand:  read %.3f ms/step (p99 %.3f, max %.3f; cold first step "
               "%.2f ms) = %.2f M tokens/s\n",
               kind, od.mean, od.p99, od.max, od.first, tok_s / 1e6);
        c.prefetch = 1;
        if (run(&c, steps, step_ms, times)) return 1;
        stats pf = summarize(times, steps);
        printf("  %-17s read ahead: data_ms %.4f mean (p99 %.4f, max %.4f; cold first step "
               "%.2f) at a %.0f ms step = %.4f%% of the step; on demand / read ahead = %.2f\n",
               kind, pf.mean, pf.p99, pf.max, pf.first, step_ms, 100 * pf.mean / step_ms,
               pf.mean > 0 ? od.mean / pf.mean : 0);
    }
    free(times);
    return 0;
}
