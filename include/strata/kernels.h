/* kernels.h — the layers of GPT-2, forward and backward, on flat fp32 buffers.
 *
 * Dimension names are the same everywhere: B batch, T time, C channels,
 * NH heads, hs = C/NH head size, V vocabulary, Vp padded vocabulary.
 * Every matmul (attention's QK^T and AV included) goes through strata_gemm
 * (gemm.h), in fp32 unless a strata_linear_* call names another precision;
 * the element-wise kernels are plain loops that GCC vectorises, threaded with
 * OpenMP (the same pool OpenBLAS's OpenMP build uses). Backward kernels ADD
 * into parameter gradients and, unless said otherwise, into dinp.
 */
#ifndef STRATA_KERNELS_H
#define STRATA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "strata/gemm.h"

/* out[b,t,:] = wte[inp[b,t],:] + wpe[t,:] (wpe NULL: no position embedding) */
void strata_encoder_forward(float *out, const uint32_t *inp, const float *wte, const float *wpe,
                            int B, int T, int C);
/* dwte, dwpe (either may be NULL to skip) += scatter of dout. */
void strata_encoder_backward(float *dwte, float *dwpe, const float *dout, const uint32_t *inp,
                             int B, int T, int C);

/* y = (x - mean) / sqrt(var + 1e-5) * w + b per row of C; keeps mean, rstd. */
void strata_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int N, int C);
/* The same, the output rounded to bf16 (an operand that only feeds matmuls). */
void strata_layernorm_forward_bf16(strata_bf16 *out, float *mean, float *rstd, const float *inp,
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
/* The two above in a precision (gemm.h): inp points at bf16 when inp_bf16,
 * w16 is the bf16 copy of w (NULL: w itself, rounded on the way in bf16).
 * Bias and its gradient stay fp32. strata_matmul_* are these in fp32. */
void strata_linear_forward(strata_precision prec, float *out, const void *inp, int inp_bf16,
                           const float *w, const strata_bf16 *w16, const float *bias, int N, int C,
                           int OC, float beta);
void strata_linear_backward(strata_precision prec, float *dinp, float *dw, float *dbias,
                            const float *dout, const void *inp, int inp_bf16, const float *w,
                            const strata_bf16 *w16, int N, int C, int OC);

/* Causal multi-head attention. qkv (B,T,3C) holds q, k, v side by side;
 * att (B,NH,T,T) keeps the softmax probabilities; out (B,T,C). */
void strata_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C,
                              int NH);
/* dqkv (B,T,3C) is overwritten; datt is scratch of the size of att. */
void strata_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                               const float *att, int B, int T, int C, int NH);

/* GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
void strata_gelu_forward(float *out, const float *inp, int N);
void strata_gelu_forward_bf16(strata_bf16 *out, const float *inp, int N);
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

/* ---- dropout ------------------------------------------------------------
 * A mask is a set of rows of bits: row r starts at words + r * words_per_row
 * and bit i of a row (word i / 64, bit i % 64) is 1 where element i is kept.
 * Kept elements are multiplied by scale = 1/(1-p), dropped ones by 0. */
typedef struct strata_dropout {
    const uint64_t *words;
    long words_per_row;
    float scale;
} strata_dropout;

/* Writes the mask of `rows` rows of row_len elements, bits past row_len zero.
 * Element i of row r is kept iff 16-bit field (i % 4) of draw i / 4 of the row
 * is >= threshold (p * 65536), where draw g = strata_mix64(keys[r] + g *
 * 0x9e3779b97f4a7c15): SplitMix64's stream seeded with the row's key. So a
 * bit is a pure function of (keys[r], i), whatever the thread count. */
void strata_dropout_generate(uint64_t *words, long words_per_row, const uint64_t *keys, int rows,
                             long row_len, uint32_t threshold);
/* out = inp * mask * scale (out may alias inp): dropout's forward on
 * activations and, applied to their gradient, its backward. */
void strata_dropout_apply(float *out, const float *inp, const strata_dropout *d, int rows,
                          long row_len);
/* Attention with dropout on the probabilities, after the softmax and before
 * AV. att keeps the undropped probabilities (the softmax backward needs
 * them); the mask has one row per sequence, bit (h*T + t)*T + j for
 * P[b,h,t,j]; scratch (B,NH,T,T) holds the dropped probabilities during the
 * call. With d NULL these are strata_attention_forward/backward. */
void strata_attention_forward_dropout(float *out, float *att, float *scratch, const float *qkv,
                                      int B, int T, int C, int NH, const strata_dropout *d);
/* dP is taken w.r.t. the dropped probabilities, masked and scaled back onto
 * the undropped ones, then through the softmax as usual. */
void strata_attention_backward_dropout(float *dqkv, float *datt, const float *dout,
                                       const float *qkv, const float *att, int B, int T, int C,
                                       int NH, const strata_dropout *d);

/* ---- feature extraction ------------------------------------------------
 * The tied lm head and the final LayerNorm's weight and bias, backward,
 * without the (N, C) gradient w.r.t. the LayerNorm's input (which only the
 * blocks below would need). With y = xhat * w + b, xhat = (x - mean) * rstd,
 * logits = y @ wte^T, G = dlogits^T @ xhat (Vp, C) and s the column sums of
 * dlogits (Vp):
 *   dwte += dlogits^T @ y = G * w + s b^T
 *   dw   += sum_n (dlogits @ wte) * xhat = sum_v wte * G
 *   db   += sum_n (dlogits @ wte)        = sum_v wte * s
 * One (Vp, N) x (N, C) product instead of two. dwte may be NULL; scratch
 * holds strata_lm_head_scratch_floats(N, C) floats. */
size_t strata_lm_head_scratch_floats(int N, int C);
void strata_lm_head_backward(float *dwte, float *dw, float *db, const float *dlogits,
                             const float *inp, const float *mean, const float *rstd,
                             const float *wte, const float *w, const float *b, int N, int C, int Vp,
                             float *scratch);

#endif
