/* sampler.h — which sample fills each slot of each global batch.
 *
 * Pure functions of (seed, step s, slot j, stream lengths): no I/O, no
 * hidden state, so every rank computes its own slots without talking to the
 * others and a resumed run continues exactly where it stopped.
 *
 * Slots. A global batch has G slots; R = round(replay_ratio * G) of them are
 * replay, spread evenly: slot j is replay iff floor((j+1)R/G) > floor(jR/G).
 * The other G-R slots are new data. Rank r of W takes slots
 * [r*G/W, (r+1)*G/W); micro-batches split a rank's slots in order.
 *
 * New data. The k-th new slot overall (k = s*(G-R) + the slot's index among
 * the new slots of the batch) takes sample q = k mod N of the new stream's
 * N samples, pass k / N, after a shuffle within fixed windows of `window`
 * samples: q = w*window + o goes to w*window + perm(o), where perm is a
 * keyed bijection of the window (Feistel network with cycle walking, key =
 * seed, pass, w). So the stream is consumed in order, window by window, but
 * one shard's order never shows inside a batch, and each pass is a
 * different permutation.
 *
 * Growing streams (follow). While the new stream may still grow, only whole
 * windows are used: sample k is available iff its window lies entirely in
 * the N samples present. The last, partial window is used only once the
 * stream is final (no follow), permuted within its own size. So the order
 * never depends on when a shard arrived, only on (seed, s, j).
 *
 * Replay. A replay slot picks source i with probability weight_i / sum of
 * weights, then a sample uniformly among the source's samples, with the
 * counter RNG keyed by (seed, s, j).
 */
#ifndef STRATA_SAMPLER_H
#define STRATA_SAMPLER_H

#include <stdint.h>

#include "strata/err.h"

#define STRATA_SAMPLER_MAX_REPLAY 8
#define STRATA_SAMPLER_WINDOW     1024 /* default shuffle window, in samples */

typedef struct strata_sampler {
    uint64_t seed;
    int global_batch;    /* G */
    int replay_slots;    /* R, 0 .. G */
    int64_t window;      /* samples per shuffle window of the new stream (> 0) */
    int64_t new_samples; /* N: samples in the new stream now */
    int new_final;       /* 1: the new stream will not grow (no follow) */
    int wrap;            /* with new_final: start a new pass when used up */
    int n_replay;
    int64_t replay_samples[STRATA_SAMPLER_MAX_REPLAY];
    double replay_weight[STRATA_SAMPLER_MAX_REPLAY]; /* >= 0, any scale */
} strata_sampler;

/* Where one slot's sample comes from. */
typedef struct strata_sample_ref {
    int source;    /* 0: the new stream; i >= 1: replay source i-1 */
    int64_t index; /* sample index within that source's stream */
    int64_t pass;  /* new stream: pass over the data (0 = first); replay: 0 */
} strata_sample_ref;

enum {
    STRATA_SAMPLE_OK = 0,   /* the sample is determined */
    STRATA_SAMPLE_WAIT = 1, /* needs new data not present yet (stream not final) */
    STRATA_SAMPLE_END = 2   /* the new stream is used up (final, no wrap) */
};

/* R for a ratio: round half up, robust to ratio*G landing a hair below .5. */
int strata_sampler_replay_slots(double replay_ratio, int global_batch);
/* Checks the fields are consistent (STRATA_EINPUT with the problem). */
strata_err strata_sampler_check(const strata_sampler *sp);
/* 1 if slot j of every batch is a replay slot. */
int strata_sampler_is_replay(const strata_sampler *sp, int j);
/* OK when every slot of step s is determined, else WAIT or END. A step is
 * available or not as a whole, the same on every rank. */
int strata_sampler_step_status(const strata_sampler *sp, long s);
/* The sample of slot j of step s (out is filled only when OK). */
int strata_sampler_slot(const strata_sampler *sp, long s, int j, strata_sample_ref *out);
/* Steps from step 0 the new stream can feed without wrapping or waiting:
 * floor(usable / (G-R)) where usable counts whole windows only while the
 * stream is not final; INT64_MAX when G == R. */
int64_t strata_sampler_steps_available(const strata_sampler *sp);

/* A keyed bijection of [0, n): x -> perm(x), for x < n (n >= 1). */
uint64_t strata_permute(uint64_t key, uint64_t n, uint64_t x);

/* One 64-bit identity per sample: source in the top 8 bits, index below. */
static inline int64_t strata_sample_id(const strata_sample_ref *r)
{
    return (int64_t)(((uint64_t)r->source << 56) | (uint64_t)r->index);
}
static inline int strata_sample_id_source(int64_t id) { return (int)((uint64_t)id >> 56); }
static inline int64_t strata_sample_id_index(int64_t id)
{
    return (int64_t)((uint64_t)id & (((uint64_t)1 << 56) - 1));
}

#endif
