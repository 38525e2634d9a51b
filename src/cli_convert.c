/* cli_convert.c — `strata import` and `strata export`: GPT-2 weights between
 * strata checkpoints and llm.c model files or Hugging Face safetensors. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/ckpt.h"
#include "strata/cli.h"
#include "strata/convert.h"

static const char import_usage[] =
    "usage: strata import --from llmc|safetensors IN --out CKPT.h5 [--n-head N]\n"
    "\n"
    "Converts GPT-2 weights into a model-only strata checkpoint, for [model] init.\n"
    "  --from llmc         llm.c's model file (train_gpt2.py's version 3: fp32, padded vocab)\n"
    "  --from safetensors  Hugging Face GPT-2 safetensors (names with or without\n"
    "                      'transformer.'; Conv1D weights are transposed)\n"
    "  --n-head N          heads, for safetensors that do not say (default: the file's\n"
    "                      __metadata__, else config.json beside it)\n";

static const char export_usage[] =
    "usage: strata export --to llmc|safetensors CKPT.h5 --out FILE [--padded-vocab N]\n"
    "\n"
    "Writes a strata checkpoint's model as an llm.c model file (version 3) or as\n"
    "Hugging Face GPT-2 safetensors (hub names, Conv1D layout).\n"
    "  --padded-vocab N    llm.c's padded vocabulary (default: vocab_size rounded up to 128)\n";

typedef struct convert_args {
    const char *format, *in, *out;
    int n_head, padded_vocab;
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
                          !strcmp(name, "--padded-vocab");
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
    if (!a->format) {
        char what[64];
        snprintf(what, sizeof what, "%s llmc|safetensors is required", format_flag);
        return bad_usage(cmd, what);
    }
    if (strcmp(a->format, "llmc") && strcmp(a->format, "safetensors")) {
        char what[96];
        snprintf(what, sizeof what, "unknown format '%.40s' (llmc or safetensors)", a->format);
        return bad_usage(cmd, what);
    }
    if (!a->in) return bad_usage(cmd, "no input file given");
    if (!a->out || !*a->out) return bad_usage(cmd, "--out FILE is required");
    return -1;
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
    strata_err e = !strcmp(a.format, "llmc") ? strata_llmc_import(a.in, &m)
                                             : strata_safetensors_import(a.in, a.n_head, &m);
    if (e.code) return strata_cli_fail("import", e);
    /* The checkpoint remembers where it came from. */
    json_t *extra = json_pack("{s:{s:s, s:s}}", "import", "from", a.format, "path", a.in);
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

int strata_cli_export(int argc, char **argv)
{
    convert_args a;
    int rc = parse_args(argc, argv, "export", "--to", export_usage, &a);
    if (rc >= 0) return rc;
    strata_model_shape shape;
    strata_err e = strata_ckpt_read_shape(a.in, &shape);
    if (e.code) return strata_cli_fail("export", e);
    strata_model *m = NULL;
    e = strata_model_create(&m, &shape);
    if (e.code) {
        strata_err inner = e;
        return strata_cli_fail("export", strata_errorf(inner.code, "%s: %s", a.in, inner.msg));
    }
    e = strata_ckpt_load(a.in, m, NULL, NULL, NULL);
    if (!e.code)
        e = !strcmp(a.format, "llmc") ? strata_llmc_export(a.out, m, a.padded_vocab)
                                      : strata_safetensors_export(a.out, m);
    if (!e.code) {
        printf("exported %s: ", a.in);
        print_shape(m);
        printf(" -> %s\n", a.out);
    }
    strata_model_free(m);
    return strata_cli_fail("export", e);
}
