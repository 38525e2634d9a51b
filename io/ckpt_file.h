/* ckpt_file.h — what io/ckpt_dir.c needs of io/ckpt.c beyond ckpt.h.
 * Internal to io/. */
#ifndef STRATA_IO_CKPT_FILE_H
#define STRATA_IO_CKPT_FILE_H

#include "strata/ckpt.h"

/* strata_ckpt_load, and *mismatch = 1 when the failure is a shape that
 * differs from m's (the config's doing, not damage: every older checkpoint
 * of the directory would differ too). */
strata_err strata_ckpt_load_checked(const char *path, strata_model *m, float *adam_m, float *adam_v,
                                    strata_ckpt_state *st, int *mismatch);

#endif
