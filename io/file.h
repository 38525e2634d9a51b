/* file.h — io/'s own helpers for reading checked byte ranges and for writing
 * files atomically. Internal to io/: not a public contract.
 *
 * Reading: a file is opened once, its size taken, and every read is at an
 * offset the caller has checked against that size, so a short read means
 * the file changed under us.
 *
 * Writing: a file is written beside its final name (".NAME.tmp-PID"),
 * flushed, fsync'd, renamed into place and its directory fsync'd, so a
 * reader sees the old file or the new one, never half.
 */
#ifndef STRATA_IO_FILE_H
#define STRATA_IO_FILE_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "strata/err.h"

typedef struct strata_in_file {
    const char *path;
    int fd;
    uint64_t size;
} strata_in_file;

/* Opens a regular file for reading (STRATA_EINPUT naming it otherwise). */
strata_err strata_in_open(strata_in_file *f, const char *path);
void strata_in_close(strata_in_file *f);
/* Reads exactly n bytes at off (off + n <= size, checked by the caller). */
strata_err strata_in_read(const strata_in_file *f, void *buf, size_t n, uint64_t off,
                          const char *what);

typedef struct strata_out_file {
    const char *path;
    char tmp[PATH_MAX], dir[PATH_MAX];
    FILE *f;
    int failed; /* the first errno of a failed write, 0 while all is well */
} strata_out_file;

strata_err strata_out_open(strata_out_file *o, const char *path);
/* Buffered write; a failure is remembered and reported by finish. */
void strata_out_write(strata_out_file *o, const void *p, size_t n);
/* Flushes, fsyncs, renames into place and fsyncs the directory; on failure
 * the temporary file is removed. */
strata_err strata_out_finish(strata_out_file *o);
/* Gives up: closes and removes the temporary file. */
void strata_out_abort(strata_out_file *o);

/* fsync of a directory (a filesystem that cannot is not an error). */
strata_err strata_sync_dir(const char *dir);

#endif
