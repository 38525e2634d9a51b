/* bench_sample.c — time per generated token with the KV cache, at token 20
 * against token 200, on configs/small.ini's shape (GPT-2, L 6, C 384, NH 6,
 * V 50257, block 256) and a llama-family model of the same size (GQA 6/2,
 * SwiGLU 1024, untied, V 49152). With a cache the cost of a token is its
 * matrix products (the same at every position) plus attention over the
 * tokens before it, which is small next to them at this size: the ratio
 * should be near 1 (issue 15's bound: 1.5). For scale, the forward over the
 * whole sequence (what a decoder without a cache pays per token) is timed
 * at T = 20 and T = 200.
 *
 *   tests/bench_sample.sh [BUILD_DIR]    (builds the target, runs it)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "strata/generate.h"
#include "strata/machine.h"
#include "strata/model.h"

#define MAX_T  256
#define ROUNDS 5

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median over positions [at - 4, at + 4] of the per-position minimum over rounds. */
static double around(const double *best, int at)
{
    double w[9];
    for (int i = 0; i < 9; i++) w[i] = best[at - 4 + i];
    qsort(w, 9, sizeof *w, cmp);
    return w[4];
}

static double full_forward_ms(strata_model *m, const uint32_t *ids, int T)
{
    if (strata_model_reserve(m, 1, T).code) return -1;
    double best = 1e30;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now();
        (void)strata_model_forward(m, ids, NULL, 1, T, NULL, NULL);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best * 1e3;
}

static int bench(const char *name, strata_model_shape shape)
{
    strata_model *m = NULL;
    strata_err e = strata_model_create(&m, &shape);
    if (e.code) return fprintf(stderr, "%s: %s\n", name, e.msg), 1;
    strata_model_init(m, 1);
    strata_generator *g = NULL;
    if ((e = strata_generator_create(&g, m, MAX_T)).code)
        return fprintf(stderr, "%s: %s\n", name, e.msg), 1;
    uint32_t ids[MAX_T];
    for (int t = 0; t < MAX_T; t++) ids[t] = (uint32_t)((t * 7919u) % shape.vocab_size);
    static double best[MAX_T];
    for (int t = 0; t < MAX_T; t++) best[t] = 1e30;
    const float *logits;
    for (int r = 0; r < ROUNDS; r++) {
        strata_generator_reset(g);
        for (int t = 0; t < MAX_T; t++) {
            double t0 = now();
            if ((e = strata_generator_feed(g, &ids[t], 1, &logits)).code)
                return fprintf(stderr, "%s: %s\n", name, e.msg), 1;
            double dt = now() - t0;
            if (dt < best[t]) best[t] = dt;
        }
    }
    /* Token k (1-based) is drawn from the logits after feeding position k - 1. */
    double t20 = around(best, 19) * 1e3, t200 = around(best, 199) * 1e3;
    double f20 = full_forward_ms(m, ids, 20), f200 = full_forward_ms(m, ids, 200);
    printf("%-6s L=%d C=%d NH=%d NKV=%d V=%d: KV cache %.3f ms/token at token 20, %.3f at token "
           "200: ratio %.3f (bound 1.5)\n",
           name, shape.n_layer, shape.n_embd, shape.n_head,
           shape.n_kv_head ? shape.n_kv_head : shape.n_head, shape.vocab_size, t20, t200,
           t200 / t20);
    printf("       without a cache (full forward per token): %.3f ms at T=20, %.3f at T=200: "
           "ratio %.2f\n",
           f20, f200, f200 / f20);
    strata_generator_free(g);
    strata_model_free(m);
    return 0;
}

int main(void)
{
    char machine[512];
    strata_machine_describe(machine, sizeof machine);
    printf("machine: %s; OMP_NUM_THREADS=%s\n", machine,
           getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "unset");
    strata_model_shape gpt2 = {
        .n_layer = 6, .n_head = 6, .n_embd = 384, .block_size = 256, .vocab_size = 50257};
    strata_model_shape llama = {.n_layer = 6,
                                .n_head = 6,
                                .n_embd = 384,
                                .block_size = 256,
                                .vocab_size = 49152,
                                .family = STRATA_FAMILY_LLAMA,
                                .n_kv_head = 2,
                                .ffn_dim = 1024};
    return bench("gpt2", gpt2) || bench("llama", llama);
}
