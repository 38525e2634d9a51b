/* kv_cache.h — the keys and values of the positions a generator has fed,
 * shared by generate.c and the families' decode entries (family.h).
 *
 * For every layer l and position t < max_T: k(l, t), v(l, t), each NKV hs
 * floats (keys after QK-norm and RoPE). Attention of a query at position p
 * reads positions [lo, p], lo = max(0, p - W + 1) with a sliding window W
 * (0: none):
 *   S_j = scale q . k_j,  out = sum_j softmax(S)_j v_j
 * query head h reading kv head h / (NH / NKV).
 */
#ifndef STRATA_KV_CACHE_H
#define STRATA_KV_CACHE_H

#include <stddef.h>

typedef struct strata_kv_cache {
    int n_layer, max_T, kv_dim; /* kv_dim = NKV hs */
    float *k, *v;               /* (L, max_T, kv_dim) each */
} strata_kv_cache;

static inline float *strata_kv_k(const strata_kv_cache *kv, int l, int t)
{
    return kv->k + ((size_t)l * kv->max_T + t) * kv->kv_dim;
}
static inline float *strata_kv_v(const strata_kv_cache *kv, int l, int t)
{
    return kv->v + ((size_t)l * kv->max_T + t) * kv->kv_dim;
}

/* Stores the keys and values of n rows of a fused qkv buffer (rows of
 * qkv_stride floats: NH query heads, then NKV key heads, then NKV value
 * heads, the first NH hs floats) at positions pos..pos+n-1 of layer l. */
void strata_kv_store(strata_kv_cache *kv, int l, const float *qkv, int qkv_stride, int n, int pos);
/* Attention of n query rows (the query heads at the start of each qkv row)
 * at positions pos..pos+n-1 over layer l's cache, which already holds
 * them: out (n, NH hs). scores holds pos + n floats. */
void strata_kv_attention(float *out, const float *qkv, int qkv_stride, const strata_kv_cache *kv,
                         int l, int n, int pos, int NH, int NKV, int hs, int window, float scale,
                         float *scores);

#endif
