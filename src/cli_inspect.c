/* cli_inspect.c — `strata inspect PATH [--seq-len T] [--check]`.
 *
 * PATH is a shard, a stream (manifest or directory) or a checkpoint (an
 * HDF5 file whose root carries format = "strata-ckpt-1"). A shard or stream
 * shows its tokenizer, vocabulary, storage and how many samples it holds at
 * seq_len T; --check also reads every token (ids < vocab_size, document
 * offsets in order). A checkpoint shows its root attributes and the tensors
 * under /model, as io/ describes it (strata_ckpt_describe: plain HDF5 calls,
 * so that inspect works on any checkpoint, even one the loader would refuse).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "strata/ckpt.h"
#include "strata/cli.h"
#include "strata/shard.h"
#include "strata/stream.h"

static const char usage[] = "usage: strata inspect FILE.h5|MANIFEST|DIR [--seq-len T] [--check]";

/* ---- shards and streams ------------------------------------------------- */

static void print_shard(const strata_shard *s, int T)
{
    const strata_shard_info *in = strata_shard_get_info(s);
    printf("%s: token shard (%s)\n", strata_shard_path(s), STRATA_SHARD_FORMAT);
    printf("  tokenizer   %s\n", in->tokenizer);
    printf("  vocab_size  %d\n", in->vocab_size);
    printf("  eot_token   %d\n", in->eot_token);
    if (in->tokenizer_hash[0]) {
        printf("  bos_token   %d\n", in->bos_token);
        printf("  tok. hash   %s\n", in->tokenizer_hash);
    }
    printf("  dtype       uint%d\n", in->token_bits);
    if (in->chunk_tokens > 0)
        printf("  chunking    %" PRId64 " tokens\n", in->chunk_tokens);
    else
        printf("  chunking    none (contiguous)\n");
    printf("  tokens      %" PRId64 "\n", in->n_tokens);
    printf("  documents   %" PRId64 "%s\n", in->n_docs, in->n_docs ? "" : " (no /doc_offsets)");
    printf("  samples     %" PRId64 " at seq_len %d\n", strata_shard_n_samples(s, T), T);
}

static int inspect_shard(const char *path, int T, int check)
{
    strata_shard *s = NULL;
    strata_err e = strata_shard_open(&s, path);
    if (!e.code && check) e = strata_shard_verify(s);
    if (e.code) {
        strata_shard_close(s);
        return strata_cli_fail("inspect", e);
    }
    print_shard(s, T);
    if (check) printf("  check       every token < vocab_size, documents in order\n");
    strata_shard_close(s);
    return 0;
}

static int inspect_stream(const char *path, int T, int check)
{
    strata_stream *st = NULL;
    strata_stream_opts o = {.seq_len = T, .allow_empty = 1};
    strata_err e = strata_stream_open(&st, path, &o);
    if (e.code) return strata_cli_fail("inspect", e);
    int n = strata_stream_n_shards(st);
    for (int i = 0; i < n && check && !e.code; i++) {
        strata_shard *s = NULL;
        e = strata_shard_open(&s, strata_stream_shard_at(st, i)->path);
        if (!e.code) e = strata_shard_verify(s);
        strata_shard_close(s);
    }
    if (e.code) {
        strata_stream_close(st);
        return strata_cli_fail("inspect", e);
    }
    const strata_shard_info *in = strata_stream_info(st);
    printf("%s: %s of %d shard%s\n", path, strata_stream_kind(st), n, n == 1 ? "" : "s");
    if (in)
        printf("  tokenizer %s, vocab_size %d, eot_token %d\n", in->tokenizer, in->vocab_size,
               in->eot_token);
    printf("  %-40s %8s %14s %10s %12s\n", "shard", "dtype", "tokens", "documents", "samples");
    int64_t docs = 0;
    for (int i = 0; i < n; i++) {
        const strata_stream_shard *s = strata_stream_shard_at(st, i);
        printf("  %-40s %8s %14" PRId64 " %10" PRId64 " %12" PRId64 "\n", s->path,
               s->info.token_bits == 16 ? "uint16" : "uint32", s->info.n_tokens, s->info.n_docs,
               s->n_samples);
        docs += s->info.n_docs;
    }
    printf("  %-40s %8s %14" PRId64 " %10" PRId64 " %12" PRId64 "\n", "total", "",
           strata_stream_n_tokens(st), docs, strata_stream_n_samples(st));
    printf("  samples at seq_len %d%s\n", T,
           check ? "; check: every token < vocab_size, documents in order" : "");
    strata_stream_close(st);
    return 0;
}

/* ---- checkpoints -------------------------------------------------------- */

/* Prints what io/ describes, also the part before an error. */
static int inspect_checkpoint(const char *path)
{
    char *desc = NULL;
    strata_err e = strata_ckpt_describe(path, &desc);
    if (desc) fputs(desc, stdout);
    free(desc);
    if (e.code) {
        fflush(stdout);
        return strata_cli_fail("inspect", e);
    }
    return 0;
}

int strata_cli_inspect(int argc, char **argv)
{
    const char *path = NULL;
    int T = 1024, check = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("%s\n", usage);
            return 0;
        } else if (!strcmp(a, "--seq-len") || !strncmp(a, "--seq-len=", 10)) {
            const char *v = a[9] == '=' ? a + 10 : (i + 1 < argc ? argv[++i] : NULL);
            char *end = NULL;
            long t = v ? strtol(v, &end, 10) : 0;
            if (!v || !*v || *end || t < 1 || t > (1L << 24)) {
                fprintf(stderr, "strata inspect: --seq-len needs a positive integer\n");
                return 2;
            }
            T = (int)t;
        } else if (!strcmp(a, "--check")) {
            check = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "strata inspect: unknown option %s (%s)\n", a, usage);
            return 2;
        } else if (path) {
            fprintf(stderr, "strata inspect: one path at a time (%s)\n", usage);
            return 2;
        } else {
            path = a;
        }
    }
    if (!path) {
        fprintf(stderr, "strata inspect: no path given (%s)\n", usage);
        return 2;
    }
    struct stat st;
    if (stat(path, &st) != 0)
        return strata_cli_fail("inspect",
                               strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno)));
    if (S_ISDIR(st.st_mode)) return inspect_stream(path, T, check);
    size_t n = strlen(path);
    int hdf5_name =
        (n >= 3 && !strcmp(path + n - 3, ".h5")) || (n >= 5 && !strcmp(path + n - 5, ".hdf5"));
    int kind = STRATA_H5_NOT_HDF5;
    strata_err e = strata_ckpt_probe(path, &kind);
    if (e.code) return strata_cli_fail("inspect", e);
    if (kind == STRATA_H5_CHECKPOINT) return inspect_checkpoint(path);
    /* a shard reports "not an HDF5 file" itself */
    if (kind == STRATA_H5_OTHER || hdf5_name) return inspect_shard(path, T, check);
    return inspect_stream(path, T, check);
}
