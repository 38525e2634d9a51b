/* generate.h — autoregressive generation: a KV cache, prefill and one-token
 * decode through the family's decode entry (family.h), the sampler, and
 * UTF-8-safe streaming of the text.
 *
 * The cache holds, for every layer, the keys (after QK-norm and RoPE) and
 * the values of every position fed so far: (L, max_T, NKV hs) each. Feeding
 * n tokens at positions pos..pos+n-1 runs the blocks on those n rows only
 * and attends over the cached positions, so the cost of a new token is that
 * of its matrix products plus attention over the tokens before it (or the
 * last W with a sliding window), never a recomputation of the prefix.
 *
 *   S_j = scale q . k_j for j in [lo, p], lo = max(0, p - W + 1) (W 0: 0),
 *   out = sum_j softmax(S)_j v_j  (query head h reads kv head h / (NH/NKV))
 *
 * Sampling, from the logits of the last position (the first V of Vp): at
 * temperature 0 the argmax (the lowest id on a tie); otherwise softmax of
 * logits / temperature, kept to the top_k most likely (0: all), then to the
 * smallest set of the most likely whose mass reaches top_p (1: all), and one
 * draw u = strata_rng_uniform(strata_rng_u64(seed, TAG, stream, step)) in
 * the renormalised distribution, walked from the most likely down. A draw
 * is a pure function of (seed, stream, step, logits): the same seed gives
 * the same text on any machine with the same logits.
 */
#ifndef STRATA_GENERATE_H
#define STRATA_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "strata/err.h"
#include "strata/kv_cache.h"
#include "strata/model.h"

/* ---- a generator: one sequence at a time ---------------------------------- */
typedef struct strata_generator strata_generator;

/* For up to max_T positions (<= block_size). STRATA_EINPUT when the model's
 * family has no decode entry or max_T is out of range. */
strata_err strata_generator_create(strata_generator **out, strata_model *m, int max_T);
void strata_generator_free(strata_generator *g);
/* Empties the cache: the next feed starts at position 0. */
void strata_generator_reset(strata_generator *g);
/* Positions fed so far. */
int strata_generator_pos(const strata_generator *g);
/* Feeds n >= 1 tokens at the next positions (prefill when n > 1) and sets
 * *logits to the last one's logits (Vp floats, valid until the next call).
 * STRATA_EINPUT when they would not fit in max_T or an id is >= vocab_size. */
strata_err strata_generator_feed(strata_generator *g, const uint32_t *tokens, int n,
                                 const float **logits);

/* ---- the sampler ---------------------------------------------------------- */
typedef struct strata_sample_opts {
    float temperature; /* >= 0; 0 = greedy */
    int top_k;         /* >= 0; 0 = no limit */
    float top_p;       /* (0, 1] */
    uint64_t seed;
} strata_sample_opts;

/* STRATA_EINPUT naming the option when one is out of range. */
strata_err strata_sample_check(const strata_sample_opts *o);
/* The next token from logits (V of them); scratch holds 2 V floats (unused
 * when greedy). */
uint32_t strata_sample_token(const float *logits, int V, const strata_sample_opts *o,
                             uint64_t stream, uint64_t step, float *scratch);

/* Feeds the prompt, then draws n_new tokens into out (each fed back except
 * the last), calling on_token(ctx, id) after each (NULL: none; a non-zero
 * return stops early). *n_out receives the tokens drawn. stream keys the
 * draws (one per sample of `strata sample --n`). The cache is reset first. */
strata_err strata_generate(strata_generator *g, const uint32_t *prompt, int n_prompt, int n_new,
                           const strata_sample_opts *o, uint64_t stream, uint32_t *out, int *n_out,
                           int (*on_token)(void *ctx, uint32_t id), void *ctx);

/* Mean cross-entropy (nats) of tokens[n_ctx..n) given everything before
 * them, through the cache (the test of a continuation against shuffled
 * text). n_ctx >= 1. */
strata_err strata_generator_score(strata_generator *g, const uint32_t *tokens, int n, int n_ctx,
                                  double *mean_loss);

/* ---- streaming text ------------------------------------------------------- */
/* Holds back the bytes of a UTF-8 character that is not complete yet, so
 * that a character split across tokens is written whole. Bytes that cannot
 * start or continue a character are passed on as they are. */
typedef struct strata_utf8_stream {
    uint8_t held[4];
    int n_held;
} strata_utf8_stream;

/* Appends in[0..n) to the stream and writes to out what is ready (at most
 * n + 3 bytes); returns the number of bytes written. */
size_t strata_utf8_push(strata_utf8_stream *s, const uint8_t *in, size_t n, uint8_t *out);
/* What is still held (an incomplete character at the end), at most 4. */
size_t strata_utf8_flush(strata_utf8_stream *s, uint8_t *out);

/* ---- the trainer's sample ([log] sample_every) ---------------------------- */
#define STRATA_TRAIN_SAMPLE_TOKENS      64
#define STRATA_TRAIN_SAMPLE_TEMPERATURE 0.8f
#define STRATA_TRAIN_SAMPLE_TOP_P       0.95f

/* The prompt and its continuation by up to STRATA_TRAIN_SAMPLE_TOKENS tokens
 * (fewer where the context ends; stopping at the end-of-text token) at the
 * temperature and top-p above, seed `seed`, stream 0: the text `strata sample
 * --prompt P --tokens 64 --temperature 0.8 --top-p 0.95 --seed S` writes from
 * the checkpoint of the same step. tokenizer: "" or "byte", a tokenizer.json,
 * or a directory holding GPT-2's encoder.json and vocab.bpe. *line receives
 * the text escaped onto one line (malloc'd; see strata_escape_line). */
strata_err strata_train_sample(strata_model *m, const char *prompt, const char *tokenizer,
                               uint64_t seed, char **line);
/* Writes in[0..n) to out as one line: newline, tab and backslash as \n \t
 * \\, other control bytes as \xNN, the rest as they are; out holds 4 n + 1
 * bytes. Returns the length. */
size_t strata_escape_line(const uint8_t *in, size_t n, char *out);

#endif
