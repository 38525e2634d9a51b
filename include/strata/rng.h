/* rng.h — counter-based random numbers.
 *
 * Every random number strata draws is a pure function of a key and a
 * counter, never of a hidden state: the sampler's choice for slot j of step
 * s, an initial weight, a dropout mask bit. So any rank can compute any draw
 * without talking to the others, and a resumed run draws exactly what an
 * uninterrupted one would. The mixer is SplitMix64's finaliser applied in a
 * chain, which passes BigCrush for sequential counters.
 */
#ifndef STRATA_RNG_H
#define STRATA_RNG_H

#include <stdint.h>

static inline uint64_t strata_mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A 64-bit draw keyed by (seed, a, b, c). */
static inline uint64_t strata_rng_u64(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    return strata_mix64(strata_mix64(strata_mix64(seed ^ 0x5eed5eed5eedull) ^ a) ^ b) ^
           strata_mix64(c + 0x632be59bd9b4e019ull);
}

/* Uniform in [0, 1) with 24 bits, exact in float. */
static inline float strata_rng_uniform(uint64_t bits) { return (float)(bits >> 40) * 0x1p-24f; }

/* Uniform integer in [0, n), n > 0 (Lemire's multiply; bias < n / 2^64). */
static inline uint64_t strata_rng_below(uint64_t bits, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)bits * n) >> 64);
}

/* Standard normal from one 64-bit draw (Box-Muller on its two halves). */
float strata_rng_normal(uint64_t bits);

#endif
