/* gpt2_reference.h — a naive double-precision GPT-2 for the tests that check
 * strata's model against the math alone (test_model_gradcheck.c,
 * test_dropout.c), and the random tiny models they run it on.
 *
 * The reference runs one sequence at a time in plain loops and reads strata's
 * parameter buffer only through the tensor table, so it checks the layout as
 * well as the arithmetic. It takes optional dropout factors at GPT-2's four
 * sites (the embedding sum, the attention probabilities after the softmax,
 * the outputs of attn.c_proj and mlp.c_proj before the residual add); without
 * them it is the plain model. Everything here is static and test-only:
 * include it once, after cmocka.h.
 */
#ifndef STRATA_TESTS_GPT2_REFERENCE_H
#define STRATA_TESTS_GPT2_REFERENCE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/model.h"
#include "strata/rng.h"

/* A block's tensors; the reference finds each in the table by name. */
enum {
    R_LN1_W,
    R_LN1_B,
    R_QKV_W,
    R_QKV_B,
    R_PROJ_W,
    R_PROJ_B,
    R_LN2_W,
    R_LN2_B,
    R_FC_W,
    R_FC_B,
    R_FCPROJ_W,
    R_FCPROJ_B,
    R_NBLOCK
};
static const char *ref_block_names[R_NBLOCK] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias",
};

#define REF_MAX_L 8
typedef struct ref_net {
    int L, C, NH, V;
    size_t wte, wpe, lnf_w, lnf_b; /* offsets into the parameter buffer */
    size_t blk[REF_MAX_L][R_NBLOCK];
    /* How ref_loss adds up the B*T cross-entropies: 0, in one running sum
     * (test_dropout.c); 1, per sequence, then the sequences
     * (test_model_gradcheck.c). The orders differ only in a double's last
     * bits, but finite differences of step 1e-5 carry those into the third
     * digit of the errors the tests print: each test keeps its own, so its
     * figures stay comparable from run to run. */
    int sum_per_sequence;
} ref_net;

/* The factors strata multiplied each element by, per site (NULL: none). */
typedef struct ref_masks {
    double *emb;                /* (B, T, C) */
    double *att[REF_MAX_L];     /* (B, NH, T, T) */
    double *attproj[REF_MAX_L]; /* (B, T, C) */
    double *mlpproj[REF_MAX_L]; /* (B, T, C) */
} ref_masks;

static size_t ref_offset_of(const strata_model *m, const char *name, size_t numel)
{
    const strata_tensor *t = strata_model_find(m, name);
    if (!t) fail_msg("tensor %s missing from the table", name);
    assert_int_equal(t->numel, numel);
    return t->offset;
}

/* Where every tensor lies in strata's buffer, each checked for its size. */
static ref_net ref_from_model(const strata_model *m)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    ref_net r = {.L = s->n_layer, .C = s->n_embd, .NH = s->n_head, .V = s->vocab_size};
    size_t C = (size_t)r.C;
    assert_true(r.L <= REF_MAX_L);
    r.wte = ref_offset_of(m, "wte.weight", (size_t)r.V * C);
    r.wpe = ref_offset_of(m, "wpe.weight", (size_t)s->block_size * C);
    r.lnf_w = ref_offset_of(m, "ln_f.weight", C);
    r.lnf_b = ref_offset_of(m, "ln_f.bias", C);
    const size_t numel[R_NBLOCK] = {C, C, 3 * C * C, 3 * C, C * C,     C,
                                    C, C, 4 * C * C, 4 * C, 4 * C * C, C};
    for (int l = 0; l < r.L; l++)
        for (int i = 0; i < R_NBLOCK; i++) {
            char name[64];
            snprintf(name, sizeof name, "h.%d.%s", l, ref_block_names[i]);
            r.blk[l][i] = ref_offset_of(m, name, numel[i]);
        }
    return r;
}

static void ref_layernorm(double *y, const double *x, const double *w, const double *b, int C)
{
    double mean = 0, var = 0;
    for (int c = 0; c < C; c++) mean += x[c];
    mean /= C;
    for (int c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
    var /= C;
    double rstd = 1.0 / sqrt(var + 1e-5);
    for (int c = 0; c < C; c++) y[c] = (x[c] - mean) * rstd * w[c] + b[c];
}

/* y (out) = W (out, in) x + bias */
static void ref_linear(double *y, const double *x, const double *W, const double *bias, int in,
                       int out)
{
    for (int o = 0; o < out; o++) {
        double s = bias[o];
        for (int i = 0; i < in; i++) s += W[(size_t)o * in + i] * x[i];
        y[o] = s;
    }
}

static double ref_gelu(double x)
{
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* Causal attention of one sequence: qkv (T, 3C) = [q | k | v]; out (T, C).
 * The AV product uses the probabilities times mask (NH, T, T) when mask is
 * not NULL. probs (NH, T, T), when not NULL, gets the undropped
 * probabilities, zero above the diagonal. */
static void ref_attention(double *out, double *probs, const double *qkv, const double *mask, int T,
                          int C, int NH)
{
    int hs = C / NH;
    double scale = 1.0 / sqrt((double)hs);
    double *p = malloc((size_t)T * sizeof *p);
    for (int h = 0; h < NH; h++)
        for (int t = 0; t < T; t++) {
            const double *q = qkv + (size_t)t * 3 * C + h * hs;
            double mx = -INFINITY;
            for (int j = 0; j <= t; j++) {
                const double *k = qkv + (size_t)j * 3 * C + C + h * hs;
                double s = 0;
                for (int i = 0; i < hs; i++) s += q[i] * k[i];
                p[j] = s * scale;
                if (p[j] > mx) mx = p[j];
            }
            double sum = 0;
            for (int j = 0; j <= t; j++) sum += p[j] = exp(p[j] - mx);
            for (int j = 0; j <= t; j++) p[j] /= sum;
            if (probs)
                for (int j = 0; j < T; j++) probs[((size_t)h * T + t) * T + j] = j <= t ? p[j] : 0;
            const double *mrow = mask ? mask + ((size_t)h * T + t) * T : NULL;
            for (int i = 0; i < hs; i++) {
                double o = 0;
                for (int j = 0; j <= t; j++)
                    o +=
                        p[j] * (mrow ? mrow[j] : 1.0) * qkv[(size_t)j * 3 * C + 2 * C + h * hs + i];
                out[(size_t)t * C + h * hs + i] = o;
            }
        }
    free(p);
}

/* The backward of ref_attention for one sequence, written from the
 * definitions, with Pd = P * mask (mask NULL: all ones):
 *   dPd[t,j] = dO[t].v[j]    dv[j] += Pd[t,j] dO[t]    dP = dPd * mask
 *   dS[t,j] = P[t,j] (dP[t,j] - sum_k P[t,k] dP[t,k])
 *   dq[t] += scale dS[t,j] k[j]    dk[j] += scale dS[t,j] q[t]
 * probs (NH, T, T) are the undropped probabilities ref_attention stored;
 * dqkv (T, 3C) is added to. */
static void ref_attention_backward(double *dqkv, const double *probs, const double *mask,
                                   const float *dout, const double *qkv, int T, int C, int NH)
{
    int hs = C / NH;
    double scale = 1.0 / sqrt((double)hs);
    double *dP = malloc((size_t)T * sizeof *dP);
    for (int h = 0; h < NH; h++)
        for (int t = 0; t < T; t++) {
            const double *P = probs + ((size_t)h * T + t) * T;
            const double *M = mask ? mask + ((size_t)h * T + t) * T : NULL;
            const float *dO = dout + (size_t)t * C + h * hs;
            double dot = 0;
            for (int j = 0; j <= t; j++) {
                double m = M ? M[j] : 1.0, s = 0;
                for (int i = 0; i < hs; i++)
                    s += dO[i] * qkv[(size_t)j * 3 * C + 2 * C + h * hs + i];
                dP[j] = s * m;
                dot += P[j] * dP[j];
                for (int i = 0; i < hs; i++)
                    dqkv[(size_t)j * 3 * C + 2 * C + h * hs + i] += P[j] * m * dO[i];
            }
            for (int j = 0; j <= t; j++) {
                double dS = P[j] * (dP[j] - dot) * scale;
                for (int i = 0; i < hs; i++) {
                    dqkv[(size_t)t * 3 * C + h * hs + i] +=
                        dS * qkv[(size_t)j * 3 * C + C + h * hs + i];
                    dqkv[(size_t)j * 3 * C + C + h * hs + i] +=
                        dS * qkv[(size_t)t * 3 * C + h * hs + i];
                }
            }
        }
    free(dP);
}

static const double *ref_at(const double *mask, size_t offset)
{
    return mask ? mask + offset : NULL;
}

/* Mean cross-entropy over B*T positions. lm_head (V, C) is the lm head's
 * weight when untied (to isolate its share of wte's gradient); NULL ties it
 * to wte as GPT-2 does. mk holds dropout factors (NULL: no dropout).
 * seq_loss (B) gets each sequence's mean when not NULL. */
static double ref_loss(const ref_net *r, const double *p, const double *lm_head,
                       const ref_masks *mk, const uint32_t *inp, const uint32_t *tgt, int B, int T,
                       double *seq_loss)
{
    int C = r->C, V = r->V, NH = r->NH;
    double *x = malloc((size_t)T * C * sizeof *x), *ln = malloc((size_t)T * C * sizeof *ln);
    double *qkv = malloc((size_t)T * 3 * C * sizeof *qkv), *y = malloc((size_t)T * C * sizeof *y);
    double *hid = malloc((size_t)T * 4 * C * sizeof *hid), *tmp = malloc((size_t)C * sizeof *tmp);
    double *logits = malloc((size_t)V * sizeof *logits);
    const double *lm = lm_head ? lm_head : p + r->wte;
    double total = 0;
    for (int b = 0; b < B; b++) {
        size_t tc = (size_t)b * T * C;
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                double e =
                    p[r->wte + (size_t)inp[b * T + t] * C + c] + p[r->wpe + (size_t)t * C + c];
                x[t * C + c] = mk && mk->emb ? e * mk->emb[tc + (size_t)t * C + c] : e;
            }
        for (int l = 0; l < r->L; l++) {
            const size_t *o = r->blk[l];
            const double *m_att = mk ? ref_at(mk->att[l], (size_t)b * NH * T * T) : NULL;
            const double *m_ap = mk ? ref_at(mk->attproj[l], tc) : NULL;
            const double *m_mp = mk ? ref_at(mk->mlpproj[l], tc) : NULL;
            for (int t = 0; t < T; t++) {
                ref_layernorm(ln + t * C, x + t * C, p + o[R_LN1_W], p + o[R_LN1_B], C);
                ref_linear(qkv + (size_t)t * 3 * C, ln + t * C, p + o[R_QKV_W], p + o[R_QKV_B], C,
                           3 * C);
            }
            ref_attention(y, NULL, qkv, m_att, T, C, NH);
            for (int t = 0; t < T; t++) {
                ref_linear(tmp, y + t * C, p + o[R_PROJ_W], p + o[R_PROJ_B], C, C);
                for (int c = 0; c < C; c++) x[t * C + c] += tmp[c] * (m_ap ? m_ap[t * C + c] : 1.0);
            }
            for (int t = 0; t < T; t++) {
                ref_layernorm(ln + t * C, x + t * C, p + o[R_LN2_W], p + o[R_LN2_B], C);
                double *h = hid + (size_t)t * 4 * C;
                ref_linear(h, ln + t * C, p + o[R_FC_W], p + o[R_FC_B], C, 4 * C);
                for (int i = 0; i < 4 * C; i++) h[i] = ref_gelu(h[i]);
                ref_linear(tmp, h, p + o[R_FCPROJ_W], p + o[R_FCPROJ_B], 4 * C, C);
                for (int c = 0; c < C; c++) x[t * C + c] += tmp[c] * (m_mp ? m_mp[t * C + c] : 1.0);
            }
        }
        double seq = 0;
        for (int t = 0; t < T; t++) {
            ref_layernorm(ln, x + t * C, p + r->lnf_w, p + r->lnf_b, C);
            double mx = -INFINITY;
            for (int v = 0; v < V; v++) {
                double s = 0;
                for (int c = 0; c < C; c++) s += lm[(size_t)v * C + c] * ln[c];
                logits[v] = s;
                if (s > mx) mx = s;
            }
            double sum = 0;
            for (int v = 0; v < V; v++) sum += exp(logits[v] - mx);
            double l = log(sum) + mx - logits[tgt[b * T + t]];
            seq += l;
            if (!r->sum_per_sequence) total += l;
        }
        if (r->sum_per_sequence) total += seq;
        if (seq_loss) seq_loss[b] = seq / T;
    }
    free(x), free(ln), free(qkv), free(y), free(hid), free(tmp), free(logits);
    return total / ((double)B * T);
}

/* d ref_loss / d *x by a central difference of step h, x being an entry of
 * p or of lm_head; *x is left as it was. */
static double ref_loss_fd(const ref_net *r, const double *p, const double *lm_head,
                          const ref_masks *mk, const uint32_t *inp, const uint32_t *tgt, int B,
                          int T, double *x, double h)
{
    double x0 = *x;
    *x = x0 + h;
    double lp = ref_loss(r, p, lm_head, mk, inp, tgt, B, T, NULL);
    *x = x0 - h;
    double lm = ref_loss(r, p, lm_head, mk, inp, tgt, B, T, NULL);
    *x = x0;
    return (lp - lm) / (2 * h);
}

/* |a - b| relative to the larger of the two, or to den_floor if that is larger. */
static double rel_err(double a, double b, double den_floor)
{
    double d = fmax(fmax(fabs(a), fabs(b)), den_floor);
    return fabs(a - b) / d;
}

/* Entry j of tensor t to check: the first (j = 0), the last (j = 1), or
 * one drawn from seed. */
static size_t pick_entry(const strata_tensor *t, int j, uint64_t seed)
{
    if (j == 0) return 0;
    if (j == 1) return t->numel - 1;
    return (size_t)strata_rng_below(strata_rng_u64(seed, 3, (uint64_t)t->offset, (uint64_t)j),
                                    t->numel);
}

/* max |a - ref| / max |ref| over n values: strata's fp32 output against the
 * reference's. */
static double max_abs_normalised_error(const float *a, const double *ref, size_t n)
{
    double err = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(ref[i]));
        err = fmax(err, fabs(a[i] - ref[i]));
    }
    return err / mx;
}

/* An attention check on (B, T, C, NH) at the kernel level: random qkv and
 * dout drawn from seed, NaN in every output and scratch buffer (the kernels
 * must write before they read). The test runs strata's kernels on them, then
 * attention_case_compare runs the reference. */
typedef struct attention_case {
    int B, T, C, NH;
    size_t nqkv, nout, natt;
    float *qkv, *dout;              /* (B, T, 3C), (B, T, C): the inputs */
    float *out, *att, *datt, *dqkv; /* strata's outputs and scratch */
} attention_case;

static attention_case attention_case_make(int B, int T, int C, int NH, uint64_t seed)
{
    attention_case a = {.B = B, .T = T, .C = C, .NH = NH};
    a.nqkv = (size_t)B * T * 3 * C, a.nout = (size_t)B * T * C, a.natt = (size_t)B * NH * T * T;
    a.qkv = malloc(a.nqkv * sizeof *a.qkv), a.dout = malloc(a.nout * sizeof *a.dout);
    a.out = malloc(a.nout * sizeof *a.out), a.att = malloc(a.natt * sizeof *a.att);
    a.datt = malloc(a.natt * sizeof *a.datt), a.dqkv = malloc(a.nqkv * sizeof *a.dqkv);
    for (size_t i = 0; i < a.nqkv; i++)
        a.qkv[i] = 1.2f * strata_rng_normal(strata_rng_u64(seed, 0, i, 0));
    for (size_t i = 0; i < a.nout; i++)
        a.dout[i] = strata_rng_normal(strata_rng_u64(seed, 1, i, 0));
    for (size_t i = 0; i < a.nout; i++) a.out[i] = NAN;
    for (size_t i = 0; i < a.natt; i++) a.att[i] = a.datt[i] = NAN;
    for (size_t i = 0; i < a.nqkv; i++) a.dqkv[i] = NAN;
    return a;
}

static void attention_case_free(attention_case *a)
{
    free(a->qkv), free(a->dout), free(a->out), free(a->att), free(a->datt), free(a->dqkv);
}

/* strata's out and dqkv as max-abs-normalised errors, its probabilities
 * (at most 1) as the largest absolute error. */
typedef struct attention_errors {
    double out, att, dqkv;
} attention_errors;

/* The reference on each sequence of a, with mask (B, NH, T, T) on the
 * probabilities when not NULL, against what strata's kernels left in a. */
static attention_errors attention_case_compare(const attention_case *a, const double *mask)
{
    int T = a->T, C = a->C, NH = a->NH;
    double *qd = malloc(a->nqkv * sizeof *qd), *outd = malloc(a->nout * sizeof *outd);
    double *pd = malloc(a->natt * sizeof *pd), *dqd = calloc(a->nqkv, sizeof *dqd);
    for (size_t i = 0; i < a->nqkv; i++) qd[i] = a->qkv[i];
    for (int b = 0; b < a->B; b++) {
        const double *q = qd + (size_t)b * T * 3 * C;
        const double *mb = mask ? mask + (size_t)b * NH * T * T : NULL;
        double *P = pd + (size_t)b * NH * T * T;
        ref_attention(outd + (size_t)b * T * C, P, q, mb, T, C, NH);
        ref_attention_backward(dqd + (size_t)b * T * 3 * C, P, mb, a->dout + (size_t)b * T * C, q,
                               T, C, NH);
    }
    attention_errors e = {.out = max_abs_normalised_error(a->out, outd, a->nout),
                          .dqkv = max_abs_normalised_error(a->dqkv, dqd, a->nqkv)};
    for (size_t i = 0; i < a->natt; i++) e.att = fmax(e.att, fabs(a->att[i] - pd[i]));
    free(qd), free(outd), free(pd), free(dqd);
    return e;
}

/* ---------------------------------------------------------------------------
 * Tiny models with parameters far from GPT-2's tiny initialisation, so
 * attention is peaked, GELU is curved and every bias and LayerNorm weight
 * matters.
 */

static void randomise_params(strata_model *m, uint64_t seed)
{
    float *p = strata_model_params(m);
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        int ln_weight = strstr(t->name, "ln_") && strstr(t->name, ".weight");
        float std = t->ndim == 1 ? 0.1f : t->layer < 0 ? 0.3f : 1.0f / sqrtf((float)t->shape[1]);
        for (size_t k = 0; k < t->numel; k++)
            p[t->offset + k] = (ln_weight ? 1.0f : 0.0f) +
                               std * strata_rng_normal(strata_rng_u64(seed, 1, (uint64_t)i, k));
    }
}

static void random_tokens(uint32_t *tok, int n, int V, uint64_t seed)
{
    for (int i = 0; i < n; i++)
        tok[i] = (uint32_t)strata_rng_below(strata_rng_u64(seed, 2, (uint64_t)i, 0), (uint64_t)V);
}

/* strata's parameters as doubles, for the reference. */
static double *params_as_double(strata_model *m)
{
    size_t n = strata_model_n_floats(m);
    const float *p = strata_model_params(m);
    double *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = p[i];
    return d;
}

#endif
