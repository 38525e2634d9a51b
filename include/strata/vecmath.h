/* vecmath.h — small inline math shared by the kernels: an exp that
 * vectorises and a row maximum, both branch-free.
 */
#ifndef STRATA_VECMATH_H
#define STRATA_VECMATH_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

/* exp(x) to about 1 ulp, branch-free so loops that call it vectorise (glibc's
 * expf is a scalar call): x = n ln2 + r with |r| <= ln2/2, exp(r) by its
 * degree-6 Taylor polynomial (error r^7/7! < 2e-7 relative), 2^n put
 * straight into the exponent bits. Inputs below -87 give ~1e-38, not 0. */
static inline float exp_approx(float x)
{
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float n = floorf(x * 1.44269504f + 0.5f);
    float r = x - n * 0.693145752f - n * 1.42860677e-06f;
    float p =
        1.0f +
        r * (1.0f +
             r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* max(x[0..n)). GCC vectorises a max reduction only under
 * -ffinite-math-only, and a scalar pass over the logits cost half of the
 * cross-entropy, so with AVX it is spelled out: two running 8-lane maxima. */
static inline float row_max(const float *x, int n)
{
    float mx = -FLT_MAX;
    int j = 0;
#ifdef __AVX__
    __m256 m0 = _mm256_set1_ps(-FLT_MAX), m1 = m0;
    for (; j + 16 <= n; j += 16) {
        m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
        m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8));
    }
    float lane[8];
    _mm256_storeu_ps(lane, _mm256_max_ps(m0, m1));
    for (int k = 0; k < 8; k++) mx = lane[k] > mx ? lane[k] : mx;
#endif
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

#endif
