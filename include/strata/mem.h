/* mem.h — the allocations whose failure strata reports, and a hook that
 * makes them fail on purpose.
 *
 * Large buffers (model arenas, gradient accumulation, optimizer state
 * copies, evaluation rows) go through strata_malloc/strata_calloc so that a
 * test can force out-of-memory at the n-th one and check that it comes back
 * as STRATA_ENOMEM with its message, not as a crash or a wrong number. In
 * normal runs the hook is off and these are malloc/calloc.
 */
#ifndef STRATA_MEM_H
#define STRATA_MEM_H

#include <stddef.h>

void *strata_malloc(size_t n);
void *strata_calloc(size_t count, size_t size);
void strata_free(void *p);

/* Test hook: the n-th hooked allocation from now (1 = the next one) and
 * every later one return NULL; n <= 0 turns the hook off. Returns the
 * number of hooked allocations made since the last call. */
long strata_mem_fail_after(long n);

#endif
