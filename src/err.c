#include "strata/err.h"

#include <stdarg.h>
#include <stdio.h>

strata_err strata_ok(void)
{
    strata_err e = {0};
    return e;
}

strata_err strata_errorf(int code, const char *fmt, ...)
{
    strata_err e;
    e.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof e.msg, fmt, ap);
    va_end(ap);
    return e;
}
