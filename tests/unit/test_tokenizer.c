/* test_tokenizer.c — the byte tokenizer and GPT-2's BPE: exact round trips on
 * any bytes, and ids equal to the reference's on real English and real code.
 *
 * Needs GPT-2's files: $STRATA_GPT2_DIR, else tests/fixtures/gpt2-tokenizer
 * under $STRATA_SOURCE_DIR (tests/fetch_gpt2_tokenizer.sh fetches them). The
 * expected ids are tests/fixtures/gpt2_ids.h5 (English prose, C headers and
 * a text of unicode corner cases, each stored with its ids), made once with
 * the JavaScript reference by tests/fixtures/make_gpt2_token_fixtures.sh. */
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

#include "strata/tokenizer.h"

static strata_tokenizer *gpt2;
static char gpt2_dir[4096];
static char fixture[4096];

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static int setup(void **state)
{
    const char *src = getenv("STRATA_SOURCE_DIR");
    const char *dir = getenv("STRATA_GPT2_DIR");
    if (dir && *dir)
        snprintf(gpt2_dir, sizeof gpt2_dir, "%s", dir);
    else
        snprintf(gpt2_dir, sizeof gpt2_dir, "%s/tests/fixtures/gpt2-tokenizer", src ? src : ".");
    snprintf(fixture, sizeof fixture, "%s/tests/fixtures/gpt2_ids.h5", src ? src : ".");
    char enc[4200], bpe[4200];
    snprintf(enc, sizeof enc, "%s/encoder.json", gpt2_dir);
    snprintf(bpe, sizeof bpe, "%s/vocab.bpe", gpt2_dir);
    if (access(enc, R_OK) || access(bpe, R_OK)) {
        fprintf(stderr,
                "test_tokenizer: GPT-2's encoder.json and vocab.bpe are not in %s; run "
                "tests/fetch_gpt2_tokenizer.sh (or set STRATA_GPT2_DIR)\n",
                gpt2_dir);
        return -1;
    }
    strata_err e = strata_tokenizer_gpt2(&gpt2, enc, bpe);
    if (e.code) {
        fprintf(stderr, "test_tokenizer: %s\n", e.msg);
        return -1;
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return 0;
}

static int teardown(void **state)
{
    strata_tokenizer_free(gpt2);
    return 0;
}

/* encode, check every id is in the vocabulary, decode, compare. */
static void assert_round_trip(strata_tokenizer *t, const uint8_t *text, size_t n)
{
    strata_tokens ids = {0};
    strata_err e = strata_tokenizer_encode(t, text, n, 0, NULL, &ids);
    assert_int_equal(e.code, 0);
    for (size_t i = 0; i < ids.n; i++)
        assert_true(ids.ids[i] < (uint32_t)strata_tokenizer_vocab_size(t));
    uint8_t *back;
    size_t len;
    e = strata_tokenizer_decode(t, ids.ids, ids.n, &back, &len);
    assert_int_equal(e.code, 0);
    assert_int_equal(len, n);
    if (n) assert_memory_equal(back, text, n);
    free(back);
    strata_tokens_free(&ids);
}

static void byte_tokenizer_maps_each_byte_to_its_value_and_back(void **state)
{
    strata_tokenizer *t;
    assert_int_equal(strata_tokenizer_byte(&t).code, 0);
    assert_int_equal(strata_tokenizer_vocab_size(t), 256);
    assert_int_equal(strata_tokenizer_eot(t), 0);
    assert_string_equal(strata_tokenizer_name(t), "byte");
    uint8_t all[256];
    for (int i = 0; i < 256; i++) all[i] = (uint8_t)(255 - i);
    strata_tokens ids = {0};
    assert_int_equal(strata_tokenizer_encode(t, all, 256, 0, NULL, &ids).code, 0);
    assert_int_equal(ids.n, 256);
    for (int i = 0; i < 256; i++) assert_int_equal(ids.ids[i], 255 - i);
    strata_tokens_free(&ids);
    assert_round_trip(t, all, 256);
    uint32_t bad = 256;
    uint8_t *out;
    size_t len;
    assert_int_equal(strata_tokenizer_decode(t, &bad, 1, &out, &len).code, STRATA_EINPUT);
    strata_tokenizer_free(t);
}

static void gpt2_has_the_known_vocabulary_and_eot(void **state)
{
    assert_int_equal(strata_tokenizer_vocab_size(gpt2), 50257);
    assert_int_equal(strata_tokenizer_eot(gpt2), 50256);
    assert_string_equal(strata_tokenizer_name(gpt2), "gpt2");
    size_t len;
    const uint8_t *b = strata_tokenizer_token_bytes(gpt2, 50256, &len);
    assert_int_equal(len, 13);
    assert_memory_equal(b, "<|endoftext|>", 13);
    assert_null(strata_tokenizer_token_bytes(gpt2, 50257, &len));
}

static void gpt2_encodes_well_known_strings_to_their_ids(void **state)
{
    /* ids as the reference gives them */
    static const struct {
        const char *text;
        uint32_t ids[8];
        size_t n;
    } cases[] = {
        {"Hello world", {15496, 995}, 2},
        {"Hello, world!", {15496, 11, 995, 0}, 4},
        {" the", {262}, 1},
        {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}, 7}, /* text, never EOT */
        {"I'm", {40, 1101}, 2},
        {"\n\n", {628}, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        strata_tokens ids = {0};
        assert_int_equal(
            strata_tokenizer_encode(gpt2, cases[c].text, strlen(cases[c].text), 0, NULL, &ids).code,
            0);
        assert_int_equal(ids.n, cases[c].n);
        for (size_t i = 0; i < ids.n; i++) assert_int_equal(ids.ids[i], cases[c].ids[i]);
        strata_tokens_free(&ids);
    }
}

static void gpt2_round_trips_emoji_invalid_utf8_and_odd_whitespace(void **state)
{
    static const char *cases[] = {
        "",
        "a",
        "\xF0\x9F\x98\x80 smile \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD thumbs", /* emoji, skin tone */
        "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", /* ZWJ family */
        "\xff\xfe\xfd bytes that are never UTF-8",
        "truncated \xE2\x82 euro and \xE2\x82\xAC whole",
        "overlong \xC0\xAF slash, surrogate \xED\xA0\x80, beyond \xF4\x90\x80\x80",
        "lone continuation \x80\x80\x80 and lead at end \xF0",
        "tabs\t\tand\r\nCRLF  \n   \n\x0b\x0c vertical",
        "nbsp\xC2\xA0here, bom\xEF\xBB\xBFthere, nel\xC2\x85, ideographic\xE3\x80\x80space",
        "numbers 1234567890 \xD9\xA3\xD9\xA4 \xE2\x85\xA0\xE2\x85\xA1",
        "Gr\xC3\xBC\xC3\x9F Gott, \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E, \xD0\xBF\xD1\x80\xD0\xB8",
        "it's they're we've I'm you'll he'd 'S 'T",
        "                                                                        x",
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        assert_round_trip(gpt2, (const uint8_t *)cases[c], strlen(cases[c]));
    /* NUL bytes inside text */
    static const uint8_t nul[] = {'a', 0, 'b', 0, 0, ' ', 0xC3, 0};
    assert_round_trip(gpt2, nul, sizeof nul);
}

/* Random strings from three worlds: any byte, mostly-ASCII prose, and random
 * valid UTF-8 across all planes. */
static size_t random_text(uint8_t *buf, size_t cap)
{
    size_t n = rnd() % cap;
    int kind = (int)(rnd() % 3);
    size_t i = 0;
    while (i < n) {
        uint64_t r = rnd();
        if (kind == 0) {
            buf[i++] = (uint8_t)r;
        } else if (kind == 1) {
            static const char alpha[] = "etaoin shrdlu ETAOIN,.'!?\n\t0123456789 ";
            buf[i++] = (uint8_t)alpha[r % (sizeof alpha - 1)];
        } else {
            uint32_t cp = (uint32_t)(r % 4 == 0 ? r % 0x110000 : r % 0x800);
            if (cp >= 0xD800 && cp < 0xE000) cp = 'x';
            if (cp < 0x80 && i + 1 <= n) {
                buf[i++] = (uint8_t)cp;
            } else if (cp < 0x800 && i + 2 <= n) {
                buf[i++] = (uint8_t)(0xC0 | cp >> 6);
                buf[i++] = (uint8_t)(0x80 | (cp & 0x3F));
            } else if (cp >= 0x800 && cp < 0x10000 && i + 3 <= n) {
                buf[i++] = (uint8_t)(0xE0 | cp >> 12);
                buf[i++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
                buf[i++] = (uint8_t)(0x80 | (cp & 0x3F));
            } else if (cp >= 0x10000 && i + 4 <= n) {
                buf[i++] = (uint8_t)(0xF0 | cp >> 18);
                buf[i++] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
                buf[i++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
                buf[i++] = (uint8_t)(0x80 | (cp & 0x3F));
            } else {
                buf[i++] = ' ';
            }
        }
    }
    return n;
}

static void gpt2_round_trips_thousands_of_random_byte_strings(void **state)
{
    static uint8_t buf[3000];
    for (int k = 0; k < 3000; k++) {
        size_t n = random_text(buf, sizeof buf);
        assert_round_trip(gpt2, buf, n);
    }
}

/* Encodes text in blocks of random sizes, as `strata pack` does, carrying
 * the unconsumed tail into the next block; returns the ids. */
static strata_tokens encode_in_blocks(const uint8_t *text, size_t n, size_t max_block)
{
    strata_tokens ids = {0};
    uint8_t *buf = malloc(n + 1);
    size_t have = 0, pos = 0;
    while (pos < n || have) {
        size_t add = 1 + rnd() % max_block;
        if (add > n - pos) add = n - pos;
        memcpy(buf + have, text + pos, add);
        have += add;
        pos += add;
        int more = pos < n;
        size_t used = 0;
        assert_int_equal(strata_tokenizer_encode(gpt2, buf, have, more, &used, &ids).code, 0);
        assert_true(used <= have);
        memmove(buf, buf + used, have - used);
        have -= used;
        if (!more) assert_int_equal(have, 0);
    }
    free(buf);
    return ids;
}

static void gpt2_encoding_in_blocks_equals_encoding_at_once(void **state)
{
    static uint8_t buf[5000];
    for (int k = 0; k < 300; k++) {
        size_t n = random_text(buf, sizeof buf);
        strata_tokens whole = {0};
        assert_int_equal(strata_tokenizer_encode(gpt2, buf, n, 0, NULL, &whole).code, 0);
        strata_tokens blocks = encode_in_blocks(buf, n, 1 + rnd() % 200);
        assert_int_equal(blocks.n, whole.n);
        if (whole.n) assert_memory_equal(blocks.ids, whole.ids, whole.n * sizeof *whole.ids);
        strata_tokens_free(&whole);
        strata_tokens_free(&blocks);
    }
}

static void *read_dataset(hid_t f, const char *name, hid_t type, size_t elem, size_t *n)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0)
        fail_msg("%s: no dataset %s (re-run tests/fixtures/make_gpt2_token_fixtures.sh)", fixture,
                 name);
    hid_t s = H5Dget_space(d);
    hsize_t dims;
    H5Sget_simple_extent_dims(s, &dims, NULL);
    void *buf = malloc(dims * elem + 1);
    assert_non_null(buf);
    assert_true(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Sclose(s);
    H5Dclose(d);
    *n = dims;
    return buf;
}

/* Encodes the fixture's corpus and compares id for id with the reference. */
static void assert_ids_equal_reference(const char *corpus, size_t min_bytes)
{
    hid_t f = H5Fopen(fixture, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        fail_msg("cannot open %s (made by tests/fixtures/make_gpt2_token_fixtures.sh)", fixture);
    char name[64];
    size_t n_text, n_ref;
    snprintf(name, sizeof name, "/%s/text", corpus);
    uint8_t *text = read_dataset(f, name, H5T_NATIVE_UINT8, 1, &n_text);
    snprintf(name, sizeof name, "/%s/ids", corpus);
    uint16_t *ref = read_dataset(f, name, H5T_NATIVE_UINT16, 2, &n_ref);
    H5Fclose(f);
    assert_true(n_text >= min_bytes);

    strata_tokens ids = {0};
    assert_int_equal(strata_tokenizer_encode(gpt2, text, n_text, 0, NULL, &ids).code, 0);
    size_t first_diff = 0;
    while (first_diff < ids.n && first_diff < n_ref && ids.ids[first_diff] == ref[first_diff])
        first_diff++;
    if (first_diff < n_ref || ids.n != n_ref)
        fail_msg("%s: %zu ids, reference %zu; first difference at id %zu (%u vs %u)", corpus, ids.n,
                 n_ref, first_diff, first_diff < ids.n ? ids.ids[first_diff] : 0,
                 first_diff < n_ref ? ref[first_diff] : 0);

    /* the same ids when fed in blocks, as strata pack does */
    strata_tokens blocks = encode_in_blocks(text, n_text, 1 << 16);
    assert_int_equal(blocks.n, n_ref);
    for (size_t i = 0; i < n_ref; i++)
        if (blocks.ids[i] != ref[i]) fail_msg("%s in blocks: id %zu differs", corpus, i);
    strata_tokens_free(&blocks);

    assert_round_trip(gpt2, text, n_text);
    strata_tokens_free(&ids);
    free(text);
    free(ref);
}

static void gpt2_ids_equal_the_reference_on_megabytes_of_english(void **state)
{
    assert_ids_equal_reference("english", 2000000);
}

static void gpt2_ids_equal_the_reference_on_c_source_code(void **state)
{
    assert_ids_equal_reference("code", 1000000);
}

static void
gpt2_ids_equal_the_reference_on_every_kind_of_unicode_whitespace_and_script(void **state)
{
    assert_ids_equal_reference("unicode", 200000);
}

static const char *scratch_file(const char *name, const char *content)
{
    static char path[2][512];
    static int k;
    char *p = path[k ^= 1];
    snprintf(p, sizeof path[0], "%s/strata-tok-%ld-%s",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (long)getpid(), name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
    return p;
}

static void bad_tokenizer_files_are_reported_with_file_and_problem(void **state)
{
    char enc[4200], bpe[4200];
    snprintf(enc, sizeof enc, "%s/encoder.json", gpt2_dir);
    snprintf(bpe, sizeof bpe, "%s/vocab.bpe", gpt2_dir);
    strata_tokenizer *t = NULL;

    strata_err e = strata_tokenizer_gpt2(&t, "/nonexistent/encoder.json", bpe);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "/nonexistent/encoder.json"));
    assert_null(t);

    e = strata_tokenizer_gpt2(&t, enc, "/nonexistent/vocab.bpe");
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "/nonexistent/vocab.bpe"));

    const char *bad = scratch_file("bad.json", "{\"a\": 1,\n \"b\": }\n");
    e = strata_tokenizer_gpt2(&t, bad, bpe);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, bad));
    assert_non_null(strstr(e.msg, ":2:")); /* the line */
    unlink(bad);

    bad = scratch_file("list.json", "[1, 2, 3]");
    e = strata_tokenizer_gpt2(&t, bad, bpe);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "JSON object"));
    unlink(bad);

    bad = scratch_file("three.bpe", "#version: 0.2\n\xC4\xA0 t\nx y z\n");
    e = strata_tokenizer_gpt2(&t, enc, bad);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, bad));
    assert_non_null(strstr(e.msg, ":3:"));
    unlink(bad);

    bad = scratch_file("unknown.bpe", "#version: 0.2\nqqqqqqqqqqqqq zzzzzzzzzzz\n");
    e = strata_tokenizer_gpt2(&t, enc, bad);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, ":2:"));
    assert_non_null(strstr(e.msg, "not in encoder.json"));
    unlink(bad);

    bad = scratch_file("noversion.bpe", "a b\n");
    e = strata_tokenizer_gpt2(&t, enc, bad);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, ":1:"));
    unlink(bad);
    assert_null(t);
}

static void gpt2_decode_refuses_ids_outside_the_vocabulary(void **state)
{
    uint32_t ids[] = {15496, 50257};
    uint8_t *out = (uint8_t *)"x";
    size_t len = 7;
    strata_err e = strata_tokenizer_decode(gpt2, ids, 2, &out, &len);
    assert_int_equal(e.code, STRATA_EINPUT);
    assert_non_null(strstr(e.msg, "50257"));
    assert_null(out);
    assert_int_equal(len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(byte_tokenizer_maps_each_byte_to_its_value_and_back),
        cmocka_unit_test(gpt2_has_the_known_vocabulary_and_eot),
        cmocka_unit_test(gpt2_encodes_well_known_strings_to_their_ids),
        cmocka_unit_test(gpt2_round_trips_emoji_invalid_utf8_and_odd_whitespace),
        cmocka_unit_test(gpt2_round_trips_thousands_of_random_byte_strings),
        cmocka_unit_test(gpt2_encoding_in_blocks_equals_encoding_at_once),
        cmocka_unit_test(gpt2_ids_equal_the_reference_on_megabytes_of_english),
        cmocka_unit_test(gpt2_ids_equal_the_reference_on_c_source_code),
        cmocka_unit_test(
            gpt2_ids_equal_the_reference_on_every_kind_of_unicode_whitespace_and_script),
        cmocka_unit_test(bad_tokenizer_files_are_reported_with_file_and_problem),
        cmocka_unit_test(gpt2_decode_refuses_ids_outside_the_vocabulary),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
