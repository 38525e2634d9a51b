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

strata_err strata_out_name(strata_out_file *o, const char *path)
{
    o->path = path;
    o->failed = 0;
    o->f = NULL;
    o->tmp[0] = 0;
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
        (int)sizeof o->tmp) {
        o->tmp[0] = 0;
        return strata_errorf(STRATA_EINPUT, "%s: path too long", path);
    }
    return strata_ok();
}

strata_err strata_out_open(strata_out_file *o, const char *path)
{
    STRATA_TRY(strata_out_name(o, path));
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

/* The name, then the name on disk; the data is on disk already. */
static strata_err rename_into_place(strata_out_file *o)
{
    if (rename(o->tmp, o->path) < 0) {
        strata_err e = strata_errorf(STRATA_EFAIL, "%s: cannot rename %s into place: %s", o->path,
                                     o->tmp, strerror(errno));
        unlink(o->tmp);
        return e;
    }
    return strata_sync_dir(o->dir);
}

strata_err strata_out_finish(strata_out_file *o)
{
    if (fflush(o->f) != 0 && !o->failed) o->failed = errno ? errno : EIO;
    if (!o->failed && fsync(fileno(o->f)) < 0) o->failed = errno;
    if (fclose(o->f) != 0 && !o->failed) o->failed = errno ? errno : EIO;
    o->f = NULL;
    if (o->failed) {
        unlink(o->tmp);
        return strata_errorf(STRATA_EFAIL, "%s: cannot write: %s", o->path, strerror(o->failed));
    }
    return rename_into_place(o);
}

strata_err strata_out_publish(strata_out_file *o)
{
    strata_err e = sync_path(o->tmp, O_RDONLY);
    if (e.code) {
        unlink(o->tmp);
        return e;
    }
    return rename_into_place(o);
}

void strata_out_abort(strata_out_file *o)
{
    if (o->f) fclose(o->f);
    o->f = NULL;
    if (o->tmp[0]) unlink(o->tmp);
}

strata_err strata_write_atomic(const char *path, const void *buf, size_t n)
{
    strata_out_file o;
    STRATA_TRY(strata_out_open(&o, path));
    strata_out_write(&o, buf, n);
    return strata_out_finish(&o);
}

/* Creates one directory; *made says whether it was new. */
static strata_err make_one(const char *dir, int *made)
{
    *made = 0;
    if (mkdir(dir, 0777) == 0) {
        *made = 1;
        return strata_ok();
    }
    int err = errno;
    struct stat sb;
    if (err == EEXIST && stat(dir, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) return strata_ok();
        return strata_errorf(STRATA_EINPUT, "%s: not a directory", dir);
    }
    int input = err == ENOTDIR || err == EACCES || err == EROFS || err == ENAMETOOLONG ||
                err == ENOENT || err == ELOOP || err == EPERM;
    return strata_errorf(input ? STRATA_EINPUT : STRATA_EFAIL, "%s: cannot create directory: %s",
                         dir, strerror(err));
}

strata_err strata_mkdir_p(const char *dir)
{
    char buf[PATH_MAX];
    size_t n = strlen(dir);
    if (n >= sizeof buf) return strata_errorf(STRATA_EINPUT, "%s: path too long", dir);
    memcpy(buf, dir, n + 1);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    if (!n) return strata_ok();
    /* Each prefix ending before a '/' (and the whole path), shortest first;
     * a new directory's entry is durable once its parent is fsync'd. */
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p) continue;
        char c = *p;
        *p = 0;
        int made = 0;
        strata_err e = p[-1] == '/' ? strata_ok() : make_one(buf, &made);
        if (!e.code && made) {
            char *slash = strrchr(buf, '/');
            if (!slash) {
                e = strata_sync_dir(".");
            } else {
                *slash = 0;
                e = strata_sync_dir(slash == buf ? "/" : buf);
                *slash = '/';
            }
        }
        if (e.code) return e;
        if (!c) break;
        *p = c;
    }
    return strata_ok();
}

strata_err strata_mkdir_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return strata_ok();
    char buf[PATH_MAX];
    if ((size_t)(slash - path) >= sizeof buf)
        return strata_errorf(STRATA_EINPUT, "%s: path too long", path);
    snprintf(buf, sizeof buf, "%.*s", (int)(slash - path), path);
    return strata_mkdir_p(buf);
}
