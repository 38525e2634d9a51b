/* Hooked allocations; see mem.h. */
#include "strata/mem.h"

#include <stdatomic.h>
#include <stdlib.h>

static atomic_long fail_at;  /* 0: off; else the count at which failing starts */
static atomic_long n_allocs; /* hooked allocations since the last strata_mem_fail_after */

static int must_fail(void)
{
    long k = atomic_fetch_add(&n_allocs, 1) + 1, at = atomic_load(&fail_at);
    return at > 0 && k >= at;
}

void *strata_malloc(size_t n) { return must_fail() ? NULL : malloc(n ? n : 1); }

void *strata_calloc(size_t count, size_t size)
{
    return must_fail() ? NULL : calloc(count ? count : 1, size ? size : 1);
}

void strata_free(void *p) { free(p); }

long strata_mem_fail_after(long n)
{
    long made = atomic_exchange(&n_allocs, 0);
    atomic_store(&fail_at, n > 0 ? n : 0);
    return made;
}
