/* The layers of GPT-2 as flat-buffer kernels; see include/strata/kernels.h.
 *
 * Determinism: every reduction runs in a fixed order that depends neither on
 * the thread count nor on scheduling. Column sums (bias and LayerNorm weight
 * gradients, embedding scatters) are split by column across threads, each
 * column summed over rows in order; nothing uses atomics or critical
 * sections. That is what makes a resumed run bitwise identical.
 */
#include "strata/kernels.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "strata/gemm.h"
#include "strata/rng.h"
#include "strata/vecmath.h"

#ifdef __AVX__
#include <immintrin.h>
#endif

#define LN_EPS 1e-5f

/* tanh(u) = 1 - 2 / (exp(2u) + 1), exact at both saturations. */
static inline float tanh_approx(float u) { return 1.0f - 2.0f / (exp_approx(2.0f * u) + 1.0f); }

void strata_encoder_forward(float *out, const uint32_t *inp, const float *wte, const float *wpe,
                            int B, int T, int C)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            const float *e = wte + (size_t)inp[b * T + t] * C;
            if (!wpe) {
                memcpy(o, e, (size_t)C * sizeof(float));
                continue;
            }
            const float *p = wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
        }
}

/* Split by column: each thread owns a range of channels for every token, so
 * the scatter into dwte has no races and sums each row in (b, t) order. */
void strata_encoder_backward(float *dwte, float *dwpe, const float *dout, const uint32_t *inp,
                             int B, int T, int C)
{
#pragma omp parallel
    {
#pragma omp for schedule(static) nowait
        for (int c0 = 0; c0 < C; c0 += 16) {
            int c1 = c0 + 16 < C ? c0 + 16 : C;
            for (int b = 0; b < B && dwte; b++)
                for (int t = 0; t < T; t++) {
                    const float *d = dout + ((size_t)b * T + t) * C;
                    float *w = dwte + (size_t)inp[b * T + t] * C;
                    for (int c = c0; c < c1; c++) w[c] += d[c];
                }
        }
#pragma omp for schedule(static)
        for (int t = 0; t < T; t++) {
            if (!dwpe) continue;
            float *p = dwpe + (size_t)t * C;
            for (int b = 0; b < B; b++) {
                const float *d = dout + ((size_t)b * T + t) * C;
                for (int c = 0; c < C; c++) p[c] += d[c];
            }
        }
    }
}

/* A row's mean m and 1 / sqrt(var + eps), both precisions' forward alike. */
static inline float layernorm_stats(const float *x, int C, float *mean)
{
    float m = 0.0f;
    for (int c = 0; c < C; c++) m += x[c];
    m /= C;
    float v = 0.0f;
    for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
    *mean = m;
    return 1.0f / sqrtf(v / C + LN_EPS);
}

void strata_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int N, int C)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float m, s = layernorm_stats(x, C, &m);
        float *y = out + (size_t)n * C;
        for (int c = 0; c < C; c++) y[c] = (x[c] - m) * s * w[c] + b[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

void strata_layernorm_forward_bf16(strata_bf16 *out, float *mean, float *rstd, const float *inp,
                                   const float *w, const float *b, int N, int C)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float m, s = layernorm_stats(x, C, &m);
        strata_bf16 *y = out + (size_t)n * C;
        for (int c = 0; c < C; c++) y[c] = strata_bf16_from_float((x[c] - m) * s * w[c] + b[c]);
        mean[n] = m;
        rstd[n] = s;
    }
}

/* With xhat = (x - mean) * rstd and g = dout * w:
 *   dinp = rstd * (g - mean(g) - xhat * mean(g * xhat))
 *   dw += sum_n dout * xhat,  db += sum_n dout */
void strata_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int N, int C)
{
#pragma omp parallel
    {
        if (dw || db) {
#pragma omp for schedule(static) nowait
            for (int c0 = 0; c0 < C; c0 += 16) {
                int c1 = c0 + 16 < C ? c0 + 16 : C;
                for (int n = 0; n < N; n++) {
                    const float *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
                    for (int c = c0; c < c1; c++) {
                        if (dw) dw[c] += d[c] * (x[c] - mean[n]) * rstd[n];
                        if (db) db[c] += d[c];
                    }
                }
            }
        }
        if (dinp) {
#pragma omp for schedule(static)
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
                float m = mean[n], s = rstd[n];
                float g_mean = 0.0f, gx_mean = 0.0f;
                for (int c = 0; c < C; c++) {
                    float g = d[c] * w[c];
                    g_mean += g;
                    gx_mean += g * (x[c] - m) * s;
                }
                g_mean /= C;
                gx_mean /= C;
                float *di = dinp + (size_t)n * C;
                for (int c = 0; c < C; c++)
                    di[c] += s * (d[c] * w[c] - g_mean - (x[c] - m) * s * gx_mean);
            }
        }
    }
}

void strata_matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N,
                           int C, int OC, float beta)
{
    strata_linear_forward(STRATA_FP32, out, inp, 0, w, NULL, bias, N, C, OC, beta);
}

void strata_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, int N, int C, int OC)
{
    strata_linear_backward(STRATA_FP32, dinp, dw, dbias, dout, inp, 0, w, NULL, N, C, OC);
}

static strata_mat input_mat(const void *inp, int inp_bf16, int ld, int trans)
{
    return inp_bf16 ? strata_mat_bf16(inp, ld, trans) : strata_mat_f32(inp, ld, trans);
}

static strata_mat weight_mat(const float *w, const strata_bf16 *w16, int ld, int trans)
{
    return w16 ? strata_mat_bf16(w16, ld, trans) : strata_mat_f32(w, ld, trans);
}

void strata_linear_forward(strata_precision prec, float *out, const void *inp, int inp_bf16,
                           const float *w, const strata_bf16 *w16, const float *bias, int N, int C,
                           int OC, float beta)
{
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            float *o = out + (size_t)n * OC;
            if (beta == 0.0f)
                for (int j = 0; j < OC; j++) o[j] = bias[j];
            else
                for (int j = 0; j < OC; j++) o[j] = beta * o[j] + bias[j];
        }
        beta = 1.0f;
    }
    strata_gemm(prec, N, OC, C, 1.0f, input_mat(inp, inp_bf16, C, 0), weight_mat(w, w16, C, 1),
                beta, out, OC);
}

void strata_linear_backward(strata_precision prec, float *dinp, float *dw, float *dbias,
                            const float *dout, const void *inp, int inp_bf16, const float *w,
                            const strata_bf16 *w16, int N, int C, int OC)
{
    if (dinp)
        strata_gemm(prec, N, C, OC, 1.0f, strata_mat_f32(dout, OC, 0), weight_mat(w, w16, C, 0),
                    1.0f, dinp, C);
    if (dw)
        strata_gemm(prec, OC, C, N, 1.0f, strata_mat_f32(dout, OC, 1),
                    input_mat(inp, inp_bf16, C, 0), 1.0f, dw, C);
    if (dbias) {
#pragma omp parallel for schedule(static)
        for (int j0 = 0; j0 < OC; j0 += 64) {
            int j1 = j0 + 64 < OC ? j0 + 64 : OC;
            for (int n = 0; n < N; n++) {
                const float *d = dout + (size_t)n * OC;
                for (int j = j0; j < j1; j++) dbias[j] += d[j];
            }
        }
    }
}

/* Causal attention works in row blocks of ATT_BLOCK queries: block [r0, r1)
 * only sees keys [0, r1), so the sgemms skip most of the masked upper
 * triangle (T=256: 62% of the full square's work). */
#define ATT_BLOCK 64

/* Dropout on a span of a mask row: elements pos0 .. pos0+n-1 of the row
 * times 0 or s. Word by word, so the inner loops have one word and a fixed
 * shift per lane and vectorise (a span may start anywhere in a word). */
static inline void mask_span_copy(float *dst, const float *src, const uint64_t *row, long pos0,
                                  long n, float s)
{
    for (long j = 0; j < n;) {
        long pos = pos0 + j, k0 = pos & 63, m = 64 - k0 < n - j ? 64 - k0 : n - j;
        uint64_t word = row[pos >> 6] >> k0;
        float *restrict y = dst + j;
        const float *restrict x = src + j;
        for (long k = 0; k < m; k++) y[k] = x[k] * ((float)(int32_t)((word >> k) & 1) * s);
        j += m;
    }
}

static inline void mask_span_inplace(float *y, const uint64_t *row, long pos0, long n, float s)
{
    for (long j = 0; j < n;) {
        long pos = pos0 + j, k0 = pos & 63, m = 64 - k0 < n - j ? 64 - k0 : n - j;
        uint64_t word = row[pos >> 6] >> k0;
        for (long k = 0; k < m; k++) y[j + k] *= (float)(int32_t)((word >> k) & 1) * s;
        j += m;
    }
}

void strata_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH)
{
    strata_attention_forward_dropout(out, att, NULL, qkv, B, T, C, NH, NULL);
}

void strata_attention_forward_dropout(float *out, float *att, float *scratch, const float *qkv,
                                      int B, int T, int C, int NH, const strata_dropout *d)
{
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
            float *P = att + ((size_t)b * NH + h) * T * T;
            float *o = out + (size_t)b * T * C + h * hs;
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
                /* S[r0:r1, 0:r1] = scale * Q[r0:r1] K[0:r1]^T */
                strata_gemm(STRATA_FP32, r1 - r0, r1, hs, scale,
                            strata_mat_f32(q + (size_t)r0 * C3, C3, 0), strata_mat_f32(k, C3, 1),
                            0.0f, P + (size_t)r0 * T, T);
                for (int t = r0; t < r1; t++) {
                    float *p = P + (size_t)t * T;
                    float mx = row_max(p, t + 1);
                    float sum = 0.0f;
                    for (int j = 0; j <= t; j++) {
                        p[j] = exp_approx(p[j] - mx);
                        sum += p[j];
                    }
                    float inv = 1.0f / sum;
                    for (int j = 0; j <= t; j++) p[j] *= inv;
                    for (int j = t + 1; j < T; j++) p[j] = 0.0f;
                }
                /* O[r0:r1] = P[r0:r1, 0:r1] V[0:r1], with dropout the dropped
                 * probabilities (in scratch: att keeps P for the backward). */
                const float *A = P;
                if (d) {
                    float *Pd = scratch + ((size_t)b * NH + h) * T * T;
                    const uint64_t *row = d->words + (size_t)b * d->words_per_row;
                    for (int t = r0; t < r1; t++)
                        mask_span_copy(Pd + (size_t)t * T, P + (size_t)t * T, row,
                                       ((long)h * T + t) * T, r1, d->scale);
                    A = Pd;
                }
                strata_gemm(STRATA_FP32, r1 - r0, hs, r1, 1.0f,
                            strata_mat_f32(A + (size_t)r0 * T, T, 0), strata_mat_f32(v, C3, 0),
                            0.0f, o + (size_t)r0 * C, C);
            }
        }
}

/* dP = dO V^T, dV = P^T dO, dS = P * (dP - rowsum(dP * P)),
 * dQ = scale dS K, dK = scale dS^T Q; all restricted to the causal blocks. */
void strata_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                               const float *att, int B, int T, int C, int NH)
{
    strata_attention_backward_dropout(dqkv, datt, dout, qkv, att, B, T, C, NH, NULL);
}

/* With dropout, O = Pd V where Pd = P * mask * scale: dV = Pd^T dO, and
 * dP = (dO V^T) * mask * scale goes through the softmax with the undropped P.
 * Pd is rebuilt in the dP rows first, used for dV, then overwritten by dP. */
void strata_attention_backward_dropout(float *dqkv, float *datt, const float *dout,
                                       const float *qkv, const float *att, int B, int T, int C,
                                       int NH, const strata_dropout *d)
{
    int hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + (size_t)b * T * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
            const float *P = att + ((size_t)b * NH + h) * T * T;
            float *dP = datt + ((size_t)b * NH + h) * T * T;
            const float *dO = dout + (size_t)b * T * C + h * hs;
            for (int t = 0; t < T; t++)
                for (int i = 0; i < hs; i++) {
                    dq[(size_t)t * C3 + i] = 0.0f;
                    dk[(size_t)t * C3 + i] = 0.0f;
                    dv[(size_t)t * C3 + i] = 0.0f;
                }
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, nr = r1 - r0;
                const float *Pr = P + (size_t)r0 * T;
                float *dPr = dP + (size_t)r0 * T;
                if (!d) {
                    strata_gemm(STRATA_FP32, nr, r1, hs, 1.0f,
                                strata_mat_f32(dO + (size_t)r0 * C, C, 0), strata_mat_f32(v, C3, 1),
                                0.0f, dPr, T);
                    strata_gemm(STRATA_FP32, r1, hs, nr, 1.0f, strata_mat_f32(Pr, T, 1),
                                strata_mat_f32(dO + (size_t)r0 * C, C, 0), 1.0f, dv, C3);
                } else {
                    const uint64_t *row = d->words + (size_t)b * d->words_per_row;
                    for (int t = r0; t < r1; t++)
                        mask_span_copy(dP + (size_t)t * T, P + (size_t)t * T, row,
                                       ((long)h * T + t) * T, r1, d->scale);
                    strata_gemm(STRATA_FP32, r1, hs, nr, 1.0f, strata_mat_f32(dPr, T, 1),
                                strata_mat_f32(dO + (size_t)r0 * C, C, 0), 1.0f, dv, C3);
                    strata_gemm(STRATA_FP32, nr, r1, hs, 1.0f,
                                strata_mat_f32(dO + (size_t)r0 * C, C, 0), strata_mat_f32(v, C3, 1),
                                0.0f, dPr, T);
                    for (int t = r0; t < r1; t++)
                        mask_span_inplace(dP + (size_t)t * T, row, ((long)h * T + t) * T, t + 1,
                                          d->scale);
                }
                for (int t = r0; t < r1; t++) {
                    const float *p = P + (size_t)t * T;
                    float *d = dP + (size_t)t * T;
                    float dot = 0.0f;
                    for (int j = 0; j <= t; j++) dot += d[j] * p[j];
                    for (int j = 0; j <= t; j++) d[j] = p[j] * (d[j] - dot);
                    for (int j = t + 1; j < r1; j++) d[j] = 0.0f;
                }
                strata_gemm(STRATA_FP32, nr, hs, r1, scale, strata_mat_f32(dPr, T, 0),
                            strata_mat_f32(k, C3, 0), 0.0f, dq + (size_t)r0 * C3, C3);
                strata_gemm(STRATA_FP32, r1, hs, nr, scale, strata_mat_f32(dPr, T, 1),
                            strata_mat_f32(q + (size_t)r0 * C3, C3, 0), 1.0f, dk, C3);
            }
        }
}

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */

void strata_gelu_forward(float *out, const float *inp, int N)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanh_approx(GELU_K * (x + 0.044715f * x * x * x)));
    }
}

void strata_gelu_forward_bf16(strata_bf16 *out, const float *inp, int N)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float x = inp[i];
        out[i] = strata_bf16_from_float(0.5f * x *
                                        (1.0f + tanh_approx(GELU_K * (x + 0.044715f * x * x * x))));
    }
}

void strata_gelu_backward(float *dinp, const float *inp, const float *dout, int N)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float x = inp[i];
        float th = tanh_approx(GELU_K * (x + 0.044715f * x * x * x));
        float dth = (1.0f - th * th) * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = (0.5f * (1.0f + th) + 0.5f * x * dth) * dout[i];
    }
}

/* loss = logsumexp(x) - x[target]; dlogits = (softmax(x) - onehot) * scale.
 * One exp pass: the exponentials are stored in place, then scaled. */
void strata_crossentropy_forward_backward(float *logits, float *losses, const uint32_t *targets,
                                          int N, int V, int Vp, float dlogits_scale)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *x = logits + (size_t)n * Vp;
        float mx = row_max(x, V);
        float target_logit = x[targets[n]];
        float sum = 0.0f;
        if (dlogits_scale == 0.0f) {
            for (int j = 0; j < V; j++) sum += exp_approx(x[j] - mx);
            losses[n] = logf(sum) + mx - target_logit;
            continue;
        }
        for (int j = 0; j < V; j++) {
            x[j] = exp_approx(x[j] - mx);
            sum += x[j];
        }
        losses[n] = logf(sum) + mx - target_logit;
        float k = dlogits_scale / sum;
        for (int j = 0; j < V; j++) x[j] *= k;
        for (int j = V; j < Vp; j++) x[j] = 0.0f;
        x[targets[n]] -= dlogits_scale;
    }
}

void strata_residual_forward(float *out, const float *a, const float *b, int N)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) out[i] = a[i] + b[i];
}

void strata_add_inplace(float *y, const float *x, long N)
{
#pragma omp parallel for schedule(static)
    for (long i = 0; i < N; i++) y[i] += x[i];
}

/* Four 16-bit fields per SplitMix64 draw, sixteen draws per 64-bit word.
 * Words are independent, so any split across threads gives the same bits. */
void strata_dropout_generate(uint64_t *words, long words_per_row, const uint64_t *keys, int rows,
                             long row_len, uint32_t threshold)
{
    long n_words = (row_len + 63) / 64;
#pragma omp parallel for collapse(2) schedule(static)
    for (int r = 0; r < rows; r++)
        for (long w = 0; w < n_words; w++) {
            uint64_t key = keys[r], word = 0;
            for (int g = 0; g < 16; g++) {
                uint64_t v = strata_mix64(key + (uint64_t)(16 * w + g) * 0x9e3779b97f4a7c15ull);
                uint64_t bits = (uint64_t)((v & 0xffff) >= threshold) |
                                (uint64_t)(((v >> 16) & 0xffff) >= threshold) << 1 |
                                (uint64_t)(((v >> 32) & 0xffff) >= threshold) << 2 |
                                (uint64_t)((v >> 48) >= threshold) << 3;
                word |= bits << (4 * g);
            }
            long left = row_len - 64 * w;
            if (left < 64) word &= (1ull << left) - 1;
            words[(size_t)r * words_per_row + w] = word;
        }
}

void strata_dropout_apply(float *out, const float *inp, const strata_dropout *d, int rows,
                          long row_len)
{
    /* Chunks of 4096 elements (64 words) per task. */
    long n_chunks = (row_len + 4095) / 4096;
    const float s = d->scale;
#pragma omp parallel for collapse(2) schedule(static)
    for (int r = 0; r < rows; r++)
        for (long c = 0; c < n_chunks; c++) {
            long i0 = 4096 * c, n = row_len - i0 < 4096 ? row_len - i0 : 4096;
            const uint64_t *row = d->words + (size_t)r * d->words_per_row;
            size_t at = (size_t)r * row_len + i0;
            if (out == inp)
                mask_span_inplace(out + at, row, i0, n, s);
            else
                mask_span_copy(out + at, inp + at, row, i0, n, s);
        }
}

/* Rows of the vocabulary per G block: G (LM_HEAD_ROWS, C) stays small while
 * each sgemm is still large (LM_HEAD_ROWS x C x N). */
#define LM_HEAD_ROWS 2048

size_t strata_lm_head_scratch_floats(int N, int C)
{
    return 4 * (size_t)C /* two double sums */ + (size_t)N * C /* xhat */ +
           (size_t)LM_HEAD_ROWS * (C + 1) /* G, s */;
}

/* Determinism: s sums each column over rows in order (split by column), the
 * sums over v run in block order and within a block in row order, each
 * thread owning a range of channels; in double, as they add Vp terms. */
void strata_lm_head_backward(float *dwte, float *dw, float *db, const float *dlogits,
                             const float *inp, const float *mean, const float *rstd,
                             const float *wte, const float *w, const float *b, int N, int C, int Vp,
                             float *scratch)
{
    double *sum_w = (double *)scratch, *sum_b = sum_w + C;
    float *xhat = (float *)(sum_b + C), *G = xhat + (size_t)N * C;
    float *s = G + (size_t)LM_HEAD_ROWS * C;
    for (int c = 0; c < C; c++) sum_w[c] = sum_b[c] = 0.0;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *xh = xhat + (size_t)n * C;
        for (int c = 0; c < C; c++) xh[c] = (x[c] - mean[n]) * rstd[n];
    }
    for (int v0 = 0; v0 < Vp; v0 += LM_HEAD_ROWS) {
        int nv = Vp - v0 < LM_HEAD_ROWS ? Vp - v0 : LM_HEAD_ROWS;
#pragma omp parallel for schedule(static)
        for (int j0 = 0; j0 < nv; j0 += 64) {
            int j1 = j0 + 64 < nv ? j0 + 64 : nv;
            for (int j = j0; j < j1; j++) s[j] = 0.0f;
            for (int n = 0; n < N; n++) {
                const float *d = dlogits + (size_t)n * Vp + v0;
                for (int j = j0; j < j1; j++) s[j] += d[j];
            }
        }
        strata_gemm(STRATA_FP32, nv, C, N, 1.0f, strata_mat_f32(dlogits + v0, Vp, 1),
                    strata_mat_f32(xhat, C, 0), 0.0f, G, C);
#pragma omp parallel for schedule(static)
        for (int c0 = 0; c0 < C; c0 += 16) {
            int c1 = c0 + 16 < C ? c0 + 16 : C;
            for (int j = 0; j < nv; j++) {
                const float *g = G + (size_t)j * C, *e = wte + (size_t)(v0 + j) * C;
                for (int c = c0; c < c1; c++) {
                    sum_w[c] += (double)e[c] * g[c];
                    sum_b[c] += (double)e[c] * s[j];
                }
                if (dwte) {
                    float *dwr = dwte + (size_t)(v0 + j) * C;
                    for (int c = c0; c < c1; c++) dwr[c] += g[c] * w[c] + s[j] * b[c];
                }
            }
        }
    }
    for (int c = 0; c < C; c++) {
        if (dw) dw[c] += (float)sum_w[c];
        if (db) db[c] += (float)sum_b[c];
    }
}
