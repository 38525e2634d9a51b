/* cli_inspect.c — `strata inspect PATH [--seq-len T] [--check]`.
 *
 * PATH is a shard, a stream (manifest or directory) or a checkpoint (an
 * HDF5 file whose root carries format = "strata-ckpt-1"). A shard or stream
 * shows its tokenizer, vocabulary, storage and how many samples it holds at
 * seq_len T; --check also reads every token (ids < vocab_size, document
 * offsets in order). A checkpoint shows its root attributes and the tensors
 * under /model, read with plain HDF5 calls so that inspect works on any
 * checkpoint, even one the checkpoint module would refuse.
 */
#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "strata/cli.h"
#include "strata/shard.h"
#include "strata/stream.h"

#define CKPT_FORMAT "strata-ckpt-1"

static const char usage[] = "usage: strata inspect FILE.h5|MANIFEST|DIR [--seq-len T] [--check]";

/* ---- shards and streams ------------------------------------------------- */

static void print_shard(const strata_shard *s, int T)
{
    const strata_shard_info *in = strata_shard_get_info(s);
    printf("%s: token shard (%s)\n", strata_shard_path(s), STRATA_SHARD_FORMAT);
    printf("  tokenizer   %s\n", in->tokenizer);
    printf("  vocab_size  %d\n", in->vocab_size);
    printf("  eot_token   %d\n", in->eot_token);
    if (in->tokenizer_hash[0]) {
        printf("  bos_token   %d\n", in->bos_token);
        printf("  tok. hash   %s\n", in->tokenizer_hash);
    }
    printf("  dtype       uint%d\n", in->token_bits);
    if (in->chunk_tokens > 0)
        printf("  chunking    %" PRId64 " tokens\n", in->chunk_tokens);
    else
        printf("  chunking    none (contiguous)\n");
    printf("  tokens      %" PRId64 "\n", in->n_tokens);
    printf("  documents   %" PRId64 "%s\n", in->n_docs, in->n_docs ? "" : " (no /doc_offsets)");
    printf("  samples     %" PRId64 " at seq_len %d\n", strata_shard_n_samples(s, T), T);
}

static int inspect_shard(const char *path, int T, int check)
{
    strata_shard *s = NULL;
    strata_err e = strata_shard_open(&s, path);
    if (!e.code && check) e = strata_shard_verify(s);
    if (e.code) {
        strata_shard_close(s);
        return strata_cli_fail("inspect", e);
    }
    print_shard(s, T);
    if (check) printf("  check       every token < vocab_size, documents in order\n");
    strata_shard_close(s);
    return 0;
}

static int inspect_stream(const char *path, int T, int check)
{
    strata_stream *st = NULL;
    strata_stream_opts o = {.seq_len = T, .allow_empty = 1};
    strata_err e = strata_stream_open(&st, path, &o);
    if (e.code) return strata_cli_fail("inspect", e);
    int n = strata_stream_n_shards(st);
    for (int i = 0; i < n && check && !e.code; i++) {
        strata_shard *s = NULL;
        e = strata_shard_open(&s, strata_stream_shard_at(st, i)->path);
        if (!e.code) e = strata_shard_verify(s);
        strata_shard_close(s);
    }
    if (e.code) {
        strata_stream_close(st);
        return strata_cli_fail("inspect", e);
    }
    const strata_shard_info *in = strata_stream_info(st);
    printf("%s: %s of %d shard%s\n", path, strata_stream_kind(st), n, n == 1 ? "" : "s");
    if (in)
        printf("  tokenizer %s, vocab_size %d, eot_token %d\n", in->tokenizer, in->vocab_size,
               in->eot_token);
    printf("  %-40s %8s %14s %10s %12s\n", "shard", "dtype", "tokens", "documents", "samples");
    int64_t docs = 0;
    for (int i = 0; i < n; i++) {
        const strata_stream_shard *s = strata_stream_shard_at(st, i);
        printf("  %-40s %8s %14" PRId64 " %10" PRId64 " %12" PRId64 "\n", s->path,
               s->info.token_bits == 16 ? "uint16" : "uint32", s->info.n_tokens, s->info.n_docs,
               s->n_samples);
        docs += s->info.n_docs;
    }
    printf("  %-40s %8s %14" PRId64 " %10" PRId64 " %12" PRId64 "\n", "total", "",
           strata_stream_n_tokens(st), docs, strata_stream_n_samples(st));
    printf("  samples at seq_len %d%s\n", T,
           check ? "; check: every token < vocab_size, documents in order" : "");
    strata_stream_close(st);
    return 0;
}

/* ---- checkpoints -------------------------------------------------------- */

typedef struct walk {
    const char *path;
    strata_err err;
    long count;
    uint64_t numel; /* UINT64_MAX: too many to count (a damaged file) */
} walk;

/* Prints the value of one attribute: integers and floats (up to 8 values),
 * strings (long or multi-line ones as a size). */
static strata_err print_attr(hid_t loc, const char *path, const char *name)
{
    char why[256];
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0)
        return strata_errorf(STRATA_EINPUT, "%s: attribute %s unreadable (%s)", path, name,
                             strata_hdf5_reason(why));
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    hssize_t np = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    strata_err e = strata_ok();
    H5T_class_t cls = t < 0 ? H5T_NO_CLASS : H5Tget_class(t);
    if (t < 0 || sp < 0 || np < 0) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s unreadable (%s)", path, name,
                          strata_hdf5_reason(why));
    } else if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && np >= 1 && np <= 8 &&
               H5Tget_size(t) <= 8) {
        int64_t iv[8];
        double dv[8];
        herr_t r = cls == H5T_INTEGER ? H5Aread(a, H5T_NATIVE_INT64, iv)
                                      : H5Aread(a, H5T_NATIVE_DOUBLE, dv);
        if (r < 0) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute %s unreadable (%s)", path, name,
                              strata_hdf5_reason(why));
        } else {
            printf("  %-16s", name);
            for (hssize_t i = 0; i < np; i++) {
                if (cls == H5T_INTEGER)
                    printf(" %" PRId64, iv[i]);
                else
                    printf(" %.9g", dv[i]);
            }
            printf("\n");
        }
    } else if (cls == H5T_STRING && np == 1) {
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
        if (bad[0]) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is damaged (%s)", path, name, bad);
        } else if (r < 0) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute %s unreadable (%s)", path, name,
                              strata_hdf5_reason(why));
        } else {
            const char *v = s ? s : "";
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
                printf("  %-16s (%zu bytes, %d line%s)\n", name, len, lines, lines == 1 ? "" : "s");
            else
                printf("  %-16s %s\n", name, v);
        }
        if (vs)
            H5free_memory(vs);
        else
            free(s);
        H5Tclose(mt);
    } else {
        printf("  %-16s (%s, %lld values)\n", name,
               cls == H5T_STRING    ? "strings"
               : cls == H5T_INTEGER ? "integers"
               : cls == H5T_FLOAT   ? "floats"
                                    : "other type",
               (long long)np);
    }
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return e;
}

static herr_t attr_cb(hid_t loc, const char *name, const H5A_info_t *info, void *data)
{
    walk *w = data;
    w->err = print_attr(loc, w->path, name);
    return w->err.code ? -1 : 0;
}

static herr_t tensor_cb(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    walk *w = data;
    char why[256];
    H5O_info_t oi;
    if (H5Oget_info_by_name2(group, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0) {
        w->err = strata_errorf(STRATA_EINPUT, "%s: /model/%s unreadable (%s)", w->path, name,
                               strata_hdf5_reason(why));
        return -1;
    }
    if (oi.type != H5O_TYPE_DATASET) {
        printf("  %-36s (not a dataset)\n", name);
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
        char shape[256] = "(";
        size_t m = 1;
        uint64_t numel = 1;
        for (int i = 0; i < rank; i++) {
            if (m < sizeof shape)
                m += (size_t)snprintf(shape + m, sizeof shape - m, "%s%llu", i ? ", " : "",
                                      (unsigned long long)dims[i]);
            /* a damaged file may claim any size: saturate rather than wrap */
            numel = dims[i] && numel > UINT64_MAX / dims[i] ? UINT64_MAX : numel * dims[i];
        }
        if (m < sizeof shape) snprintf(shape + m, sizeof shape - m, ")");
        size_t es = H5Tget_size(t);
        const char *tn = H5Tget_class(t) == H5T_FLOAT ? (es == 4   ? "float32"
                                                         : es == 8 ? "float64"
                                                                   : "float")
                                                      : "non-float";
        printf("  %-36s %-20s %s\n", name, shape, tn);
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

static int inspect_checkpoint(hid_t file, const char *path)
{
    char why[256];
    walk w = {.path = path, .err = strata_ok()};
    printf("%s: checkpoint (%s)\n", path, CKPT_FORMAT);
    hsize_t idx = 0;
    if (H5Aiterate2(file, H5_INDEX_NAME, H5_ITER_INC, &idx, attr_cb, &w) < 0) {
        if (!w.err.code)
            w.err = strata_errorf(STRATA_EINPUT, "%s: cannot list the root attributes (%s)", path,
                                  strata_hdf5_reason(why));
        return strata_cli_fail("inspect", w.err);
    }
    if (H5Lexists(file, "/model", H5P_DEFAULT) <= 0) {
        fflush(stdout);
        return strata_cli_fail("inspect",
                               strata_errorf(STRATA_EINPUT, "%s: no /model group", path));
    }
    hid_t g = H5Gopen2(file, "/model", H5P_DEFAULT);
    if (g < 0) {
        fflush(stdout);
        return strata_cli_fail("inspect",
                               strata_errorf(STRATA_EINPUT, "%s: /model is not a group (%s)", path,
                                             strata_hdf5_reason(why)));
    }
    printf("  /model:\n");
    idx = 0;
    herr_t r = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, tensor_cb, &w);
    H5Gclose(g);
    if (r < 0) {
        if (!w.err.code)
            w.err = strata_errorf(STRATA_EINPUT, "%s: cannot list /model (%s)", path,
                                  strata_hdf5_reason(why));
        fflush(stdout);
        return strata_cli_fail("inspect", w.err);
    }
    if (w.numel == UINT64_MAX)
        printf("  %ld tensors, too many parameters to count\n", w.count);
    else
        printf("  %ld tensors, %" PRIu64 " parameters\n", w.count, w.numel);
    long m = count_links(file, "/optim/m"), v = count_links(file, "/optim/v");
    if (m >= 0 || v >= 0)
        printf("  /optim: %ld m and %ld v tensors\n", m > 0 ? m : 0, v > 0 ? v : 0);
    else
        printf("  /optim: none (model only)\n");
    return 0;
}

/* Reads the root "format" attribute if it is a string; "" otherwise. */
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

static int inspect_file(const char *path, int T, int check)
{
    char why[256];
    if (H5Fis_hdf5(path) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return inspect_shard(path, T, check); /* reports "not an HDF5 file" */
    }
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, 0, 1);
#endif
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    strata_hdf5_reason(why); /* before the next call clears the error stack */
    H5Pclose(fapl);
    if (file < 0)
        return strata_cli_fail(
            "inspect", strata_errorf(STRATA_EINPUT, "%s: cannot open as HDF5 (%s)", path, why));
    /* HDF5 1.10 decodes attribute messages without bounds checks: look at
     * the root group's before asking it for any attribute. */
    char fmt[64] = "", bad[256];
    if (!strata_hdf5_attrs_ok(file, bad, sizeof bad)) {
        H5Fclose(file);
        return strata_cli_fail(
            "inspect",
            strata_errorf(STRATA_EINPUT, "%s: attributes of / are damaged (%s)", path, bad));
    }
    root_format(file, fmt, sizeof fmt);
    int rc;
    if (strcmp(fmt, CKPT_FORMAT) == 0) {
        rc = inspect_checkpoint(file, path);
        H5Fclose(file);
    } else {
        H5Fclose(file);
        rc = inspect_shard(path, T, check);
    }
    H5Eclear2(H5E_DEFAULT);
    return rc;
}

int strata_cli_inspect(int argc, char **argv)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const char *path = NULL;
    int T = 1024, check = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("%s\n", usage);
            return 0;
        } else if (!strcmp(a, "--seq-len") || !strncmp(a, "--seq-len=", 10)) {
            const char *v = a[9] == '=' ? a + 10 : (i + 1 < argc ? argv[++i] : NULL);
            char *end = NULL;
            long t = v ? strtol(v, &end, 10) : 0;
            if (!v || !*v || *end || t < 1 || t > (1L << 24)) {
                fprintf(stderr, "strata inspect: --seq-len needs a positive integer\n");
                return 2;
            }
            T = (int)t;
        } else if (!strcmp(a, "--check")) {
            check = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "strata inspect: unknown option %s (%s)\n", a, usage);
            return 2;
        } else if (path) {
            fprintf(stderr, "strata inspect: one path at a time (%s)\n", usage);
            return 2;
        } else {
            path = a;
        }
    }
    if (!path) {
        fprintf(stderr, "strata inspect: no path given (%s)\n", usage);
        return 2;
    }
    struct stat st;
    if (stat(path, &st) != 0)
        return strata_cli_fail("inspect",
                               strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno)));
    if (S_ISDIR(st.st_mode)) return inspect_stream(path, T, check);
    size_t n = strlen(path);
    int hdf5_name =
        (n >= 3 && !strcmp(path + n - 3, ".h5")) || (n >= 5 && !strcmp(path + n - 5, ".hdf5"));
    if (hdf5_name || H5Fis_hdf5(path) > 0) return inspect_file(path, T, check);
    H5Eclear2(H5E_DEFAULT);
    return inspect_stream(path, T, check);
}
