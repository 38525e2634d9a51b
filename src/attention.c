/* Grouped-query attention with recomputed probabilities; see
 * include/strata/attention.h. */
#include "strata/attention.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "strata/gemm.h"
#include "strata/vecmath.h"

/* Query rows per block: S and P of a block are QB x T floats per thread. */
#ifndef STRATA_ATT_QB
#define STRATA_ATT_QB 64
#endif
#define QB STRATA_ATT_QB

/* Per thread: S (QB, T) and dP (QB, T); then the backward's per-query-head
 * dK and dV, (B, NH, T, hs) each. */
static size_t per_thread(int T) { return (size_t)2 * QB * T; }
static size_t head_grads(int B, int T, int NH, int hs) { return (size_t)2 * B * NH * T * hs; }

size_t strata_gqa_attention_scratch_floats(int B, int T, int NH, int NKV, int hs, int threads)
{
    return (size_t)(threads > 0 ? threads : 1) * per_thread(T) + head_grads(B, T, NH, hs);
}

static int threads_that_fit(size_t scratch_floats, size_t reserved, int T)
{
    size_t fit = scratch_floats > reserved ? (scratch_floats - reserved) / per_thread(T) : 0;
    int want = omp_get_max_threads();
    return fit < 1 ? 1 : (size_t)want < fit ? want : (int)fit;
}

/* The key range [j0, r1) of query rows [r0, r1); row t's own keys are
 * [first_key(t), t]. */
static int first_key(int t, int window)
{
    return window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
}

/* S[r0:r1, j0:r1] = scale Q K^T (ld = r1 - j0), then P in place with the
 * row's lse: the forward computes lse, the backward reads it. */
static void scores(strata_precision prec, float *S, const float *q, const float *k, size_t ld_qkv,
                   int r0, int r1, int j0, int hs, float scale)
{
    int n = r1 - j0;
    strata_gemm(prec, r1 - r0, n, hs, scale,
                strata_mat_f32(q + (size_t)r0 * ld_qkv, (int)ld_qkv, 0),
                strata_mat_f32(k + (size_t)j0 * ld_qkv, (int)ld_qkv, 1), 0.0f, S, n);
}

static void softmax_rows(float *S, float *lse, int r0, int r1, int j0, int window)
{
    int n = r1 - j0;
    for (int t = r0; t < r1; t++) {
        float *p = S + (size_t)(t - r0) * n;
        int a = first_key(t, window) - j0, e = t - j0 + 1;
        float mx = row_max(p + a, e - a), sum = 0.0f;
        for (int j = 0; j < a; j++) p[j] = 0.0f;
        for (int j = a; j < e; j++) {
            p[j] = exp_approx(p[j] - mx);
            sum += p[j];
        }
        for (int j = e; j < n; j++) p[j] = 0.0f;
        float inv = 1.0f / sum;
        for (int j = a; j < e; j++) p[j] *= inv;
        lse[t] = mx + logf(sum);
    }
}

void strata_gqa_attention_forward(float *out, float *lse, const float *qkv, int B, int T, int NH,
                                  int NKV, int hs, int window, float scale, float *scratch,
                                  size_t scratch_floats)
{
    strata_gqa_attention_forward_prec(STRATA_FP32, out, lse, qkv, B, T, NH, NKV, hs, window, scale,
                                      scratch, scratch_floats);
}

void strata_gqa_attention_forward_prec(strata_precision prec, float *out, float *lse,
                                       const float *qkv, int B, int T, int NH, int NKV, int hs,
                                       int window, float scale, float *scratch,
                                       size_t scratch_floats)
{
    size_t ld = (size_t)(NH + 2 * NKV) * hs, ld_out = (size_t)NH * hs;
    int rep = NH / NKV;
    int nth = threads_that_fit(scratch_floats, 0, T);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nth)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            float *S = scratch + (size_t)omp_get_thread_num() * per_thread(T);
            const float *base = qkv + (size_t)b * T * ld;
            const float *q = base + (size_t)h * hs, *k = base + (size_t)(NH + h / rep) * hs,
                        *v = base + (size_t)(NH + NKV + h / rep) * hs;
            float *o = out + (size_t)b * T * ld_out + (size_t)h * hs;
            float *l = lse + ((size_t)b * NH + h) * T;
            for (int r0 = 0; r0 < T; r0 += QB) {
                int r1 = r0 + QB < T ? r0 + QB : T, j0 = first_key(r0, window);
                scores(prec, S, q, k, ld, r0, r1, j0, hs, scale);
                softmax_rows(S, l, r0, r1, j0, window);
                /* O[r0:r1] = P V[j0:r1] */
                strata_gemm(prec, r1 - r0, hs, r1 - j0, 1.0f, strata_mat_f32(S, r1 - j0, 0),
                            strata_mat_f32(v + (size_t)j0 * ld, (int)ld, 0), 0.0f,
                            o + (size_t)r0 * ld_out, (int)ld_out);
            }
        }
}

/* One (b, h): dQ into dqkv, this head's dK, dV into dk, dv (T, hs). */
static void head_backward(strata_precision prec, float *dq, float *dk, float *dv, float *S,
                          float *dP, const float *q, const float *k, const float *v, const float *o,
                          const float *dout, const float *l, size_t ld, size_t ld_out, int T,
                          int hs, int window, float scale)
{
    memset(dk, 0, (size_t)T * hs * sizeof(float));
    memset(dv, 0, (size_t)T * hs * sizeof(float));
    for (int r0 = 0; r0 < T; r0 += QB) {
        int r1 = r0 + QB < T ? r0 + QB : T, j0 = first_key(r0, window), n = r1 - j0, m = r1 - r0;
        scores(prec, S, q, k, ld, r0, r1, j0, hs, scale);
        /* P = exp(S - lse) on each row's keys, 0 elsewhere */
        for (int t = r0; t < r1; t++) {
            float *p = S + (size_t)(t - r0) * n;
            int a = first_key(t, window) - j0, e = t - j0 + 1;
            for (int j = 0; j < a; j++) p[j] = 0.0f;
            for (int j = a; j < e; j++) p[j] = exp_approx(p[j] - l[t]);
            for (int j = e; j < n; j++) p[j] = 0.0f;
        }
        /* dV[j0:r1] += P^T dO[r0:r1]; dP = dO V^T */
        const float *dO = dout + (size_t)r0 * ld_out;
        strata_gemm(prec, n, hs, m, 1.0f, strata_mat_f32(S, n, 1),
                    strata_mat_f32(dO, (int)ld_out, 0), 1.0f, dv + (size_t)j0 * hs, hs);
        strata_gemm(prec, m, n, hs, 1.0f, strata_mat_f32(dO, (int)ld_out, 0),
                    strata_mat_f32(v + (size_t)j0 * ld, (int)ld, 1), 0.0f, dP, n);
        /* dS = P (dP - D) with D[t] = dO[t] . O[t], into dP */
        for (int t = r0; t < r1; t++) {
            const float *dot = dout + (size_t)t * ld_out, *ot = o + (size_t)t * ld_out;
            float D = 0.0f;
            for (int c = 0; c < hs; c++) D += dot[c] * ot[c];
            float *p = S + (size_t)(t - r0) * n, *d = dP + (size_t)(t - r0) * n;
            for (int j = 0; j < n; j++) d[j] = p[j] * (d[j] - D);
        }
        /* dQ[r0:r1] = scale dS K[j0:r1]; dK[j0:r1] += scale dS^T Q[r0:r1] */
        strata_gemm(prec, m, hs, n, scale, strata_mat_f32(dP, n, 0),
                    strata_mat_f32(k + (size_t)j0 * ld, (int)ld, 0), 0.0f, dq + (size_t)r0 * ld,
                    (int)ld);
        strata_gemm(prec, n, hs, m, scale, strata_mat_f32(dP, n, 1),
                    strata_mat_f32(q + (size_t)r0 * ld, (int)ld, 0), 1.0f, dk + (size_t)j0 * hs,
                    hs);
    }
}

void strata_gqa_attention_backward(float *dqkv, const float *dout, const float *qkv,
                                   const float *out, const float *lse, int B, int T, int NH,
                                   int NKV, int hs, int window, float scale, float *scratch,
                                   size_t scratch_floats)
{
    strata_gqa_attention_backward_prec(STRATA_FP32, dqkv, dout, qkv, out, lse, B, T, NH, NKV, hs,
                                       window, scale, scratch, scratch_floats);
}

void strata_gqa_attention_backward_prec(strata_precision prec, float *dqkv, const float *dout,
                                        const float *qkv, const float *out, const float *lse, int B,
                                        int T, int NH, int NKV, int hs, int window, float scale,
                                        float *scratch, size_t scratch_floats)
{
    size_t ld = (size_t)(NH + 2 * NKV) * hs, ld_out = (size_t)NH * hs;
    int rep = NH / NKV;
    size_t hg = head_grads(B, T, NH, hs);
    float *dk_heads = scratch, *dv_heads = scratch + hg / 2, *work = scratch + hg;
    int nth = threads_that_fit(scratch_floats, hg, T);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nth)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            float *S = work + (size_t)omp_get_thread_num() * per_thread(T),
                  *dP = S + QB * (size_t)T;
            const float *base = qkv + (size_t)b * T * ld;
            size_t bh = ((size_t)b * NH + h) * T * hs;
            head_backward(prec, dqkv + (size_t)b * T * ld + (size_t)h * hs, dk_heads + bh,
                          dv_heads + bh, S, dP, base + (size_t)h * hs,
                          base + (size_t)(NH + h / rep) * hs,
                          base + (size_t)(NH + NKV + h / rep) * hs,
                          out + (size_t)b * T * ld_out + (size_t)h * hs,
                          dout + (size_t)b * T * ld_out + (size_t)h * hs,
                          lse + ((size_t)b * NH + h) * T, ld, ld_out, T, hs, window, scale);
        }
        /* dK, dV of kv head g: the sum over its query heads, in head order. */
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int g = 0; g < NKV; g++) {
                float *dk = dqkv + ((size_t)b * T + t) * ld + (size_t)(NH + g) * hs;
                float *dv = dk + (size_t)NKV * hs;
                for (int c = 0; c < hs; c++) dk[c] = dv[c] = 0.0f;
                for (int r = 0; r < rep; r++) {
                    size_t at = (((size_t)b * NH + g * rep + r) * T + t) * hs;
                    for (int c = 0; c < hs; c++) {
                        dk[c] += dk_heads[at + c];
                        dv[c] += dv_heads[at + c];
                    }
                }
            }
}
