/* h5inflate.c — our own deflate + shuffle decoding of HDF5 chunks; see
 * h5inflate.h. */
#include "h5inflate.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "h5check.h"

int strata_h5_decoder_init(strata_h5_decoder *d, hid_t dcpl, const char *path, const char *name,
                           int esize, int64_t chunk_elems, int64_t n_chunks, uint64_t file_bytes)
{
    memset(d, 0, sizeof *d);
    int nf = H5Pget_nfilters(dcpl);
    if (nf < 1 || nf > STRATA_H5_MAX_FILTERS) return 0;
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, cd[4] = {0}, cfg = 0;
        size_t ncd = 4;
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, 0, NULL, &cfg);
        if (id == H5Z_FILTER_SHUFFLE && ncd >= 1 && cd[0] == (unsigned)esize)
            d->filter[i] = (int)id;
        else if (id == H5Z_FILTER_DEFLATE)
            d->filter[i] = (int)id;
        else
            return 0;
    }
    uint64_t cb = (uint64_t)chunk_elems * (uint64_t)esize;
    if (cb > ((uint64_t)1 << 30)) return 0;
    /* Decoded chunks kept: 32 MiB worth, at least 2 (a sample may span two
     * chunks), at most 64; memory is taken as chunks are decoded. */
    int64_t n = (int64_t)((((uint64_t)32 << 20)) / cb);
    n = n < 2 ? 2 : n > 64 ? 64 : n;
    if (n > n_chunks) n = n_chunks;
    if (!(d->cache = calloc((size_t)n, sizeof *d->cache))) return 0;
    for (int64_t i = 0; i < n; i++) d->cache[i].chunk = -1;
    d->n_cache = (int)n;
    d->n_filters = nf;
    d->path = path;
    d->name = name;
    d->esize = esize;
    d->chunk_elems = chunk_elems;
    d->chunk_bytes = cb;
    d->file_bytes = file_bytes;
    d->on = 1;
    return 1;
}

/* Inflates a zlib stream of n bytes into exactly `want` bytes at out. */
static int inflate_exact(const uint8_t *in, size_t n, uint8_t *out, size_t want)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit(&z) != Z_OK) return -1;
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)want;
    int rc = inflate(&z, Z_FINISH);
    size_t got = z.total_out;
    inflateEnd(&z);
    return rc == Z_STREAM_END && got == want ? 0 : -1;
}

static strata_err wrong_size(const strata_h5_decoder *d, int64_t c, size_t got)
{
    return strata_errorf(STRATA_EINPUT,
                         "%s: chunk %" PRId64 " of %s holds %zu bytes, %zu expected (damaged)",
                         d->path, c, d->name, got, (size_t)d->chunk_bytes);
}

/* Undoes the filters of chunk c (raw, size bytes, filter mask) last to
 * first; the last step writes into out. */
static strata_err unfilter(strata_h5_decoder *d, int64_t c, uint32_t mask, size_t size,
                           uint8_t *out)
{
    size_t cb = (size_t)d->chunk_bytes;
    int steps = 0, done = 0;
    for (int i = 0; i < d->n_filters; i++) steps += !(mask >> i & 1);
    const uint8_t *cur = d->raw;
    size_t cur_n = size;
    for (int i = d->n_filters - 1; i >= 0; i--) {
        if (mask >> i & 1) continue;
        uint8_t *dst = ++done == steps ? out : d->work[done & 1];
        if (d->filter[i] == H5Z_FILTER_DEFLATE) {
            if (inflate_exact(cur, cur_n, dst, cb))
                return strata_errorf(STRATA_EINPUT,
                                     "%s: chunk %" PRId64 " of %s does not inflate to %zu "
                                     "bytes (damaged)",
                                     d->path, c, d->name, cb);
        } else { /* shuffle: byte k of every element was stored together */
            size_t e = (size_t)d->esize, ne = cb / e;
            if (cur_n != cb) return wrong_size(d, c, cur_n);
            for (size_t k = 0; k < e; k++)
                for (size_t j = 0; j < ne; j++) dst[j * e + k] = cur[k * ne + j];
        }
        cur = dst;
        cur_n = cb;
    }
    if (steps == 0) {
        if (cur_n != cb) return wrong_size(d, c, cur_n);
        memcpy(out, cur, cb);
    }
    return strata_ok();
}

/* Reads chunk c raw and undoes its filters into out (chunk_bytes). */
static strata_err decode_chunk(strata_h5_decoder *d, hid_t dset, int64_t c, uint8_t *out)
{
    char why[256];
    hsize_t off = (hsize_t)(c * d->chunk_elems), size = 0;
    if (H5Dget_chunk_storage_size(dset, &off, &size) < 0 || size == 0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of %s is not stored (file incomplete or "
                             "damaged)",
                             d->path, c, d->name);
    /* deflate never grows data by more than a few bytes per 16 KiB */
    if (size > d->file_bytes || size > d->chunk_bytes + d->chunk_bytes / 64 + 4096)
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of %s claims %llu bytes (damaged)", d->path, c,
                             d->name, (unsigned long long)size);
    size_t cb = (size_t)d->chunk_bytes;
    for (int k = 0; k < 2; k++)
        if (!d->work[k] && !(d->work[k] = malloc(cb)))
            return strata_errorf(STRATA_ENOMEM, "%s: out of memory", d->path);
    if (size > d->raw_cap) {
        uint8_t *p = realloc(d->raw, (size_t)size);
        if (!p) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", d->path);
        d->raw = p;
        d->raw_cap = (size_t)size;
    }
    uint32_t mask = 0;
    if (H5Dread_chunk(dset, H5P_DEFAULT, &off, &mask, d->raw) < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot read chunk %" PRId64 " of %s (%s)", d->path,
                             c, d->name, strata_hdf5_reason(why));
    if (d->n_filters < 32 && (mask >> d->n_filters))
        return strata_errorf(STRATA_EINPUT,
                             "%s: chunk %" PRId64 " of %s has a bad filter "
                             "mask 0x%x (damaged)",
                             d->path, c, d->name, (unsigned)mask);
    return unfilter(d, c, mask, (size_t)size, out);
}

strata_err strata_h5_decoder_chunk(strata_h5_decoder *d, hid_t dset, int64_t c,
                                   const uint8_t **data)
{
    int victim = 0;
    for (int i = 0; i < d->n_cache; i++) {
        if (d->cache[i].chunk == c) {
            d->cache[i].used = ++d->tick;
            *data = d->cache[i].data;
            return strata_ok();
        }
        if (d->cache[i].used < d->cache[victim].used) victim = i;
    }
    strata_h5_decoded *slot = &d->cache[victim];
    if (!slot->data && !(slot->data = malloc((size_t)d->chunk_bytes)))
        return strata_errorf(STRATA_ENOMEM, "%s: out of memory", d->path);
    slot->chunk = -1;
    STRATA_TRY(decode_chunk(d, dset, c, slot->data));
    slot->chunk = c;
    slot->used = ++d->tick;
    *data = slot->data;
    return strata_ok();
}

void strata_h5_decoder_free(strata_h5_decoder *d)
{
    for (int i = 0; i < d->n_cache; i++) free(d->cache[i].data);
    free(d->cache);
    free(d->raw);
    free(d->work[0]);
    free(d->work[1]);
    memset(d, 0, sizeof *d);
}
