/* tokenizer_hf_impl.h — the parts of io/tokenizer_hf*.c that more than one
 * of those files uses: the tokenizer's state (struct strata_hf) and the
 * functions one part calls in another. Internal to the Hugging Face
 * tokenizer; io/tokenizer.c sees only tokenizer_hf.h.
 *
 * The files, by concern: tokenizer_hf.c (small tools, SHA-256, the byte
 * string table, the state's accessors, decoding), tokenizer_hf_load.c (the
 * JSON model: vocabulary, merges, added tokens, post-processor, and the
 * load itself), tokenizer_hf_pipeline.c (normalizers, pre-tokenizers and
 * decoders: loading them and running them), tokenizer_hf_encode.c (BPE on
 * one piece and the streaming encoder).
 */
#ifndef STRATA_IO_TOKENIZER_HF_IMPL_H
#define STRATA_IO_TOKENIZER_HF_IMPL_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif

#include <jansson.h>
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer_hf.h"

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

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

enum { HF_OOM = 1, HF_LONG = 2, HF_REGEX = 3 }; /* internal failures of the hot path */

int strata_hfi_buf_put(buf *b, const void *s, size_t n);

strata_err strata_hfi_oom(void);

int strata_hfi_push_ids(strata_tokens *t, const uint32_t *ids, size_t n);

/* Length of the UTF-8 character at s[0..n), or 0 when the bytes there are
 * not a valid character (then the byte stands alone). */
size_t strata_hfi_utf8_len(const uint8_t *s, size_t n, int32_t *cp);

void strata_hfi_sha256_hex(const uint8_t *s, size_t n, char hex[65]);

uint64_t strata_hfi_hash_bytes(const uint8_t *s, size_t n);

int strata_hfi_stab_init(stab *t, size_t cap);

void strata_hfi_stab_free(stab *t);

stab_slot *strata_hfi_stab_find(const stab *t, const void *key, size_t len, uint64_t h);

int strata_hfi_stab_get(const stab *t, const void *key, size_t len, uint32_t *v);

/* Inserts a key known to be absent. */
stab_slot *strata_hfi_stab_add(stab *t, const void *key, size_t len, uint64_t h);

/* Sets key -> v (replacing an old value). */
int strata_hfi_stab_set(stab *t, const void *key, size_t len, uint32_t v);

/* Replaces every a in b->p with c (b stays owned by the list). */
int strata_hfi_replace_all(buf *b, const char *a, size_t alen, const char *c, size_t clen);

strata_err strata_hfi_make_surfaces(strata_hf *h);

strata_err strata_hfi_bad(const strata_hf *h, const char *jpath, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A JSON value that is absent or null. */
int strata_hfi_is_none(const json_t *v);

/* Reads an optional boolean member; an error for any other type. */
strata_err strata_hfi_get_bool(const strata_hf *h, const json_t *o, const char *jpath,
                               const char *key, int dflt, int *out);

strata_err strata_hfi_get_str(const strata_hf *h, const json_t *o, const char *jpath,
                              const char *key, const char **out, size_t *len);

char *strata_hfi_dup_n(const char *s, size_t n);

long strata_hfi_unbyte(const char *s, size_t len, const int u2b[324], uint8_t *out);

int32_t strata_hfi_merge_rank(const strata_hf *h, uint32_t a, uint32_t b);

strata_err strata_hfi_add_normalizer(strata_hf *h, const json_t *n, const char *jpath, int depth);

strata_err strata_hfi_add_pretokenizer(strata_hf *h, const json_t *n, const char *jpath, int depth);

strata_err strata_hfi_add_decoder(strata_hf *h, const json_t *n, const char *jpath, int depth);

/* Pre-tokenizes the normalised text held in norm_buf. With lag, the last two
 * first-stage pieces (whose extent may still change with text to come)
 * stay held. */
strata_err strata_hfi_flush(strata_hf *h, int lag, strata_tokens *out);

/* Normalises the next stretch of the current segment and appends it to
 * norm_buf, with the first pre-tokenizer's edits (ByteLevel's prefix space,
 * Metaspace's replacement) that would otherwise need the whole segment. */
strata_err strata_hfi_norm_append(strata_hf *h, const uint8_t *s, size_t n);

/* Appends the ids of one piece (from the cache when seen before). */
/* Returns 0, or HF_OOM, HF_LONG. */
int strata_hfi_model_piece(strata_hf *h, const uint8_t *s, size_t n, strata_tokens *out);

void strata_hfi_doc_reset(strata_hf *h);

/* Loads one pipeline stage (a normalizer, pre-tokenizer, decoder or
 * post-processor) n found at jpath, depth levels of Sequence down. */
typedef strata_err (*strata_hfi_stage_fn)(strata_hf *h, const json_t *n, const char *jpath,
                                          int depth);
strata_err strata_hfi_stage_type(const strata_hf *h, const json_t *n, const char *jpath,
                                 const char *what, const char **type);
strata_err strata_hfi_sequence(strata_hf *h, const json_t *n, const char *jpath, const char *key,
                               int depth, strata_hfi_stage_fn add);

#endif
