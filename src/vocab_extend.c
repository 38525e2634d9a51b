/* Vocabulary extension; see vocab_extend.h. */
#include "strata/vocab_extend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/rng.h"

/* A token's bytes for a message: printable ASCII as is, the rest \xNN,
 * quoted, cut at 40 bytes; "(none)" for an empty id. */
static const char *show_token(const uint8_t *p, size_t n, char *buf, size_t cap)
{
    if (!p) return "(none)";
    size_t k = 0;
    buf[k++] = '\'';
    for (size_t i = 0; i < n && i < 40 && k + 6 < cap; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\'' && p[i] != '\\')
            buf[k++] = (char)p[i];
        else
            k += (size_t)snprintf(buf + k, cap - k, "\\x%02x", p[i]);
    }
    if (n > 40 && k + 4 < cap) buf[k++] = '.', buf[k++] = '.', buf[k++] = '.';
    buf[k++] = '\'';
    buf[k] = 0;
    return buf;
}

strata_err strata_vocab_check_tokenizers(const strata_tokenizer *old_tok,
                                         const strata_tokenizer *new_tok, const char *old_name,
                                         const char *new_name, int model_vocab)
{
    int k0 = strata_tokenizer_vocab_size(old_tok), k1 = strata_tokenizer_vocab_size(new_tok);
    if (k0 > model_vocab)
        return strata_errorf(STRATA_EINPUT,
                             "%s: the old tokenizer has %d ids but the model only %d rows (is it "
                             "the model's tokenizer?)",
                             old_name, k0, model_vocab);
    if (k1 <= k0)
        return strata_errorf(STRATA_EINPUT,
                             "%s: %d ids, the old tokenizer %s has %d: it adds no token", new_name,
                             k1, old_name, k0);
    for (int id = 0; id < k0; id++) {
        size_t na = 0, nb = 0;
        const uint8_t *a = strata_tokenizer_token_bytes(old_tok, (uint32_t)id, &na);
        const uint8_t *b = strata_tokenizer_token_bytes(new_tok, (uint32_t)id, &nb);
        if ((!a && !b) || (a && b && na == nb && !memcmp(a, b, na))) continue;
        char sa[256], sb[256];
        return strata_errorf(STRATA_EINPUT,
                             "%s: renumbers id %d: it is %s there but %s in the old tokenizer %s "
                             "(new tokens must take ids from %d up)",
                             new_name, id, show_token(b, nb, sb, sizeof sb),
                             show_token(a, na, sa, sizeof sa), old_name, k0);
    }
    return strata_ok();
}

/* Rows [0, k0) copied, [k0, k1) the mean of [0, k0) plus noise, the rest of
 * the old rows copied; dst's padding is already zero. */
static int grow_matrix(const float *src, int v0, float *dst, int k0, int k1, int C, float noise,
                       uint64_t seed, int role)
{
    memcpy(dst, src, (size_t)v0 * C * sizeof(float));
    double *mean = calloc((size_t)C, sizeof(double));
    if (!mean) return -1;
    for (int r = 0; r < k0; r++)
        for (int j = 0; j < C; j++) mean[j] += src[(size_t)r * C + j];
    for (int j = 0; j < C; j++) mean[j] /= k0;
    for (int r = k0; r < k1; r++)
        for (int j = 0; j < C; j++) {
            float z = noise > 0 ? noise * strata_rng_normal(strata_rng_u64(
                                              seed, (uint64_t)role, (uint64_t)r, (uint64_t)j))
                                : 0.0f;
            dst[(size_t)r * C + j] = (float)mean[j] + z;
        }
    free(mean);
    return 0;
}

strata_err strata_vocab_extend(strata_model *m, int old_tokens, int new_tokens, float noise,
                               uint64_t seed, strata_model **out)
{
    *out = NULL;
    strata_model_shape s = *strata_model_get_shape(m);
    int v0 = s.vocab_size, C = s.n_embd;
    if (old_tokens < 1 || old_tokens > v0 || new_tokens <= old_tokens || !(noise >= 0))
        return strata_errorf(STRATA_EINPUT,
                             "vocabulary extension from %d to %d ids of a model with %d rows "
                             "(noise %g) is not possible",
                             old_tokens, new_tokens, v0, (double)noise);
    s.vocab_size = new_tokens > v0 ? new_tokens : v0;
    strata_model *x = NULL;
    STRATA_TRY(strata_model_create(&x, &s));
    const float *src = strata_model_params(m);
    float *dst = strata_model_params(x);
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *a = strata_model_tensor(m, i), *b = strata_model_tensor(x, i);
        if (a->role == STRATA_ROLE_TOKEN_EMBED || a->role == STRATA_ROLE_LM_HEAD) {
            if (grow_matrix(src + a->offset, v0, dst + b->offset, old_tokens, new_tokens, C, noise,
                            seed, a->role)) {
                strata_model_free(x);
                return strata_errorf(STRATA_ENOMEM, "out of memory");
            }
        } else
            memcpy(dst + b->offset, src + a->offset, a->numel * sizeof(float));
    }
    *out = x;
    return strata_ok();
}

int strata_vocab_lr_groups(const strata_model *m, long first_new, double mult, long until_step,
                           long step, strata_param_group *groups, int n)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    if (first_new <= 0 || first_new >= s->vocab_size || (until_step > 0 && step >= until_step))
        return n;
    int out = n;
    /* Walk backwards so each split only shifts the groups above it. */
    for (int g = n - 1; g >= 0; g--) {
        const strata_tensor *t = NULL;
        for (int i = 0; i < strata_model_n_tensors(m) && !t; i++) {
            const strata_tensor *c = strata_model_tensor(m, i);
            if (c->offset == groups[g].begin &&
                (c->role == STRATA_ROLE_TOKEN_EMBED || c->role == STRATA_ROLE_LM_HEAD))
                t = c;
        }
        if (!t) continue;
        memmove(&groups[g + 2], &groups[g + 1], (size_t)(out - g - 1) * sizeof *groups);
        groups[g + 1] = groups[g];
        groups[g + 1].begin = groups[g].end = t->offset + (size_t)first_new * s->n_embd;
        groups[g + 1].lr_mult = (float)(groups[g].lr_mult * mult);
        out++;
    }
    return out;
}
