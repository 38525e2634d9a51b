/* strata train, strata eval and strata bench. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/ckpt.h"
#include "strata/cli.h"
#include "strata/comm.h"
#include "strata/config.h"
#include "strata/machine.h"
#include "strata/model.h"
#include "strata/optim.h"
#include "strata/perf.h"
#include "strata/rng.h"
#include "strata/stop.h"
#include "strata/trainer.h"

typedef struct run_args {
    const char *config;
    const char *checkpoint;
    char *sets[256];
    int n_sets;
    int steps, warmup; /* bench */
} run_args;

static strata_err parse_args(const char *cmd, int argc, char **argv, run_args *a)
{
    memset(a, 0, sizeof *a);
    a->steps = 5, a->warmup = 2;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "--config") && val)
            a->config = val, i++;
        else if (!strcmp(arg, "--set") && val && a->n_sets < 256)
            a->sets[a->n_sets++] = argv[++i];
        else if (!strcmp(arg, "--checkpoint") && val)
            a->checkpoint = val, i++;
        else if (!strcmp(arg, "--steps") && val && atoi(val) > 0)
            a->steps = atoi(val), i++;
        else if (!strcmp(arg, "--warmup") && val && atoi(val) >= 0)
            a->warmup = atoi(val), i++;
        else
            return strata_errorf(STRATA_EINPUT,
                                 "unexpected argument '%s' (usage: strata %s --config FILE.ini "
                                 "[--set section.key=value]...%s)",
                                 arg, cmd, !strcmp(cmd, "eval") ? " --checkpoint CKPT" : "");
    }
    if (!a->config && (strcmp(cmd, "bench") || a->n_sets))
        return strata_errorf(STRATA_EINPUT, "missing --config FILE.ini%s",
                             a->n_sets ? " (--set overrides a config's keys)" : "");
    if (!strcmp(cmd, "eval") && !a->checkpoint)
        return strata_errorf(STRATA_EINPUT, "missing --checkpoint CKPT");
    return strata_ok();
}

/* Ranks sharing a node split its cores, unless OMP_NUM_THREADS says otherwise. */
static void choose_threads(const strata_comm *c)
{
    if (getenv("OMP_NUM_THREADS")) return;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int per_rank = (int)(cores / strata_comm_local_size(c));
    omp_set_num_threads(per_rank > 0 ? per_rank : 1);
}

/* Shared by train and eval: MPI up, config read, run, MPI down. */
static int run_with_config(const char *cmd, int argc, char **argv)
{
    run_args a;
    /* Before MPI starts: a signal during start-up must not kill a rank. */
    strata_stop_install();
    strata_err e = parse_args(cmd, argc, argv, &a);
    if (e.code) return strata_cli_fail(cmd, e);
    strata_comm *comm;
    e = strata_comm_init(&argc, &argv, &comm);
    if (e.code) return strata_cli_fail(cmd, e);
    choose_threads(comm);
    strata_config cfg;
    e = strata_config_load(&cfg, a.config, a.sets, a.n_sets);
    if (!e.code) {
        e = !strcmp(cmd, "train") ? strata_train_run(&cfg, comm)
                                  : strata_eval_run(&cfg, comm, a.checkpoint);
    } else if (strata_comm_rank(comm) != 0) {
        e.msg[0] = 0; /* every rank read the same file: rank 0 tells */
    }
    if (e.code && e.msg[0]) {
        if (e.code != STRATA_ESTOPPED)
            strata_cli_fail(cmd, e);
        else if (strata_comm_rank(comm) == 0)
            fprintf(stderr, "strata %s: %s\n", cmd, e.msg);
    }
    fflush(stdout);
    strata_comm_finalize(comm);
    return e.code;
}

int strata_cli_train(int argc, char **argv) { return run_with_config("train", argc, argv); }
int strata_cli_eval(int argc, char **argv) { return run_with_config("eval", argc, argv); }

/* ---- bench ------------------------------------------------------------ */

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* What one bench run measured. The sgemm probe runs after every timed step,
 * so each step's rate is compared with the machine's speed at that moment. */
typedef struct bench_figures {
    double median_s;   /* median step time */
    double best_probe; /* fastest probe of the run, GFLOP/s */
    double paired_mfu; /* median over steps of rate / the probe right after it */
} bench_figures;

static double median_of(double *x, int n)
{
    qsort(x, n, sizeof(double), compare_doubles);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static void print_bench(const strata_model_shape *s, int B, int T, int threads, bench_figures f,
                        strata_model_timing tm, double opt_s, int steps, double expected_bytes,
                        double act_bytes, size_t n_floats, strata_precision prec)
{
    double tokens = (double)B * T, tps = tokens / f.median_s;
    double fpt = strata_flops_per_token(s, T);
    double mfu_best = tps * fpt / (f.best_probe * 1e9);
    double total = tm.matmul + tm.attention + tm.elementwise + tm.loss + opt_s;
    const char *th = threads > 1 ? "s" : "";
    printf("model      L=%d C=%d NH=%d V=%d (padded to %d), B=%d T=%d, %d thread%s; %s", s->n_layer,
           s->n_embd, s->n_head, s->vocab_size, s->padded_vocab, B, T, threads, th,
           s->family == STRATA_FAMILY_LLAMA ? "llama" : "gpt2");
    if (s->family == STRATA_FAMILY_LLAMA)
        printf(" NKV=%d hs=%d ffn=%d%s%s%s", s->n_kv_head, s->head_dim, s->ffn_dim,
               s->tied ? " tied" : " untied", s->qkv_bias ? " qkv-bias" : "",
               s->qk_norm ? " qk-norm" : "");
    printf("\n");
    char machine[512];
    strata_machine_describe(machine, sizeof machine);
    printf("machine    %s\n", machine);
    printf("step       median %.1f ms over %d steps\n", f.median_s * 1e3, steps);
    printf("throughput %.0f tokens/s\n", tps);
    printf("flops      %.3g per token (6*N_params + 12*L*T*%s)\n", fpt,
           s->family == STRATA_FAMILY_GPT2 ? "C" : "NH*hs");
    if (prec == STRATA_BF16)
        printf("precision  bf16 (fp32 accumulation, fp32 master weights)\n"
               "bf16 peak  %.1f GFLOP/s (fastest 1024^3 or 2048^3 bf16 strata_gemm of the probes "
               "run after each timed step, %d thread%s)\n",
               f.best_probe, threads, th);
    else
        printf("sgemm peak %.1f GFLOP/s (fastest 1024^3 or 2048^3 cblas_sgemm of the probes run "
               "after each timed step, %d thread%s)\n",
               f.best_probe, threads, th);
    printf("MFU        %.1f%% of the probe run right after each step (median over steps); "
           "%.1f%% of the fastest probe\n",
           100 * f.paired_mfu, 100 * mfu_best);
    printf("breakdown  matmul %.1f%% | attention %.1f%% | element-wise %.1f%% | loss %.1f%% | "
           "optimizer %.1f%%\n",
           100 * tm.matmul / total, 100 * tm.attention / total, 100 * tm.elementwise / total,
           100 * tm.loss / total, 100 * opt_s / total);
    printf("memory     params+grads+adam%s %.0f MiB + activations %.0f MiB = %.0f MiB expected; "
           "peak RSS %.0f MiB (%.2fx)\n",
           prec == STRATA_BF16 ? "+bf16 copy" : "",
           n_floats * (prec == STRATA_BF16 ? 18.0 : 16.0) / (1 << 20), act_bytes / (1 << 20), expected_bytes / (1 << 20),
           strata_peak_rss_bytes() / (1 << 20), strata_peak_rss_bytes() / expected_bytes);
}

/* About half a second: the best of a few products of each size, so a probe
 * that meets a short stall still finds the machine's speed of the moment. */
static double probe_now(strata_sgemm_probe *p, strata_precision prec)
{
    double g1024 = strata_gemm_probe_gflops(p, prec, 1024, 4, 0);
    double g2048 = strata_gemm_probe_gflops(p, prec, 2048, 2, 0);
    return g1024 > g2048 ? g1024 : g2048;
}

int strata_cli_bench(int argc, char **argv)
{
    run_args a;
    strata_err e = parse_args("bench", argc, argv, &a);
    if (e.code) return strata_cli_fail("bench", e);
    strata_config cfg;
    strata_config_defaults(&cfg);
    /* Without a config: the `small` shapes of ../shared/bench. */
    cfg.model.n_layer = 6, cfg.model.n_head = 6, cfg.model.n_embd = 384;
    cfg.model.block_size = 256, cfg.model.vocab_size = 50257;
    cfg.data.seq_len = 256, cfg.train.micro_batch = 8;
    if (a.config) e = strata_config_load(&cfg, a.config, a.sets, a.n_sets);
    if (e.code) return strata_cli_fail("bench", e);

    strata_model_shape shape, file_shape;
    int scratch = !strcmp(cfg.model.init, "scratch");
    if (!scratch && (e = strata_ckpt_read_shape(cfg.model.init, &file_shape)).code)
        return strata_cli_fail("bench", e);
    if ((e = strata_config_model_shape(&cfg, scratch ? NULL : &file_shape, &shape)).code)
        return strata_cli_fail("bench", e);
    strata_model *m;
    if ((e = strata_model_create(&m, &shape)).code) return strata_cli_fail("bench", e);
    strata_precision prec = (strata_precision)cfg.train.precision;
    if ((e = strata_model_set_precision(m, prec)).code)
        return strata_cli_fail("bench", strata_errorf(e.code, "[train] precision: %s", e.msg));
    shape = *strata_model_get_shape(m);
    int B = cfg.train.micro_batch, T = cfg.data.seq_len;
    if ((e = strata_model_reserve(m, B, T)).code) return strata_cli_fail("bench", e);
    strata_model_init(m, 1);
    size_t n = strata_model_n_floats(m);
    strata_adamw opt;
    strata_adamw_config ac = {0.9f, 0.95f, 1e-8f, 0.1f};
    if ((e = strata_adamw_init(&opt, &ac, 0, n)).code) return strata_cli_fail("bench", e);
    strata_param_group all = {0, n, 1, 1.0f};
    int total = a.warmup + a.steps;
    uint32_t *tok = malloc(sizeof(uint32_t) * ((size_t)B * T + 1));
    double *times = malloc(sizeof(double) * total), *mfus = malloc(sizeof(double) * total);
    strata_sgemm_probe *probe = strata_sgemm_probe_new(2048);
    if (!tok || !times || !mfus || !probe)
        return strata_cli_fail("bench", strata_errorf(STRATA_ENOMEM, "out of memory"));
    for (long i = 0; i < (long)B * T + 1; i++)
        tok[i] = (uint32_t)strata_rng_below(strata_rng_u64(7, 0, 0, (uint64_t)i), shape.vocab_size);

    /* As the trainer does it: the summed loss's gradient, scaled by 1/tokens
     * inside AdamW rather than by a pass over the (B*T, Vp) logits. */
    strata_backward_opts bo = {.loss_scale = 1.0f};
    double opt_s = 0, flops = strata_flops_per_token(&shape, T) * B * T;
    bench_figures f = {0};
    for (int s = 0; s < total; s++) {
        if (s == a.warmup) strata_model_reset_timing(m), opt_s = 0;
        double t0 = strata_now_seconds();
        strata_model_zero_grad(m);
        {
            float fb_loss_;
            (void)strata_model_forward_backward(m, tok, tok + 1, B, T, NULL, &fb_loss_, &bo);
        }
        double t1 = strata_now_seconds();
        strata_adamw_step(&opt, strata_model_params(m), strata_model_grads(m), 1.0f / (B * T),
                          1e-4f, &all, 1);
        double t2 = strata_now_seconds();
        opt_s += t2 - t1;
        times[s] = t2 - t0;
        double peak = probe_now(probe, prec);
        if (s >= a.warmup && peak > f.best_probe) f.best_probe = peak;
        mfus[s] = flops / times[s] / (peak * 1e9);
    }
    f.median_s = median_of(times + a.warmup, a.steps);
    f.paired_mfu = median_of(mfus + a.warmup, a.steps);
    double act = (double)strata_model_activation_bytes(m);
    print_bench(strata_model_get_shape(m), B, T, omp_get_max_threads(), f,
                strata_model_get_timing(m), opt_s, a.steps,
                n * (prec == STRATA_BF16 ? 18.0 : 16.0) + act, act, n, prec);
    strata_sgemm_probe_free(probe);
    free(mfus);
    free(times);
    free(tok);
    strata_adamw_free(&opt);
    strata_model_free(m);
    return 0;
}

int strata_cli_fisher(int argc, char **argv)
{
    const char *config = NULL, *out = NULL;
    long samples = 256;
    char *sets[256];
    int n_sets = 0;
    for (int i = 1; i < argc; i++) {
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--config") && val)
            config = val, i++;
        else if (!strcmp(argv[i], "--out") && val)
            out = val, i++;
        else if (!strcmp(argv[i], "--samples") && val && atol(val) > 0)
            samples = atol(val), i++;
        else if (!strcmp(argv[i], "--set") && val && n_sets < 256)
            sets[n_sets++] = argv[++i];
        else
            return strata_cli_fail(
                "fisher",
                strata_errorf(STRATA_EINPUT,
                              "unexpected argument '%s' (usage: "
                              "strata fisher --config FILE.ini --out FISHER.h5 [--samples N])",
                              argv[i]));
    }
    if (!config || !out)
        return strata_cli_fail("fisher", strata_errorf(STRATA_EINPUT, "missing --config or --out"));
    strata_comm *comm;
    strata_err e = strata_comm_init(&argc, &argv, &comm);
    if (e.code) return strata_cli_fail("fisher", e);
    choose_threads(comm);
    strata_config cfg;
    e = strata_config_load(&cfg, config, sets, n_sets);
    if (!e.code)
        e = strata_fisher_run(&cfg, comm, out, samples);
    else if (strata_comm_rank(comm) != 0)
        e.msg[0] = 0;
    if (e.code && e.msg[0]) strata_cli_fail("fisher", e);
    strata_comm_finalize(comm);
    return e.code;
}
