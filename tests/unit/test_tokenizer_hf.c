/* test_tokenizer_hf.c — Hugging Face tokenizer.json: a tiny file of every
 * supported part encodes, decodes and round-trips any bytes; damaged files
 * (flipped bytes, truncations of the tiny file and, when fetched, of a real
 * one) give an error value or load, never a crash.
 *
 * The real file is tests/fixtures/hf-tokenizers/llama2/tokenizer.json under
 * $STRATA_SOURCE_DIR (tests/fetch_hf_tokenizers.sh); without it that part is
 * skipped with a note. Run under ASan too (-DSTRATA_SANITIZE=ON). */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/tokenizer.h"

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

static char tiny_path[256], tmp_path[256];
static char *tiny_json;

/* SentencePiece-style: <unk> <s> </s>, 256 byte tokens, a few words and
 * merges; Prepend+Replace normaliser, NFC; Split (regex, Isolated) then
 * Digits; byte fallback; an added token; the Llama 2 decoder chain; BOS from
 * the template. */
static char *make_tiny(void)
{
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap);
#define PUT(...) n += (size_t)snprintf(s + n, cap - n, __VA_ARGS__)
    PUT("{\"version\": \"1.0\", \"added_tokens\": ["
        "{\"id\": 0, \"content\": \"<unk>\", \"special\": true, \"normalized\": false},"
        "{\"id\": 1, \"content\": \"<s>\", \"special\": true, \"normalized\": false},"
        "{\"id\": 2, \"content\": \"</s>\", \"special\": true, \"normalized\": false},"
        "{\"id\": 270, \"content\": \"<|x|>\", \"special\": false, \"normalized\": false,"
        " \"lstrip\": false, \"rstrip\": false, \"single_word\": false}],\n");
    PUT("\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"},"
        "{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"},"
        "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]},\n");
    PUT("\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\u2581?\\\\p{L}+|\\\\p{N}+|\\\\s+\"},"
        " \"behavior\": \"Isolated\", \"invert\": false},"
        "{\"type\": \"Digits\", \"individual_digits\": true}]},\n");
    PUT("\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": ["
        "{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", "
        "\"type_id\": 0}}], \"pair\": [], \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", "
        "\"ids\": [1], \"tokens\": [\"<s>\"]}}},\n");
    PUT("\"decoder\": {\"type\": \"Sequence\", \"decoders\": ["
        "{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"},"
        "{\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"},"
        "{\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},\n");
    PUT("\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\","
        " \"fuse_unk\": true, \"byte_fallback\": true, \"vocab\": {"
        "\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2");
    for (int b = 0; b < 256; b++) PUT(", \"<0x%02X>\": %d", b, 3 + b);
    PUT(", \"\\u2581\": 259, \"a\": 260, \"b\": 261, \"c\": 262, \"ab\": 263, \"\\u2581ab\": 264,"
        " \"1\": 265, \"2\": 266, \"abc\": 267, \"\\u2581c\": 268, \"\\u00e9\": 269},"
        " \"merges\": [\"a b\", [\"\\u2581\", \"ab\"], \"ab c\", \"\\u2581 c\"]}}\n");
#undef PUT
    return s;
}

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int bad = fwrite(p, 1, n, f) != n;
    bad |= fclose(f);
    return bad ? -1 : 0;
}

static int setup(void **state)
{
    snprintf(tiny_path, sizeof tiny_path, "/tmp/strata-hf-tiny-%ld.json", (long)getpid());
    snprintf(tmp_path, sizeof tmp_path, "/tmp/strata-hf-fuzz-%ld.json", (long)getpid());
    tiny_json = make_tiny();
    return write_file(tiny_path, tiny_json, strlen(tiny_json));
}

static int teardown(void **state)
{
    if (!getenv("STRATA_KEEP_TINY")) unlink(tiny_path);
    unlink(tmp_path);
    free(tiny_json);
    return 0;
}

static void encode_all(strata_tokenizer *t, const void *s, size_t n, strata_tokens *out)
{
    out->n = 0;
    strata_err e = strata_tokenizer_encode(t, s, n, 0, NULL, out);
    assert_int_equal(e.code, 0);
}

static void tiny_file_encodes_as_hf_does(void **state)
{
    strata_tokenizer *t;
    strata_err e = strata_tokenizer_hf(&t, tiny_path);
    assert_int_equal(e.code, 0);
    assert_string_equal(strata_tokenizer_name(t), "hf");
    assert_int_equal(strata_tokenizer_vocab_size(t), 271);
    assert_int_equal(strata_tokenizer_bos(t), 1);
    assert_int_equal(strata_tokenizer_eot(t), -1);
    assert_int_equal(strlen(strata_tokenizer_hash(t)), 64);
    strata_tokens ids = {0};
    /* "▁ab" merges whole, "▁c" too; "12" splits into digits; "<|x|>" is cut
     * out first, and the text after it is a new segment (Prepend again); "é"
     * written decomposed is composed by NFC; "d" falls back to <0x64>. */
    const char text[] = "ab c 12<|x|>ab e\xcc\x81"
                        "d";
    encode_all(t, text, strlen(text), &ids);
    const uint32_t want[] = {264, 268, 259, 265, 266, 270, 264, 259, 269, 3 + 'd'};
    assert_int_equal(ids.n, sizeof want / sizeof *want);
    for (size_t i = 0; i < ids.n; i++) assert_int_equal(ids.ids[i], want[i]);
    uint8_t *back;
    size_t len;
    e = strata_tokenizer_decode(t, ids.ids, ids.n, &back, &len);
    assert_int_equal(e.code, 0);
    /* the decoder strips one leading space; the segment after <|x|> keeps its ▁ */
    assert_string_equal((char *)back, "ab c 12<|x|> ab \xc3\xa9"
                                      "d");
    free(back);
    strata_tokens_free(&ids);
    strata_tokenizer_free(t);
}

static void any_bytes_round_trip_in_blocks_and_whole(void **state)
{
    strata_tokenizer *t;
    strata_err e = strata_tokenizer_hf(&t, tiny_path);
    assert_int_equal(e.code, 0);
    strata_tokens whole = {0}, blocks = {0};
    uint8_t text[4096];
    static const char alphabet[] = "abc12 \n\t\xe2\x96\xc3\xa9\x80\xff<|x";
    for (int round = 0; round < 300; round++) {
        size_t n = rnd() % sizeof text;
        for (size_t i = 0; i < n; i++) text[i] = (uint8_t)alphabet[rnd() % (sizeof alphabet - 1)];
        /* no "▁" (it decodes to a space), no U+2000 or U+2A.. (NFC changes
         * some of them: U+2000 is U+2002 in NFC) and no added-token text */
        for (size_t i = 0; i + 1 < n; i++)
            if (text[i] == 0xe2 && (text[i + 1] == 0x80 || text[i + 1] == 0xa9)) text[i] = 'a';
        for (size_t i = 0; i + 4 < n; i++)
            if (!memcmp(text + i, "<|x|>", 5) || !memcmp(text + i, "<s>", 3) ||
                !memcmp(text + i, "</s>", 4))
                text[i] = 'b';
        if (n && text[0] == ' ') text[0] = 'c'; /* Strip eats one leading space more */
        encode_all(t, text, n, &whole);
        /* the same text in random blocks gives the same ids */
        blocks.n = 0;
        size_t at = 0;
        while (at < n) {
            size_t k = 1 + rnd() % 64, used = 0;
            if (k > n - at) k = n - at;
            e = strata_tokenizer_encode(t, text + at, k, 1, &used, &blocks);
            assert_int_equal(e.code, 0);
            assert_int_equal(used, k);
            at += k;
        }
        e = strata_tokenizer_encode(t, "", 0, 0, NULL, &blocks);
        assert_int_equal(e.code, 0);
        assert_int_equal(blocks.n, whole.n);
        assert_memory_equal(blocks.ids, whole.ids, whole.n * sizeof *whole.ids);
        uint8_t *back;
        size_t len;
        e = strata_tokenizer_decode(t, whole.ids, whole.n, &back, &len);
        assert_int_equal(e.code, 0);
        /* NFC composes e + U+0301; the alphabet has no combining marks, so bytes come back */
        if (len != n || memcmp(back, text, n)) write_file("/tmp/strata-hf-fail.bin", text, n);
        assert_int_equal(len, n);
        assert_memory_equal(back, text, n);
        free(back);
    }
    strata_tokens_free(&whole);
    strata_tokens_free(&blocks);
    strata_tokenizer_free(t);
}

/* Loads one damaged variant: an error value of one line (STRATA_EINPUT for
 * anything about the file), or a tokenizer that encodes and decodes. */
static void load_variant(const uint8_t *p, size_t n)
{
    assert_int_equal(write_file(tmp_path, p, n), 0);
    strata_tokenizer *t = NULL;
    strata_err e = strata_tokenizer_hf(&t, tmp_path);
    if (e.code) {
        assert_null(t);
        assert_true(e.code == STRATA_EINPUT || e.code == STRATA_EFAIL);
        assert_true(strlen(e.msg) > 0);
        assert_null(strchr(e.msg, '\n'));
        return;
    }
    strata_tokens ids = {0};
    const char text[] = "Hello wörld 123 <s> ab\xff\xfe c\n\n";
    e = strata_tokenizer_encode(t, text, sizeof text - 1, 0, NULL, &ids);
    if (!e.code) {
        uint8_t *back = NULL;
        size_t len;
        e = strata_tokenizer_decode(t, ids.ids, ids.n, &back, &len);
        free(back);
    }
    strata_tokens_free(&ids);
    strata_tokenizer_free(t);
}

static void fuzz(const uint8_t *orig, size_t n, int flips, int truncations)
{
    uint8_t *p = malloc(n);
    for (int i = 0; i < flips; i++) {
        memcpy(p, orig, n);
        int k = 1 + (int)(rnd() % 3);
        for (int j = 0; j < k; j++) {
            size_t at = rnd() % n;
            /* structural bytes most of the time: they change meaning, not just a name */
            static const char pick[] = "{}[]\":,0123456789 \\tfn";
            p[at] = rnd() % 2 ? (uint8_t)pick[rnd() % (sizeof pick - 1)] : (uint8_t)rnd();
        }
        load_variant(p, n);
    }
    for (int i = 0; i < truncations; i++) load_variant(orig, rnd() % n);
    free(p);
}

static void damaged_tiny_files_give_errors_not_crashes(void **state)
{
    fuzz((const uint8_t *)tiny_json, strlen(tiny_json), 3000, 300);
}

static void damaged_real_files_give_errors_not_crashes(void **state)
{
    const char *src = getenv("STRATA_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/hf-tokenizers/llama2/tokenizer.json",
             src ? src : ".");
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr,
                "test_tokenizer_hf: %s not fetched (tests/fetch_hf_tokenizers.sh); "
                "real-file fuzzing skipped\n",
                path);
        skip();
    }
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    rewind(f);
    uint8_t *p = malloc(n);
    assert_int_equal(fread(p, 1, n, f), n);
    fclose(f);
    fuzz(p, n, 30, 10);
    free(p);
}

static void unsupported_models_are_refused_by_name(void **state)
{
    static const char *const files[][2] = {
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}", "\"WordPiece\""},
        {"{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", "\"Unigram\""},
        {"{\"model\": {\"type\": \"WordLevel\", \"vocab\": {\"a\": 0}}}", "\"WordLevel\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], "
         "\"dropout\": 0.1}}",
         "model.dropout"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], "
         "\"continuing_subword_prefix\": \"##\"}}",
         "continuing_subword_prefix"},
        {"{\"decoder\": {\"type\": \"WordPiece\"}, \"model\": {\"type\": \"BPE\", \"vocab\": "
         "{\"a\": 0}, \"merges\": []}}",
         "decoder: decoder type \"WordPiece\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
         "model.merges[0]: token \"b\" is not in model.vocab"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        assert_int_equal(write_file(tmp_path, files[i][0], strlen(files[i][0])), 0);
        strata_tokenizer *t = NULL;
        strata_err e = strata_tokenizer_hf(&t, tmp_path);
        assert_int_equal(e.code, STRATA_EINPUT);
        if (!strstr(e.msg, files[i][1]) || !strstr(e.msg, tmp_path))
            fail_msg("file %zu: '%s' does not name %s", i, e.msg, files[i][1]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tiny_file_encodes_as_hf_does),
        cmocka_unit_test(any_bytes_round_trip_in_blocks_and_whole),
        cmocka_unit_test(unsupported_models_are_refused_by_name),
        cmocka_unit_test(damaged_tiny_files_give_errors_not_crashes),
        cmocka_unit_test(damaged_real_files_give_errors_not_crashes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
