/* ckpt.c — checkpoints: the whole training state in one HDF5 file; see ckpt.h.
 *
 * The file is written with the newest HDF5 file format (superblock v3,
 * version-2 object headers, fixed-array chunk indexes): in that format every
 * piece of metadata carries a checksum, and every dataset carries Fletcher32
 * on its chunks, so a flipped byte anywhere that matters is an error on
 * load, never a silently wrong tensor. Strings are fixed-length attributes
 * for the same reason (variable-length ones live in the global heap, which
 * has no checksum).
 */
#include "strata/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "ckpt_file.h"
#include "file.h"

/* Chunks of up to 1 MiB: large enough that HDF5's per-chunk work (an index
 * entry, one write(2)) is noise next to the bytes, small enough that the
 * copy and checksum of a chunk stay in cache. Each chunk is one write(2),
 * and on the benchmark machine 4 MiB writes into the page cache ran 4-8x
 * slower per byte than 1 MiB ones (tests/bench_ckpt.sh). */
#define CHUNK_FLOATS ((hsize_t)1 << 18)
/* No string attribute of ours comes near this; a larger one is corruption. */
#define MAX_STRING_ATTR ((size_t)64 << 20)

/* ---- HDF5 errors as values ------------------------------------------------ */

/* HDF5 prints its error stack on stderr by default; library code never
 * prints, so the stack is silenced and its innermost line becomes part of
 * our message instead. */
static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

typedef struct h5_walk {
    char text[240];
} h5_walk;

static herr_t h5_walk_cb(unsigned n, const H5E_error2_t *err, void *data)
{
    h5_walk *w = data;
    if (n == 0 && err->desc) snprintf(w->text, sizeof w->text, "%s", err->desc);
    return 0;
}

/* The most specific line of HDF5's error stack, shortened: an errno's text
 * ("No space left on device") rather than the whole write report. */
static const char *h5_detail(h5_walk *w)
{
    w->text[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5_walk_cb, w);
    H5Eclear2(H5E_DEFAULT);
    const char *em = strstr(w->text, "error message = '");
    if (em) {
        em += strlen("error message = '");
        const char *q = strchr(em, '\'');
        size_t n = q ? (size_t)(q - em) : strlen(em);
        memmove(w->text, em, n);
        w->text[n] = 0;
    }
    if (!w->text[0]) snprintf(w->text, sizeof w->text, "HDF5 error");
    for (char *p = w->text; *p; p++) /* messages are one line */
        if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
    return w->text;
}

/* "path: what (HDF5's reason)", what formatted like printf. */
static strata_err h5_fail(int code, const char *path, const char *what_fmt, ...)
    __attribute__((format(printf, 3, 4)));

static strata_err h5_fail(int code, const char *path, const char *what_fmt, ...)
{
    char what[128];
    va_list ap;
    va_start(ap, what_fmt);
    vsnprintf(what, sizeof what, what_fmt, ap);
    va_end(ap);
    h5_walk w;
    return strata_errorf(code, "%s: %s (%s)", path, what, h5_detail(&w));
}

static void close_id(hid_t id, herr_t (*close)(hid_t))
{
    if (id >= 0) close(id);
}

/* ---- writing ------------------------------------------------------------- */

static strata_err attr_write(hid_t loc, const char *path, const char *name, hid_t file_type,
                             hid_t mem_type, const void *value)
{
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? -1 : H5Acreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, mem_type, value);
    strata_err e =
        rc < 0 ? h5_fail(STRATA_EFAIL, path, "cannot write attribute %s", name) : strata_ok();
    close_id(attr, H5Aclose);
    close_id(space, H5Sclose);
    return e;
}

static strata_err attr_write_i64(hid_t loc, const char *path, const char *name, int64_t v)
{
    return attr_write(loc, path, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

/* A fixed-length string: it lives in the (checksummed) object header. */
static strata_err attr_write_str(hid_t loc, const char *path, const char *name, const char *s)
{
    if (!s) s = "";
    size_t n = strlen(s);
    hid_t type = H5Tcopy(H5T_C_S1);
    if (type < 0 || H5Tset_size(type, n ? n : 1) < 0 || H5Tset_strpad(type, H5T_STR_NULLPAD) < 0) {
        strata_err e = h5_fail(STRATA_EFAIL, path, "cannot make a string type");
        close_id(type, H5Tclose);
        return e;
    }
    strata_err e = attr_write(loc, path, name, type, type, n ? s : "");
    H5Tclose(type);
    return e;
}

/* HDF5's Fletcher32 (H5_checksum_fletcher32): big-endian 16-bit words,
 * sum1 = their sum and sum2 = the sum of the running sums, each reduced with
 * end-around carry, so 0 only when every word is 0 and otherwise the value
 * mod 65535 in [1, 65535]. HDF5's own loop goes a byte at a time and made
 * the save CPU-bound; this one sums blocks of 128 words in 32 bits (no
 * overflow, and the loop vectorises), then folds each block in with 64-bit
 * arithmetic: about 3.5 GB/s on the benchmark machine.
 * HDF5's reader verifies every chunk written this way against its own
 * implementation on every load. len is even (whole floats). */
static uint32_t fletcher32(const unsigned char *p, size_t len)
{
    size_t n = len / 2;
    uint64_t sum1 = 0, sum2 = 0;
    int nonzero = 0;
    while (n) {
        uint32_t k = n > 128 ? 128 : (uint32_t)n;
        uint32_t s = 0, t = 0; /* < 128 * 65535 and < 65535 * 128 * 129 / 2: no overflow */
        for (uint32_t j = 0; j < k; j++) {
            uint32_t w = (uint32_t)p[2 * j] << 8 | p[2 * j + 1];
            s += w;
            t += (k - j) * w;
        }
        sum2 = (sum2 + (uint64_t)k * sum1 + t) % 65535;
        sum1 = (sum1 + s) % 65535;
        nonzero |= s != 0;
        p += 2 * (size_t)k;
        n -= k;
    }
    if (!nonzero) return 0;
    if (!sum1) sum1 = 65535;
    if (!sum2) sum2 = 65535;
    return (uint32_t)(sum2 << 16 | sum1);
}

/* Rows per chunk: chunks of at most about CHUNK_FLOATS, balanced so the
 * last one (stored full-size, zero-padded) wastes little. */
static hsize_t chunk_rows(hsize_t rows, hsize_t row_len)
{
    hsize_t total = rows * row_len;
    hsize_t n_chunks = (total + CHUNK_FLOATS - 1) / CHUNK_FLOATS;
    return (rows + n_chunks - 1) / n_chunks;
}

typedef struct chunk_buf {
    unsigned char *bytes;
    size_t cap;
} chunk_buf;

/* Writes data chunk by chunk, each with its Fletcher32 appended as the
 * filter would (little-endian), straight to the file: HDF5's filter path
 * copies every chunk twice and checksums it slowly. Needs a little-endian
 * host (float bytes in memory = H5T_IEEE_F32LE in the file). */
static herr_t write_chunks(hid_t dset, const float *data, hsize_t rows, hsize_t row_len,
                           hsize_t rows_per_chunk, chunk_buf *buf)
{
    size_t chunk_bytes = (size_t)(rows_per_chunk * row_len) * sizeof(float);
    if (buf->cap < chunk_bytes + 4) {
        free(buf->bytes);
        buf->cap = 0;
        if (!(buf->bytes = malloc(chunk_bytes + 4))) return -1;
        buf->cap = chunk_bytes + 4;
    }
    for (hsize_t row = 0; row < rows; row += rows_per_chunk) {
        hsize_t n = rows - row < rows_per_chunk ? rows - row : rows_per_chunk;
        size_t used = (size_t)(n * row_len) * sizeof(float);
        memcpy(buf->bytes, data + row * row_len, used);
        memset(buf->bytes + used, 0, chunk_bytes - used);
        uint32_t sum = fletcher32(buf->bytes, chunk_bytes);
        for (int i = 0; i < 4; i++) buf->bytes[chunk_bytes + i] = (unsigned char)(sum >> (8 * i));
        hsize_t offset[2] = {row, 0};
        if (H5Dwrite_chunk(dset, H5P_DEFAULT, 0, offset, chunk_bytes + 4, buf->bytes) < 0)
            return -1;
    }
    return 0;
}

static strata_err write_tensor(hid_t group, const char *path, const char *group_name,
                               const strata_tensor *t, const float *data, chunk_buf *buf)
{
    hsize_t dims[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
    hsize_t row_len = t->ndim == 2 ? dims[1] : 1;
    hsize_t chunk[2] = {chunk_rows(dims[0], row_len), dims[1]};
    hid_t space = H5Screate_simple(t->ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t dset = -1;
    herr_t rc = space < 0 || dcpl < 0 ? -1 : 0;
    if (rc >= 0) rc = H5Pset_chunk(dcpl, t->ndim, chunk);
    if (rc >= 0) rc = H5Pset_fletcher32(dcpl);
    if (rc >= 0) rc = H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    if (rc >= 0) {
        dset = H5Dcreate2(group, t->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        rc = dset < 0 ? -1 : write_chunks(dset, data, dims[0], row_len, chunk[0], buf);
#else
        (void)buf;
        rc = dset < 0 ? -1 : H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
#endif
    }
    strata_err e = rc < 0 ? h5_fail(STRATA_EFAIL, path, "cannot write %s/%s", group_name, t->name)
                          : strata_ok();
    close_id(dset, H5Dclose);
    close_id(dcpl, H5Pclose);
    close_id(space, H5Sclose);
    return e;
}

static strata_err write_group(hid_t file, const char *path, const char *group_name,
                              const strata_model *m, const float *data)
{
    /* The links stay in the group's (checksummed) object header: past the
     * default 8 they would move to a fractal heap without checksums, where
     * a flipped address bit could swap two same-shaped tensors unseen. */
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    hid_t g = -1;
    if (gcpl >= 0 && H5Pset_link_phase_change(gcpl, 65535, 65534) >= 0)
        g = H5Gcreate2(file, group_name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    if (g < 0) {
        strata_err e = h5_fail(STRATA_EFAIL, path, "cannot create a group");
        close_id(gcpl, H5Pclose);
        return e;
    }
    H5Pclose(gcpl);
    strata_err e = strata_ok();
    chunk_buf buf = {0};
    for (int i = 0; i < strata_model_n_tensors(m) && !e.code; i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        e = write_tensor(g, path, group_name, t, data + t->offset, &buf);
    }
    free(buf.bytes);
    H5Gclose(g);
    return e;
}

/* ---- a checksum over the attributes ---------------------------------------
 *
 * HDF5 checksums object headers, where small attributes live, but not the
 * fractal heap that holds attributes once there are many or one is large
 * (a long config): a flipped byte there would go unnoticed. So the values
 * of all attributes are hashed (FNV-1a, 64 bits) into one more attribute,
 * checked on every load. */
static void hash_bytes(uint64_t *h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) *h = (*h ^ b[i]) * 0x100000001b3ull;
}

static void hash_u64(uint64_t *h, const char *name, uint64_t v)
{
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(v >> (8 * i));
    hash_bytes(h, name, strlen(name) + 1);
    hash_bytes(h, le, 8);
}

static void hash_str(uint64_t *h, const char *name, const char *s)
{
    if (!s) s = "";
    hash_u64(h, name, strlen(s));
    hash_bytes(h, s, strlen(s));
}

static const char *const shape_attrs[5] = {"n_layer", "n_head", "n_embd", "block_size",
                                           "vocab_size"};

/* The architecture beyond GPT-2's five fields, as attributes of the same
 * names as strata_model_shape's fields. They are written only for families
 * other than GPT-2, so GPT-2 checkpoints keep their attributes and
 * checksum; absent, they read as 0 (GPT-2's defaults). */
enum { ARCH_INT, ARCH_FLOAT, ARCH_DOUBLE };
typedef struct arch_field {
    const char *name;
    size_t offset;
    int kind;
} arch_field;
#define ARCH(field, kind)                                                                          \
    {                                                                                              \
#field, offsetof(strata_model_shape, field), kind                                          \
    }
static const arch_field arch_fields[] = {
    ARCH(family, ARCH_INT),
    ARCH(n_kv_head, ARCH_INT),
    ARCH(head_dim, ARCH_INT),
    ARCH(ffn_dim, ARCH_INT),
    ARCH(tied, ARCH_INT),
    ARCH(qkv_bias, ARCH_INT),
    ARCH(qk_norm, ARCH_INT),
    ARCH(sliding_window, ARCH_INT),
    ARCH(rope_type, ARCH_INT),
    ARCH(rope_original_max, ARCH_INT),
    ARCH(variant, ARCH_INT),
    ARCH(norm_eps, ARCH_FLOAT),
    ARCH(rope_theta, ARCH_DOUBLE),
    ARCH(rope_factor, ARCH_DOUBLE),
    ARCH(rope_low_freq_factor, ARCH_DOUBLE),
    ARCH(rope_high_freq_factor, ARCH_DOUBLE),
};
#undef ARCH
#define N_ARCH (sizeof arch_fields / sizeof arch_fields[0])

static double arch_get(const strata_model_shape *s, const arch_field *f)
{
    const char *p = (const char *)s + f->offset;
    if (f->kind == ARCH_INT) return *(const int *)p;
    if (f->kind == ARCH_FLOAT) return *(const float *)p;
    return *(const double *)p;
}

static void arch_set(strata_model_shape *s, const arch_field *f, double v)
{
    char *p = (char *)s + f->offset;
    if (f->kind == ARCH_INT)
        *(int *)p = (int)v;
    else if (f->kind == ARCH_FLOAT)
        *(float *)p = (float)v;
    else
        *(double *)p = v;
}

static void shape_base(const strata_model_shape *s, int out[5])
{
    out[0] = s->n_layer, out[1] = s->n_head, out[2] = s->n_embd;
    out[3] = s->block_size, out[4] = s->vocab_size;
}

static uint64_t attrs_hash(const strata_model_shape *s, const strata_ckpt_state *st)
{
    uint64_t h = 0xcbf29ce484222325ull;
    int shape[5];
    shape_base(s, shape);
    hash_str(&h, "format", STRATA_CKPT_FORMAT);
    for (int i = 0; i < 5; i++) hash_u64(&h, shape_attrs[i], (uint64_t)shape[i]);
    for (size_t i = 0; i < N_ARCH && s->family != STRATA_FAMILY_GPT2; i++) {
        double v = arch_get(s, &arch_fields[i]);
        uint64_t bits;
        memcpy(&bits, &v, sizeof bits);
        hash_u64(&h, arch_fields[i].name, bits);
    }
    hash_u64(&h, "step", (uint64_t)st->step);
    hash_u64(&h, "tokens_seen", (uint64_t)st->tokens_seen);
    hash_u64(&h, "seed", st->seed);
    hash_u64(&h, "world_size", (uint64_t)st->world_size);
    hash_u64(&h, "adam_t", (uint64_t)st->adam_t);
    hash_u64(&h, "skipped_steps", (uint64_t)st->skipped_steps);
    hash_u64(&h, "bad_in_a_row", (uint64_t)st->bad_in_a_row);
    hash_str(&h, "config", st->config);
    hash_str(&h, "data_fingerprint", st->data_fingerprint);
    hash_str(&h, "extra_json", st->extra_json);
    return h;
}

static strata_err write_contents(hid_t file, const char *path, const strata_model *m,
                                 const float *adam_m, const float *adam_v,
                                 const strata_ckpt_state *st)
{
    static const strata_ckpt_state none = {0};
    if (!st) st = &none;
    const strata_model_shape *s = strata_model_get_shape(m);
    STRATA_TRY(attr_write_str(file, path, "format", STRATA_CKPT_FORMAT));
    int shape[5];
    shape_base(s, shape);
    for (int i = 0; i < 5; i++) STRATA_TRY(attr_write_i64(file, path, shape_attrs[i], shape[i]));
    for (size_t i = 0; i < N_ARCH && s->family != STRATA_FAMILY_GPT2; i++) {
        double v = arch_get(s, &arch_fields[i]);
        STRATA_TRY(arch_fields[i].kind == ARCH_INT
                       ? attr_write_i64(file, path, arch_fields[i].name, (int64_t)v)
                       : attr_write(file, path, arch_fields[i].name, H5T_IEEE_F64LE,
                                    H5T_NATIVE_DOUBLE, &v));
    }
    STRATA_TRY(attr_write_i64(file, path, "step", st->step));
    STRATA_TRY(attr_write_i64(file, path, "tokens_seen", st->tokens_seen));
    STRATA_TRY(attr_write(file, path, "seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, &st->seed));
    STRATA_TRY(attr_write_i64(file, path, "world_size", st->world_size));
    STRATA_TRY(attr_write_i64(file, path, "adam_t", st->adam_t));
    STRATA_TRY(attr_write_i64(file, path, "skipped_steps", st->skipped_steps));
    STRATA_TRY(attr_write_i64(file, path, "bad_in_a_row", st->bad_in_a_row));
    STRATA_TRY(attr_write_str(file, path, "config", st->config));
    STRATA_TRY(attr_write_str(file, path, "data_fingerprint", st->data_fingerprint));
    STRATA_TRY(attr_write_str(file, path, "extra_json", st->extra_json));
    uint64_t h = attrs_hash(s, st);
    STRATA_TRY(attr_write(file, path, "attrs_fnv1a64", H5T_STD_U64LE, H5T_NATIVE_UINT64, &h));

    /* Model-only checkpoints (import, init) simply have no /optim. */
    const float *p = strata_model_params((strata_model *)m);
    STRATA_TRY(write_group(file, path, "/model", m, p));
    if (adam_m) {
        hid_t g = H5Gcreate2(file, "/optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0) return h5_fail(STRATA_EFAIL, path, "cannot create /optim");
        H5Gclose(g);
        STRATA_TRY(write_group(file, path, "/optim/m", m, adam_m));
        STRATA_TRY(write_group(file, path, "/optim/v", m, adam_v));
    }
    return strata_ok();
}

/* Writes the checkpoint to tmp; messages name path, the file the user asked for. */
static strata_err write_file(const char *tmp, const char *path, const strata_model *m,
                             const float *adam_m, const float *adam_v, const strata_ckpt_state *st)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return h5_fail(STRATA_EFAIL, path, "cannot create a property list");
    /* The newest format: checksums on all metadata (see the top of the file).
     * Strong close: H5Fclose closes whatever an error path left open. */
    herr_t rc = H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
    if (rc >= 0) rc = H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    if (rc < 0) {
        strata_err e = h5_fail(STRATA_EFAIL, path, "cannot set file access properties");
        H5Pclose(fapl);
        return e;
    }
    /* Up to 32 attributes stay in the root's (checksummed) object header
     * instead of moving to the heap after the default 8. */
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    hid_t file = -1;
    if (fcpl >= 0 && H5Pset_attr_phase_change(fcpl, 32, 24) >= 0)
        file = H5Fcreate(tmp, H5F_ACC_EXCL, fcpl, fapl);
    strata_err e = file < 0 ? h5_fail(STRATA_EFAIL, path, "cannot create") : strata_ok();
    close_id(fcpl, H5Pclose);
    H5Pclose(fapl);
    if (e.code) return e;
    e = write_contents(file, path, m, adam_m, adam_v, st);
    if (!e.code && H5Fflush(file, H5F_SCOPE_LOCAL) < 0)
        e = h5_fail(STRATA_EFAIL, path, "cannot write");
    /* HDF5 cannot close a file whose last flush fails (a full disk): the
     * close fails, the id stays registered, and the library's clean-up at
     * exit later trips over it. So after a failure the temporary file's
     * data is dropped first: what the close still writes (some metadata)
     * lands in a sparse, nearly empty file, in the space just freed. The
     * file is deleted afterwards anyway. */
    if (e.code) truncate(tmp, 0);
    for (int attempt = 0; attempt < 2 && H5Iis_valid(file) > 0; attempt++) {
        if (H5Fclose(file) >= 0) break;
        if (!e.code) e = h5_fail(STRATA_EFAIL, path, "cannot close");
        truncate(tmp, 0);
    }
    return e;
}

strata_err strata_ckpt_write(const char *path, const strata_model *m, const float *adam_m,
                             const float *adam_v, const strata_ckpt_state *st)
{
    h5_quiet();
    if (!adam_m != !adam_v)
        return strata_errorf(STRATA_EFAIL, "%s: Adam's m and v must be saved together", path);
    strata_out_file o;
    STRATA_TRY(strata_out_name(&o, path));
    unlink(o.tmp); /* ours from an earlier, failed attempt */
    strata_err e = write_file(o.tmp, path, m, adam_m, adam_v, st);
    if (e.code) {
        strata_out_abort(&o);
        return e;
    }
    return strata_out_publish(&o);
}

/* ---- reading ------------------------------------------------------------- */

static strata_err open_ckpt(const char *path, hid_t *out)
{
    struct stat sb;
    if (stat(path, &sb) < 0)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return strata_errorf(STRATA_EINPUT, "%s: not a regular file", path);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
        strata_err e = h5_fail(STRATA_EFAIL, path, "cannot set file access properties");
        close_id(fapl, H5Pclose);
        return e;
    }
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    strata_err e =
        file < 0 ? h5_fail(STRATA_EINPUT, path, "not a readable HDF5 file") : strata_ok();
    H5Pclose(fapl);
    if (e.code) return e;
    *out = file;
    return strata_ok();
}

/* Opens attribute name on / and checks it holds exactly one value. */
static strata_err attr_open(hid_t file, const char *path, const char *name, H5T_class_t cls,
                            hid_t *attr_out, hid_t *type_out)
{
    htri_t exists = H5Aexists(file, name);
    if (exists < 0) return h5_fail(STRATA_EINPUT, path, "cannot read the attributes of /");
    if (!exists)
        return strata_errorf(STRATA_EINPUT, "%s: attribute '%s' is missing on /", path, name);
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    if (attr < 0) return h5_fail(STRATA_EINPUT, path, "cannot open an attribute of /");
    hid_t type = H5Aget_type(attr);
    hid_t space = H5Aget_space(attr);
    hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    close_id(space, H5Sclose);
    if (type < 0 || H5Tget_class(type) != cls || n != 1) {
        close_id(type, H5Tclose);
        H5Aclose(attr);
        H5Eclear2(H5E_DEFAULT);
        return strata_errorf(STRATA_EINPUT, "%s: attribute '%s' on / is not a single %s", path,
                             name,
                             cls == H5T_STRING  ? "string"
                             : cls == H5T_FLOAT ? "float"
                                                : "integer");
    }
    *attr_out = attr;
    *type_out = type;
    return strata_ok();
}

/* A numeric attribute of class cls, read as mem_type. */
static strata_err attr_read_num(hid_t file, const char *path, const char *name, H5T_class_t cls,
                                hid_t mem_type, void *out)
{
    hid_t attr = -1, type = -1;
    STRATA_TRY(attr_open(file, path, name, cls, &attr, &type));
    strata_err e = strata_ok();
    if (H5Aread(attr, mem_type, out) < 0)
        e = h5_fail(STRATA_EINPUT, path, "cannot read attribute '%s'", name);
    H5Tclose(type);
    H5Aclose(attr);
    return e;
}

static strata_err attr_read_int(hid_t file, const char *path, const char *name, hid_t mem_type,
                                void *out)
{
    return attr_read_num(file, path, name, H5T_INTEGER, mem_type, out);
}

static strata_err attr_read_i64(hid_t file, const char *path, const char *name, int64_t *out)
{
    return attr_read_int(file, path, name, H5T_NATIVE_INT64, out);
}

static strata_err attr_read_double(hid_t file, const char *path, const char *name, double *out)
{
    return attr_read_num(file, path, name, H5T_FLOAT, H5T_NATIVE_DOUBLE, out);
}

/* Reads a string attribute (fixed-length, as written here, or variable-length,
 * as h5py writes) into a new malloc'd string. */
static strata_err attr_read_str(hid_t file, const char *path, const char *name, char **out)
{
    hid_t attr = -1, type = -1;
    STRATA_TRY(attr_open(file, path, name, H5T_STRING, &attr, &type));
    strata_err e = strata_ok();
    char *s = NULL;
    htri_t vlen = H5Tis_variable_str(type);
    hid_t mem = H5Tcopy(H5T_C_S1);
    if (vlen > 0) {
        char *v = NULL;
        if (mem < 0 || H5Tset_size(mem, H5T_VARIABLE) < 0 || H5Aread(attr, mem, &v) < 0) {
            e = h5_fail(STRATA_EINPUT, path, "cannot read a string attribute");
        } else {
            s = strdup(v ? v : "");
            H5free_memory(v);
        }
    } else {
        size_t n = H5Tget_size(type);
        if (n == 0 || n > MAX_STRING_ATTR) {
            e = strata_errorf(STRATA_EINPUT, "%s: attribute '%s' has an impossible size %zu", path,
                              name, n);
        } else if (!(s = malloc(n + 1))) {
            e = strata_errorf(STRATA_ENOMEM, "out of memory");
        } else if (mem < 0 || H5Tset_size(mem, n) < 0 || H5Tset_strpad(mem, H5T_STR_NULLPAD) < 0 ||
                   H5Aread(attr, mem, s) < 0) {
            e = h5_fail(STRATA_EINPUT, path, "cannot read a string attribute");
        } else {
            s[n] = 0;
        }
    }
    close_id(mem, H5Tclose);
    H5Tclose(type);
    H5Aclose(attr);
    if (!e.code && !s) e = strata_errorf(STRATA_ENOMEM, "out of memory");
    if (e.code) {
        free(s);
        return e;
    }
    *out = s;
    return strata_ok();
}

static strata_err check_format(hid_t file, const char *path)
{
    char *format = NULL;
    strata_err e = attr_read_str(file, path, "format", &format);
    if (e.code)
        return strata_errorf(STRATA_EINPUT, "%s: not a strata checkpoint (%s)", path,
                             strstr(e.msg, ": ") ? strstr(e.msg, ": ") + 2 : e.msg);
    if (strcmp(format, STRATA_CKPT_FORMAT)) {
        e = strata_errorf(STRATA_EINPUT, "%s: format is '%.64s', expected '%s'", path, format,
                          STRATA_CKPT_FORMAT);
    }
    free(format);
    return e;
}

static strata_err read_shape_attrs(hid_t file, const char *path, strata_model_shape *s)
{
    memset(s, 0, sizeof *s);
    int base[5];
    for (int i = 0; i < 5; i++) {
        int64_t v;
        STRATA_TRY(attr_read_i64(file, path, shape_attrs[i], &v));
        if (v < 1 || v > INT_MAX)
            return strata_errorf(STRATA_EINPUT, "%s: attribute %s = %" PRId64 " is out of range",
                                 path, shape_attrs[i], v);
        base[i] = (int)v;
    }
    s->n_layer = base[0], s->n_head = base[1], s->n_embd = base[2];
    s->block_size = base[3], s->vocab_size = base[4];
    for (size_t i = 0; i < N_ARCH; i++) {
        const arch_field *f = &arch_fields[i];
        htri_t exists = H5Aexists(file, f->name);
        if (exists <= 0) {
            H5Eclear2(H5E_DEFAULT);
            continue;
        }
        double v;
        if (f->kind == ARCH_INT) {
            int64_t iv;
            STRATA_TRY(attr_read_i64(file, path, f->name, &iv));
            if (iv < INT_MIN || iv > INT_MAX)
                return strata_errorf(STRATA_EINPUT,
                                     "%s: attribute %s = %" PRId64 " is out of range", path,
                                     f->name, iv);
            v = (double)iv;
        } else {
            STRATA_TRY(attr_read_double(file, path, f->name, &v));
        }
        arch_set(s, f, v);
    }
    return strata_ok();
}

strata_err strata_ckpt_read_shape(const char *path, strata_model_shape *shape)
{
    h5_quiet();
    hid_t file = -1;
    STRATA_TRY(open_ckpt(path, &file));
    strata_model_shape v;
    strata_err e = check_format(file, path);
    if (!e.code) e = read_shape_attrs(file, path, &v);
    H5Fclose(file);
    if (e.code) return e;
    if ((e = strata_model_resolve_shape(&v)).code)
        return strata_errorf(STRATA_EINPUT, "%s: %s", path, e.msg);
    *shape = v;
    return strata_ok();
}

/* The first field in which a checkpoint's (resolved) shape differs from
 * the model's, as an error naming it. */
static strata_err compare_shapes(const char *path, const strata_model_shape *file,
                                 const strata_model_shape *model, int *mismatch)
{
    int a[5], b[5];
    shape_base(file, a);
    shape_base(model, b);
    for (int i = 0; i < 5; i++)
        if (a[i] != b[i]) {
            *mismatch = 1;
            return strata_errorf(STRATA_EINPUT,
                                 "%s: %s is %d in the checkpoint but %d in the model", path,
                                 shape_attrs[i], a[i], b[i]);
        }
    for (size_t i = 0; i < N_ARCH; i++) {
        double x = arch_get(file, &arch_fields[i]), y = arch_get(model, &arch_fields[i]);
        if (x != y) {
            *mismatch = 1;
            return strata_errorf(STRATA_EINPUT,
                                 "%s: %s is %g in the checkpoint but %g in the model", path,
                                 arch_fields[i].name, x, y);
        }
    }
    return strata_ok();
}

static void format_dims(char *buf, size_t len, int ndim, const hsize_t *dims)
{
    if (ndim == 1)
        snprintf(buf, len, "(%llu)", (unsigned long long)dims[0]);
    else if (ndim == 2)
        snprintf(buf, len, "(%llu, %llu)", (unsigned long long)dims[0],
                 (unsigned long long)dims[1]);
    else
        snprintf(buf, len, "%d-D", ndim);
}

/* Checks that name exists, is float32, has exactly t's shape and carries
 * Fletcher32, without reading any of its data. *mismatch is set when the
 * problem is the shape (a config error, not damage). */
static strata_err check_dataset(hid_t file, const char *path, const char *name,
                                const strata_tensor *t, int *mismatch)
{
    htri_t exists = H5Lexists(file, name, H5P_DEFAULT);
    if (exists < 0) return h5_fail(STRATA_EINPUT, path, "cannot look up %s", name);
    if (!exists) return strata_errorf(STRATA_EINPUT, "%s: dataset %s is missing", path, name);
    hid_t dset = H5Dopen2(file, name, H5P_DEFAULT);
    if (dset < 0) return h5_fail(STRATA_EINPUT, path, "cannot open %s", name);
    hid_t type = H5Dget_type(dset), space = H5Dget_space(dset), dcpl = H5Dget_create_plist(dset);
    strata_err e = strata_ok();
    hsize_t dims[H5S_MAX_RANK] = {0};
    int ndim = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
    if (type < 0 || space < 0 || dcpl < 0 || ndim < 0 || ndim > H5S_MAX_RANK ||
        H5Sget_simple_extent_dims(space, dims, NULL) < 0) {
        e = h5_fail(STRATA_EINPUT, path, "cannot read the description of %s", name);
    } else if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 4) {
        e = strata_errorf(STRATA_EINPUT, "%s: %s is not float32", path, name);
    } else if (ndim != t->ndim || dims[0] != (hsize_t)t->shape[0] ||
               (ndim == 2 && dims[1] != (hsize_t)t->shape[1])) {
        hsize_t want[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
        char got_s[64], want_s[64];
        format_dims(got_s, sizeof got_s, ndim, dims);
        format_dims(want_s, sizeof want_s, t->ndim, want);
        e = strata_errorf(STRATA_EINPUT, "%s: %s is %s in the checkpoint but %s in the model", path,
                          name, got_s, want_s);
        *mismatch = 1;
    } else {
        unsigned flags;
        size_t nelmts = 0;
        unsigned config;
        H5D_layout_t layout = H5Pget_layout(dcpl);
        herr_t has = layout == H5D_CHUNKED
                         ? H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, &nelmts, NULL,
                                                0, NULL, &config)
                         : -1;
        H5Eclear2(H5E_DEFAULT);
        if (has < 0)
            e = strata_errorf(STRATA_EINPUT, "%s: %s has no Fletcher32 checksum", path, name);
    }
    close_id(dcpl, H5Pclose);
    close_id(space, H5Sclose);
    close_id(type, H5Tclose);
    H5Dclose(dset);
    return e;
}

static strata_err read_dataset(hid_t file, const char *path, const char *name, float *dst)
{
    hid_t dset = H5Dopen2(file, name, H5P_DEFAULT);
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    herr_t rc = dset < 0 || dxpl < 0 ? -1 : H5Pset_edc_check(dxpl, H5Z_ENABLE_EDC);
    if (rc >= 0) rc = H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, dxpl, dst);
    strata_err e = rc < 0 ? h5_fail(STRATA_EINPUT, path, "cannot read %s", name) : strata_ok();
    close_id(dxpl, H5Pclose);
    close_id(dset, H5Dclose);
    return e;
}

static const char *const groups[3] = {"/model", "/optim/m", "/optim/v"};

static strata_err read_state(hid_t file, const char *path, strata_ckpt_state *st)
{
    int64_t v;
    STRATA_TRY(attr_read_i64(file, path, "step", &v));
    st->step = (long)v;
    STRATA_TRY(attr_read_i64(file, path, "tokens_seen", &v));
    st->tokens_seen = (long)v;
    STRATA_TRY(attr_read_int(file, path, "seed", H5T_NATIVE_UINT64, &st->seed));
    STRATA_TRY(attr_read_i64(file, path, "world_size", &v));
    st->world_size = (int)v;
    STRATA_TRY(attr_read_i64(file, path, "adam_t", &v));
    st->adam_t = (long)v;
    STRATA_TRY(attr_read_i64(file, path, "skipped_steps", &v));
    st->skipped_steps = (long)v;
    STRATA_TRY(attr_read_i64(file, path, "bad_in_a_row", &v));
    st->bad_in_a_row = (int)v;
    STRATA_TRY(attr_read_str(file, path, "config", &st->config));
    STRATA_TRY(attr_read_str(file, path, "data_fingerprint", &st->data_fingerprint));
    STRATA_TRY(attr_read_str(file, path, "extra_json", &st->extra_json));
    return strata_ok();
}

/* Everything is checked (format, every dataset's presence, type, shape and
 * checksum filter, the shape attributes) before the first byte of tensor
 * data is read; then the data is read through its checksums. */
static strata_err load_file(hid_t file, const char *path, strata_model *m, float *adam_m,
                            float *adam_v, strata_ckpt_state *st, int *mismatch)
{
    STRATA_TRY(check_format(file, path));
    int n_groups = adam_m ? 3 : 1;
    if (adam_m && H5Lexists(file, "/optim", H5P_DEFAULT) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return strata_errorf(STRATA_EINPUT,
                             "%s: holds no optimizer moments (/optim): a model-only checkpoint; "
                             "HINT: use it as [model] init instead of resuming from it",
                             path);
    }
    char name[128];
    for (int g = 0; g < n_groups; g++)
        for (int i = 0; i < strata_model_n_tensors(m); i++) {
            const strata_tensor *t = strata_model_tensor(m, i);
            snprintf(name, sizeof name, "%s/%s", groups[g], t->name);
            STRATA_TRY(check_dataset(file, path, name, t, mismatch));
        }
    strata_model_shape v;
    STRATA_TRY(read_shape_attrs(file, path, &v));
    strata_model_shape file_shape = v;
    strata_err re = strata_model_resolve_shape(&file_shape);
    if (re.code) return strata_errorf(STRATA_EINPUT, "%s: %s", path, re.msg);
    const strata_model_shape *s = strata_model_get_shape(m);
    STRATA_TRY(compare_shapes(path, &file_shape, s, mismatch));

    strata_ckpt_state tmp = {0};
    strata_err e = read_state(file, path, &tmp);
    uint64_t stored = 0;
    if (!e.code) e = attr_read_int(file, path, "attrs_fnv1a64", H5T_NATIVE_UINT64, &stored);
    if (!e.code && stored != attrs_hash(&v, &tmp))
        e = strata_errorf(STRATA_EINPUT, "%s: the attributes on / fail their checksum (damaged)",
                          path);
    float *bufs[3] = {strata_model_params(m), adam_m, adam_v};
    for (int g = 0; g < n_groups && !e.code; g++)
        for (int i = 0; i < strata_model_n_tensors(m) && !e.code; i++) {
            const strata_tensor *t = strata_model_tensor(m, i);
            snprintf(name, sizeof name, "%s/%s", groups[g], t->name);
            e = read_dataset(file, path, name, bufs[g] + t->offset);
        }
    if (e.code) {
        strata_ckpt_state_free(&tmp);
        return e;
    }
    /* wte's padding rows are not in the file; they are zero by contract. */
    size_t pad = (size_t)(s->padded_vocab - s->vocab_size) * (size_t)s->n_embd;
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        if (t->role != STRATA_ROLE_TOKEN_EMBED && t->role != STRATA_ROLE_LM_HEAD) continue;
        for (int g = 0; g < n_groups; g++)
            memset(bufs[g] + t->offset + t->numel, 0, pad * sizeof(float));
    }
    if (st)
        *st = tmp;
    else
        strata_ckpt_state_free(&tmp);
    return strata_ok();
}

strata_err strata_ckpt_load_checked(const char *path, strata_model *m, float *adam_m, float *adam_v,
                                    strata_ckpt_state *st, int *mismatch)
{
    h5_quiet();
    if (!adam_m != !adam_v)
        return strata_errorf(STRATA_EFAIL, "%s: Adam's m and v must be loaded together", path);
    hid_t file = -1;
    STRATA_TRY(open_ckpt(path, &file));
    strata_err e = load_file(file, path, m, adam_m, adam_v, st, mismatch);
    H5Fclose(file);
    H5Eclear2(H5E_DEFAULT);
    return e;
}

strata_err strata_ckpt_load(const char *path, strata_model *m, float *adam_m, float *adam_v,
                            strata_ckpt_state *st)
{
    int mismatch = 0;
    return strata_ckpt_load_checked(path, m, adam_m, adam_v, st, &mismatch);
}

void strata_ckpt_state_free(strata_ckpt_state *st)
{
    if (!st) return;
    free(st->config);
    free(st->data_fingerprint);
    free(st->extra_json);
    st->config = st->data_fingerprint = st->extra_json = NULL;
}
