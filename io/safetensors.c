/* safetensors.c — reading and writing safetensors; see safetensors.h.
 *
 * Opening works in two phases: the header is parsed and every entry checked
 * against the others and against the file's length; only then may
 * strata_st_read touch the payload, with pread at offsets known to lie
 * inside the file. The format is little-endian, as is every host strata
 * builds for; a big-endian host swaps after reading and before writing.
 */
#include "strata/safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "file.h"

#define INDEX_NAME  "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"

typedef struct st_file {
    char *path;
    strata_in_file in;
    json_t *root; /* the header; entries' names point into it */
    uint64_t data_start;
} st_file;

struct strata_safetensors {
    st_file *files;
    int n_files;
    strata_st_tensor *tensors;
    size_t n, cap;
    const strata_st_tensor **by_name; /* sorted by name, for lookups */
};

/* ---- numbers -------------------------------------------------------------- */

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

float strata_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t strata_f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);
    /* A NaN whose payload sits in the low half would round to infinity:
     * keep the sign and the upper payload and make it quiet. */
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    /* Round to nearest, ties to even: add 0x7fff plus the bit that will
     * become the last one kept. Overflow carries into the exponent, which
     * is the right rounding up to infinity. */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float strata_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | man << 13); /* inf, NaN */
    if (exp) return bits_f32(sign | (exp + 112) << 23 | man << 13);   /* normal: bias 15 -> 127 */
    if (!man) return bits_f32(sign);                                  /* +-0 */
    /* Subnormal: man * 2^-24, exact in fp32. */
    float v = (float)man * 0x1p-24f;
    return sign ? -v : v;
}

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* ---- parsing one file ------------------------------------------------------- */

static int dtype_of(const char *s, int *size)
{
    if (!strcmp(s, "F32")) return *size = 4, STRATA_ST_F32;
    if (!strcmp(s, "BF16")) return *size = 2, STRATA_ST_BF16;
    if (!strcmp(s, "F16")) return *size = 2, STRATA_ST_F16;
    return -1;
}

static int is_other_dtype(const char *s)
{
    static const char *const others[] = {
        "F64",  "I64",     "I32",     "I16",     "I8", "U64",     "U32",     "U16", "U8",
        "BOOL", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "U1"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        if (!strcmp(s, others[i])) return 1;
    return 0;
}

static int dtype_size(int dtype) { return dtype == STRATA_ST_F32 ? 4 : 2; }

/* One header entry, checked for its own consistency and for lying inside
 * the data section. */
static strata_err parse_entry(const char *path, const char *name, json_t *v, uint64_t data_len,
                              strata_st_tensor *t)
{
    memset(t, 0, sizeof *t);
    t->name = name;
    json_t *dtype = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offsets = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(dtype) || !json_is_array(shape) ||
        !json_is_array(offsets))
        return strata_errorf(
            STRATA_EINPUT, "%s: header entry '%s' lacks dtype, shape or data_offsets", path, name);
    const char *ds = json_string_value(dtype);
    int size = 0;
    t->dtype = dtype_of(ds, &size);
    if (t->dtype < 0) {
        if (is_other_dtype(ds))
            return strata_errorf(STRATA_EINPUT,
                                 "%s: tensor '%s' is not F32, BF16 or F16 (dtype %s); only "
                                 "floating-point weights import",
                                 path, name, ds);
        return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has unknown dtype '%.16s'", path, name,
                             ds);
    }
    size_t nd = json_array_size(shape);
    if (nd > STRATA_ST_MAX_DIMS)
        return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has %zu dims", path, name, nd);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has a bad shape", path, name);
        t->shape[i] = (uint64_t)json_integer_value(d);
        if (t->shape[i] && numel > UINT64_MAX / 16 / t->shape[i])
            return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is impossibly large", path, name);
        numel *= t->shape[i];
    }
    t->numel = numel;
    json_t *b = json_array_get(offsets, 0), *en = json_array_get(offsets, 1);
    if (json_array_size(offsets) != 2 || !json_is_integer(b) || !json_is_integer(en) ||
        json_integer_value(b) < 0 || json_integer_value(en) < json_integer_value(b))
        return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has bad data_offsets", path, name);
    t->begin = (uint64_t)json_integer_value(b);
    t->end = (uint64_t)json_integer_value(en);
    if (t->end - t->begin != numel * (uint64_t)size)
        return strata_errorf(STRATA_EINPUT,
                             "%s: tensor '%s' spans %llu bytes but its shape and dtype make %llu",
                             path, name, (unsigned long long)(t->end - t->begin),
                             (unsigned long long)(numel * (uint64_t)size));
    if (t->end > data_len)
        return strata_errorf(STRATA_EINPUT,
                             "%s: tensor '%s' ends at data byte %llu, past the end of the file "
                             "(%llu data bytes)",
                             path, name, (unsigned long long)t->end, (unsigned long long)data_len);
    return strata_ok();
}

static int cmp_begin(const void *a, const void *b)
{
    const strata_st_tensor *x = *(const strata_st_tensor *const *)a,
                           *y = *(const strata_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const strata_st_tensor *const *)a)->name,
                  (*(const strata_st_tensor *const *)b)->name);
}

static strata_err grow(strata_safetensors *st, size_t more)
{
    if (st->n + more <= st->cap) return strata_ok();
    size_t cap = st->cap ? st->cap : 64;
    while (cap < st->n + more) cap *= 2;
    strata_st_tensor *t = realloc(st->tensors, cap * sizeof *t);
    if (!t) return strata_errorf(STRATA_ENOMEM, "out of memory");
    st->tensors = t;
    st->cap = cap;
    return strata_ok();
}

/* Opens and checks file f (its path set), appending its tensors to st. */
static strata_err parse_file(strata_safetensors *st, int fi)
{
    st_file *f = &st->files[fi];
    const char *path = f->path;
    STRATA_TRY(strata_in_open(&f->in, path));
    uint64_t size = f->in.size;
    unsigned char len8[8];
    if (size < 8)
        return strata_errorf(STRATA_EINPUT, "%s: %llu bytes, too short for safetensors", path,
                             (unsigned long long)size);
    STRATA_TRY(strata_in_read(&f->in, len8, 8, 0, "the header length"));
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | len8[i];
    if (n > size - 8)
        return strata_errorf(STRATA_EINPUT,
                             "%s: header length %llu runs past the end of the file (%llu bytes); "
                             "truncated or not safetensors",
                             path, (unsigned long long)n, (unsigned long long)size);
    if (n < 2 || n > STRATA_ST_MAX_HEADER)
        return strata_errorf(STRATA_EINPUT, "%s: header length %llu is impossible", path,
                             (unsigned long long)n);
    char *text = malloc((size_t)n);
    if (!text) return strata_errorf(STRATA_ENOMEM, "out of memory");
    strata_err e = strata_in_read(&f->in, text, (size_t)n, 8, "the header");
    if (e.code) {
        free(text);
        return e;
    }
    json_error_t jerr;
    f->root = json_loadb(text, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!f->root)
        return strata_errorf(STRATA_EINPUT, "%s: header is not JSON (%s, at byte %d)", path,
                             jerr.text, 8 + jerr.position);
    if (!json_is_object(f->root))
        return strata_errorf(STRATA_EINPUT, "%s: header is not a JSON object", path);
    f->data_start = 8 + n;
    uint64_t data_len = size - f->data_start;
    json_t *meta = json_object_get(f->root, "__metadata__");
    if (meta && !json_is_object(meta))
        return strata_errorf(STRATA_EINPUT, "%s: __metadata__ is not a JSON object", path);
    STRATA_TRY(grow(st, json_object_size(f->root)));
    size_t first = st->n;
    const char *key;
    json_t *v;
    json_object_foreach(f->root, key, v)
    {
        if (!strcmp(key, "__metadata__")) continue;
        STRATA_TRY(parse_entry(path, key, v, data_len, &st->tensors[st->n]));
        st->tensors[st->n++].file = fi;
    }
    /* The entries must tile the data section: sorted by begin, each starts
     * where the previous one ended and the last ends at the file's end. */
    size_t count = st->n - first;
    const strata_st_tensor **sorted = malloc((count + 1) * sizeof *sorted);
    if (!sorted) return strata_errorf(STRATA_ENOMEM, "out of memory");
    for (size_t i = 0; i < count; i++) sorted[i] = &st->tensors[first + i];
    qsort(sorted, count, sizeof *sorted, cmp_begin);
    uint64_t at = 0;
    for (size_t i = 0; i < count && !e.code; i++) {
        if (sorted[i]->begin < at)
            e = strata_errorf(
                STRATA_EINPUT, "%s: tensors '%s' and '%s' overlap in the data (at data byte %llu)",
                path, sorted[i - 1]->name, sorted[i]->name, (unsigned long long)sorted[i]->begin);
        else if (sorted[i]->begin > at)
            e = strata_errorf(STRATA_EINPUT,
                              "%s: data bytes %llu to %llu belong to no tensor (before '%s')", path,
                              (unsigned long long)at, (unsigned long long)sorted[i]->begin,
                              sorted[i]->name);
        at = sorted[i]->end;
    }
    if (!e.code && at != data_len)
        e = strata_errorf(STRATA_EINPUT,
                          "%s: %llu bytes follow the last tensor; not a whole safetensors file",
                          path, (unsigned long long)(data_len - at));
    free(sorted);
    return e;
}

/* Sorts the name index; the same name twice (in two shards) is refused. */
static strata_err index_names(strata_safetensors *st)
{
    st->by_name = malloc((st->n + 1) * sizeof *st->by_name);
    if (!st->by_name) return strata_errorf(STRATA_ENOMEM, "out of memory");
    for (size_t i = 0; i < st->n; i++) st->by_name[i] = &st->tensors[i];
    qsort(st->by_name, st->n, sizeof *st->by_name, cmp_name);
    for (size_t i = 1; i < st->n; i++)
        if (!strcmp(st->by_name[i - 1]->name, st->by_name[i]->name))
            return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is also in %s",
                                 st->files[st->by_name[i]->file].path, st->by_name[i]->name,
                                 st->files[st->by_name[i - 1]->file].path);
    return strata_ok();
}

static strata_safetensors *new_set(int n_files)
{
    strata_safetensors *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->files = calloc((size_t)n_files, sizeof *st->files);
    if (!st->files) {
        free(st);
        return NULL;
    }
    for (int i = 0; i < n_files; i++) st->files[i].in.fd = -1;
    st->n_files = n_files;
    return st;
}

void strata_st_close(strata_safetensors *st)
{
    if (!st) return;
    for (int i = 0; i < st->n_files; i++) {
        strata_in_close(&st->files[i].in);
        free(st->files[i].path);
        if (st->files[i].root) json_decref(st->files[i].root);
    }
    free(st->files);
    free(st->tensors);
    free(st->by_name);
    free(st);
}

strata_err strata_st_open(const char *path, strata_safetensors **out)
{
    *out = NULL;
    strata_safetensors *st = new_set(1);
    if (!st || !(st->files[0].path = strdup(path))) {
        strata_st_close(st);
        return strata_errorf(STRATA_ENOMEM, "out of memory");
    }
    strata_err e = parse_file(st, 0);
    if (!e.code) e = index_names(st);
    if (e.code) {
        strata_st_close(st);
        return e;
    }
    *out = st;
    return strata_ok();
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* A weight_map file name must be a plain name in the directory. */
static int plain_name(const char *s)
{
    return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..") && strlen(s) < 256;
}

static strata_err open_index(const char *dir, const char *index_path, strata_safetensors **out)
{
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return strata_errorf(STRATA_EINPUT, "%s:%d: not JSON: %s", index_path, jerr.line,
                             jerr.text);
    json_t *map = json_object_get(root, "weight_map");
    strata_err e = strata_ok();
    if (!json_is_object(map) || !json_object_size(map)) {
        json_decref(root);
        return strata_errorf(STRATA_EINPUT,
                             "%s: \"weight_map\" is missing or not a non-empty object", index_path);
    }
    /* The distinct files, in order of first mention. */
    const char **names = calloc(json_object_size(map), sizeof *names);
    int n_files = 0;
    const char *key;
    json_t *v;
    if (!names) e = strata_errorf(STRATA_ENOMEM, "out of memory");
    json_object_foreach(map, key, v)
    {
        if (e.code) break;
        if (!json_is_string(v) || !plain_name(json_string_value(v))) {
            e = strata_errorf(STRATA_EINPUT,
                              "%s: weight_map[\"%s\"] is not the name of a file in the directory",
                              index_path, key);
            break;
        }
        int k = 0;
        while (k < n_files && strcmp(names[k], json_string_value(v))) k++;
        if (k == n_files) names[n_files++] = json_string_value(v);
    }
    strata_safetensors *st = NULL;
    if (!e.code && !(st = new_set(n_files))) e = strata_errorf(STRATA_ENOMEM, "out of memory");
    for (int i = 0; i < n_files && !e.code; i++) {
        if (!(st->files[i].path = join(dir, names[i])))
            e = strata_errorf(STRATA_ENOMEM, "out of memory");
        else
            e = parse_file(st, i);
    }
    if (!e.code) e = index_names(st);
    /* Both ways: the map's names are where it says, and nothing else is. */
    json_object_foreach(map, key, v)
    {
        if (e.code) break;
        const strata_st_tensor *t = strata_st_find(st, key);
        if (!t)
            e = strata_errorf(STRATA_EINPUT, "%s: weight_map names '%s', which %s does not hold",
                              index_path, key, json_string_value(v));
        else if (strcmp(strrchr(st->files[t->file].path, '/') + 1, json_string_value(v)))
            e = strata_errorf(STRATA_EINPUT, "%s: weight_map puts '%s' in %s, but it is in %s",
                              index_path, key, json_string_value(v), st->files[t->file].path);
    }
    for (size_t i = 0; i < (st ? st->n : 0) && !e.code; i++)
        if (!json_object_get(map, st->tensors[i].name))
            e = strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is not in %s's weight_map",
                              st->files[st->tensors[i].file].path, st->tensors[i].name, index_path);
    free(names);
    json_decref(root);
    if (e.code) {
        strata_st_close(st);
        return e;
    }
    *out = st;
    return strata_ok();
}

strata_err strata_st_open_dir(const char *dir, strata_safetensors **out)
{
    *out = NULL;
    char *single = join(dir, SINGLE_NAME), *index = join(dir, INDEX_NAME);
    strata_err e = strata_ok();
    if (!single || !index)
        e = strata_errorf(STRATA_ENOMEM, "out of memory");
    else if (access(single, F_OK) == 0)
        e = strata_st_open(single, out);
    else if (access(index, F_OK) == 0)
        e = open_index(dir, index, out);
    else
        e = strata_errorf(STRATA_EINPUT, "%s: holds neither %s nor %s", dir, SINGLE_NAME,
                          INDEX_NAME);
    free(single);
    free(index);
    return e;
}

size_t strata_st_count(const strata_safetensors *st) { return st->n; }
const strata_st_tensor *strata_st_at(const strata_safetensors *st, size_t i)
{
    return &st->tensors[i];
}
const char *strata_st_path(const strata_safetensors *st, int file) { return st->files[file].path; }

const strata_st_tensor *strata_st_find(const strata_safetensors *st, const char *name)
{
    strata_st_tensor key = {.name = name};
    const strata_st_tensor *k = &key;
    const strata_st_tensor **hit = bsearch(&k, st->by_name, st->n, sizeof *st->by_name, cmp_name);
    return hit ? *hit : NULL;
}

const char *strata_st_metadata(const strata_safetensors *st, const char *key)
{
    json_t *meta = json_object_get(st->files[0].root, "__metadata__");
    json_t *v = json_is_object(meta) ? json_object_get(meta, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

strata_err strata_st_read(const strata_safetensors *st, const strata_st_tensor *t, float *dst)
{
    const st_file *f = &st->files[t->file];
    uint64_t off = f->data_start + t->begin;
    if (t->dtype == STRATA_ST_F32) {
        STRATA_TRY(strata_in_read(&f->in, dst, t->numel * 4, off, t->name));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        uint32_t *w = (uint32_t *)dst;
        for (size_t i = 0; i < t->numel; i++) w[i] = __builtin_bswap32(w[i]);
#endif
        return strata_ok();
    }
    /* Half-width values land in the upper half of dst and widen in place
     * front to back: value i is written to bytes [4i, 4i+4), which never
     * reach value i+1's source at byte 2n + 2(i+1). */
    size_t n = t->numel;
    unsigned char *half = (unsigned char *)dst + 2 * n;
    STRATA_TRY(strata_in_read(&f->in, half, n * 2, off, t->name));
    for (size_t i = 0; i < n; i++) {
        uint16_t h = le16(half + 2 * i);
        dst[i] = t->dtype == STRATA_ST_BF16 ? strata_bf16_to_f32(h) : strata_f16_to_f32(h);
    }
    return strata_ok();
}

/* ---- writing ----------------------------------------------------------------- */

struct strata_st_writer {
    strata_out_file out;
    char *path;
    int dtype;
    const strata_st_spec *specs; /* the caller's, until finish */
    size_t n, next;
    uint16_t buf[4096];
};

static uint64_t spec_numel(const strata_st_spec *s)
{
    uint64_t n = 1;
    for (int i = 0; i < s->ndim; i++) n *= s->shape[i];
    return n;
}

uint64_t strata_st_bytes(const strata_st_spec *spec, int dtype)
{
    return spec_numel(spec) * (uint64_t)dtype_size(dtype);
}

strata_err strata_st_write_begin(strata_st_writer **out, const char *path, int dtype,
                                 const strata_st_spec *specs, size_t n, const char *const *metadata)
{
    *out = NULL;
    if (dtype != STRATA_ST_F32 && dtype != STRATA_ST_BF16)
        return strata_errorf(STRATA_EINPUT, "%s: safetensors are written as F32 or BF16 only",
                             path);
    json_t *root = json_object(), *meta = json_object();
    strata_err e = strata_ok();
    if (!root || !meta) e = strata_errorf(STRATA_ENOMEM, "out of memory");
    if (!e.code) json_object_set_new(meta, "format", json_string("pt"));
    for (size_t i = 0; metadata && metadata[i] && metadata[i + 1] && !e.code; i += 2)
        json_object_set_new(meta, metadata[i], json_string(metadata[i + 1]));
    uint64_t off = 0;
    for (size_t i = 0; i < n && !e.code; i++) {
        const strata_st_spec *s = &specs[i];
        if (!strcmp(s->name, "__metadata__") || json_object_get(root, s->name)) {
            e = strata_errorf(STRATA_EINPUT, "%s: tensor '%s' named twice", path, s->name);
            break;
        }
        json_t *shape = json_array();
        for (int d = 0; d < s->ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)s->shape[d]));
        uint64_t bytes = strata_st_bytes(s, dtype);
        json_object_set_new(root, s->name,
                            json_pack("{s:s, s:o, s:[II]}", "dtype",
                                      dtype == STRATA_ST_F32 ? "F32" : "BF16", "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + bytes)));
        off += bytes;
    }
    if (!e.code) json_object_set(root, "__metadata__", meta);
    char *text = e.code ? NULL : json_dumps(root, JSON_COMPACT);
    json_decref(root);
    json_decref(meta);
    if (!e.code && !text) e = strata_errorf(STRATA_ENOMEM, "out of memory");
    strata_st_writer *w = e.code ? NULL : calloc(1, sizeof *w);
    if (!e.code && (!w || !(w->path = strdup(path))))
        e = strata_errorf(STRATA_ENOMEM, "out of memory");
    if (!e.code) e = strata_out_open(&w->out, w->path);
    if (e.code) {
        if (w) free(w->path);
        free(w);
        free(text);
        return e;
    }
    /* The header is padded with spaces so the data starts 8-byte aligned,
     * as the reference writer does. */
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    strata_out_write(&w->out, len8, 8);
    strata_out_write(&w->out, text, len);
    strata_out_write(&w->out, "        ", padded - len);
    free(text);
    w->dtype = dtype;
    w->specs = specs;
    w->n = n;
    *out = w;
    return strata_ok();
}

strata_err strata_st_write_tensor(strata_st_writer *w, const float *data)
{
    if (w->next >= w->n)
        return strata_errorf(STRATA_EFAIL, "%s: more tensors written than declared", w->path);
    uint64_t n = spec_numel(&w->specs[w->next++]);
    if (w->dtype == STRATA_ST_F32) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (uint64_t i = 0; i < n; i++) {
            uint32_t u = __builtin_bswap32(f32_bits(data[i]));
            strata_out_write(&w->out, &u, 4);
        }
#else
        strata_out_write(&w->out, data, n * 4);
#endif
        return strata_ok();
    }
    const size_t chunk = sizeof w->buf / sizeof w->buf[0];
    for (uint64_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? (size_t)(n - i) : chunk;
        for (size_t j = 0; j < k; j++) {
            uint16_t h = strata_f32_to_bf16(data[i + j]);
            unsigned char *p = (unsigned char *)&w->buf[j];
            p[0] = (unsigned char)h;
            p[1] = (unsigned char)(h >> 8);
        }
        strata_out_write(&w->out, w->buf, k * 2);
    }
    return strata_ok();
}

strata_err strata_st_write_finish(strata_st_writer *w)
{
    strata_err e = strata_ok();
    if (w->next != w->n) {
        e = strata_errorf(STRATA_EFAIL, "%s: %zu of %zu tensors written", w->path, w->next, w->n);
        strata_out_abort(&w->out);
    } else {
        e = strata_out_finish(&w->out);
    }
    free(w->path);
    free(w);
    return e;
}

void strata_st_write_abort(strata_st_writer *w)
{
    if (!w) return;
    strata_out_abort(&w->out);
    free(w->path);
    free(w);
}
