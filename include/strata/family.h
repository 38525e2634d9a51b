/* family.h — what a model family supplies to the generic model.
 *
 * The generic model (src/model.c) owns the parameter and gradient buffers,
 * the tensor table, the lm head with its cross-entropy (computed in chunks
 * of rows, so that B*T*V logits never exist at once) and the backward
 * driver: the frozen-prefix cut-off and the notifications that start the
 * gradient reduction. A family (src/gpt2.c, src/llama.c) owns its tensors'
 * names and buffer layout, their initialisation, its activations and the
 * forward and backward of its embedding, blocks and final norm:
 *
 *   forward:  x = embed(inputs); x = block_l(x) for l = 0..L-1;
 *             h = final_norm(x)                   -> the lm head's input (B*T, C)
 *   backward: dh from the lm head -> final_norm' -> block_l' for l = L-1..first
 *             -> embed' (only when every block trained)
 *
 * Buffer layout, the same for every family: the token embedding first, then
 * anything else below the blocks (GPT-2's position embedding), the blocks in
 * order, each contiguous, then the final norm and, untied, the lm head last.
 * Backward finishes the buffer from its end towards its start, which is
 * what lets the reduction of the upper blocks overlap the backward of the
 * lower ones.
 *
 * Backward functions ADD into the gradient buffer. A family keeps the
 * gradient w.r.t. the residual stream between calls in its own state.
 */
#ifndef STRATA_FAMILY_H
#define STRATA_FAMILY_H

#include <stddef.h>
#include <stdint.h>

#include "strata/err.h"
#include "strata/model.h"

struct strata_kv_cache;

typedef struct strata_family {
    const char *name; /* "gpt2", "llama" */
    /* Fills the zero fields with the family's defaults and checks the rest;
     * an error names the field and the problem. */
    strata_err (*resolve)(strata_model_shape *s);
    /* An upper bound on the number of tensors, then the tensors themselves,
     * through strata_model_add_tensor in buffer order. */
    int (*max_tensors)(const strata_model_shape *s);
    void (*layout)(strata_model *m);
    /* The family's initialisation from scratch, a pure function of seed. */
    void (*init)(strata_model *m, uint64_t seed);
    /* Parameters that take part in a matrix product per token (the lm head
     * counted once when tied, embedding lookups not counted), and the
     * attention score FLOPs per token at sequence length T, forward and
     * backward: the two terms of perf.h's FLOPs per token. */
    double (*matmul_params)(const strata_model_shape *s);
    double (*attention_flops)(const strata_model_shape *s, int T);

    /* Activations for micro-batches of (B, T): allocate (or resize) the
     * family's state. *state is NULL the first time. */
    strata_err (*reserve)(strata_model *m, void **state, int B, int T);
    void (*free_state)(void *state);
    size_t (*state_bytes)(const void *state);

    /* Forward of the embedding, one block and the final norm; the last
     * returns the lm head's input, (B*T, C). dropout is the forward's state,
     * or NULL when off (families without dropout refuse p > 0 before). */
    void (*embed_forward)(strata_model *m, void *state, const uint32_t *inputs, int B, int T);
    void (*block_forward)(strata_model *m, void *state, int l);
    const float *(*final_norm_forward)(strata_model *m, void *state);

    /* Backward. dh (B*T, C) is the gradient w.r.t. the final norm's output;
     * need_dinp = 0 when nothing below needs the residual's gradient. */
    void (*final_norm_backward)(strata_model *m, void *state, const float *dh, int need_dinp);
    void (*block_backward)(strata_model *m, void *state, int l, int need_dinp);
    /* d_tok is the token embedding's gradient (NULL: frozen). */
    void (*embed_backward)(strata_model *m, void *state, float *d_tok);

    /* Optional: dropout's masks (GPT-2); NULL where the family has none. */
    size_t (*dropout_mask)(const strata_model *m, const void *state, int layer, int site,
                           float *out);

    /* Optional: decoding with a KV cache (generate.h). decode_reserve makes
     * the decode state (*dstate NULL the first time) for up to n_max new
     * tokens a call and positions < max_T. decode runs tokens[0..n) at
     * positions pos..pos+n-1: stores each layer's keys (after QK-norm and
     * RoPE) and values in kv, attends over positions <= its own and returns
     * the final norm's output (n, C), owned by the state. NULL: no decode. */
    strata_err (*decode_reserve)(strata_model *m, void **dstate, int n_max, int max_T);
    const float *(*decode)(strata_model *m, void *dstate, struct strata_kv_cache *kv,
                           const uint32_t *tokens, int n, int pos);
    void (*decode_free)(void *dstate);
} strata_family;

extern const strata_family strata_family_gpt2;
extern const strata_family strata_family_llama;
/* The family of a shape's `family` field; NULL for an unknown one. */
const strata_family *strata_family_find(int id);

/* For families' layout: appends a tensor. rows x cols (cols 0: a vector);
 * stored_rows >= rows floats-rows are reserved in the buffer (embeddings:
 * padded_vocab). */
void strata_model_add_tensor(strata_model *m, const char *name, int role, int layer, int rows,
                             int cols, int stored_rows, int hf_transposed);

/* Dropout as set by strata_model_set_dropout, for the family's forward. */
typedef struct strata_dropout_request {
    float p;
    uint64_t seed;
    long step;
    const int64_t *sample_ids;
} strata_dropout_request;
const strata_dropout_request *strata_model_dropout_request(const strata_model *m);

/* The timing counters the family adds to (see strata_model_get_timing). */
strata_model_timing *strata_model_timing_counters(strata_model *m);
double strata_wall_seconds(void);

/* Runs stmt, adding its wall time to (*timing).field. */
#define STRATA_TIMED(timing, field, stmt)                                                          \
    do {                                                                                           \
        double t0_ = strata_wall_seconds();                                                        \
        stmt;                                                                                      \
        (timing)->field += strata_wall_seconds() - t0_;                                            \
    } while (0)

#endif
