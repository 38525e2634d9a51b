#include "strata/perf.h"

#include <cblas.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "strata/family.h"

double strata_flops_per_token(const strata_model_shape *s, int T)
{
    const strata_family *f = strata_family_find(s->family);
    if (!f) return 0;
    return 6.0 * f->matmul_params(s) + f->attention_flops(s, T);
}

double strata_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct strata_sgemm_probe {
    int n_max;
    float *a, *b, *c;
    strata_bf16 *a16, *b16; /* the bf16 probe's operands, made on first use */
};

strata_sgemm_probe *strata_sgemm_probe_new(int n_max)
{
    size_t n2 = (size_t)n_max * n_max;
    strata_sgemm_probe *p = malloc(sizeof *p);
    if (!p) return NULL;
    *p = (strata_sgemm_probe){n_max,
                              malloc(sizeof(float) * n2),
                              malloc(sizeof(float) * n2),
                              malloc(sizeof(float) * n2),
                              NULL,
                              NULL};
    if (!p->a || !p->b || !p->c) {
        strata_sgemm_probe_free(p);
        return NULL;
    }
    for (size_t i = 0; i < n2; i++) p->a[i] = p->b[i] = p->c[i] = (float)(i % 7) * 0.01f;
    return p;
}

void strata_sgemm_probe_free(strata_sgemm_probe *p)
{
    if (!p) return;
    free(p->a), free(p->b), free(p->c), free(p->a16), free(p->b16);
    free(p);
}

double strata_sgemm_probe_gflops(strata_sgemm_probe *p, int n, int runs, double min_seconds)
{
    double best = 0, start = strata_now_seconds();
    if (n > p->n_max) n = p->n_max;
    for (int rep = 0; rep < runs || strata_now_seconds() - start < min_seconds; rep++) {
        double t0 = strata_now_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, p->a, n, p->b, n,
                    0.0f, p->c, n);
        double g = 2.0 * n * n * (double)n / (strata_now_seconds() - t0) * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

double strata_gemm_probe_gflops(strata_sgemm_probe *p, strata_precision prec, int n, int runs,
                                double min_seconds)
{
    if (prec == STRATA_FP32) return strata_sgemm_probe_gflops(p, n, runs, min_seconds);
    size_t n2 = (size_t)p->n_max * p->n_max;
    if (!p->a16 && (p->a16 = malloc(n2 * 2)) && (p->b16 = malloc(n2 * 2))) {
        strata_bf16_from_floats(p->a16, p->a, n2);
        strata_bf16_from_floats(p->b16, p->b, n2);
    }
    if (!p->b16) return 0;
    double best = 0, start = strata_now_seconds();
    if (n > p->n_max) n = p->n_max;
    for (int rep = 0; rep < runs || strata_now_seconds() - start < min_seconds; rep++) {
        double t0 = strata_now_seconds();
        strata_gemm(STRATA_BF16, n, n, n, 1.0f, strata_mat_bf16(p->a16, n, 0),
                    strata_mat_bf16(p->b16, n, 0), 0.0f, p->c, n);
        double g = 2.0 * n * n * (double)n / (strata_now_seconds() - t0) * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

double strata_sgemm_peak_gflops(int n, double min_seconds)
{
    strata_sgemm_probe *p = strata_sgemm_probe_new(n);
    if (!p) return 0;
    strata_sgemm_probe_gflops(p, n, 1, 0); /* warm-up */
    double best = strata_sgemm_probe_gflops(p, n, 5, min_seconds);
    strata_sgemm_probe_free(p);
    return best;
}

double strata_peak_rss_bytes(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss * 1024.0;
}
