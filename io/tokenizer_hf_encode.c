/* tokenizer_hf_encode.c — BPE on one piece (with the piece cache) and the
 * streaming encoder that cuts added tokens out of the raw text and feeds
 * segments to the pipeline. See tokenizer_hf.c for the pipeline. */
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
        int32_t r = strata_hfi_merge_rank(h, sym[i], sym[i + 1]);
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
            int32_t r2 = strata_hfi_merge_rank(h, sym[prev[i]], ab);
            if (r2 >= 0)
                strata_bpe_heap_push(h->heap, &h->heap_n, ((uint64_t)r2 << 32) | (uint32_t)prev[i]);
        }
        if (next[i] >= 0) {
            int32_t r2 = strata_hfi_merge_rank(h, ab, sym[next[i]]);
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

/* Appends the ids of one piece (from the cache when seen before). */
/* Returns 0, or HF_OOM, HF_LONG. */
int strata_hfi_model_piece(strata_hf *h, const uint8_t *s, size_t n, strata_tokens *out)
{
    if (!n) return 0;
    if (n >= INT32_MAX) return HF_LONG;
    uint32_t id;
    uint64_t hash = 0;
    /* the cache first: it also holds the pieces ignore_merges emits whole */
    if (n <= CACHE_MAX_PIECE) {
        hash = strata_hfi_hash_bytes(s, n);
        stab_slot *hit = strata_hfi_stab_find(&h->cache, s, n, hash);
        if (hit) return strata_hfi_push_ids(out, h->cache_ids + hit->v0, hit->v1) ? HF_OOM : 0;
    }
    if (strata_bpe_grow_symbols(&h->sym, &h->prev, &h->next, &h->scratch_cap, n)) return HF_OOM;
    size_t m = 0;
    long w;
    if (h->ignore_merges && strata_hfi_stab_get(&h->vocab, s, n, &id)) {
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
            size_t k = strata_hfi_utf8_len(s + i, n - i, NULL);
            if (!k) k = 1; /* an invalid byte is a character of its own */
            int ok = 0;
            if (strata_hfi_stab_get(&h->vocab, s + i, k, &id)) {
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
    if (w < 0 || strata_hfi_push_ids(out, h->word, (size_t)w)) return HF_OOM;
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
    stab_slot *slot = strata_hfi_stab_add(&h->cache, s, n, hash);
    if (!slot) return HF_OOM;
    slot->v0 = (uint32_t)h->cache_ids_n;
    slot->v1 = (uint32_t)w;
    memcpy(h->cache_ids + h->cache_ids_n, h->word, (size_t)w * sizeof *h->word);
    h->cache_ids_n += (size_t)w;
    return 0;
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
            if (strata_hfi_stab_get(&h->added_tab, r + i, l, &k)) {
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

void strata_hfi_doc_reset(strata_hf *h)
{
    h->raw.n = 0;
    h->norm_buf.n = 0;
    h->seg_fresh = 1;
    h->seg_at_doc_start = 1;
    h->norm_at_doc_start = 1;
}

strata_err strata_hf_encode(strata_hf *h, const uint8_t *s, size_t n, int more, strata_tokens *out)
{
    if (strata_hfi_buf_put(&h->raw, s, n)) return strata_hfi_oom();
    strata_err e = strata_ok();
    const uint8_t *r = h->raw.p;
    size_t N = h->raw.n, pos = 0;
    size_t hold = h->added_max ? h->added_max - 1 : 0;
    size_t limit = !more ? N : N > hold ? N - hold : 0;
    size_t at, len;
    uint32_t id;
    while (find_added(h, r, pos, limit, N, &at, &len, &id)) {
        e = strata_hfi_norm_append(h, r + pos, at - pos);
        if (!e.code) e = strata_hfi_flush(h, 0, out);
        if (!e.code && strata_hfi_push_ids(out, &id, 1)) e = strata_hfi_oom();
        if (e.code) goto fail;
        pos = at + len;
        h->seg_fresh = 1;
        h->seg_at_doc_start = 0;
        h->norm_at_doc_start = 0;
    }
    if (!more) {
        e = strata_hfi_norm_append(h, r + pos, N - pos);
        if (!e.code) e = strata_hfi_flush(h, 0, out);
        strata_hfi_doc_reset(h);
        return e;
    }
    size_t c = safe_cut(h, r, pos, limit);
    e = strata_hfi_norm_append(h, r + pos, c - pos);
    if (!e.code) e = strata_hfi_flush(h, 2, out);
    if (e.code) goto fail;
    memmove(h->raw.p, h->raw.p + c, N - c);
    h->raw.n = N - c;
    return strata_ok();
fail:
    strata_hfi_doc_reset(h);
    return e;
}
