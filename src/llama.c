/* The LLaMA family behind family.h: Llama 2/3.x, SmolLM2, TinyLlama,
 * Mistral, Qwen2/2.5 (q/k/v bias), Qwen3 (per-head QK-norm), with Hugging
 * Face's semantics and tensor names (../shared/MODELS.md):
 *
 *   x0 = embed_tokens[inputs]
 *   block: a = x + o_proj(attn(rope(qk_norm(qkv(rms(x))))))
 *          y = a + down_proj(silu(gate_proj(rms(a))) * up_proj(rms(a)))
 *   logits = lm_head(rms(x_L))   (lm_head = embed_tokens when tied)
 *
 * The buffer keeps q_proj, k_proj, v_proj adjacent (and their biases), so
 * they are one (NH + 2 NKV) hs x C matrix in memory; gate_proj and up_proj
 * likewise are one (2I, C) matrix, whose output rows hold gate then up.
 *
 * Activations per token and block: the block input is the previous
 * block's output; kept are qkv (after QK-norm and RoPE), attention's output
 * and log-sum-exp, the residual after attention, gate|up and the two norms'
 * 1/rms. The normalised inputs of the projections and SwiGLU's output are
 * recomputed in backward (cheap element-wise passes, C + I floats saved per
 * token and block); attention's probabilities are recomputed block by
 * block inside its backward. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/attention.h"
#include "strata/family.h"
#include "strata/kv_cache.h"
#include "strata/kernels.h"
#include "strata/llama_kernels.h"
#include "strata/mem.h"
#include "strata/model.h"
#include "strata/rng.h"

/* A block's tensors in buffer order; the optional ones are absent (index
 * -1) when the shape does not have them. */
enum {
    IN_NORM,
    Q_W,
    K_W,
    V_W,
    Q_B,
    K_B,
    V_B,
    Q_NORM,
    K_NORM,
    O_W,
    POST_NORM,
    GATE_W,
    UP_W,
    DOWN_W,
    BLOCK_TENSORS
};
static const char *const block_tensor_names[BLOCK_TENSORS] = {
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

typedef struct block_acts {
    float *qkv;     /* (BT, QKV) after QK-norm and RoPE */
    float *qk_raw;  /* (BT, QKV) before QK-norm (Qwen3 only) */
    float *qk_r;    /* (BT, NH + NKV) 1/rms of each q and k head (Qwen3 only) */
    float *atty;    /* (BT, NH hs) attention output */
    float *lse;     /* (B, NH, T) */
    float *r1, *r2; /* (BT) 1/rms of the two norms */
    float *res2;    /* (BT, C) */
    float *gu;      /* (BT, 2I) gate | up */
    float *res3;    /* (BT, C) block output */
} block_acts;

typedef struct llama {
    strata_model_shape s;
    float *params, *grads;
    size_t (*off)[BLOCK_TENSORS]; /* (L) offsets of each block's tensors */
    size_t embed, final_norm;
    strata_model_timing *timing;
    int QKV; /* (NH + 2 NKV) hs */
    float scale;
    float *inv_freq, *rope_cos, *rope_sin; /* (hs/2), (T, hs/2) */

    int B, T;
    float *arena;
    size_t arena_floats;
    block_acts *blocks;
    float *encoded, *lnf, *rf; /* (BT, C), (BT, C), (BT) */
    float *d_res, *x_norm, *d_small, *d_big, *d_qkv, *d_raw, *h, *dh, *att_scratch;
    size_t att_scratch_floats;
    uint32_t *inputs;
    strata_precision prec;       /* of this forward's products */
    const strata_bf16 *params16; /* the model's bf16 copy (bf16 only) */
} llama;

#define TIMED(field, stmt) STRATA_TIMED(m->timing, field, stmt)

static strata_err llama_resolve(strata_model_shape *s)
{
    if (!s->n_kv_head) s->n_kv_head = s->n_head;
    if (!s->head_dim) {
        if (s->n_embd % s->n_head)
            return strata_errorf(STRATA_EINPUT,
                                 "n_embd (%d) is not a multiple of n_head (%d): give head_dim",
                                 s->n_embd, s->n_head);
        s->head_dim = s->n_embd / s->n_head;
    }
    if (!s->ffn_dim) s->ffn_dim = 4 * s->n_embd;
    if (s->norm_eps == 0) s->norm_eps = 1e-5f;
    if (s->rope_theta == 0) s->rope_theta = 10000.0;
    if (s->n_kv_head < 1 || s->n_head % s->n_kv_head)
        return strata_errorf(STRATA_EINPUT, "n_head (%d) must be a multiple of n_kv_head (%d)",
                             s->n_head, s->n_kv_head);
    if (s->head_dim < 2 || s->head_dim % 2 || s->head_dim > 1024)
        return strata_errorf(STRATA_EINPUT, "head_dim (%d) must be even, in [2, 1024]",
                             s->head_dim);
    if (s->ffn_dim < 1 || s->ffn_dim > 1 << 20)
        return strata_errorf(STRATA_EINPUT, "ffn_dim (%d) out of range", s->ffn_dim);
    if (s->sliding_window < 0)
        return strata_errorf(STRATA_EINPUT, "sliding_window (%d) must be >= 0", s->sliding_window);
    if (!(s->norm_eps > 0) || !(s->rope_theta > 1))
        return strata_errorf(STRATA_EINPUT, "norm_eps must be > 0 and rope_theta > 1");
    if (s->rope_type < STRATA_ROPE_DEFAULT || s->rope_type > STRATA_ROPE_LLAMA3)
        return strata_errorf(STRATA_EINPUT, "unknown rope_type %d", s->rope_type);
    if (s->rope_type != STRATA_ROPE_DEFAULT && !(s->rope_factor > 0))
        return strata_errorf(STRATA_EINPUT, "rope scaling needs factor > 0");
    if (s->rope_type == STRATA_ROPE_LLAMA3 &&
        (s->rope_original_max < 1 || !(s->rope_high_freq_factor > s->rope_low_freq_factor) ||
         !(s->rope_low_freq_factor > 0)))
        return strata_errorf(STRATA_EINPUT,
                             "llama3 rope scaling needs original_max_position_embeddings >= 1 "
                             "and high_freq_factor > low_freq_factor > 0");
    return strata_ok();
}

static int has_tensor(const strata_model_shape *s, int k)
{
    if (k == Q_B || k == K_B || k == V_B) return s->qkv_bias;
    if (k == Q_NORM || k == K_NORM) return s->qk_norm;
    return 1;
}

static int llama_max_tensors(const strata_model_shape *s) { return s->n_layer * BLOCK_TENSORS + 3; }

static void llama_layout(strata_model *m)
{
    const strata_model_shape *s = strata_model_get_shape(m);
    int C = s->n_embd, hs = s->head_dim, NH = s->n_head, NKV = s->n_kv_head, I = s->ffn_dim;
    const int rows[BLOCK_TENSORS] = {C,  NH * hs, NKV * hs, NKV * hs, NH * hs, NKV * hs, NKV * hs,
                                     hs, hs,      C,        C,        I,       I,        C};
    const int cols[BLOCK_TENSORS] = {0, C, C, C, 0, 0, 0, 0, 0, NH * hs, 0, C, C, I};
    strata_model_add_tensor(m, "model.embed_tokens.weight", STRATA_ROLE_TOKEN_EMBED, -1,
                            s->vocab_size, C, s->padded_vocab, 0);
    for (int l = 0; l < s->n_layer; l++)
        for (int k = 0; k < BLOCK_TENSORS; k++) {
            if (!has_tensor(s, k)) continue;
            char name[64];
            snprintf(name, sizeof name, "model.layers.%d.%s", l, block_tensor_names[k]);
            strata_model_add_tensor(m, name, STRATA_ROLE_BLOCK, l, rows[k], cols[k], rows[k], 0);
        }
    strata_model_add_tensor(m, "model.norm.weight", STRATA_ROLE_FINAL_NORM, -1, C, 0, C, 0);
    if (!s->tied)
        strata_model_add_tensor(m, "lm_head.weight", STRATA_ROLE_LM_HEAD, -1, s->vocab_size, C,
                                s->padded_vocab, 0);
}

/* HF's _init_weights: N(0, initializer_range = 0.02) for linear and
 * embedding weights, zero biases, norms' weights one. */
static void llama_init(strata_model *model, uint64_t seed)
{
    float *p = strata_model_params(model);
    for (int i = 0; i < strata_model_n_tensors(model); i++) {
        const strata_tensor *t = strata_model_tensor(model, i);
        float *w = p + t->offset;
        if (t->ndim == 1 && strstr(t->name, "norm")) {
            for (size_t k = 0; k < t->numel; k++) w[k] = 1.0f;
        } else if (t->ndim == 2) {
#pragma omp parallel for schedule(static)
            for (size_t k = 0; k < t->numel; k++)
                w[k] = 0.02f * strata_rng_normal(strata_rng_u64(seed, 0x11a3a, (uint64_t)i, k));
        }
    }
}

static double llama_matmul_params(const strata_model_shape *s)
{
    double C = s->n_embd, hs = s->head_dim, NH = s->n_head, NKV = s->n_kv_head, I = s->ffn_dim;
    double block = C * (NH + 2 * NKV) * hs + NH * hs * C + 3 * C * I;
    return s->n_layer * block + (double)s->vocab_size * C;
}

/* QK^T and AV over the full T x T square, forward and backward (3x), the
 * PaLM convention: 2 products x 2 FLOPs x 3 = 12 per score per head dim. */
static double llama_attention_flops(const strata_model_shape *s, int T)
{
    return 12.0 * s->n_layer * (double)s->n_head * s->head_dim * T;
}

static void free_arena(llama *m)
{
    free(m->arena), free(m->blocks), free(m->inputs), free(m->att_scratch);
    free(m->rope_cos), free(m->rope_sin);
    m->arena = NULL, m->blocks = NULL, m->inputs = NULL, m->att_scratch = NULL;
    m->rope_cos = m->rope_sin = NULL;
    /* No pointer into the freed arena survives it. */
    m->encoded = m->lnf = m->rf = m->d_res = m->x_norm = m->d_small = m->d_big = NULL;
    m->d_qkv = m->d_raw = m->h = m->dh = NULL;
    m->B = m->T = 0;
    m->arena_floats = 0;
}

static void llama_free_state(void *state)
{
    llama *m = state;
    if (!m) return;
    free_arena(m);
    free(m->inv_freq);
    free(m->off);
    free(m);
}

static strata_err alloc_arena(llama *m, int B, int T)
{
    const strata_model_shape *s = &m->s;
    size_t L = s->n_layer, C = s->n_embd, NH = s->n_head, NKV = s->n_kv_head, hs = s->head_dim,
           I = s->ffn_dim, BT = (size_t)B * T, QKV = m->QKV;
    size_t qk = s->qk_norm ? BT * QKV + BT * (NH + NKV) : 0;
    size_t per_block =
        BT * QKV + qk + BT * NH * hs + (size_t)B * NH * T + 2 * BT + BT * C + BT * 2 * I + BT * C;
    size_t big = 2 * I > QKV ? 2 * I : QKV;
    size_t total = BT * C /* encoded */ + BT * C + BT /* lnf, rf */ + L * per_block +
                   BT * C /* d_res */ + BT * C /* x_norm */ + BT * (NH * hs > C ? NH * hs : C) +
                   BT * big /* d_big */ + BT * QKV /* d_qkv */ + (s->qk_norm ? BT * QKV : 0) +
                   2 * BT * I /* h, dh */;
    free_arena(m);
    int threads =
        omp_get_max_threads() > omp_get_num_procs() ? omp_get_max_threads() : omp_get_num_procs();
    m->att_scratch_floats =
        strata_gqa_attention_scratch_floats(B, T, (int)NH, (int)NKV, (int)hs, threads);
    m->arena = strata_malloc(total * sizeof(float));
    m->blocks = calloc(L, sizeof *m->blocks);
    m->inputs = malloc(BT * sizeof(uint32_t));
    m->att_scratch = malloc((m->att_scratch_floats ? m->att_scratch_floats : 1) * sizeof(float));
    m->rope_cos = malloc((size_t)T * hs / 2 * sizeof(float));
    m->rope_sin = malloc((size_t)T * hs / 2 * sizeof(float));
    if (!m->arena || !m->blocks || !m->inputs || !m->att_scratch || !m->rope_cos || !m->rope_sin) {
        free_arena(m);
        return strata_errorf(STRATA_ENOMEM,
                             "out of memory for activations (%.1f GiB for B=%d T=%d)",
                             total * 4.0 / (1 << 30), B, T);
    }
    float *p = m->arena;
#define TAKE(n) (p += (n), p - (n))
    m->encoded = TAKE(BT * C);
    m->lnf = TAKE(BT * C);
    m->rf = TAKE(BT);
    for (size_t l = 0; l < L; l++) {
        block_acts *a = &m->blocks[l];
        a->qkv = TAKE(BT * QKV);
        if (s->qk_norm) a->qk_raw = TAKE(BT * QKV), a->qk_r = TAKE(BT * (NH + NKV));
        a->atty = TAKE(BT * NH * hs);
        a->lse = TAKE((size_t)B * NH * T);
        a->r1 = TAKE(BT), a->r2 = TAKE(BT);
        a->res2 = TAKE(BT * C);
        a->gu = TAKE(BT * 2 * I);
        a->res3 = TAKE(BT * C);
    }
    m->d_res = TAKE(BT * C);
    m->x_norm = TAKE(BT * C);
    m->d_small = TAKE(BT * (NH * hs > C ? NH * hs : C));
    m->d_big = TAKE(BT * big);
    m->d_qkv = TAKE(BT * QKV);
    if (s->qk_norm) m->d_raw = TAKE(BT * QKV);
    m->h = TAKE(BT * I);
    m->dh = TAKE(BT * I);
#undef TAKE
    m->arena_floats = total;
    strata_rope_tables(m->rope_cos, m->rope_sin, m->inv_freq, T, (int)hs);
    m->B = B, m->T = T;
    return strata_ok();
}

static strata_err new_state(strata_model *model, llama **out)
{
    llama *m = calloc(1, sizeof *m);
    if (!m) return strata_errorf(STRATA_ENOMEM, "out of memory");
    m->s = *strata_model_get_shape(model);
    m->params = strata_model_params(model);
    m->grads = strata_model_grads(model);
    m->timing = strata_model_timing_counters(model);
    m->QKV = (m->s.n_head + 2 * m->s.n_kv_head) * m->s.head_dim;
    m->scale = 1.0f / sqrtf((float)m->s.head_dim);
    m->inv_freq = malloc((size_t)m->s.head_dim / 2 * sizeof(float));
    m->off = calloc((size_t)m->s.n_layer, sizeof *m->off);
    if (!m->inv_freq || !m->off) {
        free(m->inv_freq), free(m->off), free(m);
        return strata_errorf(STRATA_ENOMEM, "out of memory");
    }
    strata_rope_inv_freq(m->inv_freq, m->s.head_dim, &m->s);
    for (int i = 0; i < strata_model_n_tensors(model); i++) {
        const strata_tensor *t = strata_model_tensor(model, i);
        if (t->role == STRATA_ROLE_TOKEN_EMBED) m->embed = t->offset;
        if (t->role == STRATA_ROLE_FINAL_NORM) m->final_norm = t->offset;
        if (t->role != STRATA_ROLE_BLOCK) continue;
        const char *rest = strchr(t->name + strlen("model.layers."), '.') + 1;
        for (int k = 0; k < BLOCK_TENSORS; k++)
            if (!strcmp(rest, block_tensor_names[k])) m->off[t->layer][k] = t->offset;
    }
    *out = m;
    return strata_ok();
}

static strata_err llama_reserve(strata_model *model, void **state, int B, int T)
{
    if (strata_model_dropout_request(model)->p > 0)
        return strata_errorf(STRATA_EINPUT, "dropout is not implemented for the llama family");
    if (!*state) {
        llama *fresh = NULL;
        STRATA_TRY(new_state(model, &fresh));
        *state = fresh;
    }
    llama *m = *state;
    if (m->B == B && m->T == T) return strata_ok();
    return alloc_arena(m, B, T);
}

static size_t llama_state_bytes(const void *state)
{
    const llama *m = state;
    return (m->arena_floats + m->att_scratch_floats) * 4;
}

static float *P(llama *m, int l, int k) { return m->params + m->off[l][k]; }
static float *G(llama *m, int l, int k) { return m->grads + m->off[l][k]; }
static const strata_bf16 *P16(llama *m, int l, int k)
{
    return m->params16 ? m->params16 + m->off[l][k] : NULL;
}

/* out = beta out + inp @ W(l, k)^T (+ bias), in the forward's precision. */
static void linear_fwd(llama *m, float *out, const float *inp, int l, int k, const float *bias,
                       int N, int C, int OC, float beta)
{
    strata_linear_forward(m->prec, out, inp, 0, P(m, l, k), P16(m, l, k), bias, N, C, OC, beta);
}

static void linear_bwd(llama *m, float *dinp, float *dbias, const float *dout, const float *inp,
                       int l, int k, int N, int C, int OC)
{
    strata_linear_backward(m->prec, dinp, G(m, l, k), dbias, dout, inp, 0, P(m, l, k), P16(m, l, k),
                           N, C, OC);
}

static void llama_embed_forward(strata_model *model, void *state, const uint32_t *inputs, int B,
                                int T)
{
    llama *m = state;
    memcpy(m->inputs, inputs, (size_t)B * T * sizeof(uint32_t));
    TIMED(elementwise, strata_encoder_forward(m->encoded, inputs, m->params + m->embed, NULL, B, T,
                                              m->s.n_embd));
}

/* Qwen3's QK-norm: each q and k head of qkv, RMS-normalised over hs with
 * q_norm / k_norm's weight; the input is kept in qk_raw for backward. */
static void qk_norm_forward(llama *m, int l, block_acts *a, int BT)
{
    int hs = m->s.head_dim, NH = m->s.n_head, NKV = m->s.n_kv_head;
    memcpy(a->qk_raw, a->qkv, (size_t)BT * m->QKV * sizeof(float));
    strata_rmsnorm_forward_strided(a->qkv, a->qk_r, a->qk_raw, P(m, l, Q_NORM), BT, NH, m->QKV, 0,
                                   NH + NKV, hs, m->s.norm_eps);
    strata_rmsnorm_forward_strided(a->qkv, a->qk_r + NH, a->qk_raw, P(m, l, K_NORM), BT, NKV,
                                   m->QKV, NH * hs, NH + NKV, hs, m->s.norm_eps);
}

static void llama_block_forward(strata_model *model, void *state, int l)
{
    llama *m = state;
    const strata_model_shape *s = &m->s;
    int B = m->B, T = m->T, BT = B * T, C = s->n_embd, I = s->ffn_dim;
    int NH = s->n_head, NKV = s->n_kv_head, hs = s->head_dim;
    block_acts *a = &m->blocks[l];
    const float *x = l > 0 ? m->blocks[l - 1].res3 : m->encoded;
    m->prec = strata_model_precision(model);
    m->params16 = strata_model_params_bf16(model);

    /* attention: res2 = x + o_proj(attn(rope(qk_norm(qkv(rms(x)))))) */
    TIMED(elementwise,
          strata_rmsnorm_forward(m->x_norm, a->r1, x, P(m, l, IN_NORM), BT, C, s->norm_eps));
    TIMED(matmul, linear_fwd(m, a->qkv, m->x_norm, l, Q_W, s->qkv_bias ? P(m, l, Q_B) : NULL, BT, C,
                             m->QKV, 0.0f));
    if (s->qk_norm) TIMED(elementwise, qk_norm_forward(m, l, a, BT));
    TIMED(elementwise, strata_rope_forward(a->qkv, m->rope_cos, m->rope_sin, B, T, NH, NKV, hs));
    TIMED(attention, strata_gqa_attention_forward_prec(m->prec, a->atty, a->lse, a->qkv, B, T, NH,
                                                       NKV, hs, s->sliding_window, m->scale,
                                                       m->att_scratch, m->att_scratch_floats));
    TIMED(elementwise, memcpy(a->res2, x, (size_t)BT * C * sizeof(float)));
    TIMED(matmul, linear_fwd(m, a->res2, a->atty, l, O_W, NULL, BT, NH * hs, C, 1.0f));

    /* MLP: res3 = res2 + down(silu(gate(rms(res2))) * up(rms(res2))) */
    TIMED(elementwise, strata_rmsnorm_forward(m->x_norm, a->r2, a->res2, P(m, l, POST_NORM), BT, C,
                                              s->norm_eps));
    TIMED(matmul, linear_fwd(m, a->gu, m->x_norm, l, GATE_W, NULL, BT, C, 2 * I, 0.0f));
    TIMED(elementwise, strata_swiglu_forward(m->h, a->gu, BT, I));
    TIMED(elementwise, memcpy(a->res3, a->res2, (size_t)BT * C * sizeof(float)));
    TIMED(matmul, linear_fwd(m, a->res3, m->h, l, DOWN_W, NULL, BT, I, C, 1.0f));
}

static const float *llama_final_norm_forward(strata_model *model, void *state)
{
    llama *m = state;
    int L = m->s.n_layer, BT = m->B * m->T;
    const float *x = m->blocks[L - 1].res3;
    TIMED(elementwise, strata_rmsnorm_forward(m->lnf, m->rf, x, m->params + m->final_norm, BT,
                                              m->s.n_embd, m->s.norm_eps));
    return m->lnf;
}

static void llama_final_norm_backward(strata_model *model, void *state, const float *dh,
                                      int need_dinp)
{
    llama *m = state;
    int L = m->s.n_layer, BT = m->B * m->T, C = m->s.n_embd;
    memset(m->d_res, 0, (size_t)BT * C * sizeof(float));
    TIMED(elementwise,
          strata_rmsnorm_backward(need_dinp ? m->d_res : NULL, m->grads + m->final_norm, dh,
                                  m->blocks[L - 1].res3, m->params + m->final_norm, m->rf, BT, C));
}

/* dqkv (after RoPE and QK-norm) back to the projection's output. */
static float *qkv_grad_to_projection(llama *m, int l, block_acts *a, int BT)
{
    int hs = m->s.head_dim, NH = m->s.n_head, NKV = m->s.n_kv_head;
    strata_rope_backward(m->d_qkv, m->rope_cos, m->rope_sin, m->B, m->T, NH, NKV, hs);
    if (!m->s.qk_norm) return m->d_qkv;
    /* v passes through; q and k heads through their RMSNorm. */
    memcpy(m->d_raw, m->d_qkv, (size_t)BT * m->QKV * sizeof(float));
    for (int i = 0; i < BT; i++)
        memset(m->d_raw + (size_t)i * m->QKV, 0, (size_t)(NH + NKV) * hs * sizeof(float));
    strata_rmsnorm_backward_strided(m->d_raw, G(m, l, Q_NORM), m->d_qkv, a->qk_raw, P(m, l, Q_NORM),
                                    a->qk_r, BT, NH, m->QKV, 0, NH + NKV, hs);
    strata_rmsnorm_backward_strided(m->d_raw, G(m, l, K_NORM), m->d_qkv, a->qk_raw, P(m, l, K_NORM),
                                    a->qk_r + NH, BT, NKV, m->QKV, NH * hs, NH + NKV, hs);
    return m->d_raw;
}

/* On entry d_res holds dLoss/d(res3); on exit dLoss/d(block input) unless
 * need_dinp is 0. */
static void llama_block_backward(strata_model *model, void *state, int l, int need_dinp)
{
    llama *m = state;
    const strata_model_shape *s = &m->s;
    int B = m->B, T = m->T, BT = B * T, C = s->n_embd, I = s->ffn_dim;
    int NH = s->n_head, NKV = s->n_kv_head, hs = s->head_dim;
    block_acts *a = &m->blocks[l];
    const float *x = l > 0 ? m->blocks[l - 1].res3 : m->encoded;
    float *d_res = m->d_res, *d_small = m->d_small, *d_big = m->d_big;

    /* MLP: SwiGLU's output h is recomputed from gate|up. */
    TIMED(elementwise, strata_swiglu_forward(m->h, a->gu, BT, I));
    memset(m->dh, 0, (size_t)BT * I * sizeof(float));
    TIMED(matmul, linear_bwd(m, m->dh, NULL, d_res, m->h, l, DOWN_W, BT, I, C));
    float *d_gu = d_big; /* (BT, 2I) */
    TIMED(elementwise, strata_swiglu_backward(d_gu, m->dh, a->gu, BT, I));
    TIMED(elementwise, strata_rmsnorm_forward(m->x_norm, a->r2, a->res2, P(m, l, POST_NORM), BT, C,
                                              s->norm_eps));
    memset(d_small, 0, (size_t)BT * C * sizeof(float));
    TIMED(matmul, linear_bwd(m, d_small, NULL, d_gu, m->x_norm, l, GATE_W, BT, C, 2 * I));
    TIMED(elementwise, strata_rmsnorm_backward(d_res, G(m, l, POST_NORM), d_small, a->res2,
                                               P(m, l, POST_NORM), a->r2, BT, C));

    /* attention */
    memset(d_small, 0, (size_t)BT * NH * hs * sizeof(float));
    TIMED(matmul, linear_bwd(m, d_small, NULL, d_res, a->atty, l, O_W, BT, NH * hs, C));
    TIMED(attention, strata_gqa_attention_backward_prec(
                         m->prec, m->d_qkv, d_small, a->qkv, a->atty, a->lse, B, T, NH, NKV, hs,
                         s->sliding_window, m->scale, m->att_scratch, m->att_scratch_floats));
    float *d_proj;
    TIMED(elementwise, d_proj = qkv_grad_to_projection(m, l, a, BT));
    TIMED(elementwise,
          strata_rmsnorm_forward(m->x_norm, a->r1, x, P(m, l, IN_NORM), BT, C, s->norm_eps));
    memset(d_small, 0, (size_t)BT * C * sizeof(float));
    TIMED(matmul, linear_bwd(m, d_small, s->qkv_bias ? G(m, l, Q_B) : NULL, d_proj, m->x_norm, l,
                             Q_W, BT, C, m->QKV));
    TIMED(elementwise, strata_rmsnorm_backward(need_dinp ? d_res : NULL, G(m, l, IN_NORM), d_small,
                                               x, P(m, l, IN_NORM), a->r1, BT, C));
}

static void llama_embed_backward(strata_model *model, void *state, float *d_tok)
{
    llama *m = state;
    TIMED(elementwise,
          strata_encoder_backward(d_tok, NULL, m->d_res, m->inputs, m->B, m->T, m->s.n_embd));
}

static strata_err llama_decode_reserve(strata_model *model, void **dstate, int n_max, int max_T);
static const float *llama_decode(strata_model *model, void *dstate, struct strata_kv_cache *kv,
                                 const uint32_t *tokens, int n, int pos);
static void llama_decode_free(void *dstate);

const strata_family strata_family_llama = {
    .name = "llama",
    .resolve = llama_resolve,
    .max_tensors = llama_max_tensors,
    .layout = llama_layout,
    .init = llama_init,
    .matmul_params = llama_matmul_params,
    .attention_flops = llama_attention_flops,
    .reserve = llama_reserve,
    .free_state = llama_free_state,
    .state_bytes = llama_state_bytes,
    .embed_forward = llama_embed_forward,
    .block_forward = llama_block_forward,
    .final_norm_forward = llama_final_norm_forward,
    .final_norm_backward = llama_final_norm_backward,
    .block_backward = llama_block_backward,
    .embed_backward = llama_embed_backward,
    .decode_reserve = llama_decode_reserve,
    .decode = llama_decode,
    .decode_free = llama_decode_free,
};

/* ---- decoding with a KV cache (generate.h) ---------------------------------
 *
 * The block forward above on the n new rows only, with RoPE at positions
 * pos..pos+n-1 (rows of tables made once for max_T) and the new keys and
 * values appended to the cache before the rows attend over it. The offsets
 * and inv_freq come from new_state, without its training arena. */
typedef struct llama_decode_state {
    llama *base;
    int n_max, max_T;
    float *cos_t, *sin_t;                                   /* (max_T, hs/2) */
    float *x, *xn, *r, *qkv, *raw, *atty, *gu, *h, *scores; /* (n_max, ...) */
} llama_decode_state;

static void llama_decode_free(void *dstate)
{
    llama_decode_state *d = dstate;
    if (!d) return;
    llama_free_state(d->base);
    free(d->cos_t);
    free(d->x);
    free(d);
}

static strata_err llama_decode_reserve(strata_model *model, void **dstate, int n_max, int max_T)
{
    llama_decode_free(*dstate);
    *dstate = NULL;
    llama_decode_state *d = calloc(1, sizeof *d);
    if (!d) return strata_errorf(STRATA_ENOMEM, "out of memory");
    strata_err e = new_state(model, &d->base);
    if (e.code) {
        free(d);
        return e;
    }
    const strata_model_shape *s = &d->base->s;
    size_t N = (size_t)n_max, C = s->n_embd, hs = s->head_dim, QKV = d->base->QKV,
           I = s->ffn_dim, A = (size_t)s->n_head * hs;
    size_t total = 2 * N * C + N * (s->n_head + s->n_kv_head) + 2 * N * QKV + N * A +
                   3 * N * I + (size_t)max_T;
    d->n_max = n_max, d->max_T = max_T;
    d->cos_t = malloc((size_t)max_T * hs * sizeof(float)); /* cos then sin */
    d->x = malloc(total * sizeof(float));
    if (!d->cos_t || !d->x) {
        llama_decode_free(d);
        return strata_errorf(STRATA_ENOMEM, "out of memory for decoding (%d tokens)", n_max);
    }
    d->sin_t = d->cos_t + (size_t)max_T * hs / 2;
    strata_rope_tables(d->cos_t, d->sin_t, d->base->inv_freq, max_T, (int)hs);
    float *p = d->x;
#define TAKE(k) (p += (k), p - (k))
    d->x = TAKE(N * C), d->xn = TAKE(N * C);
    d->r = TAKE(N * (s->n_head + s->n_kv_head));
    d->qkv = TAKE(N * QKV), d->raw = TAKE(N * QKV);
    d->atty = TAKE(N * A);
    d->gu = TAKE(N * 2 * I), d->h = TAKE(N * I);
    d->scores = TAKE((size_t)max_T);
#undef TAKE
    *dstate = d;
    return strata_ok();
}

static void decode_qk_norm(llama *m, int l, float *qkv, float *raw, float *r, int n)
{
    int hs = m->s.head_dim, NH = m->s.n_head, NKV = m->s.n_kv_head;
    memcpy(raw, qkv, (size_t)n * m->QKV * sizeof(float));
    strata_rmsnorm_forward_strided(qkv, r, raw, P(m, l, Q_NORM), n, NH, m->QKV, 0, NH + NKV, hs,
                                   m->s.norm_eps);
    strata_rmsnorm_forward_strided(qkv, r + NH, raw, P(m, l, K_NORM), n, NKV, m->QKV, NH * hs,
                                   NH + NKV, hs, m->s.norm_eps);
}

static const float *llama_decode(strata_model *model, void *dstate, struct strata_kv_cache *kv,
                                 const uint32_t *tokens, int n, int pos)
{
    llama_decode_state *d = dstate;
    llama *m = d->base;
    const strata_model_shape *s = &m->s;
    int C = s->n_embd, I = s->ffn_dim, NH = s->n_head, NKV = s->n_kv_head, hs = s->head_dim;
    size_t half = (size_t)hs / 2;
    strata_encoder_forward(d->x, tokens, m->params + m->embed, NULL, 1, n, C);
    for (int l = 0; l < s->n_layer; l++) {
        strata_rmsnorm_forward(d->xn, d->r, d->x, P(m, l, IN_NORM), n, C, s->norm_eps);
        strata_matmul_forward(d->qkv, d->xn, P(m, l, Q_W), s->qkv_bias ? P(m, l, Q_B) : NULL, n, C,
                              m->QKV, 0.0f);
        if (s->qk_norm) decode_qk_norm(m, l, d->qkv, d->raw, d->r, n);
        strata_rope_forward(d->qkv, d->cos_t + pos * half, d->sin_t + pos * half, 1, n, NH, NKV,
                            hs);
        strata_kv_store(kv, l, d->qkv, m->QKV, n, pos);
        strata_kv_attention(d->atty, d->qkv, m->QKV, kv, l, n, pos, NH, NKV, hs,
                            s->sliding_window, m->scale, d->scores);
        strata_matmul_forward(d->x, d->atty, P(m, l, O_W), NULL, n, NH * hs, C, 1.0f);
        strata_rmsnorm_forward(d->xn, d->r, d->x, P(m, l, POST_NORM), n, C, s->norm_eps);
        strata_matmul_forward(d->gu, d->xn, P(m, l, GATE_W), NULL, n, C, 2 * I, 0.0f);
        strata_swiglu_forward(d->h, d->gu, n, I);
        strata_matmul_forward(d->x, d->h, P(m, l, DOWN_W), NULL, n, I, C, 1.0f);
    }
    strata_rmsnorm_forward(d->xn, d->r, d->x, m->params + m->final_norm, n, C, s->norm_eps);
    return d->xn;
}
