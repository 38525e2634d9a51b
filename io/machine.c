/* The machine a benchmark ran on; see machine.h. */
#include "strata/machine.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/gemm.h"

/* OpenBLAS's own report of the kernels it dispatched to. */
extern char *openblas_get_corename(void);
extern char *openblas_get_config(void);

static void cpu_model(char *model, size_t n, int *avx512_bf16, int *amx)
{
    snprintf(model, n, "unknown CPU");
    *avx512_bf16 = *amx = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[8192];
    int have_model = 0, have_flags = 0;
    while (fgets(line, sizeof line, f) && !(have_model && have_flags)) {
        if (!have_model && !strncmp(line, "model name", 10)) {
            char *v = strchr(line, ':');
            if (!v) continue;
            v += 1 + (v[1] == ' ');
            v[strcspn(v, "\n")] = 0;
            snprintf(model, n, "%s", v);
            have_model = 1;
        } else if (!have_flags && !strncmp(line, "flags", 5)) {
            *avx512_bf16 = strstr(line, " avx512_bf16") != NULL;
            *amx = strstr(line, " amx_bf16") != NULL;
            have_flags = 1;
        }
    }
    fclose(f);
}

void strata_machine_describe(char *buf, size_t n)
{
    char model[256];
    int bf16, amx;
    cpu_model(model, sizeof model, &bf16, &amx);
    const char *coretype = getenv("OPENBLAS_CORETYPE");
    snprintf(buf, n, "%s; OpenBLAS core %s (OPENBLAS_CORETYPE %s%s); bf16: %s", model,
             openblas_get_corename(), coretype ? "=" : "unset", coretype ? coretype : "",
             amx    ? "amx_bf16 avx512_bf16"
             : bf16 ? "avx512_bf16"
                    : "none");
    size_t used = strlen(buf);
    if (used + 3 < n) {
        snprintf(buf + used, n - used, "; ");
        strata_gemm_describe(buf + used + 2, n - used - 2);
    }
}
