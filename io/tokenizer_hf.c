/* tokenizer_hf.c — Hugging Face tokenizer.json, model BPE (see tokenizer.h);
 * this file: small tools, SHA-256, the byte-string table, the state, decoding
 * (the other parts: tokenizer_hf_impl.h).
 *
 * The pipeline is huggingface/tokenizers' own, stage for stage:
 *   1. added tokens are cut out of the raw text (leftmost, then longest);
 *   2. each stretch of text between them (a "segment") is normalised
 *      (NFC, Prepend, Replace, in the file's order);
 *   3. the pre-tokenizers split it into pieces (Split with a regex or a
 *      string, ByteLevel, Digits, Metaspace), each stage splitting every
 *      piece of the stage before on its own;
 *   4. BPE merges each piece: symbols start as the piece's bytes (byte-level
 *      models, whose vocabulary we translate to raw bytes once) or its
 *      characters (SentencePiece-style models, with <0xNN> byte fallback or
 *      the unk token), then the pair of lowest rank is merged, leftmost
 *      first, until no pair has a rank. Finished pieces go to a cache.
 *
 * Long documents arrive in blocks. Everything is buffered here, so a call
 * always consumes its whole block: raw text that might still be the start
 * of an added token, or whose normalisation could change with what follows
 * (we cut only before an ASCII byte, where NFC cannot reach across), waits
 * in `raw`; normalised text whose last two first-stage pieces could still
 * grow waits in `norm`. A segment without any pre-tokenizer is one piece
 * (as in HF: Llama 2's legacy files merge a whole segment as one word), so
 * it is held until the segment ends.
 */
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

/* ---- small tools -------------------------------------------------------------------------- */

int strata_hfi_buf_put(buf *b, const void *s, size_t n)
{
    if (strata_bpe_grow((void **)&b->p, &b->cap, b->n + n + 1, 1)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

static int isxdigit_ascii(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

strata_err strata_hfi_oom(void) { return strata_errorf(STRATA_ENOMEM, "tokenizer: out of memory"); }

int strata_hfi_push_ids(strata_tokens *t, const uint32_t *ids, size_t n)
{
    if (strata_bpe_grow((void **)&t->ids, &t->cap, t->n + n, sizeof *t->ids)) return -1;
    memcpy(t->ids + t->n, ids, n * sizeof *ids);
    t->n += n;
    return 0;
}

/* Length of the UTF-8 character at s[0..n), or 0 when the bytes there are
 * not a valid character (then the byte stands alone). */
size_t strata_hfi_utf8_len(const uint8_t *s, size_t n, int32_t *cp)
{
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate(s, (utf8proc_ssize_t)(n < 4 ? n : 4), &c);
    if (k <= 0) return 0;
    if (cp) *cp = c;
    return (size_t)k;
}

/* ---- SHA-256 (FIPS 180-4), for the tokenizer's identity --------------------------------- */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

void strata_hfi_sha256_hex(const uint8_t *s, size_t n, char hex[65])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t i = 0;
    for (; i + 64 <= n; i += 64) sha_block(h, s + i);
    uint8_t tail[128] = {0};
    size_t r = n - i;
    memcpy(tail, s + i, r);
    tail[r] = 0x80;
    size_t tn = r + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (int j = 0; j < 8; j++) tail[tn - 1 - j] = (uint8_t)(bits >> (8 * j));
    sha_block(h, tail);
    if (tn == 128) sha_block(h, tail + 64);
    for (int j = 0; j < 8; j++) snprintf(hex + 8 * j, 9, "%08x", h[j]);
}

/* ---- a hash table from byte strings to ids ------------------------------------------------ */

uint64_t strata_hfi_hash_bytes(const uint8_t *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h | 1;
}

int strata_hfi_stab_init(stab *t, size_t cap)
{
    memset(t, 0, sizeof *t);
    t->slots = calloc(cap, sizeof *t->slots);
    t->cap = cap;
    return t->slots ? 0 : -1;
}

void strata_hfi_stab_free(stab *t)
{
    free(t->slots);
    free(t->keys.p);
    memset(t, 0, sizeof *t);
}

stab_slot *strata_hfi_stab_find(const stab *t, const void *key, size_t len, uint64_t h)
{
    size_t mask = t->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        stab_slot *s = &t->slots[i];
        if (!s->hash) return NULL;
        if (s->hash == h && s->len == len && !memcmp(t->keys.p + s->off, key, len)) return s;
    }
}

int strata_hfi_stab_get(const stab *t, const void *key, size_t len, uint32_t *v)
{
    stab_slot *s = strata_hfi_stab_find(t, key, len, strata_hfi_hash_bytes(key, len));
    if (s) *v = s->v0;
    return s != NULL;
}

/* Inserts a key known to be absent. */
stab_slot *strata_hfi_stab_add(stab *t, const void *key, size_t len, uint64_t h)
{
    if (2 * (t->n + 1) > t->cap) {
        size_t cap = 2 * t->cap;
        stab_slot *slots = calloc(cap, sizeof *slots);
        if (!slots) return NULL;
        for (size_t i = 0; i < t->cap; i++) {
            if (!t->slots[i].hash) continue;
            size_t j = (size_t)t->slots[i].hash & (cap - 1);
            while (slots[j].hash) j = (j + 1) & (cap - 1);
            slots[j] = t->slots[i];
        }
        free(t->slots);
        t->slots = slots;
        t->cap = cap;
    }
    if (t->keys.n + len >= UINT32_MAX) return NULL;
    size_t off = t->keys.n;
    if (strata_hfi_buf_put(&t->keys, key, len)) return NULL;
    size_t mask = t->cap - 1, i = (size_t)h & mask;
    while (t->slots[i].hash) i = (i + 1) & mask;
    stab_slot *s = &t->slots[i];
    s->hash = h;
    s->off = (uint32_t)off;
    s->len = (uint32_t)len;
    t->n++;
    return s;
}

/* Sets key -> v (replacing an old value). */
int strata_hfi_stab_set(stab *t, const void *key, size_t len, uint32_t v)
{
    uint64_t h = strata_hfi_hash_bytes(key, len);
    stab_slot *s = strata_hfi_stab_find(t, key, len, h);
    if (!s) s = strata_hfi_stab_add(t, key, len, h);
    if (!s) return -1;
    s->v0 = v;
    return 0;
}

int strata_hf_vocab_size(const strata_hf *h) { return h->vocab_size; }
int strata_hf_bos(const strata_hf *h) { return h->bos; }
int strata_hf_eos(const strata_hf *h) { return h->eos; }
const char *strata_hf_hash(const strata_hf *h) { return h->hash; }

void strata_hf_doc_tokens(const strata_hf *h, const uint32_t **lead, size_t *n_lead,
                          const uint32_t **tail, size_t *n_tail)
{
    *lead = h->lead;
    *n_lead = h->n_lead;
    *tail = h->tail;
    *n_tail = h->n_tail;
}

void strata_hf_free(strata_hf *h)
{
    if (!h) return;
    if (h->tstr)
        for (int i = 0; i < h->vocab_size; i++) free(h->tstr[i]);
    free(h->tstr);
    free(h->tstr_len);
    free(h->surface);
    free(h->surf_off);
    free(h->surf_len);
    strata_hfi_stab_free(&h->vocab);
    free(h->merges);
    free(h->merge_a);
    free(h->merge_b);
    free(h->merge_out);
    for (size_t i = 0; i < h->n_added; i++) free(h->added[i].s);
    free(h->added);
    strata_hfi_stab_free(&h->added_tab);
    for (int i = 0; i < h->n_norm; i++) free(h->norm[i].a), free(h->norm[i].b);
    for (int i = 0; i < h->n_pre; i++) {
        pcre2_match_data_free(h->pre[i].md);
        pcre2_code_free(h->pre[i].re);
        free(h->pre[i].lit);
        free(h->lvl[i].p);
    }
    for (int i = 0; i <= MAX_PRE; i++) free(h->spans[i]);
    free(h->parts);
    for (int i = 0; i < h->n_dec; i++) free(h->dec[i].a), free(h->dec[i].b);
    pcre2_match_context_free(h->mctx);
    pcre2_jit_stack_free(h->jit_stack);
    free(h->raw.p);
    free(h->norm_buf.p);
    free(h->scratch[0].p);
    free(h->scratch[1].p);
    strata_hfi_stab_free(&h->cache);
    free(h->cache_ids);
    free(h->sym);
    free(h->prev);
    free(h->next);
    free(h->heap);
    free(h->word);
    free(h->path);
    free(h);
}

/* ---- decoding ---------------------------------------------------------------------------- */

typedef struct dlist {
    buf *item;
    size_t n, cap;
} dlist;

static void dlist_free(dlist *l)
{
    for (size_t i = 0; i < l->cap; i++) free(l->item[i].p);
    free(l->item);
    memset(l, 0, sizeof *l);
}

/* Replaces every a in b->p with c (b stays owned by the list). */
int strata_hfi_replace_all(buf *b, const char *a, size_t alen, const char *c, size_t clen)
{
    if (!b->n || !memmem(b->p, b->n, a, alen)) return 0;
    buf o = {0};
    size_t i = 0;
    while (i < b->n) {
        const uint8_t *hit = memmem(b->p + i, b->n - i, a, alen);
        size_t end = hit ? (size_t)(hit - b->p) : b->n;
        if (strata_hfi_buf_put(&o, b->p + i, end - i)) return -1;
        if (!hit) break;
        if (strata_hfi_buf_put(&o, c, clen)) return -1;
        i = end + alen;
    }
    free(b->p);
    *b = o;
    return 0;
}

/* The decoder chain over a list of token strings. single: the surface of
 * one token (no Strip, no first-token rule of Metaspace). */
static int run_decoders(const strata_hf *h, dlist *l, int single, const int u2b[324])
{
    for (int s = 0; s < h->n_dec; s++) {
        const dec_step *d = &h->dec[s];
        for (size_t i = 0; i < l->n; i++) {
            buf *b = &l->item[i];
            if (d->type == DC_BYTELEVEL) {
                uint8_t *o = malloc(b->n + 1);
                if (!o) return -1;
                long nb = strata_hfi_unbyte((const char *)b->p, b->n, u2b, o);
                if (nb >= 0) {
                    free(b->p);
                    b->p = o;
                    b->n = (size_t)nb;
                    b->cap = b->n + 1;
                } else {
                    free(o);
                }
            } else if (d->type == DC_REPLACE) {
                if (strata_hfi_replace_all(b, d->a, d->alen, d->b, d->blen)) return -1;
            } else if (d->type == DC_BYTEFALLBACK) {
                unsigned v;
                char hex[3] = {0};
                if (b->n == 6 && !memcmp(b->p, "<0x", 3) && b->p[5] == '>') {
                    memcpy(hex, b->p + 3, 2);
                    char *end;
                    v = (unsigned)strtoul(hex, &end, 16);
                    if (!*end && isxdigit_ascii(hex[0]) && isxdigit_ascii(hex[1])) {
                        b->p[0] = (uint8_t)v;
                        b->n = 1;
                    }
                }
            } else if (d->type == DC_STRIP && !single) {
                size_t k = 0, st = 0;
                while ((int)k < d->start && st + d->alen <= b->n &&
                       !memcmp(b->p + st, d->a, d->alen))
                    st += d->alen, k++;
                size_t en = b->n;
                k = 0;
                while ((int)k < d->stop && en >= st + d->alen &&
                       !memcmp(b->p + en - d->alen, d->a, d->alen))
                    en -= d->alen, k++;
                memmove(b->p, b->p + st, en - st);
                b->n = en - st;
            } else if (d->type == DC_METASPACE) {
                if (strata_hfi_replace_all(b, d->a, d->alen, " ", 1)) return -1;
                if (!single && i == 0 && d->scheme != PS_NEVER && b->n && b->p[0] == ' ') {
                    memmove(b->p, b->p + 1, b->n - 1);
                    b->n--;
                }
            }
        }
        if (d->type == DC_FUSE && l->n > 1) {
            for (size_t i = 1; i < l->n; i++) {
                if (strata_hfi_buf_put(&l->item[0], l->item[i].p, l->item[i].n)) return -1;
                l->item[i].n = 0;
            }
            l->n = 1;
        }
    }
    return 0;
}

/* The token strings of ids[0..n) through the decoder; no decoder joins
 * them with spaces, as the Rust crate does. */
static strata_err decode_list(const strata_hf *h, const uint32_t *ids, size_t n, int single,
                              buf *out)
{
    dlist l = {0};
    l.item = calloc(n ? n : 1, sizeof *l.item);
    if (!l.item) return strata_hfi_oom();
    l.cap = n;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= (uint32_t)h->vocab_size || !h->tstr[ids[i]]) {
            dlist_free(&l);
            return strata_errorf(STRATA_EINPUT,
                                 "decode: token %zu is id %u, which %s tokenizer %s does not have",
                                 i, ids[i], "the", h->path);
        }
        if (strata_hfi_buf_put(&l.item[i], h->tstr[ids[i]], h->tstr_len[ids[i]])) {
            dlist_free(&l);
            return strata_hfi_oom();
        }
    }
    l.n = n;
    if (run_decoders(h, &l, single, h->u2b)) {
        dlist_free(&l);
        return strata_hfi_oom();
    }
    for (size_t i = 0; i < l.n; i++) {
        if ((!h->has_decoder && i && strata_hfi_buf_put(out, " ", 1)) ||
            strata_hfi_buf_put(out, l.item[i].p, l.item[i].n)) {
            dlist_free(&l);
            return strata_hfi_oom();
        }
    }
    dlist_free(&l);
    return strata_ok();
}

strata_err strata_hf_decode(const strata_hf *h, const uint32_t *ids, size_t n, uint8_t **out,
                            size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    buf b = {0};
    strata_err e = decode_list(h, ids, n, 0, &b);
    if (e.code) {
        free(b.p);
        return e;
    }
    if (!b.p && !(b.p = malloc(1))) return strata_hfi_oom();
    b.p[b.n] = 0;
    *out = b.p;
    *out_len = b.n;
    return strata_ok();
}

const uint8_t *strata_hf_token_bytes(const strata_hf *h, uint32_t id, size_t *len)
{
    if (id >= (uint32_t)h->vocab_size || !h->tstr[id]) return NULL;
    *len = h->surf_len[id];
    return h->surface + h->surf_off[id];
}

strata_err strata_hfi_make_surfaces(strata_hf *h)
{
    h->surf_off = calloc((size_t)h->vocab_size, sizeof *h->surf_off);
    h->surf_len = calloc((size_t)h->vocab_size, sizeof *h->surf_len);
    if (!h->surf_off || !h->surf_len) return strata_hfi_oom();
    buf all = {0};
    /* the usual byte-level decoder alone: no list to build */
    int just_bytes = h->n_dec == 1 && h->dec[0].type == DC_BYTELEVEL;
    for (int id = 0; id < h->vocab_size; id++) {
        if (!h->tstr[id]) continue;
        size_t before = all.n;
        uint32_t u = (uint32_t)id;
        if (just_bytes) {
            if (strata_bpe_grow((void **)&all.p, &all.cap, all.n + h->tstr_len[id] + 1, 1))
                return strata_hfi_oom();
            long nb = strata_hfi_unbyte(h->tstr[id], h->tstr_len[id], h->u2b, all.p + all.n);
            if (nb >= 0) {
                all.n += (size_t)nb;
            } else {
                memcpy(all.p + all.n, h->tstr[id], h->tstr_len[id]);
                all.n += h->tstr_len[id];
            }
        } else {
            strata_err e = decode_list(h, &u, 1, 1, &all);
            if (e.code) {
                free(all.p);
                return e;
            }
        }
        h->surf_off[id] = (uint32_t)before;
        h->surf_len[id] = (uint32_t)(all.n - before);
    }
    h->surface = all.p ? all.p : malloc(1);
    return h->surface ? strata_ok() : strata_hfi_oom();
}
