#include "strata/perf.h"

#include <cblas.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

double strata_flops_per_token(const strata_model_shape *s, int T)
{
    double C = s->n_embd, L = s->n_layer, V = s->vocab_size;
    double n_params = V * C + (double)s->block_size * C + L * (12 * C * C + 13 * C) + 2 * C;
    return 6.0 * n_params + 12.0 * L * T * C;
}

double strata_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double strata_sgemm_peak_gflops(int n, double min_seconds)
{
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
          *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return 0;
    }
    for (long i = 0; i < (long)n * n; i++) a[i] = b[i] = c[i] = (float)(i % 7) * 0.01f;
    double best = 0, start = strata_now_seconds();
    for (int rep = 0; rep < 6 || strata_now_seconds() - start < min_seconds; rep++) {
        double t0 = strata_now_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                    n);
        double dt = strata_now_seconds() - t0;
        double g = 2.0 * n * n * (double)n / dt * 1e-9;
        if (rep > 0 && g > best) best = g;
    }
    free(a), free(b), free(c);
    return best;
}

double strata_peak_rss_bytes(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss * 1024.0;
}
