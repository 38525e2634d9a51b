/* cli_extend_vocab.c — `strata extend-vocab`: a checkpoint grown to a new
 * tokenizer that keeps the old tokens' ids and adds new ones (for a new
 * language). The surgery itself is vocab_extend.h's; this file finds and
 * verifies the old tokenizer, records the new one and writes the result. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/ckpt.h"
#include "strata/cli.h"
#include "strata/tokenizer.h"
#include "strata/vocab_extend.h"

static const char usage[] =
    "usage: strata extend-vocab --checkpoint CKPT.h5 --tokenizer NEW/tokenizer.json --out OUT.h5\n"
    "                           [--old-tokenizer byte|gpt2|PATH [--vocab encoder.json --merges "
    "vocab.bpe]]\n"
    "                           [--noise STD] [--seed S] [--check-text FILE]...\n"
    "\n"
    "Grows the model's token embedding (and untied lm head) to a tokenizer that keeps\n"
    "every old id's token and adds new ids above them. Old rows are copied bitwise, new\n"
    "rows start at the mean of the old rows (plus N(0, STD^2) noise drawn from --seed,\n"
    "default 0 and 1234). OUT is a model-only checkpoint at step 0 (Adam's moments are\n"
    "dropped): continue it with [model] init = OUT, where [train] new_token_lr_mult lets\n"
    "the new rows learn faster. OUT records the new tokenizer's SHA-256, so shards packed\n"
    "with the old one are refused.\n"
    "  --old-tokenizer T  the model's tokenizer (default: tokenizer.json of the Hugging Face\n"
    "                     directory CKPT was imported from); checked against the SHA-256\n"
    "                     CKPT records\n"
    "  --check-text FILE  also refuse if the new tokenizer encodes FILE differently\n";

#define MAX_CHECK 16

typedef struct args {
    const char *ckpt, *tokenizer, *out, *old_tokenizer, *vocab, *merges;
    const char *check[MAX_CHECK];
    int n_check;
    float noise;
    unsigned long long seed;
} args;

static int bad_usage(const char *what, const char *arg)
{
    fprintf(stderr, "strata extend-vocab: %s%s (try strata extend-vocab --help)\n", what, arg);
    return STRATA_EINPUT;
}

static int parse_value(args *a, const char *name, const char *value)
{
    char *end;
    if (!strcmp(name, "--checkpoint"))
        a->ckpt = value;
    else if (!strcmp(name, "--tokenizer"))
        a->tokenizer = value;
    else if (!strcmp(name, "--out"))
        a->out = value;
    else if (!strcmp(name, "--old-tokenizer"))
        a->old_tokenizer = value;
    else if (!strcmp(name, "--vocab"))
        a->vocab = value;
    else if (!strcmp(name, "--merges"))
        a->merges = value;
    else if (!strcmp(name, "--check-text")) {
        if (a->n_check == MAX_CHECK) return bad_usage("at most 16 --check-text files", "");
        a->check[a->n_check++] = value;
    } else if (!strcmp(name, "--noise")) {
        double v = strtod(value, &end);
        if (end == value || *end || !(v >= 0 && v <= 100))
            return bad_usage("--noise must be a number in [0, 100], not ", value);
        a->noise = (float)v;
    } else if (!strcmp(name, "--seed")) {
        errno = 0;
        a->seed = strtoull(value, &end, 10);
        if (end == value || *end || errno || value[0] == '-')
            return bad_usage("--seed must be a non-negative integer, not ", value);
    } else
        return bad_usage("unknown option ", name);
    return -1;
}

static int parse_args(int argc, char **argv, args *a)
{
    *a = (args){.seed = 1234};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage, stdout);
            return 0;
        }
        if (strncmp(argv[i], "--", 2)) return bad_usage("unexpected argument ", argv[i]);
        if (i + 1 >= argc) return bad_usage("a value is needed after ", argv[i]);
        int rc = parse_value(a, argv[i], argv[i + 1]);
        if (rc >= 0) return rc;
        i++;
    }
    if (!a->ckpt) return bad_usage("--checkpoint CKPT.h5 is required", "");
    if (!a->tokenizer) return bad_usage("--tokenizer NEW/tokenizer.json is required", "");
    if (!a->out || !*a->out) return bad_usage("--out OUT.h5 is required", "");
    if ((a->vocab || a->merges) && !a->old_tokenizer)
        return bad_usage("--vocab and --merges are for --old-tokenizer gpt2", "");
    return -1;
}

/* The old tokenizer: --old-tokenizer, else the tokenizer.json beside the
 * Hugging Face directory the checkpoint was imported from; either way it
 * must be the one whose hash the checkpoint records. */
static strata_err load_old_tokenizer(const args *a, json_t *origin, strata_tokenizer **tok,
                                     char *path, size_t cap)
{
    const char *recorded = json_string_value(json_object_get(origin, "tokenizer_hash"));
    const char *dir = json_string_value(json_object_get(origin, "path"));
    const char *from = json_string_value(json_object_get(origin, "from"));
    if (a->old_tokenizer)
        snprintf(path, cap, "%s", a->old_tokenizer);
    else if (dir && from && !strcmp(from, "hf"))
        snprintf(path, cap, "%s/tokenizer.json", dir);
    else
        return strata_errorf(STRATA_EINPUT,
                             "%s: records no tokenizer file; give --old-tokenizer (byte, gpt2 or "
                             "the tokenizer.json the model was trained with)",
                             a->ckpt);
    if (!a->old_tokenizer && access(path, R_OK))
        return strata_errorf(STRATA_EINPUT,
                             "%s: the model's tokenizer %s cannot be read (%s); give "
                             "--old-tokenizer",
                             a->ckpt, path, strerror(errno));
    if (!strcmp(path, "gpt2") && (!a->vocab || !a->merges))
        return strata_errorf(STRATA_EINPUT, "--old-tokenizer gpt2 needs --vocab encoder.json and "
                                            "--merges vocab.bpe");
    strata_err e = strata_cli_load_tokenizer(tok, path, a->vocab, a->merges);
    if (e.code) return e;
    const char *hash = strata_tokenizer_hash(*tok);
    if (recorded && strcmp(recorded, hash))
        return strata_errorf(STRATA_EINPUT,
                             "%s: %s%.12s is not the model's tokenizer: %s records SHA-256 "
                             "%.12s...",
                             path, hash[0] ? "SHA-256 " : "a ", hash[0] ? hash : "byte/gpt2 one",
                             a->ckpt, recorded);
    return strata_ok();
}

/* Reads a whole file (malloc'd, *n bytes). */
static strata_err read_file(const char *path, uint8_t **out, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap) break;
        uint8_t *b = realloc(buf, cap *= 2);
        if (!b) free(buf);
        buf = b;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    if (bad) {
        free(buf);
        return strata_errorf(STRATA_EINPUT, "%s: read error", path);
    }
    *out = buf, *n = len;
    return strata_ok();
}

/* --check-text: the new tokenizer must give the file's text the old ids. */
static strata_err check_text(const char *path, strata_tokenizer *old_tok, strata_tokenizer *new_tok,
                             const char *new_name)
{
    uint8_t *text = NULL;
    size_t n = 0;
    STRATA_TRY(read_file(path, &text, &n));
    strata_tokens a = {0}, b = {0};
    strata_err e = strata_tokenizer_encode(old_tok, text, n, 0, NULL, &a);
    if (!e.code) e = strata_tokenizer_encode(new_tok, text, n, 0, NULL, &b);
    free(text);
    size_t i = 0;
    while (!e.code && i < a.n && i < b.n && a.ids[i] == b.ids[i]) i++;
    if (!e.code && (i < a.n || i < b.n))
        e = strata_errorf(STRATA_EINPUT,
                          "%s: %s encodes it differently from token %zu on (id %ld, was %ld): "
                          "the new tokens change the old text's ids",
                          path, new_name, i, i < b.n ? (long)b.ids[i] : -1L,
                          i < a.n ? (long)a.ids[i] : -1L);
    strata_tokens_free(&a);
    strata_tokens_free(&b);
    return e;
}

/* extra_json of the extended checkpoint: the model's origin, now with the
 * new tokenizer's hash and the extension's record. */
static char *extended_extra(json_t *origin, const strata_tokenizer *old_tok,
                            const strata_tokenizer *new_tok, int v0, const args *a)
{
    json_t *imp = origin ? json_deep_copy(origin) : json_pack("{s:s}", "from", "strata");
    json_t *ext = json_pack("{s:i, s:i, s:i, s:s, s:s, s:f, s:I}", "old_vocab_size",
                            strata_tokenizer_vocab_size(old_tok), "new_vocab_size",
                            strata_tokenizer_vocab_size(new_tok), "old_model_vocab_size", v0,
                            "old_tokenizer_hash", strata_tokenizer_hash(old_tok), "tokenizer",
                            a->tokenizer, "noise", (double)a->noise, "seed", (json_int_t)a->seed);
    json_t *root = json_object();
    char *text = NULL;
    if (imp && ext && root) {
        json_object_set_new(imp, "tokenizer_hash", json_string(strata_tokenizer_hash(new_tok)));
        json_object_set_new(imp, STRATA_VOCAB_EXTENSION_KEY, json_incref(ext));
        json_object_set(root, "import", imp);
        text = json_dumps(root, JSON_COMPACT);
    }
    json_decref(imp), json_decref(ext), json_decref(root);
    return text;
}

/* Loads the checkpoint's model (not its moments) and its origin. */
static strata_err load_model(const char *path, strata_model **m, json_t **origin)
{
    strata_model_shape shape = {0};
    STRATA_TRY(strata_ckpt_read_shape(path, &shape));
    strata_err e = strata_model_create(m, &shape);
    if (e.code) return strata_errorf(e.code, "%s: %s", path, e.msg);
    strata_ckpt_state st = {0};
    STRATA_TRY(strata_ckpt_load(path, *m, NULL, NULL, &st));
    json_t *root = st.extra_json ? json_loads(st.extra_json, 0, NULL) : NULL;
    json_t *imp = json_object_get(root, "import");
    *origin = json_is_object(imp) ? json_incref(imp) : NULL;
    json_decref(root);
    strata_ckpt_state_free(&st);
    return strata_ok();
}

typedef struct job {
    strata_model *m, *x;
    json_t *origin;
    strata_tokenizer *old_tok, *new_tok;
} job;

static strata_err run(const args *a, job *j)
{
    STRATA_TRY(load_model(a->ckpt, &j->m, &j->origin));
    char old_name[4200];
    STRATA_TRY(load_old_tokenizer(a, j->origin, &j->old_tok, old_name, sizeof old_name));
    if (access(a->tokenizer, R_OK))
        return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", a->tokenizer, strerror(errno));
    STRATA_TRY(strata_tokenizer_hf(&j->new_tok, a->tokenizer));
    const strata_model_shape *s = strata_model_get_shape(j->m);
    STRATA_TRY(strata_vocab_check_tokenizers(j->old_tok, j->new_tok, old_name, a->tokenizer,
                                             s->vocab_size));
    for (int i = 0; i < a->n_check; i++)
        STRATA_TRY(check_text(a->check[i], j->old_tok, j->new_tok, a->tokenizer));
    int k0 = strata_tokenizer_vocab_size(j->old_tok), k1 = strata_tokenizer_vocab_size(j->new_tok);
    STRATA_TRY(strata_vocab_extend(j->m, k0, k1, a->noise, a->seed, &j->x));
    char *extra = extended_extra(j->origin, j->old_tok, j->new_tok, s->vocab_size, a);
    if (!extra) return strata_errorf(STRATA_ENOMEM, "out of memory");
    strata_ckpt_state st = {.world_size = 1, .extra_json = extra};
    strata_err e = strata_ckpt_write(a->out, j->x, NULL, NULL, &st);
    free(extra);
    if (e.code) return e;
    printf("extended %s: vocab_size %d -> %d, %d new tokens from id %d at the mean of the old "
           "rows",
           a->ckpt, s->vocab_size, strata_model_get_shape(j->x)->vocab_size, k1 - k0, k0);
    if (a->noise > 0) printf(" + N(0, %g^2) noise (seed %llu)", (double)a->noise, a->seed);
    printf("; model only, step 0, for [model] init -> %s\n", a->out);
    return strata_ok();
}

int strata_cli_extend_vocab(int argc, char **argv)
{
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    job j = {0};
    strata_err e = run(&a, &j);
    strata_model_free(j.m);
    strata_model_free(j.x);
    json_decref(j.origin);
    strata_tokenizer_free(j.old_tok);
    strata_tokenizer_free(j.new_tok);
    return strata_cli_fail("extend-vocab", e);
}
