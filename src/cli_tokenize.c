/* cli_tokenize.c — `strata tokenize`: one file through a tokenizer, ids out
 * (or ids back to bytes). For checking a tokenizer against its reference. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/cli.h"
#include "strata/tokenizer.h"

static const char usage[] =
    "usage: strata tokenize --tokenizer byte|gpt2|PATH/tokenizer.json\n"
    "                       [--vocab encoder.json --merges vocab.bpe] [--decode|--info] FILE...\n"
    "\n"
    "Encodes each FILE as one document (no boundary tokens) and prints the ids,\n"
    "one per line, file after file. --decode reads ids (whitespace-separated) from FILE and "
    "writes\n"
    "their bytes to stdout. --info prints the tokenizer's name, vocab_size, BOS,\n"
    "EOS, identity (SHA-256 of tokenizer.json) and the boundary tokens pack uses.\n";

#define BLOCK ((size_t)4 << 20)

static int fail(strata_err e) { return strata_cli_fail("tokenize", e); }

static int bad_usage(const char *msg, const char *arg)
{
    fprintf(stderr, "strata tokenize: %s%s (try strata tokenize --help)\n", msg, arg);
    return STRATA_EINPUT;
}

strata_err strata_cli_load_tokenizer(strata_tokenizer **tok, const char *name, const char *vocab,
                                     const char *merges)
{
    *tok = NULL;
    if (!strcmp(name, "byte")) {
        if (vocab || merges)
            return strata_errorf(STRATA_EINPUT, "--vocab and --merges are for --tokenizer gpt2");
        return strata_tokenizer_byte(tok);
    }
    if (!strcmp(name, "gpt2")) {
        if (!vocab || !merges)
            return strata_errorf(STRATA_EINPUT,
                                 "--tokenizer gpt2 needs --vocab encoder.json and --merges "
                                 "vocab.bpe (tests/fetch_gpt2_tokenizer.sh fetches them)");
        return strata_tokenizer_gpt2(tok, vocab, merges);
    }
    if (vocab || merges)
        return strata_errorf(STRATA_EINPUT, "--vocab and --merges are for --tokenizer gpt2");
    if (access(name, F_OK))
        return strata_errorf(STRATA_EINPUT,
                             "unknown tokenizer '%s' (byte, gpt2 or the path of a tokenizer.json): "
                             "cannot open: %s",
                             name, strerror(errno));
    return strata_tokenizer_hf(tok, name);
}

static strata_err encode_file(strata_tokenizer *tok, const char *path, FILE *out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    uint8_t *buf = malloc(2 * BLOCK);
    size_t cap = 2 * BLOCK, have = 0;
    strata_tokens ids = {0};
    strata_err e = buf ? strata_ok() : strata_errorf(STRATA_ENOMEM, "out of memory");
    for (int eof = 0; !e.code && !eof;) {
        if (cap - have < BLOCK) {
            uint8_t *b = realloc(buf, cap * 2);
            if (!b) {
                e = strata_errorf(STRATA_ENOMEM, "out of memory");
                break;
            }
            buf = b;
            cap *= 2;
        }
        size_t got = fread(buf + have, 1, cap - have, f);
        if (got == 0 && ferror(f)) {
            e = strata_errorf(STRATA_EINPUT, "%s: read error: %s", path, strerror(errno));
            break;
        }
        eof = got == 0;
        have += got;
        size_t used = 0;
        ids.n = 0;
        e = strata_tokenizer_encode(tok, buf, have, !eof, &used, &ids);
        for (size_t i = 0; !e.code && i < ids.n; i++) fprintf(out, "%" PRIu32 "\n", ids.ids[i]);
        memmove(buf, buf + used, have - used);
        have -= used;
    }
    fclose(f);
    free(buf);
    strata_tokens_free(&ids);
    if (!e.code && (fflush(out) || ferror(out)))
        e = strata_errorf(STRATA_EFAIL, "stdout: write error: %s", strerror(errno));
    return e;
}

static strata_err decode_file(strata_tokenizer *tok, const char *path, FILE *out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    strata_tokens ids = {0};
    strata_err e = strata_ok();
    unsigned long long v;
    int r;
    while ((r = fscanf(f, "%llu", &v)) == 1) {
        if (v > UINT32_MAX) {
            e = strata_errorf(STRATA_EINPUT, "%s: id %llu is too large", path, v);
            break;
        }
        if (ids.n == ids.cap) {
            size_t c = ids.cap ? 2 * ids.cap : 4096;
            uint32_t *p = realloc(ids.ids, c * sizeof *p);
            if (!p) {
                e = strata_errorf(STRATA_ENOMEM, "out of memory");
                break;
            }
            ids.ids = p;
            ids.cap = c;
        }
        ids.ids[ids.n++] = (uint32_t)v;
    }
    if (!e.code && r != EOF) {
        e = strata_errorf(STRATA_EINPUT, "%s: after %zu ids: not a token id", path, ids.n);
    }
    fclose(f);
    uint8_t *bytes = NULL;
    size_t n = 0;
    if (!e.code) e = strata_tokenizer_decode(tok, ids.ids, ids.n, &bytes, &n);
    if (!e.code && (fwrite(bytes, 1, n, out) != n || fflush(out)))
        e = strata_errorf(STRATA_EFAIL, "stdout: write error: %s", strerror(errno));
    free(bytes);
    strata_tokens_free(&ids);
    return e;
}

static void print_ids(const char *what, const uint32_t *ids, size_t n)
{
    printf("%-12s", what);
    if (!n) printf(" (none)");
    for (size_t i = 0; i < n; i++) printf(" %" PRIu32, ids[i]);
    printf("\n");
}

int strata_cli_tokenize(int argc, char **argv)
{
    const char *tokenizer = NULL, *vocab = NULL, *merges = NULL;
    const char **files = calloc((size_t)argc + 1, sizeof *files);
    int decode = 0, info = 0, n_files = 0;
    if (!files) return fail(strata_errorf(STRATA_ENOMEM, "out of memory"));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = !strcmp(a, "--tokenizer") ? &tokenizer
                            : !strcmp(a, "--vocab")   ? &vocab
                            : !strcmp(a, "--merges")  ? &merges
                                                      : NULL;
        if (slot) {
            if (i + 1 >= argc) {
                free(files);
                return bad_usage(a, " needs a value");
            }
            *slot = argv[++i];
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            free(files);
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--decode")) {
            decode = 1;
        } else if (!strcmp(a, "--info")) {
            info = 1;
        } else if (a[0] == '-' && a[1]) {
            free(files);
            return bad_usage("unknown option ", a);
        } else {
            files[n_files++] = a;
        }
    }
    const char *why = !tokenizer              ? "--tokenizer is required"
                      : !n_files && !info     ? "no input FILE"
                      : decode && n_files > 1 ? "--decode reads one FILE"
                                              : NULL;
    if (why) {
        free(files);
        return bad_usage(why, "");
    }
    strata_tokenizer *tok = NULL;
    strata_err e = strata_cli_load_tokenizer(&tok, tokenizer, vocab, merges);
    if (e.code) {
        free(files);
        return fail(e);
    }
    if (info) {
        const uint32_t *lead, *tail;
        size_t nl, nt;
        strata_tokenizer_doc_tokens(tok, &lead, &nl, &tail, &nt);
        printf("tokenizer    %s\n", strata_tokenizer_name(tok));
        printf("vocab_size   %d\n", strata_tokenizer_vocab_size(tok));
        printf("bos_token    %d\n", strata_tokenizer_bos(tok));
        printf("eot_token    %d\n", strata_tokenizer_eot(tok));
        printf("hash         %s\n", strata_tokenizer_hash(tok));
        print_ids("doc_lead", lead, nl);
        print_ids("doc_tail", tail, nt);
    } else {
        for (int i = 0; i < n_files && !e.code; i++)
            e = decode ? decode_file(tok, files[i], stdout) : encode_file(tok, files[i], stdout);
    }
    free(files);
    strata_tokenizer_free(tok);
    return e.code ? fail(e) : 0;
}
