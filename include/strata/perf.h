/* perf.h — the figures a speed claim is made of: model FLOPs per token, the
 * sgemm peak measured on this machine, and this process's memory.
 */
#ifndef STRATA_PERF_H
#define STRATA_PERF_H

#include "strata/model.h"

/* 6 * N_params + 12 * L * T * C, the formula of PaLM's appendix B and
 * ../shared/bench: 6N for forward+backward of every weight (tied wte counted
 * once, wpe included), 12LTC for attention's QK^T and AV, forward and
 * backward, over the full (unmasked) T x T square. */
double strata_flops_per_token(const strata_model_shape *s, int T);
/* GFLOP/s of cblas_sgemm on square n x n matrices at the current OpenMP
 * thread count: the best run after a warm-up, repeating for at least
 * min_seconds (and 5 runs). On a shared machine the best of a longer probe
 * is the figure closest to what the cores can do, so MFU is not flattered
 * by a probe that met a noisy moment. */
double strata_sgemm_peak_gflops(int n, double min_seconds);
/* Peak resident set size of this process, in bytes. */
double strata_peak_rss_bytes(void);
double strata_now_seconds(void);

#endif
