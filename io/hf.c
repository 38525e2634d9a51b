/* hf.c — Hugging Face config.json and checkpoint directories; see hf.h.
 *
 * The defaults below are transformers' own (configuration_gpt2.py,
 * configuration_llama.py, configuration_mistral.py, configuration_qwen2.py,
 * configuration_qwen3.py): a config.json saved by save_pretrained omits a
 * key only when it equals PretrainedConfig's default, so the class default
 * of the model_type is what a missing key means.
 */
#include "strata/hf.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"
#include "hf_json.h"

/* ---- model types ---------------------------------------------------------------- */

typedef struct hf_type {
    const char *model_type, *architecture, *display;
    int family, variant;
    /* Class defaults for keys a config.json may omit. */
    int kv_default;       /* num_key_value_heads: 0 = num_attention_heads */
    int head_dim_default; /* 0 = hidden_size / num_attention_heads */
    int window_default;   /* sliding_window */
} hf_type;

static const hf_type hf_types[] = {
    {"gpt2", "GPT2LMHeadModel", "GPT-2", STRATA_FAMILY_GPT2, STRATA_VARIANT_BASE, 0, 0, 0},
    {"llama", "LlamaForCausalLM", "Llama", STRATA_FAMILY_LLAMA, STRATA_VARIANT_BASE, 0, 0, 0},
    {"mistral", "MistralForCausalLM", "Mistral", STRATA_FAMILY_LLAMA, STRATA_VARIANT_MISTRAL, 8, 0,
     4096},
    {"qwen2", "Qwen2ForCausalLM", "Qwen2", STRATA_FAMILY_LLAMA, STRATA_VARIANT_QWEN2, 32, 0, 4096},
    {"qwen3", "Qwen3ForCausalLM", "Qwen3", STRATA_FAMILY_LLAMA, STRATA_VARIANT_QWEN3, 32, 128,
     4096},
};
#define N_TYPES (sizeof hf_types / sizeof hf_types[0])

static const hf_type *type_of_shape(const strata_model_shape *s)
{
    for (size_t i = 0; i < N_TYPES; i++)
        if (hf_types[i].family == s->family && hf_types[i].variant == s->variant)
            return &hf_types[i];
    return NULL;
}

/* ---- reading config.json ------------------------------------------------------- */

typedef struct cfg {
    const char *path;
    json_t *root;
} cfg;

/* A key that is absent or null. */
static json_t *cfg_get(const cfg *c, const char *key)
{
    json_t *v = json_object_get(c->root, key);
    return json_is_null(v) ? NULL : v;
}

static strata_err cfg_int(const cfg *c, const char *key, int required, long long def, long long lo,
                          long long hi, int *out)
{
    json_t *v = cfg_get(c, key);
    long long x = def;
    if (!v && required) return strata_errorf(STRATA_EINPUT, "%s: \"%s\" is missing", c->path, key);
    if (v) {
        if (!json_is_integer(v))
            return strata_errorf(STRATA_EINPUT, "%s: \"%s\" is not an integer", c->path, key);
        x = json_integer_value(v);
    }
    if (x < lo || x > hi)
        return strata_errorf(STRATA_EINPUT, "%s: \"%s\" is %lld, outside [%lld, %lld]", c->path,
                             key, x, lo, hi);
    *out = (int)x;
    return strata_ok();
}

static strata_err cfg_num(const json_t *obj, const cfg *c, const char *where, const char *key,
                          int required, double def, double *out)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_null(v)) v = NULL;
    if (!v && required)
        return strata_errorf(STRATA_EINPUT, "%s: \"%s%s\" is missing", c->path, where, key);
    if (v && !json_is_number(v))
        return strata_errorf(STRATA_EINPUT, "%s: \"%s%s\" is not a number", c->path, where, key);
    *out = v ? json_number_value(v) : def;
    if (!isfinite(*out) || *out <= 0)
        return strata_errorf(STRATA_EINPUT, "%s: \"%s%s\" is %g; it must be positive", c->path,
                             where, key, *out);
    return strata_ok();
}

static strata_err cfg_bool(const cfg *c, const char *key, int def, int *out)
{
    json_t *v = cfg_get(c, key);
    if (v && !json_is_boolean(v))
        return strata_errorf(STRATA_EINPUT, "%s: \"%s\" is not true or false", c->path, key);
    *out = v ? json_is_true(v) : def;
    return strata_ok();
}

static strata_err cfg_str(const cfg *c, const char *key, const char *def, const char **out)
{
    json_t *v = cfg_get(c, key);
    if (v && !json_is_string(v))
        return strata_errorf(STRATA_EINPUT, "%s: \"%s\" is not a string", c->path, key);
    *out = v ? json_string_value(v) : def;
    return strata_ok();
}

/* What no strata model computes, whatever the model_type says. */
/* The activation key: its default def or the equivalent alt, else refused
 * with why. */
static strata_err cfg_activation(const cfg *c, const char *key, const char *def, const char *alt,
                                 const char *why)
{
    const char *act = NULL;
    STRATA_TRY(cfg_str(c, key, def, &act));
    if (strcmp(act, def) && strcmp(act, alt))
        return strata_errorf(STRATA_EINPUT, "%s: \"%s\" is '%.40s'; %s", c->path, key, act, why);
    return strata_ok();
}

static strata_err refuse_unsupported(const cfg *c)
{
    static const char *const moe[] = {
        "num_experts",         "num_local_experts", "n_routed_experts",  "moe_num_experts",
        "num_experts_per_tok", "n_shared_experts",  "num_shared_experts"};
    for (size_t i = 0; i < sizeof moe / sizeof moe[0]; i++) {
        json_t *v = cfg_get(c, moe[i]);
        if (!v) continue;
        if (!json_is_integer(v))
            return strata_errorf(STRATA_EINPUT, "%s: \"%s\" is not an integer", c->path, moe[i]);
        if (json_integer_value(v))
            return strata_errorf(STRATA_EINPUT,
                                 "%s: \"%s\" is %lld: mixture-of-experts models are not supported",
                                 c->path, moe[i], (long long)json_integer_value(v));
    }
    static const char *const caps[] = {"attn_logit_softcapping", "final_logit_softcapping"};
    for (size_t i = 0; i < 2; i++)
        if (cfg_get(c, caps[i]))
            return strata_errorf(STRATA_EINPUT,
                                 "%s: \"%s\" is set: logit softcapping is not supported", c->path,
                                 caps[i]);
    int mlp_bias = 0;
    STRATA_TRY(cfg_bool(c, "mlp_bias", 0, &mlp_bias));
    if (mlp_bias)
        return strata_errorf(STRATA_EINPUT,
                             "%s: \"mlp_bias\" is true: MLP biases are not supported", c->path);
    json_t *prf = cfg_get(c, "partial_rotary_factor");
    if (prf && (!json_is_number(prf) || json_number_value(prf) != 1.0))
        return strata_errorf(
            STRATA_EINPUT,
            "%s: \"partial_rotary_factor\" is not 1: partial rotary embeddings are "
            "not supported",
            c->path);
    return strata_ok();
}

static strata_err parse_gpt2(const cfg *c, strata_model_shape *s)
{
    STRATA_TRY(cfg_int(c, "n_embd", 1, 0, 1, 65536, &s->n_embd));
    STRATA_TRY(cfg_int(c, "n_layer", 1, 0, 1, 1024, &s->n_layer));
    STRATA_TRY(cfg_int(c, "n_head", 1, 0, 1, 65536, &s->n_head));
    STRATA_TRY(cfg_int(c, "n_positions", 1, 0, 2, 1 << 20, &s->block_size));
    STRATA_TRY(cfg_int(c, "vocab_size", 1, 0, 2, 1 << 24, &s->vocab_size));
    STRATA_TRY(cfg_activation(c, "activation_function", "gelu_new", "gelu_pytorch_tanh",
                              "strata's GPT-2 computes GELU with the tanh approximation "
                              "(gelu_new) only"));
    int n_inner = 0;
    STRATA_TRY(cfg_int(c, "n_inner", 0, 0, 0, INT_MAX, &n_inner));
    if (n_inner && n_inner != 4 * s->n_embd)
        return strata_errorf(STRATA_EINPUT,
                             "%s: \"n_inner\" is %d; strata's GPT-2 MLP is 4 * n_embd = %d wide",
                             c->path, n_inner, 4 * s->n_embd);
    double eps = 0;
    STRATA_TRY(cfg_num(c->root, c, "", "layer_norm_epsilon", 0, 1e-5, &eps));
    if (fabs(eps - 1e-5) > 1e-12)
        return strata_errorf(
            STRATA_EINPUT, "%s: \"layer_norm_epsilon\" is %g; strata's GPT-2 LayerNorm uses 1e-05",
            c->path, eps);
    int tied = 1, scale = 1, by_layer = 0, cross = 0;
    STRATA_TRY(cfg_bool(c, "tie_word_embeddings", 1, &tied));
    STRATA_TRY(cfg_bool(c, "scale_attn_weights", 1, &scale));
    STRATA_TRY(cfg_bool(c, "scale_attn_by_inverse_layer_idx", 0, &by_layer));
    STRATA_TRY(cfg_bool(c, "add_cross_attention", 0, &cross));
    if (!tied)
        return strata_errorf(
            STRATA_EINPUT,
            "%s: \"tie_word_embeddings\" is false; strata's GPT-2 ties its lm head "
            "to wte",
            c->path);
    if (!scale || by_layer || cross)
        return strata_errorf(STRATA_EINPUT, "%s: \"%s\" is %s: not supported", c->path,
                             !scale     ? "scale_attn_weights"
                             : by_layer ? "scale_attn_by_inverse_layer_idx"
                                        : "add_cross_attention",
                             !scale ? "false" : "true");
    s->tied = 1;
    s->norm_eps = 1e-5f;
    return strata_ok();
}

/* rope_scaling (transformers v4) or rope_parameters (v5, rope_theta inside). */
static strata_err parse_rope(const cfg *c, strata_model_shape *s)
{
    double theta = 0;
    STRATA_TRY(cfg_num(c->root, c, "", "rope_theta", 0, 10000.0, &theta));
    json_t *rp = cfg_get(c, "rope_parameters");
    const char *where = "rope_parameters.";
    json_t *r = rp;
    if (!r) r = cfg_get(c, "rope_scaling"), where = "rope_scaling.";
    if (r && !json_is_object(r))
        return strata_errorf(STRATA_EINPUT, "%s: \"%.*s\" is not an object", c->path,
                             (int)strlen(where) - 1, where);
    if (rp && json_object_get(rp, "rope_theta"))
        STRATA_TRY(cfg_num(rp, c, where, "rope_theta", 1, 0, &theta));
    s->rope_theta = theta;
    s->rope_type = STRATA_ROPE_DEFAULT;
    if (!r) return strata_ok();
    json_t *type = json_object_get(r, "rope_type");
    if (!type) type = json_object_get(r, "type");
    if (!type && rp) {
        /* v5 may give one set of parameters per layer type. */
        const char *k;
        json_t *v;
        json_object_foreach(rp, k, v) if (json_is_object(v)) return strata_errorf(
            STRATA_EINPUT, "%s: \"rope_parameters.%s\": per-layer-type RoPE is not supported",
            c->path, k);
        return strata_ok(); /* rope_theta alone */
    }
    if (!json_is_string(type))
        return strata_errorf(STRATA_EINPUT, "%s: \"%srope_type\" is missing or not a string",
                             c->path, where);
    const char *t = json_string_value(type);
    if (!strcmp(t, "default")) return strata_ok();
    if (!strcmp(t, "linear")) {
        s->rope_type = STRATA_ROPE_LINEAR;
        return cfg_num(r, c, where, "factor", 1, 0, &s->rope_factor);
    }
    if (!strcmp(t, "llama3")) {
        s->rope_type = STRATA_ROPE_LLAMA3;
        STRATA_TRY(cfg_num(r, c, where, "factor", 1, 0, &s->rope_factor));
        STRATA_TRY(cfg_num(r, c, where, "low_freq_factor", 1, 0, &s->rope_low_freq_factor));
        STRATA_TRY(cfg_num(r, c, where, "high_freq_factor", 1, 0, &s->rope_high_freq_factor));
        double orig = 0;
        STRATA_TRY(cfg_num(r, c, where, "original_max_position_embeddings", 1, 0, &orig));
        if (orig != floor(orig) || orig > (1 << 24))
            return strata_errorf(STRATA_EINPUT,
                                 "%s: \"%soriginal_max_position_embeddings\" is %g, not a size",
                                 c->path, where, orig);
        if (s->rope_high_freq_factor <= s->rope_low_freq_factor)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: \"%shigh_freq_factor\" must exceed low_freq_factor", c->path,
                                 where);
        s->rope_original_max = (int)orig;
        return strata_ok();
    }
    return strata_errorf(STRATA_EINPUT,
                         "%s: \"%srope_type\" is '%.40s'; only default, linear and llama3 are "
                         "supported",
                         c->path, where, t);
}

/* Qwen2/Qwen3: layer i slides when use_sliding_window and i >= max_window_layers
 * (or as layer_types lists); only all-or-none is a single window. */
static strata_err parse_qwen_window(const cfg *c, const hf_type *ty, strata_model_shape *s)
{
    int use = 0, window = ty->window_default, mwl = 28, L = s->n_layer;
    STRATA_TRY(cfg_bool(c, "use_sliding_window", 0, &use));
    json_t *w = json_object_get(c->root, "sliding_window");
    if (json_is_null(w))
        window = 0;
    else
        STRATA_TRY(cfg_int(c, "sliding_window", 0, ty->window_default, 1, INT_MAX, &window));
    STRATA_TRY(cfg_int(c, "max_window_layers", 0, 28, 0, INT_MAX, &mwl));
    if (!use) window = 0;
    int n_sliding = window ? (mwl >= L ? 0 : L - mwl) : 0;
    json_t *lt = cfg_get(c, "layer_types");
    if (lt) {
        if (!json_is_array(lt) || json_array_size(lt) != (size_t)L)
            return strata_errorf(
                STRATA_EINPUT, "%s: \"layer_types\" is not a list of num_hidden_layers (%d) names",
                c->path, L);
        n_sliding = 0;
        for (int i = 0; i < L; i++) {
            const char *t = json_string_value(json_array_get(lt, (size_t)i));
            if (t && !strcmp(t, "sliding_attention"))
                n_sliding++;
            else if (!t || strcmp(t, "full_attention"))
                return strata_errorf(STRATA_EINPUT,
                                     "%s: \"layer_types[%d]\" is not "
                                     "full_attention or sliding_attention",
                                     c->path, i);
        }
        if (n_sliding && !window)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: \"layer_types\" names sliding layers but no sliding_window "
                                 "is in use",
                                 c->path);
    }
    if (n_sliding && n_sliding < L)
        return strata_errorf(STRATA_EINPUT,
                             "%s: \"max_window_layers\" (%d) < num_hidden_layers (%d) with "
                             "use_sliding_window: %d of %d layers slide, and per-layer windows are "
                             "not supported",
                             c->path, mwl, L, n_sliding, L);
    s->sliding_window = n_sliding ? window : 0;
    return strata_ok();
}

static strata_err parse_llama(const cfg *c, const hf_type *ty, strata_model_shape *s)
{
    STRATA_TRY(cfg_int(c, "hidden_size", 1, 0, 1, 65536, &s->n_embd));
    STRATA_TRY(cfg_int(c, "intermediate_size", 1, 0, 1, 1 << 20, &s->ffn_dim));
    STRATA_TRY(cfg_int(c, "num_hidden_layers", 1, 0, 1, 1024, &s->n_layer));
    STRATA_TRY(cfg_int(c, "num_attention_heads", 1, 0, 1, 65536, &s->n_head));
    STRATA_TRY(cfg_int(c, "vocab_size", 1, 0, 2, 1 << 24, &s->vocab_size));
    STRATA_TRY(cfg_int(c, "max_position_embeddings", 1, 0, 2, 1 << 20, &s->block_size));
    int kv_default = ty->kv_default ? ty->kv_default : s->n_head;
    STRATA_TRY(cfg_int(c, "num_key_value_heads", 0, kv_default, 1, 65536, &s->n_kv_head));
    if (s->n_head % s->n_kv_head)
        return strata_errorf(STRATA_EINPUT,
                             "%s: \"num_attention_heads\" (%d) is not a multiple of "
                             "num_key_value_heads (%d)",
                             c->path, s->n_head, s->n_kv_head);
    json_t *hd = json_object_get(c->root, "head_dim");
    int hd_default = ty->head_dim_default && !json_is_null(hd) ? ty->head_dim_default : 0;
    STRATA_TRY(cfg_int(c, "head_dim", 0, hd_default, 0, 65536, &s->head_dim));
    if (!s->head_dim) {
        if (s->n_embd % s->n_head)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: \"hidden_size\" (%d) is not a multiple of "
                                 "num_attention_heads (%d) and there is no head_dim",
                                 c->path, s->n_embd, s->n_head);
        s->head_dim = s->n_embd / s->n_head;
    }
    STRATA_TRY(cfg_activation(c, "hidden_act", "silu", "swish",
                              "the llama family's MLP is SwiGLU (silu) only"));
    double eps = 0;
    STRATA_TRY(cfg_num(c->root, c, "", "rms_norm_eps", 0, 1e-6, &eps));
    s->norm_eps = (float)eps;
    STRATA_TRY(cfg_bool(c, "tie_word_embeddings", 0, &s->tied));
    int attention_bias = 0;
    STRATA_TRY(cfg_bool(c, "attention_bias", 0, &attention_bias));
    /* Qwen2 always biases q/k/v and never o_proj (and ignores the key);
     * Llama, Mistral and Qwen3 bias all four projections or none. */
    if (ty->variant == STRATA_VARIANT_QWEN2)
        s->qkv_bias = 1;
    else if (attention_bias)
        return strata_errorf(STRATA_EINPUT,
                             "%s: \"attention_bias\" is true: %s then biases q, k, v and o_proj, "
                             "and strata's llama family has q/k/v biases only (as Qwen2)",
                             c->path, ty->display);
    s->qk_norm = ty->variant == STRATA_VARIANT_QWEN3;
    if (ty->variant == STRATA_VARIANT_MISTRAL) {
        json_t *w = json_object_get(c->root, "sliding_window");
        if (json_is_null(w))
            s->sliding_window = 0;
        else
            STRATA_TRY(cfg_int(c, "sliding_window", 0, ty->window_default, 1, INT_MAX,
                               &s->sliding_window));
    } else if (ty->variant == STRATA_VARIANT_QWEN2 || ty->variant == STRATA_VARIANT_QWEN3) {
        STRATA_TRY(parse_qwen_window(c, ty, s));
    }
    return parse_rope(c, s);
}

static strata_err load_config(const char *dir, cfg *c, char *path, size_t path_len)
{
    if (snprintf(path, path_len, "%s/%s", dir, CONFIG_NAME) >= (int)path_len)
        return strata_errorf(STRATA_EINPUT, "%s: path too long", dir);
    c->path = path;
    json_error_t jerr;
    c->root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!c->root) {
        if (access(path, F_OK) != 0)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: cannot open: %s; HINT: a Hugging Face "
                                 "checkpoint directory holds config.json",
                                 path, strerror(errno));
        return strata_errorf(STRATA_EINPUT, "%s:%d: not JSON: %s", path, jerr.line, jerr.text);
    }
    if (!json_is_object(c->root)) {
        json_decref(c->root);
        c->root = NULL;
        return strata_errorf(STRATA_EINPUT, "%s: not a JSON object", path);
    }
    return strata_ok();
}

strata_err strata_hf_read_config(const char *dir, strata_model_shape *shape)
{
    memset(shape, 0, sizeof *shape);
    char path[PATH_MAX];
    cfg c = {0};
    STRATA_TRY(load_config(dir, &c, path, sizeof path));
    const char *mt = NULL;
    strata_err e = cfg_str(&c, "model_type", NULL, &mt);
    if (!e.code && !mt) e = strata_errorf(STRATA_EINPUT, "%s: \"model_type\" is missing", path);
    const hf_type *ty = NULL;
    for (size_t i = 0; !e.code && i < N_TYPES; i++)
        if (!strcmp(mt, hf_types[i].model_type)) ty = &hf_types[i];
    if (!e.code && !ty)
        e = strata_errorf(STRATA_EINPUT,
                          "%s: \"model_type\" is '%.40s'; supported: gpt2, llama, mistral, qwen2, "
                          "qwen3",
                          path, mt);
    if (!e.code) e = refuse_unsupported(&c);
    strata_model_shape s = {0};
    if (!e.code) {
        s.family = ty->family;
        s.variant = ty->variant;
        e = ty->family == STRATA_FAMILY_GPT2 ? parse_gpt2(&c, &s) : parse_llama(&c, ty, &s);
    }
    json_decref(c.root);
    if (e.code) return e;
    *shape = s;
    return strata_ok();
}

strata_err strata_hf_read_config_extra(const char *dir, char **extra_json)
{
    *extra_json = NULL;
    char path[PATH_MAX];
    cfg c = {0};
    STRATA_TRY(load_config(dir, &c, path, sizeof path));
    static const char *const keys[] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    json_t *out = json_object();
    for (size_t i = 0; out && i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(c.root, keys[i]);
        /* eos_token_id may be a list (Llama 3 instruct). */
        if (json_is_integer(v) || json_is_array(v)) json_object_set(out, keys[i], v);
    }
    *extra_json = out ? json_dumps(out, JSON_COMPACT) : NULL;
    json_decref(out);
    json_decref(c.root);
    return *extra_json ? strata_ok() : strata_errorf(STRATA_ENOMEM, "out of memory");
}

/* ---- writing config.json --------------------------------------------------------- */

/* A float as the shortest decimal that reads back as the same float, so
 * 1e-5f is written "1e-05", not 9.99999974737875e-06. */
static json_t *json_float(float x)
{
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)x);
        if ((float)strtod(buf, NULL) == x) break;
    }
    return json_real(strtod(buf, NULL));
}

strata_err strata_hf_write_json(const char *path, json_t *root)
{
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
    if (!text) return strata_errorf(STRATA_ENOMEM, "out of memory");
    strata_out_file o;
    strata_err e = strata_out_open(&o, path);
    if (!e.code) {
        strata_out_write(&o, text, strlen(text));
        strata_out_write(&o, "\n", 1);
        e = strata_out_finish(&o);
    }
    free(text);
    return e;
}

/* GPT2Config's keys. */
static void gpt2_keys(json_t *o, const strata_model_shape *s)
{
    json_object_set_new(o, "n_embd", json_integer(s->n_embd));
    json_object_set_new(o, "n_layer", json_integer(s->n_layer));
    json_object_set_new(o, "n_head", json_integer(s->n_head));
    json_object_set_new(o, "n_positions", json_integer(s->block_size));
    json_object_set_new(o, "n_ctx", json_integer(s->block_size));
    json_object_set_new(o, "n_inner", json_null());
    json_object_set_new(o, "activation_function", json_string("gelu_new"));
    json_object_set_new(o, "layer_norm_epsilon", json_float(1e-5f));
    json_object_set_new(o, "scale_attn_weights", json_true());
    json_object_set_new(o, "tie_word_embeddings", json_true());
}

/* The llama family's keys, as the variant's transformers class reads them. */
static void llama_keys(json_t *o, const strata_model_shape *s, const hf_type *ty)
{
    int n_kv = s->n_kv_head ? s->n_kv_head : s->n_head;
    int hd = s->head_dim ? s->head_dim : s->n_embd / s->n_head;
    json_object_set_new(o, "hidden_size", json_integer(s->n_embd));
    json_object_set_new(o, "intermediate_size",
                        json_integer(s->ffn_dim ? s->ffn_dim : 4 * s->n_embd));
    json_object_set_new(o, "num_hidden_layers", json_integer(s->n_layer));
    json_object_set_new(o, "num_attention_heads", json_integer(s->n_head));
    json_object_set_new(o, "num_key_value_heads", json_integer(n_kv));
    json_object_set_new(o, "head_dim", json_integer(hd));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "max_position_embeddings", json_integer(s->block_size));
    json_object_set_new(o, "rms_norm_eps", json_float(s->norm_eps > 0 ? s->norm_eps : 1e-5f));
    json_object_set_new(o, "rope_theta", json_real(s->rope_theta > 0 ? s->rope_theta : 10000.0));
    json_t *rope = json_null();
    if (s->rope_type == STRATA_ROPE_LINEAR)
        rope = json_pack("{s:s, s:f}", "rope_type", "linear", "factor", s->rope_factor);
    else if (s->rope_type == STRATA_ROPE_LLAMA3)
        rope = json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor",
                         s->rope_factor, "low_freq_factor", s->rope_low_freq_factor,
                         "high_freq_factor", s->rope_high_freq_factor,
                         "original_max_position_embeddings", s->rope_original_max);
    json_object_set_new(o, "rope_scaling", rope);
    json_object_set_new(o, "tie_word_embeddings", json_boolean(s->tied));
    if (ty->variant != STRATA_VARIANT_QWEN2) json_object_set_new(o, "attention_bias", json_false());
    if (ty->variant == STRATA_VARIANT_BASE) json_object_set_new(o, "mlp_bias", json_false());
    if (ty->variant == STRATA_VARIANT_MISTRAL)
        json_object_set_new(o, "sliding_window",
                            s->sliding_window ? json_integer(s->sliding_window) : json_null());
    if (ty->variant == STRATA_VARIANT_QWEN2 || ty->variant == STRATA_VARIANT_QWEN3) {
        /* Every layer slides (max_window_layers 0) or none does. */
        json_object_set_new(o, "use_sliding_window", json_boolean(s->sliding_window > 0));
        json_object_set_new(o, "sliding_window",
                            s->sliding_window ? json_integer(s->sliding_window) : json_null());
        json_object_set_new(o, "max_window_layers",
                            json_integer(s->sliding_window ? 0 : s->n_layer));
    }
}

static strata_err config_json(const char *dir, const strata_model_shape *s, int dtype, json_t **out)
{
    const hf_type *ty = type_of_shape(s);
    if (!ty)
        return strata_errorf(STRATA_EINPUT,
                             "%s: no Hugging Face model_type for family %d variant %d", dir,
                             s->family, s->variant);
    json_t *o = json_object();
    if (!o) return strata_errorf(STRATA_ENOMEM, "out of memory");
    json_object_set_new(o, "architectures", json_pack("[s]", ty->architecture));
    json_object_set_new(o, "model_type", json_string(ty->model_type));
    json_object_set_new(o, "torch_dtype",
                        json_string(dtype == STRATA_ST_BF16 ? "bfloat16" : "float32"));
    json_object_set_new(o, "vocab_size", json_integer(s->vocab_size));
    if (ty->family == STRATA_FAMILY_GPT2) {
        gpt2_keys(o, s);
        *out = o;
        return strata_ok();
    }
    /* The llama family: what the variant's transformers class computes must
     * be what the shape says. */
    int want_bias = ty->variant == STRATA_VARIANT_QWEN2,
        want_norm = ty->variant == STRATA_VARIANT_QWEN3;
    const char *bad = !!s->qkv_bias != want_bias                                ? "q/k/v biases"
                      : !!s->qk_norm != want_norm                               ? "QK-norm"
                      : s->sliding_window && ty->variant == STRATA_VARIANT_BASE ? "a sliding window"
                                                                                : NULL;
    if (bad) {
        json_decref(o);
        return strata_errorf(STRATA_EINPUT,
                             "%s: model_type %s cannot describe this model's %s (qkv_bias %d, "
                             "qk_norm %d, sliding_window %d)",
                             dir, ty->model_type, bad, s->qkv_bias, s->qk_norm, s->sliding_window);
    }
    llama_keys(o, s, ty);
    *out = o;
    return strata_ok();
}

strata_err strata_hf_write_config(const char *dir, const strata_model_shape *shape, int dtype,
                                  const char *extra_json)
{
    json_t *extra = NULL;
    if (extra_json) {
        json_error_t jerr;
        extra = json_loads(extra_json, 0, &jerr);
        if (!json_is_object(extra)) {
            json_decref(extra);
            return strata_errorf(STRATA_EINPUT, "%s: the extra config keys are not a JSON object",
                                 dir);
        }
    }
    json_t *o = NULL;
    strata_err e = config_json(dir, shape, dtype, &o);
    if (!e.code) {
        const char *k;
        json_t *v;
        json_object_foreach(extra, k, v) if (!json_object_get(o, k)) json_object_set(o, k, v);
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, CONFIG_NAME) >= (int)sizeof path)
            e = strata_errorf(STRATA_EINPUT, "%s: path too long", dir);
        else
            e = strata_hf_write_json(path, o);
    }
    json_decref(o);
    json_decref(extra);
    return e;
}

const char *strata_hf_display_name(const strata_model_shape *s)
{
    const hf_type *ty = type_of_shape(s);
    return ty ? ty->display : NULL;
}
