/* hf_tensors.c — Hugging Face checkpoint directories' weights (the tensor
 * mapping half of hf.h): which safetensors tensor is which strata tensor,
 * transposed where the file stores it so, import and export of whole
 * directories (one file or shards with their index). config.json is hf.c's.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"
#include "hf_json.h"

#include "strata/hf.h"

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
    const char *d = strata_hf_display_name(strata_model_get_shape(m));
    return d ? d : "this model";
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

/* The file's tensor for t, its name and shape checked; marked used. */
static strata_err match_tensor(const strata_safetensors *st, const char *where,
                               const strata_model *m, const strata_tensor *t,
                               const strata_st_tensor **src, unsigned char *used)
{
    STRATA_TRY(lookup(st, where, t->name, src));
    const strata_st_tensor *f = *src;
    if (!f) return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is missing", where, t->name);
    used[f - strata_st_at(st, 0)] = 1;
    uint64_t want[2] = {(uint64_t)t->shape[0], (uint64_t)t->shape[1]};
    if (stored_transposed(m, t)) want[0] = (uint64_t)t->shape[1], want[1] = (uint64_t)t->shape[0];
    if (f->ndim != t->ndim || f->shape[0] != want[0] || (t->ndim == 2 && f->shape[1] != want[1])) {
        char got[160], exp[64];
        shape_text(got, sizeof got, f->ndim, f->shape);
        shape_text(exp, sizeof exp, t->ndim, want);
        return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' has shape %s, expected %s",
                             strata_st_path(st, f->file), f->name, got, exp);
    }
    return strata_ok();
}

/* Every tensor's payload into m's parameters, transposed where stored so. */
static strata_err read_payload(const strata_safetensors *st, strata_model *m,
                               const strata_st_tensor **src)
{
    float *p = strata_model_params(m), *tmp = NULL;
    size_t tmp_len = 0;
    strata_err e = strata_ok();
    for (int i = 0; i < strata_model_n_tensors(m) && !e.code; i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        if (!stored_transposed(m, t)) {
            e = strata_st_read(st, src[i], p + t->offset);
            continue;
        }
        if (tmp_len < t->numel) {
            free(tmp);
            tmp_len = 0;
            if (!(tmp = malloc(t->numel * sizeof(float)))) {
                e = strata_errorf(STRATA_ENOMEM, "out of memory");
                break;
            }
            tmp_len = t->numel;
        }
        e = strata_st_read(st, src[i], tmp);
        if (!e.code) transpose(p + t->offset, tmp, (size_t)t->shape[1], (size_t)t->shape[0]);
    }
    free(tmp);
    return e;
}

/* A tied model's lm_head.weight, when the file has one, must equal the
 * embedding just read. */
static strata_err check_tied_head(const strata_safetensors *st, strata_model *m,
                                  const strata_tensor *emb, const strata_st_tensor *head)
{
    float *tmp = malloc(emb->numel * sizeof(float));
    strata_err e =
        tmp ? strata_st_read(st, head, tmp) : strata_errorf(STRATA_ENOMEM, "out of memory");
    if (!e.code && memcmp(tmp, strata_model_params(m) + emb->offset, emb->numel * sizeof(float)))
        e = strata_errorf(STRATA_EINPUT,
                          "%s: lm_head.weight differs from %s; the model ties the two "
                          "(tie_word_embeddings) and cannot import an untied head",
                          strata_st_path(st, head->file), emb->name);
    free(tmp);
    return e;
}

strata_err strata_hf_load_tensors(const strata_safetensors *st, const char *where, strata_model *m)
{
    int n = strata_model_n_tensors(m);
    size_t nf = strata_st_count(st);
    const strata_st_tensor **src = calloc((size_t)n + 1, sizeof *src);
    unsigned char *used = calloc(nf + 1, 1);
    strata_err e = strata_ok();
    if (!src || !used) e = strata_errorf(STRATA_ENOMEM, "out of memory");
    /* First every name and shape, before any payload. */
    for (int i = 0; i < n && !e.code; i++)
        e = match_tensor(st, where, m, strata_model_tensor(m, i), &src[i], used);
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
    if (!e.code) e = read_payload(st, m, src);
    if (!e.code && head) e = check_tied_head(st, m, emb, head);
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
    if (!specs) return strata_errorf(STRATA_ENOMEM, "out of memory");
    for (int i = 0; i < count; i++) {
        const strata_tensor *t = strata_model_tensor(m, first + i);
        spec_of(m, t, &specs[i]);
        if (stored_transposed(m, t) && t->numel > max_tr) max_tr = t->numel;
    }
    float *tmp = malloc((max_tr ? max_tr : 1) * sizeof(float));
    strata_st_writer *w = NULL;
    strata_err e = tmp ? strata_st_write_begin(&w, path, dtype, specs, (size_t)count, metadata)
                       : strata_errorf(STRATA_ENOMEM, "out of memory");
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
    if (!strata_hf_display_name(s))
        return strata_errorf(STRATA_EINPUT,
                             "%s: no Hugging Face model_type for family %d variant %d", dir,
                             s->family, s->variant);
    STRATA_TRY(strata_mkdir_p(dir));
    /* Shards in table order: a tensor starts a new shard when it would push
     * a non-empty one past the limit (as save_pretrained does). */
    int n = strata_model_n_tensors(m);
    int *shard_of = calloc((size_t)n + 1, sizeof *shard_of);
    if (!shard_of) return strata_errorf(STRATA_ENOMEM, "out of memory");
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
            e = index ? strata_hf_write_json(path, index)
                      : strata_errorf(STRATA_ENOMEM, "out of memory");
            json_decref(index);
        }
        json_decref(map);
    }
    free(shard_of);
    if (!e.code) e = strata_hf_write_config(dir, s, dtype, extra_json);
    if (!e.code) e = remove_stale(dir, n_shards);
    return e;
}
