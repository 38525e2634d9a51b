/* Development scaffold: weak placeholders so the binary links while the
 * subcommands are written in parallel. Each real cli_<name>.c overrides its
 * entry. This file is deleted once every subcommand exists. */
#include <stdio.h>

#include "strata/cli.h"

#define PENDING(fn, name)                                                      \
    __attribute__((weak)) int fn(int argc, char **argv)                        \
    {                                                                          \
        (void)argc;                                                            \
        (void)argv;                                                            \
        fprintf(stderr, "strata " name ": not built yet\n");                   \
        return 1;                                                              \
    }
PENDING(strata_cli_pack, "pack")
PENDING(strata_cli_inspect, "inspect")
PENDING(strata_cli_train, "train")
PENDING(strata_cli_eval, "eval")
PENDING(strata_cli_import, "import")
PENDING(strata_cli_export, "export")
PENDING(strata_cli_report, "report")
PENDING(strata_cli_bench, "bench")
PENDING(strata_cli_fisher, "fisher")

/* The data loader is being written too (io/loader.c). */
#include "strata/loader.h"
#define PENDING_LOADER strata_errorf(STRATA_EFAIL, "data loader not built yet")
__attribute__((weak)) strata_err strata_loader_open(strata_loader **o, const strata_loader_config *c)
{
    (void)o, (void)c;
    return PENDING_LOADER;
}
__attribute__((weak)) strata_err strata_loader_get(strata_loader *l, long s, strata_batch **b,
                                                   int *x, double *w)
{
    (void)l, (void)s, (void)b, (void)x, (void)w;
    return PENDING_LOADER;
}
__attribute__((weak)) const char *strata_loader_fingerprint(const strata_loader *l)
{
    (void)l;
    return "";
}
__attribute__((weak)) void strata_loader_close(strata_loader *l) { (void)l; }
__attribute__((weak)) strata_err strata_evalset_open(strata_evalset **o, const char *p, int t,
                                                     int v, long m)
{
    (void)o, (void)p, (void)t, (void)v, (void)m;
    return PENDING_LOADER;
}
__attribute__((weak)) long strata_evalset_n_samples(const strata_evalset *e)
{
    (void)e;
    return 0;
}
__attribute__((weak)) strata_err strata_evalset_read(strata_evalset *e, long f, int n, uint32_t *t)
{
    (void)e, (void)f, (void)n, (void)t;
    return PENDING_LOADER;
}
__attribute__((weak)) void strata_evalset_close(strata_evalset *e) { (void)e; }

/* Dropout is being written (src/model.c); until then the trainer runs without. */
#include "strata/model.h"
__attribute__((weak)) void strata_model_set_dropout(strata_model *m, float p, uint64_t seed,
                                                    long step, const int64_t *ids)
{
    (void)m, (void)p, (void)seed, (void)step, (void)ids;
}
