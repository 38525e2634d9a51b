/* test_attention.c — the flash-style grouped-query attention of attention.h.
 *
 * The reference is plain double-precision attention written here: the full
 * (T, T) softmax of every head materialised, the mask spelled out as
 * t - W < j <= t, query head h reading kv head h / (NH / NKV). The kernel's
 * forward must match it to 1e-5 (max |error| over max |value|), its
 * backward must match the reference's analytic gradient and central finite
 * differences (in double, of L = sum out * R for a random R) of the
 * reference forward. Shapes cover GQA with 3 query heads per kv head,
 * NKV = NH, windows smaller than T and than a block, T not a multiple of the
 * 64-row block, hs = 16 and 64, B > 1. And the bits must not depend on the
 * OpenMP thread count.
 */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/attention.h"

/* The tests were written against a shape-struct signature; these map it
 * onto main's attention.h. Scratch is sized for 4 threads (the tests run 1
 * and 2). */
typedef struct strata_attn_shape {
    int B, T, NH, NKV, hs, window;
    float scale;
} strata_attn_shape;
static size_t strata_flash_attention_scratch_floats(const strata_attn_shape *s)
{
    return strata_gqa_attention_scratch_floats(s->B, s->T, s->NH, s->NKV, s->hs, 4);
}
static void strata_flash_attention_forward(float *out, float *lse, const float *qkv,
                                           const strata_attn_shape *s, float *scratch)
{
    strata_gqa_attention_forward(out, lse, qkv, s->B, s->T, s->NH, s->NKV, s->hs, s->window,
                                 s->scale, scratch, strata_flash_attention_scratch_floats(s));
}
static void strata_flash_attention_backward(float *dqkv, const float *dout, const float *qkv,
                                            const float *out, const float *lse,
                                            const strata_attn_shape *s, float *scratch)
{
    strata_gqa_attention_backward(dqkv, dout, qkv, out, lse, s->B, s->T, s->NH, s->NKV, s->hs,
                                  s->window, s->scale, scratch,
                                  strata_flash_attention_scratch_floats(s));
}

typedef struct {
    int B, T, NH, NKV, hs, W;
} shape;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static size_t qkv_len(shape s) { return (size_t)s.B * s.T * (s.NH + 2 * s.NKV) * s.hs; }
static size_t out_len(shape s) { return (size_t)s.B * s.T * s.NH * s.hs; }
static strata_attn_shape as_attn(shape s)
{
    return (strata_attn_shape){s.B, s.T, s.NH, s.NKV, s.hs, s.W, 1.0f / sqrtf((float)s.hs)};
}
static int visible(shape s, int t, int j) { return j <= t && (s.W == 0 || j > t - s.W); }

/* out = softmax(scale q k^T + mask) v, all in double. */
static void ref_forward(double *out, const double *qkv, shape s)
{
    int RS = (s.NH + 2 * s.NKV) * s.hs, rep = s.NH / s.NKV;
    double scale = 1.0 / sqrt((double)(float)s.hs), *p = malloc(sizeof(double) * s.T);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++) {
            int g = h / rep;
            for (int t = 0; t < s.T; t++) {
                const double *q = qkv + ((size_t)b * s.T + t) * RS + h * s.hs;
                double mx = -1e300, sum = 0.0;
                for (int j = 0; j <= t; j++) {
                    if (!visible(s, t, j)) continue;
                    const double *k = qkv + ((size_t)b * s.T + j) * RS + (s.NH + g) * s.hs;
                    double d = 0.0;
                    for (int i = 0; i < s.hs; i++) d += q[i] * k[i];
                    p[j] = d * (double)(float)scale;
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j <= t; j++)
                    if (visible(s, t, j)) sum += (p[j] = exp(p[j] - mx));
                double *o = out + ((size_t)b * s.T + t) * s.NH * s.hs + h * s.hs;
                for (int i = 0; i < s.hs; i++) o[i] = 0.0;
                for (int j = 0; j <= t; j++) {
                    if (!visible(s, t, j)) continue;
                    const double *v = qkv + ((size_t)b * s.T + j) * RS + (s.NH + s.NKV + g) * s.hs;
                    for (int i = 0; i < s.hs; i++) o[i] += p[j] / sum * v[i];
                }
            }
        }
    free(p);
}

/* Analytic gradient of sum out * dout w.r.t. qkv, in double, with the full
 * probability row: dP = dO v^T, dS = P (dP - sum P dP). */
static void ref_backward(double *dqkv, const double *dout, const double *qkv, shape s)
{
    int RS = (s.NH + 2 * s.NKV) * s.hs, rep = s.NH / s.NKV;
    double scale = (double)(1.0f / sqrtf((float)s.hs));
    double *p = malloc(sizeof(double) * s.T), *dp = malloc(sizeof(double) * s.T);
    memset(dqkv, 0, sizeof(double) * qkv_len(s));
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++) {
            int g = h / rep;
            for (int t = 0; t < s.T; t++) {
                size_t qo = ((size_t)b * s.T + t) * RS + h * s.hs;
                const double *q = qkv + qo,
                             *dO = dout + ((size_t)b * s.T + t) * s.NH * s.hs + h * s.hs;
                double mx = -1e300, sum = 0.0, dot = 0.0;
                for (int j = 0; j <= t; j++) {
                    if (!visible(s, t, j)) continue;
                    const double *k = qkv + ((size_t)b * s.T + j) * RS + (s.NH + g) * s.hs;
                    double d = 0.0;
                    for (int i = 0; i < s.hs; i++) d += q[i] * k[i];
                    p[j] = d * scale;
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j <= t; j++)
                    if (visible(s, t, j)) sum += (p[j] = exp(p[j] - mx));
                for (int j = 0; j <= t; j++) {
                    if (!visible(s, t, j)) continue;
                    p[j] /= sum;
                    size_t vo = ((size_t)b * s.T + j) * RS + (s.NH + s.NKV + g) * s.hs;
                    double d = 0.0;
                    for (int i = 0; i < s.hs; i++) {
                        d += dO[i] * qkv[vo + i];
                        dqkv[vo + i] += p[j] * dO[i];
                    }
                    dp[j] = d;
                    dot += p[j] * d;
                }
                for (int j = 0; j <= t; j++) {
                    if (!visible(s, t, j)) continue;
                    double ds = p[j] * (dp[j] - dot) * scale;
                    size_t ko = ((size_t)b * s.T + j) * RS + (s.NH + g) * s.hs;
                    for (int i = 0; i < s.hs; i++) {
                        dqkv[qo + i] += ds * qkv[ko + i];
                        dqkv[ko + i] += ds * q[i];
                    }
                }
            }
        }
    free(p);
    free(dp);
}

/* max |a - r| / max |r| */
static double rel_err_f(const float *a, const double *r, size_t n)
{
    double e = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - r[i]);
        if (d > e || isnan(d)) e = isnan(d) ? INFINITY : d;
        if (fabs(r[i]) > m) m = fabs(r[i]);
    }
    return e / m;
}

typedef struct {
    shape s;
    float *qkv, *out, *lse, *dout, *dqkv, *scratch;
    double *qkv_d, *dout_d;
} problem;

static problem make_problem(shape s, double amp)
{
    problem p = {.s = s};
    size_t nq = qkv_len(s), no = out_len(s);
    strata_attn_shape a = as_attn(s);
    p.qkv = malloc(sizeof(float) * nq);
    p.dqkv = malloc(sizeof(float) * nq);
    p.qkv_d = malloc(sizeof(double) * nq);
    p.out = malloc(sizeof(float) * no);
    p.dout = malloc(sizeof(float) * no);
    p.dout_d = malloc(sizeof(double) * no);
    p.lse = malloc(sizeof(float) * s.B * s.NH * s.T);
    p.scratch = malloc(sizeof(float) * strata_flash_attention_scratch_floats(&a));
    for (size_t i = 0; i < nq; i++) p.qkv_d[i] = p.qkv[i] = (float)(amp * urand());
    for (size_t i = 0; i < no; i++) p.dout_d[i] = p.dout[i] = (float)urand();
    /* garbage where the kernel must write everything */
    for (size_t i = 0; i < nq; i++) p.dqkv[i] = NAN;
    for (size_t i = 0; i < no; i++) p.out[i] = NAN;
    return p;
}

static void free_problem(problem *p)
{
    free(p->qkv);
    free(p->dqkv);
    free(p->qkv_d);
    free(p->out);
    free(p->dout);
    free(p->dout_d);
    free(p->lse);
    free(p->scratch);
}

static void run(problem *p)
{
    strata_attn_shape a = as_attn(p->s);
    strata_flash_attention_forward(p->out, p->lse, p->qkv, &a, p->scratch);
    strata_flash_attention_backward(p->dqkv, p->dout, p->qkv, p->out, p->lse, &a, p->scratch);
}

/* Forward vs reference (1e-5), lse vs the reference's log-sum-exp, backward
 * vs the reference's analytic gradient. */
static void check_against_reference(shape s)
{
    problem p = make_problem(s, 2.0);
    run(&p);
    double *ref = malloc(sizeof(double) * out_len(s)), *dref = malloc(sizeof(double) * qkv_len(s));
    ref_forward(ref, p.qkv_d, s);
    double ef = rel_err_f(p.out, ref, out_len(s));
    ref_backward(dref, p.dout_d, p.qkv_d, s);
    double eb = rel_err_f(p.dqkv, dref, qkv_len(s));
    /* lse of row t: recompute from the reference logits */
    int RS = (s.NH + 2 * s.NKV) * s.hs, rep = s.NH / s.NKV;
    double el = 0.0, scale = (double)(1.0f / sqrtf((float)s.hs));
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++)
            for (int t = 0; t < s.T; t += 7) {
                double sum = 0.0;
                for (int j = 0; j <= t; j++) {
                    if (!visible(s, t, j)) continue;
                    double d = 0.0;
                    for (int i = 0; i < s.hs; i++)
                        d += p.qkv_d[((size_t)b * s.T + t) * RS + h * s.hs + i] *
                             p.qkv_d[((size_t)b * s.T + j) * RS + (s.NH + h / rep) * s.hs + i];
                    sum += exp(d * scale);
                }
                double e = fabs(p.lse[((size_t)b * s.NH + h) * s.T + t] - log(sum));
                if (e > el) el = e;
            }
    printf("B=%d T=%d NH=%d NKV=%d hs=%d W=%d: forward %.2e, lse %.2e, backward %.2e\n", s.B, s.T,
           s.NH, s.NKV, s.hs, s.W, ef, el, eb);
    assert_true(ef < 1e-5);
    assert_true(el < 1e-5);
    assert_true(eb < 1e-4);
    free(ref);
    free(dref);
    free_problem(&p);
}

static void gqa_three_query_heads_per_kv_head_match_double_reference(void **state)
{
    (void)state;
    check_against_reference((shape){2, 100, 6, 2, 16, 0});
    check_against_reference((shape){1, 200, 9, 3, 64, 0}); /* SmolLM2-135M's heads */
    check_against_reference((shape){1, 600, 4, 2, 16, 0}); /* several 256-key chunks */
}

static void one_kv_head_per_query_head_matches_double_reference(void **state)
{
    (void)state;
    check_against_reference((shape){2, 130, 3, 3, 64, 0});
    check_against_reference((shape){3, 64, 4, 4, 16, 0}); /* exactly one block */
    check_against_reference((shape){1, 5, 2, 2, 16, 0});  /* shorter than a block */
    check_against_reference((shape){1, 70, 4, 1, 16, 0}); /* multi-query */
}

static void sliding_window_matches_double_reference(void **state)
{
    (void)state;
    check_against_reference((shape){2, 150, 6, 2, 16, 37});  /* window < block */
    check_against_reference((shape){1, 300, 6, 3, 64, 100}); /* window spanning blocks */
    check_against_reference((shape){1, 129, 3, 3, 16, 1});   /* only itself */
}

/* A window of T or more masks nothing that causality does not already. */
static void window_of_t_or_more_is_bitwise_plain_causal(void **state)
{
    (void)state;
    shape s = {2, 150, 6, 2, 16, 0};
    rng_state = 0x9e3779b97f4a7c15ull;
    problem a = make_problem(s, 2.0);
    rng_state = 0x9e3779b97f4a7c15ull;
    shape sw = s;
    sw.W = 150;
    problem b = make_problem(sw, 2.0);
    run(&a);
    run(&b);
    assert_memory_equal(a.out, b.out, sizeof(float) * out_len(s));
    assert_memory_equal(a.dqkv, b.dqkv, sizeof(float) * qkv_len(s));
    /* and a window of T - 1 does change the last row */
    b.s.W = 149;
    run(&b);
    size_t last = ((size_t)s.T - 1) * s.NH * s.hs;
    assert_true(memcmp(a.out + last, b.out + last, sizeof(float) * s.hs) != 0);
    assert_memory_equal(a.out, b.out, sizeof(float) * last); /* rows before see < 149 keys */
    free_problem(&a);
    free_problem(&b);
}

/* Central differences of the double reference's L = sum out * R, at a
 * sample of q, k and v entries, against the kernel's float gradient. */
static void check_finite_differences(shape s)
{
    problem p = make_problem(s, 1.5);
    run(&p);
    size_t nq = qkv_len(s), no = out_len(s);
    double *o = malloc(sizeof(double) * no), *x = malloc(sizeof(double) * nq);
    memcpy(x, p.qkv_d, sizeof(double) * nq);
    int RS = (s.NH + 2 * s.NKV) * s.hs;
    double num = 0.0, den = 0.0, worst = 0.0;
    for (int n = 0; n < 120; n++) {
        size_t row = (size_t)((urand() + 1.0) / 2.0 * s.B * s.T) % ((size_t)s.B * s.T);
        /* a third each of q, k and v columns */
        int third = n % 3, col;
        int w3 = third == 0 ? s.NH * s.hs : s.NKV * s.hs;
        col = (int)((urand() + 1.0) / 2.0 * w3) % w3 + (third == 0   ? 0
                                                        : third == 1 ? s.NH * s.hs
                                                                     : (s.NH + s.NKV) * s.hs);
        size_t i = row * RS + col;
        double h = 1e-5, lp = 0.0, lm = 0.0;
        x[i] = p.qkv_d[i] + h;
        ref_forward(o, x, s);
        for (size_t j = 0; j < no; j++) lp += o[j] * p.dout_d[j];
        x[i] = p.qkv_d[i] - h;
        ref_forward(o, x, s);
        for (size_t j = 0; j < no; j++) lm += o[j] * p.dout_d[j];
        x[i] = p.qkv_d[i];
        double fd = (lp - lm) / (2 * h), an = p.dqkv[i];
        num += (fd - an) * (fd - an);
        den += fd * fd;
        double e = fabs(fd - an) / (fabs(fd) + 1e-2);
        if (e > worst) worst = e;
    }
    double rel = sqrt(num / den);
    printf("finite differences B=%d T=%d NH=%d NKV=%d hs=%d W=%d: rel %.2e, worst %.2e\n", s.B, s.T,
           s.NH, s.NKV, s.hs, s.W, rel, worst);
    assert_true(den > 0.0);
    assert_true(rel < 1e-3);
    assert_true(worst < 1e-3);
    free(o);
    free(x);
    free_problem(&p);
}

static void backward_matches_finite_differences_of_the_reference(void **state)
{
    (void)state;
    check_finite_differences((shape){2, 70, 6, 2, 16, 0});
    check_finite_differences((shape){1, 90, 6, 2, 16, 20});
    check_finite_differences((shape){1, 70, 2, 2, 64, 0});
}

/* Forward and backward with 1 and 2 OpenMP threads give the same bits. */
static void results_do_not_depend_on_the_thread_count(void **state)
{
    (void)state;
    shape shapes[] = {{1, 300, 9, 3, 64, 0}, {2, 170, 6, 2, 16, 50}, {3, 65, 4, 4, 16, 0}};
    int saved = omp_get_max_threads();
    for (int k = 0; k < 3; k++) {
        shape s = shapes[k];
        rng_state = 12345u + k;
        problem a = make_problem(s, 2.0);
        rng_state = 12345u + k;
        problem b = make_problem(s, 2.0);
        omp_set_num_threads(1);
        run(&a);
        omp_set_num_threads(2);
        run(&b);
        assert_memory_equal(a.out, b.out, sizeof(float) * out_len(s));
        assert_memory_equal(a.lse, b.lse, sizeof(float) * s.B * s.NH * s.T);
        assert_memory_equal(a.dqkv, b.dqkv, sizeof(float) * qkv_len(s));
        free_problem(&a);
        free_problem(&b);
    }
    omp_set_num_threads(saved);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gqa_three_query_heads_per_kv_head_match_double_reference),
        cmocka_unit_test(one_kv_head_per_query_head_matches_double_reference),
        cmocka_unit_test(sliding_window_matches_double_reference),
        cmocka_unit_test(window_of_t_or_more_is_bitwise_plain_causal),
        cmocka_unit_test(backward_matches_finite_differences_of_the_reference),
        cmocka_unit_test(results_do_not_depend_on_the_thread_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
