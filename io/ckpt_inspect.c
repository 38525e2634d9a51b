/* ckpt_inspect.c — what `strata inspect` shows of a checkpoint; see ckpt.h.
 *
 * Read with plain HDF5 calls rather than the loader, so that inspect works
 * on any checkpoint, even one strata_ckpt_load would refuse (another shape,
 * a failed checksum further on); every attribute is looked at with
 * h5check.h before HDF5 decodes it, as for shards. */
#include <hdf5.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "h5check.h"

#include "strata/ckpt.h"

/* The description, growing; on out of memory it stops growing and says so. */
typedef struct text {
    char *p;
    size_t n, cap;
    int oom;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(text *t, const char *fmt, ...)
{
    if (t->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->p ? t->p + t->n : NULL, t->p ? t->cap - t->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (t->p && t->n + (size_t)k < t->cap) {
            t->n += (size_t)k;
            return;
        }
        size_t cap = t->cap ? 2 * t->cap : 4096;
        while (cap < t->n + (size_t)k + 1) cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->oom = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

typedef struct walk {
    const char *path;
    strata_err err;
    text *out;
    long count;
    uint64_t numel; /* UINT64_MAX: too many to count (a damaged file) */
} walk;

static strata_err unreadable(const char *path, const char *name)
{
    char why[256];
    return strata_errorf(STRATA_EINPUT, "%s: attribute %s unreadable (%s)", path, name,
                         strata_hdf5_reason(why));
}

/* Up to 8 integers or floats on one line. */
static strata_err add_numbers(text *out, hid_t a, H5T_class_t cls, hssize_t np, const char *path,
                              const char *name)
{
    int64_t iv[8];
    double dv[8];
    herr_t r =
        cls == H5T_INTEGER ? H5Aread(a, H5T_NATIVE_INT64, iv) : H5Aread(a, H5T_NATIVE_DOUBLE, dv);
    if (r < 0) return unreadable(path, name);
    add(out, "  %-16s", name);
    for (hssize_t i = 0; i < np; i++) {
        if (cls == H5T_INTEGER)
            add(out, " %" PRId64, iv[i]);
        else
            add(out, " %.9g", dv[i]);
    }
    add(out, "\n");
    return strata_ok();
}

/* A string as itself, or when long, multi-line or not printable, its size. */
static void add_string(text *out, const char *name, const char *v)
{
    size_t len = strlen(v);
    int newlines = 0, printable = 1;
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '\n')
            newlines++;
        else if ((unsigned char)v[i] < 0x20 && v[i] != '\t')
            printable = 0;
    }
    int lines = newlines + (len > 0 && v[len - 1] != '\n');
    if (len > 100 || newlines || !printable)
        add(out, "  %-16s (%zu bytes, %d line%s)\n", name, len, lines, lines == 1 ? "" : "s");
    else
        add(out, "  %-16s %s\n", name, v);
}

/* One string attribute, fixed- or variable-length (after h5check). */
static strata_err add_string_attr(text *out, hid_t loc, hid_t a, hid_t t, const char *path,
                                  const char *name)
{
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_cset(mt, H5Tget_cset(t));
    char *s = NULL, *vs = NULL;
    size_t size = H5Tget_size(t);
    herr_t r = -1;
    char bad[256] = "";
    if (H5Tis_variable_str(t) > 0) {
        H5Tset_size(mt, H5T_VARIABLE);
        if (strata_hdf5_vlen_attr_ok(loc, name, bad, sizeof bad)) r = H5Aread(a, mt, &vs);
        s = vs;
    } else if (size > 0 && size < ((size_t)64 << 20)) {
        H5Tset_size(mt, size + 1);
        H5Tset_strpad(mt, H5T_STR_NULLTERM);
        if ((s = calloc(size + 1, 1))) r = H5Aread(a, mt, s);
    }
    strata_err e = strata_ok();
    if (bad[0])
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is damaged (%s)", path, name, bad);
    else if (r < 0)
        e = unreadable(path, name);
    else
        add_string(out, name, s ? s : "");
    if (vs)
        H5free_memory(vs);
    else
        free(s);
    H5Tclose(mt);
    return e;
}

/* One attribute: integers and floats (up to 8 values), strings (long or
 * multi-line ones as a size), anything else as its class and count. */
static strata_err add_attr(text *out, hid_t loc, const char *path, const char *name)
{
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) return unreadable(path, name);
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    hssize_t np = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    strata_err e = strata_ok();
    H5T_class_t cls = t < 0 ? H5T_NO_CLASS : H5Tget_class(t);
    if (t < 0 || sp < 0 || np < 0)
        e = unreadable(path, name);
    else if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && np >= 1 && np <= 8 && H5Tget_size(t) <= 8)
        e = add_numbers(out, a, cls, np, path, name);
    else if (cls == H5T_STRING && np == 1)
        e = add_string_attr(out, loc, a, t, path, name);
    else
        add(out, "  %-16s (%s, %lld values)\n", name,
            cls == H5T_STRING    ? "strings"
            : cls == H5T_INTEGER ? "integers"
            : cls == H5T_FLOAT   ? "floats"
                                 : "other type",
            (long long)np);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return e;
}

static herr_t attr_cb(hid_t loc, const char *name, const H5A_info_t *info, void *data)
{
    (void)info;
    walk *w = data;
    w->err = add_attr(w->out, loc, w->path, name);
    return w->err.code ? -1 : 0;
}

/* "(d0, d1, ...)" into shape; the element count, saturating at UINT64_MAX
 * (a damaged file may claim any size). */
static uint64_t shape_text(const hsize_t *dims, int rank, char *shape, size_t cap)
{
    size_t m = 1;
    uint64_t numel = 1;
    snprintf(shape, cap, "(");
    for (int i = 0; i < rank; i++) {
        if (m < cap)
            m += (size_t)snprintf(shape + m, cap - m, "%s%llu", i ? ", " : "",
                                  (unsigned long long)dims[i]);
        numel = dims[i] && numel > UINT64_MAX / dims[i] ? UINT64_MAX : numel * dims[i];
    }
    if (m < cap) snprintf(shape + m, cap - m, ")");
    return numel;
}

static herr_t tensor_cb(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)info;
    walk *w = data;
    char why[256];
    H5O_info_t oi;
    if (H5Oget_info_by_name2(group, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0) {
        w->err = strata_errorf(STRATA_EINPUT, "%s: /model/%s unreadable (%s)", w->path, name,
                               strata_hdf5_reason(why));
        return -1;
    }
    if (oi.type != H5O_TYPE_DATASET) {
        add(w->out, "  %-36s (not a dataset)\n", name);
        return 0;
    }
    hid_t d = H5Dopen2(group, name, H5P_DEFAULT);
    hid_t sp = d < 0 ? -1 : H5Dget_space(d), t = d < 0 ? -1 : H5Dget_type(d);
    int rank = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    if (d < 0 || sp < 0 || t < 0 || rank < 0 || rank > 8) {
        w->err = strata_errorf(STRATA_EINPUT, "%s: /model/%s unreadable (%s)", w->path, name,
                               strata_hdf5_reason(why));
    } else {
        hsize_t dims[8] = {0};
        H5Sget_simple_extent_dims(sp, dims, NULL);
        char shape[256];
        uint64_t numel = shape_text(dims, rank, shape, sizeof shape);
        size_t es = H5Tget_size(t);
        const char *tn = H5Tget_class(t) != H5T_FLOAT ? "non-float"
                         : es == 4                    ? "float32"
                         : es == 8                    ? "float64"
                                                      : "float";
        add(w->out, "  %-36s %-20s %s\n", name, shape, tn);
        w->count++;
        w->numel = numel > UINT64_MAX - w->numel ? UINT64_MAX : w->numel + numel;
    }
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return w->err.code ? -1 : 0;
}

static long count_links(hid_t file, const char *group)
{
    if (H5Lexists(file, group, H5P_DEFAULT) <= 0) return -1;
    hid_t g = H5Gopen2(file, group, H5P_DEFAULT);
    if (g < 0) return -1;
    H5G_info_t gi;
    long n = H5Gget_info(g, &gi) < 0 ? -1 : (long)gi.nlinks;
    H5Gclose(g);
    return n;
}

/* The tensors under /model, then a total and what /optim holds. */
static strata_err add_tensors(walk *w, hid_t file)
{
    char why[256];
    const char *path = w->path;
    if (H5Lexists(file, "/model", H5P_DEFAULT) <= 0)
        return strata_errorf(STRATA_EINPUT, "%s: no /model group", path);
    hid_t g = H5Gopen2(file, "/model", H5P_DEFAULT);
    if (g < 0)
        return strata_errorf(STRATA_EINPUT, "%s: /model is not a group (%s)", path,
                             strata_hdf5_reason(why));
    add(w->out, "  /model:\n");
    hsize_t idx = 0;
    herr_t r = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, tensor_cb, w);
    H5Gclose(g);
    if (r < 0)
        return w->err.code ? w->err
                           : strata_errorf(STRATA_EINPUT, "%s: cannot list /model (%s)", path,
                                           strata_hdf5_reason(why));
    if (w->numel == UINT64_MAX)
        add(w->out, "  %ld tensors, too many parameters to count\n", w->count);
    else
        add(w->out, "  %ld tensors, %" PRIu64 " parameters\n", w->count, w->numel);
    long m = count_links(file, "/optim/m"), v = count_links(file, "/optim/v");
    if (m >= 0 || v >= 0)
        add(w->out, "  /optim: %ld m and %ld v tensors\n", m > 0 ? m : 0, v > 0 ? v : 0);
    else
        add(w->out, "  /optim: none (model only)\n");
    return strata_ok();
}

/* Opens path read-only without a lock (cluster filesystems refuse them)
 * and checks the root's attribute messages before anything reads one. */
static strata_err open_checked(const char *path, hid_t *out)
{
    char why[256], bad[256];
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, 0, 1);
#endif
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    strata_hdf5_reason(why); /* before the next call clears the error stack */
    H5Pclose(fapl);
    if (file < 0) return strata_errorf(STRATA_EINPUT, "%s: cannot open as HDF5 (%s)", path, why);
    /* HDF5 1.10 decodes attribute messages without bounds checks. */
    if (!strata_hdf5_attrs_ok(file, bad, sizeof bad)) {
        H5Fclose(file);
        return strata_errorf(STRATA_EINPUT, "%s: attributes of / are damaged (%s)", path, bad);
    }
    *out = file;
    return strata_ok();
}

strata_err strata_ckpt_describe(const char *path, char **desc)
{
    *desc = NULL;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = -1;
    STRATA_TRY(open_checked(path, &file));
    text out = {0};
    walk w = {.path = path, .err = strata_ok(), .out = &out};
    add(&out, "%s: checkpoint (%s)\n", path, STRATA_CKPT_FORMAT);
    hsize_t idx = 0;
    strata_err e = strata_ok();
    char why[256];
    if (H5Aiterate2(file, H5_INDEX_NAME, H5_ITER_INC, &idx, attr_cb, &w) < 0)
        e = w.err.code ? w.err
                       : strata_errorf(STRATA_EINPUT, "%s: cannot list the root attributes (%s)",
                                       path, strata_hdf5_reason(why));
    else
        e = add_tensors(&w, file);
    H5Fclose(file);
    H5Eclear2(H5E_DEFAULT);
    if (out.oom) {
        free(out.p);
        return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    }
    *desc = out.p;
    return e;
}

/* The root "format" attribute if it is a string; "" otherwise. */
static void root_format(hid_t file, char *out, size_t cap)
{
    out[0] = 0;
    if (H5Aexists(file, "format") <= 0) return;
    hid_t a = H5Aopen(file, "format", H5P_DEFAULT);
    if (a < 0) return;
    hid_t t = H5Aget_type(a);
    if (t >= 0 && H5Tget_class(t) == H5T_STRING) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_cset(mt, H5Tget_cset(t));
        char bad[256];
        if (H5Tis_variable_str(t) > 0) {
            char *vs = NULL;
            H5Tset_size(mt, H5T_VARIABLE);
            if (strata_hdf5_vlen_attr_ok(file, "format", bad, sizeof bad) &&
                H5Aread(a, mt, &vs) >= 0 && vs)
                snprintf(out, cap, "%s", vs);
            if (vs) H5free_memory(vs);
        } else {
            size_t size = H5Tget_size(t);
            char buf[64] = "";
            if (size > 0 && size < sizeof buf) {
                H5Tset_size(mt, size + 1);
                H5Tset_strpad(mt, H5T_STR_NULLTERM);
                if (H5Aread(a, mt, buf) >= 0) snprintf(out, cap, "%s", buf);
            }
        }
        H5Tclose(mt);
    }
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    H5Eclear2(H5E_DEFAULT);
}

strata_err strata_ckpt_probe(const char *path, int *kind)
{
    *kind = STRATA_H5_NOT_HDF5;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (H5Fis_hdf5(path) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return strata_ok();
    }
    hid_t file = -1;
    STRATA_TRY(open_checked(path, &file));
    char fmt[64];
    root_format(file, fmt, sizeof fmt);
    H5Fclose(file);
    H5Eclear2(H5E_DEFAULT);
    *kind = strcmp(fmt, STRATA_CKPT_FORMAT) == 0 ? STRATA_H5_CHECKPOINT : STRATA_H5_OTHER;
    return strata_ok();
}
