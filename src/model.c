/* The generic model: buffers, tensor table, the chunked lm head and the
 * backward driver; the family (family.h) supplies everything else. */
#include "strata/model.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/family.h"
#include "strata/gemm.h"
#include "strata/kernels.h"
#include "strata/mem.h"

struct strata_model {
    strata_model_shape shape;
    const strata_family *family;
    float *params, *grads;
    size_t n_floats;
    strata_tensor *tensors;
    int n_tensors, max_tensors;

    void *state; /* the family's activations */
    int B, T;    /* the reservation */
    /* The lm head: one chunk of logits at a time, (chunk_rows, Vp). */
    float *chunk, *d_head, *losses; /* (rows, Vp), (B*T, C), (B*T) */
    int chunk_rows;
    float *logits; /* (B*T, Vp), only for forward without targets */
    size_t logits_floats;
    int fwd_B, fwd_T;

    strata_dropout_request drop;
    strata_model_timing timing;

    strata_precision prec;
    strata_bf16 *params16; /* bf16 copy of params (bf16 only), same offsets */
    int params16_stale;    /* params may have changed since the copy */
};

const strata_family *strata_family_find(int id)
{
    switch (id) {
    case STRATA_FAMILY_GPT2:
        return &strata_family_gpt2;
    case STRATA_FAMILY_LLAMA:
        return &strata_family_llama;
    default:
        return NULL;
    }
}

double strata_wall_seconds(void) { return omp_get_wtime(); }
strata_model_timing *strata_model_timing_counters(strata_model *m) { return &m->timing; }

void strata_model_add_tensor(strata_model *m, const char *name, int role, int layer, int rows,
                             int cols, int stored_rows, int hf_transposed)
{
    strata_tensor *t = &m->tensors[m->n_tensors++];
    size_t off = m->n_floats;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->offset = off;
    t->layer = layer;
    t->role = role;
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = (size_t)rows * (cols ? cols : 1);
    t->decay = cols ? 1 : 0;
    t->hf_transposed = hf_transposed;
    m->n_floats = off + (size_t)stored_rows * (cols ? cols : 1);
}

static strata_err check_common(const strata_model_shape *s)
{
    if (s->n_layer < 1 || s->n_head < 1 || s->n_embd < 1 || s->block_size < 2 || s->vocab_size < 2)
        return strata_errorf(STRATA_EINPUT,
                             "model shape must be positive (n_layer %d, n_head %d, "
                             "n_embd %d, block_size %d, vocab_size %d)",
                             s->n_layer, s->n_head, s->n_embd, s->block_size, s->vocab_size);
    if (s->n_layer > 1024 || s->n_embd > 65536 || s->block_size > 1 << 20 ||
        s->vocab_size > 1 << 24 || s->n_head > 1024)
        return strata_errorf(STRATA_EINPUT, "model shape out of range");
    return strata_ok();
}

strata_err strata_model_resolve_shape(strata_model_shape *s)
{
    const strata_family *f = strata_family_find(s->family);
    if (!f) return strata_errorf(STRATA_EINPUT, "unknown model family %d", s->family);
    STRATA_TRY(check_common(s));
    STRATA_TRY(f->resolve(s));
    s->padded_vocab = (s->vocab_size + 63) / 64 * 64;
    return strata_ok();
}

strata_err strata_model_create(strata_model **out, const strata_model_shape *shape)
{
    strata_model_shape s = *shape;
    STRATA_TRY(strata_model_resolve_shape(&s));
    strata_model *m = calloc(1, sizeof *m);
    if (!m) return strata_errorf(STRATA_ENOMEM, "out of memory");
    m->shape = s;
    m->family = strata_family_find(s.family);
    m->max_tensors = m->family->max_tensors(&s);
    m->tensors = calloc((size_t)m->max_tensors, sizeof *m->tensors);
    if (!m->tensors) {
        free(m);
        return strata_errorf(STRATA_ENOMEM, "out of memory");
    }
    m->family->layout(m);
    m->params = strata_calloc(m->n_floats, sizeof(float));
    m->grads = strata_calloc(m->n_floats, sizeof(float));
    if (!m->params || !m->grads) {
        size_t n = m->n_floats;
        strata_model_free(m);
        return strata_errorf(STRATA_ENOMEM, "out of memory for %zu parameters", n);
    }
    *out = m;
    return strata_ok();
}

static void free_head(strata_model *m)
{
    free(m->chunk), free(m->d_head), free(m->losses);
    m->chunk = m->d_head = m->losses = NULL;
}

void strata_model_free(strata_model *m)
{
    if (!m) return;
    if (m->state) m->family->free_state(m->state);
    free(m->params);
    free(m->grads);
    free(m->tensors);
    free_head(m);
    free(m->logits);
    free(m->params16);
    free(m);
}

const strata_model_shape *strata_model_get_shape(const strata_model *m) { return &m->shape; }
/* Whoever takes the parameters may write them: the bf16 copy is redone
 * before the next forward. */
float *strata_model_params(strata_model *m)
{
    m->params16_stale = 1;
    return m->params;
}
float *strata_model_grads(strata_model *m) { return m->grads; }
size_t strata_model_n_floats(const strata_model *m) { return m->n_floats; }
int strata_model_n_tensors(const strata_model *m) { return m->n_tensors; }
const strata_tensor *strata_model_tensor(const strata_model *m, int i) { return &m->tensors[i]; }
const char *strata_model_family_name(const strata_model *m) { return m->family->name; }
int strata_model_has_dropout(const strata_model *m) { return m->family->dropout_mask != NULL; }

size_t strata_model_n_params(const strata_model *m)
{
    size_t n = 0;
    for (int i = 0; i < m->n_tensors; i++) n += m->tensors[i].numel;
    return n;
}

const strata_tensor *strata_model_find(const strata_model *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

const strata_tensor *strata_model_find_role(const strata_model *m, int role)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].role == role) return &m->tensors[i];
    return NULL;
}

void strata_model_block_range(const strata_model *m, int l, size_t *begin, size_t *end)
{
    *begin = *end = 0;
    int seen = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const strata_tensor *t = &m->tensors[i];
        if (t->role != STRATA_ROLE_BLOCK || t->layer != l) continue;
        if (!seen++) *begin = t->offset;
        *end = t->offset + t->numel;
    }
}

size_t strata_model_top_begin(const strata_model *m)
{
    const strata_tensor *t = strata_model_find_role(m, STRATA_ROLE_FINAL_NORM);
    return t ? t->offset : m->n_floats;
}

strata_err strata_model_set_precision(strata_model *m, strata_precision prec)
{
    if (prec != STRATA_FP32 && prec != STRATA_BF16)
        return strata_errorf(STRATA_EINPUT, "unknown precision %d", (int)prec);
    STRATA_TRY(strata_gemm_check_precision(prec));
    if (prec == STRATA_BF16 && !m->params16) {
        m->params16 = malloc(m->n_floats * sizeof(strata_bf16));
        if (!m->params16)
            return strata_errorf(STRATA_ENOMEM, "out of memory for the bf16 weight copy");
    }
    if (prec == STRATA_FP32) free(m->params16), m->params16 = NULL;
    m->prec = prec;
    m->params16_stale = 1;
    return strata_ok();
}

strata_precision strata_model_precision(const strata_model *m) { return m->prec; }
void strata_model_weights_changed(strata_model *m) { m->params16_stale = 1; }
const strata_bf16 *strata_model_params_bf16(const strata_model *m) { return m->params16; }

/* The copy is made whole, 1-D tensors included (they are a few floats). */
static void refresh_bf16(strata_model *m)
{
    if (!m->params16 || !m->params16_stale) return;
    STRATA_TIMED(&m->timing, elementwise,
                 strata_bf16_from_floats(m->params16, m->params, m->n_floats));
    m->params16_stale = 0;
}

void strata_model_init(strata_model *m, uint64_t seed)
{
    m->params16_stale = 1;
    memset(m->params, 0, m->n_floats * sizeof(float));
    m->family->init(m, seed);
}

/* The lm head's weight: the token embedding when tied. Both have
 * padded_vocab rows in memory. */
static const strata_tensor *head_tensor(const strata_model *m)
{
    const strata_tensor *h = strata_model_find_role(m, STRATA_ROLE_LM_HEAD);
    return h ? h : strata_model_find_role(m, STRATA_ROLE_TOKEN_EMBED);
}

/* Chunk rows: about 32 Mi floats (128 MiB) of logits, 32 to 2048 rows: big
 * enough that dW += dlogits^T h does not reread the (Vp, C) gradient for
 * every few rows (GPT-2 small: 4 chunks of 656), small enough that a
 * 151,936-token vocabulary holds 208 rows, not B*T. At least 32 rows so that the
 * head's products stay efficient. A function of the shape only, so the
 * summation order of the head's gradient never depends on the batch. */
#ifndef STRATA_HEAD_CHUNK_MFLOATS
#define STRATA_HEAD_CHUNK_MFLOATS 32L
#endif
static int head_chunk_rows(const strata_model_shape *s)
{
    long rows = (STRATA_HEAD_CHUNK_MFLOATS << 20) / s->padded_vocab;
    rows = rows < 32 ? 32 : rows > 2048 ? 2048 : rows;
    return (int)(rows / 16 * 16);
}

static strata_err reserve(strata_model *m, int B, int T)
{
    if (B < 1 || T < 1 || T > m->shape.block_size)
        return strata_errorf(STRATA_EINPUT, "sequence length %d must be in [1, block_size %d]", T,
                             m->shape.block_size);
    STRATA_TRY(m->family->reserve(m, &m->state, B, T));
    if (m->B == B && m->T == T && m->chunk) return strata_ok();
    free_head(m);
    size_t BT = (size_t)B * T, C = m->shape.n_embd, Vp = m->shape.padded_vocab;
    m->chunk_rows = head_chunk_rows(&m->shape);
    if ((size_t)m->chunk_rows > BT) m->chunk_rows = (int)BT;
    m->chunk = strata_malloc((size_t)m->chunk_rows * Vp * sizeof(float));
    m->d_head = strata_malloc(BT * C * sizeof(float));
    m->losses = strata_malloc(BT * sizeof(float));
    if (!m->chunk || !m->d_head || !m->losses) {
        free_head(m);
        m->B = m->T = 0;
        return strata_errorf(STRATA_ENOMEM, "out of memory for the lm head (B=%d T=%d)", B, T);
    }
    m->B = B, m->T = T;
    return strata_ok();
}

strata_err strata_model_reserve(strata_model *m, int B, int T) { return reserve(m, B, T); }

size_t strata_model_activation_bytes(const strata_model *m)
{
    size_t BT = (size_t)m->B * m->T;
    size_t head = ((size_t)m->chunk_rows * m->shape.padded_vocab + BT * (m->shape.n_embd + 1)) * 4;
    return head + (m->state ? m->family->state_bytes(m->state) : 0) + m->logits_floats * 4;
}

/* The family's forward up to the lm head's input. */
static const float *body_forward(strata_model *m, const uint32_t *inputs, int B, int T)
{
    m->fwd_B = B, m->fwd_T = T;
    refresh_bf16(m);
    m->family->embed_forward(m, m->state, inputs, B, T);
    for (int l = 0; l < m->shape.n_layer; l++) m->family->block_forward(m, m->state, l);
    return m->family->final_norm_forward(m, m->state);
}

/* The lm head over rows [0, N) of h, chunk by chunk: logits = h W^T, the
 * cross-entropy's losses and, when grad_scale != 0, dlogits = grad_scale *
 * (softmax - onehot) turned at once into dh = dlogits W (if dh) and
 * dW += dlogits^T h (if dW). */
static void head_chunks(strata_model *m, const float *h, const uint32_t *targets, int N,
                        float grad_scale, float *dh, float *dW)
{
    int C = m->shape.n_embd, V = m->shape.vocab_size, Vp = m->shape.padded_vocab;
    size_t off = head_tensor(m)->offset;
    const float *W = m->params + off;
    const strata_bf16 *W16 = m->params16 ? m->params16 + off : NULL;
    for (int r0 = 0; r0 < N; r0 += m->chunk_rows) {
        int n = N - r0 < m->chunk_rows ? N - r0 : m->chunk_rows;
        const float *hc = h + (size_t)r0 * C;
        STRATA_TIMED(&m->timing, matmul,
                     strata_linear_forward(m->prec, m->chunk, hc, 0, W, W16, NULL, n, C, Vp, 0.0f));
        STRATA_TIMED(&m->timing, loss,
                     strata_crossentropy_forward_backward(m->chunk, m->losses + r0, targets + r0, n,
                                                          V, Vp, grad_scale));
        if (grad_scale == 0.0f) continue;
        float *dhc = dh ? dh + (size_t)r0 * C : NULL;
        if (dhc) memset(dhc, 0, (size_t)n * C * sizeof(float));
        STRATA_TIMED(
            &m->timing, matmul,
            strata_linear_backward(m->prec, dhc, dW, NULL, m->chunk, hc, 0, W, W16, n, C, Vp));
    }
}

static float mean_losses(const strata_model *m, int B, int T, float *per_seq_loss)
{
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        double seq = 0.0;
        for (int t = 0; t < T; t++) seq += m->losses[(size_t)b * T + t];
        if (per_seq_loss) per_seq_loss[b] = (float)(seq / T);
        total += seq;
    }
    return (float)(total / ((double)B * T));
}

strata_err strata_model_forward(strata_model *m, const uint32_t *inputs, const uint32_t *targets,
                                int B, int T, float *per_seq_loss, float *loss)
{
    if (B < 1 || T < 1 || T > m->shape.block_size)
        return strata_errorf(
            STRATA_EINPUT, "forward of %d x %d tokens: B must be >= 1 and T in [1, block_size %d]",
            B, T, m->shape.block_size);
    STRATA_TRY(reserve(m, B, T));
    const float *h = body_forward(m, inputs, B, T);
    int C = m->shape.n_embd, Vp = m->shape.padded_vocab;
    size_t BT = (size_t)B * T;
    if (loss) *loss = 0.0f;
    if (!targets) {
        if (m->logits_floats < BT * Vp) {
            strata_free(m->logits);
            m->logits = strata_malloc(BT * Vp * sizeof(float));
            m->logits_floats = m->logits ? BT * Vp : 0;
            if (!m->logits)
                return strata_errorf(STRATA_ENOMEM,
                                     "out of memory for the logits (%.1f GiB for B=%d T=%d)",
                                     BT * Vp * 4.0 / (1 << 30), B, T);
        }
        size_t off = head_tensor(m)->offset;
        STRATA_TIMED(&m->timing, matmul,
                     strata_linear_forward(m->prec, m->logits, h, 0, m->params + off,
                                           m->params16 ? m->params16 + off : NULL, NULL, (int)BT, C,
                                           Vp, 0.0f));
        return strata_ok();
    }
    head_chunks(m, h, targets, (int)BT, 0.0f, NULL, NULL);
    float mean = mean_losses(m, B, T, per_seq_loss);
    if (loss) *loss = mean;
    return strata_ok();
}

static void notify(const strata_backward_opts *o, int layer)
{
    if (o->on_block_done) o->on_block_done(o->ctx, layer);
}

strata_err strata_model_forward_backward(strata_model *m, const uint32_t *inputs,
                                         const uint32_t *targets, int B, int T, float *per_seq_loss,
                                         float *loss, const strata_backward_opts *o)
{
    STRATA_TRY(reserve(m, B, T));
    int L = m->shape.n_layer;
    int first = o->stop_at_top ? L : o->first_trainable_block;
    /* The embeddings sit below block 0, so freezing any block freezes them
     * too: the token embedding's full gradient would need block 0's
     * backward, and the tied head's share alone is not the gradient of
     * anything (it would still count in the global norm). stop_at_top asks
     * for that share on purpose. */
    int embeddings_train =
        !o->embeddings_frozen && (o->first_trainable_block == 0 || o->stop_at_top);
    int tied = !strata_model_find_role(m, STRATA_ROLE_LM_HEAD);
    float *dW = !tied || embeddings_train ? m->grads + head_tensor(m)->offset : NULL;

    const float *h = body_forward(m, inputs, B, T);
    head_chunks(m, h, targets, B * T, o->loss_scale, m->d_head, dW);
    *loss = mean_losses(m, B, T, per_seq_loss);

    int need_below = first < L || (first == 0 && embeddings_train);
    m->family->final_norm_backward(m, m->state, m->d_head, need_below);
    notify(o, L);
    for (int l = L - 1; l >= first; l--) {
        int need_dinp = l > first || (l == 0 && embeddings_train && first == 0);
        m->family->block_backward(m, m->state, l, need_dinp);
        notify(o, l);
    }
    if (first == 0 && embeddings_train && !o->stop_at_top)
        m->family->embed_backward(
            m, m->state, m->grads + strata_model_find_role(m, STRATA_ROLE_TOKEN_EMBED)->offset);
    notify(o, -1);
    return strata_ok();
}

void strata_model_set_dropout(strata_model *m, float p, uint64_t seed, long step,
                              const int64_t *sample_ids)
{
    m->drop = (strata_dropout_request){p > 0 && p < 1 ? p : 0, seed, step, sample_ids};
}

const strata_dropout_request *strata_model_dropout_request(const strata_model *m)
{
    return &m->drop;
}

size_t strata_model_dropout_mask(const strata_model *m, int layer, int site, float *out)
{
    if (!m->family->dropout_mask || !m->state) return 0;
    return m->family->dropout_mask(m, m->state, layer, site, out);
}

void strata_model_zero_grad(strata_model *m) { memset(m->grads, 0, m->n_floats * sizeof(float)); }
const float *strata_model_logits(const strata_model *m) { return m->logits; }
strata_model_timing strata_model_get_timing(const strata_model *m) { return m->timing; }
void strata_model_reset_timing(strata_model *m) { memset(&m->timing, 0, sizeof m->timing); }
