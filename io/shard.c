/* shard.c — reading HDF5 token shards (the reader half of shard.h).
 *
 * The reader trusts nothing in the file. Opening checks, in order: the file
 * is HDF5 and opens; /tokens is a 1-D unsigned 16- or 32-bit integer
 * dataset; its filters are available; its data is actually stored (every
 * chunk present, or the contiguous block inside the file); its attribute
 * messages are sound; the four attributes have the right class and a value
 * in range. Reading checks every chunk it touches the first time and every
 * token id against vocab_size.
 *
 * HDF5 1.10 itself is not safe on damaged files: it crashes or hangs on a
 * corrupt attribute message, global heap or filter mask (found by flipping
 * bytes of real shards). Where it would, we look at the bytes first, with
 * plain reads of the file, and refuse what HDF5 would trip over; see
 * "attribute messages" and check_storage below. HDF5 reports other damage
 * as an error on its error stack; we never let it print (H5Eset_auto2 off,
 * per thread, since the thread-safe build keeps one stack per thread) and
 * fold the innermost message into ours instead.
 */
#include "strata/shard.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5check.h"
#include "h5inflate.h"

/* What a filtered chunk must look like before HDF5 may read it (see
 * check_chunk): chunks are checked at their first read, since HDF5 1.10
 * finds one chunk's record only by walking the index. */
typedef struct chunk_rules {
    int64_t n_chunks;
    uint64_t chunk_bytes, file_bytes;
    uint64_t optional; /* filters a chunk may skip */
    uint64_t all;      /* every filter of the pipeline */
    uint8_t *checked;  /* one bit per chunk; NULL when unfiltered or decoded here */
} chunk_rules;

struct strata_shard {
    char *path;
    hid_t file, dset;
    strata_shard_info info;
    int big_endian; /* byte order of /tokens in the file */
    chunk_rules rules;
    strata_h5_decoder dec;
    uint16_t *scratch; /* uint16 shards are read here, then widened */
    size_t scratch_cap;
};

/* Largest token count we accept: keeps every byte count and sample id far
 * from overflow (2^48 tokens is 512 TiB of uint16). */
#define MAX_TOKENS ((int64_t)1 << 48)

static void hdf5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* How a message names an HDF5 type: "uint16", "float64", "a string". */
static void type_name(hid_t t, char *buf, size_t n)
{
    static const char *const class_names[H5T_NCLASSES] = {
        [H5T_STRING] = "a string",       [H5T_COMPOUND] = "a compound type",
        [H5T_ARRAY] = "an array type",   [H5T_ENUM] = "an enum",
        [H5T_BITFIELD] = "a bitfield",   [H5T_OPAQUE] = "opaque",
        [H5T_REFERENCE] = "a reference", [H5T_VLEN] = "a variable-length sequence",
    };
    H5T_class_t cls = H5Tget_class(t);
    size_t size = H5Tget_size(t);
    if (cls == H5T_INTEGER)
        snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", 8 * size);
    else if (cls == H5T_FLOAT)
        snprintf(buf, n, "float%zu", 8 * size);
    else if (cls > H5T_NO_CLASS && cls < H5T_NCLASSES && class_names[cls])
        snprintf(buf, n, "%s", class_names[cls]);
    else
        snprintf(buf, n, "an unknown type");
}

/* Call right after the HDF5 call that failed, before another one clears
 * the error stack that holds the reason. */
static strata_err attr_unreadable(const char *path, const char *name)
{
    char why[256];
    return strata_errorf(STRATA_EINPUT, "%s: attribute %s is unreadable (%s)", path, name,
                         strata_hdf5_reason(why));
}

/* Opens attribute name of /tokens and checks it holds one value of class
 * cls: an integer of at most 64 bits, or a string. *a and *t receive the
 * attribute and its type, for the caller to read and close. */
static strata_err open_attr(hid_t obj, const char *path, const char *name, H5T_class_t cls,
                            hid_t *a, hid_t *t)
{
    char why[256];
    htri_t ex = H5Aexists(obj, name);
    if (ex < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot read attributes of /tokens (%s)", path,
                             strata_hdf5_reason(why));
    if (ex == 0) return strata_errorf(STRATA_EINPUT, "%s: /tokens has no %s attribute", path, name);
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open attribute %s (%s)", path, name,
                             strata_hdf5_reason(why));
    int is_int = cls == H5T_INTEGER;
    strata_err e = strata_ok();
    hid_t type = H5Aget_type(attr), sp = H5Aget_space(attr);
    hssize_t np = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    if (type < 0 || sp < 0) {
        e = attr_unreadable(path, name);
    } else if (H5Tget_class(type) != cls || (is_int && H5Tget_size(type) > 8)) {
        char tn[64];
        type_name(type, tn, sizeof tn);
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is %s, expected %s", path, name, tn,
                          is_int ? "an integer" : "a string");
    } else if (np != 1) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s holds %lld %s, expected one", path, name,
                          (long long)np, is_int ? "values" : "strings");
    }
    if (sp >= 0) H5Sclose(sp);
    if (e.code) {
        if (type >= 0) H5Tclose(type);
        H5Aclose(attr);
        return e;
    }
    *a = attr;
    *t = type;
    return strata_ok();
}

/* Reads an integer attribute of any width and signedness held in a scalar
 * or one-element dataspace. h5py writes int64; C writers often int32. */
static strata_err read_int_attr(hid_t obj, const char *path, const char *name, int64_t *v)
{
    hid_t a = -1, t = -1;
    STRATA_TRY(open_attr(obj, path, name, H5T_INTEGER, &a, &t));
    strata_err e = H5Aread(a, H5T_NATIVE_INT64, v) < 0 ? attr_unreadable(path, name) : strata_ok();
    H5Tclose(t);
    H5Aclose(a);
    return e;
}

/* Reads a string attribute, fixed-length (any padding) or variable-length,
 * ASCII or UTF-8, into out (at most cap-1 bytes; longer is an error). */
static strata_err read_str_attr(hid_t obj, const char *path, const char *name, char *out,
                                size_t cap)
{
    char why[256];
    hid_t a = -1, t = -1;
    STRATA_TRY(open_attr(obj, path, name, H5T_STRING, &a, &t));
    strata_err e = strata_ok();
    char *buf = NULL;
    /* The memory type keeps the file's character set: HDF5 refuses to
     * convert between ASCII and UTF-8 strings. */
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_cset(mt, H5Tget_cset(t));
    const char *s = NULL;
    if (H5Tis_variable_str(t) > 0) {
        H5Tset_size(mt, H5T_VARIABLE);
        char *vs = NULL;
        if (!strata_hdf5_vlen_attr_ok(obj, name, why, sizeof why)) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is damaged (%s)", path, name, why);
            goto done;
        }
        if (H5Aread(a, mt, &vs) < 0) {
            e = attr_unreadable(path, name);
            goto done;
        }
        if (vs) {
            buf = strdup(vs);
            H5free_memory(vs);
            if (!buf) {
                e = strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
                goto done;
            }
        }
        s = buf ? buf : "";
    } else {
        size_t size = H5Tget_size(t);
        if (size == 0 || size > 4096) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is a string of %zu bytes", path,
                              name, size);
            goto done;
        }
        H5Tset_size(mt, size + 1);
        H5Tset_strpad(mt, H5T_STR_NULLTERM);
        buf = calloc(size + 1, 1);
        if (!buf) {
            e = strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        if (H5Aread(a, mt, buf) < 0) {
            e = attr_unreadable(path, name);
            goto done;
        }
        buf[size] = 0;
        s = buf;
    }
    size_t len = strlen(s);
    while (len > 0 && s[len - 1] == ' ') len--; /* space-padded strings */
    if (len >= cap) {
        e = strata_errorf(STRATA_EINPUT, "%s: attribute %s is %zu bytes long, expected < %zu", path,
                          name, len, cap);
        goto done;
    }
    memcpy(out, s, len);
    out[len] = 0;
done:
    free(buf);
    if (mt >= 0) H5Tclose(mt);
    H5Tclose(t);
    H5Aclose(a);
    return e;
}

/* Printable form of an attribute string for a message. */
static const char *shown(const char *s, char *buf, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 5 < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isprint(c))
            buf[j++] = (char)c;
        else
            j += (size_t)snprintf(buf + j, n - j, "\\x%02x", c);
    }
    buf[j] = 0;
    return buf;
}

static int tokenizer_name_ok(const char *s)
{
    if (!s[0]) return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_' && *s != '-') return 0;
    return 1;
}

static int is_prime(size_t n)
{
    if (n < 2) return 0;
    for (size_t d = 2; d * d <= n; d++)
        if (n % d == 0) return 0;
    return 1;
}

/* A dataset access list whose chunk cache holds the whole shard up to
 * 32 MiB, and at least four chunks: a sample of T+1 tokens spans at most
 * two chunks and the samples of one shuffle window lie in a few
 * neighbouring ones, so each chunk is read (and inflated) once per window;
 * random replay reads of a small corpus hit the cache once it is warm.
 * HDF5 takes the memory only for chunks actually read. */
static hid_t chunk_cache_dapl(int64_t n_tokens, int64_t chunk_tokens, int bytes_per_token)
{
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    if (dapl < 0) return dapl;
    size_t chunk_bytes = (size_t)chunk_tokens * (size_t)bytes_per_token;
    size_t shard_bytes = (size_t)n_tokens * (size_t)bytes_per_token;
    size_t nbytes = shard_bytes < ((size_t)32 << 20) ? shard_bytes : (size_t)32 << 20;
    if (nbytes < 4 * chunk_bytes) nbytes = 4 * chunk_bytes;
    if (nbytes < ((size_t)1 << 20)) nbytes = (size_t)1 << 20;
    if (nbytes > ((size_t)256 << 20)) nbytes = (size_t)256 << 20;
    /* HDF5 wants a prime number of hash slots, ~100 per chunk that fits. */
    size_t slots = 100 * (nbytes / (chunk_bytes ? chunk_bytes : 1) + 1);
    if (slots < 521) slots = 521;
    if (slots > 100003) slots = 100003;
    while (!is_prime(slots)) slots++;
    H5Pset_chunk_cache(dapl, slots, nbytes, 0.75);
    return dapl;
}

/* Checks a dataset's filters are all available (h5py may write LZF, which
 * plain HDF5 lacks) and notes whether it is compressed. */
static strata_err check_filters(hid_t dcpl, const char *path, const char *what)
{
    int nf = H5Pget_nfilters(dcpl);
    char why[256];
    if (nf < 0)
        return strata_errorf(STRATA_EINPUT, "%s: %s has an unreadable filter pipeline (%s)", path,
                             what, strata_hdf5_reason(why));
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, cd[16], cfg = 0;
        size_t ncd = 16;
        char name[64] = "";
        H5Z_filter_t id =
            H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, sizeof name, name, &cfg);
        if (id < 0)
            return strata_errorf(STRATA_EINPUT, "%s: %s has an unreadable filter (%s)", path, what,
                                 strata_hdf5_reason(why));
        name[sizeof name - 1] = 0;
        /* An optional filter HDF5 lacks was skipped when the chunks were
         * written without it; if a chunk does need it, reading says so. */
        if (!(flags & H5Z_FLAG_OPTIONAL) && H5Zfilter_avail(id) <= 0) {
            char nb[80];
            return strata_errorf(STRATA_EINPUT,
                                 "%s: %s uses filter '%s' (id %d), which this HDF5 build lacks "
                                 "(HINT: rewrite the shard with gzip or no compression)",
                                 path, what, shown(name, nb, sizeof nb), (int)id);
        }
    }
    return strata_ok();
}

/* Tokens [start, start+n) from decoded chunks, as host uint32. */
static strata_err read_decoded(strata_shard *s, int64_t start, int64_t n, uint32_t *out)
{
    int64_t ck = s->info.chunk_tokens, end = start + n;
    int e = s->info.token_bits / 8, be = s->big_endian;
    for (int64_t c = start / ck; c * ck < end; c++) {
        const uint8_t *p = NULL;
        STRATA_TRY(strata_h5_decoder_chunk(&s->dec, s->dset, c, &p));
        int64_t a = start > c * ck ? start : c * ck, b = end < (c + 1) * ck ? end : (c + 1) * ck;
        for (int64_t i = a; i < b; i++) {
            const uint8_t *q = p + (size_t)(i - c * ck) * (size_t)e;
            uint32_t v = 0;
            for (int k = 0; k < e; k++) v |= (uint32_t)q[be ? e - 1 - k : k] << (8 * k);
            out[i - start] = v;
        }
    }
    return strata_ok();
}

/* Checks the data of /tokens is really in the file: HDF5 silently returns
 * the fill value for chunks that were never written, and a damaged header
 * may point anywhere. HDF5 1.10 also copies a whole chunk out of a buffer
 * the size of what its filters returned, so a chunk that reaches it shorter
 * than a chunk reads past that buffer: an unfiltered chunk stored short
 * (its filter message lost to damage, say), or a compressed chunk whose
 * filter mask, damaged, skips the decompression. Unfiltered datasets are
 * checked here in one pass (stored bytes = chunks x chunk size); chunks
 * compressed with deflate and shuffle are decoded by us (decode_chunk),
 * and chunks behind other filters are checked one by one at their first
 * read (check_chunk). */
static strata_err check_storage(strata_shard *s, hid_t dcpl, int esize)
{
    char why[256];
    H5D_layout_t layout = H5Pget_layout(dcpl);
    int64_t n = s->info.n_tokens;
    hsize_t fsize = 0;
    if (H5Fget_filesize(s->file, &fsize) < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot get the file size (%s)", s->path,
                             strata_hdf5_reason(why));
    if (layout == H5D_CHUNKED) {
        chunk_rules *cr = &s->rules;
        int64_t ck = s->info.chunk_tokens;
        cr->n_chunks = (n + ck - 1) / ck;
        cr->chunk_bytes = (uint64_t)ck * (uint64_t)esize;
        cr->file_bytes = fsize;
        int nf = H5Pget_nfilters(dcpl);
        cr->all = nf > 0 && nf < 64 ? ((uint64_t)1 << nf) - 1 : 0;
        for (int i = 0; i < nf && i < 64; i++) {
            unsigned flags = 0, cfg = 0;
            size_t ncd = 0;
            if (H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, NULL, 0, NULL, &cfg) >= 0 &&
                (flags & H5Z_FLAG_OPTIONAL))
                cr->optional |= (uint64_t)1 << i;
        }
        hsize_t have = 0;
        hid_t fs = H5Dget_space(s->dset);
        herr_t r = fs < 0 ? -1 : H5Dget_num_chunks(s->dset, fs, &have);
        if (fs >= 0) H5Sclose(fs);
        if (r < 0)
            return strata_errorf(STRATA_EINPUT, "%s: cannot list the chunks of /tokens (%s)",
                                 s->path, strata_hdf5_reason(why));
        /* HDF5 drops chunks outside the extent when a dataset shrinks, so
         * any other count means a damaged index or chunk shape. */
        if ((int64_t)have != cr->n_chunks)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: /tokens has %llu chunks stored, %" PRId64
                                 " expected (file incomplete or damaged)",
                                 s->path, (unsigned long long)have, cr->n_chunks);
        if (nf == 0) {
            hsize_t stored = H5Dget_storage_size(s->dset);
            if (stored != have * cr->chunk_bytes)
                return strata_errorf(STRATA_EINPUT,
                                     "%s: /tokens stores %llu bytes in %llu uncompressed chunks "
                                     "of %llu bytes (damaged)",
                                     s->path, (unsigned long long)stored, (unsigned long long)have,
                                     (unsigned long long)cr->chunk_bytes);
        } else if (!strata_h5_decoder_init(&s->dec, dcpl, s->path, "/tokens", esize, ck,
                                           cr->n_chunks, fsize) &&
                   !(cr->checked = calloc((size_t)(cr->n_chunks + 7) / 8, 1))) {
            return strata_errorf(STRATA_ENOMEM, "%s: out of memory", s->path);
        }
    } else if (layout == H5D_CONTIGUOUS) {
        haddr_t off = H5Dget_offset(s->dset);
        if (off == HADDR_UNDEF)
            return strata_errorf(STRATA_EINPUT, "%s: /tokens has no data stored", s->path);
        if (off > fsize || (uint64_t)n * (uint64_t)esize > fsize - off)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: /tokens claims %lld tokens at byte %llu but the file has "
                                 "%llu bytes (truncated or damaged)",
                                 s->path, (long long)n, (unsigned long long)off,
                                 (unsigned long long)fsize);
    } else if (layout != H5D_COMPACT) {
        return strata_errorf(STRATA_EINPUT, "%s: /tokens has an unknown storage layout", s->path);
    }
    return strata_ok();
}

/* Checks filtered chunk c before its first read: stored inside the file,
 * skipping no required filter, and stored whole if it skips them all. */
static strata_err check_chunk(strata_shard *s, int64_t c)
{
    chunk_rules *cr = &s->rules;
    if (!cr->checked || (cr->checked[c / 8] >> (c % 8) & 1)) return strata_ok();
    char why[256];
    hsize_t off = (hsize_t)(c * s->info.chunk_tokens), size = 0;
    haddr_t addr = HADDR_UNDEF;
    unsigned mask = 0;
    if (H5Dget_chunk_info_by_coord(s->dset, &off, &mask, &addr, &size) < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot look up chunk %" PRId64 " of /tokens (%s)",
                             s->path, c, strata_hdf5_reason(why));
    if (addr == HADDR_UNDEF)
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of /tokens is not stored (file incomplete "
                             "or damaged)",
                             s->path, c);
    if (mask & ~cr->optional)
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of /tokens skips a required filter (mask "
                             "0x%x; damaged)",
                             s->path, c, mask);
    int raw = (mask & cr->all) == cr->all; /* stored as plain tokens */
    if (addr > cr->file_bytes || size > cr->file_bytes - addr || size == 0 ||
        (raw && size != cr->chunk_bytes))
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of /tokens claims %llu bytes at byte %llu of "
                             "a %llu-byte file (damaged)",
                             s->path, c, (unsigned long long)size, (unsigned long long)addr,
                             (unsigned long long)cr->file_bytes);
    cr->checked[c / 8] |= (uint8_t)(1u << (c % 8));
    return strata_ok();
}

/* Opens a 1-D dataset and checks rank and class; *dims receives its length. */
static strata_err open_1d(hid_t file, const char *path, const char *name, hid_t dapl, hid_t *out,
                          int64_t *dims)
{
    char why[256];
    *out = -1;
    htri_t ex = H5Lexists(file, name, H5P_DEFAULT);
    if (ex < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot look up %s (%s)", path, name,
                             strata_hdf5_reason(why));
    if (ex == 0) return strata_errorf(STRATA_EINPUT, "%s: no %s dataset", path, name);
    H5O_info_t oi;
    if (H5Oget_info_by_name2(file, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
        return strata_errorf(STRATA_EINPUT, "%s: %s is unreadable (%s)", path, name,
                             strata_hdf5_reason(why));
    if (oi.type != H5O_TYPE_DATASET)
        return strata_errorf(STRATA_EINPUT, "%s: %s is a %s, not a dataset", path, name,
                             oi.type == H5O_TYPE_GROUP ? "group" : "named type");
    hid_t d = H5Dopen2(file, name, dapl);
    if (d < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open %s (%s)", path, name,
                             strata_hdf5_reason(why));
    hid_t sp = H5Dget_space(d);
    int rank = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    hsize_t dim = 0;
    strata_err e = strata_ok();
    if (sp < 0 || rank < 0) {
        e = strata_errorf(STRATA_EINPUT, "%s: %s has an unreadable shape (%s)", path, name,
                          strata_hdf5_reason(why));
    } else if (H5Sget_simple_extent_type(sp) != H5S_SIMPLE || rank != 1) {
        e = strata_errorf(STRATA_EINPUT, "%s: %s has rank %d, expected 1", path, name,
                          H5Sget_simple_extent_type(sp) == H5S_SIMPLE ? rank : 0);
    } else {
        H5Sget_simple_extent_dims(sp, &dim, NULL);
        if (dim > (hsize_t)MAX_TOKENS)
            e = strata_errorf(STRATA_EINPUT, "%s: %s claims %llu elements (damaged?)", path, name,
                              (unsigned long long)dim);
    }
    if (sp >= 0) H5Sclose(sp);
    if (e.code) {
        H5Dclose(d);
        return e;
    }
    *out = d;
    *dims = (int64_t)dim;
    return strata_ok();
}

/* The file: a regular HDF5 file that opens read-only. */
static strata_err open_file(strata_shard *s)
{
    char why[256];
    const char *path = s->path;
    struct stat st;
    if (stat(path, &st) != 0) return strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return strata_errorf(STRATA_EINPUT, "%s: is a directory, not a shard", path);
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) {
        strata_hdf5_reason(why);
        return strata_errorf(STRATA_EINPUT, "%s: not an HDF5 file", path);
    }
    /* Read-only opens need no lock, and locking fails on some cluster
     * filesystems; STRONG close releases every object with the file. */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, 0, 1);
#endif
    s->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    strata_hdf5_reason(why); /* before the next call clears the error stack */
    H5Pclose(fapl);
    if (s->file < 0) return strata_errorf(STRATA_EINPUT, "%s: cannot open as HDF5 (%s)", path, why);

    return strata_ok();
}

/* /tokens: 1-D, unsigned 16 or 32 bits, every bit significant. */
static strata_err check_tokens_type(strata_shard *s, size_t *esize_out)
{
    char why[256];
    const char *path = s->path;
    int64_t n = 0;
    STRATA_TRY(open_1d(s->file, path, "/tokens", H5P_DEFAULT, &s->dset, &n));
    s->info.n_tokens = n;

    hid_t t = H5Dget_type(s->dset);
    if (t < 0)
        return strata_errorf(STRATA_EINPUT, "%s: /tokens has an unreadable type (%s)", path,
                             strata_hdf5_reason(why));
    H5T_class_t cls = H5Tget_class(t);
    H5T_sign_t sign = H5Tget_sign(t);
    size_t esize = H5Tget_size(t), prec = H5Tget_precision(t);
    s->big_endian = H5Tget_order(t) == H5T_ORDER_BE;
    int bitoff = H5Tget_offset(t);
    char tn[64];
    type_name(t, tn, sizeof tn);
    H5Tclose(t);
    if (cls != H5T_INTEGER || sign != H5T_SGN_NONE || (esize != 2 && esize != 4))
        return strata_errorf(STRATA_EINPUT, "%s: /tokens is %s, expected uint16 or uint32", path,
                             tn);
    if (prec != 8 * esize || bitoff != 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: /tokens is %s with %zu significant bits at bit %d, expected "
                             "all %zu bits",
                             path, tn, prec, bitoff, 8 * esize);
    s->info.token_bits = (int)(8 * esize);
    *esize_out = esize;
    return strata_ok();
}

/* Filters available, chunk shape sane, at least two tokens, data stored. */
static strata_err check_layout(strata_shard *s, size_t esize)
{
    char why[256];
    const char *path = s->path;
    int64_t n = s->info.n_tokens;
    hid_t dcpl = H5Dget_create_plist(s->dset);
    if (dcpl < 0)
        return strata_errorf(STRATA_EINPUT, "%s: /tokens has unreadable properties (%s)", path,
                             strata_hdf5_reason(why));
    strata_err e = check_filters(dcpl, path, "/tokens");
    if (!e.code && H5Pget_layout(dcpl) == H5D_CHUNKED) {
        hsize_t ck = 0;
        if (H5Pget_chunk(dcpl, 1, &ck) != 1 || ck == 0 || ck > (hsize_t)MAX_TOKENS)
            e = strata_errorf(STRATA_EINPUT, "%s: /tokens has a bad chunk shape", path);
        s->info.chunk_tokens = (int64_t)ck;
    }
    if (!e.code && n == 0) e = strata_errorf(STRATA_EINPUT, "%s: empty shard (no tokens)", path);
    if (!e.code && n == 1)
        e = strata_errorf(STRATA_EINPUT, "%s: shard holds 1 token; a sample needs at least 2",
                          path);
    if (!e.code) e = check_storage(s, dcpl, (int)esize);
    H5Pclose(dcpl);
    if (e.code) return e;

    return strata_ok();
}

/* vocab_size, eot_token, format and tokenizer, after h5check has looked at
 * every attribute message of /tokens (HDF5 decodes them all to find one). */
static strata_err read_attributes(strata_shard *s, size_t esize)
{
    const char *path = s->path;
    /* HDF5 decodes every attribute message of /tokens to find one by name. */
    const char *bad = strata_hdf5_attrs_problem(s->dset, NULL);
    if (bad)
        return strata_errorf(STRATA_EINPUT, "%s: attributes of /tokens are damaged (%s)", path,
                             bad);
    int64_t vocab = 0, eot = 0;
    STRATA_TRY(read_int_attr(s->dset, path, "vocab_size", &vocab));
    STRATA_TRY(read_int_attr(s->dset, path, "eot_token", &eot));
    char fmt[64], tok[64], sb[300];
    STRATA_TRY(read_str_attr(s->dset, path, "format", fmt, sizeof fmt));
    STRATA_TRY(read_str_attr(s->dset, path, "tokenizer", tok, sizeof tok));
    if (strcmp(fmt, STRATA_SHARD_FORMAT) != 0)
        return strata_errorf(STRATA_EINPUT, "%s: format attribute is '%s', expected '%s'", path,
                             shown(fmt, sb, sizeof sb), STRATA_SHARD_FORMAT);
    if (vocab < 1 || vocab > INT_MAX)
        return strata_errorf(STRATA_EINPUT,
                             "%s: vocab_size attribute is %" PRId64 ", expected 1 .. %d", path,
                             vocab, INT_MAX);
    if (esize == 2 && vocab > 65536)
        return strata_errorf(STRATA_EINPUT,
                             "%s: /tokens is uint16 but vocab_size is %" PRId64
                             " (ids above 65535 cannot be stored; expected uint32)",
                             path, vocab);
    if (eot < -1 || eot >= vocab)
        return strata_errorf(STRATA_EINPUT,
                             "%s: eot_token attribute is %" PRId64 ", expected -1 or 0 .. %" PRId64,
                             path, eot, vocab - 1);
    if (!tokenizer_name_ok(tok) || strlen(tok) >= sizeof s->info.tokenizer)
        return strata_errorf(STRATA_EINPUT,
                             "%s: tokenizer attribute is '%s', expected a short name such as "
                             "'byte' or 'gpt2'",
                             path, shown(tok, sb, sizeof sb));
    s->info.vocab_size = (int)vocab;
    s->info.eot_token = (int)eot;
    snprintf(s->info.tokenizer, sizeof s->info.tokenizer, "%s", tok);
    /* optional: written for Hugging Face tokenizers only */
    s->info.bos_token = -1;
    s->info.tokenizer_hash[0] = 0;
    if (H5Aexists(s->dset, "tokenizer_hash") > 0) {
        char hash[80];
        STRATA_TRY(read_str_attr(s->dset, path, "tokenizer_hash", hash, sizeof hash));
        if (strlen(hash) != 64 || strspn(hash, "0123456789abcdef") != 64)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: tokenizer_hash attribute is '%s', expected 64 hex digits",
                                 path, shown(hash, sb, sizeof sb));
        memcpy(s->info.tokenizer_hash, hash, 65);
    }
    if (H5Aexists(s->dset, "bos_token") > 0) {
        int64_t bos = 0;
        STRATA_TRY(read_int_attr(s->dset, path, "bos_token", &bos));
        if (bos < -1 || bos >= vocab)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: bos_token attribute is %" PRId64
                                 ", expected -1 or 0 .. %" PRId64,
                                 path, bos, vocab - 1);
        s->info.bos_token = (int)bos;
    }

    return strata_ok();
}

/* /doc_offsets, when present: 1-D integers, no more than the tokens. */
static strata_err check_doc_offsets(strata_shard *s)
{
    char why[256], tn[64];
    const char *path = s->path;
    int64_t n = s->info.n_tokens;
    htri_t has_docs = H5Lexists(s->file, "/doc_offsets", H5P_DEFAULT);
    if (has_docs < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot look up /doc_offsets (%s)", path,
                             strata_hdf5_reason(why));
    if (has_docs > 0) {
        hid_t d = -1;
        int64_t nd = 0;
        STRATA_TRY(open_1d(s->file, path, "/doc_offsets", H5P_DEFAULT, &d, &nd));
        hid_t dt = H5Dget_type(d);
        int ok = dt >= 0 && H5Tget_class(dt) == H5T_INTEGER && H5Tget_size(dt) <= 8;
        if (dt >= 0)
            type_name(dt, tn, sizeof tn);
        else
            snprintf(tn, sizeof tn, "unreadable");
        if (dt >= 0) H5Tclose(dt);
        H5Dclose(d);
        if (!ok)
            return strata_errorf(STRATA_EINPUT, "%s: /doc_offsets is %s, expected uint64", path,
                                 tn);
        if (nd > n)
            return strata_errorf(
                STRATA_EINPUT, "%s: /doc_offsets lists %" PRId64 " documents in %" PRId64 " tokens",
                path, nd, n);
        s->info.n_docs = nd;
    }

    return strata_ok();
}

static strata_err open_checked(strata_shard *s)
{
    size_t esize = 0;
    STRATA_TRY(open_file(s));
    STRATA_TRY(check_tokens_type(s, &esize));
    STRATA_TRY(check_layout(s, esize));
    STRATA_TRY(read_attributes(s, esize));
    STRATA_TRY(check_doc_offsets(s));
    char why[256];
    const char *path = s->path;
    int64_t n = s->info.n_tokens;
    /* Reopen /tokens with a chunk cache sized to its chunks. The access
     * list counts only when the dataset is not open already (a second open
     * shares the first one's cache), hence the close first. */
    if (s->info.chunk_tokens > 0) {
        H5Dclose(s->dset);
        hid_t dapl = chunk_cache_dapl(n, s->info.chunk_tokens, (int)esize);
        s->dset = dapl < 0 ? -1 : H5Dopen2(s->file, "/tokens", dapl);
        strata_hdf5_reason(why);
        if (dapl >= 0) H5Pclose(dapl);
        if (s->dset < 0)
            return strata_errorf(STRATA_EINPUT, "%s: cannot reopen /tokens (%s)", path, why);
    }
    return strata_ok();
}

strata_err strata_shard_open(strata_shard **out, const char *path)
{
    *out = NULL;
    hdf5_quiet();
    strata_shard *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    }
    s->file = s->dset = -1;
    strata_err e = open_checked(s);
    if (e.code) {
        strata_shard_close(s);
        return e;
    }
    *out = s;
    return strata_ok();
}

const strata_shard_info *strata_shard_get_info(const strata_shard *s) { return &s->info; }

const char *strata_shard_path(const strata_shard *s) { return s->path; }

const char *strata_shard_tokenizer_hash(const strata_shard *s) { return s->info.tokenizer_hash; }

int64_t strata_shard_n_samples(const strata_shard *s, int T)
{
    if (T <= 0 || s->info.n_tokens < 2) return 0;
    return (s->info.n_tokens - 1) / T;
}

/* Every id handed out is below vocab_size. */
static strata_err check_ids(const strata_shard *s, int64_t start, int64_t n, const uint32_t *out)
{
    uint32_t v = (uint32_t)s->info.vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (out[i] >= v)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: token %" PRId64 " is %" PRIu32 ", not < vocab_size %" PRIu32,
                                 s->path, start + i, out[i], v);
    return strata_ok();
}

strata_err strata_shard_read(strata_shard *s, int64_t start, int64_t n, uint32_t *out)
{
    char why[256];
    hdf5_quiet();
    if (start < 0 || n < 0 || start > s->info.n_tokens || n > s->info.n_tokens - start)
        return strata_errorf(STRATA_EFAIL,
                             "%s: read of tokens [%" PRId64 ", %" PRId64 ") outside 0 .. %" PRId64,
                             s->path, start, start + n, s->info.n_tokens);
    if (n == 0) return strata_ok();
    if (s->dec.on) {
        STRATA_TRY(read_decoded(s, start, n, out));
        return check_ids(s, start, n, out);
    }
    if (s->rules.checked)
        for (int64_t c = start / s->info.chunk_tokens; c <= (start + n - 1) / s->info.chunk_tokens;
             c++)
            STRATA_TRY(check_chunk(s, c));
    int wide = s->info.token_bits == 32;
    void *dst = out;
    if (!wide) {
        if ((size_t)n > s->scratch_cap) {
            uint16_t *p = realloc(s->scratch, (size_t)n * sizeof *p);
            if (!p) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", s->path);
            s->scratch = p;
            s->scratch_cap = (size_t)n;
        }
        dst = s->scratch;
    }
    hsize_t off = (hsize_t)start, cnt = (hsize_t)n;
    hid_t fs = H5Dget_space(s->dset);
    hid_t ms = H5Screate_simple(1, &cnt, NULL);
    herr_t r = -1;
    if (fs >= 0 && ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, &off, NULL, &cnt, NULL) >= 0)
        r = H5Dread(s->dset, wide ? H5T_NATIVE_UINT32 : H5T_NATIVE_UINT16, ms, fs, H5P_DEFAULT,
                    dst);
    strata_hdf5_reason(why); /* before the closes clear the error stack */
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    if (r < 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: cannot read /tokens[%" PRId64 ":%" PRId64 "] (%s; file damaged?)",
                             s->path, start, start + n, why);
    if (!wide)
        for (int64_t i = 0; i < n; i++) out[i] = s->scratch[i];
    return check_ids(s, start, n, out);
}

strata_err strata_shard_verify(strata_shard *s)
{
    char why[256];
    int64_t n = s->info.n_tokens, block = (int64_t)1 << 20;
    uint32_t *buf = malloc((size_t)(n < block ? n : block) * sizeof *buf);
    if (!buf) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", s->path);
    strata_err e = strata_ok();
    for (int64_t i = 0; i < n && !e.code; i += block)
        e = strata_shard_read(s, i, n - i < block ? n - i : block, buf);
    free(buf);
    if (e.code || s->info.n_docs == 0) return e;

    /* /doc_offsets: first tokens of documents, non-decreasing (an empty
     * document repeats an offset) and never past the end. */
    hdf5_quiet();
    hid_t d = H5Dopen2(s->file, "/doc_offsets", H5P_DEFAULT);
    if (d < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open /doc_offsets (%s)", s->path,
                             strata_hdf5_reason(why));
    int64_t nd = s->info.n_docs;
    uint64_t *off = malloc((size_t)nd * sizeof *off);
    if (!off) {
        H5Dclose(d);
        return strata_errorf(STRATA_ENOMEM, "%s: out of memory", s->path);
    }
    if (H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off) < 0) {
        e = strata_errorf(STRATA_EINPUT, "%s: cannot read /doc_offsets (%s)", s->path,
                          strata_hdf5_reason(why));
    } else {
        for (int64_t i = 0; i < nd && !e.code; i++)
            if ((i > 0 && off[i] < off[i - 1]) || off[i] > (uint64_t)n)
                e = strata_errorf(STRATA_EINPUT,
                                  "%s: /doc_offsets[%" PRId64 "] is %" PRIu64
                                  " (expected non-decreasing offsets up to %" PRId64 ")",
                                  s->path, i, off[i], n);
    }
    free(off);
    H5Dclose(d);
    return e;
}

void strata_shard_close(strata_shard *s)
{
    if (!s) return;
    hdf5_quiet();
    if (s->dset >= 0) H5Dclose(s->dset);
    if (s->file >= 0) H5Fclose(s->file);
    H5Eclear2(H5E_DEFAULT);
    free(s->rules.checked);
    strata_h5_decoder_free(&s->dec);
    free(s->scratch);
    free(s->path);
    free(s);
}
