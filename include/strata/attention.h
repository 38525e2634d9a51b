/* attention.h — causal grouped-query attention that never stores the
 * B*NH*T*T probabilities (flash-attention's recomputation, on the CPU).
 *
 * Layout, shared by both families: qkv is (B, T, (NH + 2 NKV) hs), each row
 * the NH query heads, then the NKV key heads, then the NKV value heads, hs
 * floats each. Query head h reads kv head h / (NH / NKV). out is (B, T, NH
 * hs). For query position t the keys are j <= t, and with a sliding window
 * W > 0 only t - W < j <= t (transformers' sliding-window causal mask: a
 * token sees itself and the W - 1 before it).
 *
 *   S = scale * Q K^T (masked), P = softmax(S) row by row, O = P V
 *
 * Forward keeps lse[b, h, t] = log sum_j exp(S[t, j]) per row; backward
 * recomputes P = exp(S - lse) a block of query rows at a time and uses
 * dP = dO V^T, D[t] = sum_c dO[t, c] O[t, c], dS = P (dP - D):
 *   dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO,
 * dK and dV summed over each kv head's NH/NKV query heads in head order.
 * Every product is a strata_gemm on a block (gemm.h; the _prec variants
 * name its precision, the others are fp32: in bf16, Q, K, V, dO and the
 * blocks of P and dS are rounded to bf16 as they enter a product, while the
 * scores, softmax, lse and D stay fp32); work is split over (b, h),
 * and nothing depends on which thread runs what: results are bitwise the
 * same for any thread count.
 */
#ifndef STRATA_ATTENTION_H
#define STRATA_ATTENTION_H

#include <stddef.h>

#include "strata/gemm.h"

/* Floats of scratch for (B, T, NH, NKV, hs) at up to `threads` threads. */
size_t strata_gqa_attention_scratch_floats(int B, int T, int NH, int NKV, int hs, int threads);

/* out (B, T, NH hs) and lse (B, NH, T) are written. scratch holds
 * scratch_floats floats; the call uses as many threads as fit in it. */
void strata_gqa_attention_forward(float *out, float *lse, const float *qkv, int B, int T, int NH,
                                  int NKV, int hs, int window, float scale, float *scratch,
                                  size_t scratch_floats);
/* dqkv (qkv's layout) is OVERWRITTEN; dout (B, T, NH hs); out and lse from
 * the forward. */
void strata_gqa_attention_backward(float *dqkv, const float *dout, const float *qkv,
                                   const float *out, const float *lse, int B, int T, int NH,
                                   int NKV, int hs, int window, float scale, float *scratch,
                                   size_t scratch_floats);

void strata_gqa_attention_forward_prec(strata_precision prec, float *out, float *lse,
                                       const float *qkv, int B, int T, int NH, int NKV, int hs,
                                       int window, float scale, float *scratch,
                                       size_t scratch_floats);
void strata_gqa_attention_backward_prec(strata_precision prec, float *dqkv, const float *dout,
                                        const float *qkv, const float *out, const float *lse, int B,
                                        int T, int NH, int NKV, int hs, int window, float scale,
                                        float *scratch, size_t scratch_floats);

#endif
