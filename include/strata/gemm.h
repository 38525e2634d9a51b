/* gemm.h — the one matrix product of strata, in fp32 or bf16.
 *
 * Every product of the models (linear layers forward and backward,
 * attention's QK^T, PV and their backward, the lm head) is a strata_gemm:
 *
 *   C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C,  row-major,
 *
 * where op(X) is X or X^T as the operand says. C is always fp32.
 *
 * Precision STRATA_FP32: fp32 operands go to cblas_sgemm unchanged (bitwise
 * what a direct sgemm call gives). Precision STRATA_BF16: each operand is
 * bf16, either stored so or an fp32 operand rounded to bf16 on the way in
 * (round to nearest even); products accumulate in fp32. Two backends:
 *   - oneDNN's bf16 matmul (brgemm on AVX512-BF16 / AMX), when the build has
 *     oneDNN and it dispatches to a native bf16 kernel here; one primitive
 *     per shape, created on first use and kept;
 *   - otherwise (oneDNN built in but without a native bf16 kernel for this
 *     CPU) the bf16 values widened to fp32 (exact) and multiplied with
 *     cblas_sgemm: a product of two bf16 values is exact in fp32, so this is
 *     the same arithmetic up to the order of the fp32 sums. oneDNN 2.6 has no
 *     bf16 matmul below AVX-512 at all, so AVX2 machines run this one.
 * Large operands are converted a panel at a time (a fixed function of the
 * shape), so the scratch stays a few MiB and results depend only on the
 * shape, the backend and the thread count: bitwise reproducible.
 *
 * Thread safety: strata_gemm may be called from inside an OpenMP parallel
 * region (attention runs one per (b, h)); its scratch is per thread.
 */
#ifndef STRATA_GEMM_H
#define STRATA_GEMM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "strata/err.h"

typedef enum strata_precision { STRATA_FP32 = 0, STRATA_BF16 = 1 } strata_precision;

/* The upper 16 bits of an IEEE fp32. */
typedef uint16_t strata_bf16;

/* Round to nearest, ties to even; NaN stays a (quiet) NaN, Inf stays Inf. */
static inline strata_bf16 strata_bf16_from_float(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (strata_bf16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (strata_bf16)(u >> 16);
}
static inline float strata_bf16_to_float(strata_bf16 h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* The fp32 nearest-even bf16 of f, as an fp32. */
static inline float strata_bf16_round(float f)
{
    return strata_bf16_to_float(strata_bf16_from_float(f));
}
/* out[i] = bf16(in[i]) for n elements (threaded when called outside a
 * parallel region). */
void strata_bf16_from_floats(strata_bf16 *out, const float *in, size_t n);
void strata_bf16_to_floats(float *out, const strata_bf16 *in, size_t n);

/* A matrix operand: its storage (fp32 or bf16), leading dimension and
 * whether the product uses its transpose. */
typedef struct strata_mat {
    const void *p;
    int ld;
    int trans;
    int bf16;
} strata_mat;
static inline strata_mat strata_mat_f32(const float *p, int ld, int trans)
{
    return (strata_mat){p, ld, trans, 0};
}
static inline strata_mat strata_mat_bf16(const strata_bf16 *p, int ld, int trans)
{
    return (strata_mat){p, ld, trans, 1};
}

/* C = alpha op(A) op(B) + beta C (see above). M, N, K >= 0; nothing
 * happens to C beyond the beta scaling when K is 0. */
void strata_gemm(strata_precision prec, int M, int N, int K, float alpha, strata_mat A,
                 strata_mat B, float beta, float *C, int ldc);

/* y (M) = alpha * A (M, N) @ x (N) + beta * y, fp32, row-major: the one-row
 * products of generation (its lm head), where a gemm would pack all of A
 * for a single row. */
void strata_gemv_f32(int M, int N, float alpha, const float *A, int lda, const float *x, float beta,
                     float *y);

/* A line saying which backend bf16 products use here, e.g. "bf16 matmul
 * oneDNN brg:avx512_core_amx (ISA avx512_core_amx)" or "bf16 matmul sgemm on
 * bf16-rounded operands (oneDNN ISA avx2 has no bf16 matmul)". */
void strata_gemm_describe(char *buf, size_t n);
/* 1 when bf16 products go through oneDNN on this machine. The environment
 * variable STRATA_BF16_BACKEND=sgemm forces the fallback (for comparing the
 * two on one machine). */
int strata_gemm_bf16_native(void);
/* bf16 needs a build with oneDNN (libdnnl): without it, STRATA_BF16 is
 * refused with an error naming the library. STRATA_FP32 always passes. */
strata_err strata_gemm_check_precision(strata_precision prec);

#endif
