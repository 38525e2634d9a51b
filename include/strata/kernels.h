/* kernels.h — the layers of GPT-2, forward and backward, on flat fp32 buffers.
 *
 * Dimension names are the same everywhere: B batch, T time, C channels,
 * NH heads, hs = C/NH head size, V vocabulary, Vp padded vocabulary.
 * Every matmul (attention's QK^T and AV included) goes through cblas_sgemm;
 * the element-wise kernels are plain loops that GCC vectorises, threaded with
 * OpenMP (the same pool OpenBLAS's OpenMP build uses). Backward kernels ADD
 * into parameter gradients and, unless said otherwise, into dinp.
 */
#ifndef STRATA_KERNELS_H
#define STRATA_KERNELS_H

#include <stdint.h>

/* out[b,t,:] = wte[inp[b,t],:] + wpe[t,:] */
void strata_encoder_forward(float *out, const uint32_t *inp, const float *wte, const float *wpe,
                            int B, int T, int C);
/* dwte, dwpe (either may be NULL to skip) += scatter of dout. */
void strata_encoder_backward(float *dwte, float *dwpe, const float *dout, const uint32_t *inp,
                             int B, int T, int C);

/* y = (x - mean) / sqrt(var + 1e-5) * w + b per row of C; keeps mean, rstd. */
void strata_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int N, int C);
/* dinp (may be NULL) += ..., dw, db (may be NULL) += ... */
void strata_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int N, int C);

/* out (N, OC) = beta * out + inp (N, C) @ w^T (w is (OC, C)) + bias (OC, may be NULL). */
void strata_matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N,
                           int C, int OC, float beta);
/* dinp (N,C) += dout @ w (if dinp), dw (OC,C) += dout^T @ inp (if dw),
 * dbias (OC) += column sums of dout (if dbias). */
void strata_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, int N, int C, int OC);

/* Causal multi-head attention. qkv (B,T,3C) holds q, k, v side by side;
 * att (B,NH,T,T) keeps the softmax probabilities; out (B,T,C). */
void strata_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C,
                              int NH);
/* dqkv (B,T,3C) is overwritten; datt is scratch of the size of att. */
void strata_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                               const float *att, int B, int T, int C, int NH);

/* GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
void strata_gelu_forward(float *out, const float *inp, int N);
/* dinp = gelu'(inp) * dout (overwrites dinp; dinp may alias dout). */
void strata_gelu_backward(float *dinp, const float *inp, const float *dout, int N);

/* Softmax over the first V of Vp logits per row, cross-entropy against
 * targets. Writes each row's loss into losses (N). When dlogits_scale != 0,
 * overwrites logits with dlogits = (softmax - onehot) * dlogits_scale, with
 * zeros in the padded columns; otherwise leaves logits untouched. */
void strata_crossentropy_forward_backward(float *logits, float *losses, const uint32_t *targets,
                                          int N, int V, int Vp, float dlogits_scale);

/* y = a + b */
void strata_residual_forward(float *out, const float *a, const float *b, int N);
/* y += x */
void strata_add_inplace(float *y, const float *x, long N);

#endif
