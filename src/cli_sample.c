/* strata sample: text from a checkpoint, streamed token by token
 * (include/strata/generate.h does the work). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/ckpt.h"
#include "strata/cli.h"
#include "strata/generate.h"
#include "strata/model.h"
#include "strata/tokenizer.h"

static const char usage[] =
    "usage: strata sample --checkpoint CKPT.h5 [--prompt TEXT | --prompt-file FILE]\n"
    "                     [--tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
    "                     [--n N] [--tokenizer byte|gpt2|PATH/tokenizer.json\n"
    "                     [--vocab encoder.json --merges vocab.bpe]]\n"
    "  Continues the prompt (after the tokens a document starts with) with N new tokens\n"
    "  (default 64), streamed as they come; stops early at the end-of-text token.\n"
    "  --temperature 0 is greedy (default 1); --top-k 0 and --top-p 1 (defaults) keep\n"
    "  every token; --seed (default 1234) fixes the draws, sample i of --n using stream i.\n"
    "  The tokenizer: a Hugging Face model's tokenizer.json (its SHA-256 recorded by\n"
    "  import must match; found beside the imported directory when not given), else\n"
    "  --tokenizer, else byte for a model of vocab_size 256.\n";

typedef struct sample_args {
    const char *ckpt, *prompt, *prompt_file, *tokenizer, *vocab, *merges;
    long tokens, n;
    long top_k;
    double temperature, top_p;
    unsigned long long seed;
} sample_args;

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "strata sample: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (try strata sample --help)\n");
    return STRATA_EINPUT;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

/* -1 to go on, else the exit status. */
static int parse_one(sample_args *a, const char *name, const char *val)
{
    if (!strcmp(name, "--checkpoint"))
        a->ckpt = val;
    else if (!strcmp(name, "--prompt"))
        a->prompt = val;
    else if (!strcmp(name, "--prompt-file"))
        a->prompt_file = val;
    else if (!strcmp(name, "--tokenizer"))
        a->tokenizer = val;
    else if (!strcmp(name, "--vocab"))
        a->vocab = val;
    else if (!strcmp(name, "--merges"))
        a->merges = val;
    else if (!strcmp(name, "--tokens")) {
        if (parse_long(val, 1, 1 << 24, &a->tokens))
            return bad_usage("--tokens '%s': expected an integer >= 1", val);
    } else if (!strcmp(name, "--n")) {
        if (parse_long(val, 1, 1 << 20, &a->n))
            return bad_usage("--n '%s': expected an integer >= 1", val);
    } else if (!strcmp(name, "--top-k")) {
        if (parse_long(val, 0, 1L << 30, &a->top_k))
            return bad_usage("--top-k '%s': expected an integer >= 0", val);
    } else if (!strcmp(name, "--temperature")) {
        if (parse_double(val, &a->temperature))
            return bad_usage("--temperature '%s': not a number", val);
    } else if (!strcmp(name, "--top-p")) {
        if (parse_double(val, &a->top_p)) return bad_usage("--top-p '%s': not a number", val);
    } else if (!strcmp(name, "--seed")) {
        char *end;
        errno = 0;
        a->seed = strtoull(val, &end, 10);
        if (errno || end == val || *end || *val == '-')
            return bad_usage("--seed '%s': expected an integer >= 0", val);
    } else
        return bad_usage("unknown option '%s'", name);
    return -1;
}

static int parse_args(int argc, char **argv, sample_args *a)
{
    *a = (sample_args){.tokens = 64, .n = 1, .temperature = 1.0, .top_p = 1.0, .seed = 1234};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage, stdout);
            return 0;
        }
        if (i + 1 >= argc) return bad_usage("%s needs a value", argv[i]);
        int rc = parse_one(a, argv[i], argv[i + 1]);
        if (rc >= 0) return rc;
        i++;
    }
    if (!a->ckpt) return bad_usage("%s", "--checkpoint is required");
    if (a->prompt && a->prompt_file)
        return bad_usage("%s", "--prompt and --prompt-file exclude each other");
    return -1;
}

/* The hash and the directory import recorded ("" when none). */
static void recorded_tokenizer(const char *extra_json, char *hash, size_t hn, char *dir, size_t dn)
{
    hash[0] = dir[0] = 0;
    json_t *root = extra_json ? json_loads(extra_json, 0, NULL) : NULL;
    json_t *imp = json_object_get(root, "import");
    const char *h = json_string_value(json_object_get(imp, "tokenizer_hash"));
    const char *d = json_string_value(json_object_get(imp, "path"));
    if (h) snprintf(hash, hn, "%s", h);
    if (d) snprintf(dir, dn, "%s", d);
    json_decref(root);
}

static strata_err load_tokenizer(const sample_args *a, const strata_ckpt_state *st,
                                 const strata_model_shape *s, strata_tokenizer **tok)
{
    char hash[80], dir[4096], path[4200];
    recorded_tokenizer(st->extra_json, hash, sizeof hash, dir, sizeof dir);
    const char *name = a->tokenizer;
    if (!name && hash[0]) {
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        if (!dir[0] || access(path, R_OK))
            return strata_errorf(STRATA_EINPUT,
                                 "%s: the model's tokenizer.json (sha256 %s, imported from %s) is "
                                 "not there any more: give --tokenizer PATH/tokenizer.json",
                                 a->ckpt, hash, dir[0] ? dir : "?");
        name = path;
    }
    if (!name && s->vocab_size == 256) name = "byte";
    if (!name)
        return strata_errorf(STRATA_EINPUT,
                             "%s: no tokenizer recorded for this model (vocab_size %d): give "
                             "--tokenizer",
                             a->ckpt, s->vocab_size);
    STRATA_TRY(strata_cli_load_tokenizer(tok, name, a->vocab, a->merges));
    const char *got = strata_tokenizer_hash(*tok);
    strata_err e = strata_ok();
    if (hash[0] && strcmp(got, hash))
        e = strata_errorf(STRATA_EINPUT,
                          "%s: tokenizer %s has sha256 %.12s..., the model was imported with "
                          "%.12s...",
                          a->ckpt, name, got[0] ? got : "(none)", hash);
    else if (strata_tokenizer_vocab_size(*tok) > s->vocab_size)
        e = strata_errorf(STRATA_EINPUT, "%s: tokenizer %s has %d tokens, the model only %d",
                          a->ckpt, name, strata_tokenizer_vocab_size(*tok), s->vocab_size);
    if (e.code) strata_tokenizer_free(*tok), *tok = NULL;
    return e;
}

static strata_err read_prompt(const sample_args *a, char **text, size_t *n)
{
    *text = NULL, *n = 0;
    if (!a->prompt_file) {
        const char *p = a->prompt ? a->prompt : "";
        *n = strlen(p);
        *text = strdup(p);
        return *text ? strata_ok() : strata_errorf(STRATA_ENOMEM, "out of memory");
    }
    FILE *f = fopen(a->prompt_file, "rb");
    if (!f)
        return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", a->prompt_file, strerror(errno));
    size_t cap = 4096;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + *n, 1, cap - *n, f)) > 0) {
        *n += got;
        if (*n == cap) buf = realloc(buf, cap *= 2);
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return strata_errorf(bad ? STRATA_EINPUT : STRATA_EFAIL, "%s: %s", a->prompt_file,
                             bad ? "read error" : "out of memory");
    }
    *text = buf;
    return strata_ok();
}

/* The document's lead tokens (as pack puts them), then the prompt's ids. */
static strata_err encode_prompt(const sample_args *a, strata_tokenizer *tok, strata_tokens *ids)
{
    const uint32_t *lead, *tail;
    size_t n_lead, n_tail;
    strata_tokenizer_doc_tokens(tok, &lead, &n_lead, &tail, &n_tail);
    for (size_t i = 0; i < n_lead; i++) {
        if (ids->n == ids->cap) {
            size_t cap = ids->cap ? 2 * ids->cap : 16;
            uint32_t *p = realloc(ids->ids, cap * sizeof *p);
            if (!p) return strata_errorf(STRATA_ENOMEM, "out of memory");
            ids->ids = p, ids->cap = cap;
        }
        ids->ids[ids->n++] = lead[i];
    }
    char *text;
    size_t n;
    STRATA_TRY(read_prompt(a, &text, &n));
    strata_err e = n ? strata_tokenizer_encode(tok, text, n, 0, NULL, ids) : strata_ok();
    free(text);
    if (!e.code && ids->n == 0)
        e = strata_errorf(STRATA_EINPUT,
                          "the prompt is empty and the tokenizer starts documents with no token: "
                          "give --prompt");
    return e;
}

typedef struct stream_ctx {
    const strata_tokenizer *tok;
    strata_utf8_stream utf8;
    int eot;
} stream_ctx;

/* Writes a token's bytes as soon as they complete a character; stops at EOT. */
static int on_token(void *ctx, uint32_t id)
{
    stream_ctx *c = ctx;
    if ((int)id == c->eot) return 1;
    size_t n;
    const uint8_t *b = strata_tokenizer_token_bytes(c->tok, id, &n);
    uint8_t out[64];
    while (b && n) {
        size_t take = n < sizeof out - 4 ? n : sizeof out - 4;
        fwrite(out, 1, strata_utf8_push(&c->utf8, b, take, out), stdout);
        b += take, n -= take;
    }
    fflush(stdout);
    return 0;
}

static strata_err run_samples(const sample_args *a, strata_model *m, strata_tokenizer *tok,
                              const strata_tokens *prompt, const char *prompt_text,
                              size_t prompt_len)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    strata_sample_opts o = {(float)a->temperature, (int)a->top_k, (float)a->top_p, a->seed};
    STRATA_TRY(strata_sample_check(&o));
    if ((long)prompt->n + a->tokens - 1 > s->block_size)
        return strata_errorf(STRATA_EINPUT,
                             "%s: the prompt is %zu tokens and --tokens %ld more: %ld positions, "
                             "more than the model's context (block_size %d)",
                             a->ckpt, prompt->n, a->tokens, (long)prompt->n + a->tokens - 1,
                             s->block_size);
    strata_generator *g = NULL;
    STRATA_TRY(strata_generator_create(&g, m, (int)(prompt->n + a->tokens - 1)));
    uint32_t *out = malloc((size_t)a->tokens * sizeof *out);
    strata_err e = out ? strata_ok() : strata_errorf(STRATA_ENOMEM, "out of memory");
    for (long i = 0; !e.code && i < a->n; i++) {
        if (a->n > 1) printf("%s--- sample %ld\n", i ? "\n" : "", i);
        fwrite(prompt_text, 1, prompt_len, stdout);
        stream_ctx c = {.tok = tok, .eot = strata_tokenizer_eot(tok)};
        int got;
        e = strata_generate(g, prompt->ids, (int)prompt->n, (int)a->tokens, &o, (uint64_t)i, out,
                            &got, on_token, &c);
        uint8_t rest[4];
        fwrite(rest, 1, strata_utf8_flush(&c.utf8, rest), stdout);
        fflush(stdout);
    }
    printf("\n");
    free(out);
    strata_generator_free(g);
    return e;
}

static strata_err load_model(const char *path, strata_model **m, strata_ckpt_state *st)
{
    strata_model_shape shape = {0};
    STRATA_TRY(strata_ckpt_read_shape(path, &shape));
    strata_err e = strata_model_create(m, &shape);
    if (e.code) return strata_errorf(e.code, "%s: %s", path, e.msg);
    return strata_ckpt_load(path, *m, NULL, NULL, st);
}

int strata_cli_sample(int argc, char **argv)
{
    sample_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    strata_model *m = NULL;
    strata_ckpt_state st = {0};
    strata_tokenizer *tok = NULL;
    strata_tokens ids = {0};
    char *text = NULL;
    size_t n;
    /* Options first: a bad one costs no checkpoint load. */
    strata_sample_opts o = {(float)a.temperature, (int)a.top_k, (float)a.top_p, a.seed};
    strata_err e = strata_sample_check(&o);
    if (!e.code) e = load_model(a.ckpt, &m, &st);
    if (!e.code) e = load_tokenizer(&a, &st, strata_model_get_shape(m), &tok);
    if (!e.code) e = encode_prompt(&a, tok, &ids);
    if (!e.code) e = read_prompt(&a, &text, &n);
    if (!e.code) e = run_samples(&a, m, tok, &ids, text, n);
    free(text);
    strata_tokens_free(&ids);
    strata_tokenizer_free(tok);
    strata_ckpt_state_free(&st);
    strata_model_free(m);
    return strata_cli_fail("sample", e);
}
