#include <stdio.h>

#include "strata/cli.h"

int strata_cli_fail(const char *cmd, strata_err e)
{
    if (e.code) fprintf(stderr, "strata %s: %s\n", cmd, e.msg);
    return e.code;
}
