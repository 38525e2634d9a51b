/* bpe.h — pieces both BPE tokenizers (io/tokenizer.c's GPT-2 files and
 * io/tokenizer_hf.c's tokenizer.json) share: growable arrays, GPT-2's
 * byte <-> unicode map, the merge-pair hash and the min-heap of (rank,
 * position) keys that drives merging. Internal to io/.
 */
#ifndef STRATA_IO_BPE_H
#define STRATA_IO_BPE_H

#include <stddef.h>
#include <stdint.h>

/* Makes *p hold at least need elements of elem bytes (doubling); -1 when out
 * of memory, *p unchanged. */
int strata_bpe_grow(void **p, size_t *cap, size_t need, size_t elem);

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the others for 256 + n in order; u2b is the inverse (-1 elsewhere). */
void strata_bpe_byte_unicode_tables(uint32_t b2u[256], int u2b[324]);

/* Makes the symbol arrays of a piece (symbol ids, previous and next links)
 * hold at least n entries (64, or twice n, when they grow); -1 when out of
 * memory, the arrays grown so far kept. */
int strata_bpe_grow_symbols(uint32_t **sym, int32_t **prev, int32_t **next, size_t *cap, size_t n);

/* A 64-bit merge-pair key to a table slot (Fibonacci hashing). */
static inline size_t strata_bpe_pair_hash(uint64_t k)
{
    k *= 0x9E3779B97F4A7C15ull;
    return (size_t)(k ^ (k >> 29));
}

/* A binary min-heap of n keys in hp. */
void strata_bpe_heap_push(uint64_t *hp, size_t *n, uint64_t v);
uint64_t strata_bpe_heap_pop(uint64_t *hp, size_t *n);

#endif
