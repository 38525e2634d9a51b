/* file.c — checked reads and atomic writes; see file.h. */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

strata_err strata_in_open(strata_in_file *f, const char *path)
{
    f->path = path;
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(f->fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(f->fd);
        f->fd = -1;
        return strata_errorf(STRATA_EINPUT, "%s: not a regular file", path);
    }
    f->size = (uint64_t)sb.st_size;
    return strata_ok();
}

void strata_in_close(strata_in_file *f)
{
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
}

strata_err strata_in_read(const strata_in_file *f, void *buf, size_t n, uint64_t off,
                          const char *what)
{
    char *p = buf;
    while (n) {
        ssize_t got = pread(f->fd, p, n, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            return strata_errorf(STRATA_EINPUT, "%s: cannot read %s at byte %llu: %s", f->path,
                                 what, (unsigned long long)off,
                                 got < 0 ? strerror(errno) : "the file is shorter than before");
        p += got;
        off += (uint64_t)got;
        n -= (size_t)got;
    }
    return strata_ok();
}

strata_err strata_out_open(strata_out_file *o, const char *path)
{
    o->path = path;
    o->failed = 0;
    o->f = NULL;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (!*base) return strata_errorf(STRATA_EINPUT, "%s: names a directory, not a file", path);
    if (!slash)
        snprintf(o->dir, sizeof o->dir, ".");
    else if (slash == path)
        snprintf(o->dir, sizeof o->dir, "/");
    else if ((size_t)(slash - path) >= sizeof o->dir)
        return strata_errorf(STRATA_EINPUT, "%s: path too long", path);
    else
        snprintf(o->dir, sizeof o->dir, "%.*s", (int)(slash - path), path);
    if (snprintf(o->tmp, sizeof o->tmp, "%s/.%s.tmp-%ld", o->dir, base, (long)getpid()) >=
        (int)sizeof o->tmp)
        return strata_errorf(STRATA_EINPUT, "%s: path too long", path);
    o->f = fopen(o->tmp, "wb");
    if (!o->f) return strata_errorf(STRATA_EFAIL, "%s: cannot create: %s", path, strerror(errno));
    return strata_ok();
}

void strata_out_write(strata_out_file *o, const void *p, size_t n)
{
    if (!o->failed && n && fwrite(p, 1, n, o->f) != n) o->failed = errno ? errno : EIO;
}

static strata_err sync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) return strata_errorf(STRATA_EFAIL, "%s: cannot open: %s", path, strerror(errno));
    int rc;
    do rc = fsync(fd);
    while (rc < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (rc < 0 && !(saved == EINVAL && (flags & O_DIRECTORY)))
        return strata_errorf(STRATA_EFAIL, "%s: fsync failed: %s", path, strerror(saved));
    return strata_ok();
}

strata_err strata_sync_dir(const char *dir) { return sync_path(dir, O_RDONLY | O_DIRECTORY); }

strata_err strata_out_finish(strata_out_file *o)
{
    if (fflush(o->f) != 0 && !o->failed) o->failed = errno ? errno : EIO;
    if (!o->failed && fsync(fileno(o->f)) < 0) o->failed = errno;
    if (fclose(o->f) != 0 && !o->failed) o->failed = errno ? errno : EIO;
    o->f = NULL;
    strata_err e = strata_ok();
    if (o->failed)
        e = strata_errorf(STRATA_EFAIL, "%s: cannot write: %s", o->path, strerror(o->failed));
    else if (rename(o->tmp, o->path) < 0)
        e = strata_errorf(STRATA_EFAIL, "%s: cannot rename %s into place: %s", o->path, o->tmp,
                          strerror(errno));
    if (e.code) {
        unlink(o->tmp);
        return e;
    }
    return strata_sync_dir(o->dir);
}

void strata_out_abort(strata_out_file *o)
{
    if (o->f) fclose(o->f);
    o->f = NULL;
    unlink(o->tmp);
}
