/* stream.c — manifests, directories and single shards as one ordered list.
 *
 * Opening expands the path into a flat list of shard paths (recursively for
 * manifests that name manifests or directories), then opens each shard once
 * to validate it and learn its length. Refresh expands again and accepts the
 * result only if the old list is a prefix of it.
 */
#include "strata/stream.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_DEPTH          16
#define MAX_MANIFEST_BYTES ((size_t)64 << 20)

typedef struct entry {
    strata_stream_shard pub;
    char *path;
    /* identity at open time, to notice a shard rewritten under us */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} entry;

struct strata_stream {
    char *path;
    const char *kind;
    strata_stream_opts opts;
    entry *e;
    int n, cap;
    int64_t n_samples, n_tokens;
    strata_shard_info common;
    int have_common;
};

/* A growable list of paths, the expansion of a stream. */
typedef struct pathlist {
    char **p;
    int n, cap;
    int stopped; /* refresh: stopped at an entry not written yet */
} pathlist;

static void pathlist_free(pathlist *l)
{
    for (int i = 0; i < l->n; i++) free(l->p[i]);
    free(l->p);
    memset(l, 0, sizeof *l);
}

static strata_err pathlist_add(pathlist *l, const char *path)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        char **p = realloc(l->p, (size_t)cap * sizeof *p);
        if (!p) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
        l->p = p;
        l->cap = cap;
    }
    if (!(l->p[l->n] = strdup(path))) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    l->n++;
    return strata_ok();
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static const char *base_name(const char *path)
{
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

/* dir of `file` joined with `rel` (rel kept as is when absolute). */
static char *join_rel(const char *file, const char *rel)
{
    if (rel[0] == '/') return strdup(rel);
    const char *slash = strrchr(file, '/');
    size_t dn = slash ? (size_t)(slash - file) + 1 : 0;
    size_t n = dn + strlen(rel) + 1;
    char *out = malloc(n);
    if (!out) return NULL;
    memcpy(out, file, dn);
    strcpy(out + dn, rel);
    return out;
}

/* The HDF5 signature at offset 0 (files with a user block put it at 512,
 * 1024, ...; those need the .h5 name). */
static int has_hdf5_signature(const char *path)
{
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    unsigned char buf[8];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(buf, 1, 8, f);
    fclose(f);
    return n == 8 && memcmp(buf, sig, 8) == 0;
}

static int is_shard_name(const char *path)
{
    return ends_with(path, ".h5") || ends_with(path, ".hdf5");
}

typedef struct expand_ctx {
    int refresh;                /* tolerate entries not written yet */
    char *stack[MAX_DEPTH + 1]; /* real paths of the manifests being read */
    const char *shown[MAX_DEPTH + 1];
    int depth;
} expand_ctx;

static strata_err expand(expand_ctx *cx, const char *path, const char *where, pathlist *out);

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static strata_err expand_dir(const char *path, pathlist *out)
{
    DIR *d = opendir(path);
    if (!d) return strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
    pathlist names = {0};
    strata_err e = strata_ok();
    struct dirent *de;
    while (!e.code && (de = readdir(d))) {
        const char *nm = de->d_name;
        if (nm[0] == '.' || !ends_with(nm, ".h5") || ends_with(nm, ".val.h5")) continue;
        e = pathlist_add(&names, nm);
    }
    closedir(d);
    if (e.code) {
        pathlist_free(&names);
        return e;
    }
    if (names.n) qsort(names.p, (size_t)names.n, sizeof *names.p, cmp_str);
    size_t pn = strlen(path);
    int found = 0;
    for (int i = 0; i < names.n && !e.code; i++) {
        size_t n = pn + strlen(names.p[i]) + 2;
        char *full = malloc(n);
        if (!full) {
            e = strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
            break;
        }
        snprintf(full, n, "%s%s%s", path, pn && path[pn - 1] == '/' ? "" : "/", names.p[i]);
        struct stat st;
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode)) {
            e = pathlist_add(out, full);
            found++;
        }
        free(full);
    }
    pathlist_free(&names);
    if (!e.code && !found)
        e = strata_errorf(STRATA_EINPUT, "%s: directory has no shards (*.h5)", path);
    return e;
}

static strata_err read_text(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    strata_err e = strata_ok();
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        if (cap >= MAX_MANIFEST_BYTES) {
            e = strata_errorf(STRATA_EINPUT, "%s: manifest larger than %zu MiB", path,
                              MAX_MANIFEST_BYTES >> 20);
            break;
        }
        cap *= 2;
        char *p = realloc(buf, cap + 1);
        if (!p) free(buf);
        buf = p;
    }
    if (!e.code && ferror(f)) e = strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
    fclose(f);
    if (!buf) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    if (e.code) {
        free(buf);
        return e;
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return strata_ok();
}

static strata_err expand_manifest(expand_ctx *cx, const char *path, pathlist *out)
{
    char *real = realpath(path, NULL);
    if (!real) return strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
    for (int i = 0; i < cx->depth; i++) {
        if (strcmp(cx->stack[i], real) == 0) {
            char chain[768] = "";
            size_t m = 0;
            for (int k = i; k < cx->depth && m < sizeof chain; k++)
                m += (size_t)snprintf(chain + m, sizeof chain - m, "%s -> ", cx->shown[k]);
            free(real);
            return strata_errorf(STRATA_EINPUT, "%s: manifest includes itself (%s%s)", path, chain,
                                 path);
        }
    }
    if (cx->depth >= MAX_DEPTH) {
        free(real);
        return strata_errorf(STRATA_EINPUT, "%s: manifests nested more than %d deep", path,
                             MAX_DEPTH);
    }
    char *text = NULL;
    size_t len = 0;
    strata_err e = read_text(path, &text, &len);
    if (e.code) {
        free(real);
        return e;
    }
    if (memchr(text, 0, len)) {
        free(real);
        free(text);
        return strata_errorf(STRATA_EINPUT,
                             "%s: not a manifest (binary data) nor a shard (no HDF5 signature; "
                             "shards are named *.h5)",
                             path);
    }
    cx->stack[cx->depth] = real;
    cx->shown[cx->depth] = path;
    cx->depth++;
    int lineno = 0;
    char *p = text;
    if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0) p += 3; /* a UTF-8 byte order mark */
    while (*p && !e.code && !out->stopped) {
        char *nl = strchr(p, '\n');
        lineno++;
        /* While following, a last line without its newline may be half
         * written: leave it for the next refresh. */
        if (!nl && cx->refresh) {
            out->stopped = 1;
            break;
        }
        char *line = p, *end = nl ? nl : p + strlen(p);
        p = nl ? nl + 1 : end;
        *end = 0;
        char *hash = strstr(line, " #");
        if (!hash) hash = strstr(line, "\t#");
        if (hash) *hash = 0;
        while (*line == ' ' || *line == '\t') line++;
        size_t n = strlen(line);
        while (n && (line[n - 1] == ' ' || line[n - 1] == '\t' || line[n - 1] == '\r')) n--;
        line[n] = 0;
        if (!n || line[0] == '#') continue;
        char *full = join_rel(path, line);
        if (!full) {
            e = strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
            break;
        }
        char where[4200];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        e = expand(cx, full, where, out);
        free(full);
    }
    cx->depth--;
    free(real);
    free(text);
    return e;
}

/* Expands path (named at `where`, "" at the top) into shard paths. */
static strata_err expand(expand_ctx *cx, const char *path, const char *where, pathlist *out)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT && cx->refresh && where[0]) {
            out->stopped = 1; /* named but not written yet */
            return strata_ok();
        }
        if (where[0])
            return strata_errorf(STRATA_EINPUT, "%s: %s: %s", where, path, strerror(errno));
        return strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
    }
    if (S_ISDIR(st.st_mode)) return expand_dir(path, out);
    if (!S_ISREG(st.st_mode))
        return strata_errorf(STRATA_EINPUT, "%s: not a regular file or directory", path);
    if (is_shard_name(path) || has_hdf5_signature(path)) return pathlist_add(out, path);
    return expand_manifest(cx, path, out);
}

static strata_err expand_top(const char *path, int refresh, pathlist *out, const char **kind)
{
    expand_ctx cx = {.refresh = refresh};
    struct stat st;
    if (stat(path, &st) != 0) return strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        *kind = "directory";
    else if (is_shard_name(path) || has_hdf5_signature(path))
        *kind = "shard";
    else
        *kind = "manifest";
    return expand(&cx, path, "", out);
}

/* Opens one shard, checks it against the stream and appends it. */
static strata_err add_shard(strata_stream *st, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0) return strata_errorf(STRATA_EINPUT, "%s: %s", path, strerror(errno));
    strata_shard *sh = NULL;
    STRATA_TRY(strata_shard_open(&sh, path));
    strata_shard_info info = *strata_shard_get_info(sh);
    int64_t ns = strata_shard_n_samples(sh, st->opts.seq_len);
    strata_shard_close(sh);

    if (st->opts.max_vocab > 0 && info.vocab_size > st->opts.max_vocab)
        return strata_errorf(STRATA_EINPUT,
                             "%s: vocab_size %d is larger than the model's %d (HINT: data packed "
                             "with another tokenizer?)",
                             path, info.vocab_size, st->opts.max_vocab);
    if (st->have_common) {
        const strata_shard_info *c = &st->common;
        if (info.vocab_size != c->vocab_size || strcmp(info.tokenizer, c->tokenizer) != 0 ||
            info.eot_token != c->eot_token || strcmp(info.tokenizer_hash, c->tokenizer_hash) != 0)
            return strata_errorf(STRATA_EINPUT,
                                 "%s: tokenizer %s, vocab_size %d, eot %d differs from the "
                                 "stream's first shard %s (%s, %d, %d)",
                                 path, info.tokenizer, info.vocab_size, info.eot_token,
                                 st->e[0].path, c->tokenizer, c->vocab_size, c->eot_token);
    }
    if (st->n == st->cap) {
        int cap = st->cap ? 2 * st->cap : 16;
        entry *p = realloc(st->e, (size_t)cap * sizeof *p);
        if (!p) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
        st->e = p;
        st->cap = cap;
    }
    entry *en = &st->e[st->n];
    memset(en, 0, sizeof *en);
    if (!(en->path = strdup(path))) return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    en->pub.path = en->path;
    en->pub.name = base_name(en->path);
    en->pub.info = info;
    en->pub.n_samples = ns;
    en->pub.first_sample = st->n_samples;
    en->dev = sb.st_dev;
    en->ino = sb.st_ino;
    en->size = sb.st_size;
    en->mtime = sb.st_mtim;
    st->n++;
    st->n_samples += ns;
    st->n_tokens += info.n_tokens;
    if (!st->have_common) {
        st->common = info;
        st->common.n_tokens = 0;
        st->common.n_docs = 0;
        st->have_common = 1;
    }
    st->common.n_tokens += info.n_tokens;
    st->common.n_docs += info.n_docs;
    return strata_ok();
}

strata_err strata_stream_open(strata_stream **out, const char *path, const strata_stream_opts *opts)
{
    *out = NULL;
    if (opts->seq_len < 1)
        return strata_errorf(STRATA_EINPUT, "%s: seq_len %d < 1", path, opts->seq_len);
    strata_stream *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return strata_errorf(STRATA_ENOMEM, "%s: out of memory", path);
    }
    st->opts = *opts;
    pathlist l = {0};
    strata_err e = expand_top(path, 0, &l, &st->kind);
    for (int i = 0; i < l.n && !e.code; i++) e = add_shard(st, l.p[i]);
    if (!e.code && st->n == 0 && !opts->allow_empty)
        e = strata_errorf(STRATA_EINPUT, "%s: manifest lists no shards", path);
    pathlist_free(&l);
    if (e.code) {
        strata_stream_close(st);
        return e;
    }
    *out = st;
    return strata_ok();
}

strata_err strata_stream_refresh(strata_stream *st, int *added)
{
    *added = 0;
    if (strcmp(st->kind, "shard") == 0) return strata_ok();
    pathlist l = {0};
    const char *kind;
    strata_err e = expand_top(st->path, 1, &l, &kind);
    if (e.code) goto done;
    if (l.n < st->n && l.stopped) {
        e = strata_errorf(STRATA_EINPUT, "%s: shard %s is gone (it was there when the run started)",
                          st->path, st->e[l.n].path);
        goto done;
    }
    if (l.n < st->n) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: now lists %d shards, %d before (HINT: only appending is allowed "
                          "while a run follows the stream)",
                          st->path, l.n, st->n);
        goto done;
    }
    for (int i = 0; i < st->n; i++) {
        entry *en = &st->e[i];
        struct stat sb;
        if (strcmp(l.p[i], en->path) != 0) {
            e = strata_errorf(STRATA_EINPUT,
                              "%s: shard %d was %s, now %s (HINT: only appending is allowed while "
                              "a run follows the stream)",
                              st->path, i + 1, en->path, l.p[i]);
            goto done;
        }
        if (stat(en->path, &sb) != 0) {
            e = strata_errorf(STRATA_EINPUT, "%s: %s (it was there when the run started)", en->path,
                              strerror(errno));
            goto done;
        }
        if (sb.st_dev != en->dev || sb.st_ino != en->ino || sb.st_size != en->size ||
            sb.st_mtim.tv_sec != en->mtime.tv_sec || sb.st_mtim.tv_nsec != en->mtime.tv_nsec) {
            e = strata_errorf(STRATA_EINPUT, "%s: shard changed while the run was using it",
                              en->path);
            goto done;
        }
    }
    for (int i = st->n; i < l.n && !e.code; i++) {
        e = add_shard(st, l.p[i]);
        if (!e.code) (*added)++;
    }
done:
    pathlist_free(&l);
    return e;
}

void strata_stream_close(strata_stream *st)
{
    if (!st) return;
    for (int i = 0; i < st->n; i++) free(st->e[i].path);
    free(st->e);
    free(st->path);
    free(st);
}

const char *strata_stream_path(const strata_stream *st) { return st->path; }
const char *strata_stream_kind(const strata_stream *st) { return st->kind; }
int strata_stream_n_shards(const strata_stream *st) { return st->n; }
int64_t strata_stream_n_samples(const strata_stream *st) { return st->n_samples; }
int64_t strata_stream_n_tokens(const strata_stream *st) { return st->n_tokens; }

const strata_stream_shard *strata_stream_shard_at(const strata_stream *st, int i)
{
    return i >= 0 && i < st->n ? &st->e[i].pub : NULL;
}

const strata_shard_info *strata_stream_info(const strata_stream *st)
{
    return st->have_common ? &st->common : NULL;
}

int strata_stream_locate(const strata_stream *st, int64_t sample, int64_t *local)
{
    /* The last shard whose first sample is <= sample; shards without
     * samples share their successor's first_sample and are passed over. */
    int lo = 0, hi = st->n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (st->e[mid].pub.first_sample <= sample)
            lo = mid;
        else
            hi = mid - 1;
    }
    *local = sample - st->e[lo].pub.first_sample;
    return lo;
}

size_t strata_stream_fingerprint(const strata_stream *st, char *buf, size_t cap)
{
    size_t n = 0;
    int full = cap == 0; /* once an item does not fit, buf stops growing */
    if (cap) buf[0] = 0;
    for (int i = 0; i < st->n; i++) {
        char item[512];
        int m = snprintf(item, sizeof item, "%s%s:%" PRId64, i ? "," : "", st->e[i].pub.name,
                         st->e[i].pub.info.n_tokens);
        if (m < 0) continue;
        if (!full && n + (size_t)m < cap)
            memcpy(buf + n, item, (size_t)m + 1);
        else
            full = 1;
        n += (size_t)m;
    }
    return n;
}
