/* test_convert.c — llm.c and Hugging Face weights come in with the right
 * values and go out byte for byte; inconsistent files are refused before any
 * payload is trusted. Fixtures: tests/fixtures/make_hf_fixture.py and
 * make_llmc_fixture.py (the same random GPT-2 in both formats). */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <ftw.h>
#include <hdf5.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata/ckpt.h"
#include "strata/convert.h"
#include "strata/model.h"

static char tmpdir[256];
static char hf_path[512], logits_path[512], llmc_path[512];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    (void)state;
    const char *src = getenv("STRATA_SOURCE_DIR");
    if (!src) src = ".";
    snprintf(hf_path, sizeof hf_path, "%s/tests/fixtures/hf_tiny.safetensors", src);
    snprintf(logits_path, sizeof logits_path, "%s/tests/fixtures/hf_tiny_logits.h5", src);
    snprintf(llmc_path, sizeof llmc_path, "%s/tests/fixtures/llmc_tiny.bin", src);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/strata-test-convert-XXXXXX");
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

static void write_all(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void assert_same_params(strata_model *a, strata_model *b)
{
    assert_int_equal(strata_model_n_floats(a), strata_model_n_floats(b));
    assert_memory_equal(strata_model_params(a), strata_model_params(b),
                        strata_model_n_floats(a) * sizeof(float));
}

/* Asserts e is a refusal (exit status 2) whose one line names path and says want. */
static void assert_refused(strata_err e, const char *path, const char *want)
{
    if (e.code != STRATA_EINPUT)
        fail_msg("accepted (code %d), expected: %s", e.code, want ? want : "a refusal");
    if (!strstr(e.msg, path)) fail_msg("message does not name %s: %s", path, e.msg);
    if (want && !strstr(e.msg, want)) fail_msg("message lacks '%s': %s", want, e.msg);
    if (strchr(e.msg, '\n')) fail_msg("message is not one line: %s", e.msg);
}

/* ---- the Hugging Face fixture ------------------------------------------- */

static void imported_hf_model_gives_the_reference_logits(void **state)
{
    (void)state;
    strata_model *m = NULL;
    strata_err e = strata_safetensors_import(hf_path, 2, &m);
    if (e.code) fail_msg("%s", e.msg);
    const strata_model_shape *s = strata_model_get_shape(m);
    assert_int_equal(s->n_layer, 2);
    assert_int_equal(s->n_head, 2);
    assert_int_equal(s->n_embd, 32);
    assert_int_equal(s->block_size, 16);
    assert_int_equal(s->vocab_size, 67);

    hid_t f = H5Fopen(logits_path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    enum { B = 2, T = 16, V = 67 };
    int32_t tok[B * T];
    static float want[B * T * V];
    hid_t d = H5Dopen2(f, "tokens", H5P_DEFAULT);
    assert_true(H5Dread(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tok) >= 0);
    H5Dclose(d);
    d = H5Dopen2(f, "logits", H5P_DEFAULT);
    assert_true(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, want) >= 0);
    H5Dclose(d);
    H5Fclose(f);

    uint32_t inputs[B * T];
    for (int i = 0; i < B * T; i++) inputs[i] = (uint32_t)tok[i];
    assert_int_equal(strata_model_reserve(m, B, T).code, 0);
    assert_int_equal(strata_model_forward(m, inputs, NULL, B, T, NULL, NULL).code, 0);
    const float *got = strata_model_logits(m);
    int Vp = s->padded_vocab;
    double max_err = 0, max_ref = 0;
    for (int bt = 0; bt < B * T; bt++)
        for (int v = 0; v < V; v++) {
            double ref = want[bt * V + v], err = fabs(got[(size_t)bt * Vp + v] - ref);
            if (!(err <= max_err)) max_err = err; /* NaN sticks */
            if (fabs(ref) > max_ref) max_ref = fabs(ref);
        }
    print_message("logits: max |strata - reference| / max |reference| = %.3g\n", max_err / max_ref);
    assert_true(max_ref > 1.0); /* the fixture's logits are not all near zero */
    if (!(max_err / max_ref <= 1e-5))
        fail_msg("logits differ: max error %.3g relative to max %.3g", max_err, max_ref);
    strata_model_free(m);
}

static void llmc_and_hf_fixtures_import_to_the_same_model(void **state)
{
    (void)state;
    strata_model *hf = NULL, *llmc = NULL;
    assert_int_equal(strata_safetensors_import(hf_path, 2, &hf).code, 0);
    strata_err e = strata_llmc_import(llmc_path, &llmc);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(strata_model_get_shape(llmc)->n_head, 2);
    assert_same_params(hf, llmc);
    strata_model_free(hf);
    strata_model_free(llmc);
}

static void llmc_import_then_export_is_byte_identical(void **state)
{
    (void)state;
    strata_model *m = NULL;
    assert_int_equal(strata_llmc_import(llmc_path, &m).code, 0);
    const char *out = in_tmp("again.bin");
    assert_int_equal(strata_llmc_export(out, m, 0).code, 0);
    size_t a_len, b_len;
    unsigned char *a = read_all(llmc_path, &a_len), *b = read_all(out, &b_len);
    assert_int_equal(a_len, b_len);
    assert_memory_equal(a, b, a_len);
    free(a);
    free(b);

    /* Through a strata checkpoint as well, as `strata import` + `export` do. */
    const char *ck = in_tmp("via.h5");
    assert_int_equal(strata_ckpt_write(ck, m, NULL, NULL, NULL).code, 0);
    strata_model *back;
    strata_model_shape shape;
    assert_int_equal(strata_ckpt_read_shape(ck, &shape).code, 0);
    assert_int_equal(strata_model_create(&back, &shape).code, 0);
    assert_int_equal(strata_ckpt_load(ck, back, NULL, NULL, NULL).code, 0);
    assert_int_equal(strata_llmc_export(out, back, 0).code, 0);
    a = read_all(llmc_path, &a_len);
    b = read_all(out, &b_len);
    assert_int_equal(a_len, b_len);
    assert_memory_equal(a, b, a_len);
    free(a);
    free(b);
    strata_model_free(back);
    strata_model_free(m);
}

static void llmc_padding_rows_are_ignored_on_import_and_zero_on_export(void **state)
{
    (void)state;
    size_t len;
    unsigned char *bytes = read_all(llmc_path, &len);
    /* Rows 67..127 of wte are padding: fill them with junk. */
    float junk = 12345.0f;
    for (size_t r = 67; r < 128; r++)
        for (size_t c = 0; c < 32; c++) memcpy(bytes + 1024 + (r * 32 + c) * 4, &junk, 4);
    const char *dirty = in_tmp("dirty-padding.bin");
    write_all(dirty, bytes, len);
    strata_model *clean = NULL, *m = NULL;
    assert_int_equal(strata_llmc_import(llmc_path, &clean).code, 0);
    assert_int_equal(strata_llmc_import(dirty, &m).code, 0);
    assert_same_params(clean, m); /* padding rows in memory stay zero */
    const char *out = in_tmp("clean-padding.bin");
    assert_int_equal(strata_llmc_export(out, m, 0).code, 0);
    size_t out_len;
    unsigned char *written = read_all(out, &out_len), *orig = read_all(llmc_path, &len);
    assert_int_equal(out_len, len);
    assert_memory_equal(written, orig, len);
    /* A different padding on request: the header says so, the rows are zero. */
    assert_int_equal(strata_llmc_export(out, m, 67).code, 0);
    free(written);
    written = read_all(out, &out_len);
    assert_int_equal(out_len, len - 61 * 32 * 4);
    int32_t vp;
    memcpy(&vp, written + 7 * 4, 4);
    assert_int_equal(vp, 67);
    free(written);
    free(orig);
    free(bytes);
    strata_model_free(clean);
    strata_model_free(m);
}

static void safetensors_export_then_import_gives_identical_tensors(void **state)
{
    (void)state;
    strata_model *m = NULL, *back = NULL, *again = NULL;
    assert_int_equal(strata_safetensors_import(hf_path, 2, &m).code, 0);
    const char *out = in_tmp("exported.safetensors");
    assert_int_equal(strata_safetensors_export(out, m).code, 0);
    /* The export carries n_head in its metadata: no hint needed. */
    strata_err e = strata_safetensors_import(out, 0, &back);
    if (e.code) fail_msg("%s", e.msg);
    assert_same_params(m, back);

    /* Hub names without "transformer.", Conv1D (in, out) shapes, and the
     * same bytes as the fixture for every tensor it has. */
    size_t len, hf_len;
    unsigned char *bytes = read_all(out, &len), *hf = read_all(hf_path, &hf_len);
    uint64_t n = 0, hf_n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | bytes[i], hf_n = hf_n << 8 | hf[i];
    assert_int_equal(n % 8, 0);
    json_t *h = json_loadb((const char *)bytes + 8, n, 0, NULL);
    json_t *fh = json_loadb((const char *)hf + 8, hf_n, 0, NULL);
    assert_non_null(h);
    assert_non_null(fh);
    assert_int_equal(json_object_size(h), 1 + strata_model_n_tensors(m));
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v)
    {
        if (!strcmp(key, "__metadata__")) {
            assert_string_equal(json_string_value(json_object_get(v, "n_head")), "2");
            continue;
        }
        assert_null(strstr(key, "transformer."));
        char full[96];
        snprintf(full, sizeof full, "transformer.%s", key);
        json_t *fv = json_object_get(fh, full);
        assert_non_null(fv);
        assert_true(json_equal(json_object_get(v, "shape"), json_object_get(fv, "shape")));
        json_int_t b = json_integer_value(json_array_get(json_object_get(v, "data_offsets"), 0));
        json_int_t en = json_integer_value(json_array_get(json_object_get(v, "data_offsets"), 1));
        json_int_t fb = json_integer_value(json_array_get(json_object_get(fv, "data_offsets"), 0));
        assert_memory_equal(bytes + 8 + n + b, hf + 8 + hf_n + fb, (size_t)(en - b));
    }
    json_decref(h);
    json_decref(fh);
    free(bytes);
    free(hf);

    /* And a second round trip is byte-identical to the first. */
    const char *out2 = in_tmp("exported2.safetensors");
    assert_int_equal(strata_safetensors_export(out2, back).code, 0);
    assert_int_equal(strata_safetensors_import(out2, 0, &again).code, 0);
    assert_same_params(m, again);
    size_t l1, l2;
    unsigned char *f1 = read_all(out, &l1), *f2 = read_all(out2, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(f1, f2, l1);
    free(f1);
    free(f2);
    strata_model_free(m);
    strata_model_free(back);
    strata_model_free(again);
}

static void heads_come_from_config_json_beside_the_file_or_a_hint(void **state)
{
    (void)state;
    size_t len;
    unsigned char *bytes = read_all(hf_path, &len);
    const char *dir = in_tmp("hub");
    mkdir(dir, 0777);
    char model[512], config[512];
    snprintf(model, sizeof model, "%s/model.safetensors", dir);
    snprintf(config, sizeof config, "%s/config.json", dir);
    write_all(model, bytes, len);
    free(bytes);

    strata_model *m = NULL;
    strata_err e = strata_safetensors_import(model, 0, &m);
    assert_refused(e, model, "HINT: pass --n-head");
    assert_null(m);

    const char *json = "{\"model_type\": \"gpt2\", \"n_head\": 2, \"n_layer\": 2}";
    write_all(config, json, strlen(json));
    e = strata_safetensors_import(model, 0, &m);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(strata_model_get_shape(m)->n_head, 2);
    strata_model_free(m);
    m = NULL;

    /* n_embd 32 cannot be split into 3 heads. */
    e = strata_safetensors_import(model, 3, &m);
    assert_refused(e, model, "multiple of n_head");
}

/* ---- damaged and inconsistent files -------------------------------------- */

static void truncated_llmc_files_are_refused(void **state)
{
    (void)state;
    size_t len;
    unsigned char *bytes = read_all(llmc_path, &len);
    const char *cut = in_tmp("cut.bin");
    const size_t lengths[] = {0, 3, 100, 1023, 1024, 1028, len / 2, len - 4, len - 1};
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        write_all(cut, bytes, lengths[i]);
        strata_model *m = NULL;
        assert_refused(strata_llmc_import(cut, &m), cut, lengths[i] < 1024 ? "header" : "bytes");
        assert_null(m);
    }
    /* One byte too many is as wrong as one too few. */
    unsigned char *longer = malloc(len + 1);
    memcpy(longer, bytes, len);
    longer[len] = 0;
    write_all(cut, longer, len + 1);
    strata_model *m = NULL;
    assert_refused(strata_llmc_import(cut, &m), cut, "makes");
    free(longer);
    free(bytes);
}

static void llmc_header_inconsistencies_are_refused(void **state)
{
    (void)state;
    size_t len;
    unsigned char *orig = read_all(llmc_path, &len);
    unsigned char *bytes = malloc(len);
    const char *bad = in_tmp("bad-header.bin");
    const struct {
        int index, value;
        const char *want;
    } cases[] = {
        {0, 20240327, "magic"},
        {1, 5, "HINT: version 5 is bf16"},
        {1, 1, "version 1"},
        {4, 3, "makes"},             /* 3 layers: wrong size */
        {5, 3, "impossible shape"},  /* 32 channels, 3 heads */
        {7, 64, "impossible shape"}, /* padded vocab below vocab */
        {3, -1, "impossible shape"},
        {6, 0, "impossible shape"},
        {2, 1 << 30, "impossible shape"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(bytes, orig, len);
        int32_t v = cases[i].value;
        memcpy(bytes + 4 * cases[i].index, &v, 4);
        write_all(bad, bytes, len);
        strata_model *m = NULL;
        assert_refused(strata_llmc_import(bad, &m), bad, cases[i].want);
        assert_null(m);
    }
    strata_model *m = NULL;
    assert_refused(strata_llmc_import(in_tmp("absent.bin"), &m), "absent.bin", "No such file");
    free(bytes);
    free(orig);
}

/* The fixture, taken apart: the header as JSON and the data section. */
typedef struct st_file {
    json_t *header;
    unsigned char *data;
    size_t data_len;
} st_file;

static void st_load(st_file *f)
{
    size_t len;
    unsigned char *bytes = read_all(hf_path, &len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | bytes[i];
    f->header = json_loadb((const char *)bytes + 8, n, 0, NULL);
    assert_non_null(f->header);
    f->data_len = len - 8 - n;
    f->data = malloc(f->data_len + 1);
    memcpy(f->data, bytes + 8 + n, f->data_len);
    free(bytes);
}

static void st_save(const st_file *f, const char *path)
{
    char *text = json_dumps(f->header, JSON_COMPACT);
    size_t n = strlen(text);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)n >> (8 * i));
    FILE *out = fopen(path, "wb");
    assert_non_null(out);
    fwrite(len8, 1, 8, out);
    fwrite(text, 1, n, out);
    fwrite(f->data, 1, f->data_len, out);
    fclose(out);
    free(text);
}

static void st_free(st_file *f)
{
    json_decref(f->header);
    free(f->data);
}

static json_t *st_offsets(st_file *f, const char *name)
{
    json_t *e = json_object_get(f->header, name);
    assert_non_null(e);
    return json_object_get(e, "data_offsets");
}

/* Removes a tensor's entry and its bytes, shifting the others. */
static void st_remove(st_file *f, const char *name)
{
    json_t *off = st_offsets(f, name);
    json_int_t b = json_integer_value(json_array_get(off, 0));
    json_int_t e = json_integer_value(json_array_get(off, 1));
    memmove(f->data + b, f->data + e, f->data_len - (size_t)e);
    f->data_len -= (size_t)(e - b);
    json_object_del(f->header, name);
    const char *key;
    json_t *v;
    json_object_foreach(f->header, key, v)
    {
        if (!strcmp(key, "__metadata__")) continue;
        json_t *o = json_object_get(v, "data_offsets");
        for (int i = 0; i < 2; i++) {
            json_int_t x = json_integer_value(json_array_get(o, (size_t)i));
            if (x >= e) json_array_set_new(o, (size_t)i, json_integer(x - (e - b)));
        }
    }
}

typedef void (*st_mutation)(st_file *f);

static void set_dtype_i32(st_file *f)
{
    json_object_set_new(json_object_get(f->header, "transformer.h.1.ln_2.bias"), "dtype",
                        json_string("I32"));
}
static void set_dtype_f16(st_file *f)
{
    json_object_set_new(json_object_get(f->header, "transformer.h.1.ln_2.bias"), "dtype",
                        json_string("F16"));
}
static void set_dtype_unknown(st_file *f)
{
    json_object_set_new(json_object_get(f->header, "transformer.wpe.weight"), "dtype",
                        json_string("F33"));
}
static void swap_conv_shape(st_file *f)
{
    json_object_set_new(json_object_get(f->header, "transformer.h.0.attn.c_attn.weight"), "shape",
                        json_pack("[ii]", 96, 32));
}
static void overlap_offsets(st_file *f)
{
    json_t *a = st_offsets(f, "transformer.h.0.ln_1.bias");
    json_t *b = st_offsets(f, "transformer.h.0.ln_1.weight");
    json_array_set(a, 0, json_array_get(b, 0));
    json_array_set(a, 1, json_array_get(b, 1));
}
static void offsets_past_the_end(st_file *f)
{
    json_t *o = st_offsets(f, "transformer.ln_f.bias");
    json_int_t n = (json_int_t)f->data_len;
    json_array_set_new(o, 0, json_integer(n - 64));
    json_array_set_new(o, 1, json_integer(n + 64));
}
static void offsets_reversed(st_file *f)
{
    json_t *o = st_offsets(f, "transformer.ln_f.bias");
    json_t *b = json_incref(json_array_get(o, 0));
    json_array_set(o, 0, json_array_get(o, 1));
    json_array_set_new(o, 1, b);
}
static void shape_disagrees_with_offsets(st_file *f)
{
    json_object_set_new(json_object_get(f->header, "transformer.ln_f.bias"), "shape",
                        json_pack("[i]", 33));
}
static void negative_dim(st_file *f)
{
    json_object_set_new(json_object_get(f->header, "transformer.ln_f.bias"), "shape",
                        json_pack("[i]", -32));
}
static void missing_tensor(st_file *f) { st_remove(f, "transformer.h.1.mlp.c_fc.bias"); }
static void missing_layer_zero(st_file *f)
{
    static const char *parts[] = {"ln_1.weight",      "ln_1.bias",          "attn.c_attn.weight",
                                  "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                                  "ln_2.weight",      "ln_2.bias",          "mlp.c_fc.weight",
                                  "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias",
                                  "attn.bias"};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        char name[96];
        snprintf(name, sizeof name, "transformer.h.0.%s", parts[i]);
        st_remove(f, name);
    }
}
static void hole_in_data(st_file *f) { json_object_del(f->header, "transformer.h.0.ln_2.bias"); }
static void unknown_tensor(st_file *f)
{
    json_t *v = json_incref(json_object_get(f->header, "transformer.h.0.attn.bias"));
    json_object_del(f->header, "transformer.h.0.attn.bias");
    json_object_set_new(f->header, "transformer.h.0.attn.rotary", v);
}
static void duplicate_without_prefix(st_file *f)
{
    json_t *v = json_incref(json_object_get(f->header, "lm_head.weight"));
    json_object_del(f->header, "lm_head.weight");
    json_object_set_new(f->header, "wte.weight", v);
}
static void untied_head(st_file *f)
{
    json_int_t b = json_integer_value(json_array_get(st_offsets(f, "lm_head.weight"), 0));
    f->data[b + 401] ^= 0x40;
}
static void trailing_bytes(st_file *f)
{
    f->data = realloc(f->data, f->data_len + 4);
    memset(f->data + f->data_len, 0, 4);
    f->data_len += 4;
}
static void header_not_an_object(st_file *f)
{
    json_decref(f->header);
    f->header = json_pack("[i]", 1);
}
static void no_blocks(st_file *f)
{
    st_remove(f, "transformer.h.0.ln_1.weight");
    const char *key;
    void *tmp;
    json_t *v;
    (void)v;
    json_object_foreach_safe(f->header, tmp, key, v)
    {
        if (!strncmp(key, "transformer.h.", 14)) st_remove(f, key);
    }
}

static void inconsistent_safetensors_are_refused_before_reading_payload(void **state)
{
    (void)state;
    const struct {
        st_mutation mutate;
        const char *want;
    } cases[] = {
        {set_dtype_i32, "'transformer.h.1.ln_2.bias' is not F32"},
        {set_dtype_f16, "spans 128 bytes but its shape and dtype make 64"},
        {set_dtype_unknown, "unknown dtype 'F33'"},
        {swap_conv_shape, "has shape [96, 32], expected [32, 96]"},
        {overlap_offsets, "overlap"},
        {offsets_past_the_end, "past the end of the file"},
        {offsets_reversed, "bad data_offsets"},
        {shape_disagrees_with_offsets, "spans 128 bytes but its shape and dtype make 132"},
        {negative_dim, "bad shape"},
        {missing_tensor, "'h.1.mlp.c_fc.bias' is missing"},
        {missing_layer_zero, "'h.0.ln_1.weight' is missing"},
        {hole_in_data, "belong to no tensor"},
        {unknown_tensor, "'transformer.h.0.attn.rotary' is not part of GPT-2"},
        {duplicate_without_prefix, "are the same"},
        {untied_head, "lm_head.weight differs from wte.weight"},
        {trailing_bytes, "4 bytes follow the last tensor"},
        {header_not_an_object, "not a JSON object"},
        {no_blocks, "no transformer blocks"},
    };
    const char *bad = in_tmp("bad.safetensors");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_file f;
        st_load(&f);
        cases[i].mutate(&f);
        st_save(&f, bad);
        st_free(&f);
        strata_model *m = NULL;
        assert_refused(strata_safetensors_import(bad, 2, &m), bad, cases[i].want);
        assert_null(m);
    }
}

static void truncated_or_garbled_safetensors_are_refused(void **state)
{
    (void)state;
    size_t len;
    unsigned char *bytes = read_all(hf_path, &len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | bytes[i];
    const char *bad = in_tmp("cut.safetensors");
    const size_t lengths[] = {0, 4, 7, 8, 9, 100, 8 + n - 1, 8 + n, 8 + n + 10, len / 2, len - 1};
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        write_all(bad, bytes, lengths[i]);
        strata_model *m = NULL;
        assert_refused(strata_safetensors_import(bad, 2, &m), bad, NULL);
        assert_null(m);
    }
    /* A header length beyond the file, and one of zero. */
    unsigned char *copy = malloc(len);
    const uint64_t lens[] = {len, len - 7, UINT64_MAX, 0};
    const char *wants[] = {"runs past the end", "runs past the end", "runs past the end",
                           "impossible"};
    for (int k = 0; k < 4; k++) {
        memcpy(copy, bytes, len);
        for (int i = 0; i < 8; i++) copy[i] = (unsigned char)(lens[k] >> (8 * i));
        write_all(bad, copy, len);
        strata_model *m = NULL;
        assert_refused(strata_safetensors_import(bad, 2, &m), bad, wants[k]);
    }
    /* A header that is not JSON. */
    memcpy(copy, bytes, len);
    memcpy(copy + 8, "{\"wte.weight\": nope", 19);
    write_all(bad, copy, len);
    strata_model *m = NULL;
    assert_refused(strata_safetensors_import(bad, 2, &m), bad, "not JSON");
    /* An llm.c file is not safetensors, and the other way round. */
    assert_refused(strata_safetensors_import(llmc_path, 2, &m), llmc_path, NULL);
    assert_refused(strata_llmc_import(hf_path, &m), hf_path, "not an llm.c model file");
    free(copy);
    free(bytes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(imported_hf_model_gives_the_reference_logits),
        cmocka_unit_test(llmc_and_hf_fixtures_import_to_the_same_model),
        cmocka_unit_test(llmc_import_then_export_is_byte_identical),
        cmocka_unit_test(llmc_padding_rows_are_ignored_on_import_and_zero_on_export),
        cmocka_unit_test(safetensors_export_then_import_gives_identical_tensors),
        cmocka_unit_test(heads_come_from_config_json_beside_the_file_or_a_hint),
        cmocka_unit_test(truncated_llmc_files_are_refused),
        cmocka_unit_test(llmc_header_inconsistencies_are_refused),
        cmocka_unit_test(inconsistent_safetensors_are_refused_before_reading_payload),
        cmocka_unit_test(truncated_or_garbled_safetensors_are_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
