/* test_gemm.c — strata_gemm (include/strata/gemm.h) and the bf16 conversion.
 *
 * - bf16 conversion rounds to nearest even (ties both ways, carries into the
 *   exponent, overflow to Inf), keeps NaN a NaN and Inf an Inf;
 * - fp32 is bitwise cblas_sgemm, for the four transpose cases;
 * - bf16 equals a double-precision product of the bf16-rounded operands to
 *   fp32 summation error, for every transpose, strides, alpha and beta, and
 *   on shapes large enough to be cut into M, N and K panels;
 * - a bf16-stored operand and the fp32 operand it was rounded from give
 *   bitwise the same product; the result is bitwise the same run twice and
 *   inside an OpenMP parallel region;
 * - bf16 is really bf16: a product whose fp32 value differs from its bf16
 *   value gives the bf16 value.
 */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/gemm.h"
#include "strata/rng.h"

static float bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void conversion_rounds_to_nearest_even(void **state)
{
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1. */
    assert_int_equal(strata_bf16_from_float(bits_to_float(0x3f808000u)), 0x3f80);
    /* 1 + 3 * 2^-8: halfway, ties up to the even 1 + 2^-6. */
    assert_int_equal(strata_bf16_from_float(bits_to_float(0x3f818000u)), 0x3f82);
    /* just above and below half */
    assert_int_equal(strata_bf16_from_float(bits_to_float(0x3f808001u)), 0x3f81);
    assert_int_equal(strata_bf16_from_float(bits_to_float(0x3f807fffu)), 0x3f80);
    /* negative values round the magnitude the same way */
    assert_int_equal(strata_bf16_from_float(bits_to_float(0xbf818000u)), 0xbf82);
    /* the carry reaches the exponent: 1.99999 -> 2 */
    assert_int_equal(strata_bf16_from_float(bits_to_float(0x3fffffffu)), 0x4000);
    /* the largest float overflows to Inf, as RNE says */
    assert_int_equal(strata_bf16_from_float(bits_to_float(0x7f7fffffu)), 0x7f80);
    assert_int_equal(strata_bf16_from_float(INFINITY), 0x7f80);
    assert_int_equal(strata_bf16_from_float(-INFINITY), 0xff80);
    /* NaN stays NaN, even one whose payload lives only in the low bits */
    assert_true(isnan(strata_bf16_to_float(strata_bf16_from_float(bits_to_float(0x7f800001u)))));
    assert_true(isnan(strata_bf16_to_float(strata_bf16_from_float(NAN))));
    /* exact values are kept; widening is exact */
    assert_true(strata_bf16_to_float(strata_bf16_from_float(-0.375f)) == -0.375f);
    assert_true(strata_bf16_round(3.0f) == 3.0f);
    /* against a double-precision reference of RNE on random floats */
    for (uint64_t i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)strata_rng_u64(5, 1, 0, i);
        float f = bits_to_float(u);
        if (!isfinite(f) || fabsf(f) > 3e38f) continue;
        float r = strata_bf16_round(f);
        float lo = bits_to_float(u & 0xffff0000u), hi = bits_to_float((u & 0xffff0000u) + 0x10000u);
        double dl = fabs((double)f - lo), dh = fabs((double)hi - f);
        float want = dl < dh ? lo : dh < dl ? hi : ((u >> 16) & 1) ? hi : lo;
        if (r != want) fail_msg("%08x: got %a want %a", u, r, want);
    }
    strata_bf16 h[3];
    float back[3], in[3] = {1.0f, bits_to_float(0x3f808001u), -2.5f};
    strata_bf16_from_floats(h, in, 3);
    strata_bf16_to_floats(back, h, 3);
    assert_true(back[0] == 1.0f && back[1] == bits_to_float(0x3f810000u) && back[2] == -2.5f);
}

static float *random_floats(size_t n, uint64_t seed)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(strata_rng_u64(seed, 2, 0, i) % 20001) / 10000.0f - 1.0f;
    return x;
}

/* op(X)[i][k] of a row-major operand */
static double at(const float *x, int ld, int trans, int i, int k, int round)
{
    float v = trans ? x[(size_t)k * ld + i] : x[(size_t)i * ld + k];
    return round ? strata_bf16_round(v) : v;
}

typedef struct shape {
    int M, N, K, ta, tb, pad;
    float alpha, beta;
} shape;

/* bf16 gemm against the double product of rounded operands; fp32 gemm
 * bitwise against cblas_sgemm. */
static void check_shape(const shape *s)
{
    int M = s->M, N = s->N, K = s->K;
    int lda = (s->ta ? M : K) + s->pad, ldb = (s->tb ? K : N) + s->pad, ldc = N + s->pad;
    size_t na = (size_t)(s->ta ? K : M) * lda, nb = (size_t)(s->tb ? N : K) * ldb;
    size_t nc = (size_t)M * ldc;
    float *A = random_floats(na, 11), *B = random_floats(nb, 12), *C0 = random_floats(nc, 13);
    float *C = malloc(nc * 4), *R = malloc(nc * 4);
    strata_bf16 *A16 = malloc(na * 2), *B16 = malloc(nb * 2);
    strata_bf16_from_floats(A16, A, na);
    strata_bf16_from_floats(B16, B, nb);

    /* fp32: bitwise cblas */
    memcpy(C, C0, nc * 4), memcpy(R, C0, nc * 4);
    strata_gemm(STRATA_FP32, M, N, K, s->alpha, strata_mat_f32(A, lda, s->ta),
                strata_mat_f32(B, ldb, s->tb), s->beta, C, ldc);
    cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans,
                M, N, K, s->alpha, A, lda, B, ldb, s->beta, R, ldc);
    assert_memory_equal(C, R, nc * 4);

    /* bf16 from fp32 operands */
    memcpy(C, C0, nc * 4);
    strata_gemm(STRATA_BF16, M, N, K, s->alpha, strata_mat_f32(A, lda, s->ta),
                strata_mat_f32(B, ldb, s->tb), s->beta, C, ldc);
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                double p = at(A, lda, s->ta, i, k, 1) * at(B, ldb, s->tb, k, j, 1);
                acc += p, mag += fabs(p);
            }
            double want = s->alpha * acc + s->beta * C0[(size_t)i * ldc + j];
            double err = fabs(C[(size_t)i * ldc + j] - want) /
                         (fabs(s->alpha) * mag + fabs(s->beta * C0[(size_t)i * ldc + j]) + 1e-30);
            if (err > worst) worst = err;
        }
    /* fp32 sums of K terms: a few K * 2^-24 at worst, far below bf16's 2^-9 */
    if (worst > 4e-7 * sqrt((double)K) + 1e-6)
        fail_msg("M=%d N=%d K=%d ta=%d tb=%d: rel error %.3g", M, N, K, s->ta, s->tb, worst);
    /* padding columns of C untouched */
    for (int i = 0; i < M; i++)
        for (int j = N; j < ldc; j++)
            assert_true(C[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j]);

    /* bf16-stored operands: bitwise the same; and again: bitwise */
    memcpy(R, C0, nc * 4);
    strata_gemm(STRATA_BF16, M, N, K, s->alpha, strata_mat_bf16(A16, lda, s->ta),
                strata_mat_bf16(B16, ldb, s->tb), s->beta, R, ldc);
    assert_memory_equal(C, R, nc * 4);
    free(A), free(B), free(C0), free(C), free(R), free(A16), free(B16);
}

static void fp32_is_sgemm_and_bf16_is_the_rounded_product(void **state)
{
    const shape shapes[] = {
        {7, 5, 3, 0, 0, 0, 1.0f, 0.0f},    {33, 17, 65, 0, 1, 3, 0.125f, 1.0f},
        {64, 70, 40, 1, 0, 1, 1.0f, 0.5f}, {19, 23, 29, 1, 1, 2, -2.0f, 0.0f},
        {1, 1, 1, 0, 0, 0, 1.0f, 1.0f},    {128, 1, 200, 0, 0, 0, 1.0f, 0.0f},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_shape(&shapes[i]);
}

/* Above the 4 Mi-float leaf: cut along M, N and K. */
static void large_products_are_cut_into_panels_correctly(void **state)
{
    const shape shapes[] = {
        {3000, 40, 1500, 0, 1, 0, 1.0f, 1.0f}, /* M split */
        {40, 3000, 1500, 1, 0, 0, 1.0f, 0.0f}, /* N split */
        {30, 20, 150000, 0, 0, 0, 0.5f, 1.0f}, /* K split: beta once */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_shape(&shapes[i]);
}

static void bf16_rounds_what_fp32_keeps(void **state)
{
    /* (1 + 2^-10) * 1: fp32 keeps it, bf16 rounds the operand to 1. */
    float a = 1.0f + 1.0f / 1024, b = 1.0f, c32 = 0, c16 = 0;
    strata_gemm(STRATA_FP32, 1, 1, 1, 1.0f, strata_mat_f32(&a, 1, 0), strata_mat_f32(&b, 1, 0),
                0.0f, &c32, 1);
    strata_gemm(STRATA_BF16, 1, 1, 1, 1.0f, strata_mat_f32(&a, 1, 0), strata_mat_f32(&b, 1, 0),
                0.0f, &c16, 1);
    assert_true(c32 == a);
    assert_true(c16 == 1.0f);
    /* fp32 precision with a bf16 operand widens it exactly, rounds nothing else */
    strata_bf16 one = strata_bf16_from_float(1.0f);
    float c = 0;
    strata_gemm(STRATA_FP32, 1, 1, 1, 1.0f, strata_mat_f32(&a, 1, 0), strata_mat_bf16(&one, 1, 0),
                0.0f, &c, 1);
    assert_true(c == a);
    /* K = 0: C = beta C */
    c = 3.0f;
    strata_gemm(STRATA_BF16, 1, 1, 0, 1.0f, strata_mat_f32(&a, 1, 0), strata_mat_f32(&b, 1, 0),
                0.5f, &c, 1);
    assert_true(c == 1.5f);
}

/* Attention calls strata_gemm from inside a parallel region. */
static void inside_a_parallel_region_gives_the_same_bits(void **state)
{
    enum { M = 64, N = 96, K = 48, R = 8 };
    float *A = random_floats((size_t)R * M * K, 21), *B = random_floats((size_t)K * N, 22);
    float *out = calloc((size_t)R * M * N, 4), *ref = calloc((size_t)R * M * N, 4);
    /* The reference one product at a time on one thread (OpenBLAS may cut a
     * product differently on more), so that only per-thread scratch is tested. */
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    for (int r = 0; r < R; r++)
        strata_gemm(STRATA_BF16, M, N, K, 0.5f, strata_mat_f32(A + (size_t)r * M * K, K, 0),
                    strata_mat_f32(B, N, 0), 0.0f, ref + (size_t)r * M * N, N);
    omp_set_num_threads(threads);
#pragma omp parallel for num_threads(2) schedule(static)
    for (int r = 0; r < R; r++)
        strata_gemm(STRATA_BF16, M, N, K, 0.5f, strata_mat_f32(A + (size_t)r * M * K, K, 0),
                    strata_mat_f32(B, N, 0), 0.0f, out + (size_t)r * M * N, N);
    assert_memory_equal(out, ref, (size_t)R * M * N * 4);
    free(A), free(B), free(out), free(ref);
}

static void backend_is_named(void **state)
{
    char line[256];
    strata_gemm_describe(line, sizeof line);
    print_message("%s\n", line);
    assert_non_null(strstr(line, "bf16 matmul"));
#ifdef STRATA_HAVE_DNNL
    assert_int_equal(strata_gemm_check_precision(STRATA_BF16).code, 0);
    assert_non_null(strstr(line, "oneDNN"));
#else
    strata_err e = strata_gemm_check_precision(STRATA_BF16);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "libdnnl"));
#endif
    assert_int_equal(strata_gemm_check_precision(STRATA_FP32).code, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conversion_rounds_to_nearest_even),
        cmocka_unit_test(fp32_is_sgemm_and_bf16_is_the_rounded_product),
        cmocka_unit_test(large_products_are_cut_into_panels_correctly),
        cmocka_unit_test(bf16_rounds_what_fp32_keeps),
        cmocka_unit_test(inside_a_parallel_region_gives_the_same_bits),
        cmocka_unit_test(backend_is_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
