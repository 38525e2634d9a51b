/* err.h — errors as values.
 *
 * Every library function that can fail returns a strata_err. code 0 means
 * success; otherwise msg holds one line that names the file, the place and
 * the problem ("data/a.h5: /tokens is int8, expected uint16 or uint32").
 * Library code never prints and never exits: the CLI prints msg and turns
 * code into the exit status: the code itself (2 bad input, 3 out of memory,
 * 1 other failure, 75 stopped).
 */
#ifndef STRATA_ERR_H
#define STRATA_ERR_H

enum {
    STRATA_OK = 0,
    STRATA_EFAIL = 1,    /* anything that is not the user's input */
    STRATA_EINPUT = 2,   /* bad usage, config, data or checkpoint */
    STRATA_ENOMEM = 3,   /* an allocation failed: a smaller micro_batch or more ranks may fit */
    STRATA_ESTOPPED = 75 /* stopped on a signal after a good checkpoint */
};

typedef struct strata_err {
    int code;
    char msg[1024];
} strata_err;

strata_err strata_ok(void);
strata_err strata_errorf(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Propagate a failure to the caller: STRATA_TRY(strata_shard_open(...)); */
#define STRATA_TRY(expr)                                                                           \
    do {                                                                                           \
        strata_err try_err_ = (expr);                                                              \
        if (try_err_.code) return try_err_;                                                        \
    } while (0)

#endif
