/* test_llama_kernels.c — RMSNorm (plain and per-head), RoPE, SwiGLU.
 *
 * Each kernel is checked against the formula written out here in double:
 * RMSNorm's and SwiGLU's gradients by central finite differences of
 * L = sum y * R for a random R; RoPE's frequencies against MODELS.md's
 * formulas (Llama 3.2's llama3 scaling: factor 32, low 1, high 4, original
 * 8192, theta 5e5; linear), its rotation against cos/sin taken directly, its
 * backward as the transpose of the forward. And none of them depends on the
 * thread count.
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

#include "strata/llama_kernels.h"

/* The tests were written against a (N groups of H rows of C, groups stride
 * apart) signature; main's strided RMSNorm is the same layout with offset 0
 * and r_stride H. */
static void rms_fwd(float *out, float *rstd, const float *inp, const float *w, float eps, int N,
                    int H, int C, size_t stride)
{
    strata_rmsnorm_forward_strided(out, rstd, inp, w, N, H, stride, 0, H, C, eps);
}
static void rms_bwd(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                    const float *rstd, int N, int H, int C, size_t stride)
{
    strata_rmsnorm_backward_strided(dinp, dw, dout, inp, w, rstd, N, H, stride, 0, H, C);
}
#define strata_rmsnorm_forward  rms_fwd
#define strata_rmsnorm_backward rms_bwd
#define strata_rope_table       strata_rope_tables

static uint64_t rng_state = 88172645463325252ull;
static double urand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

/* ---- RMSNorm -------------------------------------------------------------- */

typedef struct {
    int N, H, C;
    size_t stride, len; /* len: floats of the buffer */
    size_t off0;        /* where the rows start in the buffer (k heads: NH hs) */
} rows;

static size_t row_off(const rows *r, long n)
{
    return r->off0 + (size_t)(n / r->H) * r->stride + (size_t)(n % r->H) * r->C;
}

/* sum over rows of y * R, y = w x (mean x^2 + eps)^-1/2, in double */
static double ref_rms_loss(const double *x, const double *w, const double *R, const rows *r,
                           double eps)
{
    double L = 0.0;
    for (long n = 0; n < (long)r->N * r->H; n++) {
        const double *xr = x + row_off(r, n);
        double ss = 0.0;
        for (int c = 0; c < r->C; c++) ss += xr[c] * xr[c];
        double s = 1.0 / sqrt(ss / r->C + eps);
        for (int c = 0; c < r->C; c++) L += w[c] * xr[c] * s * R[row_off(r, n) + c];
    }
    return L;
}

static void check_rmsnorm(rows r, const char *what)
{
    float eps = 1e-5f;
    float *x = malloc(sizeof(float) * r.len), *y = malloc(sizeof(float) * r.len);
    float *R = malloc(sizeof(float) * r.len), *dx = malloc(sizeof(float) * r.len);
    float *w = malloc(sizeof(float) * r.C), *dw = malloc(sizeof(float) * r.C);
    float *rstd = malloc(sizeof(float) * r.N * r.H);
    double *xd = malloc(sizeof(double) * r.len), *Rd = malloc(sizeof(double) * r.len);
    double *wd = malloc(sizeof(double) * r.C);
    for (size_t i = 0; i < r.len; i++) {
        xd[i] = x[i] = (float)(2.0 * urand());
        Rd[i] = R[i] = (float)urand();
        y[i] = -7.0f; /* sentinel: columns outside the rows stay */
        dx[i] = 0.5f; /* dinp accumulates */
    }
    for (int c = 0; c < r.C; c++) {
        wd[c] = w[c] = (float)(1.0 + 0.5 * urand());
        dw[c] = 0.25f;
    }
    strata_rmsnorm_forward(y + r.off0, rstd, x + r.off0, w, eps, r.N, r.H, r.C, r.stride);
    /* forward: every row against the formula, everything else untouched */
    double ef = 0.0;
    char *in_row = calloc(r.len, 1);
    for (long n = 0; n < (long)r.N * r.H; n++) {
        const double *xr = xd + row_off(&r, n);
        double ss = 0.0;
        for (int c = 0; c < r.C; c++) ss += xr[c] * xr[c];
        double s = 1.0 / sqrt(ss / r.C + (double)eps);
        assert_true(fabs(rstd[n] - s) <= 1e-6 * s);
        for (int c = 0; c < r.C; c++) {
            double ref = wd[c] * xr[c] * s, e = fabs(y[row_off(&r, n) + c] - ref);
            in_row[row_off(&r, n) + c] = 1;
            if (e > ef) ef = e;
        }
    }
    for (size_t i = 0; i < r.len; i++)
        if (!in_row[i]) assert_true(y[i] == -7.0f);
    assert_true(ef < 1e-5);
    /* backward: dinp += and dw += against central differences */
    strata_rmsnorm_backward(dx + r.off0, dw, R + r.off0, x + r.off0, w, rstd, r.N, r.H, r.C,
                            r.stride);
    double num = 0.0, den = 0.0, h = 1e-6;
    for (int k = 0; k < 60; k++) {
        long n = (long)((urand() + 1.0) / 2.0 * r.N * r.H) % ((long)r.N * r.H);
        size_t i = row_off(&r, n) + (size_t)((urand() + 1.0) / 2.0 * r.C) % r.C;
        double x0 = xd[i];
        xd[i] = x0 + h;
        double lp = ref_rms_loss(xd, wd, Rd, &r, eps);
        xd[i] = x0 - h;
        double lm = ref_rms_loss(xd, wd, Rd, &r, eps);
        xd[i] = x0;
        double fd = (lp - lm) / (2 * h), an = dx[i] - 0.5;
        num += (fd - an) * (fd - an);
        den += fd * fd;
    }
    double ex = sqrt(num / den);
    num = den = 0.0;
    for (int c = 0; c < r.C; c++) {
        double w0 = wd[c];
        wd[c] = w0 + h;
        double lp = ref_rms_loss(xd, wd, Rd, &r, eps);
        wd[c] = w0 - h;
        double lm = ref_rms_loss(xd, wd, Rd, &r, eps);
        wd[c] = w0;
        double fd = (lp - lm) / (2 * h), an = dw[c] - 0.25;
        num += (fd - an) * (fd - an);
        den += fd * fd;
    }
    double ew = sqrt(num / den);
    for (size_t i = 0; i < r.len; i++)
        if (!in_row[i]) assert_true(dx[i] == 0.5f);
    printf("rmsnorm %s: forward %.2e, dx %.2e, dw %.2e\n", what, ef, ex, ew);
    assert_true(ex < 1e-3);
    assert_true(ew < 1e-3);

    /* bits do not depend on the thread count */
    int saved = omp_get_max_threads();
    float *y1 = malloc(sizeof(float) * r.len), *dx1 = calloc(r.len, sizeof(float));
    float *dx2 = calloc(r.len, sizeof(float)), *dwa = calloc(r.C, sizeof(float));
    float *dwb = calloc(r.C, sizeof(float));
    memcpy(y1, y, sizeof(float) * r.len);
    omp_set_num_threads(1);
    strata_rmsnorm_forward(y1 + r.off0, rstd, x + r.off0, w, eps, r.N, r.H, r.C, r.stride);
    strata_rmsnorm_backward(dx1 + r.off0, dwa, R + r.off0, x + r.off0, w, rstd, r.N, r.H, r.C,
                            r.stride);
    omp_set_num_threads(2);
    strata_rmsnorm_forward(y + r.off0, rstd, x + r.off0, w, eps, r.N, r.H, r.C, r.stride);
    strata_rmsnorm_backward(dx2 + r.off0, dwb, R + r.off0, x + r.off0, w, rstd, r.N, r.H, r.C,
                            r.stride);
    omp_set_num_threads(saved);
    assert_memory_equal(y1, y, sizeof(float) * r.len);
    assert_memory_equal(dx1, dx2, sizeof(float) * r.len);
    assert_memory_equal(dwa, dwb, sizeof(float) * r.C);

    free(y1);
    free(dx1);
    free(dx2);
    free(dwa);
    free(dwb);
    free(in_row);
    free(x);
    free(y);
    free(R);
    free(dx);
    free(w);
    free(dw);
    free(rstd);
    free(xd);
    free(Rd);
    free(wd);
}

static void rmsnorm_over_rows_matches_formula_and_finite_differences(void **state)
{
    (void)state;
    rows r = {.N = 37, .H = 1, .C = 576, .stride = 576};
    r.len = (size_t)r.N * r.C;
    check_rmsnorm(r, "rows of C=576");
    rows odd = {.N = 5, .H = 1, .C = 13, .stride = 13}; /* C not a multiple of 16 */
    odd.len = (size_t)odd.N * odd.C;
    check_rmsnorm(odd, "rows of C=13");
}

/* Qwen3's QK-norm: each q head (and each k head) of the fused qkv row
 * normalised over hs with one weight of size hs; v untouched. */
static void per_head_rmsnorm_on_fused_qkv_matches_formula_and_finite_differences(void **state)
{
    (void)state;
    int B = 2, T = 9, NH = 6, NKV = 2, hs = 16;
    size_t RS = (size_t)(NH + 2 * NKV) * hs;
    rows q = {.N = B * T, .H = NH, .C = hs, .stride = RS, .len = B * T * RS, .off0 = 0};
    check_rmsnorm(q, "q heads in qkv");
    rows k = {.N = B * T, .H = NKV, .C = hs, .stride = RS, .len = B * T * RS, .off0 = NH * hs};
    check_rmsnorm(k, "k heads in qkv");
}

/* ---- RoPE ----------------------------------------------------------------- */

static strata_model_shape llama32(void)
{
    strata_model_shape s = {0};
    s.rope_theta = 500000.0;
    s.rope_type = STRATA_ROPE_LLAMA3;
    s.rope_factor = 32.0;
    s.rope_low_freq_factor = 1.0;
    s.rope_high_freq_factor = 4.0;
    s.rope_original_max = 8192;
    return s;
}

static void rope_default_and_linear_frequencies_match_theta_powers(void **state)
{
    (void)state;
    int hs = 64;
    float inv[32], lin[32];
    strata_model_shape s = {0};
    s.rope_theta = 100000.0; /* SmolLM2 */
    strata_rope_inv_freq(inv, hs, &s);
    for (int i = 0; i < hs / 2; i++) {
        double ref = pow(1e5, -2.0 * i / hs);
        assert_true(fabs(inv[i] - ref) <= 2e-7 * ref);
        /* HF's fp32 formula, literally */
        assert_true(inv[i] == 1.0f / powf(100000.0f, (float)(2 * i) / (float)hs));
    }
    assert_true(inv[0] == 1.0f);
    s.rope_theta = 0; /* 10000 */
    strata_rope_inv_freq(inv, hs, &s);
    assert_true(fabs(inv[1] - pow(1e4, -2.0 / 64)) < 1e-7);
    s.rope_type = STRATA_ROPE_LINEAR;
    s.rope_factor = 4.0;
    strata_rope_inv_freq(lin, hs, &s);
    for (int i = 0; i < hs / 2; i++) assert_true(lin[i] == inv[i] / 4.0f);
}

/* Llama 3.2: wavelengths below 8192/4 = 2048 keep their frequency, above
 * 8192 are divided by 32, in between a smooth blend. */
static void rope_llama3_scaling_matches_llama32_formula(void **state)
{
    (void)state;
    int hs = 64;
    float inv[32], base[32];
    strata_model_shape s = llama32();
    strata_rope_inv_freq(inv, hs, &s);
    strata_model_shape d = s;
    d.rope_type = STRATA_ROPE_DEFAULT;
    strata_rope_inv_freq(base, hs, &d);
    int kept = 0, divided = 0, blended = 0;
    for (int i = 0; i < hs / 2; i++) {
        double f = pow(5e5, -2.0 * i / hs), wl = 2 * M_PI / f, ref;
        if (wl < 2048.0) {
            ref = f;
            kept++;
            assert_true(inv[i] == base[i]);
        } else if (wl > 8192.0) {
            ref = f / 32.0;
            divided++;
            assert_true(inv[i] == base[i] / 32.0f);
        } else {
            double sm = (8192.0 / wl - 1.0) / (4.0 - 1.0);
            ref = (1 - sm) * f / 32.0 + sm * f;
            blended++;
        }
        assert_true(fabs(inv[i] - ref) <= 1e-6 * ref);
    }
    printf("llama3 hs=64: %d kept, %d blended, %d divided\n", kept, blended, divided);
    assert_true(kept > 0 && blended > 0 && divided > 0);
    /* hs = 128 too (Llama 3 8B's head) */
    float inv128[64];
    strata_rope_inv_freq(inv128, 128, &s);
    for (int i = 0; i < 64; i++) {
        double f = pow(5e5, -2.0 * i / 128), wl = 2 * M_PI / f, ref = f;
        if (wl > 8192.0)
            ref = f / 32.0;
        else if (wl >= 2048.0) {
            double sm = (8192.0 / wl - 1.0) / 3.0;
            ref = (1 - sm) * f / 32.0 + sm * f;
        }
        assert_true(fabs(inv128[i] - ref) <= 1e-6 * ref);
    }
}

static void rope_rotates_q_and_k_heads_by_position_and_leaves_v(void **state)
{
    (void)state;
    int B = 2, T = 300, NH = 6, NKV = 2, hs = 64, half = 32;
    size_t RS = (size_t)(NH + 2 * NKV) * hs, n = (size_t)B * T * RS;
    float inv[32], *c = malloc(sizeof(float) * T * half), *sn = malloc(sizeof(float) * T * half);
    strata_model_shape s = llama32();
    strata_rope_inv_freq(inv, hs, &s);
    strata_rope_table(c, sn, inv, T, hs);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double a = (double)t * inv[i];
            /* the angle is rounded to fp32 first: at t=300 that moves it by
             * up to 300 * 2^-24 */
            assert_true(fabs(c[t * half + i] - cos(a)) < 3e-5);
            assert_true(fabs(sn[t * half + i] - sin(a)) < 3e-5);
            float f = (float)t * inv[i];
            assert_true(c[t * half + i] == (float)cos((double)f));
        }
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = y[i] = (float)urand();
    strata_rope_forward(y, c, sn, B, T, NH, NKV, hs);
    double e = 0.0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH + 2 * NKV; h++) {
                size_t o = ((size_t)b * T + t) * RS + (size_t)h * hs;
                for (int i = 0; i < half; i++) {
                    double cc = c[t * half + i], ss = sn[t * half + i];
                    double a = x[o + i], bb = x[o + i + half];
                    if (h >= NH + NKV) { /* value heads */
                        assert_true(y[o + i] == x[o + i] && y[o + i + half] == x[o + i + half]);
                        continue;
                    }
                    e = fmax(e, fabs(y[o + i] - (a * cc - bb * ss)));
                    e = fmax(e, fabs(y[o + i + half] - (bb * cc + a * ss)));
                }
            }
    assert_true(e < 1e-6);
    /* position 0 is the identity */
    for (int i = 0; i < (NH + NKV) * hs; i++) assert_true(y[i] == x[i]);
    /* backward is the transpose: <R x, g> = <x, R^T g> */
    float *g = malloc(sizeof(float) * n), *gt = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) g[i] = gt[i] = (float)urand();
    strata_rope_backward(gt, c, sn, B, T, NH, NKV, hs);
    double l = 0.0, r = 0.0, mag = 0.0;
    for (size_t i = 0; i < n; i++) {
        l += (double)y[i] * g[i];
        r += (double)x[i] * gt[i];
        mag += fabs((double)x[i] * gt[i]);
    }
    printf("rope: forward %.2e, <Rx,g> - <x,R^T g> = %.2e of %.2e\n", e, l - r, mag);
    assert_true(fabs(l - r) < 1e-6 * mag);
    /* and R^T R = 1 */
    strata_rope_backward(y, c, sn, B, T, NH, NKV, hs);
    for (size_t i = 0; i < n; i++) assert_true(fabsf(y[i] - x[i]) < 1e-6f);
    free(c);
    free(sn);
    free(x);
    free(y);
    free(g);
    free(gt);
}

/* ---- SwiGLU --------------------------------------------------------------- */

static double silu(double x) { return x / (1.0 + exp(-x)); }

static void swiglu_matches_formula_and_finite_differences(void **state)
{
    (void)state;
    int N = 7, I = 50;
    float *gu = malloc(sizeof(float) * N * 2 * I), *h = malloc(sizeof(float) * N * I);
    float *dh = malloc(sizeof(float) * N * I), *dgu = malloc(sizeof(float) * N * 2 * I);
    for (int i = 0; i < N * 2 * I; i++) {
        gu[i] = (float)(4.0 * urand());
        dgu[i] = NAN; /* overwritten */
    }
    gu[0] = -30.0f; /* saturated */
    gu[1] = 30.0f;
    for (int i = 0; i < N * I; i++) dh[i] = (float)urand();
    strata_swiglu_forward(h, gu, N, I);
    strata_swiglu_backward(dgu, dh, gu, N, I);
    double ef = 0.0, num = 0.0, den = 0.0, eps = 1e-6;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) {
            double g = gu[n * 2 * I + i], u = gu[n * 2 * I + I + i], d = dh[n * I + i];
            double ref = silu(g) * u;
            ef = fmax(ef, fabs(h[n * I + i] - ref) / (fabs(ref) + 1e-6));
            /* L = sum dh * silu(g) u: central differences in g and in u */
            double fg = d * (silu(g + eps) - silu(g - eps)) * u / (2 * eps);
            double fu = d * silu(g) * ((u + eps) - (u - eps)) / (2 * eps);
            num += pow(dgu[n * 2 * I + i] - fg, 2) + pow(dgu[n * 2 * I + I + i] - fu, 2);
            den += fg * fg + fu * fu;
        }
    double eb = sqrt(num / den);
    printf("swiglu: forward %.2e, backward %.2e\n", ef, eb);
    assert_true(ef < 1e-5);
    assert_true(eb < 1e-3);
    assert_true(fabsf(h[0]) < 1e-10f * 30.0f * fabsf(gu[I]) + 1e-11f);
    assert_true(fabsf(h[1] - 30.0f * gu[I + 1]) <= 1e-5f * fabsf(30.0f * gu[I + 1]));
    free(gu);
    free(h);
    free(dh);
    free(dgu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rmsnorm_over_rows_matches_formula_and_finite_differences),
        cmocka_unit_test(per_head_rmsnorm_on_fused_qkv_matches_formula_and_finite_differences),
        cmocka_unit_test(rope_default_and_linear_frequencies_match_theta_powers),
        cmocka_unit_test(rope_llama3_scaling_matches_llama32_formula),
        cmocka_unit_test(rope_rotates_q_and_k_heads_by_position_and_leaves_v),
        cmocka_unit_test(swiglu_matches_formula_and_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
