/* tokenizer_hf_load.c — loading a tokenizer.json: the model (vocabulary,
 * merges, byte fallback), added tokens, the post-processor, and the load
 * that runs the pipeline loaders of tokenizer_hf_pipeline.c; every error
 * names the file and the JSON path. See tokenizer_hf.c for the pipeline. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "bpe.h"
#include "tokenizer_hf_impl.h"

/* ---- loading: errors name the file and the JSON path ----------------------------------------- */

strata_err strata_hfi_bad(const strata_hf *h, const char *jpath, const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return strata_errorf(STRATA_EINPUT, "%s: %s: %s", h->path, jpath, msg);
}

/* The "type" of the pipeline stage n at jpath (what: "a decoder", ...). */
strata_err strata_hfi_stage_type(const strata_hf *h, const json_t *n, const char *jpath,
                                 const char *what, const char **type)
{
    const json_t *t = json_object_get(n, "type");
    if (!json_is_object(n) || !json_is_string(t))
        return strata_hfi_bad(h, jpath, "%s must be an object with a \"type\"", what);
    *type = json_string_value(t);
    return strata_ok();
}

/* A Sequence stage: every member of n[key] through add, one level deeper
 * (at most 4 levels: a deeper file is refused rather than recursed into). */
strata_err strata_hfi_sequence(strata_hf *h, const json_t *n, const char *jpath, const char *key,
                               int depth, strata_hfi_stage_fn add)
{
    const json_t *arr = json_object_get(n, key);
    if (!json_is_array(arr) || depth > 4)
        return strata_hfi_bad(h, jpath, "Sequence needs a \"%s\" array", key);
    char sub[256];
    for (size_t i = 0; i < json_array_size(arr); i++) {
        snprintf(sub, sizeof sub, "%s.%s[%zu]", jpath, key, i);
        STRATA_TRY(add(h, json_array_get(arr, i), sub, depth + 1));
    }
    return strata_ok();
}

/* A JSON value that is absent or null. */
int strata_hfi_is_none(const json_t *v) { return !v || json_is_null(v); }

/* Reads an optional boolean member; an error for any other type. */
strata_err strata_hfi_get_bool(const strata_hf *h, const json_t *o, const char *jpath,
                               const char *key, int dflt, int *out)
{
    json_t *v = json_object_get(o, key);
    *out = dflt;
    if (strata_hfi_is_none(v)) return strata_ok();
    if (!json_is_boolean(v)) return strata_hfi_bad(h, jpath, "\"%s\" must be true or false", key);
    *out = json_is_true(v);
    return strata_ok();
}

strata_err strata_hfi_get_str(const strata_hf *h, const json_t *o, const char *jpath,
                              const char *key, const char **out, size_t *len)
{
    *out = "";
    *len = 0;
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) return strata_hfi_bad(h, jpath, "\"%s\" must be a string", key);
    *out = json_string_value(v);
    *len = json_string_length(v);
    return strata_ok();
}

char *strata_hfi_dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}
long strata_hfi_unbyte(const char *s, size_t len, const int u2b[324], uint8_t *out)
{
    long n = 0;
    for (size_t i = 0; i < len;) {
        int32_t cp;
        size_t k = strata_hfi_utf8_len((const uint8_t *)s + i, len - i, &cp);
        if (!k || cp >= 324 || u2b[cp] < 0) return -1;
        out[n++] = (uint8_t)u2b[cp];
        i += k;
    }
    return n;
}

static uint64_t pair_key(uint32_t a, uint32_t b) { return ((uint64_t)a << 32) | b; }

int32_t strata_hfi_merge_rank(const strata_hf *h, uint32_t a, uint32_t b)
{
    if (!h->merges_cap) return -1;
    uint64_t k = pair_key(a, b);
    size_t mask = h->merges_cap - 1;
    for (size_t i = strata_bpe_pair_hash(k) & mask;; i = (i + 1) & mask) {
        if (h->merges[i].pair == k) return h->merges[i].rank;
        if (h->merges[i].pair == UINT64_MAX) return -1;
    }
}

/* ---- loading ------------------------------------------------------------------------------ */

static strata_err set_token(strata_hf *h, const char *jpath, json_int_t id, const char *s,
                            size_t len, int replace)
{
    if (h->tstr[id] && !replace)
        return strata_hfi_bad(h, jpath, "id %lld is given to two tokens", (long long)id);
    char *p = strata_hfi_dup_n(s, len);
    if (!p) return strata_hfi_oom();
    free(h->tstr[id]);
    h->tstr[id] = p;
    h->tstr_len[id] = (uint32_t)len;
    return strata_ok();
}

/* Largest id in model.vocab and added_tokens, with their checks. */
static strata_err scan_ids(strata_hf *h, const json_t *vocab, const json_t *added, json_int_t *max)
{
    *max = -1;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)vocab, key, val)
    {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= (1 << 24))
            return strata_hfi_bad(h, "model.vocab",
                                  "token \"%.60s\" has an id that is not 0..2^24-1", key);
        if (json_integer_value(val) > *max) *max = json_integer_value(val);
    }
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a)
    {
        char jp[64];
        snprintf(jp, sizeof jp, "added_tokens[%zu]", i);
        json_t *id = json_object_get(a, "id");
        if (!json_is_object(a) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (1 << 24))
            return strata_hfi_bad(h, jp, "an added token needs an \"id\" 0..2^24-1");
        if (json_integer_value(id) > *max) *max = json_integer_value(id);
    }
    return strata_ok();
}

static const char *merge_path(char buf[64], size_t i)
{
    snprintf(buf, 64, "model.merges[%zu]", i);
    return buf;
}

/* model.vocab (into by_str as written, into h->vocab as BPE sees it: raw
 * bytes for byte-level models), the byte tokens, byte fallback and unk. */
static strata_err load_vocab(strata_hf *h, const json_t *model, stab *by_str, int u2b[324])
{
    json_t *vocab = json_object_get(model, "vocab");
    const char *key;
    size_t klen;
    json_t *val;
    uint8_t *tmp = NULL;
    size_t tmp_cap = 0;
    json_object_keylen_foreach((json_t *)vocab, key, klen, val)
    {
        json_int_t id = json_integer_value(val);
        STRATA_TRY(set_token(h, "model.vocab", id, key, klen, 0));
        if (strata_hfi_stab_set(by_str, key, klen, (uint32_t)id)) return strata_hfi_oom();
        if (!h->byte_level) {
            if (strata_hfi_stab_set(&h->vocab, key, klen, (uint32_t)id)) return strata_hfi_oom();
            continue;
        }
        if (strata_bpe_grow((void **)&tmp, &tmp_cap, klen + 1, 1)) return strata_hfi_oom();
        long nb = strata_hfi_unbyte(key, klen, u2b, tmp);
        /* a token outside the byte alphabet cannot come out of BPE on bytes */
        if (nb > 0 && strata_hfi_stab_set(&h->vocab, tmp, (size_t)nb, (uint32_t)id)) {
            free(tmp);
            return strata_hfi_oom();
        }
    }
    free(tmp);
    if (h->byte_level)
        for (int b = 0; b < 256; b++) {
            uint8_t c = (uint8_t)b;
            if (!strata_hfi_stab_get(&h->vocab, &c, 1, &h->byte_id[b]))
                return strata_hfi_bad(
                    h, "model.vocab",
                    "a byte-level vocabulary needs a token for every byte; byte 0x%02x "
                    "has none",
                    b);
        }
    for (int b = 0; b < 256; b++) {
        char name[8];
        uint32_t id;
        snprintf(name, sizeof name, "<0x%02X>", b);
        h->fallback[b] = strata_hfi_stab_get(by_str, name, 6, &id) ? (int32_t)id : -1;
    }
    h->unk = -1;
    json_t *unk = json_object_get(model, "unk_token");
    if (!strata_hfi_is_none(unk)) {
        uint32_t id;
        if (!json_is_string(unk))
            return strata_hfi_bad(h, "model.unk_token", "must be a string or null");
        if (!strata_hfi_stab_get(by_str, json_string_value(unk), json_string_length(unk), &id))
            return strata_hfi_bad(h, "model.unk_token", "\"%.60s\" is not in model.vocab",
                                  json_string_value(unk));
        h->unk = (int32_t)id;
    }

    return strata_ok();
}

/* The two tokens of merge m, "a b" or ["a", "b"]; NULL, or the problem. */
static const char *merge_parts(const json_t *m, const char **a, size_t *la, const char **b,
                               size_t *lb)
{
    if (json_is_string(m)) {
        *a = json_string_value(m);
        const char *sp = memchr(*a, ' ', json_string_length(m));
        if (!sp || memchr(sp + 1, ' ', json_string_length(m) - (size_t)(sp + 1 - *a)))
            return "a merge must be two tokens separated by one space";
        *la = (size_t)(sp - *a);
        *b = sp + 1;
        *lb = json_string_length(m) - *la - 1;
        return NULL;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *la = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *lb = json_string_length(json_array_get(m, 1));
        return NULL;
    }
    return "a merge must be \"a b\" or [\"a\", \"b\"]";
}

/* model.merges, in rank order, into the pair table. */
static strata_err load_merges(strata_hf *h, const json_t *model, const stab *by_str)
{
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) return strata_hfi_bad(h, "model.merges", "must be an array");
    size_t nm = json_array_size(merges);
    if (nm >= (1u << 30)) return strata_hfi_bad(h, "model.merges", "too many merges");
    h->merges_cap = 16;
    while (h->merges_cap < 2 * nm + 2) h->merges_cap *= 2;
    h->merges = malloc(h->merges_cap * sizeof *h->merges);
    h->merge_a = malloc((nm + 1) * sizeof *h->merge_a);
    h->merge_b = malloc((nm + 1) * sizeof *h->merge_b);
    h->merge_out = malloc((nm + 1) * sizeof *h->merge_out);
    if (!h->merges || !h->merge_a || !h->merge_b || !h->merge_out) return strata_hfi_oom();
    for (size_t i = 0; i < h->merges_cap; i++) h->merges[i].pair = UINT64_MAX;
    buf cat = {0};
    strata_err e = strata_ok();
    for (size_t i = 0; i < nm && !e.code; i++) {
        char mp[64]; /* the JSON path, written only for a message */
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t la, lb;
        const char *why = merge_parts(m, &a, &la, &b, &lb);
        if (why) {
            e = strata_hfi_bad(h, merge_path(mp, i), "%s", why);
            break;
        }
        uint32_t ia, ib, iab;
        cat.n = 0;
        if (strata_hfi_buf_put(&cat, a, la) || strata_hfi_buf_put(&cat, b, lb)) {
            e = strata_hfi_oom();
            break;
        }
        if (!strata_hfi_stab_get(by_str, a, la, &ia) || !strata_hfi_stab_get(by_str, b, lb, &ib)) {
            e = strata_hfi_bad(h, merge_path(mp, i), "token \"%.60s\" is not in model.vocab",
                               strata_hfi_stab_get(by_str, a, la, &ia) ? b : a);
            break;
        }
        if (!strata_hfi_stab_get(by_str, cat.p, cat.n, &iab)) {
            e = strata_hfi_bad(h, merge_path(mp, i),
                               "merged token \"%.60s%.60s\" is not in model.vocab", a, b);
            break;
        }
        /* a pair listed twice keeps its last rank, as the Rust crate's map does */
        int32_t rank = h->n_merges++;
        h->merge_a[rank] = ia;
        h->merge_b[rank] = ib;
        h->merge_out[rank] = iab;
        uint64_t k = pair_key(ia, ib);
        size_t mask = h->merges_cap - 1, j = strata_bpe_pair_hash(k) & mask;
        while (h->merges[j].pair != UINT64_MAX && h->merges[j].pair != k) j = (j + 1) & mask;
        h->merges[j].pair = k;
        h->merges[j].rank = rank;
    }
    free(cat.p);
    return e;
}

static strata_err load_model(strata_hf *h, const json_t *model, stab *by_str, int u2b[324])
{
    STRATA_TRY(load_vocab(h, model, by_str, u2b));
    return load_merges(h, model, by_str);
}

static strata_err load_added(strata_hf *h, const json_t *added)
{
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a)
    {
        char jp[64];
        snprintf(jp, sizeof jp, "added_tokens[%zu]", i);
        const char *s;
        size_t len;
        STRATA_TRY(strata_hfi_get_str(h, a, jp, "content", &s, &len));
        if (!len) return strata_hfi_bad(h, jp, "empty content");
        int special, normalized, flag;
        STRATA_TRY(strata_hfi_get_bool(h, a, jp, "special", 0, &special));
        STRATA_TRY(strata_hfi_get_bool(h, a, jp, "normalized", !special, &normalized));
        static const char *const flags[] = {"single_word", "lstrip", "rstrip"};
        for (int f = 0; f < 3; f++) {
            STRATA_TRY(strata_hfi_get_bool(h, a, jp, flags[f], 0, &flag));
            if (flag) return strata_hfi_bad(h, jp, "\"%s\": true is not supported", flags[f]);
        }
        if (normalized && !special)
            return strata_hfi_bad(h, jp,
                                  "\"normalized\": true is not supported for a non-special token");
        json_int_t id = json_integer_value(json_object_get(a, "id"));
        /* the added token names its id, whatever model.vocab said */
        STRATA_TRY(set_token(h, jp, id, s, len, 1));
        uint32_t old;
        if (strata_hfi_stab_get(&h->added_tab, s, len, &old))
            return strata_hfi_bad(h, jp, "content \"%.60s\" is already added_tokens[%u]", s, old);
        if (strata_bpe_grow((void **)&h->added, &h->added_cap, h->n_added + 1, sizeof *h->added))
            return strata_hfi_oom();
        added_tok *t = &h->added[h->n_added];
        t->s = strata_hfi_dup_n(s, len);
        t->len = len;
        t->id = (uint32_t)id;
        t->special = special;
        if (!t->s || strata_hfi_stab_set(&h->added_tab, s, len, (uint32_t)h->n_added))
            return strata_hfi_oom();
        h->n_added++;
        h->added_first[(uint8_t)s[0]] = 1;
        if (len > h->added_max) h->added_max = len;
    }
    return strata_ok();
}

/* The ids a post-processor's template puts around a single sequence. */
static strata_err load_post(strata_hf *h, const json_t *p, const char *jpath, int depth)
{
    if (strata_hfi_is_none(p)) return strata_ok();
    const char *t = NULL;
    STRATA_TRY(strata_hfi_stage_type(h, p, jpath, "a post-processor", &t));
    char sub[256];
    if (!strcmp(t, "ByteLevel")) return strata_ok(); /* offsets only */
    if (!strcmp(t, "Sequence"))
        return strata_hfi_sequence(h, p, jpath, "processors", depth, load_post);
    if (strcmp(t, "TemplateProcessing"))
        return strata_hfi_bad(
            h, jpath,
            "post-processor type \"%.60s\" is not supported (TemplateProcessing, ByteLevel, "
            "Sequence are)",
            t);
    json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens");
    if (!json_is_array(single)) return strata_hfi_bad(h, jpath, "\"single\" must be an array");
    int seen_a = 0;
    size_t i;
    json_t *item;
    json_array_foreach(single, i, item)
    {
        snprintf(sub, sizeof sub, "%s.single[%zu]", jpath, i);
        json_t *sp = json_object_get(item, "SpecialToken"), *sq = json_object_get(item, "Sequence");
        if (json_is_object(sq)) {
            seen_a = 1;
            continue;
        }
        json_t *name = json_object_get(sp, "id");
        if (!json_is_string(name))
            return strata_hfi_bad(h, sub, "expected a SpecialToken or a Sequence");
        json_t *ids = json_object_get(json_object_get(specials, json_string_value(name)), "ids");
        if (!json_is_array(ids))
            return strata_hfi_bad(h, sub, "special token \"%.60s\" is not in special_tokens",
                                  json_string_value(name));
        size_t k;
        json_t *idv;
        json_array_foreach(ids, k, idv)
        {
            json_int_t id = json_integer_value(idv);
            if (!json_is_integer(idv) || id < 0 || id >= h->vocab_size)
                return strata_hfi_bad(h, sub,
                                      "special token \"%.60s\" has an id outside the vocabulary",
                                      json_string_value(name));
            size_t *n = seen_a ? &h->n_tail : &h->n_lead;
            uint32_t *dst = seen_a ? h->tail : h->lead;
            if (*n == MAX_BOUND)
                return strata_hfi_bad(h, sub, "more than %d special tokens", MAX_BOUND);
            dst[(*n)++] = (uint32_t)id;
        }
    }
    if (!seen_a) return strata_hfi_bad(h, jpath, "the \"single\" template has no Sequence");
    return strata_ok();
}

static int added_id(const strata_hf *h, const char *content, uint32_t *id)
{
    uint32_t k;
    if (!strata_hfi_stab_get(&h->added_tab, content, strlen(content), &k) || !h->added[k].special)
        return 0;
    *id = h->added[k].id;
    return 1;
}

/* ---- strata_hf_load ------------------------------------------------------------------------ */

static strata_err read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strata_errorf(STRATA_EINPUT, "%s: cannot open: %s", path, strerror(errno));
    buf b = {0};
    uint8_t chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (strata_hfi_buf_put(&b, chunk, got)) {
            fclose(f);
            free(b.p);
            return strata_hfi_oom();
        }
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (err) {
        free(b.p);
        return strata_errorf(STRATA_EINPUT, "%s: cannot read: %s", path, strerror(err));
    }
    *out = b.p;
    *len = b.n;
    return strata_ok();
}

/* The top level, the model's kind and options, and the pipeline's stages. */
static strata_err load_options(strata_hf *h, const json_t *root, const json_t *model,
                               const json_t *vocab, const json_t *added)
{
    strata_err e = strata_ok();
    const json_t *type = json_object_get(model, "type");
    if (!json_is_object(root)) {
        e = strata_hfi_bad(h, "(top)", "expected a JSON object (a Hugging Face tokenizer.json)");
    } else if (!json_is_object(model)) {
        e = strata_hfi_bad(h, "model", "missing or not an object");
    } else if (json_is_string(type) && strcmp(json_string_value(type), "BPE")) {
        e = strata_hfi_bad(h, "model.type",
                           "model type \"%.40s\" is not supported (strata reads BPE models only)",
                           json_string_value(type));
    } else if (!json_is_string(type) && !json_object_get(model, "merges")) {
        e = strata_hfi_bad(h, "model.type", "missing (and no merges: not a BPE model)");
    } else if (!json_is_object(vocab) || !json_object_size(vocab)) {
        e = strata_hfi_bad(h, "model.vocab", "must be a non-empty object of token: id");
    } else if (!strata_hfi_is_none(added) && !json_is_array(added)) {
        e = strata_hfi_bad(h, "added_tokens", "must be an array");
    }
    if (e.code) return e;
    json_t *dropout = json_object_get(model, "dropout");
    if (!strata_hfi_is_none(dropout) &&
        !(json_is_number(dropout) && json_number_value(dropout) == 0)) {
        e = strata_hfi_bad(h, "model.dropout",
                           "BPE dropout is not supported (it makes encoding random)");
        return e;
    }
    static const char *const affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(model, affix[i]);
        if (!strata_hfi_is_none(v) && !(json_is_string(v) && json_string_length(v) == 0)) {
            e = strata_hfi_bad(h, "model", "\"%s\" is not supported", affix[i]);
            return e;
        }
    }
    if ((e = strata_hfi_get_bool(h, model, "model", "byte_fallback", 0, &h->byte_fallback)).code ||
        (e = strata_hfi_get_bool(h, model, "model", "fuse_unk", 0, &h->fuse_unk)).code ||
        (e = strata_hfi_get_bool(h, model, "model", "ignore_merges", 0, &h->ignore_merges)).code)
        return e;
    if ((e = strata_hfi_add_normalizer(h, json_object_get(root, "normalizer"), "normalizer", 0))
            .code ||
        (e = strata_hfi_add_pretokenizer(h, json_object_get(root, "pre_tokenizer"), "pre_tokenizer",
                                         0))
            .code ||
        (e = strata_hfi_add_decoder(h, json_object_get(root, "decoder"), "decoder", 0)).code)
        return e;
    return strata_ok();
}

/* Document boundaries (docs/DESIGN.md): the post-processor's template,
 * else <|begin_of_text|> before each document, else the EOS before it. */
static void pick_boundaries(strata_hf *h)
{
    uint32_t id;
    h->bos = h->eos = -1;
    if (h->n_lead || h->n_tail) {
        if (h->n_lead) h->bos = (int)h->lead[0];
        if (h->n_tail) h->eos = (int)h->tail[h->n_tail - 1];
    } else if (added_id(h, "<|begin_of_text|>", &id)) {
        h->lead[h->n_lead++] = id;
        h->bos = (int)id;
    } else if (added_id(h, "<|endoftext|>", &id) || added_id(h, "<|end_of_text|>", &id) ||
               added_id(h, "</s>", &id)) {
        h->lead[h->n_lead++] = id;
        h->eos = (int)id;
    }
}

/* A model without pre-tokenizer may cut a long segment before a metaspace
 * when no token holds one after its leading metaspaces. */
static void check_metaspace(strata_hf *h)
{
    uint32_t id;
    if (!h->n_pre && !h->byte_level && strata_hfi_stab_get(&h->vocab, "\xE2\x96\x81", 3, &id)) {
        h->cut_at_metaspace = 1;
        for (int t = 0; t < h->vocab_size && h->cut_at_metaspace; t++) {
            const char *ts = h->tstr[t];
            if (!ts) continue;
            size_t tl = h->tstr_len[t], k = 0;
            while (k + 3 <= tl && !memcmp(ts + k, "\xE2\x96\x81", 3)) k += 3;
            if (k < tl && memmem(ts + k, tl - k, "\xE2\x96\x81", 3)) h->cut_at_metaspace = 0;
        }
    }
}

static strata_err load(strata_hf *h, const uint8_t *text, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (jerr.line < 0) return strata_errorf(STRATA_EINPUT, "%s: %s", h->path, jerr.text);
        return strata_errorf(STRATA_EINPUT, "%s:%d:%d: not valid JSON: %s", h->path, jerr.line,
                             jerr.column, jerr.text);
    }
    strata_err e = strata_ok();
    stab by_str = {0};
    json_t *model = json_object_get(root, "model"), *added = json_object_get(root, "added_tokens");
    json_t *vocab = json_object_get(model, "vocab");
    if ((e = load_options(h, root, model, vocab, added)).code) goto done;
    json_int_t max_id;
    json_t *no_added = json_array();
    e = scan_ids(h, vocab, strata_hfi_is_none(added) ? no_added : added, &max_id);
    json_decref(no_added);
    if (e.code) goto done;
    h->vocab_size = (int)max_id + 1;
    h->tstr = calloc((size_t)h->vocab_size, sizeof *h->tstr);
    h->tstr_len = calloc((size_t)h->vocab_size, sizeof *h->tstr_len);
    size_t tab = 64; /* sized for the vocabulary: no rehash while loading */
    while (tab < 2 * ((size_t)h->vocab_size + 1)) tab *= 2;
    if (!h->tstr || !h->tstr_len || strata_hfi_stab_init(&by_str, tab) ||
        strata_hfi_stab_init(&h->vocab, tab) || strata_hfi_stab_init(&h->added_tab, 64) ||
        strata_hfi_stab_init(&h->cache, 1u << 12)) {
        e = strata_hfi_oom();
        goto done;
    }
    if ((e = load_model(h, model, &by_str, h->u2b)).code) goto done;
    if (!strata_hfi_is_none(added) && (e = load_added(h, added)).code) goto done;
    if ((e = load_post(h, json_object_get(root, "post_processor"), "post_processor", 0)).code)
        goto done;
    pick_boundaries(h);
    check_metaspace(h);
    e = strata_hfi_make_surfaces(h);
done:
    strata_hfi_stab_free(&by_str);
    json_decref(root);
    return e;
}

strata_err strata_hf_load(strata_hf **out, const char *path)
{
    *out = NULL;
    strata_hf *h = calloc(1, sizeof *h);
    if (!h || !(h->path = strdup(path))) {
        free(h);
        return strata_hfi_oom();
    }
    uint32_t b2u[256];
    strata_bpe_byte_unicode_tables(b2u, h->u2b);
    uint8_t *text = NULL;
    size_t len = 0;
    strata_err e = read_file(path, &text, &len);
    if (!e.code) {
        strata_hfi_sha256_hex(text, len, h->hash);
        e = load(h, text, len);
    }
    free(text);
    if (e.code) {
        strata_hf_free(h);
        return e;
    }
    strata_hfi_doc_reset(h);
    *out = h;
    return strata_ok();
}
