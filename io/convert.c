/* convert.c — llm.c model files and Hugging Face safetensors; see convert.h.
 *
 * Both readers work in two phases: first every size in the file is checked
 * against the others and against the file's length, then the payload is
 * read with pread at offsets that are known to lie inside the file. The
 * file formats are little-endian; so is every host strata builds for, and
 * a big-endian host swaps bytes after reading and before writing.
 */
#include "strata/convert.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"

#include "strata/hf.h"
#include "strata/safetensors.h"

#define LLMC_HEADER_INTS 256

/* The twelve tensors of a block, in llm.c's order (which is strata's
 * order within a block too). */
static const char *const block_names[12] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias",
};

/* ---- bytes in and out ----------------------------------------------------- */

static void to_little_endian(void *p, size_t n_words)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    uint32_t *w = p;
    for (size_t i = 0; i < n_words; i++) w[i] = __builtin_bswap32(w[i]);
#else
    (void)p, (void)n_words;
#endif
}

typedef strata_in_file in_file;
typedef strata_out_file out_file;
#define in_open   strata_in_open
#define in_read   strata_in_read
#define out_open  strata_out_open
#define out_write strata_out_write

static strata_err in_read_floats(const in_file *f, float *dst, size_t n, uint64_t off,
                                 const char *what)
{
    STRATA_TRY(in_read(f, dst, n * sizeof(float), off, what));
    to_little_endian(dst, n);
    return strata_ok();
}

static void out_write_floats(out_file *o, const float *p, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        float x = p[i];
        to_little_endian(&x, 1);
        out_write(o, &x, sizeof x);
    }
#else
    out_write(o, p, n * sizeof(float));
#endif
}

static void out_write_zeros(out_file *o, size_t n_floats)
{
    static const float zeros[1024];
    while (n_floats) {
        size_t k = n_floats < 1024 ? n_floats : 1024;
        out_write(o, zeros, k * sizeof(float));
        n_floats -= k;
    }
}

static strata_err out_finish(out_file *o) { return strata_out_finish(o); }

static const strata_tensor *block_tensor(const strata_model *m, int l, int k)
{
    char name[48];
    snprintf(name, sizeof name, "h.%d.%s", l, block_names[k]);
    return strata_model_find(m, name);
}

/* ---- llm.c ----------------------------------------------------------------- */

/* llm.c's header: magic, version 3 (fp32), a possible shape, and a file
 * size that matches it exactly; *shape and *Vp (the padded vocabulary). */
static strata_err llmc_header(in_file *f, const char *path, strata_model_shape *shape, int *Vp_out)
{
    strata_err e;
    int32_t h[LLMC_HEADER_INTS];
    if (f->size < sizeof h) {
        e = strata_errorf(STRATA_EINPUT, "%s: %llu bytes, shorter than llm.c's %zu-byte header",
                          path, (unsigned long long)f->size, sizeof h);
        return e;
    }
    if ((e = in_read(f, h, sizeof h, 0, "the header")).code) return e;
    to_little_endian(h, LLMC_HEADER_INTS);
    if (h[0] != STRATA_LLMC_MAGIC) {
        e = strata_errorf(STRATA_EINPUT, "%s: not an llm.c model file (magic %d, expected %d)",
                          path, h[0], STRATA_LLMC_MAGIC);
        return e;
    }
    if (h[1] != STRATA_LLMC_VERSION) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: llm.c model version %d; only version 3 (fp32) is supported%s", path,
                          h[1],
                          h[1] == 5 ? "; HINT: version 5 is bf16, write an fp32 file with "
                                      "llm.c's train_gpt2.py"
                                    : "");
        return e;
    }
    int maxT = h[2], V = h[3], L = h[4], NH = h[5], C = h[6], Vp = h[7];
    if (maxT < 2 || V < 2 || L < 1 || NH < 1 || C < 1 || Vp < V || maxT > (1 << 20) ||
        V > (1 << 24) || Vp > (1 << 25) || L > 1024 || C > 65536 || C % NH) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: header holds an impossible shape (max_seq_len %d, vocab_size %d, "
                          "num_layers %d, num_heads %d, channels %d, padded_vocab_size %d)",
                          path, maxT, V, L, NH, C, Vp);
        return e;
    }
    /* All factors are bounded above, so these products fit in 64 bits. */
    uint64_t c = (uint64_t)C, n_floats = (uint64_t)Vp * c + (uint64_t)maxT * c +
                                         (uint64_t)L * (12 * c * c + 13 * c) + 2 * c;
    uint64_t want = sizeof h + 4 * n_floats;
    if (f->size != want) {
        e = strata_errorf(STRATA_EINPUT,
                          "%s: %llu bytes, but its header (num_layers %d, channels %d, "
                          "max_seq_len %d, padded_vocab_size %d) makes %llu; truncated or not "
                          "llm.c's format",
                          path, (unsigned long long)f->size, L, C, maxT, Vp,
                          (unsigned long long)want);
        return e;
    }
    *shape = (strata_model_shape){
        .n_layer = L, .n_head = NH, .n_embd = C, .block_size = maxT, .vocab_size = V};
    *Vp_out = Vp;
    return strata_ok();
}

/* The weights in llm.c's order: wte (with Vp - V padding rows llm.c never
 * reads), wpe, the twelve block tensors layer by layer, ln_f. */
static strata_err llmc_weights(in_file *f, strata_model *m, int Vp)
{
    strata_err e;
    uint64_t c = (uint64_t)strata_model_get_shape(m)->n_embd;
    int L = strata_model_get_shape(m)->n_layer;
    float *p = strata_model_params(m);
    uint64_t off = (uint64_t)LLMC_HEADER_INTS * sizeof(int32_t);
    const strata_tensor *wte = strata_model_find(m, "wte.weight");
    const strata_tensor *wpe = strata_model_find(m, "wpe.weight");
    /* wte: V real rows, then Vp - V padding rows that llm.c never reads. */
    if ((e = in_read_floats(f, p + wte->offset, wte->numel, off, "wte")).code) return e;
    off += (uint64_t)Vp * c * 4;
    if ((e = in_read_floats(f, p + wpe->offset, wpe->numel, off, "wpe")).code) return e;
    off += wpe->numel * 4;
    for (int k = 0; k < 12; k++)
        for (int l = 0; l < L; l++) {
            const strata_tensor *t = block_tensor(m, l, k);
            if ((e = in_read_floats(f, p + t->offset, t->numel, off, t->name)).code) return e;
            off += t->numel * 4;
        }
    const strata_tensor *lnf[2] = {strata_model_find(m, "ln_f.weight"),
                                   strata_model_find(m, "ln_f.bias")};
    for (int i = 0; i < 2; i++) {
        if ((e = in_read_floats(f, p + lnf[i]->offset, lnf[i]->numel, off, lnf[i]->name)).code)
            return e;
        off += lnf[i]->numel * 4;
    }
    return strata_ok();
}

strata_err strata_llmc_import(const char *path, strata_model **out)
{
    in_file f;
    STRATA_TRY(in_open(&f, path));
    strata_model *m = NULL;
    strata_model_shape shape;
    int Vp = 0;
    strata_err e = llmc_header(&f, path, &shape, &Vp);
    if (!e.code && (e = strata_model_create(&m, &shape)).code) {
        strata_err inner = e;
        e = strata_errorf(inner.code, "%s: %s", path, inner.msg);
    }
    if (!e.code) e = llmc_weights(&f, m, Vp);
    close(f.fd);
    if (e.code) {
        strata_model_free(m);
        return e;
    }
    *out = m;
    return strata_ok();
}

strata_err strata_llmc_export(const char *path, const strata_model *m, int padded_vocab)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    int Vp = padded_vocab > 0 ? padded_vocab : (s->vocab_size + 127) / 128 * 128;
    if (Vp < s->vocab_size)
        return strata_errorf(STRATA_EINPUT, "%s: padded vocab %d is below vocab_size %d", path, Vp,
                             s->vocab_size);
    int32_t h[LLMC_HEADER_INTS] = {
        STRATA_LLMC_MAGIC, STRATA_LLMC_VERSION, s->block_size, s->vocab_size,
        s->n_layer,        s->n_head,           s->n_embd,     Vp};
    to_little_endian(h, LLMC_HEADER_INTS);
    out_file o;
    STRATA_TRY(out_open(&o, path));
    const float *p = strata_model_params((strata_model *)m);
    const strata_tensor *wte = strata_model_find(m, "wte.weight");
    const strata_tensor *wpe = strata_model_find(m, "wpe.weight");
    out_write(&o, h, sizeof h);
    out_write_floats(&o, p + wte->offset, wte->numel);
    out_write_zeros(&o, (size_t)(Vp - s->vocab_size) * (size_t)s->n_embd);
    out_write_floats(&o, p + wpe->offset, wpe->numel);
    for (int k = 0; k < 12; k++)
        for (int l = 0; l < s->n_layer; l++) {
            const strata_tensor *t = block_tensor(m, l, k);
            out_write_floats(&o, p + t->offset, t->numel);
        }
    const strata_tensor *lnf_w = strata_model_find(m, "ln_f.weight");
    const strata_tensor *lnf_b = strata_model_find(m, "ln_f.bias");
    out_write_floats(&o, p + lnf_w->offset, lnf_w->numel);
    out_write_floats(&o, p + lnf_b->offset, lnf_b->numel);
    return out_finish(&o);
}

/* ---- safetensors (one GPT-2 file) ------------------------------------------------
 *
 * The file is parsed and checked by safetensors.c and its tensors mapped by
 * hf.c; what is left here is finding GPT-2's shape in the tensors
 * themselves, as a lone .safetensors file has no config.json. */

/* The index of layer h.<i>. in name, or -1; *rest points after the dot. */
static int layer_of(const char *name, const char **rest)
{
    if (strncmp(name, "h.", 2)) return -1;
    const char *p = name + 2;
    int l = 0, digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 5) l = l * 10 + (*p++ - '0'), digits++;
    if (!digits || *p != '.' || (digits > 1 && name[2] == '0')) return -1;
    *rest = p + 1;
    return l;
}

static int parse_int_text(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < 1 || v > INT_MAX) return 0;
    *out = (int)v;
    return 1;
}

/* n_head from __metadata__, else from config.json beside the file. */
static strata_err find_n_head(const char *path, const strata_safetensors *st, int *n_head)
{
    const char *v = strata_st_metadata(st, "n_head");
    if (v && parse_int_text(v, n_head)) return strata_ok();
    char config[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int n = slash ? snprintf(config, sizeof config, "%.*s/config.json", (int)(slash - path), path)
                  : snprintf(config, sizeof config, "config.json");
    if (n < (int)sizeof config && access(config, R_OK) == 0) {
        json_error_t jerr;
        json_t *root = json_load_file(config, 0, &jerr);
        if (!root)
            return strata_errorf(STRATA_EINPUT, "%s:%d: not JSON: %s", config, jerr.line,
                                 jerr.text);
        json_t *nh = json_object_get(root, "n_head");
        int ok =
            json_is_integer(nh) && json_integer_value(nh) > 0 && json_integer_value(nh) <= INT_MAX;
        if (ok) *n_head = (int)json_integer_value(nh);
        json_decref(root);
        if (ok) return strata_ok();
        return strata_errorf(STRATA_EINPUT, "%s: has no integer \"n_head\"", config);
    }
    return strata_errorf(STRATA_EINPUT,
                         "%s: the number of attention heads is not in the file; HINT: pass "
                         "--n-head N or put Hugging Face's config.json beside it",
                         path);
}

static const char *strip_prefix(const char *name)
{
    return strncmp(name, "transformer.", 12) ? name : name + 12;
}

static const strata_st_tensor *find_gpt2(const strata_safetensors *st, const char *stripped)
{
    char prefixed[96];
    snprintf(prefixed, sizeof prefixed, "transformer.%s", stripped);
    const strata_st_tensor *t = strata_st_find(st, stripped);
    return t ? t : strata_st_find(st, prefixed);
}

/* Names every entry (a GPT-2 tensor, an ignored buffer, or lm_head),
 * refuses strangers and finds the model's shape in wte, wpe and h.N. */
static strata_err st_shape(const char *path, const strata_safetensors *st, int n_head,
                           strata_model_shape *shape)
{
    int max_layer = -1;
    for (size_t i = 0; i < strata_st_count(st); i++) {
        const strata_st_tensor *e = strata_st_at(st, i);
        const char *stripped = strip_prefix(e->name), *rest;
        if (stripped != e->name && strata_st_find(st, stripped))
            return strata_errorf(STRATA_EINPUT, "%s: tensors '%s' and '%s' are the same", path,
                                 stripped, e->name);
        int l = layer_of(stripped, &rest);
        int known = !strcmp(stripped, "wte.weight") || !strcmp(stripped, "wpe.weight") ||
                    !strcmp(stripped, "ln_f.weight") || !strcmp(stripped, "ln_f.bias") ||
                    !strcmp(e->name, "lm_head.weight");
        if (l >= 0) {
            if (!strcmp(rest, "attn.bias") || !strcmp(rest, "attn.masked_bias")) continue;
            for (int k = 0; k < 12; k++) known |= !strcmp(rest, block_names[k]);
            if (known && l >= 1024)
                return strata_errorf(STRATA_EINPUT, "%s: tensor '%s': more than 1024 layers", path,
                                     e->name);
            if (known && l > max_layer) max_layer = l;
        }
        if (!known)
            return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is not part of GPT-2", path,
                                 e->name);
    }
    const strata_st_tensor *wte = find_gpt2(st, "wte.weight"), *wpe = find_gpt2(st, "wpe.weight");
    if (!wte || !wpe)
        return strata_errorf(STRATA_EINPUT, "%s: tensor '%s' is missing", path,
                             wte ? "wpe.weight" : "wte.weight");
    if (wte->ndim != 2 || wpe->ndim != 2 || wte->shape[1] != wpe->shape[1] ||
        wte->shape[0] > INT_MAX || wpe->shape[0] > INT_MAX || wte->shape[1] > INT_MAX)
        return strata_errorf(
            STRATA_EINPUT, "%s: wte.weight and wpe.weight must be 2-D with the same columns", path);
    if (max_layer < 0)
        return strata_errorf(STRATA_EINPUT, "%s: holds no transformer blocks (h.0...)", path);
    STRATA_TRY(n_head > 0 ? strata_ok() : find_n_head(path, st, &n_head));
    *shape = (strata_model_shape){.n_layer = max_layer + 1,
                                  .n_head = n_head,
                                  .n_embd = (int)wte->shape[1],
                                  .block_size = (int)wpe->shape[0],
                                  .vocab_size = (int)wte->shape[0]};
    return strata_ok();
}

strata_err strata_safetensors_import(const char *path, int n_head, strata_model **out)
{
    strata_safetensors *st = NULL;
    STRATA_TRY(strata_st_open(path, &st));
    strata_model *m = NULL;
    strata_model_shape shape;
    strata_err e = st_shape(path, st, n_head, &shape);
    if (!e.code) {
        e = strata_model_create(&m, &shape);
        if (e.code) {
            strata_err inner = e;
            e = strata_errorf(inner.code, "%s: %s", path, inner.msg);
        }
    }
    if (!e.code) e = strata_hf_load_tensors(st, path, m);
    strata_st_close(st);
    if (e.code) {
        strata_model_free(m);
        return e;
    }
    *out = m;
    return strata_ok();
}

strata_err strata_safetensors_export(const char *path, const strata_model *m)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    char num[5][16];
    const int values[5] = {s->n_layer, s->n_head, s->n_embd, s->block_size, s->vocab_size};
    for (int i = 0; i < 5; i++) snprintf(num[i], sizeof num[i], "%d", values[i]);
    const char *const meta[] = {"n_layer",     num[0], "n_head",     num[1], "n_embd", num[2],
                                "n_positions", num[3], "vocab_size", num[4], NULL};
    return strata_hf_write_weights(m, path, STRATA_ST_F32, meta);
}
