/* test_safetensors.c — safetensors files are checked whole before a byte of
 * payload is trusted, read into fp32 exactly (BF16, F16 with subnormals,
 * infinities and NaN), written in F32 or BF16 with round-to-nearest-even,
 * and sharded checkpoints are held to their index. A fuzz test damages a
 * valid file thousands of ways: every outcome is an error or a clean load. */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata/safetensors.h"

static char tmpdir[256];

/* splitmix64: a seeded stream of test inputs. */
typedef struct test_rng {
    uint64_t s;
} test_rng;
static void test_rng_seed(test_rng *r, uint64_t seed) { r->s = seed; }
static uint64_t test_rng_next(test_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/strata-test-safetensors-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *in_tmp(const char *name)
{
    static char path[4][512];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static void write_all(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
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

/* A file from a header text and a data section. */
static void write_st(const char *path, const char *header, const void *data, size_t data_len)
{
    size_t n = strlen(header);
    unsigned char *buf = malloc(8 + n + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    if (data_len) memcpy(buf + 8 + n, data, data_len);
    write_all(path, buf, 8 + n + data_len);
    free(buf);
}

static void assert_refused(strata_err e, const char *path, const char *want)
{
    if (e.code != STRATA_EINPUT)
        fail_msg("accepted (code %d), expected: %s", e.code, want ? want : "a refusal");
    if (!strstr(e.msg, path)) fail_msg("message does not name %s: %s", path, e.msg);
    if (want && !strstr(e.msg, want)) fail_msg("message lacks '%s': %s", want, e.msg);
    if (strchr(e.msg, '\n')) fail_msg("message is not one line: %s", e.msg);
}

static uint32_t bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* ---- numbers ------------------------------------------------------------------ */

static void f16_values_convert_exactly_including_subnormals_inf_and_nan(void **state)
{
    (void)state;
    const struct {
        uint16_t h;
        float want;
    } known[] = {
        {0x3c00, 1.0f},     {0xc000, -2.0f},    {0x3555, 0.333251953125f}, {0x7bff, 65504.0f},
        {0x0400, 0x1p-14f}, {0x0001, 0x1p-24f}, {0x03ff, 1023 * 0x1p-24f}, {0x8001, -0x1p-24f},
        {0x0000, 0.0f},     {0x7c00, INFINITY}, {0xfc00, -INFINITY},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (bits(strata_f16_to_f32(known[i].h)) != bits(known[i].want))
            fail_msg("f16 0x%04x -> %a, expected %a", known[i].h, strata_f16_to_f32(known[i].h),
                     known[i].want);
    assert_int_equal(bits(strata_f16_to_f32(0x8000)), 0x80000000u); /* -0 keeps its sign */
    assert_true(isnan(strata_f16_to_f32(0x7e00)));
    assert_true(isnan(strata_f16_to_f32(0xfc01)));
    /* Every half against the definition. */
    for (uint32_t h = 0; h < 65536; h++) {
        int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
        float got = strata_f16_to_f32((uint16_t)h);
        if (exp == 31) {
            assert_true(man ? isnan(got) : isinf(got));
            continue;
        }
        double v = exp ? ldexp(1.0 + man / 1024.0, exp - 15) : ldexp(man, -24);
        if (sign) v = -v;
        if ((double)got != v) fail_msg("f16 0x%04x -> %a, expected %a", h, got, v);
    }
}

static void bf16_reads_the_upper_half_and_rounds_to_nearest_even(void **state)
{
    (void)state;
    assert_int_equal(bits(strata_bf16_to_f32(0x3f80)), 0x3f800000u);
    assert_int_equal(bits(strata_bf16_to_f32(0xc049)), 0xc0490000u);
    const struct {
        uint32_t in;
        uint16_t want;
    } cases[] = {
        {0x3f800000u, 0x3f80},                        /* exact */
        {0x3f808000u, 0x3f80},                        /* a tie goes to the even neighbour, down */
        {0x3f818000u, 0x3f82},                        /* a tie goes to the even neighbour, up */
        {0x3f808001u, 0x3f81},                        /* above the tie */
        {0x3f807fffu, 0x3f80},                        /* below the tie */
        {0xbf808001u, 0xbf81},                        /* the sign does not matter */
        {0x7f7fffffu, 0x7f80},                        /* FLT_MAX rounds to infinity */
        {0x7f800000u, 0x7f80},                        /* infinity stays */
        {0xff800000u, 0xff80}, {0x00000001u, 0x0000}, /* the smallest subnormal rounds to zero */
        {0x80000000u, 0x8000},                        /* -0 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (strata_f32_to_bf16(from_bits(cases[i].in)) != cases[i].want)
            fail_msg("0x%08x -> 0x%04x, expected 0x%04x", cases[i].in,
                     strata_f32_to_bf16(from_bits(cases[i].in)), cases[i].want);
    /* NaN stays NaN, even when its payload is all in the low half. */
    const uint32_t nans[] = {0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7fffffffu};
    for (int i = 0; i < 4; i++) {
        uint16_t h = strata_f32_to_bf16(from_bits(nans[i]));
        assert_true(isnan(strata_bf16_to_f32(h)));
        assert_int_equal(h >> 15, nans[i] >> 31);
    }
    /* A million random finite floats against the definition: the nearer of
     * the two neighbours, the even one on a tie. */
    test_rng rng;
    test_rng_seed(&rng, 20240611);
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)test_rng_next(&rng);
        if ((u & 0x7f800000u) == 0x7f800000u) continue;
        float x = from_bits(u);
        uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
        double dlo = fabs((double)x - (double)from_bits(lo));
        double dhi = fabs((double)from_bits(hi) - (double)x);
        if ((hi & 0x7f800000u) == 0x7f800000u) /* the upper neighbour is infinity */
            dhi = fabs(ldexp(1.0, 128) * (x < 0 ? -1 : 1) - (double)x);
        uint16_t want =
            (uint16_t)((dlo < dhi || (dlo == dhi && !((lo >> 16) & 1))) ? lo >> 16 : hi >> 16);
        if (strata_f32_to_bf16(x) != want)
            fail_msg("0x%08x -> 0x%04x, expected 0x%04x", u, strata_f32_to_bf16(x), want);
    }
}

/* ---- reading -------------------------------------------------------------------- */

static void valid_file_reads_every_dtype_into_fp32(void **state)
{
    (void)state;
    unsigned char data[8 + 4 + 8];
    float f32[2] = {1.5f, -2.0f};
    uint16_t bf[2] = {0x3f80, 0xc049}, h[4] = {0x3c00, 0x0001, 0x7c00, 0xfe00};
    memcpy(data, f32, 8);
    memcpy(data + 8, bf, 4);
    memcpy(data + 12, h, 8);
    const char *path = in_tmp("valid.safetensors");
    write_st(path,
             "{\"__metadata__\":{\"format\":\"pt\",\"n_head\":\"2\"},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[8,12]},"
             "\"c\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[12,20]}}",
             data, sizeof data);
    strata_safetensors *st = NULL;
    strata_err e = strata_st_open(path, &st);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(strata_st_count(st), 3);
    assert_string_equal(strata_st_metadata(st, "n_head"), "2");
    assert_null(strata_st_metadata(st, "absent"));
    assert_null(strata_st_find(st, "d"));
    float out[4];
    const strata_st_tensor *a = strata_st_find(st, "a"), *b = strata_st_find(st, "b"),
                           *c = strata_st_find(st, "c");
    assert_non_null(a);
    assert_int_equal(b->dtype, STRATA_ST_BF16);
    assert_int_equal(c->ndim, 2);
    assert_int_equal(c->numel, 4);
    assert_int_equal(strata_st_read(st, a, out).code, 0);
    assert_true(out[0] == 1.5f && out[1] == -2.0f);
    assert_int_equal(strata_st_read(st, b, out).code, 0);
    assert_true(out[0] == 1.0f && out[1] == -3.140625f);
    assert_int_equal(strata_st_read(st, c, out).code, 0);
    assert_true(out[0] == 1.0f && out[1] == 0x1p-24f && isinf(out[2]) && isnan(out[3]));
    strata_st_close(st);
}

static void truncated_file_is_refused(void **state)
{
    (void)state;
    float d[4] = {1, 2, 3, 4};
    const char *path = in_tmp("cut.safetensors");
    const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    write_st(path, hdr, d, sizeof d);
    size_t len;
    unsigned char *bytes = read_all(path, &len);
    for (size_t cut = 0; cut < len; cut++) {
        write_all(path, bytes, cut);
        strata_safetensors *st = NULL;
        assert_refused(strata_st_open(path, &st), path, NULL);
        assert_null(st);
    }
    write_all(path, bytes, len - 4);
    strata_safetensors *st = NULL;
    assert_refused(strata_st_open(path, &st), path, "'a' ends at data byte 16, past the end");
    write_all(path, bytes, 5);
    assert_refused(strata_st_open(path, &st), path, "too short for safetensors");
    free(bytes);
}

static void header_length_past_the_end_is_refused(void **state)
{
    (void)state;
    const char *path = in_tmp("long-header.safetensors");
    unsigned char buf[64] = {0};
    const uint64_t lens[] = {57, 1000, UINT64_MAX};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(lens[k] >> (8 * i));
        memcpy(buf + 8, "{}", 2);
        write_all(path, buf, sizeof buf);
        strata_safetensors *st = NULL;
        assert_refused(strata_st_open(path, &st), path, "runs past the end of the file");
    }
    for (int i = 0; i < 8; i++) buf[i] = 0;
    write_all(path, buf, sizeof buf);
    strata_safetensors *st = NULL;
    assert_refused(strata_st_open(path, &st), path, "header length 0 is impossible");
}

/* A two-tensor file whose second entry's JSON is `b` (data: 16 bytes). */
static strata_err open_with(const char *path, const char *b)
{
    char hdr[512];
    snprintf(hdr, sizeof hdr, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},%s}",
             b);
    float d[4] = {1, 2, 3, 4};
    write_st(path, hdr, d, sizeof d);
    strata_safetensors *st = NULL;
    strata_err e = strata_st_open(path, &st);
    strata_st_close(st);
    return e;
}

static void overlapping_offsets_are_refused(void **state)
{
    (void)state;
    const char *path = in_tmp("overlap.safetensors");
    assert_refused(open_with(path,
                             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
                             "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}"),
                   path, "overlap in the data");
    /* And the neighbouring faults of the layout: a hole, bytes after the end. */
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}"), path,
        "data bytes 8 to 12 belong to no tensor");
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}"), path,
        "4 bytes follow the last tensor");
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,8]}"), path,
        "bad data_offsets");
    assert_int_equal(
        open_with(path, "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}").code, 0);
}

static void shape_product_disagreeing_with_offsets_is_refused(void **state)
{
    (void)state;
    const char *path = in_tmp("shape.safetensors");
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[8,16]}"), path,
        "'b' spans 8 bytes but its shape and dtype make 12");
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,16]}"), path,
        "'b' spans 8 bytes but its shape and dtype make 4");
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[8,16]}"), path,
        "'b' has a bad shape");
    assert_refused(open_with(path, "\"b\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                                   "\"data_offsets\":[8,16]}"),
                   path, "impossibly large");
    assert_refused(open_with(path, "\"b\":{\"dtype\":\"F32\",\"shape\":[2]}"), path,
                   "lacks dtype, shape or data_offsets");
}

static void bad_dtype_is_refused(void **state)
{
    (void)state;
    const char *path = in_tmp("dtype.safetensors");
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[8,16]}"), path,
        "'b' is not F32, BF16 or F16 (dtype I32)");
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[8,16]}"), path,
        "(dtype F64)");
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[8,16]}"), path,
        "unknown dtype 'F33'");
    assert_refused(open_with(path, "\"b\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[8,16]}"),
                   path, "lacks dtype");
}

static void duplicate_names_and_bad_json_are_refused(void **state)
{
    (void)state;
    const char *path = in_tmp("dup.safetensors");
    assert_refused(
        open_with(path, "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}"), path,
        "duplicate");
    assert_refused(
        open_with(path, "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]"), path,
        "header is not JSON");
    write_st(path, "[1, 2]", NULL, 0);
    strata_safetensors *st = NULL;
    assert_refused(strata_st_open(path, &st), path, "not a JSON object");
    write_st(path, "{\"__metadata__\":[1]}", NULL, 0);
    assert_refused(strata_st_open(path, &st), path, "__metadata__ is not a JSON object");
    assert_refused(strata_st_open(in_tmp("absent.safetensors"), &st), "absent.safetensors",
                   "cannot open");
}

/* ---- writing and shards ----------------------------------------------------------- */

static void written_files_read_back_bitwise_in_f32_and_rounded_in_bf16(void **state)
{
    (void)state;
    enum { N = 3000 };
    static float x[N], y[N];
    test_rng rng;
    test_rng_seed(&rng, 7);
    for (int i = 0; i < N; i++) x[i] = from_bits((uint32_t)test_rng_next(&rng));
    x[0] = NAN, x[1] = -INFINITY, x[2] = -0.0f, x[3] = 0x1p-140f;
    const strata_st_spec specs[2] = {{"w", 2, {N / 3, 3}}, {"b", 1, {7}}};
    for (int dtype = STRATA_ST_F32; dtype <= STRATA_ST_BF16; dtype++) {
        const char *path = in_tmp(dtype ? "w-bf16.safetensors" : "w-f32.safetensors");
        strata_st_writer *w = NULL;
        const char *const meta[] = {"note", "test", NULL};
        strata_err e = strata_st_write_begin(&w, path, dtype, specs, 2, meta);
        if (e.code) fail_msg("%s", e.msg);
        assert_int_equal(strata_st_write_tensor(w, x).code, 0);
        assert_int_equal(strata_st_write_tensor(w, x + 100).code, 0);
        assert_int_equal(strata_st_write_finish(w).code, 0);
        size_t len;
        unsigned char *bytes = read_all(path, &len);
        uint64_t hn = 0;
        for (int i = 7; i >= 0; i--) hn = hn << 8 | bytes[i];
        assert_int_equal(hn % 8, 0); /* data 8-byte aligned */
        free(bytes);
        strata_safetensors *st = NULL;
        e = strata_st_open(path, &st);
        if (e.code) fail_msg("%s", e.msg);
        assert_string_equal(strata_st_metadata(st, "format"), "pt");
        assert_string_equal(strata_st_metadata(st, "note"), "test");
        const strata_st_tensor *t = strata_st_find(st, "w");
        assert_int_equal(t->dtype, dtype);
        assert_int_equal(t->shape[0], N / 3);
        assert_int_equal(strata_st_read(st, t, y).code, 0);
        for (int i = 0; i < N; i++) {
            uint32_t want = dtype ? (uint32_t)strata_f32_to_bf16(x[i]) << 16 : bits(x[i]);
            if (bits(y[i]) != want) fail_msg("%d: 0x%08x, expected 0x%08x", i, bits(y[i]), want);
        }
        assert_int_equal(strata_st_read(st, strata_st_find(st, "b"), y).code, 0);
        assert_true(dtype || !memcmp(y, x + 100, 7 * sizeof(float)));
        strata_st_close(st);
    }
    /* Nothing but the two files is left in the directory: no temporary. */
    DIR *d = opendir(tmpdir);
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".tmp-")) fail_msg("temporary file left: %s", de->d_name);
    closedir(d);
    /* Too few tensors written is an error, and no file appears. */
    strata_st_writer *w = NULL;
    assert_int_equal(
        strata_st_write_begin(&w, in_tmp("short.safetensors"), STRATA_ST_F32, specs, 2, NULL).code,
        0);
    assert_int_equal(strata_st_write_tensor(w, x).code, 0);
    assert_int_not_equal(strata_st_write_finish(w).code, 0);
    assert_int_not_equal(access(in_tmp("short.safetensors"), F_OK), 0);
    const strata_st_spec twice[2] = {{"w", 1, {1}}, {"w", 1, {1}}};
    assert_refused(
        strata_st_write_begin(&w, in_tmp("twice.safetensors"), STRATA_ST_F32, twice, 2, NULL),
        "twice.safetensors", "named twice");
}

static void write_shard(const char *dir, const char *name, const char *tensor, float v)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    strata_st_spec spec = {tensor, 1, {2}};
    float x[2] = {v, v + 1};
    strata_st_writer *w = NULL;
    assert_int_equal(strata_st_write_begin(&w, path, STRATA_ST_F32, &spec, 1, NULL).code, 0);
    assert_int_equal(strata_st_write_tensor(w, x).code, 0);
    assert_int_equal(strata_st_write_finish(w).code, 0);
}

static void write_index(const char *dir, const char *map)
{
    char path[512], text[1024];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    snprintf(text, sizeof text, "{\"metadata\": {\"total_size\": 16}, \"weight_map\": {%s}}", map);
    write_all(path, text, strlen(text));
}

static void sharded_checkpoints_are_held_to_their_index(void **state)
{
    (void)state;
    const char *dir = in_tmp("sharded");
    mkdir(dir, 0777);
    write_shard(dir, "model-00001-of-00002.safetensors", "x", 1);
    write_shard(dir, "model-00002-of-00002.safetensors", "y", 5);
    write_index(dir, "\"x\": \"model-00001-of-00002.safetensors\", "
                     "\"y\": \"model-00002-of-00002.safetensors\"");
    strata_safetensors *st = NULL;
    strata_err e = strata_st_open_dir(dir, &st);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(strata_st_count(st), 2);
    float v[2];
    assert_int_equal(strata_st_read(st, strata_st_find(st, "y"), v).code, 0);
    assert_true(v[0] == 5 && v[1] == 6);
    assert_non_null(strstr(strata_st_path(st, strata_st_find(st, "y")->file), "00002"));
    strata_st_close(st);

    const char *index = "model.safetensors.index.json";
    write_index(dir, "\"x\": \"model-00001-of-00002.safetensors\", "
                     "\"y\": \"model-00001-of-00002.safetensors\"");
    assert_refused(strata_st_open_dir(dir, &st), index,
                   "which model-00001-of-00002.safetensors does not hold");
    write_index(dir, "\"x\": \"model-00001-of-00002.safetensors\"");
    /* A shard the index does not name is not part of the checkpoint. */
    assert_int_equal(strata_st_open_dir(dir, &st).code, 0);
    assert_int_equal(strata_st_count(st), 1);
    strata_st_close(st);
    write_index(dir, "\"x\": \"model-00001-of-00002.safetensors\", "
                     "\"y\": \"../model-00002-of-00002.safetensors\"");
    assert_refused(strata_st_open_dir(dir, &st), index, "not the name of a file");
    write_index(dir, "\"x\": \"model-00001-of-00002.safetensors\", \"y\": \"missing.safetensors\"");
    assert_refused(strata_st_open_dir(dir, &st), "missing.safetensors", "cannot open");
    /* A tensor in a shard but not in the map. */
    write_shard(dir, "model-00002-of-00002.safetensors", "z", 5);
    write_index(dir, "\"x\": \"model-00001-of-00002.safetensors\", "
                     "\"y\": \"model-00002-of-00002.safetensors\"");
    assert_refused(strata_st_open_dir(dir, &st), index, "names 'y'");
    /* The same name in two shards. */
    write_shard(dir, "model-00002-of-00002.safetensors", "x", 5);
    assert_refused(strata_st_open_dir(dir, &st), "model-0000", "is also in");
    write_all(in_tmp("sharded/model.safetensors.index.json"), "{\"weight_map\": 3}", 17);
    assert_refused(strata_st_open_dir(dir, &st), index, "weight_map");
    write_all(in_tmp("sharded/model.safetensors.index.json"), "{\"weight_map\": ", 15);
    assert_refused(strata_st_open_dir(dir, &st), index, "not JSON");
    assert_refused(strata_st_open_dir(tmpdir, &st), tmpdir, "holds neither");
}

/* ---- fuzz ---------------------------------------------------------------------------- */

static void damaged_files_never_crash_the_reader(void **state)
{
    (void)state;
    /* A valid file with all three dtypes and several shapes. */
    const char *valid = in_tmp("fuzz-valid.safetensors");
    const strata_st_spec specs[3] = {{"model.a.weight", 2, {4, 3}}, {"b", 1, {5}}, {"c", 0, {0}}};
    float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    strata_st_writer *w = NULL;
    assert_int_equal(strata_st_write_begin(&w, valid, STRATA_ST_BF16, specs, 3, NULL).code, 0);
    for (int i = 0; i < 3; i++) assert_int_equal(strata_st_write_tensor(w, x).code, 0);
    assert_int_equal(strata_st_write_finish(w).code, 0);
    size_t len;
    unsigned char *orig = read_all(valid, &len);
    unsigned char *buf = malloc(len + 64);
    const char *path = in_tmp("fuzz.safetensors");
    test_rng rng;
    test_rng_seed(&rng, 12345);
    int ok = 0, refused = 0;
    for (int iter = 0; iter < 5000; iter++) {
        memcpy(buf, orig, len);
        size_t n = len;
        uint64_t r = test_rng_next(&rng);
        if (r % 4 == 0) {
            n = (size_t)(test_rng_next(&rng) % len);
        } else {
            int flips = 1 + (int)(test_rng_next(&rng) % 4);
            for (int k = 0; k < flips; k++) {
                /* Mostly in the length and the header, where the checks are. */
                size_t at = (size_t)(test_rng_next(&rng) % (k % 2 ? len : 8 + len / 2));
                buf[at] ^= (unsigned char)(1u << (test_rng_next(&rng) % 8));
                if (r % 7 == 0) buf[at] = (unsigned char)test_rng_next(&rng);
            }
        }
        write_all(path, buf, n);
        strata_safetensors *st = NULL;
        strata_err e = strata_st_open(path, &st);
        if (e.code) {
            assert_int_equal(e.code, STRATA_EINPUT);
            assert_null(strchr(e.msg, '\n'));
            refused++;
            continue;
        }
        for (size_t i = 0; i < strata_st_count(st); i++) {
            const strata_st_tensor *t = strata_st_at(st, i);
            float *dst = malloc((t->numel + 1) * sizeof(float));
            assert_non_null(dst);
            assert_int_equal(strata_st_read(st, t, dst).code, 0);
            free(dst);
        }
        strata_st_close(st);
        ok++;
    }
    print_message("fuzz: %d loaded, %d refused\n", ok, refused);
    assert_true(refused > 1000);
    assert_true(ok > 10); /* flips in the payload leave a valid file */
    free(buf);
    free(orig);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(f16_values_convert_exactly_including_subnormals_inf_and_nan),
        cmocka_unit_test(bf16_reads_the_upper_half_and_rounds_to_nearest_even),
        cmocka_unit_test(valid_file_reads_every_dtype_into_fp32),
        cmocka_unit_test(truncated_file_is_refused),
        cmocka_unit_test(header_length_past_the_end_is_refused),
        cmocka_unit_test(overlapping_offsets_are_refused),
        cmocka_unit_test(shape_product_disagreeing_with_offsets_is_refused),
        cmocka_unit_test(bad_dtype_is_refused),
        cmocka_unit_test(duplicate_names_and_bad_json_are_refused),
        cmocka_unit_test(written_files_read_back_bitwise_in_f32_and_rounded_in_bf16),
        cmocka_unit_test(sharded_checkpoints_are_held_to_their_index),
        cmocka_unit_test(damaged_files_never_crash_the_reader),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
