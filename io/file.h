/* file.h — io/'s own helpers for reading checked byte ranges and for writing
 * files atomically. Internal to io/: not a public contract.
 *
 * Reading: a file is opened once, its size taken, and every read is at an
 * offset the caller has checked against that size, so a short read means
 * the file changed under us.
 *
 * Writing, the one durability rule of every file strata writes: a file is
 * written beside its final name (".NAME.tmp-PID", a dotfile, so directory
 * streams never see it), its data fsync'd, renamed into place, and its
 * directory fsync'd. A kill or a power cut at any moment leaves the old file
 * or the complete new one under the name, never half, and once the call
 * returns the new one survives a power cut. A directory strata creates is
 * made durable the same way (its parent fsync'd). The pid in the temporary
 * name keeps two processes writing one name apart; a temporary file whose
 * process is gone can never be completed and may be removed.
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

/* For writers that create the file themselves (HDF5): fills o->tmp and
 * o->dir and opens nothing; the caller writes and closes o->tmp, then calls
 * strata_out_publish, or strata_out_abort to drop it. */
strata_err strata_out_name(strata_out_file *o, const char *path);
/* fsyncs o->tmp, renames it into place and fsyncs the directory; on failure
 * the temporary file is removed. */
strata_err strata_out_publish(strata_out_file *o);

/* The whole file in one call: path holds exactly buf[0..n) afterwards, or
 * (on error) what it held before. */
strata_err strata_write_atomic(const char *path, const void *buf, size_t n);

/* mkdir -p: every missing directory on the way to dir, each made durable;
 * STRATA_EINPUT when the path cannot be a directory (a file on the way,
 * no permission), STRATA_EFAIL on other failures (a full disk). */
strata_err strata_mkdir_p(const char *dir);
/* mkdir -p of the directory that will hold the file path ("" or "/": none). */
strata_err strata_mkdir_parent(const char *path);

/* fsync of a directory (a filesystem that cannot is not an error). */
strata_err strata_sync_dir(const char *dir);

#endif
