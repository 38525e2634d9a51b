/* test_llama_gradcheck.c — strata's llama family against a naive
 * double-precision reference written from the math alone (MODELS.md,
 * Hugging Face's modeling_llama / qwen2 / qwen3 / mistral semantics).
 *
 * The reference (plain loops in double, no strata kernel) reads strata's
 * parameter buffer only through the tensor table, by Hugging Face name, so
 * it checks the layout as well as the arithmetic; it computes RoPE's
 * inv_freq in double from the formulas of the default, linear and llama3
 * rope types. On tiny configs that between them switch on every feature of
 * the family:
 *
 *   (a) GQA with 3 query heads per kv head, q/k/v bias, llama3 rope scaling
 *       with all three bands (kept, interpolated, divided) among head_dim's
 *       frequencies, untied lm head, V = 70 (padded to 128);
 *   (b) Qwen3 per-head QK-norm, explicit head_dim != n_embd / n_head, linear
 *       rope scaling, tied lm head, sliding window 3 < T;
 *   (c) plain Llama: multi-head (NKV = NH), default rope, untied, a sliding
 *       window equal to T (no effect);
 *
 * it checks that strata's loss equals the reference's, that central finite
 * differences of the reference's mean loss w.r.t. EVERY parameter match
 * strata's analytic gradient tensor by tensor (||g - g_fd|| / ||g_fd||), and
 * that the padding rows of the embedding and the lm head get exactly zero
 * gradient.
 */
/* cmocka.h needs these four first. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "strata/model.h"
#include "strata/rng.h"

/* Finite differences in double: truncation ~ h^2 |f'''| and rounding
 * ~ 1e-16 |loss| / h are both orders of magnitude below fp32's own error. */
#define FD_STEP    1e-5
#define GRAD_RTOL  1e-3
#define LOSS_RTOL  1e-5
#define REF_MAX_L  4
#define REF_MAX_HS 64

/* ---------------------------------------------------------------------------
 * The configurations.
 */

typedef struct config {
    const char *name;
    strata_model_shape shape;
    int B, T;
    uint64_t seed;
    /* llama3: expect each of the three bands among the frequencies. */
    int want_llama3_bands;
} config;

static const config cfg_a = {
    .name = "(a) GQA 6/2, qkv bias, llama3 rope, untied",
    .shape = {.n_layer = 2,
              .n_head = 6,
              .n_kv_head = 2,
              .n_embd = 36, /* head_dim 6 by default: three frequencies */
              .ffn_dim = 24,
              .block_size = 16,
              .vocab_size = 70,
              .family = STRATA_FAMILY_LLAMA,
              .qkv_bias = 1,
              .tied = 0,
              .rope_theta = 10000.0,
              .rope_type = STRATA_ROPE_LLAMA3,
              .rope_factor = 8.0,
              .rope_low_freq_factor = 1.0,
              .rope_high_freq_factor = 4.0,
              /* wavelengths 2 pi, 135, 2917 against orig/high = 64 and
               * orig/low = 256: kept, interpolated (s = 0.30), divided. */
              .rope_original_max = 256},
    .B = 2,
    .T = 7,
    .seed = 0x11a3a01,
    .want_llama3_bands = 1,
};

static const config cfg_b = {
    .name = "(b) QK-norm, head_dim 6 != 16/4, linear rope, tied, window 3",
    .shape = {.n_layer = 2,
              .n_head = 4,
              .n_kv_head = 2,
              .n_embd = 16,
              .head_dim = 6,
              .ffn_dim = 20,
              .block_size = 16,
              .vocab_size = 70,
              .family = STRATA_FAMILY_LLAMA,
              .qk_norm = 1,
              .tied = 1,
              .sliding_window = 3,
              .norm_eps = 1e-6f,
              .rope_theta = 500.0,
              .rope_type = STRATA_ROPE_LINEAR,
              .rope_factor = 2.5},
    .B = 2,
    .T = 7,
    .seed = 0x11a3a02,
};

static const config cfg_c = {
    .name = "(c) MHA, default rope, untied, window = T",
    .shape = {.n_layer = 2,
              .n_head = 2,
              .n_embd = 12,
              .ffn_dim = 16,
              .block_size = 16,
              .vocab_size = 70,
              .family = STRATA_FAMILY_LLAMA,
              .tied = 0,
              .sliding_window = 7},
    .B = 2,
    .T = 7,
    .seed = 0x11a3a03,
};

/* ---------------------------------------------------------------------------
 * The reference: a llama-family forward in double over all B*T positions.
 */

enum {
    R_IN_NORM,
    R_Q_W,
    R_K_W,
    R_V_W,
    R_Q_B,
    R_K_B,
    R_V_B,
    R_Q_NORM,
    R_K_NORM,
    R_O_W,
    R_POST_NORM,
    R_GATE_W,
    R_UP_W,
    R_DOWN_W,
    R_NBLOCK
};
static const char *const ref_block_names[R_NBLOCK] = {
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
    "self_attn.q_norm.weight",
    "self_attn.k_norm.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
};

typedef struct ref_net {
    int L, C, NH, NKV, hs, I, V, W, qkv_bias, qk_norm, tied;
    double eps;
    double inv_freq[REF_MAX_HS / 2];
    size_t embed, final_norm, lm_head; /* offsets into the buffer */
    size_t blk[REF_MAX_L][R_NBLOCK];   /* SIZE_MAX: absent */
    int B, T;
    const uint32_t *inp, *tgt;
    double *xc; /* (L + 1, BT, C): each block's input, then the final norm's */
    double *x, *xn, *q, *k, *v, *att, *tmp, *g, *u, *logits;
} ref_net;

static size_t ref_offset(const strata_model *m, const char *name, int rows, int cols)
{
    const strata_tensor *t = strata_model_find(m, name);
    if (!t) fail_msg("tensor %s missing from the table", name);
    assert_int_equal(t->numel, (size_t)rows * (cols ? cols : 1));
    assert_int_equal(t->shape[0], rows);
    if (cols) assert_int_equal(t->shape[1], cols);
    assert_int_equal(t->ndim, cols ? 2 : 1);
    return t->offset;
}

/* inv_freq in double, from the formulas (MODELS.md); bands[0..2] count the
 * llama3 frequencies kept, interpolated and divided by the factor. */
static void ref_inv_freq(double *inv_freq, int bands[3], const strata_model_shape *s)
{
    int hs = s->head_dim;
    bands[0] = bands[1] = bands[2] = 0;
    for (int i = 0; i < hs / 2; i++) {
        double inv = 1.0 / pow(s->rope_theta, 2.0 * i / hs);
        if (s->rope_type == STRATA_ROPE_LINEAR) inv /= s->rope_factor;
        if (s->rope_type == STRATA_ROPE_LLAMA3) {
            double orig = s->rope_original_max, lo = s->rope_low_freq_factor,
                   hi = s->rope_high_freq_factor, wl = 2 * M_PI / inv;
            if (wl < orig / hi) {
                bands[0]++;
            } else if (wl > orig / lo) {
                inv /= s->rope_factor;
                bands[2]++;
            } else {
                double sm = (orig / wl - lo) / (hi - lo);
                inv = (1 - sm) * inv / s->rope_factor + sm * inv;
                bands[1]++;
            }
        }
        inv_freq[i] = inv;
    }
}

static ref_net ref_make(const strata_model *m, int B, int T, const uint32_t *inp,
                        const uint32_t *tgt, int bands[3])
{
    const strata_model_shape *s = strata_model_get_shape(m);
    ref_net r = {.L = s->n_layer,
                 .C = s->n_embd,
                 .NH = s->n_head,
                 .NKV = s->n_kv_head,
                 .hs = s->head_dim,
                 .I = s->ffn_dim,
                 .V = s->vocab_size,
                 .W = s->sliding_window,
                 .qkv_bias = s->qkv_bias,
                 .qk_norm = s->qk_norm,
                 .tied = s->tied,
                 .eps = s->norm_eps,
                 .B = B,
                 .T = T,
                 .inp = inp,
                 .tgt = tgt};
    assert_true(r.L <= REF_MAX_L && r.hs <= REF_MAX_HS);
    ref_inv_freq(r.inv_freq, bands, s);
    int C = r.C, QD = r.NH * r.hs, KD = r.NKV * r.hs, I = r.I;
    const int rows[R_NBLOCK] = {C, QD, KD, KD, QD, KD, KD, r.hs, r.hs, C, C, I, I, C};
    const int cols[R_NBLOCK] = {0, C, C, C, 0, 0, 0, 0, 0, QD, 0, C, C, I};
    r.embed = ref_offset(m, "model.embed_tokens.weight", r.V, C);
    r.final_norm = ref_offset(m, "model.norm.weight", C, 0);
    if (r.tied) {
        assert_null(strata_model_find(m, "lm_head.weight"));
        r.lm_head = r.embed;
    } else {
        r.lm_head = ref_offset(m, "lm_head.weight", r.V, C);
    }
    for (int l = 0; l < r.L; l++)
        for (int k = 0; k < R_NBLOCK; k++) {
            char name[96];
            snprintf(name, sizeof name, "model.layers.%d.%s", l, ref_block_names[k]);
            int present = (k >= R_Q_B && k <= R_V_B)         ? r.qkv_bias
                          : (k == R_Q_NORM || k == R_K_NORM) ? r.qk_norm
                                                             : 1;
            if (present) {
                r.blk[l][k] = ref_offset(m, name, rows[k], cols[k]);
            } else {
                assert_null(strata_model_find(m, name));
                r.blk[l][k] = SIZE_MAX;
            }
        }
    size_t BT = (size_t)B * T;
    r.xc = malloc((size_t)(r.L + 1) * BT * C * sizeof(double));
    r.x = malloc(BT * C * sizeof(double));
    r.xn = malloc((size_t)C * sizeof(double));
    r.q = malloc(BT * QD * sizeof(double));
    r.k = malloc(BT * KD * sizeof(double));
    r.v = malloc(BT * KD * sizeof(double));
    r.att = malloc(BT * QD * sizeof(double));
    r.tmp = malloc((size_t)(C > QD ? C : QD) * sizeof(double));
    r.g = malloc((size_t)I * sizeof(double));
    r.u = malloc((size_t)I * sizeof(double));
    r.logits = malloc((size_t)r.V * sizeof(double));
    return r;
}

static void ref_free(ref_net *r)
{
    free(r->xc), free(r->x), free(r->xn), free(r->q), free(r->k), free(r->v), free(r->att);
    free(r->tmp), free(r->g), free(r->u), free(r->logits);
}

/* y = w * (x / sqrt(mean(x^2) + eps)); y may be x. */
static void ref_rmsnorm(double *y, const double *x, const double *w, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = w[i] * (x[i] * r);
}

/* y (out) = W (out, in) x + bias (bias may be NULL) */
static void ref_linear(double *y, const double *x, const double *W, const double *bias, int in,
                       int out)
{
    for (int o = 0; o < out; o++) {
        double s = bias ? bias[o] : 0.0;
        const double *w = W + (size_t)o * in;
        for (int i = 0; i < in; i++) s += w[i] * x[i];
        y[o] = s;
    }
}

/* HF's rotate_half at position t: (a, b) = (x[i], x[i + hs/2]) ->
 * (a cos - b sin, b cos + a sin), angle t * inv_freq[i]. */
static void ref_rope(double *x, int hs, int t, const double *inv_freq)
{
    int half = hs / 2;
    for (int i = 0; i < half; i++) {
        double ang = t * inv_freq[i], c = cos(ang), s = sin(ang);
        double a = x[i], b = x[i + half];
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
    }
}

static double ref_silu(double g) { return g / (1.0 + exp(-g)); }

static const double *opt(const double *p, size_t off) { return off == SIZE_MAX ? NULL : p + off; }

/* One block on x (BT, C), in place. */
static void ref_block(ref_net *r, const double *p, int l)
{
    const size_t *o = r->blk[l];
    int C = r->C, hs = r->hs, NH = r->NH, NKV = r->NKV, I = r->I, T = r->T;
    int QD = NH * hs, KD = NKV * hs, BT = r->B * T, rep = NH / NKV;
    double *x = r->x;
    /* q, k, v of rms(x); QK-norm per head; RoPE on q and k */
    for (int n = 0; n < BT; n++) {
        double *q = r->q + (size_t)n * QD, *k = r->k + (size_t)n * KD, *v = r->v + (size_t)n * KD;
        ref_rmsnorm(r->xn, x + (size_t)n * C, p + o[R_IN_NORM], C, r->eps);
        ref_linear(q, r->xn, p + o[R_Q_W], opt(p, o[R_Q_B]), C, QD);
        ref_linear(k, r->xn, p + o[R_K_W], opt(p, o[R_K_B]), C, KD);
        ref_linear(v, r->xn, p + o[R_V_W], opt(p, o[R_V_B]), C, KD);
        if (r->qk_norm) {
            for (int h = 0; h < NH; h++)
                ref_rmsnorm(q + h * hs, q + h * hs, p + o[R_Q_NORM], hs, r->eps);
            for (int h = 0; h < NKV; h++)
                ref_rmsnorm(k + h * hs, k + h * hs, p + o[R_K_NORM], hs, r->eps);
        }
        int t = n % T;
        for (int h = 0; h < NH; h++) ref_rope(q + h * hs, hs, t, r->inv_freq);
        for (int h = 0; h < NKV; h++) ref_rope(k + h * hs, hs, t, r->inv_freq);
    }
    /* causal (sliding-window) attention; query head h reads kv head h / rep */
    double scale = 1.0 / sqrt((double)hs), sc[64];
    assert_true(T <= 64);
    for (int b = 0; b < r->B; b++)
        for (int h = 0; h < NH; h++) {
            int kvh = h / rep;
            for (int t = 0; t < T; t++) {
                const double *q = r->q + ((size_t)b * T + t) * QD + h * hs;
                int j0 = r->W > 0 && t - r->W + 1 > 0 ? t - r->W + 1 : 0;
                double mx = -INFINITY, sum = 0;
                for (int j = j0; j <= t; j++) {
                    const double *k = r->k + ((size_t)b * T + j) * KD + kvh * hs;
                    double s = 0;
                    for (int i = 0; i < hs; i++) s += q[i] * k[i];
                    sc[j] = s * scale;
                    mx = fmax(mx, sc[j]);
                }
                for (int j = j0; j <= t; j++) sum += sc[j] = exp(sc[j] - mx);
                double *out = r->att + ((size_t)b * T + t) * QD + h * hs;
                for (int i = 0; i < hs; i++) {
                    double acc = 0;
                    for (int j = j0; j <= t; j++)
                        acc += sc[j] / sum * r->v[((size_t)b * T + j) * KD + kvh * hs + i];
                    out[i] = acc;
                }
            }
        }
    /* residual after o_proj, then the SwiGLU MLP */
    for (int n = 0; n < BT; n++) {
        double *xr = x + (size_t)n * C;
        ref_linear(r->tmp, r->att + (size_t)n * QD, p + o[R_O_W], NULL, QD, C);
        for (int c = 0; c < C; c++) xr[c] += r->tmp[c];
        ref_rmsnorm(r->xn, xr, p + o[R_POST_NORM], C, r->eps);
        ref_linear(r->g, r->xn, p + o[R_GATE_W], NULL, C, I);
        ref_linear(r->u, r->xn, p + o[R_UP_W], NULL, C, I);
        for (int i = 0; i < I; i++) r->g[i] = ref_silu(r->g[i]) * r->u[i];
        ref_linear(r->tmp, r->g, p + o[R_DOWN_W], NULL, I, C);
        for (int c = 0; c < C; c++) xr[c] += r->tmp[c];
    }
}

/* Mean cross-entropy over the B*T positions, starting from block l0's input
 * (l0 = 0: the embedding lookup; l0 = L: the final norm) as cached by the
 * last call with store = 1, which caches every block's input. seq_loss (B)
 * gets each sequence's mean when not NULL. */
static double ref_loss(ref_net *r, const double *p, int l0, int store, double *seq_loss)
{
    int C = r->C, V = r->V, T = r->T, BT = r->B * T;
    size_t nx = (size_t)BT * C;
    if (l0 == 0) {
        for (int n = 0; n < BT; n++)
            memcpy(r->x + (size_t)n * C, p + r->embed + (size_t)r->inp[n] * C,
                   (size_t)C * sizeof(double));
    } else {
        memcpy(r->x, r->xc + (size_t)l0 * nx, nx * sizeof(double));
    }
    for (int l = l0; l < r->L; l++) {
        if (store) memcpy(r->xc + (size_t)l * nx, r->x, nx * sizeof(double));
        ref_block(r, p, l);
    }
    if (store) memcpy(r->xc + (size_t)r->L * nx, r->x, nx * sizeof(double));
    const double *lm = p + r->lm_head;
    double total = 0;
    for (int b = 0; b < r->B; b++) {
        double seq = 0;
        for (int t = 0; t < T; t++) {
            int n = b * T + t;
            ref_rmsnorm(r->xn, r->x + (size_t)n * C, p + r->final_norm, C, r->eps);
            double mx = -INFINITY, sum = 0;
            for (int v = 0; v < V; v++) {
                double s = 0;
                for (int c = 0; c < C; c++) s += lm[(size_t)v * C + c] * r->xn[c];
                r->logits[v] = s;
                mx = fmax(mx, s);
            }
            for (int v = 0; v < V; v++) sum += exp(r->logits[v] - mx);
            seq += log(sum) + mx - r->logits[r->tgt[n]];
        }
        if (seq_loss) seq_loss[b] = seq / T;
        total += seq;
    }
    return total / BT;
}

/* ---------------------------------------------------------------------------
 * Fixture: strata's model with perturbed parameters, its loss and gradient
 * of the mean loss, and the reference on the same buffer.
 */

typedef struct tiny {
    const config *cfg;
    strata_model *m;
    ref_net ref;
    int bands[3];
    uint32_t *inp, *tgt;
    float loss;
    float seq_loss[8];
    float *grad; /* copy of strata's gradient, padding included */
    double *pd;  /* parameters as doubles */
} tiny;

/* strata's init, then everything moved far from it: norm weights 1 +- 0.3,
 * biases and weights N(0, 0.3^2). Padding rows stay zero. */
static void perturb_params(strata_model *m, uint64_t seed)
{
    float *p = strata_model_params(m);
    for (int i = 0; i < strata_model_n_tensors(m); i++) {
        const strata_tensor *t = strata_model_tensor(m, i);
        int norm = t->ndim == 1 && strstr(t->name, "norm");
        for (size_t k = 0; k < t->numel; k++) {
            uint64_t bits = strata_rng_u64(seed, 0x9e, (uint64_t)i, k);
            if (norm)
                p[t->offset + k] = 1.0f + 0.3f * (2.0f * strata_rng_uniform(bits) - 1.0f);
            else
                p[t->offset + k] += 0.3f * strata_rng_normal(bits);
        }
    }
}

static int setup_config(void **state)
{
    const config *cfg = *state;
    tiny *s = calloc(1, sizeof *s);
    s->cfg = cfg;
    strata_err e = strata_model_create(&s->m, &cfg->shape);
    if (e.code) fail_msg("%s", e.msg);
    const strata_model_shape *sh = strata_model_get_shape(s->m);
    assert_int_equal(sh->padded_vocab, 128);
    strata_model_init(s->m, cfg->seed);
    perturb_params(s->m, cfg->seed);
    e = strata_model_reserve(s->m, cfg->B, cfg->T);
    if (e.code) fail_msg("%s", e.msg);
    int BT = cfg->B * cfg->T, V = sh->vocab_size;
    assert_true(cfg->B <= 8);
    s->inp = malloc((size_t)BT * sizeof *s->inp);
    s->tgt = malloc((size_t)BT * sizeof *s->tgt);
    for (int n = 0; n < BT; n++) {
        s->inp[n] = (uint32_t)strata_rng_below(strata_rng_u64(cfg->seed, 1, (uint64_t)n, 0), V);
        s->tgt[n] = (uint32_t)strata_rng_below(strata_rng_u64(cfg->seed, 2, (uint64_t)n, 0), V);
    }
    s->inp[0] = s->tgt[BT - 1] = 0;
    s->inp[BT - 1] = s->tgt[0] = (uint32_t)V - 1;

    strata_model_zero_grad(s->m);
    strata_backward_opts o = {.loss_scale = 1.0f / (float)BT};
    e = strata_model_forward_backward(s->m, s->inp, s->tgt, cfg->B, cfg->T, NULL, &s->loss, &o);
    if (e.code) fail_msg("%s", e.msg);
    size_t nf = strata_model_n_floats(s->m);
    s->grad = malloc(nf * sizeof *s->grad);
    memcpy(s->grad, strata_model_grads(s->m), nf * sizeof *s->grad);
    s->pd = malloc(nf * sizeof *s->pd);
    const float *p = strata_model_params(s->m);
    for (size_t i = 0; i < nf; i++) s->pd[i] = p[i];
    s->ref = ref_make(s->m, cfg->B, cfg->T, s->inp, s->tgt, s->bands);
    *state = s;
    return 0;
}

static int teardown_config(void **state)
{
    tiny *s = *state;
    ref_free(&s->ref);
    strata_model_free(s->m);
    free(s->inp), free(s->tgt), free(s->grad), free(s->pd), free(s);
    return 0;
}

/* ---------------------------------------------------------------------------
 * Tests.
 */

static void loss_matches_reference(void **state)
{
    tiny *s = *state;
    const config *cfg = s->cfg;
    if (cfg->want_llama3_bands) {
        print_message("llama3 bands: %d kept, %d interpolated, %d divided\n", s->bands[0],
                      s->bands[1], s->bands[2]);
        for (int k = 0; k < 3; k++) assert_true(s->bands[k] >= 1);
    }
    double seq_ref[8];
    double ref = ref_loss(&s->ref, s->pd, 0, 1, seq_ref);
    float seq[8];
    float loss;
    assert_int_equal(strata_model_forward(s->m, s->inp, s->tgt, cfg->B, cfg->T, seq, &loss).code,
                     0);
    double rel = fabs(loss - ref) / ref;
    print_message("%s\n  loss: strata %.7f, reference %.10f, relative error %.2e\n", cfg->name,
                  loss, ref, rel);
    assert_true(rel < LOSS_RTOL);
    assert_true(fabs(s->loss - ref) / ref < LOSS_RTOL); /* forward_backward's loss */
    for (int b = 0; b < cfg->B; b++)
        assert_true(fabs(seq[b] - seq_ref[b]) / seq_ref[b] < LOSS_RTOL);
    /* far from the uniform prediction: the parameters matter */
    assert_true(fabs(ref - log((double)s->ref.V)) > 0.1);
}

static void every_parameter_gradient_matches_finite_differences(void **state)
{
    tiny *s = *state;
    ref_net *r = &s->ref;
    clock_t t0 = clock();
    (void)ref_loss(r, s->pd, 0, 1, NULL); /* fill the cache of block inputs */
    double worst = 0;
    const char *worst_name = "";
    size_t n_checked = 0;
    print_message("%s\n", s->cfg->name);
    for (int i = 0; i < strata_model_n_tensors(s->m); i++) {
        const strata_tensor *t = strata_model_tensor(s->m, i);
        /* the first block whose input depends on the tensor */
        int l0 = t->role == STRATA_ROLE_BLOCK         ? t->layer
                 : t->role == STRATA_ROLE_TOKEN_EMBED ? 0
                                                      : r->L;
        double num = 0, den = 0, gmax = 0;
        for (size_t k = 0; k < t->numel; k++) {
            double *x = s->pd + t->offset + k, x0 = *x;
            *x = x0 + FD_STEP;
            double lp = ref_loss(r, s->pd, l0, 0, NULL);
            *x = x0 - FD_STEP;
            double lm = ref_loss(r, s->pd, l0, 0, NULL);
            *x = x0;
            double fd = (lp - lm) / (2 * FD_STEP), an = s->grad[t->offset + k];
            num += (an - fd) * (an - fd);
            den += fd * fd;
            gmax = fmax(gmax, fabs(fd));
        }
        n_checked += t->numel;
        double e = sqrt(num) / fmax(sqrt(den), 1e-300);
        print_message("  %-40s %5zu  |g_fd| %.2e  max %.1e  rel err %.2e\n", t->name, t->numel,
                      sqrt(den), gmax, e);
        /* a tensor whose gradient vanishes would pass vacuously */
        assert_true(sqrt(den) > 1e-4);
        if (e > worst) worst = e, worst_name = t->name;
    }
    print_message("  worst: %.2e in %s over %zu parameters (tolerance %.0e), %.1f s\n", worst,
                  worst_name, n_checked, GRAD_RTOL, (double)(clock() - t0) / CLOCKS_PER_SEC);
    assert_int_equal(n_checked, strata_model_n_params(s->m));
    assert_true(worst < GRAD_RTOL);
}

static void padding_rows_get_exactly_zero_gradient(void **state)
{
    tiny *s = *state;
    const strata_model_shape *sh = strata_model_get_shape(s->m);
    size_t C = (size_t)sh->n_embd;
    const char *names[2] = {"model.embed_tokens.weight", "lm_head.weight"};
    int n_tables = 0;
    for (int k = 0; k < 2; k++) {
        const strata_tensor *t = strata_model_find(s->m, names[k]);
        if (!t) continue;
        n_tables++;
        size_t real = t->offset + t->numel, end = t->offset + (size_t)sh->padded_vocab * C;
        assert_int_equal(t->numel, (size_t)sh->vocab_size * C);
        for (size_t i = real; i < end; i++) {
            if (s->grad[i] != 0.0f)
                fail_msg("%s padding [%zu] has gradient %g", names[k], i - t->offset,
                         (double)s->grad[i]);
            assert_true(strata_model_params(s->m)[i] == 0.0f);
        }
        /* the real rows of a head get a gradient, every one of them */
        if (k == 1 || sh->tied)
            for (int v = 0; v < sh->vocab_size; v++) {
                double ss = 0;
                for (size_t c = 0; c < C; c++) ss += fabs(s->grad[t->offset + (size_t)v * C + c]);
                assert_true(ss > 0);
            }
    }
    assert_int_equal(n_tables, sh->tied ? 1 : 2);
    print_message("%s: padding rows %d..%d of %d table(s) have zero gradient\n", s->cfg->name,
                  sh->vocab_size, sh->padded_vocab - 1, n_tables);
}

#define CONFIG_TESTS(cfg)                                                                          \
    cmocka_unit_test_prestate_setup_teardown(loss_matches_reference, setup_config,                 \
                                             teardown_config, (void *)&(cfg)),                     \
        cmocka_unit_test_prestate_setup_teardown(                                                  \
            every_parameter_gradient_matches_finite_differences, setup_config, teardown_config,    \
            (void *)&(cfg)),                                                                       \
        cmocka_unit_test_prestate_setup_teardown(padding_rows_get_exactly_zero_gradient,           \
                                                 setup_config, teardown_config, (void *)&(cfg))

int main(void)
{
    const struct CMUnitTest tests[] = {CONFIG_TESTS(cfg_a), CONFIG_TESTS(cfg_b),
                                       CONFIG_TESTS(cfg_c)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
