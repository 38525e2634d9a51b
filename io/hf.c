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

#define CONFIG_NAME "config.json"

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
    const char *act = NULL;
    STRATA_TRY(cfg_str(c, "activation_function", "gelu_new", &act));
    if (strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
        return strata_errorf(STRATA_EINPUT,
                             "%s: \"activation_function\" is '%.40s'; strata's GPT-2 computes "
                             "GELU with the tanh approximation (gelu_new) only",
                             c->path, act);
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
    const char *act = NULL;
    STRATA_TRY(cfg_str(c, "hidden_act", "silu", &act));
    if (strcmp(act, "silu") && strcmp(act, "swish"))
        return strata_errorf(STRATA_EINPUT,
                             "%s: \"hidden_act\" is '%.40s'; the llama family's MLP is SwiGLU "
                             "(silu) only",
                             c->path, act);
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
    return *extra_json ? strata_ok() : strata_errorf(STRATA_EFAIL, "out of memory");
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

static strata_err write_json_file(const char *path, json_t *root)
{
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
    if (!text) return strata_errorf(STRATA_EFAIL, "out of memory");
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

static strata_err config_json(const char *dir, const strata_model_shape *s, int dtype, json_t **out)
{
    const hf_type *ty = type_of_shape(s);
    if (!ty)
        return strata_errorf(STRATA_EINPUT,
                             "%s: no Hugging Face model_type for family %d variant %d", dir,
                             s->family, s->variant);
    json_t *o = json_object();
    if (!o) return strata_errorf(STRATA_EFAIL, "out of memory");
    json_object_set_new(o, "architectures", json_pack("[s]", ty->architecture));
    json_object_set_new(o, "model_type", json_string(ty->model_type));
    json_object_set_new(o, "torch_dtype",
                        json_string(dtype == STRATA_ST_BF16 ? "bfloat16" : "float32"));
    json_object_set_new(o, "vocab_size", json_integer(s->vocab_size));
    if (ty->family == STRATA_FAMILY_GPT2) {
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
            e = write_json_file(path, o);
    }
    json_decref(o);
    json_decref(extra);
    return e;
}

/* ---- tensors ---------------------------------------------------------------------- */

/* The file stores t transposed. src/model.c's GPT-2 table predates
 * hf_transposed, so GPT-2's Conv1D weights are also known by name. */
static int stored_transposed(const strata_model *m, const strata_tensor *t)
{
    if (t->hf_transposed) return 1;
    if (strata_model_get_shape(m)->family != STRATA_FAMILY_GPT2 || t->ndim != 2) return 0;
    static const char *const conv[] = {".attn.c_attn.weight", ".attn.c_proj.weight",
                                       ".mlp.c_fc.weight", ".mlp.c_proj.weight"};
    size_t n = strlen(t->name);
    for (int i = 0; i < 4; i++) {
        size_t k = strlen(conv[i]);
        if (n > k && !strcmp(t->name + n - k, conv[i])) return 1;
    }
    return 0;
}

static const strata_tensor *token_embedding(const strata_model *m)
{
    for (int i = 0; i < strata_model_n_tensors(m); i++)
        if (strata_model_tensor(m, i)->role == STRATA_ROLE_TOKEN_EMBED)
            return strata_model_tensor(m, i);
    return NULL;
}

static int has_lm_head(const strata_model *m)
{
    for (int i = 0; i < strata_model_n_tensors(m); i++)
        if (strata_model_tensor(m, i)->role == STRATA_ROLE_LM_HEAD) return 1;
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Buffers transformers saves beside the weights. */
static int known_buffer(const char *name)
{
    return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") ||
           ends_with(name, ".rotary_emb.inv_freq");
}

/* The file's tensor for a table name: itself or with GPT-2's "transformer."
 * prefix (both at once is ambiguous). */
static strata_err lookup(const strata_safetensors *st, const char *where, const char *name,
                         const strata_st_tensor **out)
{
    char prefixed[96];
    snprintf(prefixed, sizeof prefixed, "transformer.%s", name);
    const strata_st_tensor *a = strata_st_find(st, name), *b = strata_st_find(st, prefixed);
    if (a && b)
        return strata_errorf(STRATA_EINPUT, "%s: tensors '%s' and '%s' are the same", where,
                             a->name, b->name);
    *out = a ? a : b;
    return strata_ok();
}

static void shape_text(char *buf, size_t len, int ndim, const uint64_t *shape)
{
    int n = snprintf(buf, len, "[");
    for (int i = 0; i < ndim && n < (int)len; i++)
        n += snprintf(buf + n, len - (size_t)n, "%s%llu", i ? ", " : "",
                      (unsigned long long)shape[i]);
    if (n < (int)len) snprintf(buf + n, len - (size_t)n, "]");
}

static const char *display_name(const strata_model *m)
{
    const hf_type *ty = type_of_shape(strata_model_get_shape(m));
    return ty ? ty->display : "this model";
}

static void transpose(float *dst, const float *src, size_t rows, size_t cols)
{
    /* dst (cols, rows) = src (rows, cols)^T, in 32x32 tiles for the cache. */
    for (size_t r0 = 0; r0 < rows; r0 += 32)
        for (size_t c0 = 0; c0 < cols; c0 += 32)
            for (size_t r = r0; r < r0 + 32 && r < rows; r++)
                for (size_t c = c0; c < c0 + 32 && c < cols; c++)
                    dst[c * rows + r] = src[r * cols + c];
}

strata_err strata_hf_load_tensors(const strata_safetensors *st, const char *where, strata_model *m)
{
    int n = strata_model_n_tensors(m);
    size_t nf = strata_st_count(st);
    const strata_st_tensor **src = calloc((size_t)n + 1, sizeof *src);
    unsigned char *used = calloc(nf + 1, 1);
    float *tmp = NULL;
    strata_err e = strata_ok();
    if (!src || !used) e = strata_errorf(STRATA_EFAIL, "out of memory");
    /* First every name and shape, before any payload. */
    for (int i = 0; i < n && !e.code; i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        if ((e = lookup(st, where, t->name, &src[i])).code) break;
        const strata_st_tensor *f = src[i];
        if (!f) {
            e = strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is missing", where, t->name);
            break;
        }
        used[f - strata_st_at(st, 0)] = 1;
        uint64_t want[2] = {(uint64_t)t->shape[0], (uint64_t)t->shape[1]};
        if (stored_transposed(m, t))
            want[0] = (uint64_t)t->shape[1], want[1] = (uint64_t)t->shape[0];
        if (f->ndim != t->ndim || f->shape[0] != want[0] ||
            (t->ndim == 2 && f->shape[1] != want[1])) {
            char got[160], exp[64];
            shape_text(got, sizeof got, f->ndim, f->shape);
            shape_text(exp, sizeof exp, t->ndim, want);
            e = strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has shape %s, expected %s",
                              strata_st_path(st, f->file), f->name, got, exp);
        }
    }
    /* A tied model may carry its head; it must then be the embedding. */
    const strata_tensor *emb = token_embedding(m);
    const strata_st_tensor *head = NULL;
    if (!e.code && !has_lm_head(m) && emb) {
        head = strata_st_find(st, "lm_head.weight");
        if (head) {
            used[head - strata_st_at(st, 0)] = 1;
            if (head->ndim != 2 || head->shape[0] != (uint64_t)emb->shape[0] ||
                head->shape[1] != (uint64_t)emb->shape[1])
                e = strata_errorf(
                    STRATA_EINPUT, "%s: lm_head.weight does not have %s's shape [%d, %d]",
                    strata_st_path(st, head->file), emb->name, emb->shape[0], emb->shape[1]);
        }
    }
    for (size_t i = 0; i < nf && !e.code; i++) {
        const strata_st_tensor *f = strata_st_at(st, i);
        if (!used[i] && !known_buffer(f->name))
            e = strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is not part of %s",
                              strata_st_path(st, f->file), f->name, display_name(m));
    }
    /* Then the payload. */
    float *p = strata_model_params(m);
    size_t tmp_len = 0;
    for (int i = 0; i < n && !e.code; i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        if (!stored_transposed(m, t)) {
            e = strata_st_read(st, src[i], p + t->offset);
            continue;
        }
        if (tmp_len < t->numel) {
            free(tmp);
            tmp_len = 0;
            if (!(tmp = malloc(t->numel * sizeof(float)))) {
                e = strata_errorf(STRATA_EFAIL, "out of memory");
                break;
            }
            tmp_len = t->numel;
        }
        e = strata_st_read(st, src[i], tmp);
        if (!e.code) transpose(p + t->offset, tmp, (size_t)t->shape[1], (size_t)t->shape[0]);
    }
    if (!e.code && head) {
        free(tmp);
        tmp = malloc(emb->numel * sizeof(float));
        if (!tmp)
            e = strata_errorf(STRATA_EFAIL, "out of memory");
        else
            e = strata_st_read(st, head, tmp);
        if (!e.code && memcmp(tmp, p + emb->offset, emb->numel * sizeof(float)))
            e = strata_errorf(STRATA_EINPUT,
                              "%s: lm_head.weight differs from %s; the model ties the two "
                              "(tie_word_embeddings) and cannot import an untied head",
                              strata_st_path(st, head->file), emb->name);
    }
    free(tmp);
    free(src);
    free(used);
    return e;
}

strata_err strata_hf_import(const char *dir, strata_model **out)
{
    *out = NULL;
    strata_model_shape shape;
    STRATA_TRY(strata_hf_read_config(dir, &shape));
    strata_safetensors *st = NULL;
    STRATA_TRY(strata_st_open_dir(dir, &st));
    strata_model *m = NULL;
    strata_err e = strata_model_create(&m, &shape);
    if (e.code) {
        strata_err inner = e;
        e = strata_errorf(inner.code, "%s/%s: %s", dir, CONFIG_NAME, inner.msg);
    }
    if (!e.code) e = strata_hf_load_tensors(st, dir, m);
    strata_st_close(st);
    if (e.code) {
        strata_model_free(m);
        return e;
    }
    *out = m;
    return strata_ok();
}

/* ---- writing weights --------------------------------------------------------------- */

static void spec_of(const strata_model *m, const strata_tensor *t, strata_st_spec *s)
{
    memset(s, 0, sizeof *s);
    s->name = t->name;
    s->ndim = t->ndim;
    int tr = stored_transposed(m, t);
    s->shape[0] = (uint64_t)t->shape[tr ? 1 : 0];
    if (t->ndim == 2) s->shape[1] = (uint64_t)t->shape[tr ? 0 : 1];
}

/* Writes tensors [first, first + count) of m's table to path. */
static strata_err write_range(const strata_model *m, const char *path, int dtype, int first,
                              int count, const char *const *metadata)
{
    strata_st_spec *specs = calloc((size_t)count + 1, sizeof *specs);
    size_t max_tr = 0;
    if (!specs) return strata_errorf(STRATA_EFAIL, "out of memory");
    for (int i = 0; i < count; i++) {
        const strata_tensor *t = strata_model_tensor(m, first + i);
        spec_of(m, t, &specs[i]);
        if (stored_transposed(m, t) && t->numel > max_tr) max_tr = t->numel;
    }
    float *tmp = malloc((max_tr ? max_tr : 1) * sizeof(float));
    strata_st_writer *w = NULL;
    strata_err e = tmp ? strata_st_write_begin(&w, path, dtype, specs, (size_t)count, metadata)
                       : strata_errorf(STRATA_EFAIL, "out of memory");
    const float *p = strata_model_params((strata_model *)m);
    for (int i = 0; i < count && !e.code; i++) {
        const strata_tensor *t = strata_model_tensor(m, first + i);
        if (stored_transposed(m, t)) {
            transpose(tmp, p + t->offset, (size_t)t->shape[0], (size_t)t->shape[1]);
            e = strata_st_write_tensor(w, tmp);
        } else {
            e = strata_st_write_tensor(w, p + t->offset);
        }
    }
    if (w) {
        if (e.code)
            strata_st_write_abort(w);
        else
            e = strata_st_write_finish(w);
    }
    free(tmp);
    free(specs);
    return e;
}

strata_err strata_hf_write_weights(const strata_model *m, const char *path, int dtype,
                                   const char *const *metadata)
{
    return write_range(m, path, dtype, 0, strata_model_n_tensors(m), metadata);
}

/* model-00001-of-00003.safetensors */
static int is_shard_name(const char *s)
{
    unsigned a, b;
    int end = 0;
    return strlen(s) == 32 && sscanf(s, "model-%5u-of-%5u.safetensors%n", &a, &b, &end) == 2 &&
           end == 32;
}

/* Removes what an older export left that would shadow or confuse this one. */
static strata_err remove_stale(const char *dir, int n_shards)
{
    DIR *d = opendir(dir);
    if (!d) return strata_errorf(STRATA_EFAIL, "%s: cannot list: %s", dir, strerror(errno));
    char keep_suffix[32];
    snprintf(keep_suffix, sizeof keep_suffix, "-of-%05d.safetensors", n_shards);
    strata_err e = strata_ok();
    struct dirent *de;
    while ((de = readdir(d)) && !e.code) {
        const char *nm = de->d_name;
        int stale = n_shards == 1
                        ? (!strcmp(nm, "model.safetensors.index.json") || is_shard_name(nm))
                        : (!strcmp(nm, "model.safetensors") ||
                           (is_shard_name(nm) && !ends_with(nm, keep_suffix)));
        if (!stale) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, nm);
        if (unlink(path) < 0)
            e = strata_errorf(STRATA_EFAIL, "%s: cannot remove a stale file: %s", path,
                              strerror(errno));
    }
    closedir(d);
    return e.code ? e : strata_sync_dir(dir);
}

strata_err strata_hf_export(const strata_model *m, const char *dir, int dtype,
                            size_t max_shard_bytes, const char *extra_json)
{
    if (dtype != STRATA_ST_F32 && dtype != STRATA_ST_BF16)
        return strata_errorf(STRATA_EINPUT, "%s: export dtype must be F32 or BF16", dir);
    if (!max_shard_bytes) max_shard_bytes = STRATA_HF_DEFAULT_SHARD_BYTES;
    const strata_model_shape *s = strata_model_get_shape(m);
    if (!type_of_shape(s))
        return strata_errorf(STRATA_EINPUT,
                             "%s: no Hugging Face model_type for family %d variant %d", dir,
                             s->family, s->variant);
    STRATA_TRY(strata_mkdir_p(dir));
    /* Shards in table order: a tensor starts a new shard when it would push
     * a non-empty one past the limit (as save_pretrained does). */
    int n = strata_model_n_tensors(m);
    int *shard_of = calloc((size_t)n + 1, sizeof *shard_of);
    if (!shard_of) return strata_errorf(STRATA_EFAIL, "out of memory");
    int n_shards = 1;
    uint64_t in_shard = 0, total = 0;
    for (int i = 0; i < n; i++) {
        strata_st_spec sp;
        spec_of(m, strata_model_tensor(m, i), &sp);
        uint64_t b = strata_st_bytes(&sp, dtype);
        if (in_shard && in_shard + b > max_shard_bytes) n_shards++, in_shard = 0;
        in_shard += b;
        total += b;
        shard_of[i] = n_shards - 1;
    }
    strata_err e = strata_ok();
    char path[PATH_MAX];
    if (n_shards == 1) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        e = strata_hf_write_weights(m, path, dtype, NULL);
    } else {
        json_t *map = json_object();
        for (int k = 0, first = 0; k < n_shards && !e.code; k++) {
            int count = 0;
            while (first + count < n && shard_of[first + count] == k) count++;
            char name[64];
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, n_shards);
            snprintf(path, sizeof path, "%s/%s", dir, name);
            e = write_range(m, path, dtype, first, count, NULL);
            for (int i = first; i < first + count; i++)
                json_object_set_new(map, strata_model_tensor(m, i)->name, json_string(name));
            first += count;
        }
        if (!e.code) {
            json_t *index = json_pack("{s:{s:I}, s:O}", "metadata", "total_size", (json_int_t)total,
                                      "weight_map", map);
            snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
            e = index ? write_json_file(path, index) : strata_errorf(STRATA_EFAIL, "out of memory");
            json_decref(index);
        }
        json_decref(map);
    }
    free(shard_of);
    if (!e.code) e = strata_hf_write_config(dir, s, dtype, extra_json);
    if (!e.code) e = remove_stale(dir, n_shards);
    return e;
}
