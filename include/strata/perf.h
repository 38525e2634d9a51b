/* perf.h — the figures a speed claim is made of: model FLOPs per token, the
 * sgemm peak measured on this machine, and this process's memory.
 */
#ifndef STRATA_PERF_H
#define STRATA_PERF_H

#include "strata/gemm.h"
#include "strata/model.h"

/* 6 * N + 12 * L * T * NH * hs, the formula of PaLM's appendix B and
 * ../shared/bench: 6N for forward+backward of every weight in a matrix
 * product (a tied head counted once; GPT-2's convention also counts wpe and
 * the norms, as llm.c does), 12 L T NH hs for attention's QK^T and AV,
 * forward and backward, over the full (unmasked) T x T square. */
double strata_flops_per_token(const strata_model_shape *s, int T);
/* A cblas_sgemm probe on square matrices up to n_max, allocated and touched
 * once, so that it can run between training steps: on a shared machine whose
 * speed drifts from minute to minute, a peak measured right after each step
 * is the fair denominator for that step's MFU. */
typedef struct strata_sgemm_probe strata_sgemm_probe;
strata_sgemm_probe *strata_sgemm_probe_new(int n_max); /* NULL when out of memory */
void strata_sgemm_probe_free(strata_sgemm_probe *p);
/* GFLOP/s of the fastest of `runs` n x n x n products (n <= n_max) at the
 * current OpenMP thread count, repeating until min_seconds have passed. */
double strata_sgemm_probe_gflops(strata_sgemm_probe *p, int n, int runs, double min_seconds);
/* The same probe through strata_gemm in a precision: bf16 operands (made
 * once from the fp32 ones) with fp32 output, on whichever backend bf16 runs
 * here; fp32 is strata_sgemm_probe_gflops. The fair denominator of a bf16
 * run's MFU. */
double strata_gemm_probe_gflops(strata_sgemm_probe *p, strata_precision prec, int n, int runs,
                                double min_seconds);
/* One-off probe: the best run after a warm-up, at least 5 runs and
 * min_seconds. 0 when out of memory. */
double strata_sgemm_peak_gflops(int n, double min_seconds);
/* Peak resident set size of this process, in bytes. */
double strata_peak_rss_bytes(void);
double strata_now_seconds(void);

#endif
