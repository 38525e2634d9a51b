/* test_shard_write.c — the shard writer produces exactly the format of
 * DESIGN.md, checked with raw HDF5 calls (independent of strata's reader). */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <dirent.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata/shard.h"

static char dir[256];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "%s/strata-shard-write-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    DIR *d = opendir(dir);
    if (d) {
        char p[600];
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
    return 0;
}

static const char *path_of(const char *name)
{
    static char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

static int files_in_dir(void)
{
    int n = 0;
    DIR *d = opendir(dir);
    /* every entry but . and ..: the temporary file is a dotfile */
    for (struct dirent *e; d && (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    if (d) closedir(d);
    return n;
}

static strata_shard_writer_opts byte_opts(void)
{
    return (strata_shard_writer_opts){.vocab_size = 256, .eot_token = 0, .tokenizer = "byte"};
}

static void write_shard(const char *path, const strata_shard_writer_opts *o, const uint32_t *tokens,
                        size_t n)
{
    strata_shard_writer *w;
    strata_err e = strata_shard_writer_open(&w, path, o);
    assert_int_equal(e.code, 0);
    e = strata_shard_writer_append(w, tokens, n);
    assert_int_equal(e.code, 0);
    assert_int_equal(strata_shard_writer_tokens(w), (int64_t)n);
    e = strata_shard_writer_close(w);
    assert_string_equal(e.msg, "");
    assert_int_equal(e.code, 0);
}

static int64_t int_attr(hid_t obj, const char *name)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    assert_true(a >= 0);
    hid_t t = H5Aget_type(a);
    /* integer attributes are 64-bit signed, as h5py writes them */
    assert_int_equal(H5Tget_class(t), H5T_INTEGER);
    assert_int_equal(H5Tget_size(t), 8);
    assert_int_equal(H5Tget_sign(t), H5T_SGN_2);
    int64_t v = 0;
    assert_true(H5Aread(a, H5T_NATIVE_INT64, &v) >= 0);
    H5Tclose(t);
    H5Aclose(a);
    return v;
}

static void assert_str_attr(hid_t obj, const char *name, const char *want)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    assert_true(a >= 0);
    hid_t t = H5Aget_type(a);
    assert_int_equal(H5Tget_class(t), H5T_STRING);
    assert_false(H5Tis_variable_str(t));
    char buf[64] = {0};
    assert_true(H5Tget_size(t) < sizeof buf);
    assert_true(H5Aread(a, t, buf) >= 0);
    assert_string_equal(buf, want);
    H5Tclose(t);
    H5Aclose(a);
}

/* Reads /tokens into a fresh buffer of uint32 and checks its on-disk type. */
static uint32_t *read_tokens(hid_t f, size_t *n, int want_bits)
{
    hid_t d = H5Dopen2(f, "/tokens", H5P_DEFAULT);
    assert_true(d >= 0);
    hid_t t = H5Dget_type(d), s = H5Dget_space(d);
    assert_int_equal(H5Tget_class(t), H5T_INTEGER);
    assert_int_equal(H5Tget_sign(t), H5T_SGN_NONE);
    assert_int_equal(H5Tget_size(t) * 8, want_bits);
    assert_int_equal(H5Sget_simple_extent_ndims(s), 1);
    hsize_t dims;
    H5Sget_simple_extent_dims(s, &dims, NULL);
    *n = dims;
    uint32_t *buf = malloc((dims ? dims : 1) * sizeof *buf);
    if (dims) assert_true(H5Dread(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Sclose(s);
    H5Tclose(t);
    H5Dclose(d);
    return buf;
}

static hsize_t chunk_of_tokens(hid_t f)
{
    hid_t d = H5Dopen2(f, "/tokens", H5P_DEFAULT);
    hid_t p = H5Dget_create_plist(d);
    assert_int_equal(H5Pget_layout(p), H5D_CHUNKED);
    hsize_t c = 0;
    assert_int_equal(H5Pget_chunk(p, 1, &c), 1);
    H5Pclose(p);
    H5Dclose(d);
    return c;
}

static void shard_carries_the_format_attributes_and_the_tokens(void **state)
{
    uint32_t tok[1000];
    for (int i = 0; i < 1000; i++) tok[i] = (uint32_t)(i * 7 % 256);
    strata_shard_writer_opts o = byte_opts();
    write_shard(path_of("a.h5"), &o, tok, 1000);

    hid_t f = H5Fopen(path_of("a.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    size_t n;
    uint32_t *got = read_tokens(f, &n, 16);
    assert_int_equal(n, 1000);
    assert_memory_equal(got, tok, sizeof tok);
    free(got);
    hid_t d = H5Dopen2(f, "/tokens", H5P_DEFAULT);
    assert_int_equal(int_attr(d, "vocab_size"), 256);
    assert_int_equal(int_attr(d, "eot_token"), 0);
    assert_str_attr(d, "tokenizer", "byte");
    assert_str_attr(d, "format", "strata-tokens-1");
    H5Dclose(d);
    /* no document was started: no /doc_offsets */
    assert_int_equal(H5Lexists(f, "/doc_offsets", H5P_DEFAULT), 0);
    H5Fclose(f);
}

static void vocab_above_65536_is_stored_as_uint32(void **state)
{
    uint32_t tok[] = {0, 65535, 65536, 69999, 50256};
    strata_shard_writer_opts o = {.vocab_size = 70000, .eot_token = -1, .tokenizer = "gpt2"};
    write_shard(path_of("wide.h5"), &o, tok, 5);
    hid_t f = H5Fopen(path_of("wide.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    size_t n;
    uint32_t *got = read_tokens(f, &n, 32);
    assert_int_equal(n, 5);
    assert_memory_equal(got, tok, sizeof tok);
    free(got);
    hid_t d = H5Dopen2(f, "/tokens", H5P_DEFAULT);
    assert_int_equal(int_attr(d, "vocab_size"), 70000);
    assert_int_equal(int_attr(d, "eot_token"), -1);
    assert_str_attr(d, "tokenizer", "gpt2");
    H5Dclose(d);
    H5Fclose(f);
}

static void vocab_of_exactly_65536_still_fits_uint16(void **state)
{
    uint32_t tok[] = {65535, 1, 0};
    strata_shard_writer_opts o = {.vocab_size = 65536, .eot_token = 2, .tokenizer = "gpt2"};
    write_shard(path_of("edge.h5"), &o, tok, 3);
    hid_t f = H5Fopen(path_of("edge.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    size_t n;
    uint32_t *got = read_tokens(f, &n, 16);
    assert_int_equal(n, 3);
    assert_memory_equal(got, tok, sizeof tok);
    free(got);
    H5Fclose(f);
}

static void doc_offsets_mark_where_each_document_starts(void **state)
{
    strata_shard_writer_opts o = byte_opts();
    o.chunk_tokens = 8; /* documents cross chunk boundaries */
    strata_shard_writer *w;
    assert_int_equal(strata_shard_writer_open(&w, path_of("docs.h5"), &o).code, 0);
    uint32_t text[25];
    for (int i = 0; i < 25; i++) text[i] = 'a' + (uint32_t)i;
    assert_int_equal(strata_shard_writer_doc(w).code, 0); /* at 0 */
    assert_int_equal(strata_shard_writer_append(w, text, 10).code, 0);
    assert_int_equal(strata_shard_writer_doc(w).code, 0); /* at 10, an empty document */
    assert_int_equal(strata_shard_writer_doc(w).code, 0); /* at 10 */
    assert_int_equal(strata_shard_writer_append(w, text, 15).code, 0);
    assert_int_equal(strata_shard_writer_doc(w).code, 0); /* at 25 */
    assert_int_equal(strata_shard_writer_append(w, text, 1).code, 0);
    assert_int_equal(strata_shard_writer_close(w).code, 0);

    hid_t f = H5Fopen(path_of("docs.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "/doc_offsets", H5P_DEFAULT);
    assert_true(d >= 0);
    hid_t t = H5Dget_type(d), s = H5Dget_space(d);
    assert_true(H5Tequal(t, H5T_STD_U64LE) > 0);
    hsize_t n;
    H5Sget_simple_extent_dims(s, &n, NULL);
    assert_int_equal(n, 4);
    uint64_t off[4];
    assert_true(H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off) >= 0);
    assert_int_equal(off[0], 0);
    assert_int_equal(off[1], 10);
    assert_int_equal(off[2], 10);
    assert_int_equal(off[3], 25);
    H5Sclose(s);
    H5Tclose(t);
    H5Dclose(d);
    size_t nt;
    uint32_t *got = read_tokens(f, &nt, 16);
    assert_int_equal(nt, 26);
    assert_int_equal(got[9], 'j');
    assert_int_equal(got[10], 'a');
    assert_int_equal(got[25], 'a');
    free(got);
    H5Fclose(f);
}

static void tokens_appended_in_odd_pieces_span_many_chunks_intact(void **state)
{
    enum { N = 12345 };
    static uint32_t tok[N];
    for (int i = 0; i < N; i++) tok[i] = (uint32_t)((i * 2654435761u) >> 24);
    strata_shard_writer_opts o = byte_opts();
    o.chunk_tokens = 100;
    strata_shard_writer *w;
    assert_int_equal(strata_shard_writer_open(&w, path_of("chunks.h5"), &o).code, 0);
    size_t done = 0, step = 1;
    while (done < N) {
        size_t k = step < N - done ? step : N - done;
        assert_int_equal(strata_shard_writer_append(w, tok + done, k).code, 0);
        done += k;
        step = step * 3 % 701 + 1; /* 1, 4, 13, 40, 121, 364, ... */
    }
    assert_int_equal(strata_shard_writer_tokens(w), N);
    assert_int_equal(strata_shard_writer_close(w).code, 0);

    hid_t f = H5Fopen(path_of("chunks.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_int_equal(chunk_of_tokens(f), 100);
    size_t n;
    uint32_t *got = read_tokens(f, &n, 16);
    assert_int_equal(n, N);
    assert_memory_equal(got, tok, sizeof tok);
    free(got);
    H5Fclose(f);
}

static void shard_smaller_than_a_chunk_gets_a_chunk_of_its_own_size(void **state)
{
    uint32_t tok[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    strata_shard_writer_opts o = byte_opts(); /* default chunk: 1 Mi tokens */
    write_shard(path_of("small.h5"), &o, tok, 10);
    hid_t f = H5Fopen(path_of("small.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_int_equal(chunk_of_tokens(f), 10);
    H5Fclose(f);
    struct stat st;
    assert_int_equal(stat(path_of("small.h5"), &st), 0);
    assert_true(st.st_size < 64 * 1024);
}

static void deflate_level_is_applied_and_data_survives(void **state)
{
    enum { N = 100000 };
    static uint32_t tok[N];
    for (int i = 0; i < N; i++) tok[i] = (uint32_t)(i % 50);
    strata_shard_writer_opts o = byte_opts();
    o.deflate = 6;
    o.chunk_tokens = 4096;
    write_shard(path_of("z.h5"), &o, tok, N);
    hid_t f = H5Fopen(path_of("z.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "/tokens", H5P_DEFAULT);
    hid_t p = H5Dget_create_plist(d);
    int has_deflate = 0;
    for (int i = 0; i < H5Pget_nfilters(p); i++) {
        unsigned flags, cd[4];
        size_t ncd = 4;
        H5Z_filter_t id = H5Pget_filter2(p, (unsigned)i, &flags, &ncd, cd, 0, NULL, NULL);
        if (id == H5Z_FILTER_DEFLATE) {
            has_deflate = 1;
            assert_int_equal(cd[0], 6);
        }
    }
    assert_true(has_deflate);
    H5Pclose(p);
    H5Dclose(d);
    size_t n;
    uint32_t *got = read_tokens(f, &n, 16);
    assert_int_equal(n, N);
    assert_memory_equal(got, tok, sizeof tok);
    free(got);
    H5Fclose(f);
    struct stat st;
    stat(path_of("z.h5"), &st);
    assert_true(st.st_size < N); /* far below the 200 kB of raw uint16 */
}

static void empty_shard_has_zero_tokens_and_all_attributes(void **state)
{
    strata_shard_writer_opts o = byte_opts();
    write_shard(path_of("empty.h5"), &o, NULL, 0);
    hid_t f = H5Fopen(path_of("empty.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    size_t n;
    free(read_tokens(f, &n, 16));
    assert_int_equal(n, 0);
    hid_t d = H5Dopen2(f, "/tokens", H5P_DEFAULT);
    assert_str_attr(d, "format", "strata-tokens-1");
    H5Dclose(d);
    H5Fclose(f);
}

static void file_appears_under_its_name_only_when_closed(void **state)
{
    int before = files_in_dir();
    strata_shard_writer_opts o = byte_opts();
    strata_shard_writer *w;
    assert_int_equal(strata_shard_writer_open(&w, path_of("late.h5"), &o).code, 0);
    uint32_t tok[3] = {1, 2, 3};
    assert_int_equal(strata_shard_writer_append(w, tok, 3).code, 0);
    assert_int_equal(access(path_of("late.h5"), F_OK), -1);
    assert_int_equal(files_in_dir(), before + 1); /* the temporary file */
    assert_int_equal(strata_shard_writer_close(w).code, 0);
    assert_int_equal(access(path_of("late.h5"), F_OK), 0);
    assert_int_equal(files_in_dir(), before + 1);
}

static void closing_replaces_an_existing_shard_whole(void **state)
{
    strata_shard_writer_opts o = byte_opts();
    uint32_t old[5] = {1, 1, 1, 1, 1}, new[2] = {9, 8};
    write_shard(path_of("re.h5"), &o, old, 5);
    write_shard(path_of("re.h5"), &o, new, 2);
    hid_t f = H5Fopen(path_of("re.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
    size_t n;
    uint32_t *got = read_tokens(f, &n, 16);
    assert_int_equal(n, 2);
    assert_int_equal(got[0], 9);
    assert_int_equal(got[1], 8);
    free(got);
    H5Fclose(f);
}

static void token_not_below_vocab_size_is_refused_and_nothing_is_written(void **state)
{
    int before = files_in_dir();
    strata_shard_writer_opts o = byte_opts();
    strata_shard_writer *w;
    assert_int_equal(strata_shard_writer_open(&w, path_of("bad.h5"), &o).code, 0);
    uint32_t tok[4] = {1, 2, 256, 3};
    strata_err e = strata_shard_writer_append(w, tok, 4);
    assert_int_not_equal(e.code, 0);
    assert_non_null(strstr(e.msg, "bad.h5"));
    assert_non_null(strstr(e.msg, "256"));
    /* later calls keep failing, and close discards the file */
    assert_int_not_equal(strata_shard_writer_doc(w).code, 0);
    assert_int_not_equal(strata_shard_writer_close(w).code, 0);
    assert_int_equal(access(path_of("bad.h5"), F_OK), -1);
    assert_int_equal(files_in_dir(), before);
}

static void bad_options_are_refused_naming_the_file(void **state)
{
    strata_shard_writer *w = NULL;
    strata_shard_writer_opts o = byte_opts();
    o.eot_token = 256;
    strata_err e = strata_shard_writer_open(&w, path_of("o.h5"), &o);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "o.h5"));
    assert_non_null(strstr(e.msg, "eot_token"));
    o = byte_opts();
    o.deflate = 10;
    assert_int_equal(strata_shard_writer_open(&w, path_of("o.h5"), &o).code, STRATA_EINPUT);
    o = byte_opts();
    o.tokenizer = "";
    assert_int_equal(strata_shard_writer_open(&w, path_of("o.h5"), &o).code, STRATA_EINPUT);
    o = byte_opts();
    o.vocab_size = 0;
    assert_int_equal(strata_shard_writer_open(&w, path_of("o.h5"), &o).code, STRATA_EINPUT);
    assert_null(w);
    o = byte_opts();
    e = strata_shard_writer_open(&w, "/nonexistent-dir/x.h5", &o);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "/nonexistent-dir/x.h5"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(shard_carries_the_format_attributes_and_the_tokens),
        cmocka_unit_test(vocab_above_65536_is_stored_as_uint32),
        cmocka_unit_test(vocab_of_exactly_65536_still_fits_uint16),
        cmocka_unit_test(doc_offsets_mark_where_each_document_starts),
        cmocka_unit_test(tokens_appended_in_odd_pieces_span_many_chunks_intact),
        cmocka_unit_test(shard_smaller_than_a_chunk_gets_a_chunk_of_its_own_size),
        cmocka_unit_test(deflate_level_is_applied_and_data_survives),
        cmocka_unit_test(empty_shard_has_zero_tokens_and_all_attributes),
        cmocka_unit_test(file_appears_under_its_name_only_when_closed),
        cmocka_unit_test(closing_replaces_an_existing_shard_whole),
        cmocka_unit_test(token_not_below_vocab_size_is_refused_and_nothing_is_written),
        cmocka_unit_test(bad_options_are_refused_naming_the_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
