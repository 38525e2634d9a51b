/* test_ckpt.c — a checkpoint gives back exactly what was saved, or an error
 * naming the file; a damaged newest checkpoint falls back to the previous one.
 *
 * With STRATA_BENCH_CKPT=DIR set, the program instead saves and loads a
 * gpt2-124M-sized checkpoint in DIR and prints its timings (tests/bench_ckpt.sh). */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <hdf5.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "strata/ckpt.h"
#include "strata/model.h"
#include "strata/rng.h"

static char tmpdir[256];

#ifdef __SANITIZE_ADDRESS__
/* HDF5 1.10.8 leaks the object-header structures it was decoding when a
 * corrupted header fails its checksum (the flipped-bytes test does this on
 * purpose, thousands of times). The leak is inside libhdf5, not ours; HDF5
 * ids this code leaves open are caught by no_hdf5_left_open below instead. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5_serial.so\n"; }
#endif

static const strata_model_shape tiny = {
    .n_layer = 2, .n_head = 2, .n_embd = 32, .block_size = 16, .vocab_size = 67};

/* A model, Adam moments and a state that differ in every float and field. */
typedef struct fixture {
    strata_model *m;
    float *adam_m, *adam_v;
    size_t n;
    strata_ckpt_state st;
} fixture;

static void fixture_make(fixture *f, const strata_model_shape *shape, uint64_t seed)
{
    assert_int_equal(strata_model_create(&f->m, shape).code, 0);
    strata_model_init(f->m, seed);
    f->n = strata_model_n_floats(f->m);
    f->adam_m = calloc(f->n, sizeof(float));
    f->adam_v = calloc(f->n, sizeof(float));
    assert_non_null(f->adam_m);
    assert_non_null(f->adam_v);
    float *p = strata_model_params(f->m);
    const strata_tensor *wte = strata_model_find(f->m, "wte.weight");
    for (size_t i = 0; i < f->n; i++) {
        int padding = i >= wte->offset + wte->numel && i < strata_model_tensor(f->m, 1)->offset;
        if (padding) continue; /* zero by contract */
        /* Biases are zero after init; make every float distinct from zero. */
        p[i] += 1e-3f * strata_rng_normal(strata_rng_u64(seed, 1, i, 0));
        f->adam_m[i] = strata_rng_normal(strata_rng_u64(seed, 2, i, 0));
        f->adam_v[i] = strata_rng_uniform(strata_rng_u64(seed, 3, i, 0)) + 1e-30f;
    }
    f->st = (strata_ckpt_state){.step = (long)seed * 10,
                                .tokens_seen = 123456789012L + (long)seed,
                                .seed = 0xfedcba9876543210ull ^ seed,
                                .world_size = 4,
                                .adam_t = (long)seed * 10 - 3,
                                .skipped_steps = 3,
                                .bad_in_a_row = 1};
    /* A config larger than an object header's 64 KiB attribute limit. */
    size_t len = 100000;
    f->st.config = malloc(len + 1);
    assert_non_null(f->st.config);
    for (size_t i = 0; i < len; i++) f->st.config[i] = (char)(' ' + (i * 7 + seed) % 94);
    f->st.config[len] = 0;
    memcpy(f->st.config, "[model]\nn_layer = 2\n", 20);
    f->st.data_fingerprint = strdup("new=abc123;replay=def456 \"quoted\" \xc3\xa9");
    f->st.extra_json = strdup("{\"baseline\": {\"old\": 3.25}}");
}

static void fixture_free(fixture *f)
{
    strata_model_free(f->m);
    free(f->adam_m);
    free(f->adam_v);
    strata_ckpt_state_free(&f->st);
}

/* The loaded model, moments and state equal the saved ones bit for bit. */
static void assert_same(const fixture *want, strata_model *m, const float *am, const float *av,
                        const strata_ckpt_state *st)
{
    assert_int_equal(strata_model_n_floats(m), want->n);
    assert_memory_equal(strata_model_params(m), strata_model_params(want->m),
                        want->n * sizeof(float));
    if (am) assert_memory_equal(am, want->adam_m, want->n * sizeof(float));
    if (av) assert_memory_equal(av, want->adam_v, want->n * sizeof(float));
    if (!st) return;
    assert_int_equal(st->step, want->st.step);
    assert_int_equal(st->tokens_seen, want->st.tokens_seen);
    assert_true(st->seed == want->st.seed);
    assert_int_equal(st->world_size, want->st.world_size);
    assert_int_equal(st->adam_t, want->st.adam_t);
    assert_int_equal(st->skipped_steps, want->st.skipped_steps);
    assert_int_equal(st->bad_in_a_row, want->st.bad_in_a_row);
    assert_string_equal(st->config, want->st.config);
    assert_string_equal(st->data_fingerprint, want->st.data_fingerprint);
    assert_string_equal(st->extra_json, want->st.extra_json);
}

/* A model of the same shape with different contents, to load into. */
typedef struct target {
    strata_model *m;
    float *am, *av;
} target;

static void target_make(target *t, const strata_model_shape *shape)
{
    assert_int_equal(strata_model_create(&t->m, shape).code, 0);
    strata_model_init(t->m, 999);
    size_t n = strata_model_n_floats(t->m);
    t->am = malloc(n * sizeof(float));
    t->av = malloc(n * sizeof(float));
    assert_non_null(t->am);
    assert_non_null(t->av);
    for (size_t i = 0; i < n; i++) t->am[i] = t->av[i] = -7.0f; /* padding too */
}

static void target_free(target *t)
{
    strata_model_free(t->m);
    free(t->am);
    free(t->av);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/strata-test-ckpt-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    if (getenv("STRATA_KEEP_TMP")) return 0; /* to look at the files after a failure */
    return nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* After every test: the checkpoint code left no HDF5 file or object open. */
static int no_hdf5_left_open(void **state)
{
    (void)state;
    ssize_t n = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (n != 0) fail_msg("%zd HDF5 objects left open", n);
    return 0;
}
#define TEST(f) cmocka_unit_test_teardown(f, no_hdf5_left_open)

static const char *in_tmp(const char *name)
{
    static char path[4][512];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void write_all(const char *path, const unsigned char *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ---- round trips --------------------------------------------------------- */

static void saved_checkpoint_loads_back_bitwise(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, &tiny, 7);
    char saved[512];
    assert_int_equal(
        strata_ckpt_save(in_tmp("rt"), f.m, f.adam_m, f.adam_v, &f.st, 0, 0, saved, sizeof saved)
            .code,
        0);
    assert_string_equal(saved, in_tmp("rt/ckpt-70.h5"));

    target t;
    target_make(&t, &tiny);
    strata_ckpt_state st = {0};
    strata_err e = strata_ckpt_load(saved, t.m, t.am, t.av, &st);
    assert_int_equal(e.code, 0);
    /* The padding rows of wte in m and v came back as zero, like the saved ones. */
    assert_same(&f, t.m, t.am, t.av, &st);
    strata_ckpt_state_free(&st);

    strata_model_shape shape;
    assert_int_equal(strata_ckpt_read_shape(saved, &shape).code, 0);
    assert_int_equal(shape.n_layer, 2);
    assert_int_equal(shape.n_head, 2);
    assert_int_equal(shape.n_embd, 32);
    assert_int_equal(shape.block_size, 16);
    assert_int_equal(shape.vocab_size, 67);
    assert_int_equal(shape.padded_vocab, 128);

    /* The file is what DESIGN.md promises to h5py users: wte without padding
     * rows, Fletcher32 on every dataset, the format attribute. */
    hid_t file = H5Fopen(saved, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(file >= 0);
    const char *names[] = {"/model/wte.weight", "/optim/m/h.1.mlp.c_fc.weight",
                           "/optim/v/ln_f.bias"};
    const hsize_t rows[] = {67, 128, 32};
    for (int i = 0; i < 3; i++) {
        hid_t d = H5Dopen2(file, names[i], H5P_DEFAULT);
        assert_true(d >= 0);
        hid_t sp = H5Dget_space(d);
        hsize_t dims[2];
        H5Sget_simple_extent_dims(sp, dims, NULL);
        assert_true(dims[0] == rows[i]);
        hid_t dcpl = H5Dget_create_plist(d);
        unsigned flags, cfg;
        size_t nel = 0;
        assert_true(H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, &nel, NULL, 0, NULL,
                                         &cfg) >= 0);
        H5Pclose(dcpl);
        H5Sclose(sp);
        H5Dclose(d);
    }
    H5Fclose(file);
    target_free(&t);
    fixture_free(&f);
}

/* strata writes chunks with its own Fletcher32 and HDF5 verifies them with
 * its own on load: they must agree on the edge cases of the end-around
 * carry (all-zero words, and sums that are multiples of 65535). */
static void checksums_agree_with_hdf5_on_edge_case_data(void **state)
{
    (void)state;
    const uint32_t patterns[] = {0x00000000u, 0xffffffffu, 0x0000ffffu, 0xffff0000u,
                                 0x00010000u, 0x7fc00000u, 0x80000000u, 0x00000001u};
    strata_model *m, *back;
    assert_int_equal(strata_model_create(&m, &tiny).code, 0);
    assert_int_equal(strata_model_create(&back, &tiny).code, 0);
    size_t n = strata_model_n_floats(m);
    const strata_tensor *wte = strata_model_find(m, "wte.weight");
    for (size_t k = 0; k < sizeof patterns / sizeof patterns[0]; k++) {
        uint32_t *p = (uint32_t *)strata_model_params(m);
        for (size_t i = 0; i < n; i++) p[i] = patterns[k];
        /* A mix too: runs of each pattern of different lengths. */
        if (k == 7)
            for (size_t i = 0; i < n; i++) p[i] = patterns[(i / (1 + i % 13)) % 7];
        memset(p + wte->offset + wte->numel, 0,
               (strata_model_tensor(m, 1)->offset - wte->offset - wte->numel) * 4);
        const char *path = in_tmp("pattern.h5");
        assert_int_equal(strata_ckpt_write(path, m, NULL, NULL, NULL).code, 0);
        memset(strata_model_params(back), 0x55, n * sizeof(float));
        strata_err e = strata_ckpt_load(path, back, NULL, NULL, NULL);
        if (e.code) fail_msg("pattern %08x: %s", patterns[k], e.msg);
        assert_memory_equal(strata_model_params(back), p, n * sizeof(float));
    }
    strata_model_free(m);
    strata_model_free(back);
}

static void model_only_checkpoint_loads_the_model_and_refuses_moments(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, &tiny, 3);
    const char *path = in_tmp("model-only.h5");
    assert_int_equal(strata_ckpt_write(path, f.m, NULL, NULL, NULL).code, 0);
    target t;
    target_make(&t, &tiny);
    strata_ckpt_state st = {0};
    assert_int_equal(strata_ckpt_load(path, t.m, NULL, NULL, &st).code, 0);
    assert_memory_equal(strata_model_params(t.m), strata_model_params(f.m), f.n * sizeof(float));
    assert_int_equal(st.step, 0);
    assert_string_equal(st.config, "");
    strata_ckpt_state_free(&st);

    strata_err e = strata_ckpt_load(path, t.m, t.am, t.av, NULL);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, path));
    assert_non_null(strstr(e.msg, "/optim"));
    target_free(&t);
    fixture_free(&f);
}

/* ---- damage -------------------------------------------------------------- */

static void truncated_checkpoint_is_refused_naming_it(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, &tiny, 2);
    const char *path = in_tmp("whole.h5"), *cut = in_tmp("cut.h5");
    assert_int_equal(strata_ckpt_write(path, f.m, f.adam_m, f.adam_v, &f.st).code, 0);
    size_t len;
    unsigned char *bytes = read_all(path, &len);
    target t;
    target_make(&t, &tiny);
    const size_t lengths[] = {0,    1,       7,       8,          100,       512,
                              2048, len / 3, len / 2, len - 4096, len - 100, len - 1};
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        write_all(cut, bytes, lengths[i]);
        strata_ckpt_state st = {0};
        strata_err e = strata_ckpt_load(cut, t.m, t.am, t.av, &st);
        if (e.code != STRATA_EINPUT) fail_msg("cut at %zu of %zu loaded", lengths[i], len);
        assert_non_null(strstr(e.msg, cut));
        assert_null(st.config);
        strata_model_shape shape;
        assert_int_equal(strata_ckpt_read_shape(cut, &shape).code, STRATA_EINPUT);
    }
    free(bytes);
    target_free(&t);
    fixture_free(&f);
}

/* Where the first 64 bytes of a tensor's data lie in the file. */
static size_t find_payload(const unsigned char *bytes, size_t len, const float *data)
{
    const void *hit = memmem(bytes, len, data, 64);
    assert_non_null(hit);
    return (size_t)((const unsigned char *)hit - bytes);
}

/* Marks in payload[] the bytes of every chunk of every dataset in path. */
static void mark_payload(const char *path, const strata_model *m, unsigned char *payload,
                         size_t len, size_t *n_chunks)
{
    static const char *const groups[3] = {"/model", "/optim/m", "/optim/v"};
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(file >= 0);
    *n_chunks = 0;
    for (int g = 0; g < 3; g++)
        for (int i = 0; i < strata_model_n_tensors(m); i++) {
            char name[128];
            snprintf(name, sizeof name, "%s/%s", groups[g], strata_model_tensor(m, i)->name);
            hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
            assert_true(d >= 0);
            hid_t sp = H5Dget_space(d);
            hsize_t n = 0;
            assert_true(H5Dget_num_chunks(d, sp, &n) >= 0);
            for (hsize_t c = 0; c < n; c++) {
                haddr_t addr;
                hsize_t size;
                unsigned mask;
                assert_true(H5Dget_chunk_info(d, sp, c, NULL, &mask, &addr, &size) >= 0);
                assert_true(addr + size <= len);
                memset(payload + addr, 1, size);
                (*n_chunks)++;
            }
            H5Sclose(sp);
            H5Dclose(d);
        }
    H5Fclose(file);
}

/* A flipped byte is an error naming the file or, where it lies in bytes
 * that no reader looks at, a load of exactly the right values: never a
 * crash, never a wrong tensor. A flip in tensor data always fails its
 * Fletcher32 checksum. */
static void flipped_bytes_are_detected_never_silently_wrong(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, &tiny, 5);
    const char *path = in_tmp("good.h5"), *bad = in_tmp("flipped.h5");
    assert_int_equal(strata_ckpt_write(path, f.m, f.adam_m, f.adam_v, &f.st).code, 0);
    size_t len, n_chunks;
    unsigned char *bytes = read_all(path, &len);
    unsigned char *payload = calloc(len, 1);
    assert_non_null(payload);
    mark_payload(path, f.m, payload, len, &n_chunks);

    /* Offsets: every byte of the first 1.5 KiB (superblock, the root's
     * object header and its attributes), every 97th other byte of metadata
     * (object headers, the heap holding the long config), and in every
     * chunk of data its first, a middle and its last byte. */
    size_t n_off = 0, *off = malloc((len / 97 + 1536 + 3 * n_chunks) * sizeof *off);
    assert_non_null(off);
    for (size_t i = 0; i < len; i++) {
        if (payload[i]) {
            if (!payload[i - 1] || i + 1 == len || !payload[i + 1] ||
                (payload[i - 1] && i % 4099 == 0))
                off[n_off++] = i;
        } else if (i < 1536 || i % 97 == 0) {
            off[n_off++] = i;
        }
    }

    target t;
    target_make(&t, &tiny);
    int detected = 0, harmless = 0;
    write_all(bad, bytes, len);
    int fd = open(bad, O_RDWR);
    assert_true(fd >= 0);
    for (size_t i = 0; i < n_off; i++) {
        /* Flip one bit in place, load, put it back. */
        unsigned char b = bytes[off[i]] ^ (unsigned char)(1u << (i % 8));
        assert_int_equal(pwrite(fd, &b, 1, (off_t)off[i]), 1);
        strata_ckpt_state st = {0};
        strata_err e = strata_ckpt_load(bad, t.m, t.am, t.av, &st);
        assert_int_equal(pwrite(fd, &bytes[off[i]], 1, (off_t)off[i]), 1);
        if (e.code) {
            assert_int_equal(e.code, STRATA_EINPUT);
            assert_non_null(strstr(e.msg, bad));
            detected++;
            continue;
        }
        if (payload[off[i]]) fail_msg("a flip at payload offset %zu loaded", off[i]);
        assert_same(&f, t.m, t.am, t.av, &st);
        strata_ckpt_state_free(&st);
        harmless++;
    }
    /* Most of the first KiB is checksummed metadata. */
    assert_true(detected > 1000);
    print_message("%d flips detected, %d harmless (in unused bytes) of a %zu-byte file\n", detected,
                  harmless, len);
    close(fd);
    free(off);
    free(payload);
    free(bytes);
    target_free(&t);
    fixture_free(&f);
}

static void file_that_is_not_a_checkpoint_is_refused(void **state)
{
    (void)state;
    target t;
    target_make(&t, &tiny);
    const char *junk = in_tmp("junk.h5");
    write_all(junk, (const unsigned char *)"hello, I am not HDF5\n", 21);
    strata_err e = strata_ckpt_load(junk, t.m, NULL, NULL, NULL);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, junk));

    e = strata_ckpt_load(in_tmp("no-such-file.h5"), t.m, NULL, NULL, NULL);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "no-such-file.h5"));

    /* An HDF5 file of another kind: a token shard, say. */
    const char *other = in_tmp("other.h5");
    hid_t file = H5Fcreate(other, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 15);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, "format", type, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, type, "strata-tokens-1");
    H5Aclose(a), H5Sclose(sp), H5Tclose(type), H5Fclose(file);
    e = strata_ckpt_load(other, t.m, NULL, NULL, NULL);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, other));
    assert_non_null(strstr(e.msg, "strata-tokens-1"));
    target_free(&t);
}

static void missing_dataset_is_refused_naming_it(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, &tiny, 4);
    const char *path = in_tmp("missing.h5");
    assert_int_equal(strata_ckpt_write(path, f.m, f.adam_m, f.adam_v, &f.st).code, 0);
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    assert_true(file >= 0);
    assert_true(H5Ldelete(file, "/optim/v/h.1.ln_2.bias", H5P_DEFAULT) >= 0);
    H5Fclose(file);
    target t;
    target_make(&t, &tiny);
    strata_err e = strata_ckpt_load(path, t.m, t.am, t.av, NULL);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, path));
    assert_non_null(strstr(e.msg, "/optim/v/h.1.ln_2.bias"));
    /* Without moments, the model alone still loads. */
    assert_int_equal(strata_ckpt_load(path, t.m, NULL, NULL, NULL).code, 0);
    assert_memory_equal(strata_model_params(t.m), strata_model_params(f.m), f.n * sizeof(float));
    target_free(&t);
    fixture_free(&f);
}

static void shape_mismatch_is_refused_naming_the_tensor(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, &tiny, 6);
    const char *dir = in_tmp("shape");
    assert_int_equal(strata_ckpt_save(dir, f.m, f.adam_m, f.adam_v, &f.st, 0, 0, NULL, 0).code, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/ckpt-60.h5", dir);

    strata_model_shape wider = tiny;
    wider.n_embd = 64;
    target t;
    target_make(&t, &wider);
    strata_err e = strata_ckpt_load(path, t.m, t.am, t.av, NULL);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, path));
    assert_non_null(strstr(e.msg, "/model/wte.weight is (67, 32)"));
    assert_non_null(strstr(e.msg, "(67, 64)"));
    target_free(&t);

    /* n_head changes no tensor's shape; the attribute catches it. */
    strata_model_shape heads = tiny;
    heads.n_head = 4;
    target_make(&t, &heads);
    e = strata_ckpt_load(path, t.m, t.am, t.av, NULL);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "n_head is 2 in the checkpoint but 4"));

    /* load_latest does not fall back to older checkpoints on a mismatch:
     * they would not fit either, and the config is what is wrong. */
    int warnings = 0;
    char found[512];
    e = strata_ckpt_load_latest(dir, t.m, t.am, t.av, NULL, found, sizeof found, NULL, &warnings);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "n_head"));
    target_free(&t);
    fixture_free(&f);
}

/* ---- the directory ------------------------------------------------------- */

static void count_warning(void *ctx, const char *msg)
{
    int *n = ctx;
    (*n)++;
    print_message("warning: %s\n", msg);
}

typedef struct warnings {
    int n;
    char last[1200];
} warnings;

static void keep_warning(void *ctx, const char *msg)
{
    warnings *w = ctx;
    w->n++;
    snprintf(w->last, sizeof w->last, "%s", msg);
}

static void load_latest_skips_a_damaged_newest_checkpoint_for_the_previous(void **state)
{
    (void)state;
    const char *dir = in_tmp("fallback");
    fixture old, new;
    fixture_make(&old, &tiny, 1); /* step 10 */
    fixture_make(&new, &tiny, 2); /* step 20 */
    assert_int_equal(
        strata_ckpt_save(dir, old.m, old.adam_m, old.adam_v, &old.st, 0, 0, NULL, 0).code, 0);
    assert_int_equal(
        strata_ckpt_save(dir, new.m, new.adam_m, new.adam_v, &new.st, 0, 0, NULL, 0).code, 0);

    target t;
    target_make(&t, &tiny);
    char found[512];
    strata_ckpt_state st = {0};
    warnings w = {0};
    assert_int_equal(
        strata_ckpt_load_latest(dir, t.m, t.am, t.av, &st, found, sizeof found, keep_warning, &w)
            .code,
        0);
    assert_int_equal(w.n, 0);
    assert_non_null(strstr(found, "ckpt-20.h5"));
    assert_same(&new, t.m, t.am, t.av, &st);
    strata_ckpt_state_free(&st);

    /* One flipped bit in the newest's moments: reported, and step 10 used. */
    char newest[512];
    snprintf(newest, sizeof newest, "%s/ckpt-20.h5", dir);
    size_t len;
    unsigned char *bytes = read_all(newest, &len);
    const strata_tensor *qkv = strata_model_find(new.m, "h.1.attn.c_attn.weight");
    bytes[find_payload(bytes, len, new.adam_v + qkv->offset) + 101] ^= 0x10;
    write_all(newest, bytes, len);
    free(bytes);
    assert_int_equal(
        strata_ckpt_load_latest(dir, t.m, t.am, t.av, &st, found, sizeof found, keep_warning, &w)
            .code,
        0);
    assert_int_equal(w.n, 1);
    assert_non_null(strstr(w.last, newest));
    assert_non_null(strstr(w.last, "/optim/v/h.1.attn.c_attn.weight"));
    assert_non_null(strstr(found, "ckpt-10.h5"));
    assert_same(&old, t.m, t.am, t.av, &st);
    strata_ckpt_state_free(&st);

    /* Truncated instead: the same. */
    assert_int_equal(truncate(newest, 5000), 0);
    w.n = 0;
    assert_int_equal(
        strata_ckpt_load_latest(dir, t.m, t.am, t.av, &st, found, sizeof found, keep_warning, &w)
            .code,
        0);
    assert_int_equal(w.n, 1);
    assert_non_null(strstr(w.last, newest));
    assert_non_null(strstr(found, "ckpt-10.h5"));
    assert_same(&old, t.m, t.am, t.av, &st);
    strata_ckpt_state_free(&st);

    /* Nothing good left: an error naming the directory, never a half load. */
    char oldest[512];
    snprintf(oldest, sizeof oldest, "%s/ckpt-10.h5", dir);
    assert_int_equal(truncate(oldest, 100), 0);
    w.n = 0;
    strata_err e =
        strata_ckpt_load_latest(dir, t.m, t.am, t.av, &st, found, sizeof found, keep_warning, &w);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_int_equal(w.n, 2);
    assert_non_null(strstr(e.msg, dir));
    assert_null(st.config);
    target_free(&t);
    fixture_free(&old);
    fixture_free(&new);
}

static void load_latest_of_an_empty_or_missing_directory_finds_nothing(void **state)
{
    (void)state;
    target t;
    target_make(&t, &tiny);
    char found[512] = "x";
    int n = 0;
    const char *dir = in_tmp("empty");
    mkdir(dir, 0777);
    assert_int_equal(
        strata_ckpt_load_latest(dir, t.m, NULL, NULL, NULL, found, sizeof found, count_warning, &n)
            .code,
        0);
    assert_string_equal(found, "");
    strcpy(found, "x");
    assert_int_equal(strata_ckpt_load_latest(in_tmp("never-made"), t.m, NULL, NULL, NULL, found,
                                             sizeof found, count_warning, &n)
                         .code,
                     0);
    assert_string_equal(found, "");
    assert_int_equal(n, 0);
    target_free(&t);
}

static void latest_names_the_newest_save_and_is_followed_first(void **state)
{
    (void)state;
    const char *dir = in_tmp("latest");
    fixture a, b;
    fixture_make(&a, &tiny, 3); /* step 30 */
    fixture_make(&b, &tiny, 4); /* step 40 */
    assert_int_equal(strata_ckpt_save(dir, b.m, b.adam_m, b.adam_v, &b.st, 0, 0, NULL, 0).code, 0);
    assert_int_equal(strata_ckpt_save(dir, a.m, a.adam_m, a.adam_v, &a.st, 0, 0, NULL, 0).code, 0);
    char latest[512];
    snprintf(latest, sizeof latest, "%s/latest", dir);
    size_t len;
    char *text = (char *)read_all(latest, &len);
    text[len] = 0;
    assert_string_equal(text, "ckpt-30.h5\n");
    free(text);

    target t;
    target_make(&t, &tiny);
    char found[512];
    int n = 0;
    assert_int_equal(
        strata_ckpt_load_latest(dir, t.m, t.am, t.av, NULL, found, sizeof found, count_warning, &n)
            .code,
        0);
    assert_non_null(strstr(found, "ckpt-30.h5"));
    assert_same(&a, t.m, t.am, t.av, NULL);

    /* latest naming a file that is gone: a warning, then the newest. */
    char gone[512];
    snprintf(gone, sizeof gone, "%s/ckpt-30.h5", dir);
    assert_int_equal(unlink(gone), 0);
    warnings w = {0};
    assert_int_equal(
        strata_ckpt_load_latest(dir, t.m, t.am, t.av, NULL, found, sizeof found, keep_warning, &w)
            .code,
        0);
    assert_int_equal(w.n, 1);
    assert_non_null(strstr(w.last, "ckpt-30.h5"));
    assert_non_null(strstr(found, "ckpt-40.h5"));
    assert_same(&b, t.m, t.am, t.av, NULL);
    target_free(&t);
    fixture_free(&a);
    fixture_free(&b);
}

static void keep_prunes_old_checkpoints_and_keep_every_spares_milestones(void **state)
{
    (void)state;
    const char *dir = in_tmp("prune");
    fixture f;
    fixture_make(&f, &tiny, 1);
    for (long step = 10; step <= 120; step += 10) {
        f.st.step = step;
        assert_int_equal(strata_ckpt_save(dir, f.m, f.adam_m, f.adam_v, &f.st, 2, 50, NULL, 0).code,
                         0);
    }
    for (long step = 10; step <= 120; step += 10) {
        char path[512];
        snprintf(path, sizeof path, "%s/ckpt-%ld.h5", dir, step);
        int kept = step == 120 || step == 110 || step == 50 || step == 100;
        if (file_exists(path) != kept)
            fail_msg("ckpt-%ld.h5 %s", step, kept ? "was deleted" : "was kept");
    }
    /* keep <= 0 keeps everything. */
    const char *all = in_tmp("keep-all");
    for (long step = 1; step <= 4; step++) {
        f.st.step = step;
        assert_int_equal(strata_ckpt_save(all, f.m, NULL, NULL, &f.st, 0, 0, NULL, 0).code, 0);
    }
    for (long step = 1; step <= 4; step++) {
        char path[512];
        snprintf(path, sizeof path, "%s/ckpt-%ld.h5", all, step);
        assert_true(file_exists(path));
    }
    /* keep = 1 keeps only the newest. */
    f.st.step = 5;
    assert_int_equal(strata_ckpt_save(all, f.m, NULL, NULL, &f.st, 1, 0, NULL, 0).code, 0);
    for (long step = 1; step <= 5; step++) {
        char path[512];
        snprintf(path, sizeof path, "%s/ckpt-%ld.h5", all, step);
        assert_int_equal(file_exists(path), step == 5);
    }
    fixture_free(&f);
}

static void leftover_temporary_file_is_ignored_and_cleaned_up(void **state)
{
    (void)state;
    const char *dir = in_tmp("leftover");
    fixture f;
    fixture_make(&f, &tiny, 2);
    assert_int_equal(strata_ckpt_save(dir, f.m, f.adam_m, f.adam_v, &f.st, 0, 0, NULL, 0).code, 0);
    /* What a save killed half-way leaves: a partial file under a temporary
     * name (its process, pid INT_MAX, cannot exist), and a stray file that
     * merely looks like a checkpoint name. */
    char stale[512], stray[512];
    snprintf(stale, sizeof stale, "%s/.ckpt-30.h5.tmp-%d", dir, INT_MAX);
    snprintf(stray, sizeof stray, "%s/ckpt-40.h5.part", dir);
    write_all(stale, (const unsigned char *)"\x89HDF\r\n\x1a\n partial", 17);
    write_all(stray, (const unsigned char *)"junk", 4);

    target t;
    target_make(&t, &tiny);
    char found[512];
    int n = 0;
    assert_int_equal(
        strata_ckpt_load_latest(dir, t.m, t.am, t.av, NULL, found, sizeof found, count_warning, &n)
            .code,
        0);
    assert_int_equal(n, 0);
    assert_non_null(strstr(found, "ckpt-20.h5"));
    assert_same(&f, t.m, t.am, t.av, NULL);

    f.st.step = 21;
    assert_int_equal(strata_ckpt_save(dir, f.m, f.adam_m, f.adam_v, &f.st, 0, 0, NULL, 0).code, 0);
    assert_false(file_exists(stale));
    assert_true(file_exists(stray)); /* not ours to delete */
    target_free(&t);
    fixture_free(&f);
}

static void write_into_a_missing_directory_fails_and_leaves_nothing(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, &tiny, 1);
    strata_err e = strata_ckpt_write(in_tmp("no/such/dir/c.h5"), f.m, NULL, NULL, NULL);
    assert_int_equal(e.code, STRATA_EFAIL);
    assert_non_null(strstr(e.msg, "no/such/dir"));
    fixture_free(&f);
}

/* A full disk (a 700 KB tmpfs: room for one checkpoint, not two): the save
 * fails with a message naming the file and the reason; the previous
 * checkpoint and `latest` are untouched, no partial file is left, and HDF5
 * holds nothing open. Needs permission to mount (root in a container);
 * skipped otherwise. */
static void save_on_a_full_disk_fails_and_leaves_the_previous_checkpoint(void **state)
{
    (void)state;
    const char *dir = in_tmp("full");
    assert_int_equal(mkdir(dir, 0777), 0);
    if (mount("tmpfs", dir, "tmpfs", 0, "size=700k") != 0) {
        print_message("cannot mount a tmpfs here (%s): skipped\n", strerror(errno));
        skip();
    }
    fixture f;
    fixture_make(&f, &tiny, 1);
    strata_err first = strata_ckpt_save(dir, f.m, f.adam_m, f.adam_v, &f.st, 0, 0, NULL, 0);
    f.st.step = 20;
    strata_err second = strata_ckpt_save(dir, f.m, f.adam_m, f.adam_v, &f.st, 0, 0, NULL, 0);
    f.st.step = 10;

    target t;
    target_make(&t, &tiny);
    char found[512];
    int n = 0;
    strata_err loaded =
        strata_ckpt_load_latest(dir, t.m, t.am, t.av, NULL, found, sizeof found, count_warning, &n);
    int entries = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *ent; (ent = readdir(d));)
        entries += strcmp(ent->d_name, ".") && strcmp(ent->d_name, "..");
    closedir(d);
    assert_int_equal(umount2(dir, MNT_DETACH), 0);

    assert_int_equal(first.code, 0);
    assert_int_equal(second.code, STRATA_EFAIL);
    assert_non_null(strstr(second.msg, "ckpt-20.h5"));
    assert_non_null(strstr(second.msg, "No space left on device"));
    assert_int_equal(loaded.code, 0);
    assert_int_equal(n, 0);
    assert_non_null(strstr(found, "ckpt-10.h5"));
    assert_same(&f, t.m, t.am, t.av, NULL);
    assert_int_equal(entries, 2); /* ckpt-10.h5 and latest */
    target_free(&t);
    fixture_free(&f);
}

/* ---- benchmark mode ------------------------------------------------------ */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Saves and loads a gpt2-124M checkpoint (model + m + v) in dir and prints
 * "bytes save_seconds load_seconds" per round. */
static int bench(const char *dir, int rounds)
{
    const strata_model_shape gpt2 = {
        .n_layer = 12, .n_head = 12, .n_embd = 768, .block_size = 1024, .vocab_size = 50257};
    strata_model *m;
    strata_err e = strata_model_create(&m, &gpt2);
    if (e.code) return fprintf(stderr, "%s\n", e.msg), 1;
    strata_model_init(m, 1);
    size_t n = strata_model_n_floats(m);
    float *am = malloc(n * sizeof(float)), *av = malloc(n * sizeof(float));
    if (!am || !av) return fprintf(stderr, "out of memory\n"), 1;
    for (size_t i = 0; i < n; i++) {
        am[i] = 1e-3f * strata_rng_normal(strata_rng_u64(2, 0, i, 0));
        av[i] = 1e-6f * strata_rng_uniform(strata_rng_u64(3, 0, i, 0));
    }
    strata_ckpt_state st = {
        .step = 1, .config = "[model]\n", .data_fingerprint = "", .extra_json = "{}"};
    for (int r = 0; r < rounds; r++) {
        char saved[4096];
        st.step = r + 1;
        double t0 = now();
        e = strata_ckpt_save(dir, m, am, av, &st, 1, 0, saved, sizeof saved);
        double t1 = now();
        if (e.code) return fprintf(stderr, "%s\n", e.msg), 1;
        e = strata_ckpt_load(saved, m, am, av, NULL);
        double t2 = now();
        if (e.code) return fprintf(stderr, "%s\n", e.msg), 1;
        struct stat sb;
        stat(saved, &sb);
        printf("%lld %.3f %.3f\n", (long long)sb.st_size, t1 - t0, t2 - t1);
        fflush(stdout);
    }
    strata_model_free(m);
    free(am);
    free(av);
    return 0;
}

int main(void)
{
    const char *bench_dir = getenv("STRATA_BENCH_CKPT");
    if (bench_dir) {
        const char *r = getenv("STRATA_BENCH_ROUNDS");
        return bench(bench_dir, r ? atoi(r) : 1);
    }
    const struct CMUnitTest tests[] = {
        TEST(saved_checkpoint_loads_back_bitwise),
        TEST(checksums_agree_with_hdf5_on_edge_case_data),
        TEST(model_only_checkpoint_loads_the_model_and_refuses_moments),
        TEST(truncated_checkpoint_is_refused_naming_it),
        TEST(flipped_bytes_are_detected_never_silently_wrong),
        TEST(file_that_is_not_a_checkpoint_is_refused),
        TEST(missing_dataset_is_refused_naming_it),
        TEST(shape_mismatch_is_refused_naming_the_tensor),
        TEST(load_latest_skips_a_damaged_newest_checkpoint_for_the_previous),
        TEST(load_latest_of_an_empty_or_missing_directory_finds_nothing),
        TEST(latest_names_the_newest_save_and_is_followed_first),
        TEST(keep_prunes_old_checkpoints_and_keep_every_spares_milestones),
        TEST(leftover_temporary_file_is_ignored_and_cleaned_up),
        TEST(write_into_a_missing_directory_fails_and_leaves_nothing),
        TEST(save_on_a_full_disk_fails_and_leaves_the_previous_checkpoint),
    };
    /* STRATA_TEST_FILTER=pattern runs only the matching tests. */
    if (getenv("STRATA_TEST_FILTER")) cmocka_set_test_filter(getenv("STRATA_TEST_FILTER"));
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
