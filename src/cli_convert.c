/* cli_convert.c — `strata import` and `strata export`: weights between
 * strata checkpoints and llm.c model files, lone GPT-2 safetensors files and
 * Hugging Face checkpoint directories (config.json + safetensors). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/ckpt.h"
#include "strata/cli.h"
#include "strata/convert.h"
#include "strata/hf.h"
#include "strata/tokenizer.h"

static const char import_usage[] =
    "usage: strata import --from llmc|safetensors|hf IN --out CKPT.h5 [--n-head N]\n"
    "\n"
    "Converts weights into a model-only strata checkpoint, for [model] init.\n"
    "  --from hf           a Hugging Face checkpoint directory: config.json and\n"
    "                      model.safetensors or its shards (gpt2, llama, mistral,\n"
    "                      qwen2, qwen3; F32, BF16 or F16)\n"
    "  --from llmc         llm.c's model file (train_gpt2.py's version 3: fp32, padded vocab)\n"
    "  --from safetensors  Hugging Face GPT-2 safetensors (names with or without\n"
    "                      'transformer.'; Conv1D weights are transposed)\n"
    "  --n-head N          heads, for safetensors that do not say (default: the file's\n"
    "                      __metadata__, else config.json beside it)\n";

static const char export_usage[] =
    "usage: strata export --to llmc|safetensors|hf CKPT.h5 --out FILE|DIR [--padded-vocab N]\n"
    "                     [--dtype f32|bf16] [--max-shard-bytes N]\n"
    "\n"
    "Writes a strata checkpoint's model as an llm.c model file (version 3), as\n"
    "Hugging Face GPT-2 safetensors (hub names, Conv1D layout), or as a Hugging Face\n"
    "checkpoint directory (config.json, model.safetensors or shards).\n"
    "  --dtype f32|bf16    hf: the weights' dtype (default f32; bf16 rounds to nearest even)\n"
    "  --max-shard-bytes N hf: shard above N bytes (default 5000000000, as transformers)\n"
    "  --padded-vocab N    llm.c's padded vocabulary (default: vocab_size rounded up to 128)\n";

typedef struct convert_args {
    const char *format, *in, *out;
    int n_head, padded_vocab;
    int dtype; /* STRATA_ST_*, hf export */
    long long max_shard_bytes;
    int dtype_given;
} convert_args;

static int bad_usage(const char *cmd, const char *what)
{
    fprintf(stderr, "strata %s: %s (try strata %s --help)\n", cmd, what, cmd);
    return STRATA_EINPUT;
}

static int parse_positive(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < 1 || v > 1 << 30) return 0;
    *out = (int)v;
    return 1;
}

/* The checks once every argument is read: the format is known, the options
 * fit it, and there is one input and an output. Returns -1 to go on, else
 * the exit status. */
static int check_args(const convert_args *a, const char *cmd, const char *format_flag)
{
    if (!a->format) {
        char what[64];
        snprintf(what, sizeof what, "%s llmc|safetensors|hf is required", format_flag);
        return bad_usage(cmd, what);
    }
    if (strcmp(a->format, "llmc") && strcmp(a->format, "safetensors") && strcmp(a->format, "hf")) {
        char what[96];
        snprintf(what, sizeof what, "unknown format '%.40s' (llmc, safetensors or hf)", a->format);
        return bad_usage(cmd, what);
    }
    if ((a->dtype_given || a->max_shard_bytes) && strcmp(a->format, "hf"))
        return bad_usage(cmd, "--dtype and --max-shard-bytes are for --to hf");
    if (a->n_head && strcmp(a->format, "safetensors"))
        return bad_usage(cmd, "--n-head is for --from safetensors");
    if (!a->in) return bad_usage(cmd, "no input file given");
    if (!a->out || !*a->out) return bad_usage(cmd, "--out FILE is required");
    return -1;
}

/* Parses the arguments shared by import and export; format_flag is
 * "--from" or "--to". Returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, const char *cmd, const char *format_flag,
                      const char *usage, convert_args *a)
{
    memset(a, 0, sizeof *a);
    size_t flag_len = strlen(format_flag);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = NULL;
        const char *eq = strchr(arg, '=');
        char name[32];
        if (arg[0] == '-' && arg[1] == '-' && eq && (size_t)(eq - arg) < sizeof name) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - arg), arg);
            value = eq + 1;
        } else {
            snprintf(name, sizeof name, "%.31s", arg);
        }
        if (!strcmp(name, "-h") || !strcmp(name, "--help")) {
            fputs(usage, stdout);
            return 0;
        }
        int takes_value = !strcmp(name, format_flag) || !strcmp(name, "--out") ||
                          !strcmp(name, "-o") || !strcmp(name, "--n-head") ||
                          !strcmp(name, "--padded-vocab") || !strcmp(name, "--dtype") ||
                          !strcmp(name, "--max-shard-bytes");
        if (takes_value && !value) {
            if (i + 1 >= argc) {
                char what[64];
                snprintf(what, sizeof what, "%s needs a value", name);
                return bad_usage(cmd, what);
            }
            value = argv[++i];
        }
        if (!strncmp(name, format_flag, flag_len) && !name[flag_len]) {
            a->format = value;
        } else if (!strcmp(name, "--out") || !strcmp(name, "-o")) {
            a->out = value;
        } else if (!strcmp(name, "--n-head") && !strcmp(cmd, "import")) {
            if (!parse_positive(value, &a->n_head)) return bad_usage(cmd, "--n-head must be > 0");
        } else if (!strcmp(name, "--padded-vocab") && !strcmp(cmd, "export")) {
            if (!parse_positive(value, &a->padded_vocab))
                return bad_usage(cmd, "--padded-vocab must be > 0");
        } else if (!strcmp(name, "--dtype") && !strcmp(cmd, "export")) {
            if (!strcmp(value, "f32") || !strcmp(value, "F32"))
                a->dtype = STRATA_ST_F32;
            else if (!strcmp(value, "bf16") || !strcmp(value, "BF16"))
                a->dtype = STRATA_ST_BF16;
            else
                return bad_usage(cmd, "--dtype must be f32 or bf16");
            a->dtype_given = 1;
        } else if (!strcmp(name, "--max-shard-bytes") && !strcmp(cmd, "export")) {
            char *end;
            long long v = strtoll(value, &end, 10);
            if (end == value || *end || v < 1)
                return bad_usage(cmd, "--max-shard-bytes must be > 0");
            a->max_shard_bytes = v;
        } else if (arg[0] == '-' && arg[1]) {
            char what[96];
            snprintf(what, sizeof what, "unknown option '%.60s'", arg);
            return bad_usage(cmd, what);
        } else if (a->in) {
            return bad_usage(cmd, "one input file only");
        } else {
            a->in = arg;
        }
    }
    return check_args(a, cmd, format_flag);
}

static void print_shape(const strata_model *m)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    printf("%d layers, %d heads, %d channels, block_size %d, vocab_size %d (%zu parameters)",
           s->n_layer, s->n_head, s->n_embd, s->block_size, s->vocab_size,
           strata_model_n_params(m));
}

int strata_cli_import(int argc, char **argv)
{
    convert_args a;
    int rc = parse_args(argc, argv, "import", "--from", import_usage, &a);
    if (rc >= 0) return rc;
    strata_model *m = NULL;
    char *hf_extra = NULL;
    strata_err e;
    if (!strcmp(a.format, "llmc"))
        e = strata_llmc_import(a.in, &m);
    else if (!strcmp(a.format, "safetensors"))
        e = strata_safetensors_import(a.in, a.n_head, &m);
    else if (!(e = strata_hf_import(a.in, &m)).code)
        e = strata_hf_read_config_extra(a.in, &hf_extra);
    if (e.code) {
        strata_model_free(m);
        return strata_cli_fail("import", e);
    }
    /* The checkpoint remembers where it came from, and for a Hugging Face
     * directory the config keys the shape does not hold (token ids), so
     * that an export writes them back. */
    json_t *extra = json_pack("{s:{s:s, s:s}}", "import", "from", a.format, "path", a.in);
    json_t *hf_keys = hf_extra ? json_loads(hf_extra, 0, NULL) : NULL;
    if (extra && hf_keys) json_object_set(json_object_get(extra, "import"), "hf_config", hf_keys);
    json_decref(hf_keys);
    free(hf_extra);
    /* The tokenizer beside the weights is the model's: shards packed with
     * another one are refused by the trainer. */
    char tok_path[4200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", a.in);
    strata_tokenizer *tok = NULL;
    if (extra && !strcmp(a.format, "hf") && access(tok_path, R_OK) == 0) {
        if ((e = strata_tokenizer_hf(&tok, tok_path)).code) {
            json_decref(extra);
            strata_model_free(m);
            return strata_cli_fail("import", e);
        }
        json_object_set_new(json_object_get(extra, "import"), "tokenizer_hash",
                            json_string(strata_tokenizer_hash(tok)));
        strata_tokenizer_free(tok);
    }
    char *extra_text = extra ? json_dumps(extra, JSON_COMPACT) : NULL;
    json_decref(extra);
    strata_ckpt_state st = {.world_size = 1, .extra_json = extra_text};
    e = strata_ckpt_write(a.out, m, NULL, NULL, &st);
    free(extra_text);
    if (!e.code) {
        printf("imported %s: ", a.in);
        print_shape(m);
        printf(" -> %s\n", a.out);
    }
    strata_model_free(m);
    return strata_cli_fail("import", e);
}

/* The hf_config an import stored in the checkpoint's extra_json, as text
 * (NULL when there is none). */
static char *imported_hf_config(const char *extra_json)
{
    json_t *root = extra_json ? json_loads(extra_json, 0, NULL) : NULL;
    json_t *cfg = json_object_get(json_object_get(root, "import"), "hf_config");
    char *text = json_is_object(cfg) ? json_dumps(cfg, JSON_COMPACT) : NULL;
    json_decref(root);
    return text;
}

int strata_cli_export(int argc, char **argv)
{
    convert_args a;
    int rc = parse_args(argc, argv, "export", "--to", export_usage, &a);
    if (rc >= 0) return rc;
    strata_model_shape shape = {0};
    strata_err e = strata_ckpt_read_shape(a.in, &shape);
    if (e.code) return strata_cli_fail("export", e);
    strata_model *m = NULL;
    e = strata_model_create(&m, &shape);
    if (e.code) {
        strata_err inner = e;
        return strata_cli_fail("export", strata_errorf(inner.code, "%s: %s", a.in, inner.msg));
    }
    strata_ckpt_state st = {0};
    e = strata_ckpt_load(a.in, m, NULL, NULL, &st);
    if (!e.code) {
        if (!strcmp(a.format, "llmc")) {
            e = strata_llmc_export(a.out, m, a.padded_vocab);
        } else if (!strcmp(a.format, "safetensors")) {
            e = strata_safetensors_export(a.out, m);
        } else {
            char *hf_config = imported_hf_config(st.extra_json);
            e = strata_hf_export(m, a.out, a.dtype, (size_t)a.max_shard_bytes, hf_config);
            free(hf_config);
        }
    }
    strata_ckpt_state_free(&st);
    if (!e.code) {
        printf("exported %s: ", a.in);
        print_shape(m);
        printf(" -> %s\n", a.out);
    }
    strata_model_free(m);
    return strata_cli_fail("export", e);
}
