/* safetensors.h — Hugging Face's safetensors files, read and written.
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
 * {string: string}}, then the data section: every tensor's bytes, row-major,
 * little-endian, at [begin, end) from the start of the data.
 *
 * Opening a file checks everything before a byte of payload is read: the
 * header length against the file's size, the JSON, every entry (dtype F32,
 * BF16 or F16; shape product x dtype size == end - begin; the range inside
 * the data section), no two names alike, and that the entries tile the data
 * section exactly (no overlaps, no holes, nothing after the last tensor).
 * Anything else is STRATA_EINPUT naming the file, the tensor (or byte
 * offset) and the problem.
 *
 * A checkpoint directory holds model.safetensors, or shards listed in
 * model.safetensors.index.json ({"metadata": {...}, "weight_map": {name:
 * file}}): every shard is opened and checked as above, and every name of the
 * weight_map must be in the file it names and every tensor of every shard in
 * the weight_map, under its own file. With both present, model.safetensors
 * is used, as transformers does.
 *
 * Reading converts to fp32: BF16 is the upper half of an fp32; F16 is IEEE
 * half precision (subnormals, infinities and NaN included). Writing is F32
 * or BF16, rounded to nearest even from fp32 (NaN stays NaN), to a temporary
 * name beside the target, fsync'd, renamed into place, directory fsync'd.
 */
#ifndef STRATA_SAFETENSORS_H
#define STRATA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "strata/err.h"

enum { STRATA_ST_F32 = 0, STRATA_ST_BF16 = 1, STRATA_ST_F16 = 2 };
#define STRATA_ST_MAX_DIMS 8
/* safetensors' own reader refuses headers above 100 MB. */
#define STRATA_ST_MAX_HEADER ((uint64_t)100 << 20)

typedef struct strata_st_tensor {
    const char *name;
    int dtype; /* STRATA_ST_* */
    int ndim;
    uint64_t shape[STRATA_ST_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end; /* byte range in its file's data section */
    int file;            /* which file of the set holds it */
} strata_st_tensor;

/* One file, or the shards of one checkpoint, opened and checked. */
typedef struct strata_safetensors strata_safetensors;

/* Opens one .safetensors file. */
strata_err strata_st_open(const char *path, strata_safetensors **out);
/* Opens dir/model.safetensors, else the shards of dir/model.safetensors.index.json. */
strata_err strata_st_open_dir(const char *dir, strata_safetensors **out);
void strata_st_close(strata_safetensors *st);

size_t strata_st_count(const strata_safetensors *st);
const strata_st_tensor *strata_st_at(const strata_safetensors *st, size_t i);
/* The tensor of that exact name, or NULL. */
const strata_st_tensor *strata_st_find(const strata_safetensors *st, const char *name);
/* The path of file i of the set (for messages). */
const char *strata_st_path(const strata_safetensors *st, int file);
/* A string value of the first file's __metadata__, or NULL. */
const char *strata_st_metadata(const strata_safetensors *st, const char *key);

/* Reads tensor t (of st) as t->numel floats into dst. */
strata_err strata_st_read(const strata_safetensors *st, const strata_st_tensor *t, float *dst);

float strata_bf16_to_f32(uint16_t h);
uint16_t strata_f32_to_bf16(float x); /* round to nearest even; NaN stays NaN */
float strata_f16_to_f32(uint16_t h);

/* Writing: the names and shapes first (they make the header), then each
 * tensor's fp32 values in that order. */
typedef struct strata_st_spec {
    const char *name;
    int ndim;
    uint64_t shape[STRATA_ST_MAX_DIMS];
} strata_st_spec;

typedef struct strata_st_writer strata_st_writer;

/* Starts path with n tensors in dtype (STRATA_ST_F32 or STRATA_ST_BF16).
 * metadata: key, value, key, value, ..., NULL for __metadata__ (may be NULL;
 * "format": "pt" is always written). */
strata_err strata_st_write_begin(strata_st_writer **out, const char *path, int dtype,
                                 const strata_st_spec *specs, size_t n,
                                 const char *const *metadata);
/* The next tensor's values: its shape's product of floats. */
strata_err strata_st_write_tensor(strata_st_writer *w, const float *data);
/* Puts the file in place (all n tensors must have been written); frees w. */
strata_err strata_st_write_finish(strata_st_writer *w);
/* Removes the temporary file; frees w. */
void strata_st_write_abort(strata_st_writer *w);

/* Bytes a tensor of this shape takes in dtype. */
uint64_t strata_st_bytes(const strata_st_spec *spec, int dtype);

#endif
