#include <stdio.h>

#include "strata/cli.h"
#include "strata/log.h"

int strata_cli_fail(const char *cmd, strata_err e)
{
    if (e.code) fprintf(stderr, "strata %s: %s\n", cmd, e.msg);
    return e.code;
}

/* Progress on stdout, flushed per line so a log follows the run; the rest
 * on stderr with the program's name. */
static void print_line(void *ctx, strata_log_level level, const char *line)
{
    (void)ctx;
    if (level == STRATA_LOG_INFO) {
        printf("%s\n", line);
        fflush(stdout);
        return;
    }
    fprintf(stderr, "strata: %s%s\n", level == STRATA_LOG_WARN ? "warning: " : "", line);
    fflush(stderr);
}

void strata_cli_install_log(void) { strata_log_set(print_line, NULL); }
