/* model.h — a decoder-only transformer in fp32: parameters, gradients,
 * forward and backward, for every family (family.h: GPT-2, LLaMA).
 *
 * All parameters live in one contiguous buffer, described by a table of
 * tensors with the family's Hugging Face names and a role each. Gradients
 * live in a buffer of the same layout, so the all-reduce, ZeRO sharding,
 * checkpoints and freezing all work on ranges of offsets.
 *
 * Layout, in buffer order: the token embedding, anything else below the
 * blocks (GPT-2's wpe), block 0 ... block L-1 (each contiguous), the final
 * norm, and the lm head when it is not tied. Backward finishes the buffer
 * from the end towards the start.
 *
 * Linear weights are stored (out, in) like torch.nn.Linear (GPT-2's Conv1D
 * stores the transpose on the hub: hf_transposed). The token embedding (and
 * an untied lm head) has vocab_size rows in every file but padded_vocab rows
 * in memory: the padding rows are zero, stay zero (their gradient is zero)
 * and never get probability mass.
 *
 * The lm head and its cross-entropy run in chunks of rows: a forward never
 * holds B*T*Vp logits (only forward without targets, which returns them,
 * does). The model knows no files and no MPI.
 */
#ifndef STRATA_MODEL_H
#define STRATA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "strata/err.h"
#include "strata/gemm.h"

/* Model families: each is one file (src/gpt2.c, src/llama.c) behind the
 * interface of family.h; nothing outside it knows its tensor names. */
enum { STRATA_FAMILY_GPT2 = 0, STRATA_FAMILY_LLAMA = 1 };
/* RoPE frequency scaling, as Hugging Face's rope_type. */
enum { STRATA_ROPE_DEFAULT = 0, STRATA_ROPE_LINEAR = 1, STRATA_ROPE_LLAMA3 = 2 };

/* The architecture. The first five fields are GPT-2's whole shape; the rest
 * default to GPT-2's values when zero (family 0, ffn_dim 4C, ...), so a
 * GPT-2 shape is still {L, NH, C, T, V}. */
typedef struct strata_model_shape {
    int n_layer;        /* L */
    int n_head;         /* NH, query heads */
    int n_embd;         /* C, the residual stream's width (hidden_size) */
    int block_size;     /* max T (position embeddings / max_position_embeddings) */
    int vocab_size;     /* V */
    int padded_vocab;   /* Vp: V rounded up to a multiple of 64 */
    int family;         /* STRATA_FAMILY_* */
    int n_kv_head;      /* NKV: key/value heads (grouped-query attention); 0 = NH */
    int head_dim;       /* hs; 0 = C / NH */
    int ffn_dim;        /* MLP width (intermediate_size); 0 = 4C */
    int tied;           /* lm head is the token embedding (GPT-2: always) */
    int qkv_bias;       /* q/k/v projections have biases (Qwen2) */
    int qk_norm;        /* per-head RMSNorm over hs on q and k before RoPE (Qwen3) */
    int sliding_window; /* attend to the last W positions only (Mistral); 0 = all */
    float norm_eps;     /* RMSNorm / LayerNorm epsilon; 0 = 1e-5 */
    /* RoPE (llama family): inv_freq[i] = theta^(-2i/hs), then scaled. */
    double rope_theta;                                  /* 0 = 10000 */
    int rope_type;                                      /* STRATA_ROPE_* */
    double rope_factor;                                 /* linear and llama3 */
    double rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    int rope_original_max; /* llama3: original_max_position_embeddings */
    /* Which Hugging Face model_type within the family (STRATA_VARIANT_*), so
     * that export writes back the model_type it came from; the architecture
     * is fully described by the fields above. */
    int variant;
} strata_model_shape;

/* Hugging Face model_type within a family; 0 is the family's own name
 * ("gpt2" for GPT-2, "llama" for the llama family). */
enum {
    STRATA_VARIANT_BASE = 0,
    STRATA_VARIANT_MISTRAL = 1,
    STRATA_VARIANT_QWEN2 = 2,
    STRATA_VARIANT_QWEN3 = 3
};

/* What a tensor is for, so that the trainer, the optimizer's groups,
 * checkpoints and freezing never need its name. */
enum {
    STRATA_ROLE_TOKEN_EMBED = 0, /* (V, C); also the lm head when tied */
    STRATA_ROLE_POS_EMBED = 1,   /* (block_size, C), GPT-2 */
    STRATA_ROLE_BLOCK = 2,       /* a tensor of block `layer` */
    STRATA_ROLE_FINAL_NORM = 3,  /* the norm before the lm head */
    STRATA_ROLE_LM_HEAD = 4,     /* (V, C), untied models */
};

typedef struct strata_tensor {
    char name[64];     /* the family's Hugging Face name ("h.3.attn.c_attn.weight",
                          "model.layers.3.self_attn.q_proj.weight") */
    size_t offset;     /* into params/grads, in floats */
    size_t numel;      /* elements stored in files (embeddings: V*C) */
    int ndim;          /* 1 or 2 */
    int shape[2];      /* as stored in strata's files: embeddings (V, C); linear (out, in) */
    int layer;         /* block index, or -1 outside the blocks */
    int decay;         /* 1 for 2-D weights (weight decay applies) */
    int role;          /* STRATA_ROLE_* */
    int hf_transposed; /* Hugging Face stores it (in, out) (GPT-2's Conv1D) */
} strata_tensor;

typedef struct strata_model strata_model;

/* Resolves the shape with its family's defaults, checks it and allocates
 * parameters and gradients, zeroed. */
strata_err strata_model_create(strata_model **out, const strata_model_shape *shape);
/* The shape strata_model_create would use: defaults filled, checked. */
strata_err strata_model_resolve_shape(strata_model_shape *s);
void strata_model_free(strata_model *m);

const strata_model_shape *strata_model_get_shape(const strata_model *m);
float *strata_model_params(strata_model *m);
float *strata_model_grads(strata_model *m);
size_t strata_model_n_floats(const strata_model *m); /* buffer length, padding included */
size_t strata_model_n_params(const strata_model *m); /* real parameters, no padding */
int strata_model_n_tensors(const strata_model *m);
const strata_tensor *strata_model_tensor(const strata_model *m, int i);
const strata_tensor *strata_model_find(const strata_model *m, const char *name);
/* The first tensor with a role, NULL if none (a tied model has no lm head). */
const strata_tensor *strata_model_find_role(const strata_model *m, int role);
/* [begin, end) float offsets of block l's tensors. */
void strata_model_block_range(const strata_model *m, int l, size_t *begin, size_t *end);
/* Offset of the first float above the blocks (final norm, lm head). */
size_t strata_model_top_begin(const strata_model *m);
/* The family's name ("gpt2", "llama"). */
const char *strata_model_family_name(const strata_model *m);

/* The family's initialisation from scratch (GPT-2: N(0, 0.02), residual
 * projections scaled by 1/sqrt(2L), norms' weights one, biases zero); a
 * pure function of seed. */
void strata_model_init(strata_model *m, uint64_t seed);

/* Sizes the activation arena for micro-batches of B sequences of T tokens
 * (T <= block_size). Must precede forward; may be called again to resize. */
strata_err strata_model_reserve(strata_model *m, int B, int T);
size_t strata_model_activation_bytes(const strata_model *m);

/* Forward pass over inputs (B, T), no gradients. With targets (B, T),
 * *loss (may be NULL) receives the mean cross-entropy over the B*T
 * positions and per_seq_loss (B, may be NULL) each sequence's mean loss.
 * With targets NULL it keeps the logits (strata_model_logits) and *loss is
 * 0. A bad shape is STRATA_EINPUT, a failed allocation STRATA_ENOMEM; after
 * either, no pointer into freed memory remains and a later call with a
 * shape that fits succeeds. Every token id must be <
 * vocab_size (checked by the data layer). */
strata_err strata_model_forward(strata_model *m, const uint32_t *inputs, const uint32_t *targets,
                                int B, int T, float *per_seq_loss, float *loss);

/* How forward_backward's backward runs. It ADDS to the gradient buffer the
 * gradient of loss_scale * (sum of the B*T token losses). Blocks below
 * first_trainable_block get no gradient and cost no compute; with
 * embeddings_frozen the token embedding gets none from the lookup (nor, when
 * tied, from the head). Between blocks it calls on_block_done(ctx, l) when
 * block l's gradients are final (l = L for the final norm and the lm head,
 * -1 for the embeddings), so communication can start. */
typedef struct strata_backward_opts {
    float loss_scale;
    int first_trainable_block; /* 0 = all blocks */
    int embeddings_frozen;
    int stop_at_top; /* feature extraction: only the final norm and the lm head */
    void (*on_block_done)(void *ctx, int layer);
    void *ctx;
} strata_backward_opts;

/* Forward with targets, then backward: the lm head's backward runs chunk by
 * chunk inside the forward, on the logits of the chunk just computed. *loss
 * receives the mean cross-entropy, per_seq_loss (B, may be NULL) each
 * sequence's. */
strata_err strata_model_forward_backward(strata_model *m, const uint32_t *inputs,
                                         const uint32_t *targets, int B, int T, float *per_seq_loss,
                                         float *loss, const strata_backward_opts *opts);

/* Dropout for the following forward passes, as GPT-2 has it: on the
 * embedding sum, the attention probabilities and the output of each
 * residual branch (attn.c_proj, mlp.c_proj), with inverted scaling 1/(1-p).
 * The keep/drop decision of every element is a pure function of (seed,
 * step, sample_ids[b], layer, site, position), so a resumed run and a run on
 * any number of ranks draw the same masks; sample_ids (B) name each row of
 * the batch globally (its slot in the global batch). p = 0 turns dropout off
 * (evaluation); backward reuses the forward's masks. sample_ids is read by
 * each forward until the next call (NULL: row b is sample b). */
void strata_model_set_dropout(strata_model *m, float p, uint64_t seed, long step,
                              const int64_t *sample_ids);
/* 1 when the family implements dropout (GPT-2); others refuse p > 0. */
int strata_model_has_dropout(const strata_model *m);

/* Dropout sites; the site number is part of the mask's key. */
enum {
    STRATA_DROPOUT_EMBED = 0,     /* the embedding sum, (B, T, C); no layer */
    STRATA_DROPOUT_ATTN = 1,      /* block's attention probabilities, (B, NH, T, T) */
    STRATA_DROPOUT_ATTN_PROJ = 2, /* block's attn.c_proj output, (B, T, C) */
    STRATA_DROPOUT_MLP_PROJ = 3,  /* block's mlp.c_proj output, (B, T, C) */
};
/* The mask the last forward applied at a site of block `layer`, as the
 * factor each element was multiplied by: 0 or 1/(1-p), or 1 everywhere when
 * dropout was off (for tests and fixtures). Returns the number of values,
 * written to out unless it is NULL; 0 for no such site or layer. */
size_t strata_model_dropout_mask(const strata_model *m, int layer, int site, float *out);

/* Precision of the matrix products (gemm.h), fp32 by default. In bf16 the
 * model keeps a bf16 copy of its parameters (round to nearest even), made
 * again before a forward whenever the fp32 ones may have changed:
 * strata_model_params() (a writer's way in) and strata_model_init mark it,
 * strata_model_weights_changed() says so explicitly. Activations, norms,
 * softmax, loss, residual stream and gradients stay fp32; the fp32 master
 * weights are the model's (checkpoints do not change). Fails with the
 * error of strata_gemm_check_precision where bf16 cannot run. */
strata_err strata_model_set_precision(strata_model *m, strata_precision prec);
strata_precision strata_model_precision(const strata_model *m);
void strata_model_weights_changed(strata_model *m);
/* The bf16 copy (NULL in fp32), same offsets as the fp32 buffer. */
const strata_bf16 *strata_model_params_bf16(const strata_model *m);

void strata_model_zero_grad(strata_model *m);
/* Logits of the last forward, (B, T, padded_vocab); valid when targets were
 * NULL. */
const float *strata_model_logits(const strata_model *m);

/* Seconds spent in each part of the last forward+backward (for `bench`). */
typedef struct strata_model_timing {
    double matmul, attention, elementwise, loss;
} strata_model_timing;
strata_model_timing strata_model_get_timing(const strata_model *m);
void strata_model_reset_timing(strata_model *m);

#endif
