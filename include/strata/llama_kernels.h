/* llama_kernels.h — the LLaMA family's element-wise layers on flat fp32
 * buffers, forward and backward: RMSNorm, rotary position embeddings and
 * SwiGLU. Same conventions as kernels.h: backward kernels ADD into
 * parameter gradients and into dinp unless said otherwise; every reduction
 * runs in a fixed order whatever the thread count.
 *
 * Semantics are Hugging Face transformers' (../shared/MODELS.md): RMSNorm
 * in fp32 with the weight applied after the normalisation; RoPE in the
 * rotate_half layout (dimension i pairs with i + hs/2); SwiGLU silu(gate) *
 * up.
 */
#ifndef STRATA_LLAMA_KERNELS_H
#define STRATA_LLAMA_KERNELS_H

#include <stddef.h>

#include "strata/model.h"

/* y = w * x * r, r = (mean(x^2) + eps)^-1/2, over N rows of C floats; r (N)
 * is kept for the backward. */
void strata_rmsnorm_forward(float *y, float *r, const float *x, const float *w, int N, int C,
                            float eps);
/* With g = dy * w: dx += r * (g - x * r^2 * mean(g * x)) (dx may be NULL),
 * dw += sum over rows of dy * x * r. */
void strata_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                             const float *r, int N, int C);

/* The same over H rows of len floats inside each of N rows of a wider
 * buffer: row (n, h) starts at n * stride + offset + h * len in x, y, dx
 * and dy alike, and its r is r[n * r_stride + h]. One weight (len) serves
 * all H (Qwen3's per-head QK-norm on the heads of a fused qkv buffer). */
void strata_rmsnorm_forward_strided(float *y, float *r, const float *x, const float *w, int N,
                                    int H, size_t stride, size_t offset, int r_stride, int len,
                                    float eps);
void strata_rmsnorm_backward_strided(float *dx, float *dw, const float *dy, const float *x,
                                     const float *w, const float *r, int N, int H, size_t stride,
                                     size_t offset, int r_stride, int len);

/* inv_freq[i] for i < hs/2, as transformers' rope init functions compute
 * it in fp32: theta^(-2i/hs) (theta 0: 10000), then for rope_type linear / factor, and for
 * llama3 (wl = 2 pi / inv_freq, orig = rope_original_max): wl < orig/high
 * kept, wl > orig/low divided by factor, else interpolated with
 * s = (orig/wl - low) / (high - low): (1 - s) inv/factor + s inv. */
void strata_rope_inv_freq(float *inv_freq, int hs, const strata_model_shape *s);
/* cos/sin (T, hs/2) of t * inv_freq[i] rounded to fp32 (as HF's rotary
 * embedding computes the angle), each correctly rounded. */
void strata_rope_tables(float *cos_t, float *sin_t, const float *inv_freq, int T, int hs);
/* In place on the query heads (NH) and key heads (NKV) of a fused qkv
 * buffer (B, T, (NH + 2 NKV) hs) (attention.h's layout), for position t:
 * x[i]' = x[i] c - x[i+hs/2] s, x[i+hs/2]' = x[i+hs/2] c + x[i] s. */
void strata_rope_forward(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int NH,
                         int NKV, int hs);
/* The transpose rotation, in place on dqkv of the same layout. */
void strata_rope_backward(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int NH,
                          int NKV, int hs);

/* gu is (N, 2I): each row the gate projection's I outputs, then up's.
 * h (N, I) = silu(gate) * up, silu(g) = g / (1 + e^-g). */
void strata_swiglu_forward(float *h, const float *gu, int N, int I);
/* dgu (N, 2I) is OVERWRITTEN: d gate = dh * up * silu'(gate), d up = dh *
 * silu(gate). */
void strata_swiglu_backward(float *dgu, const float *dh, const float *gu, int N, int I);

#endif
