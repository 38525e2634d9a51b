/* Shared BPE helpers; see io/bpe.h. */
#include "bpe.h"

#include <stdlib.h>

int strata_bpe_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

void strata_bpe_byte_unicode_tables(uint32_t b2u[256], int u2b[324])
{
    for (int i = 0; i < 324; i++) u2b[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        b2u[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        u2b[b2u[b]] = b;
    }
}

void strata_bpe_heap_push(uint64_t *hp, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (hp[p] <= v) break;
        hp[i] = hp[p];
        i = p;
    }
    hp[i] = v;
}

uint64_t strata_bpe_heap_pop(uint64_t *hp, size_t *n)
{
    uint64_t top = hp[0], v = hp[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && hp[c + 1] < hp[c]) c++;
        if (v <= hp[c]) break;
        hp[i] = hp[c];
        i = c;
    }
    if (m) hp[i] = v;
    return top;
}

int strata_bpe_grow_symbols(uint32_t **sym, int32_t **prev, int32_t **next, size_t *cap, size_t n)
{
    if (n <= *cap) return 0;
    size_t c = n < 64 ? 64 : 2 * n;
    uint32_t *sy = realloc(*sym, c * sizeof *sy);
    if (sy) *sym = sy;
    int32_t *p = sy ? realloc(*prev, c * sizeof *p) : NULL;
    if (p) *prev = p;
    int32_t *q = p ? realloc(*next, c * sizeof *q) : NULL;
    if (q) *next = q;
    if (!q) return -1;
    *cap = c;
    return 0;
}
