/* The KV cache of generation; see kv_cache.h. */
#include "strata/kv_cache.h"

#include <math.h>
#include <string.h>

void strata_kv_store(strata_kv_cache *kv, int l, const float *qkv, int qkv_stride, int n, int pos)
{
    int hs_nkv = kv->kv_dim;                            /* NKV hs */
    size_t q = (size_t)qkv_stride - 2 * (size_t)hs_nkv; /* NH hs: the keys follow the queries */
    for (int i = 0; i < n; i++) {
        const float *row = qkv + (size_t)i * qkv_stride;
        memcpy(strata_kv_k(kv, l, pos + i), row + q, (size_t)hs_nkv * sizeof(float));
        memcpy(strata_kv_v(kv, l, pos + i), row + q + hs_nkv, (size_t)hs_nkv * sizeof(float));
    }
}

/* One query head at position p: softmax over the cached keys [lo, p], then
 * the weighted sum of the values, with the row maximum subtracted as the
 * training kernel does. */
void strata_kv_attention(float *out, const float *qkv, int qkv_stride, const strata_kv_cache *kv,
                         int l, int n, int pos, int NH, int NKV, int hs, int window, float scale,
                         float *scores)
{
    int group = NH / NKV;
    for (int i = 0; i < n; i++) {
        int p = pos + i, lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)i * qkv_stride + (size_t)h * hs;
            size_t kv_off = (size_t)(h / group) * hs;
            float mx = -INFINITY;
            for (int j = lo; j <= p; j++) {
                const float *k = strata_kv_k(kv, l, j) + kv_off;
                float s = 0.0f;
                for (int c = 0; c < hs; c++) s += q[c] * k[c];
                scores[j] = s * scale;
                if (scores[j] > mx) mx = scores[j];
            }
            float sum = 0.0f;
            for (int j = lo; j <= p; j++) sum += scores[j] = expf(scores[j] - mx);
            float *o = out + (size_t)i * NH * hs + (size_t)h * hs;
            memset(o, 0, (size_t)hs * sizeof(float));
            for (int j = lo; j <= p; j++) {
                const float *v = strata_kv_v(kv, l, j) + kv_off;
                float w = scores[j] / sum;
                for (int c = 0; c < hs; c++) o[c] += w * v[c];
            }
        }
    }
}

