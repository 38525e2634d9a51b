/* RMSNorm, RoPE and SwiGLU; see include/strata/llama_kernels.h.
 *
 * Determinism as in kernels.c: the weight gradient is split by column
 * across threads, each column summed over rows in row order. */
#include "strata/llama_kernels.h"

#include <math.h>
#include <string.h>

#include "strata/vecmath.h"

void strata_rmsnorm_forward_strided(float *y, float *r, const float *x, const float *w, int N,
                                    int H, size_t stride, size_t offset, int r_stride, int len,
                                    float eps)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            size_t at = (size_t)n * stride + offset + (size_t)h * len;
            const float *xr = x + at;
            float ss = 0.0f;
            for (int c = 0; c < len; c++) ss += xr[c] * xr[c];
            float rs = 1.0f / sqrtf(ss / (float)len + eps);
            r[(size_t)n * r_stride + h] = rs;
            float *yr = y + at;
            for (int c = 0; c < len; c++) yr[c] = w[c] * (xr[c] * rs);
        }
}

void strata_rmsnorm_backward_strided(float *dx, float *dw, const float *dy, const float *x,
                                     const float *w, const float *r, int N, int H, size_t stride,
                                     size_t offset, int r_stride, int len)
{
#pragma omp parallel
    {
        if (dw) {
#pragma omp for schedule(static) nowait
            for (int c0 = 0; c0 < len; c0 += 16) {
                int c1 = c0 + 16 < len ? c0 + 16 : len;
                for (int n = 0; n < N; n++)
                    for (int h = 0; h < H; h++) {
                        size_t at = (size_t)n * stride + offset + (size_t)h * len;
                        float rs = r[(size_t)n * r_stride + h];
                        for (int c = c0; c < c1; c++) dw[c] += dy[at + c] * x[at + c] * rs;
                    }
            }
        }
        if (dx) {
#pragma omp for collapse(2) schedule(static)
            for (int n = 0; n < N; n++)
                for (int h = 0; h < H; h++) {
                    size_t at = (size_t)n * stride + offset + (size_t)h * len;
                    const float *xr = x + at, *d = dy + at;
                    float rs = r[(size_t)n * r_stride + h], gx = 0.0f;
                    for (int c = 0; c < len; c++) gx += d[c] * w[c] * xr[c];
                    float k = rs * rs * gx / (float)len;
                    float *o = dx + at;
                    for (int c = 0; c < len; c++) o[c] += rs * (d[c] * w[c] - xr[c] * k);
                }
        }
    }
}

void strata_rmsnorm_forward(float *y, float *r, const float *x, const float *w, int N, int C,
                            float eps)
{
    strata_rmsnorm_forward_strided(y, r, x, w, N, 1, (size_t)C, 0, 1, C, eps);
}

void strata_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                             const float *r, int N, int C)
{
    strata_rmsnorm_backward_strided(dx, dw, dy, x, w, r, N, 1, (size_t)C, 0, 1, C);
}

void strata_rope_inv_freq(float *inv_freq, int hs, const strata_model_shape *s)
{
    float base = s->rope_theta > 0 ? (float)s->rope_theta : 10000.0f;
    float factor = (float)s->rope_factor;
    for (int i = 0; i < hs / 2; i++) {
        float inv = 1.0f / powf(base, (float)(2 * i) / (float)hs);
        if (s->rope_type == STRATA_ROPE_LINEAR) inv /= factor;
        if (s->rope_type == STRATA_ROPE_LLAMA3) {
            float orig = (float)s->rope_original_max, lo = (float)s->rope_low_freq_factor,
                  hi = (float)s->rope_high_freq_factor;
            float wl = (float)(2 * M_PI) / inv;
            float scaled = wl > orig / lo ? inv / factor : inv;
            if (!(wl < orig / hi) && !(wl > orig / lo)) {
                float sm = (orig / wl - lo) / (hi - lo);
                scaled = (1 - sm) * scaled / factor + sm * scaled;
            }
            inv = scaled;
        }
        inv_freq[i] = inv;
    }
}

void strata_rope_tables(float *cos_t, float *sin_t, const float *inv_freq, int T, int hs)
{
    int half = hs / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            /* The angle rounded to fp32 as HF has it, then cos and sin of it
             * correctly rounded (not glibc's cosf, which may be 1 ulp off). */
            float f = (float)t * inv_freq[i];
            cos_t[(size_t)t * half + i] = (float)cos((double)f);
            sin_t[(size_t)t * half + i] = (float)sin((double)f);
        }
}

/* sign +1: the forward rotation; -1: its transpose. */
static void rope_apply(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int NH,
                       int NKV, int hs, float sign)
{
    int half = hs / 2, heads = NH + NKV;
    size_t stride = (size_t)(NH + 2 * NKV) * hs;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *c = cos_t + (size_t)t * half, *sn = sin_t + (size_t)t * half;
            float *row = qkv + ((size_t)b * T + t) * stride;
            for (int h = 0; h < heads; h++) {
                float *x = row + (size_t)h * hs;
                for (int i = 0; i < half; i++) {
                    float a = x[i], bb = x[i + half], s = sign * sn[i];
                    x[i] = a * c[i] - bb * s;
                    x[i + half] = bb * c[i] + a * s;
                }
            }
        }
}

void strata_rope_forward(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int NH,
                         int NKV, int hs)
{
    rope_apply(qkv, cos_t, sin_t, B, T, NH, NKV, hs, 1.0f);
}

void strata_rope_backward(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int NH,
                          int NKV, int hs)
{
    rope_apply(dqkv, cos_t, sin_t, B, T, NH, NKV, hs, -1.0f);
}

static inline float sigmoid(float g) { return 1.0f / (1.0f + exp_approx(-g)); }

void strata_swiglu_forward(float *h, const float *gu, int N, int I)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *g = gu + (size_t)n * 2 * I, *u = g + I;
        float *o = h + (size_t)n * I;
        for (int i = 0; i < I; i++) o[i] = g[i] * sigmoid(g[i]) * u[i];
    }
}

/* silu'(g) = sig(g) (1 + g (1 - sig(g))) */
void strata_swiglu_backward(float *dgu, const float *dh, const float *gu, int N, int I)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *g = gu + (size_t)n * 2 * I, *u = g + I, *d = dh + (size_t)n * I;
        float *dg = dgu + (size_t)n * 2 * I, *du = dg + I;
        for (int i = 0; i < I; i++) {
            float sg = sigmoid(g[i]);
            du[i] = d[i] * g[i] * sg;
            dg[i] = d[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
        }
    }
}
