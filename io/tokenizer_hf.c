/* tokenizer_hf.c — Hugging Face tokenizer.json, model BPE (see tokenizer.h).
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

#include "tokenizer_hf.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "bpe.h"

/* ---- small tools -------------------------------------------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static int buf_put(buf *b, const void *s, size_t n)
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

static strata_err oom(void) { return strata_errorf(STRATA_EFAIL, "tokenizer: out of memory"); }

static int push_ids(strata_tokens *t, const uint32_t *ids, size_t n)
{
    if (strata_bpe_grow((void **)&t->ids, &t->cap, t->n + n, sizeof *t->ids)) return -1;
    memcpy(t->ids + t->n, ids, n * sizeof *ids);
    t->n += n;
    return 0;
}

/* Length of the UTF-8 character at s[0..n), or 0 when the bytes there are
 * not a valid character (then the byte stands alone). */
static size_t utf8_len(const uint8_t *s, size_t n, int32_t *cp)
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

static void sha256_hex(const uint8_t *s, size_t n, char hex[65])
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

typedef struct stab_slot {
    uint64_t hash; /* 0 = empty */
    uint32_t off, len;
    uint32_t v0, v1;
} stab_slot;

typedef struct stab {
    stab_slot *slots;
    size_t cap, n;
    buf keys;
} stab;

static uint64_t hash_bytes(const uint8_t *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h | 1;
}

static int stab_init(stab *t, size_t cap)
{
    memset(t, 0, sizeof *t);
    t->slots = calloc(cap, sizeof *t->slots);
    t->cap = cap;
    return t->slots ? 0 : -1;
}

static void stab_free(stab *t)
{
    free(t->slots);
    free(t->keys.p);
    memset(t, 0, sizeof *t);
}

static stab_slot *stab_find(const stab *t, const void *key, size_t len, uint64_t h)
{
    size_t mask = t->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        stab_slot *s = &t->slots[i];
        if (!s->hash) return NULL;
        if (s->hash == h && s->len == len && !memcmp(t->keys.p + s->off, key, len)) return s;
    }
}

static int stab_get(const stab *t, const void *key, size_t len, uint32_t *v)
{
    stab_slot *s = stab_find(t, key, len, hash_bytes(key, len));
    if (s) *v = s->v0;
    return s != NULL;
}

/* Inserts a key known to be absent. */
static stab_slot *stab_add(stab *t, const void *key, size_t len, uint64_t h)
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
    if (buf_put(&t->keys, key, len)) return NULL;
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
static int stab_set(stab *t, const void *key, size_t len, uint32_t v)
{
    uint64_t h = hash_bytes(key, len);
    stab_slot *s = stab_find(t, key, len, h);
    if (!s) s = stab_add(t, key, len, h);
    if (!s) return -1;
    s->v0 = v;
    return 0;
}

/* ---- the tokenizer's parts ------------------------------------------------------------------ */

enum { NM_NFC, NM_PREPEND, NM_REPLACE };
enum { PT_SPLIT, PT_BYTELEVEL, PT_DIGITS, PT_METASPACE };
enum { SB_REMOVED, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS };
enum { PS_ALWAYS, PS_FIRST, PS_NEVER };
enum { DC_BYTELEVEL, DC_REPLACE, DC_BYTEFALLBACK, DC_FUSE, DC_STRIP, DC_METASPACE };

typedef struct norm_step {
    int type;
    char *a, *b; /* Prepend: a; Replace: a -> b */
    size_t alen, blen;
} norm_step;

typedef struct pre_step {
    int type;
    int behavior, invert;
    pcre2_code *re; /* Split (regex) and ByteLevel (use_regex) */
    pcre2_match_data *md;
    char *lit; /* Split (string) */
    size_t lit_len;
    int add_prefix_space; /* ByteLevel */
    int individual;       /* Digits */
    int scheme, split;    /* Metaspace */
    char rep[8];          /* Metaspace replacement, UTF-8 */
    size_t rep_len;
} pre_step;

typedef struct dec_step {
    int type;
    char *a, *b;
    size_t alen, blen;
    int start, stop, scheme;
} dec_step;

typedef struct added_tok {
    char *s;
    size_t len;
    uint32_t id;
    int special;
} added_tok;

typedef struct span {
    size_t off, len;
    int match;
} span;

#define MAX_NORM          16
#define MAX_PRE           16
#define MAX_DEC           16
#define MAX_BOUND         4
#define CACHE_MAX_PIECE   256
#define CACHE_MAX_ENTRIES (1u << 19)

typedef struct merge_slot {
    uint64_t pair; /* (a << 32) | b, UINT64_MAX = empty */
    int32_t rank;
} merge_slot;

struct strata_hf {
    char *path;
    char hash[65];
    int vocab_size;
    int byte_level; /* pieces are bytes (a ByteLevel pre-tokenizer is present) */
    int u2b[324];   /* GPT-2's byte-standing characters -> bytes */

    char **tstr; /* id -> token string of the file (UTF-8), NULL for a gap */
    uint32_t *tstr_len;
    uint8_t *surface; /* id -> bytes of the token alone, as the decoder makes them */
    uint32_t *surf_off, *surf_len;

    stab vocab;            /* model input alphabet (raw bytes when byte-level) -> id */
    uint32_t byte_id[256]; /* byte-level: the id of each single byte */
    int32_t fallback[256]; /* <0xNN> ids, -1 if absent */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk;

    merge_slot *merges;
    size_t merges_cap;
    uint32_t *merge_a, *merge_b, *merge_out;
    int32_t n_merges;

    added_tok *added;
    size_t n_added, added_cap;
    uint8_t added_first[256]; /* 1 when some added token starts with this byte */
    size_t added_max;
    stab added_tab; /* content -> index */

    norm_step norm[MAX_NORM];
    int n_norm, has_nfc;
    pre_step pre[MAX_PRE];
    int n_pre;
    /* No pre-tokenizer, but no token holds U+2581 after another character:
     * cutting before each "▁" that follows something else changes nothing,
     * so segments are merged word by word (and cached) instead of whole. */
    int cut_at_metaspace;
    dec_step dec[MAX_DEC];
    int n_dec, has_decoder;

    uint32_t lead[MAX_BOUND], tail[MAX_BOUND];
    size_t n_lead, n_tail;
    int bos, eos;

    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;

    /* streaming state */
    buf raw, norm_buf, scratch[2];
    int seg_fresh;        /* nothing of the current segment normalised yet */
    int seg_at_doc_start; /* the current segment starts at the document's first byte */
    int norm_at_doc_start;
    buf lvl[MAX_PRE]; /* per pre-tokenizer stage: edited piece text */
    span *spans[MAX_PRE + 1];
    size_t spans_cap[MAX_PRE + 1];
    span *parts; /* split_spans' scratch */
    size_t parts_cap;
    int pcre_rc; /* PCRE2's code of a failed match */

    /* BPE */
    stab cache;
    uint32_t *cache_ids;
    size_t cache_ids_n, cache_ids_cap;
    uint32_t *sym;
    int32_t *prev, *next;
    size_t scratch_cap;
    uint64_t *heap;
    size_t heap_n, heap_cap;
    uint32_t *word;
    size_t word_cap;
};

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
    stab_free(&h->vocab);
    free(h->merges);
    free(h->merge_a);
    free(h->merge_b);
    free(h->merge_out);
    for (size_t i = 0; i < h->n_added; i++) free(h->added[i].s);
    free(h->added);
    stab_free(&h->added_tab);
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
    stab_free(&h->cache);
    free(h->cache_ids);
    free(h->sym);
    free(h->prev);
    free(h->next);
    free(h->heap);
    free(h->word);
    free(h->path);
    free(h);
}

/* ---- loading: errors name the file and the JSON path ----------------------------------------- */

static strata_err bad(const strata_hf *h, const char *jpath, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static strata_err bad(const strata_hf *h, const char *jpath, const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return strata_errorf(STRATA_EINPUT, "%s: %s: %s", h->path, jpath, msg);
}

/* A JSON value that is absent or null. */
static int is_none(const json_t *v) { return !v || json_is_null(v); }

/* Reads an optional boolean member; an error for any other type. */
static strata_err get_bool(const strata_hf *h, const json_t *o, const char *jpath, const char *key,
                           int dflt, int *out)
{
    json_t *v = json_object_get(o, key);
    *out = dflt;
    if (is_none(v)) return strata_ok();
    if (!json_is_boolean(v)) return bad(h, jpath, "\"%s\" must be true or false", key);
    *out = json_is_true(v);
    return strata_ok();
}

static strata_err get_str(const strata_hf *h, const json_t *o, const char *jpath, const char *key,
                          const char **out, size_t *len)
{
    *out = "";
    *len = 0;
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) return bad(h, jpath, "\"%s\" must be a string", key);
    *out = json_string_value(v);
    *len = json_string_length(v);
    return strata_ok();
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* HF's patterns are written for Oniguruma; PCRE2 reads the same syntax but
 * a few escapes mean other things. Rewritten here so PCRE2 matches as the
 * Rust crate does: \s and \S are Unicode White_Space (PCRE2's \s also takes
 * U+180E and JavaScript's takes U+FEFF, White_Space has neither), \w and \W
 * are Oniguruma's word class (letters, marks, decimal digits, connector
 * punctuation), \h and \H are hex digits, \d is \p{Nd}. */
#define WS_CLASS                                                                                   \
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"           \
    "\\x{202F}\\x{205F}\\x{3000}"
#define WORD_CLASS "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"

static int translate_pattern(const char *p, size_t n, buf *out, char *why, size_t why_len)
{
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            const char *rep = NULL, *neg = NULL;
            if (e == 's') rep = WS_CLASS;
            if (e == 'S') neg = WS_CLASS;
            if (e == 'w') rep = WORD_CLASS;
            if (e == 'W') neg = WORD_CLASS;
            if (e == 'h') rep = "0-9a-fA-F";
            if (e == 'H') neg = "0-9a-fA-F";
            if (e == 'd') rep = "\\p{Nd}";
            if (e == 'D') neg = "\\p{Nd}";
            if (rep || neg) {
                if (in_class && neg) {
                    snprintf(why, why_len, "\\%c inside a character class is not supported", e);
                    return -1;
                }
                int r = 0;
                if (!in_class) r |= buf_put(out, neg ? "[^" : "[", neg ? 2 : 1);
                const char *body = rep ? rep : neg;
                r |= buf_put(out, body, strlen(body));
                if (!in_class) r |= buf_put(out, "]", 1);
                if (r) return -2;
                i++;
                continue;
            }
            if (buf_put(out, p + i, 2)) return -2;
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            if (buf_put(out, p + i, 1)) return -2;
            /* a ']' right after '[' or '[^' is a literal */
            if (i + 1 < n && p[i + 1] == '^') {
                if (buf_put(out, "^", 1)) return -2;
                i++;
            }
            if (i + 1 < n && p[i + 1] == ']') {
                if (buf_put(out, "\\]", 2)) return -2;
                i++;
            }
            continue;
        }
        if (c == '[' && in_class && i + 1 < n && p[i + 1] == ':') {
            /* a POSIX class [:alpha:] inside a class: copy through */
            const char *end = memchr(p + i + 2, ']', n - i - 2);
            if (end) {
                if (buf_put(out, p + i, (size_t)(end - (p + i)) + 1)) return -2;
                i = (size_t)(end - p);
                continue;
            }
        }
        if (c == '[' && in_class) {
            snprintf(why, why_len, "nested character classes are not supported");
            return -1;
        }
        if (c == ']' && in_class) in_class = 0;
        if (buf_put(out, p + i, 1)) return -2;
    }
    return 0;
}

static strata_err compile_regex(strata_hf *h, const char *jpath, const char *pat, size_t n,
                                pre_step *st)
{
    buf t = {0};
    char why[200];
    int r = translate_pattern(pat, n, &t, why, sizeof why);
    if (r == -2) {
        free(t.p);
        return oom();
    }
    if (r == -1) {
        free(t.p);
        return bad(h, jpath, "regex \"%.100s\": %s", pat, why);
    }
    int errcode;
    PCRE2_SIZE erroff;
    st->re =
        pcre2_compile((PCRE2_SPTR)(t.p ? t.p : (uint8_t *)""), t.n,
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &errcode, &erroff, NULL);
    free(t.p);
    if (!st->re) {
        char msg[256];
        pcre2_get_error_message(errcode, (PCRE2_UCHAR *)msg, sizeof msg);
        return bad(h, jpath, "regex \"%.100s\" does not compile: %s", pat, msg);
    }
    /* Without JIT (an unsupported CPU) pcre2_match interprets: slower, same result. */
    if (pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE) == 0 && !h->mctx) {
        h->jit_stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
        h->mctx = pcre2_match_context_create(NULL);
        if (!h->jit_stack || !h->mctx) return oom();
        pcre2_jit_stack_assign(h->mctx, NULL, h->jit_stack);
    }
    st->md = pcre2_match_data_create_from_pattern(st->re, NULL);
    return st->md ? strata_ok() : oom();
}

/* The pattern of a Split / Replace: {"String": s} or {"Regex": r}. */
static strata_err get_pattern(const strata_hf *h, const json_t *o, const char *jpath,
                              const char **s, size_t *len, int *is_regex)
{
    *s = "";
    *len = 0;
    *is_regex = 0;
    json_t *p = json_object_get(o, "pattern");
    json_t *str = json_object_get(p, "String"), *re = json_object_get(p, "Regex");
    if (!json_is_object(p) || (!json_is_string(str) && !json_is_string(re)))
        return bad(h, jpath, "\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
    json_t *v = json_is_string(str) ? str : re;
    *is_regex = !json_is_string(str);
    *s = json_string_value(v);
    *len = json_string_length(v);
    return strata_ok();
}

static strata_err add_normalizer(strata_hf *h, const json_t *n, const char *jpath, int depth)
{
    if (is_none(n)) return strata_ok();
    json_t *type = json_object_get(n, "type");
    if (!json_is_object(n) || !json_is_string(type))
        return bad(h, jpath, "a normalizer must be an object with a \"type\"");
    const char *t = json_string_value(type);
    char sub[256];
    if (!strcmp(t, "Sequence")) {
        json_t *arr = json_object_get(n, "normalizers");
        if (!json_is_array(arr) || depth > 4)
            return bad(h, jpath, "Sequence needs a \"normalizers\" array");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", jpath, i);
            STRATA_TRY(add_normalizer(h, v, sub, depth + 1));
        }
        return strata_ok();
    }
    if (h->n_norm == MAX_NORM) return bad(h, jpath, "more than %d normalizers", MAX_NORM);
    norm_step *st = &h->norm[h->n_norm];
    memset(st, 0, sizeof *st);
    if (!strcmp(t, "NFC")) {
        st->type = NM_NFC;
        h->has_nfc = 1;
    } else if (!strcmp(t, "Prepend")) {
        const char *s;
        size_t len;
        STRATA_TRY(get_str(h, n, jpath, "prepend", &s, &len));
        st->type = NM_PREPEND;
        st->a = dup_n(s, len);
        st->alen = len;
        if (!st->a) return oom();
    } else if (!strcmp(t, "Replace")) {
        const char *s, *c;
        size_t len, clen;
        int is_regex;
        STRATA_TRY(get_pattern(h, n, jpath, &s, &len, &is_regex));
        if (is_regex) return bad(h, jpath, "Replace with a Regex pattern is not supported");
        if (!len) return bad(h, jpath, "Replace with an empty pattern");
        STRATA_TRY(get_str(h, n, jpath, "content", &c, &clen));
        st->type = NM_REPLACE;
        st->a = dup_n(s, len);
        st->b = dup_n(c, clen);
        st->alen = len;
        st->blen = clen;
        if (!st->a || !st->b) return oom();
    } else {
        return bad(h, jpath,
                   "normalizer type \"%.60s\" is not supported (NFC, Prepend, Replace, "
                   "Sequence are)",
                   t);
    }
    h->n_norm++;
    return strata_ok();
}

static strata_err get_scheme(const strata_hf *h, const json_t *o, const char *jpath, int *scheme)
{
    json_t *ps = json_object_get(o, "prepend_scheme");
    if (json_is_string(ps)) {
        const char *s = json_string_value(ps);
        if (!strcmp(s, "always"))
            *scheme = PS_ALWAYS;
        else if (!strcmp(s, "first"))
            *scheme = PS_FIRST;
        else if (!strcmp(s, "never"))
            *scheme = PS_NEVER;
        else
            return bad(h, jpath, "prepend_scheme \"%.40s\" is not always, first or never", s);
        return strata_ok();
    }
    if (!is_none(ps)) return bad(h, jpath, "prepend_scheme must be a string");
    int aps;
    STRATA_TRY(get_bool(h, o, jpath, "add_prefix_space", 1, &aps)); /* older files */
    *scheme = aps ? PS_ALWAYS : PS_NEVER;
    return strata_ok();
}

static strata_err get_replacement(const strata_hf *h, const json_t *o, const char *jpath,
                                  char rep[8], size_t *rep_len)
{
    const char *s;
    size_t len;
    STRATA_TRY(get_str(h, o, jpath, "replacement", &s, &len));
    if (!len || len > 4 || utf8_len((const uint8_t *)s, len, NULL) != len)
        return bad(h, jpath, "replacement must be one character");
    memcpy(rep, s, len);
    *rep_len = len;
    return strata_ok();
}

static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static strata_err add_pretokenizer(strata_hf *h, const json_t *n, const char *jpath, int depth)
{
    if (is_none(n)) return strata_ok();
    json_t *type = json_object_get(n, "type");
    if (!json_is_object(n) || !json_is_string(type))
        return bad(h, jpath, "a pre-tokenizer must be an object with a \"type\"");
    const char *t = json_string_value(type);
    char sub[256];
    if (!strcmp(t, "Sequence")) {
        json_t *arr = json_object_get(n, "pretokenizers");
        if (!json_is_array(arr) || depth > 4)
            return bad(h, jpath, "Sequence needs a \"pretokenizers\" array");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", jpath, i);
            STRATA_TRY(add_pretokenizer(h, v, sub, depth + 1));
        }
        return strata_ok();
    }
    if (h->n_pre == MAX_PRE) return bad(h, jpath, "more than %d pre-tokenizers", MAX_PRE);
    pre_step *st = &h->pre[h->n_pre];
    memset(st, 0, sizeof *st);
    if (!strcmp(t, "Split")) {
        const char *s, *b;
        size_t len, blen;
        int is_regex;
        STRATA_TRY(get_pattern(h, n, jpath, &s, &len, &is_regex));
        STRATA_TRY(get_str(h, n, jpath, "behavior", &b, &blen));
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        st->behavior = -1;
        for (int i = 0; i < 5; i++)
            if (!strcmp(b, names[i])) st->behavior = i;
        if (st->behavior < 0) return bad(h, jpath, "Split behavior \"%.40s\" is unknown", b);
        STRATA_TRY(get_bool(h, n, jpath, "invert", 0, &st->invert));
        st->type = PT_SPLIT;
        if (is_regex) {
            STRATA_TRY(compile_regex(h, jpath, s, len, st));
        } else {
            if (!len) return bad(h, jpath, "Split with an empty pattern");
            st->lit = dup_n(s, len);
            st->lit_len = len;
            if (!st->lit) return oom();
        }
    } else if (!strcmp(t, "ByteLevel")) {
        int use_regex;
        STRATA_TRY(get_bool(h, n, jpath, "add_prefix_space", 1, &st->add_prefix_space));
        STRATA_TRY(get_bool(h, n, jpath, "use_regex", 1, &use_regex));
        st->type = PT_BYTELEVEL;
        st->behavior = SB_ISOLATED;
        if (use_regex) STRATA_TRY(compile_regex(h, jpath, gpt2_pattern, strlen(gpt2_pattern), st));
        h->byte_level = 1;
    } else if (!strcmp(t, "Digits")) {
        STRATA_TRY(get_bool(h, n, jpath, "individual_digits", 0, &st->individual));
        st->type = PT_DIGITS;
        st->behavior = st->individual ? SB_ISOLATED : SB_CONTIGUOUS;
    } else if (!strcmp(t, "Metaspace")) {
        st->type = PT_METASPACE;
        STRATA_TRY(get_replacement(h, n, jpath, st->rep, &st->rep_len));
        STRATA_TRY(get_scheme(h, n, jpath, &st->scheme));
        STRATA_TRY(get_bool(h, n, jpath, "split", 1, &st->split));
        st->behavior = SB_MERGED_NEXT;
    } else {
        return bad(h, jpath,
                   "pre-tokenizer type \"%.60s\" is not supported (Split, ByteLevel, Digits, "
                   "Metaspace, Sequence are)",
                   t);
    }
    h->n_pre++;
    return strata_ok();
}

static strata_err add_decoder(strata_hf *h, const json_t *n, const char *jpath, int depth)
{
    if (is_none(n)) return strata_ok();
    json_t *type = json_object_get(n, "type");
    if (!json_is_object(n) || !json_is_string(type))
        return bad(h, jpath, "a decoder must be an object with a \"type\"");
    const char *t = json_string_value(type);
    char sub[256];
    h->has_decoder = 1;
    if (!strcmp(t, "Sequence")) {
        json_t *arr = json_object_get(n, "decoders");
        if (!json_is_array(arr) || depth > 4)
            return bad(h, jpath, "Sequence needs a \"decoders\" array");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            snprintf(sub, sizeof sub, "%s.decoders[%zu]", jpath, i);
            STRATA_TRY(add_decoder(h, v, sub, depth + 1));
        }
        return strata_ok();
    }
    if (h->n_dec == MAX_DEC) return bad(h, jpath, "more than %d decoders", MAX_DEC);
    dec_step *st = &h->dec[h->n_dec];
    memset(st, 0, sizeof *st);
    if (!strcmp(t, "ByteLevel")) {
        st->type = DC_BYTELEVEL;
    } else if (!strcmp(t, "ByteFallback")) {
        st->type = DC_BYTEFALLBACK;
    } else if (!strcmp(t, "Fuse")) {
        st->type = DC_FUSE;
    } else if (!strcmp(t, "Replace")) {
        const char *s, *c;
        size_t len, clen;
        int is_regex;
        STRATA_TRY(get_pattern(h, n, jpath, &s, &len, &is_regex));
        if (is_regex) return bad(h, jpath, "Replace with a Regex pattern is not supported");
        if (!len) return bad(h, jpath, "Replace with an empty pattern");
        STRATA_TRY(get_str(h, n, jpath, "content", &c, &clen));
        st->type = DC_REPLACE;
        st->a = dup_n(s, len);
        st->b = dup_n(c, clen);
        st->alen = len;
        st->blen = clen;
        if (!st->a || !st->b) return oom();
    } else if (!strcmp(t, "Strip")) {
        const char *c;
        size_t clen;
        STRATA_TRY(get_str(h, n, jpath, "content", &c, &clen));
        json_t *a = json_object_get(n, "start"), *b = json_object_get(n, "stop");
        if (!clen || !json_is_integer(a) || !json_is_integer(b) || json_integer_value(a) < 0 ||
            json_integer_value(b) < 0 || json_integer_value(a) > 1000 ||
            json_integer_value(b) > 1000)
            return bad(h, jpath, "Strip needs \"content\" and counts \"start\", \"stop\" 0..1000");
        st->type = DC_STRIP;
        st->a = dup_n(c, clen);
        st->alen = clen;
        st->start = (int)json_integer_value(a);
        st->stop = (int)json_integer_value(b);
        if (!st->a) return oom();
    } else if (!strcmp(t, "Metaspace")) {
        char rep[8];
        size_t rl;
        STRATA_TRY(get_replacement(h, n, jpath, rep, &rl));
        STRATA_TRY(get_scheme(h, n, jpath, &st->scheme));
        st->type = DC_METASPACE;
        st->a = dup_n(rep, rl);
        st->alen = rl;
        if (!st->a) return oom();
    } else {
        return bad(h, jpath,
                   "decoder type \"%.60s\" is not supported (ByteLevel, ByteFallback, Fuse, "
                   "Replace, Strip, Metaspace, Sequence are)",
                   t);
    }
    h->n_dec++;
    return strata_ok();
}

/* A token string of a byte-level vocabulary as raw bytes; -1 when some
 * character stands for no byte. out has room for len bytes. */
static long unbyte(const char *s, size_t len, const int u2b[324], uint8_t *out)
{
    long n = 0;
    for (size_t i = 0; i < len;) {
        int32_t cp;
        size_t k = utf8_len((const uint8_t *)s + i, len - i, &cp);
        if (!k || cp >= 324 || u2b[cp] < 0) return -1;
        out[n++] = (uint8_t)u2b[cp];
        i += k;
    }
    return n;
}

static uint64_t pair_key(uint32_t a, uint32_t b) { return ((uint64_t)a << 32) | b; }

static int32_t merge_rank(const strata_hf *h, uint32_t a, uint32_t b)
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
        return bad(h, jpath, "id %lld is given to two tokens", (long long)id);
    char *p = dup_n(s, len);
    if (!p) return oom();
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
            return bad(h, "model.vocab", "token \"%.60s\" has an id that is not 0..2^24-1", key);
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
            return bad(h, jp, "an added token needs an \"id\" 0..2^24-1");
        if (json_integer_value(id) > *max) *max = json_integer_value(id);
    }
    return strata_ok();
}

static const char *merge_path(char buf[64], size_t i)
{
    snprintf(buf, 64, "model.merges[%zu]", i);
    return buf;
}

static strata_err load_model(strata_hf *h, const json_t *model, stab *by_str, int u2b[324])
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
        if (stab_set(by_str, key, klen, (uint32_t)id)) return oom();
        if (!h->byte_level) {
            if (stab_set(&h->vocab, key, klen, (uint32_t)id)) return oom();
            continue;
        }
        if (strata_bpe_grow((void **)&tmp, &tmp_cap, klen + 1, 1)) return oom();
        long nb = unbyte(key, klen, u2b, tmp);
        /* a token outside the byte alphabet cannot come out of BPE on bytes */
        if (nb > 0 && stab_set(&h->vocab, tmp, (size_t)nb, (uint32_t)id)) {
            free(tmp);
            return oom();
        }
    }
    free(tmp);
    if (h->byte_level)
        for (int b = 0; b < 256; b++) {
            uint8_t c = (uint8_t)b;
            if (!stab_get(&h->vocab, &c, 1, &h->byte_id[b]))
                return bad(h, "model.vocab",
                           "a byte-level vocabulary needs a token for every byte; byte 0x%02x "
                           "has none",
                           b);
        }
    for (int b = 0; b < 256; b++) {
        char name[8];
        uint32_t id;
        snprintf(name, sizeof name, "<0x%02X>", b);
        h->fallback[b] = stab_get(by_str, name, 6, &id) ? (int32_t)id : -1;
    }
    h->unk = -1;
    json_t *unk = json_object_get(model, "unk_token");
    if (!is_none(unk)) {
        uint32_t id;
        if (!json_is_string(unk)) return bad(h, "model.unk_token", "must be a string or null");
        if (!stab_get(by_str, json_string_value(unk), json_string_length(unk), &id))
            return bad(h, "model.unk_token", "\"%.60s\" is not in model.vocab",
                       json_string_value(unk));
        h->unk = (int32_t)id;
    }

    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) return bad(h, "model.merges", "must be an array");
    size_t nm = json_array_size(merges);
    if (nm >= (1u << 30)) return bad(h, "model.merges", "too many merges");
    h->merges_cap = 16;
    while (h->merges_cap < 2 * nm + 2) h->merges_cap *= 2;
    h->merges = malloc(h->merges_cap * sizeof *h->merges);
    h->merge_a = malloc((nm + 1) * sizeof *h->merge_a);
    h->merge_b = malloc((nm + 1) * sizeof *h->merge_b);
    h->merge_out = malloc((nm + 1) * sizeof *h->merge_out);
    if (!h->merges || !h->merge_a || !h->merge_b || !h->merge_out) return oom();
    for (size_t i = 0; i < h->merges_cap; i++) h->merges[i].pair = UINT64_MAX;
    buf cat = {0};
    strata_err e = strata_ok();
    for (size_t i = 0; i < nm && !e.code; i++) {
        char mp[64]; /* the JSON path, written only for a message */
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = memchr(a, ' ', json_string_length(m));
            if (!sp || memchr(sp + 1, ' ', json_string_length(m) - (size_t)(sp + 1 - a))) {
                e = bad(h, merge_path(mp, i), "a merge must be two tokens separated by one space");
                break;
            }
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = json_string_length(m) - la - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            la = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            lb = json_string_length(json_array_get(m, 1));
        } else {
            e = bad(h, merge_path(mp, i), "a merge must be \"a b\" or [\"a\", \"b\"]");
            break;
        }
        uint32_t ia, ib, iab;
        cat.n = 0;
        if (buf_put(&cat, a, la) || buf_put(&cat, b, lb)) {
            e = oom();
            break;
        }
        if (!stab_get(by_str, a, la, &ia) || !stab_get(by_str, b, lb, &ib)) {
            e = bad(h, merge_path(mp, i), "token \"%.60s\" is not in model.vocab",
                    stab_get(by_str, a, la, &ia) ? b : a);
            break;
        }
        if (!stab_get(by_str, cat.p, cat.n, &iab)) {
            e = bad(h, merge_path(mp, i), "merged token \"%.60s%.60s\" is not in model.vocab", a,
                    b);
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
        STRATA_TRY(get_str(h, a, jp, "content", &s, &len));
        if (!len) return bad(h, jp, "empty content");
        int special, normalized, flag;
        STRATA_TRY(get_bool(h, a, jp, "special", 0, &special));
        STRATA_TRY(get_bool(h, a, jp, "normalized", !special, &normalized));
        static const char *const flags[] = {"single_word", "lstrip", "rstrip"};
        for (int f = 0; f < 3; f++) {
            STRATA_TRY(get_bool(h, a, jp, flags[f], 0, &flag));
            if (flag) return bad(h, jp, "\"%s\": true is not supported", flags[f]);
        }
        if (normalized && !special)
            return bad(h, jp, "\"normalized\": true is not supported for a non-special token");
        json_int_t id = json_integer_value(json_object_get(a, "id"));
        /* the added token names its id, whatever model.vocab said */
        STRATA_TRY(set_token(h, jp, id, s, len, 1));
        uint32_t old;
        if (stab_get(&h->added_tab, s, len, &old))
            return bad(h, jp, "content \"%.60s\" is already added_tokens[%u]", s, old);
        if (strata_bpe_grow((void **)&h->added, &h->added_cap, h->n_added + 1, sizeof *h->added))
            return oom();
        added_tok *t = &h->added[h->n_added];
        t->s = dup_n(s, len);
        t->len = len;
        t->id = (uint32_t)id;
        t->special = special;
        if (!t->s || stab_set(&h->added_tab, s, len, (uint32_t)h->n_added)) return oom();
        h->n_added++;
        h->added_first[(uint8_t)s[0]] = 1;
        if (len > h->added_max) h->added_max = len;
    }
    return strata_ok();
}

/* The ids a post-processor's template puts around a single sequence. */
static strata_err load_post(strata_hf *h, const json_t *p, const char *jpath, int depth)
{
    if (is_none(p)) return strata_ok();
    json_t *type = json_object_get(p, "type");
    if (!json_is_object(p) || !json_is_string(type))
        return bad(h, jpath, "a post-processor must be an object with a \"type\"");
    const char *t = json_string_value(type);
    char sub[256];
    if (!strcmp(t, "ByteLevel")) return strata_ok(); /* offsets only */
    if (!strcmp(t, "Sequence")) {
        json_t *arr = json_object_get(p, "processors");
        if (!json_is_array(arr) || depth > 4)
            return bad(h, jpath, "Sequence needs a \"processors\" array");
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            snprintf(sub, sizeof sub, "%s.processors[%zu]", jpath, i);
            STRATA_TRY(load_post(h, v, sub, depth + 1));
        }
        return strata_ok();
    }
    if (strcmp(t, "TemplateProcessing"))
        return bad(h, jpath,
                   "post-processor type \"%.60s\" is not supported (TemplateProcessing, ByteLevel, "
                   "Sequence are)",
                   t);
    json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens");
    if (!json_is_array(single)) return bad(h, jpath, "\"single\" must be an array");
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
        if (!json_is_string(name)) return bad(h, sub, "expected a SpecialToken or a Sequence");
        json_t *ids = json_object_get(json_object_get(specials, json_string_value(name)), "ids");
        if (!json_is_array(ids))
            return bad(h, sub, "special token \"%.60s\" is not in special_tokens",
                       json_string_value(name));
        size_t k;
        json_t *idv;
        json_array_foreach(ids, k, idv)
        {
            json_int_t id = json_integer_value(idv);
            if (!json_is_integer(idv) || id < 0 || id >= h->vocab_size)
                return bad(h, sub, "special token \"%.60s\" has an id outside the vocabulary",
                           json_string_value(name));
            size_t *n = seen_a ? &h->n_tail : &h->n_lead;
            uint32_t *dst = seen_a ? h->tail : h->lead;
            if (*n == MAX_BOUND) return bad(h, sub, "more than %d special tokens", MAX_BOUND);
            dst[(*n)++] = (uint32_t)id;
        }
    }
    if (!seen_a) return bad(h, jpath, "the \"single\" template has no Sequence");
    return strata_ok();
}

static int added_id(const strata_hf *h, const char *content, uint32_t *id)
{
    uint32_t k;
    if (!stab_get(&h->added_tab, content, strlen(content), &k) || !h->added[k].special) return 0;
    *id = h->added[k].id;
    return 1;
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
static int replace_all(buf *b, const char *a, size_t alen, const char *c, size_t clen)
{
    if (!b->n || !memmem(b->p, b->n, a, alen)) return 0;
    buf o = {0};
    size_t i = 0;
    while (i < b->n) {
        const uint8_t *hit = memmem(b->p + i, b->n - i, a, alen);
        size_t end = hit ? (size_t)(hit - b->p) : b->n;
        if (buf_put(&o, b->p + i, end - i)) return -1;
        if (!hit) break;
        if (buf_put(&o, c, clen)) return -1;
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
                long nb = unbyte((const char *)b->p, b->n, u2b, o);
                if (nb >= 0) {
                    free(b->p);
                    b->p = o;
                    b->n = (size_t)nb;
                    b->cap = b->n + 1;
                } else {
                    free(o);
                }
            } else if (d->type == DC_REPLACE) {
                if (replace_all(b, d->a, d->alen, d->b, d->blen)) return -1;
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
                if (replace_all(b, d->a, d->alen, " ", 1)) return -1;
                if (!single && i == 0 && d->scheme != PS_NEVER && b->n && b->p[0] == ' ') {
                    memmove(b->p, b->p + 1, b->n - 1);
                    b->n--;
                }
            }
        }
        if (d->type == DC_FUSE && l->n > 1) {
            for (size_t i = 1; i < l->n; i++) {
                if (buf_put(&l->item[0], l->item[i].p, l->item[i].n)) return -1;
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
    if (!l.item) return oom();
    l.cap = n;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= (uint32_t)h->vocab_size || !h->tstr[ids[i]]) {
            dlist_free(&l);
            return strata_errorf(STRATA_EINPUT,
                                 "decode: token %zu is id %u, which %s tokenizer %s does not have",
                                 i, ids[i], "the", h->path);
        }
        if (buf_put(&l.item[i], h->tstr[ids[i]], h->tstr_len[ids[i]])) {
            dlist_free(&l);
            return oom();
        }
    }
    l.n = n;
    if (run_decoders(h, &l, single, h->u2b)) {
        dlist_free(&l);
        return oom();
    }
    for (size_t i = 0; i < l.n; i++) {
        if ((!h->has_decoder && i && buf_put(out, " ", 1)) ||
            buf_put(out, l.item[i].p, l.item[i].n)) {
            dlist_free(&l);
            return oom();
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
    if (!b.p && !(b.p = malloc(1))) return oom();
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

static strata_err make_surfaces(strata_hf *h)
{
    h->surf_off = calloc((size_t)h->vocab_size, sizeof *h->surf_off);
    h->surf_len = calloc((size_t)h->vocab_size, sizeof *h->surf_len);
    if (!h->surf_off || !h->surf_len) return oom();
    buf all = {0};
    /* the usual byte-level decoder alone: no list to build */
    int just_bytes = h->n_dec == 1 && h->dec[0].type == DC_BYTELEVEL;
    for (int id = 0; id < h->vocab_size; id++) {
        if (!h->tstr[id]) continue;
        size_t before = all.n;
        uint32_t u = (uint32_t)id;
        if (just_bytes) {
            if (strata_bpe_grow((void **)&all.p, &all.cap, all.n + h->tstr_len[id] + 1, 1))
                return oom();
            long nb = unbyte(h->tstr[id], h->tstr_len[id], h->u2b, all.p + all.n);
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
    return h->surface ? strata_ok() : oom();
}

/* ---- BPE on one piece --------------------------------------------------------------------- */

/* Merges the symbols sym[0..m) and leaves the result in h->word; returns its
 * length. The heap holds (rank, position): the lowest rank first, then the
 * leftmost, which is the Rust crate's order; an entry whose pair has
 * changed since it was pushed is skipped. */
static long merge_symbols(strata_hf *h, size_t m)
{
    uint32_t *sym = h->sym;
    int32_t *prev = h->prev, *next = h->next;
    for (size_t i = 0; i < m; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    h->heap_n = 0;
    if (strata_bpe_grow((void **)&h->heap, &h->heap_cap, m + 1, sizeof *h->heap)) return -1;
    for (size_t i = 0; i + 1 < m; i++) {
        int32_t r = merge_rank(h, sym[i], sym[i + 1]);
        if (r >= 0) strata_bpe_heap_push(h->heap, &h->heap_n, ((uint64_t)r << 32) | i);
    }
    while (h->heap_n) {
        uint64_t top = strata_bpe_heap_pop(h->heap, &h->heap_n);
        int32_t r = (int32_t)(top >> 32), i = (int32_t)(uint32_t)top, j = next[i];
        if (prev[i] == -2 || j < 0 || sym[i] != h->merge_a[r] || sym[j] != h->merge_b[r]) continue;
        uint32_t ab = h->merge_out[r];
        sym[i] = ab;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        prev[j] = -2;
        if (strata_bpe_grow((void **)&h->heap, &h->heap_cap, h->heap_n + 2, sizeof *h->heap))
            return -1;
        if (prev[i] >= 0) {
            int32_t r2 = merge_rank(h, sym[prev[i]], ab);
            if (r2 >= 0)
                strata_bpe_heap_push(h->heap, &h->heap_n, ((uint64_t)r2 << 32) | (uint32_t)prev[i]);
        }
        if (next[i] >= 0) {
            int32_t r2 = merge_rank(h, ab, sym[next[i]]);
            if (r2 >= 0)
                strata_bpe_heap_push(h->heap, &h->heap_n, ((uint64_t)r2 << 32) | (uint32_t)i);
        }
    }
    if (strata_bpe_grow((void **)&h->word, &h->word_cap, m + 1, sizeof *h->word)) return -1;
    long k = 0;
    if (m)
        for (int32_t i = 0; i >= 0; i = next[i]) h->word[k++] = sym[i];
    return k;
}

enum { HF_OOM = 1, HF_LONG = 2, HF_REGEX = 3 }; /* internal failures of the hot path */

/* Appends the ids of one piece (from the cache when seen before). */
/* Returns 0, or HF_OOM, HF_LONG. */
static int model_piece(strata_hf *h, const uint8_t *s, size_t n, strata_tokens *out)
{
    if (!n) return 0;
    if (n >= INT32_MAX) return HF_LONG;
    uint32_t id;
    uint64_t hash = 0;
    /* the cache first: it also holds the pieces ignore_merges emits whole */
    if (n <= CACHE_MAX_PIECE) {
        hash = hash_bytes(s, n);
        stab_slot *hit = stab_find(&h->cache, s, n, hash);
        if (hit) return push_ids(out, h->cache_ids + hit->v0, hit->v1) ? HF_OOM : 0;
    }
    if (n > h->scratch_cap) {
        size_t cap = n < 64 ? 64 : 2 * n;
        uint32_t *sy = realloc(h->sym, cap * sizeof *sy);
        if (sy) h->sym = sy;
        int32_t *p = sy ? realloc(h->prev, cap * sizeof *p) : NULL;
        if (p) h->prev = p;
        int32_t *q = p ? realloc(h->next, cap * sizeof *q) : NULL;
        if (q) h->next = q;
        if (!q) return HF_OOM;
        h->scratch_cap = cap;
    }
    size_t m = 0;
    long w;
    if (h->ignore_merges && stab_get(&h->vocab, s, n, &id)) {
        if (strata_bpe_grow((void **)&h->word, &h->word_cap, 1, sizeof *h->word)) return HF_OOM;
        h->word[0] = id;
        w = 1;
        goto merged;
    }
    if (h->byte_level) {
        for (size_t i = 0; i < n; i++) h->sym[m++] = h->byte_id[s[i]];
    } else {
        int last_unk = 0;
        for (size_t i = 0; i < n;) {
            size_t k = utf8_len(s + i, n - i, NULL);
            if (!k) k = 1; /* an invalid byte is a character of its own */
            int ok = 0;
            if (stab_get(&h->vocab, s + i, k, &id)) {
                h->sym[m++] = id;
                ok = 1;
            } else if (h->byte_fallback) {
                ok = 1;
                for (size_t j = 0; j < k; j++) ok &= h->fallback[s[i + j]] >= 0;
                if (ok)
                    for (size_t j = 0; j < k; j++) h->sym[m++] = (uint32_t)h->fallback[s[i + j]];
            }
            if (ok) {
                last_unk = 0;
            } else if (h->unk >= 0) {
                if (!(h->fuse_unk && last_unk)) h->sym[m++] = (uint32_t)h->unk;
                last_unk = 1;
            } /* else: no unk token, the character is dropped (as in the Rust crate) */
            i += k;
        }
    }
    w = merge_symbols(h, m);
merged:
    if (w < 0 || push_ids(out, h->word, (size_t)w)) return HF_OOM;
    if (n > CACHE_MAX_PIECE) return 0;
    if (h->cache.n >= CACHE_MAX_ENTRIES) {
        memset(h->cache.slots, 0, h->cache.cap * sizeof *h->cache.slots);
        h->cache.n = 0;
        h->cache.keys.n = 0;
        h->cache_ids_n = 0;
    }
    if (strata_bpe_grow((void **)&h->cache_ids, &h->cache_ids_cap, h->cache_ids_n + (size_t)w + 1,
                        sizeof *h->cache_ids))
        return HF_OOM;
    stab_slot *slot = stab_add(&h->cache, s, n, hash);
    if (!slot) return HF_OOM;
    slot->v0 = (uint32_t)h->cache_ids_n;
    slot->v1 = (uint32_t)w;
    memcpy(h->cache_ids + h->cache_ids_n, h->word, (size_t)w * sizeof *h->word);
    h->cache_ids_n += (size_t)w;
    return 0;
}

/* ---- pre-tokenizers ------------------------------------------------------------------------ */

static int is_numeric(int32_t cp)
{
    int c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

static int add_span(span **sp, size_t *cap, size_t *n, size_t off, size_t len, int match)
{
    if (strata_bpe_grow((void **)sp, cap, *n + 1, sizeof **sp)) return -1;
    (*sp)[(*n)++] = (span){off, len, match};
    return 0;
}

/* Splits s[0..n) as one pre-tokenizer does: first into parts that match and
 * parts that don't (covering all of s), then by the split behaviour, as
 * huggingface/tokenizers' NormalizedString::split. Returns 0, -1 (memory)
 * or a PCRE2 error code below -1. */
static int split_spans(strata_hf *h, const pre_step *st, int level, const uint8_t *s, size_t n,
                       size_t *count)
{
    span *parts = h->parts;
    size_t np = 0, pcap = h->parts_cap, prev = 0;
    int rc = 0;
#define PART(a, b, m)                                                                              \
    do {                                                                                           \
        if ((b) > (a) && add_span(&parts, &pcap, &np, (a), (b) - (a), (m))) {                      \
            rc = -1;                                                                               \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)
    if (st->re) {
        size_t pos = 0;
        while (pos < n) {
            int r = pcre2_match(st->re, s, n, pos, 0, st->md, h->mctx);
            if (r == PCRE2_ERROR_NOMATCH) break;
            if (r < 0) {
                rc = r < -1 ? r : -2;
                goto out;
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
            size_t a = ov[0], b = ov[1];
            PART(prev, a, 0);
            PART(a, b, 1);
            prev = a > prev ? a : prev;
            if (b > a) {
                prev = b;
                pos = b;
            } else {
                size_t k = a < n ? utf8_len(s + a, n - a, NULL) : 1;
                pos = a + (k ? k : 1);
            }
        }
        PART(prev, n, 0);
    } else if (st->type == PT_SPLIT) {
        for (size_t pos = 0; pos < n;) {
            const uint8_t *hit = memmem(s + pos, n - pos, st->lit, st->lit_len);
            if (!hit) break;
            size_t a = (size_t)(hit - s);
            PART(prev, a, 0);
            PART(a, a + st->lit_len, 1);
            prev = pos = a + st->lit_len;
        }
        PART(prev, n, 0);
    } else if (st->type == PT_DIGITS) {
        for (size_t i = 0; i < n;) {
            int32_t cp;
            size_t k = utf8_len(s + i, n - i, &cp);
            if (k && is_numeric(cp)) {
                PART(prev, i, 0);
                PART(i, i + k, 1);
                prev = i + k;
            }
            i += k ? k : 1;
        }
        PART(prev, n, 0);
    } else if (st->type == PT_METASPACE && st->split) {
        for (size_t pos = 0; pos < n;) {
            const uint8_t *hit = memmem(s + pos, n - pos, st->rep, st->rep_len);
            if (!hit) break;
            size_t a = (size_t)(hit - s);
            PART(prev, a, 0);
            PART(a, a + st->rep_len, 1);
            prev = pos = a + st->rep_len;
        }
        PART(prev, n, 0);
    } else {
        PART(0, n, 0);
    }
#undef PART
    if (st->invert)
        for (size_t i = 0; i < np; i++) parts[i].match = !parts[i].match;

    /* the behaviour: which parts stay, and which join their neighbours */
    span **sp = &h->spans[level];
    size_t *cap = &h->spans_cap[level], m = 0;
    int pm = 0;
    if (st->behavior == SB_MERGED_NEXT) {
        /* right to left: a match joins the part after it */
        for (size_t j = np; j-- > 0;) {
            span p = parts[j];
            if (p.match && !pm && m) {
                (*sp)[m - 1].len += (*sp)[m - 1].off - p.off;
                (*sp)[m - 1].off = p.off;
            } else if (add_span(sp, cap, &m, p.off, p.len, 0)) {
                rc = -1;
                goto out;
            }
            pm = p.match;
        }
        for (size_t a = 0, b = m ? m - 1 : 0; a < b; a++, b--) {
            span t = (*sp)[a];
            (*sp)[a] = (*sp)[b];
            (*sp)[b] = t;
        }
    } else {
        for (size_t j = 0; j < np; j++) {
            span p = parts[j];
            int join = 0;
            if (st->behavior == SB_REMOVED && p.match) continue;
            if (st->behavior == SB_MERGED_PREV) join = p.match && !pm && m;
            if (st->behavior == SB_CONTIGUOUS) join = p.match == pm && m && j;
            if (join) {
                (*sp)[m - 1].len = p.off + p.len - (*sp)[m - 1].off;
            } else if (add_span(sp, cap, &m, p.off, p.len, 0)) {
                rc = -1;
                goto out;
            }
            pm = p.match;
        }
    }
    *count = m;
out:
    h->parts = parts;
    h->parts_cap = pcap;
    return rc;
}

/* The error value of a failure of the hot path (rc: HF_*; pcre: PCRE2's code). */
static strata_err hf_error(int rc, int pcre)
{
    if (rc == HF_OOM) return oom();
    if (rc == HF_LONG)
        return strata_errorf(STRATA_EINPUT, "tokenizer: a piece of 2 GiB or more cannot be merged");
    char msg[256];
    pcre2_get_error_message(pcre, (PCRE2_UCHAR *)msg, sizeof msg);
    return strata_errorf(STRATA_EFAIL, "tokenizer: regex match failed: %s", msg);
}

/* Runs pre-tokenizer stage k (k >= 1) and everything after it on one piece. */
static int run_stage(strata_hf *h, int k, const uint8_t *s, size_t n, int at_doc_start,
                     strata_tokens *out)
{
    if (k == h->n_pre) return model_piece(h, s, n, out);
    const pre_step *st = &h->pre[k];
    buf *l = &h->lvl[k];
    if (st->type == PT_BYTELEVEL && !st->re && !st->add_prefix_space)
        return run_stage(h, k + 1, s, n, at_doc_start, out); /* bytes only: nothing to split */
    if (st->type == PT_BYTELEVEL && st->add_prefix_space && (!n || s[0] != ' ')) {
        l->n = 0;
        if (buf_put(l, " ", 1) || buf_put(l, s, n)) return HF_OOM;
        s = l->p;
        n = l->n;
    } else if (st->type == PT_METASPACE) {
        l->n = 0;
        if (buf_put(l, s, n) || replace_all(l, " ", 1, st->rep, st->rep_len)) return HF_OOM;
        int pre = st->scheme == PS_ALWAYS || (st->scheme == PS_FIRST && at_doc_start);
        if (pre && (l->n < st->rep_len || memcmp(l->p, st->rep, st->rep_len))) {
            if (buf_put(l, st->rep, st->rep_len)) return HF_OOM;
            memmove(l->p + st->rep_len, l->p, l->n - st->rep_len);
            memcpy(l->p, st->rep, st->rep_len);
        }
        s = l->p;
        n = l->n;
    }
    size_t cnt = 0;
    int rc = split_spans(h, st, k, s, n, &cnt);
    if (rc == -1) return HF_OOM;
    if (rc) {
        h->pcre_rc = rc;
        return HF_REGEX;
    }
    for (size_t i = 0; i < cnt; i++) {
        span p = h->spans[k][i];
        rc = run_stage(h, k + 1, s + p.off, p.len, at_doc_start && p.off == 0, out);
        if (rc) return rc;
    }
    return 0;
}

/* Pre-tokenizes the normalised text held in norm_buf. With lag, the last two
 * first-stage pieces (whose extent may still change with text to come)
 * stay held. */
static strata_err flush(strata_hf *h, int lag, strata_tokens *out)
{
    buf *nb = &h->norm_buf;
    int rc;
    if (!nb->n) return strata_ok();
    if (!h->n_pre && h->cut_at_metaspace) {
        /* words: cut before each "▁" that does not follow another; every word
         * but the last is final (the last may still grow) */
        static const char ms[] = "\xE2\x96\x81";
        size_t start = 0;
        for (size_t i = 1; i + 3 <= nb->n; i++) {
            if (memcmp(nb->p + i, ms, 3) || (i >= 3 && !memcmp(nb->p + i - 3, ms, 3))) continue;
            if ((rc = model_piece(h, nb->p + start, i - start, out))) return hf_error(rc, 0);
            start = i;
        }
        if (!lag) {
            if ((rc = model_piece(h, nb->p + start, nb->n - start, out))) return hf_error(rc, 0);
            start = nb->n;
        }
        memmove(nb->p, nb->p + start, nb->n - start);
        nb->n -= start;
        return strata_ok();
    }
    if (!h->n_pre) {
        if (lag) return strata_ok();
        if ((rc = model_piece(h, nb->p, nb->n, out))) return hf_error(rc, 0);
        nb->n = 0;
        h->norm_at_doc_start = 0;
        return strata_ok();
    }
    size_t cnt = 0;
    rc = split_spans(h, &h->pre[0], MAX_PRE, nb->p, nb->n, &cnt);
    if (rc) return hf_error(rc == -1 ? HF_OOM : HF_REGEX, rc);
    size_t emit = lag ? (cnt > 2 ? cnt - 2 : 0) : cnt;
    /* spans[MAX_PRE] is stage 0's list: later stages have their own */
    for (size_t i = 0; i < emit; i++) {
        span p = h->spans[MAX_PRE][i];
        rc = run_stage(h, 1, nb->p + p.off, p.len, h->norm_at_doc_start && p.off == 0, out);
        if (rc) return hf_error(rc, h->pcre_rc);
    }
    size_t used = !lag   ? nb->n
                  : emit ? h->spans[MAX_PRE][emit - 1].off + h->spans[MAX_PRE][emit - 1].len
                         : 0;
    memmove(nb->p, nb->p + used, nb->n - used);
    nb->n -= used;
    if (used) h->norm_at_doc_start = 0;
    return strata_ok();
}

/* ---- normalisers ----------------------------------------------------------------------------- */

static int nfc_inert(int32_t cp)
{
    if ((cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0xAC00 && cp <= 0xD7A3)) return 0; /* Hangul */
    const utf8proc_property_t *p = utf8proc_get_property(cp);
    return p->combining_class == 0 && p->decomp_seqindex == UINT16_MAX &&
           p->comb_index == UINT16_MAX;
}

/* NFC of s[0..n), a stretch that starts and ends where NFC cannot reach
 * across; invalid UTF-8 bytes pass through unchanged. */
static int nfc_region(const uint8_t *s, size_t n, buf *o)
{
    size_t i = 0, run = 0;
    int inert = 1;
    while (i <= n) {
        int32_t cp = 0;
        size_t k = i < n ? utf8_len(s + i, n - i, &cp) : 0;
        if (i < n && k) {
            inert &= nfc_inert(cp);
            i += k;
            continue;
        }
        /* s[run..i) is valid UTF-8 */
        if (i > run) {
            if (inert) {
                if (buf_put(o, s + run, i - run)) return -1;
            } else {
                utf8proc_uint8_t *d = NULL;
                utf8proc_ssize_t dn = utf8proc_map(s + run, (utf8proc_ssize_t)(i - run), &d,
                                                   UTF8PROC_STABLE | UTF8PROC_COMPOSE);
                if (dn < 0) return -1;
                int r = buf_put(o, d, (size_t)dn);
                free(d);
                if (r) return -1;
            }
        }
        if (i < n && buf_put(o, s + i, 1)) return -1; /* an invalid byte */
        i++;
        run = i;
        inert = 1;
    }
    return 0;
}

static int nfc(const uint8_t *s, size_t n, buf *o)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] < 0x80) j++;
        if (j == n) return buf_put(o, s + i, n - i);
        size_t a = j > i ? j - 1 : j; /* an ASCII starter may compose with what follows */
        if (buf_put(o, s + i, a - i)) return -1;
        size_t b = j;
        while (b < n && s[b] >= 0x80) b++;
        if (nfc_region(s + a, b - a, o)) return -1;
        i = b;
    }
    return 0;
}

/* Normalises the next stretch of the current segment and appends it to
 * norm_buf, with the first pre-tokenizer's edits (ByteLevel's prefix space,
 * Metaspace's replacement) that would otherwise need the whole segment. */
static strata_err norm_append(strata_hf *h, const uint8_t *s, size_t n)
{
    if (!n) return strata_ok();
    int cur = -1; /* -1: s itself, else scratch[cur] */
    for (int i = 0; i < h->n_norm; i++) {
        const norm_step *st = &h->norm[i];
        const uint8_t *src = cur < 0 ? s : h->scratch[cur].p;
        size_t sn = cur < 0 ? n : h->scratch[cur].n;
        buf *dst = &h->scratch[cur == 0 ? 1 : 0];
        dst->n = 0;
        int r = 0;
        if (st->type == NM_NFC) {
            r = nfc(src, sn, dst);
        } else if (st->type == NM_PREPEND) {
            if (h->seg_fresh && sn) r = buf_put(dst, st->a, st->alen);
            r = r || buf_put(dst, src, sn);
        } else {
            r = buf_put(dst, src, sn) || replace_all(dst, st->a, st->alen, st->b, st->blen);
        }
        if (r) return oom();
        cur = cur == 0 ? 1 : 0;
    }
    const uint8_t *src = cur < 0 ? s : h->scratch[cur].p;
    size_t sn = cur < 0 ? n : h->scratch[cur].n;
    buf *nb = &h->norm_buf;
    const pre_step *p0 = h->n_pre ? &h->pre[0] : NULL;
    if (p0 && p0->type == PT_BYTELEVEL && p0->add_prefix_space && h->seg_fresh &&
        (!sn || src[0] != ' ') && buf_put(nb, " ", 1))
        return oom();
    if (p0 && p0->type == PT_METASPACE) {
        size_t at = nb->n;
        int pre = p0->scheme == PS_ALWAYS || (p0->scheme == PS_FIRST && h->seg_at_doc_start);
        if (buf_put(nb, src, sn)) return oom();
        buf tail = {nb->p + at, nb->n - at, 0};
        /* replace within the appended part only */
        buf tmp = {0};
        if (buf_put(&tmp, tail.p, tail.n) || replace_all(&tmp, " ", 1, p0->rep, p0->rep_len)) {
            free(tmp.p);
            return oom();
        }
        nb->n = at;
        int need =
            h->seg_fresh && pre && (tmp.n < p0->rep_len || memcmp(tmp.p, p0->rep, p0->rep_len));
        int r = (need && buf_put(nb, p0->rep, p0->rep_len)) || buf_put(nb, tmp.p, tmp.n);
        free(tmp.p);
        if (r) return oom();
    } else if (buf_put(nb, src, sn)) {
        return oom();
    }
    h->seg_fresh = 0;
    return strata_ok();
}

/* ---- encoding ----------------------------------------------------------------------------------
 */

/* The leftmost added token in r[pos..limit), the longest at that place. */
static int find_added(const strata_hf *h, const uint8_t *r, size_t pos, size_t limit, size_t n,
                      size_t *at, size_t *len, uint32_t *id)
{
    if (!h->n_added) return 0;
    for (size_t i = pos; i < limit; i++) {
        if (!h->added_first[r[i]]) continue;
        size_t max = n - i < h->added_max ? n - i : h->added_max;
        for (size_t l = max; l >= 1; l--) {
            uint32_t k;
            if (stab_get(&h->added_tab, r + i, l, &k)) {
                *at = i;
                *len = l;
                *id = h->added[k].id;
                return 1;
            }
        }
    }
    return 0;
}

/* Where to stop normalising r[pos..limit) while more text follows: before
 * an ASCII byte (NFC never reaches across one, and it is a character
 * boundary); with none in the last MiB, at a character boundary. */
static size_t safe_cut(const strata_hf *h, const uint8_t *r, size_t pos, size_t limit)
{
    if (limit <= pos) return pos;
    for (size_t c = limit; c > pos && limit - c < ((size_t)1 << 20); c--)
        if (r[c - 1] < 0x80) {
            size_t cut = c - 1;
            /* never between the bytes of a Replace pattern */
            for (int i = 0; i < h->n_norm; i++) {
                const norm_step *st = &h->norm[i];
                if (st->type != NM_REPLACE || st->alen < 2) continue;
                for (size_t k = cut > pos + st->alen ? cut - st->alen + 1 : pos; k < cut; k++)
                    if (k + st->alen <= limit && !memcmp(r + k, st->a, st->alen)) cut = k;
            }
            return cut;
        }
    if (limit - pos < ((size_t)1 << 20)) return pos;
    size_t c = limit;
    while (c > pos && limit - c < 4 && (r[c - 1] & 0xC0) == 0x80) c--;
    return c > pos && r[c - 1] >= 0xC0 ? c - 1 : c;
}

static void doc_reset(strata_hf *h)
{
    h->raw.n = 0;
    h->norm_buf.n = 0;
    h->seg_fresh = 1;
    h->seg_at_doc_start = 1;
    h->norm_at_doc_start = 1;
}

strata_err strata_hf_encode(strata_hf *h, const uint8_t *s, size_t n, int more, strata_tokens *out)
{
    if (buf_put(&h->raw, s, n)) return oom();
    strata_err e = strata_ok();
    const uint8_t *r = h->raw.p;
    size_t N = h->raw.n, pos = 0;
    size_t hold = h->added_max ? h->added_max - 1 : 0;
    size_t limit = !more ? N : N > hold ? N - hold : 0;
    size_t at, len;
    uint32_t id;
    while (find_added(h, r, pos, limit, N, &at, &len, &id)) {
        e = norm_append(h, r + pos, at - pos);
        if (!e.code) e = flush(h, 0, out);
        if (!e.code && push_ids(out, &id, 1)) e = oom();
        if (e.code) goto fail;
        pos = at + len;
        h->seg_fresh = 1;
        h->seg_at_doc_start = 0;
        h->norm_at_doc_start = 0;
    }
    if (!more) {
        e = norm_append(h, r + pos, N - pos);
        if (!e.code) e = flush(h, 0, out);
        doc_reset(h);
        return e;
    }
    size_t c = safe_cut(h, r, pos, limit);
    e = norm_append(h, r + pos, c - pos);
    if (!e.code) e = flush(h, 2, out);
    if (e.code) goto fail;
    memmove(h->raw.p, h->raw.p + c, N - c);
    h->raw.n = N - c;
    return strata_ok();
fail:
    doc_reset(h);
    return e;
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
        if (buf_put(&b, chunk, got)) {
            fclose(f);
            free(b.p);
            return oom();
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
    json_t *vocab = json_object_get(model, "vocab"), *type = json_object_get(model, "type");
    if (!json_is_object(root)) {
        e = bad(h, "(top)", "expected a JSON object (a Hugging Face tokenizer.json)");
    } else if (!json_is_object(model)) {
        e = bad(h, "model", "missing or not an object");
    } else if (json_is_string(type) && strcmp(json_string_value(type), "BPE")) {
        e = bad(h, "model.type",
                "model type \"%.40s\" is not supported (strata reads BPE models only)",
                json_string_value(type));
    } else if (!json_is_string(type) && !json_object_get(model, "merges")) {
        e = bad(h, "model.type", "missing (and no merges: not a BPE model)");
    } else if (!json_is_object(vocab) || !json_object_size(vocab)) {
        e = bad(h, "model.vocab", "must be a non-empty object of token: id");
    } else if (!is_none(added) && !json_is_array(added)) {
        e = bad(h, "added_tokens", "must be an array");
    }
    if (e.code) goto done;
    json_t *dropout = json_object_get(model, "dropout");
    if (!is_none(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0)) {
        e = bad(h, "model.dropout", "BPE dropout is not supported (it makes encoding random)");
        goto done;
    }
    static const char *const affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(model, affix[i]);
        if (!is_none(v) && !(json_is_string(v) && json_string_length(v) == 0)) {
            e = bad(h, "model", "\"%s\" is not supported", affix[i]);
            goto done;
        }
    }
    if ((e = get_bool(h, model, "model", "byte_fallback", 0, &h->byte_fallback)).code ||
        (e = get_bool(h, model, "model", "fuse_unk", 0, &h->fuse_unk)).code ||
        (e = get_bool(h, model, "model", "ignore_merges", 0, &h->ignore_merges)).code)
        goto done;
    if ((e = add_normalizer(h, json_object_get(root, "normalizer"), "normalizer", 0)).code ||
        (e = add_pretokenizer(h, json_object_get(root, "pre_tokenizer"), "pre_tokenizer", 0))
            .code ||
        (e = add_decoder(h, json_object_get(root, "decoder"), "decoder", 0)).code)
        goto done;
    json_int_t max_id;
    json_t *no_added = json_array();
    e = scan_ids(h, vocab, is_none(added) ? no_added : added, &max_id);
    json_decref(no_added);
    if (e.code) goto done;
    h->vocab_size = (int)max_id + 1;
    h->tstr = calloc((size_t)h->vocab_size, sizeof *h->tstr);
    h->tstr_len = calloc((size_t)h->vocab_size, sizeof *h->tstr_len);
    size_t tab = 64; /* sized for the vocabulary: no rehash while loading */
    while (tab < 2 * ((size_t)h->vocab_size + 1)) tab *= 2;
    if (!h->tstr || !h->tstr_len || stab_init(&by_str, tab) || stab_init(&h->vocab, tab) ||
        stab_init(&h->added_tab, 64) || stab_init(&h->cache, 1u << 12)) {
        e = oom();
        goto done;
    }
    if ((e = load_model(h, model, &by_str, h->u2b)).code) goto done;
    if (!is_none(added) && (e = load_added(h, added)).code) goto done;
    if ((e = load_post(h, json_object_get(root, "post_processor"), "post_processor", 0)).code)
        goto done;
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
    if (!h->n_pre && !h->byte_level && stab_get(&h->vocab, "\xE2\x96\x81", 3, &id)) {
        h->cut_at_metaspace = 1;
        for (int t = 0; t < h->vocab_size && h->cut_at_metaspace; t++) {
            const char *ts = h->tstr[t];
            if (!ts) continue;
            size_t tl = h->tstr_len[t], k = 0;
            while (k + 3 <= tl && !memcmp(ts + k, "\xE2\x96\x81", 3)) k += 3;
            if (k < tl && memmem(ts + k, tl - k, "\xE2\x96\x81", 3)) h->cut_at_metaspace = 0;
        }
    }
    e = make_surfaces(h);
done:
    stab_free(&by_str);
    json_decref(root);
    return e;
}

strata_err strata_hf_load(strata_hf **out, const char *path)
{
    *out = NULL;
    strata_hf *h = calloc(1, sizeof *h);
    if (!h || !(h->path = strdup(path))) {
        free(h);
        return oom();
    }
    uint32_t b2u[256];
    strata_bpe_byte_unicode_tables(b2u, h->u2b);
    uint8_t *text = NULL;
    size_t len = 0;
    strata_err e = read_file(path, &text, &len);
    if (!e.code) {
        sha256_hex(text, len, h->hash);
        e = load(h, text, len);
    }
    free(text);
    if (e.code) {
        strata_hf_free(h);
        return e;
    }
    doc_reset(h);
    *out = h;
    return strata_ok();
}
