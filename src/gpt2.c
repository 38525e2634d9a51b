/* GPT-2, one family behind family.h: learned token and position embeddings,
 * pre-LayerNorm blocks (causal self-attention, GELU-tanh MLP of width 4C),
 * final LayerNorm, lm head tied to wte. Hugging Face GPT-2 names. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/attention.h"
#include "strata/family.h"
#include "strata/kv_cache.h"
#include "strata/kernels.h"
#include "strata/mem.h"
#include "strata/model.h"
#include "strata/rng.h"

/* The twelve tensors of a block, in buffer order. */
enum {
    LN1_W,
    LN1_B,
    QKV_W,
    QKV_B,
    PROJ_W,
    PROJ_B,
    LN2_W,
    LN2_B,
    FC_W,
    FC_B,
    FCPROJ_W,
    FCPROJ_B,
    BLOCK_TENSORS
};
static const char *block_tensor_names[BLOCK_TENSORS] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias",
};

/* Activations one block keeps for its backward pass. In bf16 (acts16) the
 * matmul-only operands ln1, ln2 and fch_gelu hold bf16, half the floats. */
typedef struct block_acts {
    float *ln1, *ln1_mean, *ln1_rstd; /* (B,T,C), (B,T), (B,T) */
    float *qkv;                       /* (B,T,3C) */
    float *atty;                      /* (B,T,C) attention output before c_proj */
    float *att;                       /* (B,NH,T,T) softmax probabilities (dropout only) */
    float *lse;                       /* (B,NH,T) log-sum-exp of each softmax row */
    float *res2;                      /* (B,T,C) residual after attention */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *fch, *fch_gelu; /* (B,T,4C) */
    float *res3;           /* (B,T,C) block output */
} block_acts;

/* The family's state: the shape, the model's buffers (stable for its
 * lifetime) and the activations of the last forward. */
typedef struct gpt2 {
    strata_model_shape shape;
    float *params, *grads;
    const strata_tensor *tensors;
    int n_tensors;
    strata_model_timing *timing;

    int B, T; /* the arena's size */
    float *arena;
    size_t arena_floats;
    float *encoded, *lnf, *lnf_mean, *lnf_rstd;
    block_acts *blocks;
    float *d_res, *d_small, *d_big, *d_att; /* backward scratch (d_att: dropout only) */
    int with_att;                           /* the arena holds att and d_att */
    int acts16;                             /* ln1, ln2, fch_gelu are bf16 */
    strata_precision prec;                  /* of this forward's products */
    const strata_bf16 *params16;            /* the model's bf16 copy (bf16 only) */
    float *att_scratch;                     /* attention.h's scratch */
    size_t att_scratch_floats;
    uint32_t *inputs;
    int fwd_B, fwd_T;

    /* Dropout as requested for this forward: */
    float drop_p;
    uint64_t drop_seed;
    long drop_step;
    const int64_t *drop_ids; /* the caller's, read by the forward */
    /* Used by the last forward (fwd_drop) and its backward: one mask row of
     * bits per sequence and site, allocated on first use for (drop_B, drop_T). */
    int fwd_drop, drop_B, drop_T;
    float drop_scale;
    uint32_t drop_threshold;
    long words_res, words_att; /* per sequence: (T, C) and (NH, T, T) sites */
    uint64_t *drop_bits;       /* embed, then per block: attn, attn.c_proj, mlp.c_proj */
    uint64_t *drop_keys;       /* (1 + 3L, B) row keys, same order */
    size_t drop_words;
} gpt2;

#define TIMED(field, stmt) STRATA_TIMED(m->timing, field, stmt)

static strata_err gpt2_resolve(strata_model_shape *s)
{
    if (s->n_embd % s->n_head)
        return strata_errorf(STRATA_EINPUT, "n_embd (%d) must be a multiple of n_head (%d)",
                             s->n_embd, s->n_head);
    if ((s->n_kv_head && s->n_kv_head != s->n_head) ||
        (s->head_dim && s->head_dim * s->n_head != s->n_embd) ||
        (s->ffn_dim && s->ffn_dim != 4 * s->n_embd) || s->qk_norm || s->sliding_window ||
        s->rope_type || (s->norm_eps != 0 && s->norm_eps != 1e-5f))
        return strata_errorf(STRATA_EINPUT,
                             "gpt2: only GPT-2's own shape is implemented (n_kv_head = n_head, "
                             "ffn 4C, no QK-norm, no sliding window, no RoPE, eps 1e-5)");
    s->n_kv_head = s->n_head;
    s->head_dim = s->n_embd / s->n_head;
    s->ffn_dim = 4 * s->n_embd;
    s->tied = 1;
    s->qkv_bias = 1;
    s->norm_eps = 1e-5f;
    return strata_ok();
}

static int gpt2_max_tensors(const strata_model_shape *s) { return s->n_layer * BLOCK_TENSORS + 4; }

static void gpt2_layout(strata_model *m)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    int L = s->n_layer, C = s->n_embd;
    strata_model_add_tensor(m, "wte.weight", STRATA_ROLE_TOKEN_EMBED, -1, s->vocab_size, C,
                            s->padded_vocab, 0);
    strata_model_add_tensor(m, "wpe.weight", STRATA_ROLE_POS_EMBED, -1, s->block_size, C,
                            s->block_size, 0);
    const int rows[BLOCK_TENSORS] = {C, C, 3 * C, 3 * C, C, C, C, C, 4 * C, 4 * C, C, C};
    const int cols[BLOCK_TENSORS] = {0, 0, C, 0, C, 0, 0, 0, C, 0, 4 * C, 0};
    for (int l = 0; l < L; l++)
        for (int i = 0; i < BLOCK_TENSORS; i++) {
            char name[64];
            snprintf(name, sizeof name, "h.%d.%s", l, block_tensor_names[i]);
            /* Conv1D: the hub stores linear weights (in, out). */
            strata_model_add_tensor(m, name, STRATA_ROLE_BLOCK, l, rows[i], cols[i], rows[i],
                                    cols[i] != 0);
        }
    strata_model_add_tensor(m, "ln_f.weight", STRATA_ROLE_FINAL_NORM, -1, C, 0, C, 0);
    strata_model_add_tensor(m, "ln_f.bias", STRATA_ROLE_FINAL_NORM, -1, C, 0, C, 0);
}

/* Weights in matrix products: the blocks' and the tied head; wpe and the
 * embedding lookup are not products but count in GPT-2's 6N convention. */
static double gpt2_matmul_params(const strata_model_shape *s)
{
    double C = s->n_embd, L = s->n_layer, V = s->vocab_size;
    return V * C + (double)s->block_size * C + L * (12 * C * C + 13 * C) + 2 * C;
}

static double gpt2_attention_flops(const strata_model_shape *s, int T)
{
    return 12.0 * s->n_layer * T * s->n_embd;
}

static float *param(gpt2 *m, int l, int which)
{
    return m->params + m->tensors[2 + l * BLOCK_TENSORS + which].offset;
}
static const strata_bf16 *param16(gpt2 *m, int l, int which)
{
    return m->params16 ? m->params16 + m->tensors[2 + l * BLOCK_TENSORS + which].offset : NULL;
}
static float *grad(gpt2 *m, int l, int which)
{
    return m->grads + m->tensors[2 + l * BLOCK_TENSORS + which].offset;
}

static void gpt2_init(strata_model *model, uint64_t seed)
{
    float proj_std = 0.02f / sqrtf(2.0f * strata_model_get_shape(model)->n_layer);
    for (int i = 0; i < strata_model_n_tensors(model); i++) {
        const strata_tensor *t = strata_model_tensor(model, i);
        float *p = strata_model_params(model) + t->offset;
        if (strstr(t->name, "ln_") && strstr(t->name, ".weight")) {
            for (size_t k = 0; k < t->numel; k++) p[k] = 1.0f;
        } else if (t->ndim == 2) {
            float std = strstr(t->name, "c_proj.weight") ? proj_std : 0.02f;
#pragma omp parallel for schedule(static)
            for (size_t k = 0; k < t->numel; k++)
                p[k] = std * strata_rng_normal(strata_rng_u64(seed, 0x1417, (uint64_t)i, k));
        }
    }
}

/* Without dropout attention keeps one log-sum-exp per row and recomputes its
 * probabilities in backward (attention.h); only dropout on the probabilities
 * needs them stored, (B, NH, T, T) per block. */
static strata_err alloc_arena(gpt2 *m, int B, int T, int with_att, int acts16)
{
    size_t L = m->shape.n_layer, C = m->shape.n_embd, NH = m->shape.n_head, BT = (size_t)B * T;
    size_t att = with_att ? (size_t)B * NH * T * T : 0;
    /* ln1, ln2 (C each) and fch_gelu (4C): floats, or bf16 in half as many */
    size_t ln = acts16 ? (BT * C + 1) / 2 : BT * C, gelu = acts16 ? BT * 2 * C : BT * 4 * C;
    size_t per_block = BT * (10 * C + 4) + 2 * ln + gelu + att + (size_t)B * NH * T;
    size_t total = BT * C /* encoded */ + BT * (C + 2) /* lnf */ + L * per_block +
                   BT * C /* d_res */ + BT * C /* d_small */ + BT * 4 * C /* d_big */ +
                   att /* d_att */;
    int threads =
        omp_get_max_threads() > omp_get_num_procs() ? omp_get_max_threads() : omp_get_num_procs();
    free(m->arena);
    free(m->blocks);
    free(m->inputs);
    free(m->att_scratch);
    m->att_scratch_floats =
        strata_gqa_attention_scratch_floats(B, T, (int)NH, (int)NH, (int)(C / NH), threads);
    m->arena = strata_malloc(total * sizeof(float));
    m->blocks = calloc(L, sizeof *m->blocks);
    m->inputs = malloc(BT * sizeof(uint32_t));
    m->att_scratch = malloc(m->att_scratch_floats * sizeof(float));
    if (!m->arena || !m->blocks || !m->inputs || !m->att_scratch) {
        free(m->arena), free(m->blocks), free(m->inputs), free(m->att_scratch);
        m->arena = NULL, m->blocks = NULL, m->inputs = NULL, m->att_scratch = NULL;
        /* No pointer into the freed arena survives the failure. */
        m->encoded = m->lnf = m->lnf_mean = m->lnf_rstd = NULL;
        m->d_res = m->d_small = m->d_big = m->d_att = NULL;
        m->arena_floats = 0, m->with_att = 0;
        m->B = m->T = 0;
        return strata_errorf(STRATA_ENOMEM,
                             "out of memory for activations (%.1f GiB for B=%d T=%d)",
                             total * 4.0 / (1 << 30), B, T);
    }
    float *p = m->arena;
#define TAKE(n) (p += (n), p - (n))
    m->encoded = TAKE(BT * C);
    m->lnf = TAKE(BT * C);
    m->lnf_mean = TAKE(BT);
    m->lnf_rstd = TAKE(BT);
    for (size_t l = 0; l < L; l++) {
        block_acts *a = &m->blocks[l];
        a->ln1 = TAKE(ln), a->ln1_mean = TAKE(BT), a->ln1_rstd = TAKE(BT);
        a->qkv = TAKE(BT * 3 * C);
        a->atty = TAKE(BT * C);
        a->att = with_att ? TAKE(att) : NULL;
        a->lse = TAKE((size_t)B * NH * T);
        a->res2 = TAKE(BT * C);
        a->ln2 = TAKE(ln), a->ln2_mean = TAKE(BT), a->ln2_rstd = TAKE(BT);
        a->fch = TAKE(BT * 4 * C), a->fch_gelu = TAKE(gelu);
        a->res3 = TAKE(BT * C);
    }
    m->d_res = TAKE(BT * C);
    m->d_small = TAKE(BT * C);
    m->d_big = TAKE(BT * 4 * C);
    m->d_att = with_att ? TAKE(att) : NULL;
#undef TAKE
    m->arena_floats = total;
    m->with_att = with_att;
    m->acts16 = acts16;
    m->B = B;
    m->T = T;
    return strata_ok();
}

static int dropout_prepare(gpt2 *m, int B, int T);

static void gpt2_free_state(void *state)
{
    gpt2 *m = state;
    if (!m) return;
    free(m->arena);
    free(m->blocks);
    free(m->inputs);
    free(m->drop_bits);
    free(m->drop_keys);
    free(m->att_scratch);
    free(m);
}

static strata_err gpt2_reserve(strata_model *model, void **state, int B, int T)
{
    gpt2 *m = *state;
    if (!m) {
        if (!(m = calloc(1, sizeof *m))) return strata_errorf(STRATA_ENOMEM, "out of memory");
        m->shape = *strata_model_get_shape(model);
        m->params = strata_model_params(model);
        m->grads = strata_model_grads(model);
        m->tensors = strata_model_tensor(model, 0);
        m->n_tensors = strata_model_n_tensors(model);
        m->timing = strata_model_timing_counters(model);
        *state = m;
    }
    const strata_dropout_request *d = strata_model_dropout_request(model);
    m->drop_p = d->p, m->drop_seed = d->seed, m->drop_step = d->step, m->drop_ids = d->sample_ids;
    int need_att = m->drop_p > 0;
    int acts16 = strata_model_precision(model) == STRATA_BF16;
    if (m->B != B || m->T != T || (need_att && !m->with_att) || acts16 != m->acts16)
        STRATA_TRY(
            alloc_arena(m, B, T, need_att || (m->with_att && m->B == B && m->T == T), acts16));
    m->fwd_B = B, m->fwd_T = T;
    m->fwd_drop = m->drop_p > 0;
    if (m->fwd_drop) {
        int failed;
        TIMED(elementwise, failed = dropout_prepare(m, B, T));
        if (failed) {
            m->fwd_drop = 0;
            return strata_errorf(STRATA_ENOMEM, "out of memory for dropout masks (B=%d T=%d)", B, T);
        }
    }
    return strata_ok();
}

static size_t gpt2_state_bytes(const void *state)
{
    const gpt2 *m = state;
    return (m->arena_floats + m->att_scratch_floats) * 4 + m->drop_words * 8;
}

/* ---- dropout -------------------------------------------------------------
 *
 * The mask bit of element i (position within its sequence's row: t*C + c at
 * the (T, C) sites, (h*T + t)*T + j for attention) of sequence b at a site is
 * strata_dropout_generate's bit i for the row key
 *
 *   strata_mix64(strata_rng_u64(seed, DROPOUT_TAG, step, sample_ids[b])
 *                ^ ((layer + 1) * 4 + site))
 *
 * with layer -1 for the embedding site and site as in model.h. Nothing else
 * enters: not the rank, the micro-batch or the thread count.
 *
 * The backward reads back the forward's bits rather than regenerating them:
 * on the small config they take 3.5 MiB (against 0.8 GiB of activations)
 * and regenerating them all costs ~16 ms of CPU per step (measured with
 * STRATA_BENCH=dropout of test_dropout), so storing is the faster of the two
 * for a negligible memory cost. STRATA_DROPOUT_RECOMPUTE=1 builds the other
 * way, for measuring it again. */
#define DROPOUT_TAG 0x64726f706f757421ull /* "dropout!" */
#ifndef STRATA_DROPOUT_RECOMPUTE
#define STRATA_DROPOUT_RECOMPUTE 0
#endif

static uint64_t dropout_row_key(uint64_t seed, long step, int64_t sample_id, int layer, int site)
{
    return strata_mix64(strata_rng_u64(seed, DROPOUT_TAG, (uint64_t)step, (uint64_t)sample_id) ^
                        (uint64_t)((layer + 1) * 4 + site));
}

/* Mask row index of (layer, site): the embedding first, then three per block. */
static int dropout_slot(int layer, int site)
{
    return site == STRATA_DROPOUT_EMBED ? 0 : 1 + 3 * layer + (site - 1);
}

/* The bits of a slot: (B, words) after those of the slots before it. */
static uint64_t *dropout_words(const gpt2 *m, int slot)
{
    if (slot == 0) return m->drop_bits;
    int l = (slot - 1) / 3, k = (slot - 1) % 3;
    size_t per_block = (size_t)m->words_att + 2 * (size_t)m->words_res;
    size_t within = k == 0 ? 0 : (size_t)m->words_att + (k == 2 ? (size_t)m->words_res : 0);
    return m->drop_bits + (size_t)m->drop_B * (m->words_res + l * per_block + within);
}

static strata_dropout dropout_of(const gpt2 *m, int layer, int site)
{
    int slot = dropout_slot(layer, site);
    return (strata_dropout){dropout_words(m, slot),
                            site == STRATA_DROPOUT_ATTN ? m->words_att : m->words_res,
                            m->drop_scale};
}

static void dropout_generate_slot(gpt2 *m, int slot)
{
    int site = slot == 0 ? STRATA_DROPOUT_EMBED : 1 + (slot - 1) % 3;
    long words = site == STRATA_DROPOUT_ATTN ? m->words_att : m->words_res;
    long len = site == STRATA_DROPOUT_ATTN ? (long)m->shape.n_head * m->fwd_T * m->fwd_T
                                           : (long)m->fwd_T * m->shape.n_embd;
    strata_dropout_generate(dropout_words(m, slot), words, m->drop_keys + (size_t)slot * m->fwd_B,
                            m->fwd_B, len, m->drop_threshold);
}

/* Row keys and bits of every site for the forward about to run (B, T). */
static int dropout_prepare(gpt2 *m, int B, int T)
{
    int L = m->shape.n_layer, C = m->shape.n_embd, NH = m->shape.n_head;
    if (B != m->drop_B || T != m->drop_T) {
        free(m->drop_bits), free(m->drop_keys);
        m->words_res = ((long)T * C + 63) / 64;
        m->words_att = ((long)NH * T * T + 63) / 64;
        m->drop_words = (size_t)B * (m->words_res + (size_t)L * (m->words_att + 2 * m->words_res));
        m->drop_bits = malloc(m->drop_words * sizeof(uint64_t));
        m->drop_keys = malloc((size_t)(1 + 3 * L) * B * sizeof(uint64_t));
        if (!m->drop_bits || !m->drop_keys) {
            free(m->drop_bits), free(m->drop_keys);
            m->drop_bits = NULL, m->drop_keys = NULL, m->drop_words = 0;
            m->drop_B = m->drop_T = 0;
            return -1;
        }
        m->drop_B = B, m->drop_T = T;
    }
    m->drop_scale = 1.0f / (1.0f - m->drop_p);
    double thr = floor((double)m->drop_p * 65536.0 + 0.5);
    m->drop_threshold = (uint32_t)(thr < 65535 ? thr : 65535);
    for (int slot = 0; slot < 1 + 3 * L; slot++) {
        int layer = slot == 0 ? -1 : (slot - 1) / 3;
        int site = slot == 0 ? STRATA_DROPOUT_EMBED : 1 + (slot - 1) % 3;
        for (int b = 0; b < B; b++)
            m->drop_keys[(size_t)slot * B + b] = dropout_row_key(
                m->drop_seed, m->drop_step, m->drop_ids ? m->drop_ids[b] : b, layer, site);
        dropout_generate_slot(m, slot);
    }
    return 0;
}

static size_t gpt2_dropout_mask(const strata_model *model, const void *state, int layer, int site,
                                float *out)
{
    const gpt2 *m = state;
    int B = m->fwd_B, T = m->fwd_T, C = m->shape.n_embd, NH = m->shape.n_head;
    if (site < STRATA_DROPOUT_EMBED || site > STRATA_DROPOUT_MLP_PROJ || B < 1) return 0;
    if (site != STRATA_DROPOUT_EMBED && (layer < 0 || layer >= m->shape.n_layer)) return 0;
    long len = site == STRATA_DROPOUT_ATTN ? (long)NH * T * T : (long)T * C;
    size_t n = (size_t)B * len;
    if (!out) return n;
    if (!m->fwd_drop) {
        for (size_t i = 0; i < n; i++) out[i] = 1.0f;
        return n;
    }
    strata_dropout d = dropout_of(m, layer, site);
    for (int b = 0; b < B; b++)
        for (long i = 0; i < len; i++)
            out[(size_t)b * len + i] =
                (float)((d.words[(size_t)b * d.words_per_row + i / 64] >> (i % 64)) & 1) * d.scale;
    return n;
}

static void gpt2_embed_forward(strata_model *model, void *state, const uint32_t *inputs, int B,
                               int T)
{
    gpt2 *m = state;
    int C = m->shape.n_embd;
    memcpy(m->inputs, inputs, (size_t)B * T * sizeof(uint32_t));
    m->fwd_B = B, m->fwd_T = T;
    const float *wte = m->params + m->tensors[0].offset, *wpe = m->params + m->tensors[1].offset;
    int drop = m->fwd_drop; /* masks drawn by the reservation */
    TIMED(elementwise, strata_encoder_forward(m->encoded, inputs, wte, wpe, B, T, C));
    if (drop) {
        strata_dropout d = dropout_of(m, -1, STRATA_DROPOUT_EMBED);
        TIMED(elementwise, strata_dropout_apply(m->encoded, m->encoded, &d, B, (long)T * C));
    }
}

/* The block's matmul-only operands: the norms' and GELU's outputs, bf16
 * when the arena holds them so. */
static void layernorm_out(gpt2 *m, float *out, float *mean, float *rstd, const float *inp,
                          const float *w, const float *b, int N, int C)
{
    if (m->acts16)
        strata_layernorm_forward_bf16((strata_bf16 *)out, mean, rstd, inp, w, b, N, C);
    else
        strata_layernorm_forward(out, mean, rstd, inp, w, b, N, C);
}

static void linear_forward(gpt2 *m, float *out, const float *inp, int inp16, int l, int w, int N,
                           int C, int OC, float beta)
{
    strata_linear_forward(m->prec, out, inp, inp16 && m->acts16, param(m, l, w), param16(m, l, w),
                          param(m, l, w + 1), N, C, OC, beta);
}

static void linear_backward(gpt2 *m, float *dinp, const float *dout, const float *inp, int inp16,
                            int l, int w, int N, int C, int OC)
{
    strata_linear_backward(m->prec, dinp, grad(m, l, w), grad(m, l, w + 1), dout, inp,
                           inp16 && m->acts16, param(m, l, w), param16(m, l, w), N, C, OC);
}

static void gpt2_block_forward(strata_model *model, void *state, int l)
{
    gpt2 *m = state;
    int B = m->fwd_B, T = m->fwd_T, BT = B * T, C = m->shape.n_embd, NH = m->shape.n_head;
    int drop = m->fwd_drop;
    m->prec = strata_model_precision(model);
    m->params16 = strata_model_params_bf16(model);
    const float *residual = l > 0 ? m->blocks[l - 1].res3 : m->encoded;
    block_acts *a = &m->blocks[l];
    TIMED(elementwise, layernorm_out(m, a->ln1, a->ln1_mean, a->ln1_rstd, residual,
                                     param(m, l, LN1_W), param(m, l, LN1_B), BT, C));
    TIMED(matmul, linear_forward(m, a->qkv, a->ln1, 1, l, QKV_W, BT, C, 3 * C, 0.0f));
    if (!drop) {
        TIMED(attention, strata_gqa_attention_forward_prec(
                             m->prec, a->atty, a->lse, a->qkv, B, T, NH, NH, C / NH, 0,
                             1.0f / sqrtf((float)(C / NH)), m->att_scratch, m->att_scratch_floats));
        /* res2 = residual + c_proj(atty): copy, then let sgemm accumulate. */
        TIMED(elementwise, memcpy(a->res2, residual, (size_t)BT * C * sizeof(float)));
        TIMED(matmul, linear_forward(m, a->res2, a->atty, 0, l, PROJ_W, BT, C, C, 1.0f));
    } else {
        /* The dropped probabilities live in d_att (backward scratch) for
         * the call; the branch output in d_small, dropped, then added.
         * Attention's own products run in fp32 here. */
        strata_dropout da = dropout_of(m, l, STRATA_DROPOUT_ATTN);
        strata_dropout dp = dropout_of(m, l, STRATA_DROPOUT_ATTN_PROJ);
        TIMED(attention, strata_attention_forward_dropout(a->atty, a->att, m->d_att, a->qkv, B, T,
                                                          C, NH, &da));
        TIMED(matmul, linear_forward(m, m->d_small, a->atty, 0, l, PROJ_W, BT, C, C, 0.0f));
        TIMED(elementwise, strata_dropout_apply(m->d_small, m->d_small, &dp, B, (long)T * C));
        TIMED(elementwise, strata_residual_forward(a->res2, residual, m->d_small, BT * C));
    }
    TIMED(elementwise, layernorm_out(m, a->ln2, a->ln2_mean, a->ln2_rstd, a->res2,
                                     param(m, l, LN2_W), param(m, l, LN2_B), BT, C));
    TIMED(matmul, linear_forward(m, a->fch, a->ln2, 1, l, FC_W, BT, C, 4 * C, 0.0f));
    if (m->acts16)
        TIMED(elementwise,
              strata_gelu_forward_bf16((strata_bf16 *)a->fch_gelu, a->fch, BT * 4 * C));
    else
        TIMED(elementwise, strata_gelu_forward(a->fch_gelu, a->fch, BT * 4 * C));
    if (!drop) {
        TIMED(elementwise, memcpy(a->res3, a->res2, (size_t)BT * C * sizeof(float)));
        TIMED(matmul, linear_forward(m, a->res3, a->fch_gelu, 1, l, FCPROJ_W, BT, 4 * C, C, 1.0f));
    } else {
        strata_dropout dm = dropout_of(m, l, STRATA_DROPOUT_MLP_PROJ);
        TIMED(matmul,
              linear_forward(m, m->d_small, a->fch_gelu, 1, l, FCPROJ_W, BT, 4 * C, C, 0.0f));
        TIMED(elementwise, strata_dropout_apply(m->d_small, m->d_small, &dm, B, (long)T * C));
        TIMED(elementwise, strata_residual_forward(a->res3, a->res2, m->d_small, BT * C));
    }
}

static const float *gpt2_final_norm_forward(strata_model *model, void *state)
{
    gpt2 *m = state;
    int BT = m->fwd_B * m->fwd_T, C = m->shape.n_embd, L = m->shape.n_layer;
    const float *residual = L > 0 ? m->blocks[L - 1].res3 : m->encoded;
    const float *lnf_w = m->params + m->tensors[m->n_tensors - 2].offset;
    const float *lnf_b = m->params + m->tensors[m->n_tensors - 1].offset;
    TIMED(elementwise, strata_layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, residual, lnf_w,
                                                lnf_b, BT, C));
    return m->lnf;
}

/* Backward through block l: on entry d_res holds dLoss/d(res3); on exit it
 * holds dLoss/d(block input), unless need_dinp is 0. */
static void block_backward(gpt2 *m, int l, const float *block_input, int need_dinp)
{
    int B = m->fwd_B, T = m->fwd_T, BT = B * T, C = m->shape.n_embd, NH = m->shape.n_head;
    block_acts *a = &m->blocks[l];
    float *d_big = m->d_big, *d_small = m->d_small, *d_res = m->d_res;
    int drop = m->fwd_drop;
    /* With dropout a branch's gradient is the residual's, masked: in d_small
     * (free until the MLP's c_fc backward) and in d_big (free until the
     * attention backward) respectively. */
    const float *d_branch = d_res;
    if (drop) {
#if STRATA_DROPOUT_RECOMPUTE
        TIMED(elementwise, dropout_generate_slot(m, dropout_slot(l, STRATA_DROPOUT_ATTN)));
        TIMED(elementwise, dropout_generate_slot(m, dropout_slot(l, STRATA_DROPOUT_ATTN_PROJ)));
        TIMED(elementwise, dropout_generate_slot(m, dropout_slot(l, STRATA_DROPOUT_MLP_PROJ)));
#endif
        strata_dropout dm = dropout_of(m, l, STRATA_DROPOUT_MLP_PROJ);
        TIMED(elementwise, strata_dropout_apply(d_small, d_res, &dm, B, (long)T * C));
        d_branch = d_small;
    }

    /* MLP: res3 = res2 + c_proj(gelu(c_fc(ln2(res2)))) */
    memset(d_big, 0, (size_t)BT * 4 * C * sizeof(float));
    TIMED(matmul, linear_backward(m, d_big, d_branch, a->fch_gelu, 1, l, FCPROJ_W, BT, 4 * C, C));
    TIMED(elementwise, strata_gelu_backward(d_big, a->fch, d_big, BT * 4 * C));
    memset(d_small, 0, (size_t)BT * C * sizeof(float));
    TIMED(matmul, linear_backward(m, d_small, d_big, a->ln2, 1, l, FC_W, BT, C, 4 * C));
    TIMED(elementwise,
          strata_layernorm_backward(d_res, grad(m, l, LN2_W), grad(m, l, LN2_B), d_small, a->res2,
                                    param(m, l, LN2_W), a->ln2_mean, a->ln2_rstd, BT, C));

    /* Attention: res2 = input + c_proj(attn(c_attn(ln1(input)))) */
    d_branch = d_res;
    if (drop) {
        strata_dropout dp = dropout_of(m, l, STRATA_DROPOUT_ATTN_PROJ);
        TIMED(elementwise, strata_dropout_apply(d_big, d_res, &dp, B, (long)T * C));
        d_branch = d_big;
    }
    memset(d_small, 0, (size_t)BT * C * sizeof(float));
    TIMED(matmul, linear_backward(m, d_small, d_branch, a->atty, 0, l, PROJ_W, BT, C, C));
    float *d_qkv = d_big; /* (B,T,3C) fits in the (B,T,4C) scratch, free again */
    if (!drop) {
        TIMED(attention, strata_gqa_attention_backward_prec(m->prec, d_qkv, d_small, a->qkv,
                                                            a->atty, a->lse, B, T, NH, NH, C / NH,
                                                            0, 1.0f / sqrtf((float)(C / NH)),
                                                            m->att_scratch, m->att_scratch_floats));
    } else {
        strata_dropout da = dropout_of(m, l, STRATA_DROPOUT_ATTN);
        TIMED(attention, strata_attention_backward_dropout(d_qkv, m->d_att, d_small, a->qkv, a->att,
                                                           B, T, C, NH, &da));
    }
    memset(d_small, 0, (size_t)BT * C * sizeof(float));
    TIMED(matmul, linear_backward(m, d_small, d_qkv, a->ln1, 1, l, QKV_W, BT, C, 3 * C));
    TIMED(elementwise, strata_layernorm_backward(
                           need_dinp ? d_res : NULL, grad(m, l, LN1_W), grad(m, l, LN1_B), d_small,
                           block_input, param(m, l, LN1_W), a->ln1_mean, a->ln1_rstd, BT, C));
}

static void gpt2_final_norm_backward(strata_model *model, void *state, const float *dh,
                                     int need_dinp)
{
    gpt2 *m = state;
    int BT = m->fwd_B * m->fwd_T, C = m->shape.n_embd, L = m->shape.n_layer;
    const float *final_res = L > 0 ? m->blocks[L - 1].res3 : m->encoded;
    size_t w = m->tensors[m->n_tensors - 2].offset, b = m->tensors[m->n_tensors - 1].offset;
    memset(m->d_res, 0, (size_t)BT * C * sizeof(float));
    TIMED(elementwise,
          strata_layernorm_backward(need_dinp ? m->d_res : NULL, m->grads + w, m->grads + b, dh,
                                    final_res, m->params + w, m->lnf_mean, m->lnf_rstd, BT, C));
}

static void gpt2_block_backward(strata_model *model, void *state, int l, int need_dinp)
{
    gpt2 *m = state;
    block_backward(m, l, l > 0 ? m->blocks[l - 1].res3 : m->encoded, need_dinp);
}

static void gpt2_embed_backward(strata_model *model, void *state, float *d_tok)
{
    gpt2 *m = state;
    int C = m->shape.n_embd;
    if (m->fwd_drop) {
#if STRATA_DROPOUT_RECOMPUTE
        TIMED(elementwise, dropout_generate_slot(m, 0));
#endif
        strata_dropout d = dropout_of(m, -1, STRATA_DROPOUT_EMBED);
        TIMED(elementwise,
              strata_dropout_apply(m->d_res, m->d_res, &d, m->fwd_B, (long)m->fwd_T * C));
    }
    float *dwpe = m->grads + m->tensors[1].offset;
    TIMED(elementwise,
          strata_encoder_backward(d_tok, dwpe, m->d_res, m->inputs, m->fwd_B, m->fwd_T, C));
}

static strata_err gpt2_decode_reserve(strata_model *model, void **dstate, int n_max, int max_T);
static const float *gpt2_decode(strata_model *model, void *dstate, struct strata_kv_cache *kv,
                                const uint32_t *tokens, int n, int pos);
static void gpt2_decode_free(void *dstate);

const strata_family strata_family_gpt2 = {
    .name = "gpt2",
    .resolve = gpt2_resolve,
    .max_tensors = gpt2_max_tensors,
    .layout = gpt2_layout,
    .init = gpt2_init,
    .matmul_params = gpt2_matmul_params,
    .attention_flops = gpt2_attention_flops,
    .reserve = gpt2_reserve,
    .free_state = gpt2_free_state,
    .state_bytes = gpt2_state_bytes,
    .embed_forward = gpt2_embed_forward,
    .block_forward = gpt2_block_forward,
    .final_norm_forward = gpt2_final_norm_forward,
    .final_norm_backward = gpt2_final_norm_backward,
    .block_backward = gpt2_block_backward,
    .embed_backward = gpt2_embed_backward,
    .dropout_mask = gpt2_dropout_mask,
    .decode_reserve = gpt2_decode_reserve,
    .decode = gpt2_decode,
    .decode_free = gpt2_decode_free,
};

/* ---- decoding with a KV cache (generate.h) ---------------------------------
 *
 * The forward above, on the n new rows only: the embedding at positions
 * pos..pos+n-1, and in each block the new rows' keys and values appended to
 * the cache before they attend over it. */
typedef struct gpt2_decode_state {
    strata_model_shape shape;
    const float *params;
    const strata_tensor *tensors;
    int n_tensors, n_max, max_T;
    float *x, *ln, *mean, *rstd, *qkv, *atty, *fch, *fch_gelu, *scores; /* (n_max, ...) */
} gpt2_decode_state;

static void gpt2_decode_free(void *dstate)
{
    gpt2_decode_state *d = dstate;
    if (!d) return;
    free(d->x);
    free(d);
}

static strata_err gpt2_decode_reserve(strata_model *model, void **dstate, int n_max, int max_T)
{
    gpt2_decode_free(*dstate);
    *dstate = NULL;
    gpt2_decode_state *d = calloc(1, sizeof *d);
    if (!d) return strata_errorf(STRATA_ENOMEM, "out of memory");
    d->shape = *strata_model_get_shape(model);
    d->params = strata_model_params(model);
    d->tensors = strata_model_tensor(model, 0);
    d->n_tensors = strata_model_n_tensors(model);
    d->n_max = n_max, d->max_T = max_T;
    size_t N = (size_t)n_max, C = (size_t)d->shape.n_embd;
    size_t total = N * C * 3 + 2 * N + N * 3 * C + N * 8 * C + (size_t)max_T;
    if (!(d->x = malloc(total * sizeof(float)))) {
        free(d);
        return strata_errorf(STRATA_ENOMEM, "out of memory for decoding (%d tokens)", n_max);
    }
    float *p = d->x;
#define TAKE(k) (p += (k), p - (k))
    d->x = TAKE(N * C), d->ln = TAKE(N * C), d->atty = TAKE(N * C);
    d->mean = TAKE(N), d->rstd = TAKE(N);
    d->qkv = TAKE(N * 3 * C);
    d->fch = TAKE(N * 4 * C), d->fch_gelu = TAKE(N * 4 * C);
    d->scores = TAKE((size_t)max_T);
#undef TAKE
    *dstate = d;
    return strata_ok();
}

static const float *dparam(const gpt2_decode_state *d, int l, int which)
{
    return d->params + d->tensors[2 + l * BLOCK_TENSORS + which].offset;
}

static const float *gpt2_decode(strata_model *model, void *dstate, struct strata_kv_cache *kv,
                                const uint32_t *tokens, int n, int pos)
{
    gpt2_decode_state *d = dstate;
    int C = d->shape.n_embd, NH = d->shape.n_head, hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    const float *wte = d->params + d->tensors[0].offset, *wpe = d->params + d->tensors[1].offset;
    strata_encoder_forward(d->x, tokens, wte, wpe + (size_t)pos * C, 1, n, C);
    for (int l = 0; l < d->shape.n_layer; l++) {
        strata_layernorm_forward(d->ln, d->mean, d->rstd, d->x, dparam(d, l, LN1_W),
                                 dparam(d, l, LN1_B), n, C);
        strata_matmul_forward(d->qkv, d->ln, dparam(d, l, QKV_W), dparam(d, l, QKV_B), n, C, 3 * C,
                              0.0f);
        strata_kv_store(kv, l, d->qkv, 3 * C, n, pos);
        strata_kv_attention(d->atty, d->qkv, 3 * C, kv, l, n, pos, NH, NH, hs, 0, scale,
                            d->scores);
        strata_matmul_forward(d->x, d->atty, dparam(d, l, PROJ_W), dparam(d, l, PROJ_B), n, C, C,
                              1.0f);
        strata_layernorm_forward(d->ln, d->mean, d->rstd, d->x, dparam(d, l, LN2_W),
                                 dparam(d, l, LN2_B), n, C);
        strata_matmul_forward(d->fch, d->ln, dparam(d, l, FC_W), dparam(d, l, FC_B), n, C, 4 * C,
                              0.0f);
        strata_gelu_forward(d->fch_gelu, d->fch, n * 4 * C);
        strata_matmul_forward(d->x, d->fch_gelu, dparam(d, l, FCPROJ_W), dparam(d, l, FCPROJ_B), n,
                              4 * C, C, 1.0f);
    }
    strata_layernorm_forward(d->ln, d->mean, d->rstd, d->x,
                             d->params + d->tensors[d->n_tensors - 2].offset,
                             d->params + d->tensors[d->n_tensors - 1].offset, n, C);
    return d->ln;
}
