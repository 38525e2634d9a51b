/* GPT-2 forward and backward over one parameter buffer; see model.h. */
#include "strata/model.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/kernels.h"
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

/* Activations one block keeps for its backward pass. */
typedef struct block_acts {
    float *ln1, *ln1_mean, *ln1_rstd; /* (B,T,C), (B,T), (B,T) */
    float *qkv;                       /* (B,T,3C) */
    float *atty;                      /* (B,T,C) attention output before c_proj */
    float *att;                       /* (B,NH,T,T) softmax probabilities */
    float *res2;                      /* (B,T,C) residual after attention */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *fch, *fch_gelu; /* (B,T,4C) */
    float *res3;           /* (B,T,C) block output */
} block_acts;

struct strata_model {
    strata_model_shape shape;
    float *params, *grads;
    size_t n_floats;
    strata_tensor *tensors;
    int n_tensors;

    int B, T; /* the arena's size */
    float *arena;
    size_t arena_floats;
    float *encoded, *lnf, *lnf_mean, *lnf_rstd, *logits, *losses;
    block_acts *blocks;
    float *d_res, *d_small, *d_big, *d_att; /* backward scratch */
    uint32_t *inputs, *targets;
    int fwd_B, fwd_T, fwd_has_targets;
    strata_model_timing timing;

    /* Dropout (see strata_model_set_dropout). Set for the next forward: */
    float drop_p;
    uint64_t drop_seed;
    long drop_step;
    const int64_t *drop_ids; /* the caller's, read by the next forward */
    /* Used by the last forward (fwd_drop) and its backward: one mask row of
     * bits per sequence and site, allocated on first use for (drop_B, drop_T). */
    int fwd_drop, drop_B, drop_T;
    float drop_scale;
    uint32_t drop_threshold;
    long words_res, words_att; /* per sequence: (T, C) and (NH, T, T) sites */
    uint64_t *drop_bits;       /* embed, then per block: attn, attn.c_proj, mlp.c_proj */
    uint64_t *drop_keys;       /* (1 + 3L, B) row keys, same order */
    size_t drop_words;
    float *head_scratch; /* feature extraction's lm head backward */
    size_t head_scratch_floats;
};

static void add_tensor(strata_model *m, const char *name, int layer, int rows, int cols,
                       size_t stored_rows, size_t *offset)
{
    strata_tensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->offset = *offset;
    t->layer = layer;
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = (size_t)rows * (cols ? cols : 1);
    t->decay = cols ? 1 : 0;
    *offset += stored_rows * (cols ? cols : 1);
}

strata_err strata_model_create(strata_model **out, const strata_model_shape *shape)
{
    strata_model_shape s = *shape;
    if (s.n_layer < 1 || s.n_head < 1 || s.n_embd < 1 || s.block_size < 2 || s.vocab_size < 2)
        return strata_errorf(STRATA_EINPUT,
                             "model shape must be positive (n_layer %d, n_head %d, "
                             "n_embd %d, block_size %d, vocab_size %d)",
                             s.n_layer, s.n_head, s.n_embd, s.block_size, s.vocab_size);
    if (s.n_embd % s.n_head)
        return strata_errorf(STRATA_EINPUT, "n_embd (%d) must be a multiple of n_head (%d)",
                             s.n_embd, s.n_head);
    if (s.n_layer > 1024 || s.n_embd > 65536 || s.block_size > 1 << 20 || s.vocab_size > 1 << 24)
        return strata_errorf(STRATA_EINPUT, "model shape out of range");
    s.padded_vocab = (s.vocab_size + 63) / 64 * 64;

    strata_model *m = calloc(1, sizeof *m);
    if (!m) return strata_errorf(STRATA_EFAIL, "out of memory");
    m->shape = s;
    int L = s.n_layer, C = s.n_embd;
    m->tensors = calloc((size_t)L * BLOCK_TENSORS + 4, sizeof *m->tensors);
    if (!m->tensors) {
        free(m);
        return strata_errorf(STRATA_EFAIL, "out of memory");
    }
    size_t off = 0;
    add_tensor(m, "wte.weight", -1, s.vocab_size, C, (size_t)s.padded_vocab, &off);
    add_tensor(m, "wpe.weight", -1, s.block_size, C, (size_t)s.block_size, &off);
    for (int l = 0; l < L; l++) {
        const int rows[BLOCK_TENSORS] = {C, C, 3 * C, 3 * C, C, C, C, C, 4 * C, 4 * C, C, C};
        const int cols[BLOCK_TENSORS] = {0, 0, C, 0, C, 0, 0, 0, C, 0, 4 * C, 0};
        for (int i = 0; i < BLOCK_TENSORS; i++) {
            char name[48];
            snprintf(name, sizeof name, "h.%d.%s", l, block_tensor_names[i]);
            add_tensor(m, name, l, rows[i], cols[i], (size_t)rows[i], &off);
        }
    }
    add_tensor(m, "ln_f.weight", -1, C, 0, (size_t)C, &off);
    add_tensor(m, "ln_f.bias", -1, C, 0, (size_t)C, &off);
    m->n_floats = off;
    m->params = calloc(off, sizeof(float));
    m->grads = calloc(off, sizeof(float));
    if (!m->params || !m->grads) {
        strata_model_free(m);
        return strata_errorf(STRATA_EFAIL, "out of memory for %zu parameters", off);
    }
    *out = m;
    return strata_ok();
}

void strata_model_free(strata_model *m)
{
    if (!m) return;
    free(m->params);
    free(m->grads);
    free(m->tensors);
    free(m->arena);
    free(m->blocks);
    free(m->inputs);
    free(m->targets);
    free(m->drop_bits);
    free(m->drop_keys);
    free(m->head_scratch);
    free(m);
}

const strata_model_shape *strata_model_get_shape(const strata_model *m) { return &m->shape; }
float *strata_model_params(strata_model *m) { return m->params; }
float *strata_model_grads(strata_model *m) { return m->grads; }
size_t strata_model_n_floats(const strata_model *m) { return m->n_floats; }
size_t strata_model_n_params(const strata_model *m)
{
    return m->n_floats - (size_t)(m->shape.padded_vocab - m->shape.vocab_size) * m->shape.n_embd;
}
int strata_model_n_tensors(const strata_model *m) { return m->n_tensors; }
const strata_tensor *strata_model_tensor(const strata_model *m, int i) { return &m->tensors[i]; }

const strata_tensor *strata_model_find(const strata_model *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

void strata_model_block_range(const strata_model *m, int l, size_t *begin, size_t *end)
{
    const strata_tensor *first = &m->tensors[2 + l * BLOCK_TENSORS];
    const strata_tensor *last = first + BLOCK_TENSORS - 1;
    *begin = first->offset;
    *end = last->offset + last->numel;
}

static float *param(strata_model *m, int l, int which)
{
    return m->params + m->tensors[2 + l * BLOCK_TENSORS + which].offset;
}
static float *grad(strata_model *m, int l, int which)
{
    return m->grads + m->tensors[2 + l * BLOCK_TENSORS + which].offset;
}

void strata_model_init_gpt2(strata_model *m, uint64_t seed)
{
    float proj_std = 0.02f / sqrtf(2.0f * m->shape.n_layer);
    memset(m->params, 0, m->n_floats * sizeof(float));
    for (int i = 0; i < m->n_tensors; i++) {
        const strata_tensor *t = &m->tensors[i];
        float *p = m->params + t->offset;
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

static strata_err alloc_arena(strata_model *m, int B, int T)
{
    size_t L = m->shape.n_layer, C = m->shape.n_embd, NH = m->shape.n_head,
           Vp = m->shape.padded_vocab, BT = (size_t)B * T;
    size_t per_block = BT * (16 * C + 4) + (size_t)B * NH * T * T;
    size_t total = BT * C /* encoded */ + BT * (C + 2) /* lnf */ + BT * Vp /* logits */ + BT +
                   L * per_block + BT * C /* d_res */ + BT * C /* d_small */ +
                   BT * 4 * C /* d_big */ + (size_t)B * NH * T * T /* d_att */;
    free(m->arena);
    free(m->blocks);
    free(m->inputs);
    free(m->targets);
    m->arena = malloc(total * sizeof(float));
    m->blocks = calloc(L, sizeof *m->blocks);
    m->inputs = malloc(BT * sizeof(uint32_t));
    m->targets = malloc(BT * sizeof(uint32_t));
    if (!m->arena || !m->blocks || !m->inputs || !m->targets) {
        free(m->arena), free(m->blocks), free(m->inputs), free(m->targets);
        m->arena = NULL, m->blocks = NULL, m->inputs = NULL, m->targets = NULL;
        m->B = m->T = 0;
        return strata_errorf(STRATA_EFAIL, "out of memory for activations (%.1f GiB for B=%d T=%d)",
                             total * 4.0 / (1 << 30), B, T);
    }
    float *p = m->arena;
#define TAKE(n) (p += (n), p - (n))
    m->encoded = TAKE(BT * C);
    m->lnf = TAKE(BT * C);
    m->lnf_mean = TAKE(BT);
    m->lnf_rstd = TAKE(BT);
    m->logits = TAKE(BT * Vp);
    m->losses = TAKE(BT);
    for (size_t l = 0; l < L; l++) {
        block_acts *a = &m->blocks[l];
        a->ln1 = TAKE(BT * C), a->ln1_mean = TAKE(BT), a->ln1_rstd = TAKE(BT);
        a->qkv = TAKE(BT * 3 * C);
        a->atty = TAKE(BT * C);
        a->att = TAKE((size_t)B * NH * T * T);
        a->res2 = TAKE(BT * C);
        a->ln2 = TAKE(BT * C), a->ln2_mean = TAKE(BT), a->ln2_rstd = TAKE(BT);
        a->fch = TAKE(BT * 4 * C), a->fch_gelu = TAKE(BT * 4 * C);
        a->res3 = TAKE(BT * C);
    }
    m->d_res = TAKE(BT * C);
    m->d_small = TAKE(BT * C);
    m->d_big = TAKE(BT * 4 * C);
    m->d_att = TAKE((size_t)B * NH * T * T);
#undef TAKE
    m->arena_floats = total;
    m->B = B;
    m->T = T;
    return strata_ok();
}

strata_err strata_model_reserve(strata_model *m, int B, int T)
{
    if (B < 1 || T < 1 || T > m->shape.block_size)
        return strata_errorf(STRATA_EINPUT, "sequence length %d must be in [1, block_size %d]", T,
                             m->shape.block_size);
    if (m->B == B && m->T == T) return strata_ok();
    return alloc_arena(m, B, T);
}

size_t strata_model_activation_bytes(const strata_model *m)
{
    return m->arena_floats * 4 + m->drop_words * 8;
}

#define TIMED(field, stmt)                                                                         \
    do {                                                                                           \
        double t0_ = omp_get_wtime();                                                              \
        stmt;                                                                                      \
        m->timing.field += omp_get_wtime() - t0_;                                                  \
    } while (0)

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

void strata_model_set_dropout(strata_model *m, float p, uint64_t seed, long step,
                              const int64_t *sample_ids)
{
    m->drop_p = p > 0 && p < 1 ? p : 0;
    m->drop_seed = seed;
    m->drop_step = step;
    m->drop_ids = sample_ids;
}

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
static uint64_t *dropout_words(const strata_model *m, int slot)
{
    if (slot == 0) return m->drop_bits;
    int l = (slot - 1) / 3, k = (slot - 1) % 3;
    size_t per_block = (size_t)m->words_att + 2 * (size_t)m->words_res;
    size_t within = k == 0 ? 0 : (size_t)m->words_att + (k == 2 ? (size_t)m->words_res : 0);
    return m->drop_bits + (size_t)m->drop_B * (m->words_res + l * per_block + within);
}

static strata_dropout dropout_of(const strata_model *m, int layer, int site)
{
    int slot = dropout_slot(layer, site);
    return (strata_dropout){dropout_words(m, slot),
                            site == STRATA_DROPOUT_ATTN ? m->words_att : m->words_res,
                            m->drop_scale};
}

static void dropout_generate_slot(strata_model *m, int slot)
{
    int site = slot == 0 ? STRATA_DROPOUT_EMBED : 1 + (slot - 1) % 3;
    long words = site == STRATA_DROPOUT_ATTN ? m->words_att : m->words_res;
    long len = site == STRATA_DROPOUT_ATTN ? (long)m->shape.n_head * m->fwd_T * m->fwd_T
                                           : (long)m->fwd_T * m->shape.n_embd;
    strata_dropout_generate(dropout_words(m, slot), words, m->drop_keys + (size_t)slot * m->fwd_B,
                            m->fwd_B, len, m->drop_threshold);
}

/* Row keys and bits of every site for the forward about to run (B, T). */
static int dropout_prepare(strata_model *m, int B, int T)
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

size_t strata_model_dropout_mask(const strata_model *m, int layer, int site, float *out)
{
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

float strata_model_forward(strata_model *m, const uint32_t *inputs, const uint32_t *targets, int B,
                           int T, float *per_seq_loss)
{
    int L = m->shape.n_layer, C = m->shape.n_embd, NH = m->shape.n_head;
    int V = m->shape.vocab_size, Vp = m->shape.padded_vocab, BT = B * T;
    /* The caller reserved at least this size; a smaller batch reuses the arena
     * only when it has the same T (the layout depends on T). */
    if (T > m->shape.block_size || B < 1 || T < 1) return NAN;
    if (B != m->B || T != m->T) {
        strata_err e = alloc_arena(m, B, T);
        if (e.code) return NAN;
    }
    memcpy(m->inputs, inputs, (size_t)BT * sizeof(uint32_t));
    m->fwd_B = B, m->fwd_T = T, m->fwd_has_targets = targets != NULL;
    const float *wte = m->params, *wpe = m->params + m->tensors[1].offset;
    int drop = m->fwd_drop = m->drop_p > 0;
    if (drop) {
        int failed;
        TIMED(elementwise, failed = dropout_prepare(m, B, T));
        if (failed) {
            m->fwd_drop = m->fwd_has_targets = 0; /* nothing for a backward to use */
            return NAN;
        }
    }

    TIMED(elementwise, strata_encoder_forward(m->encoded, inputs, wte, wpe, B, T, C));
    if (drop) {
        strata_dropout d = dropout_of(m, -1, STRATA_DROPOUT_EMBED);
        TIMED(elementwise, strata_dropout_apply(m->encoded, m->encoded, &d, B, (long)T * C));
    }
    const float *residual = m->encoded;
    for (int l = 0; l < L; l++) {
        block_acts *a = &m->blocks[l];
        TIMED(elementwise, strata_layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, residual,
                                                    param(m, l, LN1_W), param(m, l, LN1_B), BT, C));
        TIMED(matmul, strata_matmul_forward(a->qkv, a->ln1, param(m, l, QKV_W), param(m, l, QKV_B),
                                            BT, C, 3 * C, 0.0f));
        if (!drop) {
            TIMED(attention, strata_attention_forward(a->atty, a->att, a->qkv, B, T, C, NH));
            /* res2 = residual + c_proj(atty): copy, then let sgemm accumulate. */
            TIMED(elementwise, memcpy(a->res2, residual, (size_t)BT * C * sizeof(float)));
            TIMED(matmul, strata_matmul_forward(a->res2, a->atty, param(m, l, PROJ_W),
                                                param(m, l, PROJ_B), BT, C, C, 1.0f));
        } else {
            /* The dropped probabilities live in d_att (backward scratch) for
             * the call; the branch output in d_small, dropped, then added. */
            strata_dropout da = dropout_of(m, l, STRATA_DROPOUT_ATTN);
            strata_dropout dp = dropout_of(m, l, STRATA_DROPOUT_ATTN_PROJ);
            TIMED(attention, strata_attention_forward_dropout(a->atty, a->att, m->d_att, a->qkv, B,
                                                              T, C, NH, &da));
            TIMED(matmul, strata_matmul_forward(m->d_small, a->atty, param(m, l, PROJ_W),
                                                param(m, l, PROJ_B), BT, C, C, 0.0f));
            TIMED(elementwise, strata_dropout_apply(m->d_small, m->d_small, &dp, B, (long)T * C));
            TIMED(elementwise, strata_residual_forward(a->res2, residual, m->d_small, BT * C));
        }
        TIMED(elementwise, strata_layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->res2,
                                                    param(m, l, LN2_W), param(m, l, LN2_B), BT, C));
        TIMED(matmul, strata_matmul_forward(a->fch, a->ln2, param(m, l, FC_W), param(m, l, FC_B),
                                            BT, C, 4 * C, 0.0f));
        TIMED(elementwise, strata_gelu_forward(a->fch_gelu, a->fch, BT * 4 * C));
        if (!drop) {
            TIMED(elementwise, memcpy(a->res3, a->res2, (size_t)BT * C * sizeof(float)));
            TIMED(matmul, strata_matmul_forward(a->res3, a->fch_gelu, param(m, l, FCPROJ_W),
                                                param(m, l, FCPROJ_B), BT, 4 * C, C, 1.0f));
        } else {
            strata_dropout dm = dropout_of(m, l, STRATA_DROPOUT_MLP_PROJ);
            TIMED(matmul, strata_matmul_forward(m->d_small, a->fch_gelu, param(m, l, FCPROJ_W),
                                                param(m, l, FCPROJ_B), BT, 4 * C, C, 0.0f));
            TIMED(elementwise, strata_dropout_apply(m->d_small, m->d_small, &dm, B, (long)T * C));
            TIMED(elementwise, strata_residual_forward(a->res3, a->res2, m->d_small, BT * C));
        }
        residual = a->res3;
    }
    const float *lnf_w = m->params + m->tensors[m->n_tensors - 2].offset;
    const float *lnf_b = m->params + m->tensors[m->n_tensors - 1].offset;
    TIMED(elementwise, strata_layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, residual, lnf_w,
                                                lnf_b, BT, C));
    TIMED(matmul, strata_matmul_forward(m->logits, m->lnf, wte, NULL, BT, C, Vp, 0.0f));
    if (!targets) return 0.0f;

    memcpy(m->targets, targets, (size_t)BT * sizeof(uint32_t));
    /* The logits become d(sum of losses)/d(logits) right away: the backward
     * pass needs them and a second softmax pass would cost as much again. */
    TIMED(loss,
          strata_crossentropy_forward_backward(m->logits, m->losses, targets, BT, V, Vp, 1.0f));
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        double seq = 0.0;
        for (int t = 0; t < T; t++) seq += m->losses[b * T + t];
        if (per_seq_loss) per_seq_loss[b] = (float)(seq / T);
        total += seq;
    }
    return (float)(total / BT);
}

static void notify(const strata_backward_opts *o, int layer)
{
    if (o->on_block_done) o->on_block_done(o->ctx, layer);
}

/* Backward through block l: on entry d_res holds dLoss/d(res3); on exit it
 * holds dLoss/d(block input), unless need_dinp is 0. */
static void block_backward(strata_model *m, int l, const float *block_input, int need_dinp)
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
    TIMED(matmul,
          strata_matmul_backward(d_big, grad(m, l, FCPROJ_W), grad(m, l, FCPROJ_B), d_branch,
                                 a->fch_gelu, param(m, l, FCPROJ_W), BT, 4 * C, C));
    TIMED(elementwise, strata_gelu_backward(d_big, a->fch, d_big, BT * 4 * C));
    memset(d_small, 0, (size_t)BT * C * sizeof(float));
    TIMED(matmul, strata_matmul_backward(d_small, grad(m, l, FC_W), grad(m, l, FC_B), d_big, a->ln2,
                                         param(m, l, FC_W), BT, C, 4 * C));
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
    TIMED(matmul, strata_matmul_backward(d_small, grad(m, l, PROJ_W), grad(m, l, PROJ_B), d_branch,
                                         a->atty, param(m, l, PROJ_W), BT, C, C));
    float *d_qkv = d_big; /* (B,T,3C) fits in the (B,T,4C) scratch, free again */
    if (!drop) {
        TIMED(attention,
              strata_attention_backward(d_qkv, m->d_att, d_small, a->qkv, a->att, B, T, C, NH));
    } else {
        strata_dropout da = dropout_of(m, l, STRATA_DROPOUT_ATTN);
        TIMED(attention, strata_attention_backward_dropout(d_qkv, m->d_att, d_small, a->qkv, a->att,
                                                           B, T, C, NH, &da));
    }
    memset(d_small, 0, (size_t)BT * C * sizeof(float));
    TIMED(matmul, strata_matmul_backward(d_small, grad(m, l, QKV_W), grad(m, l, QKV_B), d_qkv,
                                         a->ln1, param(m, l, QKV_W), BT, C, 3 * C));
    TIMED(elementwise, strata_layernorm_backward(
                           need_dinp ? d_res : NULL, grad(m, l, LN1_W), grad(m, l, LN1_B), d_small,
                           block_input, param(m, l, LN1_W), a->ln1_mean, a->ln1_rstd, BT, C));
}

/* Feature extraction: only ln_f and the lm head train, so the gradient
 * w.r.t. ln_f's input is never needed, and strata_lm_head_backward gets
 * ln_f's and wte's gradients from one (Vp, N) x (N, C) product instead of
 * two (1.65x a forward in FLOPs instead of 2.29x on the small config). ln_f's
 * gradient then comes from another summation than the full backward's, equal
 * to fp32 rounding (test_dropout.c checks it). -DSTRATA_FE_LM_HEAD_IDENTITY=0
 * builds the two-product way. Returns 0 (do it the usual way) when off or out
 * of memory. */
#ifndef STRATA_FE_LM_HEAD_IDENTITY
#define STRATA_FE_LM_HEAD_IDENTITY 1
#endif
static int head_backward_without_dinp(strata_model *m, float *dwte, const float *final_res, int BT)
{
    if (!STRATA_FE_LM_HEAD_IDENTITY) return 0;
    int C = m->shape.n_embd, Vp = m->shape.padded_vocab;
    size_t need = strata_lm_head_scratch_floats(BT, C);
    if (need > m->head_scratch_floats) {
        free(m->head_scratch);
        m->head_scratch = malloc(need * sizeof(float));
        m->head_scratch_floats = m->head_scratch ? need : 0;
        if (!m->head_scratch) return 0;
    }
    size_t lnf_w = m->tensors[m->n_tensors - 2].offset, lnf_b = m->tensors[m->n_tensors - 1].offset;
    TIMED(matmul,
          strata_lm_head_backward(dwte, m->grads + lnf_w, m->grads + lnf_b, m->logits, final_res,
                                  m->lnf_mean, m->lnf_rstd, m->params, m->params + lnf_w,
                                  m->params + lnf_b, BT, C, Vp, m->head_scratch));
    return 1;
}

void strata_model_backward(strata_model *m, const strata_backward_opts *o)
{
    int L = m->shape.n_layer, C = m->shape.n_embd, Vp = m->shape.padded_vocab;
    int BT = m->fwd_B * m->fwd_T;
    if (!m->fwd_has_targets) return;
    if (o->loss_scale != 1.0f) {
        float s = o->loss_scale;
        size_t n = (size_t)BT * Vp;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) m->logits[i] *= s;
    }
    int first = o->stop_at_top ? L : o->first_trainable_block;
    /* The embeddings sit below block 0, so freezing any block freezes them
     * too: wte's full gradient would need block 0's backward, and the lm
     * head's share alone is not the gradient of anything (it would still
     * count in the global norm). stop_at_top asks for that share on purpose. */
    int embeddings_train =
        !o->embeddings_frozen && (o->first_trainable_block == 0 || o->stop_at_top);
    float *dwte = embeddings_train ? m->grads : NULL;
    float *dwpe = embeddings_train && !o->stop_at_top ? m->grads + m->tensors[1].offset : NULL;

    /* lm head (tied to wte) and the final LayerNorm. */
    int need_below = first < L || (first == 0 && embeddings_train);
    const float *final_res = L > 0 ? m->blocks[L - 1].res3 : m->encoded;
    if (!need_below && head_backward_without_dinp(m, dwte, final_res, BT)) {
        notify(o, L);
        notify(o, -1);
        return;
    }
    memset(m->d_small, 0, (size_t)BT * C * sizeof(float));
    TIMED(matmul,
          strata_matmul_backward(m->d_small, dwte, NULL, m->logits, m->lnf, m->params, BT, C, Vp));
    memset(m->d_res, 0, (size_t)BT * C * sizeof(float));
    TIMED(elementwise,
          strata_layernorm_backward(
              need_below ? m->d_res : NULL, m->grads + m->tensors[m->n_tensors - 2].offset,
              m->grads + m->tensors[m->n_tensors - 1].offset, m->d_small, final_res,
              m->params + m->tensors[m->n_tensors - 2].offset, m->lnf_mean, m->lnf_rstd, BT, C));
    notify(o, L);
    for (int l = L - 1; l >= first; l--) {
        int need_dinp = l > first || (l == 0 && embeddings_train && first == 0);
        block_backward(m, l, l > 0 ? m->blocks[l - 1].res3 : m->encoded, need_dinp);
        notify(o, l);
    }
    if (first == 0 && embeddings_train) {
        if (m->fwd_drop) {
#if STRATA_DROPOUT_RECOMPUTE
            TIMED(elementwise, dropout_generate_slot(m, 0));
#endif
            strata_dropout d = dropout_of(m, -1, STRATA_DROPOUT_EMBED);
            TIMED(elementwise,
                  strata_dropout_apply(m->d_res, m->d_res, &d, m->fwd_B, (long)m->fwd_T * C));
        }
        TIMED(elementwise,
              strata_encoder_backward(dwte, dwpe, m->d_res, m->inputs, m->fwd_B, m->fwd_T, C));
    }
    notify(o, -1);
}

void strata_model_zero_grad(strata_model *m) { memset(m->grads, 0, m->n_floats * sizeof(float)); }
const float *strata_model_logits(const strata_model *m) { return m->logits; }
strata_model_timing strata_model_get_timing(const strata_model *m) { return m->timing; }
void strata_model_reset_timing(strata_model *m) { memset(&m->timing, 0, sizeof m->timing); }
