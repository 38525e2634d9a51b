/* convert.c — llm.c model files and Hugging Face safetensors; see convert.h.
 *
 * Both readers work in two phases: first every size in the file is checked
 * against the others and against the file's length, then the payload is
 * read with pread at offsets that are known to lie inside the file. The
 * file formats are little-endian; so is every host strata builds for, and
 * a big-endian host swaps bytes after reading and before writing.
 */
#include "strata/convert.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LLMC_HEADER_INTS 256
/* safetensors' own reader refuses headers above 100 MB. */
#define MAX_SAFETENSORS_HEADER ((uint64_t)100 << 20)

/* The twelve tensors of a block, in llm.c's order (which is strata's
 * order within a block too). */
static const char *const block_names[12] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias",
};

/* ---- bytes in and out ----------------------------------------------------- */

static void to_little_endian(void *p, size_t n_words)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    uint32_t *w = p;
    for (size_t i = 0; i < n_words; i++) w[i] = __builtin_bswap32(w[i]);
#else
    (void)p, (void)n_words;
#endif
}

typedef struct in_file {
    const char *path;
    int fd;
    uint64_t size;
} in_file;

static strata_err in_open(in_file *f, const char *path)
{
    f->path = path;
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(f->fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(f->fd);
        return strata_errorf(STRATA_EINPUT, "%s: not a regular file", path);
    }
    f->size = (uint64_t)sb.st_size;
    return strata_ok();
}

/* Reads exactly n bytes at off; the caller has checked off + n <= size, so
 * a short read means the file changed under us. */
static strata_err in_read(const in_file *f, void *buf, size_t n, uint64_t off, const char *what)
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

static strata_err in_read_floats(const in_file *f, float *dst, size_t n, uint64_t off,
                                 const char *what)
{
    STRATA_TRY(in_read(f, dst, n * sizeof(float), off, what));
    to_little_endian(dst, n);
    return strata_ok();
}

/* A file written beside its final name and renamed into place. */
typedef struct out_file {
    const char *path;
    char tmp[PATH_MAX], dir[PATH_MAX];
    FILE *f;
    int failed;
} out_file;

static strata_err out_open(out_file *o, const char *path)
{
    o->path = path;
    o->failed = 0;
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

static void out_write(out_file *o, const void *p, size_t n)
{
    if (!o->failed && n && fwrite(p, 1, n, o->f) != n) o->failed = errno ? errno : EIO;
}

static void out_write_floats(out_file *o, const float *p, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        float x = p[i];
        to_little_endian(&x, 1);
        out_write(o, &x, sizeof x);
    }
#else
    out_write(o, p, n * sizeof(float));
#endif
}

static void out_write_zeros(out_file *o, size_t n_floats)
{
    static const float zeros[1024];
    while (n_floats) {
        size_t k = n_floats < 1024 ? n_floats : 1024;
        out_write(o, zeros, k * sizeof(float));
        n_floats -= k;
    }
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

/* Flushes, fsyncs and renames the file into place (and fsyncs the directory). */
static strata_err out_finish(out_file *o)
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
    return sync_path(o->dir, O_RDONLY | O_DIRECTORY);
}

static const strata_tensor *block_tensor(const strata_model *m, int l, int k)
{
    char name[48];
    snprintf(name, sizeof name, "h.%d.%s", l, block_names[k]);
    return strata_model_find(m, name);
}

/* ---- llm.c ----------------------------------------------------------------- */

strata_err strata_llmc_import(const char *path, strata_model **out)
{
    in_file f;
    STRATA_TRY(in_open(&f, path));
    strata_err e = strata_ok();
    strata_model *m = NULL;
    int32_t h[LLMC_HEADER_INTS];
    if (f.size < sizeof h) {
        e = strata_errorf(STRATA_EINPUT, "%s: %llu bytes, shorter than llm.c's %zu-byte header",
                          path, (unsigned long long)f.size, sizeof h);
        goto done;
    }
    if ((e = in_read(&f, h, sizeof h, 0, "the header")).code) goto done;
    to_little_endian(h, LLMC_HEADER_INTS);
    if (h[0] != STRATA_LLMC_MAGIC) {
        e = strata_errorf(STRATA_EINPUT, "%s: not an llm.c model file (magic %d, expected %d)",
                          path, h[0], STRATA_LLMC_MAGIC);
        goto done;
    }
    if (h[1] != STRATA_LLMC_VERSION) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: llm.c model version %d; only version 3 (fp32) is supported%s", path,
                          h[1],
                          h[1] == 5 ? "; HINT: version 5 is bf16, write an fp32 file with "
                                      "llm.c's train_gpt2.py"
                                    : "");
        goto done;
    }
    int maxT = h[2], V = h[3], L = h[4], NH = h[5], C = h[6], Vp = h[7];
    if (maxT < 2 || V < 2 || L < 1 || NH < 1 || C < 1 || Vp < V || maxT > (1 << 20) ||
        V > (1 << 24) || Vp > (1 << 25) || L > 1024 || C > 65536 || C % NH) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: header holds an impossible shape (max_seq_len %d, vocab_size %d, "
                          "num_layers %d, num_heads %d, channels %d, padded_vocab_size %d)",
                          path, maxT, V, L, NH, C, Vp);
        goto done;
    }
    /* All factors are bounded above, so these products fit in 64 bits. */
    uint64_t c = (uint64_t)C, n_floats = (uint64_t)Vp * c + (uint64_t)maxT * c +
                                         (uint64_t)L * (12 * c * c + 13 * c) + 2 * c;
    uint64_t want = sizeof h + 4 * n_floats;
    if (f.size != want) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: %llu bytes, but its header (num_layers %d, channels %d, "
                          "max_seq_len %d, padded_vocab_size %d) makes %llu; truncated or not "
                          "llm.c's format",
                          path, (unsigned long long)f.size, L, C, maxT, Vp,
                          (unsigned long long)want);
        goto done;
    }
    strata_model_shape shape = {
        .n_layer = L, .n_head = NH, .n_embd = C, .block_size = maxT, .vocab_size = V};
    if ((e = strata_model_create(&m, &shape)).code) {
        strata_err inner = e;
        e = strata_errorf(inner.code, "%s: %s", path, inner.msg);
        goto done;
    }

    float *p = strata_model_params(m);
    uint64_t off = sizeof h;
    const strata_tensor *wte = strata_model_find(m, "wte.weight");
    const strata_tensor *wpe = strata_model_find(m, "wpe.weight");
    /* wte: V real rows, then Vp - V padding rows that llm.c never reads. */
    if ((e = in_read_floats(&f, p + wte->offset, wte->numel, off, "wte")).code) goto done;
    off += (uint64_t)Vp * c * 4;
    if ((e = in_read_floats(&f, p + wpe->offset, wpe->numel, off, "wpe")).code) goto done;
    off += wpe->numel * 4;
    for (int k = 0; k < 12; k++)
        for (int l = 0; l < L; l++) {
            const strata_tensor *t = block_tensor(m, l, k);
            if ((e = in_read_floats(&f, p + t->offset, t->numel, off, t->name)).code) goto done;
            off += t->numel * 4;
        }
    const strata_tensor *lnf[2] = {strata_model_find(m, "ln_f.weight"),
                                   strata_model_find(m, "ln_f.bias")};
    for (int i = 0; i < 2; i++) {
        if ((e = in_read_floats(&f, p + lnf[i]->offset, lnf[i]->numel, off, lnf[i]->name)).code)
            goto done;
        off += lnf[i]->numel * 4;
    }
done:
    close(f.fd);
    if (e.code) {
        strata_model_free(m);
        return e;
    }
    *out = m;
    return strata_ok();
}

strata_err strata_llmc_export(const char *path, const strata_model *m, int padded_vocab)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    int Vp = padded_vocab > 0 ? padded_vocab : (s->vocab_size + 127) / 128 * 128;
    if (Vp < s->vocab_size)
        return strata_errorf(STRATA_EINPUT, "%s: padded vocab %d is below vocab_size %d", path, Vp,
                             s->vocab_size);
    int32_t h[LLMC_HEADER_INTS] = {
        STRATA_LLMC_MAGIC, STRATA_LLMC_VERSION, s->block_size, s->vocab_size,
        s->n_layer,        s->n_head,           s->n_embd,     Vp};
    to_little_endian(h, LLMC_HEADER_INTS);
    out_file o;
    STRATA_TRY(out_open(&o, path));
    const float *p = strata_model_params((strata_model *)m);
    const strata_tensor *wte = strata_model_find(m, "wte.weight");
    const strata_tensor *wpe = strata_model_find(m, "wpe.weight");
    out_write(&o, h, sizeof h);
    out_write_floats(&o, p + wte->offset, wte->numel);
    out_write_zeros(&o, (size_t)(Vp - s->vocab_size) * (size_t)s->n_embd);
    out_write_floats(&o, p + wpe->offset, wpe->numel);
    for (int k = 0; k < 12; k++)
        for (int l = 0; l < s->n_layer; l++) {
            const strata_tensor *t = block_tensor(m, l, k);
            out_write_floats(&o, p + t->offset, t->numel);
        }
    const strata_tensor *lnf_w = strata_model_find(m, "ln_f.weight");
    const strata_tensor *lnf_b = strata_model_find(m, "ln_f.bias");
    out_write_floats(&o, p + lnf_w->offset, lnf_w->numel);
    out_write_floats(&o, p + lnf_b->offset, lnf_b->numel);
    return out_finish(&o);
}

/* ---- safetensors ------------------------------------------------------------- */

typedef struct st_entry {
    const char *name;     /* as in the file (points into the JSON) */
    const char *stripped; /* without "transformer." */
    int dtype_size;
    int is_f32;
    int ndim;
    uint64_t shape[8];
    uint64_t begin, end; /* byte range in the data section */
} st_entry;

static int dtype_size(const char *dtype)
{
    static const struct {
        const char *name;
        int size;
    } dtypes[] = {{"F64", 8}, {"F32", 4}, {"F16", 2},  {"BF16", 2},    {"I64", 8},
                  {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
                  {"U16", 2}, {"U8", 1},  {"BOOL", 1}, {"F8_E5M2", 1}, {"F8_E4M3", 1}};
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(dtype, dtypes[i].name)) return dtypes[i].size;
    return 0;
}

static int cmp_stripped(const void *a, const void *b)
{
    return strcmp((*(const st_entry *const *)a)->stripped, (*(const st_entry *const *)b)->stripped);
}

static int cmp_begin(const void *a, const void *b)
{
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* Reads one header entry, checking its own consistency and that its bytes
 * lie inside the data section. */
static strata_err parse_entry(const char *path, const char *name, json_t *v, uint64_t data_len,
                              st_entry *e)
{
    memset(e, 0, sizeof *e);
    e->name = name;
    e->stripped = strncmp(name, "transformer.", 12) ? name : name + 12;
    json_t *dtype = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offsets = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(dtype) || !json_is_array(shape) ||
        !json_is_array(offsets))
        return strata_errorf(
            STRATA_EINPUT, "%s: header entry '%s' lacks dtype, shape or data_offsets", path, name);
    e->dtype_size = dtype_size(json_string_value(dtype));
    if (!e->dtype_size)
        return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has unknown dtype '%.16s'", path, name,
                             json_string_value(dtype));
    e->is_f32 = !strcmp(json_string_value(dtype), "F32");
    size_t nd = json_array_size(shape);
    if (nd > 8) return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has %zu dims", path, name, nd);
    e->ndim = (int)nd;
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has a bad shape", path, name);
        e->shape[i] = (uint64_t)json_integer_value(d);
        if (e->shape[i] && numel > UINT64_MAX / 16 / e->shape[i])
            return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is impossibly large", path, name);
        numel *= e->shape[i];
    }
    json_t *b = json_array_get(offsets, 0), *en = json_array_get(offsets, 1);
    if (json_array_size(offsets) != 2 || !json_is_integer(b) || !json_is_integer(en) ||
        json_integer_value(b) < 0 || json_integer_value(en) < json_integer_value(b))
        return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has bad data_offsets", path, name);
    e->begin = (uint64_t)json_integer_value(b);
    e->end = (uint64_t)json_integer_value(en);
    if (e->end - e->begin != numel * (uint64_t)e->dtype_size)
        return strata_errorf(STRATA_EINPUT,
                             "%s: tensor '%s' spans %llu bytes but its shape and dtype make %llu",
                             path, name, (unsigned long long)(e->end - e->begin),
                             (unsigned long long)(numel * (uint64_t)e->dtype_size));
    if (e->end > data_len)
        return strata_errorf(STRATA_EINPUT,
                             "%s: tensor '%s' ends at data byte %llu, past the end of the file "
                             "(%llu data bytes)",
                             path, name, (unsigned long long)e->end, (unsigned long long)data_len);
    return strata_ok();
}

/* The index of layer h.<i>. in name, or -1; *rest points after the dot. */
static int layer_of(const char *name, const char **rest)
{
    if (strncmp(name, "h.", 2)) return -1;
    const char *p = name + 2;
    int l = 0, digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 5) l = l * 10 + (*p++ - '0'), digits++;
    if (!digits || *p != '.' || (digits > 1 && name[2] == '0')) return -1;
    *rest = p + 1;
    return l;
}

static int is_conv1d(const char *name)
{
    return strstr(name, ".attn.c_attn.weight") || strstr(name, ".attn.c_proj.weight") ||
           strstr(name, ".mlp.c_fc.weight") || strstr(name, ".mlp.c_proj.weight");
}

static int parse_int_text(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < 1 || v > INT_MAX) return 0;
    *out = (int)v;
    return 1;
}

/* n_head from __metadata__, else from config.json beside the file. */
static strata_err find_n_head(const char *path, json_t *meta, int *n_head)
{
    json_t *v = json_is_object(meta) ? json_object_get(meta, "n_head") : NULL;
    if (json_is_string(v) && parse_int_text(json_string_value(v), n_head)) return strata_ok();
    if (json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) <= INT_MAX) {
        *n_head = (int)json_integer_value(v);
        return strata_ok();
    }
    char config[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int n = slash ? snprintf(config, sizeof config, "%.*s/config.json", (int)(slash - path), path)
                  : snprintf(config, sizeof config, "config.json");
    if (n < (int)sizeof config && access(config, R_OK) == 0) {
        json_error_t jerr;
        json_t *root = json_load_file(config, 0, &jerr);
        if (!root)
            return strata_errorf(STRATA_EINPUT, "%s:%d: not JSON: %s", config, jerr.line,
                                 jerr.text);
        json_t *nh = json_object_get(root, "n_head");
        int ok =
            json_is_integer(nh) && json_integer_value(nh) > 0 && json_integer_value(nh) <= INT_MAX;
        if (ok) *n_head = (int)json_integer_value(nh);
        json_decref(root);
        if (ok) return strata_ok();
        return strata_errorf(STRATA_EINPUT, "%s: has no integer \"n_head\"", config);
    }
    return strata_errorf(STRATA_EINPUT,
                         "%s: the number of attention heads is not in the file; HINT: pass "
                         "--n-head N or put Hugging Face's config.json beside it",
                         path);
}

static void transpose(float *dst, const float *src, size_t rows, size_t cols)
{
    /* dst (cols, rows) = src (rows, cols)^T, in 32x32 tiles for the cache. */
    for (size_t r0 = 0; r0 < rows; r0 += 32)
        for (size_t c0 = 0; c0 < cols; c0 += 32)
            for (size_t r = r0; r < r0 + 32 && r < rows; r++)
                for (size_t c = c0; c < c0 + 32 && c < cols; c++)
                    dst[c * rows + r] = src[r * cols + c];
}

typedef struct st_parse {
    json_t *root;
    st_entry *entries;
    const st_entry **by_name; /* sorted by stripped name, for lookups */
    size_t n;
    uint64_t data_start, data_len;
    json_t *meta;
} st_parse;

/* Header length, JSON, every entry's consistency and the layout of the data
 * section: no overlaps, no gaps, nothing after the last tensor. */
static strata_err st_parse_header(const in_file *f, st_parse *sp)
{
    const char *path = f->path;
    memset(sp, 0, sizeof *sp);
    unsigned char len8[8];
    if (f->size < 8)
        return strata_errorf(STRATA_EINPUT, "%s: %llu bytes, too short for safetensors", path,
                             (unsigned long long)f->size);
    STRATA_TRY(in_read(f, len8, 8, 0, "the header length"));
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | len8[i];
    if (n > f->size - 8)
        return strata_errorf(STRATA_EINPUT,
                             "%s: header length %llu runs past the end of the file (%llu bytes); "
                             "truncated or not safetensors",
                             path, (unsigned long long)n, (unsigned long long)f->size);
    if (n < 2 || n > MAX_SAFETENSORS_HEADER)
        return strata_errorf(STRATA_EINPUT, "%s: header length %llu is impossible", path,
                             (unsigned long long)n);
    char *text = malloc((size_t)n);
    if (!text) return strata_errorf(STRATA_EFAIL, "out of memory");
    strata_err e = in_read(f, text, (size_t)n, 8, "the header");
    if (e.code) {
        free(text);
        return e;
    }
    json_error_t jerr;
    sp->root = json_loadb(text, (size_t)n, 0, &jerr);
    free(text);
    if (!sp->root)
        return strata_errorf(STRATA_EINPUT, "%s: header is not JSON (%s, at byte %d)", path,
                             jerr.text, jerr.position);
    if (!json_is_object(sp->root))
        return strata_errorf(STRATA_EINPUT, "%s: header is not a JSON object", path);
    sp->data_start = 8 + n;
    sp->data_len = f->size - sp->data_start;
    sp->entries = calloc(json_object_size(sp->root) + 1, sizeof *sp->entries);
    if (!sp->entries) return strata_errorf(STRATA_EFAIL, "out of memory");
    const char *key;
    json_t *v;
    json_object_foreach(sp->root, key, v)
    {
        if (!strcmp(key, "__metadata__")) {
            sp->meta = v;
            continue;
        }
        STRATA_TRY(parse_entry(path, key, v, sp->data_len, &sp->entries[sp->n]));
        sp->n++;
    }
    st_entry *sorted = malloc((sp->n + 1) * sizeof *sorted);
    if (!sorted) return strata_errorf(STRATA_EFAIL, "out of memory");
    memcpy(sorted, sp->entries, sp->n * sizeof *sorted);
    qsort(sorted, sp->n, sizeof *sorted, cmp_begin);
    uint64_t at = 0;
    for (size_t i = 0; i < sp->n && !e.code; i++) {
        if (sorted[i].begin < at)
            e = strata_errorf(STRATA_EINPUT, "%s: tensors '%s' and '%s' overlap in the data", path,
                              sorted[i - 1].name, sorted[i].name);
        else if (sorted[i].begin > at)
            e = strata_errorf(
                STRATA_EINPUT, "%s: data bytes %llu to %llu belong to no tensor (before '%s')",
                path, (unsigned long long)at, (unsigned long long)sorted[i].begin, sorted[i].name);
        at = sorted[i].end;
    }
    if (!e.code && at != sp->data_len)
        e = strata_errorf(STRATA_EINPUT,
                          "%s: %llu bytes follow the last tensor; not a whole safetensors file",
                          path, (unsigned long long)(sp->data_len - at));
    free(sorted);
    if (e.code) return e;
    /* An index by name; the same name twice (with and without the
     * "transformer." prefix) is ambiguous. */
    sp->by_name = malloc((sp->n + 1) * sizeof *sp->by_name);
    if (!sp->by_name) return strata_errorf(STRATA_EFAIL, "out of memory");
    for (size_t i = 0; i < sp->n; i++) sp->by_name[i] = &sp->entries[i];
    qsort(sp->by_name, sp->n, sizeof *sp->by_name, cmp_stripped);
    for (size_t i = 1; i < sp->n; i++)
        if (!strcmp(sp->by_name[i - 1]->stripped, sp->by_name[i]->stripped))
            return strata_errorf(STRATA_EINPUT, "%s: tensors '%s' and '%s' are the same", path,
                                 sp->by_name[i - 1]->name, sp->by_name[i]->name);
    return strata_ok();
}

static void st_parse_free(st_parse *sp)
{
    free(sp->by_name);
    free(sp->entries);
    if (sp->root) json_decref(sp->root);
}

static const st_entry *st_find(const st_parse *sp, const char *stripped)
{
    st_entry key = {.stripped = stripped};
    const st_entry *k = &key;
    const st_entry **hit = bsearch(&k, sp->by_name, sp->n, sizeof *sp->by_name, cmp_stripped);
    return hit ? *hit : NULL;
}

/* Names every entry: a strata tensor, an ignored buffer, or lm_head; finds
 * the model's shape; refuses strangers. */
static strata_err st_shape(const char *path, const st_parse *sp, int n_head,
                           strata_model_shape *shape)
{
    int max_layer = -1;
    for (size_t i = 0; i < sp->n; i++) {
        const st_entry *e = &sp->entries[i];
        const char *rest;
        int l = layer_of(e->stripped, &rest);
        int known = !strcmp(e->stripped, "wte.weight") || !strcmp(e->stripped, "wpe.weight") ||
                    !strcmp(e->stripped, "ln_f.weight") || !strcmp(e->stripped, "ln_f.bias") ||
                    !strcmp(e->name, "lm_head.weight");
        if (l >= 0) {
            if (!strcmp(rest, "attn.bias") || !strcmp(rest, "attn.masked_bias")) continue;
            for (int k = 0; k < 12; k++) known |= !strcmp(rest, block_names[k]);
            if (known && l >= 1024)
                return strata_errorf(STRATA_EINPUT, "%s: tensor '%s': more than 1024 layers", path,
                                     e->name);
            if (known && l > max_layer) max_layer = l;
        }
        if (!known)
            return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is not part of GPT-2", path,
                                 e->name);
    }
    const st_entry *wte = st_find(sp, "wte.weight"), *wpe = st_find(sp, "wpe.weight");
    if (!wte || !wpe)
        return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is missing", path,
                             wte ? "wpe.weight" : "wte.weight");
    if (wte->ndim != 2 || wpe->ndim != 2 || wte->shape[1] != wpe->shape[1] ||
        wte->shape[0] > INT_MAX || wpe->shape[0] > INT_MAX || wte->shape[1] > INT_MAX)
        return strata_errorf(
            STRATA_EINPUT, "%s: wte.weight and wpe.weight must be 2-D with the same columns", path);
    if (max_layer < 0)
        return strata_errorf(STRATA_EINPUT, "%s: holds no transformer blocks (h.0...)", path);
    STRATA_TRY(n_head > 0 ? strata_ok() : find_n_head(path, sp->meta, &n_head));
    *shape = (strata_model_shape){.n_layer = max_layer + 1,
                                  .n_head = n_head,
                                  .n_embd = (int)wte->shape[1],
                                  .block_size = (int)wpe->shape[0],
                                  .vocab_size = (int)wte->shape[0]};
    return strata_ok();
}

/* Checks that every tensor of m is in the file as F32 with the right shape
 * ((in, out) for Conv1D weights). */
static strata_err st_check_tensors(const char *path, const st_parse *sp, const strata_model *m)
{
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        const st_entry *e = st_find(sp, t->name);
        if (!e) return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is missing", path, t->name);
        if (!e->is_f32)
            return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is not F32; only F32 imports",
                                 path, e->name);
        uint64_t want[2] = {(uint64_t)t->shape[0], (uint64_t)t->shape[1]};
        if (is_conv1d(t->name)) want[0] = (uint64_t)t->shape[1], want[1] = (uint64_t)t->shape[0];
        if (e->ndim != t->ndim || e->shape[0] != want[0] ||
            (t->ndim == 2 && e->shape[1] != want[1])) {
            char got[64];
            if (e->ndim == 2)
                snprintf(got, sizeof got, "[%llu, %llu]", (unsigned long long)e->shape[0],
                         (unsigned long long)e->shape[1]);
            else if (e->ndim == 1)
                snprintf(got, sizeof got, "[%llu]", (unsigned long long)e->shape[0]);
            else
                snprintf(got, sizeof got, "%d-D", e->ndim);
            if (t->ndim == 2)
                return strata_errorf(STRATA_EINPUT,
                                     "%s: tensor '%s' has shape %s, expected "
                                     "[%llu, %llu]",
                                     path, e->name, got, (unsigned long long)want[0],
                                     (unsigned long long)want[1]);
            return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has shape %s, expected [%llu]",
                                 path, e->name, got, (unsigned long long)want[0]);
        }
    }
    const st_entry *lm = st_find(sp, "lm_head.weight");
    const strata_tensor *wte = strata_model_find(m, "wte.weight");
    if (lm && (!lm->is_f32 || lm->ndim != 2 || lm->shape[0] != (uint64_t)wte->shape[0] ||
               lm->shape[1] != (uint64_t)wte->shape[1]))
        return strata_errorf(STRATA_EINPUT, "%s: lm_head.weight is not F32 of wte.weight's shape",
                             path);
    return strata_ok();
}

static strata_err st_read_tensors(const in_file *f, const st_parse *sp, strata_model *m)
{
    float *p = strata_model_params(m);
    float *tmp = NULL;
    size_t tmp_len = 0;
    strata_err e = strata_ok();
    for (int i = 0; i < strata_model_n_tensors(m) && !e.code; i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        const st_entry *en = st_find(sp, t->name);
        uint64_t off = sp->data_start + en->begin;
        if (!is_conv1d(t->name)) {
            e = in_read_floats(f, p + t->offset, t->numel, off, en->name);
            continue;
        }
        if (tmp_len < t->numel) {
            free(tmp);
            tmp_len = 0;
            if (!(tmp = malloc(t->numel * sizeof(float)))) {
                e = strata_errorf(STRATA_EFAIL, "out of memory");
                break;
            }
            tmp_len = t->numel;
        }
        e = in_read_floats(f, tmp, t->numel, off, en->name);
        /* Conv1D (in, out) -> strata (out, in). */
        if (!e.code) transpose(p + t->offset, tmp, (size_t)t->shape[1], (size_t)t->shape[0]);
    }
    const st_entry *lm = st_find(sp, "lm_head.weight");
    if (!e.code && lm) {
        const strata_tensor *wte = strata_model_find(m, "wte.weight");
        free(tmp);
        tmp = malloc(wte->numel * sizeof(float));
        if (!tmp)
            e = strata_errorf(STRATA_EFAIL, "out of memory");
        else
            e = in_read_floats(f, tmp, wte->numel, sp->data_start + lm->begin, lm->name);
        if (!e.code && memcmp(tmp, p + wte->offset, wte->numel * sizeof(float)))
            e = strata_errorf(STRATA_EINPUT,
                              "%s: lm_head.weight differs from wte.weight; strata ties the two "
                              "and cannot import an untied head",
                              f->path);
    }
    free(tmp);
    return e;
}

strata_err strata_safetensors_import(const char *path, int n_head, strata_model **out)
{
    in_file f;
    STRATA_TRY(in_open(&f, path));
    st_parse sp;
    strata_model *m = NULL;
    strata_model_shape shape;
    strata_err e = st_parse_header(&f, &sp);
    if (!e.code) e = st_shape(path, &sp, n_head, &shape);
    if (!e.code) {
        e = strata_model_create(&m, &shape);
        if (e.code) {
            strata_err inner = e;
            e = strata_errorf(inner.code, "%s: %s", path, inner.msg);
        }
    }
    if (!e.code) e = st_check_tensors(path, &sp, m);
    if (!e.code) e = st_read_tensors(&f, &sp, m);
    st_parse_free(&sp);
    close(f.fd);
    if (e.code) {
        strata_model_free(m);
        return e;
    }
    *out = m;
    return strata_ok();
}

strata_err strata_safetensors_export(const char *path, const strata_model *m)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    json_t *root = json_object(), *meta = json_object();
    if (!root || !meta) {
        json_decref(root);
        json_decref(meta);
        return strata_errorf(STRATA_EFAIL, "out of memory");
    }
    char num[32];
    json_object_set_new(meta, "format", json_string("pt"));
    const struct {
        const char *key;
        int value;
    } fields[] = {{"n_layer", s->n_layer},
                  {"n_head", s->n_head},
                  {"n_embd", s->n_embd},
                  {"n_positions", s->block_size},
                  {"vocab_size", s->vocab_size}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        snprintf(num, sizeof num, "%d", fields[i].value);
        json_object_set_new(meta, fields[i].key, json_string(num));
    }
    json_object_set_new(root, "__metadata__", meta);
    uint64_t off = 0;
    size_t max_conv = 0;
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        int conv = is_conv1d(t->name);
        json_t *shape = t->ndim == 2 ? json_pack("[II]", (json_int_t)t->shape[conv ? 1 : 0],
                                                 (json_int_t)t->shape[conv ? 0 : 1])
                                     : json_pack("[I]", (json_int_t)t->shape[0]);
        uint64_t bytes = t->numel * sizeof(float);
        json_object_set_new(root, t->name,
                            json_pack("{s:s, s:o, s:[II]}", "dtype", "F32", "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + bytes)));
        off += bytes;
        if (conv && t->numel > max_conv) max_conv = t->numel;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    float *tmp = malloc((max_conv ? max_conv : 1) * sizeof(float));
    if (!text || !tmp) {
        free(text);
        free(tmp);
        return strata_errorf(STRATA_EFAIL, "out of memory");
    }
    /* Pad the header with spaces so the data starts 8-byte aligned, as the
     * reference writer does. */
    size_t n = strlen(text), padded = (n + 7) / 8 * 8;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    out_file o;
    strata_err e = out_open(&o, path);
    if (!e.code) {
        out_write(&o, len8, 8);
        out_write(&o, text, n);
        out_write(&o, "        ", padded - n);
        const float *p = strata_model_params((strata_model *)m);
        for (int i = 0; i < strata_model_n_tensors(m); i++) {
            const strata_tensor *t = strata_model_tensor(m, i);
            if (!is_conv1d(t->name)) {
                out_write_floats(&o, p + t->offset, t->numel);
                continue;
            }
            transpose(tmp, p + t->offset, (size_t)t->shape[0], (size_t)t->shape[1]);
            out_write_floats(&o, tmp, t->numel);
        }
        e = out_finish(&o);
    }
    free(text);
    free(tmp);
    return e;
}
