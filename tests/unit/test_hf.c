/* test_hf.c — Hugging Face checkpoint directories: config.json becomes the
 * shape transformers would build (each model_type's own defaults), every
 * architecture strata cannot compute is refused by name, and weights go
 * import -> export -> import bitwise in F32, rounded in BF16, sharded or not.
 * A fuzz test damages a valid config.json thousands of ways. */
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
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata/convert.h"
#include "strata/hf.h"
#include "strata/model.h"
#include "strata/safetensors.h"

static char tmpdir[256];
static char hf_path[512];

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
    snprintf(tmpdir, sizeof tmpdir, "/tmp/strata-test-hf-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *in_tmp(const char *name)
{
    static char path[8][512];
    static int next;
    char *p = path[next++ % 8];
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
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static void assert_refused(strata_err e, const char *path, const char *want)
{
    if (e.code != STRATA_EINPUT)
        fail_msg("accepted (code %d), expected: %s", e.code, want ? want : "a refusal");
    if (!strstr(e.msg, path)) fail_msg("message does not name %s: %s", path, e.msg);
    if (want && !strstr(e.msg, want)) fail_msg("message lacks '%s': %s", want, e.msg);
    if (strchr(e.msg, '\n')) fail_msg("message is not one line: %s", e.msg);
}

static void assert_same_params(strata_model *a, strata_model *b)
{
    assert_int_equal(strata_model_n_floats(a), strata_model_n_floats(b));
    assert_memory_equal(strata_model_params(a), strata_model_params(b),
                        strata_model_n_floats(a) * sizeof(float));
}

/* A directory holding config.json with this text. */
static const char *config_dir(const char *name, const char *json)
{
    const char *dir = in_tmp(name);
    mkdir(dir, 0777);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_all(path, json, strlen(json));
    return dir;
}

/* A config of model_type `type` with the required keys (and 2 kv heads for
 * the llama family), overridden by `more` (", \"k\": v, ..."; the value
 * "DELETE" removes a key). */
static strata_err parse(const char *type, const char *more, strata_model_shape *s)
{
    json_t *o = !strcmp(type, "gpt2")
                    ? json_pack("{s:s, s:i, s:i, s:i, s:i, s:i}", "model_type", type, "n_embd", 32,
                                "n_layer", 2, "n_head", 2, "n_positions", 16, "vocab_size", 67)
                    : json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i}", "model_type", type,
                                "hidden_size", 64, "intermediate_size", 96, "num_hidden_layers", 2,
                                "num_attention_heads", 4, "num_key_value_heads", 2, "vocab_size",
                                100, "max_position_embeddings", 128);
    char wrapped[2048];
    snprintf(wrapped, sizeof wrapped, "{%s}", *more ? more + 1 : "");
    json_error_t jerr;
    json_t *m = json_loads(wrapped, 0, &jerr);
    if (!m) fail_msg("bad test JSON %s: %s", wrapped, jerr.text);
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v)
    {
        if (json_is_string(v) && !strcmp(json_string_value(v), "DELETE"))
            json_object_del(o, k);
        else
            json_object_set(o, k, v);
    }
    json_decref(m);
    char *text = json_dumps(o, 0);
    json_decref(o);
    strata_err e = strata_hf_read_config(config_dir("cfg", text), s);
    free(text);
    return e;
}

/* ---- config.json ------------------------------------------------------------------ */

static void gpt2_config_gives_the_gpt2_shape(void **state)
{
    (void)state;
    strata_model_shape s;
    strata_err e = parse("gpt2", ", \"n_ctx\": 16, \"activation_function\": \"gelu_new\"", &s);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(s.family, STRATA_FAMILY_GPT2);
    assert_int_equal(s.variant, STRATA_VARIANT_BASE);
    assert_int_equal(s.n_layer, 2);
    assert_int_equal(s.n_head, 2);
    assert_int_equal(s.n_embd, 32);
    assert_int_equal(s.block_size, 16);
    assert_int_equal(s.vocab_size, 67);
    assert_int_equal(s.tied, 1); /* PretrainedConfig's default: GPT-2 configs omit it */
    assert_true(s.norm_eps == 1e-5f);
}

static void llama_family_defaults_follow_each_model_type(void **state)
{
    (void)state;
    strata_model_shape s;
    /* llama: tie false, kv heads null -> heads, head_dim hidden/heads, theta 10000, eps 1e-6. */
    strata_err e = parse("llama", ", \"num_key_value_heads\": null", &s);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(s.family, STRATA_FAMILY_LLAMA);
    assert_int_equal(s.variant, STRATA_VARIANT_BASE);
    assert_int_equal(s.n_kv_head, 4);
    assert_int_equal(s.head_dim, 16);
    assert_int_equal(s.ffn_dim, 96);
    assert_int_equal(s.block_size, 128);
    assert_int_equal(s.tied, 0);
    assert_int_equal(s.qkv_bias, 0);
    assert_int_equal(s.qk_norm, 0);
    assert_int_equal(s.sliding_window, 0);
    assert_true(s.norm_eps == 1e-6f);
    assert_true(s.rope_theta == 10000.0);
    assert_int_equal(s.rope_type, STRATA_ROPE_DEFAULT);
    /* mistral: 8 kv heads and a 4096 window when absent; a null window is none. */
    assert_int_equal(
        parse("mistral", ", \"num_attention_heads\": 16, \"num_key_value_heads\": \"DELETE\"", &s)
            .code,
        0);
    assert_int_equal(s.variant, STRATA_VARIANT_MISTRAL);
    assert_int_equal(s.n_kv_head, 8);
    assert_int_equal(s.sliding_window, 4096);
    assert_int_equal(
        parse("mistral", ", \"sliding_window\": null, \"num_key_value_heads\": 2", &s).code, 0);
    assert_int_equal(s.sliding_window, 0);
    assert_int_equal(s.n_kv_head, 2);
    /* qwen2: q/k/v biases always, no window unless use_sliding_window. */
    assert_int_equal(parse("qwen2",
                           ", \"num_key_value_heads\": 2, \"sliding_window\": 32, "
                           "\"tie_word_embeddings\": true",
                           &s)
                         .code,
                     0);
    assert_int_equal(s.variant, STRATA_VARIANT_QWEN2);
    assert_int_equal(s.qkv_bias, 1);
    assert_int_equal(s.tied, 1);
    assert_int_equal(s.sliding_window, 0);
    /* Every layer slides when max_window_layers is 0; none when it is >= L. */
    assert_int_equal(parse("qwen2",
                           ", \"use_sliding_window\": true, \"sliding_window\": 32, "
                           "\"max_window_layers\": 0",
                           &s)
                         .code,
                     0);
    assert_int_equal(s.sliding_window, 32);
    assert_int_equal(
        parse("qwen2", ", \"use_sliding_window\": true, \"sliding_window\": 32", &s).code,
        0); /* max_window_layers 28 >= 2 layers */
    assert_int_equal(s.sliding_window, 0);
    /* qwen3: QK-norm, head_dim 128 when absent, attention_bias false. */
    assert_int_equal(parse("qwen3", ", \"num_key_value_heads\": 2", &s).code, 0);
    assert_int_equal(s.variant, STRATA_VARIANT_QWEN3);
    assert_int_equal(s.qk_norm, 1);
    assert_int_equal(s.qkv_bias, 0);
    assert_int_equal(s.head_dim, 128);
    assert_int_equal(parse("qwen3", ", \"head_dim\": 32, \"rms_norm_eps\": 1e-05", &s).code, 0);
    assert_int_equal(s.head_dim, 32);
    assert_true(s.norm_eps == 1e-5f);
    /* qwen2/qwen3's class default is 32 kv heads, which 4 heads cannot share. */
    assert_refused(parse("qwen2", ", \"num_key_value_heads\": \"DELETE\"", &s), "config.json",
                   "num_key_value_heads (32)");
}

static void rope_scaling_and_rope_parameters_both_parse(void **state)
{
    (void)state;
    strata_model_shape s;
    strata_err e =
        parse("llama",
              ", \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", "
              "\"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
              "\"original_max_position_embeddings\": 8192}",
              &s);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(s.rope_type, STRATA_ROPE_LLAMA3);
    assert_true(s.rope_theta == 500000.0);
    assert_true(s.rope_factor == 32.0 && s.rope_low_freq_factor == 1.0 &&
                s.rope_high_freq_factor == 4.0);
    assert_int_equal(s.rope_original_max, 8192);
    /* The old spelling "type". */
    assert_int_equal(
        parse("llama", ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}", &s).code, 0);
    assert_int_equal(s.rope_type, STRATA_ROPE_LINEAR);
    assert_true(s.rope_factor == 2.0);
    /* transformers v5: rope_parameters with rope_theta inside. */
    assert_int_equal(parse("qwen3",
                           ", \"rope_theta\": 7.0, \"rope_parameters\": {\"rope_type\": "
                           "\"default\", \"rope_theta\": 1000000.0}",
                           &s)
                         .code,
                     0);
    assert_int_equal(s.rope_type, STRATA_ROPE_DEFAULT);
    assert_true(s.rope_theta == 1e6);
    assert_int_equal(parse("llama", ", \"rope_parameters\": {\"rope_theta\": 20000}", &s).code, 0);
    assert_true(s.rope_theta == 20000.0);
}

static void missing_required_keys_are_named(void **state)
{
    (void)state;
    const char *llama_keys[] = {"hidden_size",       "intermediate_size",
                                "num_hidden_layers", "num_attention_heads",
                                "vocab_size",        "max_position_embeddings"};
    for (int k = 0; k < 6; k++) {
        json_t *o =
            json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i}", "model_type", "llama", "hidden_size",
                      64, "intermediate_size", 96, "num_hidden_layers", 2, "num_attention_heads", 4,
                      "vocab_size", 100, "max_position_embeddings", 128);
        json_object_del(o, llama_keys[k]);
        char *text = json_dumps(o, 0);
        json_decref(o);
        strata_model_shape s;
        char want[96];
        snprintf(want, sizeof want, "\"%s\" is missing", llama_keys[k]);
        assert_refused(strata_hf_read_config(config_dir("missing", text), &s), "config.json", want);
        free(text);
    }
    strata_model_shape s;
    assert_refused(strata_hf_read_config(config_dir("missing", "{\"n_embd\": 3}"), &s),
                   "config.json", "\"model_type\" is missing");
    assert_refused(strata_hf_read_config(config_dir("missing", "{\"model_type\": \"gpt2\", "
                                                               "\"n_embd\": 32, \"n_layer\": 2, "
                                                               "\"n_head\": 2, \"vocab_size\": 9}"),
                                         &s),
                   "config.json", "\"n_positions\" is missing");
    assert_refused(strata_hf_read_config(in_tmp("nowhere"), &s), "nowhere/config.json",
                   "cannot open");
    assert_refused(strata_hf_read_config(config_dir("notjson", "{\"model_type\": "), &s),
                   "config.json", "not JSON");
    assert_refused(strata_hf_read_config(config_dir("array", "[1]"), &s), "config.json",
                   "not a JSON object");
    assert_refused(strata_hf_read_config(config_dir("dup", "{\"model_type\": \"gpt2\", "
                                                           "\"model_type\": \"llama\"}"),
                                         &s),
                   "config.json", "duplicate");
    assert_refused(parse("llama", ", \"num_hidden_layers\": 2.5", &s), "config.json",
                   "\"num_hidden_layers\" is not an integer");
    assert_refused(parse("llama", ", \"vocab_size\": -1", &s), "config.json",
                   "\"vocab_size\" is -1");
}

static void unsupported_rope_types_are_refused_by_name(void **state)
{
    (void)state;
    const char *types[] = {"dynamic", "yarn", "longrope", "su", "mrope", "proportional"};
    for (int i = 0; i < 6; i++) {
        char more[200], want[64];
        snprintf(more, sizeof more, ", \"rope_scaling\": {\"rope_type\": \"%s\", \"factor\": 4}",
                 types[i]);
        snprintf(want, sizeof want, "\"rope_scaling.rope_type\" is '%s'", types[i]);
        strata_model_shape s;
        assert_refused(parse("llama", more, &s), "config.json", want);
    }
    strata_model_shape s;
    assert_refused(
        parse("qwen3", ", \"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 4}", &s),
        "config.json", "\"rope_parameters.rope_type\" is 'yarn'");
    assert_refused(
        parse("llama", ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8}", &s),
        "config.json", "\"rope_scaling.low_freq_factor\" is missing");
    assert_refused(parse("llama", ", \"rope_scaling\": {\"factor\": 8}", &s), "config.json",
                   "rope_type\" is missing");
    assert_refused(
        parse("llama", ", \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": -1}", &s),
        "config.json", "must be positive");
    assert_refused(
        parse("llama", ", \"rope_parameters\": {\"full_attention\": {\"rope_type\": \"default\"}}",
              &s),
        "config.json", "per-layer-type RoPE");
    assert_refused(parse("llama", ", \"partial_rotary_factor\": 0.5", &s), "config.json",
                   "partial_rotary_factor");
}

static void unsupported_hidden_act_is_refused(void **state)
{
    (void)state;
    strata_model_shape s;
    assert_refused(parse("llama", ", \"hidden_act\": \"gelu\"", &s), "config.json",
                   "\"hidden_act\" is 'gelu'");
    assert_refused(parse("qwen2", ", \"hidden_act\": \"relu\"", &s), "config.json",
                   "\"hidden_act\" is 'relu'");
    assert_int_equal(parse("llama", ", \"hidden_act\": \"silu\"", &s).code, 0);
    assert_refused(parse("gpt2", ", \"activation_function\": \"relu\"", &s), "config.json",
                   "\"activation_function\" is 'relu'");
    /* erf GELU is not the tanh approximation strata computes. */
    assert_refused(parse("gpt2", ", \"activation_function\": \"gelu\"", &s), "config.json",
                   "tanh approximation");
    assert_int_equal(parse("gpt2", ", \"activation_function\": \"gelu_pytorch_tanh\"", &s).code, 0);
}

static void softcapping_is_refused(void **state)
{
    (void)state;
    strata_model_shape s;
    assert_refused(parse("llama", ", \"attn_logit_softcapping\": 50.0", &s), "config.json",
                   "\"attn_logit_softcapping\" is set");
    assert_refused(parse("qwen2", ", \"final_logit_softcapping\": 30.0", &s), "config.json",
                   "\"final_logit_softcapping\" is set");
    assert_int_equal(parse("llama", ", \"final_logit_softcapping\": null", &s).code, 0);
}

static void mixture_of_experts_is_refused(void **state)
{
    (void)state;
    strata_model_shape s;
    assert_refused(parse("mistral", ", \"num_local_experts\": 8", &s), "config.json",
                   "\"num_local_experts\" is 8: mixture-of-experts");
    assert_refused(parse("qwen3", ", \"num_experts\": 128", &s), "config.json",
                   "\"num_experts\" is 128");
    assert_refused(parse("llama", ", \"num_experts_per_tok\": 2", &s), "config.json",
                   "\"num_experts_per_tok\"");
    assert_int_equal(parse("qwen2", ", \"num_experts\": 0", &s).code, 0);
}

static void unknown_model_type_and_other_architectures_are_refused(void **state)
{
    (void)state;
    strata_model_shape s;
    assert_refused(parse("gemma2", "", &s), "config.json", "\"model_type\" is 'gemma2'");
    assert_refused(parse("qwen2_moe", "", &s), "config.json", "'qwen2_moe'");
    assert_refused(parse("llama", ", \"mlp_bias\": true", &s), "config.json", "\"mlp_bias\"");
    assert_refused(parse("llama", ", \"attention_bias\": true", &s), "config.json",
                   "biases q, k, v and o_proj");
    assert_int_equal(parse("qwen2", ", \"attention_bias\": true", &s).code, 0);
    assert_refused(parse("llama", ", \"num_key_value_heads\": 3", &s), "config.json",
                   "not a multiple of num_key_value_heads");
    assert_refused(parse("qwen2",
                         ", \"use_sliding_window\": true, \"sliding_window\": 32, "
                         "\"max_window_layers\": 1",
                         &s),
                   "config.json", "per-layer windows");
    assert_refused(parse("qwen3",
                         ", \"use_sliding_window\": true, \"layer_types\": [\"full_attention\", "
                         "\"sliding_attention\"]",
                         &s),
                   "config.json", "per-layer windows");
    assert_refused(parse("gpt2", ", \"tie_word_embeddings\": false", &s), "config.json",
                   "ties its lm head");
    assert_refused(parse("gpt2", ", \"n_inner\": 100", &s), "config.json", "\"n_inner\"");
    assert_refused(parse("gpt2", ", \"layer_norm_epsilon\": 1e-6", &s), "config.json",
                   "\"layer_norm_epsilon\"");
    assert_refused(parse("gpt2", ", \"scale_attn_by_inverse_layer_idx\": true", &s), "config.json",
                   "scale_attn_by_inverse_layer_idx");
}

static void written_configs_read_back_to_the_same_shape(void **state)
{
    (void)state;
    const char *cases[][2] = {
        {"gpt2", ""},
        {"llama", ", \"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000, "
                  "\"tie_word_embeddings\": true, \"rope_scaling\": {\"rope_type\": \"llama3\", "
                  "\"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                  "\"original_max_position_embeddings\": 8192}"},
        {"mistral", ", \"sliding_window\": 64, \"num_key_value_heads\": 1"},
        {"qwen2", ", \"use_sliding_window\": true, \"sliding_window\": 32, \"max_window_layers\": "
                  "0, \"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-06"},
        {"qwen3", ", \"head_dim\": 8, \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": "
                  "4.0}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        strata_model_shape a, b;
        strata_err e = parse(cases[i][0], cases[i][1], &a);
        if (e.code) fail_msg("%s: %s", cases[i][0], e.msg);
        const char *dir = in_tmp("written");
        mkdir(dir, 0777);
        e = strata_hf_write_config(dir, &a, STRATA_ST_BF16, "{\"eos_token_id\": 2}");
        if (e.code) fail_msg("%s", e.msg);
        e = strata_hf_read_config(dir, &b);
        if (e.code) fail_msg("%s: %s", cases[i][0], e.msg);
        assert_memory_equal(&a, &b, sizeof a);
        char path[600];
        snprintf(path, sizeof path, "%s/config.json", dir);
        json_t *cfg = json_load_file(path, 0, NULL);
        assert_non_null(cfg);
        assert_string_equal(json_string_value(json_object_get(cfg, "model_type")), cases[i][0]);
        assert_string_equal(json_string_value(json_object_get(cfg, "torch_dtype")), "bfloat16");
        assert_int_equal(json_integer_value(json_object_get(cfg, "eos_token_id")), 2);
        assert_true(json_is_array(json_object_get(cfg, "architectures")));
        json_decref(cfg);
        char *extra = NULL;
        assert_int_equal(strata_hf_read_config_extra(dir, &extra).code, 0);
        assert_string_equal(extra, "{\"eos_token_id\":2}");
        free(extra);
    }
    /* A shape the model_type cannot describe is refused. */
    strata_model_shape s;
    assert_int_equal(parse("llama", "", &s).code, 0);
    s.qk_norm = 1;
    assert_refused(strata_hf_write_config(in_tmp("written"), &s, STRATA_ST_F32, NULL), "written",
                   "model_type llama cannot describe this model's QK-norm");
}

static void damaged_configs_never_crash_the_parser(void **state)
{
    (void)state;
    const char *valid[2] = {
        "{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 96, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
        "\"vocab_size\": 100, \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-05, "
        "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 32.0, \"low_freq_factor\": 1.0, "
        "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}, "
        "\"tie_word_embeddings\": true, \"hidden_act\": \"silu\"}",
        "{\"model_type\": \"qwen2\", \"hidden_size\": 64, \"intermediate_size\": 96, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 100, "
        "\"max_position_embeddings\": 128, \"use_sliding_window\": true, \"sliding_window\": 8, "
        "\"max_window_layers\": 0, \"layer_types\": [\"sliding_attention\", "
        "\"sliding_attention\"], \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": "
        "1e6}}",
    };
    uint64_t x = 99;
    int ok = 0, refused = 0;
    char buf[1024];
    for (int iter = 0; iter < 4000; iter++) {
        const char *v = valid[iter % 2];
        size_t n = strlen(v);
        memcpy(buf, v, n + 1);
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        if (x >> 62 == 0) {
            n = (size_t)((x >> 20) % n);
            buf[n] = 0;
        } else {
            for (int k = 0; k < 1 + (int)((x >> 40) % 3); k++) {
                x = x * 6364136223846793005ull + 1442695040888963407ull;
                size_t at = (size_t)((x >> 24) % n);
                static const char repl[] = "0123456789\"{}[],:.-e ntfalsu";
                buf[at] = (x >> 60) < 3 ? (char)(x >> 8) : repl[(x >> 33) % (sizeof repl - 1)];
                if (!buf[at]) buf[at] = ' ';
            }
        }
        strata_model_shape s;
        strata_err e = strata_hf_read_config(config_dir("fuzz", buf), &s);
        if (e.code) {
            assert_int_equal(e.code, STRATA_EINPUT);
            assert_null(strchr(e.msg, '\n'));
            refused++;
        } else {
            assert_true(s.n_layer >= 1 && s.n_head >= 1 && s.vocab_size >= 2);
            ok++;
        }
    }
    print_message("fuzz: %d parsed, %d refused\n", ok, refused);
    assert_true(refused > 1000);
    assert_true(ok > 50);
}

/* ---- weights -------------------------------------------------------------------------- */

static const char gpt2_config[] =
    "{\"model_type\": \"gpt2\", \"architectures\": [\"GPT2LMHeadModel\"], \"n_embd\": 32, "
    "\"n_layer\": 2, \"n_head\": 2, \"n_positions\": 16, \"vocab_size\": 67, "
    "\"bos_token_id\": 66, \"eos_token_id\": 66}";

/* The GPT-2 fixture as a hub directory: config.json + model.safetensors. */
static const char *gpt2_hub(const char *name)
{
    const char *dir = config_dir(name, gpt2_config);
    size_t len;
    unsigned char *bytes = read_all(hf_path, &len);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_all(path, bytes, len);
    free(bytes);
    return dir;
}

static int count_files(const char *dir, const char *substr)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) n += strstr(de->d_name, substr) != NULL;
    closedir(d);
    return n;
}

static void gpt2_hub_directory_imports_as_the_fixture(void **state)
{
    (void)state;
    strata_model *hub = NULL, *file = NULL;
    strata_err e = strata_hf_import(gpt2_hub("hub"), &hub);
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(strata_safetensors_import(hf_path, 2, &file).code, 0);
    assert_same_params(hub, file);
    assert_int_equal(strata_model_get_shape(hub)->n_head, 2);
    strata_model_free(hub);
    strata_model_free(file);
}

static void import_export_import_is_bitwise_identical_in_f32(void **state)
{
    (void)state;
    strata_model *m = NULL, *back = NULL;
    assert_int_equal(strata_hf_import(gpt2_hub("rt"), &m).code, 0);
    const char *out = in_tmp("rt-out");
    strata_err e = strata_hf_export(m, out, STRATA_ST_F32, 0, "{\"eos_token_id\": 66}");
    if (e.code) fail_msg("%s", e.msg);
    assert_int_equal(count_files(out, "model.safetensors"), 1);
    assert_int_equal(count_files(out, ".tmp-"), 0);
    e = strata_hf_import(out, &back);
    if (e.code) fail_msg("%s", e.msg);
    assert_same_params(m, back);
    /* Hub names, Conv1D (in, out) shapes, tied head not written. */
    strata_safetensors *st = NULL;
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    assert_int_equal(strata_st_open(path, &st).code, 0);
    assert_int_equal(strata_st_count(st), strata_model_n_tensors(m));
    const strata_st_tensor *t = strata_st_find(st, "h.0.attn.c_attn.weight");
    assert_non_null(t);
    assert_true(t->shape[0] == 32 && t->shape[1] == 96);
    assert_null(strata_st_find(st, "lm_head.weight"));
    strata_st_close(st);
    /* And a second export is byte for byte the first. */
    const char *out2 = in_tmp("rt-out2");
    assert_int_equal(strata_hf_export(back, out2, STRATA_ST_F32, 0, "{\"eos_token_id\": 66}").code,
                     0);
    const char *names[] = {"model.safetensors", "config.json"};
    for (int i = 0; i < 2; i++) {
        char a[600], b[600];
        snprintf(a, sizeof a, "%s/%s", out, names[i]);
        snprintf(b, sizeof b, "%s/%s", out2, names[i]);
        size_t la, lb;
        unsigned char *x = read_all(a, &la), *y = read_all(b, &lb);
        assert_int_equal(la, lb);
        assert_memory_equal(x, y, la);
        free(x);
        free(y);
    }
    strata_model_free(m);
    strata_model_free(back);
}

static void bf16_export_imports_as_the_rounded_weights(void **state)
{
    (void)state;
    strata_model *m = NULL, *back = NULL;
    assert_int_equal(strata_hf_import(gpt2_hub("bf"), &m).code, 0);
    const char *out = in_tmp("bf-out");
    assert_int_equal(strata_hf_export(m, out, STRATA_ST_BF16, 0, NULL).code, 0);
    strata_err e = strata_hf_import(out, &back);
    if (e.code) fail_msg("%s", e.msg);
    const float *a = strata_model_params(m), *b = strata_model_params(back);
    size_t differ = 0;
    for (size_t i = 0; i < strata_model_n_floats(m); i++) {
        float want = strata_bf16_to_f32(strata_f32_to_bf16(a[i]));
        assert_memory_equal(&want, &b[i], sizeof want);
        differ += a[i] != b[i];
    }
    assert_true(differ > 1000); /* the fixture's random weights are not all bf16 already */
    strata_model_free(m);
    strata_model_free(back);
}

static void sharded_export_imports_identically_and_replaces_older_files(void **state)
{
    (void)state;
    strata_model *m = NULL, *back = NULL;
    assert_int_equal(strata_hf_import(gpt2_hub("sh"), &m).code, 0);
    const char *out = in_tmp("sh-out");
    /* A single file first: a sharded export must not leave it to shadow the shards. */
    assert_int_equal(strata_hf_export(m, out, STRATA_ST_F32, 0, NULL).code, 0);
    assert_int_equal(strata_hf_export(m, out, STRATA_ST_F32, 20000, NULL).code, 0);
    int shards = count_files(out, "-of-");
    assert_true(shards >= 3);
    assert_int_equal(count_files(out, "model.safetensors.index.json"), 1);
    char single[600];
    snprintf(single, sizeof single, "%s/model.safetensors", out);
    assert_int_not_equal(access(single, F_OK), 0);
    strata_err e = strata_hf_import(out, &back);
    if (e.code) fail_msg("%s", e.msg);
    assert_same_params(m, back);
    strata_model_free(back);
    /* Every shard holds at most the limit, unless one tensor alone is larger. */
    char index[600];
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", out);
    json_t *idx = json_load_file(index, 0, NULL);
    assert_non_null(idx);
    assert_int_equal(json_object_size(json_object_get(idx, "weight_map")),
                     strata_model_n_tensors(m));
    assert_true(
        json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")) > 0);
    json_decref(idx);
    /* Fewer, larger shards: the old ones go. */
    assert_int_equal(strata_hf_export(m, out, STRATA_ST_F32, 60000, NULL).code, 0);
    int fewer = count_files(out, "-of-");
    if (!(fewer < shards && fewer >= 2)) fail_msg("%d shards, then %d", shards, fewer);
    assert_int_equal(strata_hf_import(out, &back).code, 0);
    assert_same_params(m, back);
    strata_model_free(back);
    /* And back to one file: index and shards go. */
    assert_int_equal(strata_hf_export(m, out, STRATA_ST_F32, 0, NULL).code, 0);
    assert_int_equal(count_files(out, "-of-"), 0);
    assert_int_equal(count_files(out, "index.json"), 0);
    strata_model_free(m);
}

/* Rewrites dir/model.safetensors with one header entry changed by `edit`. */
static void edit_hub(const char *dir, void (*edit)(json_t *header, unsigned char *data))
{
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t len;
    unsigned char *bytes = read_all(path, &len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | bytes[i];
    json_t *h = json_loadb((const char *)bytes + 8, n, 0, NULL);
    edit(h, bytes + 8 + n);
    char *text = json_dumps(h, JSON_COMPACT);
    size_t tn = strlen(text);
    FILE *f = fopen(path, "wb");
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)tn >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(text, 1, tn, f);
    fwrite(bytes + 8 + n, 1, len - 8 - n, f);
    fclose(f);
    free(text);
    json_decref(h);
    free(bytes);
}

static void untie_head(json_t *h, unsigned char *data)
{
    json_int_t b = json_integer_value(
        json_array_get(json_object_get(json_object_get(h, "lm_head.weight"), "data_offsets"), 0));
    data[b + 17] ^= 0x20;
}

static void rename_buffer(json_t *h, unsigned char *data)
{
    (void)data;
    json_t *v = json_incref(json_object_get(h, "transformer.h.1.attn.bias"));
    json_object_del(h, "transformer.h.1.attn.bias");
    json_object_set_new(h, "transformer.h.1.attn.extra", v);
}

static void file_and_config_must_agree(void **state)
{
    (void)state;
    strata_model *m = NULL;
    const char *dir = gpt2_hub("bad1");
    edit_hub(dir, untie_head);
    assert_refused(strata_hf_import(dir, &m), "model.safetensors",
                   "lm_head.weight differs from wte.weight");
    assert_null(m);
    dir = gpt2_hub("bad2");
    edit_hub(dir, rename_buffer);
    assert_refused(strata_hf_import(dir, &m), "model.safetensors",
                   "'transformer.h.1.attn.extra' is not part of GPT-2");
    /* A config that disagrees with the weights: the shape check names the tensor. */
    dir = gpt2_hub("bad3");
    config_dir("bad3", "{\"model_type\": \"gpt2\", \"n_embd\": 32, \"n_layer\": 2, \"n_head\": 2, "
                       "\"n_positions\": 32, \"vocab_size\": 67}");
    assert_refused(strata_hf_import(dir, &m), "model.safetensors",
                   "'transformer.wpe.weight' has shape [16, 32], expected [32, 32]");
    config_dir("bad3", "{\"model_type\": \"gpt2\", \"n_embd\": 32, \"n_layer\": 3, \"n_head\": 2, "
                       "\"n_positions\": 16, \"vocab_size\": 67}");
    assert_refused(strata_hf_import(dir, &m), "bad3", "tensor 'h.2.ln_1.weight' is missing");
    /* No weights at all. */
    dir = config_dir("bad4", gpt2_config);
    assert_refused(strata_hf_import(dir, &m), "bad4", "holds neither model.safetensors");
}

/* The llama family: a random model through export and import. Needs the
 * family's tensor table (src/model.c); skipped until it is there. */
static void llama_family_round_trips_bitwise(void **state)
{
    (void)state;
    const char *types[] = {"llama", "mistral", "qwen2", "qwen3"};
    for (int k = 0; k < 4; k++) {
        strata_model_shape s;
        strata_err e = parse(types[k], ", \"num_key_value_heads\": 2, \"head_dim\": 16", &s);
        if (e.code) fail_msg("%s", e.msg);
        s.tied = k % 2; /* tied and untied heads */
        strata_model *m = NULL;
        e = strata_model_create(&m, &s);
        if (e.code || !strncmp(strata_model_tensor(m, 0)->name, "wte", 3)) {
            strata_model_free(m);
            print_message("the llama family's tensor table is not there yet\n");
            skip();
        }
        float *p = strata_model_params(m);
        uint64_t x = 1 + (uint64_t)k;
        for (int i = 0; i < strata_model_n_tensors(m); i++) {
            const strata_tensor *t = strata_model_tensor(m, i);
            for (size_t j = 0; j < t->numel; j++) {
                x = x * 6364136223846793005ull + 1442695040888963407ull;
                p[t->offset + j] = (float)((int64_t)(x >> 40) - (1 << 23)) * 0x1p-24f;
            }
        }
        const char *out = in_tmp("llama-out");
        e = strata_hf_export(m, out, STRATA_ST_F32, 0, NULL);
        if (e.code) fail_msg("%s: %s", types[k], e.msg);
        strata_model *back = NULL;
        e = strata_hf_import(out, &back);
        if (e.code) fail_msg("%s: %s", types[k], e.msg);
        assert_memory_equal(strata_model_get_shape(m), strata_model_get_shape(back),
                            sizeof(strata_model_shape));
        assert_same_params(m, back);
        /* Hugging Face's names and [out, in] shapes in the file. */
        char path[600];
        snprintf(path, sizeof path, "%s/model.safetensors", out);
        strata_safetensors *st = NULL;
        assert_int_equal(strata_st_open(path, &st).code, 0);
        const strata_st_tensor *q = strata_st_find(st, "model.layers.0.self_attn.q_proj.weight");
        const strata_st_tensor *kp = strata_st_find(st, "model.layers.1.self_attn.k_proj.weight");
        assert_non_null(q);
        assert_non_null(kp);
        assert_true(q->shape[0] == 4 * 16 && q->shape[1] == 64);
        assert_true(kp->shape[0] == 2 * 16 && kp->shape[1] == 64);
        assert_non_null(strata_st_find(st, "model.embed_tokens.weight"));
        assert_non_null(strata_st_find(st, "model.norm.weight"));
        assert_int_equal(strata_st_find(st, "lm_head.weight") == NULL, s.tied);
        assert_int_equal(strata_st_find(st, "model.layers.0.self_attn.q_proj.bias") == NULL,
                         k != 2);
        assert_int_equal(strata_st_find(st, "model.layers.0.self_attn.q_norm.weight") == NULL,
                         k != 3);
        strata_st_close(st);
        strata_model_free(back);
        strata_model_free(m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gpt2_config_gives_the_gpt2_shape),
        cmocka_unit_test(llama_family_defaults_follow_each_model_type),
        cmocka_unit_test(rope_scaling_and_rope_parameters_both_parse),
        cmocka_unit_test(missing_required_keys_are_named),
        cmocka_unit_test(unsupported_rope_types_are_refused_by_name),
        cmocka_unit_test(unsupported_hidden_act_is_refused),
        cmocka_unit_test(softcapping_is_refused),
        cmocka_unit_test(mixture_of_experts_is_refused),
        cmocka_unit_test(unknown_model_type_and_other_architectures_are_refused),
        cmocka_unit_test(written_configs_read_back_to_the_same_shape),
        cmocka_unit_test(damaged_configs_never_crash_the_parser),
        cmocka_unit_test(gpt2_hub_directory_imports_as_the_fixture),
        cmocka_unit_test(import_export_import_is_bitwise_identical_in_f32),
        cmocka_unit_test(bf16_export_imports_as_the_rounded_weights),
        cmocka_unit_test(sharded_export_imports_identically_and_replaces_older_files),
        cmocka_unit_test(file_and_config_must_agree),
        cmocka_unit_test(llama_family_round_trips_bitwise),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
