/* test_shard_read.c — the shard reader accepts every faithful encoding of
 * the format and rejects, with the file and the problem, everything else,
 * including damaged files (never a crash). Shards are written here with raw
 * HDF5 calls, the way other tools (h5py, C programs) write them. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/shard.h"

static char dir[256];

/* HDF5 1.10 itself leaks a few bytes on some damaged files (LeakSanitizer
 * builds): those leaks are the library's, not the reader's. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5"; }
/* A damaged size makes HDF5 ask malloc for terabytes: plain malloc returns
 * NULL and HDF5 reports an error; AddressSanitizer's must do the same. */
const char *__lsan_default_options(void);
const char *__lsan_default_options(void) { return "print_suppressions=0"; }
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

enum { STR_FIXED, STR_VLEN_UTF8, STR_FIXED_NULLPAD, STR_FIXED_SPACEPAD };
enum { OMIT_VOCAB = 1, OMIT_EOT = 2, OMIT_TOKENIZER = 4, OMIT_FORMAT = 8, OMIT_TOKENS = 16 };

typedef struct spec {
    hid_t token_type; /* file type of /tokens */
    int64_t n;
    int rank2;     /* write /tokens as (n/2, 2) */
    int scalar;    /* write /tokens as a scalar */
    int64_t chunk; /* 0: contiguous */
    int unlimited; /* maxdims unlimited (chunk may exceed n) */
    int deflate;
    int64_t vocab;
    hid_t vocab_type; /* attribute file type (integer or float) */
    int vocab_pair;   /* vocab_size as an array of two values */
    int64_t eot;
    hid_t eot_type;
    const char *tokenizer, *format;
    int str_kind;
    int omit;
    int64_t bad_at; /* index of a token set to bad_value, -1 none */
    uint32_t bad_value;
    int docs;         /* write /doc_offsets */
    int tokens_group; /* /tokens is a group */
    int optional_lzf; /* add LZF (absent from plain HDF5) as an optional filter */
} spec;

static spec good(void)
{
    spec s = {0};
    s.token_type = H5T_STD_U16LE;
    s.n = 5000;
    s.chunk = 1024;
    s.vocab = 50257;
    s.vocab_type = H5T_STD_I64LE;
    s.eot = 50256;
    s.eot_type = H5T_STD_I64LE;
    s.tokenizer = "gpt2";
    s.format = STRATA_SHARD_FORMAT;
    s.str_kind = STR_VLEN_UTF8;
    s.bad_at = -1;
    s.docs = 1;
    return s;
}

static uint32_t token_at(const spec *s, int64_t i)
{
    if (i == s->bad_at) return s->bad_value;
    if (s->vocab < 1 || s->vocab > (1ll << 32)) return (uint32_t)(i % 100);
    return (uint32_t)((uint64_t)(i * 7919 + 13) % (uint64_t)s->vocab);
}

static void put_int_attr(hid_t obj, const char *name, hid_t type, int64_t v, int pair)
{
    hsize_t two = 2;
    hid_t sp = pair ? H5Screate_simple(1, &two, NULL) : H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (H5Tget_class(type) == H5T_FLOAT) {
        double d[2] = {(double)v, (double)v};
        H5Awrite(a, H5T_NATIVE_DOUBLE, d);
    } else {
        int64_t x[2] = {v, v};
        H5Awrite(a, H5T_NATIVE_INT64, x);
    }
    H5Aclose(a);
    H5Sclose(sp);
}

static void put_str_attr(hid_t obj, const char *name, const char *v, int kind)
{
    hid_t sp = H5Screate(H5S_SCALAR), t = H5Tcopy(H5T_C_S1);
    if (kind == STR_VLEN_UTF8) {
        H5Tset_size(t, H5T_VARIABLE);
        H5Tset_cset(t, H5T_CSET_UTF8);
        hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, t, &v);
        H5Aclose(a);
    } else {
        size_t n = strlen(v) + (kind == STR_FIXED ? 1 : 3);
        char *buf = calloc(n, 1);
        memcpy(buf, v, strlen(v));
        if (kind == STR_FIXED_SPACEPAD) memset(buf + strlen(v), ' ', n - strlen(v));
        H5Tset_size(t, n);
        H5Tset_strpad(t, kind == STR_FIXED           ? H5T_STR_NULLTERM
                         : kind == STR_FIXED_NULLPAD ? H5T_STR_NULLPAD
                                                     : H5T_STR_SPACEPAD);
        hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, t, buf);
        H5Aclose(a);
        free(buf);
    }
    H5Tclose(t);
    H5Sclose(sp);
}

static void write_shard(const char *path, const spec *s)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(f >= 0);
    if (s->tokens_group) {
        H5Gclose(H5Gcreate2(f, "/tokens", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    } else if (!(s->omit & OMIT_TOKENS)) {
        hsize_t dims[2] = {(hsize_t)s->n, 1}, maxd[2] = {H5S_UNLIMITED, 2};
        int rank = 1;
        if (s->rank2) {
            dims[0] = (hsize_t)s->n / 2;
            dims[1] = 2;
            rank = 2;
        }
        hid_t sp = s->scalar ? H5Screate(H5S_SCALAR)
                             : H5Screate_simple(rank, dims, s->unlimited ? maxd : NULL);
        hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
        if (s->chunk && !s->scalar) {
            hsize_t ck[2] = {(hsize_t)s->chunk, s->rank2 ? 2 : 1};
            assert_true(H5Pset_chunk(dcpl, rank, ck) >= 0);
            if (s->deflate) {
                H5Pset_shuffle(dcpl);
                H5Pset_deflate(dcpl, 4);
            }
            if (s->optional_lzf) {
                unsigned cd[1] = {0};
                assert_true(H5Pset_filter(dcpl, 32000, H5Z_FLAG_OPTIONAL, 0, cd) >= 0);
            }
        }
        hid_t d = H5Dcreate2(f, "/tokens", s->token_type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        assert_true(d >= 0);
        int64_t n = s->scalar ? 1 : s->n;
        uint32_t *tok = malloc((size_t)(n ? n : 1) * sizeof *tok);
        for (int64_t i = 0; i < n; i++) tok[i] = token_at(s, i);
        if (n) assert_true(H5Dwrite(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tok) >= 0);
        free(tok);
        if (!(s->omit & OMIT_VOCAB))
            put_int_attr(d, "vocab_size", s->vocab_type, s->vocab, s->vocab_pair);
        if (!(s->omit & OMIT_EOT)) put_int_attr(d, "eot_token", s->eot_type, s->eot, 0);
        if (!(s->omit & OMIT_TOKENIZER)) put_str_attr(d, "tokenizer", s->tokenizer, s->str_kind);
        if (!(s->omit & OMIT_FORMAT)) put_str_attr(d, "format", s->format, s->str_kind);
        H5Dclose(d);
        H5Pclose(dcpl);
        H5Sclose(sp);
    }
    if (s->docs && s->n >= 3000) {
        uint64_t off[3] = {0, 1000, 2999};
        hsize_t three = 3;
        hid_t sp = H5Screate_simple(1, &three, NULL);
        hid_t d =
            H5Dcreate2(f, "/doc_offsets", H5T_STD_U64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off);
        H5Dclose(d);
        H5Sclose(sp);
    }
    H5Fclose(f);
}

static const char *path_of(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* Opens a shard written from s and checks it reads back exactly. */
static void accepts(const char *name, const spec *s)
{
    const char *p = path_of(name);
    write_shard(p, s);
    strata_shard *sh = NULL;
    strata_err e = strata_shard_open(&sh, p);
    if (e.code) fail_msg("%s: %s", name, e.msg);
    const strata_shard_info *in = strata_shard_get_info(sh);
    assert_int_equal(in->n_tokens, s->n);
    assert_int_equal(in->vocab_size, s->vocab);
    assert_int_equal(in->eot_token, s->eot);
    assert_string_equal(in->tokenizer, s->tokenizer);
    assert_int_equal(in->token_bits, (int)H5Tget_size(s->token_type) * 8);
    assert_int_equal(in->chunk_tokens, s->chunk);
    assert_int_equal(in->n_docs, s->docs && s->n >= 3000 ? 3 : 0);
    assert_int_equal(strata_shard_n_samples(sh, 256), (s->n - 1) / 256);
    /* Hyperslabs anywhere, including across chunk borders. */
    uint32_t *buf = malloc((size_t)s->n * sizeof *buf);
    const int64_t starts[] = {0, 1, 1023, 1024, s->n / 2, s->n - 257};
    for (size_t k = 0; k < sizeof starts / sizeof *starts; k++) {
        int64_t st = starts[k], n = s->n - st < 257 ? s->n - st : 257;
        if (st < 0) continue;
        e = strata_shard_read(sh, st, n, buf);
        if (e.code) fail_msg("%s: %s", name, e.msg);
        for (int64_t i = 0; i < n; i++) assert_int_equal(buf[i], token_at(s, st + i));
    }
    e = strata_shard_verify(sh);
    if (e.code) fail_msg("%s: %s", name, e.msg);
    free(buf);
    /* Reads outside the shard are refused. */
    uint32_t one[2];
    assert_int_not_equal(strata_shard_read(sh, s->n - 1, 2, one).code, 0);
    assert_int_not_equal(strata_shard_read(sh, -1, 1, one).code, 0);
    strata_shard_close(sh);
}

/* Writes a shard from s and expects opening it to fail with STRATA_EINPUT,
 * a message naming the file and containing `needle`. */
static void rejects(const char *name, const spec *s, const char *needle)
{
    const char *p = path_of(name);
    write_shard(p, s);
    strata_shard *sh = NULL;
    strata_err e = strata_shard_open(&sh, p);
    if (!e.code) fail_msg("%s: accepted, expected an error containing '%s'", name, needle);
    assert_null(sh);
    assert_int_equal(e.code, STRATA_EINPUT);
    if (!strstr(e.msg, p) || !strstr(e.msg, needle))
        fail_msg("%s: message '%s' lacks the path or '%s'", name, e.msg, needle);
    assert_null(strchr(e.msg, '\n'));
}

static void h5py_style_int64_attributes_and_vlen_utf8_strings_are_accepted(void **state)
{
    spec s = good();
    accepts("h5py.h5", &s);
}

static void attributes_of_any_integer_width_and_string_kind_are_accepted(void **state)
{
    const hid_t ints[] = {H5T_STD_I32LE, H5T_STD_U32BE, H5T_STD_U64LE, H5T_STD_I32BE};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        spec s = good();
        s.vocab_type = ints[i];
        s.eot_type = H5T_STD_I32LE;
        accepts("intattr.h5", &s);
    }
    spec s = good();
    s.vocab = 256;
    s.eot = -1;
    s.vocab_type = H5T_STD_U16LE;
    s.eot_type = H5T_STD_I8LE;
    s.tokenizer = "byte";
    accepts("small_int_attrs.h5", &s);
    const int kinds[] = {STR_FIXED, STR_FIXED_NULLPAD, STR_FIXED_SPACEPAD};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        s = good();
        s.str_kind = kinds[i];
        accepts("strkind.h5", &s);
    }
}

static void any_chunking_or_none_and_compression_are_accepted(void **state)
{
    spec s = good();
    s.chunk = 0;
    accepts("contiguous.h5", &s);
    const int64_t chunks[] = {1, 7, 1000, 3001};
    for (size_t i = 0; i < sizeof chunks / sizeof *chunks; i++) {
        s = good();
        s.n = 3001;
        s.chunk = chunks[i];
        accepts("chunked.h5", &s);
    }
    s = good();
    s.chunk = 1 << 20; /* larger than the data: extendable dataset */
    s.unlimited = 1;
    accepts("bigchunk.h5", &s);
    s = good();
    s.deflate = 1;
    accepts("deflate.h5", &s);
    s = good();
    s.optional_lzf = 1; /* skipped when written: still readable */
    accepts("optional_lzf.h5", &s);
}

static void uint32_and_big_endian_tokens_are_accepted(void **state)
{
    spec s = good();
    s.token_type = H5T_STD_U32LE;
    s.vocab = 100000;
    s.eot = 99999;
    accepts("uint32.h5", &s);
    s = good();
    s.token_type = H5T_STD_U32LE; /* wider than needed is still faithful */
    accepts("uint32_small_vocab.h5", &s);
    s = good();
    s.token_type = H5T_STD_U16BE;
    accepts("u16be.h5", &s);
    /* compressed: chunks decoded by the reader itself */
    s.deflate = 1;
    accepts("u16be_deflate.h5", &s);
    s = good();
    s.token_type = H5T_STD_U32BE;
    s.vocab = 100000;
    s.eot = 99999;
    s.deflate = 1;
    s.n = 3000; /* a partial last chunk */
    accepts("u32be_deflate.h5", &s);
}

static void wrong_token_types_and_shapes_are_rejected(void **state)
{
    spec s = good();
    s.token_type = H5T_STD_I8LE;
    s.vocab = 100;
    s.eot = 0;
    rejects("int8.h5", &s, "/tokens is int8, expected uint16 or uint32");
    s = good();
    s.token_type = H5T_STD_I16LE;
    s.vocab = 30000;
    s.eot = 0;
    rejects("int16.h5", &s, "/tokens is int16");
    s = good();
    s.token_type = H5T_IEEE_F32LE;
    rejects("float.h5", &s, "/tokens is float32");
    s = good();
    s.token_type = H5T_STD_U64LE;
    rejects("u64.h5", &s, "/tokens is uint64");
    s = good();
    s.rank2 = 1;
    s.chunk = 0;
    rejects("rank2.h5", &s, "rank 2, expected 1");
    s = good();
    s.scalar = 1;
    s.chunk = 0;
    rejects("scalar.h5", &s, "rank 0, expected 1");
    s = good();
    s.omit = OMIT_TOKENS;
    rejects("notokens.h5", &s, "no /tokens dataset");
    s = good();
    s.tokens_group = 1;
    rejects("tokensgroup.h5", &s, "/tokens is a group");
    s = good();
    s.n = 0;
    s.chunk = 0;
    rejects("empty.h5", &s, "empty shard");
    s = good();
    s.n = 1;
    s.chunk = 0;
    rejects("one.h5", &s, "1 token");
    s = good();
    s.token_type = H5T_STD_U16LE;
    s.vocab = 70000;
    s.eot = 0;
    rejects("u16_big_vocab.h5", &s, "expected uint32");
}

static void missing_or_invalid_attributes_are_rejected(void **state)
{
    spec s = good();
    s.omit = OMIT_VOCAB;
    rejects("novocab.h5", &s, "no vocab_size attribute");
    s = good();
    s.omit = OMIT_EOT;
    rejects("noeot.h5", &s, "no eot_token attribute");
    s = good();
    s.omit = OMIT_TOKENIZER;
    rejects("notok.h5", &s, "no tokenizer attribute");
    s = good();
    s.omit = OMIT_FORMAT;
    rejects("nofmt.h5", &s, "no format attribute");
    s = good();
    s.format = "strata-tokens-2";
    rejects("fmt2.h5", &s, "format attribute is 'strata-tokens-2', expected 'strata-tokens-1'");
    s = good();
    s.vocab_type = H5T_IEEE_F64LE;
    rejects("vocabfloat.h5", &s, "vocab_size is float64, expected an integer");
    s = good();
    s.vocab_pair = 1;
    rejects("vocabpair.h5", &s, "holds 2 values");
    s = good();
    s.vocab = (int64_t)1 << 33;
    s.token_type = H5T_STD_U32LE;
    rejects("vocabhuge.h5", &s, "vocab_size attribute is 8589934592");
    s = good();
    s.vocab = 0;
    s.eot = -1;
    rejects("vocab0.h5", &s, "vocab_size attribute is 0");
    s = good();
    s.eot = 50257;
    rejects("eotbig.h5", &s, "eot_token attribute is 50257");
    s = good();
    s.eot = -2;
    rejects("eotneg.h5", &s, "eot_token attribute is -2");
    s = good();
    s.tokenizer = "gpt 2";
    rejects("tokspace.h5", &s, "tokenizer attribute is 'gpt 2'");
    s = good();
    s.tokenizer = "";
    s.str_kind = STR_VLEN_UTF8;
    rejects("tokempty.h5", &s, "tokenizer attribute is ''");
}

static void a_token_id_out_of_the_vocabulary_is_named_with_file_index_and_value(void **state)
{
    spec s = good();
    s.token_type = H5T_STD_U16LE;
    s.bad_at = 4321;
    s.bad_value = 60000; /* fits uint16, >= vocab_size 50257 */
    const char *p = path_of("badtoken.h5");
    write_shard(p, &s);
    strata_shard *sh = NULL;
    strata_err e = strata_shard_open(&sh, p);
    assert_int_equal(e.code, 0);
    uint32_t buf[300];
    assert_int_equal(strata_shard_read(sh, 0, 300, buf).code, 0);
    e = strata_shard_read(sh, 4300, 300, buf);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, p));
    assert_non_null(strstr(e.msg, "token 4321 is 60000, not < vocab_size 50257"));
    e = strata_shard_verify(sh);
    assert_non_null(strstr(e.msg, "token 4321 is 60000"));
    strata_shard_close(sh);
}

static void files_that_are_not_shards_are_rejected(void **state)
{
    strata_shard *sh = NULL;
    const char *p = path_of("text.h5");
    FILE *f = fopen(p, "w");
    fputs("hello, I am not HDF5\n", f);
    fclose(f);
    strata_err e = strata_shard_open(&sh, p);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "not an HDF5 file"));
    e = strata_shard_open(&sh, path_of("does-not-exist.h5"));
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "No such file"));
    e = strata_shard_open(&sh, dir);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "is a directory"));
}

/* Damage a real shard: truncations and byte flips must give STRATA_EINPUT
 * naming the file (or a shard that still reads cleanly), never a crash. */
static void damaged_shards_give_an_error_never_a_crash(void **state)
{
    const int kinds[2] = {0, 1};
    int variants = 0, refused = 0;
    for (int kk = 0; kk < 2; kk++) {
        spec s = good();
        s.deflate = kinds[kk];
        s.n = 20000;
        const char *src = path_of("pristine.h5");
        write_shard(src, &s);
        FILE *f = fopen(src, "rb");
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        fseek(f, 0, SEEK_SET);
        unsigned char *orig = malloc((size_t)size), *buf = malloc((size_t)size);
        assert_int_equal(fread(orig, 1, (size_t)size, f), (size_t)size);
        fclose(f);
        uint64_t x = 0x9e3779b97f4a7c15ull + (uint64_t)kk;
        for (int v = 0; v < 200; v++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(buf, orig, (size_t)size);
            long len = size;
            if (v < 40) {
                len = (long)(x % (uint64_t)size); /* truncated */
            } else {
                /* Most flips land in the header region, where HDF5 keeps the
                 * structures that could mislead it. */
                long region = v % 3 ? (size < 4096 ? size : 4096) : size;
                int nflip = 1 + (int)(x >> 60) % 4;
                for (int k = 0; k < nflip; k++) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    buf[x % (uint64_t)region] ^= (unsigned char)(1 + (x >> 32) % 255);
                }
            }
            const char *p = path_of("damaged.h5");
            f = fopen(p, "wb");
            fwrite(buf, 1, (size_t)len, f);
            fclose(f);
            strata_shard *sh = NULL;
            strata_err e = strata_shard_open(&sh, p);
            if (!e.code) {
                e = strata_shard_verify(sh);
                uint32_t row[257];
                for (int64_t i = 0; !e.code && i + 257 <= strata_shard_get_info(sh)->n_tokens;
                     i += 4099)
                    e = strata_shard_read(sh, i, 257, row);
                strata_shard_close(sh);
            }
            variants++;
            if (e.code) {
                refused++;
                assert_int_equal(e.code, STRATA_EINPUT);
                if (!strstr(e.msg, p))
                    fail_msg("variant %d: message '%s' lacks the path", v, e.msg);
                assert_null(strchr(e.msg, '\n'));
            }
        }
        free(orig);
        free(buf);
    }
    print_message("%d damaged shards, %d refused, %d still valid\n", variants, refused,
                  variants - refused);
    assert_true(refused >= 40); /* every truncation at least */
}

static int setup(void **state)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/strata-shard-read-XXXXXX", base ? base : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(h5py_style_int64_attributes_and_vlen_utf8_strings_are_accepted),
        cmocka_unit_test(attributes_of_any_integer_width_and_string_kind_are_accepted),
        cmocka_unit_test(any_chunking_or_none_and_compression_are_accepted),
        cmocka_unit_test(uint32_and_big_endian_tokens_are_accepted),
        cmocka_unit_test(wrong_token_types_and_shapes_are_rejected),
        cmocka_unit_test(missing_or_invalid_attributes_are_rejected),
        cmocka_unit_test(a_token_id_out_of_the_vocabulary_is_named_with_file_index_and_value),
        cmocka_unit_test(files_that_are_not_shards_are_rejected),
        cmocka_unit_test(damaged_shards_give_an_error_never_a_crash),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
