/* pack.c — text files to token shards (see pack.h).
 *
 * Files are read in large blocks and tokenized block by block; tokens flow
 * through a "sink" that opens shards as tokens arrive and cuts them at
 * exactly shard_tokens. A long document never has to fit in memory, except
 * a single GPT-2 file split into train and validation: its tail fraction is
 * known only once all of it has been tokenized.
 */
#include "strata/pack.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "file.h"

#include "strata/shard.h"

/* Provided by io/shard_write.c: drops a shard being written (its temporary
 * file is removed, the file at its path is left as it was). */

#define READ_BLOCK ((size_t)4 << 20)

/* ---- sinks: where tokens go ----------------------------------------------------------- */

typedef struct sink {
    const char *prefix;
    const char *suffix; /* ".h5", ".val.h5", or NULL: cut into "-%05d.h5" shards */
    int64_t shard_tokens;
    strata_shard_writer_opts wo;
    strata_shard_writer *w;
    int64_t in_file; /* tokens in the open file */
    int64_t tokens, docs;
    int n_files;
} sink;

static strata_err sink_path(const sink *s, int index, char *path, size_t cap)
{
    int n = s->suffix ? snprintf(path, cap, "%s%s", s->prefix, s->suffix)
                      : snprintf(path, cap, "%s-%05d.h5", s->prefix, index);
    if (n < 0 || (size_t)n >= cap)
        return strata_errorf(STRATA_EINPUT, "%s: output name too long", s->prefix);
    return strata_ok();
}

static strata_err sink_open(sink *s)
{
    char path[4096];
    STRATA_TRY(sink_path(s, s->n_files, path, sizeof path));
    STRATA_TRY(strata_shard_writer_open(&s->w, path, &s->wo));
    s->n_files++;
    s->in_file = 0;
    return strata_ok();
}

static strata_err sink_close(sink *s)
{
    strata_shard_writer *w = s->w;
    s->w = NULL;
    return strata_shard_writer_close(w);
}

static strata_err sink_doc(sink *s)
{
    if (!s->w) STRATA_TRY(sink_open(s));
    s->docs++;
    return strata_shard_writer_doc(s->w);
}

static strata_err sink_append(sink *s, const uint32_t *ids, size_t n)
{
    while (n) {
        if (!s->w) STRATA_TRY(sink_open(s));
        size_t k = n;
        if (!s->suffix && (int64_t)k > s->shard_tokens - s->in_file)
            k = (size_t)(s->shard_tokens - s->in_file);
        STRATA_TRY(strata_shard_writer_append(s->w, ids, k));
        s->in_file += (int64_t)k;
        s->tokens += (int64_t)k;
        ids += k;
        n -= k;
        if (!s->suffix && s->in_file == s->shard_tokens) STRATA_TRY(sink_close(s));
    }
    return strata_ok();
}

/* ---- the pack ------------------------------------------------------------------------- */

typedef struct packer {
    strata_tokenizer *tok;
    const uint32_t *lead, *tail; /* boundary tokens before and after each document */
    size_t n_lead, n_tail;
    sink train, val;
    /* A document's tokens go to train until `split` tokens of it have been
     * sent, then to val (single-file validation split; INT64_MAX otherwise). */
    sink *to;
    int64_t split, sent;
    strata_tokens ids; /* one block's tokens */
    strata_tokens all; /* a whole document's tokens, when it must be split */
    uint8_t *buf;
    size_t buf_cap;
    int64_t bytes;
} packer;

static strata_err route(packer *p, const uint32_t *ids, size_t n)
{
    if (p->to == &p->train && p->sent + (int64_t)n > p->split) {
        size_t k = (size_t)(p->split - p->sent);
        STRATA_TRY(sink_append(&p->train, ids, k));
        p->sent += (int64_t)k;
        ids += k;
        n -= k;
        p->to = &p->val;
    }
    p->sent += (int64_t)n;
    return sink_append(p->to, ids, n);
}

/* Reads the document at path and hands its tokens (boundary tokens
 * first and last) to emit. */
static strata_err tokenize_file(packer *p, const char *path, int fd,
                                strata_err (*emit)(packer *, const uint32_t *, size_t))
{
    if (p->n_lead) STRATA_TRY(emit(p, p->lead, p->n_lead));
    size_t have = 0; /* bytes in buf not yet tokenized */
    for (int eof = 0; !eof;) {
        if (p->buf_cap - have < READ_BLOCK) {
            size_t cap = p->buf_cap ? 2 * p->buf_cap : 2 * READ_BLOCK;
            uint8_t *b = realloc(p->buf, cap);
            if (!b) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
            p->buf = b;
            p->buf_cap = cap;
        }
        ssize_t got = read(fd, p->buf + have, p->buf_cap - have);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0)
            return strata_errorf(STRATA_EINPUT, "%s: read error: %s", path, strerror(errno));
        eof = got == 0;
        have += (size_t)got;
        p->bytes += got;
        size_t used = 0;
        p->ids.n = 0;
        STRATA_TRY(strata_tokenizer_encode(p->tok, p->buf, have, !eof, &used, &p->ids));
        STRATA_TRY(emit(p, p->ids.ids, p->ids.n));
        memmove(p->buf, p->buf + used, have - used);
        have -= used;
    }
    if (p->n_tail) STRATA_TRY(emit(p, p->tail, p->n_tail));
    return strata_ok();
}

static strata_err collect(packer *p, const uint32_t *ids, size_t n)
{
    strata_tokens *all = &p->all;
    size_t need = all->n + n;
    if (need > all->cap) {
        size_t cap = all->cap ? all->cap : 1 << 20;
        while (cap < need) cap *= 2;
        uint32_t *q = realloc(all->ids, cap * sizeof *q);
        if (!q) return strata_errorf(STRATA_ENOMEM, "out of memory");
        all->ids = q;
        all->cap = cap;
    }
    memcpy(all->ids + all->n, ids, n * sizeof *ids);
    all->n += n;
    return strata_ok();
}

static int64_t val_count(double f, int64_t n)
{
    int64_t k = llround(f * (double)n);
    if (k < 1) k = 1;
    if (k > n - 1) k = n - 1;
    return k;
}

static strata_err pack_one(packer *p, const char *path, sink *dest, double val_fraction, int single)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    strata_err e = sink_doc(dest);
    p->to = dest;
    p->sent = 0;
    p->split = INT64_MAX;
    if (!e.code && single && val_fraction > 0) {
        struct stat st;
        int is_byte = !strcmp(strata_tokenizer_name(p->tok), "byte");
        if (is_byte && !fstat(fd, &st)) {
            /* one token per byte: the split is known before reading */
            int64_t n = (int64_t)st.st_size + (int64_t)(p->n_lead + p->n_tail);
            if (n < 2)
                e = strata_errorf(STRATA_EINPUT, "%s: too short to split off validation tokens",
                                  path);
            p->split = n - val_count(val_fraction, n);
            if (!e.code) e = tokenize_file(p, path, fd, route);
        } else {
            p->all.n = 0;
            e = tokenize_file(p, path, fd, collect);
            int64_t n = (int64_t)p->all.n;
            if (!e.code && n < 2)
                e = strata_errorf(STRATA_EINPUT, "%s: too short to split off validation tokens",
                                  path);
            if (!e.code) {
                p->to = dest;
                p->split = n - val_count(val_fraction, n);
                e = route(p, p->all.ids, p->all.n);
            }
        }
    } else if (!e.code) {
        e = tokenize_file(p, path, fd, route);
    }
    close(fd);
    return e;
}

static strata_err write_manifest(const sink *s, int64_t tokens)
{
    char path[4096], shard[4096], line[4200];
    int n = snprintf(path, sizeof path, "%s.manifest", s->prefix);
    if (n < 0 || (size_t)n >= sizeof path)
        return strata_errorf(STRATA_EINPUT, "%s: output name too long", s->prefix);
    strata_out_file o;
    STRATA_TRY(strata_out_open(&o, path));
    n = snprintf(line, sizeof line, "# strata pack: %d shards, %lld tokens\n", s->n_files,
                 (long long)tokens);
    strata_out_write(&o, line, (size_t)n);
    for (int i = 0; i < s->n_files; i++) {
        sink_path(s, i, shard, sizeof shard);
        /* the manifest sits beside its shards */
        n = snprintf(line, sizeof line, "%s\n", basename(shard));
        strata_out_write(&o, line, (size_t)n);
    }
    return strata_out_finish(&o);
}

static strata_err check_inputs(const strata_pack_opts *o, const char *const *files, int n_files)
{
    if (!o->out_prefix || !*o->out_prefix)
        return strata_errorf(STRATA_EINPUT, "no output prefix (--out PREFIX)");
    if (!(o->val_fraction >= 0 && o->val_fraction < 1))
        return strata_errorf(STRATA_EINPUT, "validation fraction %g is not in [0, 1)",
                             o->val_fraction);
    if (o->shard_tokens < 0)
        return strata_errorf(STRATA_EINPUT, "shard size %lld tokens is negative",
                             (long long)o->shard_tokens);
    if (o->deflate < 0 || o->deflate > 9)
        return strata_errorf(STRATA_EINPUT, "deflate level %d is not 0..9", o->deflate);
    if (n_files < 1) return strata_errorf(STRATA_EINPUT, "no input files");
    for (int i = 0; i < n_files; i++) {
        struct stat st;
        if (stat(files[i], &st))
            return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", files[i], strerror(errno));
        if (!S_ISREG(st.st_mode))
            return strata_errorf(STRATA_EINPUT, "%s: not a regular file", files[i]);
        if (access(files[i], R_OK))
            return strata_errorf(STRATA_EINPUT, "%s: cannot read: %s", files[i], strerror(errno));
    }
    char *copy = strdup(o->out_prefix);
    if (!copy) return strata_errorf(STRATA_ENOMEM, "out of memory");
    struct stat st;
    const char *dir = dirname(copy);
    int ok = !stat(dir, &st) && S_ISDIR(st.st_mode);
    strata_err e = ok ? strata_ok()
                      : strata_errorf(STRATA_EINPUT, "%s: output directory %s does not exist",
                                      o->out_prefix, dir);
    free(copy);
    return e;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

strata_err strata_pack(strata_tokenizer *tok, const strata_pack_opts *o, const char *const *files,
                       int n_files, strata_pack_stats *stats)
{
    double t0 = now();
    memset(stats, 0, sizeof *stats);
    STRATA_TRY(check_inputs(o, files, n_files));

    packer p = {.tok = tok};
    strata_tokenizer_doc_tokens(tok, &p.lead, &p.n_lead, &p.tail, &p.n_tail);
    strata_shard_writer_opts wo = {
        .vocab_size = strata_tokenizer_vocab_size(tok),
        .eot_token = strata_tokenizer_eot(tok),
        .tokenizer = strata_tokenizer_name(tok),
        .deflate = o->deflate,
        .tokenizer_hash = strata_tokenizer_hash(tok),
        .bos_token = strata_tokenizer_bos(tok),
    };
    p.train = (sink){.prefix = o->out_prefix,
                     .suffix = o->shard_tokens ? NULL : ".h5",
                     .shard_tokens = o->shard_tokens,
                     .wo = wo};
    p.val = (sink){.prefix = o->out_prefix, .suffix = ".val.h5", .wo = wo};

    int single = n_files == 1;
    int n_val = o->val_fraction > 0 && !single ? (int)val_count(o->val_fraction, n_files) : 0;
    strata_err e = strata_ok();
    for (int i = 0; i < n_files && !e.code; i++) {
        sink *dest = i < n_files - n_val ? &p.train : &p.val;
        e = pack_one(&p, files[i], dest, o->val_fraction, single);
    }
    if (!e.code) e = sink_close(&p.train);
    if (!e.code) e = sink_close(&p.val);
    if (!e.code && !p.train.suffix) e = write_manifest(&p.train, p.train.tokens);
    strata_shard_writer_abort(p.train.w);
    strata_shard_writer_abort(p.val.w);
    strata_tokens_free(&p.ids);
    strata_tokens_free(&p.all);
    free(p.buf);

    stats->bytes = p.bytes;
    stats->train_tokens = p.train.tokens;
    stats->val_tokens = p.val.tokens;
    stats->train_docs = p.train.docs;
    stats->val_docs = p.val.docs;
    stats->n_shards = p.train.n_files;
    stats->seconds = now() - t0;
    return e;
}
