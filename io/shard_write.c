/* shard_write.c — writing token shards (the writer half of shard.h).
 *
 * Tokens collect in a buffer of one chunk and go to the file a whole chunk
 * at a time, so HDF5 writes each chunk once, straight through, without its
 * chunk cache. The /tokens dataset is created at the first full chunk; a
 * shard smaller than one chunk gets a single chunk of its own size (a tiny
 * shard stays tiny on disk). HDF5 writes the file under io/file.h's
 * temporary name, which is then published by file.h's one durability rule:
 * a reader sees the old file or the whole new one, never half.
 *
 * On disk: /tokens uint16 (vocab_size <= 65536) or uint32, little-endian,
 * 1-D, chunked, optionally shuffle+deflate; its attributes vocab_size and
 * eot_token (and bos_token) are 64-bit integers, tokenizer, format (and
 * tokenizer_hash) fixed-length NUL-terminated ASCII strings; /doc_offsets uint64 when any document
 * was started.
 */
#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "file.h"

#include "strata/shard.h"

#define DEFAULT_CHUNK_TOKENS ((int64_t)1 << 20)

struct strata_shard_writer {
    char *path;
    strata_out_file out; /* out.tmp[0] == 0: no temporary file to remove */
    hid_t file, tokens;  /* tokens < 0 until the first chunk is written */
    int vocab_size, eot_token, deflate, wide;
    char tokenizer[16];
    char hash[65]; /* "" = not written */
    int bos_token;
    int64_t chunk;   /* tokens per chunk, and per buffer */
    void *buf;       /* uint16_t or uint32_t [chunk] */
    int64_t buf_n;   /* tokens in buf */
    int64_t written; /* tokens in the file */
    uint64_t *docs;
    size_t n_docs, cap_docs;
    strata_err failed; /* first error of append/doc: close then discards the file */
};

/* Creates /tokens with chunk dims of `chunk` tokens and extent 0. */
static strata_err create_tokens(strata_shard_writer *w, int64_t chunk)
{
    hsize_t dims = 0, maxdims = H5S_UNLIMITED, cdims = (hsize_t)chunk;
    hid_t space = H5Screate_simple(1, &dims, &maxdims);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    herr_t st = space < 0 || dcpl < 0 ? -1 : H5Pset_chunk(dcpl, 1, &cdims);
    if (st >= 0) st = H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    if (st >= 0 && w->deflate) {
        /* tokens are small integers: grouping their bytes (shuffle) helps deflate */
        st = H5Pset_shuffle(dcpl);
        if (st >= 0) st = H5Pset_deflate(dcpl, (unsigned)w->deflate);
    }
    if (st >= 0) {
        w->tokens = H5Dcreate2(w->file, "/tokens", w->wide ? H5T_STD_U32LE : H5T_STD_U16LE, space,
                               H5P_DEFAULT, dcpl, H5P_DEFAULT);
        st = w->tokens < 0 ? -1 : 0;
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    if (st < 0) return strata_errorf(STRATA_EFAIL, "%s: cannot create /tokens", w->path);
    return strata_ok();
}

/* Appends the buffer to /tokens. */
static strata_err flush(strata_shard_writer *w)
{
    if (w->tokens < 0)
        STRATA_TRY(create_tokens(w, w->buf_n == w->chunk ? w->chunk : w->buf_n > 0 ? w->buf_n : 1));
    if (!w->buf_n) return strata_ok();
    hsize_t start = (hsize_t)w->written, count = (hsize_t)w->buf_n, total = start + count;
    herr_t st = H5Dset_extent(w->tokens, &total);
    hid_t fspace = st < 0 ? -1 : H5Dget_space(w->tokens);
    hid_t mspace = H5Screate_simple(1, &count, NULL);
    if (fspace < 0 || mspace < 0 ||
        H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &start, NULL, &count, NULL) < 0)
        st = -1;
    if (st >= 0)
        st = H5Dwrite(w->tokens, w->wide ? H5T_NATIVE_UINT32 : H5T_NATIVE_UINT16, mspace, fspace,
                      H5P_DEFAULT, w->buf);
    if (mspace >= 0) H5Sclose(mspace);
    if (fspace >= 0) H5Sclose(fspace);
    if (st < 0)
        return strata_errorf(STRATA_EFAIL, "%s: cannot write tokens %lld..%lld (disk full?)",
                             w->path, (long long)start, (long long)total);
    w->written = (int64_t)total;
    w->buf_n = 0;
    return strata_ok();
}

static void discard(strata_shard_writer *w)
{
    if (w->tokens >= 0) H5Dclose(w->tokens);
    if (w->file >= 0) H5Fclose(w->file);
    if (w->out.tmp[0]) unlink(w->out.tmp);
    free(w->path);
    free(w->buf);
    free(w->docs);
    free(w);
}

strata_err strata_shard_writer_open(strata_shard_writer **out, const char *path,
                                    const strata_shard_writer_opts *o)
{
    *out = NULL;
    if (!o || !o->tokenizer)
        return strata_errorf(STRATA_EFAIL, "%s: shard writer needs options", path);
    if (o->vocab_size < 1)
        return strata_errorf(STRATA_EINPUT, "%s: vocab_size %d must be positive", path,
                             o->vocab_size);
    if (o->eot_token < -1 || o->eot_token >= o->vocab_size)
        return strata_errorf(STRATA_EINPUT, "%s: eot_token %d is not -1 or below vocab_size %d",
                             path, o->eot_token, o->vocab_size);
    if (!*o->tokenizer || strlen(o->tokenizer) >= sizeof((strata_shard_writer *)0)->tokenizer)
        return strata_errorf(STRATA_EINPUT, "%s: tokenizer name '%s' must be 1 to 15 characters",
                             path, o->tokenizer);
    if (o->deflate < 0 || o->deflate > 9)
        return strata_errorf(STRATA_EINPUT, "%s: deflate level %d is not 0..9", path, o->deflate);
    int has_hash = o->tokenizer_hash && *o->tokenizer_hash;
    if (has_hash &&
        (strlen(o->tokenizer_hash) != 64 || strspn(o->tokenizer_hash, "0123456789abcdef") != 64))
        return strata_errorf(STRATA_EINPUT, "%s: tokenizer hash '%.80s' is not 64 hex digits", path,
                             o->tokenizer_hash);
    if (has_hash && (o->bos_token < -1 || o->bos_token >= o->vocab_size))
        return strata_errorf(STRATA_EINPUT, "%s: bos_token %d is not -1 or below vocab_size %d",
                             path, o->bos_token, o->vocab_size);
    if (o->chunk_tokens < 0 || o->chunk_tokens > ((int64_t)1 << 28))
        return strata_errorf(STRATA_EINPUT, "%s: chunk of %lld tokens is not 0..2^28", path,
                             (long long)o->chunk_tokens);

    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* errors come back as values, never printed */
    if (o->deflate && H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0)
        return strata_errorf(STRATA_EFAIL, "%s: this HDF5 has no deflate filter", path);

    strata_shard_writer *w = calloc(1, sizeof *w);
    if (!w) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    w->file = w->tokens = H5I_INVALID_HID;
    w->vocab_size = o->vocab_size;
    w->eot_token = o->eot_token;
    w->deflate = o->deflate;
    w->wide = o->vocab_size > 65536;
    strcpy(w->tokenizer, o->tokenizer);
    if (has_hash) {
        strcpy(w->hash, o->tokenizer_hash);
        w->bos_token = o->bos_token;
    }
    w->chunk = o->chunk_tokens ? o->chunk_tokens : DEFAULT_CHUNK_TOKENS;
    w->path = strdup(path);
    w->buf = malloc((size_t)w->chunk * (w->wide ? 4 : 2));
    if (!w->path || !w->buf) {
        discard(w);
        return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    }
    strata_err named = strata_out_name(&w->out, w->path);
    if (named.code) {
        w->out.tmp[0] = 0; /* nothing to unlink yet */
        discard(w);
        return named;
    }
    errno = 0;
    w->file = H5Fcreate(w->out.tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->file < 0) {
        int err = errno;
        strata_err e = strata_errorf(STRATA_EINPUT, "%s: cannot create %s%s%s", path, w->out.tmp,
                                     err ? ": " : "", err ? strerror(err) : "");
        discard(w);
        return e;
    }
    *out = w;
    return strata_ok();
}

strata_err strata_shard_writer_doc(strata_shard_writer *w)
{
    if (w->failed.code) return w->failed;
    if (w->n_docs == w->cap_docs) {
        size_t cap = w->cap_docs ? 2 * w->cap_docs : 1024;
        uint64_t *d = realloc(w->docs, cap * sizeof *d);
        if (!d) return w->failed = strata_errorf(STRATA_ENOMEM, "%s: out of memory", w->path);
        w->docs = d;
        w->cap_docs = cap;
    }
    w->docs[w->n_docs++] = (uint64_t)(w->written + w->buf_n);
    return strata_ok();
}

strata_err strata_shard_writer_append(strata_shard_writer *w, const uint32_t *tokens, size_t n)
{
    if (w->failed.code) return w->failed;
    while (n) {
        size_t k = (size_t)(w->chunk - w->buf_n);
        if (k > n) k = n;
        /* Check and narrow in one pass; the check is what lets the reader
         * trust the file (and catches a tokenizer bug here, not in training). */
        uint32_t bad = 0;
        if (w->wide) {
            uint32_t *dst = (uint32_t *)w->buf + w->buf_n;
            for (size_t i = 0; i < k; i++) {
                dst[i] = tokens[i];
                bad |= tokens[i] >= (uint32_t)w->vocab_size;
            }
        } else {
            uint16_t *dst = (uint16_t *)w->buf + w->buf_n;
            for (size_t i = 0; i < k; i++) {
                dst[i] = (uint16_t)tokens[i];
                bad |= tokens[i] >= (uint32_t)w->vocab_size;
            }
        }
        if (bad) {
            for (size_t i = 0; i < k; i++)
                if (tokens[i] >= (uint32_t)w->vocab_size)
                    return w->failed = strata_errorf(
                               STRATA_EFAIL, "%s: token %lld is id %u, not below vocab_size %d",
                               w->path, (long long)(w->written + w->buf_n + (int64_t)i), tokens[i],
                               w->vocab_size);
        }
        w->buf_n += (int64_t)k;
        tokens += k;
        n -= k;
        if (w->buf_n == w->chunk) {
            strata_err e = flush(w);
            if (e.code) return w->failed = e;
        }
    }
    return strata_ok();
}

int64_t strata_shard_writer_tokens(const strata_shard_writer *w) { return w->written + w->buf_n; }

static herr_t write_int_attr(hid_t obj, const char *name, int64_t v)
{
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a =
        space < 0 ? -1 : H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT64, &v);
    if (a >= 0) H5Aclose(a);
    if (space >= 0) H5Sclose(space);
    return st;
}

static herr_t write_str_attr(hid_t obj, const char *name, const char *v)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    herr_t st = type < 0 ? -1 : H5Tset_size(type, strlen(v) + 1);
    if (st >= 0) st = H5Tset_strpad(type, H5T_STR_NULLTERM);
    if (st >= 0) st = H5Tset_cset(type, H5T_CSET_ASCII);
    hid_t space = st < 0 ? -1 : H5Screate(H5S_SCALAR);
    hid_t a = space < 0 ? -1 : H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    st = a < 0 ? -1 : H5Awrite(a, type, v);
    if (a >= 0) H5Aclose(a);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return st;
}

static strata_err write_docs(strata_shard_writer *w)
{
    hsize_t n = w->n_docs;
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t d = space < 0 ? -1
                        : H5Dcreate2(w->file, "/doc_offsets", H5T_STD_U64LE, space, H5P_DEFAULT,
                                     H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = d < 0 ? -1 : H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, w->docs);
    if (d >= 0) H5Dclose(d);
    if (space >= 0) H5Sclose(space);
    if (st < 0) return strata_errorf(STRATA_EFAIL, "%s: cannot write /doc_offsets", w->path);
    return strata_ok();
}

strata_err strata_shard_writer_close(strata_shard_writer *w)
{
    if (!w) return strata_ok();
    strata_err e = w->failed;
    if (!e.code) e = flush(w);
    if (!e.code && w->n_docs) e = write_docs(w);
    if (!e.code && (write_int_attr(w->tokens, "vocab_size", w->vocab_size) < 0 ||
                    write_int_attr(w->tokens, "eot_token", w->eot_token) < 0 ||
                    write_str_attr(w->tokens, "tokenizer", w->tokenizer) < 0 ||
                    write_str_attr(w->tokens, "format", STRATA_SHARD_FORMAT) < 0 ||
                    (w->hash[0] && (write_str_attr(w->tokens, "tokenizer_hash", w->hash) < 0 ||
                                    write_int_attr(w->tokens, "bos_token", w->bos_token) < 0))))
        e = strata_errorf(STRATA_EFAIL, "%s: cannot write the attributes of /tokens", w->path);
    if (e.code) {
        discard(w);
        return e;
    }
    herr_t st = H5Dclose(w->tokens);
    w->tokens = H5I_INVALID_HID;
    if (H5Fclose(w->file) < 0) st = -1;
    w->file = H5I_INVALID_HID;
    if (st < 0) {
        e = strata_errorf(STRATA_EFAIL, "%s: cannot finish %s (disk full?)", w->path, w->out.tmp);
    } else {
        e = strata_out_publish(&w->out);
        w->out.tmp[0] = 0; /* in place, or removed by the failed publish */
    }
    discard(w);
    return e;
}

/* Abandons a shard being written: the temporary file is removed and the file
 * at path, if any, is left as it was. */
void strata_shard_writer_abort(strata_shard_writer *w);
void strata_shard_writer_abort(strata_shard_writer *w)
{
    if (w) discard(w);
}
