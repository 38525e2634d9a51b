/* h5inflate.h — decoding deflate (+ shuffle) chunks of a 1-D HDF5 dataset
 * ourselves. Internal to io/ (the token shard reader uses it).
 *
 * HDF5 1.10 copies a whole chunk out of whatever its filters returned, so a
 * damaged chunk or chunk shape makes it read past its buffer, and no check
 * from outside can see the inflated size before HDF5 trusts it. So when a
 * dataset's pipeline holds only deflate and shuffle (what `strata pack` and
 * h5py write), its chunks are read raw (H5Dread_chunk) and decoded here:
 * each must be stored, no larger than deflate can make a chunk, carry a
 * filter mask naming only the pipeline's filters, and inflate to exactly
 * one chunk. Decoded chunks are kept, least recently used out, up to
 * 32 MiB (at least 2: a sample may span two chunks; at most 64).
 */
#ifndef STRATA_IO_H5INFLATE_H
#define STRATA_IO_H5INFLATE_H

#include <hdf5.h>
#include <stdint.h>

#include "strata/err.h"

#define STRATA_H5_MAX_FILTERS 8

typedef struct strata_h5_decoded {
    int64_t chunk; /* -1: empty */
    uint8_t *data; /* chunk_bytes, file byte order */
    uint64_t used;
} strata_h5_decoded;

typedef struct strata_h5_decoder {
    int on;                  /* 0: the pipeline is not ours to decode */
    const char *path, *name; /* for messages: the file, the dataset */
    int esize;               /* bytes per element */
    int64_t chunk_elems;
    uint64_t chunk_bytes, file_bytes;
    int n_filters;
    int filter[STRATA_H5_MAX_FILTERS]; /* H5Z_FILTER_DEFLATE or _SHUFFLE, pipeline order */
    uint8_t *raw, *work[2];            /* a stored chunk; two chunks of scratch */
    size_t raw_cap;
    strata_h5_decoded *cache;
    int n_cache;
    uint64_t tick;
} strata_h5_decoder;

/* Sets d up for a dataset of n_chunks chunks of chunk_elems elements of
 * esize bytes whose creation list is dcpl, in a file of file_bytes bytes;
 * path and name must outlive d. Returns 1 when the pipeline is deflate and
 * shuffle only (d->on), 0 when the chunks are left to HDF5 (or on out of
 * memory: HDF5's pipeline then reads them). */
int strata_h5_decoder_init(strata_h5_decoder *d, hid_t dcpl, const char *path, const char *name,
                           int esize, int64_t chunk_elems, int64_t n_chunks, uint64_t file_bytes);
/* The decoded bytes of chunk c of dset (file byte order, chunk_bytes long),
 * valid until the next call. */
strata_err strata_h5_decoder_chunk(strata_h5_decoder *d, hid_t dset, int64_t c,
                                   const uint8_t **data);
void strata_h5_decoder_free(strata_h5_decoder *d);

#endif
